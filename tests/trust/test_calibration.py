"""Temperature scaling: fitted on the validation set at build time, stored per variant, applied in
post-processing; ECE before/after in the trust report for every variant (INT8 included)."""
from __future__ import annotations

import numpy as np
import pytest


def test_fit_temperature_recovers_a_known_temperature(rng):
    from engine.trust.calibration import fit_temperature

    logits = rng.standard_normal((6000, 4)) * 3.0
    for t_true in (0.5, 2.5):
        p = np.exp(logits / t_true)
        p /= p.sum(axis=1, keepdims=True)
        labels = np.array([rng.choice(4, p=row) for row in p])
        assert fit_temperature(logits, labels) == pytest.approx(t_true, rel=0.08)


def test_expected_calibration_error_on_known_cases():
    from engine.trust.calibration import expected_calibration_error

    # 10 slices at confidence 0.9, 9 right: calibrated, ECE 0; all wrong: ECE 0.9.
    probs = np.tile([0.9, 0.1], (10, 1))
    assert expected_calibration_error(probs, np.array([0] * 9 + [1])) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(probs, np.ones(10, int)) == pytest.approx(0.9)
    # Two bins: 0.6 (all right, gap 0.4) and 0.95 (half right, gap 0.45), half of the slices each.
    probs = np.array([[0.6, 0.4]] * 4 + [[0.95, 0.05]] * 4)
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.45)


def test_report_gives_ece_before_and_after_per_variant(trust_dirs):
    from engine.trust.calibration import nll

    rep = trust_dirs["cls_trust"]["report"]["variants"]
    assert {"fp32", "fp16", "int8"} <= set(rep)
    data = trust_dirs["cls_data"]
    for v, r in rep.items():
        c = r["calibration"]
        for key in ("ece_val_before", "ece_val_after", "ece_test_before", "ece_test_after"):
            assert 0.0 <= c[key] <= 1.0, (v, key)
        # The fit minimizes validation NLL, T = 1 is in its range: it can only be as good or better there.
        assert c["nll_test_after"] <= c["nll_test_before"] + 0.05, (v, c)
        assert c["n_val"] == len(data.val) and c["n_test"] == len(data.test)
    # The labels flip 25% of the model's answers: its raw softmax is overconfident, T < 1 would make it worse.
    assert rep["fp32"]["calibration"]["ece_val_after"] < rep["fp32"]["calibration"]["ece_val_before"]
    assert nll(np.zeros((2, 2)), np.array([0, 1])) == pytest.approx(np.log(2))


def test_session_applies_the_variants_temperature(trust_bundles, trust_dirs):
    import onnxruntime as ort

    import engine
    from engine.preprocess import preprocess

    images = trust_dirs["cls_splits"]["test"][:3]
    for precision in ("fp32", "int8"):
        with engine.load(trust_bundles["cls"], precision=precision, threads=1) as s:
            t = s.bundle.manifest["trust"]["variants"][precision]["temperature"]
            assert s.info["trust"]["temperature"] == t and t != 1.0
            entry = s.bundle.variants[precision]
            sess = ort.InferenceSession(s.bundle.read(entry.get("onnx_cpu") or entry["onnx"]),
                                        providers=["CPUExecutionProvider"])
            for im in images:
                logits = sess.run(["scores"], {"input": preprocess(im, s.spec)})[0][0].astype(np.float64)
                want = np.exp(logits / t - (logits / t).max())
                want /= want.sum()
                r = s.run(im)
                np.testing.assert_allclose(r.scores, want, rtol=2e-5, atol=1e-6)
                assert r.label == s.labels[int(np.argmax(logits))]  # T changes no decision


def test_class_scores_into_temperature_paths_agree(rng):
    from engine.postprocess import class_scores_into

    for k in (3, 40):  # the Python-float path (<= 32 classes) and the NumPy path
        logits = rng.standard_normal(k).astype(np.float32) * 4
        a, b = np.empty(k, np.float32), np.empty(k, np.float32)
        assert class_scores_into(a, logits, "softmax", 2.0) == int(logits.argmax())
        class_scores_into(b, logits / np.float32(2.0), "softmax")
        np.testing.assert_allclose(a, b, rtol=1e-5)
        class_scores_into(a, logits, "sigmoid", 0.5)
        np.testing.assert_allclose(a, 1 / (1 + np.exp(-logits.astype(np.float64) * 2)), rtol=1e-5, atol=1e-6)
