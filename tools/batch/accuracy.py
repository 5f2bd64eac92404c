"""Accuracy of a batch on a labelled archive (the bring-your-own-data labels file), with 95% CIs."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple


class _LabelKey(NamedTuple):
    """What tools.dataset.labels.read_labels looks rows up by: the file name and the SOP Instance UID."""

    rel: str
    sop_instance_uid: str | None


def wilson_ci(k: int, n: int, z: float = 1.959964) -> list[float]:
    """Wilson score 95% interval of a proportion k/n (well-behaved at 0 and n, unlike the normal one)."""
    if n == 0:
        return [math.nan, math.nan]
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [max(0.0, mid - half), min(1.0, mid + half)]


def score_labels(table: dict[str, list], labels_csv: str | Path) -> dict[str, Any]:
    """Top-1 accuracy (Wilson 95% CI) and per-class sensitivity of a classification batch table
    (`table`: column -> values) against `labels_csv` (`file,label` relative to the batch's root, or
    `SOPInstanceUID,label`). Labelled files the engine refused are counted, not scored."""
    from engine.errors import InputError
    from tools.dataset.labels import read_labels

    if table["task"] and table["task"][0] != "classification":
        raise InputError("batch --labels scores classification bundles only (segmentation needs masks)")
    ok = [i for i, s in enumerate(table["status"]) if s == "ok"]
    keys = [_LabelKey(table["file"][i], table["sop_instance_uid"][i]) for i in ok]
    refused = {f for f, s in zip(table["file"], table["status"]) if s != "ok"}
    truth, classes = read_labels(labels_csv, keys, refused, None)
    pred = {table["file"][i]: table["label"][i] for i in ok}
    n = len(truth)
    correct = sum(pred[f] == y for f, y in truth.items())
    per_class = {}
    for c in classes:
        files = [f for f, y in truth.items() if y == c]
        k = sum(pred[f] == c for f in files)
        per_class[c] = {"n": len(files), "sensitivity": k / len(files) if files else math.nan,
                        "sensitivity_ci95": wilson_ci(k, len(files))}
    return {"n": n, "accuracy": correct / n if n else math.nan, "accuracy_ci95": wilson_ci(correct, n),
            "per_class": per_class, "labelled_but_refused": len(refused & _labelled_names(labels_csv)),
            "labels": str(labels_csv), "note": "accuracy on this archive only; no clinical claim"}


def _labelled_names(labels_csv: str | Path) -> set[str]:
    """File names a `file,label` CSV labels (empty for a SOPInstanceUID CSV)."""
    import csv

    with open(labels_csv, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows:
        return set()
    keys = [h.strip().lower() for h in rows[0]]
    col = next((i for i, k in enumerate(keys) if k in ("file", "path", "filename")), None)
    return set() if col is None else {Path(r[col].strip()).as_posix() for r in rows[1:] if len(r) > col}
