"""Real-size public architectures on the CPU: PyTorch, ONNX Runtime, OpenVINO INT8 and SliceRT, interleaved.

    python benchmarks/bench_cpu_backends.py [--rounds 8] [--threads 1 2] [--out .slicert-cache/bench-cpu]

Models (MONAI, random seeded weights; latency and precision agreement only, no task meaning):
  UNet(2-D, 1 -> 3, channels 16-256, strides 2, 2 residual units) at 256x256, on the ultrasound cine
  resnet18(2-D, 1 channel, 2 classes) at 256x256, on the chest CR RG1_UNCR.dcm
  DenseNet121(2-D, 1 -> 2) at 224x224 (the CheXNet shape), on the chest CR RG1_UNCR.dcm
Each is exported to ONNX, quantized to INT8 by NNCF (OpenVINO IR) on real DICOM slices, and bundled by
`build_bundle(time_cpu=True)`: SliceRT's `best` is whatever was measured fastest here among FP32 on ONNX
Runtime, FP32 on OpenVINO and the NNCF INT8 on OpenVINO (the latter only if it passed the agreement gate).

Configurations, interleaved round by round in one run per (model, threads):
  (1) PyTorch eager FP32 + user preprocessing (tools/baselines.py: pydicom LUTs, OpenCV resize, NumPy)
  (2) ONNX Runtime FP32 + the same user preprocessing
  (3) OpenVINO INT8 (the same NNCF IR SliceRT bundles) + the same user preprocessing
  (4) SliceRT, engine.load(bundle) with precision="best", Session.run on the same input

Agreement with FP32 on real DICOM held out from NNCF's calibration: top-1 agreement for the classifiers
(real CR/CT/MR/NM images of pydicom-data), Dice between INT8 and FP32 masks for the segmenter (odd
frames of the cine; calibration used the even ones). BF16 is measured only where the CPU has AMX-BF16
or AVX512-BF16. Writes OUT/cpu_backends.json and OUT/cpu_backends.md (the RESULTS.md section).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.spec import PreprocessSpec
from tools import baselines as bl

AGREEMENT_GATE = 0.9  # top-1 agreement (classifiers) / mean foreground Dice (segmenter) vs FP32, held out
CLASSIFIER_IMAGES = {  # real monochrome DICOM of pydicom-data: (file, frames used); calibration vs held out
    "calib": [("RG3_UNCR.dcm", None), ("CT_small.dcm", None), ("MR2_UNCR.dcm", None), ("693_UNCR.dcm", None),
              ("emri_small.dcm", range(5))],
    "held_out": [("RG1_UNCR.dcm", None), ("RG1_UNCI.dcm", None), ("RG3_UNCI.dcm", None), ("MR_small.dcm", None),
                 ("mlut_18.dcm", None), ("JPEG2000.dcm", None), ("emri_small.dcm", range(5, 10))],
}


def _say(msg: str, t0: float) -> None:
    print(f"{time.perf_counter() - t0:7.1f}s {msg}", flush=True)


def networks():
    import torch
    from monai.networks.nets import DenseNet121, UNet, resnet18

    torch.manual_seed(0)
    return {
        "unet": (UNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(16, 32, 64, 128, 256),
                      strides=(2, 2, 2, 2), num_res_units=2), 256, "segmentation",
                 ["background", "region_a", "region_b"], "MONAI UNet(2-D, 1->3, 16-256, 2 res units), 256x256"),
        "resnet18": (resnet18(spatial_dims=2, n_input_channels=1, num_classes=2), 256, "classification",
                     ["class_0", "class_1"], "MONAI resnet18(2-D, 1 ch, 2 classes), 256x256"),
        "densenet121": (DenseNet121(spatial_dims=2, in_channels=1, out_channels=2), 224, "classification",
                        ["class_0", "class_1"], "MONAI DenseNet121(2-D, 1 ch, 2 classes), 224x224"),
    }


def spec_for(side: int, task: str) -> PreprocessSpec:
    if task == "segmentation":  # 8-bit ultrasound frames, RGB -> grey in the kernel, [0, 1]
        return PreprocessSpec(out_height=side, out_width=side, in_channels=3, voi_function="linear",
                              window_center=128.0, window_width=256.0, output_min=0.0, output_max=1.0,
                              resize="area", normalize="none")
    return PreprocessSpec(out_height=side, out_width=side, resize="area", normalize="fixed", mean=(0.5,),
                          std=(0.25,))


def export(net, side: int, path: Path) -> None:
    import torch

    net.eval()
    with torch.inference_mode():
        torch.onnx.export(net, torch.randn(1, 1, side, side), str(path), input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
                          opset_version=17, dynamo=False)


# -- real DICOM -> model inputs (SliceRT's own preprocessing, as calibration does in tools/quantize) ----------
def _slices(name: str, frames):
    from pydicom.data import get_testdata_file

    import engine.dicom

    img = engine.dicom.read(get_testdata_file(name, download=False))
    if hasattr(img, "pixels"):
        return [img]
    return [img[i] for i in (frames if frames is not None else range(len(img)))]


def model_inputs(slices, spec: PreprocessSpec, voi_policy: str = "dicom") -> np.ndarray:
    from engine.preprocess import preprocess_into

    out = np.empty((len(slices), spec.out_channels, spec.out_height, spec.out_width), np.float32)
    for i, s in enumerate(slices):
        preprocess_into(out, s.pixels, s.spec_for(spec, voi_policy), i)
    return out


def cine_slices():
    import deid_data

    import engine.dicom

    path = Path(deid_data.__file__).parent / "data" / "ultrasounds" / "ultrasound-multiframe.dcm"
    seq = engine.dicom.read(str(path))
    return path, [seq[i] for i in range(len(seq))]


# -- INT8 / BF16 and their agreement -------------------------------------------------------------------------
def dice_mean(a: np.ndarray, b: np.ndarray, k: int) -> float:
    vals = []
    for c in range(1, k):
        inter, tot = np.sum((a == c) & (b == c)), np.sum(a == c) + np.sum(b == c)
        if tot:
            vals.append(2 * inter / tot)
    return float(np.mean(vals)) if vals else 1.0


def agreement(task: str, ref: np.ndarray, out: np.ndarray) -> dict:
    if task == "classification":
        p = np.exp(out - out.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        q = np.exp(ref - ref.max(1, keepdims=True))
        q /= q.sum(1, keepdims=True)
        return {"top1_agreement": float(np.mean(out.argmax(1) == ref.argmax(1))),
                "max_abs_prob_diff": float(np.abs(p - q).max()), "n": len(ref)}
    k = ref.shape[1]
    d = [dice_mean(o.argmax(0), r.argmax(0), k) for o, r in zip(out, ref)]
    return {"dice_vs_fp32_mean": float(np.mean(d)), "dice_vs_fp32_min": float(np.min(d)), "n": len(ref)}


def build_variants(name, onnx_path, task, calib_x, held_x, work: Path, t0) -> dict:
    from engine.backends.openvino import cpu_has_bf16
    from tools.quantize import openvino_forms as of
    from tools.quantize.runner import run_batched, session

    ref = run_batched(session(str(onnx_path)), held_x, batch=1)
    fp32 = of.read_fp32(onnx_path)
    _say(f"{name}: NNCF INT8 on {len(calib_x)} real calibration slices", t0)
    q = of.nncf_int8(fp32, calib_x)
    xml, weights = of.ir_bytes(q)
    (work / "model.int8.openvino.xml").write_bytes(xml)
    (work / "model.int8.openvino.bin").write_bytes(weights)
    out = {"int8_ov": agreement(task, ref, of.run_batched(of.compile_cpu(q), held_x, batch=1))}
    if cpu_has_bf16():
        out["bf16_ov"] = agreement(task, ref, of.run_batched(of.compile_cpu(fp32, precision="bf16"), held_x, batch=1))
    key = "top1_agreement" if task == "classification" else "dice_vs_fp32_mean"
    for k, a in out.items():
        a["passed"] = a[key] >= AGREEMENT_GATE
    return out


def write_source(work: Path, name, task, labels, spec, agree) -> None:
    """A quantizer-style folder (contract 6) whose report is this benchmark's agreement gate."""
    meta = {"name": f"monai-{name}-random", "task": task, "labels": labels, "preprocess": spec.to_dict(),
            "voi_policy": "dicom", "dataset": {"name": "none: random weights", "real_data": False}, "metrics": {}}
    (work / "model.json").write_text(json.dumps(meta, indent=1))
    sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
    variants = {"fp32": {"file": None, "passed": True, "reason": "reference model"}}
    for k, a in agree.items():
        entry = {"passed": a["passed"], "target": "openvino", "agreement": a,
                 "reason": f"benchmark gate: agreement with FP32 >= {AGREEMENT_GATE} on held-out real DICOM"}
        if k == "int8_ov" and a["passed"]:
            entry.update(file="model.int8.openvino.xml", sha256=sha(work / "model.int8.openvino.xml"),
                         weights_file="model.int8.openvino.bin", weights_sha256=sha(work / "model.int8.openvino.bin"))
        variants[k] = entry
    (work / "accuracy_report.json").write_text(json.dumps({"schema": "slicert.accuracy_report/1",
                                                           "variants": variants}, indent=1))


# -- the run -------------------------------------------------------------------------------------------------
def run(rounds: int, threads_list: list[int], out_dir: Path) -> dict:
    import engine  # noqa: F401
    from engine.bench.runner import run_benchmark
    from engine.bench.timing import TimingPolicy
    from engine.bundle import build_bundle
    from engine.envinfo import cpu_flags, cpu_model

    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    cls_slices = {split: [s for f, fr in files for s in _slices(f, fr)] for split, files in CLASSIFIER_IMAGES.items()}
    cine_path, cine = cine_slices()
    results = {"environment": {"cpu_model": cpu_model(), "cpu_flags": cpu_flags(
        ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")),
        "cpus": os.cpu_count(), "loadavg_start": list(os.getloadavg())}, "rounds": rounds, "models": {}}
    from pydicom.data import get_testdata_file

    cr = bl.cr_file(get_testdata_file("RG1_UNCR.dcm", download=False))
    us = bl.cine_frames(cine_path, max_frames=8)
    for name, (net, side, task, labels, title) in networks().items():
        work = out_dir / name
        work.mkdir(exist_ok=True)
        spec = spec_for(side, task)
        onnx_path = work / "model.onnx"
        _say(f"{name}: export to ONNX", t0)
        export(net, side, onnx_path)
        if task == "classification":
            calib_x, held_x = model_inputs(cls_slices["calib"], spec), model_inputs(cls_slices["held_out"], spec)
            inputs = cr
        else:
            calib_x, held_x = model_inputs(cine[0::2], spec), model_inputs(cine[1::2], spec)
            inputs = us
        agree = build_variants(name, onnx_path, task, calib_x, held_x, work, t0)
        write_source(work, name, task, labels, spec, agree)
        _say(f"{name}: building the bundle (times every passing variant on ONNX Runtime and OpenVINO)", t0)
        rep = build_bundle(work, work / f"{name}.slicert", target="cpu", time_cpu=True, force=True)
        entry = {"title": title, "agreement": agree, "variants": rep.variants, "excluded": rep.excluded,
                 "build_timings_ms": rep.manifest["cpu_timings"]["median_ms"],
                 "best": rep.manifest["cpu_timings"]["fastest"], "runs": {}}
        for threads in threads_list:
            configs = [
                bl.torch_eager("(1) PyTorch eager FP32", lambda n=net: n, inputs, spec, task, threads=threads),
                bl.onnxruntime_user("(2) ONNX Runtime FP32", onnx_path, inputs, spec, task, threads=threads),
                bl.openvino_user("(3) OpenVINO INT8 (NNCF)", work / "model.int8.openvino.xml", inputs, spec, task,
                                 threads=threads),
                bl.slicert("(4) SliceRT best", rep.path, inputs, threads=threads),
            ]
            _say(f"{name}: {rounds} interleaved rounds at {threads} thread(s) on {inputs.name}", t0)
            br = run_benchmark(configs, n=rounds, warmup=2, policy=TimingPolicy(disable_gc=True))
            rows = {}
            for c in br.configurations:
                st = c.stats()
                rows[c.name] = {"total_ms": st["total"]["p50"],
                                "stages_ms": {k: v["p50"] for k, v in st.items() if k != "total"},
                                "load_ms": c.load_ms, "meta": {k: v for k, v in c.meta.items() if k != "input"}}
            s4 = br.result("(4) SliceRT best")
            rows["(4) SliceRT best"]["chose"] = _session_choice(rep.path, threads)
            rows["(4) SliceRT best"]["n"] = int(s4.samples_ns["total"].size)
            entry["runs"][str(threads)] = rows
        results["models"][name] = entry
        _say(f"{name}: done", t0)
    results["environment"]["loadavg_end"] = list(os.getloadavg())
    results["wall_s"] = time.perf_counter() - t0
    return results


def _session_choice(bundle: Path, threads: int) -> dict:
    import engine

    with engine.load(bundle, threads=threads) as s:
        return {"backend": s.info["backend"], "precision": s.info["precision"], "why": s.info["why"]}


def markdown(r: dict) -> str:
    env = r["environment"]
    lines = ["## Real-size models on the CPU: PyTorch, ONNX Runtime, OpenVINO INT8, SliceRT (issue 14)", "",
             f"`python benchmarks/bench_cpu_backends.py --rounds {r['rounds']}` on {env['cpu_model']} "
             f"({env['cpus']} cores, flags {env['cpu_flags']}), load average {env['loadavg_start'][0]:.1f} -> "
             f"{env['loadavg_end'][0]:.1f} (shared machine); {r['wall_s']:.0f} s wall. Random MONAI weights: "
             f"latency and agreement only. Medians of {r['rounds']} interleaved rounds (after 2 warm-up rounds); "
             f"ratios from the same run.", ""]
    for name, m in r["models"].items():
        lines += [f"### {m['title']}", ""]
        a = m["agreement"]["int8_ov"]
        agree = (f"top-1 agreement {a['top1_agreement']:.2f}, max |Δp| {a['max_abs_prob_diff']:.3f}"
                 if "top1_agreement" in a else f"Dice vs FP32 mean {a['dice_vs_fp32_mean']:.3f}, min "
                 f"{a['dice_vs_fp32_min']:.3f}")
        lines.append(f"- NNCF INT8 vs FP32 on {a['n']} held-out real DICOM inputs: {agree} "
                     f"({'passed' if a['passed'] else 'FAILED'} the >= {AGREEMENT_GATE} gate)")
        if "bf16_ov" in m["agreement"]:
            lines.append(f"- BF16 vs FP32: {m['agreement']['bf16_ov']}")
        else:
            lines.append("- BF16: not measured, this CPU has no AMX-BF16/AVX512-BF16")
        bt = m["build_timings_ms"]
        cells = "; ".join(f"{b} " + ", ".join(f"{v} {ms:.1f}" for v, ms in pv.items()) for b, pv in bt.items())
        lines += [f"- `slicert build` timings (inference, 1 thread, ms): {cells}; best = {m['best']['backend']} "
                  f"{m['best']['variant']}", "",
                  "| threads | (1) PyTorch | (2) ORT FP32 | (3) OV INT8 | (4) SliceRT (chose) | (3) infer | (4) infer "
                  "| (3)/(4) e2e | (4) infer / (3) infer | (2)/(4) e2e |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for t, rows in m["runs"].items():
            p = [rows[k]["total_ms"] for k in ("(1) PyTorch eager FP32", "(2) ONNX Runtime FP32",
                                               "(3) OpenVINO INT8 (NNCF)", "(4) SliceRT best")]
            i3 = rows["(3) OpenVINO INT8 (NNCF)"]["stages_ms"]["infer"]
            i4 = rows["(4) SliceRT best"]["stages_ms"]["infer"]
            ch = rows["(4) SliceRT best"]["chose"]
            lines.append(f"| {t} | {p[0]:.1f} | {p[1]:.1f} | {p[2]:.1f} | {p[3]:.1f} ({ch['backend']} {ch['precision']}) "
                         f"| {i3:.1f} | {i4:.1f} | {p[2] / p[3]:.2f}x | {i4 / i3:.2f} | {p[1] / p[3]:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=ROOT / ".slicert-cache" / "bench-cpu")
    args = ap.parse_args()
    os.environ.setdefault("SLICERT_CACHE", str(args.out / "cache"))
    r = run(args.rounds, args.threads, args.out)
    (args.out / "cpu_backends.json").write_text(json.dumps(r, indent=1, default=str))
    md = markdown(r)
    (args.out / "cpu_backends.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
