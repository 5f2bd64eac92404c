"""The models the baselines run: the trained zoo when it exists, else clearly labelled stand-ins.

`Artifacts` holds, for one task: the FP32 teacher (a torch.nn.Module loader for baseline 1 and its ONNX
export for baseline 2), the FP32 student ONNX (baseline 3) and the SliceRT bundle with the INT8 / mixed
student (baseline 4), plus the model's PreprocessSpec, labels and VOI policy.

The trained zoo (`from_zoo()`) is the toolchain's output directory (`slicert export --out DIR`; layout
in tools/pipeline.py: DIR/<task>/weights/teacher.pt, DIR/<task>/teacher/model.onnx,
DIR/<task>/student/model.onnx) or a `slicert demo --out DIR` directory (toolchain in DIR/toolchain,
bundles in DIR/bundles), plus a bundle of the quantized student found next to them (or built with
`build_missing=True`: `slicert quantize` + `slicert build --target cpu` into a work directory).

Stand-ins (`standin()`) use the zoo's own architectures (tools.models) with seeded, UNTRAINED weights,
exported with torch.onnx and quantized to INT8 Q/DQ with ONNX Runtime on random calibration data.
Latency does not depend on the weight values, so stand-ins measure speed faithfully before the trained
zoo exists; they say nothing about accuracy and every report names them as stand-ins.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.spec import PreprocessSpec


@dataclass
class Artifacts:
    dataset: str  # zoo task / dataset name (cxr_nodule, us_phantom, ...)
    task: str  # classification | segmentation
    spec: PreprocessSpec
    labels: list[str]
    voi_policy: str
    teacher_module: Callable[[], Any]  # -> eval-mode torch.nn.Module, FP32
    teacher_onnx: Path
    student_onnx: Path
    bundle: Path
    provenance: str
    notes: list[str] = field(default_factory=list)


def task_of(dataset: str) -> str:
    from tools.data import _module

    return _module(dataset)["task"]


def _export(module: Any, spec: PreprocessSpec, out_name: str, path: Path) -> None:
    import torch

    x = torch.zeros(1, spec.out_channels, spec.out_height, spec.out_width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module,
            (x,),
            str(path),
            input_names=["input"],
            output_names=[out_name],
            dynamic_axes={"input": {0: "N"}, out_name: {0: "N"}},
            opset_version=17,
            dynamo=False,
        )


def _quantize_int8(fp32: Path, out: Path, spec: PreprocessSpec, n_calib: int = 16) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    rng = np.random.default_rng(0)
    shape = (1, spec.out_channels, spec.out_height, spec.out_width)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": rng.standard_normal(shape).astype(np.float32)} for _ in range(n_calib)])

        def get_next(self):
            return next(self.it, None)

    prepped = out.with_suffix(".prep.onnx")
    quant_pre_process(str(fp32), str(prepped), skip_symbolic_shape=True)
    quantize_static(
        str(prepped),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    prepped.unlink()


def standin(dataset: str, workdir: Path, *, rebuild: bool = False) -> Artifacts:
    """Untrained zoo-architecture models for `dataset` (cxr_nodule, us_phantom), cached in workdir."""
    from engine.bundle import build_bundle
    from tools.data import _module
    from tools.models import PAIRS, build

    m = _module(dataset)
    task, labels, spec, voi_policy = m["task"], list(m["labels"]), m["spec"](), m["voi_policy"]
    t_arch, s_arch = PAIRS[task]
    k, c = len(labels), spec.out_channels
    out_name = "scores" if task == "classification" else "logits"
    d = workdir / f"standin-{dataset}"
    bundle = d / f"{dataset}-standin.slicert"

    def teacher() -> Any:
        return build(t_arch, k, c, seed=0).eval()

    if rebuild and d.exists():
        shutil.rmtree(d)
    if not bundle.exists():
        (d / "teacher").mkdir(parents=True, exist_ok=True)
        (d / "student").mkdir(parents=True, exist_ok=True)
        _export(teacher(), spec, out_name, d / "teacher" / "model.onnx")
        _export(build(s_arch, k, c, seed=1).eval(), spec, out_name, d / "student" / "model.onnx")
        _quantize_int8(d / "student" / "model.onnx", d / "student" / "model.int8.onnx", spec)
        meta = {
            "name": f"{dataset}-student-standin",
            "task": task,
            "labels": labels,
            "preprocess": spec.to_dict(),
            "voi_policy": voi_policy,
            "dataset": {"name": dataset, "note": "stand-in: untrained weights, latency only"},
            "metrics": {},
            "onnx_max_abs_err": 0.0,
            "source_sha256": "0" * 64,
        }
        (d / "student" / "model.json").write_text(json.dumps(meta, indent=1))
        build_bundle(d / "student", bundle, target="cpu", precision="int8", force=True)
    return Artifacts(
        dataset,
        task,
        spec,
        labels,
        voi_policy,
        teacher,
        d / "teacher" / "model.onnx",
        d / "student" / "model.onnx",
        bundle,
        provenance=f"STAND-IN: zoo architectures {t_arch}/{s_arch} with untrained seeded weights "
        f"(latency only, no accuracy meaning); INT8 by ONNX Runtime static Q/DQ on random "
        f"calibration data",
    )


def _find_bundle(dataset: str, zoo_dir: Path) -> Path | None:
    for pattern in (
        f"{dataset}/*.slicert",
        f"{dataset}.slicert",
        f"bundles/{dataset}*.slicert",
        f"{dataset}*.slicert",
    ):
        hits = sorted(zoo_dir.glob(pattern))
        if hits:
            return hits[0]
    return None


def from_zoo(dataset: str, zoo_dir: Path, *, workdir: Path, build_missing: bool = False,
             bundle: Path | None = None) -> Artifacts:
    """The trained models of `dataset` from a toolchain output directory (see the module docstring);
    `bundle` names the SliceRT bundle explicitly instead of searching the zoo for one."""
    from tools.data import _module

    # `slicert demo --out DIR` nests the toolchain under DIR/toolchain and puts bundles in DIR/bundles.
    root = zoo_dir / "toolchain" if (zoo_dir / "toolchain" / dataset).is_dir() else zoo_dir
    d = root / dataset
    teacher_pt = d / "weights" / "teacher.pt"
    needed = {
        "teacher weights": teacher_pt,
        "teacher ONNX": d / "teacher" / "model.onnx",
        "student ONNX": d / "student" / "model.onnx",
        "student model.json": d / "student" / "model.json",
    }
    missing = [f"{k} ({v})" for k, v in needed.items() if not v.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{zoo_dir} lacks, for {dataset}: {', '.join(missing)}; run `slicert export "
            f"--out {zoo_dir}` first"
        )
    meta = json.loads((d / "student" / "model.json").read_text())
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    bundle = bundle or _find_bundle(dataset, zoo_dir) or _find_bundle(dataset, root)
    notes = []
    if bundle is None:
        if not build_missing:
            raise FileNotFoundError(
                f"no bundle for {dataset} under {zoo_dir} (looked for {dataset}/*.slicert, "
                f"{dataset}.slicert, bundles/{dataset}*.slicert); build one with `slicert quantize "
                f"{d / 'student'} --out Q && slicert build Q --out {d / (dataset + '.slicert')}`, "
                f"or pass --build-bundles"
            )
        from engine.bundle import build_bundle
        from tools.quantize import quantize_export

        q = workdir / f"zoo-{dataset}" / "quant"
        bundle = workdir / f"zoo-{dataset}" / f"{dataset}.slicert"
        if not bundle.exists():
            quantize_export(d / "student", q, force=True)
            build_bundle(q, bundle, target="cpu", force=True)
        notes.append(f"bundle built here from the zoo's student: {bundle}")

    def teacher() -> Any:
        import torch

        from tools.models import build

        ck = torch.load(teacher_pt, map_location="cpu", weights_only=True)
        model = build(ck["arch"], int(ck["num_classes"]), int(ck["in_channels"]))
        model.load_state_dict(ck["state_dict"])
        return model.eval()

    return Artifacts(
        dataset,
        meta["task"],
        spec,
        list(meta["labels"]),
        meta.get("voi_policy", _module(dataset)["voi_policy"]),
        teacher,
        d / "teacher" / "model.onnx",
        d / "student" / "model.onnx",
        bundle,
        provenance=f"trained zoo {zoo_dir}: teacher {teacher_pt.name} (PyTorch, BatchNorm unfolded as "
        f"trained) and its ONNX export, distilled student ONNX, bundle {bundle.name}",
        notes=notes,
    )
