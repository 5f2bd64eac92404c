"""`slicert batch INPUT --bundle X.slicert --out RESULTS.parquet [--ray [ADDRESS]]`."""
from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("batch")
    def batch(
        input: str = typer.Argument(..., help="A folder (recursive), a list file (.txt/.lst), or a glob of DICOM files."),
        bundle: Path = typer.Option(..., "--bundle", "-b", help="The .slicert bundle to run."),
        out: Path = typer.Option(Path("results.parquet"), "--out", "-o", help="The Parquet table to write."),
        ray: str = typer.Option(None, "--ray", help="Run on Ray: 'local' starts a cluster here, else a cluster "
                                                     "address (host:port or ray://...)."),
        workers: int = typer.Option(2, "--workers", help="Ray actors (one loaded Session each)."),
        threads: int = typer.Option(1, "--threads", help="Inference threads per worker."),
        num_cpus: int = typer.Option(None, "--num-cpus", help="CPUs of a local Ray cluster (default: all)."),
        precision: str = typer.Option("best", "--precision", help="best, fp32, fp16, int8 or mixed."),
        chunk: int = typer.Option(8, "--chunk", help="Files per task (a part of the table)."),
        labels: Path = typer.Option(None, "--labels", help="CSV file,label or SOPInstanceUID,label: also score "
                                                           "accuracy on this archive."),
        task_timeout: float = typer.Option(600.0, "--task-timeout", help="Seconds before a Ray task counts as "
                                                                         "hung and runs elsewhere."),
        dicom_out: Path = typer.Option(None, "--dicom-out", help="Also write a DICOM SEG/SR per file here."),
        force: bool = typer.Option(False, "--force", help="Start over instead of resuming --out."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Run a bundle over a DICOM archive: one Parquet row per image or frame; a refused file is a row."""
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from engine.safe_text import safe
        from engine.errors import SliceRTError
        from tools.batch.job import run_batch

        console = Console(stderr=True)
        try:
            with Progress(TextColumn("batch"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console,
                          disable=as_json) as bars:
                bar = bars.add_task("batch", total=None, rate="")

                def progress(done: int, total: int, elapsed: float) -> None:
                    bars.update(bar, completed=done, total=total,
                                rate=f"{done / elapsed:.1f} files/s" if elapsed > 0 else "")

                summary = run_batch(input, bundle, out, executor="ray" if ray else "in-process",
                                    ray_address=None if ray in (None, "local") else ray, workers=workers,
                                    threads=threads, precision=precision, chunk_size=chunk,
                                    labels=str(labels) if labels else None, force=force, num_cpus=num_cpus,
                                    task_timeout_s=task_timeout, dicom_out=dicom_out, progress=progress)
        except SliceRTError as exc:
            typer.echo(f"error: {type(exc).__name__}: {safe(str(exc))}", err=True)
            raise typer.Exit(code=2) from None
        if as_json:
            import json

            typer.echo(json.dumps(summary.as_dict(), indent=2))
            return
        _print_summary(summary)


def _print_summary(s) -> None:
    from rich.console import Console
    from rich.table import Table

    from engine.safe_text import safe

    t = Table(title=f"slicert batch: {s.files} files -> {s.out}")
    t.add_column("what")
    t.add_column("files", justify="right")
    t.add_row("done", str(s.ok_files))
    for cls, n in sorted(s.refused.items()):
        t.add_row(f"refused: {safe(cls)}", str(n))
    for cls, n in sorted(s.failed.items()):
        t.add_row(f"failed: {safe(cls)}", str(n))
    if s.resumed_files:
        t.add_row("already done (resumed)", str(s.resumed_files))
    if s.not_dicom_files:
        t.add_row("skipped: not DICOM", str(s.not_dicom_files))
    con = Console()
    con.print(t)
    con.print(f"{s.rows} rows; {s.executor} with {s.workers} worker(s): start-up {s.startup_s:.1f} s, "
              f"work {s.work_s:.1f} s, {s.images_per_s:.1f} images/s; worker deaths {s.worker_deaths}")
    if s.accuracy:
        a = s.accuracy
        lo, hi = a["accuracy_ci95"]
        con.print(f"accuracy on this archive: {a['accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f}, n={a['n']}); "
                  f"{a['labelled_but_refused']} labelled file(s) refused; no clinical claim")
