"""`slicert demo`'s trust steps (docs/trust.md): fit the OOD score, calibration and intended inputs of
each task's quantized variants (tools/trust_fit.py, cached), run the real DICOM of step 5 under both
eligibility policies, and summarize the measurements for report.md and the console."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

Say = Callable[[str], None]
_CODE = ("trust_fit.py", "trust_sets.py")


def _code_hash() -> str:
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in _CODE:
        h.update((here / name).read_bytes())
    for p in sorted((here.parent / "engine" / "trust").glob("*.py")):
        h.update(p.read_bytes())
    return h.hexdigest()


def fit(task: str, quant_dir: Path, *, fast: bool, force: bool, say: Say) -> tuple[dict[str, Any], str]:
    """trust.json of one task (cached when the accuracy report, the dataset mode and the code are the same)."""
    from tools.io import write_json_atomic
    from tools.trust_fit import INTENDED, data_for, fit_trust

    path, stamp = quant_dir / "trust.json", quant_dir / "trust.source.json"
    key = {"accuracy_report_sha256": hashlib.sha256((quant_dir / "accuracy_report.json").read_bytes()).hexdigest(),
           "fast": fast, "code": _code_hash()}
    if path.is_file() and stamp.is_file() and not force and json.loads(stamp.read_text()) == key:
        say(f"{task}: trust signals cached ({path})")
        return json.loads(path.read_text()), "cached"
    say(f"{task}: fitting trust signals (OOD score, temperature, intended inputs) on train/val, measuring on "
        f"test and OOD sets")
    trust = fit_trust(quant_dir, data_for(task, fast=fast), intended=INTENDED.get(task), threads=2)
    write_json_atomic(stamp, key, force=True)
    return trust, "ran"


def result_trust(r) -> dict[str, Any]:
    """The trust fields of one Result, JSON-ready."""
    return {"flagged": bool(r.flagged), "flags": list(r.flags),
            "eligibility": None if r.eligibility is None else list(r.eligibility),
            "ood": r.ood.to_dict() if r.ood is not None else None}


def summary(trust: dict[str, Any]) -> dict[str, Any]:
    """Per variant: threshold, false alarms (val/test), pooled detection and AUROC, ECE before/after."""
    out: dict[str, Any] = {"false_alarm_target": trust["report"]["false_alarm_target"], "data": trust.get("data"),
                           "variants": {}}
    for v, r in trust["report"]["variants"].items():
        c = r["calibration"]
        out["variants"][v] = {
            "threshold": r["threshold"], "false_alarm_val": r["false_alarm_val"],
            "false_alarm_test": r["false_alarm_test"], "n_test": r["n_test"],
            "detection_pooled": (r.get("pooled") or {}).get("detection_rate"),
            "auroc_pooled": (r.get("pooled") or {}).get("auroc"),
            "sets": {k: {"n": s["n"], "detection_rate": s["detection_rate"], "auroc": s["auroc"]}
                     for k, s in r["sets"].items()},
            "temperature": c["temperature"], "ece_test_before": c["ece_test_before"],
            "ece_test_after": c["ece_test_after"], "ece_unit": c["unit"], "shared_with": r.get("shared_with")}
    return out


def markdown(task_summary: dict[str, Any], real: dict[str, Any] | None) -> list[str]:
    """report.md lines for one task's trust section."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    def num(v):
        return "-" if v is None else f"{v:.3f}"

    s = task_summary
    lines = [f"Trust signals (docs/trust.md; threshold at {pct(s['false_alarm_target'])} false alarms on the "
             f"validation set; measured on the held-out test split and OOD sets):", "",
             "| variant | false alarms val / test | OOD detection (pooled) | AUROC | T | ECE test before -> after |",
             "|---|---|---:|---:|---:|---|"]
    for v, r in s["variants"].items():
        if r.get("shared_with"):
            lines.append(f"| {v} | takes the {r['shared_with']} fit (same weights at half precision), not measured "
                         f"on its own | | | | |")
            continue
        lines.append(f"| {v} | {pct(r['false_alarm_val'])} / {pct(r['false_alarm_test'])} (n={r['n_test']}) | "
                     f"{pct(r['detection_pooled'])} | {num(r['auroc_pooled'])} | {r['temperature']:.3f} | "
                     f"{r['ece_test_before']:.4f} -> {r['ece_test_after']:.4f} ({r['ece_unit']}) |")
    first = next(iter(s["variants"].values()))
    lines += ["", "OOD sets (" + next(iter(s["variants"])) + "): " + "; ".join(
        f"{k} (n={x['n']}) {pct(x['detection_rate'])}, AUROC {num(x['auroc'])}" for k, x in first["sets"].items())
        + ".", ""]
    if real:
        t = real.get("trust") or {}
        if real.get("refused_by_default"):
            lines.append(f"Default policy (eligibility=\"refuse\") on `{real['file']}`: refused (IneligibleInput): "
                         f"{real['refused_by_default']}.")
        lines.append(f"With eligibility=\"flag\": flagged {t.get('flagged')}" + (
            ": " + "; ".join(t.get("flags") or []) if t.get("flags") else "") + ".")
        lines.append("")
    return lines


__all__ = ["fit", "result_trust", "summary", "markdown"]
