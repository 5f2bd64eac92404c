"""Cold start in a fresh process: what a scanner pays from launching Python to the first result.

`measure_process_cold_start` spawns `python -m engine.bench.coldstart` (one process per repeat). The
child times, with perf_counter_ns from its first line, `import engine`, `engine.load(...)` and the
first `Session.run`; the parent adds the wall time from spawn to exit (interpreter start-up included).
The OS file cache is warm after the first repeat, as it is on a device that has booted once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InputError

_MARK = "SLICERT_COLDSTART "


def measure_process_cold_start(
    bundle: str | Path,
    input_text: str,
    load_kwargs: dict[str, Any] | None = None,
    *,
    repeats: int = 3,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    """Spawn `repeats` fresh processes; returns per-repeat lists and medians (ms)."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InputError(f"cold-start repeats must be an integer >= 1, got {repeats!r}")
    payload = json.dumps({"bundle": str(bundle), "input": input_text, "load_kwargs": load_kwargs or {}})
    keys = ("spawn_to_exit_ms", "import_ms", "load_ms", "first_result_ms", "import_to_first_result_ms")
    out: dict[str, Any] = {k: [] for k in keys}
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        proc = subprocess.run(
            [sys.executable, "-m", "engine.bench.coldstart", payload],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        wall = (time.perf_counter_ns() - t0) / 1e6
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(_MARK)), None)
        if proc.returncode != 0 or line is None:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise InputError(
                f"cold-start process for {bundle} failed (exit {proc.returncode}): {' | '.join(tail)}"
            )
        child = json.loads(line[len(_MARK) :])
        out["spawn_to_exit_ms"].append(wall)
        for k in keys[1:]:
            out[k].append(child[k])
    out["repeats"] = repeats
    out["median_ms"] = {k: float(np.median(out[k])) for k in keys}
    return out


def _child(payload: str) -> None:
    t0 = time.perf_counter_ns()
    import engine
    from engine.bench.configs import parse_input

    t1 = time.perf_counter_ns()
    args = json.loads(payload)
    session = engine.load(args["bundle"], **args["load_kwargs"])
    t2 = time.perf_counter_ns()
    x, _ = parse_input(args["input"], in_channels=session.spec.in_channels)
    if isinstance(x, list):  # a cine: the first frame
        x = x[0]
    t3 = time.perf_counter_ns()
    session.run(x)
    t4 = time.perf_counter_ns()
    session.close()
    print(
        _MARK
        + json.dumps(
            {
                "import_ms": (t1 - t0) / 1e6,
                "load_ms": (t2 - t1) / 1e6,
                "first_result_ms": (t4 - t3) / 1e6,
                "import_to_first_result_ms": ((t4 - t0) - (t3 - t2)) / 1e6,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    _child(sys.argv[1])
