"""engine.load / Session on real ONNX Runtime sessions over the generated tiny models: backend choice
and its reasons, results against an independent reference pipeline, batch/run_into/stream, thread
model, and typed errors for bad input."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import engine
from engine import _native
from engine.bundle import format as fmt
from engine.bundle import open_bundle
from engine.errors import BackendUnavailable, BundleError, InputError, SessionClosed
from engine.preprocess import preprocess


def _reference_scores(bundle_path, variant, x, spec=None):
    """Independent pipeline: engine.preprocess (allocating entry point) + a plain ORT session on the
    bundled ONNX (not the optimized model) + NumPy softmax in float64."""
    with open_bundle(bundle_path) as b:
        entry = b.variants[variant]
        onnx_bytes = b.read(entry.get("onnx_cpu") or entry["onnx"])
        spec = spec or b.spec
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": preprocess(x, spec)})[0][0].astype(np.float64)
    e = np.exp(logits - logits.max())
    return e / e.sum()


# -- backend selection -------------------------------------------------------------------------------
def test_auto_chooses_cpu_and_says_why(cls_bundle):
    with engine.load(cls_bundle) as s:
        assert s.info["backend"] == "onnxruntime"
        assert s.info["precision"] == "int8"  # best on CPU: the INT8 variant passed its gate
        assert s.info["providers"] == ["CPUExecutionProvider"]
        assert s.info["model_optimized"] is True
        why = s.info["why"]
        assert why.startswith("auto: chose onnxruntime")
        n, reason = _native.cuda_devices()
        if n == 0:
            assert "tensorrt unavailable" in why and reason in why


def test_explicit_unavailable_backend_lists_what_is_available(cls_bundle):
    if engine.backends.backend_class("tensorrt").availability()[0]:
        pytest.skip("TensorRT can run here")
    with pytest.raises(BackendUnavailable, match=r"backend 'tensorrt' cannot run here: .*Available: \['openvino', 'onnxruntime'\]"):
        engine.load(cls_bundle, backend="tensorrt")
    with pytest.raises(InputError, match=r"unknown backend 'cuda'; choose 'auto' or one of \['tensorrt', 'openvino', 'onnxruntime'\]"):
        engine.load(cls_bundle, backend="cuda")


def test_available_backends_status_strings():
    status = engine.backends.available_backends()
    assert list(status) == ["tensorrt", "openvino", "onnxruntime"]  # priority order, CPU last
    assert status["onnxruntime"].startswith("available: CPUExecutionProvider")
    if _native.cuda_devices()[0] == 0:
        assert status["tensorrt"].startswith("unavailable: ") and _native.cuda_devices()[1] in status["tensorrt"]


def test_precision_choice(cls_bundle):
    with engine.load(cls_bundle, precision="fp32") as s:
        assert s.info["precision"] == "fp32"
    with pytest.raises(InputError, match=r"precision 'mixed' is not in bundle cls\.slicert \(it has \['fp16', 'fp32', 'int8'\]\)"):
        engine.load(cls_bundle, precision="mixed")
    with pytest.raises(InputError, match="precision must be one of"):
        engine.load(cls_bundle, precision="int4")


@pytest.mark.parametrize("kwargs, match", [({"max_batch": 0}, "max_batch"), ({"threads": 0}, "threads"),
                                           ({"device": -1}, "device"), ({"min_side": 0}, "min_side"),
                                           ({"min_side": 2.5}, "min_side")])
def test_bad_load_arguments(cls_bundle, kwargs, match):
    with pytest.raises(InputError, match=match):
        engine.load(cls_bundle, **kwargs)


def test_images_below_min_side_are_refused_unless_allowed(cls_bundle, rng):
    tiny = rng.integers(0, 4096, (15, 64)).astype(np.uint16)
    with engine.load(cls_bundle) as s:
        with pytest.raises(InputError, match=r"15x64 pixels, below this session's min_side=16"):
            s.run(tiny)
        with pytest.raises(InputError, match=r"min_side=16"):
            s.run_batch([tiny[:, :16].T.copy(), tiny])
        s.run(rng.integers(0, 4096, (16, 16)).astype(np.uint16))  # at the limit: accepted
    with engine.load(cls_bundle, min_side=1) as s:
        assert np.isfinite(s.run(tiny[:1, :1]).scores).all()


# -- results ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_run_matches_independent_reference(cls_bundle, variant, rng):
    with engine.load(cls_bundle, precision=variant) as s:
        for shape, dtype in (((97, 83), np.uint16), ((300, 280), np.uint16), ((64, 64), np.float32)):
            x = (rng.random(shape) * 4095).astype(dtype)
            r = s.run(x)
            ref = _reference_scores(cls_bundle, variant, x)
            assert r.scores.dtype == np.float32 and r.scores.shape == (3,)
            np.testing.assert_allclose(r.scores, ref, atol=2e-6, rtol=1e-5)
            assert r.label == s.labels[int(np.argmax(ref))]
            assert abs(float(r.scores.sum()) - 1.0) < 1e-5


def test_timings_are_per_stage_in_ms(cls_session, pixels):
    r = cls_session.run(pixels)
    t = r.timings_ms
    assert set(t) == {"decode", "preprocess", "h2d", "infer", "d2h", "postprocess", "total"}
    assert t["decode"] == 0.0 and t["h2d"] == 0.0 and t["d2h"] == 0.0  # raw array, CPU backend
    assert t["preprocess"] > 0 and t["infer"] > 0 and t["postprocess"] > 0
    assert t["total"] >= t["preprocess"] + t["infer"] + t["postprocess"]
    assert t["total"] < 1000  # milliseconds, not nanoseconds


def test_run_batch_equals_single_runs_and_chunks(cls_session, rng):
    xs = [rng.integers(0, 4096, size=(40 + 7 * i, 50), dtype=np.uint16) for i in range(6)]  # 6 > max_batch 4
    batch = cls_session.run_batch(xs)
    assert [r.batch_size for r in batch] == [4, 4, 4, 4, 2, 2]
    for x, r in zip(xs, batch):
        np.testing.assert_allclose(r.scores, cls_session.run(x).scores, atol=1e-6, rtol=1e-6)


def test_run_into_reuses_result_arrays_and_allocates_nothing_sizable(cls_session, pixels):
    out = cls_session.new_result()
    scores = out.scores
    for _ in range(20):
        cls_session.run_into(out, pixels)  # warm every lazily created binding
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(50):
            cls_session.run_into(out, pixels)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert out.scores is scores
    np.testing.assert_array_equal(out.scores, cls_session.run(pixels).scores)
    # The model input alone is 4 KiB (1x1x32x32 float32): nothing buffer-sized is allocated per call.
    assert peak < 4096, f"run_into allocated {peak} bytes at peak"


def test_spec_override_changes_only_dicom_fields(cls_session, pixels):
    narrow = cls_session.spec.replace(window_center=1000.0, window_width=200.0)
    r = cls_session.run(pixels, spec=narrow)
    np.testing.assert_allclose(r.scores, _reference_scores(cls_session.bundle.path, "fp32", pixels, narrow),
                               atol=2e-6, rtol=1e-5)
    assert not np.allclose(r.scores, cls_session.run(pixels).scores)
    # Equal specs share one cached entry (the native prepared form is built once).
    for _ in range(5):
        cls_session.run(pixels, spec=cls_session.spec.replace(window_center=1000.0, window_width=200.0))
    assert sum(1 for v in cls_session._spec_cache.values() if v == narrow) == 1


def test_threads_give_bit_identical_results(cls_session, rng):
    xs = [rng.integers(0, 4096, size=(60 + i, 70), dtype=np.uint16) for i in range(12)]
    expected = [cls_session.run(x).scores.copy() for x in xs]
    got: dict[tuple[int, int], np.ndarray] = {}
    errors = []
    barrier = threading.Barrier(4)

    def worker(t):
        try:
            barrier.wait()
            for rep in range(5):
                for i, x in enumerate(xs):
                    got[(t, rep * 100 + i)] = cls_session.run(x).scores.copy()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(got) == 4 * 5 * len(xs)
    for (t, k), scores in got.items():
        assert np.array_equal(scores, expected[k % 100]), f"thread {t} call {k} differs"
    assert len(cls_session._all) >= 2  # concurrent callers really got their own buffer sets


def test_optimized_model_falls_back_when_made_by_another_ort(cls_bundle, tmp_path, pixels):
    stale = tmp_path / "stale.slicert"
    with zipfile.ZipFile(cls_bundle) as zin, zipfile.ZipFile(stale, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == fmt.MANIFEST:
                m = json.loads(data)
                m["ort"]["version"] = "0.0.1"
                data = json.dumps(m).encode()
            zout.writestr(info.filename, data)
    with engine.load(stale, precision="fp32") as s, engine.load(cls_bundle, precision="fp32") as fresh:
        assert s.info["model_optimized"] is False
        assert "made with onnxruntime 0.0.1" in s.info["model_why"]
        np.testing.assert_allclose(s.run(pixels).scores, fresh.run(pixels).scores, atol=1e-6)
    with engine.load(cls_bundle, precision="int8", use_optimized=False) as s:
        assert s.info["model_file"] == "onnx/model.int8.cpu.onnx"  # the ONNX Runtime Q/DQ form


# -- DICOM inputs ---------------------------------------------------------------------------------------
def _ct_small():
    from pydicom.data import get_testdata_file

    return get_testdata_file("CT_small.dcm", download=False)


def test_dicom_path_bytes_dataset_and_slice_agree(cls_session):
    import pydicom

    from engine import dicom

    path = _ct_small()
    s = dicom.read(path)
    spec = s.spec_for(cls_session.spec, cls_session.voi_policy)
    expected = _reference_scores(cls_session.bundle.path, "fp32", s.pixels, spec)
    results = [cls_session.run(path), cls_session.run(Path(path).read_bytes()), cls_session.run(pydicom.dcmread(path)),
               cls_session.run(s)]
    for r in results:
        np.testing.assert_allclose(r.scores, expected, atol=2e-6, rtol=1e-5)
        assert r.frame_index == 0
    assert results[0].timings_ms["decode"] > 0 and results[3].timings_ms["decode"] == 0
    # The model's VOI (voi_policy "model"), the file's modality LUT (CT rescale to HU).
    assert spec.rescale_slope == float(s.rescale_slope) and spec.window_width == cls_session.spec.window_width


def test_dicom_slices_of_one_file_share_one_spec(cls_session):
    from engine import dicom

    s = dicom.read(_ct_small())
    cls_session.run(s)
    cls_session.run(s)
    hits = [v for k, v in cls_session._info_cache.items() if v[0] is s.info]
    assert len(hits) == 1


# -- cine streams ------------------------------------------------------------------------------------------
def test_stream_every_frame_in_order(cls_session, rng):
    frames = rng.integers(0, 4096, size=(7, 48, 40), dtype=np.uint16)
    results = list(cls_session.stream(frames, drop_stale=False))
    assert [r.frame_index for r in results] == list(range(7))
    assert all(r.dropped_frames == 0 for r in results)
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r.scores, cls_session.run(frames, frame=i).scores)


def test_stream_drop_stale_keeps_up_with_a_live_source(cls_session, rng):
    frames = rng.integers(0, 4096, size=(40, 48, 40), dtype=np.uint16)

    def live_source():  # a probe delivering a frame every 2 ms
        for i in range(len(frames)):
            time.sleep(0.002)
            yield frames[i]

    seen = []
    dropped = 0
    for r in cls_session.stream(live_source(), drop_stale=True):
        time.sleep(0.015)  # a consumer slower than the source
        seen.append(r.scores.copy())
        dropped += r.dropped_frames
    assert len(seen) + dropped == len(frames)
    assert dropped > 0
    np.testing.assert_array_equal(seen[-1], cls_session.run(frames[-1]).scores)  # the newest frame is never dropped


def test_stream_multiframe_dicom_file(cls_session):
    from pydicom.data import get_testdata_file

    from engine import dicom

    path = get_testdata_file("emri_small.dcm", download=False)
    results = list(cls_session.stream(path, drop_stale=False))
    assert [r.frame_index for r in results] == list(range(10))
    seq = dicom.read(path)
    np.testing.assert_array_equal(results[3].scores, cls_session.run(seq[3]).scores)
    with pytest.raises(InputError, match="holds 10 frames: use session.stream"):
        cls_session.run(path)


def test_stream_source_errors_reach_the_caller(cls_session, rng):
    def broken():
        yield rng.integers(0, 4096, size=(32, 32), dtype=np.uint16)
        raise OSError("probe disconnected")

    it = cls_session.stream(broken(), drop_stale=False)
    next(it)
    with pytest.raises(OSError, match="probe disconnected"):
        next(it)


# -- bad input ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("x, match", [
    (np.zeros((32, 32), np.float64), "dtype float64 is not supported"),
    (np.zeros(100, np.uint16), "does not match in_channels=1"),
    (np.zeros((0, 32), np.uint16), "empty"),
    (np.zeros((40, 40, 3), np.uint8), r"looks like RGB.*in_channels=3"),
    (np.zeros((5, 40, 40), np.uint16), r"pass frame=<index>"),
    ([[1, 2], [3, 4]], "cannot run on a list"),
])
def test_bad_arrays_get_typed_errors_with_the_fix(cls_session, x, match):
    with pytest.raises(InputError, match=match):
        cls_session.run(x)


def test_nan_input_is_refused(cls_session, rng):
    x = rng.random((40, 40)).astype(np.float32)
    x[13, 7] = np.nan
    with pytest.raises(InputError, match="NaN or Inf"):
        cls_session.run(x)


def test_spec_not_matching_the_bundle(cls_session, pixels):
    with pytest.raises(InputError, match=r"out_height=64 \(bundle: 32\).*session\.spec\.replace"):
        cls_session.run(pixels, spec=cls_session.spec.replace(out_height=64))
    with pytest.raises(InputError, match=r"normalize='none' \(bundle: 'fixed'\)"):
        cls_session.run(pixels, spec=cls_session.spec.replace(normalize="none"))
    with pytest.raises(InputError, match="must be an engine.spec.PreprocessSpec"):
        cls_session.run(pixels, spec={"window_center": 3})


def test_gpu_array_on_cpu_session(cls_session):
    class FakeCudaArray:  # just the protocol attribute CuPy/PyTorch/pycuda expose
        __cuda_array_interface__ = {"shape": (32, 32), "typestr": "<u2", "data": (0, False), "version": 3}

    with pytest.raises(InputError, match="GPU array.*copy it to host memory first.*backend='tensorrt'"):
        cls_session.run(FakeCudaArray())


def test_closed_session(cls_bundle, pixels):
    s = engine.load(cls_bundle)
    out = s.new_result()
    s.close()
    s.close()  # idempotent
    for call in (lambda: s.run(pixels), lambda: s.run_into(out, pixels), lambda: s.run_batch([pixels]),
                 lambda: next(s.stream(pixels[None]))):
        with pytest.raises(SessionClosed, match="is closed; load it again"):
            call()


def test_newer_schema_bundle_refused_at_load(cls_bundle, tmp_path):
    newer = tmp_path / "newer.slicert"
    with zipfile.ZipFile(cls_bundle) as zin, zipfile.ZipFile(newer, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == fmt.MANIFEST:
                m = json.loads(data)
                m["schema_version"] = 7
                data = json.dumps(m).encode()
            zout.writestr(info.filename, data)
    with pytest.raises(BundleError, match=r"schema version 7 is newer.*pip install -U slicert"):
        engine.load(newer)


def test_tampered_bundle_refused_at_load(cls_bundle, tmp_path):
    with open_bundle(cls_bundle) as b:
        start, size = b._offsets["ort/model.int8.ort.onnx"]
    bad = tmp_path / "bad.slicert"
    raw = bytearray(cls_bundle.read_bytes())
    raw[start + size - 3] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"'ort/model\.int8\.ort\.onnx' failed its SHA-256 check"):
        engine.load(bad)


def test_import_engine_is_light_until_a_backend_runs(cls_bundle):
    code = f"""
import sys, engine, engine.session, engine.bundle, engine.backends
heavy = lambda: sorted(m for m in ('torch', 'tensorrt', 'tensorrt_lean', 'onnxruntime', 'openvino', 'pydicom', 'onnx')
                       if m in sys.modules)
print(heavy())
engine.backends.available_backends()
with engine.bundle.open_bundle({str(cls_bundle)!r}) as b:
    pass
print(heavy())
s = engine.load({str(cls_bundle)!r})
print(heavy())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "[]"  # listing backends and verifying a bundle import nothing heavy
    assert out[2] == "['onnxruntime']"  # the CPU backend imports only what it needs


def test_rgb_ultrasound_dicom_on_a_grey_model(cls_session):
    from pydicom.data import get_testdata_file

    from engine import dicom

    path = get_testdata_file("US1_UNCR.dcm", download=False)
    s = dicom.read(path)
    assert s.pixels.shape[-1] == 3
    spec = s.spec_for(cls_session.spec, cls_session.voi_policy)
    assert spec.in_channels == 3 and spec.out_channels == 1  # BT.601 luma into the grey model
    r = cls_session.run(path)
    np.testing.assert_allclose(r.scores, _reference_scores(cls_session.bundle.path, "fp32", s.pixels, spec),
                               atol=2e-6, rtol=1e-5)


def test_cpu_dlpack_objects_are_read_without_copy(cls_session, pixels):
    class DLPackOnly:  # e.g. a CPU tensor of another framework: only the DLPack protocol
        def __init__(self, a):
            self._a = a

        def __dlpack__(self, **kwargs):
            return self._a.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self._a.__dlpack_device__()

    np.testing.assert_array_equal(cls_session.run(DLPackOnly(pixels)).scores, cls_session.run(pixels).scores)


def test_stream_closed_early_stops_the_decoder_thread(cls_session, rng):
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            i += 1
            yield rng.integers(0, 4096, size=(32, 32), dtype=np.uint16)

    before = threading.active_count()
    gen = cls_session.stream(endless(), drop_stale=False)
    next(gen)
    gen.close()  # the caller stops reading: the producer must stop too
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before
    n = len(produced)
    time.sleep(0.05)
    assert len(produced) == n


@pytest.mark.parametrize("spacing", ["abc", (1.0,), (1.0, 2.0, 3.0), (1e300, 1e300), [[0.5, 0.5]], (0.0, 1.0),
                                     (float("nan"), 1.0), (-1.0, 1.0)])
def test_bad_pixel_spacing(cls_session, pixels, spacing):
    with pytest.raises(InputError, match="pixel_spacing_mm"):
        cls_session.run(pixels, pixel_spacing_mm=spacing)


@pytest.mark.parametrize("path", [None, 42, ["a.slicert"]])
def test_load_needs_a_path(path):
    with pytest.raises(InputError, match="path must be a str or os.PathLike"):
        engine.load(path)


def test_missing_dicom_path_is_a_dicom_error(cls_session, tmp_path):
    from engine.errors import DicomError

    with pytest.raises(DicomError, match="cannot read DICOM .*missing.dcm"):
        cls_session.run(str(tmp_path / "missing.dcm"))
    with pytest.raises(DicomError, match="cannot read DICOM"):
        cls_session.run(tmp_path)


def test_inference_leaves_the_callers_float_environment_alone(cls_bundle, pixels):
    """No FTZ/DAZ left behind on the calling thread: the caller's own arithmetic must keep subnormals."""
    def subnormals_work():
        return 5e-324 * 1.0 != 0.0 and (2.2250738585072014e-308 / 2.0) != 0.0

    assert subnormals_work()
    with engine.load(cls_bundle) as s:
        s.run(pixels)
        s.run_batch([pixels, pixels])
    assert subnormals_work()


def _repack_with_model(cls_bundle, tmp_path, model, name):
    """The classifier bundle with its FP32 ONNX replaced by `model` and digests recomputed: integrity
    checks pass, only the model/manifest consistency check can catch it."""
    from engine.bundle import write_bundle

    with open_bundle(cls_bundle) as b:
        manifest = json.loads(json.dumps(b.manifest))
        members = {n: b.read(n) for n in b.members}
    manifest["variants"] = {"fp32": {"onnx": "onnx/model.fp32.onnx"}}
    manifest["default_variant"] = {"onnxruntime": "fp32", "tensorrt": "fp32"}
    members = {n: d for n, d in members.items() if not n.startswith(("ort/", "onnx/"))}
    members["onnx/model.fp32.onnx"] = model.SerializeToString()
    manifest.pop("members")
    return write_bundle(tmp_path / name, manifest, members)


def test_model_and_manifest_must_agree(cls_bundle, tmp_path):
    import onnx

    import tiny_models

    five = tiny_models.classifier()
    w = onnx.numpy_helper.to_array(next(i for i in five.graph.initializer if i.name == "fc_w"))
    for init in five.graph.initializer:
        if init.name == "fc_w":
            init.CopyFrom(onnx.numpy_helper.from_array(np.resize(w, (5, w.shape[1])).astype(np.float32), "fc_w"))
        if init.name == "fc_b":
            init.CopyFrom(onnx.numpy_helper.from_array(np.zeros(5, np.float32), "fc_b"))
    five.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5
    with pytest.raises(BundleError, match=r"output 'scores' has shape \['N', 5\], expected \[N, 3\]"):
        engine.load(_repack_with_model(cls_bundle, tmp_path, five, "five.slicert"))

    renamed = tiny_models.classifier()
    renamed.graph.node[-1].output[0] = "probs"
    renamed.graph.output[0].name = "probs"
    with pytest.raises(BundleError, match=r"has no output 'scores' \(it has \['probs'\]\)"):
        engine.load(_repack_with_model(cls_bundle, tmp_path, renamed, "renamed.slicert"))

    wide = tiny_models.classifier()
    for d, v in zip(wide.graph.input[0].type.tensor_type.shape.dim[2:], (64, 64)):
        d.dim_value = v
    with pytest.raises(BundleError, match=r"input 'input' has shape \['N', 1, 64, 64\].*\['N', 1, 32, 32\]"):
        engine.load(_repack_with_model(cls_bundle, tmp_path, wide, "wide.slicert"))


def test_garbage_model_with_valid_digests_is_a_bundle_error(cls_bundle, tmp_path):
    class Garbage:
        def SerializeToString(self):
            return b"\x08\x07" + bytes(range(256)) * 8

    # Refused when the bundle is opened (engine/bundle/onnx_guard.py reads every ONNX member's protobuf).
    with pytest.raises(BundleError, match=r"member 'onnx/model\.fp32\.onnx' is not an ONNX model"):
        engine.load(_repack_with_model(cls_bundle, tmp_path, Garbage(), "garbage.slicert"))


def test_close_while_other_threads_wait_for_buffers(cls_bundle, rng):
    """At the concurrency limit, callers wait for a free buffer set; close() must wake them with
    SessionClosed instead of leaving them blocked."""
    from engine.session import Session, _select_backend

    b = open_bundle(cls_bundle)
    cls, variant, why = _select_backend(b, "onnxruntime", "fp32", {})
    backend = cls(b, variant=variant).activate()
    s = Session(b, backend, why=why, variant=variant, max_concurrency=1)
    x = rng.integers(0, 4096, size=(64, 64), dtype=np.uint16)
    outcomes = []
    started = threading.Barrier(4)

    def worker():
        started.wait()
        try:
            for _ in range(10**6):  # until the session is closed under it
                s.run(x)
            outcomes.append("never closed")
        except SessionClosed:
            outcomes.append("closed")

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    started.wait()
    time.sleep(0.05)  # all three contend for the single buffer set
    s.close()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert outcomes == ["closed"] * 3
