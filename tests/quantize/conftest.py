"""Fixtures for the quantizer tests: two tiny trained students exported once per session (about 10 s on
one core), their raw synthetic splits, and one quantize run per task shared by the read-only tests."""
from __future__ import annotations

import numpy as np
import pytest

from . import quant_fixtures as qf


def raw_splits(task: str, n_calib: int = 256, n_val: int = 160, n_test: int = 240) -> dict:
    gen = qf.make_classification if task == "classification" else qf.make_segmentation

    def split(seed, n):
        s = gen(seed, n)
        return s.images, (s.labels if task == "classification" else s.masks)

    # Seeds differ from the training seed (7): calib/val/test are held out from training.
    return {"calib": split(101, n_calib), "val": split(102, n_val), "test": split(103, n_test)}


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {task: qf.export_fixture(root / task, task) for task in ("classification", "segmentation")}


@pytest.fixture(scope="session")
def splits():
    return {task: raw_splits(task) for task in ("classification", "segmentation")}


@pytest.fixture(scope="session")
def quantized(exports, splits, tmp_path_factory):
    """quantize_export run once per task (calibration method: max)."""
    from tools.quantize import quantize_export

    out = {}
    for task in ("classification", "segmentation"):
        d = tmp_path_factory.mktemp(f"q_{task}")
        rep = quantize_export(exports[task], d, dataset=splits[task], method="max")
        out[task] = {"dir": d, "report": rep}
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(20261123)
