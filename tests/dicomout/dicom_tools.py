"""Independent validation of what SliceRT writes: dciodvfy (dicom3tools) must report zero errors and
dcmdump (dcmtk) must read the file without a complaint. Warnings are returned so tests can list them."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

TOOLS = ("dciodvfy", "dcmdump")


def missing_tools(names=TOOLS) -> list[str]:
    return [t for t in names if shutil.which(t) is None]


def validate(path: Path | str) -> list[str]:
    """Run dciodvfy and dcmdump on `path`; fail on any error, return dciodvfy's warnings.
    Skips (with the reason) only when the binaries are not installed (apt: dicom3tools, dcmtk)."""
    missing = missing_tools()
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install dicom3tools dcmtk)")
    v = subprocess.run(["dciodvfy", str(path)], check=False, capture_output=True, text=True, timeout=60)
    lines = (v.stdout + v.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith(("Error", "Abort"))]
    assert not errors, f"dciodvfy found {len(errors)} error(s) in {path}:\n" + "\n".join(errors)
    d = subprocess.run(["dcmdump", str(path)], check=False, capture_output=True, text=True, timeout=60)
    assert d.returncode == 0 and not d.stderr.strip(), f"dcmdump complained about {path}: rc {d.returncode}\n{d.stderr}"
    assert "(7fe0,0010)" in d.stdout or "(0040,a730)" in d.stdout, f"dcmdump shows no content in {path}"
    return [ln for ln in lines if ln.startswith("Warning")]


def save(ds, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def dcmtk(name: str) -> str:
    """Path of dcmtk's `name` (storescu, echoscu): the compiled binary, not pynetdicom's Python script of
    the same name that a virtual environment may put first on PATH."""
    import os

    for d in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]:
        p = Path(d) / name
        try:
            with open(p, "rb") as fh:
                if fh.read(4) == b"\x7fELF":
                    return str(p)
        except OSError:
            continue
    pytest.skip(f"dcmtk's {name} is not installed (apt-get install dcmtk)")
