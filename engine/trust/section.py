"""The manifest's `trust` section (schema 1): parsed strictly, since a bundle is untrusted input.

    trust.schema        1
    trust.eligibility   intended inputs (engine.trust.eligibility.IntendedInputs) or null
    trust.outputs       {"features": name, "cam": name} extra model outputs (classifiers), or {}
    trust.variants.<v>  {"temperature": T or null, "ood": OODModel or null}
    trust.report        what the fit measured (false alarms, detection, AUROC, ECE); shown, never executed
    trust.data          which splits and how many slices each number came from
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.errors import BundleError
from engine.trust.calibration import temperature_from_manifest
from engine.trust.eligibility import IntendedInputs
from engine.trust.ood import OODModel

SCHEMA = 1


@dataclass
class TrustSection:
    eligibility: IntendedInputs | None
    outputs: dict[str, str]
    temperature: dict[str, float] = field(default_factory=dict)
    ood: dict[str, OODModel] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


def parse_trust(trust: Any, variants: Any = None) -> TrustSection:
    """TrustSection from manifest["trust"]; BundleError naming the first bad field."""
    if not isinstance(trust, dict):
        raise BundleError("manifest.json: trust must be an object")
    if trust.get("schema") != SCHEMA:
        raise BundleError(f"manifest.json: trust.schema must be {SCHEMA}, got {trust.get('schema')!r}; "
                          f"upgrade SliceRT or rebuild the bundle")
    elig = trust.get("eligibility")
    eligibility = IntendedInputs.from_dict(elig) if elig is not None else None
    outputs = trust.get("outputs") or {}
    if not isinstance(outputs, dict) or set(outputs) - {"features", "cam"} or \
            not all(isinstance(v, str) and v for v in outputs.values()):
        raise BundleError(f"manifest.json: trust.outputs must map 'features'/'cam' to output names, got {outputs!r}")
    section = TrustSection(eligibility, dict(outputs))
    per_variant = trust.get("variants") or {}
    if not isinstance(per_variant, dict):
        raise BundleError("manifest.json: trust.variants must be an object")
    for v, entry in per_variant.items():
        where = f"trust.variants.{v}"
        if variants is not None and v not in variants:
            raise BundleError(f"manifest.json: {where} names a variant the bundle does not hold")
        if not isinstance(entry, dict):
            raise BundleError(f"manifest.json: {where} must be an object")
        section.temperature[v] = temperature_from_manifest(entry.get("temperature"), f"{where}.temperature")
        if entry.get("ood") is not None:
            model = OODModel.from_dict(entry["ood"], f"{where}.ood")
            if model.mahalanobis is not None and "features" not in outputs:
                raise BundleError(f"manifest.json: {where}.ood uses Mahalanobis features but trust.outputs names no "
                                  f"features output")
            section.ood[v] = model
    for key in ("report", "data"):
        value = trust.get(key) or {}
        if not isinstance(value, dict):
            raise BundleError(f"manifest.json: trust.{key} must be an object")
        setattr(section, key, value)
    return section


__all__ = ["TrustSection", "parse_trust", "SCHEMA"]
