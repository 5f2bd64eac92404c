"""Build time: give a classifier's ONNX graph two extra outputs, so the trust signals ride along the
one inference call the engine makes anyway.

  slicert_features  [N, C]        the tensor the final Gemm multiplies: the pooled last feature maps
                                  (for Mahalanobis OOD scoring);
  slicert_cam       [N, K, h, w]  class-activation maps (Zhou et al., CVPR 2016): the last feature maps
                                  (the GlobalAveragePool input) convolved with the Gemm weights as 1x1
                                  kernels. mean over (h, w) of slicert_cam + Gemm bias = the logits.

Recognized tail: [features F] -> GlobalAveragePool -> (Flatten | Reshape | Squeeze | Q/DQ | Cast)* ->
Gemm(transA=0, alpha=1) -> (Cast | Q/DQ)* -> the model output. FP16 graphs get Casts to float; in Q/DQ
graphs a DequantizeLinear feeding a new branch is duplicated, so every original DQ keeps its single
consumer and ONNX Runtime fuses the original graph exactly as before. `verify_unchanged` proves on seeded
inputs that the original output did not move. Anything else: `add_trust_outputs` returns None (the
bundle then has no saliency / Mahalanobis, and says so).
"""
from __future__ import annotations

from typing import Any

import numpy as np

FEATURES = "slicert_features"
CAM = "slicert_cam"
_PASS_OUT = ("Cast", "QuantizeLinear", "DequantizeLinear", "Identity")
_PASS_IN = ("Flatten", "Reshape", "Squeeze", "Cast", "QuantizeLinear", "DequantizeLinear", "Identity")


def _attr(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            from onnx import helper

            return helper.get_attribute_value(a)
    return default


def find_classifier_tail(model) -> dict[str, Any] | None:
    """{"gemm", "pool", "features_in", "weight", "trans_b"} of the recognized tail, or None."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    name = g.output[0].name
    node = producer.get(name)
    while node is not None and node.op_type in _PASS_OUT:
        node = producer.get(node.input[0])
    if node is None or node.op_type != "Gemm":
        return None
    gemm = node
    if _attr(gemm, "transA", 0) != 0 or abs(float(_attr(gemm, "alpha", 1.0)) - 1.0) > 1e-12:
        return None
    node = producer.get(gemm.input[0])
    while node is not None and node.op_type in _PASS_IN:
        node = producer.get(node.input[0])
    if node is None or node.op_type != "GlobalAveragePool":
        return None
    return {"gemm": gemm, "pool": node, "features_in": node.input[0], "weight": gemm.input[1],
            "trans_b": int(_attr(gemm, "transB", 0))}


def _float_branch(g, producer, tensor: str, tag: str, new_nodes: list) -> str:
    """A float32 copy of `tensor` for a new consumer: its DequantizeLinear duplicated (so the original keeps
    one consumer), then a Cast to float (a no-op copy when it already is)."""
    from onnx import TensorProto, helper

    src = producer.get(tensor)
    if src is not None and src.op_type == "DequantizeLinear":
        dup = f"{tensor}__slicert_{tag}_dq"
        node = helper.make_node("DequantizeLinear", list(src.input), [dup], name=f"slicert_{tag}_dq")
        node.attribute.extend(src.attribute)
        new_nodes.append(node)
        tensor = dup
    out = f"{tensor}__slicert_{tag}_f32"
    new_nodes.append(helper.make_node("Cast", [tensor], [out], to=TensorProto.FLOAT, name=f"slicert_{tag}_cast"))
    return out


def add_trust_outputs(onnx_bytes: bytes) -> bytes | None:
    """The model with FEATURES and CAM outputs added, or None when its tail is not recognized."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(onnx_bytes)
    tail = find_classifier_tail(model)
    if tail is None:
        return None
    g = model.graph
    if any(o.name in (FEATURES, CAM) for o in g.output):
        return None
    producer = {o: n for n in g.node for o in n.output}
    new: list = []
    feats = _float_branch(g, producer, tail["gemm"].input[0], "feat", new)
    new.append(helper.make_node("Identity", [feats], [FEATURES], name="slicert_features"))
    fmap = _float_branch(g, producer, tail["features_in"], "fmap", new)
    w = _float_branch(g, producer, tail["weight"], "w", new)
    if not tail["trans_b"]:  # Gemm weight stored (C, K): the 1x1 kernels need (K, C)
        new.append(helper.make_node("Transpose", [w], [w + "_t"], perm=[1, 0], name="slicert_w_t"))
        w = w + "_t"
    axes = "slicert_cam_axes"
    g.initializer.append(onnx.numpy_helper.from_array(np.array([2, 3], np.int64), axes))
    new.append(helper.make_node("Unsqueeze", [w, axes], [w + "_k"], name="slicert_w_kernels"))
    new.append(helper.make_node("Conv", [fmap, w + "_k"], [CAM], name="slicert_cam"))
    g.node.extend(new)
    g.output.append(helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, None))
    g.output.append(helper.make_tensor_value_info(CAM, TensorProto.FLOAT, None))
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        shapes = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
        for out in g.output:
            if out.name in (FEATURES, CAM) and out.name in shapes:
                out.type.CopyFrom(shapes[out.name].type)
    except Exception:  # shapes stay symbolic; the runtime discovers them with one probe run
        pass
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _has_fp16(onnx_bytes: bytes) -> bool:
    import onnx

    m = onnx.load_from_string(onnx_bytes)
    return any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)


def verify_unchanged(original: bytes, extended: bytes, *, batch: int = 2, seed: int = 0) -> float:
    """Max |difference| of the original output between the two models on seeded random inputs (ONNX
    Runtime CPU); ValueError when it exceeds atol + rtol * |ref|: 1e-5 + 1e-4 |ref| for FP32 and Q/DQ
    graphs, 1e-3 + 2e-3 |ref| (two FP16 steps) for FP16 graphs, where ONNX Runtime's CPU provider inserts
    FP16<->FP32 casts around its FP32 kernels and a new consumer can change where it rounds."""
    import onnxruntime as ort

    from engine.backends.onnxruntime import _ORT_TYPES, session_options

    a = ort.InferenceSession(original, session_options(1, optimized_model=False),
                             providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(extended, session_options(1, optimized_model=False),
                             providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    inp = a.get_inputs()[0]
    x = rng.standard_normal([batch, *inp.shape[1:]]).astype(_ORT_TYPES[inp.type])
    name = a.get_outputs()[0].name
    ref = a.run([name], {inp.name: x})[0].astype(np.float64)
    got = b.run([name], {inp.name: x})[0].astype(np.float64)
    err = np.abs(got - ref)
    atol, rtol = (1e-3, 2e-3) if _has_fp16(original) else (1e-5, 1e-4)
    if (err > atol + rtol * np.abs(ref)).any():
        raise ValueError(f"adding the trust outputs changed output {name!r} by up to {float(err.max()):.3g}")
    return float(err.max())


__all__ = ["FEATURES", "CAM", "add_trust_outputs", "find_classifier_tail", "verify_unchanged"]
