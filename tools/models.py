"""Teacher and student networks (PyTorch), all built from export- and quantization-friendly ops.

Ops used: Conv2d, BatchNorm2d (folded into the conv at export), ReLU, residual Add, nearest 2x
Upsample (ONNX Resize), Concat, MaxPool (none), GlobalAveragePool, Linear (Gemm). Nothing exotic:
every op has INT8 Q/DQ support in ONNX Runtime and TensorRT.

| model          | task           | structure                                             |
|----------------|----------------|-------------------------------------------------------|
| resnet_teacher | classification | ResNet-style: stem + 4 stages of basic blocks, GAP, FC |
| cnn_student    | classification | plain Conv-BN-ReLU stack (VGG-like), GAP, FC            |
| unet_teacher   | segmentation   | U-Net, 3 downsamplings, widths 16-32-64-128            |
| unet_student   | segmentation   | the same U-Net topology, widths 6-12-24-48             |
"""
from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn_relu(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = (nn.Identity() if stride == 1 and cin == cout else
                      nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.short(x))


class ResNetTeacher(nn.Module):
    """ResNet-style classifier: stride-2 stem, one basic block per stage (strides 1, 2, 2, 2)."""

    def __init__(self, num_classes: int, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        self.stem = conv_bn_relu(in_channels, widths[0], stride=2)
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stages.append(BasicBlock(cin, w, 1 if i == 0 else 2))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


class CNNStudent(nn.Module):
    """Plain Conv-BN-ReLU classifier: per stage one stride-2 conv and one stride-1 conv."""

    def __init__(self, num_classes: int, in_channels: int = 1, widths: tuple[int, ...] = (8, 16, 24, 48)):
        super().__init__()
        layers, cin = [], in_channels
        for w in widths:
            layers += [conv_bn_relu(cin, w, stride=2), conv_bn_relu(w, w)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class UNet(nn.Module):
    """U-Net: two 3x3 Conv-BN-ReLU per level, stride-2 convs to go down (no pooling op), nearest
    2x upsampling + concat to come up, 1x1 conv head producing per-class logits."""

    def __init__(self, num_classes: int, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        w, depth = list(widths), len(widths) - 1
        self.enc = nn.ModuleList([nn.Sequential(conv_bn_relu(in_channels, w[0]), conv_bn_relu(w[0], w[0]))])
        for i in range(1, depth + 1):
            self.enc.append(nn.Sequential(conv_bn_relu(w[i - 1], w[i], stride=2), conv_bn_relu(w[i], w[i])))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec = nn.ModuleList()
        for i in range(depth, 0, -1):
            self.dec.append(nn.Sequential(conv_bn_relu(w[i] + w[i - 1], w[i - 1]), conv_bn_relu(w[i - 1], w[i - 1])))
        self.head = nn.Conv2d(w[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for stage in self.enc:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        for stage in self.dec:
            x = stage(torch.cat([self.up(x), skips.pop()], dim=1))
        return self.head(x)


ARCHS = {
    "resnet_teacher": lambda k, c: ResNetTeacher(k, c),
    "cnn_student": lambda k, c: CNNStudent(k, c),
    "unet_teacher": lambda k, c: UNet(k, c, widths=(16, 32, 64, 128)),
    "unet_student": lambda k, c: UNet(k, c, widths=(6, 12, 24, 48)),
}
PAIRS = {"classification": ("resnet_teacher", "cnn_student"), "segmentation": ("unet_teacher", "unet_student")}


def build(arch: str, num_classes: int, in_channels: int = 1, seed: int | None = None) -> nn.Module:
    """A freshly initialized model; `seed` makes the initialization reproducible."""
    if arch not in ARCHS:
        from engine.errors import InputError

        raise InputError(f"unknown architecture {arch!r}; available: {sorted(ARCHS)}")
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return ARCHS[arch](num_classes, in_channels)
    return ARCHS[arch](num_classes, in_channels)
