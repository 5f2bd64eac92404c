"""ONNX Runtime CPU backend.

Hot path per slice: the fused native kernel writes the model input straight into a preallocated
array that an IOBinding has bound as the session input; `run_with_iobinding` writes the outputs into
preallocated arrays. No tensor is allocated per call.

Session options and why:
  * providers = ["CPUExecutionProvider"], stated explicitly: never whatever ORT would pick.
  * intra_op_num_threads = `threads` (default: usable cores); inter_op_num_threads = 1 with sequential
    execution: these are small CNNs, one operator at a time saturates the cores.
  * the bundle's ORT-optimized model (graph optimizations ALL, done at build time) is loaded with
    optimizations disabled, so start-up skips the optimizer. It is used only when the ONNX Runtime
    version and CPU features match the build machine, because ORT's layout optimizations (NCHWc
    blocking) are specific to the CPU they ran on; otherwise the plain ONNX variant is loaded with
    ORT_ENABLE_ALL and `info["model_why"]` says so.
  * denormals are NOT flushed to zero: ORT's "session.set_denormal_as_zero" sets FTZ/DAZ in the MXCSR
    of the calling thread and leaves it set, which would silently change the caller's own float
    arithmetic (NumPy included) after the first inference.

Thread model: one InferenceSession is shared by all buffer sets created with `fork()`; ONNX Runtime
allows concurrent `run` calls on one session, and each fork has its own input/output arrays and
bindings, so results do not depend on which thread ran them.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import Any, ClassVar

import numpy as np

from engine.backends.base import Backend, check_model_io
from engine.errors import BackendUnavailable, BundleError, InputError

# Load-time runs (output-shape probe, warm-up) of a model from an untrusted bundle get this much wall
# time, then RunOptions.terminate stops them between kernels: BundleError instead of a load that never
# returns. Loops that would never reach a kernel boundary are refused before loading (onnx_guard).
WARMUP_TIME_LIMIT_S = 30.0

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8,
              "tensor(uint8)": np.uint8, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def ort_version() -> str | None:
    try:
        return importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        return None


def session_options(threads: int, *, optimized_model: bool):
    """SessionOptions shared by the runtime and the bundle builder's verification."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if optimized_model
                                   else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_cpu_mem_arena = True
    so.enable_mem_pattern = True
    so.log_severity_level = 3  # errors only: warnings go to stderr of an embedded device otherwise
    return so


def _run_options():
    """One RunOptions reused for every call of a buffer set.

    "gpu_graph_id" = "-1" states that no graph capture is wanted. It also matters for speed: ORT 1.32's
    Python run_with_iobinding looks this key up on every call, and a missing key costs a C++ exception
    (measured 48 us per call here, four times the model's own run time); passing None instead makes the
    C++ side build a fresh RunOptions per call.
    """
    import onnxruntime as ort

    ro = ort.RunOptions()
    ro.add_run_config_entry("gpu_graph_id", "-1")
    return ro


def usable_cpus() -> int:
    from engine.envinfo import usable_cpus as _usable

    return _usable()


class OnnxRuntimeBackend(Backend):
    name: ClassVar[str] = "onnxruntime"
    provider: ClassVar[str] = "CPUExecutionProvider"

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        if importlib.util.find_spec("onnxruntime") is None:
            return False, "onnxruntime is not installed (pip install onnxruntime)"
        return True, f"{cls.provider} (onnxruntime {ort_version()})"

    @classmethod
    def supports(cls, bundle, variant: str | None = None, options: dict | None = None) -> tuple[bool, str]:
        variants = bundle.variants
        if variant is not None and variant not in variants:
            return False, f"the bundle has no {variant} variant (it has {sorted(variants)})"
        if variant is not None and not cls.runs_variant(bundle, variant):
            return False, f"the {variant} variant is for {variants[variant].get('backends')} only"
        return True, "runs every ONNX variant on the CPU"

    # -- model choice ----------------------------------------------------------------------------
    def _choose_model(self) -> tuple[str, bool, str]:
        """(member, is_optimized, why)."""
        from engine.envinfo import cpu_flags

        entry = self.bundle.variants[self.variant]
        ort_meta = self.bundle.manifest.get("ort") or {}
        member = entry.get("ort")
        source = entry.get("onnx_cpu") or entry["onnx"]  # the CPU Q/DQ form when the quantizer made one
        if self.options.get("use_optimized", True) is False:
            return source, False, "optimized model disabled by the caller"
        if not member:
            return source, False, "the bundle has no ORT-optimized model for this variant (built for TensorRT)"
        if ort_meta.get("version") != ort_version():
            return source, False, (f"ORT-optimized model was made with onnxruntime {ort_meta.get('version')}, "
                                   f"this is {ort_version()}: optimizing the ONNX model at load instead")
        built_flags = ort_meta.get("cpu_flags")
        if built_flags is not None and sorted(built_flags) != sorted(cpu_flags()):
            return source, False, (f"ORT-optimized model was made on a CPU with {built_flags}, this CPU has "
                                   f"{cpu_flags()}: optimizing the ONNX model at load instead")
        return member, True, "ORT-optimized model (same onnxruntime version and CPU features as the build)"

    # -- lifecycle -------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        import onnxruntime as ort

        if self.provider not in ort.get_available_providers():
            raise BackendUnavailable(f"onnxruntime has no {self.provider}; providers: {ort.get_available_providers()}")
        threads = self.threads or usable_cpus()
        member, optimized, why = self._choose_model()
        so = session_options(threads, optimized_model=optimized)
        try:
            sess = ort.InferenceSession(self.bundle.read(member), so, providers=[self.provider])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            if not optimized:
                raise BundleError(f"onnxruntime cannot load bundle member {member!r}: {exc}") from exc
            why = f"ORT-optimized model failed to load here ({str(exc).splitlines()[0]}); using the ONNX model"
            entry = self.bundle.variants[self.variant]
            member, optimized = entry.get("onnx_cpu") or entry["onnx"], False
            try:
                sess = ort.InferenceSession(self.bundle.read(member), session_options(threads, optimized_model=False),
                                            providers=[self.provider])
            except Exception as exc2:
                raise BundleError(f"onnxruntime cannot load bundle member {member!r} either: "
                                  f"{str(exc2).splitlines()[0]}; the bundle is damaged, rebuild it") from exc2
        self._sess = sess
        self._run_options = _run_options()
        self._run = sess.run_with_iobinding
        self.info.update(device="cpu", provider=self.provider, providers=sess.get_providers(), intra_op_threads=threads,
                         inter_op_threads=1, model_file=member, model_optimized=optimized, model_why=why,
                         onnxruntime=ort_version())
        self._describe_io()
        check_model_io(self.bundle, self.variant, {n: shape for n, (shape, _) in self._input_specs.items()})
        self._check_input_dtype(member)
        self._allocate()
        check_model_io(self.bundle, self.variant, {n: shape for n, (shape, _) in self._input_specs.items()},
                       {n: a.shape for n, a in self._outputs.items()})
        self._warm_up()

    def _check_input_dtype(self, member: str) -> None:
        (_, dtype), = self._input_specs.values()
        want = np.dtype(self.bundle.spec.out_dtype)
        if dtype != want:
            raise BundleError(f"bundle {self.bundle.path.name}, member {member!r}: the model input takes {dtype}, but "
                              f"the manifest's preprocessing writes {want} (spec out_dtype); rebuild the bundle")

    def _bounded(self, what: str, fn, *args):
        """Run a load-time inference with a wall-time bound; ORT failures become BundleError."""
        import threading

        ro = args[-1] if args and hasattr(args[-1], "terminate") else None
        timer = None
        if ro is not None:
            timer = threading.Timer(WARMUP_TIME_LIMIT_S, lambda: setattr(ro, "terminate", True))
            timer.daemon = True
            timer.start()
        try:
            return fn(*args)
        except Exception as exc:  # ORT's Fail/RuntimeException/InvalidArgument: the bundle's model broke
            member = self.info.get("model_file", self.variant)
            if ro is not None and ro.terminate:
                raise BundleError(f"bundle {self.bundle.path.name}, member {member!r}: {what} took more than "
                                  f"{WARMUP_TIME_LIMIT_S:g} s and was stopped; the model is far too slow for "
                                  f"per-slice inference") from None
            raise BundleError(f"bundle {self.bundle.path.name}, member {member!r}: onnxruntime failed during "
                              f"{what} ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})") from None
        finally:
            if timer is not None:
                timer.cancel()
                ro.terminate = False  # the timer may have fired just as the run finished

    def _describe_io(self) -> None:
        inputs = self._sess.get_inputs()
        self._input_specs: dict[str, tuple[tuple[int, ...], Any]] = {}
        for i in inputs:
            dtype = _ORT_TYPES.get(i.type)
            if dtype is None:
                raise BundleError(f"model input {i.name!r} has type {i.type}, which SliceRT does not feed")
            dims = list(i.shape)
            if len(dims) == 0 or any(not isinstance(d, int) for d in dims[1:]):
                raise BundleError(f"model input {i.name!r} has shape {dims}: only the batch axis may be dynamic")
            if isinstance(dims[0], int) and dims[0] < self.max_batch:
                raise InputError(f"model input {i.name!r} has a fixed batch of {dims[0]}; load with "
                                 f"max_batch<={dims[0]} or export the model with a dynamic batch axis")
            self._input_specs[i.name] = ((self.max_batch, *dims[1:]), np.dtype(dtype))
        self._outputs_meta = []
        for o in self._sess.get_outputs():
            dtype = _ORT_TYPES.get(o.type)
            if dtype is None:
                raise BundleError(f"model output {o.name!r} has type {o.type}, which SliceRT does not read")
            self._outputs_meta.append((o.name, list(o.shape), np.dtype(dtype)))

    def _allocate(self) -> None:
        self._inputs = {name: np.zeros(shape, dtype) for name, (shape, dtype) in self._input_specs.items()}
        self._input = next(iter(self._inputs.values())) if len(self._inputs) == 1 else None
        shapes = {}
        unknown = [n for n, dims, _ in self._outputs_meta if any(not isinstance(d, int) for d in dims[1:])]
        if unknown:
            # Output shape has symbolic non-batch dims: one discovery run at batch 1 gives them.
            probe = self._bounded("the output-shape probe", self._sess.run, unknown,
                                  {n: a[:1] for n, a in self._inputs.items()}, _run_options())
            shapes.update({n: p.shape[1:] for n, p in zip(unknown, probe)})
        self._outputs = {}
        for name, dims, dtype in self._outputs_meta:
            tail = tuple(shapes.get(name, dims[1:]))
            self._outputs[name] = np.zeros((self.max_batch, *tail), dtype)
        self._bindings: dict[int, Any] = {}
        self._views: dict[int, dict[str, np.ndarray]] = {}

    def _binding(self, n: int):
        # One IOBinding per batch size, bound once to slices of the preallocated arrays.
        binding = self._sess.io_binding()
        for name, arr in self._inputs.items():
            binding.bind_input(name, "cpu", 0, arr.dtype, [n, *arr.shape[1:]], arr.ctypes.data)
        for name, arr in self._outputs.items():
            binding.bind_output(name, "cpu", 0, arr.dtype, [n, *arr.shape[1:]], arr.ctypes.data)
        self._bindings[n] = binding
        self._views[n] = {name: arr[:n] for name, arr in self._outputs.items()}
        return binding

    def _warm_up(self) -> None:
        for n in sorted({1, self.max_batch}):
            binding = self._binding(n)
            for _ in range(2):
                self._bounded(f"the load-time warm-up at batch {n}", self._run, binding, self._run_options)

    def deactivate_impl(self) -> None:
        self._bindings.clear()
        self._views.clear()
        self._inputs = {}
        self._outputs = {}
        self._input = None
        if not getattr(self, "_forked", False):
            self._sess = None
        self._run = None

    def fork(self) -> OnnxRuntimeBackend:
        """A second buffer set on the same InferenceSession (for another thread); allocated once."""
        twin = self._twin("_sess", "_run", "_input_specs", "_outputs_meta")
        twin._run_options = _run_options()  # per buffer set: a RunOptions is per-call state (terminate flag)
        twin._allocate()
        twin._warm_up()
        twin._active = True
        return twin

    # -- hot path --------------------------------------------------------------------------------
    def input_meta(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return dict(self._input_specs)

    @property
    def input_array(self) -> np.ndarray:
        """The bound (max_batch, ...) input array preprocessing writes into."""
        return self._input

    def stage_impl(self, x, spec, index, frame) -> None:
        from engine.preprocess import preprocess_into

        if self._input is None:
            raise BundleError("this model has several inputs; stage() feeds single-input models only")
        # The fused kernel writes straight into the array the IOBinding has bound as the model input;
        # its prepared (parsed, LUT-folded) spec is cached per spec object by engine.preprocess.
        preprocess_into(self._input, x, spec, index, frame=frame)

    def infer_impl(self, batch_size: int) -> dict[str, np.ndarray]:
        binding = self._bindings.get(batch_size) or self._binding(batch_size)
        self._run(binding, self._run_options)
        return self._views[batch_size]

    def infer_tensors_impl(self, feed, batch_size: int) -> dict[str, np.ndarray]:
        for name, arr in feed.items():
            self._inputs[name][:batch_size] = arr
        out = self.infer_impl(batch_size)
        return {k: v.copy() for k, v in out.items()}
