"""FP32 vs FP16 vs INT8 latency of the zoo's students on ONNX Runtime CPU (batch 1, 1 and 2 threads).

    python benchmarks/bench_quantize.py [--exports DIR ...] [--json out.json]   # table + JSON, one run
    python -m pytest benchmarks/bench_quantize.py --benchmark-only            # pytest-benchmark view

Variants per student, all from one calibration: FP32 (the export), FP16 (float16 graph for TensorRT),
INT8 TensorRT form (model.int8.onnx: Q/DQ on weighted-op inputs, symmetric INT8 activations) and INT8
ONNX Runtime CPU form (model.int8.ort.onnx: every op sandwiched DQ->op->Q, UINT8 activations, ReLU
folded into Q, INT32 bias). Rounds are interleaved (FP32, FP16, INT8, INT8-ORT, FP32, ...) so drift on
this shared machine hits every variant alike; medians and ratios vs FP32 come from the same run.

Why two INT8 forms (onnxruntime issue 17389, "QDQ model no faster than FP32"): ORT turns DQ->Conv->Q into
an integer QLinearConv only when a QuantizeLinear directly follows the Conv. TensorRT's form puts a
ReLU (and, for residual blocks, an Add) between the Conv and the next Q, and its symmetric zero point
keeps ORT from folding the ReLU into the Q, so ORT runs those convolutions in FP32 on dequantized weights
plus extra Q/DQ passes: slower than FP32. The CPU form fixes the placement; the table shows both.

Models: trained exports when given (--exports, each a toolchain export folder), else the zoo's student
architectures (tools.models) with seeded UNTRAINED weights at the datasets' input sizes: latency does not
depend on weight values, accuracy is not measured here (see accuracy_report.json of `slicert quantize`).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("fp32", "fp16", "int8_trt", "int8_ort_all", "int8_ort")
THREADS = (1, 2)
# (name, arch, classes, input side): the students of the zoo at their datasets' model input sizes.
STANDINS = (("cnn_student@cxr_nodule", "cnn_student", 2, 128), ("unet_student@us_phantom", "unet_student", 3, 96))


def _standin_export(work: Path, name: str, arch: str, k: int, side: int) -> Path:
    import warnings

    import torch

    from tools.models import build

    model = build(arch, k, seed=0).eval()
    # Untrained BatchNorm has unit running stats; give it seeded, non-trivial stats so folded convs are
    # representative (latency is unaffected, activation ranges are more realistic).
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    d = work / name
    d.mkdir(parents=True)
    out = "scores" if "cnn" in arch else "logits"
    x = torch.zeros(1, 1, side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation notice
        torch.onnx.export(model, (x,), str(d / "model.onnx"), input_names=["input"], output_names=[out],
                          dynamic_axes={"input": {0: "N"}, out: {0: "N"}}, opset_version=17, dynamo=False)
    return d / "model.onnx"


def build_variants(fp32_path: Path, work: Path, calib: np.ndarray) -> dict[str, bytes]:
    """All four variants from one calibration (the quantizer's own code path)."""
    import onnx

    from tools.quantize import calibrate, cpu_speed, fp16, int8

    model = onnx.load(str(fp32_path))
    prepped = int8.prepare_fp32(model, work / "prep.onnx")
    cache, ranges = calibrate.calibrate(work / "prep.onnx", calib, "max", work)
    slow = sorted(cpu_speed.slow_int8_layers(prepped, work))
    out = {"fp32": model.SerializeToString(),
           "fp16": fp16.build_fp16(prepped, calib, ranges).model.SerializeToString()}
    for form, key, cpu_exclude in (("tensorrt", "int8_trt", []), ("ort", "int8_ort_all", []),
                                   ("ort", "int8_ort", slow)):
        out[key] = int8.quantize(work / "prep.onnx", cache, "max", work / f"{key}.onnx", form=form,
                                 cpu_exclude=cpu_exclude).SerializeToString()
    out["_cpu_fp32_layers"] = json.dumps(slow).encode()
    return out


def _session(model: bytes, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def measure(variants: dict[str, bytes], x: np.ndarray, threads: int, rounds: int = 40, per_round: int = 5
            ) -> dict[str, dict[str, float]]:
    """Interleaved rounds; per variant the median (and p10/p90) of per-call latency in ms."""
    sessions = {k: _session(v, threads) for k, v in variants.items()}
    feed = {"input": x}
    for s in sessions.values():  # warm-up: first runs allocate and pick kernels
        for _ in range(10):
            s.run(None, feed)
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                s.run(None, feed)
                samples[k].append((time.perf_counter() - t0) * 1e3)
    return {k: {"median_ms": statistics.median(v), "p10_ms": float(np.percentile(v, 10)),
                "p90_ms": float(np.percentile(v, 90)), "n": len(v)} for k, v in samples.items()}


def _models(exports: list[str], work: Path) -> list[tuple[str, Path, str]]:
    if exports:
        return [(Path(e).name, Path(e) / "model.onnx", "trained export") for e in exports]
    return [(name, _standin_export(work, name, arch, k, side), "stand-in (zoo architecture, untrained weights)")
            for name, arch, k, side in STANDINS]


def run(exports: list[str], rounds: int = 40) -> dict:
    import onnx
    import onnxruntime as ort

    from tools.quantize.graph import input_shape

    results = {"schema": "slicert.bench_quantize/1", "onnxruntime": ort.__version__, "batch": 1, "models": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, path, kind in _models(exports, work):
            c, h, w = input_shape(onnx.load(str(path)))
            rng = np.random.default_rng(0)
            calib = rng.standard_normal((256, c, h, w)).astype(np.float32)
            vdir = work / (name + "_v")
            vdir.mkdir()
            variants = build_variants(path, vdir, calib)
            slow = json.loads(variants.pop("_cpu_fp32_layers"))
            x = rng.standard_normal((1, c, h, w)).astype(np.float32)
            entry = {"model": name, "kind": kind, "input": [1, c, h, w], "cpu_form_fp32_layers": slow,
                     "threads": {}}
            for t in THREADS:
                m = measure(variants, x, t, rounds=rounds)
                base = m["fp32"]["median_ms"]
                for k in m:
                    m[k]["speedup_vs_fp32"] = base / m[k]["median_ms"]
                entry["threads"][str(t)] = m
            results["models"].append(entry)
    return results


def table(results: dict) -> str:
    lines = [f"ONNX Runtime {results['onnxruntime']} CPU, batch 1, median ms (speed-up vs FP32, same run)", "",
             "int8_ort_all: every layer INT8 in the CPU form; int8_ort: layers measured slower in INT8 kept FP32", "",
             "| model | threads | " + " | ".join(VARIANTS) + " |", "|---|---|" + "---|" * len(VARIANTS)]
    for e in results["models"]:
        for t, m in e["threads"].items():
            cells = [f"{m[v]['median_ms']:.3f} ({m[v]['speedup_vs_fp32']:.2f}x)" for v in VARIANTS]
            lines.append(f"| {e['model']} ({e['kind']}) | {t} | " + " | ".join(cells) + " |")
        lines.append(f"|   CPU form FP32 layers ({e['model']}): {e['cpu_form_fp32_layers'] or 'none'} |")
    return "\n".join(lines)


# -- pytest-benchmark view ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def _bench_variants(tmp_path_factory):
    import onnx

    from tools.quantize.graph import input_shape

    work = tmp_path_factory.mktemp("bench_quantize")
    out = {}
    for name, path, _kind in _models([], work):
        c, h, w = input_shape(onnx.load(str(path)))
        calib = np.random.default_rng(0).standard_normal((256, c, h, w)).astype(np.float32)
        vdir = work / (name + "_v")
        vdir.mkdir()
        variants = build_variants(path, vdir, calib)
        variants.pop("_cpu_fp32_layers")
        out[name] = (variants, np.zeros((1, c, h, w), np.float32) + 0.5)
    return out


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("model", [s[0] for s in STANDINS])
def test_quantized_latency(benchmark, _bench_variants, model, variant, threads):
    variants, x = _bench_variants[model]
    sess = _session(variants[variant], threads)
    benchmark.group = f"{model} threads={threads}"
    benchmark(sess.run, None, {"input": x})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--exports", nargs="*", default=[], help="toolchain export folders (default: stand-ins)")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--json", type=Path, default=None, help="write results here")
    args = p.parse_args(argv)
    results = run(args.exports, rounds=args.rounds)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
