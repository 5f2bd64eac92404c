"""The `.slicert` bundle format: one zip file, every member stored (not deflated), a manifest.

Why a zip: every platform can list and extract it with standard tools, the central directory gives
random access, and with ZIP_STORED members the ONNX model and TensorRT plan bytes sit in the file
verbatim. The writer pads each member's local header (an "extra" field, like Android's zipalign) so
member data starts on a 4 KiB boundary (page-aligned data lets a tool map a member; the runtime reads
members with pread instead, see reader.py, because a mapped file that shrinks raises SIGBUS).

Layout (schema version 1):
    manifest.json                                  this schema; sha256 + size of every other member
    onnx/model.<variant>.onnx                      variant in VARIANTS (TensorRT Q/DQ form when quantized)
    onnx/model.<variant>.cpu.onnx                  ONNX Runtime CPU Q/DQ form of a quantized variant
    ort/model.<variant>.ort.onnx                   the CPU model optimized offline (ORT_ENABLE_ALL)
    openvino/model.<variant>.xml | .bin            OpenVINO IR of a quantized variant (NNCF INT8)
    engines/trt-<major.minor>/<key>.<variant>.plan key = sm_<cc> | ampere+ (hardware-compatible)
    engines/trt-<major.minor>/<key>.<variant>.timing.cache | .build.log | .layers.json
    reports/accuracy_report.json                   the quantizer's report, verbatim (when given)

    signature.json                                 optional Ed25519 signature of manifest.json (signing.py)

The SHA-256 digests give integrity (accidental corruption, truncation, edits), not authenticity: a
party able to rewrite the file can rewrite the manifest too. The optional signature gives
authenticity: `engine.load(path, trusted_keys=[...])` accepts only bundles signed by one of those keys.
"""
from __future__ import annotations

import re
from typing import Any

from engine.errors import BundleError
from engine.spec import PreprocessSpec

FORMAT_NAME = "slicert-bundle"
SCHEMA_VERSION = 1
SUFFIX = ".slicert"
MANIFEST = "manifest.json"
ALIGNMENT = 4096  # member data alignment in bytes (one page)

TASKS = ("classification", "segmentation")
# bf16: the FP32 model run with OpenVINO's bf16 inference precision (CPUs with AMX/AVX512-BF16 only).
VARIANTS = ("fp32", "fp16", "int8", "mixed", "bf16")
POSTPROCESS = {"classification": ("softmax", "sigmoid", "identity"), "segmentation": ("argmax",)}
VOI_POLICIES = ("dicom", "model")
HARDWARE_COMPAT = ("none", "ampere+", "same-cc")

# Preference order when the caller asks for precision="best". A variant that failed its accuracy gate
# is never picked. On CPU, FP16 is last: ONNX Runtime's CPU provider runs most FP16 ops through casts.
# Used only when the bundle records no measured CPU timings (`slicert build` measures them, see
# engine/bundle/cpu_timing.py): then the manifest's default_variant is the fastest variant that passed.
BEST_ORDER = {"tensorrt": ("int8", "mixed", "fp16", "fp32"), "onnxruntime": ("int8", "mixed", "fp32", "fp16"),
              "openvino": ("int8", "mixed", "bf16", "fp32", "fp16")}

_MEMBER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+\-]*(/[A-Za-z0-9][A-Za-z0-9._+\-]*)*$")


def gate_failed(entry: dict[str, Any], backend: str | None = None) -> str | None:
    """Why a variant entry's accuracy gate failed (overall, or for `backend`'s form), else None.
    A gate that was not stated (passed None, e.g. the FP32 reference) is not a failure."""
    gate = entry.get("accuracy_gate") or {}
    if gate.get("passed") is False:
        return f"accuracy gate failed ({gate.get('detail') or 'no detail'})"
    form = (gate.get("forms") or {}).get(backend) if backend else None
    if isinstance(form, dict) and form.get("passed") is False:
        return f"accuracy gate failed for {backend} ({form.get('detail') or 'no detail'})"
    return None


def onnx_member(variant: str) -> str:
    return f"onnx/model.{variant}.onnx"


def onnx_cpu_member(variant: str) -> str:
    """The ONNX Runtime CPU form of a quantized variant (UINT8 activations), when it differs."""
    return f"onnx/model.{variant}.cpu.onnx"


def ort_member(variant: str) -> str:
    return f"ort/model.{variant}.ort.onnx"


def openvino_members(variant: str) -> dict[str, str]:
    """The OpenVINO IR of a variant: topology (.xml) and weights (.bin), both bundle members."""
    return {"xml": f"openvino/model.{variant}.xml", "bin": f"openvino/model.{variant}.bin"}


def trt_dir(trt_version: str) -> str:
    major_minor = ".".join(str(trt_version).split(".")[:2])
    return f"engines/trt-{major_minor}"


def engine_key(compute_capability: tuple[int, int], hardware_compat: str) -> str:
    # Hardware-compatible plans run on any Ampere+ GPU, so they are not keyed by the build GPU.
    return "ampere+" if hardware_compat == "ampere+" else f"sm_{compute_capability[0]}{compute_capability[1]}"


def engine_members(trt_version: str, compute_capability: tuple[int, int], hardware_compat: str,
                   variant: str) -> dict[str, str]:
    base = f"{trt_dir(trt_version)}/{engine_key(compute_capability, hardware_compat)}.{variant}"
    return {"plan": f"{base}.plan", "timing_cache": f"{base}.timing.cache", "build_log": f"{base}.build.log",
            "layers": f"{base}.layers.json"}


def check_member_name(name: str) -> str:
    """Member names are relative POSIX paths without '..' (no zip-slip on extraction)."""
    if not isinstance(name, str) or not _MEMBER_RE.match(name) or ".." in name.split("/"):
        raise BundleError(f"invalid bundle member name {name!r}: use a relative path of [A-Za-z0-9._+-] parts")
    return name


# -- manifest validation --------------------------------------------------------------------------
def _need(obj: Any, key: str, types: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise BundleError(f"manifest.json: missing field '{where}{key}'")
    value = obj[key]
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise BundleError(f"manifest.json: field '{where}{key}' has type {type(value).__name__}, "
                          f"expected {' or '.join(t.__name__ for t in allowed)}")
    return value


def check_schema_version(manifest: Any) -> int:
    """Raise BundleError unless this SliceRT can read the manifest's schema version."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise BundleError(f"manifest.json: not a SliceRT bundle manifest (format must be {FORMAT_NAME!r})")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BundleError(f"manifest.json: schema_version must be a positive integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"bundle schema version {version} is newer than this SliceRT reads (up to {SCHEMA_VERSION}); "
            f"fix: upgrade SliceRT (`pip install -U slicert`), or rebuild the bundle with this version "
            f"(`slicert build ... --force`)")
    return version


def _optional(obj: dict, key: str, types: type | tuple[type, ...], where: str) -> Any:
    """obj[key] when present and not None (checked like _need), else None."""
    if obj.get(key) is None:
        return None
    return _need(obj, key, types, where)


def _member_ref(obj: dict, key: str, members: dict, where: str, required: bool = False) -> str | None:
    name = _need(obj, key, str, where) if required else _optional(obj, key, str, where)
    if name is not None and name not in members:
        raise BundleError(f"manifest.json: {where}{key} names {name!r}, which has no entry in members")
    return name


def validate_manifest(manifest: Any) -> dict[str, Any]:
    """Check every manifest field the runtime reads, with its type; raises BundleError naming the first
    bad field. A bundle that passes cannot make the runtime fail with KeyError/TypeError later."""
    check_schema_version(manifest)
    model = _need(manifest, "model", dict, "")
    task = _need(model, "task", str, "model.")
    if task not in TASKS:
        raise BundleError(f"manifest.json: model.task must be one of {TASKS}, got {task!r}")
    _need(model, "name", str, "model.")
    labels = _need(model, "labels", list, "model.")
    if not labels or not all(isinstance(x, str) and x for x in labels) or len(set(labels)) != len(labels):
        raise BundleError("manifest.json: model.labels must be a non-empty list of unique, non-empty strings")

    inp = _need(manifest, "input", dict, "")
    _need(inp, "name", str, "input.")
    shape = _need(inp, "shape", list, "input.")
    if len(shape) != 4 or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape) or \
            not all(d >= 1 for d in shape[1:]):
        raise BundleError(f"manifest.json: input.shape must be [N, C, H, W] or [N, H, W, C] integers, got {shape}")
    _need(inp, "dtype", str, "input.")
    _optional(inp, "layout", str, "input.")
    max_batch = _optional(inp, "max_batch", int, "input.")
    if max_batch is not None and max_batch < 1:
        raise BundleError(f"manifest.json: input.max_batch must be >= 1, got {max_batch}")

    try:
        PreprocessSpec.from_dict(_need(manifest, "preprocess", dict, ""))
    except Exception as exc:  # InputError from the spec parser: re-raise as a bundle problem
        raise BundleError(f"manifest.json: field 'preprocess' is not a valid PreprocessSpec: {exc}") from exc
    voi_policy = _need(manifest, "voi_policy", str, "")
    if voi_policy not in VOI_POLICIES:
        raise BundleError(f"manifest.json: voi_policy must be one of {VOI_POLICIES}, got {voi_policy!r}")

    out = _need(manifest, "output", dict, "")
    _need(out, "name", str, "output.")
    post = _need(out, "postprocess", str, "output.")
    if post not in POSTPROCESS[task]:
        raise BundleError(f"manifest.json: output.postprocess for {task} must be one of {POSTPROCESS[task]}, "
                          f"got {post!r}")

    members = _need(manifest, "members", dict, "")
    for name, entry in members.items():
        check_member_name(name)
        sha = _need(entry, "sha256", str, f"members[{name!r}].")
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise BundleError(f"manifest.json: members[{name!r}].sha256 is not a hex SHA-256 digest")
        size = _need(entry, "size", int, f"members[{name!r}].")
        if size < 0:
            raise BundleError(f"manifest.json: members[{name!r}].size must be >= 0, got {size}")

    variants = _need(manifest, "variants", dict, "")
    if not variants:
        raise BundleError("manifest.json: the bundle holds no model variant")
    for variant, entry in variants.items():
        if variant not in VARIANTS:
            raise BundleError(f"manifest.json: unknown variant {variant!r} (known: {VARIANTS})")
        where = f"variants.{variant}."
        if not isinstance(entry, dict):
            raise BundleError(f"manifest.json: {where[:-1]} must be an object")
        _member_ref(entry, "onnx", members, where, required=True)
        _member_ref(entry, "onnx_cpu", members, where)
        _member_ref(entry, "ort", members, where)
        ov_form = _optional(entry, "openvino", dict, where)
        if ov_form is not None:
            _member_ref(ov_form, "xml", members, where + "openvino.", required=True)
            _member_ref(ov_form, "bin", members, where + "openvino.", required=True)
        only = _optional(entry, "backends", list, where)
        if only is not None and not all(isinstance(b, str) for b in only):
            raise BundleError(f"manifest.json: {where}backends must be a list of backend names")
        gate = _optional(entry, "accuracy_gate", dict, where)
        if gate is not None:
            if not (gate.get("passed") is None or isinstance(gate.get("passed"), bool)):  # 1 == True in Python
                raise BundleError(f"manifest.json: {where}accuracy_gate.passed must be true, false or null, got "
                                  f"{gate.get('passed')!r}")
            forms = _optional(gate, "forms", dict, f"{where}accuracy_gate.")
            for form, f in (forms or {}).items():
                if not isinstance(f, dict) or not (f.get("passed") is None or isinstance(f.get("passed"), bool)):
                    raise BundleError(f"manifest.json: {where}accuracy_gate.forms.{form} must be an object whose "
                                      f"passed is true, false or null")
    defaults = _optional(manifest, "default_variant", dict, "")
    for backend, variant in (defaults or {}).items():
        if not isinstance(variant, str) or variant not in variants:
            raise BundleError(f"manifest.json: default_variant.{backend} must name a variant of this bundle "
                              f"({sorted(variants)}), got {variant!r}")
        failed = gate_failed(variants[variant], backend)
        if failed:
            raise BundleError(f"manifest.json: default_variant.{backend} names {variant!r}, whose {failed}; a "
                              f"default must be a variant that passed")
    timings = _optional(manifest, "cpu_timings", dict, "")
    if timings is not None:
        _need(timings, "cpu_model", str, "cpu_timings.")
        _need(timings, "cpu_flags", list, "cpu_timings.")
        for backend, per_variant in _need(timings, "median_ms", dict, "cpu_timings.").items():
            if not isinstance(per_variant, dict) or not all(
                    v in variants and isinstance(ms, (int, float)) and not isinstance(ms, bool) and ms > 0
                    for v, ms in per_variant.items()):
                raise BundleError(f"manifest.json: cpu_timings.median_ms.{backend} must map variants of this "
                                  f"bundle to positive milliseconds")
    ort = _optional(manifest, "ort", dict, "")
    if ort is not None:
        _optional(ort, "version", str, "ort.")
        flags = _optional(ort, "cpu_flags", list, "ort.")
        if flags is not None and not all(isinstance(f, str) for f in flags):
            raise BundleError("manifest.json: ort.cpu_flags must be a list of strings")
    for i, eng in enumerate(_need(manifest, "engines", list, "")):
        where = f"engines[{i}]."
        if not isinstance(eng, dict):
            raise BundleError(f"manifest.json: {where[:-1]} must be an object")
        _member_ref(eng, "plan", members, where, required=True)
        for key in ("timing_cache", "build_log", "layers"):
            _member_ref(eng, key, members, where)
        for key in ("variant", "trt_version"):
            _need(eng, key, str, where)
        if eng.get("hardware_compat", "none") not in HARDWARE_COMPAT:
            raise BundleError(f"manifest.json: {where}hardware_compat must be one of {HARDWARE_COMPAT}")
        cc = _need(eng, "compute_capability", list, where)
        if len(cc) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in cc):
            raise BundleError(f"manifest.json: {where}compute_capability must be [major, minor], got {cc}")
        for key in ("version_compatible", "lean_runtime_excluded"):
            _optional(eng, key, bool, where)
        _optional(eng, "max_batch", int, where)
    _optional(manifest, "engines_not_built", str, "")
    _optional(manifest, "accuracy", dict, "")
    if _optional(manifest, "trust", dict, "") is not None:  # eligibility, OOD, calibration (engine/trust)
        from engine.trust.section import parse_trust

        parse_trust(manifest["trust"], variants)
    _optional(manifest, "excluded_variants", dict, "")
    _optional(manifest, "created_utc", str, "")
    _need(manifest, "provenance", dict, "")
    return manifest
