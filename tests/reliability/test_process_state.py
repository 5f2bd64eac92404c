"""SliceRT runs inside someone else's process (a scanner's application): loading, running and
closing a session must not change process state its host relies on.

Found by the fuzz tests: after engine.load, hypothesis could no longer draw subnormal floats, because
the calling thread had flush-to-zero / denormals-are-zero set (ONNX Runtime's
`session.set_denormal_as_zero`, applied to the thread that creates the session).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest


@pytest.fixture
def bundle(corpus_dir):
    from tests.corpus import bundle_files

    return corpus_dir / bundle_files.VALID_CLASSIFIER


_SCENARIO = """
import numpy as np, engine
from tests.reliability import fpenv
states = {"before load": fpenv.subnormals_work()}
s = engine.load(BUNDLE)
states["after load"] = fpenv.subnormals_work()
s.run(np.random.default_rng(0).integers(0, 4096, (64, 64)).astype(np.uint16))
states["after run"] = fpenv.subnormals_work()
s.close()
states["after close"] = fpenv.subnormals_work()
print(states)
"""


def test_load_run_close_keep_the_callers_floating_point_environment(bundle):
    """In a fresh process (what ONNX Runtime does depends on whether it created its environment
    already): the thread that loads and runs a session keeps computing with subnormals."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = f"BUNDLE = {str(bundle)!r}\n" + _SCENARIO
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    states = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    assert states["before load"], "control: subnormals must work in a fresh process"
    changed = [k for k, ok in states.items() if not ok]
    assert not changed, (f"the calling thread flushes subnormals to zero {', '.join(changed)} (FTZ/DAZ left set "
                         f"in MXCSR): every later float computation of the host on this thread changes")


def test_steady_state_calls_keep_numpy_error_state_and_warning_filters(bundle):
    import engine
    from engine import dicom
    from tests.corpus import dicom_files

    def round_trip() -> None:
        with engine.load(bundle) as s:
            s.run(str(dicom_files.parent_path(dicom_files.CT)))
            s.run(np.zeros((16, 16), np.float32))
            with pytest.raises(engine.errors.InputError):
                s.run(np.full((16, 16), np.nan, np.float32))
        dicom.read(dicom_files.parent_path(dicom_files.MF))

    round_trip()  # first use imports ONNX Runtime, pydicom plugins...: their import-time filters are theirs
    err_before = np.geterr()
    filters_before = list(warnings.filters)
    round_trip()
    assert np.geterr() == err_before
    assert list(warnings.filters) == filters_before
