#!/usr/bin/env python3
"""Print one of the README's two fresh-machine commands, so CI runs exactly what the README says.

The commands are the non-comment lines of the first ```bash block under "## Quick start (CPU)":
command 1 installs and runs the main job, command 2 runs the tests. Anything else there is an error,
so the README and .ci/run cannot drift apart silently.

    python .ci/readme_commands.py 1      # prints command 1
"""
from __future__ import annotations

import pathlib
import re
import sys

SECTION = "## Quick start (CPU)"


def commands(readme: str) -> list[str]:
    """The fresh-machine commands of the README text `readme`, in order."""
    start = readme.find(SECTION)
    if start < 0:
        raise ValueError(f"README has no '{SECTION}' section")
    block = re.search(r"```bash\n(.*?)```", readme[start:], re.S)
    if block is None:
        raise ValueError(f"README's '{SECTION}' section has no ```bash block")
    lines = [ln.strip() for ln in block.group(1).splitlines()]
    cmds = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(cmds) != 2:
        raise ValueError(f"README's '{SECTION}' block must hold exactly 2 commands, found {len(cmds)}: {cmds}")
    return cmds


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in ("1", "2"):
        print("usage: readme_commands.py 1|2", file=sys.stderr)
        return 2
    readme = pathlib.Path(__file__).resolve().parent.parent / "README.md"
    print(commands(readme.read_text())[int(argv[1]) - 1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
