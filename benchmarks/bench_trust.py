"""What the trust signals cost (docs/trust.md): Session.run latency of the demo bundles with and without them.

Per task, interleaved in one run (shuffled order each round, same process, 1 thread):
  (0) the same quantized models bundled WITHOUT trust.json (no extra ONNX outputs, no checks): as before;
  (1) the trust bundle, defaults: eligibility checked (policy "flag", so every call runs), OOD score on;
  (2) the trust bundle with saliency=True (CAM / confidence map in the source geometry).
Medians of Session.run wall time (perf_counter_ns around the call) and the median of the per-round
ratios (1)/(0), (2)/(0). The goal: (1) within 3% of (0).

    python benchmarks/bench_trust.py --demo demo-out [--n 300] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

REAL = {"cxr_nodule": "RG1_UNCR.dcm", "us_phantom": "color3d_jpeg_baseline.dcm", "ct_organs": "CT_small.dcm"}


def _inputs(task: str):
    """(label, input) pairs: the real DICOM, decoded once (engine.dicom Slice) so decoding does not dilute
    the comparison; the chest CR also as a path decoded on every call, as the demo runs it."""
    from pydicom.data import get_testdata_file

    from engine import dicom

    path = get_testdata_file(REAL[task], download=False)
    img = dicom.read(path)
    if not hasattr(img, "pixels"):
        return [(f"{REAL[task]} frame 0 (decoded)", img[0])]
    out = [(f"{REAL[task]} (decoded Slice)", img)]
    if task == "cxr_nodule":
        out.append((f"{REAL[task]} (path, decoded per call)", str(path)))
    return out


def _plain_bundle(quant_dir: Path, out: Path) -> Path:
    """The task's variants bundled as before this issue: a copy of the folder without trust.json."""
    from engine.bundle import build_bundle

    tmp = Path(tempfile.mkdtemp(prefix="slicert-plain-"))
    shutil.copytree(quant_dir, tmp / "q", ignore=shutil.ignore_patterns("trust*.json"))
    build_bundle(tmp / "q", out, precision="best", target="cpu", force=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def bench_task(task: str, demo: Path, n: int, warmup: int, seed: int) -> list[dict]:
    import engine

    bundle = demo / "bundles" / f"{task}.slicert"
    plain = _plain_bundle(demo / "quantized" / task, Path(tempfile.mkdtemp()) / f"{task}.plain.slicert")
    rows = []
    for label, x in _inputs(task):
        sessions = {"(0) no trust (bundle without trust.json)": (engine.load(plain, threads=1), {}),
                    "(1) trust on: eligibility + OOD score": (engine.load(bundle, threads=1, eligibility="flag"), {}),
                    "(2) trust on + saliency=True": (engine.load(bundle, threads=1, eligibility="flag"),
                                                     {"saliency": True})}
        names = list(sessions)
        times = {k: [] for k in names}
        rng = random.Random(seed)
        for i in range(warmup + n):
            order = names[:]
            rng.shuffle(order)
            for k in order:
                s, kw = sessions[k]
                t0 = time.perf_counter_ns()
                r = s.run(x, **kw)
                t1 = time.perf_counter_ns()
                if i >= warmup:
                    times[k].append((t1 - t0) * 1e-6)
        flags = r.flags if hasattr(r, "flags") else []
        for s, _ in sessions.values():
            s.close()
        base = times[names[0]]
        row = {"task": task, "input": label, "n": n, "variant": sessions[names[1]][0].variant,
               "median_ms": {k: statistics.median(v) for k, v in times.items()},
               "ratio_vs_0": {k: statistics.median([a / b for a, b in zip(v, base)]) for k, v in times.items()},
               "flags_of_last_result": flags}
        rows.append(row)
        print(f"{task} / {label}: " + ", ".join(f"{k.split(' ')[0]} {row['median_ms'][k]:.3f} ms "
                                             f"(x{row['ratio_vs_0'][k]:.3f})" for k in names), flush=True)
    plain.unlink(missing_ok=True)
    return rows


def markdown(rows: list[dict]) -> str:
    names = list(rows[0]["median_ms"])
    lines = ["| task | input | variant | " + " | ".join(f"{k} p50 ms" for k in names) + " | (1)/(0) | (2)/(0) |",
             "|---|---|---|" + "---:|" * (len(names) + 2)]
    for r in rows:
        lines.append(f"| {r['task']} | {r['input']} | {r['variant']} | "
                     + " | ".join(f"{r['median_ms'][k]:.3f}" for k in names)
                     + f" | {r['ratio_vs_0'][names[1]]:.3f} | {r['ratio_vs_0'][names[2]]:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", type=Path, default=Path("demo-out"), help="output folder of `slicert demo`")
    p.add_argument("--n", type=int, default=300, help="timed rounds per configuration")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--tasks", nargs="+", default=list(REAL))
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    from engine import preprocess

    preprocess.set_num_threads(1)
    rows = []
    for task in a.tasks:
        rows += bench_task(task, a.demo, a.n, a.warmup, a.seed)
    md = markdown(rows)
    print(md)
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "markdown": md}, indent=2))


if __name__ == "__main__":
    main()
