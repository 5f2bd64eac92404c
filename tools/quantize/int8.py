"""Explicit Q/DQ INT8 models, in two forms built from the same calibration ranges.

* TensorRT form (`model.int8.onnx`): what TensorRT's explicit-quantization rules want. INT8 only,
  zero points 0 (TensorRT accepts UINT8/asymmetric Q/DQ only for DLA), per-channel symmetric weights on
  the output-channel axis (Conv 0, ConvTranspose 1), per-tensor activations, Q/DQ on the inputs of
  weighted ops and on the residual input of Add, no Q/DQ on weighted-op outputs (so TensorRT fuses
  Conv+BN+ReLU+Add and picks the output precision), FP32 bias (TensorRT quantizes bias itself).
* ONNX Runtime CPU form (`model.int8.ort.onnx`): the same scales laid out the way ORT's QDQ fusions need
  to become integer kernels: every quantizable op sandwiched DQ -> op -> Q, INT32 bias, UINT8
  activations (MLAS's fast u8s8 path on x86) and zero point 0 after ReLU so ORT folds the ReLU into the
  QuantizeLinear. Why two files: in the TensorRT form a ReLU sits between Conv and the next Q with a
  symmetric zero point, ORT cannot fold it, and half the convolutions stay FP32 - the "QDQ model no
  faster than FP32" trap of onnxruntime issue 17389 (measured in benchmarks/bench_quantize.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tools.quantize.graph import WEIGHTED_OPS
from tools.quantize.runner import quiet_ort_logging

if TYPE_CHECKING:
    import onnx

FORMS = ("tensorrt", "ort")
# Ops that get Q/DQ in the TensorRT form: weighted ops (inputs) and Add (residual input).
TRT_OP_TYPES = ["Conv", "ConvTranspose", "Gemm", "MatMul", "Add"]


def prepare_fp32(model: onnx.ModelProto, out_path: str | Path) -> onnx.ModelProto:
    """ORT's basic, hardware-independent graph optimizations (Conv+BatchNorm folding, constant folding,
    identity removal: what onnxruntime.quantization's pre-processing recommends), ONNX shape inference,
    then unique node names. Written to `out_path` (a work folder: nothing lands in the CWD)."""
    import onnx

    from tools.quantize.graph import ensure_node_names

    out_path = Path(out_path)
    so_model = onnx.ModelProto()
    so_model.CopyFrom(model)
    ensure_node_names(so_model)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(out_path)
    so.log_severity_level = 3
    ort.InferenceSession(so_model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    prepped = onnx.shape_inference.infer_shapes(onnx.load(str(out_path)))
    ensure_node_names(prepped)
    onnx.save(prepped, str(out_path))
    return prepped


def quantize(prepped_path: str | Path, cache_path: str | Path, method: str, out_path: str | Path, *,
             form: str, exclude: tuple[str, ...] | list[str] = (), only: tuple[str, ...] | list[str] = (),
             cpu_exclude: tuple[str, ...] | list[str] = ()) -> onnx.ModelProto:
    """Write an INT8 Q/DQ model of `form` using the cached calibration ranges.

    `exclude`: weighted layers left in FP32 (mixed precision). `only`: quantize just these layers
    (sensitivity probes). `cpu_exclude`: layers measured slower in INT8 on this CPU (ORT form only,
    see cpu_speed.py)."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from tools.quantize.calibrate import ort_method

    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}")
    if form == "tensorrt":
        kwargs = dict(activation_type=QuantType.QInt8, op_types_to_quantize=TRT_OP_TYPES,
                      extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                                     "OpTypesToExcludeOutputQuantization": TRT_OP_TYPES})
    else:
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        from tools.quantize.cpu_speed import CPU_FORM_SKIP_OPS

        ops = sorted((set(QLinearOpsRegistry) | set(QDQRegistry)) - set(CPU_FORM_SKIP_OPS))
        kwargs = dict(activation_type=QuantType.QUInt8, op_types_to_quantize=ops,
                      extra_options={"ActivationSymmetric": False, "WeightSymmetric": True, "QuantizeBias": True})
        exclude = sorted(set(exclude) | set(cpu_exclude))
    nodes_to_quantize = list(only)
    with quiet_ort_logging():
        quantize_static(str(prepped_path), str(out_path), calibration_data_reader=None,
                        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                        weight_type=QuantType.QInt8, nodes_to_quantize=nodes_to_quantize or None,
                        nodes_to_exclude=list(exclude) or None, calibrate_method=ort_method(method),
                        calibration_cache_path=str(cache_path), **kwargs)
    model = onnx.load(str(out_path))
    if form == "tensorrt":
        _drop_qdq_on_fusable_add_inputs(model)
    _float_layers_read_float(model)
    onnx.save(model, str(out_path))
    return model


def _producers(model) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def _consumers(model) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _float_layers_read_float(model) -> None:
    """Keep every weighted layer left in FP32 (excluded, CPU-slow, or outside `only`) really float under
    ONNX Runtime. ORT's quantizer shares one DequantizeLinear among all consumers of a quantized tensor,
    so such a layer reads a per-tensor DQ; ORT's WeightBiasQuantization transformer (basic level, on by
    default) then gives any Conv/ConvTranspose/Gemm with a per-tensor DQ input per-tensor INT8 weights,
    and the QDQ fusion turns DQ -> Conv -> (Relu) -> Q into a QLinearConv: the "FP32" layer ran in INT8
    (fixture classifier: excluding any of the 8 convolutions after the stem still gave 9 of 9 QLinearConv).
    Reading the float tensor before the Q instead would break the PRODUCER's fusion (its output then has
    a float consumer besides the Q). So the float layer gets its own DequantizeLinear with the same scale
    repeated per channel (per-axis, numerically identical): neither that transformer nor the integer
    kernels take a per-channel activation, and the producer keeps its single Q."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    prod = _producers(model)
    for node in list(model.graph.node):
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        w_dq = prod.get(node.input[1])
        dq = prod.get(node.input[0])
        if (w_dq is not None and w_dq.op_type == "DequantizeLinear") or dq is None or dq.op_type != "DequantizeLinear":
            continue  # an INT8 layer, or one that reads a float tensor already
        w = inits.get(node.input[1])
        q = prod.get(dq.input[0])
        if w is None or len(dq.input) < 3 or dq.input[1] not in inits or dq.input[2] not in inits:
            # No stored weight shape or scale to build a per-axis DQ from (weights from a Constant node,
            # a scale computed in the graph): read the float tensor before the Q. Correct, at the price of
            # the producer's fusion; a layer the user or the speed probe kept in FP32 must never run INT8.
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[0] = q.input[0]
            continue  # qdq_problems reports what is left
        scale, zp = numpy_helper.to_array(inits[dq.input[1]]), numpy_helper.to_array(inits[dq.input[2]])
        if scale.size != 1:
            continue  # already per-axis
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            channels, axis = w.dims[1] * group, 1
        elif node.op_type == "ConvTranspose":
            channels, axis = w.dims[0], 1
        elif node.op_type == "Gemm":
            channels, axis = (w.dims[1] if next((a.i for a in node.attribute if a.name == "transB"), 0)
                              else w.dims[0]), -1
        else:  # MatMul
            channels, axis = w.dims[0], -1
        if channels == 1:  # a 1-element per-axis scale counts as per-tensor: read the float tensor itself
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[0] = q.input[0]
            continue
        base = f"{node.name}_float_input"
        s_init = numpy_helper.from_array(np.full(channels, scale.reshape(()), scale.dtype), f"{base}_scale")
        z_init = numpy_helper.from_array(np.full(channels, zp.reshape(()), zp.dtype), f"{base}_zero_point")
        model.graph.initializer.extend([s_init, z_init])
        own = helper.make_node("DequantizeLinear", [dq.input[0], s_init.name, z_init.name], [f"{base}_dq"],
                               name=f"{base}_DequantizeLinear", axis=axis)
        model.graph.node.insert(list(model.graph.node).index(node), own)
        node.input[0] = own.output[0]
    cons = _consumers(model)
    outputs = {o.name for o in model.graph.output}
    for n in [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in prod
              and n.output[0] not in outputs and not cons.get(n.output[0])]:
        model.graph.node.remove(n)  # the shared per-tensor DQ, when the float layer was its only reader


def _drop_qdq_on_fusable_add_inputs(model) -> None:
    """TensorRT fuses `Conv -> Add(residual)` into the convolution's epilogue when the residual input is
    quantized and the convolution branch is not: remove the Q/DQ pair that the generic quantizer put on
    an Add input produced by a weighted op with no other consumer. Only one input per Add (TensorRT fuses
    one branch)."""
    prod, cons = _producers(model), _consumers(model)
    remove: list = []
    for add in [n for n in model.graph.node if n.op_type == "Add"]:
        for idx, t in enumerate(add.input):
            dq = prod.get(t)
            if dq is None or dq.op_type != "DequantizeLinear" or len(cons.get(t, [])) != 1:
                continue
            q = prod.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear" or len(cons.get(q.output[0], [])) != 1:
                continue
            src = prod.get(q.input[0])
            if src is None or src.op_type not in WEIGHTED_OPS or len(cons.get(q.input[0], [])) != 1:
                continue
            add.input[idx] = q.input[0]
            remove += [q, dq]
            break
    for n in remove:
        model.graph.node.remove(n)


def qdq_problems(model: onnx.ModelProto, form: str, excluded: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Everything about `model` that breaks the Q/DQ rules of `form`; empty when it is valid.

    Checks: every non-excluded weighted layer reads a DequantizeLinear activation and per-channel
    symmetric INT8 weights (one positive finite scale per output channel, all zero points 0); excluded
    layers read no DequantizeLinear; TensorRT form: every zero point is INT8 0."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    prod = _producers(model)
    problems: list[str] = []

    def const(name):
        return numpy_helper.to_array(inits[name]) if name in inits else None

    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        if len(node.input) < 2 or not any(node.input[1] in s for s in (inits, prod)):
            continue
        dq_x, dq_w = prod.get(node.input[0]), prod.get(node.input[1])
        if node.name in excluded:
            if (dq_w is not None and dq_w.op_type == "DequantizeLinear"):
                problems.append(f"{node.name}: excluded layer still has INT8 weights")
            x_scale = const(dq_x.input[1]) if dq_x is not None and dq_x.op_type == "DequantizeLinear" else None
            if x_scale is not None and x_scale.size == 1:
                # ONNX Runtime would quantize its weights itself (WeightBiasQuantization) and fuse it.
                problems.append(f"{node.name}: excluded layer reads a per-tensor DequantizeLinear activation")
            continue
        if dq_x is None or dq_x.op_type != "DequantizeLinear":
            problems.append(f"{node.name}: activation input is not DequantizeLinear")
        if dq_w is None or dq_w.op_type != "DequantizeLinear":
            problems.append(f"{node.name}: weight input is not DequantizeLinear")
            continue
        w_q = inits.get(dq_w.input[0])
        if w_q is None or w_q.data_type != TensorProto.INT8:
            problems.append(f"{node.name}: weights are not an INT8 initializer")
            continue
        scale, zp = const(dq_w.input[1]), const(dq_w.input[2]) if len(dq_w.input) > 2 else np.zeros(1, np.int8)
        axis = next((a.i for a in dq_w.attribute if a.name == "axis"), 1)
        if node.op_type == "Conv":
            want_axis = 0
        elif node.op_type == "ConvTranspose":
            want_axis = 1
        elif node.op_type == "Gemm":
            want_axis = 0 if next((a.i for a in node.attribute if a.name == "transB"), 0) else 1
        else:
            want_axis = 1
        n_out = w_q.dims[want_axis]
        if scale is None or scale.ndim != 1 or scale.size != n_out or axis != want_axis:
            problems.append(f"{node.name}: weight scales are not per-channel on axis {want_axis} "
                            f"({n_out} channels), got shape {None if scale is None else scale.shape} axis {axis}")
        elif not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            problems.append(f"{node.name}: weight scales must be positive and finite")
        if zp is None or np.any(zp != 0):
            problems.append(f"{node.name}: weight zero points are not all 0 (asymmetric weights)")
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale = const(node.input[1])
        if scale is None or not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            problems.append(f"{node.name}: scale must be a positive finite constant")
        if form == "tensorrt":
            zp = inits.get(node.input[2]) if len(node.input) > 2 else None
            if zp is None:
                continue  # ONNX default zero point: uint8 0 for QuantizeLinear - TensorRT wants an INT8 type
            if zp.data_type not in (TensorProto.INT8, TensorProto.INT32) or np.any(numpy_helper.to_array(zp) != 0):
                problems.append(f"{node.name}: TensorRT needs INT8 zero point 0, got "
                                f"{TensorProto.DataType.Name(zp.data_type)} {numpy_helper.to_array(zp).ravel()[:4]}")
    return problems


def quantized_layers(model: onnx.ModelProto) -> list[str]:
    """Weighted layers whose weights are INT8 (read through DequantizeLinear)."""
    prod = _producers(model)
    return [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS and len(n.input) > 1
            and prod.get(n.input[1]) is not None and prod[n.input[1]].op_type == "DequantizeLinear"]
