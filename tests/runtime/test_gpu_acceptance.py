"""benchmarks/gpu_acceptance.py: skips with the reason here, and its harness runs end to end on the CPU
(--dry-run compares the ORT-optimized model with the plain ONNX one through the same code paths)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from engine.bundle.tensorrt_build import tensorrt_unavailable_reason

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_acceptance.py"


@pytest.fixture(scope="module")
def acceptance():
    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(tensorrt_unavailable_reason() is None, reason="TensorRT + GPU present: the real run applies")
def test_skips_with_the_reason_without_a_gpu(acceptance, capsys):
    assert acceptance.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("SKIP: GPU acceptance needs TensorRT and a CUDA GPU") and tensorrt_unavailable_reason() in out
    assert acceptance.main(["--strict"]) == 1


def test_dry_run_harness_end_to_end(acceptance, model_dirs, tmp_path, capsys):
    out_json = tmp_path / "acceptance.json"
    rc = acceptance.main(["--dry-run", "--n", "5", "--json", str(out_json), "--source", str(model_dirs["cls_quant"]),
                          "--source", str(model_dirs["seg_export"])])
    assert rc == 0, capsys.readouterr().out
    report = json.loads(out_json.read_text())
    assert report["passed"] and report["dry_run"]
    got = sorted((r["bundle"], r["variant"]) for r in report["results"])
    assert got == [("export_seg", "fp32"), ("quant_cls", "fp16"), ("quant_cls", "fp32"), ("quant_cls", "int8")]
    for r in report["results"]:
        assert r["latency_ms"]["candidate"]["wall"]["p50"] > 0
        if r["task"] == "classification":
            assert r["tensor"]["max_abs_err"] <= r["tensor"]["atol"]
    assert "ACCEPTED" in capsys.readouterr().out
    # A results file is never overwritten without --force.
    with pytest.raises(SystemExit):
        acceptance.main(["--dry-run", "--json", str(out_json)])


def test_tolerances_fail_when_exceeded(acceptance):
    import numpy as np

    ref = np.array([[0.2, 0.7, 0.1]], np.float32)
    assert acceptance._compare(ref, ref + 5e-4, "fp32", "classification")["passed"]
    assert not acceptance._compare(ref, ref + 5e-3, "fp32", "classification")["passed"]
    flipped = np.array([[0.7, 0.2, 0.1]], np.float32)  # within int8's atol? no: argmax flips and |Δ| = 0.5
    assert not acceptance._compare(ref, flipped, "int8", "classification")["passed"]
