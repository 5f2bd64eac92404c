"""Precision toolchain: FP16 and explicit Q/DQ INT8 (TensorRT and ONNX Runtime CPU forms) with calibration,
per-layer sensitivity, mixed precision and an accuracy gate on the held-out test split.

    from tools.quantize import quantize_export
    report = quantize_export("out/cxr_nodule", "out/cxr_nodule-q", method="entropy")

CLI: `slicert quantize EXPORT_DIR --out DIR`. onnx/onnxruntime are imported only when work starts.
"""
from __future__ import annotations

from typing import Any


def quantize_export(export_dir, out_dir, **kwargs: Any) -> dict[str, Any]:
    """See tools.quantize.pipeline.quantize_export."""
    from tools.quantize.pipeline import quantize_export as _run

    return _run(export_dir, out_dir, **kwargs)


__all__ = ["quantize_export"]
