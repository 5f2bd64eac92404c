"""Post-processing vs NumPy / OpenCV references: probabilities, class masks, source geometry, areas."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine.errors import InputError
from engine.postprocess import argmax_mask, class_areas_mm2, mask_to_source, sigmoid, softmax
from engine.preprocess import geometry, preprocess
from engine.spec import PreprocessSpec

from .conftest import assert_close


def test_softmax_matches_float64_and_never_overflows(rng):
    for shape, axis in (((7,), -1), ((3, 5), -1), ((4, 9, 11), 0), ((1, 4, 9, 11), 1)):
        x = (rng.standard_normal(shape) * 30).astype(np.float32)
        x.flat[0] = 1000.0  # exp(1000) overflows float64: the max-shift must handle it
        p = softmax(x)
        ref = np.exp(x.astype(np.float64) - x.max(axis=axis, keepdims=True))
        ref /= ref.sum(axis=axis, keepdims=True)
        assert p.dtype == np.float32 and p.shape == x.shape
        assert_close(p, ref, atol=1e-7, rtol=1e-5, what=f"softmax {shape}")
        assert_close(p.sum(axis=axis), np.ones(p.sum(axis=axis).shape), atol=1e-5, rtol=0, what="sums to 1")


def test_sigmoid_matches_float64_at_extremes(rng):
    x = np.concatenate([(rng.standard_normal(1000) * 8), [-1000.0, -88.0, 0.0, 88.0, 1000.0]]).astype(np.float32)
    ref = 1.0 / (1.0 + np.exp(-np.clip(x.astype(np.float64), -700, 700)))
    assert_close(sigmoid(x), ref, atol=1e-7, rtol=1e-5, what="sigmoid")


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("K", [2, 3, 7])
def test_argmax_mask_matches_numpy(rng, dtype, K):
    logits = rng.standard_normal((K, 33, 47)).astype(dtype)
    logits[:, 0, :5] = 0.25  # ties -> lowest class, as numpy.argmax
    out = np.full((33, 47), 99, np.uint8)
    got = argmax_mask(logits[None], out=out)
    assert got is out
    np.testing.assert_array_equal(got, np.argmax(logits, axis=0).astype(np.uint8))


def test_argmax_binary_head_and_nan(rng):
    logits = rng.standard_normal((1, 20, 20)).astype(np.float32)
    np.testing.assert_array_equal(argmax_mask(logits), (logits[0] > 0).astype(np.uint8))
    two = np.stack([np.full((2, 2), np.nan, np.float32), np.zeros((2, 2), np.float32)])
    assert np.all(argmax_mask(two) == 1), "a NaN logit must never win"


def _oracle_to_source(mask, src_hw, spec):
    (y0, x0, h, w) = geometry(src_hw, spec)["roi"]
    top, left, ch, cw = geometry(src_hw, spec)["content"]
    full = cv2.resize(mask, (spec.out_width, spec.out_height), interpolation=cv2.INTER_NEAREST)
    back = cv2.resize(full[top:top + ch, left:left + cw], (w, h), interpolation=cv2.INTER_NEAREST)
    out = np.zeros(src_hw, np.uint8)
    out[y0:y0 + h, x0:x0 + w] = back
    return out


@pytest.mark.parametrize("letterbox", [False, True])
@pytest.mark.parametrize("roi", [None, (13, 20, 150, 90)])
@pytest.mark.parametrize("mask_hw", [(64, 48), (32, 24), (100, 75)])
def test_mask_to_source_matches_opencv_nearest(rng, letterbox, roi, mask_hw):
    spec = PreprocessSpec(out_height=64, out_width=48, letterbox=letterbox, roi=roi)
    mask = rng.integers(0, 5, mask_hw, dtype=np.uint8)
    out = np.full((200, 170), 77, np.uint8)
    got = mask_to_source(mask, (200, 170), spec, out=out)
    np.testing.assert_array_equal(got, _oracle_to_source(mask, (200, 170), spec))
    strided = np.asfortranarray(mask)[::1, ::1]
    np.testing.assert_array_equal(mask_to_source(strided, (200, 170), spec), got)


def test_labels_survive_the_round_trip(rng):
    # A label image preprocessed with nearest resize and mapped back is recovered exactly when the
    # geometry has integer scale factors (letterboxed 2x downscale of a 2:1 image).
    labels = np.kron(rng.integers(0, 4, (40, 20)), np.ones((4, 4), int)).astype(np.uint8)  # 160 x 80
    spec = PreprocessSpec(out_height=80, out_width=80, letterbox=True, resize="nearest", pad_value=0.0)
    model_in = preprocess(labels.astype(np.float32), spec)[0, 0].astype(np.uint8)
    np.testing.assert_array_equal(mask_to_source(model_in, labels.shape, spec), labels)


def test_class_areas(rng):
    mask = rng.integers(0, 4, (50, 60), dtype=np.uint8)
    counts, areas = class_areas_mm2(mask, (0.5, 0.25), 4)
    np.testing.assert_array_equal(counts, np.bincount(mask.ravel(), minlength=4))
    assert counts.sum() == mask.size
    np.testing.assert_allclose(areas, counts * 0.125)
    counts5, none = class_areas_mm2(mask, None, 6)
    assert none is None and counts5.shape == (6,) and counts5[4:].sum() == 0


def test_postprocess_bad_input(rng):
    mask = rng.integers(0, 4, (10, 10), dtype=np.uint8)
    with pytest.raises(InputError, match="num_classes=3"):
        class_areas_mm2(mask, (1, 1), 3)
    for bad in ((0, 1), (1, float("nan")), (-1, 1), "1x1", (1,)):
        with pytest.raises(InputError, match="spacing"):
            class_areas_mm2(mask, bad, 4)
    with pytest.raises(InputError, match="2-D"):
        class_areas_mm2(mask[None], (1, 1), 4)
    with pytest.raises(InputError, match="batch of 2"):
        argmax_mask(np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(InputError, match="classes must be in"):
        argmax_mask(np.zeros((300, 2, 2), np.float32))
    with pytest.raises(InputError, match="0..255"):
        mask_to_source(mask.astype(np.int32) - 1, (10, 10), PreprocessSpec(out_height=10, out_width=10))
    with pytest.raises(InputError, match="reaches outside"):
        mask_to_source(mask, (10, 10), PreprocessSpec(out_height=10, out_width=10, roi=(5, 5, 8, 8)))
    with pytest.raises(InputError, match="expected"):
        mask_to_source(mask, (10, 10), PreprocessSpec(out_height=10, out_width=10), out=np.zeros((9, 10), np.uint8))
    with pytest.raises(InputError, match="non-empty"):
        softmax(np.zeros((0,), np.float32))
