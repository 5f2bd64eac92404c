"""What this machine is: versions, CUDA status, backends, CPU features. Used by `slicert info` and
recorded in every benchmark report so numbers are never quoted without their machine."""
from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags(interesting: tuple[str, ...] = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw",
                                              "avx512_vnni", "avx_vnni", "amx_int8", "neon", "asimd")) -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in interesting if f in have]
    except OSError:
        pass
    return []


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def environment() -> dict[str, Any]:
    from engine import _native

    n_dev, reason = _native.cuda_devices()
    gpus = [_native.cuda_device_properties(i) for i in range(n_dev)]
    return {
        "slicert": _native.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable_cpus(),
        "cpu_flags": cpu_flags(),
        "cuda_compiled": bool(_native.cuda_compiled()),
        "cuda_runtime_version": int(_native.cuda_runtime_version()),
        "cuda_devices": n_dev,
        "cuda_reason": reason,
        "gpus": gpus,
        "versions": {name: _version(name) for name in
                     ("numpy", "pydicom", "onnx", "onnxruntime", "tensorrt", "tensorrt-cu13", "torch")},
    }
