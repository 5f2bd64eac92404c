"""Walk a DICOM file's element headers before pydicom parses it: declared lengths against the bytes
that exist, and a bounded inflation of the Deflated transfer syntax.

pydicom trusts a declared value length: an element declaring 4 GiB makes it ask the stream for 4 GiB
(a buffered file allocates that much before finding the file ends), and the Deflated Explicit VR Little
Endian syntax (PS3.5 A.5) is inflated in one `zlib.decompress` call before a single header value is
looked at: a 3 MB file can inflate to gigabytes. This module reads only element headers (tag, VR,
length; PS3.5 7.1), skipping values, so it costs O(number of elements) and no copy of the file:

* `check_lengths` refuses any element, sequence item or fragment whose declared length runs past the
  end of its container (the file, or the enclosing sequence/item), naming it;
* `inflate_bounded` inflates a deflated data set in chunks, walking the headers as they appear, and
  stops at the Pixel Data header to compute what the rest may hold from Rows x Columns x frames x
  samples x BitsAllocated (after the pixel limit): inflation beyond that is refused.

Anything the walk cannot follow (an unknown VR, garbage) ends the walk silently: pydicom then reports
it with its own, more specific message. The walk raises only for what it can prove.
"""
from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from engine.dicom.problems import fail
from engine.errors import DicomError, PixelLimitExceeded

DEFLATED = "1.2.840.10008.1.2.1.99"
# PS3.5 7.1.2: VRs with a 2-byte reserved field and a 4-byte length in explicit VR.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # Pixel Data, Float, Double Float
_GEOMETRY = {0x00280002: "SamplesPerPixel", 0x00280008: "NumberOfFrames", 0x00280010: "Rows",
             0x00280011: "Columns", 0x00280100: "BitsAllocated"}
MAX_DEPTH = 64  # sequences nested deeper than this are refused (real objects nest < 10 levels)

# Inflation bounds for the Deflated syntax: everything before Pixel Data (the header: sequences,
# icons, private data) and everything after it (padding, signatures) must each fit in these.
MAX_INFLATED_HEADER = 64 << 20
MAX_INFLATED_TRAILER = 1 << 20
_CHUNK = 1 << 20


class _NeedMore(Exception):
    """The walk reached the end of a partially inflated buffer."""


@dataclass
class _Walk:
    data: Any  # bytes / memoryview / mmap: indexable, sliceable
    implicit: bool
    little: bool
    source: str
    partial: bool = False  # True: running out of data means "inflate more", not "truncated"
    geometry: dict[str, int] = field(default_factory=dict)
    resume: int = 0  # top level: the position after the last element walked completely

    def at_end(self, end: int) -> bool:
        """True when `end` is the end of a partially inflated buffer (more may follow)."""
        return self.partial and end == len(self.data)

    def u16(self, pos: int) -> int:
        return struct.unpack_from("<H" if self.little else ">H", self.data, pos)[0]

    def u32(self, pos: int) -> int:
        return struct.unpack_from("<I" if self.little else ">I", self.data, pos)[0]


def file_meta_end(data: Any, size: int) -> tuple[int, str] | None:
    """(offset after the File Meta group, Transfer Syntax UID) of a file with preamble and 'DICM',
    or None when the group cannot be walked (pydicom then decides). Group 0002 is always explicit VR
    little endian (PS3.10 7.1)."""
    if size < 132 or bytes(data[128:132]) != b"DICM":
        return None
    pos, ts = 132, None
    while pos + 8 <= size:
        group, elem = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = bytes(data[pos + 4:pos + 6])
        if vr in _LONG_VRS:
            if pos + 12 > size:
                return None
            length, start = struct.unpack_from("<I", data, pos + 8)[0], pos + 12
        elif vr.isalpha() and vr.isupper():
            length, start = struct.unpack_from("<H", data, pos + 6)[0], pos + 8
        else:
            return None
        if length == _UNDEFINED or start + length > size:
            return None
        if elem == 0x0010:
            ts = bytes(data[start:start + length]).rstrip(b"\0 ").decode("ascii", "replace")
        pos = start + length
    return (pos, ts) if ts else None


def check_lengths(data: Any, size: int, source: str) -> None:
    """Refuse (DicomError) an element whose declared length runs past the bytes that exist. Only
    files with a File Meta group and a known transfer syntax are walked."""
    meta = file_meta_end(data, size)
    if meta is None:
        if size >= 8 and bytes(data[:2]) == b"\x08\x00":
            # no preamble/File Meta (old ACR-NEMA style, little endian, group 0008 first): explicit VR when
            # the VR field holds two capital letters, as pydicom decides for such files
            vr = bytes(data[4:6])
            check_dataset(data, 0, size, not (vr.isalpha() and vr.isupper()), True, source)
        return
    if meta[1] == DEFLATED:
        return
    encoding = _encoding(meta[1])
    if encoding is not None:
        check_dataset(data, meta[0], size, *encoding, source)


def _encoding(uid: str) -> tuple[bool, bool] | None:
    """(implicit VR, little endian) of the data set under a transfer syntax (PS3.5 10); compressed
    syntaxes encapsulate only Pixel Data, their data set is explicit VR little endian."""
    from pydicom.uid import UID

    ts = UID(uid)
    if not ts.is_transfer_syntax:
        return None
    return bool(ts.is_implicit_VR), bool(ts.is_little_endian)


def check_dataset(data: Any, start: int, end: int, implicit: bool, little: bool, source: str) -> None:
    """check_lengths for a data set in data[start:end] of a known encoding."""
    try:
        _dataset(_Walk(data, implicit, little, source), start, end, 0, top=True)
    except _Stop:
        pass


class _Stop(Exception):
    """The walk cannot follow the data any further (pydicom will report it)."""


def _keyword(tag: int) -> str:
    from pydicom.datadict import keyword_for_tag

    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _overrun(walk: _Walk, tag: int, what: str, length: int, remain: int, container: str, end: int) -> DicomError:
    if walk.at_end(end):
        raise _NeedMore
    return fail(walk.source, _keyword(tag), f"{what} declares {length} bytes but only {max(remain, 0)} remain in "
                                            f"{container}: the file is truncated or the length is corrupt; "
                                            f"refusing to read it")


def _header(walk: _Walk, pos: int, end: int) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None, length, value start) of the element at pos."""
    if pos + 8 > end:
        if walk.at_end(end):
            raise _NeedMore
        raise _Stop
    d = walk.data
    group, elem = walk.u16(pos), walk.u16(pos + 2)
    tag = group << 16 | elem
    if walk.implicit or group == 0xFFFE:
        return tag, None, walk.u32(pos + 4), pos + 8
    vr = bytes(d[pos + 4:pos + 6])
    if vr in _LONG_VRS:
        if pos + 12 > end:
            if walk.at_end(end):
                raise _NeedMore
            raise _Stop
        return tag, vr, walk.u32(pos + 8), pos + 12
    if not (vr.isalpha() and vr.isupper()):
        raise _Stop  # not explicit VR after all (pydicom switches encodings when it sees this)
    return tag, vr, walk.u16(pos + 6), pos + 8


def _dataset(walk: _Walk, pos: int, end: int, depth: int, *, top: bool = False,
             until_item_end: bool = False, stop_at_pixels: bool = False) -> int:
    """Walk the elements in [pos, end); returns the position after the last one (after the Item
    Delimitation Item when until_item_end). stop_at_pixels: return the position of the top-level
    Pixel Data header instead of walking it."""
    while pos < end:
        tag, vr, length, start = _header(walk, pos, end)
        if tag == _ITEM_END and until_item_end:
            return start
        if tag in (_ITEM, _ITEM_END, _SEQ_END):
            raise _Stop  # an item tag where an element belongs: pydicom reports what it makes of it
        if top and stop_at_pixels and tag in _PIXEL_TAGS:
            return pos
        if top and tag in _GEOMETRY and length != _UNDEFINED and start + length <= end:
            _remember(walk, tag, vr, length, start)
        sequence = vr == b"SQ" or (vr is None and _is_sequence(tag, length)) or (vr == b"UN" and length == _UNDEFINED)
        if length == _UNDEFINED:
            if not sequence and tag not in _PIXEL_TAGS:
                raise _Stop
            # an undefined-length UN is a sequence encoded in implicit VR little endian (PS3.5 6.2.2)
            inner = _Walk(walk.data, True, True, walk.source, walk.partial, walk.geometry) if vr == b"UN" else walk
            pos = _items(inner, tag, start, end, depth + 1, fragments=tag in _PIXEL_TAGS)
        else:
            if start + length > end:
                raise _overrun(walk, tag, "element", length, end - start, "the file" if top else "its item", end)
            if sequence:
                _items(walk, tag, start, start + length, depth + 1, fragments=False, defined=True)
            pos = start + length
        if top:
            walk.resume = pos
    return pos


def _items(walk: _Walk, tag: int, pos: int, end: int, depth: int, *, fragments: bool, defined: bool = False) -> int:
    if depth > MAX_DEPTH:
        raise fail(walk.source, _keyword(tag), f"sequences nest deeper than {MAX_DEPTH} levels; refusing to read it")
    while pos < end:
        item, _, length, start = _header(walk, pos, end)
        if item == _SEQ_END and not defined:
            return start
        if item != _ITEM:
            raise _Stop
        if length == _UNDEFINED:
            if fragments:
                raise _Stop
            pos = _dataset(walk, start, end, depth, until_item_end=True)
            continue
        if start + length > end:
            what = "a fragment" if fragments else "an item"
            raise _overrun(walk, tag, what, length, end - start, "the file" if not defined else "its sequence", end)
        if not fragments:
            _dataset(walk, start, start + length, depth)
        pos = start + length
    if not defined:
        if walk.at_end(end):
            raise _NeedMore
        raise _Stop  # no Sequence Delimitation Item before the end: pydicom reports the truncation
    return pos


def _is_sequence(tag: int, length: int) -> bool:
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


def _remember(walk: _Walk, tag: int, vr: bytes | None, length: int, start: int) -> None:
    raw = bytes(walk.data[start:start + length])
    keyword = _GEOMETRY[tag]
    try:
        if keyword == "NumberOfFrames":  # IS: text
            value = int(float(raw.decode("ascii").strip("\0 ") or "1"))
        elif length >= 2:
            value = struct.unpack_from("<H" if walk.little else ">H", raw)[0]
        else:
            return
    except (ValueError, UnicodeDecodeError):
        return  # the header check reports it with the attribute named
    walk.geometry[keyword] = value


def inflate_bounded(data: Any, meta_end: int, size: int, source: str, pixel_limit: int) -> bytes:
    """The inflated data set of a Deflated Explicit VR Little Endian file (PS3.5 A.5), inflated no
    further than its own header allows; DicomError / PixelLimitExceeded otherwise."""
    with memoryview(data)[meta_end:size] as compressed:  # released even when refusing (the caller's buffer)
        return _inflate(compressed, source, pixel_limit)


def _inflate(compressed: memoryview, source: str, pixel_limit: int) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    fed = 0
    walk = _Walk(out, False, True, source, partial=True)
    walked_at = 0  # buffer size at the last walk: walk again only once it has doubled (O(n) in all)
    cap: int | None = None  # total inflated size allowed, once the Pixel Data header is known

    def more(limit: int) -> bool:
        """Inflate up to `limit` more bytes; False at the end of the stream."""
        nonlocal fed
        try:
            if inflater.unconsumed_tail:
                chunk = inflater.decompress(inflater.unconsumed_tail, limit)
            elif fed < len(compressed):
                piece = bytes(compressed[fed:fed + _CHUNK])
                fed += len(piece)
                chunk = inflater.decompress(piece, limit)
            else:
                chunk = inflater.flush()
                if not chunk:
                    return False
        except zlib.error as exc:
            raise fail(source, "TransferSyntaxUID", f"Deflated data set cannot be inflated ({exc})") from exc
        out.extend(chunk)
        return True

    while cap is None:
        if len(out) > MAX_INFLATED_HEADER:
            raise fail(source, "PixelData", f"the Deflated data set inflates beyond {MAX_INFLATED_HEADER >> 20} MiB "
                                            f"before its Pixel Data header; refusing to inflate it further")
        found = None
        if len(out) >= 2 * walked_at:
            walked_at = len(out)
            try:
                found = _dataset(walk, walk.resume, len(out), 0, top=True, stop_at_pixels=True)
            except _NeedMore:
                pass
            except _Stop:
                # headers the walk cannot follow: bound the rest by the header limit; pydicom judges them
                cap = MAX_INFLATED_HEADER
                break
        if found is not None and found + 12 <= len(out) and walk.u16(found) == 0x7FE0:
            cap = found + _pixel_allowance(walk, found, source, pixel_limit) + MAX_INFLATED_TRAILER
            break
        if not more(_CHUNK):
            return bytes(out)  # the whole stream inflated within the header limit
    while len(out) <= cap:
        if not more(cap + 1 - len(out)):
            return bytes(out)
    raise fail(source, "PixelData", f"the Deflated data set inflates beyond {cap} bytes, more than its "
                                    f"Pixel Data header and Rows x Columns x NumberOfFrames x SamplesPerPixel x "
                                    f"BitsAllocated allow (+ {MAX_INFLATED_TRAILER >> 20} MiB of trailing "
                                    f"elements); refusing to inflate it further (deflate bomb?)")


def _pixel_allowance(walk: _Walk, pos: int, source: str, pixel_limit: int) -> int:
    """Bytes from the Pixel Data header to the end of its value that the header allows."""
    tag = walk.u16(pos) << 16 | walk.u16(pos + 2)
    length = walk.u32(pos + 8)
    g = walk.geometry
    missing = [k for k in ("Rows", "Columns") if k not in g]
    if missing:
        raise fail(source, missing[0], "missing before Pixel Data in a Deflated data set: the size of the "
                                       "pixels to inflate is unknown")
    rows, columns = g["Rows"], g["Columns"]
    frames = max(g.get("NumberOfFrames", 1), 1)
    total = rows * columns * frames
    if total > pixel_limit:
        raise fail(source, "Rows", f"{rows} x Columns {columns} x NumberOfFrames {frames} = {total} pixels exceeds "
                                   f"the configured limit of {pixel_limit} (raise pixel_limit= to accept it)",
                   PixelLimitExceeded)
    bits = {0x7FE00008: 32, 0x7FE00009: 64}.get(tag, g.get("BitsAllocated", 64))
    samples = min(max(g.get("SamplesPerPixel", 1), 1), 3)
    frame_bytes = math.ceil(rows * columns * samples * max(bits, 1) / 8)
    needed = frame_bytes * (frames + 1)  # one frame's worth of padding, as frames.py accepts
    if length == _UNDEFINED:
        raise fail(source, "PixelData", "undefined length in a Deflated data set (PS3.5 A.5 is a native syntax)")
    return 12 + min(length, needed)
