"""Supervised training of teachers and students (CPU, PyTorch).

One loop for every model: AdamW + one-cycle schedule, on-the-fly geometric/intensity augmentation of
the preprocessed tensors, BF16 autocast where the CPU has native BF16 (AMX/AVX512-BF16: about 2-3x
faster here; weights, evaluation and export stay FP32), model selection on the validation split.
The test split is never looked at here.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Augment:
    rot_deg: float = 0.0
    scale: float = 0.0  # relative, +-
    shift: float = 0.0  # fraction of the half-size, +-
    hflip: bool = False
    intensity: float = 0.0  # gain +-intensity, offset +-intensity/2 (input units)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 1e-4
    augment: Augment = field(default_factory=Augment)
    dice_weight: float = 1.0  # segmentation: CE + dice_weight * soft Dice
    kd_temperature: float = 1.0  # used by tools.distill only
    kd_alpha: float = 0.0  # weight of the distillation term (0 = plain supervised training)
    paired: bool = False  # training images come in matched pairs (2k, 2k+1): keep pairs in one batch
    # Cross-entropy class weights = frequency^-class_balance (0 = unweighted). Small segmenters
    # otherwise settle in a minimum that never predicts a small organ (the heart on CT).
    class_balance: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TaskTensors:
    """Preprocessed inputs (N, C, H, W) float32 and targets per split, as torch tensors."""

    task: str
    num_classes: int
    x: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor]


def bf16_supported() -> bool:
    from engine.envinfo import cpu_flags

    return bool(cpu_flags(("avx512_bf16", "amx_bf16")))


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """1 - mean soft Dice over foreground classes, pooled over the batch (stable for absent classes)."""
    prob = logits.softmax(dim=1)[:, 1:]
    onehot = F.one_hot(target, num_classes).permute(0, 3, 1, 2).to(prob.dtype)[:, 1:]
    inter = (prob * onehot).sum(dim=(0, 2, 3))
    denom = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return 1.0 - ((2 * inter + 1.0) / (denom + 1.0)).mean()


def class_weights(y: torch.Tensor, num_classes: int, power: float) -> torch.Tensor | None:
    """freq^-power, normalized so the frequency-weighted mean weight is 1; None when power is 0."""
    if not power:
        return None
    freq = torch.bincount(y.reshape(-1), minlength=num_classes).double()
    freq = freq / freq.sum()
    w = freq.clamp_min(1e-6) ** -power
    return (w / (w * freq).sum()).float()


def supervised_loss(task: str, num_classes: int, dice_weight: float, weights: torch.Tensor | None = None):
    def loss(logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor | None) -> torch.Tensor:
        ce = F.cross_entropy(logits, y, weight=weights)
        if task == "segmentation" and dice_weight:
            return ce + dice_weight * soft_dice_loss(logits, y, num_classes)
        return ce

    return loss


def augment_batch(x: torch.Tensor, y: torch.Tensor, task: str, aug: Augment,
                  g: torch.Generator, paired: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Random affine (+ flip) and intensity change per sample; with `paired`, samples 2k and 2k+1
    get the same transform so a matched pair stays matched."""
    n = x.shape[0]
    reps = 2 if paired else 1

    def u(scale: float) -> torch.Tensor:
        return ((torch.rand(n // reps, generator=g) * 2 - 1) * scale).repeat_interleave(reps)

    if aug.rot_deg or aug.scale or aug.shift or aug.hflip:
        ang, sc = u(math.radians(aug.rot_deg)), 1 + u(aug.scale)
        flip = (torch.where(torch.rand(n // reps, generator=g) < 0.5, -1.0, 1.0).repeat_interleave(reps)
                if aug.hflip else torch.ones(n))
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = torch.cos(ang) / sc * flip
        theta[:, 0, 1] = -torch.sin(ang) / sc
        theta[:, 1, 0] = torch.sin(ang) / sc * flip
        theta[:, 1, 1] = torch.cos(ang) / sc
        theta[:, 0, 2], theta[:, 1, 2] = u(aug.shift), u(aug.shift)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if task == "segmentation":
            y = F.grid_sample(y[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                              align_corners=False)[:, 0].long()
    if aug.intensity:
        x = x * (1 + u(aug.intensity)).view(n, 1, 1, 1) + (u(aug.intensity / 2)).view(n, 1, 1, 1)
    return x, y


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 64) -> np.ndarray:
    """FP32 logits of `model` in eval mode."""
    model.eval()
    return torch.cat([model(x[i:i + batch]) for i in range(0, x.shape[0], batch)]).numpy()


def val_score(task: str, logits: np.ndarray, y: np.ndarray) -> float:
    """Model-selection score: AUC (classification), mean foreground Dice (segmentation)."""
    from tools.metrics import dice_per_class, roc_auc

    if task == "classification":
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return roc_auc(e[:, 1] / e.sum(axis=1), y)
    d = [v for v in dice_per_class(logits.argmax(axis=1), y, logits.shape[1])[1:] if not math.isnan(v)]
    return float(np.mean(d)) if d else 0.0


def fit(model: nn.Module, data: TaskTensors, cfg: TrainConfig, loss_fn, *, teacher: nn.Module | None = None,
        progress: Progress | None = None) -> dict:
    """Train `model` in place on data.x["train"]; keep the weights with the best validation score."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    xt, yt = data.x["train"], data.y["train"]
    n = xt.shape[0]
    reps = 2 if cfg.paired else 1
    if cfg.paired and n % 2:
        raise ValueError("paired training needs an even number of training images")
    bs = min(cfg.batch_size, n) // reps  # units (images or pairs) per batch
    steps = max(1, n // reps // bs)  # drop the ragged last batch: BatchNorm needs > 1 sample
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps,
                                                pct_start=0.2)
    amp = bf16_supported()
    if teacher is not None:
        teacher.eval()
    best, best_state, best_epoch, history = -math.inf, None, -1, []
    t0, c0 = time.perf_counter(), time.process_time()
    yv = data.y["val"].numpy()
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(n // reps, generator=g)
        total = 0.0
        for s in range(steps):
            idx = perm[s * bs:(s + 1) * bs]
            if cfg.paired:
                idx = torch.stack([2 * idx, 2 * idx + 1], dim=1).reshape(-1)
            xb, yb = augment_batch(xt[idx], yt[idx], data.task, cfg.augment, g, cfg.paired)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                logits = model(xb)
                t_logits = None
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(xb)
            loss = loss_fn(logits.float(), yb, None if t_logits is None else t_logits.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach().item()
        score = val_score(data.task, predict(model, data.x["val"]), yv)
        history.append({"epoch": epoch + 1, "loss": total / steps, "val": score})
        if score > best:
            best, best_epoch, best_state = score, epoch + 1, copy.deepcopy(model.state_dict())
        if progress is not None:
            progress((epoch + 1) / cfg.epochs, f"epoch {epoch + 1}/{cfg.epochs} loss {total / steps:.3f} "
                                               f"val {score:.3f}")
    model.load_state_dict(best_state)
    model.eval()
    return {"best_epoch": best_epoch, "best_val": best, "val_metric": "auc" if data.task == "classification"
            else "mean_dice", "epochs": cfg.epochs, "bf16_autocast": amp, "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0,
            "history": history}


if __name__ == "__main__":  # `python -m tools.train`: the CLI is imported only when run as a script, so the
    from tools.cli import run_step  # step module never imports the CLI that imports it (no import circle)

    run_step("train")
