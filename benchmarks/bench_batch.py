"""`slicert batch` throughput: in process vs a local Ray cluster with 1 and 2 workers, on real DICOM.

    python benchmarks/bench_batch.py --cr-bundle demo-out/bundles/cxr_nodule.slicert \
        --us-bundle demo-out/bundles/us_phantom.slicert [--cr-copies 24] [--us-copies 4] [--json out.json]

Inputs (real files from pydicom-data, copied into a temporary archive): chest CR RG1_UNCR.dcm and
RG3_UNCR.dcm (one row per image), and the echo cine color3d_jpeg_baseline.dcm (120 JPEG frames, one
row per frame). One in-process pass warms the page cache and lazy imports first; then every
configuration runs the same archive to a fresh table. A file is the unit of work, so a cine of one
file cannot spread over workers: --us-copies gives several. Rates are rows (images or
frames) per second of work; Ray's start-up (ray.init + each actor's engine.load) is reported apart.
This is a 2-core machine: 2 workers at 1 thread each use both cores, as does in-process at 2 threads.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.batch import run_batch  # noqa: E402

CR_FILES = ("RG1_UNCR.dcm", "RG3_UNCR.dcm")
US_FILE = "color3d_jpeg_baseline.dcm"


def _archive(root: Path, names: tuple[str, ...], copies: int) -> Path:
    from pydicom.data import get_testdata_file

    root.mkdir(parents=True)
    for k in range(copies):
        for n in names:
            shutil.copy(get_testdata_file(n, download=False), root / f"{k:03d}_{n}")
    return root


def _configs() -> list[dict]:
    return [{"name": "in-process, 1 thread", "executor": "in-process", "threads": 1},
            {"name": "in-process, 2 threads", "executor": "in-process", "threads": 2},
            {"name": "Ray, 1 worker x 1 thread", "executor": "ray", "workers": 1, "threads": 1},
            {"name": "Ray, 2 workers x 1 thread", "executor": "ray", "workers": 2, "threads": 1}]


def bench(bundle: Path, archive: Path, tmp: Path, label: str) -> list[dict]:
    import ray

    rows = []
    run_batch(archive, bundle, tmp / f"{label}-warm.parquet", chunk_size=4)  # page cache, lazy imports
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_init_s = time.perf_counter() - t0
    try:
        for i, cfg in enumerate(_configs()):
            kw = {k: v for k, v in cfg.items() if k != "name"}
            s = run_batch(archive, bundle, tmp / f"{label}-{i}.parquet", chunk_size=4, **kw)
            assert not s.failed and s.ok_files == s.files, s
            rows.append({"input": label, "config": cfg["name"], "rows": s.rows, "work_s": s.work_s,
                         "rows_per_s": s.images_per_s, "startup_s": s.startup_s})
    finally:
        ray.shutdown()
    for r in rows:
        r["ray_init_s"] = ray_init_s if "Ray" in r["config"] else 0.0
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cr-bundle", type=Path, required=True)
    ap.add_argument("--us-bundle", type=Path, required=True)
    ap.add_argument("--cr-copies", type=int, default=24)
    ap.add_argument("--us-copies", type=int, default=4)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="slicert-bench-batch-"))
    try:
        results = bench(args.cr_bundle, _archive(tmp / "cr", CR_FILES, args.cr_copies), tmp, "chest CR (real)")
        results += bench(args.us_bundle, _archive(tmp / "us", (US_FILE,), args.us_copies), tmp,
                         "echo cine frames (real)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = {r["input"]: r["rows_per_s"] for r in results if r["config"] == "in-process, 1 thread"}
    print(f"| input | configuration | rows | rows/s | vs in-process 1 thread | start-up s (ray.init + loads) |")
    print("|---|---|---:|---:|---:|---:|")
    for r in results:
        start = r["startup_s"] + r["ray_init_s"]
        print(f"| {r['input']} | {r['config']} | {r['rows']} | {r['rows_per_s']:.1f} | "
              f"{r['rows_per_s'] / base[r['input']]:.2f}x | {start:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
