"""The build contains the CUDA kernels, and the CPU and CUDA paths compile one shared math header."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine import _native

ROOT = Path(__file__).resolve().parents[2]
MATH_HEADER = "preprocess_math.cuh"


def _includes(path: Path) -> set[str]:
    return set(re.findall(r'^\s*#\s*include\s+"([^"]+)"', path.read_text(), flags=re.MULTILINE))


def test_host_and_device_preprocess_share_the_math_header():
    cpu, cuda = ROOT / "cpp" / "preprocess.cpp", ROOT / "kernels" / "preprocess.cu"
    assert MATH_HEADER in _includes(cpu), f"{cpu} must include {MATH_HEADER}"
    assert MATH_HEADER in _includes(cuda), f"{cuda} must include {MATH_HEADER}"
    header = (ROOT / "kernels" / MATH_HEADER).read_text()
    # The per-pixel functions are host+device under nvcc and plain inline for the host compiler.
    assert re.search(r"#define SLICERT_HD __host__ __device__", header)
    for fn in ("pixel_value", "voi", "modality", "taps2", "area_span", "make_geometry", "float_to_half",
               "quantize_int8", "equalize_value"):
        assert re.search(rf"SLICERT_HD\s+\w+\s+{fn}\(", header), f"{fn} must be SLICERT_HD in {MATH_HEADER}"


def test_host_and_device_postprocess_share_the_math_header():
    for path in (ROOT / "cpp" / "postprocess.cpp", ROOT / "kernels" / "postprocess.cu"):
        assert "postprocess_math.cuh" in _includes(path), f"{path} must include postprocess_math.cuh"
    header = (ROOT / "kernels" / "postprocess_math.cuh").read_text()
    for fn in ("argmax_class", "source_to_mask", "half_to_float"):
        assert re.search(rf"SLICERT_HD\s+\w+\s+{fn}\(", header), f"{fn} must be SLICERT_HD"


def test_neither_path_redefines_the_per_pixel_math():
    # The shared functions live only in the header: a copy in a .cpp/.cu would let the paths drift.
    for path in (ROOT / "cpp" / "preprocess.cpp", ROOT / "kernels" / "preprocess.cu"):
        text = path.read_text()
        for fn in ("pixel_value", "voi", "modality", "taps2", "area_span", "float_to_half"):
            assert not re.search(rf"^\s*(?:inline\s+|static\s+|__device__\s+)*\w+\s+{fn}\s*\(", text, re.MULTILINE), \
                f"{path.name} defines its own {fn}()"


def test_build_contains_cuda_when_nvcc_is_present():
    if not (Path("/usr/local/cuda/bin/nvcc").exists()):
        pytest.skip("nvcc not on this machine: SLICERT_CUDA=AUTO builds without CUDA")
    assert _native.cuda_compiled()
