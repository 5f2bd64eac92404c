"""Run the four baselines interleaved on real and simulated inputs and write benchmarks/RESULTS.md.

    python benchmarks/run_baselines.py --force                 # the full run (what RESULTS.md quotes)
    python benchmarks/run_baselines.py --quick --out /tmp/r.md  # a 1-minute smoke run

Per input set and thread budget, one process runs (1) PyTorch eager teacher, (2) ONNX Runtime teacher,
(3) ONNX Runtime student (all three with the user preprocessing of tools/baselines.py) and (4) the
SliceRT bundle, interleaved round by round (A B C D A B C D ...), so a busy neighbour slows all four
alike. Ratios are of medians and, per round, paired (median with a bootstrap 95 % CI). Every run's raw
samples go to .benchmarks/baselines/*.json (git-ignored; schema slicert.bench v1, engine/bench/SCHEMA.md);
`--report-only` rebuilds RESULTS.md from them.

The Python overhead of Session.run is measured separately: Session.run(raw array) interleaved with the
same backend calls made directly (backend.stage + backend.infer + the same post-processing math).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from tools import baselines as bl  # noqa: E402
from tools import zoo  # noqa: E402
from tools.baselines import CINE, CR_FILE, SHORT, TASKS, _simulated, configs_for, input_sets  # noqa: E402,F401
from engine.bench import report  # noqa: E402
from engine.bench.files import atomic_write_text, check_output_path  # noqa: E402
from engine.bench.runner import TOTAL, BenchmarkRun, run_benchmark  # noqa: E402
from engine.bench.stats import paired_difference  # noqa: E402
from engine.bench.timing import TimingPolicy  # noqa: E402

GOALS = {"vs_torch": 5.0, "vs_ort_teacher": 2.5, "jitter": 1.3, "overhead_us": 30.0}














def overhead(
    art: zoo.Artifacts, x: np.ndarray, *, n: int, warmup: int, threads: int, extra: dict[str, Any]
) -> BenchmarkRun:
    """Session.run(x) interleaved with (a) the backend calls it wraps and (b) the raw native + ORT calls
    under those."""
    import engine
    from engine.bench.configs import SessionConfig

    with engine.load(art.bundle, threads=threads) as s:
        variant = s.variant
        model_file = s.info.get("model_file") or s.info.get("model")
        optimized = bool(s.info.get("model_optimized"))
    sess = SessionConfig("Session.run", art.bundle, x, load_kwargs={"threads": threads})
    direct = bl.backend_direct("backend calls", art.bundle, x, variant=variant, threads=threads)
    raw = bl.raw_calls(
        "raw calls", art.bundle, x, model_file=model_file, optimized=optimized, threads=threads
    )
    # Shuffled order per round: with a fixed order each configuration always follows the same other one
    # (same cache state), a systematic bias of a few µs, the size of what is measured here.
    return run_benchmark(
        [sess, direct, raw],
        n=n,
        warmup=warmup,
        policy=TimingPolicy(),
        schedule="shuffled",
        extra_settings={**extra, "variant": variant},
    )


def overhead_summary(run: BenchmarkRun) -> dict[str, Any]:
    """Overhead of Session.run vs (a) backend calls and (b) raw calls: median per-round difference + CI."""
    a = run.result("Session.run").series_ms()
    b = run.result("backend calls").series_ms()
    c = run.result("raw calls").series_ms()
    vs_backend = paired_difference(a[TOTAL], b[TOTAL])
    vs_raw = paired_difference(a[TOTAL], c[TOTAL])
    st = run.settings
    return {
        "title": st.get("title"),
        "variant": st.get("variant"),
        "threads": st.get("threads"),
        "n": st.get("n"),
        "session_p50_ms": float(np.median(a[TOTAL])),
        "direct_p50_ms": float(np.median(b[TOTAL])),
        "raw_p50_ms": float(np.median(c[TOTAL])),
        "overhead_us": vs_backend["median"] * 1e3,
        "overhead_ci95_us": [v * 1e3 for v in vs_backend["ci95"]],
        "overhead_raw_us": vs_raw["median"] * 1e3,
        "overhead_raw_ci95_us": [v * 1e3 for v in vs_raw["ci95"]],
        "unattributed_p50_us": float(np.median(a["other"])) * 1e3,
        "run_stats": {c.name: {k: v["p50"] for k, v in c.stats().items()} for c in run.configurations},
    }


# -- report ---------------------------------------------------------------------------------------------
def _p50(run: BenchmarkRun, name: str) -> float:
    return float(np.median(run.result(name).series_ms()[TOTAL]))


def _ratio_txt(run: BenchmarkRun, ref: str, name: str) -> str:
    entry = next(e for e in run.comparisons(ref) if e["name"] == name)
    p = entry["paired_speedup"]
    return f"{entry['speedup_p50']:.2f}x (paired {p['median']:.2f}x [{p['ci95'][0]:.2f}, {p['ci95'][1]:.2f}])"


def section(run: BenchmarkRun) -> list[str]:
    st = run.settings
    title, agreement, json_name = (
        f"{st['title']}, {st['threads']} thread(s)",
        st["input_agreement"],
        st["json"],
    )
    lines = [
        f"### {title}",
        "",
        f"Input: {run.configurations[0].meta.get('input')}.  ",
        f"Raw samples: `{json_name}`. User-vs-SliceRT model input agreement on the "
        f"first input: max |diff| {agreement['max_abs_diff']:.2g} over a value range of "
        f"{agreement['value_range']:.3g}.",
        "",
        "| configuration | p50 ms | p90 ms | p99 ms | p99/p50 | decode | preprocess | infer | postprocess "
        "| speed-up vs (1) | speed-up vs (2) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for c in run.configurations:
        st = c.stats()
        t = st[TOTAL]

        def stage(s: str, st: dict[str, Any] = st) -> str:
            return report.fmt_ms(st[s]["p50"]) if s in st else "-"

        vs1 = "1" if c.name == SHORT[1] else _ratio_txt(run, SHORT[1], c.name)
        vs2 = "1" if c.name == SHORT[2] else _ratio_txt(run, SHORT[2], c.name)
        lines.append(
            f"| {c.name} | {report.fmt_ms(t['p50'])} | {report.fmt_ms(t['p90'])} | {report.fmt_ms(t['p99'])}"
            f" | {t['jitter_p99_p50']:.2f} | {stage('decode')} | {stage('preprocess')} | {stage('infer')} | "
            f"{stage('postprocess')} | {vs1} | {vs2} |"
        )
    lines += [
        "",
        "Stage columns are medians of each stage (ms); SliceRT's stages are its own `Result.timings_ms`.",
        "",
    ]
    return lines


def _stage_p50(run: BenchmarkRun, name: str, stage: str) -> float | None:
    st = run.result(name).stats()
    return st[stage]["p50"] if stage in st else None


def observations(runs: list[BenchmarkRun], overheads: list[dict[str, Any]]) -> list[str]:
    """Where SliceRT loses time, stated from the medians: (4) against the same student in ORT (3) with the
    user's NumPy/OpenCV stages, and against itself at one thread."""
    out = []
    one_thread = {r.settings["title"]: r for r in runs if r.settings["threads"] == 1}
    for run in runs:
        title, threads = run.settings["title"], run.settings["threads"]
        where = f"{title}, {threads} thread(s)"
        for c in run.configurations:
            if not c.name.startswith(SHORT[4]):
                continue
            for stage, what in (
                ("infer", "model (vs the FP32 student in ONNX Runtime)"),
                ("preprocess", "preprocessing (vs the user's NumPy/OpenCV)"),
                ("postprocess", "post-processing (vs the user's NumPy/OpenCV)"),
            ):
                ours, theirs = _stage_p50(run, c.name, stage), _stage_p50(run, SHORT[3], stage)
                if ours is not None and theirs and ours > 1.05 * theirs and ours - theirs > 0.05:
                    out.append(
                        f"{where}: {c.name} {what} is slower: {report.fmt_ms(ours)} ms vs "
                        f"{report.fmt_ms(theirs)} ms (p50)."
                    )
            base = one_thread.get(title)
            if threads > 1 and base is not None and c.name in {x.name for x in base.configurations}:
                t1 = float(np.median(base.result(c.name).series_ms()[TOTAL]))
                tn = float(np.median(c.series_ms()[TOTAL]))
                if tn > 1.1 * t1:
                    out.append(
                        f"{where}: {c.name} is slower with {threads} threads than with 1 "
                        f"({report.fmt_ms(tn)} vs {report.fmt_ms(t1)} ms p50; separate runs): the extra "
                        f"threads waited for cores."
                    )
    for o in overheads:
        st = o["run_stats"]
        extra = {
            s: st["Session.run"].get(s, 0.0) - st["backend calls"].get(s, 0.0)
            for s in ("preprocess", "infer", "postprocess", "other")
        }
        parts = ", ".join(f"{s} {v * 1e3:+.1f} µs" for s, v in extra.items())
        out.append(
            f"Session.run overhead, {o['title']}, {o['threads']} thread(s), by stage (p50 of Session.run "
            f"minus p50 of the direct backend calls): {parts}."
        )
    return out


def _machine_lines(env: dict[str, Any], runs: list[BenchmarkRun]) -> list[str]:
    loads = [r.environment.get(k) for r in runs for k in ("loadavg_before", "loadavg_after")]
    loads = [x[0] for x in loads if x]
    busy = bool(loads) and max(loads) > 0.5 * (env.get("cpus_usable") or 1)
    gpu = env.get("gpus") or f"none ({env.get('cuda_reason')})"
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v)
    return [
        "## Machine",
        "",
        f"- CPU: {env.get('cpu_model')}, {env.get('cpus_usable')} usable of {env.get('cpu_count')} cores, "
        f"flags {' '.join(env.get('cpu_flags') or [])}",
        f"- OS: {env.get('platform')}; Python {env.get('python')}",
        f"- Software: SliceRT {env.get('slicert')}, {versions}, opencv {_cv2_version()}",
        f"- GPU: {gpu}",
        f"- Load average (1 min) during the runs: {min(loads, default='?')} to {max(loads, default='?')} on "
        f"{env.get('cpus_usable')} cores"
        + (
            ": the machine was SHARED and busy. Absolute latencies and tails are noisy (a 5 ms scheduler "
            "time slice shows up as p90/p99), interleaved ratios much less so; multi-thread budgets suffer "
            "most. Re-run on a quiet machine for final numbers."
            if busy
            else "."
        ),
        "",
    ]


def _method_lines(runs: list[BenchmarkRun]) -> list[str]:
    st = runs[0].settings if runs else {}
    return [
        "## Method",
        "",
        f"- {st.get('n')} timed rounds after {st.get('warmup')} warm-up rounds per input set and thread "
        "budget; in each round every configuration runs once, in order (1) (2) (3) (4) (interleaved). "
        "Timing: `time.perf_counter_ns` around each whole call; GC collected before and disabled during "
        "the timed loop.",
        "- (1) FP32 teacher, PyTorch eager (`torch.inference_mode`); (2) the same teacher exported to ONNX, "
        "ONNX Runtime CPU (all graph optimizations); (3) FP32 student, ONNX Runtime; all three with the "
        "user preprocessing `pydicom.dcmread` + `apply_modality_lut` + `apply_voi_lut` + NumPy inversion + "
        "`cv2.resize(INTER_AREA)` + NumPy normalization, and NumPy/OpenCV post-processing. (4) SliceRT "
        "`engine.load(bundle, precision=...)` + `Session.run(x)`: fused native preprocessing into the bound "
        "input, ONNX Runtime IOBinding, native post-processing; one configuration per INT8/mixed variant.",
        "- Thread budget: every library gets the same number of threads (`torch.set_num_threads`, ORT "
        "`intra_op_num_threads`, SliceRT `threads=`). Each budget is a separate interleaved run.",
        "- DICOM inputs are decoded on every call (end to end); cine frames are decoded once before timing "
        "for every configuration alike (frames reach a scanner's pipeline in memory).",
        "- Speed-up = p50 of the reference / p50 of the configuration; the paired value is the median of "
        "per-round ratios with a bootstrap 95 % CI.",
        "",
    ]


def write_results(
    path: Path,
    *,
    runs: list[BenchmarkRun],
    overhead_runs: list[BenchmarkRun],
    failures: list[str],
    force: bool,
) -> None:
    """RESULTS.md from the runs (as measured now, or as read back from their JSON)."""
    env = (runs or overhead_runs)[0].environment if (runs or overhead_runs) else {}
    command = (runs or overhead_runs)[0].command if (runs or overhead_runs) else []
    finished = max((r.finished_utc for r in runs + overhead_runs), default="?")
    models = sorted({r.settings.get("models", "?") for r in runs + overhead_runs})
    overheads = [overhead_summary(r) for r in overhead_runs]
    lines = [
        "# SliceRT benchmark results",
        "",
        f"Latest run finished {finished}. Reproduce it with:",
        "",
        "```",
        " ".join(shlex.quote(a) for a in command),
        "```",
        "",
        "Final numbers (quiet machine, trained zoo from `slicert export --out slicert-models`; bundles are "
        "quantized and built when the zoo has none), one command:",
        "",
        "```",
        "python benchmarks/run_baselines.py --zoo slicert-models --build-bundles --force",
        "```",
        "",
    ]
    lines += _machine_lines(env, runs + overhead_runs) + _method_lines(runs)
    lines += ["## Models", ""] + [f"- {m}" for m in models] + [""]
    lines += [
        "## Headline",
        "",
        "Ratios are of medians (p50) of end-to-end latency per slice, measured interleaved in the same run; "
        "per-round paired ratios with CIs are in the details below.",
        "",
        "| input | SliceRT variant | threads | (4) p50 ms | (4) p99/p50 | (4) vs (1) | (4) vs (2) | "
        "goal vs (1) >= 5x | goal vs (2) >= 2.5x | goal p99/p50 <= 1.3 |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---|",
    ]

    def ok(b: bool) -> str:
        return "met" if b else "NOT met"

    for run in runs:
        for c in run.configurations:
            if not c.name.startswith(SHORT[4]):
                continue
            s4 = c.stats()[TOTAL]
            v1 = _p50(run, SHORT[1]) / s4["p50"]
            v2 = _p50(run, SHORT[2]) / s4["p50"]
            lines.append(
                f"| {run.settings['title']} | {c.name[len(SHORT[4]) + 1 :]} | {run.settings['threads']} | "
                f"{report.fmt_ms(s4['p50'])} | {s4['jitter_p99_p50']:.2f} | {v1:.2f}x | {v2:.2f}x | "
                f"{ok(v1 >= GOALS['vs_torch'])} | {ok(v2 >= GOALS['vs_ort_teacher'])} | "
                f"{ok(s4['jitter_p99_p50'] <= GOALS['jitter'])} |"
            )
    lines += [""]
    if overheads:
        lines += [
            "## Python overhead of Session.run",
            "",
            "Session.run(raw simulated image) interleaved (shuffled order per round) with (a) the backend "
            "calls it wraps, made directly (backend.stage = fused preprocessing into the bound input, "
            "backend.infer = ONNX Runtime run_with_iobinding, the same post-processing math) and (b) the raw "
            "calls under those "
            "(engine.preprocess.preprocess_into + InferenceSession.run_with_iobinding + the same math, no "
            "SliceRT Python at all). Overhead = median of per-round differences [bootstrap 95% CI]. "
            "Goal: <= 30 µs beyond the backend call (a); (b) is the stricter floor.",
            "",
            "| model | variant | threads | n | Session.run p50 ms | (a) p50 ms | (b) p50 ms | "
            "overhead vs (a) µs | overhead vs (b) µs | Session time outside its stages, p50 µs | goal (a) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for o in overheads:
            ci, ci_raw = o["overhead_ci95_us"], o["overhead_raw_ci95_us"]
            lines.append(
                f"| {o['title']} | {o['variant']} | {o['threads']} | {o['n']} | {o['session_p50_ms']:.3f} | "
                f"{o['direct_p50_ms']:.3f} | {o['raw_p50_ms']:.3f} | {o['overhead_us']:.1f} [{ci[0]:.1f}, "
                f"{ci[1]:.1f}] | {o['overhead_raw_us']:.1f} [{ci_raw[0]:.1f}, {ci_raw[1]:.1f}] | "
                f"{o['unattributed_p50_us']:.1f} | {ok(o['overhead_us'] <= GOALS['overhead_us'])} |"
            )
        lines += [""]
    lines += ["## Observations (computed from the numbers above)", ""]
    lines += [f"- {o}" for o in observations(runs, overheads)] or ["- none"]
    lines += ["", "## Details", ""]
    for run in runs:
        lines += section(run)
    if failures:
        lines += ["## Not measured", ""] + [f"- {f}" for f in failures] + [""]
    lines += [
        "## Honesty notes",
        "",
        "- Real inputs: the chest CR `RG1_UNCR.dcm` (pydicom-data) and the ultrasound cine "
        "`ultrasound-multiframe.dcm` (deid-data). They are real images but out of the models' training "
        "distribution: they measure speed only; the models' outputs on them mean nothing.",
        "- Simulated inputs are the toolchain's simulated test splits (see the dataset cards).",
        "- Nothing here is a clinical claim.",
        "",
    ]
    atomic_write_text(path, "\n".join(lines), force=force, what="results")


def _cv2_version() -> str:
    try:
        import cv2

        return cv2.__version__
    except ImportError:
        return "not installed"


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def read_runs(json_dir: Path) -> tuple[list[BenchmarkRun], list[BenchmarkRun]]:
    """(baseline runs, overhead runs) written by an earlier measurement into json_dir."""
    runs, overhead_runs = [], []
    for f in sorted(json_dir.glob("*.json")):
        run = report.read_json(f)
        kind = run.settings.get("kind")
        if kind == "baselines":
            runs.append(run)
        elif kind == "overhead":
            overhead_runs.append(run)
    runs.sort(key=lambda r: (r.settings.get("order", 0), r.settings["threads"]))
    overhead_runs.sort(key=lambda r: (r.settings.get("order", 0), r.settings["threads"]))
    return runs, overhead_runs


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="timed rounds per input set and thread budget")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument(
        "--threads", default=None, help="comma-separated thread budgets (default: 1 and all cores)"
    )
    ap.add_argument("--tasks", default="cxr_nodule,us_phantom")
    ap.add_argument(
        "--zoo",
        type=Path,
        default=None,
        help="toolchain output directory (`slicert export --out DIR`); without it: stand-ins",
    )
    ap.add_argument(
        "--build-bundles",
        action="store_true",
        help="with --zoo: quantize + build the student bundle into --workdir if the zoo has none",
    )
    ap.add_argument(
        "--workdir",
        type=Path,
        default=ROOT / ".slicert-cache" / "bench",
        help="where stand-in models (and --build-bundles bundles) are built, cached",
    )
    ap.add_argument("--precision", default="best")
    ap.add_argument("--sim-images", type=int, default=16)
    ap.add_argument("--overhead-n", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    # Raw samples (~1 MB per full run) stay out of git: .benchmarks/ is ignored, RESULTS.md is the record.
    ap.add_argument("--json-dir", type=Path, default=ROOT / ".benchmarks" / "baselines")
    ap.add_argument("--quick", action="store_true", help="smoke run: n=20, warm-up 3, overhead n=200")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite --out from the JSON already in --json-dir, measuring nothing",
    )
    ap.add_argument("--force", action="store_true", help="overwrite --out and the JSON files")
    args = ap.parse_args(argv)
    check_output_path(args.out, force=args.force, what="results")
    if args.report_only:
        runs, overhead_runs = read_runs(args.json_dir)
        if not runs and not overhead_runs:
            raise SystemExit(f"no benchmark JSON in {args.json_dir}")
        write_results(args.out, runs=runs, overhead_runs=overhead_runs, failures=[], force=args.force)
        print(f"wrote {args.out}", file=sys.stderr)
        return 0
    if args.quick:
        args.n, args.warmup, args.overhead_n = 20, 3, 200
    from engine.envinfo import environment, usable_cpus

    budgets = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, usable_cpus()})
    args.json_dir.mkdir(parents=True, exist_ok=True)
    for stale in args.json_dir.glob("*.json"):  # one run's files only: never mix two runs in one report
        if not args.force:
            raise SystemExit(
                f"{args.json_dir} holds results of an earlier run ({stale.name}); pass --force "
                f"to replace them or choose another --json-dir"
            )
    for stale in args.json_dir.glob("*.json"):
        stale.unlink()
    env = environment()
    command = ["python", "benchmarks/run_baselines.py", *argv]
    runs, overhead_runs, failures = [], [], []
    order = 0
    for dataset in args.tasks.split(","):
        if args.zoo is not None:
            art = zoo.from_zoo(dataset, args.zoo, workdir=args.workdir, build_missing=args.build_bundles)
        else:
            art = zoo.standin(dataset, args.workdir)
        models = f"{dataset} ({art.task}): {art.provenance}"
        for inputs, spec_slicert in input_sets(art, args.sim_images):
            agreement = bl.input_agreement(inputs, art.spec, spec_slicert)
            for th in budgets:
                order += 1
                title = f"{dataset}: {inputs.name}"
                json_name = _rel(
                    args.json_dir / f"{dataset}-{'real' if inputs.real else 'simulated'}-{th}t.json"
                )
                print(
                    f"[{title}, {th} thread(s)] {args.n} interleaved rounds ...", file=sys.stderr, flush=True
                )
                extra = {
                    "kind": "baselines",
                    "order": order,
                    "title": title,
                    "threads": th,
                    "models": models,
                    "input": inputs.description,
                    "input_agreement": agreement,
                    "json": json_name,
                }
                try:
                    run = run_benchmark(
                        configs_for(art, inputs, th, args.precision),
                        n=args.n,
                        warmup=args.warmup,
                        environment=env,
                        extra_settings=extra,
                    )
                except Exception as exc:  # record and go on: one broken input set must not hide the others
                    failures.append(f"{title}, {th} thread(s): {type(exc).__name__}: {exc}")
                    traceback.print_exc()
                    continue
                run.command = command
                report.write_json(run, ROOT / json_name, force=True, reference=SHORT[1])
                runs.append(run)
                report.render_table(run, reference=SHORT[1])
        x = _simulated(dataset, 1).items[0]
        for th in budgets:
            order += 1
            print(f"[{dataset}: Session.run overhead, {th} thread(s)] ...", file=sys.stderr, flush=True)
            extra = {
                "kind": "overhead",
                "order": order,
                "title": f"{dataset} ({art.task})",
                "threads": th,
                "models": models,
                "input": "one simulated test-split image",
            }
            try:
                run = overhead(art, x, n=args.overhead_n, warmup=args.warmup, threads=th, extra=extra)
            except Exception as exc:
                failures.append(
                    f"{dataset} Session.run overhead, {th} thread(s): {type(exc).__name__}: {exc}"
                )
                traceback.print_exc()
                continue
            run.command = command
            report.write_json(
                run, args.json_dir / f"{dataset}-overhead-{th}t.json", force=True, reference="backend calls"
            )
            overhead_runs.append(run)
    write_results(args.out, runs=runs, overhead_runs=overhead_runs, failures=failures, force=args.force)
    print(f"wrote {args.out}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
