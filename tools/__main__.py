"""`python -m tools train|distill|export [ARGS]`: one toolchain step without the `slicert` entry point."""
from __future__ import annotations

import sys

from tools.cli import run_step

_STEPS = ("train", "distill", "export")

if len(sys.argv) < 2 or sys.argv[1] not in _STEPS:
    sys.exit(f"usage: python -m tools {{{'|'.join(_STEPS)}}} [ARGS] (see `slicert <step> --help`)")
step = sys.argv.pop(1)
run_step(step)
