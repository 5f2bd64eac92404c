"""Temperature scaling (Guo et al., ICML 2017): probabilities = softmax(logits / T), one T > 0 per
variant, fitted on the validation split by minimizing the negative log-likelihood. T changes no
decision (argmax is unchanged); it makes a score of 0.9 mean about 90% right on data like the
validation split. It cannot make an out-of-distribution answer trustworthy.

`expected_calibration_error` is the measure the accuracy report gives before and after: top-label
confidence in 10 equal-width bins, |accuracy - confidence| weighted by the bin's share of slices.
Both are NumPy only: the toolchain fits with them, the runtime applies T in post-processing.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from engine.errors import BundleError, InputError

T_MIN, T_MAX = 0.05, 20.0  # searched range; a fit at either end is reported, not extrapolated
ECE_BINS = 10


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of integer `labels` under softmax(logits / T). (N, K) logits."""
    lp = _log_softmax(np.asarray(logits, np.float64) / temperature)
    return float(-lp[np.arange(lp.shape[0]), np.asarray(labels, np.int64)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """T minimizing the NLL on (N, K) logits: golden-section search on log T in [T_MIN, T_MAX]
    (the NLL is convex in 1/T, so unimodal in log T)."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0] or logits.shape[0] < 2:
        raise InputError(f"fit_temperature: need (N, K) logits and N labels, N >= 2; got {logits.shape}, "
                         f"{labels.shape}")
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    for _ in range(36):  # the bracket shrinks by 0.618 per step: 6 units of log T to < 1e-6
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    return float(math.exp((lo + hi) / 2))


def softmax_t(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return np.exp(_log_softmax(np.asarray(logits, np.float64) / temperature))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE of (N, K) probabilities against integer labels, `bins` equal-width bins."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    idx = np.minimum((conf * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(total)


def temperature_from_manifest(entry: Any, where: str) -> float:
    """The variant's T from manifest trust.variants.<v>.temperature (BundleError when malformed)."""
    if entry is None:
        return 1.0
    if isinstance(entry, bool) or not isinstance(entry, (int, float)) or not math.isfinite(entry) or \
            not T_MIN * 0.999 <= entry <= T_MAX * 1.001:
        raise BundleError(f"manifest.json: {where} must be a number in [{T_MIN}, {T_MAX}], got {entry!r}")
    return float(entry)


__all__ = ["fit_temperature", "expected_calibration_error", "nll", "softmax_t", "temperature_from_manifest"]
