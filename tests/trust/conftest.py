"""Fixtures for the trust tests: the tiny generated models of tests/runtime/tiny_models.py, fitted with
tools/trust_fit.py on synthetic 12-bit images, built into real bundles and run with real ONNX Runtime
sessions. The images and labels are synthetic test data (smooth random fields with Poisson-like noise;
labels from the model's own argmax with 25% flipped), they stand for no medical task."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))

import tiny_models  # noqa: E402

SRC_HW = (97, 83)


def field_images(n: int, seed: int, hw=SRC_HW) -> np.ndarray:
    """Synthetic in-distribution raw images: uint16 12-bit smooth fields (low-frequency cosines) + noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:hw[0], 0:hw[1]] / max(hw)
    out = np.empty((n, *hw), np.uint16)
    for i in range(n):
        f = np.zeros(hw)
        for _ in range(3):
            fy, fx, ph = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 6.3)
            f += np.cos(2 * np.pi * (fy * yy + fx * xx) + ph)
        img = 2048 + 500 * f / 3 + rng.normal(0, 40, hw)
        out[i] = np.clip(img, 0, 4095).astype(np.uint16)
    return out


def _inputs(images, spec):
    from engine.preprocess import preprocess

    return np.concatenate([preprocess(im, spec) for im in images])


def _labels(export: Path, x: np.ndarray, task: str, rng) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x})[0]
    y = out.argmax(axis=1)
    flip = rng.random(y.shape) < 0.25
    k = out.shape[1]
    return np.where(flip, (y + rng.integers(1, k, y.shape)) % k, y).astype(np.int64)


def make_fit_data(export: Path, task: str, *, n_train=160, n_val=100, n_test=120, seed=5):
    from tools import trust_sets
    from tools.trust_fit import FitData

    spec = tiny_models.spec()
    rng = np.random.default_rng(seed)
    splits = {name: field_images(n, seed + i) for i, (name, n) in
              enumerate((("train", n_train), ("val", n_val), ("test", n_test)))}
    x = {k: _inputs(v, spec) for k, v in splits.items()}
    y = {k: _labels(export, v, task, rng) for k, v in x.items()}
    ood = trust_sets.synthetic(splits["test"], spec, n=48, seed=seed)
    real_x, rows = trust_sets.real_dicom(spec, "model", names=("CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm"))
    ood["real DICOM"] = real_x
    labels = tiny_models.CLASS_LABELS if task == "classification" else tiny_models.SEG_LABELS
    return FitData(task=task, labels=list(labels), train=x["train"], train_y=y["train"], val=x["val"],
                   val_y=y["val"], test=x["test"], test_y=y["test"], ood=ood, real_rows=rows,
                   description={"dataset": "synthetic test fields", "synthetic_in_distribution": True}), splits


@pytest.fixture(scope="session")
def trust_dirs(tmp_path_factory):
    """Tiny classifier (fp32 + fp16 + int8, fitted, cxr eligibility) and segmenter (fp32, fitted, US
    eligibility) folders with trust.json, plus the raw splits they were fitted on."""
    from tools.trust_fit import INTENDED, fit_trust

    root = tmp_path_factory.mktemp("trust_models")
    cls_export = tiny_models.write_export(root / "export_cls", "classification")
    cls_quant = tiny_models.write_quantized(root / "quant_cls", cls_export)
    seg_export = tiny_models.write_export(root / "export_seg", "segmentation")
    cls_data, cls_splits = make_fit_data(cls_export, "classification")
    cls_trust = fit_trust(cls_quant, cls_data, intended=INTENDED["cxr_nodule"] | {"bits_stored": [12, 16]},
                          threads=1)
    seg_data, seg_splits = make_fit_data(seg_export, "segmentation")
    # Segmentation labels per pixel: the grid argmax of the model with no flips is enough for the fit.
    seg_data.val_y = _seg_targets(seg_export, seg_data.val)
    seg_data.test_y = _seg_targets(seg_export, seg_data.test)
    seg_trust = fit_trust(seg_export, seg_data, intended=INTENDED["us_phantom"], threads=1)
    return {"cls_export": cls_export, "cls_quant": cls_quant, "seg_export": seg_export, "cls_trust": cls_trust,
            "seg_trust": seg_trust, "cls_data": cls_data, "cls_splits": cls_splits, "seg_splits": seg_splits,
            "root": root}


def _seg_targets(export: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0].argmax(axis=1).astype(np.int64)


@pytest.fixture(scope="session")
def trust_bundles(trust_dirs, tmp_path_factory):
    from engine.bundle import build_bundle

    out = tmp_path_factory.mktemp("trust_bundles")
    cls = out / "cls.slicert"
    build_bundle(trust_dirs["cls_quant"], cls, precision="best", target="cpu", max_batch=4)
    seg = out / "seg.slicert"
    build_bundle(trust_dirs["seg_export"], seg, precision="fp32", target="cpu", max_batch=2)
    plain = out / "plain.slicert"  # the same classifier without trust.json: nothing trust-related inside
    build_bundle(trust_dirs["cls_export"] / "model.onnx", plain, precision="fp32", target="cpu",
                 meta=trust_dirs["cls_export"] / "model.json")
    return {"cls": cls, "seg": seg, "plain": plain}


@pytest.fixture(scope="session")
def cls_trust_session(trust_bundles):
    import engine

    s = engine.load(trust_bundles["cls"], precision="fp32", max_batch=4, threads=1, eligibility="flag")
    yield s
    s.close()


def data_file(name: str) -> str:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed (pydicom-data)")
    return str(path)
