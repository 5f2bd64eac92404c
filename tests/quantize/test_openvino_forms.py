"""OpenVINO precision variants through the accuracy gate (tools/quantize/openvino_forms.py), into the
bundle (engine/bundle/openvino_build.py), timed at build (engine/bundle/cpu_timing.py) and picked by
`best`/`auto` only when they passed and were measured fastest. Real NNCF, real OpenVINO sessions, on the
quantizer fixture's tiny trained students (synthetic data: these numbers compare precisions only)."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

import engine
from engine.bundle import build_bundle, open_bundle
from engine.errors import BackendUnavailable

pytest.importorskip("openvino", reason="openvino is not installed (runtime dependency)")
pytest.importorskip("nncf", reason="nncf is not installed (tools extra)")

TASKS = ("classification", "segmentation")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLICERT_CACHE", str(tmp_path / "cache"))


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _copy_with_report(src, dst, edit):
    shutil.copytree(src, dst)
    rep = json.loads((dst / "accuracy_report.json").read_text())
    edit(rep)
    (dst / "accuracy_report.json").write_text(json.dumps(rep))
    return dst


@pytest.mark.parametrize("task", TASKS)
def test_nncf_int8_is_calibrated_like_the_others_and_gated_on_the_test_split(quantized, task):
    from engine.backends.openvino import cpu_has_bf16

    rep, folder = quantized[task]["report"], quantized[task]["dir"]
    e = rep["variants"]["int8_ov"]
    assert e["target"] == "openvino" and e["inference_precision"] == "f32"
    # The same calibration slices as the ONNX Runtime/TensorRT INT8 forms (digest of the calib split).
    assert e["calibration"]["data_sha256"] == rep["calibration"]["data_sha256"]
    assert e["calibration"]["n_slices"] == rep["calibration"]["n_slices"] >= 256
    g = e["gate"]
    assert g["metric"] == rep["gate"]["metric"] and g["budget"] == rep["gate"]["budget"]
    assert g["fp32"] == rep["variants"]["fp32"]["metrics"][g["metric"]]["value"]
    assert g["passed"] == (g["loss"] <= g["budget"] + 1e-12)
    if task == "classification":
        assert e["agreement"]["top1_agreement"] > 0.8  # an NNCF model that agrees with FP32, not a stub
    else:
        assert e["agreement"]["pixel_agreement"] > 0.8
    xml, weights = folder / "model.int8.openvino.xml", folder / "model.int8.openvino.bin"
    if e["passed"]:
        assert e["sha256"] == _sha(xml) and e["weights_sha256"] == _sha(weights)
        assert rep["deliverables"]["int8"]["openvino"] == "model.int8.openvino.xml"
        assert b"FakeQuantize" in xml.read_bytes()  # NNCF's INT8 form, not the FP32 graph
    else:
        assert not xml.exists() and not weights.exists() and e["file"] is None
    if not cpu_has_bf16():
        assert "bf16_ov" not in rep["variants"] and "bf16_ov" in rep["openvino"]["skipped"]


def _passing(quantized):
    """(task, folder) of a task whose NNCF INT8 form passed its gate (measured: the segmenter's passes,
    ΔDice ~0; the classifier's passed or failed depending on the fixture model's training)."""
    for task in ("segmentation", "classification"):
        if quantized[task]["report"]["variants"]["int8_ov"]["passed"]:
            return task, quantized[task]["dir"]
    pytest.fail("no NNCF INT8 form passed its gate on either fixture model")


def test_bundle_carries_the_ir_and_openvino_runs_it(quantized, tmp_path):
    task, folder = _passing(quantized)
    out = build_bundle(folder, tmp_path / "c.slicert", target="cpu").path
    with open_bundle(out) as b:
        entry = b.variants["int8"]
        assert entry["openvino"] == {**entry["openvino"], "xml": "openvino/model.int8.xml",
                                     "bin": "openvino/model.int8.bin"}
        assert entry["accuracy_gate"]["forms"]["openvino"]["passed"] is True
        assert b.read("openvino/model.int8.bin") == (folder / "model.int8.openvino.bin").read_bytes()
        assert b.manifest["members"]["openvino/model.int8.bin"]["sha256"] == _sha(folder / "model.int8.openvino.bin")
        assert b.manifest["default_variant"]["openvino"] == "int8"  # untimed build: the static order
    ov = engine.load(out, backend="openvino", precision="int8", threads=1)
    ref = engine.load(out, backend="onnxruntime", precision="fp32", threads=1)
    try:
        assert ov.info["model_file"] == "openvino/model.int8.xml" and ov.info["weights_file"] == "openvino/model.int8.bin"
        from tests.quantize.conftest import raw_splits

        images = raw_splits(task, n_calib=1, n_val=1, n_test=8)["test"][0]  # held-out synthetic slices
        for img in images:
            a, r = ov.run(img), ref.run(img)
            if task == "classification":
                assert a.label == r.label and np.isfinite(a.scores).all()
            else:  # INT8 vs FP32 masks of the same slice
                assert (a.mask == r.mask).mean() > 0.98
    finally:
        ov.close()
        ref.close()


def test_corrupt_ir_weights_are_a_bundle_error(quantized, tmp_path):
    from engine.bundle import write_bundle
    from engine.errors import BundleError

    _task, folder = _passing(quantized)
    out = build_bundle(folder, tmp_path / "c.slicert", target="cpu").path
    with open_bundle(out) as b:
        manifest = json.loads(json.dumps(b.manifest))
        members = {n: b.read(n) for n in b.members}
    members["openvino/model.int8.bin"] = members["openvino/model.int8.bin"][:64]  # checksums redone: valid bundle
    bad = write_bundle(tmp_path / "bad.slicert", manifest, members)
    with pytest.raises(BundleError, match=r"openvino cannot read bundle member 'openvino/model.int8.xml'.*weights"):
        engine.load(bad, backend="openvino", precision="int8")


def test_failed_openvino_gate_is_never_bundled_nor_best(quantized, tmp_path):
    def fail(rep):
        rep["variants"]["int8_ov"].update(passed=False, reason="forced failure for this test")

    folder = _copy_with_report(_passing(quantized)[1], tmp_path / "q", fail)
    report = build_bundle(folder, tmp_path / "c.slicert", target="cpu", time_cpu=True)
    assert "int8 (openvino form)" in report.excluded and "forced failure" in report.excluded["int8 (openvino form)"]
    with open_bundle(report.path) as b:
        assert not [m for m in b.members if m.startswith("openvino/")]
        assert "openvino" not in b.variants["int8"]
        assert "int8" not in b.manifest["cpu_timings"]["median_ms"]["openvino"]
        assert b.manifest["default_variant"]["openvino"] != "int8"
    s = engine.load(report.path, backend="openvino", precision="best")
    try:
        assert s.info["precision"] != "int8"
    finally:
        s.close()
    with pytest.raises(BackendUnavailable, match="no OpenVINO form of int8"):
        engine.load(report.path, backend="openvino", precision="int8")


def test_build_times_every_gated_variant_and_best_is_the_fastest(quantized, tmp_path):
    folder = _passing(quantized)[1]
    report = build_bundle(folder, tmp_path / "c.slicert", target="cpu", time_cpu=True)
    t = report.manifest["cpu_timings"]
    assert set(t["median_ms"]) == {"openvino", "onnxruntime"} and t["threads"] == 1 and t["calls"] >= 15
    assert set(t["median_ms"]["onnxruntime"]) == set(report.manifest["variants"]) - {"bf16"}
    for backend, per_variant in t["median_ms"].items():
        fastest = min(per_variant, key=per_variant.get)
        assert report.manifest["default_variant"][backend] == fastest
        s = engine.load(report.path, backend=backend, precision="best", threads=1)
        try:
            assert s.info["precision"] == fastest
        finally:
            s.close()
    overall = min(((b, v) for b, pv in t["median_ms"].items() for v in pv), key=lambda k: t["median_ms"][k[0]][k[1]])
    assert (t["fastest"]["backend"], t["fastest"]["variant"]) == overall
    s = engine.load(report.path, threads=1)  # auto: the measured faster CPU backend, and why
    try:
        assert (s.info["backend"], s.info["precision"]) == overall
        assert "measured at build on this CPU" in s.info["why"] and f"{overall[0]} first" in s.info["why"]
    finally:
        s.close()


def test_int8_slower_than_fp32_is_not_best(quantized, tmp_path, monkeypatch):
    # Measured timings decide, not the precision's name: fake a machine where INT8 loses on both backends.
    from engine.bundle import cpu_timing
    from engine.envinfo import cpu_model

    def measured(bundle, **_):
        from engine.backends.cpu_choice import timing_flags

        fake = {"onnxruntime": {"fp32": 2.0, "int8": 3.0}, "openvino": {"fp32": 1.5, "int8": 1.9}}
        ms = {"onnxruntime": {v: fake["onnxruntime"].get(v, 9.0) for v in bundle.variants},
              "openvino": {v: fake["openvino"].get(v, 1.7) for v in bundle.variants
                           if v != "int8" or "openvino" in bundle.variants["int8"]}}
        return {"cpu_model": cpu_model(), "cpu_flags": timing_flags(), "threads": 1, "rounds": 1, "calls": 1,
                "median_ms": ms, "fastest": {"backend": "openvino", "variant": "fp32", "ms": 1.5}, "not_timed": {}}

    monkeypatch.setattr(cpu_timing, "measure", measured)
    report = build_bundle(_passing(quantized)[1], tmp_path / "c.slicert", target="cpu", time_cpu=True)
    assert report.manifest["default_variant"]["onnxruntime"] == "fp32"
    assert report.manifest["default_variant"]["openvino"] == "fp32"
    s = engine.load(report.path)
    try:
        assert (s.info["backend"], s.info["precision"]) == ("openvino", "fp32")
        assert "openvino first: its fp32 ran 1.50 ms vs onnxruntime's fp32 2.00 ms" in s.info["why"]
    finally:
        s.close()


def test_auto_without_timings_for_this_cpu_follows_the_stated_rule(quantized, tmp_path):
    from engine.backends.cpu_choice import INT8_DOT_FLAGS
    from engine.bundle import write_bundle
    from engine.envinfo import cpu_flags

    report = build_bundle(_passing(quantized)[1], tmp_path / "c.slicert", target="cpu", time_cpu=True)
    with open_bundle(report.path) as b:
        manifest = json.loads(json.dumps(b.manifest))
        members = {n: b.read(n) for n in b.members}
    manifest["cpu_timings"]["cpu_model"] = "another CPU"  # timings from elsewhere do not apply here
    other = write_bundle(tmp_path / "other.slicert", manifest, members)
    s = engine.load(other)
    try:
        has_ov_int8 = "openvino" in manifest["variants"]["int8"]
        if has_ov_int8 and cpu_flags(INT8_DOT_FLAGS):
            assert s.info["backend"] == "openvino" and "the CPU has" in s.info["why"]
        else:
            assert s.info["backend"] == "onnxruntime"
            assert "no build-time timings for this CPU" in s.info["why"]
    finally:
        s.close()


def test_bf16_variant_is_openvino_only_and_needs_the_cpu(quantized, tmp_path):
    from engine.backends.openvino import cpu_has_bf16
    from tools.quantize import openvino_forms

    # The report as a bf16-capable build machine writes it (gate passed); this machine may lack bf16.
    def bf16_passed(rep):
        rep["variants"]["bf16_ov"] = {**rep["variants"]["int8_ov"], "file": None, "weights_file": None,
                                      "passed": True, "reason": "fixture: as written on an AMX machine"}

    folder = _copy_with_report(quantized["classification"]["dir"], tmp_path / "q", bf16_passed)
    out = build_bundle(folder, tmp_path / "c.slicert", target="cpu").path
    with open_bundle(out) as b:
        assert b.variants["bf16"]["backends"] == ["openvino"] and b.variants["bf16"]["onnx"] == "onnx/model.fp32.onnx"
    with pytest.raises(BackendUnavailable, match=r"the bf16 variant is for \['openvino'\] only"):
        engine.load(out, backend="onnxruntime", precision="bf16")
    if not cpu_has_bf16():
        with pytest.raises(BackendUnavailable, match="bf16 needs a CPU with amx_bf16 or avx512_bf16"):
            engine.load(out, backend="openvino", precision="bf16")
        s = engine.load(out, backend="openvino", precision="best")
        try:
            assert s.info["precision"] != "bf16"
        finally:
            s.close()
    # The quantizer's own bf16 step on this CPU: skipped with the reason, or run and gated.
    assert openvino_forms.FILES["int8_ov"][0].endswith(".xml")
