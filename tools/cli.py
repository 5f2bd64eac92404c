"""`slicert train | distill | export` (and `python -m tools.train|distill|export`).

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


def register(app: typer.Typer) -> None:
    _command(app, "train", "Build datasets and train the teacher and the student alone (cached in --out).")
    _command(app, "distill", "Train the distilled student from the teacher (runs/reuses `train` first).")
    _command(app, "export", "Export the FP32 teacher and the distilled student to ONNX + model.json "
                            "(runs/reuses train and distill first).")


def run_step(step: str) -> None:
    """Entry point of `python -m tools.<step>`: a one-command app."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    _command(app, step, f"SliceRT toolchain step {step!r} (see `slicert {step} --help`).")
    app()
