"""`slicert quantize` through the real CLI (typer): a full run on raw splits given with --data, typed
errors with exit code 2, no overwrite without --force."""
from __future__ import annotations

import json

import numpy as np
import typer
from typer.testing import CliRunner

from tools.quantize import cli


def _invoke(*args):
    app = typer.Typer()
    app.callback()(lambda: None)  # keep `quantize` a sub-command, as in the real `slicert` app
    cli.register(app)
    return CliRunner().invoke(app, ["quantize", *map(str, args)])


def test_cli_full_run_from_npz(exports, splits, tmp_path):
    s = splits["classification"]
    npz = tmp_path / "splits.npz"
    np.savez(npz, calib_images=s["calib"][0], val_images=s["val"][0], val_targets=s["val"][1],
             test_images=s["test"][0], test_targets=s["test"][1])
    out = tmp_path / "q"
    r = _invoke(exports["classification"], "--out", out, "--data", npz, "--calib-method", "percentile")
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "accuracy_report.json").read_text())
    assert rep["calibration"]["method"] == "percentile" and rep["calibration"]["n_slices"] == 256
    assert rep["gate"]["passed"] is True
    for line in ("fp32", "fp16", "int8", "int8_ort", "gate PASSED"):
        assert line in r.output
    r = _invoke(exports["classification"], "--out", out, "--data", npz)
    assert r.exit_code == 2 and "OutputExists" in r.output and "--force" in r.output
    bad = tmp_path / "bad.npz"
    np.savez(bad, calib_images=s["calib"][0])
    r = _invoke(exports["classification"], "--out", tmp_path / "q2", "--data", bad)
    assert r.exit_code == 2 and "missing array(s)" in r.output


def test_cli_reports_typed_errors_with_exit_code(exports, tmp_path):
    r = _invoke(exports["classification"], "--out", tmp_path / "q", "--calib-method", "kl")
    assert r.exit_code == 2 and "InputError" in r.output and "calibration method 'kl'" in r.output
    r = _invoke(tmp_path / "missing", "--out", tmp_path / "q")
    assert r.exit_code == 2 and "export folder not found" in r.output
    r = _invoke(exports["classification"], "--out", tmp_path / "q", "--calib-n", "10")
    assert r.exit_code == 2 and "calib_n must be an integer >= 256" in r.output
    # The fixture's model.json names a dataset the toolchain does not know: say so, do not guess.
    r = _invoke(exports["classification"], "--out", tmp_path / "q")
    assert r.exit_code == 2 and "unknown dataset 'synthetic-classification'" in r.output


def test_cli_help_lists_options():
    app = typer.Typer()
    app.callback()(lambda: None)
    cli.register(app)
    r = CliRunner().invoke(app, ["quantize", "--help"])
    assert r.exit_code == 0
    for opt in ("--data", "--calib-method", "--calib-n", "--budget-auc", "--budget-dice", "--accept-loss", "--force"):
        assert opt in r.output
