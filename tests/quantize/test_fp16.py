"""FP16: float32 I/O with casts at the boundary, float16 inside, overflow detection by tensor name."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tools.quantize import fp16, runner


def _overflow_model(rng) -> onnx.ModelProto:
    """input -> Conv (gain ~7500 per tap, 9 taps) -> Relu -> Conv (x 1e-4) -> mean: the middle tensors
    exceed float16 range (~84000 for inputs ~1.25) while the weights and the FP32 output are O(1e4) / O(1)."""
    w1 = rng.uniform(5000, 10000, size=(4, 1, 3, 3)).astype(np.float32)
    w2 = (rng.standard_normal((2, 4, 1, 1)) * 1e-4).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w1"], ["big"], pads=[1, 1, 1, 1], name="conv_big"),
             helper.make_node("Relu", ["big"], ["big_relu"], name="relu_big"),
             helper.make_node("Conv", ["big_relu", "w2"], ["scores_map"], name="conv_small"),
             helper.make_node("ReduceMean", ["scores_map"], ["scores"], axes=[2, 3], keepdims=0, name="pool")]
    g = helper.make_graph(nodes, "overflow", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_overflow_is_detected_named_and_avoided(rng):
    model = _overflow_model(rng)
    x = rng.uniform(0.5, 2.0, size=(64, 1, 8, 8)).astype(np.float32)
    # Naive conversion really overflows: with float16 storage between layers the output is Inf/NaN.
    naive, _, _ = fp16.convert(model)
    assert not np.all(np.isfinite(fp16.run_emulated(naive, x)))
    # Ranges as calibration measures them (max |activation| per tensor on the calibration set).
    probe, _ = runner.with_all_outputs(model, (TensorProto.FLOAT,))
    outs = runner.session(probe, level="disable").run(None, {"input": x})
    ranges = {n.name: (float(v.min()), float(v.max())) for n, v in zip(runner.session(probe).get_outputs(), outs)}
    assert max(abs(v) for v in ranges["big"]) > fp16.FP16_MAX
    res = fp16.build_fp16(model, x, ranges)
    flagged = {o["tensor"] for o in res.overflow}
    assert {"big", "big_relu"} <= flagged
    assert "scores" not in flagged and "scores_map" not in flagged
    assert {"conv_big", "relu_big", "conv_small"} <= set(res.kept_fp32)
    assert "pool" not in res.kept_fp32  # its input is O(1): float16 is fine there
    assert "65504" in res.kept_fp32["conv_big"]
    ref = runner.run_batched(runner.session(model), x)
    for out in (fp16.run_emulated(res.model, x), runner.run_batched(runner.session(res.model), x)):
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(out, ref, rtol=2e-2, atol=1e-3 * np.abs(ref).max())


def test_inf_in_float16_run_is_caught_even_without_ranges(rng):
    """The second line of defence: the float16 model itself is scanned for Inf/NaN tensors."""
    model = _overflow_model(rng)
    x = rng.uniform(0.5, 2.0, size=(32, 1, 8, 8)).astype(np.float32)
    res = fp16.build_fp16(model, x, ranges={})
    assert any(o["tensor"] == "big" and o["found_by"] == "Inf/NaN in float16 run" for o in res.overflow)
    assert "conv_big" in res.kept_fp32
    assert np.all(np.isfinite(fp16.run_emulated(res.model, x)))


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_fp16_model_layout(quantized, exports, task):
    m = onnx.load(str(quantized[task]["dir"] / "model.fp16.onnx"))
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in m.graph.output)
    casts = [n for n in m.graph.node if n.op_type == "Cast"]
    assert casts[0].input[0] == "input" and casts[-1].output[0] == m.graph.output[0].name
    weights = [i for i in m.graph.initializer if len(i.dims) == 4]
    assert weights and all(i.data_type == TensorProto.FLOAT16 for i in weights)
    rep = quantized[task]["report"]
    assert rep["fp16"]["overflow"] == [] and rep["fp16"]["kept_fp32"] == {}
    assert rep["variants"]["fp16"]["passed"] is True
    assert abs(rep["variants"]["fp16"]["gate"]["loss"]) < 0.005
