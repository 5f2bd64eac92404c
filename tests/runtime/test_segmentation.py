"""Segmentation sessions: masks back in source geometry, pixel counts and areas in mm² from the pixel
spacing (given, or read from DICOM), zero-allocation run_into, batches."""
from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest

import engine
from engine.bundle import open_bundle
from engine.errors import InputError
from engine.preprocess import preprocess


@pytest.fixture(scope="module")
def seg_session(seg_bundle):
    s = engine.load(seg_bundle, max_batch=2, threads=2)
    yield s
    s.close()


def _reference_mask(bundle_path, x, spec=None):
    """Independent path: allocating preprocess + plain ORT on the bundled ONNX + NumPy argmax + OpenCV
    nearest resize back to the source size (the spec has no ROI and no letterbox)."""
    with open_bundle(bundle_path) as b:
        sess = ort.InferenceSession(b.read(b.variants["fp32"]["onnx"]), providers=["CPUExecutionProvider"])
        spec = spec or b.spec
    assert spec.roi is None and not spec.letterbox
    logits = sess.run(None, {"input": preprocess(x, spec)})[0][0]
    small = logits.argmax(axis=0).astype(np.uint8)
    return cv2.resize(small, (x.shape[1], x.shape[0]), interpolation=cv2.INTER_NEAREST)


def test_mask_in_source_geometry_with_areas(seg_session, rng):
    x = rng.integers(0, 4096, size=(97, 130), dtype=np.uint16)
    r = seg_session.run(x, pixel_spacing_mm=(0.5, 0.25))
    assert r.mask.shape == (97, 130) and r.mask.dtype == np.uint8
    np.testing.assert_array_equal(r.mask, _reference_mask(seg_session.bundle.path, x))
    assert len(np.unique(r.mask)) >= 2  # the random weights give a non-trivial mask
    assert sum(r.pixel_counts.values()) == 97 * 130
    for label in seg_session.labels:
        assert r.pixel_counts[label] == int((r.mask == seg_session.labels.index(label)).sum())
        assert r.areas_mm2[label] == pytest.approx(r.pixel_counts[label] * 0.5 * 0.25, rel=1e-12)
    assert r.pixel_spacing_mm == (0.5, 0.25)


def test_no_spacing_no_areas(seg_session, rng):
    r = seg_session.run(rng.integers(0, 4096, size=(40, 40), dtype=np.uint16))
    assert r.areas_mm2 is None and r.pixel_spacing_mm is None
    assert sum(r.pixel_counts.values()) == 1600


def test_dicom_spacing_gives_areas(seg_session):
    from pydicom.data import get_testdata_file

    from engine import dicom

    path = get_testdata_file("CT_small.dcm", download=False)
    s = dicom.read(path)
    r = seg_session.run(path)
    assert r.pixel_spacing_mm == pytest.approx(s.pixel_spacing_mm)
    assert r.mask.shape == s.pixels.shape
    spec = s.spec_for(seg_session.spec, seg_session.voi_policy)
    np.testing.assert_array_equal(r.mask, _reference_mask(seg_session.bundle.path, s.pixels, spec))
    row, col = s.pixel_spacing_mm
    assert sum(r.areas_mm2.values()) == pytest.approx(s.pixels.size * row * col, rel=1e-9)


def test_run_into_reuses_mask_and_refuses_another_size(seg_session, rng):
    x = rng.integers(0, 4096, size=(64, 48), dtype=np.uint16)
    out = seg_session.new_result(src_hw=x.shape)
    mask = out.mask
    seg_session.run_into(out, x)
    small = out._scratch["small"]
    seg_session.run_into(out, x)
    assert out.mask is mask and out._scratch["small"] is small
    np.testing.assert_array_equal(out.mask, seg_session.run(x).mask)
    with pytest.raises(InputError, match=r"allocated for a \(64, 48\) source.*new_result\(src_hw=\(20, 20\)\)"):
        seg_session.run_into(out, rng.integers(0, 4096, size=(20, 20), dtype=np.uint16))
    with pytest.raises(InputError, match="need the source image size"):
        seg_session.new_result()


def test_batch_equals_single(seg_session, rng):
    xs = [rng.integers(0, 4096, size=(30 + 5 * i, 41), dtype=np.uint16) for i in range(3)]
    rs = seg_session.run_batch(xs, pixel_spacing_mm=(1.0, 1.0))
    assert [r.batch_size for r in rs] == [2, 2, 1]
    for x, r in zip(xs, rs):
        np.testing.assert_array_equal(r.mask, seg_session.run(x).mask)
        assert r.areas_mm2["background"] == r.pixel_counts["background"]
