"""Run the four baselines interleaved on real and simulated inputs and write benchmarks/RESULTS.md.

    python benchmarks/run_baselines.py --force                 # the full run (what RESULTS.md quotes)
    python benchmarks/run_baselines.py --quick --out /tmp/r.md  # a 1-minute smoke run

Per input set and thread budget, one process runs (1) PyTorch eager teacher, (2) ONNX Runtime teacher,
(3) ONNX Runtime student (all three with the user preprocessing of benchmarks/baselines.py) and (4) the
SliceRT bundle, interleaved round by round (A B C D A B C D ...), so a busy neighbour slows all four
alike. Ratios are of medians and, per round, paired (median with a bootstrap 95 % CI). Every run's raw
samples go to benchmarks/results/*.json (schema slicert.bench v1, engine/bench/SCHEMA.md).

The Python overhead of Session.run is measured separately: Session.run(raw array) interleaved with the
same backend calls made directly (backend.stage + backend.infer + the same post-processing math).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import shlex
import sys
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks import baselines as bl  # noqa: E402
from benchmarks import zoo  # noqa: E402
from engine.bench import report  # noqa: E402
from engine.bench.files import atomic_write_text, check_output_path  # noqa: E402
from engine.bench.runner import TOTAL, BenchmarkRun, run_benchmark  # noqa: E402
from engine.bench.stats import paired_difference  # noqa: E402
from engine.bench.timing import TimingPolicy  # noqa: E402

GOALS = {"vs_torch": 5.0, "vs_ort_teacher": 2.5, "jitter": 1.3, "overhead_us": 30.0}
CR_FILE = "RG1_UNCR.dcm"
CINE = "ultrasounds/ultrasound-multiframe.dcm"  # in deid-data
TASKS = {"cxr_nodule": "real chest CR", "us_phantom": "real ultrasound cine"}
SHORT = {
    1: "(1) PyTorch eager teacher FP32",
    2: "(2) ORT teacher FP32",
    3: "(3) ORT student FP32",
    4: "(4) SliceRT",
}


def _cine_path() -> Path:
    import deid_data

    return Path(deid_data.__file__).parent / "data" / CINE


def _cr_path() -> str:
    from pydicom.data import get_testdata_file

    p = get_testdata_file(CR_FILE, download=False)
    if p is None:
        raise SystemExit(f"{CR_FILE} not found: pip install pydicom-data")
    return p


def _simulated(dataset: str, count: int) -> bl.InputSet:
    from tools.data import load_dataset

    ds = load_dataset(dataset, fast=True, seed=0)
    images = ds.splits["test"].images[:count]
    return bl.raw_images(
        f"{dataset} test split (simulated)",
        list(images),
        f"{len(images)} simulated {dataset} test-split images {images.shape[1:]} {images.dtype} "
        f"(tools.data, fast=True, seed 0), cycled",
    )


def input_sets(art: zoo.Artifacts, n_sim: int) -> list[tuple[bl.InputSet, Any]]:
    """(input set, PreprocessSpec SliceRT applies to it) for a task: the real input, then simulated."""
    import engine.dicom

    out = []
    if art.dataset == "cxr_nodule":
        real = bl.cr_file(_cr_path())
        out.append((real, engine.dicom.read(real.items[0]).spec_for(art.spec, "dicom")))
    elif art.dataset == "us_phantom":
        real = bl.cine_frames(_cine_path())
        out.append((real, real.slices[0].spec_for(art.spec, "dicom")))
    sim = _simulated(art.dataset, n_sim)
    out.append((sim, art.spec))
    return out


def slicert_precisions(bundle: Path, precision: str) -> list[str]:
    """`precision`, or with "best": the bundle's int8 and mixed variants (whichever exist), else "best"."""
    if precision != "best":
        return [precision]
    from engine.bundle import open_bundle

    with open_bundle(bundle) as b:
        have = [v for v in ("int8", "mixed") if v in b.variants]
    return have or ["best"]


def configs_for(art: zoo.Artifacts, inputs: bl.InputSet, threads: int, precision: str) -> list[Any]:
    cfgs = [
        bl.torch_eager(SHORT[1], art.teacher_module, inputs, art.spec, art.task, threads=threads),
        bl.onnxruntime_user(SHORT[2], art.teacher_onnx, inputs, art.spec, art.task, threads=threads),
        bl.onnxruntime_user(SHORT[3], art.student_onnx, inputs, art.spec, art.task, threads=threads),
    ]
    for p in slicert_precisions(art.bundle, precision):
        cfgs.append(
            bl.slicert(f"{SHORT[4]} {p}", art.bundle, inputs, threads=threads, load_kwargs={"precision": p})
        )
    return cfgs


def overhead(art: zoo.Artifacts, x: np.ndarray, *, n: int, warmup: int, threads: int) -> dict[str, Any]:
    """Session.run(x) interleaved with (a) the backend calls it wraps and (b) the raw native + ORT calls
    under those; per-round differences."""
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
    run = run_benchmark([sess, direct, raw], n=n, warmup=warmup, policy=TimingPolicy(), schedule="shuffled")
    a = run.result("Session.run").series_ms()
    b = run.result("backend calls").series_ms()
    c = run.result("raw calls").series_ms()
    vs_backend = paired_difference(a[TOTAL], b[TOTAL])
    vs_raw = paired_difference(a[TOTAL], c[TOTAL])
    return {
        "variant": variant,
        "threads": threads,
        "n": n,
        "run": run,
        "session_p50_ms": float(np.median(a[TOTAL])),
        "direct_p50_ms": float(np.median(b[TOTAL])),
        "raw_p50_ms": float(np.median(c[TOTAL])),
        "overhead_us": vs_backend["median"] * 1e3,
        "overhead_ci95_us": [v * 1e3 for v in vs_backend["ci95"]],
        "overhead_raw_us": vs_raw["median"] * 1e3,
        "overhead_raw_ci95_us": [v * 1e3 for v in vs_raw["ci95"]],
        "unattributed_p50_us": float(np.median(a["other"])) * 1e3,
    }


# -- report ---------------------------------------------------------------------------------------------
def _p50(run: BenchmarkRun, name: str) -> float:
    return float(np.median(run.result(name).series_ms()[TOTAL]))


def _ratio_txt(run: BenchmarkRun, ref: str, name: str) -> str:
    entry = next(e for e in run.comparisons(ref) if e["name"] == name)
    p = entry["paired_speedup"]
    return f"{entry['speedup_p50']:.2f}x (paired {p['median']:.2f}x [{p['ci95'][0]:.2f}, {p['ci95'][1]:.2f}])"


def section(title: str, run: BenchmarkRun, agreement: dict[str, float], json_name: str) -> list[str]:
    lines = [
        f"### {title}",
        "",
        f"Input: {run.configurations[0].meta.get('input')}.  ",
        f"Raw samples: `benchmarks/results/{json_name}`. User-vs-SliceRT model input agreement on the "
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


def write_results(
    path: Path,
    *,
    runs: list[dict[str, Any]],
    overheads: list[dict[str, Any]],
    failures: list[str],
    env: dict[str, Any],
    argv: list[str],
    args: argparse.Namespace,
    provenance: list[str],
    force: bool,
) -> None:
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    loads = [r["run"].environment.get("loadavg_before") for r in runs] + [
        r["run"].environment.get("loadavg_after") for r in runs
    ]
    loads = [x for x in loads if x]
    busiest = max((x[0] for x in loads), default=None)
    lines = [
        "# SliceRT benchmark results",
        "",
        f"Latest run: {now}. Reproduce with:",
        "",
        "```",
        "python benchmarks/run_baselines.py " + " ".join(shlex.quote(a) for a in argv),
        "```",
        "",
        "## Machine",
        "",
        f"- CPU: {env.get('cpu_model')}, {env.get('cpus_usable')} usable of {env.get('cpu_count')} cores, "
        f"flags {' '.join(env.get('cpu_flags') or [])}",
        f"- OS: {env.get('platform')}; Python {env.get('python')}",
        "- Software: SliceRT "
        + str(env.get("slicert"))
        + ", "
        + ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v)
        + f", opencv {_cv2_version()}",
        f"- GPU: {'none (' + str(env.get('cuda_reason')) + ')' if not env.get('gpus') else env.get('gpus')}",
        f"- Load average (1 min) during the runs: {min((x[0] for x in loads), default='?')} to {busiest}"
        + (
            f" on {env.get('cpus_usable')} cores: the machine was SHARED and busy; absolute latencies and "
            f"tails are noisy, interleaved ratios much less so. Re-run on a quiet machine for final numbers."
            if busiest is not None and busiest > 0.5 * (env.get("cpus_usable") or 1)
            else ""
        ),
        "",
        "## Method",
        "",
        f"- {args.n} timed rounds after {args.warmup} warm-up rounds per input set and thread budget; "
        f"in each "
        f"round every configuration runs once, in order (1) (2) (3) (4) (interleaved). Timing: "
        f"`time.perf_counter_ns` around each whole call; GC collected before and disabled during the "
        f"timed loop.",
        "- (1) FP32 teacher, PyTorch eager (`torch.inference_mode`); (2) the same teacher exported "
        "to ONNX, ONNX "
        "Runtime CPU (all graph optimizations); (3) FP32 student, ONNX Runtime; all three with the user "
        "preprocessing `pydicom.dcmread` + `apply_modality_lut` + `apply_voi_lut` + NumPy inversion + "
        "`cv2.resize(INTER_AREA)` + NumPy normalization, and NumPy/OpenCV post-processing. "
        "(4) SliceRT `engine.load(bundle)` + `Session.run(x)`: fused native preprocessing into the bound "
        "input, ONNX Runtime IOBinding, precision chosen by the bundle (`best`).",
        "- Thread budget: every library gets the same number of threads (`torch.set_num_threads`, ORT "
        "`intra_op_num_threads`, SliceRT `threads=`). Each budget is a separate interleaved run.",
        "- DICOM inputs are decoded on every call (end to end); cine frames are decoded once before timing "
        "for every configuration alike (frames reach a scanner's pipeline in memory).",
        "- Medians and ratios: speed-up = p50 of the reference / p50 of the configuration; the "
        "paired value is "
        "the median of per-round ratios with a bootstrap 95 % CI.",
        "",
    ]
    lines += ["## Models", ""] + [f"- {p}" for p in provenance] + [""]
    lines += [
        "## Headline",
        "",
        "Ratios are of medians (p50) of end-to-end latency per slice, measured interleaved in "
        "the same run; per-round paired ratios with CIs are in the details below.",
        "",
        "| input | SliceRT variant | threads | (4) p50 ms | (4) p99/p50 | (4) vs (1) | (4) vs (2) | "
        "goal vs (1) >= 5x | goal vs (2) >= 2.5x | goal p99/p50 <= 1.3 |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---|",
    ]

    def ok(b: bool) -> str:
        return "met" if b else "NOT met"

    for r in runs:
        run = r["run"]
        for c in run.configurations:
            if not c.name.startswith(SHORT[4]):
                continue
            s4 = c.stats()[TOTAL]
            v1 = _p50(run, SHORT[1]) / s4["p50"]
            v2 = _p50(run, SHORT[2]) / s4["p50"]
            lines.append(
                f"| {r['title']} | {c.name[len(SHORT[4]) + 1 :]} | {r['threads']} | "
                f"{report.fmt_ms(s4['p50'])} "
                f"| {s4['jitter_p99_p50']:.2f} | {v1:.2f}x | {v2:.2f}x | {ok(v1 >= GOALS['vs_torch'])} | "
                f"{ok(v2 >= GOALS['vs_ort_teacher'])} | {ok(s4['jitter_p99_p50'] <= GOALS['jitter'])} |"
            )
    lines += [""]
    if overheads:
        lines += [
            "## Python overhead of Session.run",
            "",
            "Session.run(raw simulated image) interleaved with (a) the backend calls it wraps, made directly "
            "(backend.stage = fused preprocessing into the bound input, backend.infer = ONNX Runtime "
            "run_with_iobinding, the same post-processing math) and (b) the raw calls under those "
            "(engine.preprocess.preprocess_into + InferenceSession.run_with_iobinding + the same math, no "
            "SliceRT Python at all). Overhead = median of per-round differences [bootstrap 95% CI]. "
            "Goal: <= 30 µs beyond the backend call (a); (b) is the stricter floor.",
            "",
            "| model | variant | threads | n | Session.run p50 ms | (a) p50 ms | (b) p50 ms | "
            "overhead vs (a) µs | overhead vs (b) µs | Session time outside its stages, p50 µs | goal (a) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for o in overheads:
            lines.append(
                f"| {o['title']} | {o['variant']} | {o['threads']} | {o['n']} | "
                f"{o['session_p50_ms']:.3f} | {o['direct_p50_ms']:.3f} | {o['raw_p50_ms']:.3f} | "
                f"{o['overhead_us']:.1f} [{o['overhead_ci95_us'][0]:.1f}, {o['overhead_ci95_us'][1]:.1f}] | "
                f"{o['overhead_raw_us']:.1f} [{o['overhead_raw_ci95_us'][0]:.1f}, "
                f"{o['overhead_raw_ci95_us'][1]:.1f}] | {o['unattributed_p50_us']:.1f} | "
                f"{'met' if o['overhead_us'] <= GOALS['overhead_us'] else 'NOT met'} |"
            )
        lines += [""]
    lines += ["## Details", ""]
    for r in runs:
        lines += section(f"{r['title']}, {r['threads']} thread(s)", r["run"], r["agreement"], r["json"])
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="timed rounds per input set and thread budget")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument(
        "--threads", default=None, help="comma-separated thread budgets (default: 1 and all usable cores)"
    )
    ap.add_argument("--tasks", default="cxr_nodule,us_phantom")
    ap.add_argument(
        "--zoo",
        type=Path,
        default=None,
        help="toolchain output directory (`slicert export --out DIR`); without it, untrained stand-ins",
    )
    ap.add_argument(
        "--build-bundles",
        action="store_true",
        help="with --zoo: quantize + build the student bundle into --workdir when the zoo has none",
    )
    ap.add_argument(
        "--workdir",
        type=Path,
        default=ROOT / ".slicert-cache" / "bench",
        help="where stand-in models are built (cached)",
    )
    ap.add_argument("--precision", default="best")
    ap.add_argument("--sim-images", type=int, default=16)
    ap.add_argument("--overhead-n", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--json-dir", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--quick", action="store_true", help="smoke run: n=20, warm-up 3, overhead n=200")
    ap.add_argument("--force", action="store_true", help="overwrite RESULTS.md and the JSON files")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.warmup, args.overhead_n = 20, 3, 200
    from engine.envinfo import environment, usable_cpus

    budgets = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, usable_cpus()})
    check_output_path(args.out, force=args.force, what="results")
    args.json_dir.mkdir(parents=True, exist_ok=True)
    env = environment()
    runs, overheads, failures, provenance = [], [], [], []
    for dataset in args.tasks.split(","):
        if args.zoo is not None:
            art = zoo.from_zoo(dataset, args.zoo, workdir=args.workdir, build_missing=args.build_bundles)
        else:
            art = zoo.standin(dataset, args.workdir)
        provenance.append(f"{dataset} ({art.task}): {art.provenance}; bundle {art.bundle.name}")
        for inputs, spec_slicert in input_sets(art, args.sim_images):
            agreement = bl.input_agreement(inputs, art.spec, spec_slicert)
            for th in budgets:
                title = f"{dataset}: {inputs.name}"
                json_name = f"{dataset}-{'real' if inputs.real else 'simulated'}-{th}t.json"
                print(
                    f"[{title}, {th} thread(s)] {args.n} interleaved rounds ...", file=sys.stderr, flush=True
                )
                try:
                    run = run_benchmark(
                        configs_for(art, inputs, th, args.precision),
                        n=args.n,
                        warmup=args.warmup,
                        environment=env,
                        extra_settings={"threads": th, "input": inputs.description},
                    )
                except Exception as exc:  # record and go on: one broken input set must not hide the others
                    failures.append(f"{title}, {th} thread(s): {type(exc).__name__}: {exc}")
                    traceback.print_exc()
                    continue
                run.command = ["python", "benchmarks/run_baselines.py", *argv]
                report.write_json(run, args.json_dir / json_name, force=True, reference=SHORT[1])
                runs.append(
                    {"title": title, "threads": th, "run": run, "agreement": agreement, "json": json_name}
                )
                report.render_table(run, reference=SHORT[1])
        x = _simulated(dataset, 1).items[0]
        for th in budgets:
            print(f"[{dataset}: Session.run overhead, {th} thread(s)] ...", file=sys.stderr, flush=True)
            try:
                o = overhead(art, x, n=args.overhead_n, warmup=args.warmup, threads=th)
            except Exception as exc:
                failures.append(
                    f"{dataset} Session.run overhead, {th} thread(s): {type(exc).__name__}: {exc}"
                )
                traceback.print_exc()
                continue
            o["title"] = f"{dataset} ({art.task})"
            report.write_json(
                o.pop("run"),
                args.json_dir / f"{dataset}-overhead-{th}t.json",
                force=True,
                reference="backend calls",
            )
            overheads.append(o)
    write_results(
        args.out,
        runs=runs,
        overheads=overheads,
        failures=failures,
        env=env,
        argv=argv,
        args=args,
        provenance=provenance,
        force=args.force,
    )
    print(f"wrote {args.out}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
