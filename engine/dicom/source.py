"""Turn a path, bytes, file-like object or pydicom Dataset into a parsed Dataset, refusing non-DICOM
and truncated input with a DicomError that names the source.

pydicom is lenient by design: it reads a truncated file without complaint (the last element just
comes back short, or an encapsulated Pixel Data element silently disappears) and, with force=True,
"parses" any byte string. SliceRT must refuse those inputs instead of producing a wrong image, so
the checks here look at what pydicom read, not only whether it raised.
"""
from __future__ import annotations

import io
import os
from typing import Any

from engine.dicom.capture import pydicom_warnings
from engine.dicom.problems import fail
from engine.errors import DicomError, InputError

# Tags a raw (no preamble, no File Meta) data set starts with in practice: group 0x0008 (Identifying)
# or, rarely, a stray File Meta group 0x0002. Seeing one of these lets us retry with force=True without
# accepting arbitrary bytes as DICOM.
_RAW_STARTS = (b"\x08\x00", b"\x00\x08", b"\x02\x00", b"\x00\x02")


def describe(src: Any) -> str:
    """A short, human-readable name for an input, used in every error message."""
    from pydicom.dataset import Dataset

    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    if isinstance(src, Dataset):
        name = getattr(src, "filename", None)
        return name if isinstance(name, str) and name else "<pydicom Dataset>"
    name = getattr(src, "name", None)
    return name if isinstance(name, str) and name else f"<{type(src).__name__}>"


def load(src: Any, pixel_limit: int | None = None) -> tuple[Any, str, list[str]]:
    """Return (dataset, source name, warnings pydicom emitted while parsing).

    A Dataset is used as is (never modified). Paths, bytes and file-like objects are parsed with
    pydicom.dcmread after a walk of their element headers (engine.dicom.prescan: declared lengths
    against the file size, bounded inflation of the Deflated syntax, using `pixel_limit`); OSError
    from opening a path propagates unchanged.
    """
    from pydicom.dataset import Dataset

    name = describe(src)
    if isinstance(src, Dataset):
        _check_not_truncated(src, name)
        return src, name, []
    if isinstance(src, (bytes, bytearray, memoryview)):
        fp: Any = io.BytesIO(bytes(src))
        return _parse(fp, name, pixel_limit)
    if isinstance(src, (str, os.PathLike)):
        with open(src, "rb") as fp:
            return _parse(fp, name, pixel_limit)
    if hasattr(src, "read") and hasattr(src, "seek"):
        return _parse(src, name, pixel_limit)
    raise InputError(f"engine.dicom.read: expected a path, bytes, a binary file-like object or a "
                     f"pydicom Dataset, got {type(src).__name__}")


def _parse(fp: Any, name: str, pixel_limit: int | None) -> tuple[Any, str, list[str]]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    start = fp.tell()
    head = fp.read(132)
    fp.seek(start)
    if not head:
        raise fail(name, "PixelData", "empty input: not a DICOM file")
    messages: list[str] = []
    inflated = _prescan(fp, start, name, pixel_limit)
    with pydicom_warnings(messages):
        try:
            try:
                ds = pydicom.dcmread(fp) if inflated is None else _deflated_dataset(*inflated, name)
            except InvalidDicomError:
                # PS3.10 7.1: a DICOM file starts with a 128-byte preamble and 'DICM'. Some older
                # writers omit both; accept those only if the bytes start like a real data set.
                if head[:2] not in _RAW_STARTS:
                    raise DicomError(f"{name}: not a DICOM file: no 'DICM' prefix at byte 128 "
                                     f"(PS3.10 7.1) and the data does not start with a DICOM element") from None
                fp.seek(start)
                ds = pydicom.dcmread(fp, force=True)
        except DicomError:
            raise
        except Exception as exc:  # pydicom raises many types for malformed input; report them all as DICOM
            stopped_at = _tell(fp)
            end = _stream_end(fp)
            # pydicom reports running out of bytes as EOFError, or as OSError("No tag to read ...") when
            # the file ends between elements; either way the stream was read to its end.
            if end is not None and (isinstance(exc, EOFError) or (stopped_at is not None and stopped_at >= end)):
                raise DicomError(f"{name}: file is truncated (ends at byte {end - start}; "
                                 f"{type(exc).__name__}: {exc})") from exc
            raise DicomError(f"{name}: cannot be parsed as DICOM ({type(exc).__name__}: {exc})") from exc
    for msg in messages:
        # pydicom drops an undefined-length element (encapsulated Pixel Data) that hits end-of-file.
        if "End of file reached before delimiter" in msg:
            raise fail(name, "PixelData", f"file is truncated: {msg}")
    _check_not_truncated(ds, name)
    return ds, name, messages


def _prescan(fp: Any, start: int, name: str, pixel_limit: int | None) -> tuple[bytes, bytes] | None:
    """Walk the element headers (engine.dicom.prescan) over a zero-copy view of the stream: an mmap
    of a real file, the buffer of a BytesIO, else the bytes read once. Returns (File Meta group bytes,
    inflated data set) for the Deflated syntax, None otherwise; the stream is left at `start`."""
    import mmap

    from engine.dicom import header, prescan

    limit = header.DEFAULT_PIXEL_LIMIT if pixel_limit is None else pixel_limit
    mapped = None
    base: Any = None
    offset = start  # of the stream's start within `base`
    try:
        if isinstance(fp, io.BytesIO):
            base = fp.getbuffer()
        else:
            try:
                mapped = mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ)
                base = memoryview(mapped)
            except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
                fp.seek(start)
                base, offset = memoryview(fp.read()), 0
        with base[offset:] as view:
            size = len(view)
            meta = prescan.file_meta_end(view, size)
            if meta is not None and meta[1] == prescan.DEFLATED:
                return bytes(view[132:meta[0]]), prescan.inflate_bounded(view, meta[0], size, name, limit)
            prescan.check_lengths(view, size, name)
            return None
    finally:
        if base is not None:
            base.release()
        if mapped is not None:
            mapped.close()
        fp.seek(start)


def _deflated_dataset(meta: bytes, inflated: bytes, name: str) -> Any:
    """A FileDataset from the File Meta group and the data set prescan inflated (PS3.5 A.5), so
    pydicom never inflates the unbounded original itself."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.filereader import read_dataset

    from engine.dicom import prescan

    prescan.check_dataset(inflated, 0, len(inflated), False, True, name)
    ds = pydicom.dcmread(io.BytesIO(inflated), force=True)
    ds.file_meta = FileMetaDataset(read_dataset(io.BytesIO(meta), is_implicit_VR=False, is_little_endian=True))
    return ds


def _tell(fp: Any) -> int | None:
    try:
        return int(fp.tell())
    except (OSError, ValueError):
        return None


def _stream_end(fp: Any) -> int | None:
    """Size of a seekable stream in bytes (its end position), or None when it cannot be found."""
    try:
        return int(fp.seek(0, os.SEEK_END))
    except (OSError, ValueError):
        return None


def _check_not_truncated(ds: Any, name: str) -> None:
    """pydicom keeps reading when the file ends inside an element value: the value comes back shorter
    than its declared length. Only the last element read can be affected, so check that one (and,
    if it is a sequence, the last element of its last item)."""
    from pydicom.dataelem import RawDataElement

    current = ds
    while current is not None and len(current._dict):
        last_tag = max(current._dict)
        elem = current._dict[last_tag]
        if isinstance(elem, RawDataElement):
            declared = elem.length
            actual = 0 if elem.value is None else len(elem.value)
            if declared != 0xFFFFFFFF and elem.value is not None and actual < declared:
                keyword = _keyword(last_tag)
                raise fail(name, keyword, f"file is truncated: element declares {declared} bytes, "
                                          f"only {actual} present")
            return
        value = elem.value
        if elem.VR == "SQ" and value:
            current = value[-1]
        else:
            return


def _keyword(tag: int) -> str:
    from pydicom.datadict import keyword_for_tag

    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
