"""Fused preprocessing kernel (engine.preprocess, CPU, one thread) against the chain a user would write,
and against a memory-bandwidth floor, all measured in the same run.

Inputs
- chest CR (real): pydicom-data RG1_UNCR.dcm, 1955x1841, 15-bit MONOCHROME1, window 15000/30000 from
  the file. Decoded once before timing: this suite times preprocessing only (decode is in bench_dicom).
- synthetic: a seeded 2048x2048 uint16 image of 12-bit values (random, not a medical image), described
  by an in-memory pydicom Dataset (MONOCHROME1, window 2048/4096) so the user chain can run on it.
Outputs: 256x256 and 512x512, float32 and float16, NCHW, area resize, fixed normalization.

Configurations per case
- slicert: `preprocess_into(out, raw, spec)` into a preallocated buffer (set_num_threads(1)).
- user: pydicom `apply_modality_lut` + `apply_voi_lut` + NumPy MONOCHROME1 inversion +
  `cv2.resize(INTER_AREA)` (cv2.setNumThreads(1)) + NumPy normalization + cast. Its output is
  checked against SliceRT's before timing (max |difference| printed), so a faster number never
  comes from skipping work.
- floor: `np.copyto` of a buffer as large as the bytes the kernel must move (input read once +
  output written once). A copy reads and writes every byte, so the floor for moving B bytes is half
  the copy time of B bytes; achieved GB/s = B / kernel time. The buffers are cache-resident in both
  (the same image is processed repeatedly), so kernel and floor are measured in the same regime.

Usage
    python -m pytest benchmarks/bench_preprocess.py --benchmark-only     # pytest-benchmark groups
    python benchmarks/bench_preprocess.py [--repeats 30] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

OUT_SIZES = (256, 512)
OUT_DTYPES = ("float32", "float16")
MEAN, STD = 0.5, 0.25


@dataclass
class Source:
    name: str
    raw: np.ndarray
    ds: Any  # pydicom Dataset describing raw (for the user chain)
    real: bool


def load_cr() -> Source:
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm", download=False)  # never get_testdata_files(): it goes online
    if path is None:
        raise FileNotFoundError("RG1_UNCR.dcm not found: pip install pydicom-data")
    ds = pydicom.dcmread(path)
    return Source("chest CR RG1_UNCR (real)", ds.pixel_array, ds, True)


def make_synthetic() -> Source:
    from pydicom.dataset import Dataset

    raw = np.random.default_rng(20261123).integers(0, 4096, (2048, 2048), dtype=np.uint16)
    ds = Dataset()
    ds.Rows, ds.Columns = raw.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    return Source("synthetic 2048^2 uint16 (seeded random)", raw, ds, False)


def spec_for(src: Source, out: int, out_dtype: str):
    from engine.spec import PreprocessSpec

    ds = src.ds
    return PreprocessSpec(
        out_height=out, out_width=out, out_dtype=out_dtype, resize="area",
        rescale_slope=float(ds.get("RescaleSlope", 1.0)), rescale_intercept=float(ds.get("RescaleIntercept", 0.0)),
        voi_function="linear", window_center=float(ds.WindowCenter), window_width=float(ds.WindowWidth),
        invert=ds.PhotometricInterpretation == "MONOCHROME1", normalize="fixed", mean=(MEAN,), std=(STD,))


def user_chain(src: Source, out: int, out_dtype: str) -> np.ndarray:
    """What the pydicom docs and a typical notebook do."""
    import cv2
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = src.ds
    arr = apply_voi_lut(apply_modality_lut(src.raw, ds), ds)  # float64 in [0, 2^BitsStored - 1]
    arr = arr / (2.0 ** ds.BitsStored - 1)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        arr = 1.0 - arr
    arr = cv2.resize(arr.astype(np.float32), (out, out), interpolation=cv2.INTER_AREA)
    arr = (arr - MEAN) / STD
    return arr.astype(out_dtype)[None, None]


def slicert_runner(src: Source, out: int, out_dtype: str) -> tuple[Callable[[], None], np.ndarray]:
    from engine.preprocess import output_shape, preprocess_into

    spec = spec_for(src, out, out_dtype)
    buf = np.empty(output_shape(spec), dtype=out_dtype)

    def run() -> None:
        preprocess_into(buf, src.raw, spec)

    return run, buf


def floor_runner(nbytes: int) -> Callable[[], None]:
    a = np.ones(nbytes, dtype=np.uint8)
    b = np.empty_like(a)
    return lambda: np.copyto(b, a)


def bytes_moved(src: Source, out: int, out_dtype: str) -> int:
    return src.raw.nbytes + out * out * np.dtype(out_dtype).itemsize


def check_agreement(src: Source, out: int, out_dtype: str) -> float:
    run, buf = slicert_runner(src, out, out_dtype)
    run()
    ref = user_chain(src, out, out_dtype).astype(np.float64)
    diff = float(np.max(np.abs(buf.astype(np.float64) - ref)))
    # float32: the chains differ only in float64 vs float32 VOI (|x| <= 2 after normalization);
    # float16: plus one half-precision rounding of values up to 2 (ulp 2^-9).
    bound = 1e-4 if out_dtype == "float32" else 2.0 ** -9
    if diff > bound:
        raise AssertionError(f"{src.name} {out} {out_dtype}: SliceRT and the user chain disagree by {diff}")
    return diff


def set_single_thread() -> None:
    import cv2

    from engine.preprocess import set_num_threads

    set_num_threads(1)
    cv2.setNumThreads(1)


# -- pytest-benchmark ----------------------------------------------------------------------------------
_SOURCES: dict[str, Source] = {}


def _source(kind: str) -> Source:
    if kind not in _SOURCES:
        _SOURCES[kind] = load_cr() if kind == "cr" else make_synthetic()
    return _SOURCES[kind]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    pytest.importorskip("cv2")
    from engine.preprocess import get_num_threads, set_num_threads

    before = get_num_threads()
    set_single_thread()
    yield
    set_num_threads(before)


CASES = [(kind, out, dt) for kind in ("cr", "synthetic") for out in OUT_SIZES for dt in OUT_DTYPES]
IDS = [f"{k}-{o}-{d}" for k, o, d in CASES]


@pytest.mark.parametrize("kind,out,out_dtype", CASES, ids=IDS)
def test_slicert(benchmark, kind, out, out_dtype):
    src = _source(kind)
    check_agreement(src, out, out_dtype)
    run, _ = slicert_runner(src, out, out_dtype)
    benchmark.group = f"preprocess {kind} -> {out}^2 {out_dtype}"
    benchmark.extra_info.update(bytes_moved=bytes_moved(src, out, out_dtype), real_data=src.real)
    benchmark(run)


@pytest.mark.parametrize("kind,out,out_dtype", CASES, ids=IDS)
def test_user_chain(benchmark, kind, out, out_dtype):
    src = _source(kind)
    benchmark.group = f"preprocess {kind} -> {out}^2 {out_dtype}"
    benchmark.extra_info.update(real_data=src.real)
    benchmark.pedantic(user_chain, args=(src, out, out_dtype), rounds=5, iterations=1)


@pytest.mark.parametrize("kind,out,out_dtype", CASES, ids=IDS)
def test_copy_floor(benchmark, kind, out, out_dtype):
    src = _source(kind)
    n = bytes_moved(src, out, out_dtype)
    benchmark.group = f"preprocess {kind} -> {out}^2 {out_dtype}"
    benchmark.extra_info.update(bytes_copied=n, note="floor for moving n bytes = half of this copy's time")
    benchmark(floor_runner(n))


# -- script mode -----------------------------------------------------------------------------------------
def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up (tables, caches)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=30, help="timed calls per SliceRT / floor configuration")
    ap.add_argument("--user-repeats", type=int, default=5, help="timed calls of the (slow) user chain")
    ap.add_argument("--json", help="also write the results to this JSON file (refuses to overwrite)")
    args = ap.parse_args(argv)
    if args.json:
        import os

        if os.path.exists(args.json):
            print(f"refusing to overwrite {args.json}", file=sys.stderr)
            return 2

    from engine.envinfo import environment

    set_single_thread()
    env = environment()
    print(f"machine: {env.get('cpu_model', '?')}; one thread (SliceRT and OpenCV); shared machines are noisy")
    dram = floor_runner(256 * 2**20)
    dram_gbs = 2 * 256 * 2**20 / (_median_ms(dram, 5) / 1e3) / 1e9
    rows = []
    header = (f"{'case':62s} {'slicert ms':>10s} {'user ms':>9s} {'speedup':>8s} {'floor ms':>9s} "
              f"{'x floor':>8s} {'GB/s':>6s} {'max|diff|':>9s}")
    print(header)
    print("-" * len(header))
    for kind, out, dt in CASES:
        src = _source(kind)
        diff = check_agreement(src, out, dt)
        run, _ = slicert_runner(src, out, dt)
        n = bytes_moved(src, out, dt)
        floor_copy = floor_runner(n)
        # Interleave so that machine noise hits every configuration alike.
        k, f = [], []
        for _ in range(3):
            k.append(_median_ms(run, max(1, args.repeats // 3)))
            f.append(_median_ms(floor_copy, max(1, args.repeats // 3)))
        t_k, t_copy = statistics.median(k), statistics.median(f)
        t_user = _median_ms(lambda: user_chain(src, out, dt), args.user_repeats)
        t_floor = t_copy / 2
        row = dict(case=f"{src.name} -> {out}^2 {dt}", real_data=src.real, slicert_ms=t_k, user_ms=t_user,
                   speedup=t_user / t_k, floor_ms=t_floor, x_floor=t_k / t_floor, bytes_moved=n,
                   achieved_gbs=n / (t_k / 1e3) / 1e9, copy_gbs=2 * n / (t_copy / 1e3) / 1e9, max_abs_diff=diff)
        rows.append(row)
        print(f"{row['case']:62s} {t_k:10.3f} {t_user:9.1f} {row['speedup']:7.0f}x {t_floor:9.3f} "
              f"{row['x_floor']:7.2f}x {row['achieved_gbs']:6.1f} {diff:9.1e}")
    print(f"\ncopy bandwidth (read+write) at the kernel's working-set size: "
          f"{statistics.median(r['copy_gbs'] for r in rows):.1f} GB/s; 256 MiB copy (DRAM regime): {dram_gbs:.1f} GB/s")
    if args.json:
        import os
        import tempfile

        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.json)) or ".", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump({"environment": env, "results": rows, "dram_copy_gbs": dram_gbs}, fh, indent=2, default=str)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
