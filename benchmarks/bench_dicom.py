"""DICOM ingestion latency: SliceRT (engine.dicom + the native kernel) against plain pydicom
(`pixel_array` + `apply_modality_lut` + `apply_voi_lut` + NumPy inversion + cv2.resize(INTER_AREA)
+ NumPy normalization), measured in the same run on the same files.

Suites
- chest CR (real, pydicom-data RG1_UNCR.dcm uncompressed and RG1_J2KR.dcm JPEG 2000 lossless,
  1955x1841, 15-bit MONOCHROME1): read + decode + full preprocessing to a 512x512 float32 input.
- echo cine (real, pydicom-data color3d_jpeg_baseline.dcm: 120 frames 480x640 YBR_FULL_422 JPEG
  baseline): per-frame latency to a 224x224x3 float32 input, time to the first frame, whole cine.
  pydicom baselines: `ds.pixel_array` (decodes every frame up front, then per-frame processing) and
  `pydicom.pixels.iter_pixels` (lazy).

Every configuration's output is checked against SliceRT's (max |difference| printed) so a faster
number never comes from skipping work. Threads: 1 for both sides unless --threads is given.

Usage
    python -m pytest benchmarks/bench_dicom.py --benchmark-only        # pytest-benchmark tables
    python benchmarks/bench_dicom.py [--repeats 7] [--threads 1] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest

CR_SPEC_ARGS = dict(out_height=512, out_width=512, resize="area", normalize="fixed", mean=(0.5,), std=(0.25,))
CINE_SPEC_ARGS = dict(out_height=224, out_width=224, in_channels=3, out_channels=3, resize="area",
                      normalize="fixed", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _path(name: str) -> str:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)  # never get_testdata_files(): it goes online
    if path is None:
        raise SystemExit(f"{name} not found: pip install pydicom-data")
    return path


def _set_threads(n: int) -> None:
    import cv2

    from engine.preprocess import set_num_threads

    set_num_threads(n)
    cv2.setNumThreads(n)


# -- SliceRT ------------------------------------------------------------------------------------------
def slicert_cr(path: str) -> np.ndarray:
    from engine import dicom
    from engine.preprocess import preprocess
    from engine.spec import PreprocessSpec

    s = dicom.read(path)
    return preprocess(s.pixels, s.spec_for(PreprocessSpec(**CR_SPEC_ARGS)))


def slicert_cine_frames(path: str):
    """Yield one model input per frame (decode + preprocess into one reused buffer)."""
    from engine import dicom
    from engine.preprocess import output_shape, preprocess_into
    from engine.spec import PreprocessSpec

    seq = dicom.read(path)
    spec = seq.spec_for(PreprocessSpec(**CINE_SPEC_ARGS))
    out = np.empty(output_shape(spec), dtype=np.float32)
    for frame in seq:
        preprocess_into(out, frame.pixels, spec)
        yield out


# -- plain pydicom + NumPy + OpenCV (what a user would write) -----------------------------------------
def _pydicom_grey01(ds, arr: np.ndarray) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    v = apply_voi_lut(apply_modality_lut(arr, ds), ds)
    bs = ds.BitsStored
    lo, hi = (0, 2**bs - 1) if ds.PixelRepresentation == 0 else (-(2 ** (bs - 1)), 2 ** (bs - 1) - 1)
    v = (v - lo) / (hi - lo)  # window output range of pydicom (no rescale in these files) -> [0, 1]
    if ds.PhotometricInterpretation == "MONOCHROME1":
        v = 1.0 - v
    return v


def pydicom_cr(path: str) -> np.ndarray:
    import cv2
    import pydicom

    ds = pydicom.dcmread(path)
    grey = _pydicom_grey01(ds, ds.pixel_array).astype(np.float32)
    small = cv2.resize(grey, (512, 512), interpolation=cv2.INTER_AREA)
    return ((small - 0.5) / 0.25)[None, None]


def _user_rgb(frame: np.ndarray) -> np.ndarray:
    import cv2

    x = cv2.resize(frame.astype(np.float32) / 255.0, (224, 224), interpolation=cv2.INTER_AREA)
    x = (x - np.array(CINE_SPEC_ARGS["mean"], np.float32)) / np.array(CINE_SPEC_ARGS["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))[None]


def pydicom_cine_eager(path: str):
    import pydicom

    frames = pydicom.dcmread(path).pixel_array  # all 120 frames decoded and converted to RGB first
    for f in frames:
        yield _user_rgb(f)


def pydicom_cine_lazy(path: str):
    from pydicom.pixels import iter_pixels

    for f in iter_pixels(path):
        yield _user_rgb(f)


# -- timing helpers ------------------------------------------------------------------------------------
def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def _time_calls(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Interleave the configurations (A B A B ...) so machine load drifts affect all alike."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up: imports, caches, first-touch allocations
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t)
    return out


def _cine_latencies(make_iter: Callable[[], object]) -> tuple[float, list[float], float]:
    """(time to first frame, per-frame latencies after the first, total) in seconds."""
    t0 = time.perf_counter()
    it = iter(make_iter())
    latencies = []
    prev = t0
    for _ in it:
        now = time.perf_counter()
        latencies.append(now - prev)
        prev = now
    return latencies[0], latencies[1:], prev - t0


def run(repeats: int, threads: int) -> dict:
    _set_threads(threads)
    report: dict = {"threads": threads, "repeats": repeats, "cr": {}, "cine": {}}
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):
        path = _path(name)
        diff = float(np.abs(slicert_cr(path) - pydicom_cr(path)).max())
        t = _time_calls({"slicert": lambda p=path: slicert_cr(p), "pydicom": lambda p=path: pydicom_cr(p)}, repeats)
        s, p = _median_ms(t["slicert"]), _median_ms(t["pydicom"])
        report["cr"][name] = {"slicert_ms": s, "pydicom_ms": p, "speedup": p / s, "max_abs_diff": diff}

    path = _path("color3d_jpeg_baseline.dcm")
    ours = [o.copy() for o in slicert_cine_frames(path)]
    theirs = list(pydicom_cine_lazy(path))
    diff = float(max(np.abs(a - b).max() for a, b in zip(ours, theirs)))
    configs = {"slicert": lambda: slicert_cine_frames(path), "pydicom_pixel_array": lambda: pydicom_cine_eager(path),
               "pydicom_iter_pixels": lambda: pydicom_cine_lazy(path)}
    results: dict[str, dict[str, list[float]]] = {k: {"first": [], "frame": [], "total": []} for k in configs}
    for _ in range(max(1, repeats // 2)):
        for name, make in configs.items():
            first, per_frame, total = _cine_latencies(make)
            results[name]["first"].append(first)
            results[name]["frame"].extend(per_frame)
            results[name]["total"].append(total)
    base = _median_ms(results["slicert"]["total"])
    for name, r in results.items():
        report["cine"][name] = {"first_frame_ms": _median_ms(r["first"]), "per_frame_median_ms": _median_ms(r["frame"]),
                                "per_frame_p99_ms": float(np.percentile(r["frame"], 99) * 1e3),
                                "whole_cine_ms": _median_ms(r["total"]),
                                "whole_cine_ratio_vs_slicert": _median_ms(r["total"]) / base}
    report["cine"]["max_abs_diff_vs_pydicom"] = diff
    return report


def _print(report: dict) -> None:
    print(f"threads={report['threads']} repeats={report['repeats']}  (medians; ratio = pydicom / SliceRT)")
    print(f"{'chest CR -> 512x512 float32':34s} {'SliceRT ms':>11s} {'pydicom ms':>11s} {'ratio':>7s} {'max|diff|':>10s}")
    for name, r in report["cr"].items():
        print(f"{name:34s} {r['slicert_ms']:11.1f} {r['pydicom_ms']:11.1f} {r['speedup']:6.1f}x {r['max_abs_diff']:10.2e}")
    print(f"\n{'echo cine (120 frames) -> 224x224x3':34s} {'first ms':>9s} {'frame ms':>9s} {'p99 ms':>8s} "
          f"{'cine ms':>9s} {'vs SliceRT':>10s}")
    for name, r in report["cine"].items():
        if isinstance(r, dict):
            print(f"{name:34s} {r['first_frame_ms']:9.1f} {r['per_frame_median_ms']:9.2f} {r['per_frame_p99_ms']:8.2f} "
                  f"{r['whole_cine_ms']:9.0f} {r['whole_cine_ratio_vs_slicert']:9.2f}x")
    print(f"max |SliceRT - pydicom| over all cine inputs: {report['cine']['max_abs_diff_vs_pydicom']:.2e}")


# -- pytest-benchmark ----------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    _set_threads(1)


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG1_J2KR.dcm"])
@pytest.mark.parametrize("impl", ["slicert", "pydicom"])
def test_chest_cr_end_to_end(benchmark, name, impl):
    path = _path(name)
    fn = slicert_cr if impl == "slicert" else pydicom_cr
    benchmark.group = f"dicom CR {name}: read+decode+preprocess to 512x512"
    out = benchmark.pedantic(fn, args=(path,), rounds=5, iterations=1, warmup_rounds=1)
    assert np.abs(out - slicert_cr(path)).max() < 0.05  # same work on both sides (resize filters differ)


@pytest.mark.parametrize("impl", ["slicert", "pydicom_pixel_array", "pydicom_iter_pixels"])
def test_echo_cine_all_frames(benchmark, impl):
    path = _path("color3d_jpeg_baseline.dcm")
    make = {"slicert": slicert_cine_frames, "pydicom_pixel_array": pydicom_cine_eager,
            "pydicom_iter_pixels": pydicom_cine_lazy}[impl]
    benchmark.group = "dicom echo cine: 120 frames decode+preprocess to 224x224x3 (divide by 120 for per frame)"
    count = benchmark.pedantic(lambda: sum(1 for _ in make(path)), rounds=3, iterations=1, warmup_rounds=0)
    assert count == 120


@pytest.mark.parametrize("impl", ["slicert", "pydicom_pixel_array"])
def test_echo_cine_first_frame(benchmark, impl):
    path = _path("color3d_jpeg_baseline.dcm")
    make = slicert_cine_frames if impl == "slicert" else pydicom_cine_eager
    benchmark.group = "dicom echo cine: time to the first model input"
    benchmark.pedantic(lambda: next(iter(make(path))), rounds=5, iterations=1, warmup_rounds=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the report here (refuses to overwrite an existing file)")
    args = ap.parse_args(argv)
    report = run(args.repeats, args.threads)
    _print(report)
    if args.json:
        if os.path.exists(args.json):
            print(f"refusing to overwrite {args.json}", file=sys.stderr)
            return 1
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=2)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
