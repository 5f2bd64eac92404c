"""Metrics against brute-force definitions on seeded random data (with ties)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tools import metrics


def _auc_pairs(scores, labels):
    pos, neg = scores[labels == 1], scores[labels == 0]
    return ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))


@pytest.mark.parametrize("n", [7, 64, 301])
def test_auc_matches_pairwise_definition_with_ties(rng, n):
    scores = np.round(rng.normal(size=n), 1)  # rounding creates many ties
    labels = (rng.random(n) < 0.4).astype(int)
    labels[:2] = [0, 1]
    assert metrics.roc_auc(scores, labels) == pytest.approx(_auc_pairs(scores, labels), abs=1e-12)


def test_auc_extremes_and_degenerate():
    y = np.array([0, 0, 1, 1])
    assert metrics.roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), y) == 1.0
    assert metrics.roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), y) == 0.0
    assert math.isnan(metrics.roc_auc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_bootstrap_ci_brackets_auc(rng):
    labels = np.repeat([0, 1], 100)
    scores = rng.normal(size=200) + labels
    auc = metrics.roc_auc(scores, labels)
    lo, hi = metrics.auc_bootstrap_ci(scores, labels, n=300)
    assert lo < auc < hi and 0.6 < lo and hi < 0.95


def test_threshold_from_val_and_binary_counts():
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.2])
    labels = np.array([0, 0, 1, 1, 1, 0])
    t = metrics.youden_threshold(scores, labels)
    assert t == pytest.approx(0.35)
    m = metrics.binary_metrics(scores, labels, t)
    assert (m["tp"], m["tn"], m["fp"], m["fn"]) == (3, 2, 1, 0)
    assert m["sensitivity"] == 1.0 and m["specificity"] == pytest.approx(2 / 3)


def test_dice_per_class(rng):
    target = rng.integers(0, 3, size=(4, 16, 16))
    pred = target.copy()
    flip = rng.random(target.shape) < 0.2
    pred[flip] = (pred[flip] + 1) % 3
    d = metrics.dice_per_class(pred, target, 4)
    for k in range(3):
        p, t = pred == k, target == k
        assert d[k] == pytest.approx(2 * (p & t).sum() / (p.sum() + t.sum()))
    assert math.isnan(d[3])  # absent from both
    rep = metrics.segmentation_report(pred, target, ("bg", "a", "b"))
    assert rep["mean_dice"] == pytest.approx((d[1] + d[2]) / 2)


def test_sensitivity_by_bin():
    scores = np.array([0.9, 0.2, 0.8, 0.7, 0.1, 0.6])
    labels = np.array([1, 1, 1, 1, 0, 0])
    size = np.array([12.0, 14.0, 22.0, 29.0, 0.0, 0.0])
    out = metrics.sensitivity_by_bin(scores, labels, size, 0.5, [10, 15, 20, 30.01])
    assert out["10-15"] == {"n": 2, "sensitivity": 0.5}
    assert out["15-20"]["n"] == 0 and math.isnan(out["15-20"]["sensitivity"])
    assert out["20-30.01"] == {"n": 2, "sensitivity": 1.0}
