"""Modality LUT (PS3.3 C.11.1) and VOI LUT (C.11.2) modules: parse and validate, never apply.

Applying them is the native kernel's job (engine.preprocess); this module turns the header into the
numbers the kernel's PreprocessSpec needs and refuses values the standard forbids.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.dicom.header import PixelModule
from engine.dicom.problems import fail
from engine.dicom.values import get_float, get_floats, get_str, get_strs, raw

VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
# The kernel computes in float32 (max ~3.4e38); values near that overflow to inf in intermediate
# steps such as c - w/2, and inf - inf is NaN. Nothing physical comes close to this bound.
FLOAT32_SAFE = 1e30


@dataclass(frozen=True)
class Window:
    """One VOI window (PS3.3 C.11.2.1.2), in modality output units (e.g. HU)."""

    center: float
    width: float
    explanation: str = ""


@dataclass(frozen=True, eq=False)
class LookupTable:
    """A Modality or VOI LUT (PS3.3 C.11.1.1.1 / C.11.2.1.1).

    `table[i]` is the output for input value `first_mapped + i`; inputs below/above the table map to
    the first/last entry. Entries lie in [0, 2**bits - 1].
    """

    table: np.ndarray = field(repr=False)
    first_mapped: int
    bits: int
    explanation: str = ""

    @property
    def max_value(self) -> int:
        return (1 << self.bits) - 1


@dataclass(frozen=True, eq=False)
class ModalityLUT:
    """Stored value -> modality output (PS3.3 C.11.1): identity, rescale, or a LUT table."""

    kind: str  # "identity" | "rescale" | "table"
    slope: float = 1.0
    intercept: float = 0.0
    lut: LookupTable | None = None
    rescale_type: str = ""  # e.g. "HU", "US" (unspecified), "OD"


def read_modality_lut(ds: Any, pm: PixelModule, source: str, notes: list[str]) -> ModalityLUT:
    if not pm.is_grey:
        # C.11.1: the Modality LUT applies to greyscale images only.
        return ModalityLUT("identity")
    seq = raw(ds, "ModalityLUTSequence", source)
    has_slope = raw(ds, "RescaleSlope", source) is not None
    has_intercept = raw(ds, "RescaleIntercept", source) is not None
    if seq is not None:
        if has_slope or has_intercept:
            # C.11.1: the two are mutually exclusive; the LUT is the more specific description.
            notes.append("both ModalityLUTSequence and RescaleSlope/Intercept present; using the LUT")
        item = seq[0]
        lut = read_lut(item, ds, pm, source, "ModalityLUTSequence", signed_input=pm.pixel_representation == 1)
        return ModalityLUT("table", lut=lut, rescale_type=get_str(item, "ModalityLUTType", source, "") or "")
    if not (has_slope or has_intercept):
        return ModalityLUT("identity")
    if has_slope != has_intercept:
        notes.append("only one of RescaleSlope/RescaleIntercept present; using 1/0 for the missing one")
    slope = get_float(ds, "RescaleSlope", source, default=1.0)
    intercept = get_float(ds, "RescaleIntercept", source, default=0.0)
    if slope == 0:
        raise fail(source, "RescaleSlope", "must be non-zero (PS3.3 C.11.1.1.2)")
    if np.float32(slope) == 0:
        raise fail(source, "RescaleSlope", f"{slope:g} is 0 in float32, the precision the kernel computes in")
    kind = "identity" if (slope == 1.0 and intercept == 0.0) else "rescale"
    mlut = ModalityLUT(kind, slope, intercept, None, get_str(ds, "RescaleType", source, "") or "")
    lo, hi = modality_range(pm, mlut)
    if not max(abs(lo), abs(hi)) < FLOAT32_SAFE:
        raise fail(source, "RescaleSlope", f"slope {slope:g} / intercept {intercept:g} map stored values to "
                                           f"[{lo:g}, {hi:g}], beyond what float32 processing can represent")
    return mlut


def stored_range(pm: PixelModule) -> tuple[int, int]:
    """Range of stored values from BitsStored and PixelRepresentation (PS3.5 8.1.1)."""
    if pm.pixel_representation == 1:
        return -(1 << (pm.bits_stored - 1)), (1 << (pm.bits_stored - 1)) - 1
    return 0, (1 << pm.bits_stored) - 1


def modality_range(pm: PixelModule, mlut: ModalityLUT) -> tuple[float, float]:
    """Range of the modality LUT output: the domain the VOI transform works in."""
    lo, hi = stored_range(pm)
    if mlut.kind == "table":
        assert mlut.lut is not None
        return 0.0, float(mlut.lut.max_value)  # C.11.1.1.1: LUT output is unsigned, 2^bits values
    a, b = lo * mlut.slope + mlut.intercept, hi * mlut.slope + mlut.intercept
    return (min(a, b), max(a, b))


@dataclass(frozen=True)
class VOIModule:
    windows: tuple[Window, ...]
    function: str  # LINEAR | LINEAR_EXACT | SIGMOID
    luts: tuple[LookupTable, ...]


def read_voi(ds: Any, pm: PixelModule, mlut: ModalityLUT, source: str, notes: list[str]) -> VOIModule:
    if not pm.is_grey:
        if raw(ds, "WindowCenter", source) is not None or raw(ds, "VOILUTSequence", source) is not None:
            notes.append(f"VOI window/LUT ignored: it applies to greyscale only, image is {pm.photometric}")
        return VOIModule((), "LINEAR", ())
    function = (get_str(ds, "VOILUTFunction", source) or "LINEAR").upper()
    if function not in VOI_FUNCTIONS:
        raise fail(source, "VOILUTFunction", f"{function!r} is not one of {VOI_FUNCTIONS} (PS3.3 C.11.2.1.3)")
    centers = get_floats(ds, "WindowCenter", source)
    widths = get_floats(ds, "WindowWidth", source)
    windows: list[Window] = []
    if centers is not None or widths is not None:
        if centers is None or widths is None:
            missing = "WindowWidth" if widths is None else "WindowCenter"
            raise fail(source, missing, "WindowCenter and WindowWidth must be present together (PS3.3 C.11.2)")
        if len(centers) != len(widths):
            raise fail(source, "WindowWidth", f"{len(widths)} value(s) but WindowCenter has {len(centers)}")
        explanations = get_strs(ds, "WindowCenterWidthExplanation", source)
        for i, (c, w) in enumerate(zip(centers, widths)):
            for keyword, value in (("WindowCenter", c), ("WindowWidth", w)):
                if not abs(value) < FLOAT32_SAFE:
                    raise fail(source, keyword, f"value {i} is {value:g}, beyond float32 processing range")
            # C.11.2.1.2.1: width >= 1 for LINEAR; C.11.2.1.3.2: > 0 for LINEAR_EXACT. SIGMOID has no
            # explicit bound in the standard; the kernel spec requires >= 1 as for LINEAR.
            # LINEAR_EXACT: > 0 in float32, the kernel's precision (1e-46 is positive in float64, 0 in
            # float32, and a 0 width makes the ramp 0/0 = NaN), and not narrower than 1e-30.
            bad = not float(np.float32(w)) >= 1e-30 if function == "LINEAR_EXACT" else w < 1
            if bad and function == "LINEAR_EXACT":
                raise fail(source, "WindowWidth", f"value {i} is {w:g}; must be > 0 for LINEAR_EXACT (PS3.3 "
                                                  f"C.11.2.1.3.2), and >= 1e-30 to stay > 0 with a finite ramp "
                                                  f"in float32, the kernel's precision")
            if bad:
                raise fail(source, "WindowWidth", f"value {i} is {w:g}; must be >= 1 for {function} "
                                                  f"(PS3.3 C.11.2.1.2)")
            windows.append(Window(c, w, explanations[i] if i < len(explanations) else ""))
    luts: list[LookupTable] = []
    seq = raw(ds, "VOILUTSequence", source)
    if seq is not None:
        # The VOI LUT input is the modality output: signed only when that can be negative.
        lo, _ = modality_range(pm, mlut)
        for item in seq:
            luts.append(read_lut(item, ds, pm, source, "VOILUTSequence", signed_input=lo < 0))
    return VOIModule(tuple(windows), function, tuple(luts))


def read_lut(item: Any, ds: Any, pm: PixelModule, source: str, seq_keyword: str, *,
             signed_input: bool) -> LookupTable:
    where = f"{seq_keyword} > "
    desc = get_floats(item, "LUTDescriptor", source)
    if desc is None or len(desc) != 3:
        raise fail(source, "LUTDescriptor", f"{where}must have 3 values, got {desc!r}")
    n_entries, first, bits = (int(v) for v in desc)
    n_entries = n_entries or 65536  # C.11.1.1.1: 0 means 2^16 entries
    if not 0 < n_entries <= 65536:
        raise fail(source, "LUTDescriptor", f"{where}number of entries {n_entries} out of range")
    if not 1 <= bits <= 16:
        raise fail(source, "LUTDescriptor", f"{where}bits per entry {bits} must be in [1, 16]")
    # C.11.1.1.1: the first mapped value is US or SS depending on whether the input is signed. Many
    # writers encode it as US regardless, so reinterpret the 16-bit pattern when the input is signed.
    if signed_input and first >= 32768:
        first -= 65536
    elem_value = raw(item, "LUTData", source)
    if elem_value is None:
        raise fail(source, "LUTData", f"{where}missing")
    if isinstance(elem_value, (bytes, bytearray)):
        little = pm.little_endian
        nbytes = len(elem_value)
        if nbytes in (2 * n_entries, 2 * n_entries + 2):
            table = np.frombuffer(elem_value, dtype="<u2" if little else ">u2")[:n_entries]
        elif nbytes in (n_entries, n_entries + 1) and bits <= 8:
            table = np.frombuffer(elem_value, dtype=np.uint8)[:n_entries]
        else:
            raise fail(source, "LUTData", f"{where}holds {nbytes} bytes, LUTDescriptor needs {n_entries} entries")
    else:
        values = list(elem_value) if hasattr(elem_value, "__len__") else [elem_value]
        if len(values) < n_entries:
            raise fail(source, "LUTData", f"{where}holds {len(values)} entries, LUTDescriptor says {n_entries}")
        table = np.asarray(values[:n_entries], dtype=np.int64)
        if table.min() < 0 or table.max() > 65535:
            raise fail(source, "LUTData", f"{where}entries must be in [0, 65535]")
    table = np.ascontiguousarray(table, dtype=np.uint16)
    top = int(table.max())
    if top > (1 << bits) - 1:
        # Seen in the wild: 8-bit descriptors with 16-bit data. Trust the data, as DCMTK does, since
        # clipping would flatten the curve.
        bits = max(bits, math.ceil(math.log2(top + 1)))
    table.setflags(write=False)
    explanation = get_str(item, "LUTExplanation", source, "") or ""
    return LookupTable(table, first, bits, explanation)
