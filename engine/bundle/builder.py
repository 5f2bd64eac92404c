"""`build_bundle`: ONNX variants + model.json (+ accuracy report) -> one verified `.slicert` file.

Targets:
  cpu       ONNX variants + ONNX Runtime models optimized offline (level ALL), each verified to load
            and to match its source model.
  tensorrt  ONNX variants + one TensorRT engine per variant for this GPU; BackendUnavailable (with the
            reason) when TensorRT or a CUDA device is missing.
  auto      cpu, plus TensorRT engines when TensorRT and a GPU are present; otherwise the manifest
            records that no engine was built and why.
The ONNX variants always travel in the bundle, so a device with another GPU can rebuild its engine.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.bundle import format as fmt
from engine.bundle.sources import ModelSource, gate_status, resolve_source
from engine.bundle.writer import sha256_bytes, write_bundle
from engine.errors import AccuracyGateError, BackendUnavailable, BundleError, InputError, OutputExists

PRECISIONS = ("fp32", "fp16", "int8", "mixed", "best")
TARGETS = ("cpu", "tensorrt", "auto")
_ONNX_DTYPES = {1: "float32", 10: "float16", 3: "int8", 2: "uint8"}


@dataclass
class BuildReport:
    """What `build_bundle` wrote."""

    path: Path
    variants: list[str]
    engines: list[dict[str, Any]]
    engines_not_built: str | None
    excluded: dict[str, str] = field(default_factory=dict)  # variant -> why it was left out
    notes: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)


def _dist_version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _io_signature(onnx_bytes: bytes, label: str) -> dict[str, Any]:
    """Input/output names, shapes (-1 = dynamic) and dtypes of a single-input single-output model."""
    import onnx

    try:
        model = onnx.load_from_string(onnx_bytes)
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError / ValidationError
        raise InputError(f"{label} is not a valid ONNX model: {exc}") from exc
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise InputError(f"{label}: SliceRT models have one input and one output, this one has {len(inputs)} and "
                         f"{len(graph.output)}")

    def describe(value) -> dict[str, Any]:
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return {"name": value.name, "shape": dims, "dtype": _ONNX_DTYPES.get(t.elem_type, f"onnx:{t.elem_type}")}

    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    return {"input": describe(inputs[0]), "output": describe(graph.output[0]), "opset": opsets.get("ai.onnx")}


def _refuse_outside_data(path: Path) -> None:
    """External data and unbounded loops are refused at build as at load (engine/bundle/onnx_guard.py):
    ONNX Runtime would resolve an external path against the build machine's working directory."""
    from engine.bundle.onnx_guard import check_model

    try:
        check_model(path.read_bytes(), path.name)
    except BundleError as exc:
        raise InputError(str(exc)) from None


def _check_against_meta(sig: dict[str, Any], src: ModelSource, label: str) -> None:
    spec = src.spec
    task = src.meta["task"]
    k = len(src.meta["labels"])
    shape = sig["input"]["shape"]
    want = ([spec.out_channels, spec.out_height, spec.out_width] if spec.layout == "NCHW"
            else [spec.out_height, spec.out_width, spec.out_channels])
    if len(shape) != 4 or shape[1:] != want:
        raise InputError(f"{label}: input {sig['input']['name']!r} has shape {shape}, but model.json's preprocess "
                         f"spec produces [N, {', '.join(map(str, want))}] ({spec.layout}); fix the spec or the export")
    if sig["input"]["dtype"] != spec.out_dtype:
        raise InputError(f"{label}: input dtype {sig['input']['dtype']} != preprocess out_dtype {spec.out_dtype}")
    out = sig["output"]["shape"]
    if task == "classification" and (len(out) != 2 or out[1] != k):
        raise InputError(f"{label}: classification output {sig['output']['name']!r} has shape {out}, expected "
                         f"[N, {k}] for {k} labels")
    # A one-channel segmentation head is a sigmoid (foreground where logit > 0): labels are then
    # [background, foreground].
    if task == "segmentation" and (len(out) != 4 or not (out[1] == k or (out[1] == 1 and k == 2))):
        raise InputError(f"{label}: segmentation output {sig['output']['name']!r} has shape {out}, expected "
                         f"[N, {k}, H, W] for {k} labels (or [N, 1, H, W] with 2 labels)")
    if sig["output"]["dtype"] not in ("float32", "float16"):
        raise InputError(f"{label}: output dtype {sig['output']['dtype']} is not float32/float16")


def _select_variants(src: ModelSource, precision: str) -> tuple[list[str], dict[str, str], dict[str, dict]]:
    """(variants to bundle, excluded variant -> reason, gate record per variant)."""
    gates: dict[str, dict[str, Any]] = {}
    for v in src.onnx:
        forms = {"tensorrt": gate_status(src.accuracy_report, v, "tensorrt")}
        if v in src.onnx_cpu:
            forms["onnxruntime"] = gate_status(src.accuracy_report, v, "onnxruntime")
        states = [p for p, _ in forms.values()]
        passed = False if False in states else (True if all(p is True for p in states) else None)
        detail = "; ".join(dict.fromkeys(d for _, d in forms.values()))
        gates[v] = {"passed": passed, "detail": detail,
                    "forms": {k: {"passed": p, "detail": d} for k, (p, d) in forms.items()}}
    if precision != "best":
        if precision not in src.onnx:
            raise InputError(f"--precision {precision}: no {precision} model in the source (found "
                             f"{sorted(src.onnx)}); run `slicert quantize` first or pick one of those")
        if gates[precision]["passed"] is False:
            raise AccuracyGateError(f"the {precision} model failed its accuracy gate: {gates[precision]['detail']}; "
                                    f"fix: pick another --precision, or rerun `slicert quantize` (with --accept-loss "
                                    f"if the loss is acceptable, which the report records)")
        return [precision], {}, gates
    chosen, excluded = [], {}
    for v in fmt.VARIANTS:
        if v not in src.onnx:
            continue
        if gates[v]["passed"] is False:
            excluded[v] = f"failed its accuracy gate: {gates[v]['detail']}"
        else:
            chosen.append(v)
    if not chosen:
        raise AccuracyGateError("no model variant passed its accuracy gate: " +
                                "; ".join(f"{v}: {r}" for v, r in excluded.items()))
    return chosen, excluded, gates


def _calibration_sha(report: dict[str, Any] | None) -> str | None:
    if not report:
        return None
    for key in ("calibration_sha256", "calibration_hash"):
        if isinstance(report.get(key), str):
            return report[key]
    cal = report.get("calibration")
    if isinstance(cal, dict):
        for key in ("sha256", "data_sha256", "hash"):
            if isinstance(cal.get(key), str):
                return cal[key]
    return None


def build_bundle(source: str | os.PathLike[str], out: str | os.PathLike[str], *, precision: str = "best",
                 target: str = "auto", meta: str | os.PathLike[str] | None = None, hardware_compat: str = "none",
                 version_compatible: bool = False, dla_core: int | None = None, max_batch: int = 1,
                 force: bool = False, workspace_mb: int = 1024, optimization_level: int = 3,
                 timing_cache: str | os.PathLike[str] | None = None, device: int = 0, time_cpu: bool = False,
                 build_threads: int = 1, tf32: bool = True, sign_key=None) -> BuildReport:
    """Build one `.slicert` bundle from a model file, an export folder or a quantizer folder.

    `precision` picks the variants (`best`: every variant that passed its accuracy gate); `target`
    picks what is compiled (see the module docstring). `max_batch` is the largest batch the engines
    and verification cover. Raises OutputExists (out exists, no force), InputError (bad source),
    AccuracyGateError, BackendUnavailable (`target="tensorrt"` without TensorRT/GPU).
    `sign_key`: Ed25519 private key (PEM path or bytes) that signs the manifest (`--sign`).
    """
    from engine.bundle.tensorrt_build import (
        HARDWARE_COMPAT_LEVELS,
        build_engine,
        tensorrt_unavailable_reason,
        tensorrt_version,
    )

    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if target not in TARGETS:
        raise InputError(f"target must be one of {TARGETS}, got {target!r}")
    if hardware_compat not in HARDWARE_COMPAT_LEVELS:
        raise InputError(f"hardware_compat must be one of {HARDWARE_COMPAT_LEVELS}, got {hardware_compat!r}")
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or not 1 <= max_batch <= 4096:
        raise InputError(f"max_batch must be an integer in [1, 4096], got {max_batch!r}")
    if dla_core is not None and (not isinstance(dla_core, int) or dla_core < 0):
        raise InputError(f"dla_core must be a non-negative integer, got {dla_core!r}")
    out = Path(out)
    if out.exists() and not force:  # fail before minutes of engine building
        raise OutputExists(f"{out} already exists; pass force=True (CLI: --force) to replace it")

    if sign_key is not None:
        from engine.bundle.signing import load_private_key

        sign_key = load_private_key(sign_key)  # a bad key fails before minutes of building
    src = resolve_source(source, meta)
    signatures = {}
    for v, path in [*src.onnx.items(), *((f"{v} (CPU form)", p) for v, p in src.onnx_cpu.items())]:
        _refuse_outside_data(path)  # before onnx.checker, which would look for the external file
        sig = _io_signature(path.read_bytes(), f"{path.name}")
        _check_against_meta(sig, src, path.name)
        signatures[v] = sig
    ref = signatures.get("fp32") or next(iter(signatures.values()))
    for v, sig in signatures.items():
        if (sig["input"]["name"], sig["output"]["name"], sig["input"]["shape"][1:]) != (
                ref["input"]["name"], ref["output"]["name"], ref["input"]["shape"][1:]):
            raise InputError(f"variant {v} has a different input/output signature than the others: {sig} vs {ref}")
    if max_batch > 1 and ref["input"]["shape"][0] != -1:
        raise InputError(f"the model's batch axis is fixed at {ref['input']['shape'][0]}; use --max-batch 1 or "
                         f"export with a dynamic batch axis")

    variants, excluded, gates = _select_variants(src, precision)
    notes = list(src.notes)

    trt_reason = tensorrt_unavailable_reason(device, need_builder=True) if target in ("tensorrt", "auto") else None
    if target == "tensorrt" and trt_reason:
        raise BackendUnavailable(f"--target tensorrt cannot build here: {trt_reason}. Use --target cpu, or --target "
                                 f"auto to build the CPU bundle and record why no engine was built")
    build_trt = target in ("tensorrt", "auto") and trt_reason is None
    build_cpu = target in ("cpu", "auto")
    if target == "cpu":
        engines_not_built = "not requested (--target cpu)"
    elif not build_trt:
        engines_not_built = f"TensorRT unavailable at build time: {trt_reason}"
    else:
        engines_not_built = None
    if dla_core is not None and not build_trt:
        notes.append("--dla-core ignored: no TensorRT engine was built")

    members: dict[str, Any] = {}
    variant_entries: dict[str, dict[str, Any]] = {}
    from engine.envinfo import cpu_flags
    from engine.trust.build import prepare_trust

    trust = prepare_trust(src, variants)  # trust.json of tools/trust_fit.py: OOD, calibration, eligibility

    for v in variants:
        onnx_bytes = src.onnx[v].read_bytes()
        entry: dict[str, Any] = {"onnx": fmt.onnx_member(v), "source_file": src.onnx[v].name,
                                 "source_sha256": sha256_bytes(onnx_bytes), "opset": signatures[v]["opset"],
                                 "accuracy_gate": gates[v]}
        onnx_bytes = trust.extend(v, onnx_bytes, entry)  # + features/CAM outputs when trust.json has them
        members[fmt.onnx_member(v)] = onnx_bytes
        cpu_bytes, cpu_name = onnx_bytes, src.onnx[v].name
        if v in src.onnx_cpu:
            cpu_bytes, cpu_name = trust.extend(v, src.onnx_cpu[v].read_bytes(), entry), src.onnx_cpu[v].name
            members[fmt.onnx_cpu_member(v)] = cpu_bytes
            entry["onnx_cpu"] = fmt.onnx_cpu_member(v)
            entry["onnx_cpu_source_file"] = cpu_name
        if build_cpu:
            from engine.bundle.ort_build import optimize_for_cpu

            optimized, verify = optimize_for_cpu(cpu_bytes, max_batch=max_batch, threads=build_threads,
                                                 label=f"{v} model ({cpu_name})")
            members[fmt.ort_member(v)] = optimized
            entry["ort"] = fmt.ort_member(v)
            entry["ort_verification"] = verify
        variant_entries[v] = entry

    engines: list[dict[str, Any]] = []
    if build_trt:
        cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else None
        for v in variants:
            built = build_engine(members[fmt.onnx_member(v)], variant=v, max_batch=max_batch,
                                 hardware_compat=hardware_compat, version_compatible=version_compatible,
                                 dla_core=dla_core, workspace_bytes=int(workspace_mb) << 20,
                                 optimization_level=optimization_level, timing_cache=cache_bytes, device=device,
                                 tf32=tf32)  # tf32=False: FP32 engines without TF32 (accuracy comparisons)
            cache_bytes = built.timing_cache  # later variants reuse earlier tactic timings
            names = fmt.engine_members(built.record["trt_version"], tuple(built.record["compute_capability"]),
                                       hardware_compat, v)
            members[names["plan"]] = built.plan
            members[names["timing_cache"]] = built.timing_cache
            members[names["build_log"]] = built.build_log.encode()
            members[names["layers"]] = built.layers_json.encode()
            engines.append({**built.record, **names})
        if timing_cache and cache_bytes:
            Path(timing_cache).write_bytes(cache_bytes)  # the user's cache file, updated on purpose

    if src.accuracy_report_path is not None:
        members["reports/accuracy_report.json"] = src.accuracy_report_path.read_bytes()

    # OpenVINO's NNCF INT8 IR and BF16 variant, each only if its gate passed (engine/bundle/openvino_build.py).
    from engine.bundle.openvino_build import add_openvino_variants, static_defaults

    variants = variants + add_openvino_variants(src, precision, variant_entries, members, excluded, notes,
                                                ref["input"]["shape"][1:])
    default_variant = static_defaults(variant_entries)

    task = src.meta["task"]
    postprocess = src.meta.get("postprocess") or ("softmax" if task == "classification" else "argmax")
    from engine import __version__ as slicert_version

    fp32_sha = variant_entries.get("fp32", {}).get("source_sha256")
    manifest: dict[str, Any] = {
        "format": fmt.FORMAT_NAME,
        "schema_version": fmt.SCHEMA_VERSION,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": {"name": src.meta["name"], "task": task, "labels": list(src.meta["labels"]),
                  "dataset": src.meta.get("dataset"), "metrics": src.meta.get("metrics")},
        "input": {**ref["input"], "layout": src.spec.layout, "max_batch": max_batch},
        "preprocess": src.spec.to_dict(),
        "voi_policy": src.meta["voi_policy"],
        "output": {**ref["output"], "kind": "scores" if task == "classification" else "logits",
                   "postprocess": postprocess},
        "variants": variant_entries,
        "excluded_variants": excluded,
        "default_variant": default_variant,
        "ort": ({"version": _dist_version("onnxruntime"), "optimization": "ORT_ENABLE_ALL",
                 "providers": ["CPUExecutionProvider"], "cpu_flags": cpu_flags()} if build_cpu else None),
        "engines": engines,
        "engines_not_built": engines_not_built,
        "accuracy": src.accuracy_report,
        "trust": trust.section,
        "provenance": {
            "slicert": slicert_version, "onnx": _dist_version("onnx"), "onnxruntime": _dist_version("onnxruntime"),
            "tensorrt": tensorrt_version(), "python": platform.python_version(), "platform": platform.platform(),
            "source": str(Path(source).resolve()), "model_json": str(src.meta_path) if src.meta_path else None,
            "source_model_sha256": src.meta.get("source_sha256") or fp32_sha,
            "fp32_onnx_sha256": fp32_sha,
            "calibration_sha256": _calibration_sha(src.accuracy_report),
            "build": {"precision": precision, "target": target, "hardware_compat": hardware_compat,
                      "version_compatible": version_compatible, "dla_core": dla_core, "max_batch": max_batch,
                      "workspace_mb": workspace_mb, "optimization_level": optimization_level,
                      "argv": list(sys.argv)},
            "notes": notes,
        },
    }
    if not variants:
        raise BundleError("nothing to bundle")
    if time_cpu and build_cpu:  # `best` = fastest that passed, measured here (engine/bundle/cpu_timing.py)
        from engine.bundle.cpu_timing import measure_into

        measure_into(manifest, members, threads=build_threads)
    path = write_bundle(out, manifest, members, force=force, sign_key=sign_key)
    return BuildReport(path=path, variants=variants, engines=engines, engines_not_built=engines_not_built,
                       excluded=excluded, notes=notes, manifest=manifest)
