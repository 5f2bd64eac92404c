"""Which layers are FASTER in INT8 on this CPU, measured (ONNX Runtime CPU form only).

Measured on the zoo's cnn_student (AVX-512 VNNI + AMX machine, ORT 1.32, 1 thread): INT8 QLinearConv
wins by 3-8x once the reduction depth K = C_in/groups * kh * kw reaches ~128, but the 1-channel stem
(K = 9) ran 10x SLOWER than its FP32 NCHWc convolution, an 8-channel 3x3 conv (K = 72) 1.3x slower,
and a 64->2 classifier QGemm 58 us vs 4 us for Gemm. QLinearGlobalAveragePool ran 13x slower than the
FP32 GlobalAveragePool, so pooling is never quantized in the CPU form. Rather than hard-code those
thresholds, each weighted layer is timed alone here, FP32 vs INT8 Q/DQ, at its real input shape, and a
layer that is clearly slower in INT8 stays FP32 in the CPU form. The TensorRT form is not affected
(TensorRT picks kernels per layer itself).
"""
from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

import numpy as np

from tools.quantize.graph import WEIGHTED_OPS
from tools.quantize.runner import quiet_ort_logging

if TYPE_CHECKING:
    import onnx

CPU_FORM_SKIP_OPS = ("GlobalAveragePool",)  # measured 13x slower quantized (see module docstring)
SLOWER_FACTOR = 1.2  # keep a layer FP32 only when INT8 is clearly slower (shared machines are noisy)


def _single_layer_model(model, node, shapes) -> onnx.ModelProto | None:
    from onnx import TensorProto, helper

    inits = {i.name: i for i in model.graph.initializer}
    shape = shapes.get(node.input[0])
    if shape is None or any(d is None or d <= 0 for d in shape[1:]):
        return None
    shape = [1, *shape[1:]]
    used = [inits[i] for i in node.input[1:] if i in inits]
    if len(used) != len([i for i in node.input[1:] if i]):
        return None  # a non-constant weight: not a layer this probe can isolate
    out = node.output[0]
    g = helper.make_graph([node], "probe", [helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], used)
    return helper.make_model(g, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def _time(sess, x, n: int) -> list[float]:
    feed = {sess.get_inputs()[0].name: x}
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        sess.run(None, feed)
        out.append(time.perf_counter() - t0)
    return out


def slow_int8_layers(prepped: onnx.ModelProto, workdir, *, repeats: int = 7, per_round: int = 15
                     ) -> dict[str, dict[str, float]]:
    """{layer: {"fp32_us", "int8_us"}} for weighted layers that are SLOWER_FACTOR x slower in INT8 alone."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from tools.quantize import runner

    inferred = onnx.shape_inference.infer_shapes(prepped)
    shapes = {vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
              for vi in list(inferred.graph.value_info) + list(inferred.graph.input)}
    rng = np.random.default_rng(0)
    slow: dict[str, dict[str, float]] = {}
    for node in prepped.graph.node:
        if node.op_type not in WEIGHTED_OPS:
            continue
        single = _single_layer_model(prepped, node, shapes)
        if single is None:
            continue
        shape = [1, *shapes[node.input[0]][1:]]
        x = rng.standard_normal(shape).astype(np.float32)

        class _Reader:
            def __init__(self, name: str, shape: list[int]):
                self._it = iter([{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(4)])

            def get_next(self):
                return next(self._it, None)

        fp32_path, q_path = workdir / "speed_fp32.onnx", workdir / "speed_int8.onnx"
        onnx.save(single, str(fp32_path))
        with quiet_ort_logging():
            quantize_static(str(fp32_path), str(q_path), _Reader(node.input[0], shape), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=False, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            extra_options={"WeightSymmetric": True})
        s32 = runner.session(str(fp32_path), threads=1)
        s8 = runner.session(str(q_path), threads=1)
        _time(s32, x, 5), _time(s8, x, 5)  # warm-up
        t32: list[float] = []
        t8: list[float] = []
        for _ in range(repeats):  # interleaved so machine load hits both alike
            t32 += _time(s32, x, per_round)
            t8 += _time(s8, x, per_round)
        m32, m8 = statistics.median(t32) * 1e6, statistics.median(t8) * 1e6
        if m8 > SLOWER_FACTOR * m32:
            slow[node.name] = {"fp32_us": m32, "int8_us": m8}
    return slow
