"""build_bundle and `slicert build/inspect`: sources, variant selection, accuracy gate, CPU target
verification, and honest TensorRT unavailability on this GPU-less machine."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import tiny_models

from engine import _native
from engine.bundle import build_bundle, open_bundle
from engine.bundle.tensorrt_build import tensorrt_unavailable_reason
from engine.errors import AccuracyGateError, BackendUnavailable, InputError, OutputExists

needs_no_trt = pytest.mark.skipif(tensorrt_unavailable_reason() is None, reason="TensorRT + GPU present")


def test_quantize_folder_bundles_every_passing_variant(cls_bundle, model_dirs):
    with open_bundle(cls_bundle) as b:
        m = b.manifest
        assert sorted(m["variants"]) == ["fp16", "fp32", "int8"]
        # OpenVINO: the fixture's INT8 has no OpenVINO (NNCF) form, so its untimed default is FP32.
        assert m["default_variant"] == {"onnxruntime": "int8", "tensorrt": "int8", "openvino": "fp32"}
        for v, e in m["variants"].items():
            assert b.has(e["onnx"]) and b.has(e["ort"])
            assert e["ort_verification"]["max_abs_err_vs_source"] <= 1e-4
            assert e["accuracy_gate"]["passed"] is True
            # The bundled ONNX is byte-identical to the source file.
            src = model_dirs["cls_quant"] / f"model.{v}.onnx" if v != "fp32" else \
                model_dirs["cls_export"] / "model.onnx"
            assert b.read(e["onnx"]) == src.read_bytes()
        # INT8 carries both Q/DQ forms: TensorRT's (engines) and ONNX Runtime's CPU form (the ORT model).
        int8 = m["variants"]["int8"]
        assert b.read(int8["onnx_cpu"]) == (model_dirs["cls_quant"] / "model.int8.ort.onnx").read_bytes()
        assert set(int8["accuracy_gate"]["forms"]) == {"tensorrt", "onnxruntime"}
        assert "onnx_cpu" not in m["variants"]["fp16"]
        assert json.loads(b.read("reports/accuracy_report.json")) == m["accuracy"]
        prov = m["provenance"]
        assert prov["onnxruntime"] == ort.__version__ and prov["onnx"]
        assert prov["calibration_sha256"] == "c" * 64
        assert m["input"] == {"name": "input", "shape": [-1, 1, 32, 32], "dtype": "float32", "layout": "NCHW",
                              "max_batch": 4}
        assert m["output"]["name"] == "scores" and m["output"]["postprocess"] == "softmax"


def test_ort_optimized_model_matches_source(cls_bundle):
    """The saved ORT_ENABLE_ALL model, loaded with optimizations off, equals the source model run online."""
    with open_bundle(cls_bundle) as b:
        for v in ("fp32", "int8"):
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            opt = ort.InferenceSession(b.read(b.variants[v]["ort"]), so, providers=["CPUExecutionProvider"])
            source = b.variants[v].get("onnx_cpu") or b.variants[v]["onnx"]
            src = ort.InferenceSession(b.read(source), providers=["CPUExecutionProvider"])
            x = np.random.default_rng(5).standard_normal((3, 1, 32, 32)).astype(np.float32)
            np.testing.assert_allclose(opt.run(None, {"input": x})[0], src.run(None, {"input": x})[0],
                                       atol=1e-4, rtol=1e-3)


@needs_no_trt
def test_auto_without_gpu_records_why_no_engine(cls_bundle):
    with open_bundle(cls_bundle) as b:
        why = b.manifest["engines_not_built"]
    assert b.manifest["engines"] == []
    assert why.startswith("TensorRT unavailable at build time")
    n, reason = _native.cuda_devices()
    assert n == 0 and reason in why  # the native CUDA probe's own reason is recorded


@needs_no_trt
def test_target_tensorrt_without_gpu_says_why(model_dirs, tmp_path):
    with pytest.raises(BackendUnavailable, match=r"--target tensorrt cannot build here: .*(TensorRT|CUDA)") as exc:
        build_bundle(model_dirs["cls_export"], tmp_path / "x.slicert", target="tensorrt")
    assert _native.cuda_devices()[1] in str(exc.value)
    assert not (tmp_path / "x.slicert").exists()


def test_model_file_with_sibling_json_and_explicit_meta(model_dirs, tmp_path):
    out = build_bundle(model_dirs["seg_export"] / "model.onnx", tmp_path / "a.slicert", target="cpu")
    assert out.variants == ["fp32"]
    with open_bundle(out.path) as b:
        assert b.task == "segmentation" and b.labels == tiny_models.SEG_LABELS
        assert b.manifest["output"]["postprocess"] == "argmax"
        assert b.manifest["engines_not_built"] == "not requested (--target cpu)"
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(model_dirs["seg_export"] / "model.onnx", lonely / "model.onnx")
    with pytest.raises(InputError, match="no model.json found.*--meta"):
        build_bundle(lonely / "model.onnx", tmp_path / "b.slicert")
    build_bundle(lonely / "model.onnx", tmp_path / "b.slicert", meta=model_dirs["seg_export"] / "model.json")


def test_spec_that_does_not_match_the_model_is_refused(model_dirs, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(model_dirs["cls_export"], folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["preprocess"]["out_height"] = 64
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"shape \[-1, 1, 32, 32\].*\[N, 1, 64, 32\]"):
        build_bundle(folder, tmp_path / "x.slicert")
    meta["preprocess"]["out_height"] = 32
    meta["labels"] = ["a", "b"]
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"expected \[N, 2\] for 2 labels"):
        build_bundle(folder, tmp_path / "x.slicert")
    del meta["task"]
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="missing field 'task'"):
        build_bundle(folder, tmp_path / "x.slicert")


def test_precision_selection_and_accuracy_gate(model_dirs, tmp_path):
    with pytest.raises(InputError, match=r"--precision mixed: no mixed model.*\['fp16', 'fp32', 'int8'\]"):
        build_bundle(model_dirs["cls_quant"], tmp_path / "x.slicert", precision="mixed")
    failing = tiny_models.write_quantized(tmp_path / "quant_fail", model_dirs["cls_export"], int8_passed=False)
    with pytest.raises(AccuracyGateError, match="int8 model failed its accuracy gate: fixture value"):
        build_bundle(failing, tmp_path / "x.slicert", precision="int8", target="cpu")
    r = build_bundle(failing, tmp_path / "best.slicert", precision="best", target="cpu")
    assert r.variants == ["fp32", "fp16"] and "int8" in r.excluded
    with open_bundle(r.path) as b:
        assert "int8" not in b.variants and "accuracy gate" in b.manifest["excluded_variants"]["int8"]
        assert b.manifest["default_variant"]["onnxruntime"] == "fp32"  # CPU prefers FP32 over FP16
        assert b.manifest["default_variant"]["tensorrt"] == "fp16"
    r = build_bundle(model_dirs["cls_quant"], tmp_path / "int8.slicert", precision="int8", target="cpu")
    assert r.variants == ["int8"]


@pytest.mark.parametrize("stale", ["model.int8.onnx", "model.int8.ort.onnx", "model.fp16.onnx"])
def test_model_the_report_did_not_gate_is_refused(model_dirs, tmp_path, stale):
    """An interrupted `slicert quantize --force` can leave a new model next to the old report: the
    bundle would then ship that model with another model's gate verdict."""
    folder = tiny_models.write_quantized(tmp_path / "quant", model_dirs["cls_export"])
    shutil.copyfile(model_dirs["cls_export"] / "model.onnx", folder / stale)  # different bytes, same name
    out = tmp_path / "x.slicert"
    with pytest.raises(InputError, match=rf"{stale} is not the model that accuracy_report.json gated"):
        build_bundle(folder, out, precision="best", target="cpu")
    assert not out.exists()


def test_report_without_hashes_is_used_with_a_note(model_dirs, tmp_path):
    folder = tiny_models.write_quantized(tmp_path / "quant", model_dirs["cls_export"])
    report = json.loads((folder / "accuracy_report.json").read_text())
    for entry in report["variants"].values():
        entry.pop("sha256", None)
    (folder / "accuracy_report.json").write_text(json.dumps(report))
    r = build_bundle(folder, tmp_path / "x.slicert", precision="int8", target="cpu")
    assert any("records no sha256 for int8" in n for n in r.notes), r.notes


def test_refuses_existing_output_before_building(model_dirs, tmp_path):
    out = tmp_path / "x.slicert"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExists):
        build_bundle(model_dirs["cls_export"], out, target="cpu")
    assert out.read_bytes() == b"keep me"
    build_bundle(model_dirs["cls_export"], out, target="cpu", force=True)
    open_bundle(out).close()


@pytest.mark.parametrize("kwargs, match", [
    ({"precision": "fp64"}, "precision must be one of"),
    ({"target": "gpu"}, "target must be one of"),
    ({"hardware_compat": "hopper+"}, "hardware_compat must be one of"),
    ({"max_batch": 0}, "max_batch must be"),
])
def test_bad_build_arguments(model_dirs, tmp_path, kwargs, match):
    with pytest.raises(InputError, match=match):
        build_bundle(model_dirs["cls_export"], tmp_path / "x.slicert", **kwargs)


def test_cli_build_and_inspect(model_dirs, tmp_path):
    out = tmp_path / "cli.slicert"
    cmd = [sys.executable, "-m", "engine.cli"]
    r = subprocess.run(cmd + ["build", str(model_dirs["cls_quant"]), "--out", str(out), "--target", "cpu",
                              "--max-batch", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "variants: fp32, fp16, int8" in r.stdout
    r = subprocess.run(cmd + ["inspect", str(out)], capture_output=True, text=True, env={"COLUMNS": "200",
                                                                                        **__import__("os").environ})
    assert r.returncode == 0, r.stderr
    for text in ("tiny-classification", "normal, nodule, effusion", "SHA-256 verified", "onnx/model.int8.onnx",
                 "calibration_sha256", "not requested (--target cpu)", "accuracy report",
                 "auc 0.9000 [0.850, 0.950]", "top1_agreement 1.0000"):
        assert text in r.stdout, text
    r = subprocess.run(cmd + ["inspect", str(out), "--json"], capture_output=True, text=True)
    assert json.loads(r.stdout)["model"]["name"] == "tiny-classification"
    # A second build to the same path is refused with exit code 2 and the fix.
    r = subprocess.run(cmd + ["build", str(model_dirs["cls_quant"]), "--out", str(out)], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "OutputExists" in r.stderr and "--force" in r.stderr
    corrupt = tmp_path / "corrupt.slicert"
    corrupt.write_bytes(out.read_bytes()[:-100])
    r = subprocess.run(cmd + ["inspect", str(corrupt)], capture_output=True, text=True)
    assert r.returncode == 2 and "BundleError" in r.stderr
