from __future__ import annotations

import numpy as np
import pytest

from engine.bench.runner import OTHER, TOTAL, BenchmarkRun, ConfigResult, Pipeline, run_benchmark
from engine.errors import InputError

from .conftest import numpy_tiny_classifier

ENV = {"slicert": "test", "cpu_model": "test"}  # skip environment probing in pure-harness tests


class Recorder:
    """A configuration that logs every call into a shared journal."""

    def __init__(self, name, journal, *, fail_at=None, stages=("preprocess", "infer")):
        self.name, self.meta, self.items_per_call = name, {"kind": "recorder"}, 1
        self.journal, self.fail_at, self.stage_names, self.calls = journal, fail_at, stages, 0

    def load(self):
        self.journal.append(("load", self.name))

    def step(self):
        self.calls += 1
        self.journal.append(("step", self.name))
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError(f"{self.name} failed")
        return {s: 1000 * (i + 1) for i, s in enumerate(self.stage_names)}

    def close(self):
        self.journal.append(("close", self.name))


def test_round_robin_interleaving_order():
    journal = []
    cfgs = [Recorder(x, journal) for x in "ABC"]
    run = run_benchmark(cfgs, n=3, warmup=2, environment=ENV)
    expected = [("load", "A"), ("step", "A"), ("load", "B"), ("step", "B"), ("load", "C"), ("step", "C")]
    expected += [("step", x) for _ in range(2 + 3) for x in "ABC"]  # warm-up then timed, A B C A B C ...
    expected += [("close", x) for x in "ABC"]
    assert journal == expected
    assert [c.name for c in run.configurations] == ["A", "B", "C"]
    assert all(c.samples_ns[TOTAL].shape == (3,) for c in run.configurations)
    assert (
        run.settings["schedule"] == "round_robin" and run.settings["n"] == 3 and run.settings["warmup"] == 2
    )


def test_shuffled_schedule_runs_each_config_once_per_round_and_is_seeded():
    def order(seed):
        journal = []
        run_benchmark(
            [Recorder(x, journal) for x in "ABCD"],
            n=20,
            warmup=0,
            schedule="shuffled",
            seed=seed,
            environment=ENV,
        )
        steps = [name for what, name in journal[8:] if what == "step"]  # after the 4 load + first steps
        return [steps[i : i + 4] for i in range(0, len(steps), 4)]

    rounds = order(3)
    assert len(rounds) == 20 and all(sorted(r) == list("ABCD") for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # really shuffled
    assert rounds == order(3)


def test_stage_samples_recorded_and_other_derived():
    journal = []
    run = run_benchmark([Recorder("A", journal)], n=5, warmup=0, environment=ENV)
    c = run.configurations[0]
    assert c.stages == ["preprocess", "infer"]
    assert np.all(c.samples_ns["preprocess"] == 1000) and np.all(c.samples_ns["infer"] == 2000)
    stats = c.stats()
    assert set(stats) == {TOTAL, "preprocess", "infer", OTHER}
    np.testing.assert_array_equal(c.other_ns(), c.samples_ns[TOTAL] - 3000)


def test_pipeline_stages_are_enclosed_by_total():
    x = np.arange(200_000, dtype=np.float64)
    p = Pipeline(
        "np", lambda: [("decode", lambda v: v.copy()), ("preprocess", np.sqrt), ("infer", np.sum)], input=x
    )
    run = run_benchmark([p], n=30, warmup=2, environment=ENV)
    c = run.configurations[0]
    assert c.stages == ["decode", "preprocess", "infer"]
    stage_sum = sum(c.samples_ns[s] for s in c.stages)
    assert np.all(c.samples_ns[TOTAL] >= stage_sum)
    assert np.all(c.samples_ns["preprocess"] > 0)
    assert p.last_output == pytest.approx(np.sqrt(x).sum())
    assert c.cold_start_ms == pytest.approx(c.load_ms + c.first_inference_ms, rel=1e-9)
    assert set(c.first_stages_ms) == {"decode", "preprocess", "infer"}


def test_real_onnxruntime_session_pipeline(tiny_classifier_onnx, rng):
    import onnxruntime as ort

    m = tiny_classifier_onnx
    raw = rng.integers(0, 4096, size=(16, 16), dtype=np.uint16)

    def build():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(m["path"]), opts, providers=["CPUExecutionProvider"])
        return [
            ("preprocess", lambda a: ((a.astype(np.float32) / 4095.0 - 0.5) / 0.25)[None, None]),
            ("infer", lambda t: sess.run(["scores"], {"input": t})[0]),
            ("postprocess", lambda s: np.exp(s[0] - s[0].max()) / np.exp(s[0] - s[0].max()).sum()),
        ]

    p = Pipeline("ort-fp32", build, input=raw, meta={"backend": "onnxruntime"})
    run = run_benchmark([p], n=20, warmup=3, environment=ENV)
    ref = numpy_tiny_classifier(((raw / 4095.0 - 0.5) / 0.25)[None, None], m)[0]
    ref_prob = np.exp(ref - ref.max()) / np.exp(ref - ref.max()).sum()
    np.testing.assert_allclose(p.last_output, ref_prob, atol=1e-5, rtol=1e-4)
    c = run.configurations[0]
    assert c.meta == {"backend": "onnxruntime"}
    assert c.stats()["infer"]["n"] == 20
    assert c.load_ms > 0 and c.rss_after_load_mb > 0 and c.peak_rss_mb >= c.rss_after_load_mb * 0.5


def test_all_configurations_closed_when_one_fails():
    journal = []
    cfgs = [Recorder("A", journal), Recorder("B", journal, fail_at=4)]
    with pytest.raises(RuntimeError, match="B failed"):
        run_benchmark(cfgs, n=5, warmup=1, environment=ENV)
    assert ("close", "A") in journal and ("close", "B") in journal


def test_failure_in_load_closes_what_was_loaded():
    journal = []

    class BadLoad(Recorder):
        def load(self):
            raise OSError("cannot read model")

    with pytest.raises(OSError):
        run_benchmark([Recorder("A", journal), BadLoad("B", journal)], n=1, warmup=0, environment=ENV)
    assert ("close", "A") in journal


def test_bad_arguments_raise_input_error():
    j = []
    with pytest.raises(InputError, match="n "):
        run_benchmark([Recorder("A", j)], n=0, environment=ENV)
    with pytest.raises(InputError, match="warmup"):
        run_benchmark([Recorder("A", j)], n=1, warmup=-1, environment=ENV)
    with pytest.raises(InputError, match="at least one"):
        run_benchmark([], n=1, environment=ENV)
    with pytest.raises(InputError, match="unique"):
        run_benchmark([Recorder("A", j), Recorder("A", j)], n=1, environment=ENV)
    with pytest.raises(InputError, match="schedule"):
        run_benchmark([Recorder("A", j)], n=1, schedule="random", environment=ENV)
    with pytest.raises(InputError, match="not a Configuration"):
        run_benchmark([object()], n=1, environment=ENV)
    bad = Recorder("B", j)
    bad.items_per_call = 0
    with pytest.raises(InputError, match="items_per_call"):
        run_benchmark([bad], n=1, environment=ENV)
    assert j == []  # nothing was loaded or run before the arguments were checked


@pytest.mark.parametrize(
    "stages,match",
    [({TOTAL: 5}, "reserved"), ({"infer": -1}, ">= 0"), ({"infer": 1.5}, "integer"), ([1, 2], "mapping")],
)
def test_bad_step_results(stages, match):
    class Bad(Recorder):
        def step(self):
            return stages

    with pytest.raises(InputError, match=match):
        run_benchmark([Bad("A", [])], n=2, warmup=0, environment=ENV)


def test_stage_set_change_is_reported():
    class Changing(Recorder):
        def step(self):
            self.calls += 1
            return {"infer": 1} if self.calls < 3 else {"decode": 1}

    with pytest.raises(InputError, match="stages changed"):
        run_benchmark([Changing("A", [])], n=3, warmup=0, environment=ENV)


def test_pipeline_rejects_bad_stage_lists():
    for stages in ([], [("a", abs), ("a", abs)], [(TOTAL, abs)]):
        with pytest.raises(InputError):
            run_benchmark([Pipeline("p", lambda s=stages: s)], n=1, environment=ENV)


def _result(name, total_ms):
    total = np.asarray(total_ms, dtype=np.float64)
    return ConfigResult(
        name=name,
        meta={},
        items_per_call=1,
        samples_ns={TOTAL: (total * 1e6).astype(np.int64)},
        load_ms=1.0,
        first_inference_ms=1.0,
        cold_start_ms=2.0,
        first_stages_ms={},
        rss_before_load_mb=None,
        rss_after_load_mb=None,
        peak_rss_mb=None,
    )


def test_comparisons_reference_and_paired_ratio(rng):
    n = 200
    drift = 1 + (rng.random(n) < 0.1) * 4.0  # 10 % of rounds hit by a neighbour's burst, in both configs
    slow = 12.0 * drift
    fast = 3.0 * drift
    run = BenchmarkRun(
        [_result("slow", slow), _result("fast", fast)],
        settings={"schedule": "round_robin"},
        environment=ENV,
        started_utc="t0",
        finished_utc="t1",
    )
    comps = run.comparisons()
    assert len(comps) == 1 and comps[0]["name"] == "fast" and comps[0]["reference"] == "slow"
    assert comps[0]["speedup_p50"] == pytest.approx(np.median(slow) / np.median(fast), rel=1e-6)
    p = comps[0]["paired_speedup"]
    assert p["median"] == pytest.approx(4.0, rel=1e-6) and p["ci95"] == pytest.approx([4.0, 4.0], rel=1e-6)
    assert run.comparisons("fast")[0]["name"] == "slow"
    assert run.comparisons("fast")[0]["speedup_p50"] == pytest.approx(0.25, rel=1e-6)
    with pytest.raises(InputError, match="no configuration"):
        run.comparisons("nope")


def test_pipeline_cycles_inputs_in_order():
    seen = []
    p = Pipeline("cine", lambda: [("infer", seen.append)], inputs=["f0", "f1", "f2"])
    run_benchmark([p], n=4, warmup=1, environment=ENV)
    assert seen == ["f0", "f1", "f2", "f0", "f1", "f2"]  # first call, 1 warm-up, 4 timed
    with pytest.raises(InputError):
        Pipeline("x", lambda: [], input=1, inputs=[2])
    with pytest.raises(InputError):
        Pipeline("x", lambda: [], inputs=[])
