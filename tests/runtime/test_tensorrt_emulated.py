"""The TensorRT backend's control flow, executed on a HOST-MEMORY EMULATION of the device
(tests/runtime/fake_device_trt.py). This is not GPU verification: TensorRT is ONNX Runtime here and
CUDA is Python queues. What these tests prove is that SliceRT's own code (activation, engine choice,
contexts per batch size, staging, graph cache, capture fallback, device arrays, devices, threads)
does what the GPU review (docs/gpu-path-status.md) says it must, on an emulation that gives the wrong
answer a GPU would give when that code misuses TensorRT or CUDA.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

import engine
import engine.device
from engine.backends.tensorrt import TensorRTBackend
from engine.errors import BackendUnavailable, BundleError, EngineMismatch, InputError, SessionClosed

import fake_device_trt as fake


@pytest.fixture
def emu():
    """A fresh emulated device installed below the seam; every misuse it saw fails the test."""
    dev = fake.EmulatedDevice()
    previous = engine.device.install(dev)
    try:
        yield dev
    finally:
        engine.device.install(previous)
    assert dev.hazards == []


def _build(source, out, **kw):
    from engine.bundle import build_bundle

    dev = fake.EmulatedDevice(devices=kw.pop("devices", fake.DEVICES))
    previous = engine.device.install(dev)
    try:
        build_bundle(source, out, **kw)
    finally:
        engine.device.install(previous)
    assert dev.hazards == []
    return out


@pytest.fixture(scope="module")
def trt_bundles(model_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("emulated-trt")
    return {
        "cls": _build(model_dirs["cls_quant"], root / "cls.slicert", precision="best", target="auto", max_batch=8),
        "seg": _build(model_dirs["seg_export"], root / "seg.slicert", precision="fp32", target="auto", max_batch=8),
    }


def _images(n, seed=5, shape=(97, 83)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 4096, size=shape, dtype=np.uint16) for _ in range(n)]


def _scores(results):
    return np.stack([r.scores for r in results])


# -- D1: the INT8 fixture is in TensorRT's Q/DQ form --------------------------------------------------
def test_d1_int8_fixture_follows_the_tensorrt_quantizer_rules(model_dirs, trt_bundles):
    import onnx

    from engine.bundle import open_bundle
    from tools.quantize.int8 import qdq_problems

    assert qdq_problems(onnx.load(model_dirs["cls_quant"] / "model.int8.onnx"), "tensorrt") == []
    with open_bundle(trt_bundles["cls"]) as b:
        assert sorted(e["variant"] for e in b.engines) == sorted(b.variants) == ["fp16", "fp32", "int8"]


def test_d1_emulated_parser_refuses_asymmetric_qdq(tmp_path, model_dirs):
    """The rule the old fixture broke, as TensorRT's parser applies it."""
    import shutil

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    import tiny_models

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.it = iter([{"input": rng.standard_normal((1, 1, 32, 32)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.it, None)

    folder = tmp_path / "quant"
    shutil.copytree(model_dirs["cls_quant"], folder)
    onnx.save(tiny_models.classifier(), tmp_path / "fp32.onnx")
    quantize_static(str(tmp_path / "fp32.onnx"), str(folder / "model.int8.onnx"), Reader(),  # ORT defaults
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)
    import hashlib
    import json

    report = json.loads((folder / "accuracy_report.json").read_text())
    report["variants"]["int8"]["sha256"] = hashlib.sha256((folder / "model.int8.onnx").read_bytes()).hexdigest()
    (folder / "accuracy_report.json").write_text(json.dumps(report))
    with pytest.raises(BundleError, match="symmetric quantization"):
        _build(folder, tmp_path / "bad.slicert", precision="int8", target="tensorrt")


# -- D3: batch sizes changing between calls -----------------------------------------------------------
def test_d3_mixed_batch_sizes_equal_eager(emu, trt_bundles):
    imgs = _images(19)
    with engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32", max_batch=8) as s, \
            engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32", max_batch=8,
                        cuda_graph=False) as eager:
        want_batch = _scores(eager.run_batch(imgs))  # chunks 8, 8, 3
        want_single = _scores([eager.run(x) for x in imgs[:4]])
        for _ in range(3):  # graphs get captured in round 2 and replayed in round 3
            got_batch = _scores(s.run_batch(imgs))
            got_single = _scores([s.run(x) for x in imgs[:4]])
            np.testing.assert_array_equal(got_batch, want_batch)
            np.testing.assert_array_equal(got_single, want_single)
        assert emu.counts.get("graph_launch", 0) >= 4  # the graph path ran, not only eager launches
        assert s.info["cuda_graphs"] is True


def test_d3_one_context_per_batch_size(emu, trt_bundles):
    with engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32", max_batch=8) as s:
        s.run_batch(_images(11))  # 8 + 3
        assert sorted(s._backend._contexts) == [1, 3, 8]
        shapes = {n: c.context.shapes["input"][0] for n, c in s._backend._contexts.items()}
        assert shapes == {1: 1, 3: 3, 8: 8}  # every context keeps the shape it was created with


# -- D2: a capture that fails --------------------------------------------------------------------------
@pytest.mark.parametrize("failure", ["enqueue", "instantiate"])
def test_d2_failed_capture_falls_back_to_eager_once(emu, trt_bundles, failure):
    if failure == "enqueue":
        emu.capturable = False  # execute_async_v3 returns False while capturing
    else:
        emu.fail_instantiate = True
    imgs = _images(2)
    with engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32") as s, \
            engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32", cuda_graph=False) as eager:
        assert s.info["cuda_graphs"] is True  # nothing has been captured yet
        want = _scores([eager.run(x) for x in imgs])
        for _ in range(4):
            np.testing.assert_array_equal(_scores([s.run(x) for x in imgs]), want)
        assert emu.counts.get("begin_capture", 0) == 1  # tried once, then eager for good
        info = s.info  # the backend's live state, not a snapshot taken at load
        assert info["cuda_graphs"] is False and "capture failed" in info["cuda_graphs_off"]
        assert eager.info["cuda_graphs"] is False and "cuda_graphs_off" not in eager.info
        assert not any(st.capture is not None for st in emu._streams.values())  # no stream left capturing


# -- D5: spec churn past the session's cache sizes -----------------------------------------------------
def test_d5_spec_churn_never_replays_a_stale_graph(emu, trt_bundles):
    x = _images(1)[0]
    with engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32") as s, \
            engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32", cuda_graph=False) as eager:
        def spec(i):
            return s.spec.replace(window_center=1000.0 + 7.0 * i, window_width=1500.0 + 11.0 * i)

        def check(i, runs):
            got = [s.run(x, spec=spec(i)).scores for _ in range(runs)]
            want = eager.run(x, spec=spec(i)).scores
            for g in got:
                np.testing.assert_array_equal(g, want, err_msg=f"spec {i}")

        for i in range(20):  # captured graphs for 20 specs
            check(i, 3)
        for i in range(100, 170):  # churn: the session's spec caches clear, the 20 specs die
            check(i, 1)
        for i in range(200, 400):  # new specs, whose native objects can take the dead ones' addresses
            check(i, 2)


# -- D4 / S11: caller-owned device arrays ------------------------------------------------------------
def test_d4_producer_stream_is_waited_for(emu, trt_bundles):
    x = _images(1)[0]
    with engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32") as s:
        want = s.run(x).scores
        arr = emu.producer_array(x, stream="own")  # the write is still queued on the producer's stream
        emu.log.clear()
        np.testing.assert_array_equal(s.run(arr).scores, want)
        ours = s._backend._stream.handle
        ptr = arr.__cuda_array_interface__["data"][0]
        kinds = [(e[0], e[1]) for e in emu.log if e[0] in ("record", "wait", "preprocess")]
        i_rec = kinds.index(("record", arr.producer.handle))
        i_wait = kinds.index(("wait", ours))
        i_pre = next(i for i, e in enumerate(emu.log) if e[0] == "preprocess" and e[2] == ptr)
        i_pre = [e for e in emu.log if e[0] in ("record", "wait", "preprocess")].index(emu.log[i_pre])
        assert i_rec < i_wait < i_pre
        # The event waited on is the one recorded on the producer's stream.
        rec = next(e for e in emu.log if e[0] == "record" and e[1] == arr.producer.handle)
        wait = next(e for e in emu.log if e[0] == "wait" and e[1] == ours)
        assert rec[2] == wait[2]


@pytest.mark.parametrize("case", ["cai_v2", "v3_legacy_stream", "v3_no_sync_needed"])
def test_d4_other_stream_conventions(emu, trt_bundles, case):
    x = _images(1)[0]
    with engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32") as s:
        want = s.run(x).scores
        if case == "cai_v2":  # no stream key (PyTorch): SliceRT cannot know the stream, so it syncs the device
            arr = emu.producer_array(x, stream="own", version=2)
        elif case == "v3_legacy_stream":
            arr = emu.producer_array(x, stream=1)
        else:  # stream None: the producer says the data is ready
            arr = emu.producer_array(x, stream=None, delay_write=False)
        emu.log.clear()
        np.testing.assert_array_equal(s.run(arr).scores, want)
        synced = any(e[0] == "device_synchronize" for e in emu.log)
        assert synced == (case == "cai_v2")


def test_d4_bad_device_arrays_are_refused(emu, trt_bundles):
    x = _images(1)[0]
    with engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32") as s:
        with pytest.raises(InputError, match="0 is disallowed"):
            s.run(emu.producer_array(x, stream=0, delay_write=False))
        with pytest.raises(InputError, match="lives on CUDA device 1"):
            s.run(emu.producer_array(x, device=1, stream=None, delay_write=False))


def test_s11_device_array_frame(emu, trt_bundles):
    frames = np.stack(_images(3, seed=9))
    with engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32") as s:
        want = s.run(frames, frame=1).scores
        got = s.run(emu.producer_array(frames, stream="own"), frame=1).scores
        np.testing.assert_array_equal(got, want)


# -- D7: device 1 ------------------------------------------------------------------------------------
def test_d7_device_1_is_current_for_every_tensorrt_call(model_dirs, tmp_path):
    bundle = _build(model_dirs["cls_export"], tmp_path / "dev1.slicert", precision="fp32", target="tensorrt",
                    device=1, max_batch=4)
    dev = fake.EmulatedDevice()
    previous = engine.device.install(dev)
    try:
        imgs = _images(8)
        with engine.load(bundle, backend="tensorrt", device=1, max_batch=4) as s:
            assert "cuda:1" in s.info["device"] and "sm_89" in s.info["engine"]
            want = _scores([s.run(x) for x in imgs])
            results: dict[int, np.ndarray] = {}
            errors = []
            go = threading.Barrier(3)  # all three fork concurrently

            def worker(k):  # fresh threads start with device 0 current
                try:
                    go.wait()
                    results[k] = _scores([s.run(x) for x in imgs] + s.run_batch(imgs[:3]))
                except Exception as exc:  # noqa: BLE001
                    errors.append(exc)
            threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == []
            for r in results.values():
                np.testing.assert_array_equal(r[:8], want)
        devices = {d for _name, d, _tid in dev.trt_calls}
        assert devices == {1}, sorted({(n, d) for n, d, _ in dev.trt_calls if d != 1})
        assert len({tid for *_, tid in dev.trt_calls}) >= 2  # other threads called TensorRT too
    finally:
        engine.device.install(previous)
    assert dev.hazards == []


# -- threads: pool, fork, close (D9) ---------------------------------------------------------------
def test_four_threads_on_one_session(emu, trt_bundles):
    imgs = _images(6, seed=11)
    with engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32", cuda_graph=False) as eager:
        want = _scores([eager.run(x) for x in imgs])
    s = engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32", max_batch=4)
    errors, outcomes = [], []
    start = threading.Barrier(4)

    def worker(k):
        try:
            start.wait()
            for _ in range(5):
                np.testing.assert_array_equal(_scores([s.run(x) for x in imgs]), want)
                np.testing.assert_array_equal(_scores(s.run_batch(imgs[:4])), want[:4])
            outcomes.append("ok")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and outcomes == ["ok"] * 4
    assert 2 <= len(s._all) <= 4  # forked buffer sets, each with its own contexts and stream
    assert len({id(b._stream) for b in s._all}) == len(s._all)

    # close() while 4 threads run: each ends normally or with SessionClosed, nothing else.
    stop = threading.Event()
    failures = []

    def runner():
        try:
            while not stop.is_set():
                s.run(imgs[0])
        except SessionClosed:
            pass
        except Exception as exc:  # noqa: BLE001
            failures.append(exc)
    threads = [threading.Thread(target=runner) for _ in range(4)]
    for t in threads:
        t.start()
    s.close()
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    with pytest.raises(SessionClosed):
        s.run(imgs[0])


def test_d9_fork_after_close_is_session_closed(emu, trt_bundles):
    s = engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32")
    backend = s._backend
    s.close()
    with pytest.raises(SessionClosed):
        backend.fork()


# -- D8: engine choice and rebuild -------------------------------------------------------------------
def test_d8_rebuild_after_failed_deserialize(emu, trt_bundles):
    emu.fail_deserialize = True
    with pytest.raises(EngineMismatch, match="could not deserialize"):
        engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32")
    emu.fail_deserialize = False
    with engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32") as good:
        want = good.run(_images(1)[0]).scores
    emu.fail_deserialize = True
    orig = fake._Runtime.deserialize_cuda_engine
    calls = []

    def first_fails(self, plan):  # the bundled plan fails, the rebuilt one loads
        calls.append(1)
        emu.fail_deserialize = len(calls) == 1
        return orig(self, plan)
    fake._Runtime.deserialize_cuda_engine = first_fails
    try:
        with engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32", rebuild=True) as s:
            assert s.info["engine"] == "rebuilt"
            assert "could not deserialize" in s.info["engine_why"] and "rebuilt at load" in s.info["engine_why"]
            np.testing.assert_array_equal(s.run(_images(1)[0]).scores, want)
    finally:
        fake._Runtime.deserialize_cuda_engine = orig


def test_d8_plan_of_another_tensorrt_build_is_not_chosen(trt_bundles):
    dev = fake.EmulatedDevice(version="11.4.1.2")  # same major.minor, another build
    previous = engine.device.install(dev)
    try:
        with pytest.raises(EngineMismatch, match="no engine fits"):
            engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32")
        with engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32", rebuild=True) as s:
            assert s.info["engine"] == "rebuilt"
    finally:
        engine.device.install(previous)
    assert dev.hazards == []


def test_d8_lean_runtime_only_runs_version_compatible_plans(trt_bundles):
    dev = fake.EmulatedDevice(lean_only=True)
    previous = engine.device.install(dev)
    try:
        ok, why = TensorRTBackend.availability()
        assert ok, why
        with pytest.raises(EngineMismatch, match="only the lean runtime"):
            engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32")
    finally:
        engine.device.install(previous)


# -- D13, S2, S10 -----------------------------------------------------------------------------------
def test_d13_engine_input_dtype_must_match_the_spec(emu, trt_bundles):
    emu.input_dtype = fake.DataType.HALF
    with pytest.raises(BundleError, match="is float16, but the bundle's preprocessing spec writes float32"):
        engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32")


def test_s2_one_logger_and_the_build_log_is_captured(emu, model_dirs, tmp_path):
    from engine.bundle import build_bundle, open_bundle

    out = tmp_path / "log.slicert"
    build_bundle(model_dirs["cls_export"], out, precision="fp32", target="tensorrt")
    with engine.load(out, backend="tensorrt") as s:
        s.run(_images(1)[0])
    with engine.load(out, backend="tensorrt", rebuild=True) as s:  # a second Runtime, same logger
        s.run(_images(1)[0])
    with open_bundle(out) as b:
        log = b.read(b.engines[0]["build_log"]).decode()
    assert "emulated build" in log  # the builder's messages reached the bundle's build log


def test_s10_a_tensorrt_wheel_that_does_not_load_is_unavailable():
    class Broken(fake.EmulatedDevice):
        def import_tensorrt(self, *, builder):
            raise OSError("libnvinfer.so.11: cannot open shared object file: No such file or directory")

    previous = engine.device.install(Broken())
    try:
        ok, why = TensorRTBackend.availability()
        assert not ok and "installed but does not load (OSError: libnvinfer.so.11" in why
        from engine.bundle.tensorrt_build import build_engine

        with pytest.raises(BackendUnavailable, match="does not load"):
            build_engine(b"", variant="fp32")
    finally:
        engine.device.install(previous)


def test_infer_tensors_and_segmenter_through_the_emulation(emu, trt_bundles):
    import onnxruntime as ort

    from engine.bundle import open_bundle
    from engine.preprocess import preprocess

    with open_bundle(trt_bundles["seg"]) as b:
        onnx_bytes = b.read(b.variants["fp32"]["onnx"])
    plain = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    imgs = _images(3)
    with engine.load(trt_bundles["seg"], backend="tensorrt", max_batch=8) as s:
        feed = np.concatenate([preprocess(x, s.spec) for x in imgs])
        got = s._backend.infer_tensors({"input": feed})["logits"]
        np.testing.assert_allclose(got, plain.run(None, {"input": feed})[0], rtol=0, atol=0)
        masks = [s.run(x).mask for x in imgs]
        assert all(m.shape == x.shape for m, x in zip(masks, imgs))
        for r, m in zip(s.run_batch(imgs), masks):
            np.testing.assert_array_equal(r.mask, m)


def test_d13_tensorrt_return_values_are_checked(emu, model_dirs, tmp_path, monkeypatch):
    from engine.bundle import build_bundle
    from engine.errors import CudaError

    src = model_dirs["cls_export"]
    monkeypatch.setattr(fake._Config, "add_optimization_profile", lambda self, profile: -1)
    with pytest.raises(BundleError, match="refused the optimization profile batch 1..4"):
        build_bundle(src, tmp_path / "a.slicert", precision="fp32", target="tensorrt", max_batch=4)
    monkeypatch.undo()
    monkeypatch.setattr(fake._Config, "set_timing_cache", lambda self, cache, ignore_mismatch: False)
    with pytest.raises(BundleError, match="refused a new, empty timing cache"):
        build_bundle(src, tmp_path / "b.slicert", precision="fp32", target="tensorrt")
    monkeypatch.undo()
    build_bundle(src, tmp_path / "c.slicert", precision="fp32", target="tensorrt")
    monkeypatch.setattr(fake._Context, "set_tensor_address", lambda self, name, ptr: name != "scores")
    with pytest.raises(CudaError, match="refused the device address of tensor 'scores'"):
        engine.load(tmp_path / "c.slicert", backend="tensorrt")


# -- D3 follow-up: one activation buffer for the contexts of a buffer set -----------------------------
def _scratch(backend):
    return {n: (c.context.strategy, c.context.device_memory) for n, c in backend._contexts.items()}


def test_d3_contexts_share_one_activation_buffer(emu, trt_bundles):
    imgs = _images(11)
    with engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32", max_batch=8) as s, \
            engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32", max_batch=8,
                        cuda_graph=False) as eager:
        want = _scores(eager.run_batch(imgs))  # 8 + 3
        for _ in range(3):
            np.testing.assert_array_equal(_scores(s.run_batch(imgs)), want)
            np.testing.assert_array_equal(s.run(imgs[0]).scores, want[0])
        scratch = _scratch(s._backend)
        assert sorted(scratch) == [1, 3, 8]
        assert {st for st, _ in scratch.values()} == {fake.AllocationStrategy.USER_MANAGED}
        assert len({mem for _, mem in scratch.values()}) == 1  # one allocation, given to all three contexts
        ptr, size = scratch[8][1]
        assert ptr == s._backend._activation.ptr and size == s._backend._activation.nbytes >= 8 * 4096
        assert emu.counts.get("static_context_memory", 0) == 0  # no context allocated its own
        assert "USER_MANAGED" in s.info["activation_memory"]
        assert emu.counts.get("graph_launch", 0) >= 2


def test_d3_activation_buffer_grows_when_a_shape_needs_more(emu, trt_bundles):
    emu.engine_memory_short = 3 * 4096  # device_memory_size_v2 says 5 items' worth, batch 8 needs 8
    imgs = _images(11)
    with engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32", max_batch=8) as s, \
            engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32", max_batch=8,
                        cuda_graph=False) as eager:
        want = _scores(eager.run_batch(imgs))
        for _ in range(3):
            np.testing.assert_array_equal(_scores(s.run_batch(imgs)), want)
        scratch = _scratch(s._backend)
        assert len({mem for _, mem in scratch.values()}) == 1 and scratch[1][1][1] >= 8 * 4096


def test_d3_without_runtime_config_each_context_keeps_static_memory(emu, trt_bundles):
    emu.runtime_config = False  # an older TensorRT: no ICudaEngine.create_runtime_config
    imgs = _images(11)
    with engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32", max_batch=8) as s:
        got = _scores(s.run_batch(imgs))
        assert {st for st, _ in _scratch(s._backend).values()} == {fake.AllocationStrategy.STATIC}
        assert emu.counts["static_context_memory"] == 3 and "STATIC" in s.info["activation_memory"]
    emu.runtime_config = True
    with engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32", max_batch=8) as s:
        np.testing.assert_array_equal(_scores(s.run_batch(imgs)), got)


def test_emulated_context_refuses_to_run_without_its_activation_memory(emu, trt_bundles):
    """The emulation enforces what the backend relies on: a USER_MANAGED context runs only with memory."""
    with engine.load(trt_bundles["cls"], backend="tensorrt", precision="fp32") as s:
        b = s._backend
        context = b._engine.create_execution_context(b._runtime_config)
        context.set_input_shape(b._in_name, (1, *b._inputs[b._in_name][0][1:]))
        for name in (b._in_name, *b._output_names):
            context.set_tensor_address(name, (b._d_input if name == b._in_name else b._d_outputs[name]).ptr)
        assert context.execute_async_v3(b._stream.handle) is False
        context.set_device_memory(b._activation.ptr, context.update_device_memory_size_for_shapes() - 1)
        assert context.execute_async_v3(b._stream.handle) is False
        context.set_device_memory(b._activation.ptr, b._activation.nbytes)
        assert context.execute_async_v3(b._stream.handle) is True
        b._stream.synchronize()


# -- D12: the segmenter's argmax on the device ------------------------------------------------------------
SPACING = (0.5, 0.7)


def _seg_results(results):
    return [(r.mask, r.pixel_counts, r.areas_mm2) for r in results]


def _assert_same(got, want):
    assert len(got) == len(want)
    for (gm, gc, ga), (wm, wc, wa) in zip(got, want):
        np.testing.assert_array_equal(gm, wm)
        assert gc == wc and ga == wa


def _seg_logit_bytes(s):
    b = s._backend
    return b._out_arrays["logits"][0].nbytes


def test_d12_device_mask_equals_the_onnxruntime_session(emu, trt_bundles):
    imgs = _images(19, seed=11)
    with engine.load(trt_bundles["seg"], backend="onnxruntime", max_batch=8) as cpu, \
            engine.load(trt_bundles["seg"], backend="tensorrt", max_batch=8) as s:
        assert s._backend.offers_mask and s._device_mask and not cpu._device_mask
        want_batch = _seg_results(cpu.run_batch(imgs, pixel_spacing_mm=SPACING))  # chunks 8, 8, 3
        want_single = _seg_results([cpu.run(x, pixel_spacing_mm=SPACING) for x in imgs[:3]])
        for _ in range(3):  # eager, then captured, then replayed graphs (mask mode is part of the graph key)
            _assert_same(_seg_results(s.run_batch(imgs, pixel_spacing_mm=SPACING)), want_batch)
            _assert_same(_seg_results([s.run(x, pixel_spacing_mm=SPACING) for x in imgs[:3]]), want_single)
        assert emu.counts.get("graph_launch", 0) >= 4 and emu.counts.get("argmax_kernel", 0) >= 19
        assert any(v for r in want_batch for k, v in r[1].items() if k != s.labels[0])  # not all background


def test_d12_only_the_mask_crosses_to_the_host(emu, trt_bundles):
    imgs = _images(19, seed=12)
    with engine.load(trt_bundles["seg"], backend="tensorrt", max_batch=8) as s:
        k, h, w = s._backend._out_arrays["logits"].shape[1:]
        row = h * w + 1  # the mask bytes and the NaN/Inf flag byte of one slice
        for _ in range(3):  # the copies of eager runs and of replayed graphs are counted alike
            emu.d2h_bytes.clear()
            s.run(imgs[0])
            assert emu.d2h_bytes == [row]
            emu.d2h_bytes.clear()
            s.run_batch(imgs)
            assert emu.d2h_bytes == [8 * row, 8 * row, 3 * row]
        assert _seg_logit_bytes(s) == k * h * w * 4 > 10 * row  # what used to cross per slice


def test_d12_a_nan_logit_is_still_refused(emu, trt_bundles):
    imgs = _images(3, seed=13)
    with engine.load(trt_bundles["seg"], backend="tensorrt", max_batch=8) as s:
        for _ in range(3):
            s.run(imgs[0])  # captured by the third run
            s.run_batch(imgs)
        launches = emu.counts.get("graph_launch", 0)
        emu.nan_logit = True
        with pytest.raises(InputError, match="produced NaN/Inf outputs"):
            s.run(imgs[0])  # a replayed graph: the flag is set on the device, in the replay
        with pytest.raises(InputError, match="produced NaN/Inf outputs"):
            s.run_batch(imgs)
        assert emu.counts["graph_launch"] == launches + 2
        emu.nan_logit = False
        assert s.run(imgs[0]).mask is not None  # the flag is cleared again on the next launch
        s.run_batch(imgs)


def _seg_with_trust(model_dirs, tmp_path):
    """The segmenter with a trust.json whose OOD model reads the logits (mean uncertainty). The numbers are
    made up for the test: only whether the session reads the logits matters here."""
    import json
    import shutil

    folder = tmp_path / "seg_trust"
    shutil.copytree(model_dirs["seg_export"], folder)
    stat = {"name": "mean_uncertainty", "kind": "upper", "centre": 0.3, "scale": 0.1}
    (folder / "trust.json").write_text(json.dumps({"schema": 1, "variants": {"fp32": {
        "temperature": None, "ood": {"statistics": [stat], "threshold": 3.0, "false_alarm_target": 0.05}}}}))
    return _build(folder, tmp_path / "seg_trust.slicert", precision="fp32", target="auto", max_batch=8)


def test_d12_trust_annotations_still_get_the_logits(emu, trt_bundles, model_dirs, tmp_path):
    from engine.preprocess import preprocess
    from engine.trust.ood import mean_uncertainty

    bundle = _seg_with_trust(model_dirs, tmp_path)
    x = _images(1, seed=14)[0]
    with engine.load(bundle, backend="tensorrt") as s, engine.load(bundle, backend="onnxruntime") as cpu:
        assert s._backend.offers_mask and not s._device_mask  # mean uncertainty reads the logits
        emu.d2h_bytes.clear()
        r = s.run(x)
        assert emu.d2h_bytes == [_seg_logit_bytes(s)]
        want = cpu.run(x)
        assert r.ood.signals["mean_uncertainty"] == want.ood.signals["mean_uncertainty"]
        np.testing.assert_array_equal(r.mask, want.mask)
        logits = s._backend.infer_tensors({"input": preprocess(x, s.spec)})["logits"][0]
        assert r.ood.signals["mean_uncertainty"] == mean_uncertainty(logits)
    with engine.load(trt_bundles["seg"], backend="tensorrt") as s, \
            engine.load(trt_bundles["seg"], backend="onnxruntime") as cpu:
        assert s._device_mask  # no trust section: the mask path
        emu.d2h_bytes.clear()
        r = s.run(x, saliency=True)  # the confidence map reads the logits: this call copies them
        assert emu.d2h_bytes == [_seg_logit_bytes(s)]
        np.testing.assert_array_equal(r.saliency, cpu.run(x, saliency=True).saliency)
        emu.d2h_bytes.clear()
        assert s.run(x).saliency is None and emu.d2h_bytes == [s._backend._h_masks.shape[1]]  # H x W + 1
