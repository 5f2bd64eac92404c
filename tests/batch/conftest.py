"""Fixtures for `slicert batch`: a small archive of real DICOM files (pydicom's test data) plus a
damaged file and a text file, the tiny generated bundles, and one local Ray cluster per test session."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "runtime"))

import tiny_models  # noqa: E402

# Real files from pydicom's own test data: CT, MR, a 10-frame MR, a 16-bit CR-like MR, an RGB US.
REAL = ["CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "SC_rgb.dcm", "MR_small_RLE.dcm"]


def _real(name: str) -> Path:
    from pydicom.data import get_testdata_file

    p = get_testdata_file(name, download=False)
    assert p, f"pydicom test file {name} missing"
    return Path(p)


@pytest.fixture(scope="session")
def archive(tmp_path_factory) -> Path:
    """patientA/{CT,MR}, patientB/{emri (10 frames), SC_rgb, MR RLE}, a truncated file, a README.txt."""
    root = tmp_path_factory.mktemp("archive")
    for i, name in enumerate(REAL):
        d = root / ("patientA" if i < 2 else "patientB")
        d.mkdir(exist_ok=True)
        shutil.copy(_real(name), d / name)
    data = _real("CT_small.dcm").read_bytes()
    (root / "patientB" / "truncated.dcm").write_bytes(data[: len(data) // 2])
    (root / "README.txt").write_text("not an image\n")
    return root


@pytest.fixture(scope="session")
def bundles(tmp_path_factory) -> dict[str, Path]:
    return tiny_models.cpu_bundles(tmp_path_factory.mktemp("batch_models"))


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session (2 CPUs, no dashboard)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
