"""Held-out metrics: ROC AUC (+ bootstrap CI), accuracy/sensitivity/specificity, Dice per class."""
from __future__ import annotations

import math

import numpy as np


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve = P(score_pos > score_neg) + 0.5 P(tie) (Mann-Whitney U)."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty_like(ranks)
    r[order] = ranks
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_bootstrap_ci(scores: np.ndarray, labels: np.ndarray, n: int = 1000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the AUC, resampling positives and negatives separately."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels).astype(bool)
    pos, neg = np.asarray(scores)[labels], np.asarray(scores)[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return (float("nan"), float("nan"))
    aucs = []
    for _ in range(n):
        p = pos[rng.integers(len(pos), size=len(pos))]
        q = neg[rng.integers(len(neg), size=len(neg))]
        aucs.append((np.greater.outer(p, q).sum() + 0.5 * np.equal.outer(p, q).sum()) / (len(p) * len(q)))
    lo, hi = np.quantile(aucs, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def youden_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Threshold maximizing sensitivity + specificity - 1 (chosen on validation, applied to test)."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels).astype(bool)
    cands = np.unique(scores)
    best, best_t = -1.0, 0.5
    for t in cands:
        pred = scores >= t
        j = pred[labels].mean() + (~pred[~labels]).mean() - 1 if labels.any() and (~labels).any() else 0
        if j > best:
            best, best_t = j, float(t)
    return best_t


def binary_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    labels = np.asarray(labels).astype(bool)
    pred = np.asarray(scores) >= threshold
    tp, tn = int((pred & labels).sum()), int((~pred & ~labels).sum())
    fp, fn = int((pred & ~labels).sum()), int((~pred & labels).sum())
    return {"accuracy": (tp + tn) / len(labels),
            "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
            "specificity": tn / (tn + fp) if tn + fp else float("nan"),
            "threshold": float(threshold), "tp": tp, "tn": tn, "fp": fp, "fn": fn}


def classification_report(test_scores, test_labels, val_scores, val_labels) -> dict:
    """AUC (95% bootstrap CI) on test; accuracy/sensitivity/specificity at the validation Youden threshold."""
    t = youden_threshold(val_scores, val_labels)
    out = {"auc": roc_auc(test_scores, test_labels)}
    out["auc_ci95"] = list(auc_bootstrap_ci(test_scores, test_labels))
    out.update(binary_metrics(test_scores, test_labels, t))
    out["n"] = len(test_labels)
    return out


def dice_per_class(pred: np.ndarray, target: np.ndarray, num_classes: int) -> list[float]:
    """Dice per class pooled over all images of the split (NaN where the class is absent from both)."""
    out = []
    for k in range(num_classes):
        p, t = pred == k, target == k
        denom = p.sum() + t.sum()
        out.append(float(2 * (p & t).sum() / denom) if denom else float("nan"))
    return out


def segmentation_report(pred: np.ndarray, target: np.ndarray, labels: tuple[str, ...]) -> dict:
    d = dice_per_class(pred, target, len(labels))
    fg = [v for v in d[1:] if not math.isnan(v)]
    return {"dice": {lab: v for lab, v in zip(labels[1:], d[1:])},
            "mean_dice": float(np.mean(fg)) if fg else float("nan"),
            "pixel_accuracy": float((pred == target).mean()), "n": int(pred.shape[0])}


def sensitivity_by_bin(scores: np.ndarray, labels: np.ndarray, values: np.ndarray, threshold: float,
                       edges: list[float]) -> dict[str, dict]:
    """Sensitivity of positives grouped by `values` (e.g. lesion diameter in mm) into [edges[i], edges[i+1])."""
    labels = np.asarray(labels).astype(bool)
    pred = np.asarray(scores) >= threshold
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = labels & (values >= lo) & (values < hi)
        n = int(sel.sum())
        out[f"{lo:g}-{hi:g}"] = {"n": n, "sensitivity": float(pred[sel].mean()) if n else float("nan")}
    return out
