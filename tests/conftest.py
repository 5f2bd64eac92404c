from __future__ import annotations

import importlib.util
import os

import pytest


def _gpu_skip_reason() -> str | None:
    from engine import _native

    if not _native.cuda_compiled():
        return "SliceRT was built without CUDA"
    n, reason = _native.cuda_devices()
    return None if n > 0 else f"no usable CUDA device: {reason}"


def pytest_collection_modifyitems(config, items):
    gpu_reason = _gpu_skip_reason()
    trt_reason = None if importlib.util.find_spec("tensorrt") else "TensorRT is not installed (extra [gpu])"
    slow = os.environ.get("SLICERT_SLOW") == "1"
    for item in items:
        if gpu_reason and "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=gpu_reason))
        if trt_reason and "trt" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=trt_reason))
        if not slow and "slow" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="slow test: set SLICERT_SLOW=1 to run"))


@pytest.fixture
def rng():
    return __import__("numpy").random.default_rng(20261123)
