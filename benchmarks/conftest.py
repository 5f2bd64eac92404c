"""pytest-benchmark suites: `python -m pytest benchmarks --benchmark-only` (files are named bench_*.py).

Never a CI gate on time: CI may smoke-run them with `--benchmark-disable` (each benchmark body runs once).
Results are saved as JSON under .benchmarks/ (autosave) unless --benchmark-json is given.
Suite-specific fixtures live in each suite's own module.
"""

from __future__ import annotations

import pytest


def pytest_collect_file(file_path, parent):
    # pyproject's python_files is the default test_*.py; benchmark files are bench_*.py by house style.
    # Files named explicitly on the command line are collected by pytest itself already.
    if (
        file_path.suffix == ".py"
        and file_path.name.startswith("bench_")
        and not parent.session.isinitpath(file_path)
    ):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    opt = config.option
    if (
        hasattr(opt, "benchmark_autosave")
        and not getattr(opt, "benchmark_disable", False)
        and not getattr(opt, "benchmark_json", None)
        and not getattr(opt, "collectonly", False)
    ):
        opt.benchmark_autosave = True
    # pyproject turns warnings into errors; "nothing to save" (every benchmark skipped or deselected) is
    # not an error of the code under test.
    config.addinivalue_line(
        "filterwarnings", "ignore:Not saving anything:pytest_benchmark.logger.PytestBenchmarkWarning"
    )
