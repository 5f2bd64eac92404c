"""Raw images -> model inputs through SliceRT's own native preprocessing (the runtime's kernel).

Training, evaluation, calibration and the ONNX equivalence check all build their tensors here, so the
model learns exactly the numbers `engine.preprocess` produces at inference time.
"""
from __future__ import annotations

import numpy as np

from engine.errors import InputError


def model_inputs(images: np.ndarray, spec) -> np.ndarray:
    """(N, H, W) raw integer images -> (N, C, out_h, out_w) float32 via engine.preprocess.preprocess_into."""
    from engine.preprocess import preprocess_into

    if spec.layout != "NCHW" or spec.out_dtype != "float32":
        raise InputError(f"training needs NCHW float32 inputs, spec has {spec.layout} {spec.out_dtype}")
    images = np.asarray(images)
    if images.ndim != 3:
        raise InputError(f"expected (N, H, W) images, got shape {images.shape}")
    out = np.empty((images.shape[0], spec.out_channels, spec.out_height, spec.out_width), np.float32)
    for i in range(images.shape[0]):
        preprocess_into(out, images[i], spec, i)
    return out


def masks_to_grid(masks: np.ndarray, spec, num_classes: int, chunk: int = 16) -> np.ndarray:
    """(N, H, W) label masks -> (N, out_h, out_w) int64 on the model grid: each output pixel takes the
    class covering most of its area (area-resampled one-hot, then argmax), matching the area resize
    the images get. Only whole-image resizes (no ROI, no letterbox) are supported here."""
    import torch
    import torch.nn.functional as F

    if spec.roi is not None or spec.letterbox:
        raise InputError("masks_to_grid supports plain resizes only (no roi, no letterbox)")
    out = np.empty((masks.shape[0], spec.out_height, spec.out_width), np.int64)
    for s in range(0, masks.shape[0], chunk):
        m = torch.from_numpy(masks[s:s + chunk].astype(np.int64))
        onehot = F.one_hot(m, num_classes).permute(0, 3, 1, 2).float()
        frac = F.interpolate(onehot, size=(spec.out_height, spec.out_width), mode="area")
        out[s:s + chunk] = frac.argmax(dim=1).numpy()
    return out
