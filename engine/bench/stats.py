"""Latency statistics computed from raw samples (never from pre-aggregated numbers).

Percentiles use linear interpolation between order statistics (Hyndman & Fan type 7, the default of
`numpy.percentile`), computed from one sort so every percentile of a stage comes from the same order.
`std` is the population standard deviation (ddof=0) so it is defined for a single sample.
Tail percentiles need enough samples to mean anything: p99.9 is interpolated from the top two order
statistics below ~1000 samples, which is why reports keep `n` next to every number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.errors import InputError

# (key in reports, percentile in [0, 100]).
PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9))
STAT_KEYS: tuple[str, ...] = (
    "n",
    "min",
    "p50",
    "p90",
    "p99",
    "p99_9",
    "max",
    "mean",
    "std",
    "jitter_p99_p50",
    "throughput_per_s",
)


def _as_samples(samples: Any, name: str) -> np.ndarray:
    arr = np.asarray(samples, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise InputError(f"{name}: expected a non-empty 1-D sequence of samples, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name}: samples contain NaN or Inf")
    if np.any(arr < 0):
        raise InputError(f"{name}: latency samples must be >= 0, got min {arr.min()}")
    return arr


def percentile_sorted(sorted_samples: np.ndarray, q: float) -> float:
    """Percentile `q` (0..100) of an ascending array, type-7 linear interpolation."""
    if not 0.0 <= q <= 100.0:
        raise InputError(f"percentile must be in [0, 100], got {q}")
    n = sorted_samples.size
    h = (n - 1) * (q / 100.0)
    lo = math.floor(h)
    hi = min(lo + 1, n - 1)
    frac = h - lo
    return float(sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * frac)


def summarize(
    samples_ms: Sequence[float] | np.ndarray, *, items_per_sample: int = 1, name: str = "samples"
) -> dict[str, float | int | None]:
    """Summary of latency samples in milliseconds.

    Returns n, min, p50, p90, p99, p99_9, max, mean, std (all ms), jitter_p99_p50 (p99 / p50, None when
    p50 is 0) and throughput_per_s = items processed per second of summed sample time
    (`items_per_sample` items per sample, e.g. the batch size).
    """
    if isinstance(items_per_sample, bool) or not isinstance(items_per_sample, int) or items_per_sample < 1:
        raise InputError(f"items_per_sample must be an integer >= 1, got {items_per_sample!r}")
    arr = _as_samples(samples_ms, name)
    s = np.sort(arr)
    out: dict[str, float | int | None] = {"n": int(s.size), "min": float(s[0])}
    for key, q in PERCENTILES:
        out[key] = percentile_sorted(s, q)
    out["max"] = float(s[-1])
    out["mean"] = float(s.mean())
    out["std"] = float(s.std(ddof=0))
    p50 = out["p50"]
    out["jitter_p99_p50"] = float(out["p99"] / p50) if p50 > 0 else None
    total_s = float(s.sum()) / 1e3
    out["throughput_per_s"] = (s.size * items_per_sample) / total_s if total_s > 0 else None
    return out


def paired_ratio(
    reference_ms: np.ndarray, candidate_ms: np.ndarray, *, n_boot: int = 2000, seed: int = 0
) -> dict[str, float | list[float] | int]:
    """Per-round speed-up reference/candidate for interleaved samples (round i of both ran back to back).

    Pairing cancels slow drifts of a shared machine (another process hogging a core for a few seconds
    slows both members of a pair). Returns the median of the per-round ratios and a percentile-bootstrap
    95 % confidence interval of that median (seeded, so reports are reproducible).
    """
    ref = _as_samples(reference_ms, "reference")
    cand = _as_samples(candidate_ms, "candidate")
    if ref.size != cand.size:
        raise InputError(f"paired samples need equal counts, got {ref.size} and {cand.size}")
    if np.any(cand == 0):
        raise InputError("candidate samples contain 0 ms: cannot form a ratio")
    ratios = ref / cand
    median = float(np.median(ratios))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, ratios.size, size=(n_boot, ratios.size))
    boot = np.median(ratios[idx], axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {
        "median": median,
        "ci95": [float(lo), float(hi)],
        "n": int(ratios.size),
        "n_boot": n_boot,
        "seed": seed,
    }


def paired_difference(
    a_ms: np.ndarray, b_ms: np.ndarray, *, n_boot: int = 2000, seed: int = 0
) -> dict[str, float | list[float] | int]:
    """Per-round difference a - b (ms) of interleaved samples: median and percentile-bootstrap 95 % CI.

    Used for overheads (e.g. Session.run minus the bare backend calls it wraps), where a ratio would
    hide a fixed cost.
    """
    a = _as_samples(a_ms, "a")
    b = _as_samples(b_ms, "b")
    if a.size != b.size:
        raise InputError(f"paired samples need equal counts, got {a.size} and {b.size}")
    d = a - b
    rng = np.random.default_rng(seed)
    boot = np.median(d[rng.integers(0, d.size, size=(n_boot, d.size))], axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {
        "median": float(np.median(d)),
        "ci95": [float(lo), float(hi)],
        "n": int(d.size),
        "n_boot": n_boot,
        "seed": seed,
    }
