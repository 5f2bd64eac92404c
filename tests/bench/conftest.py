from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_classifier_onnx(tmp_path_factory):
    """A real (tiny) classifier: input [N,1,16,16] float32 -> Conv3x3(4) -> ReLU -> GAP -> Gemm(3) -> "scores".

    Returned with its weights so tests can check ONNX Runtime's output against NumPy.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    w = rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.1, (4,)).astype(np.float32)
    fc = rng.normal(0, 0.5, (3, 4)).astype(np.float32)
    fcb = rng.normal(0, 0.1, (3,)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["scores"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 16, 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (b, "b"), (fc, "fc"), (fcb, "fcb"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    onnx.save(model, str(path))
    return {"path": path, "w": w, "b": b, "fc": fc, "fcb": fcb}


def numpy_tiny_classifier(x: np.ndarray, m: dict) -> np.ndarray:
    """Reference forward pass of `tiny_classifier_onnx` for x [N,1,16,16]."""
    n, _, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, 4, h, wd), np.float64)
    for o in range(4):
        for dy in range(3):
            for dx in range(3):
                out[:, o] += m["w"][o, 0, dy, dx] * xp[:, 0, dy:dy + h, dx:dx + wd]
        out[:, o] += m["b"][o]
    g = np.maximum(out, 0).mean(axis=(2, 3))
    return g @ m["fc"].T.astype(np.float64) + m["fcb"]
