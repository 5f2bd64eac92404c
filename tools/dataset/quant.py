"""The quantizer's calibration / validation / test data from a DICOM folder's own splits.

Calibration uses the calib split (patients no other split has). The quantizer wants at least 256
calibration inputs (tools.quantize.data.MIN_CALIB_SLICES); a small calib split is topped up with
seeded geometric variants (rotation, scale, shift; bilinear on the model inputs) of its own slices,
and the report says how many are real. The gate is scored on the test split only.
"""
from __future__ import annotations

import numpy as np


def calibration_inputs(x: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """(n model inputs, how many are real): `x` first, then seeded affine variants of it."""
    import math

    import torch
    import torch.nn.functional as F

    k = len(x)
    if k >= n:
        return x[:n], n
    rng = np.random.default_rng([seed, 256])
    src = np.arange(n - k) % k
    a = np.radians(rng.uniform(-10, 10, n - k))
    sc = 1 + rng.uniform(-0.1, 0.1, n - k)
    t = rng.uniform(-0.1, 0.1, (n - k, 2))
    theta = torch.zeros(n - k, 2, 3)
    theta[:, 0, 0] = torch.from_numpy(np.cos(a) / sc)
    theta[:, 0, 1] = torch.from_numpy(-np.sin(a) / sc)
    theta[:, 1, 0] = torch.from_numpy(np.sin(a) / sc)
    theta[:, 1, 1] = torch.from_numpy(np.cos(a) / sc)
    theta[:, :, 2] = torch.from_numpy(t)
    base = torch.from_numpy(np.ascontiguousarray(x[src]))
    grid = F.affine_grid(theta.float(), list(base.shape), align_corners=False)
    extra = F.grid_sample(base, grid, mode="bilinear", padding_mode="border", align_corners=False).numpy()
    assert math.isfinite(float(extra.sum()))
    return np.concatenate([x, extra.astype(np.float32)]), k


def quant_dataset(folder, chw: tuple, calib_n: int):
    """tools.quantize.data.QuantDataset from a DicomFolder (calib topped up to calib_n, see above)."""
    from tools.quantize import data as data_mod

    calib_x, real = calibration_inputs(folder.inputs("calib"), calib_n)
    calib = data_mod.calibration_split(calib_x, chw, calib_n)
    splits = {}
    for name in ("val", "test"):
        x = data_mod.check_inputs(folder.inputs(name), chw, f"{name} split")
        y = data_mod.check_targets(folder.targets[name], len(x), folder.task, f"{name} split targets",
                                   len(folder.labels))
        splits[name] = data_mod.Split(x=x, y=y, sha256=data_mod.hash_array(x))
    r = folder.report
    return data_mod.QuantDataset(calib=calib, val=splits["val"], test=splits["test"], provenance={
        "dataset": folder.root.name, "kind": "dicom_folder", "fingerprint": folder.fingerprint,
        "description": f"DICOM folder {folder.root} split by PatientID ({r['splits_file']})",
        "synthetic": False, "real": f"{r['n_used']} DICOM images of the user's folder",
        "simulated": (f"calibration: {real} real calib-split slices + {calib_n - real} seeded rotations/scalings/"
                      f"shifts of them" if real < calib_n else None),
        "calib_real_slices": real})
