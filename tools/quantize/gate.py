"""The accuracy gate: a reduced-precision variant may lose at most `budget` of its task's clinical metric
against the FP32 student on the held-out test split (ΔAUC for classification, Δ mean Dice for
segmentation; defaults 0.01 each)."""
from __future__ import annotations

import math
from typing import Any

from engine.errors import AccuracyGateError, InputError

DEFAULT_BUDGET_AUC = 0.01
DEFAULT_BUDGET_DICE = 0.01


def gate_metric(task: str) -> str:
    return "auc" if task == "classification" else "dice_mean"


def budget_for(task: str, budget_auc: float, budget_dice: float) -> float:
    b = budget_auc if task == "classification" else budget_dice
    if not (isinstance(b, (int, float)) and math.isfinite(b) and 0 <= b < 1):
        raise InputError(f"accuracy budget must be a number in [0, 1), got {b!r}")
    return float(b)


def check(variant: str, result: dict[str, Any], fp32: dict[str, Any], metric: str, budget: float) -> dict[str, Any]:
    """Gate record for one variant: loss = FP32 - variant (positive = worse)."""
    ref = fp32["metrics"][metric]["value"]
    val = result["metrics"][metric]["value"]
    loss = ref - val
    passed = math.isfinite(loss) and loss <= budget + 1e-12
    return {"variant": variant, "metric": metric, "fp32": ref, "value": val, "loss": loss, "budget": budget,
            "passed": bool(passed)}


def raise_if_failed(failures: list[dict[str, Any]], worst_layers: list[dict[str, Any]], report_path: str) -> None:
    if not failures:
        return
    parts = [f"{f['variant']}: Δ{f['metric']} = {f['loss']:.4f} > budget {f['budget']:.4f} "
             f"(FP32 {f['fp32']:.4f}, {f['variant']} {f['value']:.4f}, test split)" for f in failures]
    worst = ", ".join(f"{w['layer']} ({w['op_type']}, nmse {w['nmse']:.3g})" for w in worst_layers[:3]) or "n/a"
    err = AccuracyGateError("accuracy gate failed: " + "; ".join(parts) + f"; most sensitive layers: {worst}; "
                            f"report: {report_path}; pass --accept-loss to ship anyway (recorded in the report)")
    err.failures = failures  # type: ignore[attr-defined]
    err.worst_layers = worst_layers[:3]  # type: ignore[attr-defined]
    raise err
