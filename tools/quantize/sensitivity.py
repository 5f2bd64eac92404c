"""Per-layer INT8 sensitivity and automatic mixed precision.

Sensitivity: quantize ONE weighted layer at a time (ONNX Runtime CPU form: input, weight and output
quantized, the superset of quantization points of both forms), run the validation split, and measure
how far the output moves from FP32 (normalized MSE of the logits) and how much the gate metric drops.
Mixed precision: leave the most sensitive layers in FP32, one more at a time, until the gate metric
on the VALIDATION split is within budget. The test split is never used to choose layers; it only
judges the result.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tools.quantize import int8, metrics, runner


@dataclass
class LayerSensitivity:
    layer: str
    op_type: str
    nmse: float  # ||y_q - y_fp32||^2 / ||y_fp32||^2 over the validation split
    metric_drop: float  # gate metric (FP32 - one-layer INT8) on the validation split

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "op_type": self.op_type, "nmse": self.nmse, "metric_drop": self.metric_drop}


def nmse(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sum((out.astype(np.float64) - ref) ** 2) / max(float(np.sum(ref.astype(np.float64) ** 2)), 1e-30))


def gate_metric_value(task: str, y: np.ndarray, out: np.ndarray, labels: list[str], threshold: float,
                      metric: str) -> float:
    """Point value of the gate metric only (no bootstrap): fast enough to call per probe."""
    if task == "classification":
        return metrics.classification_point(y, metrics.softmax(out.astype(np.float64)), threshold)[metric]
    counts = metrics.segmentation_counts(y, out.argmax(1), out.shape[1]).sum(0)
    return metrics._seg_from_counts(counts, labels)[metric]


def layer_sensitivity(prepped_path: Path, cache: Path, method: str, layers: list[tuple[str, str]], val_x: np.ndarray,
                      val_y: np.ndarray, ref_out: np.ndarray, *, task: str, labels: list[str], threshold: float,
                      metric: str, workdir: Path, progress: Callable[[str], None] | None = None
                      ) -> list[LayerSensitivity]:
    """One-layer-at-a-time INT8 probes, sorted most sensitive first."""
    base = gate_metric_value(task, val_y, ref_out, labels, threshold, metric)
    out: list[LayerSensitivity] = []
    for i, (name, op_type) in enumerate(layers):
        if progress:
            progress(f"sensitivity {i + 1}/{len(layers)}: {name}")
        probe = int8.quantize(prepped_path, cache, method, workdir / "probe.onnx", form="ort", only=[name])
        y = runner.run_batched(runner.session(probe), val_x)
        out.append(LayerSensitivity(name, op_type, nmse(y, ref_out),
                                    float(base - gate_metric_value(task, val_y, y, labels, threshold, metric))))
    out.sort(key=lambda s: (s.nmse, s.metric_drop), reverse=True)
    return out


def choose_exclusions(prepped_path: Path, cache: Path, method: str, ranking: list[LayerSensitivity],
                      val_x: np.ndarray, val_y: np.ndarray, ref_out: np.ndarray, *, task: str, labels: list[str],
                      threshold: float, metric: str, budget: float, max_excluded: int, workdir: Path,
                      cpu_exclude: list[str] = (), progress: Callable[[str], None] | None = None
                      ) -> tuple[list[str], list[dict[str, Any]]]:
    """Smallest prefix of the ranking whose exclusion keeps BOTH Q/DQ forms within `budget` on the
    validation split. Returns (excluded layers, search trace); excluded is empty if none works within
    max_excluded layers (the trace says what was tried)."""
    base = gate_metric_value(task, val_y, ref_out, labels, threshold, metric)
    trace: list[dict[str, Any]] = []
    for k in range(1, min(max_excluded, len(ranking)) + 1):
        excluded = [s.layer for s in ranking[:k]]
        if progress:
            progress(f"mixed precision: trying {k} FP32 layer(s)")
        drops = {}
        for form in int8.FORMS:
            m = int8.quantize(prepped_path, cache, method, workdir / f"mixed_probe_{form}.onnx", form=form,
                              exclude=excluded, cpu_exclude=cpu_exclude)
            y = runner.run_batched(runner.session(m), val_x)
            drops[form] = float(base - gate_metric_value(task, val_y, y, labels, threshold, metric))
        ok = all(d <= budget for d in drops.values())
        trace.append({"excluded": excluded, "val_drop": drops, "within_budget": ok})
        if ok:
            return excluded, trace
    return [], trace
