"""Plain NumPy reference of the fused preprocessing chain, written from the DICOM formulas.

Everything is float64. Resampling is delegated to OpenCV's cv2.resize on float64 images (the oracle
users compare against); geometry (ROI, letterbox placement) is recomputed here from the spec.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from engine.spec import PreprocessSpec

CV2_INTERP = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA}
EQUALIZE_BINS = 4096


def lut_lookup(v: np.ndarray, table: np.ndarray, first: int) -> np.ndarray:
    # PS3.3 C.11.1 / C.11.2.1.1: below the first mapped value -> first entry, beyond -> last entry.
    idx = np.clip(np.floor(v) - first, 0, table.size - 1).astype(np.int64)
    return table.astype(np.float64)[idx]


def modality(v: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    if spec.modality_lut is not None:
        return lut_lookup(v, spec.modality_lut, spec.modality_lut_first_mapped)
    return v * spec.rescale_slope + spec.rescale_intercept


def voi(v: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    lo, hi = spec.output_min, spec.output_max
    c, w = spec.window_center, spec.window_width
    f = spec.voi_function
    if f == "linear":  # PS3.3 C.11.2.1.2.1
        out = np.empty_like(v)
        below = v <= c - 0.5 - (w - 1) / 2
        above = v > c - 0.5 + (w - 1) / 2
        mid = ~(below | above)
        out[below], out[above] = lo, hi
        out[mid] = ((v[mid] - (c - 0.5)) / (w - 1) + 0.5) * (hi - lo) + lo
        return out
    if f == "linear_exact":  # PS3.3 C.11.2.1.3.2
        out = ((v - c) / w + 0.5) * (hi - lo) + lo
        out[v <= c - w / 2] = lo
        out[v > c + w / 2] = hi
        return out
    if f == "sigmoid":  # PS3.3 C.11.2.1.3.1
        with np.errstate(over="ignore"):  # exp overflow -> inf -> exactly lo, as the formula says
            return (hi - lo) / (1 + np.exp(-4 * (v - c) / w)) + lo
    if f == "lut":
        entries = lut_lookup(v, spec.voi_lut, spec.voi_lut_first_mapped)
        return lo + entries / (2 ** spec.voi_lut_bits - 1) * (hi - lo)
    return v


def displayed(x: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Stored values -> VOI output (after MONOCHROME1 inversion), per channel, float64."""
    y = voi(modality(x.astype(np.float64), spec), spec)
    if spec.invert:
        y = spec.output_max + spec.output_min - y
    return y


def geometry(src_h: int, src_w: int, spec: PreprocessSpec):
    y0, x0, h, w = spec.roi if spec.roi is not None else (0, 0, src_h, src_w)
    oh, ow = spec.out_height, spec.out_width
    if not spec.letterbox:
        return (y0, x0, h, w), (0, 0, oh, ow)
    s = min(oh / h, ow / w)
    ch = min(max(int(math.floor(h * s + 0.5)), 1), oh)
    cw = min(max(int(math.floor(w * s + 0.5)), 1), ow)
    return (y0, x0, h, w), ((oh - ch) // 2, (ow - cw) // 2, ch, cw)


def equalize(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Histogram equalization of float32 displayed values, binned exactly as the kernel bins them."""
    v = v.astype(np.float32)
    t = (v - np.float32(lo)) / (np.float32(hi) - np.float32(lo)) * np.float32(EQUALIZE_BINS)
    bins = np.clip(t, 0, EQUALIZE_BINS - 1).astype(np.int64)
    hist = np.bincount(bins.ravel(), minlength=EQUALIZE_BINS).astype(np.float64)
    cdf = np.cumsum(hist)
    cdf_min = cdf[np.argmax(hist > 0)]
    denom = cdf[-1] - cdf_min
    t = (cdf[bins] - cdf_min) / denom if denom > 0 else np.zeros(bins.shape)
    return lo + t.astype(np.float32).astype(np.float64) * (hi - lo)


def reference(x: np.ndarray, spec: PreprocessSpec, frame: int | None = None, *,
              displayed_override: np.ndarray | None = None) -> np.ndarray:
    """Float64 model input of shape (1, C, H, W) / (1, H, W, C) before the output dtype cast.

    displayed_override: use these displayed values (ROI-cropped, working channels) instead of
    computing them, e.g. an equalized image.
    """
    if frame is not None:
        x = x[frame]
    (y0, x0, h, w), (top, left, ch, cw) = geometry(x.shape[0], x.shape[1], spec)
    if displayed_override is not None:
        work = displayed_override
    else:
        work = displayed(x[y0:y0 + h, x0:x0 + w], spec)
        if spec.in_channels == 3 and spec.out_channels == 1:
            work = 0.299 * work[..., 0] + 0.587 * work[..., 1] + 0.114 * work[..., 2]
    resized = cv2.resize(np.ascontiguousarray(work), (cw, ch), interpolation=CV2_INTERP[spec.resize])
    if resized.ndim == 2:
        resized = resized[..., None]
    plane = np.full((spec.out_height, spec.out_width, resized.shape[-1]), float(spec.pad_value))
    plane[top:top + ch, left:left + cw] = resized
    if plane.shape[-1] == 1 and spec.out_channels == 3:
        plane = np.repeat(plane, 3, axis=-1)
    content = plane[top:top + ch, left:left + cw]
    if spec.normalize == "fixed":
        plane = (plane - np.asarray(spec.mean)) / np.asarray(spec.std)
    elif spec.normalize in ("zscore", "minmax"):
        lo, hi = content.min(), content.max()
        # A spread within float32 noise of the values (or of the output range) counts as a flat image:
        # the whole plane becomes 0.
        if hi - lo <= 1e-6 * max(abs(lo), abs(hi), spec.output_max - spec.output_min):
            plane = np.zeros_like(plane)
        elif spec.normalize == "zscore":
            plane = (plane - content.mean()) / content.std()
        else:
            plane = (plane - lo) / (hi - lo)
    out = plane[None] if spec.layout == "NHWC" else plane.transpose(2, 0, 1)[None]
    return out


def cast(ref: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    if spec.out_dtype == "float32":
        return ref.astype(np.float32)
    if spec.out_dtype == "float16":
        return ref.astype(np.float16)
    q = np.round(ref / spec.quant_scale) + spec.quant_zero_point
    return np.clip(q, -128, 127).astype(np.int8)
