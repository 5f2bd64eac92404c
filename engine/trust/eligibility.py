"""Is this DICOM an input the model was made for? Decided from the header alone, before inference.

The bundle states its intended inputs (manifest trust.eligibility): modalities (0008,0060),
photometric interpretations as stored (0028,0004), body parts (0018,0015) and view positions
(0018,5101) where the model's author knows them, a pixel-spacing range in mm and a Bits Stored range.
A list or range the bundle leaves out is not checked. An attribute the file lacks (no Body Part
Examined, no usable spacing) is not held against it: the header cannot say, and the OOD score still
looks at the pixels. Raw arrays carry no header and are not checked (`Result.eligibility` is None).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from engine.errors import BundleError

POLICIES = ("refuse", "flag", "off")
_LISTS = ("modalities", "photometric", "body_parts", "view_positions")
_RANGES = ("pixel_spacing_mm", "bits_stored")


def _code_string(v: Any) -> str:
    """A DICOM CS value as compared here: stripped, upper case (PS3.5 6.2: CS is upper case)."""
    return str(v).strip().upper()


@dataclass(frozen=True)
class IntendedInputs:
    """The inputs a bundle is intended for. None = not stated (not checked)."""

    modalities: tuple[str, ...] | None = None
    photometric: tuple[str, ...] | None = None
    body_parts: tuple[str, ...] | None = None
    view_positions: tuple[str, ...] | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    bits_stored: tuple[int, int] | None = None
    note: str = ""

    def check(self, info: Any, dataset: Any = None) -> tuple[str, ...]:
        """Reasons the image (engine.dicom ImageInfo + its pydicom Dataset) is outside the intended
        inputs; empty when it is inside."""
        reasons = []
        if self.modalities is not None:
            m = _code_string(info.modality)
            if m not in self.modalities:
                reasons.append(f"Modality {m or '(empty)'} is not one this model is intended for "
                               f"({', '.join(self.modalities)})")
        if self.photometric is not None:
            p = _code_string(info.source_photometric)
            if p not in self.photometric:
                reasons.append(f"PhotometricInterpretation {p} is not one of {', '.join(self.photometric)}")
        for attr, keyword, allowed in (("body_parts", "BodyPartExamined", self.body_parts),
                                       ("view_positions", "ViewPosition", self.view_positions)):
            if allowed is None or dataset is None:
                continue
            try:
                value = dataset.get(keyword)
            except Exception:  # a damaged element: the reader's job to report, not ours
                value = None
            value = _code_string(value) if value not in (None, "") else ""
            if value and value not in allowed:
                reasons.append(f"{keyword} {value} is not one of {', '.join(allowed)}")
        if self.pixel_spacing_mm is not None and info.pixel_spacing_mm is not None:
            lo, hi = self.pixel_spacing_mm
            row, col = info.pixel_spacing_mm
            if not (lo <= row <= hi and lo <= col <= hi):
                reasons.append(f"pixel spacing {row:.4g} x {col:.4g} mm ({info.spacing_source}) is outside "
                               f"[{lo:.4g}, {hi:.4g}] mm")
        if self.bits_stored is not None:
            lo, hi = self.bits_stored
            if not lo <= int(info.bits_stored) <= hi:
                want = f"{lo}" if lo == hi else f"{lo} to {hi}"
                reasons.append(f"BitsStored {info.bits_stored} is not {want} (the bit depth the model's "
                               f"preprocessing was made for)")
        return tuple(reasons)

    def describe(self) -> str:
        parts = []
        for name in _LISTS:
            v = getattr(self, name)
            if v is not None:
                parts.append(f"{name} {', '.join(v)}")
        if self.pixel_spacing_mm is not None:
            parts.append(f"pixel spacing {self.pixel_spacing_mm[0]:g}-{self.pixel_spacing_mm[1]:g} mm")
        if self.bits_stored is not None:
            parts.append(f"bits stored {self.bits_stored[0]}-{self.bits_stored[1]}")
        return "; ".join(parts) or "nothing stated"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: (list(getattr(self, k)) if getattr(self, k) is not None else None)
                             for k in _LISTS + _RANGES}
        d["note"] = self.note
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "trust.eligibility") -> IntendedInputs:
        """Parse the manifest section (untrusted): BundleError naming the field."""
        if not isinstance(d, dict):
            raise BundleError(f"manifest.json: {where} must be an object")
        unknown = set(d) - set(_LISTS) - set(_RANGES) - {"note"}
        if unknown:
            raise BundleError(f"manifest.json: {where} has unknown fields {sorted(unknown)}")
        kw: dict[str, Any] = {}
        for name in _LISTS:
            v = d.get(name)
            if v is None:
                continue
            if not isinstance(v, list) or not v or len(v) > 64 or not all(isinstance(x, str) and x.strip()
                                                                            for x in v):
                raise BundleError(f"manifest.json: {where}.{name} must be a non-empty list of strings, got {v!r}")
            kw[name] = tuple(_code_string(x) for x in v)
        sp = d.get("pixel_spacing_mm")
        if sp is not None:
            if (not isinstance(sp, list) or len(sp) != 2 or
                    not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in sp)
                    or not 0 < sp[0] <= sp[1]):
                raise BundleError(f"manifest.json: {where}.pixel_spacing_mm must be [low, high] mm with "
                                  f"0 < low <= high, got {sp!r}")
            kw["pixel_spacing_mm"] = (float(sp[0]), float(sp[1]))
        bits = d.get("bits_stored")
        if bits is not None:
            if (not isinstance(bits, list) or len(bits) != 2 or
                    not all(isinstance(x, int) and not isinstance(x, bool) for x in bits)
                    or not 1 <= bits[0] <= bits[1] <= 64):
                raise BundleError(f"manifest.json: {where}.bits_stored must be [low, high] integers in 1..64, "
                                  f"got {bits!r}")
            kw["bits_stored"] = (bits[0], bits[1])
        note = d.get("note", "")
        if not isinstance(note, str):
            raise BundleError(f"manifest.json: {where}.note must be a string")
        return cls(note=note, **kw)


__all__ = ["IntendedInputs", "POLICIES"]
