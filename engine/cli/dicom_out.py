"""`slicert dicom-out`: run a bundle on DICOM files and write each result as DICOM SEG + TID 1500 SR files
(docs/dicom-node.md)."""
from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("dicom-out")
    def dicom_out(
        bundle: Path = typer.Argument(..., help="The .slicert bundle."),
        images: list[Path] = typer.Argument(..., help="DICOM image files (every frame of a multi-frame image runs)."),
        out: Path = typer.Option(..., "--out", help="Folder for <image>.seg.dcm / <image>.seg-<frame>.dcm and "
                                                     "<image>.sr.dcm."),
        threads: int | None = typer.Option(None, "--threads", help="Inference threads (default: usable cores)."),
    ) -> None:
        """Write the SEG (segmenters) and SR of each image's result, referencing the image."""
        import engine
        from engine import dicom
        from engine.dicomout.seg import build_segs
        from engine.dicomout.sr import build_sr
        from engine.errors import SliceRTError

        out.mkdir(parents=True, exist_ok=True)
        failed = 0
        with engine.load(bundle, threads=threads) as session:
            for path in images:
                try:
                    img = dicom.read(path)
                    results = [session.run(img)] if hasattr(img, "pixels") else [session.run(f) for f in img]
                    segs = build_segs(results, path) if session.task == "segmentation" else []
                    sr = build_sr(results, path, segs=segs)
                except SliceRTError as exc:
                    typer.echo(f"{path}: {type(exc).__name__}: {exc}", err=True)
                    failed += 1
                    continue
                for k, seg in enumerate(segs):
                    name = f"{path.stem}.seg.dcm" if len(segs) == 1 else f"{path.stem}.seg-{k + 1:04d}.dcm"
                    seg.save_as(out / name, enforce_file_format=True)
                    typer.echo(str(out / name))
                sr.save_as(out / f"{path.stem}.sr.dcm", enforce_file_format=True)
                typer.echo(str(out / f"{path.stem}.sr.dcm"))
        if failed:
            raise typer.Exit(1)
