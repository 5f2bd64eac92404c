"""Image size declared inside a compressed frame, read before decoding it.

Decoders allocate what the codestream declares, not what Rows/Columns say. A damaged or hostile
frame can declare 60000 x 60000 pixels and make the decoder allocate gigabytes before failing, so
SliceRT reads the size from the frame header (JPEG SOFn, JPEG-LS SOF55, JPEG 2000 SIZ) and refuses a
frame whose size differs from Rows x Columns without decoding it. RLE frames carry no size: their
decoder writes exactly Rows x Columns.

It also checks that a JPEG-family frame is complete before decoding it: libjpeg decodes a stream cut
short without an error and fills the missing rows with whatever it has, so a truncated frame would
become a silently wrong image.
"""
from __future__ import annotations

import struct

# JPEG start-of-frame markers (ITU-T T.81 B.1.1.3): C0-C3, C5-C7, C9-CB, CD-CF; JPEG-LS SOF55 (T.87).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_STANDALONE = {0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8}
# Transfer syntaxes whose frame codestream must end with FF D9: EOI in JPEG (T.81 B.2.1) and JPEG-LS
# (T.87), EOC in JPEG 2000 / HTJ2K (15444-1 A.3.4; 15444-15).
_END_MARKER_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93",
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",
})


def declared_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) the codestream declares, or None when it cannot be read from the header."""
    if frame[:2] == b"\xff\xd8":
        return _jpeg(frame)
    start = frame.find(b"\xff\x4f\xff\x51", 0, 4096)  # J2K SOC + SIZ (also inside a JP2 'jp2c' box)
    if start >= 0:
        return _j2k(frame, start + 4)
    return None


def _jpeg(frame: bytes) -> tuple[int, int] | None:
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
            if pos + 9 > n:
                return None
            rows, cols = struct.unpack_from(">HH", frame, pos + 5)
            return (rows, cols) if rows else None  # rows 0: defined later by a DNL marker
        if marker == 0xDA:  # start of scan before any frame header
            return None
        pos += 2 + length
    return None


def _j2k(frame: bytes, pos: int) -> tuple[int, int] | None:
    # ISO/IEC 15444-1 A.5.1: Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz.
    if pos + 20 > len(frame):
        return None
    _lsiz, _rsiz, xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">HHIIII", frame, pos)
    if xsiz <= xosiz or ysiz <= yosiz:
        return (0, 0)
    return (ysiz - yosiz, xsiz - xosiz)


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
