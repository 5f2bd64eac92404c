"""Clinical metrics for the accuracy gate, with percentile-bootstrap 95% confidence intervals.

Classification: AUC (one-vs-rest, macro for K > 2), accuracy, F1, precision, recall (sensitivity) and
specificity at the model's operating point. Segmentation: Dice and IoU (Jaccard) per class and their
mean over foreground classes, from TP/FP/FN pooled over the split. Every variant is resampled with the
same seeded indices, so differences to FP32 get paired CIs too.
"""
from __future__ import annotations

from typing import Any

import numpy as np

N_BOOTSTRAP = 1000
BOOTSTRAP_SEED = 20261123


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) with ties sharing the mean rank, like scipy.stats.rankdata."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), np.float64)
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(x)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auc_binary(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC; NaN when only one class is present."""
    pos = y.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _ranks(score.astype(np.float64))
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_point(y: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, float]:
    k = prob.shape[1]
    if k == 2:
        pred = (prob[:, 1] >= threshold).astype(np.int64)
        auc = auc_binary(y == 1, prob[:, 1])
        tp = float(np.sum((pred == 1) & (y == 1)))
        fp = float(np.sum((pred == 1) & (y == 0)))
        fn = float(np.sum((pred == 0) & (y == 1)))
        tn = float(np.sum((pred == 0) & (y == 0)))
    else:
        pred = prob.argmax(1)
        aucs = [auc_binary(y == c, prob[:, c]) for c in range(k)]
        auc = float(np.nanmean(aucs)) if not all(np.isnan(aucs)) else float("nan")
        per = [(np.sum((pred == c) & (y == c)), np.sum((pred == c) & (y != c)), np.sum((pred != c) & (y == c)),
                np.sum((pred != c) & (y != c))) for c in range(k)]
        tp, fp, fn, tn = (float(np.mean([p[i] for p in per])) for i in range(4))  # macro over classes

    def ratio(a, b):
        return a / b if b > 0 else float("nan")

    precision = ratio(tp, tp + fp)
    recall = ratio(tp, tp + fn)
    return {
        "auc": auc,
        "accuracy": float(np.mean(pred == y)),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "precision": precision,
        "recall": recall,  # = sensitivity
        "specificity": ratio(tn, tn + fp),
    }


def segmentation_counts(y: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-slice (N, K, 3) TP/FP/FN pixel counts."""
    n = len(y)
    out = np.empty((n, num_classes, 3), np.int64)
    yf, pf = y.reshape(n, -1), pred.reshape(n, -1)
    for c in range(num_classes):
        t, p = yf == c, pf == c
        out[:, c, 0] = np.sum(t & p, axis=1)
        out[:, c, 1] = np.sum(~t & p, axis=1)
        out[:, c, 2] = np.sum(t & ~p, axis=1)
    return out


def _seg_from_counts(counts: np.ndarray, labels: list[str]) -> dict[str, float]:
    tp, fp, fn = counts[..., 0].astype(np.float64), counts[..., 1], counts[..., 2]
    denom_d = 2 * tp + fp + fn
    denom_i = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(denom_d > 0, 2 * tp / np.maximum(denom_d, 1), np.nan)
        iou = np.where(denom_i > 0, tp / np.maximum(denom_i, 1), np.nan)
    out = {}
    for c, name in enumerate(labels):
        out[f"dice_{name}"] = float(dice[c])
        out[f"iou_{name}"] = float(iou[c])
    fg = slice(1, None) if len(labels) > 1 else slice(None)
    out["dice_mean"] = float(np.nanmean(dice[fg]))
    out["iou_mean"] = float(np.nanmean(iou[fg]))
    return out


def bootstrap_indices(n: int, b: int = N_BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(b, n))


def _ci(values: np.ndarray) -> list[float]:
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return [float("nan"), float("nan")]
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]


def evaluate(task: str, y: np.ndarray, out: np.ndarray, *, labels: list[str], threshold: float = 0.5,
             reference: np.ndarray | None = None, boot: np.ndarray | None = None) -> dict[str, Any]:
    """Metrics (point + 95% CI) of model output `out` against targets `y`, and agreement with `reference`
    (the FP32 output) when given. Returns {"metrics": {name: {"value", "ci95"}}, "agreement": {...},
    "_samples": {name: bootstrap values}} (the last for paired differences, not serialized)."""
    boot = bootstrap_indices(len(y)) if boot is None else boot
    if task == "classification":
        prob = softmax(out.astype(np.float64))
        point = classification_point(y, prob, threshold)
        samples = {k: np.empty(len(boot)) for k in point}
        for b, idx in enumerate(boot):
            for k, v in classification_point(y[idx], prob[idx], threshold).items():
                samples[k][b] = v
        agreement = None
        if reference is not None:
            ref = softmax(reference.astype(np.float64))
            agreement = {"top1_agreement": float(np.mean(prob.argmax(1) == ref.argmax(1))),
                         "max_abs_prob_diff": float(np.max(np.abs(prob - ref)))}
            if prob.shape[1] == 2:
                agreement["decision_agreement"] = float(np.mean((prob[:, 1] >= threshold)
                                                               == (ref[:, 1] >= threshold)))
    else:
        k = out.shape[1]
        pred = out.argmax(1)
        counts = segmentation_counts(y, pred, k)
        point = _seg_from_counts(counts.sum(0), labels)
        samples = {name: np.empty(len(boot)) for name in point}
        for b, idx in enumerate(boot):
            for name, v in _seg_from_counts(counts[idx].sum(0), labels).items():
                samples[name][b] = v
        agreement = None
        if reference is not None:
            ref_pred = reference.argmax(1)
            vs = _seg_from_counts(segmentation_counts(ref_pred, pred, k).sum(0), labels)
            agreement = {"mask_iou_vs_fp32_mean": vs["iou_mean"],
                         **{f"mask_iou_vs_fp32_{n}": vs[f"iou_{n}"] for n in labels},
                         "pixel_agreement": float(np.mean(pred == ref_pred))}
    metrics = {name: {"value": point[name], "ci95": _ci(samples[name])} for name in point}
    return {"metrics": metrics, "agreement": agreement, "_samples": samples}


def paired_delta(variant: dict[str, Any], reference: dict[str, Any], name: str) -> dict[str, Any]:
    """variant - reference for metric `name`, with a paired bootstrap 95% CI (same resampled slices)."""
    d = variant["metrics"][name]["value"] - reference["metrics"][name]["value"]
    samples = variant["_samples"][name] - reference["_samples"][name]
    return {"value": float(d), "ci95": _ci(samples)}
