"""Post-processing vs NumPy / OpenCV references: probabilities, class masks, source geometry, areas."""
from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from engine.errors import InputError
from engine.postprocess import (argmax_mask, argmax_mask_into, class_areas_mm2, mask_to_source, sigmoid, softmax,
                                source_class_areas_mm2, source_mapping)
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


def _nearest(src_len: int, dst_len: int) -> np.ndarray:
    # OpenCV INTER_NEAREST: source index floor(d * scale), scale = 1 / (dst / src), clamped.
    return np.minimum(np.floor(np.arange(dst_len) * (1.0 / (dst_len / src_len))).astype(np.int64), src_len - 1)


def _numpy_to_source(mask, src_hw, spec):
    """Independent NumPy reference of mask_to_source: ROI pixel -> content pixel -> output pixel -> mask."""
    (y0, x0, h, w) = geometry(src_hw, spec)["roi"]
    top, left, ch, cw = geometry(src_hw, spec)["content"]
    rows = _nearest(mask.shape[0], spec.out_height)[top + _nearest(ch, h)]
    cols = _nearest(mask.shape[1], spec.out_width)[left + _nearest(cw, w)]
    out = np.zeros(src_hw, np.uint8)
    out[y0:y0 + h, x0:x0 + w] = mask[rows[:, None], cols[None, :]]
    return out


def _random_geometry(rng):
    src_hw = (int(rng.integers(1, 260)), int(rng.integers(1, 260)))
    out_h, out_w = int(rng.integers(1, 97)), int(rng.integers(1, 97))
    roi = None
    if rng.random() < 0.5:
        y0, x0 = int(rng.integers(0, src_hw[0])), int(rng.integers(0, src_hw[1]))
        roi = (y0, x0, int(rng.integers(1, src_hw[0] - y0 + 1)), int(rng.integers(1, src_hw[1] - x0 + 1)))
    spec = PreprocessSpec(out_height=out_h, out_width=out_w, letterbox=bool(rng.random() < 0.5), roi=roi)
    # Heads at the input size, a stride (smaller) or larger: non-integer scale factors throughout.
    mask_hw = (int(rng.integers(1, 2 * out_h + 2)), int(rng.integers(1, 2 * out_w + 2)))
    return src_hw, spec, mask_hw


def test_source_counts_equal_full_resolution_counts_exactly(rng):
    # Counts from the small mask weighted by row x column multiplicities must equal counting the
    # full-resolution source mask pixel by pixel, for any ROI / letterbox / resize geometry.
    for trial in range(300):
        src_hw, spec, mask_hw = _random_geometry(rng)
        k = int(rng.integers(1, 257))
        mask = rng.integers(0, k, mask_hw, dtype=np.uint8)
        if mask_hw[1] > 1 and trial % 3 == 0:
            mask = np.asfortranarray(mask)[:, ::-1]  # any strides
        ref_full = _numpy_to_source(mask, src_hw, spec)
        poisoned = np.full(src_hw, 251, np.uint8)
        full = mask_to_source(mask, src_hw, spec, out=poisoned)
        np.testing.assert_array_equal(full, ref_full, err_msg=f"to source, trial {trial}: {src_hw} {spec} {mask_hw}")
        ref_counts = np.bincount(ref_full.ravel(), minlength=k)
        counts, areas = source_class_areas_mm2(mask, src_hw, spec, (0.3, 0.7), k)
        np.testing.assert_array_equal(counts, ref_counts, err_msg=f"counts, trial {trial}: {src_hw} {spec} {mask_hw}")
        assert counts.dtype == np.int64 and counts.sum() == src_hw[0] * src_hw[1]
        np.testing.assert_array_equal(areas, ref_counts * (0.3 * 0.7))
        m = source_mapping(mask_hw, src_hw, spec)
        roi_h, roi_w = geometry(src_hw, spec)["roi"][2:]
        assert m.row_multiplicity.sum() == roi_h and m.col_multiplicity.sum() == roi_w


@pytest.mark.parametrize("letterbox", [False, True])
@pytest.mark.parametrize("roi", [None, (13, 20, 150, 90)])
def test_source_counts_on_echo_geometry(rng, letterbox, roi):
    # The cine case: 600x800 RGB frames, a 96x96 model; seed-varied masks, never all zero.
    src_hw = (600, 800)
    spec = PreprocessSpec(out_height=96, out_width=96, letterbox=letterbox, roi=roi)
    for seed in range(5):
        mask = np.random.default_rng(seed).integers(0, 4, (96, 96), dtype=np.uint8)
        full = mask_to_source(mask, src_hw, spec)
        np.testing.assert_array_equal(full, _oracle_to_source(mask, src_hw, spec))
        counts, _ = source_class_areas_mm2(mask, src_hw, spec, None, 4)
        np.testing.assert_array_equal(counts, class_areas_mm2(full, None, 4)[0])
        np.testing.assert_array_equal(counts, np.bincount(full.ravel(), minlength=4))


def test_source_counts_ignore_classes_no_source_pixel_shows(rng):
    # Letterboxed 2:1 source: the top/bottom mask rows are padding. A class there is not in the source
    # mask, so it is neither counted nor an error, exactly as counting the source mask.
    spec = PreprocessSpec(out_height=64, out_width=64, letterbox=True)
    mask = rng.integers(1, 3, (64, 64), dtype=np.uint8)
    mask[0, :] = 9
    counts, _ = source_class_areas_mm2(mask, (100, 200), spec, None, 3)
    np.testing.assert_array_equal(counts, class_areas_mm2(mask_to_source(mask, (100, 200), spec), None, 3)[0])
    assert source_mapping((64, 64), (100, 200), spec).row_multiplicity[0] == 0
    mask[32, 5] = 9  # a content row: now it shows
    with pytest.raises(InputError, match="holds class 9 but num_classes=3"):
        source_class_areas_mm2(mask, (100, 200), spec, None, 3)


@pytest.mark.parametrize("dtype", [np.uint8, np.bool_, np.uint16])
def test_class_areas_histogram_matches_bincount(rng, dtype):
    k = 2 if dtype is np.bool_ else 256
    mask = rng.integers(0, k, (301, 257)).astype(dtype)
    for m in (mask, mask[::2, ::-3], np.asfortranarray(mask)):
        counts, _ = class_areas_mm2(m, None, k)
        np.testing.assert_array_equal(counts, np.bincount(m.ravel().astype(np.int64), minlength=k))
        assert counts.dtype == np.int64


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_argmax_into_reports_non_finite_logits(rng, dtype):
    logits = rng.standard_normal((3, 40, 50)).astype(dtype)
    out = np.full((40, 50), 99, np.uint8)
    assert argmax_mask_into(out, logits) is True
    np.testing.assert_array_equal(out, np.argmax(logits, axis=0))
    for bad in (np.nan, np.inf, -np.inf):
        poisoned = logits.copy()
        poisoned[2, 39, 49] = bad  # the very last element: every chunk is checked
        assert argmax_mask_into(out, poisoned) is False
        poisoned = logits[:1].copy()
        poisoned[0, 0, 0] = bad
        assert argmax_mask_into(out, poisoned) is False


def test_source_mapping_bad_input(rng):
    spec = PreprocessSpec(out_height=10, out_width=10)
    m = source_mapping((10, 10), (20, 30), spec)
    with pytest.raises(InputError, match="this mapping is for"):
        m.to_source(np.zeros((10, 11), np.uint8))
    with pytest.raises(InputError, match="uint8"):
        m.class_counts(np.zeros((10, 10), np.int32), 3)
    with pytest.raises(InputError, match="num_classes must be"):
        m.class_counts(np.ones((10, 10), np.uint8), 0)
    with pytest.raises(InputError, match="shape"):
        m.to_source(np.ones((10, 10), np.uint8), out=np.zeros((20, 31), np.uint8))
    with pytest.raises(InputError, match="num_classes must be"):
        source_class_areas_mm2(np.ones((10, 10), np.uint8), (20, 30), spec, None, 300)
    with pytest.raises(InputError, match="spacing"):
        source_class_areas_mm2(np.ones((10, 10), np.uint8), (20, 30), spec, (0, 1), 3)
    with pytest.raises(InputError, match="reaches outside"):
        source_class_areas_mm2(np.ones((10, 10), np.uint8), (20, 30), spec.replace(roi=(15, 0, 10, 10)), None, 3)


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


@pytest.mark.parametrize("k", [1, 2, 3, 32, 33, 200])  # both sides of the Python / NumPy switch at 32
@pytest.mark.parametrize("kind", ["softmax", "sigmoid", "none"])
def test_class_scores_into_matches_float64_reference(rng, k, kind):
    from engine.postprocess import class_scores_into

    logits = (rng.standard_normal(k) * 6).astype(np.float32)
    x = logits.astype(np.float64)
    if kind == "softmax":
        ref = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    elif kind == "sigmoid":
        ref = 1.0 / (1.0 + np.exp(-x))
    else:
        ref = x
    scores = np.full(k, np.nan, np.float32)
    best = class_scores_into(scores, logits, kind)
    np.testing.assert_allclose(scores, ref, rtol=2e-6, atol=1e-7)
    assert best == int(np.argmax(ref))
    for bad in (np.nan, np.inf, -np.inf):
        poisoned = logits.copy()
        poisoned[k // 2] = bad
        before = scores.copy()
        assert class_scores_into(scores, poisoned, kind) == -1
        np.testing.assert_array_equal(scores, before)  # untouched on refusal


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("K", [1, 2, 5, 256])
def test_device_argmax_rule_matches_the_cpu_path(rng, dtype, K):
    """The CUDA kernel's per-pixel loop (pm::argmax_class_checked), run on the host by the compiled
    module, gives the CPU path's mask and NaN/Inf verdict: ties, NaN never winning, the K == 1 sigmoid
    head, float16 Inf/NaN bit patterns. The GPU test of the same kernel is
    test_preprocess_cuda.py::test_cuda_argmax_flags_non_finite_logits."""
    from engine import _native

    logits = rng.standard_normal((K, 23, 31)).astype(dtype)
    logits[:, 0, :7] = 0.25  # ties -> the lowest class
    logits[:, 1, :3] = 0.0  # K == 1: exactly 0 is background
    cases = [logits]
    for bad, (k, y, x) in itertools.product((np.nan, np.inf, -np.inf), ((K - 1, 22, 30), (0, 0, 0), (K // 2, 5, 9))):
        poisoned = logits.copy()
        poisoned[k, y, x] = bad
        cases.append(poisoned)
    for c in cases:
        want, got = np.full((23, 31), 77, np.uint8), np.full((23, 31), 77, np.uint8)
        finite = argmax_mask_into(want, c)
        assert _native.argmax_mask_per_pixel_into(got, c) is finite
        assert finite is bool(np.isfinite(c).all())
        np.testing.assert_array_equal(got, want)
    with pytest.raises(InputError):
        _native.argmax_mask_per_pixel_into(np.zeros((23, 30), np.uint8), logits)
