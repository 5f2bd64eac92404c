"""The cached steps of one model project, shared by the demo zoo (tools.pipeline) and by a user's own
teacher and data (tools.byom), so that there is one toolchain: model inputs from a data source, a model
trained alone or distilled from a teacher (cached by a configuration key), held-out evaluation, the
parameter/FLOP profile, a random-weights baseline and the ONNX export with its model.json.

A data source is a DICOM folder (tools.dataset.folder.DicomFolder) or a zoo dataset
(tools.dataset.zoo.ZooSource); both give task, labels, spec (a tools.model_spec.ModelSpec), fingerprint,
inputs(split), targets[split], meta(split) and card().

Layout under a project's root (the zoo: OUT/<task>; yours: OUT):
    weights/<step>.pt     PyTorch state dict (+ arch, config, labels)
    steps/<step>.json     step record: configuration key, training record, test metrics, params/FLOPs

Caching: a step whose record carries the same key (dataset fingerprint, architecture, initial weights,
hyperparameters, teacher, toolchain source hash) and whose weights still match their SHA-256 is reused
and reported "cached". A record of another configuration is never overwritten without force
(OutputExists). Progress flows one way: the steps call `progress(stage, fraction, message)`, whoever
displays it passes it in; this module imports no CLI.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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

Progress = Callable[[str, float, str], None]  # (stage, fraction in [0, 1], message)
# The sources that determine trained weights and exports: a change to any of them invalidates caches.
CODE = ("core.py", "models.py", "students.py", "train.py", "distill.py", "export.py")
FLOP_CONVENTION = "1 MAC = 2 FLOPs; conv/linear only"


def code_hash(extra: tuple[str, ...] = ()) -> str:
    """Hash of CODE plus `extra` (paths relative to tools/, e.g. the zoo's recipes.py)."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for rel in CODE + tuple(extra):
        h.update((root / rel).read_bytes())
    return h.hexdigest()[:16]


def key(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def claim(out: str | Path, marker: str, what: str, force: bool) -> Path:
    """Create or verify an output directory. A non-empty directory without `marker` is refused unless
    force: nothing a user put there gets mixed or overwritten. `what` names the output in messages."""
    p = Path(out).expanduser()
    if p.is_dir() and any(p.iterdir()) and not (p / marker).is_file() and not force:
        raise OutputExists(f"{p} is not empty and is not a SliceRT {what} directory; choose another --out or "
                           f"pass --force")
    ensure_writable_dir(p)
    if not (p / marker).is_file():
        write_text_atomic(p / marker, f"SliceRT {what} directory\n", force=True)
    return p


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# Lesion-diameter bins (mm) of the sensitivity breakdown, where a source knows its lesions' sizes.
DIAMETER_BINS = [10, 15, 20, 25, 30.01]


def evaluate(logits_test: np.ndarray, y_test: np.ndarray, logits_val: np.ndarray, y_val: np.ndarray, task: str,
             labels: tuple[str, ...], diameter_mm: np.ndarray | None = None) -> dict:
    """Held-out test metrics; the binary operating point is chosen on val. `diameter_mm` (per test image,
    optional) adds the sensitivity by lesion diameter."""
    from tools import metrics

    if task == "segmentation":
        return metrics.segmentation_report(logits_test.argmax(axis=1), y_test, labels)
    if len(labels) != 2:
        return {"accuracy": float((logits_test.argmax(axis=1) == y_test).mean()), "n": len(y_test)}
    p_test = softmax(logits_test)[:, 1]
    rep = metrics.classification_report(p_test, y_test, softmax(logits_val)[:, 1], y_val)
    if diameter_mm is not None:
        rep["sensitivity_by_diameter_mm"] = metrics.sensitivity_by_bin(p_test, y_test, diameter_mm,
                                                                       rep["threshold"], DIAMETER_BINS)
    return rep


def tensors_of(source: Any, splits: tuple[str, ...] = ("train", "val", "test")):
    """tools.train.TaskTensors of `source`'s model inputs (engine.preprocess) and targets for `splits`."""
    import torch

    from tools.train import TaskTensors

    x = {s: torch.from_numpy(source.inputs(s)) for s in splits}
    y = {s: torch.from_numpy(source.targets[s]) for s in splits}
    return TaskTensors(source.task, len(source.labels), x, y)


def train(model, tensors, cfg, *, teacher=None, progress: Callable[[float, str], None] | None = None) -> dict:
    """Train `model` in place on tensors.x["train"] (selecting on val): with the supervised loss, or
    distilled from `teacher` (tools.distill.kd_loss); CE class-weighted by cfg.class_balance. Returns
    the training record (tools.train.fit), with the KD settings when distilled."""
    from tools.distill import kd_loss
    from tools.train import class_weights, fit, supervised_loss

    k = tensors.num_classes
    w = class_weights(tensors.y["train"], k, cfg.class_balance)
    if teacher is None:
        return fit(model, tensors, cfg, supervised_loss(tensors.task, k, cfg.dice_weight, w), progress=progress)
    record = fit(model, tensors, cfg, kd_loss(tensors.task, k, cfg, w), teacher=teacher, progress=progress)
    record["kd"] = {"temperature": cfg.kd_temperature, "alpha": cfg.kd_alpha}
    return record


class Project:
    """The steps of one model on one data source, cached under `root` (see the module docstring).

    code: extra sources (relative to tools/) in the cache key besides CODE. prefix: put before every
    progress stage (the zoo: "<task>/"). honest_label: what the data is, written into model.json."""

    def __init__(self, root: Path, source: Any, *, code: tuple[str, ...], force: bool, progress: Progress | None,
                 honest_label: str, prefix: str = ""):
        self.root, self.source, self.spec, self.force = Path(root), source, source.spec, force
        self.code = code_hash(code)
        self.progress, self.prefix, self.honest_label = progress, prefix, honest_label
        self.steps: dict[str, str] = {}
        self.seconds: dict[str, float] = {}
        self.records: dict[str, dict] = {}
        self.models: dict[str, Any] = {}
        self._tensors = None

    def say(self, step: str, frac: float, msg: str) -> None:
        if self.progress is not None:
            self.progress(f"{self.prefix}{step}", frac, msg)

    def tensors(self):
        """Model inputs (engine.preprocess) and targets of train/val/test as torch tensors, built once."""
        if self._tensors is None:
            t0 = time.perf_counter()
            self.say("preprocess", 0.0, "engine.preprocess on every split")
            self._tensors = tensors_of(self.source)
            self.seconds["preprocess"] = time.perf_counter() - t0
            self.say("preprocess", 1.0, "done")
        return self._tensors

    def evaluate(self, predict: Callable[[np.ndarray], np.ndarray]) -> dict:
        """Held-out test metrics of `predict` (N, C, H, W float32 inputs -> logits)."""
        t = self.tensors()
        return evaluate(predict(t.x["test"].numpy()), t.y["test"].numpy(), predict(t.x["val"].numpy()),
                        t.y["val"].numpy(), self.spec.task, self.spec.labels,
                        self.source.meta("test").get("diameter_mm"))

    def evaluate_module(self, model) -> dict:
        import torch

        from tools.train import predict

        return self.evaluate(lambda x: predict(model, torch.from_numpy(x)))

    def profile(self, model) -> dict:
        """{"params", "macs", "flops"} at batch 1 of the spec's input."""
        from tools.flops import profile

        return profile(model, self.spec.chw)

    def fit_step(self, step: str, arch: str, init, cfg, *, teacher=None, teacher_sha: str | None = None,
                 init_sha: str | None = None):
        """Train `init` (a freshly built module, trained in place) alone, or distilled from `teacher`
        (an eval-mode module whose weights hash to `teacher_sha`); cached by key. Returns the model."""
        import torch

        weights, rec_path = self.root / "weights" / f"{step}.pt", self.root / "steps" / f"{step}.json"
        want = key({"dataset": self.source.fingerprint, "arch": arch, "init": init_sha, "cfg": cfg.to_dict(),
                    "teacher": teacher_sha, "code": self.code})
        old = read_json(rec_path) if rec_path.is_file() else None
        if (old is not None and old.get("key") == want and not self.force and weights.is_file()
                and sha256_file(weights) == old.get("weights_sha256")):
            init.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True)["state_dict"])
            init.eval()
            self.models[step], self.records[step] = init, old
            self.steps[step] = "cached"
            self.say(step, 1.0, f"cached ({weights})")
            return init
        if (old is not None or weights.exists()) and not self.force:
            raise OutputExists(f"{self.root} holds a {step} from a different configuration (key "
                               f"{old.get('key') if old else '?'} != {want}); pass --force / force=True or choose "
                               f"another output directory")
        t0 = time.perf_counter()
        self.say(step, 0.0, "training" if teacher is None else "distilling")
        record = train(init, self.tensors(), cfg, teacher=teacher, progress=lambda f, m: self.say(step, f, m))
        ensure_writable_dir(weights.parent)
        torch_save_atomic(weights, {"arch": arch, "num_classes": len(self.spec.labels), "in_channels": self.spec.chw[0],
                                    "state_dict": init.state_dict(), "config": cfg.to_dict(),
                                    "labels": list(self.spec.labels)}, force=True)
        record.update(key=want, arch=arch, config=cfg.to_dict(), weights=str(weights),
                      weights_sha256=sha256_file(weights), test=self.evaluate_module(init), **self.profile(init))
        write_json_atomic(rec_path, record, force=True)
        self.models[step], self.records[step] = init, record
        self.steps[step] = "ran"
        self.seconds[step] = time.perf_counter() - t0
        return init

    def random_baseline(self, arch: str, model, seed: int, step: str = "random_init") -> dict:
        """`model` (architecture `arch` with seeded random weights `seed`) scored on the test split: what
        "better than random" is measured against. Its BatchNorm statistics are recomputed on training
        inputs (no labels): an untrained network with default running stats would be a strawman."""
        import torch

        rec_path = self.root / "steps" / f"{step}.json"
        old = read_json(rec_path) if rec_path.is_file() else None
        want = key({"dataset": self.source.fingerprint, "arch": arch, "seed": seed, "code": self.code})
        if old is not None and old.get("key") == want:
            self.records[step] = old
            return old
        model.train()
        with torch.no_grad():
            x = self.tensors().x["train"]
            for i in range(0, min(len(x), 256), 32):
                model(x[i:i + 32])
        model.eval()
        rec = {"key": want, "arch": arch, "seed": seed, "test": self.evaluate_module(model), **self.profile(model)}
        write_json_atomic(rec_path, rec, force=True)
        self.records[step] = rec
        return rec

    def export(self, step: str, model_step: str, out: Path, *, name: str, role: str, own_dir: bool,
               compare: bool, operating_point: bool = False, extra: dict | None = None) -> dict:
        """model.onnx + model.json of `model_step`'s model into `out`; cached by an export key. Returns the
        sidecar. own_dir: `out` holds the export only (written whole, tools.export.export_model), else the two
        files are written into `out` beside others, model.onnx first. compare: the metrics name the teacher and
        the student alone too. operating_point: metrics.threshold = the val-chosen threshold (which
        slicert quantize then scores binary classifiers at; else 0.5)."""
        from tools.export import build_export, export_model
        from tools.io import write_bytes_atomic

        model, rec = self.models[model_step], self.records[model_step]
        export_key = key({"weights": rec["weights_sha256"], "spec": self.spec.to_dict(), "code": self.code,
                          "dataset": self.source.fingerprint})
        side, onnx_path = out / "model.json", out / "model.onnx"
        if side.is_file() and onnx_path.is_file() and not self.force:
            old = read_json(side)
            if old.get("export_key") == export_key and sha256_file(onnx_path) == old.get("model_sha256"):
                self.steps[step] = "cached"
                self.say(step, 1.0, f"cached ({out})")
                return old
            if not own_dir:
                raise OutputExists(f"{out} holds a model.onnx of a different configuration (export key "
                                   f"{old.get('export_key')} != {export_key}); pass --force / force=True")
        t0 = time.perf_counter()
        self.say(step, 0.0, "ONNX export + equivalence check")
        metrics = {"split": "test", "model": rec["test"], "params": rec["params"], "flops": rec["flops"],
                   "macs": rec["macs"], "flop_convention": FLOP_CONVENTION, "honest_label": self.honest_label}
        if compare:
            teacher = self.records["teacher"]
            metrics["teacher"] = {k: teacher.get(k) for k in ("test", "params", "flops")}
            metrics["student_alone"] = {k: self.records["student_alone"][k] for k in ("test", "params", "flops")}
            if teacher.get("flops"):
                metrics["flop_ratio_teacher_over_student"] = teacher["flops"] / rec["flops"]
        if operating_point and rec["test"].get("threshold") is not None:
            metrics["threshold"] = rec["test"]["threshold"]
        args = {"name": name, "task": self.spec.task, "labels": self.spec.labels, "spec": self.spec.preprocess,
                "voi_policy": self.spec.voi_policy, "dataset_card": self.source.card(), "metrics": metrics,
                "check_inputs": self.tensors().x["test"].numpy(),
                "extra": {"export_key": export_key, "arch": rec["arch"], "weights_sha256": rec["weights_sha256"],
                          "role": role, "kd": rec.get("kd"), **(extra or {})}}
        if own_dir:
            sidecar = export_model(model, out, force=self.force, **args)
        else:
            data, sidecar = build_export(model, **args)
            # model.onnx first, model.json last: a model.json on disk always describes the model.onnx beside it.
            side.unlink(missing_ok=True)
            write_bytes_atomic(onnx_path, data, force=True)
            write_json_atomic(side, sidecar, force=True)
        self.steps[step] = "ran"
        self.seconds[step] = time.perf_counter() - t0
        self.say(step, 1.0, str(out))
        return sidecar

    def summary(self, fields: tuple[str, ...]) -> dict[str, dict]:
        """The report's view of every step record: `fields` of each."""
        return {n: {k: r.get(k) for k in fields} for n, r in self.records.items()}
