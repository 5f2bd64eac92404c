"""Fixtures for the firmware tests: the C client driver compiled with the system C compiler (warnings as
errors; also with AddressSanitizer + UBSan), tiny bundles from tests/runtime/tiny_models.py, and real
worker processes (`slicert worker`, standalone or --supervise) on a fresh shared-memory segment."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from tests.firmware.fwutil import ROOT, WorkerProcess, compile_driver

sys.path.insert(0, str(ROOT / "tests" / "runtime"))

import tiny_models


@pytest.fixture(scope="session")
def driver(tmp_path_factory) -> Path:
    return compile_driver(tmp_path_factory.mktemp("cbuild") / "client_driver", sanitize=False)


@pytest.fixture(scope="session")
def asan_driver(tmp_path_factory) -> Path:
    return compile_driver(tmp_path_factory.mktemp("cbuild_asan") / "client_driver_asan", sanitize=True)


@pytest.fixture(scope="session")
def fw_bundles(tmp_path_factory) -> dict[str, Path]:
    return tiny_models.cpu_bundles(tmp_path_factory.mktemp("fw_models"))


@pytest.fixture
def start_worker():
    started: list[WorkerProcess] = []

    def start(bundle, **kw) -> WorkerProcess:
        w = WorkerProcess(bundle, **kw)
        started.append(w)
        return w

    yield start
    for w in started:
        pid = w.worker_pid if w.seg is not None else None
        if pid:
            try:
                os.kill(pid, signal.SIGCONT)  # a test that stopped it must not leave it stopped
            except ProcessLookupError:
                pass
        w.stop()
