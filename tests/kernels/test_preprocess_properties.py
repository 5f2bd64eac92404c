"""Property tests (hypothesis): random shapes, strides, dtypes and specs against the reference, plus
invariants that hold whatever the numbers: monotonic VOI, inversion symmetry, constant stays constant."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.preprocess import geometry
from engine.spec import PreprocessSpec

from .conftest import assert_close, run_poisoned
from .reference import displayed, reference

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DTYPE_RANGES = {np.uint8: (0, 255), np.uint16: (0, 65535), np.int16: (-32768, 32767),
                np.int32: (-2**24, 2**24), np.float32: (-1e4, 1e4)}


@st.composite
def strided_images(draw, min_side=2, max_side=40):
    """A random image viewed through random steps / flips / transposition of a larger array."""
    dtype = draw(st.sampled_from(list(DTYPE_RANGES)))
    h = draw(st.integers(min_side, max_side))
    w = draw(st.integers(min_side, max_side))
    sy, sx = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    flip_y, flip_x, transpose = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    lo, hi = DTYPE_RANGES[dtype]
    span = draw(st.sampled_from([hi - lo, 4095, 255]))
    start = draw(st.integers(lo, hi - min(span, hi - lo)))
    shape = (w * sx, h * sy) if transpose else (h * sy, w * sx)
    if dtype == np.float32:
        big = (start + rng.random(shape) * span).astype(np.float32)
    else:
        big = rng.integers(start, start + span, shape, endpoint=True).astype(dtype)
    x = big.T if transpose else big
    x = x[::sy, ::sx]
    if flip_y:
        x = x[::-1]
    if flip_x:
        x = x[:, ::-1]
    assert x.shape == (h, w)
    return x


@st.composite
def specs_for(draw, x):
    h, w = x.shape
    v = np.asarray(x, dtype=np.float64)
    voi_function = draw(st.sampled_from(["none", "linear", "linear_exact", "sigmoid"]))
    center = float(draw(st.floats(float(v.min()), float(v.max()))))
    width = float(draw(st.floats(1.0, max(2.0, float(np.ptp(v)) * 2))))
    roi = None
    if draw(st.booleans()):
        rh, rw = draw(st.integers(2, h)), draw(st.integers(2, w))
        roi = (draw(st.integers(0, h - rh)), draw(st.integers(0, w - rw)), rh, rw)
    return PreprocessSpec(
        out_height=draw(st.integers(2, 48)), out_width=draw(st.integers(2, 48)),
        out_channels=draw(st.sampled_from([1, 3])), layout=draw(st.sampled_from(["NCHW", "NHWC"])),
        rescale_slope=draw(st.sampled_from([1.0, 0.5, 2.0, -1.0])),
        rescale_intercept=draw(st.sampled_from([0.0, -1024.0, 100.0])),
        voi_function=voi_function, window_center=center, window_width=width,
        invert=draw(st.booleans()), roi=roi, resize=draw(st.sampled_from(["nearest", "bilinear", "area"])),
        letterbox=draw(st.booleans()), pad_value=draw(st.sampled_from([0.0, -0.5])),
        normalize=draw(st.sampled_from(["none", "fixed", "zscore", "minmax"])), mean=(0.3,), std=(0.7,),
    )


@SETTINGS
@given(st.data())
def test_random_images_and_specs_match_reference(data):
    x = data.draw(strided_images())
    spec = data.draw(specs_for(x))
    got = run_poisoned(x, spec)
    ref = reference(np.ascontiguousarray(x), spec)
    # float32 error before normalization, relative to the largest magnitude in play (modality outputs
    # reach 2^25 for int32 input) or the output range.
    pre = reference(np.ascontiguousarray(x), spec.replace(normalize="none"))
    scale = max(float(np.abs(pre).max()), spec.output_max - spec.output_min, 1.0)
    amp = 1.0
    if spec.normalize in ("zscore", "minmax"):
        # zscore/minmax divide by a statistic of the content: the error grows by scale / statistic.
        top, left, ch, cw = geometry(x.shape, spec)["content"]
        c = pre[0] if spec.layout == "NHWC" else np.moveaxis(pre[0], 0, -1)
        c = c[top:top + ch, left:left + cw]
        stat = c.std() if spec.normalize == "zscore" else np.ptp(c)
        amp = 2.0 / stat if stat > 0 else 1.0
    assert_close(got, ref, atol=4e-6 * scale * amp, rtol=1e-5, what=str(spec.to_dict()))


@SETTINGS
@given(voi_function=st.sampled_from(["linear", "linear_exact", "sigmoid", "lut"]),
       dtype=st.sampled_from([np.uint16, np.int16, np.float32]),
       center=st.floats(-2000, 2000), width=st.floats(1, 5000), slope=st.sampled_from([0.25, 1.0, 3.0]))
def test_voi_is_monotonic(voi_function, dtype, center, width, slope):
    lo, hi = (-3000, 3000) if dtype != np.uint16 else (0, 6000)
    ramp = np.linspace(lo, hi, 997).astype(dtype)[None, :]
    table = np.sort(np.random.default_rng(5).integers(0, 4096, 2000)).astype(np.float32)
    spec = PreprocessSpec(out_height=1, out_width=997, resize="nearest", voi_function=voi_function,
                          window_center=center, window_width=width, rescale_slope=slope,
                          voi_lut=table, voi_lut_first_mapped=-500, voi_lut_bits=12)
    y = run_poisoned(ramp, spec)[0, 0, 0]
    assert np.all(np.diff(y) >= 0), "VOI output must not decrease as the stored value increases"
    inverted = run_poisoned(ramp, spec.replace(invert=True))[0, 0, 0]
    assert np.all(np.diff(inverted) <= 0), "MONOCHROME1 output must not increase"


@SETTINGS
@given(st.data())
def test_inversion_is_a_mirror_of_the_output_range(data):
    x = data.draw(strided_images())
    spec = data.draw(specs_for(x)).replace(normalize="none", letterbox=False, invert=False,
                                           output_min=data.draw(st.sampled_from([0.0, -1.0])),
                                           output_max=data.draw(st.sampled_from([1.0, 255.0])))
    plain = run_poisoned(x, spec).astype(np.float64)
    inverted = run_poisoned(x, spec.replace(invert=True)).astype(np.float64)
    scale = max(float(np.abs(plain).max()), 1.0)
    assert_close(inverted, spec.output_min + spec.output_max - plain, atol=2e-6 * scale, rtol=1e-6, what="mirror")


@SETTINGS
@given(st.data())
def test_constant_image_stays_constant(data):
    x = data.draw(strided_images())
    x = np.full_like(x, x.flat[0])
    spec = data.draw(specs_for(x)).replace(normalize=data.draw(st.sampled_from(["none", "fixed", "zscore"])))
    got = run_poisoned(x, spec).astype(np.float64)
    value = displayed(x[:1, :1], spec)[0, 0]
    if spec.normalize == "fixed":
        value = (value - spec.mean[0]) / spec.std[0]
    elif spec.normalize == "zscore":
        value = 0.0  # zero spread: every content pixel is at the mean
    g = got[0] if spec.layout == "NHWC" else np.moveaxis(got[0], 0, -1)
    top, left, ch, cw = geometry(x.shape, spec)["content"]
    content = g[top:top + ch, left:left + cw]
    # Resampling weights sum to 1 up to float32 rounding of each weight.
    assert_close(content, np.full(content.shape, value), atol=1e-6 * max(abs(value), 1.0), rtol=2e-6,
                 what="constant image")
