"""The package imports light, reports CUDA honestly and maps native errors to typed Python ones."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import engine
from engine import _native, errors


def test_import_is_light():
    code = ("import sys, engine; heavy = [m for m in ('torch', 'tensorrt', 'onnxruntime', 'pydicom', 'cv2') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cuda_status_never_raises():
    n, reason = engine.cuda_devices()
    assert isinstance(n, int) and n >= 0
    if n == 0:
        assert reason, "a machine without devices must say why"
    else:
        assert reason == ""


def test_cuda_compiled_when_nvcc_present():
    import shutil

    if shutil.which("nvcc") is None and not __import__("os").path.exists("/usr/local/cuda/bin/nvcc"):
        pytest.skip("nvcc not on this machine, so AUTO builds without CUDA")
    assert _native.cuda_compiled(), "SLICERT_CUDA=AUTO must compile the CUDA kernels when nvcc is found"


def test_cuda_error_carries_location():
    e = errors.CudaError("cudaErrorInvalidValue", code=1, device=0, file="k.cu", line=42)
    assert (e.code, e.device, e.file, e.line) == (1, 0, "k.cu", 42)
    assert "k.cu:42" in str(e)


def test_error_hierarchy():
    assert issubclass(errors.InputError, ValueError)
    assert issubclass(errors.UnsupportedTransferSyntax, errors.DicomError)
    assert issubclass(errors.EngineMismatch, errors.BundleError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.SliceRTError)


def test_cli_info_json():
    out = subprocess.run([sys.executable, "-m", "engine.cli", "info", "--json"], capture_output=True, text=True,
                         check=True).stdout
    env = json.loads(out)
    assert env["cuda_compiled"] == _native.cuda_compiled()
    assert env["cpus_usable"] >= 1
    assert env["versions"]["numpy"]
