"""Which TensorRT engine a device runs: exact > hardware-compatible > version-compatible > rebuild >
EngineMismatch with the reason and the fix. `pick_engine` is a pure function of the manifest, so the
whole decision is tested here without a GPU; the plan bytes in these bundles are placeholders that are
never deserialized."""
from __future__ import annotations

import subprocess
import sys

import pytest

from engine.backends.tensorrt import pick_engine
from engine.bundle import format as fmt
from engine.bundle import open_bundle, write_bundle
from engine.spec import PreprocessSpec


def _engine(variant, trt, cc, compat="none", version_compatible=False):
    names = fmt.engine_members(trt, cc, compat, variant)
    return {**names, "variant": variant, "trt_version": trt, "compute_capability": list(cc),
            "hardware_compat": compat, "version_compatible": version_compatible, "device_name": "test GPU",
            "max_batch": 1}


ENGINES = [_engine("int8", "11.4.0.106", (8, 7)), _engine("int8", "11.4.0.106", (8, 0), "ampere+"),
           _engine("fp16", "11.2.1.5", (9, 0), version_compatible=True), _engine("fp32", "11.4.0.106", (7, 5))]
ENGINES[2]["lean_runtime_excluded"] = True  # as `slicert build --version-compatible` makes them


def test_exact_match_wins():
    e, why = pick_engine(ENGINES, "int8", (8, 7), "11.4.0.106")
    assert e["plan"] == "engines/trt-11.4/sm_87.int8.plan" and why.startswith("exact engine")


def test_hardware_compatible_engine_on_another_ampere_gpu():
    e, why = pick_engine(ENGINES, "int8", (8, 9), "11.4.0.106")
    assert e["plan"] == "engines/trt-11.4/ampere+.int8.plan" and "hardware-compatible" in why


def test_plans_that_are_not_version_compatible_need_the_exact_tensorrt_build():
    # GPU review D8: "version numbers must match (in major, minor, patch, and build)".
    for version in ("11.4.1.2", "11.4.0.107"):
        e, why = pick_engine(ENGINES, "int8", (8, 7), version)
        assert e is None and f"no engine fits sm_87 with TensorRT {version}" in why


def test_hardware_compatible_plans_never_on_an_integrated_gpu():
    jetson = {"machine": "aarch64", "integrated": True}
    aarch64_engines = [{**e, "platform": jetson} if e.get("hardware_compat") == "ampere+" else e for e in ENGINES]
    e, why = pick_engine(aarch64_engines, "int8", (8, 9), "11.4.0.106", platform=jetson)
    assert e is None and "integrated GPU" in why


def test_plans_run_only_on_the_platform_that_built_them():
    x86 = {"machine": "x86_64", "integrated": False}
    built_on_x86 = [{**e, "platform": x86} for e in ENGINES]
    e, why = pick_engine(built_on_x86, "int8", (8, 7), "11.4.0.106", platform={"machine": "aarch64",
                                                                             "integrated": True})
    assert e is None and "was built on x86_64" in why
    assert pick_engine(built_on_x86, "int8", (8, 7), "11.4.0.106", platform=x86)[0]["plan"].endswith("sm_87.int8.plan")
    # Bundles from before the platform was recorded: accepted (a failing deserialize is then rebuilt).
    assert pick_engine(ENGINES, "int8", (8, 7), "11.4.0.106", platform=x86)[0] is not None


def test_lean_runtime_runs_only_version_compatible_plans():
    e, why = pick_engine(ENGINES, "int8", (8, 7), "11.4.0.106", lean_only=True)
    assert e is None and "only the lean runtime" in why
    e, _ = pick_engine(ENGINES, "fp16", (9, 0), "11.2.1.5", lean_only=True)
    assert e["plan"] == "engines/trt-11.2/sm_90.fp16.plan"


def test_version_compatible_engine_on_newer_tensorrt():
    # Built without its lean runtime: a newer TensorRT needs the building version's lean library.
    e, why = pick_engine(ENGINES, "fp16", (9, 0), "11.4.0.106")
    assert e is None and "lean_runtime='/path/to/libnvinfer_lean.so' from TensorRT 11.2.1.5" in why
    e, why = pick_engine(ENGINES, "fp16", (9, 0), "11.4.0.106", lean_runtime="/opt/trt-11.2/libnvinfer_lean.so.11")
    assert e["plan"] == "engines/trt-11.2/sm_90.fp16.plan" and "version-compatible" in why
    # The same version runs it with its own runtime.
    assert pick_engine(ENGINES, "fp16", (9, 0), "11.2.1.5")[0]["plan"] == "engines/trt-11.2/sm_90.fp16.plan"
    # ...but never on an older TensorRT, nor across a major version.
    assert pick_engine(ENGINES, "fp16", (9, 0), "11.1.0")[0] is None
    assert pick_engine(ENGINES, "fp16", (9, 0), "12.0.0")[0] is None


def test_mismatch_names_what_the_bundle_has():
    e, why = pick_engine(ENGINES, "fp32", (8, 6), "11.4.0.106")
    assert e is None
    assert "no engine fits sm_86 with TensorRT 11.4.0.106" in why and "sm_75" in why
    e, why = pick_engine(ENGINES, "int8", (7, 5), "11.4.0.106")  # Turing: the Ampere+ plan does not apply
    assert e is None and "ampere+" in why
    e, why = pick_engine([], "int8", (8, 7), "11.4.0.106")
    assert e is None and "built without TensorRT" in why


def test_engine_members_are_keyed_by_version_and_gpu():
    assert fmt.engine_members("11.4.0.106", (8, 7), "none", "int8") == {
        "plan": "engines/trt-11.4/sm_87.int8.plan", "timing_cache": "engines/trt-11.4/sm_87.int8.timing.cache",
        "build_log": "engines/trt-11.4/sm_87.int8.build.log", "layers": "engines/trt-11.4/sm_87.int8.layers.json"}


def test_bundle_with_engines_round_trips_and_inspects(tmp_path):
    manifest = {"format": fmt.FORMAT_NAME, "schema_version": fmt.SCHEMA_VERSION,
                "model": {"name": "m", "task": "classification", "labels": ["a", "b"]},
                "input": {"name": "input", "shape": [-1, 1, 8, 8], "dtype": "float32"},
                "preprocess": PreprocessSpec(8, 8).to_dict(), "voi_policy": "dicom",
                "output": {"name": "scores", "postprocess": "softmax"},
                "variants": {"int8": {"onnx": "onnx/model.int8.onnx"}}, "engines": ENGINES[:2], "provenance": {}}
    import tiny_models  # the reader parses every ONNX member: a real model, not placeholder bytes

    members = {"onnx/model.int8.onnx": tiny_models.classifier().SerializeToString()}
    for e in ENGINES[:2]:
        for key in ("plan", "timing_cache", "build_log", "layers"):
            members[e[key]] = f"placeholder {key}".encode()
    path = write_bundle(tmp_path / "e.slicert", manifest, members)
    with open_bundle(path) as b:
        assert pick_engine(b.engines, "int8", (8, 6), "11.4.0.106")[0]["plan"] == "engines/trt-11.4/ampere+.int8.plan"
    out = subprocess.run([sys.executable, "-m", "engine.cli", "inspect", str(path)], capture_output=True, text=True,
                         env={"COLUMNS": "220", **__import__("os").environ})
    assert out.returncode == 0, out.stderr
    assert "engines/trt-11.4/sm_87.int8.plan" in out.stdout and "ampere+" in out.stdout


def test_manifest_engine_must_name_a_member(tmp_path):
    from engine.errors import BundleError

    manifest_engines = [_engine("int8", "11.4.0.106", (8, 7))]
    manifest = {"format": fmt.FORMAT_NAME, "schema_version": fmt.SCHEMA_VERSION,
                "model": {"name": "m", "task": "classification", "labels": ["a", "b"]},
                "input": {"name": "input", "shape": [-1, 1, 8, 8], "dtype": "float32"},
                "preprocess": PreprocessSpec(8, 8).to_dict(), "voi_policy": "dicom",
                "output": {"name": "scores", "postprocess": "softmax"},
                "variants": {"int8": {"onnx": "onnx/model.int8.onnx"}}, "engines": manifest_engines,
                "provenance": {}}
    with pytest.raises(BundleError, match=r"engines\[0\]\.plan names 'engines/trt-11\.4/sm_87\.int8\.plan'"):
        write_bundle(tmp_path / "e.slicert", manifest, {"onnx/model.int8.onnx": b"x"})
