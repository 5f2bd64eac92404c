"""Model output -> clinical quantities: probabilities, class masks in the source image's geometry,
per-class pixel counts and areas in mm².

Hot loops (argmax over logit planes, mask back to source geometry) run natively
(engine._native, GIL released); the rest is small NumPy.
"""
from __future__ import annotations

import math

import numpy as np

from engine import _native
from engine.errors import InputError
from engine.preprocess import prepared
from engine.spec import PreprocessSpec


def _class_axis(ndim: int, axis: int | None) -> int:
    if axis is not None:
        return axis
    # [K] / [N, K] scores -> last axis; [K, H, W] -> 0; [N, K, H, W] -> 1.
    return {1: -1, 2: -1, 3: 0, 4: 1}.get(ndim, -1)


def _float_array(x, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "fiu" or a.size == 0:
        raise InputError(f"{what}: expected a non-empty numeric array, got dtype {a.dtype} shape {a.shape}")
    return a.astype(np.float32, copy=False) if a.dtype != np.float64 else a


def softmax(logits, axis: int | None = None) -> np.ndarray:
    """Numerically stable softmax over the class axis (default: last for [K]/[N, K], 0 for
    [K, H, W], 1 for [N, K, H, W]). float32 in, float32 out."""
    x = _float_array(logits, "softmax")
    ax = _class_axis(x.ndim, axis)
    shifted = x - np.max(x, axis=ax, keepdims=True)
    e = np.exp(shifted)
    return (e / np.sum(e, axis=ax, keepdims=True)).astype(np.float32, copy=False)


def sigmoid(logits) -> np.ndarray:
    """1 / (1 + exp(-x)), computed as (1 + tanh(x / 2)) / 2: no overflow for any finite x."""
    x = _float_array(logits, "sigmoid")
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32, copy=False)


def argmax_mask(logits, *, out: np.ndarray | None = None) -> np.ndarray:
    """(K, H, W) or (1, K, H, W) logits -> uint8 (H, W) class mask. K == 1 is a sigmoid head:
    foreground where logit > 0. Ties go to the lower class index; a NaN logit never wins."""
    a = np.asarray(logits)
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise InputError(f"argmax_mask: expected one image, got a batch of {a.shape[0]}: pass logits[i]")
        a = a[0]
    if a.ndim != 3:
        raise InputError(f"argmax_mask: expected (K, H, W) or (1, K, H, W) logits, got shape {a.shape}")
    if a.dtype not in (np.float32, np.float16):
        a = _float_array(a, "argmax_mask")
        a = a.astype(np.float32, copy=False)
    a = np.ascontiguousarray(a)
    if out is None:
        out = np.empty(a.shape[1:], dtype=np.uint8)
    _native.argmax_mask_into(out, a)
    return out


def argmax_mask_cuda_into(out, logits, shape: tuple[int, int, int], dtype, stream) -> None:
    """GPU `argmax_mask`: device logits (K, H, W) float32/float16 -> device uint8 (H, W) mask, enqueued
    on `stream` (an `engine._native.Stream`); `out`/`logits` are DeviceBuffers (bounds checked) or
    integer device pointers. Copy the mask back with DeviceBuffer.copy_to_host."""
    _native.argmax_mask_cuda_into(out, logits, tuple(int(v) for v in shape), np.dtype(dtype).name, stream)


def mask_to_source(mask: np.ndarray, src_hw: tuple[int, int], spec: PreprocessSpec, *,
                   out: np.ndarray | None = None) -> np.ndarray:
    """A class mask in model geometry -> uint8 (src_h, src_w) in the source image's geometry.

    Undoes letterbox, resize and ROI of `spec` with nearest neighbour (cv2 INTER_NEAREST from the
    content box back to the ROI); pixels outside the ROI are 0 (background). The mask may have another
    resolution than the model input (e.g. a stride-2 head): it is mapped proportionally.
    """
    m = np.asarray(mask)
    if m.dtype != np.uint8:
        if m.dtype.kind not in "iub" or (m.size and (m.min() < 0 or m.max() > 255)):
            raise InputError(f"mask_to_source: mask must hold class indices 0..255, got dtype {m.dtype}")
        m = m.astype(np.uint8)
    h, w = (int(v) for v in src_hw)
    if h < 1 or w < 1:
        raise InputError(f"mask_to_source: source size must be positive, got {src_hw}")
    if out is None:
        out = np.empty((h, w), dtype=np.uint8)
    elif out.shape != (h, w):
        raise InputError(f"mask_to_source: out has shape {out.shape}, expected {(h, w)}")
    _native.mask_to_source_into(out, m, prepared(spec))
    return out


def class_areas_mm2(mask: np.ndarray, pixel_spacing_mm: tuple[float, float] | None,
                    num_classes: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-class pixel counts (int64 [num_classes]) and areas in mm² (float64, count x row spacing x
    column spacing), for a mask in the geometry the spacing describes (the source image). Areas are
    None when the spacing is unknown: SliceRT never guesses a physical size."""
    m = np.asarray(mask)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or not 1 <= num_classes <= 256:
        raise InputError(f"class_areas_mm2: num_classes must be an integer in [1, 256], got {num_classes!r}")
    if m.dtype.kind not in "ub" or m.ndim != 2:
        raise InputError(f"class_areas_mm2: mask must be a 2-D unsigned integer array, got {m.dtype} {m.shape}")
    counts = np.bincount(m.ravel(), minlength=num_classes).astype(np.int64)
    if counts.size > num_classes:
        raise InputError(f"class_areas_mm2: mask holds class {int(m.max())} but num_classes={num_classes}")
    if pixel_spacing_mm is None:
        return counts, None
    try:
        row_mm, col_mm = (float(v) for v in pixel_spacing_mm)
    except (TypeError, ValueError) as exc:
        raise InputError(f"class_areas_mm2: pixel_spacing_mm must be (row_mm, col_mm), got {pixel_spacing_mm!r}") from exc
    if not (math.isfinite(row_mm) and math.isfinite(col_mm) and row_mm > 0 and col_mm > 0):
        raise InputError(f"class_areas_mm2: pixel spacing must be finite and > 0 mm, got {pixel_spacing_mm!r}")
    return counts, counts * (row_mm * col_mm)


__all__ = ["softmax", "sigmoid", "argmax_mask", "argmax_mask_cuda_into", "mask_to_source", "class_areas_mm2"]
