"""DICOM cases for the root causes of issue 13 (an independent attack corpus): resource bombs, the
Enhanced multi-frame functional groups, offset tables, absurd spacing, windows that vanish in float32,
float pixel data, HighBit, and valid padding that used to be refused.

Like dicom_files.py, every input is derived from a real pydicom / pydicom-data file or built with
pydicom's own writer; each root cause gets several variants (sizes, parents, placements) so that a
fix for one parameter value does not pass by accident.
"""
from __future__ import annotations

import struct
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


def segmented_lut_words(fan_out: int, layers: int, leaf: str = "discrete0", bits: int = 16) -> list[int]:
    """A segmented palette LUT (PS3.3 C.7.9.2) in `bits`-bit units: `layers` layers of `fan_out` indirect
    segments, each replaying every segment of the next layer, over leaves that add no entry (a discrete
    or linear segment of length 0, or an indirect segment replaying 0 segments). Expanding it naively
    costs fan_out ** layers segment visits from about 8 * fan_out * layers bytes.

    An indirect segment's byte offset counts from the start of the data being expanded: the whole LUT
    for a top-level segment, the replayed slice for a nested one. Layer 0 is at the top level; a
    discrete segment after it swallows the deeper layers so that the top level does not walk into them."""
    f = fan_out
    unit_bytes = bits // 8

    def offset(units: int) -> list[int]:  # 32-bit byte offset: 2 words LSW first, or 4 bytes little endian
        b = units * unit_bytes
        return [b & 0xFFFF, b >> 16] if bits == 16 else list(b.to_bytes(4, "little"))

    indirect = 2 + len(offset(0))
    leaf_words = {"discrete0": [0, 0], "linear0": [1, 0, 50], "indirect0": [2, 0] + offset(0)}[leaf]
    deeper: list[int] = []
    for _ in range(1, layers):
        deeper += ([2, f] + offset(indirect * f)) * f
    deeper += leaf_words * f
    layer1 = 3 + indirect * f + 2  # after the first discrete, layer 0 and the swallowing segment's header
    if len(deeper) >= 1 << bits:
        raise ValueError("too many words for one discrete segment")
    return [0, 1, 100] + ([2, f] + offset(layer1)) * f + [0, len(deeper)] + deeper


def with_segmented_palette(words_rgb: tuple[list[int], list[int], list[int]], bits: int = 16, entries: int = 256):
    """OBXXXX1A.dcm (PALETTE COLOR, 8-bit indices) with its palette replaced by segmented tables."""
    ds = _read("OBXXXX1A.dcm")
    fmt = "H" if bits == 16 else "B"
    for colour, words in zip(("Red", "Green", "Blue"), words_rgb):
        delattr(ds, f"{colour}PaletteColorLookupTableData")
        _raw(ds, f"{colour}PaletteColorLookupTableDescriptor", "US", struct.pack("<3H", entries % 65536, 0, bits))
        _raw(ds, f"Segmented{colour}PaletteColorLookupTableData", "OW", struct.pack(f"<{len(words)}{fmt}", *words))
    return ds


def _cases_segmented_lut(add: Callable) -> None:
    for bits, top in ((16, 65535), (8, 255)):
        ramp = [0, 1, 0, 1, 255, top]  # a valid LUT: 0, then a linear ramp to the top over 255 entries
        add(f"segmented-lut/valid-ramp-{bits}bit", _write(with_segmented_palette((ramp, ramp, ramp), bits)),
            "session.run", ACCEPTED, "", f"OBXXXX1A with a valid {bits}-bit segmented palette (discrete + linear)")
    ramp16 = [0, 1, 0, 1, 255, 65535]
    nested = [0, 1, 0, 1, 127, 30000, 2, 1, 6, 0, 1, 128, 65535]  # replays the linear segment once, then a ramp
    add("segmented-lut/valid-indirect", _write(with_segmented_palette((nested, ramp16, nested))), "session.run",
        ACCEPTED, "", "OBXXXX1A with a valid segmented palette that uses an indirect segment")
    for fan_out, layers, leaf, bits in ((20, 8, "discrete0", 16), (8, 8, "linear0", 16), (40, 4, "indirect0", 16),
                                        (6, 7, "discrete0", 16), (6, 6, "discrete0", 8), (4, 8, "linear0", 8)):
        words = segmented_lut_words(fan_out, layers, leaf, bits)
        ramp = [0, 1, 0, 1, 255, (1 << bits) - 1]
        colour = ("Red", "Green", "Blue")[fan_out % 3]
        tables = tuple(words if c == colour else ramp for c in ("Red", "Green", "Blue"))
        add(f"segmented-lut/fan-out-{fan_out}-layers-{layers}-{leaf}-{bits}bit",
            _write(with_segmented_palette(tables, bits)), "session.run", "DicomError",
            rf"Segmented{colour}PaletteColorLookupTableData.*(fan-out|nest too deeply)",
            f"segmented palette LUT: {layers} layers of {fan_out} indirect segments over {leaf} leaves "
            f"({len(words) * bits // 8} bytes, {fan_out}^{layers} segment visits if expanded naively)")


GROUPS: tuple[Callable, ...] = (_cases_padding, _cases_segmented_lut)


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
