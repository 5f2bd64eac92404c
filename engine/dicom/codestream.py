"""Image size declared inside a compressed frame, read before decoding it.

Decoders allocate what the codestream declares, not what Rows/Columns say. A damaged or hostile
frame can declare 60000 x 60000 pixels and make the decoder allocate gigabytes before failing, so
SliceRT reads the size from the frame header (JPEG SOFn, JPEG-LS SOF55, JPEG 2000 SIZ, found by
walking the JP2 boxes when the frame is a JP2 file: a box of any size may come before the codestream)
and refuses a frame whose size or component count differs from the header without decoding it, or
whose size it cannot find. RLE frames carry no size: their decoder writes exactly Rows x Columns.

It also checks that a JPEG-family frame is complete before decoding it: libjpeg decodes a stream cut
short without an error and fills the missing rows with whatever it has, so a truncated frame would
become a silently wrong image.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

# JPEG start-of-frame markers (ITU-T T.81 B.1.1.3): C0-C3, C5-C7, C9-CB, CD-CF; JPEG-LS SOF55 (T.87).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_SOC_SIZ = b"\xff\x4f\xff\x51"  # J2K start of codestream + image and tile size (15444-1 A.4.1, A.5.1)
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"  # the JP2 signature box (15444-1 I.5.1)
_STANDALONE = {0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8}
# Transfer syntaxes whose frame codestream must end with FF D9: EOI in JPEG (T.81 B.2.1) and JPEG-LS
# (T.87), EOC in JPEG 2000 / HTJ2K (15444-1 A.3.4; 15444-15).
_END_MARKER_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93",
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",
})


@dataclass(frozen=True)
class SizeStatement:
    """One place where a compressed frame states its image size."""

    rows: int
    columns: int
    components: int
    where: str  # e.g. "JPEG SOF", "JPEG 2000 SIZ in the JP2 'jp2c' box"


def declared_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) the codestream declares, or None when it cannot be read from the header."""
    found = size_statements(frame)
    return (found[-1].rows, found[-1].columns) if found else None


def size_statements(frame: bytes) -> list[SizeStatement]:
    """Every statement of the image size in the frame's headers, read without decoding: the JPEG /
    JPEG-LS frame header, or the JPEG 2000 SIZ marker segment (at the start of a raw codestream, or
    inside the JP2 'jp2c' box, with the JP2 'ihdr' box as well). Empty when none is found. Raises
    ValueError for a JP2 box structure that cannot be walked (a decoder would guess)."""
    if frame[:2] == b"\xff\xd8":
        size = _jpeg(frame)
        return [] if size is None else [SizeStatement(*size, "JPEG frame header (SOF)")]
    if frame[:4] == _SOC_SIZ:
        size = _j2k(frame, 4)
        return [] if size is None else [SizeStatement(*size, "JPEG 2000 SIZ")]
    if frame[:12] == _JP2_SIGNATURE:
        return _jp2(frame)
    if frame[:4] == _JP2_SIGNATURE[8:]:  # openjpeg takes these 4 bytes alone for a JP2 file
        raise ValueError("JP2 data without its signature box (15444-1 I.5.1)")
    return []


def _jpeg(frame: bytes) -> tuple[int, int, int] | None:
    pos = 2
    n = len(frame)
    while pos + 4 <= n:
        if frame[pos] != 0xFF:
            return None
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        length = struct.unpack_from(">H", frame, pos + 2)[0]
        if marker in _SOF:
            if pos + 10 > n:
                return None
            rows, cols, components = struct.unpack_from(">HHB", frame, pos + 5)
            return (rows, cols, components) if rows else None  # rows 0: defined later by a DNL marker
        if marker == 0xDA:  # start of scan before any frame header
            return None
        pos += 2 + length
    return None


def _j2k(frame: bytes, pos: int) -> tuple[int, int, int] | None:
    # ISO/IEC 15444-1 A.5.1: Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz, Csiz.
    if pos + 38 > len(frame):
        return None
    _lsiz, _rsiz, xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">HHIIII", frame, pos)
    components = struct.unpack_from(">H", frame, pos + 36)[0]
    if xsiz <= xosiz or ysiz <= yosiz:
        return (0, 0, components)
    return (ysiz - yosiz, xsiz - xosiz, components)


def _jp2(frame: bytes) -> list[SizeStatement]:
    """ISO/IEC 15444-1 Annex I: walk the top-level boxes to the contiguous codestream box ('jp2c'),
    reading the image header box ('ihdr', inside the 'jp2h' superbox) on the way. A box of any size
    may precede the codestream, so no fixed search window is safe."""
    found: list[SizeStatement] = []
    for box, start, end in _boxes(frame, 0, len(frame)):
        if box == b"jp2h":
            for sub, s0, s1 in _boxes(frame, start, end):
                if sub == b"ihdr" and s1 - s0 >= 10:
                    height, width, components = struct.unpack_from(">IIH", frame, s0)
                    found.append(SizeStatement(height, width, components, "JP2 image header box (ihdr)"))
        elif box == b"jp2c":
            if frame[start:start + 4] != _SOC_SIZ:
                raise ValueError("the JP2 'jp2c' box does not start with the SOC and SIZ markers")
            size = _j2k(frame, start + 4)
            if size is None:
                raise ValueError("the SIZ marker segment in the JP2 'jp2c' box is cut short")
            found.append(SizeStatement(*size, "JPEG 2000 SIZ in the JP2 'jp2c' box"))
            return found
    raise ValueError("a JP2 file without a contiguous codestream box ('jp2c')")


def _boxes(data: bytes, pos: int, end: int):
    """(type, content start, content end) of each box in data[pos:end] (15444-1 I.4)."""
    while pos + 8 <= end:
        length, box = struct.unpack_from(">I4s", data, pos)
        header = 8
        if length == 1:  # XLBox: 64-bit length follows
            if pos + 16 > end:
                raise ValueError("a JP2 box's extended length is cut short")
            length = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif length == 0:  # the last box: runs to the end of the data
            length = end - pos
        if length < header or pos + length > end:
            raise ValueError(f"JP2 box {box!r} at byte {pos} declares {length} bytes, "
                             f"{end - pos} remain")
        yield box, pos + header, pos + length
        pos += length


def needs_end_marker(transfer_syntax_uid: str) -> bool:
    """True for the JPEG, JPEG-LS and JPEG 2000 syntaxes, whose codestreams end with FF D9."""
    return transfer_syntax_uid in _END_MARKER_SYNTAXES


def has_end_marker(frame: bytes) -> bool:
    """True when the codestream ends with FF D9, ignoring trailing padding.

    PS3.5 A.4: fragments have even length, so an odd-length codestream gets one trailing pad byte;
    the standard says 0x00, but real encoders (e.g. the JPEG and JPEG 2000 files shipped with
    pydicom-data) pad with 0xFF, a JPEG fill byte. Neither byte can end a complete stream, so both
    are stripped before looking for the marker. Entropy-coded data cannot contain FF D9 (T.81 B.1.1.5
    byte stuffing; 15444-1 bit stuffing keeps packet bytes after FF below 0x90), so a stream cut short
    does not end with it by chance.
    """
    return bytes(frame).rstrip(b"\x00\xff").endswith(b"\xff\xd9")
