"""accuracy_report.json / .md and atomic output writing.

The JSON travels into the bundle (the runtime reads `deliverables` to pick the file per backend and
shows `gate`); the Markdown is the same content for people.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from engine.errors import OutputExists

SCHEMA = "slicert.accuracy_report/1"


def check_outputs(out_dir: Path, names: list[str], force: bool) -> None:
    """Refuse to overwrite any existing output unless force."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExists(f"{out_dir} exists and is not a directory")
    existing = [n for n in names if (out_dir / n).exists()]
    if existing and not force:
        raise OutputExists(f"{out_dir}: {existing} already exist; pass --force (force=True) to overwrite")


def write_atomic(path: Path, data: bytes) -> None:
    """temp file in the same directory + fsync + os.replace: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp creates 0600; outputs are shared artifacts, not secrets
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/Inf -> None (strict JSON), numpy scalars -> Python, drop private '_' keys."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def to_json(report: dict[str, Any]) -> bytes:
    return (json.dumps(_clean(report), indent=2, allow_nan=False) + "\n").encode()


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def to_markdown(r: dict[str, Any]) -> str:
    lines = [f"# Accuracy report: {r['model']['name']} ({r['model']['task']})", ""]
    data = r["data"]
    lines += [f"- Data: {data.get('description', 'n/a')} (synthetic: {data.get('synthetic', 'unknown')})",
              f"- Calibration: method `{r['calibration']['method']}`, {r['calibration']['n_slices']} slices "
              f"from split `calib`, data sha256 `{r['calibration']['data_sha256'][:16]}…`",
              f"- Gate: Δ{r['gate']['metric']} ≤ {r['gate']['budget']} vs FP32 on the held-out test split "
              f"({data['test']['n']} slices); bootstrap 95% CI ({r['bootstrap']['resamples']} resamples)",
              f"- Result: **{'PASSED' if r['gate']['passed'] else 'FAILED'}**"
              + (" (loss accepted with --accept-loss)" if r['gate']['accept_loss'] else ""), ""]
    variants = r["variants"]
    names = list(next(iter(variants.values()))["metrics"].keys())
    lines += ["## Test-split metrics", "", "| variant | file | " + " | ".join(names) + " | gate |",
              "|---|---|" + "---|" * len(names) + "---|"]
    for vname, v in variants.items():
        cells = []
        for n in names:
            m = v["metrics"][n]
            cells.append(f"{_fmt(m['value'])} [{_fmt(m['ci95'][0], 3)}, {_fmt(m['ci95'][1], 3)}]")
        g = v.get("gate")
        gate = "reference" if g is None else (f"{'pass' if g['passed'] else 'FAIL'} (Δ {_fmt(g['loss'])})")
        lines.append(f"| {vname} | {v.get('file') or '-'} | " + " | ".join(cells) + f" | {gate} |")
    lines += ["", "## Agreement with FP32 (test split)", "", "| variant | agreement |", "|---|---|"]
    for vname, v in variants.items():
        if v.get("agreement"):
            lines.append(f"| {vname} | " + ", ".join(f"{k} {_fmt(val)}" for k, val in v["agreement"].items()) + " |")
    fp16 = r.get("fp16", {})
    lines += ["", "## FP16", "", f"- kept in FP32: {fp16.get('kept_fp32') or 'none'}",
              f"- overflow on the calibration set: {fp16.get('overflow') or 'none'}",
              f"- weights clipped to ±65504: {fp16.get('weights_clipped', 0)}, flushed to 0: "
              f"{fp16.get('weights_flushed', 0)}"]
    lines += ["", "## Per-layer INT8 sensitivity (validation split, one layer quantized at a time)", "",
              "| rank | layer | op | nmse | Δ metric |", "|---|---|---|---|---|"]
    for i, s in enumerate(r.get("sensitivity", []), 1):
        lines.append(f"| {i} | {s['layer']} | {s['op_type']} | {s['nmse']:.3g} | {_fmt(s['metric_drop'])} |")
    lines += ["", f"Excluded (FP32) layers in the mixed model: {r.get('excluded_layers') or 'none'}", ""]
    if r["gate"].get("violations"):
        lines += ["## Gate violations", ""]
        lines += [f"- {v['variant']}: Δ{v['metric']} = {_fmt(v['loss'])} > {v['budget']}" for v in r["gate"]["violations"]]
        lines.append("")
    lines += ["## Deliverables", ""]
    for prec, files in r.get("deliverables", {}).items():
        lines.append(f"- {prec}: " + ", ".join(f"{b}: `{f}`" for b, f in files.items()))
    lines += ["", "## Notes", ""] + [f"- {n}" for n in r.get("notes", [])] + [""]
    return "\n".join(lines)
