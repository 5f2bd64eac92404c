"""Fused preprocessing kernel (CPU) vs the float64 NumPy reference of the DICOM formulas.

Tolerances (float32 output): |err| <= 2e-6 * (output range) + 1e-5 * |ref|: the kernel works in float32
(24-bit mantissa), the reference in float64. float16 output adds one half-precision rounding
(rtol 2^-11 on top). int8: one quantization step, because a float32 value that agrees with the
reference to 1e-6 may still round to the other side of a .5 boundary.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine import _native
from engine.errors import InputError
from engine.preprocess import geometry, preprocess, preprocess_into, set_num_threads
from engine.spec import PreprocessSpec

from .conftest import assert_close, run_poisoned
from .reference import cast, displayed, equalize, reference

ATOL, RTOL = 2e-6, 1e-5


def random_image(rng, dtype, shape=(67, 93)):
    if dtype == np.uint8:
        return rng.integers(1, 256, shape, dtype=np.uint8)
    if dtype == np.uint16:
        return rng.integers(1, 4096, shape, dtype=np.uint16)  # 12-bit detector
    if dtype == np.int16:
        return rng.integers(-1024, 3072, shape, dtype=np.int16)  # CT stored values
    if dtype == np.int32:
        return rng.integers(-100_000, 100_000, shape, dtype=np.int32)
    return (rng.standard_normal(shape) * 500 + 40).astype(np.float32)


def window_for(x):
    lo, hi = float(x.min()), float(x.max())
    return (lo + hi) / 2, max(hi - lo, 2) * 0.6


def check(x, spec, *, frame=None, atol=ATOL, rtol=RTOL, what=""):
    got = run_poisoned(x, spec, frame=frame)
    ref = reference(x, spec, frame=frame)
    scale = max(spec.output_max - spec.output_min, float(np.abs(ref).max()), 1e-30)
    if spec.out_dtype == "int8":
        q = cast(ref, spec).astype(np.int16)
        diff = np.abs(got.astype(np.int16) - q)
        assert diff.max() <= 1, f"{what}: int8 differs by {diff.max()} steps"
        assert (diff == 0).mean() > 0.98, f"{what}: too many int8 elements off by one"
        return got
    if spec.out_dtype == "float16":
        rtol = rtol + 2.0 ** -11
    assert_close(got, ref, atol=atol * scale, rtol=rtol, what=what or str(spec.to_dict()))
    return got


DTYPES = [np.uint8, np.uint16, np.int16, np.int32, np.float32]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("voi_function", ["none", "linear", "linear_exact", "sigmoid"])
def test_voi_functions_match_dicom_formulas(rng, dtype, voi_function):
    x = random_image(rng, dtype)
    c, w = window_for(x)
    spec = PreprocessSpec(out_height=40, out_width=52, voi_function=voi_function, window_center=c, window_width=w,
                          rescale_slope=1.5, rescale_intercept=-20.0, output_min=-1.0, output_max=2.0)
    if voi_function != "none":
        spec = spec.replace(window_center=c * 1.5 - 20)
    check(x, spec)


@pytest.mark.parametrize("width", [1.0, 2.0, 3.5])
def test_linear_window_narrow_widths_follow_c_minus_half(rng, width):
    # PS3.3 C.11.2.1.2.1: w == 1 is a step at c - 0.5; narrow windows are where c-0.5 and w-1 matter.
    x = np.arange(90, 111, dtype=np.int16).reshape(3, 7)
    spec = PreprocessSpec(out_height=3, out_width=7, resize="nearest", voi_function="linear",
                          window_center=100, window_width=width)
    got = run_poisoned(x, spec)[0, 0]
    ref = reference(x, spec)[0, 0]
    assert_close(got, ref, atol=1e-6, rtol=0, what="narrow linear window")
    if width == 1.0:
        np.testing.assert_array_equal(got, np.where(x > 99.5, 1.0, 0.0))


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32], ids=lambda d: np.dtype(d).name)
def test_modality_lut_table_with_first_mapped(rng, dtype):
    x = random_image(rng, dtype, (50, 61))
    if dtype == np.float32:
        x = np.abs(x)
    lut = np.sort(rng.uniform(-500, 1500, 1500)).astype(np.float32)
    first = int(np.percentile(x, 20))  # values below first and beyond the table's end are both present
    spec = PreprocessSpec(out_height=25, out_width=30, modality_lut=lut, modality_lut_first_mapped=first,
                          voi_function="linear", window_center=400, window_width=1200)
    check(x, spec)


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_voi_lut_table(rng, bits):
    x = random_image(rng, np.uint16, (48, 64))
    table = rng.integers(0, 2 ** bits, 3000).astype(np.float32)
    spec = PreprocessSpec(out_height=48, out_width=64, resize="nearest", voi_function="lut", voi_lut=table,
                          voi_lut_first_mapped=500, voi_lut_bits=bits, output_min=0.0, output_max=255.0)
    check(x, spec)


@pytest.mark.parametrize("voi_function", ["none", "linear", "sigmoid"])
def test_monochrome1_inversion_after_voi(rng, voi_function):
    x = random_image(rng, np.uint16)
    spec = PreprocessSpec(out_height=30, out_width=40, voi_function=voi_function, window_center=2000,
                          window_width=3000, output_min=-1, output_max=3)
    plain = run_poisoned(x, spec)
    inverted = check(x, spec.replace(invert=True))
    assert_close(inverted, (spec.output_min + spec.output_max) - plain.astype(np.float64), atol=1e-5, rtol=1e-6,
                 what="inversion mirrors the output range")


SIZES = [(37, 41), (64, 64), (100, 71), (140, 190), (13, 190), (190, 13)]


@pytest.mark.parametrize("resize", ["nearest", "bilinear", "area"])
@pytest.mark.parametrize("out_hw", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_resize_matches_opencv(rng, resize, out_hw):
    # The oracle is cv2.resize on the same float32 image (VOI 'none' makes the kernel a pure resampler).
    # OpenCV single-row/column images use float coordinates, so sides start at 2.
    x = (rng.random((96, 128)) * 1000).astype(np.float32)
    spec = PreprocessSpec(out_height=out_hw[0], out_width=out_hw[1], resize=resize)
    got = run_poisoned(x, spec)[0, 0]
    interp = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA}[resize]
    oracle = cv2.resize(x, (out_hw[1], out_hw[0]), interpolation=interp).astype(np.float64)
    assert_close(got, oracle, atol=1e-3, rtol=2e-6, what=f"{resize} vs cv2")


def test_area_downscale_is_a_box_average(rng):
    x = rng.integers(0, 1000, (64, 96), dtype=np.uint16)
    spec = PreprocessSpec(out_height=8, out_width=12, resize="area")
    got = run_poisoned(x, spec)[0, 0]
    box = x.astype(np.float64).reshape(8, 8, 12, 8).mean(axis=(1, 3))
    assert_close(got, box, atol=0, rtol=1e-6, what="8x8 box average")


@pytest.mark.parametrize("letterbox", [False, True])
@pytest.mark.parametrize("resize", ["nearest", "bilinear", "area"])
def test_roi_and_letterbox(rng, letterbox, resize):
    x = random_image(rng, np.int16, (120, 150))
    spec = PreprocessSpec(out_height=48, out_width=64, roi=(10, 23, 90, 51), letterbox=letterbox, pad_value=-0.25,
                          resize=resize, voi_function="linear", window_center=40, window_width=400)
    got = check(x, spec)
    g = geometry(x.shape, spec)
    assert g["roi"] == (10, 23, 90, 51)
    if letterbox:
        top, left, ch, cw = g["content"]
        assert ch == 48 and cw == 27 and (top, left) == (0, 18)
        assert np.all(got[0, 0, :, :left] == np.float32(-0.25)) and np.all(got[0, 0, :, left + cw:] == np.float32(-0.25))


@pytest.mark.parametrize("normalize", ["fixed", "zscore", "minmax"])
@pytest.mark.parametrize("letterbox", [False, True])
def test_normalization(rng, normalize, letterbox):
    x = random_image(rng, np.uint16, (80, 60))
    spec = PreprocessSpec(out_height=32, out_width=32, letterbox=letterbox, pad_value=0.1, normalize=normalize,
                          mean=(0.45,), std=(0.225,), voi_function="linear", window_center=2000, window_width=3000)
    got = check(x, spec)
    if normalize == "zscore" and not letterbox:
        assert abs(float(got.mean())) < 1e-4 and abs(float(got.std()) - 1) < 1e-4


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("in_c,out_c", [(1, 3), (3, 1), (3, 3)])
def test_channels_and_layout(rng, layout, in_c, out_c):
    shape = (70, 90) if in_c == 1 else (70, 90, 3)
    x = rng.integers(1, 256, shape, dtype=np.uint8)
    spec = PreprocessSpec(out_height=35, out_width=44, in_channels=in_c, out_channels=out_c, layout=layout,
                          output_max=255.0, normalize="fixed", mean=(120.0, 110.0, 100.0)[:out_c],
                          std=(60.0, 55.0, 50.0)[:out_c], resize="bilinear")
    check(x, spec)


@pytest.mark.parametrize("out_dtype", ["float16", "int8"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_output_dtypes(rng, out_dtype, layout):
    x = random_image(rng, np.uint16, (90, 70))
    spec = PreprocessSpec(out_height=45, out_width=35, out_channels=3, layout=layout, out_dtype=out_dtype,
                          quant_scale=1 / 64, quant_zero_point=-3, voi_function="linear", window_center=2000,
                          window_width=3000, normalize="fixed", mean=(0.5,), std=(0.25,))
    check(x, spec)


def test_int8_saturates_and_rounds_half_to_even():
    x = np.array([[0, 1, 2, 3, 4, 5, 1000, 2000]], dtype=np.float32)
    spec = PreprocessSpec(out_height=1, out_width=8, resize="nearest", out_dtype="int8", quant_scale=2.0,
                          quant_zero_point=1, rescale_intercept=-1000)
    got = run_poisoned(x, spec)[0, 0, 0]
    # (x - 1000) / 2 -> -500, -499.5, ..., 0, 500 ; + 1, saturated
    np.testing.assert_array_equal(got, [-128, -128, -128, -128, -128, -128, 1, 127])
    x = np.array([[1, 3, 5, -1]], dtype=np.float32)
    spec = spec.replace(out_width=4, rescale_intercept=0.0, quant_zero_point=0)
    np.testing.assert_array_equal(run_poisoned(x, spec)[0, 0, 0], [0, 2, 2, 0])  # 0.5->0, 1.5->2, 2.5->2, -0.5->0


def test_float16_rounding():
    vals = np.array([[1.0, 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 65504.0, 65519.0, -65519.0, 1e-8, -3e-5, 6e-8]],
                    dtype=np.float32)
    spec = PreprocessSpec(out_height=1, out_width=vals.shape[1], resize="nearest", out_dtype="float16")
    got = run_poisoned(vals, spec)[0, 0, 0]
    np.testing.assert_array_equal(got.view(np.uint16), vals[0].astype(np.float16).view(np.uint16))


@pytest.mark.parametrize("value", [65520.0, -70000.0, 1e30])
def test_float16_overflow_is_refused_not_inf(value):
    # 16-bit detector values passed through without a window do not fit float16: refuse, never feed Inf.
    x = np.array([[1.0, value, 3.0]], dtype=np.float32)
    spec = PreprocessSpec(out_height=1, out_width=3, resize="nearest", out_dtype="float16")
    with pytest.raises(InputError, match="float16 range .*65504"):
        preprocess(x, spec)
    with pytest.raises(InputError, match="float16 range"):
        preprocess(np.full((8, 8), 65535, np.uint16), spec.replace(out_width=4, out_height=4, resize="area"))


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32], ids=lambda d: np.dtype(d).name)
def test_equalization(rng, dtype):
    x = random_image(rng, dtype, (60, 80))
    spec = PreprocessSpec(out_height=30, out_width=40, voi_function="linear", window_center=float(np.median(x)),
                          window_width=float(np.ptp(x)) * 0.8, equalize=True, invert=True)
    got = run_poisoned(x, spec)
    # Displayed values exactly as the kernel computes them (identity geometry), equalized in NumPy.
    shown = run_poisoned(x, spec.replace(equalize=False, out_height=60, out_width=80, resize="nearest"))[0, 0]
    eq = equalize(shown, spec.output_min, spec.output_max)
    ref = reference(x, spec, displayed_override=eq)
    assert_close(got, ref, atol=1e-6, rtol=1e-5, what="equalized")
    flat = run_poisoned(x, spec.replace(out_height=60, out_width=80, resize="nearest"))[0, 0]
    assert flat.max() == pytest.approx(1.0) and flat.min() == 0.0


def test_equalization_rgb_to_grey(rng):
    x = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    spec = PreprocessSpec(out_height=40, out_width=50, in_channels=3, resize="nearest", output_max=255.0,
                          equalize=True)
    got = run_poisoned(x, spec)[0, 0]
    shown = run_poisoned(x, spec.replace(equalize=False))[0, 0]
    assert_close(got, equalize(shown, 0.0, 255.0), atol=1e-4, rtol=1e-6, what="equalized luma")


def test_strided_views_are_read_in_place(rng):
    big = random_image(rng, np.uint16, (5, 140, 170))
    spec = PreprocessSpec(out_height=33, out_width=47, voi_function="linear", window_center=2000, window_width=3000)
    views = {
        "frame": (big, 3),
        "roi view": (big[2, 10:120, 5:160], None),
        "every other column": (big[1, :, ::2], None),
        "negative strides": (big[4, ::-1, ::-3], None),
        "transposed": (big[0].T, None),
        "fortran": (np.asfortranarray(big[0]), None),
    }
    for name, (x, frame) in views.items():
        got = run_poisoned(x, spec, frame=frame)
        src = x[frame] if frame is not None else x
        assert_close(got, reference(np.ascontiguousarray(src), spec), atol=ATOL, rtol=RTOL, what=name)
    rgb = rng.integers(0, 256, (60, 80, 4), dtype=np.uint8)[:, :, 2::-1]  # BGRA -> RGB view, channel stride -1
    spec = PreprocessSpec(out_height=30, out_width=40, in_channels=3, out_channels=3, output_max=255.0)
    assert_close(run_poisoned(rgb, spec), reference(np.ascontiguousarray(rgb), spec), atol=1e-4, rtol=1e-6,
                 what="rgb channel view")


def test_folded_table_equals_per_pixel_math(rng):
    # uint16 goes through the folded table, float32 through per-pixel math: same values, same output.
    x = random_image(rng, np.uint16, (64, 80))
    spec = PreprocessSpec(out_height=20, out_width=30, voi_function="sigmoid", window_center=1800, window_width=900,
                          rescale_slope=0.5, rescale_intercept=7, invert=True)
    np.testing.assert_array_equal(preprocess(x, spec), preprocess(x.astype(np.float32), spec))
    lut = _native.PreparedSpec(spec).folded_lut("uint16")
    assert_close(lut.astype(np.float64)[:4096], displayed(np.arange(4096.0), spec), atol=1e-6, rtol=1e-6,
                 what="folded table")


def test_batch_slots_and_threads_are_deterministic(rng):
    x = random_image(rng, np.int16, (300, 257))
    spec = PreprocessSpec(out_height=64, out_width=48, voi_function="linear", window_center=40, window_width=400)
    set_num_threads(1)
    try:
        one = run_poisoned(x, spec, batch=3, batch_index=2)
        set_num_threads(4)
        many = run_poisoned(x, spec, batch=3, batch_index=1)
    finally:
        set_num_threads(2)
    np.testing.assert_array_equal(one, many)


def test_preprocess_allocates_the_contract_shape(rng):
    x = random_image(rng, np.uint8, (50, 50))
    for layout, shape in (("NCHW", (1, 3, 20, 30)), ("NHWC", (1, 20, 30, 3))):
        spec = PreprocessSpec(out_height=20, out_width=30, out_channels=3, layout=layout, out_dtype="float16")
        y = preprocess(x, spec)
        assert y.shape == shape and y.dtype == np.float16 and y.flags.c_contiguous


def test_pydicom_chain_agrees_on_real_ct():
    # External oracle: pydicom's own modality + VOI implementation on a real CT slice.
    pydicom = pytest.importorskip("pydicom")
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm", download=False))
    raw = ds.pixel_array
    c, w = 40.0, 400.0
    ds.WindowCenter, ds.WindowWidth = c, w
    expected = apply_voi_lut(apply_modality_lut(raw, ds), ds).astype(np.float64)
    ymax = 2.0 ** ds.BitsStored - 1 if ds.PixelRepresentation == 0 else 2.0 ** (ds.BitsStored - 1) - 1
    ymin = 0.0 if ds.PixelRepresentation == 0 else -(2.0 ** (ds.BitsStored - 1))
    # pydicom puts its output range through the rescale too (it windows into modality units).
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    ymin, ymax = ymin * slope + intercept, ymax * slope + intercept
    spec = PreprocessSpec(out_height=raw.shape[0], out_width=raw.shape[1], resize="nearest",
                          rescale_slope=slope, rescale_intercept=intercept,
                          voi_function="linear", window_center=c, window_width=w, output_min=ymin, output_max=ymax)
    got = run_poisoned(raw, spec)[0, 0]
    assert_close(got, expected, atol=1e-6 * (ymax - ymin), rtol=1e-6, what="pydicom apply_voi_lut")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_rgb_to_grey_area_fast_rows_match_generic_path(rng, dtype):
    # Interleaved (H, W, 3) and planar (a (3, H, W) array viewed as H, W, 3, as pydicom decodes
    # YBR cines) take the SIMD luma rows; a BGRA view (channel stride -1) takes the per-pixel
    # fetch. All three must give the same bits, and match the float64 reference.
    hi = 256 if dtype == np.uint8 else 4096
    planes = rng.integers(0, hi, (3, 150, 203), dtype=dtype)
    planar = planes.transpose(1, 2, 0)
    interleaved = np.ascontiguousarray(planar)
    bgra = np.empty((150, 203, 4), dtype)
    bgra[..., 2::-1] = interleaved
    generic = bgra[..., 2::-1]
    for thin in (False, True):  # area spans of 1-2 rows and of more than eight rows
        oh, ow = (97, 130) if not thin else (13, 17)
        spec = PreprocessSpec(out_height=oh, out_width=ow, in_channels=3, out_channels=1, resize="area",
                              window_center=hi / 2 - 3, window_width=hi * 0.7)
        ref_out = run_poisoned(generic, spec)
        np.testing.assert_array_equal(run_poisoned(interleaved, spec), ref_out)
        np.testing.assert_array_equal(run_poisoned(planar, spec), ref_out)
        check(interleaved, spec, what=f"rgb->grey area {dtype.__name__} {oh}x{ow}")
