"""Saliency maps in the source image's geometry, from outputs the one inference call already produced.

Classifiers: the class-activation map of the predicted class (the model's `slicert_cam` output, see
engine.trust.graph), negative evidence clipped to 0, scaled to [0, 1] by its maximum, bilinearly
upsampled to the model input grid, then mapped to the source like masks are (ROI, letterbox and resize
undone, engine.postprocess.source_mapping). A CAM says where the evidence for the answer lies in the
model's view; it is coarse (the last feature maps are 1/16 of the input here) and it is not a
segmentation.

Segmenters: the per-pixel confidence, max softmax(logits / T) over classes, mapped the same way.

Both are float32 in [0, 1] with 1/255 steps (the source mapping moves 8-bit maps); outside the ROI 0.
"""
from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=32)
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation weights, pixel centres aligned (align_corners=False)."""
    m = np.zeros((n_out, n_in), np.float32)
    pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (pos - lo).astype(np.float32)
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    m.setflags(write=False)
    return m


def _to_source(unit: np.ndarray, src_hw, spec) -> np.ndarray:
    """A [0, 1] map on some grid -> float32 source-geometry map (8-bit steps)."""
    from engine import postprocess as pp

    u8 = np.empty(unit.shape, np.uint8)
    np.multiply(unit, 255.0, out=unit)
    np.rint(unit, out=unit)
    u8[...] = unit
    mapped = pp.source_mapping(u8.shape, (int(src_hw[0]), int(src_hw[1])), spec).to_source(u8)
    # One pass from the 8-bit source map to float32 (a 1955 x 1841 radiograph is 3.6 M pixels).
    return np.multiply(mapped, np.float32(1.0 / 255.0), dtype=np.float32)


def class_activation_map(cam: np.ndarray, class_index: int, src_hw, spec) -> np.ndarray:
    """(K, h, w) CAM output of one slice -> float32 (src_h, src_w) map of class `class_index`."""
    c = np.maximum(cam[class_index].astype(np.float32), 0.0)
    peak = float(c.max())
    if peak > 0:
        c /= peak
    up = _interp_matrix(spec.out_height, c.shape[0]) @ c @ _interp_matrix(spec.out_width, c.shape[1]).T
    np.clip(up, 0.0, 1.0, out=up)
    return _to_source(up, src_hw, spec)


def confidence_map(logits: np.ndarray, src_hw, spec, temperature: float = 1.0) -> np.ndarray:
    """(K, H, W) segmentation logits of one slice -> float32 (src_h, src_w) max-softmax confidence."""
    z = logits.astype(np.float32) * np.float32(1.0 / temperature)
    if z.shape[0] == 1:  # sigmoid head: confidence max(p, 1 - p)
        p = 0.5 * (1.0 + np.tanh(0.5 * np.abs(z[0])))
    else:
        z -= z.max(axis=0, keepdims=True)
        np.exp(z, out=z)
        p = 1.0 / z.sum(axis=0)
    return _to_source(p.astype(np.float32), src_hw, spec)


__all__ = ["class_activation_map", "confidence_map"]
