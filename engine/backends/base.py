"""The small interface every backend implements (Polygraphy's runner pattern).

Public methods check state and arguments, then call the `*_impl` method a backend overrides:

    activate()            load the model, allocate every buffer once, warm up
    stage(x, spec, i)     write raw pixels x into batch slot i of the model input (backend-specific:
                          the CPU backend runs the fused native kernel into the bound input array, the
                          TensorRT backend copies raw pixels into pinned memory for the CUDA kernel)
    infer(n)              run the first n slots; returns {output name: array view of n rows}
    infer(n, mask=True)   segmenters, where `offers_mask`: the class mask and a NaN/Inf flag per slice
                          instead of the logits (computed on the device: H x W bytes cross PCIe, not K x H x W)
    deactivate()          free everything; the backend can be activated again

Backends are classes registered in `engine.backends` in priority order, CPU last. A class answers
`availability()` (can it run on this machine, and why not) without importing its heavy library, and
`supports(bundle)` (can it run this bundle, and why not) instead of failing later.
"""
from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np

from engine.errors import BundleError, InputError, SessionClosed
from engine.spec import PreprocessSpec

STAGES = ("decode", "preprocess", "h2d", "infer", "d2h", "postprocess", "total")
# Keys of `infer(n, mask=True)`'s result: the class mask of the manifest's segmentation output, computed
# where the logits are (uint8 (n, H, W), the rule of engine.postprocess.argmax_mask), and per slice
# whether any of its logits was NaN/Inf (uint8 (n,), non-zero = refuse the slice).
MASK_OUTPUT = "slicert:mask"
NONFINITE_OUTPUT = "slicert:nonfinite"


class Backend(abc.ABC):
    """One model, one device, preallocated buffers for up to `max_batch` inputs."""

    name: ClassVar[str] = "base"
    # Stage timings this backend measures itself (ms); the session measures the rest around calls.
    device_stages: ClassVar[tuple[str, ...]] = ()

    def __init__(self, bundle, *, variant: str, device: int = 0, threads: int | None = None,
                 max_batch: int = 1, options: dict[str, Any] | None = None):
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise InputError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise InputError(f"threads must be None (all usable cores) or an integer >= 1, got {threads!r}")
        self.bundle = bundle
        self.variant = variant
        self.device = device
        self.threads = threads
        self.max_batch = max_batch
        self.options = dict(options or {})
        self.info: dict[str, Any] = {}  # what was loaded and why; merged into Session.info
        self.stage_ms: dict[str, float] = {}  # device-side stage timings of the last infer (ms)
        # True (set at activation) when infer(n, mask=True) can return the class mask computed next to the
        # logits, so only H x W bytes per slice reach the host instead of K x H x W logits (TensorRT).
        self.offers_mask = False
        self._active = False

    # Constructor arguments every buffer set of one backend shares (see _twin).
    _CONFIG: ClassVar[tuple[str, ...]] = ("bundle", "variant", "device", "threads", "max_batch", "options")

    def _twin(self, *shared: str) -> Backend:
        """The start of fork(): an instance of this class that shares this one's configuration, its `info`
        and the loaded model objects named in `shared` (attribute names), but no buffers. The caller
        allocates the twin's own buffers and activates it."""
        twin = object.__new__(type(self))
        keep = self._CONFIG + shared
        twin.__dict__.update({k: v for k, v in self.__dict__.items() if k in keep})
        twin.info = self.info
        twin.stage_ms = {}
        twin.offers_mask = False
        twin._forked = True
        twin._active = False
        return twin

    # -- class-level queries (no heavy imports) -----------------------------------------------
    @classmethod
    @abc.abstractmethod
    def availability(cls) -> tuple[bool, str]:
        """(usable on this machine, human-readable status or the reason it is not)."""

    @classmethod
    @abc.abstractmethod
    def supports(cls, bundle, variant: str | None = None) -> tuple[bool, str]:
        """(can run this bundle [variant], reason)."""

    @classmethod
    def runs_variant(cls, bundle, variant: str) -> bool:
        """Cheap and static (no device query): does the bundle carry a form of `variant` this backend runs?
        A variant entry may restrict itself to some backends (`backends`, e.g. bf16 is OpenVINO-only)."""
        allowed = bundle.variants[variant].get("backends")
        return allowed is None or cls.name in allowed

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def is_active(self) -> bool:
        return self._active

    def activate(self) -> Backend:
        if self._active:
            return self
        self.activate_impl()
        self._active = True
        return self

    def deactivate(self) -> None:
        if not self._active:
            return
        self._active = False
        self.deactivate_impl()

    # -- hot path --------------------------------------------------------------------------------
    def stage(self, x: np.ndarray, spec: PreprocessSpec, index: int = 0, *, frame: int | None = None) -> None:
        """Raw pixels -> model input slot `index` (no allocation)."""
        if not self._active:
            raise SessionClosed(f"{self.name} backend is not active (session closed?); load the bundle again")
        if not 0 <= index < self.max_batch:
            raise InputError(f"batch index {index} out of range for max_batch={self.max_batch}")
        self.stage_impl(x, spec, index, frame)

    def infer(self, batch_size: int = 1, *, mask: bool = False) -> dict[str, np.ndarray]:
        """Run slots [0, batch_size); returns output arrays owned by the backend (valid until next infer).
        mask=True (only where `offers_mask`): {MASK_OUTPUT, NONFINITE_OUTPUT} instead of the model outputs."""
        if not self._active:
            raise SessionClosed(f"{self.name} backend is not active (session closed?); load the bundle again")
        if not 1 <= batch_size <= self.max_batch:
            raise InputError(f"batch size {batch_size} out of range [1, max_batch={self.max_batch}]; "
                             f"load with a larger max_batch")
        if mask:
            if not self.offers_mask:
                raise InputError(f"the {self.name} backend has no mask output for this model; call infer(n) and "
                                 f"take the argmax of the logits on the host (engine.postprocess.argmax_mask)")
            return self.infer_mask_impl(batch_size)
        return self.infer_impl(batch_size)

    def infer_tensors(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run already-preprocessed model inputs (for comparisons across backends; not the hot path)."""
        if not self._active:
            raise SessionClosed(f"{self.name} backend is not active (session closed?); load the bundle again")
        expected = self.input_meta()
        if set(feed) != set(expected):
            raise InputError(f"inputs {sorted(feed)} do not match the model's {sorted(expected)}")
        n = None
        for name, (shape, dtype) in expected.items():
            arr = np.asarray(feed[name])
            if arr.dtype != dtype or arr.ndim != len(shape) or tuple(arr.shape[1:]) != tuple(shape[1:]):
                raise InputError(f"input {name!r}: got {arr.dtype}{list(arr.shape)}, model wants "
                                 f"{np.dtype(dtype)}{['N', *shape[1:]]}")
            if n is not None and arr.shape[0] != n:
                raise InputError("all inputs must have the same batch size")
            n = arr.shape[0]
        if not 1 <= n <= self.max_batch:
            raise InputError(f"batch size {n} out of range [1, max_batch={self.max_batch}]")
        return self.infer_tensors_impl(feed, n)

    # -- for subclasses --------------------------------------------------------------------------
    @abc.abstractmethod
    def activate_impl(self) -> None: ...

    @abc.abstractmethod
    def deactivate_impl(self) -> None: ...

    @abc.abstractmethod
    def stage_impl(self, x: np.ndarray, spec: PreprocessSpec, index: int, frame: int | None) -> None: ...

    @abc.abstractmethod
    def infer_impl(self, batch_size: int) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def infer_tensors_impl(self, feed: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]: ...

    def infer_mask_impl(self, batch_size: int) -> dict[str, np.ndarray]:
        """Only backends that set `offers_mask` override this."""
        raise NotImplementedError(f"{self.name} backend offers no mask output")

    @abc.abstractmethod
    def input_meta(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """{input name: ((max_batch, ...), dtype)}."""


def check_model_io(bundle, variant: str, input_shapes: dict[str, tuple],
                   output_shapes: dict[str, tuple] | None = None) -> None:
    """The model a backend loaded must be the one the manifest describes: one input with the manifest's
    name and (C, H, W) (which the preprocessing spec produces), and the manifest's output with one
    channel per label (skipped when `output_shapes` is None). The batch axis is ignored. Raises BundleError."""
    m = bundle.manifest
    where = f"bundle {bundle.path.name}, {variant} model"
    if len(input_shapes) != 1:
        raise BundleError(f"{where}: has {len(input_shapes)} inputs {sorted(input_shapes)}; SliceRT models take "
                          f"one image tensor; rebuild the bundle from a single-input export")
    name, shape = next(iter(input_shapes.items()))
    if name != m["input"]["name"]:
        raise BundleError(f"{where}: input is named {name!r}, the manifest says {m['input']['name']!r}")
    spec = bundle.spec
    want = ((spec.out_channels, spec.out_height, spec.out_width) if spec.layout == "NCHW"
            else (spec.out_height, spec.out_width, spec.out_channels))
    if tuple(shape[1:]) != want:
        raise BundleError(f"{where}: input {name!r} has shape {['N', *shape[1:]]}, but the manifest's preprocessing "
                          f"spec produces {['N', *want]} ({spec.layout}); the bundle is inconsistent, rebuild it")
    if output_shapes is None:
        return
    out_name = m["output"]["name"]
    if out_name not in output_shapes:
        raise BundleError(f"{where}: has no output {out_name!r} (it has {sorted(output_shapes)}); the manifest and "
                          f"the model disagree, rebuild the bundle")
    out = tuple(output_shapes[out_name])
    k = len(m["model"]["labels"])
    if m["model"]["task"] == "classification":
        ok = len(out) == 2 and out[1] == k
        want_out = f"[N, {k}]"
    else:
        ok = len(out) == 4 and (out[1] == k or (out[1] == 1 and k == 2))
        want_out = f"[N, {k}, H, W]"
    if not ok:
        raise BundleError(f"{where}: output {out_name!r} has shape {['N', *out[1:]]}, expected {want_out} for the "
                          f"manifest's {k} labels; rebuild the bundle")
