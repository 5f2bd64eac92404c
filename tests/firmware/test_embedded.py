"""Embedded mode: examples/embedded builds with CMake against this Python (python3-embed), loads a bundle
once, runs frames from a C buffer through Session.run_into without copying, and its results equal
session.run on the same pixels (the example checks that itself and exits 3 when they differ)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.firmware.fwutil import ROOT


@pytest.fixture(scope="session")
def embed_exe(tmp_path_factory):
    if shutil.which("cmake") is None:
        pytest.fail("cmake is needed to build examples/embedded")
    build = tmp_path_factory.mktemp("embed_build")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    cfg = subprocess.run(
        [
            "cmake",
            "-S",
            str(ROOT / "examples" / "embedded"),
            "-B",
            str(build),
            *gen,
            f"-DPython_EXECUTABLE={sys.executable}",
            "-DCMAKE_BUILD_TYPE=Release",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    bld = subprocess.run(
        ["cmake", "--build", str(build)], capture_output=True, text=True, timeout=600, check=False
    )
    assert bld.returncode == 0, bld.stdout + bld.stderr
    return build / "slicert_embed"


def _run(exe, *args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", SLICERT_PYTHON=sys.executable)
    return subprocess.run(
        [str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


@pytest.mark.parametrize("key", ["cls", "seg"])
def test_embedded_example_runs_frames_from_a_c_buffer(embed_exe, fw_bundles, key):
    proc = _run(embed_exe, fw_bundles[key], 64, 80, 300, "fp32")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert out["match"] is True
    assert out["task"] == ("classification" if key == "cls" else "segmentation")
    assert out["frames"] == 300
    assert out["init_ms"] > 0 and out["import_ms"] > 0 and out["load_ms"] > 0
    assert 0 < out["c_call_us_p50"] <= out["c_call_us_p99"]
    assert out["py_call_us_p50"] > 0


def test_embedded_example_reports_a_bad_bundle_and_exits_cleanly(embed_exe, tmp_path):
    bad = tmp_path / "not-a-bundle.slicert"
    bad.write_bytes(b"\0" * 64)
    proc = _run(embed_exe, bad, 64, 64, 100)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # an exit status, not a signal
    assert "start-up: load bundle failed" in proc.stderr and "BundleError" in proc.stderr
