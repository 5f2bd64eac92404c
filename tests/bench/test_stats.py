from __future__ import annotations

import numpy as np
import pytest

from engine.bench.stats import (
    PERCENTILES,
    STAT_KEYS,
    paired_difference,
    paired_ratio,
    percentile_sorted,
    summarize,
)
from engine.errors import InputError


@pytest.mark.parametrize("n", [1, 2, 3, 10, 999, 1000, 4097])
def test_summary_matches_numpy_on_random_samples(rng, n):
    # Latency-like samples: log-normal body plus a few large outliers (the tail is what matters).
    x = rng.lognormal(mean=0.5, sigma=0.4, size=n)
    x[rng.integers(0, n, size=max(1, n // 200))] *= rng.uniform(3, 20)
    st = summarize(x, items_per_sample=4)
    assert set(st) == set(STAT_KEYS)
    assert st["n"] == n
    for key, q in PERCENTILES:
        assert st[key] == pytest.approx(np.percentile(x, q), rel=1e-12, abs=1e-12), key
    assert st["min"] == x.min() and st["max"] == x.max()
    assert st["mean"] == pytest.approx(x.mean(), rel=1e-12)
    assert st["std"] == pytest.approx(x.std(ddof=0), rel=1e-9, abs=1e-12)
    assert st["jitter_p99_p50"] == pytest.approx(np.percentile(x, 99) / np.median(x), rel=1e-12)
    assert st["throughput_per_s"] == pytest.approx(n * 4 / (x.sum() / 1e3), rel=1e-12)
    assert st["min"] <= st["p50"] <= st["p90"] <= st["p99"] <= st["p99_9"] <= st["max"]


def test_percentile_is_order_independent_and_exact_on_small_case():
    s = np.sort(np.array([4.0, 1.0, 3.0, 2.0]))
    assert percentile_sorted(s, 0) == 1.0
    assert percentile_sorted(s, 100) == 4.0
    assert percentile_sorted(s, 50) == 2.5  # halfway between order statistics 2 and 3
    assert percentile_sorted(s, 90) == pytest.approx(3.7)


def test_jitter_undefined_when_median_is_zero():
    st = summarize([0.0, 0.0, 0.0, 1.0])
    assert st["jitter_p99_p50"] is None


@pytest.mark.parametrize("bad", [[], [[1.0, 2.0]], [1.0, float("nan")], [1.0, float("inf")], [1.0, -0.5]])
def test_bad_samples_raise_input_error(bad):
    with pytest.raises(InputError):
        summarize(bad)


@pytest.mark.parametrize("items", [0, -1, 1.5, True])
def test_bad_items_per_sample(items):
    with pytest.raises(InputError, match="items_per_sample"):
        summarize([1.0], items_per_sample=items)


def test_percentile_out_of_range():
    with pytest.raises(InputError):
        percentile_sorted(np.array([1.0]), 100.1)


def test_paired_ratio_recovers_known_speedup_under_shared_drift(rng):
    # Both members of a round see the same machine slowdown (drift); the candidate is 3x faster.
    n = 800
    drift = 1.0 + 2.0 * (np.sin(np.linspace(0, 6, n)) > 0.5)  # periods where the box is 3x slower
    ref = 10.0 * drift * rng.lognormal(0, 0.02, n)
    cand = (10.0 / 3.0) * drift * rng.lognormal(0, 0.02, n)
    r = paired_ratio(ref, cand, seed=1)
    assert r["median"] == pytest.approx(3.0, rel=0.01)
    assert r["ci95"][0] <= r["median"] <= r["ci95"][1]
    assert r["ci95"][1] - r["ci95"][0] < 0.05
    assert r == paired_ratio(ref, cand, seed=1)  # seeded: reproducible reports


def test_paired_ratio_rejects_unpaired():
    with pytest.raises(InputError, match="equal counts"):
        paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(InputError, match="0 ms"):
        paired_ratio([1.0, 2.0], [1.0, 0.0])


def test_paired_difference_recovers_fixed_overhead_under_drift(rng):
    n = 600
    base = 2.0 * (1 + 3 * (rng.random(n) < 0.2))  # bursts of a busy neighbour hit both members of a round
    bare = base + rng.normal(0, 0.001, n)
    wrapped = base + 0.025 + rng.normal(0, 0.001, n)  # 25 us of wrapper overhead
    d = paired_difference(wrapped, bare, seed=2)
    assert d["median"] == pytest.approx(0.025, abs=0.0005)
    assert d["ci95"][0] <= d["median"] <= d["ci95"][1] and d["ci95"][1] - d["ci95"][0] < 0.001
    with pytest.raises(InputError):
        paired_difference([1.0], [1.0, 2.0])
