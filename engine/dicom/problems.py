"""Error construction for the DICOM reader: every message names the source and the attribute.

A device maker debugging a rejected file needs three things: which file, which attribute
(keyword and tag, so it can be found in any DICOM dump), and what is wrong with it.
"""
from __future__ import annotations

from engine.errors import DicomError


def attribute(keyword: str) -> str:
    """'Rows' -> 'Rows (0028,0010)'; unknown keywords are returned unchanged."""
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    if tag is None:
        return keyword
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def fail(source: str, keyword: str, problem: str, cls: type[DicomError] = DicomError) -> DicomError:
    """Build (not raise) a DicomError whose message reads '<source>: <Attribute (gggg,eeee)>: <problem>'."""
    return cls(f"{source}: {attribute(keyword)}: {problem}")
