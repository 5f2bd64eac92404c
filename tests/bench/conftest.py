from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_classifier_onnx(tmp_path_factory):
    """A real tiny classifier: input [N,1,16,16] float32 -> Conv3x3(4) -> ReLU -> GAP -> Gemm(3) -> scores.

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
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 16, 16])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (b, "b"), (fc, "fc"), (fcb, "fcb"))],
    )
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
                out[:, o] += m["w"][o, 0, dy, dx] * xp[:, 0, dy : dy + h, dx : dx + wd]
        out[:, o] += m["b"][o]
    g = np.maximum(out, 0).mean(axis=(2, 3))
    return g @ m["fc"].T.astype(np.float64) + m["fcb"]


TINY_SIDE = 16


@pytest.fixture(scope="session")
def tiny_bundle(tiny_classifier_onnx, tmp_path_factory):
    """A real .slicert bundle (CPU target, fp32) of the tiny classifier, built by build_bundle."""
    import json
    import shutil

    from engine.bundle import build_bundle
    from engine.spec import PreprocessSpec

    folder = tmp_path_factory.mktemp("export")
    shutil.copy(tiny_classifier_onnx["path"], folder / "model.onnx")
    spec = PreprocessSpec(
        out_height=TINY_SIDE,
        out_width=TINY_SIDE,
        voi_function="linear",
        window_center=2048.0,
        window_width=4096.0,
        resize="area",
        normalize="fixed",
        mean=(0.5,),
        std=(0.25,),
    )
    meta = {
        "name": "tiny-bench-classifier",
        "task": "classification",
        "labels": ["a", "b", "c"],
        "preprocess": spec.to_dict(),
        "voi_policy": "model",
        "dataset": {"name": "synthetic test fixture", "real_data": False},
        "metrics": {},
        "onnx_max_abs_err": 0.0,
        "source_sha256": "0" * 64,
    }
    (folder / "model.json").write_text(json.dumps(meta))
    out = tmp_path_factory.mktemp("bundle") / "tiny.slicert"
    build_bundle(folder, out, target="cpu", precision="fp32")
    return out
