"""`slicert train | distill | export` (and `python -m tools train|distill|export`).

Each command runs the toolchain up to its step for the chosen tasks, reusing every cached step in
--out: `train` = data + teacher + student alone; `distill` = + distilled student; `export` = + ONNX
exports of the FP32 teacher and the distilled student. torch is imported inside the command bodies
only, so `slicert info` and `slicert --help` stay torch-free.
"""
from __future__ import annotations

from pathlib import Path

import typer

_TASKS_HELP = "Tasks: ct_organs, cxr_nodule, us_phantom, or all (default)."
_STEP_OF = {"train": ("train",), "distill": ("train", "distill"), "export": ("train", "distill", "export")}


def _run(step: str, tasks: list[str] | None, out: Path, fast: bool, cache: Path | None, seed: int,
         force: bool, as_json: bool) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from engine.errors import SliceRTError

    console = Console(stderr=True)
    chosen = None if not tasks or tasks == ["all"] else tuple(tasks)
    try:
        from tools.pipeline import run_toolchain

        with Progress(TextColumn("{task.description:<28}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TimeElapsedColumn(), TextColumn("{task.fields[msg]}"), console=console,
                      transient=False) as bars:
            ids: dict[str, int] = {}

            def progress(stage: str, frac: float, msg: str) -> None:
                if stage not in ids:
                    ids[stage] = bars.add_task(stage, total=1.0, msg="")
                bars.update(ids[stage], completed=frac, msg=msg[:60])

            result = run_toolchain(out, tasks=chosen, fast=fast, force=force, seed=seed, cache_dir=cache,
                                   steps=_STEP_OF[step], progress=progress)
    except SliceRTError as exc:
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(code=2) from None
    if as_json:
        import json

        typer.echo(json.dumps(result, indent=2, default=str))
        return
    _summary(result)


def _summary(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from tools.report import ROWS, _f

    con = Console()
    for name, t in result["tasks"].items():
        table = Table(title=f"{name}: {t['honest_label']} (held-out TEST split)")
        cls = t["task"] == "classification"
        cols = ["model", "params", "MFLOPs"] + (["AUC", "95% CI", "acc", "sens", "spec"] if cls else
                                                 [f"Dice {o}" for o in t["labels"][1:]] + ["mean Dice"])
        for c in cols:
            table.add_column(c, justify="left" if c == "model" else "right")
        for key, label in ROWS:
            m = t["models"].get(key)
            if not m or not m.get("test"):
                continue
            r = m["test"]
            row = [label, f"{m['params']:,}", _f(m["flops"] / 1e6, 1)]
            if cls:
                lo, hi = r["auc_ci95"]
                row += [_f(r["auc"]), f"{_f(lo)}-{_f(hi)}", _f(r["accuracy"]), _f(r["sensitivity"]),
                        _f(r["specificity"])]
            else:
                row += [_f(r["dice"].get(o)) for o in t["labels"][1:]] + [_f(r["mean_dice"])]
            table.add_row(*row)
        con.print(table)
        steps = ", ".join(f"{k} [{'green' if v == 'ran' else 'cyan'}]{v}[/]" for k, v in t["steps"].items())
        con.print(f"steps: {steps}")
        for k, v in t["exports"].items():
            con.print(f"export {k}: {v}")
    con.print(f"report: {result['report_md']}  ({result['seconds']:.0f} s; "
              f"{len(result['cached_steps'])} step(s) reused from cache)")


def _command(app: typer.Typer, step: str, doc: str) -> None:
    def cmd(
        tasks: list[str] = typer.Argument(None, help=_TASKS_HELP),
        out: Path = typer.Option(Path("slicert-models"), "--out", "-o", help="Output directory (steps cached here)."),
        fast: bool = typer.Option(False, "--fast", help="Small data and few epochs (tests, smoke runs; < 2 min)."),
        cache: Path = typer.Option(None, "--cache", help="Dataset cache (default $SLICERT_CACHE or ~/.cache/slicert)."),
        seed: int = typer.Option(0, "--seed", help="Seed of data generation, initialization and training."),
        force: bool = typer.Option(False, "--force", help="Recompute and overwrite existing outputs in --out."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of tables."),
    ) -> None:
        _run(step, tasks, out, fast, cache, seed, force, as_json)

    cmd.__doc__ = doc
    app.command(name=step)(cmd)


def _distill_own(teacher: Path, spec: Path | None, data: Path | None, labels: Path | None, masks: Path | None,
                 splits: Path | None, student: str, out: Path, epochs: int, seed: int, force: bool, threads: int,
                 flags: dict, as_json: bool) -> None:
    """`slicert distill --teacher ...`: the user's model and DICOM folder (tools.byom)."""
    from rich.console import Console

    from engine.errors import SliceRTError

    console = Console(stderr=True)
    try:
        from tools import byom, model_spec

        if data is None:
            raise model_spec.SpecError("--teacher needs --data DIR (the DICOM folder)")
        ms = model_spec.load(spec, model_spec.overrides_from_flags(**flags))
        result = byom.distill(str(teacher), ms, data, out=out, labels=labels, masks=masks, splits=splits,
                              student=student, epochs=epochs, seed=seed, force=force, threads=threads,
                              progress=lambda st, fr, msg: console.print(f"[dim]{st}[/dim] {msg}")
                              if fr in (0.0, 1.0) else None)
    except SliceRTError as exc:
        typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(code=2) from None
    if as_json:
        import json

        typer.echo(json.dumps(result, indent=2, default=str))
        return
    typer.echo(open(result["report_md"], encoding="utf-8").read())
    typer.echo(f"next: slicert quantize {out}  &&  slicert build {out}")


def _distill_command(app: typer.Typer) -> None:
    def distill(
        tasks: list[str] = typer.Argument(None, help=_TASKS_HELP + " (the demo zoo; ignored with --teacher)"),
        out: Path = typer.Option(Path("slicert-models"), "--out", "-o", help="Output directory (steps cached here)."),
        fast: bool = typer.Option(False, "--fast", help="Zoo: small data and few epochs (tests, smoke runs; < 2 min)."),
        cache: Path = typer.Option(None, "--cache", help="Zoo dataset cache (default $SLICERT_CACHE or ~/.cache/slicert)."),
        seed: int = typer.Option(0, "--seed", help="Seed of data generation/splits, initialization and training."),
        force: bool = typer.Option(False, "--force", help="Recompute and overwrite existing outputs in --out."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of tables."),
        teacher: Path = typer.Option(None, "--teacher", help="Your teacher: model.onnx (run under ONNX Runtime) or a "
                                     "TorchScript file. With it, --data/--spec say what it was trained on."),
        spec: Path = typer.Option(None, "--spec", help="Model spec JSON (task, labels, input, voi); see docs/byom.md."),
        data: Path = typer.Option(None, "--data", help="Folder of DICOM files (read recursively)."),
        labels: Path = typer.Option(None, "--labels", help="Classification labels CSV: file,label or "
                                    "SOPInstanceUID,label."),
        masks: Path = typer.Option(None, "--masks", help="Segmentation masks folder (one mask per image)."),
        splits: Path = typer.Option(None, "--splits", help="Patient splits file (default: splits.json next to the "
                                    "labels/masks); written once, then reused."),
        student: str = typer.Option("small", "--student", help="tiny | small | base, with knobs 'small:depth=3', "
                                    "or an arch id 'unet-w6-d4'."),
        epochs: int = typer.Option(30, "--epochs", help="Training epochs of each student."),
        threads: int = typer.Option(2, "--threads", help="PyTorch CPU threads for training."),
        task: str = typer.Option(None, "--task", help="Spec override: classification | segmentation."),
        classes: str = typer.Option(None, "--classes", help="Spec override: class names, comma-separated."),
        size: str = typer.Option(None, "--size", help="Spec override: model input HEIGHTxWIDTH."),
        channels: int = typer.Option(None, "--channels", help="Spec override: model input channels (1 or 3)."),
        window: str = typer.Option(None, "--window", help="Spec override: fixed VOI window CENTER,WIDTH."),
        voi: str = typer.Option(None, "--voi", help="Spec override: dicom | model."),
    ) -> None:
        """Distill a student: from YOUR teacher and DICOM folder (--teacher/--spec/--data), or the demo zoo's
        teachers (runs/reuses `train` first)."""
        if teacher is not None:
            flags = {"task": task, "classes": classes, "size": size, "channels": channels, "window": window,
                     "voi": voi}
            _distill_own(teacher, spec, data, labels, masks, splits, student, out, epochs, seed, force, threads,
                         flags, as_json)
            return
        _run("distill", tasks, out, fast, cache, seed, force, as_json)

    app.command(name="distill")(distill)


def register(app: typer.Typer) -> None:
    _command(app, "train", "Build datasets and train the teacher and the student alone (cached in --out).")
    _distill_command(app)
    _command(app, "export", "Export the FP32 teacher and the distilled student to ONNX + model.json "
                            "(runs/reuses train and distill first).")


def run_step(step: str) -> None:
    """Entry point of `python -m tools <step>` (tools/__main__.py): a one-command app. The steps themselves
    (train, distill, export) never import this module: progress flows from them to the caller's callback."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    _command(app, step, f"SliceRT toolchain step {step!r} (see `slicert {step} --help`).")
    app()
