"""Every generated bad-input case -> a typed engine.errors exception naming the problem, in bounded
time, with the shared session still giving bit-identical results on valid input afterwards.

The corpus (tests/corpus/generate.py) is generated into pytest's cache on first use. A native crash
would kill this process: the run completing is the "no crash" evidence; the sanitizer job
(.ci/sanitize) replays the cases that reach engine._native under ASan/UBSan.
"""
from __future__ import annotations

import contextlib
import os

import psutil
import pytest

from tests.reliability.conftest import ensure_corpus
from tests.reliability.runner import CASE_TIME_BOUND_S, Sessions, run_case

_outcomes: dict[str, dict] = {}


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        cases = ensure_corpus(metafunc.config)
        if os.environ.get("SLICERT_CORPUS_NATIVE_ONLY") == "1":  # the sanitizer job
            cases = [c for c in cases if c.native]
        metafunc.parametrize("case", cases, ids=[c.id for c in cases])


@pytest.fixture(scope="module")
def sessions(corpus_dir, figures):
    s = Sessions(corpus_dir)
    proc = psutil.Process()
    fds_before = proc.num_fds()
    yield s
    s.close()
    times = [o["elapsed_s"] for o in _outcomes.values()]
    if times:
        slowest = max(_outcomes.values(), key=lambda o: o["elapsed_s"])
        figures.add("corpus", {
            "cases_run": len(_outcomes), "failed": sorted(k for k, o in _outcomes.items() if o["problem"]),
            "max_time_s": max(times), "slowest_case": slowest["case_id"], "total_time_s": sum(times),
            "open_fds_before": fds_before, "open_fds_after": proc.num_fds(),
            "by_error_type": _count(o["error_type"] for o in _outcomes.values()),
            "problems": {k: o["problem"] for k, o in _outcomes.items() if o["problem"]},
        })


def _count(items) -> dict:
    out: dict = {}
    for i in items:
        out[str(i)] = out.get(str(i), 0) + 1
    return out


@pytest.mark.timeout(max(60, 6 * CASE_TIME_BOUND_S), method="thread")
def test_case(case, sessions):
    outcome = run_case(case, sessions)
    _outcomes[case.id] = outcome.to_json()
    assert outcome.problem is None, f"{case.id} ({case.why}): {outcome.problem}"


def test_corpus_is_large_and_covers_every_area(pytestconfig):
    cases = ensure_corpus(pytestconfig)
    assert len(cases) >= 200
    groups = {c.group for c in cases}
    assert groups >= {"dicom", "array", "spec", "bundle", "load", "preprocess"}
    whys = " ".join(c.why for c in cases).lower()
    for topic in ("cut at byte", "nan", "1x1", "above the 2^28 limit", "mpeg2", "flipped", "schema-version",
                  "another tool", "sm_86", "strides", "float64 pixels", "window width 0"):
        assert topic in whys, topic


def test_failed_loads_leave_no_open_files(corpus_dir):
    """Every bundle case that fails must release its file handle and mapping."""
    import engine
    from tests.corpus import generate

    proc = psutil.Process()
    cases = [c for c in generate.load(corpus_dir) if c.group == "bundle" and c.entry == "engine.load" and c.file]

    def one_pass() -> None:
        for c in cases:
            with contextlib.suppress(Exception):  # only the resources matter here
                engine.load(corpus_dir / c.file, **c.kwargs).close()

    one_pass()  # warm-up: first imports and ONNX Runtime's process-wide thread pools open descriptors once
    before = (proc.num_fds(), len(proc.memory_maps(grouped=False)))
    for _ in range(3):
        one_pass()
    after = (proc.num_fds(), len(proc.memory_maps(grouped=False)))
    assert after[0] <= before[0], f"open file descriptors grew from {before[0]} to {after[0]}"
    assert after[1] <= before[1] + 2, f"memory mappings grew from {before[1]} to {after[1]}"
