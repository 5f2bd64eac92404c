"""The `.slicert` bundle format: one zip file, every member stored (not deflated), a manifest.

Why a zip: every platform can list and extract it with standard tools, the central directory gives
random access, and with ZIP_STORED members the ONNX model and TensorRT plan bytes sit in the file
verbatim. The writer pads each member's local header (an "extra" field, like Android's zipalign) so
member data starts on a 4 KiB boundary: the reader maps the file and hands TensorRT a zero-copy view
of the plan.

Layout (schema version 1):
    manifest.json                                  this schema; sha256 + size of every other member
    onnx/model.<variant>.onnx                      variant in VARIANTS (TensorRT Q/DQ form when quantized)
    onnx/model.<variant>.cpu.onnx                  ONNX Runtime CPU Q/DQ form of a quantized variant
    ort/model.<variant>.ort.onnx                   the CPU model optimized offline (ORT_ENABLE_ALL)
    engines/trt-<major.minor>/<key>.<variant>.plan key = sm_<cc> | ampere+ (hardware-compatible)
    engines/trt-<major.minor>/<key>.<variant>.timing.cache | .build.log | .layers.json
    reports/accuracy_report.json                   the quantizer's report, verbatim (when given)

The SHA-256 digests give integrity (accidental corruption, truncation, edits), not authenticity: a
party able to rewrite the file can rewrite the manifest too. Sign the bundle out of band if needed.
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
ALIGNMENT = 4096  # member data alignment in bytes (one page: mmap views need no copy)

TASKS = ("classification", "segmentation")
VARIANTS = ("fp32", "fp16", "int8", "mixed")
POSTPROCESS = {"classification": ("softmax", "sigmoid", "identity"), "segmentation": ("argmax",)}
VOI_POLICIES = ("dicom", "model")
HARDWARE_COMPAT = ("none", "ampere+", "same-cc")

# Preference order when the caller asks for precision="best". A variant that failed its accuracy gate
# is never picked. On CPU, FP16 is last: ONNX Runtime's CPU provider runs most FP16 ops through casts.
BEST_ORDER = {"tensorrt": ("int8", "mixed", "fp16", "fp32"), "onnxruntime": ("int8", "mixed", "fp32", "fp16")}

_MEMBER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+\-]*(/[A-Za-z0-9][A-Za-z0-9._+\-]*)*$")


def onnx_member(variant: str) -> str:
    return f"onnx/model.{variant}.onnx"


def onnx_cpu_member(variant: str) -> str:
    """The ONNX Runtime CPU form of a quantized variant (UINT8 activations), when it differs."""
    return f"onnx/model.{variant}.cpu.onnx"


def ort_member(variant: str) -> str:
    return f"ort/model.{variant}.ort.onnx"


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
        raise BundleError(f"manifest.json: missing field {where}{key!r}")
    value = obj[key]
    allowed = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise BundleError(f"manifest.json: field {where}{key!r} has type {type(value).__name__}, "
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


def validate_manifest(manifest: Any) -> dict[str, Any]:
    """Check the manifest's structure; raises BundleError naming the first bad field."""
    check_schema_version(manifest)
    model = _need(manifest, "model", dict, "")
    task = _need(model, "task", str, "model.")
    if task not in TASKS:
        raise BundleError(f"manifest.json: model.task must be one of {TASKS}, got {task!r}")
    _need(model, "name", str, "model.")
    labels = _need(model, "labels", list, "model.")
    if not labels or not all(isinstance(x, str) for x in labels):
        raise BundleError("manifest.json: model.labels must be a non-empty list of strings")

    inp = _need(manifest, "input", dict, "")
    _need(inp, "name", str, "input.")
    shape = _need(inp, "shape", list, "input.")
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        raise BundleError(f"manifest.json: input.shape must be [N, C, H, W] or [N, H, W, C], got {shape}")
    _need(inp, "dtype", str, "input.")

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
        _need(entry, "size", int, f"members[{name!r}].")

    variants = _need(manifest, "variants", dict, "")
    if not variants:
        raise BundleError("manifest.json: the bundle holds no model variant")
    for variant, entry in variants.items():
        if variant not in VARIANTS:
            raise BundleError(f"manifest.json: unknown variant {variant!r} (known: {VARIANTS})")
        for key in ("onnx", "onnx_cpu", "ort"):
            member = entry.get(key) if isinstance(entry, dict) else None
            if member is not None and member not in members:
                raise BundleError(f"manifest.json: variants.{variant}.{key} names {member!r}, "
                                  f"which has no entry in members")
        _need(entry, "onnx", str, f"variants.{variant}.")
    for i, eng in enumerate(_need(manifest, "engines", list, "")):
        for key in ("plan", "variant", "trt_version"):
            _need(eng, key, str, f"engines[{i}].")
        if eng["plan"] not in members:
            raise BundleError(f"manifest.json: engines[{i}].plan names {eng['plan']!r}, which has no entry in members")
        if eng.get("hardware_compat", "none") not in HARDWARE_COMPAT:
            raise BundleError(f"manifest.json: engines[{i}].hardware_compat must be one of {HARDWARE_COMPAT}")
    _need(manifest, "provenance", dict, "")
    return manifest
