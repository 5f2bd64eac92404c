"""Build time: pick up the toolchain's `trust.json` (tools/trust_fit.py) and prepare the bundle's
manifest `trust` section and the variants' extra ONNX outputs.

`trust.json` sits next to the quantizer's accuracy report (or model.json). It records the SHA-256 of each
model file it was fitted on; a file that differs (a re-quantized variant, a hand-copied model) is
refused, because its temperature, features and thresholds belong to other weights.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from engine.errors import InputError

TRUST_FILE = "trust.json"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class TrustBuild:
    """What build_bundle needs: `extend(variant, onnx_bytes, entry)` and the manifest `section`."""

    def __init__(self, section: dict[str, Any] | None, path: Path | None):
        self.section = section
        self.path = path
        self._outputs = bool(section and section.get("outputs"))

    def extend(self, variant: str, onnx_bytes: bytes, entry: dict[str, Any]) -> bytes:
        """The variant's model with the trust outputs added (verified not to move the original output);
        unchanged when the bundle carries no trust outputs."""
        if not self._outputs:
            return onnx_bytes
        from engine.trust.graph import add_trust_outputs, verify_unchanged

        extended = add_trust_outputs(onnx_bytes)
        if extended is None:
            raise InputError(f"{self.path}: names trust outputs, but the {variant} model's classifier tail "
                             f"(GlobalAveragePool -> Gemm) is not recognized; refit with tools/trust_fit.py")
        try:
            err = verify_unchanged(onnx_bytes, extended)
        except ValueError as exc:
            raise InputError(f"{variant} model: {exc}") from None
        # Recorded per variant (both forms): the extra outputs moved the model's own output by this much.
        entry["trust_outputs_max_abs_change"] = max(err, entry.get("trust_outputs_max_abs_change", 0.0))
        return extended


def prepare_trust(src, variants: list[str]) -> TrustBuild:
    """TrustBuild for a resolved ModelSource (engine.bundle.sources) and the variants being bundled."""
    folders = []
    if src.accuracy_report_path is not None:
        folders.append(src.accuracy_report_path.parent)
    folders += [p.parent for p in src.onnx.values()]
    if src.meta_path is not None:
        folders.append(src.meta_path.parent)
    path = next((f / TRUST_FILE for f in dict.fromkeys(folders) if (f / TRUST_FILE).is_file()), None)
    if path is None:
        return TrustBuild(None, None)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("variants"), dict):
        raise InputError(f"{path}: not a SliceRT trust file (no 'variants' object)")
    section = copy.deepcopy(data)
    fitted = section.pop("fitted_files", {}) or {}
    per_variant = {}
    for v in variants:
        entry = section["variants"].get(v)
        if entry is None:
            continue
        for form, files in (("onnx", src.onnx), ("onnx_cpu", src.onnx_cpu)):
            want = (fitted.get(v) or {}).get(form)
            if v in files and want is not None and _sha256(files[v]) != want:
                raise InputError(f"{files[v]} is not the model {path.name} was fitted on (sha256 differs); rerun "
                                 f"`python -m tools.trust_fit` for this folder")
        per_variant[v] = entry
    section["variants"] = per_variant
    from engine.errors import BundleError
    from engine.trust.section import parse_trust

    try:
        parse_trust(section, variants)
    except BundleError as exc:
        raise InputError(f"{path}: {exc}") from None
    return TrustBuild(section, path)


__all__ = ["TrustBuild", "prepare_trust", "TRUST_FILE"]
