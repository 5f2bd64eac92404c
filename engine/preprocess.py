"""Raw pixels -> model input tensor through the fused native kernel (engine._native).

Two entry points, as every SliceRT op has:

* `preprocess(x, spec)` allocates and returns a (1, C, H, W) or (1, H, W, C) array of `spec.out_dtype`;
* `preprocess_into(out, x, spec, batch_index)` writes slot `batch_index` of a caller-owned batch buffer
  and allocates nothing: the hot path of a Session.

Input `x`: 2-D grey (H, W); grey frames (F, H, W) with `frame=`; RGB (H, W, 3) or RGB frames
(F, H, W, 3) with `in_channels=3`. dtypes uint8, uint16, int16, int32, float32 in native byte order,
any strides (an ROI or a frame of a larger array is read in place, never copied).
NaN or Inf in a float32 input raises `InputError`: no value can be displayed for them (PS3.3 C.11
defines the chain for finite values only), and a model silently fed a substituted value is worse than
a refused image.

Semantics decided here (and tested in tests/kernels):
* voi_function "none" passes the modality output through unscaled; `invert` then mirrors it inside
  [output_min, output_max] (y' = output_min + output_max - y), as it does after a window.
* Resampling reproduces cv2.resize: INTER_NEAREST, INTER_LINEAR (half-pixel centres), INTER_AREA
  (exact box coverage when both axes shrink, OpenCV's area-mode weights otherwise). Letterbox keeps the
  aspect ratio, centres the content and fills the rest with `pad_value` (VOI units, before
  normalization); `geometry()` reports the placement and engine.postprocess.mask_to_source inverts it.
* zscore / minmax use the statistics of the resampled content (never the pad). A flat image (spread
  <= 1e-6 x max(|values|, output range), i.e. within float32 rounding noise) becomes all zeros.
* equalize: histogram (4096 bins over [output_min, output_max]) of the displayed ROI pixels, then
  (cdf - cdf_min) / (N - cdf_min) scaled to the output range, applied before resampling; it needs one
  grey channel (RGB input must use out_channels=1, equalizing the BT.601 luma).
* RGB -> grey is BT.601 luma of the displayed channels; grey -> 3 channels replicates.

Per-op precision (float32 output vs a float64 NumPy reference of the DICOM formulas): values are
computed in float32, so expect |err| <= 2e-6 * (output range) + 1e-5 * |ref|; int32 inputs beyond
2^24 lose low bits when converted to float32. float16 output adds one half-precision rounding; int8
output may differ from a float64 reference by one step where a value sits on a rounding boundary.
The same image gives the same bits whatever its strides and the thread count.
"""
from __future__ import annotations

import threading
import weakref

import numpy as np

from engine import _native
from engine.errors import InputError
from engine.spec import PreprocessSpec

_ALLOWED_DTYPES = (np.uint8, np.uint16, np.int16, np.int32, np.float32)
_OUT_DTYPES = {"float32": np.float32, "float16": np.float16, "int8": np.int8}

# Prepared (parsed + folded-table) native specs, keyed by the identity of the frozen spec object and
# dropped when that object dies. A spec's folded table (up to 65536 entries) is built once.
_prepared: dict[int, tuple[weakref.ref, _native.PreparedSpec]] = {}
_prepared_lock = threading.Lock()


def prepared(spec: PreprocessSpec) -> _native.PreparedSpec:
    """The native form of `spec`, cached for the lifetime of the spec object."""
    key = id(spec)
    hit = _prepared.get(key)
    if hit is not None and hit[0]() is spec:
        return hit[1]
    if not isinstance(spec, PreprocessSpec):
        raise InputError(f"spec must be an engine.spec.PreprocessSpec, got {type(spec).__name__}")
    native = _native.PreparedSpec(spec)
    with _prepared_lock:
        _prepared[key] = (weakref.ref(spec, lambda _ref, key=key: _prepared.pop(key, None)), native)
    return native


def set_num_threads(n: int) -> None:
    """Threads used by the CPU kernels, the calling thread included (default: min(cores, 8), or
    the SLICERT_NUM_THREADS environment variable)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise InputError(f"set_num_threads: n must be an integer, got {n!r}")
    _native.set_num_threads(int(n))


def get_num_threads() -> int:
    return _native.get_num_threads()


def _owner_bounds(a: np.ndarray) -> tuple[int, int] | None:
    """Byte range of the memory that ultimately owns `a`'s data, or None when `a` owns it (or the
    owner is not a buffer we can measure)."""
    owner = None
    base = a.base
    while base is not None:  # views of views, as_strided's DummyArray, bytes from np.frombuffer...
        owner = base
        base = getattr(base, "base", None)
    if owner is None:
        return None
    if not isinstance(owner, np.ndarray):
        try:
            owner = np.frombuffer(owner, dtype=np.uint8)
        except (TypeError, ValueError):
            return None
    return np.lib.array_utils.byte_bounds(owner)


def source_view(x: np.ndarray, spec: PreprocessSpec, frame: int | None = None) -> np.ndarray:
    """Validate `x` and return the (H, W) or (H, W, 3) view of the frame to process (no copy)."""
    if not isinstance(x, np.ndarray):
        raise InputError(f"input must be a numpy.ndarray, got {type(x).__name__}")
    if isinstance(x, np.ma.MaskedArray):
        raise InputError(masked_array_error(x))
    if x.dtype.type not in _ALLOWED_DTYPES:
        raise InputError(f"input dtype {x.dtype} is not supported: use uint8, uint16, int16, int32 or float32")
    if not x.dtype.isnative:
        raise InputError(f"input dtype {x.dtype.str} is not in native byte order: convert with "
                         f"x.astype(x.dtype.newbyteorder('='))")
    if x.size == 0:
        raise InputError(f"input image is empty: shape {x.shape}")
    grey = spec.in_channels == 1
    frame_ndim = 3 if grey else 4
    if x.ndim == frame_ndim:
        if frame is None:
            hint = " or use in_channels=3 for (H, W, 3) RGB" if grey and x.shape[-1] == 3 else ""
            raise InputError(f"input of shape {x.shape} is {x.ndim}-D with in_channels={spec.in_channels}: "
                             f"pass frame=<index> if it holds {x.shape[0]} frames{hint}")
        if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or not -x.shape[0] <= frame < x.shape[0]:
            raise InputError(f"frame {frame!r} is out of range for {x.shape[0]} frames")
        x = x[int(frame)]
    elif frame is not None and frame != 0:
        raise InputError(f"frame={frame!r} given but the input of shape {x.shape} is a single frame")
    expected = "(H, W)" if grey else "(H, W, 3)"
    if x.ndim != frame_ndim - 1 or (not grey and x.shape[-1] != 3):
        raise InputError(f"input shape {x.shape} does not match in_channels={spec.in_channels}: expected {expected}"
                         f"{' or frames (F, H, W)' if grey else ' or frames (F, H, W, 3)'}")
    bounds = _owner_bounds(x)
    if bounds is not None:
        lo, hi = np.lib.array_utils.byte_bounds(x)
        if lo < bounds[0] or hi > bounds[1]:
            raise InputError(f"input strides {x.strides} reach outside the memory of the array they view "
                             f"(bytes [{lo - bounds[0]}, {hi - bounds[0]}) of a {bounds[1] - bounds[0]}-byte buffer)")
    return x


def masked_array_error(x: np.ma.MaskedArray) -> str:
    """Why a NumPy masked array is refused: the kernel reads the data buffer and would silently use
    the values under the mask as if they were pixels."""
    hidden = int(np.count_nonzero(np.ma.getmaskarray(x)))
    return (f"input is a numpy masked array ({hidden} of {x.size} pixels masked): the mask cannot be honoured "
            f"and would be dropped; pass x.filled(value) to choose what masked pixels become, or x.data to "
            f"use the values under the mask")


def output_shape(spec: PreprocessSpec, batch: int = 1) -> tuple[int, int, int, int]:
    c, h, w = spec.out_channels, spec.out_height, spec.out_width
    return (batch, c, h, w) if spec.layout == "NCHW" else (batch, h, w, c)


def preprocess_into(out: np.ndarray, x: np.ndarray, spec: PreprocessSpec, batch_index: int = 0, *,
                    frame: int | None = None) -> None:
    """Preprocess one image into `out[batch_index]` (C-contiguous, shape `output_shape(spec, N)`,
    dtype `spec.out_dtype`). Allocates nothing; every element of the slot is written."""
    native = prepared(spec)
    view = source_view(x, spec, frame)
    if not isinstance(out, np.ndarray):
        raise InputError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if isinstance(batch_index, bool) or not isinstance(batch_index, (int, np.integer)):
        raise InputError(f"batch_index must be an integer, got {batch_index!r}")
    if np.may_share_memory(out, view):
        raise InputError("out and the input share memory: the kernel would overwrite pixels it still reads")
    _native.preprocess_into(out, view, native, int(batch_index))


def preprocess(x: np.ndarray, spec: PreprocessSpec, *, frame: int | None = None) -> np.ndarray:
    """Preprocess one image into a new (1, C, H, W) / (1, H, W, C) array of `spec.out_dtype`."""
    native = prepared(spec)
    view = source_view(x, spec, frame)
    out = np.empty(output_shape(spec), dtype=_OUT_DTYPES[spec.out_dtype])
    _native.preprocess_into(out, view, native, 0)
    return out


def preprocess_cuda_into(out, x, shape: tuple[int, ...], strides: tuple[int, ...], dtype, spec: PreprocessSpec,
                         stream, batch_index: int = 0, *, check_finite: bool = True) -> None:
    """GPU version of `preprocess_into`, enqueued on `stream` (an `engine._native.Stream`).

    `x` / `out`: `engine._native.DeviceBuffer` (bounds are then checked) or integer device pointers.
    `shape` (H, W) or (H, W, 3), `strides` in bytes (any sign, multiples of the element size), `dtype`
    one of uint8/uint16/int16/int32/float32. For float32 input, `check_finite` scans for NaN/Inf and
    synchronizes the stream to read the answer (InputError if found); pass False while capturing a
    CUDA graph and check on the host instead.
    """
    _native.preprocess_cuda_into(out, x, tuple(int(v) for v in shape), tuple(int(v) for v in strides),
                                 np.dtype(dtype).name, prepared(spec), stream, int(batch_index), bool(check_finite))


def cuda_prepare(spec: PreprocessSpec, device: int = 0) -> None:
    """Upload the spec's LUT tables to `device` now (required before capturing a CUDA graph)."""
    _native.cuda_prepare(prepared(spec), int(device))


def geometry(src_hw: tuple[int, int], spec: PreprocessSpec) -> dict[str, tuple[int, ...]]:
    """Where the source lands in the output: {"roi": (y0, x0, h, w) source pixels,
    "content": (top, left, h, w) output pixels, "out": (H, W)}. The inverse is
    engine.postprocess.mask_to_source."""
    h, w = (int(v) for v in src_hw)
    return _native.geometry(prepared(spec), h, w)


__all__ = ["preprocess", "preprocess_into", "preprocess_cuda_into", "cuda_prepare", "set_num_threads",
           "get_num_threads", "geometry", "output_shape", "prepared", "source_view"]
