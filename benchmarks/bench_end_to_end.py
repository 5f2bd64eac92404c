"""End-to-end latency per slice: the four pipelines of tools/baselines.py as pytest-benchmark suites.

    python -m pytest benchmarks/bench_end_to_end.py --benchmark-only            # tables + JSON (.benchmarks/)
    python -m pytest benchmarks/bench_end_to_end.py --benchmark-disable -q      # smoke: each body once

Groups: one per (task, input); inside a group (1) PyTorch eager teacher, (2) ONNX Runtime teacher,
(3) ONNX Runtime student (user preprocessing), (4) SliceRT bundle. pytest-benchmark times one
configuration after another; the interleaved numbers that RESULTS.md quotes come from
benchmarks/run_baselines.py. Models: the trained zoo once it exists, stand-ins (untrained, latency
only) until then; threads: SLICERT_BENCH_THREADS (default 1, the least noisy on a shared box).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools import baselines as bl  # noqa: E402
from tools import zoo  # noqa: E402
from engine.bench.configs import synthetic_image  # noqa: E402

THREADS = int(os.environ.get("SLICERT_BENCH_THREADS", "1"))
WORKDIR = ROOT / ".slicert-cache" / "bench"
PIPELINES = ("torch_teacher", "ort_teacher", "ort_student", "slicert")
# Input image size of each zoo dataset's simulated detector/scanner output (tools.data).
SIM_SHAPES = {"cxr_nodule": ((192, 192), "uint16"), "us_phantom": ((256, 256), "uint8")}


@pytest.fixture(scope="module")
def artifacts():
    cache: dict[str, zoo.Artifacts] = {}

    def get(dataset: str) -> zoo.Artifacts:
        if dataset not in cache:
            cache[dataset] = zoo.standin(dataset, WORKDIR)
        return cache[dataset]

    return get


def _inputs(dataset: str, which: str) -> bl.InputSet:
    if which == "real":
        if dataset == "cxr_nodule":
            from pydicom.data import get_testdata_file

            return bl.cr_file(get_testdata_file("RG1_UNCR.dcm", download=False))
        import deid_data

        return bl.cine_frames(
            Path(deid_data.__file__).parent / "data" / "ultrasounds" / "ultrasound-multiframe.dcm",
            max_frames=8,
        )
    shape, dtype = SIM_SHAPES[dataset]
    img = synthetic_image(shape, dtype)
    if dtype == "uint8":
        img = (img >> 4).astype("uint8")
    return bl.raw_images(
        "synthetic pattern", [img], f"seeded synthetic pattern {shape} {dtype} (not a real image)"
    )


def _config(pipeline: str, art: zoo.Artifacts, inputs: bl.InputSet):
    if pipeline == "torch_teacher":
        return bl.torch_eager(pipeline, art.teacher_module, inputs, art.spec, art.task, threads=THREADS)
    if pipeline == "ort_teacher":
        return bl.onnxruntime_user(pipeline, art.teacher_onnx, inputs, art.spec, art.task, threads=THREADS)
    if pipeline == "ort_student":
        return bl.onnxruntime_user(pipeline, art.student_onnx, inputs, art.spec, art.task, threads=THREADS)
    return bl.slicert(pipeline, art.bundle, inputs, threads=THREADS)


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize(
    "dataset,which",
    [
        ("cxr_nodule", "real"),
        ("cxr_nodule", "synthetic"),
        ("us_phantom", "real"),
        ("us_phantom", "synthetic"),
    ],
)
def test_end_to_end(benchmark, artifacts, dataset, which, pipeline):
    if zoo.task_of(dataset) == "segmentation":
        pytest.importorskip("engine.postprocess", reason="SliceRT segmentation needs engine.postprocess")
    art = artifacts(dataset)
    inputs = _inputs(dataset, which)
    cfg = _config(pipeline, art, inputs)
    benchmark.group = f"end-to-end {dataset} / {inputs.name}"
    benchmark.extra_info.update({"input": inputs.description, "threads": THREADS, "models": art.provenance})
    cfg.load()
    try:
        stages = cfg.step()  # validates the pipeline end to end before timing
        assert "preprocess" in stages and "infer" in stages
        benchmark(cfg.step)
    finally:
        cfg.close()
