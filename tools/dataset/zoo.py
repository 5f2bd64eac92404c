"""The demo zoo's datasets (tools.data: real CT, simulated lesions, ultrasound phantom) behind the same
interface as a user's DICOM folder (tools.dataset.folder.DicomFolder), so that tools.byom distills,
quantizes and reports on them with the same code:

    from tools.dataset.zoo import ZooSource
    byom.distill(teacher, None, ZooSource("ct_organs", fast=True), out="out", student="small")

The interface both provide: task, labels, spec (a tools.model_spec.ModelSpec), fingerprint, report
(images/patients/classes per split), records (None here: the zoo stores arrays, not files),
inputs(split) (engine.preprocess model inputs), targets[split], meta(split) (per-image values the
metrics break results down by: the simulated lesions' diameter_mm) and card() (the model.json card).
`slicert demo` / `slicert train|distill|export` run the zoo through tools.core on this source too.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SPLITS = ("train", "val", "calib", "test")


@dataclass
class ZooSource:
    name: str
    fast: bool = False
    seed: int = 0
    cache_dir: Any = None
    progress: Callable[[float], None] | None = field(default=None, repr=False, compare=False)  # data generation
    _ds: Any = field(default=None, repr=False)
    _targets: dict = field(default_factory=dict, repr=False)
    _inputs: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        from tools.data import load_dataset
        from tools.model_spec import ModelSpec

        self._ds = load_dataset(self.name, fast=self.fast, seed=self.seed, cache_dir=self.cache_dir,
                                progress=self.progress)
        d = self._ds
        self.spec = ModelSpec(name=self.name, task=d.task, labels=tuple(d.labels), preprocess=d.spec,
                              voi_policy=d.voi_policy, where=f"zoo dataset {self.name}")
        self.records = None
        self.root = d.path

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels

    @property
    def fingerprint(self) -> str:
        return str(self._ds.card["cache_key"])

    @property
    def dataset(self):
        """The underlying tools.data.Dataset (name, path, cached, card, splits)."""
        return self._ds

    @property
    def targets(self) -> dict[str, np.ndarray]:
        if not self._targets:
            self._targets = {s: self._ds.targets(s) for s in SPLITS}
        return self._targets

    def inputs(self, split: str) -> np.ndarray:
        """(N, C, H, W) float32 model inputs of `split` (computed once) through engine.preprocess."""
        if split not in self._inputs:
            self._inputs[split] = self._ds.inputs(split)
        return self._inputs[split]

    def meta(self, split: str) -> dict[str, np.ndarray]:
        return self._ds.splits[split].meta

    @property
    def report(self) -> dict[str, Any]:
        card = self._ds.card
        return {"root": str(self._ds.path), "task": self.task, "labels": list(self.labels),
                "n_used": sum(s["n"] for s in card["splits"].values()),
                "images": {s: card["splits"][s]["n"] for s in SPLITS},
                # One real patient (or none: simulated); the zoo splits by z-block or by generator stream.
                "patients": {s: None for s in SPLITS},
                "classes": {s: card["splits"][s]["classes"] for s in SPLITS},
                "splits_file": card["provenance"]["split_rule"], "splits_status": "fixed by the generator"}

    def card(self) -> dict[str, Any]:
        return {**self._ds.card, "kind": "zoo", "fast": self.fast}
