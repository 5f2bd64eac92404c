"""Latency benchmarking users can trust: interleaved configurations, raw samples kept, stated timing policy.

`run_benchmark(configs)` -> `BenchmarkRun`; `report.write_json/write_markdown/write_plot/render_table`.
The JSON schema is documented in engine/bench/SCHEMA.md.
"""

from __future__ import annotations

from engine.bench.runner import BenchmarkRun, ConfigResult, Configuration, Pipeline, run_benchmark
from engine.bench.stats import paired_ratio, summarize
from engine.bench.timing import TimingPolicy, time_callable

__all__ = [
    "BenchmarkRun",
    "ConfigResult",
    "Configuration",
    "Pipeline",
    "run_benchmark",
    "summarize",
    "paired_ratio",
    "TimingPolicy",
    "time_callable",
]
