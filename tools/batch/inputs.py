"""Which files a batch runs: a folder (recursive), a list file, or a glob; always in a fixed order."""
from __future__ import annotations

import glob
import os
from pathlib import Path

from engine.errors import InputError

# Files that are certainly not DICOM images are not rows: they are counted in the summary instead.
_NOT_DICOM_SUFFIXES = {".txt", ".csv", ".json", ".md", ".xml", ".html", ".png", ".jpg", ".jpeg", ".nii", ".gz",
                       ".npy", ".npz", ".parquet", ".py", ".zip", ".tsv", ".log"}
_LIST_SUFFIXES = {".txt", ".lst", ".list"}


def resolve_inputs(spec: str | os.PathLike[str]) -> tuple[Path, list[Path], list[Path]]:
    """(root, files, skipped) for INPUT `spec`.

    A directory: every regular file below it, except hidden ones and those whose suffix says they are
    not DICOM (`skipped`). A file ending in .txt/.lst/.list: one path per line (relative to the list's
    folder; blank lines and '#' comments ignored). Anything with * ? [ in it: a recursive glob.
    Any other file: that one file. `root` is what reported file names are relative to.
    """
    text = os.fspath(spec)
    if "\x00" in text:
        raise InputError("batch INPUT contains a NUL byte")
    path = Path(text)
    if path.is_dir():
        root = path.resolve()
        files, skipped = [], []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                p = Path(dirpath) / name
                if name.startswith(".") or not p.is_file():
                    continue
                (skipped if p.suffix.lower() in _NOT_DICOM_SUFFIXES else files).append(p)
        return root, files, skipped
    if any(c in text for c in "*?["):
        files = sorted(Path(p).resolve() for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise InputError(f"batch INPUT glob {text!r} matches no file")
        return Path(os.path.commonpath([str(f.parent) for f in files])), files, []
    if path.is_file() and path.suffix.lower() in _LIST_SUFFIXES:
        base = path.resolve().parent
        files = []
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            p = Path(line) if Path(line).is_absolute() else base / line
            if not p.is_file():
                raise InputError(f"batch list {path.name} line {n}: {line!r} is not a file")
            files.append(p.resolve())
        if not files:
            raise InputError(f"batch list {path.name} names no file")
        return base, files, []
    if path.is_file():
        return path.resolve().parent, [path.resolve()], []
    raise InputError(f"batch INPUT {text!r} is not a folder, a list file, a glob or a file")
