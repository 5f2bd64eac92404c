"""Benchmark reports: JSON (schema in SCHEMA.md), rich terminal table, Markdown, PNG plot.

matplotlib is imported only by `write_plot` (optional extra `slicert[plot]`).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from engine.bench.files import atomic_write, atomic_write_text, check_output_path
from engine.bench.runner import OTHER, TOTAL, BenchmarkRun, ConfigResult
from engine.bench.stats import STAT_KEYS
from engine.errors import InputError, SliceRTError

SCHEMA_NAME = "slicert.bench"
SCHEMA_VERSION = 1


class PlotUnavailable(SliceRTError, ImportError):
    """Plotting needs matplotlib, which is the optional extra `slicert[plot]`."""


# -- JSON ------------------------------------------------------------------------------------------
def _config_to_dict(c: ConfigResult) -> dict[str, Any]:
    return {
        "name": c.name,
        "meta": c.meta,
        "items_per_call": c.items_per_call,
        "cold_start_ms": c.cold_start_ms,
        "load_ms": c.load_ms,
        "first_inference_ms": c.first_inference_ms,
        "first_stages_ms": c.first_stages_ms,
        "rss_before_load_mb": c.rss_before_load_mb,
        "rss_after_load_mb": c.rss_after_load_mb,
        "peak_rss_mb": c.peak_rss_mb,
        "cold_start_process": c.cold_start_process,
        "stages": c.stages,
        "stats_ms": c.stats(),
        "samples_ns": {k: v.tolist() for k, v in c.samples_ns.items()},
    }


def to_dict(run: BenchmarkRun, *, reference: str | None = None) -> dict[str, Any]:
    """The report as a JSON-ready dict (schema `slicert.bench` version 1, see engine/bench/SCHEMA.md)."""
    return {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "slicert_version": run.environment.get("slicert"),
        "started_utc": run.started_utc,
        "finished_utc": run.finished_utc,
        "command": run.command,
        "settings": run.settings,
        "environment": run.environment,
        "configurations": [_config_to_dict(c) for c in run.configurations],
        "comparisons": run.comparisons(reference),
    }


def _req(d: dict[str, Any], key: str, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise InputError(f"benchmark report: {where} lacks {key!r}")
    return d[key]


def from_dict(d: dict[str, Any]) -> BenchmarkRun:
    """Rebuild a BenchmarkRun from a report dict; raises InputError on another schema or a broken file."""
    if _req(d, "schema", "report") != SCHEMA_NAME:
        raise InputError(
            f"not a SliceRT benchmark report: schema is {d.get('schema')!r}, expected {SCHEMA_NAME!r}"
        )
    version = _req(d, "schema_version", "report")
    if version != SCHEMA_VERSION:
        raise InputError(
            f"benchmark report schema_version {version!r} is not supported (this SliceRT reads "
            f"{SCHEMA_VERSION})"
        )
    configs = []
    for i, c in enumerate(_req(d, "configurations", "report")):
        where = f"configurations[{i}]"
        raw = _req(c, "samples_ns", where)
        if TOTAL not in raw:
            raise InputError(f"benchmark report: {where}.samples_ns lacks {TOTAL!r}")
        samples = {k: np.asarray(v, dtype=np.int64) for k, v in raw.items()}
        n = samples[TOTAL].size
        if any(v.ndim != 1 or v.size != n for v in samples.values()):
            raise InputError(f"benchmark report: {where}.samples_ns series differ in length")
        configs.append(
            ConfigResult(
                name=_req(c, "name", where),
                meta=dict(c.get("meta") or {}),
                items_per_call=int(_req(c, "items_per_call", where)),
                samples_ns=samples,
                load_ms=float(_req(c, "load_ms", where)),
                first_inference_ms=float(_req(c, "first_inference_ms", where)),
                cold_start_ms=float(_req(c, "cold_start_ms", where)),
                first_stages_ms=dict(c.get("first_stages_ms") or {}),
                rss_before_load_mb=c.get("rss_before_load_mb"),
                rss_after_load_mb=c.get("rss_after_load_mb"),
                peak_rss_mb=c.get("peak_rss_mb"),
                cold_start_process=c.get("cold_start_process"),
            )
        )
    return BenchmarkRun(
        configurations=configs,
        settings=dict(_req(d, "settings", "report")),
        environment=dict(_req(d, "environment", "report")),
        started_utc=_req(d, "started_utc", "report"),
        finished_utc=_req(d, "finished_utc", "report"),
        command=list(d.get("command") or []),
    )


def write_json(
    run: BenchmarkRun, path: str | os.PathLike[str], *, force: bool = False, reference: str | None = None
) -> Path:
    return atomic_write_text(path, dumps(to_dict(run, reference=reference)), force=force, what="JSON report")


def dumps(d: dict[str, Any]) -> str:
    """Indented JSON, except that each raw-sample series stays on one line (readable and ~3x smaller)."""
    series: dict[str, str] = {}
    shallow = dict(d)
    shallow["configurations"] = []
    for i, c in enumerate(d.get("configurations", [])):
        c = dict(c)
        packed = {}
        for k, v in c.get("samples_ns", {}).items():
            key = f"@@samples_{i}_{len(series)}@@"
            series[key] = json.dumps(v, separators=(",", ":"))
            packed[k] = key
        c["samples_ns"] = packed
        shallow["configurations"].append(c)
    text = json.dumps(shallow, indent=1, allow_nan=False)
    for key, value in series.items():
        text = text.replace(f'"{key}"', value, 1)
    return text + "\n"


def read_json(path: str | os.PathLike[str]) -> BenchmarkRun:
    try:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
    except FileNotFoundError:
        raise InputError(f"benchmark report {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"benchmark report {path} is not valid JSON: {exc}") from None
    return from_dict(d)


# -- text ------------------------------------------------------------------------------------------
def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.1f}"
    if v >= 10:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _series_order(c: ConfigResult, stats: dict[str, Any]) -> list[str]:
    """Series shown in tables: total, the stages that took time, other. Stages that are 0 on every
    call (h2d/d2h on a CPU backend, decode of an in-memory array) stay in the JSON but are not shown."""
    return [TOTAL] + [s for s in c.stages if s not in _idle_stages(c)] + ([OTHER] if OTHER in stats else [])


TAIL_SAMPLES = 1000  # below this, p99.9 is an interpolation between the two largest samples


def _tail_note(c: ConfigResult) -> str | None:
    n = int(c.samples_ns[TOTAL].size)
    if n >= TAIL_SAMPLES:
        return None
    return (f"p99.9 from {n} < {TAIL_SAMPLES} samples is an interpolation of the largest ones, "
            f"not a measured tail")


def _idle_stages(c: ConfigResult) -> list[str]:
    return [s for s in c.stages if not np.any(c.samples_ns[s])]


_COLS = ("p50", "p90", "p99", "p99_9", "max", "mean", "std")


def render_table(run: BenchmarkRun, *, reference: str | None = None, console: Any = None) -> None:
    """Print a per-stage latency table per configuration, a summary table and the comparisons."""
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from engine.safe_text import safe

    def shown(name: str) -> str:  # a configuration name may come from a bundle: no control bytes, no markup
        return escape(safe(name))

    if console is None:
        console = Console()
        if not console.is_terminal:  # piped to a file or CI log: never truncate numbers to 80 columns
            console.width = max(console.width, 130)
    n, warmup, schedule = run.settings.get("n"), run.settings.get("warmup"), run.settings.get("schedule")
    for c in run.configurations:
        stats = c.stats()
        lat = Table(
            title=f"{shown(c.name)}: latency per call (ms), n={n}, warm-up {warmup} excluded, {schedule}",
            box=box.SIMPLE_HEAD,
            title_justify="left",
            pad_edge=False,
        )
        lat.add_column("stage", no_wrap=True)
        for col in _COLS:
            lat.add_column(col.replace("_", "."), justify="right", no_wrap=True)
        lat.add_column("p99/p50", justify="right", no_wrap=True)
        for s in _series_order(c, stats):
            st = stats[s]
            jit = st["jitter_p99_p50"]
            lat.add_row(
                s,
                *(fmt_ms(st[k]) for k in _COLS),
                f"{jit:.2f}" if jit is not None else "-",
                style="bold" if s == TOTAL else None,
            )
        notes = []
        idle = _idle_stages(c)
        if idle:
            notes.append(f"0 on every call (not shown): {', '.join(idle)}")
        tail_note = _tail_note(c)
        if tail_note:
            notes.append(tail_note)
        if notes:
            lat.caption = "; ".join(notes)
            lat.caption_justify = "left"
        console.print(lat)
    summary = Table(title="Per configuration", box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False)
    for col in (
        "configuration",
        "items/s",
        "cold start ms",
        "load ms",
        "1st call ms",
        "new process ms",
        "RSS MiB",
        "peak MiB",
    ):
        summary.add_column(col, justify="left" if col == "configuration" else "right", no_wrap=True)
    for c in run.configurations:
        tp = c.stats()[TOTAL]["throughput_per_s"]
        summary.add_row(
            shown(c.name),
            f"{tp:.1f}" if tp else "-",
            fmt_ms(c.cold_start_ms),
            fmt_ms(c.load_ms),
            fmt_ms(c.first_inference_ms),
            _process_cold_txt(c),
            f"{c.rss_after_load_mb:.0f}" if c.rss_after_load_mb is not None else "-",
            f"{c.peak_rss_mb:.0f}" if c.peak_rss_mb is not None else "-",
        )
    console.print(summary)
    comps = run.comparisons(reference)
    if comps:
        cmp_t = Table(
            title="Speed-up vs reference (total latency; > 1 = faster)",
            box=box.SIMPLE_HEAD,
            title_justify="left",
            pad_edge=False,
        )
        for col in ("configuration", "reference", "p50 ratio", "paired median [95% CI]"):
            cmp_t.add_column(col, justify="left" if col in ("configuration", "reference") else "right")
        for e in comps:
            cmp_t.add_row(shown(e["name"]), shown(e["reference"]), f"{e['speedup_p50']:.2f}x", _paired_txt(e))
        console.print(cmp_t)
    console.print(
        f"[dim]{run.settings.get('gc')}; CPU affinity {run.settings.get('cpu_affinity') or 'not pinned'}; "
        f"load average {run.environment.get('loadavg_before')} -> "
        f"{run.environment.get('loadavg_after')}[/dim]"
    )


def _process_cold_txt(c: ConfigResult) -> str:
    """Median of `import engine` + load + first result in fresh processes (spawn-to-exit in brackets)."""
    p = c.cold_start_process
    if not p:
        return "-"
    m = p["median_ms"]
    txt = f"{fmt_ms(m['import_to_first_result_ms'])} ({fmt_ms(m['spawn_to_exit_ms'])})"
    by_cache = p.get("by_compiled_cache")  # OpenVINO: empty vs warm compiled-model cache
    if by_cache:
        txt += (f"; compiled cache cold {fmt_ms(by_cache['cold']['import_to_first_result_ms'])}, "
                f"warm {fmt_ms(by_cache['warm']['import_to_first_result_ms'])}")
    return txt


def _paired_txt(e: dict[str, Any]) -> str:
    p = e.get("paired_speedup")
    if not p:
        return "-"
    return f"{p['median']:.2f}x [{p['ci95'][0]:.2f}, {p['ci95'][1]:.2f}]"


def to_markdown(run: BenchmarkRun, *, reference: str | None = None, title: str = "SliceRT benchmark") -> str:
    env = run.environment
    s = run.settings
    lines = [
        f"# {title}",
        "",
        f"- Machine: {env.get('cpu_model')} ({env.get('cpus_usable')} usable of "
        f"{env.get('cpu_count')} cores; "
        f"flags {' '.join(env.get('cpu_flags') or []) or '-'}), {env.get('platform')}",
        f"- Software: SliceRT {env.get('slicert')}, Python {env.get('python')}, "
        + ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v),
        f"- GPUs: {', '.join(g.get('name', '?') for g in env.get('gpus') or []) or 'none'}",
        f"- Run: {run.started_utc} to {run.finished_utc}; n={s.get('n')} timed rounds per "
        f"configuration after "
        f"{s.get('warmup')} warm-up rounds, schedule {s.get('schedule')} (interleaved)",
        f"- Timing: {s.get('clock')}; {s.get('gc')}; CPU affinity "
        f"{s.get('cpu_affinity') or 'not pinned'}; threads {s.get('threads', 'default')}",
        f"- Load average before/after: {env.get('loadavg_before')} / {env.get('loadavg_after')}",
        "",
    ]
    if run.command:
        lines += ["Command:", "", "```", " ".join(run.command), "```", ""]
    lines += [
        "## Latency per stage (ms)",
        "",
        "| configuration | stage | " + " | ".join(c.replace("_", ".") for c in _COLS) + " | p99/p50 |",
        "|---|---|" + "---:|" * (len(_COLS) + 1),
    ]
    for c in run.configurations:
        stats = c.stats()
        for s_name in _series_order(c, stats):
            st = stats[s_name]
            jit = st["jitter_p99_p50"]
            jit_txt = f"{jit:.2f}" if jit is not None else "-"
            lines.append(
                f"| {c.name} | {s_name} | " + " | ".join(fmt_ms(st[k]) for k in _COLS) + f" | {jit_txt} |"
            )
    flagged = {c.name: c.meta for c in run.configurations if c.meta.get("flagged_results")}
    if flagged:  # results the trust checks flagged (docs/trust.md): timed like any other, never hidden
        lines += ["", "Flagged results (trust checks): " + "; ".join(
            f"{k}: {m['flagged_results']} calls flagged, first inference and warm-up included "
            f"({'; '.join(m.get('flags') or [])})"
            for k, m in flagged.items()) + "."]
    idle = {c.name: _idle_stages(c) for c in run.configurations if _idle_stages(c)}
    if idle:
        lines += [
            "",
            "Stages that were 0 on every call (not shown): "
            + "; ".join(f"{k}: {', '.join(v)}" for k, v in idle.items())
            + ".",
        ]
    lines += [
        "",
        "## Per configuration",
        "",
        "| configuration | throughput/s | cold start ms | load ms | first inference ms | new "
        "process: import + "
        "load + first result ms (spawn to exit) | RSS after load MiB | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in run.configurations:
        tp = c.stats()[TOTAL]["throughput_per_s"]
        rss = f"{c.rss_after_load_mb:.0f}" if c.rss_after_load_mb is not None else "-"
        peak = f"{c.peak_rss_mb:.0f}" if c.peak_rss_mb is not None else "-"
        lines.append(
            f"| {c.name} | {tp:.1f} | {fmt_ms(c.cold_start_ms)} | {fmt_ms(c.load_ms)} | "
            f"{fmt_ms(c.first_inference_ms)} | {_process_cold_txt(c)} | {rss} | {peak} |"
        )
    comps = run.comparisons(reference)
    if comps:
        lines += [
            "",
            "## Speed-up vs reference (total latency)",
            "",
            "| configuration | reference | p50 ratio | paired per-round median [95% CI] |",
            "|---|---|---:|---:|",
        ]
        for e in comps:
            lines.append(f"| {e['name']} | {e['reference']} | {e['speedup_p50']:.2f}x | {_paired_txt(e)} |")
    tail_notes = {_tail_note(c) for c in run.configurations} - {None}
    lines += [
        "",
        f"Cold start: {s.get('cold_start')}. Peak RSS is the process high-water mark "
        "(shared by all configurations of the run).",
        *(f"{t}." for t in sorted(tail_notes)),
        "",
    ]
    return "\n".join(lines)


def write_markdown(
    run: BenchmarkRun, path: str | os.PathLike[str], *, force: bool = False, reference: str | None = None
) -> Path:
    return atomic_write_text(path, to_markdown(run, reference=reference), force=force, what="Markdown report")


# -- plot ------------------------------------------------------------------------------------------
def require_matplotlib() -> None:
    """Raise PlotUnavailable now (before a long run) if matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise PlotUnavailable(
            "--plot needs matplotlib, which is not installed: pip install slicert[plot]"
        ) from exc


def write_plot(run: BenchmarkRun, path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """PNG: empirical CDF of total latency per configuration (left), mean time per stage stacked (right)."""
    require_matplotlib()
    check_output_path(path, force=force, what="plot")
    # Figure + Agg canvas directly: no pyplot global state, no GUI backend selection on a headless box.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax_cdf, ax_bar = fig.subplots(1, 2, width_ratios=(1.2, 1))
    for c in run.configurations:
        ms = np.sort(c.series_ms()[TOTAL])
        y = np.arange(1, ms.size + 1) / ms.size
        ax_cdf.step(ms, y, where="post", label=f"{c.name} (p50 {fmt_ms(float(np.median(ms)))} ms)")
    ax_cdf.set_xscale("log")
    ax_cdf.set_xlabel("end-to-end latency per call (ms, log scale)")
    ax_cdf.set_ylabel("fraction of calls")
    ax_cdf.set_title(f"Latency CDF (n={run.settings.get('n')} per configuration, interleaved)")
    for q in (0.5, 0.99):
        ax_cdf.axhline(q, color="0.7", lw=0.8, ls=":")
    ax_cdf.grid(True, which="both", alpha=0.3)
    ax_cdf.legend(fontsize=8, loc="lower right")

    names = [c.name for c in run.configurations]
    stage_names: list[str] = []
    for c in run.configurations:
        for s in [*(x for x in c.stages if x not in _idle_stages(c)), OTHER]:
            if s not in stage_names:
                stage_names.append(s)
    left = np.zeros(len(names))
    cmap = __import__("matplotlib").colormaps["tab10"]
    series = [c.series_ms() for c in run.configurations]
    for k, s in enumerate(stage_names):
        means = np.array([float(ser[s].mean()) if s in ser else 0.0 for ser in series])
        ax_bar.barh(names, means, left=left, label=s, color=cmap(k % 10))
        left += means
    # Configurations without stage timings show their total as a single bar.
    labelled = False
    for c in run.configurations:
        if not c.stages:
            ax_bar.barh(
                [c.name],
                [float(c.series_ms()[TOTAL].mean())],
                color="0.6",
                label=None if labelled else "total (no stages)",
            )
            labelled = True
    ax_bar.invert_yaxis()
    ax_bar.set_xlabel("mean time per call (ms); means add up to the mean total")
    ax_bar.set_title("Where the time goes (mean per stage)")
    ax_bar.legend(
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=min(len(stage_names) + 1, 7),
        frameon=False,
    )
    ax_bar.grid(True, axis="x", alpha=0.3)

    def _save(fh: Any) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        fh.write(buf.getvalue())

    return atomic_write(path, _save, force=force, what="plot")


__all__ = [
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "PlotUnavailable",
    "to_dict",
    "from_dict",
    "write_json",
    "read_json",
    "render_table",
    "to_markdown",
    "write_markdown",
    "write_plot",
    "require_matplotlib",
    "STAT_KEYS",
]
