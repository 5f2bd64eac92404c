"""DICOM ingestion: `read(src)` -> `Slice` or lazy `FrameSequence`, and `Slice.spec_for(model_spec)`.

pydicom is imported only when `read` runs, so importing engine.dicom stays cheap.

    from engine import dicom
    s = dicom.read("chest.dcm")                 # Slice: s.pixels, s.windows, s.pixel_spacing_mm ...
    spec = s.spec_for(model_spec)               # modality LUT, VOI, MONOCHROME1 inversion filled in
    for frame in dicom.read("echo.dcm"):        # FrameSequence: one frame decoded at a time
        ...
"""
from __future__ import annotations

from typing import Any

from engine.dicom.header import DEFAULT_PIXEL_LIMIT
from engine.dicom.lut import LookupTable, ModalityLUT, Window
from engine.dicom.slice import FrameSequence, ImageInfo, Slice
from engine.dicom.spacing import UltrasoundRegion


def read(src: Any, *, pixel_limit: int = DEFAULT_PIXEL_LIMIT) -> Slice | FrameSequence:
    """Read a DICOM image from a path, bytes, a binary file-like object or a pydicom Dataset.

    Returns a `Slice` (single frame, pixels decoded) or a `FrameSequence` (multi-frame, decoded on
    access). Raises `DicomError`, `UnsupportedTransferSyntax` or `PixelLimitExceeded` naming the
    source and the offending attribute. `pixel_limit` caps Rows x Columns x NumberOfFrames.
    """
    from engine.dicom.reader import read as _read

    return _read(src, pixel_limit=pixel_limit)


__all__ = [
    "DEFAULT_PIXEL_LIMIT",
    "FrameSequence",
    "ImageInfo",
    "LookupTable",
    "ModalityLUT",
    "Slice",
    "UltrasoundRegion",
    "Window",
    "read",
]
