"""Out-of-distribution score of one result, from signals the engine already has in hand.

Signals (each one number per slice, all from the pass that produced the answer):
  input_mean, input_std   mean and standard deviation of the model input tensor (after VOI, resize and
                          normalization): a wrong window, a wrong modality or a blank/saturated image moves them;
  input_clipped           fraction of model-input values at or beyond the extremes seen in training
                          (a saturating window or another bit depth piles pixels up there);
  mahalanobis             classifiers: Mahalanobis distance of the penultimate features (the pooled last
                          feature maps, an extra ONNX output) to the nearest class mean, shared covariance
                          fitted on the training split (Lee et al., NeurIPS 2018);
  energy                  classifiers: -logsumexp(logits) (Liu et al., NeurIPS 2020), higher = less familiar;
  mean_uncertainty        segmenters: 1 - mean per-pixel max-softmax probability over a 1-in-64 pixel grid
                          (every 8th row and column: a mean needs no more, and the cost is per call).

Each statistic is normalized on in-distribution data (tools/trust_fit.py: train + validation, the
Mahalanobis distance on validation only): u = |v - centre| / scale (two-sided) or (v - centre) / scale
(upper), with centre the median and scale the 95th percentile of the deviation, so u = 1 is each
statistic's own 95th percentile. The score is the largest u;
the threshold is the validation quantile of that score at the bundle's false-alarm target (5%). The
reason names the statistic with the largest u and its in-distribution limit.

Everything here is NumPy on arrays of a few thousand values (microseconds); nothing is a second pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import BundleError

KINDS = ("two_sided", "upper")
INPUT_STATISTICS = ("input_mean", "input_std", "input_clipped")
CLASSIFIER_STATISTICS = ("mahalanobis", "energy")
SEGMENTER_STATISTICS = ("mean_uncertainty",)
STATISTICS = INPUT_STATISTICS + CLASSIFIER_STATISTICS + SEGMENTER_STATISTICS
DESCRIPTIONS = {
    "input_mean": "mean of the model input",
    "input_std": "standard deviation of the model input",
    "input_clipped": "fraction of model-input values at the training extremes",
    "mahalanobis": "Mahalanobis distance of the penultimate features to the nearest class",
    "energy": "energy score of the logits (-logsumexp)",
    "mean_uncertainty": "mean per-pixel uncertainty (1 - max softmax)",
}
_SUBSAMPLE = 8  # segmenter uncertainty on every 8th row and column: 1/64 of the pixels
_ONES: dict[int, np.ndarray] = {}  # ones vectors by length: a BLAS dot sums faster than ndarray.sum


class OODScore:
    """`Result.ood`: score (largest normalized statistic, dimensionless), threshold (same units), flag
    (score > threshold), reason (which statistic, its value and in-distribution limit; "" when not flagged),
    statistic (the name of the largest one), signals {statistic: raw value}. See docs/trust.md for what
    each statistic can and cannot detect."""

    __slots__ = ("score", "threshold", "flag", "statistic", "reason", "signals")

    def __init__(self, score: float, threshold: float, flag: bool, statistic: str, reason: str,
                 signals: dict[str, float]):
        # A plain class, not a frozen dataclass: this is built on every Session.run.
        self.score, self.threshold, self.flag = score, threshold, flag
        self.statistic, self.reason, self.signals = statistic, reason, signals

    def __repr__(self) -> str:
        return (f"OODScore(score={self.score:.4g}, threshold={self.threshold:.4g}, flag={self.flag}, "
                f"statistic={self.statistic!r}, reason={self.reason!r})")

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "threshold": self.threshold, "flag": self.flag, "statistic": self.statistic,
                "reason": self.reason, "signals": dict(self.signals)}


def input_statistics(x: np.ndarray, clip_lo: float, clip_hi: float) -> tuple[float, float, float]:
    """(mean, std, clipped fraction) of one model input (any shape, float). Two reductions and two
    comparisons over the tensor: a few microseconds for 128x128."""
    flat = x.reshape(-1)
    n = flat.size
    if flat.dtype != np.float32:
        flat = flat.astype(np.float32)
    if n > 65536:  # float32 accumulation error grows with n: float64 beyond 256 x 256
        s1 = float(flat.sum(dtype=np.float64))
        s2 = float(np.dot(flat.astype(np.float64), flat))
    else:
        ones = _ONES.get(n)
        if ones is None:
            ones = _ONES.setdefault(n, np.ones(n, np.float32))
        s1 = float(np.dot(ones, flat))
        s2 = float(np.dot(flat, flat))
    mean = s1 / n
    var = max(s2 / n - mean * mean, 0.0)
    clipped = (np.count_nonzero(flat <= clip_lo) + np.count_nonzero(flat >= clip_hi)) / n
    return mean, math.sqrt(var), float(clipped)


def energy(logits: np.ndarray) -> float:
    """-logsumexp(logits) of one slice (float64 internally; no overflow)."""
    vals = logits.tolist()
    m = max(vals)
    return -(m + math.log(sum(math.exp(v - m) for v in vals)))


def mean_uncertainty(logits: np.ndarray) -> float:
    """1 - mean max-softmax probability of (K, H, W) logits over every 8th row and column. The max
    class's softmax is 1 / sum_k exp(l_k - l_max), so no full softmax is formed."""
    k = logits.shape[0]
    sub = np.array(logits[:, ::_SUBSAMPLE, ::_SUBSAMPLE], dtype=np.float32).reshape(k, -1)  # small, contiguous
    if k == 1:  # sigmoid head: max(p, 1 - p)
        p = 0.5 * (1.0 + np.tanh(0.5 * np.abs(sub[0])))
        return float(1.0 - p.mean())
    sub -= sub.max(axis=0)
    np.exp(sub, out=sub)
    s = sub.sum(axis=0)
    return float(1.0 - np.reciprocal(s, out=s).mean())


class Mahalanobis:
    """min_k ||W (f - mu_k)||, W the whitening matrix (Cholesky factor of the shrunk inverse covariance).
    Stored whitened: `means_w` = W mu_k, so a call is one (C x C) mat-vec and K squared distances."""

    __slots__ = ("whiten", "means_w", "_mm")

    def __init__(self, whiten: np.ndarray, means_w: np.ndarray):
        self.whiten = np.ascontiguousarray(whiten, np.float64)
        self.means_w = np.ascontiguousarray(means_w, np.float64)
        self._mm = np.einsum("kc,kc->k", self.means_w, self.means_w)  # ||W mu_k||^2

    def __call__(self, features: np.ndarray) -> float:
        # ||z - m_k||^2 = ||z||^2 - 2 z.m_k + ||m_k||^2: one mat-vec, one dot, one K-vector; no temporaries.
        z = self.whiten @ features.astype(np.float64, copy=False).reshape(-1)
        d2 = float(np.min(self._mm - 2.0 * (self.means_w @ z))) + float(z @ z)
        return math.sqrt(max(d2, 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {"whiten": self.whiten.tolist(), "means_w": self.means_w.tolist()}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Mahalanobis:
        if not isinstance(d, dict):
            raise BundleError(f"manifest.json: {where} must be an object")
        w = _matrix(d.get("whiten"), f"{where}.whiten")
        m = _matrix(d.get("means_w"), f"{where}.means_w")
        if w.shape[0] != w.shape[1] or m.shape[1] != w.shape[0]:
            raise BundleError(f"manifest.json: {where}: whiten must be C x C and means_w K x C, got {w.shape} and "
                              f"{m.shape}")
        return cls(w, m)

    @property
    def num_features(self) -> int:
        return self.whiten.shape[0]


def _matrix(v: Any, where: str) -> np.ndarray:
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise BundleError(f"manifest.json: {where} must be a matrix of numbers") from None
    if a.ndim != 2 or a.size == 0 or a.shape[0] > 4096 or a.shape[1] > 4096 or not np.all(np.isfinite(a)):
        raise BundleError(f"manifest.json: {where} must be a finite, non-empty 2-D matrix (at most 4096 x 4096), "
                          f"got shape {a.shape}")
    return a


def _number(d: dict, key: str, where: str, *, positive: bool = False) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
        raise BundleError(f"manifest.json: {where}.{key} must be a finite{' positive' if positive else ''} number, "
                          f"got {v!r}")
    return float(v)


@dataclass(frozen=True)
class Statistic:
    """One normalized statistic: u = |v - centre| / scale (two_sided) or (v - centre) / scale (upper)."""

    name: str
    kind: str
    centre: float
    scale: float

    def normalized(self, v: float) -> float:
        d = (v - self.centre) / self.scale
        return abs(d) if self.kind == "two_sided" else d

    def limit(self, threshold: float) -> str:
        hi = self.centre + threshold * self.scale
        if self.kind == "two_sided":
            return f"[{self.centre - threshold * self.scale:.4g}, {hi:.4g}]"
        return f"<= {hi:.4g}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "centre": self.centre, "scale": self.scale}

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Statistic:
        if not isinstance(d, dict):
            raise BundleError(f"manifest.json: {where} must be an object")
        name, kind = d.get("name"), d.get("kind")
        if name not in STATISTICS:
            raise BundleError(f"manifest.json: {where}.name must be one of {STATISTICS}, got {name!r}")
        if kind not in KINDS:
            raise BundleError(f"manifest.json: {where}.kind must be one of {KINDS}, got {kind!r}")
        return cls(name, kind, _number(d, "centre", where), _number(d, "scale", where, positive=True))


class OODModel:
    """The fitted OOD score of one bundle variant (manifest trust.variants.<v>.ood)."""

    def __init__(self, statistics: list[Statistic], threshold: float, false_alarm_target: float,
                 clip: tuple[float, float] | None, mahalanobis: Mahalanobis | None):
        self.statistics = statistics
        self.threshold = threshold
        self.false_alarm_target = false_alarm_target
        self.clip = clip
        self.mahalanobis = mahalanobis
        self.names = tuple(s.name for s in statistics)
        self.needs_input = any(n in INPUT_STATISTICS for n in self.names)
        self._fast = [(s, s.name, s.centre, 1.0 / s.scale, s.kind == "two_sided") for s in statistics]

    # -- scoring -------------------------------------------------------------------------------
    def signals(self, *, model_input: np.ndarray | None, logits: np.ndarray, features: np.ndarray | None,
                task: str) -> dict[str, float]:
        """Raw statistic values of one slice; statistics whose input is unavailable are left out."""
        out: dict[str, float] = {}
        if model_input is not None and self.needs_input and self.clip is not None:
            mean, std, clipped = input_statistics(model_input, *self.clip)
            out["input_mean"], out["input_std"], out["input_clipped"] = mean, std, clipped
        if task == "classification":
            if "energy" in self.names:
                out["energy"] = energy(logits)
            if self.mahalanobis is not None and features is not None:
                out["mahalanobis"] = self.mahalanobis(features)
        elif "mean_uncertainty" in self.names:
            out["mean_uncertainty"] = mean_uncertainty(logits)
        return out

    def score(self, signals: dict[str, float]) -> OODScore:
        best, best_u = None, -math.inf
        for s, name, centre, inv_scale, two_sided in self._fast:
            v = signals.get(name)
            if v is None:
                continue
            if v == v and v not in (math.inf, -math.inf):
                u = (v - centre) * inv_scale
                if two_sided and u < 0:
                    u = -u
            else:
                u = math.inf
            if u > best_u:
                best, best_u = s, u
        if best is None:
            return OODScore(math.nan, self.threshold, False, "", "no OOD statistic could be computed here",
                            signals)
        flag = best_u > self.threshold
        reason = ""
        if flag:
            reason = (f"{best.name} = {signals[best.name]:.4g} ({DESCRIPTIONS[best.name]}) is outside its "
                      f"in-distribution range {best.limit(self.threshold)} (threshold set on the validation split "
                      f"at {self.false_alarm_target:.0%} false alarms)")
        return OODScore(float(best_u), self.threshold, flag, best.name, reason, signals)

    # -- (de)serialization -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {"statistics": [s.to_dict() for s in self.statistics], "threshold": self.threshold,
             "false_alarm_target": self.false_alarm_target, "clip": list(self.clip) if self.clip else None}
        if self.mahalanobis is not None:
            d["mahalanobis"] = self.mahalanobis.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str) -> OODModel:
        if not isinstance(d, dict):
            raise BundleError(f"manifest.json: {where} must be an object")
        stats = d.get("statistics")
        if not isinstance(stats, list) or not stats or len(stats) > len(STATISTICS):
            raise BundleError(f"manifest.json: {where}.statistics must be a non-empty list of statistics")
        statistics = [Statistic.from_dict(s, f"{where}.statistics[{i}]") for i, s in enumerate(stats)]
        if len({s.name for s in statistics}) != len(statistics):
            raise BundleError(f"manifest.json: {where}.statistics names a statistic twice")
        threshold = _number(d, "threshold", where, positive=True)
        target = _number(d, "false_alarm_target", where, positive=True)
        if target >= 1:
            raise BundleError(f"manifest.json: {where}.false_alarm_target must be in (0, 1), got {target}")
        clip = d.get("clip")
        if clip is not None:
            if (not isinstance(clip, list) or len(clip) != 2 or
                    not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                            for v in clip) or not clip[0] < clip[1]):
                raise BundleError(f"manifest.json: {where}.clip must be [low, high] finite numbers, got {clip!r}")
            clip = (float(clip[0]), float(clip[1]))
        maha = d.get("mahalanobis")
        maha = Mahalanobis.from_dict(maha, f"{where}.mahalanobis") if maha is not None else None
        if any(s.name in INPUT_STATISTICS for s in statistics) and clip is None:
            raise BundleError(f"manifest.json: {where}: input statistics need 'clip'")
        if any(s.name == "mahalanobis" for s in statistics) and maha is None:
            raise BundleError(f"manifest.json: {where}: the mahalanobis statistic needs its 'mahalanobis' model")
        return cls(statistics, threshold, target, clip, maha)


__all__ = ["OODScore", "OODModel", "Statistic", "Mahalanobis", "input_statistics", "energy", "mean_uncertainty",
           "STATISTICS", "DESCRIPTIONS"]
