"""Student families with width/depth knobs: the zoo's students (tools.models), generalized.

| family | task           | network                                    | widths for width w, depth d |
|--------|----------------|--------------------------------------------|-----------------------------|
| cnn    | classification | Conv-BN-ReLU stages (stride 2 + stride 1)  | w * (1, 2, 3, 6, 12)[:d]    |
| unet   | segmentation   | U-Net, d levels (d - 1 downsamplings)      | w * (1, 2, 4, 8, 16)[:d]    |

Named sizes: tiny (w 4), small (w 8), base (w 16), depth 4. A student is written as a name
("small"), a name with knobs ("small:depth=3", "unet:width=6,depth=4"), or its arch id
("unet-w6-d4"), which is what weight files and reports record. The zoo's demo students are
cnn-w8-d4 (same widths as cnn_student) and unet-w6-d4 (= unet_student).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from engine.errors import InputError

SIZES = {"tiny": 4, "small": 8, "base": 16}
FAMILY_OF_TASK = {"classification": "cnn", "segmentation": "unet"}
_MULT = {"cnn": (1, 2, 3, 6, 12), "unet": (1, 2, 4, 8, 16)}
_ARCH = re.compile(r"^(cnn|unet)-w(\d+)-d(\d+)$")


@dataclass(frozen=True)
class StudentSpec:
    family: str
    width: int
    depth: int

    @property
    def arch(self) -> str:
        return f"{self.family}-w{self.width}-d{self.depth}"

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.width * m for m in _MULT[self.family][: self.depth])

    def check_input(self, chw: tuple[int, int, int]) -> None:
        """InputError when the input size does not fit the network (U-Net sides must halve cleanly)."""
        if self.family == "unet":
            f = 2 ** (self.depth - 1)
            if chw[1] % f or chw[2] % f:
                raise InputError(f"student {self.arch}: a {self.depth}-level U-Net needs input sides divisible by {f}, "
                                 f"the spec makes {chw[1]}x{chw[2]}; choose depth={_max_depth(chw)} or another size")

    def build(self, num_classes: int, in_channels: int, seed: int | None = None):
        import torch

        from tools.models import CNNStudent, UNet

        cls = CNNStudent if self.family == "cnn" else UNet
        if seed is None:
            return cls(num_classes, in_channels, widths=self.widths)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(num_classes, in_channels, widths=self.widths)


def _max_depth(chw) -> int:
    d = 1
    while d < 5 and chw[1] % 2 ** d == 0 and chw[2] % 2 ** d == 0:
        d += 1
    return d


def parse(student: str, task: str) -> StudentSpec:
    """A student name / name with knobs / arch id for `task` -> StudentSpec (InputError if unknown)."""
    if not isinstance(student, str) or not student.strip():
        raise InputError(f"student must be a name ({', '.join(SIZES)}), 'family:width=W,depth=D' or an arch id, "
                         f"got {student!r}")
    s = student.strip().lower()
    m = _ARCH.match(s)
    family = FAMILY_OF_TASK[task]
    if m:
        out = StudentSpec(m.group(1), int(m.group(2)), int(m.group(3)))
    else:
        name, _, knobs = s.partition(":")
        if name in SIZES:
            width, depth = SIZES[name], 4
        elif name in _MULT:
            family, width, depth = name, 8, 4
        else:
            raise InputError(f"unknown student {student!r}: names {sorted(SIZES)}, families {sorted(_MULT)}, "
                             f"e.g. 'small', 'small:depth=3', 'unet:width=6,depth=4', 'unet-w6-d4'")
        for kv in filter(None, knobs.split(",")):
            k, _, v = kv.partition("=")
            if k.strip() not in ("width", "depth") or not v.strip().isdigit():
                raise InputError(f"student {student!r}: knobs are width=INT and depth=INT, got {kv!r}")
            if k.strip() == "width":
                width = int(v)
            else:
                depth = int(v)
        out = StudentSpec(family, width, depth)
    if out.family != FAMILY_OF_TASK[task]:
        raise InputError(f"student {student!r} is a {out.family} network; {task} takes the "
                         f"{FAMILY_OF_TASK[task]} family")
    if not (1 <= out.width <= 256 and 2 <= out.depth <= 5):
        raise InputError(f"student {student!r}: width must be in [1, 256] and depth in [2, 5]")
    return out
