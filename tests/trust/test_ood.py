"""OOD score on every result: fitted at build time (tools/trust_fit.py), computed by the runtime with the
same functions, thresholded at the validation quantile for a 5% false-alarm target."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from engine.errors import BundleError

from .conftest import data_file


def test_runtime_scores_equal_the_fit_time_scores(cls_trust_session, trust_dirs):
    """Session.run recomputes, for a raw test image, the OOD score the fit computed for the same input."""
    from tools.trust_fit import _input_stats, _Runner

    from engine.trust.ood import OODModel

    s = cls_trust_session
    entry = s.bundle.manifest["trust"]["variants"]["fp32"]["ood"]
    model = OODModel.from_dict(entry, "fp32")
    data, images = trust_dirs["cls_data"], trust_dirs["cls_splits"]["test"]
    runner = _Runner(s.bundle.read(s.bundle.variants["fp32"]["onnx"]), 1)
    outs = next(runner.batches(data.test[:4]))
    stats = _input_stats(data.test[:4], model.clip)
    for i in range(4):
        r = s.run(images[i])
        sig = {k: float(v[i]) for k, v in stats.items()}
        sig.update(model.signals(model_input=None, logits=outs["scores"][i], features=outs["slicert_features"][i],
                                 task="classification"))
        want = model.score(sig)
        assert r.ood.score == pytest.approx(want.score, rel=1e-5, abs=1e-6)
        assert r.ood.statistic == want.statistic
        assert set(r.ood.signals) == {"input_mean", "input_std", "input_clipped", "mahalanobis", "energy"}
        assert r.ood.threshold == entry["threshold"]


def test_false_alarms_on_test_and_detection_are_measured_per_variant(trust_dirs):
    rep = trust_dirs["cls_trust"]["report"]
    assert rep["false_alarm_target"] == 0.05
    assert set(rep["variants"]) == {"fp32", "fp16", "int8"}
    for v, r in rep["variants"].items():
        # 5% target on the validation split; the held-out test split (n=120) stays near it.
        assert r["false_alarm_val"] <= 0.05 + 1e-9, v
        assert r["false_alarm_test"] <= 0.12, (v, r["false_alarm_test"])
        for name in ("blank", "wrong window", "intensity-corrupted", "real DICOM"):
            assert r["sets"][name]["detection_rate"] >= 0.9, (v, name, r["sets"][name])
        assert r["pooled"]["auroc"] > 0.85, (v, r["pooled"])
        assert {row["file"] for row in r["real_files"]} == {"CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm"}


def test_flag_and_reason_on_out_of_distribution_inputs(cls_trust_session, trust_dirs, rng):
    s = cls_trust_session
    ok = s.run(trust_dirs["cls_splits"]["test"][5])
    assert ok.ood is not None and ok.ood.reason == "" and ok.ood.score <= ok.ood.threshold
    blank = s.run(np.zeros((97, 83), np.uint16))
    assert blank.ood.flag and blank.flagged and blank.ood.score > blank.ood.threshold
    assert blank.ood.statistic == "input_clipped"
    assert "input_clipped = 1" in blank.ood.reason and "validation split at 5% false alarms" in blank.ood.reason
    assert blank.flags == [f"out of distribution: {blank.ood.reason}"]
    ct = s.run(data_file("CT_small.dcm"))  # flag policy: also out of distribution
    assert ct.ood.flag and ct.eligibility


def test_ood_rides_along_run_batch_stream_and_run_into(trust_bundles, trust_dirs):
    import engine

    images = trust_dirs["cls_splits"]["test"][:6]
    with engine.load(trust_bundles["cls"], precision="fp32", threads=1, max_batch=4) as s:
        single = [s.run(im).ood.score for im in images]
        batch = [r.ood.score for r in s.run_batch(images)]
        stream = [r.ood.score for r in s.stream(images, drop_stale=False)]
        np.testing.assert_allclose(batch, single, rtol=1e-5)
        np.testing.assert_allclose(stream, single, rtol=1e-5)
        r = s.new_result()
        s.run_into(r, np.zeros((97, 83), np.uint16))
        assert r.ood.flag
        s.run_into(r, images[0])
        assert not r.ood.flag and r.ood.score == pytest.approx(single[0], rel=1e-5)


def test_segmenter_gets_input_and_uncertainty_statistics(trust_bundles, trust_dirs):
    import engine

    with engine.load(trust_bundles["seg"], threads=1, eligibility="flag") as s:
        r = s.run(trust_dirs["seg_splits"]["test"][0])
        assert set(r.ood.signals) == {"input_mean", "input_std", "input_clipped", "mean_uncertainty"}
        assert 0.0 <= r.ood.signals["mean_uncertainty"] <= 1.0 - 1.0 / 3
        assert s.run(np.full((97, 83), 4095, np.uint16)).ood.flag


def test_ood_off_leaves_the_result_without_a_score(trust_bundles, trust_dirs):
    import engine

    with engine.load(trust_bundles["cls"], threads=1, ood=False) as s:
        assert s.run(trust_dirs["cls_splits"]["test"][0]).ood is None
        assert s.info["trust"]["ood"] == "off"


def test_mean_uncertainty_matches_a_full_softmax(rng):
    from engine.trust.ood import mean_uncertainty

    logits = rng.standard_normal((3, 40, 36)).astype(np.float32) * 3
    e = np.exp(logits - logits.max(axis=0))
    p = (e / e.sum(axis=0)).max(axis=0)[::8, ::8]
    assert mean_uncertainty(logits) == pytest.approx(1 - p.mean(), rel=1e-5)


def test_mahalanobis_matches_the_textbook_formula(rng):
    from tools.trust_fit import fit_mahalanobis

    f = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))
    y = rng.integers(0, 2, 400)
    f[y == 1] += 3.0
    m = fit_mahalanobis(f, y, 2)
    mus = [f[y == k].mean(axis=0) for k in range(2)]
    c = np.concatenate([f[y == k] - mus[k] for k in range(2)])
    cov = c.T @ c / (len(c) - 1)
    cov = 0.9 * cov + 0.1 * np.trace(cov) / 6 * np.eye(6) + 1e-9 * np.eye(6)
    inv = np.linalg.inv(cov)
    x = rng.standard_normal(6)
    want = min(math.sqrt((x - mu) @ inv @ (x - mu)) for mu in mus)
    assert m(x) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("path, value, match", [
    (("variants", "fp32", "ood", "threshold"), -1.0, "threshold must be a finite positive"),
    (("variants", "fp32", "ood", "statistics"), [], "statistics must be a non-empty list"),
    (("variants", "fp32", "ood", "clip"), [1.0, 0.0], "clip must be"),
    (("variants", "fp32", "ood", "mahalanobis", "whiten"), [[1.0, 2.0]], "whiten must be C x C"),
    (("variants", "fp32", "temperature"), 0.0, "temperature must be a number"),
    (("schema",), 2, "trust.schema must be 1"),
    (("variants", "bf17"), {}, "names a variant the bundle does not hold"),
])
def test_tampered_trust_sections_are_refused_at_open(trust_bundles, tmp_path, path, value, match):
    from engine.bundle import open_bundle
    from engine.bundle.writer import write_bundle

    with open_bundle(trust_bundles["cls"]) as b:
        manifest = copy.deepcopy(b.manifest)
        members = {name: b.read(name) for name in b.members if name != "manifest.json"}
    node = manifest["trust"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(BundleError, match=match):
        write_bundle(tmp_path / "bad.slicert", manifest, members)
