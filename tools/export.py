"""ONNX export (contract 5): model.onnx + model.json per model directory.

- BatchNorm folded into the preceding convolution before export (checked: no BatchNormalization node
  survives); opset 17 (ONNX Runtime and TensorRT 10/11 both support it);
- input "input" [N, C, H, W] float32 with a dynamic batch axis N and the spec's fixed H, W;
  output "scores" [N, K] (classifier logits: the runtime applies softmax) or "logits" [N, K, H, W];
- onnx.checker (full check) and strict shape inference must pass;
- equivalence: ONNX Runtime (CPU, FP32) vs the unfolded PyTorch model on held-out inputs made by
  engine.preprocess; max abs error reported and bounded by MAX_ABS_ERR;
- written in a staging directory and moved into place: an existing export is never overwritten
  unless force.
"""
from __future__ import annotations

import copy
import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np

from engine.errors import InputError
from tools.io import publish_dir, sha256_bytes, staging_dir, write_bytes_atomic, write_json_atomic

OPSET = 17
MAX_ABS_ERR = 1e-4  # FP32 ONNX Runtime vs PyTorch, per element
INPUT_NAME = "input"
OUTPUT_NAMES = {"classification": "scores", "segmentation": "logits"}


class ExportError(InputError):
    """The exported graph failed a check (checker, shape inference, BN left, equivalence bound)."""


def fold_batchnorm(model):
    """An eval-mode copy of `model` with every Conv2d -> BatchNorm2d pair fused into one Conv2d."""
    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    for parent in folded.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.children())
        for i in range(len(children) - 1):
            conv, bn = children[i], children[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                parent[i] = fuse_conv_bn_eval(conv, bn)
                parent[i + 1] = nn.Identity()
    left = [name for name, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if left:
        raise ExportError(f"BatchNorm layers not preceded by a Conv2d cannot be folded: {left}")
    with torch.no_grad():
        return folded


def to_onnx_bytes(model, input_shape: tuple[int, int, int], output_name: str) -> bytes:
    """Export an eval-mode model (C, H, W fixed; batch dynamic) to ONNX bytes, opset 17."""
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is the one that needs no extra package (onnxscript); torch flags
        # it as legacy. Its graphs for these plain CNNs are exactly what we want.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(model, (torch.zeros(1, *input_shape),), buf, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[output_name], do_constant_folding=True,
                          dynamic_axes={INPUT_NAME: {0: "N"}, output_name: {0: "N"}})
    return _strip_identities(buf.getvalue())


def _strip_identities(data: bytes) -> bytes:
    """Remove Identity nodes (the exporter emits them for shared initializers) by rewiring consumers."""
    import onnx

    m = onnx.load_from_string(data)
    g = m.graph
    outputs = {o.name for o in g.output}
    alias = {}
    keep = []
    for node in g.node:
        if node.op_type == "Identity" and node.output[0] not in outputs:
            alias[node.output[0]] = alias.get(node.input[0], node.input[0])
        else:
            keep.append(node)
    for node in keep:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del g.node[:]
    g.node.extend(keep)
    return m.SerializeToString()


def check_graph(data: bytes, task: str, input_shape: tuple[int, int, int], num_classes: int) -> dict:
    """onnx.checker + strict shape inference + the tensor-name/shape contract. Returns a summary."""
    import onnx

    m = onnx.load_from_string(data)
    onnx.checker.check_model(m, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True, data_prop=True)
    ops = sorted({n.op_type for n in inferred.graph.node})
    if "BatchNormalization" in ops:
        raise ExportError("BatchNormalization left in the exported graph")
    opset = {o.domain or "ai.onnx": o.version for o in m.opset_import}
    if opset.get("ai.onnx") != OPSET:
        raise ExportError(f"expected opset {OPSET}, graph has {opset}")

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    (inp,), (out,) = inferred.graph.input, inferred.graph.output
    want_out = OUTPUT_NAMES[task]
    c, h, w = input_shape
    expect_in = ["N", c, h, w]
    expect_out = ["N", num_classes] if task == "classification" else ["N", num_classes, h, w]
    if inp.name != INPUT_NAME or dims(inp) != expect_in or inp.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ExportError(f"input must be {INPUT_NAME!r} float32 {expect_in}, got {inp.name!r} {dims(inp)}")
    if out.name != want_out or dims(out) != expect_out:
        raise ExportError(f"output must be {want_out!r} {expect_out}, got {out.name!r} {dims(out)}")
    return {"opset": OPSET, "ops": ops, "nodes": len(inferred.graph.node), "input": [INPUT_NAME, expect_in],
            "output": [want_out, expect_out]}


def equivalence(data: bytes, model, inputs: np.ndarray, batch: int = 16) -> float:
    """Max |ONNX Runtime - PyTorch| over `inputs` (N, C, H, W), run in batches (exercises dynamic N)."""
    import onnxruntime as ort
    import torch

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    model = model.eval()
    err = 0.0
    with torch.no_grad():
        for i in range(0, inputs.shape[0], batch):
            x = np.ascontiguousarray(inputs[i:i + batch], dtype=np.float32)
            ref = model(torch.from_numpy(x)).numpy()
            got = sess.run(None, {INPUT_NAME: x})[0]
            if got.shape != ref.shape:
                raise ExportError(f"ONNX Runtime output shape {got.shape} != PyTorch {ref.shape}")
            err = max(err, float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))))
    return err


def export_model(model, out_dir: str | Path, *, name: str, task: str, labels: tuple[str, ...], spec,
                 voi_policy: str, dataset_card: dict, metrics: dict, check_inputs: np.ndarray,
                 extra: dict | None = None, force: bool = False) -> dict:
    """Write out_dir/model.onnx + out_dir/model.json; returns the sidecar dict.

    `check_inputs`: held-out model inputs (from engine.preprocess) for the equivalence check."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        from engine.errors import OutputExists

        raise OutputExists(f"refusing to overwrite existing export {out_dir}; pass --force / force=True")
    data, sidecar = build_export(model, name=name, task=task, labels=labels, spec=spec, voi_policy=voi_policy,
                                 dataset_card=dataset_card, metrics=metrics, check_inputs=check_inputs, extra=extra)
    stage = staging_dir(out_dir)
    try:
        write_bytes_atomic(stage / "model.onnx", data)
        write_json_atomic(stage / "model.json", sidecar)
        publish_dir(stage, out_dir, force=force)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return sidecar


def build_export(model, *, name: str, task: str, labels: tuple[str, ...], spec, voi_policy: str,
                 dataset_card: dict, metrics: dict, check_inputs: np.ndarray,
                 extra: dict | None = None) -> tuple[bytes, dict]:
    """(model.onnx bytes, model.json dict) after every check of the module docstring; writes nothing."""
    import torch

    shape = (spec.out_channels, spec.out_height, spec.out_width)
    if tuple(check_inputs.shape[1:]) != shape:
        raise InputError(f"check inputs have shape {check_inputs.shape[1:]}, the spec says {shape}")
    model = model.eval()
    folded = fold_batchnorm(model)
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(check_inputs[:8]))
        fold_err = float((folded(x) - model(x)).abs().max())
    data = to_onnx_bytes(folded, shape, OUTPUT_NAMES[task])
    graph = check_graph(data, task, shape, len(labels))
    err = equivalence(data, model, check_inputs)
    if not err <= MAX_ABS_ERR:
        raise ExportError(f"ONNX Runtime vs PyTorch max abs error {err:.3g} exceeds {MAX_ABS_ERR:g}")
    sidecar = {
        "name": name,
        "task": task,
        "labels": list(labels),
        "preprocess": spec.to_dict(),
        "voi_policy": voi_policy,
        "output": {"name": OUTPUT_NAMES[task], "kind": "logits", "activation": "softmax",
                   "axis": 1, "layout": "NK" if task == "classification" else "NKHW"},
        "input": {"name": INPUT_NAME, "shape": ["N", *shape], "dtype": "float32"},
        "dataset": dataset_card,
        "metrics": metrics,
        "onnx_max_abs_err": err,
        "onnx_max_abs_err_bound": MAX_ABS_ERR,
        "equivalence_inputs": int(check_inputs.shape[0]),
        "batchnorm_fold_max_abs_err": fold_err,
        "graph": graph,
        "model_sha256": sha256_bytes(data),
        "source_sha256": dataset_card.get("source_sha256", {}),
        **(extra or {}),
    }
    return data, sidecar


def load_sidecar(export_dir: str | Path) -> dict:
    with open(Path(export_dir) / "model.json", encoding="utf-8") as f:
        return json.load(f)


if __name__ == "__main__":  # `python -m tools.export`: the CLI is imported only when run as a script, so the
    from tools.cli import run_step  # step module never imports the CLI that imports it (no import circle)

    run_step("export")
