"""The TensorRT code cannot run here, so check it statically against TensorRT 11.4's recorded Python API
(tests/data/tensorrt-11.4-api, copied from the real bindings wheel):

  * every `trt.X` / `trt.X.Y` chain in the builder and the backend exists (module names, class
    members, enum members);
  * every method/property used on a TensorRT object held in a known variable (builder, config,
    network, parser, profile, engine, context, runtime, inspector, ...) exists on that class;
  * the runtime backend uses only names the small `tensorrt_lean` module also has;
  * the checker itself flags TensorRT 8/10 API that 11.4 removed.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
API = ROOT / "tests" / "data" / "tensorrt-11.4-api"
SOURCES = [ROOT / "engine" / "bundle" / "tensorrt_build.py", ROOT / "engine" / "backends" / "tensorrt.py"]

# Variables that hold a TensorRT object, per source file, and that object's class.
TYPED_NAMES = {
    "tensorrt_build.py": {"builder": "Builder", "network": "INetworkDefinition", "parser": "OnnxParser",
                          "config": "IBuilderConfig", "profile": "IOptimizationProfile", "runtime": "Runtime", "engine": "ICudaEngine", "inspector": "EngineInspector",
                          "err": "ParserError", "inp": "ITensor"},
    "tensorrt.py": {"self._runtime": "Runtime", "runtime": "Runtime", "engine": "ICudaEngine",
                    "self._engine": "ICudaEngine", "context": "IExecutionContext", "ctx.context": "IExecutionContext",
                    "runtime_config": "IRuntimeConfig"},
}


def _load_api():
    module = set((API / "dir_tensorrt.txt").read_text().split())
    lean = set((API / "dir_tensorrt_lean.txt").read_text().split())
    members: dict[str, set[str]] = {}
    current = None
    for line in (API / "class_members.txt").read_text().splitlines():
        m = re.match(r"## class (\w+)", line)
        if m:
            current = members.setdefault(m.group(1), set())
        elif current is not None and line.strip():
            current.add(line.split()[0])
    for line in (API / "enum_members.txt").read_text().splitlines():
        m = re.match(r"## enum (\w+)", line)
        if m:
            current = members.setdefault(m.group(1), set())
        elif current is not None and "=" in line:
            current.add(line.split("=")[0].strip())
    return module, lean, members


MODULE, LEAN, MEMBERS = _load_api()


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def check_source(text: str, typed: dict[str, str]) -> tuple[list[str], set[str], set[str]]:
    """(problems, top-level trt names used, typed variables seen)."""
    problems: list[str] = []
    top: set[str] = set()
    seen: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.Attribute):
            continue
        chain = _dotted(node)
        if chain is None:
            continue
        parts = chain.split(".")
        if parts[0] == "trt" and len(parts) >= 2:
            top.add(parts[1])
            if parts[1] not in MODULE:
                problems.append(f"trt.{parts[1]} is not in tensorrt 11.4")
            elif len(parts) >= 3 and parts[1] in MEMBERS and parts[2] not in MEMBERS[parts[1]]:
                problems.append(f"trt.{parts[1]}.{parts[2]} is not in tensorrt 11.4")
            continue
        owner, attr = ".".join(parts[:-1]), parts[-1]
        if owner in typed:
            seen.add(owner)
            cls = typed[owner]
            if attr not in MEMBERS[cls]:
                problems.append(f"{owner}.{attr}: {cls} has no member {attr!r} in tensorrt 11.4")
    return problems, top, seen


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_every_tensorrt_attribute_exists(path):
    typed = TYPED_NAMES[path.name]
    problems, top, seen = check_source(path.read_text(), typed)
    assert problems == []
    assert top, "the checker found no trt.* use at all: is the module still imported as `trt`?"
    assert seen == set(typed), f"typed names never used (stale table?): {set(typed) - seen}"


def test_runtime_backend_runs_on_the_lean_module():
    _, top, _ = check_source(SOURCES[1].read_text(), TYPED_NAMES["tensorrt.py"])
    assert top - LEAN == set(), "the runtime must work with tensorrt_lean (version-compatible plans)"


def test_builder_uses_the_required_api():
    text = SOURCES[0].read_text()
    for needed in ("build_serialized_network", "create_optimization_profile", "set_memory_pool_limit",
                   "MemoryPoolType.WORKSPACE", "create_timing_cache", "set_timing_cache", "builder_optimization_level",
                   "hardware_compatibility_level", "BuilderFlag.VERSION_COMPATIBLE",
                   "BuilderFlag.EXCLUDE_LEAN_RUNTIME", "create_engine_inspector", "OnnxParser"):
        assert needed in text, needed
    runtime = SOURCES[1].read_text()
    for needed in ("deserialize_cuda_engine", "create_execution_context", "set_tensor_address", "execute_async_v3",
                   "engine_host_code_allowed", "num_io_tensors"):
        assert needed in runtime, needed


def test_checker_catches_removed_api():
    old = ("import tensorrt as trt\n"
           "config.set_flag(trt.BuilderFlag.FP16)\n"
           "config.int8_calibrator = trt.IInt8EntropyCalibrator2\n"
           "engine = builder.build_engine(network, config)\n"
           "self._context.execute_async_v2(bindings, stream)\n"
           "n = self._engine.num_bindings\n")
    typed = {"builder": "Builder", "config": "IBuilderConfig", "self._context": "IExecutionContext",
             "self._engine": "ICudaEngine"}
    problems, _, _ = check_source(old, typed)
    assert sorted(problems) == sorted([
        "trt.BuilderFlag.FP16 is not in tensorrt 11.4",
        "config.int8_calibrator: IBuilderConfig has no member 'int8_calibrator' in tensorrt 11.4",
        "trt.IInt8EntropyCalibrator2 is not in tensorrt 11.4",
        "builder.build_engine: Builder has no member 'build_engine' in tensorrt 11.4",
        "self._context.execute_async_v2: IExecutionContext has no member 'execute_async_v2' in tensorrt 11.4",
        "self._engine.num_bindings: ICudaEngine has no member 'num_bindings' in tensorrt 11.4",
    ])


def test_listing_copy_matches_reference_when_present():
    ref = Path("/work/shared/reference/tensorrt-11.4-api")
    if not ref.is_dir():
        pytest.skip("shared reference listing not on this machine; the repo copy is the source of truth")
    for f in ref.iterdir():
        assert (API / f.name).read_bytes() == f.read_bytes(), f.name


# -- the native CUDA resources the backend drives (engine._native, cpp/cuda_resources.cpp) ---------------
NATIVE_TYPED = {"self._stream": "Stream", "stream": "Stream", "self._d_input": "DeviceBuffer", "device": "DeviceBuffer",
                "self._d_outputs[]": "DeviceBuffer", "self._h_outputs[]": "PinnedBuffer", "pinned": "PinnedBuffer",
                "self._tensor_staging": "PinnedBuffer", "graph": "CudaGraph", "ev[]": "Event",
                "self._sync_event": "Event"}


def _dotted_sub(node: ast.AST) -> str | None:
    """Like _dotted, with `a[i]` rendered as `a[]`."""
    if isinstance(node, ast.Subscript):
        inner = _dotted_sub(node.value)
        return None if inner is None else inner + "[]"
    if isinstance(node, ast.Attribute):
        inner = _dotted_sub(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return None


def _signature_params(func) -> list[tuple[str, bool]]:
    """[(name, has_default)] from a pybind11 docstring's first line."""
    first = func.__doc__.strip().splitlines()[0]
    inner = first[first.index("(") + 1:first.rindex(")")]
    params, depth, cur = [], 0, ""
    for ch in inner:
        depth += ch in "[("
        depth -= ch in "])"
        if ch == "," and depth == 0:
            params.append(cur.strip())
            cur = ""
        else:
            cur += ch
    params.append(cur.strip())
    return [(p.split(":")[0].strip(), "=" in p) for p in params if p and not p.startswith("self")]


def test_backend_uses_only_native_api_that_exists():
    from engine import _native

    tree = ast.parse(SOURCES[1].read_text())
    problems, seen = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain = _dotted_sub(node.value)
            if chain == "_native" and not hasattr(_native, node.attr):
                problems.append(f"_native.{node.attr} does not exist")
            if chain in NATIVE_TYPED:
                seen.add(chain)
                if not hasattr(getattr(_native, NATIVE_TYPED[chain]), node.attr):
                    problems.append(f"{chain}.{node.attr}: _native.{NATIVE_TYPED[chain]} has no {node.attr!r}")
        if isinstance(node, ast.Call) and _dotted_sub(node.func) and _dotted_sub(node.func).startswith("_native."):
            name = _dotted_sub(node.func).split(".", 1)[1]
            func = getattr(_native, name, None)
            target = func.__init__ if isinstance(func, type) else func
            if func is None or not (target.__doc__ or "").strip():
                continue
            params = _signature_params(target)
            required = sum(1 for _, d in params if not d)
            n_args = len(node.args) + len(node.keywords)
            if not required <= n_args <= len(params):
                problems.append(f"_native.{name}: called with {n_args} arguments, signature takes {required}.."
                                f"{len(params)} ({[p for p, _ in params]})")
            for kw in node.keywords:
                if kw.arg not in {p for p, _ in params}:
                    problems.append(f"_native.{name}: no parameter {kw.arg!r}")
    assert problems == []
    assert seen == set(NATIVE_TYPED), f"typed names never used (stale table?): {set(NATIVE_TYPED) - seen}"


def test_emulation_offers_the_native_api_the_backend_uses():
    """tests/runtime/fake_device_trt.py must not drift from engine._native: every native function and
    method the backend calls exists on the emulation too (and, by the test above, on the real module)."""
    import fake_device_trt as fake

    emu = fake.EmulatedDevice()
    classes = {"Stream": fake.EmulatedStream, "Event": fake.EmulatedEvent, "DeviceBuffer": fake.EmulatedDeviceBuffer,
               "PinnedBuffer": fake.EmulatedPinnedBuffer, "CudaGraph": fake.EmulatedGraph}
    tree = ast.parse(SOURCES[1].read_text())
    missing = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain = _dotted_sub(node.value)
            if chain == "_native" and not hasattr(emu.native, node.attr):
                missing.add(f"_native.{node.attr}")
            if chain in NATIVE_TYPED and not hasattr(classes[NATIVE_TYPED[chain]], node.attr) and node.attr not in (
                    "ptr", "nbytes", "handle", "device"):  # instance attributes of the emulation
                missing.add(f"{NATIVE_TYPED[chain]}.{node.attr}")
    assert missing == set()
