from __future__ import annotations

import gc
import os

import numpy as np
import pytest

from engine.bench.timing import TimingPolicy, parse_cpus, time_callable, timed_region
from engine.errors import InputError


def test_time_callable_counts_warmup_and_timed_calls():
    calls = []
    out = time_callable(lambda: calls.append(1), n=7, warmup=3)
    assert len(calls) == 10
    assert out.dtype == np.int64 and out.shape == (7,)
    assert np.all(out >= 0)


def test_gc_disabled_only_inside_timed_loop_and_restored():
    assert gc.isenabled()
    seen = []
    time_callable(lambda: seen.append(gc.isenabled()), n=5, warmup=2)
    assert seen[:2] == [True, True]  # warm-up runs as the caller left the collector
    assert seen[2:] == [False] * 5
    assert gc.isenabled()


def test_gc_left_on_when_policy_says_so():
    seen = []
    time_callable(lambda: seen.append(gc.isenabled()), n=3, policy=TimingPolicy(disable_gc=False))
    assert seen == [True] * 3


def test_gc_restored_after_exception():
    def boom():
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        time_callable(boom, n=3)
    assert gc.isenabled()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU pinning needs Linux sched_setaffinity")
def test_pinning_applies_and_restores_affinity():
    before = os.sched_getaffinity(0)
    target = min(before)
    seen = []
    time_callable(lambda: seen.append(os.sched_getaffinity(0)), n=2, policy=TimingPolicy(cpus=(target,)))
    assert seen == [{target}, {target}]
    assert os.sched_getaffinity(0) == before


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU pinning needs Linux sched_setaffinity")
def test_pinning_to_unavailable_cpu_is_input_error():
    bad = max(os.sched_getaffinity(0)) + 1000
    with pytest.raises(InputError, match=str(bad)):
        with timed_region(TimingPolicy(cpus=(bad,))):
            pass


@pytest.mark.parametrize("cpus", [(), (-1,), (1.5,), (True,)])
def test_policy_rejects_bad_cpu_ids(cpus):
    with pytest.raises(InputError):
        TimingPolicy(cpus=cpus)


def test_parse_cpus():
    assert parse_cpus("0") == (0,)
    assert parse_cpus("3,1") == (1, 3)
    assert parse_cpus("0-2,5") == (0, 1, 2, 5)
    for bad in ("", "a", "2-1", "-3", "1,,2"):
        with pytest.raises(InputError):
            parse_cpus(bad)


@pytest.mark.parametrize("n,warmup", [(0, 0), (-1, 0), (1, -1), (2.0, 0), (True, 0), (1, None)])
def test_bad_counts(n, warmup):
    with pytest.raises(InputError):
        time_callable(lambda: None, n=n, warmup=warmup)


def test_policy_description_states_gc_and_clock():
    d = TimingPolicy().describe()
    assert d["clock"] == "time.perf_counter_ns" and d["gc_disabled"] is True
    assert "disabled" in d["gc"] and d["cpu_affinity"] is None
    assert d["clock_resolution_ns"] > 0
