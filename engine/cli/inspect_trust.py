"""`slicert inspect`'s trust tables: intended inputs, OOD thresholds with their measured false alarms and
detection, and calibration (ECE before/after) per variant, from the manifest's `trust` section."""
from __future__ import annotations

from typing import Any


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}%" if isinstance(v, (int, float)) else "-"


def _num(v: Any, fmt: str = ".3f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "-"


def render_trust(console: Any, manifest: dict[str, Any], fmt_cell) -> None:
    """Print the trust section (or say there is none); `fmt_cell` escapes untrusted text for rich."""
    from rich.table import Table

    trust = manifest.get("trust")
    if not isinstance(trust, dict):
        console.print("trust: no eligibility / OOD / calibration in this bundle (built without tools/trust_fit.py)")
        return
    t = Table(title="trust: intended inputs (eligibility, checked from the DICOM header)", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value")
    elig = trust.get("eligibility") or {}
    for key in ("modalities", "photometric", "body_parts", "view_positions", "pixel_spacing_mm", "bits_stored",
                "note"):
        v = elig.get(key)
        t.add_row(key, fmt_cell(", ".join(map(str, v)) if isinstance(v, list) else v))
    t.add_row("intended inputs", fmt_cell("stated" if elig else "not stated"))
    console.print(t)

    data = trust.get("data") or {}
    report = (trust.get("report") or {}).get("variants") or {}
    target = (trust.get("report") or {}).get("false_alarm_target")
    t = Table(title=fmt_cell(f"trust: out-of-distribution score (threshold at {_pct(target)} false alarms on the "
                             f"validation set)"))
    for col in ("variant", "statistics", "threshold", "false alarms val / test", "detection (pooled OOD)",
                "AUROC", "per OOD set: detection, AUROC"):
        t.add_column(col, overflow="fold")
    for v, entry in (trust.get("variants") or {}).items():
        ood = entry.get("ood") or {}
        r = report.get(v) or {}
        pooled = r.get("pooled") or {}
        sets = "; ".join(f"{name} (n={s.get('n')}): {_pct(s.get('detection_rate'))}, {_num(s.get('auroc'))}"
                         for name, s in (r.get("sets") or {}).items())
        shared = f" ({r['shared_with']} fit)" if r.get("shared_with") else ""
        t.add_row(fmt_cell(v + shared), fmt_cell(", ".join(s.get("name", "?") for s in ood.get("statistics") or [])),
                  _num(ood.get("threshold"), ".4g"),
                  f"{_pct(r.get('false_alarm_val'))} / {_pct(r.get('false_alarm_test'))}",
                  _pct(pooled.get("detection_rate")), _num(pooled.get("auroc")), fmt_cell(sets or "-"))
    console.print(t)

    t = Table(title="trust: calibration (temperature scaling; expected calibration error, 10 bins)")
    for col in ("variant", "temperature", "ECE val before -> after", "ECE test before -> after",
                "NLL test before -> after", "unit"):
        t.add_column(col, overflow="fold")
    for v in (trust.get("variants") or {}):
        c = (report.get(v) or {}).get("calibration") or {}
        t.add_row(v, _num(c.get("temperature"), ".4g"),
                  f"{_num(c.get('ece_val_before'), '.4f')} -> {_num(c.get('ece_val_after'), '.4f')}",
                  f"{_num(c.get('ece_test_before'), '.4f')} -> {_num(c.get('ece_test_after'), '.4f')}",
                  f"{_num(c.get('nll_test_before'), '.4f')} -> {_num(c.get('nll_test_after'), '.4f')}",
                  fmt_cell(c.get("unit")))
    console.print(t)
    default = (manifest.get("default_variant") or {}).get("onnxruntime")
    rows = (report.get(default) or {}).get("real_files") or []
    if rows:
        console.print(fmt_cell(f"  real DICOM ({default}): " + "; ".join(
            f"{r.get('file')}{'' if not r.get('frame') else ' frame ' + str(r.get('frame'))}: "
            f"{'flagged' if r.get('flag') else 'not flagged'} ({r.get('statistic')}, score {_num(r.get('score'), '.3g')})"
            for r in rows)))
    for key in ("dataset", "fit", "threshold", "temperature", "measured"):
        if data.get(key):
            console.print(fmt_cell(f"  {key}: {data[key]}"))
    outputs = trust.get("outputs") or {}
    console.print(fmt_cell(f"  saliency: {'class-activation map output ' + outputs['cam'] if 'cam' in outputs else ('per-pixel confidence' if manifest['model']['task'] == 'segmentation' else 'unavailable')}"))


__all__ = ["render_trust"]
