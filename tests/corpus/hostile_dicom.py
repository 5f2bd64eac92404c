"""DICOM cases for the root causes of issue 13 (an independent attack corpus): resource bombs, the
Enhanced multi-frame functional groups, offset tables, absurd spacing, windows that vanish in float32,
float pixel data, HighBit, and valid padding that used to be refused.

Like dicom_files.py, every input is derived from a real pydicom / pydicom-data file or built with
pydicom's own writer; each root cause gets several variants (sizes, parents, placements) so that a
fix for one parameter value does not pass by accident.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.corpus.case import ACCEPTED, Case
from tests.corpus.dicom_files import _raw, _read, _write, parent_path


def _cases_padding(add: Callable) -> None:
    """Trailing zero padding shorter than one frame is valid (pydicom reads it); anything else is not."""
    add("padding/MR_small_padded/as-is", parent_path("MR_small_padded.dcm").read_bytes(), "session.run", ACCEPTED,
        "", "MR_small_padded.dcm: 128 bytes of zero padding after the pixels (pydicom decodes it as MR_small)")
    for parent, name, pad, expect, why in (
            ("CT_small.dcm", "zeros-2", b"\0" * 2, ACCEPTED, "2 zero bytes of padding"),
            ("CT_small.dcm", "zeros-1000", b"\0" * 1000, ACCEPTED, "1000 zero bytes of padding"),
            ("emri_small.dcm", "zeros-512", b"\0" * 512, ACCEPTED, "512 zero bytes after 10 frames"),
            ("CT_small.dcm", "zeros-whole-frame", b"\0" * 32768, "DicomError", "a whole frame of zeros past the frames"),
            ("CT_small.dcm", "one-nonzero-in-1000", b"\0" * 998 + b"\x01\0", "DicomError",
             "1000 bytes past the frames, one non-zero"),
            ("MR_small.dcm", "data-512", bytes(range(256)) * 2, "DicomError", "512 non-zero bytes past the frames")):
        ds = _read(parent)
        ds.PixelData = ds.PixelData + pad
        entry = "session.stream" if parent.startswith("emri") else "session.run"
        add(f"padding/{parent[:-4]}/{name}", _write(ds), entry,
            expect, "" if expect == ACCEPTED else r"PixelData.*inconsistent", f"{parent}: {why}")


GROUPS: tuple[Callable, ...] = (_cases_padding,)


def generate(out: Path) -> list[Case]:
    """Write every issue-13 DICOM case under out/dicom13/ and return the cases."""
    from pydicom import config

    folder = out / "dicom13"
    folder.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    forms = ("path", "bytes", "fileobj")

    def add(case_id: str, data: bytes, entry: str, expect: str, match: str, why: str, **kwargs) -> None:
        rel = f"dicom13/{case_id.replace('/', '__')}.dcm"
        (out / rel).write_bytes(data)
        form = kwargs.pop("form", forms[len(cases) % len(forms)])
        cases.append(Case(id=f"dicom13/{case_id}", group="dicom", entry=entry, expect=expect, match=match, why=why,
                          file=rel, kwargs={"form": form, **kwargs}))

    saved = (config.settings.reading_validation_mode, config.settings.writing_validation_mode)
    config.settings.reading_validation_mode = config.settings.writing_validation_mode = config.IGNORE
    try:
        for group in GROUPS:
            group(add)
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = saved
    return cases
