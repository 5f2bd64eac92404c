"""`slicert quantize EXPORT_DIR --out DIR`: FP16 / INT8 / mixed models + accuracy report (contract 6)."""
from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def quantize(
        export_dir: Path = typer.Argument(..., help="Toolchain export folder (model.onnx + model.json), or a "
                                          "`slicert distill --teacher` output (then its own data and --out default)."),
        out: Path = typer.Option(None, "--out", help="Output folder for the variants and accuracy_report.json/.md "
                                 "(default for a distill output: that folder)."),
        data: Path = typer.Option(None, "--data", help="Raw splits .npz (calib_images, val_images, val_targets, "
                                  "test_images, test_targets); default: the toolchain dataset in model.json."),
        calib_method: str = typer.Option("max", "--calib-method", help="max | percentile | entropy."),
        calib_n: int = typer.Option(256, "--calib-n", help="Calibration slices from the calib split (>= 256)."),
        percentile: float = typer.Option(99.999, "--percentile", help="Percentile for --calib-method percentile."),
        budget_auc: float = typer.Option(0.01, "--budget-auc", help="Max AUC loss vs FP32 (classification)."),
        budget_dice: float = typer.Option(0.01, "--budget-dice", help="Max mean-Dice loss vs FP32 (segmentation)."),
        accept_loss: bool = typer.Option(False, "--accept-loss", help="Ship variants outside budget (recorded)."),
        force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    ) -> None:
        """FP16 and explicit Q/DQ INT8 (TensorRT + ONNX Runtime CPU forms), mixed precision, accuracy gate."""
        from rich.console import Console

        from engine.errors import SliceRTError
        from tools.byom import is_project
        from tools.quantize.pipeline import quantize_export

        console = Console(stderr=True, soft_wrap=True)  # error text stays greppable: no hard wraps
        try:
            if is_project(export_dir) and data is None and (out is None or out.resolve() == export_dir.resolve()):
                # The user's own DICOM data: calib split -> ranges, test split -> gate (tools.byom.quantize).
                from tools.byom import quantize as quantize_project

                out = export_dir
                rep, status = quantize_project(
                    export_dir, force=force, progress=lambda m: console.print(f"[dim]{m}[/dim]"), method=calib_method,
                    calib_n=calib_n, percentile=percentile, budget_auc=budget_auc, budget_dice=budget_dice,
                    accept_loss=accept_loss)
                if status == "cached":
                    console.print(f"cached: {out / 'accuracy_report.json'} describes this model and data")
            elif out is None:
                from engine.errors import InputError

                raise InputError(f"{export_dir}: --out is required (it is optional only for a `slicert distill "
                                 f"--teacher` output)")
            else:
                rep = quantize_export(export_dir, out, dataset=data, method=calib_method, calib_n=calib_n,
                                      percentile=percentile, budget_auc=budget_auc, budget_dice=budget_dice,
                                      accept_loss=accept_loss, force=force,
                                      progress=lambda m: console.print(f"[dim]{m}[/dim]"))
        except SliceRTError as exc:
            console.print(f"[red]{type(exc).__name__}[/red]: {exc}")
            raise typer.Exit(2) from None
        g = rep["gate"]
        for name, v in rep["variants"].items():
            m = v["metrics"][g["metric"]]
            status = "reference" if name == "fp32" else ("pass" if v["passed"] else "FAIL")
            typer.echo(f"{name:10s} {g['metric']} {m['value']:.4f} [{m['ci95'][0]:.4f}, {m['ci95'][1]:.4f}]  "
                       f"{status:9s} {v.get('file') or ''}")
        typer.echo(f"excluded layers: {rep['excluded_layers'] or 'none'}")
        typer.echo(f"gate {'PASSED' if g['passed'] else 'FAILED (loss accepted)'}; report: {out / 'accuracy_report.json'}")
