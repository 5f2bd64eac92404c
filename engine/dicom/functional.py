"""Enhanced multi-frame images (Enhanced CT / MR / XA / XRF / PET / US volume ...): the Shared and
Per-frame Functional Groups (PS3.3 C.7.6.16).

Enhanced IODs do not put Rescale Slope/Intercept, windows or Pixel Spacing at the top level of the
data set: they sit in functional group macros, once for all frames (Shared Functional Groups Sequence)
or once per frame (Per-frame Functional Groups Sequence), and a reader that looks only at the top level
treats an Enhanced CT as unscaled (HU off by the intercept, typically 1024) without any error.

Macros read here, per frame (per-frame item first, else the shared one; C.7.6.16.1: a macro is in one
of the two, never both):
- Pixel Value Transformation (0028,9145): Rescale Slope / Intercept / Type (C.7.6.16.2.9);
- Frame VOI LUT (0028,9132): Window Center / Width / Explanation, VOI LUT Function (C.7.6.16.2.10);
- Pixel Measures (0028,9110): Pixel Spacing (C.7.6.16.2.1).
They are validated by the same code as the top-level attributes, with the sequence path in messages.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from engine.dicom import lut, spacing
from engine.dicom.header import PixelModule
from engine.dicom.problems import fail
from engine.dicom.values import raw

SHARED = "SharedFunctionalGroupsSequence"
PER_FRAME = "PerFrameFunctionalGroupsSequence"
MACROS = ("PixelValueTransformationSequence", "FrameVOILUTSequence", "PixelMeasuresSequence")


def present(ds: Any, source: str) -> bool:
    return raw(ds, SHARED, source) is not None or raw(ds, PER_FRAME, source) is not None


def frame_infos(ds: Any, pm: PixelModule, info: Any, source: str, notes: list[str]) -> tuple[Any, ...] | None:
    """One ImageInfo per frame with the functional groups' rescale, VOI and spacing applied to `info`
    (frames that agree share one object), or None when the data set has no functional groups."""
    if not present(ds, source):
        return None
    shared_seq = raw(ds, SHARED, source)
    shared = shared_seq[0] if shared_seq is not None and len(shared_seq) else None
    per_frame = raw(ds, PER_FRAME, source)
    n = pm.number_of_frames
    if per_frame is not None and len(per_frame) != n:
        if any(raw(item, macro, source) is not None for item in per_frame for macro in MACROS):
            raise fail(source, PER_FRAME, f"has {len(per_frame)} items for NumberOfFrames {n} (PS3.3 C.7.6.16): "
                                          f"its per-frame rescale/VOI/spacing cannot be matched to the frames")
        notes.append(f"{PER_FRAME} has {len(per_frame)} items for NumberOfFrames {n}; none holds rescale, VOI "
                     f"or spacing: ignored")
        per_frame = None
    top = {"rescale": raw(ds, "RescaleSlope", source) is not None or raw(ds, "RescaleIntercept", source) is not None
           or raw(ds, "ModalityLUTSequence", source) is not None,
           "voi": raw(ds, "WindowCenter", source) is not None or raw(ds, "VOILUTSequence", source) is not None,
           "spacing": raw(ds, "PixelSpacing", source) is not None}
    cache: dict[tuple, Any] = {}
    out = []
    noted: set[str] = set()
    for i in range(n):
        items = {}
        for macro in MACROS:
            item, where = _macro(per_frame[i] if per_frame is not None else None, shared, macro, i, source)
            if item is not None:
                items[macro] = (item, where)
        key = tuple((m, id(items[m][0])) for m in MACROS if m in items)
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = _apply(info, pm, items, top, source, notes, noted)
        out.append(hit)
    return tuple(out)


def _macro(frame_item: Any, shared: Any, macro: str, index: int, source: str) -> tuple[Any, str]:
    for container, where in ((frame_item, f"{PER_FRAME} item {index}"), (shared, SHARED)):
        if container is None:
            continue
        seq = raw(container, macro, source)
        if seq is not None and len(seq):
            return seq[0], f"{where} > {macro}"
    return None, ""


def _apply(info: Any, pm: PixelModule, items: dict, top: dict, source: str, notes: list[str],
           noted: set[str]) -> Any:
    changes: dict[str, Any] = {}
    mlut = info.modality_lut
    if "PixelValueTransformationSequence" in items:
        item, where = items["PixelValueTransformationSequence"]
        if top["rescale"] and "rescale" not in noted:
            noted.add("rescale")
            notes.append("both top-level Rescale/Modality LUT and the functional groups' Pixel Value "
                         "Transformation present; using the functional groups (PS3.3 C.7.6.16.2.9)")
        mlut = lut.read_modality_lut(item, pm, f"{source}: {where}", notes)
        changes.update(modality_lut=mlut, value_range=lut.modality_range(pm, mlut) if pm.is_grey else info.value_range)
    if "FrameVOILUTSequence" in items:
        item, where = items["FrameVOILUTSequence"]
        if top["voi"] and "voi" not in noted:
            noted.add("voi")
            notes.append("both top-level VOI attributes and the functional groups' Frame VOI LUT present; "
                         "using the functional groups (PS3.3 C.7.6.16.2.10)")
        voi = lut.read_voi(item, pm, mlut, f"{source}: {where}", notes)
        changes.update(windows=voi.windows, voi_lut_function=voi.function, voi_luts=voi.luts)
    if "PixelMeasuresSequence" in items and not top["spacing"]:
        item, where = items["PixelMeasuresSequence"]
        pair = spacing.pixel_spacing_pair(item, f"{source}: {where}", pm.rows, pm.columns, notes)
        if pair is not None:
            group = "Shared" if where.startswith(SHARED) else "Per-frame"
            changes.update(pixel_spacing_mm=pair,
                           spacing_source=f"PixelSpacing (PixelMeasuresSequence, {group} Functional Groups)",
                           pixel_aspect_ratio=pair[0] / pair[1] if pair[1] > 0 else info.pixel_aspect_ratio)
    return dataclasses.replace(info, **changes) if changes else info
