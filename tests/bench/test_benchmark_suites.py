"""Smoke check of the pytest-benchmark suites (never a timing gate): the end-to-end suite's bodies run once
each with --benchmark-disable, in a subprocess so its pytest configuration is its own."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_end_to_end_suite_runs_once_per_pipeline():
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/bench_end_to_end.py", "--benchmark-disable", "-q",
         "-p", "no:cacheprovider", "-k", "cxr_nodule and synthetic"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "4 passed" in proc.stdout  # torch teacher, ORT teacher, ORT student, SliceRT
