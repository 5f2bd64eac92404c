"""ONNX model checks and small graph helpers shared by the FP16 and INT8 paths.

The quantizer accepts exactly what the toolchain exports (contract 5): an FP32 opset >= 13 model with
one float32 NCHW input named "input" and a dynamic batch axis. Anything else is refused here, before
any work, with an InputError that names the problem.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import InputError

if TYPE_CHECKING:
    import onnx

# Ops the FP16 converter and the Q/DQ inserter know how to treat (the CNN students' vocabulary).
# Anything outside this set may have integer/float16 semantics we have not measured: refuse it rather
# than produce a model that is silently wrong.
SUPPORTED_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "InstanceNormalization",
    "Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "Softmax", "HardSigmoid", "HardSwish", "Elu", "Erf", "Gelu",
    "Add", "Sub", "Mul", "Div", "Sqrt", "Pow", "Neg", "Abs", "Exp", "Log",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "ReduceSum",
    "Concat", "Split", "Slice", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Resize", "Upsample",
    "Pad", "Identity", "Dropout", "Cast", "Constant", "Shape", "Gather", "Expand", "ConstantOfShape",
    "Equal", "Where",
})
# Weighted ops: the "layers" that get INT8 weights and that mixed precision may leave in FP32.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Present in a model that is already quantized (explicitly, or with ORT's integer operators).
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd", "QLinearMul", "QLinearConcat",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearLeakyRelu", "QLinearSigmoid", "DequantizeBFP",
})
MIN_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear needs opset 13


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_fp32_model(path: str | Path) -> onnx.ModelProto:
    """Load and validate an FP32 export; raise InputError naming what is wrong."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: ONNX model not found")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, OSError...
        raise InputError(f"{path}: not a valid ONNX model ({type(exc).__name__}: {exc})") from exc
    check_fp32_model(model, str(path))
    return model


def check_fp32_model(model: onnx.ModelProto, where: str = "model") -> None:
    import onnx
    from onnx import TensorProto

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise InputError(f"{where}: opset {opset} < {MIN_OPSET}; re-export with opset 17 (per-axis Q/DQ needs 13+)")
    ops = {n.op_type for n in iter_nodes(model.graph)}
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in iter_nodes(model.graph) if n.domain not in ("", "ai.onnx")})
    already = sorted(ops & QUANTIZED_OPS)
    low_precision = sorted({i.name for i in model.graph.initializer
                            if i.data_type in (TensorProto.INT8, TensorProto.UINT8, TensorProto.FLOAT16,
                                               TensorProto.BFLOAT16, TensorProto.FLOAT8E4M3FN)})
    if already or low_precision:
        detail = f"quantized ops {already}" if already else f"low-precision initializers {low_precision[:5]}"
        raise InputError(f"{where}: already quantized or reduced precision ({detail}); "
                         f"quantize the FP32 export instead")
    unsupported = sorted(ops - SUPPORTED_OPS) + foreign
    if unsupported:
        raise InputError(f"{where}: unsupported op(s) for quantization: {unsupported}; "
                         f"supported: {sorted(SUPPORTED_OPS)}")
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1 or inputs[0].name != "input":
        raise InputError(f"{where}: expected exactly one graph input named 'input', got {[i.name for i in inputs]}")
    t = inputs[0].type.tensor_type
    if t.elem_type != TensorProto.FLOAT:
        raise InputError(f"{where}: input must be float32, got {onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)}")
    if len(t.shape.dim) != 4:
        raise InputError(f"{where}: input must be 4-D [N,C,H,W], got rank {len(t.shape.dim)}")
    if not any(n.op_type in WEIGHTED_OPS for n in model.graph.node):
        raise InputError(f"{where}: no Conv/ConvTranspose/Gemm/MatMul layer to quantize")


def iter_nodes(graph):
    """All nodes, including those in If/Loop subgraphs (which the checks must also see)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from iter_nodes(attr.g)
            for g in attr.graphs:
                yield from iter_nodes(g)


def input_shape(model: onnx.ModelProto) -> tuple:
    """(C, H, W) of the 'input' tensor; batch stays dynamic."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims[1:])


def weighted_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the weighted nodes (with a constant weight) in graph order: the units of mixed precision."""
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in inits]


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Give every node a unique name: exclusion lists and reports refer to nodes by name."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)
