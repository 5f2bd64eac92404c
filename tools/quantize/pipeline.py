"""`quantize_export`: FP32 export folder -> FP16, INT8 (and mixed) ONNX models + accuracy report.

Order of work: validate everything (model, sidecar, data, outputs) before any computation; calibrate
once; build variants; evaluate every variant on the held-out test split; choose mixed-precision
exclusions on the validation split only; gate; write outputs atomically (the export folder is only
read, and checked unchanged at the end).
"""
from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InputError
from tools.quantize import calibrate as calib_mod
from tools.quantize import cpu_speed, graph, int8, metrics, runner, sensitivity
from tools.quantize import data as data_mod
from tools.quantize import fp16 as fp16_mod
from tools.quantize import gate as gate_mod
from tools.quantize import openvino_forms
from tools.quantize import report as report_mod

FILES = {"fp16": "model.fp16.onnx", "int8": "model.int8.onnx", "int8_ort": "model.int8.ort.onnx",
         "mixed": "model.mixed.onnx", "mixed_ort": "model.mixed.ort.onnx"}
REPORT_JSON, REPORT_MD = "accuracy_report.json", "accuracy_report.md"
TARGET = {"fp16": "tensorrt", "int8": "tensorrt", "int8_ort": "onnxruntime", "mixed": "tensorrt",
          "mixed_ort": "onnxruntime"}
MAX_EXCLUDED_FRACTION = 0.5  # beyond half the layers in FP32, mixed precision is not worth shipping


def _read_meta(export_dir: Path) -> dict[str, Any]:
    from engine.spec import PreprocessSpec

    path = export_dir / "model.json"
    if not path.is_file():
        raise InputError(f"{export_dir}: model.json not found (run `slicert export` first)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise InputError(f"{path}: expected a JSON object")
    for key in ("task", "labels", "preprocess"):
        if key not in meta:
            raise InputError(f"{path}: missing field {key!r}")
    if meta["task"] not in ("classification", "segmentation"):
        raise InputError(f"{path}: task must be 'classification' or 'segmentation', got {meta['task']!r}")
    if not isinstance(meta["labels"], list) or len(meta["labels"]) < 2:
        raise InputError(f"{path}: labels must list at least 2 classes")
    meta["_spec"] = PreprocessSpec.from_dict(meta["preprocess"])
    return meta


def _threshold(meta: dict[str, Any]) -> float:
    """Operating point for binary classifiers: model.json metrics.threshold / operating_point, else 0.5."""
    m = meta.get("metrics") or {}
    for key in ("threshold", "operating_point"):
        v = m.get(key) if isinstance(m, dict) else None
        if isinstance(v, dict):
            v = v.get("threshold")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1:
            return float(v)
    return 0.5


def _resolve_dataset(dataset: Any, meta: dict[str, Any], chw: tuple, calib_n: int) -> data_mod.QuantDataset:
    task, k = meta["task"], len(meta["labels"])
    if isinstance(dataset, data_mod.QuantDataset):
        # Re-validate against THIS model: shapes, dtypes, NaN, calibration size.
        calib = data_mod.calibration_split(dataset.calib.x, chw, calib_n)
        for name in ("val", "test"):
            s = getattr(dataset, name)
            data_mod.check_inputs(s.x, chw, f"{name} split")
            data_mod.check_targets(s.y, len(s.x), task, f"{name} split targets", k)
        return data_mod.QuantDataset(calib=calib, val=dataset.val, test=dataset.test, provenance=dataset.provenance)
    if isinstance(dataset, (str, Path)):
        raw = data_mod.load_npz_splits(dataset)
        return data_mod.from_raw_splits(raw, meta["_spec"], task=task, num_classes=k, chw=chw, calib_n=calib_n,
                                        provenance={"description": f"raw splits from {dataset}"})
    if isinstance(dataset, Mapping):
        return data_mod.from_raw_splits(dataset, meta["_spec"], task=task, num_classes=k, chw=chw, calib_n=calib_n,
                                        provenance={"description": "raw splits given by the caller"})
    if dataset is None:
        from tools.quantize.toolchain import dataset_for_export

        return dataset_for_export(meta, chw=chw, calib_n=calib_n)
    raise InputError(f"dataset: expected a QuantDataset, a mapping of raw splits or None, got {type(dataset).__name__}")


def _evaluate(name: str, model, split: data_mod.Split, task: str, labels: list[str], threshold: float,
              ref_out: np.ndarray | None, boot: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    if name == "fp16":  # float16 storage between layers, as a float16 engine has it (see fp16.emulate)
        out = fp16_mod.run_emulated(model, split.x)
    else:
        out = runner.run_batched(runner.session(model), split.x)
    if not np.all(np.isfinite(out)):
        raise InputError(f"{name}: non-finite outputs on the test split")
    res = metrics.evaluate(task, split.y, out, labels=labels, threshold=threshold, reference=ref_out, boot=boot)
    return res, out


def quantize_export(export_dir: str | Path, out_dir: str | Path, *, dataset: Any = None, method: str = "max",
                    calib_n: int = data_mod.MIN_CALIB_SLICES, budget_auc: float = gate_mod.DEFAULT_BUDGET_AUC,
                    budget_dice: float = gate_mod.DEFAULT_BUDGET_DICE, accept_loss: bool = False,
                    force: bool = False, percentile: float = calib_mod.DEFAULT_PERCENTILE,
                    max_excluded: int | None = None, cpu_speed_check: bool = True, openvino: bool = True,
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Quantize a toolchain export (model.onnx + model.json) into FP16/INT8/mixed models and an accuracy report.

    dataset: None (the toolchain dataset named in model.json), a mapping {"calib"|"val"|"test": (raw images,
    targets)} or an .npz path (see data.load_npz_splits), both preprocessed here through engine.preprocess
    with the model's spec, or a QuantDataset of model inputs. method: "max" | "percentile" | "entropy". Budgets are absolute metric losses (0.01 = one
    AUC / Dice point). Returns the report dict (also written to out_dir/accuracy_report.json).
    Raises InputError (bad model/data/arguments), OutputExists (outputs exist, force=False),
    AccuracyGateError (a variant out of budget, accept_loss=False; the report is still written).
    """
    say = progress or (lambda _msg: None)
    export_dir, out_dir = Path(export_dir), Path(out_dir)
    if method not in calib_mod.METHODS:
        raise InputError(f"calibration method {method!r}: choose one of {calib_mod.METHODS}")
    if not isinstance(calib_n, int) or calib_n < data_mod.MIN_CALIB_SLICES:
        raise InputError(f"calib_n must be an integer >= {data_mod.MIN_CALIB_SLICES}, got {calib_n!r}")
    if not export_dir.is_dir():
        raise InputError(f"{export_dir}: export folder not found")
    meta = _read_meta(export_dir)
    task, labels = meta["task"], [str(x) for x in meta["labels"]]
    metric = gate_mod.gate_metric(task)
    budget = gate_mod.budget_for(task, budget_auc, budget_dice)
    src_path = export_dir / "model.onnx"
    input_hashes = {p.name: graph.sha256_file(p) for p in (src_path, export_dir / "model.json") if p.is_file()}
    model = graph.load_fp32_model(src_path)
    chw = graph.input_shape(model)
    all_outputs = list(FILES.values()) + [f for fs in openvino_forms.FILES.values() for f in fs] + [REPORT_JSON,
                                                                                                   REPORT_MD]
    report_mod.check_outputs(out_dir, all_outputs, force)

    say("preparing data (engine.preprocess)")
    ds = _resolve_dataset(dataset, meta, chw, calib_n)
    threshold = _threshold(meta)
    boot = metrics.bootstrap_indices(len(ds.test.y))

    with tempfile.TemporaryDirectory(prefix="slicert-quantize-") as tmp:
        work = Path(tmp)
        say("FP32 reference")
        prepped_path = work / "prep.onnx"
        prepped = int8.prepare_fp32(model, prepped_path)
        fp32_sess = runner.session(model)
        ref_val = runner.run_batched(fp32_sess, ds.val.x)
        results: dict[str, dict[str, Any]] = {}
        models: dict[str, Any] = {}
        results["fp32"], ref_test = _evaluate("fp32", model, ds.test, task, labels, threshold, None, boot)
        if ref_test.ndim != (2 if task == "classification" else 4) or ref_test.shape[1] != len(labels):
            raise InputError(f"model output shape {ref_test.shape} does not match task {task} with "
                             f"{len(labels)} labels")

        say(f"calibrating ({method}, {len(ds.calib.x)} slices)")
        cache, ranges = calib_mod.calibrate(prepped_path, ds.calib.x, method, work, percentile=percentile)

        say("FP16")
        f16 = fp16_mod.build_fp16(prepped, ds.calib.x, ranges)
        models["fp16"] = f16.model
        results["fp16"], _ = _evaluate("fp16", f16.model, ds.test, task, labels, threshold, ref_test, boot)

        say("INT8 (timing layers for the CPU form)")
        cpu_slow = cpu_speed.slow_int8_layers(prepped, work) if cpu_speed_check else {}
        cpu_exclude = sorted(cpu_slow)
        for form, key in (("tensorrt", "int8"), ("ort", "int8_ort")):
            m = int8.quantize(prepped_path, cache, method, work / f"{key}.onnx", form=form, cpu_exclude=cpu_exclude)
            problems = int8.qdq_problems(m, form, cpu_exclude if form == "ort" else ())
            if problems:
                raise InputError(f"{key}: the model cannot be expressed under the {form} Q/DQ rules: {problems[:5]}")
            models[key] = m
            results[key], _ = _evaluate(key, m, ds.test, task, labels, threshold, ref_test, boot)

        layers = [(n.name, n.op_type) for n in prepped.graph.node if n.name in set(graph.weighted_layers(prepped))]
        ranking = sensitivity.layer_sensitivity(prepped_path, cache, method, layers, ds.val.x, ds.val.y, ref_val,
                                                task=task, labels=labels, threshold=threshold, metric=metric,
                                                workdir=work, progress=say)
        gates = {k: gate_mod.check(k, results[k], results["fp32"], metric, budget) for k in ("fp16", "int8", "int8_ort")}
        excluded: list[str] = []
        search: list[dict[str, Any]] = []
        cap = max_excluded if max_excluded is not None else max(1, math.floor(MAX_EXCLUDED_FRACTION * len(layers)))
        if not (gates["int8"]["passed"] and gates["int8_ort"]["passed"]):
            excluded, search = sensitivity.choose_exclusions(
                prepped_path, cache, method, ranking, ds.val.x, ds.val.y, ref_val, task=task, labels=labels,
                threshold=threshold, metric=metric, budget=budget, max_excluded=cap, workdir=work,
                cpu_exclude=cpu_exclude, progress=say)
            if excluded:
                for form, key in (("tensorrt", "mixed"), ("ort", "mixed_ort")):
                    m = int8.quantize(prepped_path, cache, method, work / f"{key}.onnx", form=form, exclude=excluded,
                                      cpu_exclude=cpu_exclude)
                    problems = int8.qdq_problems(m, form, excluded + (cpu_exclude if form == "ort" else []))
                    if problems:
                        raise InputError(f"{key}: Q/DQ rules violated: {problems[:5]}")
                    models[key] = m
                    results[key], _ = _evaluate(key, m, ds.test, task, labels, threshold, ref_test, boot)
                    gates[key] = gate_mod.check(key, results[key], results["fp32"], metric, budget)

        # OpenVINO's own forms (NNCF INT8 IR, BF16 where the CPU has it), gated the same way; a failed one is
        # simply not written (the other backends' forms are unaffected). openvino=False skips the step.
        ov_forms = openvino_forms.OpenVINOForms(skipped={"int8_ov": "skipped (openvino=False)"})
        if openvino:
            val_base = sensitivity.gate_metric_value(task, ds.val.y, ref_val, labels, threshold, metric)
            ov_forms = openvino_forms.build(
                src_path, ds, results_fp32=results["fp32"], say=say,
                evaluate=lambda k, out: metrics.evaluate(task, ds.test.y, out, labels=labels, threshold=threshold,
                                                         reference=ref_test, boot=boot),
                gate=lambda k, res: gate_mod.check(k, res, results["fp32"], metric, budget),
                val_ok=lambda out: val_base - sensitivity.gate_metric_value(task, ds.val.y, out, labels, threshold,
                                                                            metric) <= budget,
                ranking=[r.layer for r in ranking], max_fp32_layers=cap)

        # Which INT8 family ships: full INT8 if both forms pass, else mixed if both forms pass.
        int8_ok = gates["int8"]["passed"] and gates["int8_ort"]["passed"]
        mixed_ok = bool(excluded) and gates["mixed"]["passed"] and gates["mixed_ort"]["passed"]
        violations = [] if gates["fp16"]["passed"] else [gates["fp16"]]
        if not int8_ok and not mixed_ok:
            violations += [g for k, g in gates.items() if k != "fp16" and not g["passed"]]
        passed = not violations
        write = {k for k in models if gates[k]["passed"] or accept_loss}
        if not int8_ok and mixed_ok and not accept_loss:
            write -= {"int8", "int8_ort"}

        variants: dict[str, Any] = {"fp32": {"file": None, "source": str(src_path), "target": "reference",
                                             "passed": True, "reason": "reference model", **results["fp32"]}}
        for k, res in results.items():
            if k == "fp32":
                continue
            g = gates[k]
            reason = (f"Δ{metric} {g['loss']:+.4f} {'<=' if g['passed'] else '>'} budget {budget} "
                      f"(test split, {len(ds.test.y)} slices)")
            if k in ("int8", "int8_ort") and not int8_ok and mixed_ok:
                reason += "; superseded by the mixed-precision model"
            variants[k] = {"file": FILES[k] if k in write else None, "target": TARGET[k], "passed": g["passed"],
                           "accepted_loss": bool(accept_loss and not g["passed"]), "reason": reason, "gate": g,
                           **res, "delta_vs_fp32": {n: metrics.paired_delta(res, results["fp32"], n)
                                                    for n in res["metrics"]}}
        deliverables: dict[str, dict[str, str]] = {}
        if "fp16" in write:
            deliverables["fp16"] = {"tensorrt": FILES["fp16"]}
        fam = "mixed" if (mixed_ok or (accept_loss and excluded and not int8_ok)) else "int8"
        if fam in write and f"{fam}_ort" in write:
            deliverables[fam] = {"tensorrt": FILES[fam], "onnxruntime": FILES[f"{fam}_ort"]}
        variants.update(ov_forms.entries)
        if openvino_forms.FILES["int8_ov"][0] in ov_forms.files:
            deliverables.setdefault("int8", {})["openvino"] = openvino_forms.FILES["int8_ov"][0]
        if ov_forms.entries.get("bf16_ov", {}).get("passed"):
            deliverables["bf16"] = {"openvino": "model.onnx (FP32) with INFERENCE_PRECISION_HINT=bf16"}

        rep: dict[str, Any] = {
            "schema": report_mod.SCHEMA,
            "export_dir": str(export_dir.resolve()),
            "model": {"name": meta.get("name", export_dir.name), "task": task, "labels": labels,
                      "source": "model.onnx", "source_sha256": input_hashes.get("model.onnx"),
                      "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))},
            "data": {**{k: v for k, v in ds.provenance.items()},
                     "calib": {"split": "calib", "n": len(ds.calib.x), "sha256": ds.calib.sha256},
                     "val": {"split": "val", "n": len(ds.val.x), "sha256": ds.val.sha256},
                     "test": {"split": "test", "n": len(ds.test.x), "sha256": ds.test.sha256}},
            "calibration": {"method": method, "percentile": percentile if method == "percentile" else None,
                            "n_slices": len(ds.calib.x), "data_sha256": ds.calib.sha256,
                            "preprocessing": "engine.preprocess with model.json 'preprocess' spec"},
            "operating_point": {"threshold": threshold, "rule": "p(label[1]) >= threshold" if len(labels) == 2
                                else "argmax"} if task == "classification" else None,
            "bootstrap": {"resamples": int(boot.shape[0]), "seed": metrics.BOOTSTRAP_SEED, "ci": 0.95,
                          "method": "percentile, slices resampled, same draws for every variant (paired deltas)"},
            "gate": {"metric": metric, "budget": budget, "split": "test", "passed": passed,
                     "accept_loss": bool(accept_loss), "violations": violations},
            "variants": variants,
            "fp16": {"kept_fp32": f16.kept_fp32, "overflow": f16.overflow, "weights_clipped": f16.weights_clipped,
                     "weights_flushed": f16.weights_flushed, "calib_output_rel_err": f16.output_rel_err},
            "sensitivity": [s.to_dict() for s in ranking],
            "sensitivity_split": "val",
            "excluded_layers": excluded,
            "cpu_form": {"fp32_for_speed": cpu_slow, "unquantized_ops": list(cpu_speed.CPU_FORM_SKIP_OPS),
                         "rule": f"a layer stays FP32 in the ONNX Runtime CPU form when INT8 alone is > "
                                 f"{cpu_speed.SLOWER_FACTOR}x slower than FP32 on this machine (measured)"},
            "mixed_search": search,
            "max_excluded": cap,
            "deliverables": deliverables,
            "openvino": {"skipped": ov_forms.skipped,
                         "calibration": "the same calib split as the ONNX Runtime/TensorRT INT8 forms"},
            "environment": _environment(),
            "notes": _notes(ds, task),
        }
        say("writing outputs")
        _publish(out_dir, {**{FILES[k]: models[k].SerializeToString() for k in sorted(write)}, **ov_forms.files}, rep,
                 stale=[FILES[k] for k in FILES if k not in write]
                 + [f for fs in openvino_forms.FILES.values() for f in fs if f not in ov_forms.files])

    after = {p: graph.sha256_file(export_dir / p) for p in input_hashes}
    if after != input_hashes:  # never expected: this code only reads the export folder
        raise RuntimeError(f"input files changed during quantization: {export_dir}")
    if violations and not accept_loss:
        gate_mod.raise_if_failed(violations, rep["sensitivity"], str(out_dir / REPORT_JSON))
    return rep



def _publish(out_dir: Path, model_bytes: dict[str, bytes], rep: dict[str, Any], *, stale: list[str]) -> None:
    """Write the models and the report as one set. `slicert build` takes each variant's gate verdict from
    accuracy_report.json, so an interrupted (forced) re-run must never leave new models beside an old
    report: everything is staged first, then moved in with the report last. The old report goes first,
    and our own variant files this run did not produce (a forced re-run's leftovers) are removed."""
    import shutil

    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".staging-"))
    try:
        by_file = {v.get("file"): k for k, v in rep["variants"].items() if v.get("file")}
        for name, data in model_bytes.items():
            report_mod.write_atomic(staging / name, data)
            if name in by_file:  # an IR's .bin is recorded with its .xml (weights_sha256)
                rep["variants"][by_file[name]]["sha256"] = graph.sha256_file(staging / name)
        report_mod.write_atomic(staging / REPORT_JSON, report_mod.to_json(rep))
        report_mod.write_atomic(staging / REPORT_MD, report_mod.to_markdown(report_mod._clean(rep)).encode())
        (out_dir / REPORT_JSON).unlink(missing_ok=True)
        for name in stale:
            (out_dir / name).unlink(missing_ok=True)
        for name in [*model_bytes, REPORT_MD, REPORT_JSON]:
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

def _environment() -> dict[str, Any]:
    import onnx
    import onnxruntime as ort

    return {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "processor": platform.processor() or None}


def _notes(ds: data_mod.QuantDataset, task: str) -> list[str]:
    notes = [
        "Metrics are on the held-out test split only; the calibration split set the INT8 ranges and the "
        "validation split chose mixed-precision layers. No clinical validity is claimed.",
        "model.int8.onnx / model.mixed.onnx follow TensorRT's explicit-quantization rules (INT8, zero point 0, "
        "per-channel weights, Q/DQ on weighted-op inputs and residual Add inputs); their accuracy here is "
        "measured by ONNX Runtime executing the same Q/DQ graph.",
        "model.int8.ort.onnx / model.mixed.ort.onnx are the ONNX Runtime CPU form of the same calibration "
        "(UINT8 activations, ReLU folded into QuantizeLinear, INT32 bias) so every layer runs as an integer "
        "kernel; pick it for the onnxruntime backend.",
        "FP16 numerics are emulated by ONNX Runtime CPU (float16 tensors; some kernels compute in float32 "
        "internally, as TensorRT's FP16 kernels accumulate in float32).",
    ]
    if ds.provenance.get("synthetic"):
        notes.insert(0, "Data is SYNTHETIC (see data.description); deltas compare precisions, nothing more.")
    return notes
