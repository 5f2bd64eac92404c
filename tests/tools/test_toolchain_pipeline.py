"""The whole --fast toolchain once per session (all three tasks): distilled students beat a random
model on the held-out test split, exports load in ONNX Runtime, a second run reuses every step,
and existing outputs are never overwritten without force."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from engine.errors import OutputExists
from tools.io import sha256_file
from tools.pipeline import run_toolchain


def _json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="session")
def fast_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toolchain")
    cache = os.environ.get("SLICERT_TEST_CACHE") or tmp_path_factory.mktemp("cache")
    events = []
    result = run_toolchain(out / "run", fast=True, cache_dir=cache, progress=lambda *e: events.append(e))
    return {"out": out / "run", "cache": cache, "result": result, "events": events}


def test_every_task_ran_and_reported(fast_run):
    r = fast_run["result"]
    assert set(r["tasks"]) == {"ct_organs", "cxr_nodule", "us_phantom"}
    for t in r["tasks"].values():
        assert set(t["models"]) >= {"teacher", "student_alone", "student_kd", "random_init"}
        assert set(t["exports"]) == {"teacher", "student"}
    with open(r["report_md"], encoding="utf-8") as f:
        md = f.read()
    assert "simulated lesions on projections of one real CT" in md
    assert md.count("student distilled (KD)") == 3
    assert any(stage.endswith("/teacher") for stage, _, _ in fast_run["events"])


def test_distilled_students_beat_a_random_model(fast_run):
    tasks = fast_run["result"]["tasks"]
    cls = tasks["cxr_nodule"]["models"]
    kd, rnd = cls["student_kd"]["test"], cls["random_init"]["test"]
    assert kd["auc"] > rnd["auc"]
    assert kd["auc_ci95"][0] > 0.5, kd  # the 95% CI of the AUC excludes chance
    for name in ("ct_organs", "us_phantom"):
        m = tasks[name]["models"]
        assert m["student_kd"]["test"]["mean_dice"] > m["random_init"]["test"]["mean_dice"] + 0.2, (name, m)


def test_flop_ratio_and_sidecars(fast_run):
    for name, t in fast_run["result"]["tasks"].items():
        m = t["models"]
        assert m["teacher"]["flops"] / m["student_kd"]["flops"] >= 5.0
        for which, d in t["exports"].items():
            meta = _json(os.path.join(d, "model.json"))
            assert meta["onnx_max_abs_err"] <= 1e-4
            assert meta["dataset"]["name"] == name and meta["role"] == which
            assert meta["model_sha256"] == sha256_file(os.path.join(d, "model.onnx"))
            sess = ort.InferenceSession(os.path.join(d, "model.onnx"), providers=["CPUExecutionProvider"])
            spec = meta["preprocess"]
            x = np.zeros((2, 1, spec["out_height"], spec["out_width"]), np.float32)
            out = sess.run(None, {"input": x})[0]
            assert out.shape[:2] == (2, len(meta["labels"]))
        student = _json(os.path.join(t["exports"]["student"], "model.json"))
        assert student["metrics"]["flop_ratio_teacher_over_student"] >= 5.0
        assert student["metrics"]["model"] == m["student_kd"]["test"]


def test_second_run_reuses_every_step(fast_run):
    out = fast_run["out"]
    onnx_files = sorted(out.glob("*/*/model.onnx"))
    before = {p: (p.stat().st_mtime_ns, sha256_file(p)) for p in onnx_files}
    again = run_toolchain(out, fast=True, cache_dir=fast_run["cache"])
    for t in again["tasks"].values():
        assert set(t["steps"].values()) == {"cached"}, t["steps"]
    assert {p: (p.stat().st_mtime_ns, sha256_file(p)) for p in onnx_files} == before
    assert again["tasks"]["cxr_nodule"]["models"]["student_kd"]["test"] == \
        fast_run["result"]["tasks"]["cxr_nodule"]["models"]["student_kd"]["test"]


def test_other_configuration_is_refused_without_force(fast_run):
    out = fast_run["out"]
    weights = out / "us_phantom" / "weights" / "teacher.pt"
    before = sha256_file(weights)
    with pytest.raises(OutputExists, match="different configuration"):
        run_toolchain(out, tasks=("us_phantom",), fast=True, seed=1, cache_dir=fast_run["cache"])
    assert sha256_file(weights) == before


def test_foreign_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputExists, match="not a SliceRT toolchain output"):
        run_toolchain(tmp_path, tasks=("us_phantom",), fast=True)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_cli_entry_points_and_torch_free_info():
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    code = "import sys; from engine.cli import _register; _register(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    for step in ("train", "distill", "export"):
        res = subprocess.run([sys.executable, "-m", f"tools.{step}", "--help"], capture_output=True, text=True,
                             timeout=120, check=False)
        assert res.returncode == 0 and "--fast" in res.stdout and "--force" in res.stdout, res.stderr
    res = subprocess.run([sys.executable, "-m", "engine.cli", "export", "nope", "--out", "/tmp/x"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 2 and "InputError" in res.stderr and "unknown task" in res.stderr
