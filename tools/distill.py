"""Knowledge distillation of a small student from a trained teacher.

Classification: soft-target KD (Hinton et al. 2015):
    L = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)
Segmentation: pixel-wise KD plus Dice:
    L = alpha * T^2 * mean_pixels KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y) + w * Dice(s, y)
(CE class-weighted exactly as in the student's supervised training, see TrainConfig.class_balance.)
T^2 keeps the gradient scale of the soft term independent of T. The teacher sees exactly the same
augmented batch as the student.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tools.train import TrainConfig, soft_dice_loss


def kd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher || student) at temperature T, averaged over samples (and pixels)."""
    t = temperature
    log_p = F.log_softmax(student_logits / t, dim=1)
    q = F.softmax(teacher_logits / t, dim=1)
    kl = (q * (torch.log(q.clamp_min(1e-12)) - log_p)).sum(dim=1)  # per sample / per pixel
    return kl.mean() * t * t


def kd_loss(task: str, num_classes: int, cfg: TrainConfig, weights: torch.Tensor | None = None):
    a, t = cfg.kd_alpha, cfg.kd_temperature

    def loss(logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor | None) -> torch.Tensor:
        out = a * kd_term(logits, teacher_logits, t) + (1 - a) * F.cross_entropy(logits, y, weight=weights)
        if task == "segmentation" and cfg.dice_weight:
            out = out + cfg.dice_weight * soft_dice_loss(logits, y, num_classes)
        return out

    return loss


if __name__ == "__main__":  # `python -m tools.distill`: the CLI is imported only when run as a script, so the
    from tools.cli import run_step  # step module never imports the CLI that imports it (no import circle)

    run_step("distill")
