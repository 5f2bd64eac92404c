"""FP16 models for TensorRT's strongly typed networks (precision lives in the ONNX graph).

The graph computes in float16 with float32 I/O kept (Cast at the boundary), and nodes that must stay
float32 for range reasons are chosen by measurement, not by a fixed list:
1. overflow: any tensor whose float32 magnitude on the calibration set exceeds 65504 (the largest
   float16) keeps its producer and consumers in float32;
2. the converted model is run on calibration slices with every intermediate tensor exposed; a tensor
   that reaches Inf/NaN in float16 is reported by name and its producer kept float32 (repeat);
3. range-sensitive ops (reductions, softmax, exp/log/pow, normalization) are kept float32 only if doing
   so measurably reduces the output error against the float32 model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from tools.quantize import runner

if TYPE_CHECKING:
    import onnx

FP16_MAX = 65504.0
FP16_TINY = 2.0 ** -24  # smallest float16 subnormal; smaller non-zero weights flush to 0
# Inputs that ONNX requires to stay float32 whatever the data type (Resize scales).
FLOAT32_INPUTS = {"Resize": {2}, "Upsample": {1}}
# Inputs whose type does not matter to the op (no Cast needed).
TYPE_AGNOSTIC = {"Shape", "Size"}
RANGE_SENSITIVE_OPS = {"ReduceMean", "ReduceSum", "Softmax", "Exp", "Log", "Pow", "Sqrt", "Div",
                       "InstanceNormalization", "BatchNormalization", "GlobalAveragePool"}
MATERIAL_REL_ERR = 2e-3  # ~2 float16 ulps relative to the output range: below this float16 is as good as it gets
PROBE_SLICES = 64  # calibration slices used for the float16 Inf/NaN scan and error measurement
MAX_ROUNDS = 32  # each round keeps the first overflowing nodes in float32 and re-measures


@dataclass
class FP16Result:
    model: Any
    kept_fp32: dict[str, str] = field(default_factory=dict)  # node name -> reason
    overflow: list[dict[str, Any]] = field(default_factory=list)  # tensors that overflow float16
    weights_clipped: int = 0  # weight values beyond +-65504 clipped
    weights_flushed: int = 0  # non-zero weights below the float16 subnormal range flushed to 0
    output_rel_err: float = 0.0  # max |fp16 - fp32| / max |fp32| on the probe slices


def _float_types(model) -> dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(inferred.graph.value_info)
             + list(inferred.graph.input) + list(inferred.graph.output)}
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    return types


def _to_fp16(arr: np.ndarray) -> tuple[np.ndarray, int, int]:
    clipped = int(np.sum(np.abs(arr) > FP16_MAX))
    flushed = int(np.sum((arr != 0) & (np.abs(arr) < FP16_TINY)))
    return np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16), clipped, flushed


def convert(model: onnx.ModelProto, keep_fp32: set[str] | frozenset[str] = frozenset()
            ) -> tuple[onnx.ModelProto, int, int]:
    """float32 -> float16 graph with float32 inputs/outputs; nodes named in keep_fp32 stay float32.

    Returns (model, weights clipped, weights flushed to zero)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
    types = _float_types(model)
    src = model.graph
    inits = {i.name: i for i in src.initializer}
    g_inputs = {i.name for i in src.input}
    node_prec = {n.name: (F32 if n.name in keep_fp32 else F16) for n in src.node}
    prod_prec: dict[str, int] = {}
    for n in src.node:
        for o in n.output:
            if types.get(o) == F32:
                prod_prec[o] = node_prec[n.name]
    for name in g_inputs:
        if types.get(name) == F32:
            prod_prec[name] = F32

    new_nodes: list = []
    new_inits: dict[str, Any] = {}
    casts: dict[tuple[str, int], str] = {}
    clipped = flushed = 0

    def tensor_as(name: str, want: int) -> str:
        nonlocal clipped, flushed
        if name in inits:
            init = inits[name]
            if init.data_type != F32 or want == F32:
                new_inits.setdefault(name, init)
                return name
            key = name + "__fp16"
            if key not in new_inits:
                arr, c, f = _to_fp16(numpy_helper.to_array(init))
                clipped, flushed = clipped + c, flushed + f
                new_inits[key] = numpy_helper.from_array(arr, key)
            return key
        have = prod_prec.get(name)
        if have is None or have == want:
            return name
        if (name, want) not in casts:
            out = f"{name}__to_{'fp16' if want == F16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [out], to=want, name=out))
            casts[(name, want)] = out
        return casts[(name, want)]

    for n in src.node:
        node = onnx.NodeProto()
        node.CopyFrom(n)
        prec = node_prec[n.name]
        if n.op_type not in TYPE_AGNOSTIC:
            for idx, name in enumerate(n.input):
                if not name or types.get(name) != F32:
                    if name in inits:
                        new_inits.setdefault(name, inits[name])
                    continue
                want = F32 if idx in FLOAT32_INPUTS.get(n.op_type, ()) else prec
                node.input[idx] = tensor_as(name, want)
        else:
            for name in n.input:
                if name in inits:
                    new_inits.setdefault(name, inits[name])
        if prec == F16:
            for attr in node.attribute:
                if n.op_type == "Cast" and attr.name == "to" and attr.i == F32:
                    attr.i = F16
                if n.op_type in ("Constant", "ConstantOfShape") and attr.name == "value" and attr.t.data_type == F32:
                    arr, c, f = _to_fp16(numpy_helper.to_array(attr.t))
                    clipped, flushed = clipped + c, flushed + f
                    attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))
        new_nodes.append(node)

    graph_out = {o.name for o in src.output}
    outputs = []
    for o in src.output:
        if types.get(o.name) == F32 and prod_prec.get(o.name) == F16:
            inner = o.name + "__fp16"
            for node in new_nodes:
                for i, name in enumerate(node.output):
                    if name == o.name:
                        node.output[i] = inner
                for i, name in enumerate(node.input):
                    if name == o.name:
                        node.input[i] = inner
            new_nodes.append(helper.make_node("Cast", [inner], [o.name], to=F32, name=o.name + "__to_fp32_out"))
        outputs.append(o)
    del graph_out

    graph = helper.make_graph(new_nodes, src.name, list(src.input), outputs, list(new_inits.values()))
    out = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="slicert-quantize-fp16",
                            ir_version=model.ir_version)
    out = onnx.shape_inference.infer_shapes(out)
    onnx.checker.check_model(out)
    return out, clipped, flushed


def emulate(model16: onnx.ModelProto) -> onnx.ModelProto:
    """float32 twin of a float16 model whose every float16 tensor is rounded through Cast(float16) and
    back: the same values a float16 engine stores between layers, computed with float32 kernels.

    Why: ONNX Runtime's CPU provider lacks most float16 kernels and wraps whole runs of such nodes into
    one float32 island, so the float16 graph itself never stores (or overflows) its intermediates here.
    Run it with graph optimizations disabled so the rounding pairs stay."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
    types = _float_types(model16)
    nodes = []
    for n in model16.graph.node:
        node = onnx.NodeProto()
        node.CopyFrom(n)
        for attr in node.attribute:
            if n.op_type == "Cast" and attr.name == "to" and attr.i == F16:
                attr.i = F32
            if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == F16:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32), attr.t.name))
        rounded = []
        for i, out in enumerate(node.output):
            if types.get(out) == F16:
                node.output[i] = out + "__f32"
                rounded += [helper.make_node("Cast", [out + "__f32"], [out + "__h"], to=F16, name=out + "__round16"),
                            helper.make_node("Cast", [out + "__h"], [out], to=F32, name=out + "__back32")]
        nodes += [node] + rounded
    inits = [numpy_helper.from_array(numpy_helper.to_array(i).astype(np.float32), i.name) if i.data_type == F16 else i
             for i in model16.graph.initializer]
    g = helper.make_graph(nodes, model16.graph.name + "_fp16_emulated", list(model16.graph.input),
                          list(model16.graph.output), inits)
    return helper.make_model(g, opset_imports=list(model16.opset_import), ir_version=model16.ir_version)


def _overflow_from_ranges(model, ranges: dict[str, tuple[float, float]]) -> tuple[dict[str, str], list]:
    """float32 activations beyond float16 range on the calibration set -> nodes to keep float32."""
    prod = {o: n for n in model.graph.node for o in n.output}
    cons: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    keep: dict[str, str] = {}
    overflow = []
    for name, (lo, hi) in ranges.items():
        peak = max(abs(lo), abs(hi))
        if peak > FP16_MAX:
            overflow.append({"tensor": name, "max_abs_fp32": peak, "found_by": "fp32 calibration range"})
            why = f"tensor {name!r} reaches |x| = {peak:.4g} > 65504 on the calibration set"
            if name in prod:
                keep.setdefault(prod[name].name, why)
            for c in cons.get(name, []):
                keep.setdefault(c.name, why)
    return keep, overflow


def _scan_inf_nan(model16, x: np.ndarray) -> list[str]:
    """Names of float16 tensors that reach Inf/NaN on x."""
    from onnx import TensorProto

    probe, _ = runner.with_all_outputs(emulate(model16), (TensorProto.FLOAT,))
    sess = runner.session(probe, level="disable")  # keep every rounding Cast: no fusion may hide an Inf
    bad: list[str] = []
    for i in range(0, len(x), runner.EVAL_BATCH):
        outs = sess.run(None, {"input": x[i:i + runner.EVAL_BATCH]})
        for name, v in zip(sess.get_outputs(), outs):
            if (name.name not in bad and not name.name.endswith("__f32") and np.issubdtype(v.dtype, np.floating)
                    and not np.all(np.isfinite(v))):
                bad.append(name.name)
    return bad


def run_emulated(model16, x: np.ndarray) -> np.ndarray:
    """Outputs of float16 model `model16` on x with float16 storage between layers (see emulate)."""
    return runner.run_batched(runner.session(emulate(model16), level="disable"), x)


def _first_bad(model16, bad: list[str]) -> list[str]:
    """The bad tensors whose producing node read only finite inputs: where overflow starts."""
    bad_set = set(bad)
    first = []
    for n in model16.graph.node:
        for o in n.output:
            if o in bad_set and not any(i in bad_set for i in n.input):
                first.append(o)
    return first


def _rel_err(model16, x, ref) -> float:
    out = run_emulated(model16, x)
    if not np.all(np.isfinite(out)):
        return float("inf")
    return float(np.max(np.abs(out - ref)) / max(float(np.max(np.abs(ref))), 1e-12))


def build_fp16(model: onnx.ModelProto, calib_x: np.ndarray, ranges: dict[str, tuple[float, float]]) -> FP16Result:
    """Measure, decide which nodes stay float32, and return the float16 model with its report."""
    x = calib_x[:PROBE_SLICES]
    ref = runner.run_batched(runner.session(model), x)
    keep, overflow = _overflow_from_ranges(model, ranges)
    prod = {o: n for n in model.graph.node for o in n.output}
    cons: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    for _ in range(MAX_ROUNDS):
        model16, clipped, flushed = convert(model, set(keep))
        bad = _scan_inf_nan(model16, x)
        new = False
        for t in _first_bad(model16, bad):
            if t.endswith("__to_fp16"):  # a float32 tensor that no longer fits when cast for a float16 consumer
                base = t.removesuffix("__to_fp16")
                nodes = [c for c in cons.get(base, []) if c.name not in keep]
            else:
                base = t.removesuffix("__fp16")
                nodes = [prod[base]] if base in prod and prod[base].name not in keep else []
            overflow.append({"tensor": base, "max_abs_fp32": None, "found_by": "Inf/NaN in float16 run"})
            for node in nodes:
                keep[node.name] = f"tensor {base!r} is Inf/NaN in float16 on the calibration set"
                new = True
        if not new:
            break
    err = _rel_err(model16, x, ref)
    # Range-sensitive ops: keep float32 only where float16 output error is material (above a few float16
    # ulps) and keeping the op measurably helps (>= 25% lower output error).
    for node in model.graph.node:
        if err <= MATERIAL_REL_ERR:
            break
        if node.op_type in RANGE_SENSITIVE_OPS and node.name not in keep:
            trial_keep = set(keep) | {node.name}
            trial, _, _ = convert(model, trial_keep)
            trial_err = _rel_err(trial, x, ref)
            if trial_err < 0.75 * err:
                keep[node.name] = (f"{node.op_type}: float32 lowers output error {err:.3g} -> {trial_err:.3g} "
                                   f"(measured)")
                model16, clipped, flushed, err = trial, *convert(model, trial_keep)[1:], trial_err
    seen = set()
    uniq = []
    for o in overflow:
        if o["tensor"] not in seen:
            seen.add(o["tensor"])
            uniq.append(o)
    return FP16Result(model=model16, kept_fp32=keep, overflow=uniq, weights_clipped=clipped,
                      weights_flushed=flushed, output_rel_err=err)
