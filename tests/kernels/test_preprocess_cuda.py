"""CUDA preprocessing and CUDA resources. On a machine without a device only the typed-error tests
run; the `gpu` tests compare the CUDA kernel with the CPU kernel (itself checked against the NumPy
reference), with the tolerance of two float32 implementations of the same math: 1e-5 * range +
1e-5 * |ref| (float32), plus one half-precision rounding (float16), one quantization step (int8)."""
from __future__ import annotations

import numpy as np
import pytest

from engine import _native
from engine.errors import BackendUnavailable, CudaError, InputError
from engine.preprocess import cuda_prepare, output_shape, preprocess, preprocess_cuda_into
from engine.spec import PreprocessSpec

from .conftest import assert_close

HAVE_DEVICE = _native.cuda_devices()[0] > 0
_OUT = {"float32": np.float32, "float16": np.float16, "int8": np.int8}


@pytest.mark.skipif(HAVE_DEVICE, reason="this machine has a CUDA device")
@pytest.mark.parametrize("make", [lambda: _native.Stream(), lambda: _native.Stream(device=3),
                                  lambda: _native.Event(), lambda: _native.DeviceBuffer(1024),
                                  lambda: _native.PinnedBuffer(1024)],
                         ids=["stream", "stream-dev3", "event", "device-buffer", "pinned-buffer"])
def test_no_device_gives_a_typed_error(make):
    expected = CudaError if _native.cuda_compiled() else BackendUnavailable
    with pytest.raises(expected) as info:
        make()
    if expected is CudaError:
        n, reason = _native.cuda_devices()
        assert info.value.code > 0 and info.value.file.endswith("cuda_resources.cpp") and info.value.line > 0
        assert reason.split(" ")[0] in str(info.value)  # the same cudaError name cuda_devices() reports


def test_cuda_entry_points_refuse_without_a_stream():
    spec = PreprocessSpec(out_height=4, out_width=4)
    with pytest.raises((TypeError, InputError, BackendUnavailable)):
        preprocess_cuda_into(0, 0, (4, 4), (8, 2), np.uint16, spec, None)


# ----------------------------------------------------------------------------------------------
def _upload(x: np.ndarray, stream) -> tuple:
    """Device copy of x's whole base buffer + the byte offset/strides of x inside it (strided views
    stay strided on the device)."""
    base = x
    while base.base is not None and isinstance(base.base, np.ndarray):
        base = base.base
    lo, _ = np.lib.array_utils.byte_bounds(base)
    xlo, _ = np.lib.array_utils.byte_bounds(x)
    buf = _native.DeviceBuffer(base.nbytes)
    buf.copy_from_host(np.ascontiguousarray(base).view(np.uint8).reshape(-1), stream)
    origin = x.__array_interface__["data"][0] - lo
    return buf, origin, xlo


def run_cuda(x: np.ndarray, spec: PreprocessSpec, *, batch: int = 1, batch_index: int = 0) -> np.ndarray:
    stream = _native.Stream()
    assert x.base is None or x.base.flags.c_contiguous
    buf, origin, _ = _upload(x, stream)
    dtype = _OUT[spec.out_dtype]
    host = np.full(output_shape(spec, batch), -77 if dtype is np.int8 else np.nan, dtype=dtype)
    out = _native.DeviceBuffer(host.nbytes)
    out.copy_from_host(host, stream)
    preprocess_cuda_into(out, buf.ptr + origin, x.shape, x.strides, x.dtype, spec, stream, batch_index)
    out.copy_to_host(host, stream)
    stream.synchronize()
    if dtype is not np.int8:
        assert not np.isnan(host[batch_index]).any(), "some output elements were never written"
        assert np.isnan(np.delete(host, batch_index, axis=0)).all(), "another batch slot was written"
    return host[batch_index:batch_index + 1]


def compare(x, spec):
    gpu = run_cuda(x, spec)
    cpu = preprocess(x, spec)
    if spec.out_dtype == "int8":
        assert np.abs(gpu.astype(np.int16) - cpu).max() <= 1
        return
    ref = cpu.astype(np.float64)
    scale = max(spec.output_max - spec.output_min, float(np.abs(ref).max()), 1.0)
    rtol = 1e-5 + (2.0 ** -11 if spec.out_dtype == "float16" else 0.0)
    assert_close(gpu, ref, atol=1e-5 * scale, rtol=rtol, what=f"cuda vs cpu {spec.to_dict()}")


SPECS = [
    dict(voi_function="linear", window_center=2000, window_width=3000, invert=True),
    dict(voi_function="linear_exact", window_center=1500, window_width=1000, resize="bilinear"),
    dict(voi_function="sigmoid", window_center=1800, window_width=900, resize="nearest", letterbox=True, pad_value=-1),
    dict(voi_function="linear", window_center=2000, window_width=3000, roi=(5, 7, 50, 60), normalize="zscore"),
    dict(voi_function="linear", window_center=2000, window_width=3000, normalize="minmax", out_dtype="float16",
         layout="NHWC", out_channels=3),
    dict(voi_function="linear", window_center=2000, window_width=3000, out_dtype="int8", quant_scale=1 / 100,
         normalize="fixed", mean=(0.5,), std=(0.25,)),
    dict(voi_function="linear", window_center=2000, window_width=3000, equalize=True),
    dict(modality_lut=np.linspace(-100, 900, 3000), modality_lut_first_mapped=100, voi_function="lut",
         voi_lut=np.arange(0, 4096, 2.0), voi_lut_first_mapped=-50, voi_lut_bits=12),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float32],
                         ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kw", SPECS, ids=range(len(SPECS)))
def test_cuda_matches_cpu(rng, dtype, kw):
    hi = 255 if dtype == np.uint8 else 4095
    x = rng.integers(1, hi, (90, 110)).astype(dtype)
    compare(x, PreprocessSpec(out_height=37, out_width=53, **kw))


@pytest.mark.gpu
@pytest.mark.parametrize("resize", ["nearest", "bilinear", "area"])
@pytest.mark.parametrize("out_hw", [(16, 16), (64, 48), (200, 300)])
def test_cuda_resize_and_strides(rng, resize, out_hw):
    big = rng.integers(0, 4096, (3, 150, 170), dtype=np.uint16)
    spec = PreprocessSpec(out_height=out_hw[0], out_width=out_hw[1], resize=resize, voi_function="linear",
                          window_center=2000, window_width=4000)
    for view in (big[1], big[2, 10:120, 5:160:2], big[0, ::-1, ::-3]):
        compare(view, spec)


@pytest.mark.gpu
@pytest.mark.parametrize("in_c,out_c", [(3, 1), (3, 3)])
def test_cuda_rgb(rng, in_c, out_c):
    x = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    compare(x, PreprocessSpec(out_height=30, out_width=40, in_channels=in_c, out_channels=out_c, output_max=255.0,
                              resize="bilinear"))


@pytest.mark.gpu
def test_cuda_batch_slot(rng):
    x = rng.integers(0, 4096, (64, 64), dtype=np.uint16)
    spec = PreprocessSpec(out_height=16, out_width=16, voi_function="linear", window_center=2000, window_width=3000)
    np.testing.assert_allclose(run_cuda(x, spec, batch=4, batch_index=2), preprocess(x, spec), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_cuda_bad_input(rng):
    spec = PreprocessSpec(out_height=8, out_width=8)
    stream = _native.Stream()
    buf = _native.DeviceBuffer(64 * 64 * 4)
    out = _native.DeviceBuffer(8 * 8 * 4)
    with pytest.raises(InputError, match="reach outside"):
        preprocess_cuda_into(out, buf, (64, 65), (256, 4), np.float32, spec, stream)
    with pytest.raises(InputError, match="multiple of the 4-byte"):
        preprocess_cuda_into(out, buf, (32, 32), (256, 6), np.float32, spec, stream)
    with pytest.raises(InputError, match="out of range"):
        preprocess_cuda_into(out, buf, (32, 32), (256, 4), np.float32, spec, stream, batch_index=1)
    with pytest.raises(InputError, match="empty"):
        preprocess_cuda_into(out, buf, (0, 32), (256, 4), np.float32, spec, stream)
    x = rng.random((64, 64)).astype(np.float32)
    x[3, 9] = np.nan
    buf.copy_from_host(x, stream)
    with pytest.raises(InputError, match=r"NaN or Inf \(first at ROI row 3, column 9\)"):
        preprocess_cuda_into(out, buf, (64, 64), (256, 4), np.float32, spec, stream)
    with pytest.raises(InputError, match="exceed"):
        buf.copy_from_host(np.zeros(64 * 64 + 1, np.float32), stream)


@pytest.mark.gpu
def test_cuda_graph_replays_preprocess_and_events_time_it(rng):
    spec = PreprocessSpec(out_height=64, out_width=64, voi_function="linear", window_center=2000, window_width=3000,
                          voi_lut=np.arange(4096.0), normalize="zscore")
    stream = _native.Stream()
    pinned = _native.PinnedBuffer(512 * 512 * 2)
    host_in = pinned.array(np.uint16, (512, 512))
    dev_in = _native.DeviceBuffer(host_in.nbytes)
    dev_out = _native.DeviceBuffer(64 * 64 * 4)
    cuda_prepare(spec)
    graph = _native.CudaGraph()
    graph.begin_capture(stream)
    dev_in.copy_from_host(host_in, stream)
    preprocess_cuda_into(dev_out, dev_in, (512, 512), (1024, 2), np.uint16, spec, stream)
    graph.end_capture(stream)
    assert graph.ready
    start, end = _native.Event(), _native.Event()
    for _ in range(2):  # new pixels each time through the same pinned buffer
        x = rng.integers(0, 4096, (512, 512), dtype=np.uint16)
        host_in[...] = x
        start.record(stream)
        graph.launch(stream)
        end.record(stream)
        got = np.empty((1, 1, 64, 64), np.float32)
        dev_out.copy_to_host(got, stream)
        stream.synchronize()
        assert end.query() and end.elapsed_ms(start) > 0
        np.testing.assert_allclose(got, preprocess(x, spec), rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="check_finite=False"):
        graph2 = _native.CudaGraph()
        graph2.begin_capture(stream)
        try:
            preprocess_cuda_into(dev_out, dev_in, (256, 256), (1024, 4), np.float32, spec, stream)
        finally:
            graph2.end_capture(stream)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_cuda_argmax_matches_cpu(rng, dtype):
    from engine.postprocess import argmax_mask, argmax_mask_cuda_into

    logits = rng.standard_normal((5, 70, 90)).astype(dtype)
    stream = _native.Stream()
    dev_logits = _native.DeviceBuffer(logits.nbytes)
    dev_logits.copy_from_host(logits, stream)
    dev_mask = _native.DeviceBuffer(70 * 90)
    argmax_mask_cuda_into(dev_mask, dev_logits, logits.shape, dtype, stream)
    got = np.full((70, 90), 255, np.uint8)
    dev_mask.copy_to_host(got, stream)
    stream.synchronize()
    np.testing.assert_array_equal(got, argmax_mask(logits))
    with pytest.raises(InputError, match="exceed"):
        argmax_mask_cuda_into(dev_mask, dev_logits, (6, 70, 90), dtype, stream)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_cuda_argmax_flags_non_finite_logits(rng, dtype):
    """The flag byte the TensorRT backend reads instead of the logits: cleared, then set by the kernel when
    any logit is NaN/Inf; the mask is the CPU path's (CPU reference: test_postprocess.py::
    test_device_argmax_rule_matches_the_cpu_path). Also replayed from a CUDA graph, as the backend does."""
    from engine.postprocess import argmax_mask_into

    stream = _native.Stream()
    logits = rng.standard_normal((3, 70, 90)).astype(dtype)
    dev_logits = _native.DeviceBuffer(logits.nbytes)
    row = _native.DeviceBuffer(70 * 90 + 1)  # mask bytes, then the flag byte: the backend's layout
    got = np.empty(70 * 90 + 1, np.uint8)
    for bad in (None, np.nan, np.inf, -np.inf, None):
        x = logits.copy()
        if bad is not None:
            x[2, 69, 89] = bad
        row.memset(7, stream)  # a stale flag value must not survive
        dev_logits.copy_from_host(x, stream)
        _native.argmax_mask_cuda_into(row, dev_logits, x.shape, np.dtype(dtype).name, stream, row.ptr + 70 * 90)
        row.copy_to_host(got, stream)
        stream.synchronize()
        want = np.empty((70, 90), np.uint8)
        finite = argmax_mask_into(want, x)
        assert got[-1] == (0 if finite else 1) and finite is (bad is None)
        np.testing.assert_array_equal(got[:-1].reshape(70, 90), want)
    graph = _native.CudaGraph()
    graph.begin_capture(stream)
    _native.argmax_mask_cuda_into(row, dev_logits, logits.shape, np.dtype(dtype).name, stream, row.ptr + 70 * 90)
    graph.end_capture(stream)
    x = logits.copy()
    x[0, 0, 0] = np.nan
    dev_logits.copy_from_host(x, stream)
    graph.launch(stream)
    row.copy_to_host(got, stream)
    stream.synchronize()
    assert got[-1] == 1


@pytest.mark.gpu
def test_cuda_float16_saturates_instead_of_inf():
    # The CPU path refuses these (InputError); the device path cannot without a sync, so it saturates.
    x = np.array([[1.0, 70000.0, -1e30, 3.0]], dtype=np.float32)
    spec = PreprocessSpec(out_height=1, out_width=4, resize="nearest", out_dtype="float16")
    got = run_cuda(x, spec)[0, 0, 0].astype(np.float32)
    np.testing.assert_array_equal(got, [1.0, 65504.0, -65504.0, 3.0])
