"""Slice.spec_for: DICOM-derived PreprocessSpec fields, the model's own fields kept, VOI policies.

VOI LUT Functions without a real test file (SIGMOID, LINEAR_EXACT, several windows) are checked on
real pixel data with an edited header, through the kernel, against pydicom's apply_voi_lut.
"""
from __future__ import annotations

import numpy as np
import pydicom
import pytest

from engine import dicom
from engine.errors import InputError
from engine.spec import PreprocessSpec

from .oracle import data_file, kernel_grey_levels, pydicom_reference

MODEL = PreprocessSpec(out_height=224, out_width=192, out_channels=3, layout="NHWC", out_dtype="float16",
                       resize="area", letterbox=True, pad_value=0.25, normalize="fixed", mean=(0.5,), std=(0.25,),
                       output_min=-1.0, output_max=1.0, voi_function="linear", window_center=40.0,
                       window_width=400.0, roi=(1, 2, 30, 40))
GEOMETRY = ("out_height", "out_width", "out_channels", "layout", "out_dtype", "resize", "letterbox", "pad_value",
            "normalize", "mean", "std", "output_min", "output_max", "roi", "equalize", "quant_scale",
            "quant_zero_point")


def _kept(spec: PreprocessSpec) -> None:
    for name in GEOMETRY:
        assert getattr(spec, name) == getattr(MODEL, name), name


def test_chest_cr_window_and_inversion():
    s = dicom.read(data_file("RG1_UNCR.dcm"))
    spec = s.spec_for(MODEL)
    _kept(spec)
    assert (spec.voi_function, spec.window_center, spec.window_width) == ("linear", 15000.0, 30000.0)
    assert spec.invert and spec.in_channels == 1 and spec.modality_lut is None
    assert (spec.rescale_slope, spec.rescale_intercept) == (1.0, 0.0)


def test_model_voi_policy_keeps_the_model_window_but_not_its_modality_or_inversion():
    s = dicom.read(data_file("CT_small.dcm"))
    spec = s.spec_for(MODEL.replace(invert=True), voi_policy="model")
    assert (spec.voi_function, spec.window_center, spec.window_width) == ("linear", 40.0, 400.0)
    assert (spec.rescale_slope, spec.rescale_intercept) == (1.0, -1024.0)
    assert spec.invert is False  # MONOCHROME2: the file decides


def test_modality_lut_table_and_voi_lut_table():
    m = dicom.read(data_file("mlut_18.dcm")).spec_for(MODEL)
    assert m.modality_lut is not None and m.modality_lut.size == 4096 and m.modality_lut_first_mapped == -2048
    assert m.voi_function == "linear_exact" and (m.window_center, m.window_width) == (65535 / 2, 65535.0)
    v = dicom.read(data_file("vlut_04.dcm")).spec_for(MODEL)
    assert v.voi_function == "lut" and v.voi_lut.size == 256 and v.voi_lut_bits == 16 and v.voi_lut_first_mapped == 0


def test_colour_images_get_three_input_channels_and_full_range():
    s = dicom.read(data_file("gdcm-US-ALOKA-16.dcm"))
    spec = s.spec_for(MODEL)
    assert spec.in_channels == 3 and not spec.invert
    assert (spec.voi_function, spec.window_center, spec.window_width) == ("linear_exact", 65535 / 2, 65535.0)


def test_bad_arguments():
    s = dicom.read(data_file("MR_small.dcm"))
    with pytest.raises(InputError, match="voi_policy"):
        s.spec_for(MODEL, voi_policy="auto")
    with pytest.raises(InputError, match="PreprocessSpec"):
        s.spec_for({"out_height": 1})


def test_sequence_spec_matches_its_frames():
    seq = dicom.read(data_file("color3d_jpeg_baseline.dcm"))
    assert seq.spec_for(MODEL) == seq[0].spec_for(MODEL)


def _edited(**attrs) -> pydicom.Dataset:
    ds = pydicom.dcmread(data_file("MR_small.dcm"))  # real signed 16-bit MR pixels, window 600/1600
    for k, v in attrs.items():
        if v is None:
            delattr(ds, k)
        else:
            setattr(ds, k, v)
    return ds


@pytest.mark.parametrize("attrs", [
    dict(VOILUTFunction="SIGMOID", WindowCenter=1200, WindowWidth=900),
    dict(VOILUTFunction="LINEAR_EXACT", WindowCenter=1000.5, WindowWidth=0.5),
    dict(VOILUTFunction="LINEAR", WindowCenter=1000, WindowWidth=1),
    dict(WindowCenter=[1100, 400], WindowWidth=[700, 3000], WindowCenterWidthExplanation=["SOFT", "WIDE"]),
    dict(RescaleSlope=0.5, RescaleIntercept=-100, WindowCenter=500, WindowWidth=800),
    dict(RescaleSlope=-2, RescaleIntercept=10, WindowCenter=None, WindowWidth=None),
])
def test_voi_functions_match_pydicom_on_real_pixels(attrs):
    ds = _edited(**attrs)
    s = dicom.read(ds)
    ours = kernel_grey_levels(s)
    ref = pydicom_reference(_edited(**attrs))
    assert ref.max() > ref.min()
    np.testing.assert_allclose(ours, ref, atol=2e-6, rtol=0)


def test_all_windows_are_kept_with_explanations_first_is_used():
    s = dicom.read(_edited(WindowCenter=[1100, 400], WindowWidth=[700, 3000],
                           WindowCenterWidthExplanation=["SOFT", "WIDE"]))
    assert s.windows == (dicom.Window(1100.0, 700.0, "SOFT"), dicom.Window(400.0, 3000.0, "WIDE"))
    spec = s.spec_for(MODEL)
    assert (spec.window_center, spec.window_width) == (1100.0, 700.0)


def test_voi_lut_wins_over_windows_like_pydicom():
    ds = pydicom.dcmread(data_file("vlut_04.dcm"))
    ds.WindowCenter, ds.WindowWidth = 100, 50
    s = dicom.read(ds)
    assert s.windows and s.voi_luts
    assert s.spec_for(MODEL).voi_function == "lut"
    np.testing.assert_allclose(kernel_grey_levels(s), pydicom_reference(ds), atol=2e-6, rtol=0)
