"""Atomic file writes and output-directory guards.

Every write goes to a temporary file in the destination directory and is moved into place with
os.replace, so a crash never leaves a half-written file under the final name, and an existing output
is only replaced when the caller passed force=True.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import OutputExists
from tools.errors import UnwritableOutput


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and parents) if needed and prove it is writable; UnwritableOutput otherwise."""
    p = Path(path).expanduser()
    try:
        if p.exists() and not p.is_dir():
            raise UnwritableOutput(f"output path {p} exists and is not a directory")
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=p)
        os.close(fd)
        os.unlink(probe)
    except UnwritableOutput:
        raise
    except OSError as exc:
        raise UnwritableOutput(f"output directory {p} is not writable: {exc.strerror or exc}") from exc
    return p


def refuse_existing(paths: Iterable[str | os.PathLike], force: bool) -> None:
    """OutputExists naming every existing path unless force."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not force:
        raise OutputExists(f"refusing to overwrite existing output(s) {existing}; pass --force / force=True")


def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, force: bool = False) -> Path:
    p = Path(path)
    refuse_existing([p], force)
    ensure_writable_dir(p.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


def write_json_atomic(path: str | os.PathLike, obj: Any, *, force: bool = False) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    return write_bytes_atomic(path, text.encode("utf-8"), force=force)


def write_text_atomic(path: str | os.PathLike, text: str, *, force: bool = False) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"), force=force)


def save_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray], *, force: bool = False) -> Path:
    buf = io.BytesIO()
    # Uncompressed: the images are noisy detector data that barely compress, and loading stays a memcpy.
    np.savez(buf, **arrays)
    return write_bytes_atomic(path, buf.getvalue(), force=force)


def torch_save_atomic(path: str | os.PathLike, obj: Any, *, force: bool = False) -> Path:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_bytes_atomic(path, buf.getvalue(), force=force)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def staging_dir(final: str | os.PathLike) -> Path:
    """A fresh empty sibling directory to build `final` in before publish_dir moves it into place."""
    final = Path(final)
    ensure_writable_dir(final.parent)
    tmp = final.parent / f".{final.name}.staging-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def publish_dir(staged: Path, final: str | os.PathLike, *, force: bool) -> Path:
    """Move a fully written staging directory to `final`. An existing `final` is refused unless force;
    with force it is renamed aside first and deleted only after the new directory is in place."""
    final = Path(final)
    aside = None
    if final.exists():
        if not force:
            shutil.rmtree(staged, ignore_errors=True)
            raise OutputExists(f"refusing to overwrite existing output {final}; pass --force / force=True")
        aside = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, aside)
    try:
        os.replace(staged, final)
    except BaseException:
        if aside is not None:
            os.replace(aside, final)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return final


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
