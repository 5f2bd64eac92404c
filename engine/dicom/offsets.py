"""Basic and Extended Offset Tables of encapsulated Pixel Data (PS3.5 A.4, PS3.3 C.7.6.3.1.8), checked
against the fragments they point into before anything trusts them.

pydicom (and so its decoders) locate frame i by the table alone: an all-zero Basic Offset Table makes
every frame frame 0, swapped entries swap frames, an offset into the middle of a fragment decodes
garbage or, worse, another valid frame. A table is usable only when it has one entry per frame, starts
at the first fragment (BOT), increases strictly, and every entry is the start of a fragment item (and,
for the Extended table, its length that fragment's length). A table that fails is dropped with a note
and the frames are found by walking the fragments, as when no table is written.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

_ITEM = b"\xfe\xff\x00\xe0"
_SEQ_END = b"\xfe\xff\xdd\xe0"


@dataclass(frozen=True)
class Fragments:
    basic_offsets: tuple[int, ...]  # Basic Offset Table entries (empty when the table is empty)
    items: tuple[tuple[int, int], ...]  # (offset of the item tag from the first fragment item, length)


def fragments(pixel_data: bytes) -> Fragments | None:
    """The offset table and fragment items of an encapsulated Pixel Data value, or None when it does
    not start with an item (the decoder then reports it)."""
    data = memoryview(pixel_data)
    n = len(data)
    if n < 8 or bytes(data[:4]) != _ITEM:
        return None
    bot_length = struct.unpack_from("<I", data, 4)[0]
    if 8 + bot_length > n or bot_length % 4:
        return None
    basic = struct.unpack_from(f"<{bot_length // 4}I", data, 8) if bot_length else ()
    base = pos = 8 + bot_length
    items: list[tuple[int, int]] = []
    while pos + 8 <= n:
        tag = bytes(data[pos:pos + 4])
        if tag != _ITEM:
            break  # the Sequence Delimitation Item, or damage the decoder reports
        length = struct.unpack_from("<I", data, pos + 4)[0]
        items.append((pos - base, length))
        pos += 8 + length
    return Fragments(tuple(basic), tuple(items))


def basic_table_problem(frag: Fragments, frames: int) -> str | None:
    """Why the Basic Offset Table cannot be used, or None (also when it is empty)."""
    offsets = frag.basic_offsets
    if not offsets:
        return None
    if len(offsets) != frames:
        return f"has {len(offsets)} entries for NumberOfFrames {frames}"
    if offsets[0] != 0:
        return f"first entry is {offsets[0]}, must be 0 (PS3.5 A.4)"
    bad = _first_bad(offsets, {o for o, _ in frag.items})
    return bad


def extended_table_problem(frag: Fragments, frames: int, offsets: tuple[int, ...],
                           lengths: tuple[int, ...]) -> str | None:
    """Why the Extended Offset Table (with its Lengths) cannot be used, or None."""
    if len(offsets) != frames or len(lengths) != frames:
        return (f"has {len(offsets)} offsets and {len(lengths)} lengths for NumberOfFrames {frames} "
                f"(PS3.3 C.7.6.3.1.8)")
    sizes = dict(frag.items)
    bad = _first_bad(offsets, set(sizes))
    if bad:
        return bad
    for i, (offset, length) in enumerate(zip(offsets, lengths)):
        # one fragment per frame; the length excludes the fragment's trailing pad byte, if any
        if length not in (sizes[offset], sizes[offset] - 1):
            return f"length {i} is {length} but the fragment at offset {offset} holds {sizes[offset]} bytes"
    return None


def _first_bad(offsets: tuple[int, ...], starts: set[int]) -> str | None:
    for i in range(1, len(offsets)):
        if offsets[i] <= offsets[i - 1]:
            return f"entries {i - 1} and {i} ({offsets[i - 1]}, {offsets[i]}) do not increase"
    for i, offset in enumerate(offsets):
        if offset not in starts:
            return f"entry {i} ({offset}) is not the start of a fragment"
    return None


def without_basic_table(pixel_data: bytes) -> bytes:
    """The same value with an empty Basic Offset Table item (one copy of the value)."""
    bot_length = struct.unpack_from("<I", pixel_data, 4)[0]
    return _ITEM + bytes(4) + bytes(memoryview(pixel_data)[8 + bot_length:])


def decode_view(ds: Any, pixel_keyword: str, pixel_data: bytes | None, drop_extended: bool) -> Any:
    """A Dataset with the same elements as `ds` (shared, never converted: raw elements stay raw), Pixel
    Data replaced by `pixel_data` when given and the Extended Offset Table left out when asked: what
    the pydicom decoder reads in place of the file's untrustworthy tables. `ds` is not modified."""
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset
    from pydicom.tag import Tag

    out = Dataset()
    skip = {0x7FE00001, 0x7FE00002} if drop_extended else set()
    pixel_tag = Tag(pixel_keyword)
    for tag in ds.keys():  # noqa: SIM118 - tags only: iterating a Dataset converts every element
        if tag in skip:
            continue
        if tag == pixel_tag and pixel_data is not None:
            old = ds[tag]
            out[tag] = DataElement(tag, old.VR, pixel_data, is_undefined_length=True)
            continue
        out[tag] = ds.get_item(tag)
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta
    return out
