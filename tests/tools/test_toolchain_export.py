"""ONNX export: contract-5 names and shapes, opset 17, BatchNorm folded, dynamic batch, ONNX Runtime vs
PyTorch equivalence on inputs made by the real engine.preprocess, and no overwrite without force."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from engine.errors import OutputExists
from engine.spec import PreprocessSpec
from tools import export, models
from tools.data import us_phantom
from tools.data.inputs import model_inputs
from tools.errors import UnwritableOutput
from tools.io import sha256_file


def _nontrivial_bn(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random BN statistics/affine so that folding is actually exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def us_inputs():
    p = {**us_phantom.params(True, 0), "sizes": {"test": 6}}
    images = us_phantom.build(p, 0)["splits"]["test"]["images"]
    return model_inputs(images, us_phantom.spec())  # the native engine.preprocess path


CARD = {"name": "us_phantom", "seed": 0, "source_sha256": {}, "provenance": {"real": "nothing"}}


@pytest.mark.parametrize("arch,task,labels", [
    ("unet_student", "segmentation", ("background", "cyst", "lesion")),
    ("unet_teacher", "segmentation", ("background", "cyst", "lesion")),
    ("cnn_student", "classification", ("no", "yes")),
    ("resnet_teacher", "classification", ("no", "yes")),
])
def test_export_contract_and_equivalence(tmp_path, us_inputs, arch, task, labels):
    spec = us_phantom.spec()
    model = _nontrivial_bn(models.build(arch, len(labels), 1, seed=1), seed=2)
    out = tmp_path / arch
    side = export.export_model(model, out, name=arch, task=task, labels=labels, spec=spec, voi_policy="dicom",
                               dataset_card=CARD, metrics={"x": 1}, check_inputs=us_inputs)
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.onnx"]
    meta = json.loads((out / "model.json").read_text())
    assert meta == json.loads(json.dumps(side))
    for key in ("name", "task", "labels", "preprocess", "voi_policy", "dataset", "metrics", "onnx_max_abs_err",
                "source_sha256"):
        assert key in meta
    assert PreprocessSpec.from_dict(meta["preprocess"]) == spec
    assert meta["task"] == task and meta["labels"] == list(labels)
    assert 0.0 <= meta["onnx_max_abs_err"] <= 1e-4
    assert meta["model_sha256"] == sha256_file(out / "model.onnx")

    m = onnx.load(str(out / "model.onnx"))
    assert {o.domain or "ai.onnx": o.version for o in m.opset_import}["ai.onnx"] == 17
    ops = {n.op_type for n in m.graph.node}
    assert "BatchNormalization" not in ops and "Identity" not in ops
    (inp,), (outp,) = m.graph.input, m.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "input" and dims == ["N", 1, 96, 96]
    assert outp.name == ("scores" if task == "classification" else "logits")

    # Independent check at another batch size (dynamic N) against the UNFOLDED PyTorch model.
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = us_inputs[:3]
    got = sess.run(None, {"input": x})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert got.shape == ((3, len(labels)) if task == "classification" else (3, len(labels), 96, 96))
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    assert np.abs(ref).max() > 1e-2  # a non-trivial output


def test_fold_batchnorm_is_exact_and_complete(us_inputs):
    model = _nontrivial_bn(models.build("resnet_teacher", 2, 1, seed=0), seed=5)
    folded = export.fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # original untouched
    x = torch.from_numpy(us_inputs)
    with torch.no_grad():
        assert (folded(x) - model(x)).abs().max() < 1e-4


def test_existing_export_is_not_overwritten(tmp_path, us_inputs):
    spec = us_phantom.spec()
    model = _nontrivial_bn(models.build("cnn_student", 2, 1, seed=0), seed=1)
    kw = dict(name="m", task="classification", labels=("a", "b"), spec=spec, voi_policy="dicom",
              dataset_card=CARD, metrics={}, check_inputs=us_inputs)
    out = tmp_path / "exp"
    export.export_model(model, out, **kw)
    before = sha256_file(out / "model.onnx")
    other = _nontrivial_bn(models.build("cnn_student", 2, 1, seed=9), seed=3)
    with pytest.raises(OutputExists):
        export.export_model(other, out, **kw)
    assert sha256_file(out / "model.onnx") == before
    export.export_model(other, out, force=True, **kw)
    assert sha256_file(out / "model.onnx") != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # no staging leftovers


def test_failed_equivalence_writes_nothing(tmp_path, us_inputs, monkeypatch):
    monkeypatch.setattr(export, "MAX_ABS_ERR", -1.0)  # any error now exceeds the bound
    model = _nontrivial_bn(models.build("cnn_student", 2, 1, seed=0), seed=1)
    with pytest.raises(export.ExportError, match="max abs error"):
        export.export_model(model, tmp_path / "exp", name="m", task="classification", labels=("a", "b"),
                            spec=us_phantom.spec(), voi_policy="dicom", dataset_card=CARD, metrics={},
                            check_inputs=us_inputs)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_dir(tmp_path, us_inputs):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"keep")
    model = models.build("cnn_student", 2, 1, seed=0).eval()
    with pytest.raises(UnwritableOutput):
        export.export_model(model, blocker / "exp", name="m", task="classification", labels=("a", "b"),
                            spec=us_phantom.spec(), voi_policy="dicom", dataset_card=CARD, metrics={},
                            check_inputs=us_inputs)
    assert blocker.read_bytes() == b"keep"
