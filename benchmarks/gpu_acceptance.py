"""GPU acceptance in one command, for the first machine with an NVIDIA GPU and TensorRT:

    python benchmarks/gpu_acceptance.py [--source QUANTIZE_OR_EXPORT_DIR] [--json out.json] [--n 300]
                                        [--threads 4] [--max-batch 8] [--strict | --no-strict] [--dry-run]

1. runs the CUDA kernel tests (`pytest -m gpu`);
2. builds, per variant of each source (default: the tiny generated test models, classifier FP32/FP16/
   INT8 + segmenter FP32), a bundle with a TensorRT engine; FP32 engines are built with TF32 off so
   the FP32 tolerance below means FP32 (TensorRT enables TF32 by default). A failed build is a FAIL
   row for that variant, and the run goes on with the others;
3. per variant, checks (each gets a machine-readable verdict PASS / FAIL / SKIP in the JSON):
   tensor       TensorRT vs ONNX Runtime on the same preprocessed tensor (engine vs ONNX semantics);
   end_to_end   raw uint16 pixels -> CUDA preprocessing + engine + post-processing vs the CPU kernel +
                ONNX Runtime on the same ONNX file;
   graph        CUDA-graph replay bit-identical to eager launches;
   mixed_batch  max_batch > 1: run_batch with chunks 8, 8, 3, then run(), twice: bit-identical to an
                eager session (this is what one context per batch size protects);
   threads      several threads on one session (forked buffer sets): bit-identical to one thread;
   device_array caller-owned GPU input (__cuda_array_interface__ from CuPy or PyTorch when installed)
                written on the producer's own stream: bit-identical to the host input;
   latency      median / p99 per stage (never a verdict);
4. prints a table and writes JSON.

`--strict` (the default when a CUDA device is visible) exits 1 when TensorRT or the GPU is missing
instead of printing SKIP and exiting 0: a first GPU run must not pass by skipping (a driver older than
R580 makes the CUDA 13 runtime report no device).

`--dry-run` runs every one of these code paths on the CPU through a HOST-MEMORY EMULATION of TensorRT
and CUDA (tests/runtime/fake_device_trt.py: ONNX Runtime stands in for TensorRT, Python queues for
streams and graphs). It tests this script and SliceRT's control flow. IT IS NOT GPU VERIFICATION, and
its output says so on every line that matters.

Tolerances, per element, |trt - ort| <= atol + rtol * |ort| (TensorRT vs ONNX Runtime running the SAME
ONNX file; scores are post-softmax probabilities, logits for segmenters):
    fp32   atol 1e-3, rtol 1e-3   (engines built with TF32 off; with TF32 on, about 1e-2 would be needed:
                                   a TF32 simulation of the tiny segmenter put up to 1,492 of 49,152
                                   logits outside 1e-3)
    fp16   atol 2e-2, rtol 2e-2   (FP16 storage, kernels accumulate in FP32 on both sides)
    int8 / mixed: atol 5e-2, rtol 5e-2, and top-1 / mask agreement >= 99%  (the two runtimes round
           and fuse Q/DQ differently; one quantization step of a logit is ~1% of its range)
Graph replay vs eager, mixed batches, threads, device arrays: bit-identical (same kernels, same
launch parameters, same engine).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOLERANCES = {"fp32": (1e-3, 1e-3), "fp16": (2e-2, 2e-2), "int8": (5e-2, 5e-2), "mixed": (5e-2, 5e-2)}
MIN_AGREEMENT = 0.99
DRY_RUN_BANNER = ("DRY RUN on a HOST-MEMORY EMULATION of TensorRT and CUDA (tests/runtime/fake_device_trt.py): "
                  "this checks the harness and SliceRT's control flow only. IT IS NOT GPU VERIFICATION.")


def _skip_reason() -> str | None:
    from engine.bundle.tensorrt_build import tensorrt_unavailable_reason

    return tensorrt_unavailable_reason(0, need_builder=True)


def _gpu_visible() -> bool:
    from engine import _native

    return bool(_native.cuda_compiled() and _native.cuda_devices()[0] > 0)


def _install_emulation():
    """(emulated device, the device layer it replaced)."""
    sys.path.insert(0, str(ROOT / "tests" / "runtime"))
    import fake_device_trt

    import engine.device

    dev = fake_device_trt.EmulatedDevice()
    return dev, engine.device.install(dev)


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


def _output(r, task: str) -> np.ndarray:
    return np.asarray(r.scores if task == "classification" else r.mask)


def _identical(a: list, b: list, task: str) -> bool:
    return len(a) == len(b) and all(np.array_equal(_output(x, task), _output(y, task)) for x, y in zip(a, b))


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


def _device_array(x: np.ndarray, dry_run: bool, emulation):
    """(GPU copy of x still being written on the producer's own stream, the host pixels it equals, the
    producer's name, a context manager to run SliceRT in) or (None, None, why not, None). CuPy exports
    its current stream in the CAI (v3), so SliceRT runs inside the producer stream's context; PyTorch
    exports CAI v2 without a stream, so SliceRT synchronizes the device."""
    import contextlib

    if dry_run:
        return (emulation.producer_array(x, stream="own"), x, "emulated CAI v3 producer (host memory)",
                contextlib.nullcontext())
    try:
        import cupy

        stream = cupy.cuda.Stream(non_blocking=True)
        with stream:  # the H2D copy is still in flight on this stream
            arr = cupy.asarray(x)
        return arr, x, "cupy (CAI v3, producer stream)", stream
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            host = x.astype(np.int16)  # values <= 4095: the same pixels in a dtype torch has
            with torch.cuda.stream(torch.cuda.Stream()):
                arr = torch.from_numpy(host).pin_memory().cuda(non_blocking=True)
            return arr, host, "torch (CAI v2: SliceRT synchronizes the device)", contextlib.nullcontext()
    except ImportError:
        pass
    return None, None, "no __cuda_array_interface__ producer installed (pip install cupy-cuda13x, or torch)", None


def _verdict(ok: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "SKIP"}[ok]


def check_variant(bundle: Path, cpu_bundle: Path, variant: str, n: int, dry_run: bool, *, threads: int,
                  max_batch: int, emulation=None) -> dict[str, Any]:
    import onnxruntime as ort

    import engine
    from engine import postprocess as pp
    from engine.bundle import open_bundle
    from engine.preprocess import preprocess

    with open_bundle(bundle) as b:
        onnx_bytes = b.read(b.variants[variant]["onnx"])  # the TensorRT form: compare like with like
    plain = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    in_name = plain.get_inputs()[0].name
    cand = engine.load(bundle, backend="tensorrt", precision=variant, max_batch=max_batch)
    eager = engine.load(bundle, backend="tensorrt", precision=variant, max_batch=max_batch, cuda_graph=False)
    ref = engine.load(cpu_bundle, backend="onnxruntime", precision=variant)
    checks: dict[str, dict[str, Any]] = {}
    try:
        task, spec = cand.task, cand.spec
        images = _raw_images(spec, 19)
        out: dict[str, Any] = {"variant": variant, "task": task, "candidate": cand.info.get("engine"),
                               "why": cand.info["why"], "max_batch": max_batch}
        # (a) the same preprocessed tensor through both runtimes: engine vs ONNX semantics only.
        feed = np.concatenate([preprocess(x, spec) for x in images[:max_batch]])
        got = cand._backend.infer_tensors({in_name: feed})[cand.bundle.manifest["output"]["name"]]
        checks["tensor"] = _compare(plain.run(None, {in_name: feed})[0], got, variant, task)
        # (b) end to end from raw uint16 pixels.
        if task == "classification":
            a = np.stack([cand.run(x).scores for x in images[:16]])
            b = np.stack([pp.softmax(plain.run(None, {in_name: preprocess(x, spec)})[0][0]) for x in images[:16]])
            checks["end_to_end"] = _compare(b, a, variant, task)
        else:
            agree = []
            for x in images[:4]:
                logits = plain.run(None, {in_name: preprocess(x, spec)})[0][0]
                ref_mask = pp.mask_to_source(pp.argmax_mask(logits), x.shape, spec)
                agree.append(float(np.mean(cand.run(x).mask == ref_mask)))
            checks["end_to_end"] = {"mask_agreement": float(np.mean(agree)),
                                    "passed": bool(np.mean(agree) >= MIN_AGREEMENT)}
        # (c) CUDA graph replay vs eager launches: run 1 eager, run 2 captures, runs 3+ replay.
        x0 = images[0]
        r_graph = [cand.run(x0) for _ in range(3)]
        checks["graph"] = {"passed": _identical(r_graph, [eager.run(x0)] * 3, task),
                           "graph_launches": None if emulation is None else emulation.counts.get("graph_launch", 0)}
        # (d) mixed batch sizes on one session (chunks max_batch, max_batch, rest), then single slices.
        if max_batch > 1:
            want_batch, want_single = eager.run_batch(images), [eager.run(x) for x in images[:3]]
            same = True
            for _ in range(2):
                same &= _identical(cand.run_batch(images), want_batch, task)
                same &= _identical([cand.run(x) for x in images[:3]], want_single, task)
            chunks = [len(images[i:i + max_batch]) for i in range(0, len(images), max_batch)]
            checks["mixed_batch"] = {"passed": bool(same), "chunks": chunks}
        else:
            checks["mixed_batch"] = {"passed": None, "why": "the model has a fixed batch of 1"}
        # (e) several threads on one session: each gets a forked buffer set; results as with one thread.
        want = [cand.run(x) for x in images[:6]]
        errors: list[str] = []
        same_threads = []
        start = threading.Barrier(threads)  # all threads call run() at once: the session must fork buffer sets

        def worker():
            try:
                start.wait()
                for _ in range(3):
                    same_threads.append(_identical([cand.run(x) for x in images[:6]], want, task))
            except Exception as exc:  # noqa: BLE001  (reported as the check's failure)
                errors.append(f"{type(exc).__name__}: {exc}")
        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        checks["threads"] = {"passed": not errors and all(same_threads), "threads": threads, "errors": errors[:3],
                             "buffer_sets": len(cand._all)}
        # (f) caller-owned device arrays, still being written on the producer's stream.
        arr, host, producer, ctx = _device_array(x0, dry_run, emulation)
        if arr is None:
            checks["device_array"] = {"passed": None, "why": producer}
        else:
            with ctx:
                got = cand.run(arr)
            checks["device_array"] = {"passed": _identical([got], [cand.run(host)], task), "producer": producer}
        out["latency_ms"] = {"candidate": _latency(cand, x0, n), "onnxruntime": _latency(ref, x0, n)}
        for c in checks.values():
            c["verdict"] = _verdict(c["passed"])
        out["checks"] = checks
        out["passed"] = all(c["passed"] is not False for c in checks.values())
        return out
    finally:
        cand.close()
        eager.close()
        ref.close()


def run_kernel_tests() -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "--no-header", "-p", "no:cacheprovider",
                           str(ROOT / "tests")], capture_output=True, text=True, cwd=ROOT)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()[-500:]
    return {"returncode": proc.returncode, "summary": tail, "passed": proc.returncode in (0, 5)}


def _variants(source: Path, work: Path, name: str, threads: int) -> tuple[Path, list[str]]:
    """A CPU bundle of every variant (the ONNX Runtime reference side) and the variant names."""
    from engine.bundle import build_bundle

    cpu = work / f"{name}.cpu.slicert"
    built = build_bundle(source, cpu, precision="best", target="cpu", build_threads=threads)
    return cpu, list(built.variants)


def _build_variant(source: Path, out: Path, variant: str, max_batch: int, hardware_compat: str):
    """(bundle path, max_batch used, None) or (None, 0, error text): a failed build is a FAIL row."""
    from engine.bundle import build_bundle
    from engine.errors import InputError

    for mb in dict.fromkeys((max_batch, 1)):
        try:
            build_bundle(source, out, precision=variant, target="tensorrt", max_batch=mb, force=True,
                         hardware_compat=hardware_compat, tf32=False)
            return out, mb, None
        except InputError as exc:
            if "fixed batch" in str(exc) and mb != 1:
                continue  # a fixed-batch model: build it for batch 1 and skip the mixed-batch check
            return None, 0, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001  (any build failure is this variant's FAIL row)
            return None, 0, f"{type(exc).__name__}: {exc}"
    return None, 0, "unreachable"


def print_table(results: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    names = ("build", "tensor", "end_to_end", "graph", "mixed_batch", "threads", "device_array")
    for col in ("model", "variant", "tensor max|Δ|", *names[1:], "infer p50", "total p50/p99", "ORT total", "ok"):
        t.add_column(col)
    for r in results:
        checks = r.get("checks", {})
        if "latency_ms" not in r:  # the build failed
            t.add_row(r["bundle"], r["variant"], "-", *("-" for _ in names[1:]), "-", "-", "-", "FAIL (build)")
            continue
        lat, ort_lat = r["latency_ms"]["candidate"], r["latency_ms"]["onnxruntime"]
        t.add_row(r["bundle"], r["variant"], f"{checks['tensor']['max_abs_err']:.2e}",
                  *(checks[k]["verdict"] for k in names[1:]), f"{lat['infer']['p50']:.3f}",
                  f"{lat['wall']['p50']:.3f} / {lat['wall']['p99']:.3f}",
                  f"{ort_lat['wall']['p50']:.3f} / {ort_lat['wall']['p99']:.3f}", "PASS" if r["passed"] else "FAIL")
    Console(width=max(180, Console().width)).print(t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", action="append", help="export or quantize folder (repeatable); default: tiny models")
    p.add_argument("--json", type=Path, help="write the results here (refuses to overwrite without --force)")
    p.add_argument("--force", action="store_true")
    p.add_argument("--n", type=int, default=300, help="timed runs per configuration")
    p.add_argument("--threads", type=int, default=4, help="threads on one session in the threads check")
    p.add_argument("--max-batch", type=int, default=8, help="engine max batch for the mixed-batch check")
    p.add_argument("--hardware-compat", default="none", choices=("none", "ampere+", "same-cc"))
    p.add_argument("--strict", action=argparse.BooleanOptionalAction, default=None,
                   help="exit 1 instead of 0 when skipped (default: on when a CUDA device is visible)")
    p.add_argument("--dry-run", action="store_true", help="CPU self-test through a host-memory emulation "
                                                           "(NOT GPU verification)")
    args = p.parse_args(argv)
    if args.n < 1 or args.threads < 1 or args.max_batch < 1:
        p.error("--n, --threads and --max-batch must be >= 1")
    if args.json and args.json.exists() and not args.force:
        p.error(f"{args.json} exists; pass --force to overwrite")
    strict = _gpu_visible() if args.strict is None else args.strict

    if args.dry_run:
        import engine.device

        print(DRY_RUN_BANNER)
        emulation, previous = _install_emulation()
        try:
            return _run(args, strict, emulation)
        finally:
            engine.device.install(previous)
    reason = _skip_reason()
    if reason:
        print(f"SKIP: GPU acceptance needs TensorRT and a CUDA GPU; here: {reason}")
        return 1 if strict else 0
    return _run(args, strict, None)


def _run(args, strict: bool, emulation) -> int:
    from engine.envinfo import environment

    report: dict[str, Any] = {"environment": environment(), "tolerances": TOLERANCES, "min_agreement": MIN_AGREEMENT,
                              "dry_run": args.dry_run, "strict": strict, "results": [], "checks": [],
                              "verification": ("NONE: host-memory emulation, not a GPU" if args.dry_run else
                                               "TensorRT on a CUDA GPU")}
    with tempfile.TemporaryDirectory(prefix="slicert-gpu-acceptance-") as tmp:
        work = Path(tmp)
        if args.dry_run:
            report["kernel_tests"] = {"passed": None, "summary": "not run: dry run (no GPU)"}
        else:
            report["kernel_tests"] = run_kernel_tests()
            print(f"CUDA kernel tests (pytest -m gpu): {report['kernel_tests']['summary']}")
        for i, source in enumerate(_sources(args, work)):
            name = Path(source).name
            cpu_bundle, variants = _variants(source, work, f"model{i}", 1)
            for variant in variants:
                t0 = time.perf_counter()
                bundle, mb, error = _build_variant(source, work / f"model{i}.{variant}.slicert", variant,
                                                   args.max_batch, args.hardware_compat)
                build = {"passed": error is None, "seconds": round(time.perf_counter() - t0, 2), "error": error,
                         "max_batch": mb}
                build["verdict"] = _verdict(build["passed"])
                print(f"{'built' if bundle else 'FAILED to build'} {name}/{variant} in {build['seconds']} s"
                      + (f": {error}" if error else ""))
                if bundle is None:
                    r = {"bundle": name, "variant": variant, "checks": {"build": build}, "passed": False}
                else:
                    r = check_variant(bundle, cpu_bundle, variant, args.n, args.dry_run, threads=args.threads,
                                      max_batch=mb, emulation=emulation)
                    r["bundle"] = name
                    r["checks"] = {"build": build, **r["checks"]}
                report["results"].append(r)
                for check, c in r["checks"].items():
                    report["checks"].append({"bundle": name, "variant": variant, "check": check,
                                             "verdict": c["verdict"],
                                             "detail": {k: v for k, v in c.items() if k not in ("verdict",)}})
    kernel_ok = report["kernel_tests"]["passed"] is not False
    ok = all(r["passed"] for r in report["results"]) and kernel_ok
    report["passed"] = ok
    if emulation is not None:
        report["emulation_hazards"] = list(emulation.hazards)
        ok = ok and not emulation.hazards
        report["passed"] = ok
    title = ("DRY RUN (emulation, NOT GPU verification): TensorRT code paths vs ONNX Runtime" if args.dry_run
             else "GPU acceptance: TensorRT vs ONNX Runtime (ms; p50 / p99)")
    print_table(report["results"], title)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    if args.dry_run:
        print(("DRY RUN PASSED" if ok else "DRY RUN FAILED") + " - " + DRY_RUN_BANNER)
    else:
        print("ACCEPTED" if ok else "NOT ACCEPTED: see the table above and the per-check verdicts in the JSON")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
