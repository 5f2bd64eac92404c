"""GPU acceptance in one command, for the first machine with an NVIDIA GPU and TensorRT:

    python benchmarks/gpu_acceptance.py [--source QUANTIZE_OR_EXPORT_DIR] [--json out.json] [--n 300]

1. builds a bundle with a TensorRT engine for every variant of the source (default: the tiny
   generated test models, classifier + segmenter, FP32/FP16/INT8);
2. runs the CUDA kernel tests (`pytest -m gpu`);
3. per variant, compares TensorRT with ONNX Runtime on the same preprocessed tensors and end to end
   from raw uint16 pixels (CUDA preprocessing vs the CPU kernel), with the tolerances below;
4. checks that CUDA-graph replay gives bit-identical results to eager launches;
5. prints a latency table (median / p99 per stage) and writes JSON.

Without TensorRT or a CUDA device it prints SKIP and the reason, and exits 0 (1 with --strict).
`--dry-run` exercises the same harness on the CPU only (ONNX Runtime optimized vs. unoptimized model
as the pair under comparison) so the script itself is tested on machines without a GPU.

Tolerances, per element, |trt - ort| <= atol + rtol * |ort| (TensorRT vs ONNX Runtime running the SAME
ONNX file; scores are post-softmax probabilities, logits for segmenters):
    fp32   atol 1e-3, rtol 1e-3   (TensorRT enables TF32 for FP32 convolutions/matmuls by default)
    fp16   atol 2e-2, rtol 2e-2   (FP16 storage, kernels accumulate in FP32 on both sides)
    int8 / mixed: atol 5e-2, rtol 5e-2, and top-1 / mask agreement >= 99%  (the two runtimes round
           and fuse Q/DQ differently; one quantization step of a logit is ~1% of its range)
Graph replay vs eager: bit-identical (same kernels, same launch parameters).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOLERANCES = {"fp32": (1e-3, 1e-3), "fp16": (2e-2, 2e-2), "int8": (5e-2, 5e-2), "mixed": (5e-2, 5e-2)}
MIN_AGREEMENT = 0.99


def _skip_reason() -> str | None:
    from engine.bundle.tensorrt_build import tensorrt_unavailable_reason

    return tensorrt_unavailable_reason(0, need_builder=True)


def _sources(args, work: Path) -> list[Path]:
    if args.source:
        return [Path(s) for s in args.source]
    sys.path.insert(0, str(ROOT / "tests" / "runtime"))
    import tiny_models

    cls = tiny_models.write_export(work / "export_cls", "classification")
    seg = tiny_models.write_export(work / "export_seg", "segmentation")
    return [tiny_models.write_quantized(work / "quant_cls", cls), seg]


def _raw_images(spec, n: int, seed: int = 7) -> list[np.ndarray]:
    """Detector-like 12-bit images of varied sizes (synthetic: smooth structure + noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = (spec.out_height * 4 + 13 * (i % 5), spec.out_width * 4 + 7 * (i % 3))
        yy, xx = np.mgrid[0:h, 0:w]
        base = 2048 + 1200 * np.sin(xx / (9 + i % 7)) * np.cos(yy / (11 + i % 5))
        out.append(np.clip(base + rng.normal(0, 150, (h, w)), 0, 4095).astype(np.uint16))
    return out


def _compare(ref: np.ndarray, got: np.ndarray, variant: str, task: str) -> dict[str, Any]:
    atol, rtol = TOLERANCES[variant]
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    err = np.abs(got64 - ref64)
    within = err <= atol + rtol * np.abs(ref64)
    axis = -1 if task == "classification" else 1
    agreement = float(np.mean(ref.argmax(axis=axis) == got.argmax(axis=axis)))
    quantized = variant in ("int8", "mixed")
    ok = bool(within.all()) and (agreement >= MIN_AGREEMENT if quantized else True)
    return {"max_abs_err": float(err.max()), "fraction_within": float(within.mean()), "agreement": agreement,
            "atol": atol, "rtol": rtol, "passed": ok}


def _latency(session, x, n: int) -> dict[str, Any]:
    for _ in range(min(50, n)):
        session.run(x)
    stages: dict[str, list[float]] = {}
    wall = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        r = session.run(x)
        wall.append((time.perf_counter_ns() - t0) * 1e-6)
        for k, v in r.timings_ms.items():
            if v is not None:  # TensorRT graph replay times H2D/D2H inside "infer" (None here)
                stages.setdefault(k, []).append(v)
    summary = {k: {"p50": float(np.median(v)), "p99": float(np.percentile(v, 99))} for k, v in stages.items()}
    summary["wall"] = {"p50": float(np.median(wall)), "p99": float(np.percentile(wall, 99))}
    return summary


def _pair(bundle: Path, variant: str, dry_run: bool):
    """(candidate session, reference ONNX Runtime session, reference InferenceSession on the same ONNX)."""
    import onnxruntime as ort

    import engine
    from engine.bundle import open_bundle

    with open_bundle(bundle) as b:
        onnx_member = b.variants[variant]["onnx"]  # the TensorRT form: compare like with like
        onnx_bytes = b.read(onnx_member)
    if dry_run:
        cand = engine.load(bundle, backend="onnxruntime", precision=variant, use_optimized=True)
    else:
        cand = engine.load(bundle, backend="tensorrt", precision=variant)
    ref = engine.load(bundle, backend="onnxruntime", precision=variant, use_optimized=False)
    plain = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return cand, ref, plain


def check_variant(bundle: Path, variant: str, n: int, dry_run: bool) -> dict[str, Any]:
    from engine.preprocess import preprocess

    cand, ref, plain = _pair(bundle, variant, dry_run)  # ref: the ORT session, for the latency comparison
    try:
        task, spec = cand.task, cand.spec
        images = _raw_images(spec, 16)
        out: dict[str, Any] = {"variant": variant, "task": task, "candidate": cand.info.get("engine")
                               or cand.info.get("model_file"), "why": cand.info["why"]}
        # (a) the same preprocessed tensor through both runtimes: engine vs ONNX semantics only.
        feed = np.concatenate([preprocess(x, spec) for x in images[:cand.info["max_batch"]]])[:1]
        got = cand._backend.infer_tensors({plain.get_inputs()[0].name: feed})
        want = plain.run(None, {plain.get_inputs()[0].name: feed})
        out["tensor"] = _compare(want[0], got[cand.bundle.manifest["output"]["name"]], variant, task)
        # (b) end to end from raw uint16 pixels: CUDA preprocessing + engine + post-processing vs the CPU
        #     kernel + ONNX Runtime on the SAME ONNX file + the same post-processing.
        from engine import postprocess as pp

        in_name = plain.get_inputs()[0].name
        if task == "classification":
            a = np.stack([cand.run(x).scores for x in images])
            b = np.stack([pp.softmax(plain.run(None, {in_name: preprocess(x, spec)})[0][0]) for x in images])
            out["end_to_end"] = _compare(b, a, variant, task)
        else:
            agree = []
            for x in images[:4]:
                mask = cand.run(x).mask
                logits = plain.run(None, {in_name: preprocess(x, spec)})[0][0]
                ref_mask = pp.mask_to_source(pp.argmax_mask(logits), x.shape, spec)
                agree.append(float(np.mean(mask == ref_mask)))
            out["end_to_end"] = {"mask_agreement": float(np.mean(agree)),
                                 "passed": bool(np.mean(agree) >= MIN_AGREEMENT)}
        # (c) CUDA graph replay vs eager launches: bit-identical.
        if not dry_run:
            import engine

            eager = engine.load(bundle, backend="tensorrt", precision=variant, cuda_graph=False)
            try:
                x = images[0]
                r_graph = [cand.run(x) for _ in range(3)][-1]  # run 1 eager, 2 captures, 3 replays
                r_eager = eager.run(x)
                key = "scores" if task == "classification" else "mask"
                out["graph_equals_eager"] = bool(np.array_equal(getattr(r_graph, key), getattr(r_eager, key)))
            finally:
                eager.close()
        out["latency_ms"] = {"candidate": _latency(cand, images[0], n), "onnxruntime": _latency(ref, images[0], n)}
        out["passed"] = out["tensor"]["passed"] and out["end_to_end"]["passed"] and out.get("graph_equals_eager",
                                                                                           True)
        return out
    finally:
        cand.close()
        ref.close()


def run_kernel_tests() -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "--no-header", "-p", "no:cacheprovider",
                           str(ROOT / "tests")], capture_output=True, text=True, cwd=ROOT)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()[-500:]
    return {"returncode": proc.returncode, "summary": tail, "passed": proc.returncode in (0, 5)}


def print_table(results: list[dict[str, Any]], candidate_name: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"GPU acceptance: {candidate_name} vs ONNX Runtime (ms; p50 / p99)")
    for col in ("model", "variant", "tensor max|Δ|", "agree", "e2e", "graph==eager", "pre", "infer", "total",
                "ORT total", "ok"):
        t.add_column(col)
    for r in results:
        lat = r["latency_ms"]["candidate"]
        ort_lat = r["latency_ms"]["onnxruntime"]
        t.add_row(r["bundle"], r["variant"], f"{r['tensor']['max_abs_err']:.2e}", f"{r['tensor']['agreement']:.3f}",
                  "pass" if r["end_to_end"]["passed"] else "FAIL",
                  {True: "yes", False: "NO", None: "-"}[r.get("graph_equals_eager")],
                  f"{lat['preprocess']['p50']:.3f}", f"{lat['infer']['p50']:.3f}",
                  f"{lat['wall']['p50']:.3f} / {lat['wall']['p99']:.3f}",
                  f"{ort_lat['wall']['p50']:.3f} / {ort_lat['wall']['p99']:.3f}", "PASS" if r["passed"] else "FAIL")
    Console(width=max(160, Console().width)).print(t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", action="append", help="export or quantize folder (repeatable); default: tiny models")
    p.add_argument("--json", type=Path, help="write the results here (refuses to overwrite without --force)")
    p.add_argument("--force", action="store_true")
    p.add_argument("--n", type=int, default=300, help="timed runs per configuration")
    p.add_argument("--hardware-compat", default="none", choices=("none", "ampere+", "same-cc"))
    p.add_argument("--strict", action="store_true", help="exit 1 instead of 0 when skipped")
    p.add_argument("--dry-run", action="store_true", help="CPU-only self-test of this harness")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be >= 1")
    if args.json and args.json.exists() and not args.force:
        p.error(f"{args.json} exists; pass --force to overwrite")

    reason = None if args.dry_run else _skip_reason()
    if reason:
        print(f"SKIP: GPU acceptance needs TensorRT and a CUDA GPU; here: {reason}")
        return 1 if args.strict else 0

    from engine.bundle import build_bundle
    from engine.envinfo import environment

    report: dict[str, Any] = {"environment": environment(), "tolerances": TOLERANCES, "min_agreement": MIN_AGREEMENT,
                              "dry_run": args.dry_run, "results": []}
    with tempfile.TemporaryDirectory(prefix="slicert-gpu-acceptance-") as tmp:
        work = Path(tmp)
        if not args.dry_run:
            report["kernel_tests"] = run_kernel_tests()
            print(f"CUDA kernel tests (pytest -m gpu): {report['kernel_tests']['summary']}")
        for i, source in enumerate(_sources(args, work)):
            bundle = work / f"model{i}.slicert"
            t0 = time.perf_counter()
            built = build_bundle(source, bundle, precision="best", target="cpu" if args.dry_run else "auto",
                                 hardware_compat=args.hardware_compat)
            print(f"built {bundle.name} from {source}: variants {built.variants}, {len(built.engines)} engine(s) "
                  f"in {time.perf_counter() - t0:.1f} s")
            if not args.dry_run and len(built.engines) != len(built.variants):
                raise SystemExit(f"expected one engine per variant, got {built.engines}")
            for variant in built.variants:
                r = check_variant(bundle, variant, args.n, args.dry_run)
                r["bundle"] = Path(source).name
                report["results"].append(r)
    print_table(report["results"], "ORT optimized (dry run)" if args.dry_run else "TensorRT")
    ok = all(r["passed"] for r in report["results"]) and report.get("kernel_tests", {"passed": True})["passed"]
    report["passed"] = ok
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    print("ACCEPTED" if ok else "NOT ACCEPTED: see the table above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
