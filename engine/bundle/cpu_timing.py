"""`slicert build` measures what `best` means on this CPU: every gated variant on every available CPU
backend, timed interleaved, the fastest recorded in the manifest.

Each (backend, variant) pair the backend can run is loaded from the bundle exactly as `engine.load`
would (same backend class, same compile settings, compiled-model cache off), fed one seeded random input
(the preprocessing kernel is the same for every backend, so only the inference stage is timed) and timed
in `rounds` rounds of `calls` calls (1 call per round for a model slower than SLOW_MS, so a real-size
network on a 2-core machine costs seconds, not minutes), the pairs interleaved within each round so
machine load hits them alike. The manifest gets:

    cpu_timings   {cpu_model, cpu_flags, threads, rounds, calls, median_ms: {backend: {variant: ms}},
                   fastest: {backend, variant, ms}, not_timed: {backend: why}}
    default_variant.<backend>   the variant with the lowest median for that backend

So `precision="best"` is the fastest variant that passed its gate, measured: an INT8 form slower than
FP32 here is not chosen because it is INT8. `auto` compares the backends' medians only when the loading
CPU has the same model name and flags (engine/backends/cpu_choice.py).
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CPU_BACKENDS = ("openvino", "onnxruntime")
SLOW_MS = 50.0


def _feed(backend, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for arr in backend._inputs.values():
        if np.issubdtype(arr.dtype, np.floating):
            arr[...] = rng.standard_normal(arr.shape).astype(arr.dtype)
        else:
            info = np.iinfo(arr.dtype)
            arr[...] = rng.integers(info.min, info.max, size=arr.shape, dtype=arr.dtype)


def measure(bundle, *, threads: int = 1, rounds: int = 5, calls: int = 3) -> dict[str, Any]:
    """The cpu_timings record for an open bundle (see the module docstring)."""
    from engine.backends import backend_class
    from engine.backends.cpu_choice import gate_ok, timing_flags
    from engine.envinfo import cpu_model

    loaded: dict[tuple[str, str], Any] = {}
    per_round: dict[tuple[str, str], int] = {}
    not_timed: dict[str, str] = {}
    try:
        for name in CPU_BACKENDS:
            cls = backend_class(name)
            ok, why = cls.availability()
            if not ok:
                not_timed[name] = why
                continue
            for v, entry in bundle.variants.items():
                if not gate_ok(entry, name) or not cls.runs_variant(bundle, v) or not cls.supports(bundle, v)[0]:
                    continue
                b = cls(bundle, variant=v, threads=threads, max_batch=1,
                        options={"compile_cache": False, "use_optimized": True})
                b.activate()
                _feed(b)
                b.infer(1)
                t0 = time.perf_counter_ns()
                b.infer(1)
                per_round[(name, v)] = calls if (time.perf_counter_ns() - t0) / 1e6 < SLOW_MS else 1
                loaded[(name, v)] = b
        samples: dict[tuple[str, str], list[float]] = {k: [] for k in loaded}
        for _ in range(rounds):
            for key, b in loaded.items():
                for _ in range(per_round[key]):
                    t0 = time.perf_counter_ns()
                    b.infer(1)
                    samples[key].append((time.perf_counter_ns() - t0) / 1e6)
    finally:
        for b in loaded.values():
            b.deactivate()
    median_ms: dict[str, dict[str, float]] = {}
    for (name, v), ts in samples.items():
        median_ms.setdefault(name, {})[v] = round(statistics.median(ts), 4)
    fastest = None
    if samples:
        (name, v) = min(samples, key=lambda k: median_ms[k[0]][k[1]])
        fastest = {"backend": name, "variant": v, "ms": median_ms[name][v]}
    return {"cpu_model": cpu_model(), "cpu_flags": timing_flags(), "threads": threads, "rounds": rounds,
            "calls": min((len(ts) for ts in samples.values()), default=0), "median_ms": median_ms,
            "fastest": fastest, "not_timed": not_timed,
            "what": "inference stage (Backend.infer) at batch 1 on one seeded random input; the preprocessing "
                    "kernel is the same for every backend"}


def measure_into(manifest: dict[str, Any], members: dict[str, Any], *, threads: int = 1, rounds: int = 5,
                 calls: int = 3) -> dict[str, Any]:
    """Time the bundle-to-be (written to a temporary file first) and record cpu_timings and the measured
    default_variant per CPU backend in `manifest` (in place). Returns the cpu_timings record."""
    from engine.bundle.reader import open_bundle
    from engine.bundle.writer import write_bundle

    with tempfile.TemporaryDirectory(prefix="slicert-timing-") as tmp:
        path = write_bundle(Path(tmp) / "timing.slicert", manifest, members)
        with open_bundle(path) as bundle:
            record = measure(bundle, threads=threads, rounds=rounds, calls=calls)
    manifest["cpu_timings"] = record
    defaults = dict(manifest.get("default_variant") or {})
    for name, per_variant in record["median_ms"].items():
        defaults[name] = min(per_variant, key=per_variant.get)
    manifest["default_variant"] = defaults
    return record
