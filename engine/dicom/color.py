"""Colour decoding: YBR_FULL(_422) -> RGB and PALETTE COLOR expansion (PS3.3 C.7.6.3.1.2, C.7.6.3.1.5,
C.7.9).

YBR_FULL -> RGB uses the full-range ITU-T T.871 equations that PS3.3 C.7.6.3.1.2 specifies, computed
with integer lookup tables: R and B depend on one chroma channel each, G on both, so three tables
(256, 256 and 65536 entries) give the exact result of round(Y + f(Cb, Cr)) with one gather per
channel instead of a floating-point 3x3 matrix product per pixel.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from engine.dicom.problems import fail
from engine.dicom.values import get_floats, raw

# ITU-T T.871 / PS3.3 C.7.6.3.1.2 YCbCr (full range) -> RGB, with d = chroma - 128:
#   R = Y + 1.402 dCr
#   G = Y - (0.114 * 1.772 / 0.587) dCb - (0.299 * 1.402 / 0.587) dCr
#   B = Y + 1.772 dCb
# Written over the common denominator 587000 the offsets are exact rationals, so the tables are
# computed with integer floor division: round-half-up is exact even at ties (x.5), where a float
# evaluation can land on either side.
_DEN = 587 * 1000


@lru_cache(maxsize=1)
def _ybr_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = np.arange(256, dtype=np.int64) - 128
    r = ((1402 * d + 500) // 1000).astype(np.int16)
    b = ((1772 * d + 500) // 1000).astype(np.int16)
    g_num = -(114 * 1772 * d[:, None] + 299 * 1402 * d[None, :])  # [cb, cr], over _DEN
    g = ((g_num + _DEN // 2) // _DEN).astype(np.int16).ravel()
    for t in (r, g, b):
        t.setflags(write=False)
    return r, g, b


def ybr_full_to_rgb(ybr: np.ndarray, *, block_rows: int = 64) -> np.ndarray:
    """(..., H, W, 3) uint8 YBR_FULL -> new C-contiguous uint8 RGB of the same shape."""
    if ybr.dtype != np.uint8 or ybr.ndim < 3 or ybr.shape[-1] != 3:
        raise ValueError(f"ybr_full_to_rgb needs (..., H, W, 3) uint8, got {ybr.shape} {ybr.dtype}")
    r_off, g_off, b_off = _ybr_tables()
    out = np.empty(ybr.shape, dtype=np.uint8)
    src2 = ybr.reshape(-1, ybr.shape[-2], 3)  # (rows of all leading dims, W, 3); a view when possible
    dst2 = out.reshape(src2.shape)
    width = src2.shape[1]
    # Work in blocks of rows that stay in cache: ~15 NumPy passes per block instead of over the image.
    y = np.empty((block_rows, width), dtype=np.int16)
    tmp = np.empty((block_rows, width), dtype=np.int16)
    idx = np.empty((block_rows, width), dtype=np.uint16)
    for r0 in range(0, src2.shape[0], block_rows):
        src = src2[r0:r0 + block_rows]
        dst = dst2[r0:r0 + block_rows]
        k = src.shape[0]
        yy, t, ix = y[:k], tmp[:k], idx[:k]
        cb, cr = src[..., 1], src[..., 2]
        np.copyto(yy, src[..., 0], casting="unsafe")
        np.take(r_off, cr, out=t)
        t += yy
        np.clip(t, 0, 255, out=t)
        dst[..., 0] = t
        np.take(b_off, cb, out=t)
        t += yy
        np.clip(t, 0, 255, out=t)
        dst[..., 2] = t
        np.copyto(ix, cb, casting="unsafe")
        ix <<= 8
        ix |= cr
        np.take(g_off, ix, out=t)
        t += yy
        np.clip(t, 0, 255, out=t)
        dst[..., 1] = t
    return out


class Palette:
    """A PALETTE COLOR lookup (PS3.3 C.7.6.3.1.5-6, C.7.9): index -> RGB, entries in [0, 2**bits - 1]."""

    def __init__(self, rgb: np.ndarray, first_mapped: int, bits: int):
        self.rgb = np.ascontiguousarray(rgb)  # (entries, 3), uint8 or uint16
        self.rgb.setflags(write=False)
        self.first_mapped = first_mapped
        self.bits = bits

    def apply(self, index: np.ndarray) -> np.ndarray:
        """(H, W) stored indices -> new (H, W, 3) RGB. Indices outside the table clamp to its ends."""
        n = self.rgb.shape[0]
        if self.first_mapped == 0 and index.dtype == np.uint8 and n >= 256:
            return np.take(self.rgb, index, axis=0)
        if self.first_mapped == 0 and index.dtype == np.uint16 and n >= 65536:
            return np.take(self.rgb, index, axis=0)
        shifted = index.astype(np.int32) - self.first_mapped
        np.clip(shifted, 0, n - 1, out=shifted)
        return np.take(self.rgb, shifted, axis=0)


def read_palette(ds: Any, source: str, little_endian: bool, signed: bool) -> Palette:
    channels = []
    descriptors = []
    for colour in ("Red", "Green", "Blue"):
        kw_desc = f"{colour}PaletteColorLookupTableDescriptor"
        desc = get_floats(ds, kw_desc, source)
        if desc is None or len(desc) != 3:
            raise fail(source, kw_desc, f"PALETTE COLOR needs a 3-value descriptor, got {desc!r}")
        n, first, bits = (int(v) for v in desc)
        n = n or 65536  # C.7.6.3.1.5: 0 means 2^16 entries
        if signed and first >= 32768:
            first -= 65536  # descriptor value 2 is SS for signed pixel data, often written as US
        if bits not in (8, 16):
            raise fail(source, kw_desc, f"bits per entry must be 8 or 16 (PS3.3 C.7.6.3.1.5), got {bits}")
        descriptors.append((n, first, bits))
        plain = raw(ds, f"{colour}PaletteColorLookupTableData", source)
        segmented = raw(ds, f"Segmented{colour}PaletteColorLookupTableData", source)
        if plain is not None:
            channels.append(_plain(plain, n, bits, little_endian, source, f"{colour}PaletteColorLookupTableData"))
        elif segmented is not None:
            kw = f"Segmented{colour}PaletteColorLookupTableData"
            channels.append(_segmented(segmented, n, bits, little_endian, source, kw))
        else:
            raise fail(source, f"{colour}PaletteColorLookupTableData",
                       "missing (neither the table nor its segmented form is present)")
    if len({d for d in descriptors}) != 1:
        raise fail(source, "GreenPaletteColorLookupTableDescriptor",
                   f"red/green/blue descriptors differ: {descriptors} (PS3.3 C.7.6.3.1.5)")
    n, first, bits = descriptors[0]
    rgb = np.stack(channels, axis=1)
    if bits == 8 and rgb.max() > 255:
        bits = 16  # 8-bit descriptor over 16-bit data: trust the data rather than clip the colours
    return Palette(rgb.astype(np.uint8 if bits == 8 else np.uint16), first, bits)


def _plain(data: Any, n: int, bits: int, little: bool, source: str, keyword: str) -> np.ndarray:
    if not isinstance(data, (bytes, bytearray)):
        values = np.asarray(list(data) if hasattr(data, "__len__") else [data], dtype=np.int64)
    elif len(data) >= 2 * n:
        values = np.frombuffer(data, dtype="<u2" if little else ">u2")[:n]
    elif bits == 8 and len(data) >= n:
        # C.7.6.3.1.6: 8-bit entries may be packed, one byte each.
        values = np.frombuffer(data, dtype=np.uint8)[:n]
    else:
        raise fail(source, keyword, f"holds {len(data)} bytes, descriptor needs {n} entries")
    if values.size < n:
        raise fail(source, keyword, f"holds {values.size} entries, descriptor needs {n}")
    return values[:n].astype(np.uint16)


def _segmented(data: Any, n: int, bits: int, little: bool, source: str, keyword: str) -> np.ndarray:
    # C.7.9.2: segment opcodes, lengths and values are all entries of the LUT's own size: 8-bit
    # units for 8-bit LUTs, 16-bit words for 16-bit LUTs.
    unit = 1 if bits == 8 else 2
    if isinstance(data, (bytes, bytearray)):
        dtype = np.uint8 if unit == 1 else ("<u2" if little else ">u2")
        units = np.frombuffer(data[: len(data) // unit * unit], dtype=dtype).astype(np.int64)
    else:
        units = np.asarray(list(data), dtype=np.int64)
    try:
        table = _expand_segments(units, n, unit, little, budget=_Budget(n, len(units)))
    except (IndexError, ValueError) as exc:
        raise fail(source, keyword, f"invalid segmented LUT (PS3.3 C.7.9.2): {exc}") from exc
    if table.size < n:
        raise fail(source, keyword, f"expands to {table.size} entries, descriptor needs {n}")
    return table[:n].astype(np.uint16)


class _Budget:
    """Work bound for one segmented LUT. Indirect segments (C.7.9.2.3) replay earlier segments, and a
    replayed segment may itself be indirect: nesting depth alone does not bound the work, since k
    indirect segments that each replay k others expand k^depth times (1.3 KB of data took > 20 s).
    A valid LUT expands to its descriptor's entry count, so the entries produced by all segments,
    nested ones included, are bounded by twice that (the top-level loop stops at 2n; one linear or
    discrete segment may overshoot it by at most 65535 entries), and the segments visited by a small
    multiple of the data's own length plus the entries."""

    def __init__(self, n_entries: int, n_units: int):
        self.entries = 2 * n_entries + 65536
        self.segments = 4 * (n_units + n_entries) + 64

    def spend(self, entries: int) -> None:
        self.segments -= 1
        self.entries -= entries
        if self.segments < 0:
            raise ValueError("indirect segments replay too many segments (fan-out beyond what the LUT's "
                             "size allows)")
        if self.entries < 0:
            raise ValueError("segments expand to more entries than twice the descriptor's entry count")


def _expand_segments(units: np.ndarray, n_entries: int, unit: int, little: bool, max_segments: int | None = None,
                     previous: float | None = None, depth: int = 0, *, budget: _Budget) -> np.ndarray:
    """PS3.3 C.7.9.2 segment opcodes: 0 discrete, 1 linear, 2 indirect."""
    if depth > 8:
        raise ValueError("indirect segments nest too deeply")
    out: list[np.ndarray] = []
    size = 0
    pos = 0
    segments = 0
    last = previous
    offset_units = 4 if unit == 1 else 2  # the 32-bit byte offset of an indirect segment
    while pos + 1 < len(units) and size < n_entries * 2:
        opcode, length = int(units[pos]), int(units[pos + 1])
        pos += 2
        if opcode == 0:  # C.7.9.2.1 discrete: `length` literal values
            budget.spend(length)  # before the slice: the length is what the data claims
            seg = units[pos:pos + length]
            if seg.size != length:
                raise ValueError(f"discrete segment at entry {pos - 2} runs past the data")
            pos += length
        elif opcode == 1:  # C.7.9.2.2 linear: from the previous value to y1 over `length` entries
            if last is None:
                raise ValueError("a linear segment cannot come first")
            if pos >= len(units):
                raise ValueError("linear segment runs past the data")
            budget.spend(length)  # before linspace allocates `length` entries
            y1 = float(units[pos])
            pos += 1
            # Same interpolation and rounding as pydicom (and DCMTK): y0 excluded, y1 included.
            step = (y1 - last) / max(length, 1)
            seg = np.around(np.linspace(last + step, y1, length)).astype(np.int64)
        elif opcode == 2:  # C.7.9.2.3 indirect: replay `length` segments starting at a byte offset
            if last is None:
                raise ValueError("an indirect segment cannot come first")
            raw_offset = units[pos:pos + offset_units]
            if raw_offset.size != offset_units:
                raise ValueError("indirect segment runs past the data")
            pos += offset_units
            if unit == 1:
                byte_offset = int.from_bytes(bytes(int(v) for v in raw_offset), "little" if little else "big")
            else:
                byte_offset = int(raw_offset[1]) << 16 | int(raw_offset[0])  # least significant word first
            budget.spend(0)
            seg = _expand_segments(units[byte_offset // unit:], n_entries, unit, little, length, last, depth + 1,
                                   budget=budget)
        else:
            raise ValueError(f"unknown segment opcode {opcode} at entry {pos - 2}")
        if seg.size:
            out.append(seg)
            size += seg.size
            last = float(seg[-1])
        segments += 1
        if max_segments is not None and segments == max_segments:
            break
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
