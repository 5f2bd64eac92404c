"""Cold start in a fresh process: what a scanner pays from launching Python to the first result.

`measure_process_cold_start` spawns `python -m engine.bench.coldstart` (one process per repeat). The
child times, with perf_counter_ns from its first line, `import engine`, `engine.load(...)` and the
first `Session.run`; the parent adds the wall time from spawn to exit (interpreter start-up included).
The OS file cache is warm after the first repeat, as it is on a device that has booted once.

`compiled_cache` ("cold" | "warm" | None) controls OpenVINO's compiled-model cache (engine/backends/
openvino.py keeps it under $SLICERT_CACHE): "cold" gives every repeat a fresh empty cache folder (the
first boot after install: read + compile), "warm" one folder filled by an untimed spawn first (every
later boot: the compiled blob is imported), None the caller's own environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
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
    compiled_cache: str | None = None,
) -> dict[str, Any]:
    """Spawn `repeats` fresh processes; returns per-repeat lists and medians (ms)."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InputError(f"cold-start repeats must be an integer >= 1, got {repeats!r}")
    if compiled_cache not in (None, "cold", "warm"):
        raise InputError(f"compiled_cache must be None, 'cold' or 'warm', got {compiled_cache!r}")
    payload = json.dumps({"bundle": str(bundle), "input": input_text, "load_kwargs": load_kwargs or {}})
    keys = ("spawn_to_exit_ms", "import_ms", "load_ms", "first_result_ms", "import_to_first_result_ms")
    out: dict[str, Any] = {k: [] for k in keys}
    out["cache_hit"], out["backend"] = [], []
    with tempfile.TemporaryDirectory(prefix="slicert-coldstart-") as tmp:
        env = None
        if compiled_cache == "warm":
            env = {**os.environ, "SLICERT_CACHE": str(Path(tmp) / "warm")}
            _spawn(payload, env, timeout_s, bundle)  # untimed: fills the cache
        for i in range(repeats):
            if compiled_cache == "cold":
                env = {**os.environ, "SLICERT_CACHE": str(Path(tmp) / f"cold-{i}")}
            _measure_one(payload, env, timeout_s, bundle, out, keys)
    out["repeats"] = repeats
    out["compiled_cache"] = compiled_cache
    out["median_ms"] = {k: float(np.median(out[k])) for k in keys}
    return out


def _spawn(payload: str, env, timeout_s: float, bundle) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter_ns()
    proc = subprocess.run(
        [sys.executable, "-m", "engine.bench.coldstart", payload],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        env=env,
    )
    wall = (time.perf_counter_ns() - t0) / 1e6
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(_MARK)), None)
    if proc.returncode != 0 or line is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise InputError(f"cold-start process for {bundle} failed (exit {proc.returncode}): {' | '.join(tail)}")
    return wall, json.loads(line[len(_MARK) :])


def _measure_one(payload: str, env, timeout_s: float, bundle, out: dict[str, Any], keys) -> None:
    wall, child = _spawn(payload, env, timeout_s, bundle)
    out["spawn_to_exit_ms"].append(wall)
    for k in keys[1:]:
        out[k].append(child[k])
    out["cache_hit"].append(child.get("cache_hit"))
    out["backend"].append(child.get("backend"))


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
    backend, cache_hit = session.info.get("backend"), session.info.get("cache_hit")
    session.close()
    print(
        _MARK
        + json.dumps(
            {
                "import_ms": (t1 - t0) / 1e6,
                "load_ms": (t2 - t1) / 1e6,
                "first_result_ms": (t4 - t3) / 1e6,
                "import_to_first_result_ms": ((t4 - t0) - (t3 - t2)) / 1e6,
                "backend": backend,
                "cache_hit": cache_hit,  # OpenVINO's compiled-model cache (None on other backends)
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    _child(sys.argv[1])
