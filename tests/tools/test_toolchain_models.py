"""Model zoo: FLOP counting against hand counts, the >= 5x teacher/student FLOP ratio at the real input
sizes, and quantization-friendly building blocks only."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tools import flops, models
from tools.data import _module


def test_flop_counter_matches_hand_count():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.ReLU(),
                      nn.Conv2d(8, 4, 1, bias=True), nn.Flatten(), nn.Linear(4 * 16 * 16, 10))
    # conv1: out 8x16x16, 3*3*3 MACs each; conv2: out 4x16x16, 8 MACs + bias; fc: 10 x (1024 + 1).
    expect = 8 * 16 * 16 * 27 + 4 * 16 * 16 * 9 + 10 * 1025
    assert flops.count_macs(m, (1, 3, 32, 32)) == expect
    assert flops.count_macs(m, (2, 3, 32, 32)) == 2 * expect  # scales with batch
    p = flops.profile(m, (3, 32, 32))
    assert p["flops"] == 2 * expect and p["params"] == sum(x.numel() for x in m.parameters())


@pytest.mark.parametrize("dataset", ["ct_organs", "cxr_nodule", "us_phantom"])
def test_student_has_at_least_5x_fewer_flops(dataset):
    m = _module(dataset)
    spec = m["spec"]()
    t_arch, s_arch = models.PAIRS[m["task"]]
    shape = (spec.out_channels, spec.out_height, spec.out_width)
    k = len(m["labels"])
    t = flops.profile(models.build(t_arch, k, 1, seed=0), shape)
    s = flops.profile(models.build(s_arch, k, 1, seed=0), shape)
    assert t["flops"] / s["flops"] >= 5.0, (dataset, t, s)
    assert s["params"] < t["params"]


ALLOWED = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Upsample, nn.AdaptiveAvgPool2d, nn.Linear, nn.Identity,
           nn.Sequential, nn.ModuleList, models.BasicBlock, models.ResNetTeacher, models.CNNStudent, models.UNet)


@pytest.mark.parametrize("arch", sorted(models.ARCHS))
def test_only_quantization_friendly_blocks(arch):
    m = models.build(arch, 3, 1, seed=0)
    bad = {type(x).__name__ for x in m.modules() if not isinstance(x, ALLOWED)}
    assert not bad, f"{arch} uses {bad}"
    x = torch.randn(2, 1, 64, 64)
    out = m.eval()(x)
    assert out.shape[0] == 2 and torch.isfinite(out).all()


def test_seeded_build_is_reproducible():
    a = models.build("unet_student", 4, 1, seed=3).state_dict()
    b = models.build("unet_student", 4, 1, seed=3).state_dict()
    c = models.build("unet_student", 4, 1, seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].dtype.is_floating_point)
