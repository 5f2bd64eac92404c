"""Bring your own model and data: the user's teacher + DICOM folder -> distilled student -> FP16/INT8
variants gated on the user's held-out data -> bundle. The demo zoo's steps (tools.core: student alone,
distilled student, evaluation, export, caching), for a network and an archive no one here designed.

    from tools import byom
    result = byom.distill(teacher="teacher.onnx", spec="spec.json", data="dicom/", masks="masks/",
                          student="small", out="out")          # or labels="labels.csv"; teacher=nn.Module
    byom.quantize("out")                                       # calib split -> INT8 ranges, test split -> gate
    bundle, _ = byom.build("out")                              # out/model.slicert
    engine.load(bundle).run("dicom/CTBLOCK-03/slice_027.dcm")

CLI: `slicert distill --teacher model.onnx --spec spec.json --data DIR --labels labels.csv --student small
--out OUT`, then `slicert quantize OUT` and `slicert build OUT`.

Layout of OUT (every step cached: a step whose configuration key and weights still match is reused):
    .slicert-byom, project.json     marker; the data/spec/student arguments quantize and build reuse
    dataset_check.{json,md}         the dataset check (tools.dataset)
    weights/{student_alone,student_kd}.pt, steps/*.json     PyTorch weights and step records
    model.onnx, model.json          the distilled student (FP32), model.json written from the spec
    report.{json,md}                teacher vs student vs student trained alone, held-out test split
    model.{fp16,int8,...}.onnx, accuracy_report.{json,md}   after quantize
    model.slicert, model.source.json   after build (the stamp names the accuracy report it came from)
"""
from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InputError
from tools import core
from tools.core import claim
from tools.io import read_json, sha256_file, write_json_atomic, write_text_atomic

evaluate = core.evaluate  # held-out metrics as the report computes them, for notebooks scoring their own models
MARKER = ".slicert-byom"
PROJECT = "project.json"
Progress = Callable[[str, float, str], None]  # (step, fraction in [0, 1], message)
# Besides tools.core.CODE, the sources that decide a project's steps: this wiring and the DICOM reader.
_CODE = ("byom.py", "dataset/folder.py")


def is_project(path: str | Path) -> bool:
    """True for a folder `distill` wrote (what `slicert quantize/build OUT` accept without more arguments)."""
    p = Path(path)
    return (p / MARKER).is_file() and (p / PROJECT).is_file()


def _as_spec(spec):
    from tools import model_spec

    if isinstance(spec, model_spec.ModelSpec):
        return spec
    if isinstance(spec, dict):
        return model_spec.from_dict(spec, "spec (dict)")
    if isinstance(spec, (str, Path)):
        return model_spec.load(spec)
    raise InputError(f"spec must be a ModelSpec, a dict or a spec file path, got {type(spec).__name__}")


def configs(task: str, epochs: int, seed: int, batch_size: int = 8):
    """(student-alone config, KD config): the zoo's recipes (tools.recipes), one schedule for any data."""
    from tools.train import Augment, TrainConfig

    aug = Augment(rot_deg=8, scale=0.08, shift=0.06, intensity=0.05)
    seg = task == "segmentation"
    alone = TrainConfig(epochs=epochs, batch_size=batch_size, lr=1e-2 if seg else 5e-3, augment=aug,
                        class_balance=0.5 if seg else 0.0, seed=seed + 1)
    kd = TrainConfig(**{**alone.to_dict(), "augment": aug, "kd_alpha": 0.5 if seg else 0.7,
                        "kd_temperature": 2.0 if seg else 4.0})
    return alone, kd


def _latency(models: dict[str, Any], chw: tuple, rounds: int) -> dict[str, dict]:
    """Median / p90 CPU latency (ms, batch 1, one thread) per model, measured in interleaved rounds so
    that machine load hits every model alike. ONNX Runtime where the model exports, else PyTorch eager."""
    import onnxruntime as ort
    import torch

    from tools.export import to_onnx_bytes

    x = np.random.default_rng(0).random((1, *chw), dtype=np.float32)
    runners: dict[str, tuple[str, Callable[[], Any]]] = {}
    for name, m in models.items():
        data = None
        if isinstance(m, (bytes, Path)):
            data = m.read_bytes() if isinstance(m, Path) else m
        else:
            try:
                data = to_onnx_bytes(m.eval(), chw, "out")
            except Exception:  # a module torch.onnx cannot export: time it in PyTorch instead
                data = None
        if data is not None:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            sess = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: x}
            runners[name] = ("onnxruntime FP32", lambda s=sess, f=feed: s.run(None, f))
        else:
            xt = torch.from_numpy(x)

            def eager(m=m, xt=xt):
                with torch.no_grad():
                    return m(xt)

            runners[name] = ("PyTorch eager FP32", eager)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _, fn in runners.values():  # warm-up
            for _ in range(3):
                fn()
        times: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(rounds):
            for name, (_, fn) in runners.items():
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(threads)
    return {k: {"runtime": runners[k][0], "p50_ms": float(np.median(v)), "p90_ms": float(np.percentile(v, 90)),
                "rounds": rounds, "threads": 1, "batch": 1} for k, v in times.items()}


def distill(teacher: Any, spec: Any, data: str | Path, *, out: str | Path, labels: str | Path | None = None,
            masks: str | Path | None = None, splits: str | Path | None = None, student: Any = "small",
            epochs: int = 30, batch_size: int = 8, seed: int = 0, force: bool = False, latency_rounds: int = 30,
            threads: int = 2, progress: Progress | None = None) -> dict:
    """Check the DICOM folder, load and check the teacher, train the student alone and distilled, export
    the distilled student to OUT/model.onnx + model.json, and report all three on the held-out test split.

    teacher: an nn.Module, or an .onnx / TorchScript file. spec: a spec file, dict or ModelSpec
    (tools.model_spec). student: a name ("tiny", "small", "base", "small:depth=3", "unet-w6-d4"; see
    tools.students) or an nn.Module of the user's (trained from its current weights, copied). data: a DICOM
    folder, or a data source object such as tools.dataset.zoo.ZooSource (then spec=None). threads:
    PyTorch CPU threads for training (1 on a busy shared machine: idle OpenMP threads spin). Returns
    the report (also OUT/report.json, report.md). Raises DatasetError subclasses, SpecError, TeacherError,
    OutputExists (OUT holds something else)."""
    import torch
    from torch import nn

    from tools import students
    from tools.core import Project
    from tools.dataset import open_folder, report_markdown
    from tools.teacher import load_teacher, state_sha

    t_start = time.perf_counter()
    say = progress or (lambda *_: None)
    source = data if hasattr(data, "inputs") and hasattr(data, "targets") else None  # e.g. tools.dataset.zoo
    if source is not None:
        if spec is not None and _as_spec(spec).to_dict() != source.spec.to_dict():
            raise InputError(f"spec: {source.spec.where} has its own spec; pass spec=None (or that same spec)")
        spec = source.spec
    else:
        spec = _as_spec(spec)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise InputError(f"epochs must be a positive integer, got {epochs!r}")
    if isinstance(student, nn.Module):
        student_arch, student_init = f"custom:{type(student).__qualname__}", copy.deepcopy(student)
        init_sha = state_sha(student)
    else:
        sspec = students.parse(student, spec.task)
        sspec.check_input(spec.chw)
        student_arch, student_init, init_sha = sspec.arch, None, None
    out = claim(out, MARKER, "distill output", force)

    say("data", 0.0, f"checking {data}")
    if source is not None:
        folder = source
        write_json_atomic(out / "dataset_check.json", folder.report, force=True)
    else:
        folder = open_folder(data, spec, labels=labels, masks=masks, splits=splits, seed=seed, exclude=(out,))
        write_json_atomic(out / "dataset_check.json", folder.report, force=True)
        write_text_atomic(out / "dataset_check.md", report_markdown(folder.report), force=True)
    say("data", 1.0, f"{folder.report['n_used']} images, splits {folder.report['splits_status']}")
    say("teacher", 0.0, "loading and checking the teacher against the spec")
    t = load_teacher(teacher, spec)
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # subnormals late in training slow x86 float math by orders of magnitude

    honest = ((folder.card().get("provenance") or {}).get("label")
              or f"DICOM folder {folder.root.name}; held-out test split by PatientID")
    run = Project(out, folder, code=_CODE, force=force, progress=progress, honest_label=honest)
    trec: dict[str, Any] = {"arch": f"{t.kind}: {t.source}", "sha256": t.sha256,
                            "test": run.evaluate(lambda x: t.predict(x))}
    if t.kind == "onnx":
        from tools.flops import onnx_profile

        trec.update(onnx_profile(t.onnx_path.read_bytes()))
    else:
        try:
            trec.update(run.profile(t.module))
        except Exception:  # TorchScript modules take no forward hooks
            trec.update({"params": sum(p.numel() for p in t.module.parameters()), "macs": None, "flops": None})
    run.records["teacher"] = trec
    say("teacher", 1.0, f"{t.kind} teacher checked")

    alone_cfg, kd_cfg = configs(spec.task, epochs, seed, batch_size)
    k, c = len(spec.labels), spec.chw[0]

    def fresh():
        if student_init is not None:
            return copy.deepcopy(student_init)
        return students.parse(student_arch, spec.task).build(k, c, seed=seed + 1)

    run.fit_step("student_alone", student_arch, fresh(), alone_cfg, init_sha=init_sha)
    run.fit_step("student_kd", student_arch, fresh(), kd_cfg, teacher=t.module, teacher_sha=t.sha256,
                 init_sha=init_sha)
    teacher_card = {"kind": t.kind, "source": t.source, "sha256": t.sha256}
    run.export("export", "student_kd", out, name=spec.name, role="student", own_dir=False, compare=True,
               operating_point=True, extra={"teacher": teacher_card, "spec": spec.to_dict()})

    say("latency", 0.0, "interleaved CPU latency, batch 1, 1 thread")
    lat = _latency({"teacher": t.onnx_path or t.module, "student_alone": run.models["student_alone"],
                    "student_kd": out / "model.onnx"}, spec.chw, latency_rounds)
    for name, v in lat.items():
        run.records[name]["latency"] = v
    say("latency", 1.0, ", ".join(f"{n} {v['p50_ms']:.2f} ms" for n, v in lat.items()))

    if source is not None:
        where = {"zoo": {"name": source.name, "fast": source.fast, "seed": source.seed}}
    else:
        where = {"data": str(folder.root), "labels": str(folder.labels_file) if folder.labels_file else None,
                 "masks": str(folder.masks_dir) if folder.masks_dir else None, "splits": str(folder.splits_file)}
    project = {"schema": "slicert-byom/1", "spec": spec.to_dict(), "spec_source": spec.where, **where,
               "seed": seed, "student": student_arch, "teacher": teacher_card}
    write_json_atomic(out / PROJECT, project, force=True)
    result = {"out_dir": str(out), "name": spec.name, "task": spec.task, "labels": list(spec.labels),
              "dataset": {k2: folder.report[k2] for k2 in ("root", "n_used", "images", "patients", "classes",
                                                           "splits_file", "splits_status")},
              "models": run.summary(("arch", "params", "flops", "test", "latency", "best_epoch", "seconds", "kd")),
              "steps": dict(run.steps), "seconds": time.perf_counter() - t_start,
              "export": {"onnx": str(out / "model.onnx"), "model_json": str(out / "model.json")}}
    write_json_atomic(out / "report.json", result, force=True)
    write_text_atomic(out / "report.md", markdown(result), force=True)
    result["report_md"] = str(out / "report.md")
    return result


_ROWS = (("teacher", "teacher (yours)"), ("student_alone", "student trained alone"),
         ("student_kd", "student distilled (KD)"))


def markdown(result: dict) -> str:
    from tools.report import _f

    seg = result["task"] == "segmentation"
    labels = result["labels"]
    d = result["dataset"]
    lines = [f"# {result['name']}: teacher vs student (held-out test split)", "",
             f"Data: {d['root']} ({d['n_used']} images; test split {d['images']['test']} images"
             + (f" of {d['patients']['test']} patients, split by PatientID in {d['splits_file']}" if
                d["patients"]["test"] is not None else f"; split rule: {d['splits_file']}") + "). Metrics on the test "
             "split only; the operating point of a binary classifier is chosen on val. Not clinically validated.",
             "", "| model | params | MFLOPs | CPU p50 ms | " + (" | ".join(f"Dice {o}" for o in labels[1:]) +
                                                             " | mean Dice |" if seg else "AUC (95% CI) | accuracy |"),
             "|---|---:|---:|---:|" + ("---:|" * (len(labels)) if seg else "---:|---:|")]
    for key, name in _ROWS:
        m = result["models"].get(key)
        if not m:
            continue
        r = m.get("test") or {}
        lat = m.get("latency") or {}
        cells = [f"{name}: {m['arch']}", f"{m['params']:,}" if m.get("params") else "-",
                 _f(m["flops"] / 1e6, 1) if m.get("flops") else "-", _f(lat.get("p50_ms"), 2)]
        if seg:
            cells += [_f((r.get("dice") or {}).get(o)) for o in labels[1:]] + [_f(r.get("mean_dice"))]
        else:
            lo, hi = r.get("auc_ci95", [None, None])
            cells += [f"{_f(r.get('auc'))} ({_f(lo)}-{_f(hi)})" if "auc" in r else "-", _f(r.get("accuracy"))]
        lines.append("| " + " | ".join(cells) + " |")
    lat = result["models"].get("student_kd", {}).get("latency") or {}
    lines += ["", f"Latency: {lat.get('runtime', '?')}, batch 1, 1 thread, median of {lat.get('rounds', '?')} "
                  f"interleaved rounds on this machine. FLOPs: 1 MAC = 2 FLOPs, conv/linear only.",
              "", "Steps: " + ", ".join(f"{k}: {v}" for k, v in result["steps"].items()) + "."]
    return "\n".join(lines) + "\n"


def _project(out: Path) -> dict:
    if not is_project(out):
        raise InputError(f"{out}: not a `slicert distill` output (no {MARKER} / {PROJECT}); run `slicert distill "
                         f"--teacher ... --data ... --out {out}` first")
    return read_json(out / PROJECT)


def open_project_data(out: str | Path):
    """The DicomFolder of a distill output, reopened from project.json (same spec, same splits file)."""
    from tools import model_spec
    from tools.dataset import open_folder

    out = Path(out)
    p = _project(out)
    if p.get("zoo"):
        from tools.dataset.zoo import ZooSource

        return ZooSource(**p["zoo"])
    spec = model_spec.from_dict(p["spec"], str(out / PROJECT))
    return open_folder(p["data"], spec, labels=p["labels"], masks=p["masks"], splits=p["splits"], seed=p["seed"],
                       exclude=(out,))


def _quant_defaults() -> dict:
    import inspect

    from tools.quantize.pipeline import quantize_export

    keep = ("method", "calib_n", "percentile", "budget_auc", "budget_dice", "accept_loss")
    return {k: p.default for k, p in inspect.signature(quantize_export).parameters.items() if k in keep}


def quantize(out: str | Path, *, force: bool = False, progress: Callable[[str], None] | None = None,
             **kwargs: Any) -> tuple[dict, str]:
    """FP16 / INT8 / mixed variants of OUT/model.onnx with the gate on the user's test split, into OUT.
    Calibration from the calib split (see tools.dataset.quant). Cached: an accuracy report of the same
    model and the same data is reused. Returns (report, "ran" | "cached"). kwargs go to quantize_export."""
    from tools.dataset.quant import quant_dataset
    from tools.quantize import quantize_export
    from tools.quantize.data import MIN_CALIB_SLICES

    out = Path(out)
    _project(out)
    folder = open_project_data(out)
    rep_path, stamp_path = out / "accuracy_report.json", out / "quantize.source.json"
    # The gate's settings with their defaults filled in: the CLI (which passes them all) and a bare
    # quantize(out) of the same settings share one cache entry.
    settings = {**_quant_defaults(), **kwargs}
    stamp = {"model_sha256": sha256_file(out / "model.onnx"), "dataset": folder.fingerprint,
             "settings": {k: settings[k] for k in sorted(settings)}}
    if rep_path.is_file() and stamp_path.is_file() and not force:
        if read_json(stamp_path) == json.loads(json.dumps(stamp, default=str)) and \
                (read_json(rep_path).get("model") or {}).get("source_sha256") == stamp["model_sha256"]:
            return read_json(rep_path), "cached"
    calib_n = kwargs.pop("calib_n", MIN_CALIB_SLICES)
    ds = quant_dataset(folder, folder.spec.chw, calib_n)
    stamp_path.unlink(missing_ok=True)
    # A report already here is this project's own earlier quantization: replacing it is bookkeeping.
    rep = quantize_export(out, out, dataset=ds, calib_n=calib_n, force=True, progress=progress, **kwargs)
    write_json_atomic(stamp_path, stamp, force=True)
    return rep, "ran"


def build(out: str | Path, *, bundle: str | Path | None = None, target: str = "auto", force: bool = False
          ) -> tuple[Path, str]:
    """OUT/model.slicert from OUT's variants, model.json and accuracy report. Cached: a bundle built from
    the same accuracy report is reused (and verified). Returns (path, "ran" | "cached")."""
    from engine.bundle import build_bundle, open_bundle

    out = Path(out)
    _project(out)
    if not (out / "accuracy_report.json").is_file():
        raise InputError(f"{out}: no accuracy_report.json; run `slicert quantize {out}` first")
    # The same default and stamp as `slicert build OUT` (engine/cli/build.py): either reuses the other's bundle.
    path = Path(bundle) if bundle is not None else out / "model.slicert"
    stamp = path.with_suffix(".source.json")
    rep_sha = sha256_file(out / "accuracy_report.json")
    if path.is_file() and stamp.is_file() and not force and read_json(stamp).get("accuracy_report_sha256") == rep_sha:
        with open_bundle(path):  # verifies every member's checksum
            pass
        return path, "cached"
    build_bundle(out, path, precision="best", target=target, force=force or stamp.is_file())
    write_json_atomic(stamp, {"accuracy_report_sha256": rep_sha}, force=True)
    return path, "ran"


def train_teacher(module, folder, *, epochs: int = 10, lr: float = 3e-3, batch_size: int = 16, seed: int = 0,
                  progress: Callable[[float, str], None] | None = None) -> dict:
    """Train a teacher (e.g. a MONAI network) in place on a DicomFolder's train split, selecting on val:
    for notebooks and tests that have no trained network at hand. Returns the training record."""
    from tools.train import TrainConfig

    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, class_balance=0.5 if folder.task ==
                      "segmentation" else 0.0, seed=seed)
    return core.train(module, core.tensors_of(folder, ("train", "val")), cfg, progress=progress)
