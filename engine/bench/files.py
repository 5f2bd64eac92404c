"""Result files are written atomically and never replace an existing file unless forced.

Outputs are checked *before* a benchmark starts (a 10-minute run must not end in "directory does not
exist"), and written as temp file in the same directory + link/rename, so a reader never sees half a
file and a crash never leaves a truncated report behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from engine.errors import InputError, OutputExists


def check_output_path(path: str | os.PathLike[str], *, force: bool, what: str = "output") -> Path:
    """Raise OutputExists / InputError now if `path` could not be written later."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{what} {p} is a directory; give a file path")
    if p.exists() and not force:
        raise OutputExists(f"{what} {p} already exists; pass --force (force=True) to overwrite it")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot write {what} {p}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {what} {p}: directory {parent} is not writable")
    return p


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[IO[bytes]], None], *, force: bool, what: str = "output"
) -> Path:
    """Call `write(fh)` on a temp file next to `path`, fsync, then publish it as `path`.

    Without `force` the publish is `os.link`, which fails if `path` appeared meanwhile (no clobbering
    even under a race); with `force` it is `os.replace`.
    """
    p = check_output_path(path, force=force, what=what)
    try:
        fd, tmp = tempfile.mkstemp(
            dir=p.parent if str(p.parent) else ".", prefix=f".{p.name}.", suffix=".tmp"
        )
    except OSError as exc:
        raise InputError(f"cannot write {what} {p}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        if force:
            os.replace(tmp, p)
        else:
            try:
                os.link(tmp, p)
            except FileExistsError:
                raise OutputExists(
                    f"{what} {p} already exists; pass --force (force=True) to overwrite it"
                ) from None
            except OSError:
                # File systems without hard links: re-check, then rename (small race accepted).
                if p.exists():
                    raise OutputExists(
                        f"{what} {p} already exists; pass --force (force=True) to overwrite it"
                    ) from None
                os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p


def atomic_write_text(path: str | os.PathLike[str], text: str, *, force: bool, what: str = "output") -> Path:
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")), force=force, what=what)
