"""The OpenVINO backend on real OpenVINO sessions (tiny generated models, tiny_models.py): agreement with
ONNX Runtime (the reference), the input tensor the fused kernel writes is the infer request's own memory,
the compiled-model cache, auto's choice and its reason, and typed errors."""
from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.errors import BackendUnavailable, BundleError

pytest.importorskip("openvino", reason="openvino is not installed (runtime dependency)")

# Same FP32 graph, two runtimes: differences come only from re-association inside fused kernels.
ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # Every test starts with an empty compiled-model cache of its own.
    monkeypatch.setenv("SLICERT_CACHE", str(tmp_path / "cache"))


def _close_all(*sessions):
    for s in sessions:
        s.close()


def test_classifier_agrees_with_onnxruntime(cls_bundle, pixels, rng):
    ov = engine.load(cls_bundle, backend="openvino", precision="fp32", threads=1, max_batch=4)
    ort = engine.load(cls_bundle, backend="onnxruntime", precision="fp32", threads=1, max_batch=4)
    try:
        assert ov.info["backend"] == "openvino" and ov.info["inference_precision"] == "f32"
        a, b = ov.run(pixels), ort.run(pixels)
        np.testing.assert_allclose(a.scores, b.scores, atol=ATOL, rtol=RTOL)
        assert a.label == b.label
        # Batches of every size up to max_batch (the bounded dynamic batch), each slice its own image.
        images = [rng.integers(0, 4096, size=(60 + 7 * i, 50 + 5 * i), dtype=np.uint16) for i in range(4)]
        for n in (3, 1, 4, 2):
            got = ov.run_batch(images[:n])
            ref = ort.run_batch(images[:n])
            for g, r in zip(got, ref):
                np.testing.assert_allclose(g.scores, r.scores, atol=ATOL, rtol=RTOL)
        assert len({tuple(np.round(r.scores, 5)) for r in ov.run_batch(images)}) == 4
    finally:
        _close_all(ov, ort)


def test_segmenter_agrees_with_onnxruntime(seg_bundle, pixels):
    ov = engine.load(seg_bundle, backend="openvino", threads=1, max_batch=2)
    ort = engine.load(seg_bundle, backend="onnxruntime", threads=1, max_batch=2)
    try:
        a, b = ov.run(pixels, pixel_spacing_mm=(0.5, 0.5)), ort.run(pixels, pixel_spacing_mm=(0.5, 0.5))
        assert a.mask.shape == pixels.shape
        # Logits equal to ~1e-6: an argmax may flip only where two classes tie that closely.
        assert (a.mask == b.mask).mean() > 0.999
        assert a.pixel_counts.keys() == b.pixel_counts.keys()
        ov_logits = ov._backend.infer(1)["logits"][0]
        ort_logits = ort._backend.infer(1)["logits"][0]
        np.testing.assert_allclose(ov_logits, ort_logits, atol=ATOL, rtol=RTOL)
    finally:
        _close_all(ov, ort)


def test_fused_kernel_writes_into_the_request_input_tensor(cls_bundle, pixels):
    from engine.preprocess import preprocess_into

    s = engine.load(cls_bundle, backend="openvino", precision="fp32", threads=1, max_batch=4)
    try:
        be = s._backend
        arr = be.input_array
        s.run(pixels)
        req = be.infer_request
        seen = req.get_input_tensor().data
        # The tensor the request reads IS the array the kernel wrote: same address, shared memory, no copy.
        assert seen.ctypes.data == arr.ctypes.data and np.shares_memory(seen, arr)
        out = req.get_output_tensor().data
        assert out.ctypes.data == be.infer(1)["scores"].ctypes.data
        # ...and it holds exactly the preprocessed slice (poisoned reference first: every element written).
        ref = np.full((1, *arr.shape[1:]), np.nan, np.float32)
        preprocess_into(ref, pixels, s.spec, 0)
        np.testing.assert_array_equal(seen[0], ref[0])
        # A write into the array changes what the request computes: the request reads this memory.
        before = be.infer(1)["scores"].copy()
        arr[0] = 0.0
        after = be.infer(1)["scores"].copy()
        assert not np.allclose(before, after)
        # After a batch of 3 the request reads the first rows of the same array.
        s.run_batch([pixels] * 3)
        seen3 = be.infer_request.get_input_tensor().data
        assert seen3.shape[0] == 3 and seen3.ctypes.data == arr.ctypes.data
    finally:
        s.close()


def test_compiled_model_cache_is_reused_and_keyed_per_model(cls_bundle, seg_bundle, pixels, tmp_path):
    first = engine.load(cls_bundle, backend="openvino", precision="fp32", threads=1)
    second = engine.load(cls_bundle, backend="openvino", precision="fp32", threads=1)
    other_variant = engine.load(cls_bundle, backend="openvino", precision="fp16", threads=1)
    other_bundle = engine.load(seg_bundle, backend="openvino", threads=1)
    try:
        assert first.info["cache_hit"] is False and second.info["cache_hit"] is True
        cache = tmp_path / "cache"
        assert first.info["cache_dir"] == second.info["cache_dir"]
        assert str(cache) in first.info["cache_dir"]
        blobs = list((cache).rglob("*.blob"))
        assert blobs, "OpenVINO wrote no compiled blob into CACHE_DIR"
        dirs = {first.info["cache_dir"], other_variant.info["cache_dir"], other_bundle.info["cache_dir"]}
        assert len(dirs) == 3  # another variant or another bundle never shares a cache folder
        assert other_variant.info["cache_hit"] is False and other_bundle.info["cache_hit"] is False
        np.testing.assert_array_equal(first.run(pixels).scores, second.run(pixels).scores)
    finally:
        _close_all(first, second, other_variant, other_bundle)


def test_unsupported_variant_and_missing_backend_are_typed(cls_bundle, monkeypatch):
    # The quantizer fixture bundle carries ONNX Runtime/TensorRT Q/DQ INT8 only, no OpenVINO form.
    with pytest.raises(BackendUnavailable, match="no OpenVINO form of int8"):
        engine.load(cls_bundle, backend="openvino", precision="int8")
    from engine.backends.openvino import OpenVINOBackend

    monkeypatch.setattr(OpenVINOBackend, "availability", classmethod(lambda cls: (False, "openvino is not installed")))
    with pytest.raises(BackendUnavailable, match=r"openvino.*not installed.*Available: \['onnxruntime'\]"):
        engine.load(cls_bundle, backend="openvino")
    s = engine.load(cls_bundle, backend="auto")  # auto still runs, on ONNX Runtime, and says why
    try:
        assert s.info["backend"] == "onnxruntime" and "openvino unavailable" in s.info["why"]
    finally:
        s.close()


def test_onnx_with_external_data_is_refused(tmp_path, cls_bundle):
    import json

    import onnx
    import tiny_models

    from engine.bundle import build_bundle

    model = tiny_models.classifier()
    export = tmp_path / "ext"
    export.mkdir()
    (export / "model.json").write_text(json.dumps(tiny_models.model_json("classification")))
    onnx.save(model, export / "model.onnx")
    out = tmp_path / "ext.slicert"
    build_bundle(export, out, target="cpu", precision="fp32")
    # Rewrite the bundled ONNX so one weight points at a file outside the bundle, then re-checksum.
    from engine.bundle import open_bundle, write_bundle

    with open_bundle(out) as b:
        manifest = json.loads(json.dumps(b.manifest))
        members = {n: b.read(n) for n in b.members}
    m = onnx.load_from_string(members["onnx/model.fp32.onnx"])
    w = m.graph.initializer[0]
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    w.external_data.add(key="location", value="/etc/hostname")
    members["onnx/model.fp32.onnx"] = m.SerializeToString()
    bad = write_bundle(tmp_path / "bad.slicert", manifest, members)
    with pytest.raises(BundleError, match="external data"):
        engine.load(bad, backend="openvino", precision="fp32")


def test_cold_start_with_an_empty_and_a_warm_compiled_cache(cls_bundle):
    from engine.bench.coldstart import measure_process_cold_start

    kw = {"backend": "openvino", "precision": "fp32", "threads": 1}
    cold = measure_process_cold_start(cls_bundle, "synthetic", kw, repeats=1, compiled_cache="cold")
    warm = measure_process_cold_start(cls_bundle, "synthetic", kw, repeats=1, compiled_cache="warm")
    # Fresh processes: an empty cache compiles, a warm one imports the blob the untimed spawn left.
    assert cold["backend"] == warm["backend"] == ["openvino"]
    assert cold["cache_hit"] == [False] and warm["cache_hit"] == [True]
    assert cold["median_ms"]["load_ms"] > 0 and warm["median_ms"]["load_ms"] > 0


def test_bench_puts_backends_side_by_side(cls_bundle):
    from engine.cli.bench import run_bench

    run = run_bench([f"{cls_bundle}:precision=fp32,threads=1"], backends=["openvino", "onnxruntime"], n=5,
                    warmup=1, cold_start_repeats=1, quiet=True)
    names = [c.name for c in run.configurations]
    assert names == ["cls[openvino]", "cls[onnxruntime]"]
    by_name = {c.name: c for c in run.configurations}
    assert by_name["cls[openvino]"].meta["session_info"]["backend"] == "openvino"
    assert by_name["cls[onnxruntime]"].meta["session_info"]["backend"] == "onnxruntime"
    ov_cold = by_name["cls[openvino]"].cold_start_process
    assert set(ov_cold["by_compiled_cache"]) == {"cold", "warm"}
    assert "by_compiled_cache" not in by_name["cls[onnxruntime]"].cold_start_process
    from engine.bench.report import _process_cold_txt

    assert "compiled cache cold" in _process_cold_txt(by_name["cls[openvino]"])
