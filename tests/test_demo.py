"""`slicert demo --fast` end to end on CPU, as a new user runs it: the report must hold real metrics
within their budgets, loadable bundles, and positive, ordered latency figures."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(1500)


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "demo", "--fast", "--out", str(out), "--n", "15"],
                          capture_output=True, text=True, timeout=1400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_demo_writes_its_reports(demo_out):
    out, stdout = demo_out
    for name in ("report.md", "report.json"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["tasks"]) == {"cxr_nodule", "ct_organs", "us_phantom"}
    assert "SliceRT demo: results on real DICOM" in stdout
    md = (out / "report.md").read_text()
    # Medical honesty: every task names what its data is.
    assert "simulated lesions on projections of one real CT" in md
    assert "synthetic ultrasound speckle phantom" in md
    assert "not clinically validated" in md or "nothing here is clinically validated" in md


def test_demo_accuracy_gate_held(demo_out):
    out, _ = demo_out
    report = json.loads((out / "report.json").read_text())
    for task, t in report["tasks"].items():
        acc = json.loads(Path(t["quantization"]["report"]).read_text())
        shipped = [name for name, v in acc["variants"].items() if v.get("file") and name != "fp32"]
        assert shipped, f"{task}: no reduced-precision variant shipped"
        for name in shipped:
            assert acc["variants"][name]["passed"], f"{task}/{name} shipped without passing its gate"
        # The distilled student beats a randomly initialised model on the held-out test split.
        student, rand = t["models"]["student_kd"]["test"], t["models"]["random_init"]["test"]
        if task == "cxr_nodule":
            assert student["auc"] > max(0.5, rand["auc"]), (student["auc"], rand["auc"])
        else:
            assert student["mean_dice"] > rand["mean_dice"] + 0.05, (student["mean_dice"], rand["mean_dice"])


def test_demo_bundles_load_and_run_real_dicom(demo_out):
    import engine

    out, _ = demo_out
    report = json.loads((out / "report.json").read_text())
    for task, t in report["tasks"].items():
        with engine.load(t["bundle"]["path"]) as session:
            assert session.info["backend"] == "onnxruntime"
        real = t["real_dicom"]
        if task == "cxr_nodule":
            assert abs(sum(real["scores"].values()) - 1.0) < 1e-4
            assert real["label"] in real["scores"]
        elif task == "ct_organs":
            assert real["pixel_spacing_mm"] == pytest.approx([0.661468, 0.661468])
            assert real["areas_mm2"] is not None and all(v >= 0 for v in real["areas_mm2"].values())
            total = sum(real["pixel_counts"].values())
            assert total == 128 * 128
        else:
            assert real["frames"] == 120
            assert real["spacing_source"].startswith("SequenceOfUltrasoundRegions")
            assert real["latency_ms_p50"] > 0


def test_demo_latency_figures_positive_and_ordered(demo_out):
    out, _ = demo_out
    report = json.loads((out / "report.json").read_text())
    assert report["benchmark"]["headline"]["rows"]
    for task in ("cxr_nodule", "us_phantom"):
        run = json.loads((out / "bench" / f"{task}.json").read_text())
        assert run["configurations"], task
        for c in run["configurations"]:
            st = c["stats_ms"]["total"]
            assert 0 < st["p50"] <= st["p90"] <= st["p99"] <= st["max"], (task, c["name"], st)
    assert (out / "bench" / "cxr_nodule.png").stat().st_size > 1000


def test_second_run_reuses_cached_steps(demo_out):
    out, _ = demo_out
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "demo", "--fast", "--out", str(out), "--n", "3"],
                          capture_output=True, text=True, timeout=1400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert len(report["steps"]["toolchain"]["cached"]) >= 9  # train/distill/export of three tasks
    assert all(t["quantization"]["status"] == "cached" for t in report["tasks"].values())
    assert all(t["bundle"]["status"] == "cached" for t in report["tasks"].values())
    assert "cached" in proc.stdout


def test_demo_flags_what_it_should_not_trust(demo_out):
    """The simulated-lesion chest model on the real 15-bit chest CR: outside its intended inputs (refused under
    the default policy) and, on its own, out of distribution; every task's trust fit measured per variant."""
    out, stdout = demo_out
    report = json.loads((out / "report.json").read_text())
    cxr = report["tasks"]["cxr_nodule"]["real_dicom"]
    assert "BitsStored 15 is not 12" in cxr["refused_by_default"]
    assert cxr["trust"]["flagged"] and cxr["trust"]["ood"]["flag"], cxr["trust"]
    assert cxr["trust"]["ood"]["score"] > cxr["trust"]["ood"]["threshold"]
    assert "FLAGGED" in stdout
    for task, t in report["tasks"].items():
        variants = t["trust"]["summary"]["variants"]
        assert "int8" in variants, task
        for v, s in variants.items():
            assert 0.0 <= s["false_alarm_test"] <= 0.25, (task, v, s["false_alarm_test"])
            assert s["ece_test_before"] >= 0 and s["ece_test_after"] >= 0
    run = json.loads((out / "bench" / "cxr_nodule.json").read_text())
    sliced = [c for c in run["configurations"] if c["meta"].get("session_info", {}).get("trust")]
    assert sliced and all(c["meta"].get("flagged_results", 0) > 0 for c in sliced)
    with open(out / "report.md", encoding="utf-8") as f:
        md = f.read()
    assert "Trust signals" in md and "refused (IneligibleInput)" in md
