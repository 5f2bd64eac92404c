"""Calibration and evaluation inputs for the quantizer.

Calibration sees exactly what inference sees: raw slices go through SliceRT's own preprocessing
(`engine.preprocess.preprocess_into` with the model's PreprocessSpec), never through a re-implementation.
Splits keep their roles: ranges come from "calib", layer selection for mixed precision from "val",
and the accuracy gate from "test" only.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.errors import BackendUnavailable, InputError

MIN_CALIB_SLICES = 256  # issue 5: at least 256 calibration slices
SPLITS = ("calib", "val", "test")


@dataclass(frozen=True)
class Split:
    """Model inputs (N, C, H, W) float32 plus targets: labels (N,) or masks (N, H, W)."""

    x: np.ndarray
    y: np.ndarray | None
    sha256: str


@dataclass(frozen=True)
class QuantDataset:
    """The three splits the quantizer uses, already turned into model inputs, plus where they came from."""

    calib: Split
    val: Split
    test: Split
    provenance: dict[str, Any] = field(default_factory=dict)


def hash_array(x: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(f"{x.dtype.str}{x.shape}".encode())
    h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def check_inputs(x: Any, chw: tuple, what: str) -> np.ndarray:
    """Validate model inputs: float32 ndarray (N, C, H, W) matching the model, finite, N >= 1."""
    if not isinstance(x, np.ndarray):
        raise InputError(f"{what}: expected a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise InputError(f"{what}: expected float32 model inputs, got {x.dtype} "
                         f"(raw slices must go through engine.preprocess first)")
    if x.ndim != 4:
        raise InputError(f"{what}: expected (N, C, H, W), got shape {x.shape}")
    if len(x) == 0:
        raise InputError(f"{what}: empty")
    want = tuple(chw)
    got = tuple(x.shape[1:])
    if any(w is not None and w != g for w, g in zip(want, got)):
        raise InputError(f"{what}: model expects (N, {', '.join(str(w) for w in want)}), got {x.shape}")
    bad = ~np.isfinite(x)
    if bad.any():
        first = int(np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))[0])
        raise InputError(f"{what}: {int(bad.sum())} NaN/Inf value(s), first in slice {first}")
    return x


def check_targets(y: Any, n: int, task: str, what: str, num_classes: int) -> np.ndarray:
    if not isinstance(y, np.ndarray) or len(y) != n:
        raise InputError(f"{what}: need {n} targets, got {getattr(y, 'shape', type(y).__name__)}")
    if task == "classification":
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise InputError(f"{what}: classification labels must be integer (N,), got {y.dtype} {y.shape}")
    elif y.ndim != 3 or not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{what}: segmentation masks must be integer (N, H, W), got {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise InputError(f"{what}: target values must be in [0, {num_classes}), got [{y.min()}, {y.max()}]")
    return y.astype(np.int64 if task == "classification" else np.uint8, copy=False)


def calibration_split(x: np.ndarray, chw: tuple, n: int) -> Split:
    """The first `n` calibration inputs (>= MIN_CALIB_SLICES), validated and hashed."""
    if n < MIN_CALIB_SLICES:
        raise InputError(f"calib_n={n}: need at least {MIN_CALIB_SLICES} calibration slices")
    if not isinstance(x, np.ndarray) or len(x) < MIN_CALIB_SLICES:
        got = len(x) if hasattr(x, "__len__") else type(x).__name__
        raise InputError(f"calibration set has {got} slice(s); need at least {MIN_CALIB_SLICES}")
    x = check_inputs(x[:n], chw, "calibration set")
    if float(x.std()) == 0.0:
        raise InputError("calibration set is constant (zero variance): it cannot calibrate activation ranges")
    return Split(x=x, y=None, sha256=hash_array(x))


def preprocess_slices(images: Any, spec: Any) -> np.ndarray:
    """Raw slices (N, H, W) / (N, H, W, 3) or a list of 2-D arrays -> (N, C, H, W) model inputs through
    engine.preprocess, written straight into one preallocated batch buffer."""
    try:
        from engine.preprocess import preprocess_into
    except ImportError as exc:
        raise BackendUnavailable(f"engine.preprocess is not available ({exc}); the quantizer calibrates "
                                 f"only through SliceRT's own preprocessing") from exc
    if spec.layout != "NCHW" or spec.out_dtype != "float32":
        raise InputError(f"quantizer needs an NCHW float32 PreprocessSpec, got {spec.layout} {spec.out_dtype}")
    n = len(images)
    if n == 0:
        raise InputError("no slices to preprocess")
    out = np.empty((n, spec.out_channels, spec.out_height, spec.out_width), np.float32)
    for i in range(n):
        preprocess_into(out, np.asarray(images[i]), spec, i)
    return out


def from_raw_splits(raw: Mapping[str, tuple[Any, Any]], spec: Any, *, task: str, num_classes: int,
                    chw: tuple, calib_n: int = MIN_CALIB_SLICES,
                    provenance: dict[str, Any] | None = None) -> QuantDataset:
    """Build the quantizer's dataset from raw splits {"calib": (images, _), "val": (images, targets),
    "test": (images, targets)} using the model's PreprocessSpec."""
    missing = [s for s in SPLITS if s not in raw]
    if missing:
        raise InputError(f"dataset lacks split(s) {missing}; the quantizer needs {list(SPLITS)}")
    calib_images = raw["calib"][0]
    if len(calib_images) < MIN_CALIB_SLICES:
        raise InputError(f"calibration split has {len(calib_images)} slice(s); need at least {MIN_CALIB_SLICES}")
    calib = calibration_split(preprocess_slices(calib_images[:calib_n], spec), chw, calib_n)
    splits = {}
    for name in ("val", "test"):
        images, targets = raw[name]
        x = check_inputs(preprocess_slices(images, spec), chw, f"{name} split")
        y = check_targets(np.asarray(targets), len(x), task, f"{name} split targets", num_classes)
        splits[name] = Split(x=x, y=y, sha256=hash_array(x))
    return QuantDataset(calib=calib, val=splits["val"], test=splits["test"], provenance=dict(provenance or {}))


def from_arrays(*, calib_x: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, test_x: np.ndarray,
                test_y: np.ndarray, task: str, num_classes: int, chw: tuple, calib_n: int = MIN_CALIB_SLICES,
                provenance: dict[str, Any] | None = None) -> QuantDataset:
    """Dataset from model inputs that the caller already produced with engine.preprocess."""
    calib = calibration_split(calib_x, chw, calib_n)
    splits = {}
    for name, x, y in (("val", val_x, val_y), ("test", test_x, test_y)):
        x = check_inputs(x, chw, f"{name} split")
        y = check_targets(y, len(x), task, f"{name} split targets", num_classes)
        splits[name] = Split(x=x, y=y, sha256=hash_array(x))
    return QuantDataset(calib=calib, val=splits["val"], test=splits["test"], provenance=dict(provenance or {}))


NPZ_KEYS = ("calib_images", "val_images", "val_targets", "test_images", "test_targets")


def load_npz_splits(path: Any) -> dict[str, tuple[np.ndarray, Any]]:
    """Raw splits from an .npz file (`slicert quantize --data`): calib_images, val_images, val_targets,
    test_images, test_targets (raw stored pixel values; targets = class ids or masks on the model grid)."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise InputError(f"--data {path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"--data {path}: not a readable .npz file ({exc})") from exc
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        raise InputError(f"--data {path}: missing array(s) {missing}; expected {list(NPZ_KEYS)}")
    return {"calib": (arrays["calib_images"], None), "val": (arrays["val_images"], arrays["val_targets"]),
            "test": (arrays["test_images"], arrays["test_targets"])}
