"""`slicert dataset check DIR --labels labels.csv [--masks DIR] [--spec spec.json]`."""
from __future__ import annotations

from pathlib import Path

import typer

SPEC_FLAGS_HELP = "Overrides the spec file's field (or gives it without a spec file)."


def spec_from_cli(spec: Path | None, task: str | None, classes: str | None, size: str | None,
                  channels: int | None, window: str | None, voi: str | None, name: str | None = None):
    from tools import model_spec

    return model_spec.load(spec, model_spec.overrides_from_flags(task=task, classes=classes, size=size,
                                                                 channels=channels, window=window, voi=voi,
                                                                 name=name))


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Check a DICOM folder (labels or masks) and split it by patient.", no_args_is_help=True)
    app.add_typer(group, name="dataset")

    @group.command("check")
    def check(
        folder: Path = typer.Argument(..., help="Folder of DICOM files (read recursively)."),
        labels: Path = typer.Option(None, "--labels", help="Classification labels CSV: file,label or SOPInstanceUID,label."),
        masks: Path = typer.Option(None, "--masks", help="Segmentation masks folder (PNG/NPY/NIfTI/DICOM SEG per image)."),
        spec: Path = typer.Option(None, "--spec", help="Model spec JSON (task, labels, input, voi)."),
        task: str = typer.Option(None, "--task", help="classification | segmentation. " + SPEC_FLAGS_HELP),
        classes: str = typer.Option(None, "--classes", help="Class names, comma-separated. " + SPEC_FLAGS_HELP),
        size: str = typer.Option(None, "--size", help="Model input HEIGHTxWIDTH, e.g. 64x64. " + SPEC_FLAGS_HELP),
        channels: int = typer.Option(None, "--channels", help="Model input channels (1 or 3). " + SPEC_FLAGS_HELP),
        window: str = typer.Option(None, "--window", help="Fixed VOI window CENTER,WIDTH (modality units). "
                                   + SPEC_FLAGS_HELP),
        voi: str = typer.Option(None, "--voi", help="dicom (each file's window) | model. " + SPEC_FLAGS_HELP),
        splits: Path = typer.Option(None, "--splits", help="Splits file (default: splits.json next to the labels "
                                    "file or masks folder); written once, then reused."),
        seed: int = typer.Option(0, "--seed", help="Seed of the patient split (used only when the splits file is new)."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
        out: Path = typer.Option(None, "--out", help="Also write dataset_check.json and .md into this folder."),
    ) -> None:
        """Report classes, modalities, photometric interpretations, sizes, spacings, transfer syntaxes and every
        unusable file with its reason; split by PatientID."""
        import json

        from engine.errors import SliceRTError
        from tools.dataset import open_folder, report_markdown

        try:
            ms = spec_from_cli(spec, task, classes, size, channels, window, voi)
            ds = open_folder(folder, ms, labels=labels, masks=masks, splits=splits, seed=seed)
        except SliceRTError as exc:
            typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
            raise typer.Exit(code=2) from None
        md = report_markdown(ds.report)
        if out is not None:
            from tools.io import write_json_atomic, write_text_atomic

            write_json_atomic(out / "dataset_check.json", ds.report, force=True)
            write_text_atomic(out / "dataset_check.md", md, force=True)
        typer.echo(json.dumps(ds.report, indent=2) if as_json else md)
