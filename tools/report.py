"""Markdown summary of a toolchain run: teacher, student alone, distilled student and a random-init
student side by side on the held-out TEST split, with parameters and FLOPs."""
from __future__ import annotations

import math

ROWS = (("teacher", "teacher"), ("student_alone", "student alone"), ("student_kd", "student distilled (KD)"),
        ("random_init", "student, random init"))


def _f(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def task_table(t: dict) -> str:
    models = t["models"]
    if t["task"] == "classification":
        head = "| model | params | MFLOPs | AUC (95% CI) | accuracy | sensitivity | specificity |\n|---|---|---|---|---|---|---|"
    else:
        organs = t["labels"][1:]
        head = ("| model | params | MFLOPs | " + " | ".join(f"Dice {o}" for o in organs) + " | mean Dice |\n|---|---|---|"
                + "---|" * (len(organs) + 1))
    lines = [head]
    for key, name in ROWS:
        m = models.get(key)
        if not m or not m.get("test"):
            continue
        r = m["test"]
        cells = [name, f"{m['params']:,}" if m.get("params") else "-",
                 _f(m["flops"] / 1e6, 1) if m.get("flops") else "-"]
        if t["task"] == "classification":
            lo, hi = r.get("auc_ci95", [None, None])
            cells += [f"{_f(r['auc'])} ({_f(lo)}-{_f(hi)})", _f(r["accuracy"]), _f(r["sensitivity"]),
                      _f(r["specificity"])]
        else:
            cells += [_f(r["dice"].get(o)) for o in t["labels"][1:]] + [_f(r["mean_dice"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(result: dict) -> str:
    out = ["# SliceRT toolchain report", "",
           f"Mode: {'--fast' if result['fast'] else 'full'}, seed {result['seed']}, "
           f"wall time {result.get('seconds', 0):.0f} s. All metrics on the held-out TEST split "
           "(classification thresholds chosen on val). Not clinically validated.", ""]
    for name, t in result["tasks"].items():
        splits = ", ".join(f"{k} {v}" for k, v in t["dataset"]["splits"].items())
        out += [f"## {name}: {t['honest_label']}", "", f"Data: {splits}. Real: {t['dataset']['provenance']['real']}. "
                f"Simulated: {t['dataset']['provenance']['simulated']}.", ""]
        m = t["models"]
        if m.get("teacher", {}).get("flops") and m.get("student_kd", {}).get("flops"):
            out.append(f"Teacher/student FLOP ratio: {m['teacher']['flops'] / m['student_kd']['flops']:.1f}x. "
                       f"KD: {m['student_kd'].get('kd')}.")
            out.append("")
        out += [task_table(t), ""]
        bins = (m.get("student_kd", {}).get("test") or {}).get("sensitivity_by_diameter_mm")
        if bins:
            cells = ", ".join(f"{k} mm: {_f(v['sensitivity'], 2)} (n={v['n']})" for k, v in bins.items())
            out += [f"Sensitivity of the distilled student by lesion diameter: {cells}.", ""]
        steps = ", ".join(f"{k}: {v}" for k, v in t["steps"].items())
        secs = ", ".join(f"{k} {v:.0f} s" for k, v in t["seconds"].items())
        out += [f"Steps: {steps}. Times: {secs}.", ""]
        if t["exports"]:
            out += ["Exports: " + ", ".join(f"{k} `{v}`" for k, v in t["exports"].items()), ""]
    return "\n".join(out)
