"""Run ONNX models with ONNX Runtime CPU for calibration, evaluation and sensitivity analysis."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort

EVAL_BATCH = 32


def session(model: onnx.ModelProto | bytes | str, *, threads: int = 1,
            level: str = "all") -> ort.InferenceSession:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # warnings from hardware-specific layout passes are expected, not actionable
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    if not isinstance(model, (str, bytes)):
        model = model.SerializeToString()
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def run_batched(sess: ort.InferenceSession, x: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """First output of `sess` over x in batches, as float32."""
    outs = [sess.run(None, {"input": x[i:i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs).astype(np.float32, copy=False)


def with_all_outputs(model: onnx.ModelProto, elem_types: tuple[int, ...]) -> tuple[onnx.ModelProto, list[str]]:
    """Copy of `model` that also returns every intermediate tensor of the given element types.

    Types come from ONNX shape inference; tensors it cannot type are skipped."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(inferred.graph.value_info)
             + list(inferred.graph.output) + list(inferred.graph.input)}
    existing = {o.name for o in model.graph.output}
    names: list[str] = []
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in model.graph.node:
        for t in node.output:
            if t and t not in existing and types.get(t) in elem_types:
                out.graph.output.append(onnx.helper.make_tensor_value_info(t, types[t], None))
                names.append(t)
    return out, names


class quiet_ort_logging:
    """onnxruntime.quantization logs advice through the root logger at WARNING on every call; silence it
    for the duration (restoring the caller's level after)."""

    def __enter__(self):
        import logging

        self._root = logging.getLogger()
        self._level = self._root.level
        self._root.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        self._root.setLevel(self._level)
        return False
