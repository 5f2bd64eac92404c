"""The source image a SEG/SR refers to: a pydicom Dataset with the attributes a reference needs.

Accepts what Session.run accepts as DICOM: a path, bytes, a pydicom Dataset, or an engine.dicom
Slice/FrameSequence (their `.dataset`). Pixel Data is not needed: highdicom copies patient, study
and reference attributes from the header and takes the geometry from the Result's mask.
"""
from __future__ import annotations

import io
import os
from typing import Any

from engine.errors import DicomError, InputError

# What every reference to the source needs (PS3.3 C.12.1 SOP Common, C.7.2.1 General Study,
# C.7.3.1 General Series, C.7.6.3 Image Pixel).
REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns")


def _name(src: Any) -> str:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    return f"<{type(src).__name__}>"


def source_dataset(src: Any):
    """-> pydicom Dataset of the source image's header (never modified; the caller's object when given one)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if hasattr(src, "dataset") and hasattr(src, "spec_for"):  # engine.dicom Slice / FrameSequence
        src = src.dataset
    if isinstance(src, pydicom.Dataset):
        ds = src
    elif isinstance(src, (str, os.PathLike, bytes, bytearray, memoryview)):
        try:
            fp = io.BytesIO(bytes(src)) if isinstance(src, (bytes, bytearray, memoryview)) else src
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, KeyError) as exc:
            raise DicomError(f"source {_name(src)}: cannot read its DICOM header ({exc})") from None
    else:
        raise InputError(f"source must be the DICOM the result was computed from (path, bytes, pydicom Dataset or "
                         f"engine.dicom Slice), got {type(src).__name__}")
    missing = [k for k in REQUIRED if not ds.get(k)]
    if missing:
        raise DicomError(f"source {_name(src)}: {', '.join(missing)} missing or empty; a DICOM SEG/SR must reference "
                         f"its source image by these attributes")
    return ds


def number_of_frames(ds) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        raise DicomError(f"source: NumberOfFrames {ds.get('NumberOfFrames')!r} is not an integer") from None


def has_frame_of_reference(ds) -> bool:
    return bool(ds.get("FrameOfReferenceUID"))
