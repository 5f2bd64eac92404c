"""Model output -> clinical quantities: probabilities, class masks in the source image's geometry,
per-class pixel counts and areas in mm².

Hot loops (argmax over logit planes, mask back to source geometry, class histograms) run natively
(engine._native, GIL released); the rest is small NumPy. The model-to-source map is separable
(source row -> mask row, source column -> mask column), so it is built once per geometry
(`source_mapping`, cached) and per-class source pixel counts come from the small model mask
weighted by how many source rows x columns show each mask pixel: exact, without the source mask.
"""
from __future__ import annotations

import math
import threading
import weakref

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


def class_scores_into(scores: np.ndarray, logits: np.ndarray, kind: str, temperature: float = 1.0) -> int:
    """Per-class scores of one slice into `scores` (float32, preallocated): kind "softmax", "sigmoid"
    or "none" (logits copied), of logits / `temperature` (the bundle's calibration, engine.trust.calibration;
    softmax and sigmoid only). Returns the index of the best class, or -1 (scores untouched) when a
    logit is NaN or Inf."""
    if logits.size <= 32:
        # A handful of logits: Python floats (float64) take fewer and cheaper calls than six NumPy
        # ufunc dispatches on a 2-element array (Session.run's post-processing went from 4.5 to
        # about 2 us), and round once, at the end.
        vals = logits.tolist()
        if not all(map(math.isfinite, vals)):
            return -1
        if temperature != 1.0 and kind in ("softmax", "sigmoid"):
            inv = 1.0 / temperature
            vals = [v * inv for v in vals]
        if kind == "softmax":
            m = max(vals)
            e = [math.exp(v - m) for v in vals]
            t = sum(e)
            vals = [v / t for v in e]
        elif kind == "sigmoid":
            vals = [0.5 * (1.0 + math.tanh(0.5 * v)) for v in vals]
        scores[:] = vals
        return vals.index(max(vals))
    # A float64-accumulated sum is NaN/Inf iff some element is: one pass, no temporary array.
    if not math.isfinite(float(logits.sum(dtype=np.float64))):
        return -1
    if temperature != 1.0 and kind in ("softmax", "sigmoid"):
        np.multiply(logits, 1.0 / temperature, out=scores)
        logits = scores  # the in-place steps below read and write `scores`
    if kind == "softmax":
        np.subtract(logits, logits.max(), out=scores)
        np.exp(scores, out=scores)
        scores /= scores.sum()
    elif kind == "sigmoid":
        # (1 + tanh(x/2)) / 2: the same overflow-free form as sigmoid() above.
        np.multiply(logits, 0.5, out=scores)
        np.tanh(scores, out=scores)
        scores += 1.0
        scores *= 0.5
    else:
        scores[...] = logits
    return int(scores.argmax())


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


def argmax_mask_into(out: np.ndarray, logits: np.ndarray) -> bool:
    """`argmax_mask` into a caller-owned uint8 (H, W) C-contiguous `out` for C-contiguous float32/float16
    (K, H, W) logits, no conversion; returns False when some logit is NaN/Inf (checked in the same pass)."""
    return _native.argmax_mask_into(out, logits)


class SourceMapping:
    """The nearest-neighbour map of one geometry: a (mask_h, mask_w) class mask in model geometry ->
    the (src_h, src_w) source image under `spec` (ROI, resize, letterbox undone as `mask_to_source`).
    Get one with `source_mapping(...)` (cached per geometry)."""

    __slots__ = ("_map", "src_hw", "mask_hw", "__weakref__")

    def __init__(self, mask_hw: tuple[int, int], src_hw: tuple[int, int], spec: PreprocessSpec):
        mh, mw = (int(v) for v in mask_hw)
        h, w = (int(v) for v in src_hw)
        if h < 1 or w < 1:
            raise InputError(f"mask_to_source: source size must be positive, got {src_hw}")
        if mh < 1 or mw < 1:
            raise InputError(f"mask_to_source: mask must be a non-empty 2-D (H, W) array, got {mask_hw}")
        self._map = _native.SourceMap(prepared(spec), h, w, mh, mw)
        self.src_hw = (h, w)
        self.mask_hw = (mh, mw)

    @property
    def row_multiplicity(self) -> np.ndarray:
        """int64 [mask_h]: how many source rows show each mask row (0 for letterbox padding)."""
        return self._map.row_multiplicity

    @property
    def col_multiplicity(self) -> np.ndarray:
        """int64 [mask_w]: how many source columns show each mask column."""
        return self._map.col_multiplicity

    def to_source(self, mask: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 mask (mask_hw, any strides) -> uint8 source-geometry mask (`out`: C-contiguous src_hw)."""
        if out is None:
            out = np.empty(self.src_hw, np.uint8)
        self._map.to_source_into(out, mask)
        return out

    def class_counts(self, mask: np.ndarray, num_classes: int) -> np.ndarray:
        """int64 [num_classes] pixel counts of `to_source(mask)` (background includes pixels outside the
        ROI), computed from the model mask alone. InputError if a shown pixel holds a class >= num_classes."""
        return self._map.class_counts(mask, num_classes)


_MAPPINGS_MAX = 64  # geometries kept; a cine has one, a mixed series a few
_mappings: dict[tuple, tuple[weakref.ref, SourceMapping]] = {}
_mappings_lock = threading.Lock()


def source_mapping(mask_hw: tuple[int, int], src_hw: tuple[int, int], spec: PreprocessSpec) -> SourceMapping:
    """The cached `SourceMapping` for (mask size, source size, spec object)."""
    key = (id(spec), mask_hw[0], mask_hw[1], src_hw[0], src_hw[1])
    hit = _mappings.get(key)
    if hit is not None and hit[0]() is spec:
        return hit[1]
    mapping = SourceMapping(mask_hw, src_hw, spec)
    with _mappings_lock:
        if len(_mappings) >= _MAPPINGS_MAX:
            _mappings.clear()
        # The weakref both proves the id still names this spec and drops the entry with it.
        _mappings[key] = (weakref.ref(spec, lambda _ref, key=key: _mappings.pop(key, None)), mapping)
    return mapping


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
    if m.ndim != 2 or m.size == 0:
        raise InputError(f"mask_to_source: mask must be a non-empty 2-D (H, W) array, got shape {m.shape}")
    if not isinstance(spec, PreprocessSpec):
        raise InputError(f"spec must be an engine.spec.PreprocessSpec, got {type(spec).__name__}")
    source_mapping(m.shape, (h, w), spec)._map.to_source_into(out, m)
    return out


def _check_num_classes(num_classes, what: str) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or not 1 <= num_classes <= 256:
        raise InputError(f"{what}: num_classes must be an integer in [1, 256], got {num_classes!r}")
    return int(num_classes)


def class_areas_mm2(mask: np.ndarray, pixel_spacing_mm: tuple[float, float] | None,
                    num_classes: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-class pixel counts (int64 [num_classes]) and areas in mm² (float64, count x row spacing x
    column spacing), for a mask in the geometry the spacing describes (the source image). Areas are
    None when the spacing is unknown: SliceRT never guesses a physical size. For a model-geometry
    mask, `source_class_areas_mm2` gives the same numbers without building the source mask."""
    m = np.asarray(mask)
    num_classes = _check_num_classes(num_classes, "class_areas_mm2")
    if m.dtype.kind not in "ub" or m.ndim != 2:
        raise InputError(f"class_areas_mm2: mask must be a 2-D unsigned integer array, got {m.dtype} {m.shape}")
    if m.size and m.dtype.itemsize == 1:  # uint8 / bool: native histogram (bincount casts to intp first)
        counts = _native.class_counts_u8(m.view(np.uint8), num_classes)
    else:
        counts = np.bincount(m.ravel(), minlength=num_classes).astype(np.int64)
        if counts.size > num_classes:
            raise InputError(f"class_areas_mm2: mask holds class {int(m.max())} but num_classes={num_classes}")
    return counts, _areas(counts, pixel_spacing_mm)


def source_class_areas_mm2(mask: np.ndarray, src_hw: tuple[int, int], spec: PreprocessSpec,
                           pixel_spacing_mm: tuple[float, float] | None,
                           num_classes: int) -> tuple[np.ndarray, np.ndarray | None]:
    """`class_areas_mm2(mask_to_source(mask, src_hw, spec), pixel_spacing_mm, num_classes)`, exactly,
    from the model-geometry uint8 `mask` alone (O(mask pixels), not O(source pixels)). Spacing is the
    source image's (row_mm, col_mm)."""
    num_classes = _check_num_classes(num_classes, "class_areas_mm2")
    m = np.asarray(mask)
    if m.dtype != np.uint8 or m.ndim != 2 or m.size == 0:
        raise InputError(f"class_areas_mm2: mask must be a non-empty 2-D uint8 array, got {m.dtype} {m.shape}")
    if not isinstance(spec, PreprocessSpec):
        raise InputError(f"spec must be an engine.spec.PreprocessSpec, got {type(spec).__name__}")
    h, w = (int(v) for v in src_hw)
    counts = source_mapping(m.shape, (h, w), spec).class_counts(m, num_classes)
    return counts, _areas(counts, pixel_spacing_mm)


def _areas(counts: np.ndarray, pixel_spacing_mm) -> np.ndarray | None:
    if pixel_spacing_mm is None:
        return None
    try:
        row_mm, col_mm = (float(v) for v in pixel_spacing_mm)
    except (TypeError, ValueError) as exc:
        raise InputError(f"class_areas_mm2: pixel_spacing_mm must be (row_mm, col_mm), got {pixel_spacing_mm!r}") from exc
    if not (math.isfinite(row_mm) and math.isfinite(col_mm) and row_mm > 0 and col_mm > 0):
        raise InputError(f"class_areas_mm2: pixel spacing must be finite and > 0 mm, got {pixel_spacing_mm!r}")
    return counts * (row_mm * col_mm)


__all__ = ["softmax", "sigmoid", "argmax_mask", "argmax_mask_into", "argmax_mask_cuda_into", "SourceMapping",
           "source_mapping", "mask_to_source", "class_areas_mm2", "source_class_areas_mm2"]
