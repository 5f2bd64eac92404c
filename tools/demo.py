"""`slicert demo`: the whole pipeline on CPU, as a new user first sees it.

1. datasets (real CT, simulated nodules on projections of that CT, synthetic ultrasound phantom)
2. teachers, distilled students, ONNX export with the equivalence check      (tools.pipeline)
3. FP16 / INT8 / mixed precision with the accuracy gate                        (tools.quantize)
4. one bundle per task for the CPU (TensorRT engines too when a GPU is present) (engine.bundle)
5. the bundles run on real DICOM files, results with physical units            (engine.load)
6. interleaved latency against the pipelines a user would otherwise write      (tools.baselines)

Every step is cached under --out: a second run reuses what is still valid and says so. Nothing in
--out that SliceRT did not write there is ever replaced.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import typer

TASKS = ("cxr_nodule", "ct_organs", "us_phantom")

# Real DICOM each bundle runs on in step 5. These files are real acquisitions shipped in registry
# packages; the models were trained on other data (see each task's honest label), so their outputs
# on these files show plumbing, units and latency, not diagnostic performance.
REAL_INPUTS = {
    "cxr_nodule": ("RG1_UNCR.dcm", "real chest CR, 1955x1841, 15-bit MONOCHROME1 (pydicom-data)"),
    "ct_organs": ("CT_small.dcm", "real CT slice, 128x128, 0.66 mm pixels (pydicom test file)"),
    "us_phantom": ("color3d_jpeg_baseline.dcm",
                   "real echo cine, 120 JPEG YBR_FULL_422 frames, region-calibrated (pydicom test file)"),
}

Say = Callable[[str], None]


def _test_file(name: str) -> str:
    from pydicom.data import get_testdata_file

    from engine.errors import InputError

    # download=False: the demo never touches the network (get_testdata_files() would, and hangs offline).
    path = get_testdata_file(name, download=False)
    if path is None:
        raise InputError(f"{name} not found locally: pip install pydicom-data")
    return str(path)


def _sha(path: Path) -> str:
    from tools.io import sha256_file

    return sha256_file(path)


# -- step 3: quantize ---------------------------------------------------------------------------------
def _quantize(task: str, student_dir: Path, out: Path, *, force: bool, say: Say) -> tuple[dict, str]:
    from tools.quantize import quantize_export

    report_path = out / "accuracy_report.json"
    student_sha = _sha(student_dir / "model.onnx")
    if report_path.is_file() and not force:
        old = json.loads(report_path.read_text())
        if (old.get("model") or {}).get("source_sha256") == student_sha:
            say(f"{task}: quantized models cached ({out})")
            return old, "cached"
    say(f"{task}: quantizing (FP16, INT8 Q/DQ, mixed) with the accuracy gate")
    # An existing report here was written by an earlier demo run for an older student: replacing it
    # is this command's own bookkeeping, not a user's file.
    rep = quantize_export(student_dir, out, force=force or report_path.is_file(),
                          progress=lambda m: say(f"{task}: {m}"))
    return rep, "ran"


# -- step 4: bundle -------------------------------------------------------------------------------------
def _bundle(task: str, quant_dir: Path, out: Path, *, force: bool, say: Say) -> tuple[Path, str, dict]:
    from engine.bundle import build_bundle, open_bundle

    report_sha = _sha(quant_dir / "accuracy_report.json")
    if (quant_dir / "trust.json").is_file():  # the trust signals travel in the bundle too (docs/trust.md)
        report_sha += ":" + _sha(quant_dir / "trust.json")
    stamp = out.with_suffix(".source.json")
    if out.is_file() and stamp.is_file() and not force:
        if json.loads(stamp.read_text()).get("accuracy_report_sha256") == report_sha:
            with open_bundle(out) as b:  # verifies every member's checksum
                variants = sorted(b.variants)
            say(f"{task}: bundle cached ({out.name}: {', '.join(variants)})")
            return out, "cached", {"variants": variants}
    say(f"{task}: building bundle (target auto)")
    rep = build_bundle(quant_dir, out, precision="best", target="auto", force=force or stamp.is_file())
    stamp.write_text(json.dumps({"accuracy_report_sha256": report_sha}))
    info = rep.to_dict() if hasattr(rep, "to_dict") else dict(vars(rep))
    return out, "ran", info


# -- step 5: real DICOM ---------------------------------------------------------------------------------
def _run_real(task: str, bundle: Path, *, say: Say) -> dict[str, Any]:
    import numpy as np

    import engine
    from engine import dicom
    from tools.demo_trust import result_trust

    name, description = REAL_INPUTS[task]
    path = _test_file(name)
    out: dict[str, Any] = {"file": name, "description": description}
    # eligibility="flag": run even a file outside the bundle's intended inputs, and report why it would
    # be refused under the default policy (the reasons IneligibleInput names) and what the OOD score says.
    with engine.load(bundle, eligibility="flag") as session:
        out["backend"] = session.info.get("backend")
        out["variant"] = session.info.get("variant") or session.info.get("precision")
        src = dicom.read(path)
        if isinstance(src, dicom.FrameSequence):
            totals, areas = [], []
            flagged = []
            for r in session.stream(src, drop_stale=False):
                totals.append(r.timings_ms["total"])
                flagged.append(result_trust(r))
                if r.areas_mm2 is not None:
                    areas.append(r.areas_mm2)
            out["frames"] = len(totals)
            out["frame_time_ms"] = src[0].frame_time_ms
            out["latency_ms_p50"] = float(np.median(totals))
            out["pixel_spacing_mm"] = list(src[0].pixel_spacing_mm) if src[0].pixel_spacing_mm else None
            out["spacing_source"] = src[0].spacing_source
            if areas:
                out["mean_area_mm2"] = {k: float(np.mean([a[k] for a in areas])) for k in areas[0]}
            out["trust"] = {**flagged[0], "flagged_frames": sum(f["flagged"] for f in flagged)}
        else:
            r = session.run(src)
            out["trust"] = result_trust(r)
            out["latency_ms"] = dict(r.timings_ms)
            out["pixel_spacing_mm"] = list(r.pixel_spacing_mm) if r.pixel_spacing_mm else None
            out["spacing_source"] = src.spacing_source
            if r.scores is not None:
                out["scores"] = {lab: float(s) for lab, s in zip(r.labels, r.scores)}
                out["label"] = r.label
            if r.mask is not None:
                out["mask_shape"] = list(r.mask.shape)
                out["pixel_counts"] = dict(r.pixel_counts or {})
                out["areas_mm2"] = dict(r.areas_mm2) if r.areas_mm2 is not None else None
    elig = out["trust"]["eligibility"]
    out["refused_by_default"] = "; ".join(elig) if elig else None
    say(f"{task}: ran {name} on {out['backend']} ({out['variant']})" + (
        f", FLAGGED: {'; '.join(out['trust']['flags'])}" if out["trust"]["flagged"] else ", not flagged"))
    return out


def run_demo(out_dir: str | Path, *, fast: bool = False, force: bool = False, bench_n: int | None = None,
             say: Say = print) -> dict[str, Any]:
    """Run the whole pipeline into `out_dir`; returns the report dict also written to report.json."""
    from tools.io import ensure_writable_dir, write_json_atomic, write_text_atomic
    from tools.pipeline import run_toolchain

    t_start = time.perf_counter()
    out = ensure_writable_dir(out_dir)
    report: dict[str, Any] = {"fast": fast, "steps": {}, "tasks": {}}

    def step(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        value = fn()
        report["steps"][name] = {"seconds": round(time.perf_counter() - t0, 2)}
        return value

    # 1-2. data, teachers, KD students, ONNX export
    tc = step("toolchain", lambda: run_toolchain(out / "toolchain", fast=fast, force=force,
                                                 progress=lambda st, fr, msg: say(f"{st}: {msg}") if fr in (
                                                     0.0, 1.0) else None))
    report["steps"]["toolchain"]["cached"] = tc["cached_steps"]
    for task in TASKS:
        t = tc["tasks"][task]
        report["tasks"][task] = {"honest_label": t["honest_label"], "labels": t["labels"],
                                 "dataset": t["dataset"], "models": t["models"]}

    # 3. precision variants with the accuracy gate
    def quantize_all() -> None:
        for task in TASKS:
            rep, status = _quantize(task, Path(tc["tasks"][task]["exports"]["student"]), out / "quantized" / task,
                                    force=force, say=say)
            report["tasks"][task]["quantization"] = {"status": status, "report": str(
                out / "quantized" / task / "accuracy_report.json"), "summary": _accuracy_summary(rep)}

    step("quantize", quantize_all)

    # 3b. trust signals: OOD score, calibration, intended inputs (docs/trust.md)
    def trust_all() -> None:
        from tools import demo_trust

        for task in TASKS:
            tr, status = demo_trust.fit(task, out / "quantized" / task, fast=fast, force=force, say=say)
            report["tasks"][task]["trust"] = {"status": status, "summary": demo_trust.summary(tr)}

    step("trust", trust_all)

    # 4. bundles
    def bundle_all() -> None:
        (out / "bundles").mkdir(exist_ok=True)
        for task in TASKS:
            path, status, info = _bundle(task, out / "quantized" / task, out / "bundles" / f"{task}.slicert",
                                         force=force, say=say)
            report["tasks"][task]["bundle"] = {"path": str(path), "status": status,
                                               "engines": info.get("engines"), "notes": info.get("notes")}

    step("bundle", bundle_all)

    # 5. real DICOM
    def run_all() -> None:
        for task in TASKS:
            report["tasks"][task]["real_dicom"] = _run_real(task, out / "bundles" / f"{task}.slicert", say=say)

    step("run", run_all)

    # 6. latency against the baselines
    from tools.baselines import benchmark_demo

    report["benchmark"] = step("benchmark", lambda: benchmark_demo(out, tc, n=bench_n or (40 if fast else 200),
                                                                  say=say))
    report["seconds_total"] = round(time.perf_counter() - t_start, 1)
    write_json_atomic(out / "report.json", report, force=True)
    write_text_atomic(out / "report.md", markdown(report), force=True)
    return report


def _accuracy_summary(rep: dict[str, Any]) -> dict[str, Any]:
    """Headline metric per shipped variant from the quantizer's report (test split)."""
    out: dict[str, Any] = {"metric": rep.get("gate", {}).get("metric") or rep.get("metric")}
    for name, v in (rep.get("variants") or {}).items():
        m = v.get("metrics") or {}
        key = out["metric"]
        val = m.get(key)
        if isinstance(val, dict):
            val = val.get("value", val.get("mean"))
        out[name] = {"value": val, "passed": v.get("passed"), "shipped": bool(v.get("file")) or name == "fp32"}
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = ["# SliceRT demo report", "",
             "Everything below ran on this machine's CPU. Accuracy is on held-out TEST splits; the data is "
             "real anatomy with simulated findings or fully synthetic, as labelled; nothing here is "
             "clinically validated.", "", "## Steps", "", "| step | seconds | notes |", "|---|---:|---|"]
    for name, s in report["steps"].items():
        note = ""
        if s.get("cached"):
            note = f"cached: {', '.join(s['cached'])}"
        lines.append(f"| {name} | {s['seconds']} | {note} |")
    lines += ["", f"Total: {report.get('seconds_total')} s", ""]
    for task, t in report["tasks"].items():
        lines += [f"## {task}", "", f"Data: {t['honest_label']}.", ""]
        q = (t.get("quantization") or {}).get("summary") or {}
        if q:
            lines += [f"Accuracy gate ({q.get('metric')}, test split):", "", "| variant | value | passed | shipped |",
                      "|---|---:|---|---|"]
            for name, v in q.items():
                if isinstance(v, dict):
                    val = v["value"]
                    lines.append(f"| {name} | {val:.4f} | {v['passed']} | {v['shipped']} |" if isinstance(
                        val, (int, float)) else f"| {name} | {val} | {v['passed']} | {v['shipped']} |")
            lines.append("")
        r = t.get("real_dicom") or {}
        if r:
            lines += [f"Real DICOM: `{r['file']}` ({r['description']}); backend {r.get('backend')}, "
                      f"variant {r.get('variant')}.", ""]
            if "scores" in r:
                lines.append("Scores: " + ", ".join(f"{k} {v:.3f}" for k, v in r["scores"].items())
                             + f" -> {r['label']} (model trained on simulated findings: not a diagnosis).")
            if r.get("areas_mm2"):
                lines.append("Areas: " + ", ".join(f"{k} {v:.1f} mm²" for k, v in r["areas_mm2"].items())
                             + f" (pixel spacing {r['pixel_spacing_mm']} mm from {r['spacing_source']}).")
            if r.get("mean_area_mm2"):
                lines.append(f"{r['frames']} frames, p50 {r['latency_ms_p50']:.2f} ms per frame "
                             f"(frame time {r['frame_time_ms']} ms); mean areas: "
                             + ", ".join(f"{k} {v:.1f} mm²" for k, v in r["mean_area_mm2"].items())
                             + f" (spacing {r['pixel_spacing_mm']} mm from {r['spacing_source']}).")
            if "latency_ms" in r:
                lines.append("Latency of that run (ms): " + ", ".join(
                    f"{k} {v:.3f}" for k, v in r["latency_ms"].items() if v is not None))
            lines.append("")
        if t.get("trust"):
            from tools.demo_trust import markdown as trust_markdown

            lines += trust_markdown(t["trust"]["summary"], r)
    b = report.get("benchmark") or {}
    if b.get("markdown"):
        lines += ["## Latency against the baselines", "", b["markdown"], ""]
    return "\n".join(lines) + "\n"


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(out: Path = typer.Option(Path("demo-out"), "--out", help="Output folder (cached between runs)."),
             fast: bool = typer.Option(False, "--fast", help="Small datasets and short training (~2 min)."),
             force: bool = typer.Option(False, "--force", help="Recompute every step, replacing outputs."),
             n: int = typer.Option(0, "--n", help="Timed rounds per benchmark configuration (0 = default).")) -> None:
        """Run the whole pipeline on CPU: data, training, distillation, quantization, bundles, real DICOM, bench."""
        from rich.console import Console

        from engine.errors import SliceRTError

        console = Console()
        t0 = time.perf_counter()

        def say(msg: str) -> None:
            console.print(f"[dim]{time.perf_counter() - t0:6.1f}s[/dim] {msg}")

        try:
            report = run_demo(out, fast=fast, force=force, bench_n=n or None, say=say)
        except SliceRTError as exc:
            console.print(f"[bold red]error[/bold red] {type(exc).__name__}: {exc}")
            raise typer.Exit(code=2) from None
        _print_summary(console, report, out)


def _print_summary(console, report: dict[str, Any], out: Path) -> None:
    from rich.table import Table

    table = Table(title="SliceRT demo: results on real DICOM (CPU)")
    for col in ("task", "data (honest label)", "variant", "real input", "result"):
        table.add_column(col)
    for task, t in report["tasks"].items():
        r = t.get("real_dicom") or {}
        if "scores" in r:
            res = f"{r['label']} ({max(r['scores'].values()):.2f}), {r['latency_ms']['total']:.1f} ms"
        elif r.get("mean_area_mm2"):
            res = f"{r['frames']} frames, p50 {r['latency_ms_p50']:.1f} ms/frame, " + ", ".join(
                f"{k} {v:.0f} mm²" for k, v in r["mean_area_mm2"].items())
        elif r.get("areas_mm2"):
            res = ", ".join(f"{k} {v:.0f} mm²" for k, v in r["areas_mm2"].items()) + \
                f", {r['latency_ms']['total']:.1f} ms"
        else:
            res = "-"
        tr = r.get("trust") or {}
        if tr.get("flagged"):
            ood = tr.get("ood") or {}
            res += "; FLAGGED: " + ", ".join(
                (["ineligible"] if tr.get("eligibility") else []) +
                ([f"out of distribution ({ood.get('statistic')})"] if ood.get("flag") else []))
        table.add_row(task, t["honest_label"], str(r.get("variant")), r.get("file", "-"), res)
    console.print(table)
    b = report.get("benchmark") or {}
    if b.get("headline"):
        bt = Table(title="End-to-end latency, interleaved in one run (p50 ms)")
        for col in b["headline"]["columns"]:
            bt.add_column(col)
        for row in b["headline"]["rows"]:
            bt.add_row(*[str(x) for x in row])
        console.print(bt)
    console.print(f"Total {report['seconds_total']} s. Wrote {out / 'report.md'}, {out / 'report.json'}"
                  + (f", {b['plot']}" if b.get("plot") else ""))
