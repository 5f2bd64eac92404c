"""Gate metrics against brute-force references on seeded random data."""
from __future__ import annotations

import numpy as np
import pytest

from tools.quantize import metrics


def _auc_bruteforce(y, s):
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def test_auc_matches_pairwise_definition_with_ties(rng):
    for _ in range(5):
        y = rng.integers(0, 2, 200)
        s = np.round(y * 0.7 + rng.normal(0, 1, 200), 1)  # rounding creates ties
        assert metrics.auc_binary(y == 1, s) == pytest.approx(_auc_bruteforce(y, s), abs=1e-12)
    assert np.isnan(metrics.auc_binary(np.ones(5, bool), rng.normal(size=5)))


def test_classification_point_metrics(rng):
    y = rng.integers(0, 2, 300)
    logits = np.stack([np.zeros(300), y * 1.5 + rng.normal(0, 1, 300)], 1)
    prob = metrics.softmax(logits)
    m = metrics.classification_point(y, prob, 0.5)
    pred = prob[:, 1] >= 0.5
    tp, fp = np.sum(pred & (y == 1)), np.sum(pred & (y == 0))
    fn, tn = np.sum(~pred & (y == 1)), np.sum(~pred & (y == 0))
    assert m["recall"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["precision"] == pytest.approx(tp / (tp + fp))
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["accuracy"] == pytest.approx((tp + tn) / 300)
    # The operating point matters: a stricter threshold trades sensitivity for specificity.
    strict = metrics.classification_point(y, prob, 0.9)
    assert strict["recall"] < m["recall"] and strict["specificity"] > m["specificity"]


def test_dice_iou_pooled_per_class(rng):
    y = rng.integers(0, 3, size=(6, 16, 16)).astype(np.uint8)
    pred = y.copy()
    flip = rng.random(y.shape) < 0.2
    pred[flip] = (pred[flip] + 1) % 3
    logits = np.eye(3)[pred].transpose(0, 3, 1, 2).astype(np.float32)
    r = metrics.evaluate("segmentation", y, logits, labels=["bg", "a", "b"], reference=logits)
    for c, name in enumerate(["bg", "a", "b"]):
        t, p = y == c, pred == c
        dice = 2 * np.sum(t & p) / (t.sum() + p.sum())
        iou = np.sum(t & p) / np.sum(t | p)
        assert r["metrics"][f"dice_{name}"]["value"] == pytest.approx(dice)
        assert r["metrics"][f"iou_{name}"]["value"] == pytest.approx(iou)
    assert r["metrics"]["dice_mean"]["value"] == pytest.approx(
        (r["metrics"]["dice_a"]["value"] + r["metrics"]["dice_b"]["value"]) / 2)  # foreground classes only
    assert r["agreement"]["mask_iou_vs_fp32_mean"] == 1.0 and r["agreement"]["pixel_agreement"] == 1.0


def test_bootstrap_ci_and_paired_delta(rng):
    y = rng.integers(0, 2, 400)
    a = np.stack([np.zeros(400), y + rng.normal(0, 1, 400)], 1)
    b = a + np.stack([np.zeros(400), rng.normal(0, 0.3, 400)], 1)
    boot = metrics.bootstrap_indices(400)
    ra = metrics.evaluate("classification", y, a, labels=["n", "p"], boot=boot)
    rb = metrics.evaluate("classification", y, b, labels=["n", "p"], boot=boot, reference=a)
    for name, m in ra["metrics"].items():
        lo, hi = m["ci95"]
        assert lo <= m["value"] <= hi and hi - lo > 0, name
    self_delta = metrics.paired_delta(ra, ra, "auc")
    assert self_delta["value"] == 0 and self_delta["ci95"] == [0.0, 0.0]
    d = metrics.paired_delta(rb, ra, "auc")
    assert d["value"] == pytest.approx(rb["metrics"]["auc"]["value"] - ra["metrics"]["auc"]["value"])
    # Paired resampling: the CI of the difference is much narrower than either metric's own CI.
    width = lambda ci: ci[1] - ci[0]
    assert width(d["ci95"]) < 0.5 * width(ra["metrics"]["auc"]["ci95"])
    assert 0 < rb["agreement"]["top1_agreement"] < 1
