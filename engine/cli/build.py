"""`slicert build`: model.onnx | export folder | quantize folder -> one `.slicert` bundle."""
from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def build(
        source: Path = typer.Argument(..., help="model.onnx, a `slicert export` folder or a `slicert quantize` folder."),
        out: Path | None = typer.Option(None, "--out", "-o", help="Bundle file to write (e.g. model.slicert); default "
                                        "for a folder: FOLDER/model.slicert, rebuilt only when its accuracy report changed."),
        precision: str = typer.Option("best", "--precision",
                                      help="fp32 | fp16 | int8 | mixed | best (every variant that passed its gate)."),
        target: str = typer.Option("auto", "--target", help="cpu | tensorrt | auto (engines when a GPU is present)."),
        meta: Path | None = typer.Option(None, "--meta", help="model.json sidecar, when not next to the model."),
        hardware_compat: str = typer.Option("none", "--hardware-compat",
                                            help="TensorRT: none | ampere+ (one engine for every Ampere+ GPU) | "
                                                 "same-cc."),
        version_compatible: bool = typer.Option(False, "--version-compatible",
                                                help="TensorRT: plan runs on later TensorRT via the lean runtime."),
        dla_core: int | None = typer.Option(None, "--dla-core", help="TensorRT: build for this DLA core (Jetson)."),
        max_batch: int = typer.Option(1, "--max-batch", help="Largest batch the engines/verification cover."),
        workspace_mb: int = typer.Option(1024, "--workspace-mb", help="TensorRT workspace limit (MiB)."),
        optimization_level: int = typer.Option(3, "--opt-level", help="TensorRT builder optimization level 0-5."),
        timing_cache: Path | None = typer.Option(None, "--timing-cache",
                                                    help="TensorRT timing cache file to load and update."),
        force: bool = typer.Option(False, "--force", help="Replace an existing bundle file."),
        sign: Path | None = typer.Option(None, "--sign", help="Ed25519 private key (PEM, `slicert keygen`) that "
                                                                 "signs the bundle's manifest."),
        time_cpu: bool = typer.Option(True, "--time-cpu/--no-time-cpu",
                                      help="Time every gated variant on every CPU backend here; `best` = fastest."),
    ) -> None:
        """Compile a model into one self-describing, checksummed bundle (.slicert)."""
        from rich.console import Console
        from rich.markup import escape

        from engine.bundle import build_bundle
        from engine.errors import SliceRTError

        console = Console()
        stamp = None
        if out is None:
            if not source.is_dir():
                typer.echo("error: InputError: --out is required when SOURCE is a model file", err=True)
                raise typer.Exit(code=2)
            out, stamp = source / "model.slicert", source / "model.source.json"
            if not force and _up_to_date(out, stamp, source / "accuracy_report.json"):
                console.print(f"[bold cyan]cached[/] {escape(str(out))} (built from the current accuracy report)")
                return
            force = force or stamp.is_file()  # a bundle this default wrote earlier is ours to replace
        try:
            with console.status(escape(f"building {out} from {source} ...")):
                report = build_bundle(source, out, precision=precision, target=target, meta=meta,
                                      hardware_compat=hardware_compat, version_compatible=version_compatible,
                                      dla_core=dla_core, max_batch=max_batch, force=force, workspace_mb=workspace_mb,
                                      optimization_level=optimization_level, timing_cache=timing_cache,
                                      sign_key=sign,
                                      time_cpu=time_cpu)
        except SliceRTError as exc:
            from engine.safe_text import safe

            typer.echo(f"error: {type(exc).__name__}: {safe(exc)}", err=True)
            raise typer.Exit(code=2) from None
        if stamp is not None:
            _write_stamp(stamp, source / "accuracy_report.json")
        size_kib = report.path.stat().st_size / 1024
        console.print(f"[bold green]wrote[/] {escape(str(report.path))} ({size_kib:.1f} KiB)")
        console.print(f"  variants: {', '.join(report.variants)}")
        for v, why in report.excluded.items():
            console.print(f"  [yellow]left out[/] {v}: {escape(why)}")
        for e in report.engines:
            console.print(escape(f"  engine: {e['plan']} ({e['device_name']}, TensorRT {e['trt_version']})"))
        if report.engines_not_built:
            console.print(escape(f"  no TensorRT engine: {report.engines_not_built}"))
        timed = report.manifest.get("cpu_timings") or {}
        for backend, per_variant in (timed.get("median_ms") or {}).items():
            cells = ", ".join(f"{v} {ms:.2f} ms" for v, ms in sorted(per_variant.items(), key=lambda kv: kv[1]))
            console.print(escape(f"  {backend} ({timed['threads']} thread(s)): {cells}; best = "
                                 f"{report.manifest['default_variant'].get(backend)}"))
        for note in report.notes:
            console.print(escape(f"  note: {note}"))
        if sign is not None:
            from engine.bundle import open_bundle

            with open_bundle(report.path) as b:
                console.print(escape(f"  signed by key {b.signature.signer}"))

    @app.command()
    def keygen(
        out: Path = typer.Argument(..., help="Private key file to write (PEM, mode 0600); the public key goes to "
                                             "<name>.pub.pem next to it."),
        force: bool = typer.Option(False, "--force", help="Replace existing key files."),
    ) -> None:
        """Make an Ed25519 key pair for `slicert build --sign` and `engine.load(..., trusted_keys=[...])`."""
        from engine.bundle.signing import generate_keypair
        from engine.errors import SliceRTError

        try:
            priv, pub, fp = generate_keypair(out, force=force)
        except (SliceRTError, OSError) as exc:
            typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
            raise typer.Exit(code=2) from None
        typer.echo(f"private key {priv} (keep it secret)\npublic key  {pub} (give it to loaders as trusted_keys)\n"
                   f"fingerprint {fp}")


def _report_sha(report: Path) -> str | None:
    import hashlib

    return hashlib.sha256(report.read_bytes()).hexdigest() if report.is_file() else None


def _up_to_date(bundle: Path, stamp: Path, report: Path) -> bool:
    """The default bundle of a folder exists, was built from this accuracy report and verifies."""
    import json

    from engine.bundle import open_bundle
    from engine.errors import SliceRTError

    if not (bundle.is_file() and stamp.is_file()):
        return False
    try:
        if json.loads(stamp.read_text()).get("accuracy_report_sha256") != _report_sha(report):
            return False
        with open_bundle(bundle):  # verifies every member's checksum
            return True
    except (OSError, ValueError, SliceRTError):
        return False


def _write_stamp(stamp: Path, report: Path) -> None:
    import json

    stamp.write_text(json.dumps({"accuracy_report_sha256": _report_sha(report)}))
