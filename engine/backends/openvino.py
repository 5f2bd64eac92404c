"""OpenVINO CPU backend.

Hot path per slice, as for ONNX Runtime: the fused native kernel writes the model input straight into
a preallocated array that the infer request reads as its input tensor (an `ov.Tensor` sharing the
array's memory, bound once per batch size), and the outputs land in preallocated arrays bound the same
way. No tensor is allocated or copied per call (tests/runtime/test_openvino.py checks the addresses).

Which model each variant compiles:
  * fp32 / fp16: the bundle's ONNX variant, read from the bundle's bytes (`Core.read_model(bytes)`).
  * int8 / mixed: the variant's OpenVINO form (`variants.<v>.openvino`: IR .xml + .bin made by NNCF
    post-training quantization). OpenVINO cannot compile ONNX Runtime's S8S8 Q/DQ file ("No suitable
    implementations"), so without that form the variant is not offered here. The .bin is handed over
    as bytes from the bundle, never as a path: a bundle is untrusted input, and OpenVINO checks every
    weight offset of the .xml against the size of those bytes.
  * bf16: the FP32 ONNX compiled with INFERENCE_PRECISION_HINT=bf16, only on a CPU with AMX-BF16 or
    AVX512-BF16 (elsewhere OpenVINO would emulate it, slower than FP32).

Compile settings and why:
  * device "CPU", PERFORMANCE_HINT LATENCY, NUM_STREAMS 1: one slice at a time, lowest latency.
  * INFERENCE_NUM_THREADS = `threads` from engine.load (default: usable cores).
  * INFERENCE_PRECISION_HINT stated for every variant: on a CPU with AMX OpenVINO's default is bf16,
    which would silently change an FP32 variant's numerics away from what its accuracy gate measured.
  * CACHE_DIR = <cache root>/openvino-<version>/<digest of the model members>-<variant>: the compiled
    blob is reused by the next load of the same model bytes. The folder is content-addressed by the
    manifest's (verified) SHA-256 digests, so two bundles or two variants never share a folder, and a
    rebuilt model gets a fresh one. Cache root: $SLICERT_CACHE or ~/.cache/slicert.
  * batch: static [1, ...] when max_batch is 1 (the latency case OpenVINO optimizes best), otherwise a
    bounded dynamic batch [1..max_batch] compiled once.

Thread model: one CompiledModel is shared by all buffer sets created with `fork()`; each fork has its
own InferRequest and arrays (an InferRequest serves one caller at a time).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from engine.backends.base import Backend, check_model_io
from engine.errors import BackendUnavailable, BundleError, InputError

_OV_TYPES = {"f32": np.float32, "f16": np.float16, "i8": np.int8, "u8": np.uint8, "i32": np.int32, "i64": np.int64}
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # CPU flags under which OpenVINO runs bf16 natively
PRECISION_HINT = {"bf16": "bf16"}  # every other variant is compiled with "f32" (see module docstring)

_core_lock = threading.Lock()
_core = None


def openvino_version() -> str | None:
    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_has_bf16() -> bool:
    from engine.envinfo import cpu_flags

    return bool(cpu_flags(BF16_FLAGS))


def core():
    """One openvino.Core per process: creating it loads the plugin registry (milliseconds)."""
    global _core
    with _core_lock:
        if _core is None:
            import openvino as ov

            _core = ov.Core()
        return _core


def cache_root() -> Path:
    env = os.environ.get("SLICERT_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "slicert") / f"openvino-{openvino_version()}"


def model_members(bundle, variant: str) -> tuple[str, str | None]:
    """(model member, weights member or None) this backend compiles for `variant`."""
    entry = bundle.variants[variant]
    form = entry.get("openvino")
    if isinstance(form, dict):
        return form["xml"], form["bin"]
    return entry["onnx"], None


def cache_dir_for(bundle, variant: str) -> Path:
    """Content-addressed: the manifest's SHA-256 of the model (and weights) member, plus the variant."""
    members = bundle.manifest["members"]
    h = hashlib.sha256()
    for name in model_members(bundle, variant):
        if name is not None:
            h.update(members[name]["sha256"].encode())
    return cache_root() / f"{h.hexdigest()[:24]}-{variant}"


def compile_config(threads: int, variant: str, cache_dir: Path | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": int(threads),
                           "INFERENCE_PRECISION_HINT": PRECISION_HINT.get(variant, "f32")}
    if cache_dir is not None:
        cfg["CACHE_DIR"] = str(cache_dir)
    return cfg


def _refuse_external_data(onnx_bytes: bytes, member: str) -> None:
    """An ONNX file may name external weight files by path; a bundle must carry its weights inside."""
    import onnx

    try:
        model = onnx.load_from_string(onnx_bytes)  # reads no external file itself
    except Exception as exc:  # protobuf DecodeError
        raise BundleError(f"bundle member {member!r} is not a valid ONNX model: {exc}") from exc
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors += [a.t for a in node.attribute if a.HasField("t")]
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise BundleError(f"bundle member {member!r}: tensor {t.name!r} refers to external data "
                              f"{[e.value for e in t.external_data][:1]}; bundles must carry weights inside the "
                              f"ONNX file, rebuild the bundle")


def read_model(bundle, variant: str, *, check_external: bool = True):
    """The variant's ov.Model from the bundle's bytes (no file path ever reaches OpenVINO)."""
    member, weights = model_members(bundle, variant)
    ov_core = core()
    data = bundle.read(member)
    try:
        if weights is None:
            if check_external:
                _refuse_external_data(data, member)
            return ov_core.read_model(data)
        return ov_core.read_model(data, bundle.read(weights))
    except RuntimeError as exc:  # OpenVINO reports bad models, bad IR and bad weight offsets this way
        first = next((ln for ln in str(exc).splitlines() if ln.strip() and not ln.startswith("Exception from")),
                     str(exc))
        raise BundleError(f"openvino cannot read bundle member {member!r}"
                          f"{'' if weights is None else f' with weights {weights!r}'}: {first.strip()}") from None


class OpenVINOBackend(Backend):
    name: ClassVar[str] = "openvino"

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        if importlib.util.find_spec("openvino") is None:
            return False, "openvino is not installed (pip install openvino)"
        return True, f"CPU plugin (openvino {openvino_version()})"

    @classmethod
    def supports(cls, bundle, variant: str | None = None, options: dict | None = None) -> tuple[bool, str]:
        variants = bundle.variants
        if variant is None:
            ok = [v for v in variants if cls.supports(bundle, v)[0]]
            return (True, f"runs {ok}") if ok else (False, "no variant of this bundle has a form OpenVINO runs")
        if variant not in variants:
            return False, f"the bundle has no {variant} variant (it has {sorted(variants)})"
        entry = variants[variant]
        allowed = entry.get("backends")
        if allowed is not None and cls.name not in allowed:
            return False, f"the {variant} variant is for {allowed} only"
        if variant in ("int8", "mixed") and not isinstance(entry.get("openvino"), dict):
            return False, (f"the bundle has no OpenVINO form of {variant} (NNCF IR); OpenVINO does not compile "
                           f"ONNX Runtime's Q/DQ files, rebuild with `slicert quantize` + `slicert build`")
        if variant == "bf16" and not cpu_has_bf16():
            return False, f"bf16 needs a CPU with {' or '.join(BF16_FLAGS)}; this CPU has neither"
        form = "NNCF INT8 IR" if isinstance(entry.get("openvino"), dict) else "ONNX"
        return True, f"runs the {variant} variant ({form}) on the CPU"

    @classmethod
    def runs_variant(cls, bundle, variant: str) -> bool:
        return cls.supports(bundle, variant)[0]

    # -- lifecycle -------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        from engine.envinfo import usable_cpus

        ok, why = self.supports(self.bundle, self.variant)
        if not ok:
            raise BackendUnavailable(f"openvino cannot run bundle {self.bundle.path.name}: {why}")
        threads = self.threads or usable_cpus()
        use_cache = self.options.get("compile_cache", True)
        cache_dir = cache_dir_for(self.bundle, self.variant) if use_cache else None
        cache_hit = bool(cache_dir is not None and cache_dir.is_dir() and any(cache_dir.glob("*.blob")))
        t0 = time.perf_counter_ns()
        # A cache hit means these exact bytes (the folder is keyed by their verified digest) were read and
        # checked on this machine before: the external-data scan is skipped then.
        model = read_model(self.bundle, self.variant, check_external=not cache_hit)
        t1 = time.perf_counter_ns()
        import openvino as ov

        if len(model.inputs) != 1:
            raise BundleError(f"bundle {self.bundle.path.name}, {self.variant} model: has {len(model.inputs)} inputs; "
                              f"SliceRT models take one image tensor")
        inp = model.inputs[0]
        dims = inp.get_partial_shape()
        if dims.rank.is_dynamic or any(d.is_dynamic for d in list(dims)[1:]):
            raise BundleError(f"model input {inp.get_any_name()!r} has shape {dims}: only the batch axis may be "
                              f"dynamic")
        tail = [d.get_length() for d in list(dims)[1:]]
        batch0 = next(iter(dims))
        if batch0.is_static and batch0.get_length() < self.max_batch:
            raise InputError(f"model input {inp.get_any_name()!r} has a fixed batch of {batch0.get_length()}; load "
                             f"with max_batch<={batch0.get_length()} or export the model with a dynamic batch axis")
        batch = ov.Dimension(1) if self.max_batch == 1 else ov.Dimension(1, self.max_batch)
        try:
            model.reshape({inp.get_any_name(): ov.PartialShape([batch, *tail])})
            if cache_dir is not None:
                cache_dir.mkdir(parents=True, exist_ok=True)
            compiled = core().compile_model(model, "CPU", compile_config(threads, self.variant, cache_dir))
        except RuntimeError as exc:
            first = next((ln for ln in str(exc).splitlines() if ln.strip() and not ln.startswith("Exception from")),
                         str(exc))
            raise BundleError(f"openvino cannot compile the {self.variant} model of bundle "
                              f"{self.bundle.path.name}: {first.strip()}") from None
        except OSError as exc:  # the cache folder cannot be created: compile without it, and say so
            cache_dir, cache_hit = None, False
            compiled = core().compile_model(model, "CPU", compile_config(threads, self.variant, None))
            self.info["cache_why"] = f"compiled-model cache disabled: {exc}"
        t2 = time.perf_counter_ns()
        self._compiled = compiled
        member, weights = model_members(self.bundle, self.variant)
        self.info.update(device="cpu", openvino=openvino_version(), inference_threads=threads, streams=1,
                         performance_hint="LATENCY",
                         inference_precision=compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
                         model_file=member, weights_file=weights, cache_dir=None if cache_dir is None else str(cache_dir),
                         cache_hit=cache_hit, read_ms=(t1 - t0) / 1e6, compile_ms=(t2 - t1) / 1e6)
        self._describe_io(compiled)
        check_model_io(self.bundle, self.variant, {n: s for n, (s, _) in self._input_specs.items()},
                       {n: (self.max_batch, *tail) for n, tail, _ in self._outputs_meta})
        self._allocate()
        self._warm_up()

    def _describe_io(self, compiled) -> None:
        self._input_specs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        for port in compiled.inputs:
            dtype = _OV_TYPES.get(port.get_element_type().get_type_name())
            if dtype is None:
                raise BundleError(f"model input {port.get_any_name()!r} has type {port.get_element_type()}, which "
                                  f"SliceRT does not feed")
            tail = [d.get_length() for d in list(port.get_partial_shape())[1:]]
            self._input_specs[port.get_any_name()] = ((self.max_batch, *tail), np.dtype(dtype))
        self._outputs_meta: list[tuple[str, tuple[int, ...], np.dtype]] = []
        for port in compiled.outputs:
            dtype = _OV_TYPES.get(port.get_element_type().get_type_name())
            shape = list(port.get_partial_shape())
            if dtype is None or any(d.is_dynamic for d in shape[1:]):
                raise BundleError(f"model output {port.get_any_name()!r} is {port.get_element_type()} "
                                  f"{port.get_partial_shape()}: SliceRT reads float outputs with a fixed shape "
                                  f"besides the batch axis")
            self._outputs_meta.append((port.get_any_name(), tuple(d.get_length() for d in shape[1:]), np.dtype(dtype)))

    def _allocate(self) -> None:
        self._request = self._compiled.create_infer_request()
        self._inputs = {name: np.zeros(shape, dtype) for name, (shape, dtype) in self._input_specs.items()}
        self._input = next(iter(self._inputs.values()))
        self._outputs = {name: np.zeros((self.max_batch, *tail), dtype) for name, tail, dtype in self._outputs_meta}
        self._bound: int | None = None
        self._views: dict[int, dict[str, np.ndarray]] = {}

    def _bind(self, n: int) -> None:
        # ov.Tensor(shared_memory=True) wraps the array's memory: the request reads the input the kernel
        # wrote, and writes outputs into our arrays. Rebinding happens only when the batch size changes.
        import openvino as ov

        req = self._request
        for i, arr in enumerate(self._inputs.values()):
            req.set_input_tensor(i, ov.Tensor(arr[:n], shared_memory=True))
        for i, arr in enumerate(self._outputs.values()):
            req.set_output_tensor(i, ov.Tensor(arr[:n], shared_memory=True))
        self._bound = n
        if n not in self._views:
            self._views[n] = {name: arr[:n] for name, arr in self._outputs.items()}

    def _warm_up(self) -> None:
        # One call per batch size: OpenVINO's lazy initialization happens in the first; on a real-size
        # model each call costs as much as a slice (resnet18 at 256^2: ~0.7 s on the 2-core EPYC), and the
        # first result after load was measured at steady-state latency already (slicert bench cold start).
        for n in sorted({1, self.max_batch}):
            self._bind(n)
            self._request.infer(share_outputs=True)

    def deactivate_impl(self) -> None:
        self._views = {}
        self._inputs = {}
        self._outputs = {}
        self._input = None
        self._request = None
        if not getattr(self, "_forked", False):
            self._compiled = None

    def fork(self) -> OpenVINOBackend:
        """A second buffer set (own InferRequest and arrays) on the same compiled model."""
        twin = self._twin("_compiled", "_input_specs", "_outputs_meta")
        twin._allocate()
        twin._warm_up()
        twin._active = True
        return twin

    # -- hot path --------------------------------------------------------------------------------
    def input_meta(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return dict(self._input_specs)

    @property
    def input_array(self) -> np.ndarray:
        """The (max_batch, ...) input array preprocessing writes into; the infer request reads it in place."""
        return self._input

    @property
    def infer_request(self):
        """The openvino.InferRequest of this buffer set (for inspection and the no-copy test)."""
        return self._request

    def stage_impl(self, x, spec, index, frame) -> None:
        from engine.preprocess import preprocess_into

        preprocess_into(self._input, x, spec, index, frame=frame)

    def infer_impl(self, batch_size: int) -> dict[str, np.ndarray]:
        if self._bound != batch_size:
            self._bind(batch_size)
        # share_outputs: the returned dict holds views, not copies (the outputs are already in our arrays).
        self._request.infer(share_outputs=True)
        return self._views[batch_size]

    def infer_tensors_impl(self, feed, batch_size: int) -> dict[str, np.ndarray]:
        for name, arr in feed.items():
            self._inputs[name][:batch_size] = arr
        out = self.infer_impl(batch_size)
        return {k: v.copy() for k, v in out.items()}
