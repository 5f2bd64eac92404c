"""`engine.load(bundle) -> Session`; `Session.run(x) -> Result`.

A Session owns one verified bundle and one activated backend whose buffers were allocated once at
load. `run` = resolve the input (raw array, DICOM path/bytes/Dataset, engine.dicom.Slice, or a device
array) -> fused preprocessing straight into the backend's input buffer -> inference -> post-processing
into physical units. Every stage is timed with perf_counter_ns (ms in `Result.timings_ms`).

Thread model:
  * ONNX Runtime: one Session may be called from several threads. The first call uses the buffers
    allocated at load; a call that finds them busy gets its own buffer set (allocated once, then
    pooled) on the same InferenceSession. Results do not depend on the thread (tested bit-identical).
  * TensorRT: the same pool gives each concurrent caller its own execution context, stream and
    device buffers (TensorRT contexts are not shareable across threads); for a fixed thread count,
    prefer one Session per thread/stream.
  * `stream()` decodes in a background thread while the caller's thread runs inference.
  * close() is safe while other threads run: running calls finish, later calls raise SessionClosed.
"""
from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from engine.backends import backend_class, backend_names, require_backend
from engine.backends.base import MASK_OUTPUT, NONFINITE_OUTPUT
from engine.bundle import format as fmt
from engine.bundle.reader import Bundle, open_bundle
from engine.errors import AccuracyGateError, BackendUnavailable, EngineMismatch, InputError, SessionClosed
from engine.spec import PreprocessSpec

_perf_ns = time.perf_counter_ns
PRECISIONS = ("best", *fmt.VARIANTS)

# Spec fields the model was trained with; a caller-supplied spec may change only how stored values
# become grey levels (modality LUT, VOI, inversion, channels) and the ROI, never these.
MODEL_SPEC_FIELDS = ("out_height", "out_width", "out_channels", "layout", "out_dtype", "quant_scale",
                     "quant_zero_point", "resize", "letterbox", "pad_value", "normalize", "mean", "std", "equalize",
                     "output_min", "output_max")
_DLPACK_CUDA_DEVICES = {2, 3, 13}  # kDLCUDA, kDLCUDAHost, kDLCUDAManaged
_LIVE_INFO = ("cuda_graphs", "cuda_graphs_off")  # backend.info keys that change after load


class Result:
    """One slice's output.

    classification: `scores` (float32 [num_classes], post-processed: softmax/sigmoid), `label`.
    segmentation: `mask` (uint8 label image in the SOURCE geometry: ROI/letterbox/resize undone),
    `pixel_counts` {label: pixels}, `areas_mm2` {label: mm²} (None without pixel spacing),
    `pixel_spacing_mm` (row, col) or None.
    Always: `timings_ms` {decode, preprocess, h2d, infer, d2h, postprocess, total} in milliseconds.
    On TensorRT, h2d/preprocess/infer/d2h are GPU times from CUDA events; when the slice ran as one
    replayed CUDA graph, "infer" is the whole launch (H2D + preprocessing kernel + engine + D2H),
    h2d and d2h are None and "preprocess" is the host-side staging into pinned memory.
    """

    __slots__ = (
        "_scratch",
        "areas_mm2",
        "batch_size",
        "dropped_frames",
        "eligibility",
        "frame_index",
        "identity",
        "label",
        "labels",
        "mask",
        "ood",
        "pixel_counts",
        "pixel_spacing_mm",
        "saliency",
        "scores",
        "task",
        "timings_ms",
    )

    def __init__(self, task: str, labels: list[str]):
        self.task = task
        self.labels = labels
        self.scores: np.ndarray | None = None
        self.label: str | None = None
        self.mask: np.ndarray | None = None
        self.pixel_counts: dict[str, int] | None = None
        self.areas_mm2: dict[str, float] | None = None
        self.pixel_spacing_mm: tuple[float, float] | None = None
        self.timings_ms: dict[str, float] = dict.fromkeys(
            ("decode", "preprocess", "h2d", "infer", "d2h", "postprocess", "total"), 0.0)
        self.frame_index: int | None = None
        self.dropped_frames = 0
        self.batch_size = 1
        self._scratch: dict[str, np.ndarray] | None = None
        # Trust (engine.trust, docs/trust.md): eligibility reasons (() = eligible, None = not checked),
        # the OOD score (engine.trust.ood.OODScore or None), the saliency map (saliency=True).
        self.eligibility: tuple[str, ...] | None = None
        self.ood = None
        self.saliency: np.ndarray | None = None
        self.identity = None  # engine.dicomout.identity.ModelIdentity of the session that filled it

    def __repr__(self) -> str:
        t = self.timings_ms["total"]
        if self.task == "classification":
            return f"Result(label={self.label!r}, scores={np.round(self.scores, 4).tolist()}, total={t:.3f} ms)"
        areas = None if self.areas_mm2 is None else {k: round(v, 2) for k, v in self.areas_mm2.items()}
        return (f"Result(mask={None if self.mask is None else self.mask.shape}, areas_mm2={areas}, "
                f"pixel_spacing_mm={self.pixel_spacing_mm}, total={t:.3f} ms)")

    @property
    def flagged(self) -> bool:
        """True when the input is outside the bundle's intended inputs or its OOD score is above threshold."""
        return bool(self.eligibility) or (self.ood is not None and self.ood.flag)

    @property
    def flags(self) -> list[str]:
        """Why this result is flagged, one sentence each (empty when it is not)."""
        out = [f"ineligible: {r}" for r in self.eligibility or ()]
        if self.ood is not None and self.ood.flag:
            out.append(f"out of distribution: {self.ood.reason}")
        return out

    def to_dicom_seg(self, source, **options):
        """This segmentation result as a DICOM SEG (pydicom Dataset) referencing `source`, the DICOM it was
        computed from (path/bytes/Dataset/Slice). Needs the `dicom` extra; see engine.dicomout.seg."""
        from engine.dicomout.seg import result_to_seg

        return result_to_seg(self, source, **options)

    def to_dicom_sr(self, source, seg=None, **options):
        """This result as a DICOM SR TID 1500 measurement report (pydicom Dataset) referencing `source` and,
        for segmentation, the segments of `seg` (from to_dicom_seg). See engine.dicomout.sr."""
        from engine.dicomout.sr import result_to_sr

        return result_to_sr(self, source, seg=seg, **options)


def _check_spacing(spacing) -> tuple[float, float] | None:
    """(row_mm, col_mm) from a caller's pixel_spacing_mm, or InputError saying what is wrong."""
    if spacing is None:
        return None
    try:
        values = [float(v) for v in spacing]
    except (TypeError, ValueError):
        raise InputError(f"pixel_spacing_mm must be (row_mm, col_mm) numbers, got {spacing!r}") from None
    if isinstance(spacing, (str, bytes)) or len(values) != 2:
        raise InputError(f"pixel_spacing_mm must be two numbers (row_mm, col_mm), got {spacing!r}")
    row, col = values
    # 1e3 mm per pixel is already absurd for any imaging device, and so is below 1e-6 mm (1 nm); the
    # bounds keep a pixel's area finite and normal (not flushed to 0). Files: engine.dicom.spacing.
    if not (math.isfinite(row) and math.isfinite(col) and 1e-6 <= row <= 1e3 and 1e-6 <= col <= 1e3):
        raise InputError(f"pixel_spacing_mm must be finite and in [1e-6, 1000] mm, got {spacing!r}")
    return row, col


def _spec_key(spec: PreprocessSpec) -> tuple:
    parts = []
    for f in dataclasses.fields(spec):
        v = getattr(spec, f.name)
        if isinstance(v, np.ndarray):
            v = (v.shape, hash(v.tobytes()))
        parts.append(v)
    return tuple(parts)


def _resolve_variant(bundle: Bundle, precision: str, backend: str) -> str:
    variants = bundle.variants
    if precision == "best":
        # Never a variant whose accuracy gate failed for this backend, whatever the manifest's default
        # says (validate_manifest refuses such a default; this also covers a per-backend form's gate).
        default = (bundle.manifest.get("default_variant") or {}).get(backend)
        cls = backend_class(backend)
        if default in variants and fmt.gate_failed(variants[default], backend) is None and \
                cls.runs_variant(bundle, default):  # e.g. a bf16 default on a CPU without bf16
            return default
        for v in fmt.BEST_ORDER[backend] + tuple(variants):
            if v in variants and fmt.gate_failed(variants[v], backend) is None and cls.runs_variant(bundle, v):
                return v
        raise AccuracyGateError(f"bundle {bundle.path.name}: every variant failed its accuracy gate for {backend} ("
                                + "; ".join(f"{v}: {fmt.gate_failed(e, backend)}" for v, e in variants.items())
                                + "); precision='best' picks only variants that passed")
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision not in variants:
        raise InputError(f"precision {precision!r} is not in bundle {bundle.path.name} (it has {sorted(variants)}); "
                         f"pick one of those or rebuild with `slicert build --precision {precision}`")
    return precision


def _select_backend(bundle: Bundle, backend: str, precision: str, options: dict[str, Any]):
    if backend == "auto":
        from engine.backends.cpu_choice import auto_order

        skipped = []
        order, cpu_why = auto_order(bundle, precision, backend_names())
        for name in order:
            cls = backend_class(name)
            ok, why = cls.availability()
            if not ok:
                skipped.append(f"{name} unavailable: {why}")
                continue
            variant = _resolve_variant(bundle, precision, name)
            ok, why = cls.supports(bundle, variant, options)
            if not ok:
                skipped.append(f"{name} cannot run this bundle: {why}")
                continue
            reason = f"auto: chose {name} ({why})"
            if skipped:
                reason += "; " + "; ".join(skipped)
            if cpu_why and name != "tensorrt":
                reason += f"; {cpu_why}"
            return cls, variant, reason
        raise BackendUnavailable("no backend can run this bundle here: " + "; ".join(skipped))
    if not isinstance(backend, str):
        raise InputError(f"backend must be 'auto' or one of {backend_names()}, got {backend!r}")
    cls = require_backend(backend)
    variant = _resolve_variant(bundle, precision, backend)
    ok, why = cls.supports(bundle, variant, options)
    if not ok:
        err = EngineMismatch if backend == "tensorrt" else BackendUnavailable
        raise err(f"backend {backend!r} cannot run bundle {bundle.path.name}: {why}")
    return cls, variant, f"requested backend={backend!r} ({why})"


class Session:
    """A loaded bundle, ready to run. Create with `engine.load(path, ...)`."""

    def __init__(self, bundle: Bundle, backend, *, why: str, variant: str, max_concurrency: int | None = None,
                 min_side: int = 16, eligibility: str = "refuse", ood: bool = True):
        from engine.postprocess import class_scores_into
        from engine.trust.guard import TrustGuard

        self.bundle = bundle
        self.min_side = min_side
        self._class_scores = class_scores_into
        self.spec: PreprocessSpec = bundle.spec
        self.task: str = bundle.task
        self.labels: list[str] = bundle.labels
        self.voi_policy: str = bundle.manifest["voi_policy"]
        self.variant = variant
        out = bundle.manifest["output"]
        self._out_name: str = out["name"]
        self._post: str = out["postprocess"]
        self._num_classes = len(self.labels)
        self._backend = backend
        self._trust = TrustGuard(bundle, variant, backend, eligibility=eligibility, ood=ood)
        self._temperature = self._trust.temperature
        # Segmenters: take the class mask the backend computes next to the logits (TensorRT: on the GPU, so
        # H x W bytes cross PCIe instead of K x H x W floats) unless trust annotations read the logits;
        # saliency=True also reads them, decided per call.
        self._device_mask = (self.task == "segmentation" and bool(getattr(backend, "offers_mask", False))
                             and not self._trust.reads_logits(saliency=False))
        # Idle buffer sets. A Condition, not queue.SimpleQueue: CPython 3.11's SimpleQueue.get(timeout)
        # can block forever when another thread takes the item between its wake-up and its re-check
        # (the recomputed timeout goes negative = infinite); a close() must always wake waiters.
        self._idle: list = [backend]
        self._pool = threading.Condition(threading.Lock())
        self._all = [backend]
        self._n_sets = 1
        self._max_concurrency = max_concurrency or max(2, 2 * (os.cpu_count() or 1))
        self._closed = False
        self._spec_cache: dict[Any, PreprocessSpec] = {}
        self._info_cache: dict[tuple[int, str], tuple[Any, PreprocessSpec]] = {}
        self._info: dict[str, Any] = {
            "backend": backend.name, "precision": variant, "variant": variant, "device": backend.info.get("device",
                                                                                                          "cpu"),
            "why": why, "bundle": str(bundle.path), "model": bundle.manifest["model"]["name"], "task": self.task,
            "labels": list(self.labels), "max_batch": backend.max_batch, "voi_policy": self.voi_policy,
            "schema_version": bundle.manifest["schema_version"],
            "signature": bundle.signature.to_dict() if bundle.signature is not None else None,
            "trust": self._trust.info(),
        }
        self._info.update({k: v for k, v in backend.info.items() if k not in self._info})
        if self.task == "segmentation":
            from engine import postprocess  # noqa: F401  (fail at load, not at the first slice)
        from engine.dicomout.identity import ModelIdentity  # stdlib only; highdicom is never imported here

        self.identity = ModelIdentity.of_session(self)

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def info(self) -> dict[str, Any]:
        """What was loaded and why (backend, variant, device, trust, ...). Keys the backend can change while
        running (TensorRT: "cuda_graphs", and "cuda_graphs_off" saying why after a failed capture) are read
        from the backend on every access, so they are never a stale snapshot from load time."""
        info, live = self._info, self._backend.info
        for key in _LIVE_INFO:
            if key in live:
                info[key] = live[key]
        return info

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Free the backend's buffers and the bundle mapping. Idempotent."""
        if self._closed:
            return
        with self._pool:
            self._closed = True
            idle, self._idle = self._idle, []
            self._pool.notify_all()
        for b in idle:
            b.deactivate()
        self.bundle.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"<Session {self.info['model']} {self.task} on {self.info['backend']} ({self.variant}), "
                f"{state}>")

    def _closed_error(self) -> SessionClosed:
        return SessionClosed(f"session for {self.bundle.path.name} is closed; load it again with "
                             f"engine.load({str(self.bundle.path)!r})")

    def _acquire(self):
        pool = self._pool
        with pool:
            while True:
                if self._closed:
                    raise self._closed_error()
                if self._idle:
                    return self._idle.pop()
                if self._n_sets < self._max_concurrency and hasattr(self._backend, "fork"):
                    self._n_sets += 1  # reserved before forking, so concurrent callers cannot overshoot
                    break
                pool.wait()  # every buffer set is busy: a release or close() wakes us
        try:
            twin = self._backend.fork()  # outside the lock: allocating and warming up takes milliseconds
        except BaseException:
            with pool:
                self._n_sets -= 1
                pool.notify()
            raise
        with pool:
            self._all.append(twin)
            if self._closed:
                twin.deactivate()
                raise self._closed_error()
        return twin

    def _release(self, backend) -> None:
        with self._pool:
            if not self._closed:
                self._idle.append(backend)
                self._pool.notify()
                return
        backend.deactivate()

    # -- input resolution ------------------------------------------------------------------------
    def _check_spec(self, spec: PreprocessSpec) -> PreprocessSpec:
        if spec is self.spec:
            return spec
        if not isinstance(spec, PreprocessSpec):
            raise InputError(f"spec must be an engine.spec.PreprocessSpec, got {type(spec).__name__}")
        bad = [f for f in MODEL_SPEC_FIELDS if getattr(spec, f) != getattr(self.spec, f)]
        if bad:
            diffs = ", ".join(f"{f}={getattr(spec, f)!r} (bundle: {getattr(self.spec, f)!r})" for f in bad)
            raise InputError(f"spec does not match the bundle's model: {diffs}; start from session.spec and change "
                             f"only the modality LUT / VOI / invert / in_channels / roi fields, e.g. "
                             f"session.spec.replace(window_center=..., window_width=...)")
        key = _spec_key(spec)
        canonical = self._spec_cache.get(key)
        if canonical is None:
            if len(self._spec_cache) > 64:
                self._spec_cache.clear()
            canonical = self._spec_cache[key] = spec
        return canonical  # same object for equal specs: the native prepared form is reused

    def _slice_spec(self, s, spec: PreprocessSpec | None) -> PreprocessSpec:
        if spec is not None:
            return self._check_spec(spec)
        key = (id(s.info), self.voi_policy)
        hit = self._info_cache.get(key)
        if hit is not None and hit[0] is s.info:
            return hit[1]
        derived = self._check_spec(s.spec_for(self.spec, self.voi_policy))
        if len(self._info_cache) > 64:
            self._info_cache.clear()
        self._info_cache[key] = (s.info, derived)  # holds `info` so its id is not reused
        return derived

    def _resolve(self, x, spec, frame, pixel_spacing_mm):
        """-> (pixels, spec, frame, pixel_spacing_mm, decode_ns, frame_index)."""
        if pixel_spacing_mm is not None:
            pixel_spacing_mm = _check_spacing(pixel_spacing_mm)
        if type(x) is np.ndarray:
            s = self.spec if spec is None else self._check_spec(spec)
            if s.in_channels == 1 and x.ndim == 3 and x.shape[-1] == 3 and frame is None:
                raise InputError(f"input of shape {x.shape} looks like RGB, but the bundle's spec takes grey (H, W) "
                                 f"pixels; pass spec=session.spec.replace(in_channels=3) to convert RGB to grey "
                                 f"(BT.601 luma), or frame=<index> if these are 3 grey frames")
            return x, s, frame, pixel_spacing_mm, 0, frame, None
        if hasattr(x, "spec_for") and hasattr(x, "pixels"):  # engine.dicom.Slice
            return (x.pixels, self._slice_spec(x, spec), None,
                    pixel_spacing_mm or x.pixel_spacing_mm, 0, x.frame_index, x)
        if hasattr(x, "spec_for") and hasattr(x, "__len__"):  # engine.dicom.FrameSequence
            if len(x) != 1:
                raise InputError(f"{x!r} holds {len(x)} frames: use session.stream(...) for cine, "
                                 f"session.run_batch(...) for a series, or run(seq[i]) for one frame")
            t0 = _perf_ns()
            first = x[0]
            return (first.pixels, self._slice_spec(first, spec), None, pixel_spacing_mm or first.pixel_spacing_mm,
                    _perf_ns() - t0, 0, first)
        if _is_device_array(x):
            if getattr(self._backend, "accepts_device_arrays", False):
                # Already on the GPU: the CUDA preprocessing kernel reads it in place (no host copy); `frame`
                # picks a frame of an (F, H, W) device array there.
                return x, self.spec if spec is None else self._check_spec(spec), frame, pixel_spacing_mm, 0, frame, None
            raise InputError(f"a GPU array ({type(x).__name__}) was given but this session runs on "
                             f"{self.info['backend']} (CPU): copy it to host memory first, or load the bundle "
                             f"with backend='tensorrt' on a GPU machine")
        if isinstance(x, np.ma.MaskedArray):  # from_dlpack below would drop the mask without a word
            from engine.preprocess import masked_array_error

            raise InputError(masked_array_error(x))
        if hasattr(x, "__dlpack__"):  # CPU DLPack (e.g. a PyTorch CPU tensor): zero-copy view
            return self._resolve(np.from_dlpack(x), spec, frame, pixel_spacing_mm)
        if isinstance(x, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(x, "read") or \
                type(x).__name__ in ("Dataset", "FileDataset"):
            t0 = _perf_ns()
            src = bytes(x) if isinstance(x, (bytearray, memoryview)) else x
            img = _read_dicom(src)
            if not hasattr(img, "pixels"):
                if len(img) != 1:
                    raise InputError(f"{img!r} holds {len(img)} frames: use session.stream(...) for cine or "
                                     f"session.run_batch(...)")
                img = img[0]
            decode_ns = _perf_ns() - t0
            return (img.pixels, self._slice_spec(img, spec), None, pixel_spacing_mm or img.pixel_spacing_mm,
                    decode_ns, img.frame_index, img)
        raise InputError(f"cannot run on a {type(x).__name__}: give a numpy array of raw pixels, a DICOM path/"
                         f"bytes/pydicom Dataset, an engine.dicom.Slice, or a device array (TensorRT backend)")

    # -- post-processing ---------------------------------------------------------------------------
    def new_result(self, src_hw: tuple[int, int] | None = None) -> Result:
        """A Result with preallocated arrays for `run_into` (segmentation needs the source (H, W))."""
        r = Result(self.task, self.labels)
        if self.task == "classification":
            r.scores = np.zeros(self._num_classes, np.float32)
        else:
            if src_hw is None:
                raise InputError("segmentation results need the source image size: new_result(src_hw=(H, W))")
            h, w = _check_src_hw(src_hw)
            r.mask = np.zeros((h, w), np.uint8)
            r._scratch = {}
        return r

    def _postprocess(self, raw: np.ndarray, r: Result, src_hw, spec: PreprocessSpec, spacing) -> None:
        r.identity = self.identity
        if self.task == "segmentation":
            self._postprocess_mask(raw, r, src_hw, spec, spacing)
            return
        scores = r.scores
        if scores is None:
            scores = r.scores = np.empty(self._num_classes, np.float32)
        best = self._class_scores(scores, raw, self._post, self._temperature)
        if best < 0:
            raise self._non_finite_error()
        r.label = self.labels[best]

    def _too_small(self, hw) -> InputError:
        # A model fed a constant or near-constant upsampled image still answers, confidently and
        # meaninglessly: a scanner handing over a 1x1 or 1xN image has a bug upstream, so say so.
        return InputError(f"the image is {hw[0]}x{hw[1]} pixels, below this session's min_side={self.min_side} "
                          f"(the model sees {self.spec.out_height}x{self.spec.out_width}, which would be interpolated "
                          f"from almost nothing); pass engine.load(..., min_side=1) to accept tiny images")

    def _non_finite_error(self) -> InputError:
        return InputError(f"the {self.variant} model produced NaN/Inf outputs for this input: check that the "
                          f"spec (window/rescale) matches the data, or load with precision='fp32'")

    def _postprocess_row(self, outs: dict[str, np.ndarray], masked: bool, i: int, r: Result, src_hw,
                         spec: PreprocessSpec, spacing) -> np.ndarray | None:
        """Fill `r` from row i of what _infer returned; returns the row's logits (None when `masked`: the
        backend's MASK_OUTPUT row and NONFINITE_OUTPUT flag came instead)."""
        if not masked:
            raw = outs[self._out_name][i]
            self._postprocess(raw, r, src_hw, spec, spacing)
            return raw
        r.identity = self.identity
        if outs[NONFINITE_OUTPUT][i]:
            raise self._non_finite_error()
        self._mask_to_result(outs[MASK_OUTPUT][i], r, src_hw, spec, spacing)
        return None

    def _infer(self, backend, n: int, saliency: bool) -> tuple[dict[str, np.ndarray], bool]:
        """(outputs, True when they are the backend's mask output instead of the model's logits)."""
        if self._device_mask and not saliency:
            return backend.infer(n, mask=True), True
        return backend.infer(n), False

    def _postprocess_mask(self, raw: np.ndarray, r: Result, src_hw, spec: PreprocessSpec, spacing) -> None:
        from engine import postprocess as pp

        scratch = r._scratch if r._scratch is not None else {}
        small = scratch.get("small")
        if small is None or small.shape != raw.shape[1:]:
            small = scratch["small"] = np.empty(raw.shape[1:], np.uint8)
        if raw.dtype in (np.float32, np.float16) and raw.flags.c_contiguous:
            finite = pp.argmax_mask_into(small, raw)  # the NaN/Inf check rides along the argmax pass
        else:
            finite = math.isfinite(float(raw.sum(dtype=np.float64)))
            pp.argmax_mask(raw, out=small)
        if not finite:
            raise self._non_finite_error()
        self._mask_to_result(small, r, src_hw, spec, spacing)

    def _mask_to_result(self, small: np.ndarray, r: Result, src_hw, spec: PreprocessSpec, spacing) -> None:
        # Hot path of every cine frame: the source-geometry map is built once per (mask size, source size,
        # spec) and cached (engine.postprocess.source_mapping); class counts come from the small model
        # mask weighted by source rows x columns per mask pixel, exact and O(model pixels).
        from engine import postprocess as pp

        hw = (int(src_hw[0]), int(src_hw[1]))
        if r.mask is None:
            r.mask = np.empty(hw, np.uint8)
        elif r.mask.shape != hw:
            raise InputError(f"this result's mask was allocated for a {r.mask.shape} source, the input is {hw}: "
                             f"use session.new_result(src_hw={hw}) for this image size")
        mapping = pp.source_mapping(small.shape, hw, spec)
        mapping.to_source(small, out=r.mask)
        r.pixel_spacing_mm = None if spacing is None else (float(spacing[0]), float(spacing[1]))
        counts = mapping.class_counts(small, max(self._num_classes, 2)).tolist()
        labels = self.labels
        r.pixel_counts = dict(zip(labels, counts))
        if spacing is None:
            r.areas_mm2 = None
        else:
            row_mm, col_mm = r.pixel_spacing_mm
            if not (math.isfinite(row_mm) and math.isfinite(col_mm) and row_mm > 0 and col_mm > 0):
                raise InputError(f"class_areas_mm2: pixel spacing must be finite and > 0 mm, got {spacing!r}")
            px_mm2 = row_mm * col_mm
            r.areas_mm2 = {lab: c * px_mm2 for lab, c in zip(labels, counts)}

    # -- public API -------------------------------------------------------------------------------
    def run(self, x, *, spec: PreprocessSpec | None = None, frame: int | None = None,
            pixel_spacing_mm: tuple[float, float] | None = None, saliency: bool = False) -> Result:
        """Run one slice. `x`: raw pixel array (the bundle's spec, or `spec` with the same model fields),
        DICOM path/bytes/pydicom Dataset, engine.dicom.Slice, or a device array (TensorRT).
        `frame` picks a frame of an (F, H, W) array; `pixel_spacing_mm` (row, col) gives raw arrays areas."""
        return self._run(x, None, spec, frame, pixel_spacing_mm, saliency)

    def run_into(self, result: Result, x, *, spec: PreprocessSpec | None = None, frame: int | None = None,
                 pixel_spacing_mm: tuple[float, float] | None = None, saliency: bool = False) -> Result:
        """`run` writing into a Result from `new_result()`: classification allocates no array."""
        if not isinstance(result, Result) or result.task != self.task:
            raise InputError("result must come from this session's new_result()")
        return self._run(x, result, spec, frame, pixel_spacing_mm, saliency)

    def _run(self, x, result, spec, frame, spacing, saliency=False) -> Result:
        t0 = _perf_ns()
        if self._closed:
            raise self._closed_error()
        backend = self._acquire()
        try:
            pixels, spec_used, frame, spacing, decode_ns, frame_index, header = self._resolve(x, spec, frame, spacing)
            reasons = self._trust.check(header)  # IneligibleInput here, before any inference, under "refuse"
            t1 = _perf_ns()
            backend.stage(pixels, spec_used, 0, frame=frame)  # validates dtype, shape, strides, values
            t2 = _perf_ns()
            src_hw = pixels.shape[-3:-1] if spec_used.in_channels == 3 else pixels.shape[-2:]
            if src_hw[0] < self.min_side or src_hw[1] < self.min_side:
                raise self._too_small(src_hw)
            outs, masked = self._infer(backend, 1, saliency)
            t3 = _perf_ns()
            stage_ms = backend.stage_ms  # read before release: another thread may reuse this buffer set
            r = result if result is not None else Result(self.task, self.labels)
            raw = self._postprocess_row(outs, masked, 0, r, src_hw, spec_used, spacing)
            if self._trust.enabled or saliency:
                self._trust.annotate(r, backend, outs, 0, raw, reasons, src_hw, spec_used, saliency)
            t4 = _perf_ns()
        finally:
            self._release(backend)
        r.frame_index = frame_index
        tm = r.timings_ms
        tm["decode"] = decode_ns * 1e-6
        tm["preprocess"] = (t2 - t1) * 1e-6
        tm["infer"] = (t3 - t2) * 1e-6
        tm["h2d"] = tm["d2h"] = 0.0
        if backend.device_stages:
            tm.update(stage_ms)
        tm["postprocess"] = (t4 - t3) * 1e-6
        tm["total"] = (t4 - t0) * 1e-6
        return r

    def run_batch(self, items: Iterable, *, spec: PreprocessSpec | None = None,
                  pixel_spacing_mm: tuple[float, float] | None = None, saliency: bool = False) -> list[Result]:
        """Run many slices (a CT series), `max_batch` per inference call. Stage timings of each Result
        are those of the whole batch it ran in (`Result.batch_size`)."""
        if self._closed:
            raise self._closed_error()
        items = list(items)
        results: list[Result] = []
        backend = self._acquire()
        try:
            n_max = backend.max_batch
            for start in range(0, len(items), n_max):
                chunk = items[start:start + n_max]
                t0 = _perf_ns()
                resolved = [self._resolve(x, spec, None, pixel_spacing_mm) for x in chunk]
                reasons = [self._trust.check(item[6]) for item in resolved]  # refuse before any inference
                t1 = _perf_ns()
                for i, (pixels, s, frame, _sp, _d, _fi, _h) in enumerate(resolved):
                    backend.stage(pixels, s, i, frame=frame)
                    hw = pixels.shape[-3:-1] if s.in_channels == 3 else pixels.shape[-2:]
                    if hw[0] < self.min_side or hw[1] < self.min_side:
                        raise self._too_small(hw)
                t2 = _perf_ns()
                outs, masked = self._infer(backend, len(chunk), saliency)
                t3 = _perf_ns()
                batch = []
                for i, (pixels, s, _f, sp, decode_ns, fi, _h) in enumerate(resolved):
                    r = Result(self.task, self.labels)
                    src_hw = pixels.shape[-3:-1] if s.in_channels == 3 else pixels.shape[-2:]
                    raw = self._postprocess_row(outs, masked, i, r, src_hw, s, sp)
                    if self._trust.enabled or saliency:
                        self._trust.annotate(r, backend, outs, i, raw, reasons[i], src_hw, s, saliency)
                    r.frame_index, r.batch_size = fi, len(chunk)
                    batch.append(r)
                t4 = _perf_ns()
                stage_ms = {"decode": (t1 - t0) * 1e-6, "preprocess": (t2 - t1) * 1e-6, "h2d": 0.0,
                            "infer": (t3 - t2) * 1e-6, "d2h": 0.0, "postprocess": (t4 - t3) * 1e-6,
                            "total": (t4 - t0) * 1e-6}
                if backend.device_stages:
                    stage_ms.update(backend.stage_ms)
                for r in batch:
                    r.timings_ms.update(stage_ms)
                results.extend(batch)
        finally:
            self._release(backend)
        return results

    def stream(self, frames, *, drop_stale: bool = True, spec: PreprocessSpec | None = None,
               pixel_spacing_mm: tuple[float, float] | None = None, saliency: bool = False) -> Iterator[Result]:
        """Results for a cine loop or live source, decoded in a background thread.

        `frames`: a multi-frame DICOM (path/bytes/Dataset/FrameSequence), an (F, H, W) array, or any
        iterable of inputs `run` accepts. drop_stale=True (real time): each result is for the newest
        frame available when inference became free; skipped frames are counted in
        `Result.dropped_frames`. drop_stale=False: every frame, in order.
        """
        if self._closed:
            raise self._closed_error()
        source = _frame_source(frames)
        mailbox = _Mailbox(capacity=1 if drop_stale else 4, drop_oldest=drop_stale)
        producer = threading.Thread(target=mailbox.fill, args=(source,), name="slicert-stream-decode", daemon=True)
        producer.start()
        try:
            while True:
                item = mailbox.take()
                if item is None:
                    break
                x, frame, decode_ns, dropped = item
                r = self._run(x, None, spec, frame, pixel_spacing_mm, saliency)
                r.timings_ms["decode"] = decode_ns * 1e-6
                r.dropped_frames = dropped
                if r.frame_index is None:
                    r.frame_index = frame
                yield r
        finally:
            mailbox.stop()
            producer.join(timeout=1.0)  # a source blocked in next() (a live probe) is a daemon thread


def _check_src_hw(src_hw) -> tuple[int, int]:
    """(H, W) for new_result: two integers >= 1 whose product stays under the DICOM reader's pixel limit
    (a mask is one byte per pixel, so an unchecked size is a MemoryError or a ValueError from NumPy)."""
    from engine.dicom.header import DEFAULT_PIXEL_LIMIT

    try:
        h, w = src_hw
        ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (h, w))
    except (TypeError, ValueError):
        ok = False
    if not ok or h < 1 or w < 1 or int(h) * int(w) > DEFAULT_PIXEL_LIMIT:
        raise InputError(f"new_result: src_hw must be two integers (H, W) >= 1 with H*W <= {DEFAULT_PIXEL_LIMIT} "
                         f"pixels, got {src_hw!r}")
    return int(h), int(w)


def _read_dicom(src):
    from engine import dicom
    from engine.errors import DicomError

    if isinstance(src, (str, os.PathLike)) and "\0" in os.fspath(src):
        raise DicomError(f"cannot read DICOM {src!r}: the path contains a NUL byte")
    try:
        return dicom.read(src)
    except OSError as exc:  # missing file, a directory, unreadable: a typed error naming the path
        raise DicomError(f"cannot read DICOM {src!r}: {exc.strerror or exc}") from exc


def _is_device_array(x) -> bool:
    if hasattr(x, "__cuda_array_interface__"):
        return True
    dev = getattr(x, "__dlpack_device__", None)
    if dev is None:
        return False
    try:
        return int(dev()[0]) in _DLPACK_CUDA_DEVICES
    except Exception:
        return False


def _frame_source(frames) -> Iterator[tuple[Any, int | None, int]]:
    """Yields (input, frame index for arrays, decode ns) lazily, in the producer thread."""
    if isinstance(frames, np.ndarray):
        if frames.ndim < 3:
            raise InputError(f"stream() needs frames: an (F, H, W) or (F, H, W, 3) array, got shape {frames.shape}")

        def arrays():
            for i in range(frames.shape[0]):
                yield frames, i, 0
        return arrays()

    def dicom_frames(seq):
        it = iter(seq)
        while True:
            t0 = _perf_ns()
            try:
                s = next(it)
            except StopIteration:
                return
            yield s, None, _perf_ns() - t0

    if isinstance(frames, (str, os.PathLike, bytes, bytearray)) or type(frames).__name__ in ("Dataset", "FileDataset"):
        src = bytes(frames) if isinstance(frames, bytearray) else frames

        def from_file():
            t0 = _perf_ns()
            img = _read_dicom(src)
            head_ns = _perf_ns() - t0
            if hasattr(img, "pixels"):
                yield img, None, head_ns
                return
            yield from dicom_frames(img)
        return from_file()
    if hasattr(frames, "spec_for") and hasattr(frames, "__len__"):
        return dicom_frames(frames)
    if isinstance(frames, Iterable):
        return ((x, None, 0) for x in frames)
    raise InputError(f"stream() cannot iterate a {type(frames).__name__}")


class _Mailbox:
    """Producer -> consumer hand-off. drop_oldest: keep only the newest `capacity` frames."""

    def __init__(self, capacity: int, drop_oldest: bool):
        self._items: list = []
        self._cap = capacity
        self._drop = drop_oldest
        self._cond = threading.Condition()
        self._done = False
        self._stopped = False
        self._error: BaseException | None = None
        self._dropped = 0

    def fill(self, source) -> None:
        try:
            for x, frame, decode_ns in source:
                with self._cond:
                    while not self._drop and len(self._items) >= self._cap and not self._stopped:
                        self._cond.wait()
                    if self._stopped:
                        return
                    if self._drop and len(self._items) >= self._cap:
                        self._items.pop(0)
                        self._dropped += 1
                    self._items.append((x, frame, decode_ns))
                    self._cond.notify_all()
        except BaseException as exc:  # handed to the consumer thread, raised there
            with self._cond:
                self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def take(self):
        with self._cond:
            while not self._items and not self._done:
                self._cond.wait()
            if self._items:
                x, frame, decode_ns = self._items.pop(0)
                dropped, self._dropped = self._dropped, 0
                self._cond.notify_all()
                return x, frame, decode_ns, dropped
            if self._error is not None:
                raise self._error
            return None

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._items.clear()
            self._cond.notify_all()


MAX_BATCH = 4096  # the largest batch `slicert build` verifies (builder.build_bundle)
MAX_BATCH_BUFFER_BYTES = 1 << 30  # model input + output buffers of one buffer set, before the model runs


def _check_batch_bytes(bundle: Bundle, max_batch: int) -> None:
    """max_batch x the bytes of one slot (model input from the spec, output from the manifest's shape)
    must stay under MAX_BATCH_BUFFER_BYTES: checked before a buffer is allocated or the warm-up runs the
    model at that batch (whose activations are a multiple of these bytes)."""
    spec = bundle.spec
    per_item = spec.out_channels * spec.out_height * spec.out_width * np.dtype(spec.out_dtype).itemsize
    out_shape = bundle.manifest["output"].get("shape")
    if isinstance(out_shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in out_shape[1:]):
        per_item += 4 * math.prod(max(d, 1) for d in out_shape[1:])
    if max_batch * per_item > MAX_BATCH_BUFFER_BYTES:
        raise InputError(f"max_batch={max_batch} needs {max_batch * per_item / 2**20:.0f} MiB of model input/output "
                         f"buffers ({per_item} bytes per slice), above the {MAX_BATCH_BUFFER_BYTES >> 20} MiB limit; "
                         f"use max_batch <= {max(1, MAX_BATCH_BUFFER_BYTES // per_item)}")


def load(path: str | os.PathLike[str], backend: str = "auto", device: int = 0, threads: int | None = None,
         max_batch: int = 1, precision: str = "best", *, rebuild: bool = False,
         use_optimized: bool = True, cuda_graph: bool = True, lean_runtime: str | None = None,
         min_side: int = 16, trusted_keys=None, eligibility: str = "refuse", ood: bool = True) -> Session:
    """Open and verify a `.slicert` bundle and return a ready Session.

    backend: "auto" (TensorRT when a GPU and TensorRT are present and the bundle can run there, else
    ONNX Runtime on the CPU; `session.info["why"]` says which and why), "onnxruntime" or "tensorrt"
    (BackendUnavailable listing what is available when it cannot run here).
    device: CUDA device index (TensorRT). threads: CPU threads for inference and preprocessing
    (default: usable cores). max_batch: largest run_batch chunk, 1..MAX_BATCH (4096, the builder's limit);
    buffers for it are allocated now, refused (InputError) beyond MAX_BATCH_BUFFER_BYTES of I/O.
    precision: "best" (the bundle's fastest variant that passed its accuracy gate) or fp32/fp16/int8/mixed.
    rebuild: TensorRT may compile an engine from the bundled ONNX when none matches this GPU.
    use_optimized: ONNX Runtime may use the bundle's offline-optimized model when it matches this CPU.
    cuda_graph: TensorRT replays each slice as one captured CUDA graph (False: eager launches, for
    debugging and for the graph == eager acceptance check).
    lean_runtime: path to the libnvinfer_lean library of the TensorRT version that built a
    version-compatible engine (needed when that version differs from this one: SliceRT builds such
    plans with EXCLUDE_LEAN_RUNTIME so devices can ship the small lean runtime).
    min_side: smallest image side in pixels `run` accepts (InputError below it; default 16).
    trusted_keys: Ed25519 public keys (PEM paths or bytes): the bundle must be signed by one of them
    (SignatureError otherwise); `info["signature"]` records the signer and whether it verified. Only
    a verified signature lets TensorRT run a version-compatible plan's embedded host code.
    eligibility: what `run` does with a DICOM outside the bundle's intended inputs (trust.eligibility:
    modality, photometric interpretation, body part, view, pixel spacing, bit depth): "refuse" (default:
    IneligibleInput naming each mismatch, before inference), "flag" (run it; `Result.eligibility` lists
    the reasons and `Result.flagged` is True) or "off". Raw arrays carry no header and are not checked.
    ood: compute `Result.ood` (out-of-distribution score, threshold, flag, reason) on every result when
    the bundle has a fitted OOD model (default True). See docs/trust.md.
    """
    if not isinstance(min_side, int) or isinstance(min_side, bool) or min_side < 1:
        raise InputError(f"min_side must be an integer >= 1 (pixels), got {min_side!r}")
    from engine.trust.eligibility import POLICIES

    if not isinstance(eligibility, str) or eligibility not in POLICIES:
        raise InputError(f"eligibility must be one of {POLICIES}, got {eligibility!r}")
    if not isinstance(ood, bool):
        raise InputError(f"ood must be True or False, got {ood!r}")
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or not 1 <= max_batch <= MAX_BATCH:
        raise InputError(f"max_batch must be an integer in [1, {MAX_BATCH}], got {max_batch!r}")
    if not isinstance(device, int) or isinstance(device, bool) or device < 0:
        raise InputError(f"device must be a CUDA device index >= 0, got {device!r}")
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"engine.load: path must be a str or os.PathLike to a .slicert bundle, got "
                         f"{type(path).__name__}")
    bundle = open_bundle(path, trusted_keys=trusted_keys)
    try:
        _check_batch_bytes(bundle, max_batch)
        options = {"rebuild": rebuild, "use_optimized": use_optimized, "device": device,
                   "cuda_graph": bool(cuda_graph), "lean_runtime": lean_runtime}
        cls, variant, why = _select_backend(bundle, backend, precision, options)
        manifest_batch = bundle.manifest["input"].get("max_batch")
        if cls.name == "tensorrt" and manifest_batch and max_batch > manifest_batch and not rebuild:
            raise EngineMismatch(f"max_batch={max_batch} exceeds the {manifest_batch} the bundle's engines were built "
                                 f"for; rebuild with `slicert build --max-batch {max_batch}` or load with rebuild=True")
        if threads is not None:
            from engine import preprocess

            preprocess.set_num_threads(threads)
        b = cls(bundle, variant=variant, device=device, threads=threads, max_batch=max_batch, options=options)
        b.activate()
    except BaseException:
        bundle.close()
        raise
    return Session(bundle, b, why=why, variant=variant, min_side=min_side, eligibility=eligibility, ood=ood)


__all__ = ["Result", "Session", "load"]
