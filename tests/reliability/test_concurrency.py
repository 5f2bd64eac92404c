"""Threads: 4 threads sharing one CPU session, and one session per thread, give bit-identical
results to a single thread, never deadlock (every join has a timeout), and the GIL is released
while the native kernel and ONNX Runtime work.

GIL evidence: a pure-Python counter thread keeps counting while the main thread is inside a long
native call. As a control that the probe can see a held GIL, the same counter makes (almost) no
progress during `sum(range(n))`, a C loop that never releases it.
"""
from __future__ import annotations

import json
import threading
import time
import warnings

import numpy as np
import pytest

from tests.corpus import bundle_files, dicom_files

THREADS = 4
JOIN_TIMEOUT_S = 120.0
pytestmark = pytest.mark.timeout(300, method="thread")


def _inputs(n: int, seed: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = [(64, 64), (48, 80), (100, 37), (64, 64)]
    return [rng.integers(0, 4096, shapes[i % len(shapes)]).astype(np.uint16) for i in range(n)]


def run_threads(target, args_per_thread: list[tuple]) -> list:
    """Start all threads behind a barrier (so they really overlap), join each with a timeout."""
    barrier = threading.Barrier(len(args_per_thread))
    results: list = [None] * len(args_per_thread)
    errors: list = []

    def body(i, args):
        try:
            barrier.wait(timeout=JOIN_TIMEOUT_S)
            results[i] = target(*args)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append((i, exc))

    threads = [threading.Thread(target=body, args=(i, a), name=f"slicert-test-{i}") for i, a in
               enumerate(args_per_thread)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"deadlock or hang: {stuck} still running after {JOIN_TIMEOUT_S} s"
    assert not errors, f"thread errors: {errors}"
    return results


def _classify_all(session, inputs, order):
    return {i: session.run(inputs[i]).scores.copy() for i in order}


def _segment_all(session, inputs, order):
    out = {}
    for i in order:
        r = session.run(inputs[i], pixel_spacing_mm=(0.3, 0.4))
        out[i] = (r.mask.copy(), dict(r.areas_mm2))
    return out


def _orders(n: int) -> list[list[int]]:
    rng = np.random.default_rng(3)
    return [list(rng.permutation(n)) for _ in range(THREADS)]


@pytest.fixture(scope="module")
def bundles(corpus_dir):
    return corpus_dir / bundle_files.VALID_CLASSIFIER, corpus_dir / bundle_files.VALID_SEGMENTER


def _assert_same_scores(reference: dict, got: dict, what: str) -> None:
    for i, want in reference.items():
        assert np.array_equal(got[i], want), f"{what}: input {i} gave {got[i]}, single thread gave {want}"


def test_shared_classifier_session_is_bit_identical_to_one_thread(bundles, figures):
    import engine

    inputs = _inputs(40)
    with engine.load(bundles[0]) as s:
        reference = _classify_all(s, inputs, range(len(inputs)))
        results = run_threads(_classify_all, [(s, inputs, order) for order in _orders(len(inputs))])
        buffer_sets = len(s._all)
    for r in results:
        _assert_same_scores(reference, r, "shared session")
    figures.add("concurrency_shared_classifier", {"threads": THREADS, "calls_per_thread": len(inputs),
                                                  "bit_identical": True, "buffer_sets_used": buffer_sets})


def test_shared_segmenter_session_is_bit_identical_to_one_thread(bundles):
    import engine

    inputs = _inputs(24)
    with engine.load(bundles[1]) as s:
        reference = _segment_all(s, inputs, range(len(inputs)))
        results = run_threads(_segment_all, [(s, inputs, order) for order in _orders(len(inputs))])
    for r in results:
        for i, (mask, areas) in reference.items():
            assert np.array_equal(r[i][0], mask), f"input {i}: mask differs from the single-thread mask"
            assert r[i][1] == areas, f"input {i}: areas {r[i][1]} != {areas}"


def test_one_session_per_thread_is_bit_identical(bundles, figures):
    import engine

    inputs = _inputs(40)
    with engine.load(bundles[0]) as s:
        reference = _classify_all(s, inputs, range(len(inputs)))

    def own_session(order):
        with engine.load(bundles[0]) as mine:
            return _classify_all(mine, inputs, order)

    for r in run_threads(own_session, [(order,) for order in _orders(len(inputs))]):
        _assert_same_scores(reference, r, "session per thread")
    figures.add("concurrency_session_per_thread", {"threads": THREADS, "calls_per_thread": len(inputs),
                                                   "bit_identical": True})


def test_concurrent_dicom_runs_are_identical_and_leave_warning_filters_alone(bundles):
    """DICOM inputs from 4 threads (the reader records pydicom warnings with catch_warnings, which is
    process-global state): same results as one thread, and the warning filters are unchanged after."""
    import engine

    files = [dicom_files.parent_path(n).read_bytes() for n in (dicom_files.CT, dicom_files.MR, dicom_files.BE,
                                                               dicom_files.RLE)]
    with engine.load(bundles[0]) as s:
        reference = [s.run(f).scores.copy() for f in files]
        filters_before = list(warnings.filters)

        def worker(k):
            out = []
            for j in range(12):
                i = (j + k) % len(files)
                out.append((i, s.run(files[i]).scores.copy()))
            return out

        results = run_threads(worker, [(k,) for k in range(THREADS)])
        filters_after = list(warnings.filters)
    for r in results:
        for i, scores in r:
            assert np.array_equal(scores, reference[i]), f"file {i}: {scores} != {reference[i]}"
    assert filters_after == filters_before, "concurrent reads left the process's warning filters changed"


def test_close_while_other_threads_run(bundles):
    """close() from another thread: running calls finish correctly, later ones raise SessionClosed,
    nothing else is raised and nothing hangs."""
    import engine
    from engine.errors import SessionClosed

    inputs = _inputs(8)
    s = engine.load(bundles[0])
    reference = _classify_all(s, inputs, range(len(inputs)))
    started = threading.Event()

    def worker(k):
        good = closed = 0
        for j in range(100_000):
            i = (j + k) % len(inputs)
            try:
                scores = s.run(inputs[i]).scores
            except SessionClosed:
                closed += 1
                break
            assert np.array_equal(scores, reference[i])
            good += 1
            started.set()
        return good, closed

    def closer():
        started.wait(timeout=JOIN_TIMEOUT_S)
        time.sleep(0.05)
        s.close()
        return "closed"

    results = run_threads(lambda k: worker(k) if k < THREADS else closer(), [(k,) for k in range(THREADS + 1)])
    assert results[-1] == "closed"
    assert all(r[1] == 1 for r in results[:-1]), f"every worker must end on SessionClosed: {results[:-1]}"
    assert s.closed


# -- GIL release ----------------------------------------------------------------------------------------
class Counter:
    """A pure-Python thread that counts as fast as it can: it only advances while it holds the GIL."""

    def __init__(self):
        self.n = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop:
            self.n += 1

    def __enter__(self):
        self._thread.start()
        time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self._stop = True
        self._thread.join(timeout=10)

    def progress_during(self, fn) -> tuple[float, float]:
        """(counts per second while fn ran, seconds fn took)."""
        n0, t0 = self.n, time.perf_counter()
        fn()
        n1, t1 = self.n, time.perf_counter()
        return (n1 - n0) / (t1 - t0), t1 - t0


def _gil_probe(fn, figures_key: str, figures) -> dict:
    # Python's default switch interval (5 ms) lets the counter in at least every 5 ms whenever the
    # main thread runs Python code; a native call that keeps the GIL for >100 ms shuts it out.
    with Counter() as counter:
        free, _ = counter.progress_during(lambda: time.sleep(0.2))  # GIL released: full rate
        n_held = 3 * 10**7
        held, held_s = counter.progress_during(lambda: sum(range(n_held)))  # C loop holding the GIL
        native, native_s = counter.progress_during(fn)
    stats = {"counter_rate_sleep_per_s": free, "counter_rate_gil_held_per_s": held, "gil_held_call_s": held_s,
             "counter_rate_native_per_s": native, "native_call_s": native_s,
             "native_vs_sleep": native / free, "held_vs_sleep": held / free}
    figures.add(figures_key, stats)
    return stats


def test_gil_released_during_native_preprocessing(figures):
    from engine import preprocess
    from engine.spec import PreprocessSpec

    before = preprocess.get_num_threads()
    preprocess.set_num_threads(1)  # the kernel on one core, the counter on the other
    try:
        x = np.random.default_rng(0).integers(0, 65535, (4096, 4096)).astype(np.uint16)
        spec = PreprocessSpec(out_height=2048, out_width=2048, voi_function="sigmoid", window_center=30000.0,
                              window_width=20000.0, resize="area", equalize=True, normalize="zscore")
        preprocess.preprocess(x, spec)  # warm: folded tables built once per spec

        def long_native_call():
            for _ in range(3):
                preprocess.preprocess(x, spec)

        stats = _gil_probe(long_native_call, "gil_preprocess", figures)
    finally:
        preprocess.set_num_threads(before)
    assert stats["native_call_s"] > 0.1, f"the native call was too short to judge: {stats}"
    assert stats["held_vs_sleep"] < 0.05, f"control failed: the probe cannot see a held GIL: {stats}"
    assert stats["native_vs_sleep"] > 0.25, f"the counter stalled during native preprocessing: {json.dumps(stats)}"


def _heavy_classifier_export(folder):
    """An export whose inference takes ~0.1-0.5 s on one core: 32x32 input resized to 512x512, then
    3x3 convolutions with 16 channels. Synthetic weights; only its run time matters here."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tests.runtime import tiny_models

    rng = np.random.default_rng(4)
    side, c, k = 512, 16, 3

    def w(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    inits = [numpy_helper.from_array(np.array([1, 1, side / 32, side / 32], np.float32), "scales"),
             numpy_helper.from_array(w(c, 1, 3, 3), "w1"), numpy_helper.from_array(w(c, c, 3, 3), "w2"),
             numpy_helper.from_array(w(c, c, 3, 3), "w3"), numpy_helper.from_array(w(k, c), "fc"),
             numpy_helper.from_array(w(k), "fb")]
    nodes = [helper.make_node("Resize", ["input", "", "scales"], ["big"], mode="nearest"),
             helper.make_node("Conv", ["big", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3"], ["c3"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c3"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["scores"], transB=1)]
    graph = helper.make_graph(nodes, "heavy", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                             ["N", 1, 32, 32])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", k])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="slicert-tests")
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    meta = tiny_models.model_json("classification")
    meta["name"] = "heavy-classifier"
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def test_gil_released_during_inference(tmp_path, figures):
    import engine
    from engine import preprocess
    from engine.bundle import build_bundle

    export = _heavy_classifier_export(tmp_path / "heavy")
    bundle = build_bundle(export, tmp_path / "heavy.slicert", precision="fp32", target="cpu").path
    before = preprocess.get_num_threads()
    try:
        with engine.load(bundle, threads=1) as s:
            x = np.random.default_rng(1).integers(0, 4096, (32, 32)).astype(np.uint16)
            s.run(x)
            timings = {}

            def long_inference():
                # Run for a fixed time, not a fixed count: a quiet machine finishes two runs in < 0.1 s.
                t_end = time.perf_counter() + 0.3
                while True:
                    timings.update(s.run(x).timings_ms)
                    if time.perf_counter() >= t_end:
                        break

            stats = _gil_probe(long_inference, "gil_inference", figures)
            stats["infer_ms_share"] = timings["infer"] / timings["total"]
    finally:
        preprocess.set_num_threads(before)
    # (the rest of each run waits for the GIL behind the counter thread: Python's 5 ms switch interval)
    assert stats["infer_ms_share"] > 0.75, f"this run is not dominated by inference: {timings}"
    assert stats["native_call_s"] > 0.1, f"the inference was too short to judge: {stats}"
    assert stats["held_vs_sleep"] < 0.05, f"control failed: the probe cannot see a held GIL: {stats}"
    assert stats["native_vs_sleep"] > 0.25, f"the counter stalled during inference: {json.dumps(stats)}"
