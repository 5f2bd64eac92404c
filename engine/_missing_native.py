"""Why `engine._native` could not be imported, in words a user can act on.

The compiled extension lives only in a built install (a wheel, or the editable install's build
folder). The usual way to lose it: `pip install .` (not editable) and then `import engine` from the
repository root, where the source tree's `engine/` comes first on `sys.path` and shadows the installed
package, which is the one that holds the extension.
"""
from __future__ import annotations

import importlib.metadata
import os


def _installed_engine_dir() -> str | None:
    """The `engine/` folder of an installed `slicert` distribution that holds `_native`, if any."""
    try:
        dist = importlib.metadata.distribution("slicert")
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        parts = f.parts
        if len(parts) == 2 and parts[0] == "engine" and parts[1].startswith("_native"):
            return os.path.dirname(os.path.abspath(str(dist.locate_file(f))))
    return None


def explain(init_file: str) -> str:
    """The message for an ImportError raised by `engine/__init__.py` at `init_file`."""
    here = os.path.dirname(os.path.abspath(init_file))
    installed = _installed_engine_dir()
    if installed and os.path.realpath(installed) != os.path.realpath(here):
        return (f"SliceRT's compiled extension engine._native is not in {here}: Python imported the source "
                f"tree there instead of the installed package in {installed}, which holds it (the current "
                f"directory or PYTHONPATH puts the checkout first). Run from outside the checkout, or install "
                f"in editable mode from it: python -m pip install -e .")
    return (f"SliceRT's compiled extension engine._native is not built for the package in {here}. "
            f"Install SliceRT so that it is compiled: python -m pip install -e . from the checkout "
            f"(needs a C++17 compiler; nvcc is used when present).")
