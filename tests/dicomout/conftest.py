"""Fixtures for the DICOM output and node tests: the tiny generated bundles (a segmenter and a
classifier, synthetic weights: tests/runtime/tiny_models.py), sessions on them, and the real
pydicom-data images (chest CR, ultrasound, echo cine, CT) they run on."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))

import tiny_models


def sample_file(name: str) -> str:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)  # never the network
    if path is None:
        pytest.skip(f"pydicom-data file {name} is not installed")
    return str(path)


@pytest.fixture(scope="session")
def dicom_bundles(tmp_path_factory):
    from engine.bundle import build_bundle

    root = tmp_path_factory.mktemp("dicomout_models")
    seg = tiny_models.write_export(root / "export_seg", "segmentation")
    cls = tiny_models.write_export(root / "export_cls", "classification")
    out = {"segmentation": root / "seg.slicert", "classification": root / "cls.slicert"}
    build_bundle(seg, out["segmentation"], precision="fp32", target="cpu", max_batch=1)
    build_bundle(cls, out["classification"], precision="fp32", target="cpu", max_batch=1)
    return out


@pytest.fixture(scope="session")
def seg_session(dicom_bundles):
    import engine

    s = engine.load(dicom_bundles["segmentation"], threads=1)
    yield s
    s.close()


@pytest.fixture(scope="session")
def cls_session(dicom_bundles):
    import engine

    s = engine.load(dicom_bundles["classification"], threads=1)
    yield s
    s.close()
