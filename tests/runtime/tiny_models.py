"""Tiny ONNX models generated with onnx.helper (never committed), shaped like the toolchain's exports
(contract 5): input "input" [N, 1, H, W] float32 with a dynamic batch axis, output "scores" [N, K]
(classifier: conv + relu + global average pool + gemm) or "logits" [N, K, H, W] (segmenter:
conv + relu + 1x1 conv). Weights are seeded random numbers, so outputs are not trivial; the models
are synthetic and say nothing about any medical task.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.spec import PreprocessSpec

SIDE = 32
CLASS_LABELS = ["normal", "nodule", "effusion"]
SEG_LABELS = ["background", "organ", "lesion"]


def spec() -> PreprocessSpec:
    # 12-bit detector values, a fixed window, [0, 1] VOI output, then z-normalization.
    return PreprocessSpec(out_height=SIDE, out_width=SIDE, voi_function="linear", window_center=2048.0,
                          window_width=4096.0, resize="area", normalize="fixed", mean=(0.5,), std=(0.25,))


def _w(rng, *shape, scale=0.5):
    return rng.standard_normal(shape).astype(np.float32) * scale


def classifier(seed: int = 1) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    k = len(CLASS_LABELS)
    inits = [numpy_helper.from_array(_w(rng, 4, 1, 3, 3), "conv_w"), numpy_helper.from_array(_w(rng, 4), "conv_b"),
             numpy_helper.from_array(_w(rng, k, 4, scale=2.0), "fc_w"), numpy_helper.from_array(_w(rng, k), "fc_b")]
    nodes = [helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["scores"], transB=1)]
    graph = helper.make_graph(nodes, "tiny_classifier",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, SIDE, SIDE])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", k])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="slicert-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def segmenter(seed: int = 2) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    k = len(SEG_LABELS)
    inits = [numpy_helper.from_array(_w(rng, 6, 1, 3, 3), "c1_w"), numpy_helper.from_array(_w(rng, 6), "c1_b"),
             numpy_helper.from_array(_w(rng, k, 6, 1, 1, scale=1.5), "c2_w"),
             numpy_helper.from_array(_w(rng, k), "c2_b")]
    nodes = [helper.make_node("Conv", ["input", "c1_w", "c1_b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "c2_w", "c2_b"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny_segmenter",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, SIDE, SIDE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", k, SIDE, SIDE])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="slicert-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 weights and compute with FP32 input/output kept (casts at the boundary), as contract 6 says."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for init in g.initializer:
        arr = numpy_helper.to_array(init).astype(np.float16)
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
    in_name, out_name = g.input[0].name, g.output[0].name
    for node in g.node:
        node.input[:] = [f"{in_name}_fp16" if i == in_name else i for i in node.input]
        node.output[:] = [f"{out_name}_fp16" if o == out_name else o for o in node.output]
    g.node.insert(0, helper.make_node("Cast", [in_name], [f"{in_name}_fp16"], to=TensorProto.FLOAT16))
    g.node.append(helper.make_node("Cast", [f"{out_name}_fp16"], [out_name], to=TensorProto.FLOAT))
    onnx.checker.check_model(m)
    return m


def to_int8(model: onnx.ModelProto, folder: Path, seed: int = 3, *, cpu_form: bool = False) -> onnx.ModelProto:
    """Explicit Q/DQ INT8 via onnxruntime.quantization (static, per-channel weights), small calibration,
    with the rules of tools/quantize/int8.py. TensorRT form: symmetric INT8 activations (zero point 0),
    FP32 bias, Q/DQ on the inputs of weighted ops and Add only; TensorRT's ONNX parser refuses
    asymmetric zero points and INT32 bias DequantizeLinear (gpu-path review D1). CPU form (`cpu_form`):
    UINT8 activations and INT32 bias, as the quantizer writes for ONNX Runtime."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from tools.quantize.int8 import TRT_OP_TYPES

    rng = np.random.default_rng(seed)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": rng.standard_normal((1, 1, SIDE, SIDE)).astype(np.float32)}
                                 for _ in range(8)])

        def get_next(self):
            return next(self.batches, None)

    src, dst = folder / "_fp32_for_q.onnx", folder / "_int8.onnx"
    onnx.save(model, src)
    if cpu_form:
        form = dict(activation_type=QuantType.QUInt8,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True, "QuantizeBias": True})
    else:
        form = dict(activation_type=QuantType.QInt8, op_types_to_quantize=TRT_OP_TYPES,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                                   "OpTypesToExcludeOutputQuantization": TRT_OP_TYPES})
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=False, weight_type=QuantType.QInt8, **form)
    q = onnx.load(dst)
    src.unlink()
    dst.unlink()
    return q


def model_json(task: str) -> dict:
    labels = CLASS_LABELS if task == "classification" else SEG_LABELS
    return {"name": f"tiny-{task}", "task": task, "labels": labels, "preprocess": spec().to_dict(),
            "voi_policy": "model", "dataset": {"name": "synthetic test fixture", "real_data": False},
            "metrics": {}, "onnx_max_abs_err": 0.0, "source_sha256": "0" * 64}


def write_export(folder: Path, task: str) -> Path:
    """A toolchain-style export folder: model.onnx + model.json."""
    folder.mkdir(parents=True, exist_ok=True)
    model = classifier() if task == "classification" else segmenter()
    onnx.save(model, folder / "model.onnx")
    (folder / "model.json").write_text(json.dumps(model_json(task), indent=2))
    return folder


def cpu_bundles(root: Path) -> dict[str, Path]:
    """{"cls", "seg"}: FP32 CPU bundles (max_batch 1) of the tiny classifier and segmenter, built in root."""
    from engine.bundle import build_bundle

    out = {}
    for task, key in (("classification", "cls"), ("segmentation", "seg")):
        export = write_export(root / f"export_{key}", task)
        out[key] = root / f"{key}.slicert"
        build_bundle(export, out[key], precision="fp32", target="cpu", max_batch=1)
    return out


def write_quantized(folder: Path, export: Path, *, int8_passed: bool = True) -> Path:
    """A quantizer-style folder (contract 6, tools/quantize): model.fp16.onnx, model.int8.onnx (TensorRT
    Q/DQ form), model.int8.ort.onnx (ONNX Runtime CPU form), accuracy_report.json pointing back at the
    export. The report's pass/fail entries are fixture values written here, not measured accuracy."""
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(export / "model.onnx")
    onnx.save(to_fp16(model), folder / "model.fp16.onnx")
    onnx.save(to_int8(model, folder), folder / "model.int8.onnx")
    onnx.save(to_int8(model, folder, cpu_form=True), folder / "model.int8.ort.onnx")
    fixture = "fixture value, not a measurement"
    report = {"schema": "slicert.accuracy_report/1", "export_dir": str(export),
              "calibration": {"method": "max", "n_slices": 8, "data_sha256": "c" * 64},
              "gate": {"metric": "auc", "budget": 0.01, "split": "test", "passed": int8_passed},
              "variants": {"fp32": {"file": None, "passed": True, "reason": "reference model"},
                           "fp16": {"file": "model.fp16.onnx", "passed": True, "reason": fixture,
                                    "metrics": {"auc": {"value": 0.9, "ci95": [0.85, 0.95]}},
                                    "agreement": {"top1_agreement": 1.0}},
                           "int8": {"file": "model.int8.onnx", "passed": int8_passed, "reason": fixture},
                           "int8_ort": {"file": "model.int8.ort.onnx", "passed": int8_passed, "reason": fixture}},
              "deliverables": {"fp16": {"tensorrt": "model.fp16.onnx"},
                               "int8": {"tensorrt": "model.int8.onnx", "onnxruntime": "model.int8.ort.onnx"}}}
    for entry in report["variants"].values():  # as tools/quantize records them: the bytes it gated
        if entry["file"]:
            entry["sha256"] = hashlib.sha256((folder / entry["file"]).read_bytes()).hexdigest()
    (folder / "accuracy_report.json").write_text(json.dumps(report, indent=2))
    return folder
