"""The timed region: what is switched off or pinned while samples are taken, and the clock used.

Clock: `time.perf_counter_ns` (monotonic, integer ns, no float rounding over long runs).
Garbage collector: a full `gc.collect()` runs before the timed loop and the collector is then disabled,
so a generation-2 collection (several ms with a big heap) cannot land inside one sample and pose as a
latency spike of the code under test. Reports state this; pass `disable_gc=False` to time with the
collector on, which is what a long-running device process sees unless it manages GC itself.
CPU pinning: optional `os.sched_setaffinity` for the timed loop (Linux), restored afterwards.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import InputError

CLOCK = "time.perf_counter_ns"


def clock_resolution_ns() -> float:
    """Resolution of the benchmark clock as reported by the OS, in ns."""
    return time.get_clock_info("perf_counter").resolution * 1e9


@dataclass(frozen=True)
class TimingPolicy:
    """How the timed loop runs. `cpus`: CPU ids to pin to (None = leave affinity alone)."""

    disable_gc: bool = True
    cpus: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.cpus is not None:
            cpus = tuple(self.cpus)
            if not cpus:
                raise InputError(
                    "TimingPolicy.cpus: give at least one CPU id, or None to leave affinity alone"
                )
            if any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0 for c in cpus):
                raise InputError(f"TimingPolicy.cpus: CPU ids must be integers >= 0, got {cpus!r}")
            object.__setattr__(self, "cpus", tuple(sorted({int(c) for c in cpus})))

    def describe(self) -> dict[str, Any]:
        return {
            "clock": CLOCK,
            "clock_resolution_ns": clock_resolution_ns(),
            "gc": (
                "gc.collect() before the timed loop, collector disabled during it"
                if self.disable_gc
                else "collector enabled during the timed loop"
            ),
            "gc_disabled": self.disable_gc,
            "cpu_affinity": list(self.cpus) if self.cpus is not None else None,
        }


def parse_cpus(text: str) -> tuple[int, ...]:
    """'0', '0,1', '0-3' or '0-1,4' -> CPU ids (the `taskset -c` syntax)."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if lo > hi:
                    raise ValueError
                cpus.update(range(lo, hi + 1))
            else:
                cpus.add(int(part))
    except ValueError:
        raise InputError(f"--pin: expected CPU ids like '0', '0,1' or '0-3', got {text!r}") from None
    if not cpus or min(cpus) < 0:
        raise InputError(f"--pin: expected CPU ids >= 0, got {text!r}")
    return tuple(sorted(cpus))


@contextmanager
def _pinned(cpus: Sequence[int] | None) -> Iterator[None]:
    if cpus is None:
        yield
        return
    if not hasattr(os, "sched_setaffinity"):
        raise InputError(
            "CPU pinning needs os.sched_setaffinity (Linux); run without pinning on this platform"
        )
    allowed = os.sched_getaffinity(0)
    missing = sorted(set(cpus) - allowed)
    if missing:
        raise InputError(f"cannot pin to CPU(s) {missing}: this process may use {sorted(allowed)}")
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


@contextmanager
def timed_region(policy: TimingPolicy) -> Iterator[None]:
    """Apply `policy` (GC off, CPU pinning) for the duration of the block and restore the previous state."""
    with _pinned(policy.cpus):
        gc_was_enabled = gc.isenabled()
        if policy.disable_gc:
            gc.collect()
            gc.disable()
        try:
            yield
        finally:
            if policy.disable_gc and gc_was_enabled:
                gc.enable()


def time_callable(
    fn: Callable[[], Any], *, n: int, warmup: int = 0, policy: TimingPolicy = TimingPolicy()
) -> np.ndarray:
    """Call `fn` `warmup` times untimed, then `n` times timed; returns the n durations in ns (int64)."""
    check_counts(n, warmup)
    for _ in range(warmup):
        fn()
    out = np.empty(n, dtype=np.int64)
    clock = time.perf_counter_ns
    with timed_region(policy):
        for i in range(n):
            t0 = clock()
            fn()
            out[i] = clock() - t0
    return out


def check_counts(n: Any, warmup: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n (timed iterations, --n) must be an integer >= 1, got {n!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 0:
        raise InputError(f"warmup (untimed iterations, --warmup) must be an integer >= 0, got {warmup!r}")
