"""Synthetic fixture for the quantizer tests and benchmarks: two tiny PyTorch students (a residual CNN classifier and a
small U-Net segmenter) trained for a few seeded steps on synthetic CT-like slices, exported to ONNX
opset 17 with a dynamic batch axis, in the toolchain's export layout (model.onnx + model.json).

Everything here is SYNTHETIC: the images are Gaussian blobs and discs on noise in Hounsfield-like
units, not patient data. The metrics are only meaningful as FP32-vs-quantized comparisons.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RAW_SIDE = 40  # stored raw slices are 40x40 uint16; the model sees 32x32 after area resize
MODEL_SIDE = 32
HU_OFFSET = 1024  # stored value = HU + 1024 (RescaleIntercept -1024, like most CT)

SPEC = {
    "out_height": MODEL_SIDE, "out_width": MODEL_SIDE, "rescale_intercept": -float(HU_OFFSET),
    "voi_function": "linear", "window_center": 40.0, "window_width": 400.0, "resize": "area",
    "normalize": "fixed", "mean": [0.5], "std": [0.25],
}


@dataclass
class Split:
    images: np.ndarray  # (N, RAW_SIDE, RAW_SIDE) uint16 stored values
    labels: np.ndarray | None = None  # (N,) int64 for classification
    masks: np.ndarray | None = None  # (N, MODEL_SIDE, MODEL_SIDE) uint8 for segmentation


def _noise_slices(rng: np.random.Generator, n: int) -> np.ndarray:
    # Soft tissue around 40 HU with correlated noise (sum of two scales), like a smoothed CT patch.
    base = rng.normal(40.0, 25.0, size=(n, RAW_SIDE, RAW_SIDE))
    coarse = rng.normal(0.0, 30.0, size=(n, RAW_SIDE // 4, RAW_SIDE // 4))
    base += np.kron(coarse, np.ones((4, 4)))
    return base


def _grid() -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:RAW_SIDE, 0:RAW_SIDE].astype(np.float64)


def make_classification(seed: int, n: int) -> Split:
    """Class 1 = a faint round 'nodule' (Gaussian blob, +60..+140 HU) somewhere in the slice."""
    rng = np.random.default_rng(seed)
    hu = _noise_slices(rng, n)
    labels = rng.integers(0, 2, size=n)
    yy, xx = _grid()
    for i in np.flatnonzero(labels):
        cy, cx = rng.uniform(8, RAW_SIDE - 8, size=2)
        sigma = rng.uniform(1.5, 3.0)
        amp = rng.uniform(60.0, 160.0)
        hu[i] += amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    raw = np.clip(np.rint(hu + HU_OFFSET), 0, 65535).astype(np.uint16)
    return Split(images=raw, labels=labels.astype(np.int64))


def make_segmentation(seed: int, n: int) -> Split:
    """Class 1 = bright disc (+250 HU), class 2 = dark square (-250 HU); masks at model resolution."""
    rng = np.random.default_rng(seed)
    hu = _noise_slices(rng, n)
    yy, xx = _grid()
    lab = np.zeros((n, RAW_SIDE, RAW_SIDE), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(7, RAW_SIDE - 7, size=2)
        r = rng.uniform(2.5, 6)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        sy, sx = rng.integers(2, RAW_SIDE - 10, size=2)
        side = rng.integers(4, 8)
        square = np.zeros_like(disc)
        square[sy:sy + side, sx:sx + side] = True
        square &= ~disc
        hu[i][disc] += rng.uniform(180, 320)
        hu[i][square] -= rng.uniform(180, 320)
        lab[i][disc] = 1
        lab[i][square] = 2
    raw = np.clip(np.rint(hu + HU_OFFSET), 0, 65535).astype(np.uint16)
    # Masks at model resolution: nearest sampling of the raw-resolution label map (40 -> 32).
    idx = (np.arange(MODEL_SIDE) * RAW_SIDE / MODEL_SIDE + RAW_SIDE / MODEL_SIDE / 2).astype(int)
    masks = lab[:, idx][:, :, idx]
    return Split(images=raw, masks=masks)


def reference_preprocess(raw: np.ndarray) -> np.ndarray:
    """NumPy version of SPEC for TRAINING the fixture only (the quantizer itself uses engine.preprocess).

    Linear VOI per PS3.3 C.11.2.1.2.1, then 40->32 area resize via a 5x5 -> 4x4 box-weight matrix."""
    hu = raw.astype(np.float64) - HU_OFFSET
    c, w = SPEC["window_center"], SPEC["window_width"]
    y = np.clip(((hu - (c - 0.5)) / (w - 1) + 0.5), 0.0, 1.0)
    # Area resize weights: output pixel j covers input [j*1.25, (j+1)*1.25).
    m = np.zeros((MODEL_SIDE, RAW_SIDE))
    scale = RAW_SIDE / MODEL_SIDE
    for j in range(MODEL_SIDE):
        lo, hi = j * scale, (j + 1) * scale
        for k in range(int(np.floor(lo)), int(np.ceil(hi))):
            m[j, k] = min(hi, k + 1) - max(lo, k)
        m[j] /= m[j].sum()
    y = np.einsum("hk,nkl,wl->nhw", m, y, m)
    y = (y - 0.5) / 0.25
    return y[:, None].astype(np.float32)


def _torch_models():
    import torch
    from torch import nn

    def cbr(ci, co, stride=1):
        return nn.Sequential(nn.Conv2d(ci, co, 3, stride, 1, bias=False), nn.BatchNorm2d(co), nn.ReLU())

    class Residual(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.a = cbr(c, c)
            self.b = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(x + self.b(self.a(x)))

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(cbr(1, 16, 2), Residual(16), cbr(16, 32, 2), Residual(32),
                                      cbr(32, 64, 2), Residual(64))
            self.head = nn.Linear(64, 2)

        def forward(self, x):
            return self.head(self.body(x).mean(dim=(2, 3)))

    class UNet(nn.Module):
        def __init__(self, k=3):
            super().__init__()
            self.e1 = nn.Sequential(cbr(1, 16), Residual(16))
            self.e2 = nn.Sequential(cbr(16, 32, 2), Residual(32))
            self.mid = nn.Sequential(cbr(32, 64, 2), Residual(64))
            self.up2 = nn.ConvTranspose2d(64, 32, 2, 2)
            self.d2 = cbr(64, 32)
            self.up1 = nn.Upsample(scale_factor=2, mode="nearest")
            self.d1 = cbr(32 + 16, 16)
            self.out = nn.Conv2d(16, k, 1)

        def forward(self, x):
            e1 = self.e1(x)
            e2 = self.e2(e1)
            m = self.mid(e2)
            d2 = self.d2(torch.cat([self.up2(m), e2], 1))
            d1 = self.d1(torch.cat([self.up1(d2), e1], 1))
            return self.out(d1)

    return Classifier, UNet


def _train(model, x: np.ndarray, y: np.ndarray, steps: int, seed: int, seg: bool):
    import torch

    torch.manual_seed(seed)
    # Trained in float64 and exported in float32: float32 training rounds differently with the CPU's
    # SIMD width (AVX2 vs AVX-512), and 250 Adam steps amplify that into a different model on each
    # machine; in float64 the differences stay far below what quantization or the tests can see.
    model = model.double()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = np.random.default_rng(seed)
    xt, yt = torch.from_numpy(x.astype(np.float64)), torch.from_numpy(y)
    model.train()
    for _ in range(steps):
        idx = torch.from_numpy(gen.integers(0, len(x), size=32))
        logits = model(xt[idx])
        loss = torch.nn.functional.cross_entropy(logits, yt[idx].long())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model.float()


def export_fixture(out_dir: Path, task: str, *, steps: int | None = None, seed: int = 7, n_train: int = 512
                   ) -> Path:
    """Train the tiny student for `task` and write out_dir/model.onnx + model.json (export contract 5)."""
    import torch

    torch.set_num_threads(1)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    Classifier, UNet = _torch_models()
    torch.manual_seed(seed)
    if task == "classification":
        split = make_classification(seed, n_train)
        model = _train(Classifier(), reference_preprocess(split.images), split.labels, steps or 250, seed, False)
        out_name, labels = "scores", ["no_nodule", "nodule"]
        axes = {"input": {0: "N"}, out_name: {0: "N"}}
    elif task == "segmentation":
        split = make_segmentation(seed, n_train)
        model = _train(UNet(), reference_preprocess(split.images), split.masks.astype(np.int64), steps or 50, seed,
                       True)
        out_name, labels = "logits", ["background", "disc", "square"]
        axes = {"input": {0: "N"}, out_name: {0: "N"}}
    else:
        raise ValueError(task)
    path = out_dir / "model.onnx"
    dummy = torch.zeros(1, 1, MODEL_SIDE, MODEL_SIDE)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript (not installed).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (dummy,), str(path), input_names=["input"], output_names=[out_name],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    meta = {"name": f"synthetic-{task}", "task": task, "labels": labels, "preprocess": SPEC, "voi_policy": "model",
            "dataset": {"name": f"synthetic-{task}", "synthetic": True, "seed": seed},
            "metrics": {}, "onnx_max_abs_err": 0.0, "source_sha256": ""}
    (out_dir / "model.json").write_text(json.dumps(meta, indent=2))
    return out_dir
