"""Run configurations interleaved (A B A B ...) and keep every raw sample.

A *configuration* is anything with `name`, `meta`, `items_per_call`, `load()`, `step()` and `close()`
(`Configuration` below). `step()` runs one end-to-end inference and returns its per-stage durations in
ns; the runner times the whole call itself ("total", wall clock around `step()`), so work a
configuration forgets to attribute to a stage still shows up, as "other" = total - sum(stages).

Why interleave: on a shared machine the load changes over seconds. Running all of A then all of B
turns that drift into a fake A/B difference; alternating rounds exposes both to the same drift, and
the per-round ratio (see stats.paired_ratio) cancels most of it.

Cold start = `load()` start to first `step()` end, measured once per configuration in this process
(imports already done by an earlier configuration are not paid again: reports say so).
"""

from __future__ import annotations

import datetime as _dt
import os
import random
import resource
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from engine.bench.stats import paired_ratio, summarize
from engine.bench.timing import TimingPolicy, check_counts, timed_region
from engine.errors import InputError

# Canonical order of the runtime's stages (contract: Result.timings_ms); unknown stages follow.
STAGE_ORDER: tuple[str, ...] = ("decode", "preprocess", "h2d", "infer", "d2h", "postprocess")
TOTAL = "total"
OTHER = "other"  # derived: total - sum(stages), i.e. time no stage accounts for
SCHEDULES = ("round_robin", "shuffled")


@runtime_checkable
class Configuration(Protocol):
    """One thing to benchmark: a bundle on a backend, a baseline pipeline, ..."""

    name: str
    meta: dict[str, Any]
    items_per_call: int

    def load(self) -> None: ...

    def step(self) -> Mapping[str, int]: ...

    def close(self) -> None: ...


class InputCycle:
    """One fixed input, or a sequence handed out in order and cycled."""

    def __init__(self, input: Any = None, inputs: Sequence[Any] | None = None):
        if inputs is not None:
            if input is not None:
                raise InputError("give either input or inputs, not both")
            inputs = list(inputs)
            if not inputs:
                raise InputError("inputs must not be empty")
        self._fixed, self._seq, self._i = input, inputs, 0

    def next(self) -> Any:
        if self._seq is None:
            return self._fixed
        x = self._seq[self._i]
        self._i = (self._i + 1) % len(self._seq)
        return x


class Pipeline:
    """A configuration made of named stages chained output -> input.

    `build()` loads whatever the stages need (a model, a session) and returns
    `[(stage_name, fn), ...]`; it is timed as part of cold start. Each call feeds `input` (or the
    next element of `inputs`, cycling, e.g. the frames of a cine) to the first stage and every
    stage's output to the next; each stage is timed with perf_counter_ns.
    """

    def __init__(
        self,
        name: str,
        build: Callable[[], Sequence[tuple[str, Callable[[Any], Any]]]],
        *,
        input: Any = None,
        inputs: Sequence[Any] | None = None,
        items_per_call: int = 1,
        meta: Mapping[str, Any] | None = None,
        close: Callable[[], None] | None = None,
    ):
        self.name = name
        self.meta = dict(meta or {})
        self.items_per_call = items_per_call
        self.input = input
        self._inputs = InputCycle(input, inputs)
        self._build = build
        self._close = close
        self._stages: list[tuple[str, Callable[[Any], Any]]] | None = None
        self.last_output: Any = None

    def load(self) -> None:
        stages = list(self._build())
        names = [s for s, _ in stages]
        if not stages or len(set(names)) != len(names) or TOTAL in names or OTHER in names:
            raise InputError(
                f"configuration {self.name!r}: stages must be non-empty with unique names other "
                f"than {TOTAL!r}/{OTHER!r}, got {names}"
            )
        self._stages = stages

    def step(self) -> dict[str, int]:
        if self._stages is None:
            raise InputError(f"configuration {self.name!r}: step() before load()")
        clock = time.perf_counter_ns
        x = self._inputs.next()
        out: dict[str, int] = {}
        for stage, fn in self._stages:
            t0 = clock()
            x = fn(x)
            out[stage] = clock() - t0
        self.last_output = x
        return out

    def close(self) -> None:
        self._stages = None
        if self._close is not None:
            self._close()


@dataclass
class ConfigResult:
    """Everything measured for one configuration. Durations in ns (samples) or ms (scalars)."""

    name: str
    meta: dict[str, Any]
    items_per_call: int
    samples_ns: dict[str, np.ndarray]  # "total" first, then stages in canonical order
    load_ms: float
    first_inference_ms: float
    cold_start_ms: float
    first_stages_ms: dict[str, float]
    rss_before_load_mb: float | None
    rss_after_load_mb: float | None
    peak_rss_mb: float | None  # process high-water mark at the end of the run (shared by all configs)
    cold_start_process: dict[str, Any] | None = None  # fresh-process cold start (engine.bench.coldstart)

    @property
    def stages(self) -> list[str]:
        return [k for k in self.samples_ns if k != TOTAL]

    def other_ns(self) -> np.ndarray | None:
        """total - sum(stages) per sample (None when the configuration reports no stages)."""
        st = self.stages
        if not st:
            return None
        return self.samples_ns[TOTAL] - np.sum([self.samples_ns[s] for s in st], axis=0)

    def series_ms(self) -> dict[str, np.ndarray]:
        """total, stages, and (when there are stages) other, in ms."""
        out = {k: v.astype(np.float64) / 1e6 for k, v in self.samples_ns.items()}
        other = self.other_ns()
        if other is not None:
            # Negative only if a configuration's stage intervals overlap (e.g. pipelined async stages);
            # clipped at 0 so the series stays a duration. Raw samples in the JSON keep the truth.
            out[OTHER] = np.maximum(other, 0).astype(np.float64) / 1e6
        return out

    def stats(self) -> dict[str, dict[str, Any]]:
        return {
            k: summarize(v, items_per_sample=self.items_per_call, name=f"{self.name}.{k}")
            for k, v in self.series_ms().items()
        }


@dataclass
class BenchmarkRun:
    configurations: list[ConfigResult]
    settings: dict[str, Any]
    environment: dict[str, Any]
    started_utc: str
    finished_utc: str
    command: list[str] = field(default_factory=list)

    def result(self, name: str) -> ConfigResult:
        for c in self.configurations:
            if c.name == name:
                return c
        raise InputError(f"no configuration named {name!r}; have {[c.name for c in self.configurations]}")

    def comparisons(self, reference: str | None = None) -> list[dict[str, Any]]:
        """Speed-up of every configuration vs `reference` (default: the first) on total latency."""
        if not self.configurations:
            return []
        ref = self.result(reference) if reference else self.configurations[0]
        ref_ms = ref.series_ms()[TOTAL]
        ref_p50 = float(np.median(ref_ms))
        out = []
        for c in self.configurations:
            if c is ref:
                continue
            c_ms = c.series_ms()[TOTAL]
            entry: dict[str, Any] = {
                "name": c.name,
                "reference": ref.name,
                "speedup_p50": ref_p50 / float(np.median(c_ms)),
            }
            if self.settings.get("schedule") in SCHEDULES and c_ms.size == ref_ms.size:
                entry["paired_speedup"] = paired_ratio(ref_ms, c_ms)
            out.append(entry)
        return out


def _rss_mb() -> float | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # psutil is a dependency, but never fail a benchmark over a memory number
        return None


def peak_rss_mb() -> float:
    """Process high-water-mark resident set size in MiB (getrusage: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _check_stages(name: str, stages: Any) -> dict[str, int]:
    if not isinstance(stages, Mapping):
        raise InputError(
            f"configuration {name!r}: step() must return a mapping stage -> ns, got {type(stages).__name__}"
        )
    for k, v in stages.items():
        if k in (TOTAL, OTHER):
            raise InputError(f"configuration {name!r}: stage name {k!r} is reserved (the runner measures it)")
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise InputError(
                f"configuration {name!r}: stage {k!r} duration must be integer ns >= 0, got {v!r}"
            )
    return dict(stages)


def _ordered(keys: Iterable[str]) -> list[str]:
    keys = list(keys)
    return [s for s in STAGE_ORDER if s in keys] + [s for s in keys if s not in STAGE_ORDER]


def run_benchmark(
    configs: Sequence[Configuration],
    *,
    n: int = 1000,
    warmup: int = 50,
    policy: TimingPolicy = TimingPolicy(),
    schedule: str = "round_robin",
    seed: int = 0,
    extra_settings: Mapping[str, Any] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    environment: Mapping[str, Any] | None = None,
) -> BenchmarkRun:
    """Load each configuration (timing cold start), warm all up interleaved, then time `n` interleaved rounds.

    Round i runs every configuration once, in order (A B A B ...; `schedule="shuffled"` draws a
    fresh seeded order per round instead). Every configuration is closed on exit, also on error.
    `progress(phase, done, total)` is called between rounds (outside any sample).
    """
    check_counts(n, warmup)
    configs = list(configs)
    if not configs:
        raise InputError("nothing to benchmark: give at least one configuration")
    for c in configs:
        if not isinstance(c, Configuration):
            raise InputError(
                f"{c!r} is not a Configuration (needs name, meta, items_per_call, load, step, close)"
            )
        if (
            isinstance(c.items_per_call, bool)
            or not isinstance(c.items_per_call, int)
            or c.items_per_call < 1
        ):
            raise InputError(f"configuration {c.name!r}: items_per_call must be an integer >= 1")
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise InputError(f"configuration names must be unique, got {names}")
    if schedule not in SCHEDULES:
        raise InputError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if environment is None:
        from engine.envinfo import environment as _env

        environment = _env()
    env = dict(environment)
    env["loadavg_before"] = _loadavg()
    started = _utc_now()
    clock = time.perf_counter_ns
    k = len(configs)
    loaded: list[Configuration] = []
    cold: dict[str, dict[str, Any]] = {}
    samples: dict[str, dict[str, np.ndarray]] = {}
    try:
        for i, c in enumerate(configs):
            if progress:
                progress("load", i, k)
            rss0 = _rss_mb()
            t0 = clock()
            loaded.append(c)
            c.load()
            t1 = clock()
            first = _check_stages(c.name, c.step())
            t2 = clock()
            cold[c.name] = {
                "load_ms": (t1 - t0) / 1e6,
                "first_inference_ms": (t2 - t1) / 1e6,
                "cold_start_ms": (t2 - t0) / 1e6,
                "first_stages_ms": {s: first[s] / 1e6 for s in _ordered(first)},
                "rss_before_load_mb": rss0,
                "rss_after_load_mb": _rss_mb(),
            }
        for w in range(warmup):
            if progress and w % 10 == 0:
                progress("warmup", w, warmup)
            for c in configs:
                c.step()
        rng = random.Random(seed)
        order = list(range(k))
        stage_keys: list[list[str] | None] = [None] * k
        stage_sets: list[set[str]] = [set() for _ in range(k)]
        for c in configs:
            samples[c.name] = {TOTAL: np.empty(n, dtype=np.int64)}
        with timed_region(policy):
            for r in range(n):
                if schedule == "shuffled":
                    rng.shuffle(order)
                for j in order:
                    c = configs[j]
                    t0 = clock()
                    st = c.step()
                    t1 = clock()
                    buf = samples[c.name]
                    buf[TOTAL][r] = t1 - t0
                    keys = stage_keys[j]
                    if keys is None:
                        keys = stage_keys[j] = _ordered(_check_stages(c.name, st))
                        stage_sets[j] = set(keys)
                        for s in keys:
                            buf[s] = np.empty(n, dtype=np.int64)
                    elif st.keys() != stage_sets[j]:
                        raise InputError(
                            f"configuration {c.name!r}: stages changed between calls: {keys} then {list(st)}"
                        )
                    for s in keys:
                        buf[s][r] = st[s]
                if progress and r % 50 == 0:
                    progress("timed", r, n)
    finally:
        errors = []
        for c in loaded:
            try:
                c.close()
            except Exception as exc:  # close every configuration; report the first failure after
                errors.append(exc)
        if errors and sys.exc_info()[0] is None:
            raise errors[0]
    if progress:
        progress("timed", n, n)
    env["loadavg_after"] = _loadavg()
    peak = peak_rss_mb()
    results = [
        ConfigResult(
            name=c.name,
            meta=dict(c.meta),
            items_per_call=c.items_per_call,
            samples_ns=samples[c.name],
            peak_rss_mb=peak,
            **cold[c.name],
        )
        for c in configs
    ]
    settings = {
        "n": int(n),
        "warmup": int(warmup),
        "schedule": schedule,
        "schedule_seed": seed if schedule == "shuffled" else None,
        "cold_start": "in-process: load() start to first step() end; imports done by an earlier "
        "configuration are not paid again",
        **policy.describe(),
        **dict(extra_settings or {}),
    }
    return BenchmarkRun(
        configurations=results,
        settings=settings,
        environment=env,
        started_utc=started,
        finished_utc=_utc_now(),
        command=list(sys.argv),
    )
