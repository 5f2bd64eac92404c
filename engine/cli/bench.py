"""`slicert bench`: per-stage latency of one or more bundles, interleaved, with reports users can trust."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer


def _busy_warning(env: dict[str, Any]) -> str | None:
    loads = [x[0] for x in (env.get("loadavg_before"), env.get("loadavg_after")) if x]
    cpus = env.get("cpus_usable") or 1
    if loads and max(loads) > 0.5 * cpus:
        return (
            f"the machine is busy (1-min load average up to {max(loads):.2f} on {cpus} usable cores): "
            f"latencies and tails will be noisy; ratios of interleaved configurations stay meaningful"
        )
    return None


def run_bench(
    bundles: list[str],
    *,
    input: str = "synthetic",
    n: int = 1000,
    warmup: int = 50,
    batch: int = 1,
    threads: int | None = None,
    backend: str | None = None,
    json_out: Path | None = None,
    md_out: Path | None = None,
    plot_out: Path | None = None,
    compare: bool = False,
    backends: list[str] | None = None,
    reference: str | None = None,
    pin: str | None = None,
    keep_gc: bool = False,
    shuffle: bool = False,
    force: bool = False,
    cold_start_repeats: int = 3,
    quiet: bool = False,
    console: Any = None,
) -> Any:
    """The body of `slicert bench` (callable from Python); returns the BenchmarkRun."""
    from rich.console import Console

    from engine.bench import configs as cfgmod
    from engine.bench import report
    from engine.bench.files import check_output_path
    from engine.bench.runner import run_benchmark
    from engine.bench.timing import TimingPolicy, check_counts, parse_cpus
    from engine.errors import InputError

    console = console or Console()
    err = Console(stderr=True)
    # Everything a user can get wrong is checked before the first model is loaded.
    check_counts(n, warmup)
    if not bundles:
        raise InputError("give at least one bundle")
    if backends:  # one configuration per bundle and backend, side by side (implies --compare)
        from engine.backends import backend_names

        unknown = sorted(set(backends) - set(backend_names()))
        if unknown or backend is not None:
            raise InputError(f"--backends takes names from {backend_names()} (got {backends}) and excludes --backend")
        bundles = [f"{b}{',' if ':' in b and '=' in b.rsplit(':', 1)[1] else ':'}backend={name},"
                   f"name={Path(b.split(':')[0]).stem}[{name}]" for b in bundles for name in backends]
        compare = True
    if len(bundles) > 1 and not compare:
        raise InputError(
            f"{len(bundles)} bundles given: pass --compare to benchmark them interleaved in one process"
        )
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"--batch must be an integer >= 1, got {batch!r}")
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}")
    if (
        isinstance(cold_start_repeats, bool)
        or not isinstance(cold_start_repeats, int)
        or cold_start_repeats < 0
    ):
        raise InputError(f"--cold-start-repeats must be an integer >= 0, got {cold_start_repeats!r}")
    outputs = [
        (p, w) for p, w in ((json_out, "JSON report"), (md_out, "Markdown report"), (plot_out, "plot")) if p
    ]
    if len({Path(p).resolve() for p, _ in outputs}) != len(outputs):
        raise InputError("--json, --md and --plot must name different files")
    for p, what in outputs:
        check_output_path(p, force=force, what=what)
    if plot_out:
        report.require_matplotlib()
    policy = TimingPolicy(disable_gc=not keep_gc, cpus=parse_cpus(pin) if pin else None)

    configs = []
    names: set[str] = set()
    decoded: dict[int, tuple[Any, dict[str, Any]]] = {}
    for text in bundles:
        path, kwargs, name = cfgmod.parse_config_spec(text)
        cfgmod.check_bundle_path(path)
        if name is None:  # label from the per-configuration options only (global ones apply to all)
            name = path.stem + (
                "" if not kwargs else "[" + ",".join(f"{k}={v}" for k, v in kwargs.items()) + "]"
            )
        if backend is not None:
            kwargs.setdefault("backend", backend)
        if threads is not None:
            kwargs.setdefault("threads", threads)
        cfgmod.check_load_kwargs(text, kwargs)
        in_channels = _bundle_in_channels(path)
        if (
            in_channels not in decoded
        ):  # one decoded input (or cine) shared by configurations that can share it
            decoded[in_channels] = cfgmod.parse_input(input, in_channels=in_channels)
        x, in_meta = decoded[in_channels]
        if name in names:
            raise InputError(f"two configurations are both named {name!r}: add name=LABEL to one of them")
        names.add(name)
        feed = {"inputs": x} if isinstance(x, list) else {"input": x}
        configs.append(
            cfgmod.SessionConfig(name, path, load_kwargs=kwargs, meta=in_meta, batch=batch, **feed)
        )
    if reference is not None and reference not in names:
        raise InputError(f"--reference {reference!r} is not one of the configurations {sorted(names)}")

    progress = None
    if not quiet:
        from rich.progress import Progress

        # auto_refresh=False: no render thread competing with the timed loop for the 2 cores; the bar is
        # redrawn from the runner's between-round callback, outside any sample.
        bar = Progress(console=err, auto_refresh=False, transient=True)
        tasks: dict[str, Any] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if not bar.live.is_started:
                bar.start()
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done)
            bar.refresh()

    try:
        run = run_benchmark(
            configs,
            n=n,
            warmup=warmup,
            policy=policy,
            schedule="shuffled" if shuffle else "round_robin",
            extra_settings={"threads": threads, "batch": batch, "backend": backend or "auto", "input": input},
            progress=progress,
        )
    finally:
        if progress is not None and bar.live.is_started:
            bar.stop()
    run.command = ["slicert", "bench", *sys.argv[2:]] if sys.argv[1:2] == ["bench"] else list(sys.argv)
    if cold_start_repeats:
        # After the timed loop (never during it): fresh processes, so imports and first-touch are paid again.
        from engine.bench.coldstart import measure_process_cold_start

        for c in configs:
            res = run.result(c.name)
            res.cold_start_process = measure_process_cold_start(
                c.bundle, input, c.load_kwargs, repeats=cold_start_repeats
            )
            if (res.meta.get("session_info") or {}).get("backend") == "openvino":
                # engine.load to first result with an empty and with a warm compiled-model cache.
                res.cold_start_process["by_compiled_cache"] = {
                    mode: measure_process_cold_start(
                        c.bundle, input, c.load_kwargs, repeats=cold_start_repeats, compiled_cache=mode
                    )["median_ms"]
                    for mode in ("cold", "warm")
                }
    if not quiet:
        report.render_table(run, reference=reference, console=console)
        warn = _busy_warning(run.environment)
        if warn:
            err.print(f"[yellow]warning:[/yellow] {warn}")
    written = []
    if json_out:
        written.append(report.write_json(run, json_out, force=force, reference=reference))
    if md_out:
        written.append(report.write_markdown(run, md_out, force=force, reference=reference))
    if plot_out:
        written.append(report.write_plot(run, plot_out, force=force))
    for p in written:
        err.print(f"wrote {p}")
    return run


def _bundle_in_channels(path: Path) -> int:
    try:
        from engine.bundle.reader import open_bundle
    except ImportError:
        return 1
    with open_bundle(path) as b:
        return int(b.spec.in_channels)


def register(app: typer.Typer) -> None:
    @app.command()
    def bench(
        bundles: list[str] = typer.Argument(
            ...,
            metavar="BUNDLE...",
            help="Bundle file(s); PATH[:key=value,...] passes engine.load options, "
            "e.g. zoo.slicert:backend=onnxruntime,threads=1,name=ort-1t",
        ),
        input: str = typer.Option(
            "synthetic",
            "--input",
            help="DICOM file (decoded on every call), raw .npy array, or synthetic[:HxW]",
        ),
        n: int = typer.Option(1000, "--n", help="Timed calls per configuration."),
        warmup: int = typer.Option(50, "--warmup", help="Untimed calls per configuration before timing."),
        batch: int = typer.Option(1, "--batch", help="Inputs per call."),
        threads: Optional[int] = typer.Option(
            None, "--threads", help="CPU threads (default: all usable cores)."
        ),
        backend: Optional[str] = typer.Option(None, "--backend", help="auto | openvino | onnxruntime | tensorrt"),
        json_out: Optional[Path] = typer.Option(
            None, "--json", help="Write the JSON report (raw samples kept)."
        ),
        md_out: Optional[Path] = typer.Option(None, "--md", help="Write a Markdown report."),
        plot_out: Optional[Path] = typer.Option(
            None, "--plot", help="Write a PNG (latency CDF + stage bars)."
        ),
        compare: bool = typer.Option(
            False, "--compare", help="Benchmark several bundles/options interleaved (A B A B ...)."
        ),
        backends: Optional[str] = typer.Option(
            None, "--backends", help="Comma-separated backends side by side, e.g. openvino,onnxruntime."
        ),
        reference: Optional[str] = typer.Option(
            None, "--reference", help="Configuration the ratios are against."
        ),
        pin: Optional[str] = typer.Option(None, "--pin", help="Pin the timed loop to CPUs, e.g. 0 or 0-1."),
        keep_gc: bool = typer.Option(False, "--keep-gc", help="Leave the garbage collector on while timing."),
        shuffle: bool = typer.Option(False, "--shuffle", help="Random (seeded) order within each round."),
        force: bool = typer.Option(False, "--force", help="Overwrite existing report files."),
        cold_start_repeats: int = typer.Option(
            3, "--cold-start-repeats", help="Fresh processes timed from launch to first result (0 = skip)."
        ),
    ) -> None:
        """Latency per stage (p50/p90/p99/p99.9/max), jitter, throughput, cold start, memory; --compare."""
        from engine.errors import SliceRTError

        try:
            run_bench(
                bundles,
                input=input,
                n=n,
                warmup=warmup,
                batch=batch,
                threads=threads,
                backend=backend,
                json_out=json_out,
                md_out=md_out,
                plot_out=plot_out,
                compare=compare,
                backends=[b.strip() for b in backends.split(",") if b.strip()] if backends else None,
                reference=reference,
                pin=pin,
                keep_gc=keep_gc,
                shuffle=shuffle,
                force=force,
                cold_start_repeats=cold_start_repeats,
            )
        except SliceRTError as exc:
            from engine.safe_text import safe

            typer.echo(f"error: {type(exc).__name__}: {safe(exc)}", err=True)
            raise typer.Exit(code=2) from None
