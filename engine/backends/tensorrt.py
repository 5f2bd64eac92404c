"""TensorRT backend (GPU), written against TensorRT 11.4's Python API (tests/data/tensorrt-11.4-api;
a test checks every `trt.*` attribute used here exists there, and in the lean runtime's module).

Per slice, with every buffer allocated once at activation:
  raw stored pixels (uint16 etc., not float) -> pinned host staging -> H2D -> the native CUDA
  preprocessing kernel writes the engine's input tensor -> execute_async_v3 -> (argmax on device for
  segmenters, when the native module has it) -> D2H into pinned host memory.
The sequence for one (batch size, source size, dtype, spec) is run eagerly once, then captured as a
CUDA graph and replayed: one launch per slice. Tensor addresses are set once (set_tensor_address) on
device buffers owned by the native module; no pycuda, no per-call allocation.

Engine choice (manifest `engines`): exact (same TensorRT major.minor and compute capability) >
compatible (an Ampere+ hardware-compatible plan on an Ampere+ GPU, or a version-compatible plan
built by an older TensorRT of the same major) > rebuilt from the bundled ONNX when the caller passed
rebuild=True > EngineMismatch naming what the bundle has and what this device is.

Thread model: one execution context, stream and buffer set per backend instance; `fork()` gives a
concurrent caller its own (TensorRT contexts must not be shared across threads).

Native API used (engine._native, cpp/cuda_resources.cpp): Stream(device) {.handle, .synchronize()},
DeviceBuffer(nbytes, device) {.ptr, .copy_from_host(array, stream), .copy_to_host(array, stream)},
PinnedBuffer(nbytes) {.ptr, .array(dtype, shape)}, Event(timing, device) {.record(stream),
.elapsed_ms(start)}, CudaGraph {.begin_capture, .end_capture, .launch}, cuda_prepare(spec, device)
(LUT upload before capture), preprocess_cuda_into(out, x, shape, strides, dtype, spec, stream,
batch_index, check_finite). Post-processing (softmax / argmax / mask back to source) runs on the
host after the D2H copy of the outputs: the native module has no device post-processing kernel yet.
`availability()` names whatever is missing.
"""
from __future__ import annotations

import importlib.util
import math
from typing import Any, ClassVar

import numpy as np

from engine.backends.base import Backend, check_model_io
from engine.errors import BackendUnavailable, BundleError, CudaError, EngineMismatch, InputError

NATIVE_CONTRACT = ("Stream", "DeviceBuffer", "PinnedBuffer", "Event", "CudaGraph", "preprocess_cuda_into",
                   "cuda_prepare")
_DTYPE_NAMES = {np.dtype(t): np.dtype(t).name for t in (np.uint8, np.uint16, np.int16, np.int32, np.float32)}


def _missing_native() -> list[str]:
    from engine import _native

    return [name for name in NATIVE_CONTRACT if not hasattr(_native, name)]


def _import_trt():
    """The full `tensorrt` module when installed, else the lean runtime `tensorrt_lean` (runs plans only)."""
    if importlib.util.find_spec("tensorrt") is not None:
        import tensorrt as trt
    else:
        import tensorrt_lean as trt
    return trt


def _major_minor(version: str | None) -> tuple[int, int] | None:
    try:
        parts = str(version).split(".")
        return int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        return None


def pick_engine(engines: list[dict[str, Any]], variant: str, cc: tuple[int, int],
                trt_version: str | None, lean_runtime: str | None = None) -> tuple[dict[str, Any] | None, str]:
    """(engine entry or None, why) for this GPU and TensorRT version. Pure function of the manifest.

    A version-compatible plan built without its lean runtime (EXCLUDE_LEAN_RUNTIME) by another
    TensorRT version needs that version's lean runtime library (`lean_runtime`, a path to
    libnvinfer_lean.so.<major>) to run here.
    """
    mine = [e for e in engines if e.get("variant") == variant]
    here = f"sm_{cc[0]}{cc[1]} with TensorRT {trt_version}"
    if not mine:
        others = sorted({e.get('variant') for e in engines})
        return None, (f"the bundle has no TensorRT engine for the {variant} variant"
                      + (f" (engines exist for {others})" if others else " (it was built without TensorRT)"))
    rt = _major_minor(trt_version)
    for e in mine:  # exact
        if _major_minor(e["trt_version"]) == rt and tuple(e.get("compute_capability", ())) == tuple(cc) \
                and e.get("hardware_compat", "none") in ("none", "same-cc"):
            return e, f"exact engine {e['plan']} ({here})"
    for e in mine:  # hardware-compatible
        if e.get("hardware_compat") == "ampere+" and cc >= (8, 0) and _major_minor(e["trt_version"]) == rt:
            return e, f"Ampere+ hardware-compatible engine {e['plan']} on {here}"
    needs_lean = []
    for e in mine:  # version-compatible, built by an older TensorRT of the same major
        built = _major_minor(e["trt_version"])
        cc_ok = tuple(e.get("compute_capability", ())) == tuple(cc) or (
            e.get("hardware_compat") == "ampere+" and cc >= (8, 0))
        if e.get("version_compatible") and built and rt and built[0] == rt[0] and built <= rt and cc_ok:
            if e.get("lean_runtime_excluded") and e["trt_version"] != trt_version and not lean_runtime:
                needs_lean.append(e)
                continue
            return e, f"version-compatible engine {e['plan']} (built with TensorRT {e['trt_version']}) on {here}"
    if needs_lean:
        e = needs_lean[0]
        return None, (f"{e['plan']} is version-compatible but was built by TensorRT {e['trt_version']} without its "
                      f"lean runtime; pass lean_runtime='/path/to/libnvinfer_lean.so' from TensorRT "
                      f"{e['trt_version']} to run it with {here}")
    have = ", ".join(f"{e['plan']} (sm_{''.join(map(str, e.get('compute_capability', ['?'])))}, TensorRT "
                     f"{e['trt_version']}, {e.get('hardware_compat', 'none')})" for e in mine)
    return None, f"no engine fits {here}; the bundle has {have}"


class TensorRTBackend(Backend):
    name: ClassVar[str] = "tensorrt"
    device_stages: ClassVar[tuple[str, ...]] = ("h2d", "preprocess", "infer", "d2h")
    accepts_device_arrays: ClassVar[bool] = True

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        from engine.bundle.tensorrt_build import tensorrt_unavailable_reason, tensorrt_version

        reason = tensorrt_unavailable_reason(0, need_builder=False)
        if reason:
            return False, reason
        missing = _missing_native()
        if missing:
            return False, f"this SliceRT build's native module lacks CUDA resources {missing}"
        return True, f"TensorRT {tensorrt_version()}"

    @classmethod
    def supports(cls, bundle, variant: str | None = None, options: dict | None = None) -> tuple[bool, str]:
        from engine.bundle.tensorrt_build import device_compute_capability, tensorrt_version

        options = options or {}
        variant = variant or bundle.manifest.get("default_variant", {}).get("tensorrt")
        if variant not in bundle.variants:
            return False, f"the bundle has no {variant} variant (it has {sorted(bundle.variants)})"
        try:
            cc, name = device_compute_capability(int(options.get("device", 0)))
        except BackendUnavailable as exc:
            return False, str(exc)
        entry, why = pick_engine(bundle.engines, variant, cc, tensorrt_version(), options.get("lean_runtime"))
        if entry is not None:
            return True, why
        if options.get("rebuild"):
            if importlib.util.find_spec("tensorrt") is None:
                return False, why + "; rebuilding needs the full tensorrt package (only the lean runtime is here)"
            return True, why + f"; rebuilding the {variant} engine from the bundled ONNX on {name} (rebuild=True)"
        return False, (why + "; fix: build an engine on this device (`slicert build ... --target tensorrt`), ship a "
                       "hardware-compatible one (--hardware-compat ampere+), or load(..., rebuild=True)")

    # -- activation --------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        from engine.bundle.tensorrt_build import build_engine, device_compute_capability, tensorrt_version

        missing = _missing_native()
        if missing:
            raise BackendUnavailable(f"engine._native lacks CUDA resources {missing}; rebuild SliceRT with CUDA")
        trt = _import_trt()
        cc, device_name = device_compute_capability(self.device)
        lean_runtime = self.options.get("lean_runtime")
        entry, why = pick_engine(self.bundle.engines, self.variant, cc, tensorrt_version(), lean_runtime)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if entry is None:
            if not self.options.get("rebuild"):
                raise EngineMismatch(why)
            built = build_engine(self.bundle.read(self.bundle.variants[self.variant]["onnx"]), variant=self.variant,
                                 max_batch=self.max_batch, device=self.device)
            plan: Any = built.plan
            version_compatible = False
            why += "; engine rebuilt at load"
        else:
            plan = self.bundle.view(entry["plan"])  # zero-copy view of the 4 KiB-aligned member
            version_compatible = bool(entry.get("version_compatible"))
        if version_compatible:
            # A version-compatible plan runs lean-runtime host code: allowed for bundles whose SHA-256
            # verified. Built with EXCLUDE_LEAN_RUNTIME, it uses this process's TensorRT when the versions
            # match, else the lean runtime library of the building version, loaded from `lean_runtime`.
            self._runtime.engine_host_code_allowed = True
            if entry["trt_version"] != tensorrt_version() and entry.get("lean_runtime_excluded") and lean_runtime:
                self._runtime = self._runtime.load_runtime(str(lean_runtime))
                self._runtime.engine_host_code_allowed = True
                why += f"; lean runtime loaded from {lean_runtime}"
        engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineMismatch(f"TensorRT could not deserialize {entry['plan'] if entry else 'the rebuilt engine'} "
                                 f"on {device_name} (sm_{cc[0]}{cc[1]}); rebuild it on this device")
        self._engine = engine
        self._cc = cc
        self.info.update(device=f"cuda:{self.device} ({device_name}, sm_{cc[0]}{cc[1]})", engine=(
            entry["plan"] if entry else "rebuilt"), engine_why=why, tensorrt=tensorrt_version(),
            cuda_graphs=bool(self.options.get("cuda_graph", True)))
        self._create_context()

    def _create_context(self) -> None:
        from engine import _native

        trt = _import_trt()
        engine = self._engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise CudaError("TensorRT could not create an execution context (out of device memory?)",
                            device=self.device)
        self._stream = _native.Stream(self.device)
        self._inputs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._output_names: list[str] = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                shape = tuple(engine.get_tensor_shape(name))
                self._inputs[name] = ((self.max_batch, *shape[1:]), dtype)
            else:
                self._output_names.append(name)
        if len(self._inputs) != 1:
            check_model_io(self.bundle, self.variant, {n: s for n, (s, _) in self._inputs.items()})
        self._in_name, (in_shape, in_dtype) = next(iter(self._inputs.items()))
        self._in_dtype = in_dtype
        self._slot_elems = int(np.prod(in_shape[1:]))
        if not self._context.set_input_shape(self._in_name, in_shape):
            raise EngineMismatch(f"the engine does not accept batch {self.max_batch} (its optimization profile is "
                                 f"smaller); rebuild with --max-batch {self.max_batch}")
        self._d_input = _native.DeviceBuffer(int(np.prod(in_shape)) * in_dtype.itemsize, self.device)
        self._d_input.memset(0, self._stream)  # the warm-up runs on defined (zero) input
        self._context.set_tensor_address(self._in_name, self._d_input.ptr)
        self._d_outputs, self._h_outputs, self._out_arrays = {}, {}, {}
        for name in self._output_names:
            shape = tuple(self._context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            self._d_outputs[name] = _native.DeviceBuffer(nbytes, self.device)
            self._h_outputs[name] = _native.PinnedBuffer(nbytes)
            self._out_arrays[name] = self._h_outputs[name].array(dtype, list(shape))  # pinned: async D2H
            self._context.set_tensor_address(name, self._d_outputs[name].ptr)
        check_model_io(self.bundle, self.variant, {n: shape for n, (shape, _) in self._inputs.items()},
                       {n: a.shape for n, a in self._out_arrays.items()})
        self._current_batch = self.max_batch
        self._raw: list[tuple[Any, Any, int]] = []  # per batch slot: (PinnedBuffer, DeviceBuffer, capacity)
        self._slots: list[tuple | None] = [None] * self.max_batch
        self._graphs: dict[tuple, Any] = {}
        self._seen: set[tuple] = set()
        self._events = [_native.Event(True, self.device) for _ in range(5)]
        self._views = {n: {k: a[:n] for k, a in self._out_arrays.items()} for n in range(1, self.max_batch + 1)}
        self._warm_up()

    def _warm_up(self) -> None:
        # TensorRT initializes lazily on the first enqueue; do it now so the first slice is not slow.
        for n in sorted({1, self.max_batch}):
            self._set_batch(n)
            if not self._context.execute_async_v3(self._stream.handle):
                raise CudaError("TensorRT warm-up execute_async_v3 failed", device=self.device)
        self._stream.synchronize()

    def _set_batch(self, n: int) -> None:
        if n != self._current_batch:
            shape = (n, *self._inputs[self._in_name][0][1:])
            if not self._context.set_input_shape(self._in_name, shape):
                raise EngineMismatch(f"the engine does not accept batch {n}")
            self._current_batch = n

    def deactivate_impl(self) -> None:
        self._stream.synchronize()
        self._graphs.clear()
        self._context = None
        self._d_input = None
        self._d_outputs, self._h_outputs, self._out_arrays, self._views = {}, {}, {}, {}
        self._raw = []
        if not getattr(self, "_forked", False):
            self._engine = None
            self._runtime = None

    def fork(self) -> TensorRTBackend:
        twin = object.__new__(type(self))
        twin.__dict__.update({k: v for k, v in self.__dict__.items()
                              if k in ("bundle", "variant", "device", "threads", "max_batch", "options", "_engine",
                                       "_runtime", "_logger", "_cc")})
        twin.info = self.info
        twin.stage_ms = {}
        twin._forked = True
        twin._create_context()
        twin._active = True
        return twin

    # -- hot path --------------------------------------------------------------------------------------
    def input_meta(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return dict(self._inputs)

    def _raw_slot(self, index: int, nbytes: int):
        from engine import _native

        while len(self._raw) <= index:
            self._raw.append((None, None, 0))
        pinned, device, cap = self._raw[index]
        if cap < nbytes:
            # Grows only when a larger image arrives; captured graphs hold the old addresses.
            cap = max(nbytes, 2 * cap)
            pinned, device = _native.PinnedBuffer(cap), _native.DeviceBuffer(cap, self.device)
            self._raw[index] = (pinned, device, cap)
            self._graphs.clear()
        return pinned, device

    def stage_impl(self, x, spec, index, frame) -> None:
        from engine.preprocess import prepared, source_view

        native_spec = prepared(spec)
        if not isinstance(x, np.ndarray):  # a device array (the session routes only those here)
            self._slots[index] = self._device_source(x, native_spec)
            return
        view = source_view(x, spec, frame)
        dtype = _DTYPE_NAMES.get(view.dtype)
        if dtype is None:
            raise InputError(f"input dtype {view.dtype} is not supported by the CUDA kernel")
        if dtype == "float32" and not math.isfinite(float(view.sum(dtype=np.float64))):
            # Checked here, not in the kernel: a captured graph cannot read the kernel's check back.
            raise InputError("input pixels contain NaN or Inf; SliceRT refuses non-finite pixels instead of "
                             "guessing a value")
        pinned, device = self._raw_slot(index, view.nbytes)
        # Raw stored values (e.g. uint16), compacted into pinned memory: half the bytes of float32 over PCIe.
        staged = pinned.array(view.dtype, list(view.shape))
        np.copyto(staged, view)
        self._slots[index] = ("host", staged, device, pinned.ptr, device.ptr, tuple(view.shape),
                              tuple(int(v) for v in staged.strides), dtype, native_spec)

    def _device_source(self, x, native_spec):
        cai = getattr(x, "__cuda_array_interface__", None)
        if cai is None:
            raise InputError("DLPack GPU tensors: pass an object with __cuda_array_interface__ (CuPy, PyTorch CUDA "
                             "tensors and pycuda GPUArrays have it)")
        dtype = np.dtype(cai["typestr"])
        shape = tuple(int(v) for v in cai["shape"])
        if dtype not in _DTYPE_NAMES or len(shape) not in (2, 3):
            raise InputError(f"device array {dtype}{list(shape)}: need (H, W) or (H, W, 3) of uint8/uint16/int16/"
                             f"int32/float32")
        strides = cai.get("strides") or tuple(int(np.prod(shape[i + 1:])) * dtype.itemsize
                                               for i in range(len(shape)))
        ptr = int(cai["data"][0])
        return ("device", None, ptr, 0, ptr, shape, tuple(int(v) for v in strides), _DTYPE_NAMES[dtype], native_spec)

    def _enqueue(self, n: int, *, capturing: bool) -> None:
        from engine import _native

        # Per-stage events only when launching eagerly: inside a stream capture cudaEventRecord only
        # expresses dependencies and records nothing at replay, so its timings would be stale.
        timed = not capturing
        ev = self._events
        stream = self._stream
        if timed:
            ev[0].record(stream)
        for kind, staged, device, *_ in self._slots[:n]:
            if kind == "host":
                device.copy_from_host(staged, stream)  # pinned -> device, asynchronous
        if timed:
            ev[1].record(stream)
        for i, (kind, _st, src, _hp, _dp, shape, strides, dtype, native_spec) in enumerate(self._slots[:n]):
            # Host inputs were checked for NaN/Inf before staging; device float32 inputs are scanned by
            # the kernel (eager only: such batches are never captured).
            _native.preprocess_cuda_into(self._d_input, src, list(shape), list(strides), dtype, native_spec, stream,
                                         i, kind == "device" and not capturing)
        if timed:
            ev[2].record(stream)
        if not self._context.execute_async_v3(stream.handle):
            raise CudaError("TensorRT execute_async_v3 failed", device=self.device)
        if timed:
            ev[3].record(stream)
        for name in self._output_names:
            self._d_outputs[name].copy_to_host(self._out_arrays[name][:n], stream)
        if timed:
            ev[4].record(stream)

    def infer_impl(self, batch_size: int) -> dict[str, np.ndarray]:
        from engine import _native

        n = batch_size
        if any(s is None for s in self._slots[:n]):
            raise InputError("infer() before stage() filled every batch slot")
        self._set_batch(n)
        # A graph bakes in every address and launch parameter: key on all of them. Caller-owned device
        # arrays change address per call, so those batches run eagerly.
        key = (n, tuple((s[0], s[3], s[4], s[5], s[6], s[7], id(s[8])) for s in self._slots[:n]))
        use_graph = self.options.get("cuda_graph", True) and all(s[0] == "host" for s in self._slots[:n])
        graph = self._graphs.get(key) if use_graph else None
        ev = self._events
        if graph is not None:
            ev[0].record(self._stream)
            graph.launch(self._stream)
            ev[4].record(self._stream)
        elif use_graph and key in self._seen:
            # Second time this exact configuration runs: capture it once, replay it from now on.
            for s in self._slots[:n]:
                _native.cuda_prepare(s[8], self.device)  # LUT tables must be on the device before capture
            graph = _native.CudaGraph()
            graph.begin_capture(self._stream)
            try:
                self._enqueue(n, capturing=True)
            finally:
                graph.end_capture(self._stream)
            if len(self._graphs) >= 64:  # bounded: e.g. a series of ever-changing image sizes
                self._graphs.clear()
            self._graphs[key] = graph
            ev[0].record(self._stream)
            graph.launch(self._stream)
            ev[4].record(self._stream)
        else:
            if use_graph:
                if len(self._seen) > 256:
                    self._seen.clear()
                self._seen.add(key)
            self._enqueue(n, capturing=False)
        self._stream.synchronize()
        if graph is not None:
            # One launch: H2D, the preprocessing kernel, the engine and D2H are timed together under
            # "infer"; "preprocess" keeps the host-side staging the session measured.
            self.stage_ms = {"h2d": None, "infer": ev[4].elapsed_ms(ev[0]), "d2h": None}
        else:
            self.stage_ms = {"h2d": ev[1].elapsed_ms(ev[0]), "preprocess": ev[2].elapsed_ms(ev[1]),
                             "infer": ev[3].elapsed_ms(ev[2]), "d2h": ev[4].elapsed_ms(ev[3])}
        return self._views[n]

    def infer_tensors_impl(self, feed, batch_size: int) -> dict[str, np.ndarray]:
        from engine import _native

        arr = np.ascontiguousarray(feed[self._in_name])
        staging = _native.PinnedBuffer(arr.nbytes)
        staged = staging.array(arr.dtype, list(arr.shape))
        staged[...] = arr
        self._set_batch(batch_size)
        self._d_input.copy_from_host(staged, self._stream)
        if not self._context.execute_async_v3(self._stream.handle):
            raise CudaError("TensorRT execute_async_v3 failed", device=self.device)
        for name in self._output_names:
            self._d_outputs[name].copy_to_host(self._out_arrays[name][:batch_size], self._stream)
        self._stream.synchronize()
        return {k: v[:batch_size].copy() for k, v in self._out_arrays.items()}
