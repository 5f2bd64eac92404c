"""Record pydicom's warnings as notes instead of letting them reach the caller's warning filters.

pydicom reports damaged values with warnings.warn; under a caller's "error" filter (pytest, strict
services) that would turn a readable file into an exception from deep inside pydicom, so reads would
behave differently depending on who calls them. warnings.catch_warnings swaps process-global state
and is not thread-safe before Python 3.14: two threads interleaving enter/exit would leave the global
filters or showwarning hook replaced for the whole process. A re-entrant lock makes the swaps
strictly nested. Cost: pydicom parsing and decoding in SliceRT run one thread at a time.
"""
from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_LOCK = threading.RLock()


@contextmanager
def pydicom_warnings(into: list[str]) -> Iterator[None]:
    with _LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            into.extend(str(w.message) for w in caught)
