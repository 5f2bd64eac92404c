"""Physical geometry: pixel spacing (with the projection-radiography rules), ultrasound region
calibration, pixel aspect ratio and frame timing.

Areas in mm² are only as right as the spacing behind them, so the rule that picked the spacing is
returned with it (`spacing_source`) and shown to the user.

Projection radiography (PS3.3 10.7.1.1-10.7.1.3, C.8.11.7 DX Detector, C.8.11.4 / C.8.7.x):
- Imager Pixel Spacing (0018,1164) is measured at the front plane of the detector. Objects in the
  patient are magnified by the diverging beam, so it overstates sizes in the patient.
- Pixel Spacing (0028,0030) in a projection image means spacing calibrated to the patient plane
  (by geometry or by a fiducial, Pixel Spacing Calibration Type (0028,0A02)). Writers that simply
  copy Imager Pixel Spacing into Pixel Spacing are common; equal values mean "not calibrated".
- Estimated Radiographic Magnification Factor (0018,1114) corrects the detector spacing to the
  isocenter: spacing_patient = ImagerPixelSpacing / ERMF.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from engine.dicom.values import get_float, get_floats, get_int, get_str, raw
from engine.errors import DicomError

# Modalities that are projection radiographs: Pixel Spacing means "calibrated at the patient".
PROJECTION_MODALITIES = frozenset({"CR", "DX", "MG", "IO", "PX", "RG", "XA", "RF", "DF"})

# PS3.3 C.8.5.5.1.15 Physical Units X/Y Direction.
US_UNITS = {0: "none", 1: "percent", 2: "dB", 3: "cm", 4: "seconds", 5: "hertz", 6: "dB/seconds",
            7: "cm/sec", 8: "cm2", 9: "cm2/sec", 10: "cm3", 11: "cm3/sec", 12: "degrees"}
# PS3.3 C.8.5.5.1.1 Region Spatial Format.
US_SPATIAL_FORMAT = {0: "none", 1: "2D", 2: "M-mode", 3: "spectral", 4: "waveform", 5: "graphics"}


@dataclass(frozen=True)
class UltrasoundRegion:
    """One item of the Sequence of Ultrasound Regions (PS3.3 C.8.5.5), bounds inclusive in pixels."""

    x0: int
    y0: int
    x1: int
    y1: int
    spatial_format: str
    data_type: int
    units_x: str
    units_y: str
    physical_delta_x: float  # physical units per pixel along columns, in units_x
    physical_delta_y: float  # physical units per pixel along rows, in units_y

    @property
    def spacing_mm(self) -> tuple[float, float] | None:
        """(row, column) spacing in mm when both axes are in cm and the values are plausible (see
        `plausible`), else None."""
        if self.units_x == "cm" and self.units_y == "cm" and self.physical_delta_x > 0 and self.physical_delta_y > 0:
            row, col = abs(self.physical_delta_y) * 10.0, abs(self.physical_delta_x) * 10.0
            return (row, col) if plausible(row, col) else None
        return None


@dataclass(frozen=True)
class Geometry:
    pixel_spacing_mm: tuple[float, float] | None
    spacing_source: str
    pixel_aspect_ratio: float  # row spacing / column spacing (1.0 = square pixels)
    ultrasound_regions: tuple[UltrasoundRegion, ...]
    frame_time_ms: float | None
    frame_time_vector_ms: tuple[float, ...] | None


# Bounds on any spacing taken from a file, as on the caller's pixel_spacing_mm (engine.session): 1 nm
# to 1 m per pixel covers every imaging device, and keeps a pixel's area (row x column, mm^2) a finite,
# normal float, so class areas can be neither inf/NaN nor flushed to 0.
MIN_SPACING_MM = 1e-6
MAX_SPACING_MM = 1e3


def plausible(row_mm: float, col_mm: float) -> bool:
    """Both spacings within [MIN_SPACING_MM, MAX_SPACING_MM] and their product finite and > 0."""
    area = row_mm * col_mm
    return (MIN_SPACING_MM <= row_mm <= MAX_SPACING_MM and MIN_SPACING_MM <= col_mm <= MAX_SPACING_MM
            and math.isfinite(area) and area > 0)


def pixel_spacing_pair(ds: Any, source: str, rows: int, columns: int,
                       notes: list[str]) -> tuple[float, float] | None:
    """(row, column) Pixel Spacing of `ds` (a data set or a functional group item) in mm, or None."""
    return _pair(ds, "PixelSpacing", source, rows, columns, notes)


def _pair(ds: Any, keyword: str, source: str, rows: int, columns: int,
          notes: list[str]) -> tuple[float, float] | None:
    values = get_floats(ds, keyword, source)
    if values is None:
        return None
    if len(values) != 2:
        notes.append(f"{keyword} has {len(values)} value(s), needs 2 (row, column): ignored")
        return None
    row, col = values
    # PS3.3 10.7.1.3: spacing is positive, except 0 along an axis with a single row/column.
    if not (row > 0 or rows == 1) or not (col > 0 or columns == 1):
        notes.append(f"{keyword} {row:g}\\{col:g} is not positive (PS3.3 10.7.1.3): ignored")
        return None
    if not plausible(row if row > 0 else 1.0, col if col > 0 else 1.0):
        notes.append(f"{keyword} {row:g}\\{col:g} mm is outside [{MIN_SPACING_MM:g}, {MAX_SPACING_MM:g}] mm per "
                     f"pixel: ignored (no areas in mm^2)")
        return None
    return (row, col)


def read_geometry(ds: Any, source: str, rows: int, columns: int, frames: int, notes: list[str]) -> Geometry:
    modality = (get_str(ds, "Modality", source) or "").upper()
    ps = _pair(ds, "PixelSpacing", source, rows, columns, notes)
    ips = _pair(ds, "ImagerPixelSpacing", source, rows, columns, notes)
    ermf = get_float(ds, "EstimatedRadiographicMagnificationFactor", source, default=None)
    if ermf is not None and ermf <= 0:
        notes.append(f"EstimatedRadiographicMagnificationFactor {ermf:g} is not positive: ignored")
        ermf = None
    calibration = (get_str(ds, "PixelSpacingCalibrationType", source) or "").upper()
    regions = _regions(ds, source, notes)

    spacing: tuple[float, float] | None = None
    why = "none: no usable PixelSpacing, ImagerPixelSpacing or ultrasound region calibration"
    if modality in PROJECTION_MODALITIES or ips is not None:
        if ps is not None and calibration:
            spacing, why = ps, f"PixelSpacing (calibrated to the patient plane, PixelSpacingCalibrationType {calibration})"
        elif ps is not None and ips is not None and not _close(ps, ips):
            spacing, why = ps, "PixelSpacing (differs from ImagerPixelSpacing: calibrated to the patient plane)"
        elif ips is not None and ermf is not None and plausible(ips[0] / ermf, ips[1] / ermf):
            spacing = (ips[0] / ermf, ips[1] / ermf)
            why = f"ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor ({ermf:g})"
        elif ips is not None:
            spacing, why = ips, "ImagerPixelSpacing (at the detector plane; not corrected for magnification)"
        elif ps is not None:
            spacing, why = ps, "PixelSpacing (projection image without ImagerPixelSpacing)"
    elif ps is not None:
        spacing, why = ps, "PixelSpacing"
    if spacing is None and regions:
        implausible = [r for r in regions if r.spatial_format == "2D" and r.units_x == r.units_y == "cm"
                       and r.physical_delta_x > 0 and r.physical_delta_y > 0 and r.spacing_mm is None]
        if implausible:
            notes.append(f"{len(implausible)} 2D ultrasound region(s) with PhysicalDeltaX/Y outside "
                         f"[{MIN_SPACING_MM / 10:g}, {MAX_SPACING_MM / 10:g}] cm per pixel: their calibration "
                         f"is ignored")
        calibrated = [r.spacing_mm for r in regions if r.spatial_format == "2D" and r.spacing_mm is not None]
        if calibrated and all(_close(c, calibrated[0]) for c in calibrated):
            spacing = calibrated[0]
            why = f"SequenceOfUltrasoundRegions (PhysicalDeltaX/Y in cm, {len(calibrated)} 2D region(s))"
        elif calibrated:
            why = "none: 2D ultrasound regions have different calibrations; use ultrasound_regions per region"
    if spacing is None:
        nominal = _pair(ds, "NominalScannedPixelSpacing", source, rows, columns, notes)
        if nominal is not None:
            spacing, why = nominal, "NominalScannedPixelSpacing (secondary capture: scanner-nominal)"

    if spacing is not None and spacing[1] > 0:
        aspect = spacing[0] / spacing[1]
    else:
        par = get_floats(ds, "PixelAspectRatio", source)  # (0028,0034): vertical \ horizontal
        aspect = par[0] / par[1] if par is not None and len(par) == 2 and par[0] > 0 and par[1] > 0 else 1.0

    frame_time = get_float(ds, "FrameTime", source, default=None)
    vector = get_floats(ds, "FrameTimeVector", source)
    if frame_time is None:
        rate = get_float(ds, "CineRate", source, default=None) or get_float(
            ds, "RecommendedDisplayFrameRate", source, default=None)
        if rate is not None and rate > 0:
            frame_time = 1000.0 / rate
        elif vector is not None and len(vector) > 1:
            # PS3.3 C.7.6.5.1.2: element 0 is 0, element i is the time since frame i-1.
            frame_time = sum(vector[1:]) / (len(vector) - 1)
    if frame_time is not None and frame_time <= 0:
        notes.append(f"FrameTime {frame_time:g} ms is not positive: ignored")
        frame_time = None
    if vector is not None and len(vector) != frames:
        notes.append(f"FrameTimeVector has {len(vector)} values for {frames} frames: ignored")
        vector = None
    return Geometry(spacing, why, aspect, regions, frame_time, vector)


def _close(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return all(math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-9) for x, y in zip(a, b))


def _regions(ds: Any, source: str, notes: list[str]) -> tuple[UltrasoundRegion, ...]:
    seq = raw(ds, "SequenceOfUltrasoundRegions", source)
    if seq is None:
        return ()
    out = []
    for i, item in enumerate(seq):
        try:
            x0 = get_int(item, "RegionLocationMinX0", source)
            y0 = get_int(item, "RegionLocationMinY0", source)
            x1 = get_int(item, "RegionLocationMaxX1", source)
            y1 = get_int(item, "RegionLocationMaxY1", source)
            fmt = get_int(item, "RegionSpatialFormat", source, default=0)
            dtype = get_int(item, "RegionDataType", source, default=0)
            ux = get_int(item, "PhysicalUnitsXDirection", source, default=0)
            uy = get_int(item, "PhysicalUnitsYDirection", source, default=0)
            dx = get_float(item, "PhysicalDeltaX", source, default=0.0)
            dy = get_float(item, "PhysicalDeltaY", source, default=0.0)
        except DicomError as exc:  # a damaged region only loses that region's calibration
            notes.append(f"SequenceOfUltrasoundRegions item {i} ignored: {exc}")
            continue
        out.append(UltrasoundRegion(x0, y0, x1, y1, US_SPATIAL_FORMAT.get(fmt, f"unknown({fmt})"), dtype,
                                    US_UNITS.get(ux, f"unknown({ux})"), US_UNITS.get(uy, f"unknown({uy})"),
                                    dx, dy))
    return tuple(out)
