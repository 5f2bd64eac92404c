"""Bad input to the preprocessing kernel raises a typed error naming the problem, before any write."""
from __future__ import annotations

import numpy as np
import pytest

from engine import _native
from engine.errors import InputError
from engine.preprocess import output_shape, preprocess, preprocess_into, set_num_threads
from engine.spec import PreprocessSpec

SPEC = PreprocessSpec(out_height=16, out_width=16, voi_function="linear", window_center=100, window_width=50)


@pytest.fixture
def image(rng):
    return rng.integers(1, 4096, (40, 50), dtype=np.uint16)


def _out(spec=SPEC, batch=1, dtype=np.float32):
    return np.full(output_shape(spec, batch), np.nan, dtype=dtype)


@pytest.mark.parametrize("shape", [(0, 10), (10, 0), (0, 0)])
def test_empty_image(shape):
    with pytest.raises(InputError, match="empty"):
        preprocess(np.ones(shape, np.uint16), SPEC)


@pytest.mark.parametrize("dtype", [np.float64, np.int64, np.uint32, np.int8, np.bool_, np.complex64])
def test_unsupported_dtype(dtype):
    with pytest.raises(InputError, match="dtype"):
        preprocess(np.ones((8, 8), dtype), SPEC)


def test_big_endian_is_named(image):
    with pytest.raises(InputError, match="byte order"):
        preprocess(image.astype(">u2"), SPEC)


def test_not_an_array():
    with pytest.raises(InputError, match="numpy.ndarray"):
        preprocess([[1, 2], [3, 4]], SPEC)


def test_strides_outside_the_buffer(image):
    flat = image.ravel()[:100]  # a view owning no memory of its own
    bad = np.lib.stride_tricks.as_strided(flat, shape=(64, 64), strides=(4096, 2))
    with pytest.raises(InputError, match="reach outside"):
        preprocess(bad, SPEC)
    # Same trick but staying inside the base buffer is fine (and read in place).
    ok = np.lib.stride_tricks.as_strided(image, shape=(20, 25), strides=(image.strides[0] * 2, 4))
    np.testing.assert_array_equal(preprocess(ok, SPEC), preprocess(np.ascontiguousarray(ok), SPEC))


def test_strides_outside_a_bytes_buffer():
    buf = bytes(range(256)) * 2
    base = np.frombuffer(buf, dtype=np.uint16)
    bad = np.lib.stride_tricks.as_strided(base, shape=(32, 32), strides=(64, 4))
    with pytest.raises(InputError, match="reach outside"):
        preprocess(bad, SPEC)


def test_non_finite_float_pixels_are_refused(rng):
    x = rng.random((30, 30)).astype(np.float32)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[7, 11] = bad
        out = _out()
        with pytest.raises(InputError, match=r"NaN or Inf \(first at ROI row 7, column 11\)"):
            preprocess_into(out, y, SPEC)
    # Outside the ROI they are never read, so they are allowed.
    y = x.copy()
    y[0, 0] = np.nan
    assert np.isfinite(preprocess(y, SPEC.replace(roi=(1, 1, 20, 20)))).all()


def test_output_checks(image):
    with pytest.raises(InputError, match="C-contiguous"):
        preprocess_into(np.zeros((1, 1, 16, 32), np.float32)[..., ::2], image, SPEC)
    with pytest.raises(InputError, match="C-contiguous"):
        preprocess_into(np.asfortranarray(np.zeros((2, 1, 16, 16), np.float32)), image, SPEC)
    with pytest.raises(InputError, match=r"output shape \(1, 1, 16, 15\)"):
        preprocess_into(np.zeros((1, 1, 16, 15), np.float32), image, SPEC)
    with pytest.raises(InputError, match="NCHW"):
        preprocess_into(np.zeros((1, 16, 16, 1), np.float32)[:, :, :, :1].reshape(1, 16, 1, 16), image, SPEC)
    with pytest.raises(InputError, match=r"output dtype float16 does not match spec.out_dtype=float32"):
        preprocess_into(np.zeros((1, 1, 16, 16), np.float16), image, SPEC)
    with pytest.raises(InputError, match="output shape"):
        preprocess_into(np.zeros((16, 16), np.float32), image, SPEC)
    ro = np.zeros((1, 1, 16, 16), np.float32)
    ro.flags.writeable = False
    with pytest.raises(InputError, match="read-only"):
        preprocess_into(ro, image, SPEC)
    with pytest.raises(InputError, match="out must be a numpy.ndarray"):
        preprocess_into([0.0], image, SPEC)


@pytest.mark.parametrize("index", [-1, 3, 10**12])
def test_batch_index_out_of_range(image, index):
    out = _out(batch=3)
    with pytest.raises(InputError, match="batch_index .* out of range for a batch of 3"):
        preprocess_into(out, image, SPEC, index)
    assert np.isnan(out).all(), "nothing may be written when the call is refused"


def test_output_sharing_memory_with_input_is_refused():
    buf = np.zeros(4096, np.float32)
    x = buf[:1024].reshape(32, 32)
    out = buf[:256].reshape(1, 1, 16, 16)
    with pytest.raises(InputError, match="share memory"):
        preprocess_into(out, x, SPEC)


def test_spec_checks_window_and_slope():
    with pytest.raises(InputError, match="window_width.*>= 1"):
        PreprocessSpec(out_height=4, out_width=4, voi_function="linear", window_width=0.5)
    for bad in (np.nan, np.inf):
        with pytest.raises(InputError, match="rescale_slope"):
            PreprocessSpec(out_height=4, out_width=4, rescale_slope=bad)


def test_native_rechecks_a_spec_mutated_after_validation(image):
    # A frozen spec can still be forced; the native side must not trust it.
    for field, value, message in (("window_width", 0.25, "window_width"), ("rescale_slope", float("nan"), "rescale_slope"),
                                  ("rescale_slope", 1e300, "float32"), ("output_max", -1.0, "output_max"),
                                  ("resize", "lanczos", "resize"), ("window_center", "40", "window_center"),
                                  ("voi_lut_first_mapped", 10**30, "voi_lut_first_mapped"),
                                  ("roi", (10**30,) * 4, "roi"), ("invert", None, "invert"),
                                  ("mean", "0.5", "mean")):
        spec = PreprocessSpec(out_height=8, out_width=8, voi_function="linear", window_center=10, window_width=20)
        object.__setattr__(spec, field, value)
        with pytest.raises(InputError, match=message):
            preprocess(image, spec)


def test_roi_outside_the_image(image):
    with pytest.raises(InputError, match=r"roi .* reaches outside the 40x50 image"):
        preprocess(image, SPEC.replace(roi=(30, 0, 11, 10)))


def test_frames_need_a_valid_index(rng):
    frames = rng.integers(0, 100, (4, 20, 20), dtype=np.uint8)
    with pytest.raises(InputError, match="pass frame="):
        preprocess(frames, SPEC)
    with pytest.raises(InputError, match="out of range for 4 frames"):
        preprocess(frames, SPEC, frame=4)
    with pytest.raises(InputError, match="single frame"):
        preprocess(frames[0], SPEC, frame=2)
    np.testing.assert_array_equal(preprocess(frames, SPEC, frame=-1), preprocess(frames[3], SPEC))


def test_channel_mismatch(rng):
    rgb = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
    with pytest.raises(InputError, match="in_channels=1: pass frame=<index> .* or use in_channels=3"):
        preprocess(rgb, SPEC)
    with pytest.raises(InputError, match=r"in_channels=3: expected \(H, W, 3\)"):
        preprocess(rgb[..., 0], SPEC.replace(in_channels=3))
    with pytest.raises(InputError, match="one grey channel"):
        preprocess(rgb, SPEC.replace(in_channels=3, out_channels=3, equalize=True))


def test_spec_type_and_threads():
    with pytest.raises(InputError, match="PreprocessSpec"):
        preprocess(np.ones((4, 4), np.uint8), {"out_height": 4, "out_width": 4})
    for bad in (0, -1, 1000):
        with pytest.raises(InputError, match="set_num_threads"):
            set_num_threads(bad)
    with pytest.raises(InputError, match="integer"):
        set_num_threads(2.5)


def test_native_entry_validates_on_its_own(image):
    # The wrappers check first; the native function must still refuse bad arrays when called directly.
    prepared = _native.PreparedSpec(SPEC)
    with pytest.raises(InputError, match="2-D"):
        _native.preprocess_into(_out(), image[None], prepared, 0)
    with pytest.raises(InputError, match="empty"):
        _native.preprocess_into(_out(), image[:0], prepared, 0)
    with pytest.raises(InputError, match="dtype"):
        _native.preprocess_into(_out(), image.astype(np.float64), prepared, 0)
