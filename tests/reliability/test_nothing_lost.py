"""Nothing a user wrote is lost: every writing command (export, quantize, build, bench) refuses to
overwrite without --force, and an interrupted write leaves either the old output or nothing, never a
half-written file, and never a set of outputs that disagree with each other.

Commands run as the user runs them (`python -m engine.cli ...` in a subprocess); interruptions are
an exception injected in the middle of the real write path, and a SIGKILL of a real build process
while it is writing the bundle. `slicert export` trains models before it writes (minutes), so its
write path is exercised through tools.export.export_model, the function the command ends in.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from engine.errors import BundleError, OutputExists

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(600, method="thread")
USER_BYTES = b"the user's own file: must survive every command run without --force\n"


def slicert(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


def leftovers(folder: Path) -> list[str]:
    """Temp files/dirs a crashed writer could leave next to its outputs."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or ".tmp-" in p.name
                  or p.name.startswith(".") and p.name != ".hypothesis")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    from engine.bundle import build_bundle
    from tests.runtime import tiny_models

    root = tmp_path_factory.mktemp("nothing-lost")
    export = tiny_models.write_export(root / "export", "classification")
    rng = np.random.default_rng(0)

    def images(n: int) -> np.ndarray:
        return rng.integers(0, 4096, (n, 64, 64)).astype(np.uint16)

    data = root / "splits.npz"
    np.savez(data, calib_images=images(256), val_images=images(48), val_targets=rng.integers(0, 3, 48),
             test_images=images(48), test_targets=rng.integers(0, 3, 48))
    bundle = build_bundle(export, root / "bench-input.slicert", precision="fp32", target="cpu").path
    return {"root": root, "export": export, "data": data, "bundle": bundle}


# -- refusing to overwrite ------------------------------------------------------------------------------
def test_build_refuses_to_overwrite_then_replaces_with_force(work, tmp_path):
    from engine.bundle import open_bundle

    out = tmp_path / "model.slicert"
    out.write_bytes(USER_BYTES)
    proc = slicert("build", work["export"], "--out", out, "--target", "cpu")
    assert proc.returncode != 0
    assert "--force" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert out.read_bytes() == USER_BYTES
    assert leftovers(tmp_path) == []
    proc = slicert("build", work["export"], "--out", out, "--target", "cpu", "--force")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open_bundle(out) as b:
        assert b.task == "classification"
    assert leftovers(tmp_path) == []


def test_quantize_refuses_before_working_then_replaces_with_force(work, tmp_path):
    out = tmp_path / "q"
    out.mkdir()
    (out / "accuracy_report.json").write_bytes(USER_BYTES)
    (out / "notes.txt").write_bytes(USER_BYTES)
    t0 = time.monotonic()
    proc = slicert("quantize", work["export"], "--out", out, "--data", work["data"])
    refused_in = time.monotonic() - t0
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "--force" in text and "accuracy_report.json" in text, text
    assert "calibrating" not in text, "the refusal must come before any work"
    assert (out / "accuracy_report.json").read_bytes() == USER_BYTES
    proc = slicert("quantize", work["export"], "--out", out, "--data", work["data"], "--force")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    from tools.quantize.pipeline import FILES

    report = json.loads((out / "accuracy_report.json").read_text())
    for name, entry in report["variants"].items():
        if entry.get("sha256"):
            # ONNX variants are named by the pipeline; the OpenVINO IR forms name their own files.
            assert entry["file"] == FILES.get(name, entry["file"]), name
            assert sha(out / entry["file"]) == entry["sha256"], name
        if entry.get("weights_sha256"):
            assert sha(out / entry["weights_file"]) == entry["weights_sha256"], name
    assert (out / "notes.txt").read_bytes() == USER_BYTES, "a file quantize does not own was touched"
    assert leftovers(out) == []
    assert refused_in < 60


@pytest.mark.parametrize("flag,suffix", [("--json", ".json"), ("--md", ".md")])
def test_bench_refuses_to_overwrite_reports_then_replaces_with_force(work, tmp_path, flag, suffix):
    report = tmp_path / f"report{suffix}"
    report.write_bytes(USER_BYTES)
    args = ("bench", work["bundle"], flag, report, "--n", "20", "--warmup", "2", "--cold-start-repeats", "0")
    proc = slicert(*args)
    assert proc.returncode != 0
    assert "--force" in proc.stdout + proc.stderr
    assert report.read_bytes() == USER_BYTES
    proc = slicert(*args, "--force")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = report.read_text()
    if suffix == ".json":
        json.loads(text)
    assert text and report.read_bytes() != USER_BYTES
    assert leftovers(tmp_path) == []


def _tiny_torch_classifier():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 3))


def _export(out: Path, force: bool = False):
    from tests.runtime import tiny_models
    from tools.export import export_model

    inputs = np.random.default_rng(0).standard_normal((8, 1, 32, 32)).astype(np.float32)
    return export_model(_tiny_torch_classifier(), out, name="tiny", task="classification",
                        labels=tuple(tiny_models.CLASS_LABELS), spec=tiny_models.spec(), voi_policy="model",
                        dataset_card={"name": "synthetic"}, metrics={}, check_inputs=inputs, force=force)


def test_export_refuses_to_overwrite_an_existing_export(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.onnx").write_bytes(USER_BYTES)
    with pytest.raises(OutputExists, match="--force"):
        _export(out)
    assert (out / "model.onnx").read_bytes() == USER_BYTES
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx"]
    _export(out, force=True)
    assert json.loads((out / "model.json").read_text())["name"] == "tiny"
    assert leftovers(tmp_path) == []


# -- interrupted writes ------------------------------------------------------------------------------------
class Interrupted(Exception):
    pass


def _fail_on_call(n: int, original):
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise Interrupted(f"injected failure in call {n} of {original.__name__}")
        return original(*args, **kwargs)
    return wrapper


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "replacing-with-force"])
def test_build_interrupted_mid_write_leaves_old_file_or_nothing(work, tmp_path, monkeypatch, existing):
    from engine.bundle import build_bundle, open_bundle, writer

    out = tmp_path / "model.slicert"
    if existing:
        build_bundle(work["export"], out, precision="fp32", target="cpu")
        before = out.read_bytes()
    monkeypatch.setattr(writer, "_write_member", _fail_on_call(2, writer._write_member))
    with pytest.raises(Interrupted):
        build_bundle(work["export"], out, precision="fp32", target="cpu", force=existing)
    if existing:
        assert out.read_bytes() == before
        with open_bundle(out):
            pass
    else:
        assert not out.exists()
    assert leftovers(tmp_path) == []


def test_quantize_interrupted_keeps_outputs_consistent(work, tmp_path, monkeypatch):
    """A forced re-run that dies after writing some outputs must not leave models that the accuracy
    report does not describe: `slicert build` takes the gate verdicts from that report."""
    from tools.quantize import pipeline
    from tools.quantize import report as report_mod
    from tools.quantize.data import load_npz_splits

    out = tmp_path / "q"
    # accept_loss: the tiny model has random weights and the splits random labels (AUC ~0.5 on 48 images), so
    # the gate's verdict on them is noise (on an AVX2 CPU without VNNI, ORT's INT8 AUC moved by 0.013); this
    # test is about which files an interrupted re-run leaves, not about accuracy.
    pipeline.quantize_export(work["export"], out, dataset=load_npz_splits(work["data"]), cpu_speed_check=False,
                             accept_loss=True)
    # fail on the 3rd file: fp16 (same either way) and int8 (recalibrated: different) are then written
    monkeypatch.setattr(report_mod, "write_atomic", _fail_on_call(3, report_mod.write_atomic))
    with pytest.raises(Interrupted):
        pipeline.quantize_export(work["export"], out, dataset=load_npz_splits(work["data"]), method="percentile",
                                 percentile=99.0, force=True, cpu_speed_check=False, accept_loss=True)
    report = json.loads((out / "accuracy_report.json").read_text())
    mismatched = [name for name, entry in report["variants"].items() if entry.get("sha256") and
                  sha(out / entry["file"]) != entry["sha256"]]
    assert not mismatched, (f"after an interrupted `quantize --force`, {mismatched} on disk are not the models "
                            f"accuracy_report.json gated (old report, new models)")
    assert leftovers(out) == []


def test_bench_report_interrupted_mid_write_leaves_old_report(tmp_path):
    from engine.bench.files import atomic_write

    report = tmp_path / "report.json"
    report.write_bytes(USER_BYTES)

    def half_then_fail(fh):
        fh.write(b'{"partial": ')
        raise Interrupted("injected")

    with pytest.raises(Interrupted):
        atomic_write(report, half_then_fail, force=True)
    assert report.read_bytes() == USER_BYTES
    assert leftovers(tmp_path) == []


def test_export_interrupted_mid_write_leaves_old_export(tmp_path, monkeypatch):
    import tools.export as export_mod

    out = tmp_path / "export"
    _export(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(export_mod, "write_json_atomic", _fail_on_call(1, export_mod.write_json_atomic))
    with pytest.raises(Interrupted):
        _export(out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert leftovers(tmp_path) == []


_KILLED_BUILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from engine.bundle import writer

    marker = Path(sys.argv[1])
    # Only writes of the bundle itself count: `slicert build` first writes a throw-away bundle in a temp
    # folder to time the CPU backends (engine/bundle/cpu_timing.py).
    out_dir = Path(sys.argv[sys.argv.index("--out") + 1]).resolve().parent
    original = writer._write_member
    calls = {"n": 0}

    def slow(zf, fh, *args, **kwargs):
        original(zf, fh, *args, **kwargs)
        if Path(os.readlink(f"/proc/self/fd/{fh.fileno()}")).parent != out_dir:
            return
        calls["n"] += 1
        if calls["n"] == 2:  # mid-bundle: manifest and one member written, more to come
            marker.write_text("writing")
            time.sleep(120)

    writer._write_member = slow
    sys.argv = ["slicert", *sys.argv[2:]]
    from engine.cli import main
    main()
""")


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "replacing-with-force"])
def test_build_killed_mid_write_leaves_no_half_bundle(work, tmp_path, existing):
    """SIGKILL (no cleanup code runs) while `slicert build` writes: the target is the old bundle or
    absent; a half-written temp file may remain, hidden, and never under the bundle's name."""
    from engine.bundle import build_bundle, open_bundle

    out = tmp_path / "model.slicert"
    if existing:
        build_bundle(work["export"], out, precision="fp32", target="cpu")
        before = out.read_bytes()
    marker = tmp_path / "marker"
    args = ["build", str(work["export"]), "--out", str(out), "--target", "cpu", *(["--force"] if existing else [])]
    log = tmp_path.parent / f"{tmp_path.name}-child.log"
    with open(log, "wb") as log_fh:
        child = subprocess.Popen([sys.executable, "-c", _KILLED_BUILD, str(marker), *args], cwd=ROOT,
                                 stdout=log_fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the build never reached the write"
            time.sleep(0.05)
        temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert temps, "the kill must land while the bundle is being written"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()  # SIGKILL again, or the first time when an assertion above failed: no child left behind
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    if existing:
        assert out.read_bytes() == before
        with open_bundle(out):
            pass
    else:
        assert not out.exists()
        with pytest.raises(BundleError, match="no bundle at"):
            open_bundle(out)
    for t in tmp_path.iterdir():
        if t.name.endswith(".tmp"):
            assert t.name.startswith("."), f"a partial file is visible: {t.name}"
    # and the next build is not blocked by what the killed one left
    proc = slicert("build", work["export"], "--out", out, "--target", "cpu", "--force")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open_bundle(out):
        pass
