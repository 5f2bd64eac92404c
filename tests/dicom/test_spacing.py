"""Pixel spacing rules (PS3.3 10.7.1.1-3, C.8.11.7), ultrasound regions, frame timing.

Headers of real files are edited to reach each rule; the pixel data stays real.
"""
from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from engine import dicom

from .oracle import data_file, deid_file


def _small(modality: str = "DX", **attrs) -> pydicom.Dataset:
    ds = pydicom.dcmread(data_file("MR_small.dcm"))
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        if kw in ds:
            delattr(ds, kw)
    ds.Modality = modality
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def test_real_dx_uses_imager_pixel_spacing_when_pixel_spacing_is_a_copy():
    s = dicom.read(deid_file("animals", "cat.dcm"))  # DX with PixelSpacing == ImagerPixelSpacing == 0.14
    assert s.modality == "DX"
    assert s.pixel_spacing_mm == pytest.approx((0.14, 0.14))
    assert s.spacing_source.startswith("ImagerPixelSpacing (at the detector plane")


@pytest.mark.parametrize("attrs,expected,source", [
    (dict(ImagerPixelSpacing=[0.15, 0.15]), (0.15, 0.15), "ImagerPixelSpacing (at the detector plane"),
    (dict(ImagerPixelSpacing=[0.15, 0.15], EstimatedRadiographicMagnificationFactor=1.25), (0.12, 0.12),
     "ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor"),
    (dict(ImagerPixelSpacing=[0.15, 0.15], PixelSpacing=[0.15, 0.15],
          EstimatedRadiographicMagnificationFactor=1.25), (0.12, 0.12),
     "ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor"),
    (dict(ImagerPixelSpacing=[0.15, 0.15], PixelSpacing=[0.13, 0.13],
          EstimatedRadiographicMagnificationFactor=1.25), (0.13, 0.13), "PixelSpacing (differs from ImagerPixelSpacing"),
    (dict(ImagerPixelSpacing=[0.15, 0.15], PixelSpacing=[0.15, 0.15], PixelSpacingCalibrationType="GEOMETRY"),
     (0.15, 0.15), "PixelSpacing (calibrated to the patient plane, PixelSpacingCalibrationType GEOMETRY"),
    (dict(PixelSpacing=[0.2, 0.1]), (0.2, 0.1), "PixelSpacing (projection image without ImagerPixelSpacing"),
    (dict(ImagerPixelSpacing=[0.15, 0.15], EstimatedRadiographicMagnificationFactor=0), (0.15, 0.15),
     "ImagerPixelSpacing (at the detector plane"),
])
def test_projection_radiography_spacing_rules(attrs, expected, source):
    s = dicom.read(_small("DX", **attrs))
    assert s.pixel_spacing_mm == pytest.approx(expected)
    assert s.spacing_source.startswith(source)


def test_non_square_pixels():
    s = dicom.read(_small("CT", PixelSpacing=[0.5, 0.25]))
    assert s.pixel_spacing_mm == (0.5, 0.25) and s.spacing_source == "PixelSpacing"
    assert s.pixel_aspect_ratio == pytest.approx(2.0)


@pytest.mark.parametrize("value", [[0, 0], [-0.2, 0.2], [0.2]])
def test_invalid_spacing_is_ignored_with_a_reason(value):
    s = dicom.read(_small("CT", PixelSpacing=value))
    assert s.pixel_spacing_mm is None and s.spacing_source.startswith("none")
    assert any("PixelSpacing" in w for w in s.warnings)


def _region(x0, y0, x1, y1, dx, dy, units=3, fmt=1):
    item = Dataset()
    item.RegionSpatialFormat = fmt
    item.RegionDataType = 1
    item.RegionLocationMinX0, item.RegionLocationMinY0 = x0, y0
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x1, y1
    item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = units
    item.PhysicalDeltaX, item.PhysicalDeltaY = dx, dy
    return item


def test_ultrasound_regions_give_spacing_when_they_agree():
    ds = _small("US", SequenceOfUltrasoundRegions=Sequence([_region(0, 0, 31, 63, 0.02, 0.03),
                                                             _region(32, 0, 63, 63, 0.02, 0.03),
                                                             _region(0, 0, 63, 10, 1.0, 1.0, units=4, fmt=3)]))
    s = dicom.read(ds)
    assert s.pixel_spacing_mm == pytest.approx((0.3, 0.2))  # (row, col) = (dy, dx) * 10 mm/cm
    assert s.spacing_source.startswith("SequenceOfUltrasoundRegions")
    assert [r.units_x for r in s.ultrasound_regions] == ["cm", "cm", "seconds"]
    assert s.ultrasound_regions[2].spacing_mm is None and s.ultrasound_regions[2].spatial_format == "spectral"


def test_ultrasound_regions_that_disagree_give_no_global_spacing():
    ds = _small("US", SequenceOfUltrasoundRegions=Sequence([_region(0, 0, 31, 63, 0.02, 0.02),
                                                             _region(32, 0, 63, 63, 0.04, 0.04)]))
    s = dicom.read(ds)
    assert s.pixel_spacing_mm is None and "different calibrations" in s.spacing_source
    assert [r.spacing_mm for r in s.ultrasound_regions] == [pytest.approx((0.2, 0.2)), pytest.approx((0.4, 0.4))]


def test_real_ultrasound_files_calibration():
    grey = dicom.read(data_file("JPGLosslessP14SV1_1s_1f_8b.dcm"))
    assert grey.spacing_source.startswith("SequenceOfUltrasoundRegions")
    assert 0.05 < grey.pixel_spacing_mm[0] < 1.0
    rgb = dicom.read(deid_file("ultrasounds", "RGB_IMAGE.dcm"))  # has PixelSpacing and regions
    assert rgb.pixel_spacing_mm == pytest.approx((0.237872, 0.237872)) and rgb.spacing_source == "PixelSpacing"


@pytest.mark.parametrize("attrs,expected", [
    (dict(FrameTime=40.0), 40.0),
    (dict(CineRate=25), 40.0),
    (dict(RecommendedDisplayFrameRate=50), 20.0),
    (dict(FrameTime=-5), None),
])
def test_frame_time(attrs, expected):
    s = dicom.read(_small("US", **attrs))
    assert (s.frame_time_ms is None) if expected is None else s.frame_time_ms == pytest.approx(expected)


def test_frame_time_vector():
    ds = pydicom.dcmread(data_file("emri_small.dcm"))
    ds.FrameTimeVector = [0] + [30.0] * 9
    seq = dicom.read(ds)
    assert seq.frame_time_vector_ms == (0.0,) + (30.0,) * 9 and seq.frame_time_ms == pytest.approx(30.0)


@pytest.mark.parametrize("spacing", [[1e300, 1e300], [1e200, 1e200], [1e-300, 1e-300], [1e-170, 1e-170],
                                     [2000, 0.5], [0.5, 1e308], [5e-7, 0.5]])
def test_absurd_pixel_spacing_in_the_file_is_ignored_with_a_note(spacing):
    s = dicom.read(_small("CT", PixelSpacing=spacing))
    assert s.pixel_spacing_mm is None
    assert any("outside [1e-06, 1000] mm per pixel" in n for n in s.warnings), s.warnings


@pytest.mark.parametrize("spacing", [[1e-6, 1e-6], [1000, 1000], [0.05, 0.05]])
def test_spacing_at_the_bounds_is_kept_and_its_area_is_finite(spacing):
    s = dicom.read(_small("CT", PixelSpacing=spacing))
    assert s.pixel_spacing_mm == tuple(spacing)
    area = s.pixel_spacing_mm[0] * s.pixel_spacing_mm[1]
    assert 0 < area < float("inf")


@pytest.mark.parametrize("delta_cm,kept", [(1e300, False), (1e-300, False), (1e160, False), (0.01, True)])
def test_ultrasound_region_calibration_is_bounded(delta_cm, kept):
    region = Dataset()
    region.RegionSpatialFormat, region.RegionDataType = 1, 1
    region.RegionLocationMinX0 = region.RegionLocationMinY0 = 0
    region.RegionLocationMaxX1 = region.RegionLocationMaxY1 = 63
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = region.PhysicalDeltaY = delta_cm
    s = dicom.read(_small("US", SequenceOfUltrasoundRegions=Sequence([region])))
    assert (s.pixel_spacing_mm == (delta_cm * 10, delta_cm * 10)) if kept else (s.pixel_spacing_mm is None)
    assert s.ultrasound_regions[0].spacing_mm == (s.pixel_spacing_mm if kept else None)


def test_magnification_factor_that_makes_spacing_absurd_is_not_applied():
    s = dicom.read(_small("DX", ImagerPixelSpacing=[0.1, 0.1], EstimatedRadiographicMagnificationFactor=1e-300))
    assert s.pixel_spacing_mm == (0.1, 0.1) and "not corrected for magnification" in s.spacing_source
