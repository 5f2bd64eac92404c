from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def worker(
        bundle: Path = typer.Option(..., "--bundle", help="The .slicert bundle to serve."),
        shm: str = typer.Option(..., "--shm", help="POSIX shared-memory name (the C client connects to it)."),
        supervise: bool = typer.Option(
            False, "--supervise", help="Own the segment and restart the worker when it dies or hangs."
        ),
        lanes: int = typer.Option(2, help="Client lanes (one per connected client)."),
        slots: int = typer.Option(4, help="Frame slots per lane."),
        max_frame_bytes: int = typer.Option(4 << 20, help="Largest frame a slot holds, in bytes."),
        max_mask_pixels: int = typer.Option(1 << 20, help="Largest label mask a slot holds, in pixels."),
        standby: bool = typer.Option(
            False,
            "--standby",
            help="With --supervise: keep a second, loaded worker waiting, so a restart "
            "takes milliseconds (costs a second worker's memory).",
        ),
        hang_timeout_ms: int = typer.Option(
            1000, help="A worker silent this long counts as hung (ms); must exceed the slowest frame."
        ),
        threads: int = typer.Option(None, help="CPU threads for the session."),
        precision: str = typer.Option("best", help="best or fp32/fp16/int8/mixed."),
        backend: str = typer.Option("auto", help="auto, onnxruntime or tensorrt."),
        spin_us: float = typer.Option(
            0.0,
            help="After a frame, poll this long (us) before sleeping: lower "
            "latency for back-to-back frames, at the cost of CPU.",
        ),
    ) -> None:
        """Serve a bundle to firmware over shared memory (isolated mode; C client in cpp/client)."""
        if standby and not supervise:
            raise typer.BadParameter("--standby needs --supervise (the supervisor keeps the standby)")
        from engine.worker import layout
        from engine.worker.main import WorkerOptions, run_standalone, run_supervised

        geometry = layout.Geometry(
            lane_count=lanes,
            slots_per_lane=slots,
            frame_capacity=max_frame_bytes,
            mask_capacity=max_mask_pixels,
            hang_timeout_ms=hang_timeout_ms,
        ).check()
        opts = WorkerOptions(
            bundle=str(bundle),
            shm=shm,
            threads=threads,
            precision=precision,
            backend=backend,
            spin_us=spin_us,
        )
        raise typer.Exit(
            run_supervised(opts, geometry, standby=standby) if supervise else run_standalone(opts, geometry)
        )
