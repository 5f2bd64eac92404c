"""TensorRT target: compile one ONNX variant into a serialized engine (plan), written against
TensorRT 11.4's Python API (tests/data/tensorrt-11.4-api; a test checks every attribute used here).

TensorRT 11 networks are always strongly typed: precision comes from the ONNX graph (an FP16 model,
explicit Q/DQ for INT8), never from builder flags. What this module sets:
  * one optimization profile over the batch axis: min 1, opt 1 (single-slice latency is the goal),
    max `max_batch`;
  * the workspace memory-pool limit and the builder optimization level;
  * a timing cache, loaded when given and saved back, so rebuilds on the same GPU reuse tactic timings;
  * optional hardware compatibility (AMPERE_PLUS: one plan for every Ampere-or-newer GPU);
  * optional VERSION_COMPATIBLE + EXCLUDE_LEAN_RUNTIME: the plan runs on later TensorRT versions
    through the small `tensorrt_lean` runtime the device ships, and does not embed that runtime;
  * optional DLA core (Jetson), with GPU fallback for layers DLA cannot run;
  * DETAILED profiling verbosity so the engine inspector can record per-layer information.
"""
from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass
from typing import Any

from engine.device import current
from engine.errors import BackendUnavailable, BundleError, InputError

HARDWARE_COMPAT_LEVELS = ("none", "ampere+", "same-cc")
DEFAULT_WORKSPACE_BYTES = 1 << 30
DEFAULT_OPTIMIZATION_LEVEL = 3  # TensorRT's default; 4-5 search longer for small gains


def tensorrt_version() -> str | None:
    """Installed TensorRT version from package metadata (imports nothing)."""
    return current().tensorrt_version()


def tensorrt_unavailable_reason(device: int = 0, *, need_builder: bool = True) -> str | None:
    """Why TensorRT cannot run here (None when it can): module missing, no CUDA device, no device
    `device`, or a TensorRT wheel whose libraries do not load (a placeholder `-libs` package, a driver
    too old for its CUDA): that last one is found by importing the module, only once everything else
    is there, so machines without a GPU never import it."""
    dev = current()
    native = dev.native
    modules = ("tensorrt",) if need_builder else ("tensorrt", "tensorrt_lean")
    reasons = []
    if not any(dev.has_module(m) for m in modules):
        # No square brackets in this text: rich (slicert info) would read "[gpu]" as markup.
        reasons.append(f"no TensorRT Python module ({' or '.join(modules)}; install SliceRT's gpu extra, "
                       f"which is the tensorrt-cu13 wheel)")
    if not native.cuda_compiled():
        reasons.append("SliceRT was built without CUDA (SLICERT_CUDA=OFF or nvcc missing at build time)")
    else:
        count, why = native.cuda_devices()
        if count == 0:
            reasons.append(f"no CUDA device ({why})")
        elif not 0 <= device < count:
            reasons.append(f"CUDA device {device} does not exist ({count} visible)")
    if not reasons:
        try:
            dev.import_tensorrt(builder=need_builder)
        except (ImportError, OSError) as exc:  # S10: e.g. libnvinfer.so.11 missing or not loadable
            reasons.append(f"the TensorRT Python module is installed but does not load ({type(exc).__name__}: "
                           f"{exc})")
    return "; ".join(reasons) or None


def device_compute_capability(device: int = 0) -> tuple[tuple[int, int], str]:
    props = current().native.cuda_device_properties(device)
    if "error" in props:
        raise BackendUnavailable(f"cannot query CUDA device {device}: {props['error']}")
    major, minor = props["compute_capability"]
    return (int(major), int(minor)), str(props.get("name", "?"))


def device_platform(device: int = 0) -> dict[str, Any]:
    """What a plan's portability depends on besides the GPU: the host CPU architecture and whether
    the GPU is integrated (Jetson/Tegra: no hardware-compatible plans there). Recorded at build time."""
    props = current().native.cuda_device_properties(device)
    return {"machine": current().machine(), "integrated": bool(props.get("integrated", False))}


@dataclass
class EngineBuild:
    plan: bytes
    timing_cache: bytes
    build_log: str
    layers_json: str
    record: dict[str, Any]  # goes into the manifest's engines[] entry


_LOGGERS: dict[int, Any] = {}
_LOGGERS_LOCK = threading.Lock()


def process_logger(trt) -> Any:
    """The one logger every TensorRT object of this process gets (S2 of the GPU review): TensorRT keeps a
    single logger pointer per process and ignores any later one ("the existing value will be used
    instead"), so a Runtime made with one logger would swallow a later Builder's build log, and a
    per-Session logger freed while TensorRT still holds it could crash the process. Messages go to the
    capture lists of builds in progress (`capture()`), warnings and errors also to Python logging.
    VERBOSE is dropped: build logs are stored in bundles."""
    with _LOGGERS_LOCK:
        logger = _LOGGERS.get(id(trt))
        if logger is None:
            logger = _LOGGERS[id(trt)] = _make_logger(trt)
        return logger


def _make_logger(trt):
    import logging

    log = logging.getLogger("engine.tensorrt")

    class _ProcessLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self._captures: list[list[str]] = []
            self._lock = threading.Lock()
            self._trt_module = trt  # the module this logger belongs to stays alive with it

        def log(self, severity, msg):
            if int(severity) > int(trt.ILogger.INFO):
                return
            line = f"[{str(severity).rsplit('.', 1)[-1]}] {msg}"
            with self._lock:
                for lines in self._captures:
                    lines.append(line)
            if int(severity) <= int(trt.ILogger.WARNING):
                log.warning("TensorRT: %s", line)

        @contextlib.contextmanager
        def capture(self):
            lines: list[str] = []
            with self._lock:
                self._captures.append(lines)
            try:
                yield lines
            finally:
                with self._lock:
                    self._captures.remove(lines)

    return _ProcessLogger()


def build_engine(onnx_bytes: bytes, *, variant: str, max_batch: int = 1, hardware_compat: str = "none",
                 version_compatible: bool = False, dla_core: int | None = None,
                 workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
                 optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL, timing_cache: bytes | None = None,
                 device: int = 0, tf32: bool = True) -> EngineBuild:
    """Compile ONNX bytes into a TensorRT plan for GPU `device`. Raises BackendUnavailable/BundleError.

    `tf32=False` clears BuilderFlag.TF32 (on by default in TensorRT): FP32 convolutions and matrix
    products then keep 23-bit mantissa inputs, for comparisons with FP32 references at 1e-3."""
    reason = tensorrt_unavailable_reason(device, need_builder=True)
    if reason:
        raise BackendUnavailable(f"cannot build a TensorRT engine: {reason}")
    if hardware_compat not in HARDWARE_COMPAT_LEVELS:
        raise InputError(f"hardware_compat must be one of {HARDWARE_COMPAT_LEVELS}, got {hardware_compat!r}")
    if max_batch < 1:
        raise InputError(f"max_batch must be >= 1, got {max_batch}")
    if not 0 <= optimization_level <= 5:
        raise InputError(f"builder optimization level must be in [0, 5], got {optimization_level}")
    cc, device_name = device_compute_capability(device)
    plat = device_platform(device)
    if hardware_compat == "ampere+" and cc < (8, 0):
        raise InputError(f"--hardware-compat ampere+ needs an Ampere or newer GPU to build on; this is "
                         f"{device_name} (sm_{cc[0]}{cc[1]})")
    if hardware_compat == "ampere+" and plat["integrated"]:
        raise InputError(f"--hardware-compat ampere+ is not supported on Jetson/DRIVE (integrated GPU "
                         f"{device_name}); build a plan for this device instead")

    trt = current().import_tensorrt(builder=True)
    # TensorRT builds on, and binds the plan to, the calling thread's current device (TensorRT FAQ:
    # "use cudaSetDevice() before calling the builder").
    current().native.set_device(device)
    logger = process_logger(trt)
    with logger.capture() as lines:
        plan, timing_bytes, engine = _build(trt, logger, lines, onnx_bytes, variant=variant, max_batch=max_batch,
                                            hardware_compat=hardware_compat, version_compatible=version_compatible,
                                            dla_core=dla_core, workspace_bytes=workspace_bytes,
                                            optimization_level=optimization_level, timing_cache=timing_cache,
                                            device_name=device_name, tf32=tf32)
        inspector = engine.create_engine_inspector()
        layers_json = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
        num_layers, memory = int(engine.num_layers), int(engine.device_memory_size_v2)
        del engine, inspector
    try:
        json.loads(layers_json)
    except ValueError:
        layers_json = json.dumps({"raw": layers_json})

    record = {
        "variant": variant, "trt_version": trt.__version__, "compute_capability": list(cc),
        "device_name": device_name, "hardware_compat": hardware_compat, "version_compatible": bool(version_compatible),
        "lean_runtime_excluded": bool(version_compatible), "max_batch": int(max_batch),
        "dla_core": dla_core, "builder_optimization_level": int(optimization_level),
        "workspace_bytes": int(workspace_bytes), "num_layers": num_layers, "device_memory_bytes": memory,
        "platform": plat, "tf32": bool(tf32),
    }
    return EngineBuild(plan=plan, timing_cache=timing_bytes, build_log="\n".join(lines) + "\n",
                       layers_json=layers_json, record=record)


def _build(trt, logger, lines: list[str], onnx_bytes: bytes, *, variant: str, max_batch: int, hardware_compat: str,
           version_compatible: bool, dla_core: int | None, workspace_bytes: int, optimization_level: int,
           timing_cache: bytes | None, device_name: str, tf32: bool):
    """(plan bytes, timing cache bytes, deserialized engine for the inspector)."""
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # strongly typed is always on in TensorRT 11
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            errors.append(f"node {err.node()} ({err.node_operator()} {err.node_name()!r}): {err.desc()}")
        raise BundleError(f"TensorRT's ONNX parser rejected the {variant} model: " + "; ".join(errors))
    if network.num_inputs != 1:
        raise BundleError(f"the {variant} model has {network.num_inputs} inputs; SliceRT models take one")
    inp = network.get_input(0)
    dims = list(inp.shape)
    if dims[0] != -1 and max_batch > 1:
        raise InputError(f"the {variant} model has a fixed batch of {dims[0]}; build with --max-batch 1 or export "
                         f"with a dynamic batch axis")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    config.builder_optimization_level = int(optimization_level)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if not tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if dims[0] == -1:
        profile = builder.create_optimization_profile()
        tail = tuple(int(d) for d in dims[1:])
        profile.set_shape(inp.name, (1, *tail), (1, *tail), (int(max_batch), *tail))
        if config.add_optimization_profile(profile) < 0:  # -1: TensorRT found the profile invalid
            raise BundleError(f"TensorRT refused the optimization profile batch 1..{max_batch} x {list(tail)} of "
                              f"input {inp.name!r} of the {variant} model")
    cache = config.create_timing_cache(timing_cache or b"")
    if not config.set_timing_cache(cache, False):
        lines.append("[WARNING] the given timing cache does not match this GPU/TensorRT; started a new one")
        if not config.set_timing_cache(config.create_timing_cache(b""), False):
            raise BundleError("TensorRT refused a new, empty timing cache")
    if hardware_compat == "ampere+":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    elif hardware_compat == "same-cc":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
    if dla_core is not None:
        if builder.num_DLA_cores == 0:
            raise BackendUnavailable(f"--dla-core {dla_core}: this GPU ({device_name}) has no DLA cores")
        if not 0 <= dla_core < builder.num_DLA_cores:
            raise InputError(f"--dla-core {dla_core}: this device has DLA cores 0..{builder.num_DLA_cores - 1}")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        tail = "\n".join(lines[-20:])
        raise BundleError(f"TensorRT failed to build the {variant} engine; last log lines:\n{tail}")
    plan = bytes(memoryview(serialized))
    timing_bytes = bytes(memoryview(config.get_timing_cache().serialize()))

    # Per-layer information (tactics, formats, precisions) from the engine inspector.
    runtime = trt.Runtime(logger)
    if version_compatible:
        runtime.engine_host_code_allowed = True  # our own plan, built a moment ago
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise BundleError(f"the {variant} engine TensorRT just built does not deserialize")
    return plan, timing_bytes, engine
