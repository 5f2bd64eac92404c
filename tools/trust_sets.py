"""Out-of-distribution test sets from what is on this machine, for measuring the OOD score (docs/trust.md).

Every set is turned into model inputs exactly as the runtime would (engine.preprocess with the bundle's
spec, or with the spec `spec_for` derives from a DICOM header), so a measured detection rate is the
rate `Session.run` would flag.

  real DICOM            real acquisitions in pydicom / pydicom-data: other modalities (MR, CT, US, OT),
                        other body parts, real radiographs (for a model trained on simulated projections)
  intensity-corrupted   held-out test images with their stored values scaled (x0.5, x2), offset or
                        gamma-distorted: a detector/gain or rescale error
  noise                 test images with strong Gaussian noise, and pure uniform-noise images
  wrong window          test images through a VOI window that saturates (a quarter of the width) or is
                        shifted by half a width: a misconfigured or wrong DICOM window
  other tasks           the other toolchain datasets' test images through this model's preprocessing
  blank                 constant images (all minimum, all maximum)
"""
from __future__ import annotations

import numpy as np

from engine.errors import SliceRTError

# Real files used as OOD inputs; each is read with engine.dicom and preprocessed with spec_for.
REAL_FILES = ("RG1_UNCR.dcm", "RG3_UNCR.dcm", "CT_small.dcm", "MR_small.dcm", "MR2_UNCR.dcm", "emri_small.dcm",
              "US1_UNCR.dcm", "color3d_jpeg_baseline.dcm", "OBXXXX1A.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm",
              "MR-SIEMENS-DICOM-WithOverlays.dcm", "SC_rgb.dcm", "693_UNCR.dcm", "gdcm-US-ALOKA-16.dcm",
              "OT-PAL-8-face.dcm")
# The demo's --fast budget: the same kinds of files without the two slowest decodes (16-bit palette US, JPEG
# lossless process 14).
REAL_FILES_FAST = tuple(n for n in REAL_FILES if n not in ("gdcm-US-ALOKA-16.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm"))
_FRAMES_PER_FILE = 3


def _inputs(images, spec) -> np.ndarray:
    from engine.preprocess import preprocess

    return np.concatenate([preprocess(im, spec) for im in images], axis=0)


def real_dicom(model_spec, voi_policy: str, names=REAL_FILES) -> tuple[np.ndarray, list[dict]]:
    """(model inputs (N, C, H, W), one record per input: file, frame, modality, photometric, body part)."""
    from pydicom.data import get_testdata_file

    from engine import dicom
    from engine.preprocess import preprocess

    xs, rows = [], []
    for name in names:
        path = get_testdata_file(name, download=False)  # never get_testdata_files(): it goes online
        if path is None:
            continue
        try:
            img = dicom.read(path)
            frames = [img] if hasattr(img, "pixels") else [img[i] for i in sorted(
                {0, len(img) // 2, len(img) - 1})][:_FRAMES_PER_FILE]
            for s in frames:
                spec = s.spec_for(model_spec, voi_policy)
                xs.append(preprocess(s.pixels, spec))
                part = s.dataset.get("BodyPartExamined") if s.dataset is not None else None
                rows.append({"file": name, "frame": s.frame_index, "modality": s.modality,
                             "photometric": s.source_photometric, "body_part": str(part or "") or None,
                             "bits_stored": s.bits_stored})
        except SliceRTError:  # a file this reader refuses is not an input the model could ever see
            continue
    if not xs:
        return np.zeros((0, model_spec.out_channels, model_spec.out_height, model_spec.out_width), np.float32), []
    return np.concatenate(xs, axis=0), rows


def _clip_cast(x: np.ndarray, like: np.ndarray) -> np.ndarray:
    if like.dtype.kind in "iu":
        info = np.iinfo(like.dtype)
        return np.clip(np.rint(x), info.min, info.max).astype(like.dtype)
    return x.astype(like.dtype)


def synthetic(test_images: np.ndarray, spec, *, n: int = 48, seed: int = 0) -> dict[str, np.ndarray]:
    """Model inputs of the corrupted / noise / wrong-window / blank sets, made from `test_images` (raw)."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(test_images), size=min(n, len(test_images)), replace=False)
    base = test_images[idx]
    f = base.astype(np.float64)
    lo, hi = float(f.min()), float(f.max())
    span = max(hi - lo, 1.0)
    q = len(base) // 4 or 1
    corrupted = np.concatenate([
        _clip_cast(f[:q] * 0.5, base), _clip_cast(f[q:2 * q] * 2.0, base),
        _clip_cast(f[2 * q:3 * q] + 0.3 * span, base),
        _clip_cast(lo + span * ((f[3 * q:] - lo) / span).clip(0, 1) ** 3.0, base)])
    noisy = _clip_cast(f + rng.normal(0, 0.2 * span, f.shape), base)
    pure = _clip_cast(rng.uniform(lo, hi, (q, *base.shape[1:])), base)
    c, w = spec.window_center, spec.window_width
    narrow = spec.replace(window_width=w / 4)
    shifted = spec.replace(window_center=c + w / 2)
    half = len(base) // 2 or 1
    blank = np.stack([np.full(base.shape[1:], lo), np.full(base.shape[1:], hi)]).astype(base.dtype)
    out = {"intensity-corrupted": _inputs(corrupted, spec),
           "noise": np.concatenate([_inputs(noisy, spec), _inputs(pure, spec)]),
           "blank": _inputs(blank, spec)}
    if spec.voi_function in ("linear", "linear_exact", "sigmoid"):
        out["wrong window"] = np.concatenate([_inputs(base[:half], narrow), _inputs(base[half:], shifted)])
    return out


def other_tasks(images_by_task: dict[str, np.ndarray], spec, *, n: int = 48, seed: int = 0) -> dict[str, np.ndarray]:
    """Model inputs of other datasets' raw test images through this model's spec."""
    rng = np.random.default_rng(seed)
    out = {}
    for task, images in images_by_task.items():
        idx = rng.choice(len(images), size=min(n, len(images)), replace=False)
        out[f"other task: {task}"] = _inputs(images[idx], spec)
    return out


__all__ = ["real_dicom", "synthetic", "other_tasks", "REAL_FILES", "REAL_FILES_FAST"]
