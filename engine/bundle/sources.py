"""Find what `slicert build` packs: ONNX variants, the model.json sidecar and the accuracy report.

Accepted sources (TEAM contracts 5 and 6):
  * a model file `model.onnx` (or `model.<variant>.onnx`) with `model.json` next to it, or `--meta`;
  * a toolchain export folder: `model.onnx` + `model.json`;
  * a quantizer output folder: `model.fp16.onnx`, `model.int8.onnx`, `model.mixed.onnx`,
    `accuracy_report.json` (+ `model.onnx`/`model.json` there, or found through the report or `--meta`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.bundle import format as fmt
from engine.errors import InputError
from engine.spec import PreprocessSpec

_VARIANT_FILES = {"fp32": ("model.fp32.onnx", "model.onnx"), "fp16": ("model.fp16.onnx",),
                  "int8": ("model.int8.onnx",), "mixed": ("model.mixed.onnx",)}
# The quantizer writes two Q/DQ forms of one calibration (contract 6): model.<v>.onnx follows
# TensorRT's explicit-quantization rules (INT8 activations, zero point 0); model.<v>.ort.onnx is the
# ONNX Runtime CPU form (UINT8 activations, integer kernels). The CPU backend runs the latter.
_CPU_FORM_FILES = {"int8": "model.int8.ort.onnx", "mixed": "model.mixed.ort.onnx"}
# OpenVINO's own INT8 form (tools/quantize/openvino_forms.py): NNCF IR, topology + weights.
_OPENVINO_FILES = {"int8": ("model.int8.openvino.xml", "model.int8.openvino.bin")}
_REPORT_NAMES = ("accuracy_report.json",)
# Keys under which a quantizer report may point back at the export it started from.
_REPORT_EXPORT_KEYS = ("export_dir", "source_dir", "source", "model_dir")


@dataclass
class ModelSource:
    """Resolved inputs of one bundle build."""

    onnx: dict[str, Path]  # variant -> ONNX file (TensorRT form for quantized variants)
    onnx_cpu: dict[str, Path]  # variant -> ONNX Runtime CPU form, where the quantizer wrote a separate one
    meta: dict[str, Any]  # the model.json sidecar
    meta_path: Path | None
    accuracy_report: dict[str, Any] | None = None
    accuracy_report_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    openvino: dict[str, tuple[Path, Path]] = field(default_factory=dict)  # variant -> OpenVINO IR (.xml, .bin)

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.meta["preprocess"])


def _load_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {what} {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"{what} {path} must hold a JSON object")
    return data


def validate_meta(meta: dict[str, Any], where: str) -> dict[str, Any]:
    """Check the model.json fields the bundle needs (contract 5); raises InputError naming the field."""
    for key, typ in (("name", str), ("task", str), ("labels", list), ("preprocess", dict)):
        if key not in meta:
            raise InputError(f"{where}: missing field {key!r} (model.json contract: name, task, labels, preprocess, "
                             f"voi_policy)")
        if not isinstance(meta[key], typ):
            raise InputError(f"{where}: field {key!r} must be a {typ.__name__}")
    if meta["task"] not in fmt.TASKS:
        raise InputError(f"{where}: task must be one of {fmt.TASKS}, got {meta['task']!r}")
    if not meta["labels"] or not all(isinstance(x, str) and x for x in meta["labels"]):
        raise InputError(f"{where}: labels must be a non-empty list of non-empty strings")
    if len(set(meta["labels"])) != len(meta["labels"]):
        raise InputError(f"{where}: labels must be unique, got {meta['labels']}")
    voi = meta.setdefault("voi_policy", "dicom")
    if voi not in fmt.VOI_POLICIES:
        raise InputError(f"{where}: voi_policy must be one of {fmt.VOI_POLICIES}, got {voi!r}")
    try:
        PreprocessSpec.from_dict(meta["preprocess"])
    except InputError as exc:
        raise InputError(f"{where}: field 'preprocess': {exc}") from exc
    return meta


def _variants_in(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for variant, names in _VARIANT_FILES.items():
        for name in names:
            if (folder / name).is_file():
                found[variant] = folder / name
                break
    return found


def _cpu_forms_in(folder: Path) -> dict[str, Path]:
    return {v: folder / name for v, name in _CPU_FORM_FILES.items() if (folder / name).is_file()}


def _export_dir_from_report(report: dict[str, Any], base: Path) -> Path | None:
    for key in _REPORT_EXPORT_KEYS:
        value = report.get(key)
        if isinstance(value, str):
            p = Path(value)
            p = p if p.is_absolute() else base / p
            if p.is_file():
                p = p.parent
            if (p / "model.json").is_file():
                return p
    return None


def resolve_source(source: str | Path, meta: str | Path | None = None) -> ModelSource:
    """Turn a model file or folder into the variants, metadata and report to bundle."""
    src = Path(source)
    notes: list[str] = []
    report: dict[str, Any] | None = None
    report_path: Path | None = None
    openvino: dict[str, tuple[Path, Path]] = {}
    if src.is_file():
        if src.suffix != ".onnx":
            raise InputError(f"{src}: expected an .onnx model or a toolchain/quantizer output folder")
        variant = next((v for v, names in _VARIANT_FILES.items() if src.name in names), "fp32")
        onnx = {variant: src}
        onnx_cpu: dict[str, Path] = {}
        folder = src.parent
        candidates = [folder / "model.json", src.with_suffix(".json")]
    elif src.is_dir():
        folder = src
        onnx = _variants_in(folder)
        onnx_cpu = {}
        for v, p in _cpu_forms_in(folder).items():
            if v in onnx:
                onnx_cpu[v] = p
            else:
                onnx[v] = p
                notes.append(f"{v}: only the ONNX Runtime form {p.name} exists; a TensorRT engine would need "
                             f"model.{v}.onnx (TensorRT's Q/DQ rules)")
        openvino = {v: (folder / x, folder / b) for v, (x, b) in _OPENVINO_FILES.items()
                    if (folder / x).is_file() and (folder / b).is_file()}
        for name in _REPORT_NAMES:
            if (folder / name).is_file():
                report_path = folder / name
                report = _load_json(report_path, "accuracy report")
        candidates = [folder / "model.json"]
        if report is not None:
            export = _export_dir_from_report(report, folder)
            if export is not None:
                candidates.append(export / "model.json")
        candidates.append(folder.parent / "model.json")
    else:
        raise InputError(f"{src} does not exist (give model.onnx, an export folder or a quantize folder)")

    if meta is not None:
        meta_path: Path | None = Path(meta)
        if not meta_path.is_file():
            raise InputError(f"--meta {meta_path} does not exist")
    else:
        meta_path = next((c for c in candidates if c.is_file()), None)
        if meta_path is None:
            raise InputError(f"no model.json found for {src} (looked at {', '.join(str(c) for c in candidates)}); "
                             f"pass --meta PATH (the sidecar `slicert export` writes: name, task, labels, "
                             f"preprocess, voi_policy)")
    meta_dict = validate_meta(_load_json(meta_path, "model.json"), str(meta_path))

    if "fp32" not in onnx and meta_path.parent != folder:
        # A quantizer folder may hold only the reduced-precision models; the FP32 reference is in the export.
        fp32 = _variants_in(meta_path.parent).get("fp32")
        if fp32 is not None:
            onnx["fp32"] = fp32
            notes.append(f"FP32 model taken from {fp32}")
    if not onnx:
        raise InputError(f"no ONNX model in {src} (expected one of "
                         f"{sorted({n for names in _VARIANT_FILES.values() for n in names})})")
    if report is not None and report_path is not None:
        _check_report_describes(report, report_path, [*onnx.values(), *onnx_cpu.values(),
                                                      *(x for x, _ in openvino.values())], notes)
        _check_weights_described(report, openvino)
    return ModelSource(onnx=onnx, onnx_cpu=onnx_cpu, meta=meta_dict, meta_path=meta_path, accuracy_report=report,
                       accuracy_report_path=report_path, notes=notes, openvino=openvino)


def _check_weights_described(report: dict[str, Any], openvino: dict[str, tuple[Path, Path]]) -> None:
    """An IR's .bin must be the weights the quantizer gated with its .xml (variants.<v>_ov.weights_sha256)."""
    variants = report.get("variants") if isinstance(report.get("variants"), dict) else {}
    for v, (_xml, weights) in openvino.items():
        entry = variants.get(f"{v}_ov")
        expected = entry.get("weights_sha256") if isinstance(entry, dict) else None
        if isinstance(expected, str) and _sha256(weights) != expected.lower():
            raise InputError(f"{weights} is not the weights file the accuracy report gated (variants.{v}_ov."
                             f"weights_sha256 {expected[:16]}...); rerun `slicert quantize --force` on this folder")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_report_describes(report: dict[str, Any], report_path: Path, files: list[Path], notes: list[str]) -> None:
    """Refuse a model file that is not the one the accuracy report gated.

    The gate verdicts bundled with each variant come from the report, so they are only true for the
    exact bytes the quantizer measured; it records them as variants.<name>.sha256 next to .file. A
    file that differs (a forced re-run interrupted after writing some models, a hand-copied model)
    would be shipped with another model's verdict.
    """
    variants = report.get("variants")
    if not isinstance(variants, dict):
        return
    recorded = {entry["file"]: (name, entry.get("sha256")) for name, entry in variants.items()
                if isinstance(entry, dict) and isinstance(entry.get("file"), str)}
    for path in files:
        if path.parent.resolve() != report_path.parent.resolve() or path.name not in recorded:
            continue
        name, expected = recorded[path.name]
        if not isinstance(expected, str):
            notes.append(f"{path.name}: the accuracy report records no sha256 for {name}; not verified")
            continue
        actual = _sha256(path)
        if actual != expected.lower():
            raise InputError(f"{path} is not the model that {report_path.name} gated (variants.{name}.sha256 "
                             f"{expected[:16]}..., file has {actual[:16]}...); the report is stale, e.g. from an "
                             f"interrupted `slicert quantize --force`: rerun `slicert quantize --force` on this "
                             f"folder")


def gate_status(report: dict[str, Any] | None, variant: str, form: str = "tensorrt") -> tuple[bool | None, str]:
    """(passed, detail) of a variant's accuracy gate in the quantizer's report; None when not stated.

    FP32 is the reference and always passes. Report fields read (contract 6, tools/quantize):
    variants.<name>.passed (bool), .accepted_loss (bool), .reason (str); the ONNX Runtime CPU form of a
    quantized variant is reported as variants.<name>_ort, its OpenVINO form (and bf16) as variants.<name>_ov.
    """
    if variant == "fp32":
        return True, "reference model"
    if report is None:
        return None, "no accuracy report given"
    key = {"onnxruntime": f"{variant}_ort", "openvino": f"{variant}_ov"}.get(form, variant)
    variants = report.get("variants") if isinstance(report.get("variants"), dict) else {}
    entry = variants.get(key)
    if not isinstance(entry, dict):
        return None, f"accuracy report has no entry for {key}"
    passed = entry.get("passed", entry.get("gate_passed"))
    if isinstance(passed, bool):
        accepted = bool(entry.get("accepted_loss", False))
        reason = str(entry.get("reason", ""))
        if not passed and accepted:
            return True, f"outside budget, loss accepted by the user ({reason})".rstrip(" ()")
        return passed, reason or ("within budget" if passed else "outside budget")
    return None, f"accuracy report entry for {key} states no pass/fail"
