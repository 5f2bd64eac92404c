"""Bad input gives typed errors naming the problem; inputs are never modified; outputs never overwritten."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from engine.errors import InputError, OutputExists
from engine.spec import PreprocessSpec
from tools.quantize import data as qdata
from tools.quantize import quantize_export

from . import quant_fixtures as qf

CHW = (1, qf.MODEL_SIDE, qf.MODEL_SIDE)


def _hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _copy_export(exports, tmp_path, task="classification"):
    dst = tmp_path / "export"
    shutil.copytree(exports[task], dst)
    return dst


def _arrays(splits, task="classification"):
    spec = PreprocessSpec.from_dict(qf.SPEC)
    s = splits[task]
    return {name: (qdata.preprocess_slices(s[name][0], spec), s[name][1]) for name in ("calib", "val", "test")}


def _dataset(arrs, **override):
    kw = dict(calib_x=arrs["calib"][0], val_x=arrs["val"][0], val_y=arrs["val"][1], test_x=arrs["test"][0],
              test_y=arrs["test"][1], task="classification", num_classes=2, chw=CHW)
    kw.update(override)
    return qdata.from_arrays(**kw)


def test_unsupported_op_is_named(exports, splits, tmp_path):
    export = _copy_export(exports, tmp_path)
    m = onnx.load(str(export / "model.onnx"))
    # Append a non-quantizable op (TopK) on the scores: the model must be refused before any work.
    out = m.graph.output[0].name
    m.graph.node[-1].output[0] = "pre_topk"
    k = numpy_helper.from_array(np.array([2], np.int64), "k")
    m.graph.initializer.append(k)
    m.graph.node.append(helper.make_node("TopK", ["pre_topk", "k"], [out, "idx"], name="topk"))
    onnx.save(m, str(export / "model.onnx"))
    with pytest.raises(InputError, match=r"unsupported op\(s\) for quantization: \['TopK'\]"):
        quantize_export(export, tmp_path / "q", dataset=splits["classification"])
    assert not (tmp_path / "q").exists()


def test_already_quantized_model_is_refused(quantized, tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    shutil.copy(quantized["classification"]["dir"] / "model.int8.onnx", export / "model.onnx")
    (export / "model.json").write_text(json.dumps({"name": "x", "task": "classification", "labels": ["a", "b"],
                                                   "preprocess": qf.SPEC}))
    with pytest.raises(InputError, match="already quantized.*QuantizeLinear|already quantized.*DequantizeLinear"):
        quantize_export(export, tmp_path / "q", dataset=None)


@pytest.mark.parametrize("n", [0, 1, 255])
def test_empty_or_too_small_calibration(exports, splits, tmp_path, n):
    raw = dict(splits["classification"])
    images, labels = raw["calib"]
    raw["calib"] = (images[:n], labels[:n])
    with pytest.raises(InputError, match=f"calibration split has {n} slice"):
        quantize_export(exports["classification"], tmp_path / "q", dataset=raw)


def test_calib_n_below_minimum(exports, splits, tmp_path):
    with pytest.raises(InputError, match="calib_n must be an integer >= 256"):
        quantize_export(exports["classification"], tmp_path / "q", dataset=splits["classification"], calib_n=100)


def test_calibration_wrong_shape_dtype_nan(exports, splits, tmp_path):
    arrs = _arrays(splits)
    good = arrs["calib"][0]
    cases = [
        (good[:, :, :16, :16], r"model expects \(N, 1, 32, 32\), got \(256, 1, 16, 16\)"),
        (good[:, 0], r"expected \(N, C, H, W\)"),
        (good.astype(np.float64), "expected float32 model inputs, got float64"),
        ((good * 1000).astype(np.uint16), "expected float32 model inputs, got uint16"),
        (np.zeros_like(good), "constant"),
    ]
    nan = good.copy()
    nan[17, 0, 3, 4] = np.nan
    cases.append((nan, r"1 NaN/Inf value\(s\), first in slice 17"))
    for bad, pattern in cases:
        with pytest.raises(InputError, match=pattern):
            _dataset(arrs, calib_x=bad)
    # The same checks run inside quantize_export when a QuantDataset is passed (re-validated per model).
    ds = _dataset(arrs)
    tampered = qdata.QuantDataset(calib=qdata.Split(x=nan, y=None, sha256="x"), val=ds.val, test=ds.test)
    with pytest.raises(InputError, match="NaN"):
        quantize_export(exports["classification"], tmp_path / "q", dataset=tampered)


def test_bad_targets_and_missing_split(exports, splits, tmp_path):
    arrs = _arrays(splits)
    with pytest.raises(InputError, match=r"target values must be in \[0, 2\)"):
        _dataset(arrs, test_y=arrs["test"][1] + 5)
    with pytest.raises(InputError, match="need 240 targets"):
        _dataset(arrs, test_y=arrs["test"][1][:10])
    raw = {k: v for k, v in splits["classification"].items() if k != "val"}
    with pytest.raises(InputError, match=r"lacks split\(s\) \['val'\]"):
        quantize_export(exports["classification"], tmp_path / "q", dataset=raw)


def test_bad_arguments_and_sidecar(exports, splits, tmp_path):
    with pytest.raises(InputError, match="calibration method 'kl'"):
        quantize_export(exports["classification"], tmp_path / "q", dataset=splits["classification"], method="kl")
    with pytest.raises(InputError, match="accuracy budget"):
        quantize_export(exports["classification"], tmp_path / "q", dataset=splits["classification"], budget_auc=-1)
    with pytest.raises(InputError, match="export folder not found"):
        quantize_export(tmp_path / "nope", tmp_path / "q")
    export = _copy_export(exports, tmp_path)
    (export / "model.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        quantize_export(export, tmp_path / "q", dataset=splits["classification"])
    (export / "model.onnx").write_bytes(b"garbage")
    (export / "model.json").write_text(json.dumps({"task": "classification", "labels": ["a", "b"],
                                                   "preprocess": qf.SPEC}))
    with pytest.raises(InputError, match="not a valid ONNX model"):
        quantize_export(export, tmp_path / "q", dataset=splits["classification"])


def test_inputs_unchanged_and_outputs_not_overwritten(exports, splits, tmp_path):
    export = _copy_export(exports, tmp_path)
    before = _hashes(export)
    out = tmp_path / "q"
    first = quantize_export(export, out, dataset=splits["classification"])
    assert _hashes(export) == before  # nothing written next to, or into, the inputs
    # The OpenVINO (NNCF) INT8 IR is written only when its own gate passed.
    ov = ["model.int8.openvino.xml", "model.int8.openvino.bin"] if first["variants"]["int8_ov"]["passed"] else []
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.fp16.onnx", "model.int8.onnx", "model.int8.ort.onnx", "accuracy_report.json", "accuracy_report.md",
         *ov])
    assert all((p.stat().st_mode & 0o777) == 0o644 for p in out.iterdir())  # readable artifacts, not 0600 temps
    written = _hashes(out)
    with pytest.raises(OutputExists, match="already exist.*--force"):
        quantize_export(export, out, dataset=splits["classification"])
    assert _hashes(out) == written
    rep = quantize_export(export, out, dataset=splits["classification"], force=True)
    assert rep["model"]["source_sha256"] == before["model.onnx"]
    assert _hashes(export) == before
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())  # atomic writes leave no temp files
