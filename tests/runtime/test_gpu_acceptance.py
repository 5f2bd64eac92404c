"""benchmarks/gpu_acceptance.py: skips with the reason here (exit 1 under --strict, the default when a GPU
is visible), and --dry-run runs every check's code path on the CPU through the host-memory emulation of
TensorRT and CUDA (tests/runtime/fake_device_trt.py), which it labels as NOT GPU verification."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import engine.device
from engine.bundle.tensorrt_build import tensorrt_unavailable_reason

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_acceptance.py"
CHECKS = ["build", "tensor", "end_to_end", "graph", "mixed_batch", "threads", "device_array"]


@pytest.fixture(scope="module")
def acceptance():
    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(tensorrt_unavailable_reason() is None, reason="TensorRT + GPU present: the real run applies")
def test_skips_with_the_reason_without_a_gpu(acceptance, capsys):
    assert acceptance.main([]) == (1 if acceptance._gpu_visible() else 0)
    out = capsys.readouterr().out
    assert out.startswith("SKIP: GPU acceptance needs TensorRT and a CUDA GPU") and tensorrt_unavailable_reason() in out
    assert acceptance.main(["--strict"]) == 1
    assert acceptance.main(["--no-strict"]) == 0


def test_dry_run_runs_every_check_through_the_emulation(acceptance, model_dirs, tmp_path, capsys):
    real = engine.device.current()
    out_json = tmp_path / "acceptance.json"
    rc = acceptance.main(["--dry-run", "--n", "5", "--threads", "3", "--json", str(out_json), "--source",
                          str(model_dirs["cls_quant"]), "--source", str(model_dirs["seg_export"])])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert engine.device.current() is real  # the emulation is removed again
    assert "IT IS NOT GPU VERIFICATION" in out.splitlines()[0] and "DRY RUN PASSED" in out
    report = json.loads(out_json.read_text())
    assert report["passed"] and report["dry_run"] and report["verification"].startswith("NONE")
    assert report["emulation_hazards"] == []
    got = sorted((r["bundle"], r["variant"]) for r in report["results"])
    assert got == [("export_seg", "fp32"), ("quant_cls", "fp16"), ("quant_cls", "fp32"), ("quant_cls", "int8")]
    for r in report["results"]:
        assert list(r["checks"]) == CHECKS
        assert all(c["verdict"] == "PASS" for c in r["checks"].values()), r["checks"]
        assert r["checks"]["mixed_batch"]["chunks"] == [8, 8, 3]
        assert r["checks"]["threads"]["buffer_sets"] >= 2  # the threads really ran concurrently on forks
        assert r["checks"]["graph"]["graph_launches"] > 0
        assert r["latency_ms"]["candidate"]["wall"]["p50"] > 0
    assert len(report["checks"]) == 4 * len(CHECKS)
    assert {c["verdict"] for c in report["checks"]} == {"PASS"}
    # A results file is never overwritten without --force.
    with pytest.raises(SystemExit):
        acceptance.main(["--dry-run", "--json", str(out_json)])


def test_a_failed_engine_build_is_a_fail_row(acceptance, model_dirs, tmp_path, capsys):
    """Review D1: the old INT8 fixture (asymmetric zero points, INT32 bias) aborted the whole run."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    import tiny_models

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.it = iter([{"input": rng.standard_normal((1, 1, 32, 32)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.it, None)

    folder = tmp_path / "quant_bad"
    shutil.copytree(model_dirs["cls_quant"], folder)
    onnx.save(tiny_models.classifier(), tmp_path / "fp32.onnx")
    quantize_static(str(tmp_path / "fp32.onnx"), str(folder / "model.int8.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)  # ONNX Runtime's defaults: what the old fixture wrote
    report = json.loads((folder / "accuracy_report.json").read_text())
    report["variants"]["int8"]["sha256"] = hashlib.sha256((folder / "model.int8.onnx").read_bytes()).hexdigest()
    (folder / "accuracy_report.json").write_text(json.dumps(report))
    out_json = tmp_path / "bad.json"
    rc = acceptance.main(["--dry-run", "--n", "2", "--threads", "2", "--json", str(out_json), "--source", str(folder)])
    assert rc == 1
    report = json.loads(out_json.read_text())
    rows = {r["variant"]: r for r in report["results"]}
    assert rows["int8"]["checks"]["build"]["verdict"] == "FAIL"
    assert "symmetric quantization" in rows["int8"]["checks"]["build"]["error"]
    assert rows["fp32"]["passed"] and rows["fp16"]["passed"]  # the other variants were still checked
    assert "FAIL (build)" in capsys.readouterr().out


def test_tolerances_fail_when_exceeded(acceptance):
    ref = np.array([[0.2, 0.7, 0.1]], np.float32)
    assert acceptance._compare(ref, ref + 5e-4, "fp32", "classification")["passed"]
    assert not acceptance._compare(ref, ref + 5e-3, "fp32", "classification")["passed"]
    flipped = np.array([[0.7, 0.2, 0.1]], np.float32)  # within int8's atol? no: argmax flips and |Δ| = 0.5
    assert not acceptance._compare(ref, flipped, "int8", "classification")["passed"]
