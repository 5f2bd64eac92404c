"""Fixtures for the runtime tests: tiny generated ONNX models (see tiny_models.py), toolchain- and
quantizer-style folders, and bundles built from them once per test session."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny_models


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    cls_export = tiny_models.write_export(root / "export_cls", "classification")
    seg_export = tiny_models.write_export(root / "export_seg", "segmentation")
    cls_quant = tiny_models.write_quantized(root / "quant_cls", cls_export)
    return {"cls_export": cls_export, "seg_export": seg_export, "cls_quant": cls_quant, "root": root}


@pytest.fixture(scope="session")
def cls_bundle(model_dirs, tmp_path_factory):
    """Classifier with fp32 + fp16 + int8 variants, CPU target, max_batch 4."""
    from engine.bundle import build_bundle

    out = tmp_path_factory.mktemp("bundles") / "cls.slicert"
    build_bundle(model_dirs["cls_quant"], out, precision="best", target="auto", max_batch=4)
    return out


@pytest.fixture(scope="session")
def seg_bundle(model_dirs, tmp_path_factory):
    """Segmenter, fp32 only, CPU target, max_batch 2."""
    from engine.bundle import build_bundle

    out = tmp_path_factory.mktemp("bundles") / "seg.slicert"
    build_bundle(model_dirs["seg_export"], out, precision="fp32", target="cpu", max_batch=2)
    return out


@pytest.fixture(scope="session")
def cls_session(cls_bundle):
    import engine

    s = engine.load(cls_bundle, precision="fp32", max_batch=4, threads=2)
    yield s
    s.close()


@pytest.fixture
def pixels(rng):
    """A 12-bit detector-like image, not the model's input size (the kernel resizes)."""
    return rng.integers(0, 4096, size=(97, 83), dtype=np.uint16)

