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
from tests.corpus.dicom_files import _fragments, _raw, _re_encapsulate, _read, _write, parent_path


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


def _box(kind: bytes, payload: bytes, extended: bool = False) -> bytes:
    if extended:  # LBox = 1: a 64-bit XLBox follows (15444-1 I.4)
        return struct.pack(">I4sQ", 1, kind, 16 + len(payload)) + payload
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def jp2_wrap(codestream: bytes, *, before: bytes = b"", ihdr_size: tuple[int, int] | None = None,
             extended: bool = False) -> bytes:
    """A JP2 file (15444-1 Annex I) around a raw J2K codestream: signature, file type, `before` (any
    boxes), the header superbox (image header + colour specification) and the codestream box."""
    xsiz, ysiz = struct.unpack_from(">II", codestream, 8)
    csiz = struct.unpack_from(">H", codestream, 40)[0]
    ssiz = codestream[42]
    height, width = ihdr_size or (ysiz, xsiz)
    ihdr = _box(b"ihdr", struct.pack(">IIHBBBB", height, width, csiz, ssiz, 7, 0, 0))
    colr = _box(b"colr", struct.pack(">BBBI", 1, 0, 0, 17 if csiz == 1 else 16))
    return (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + _box(b"ftyp", b"jp2 " + bytes(4) + b"jp2 ") + before
            + _box(b"jp2h", ihdr + colr) + _box(b"jp2c", codestream, extended))


def set_siz(codestream: bytes, rows: int | None = None, columns: int | None = None,
            components: int | None = None) -> bytes:
    """The codestream with its SIZ marker segment's Xsiz/Ysiz (image size, offsets 0) or Csiz changed."""
    out = bytearray(codestream)
    if columns is not None:
        struct.pack_into(">I", out, 8, columns)
    if rows is not None:
        struct.pack_into(">I", out, 12, rows)
    if components is not None:
        struct.pack_into(">H", out, 40, components)
    return bytes(out)


def _cases_jp2_boxes(add: Callable) -> None:
    xml = _box(b"xml ", b"<x>" + b"a" * 8000 + b"</x>")  # pushes the codestream past any fixed search window
    uuid = _box(b"uuid", bytes(16) + bytes(70000), extended=True)
    for parent in ("JPEG2000.dcm", "US1_J2KR.dcm", "emri_small_jpeg_2k_lossless.dcm"):
        stem = parent[:-4]
        entry = "session.stream" if parent.startswith("emri") else "session.run"

        def mutated(fn: Callable[[bytes], bytes], parent: str = parent) -> bytes:
            ds = _read(parent)
            _re_encapsulate(ds, [fn(f) for f in _fragments(ds)])
            return _write(ds)

        declares = r"PixelData.*declares"
        for name, fn, expect, match, why in (
                ("jp2-xml-box-then-huge-siz", lambda f: jp2_wrap(set_siz(f, 60000, 60000), before=xml), "DicomError",
                 declares, "JP2 wrapper with an 8 KB XML box before a codestream whose SIZ declares 60000 x 60000"),
                ("jp2-uuid-xlbox-then-huge-siz", lambda f: jp2_wrap(set_siz(f, 40000, 30000), before=uuid,
                                                                   extended=True), "DicomError", declares,
                 "JP2 wrapper with a 70 KB uuid box (64-bit length) before a 40000 x 30000 SIZ"),
                ("jp2-huge-ihdr", lambda f: jp2_wrap(f, before=xml, ihdr_size=(50000, 50000)), "DicomError",
                 r"PixelData.*declares.*ihdr", "JP2 image header box declares 50000 x 50000, SIZ the real size"),
                ("jp2-box-overruns", lambda f: jp2_wrap(f, before=struct.pack(">I4s", 0x7FFFFFF0, b"free")),
                 "DicomError", r"PixelData.*JP2 box", "a JP2 box declaring 2 GiB inside a small fragment"),
                ("jp2-without-codestream-box", lambda f: jp2_wrap(f)[:-len(f) - 8] + _box(b"free", f), "DicomError",
                 r"PixelData.*jp2c", "a JP2 file whose codestream sits in a 'free' box, not 'jp2c'"),
                ("j2k-siz-components-16384", lambda f: set_siz(f, components=16384), "DicomError",
                 r"PixelData.*component", "raw J2K codestream whose SIZ declares 16384 components"),
                ("j2k-after-junk", lambda f: bytes(4096) + f, "DicomError", r"PixelData.*(header stating|decoded)",
                 "4 KB of zeros before the SOC marker: no size can be read")):
            add(f"jp2/{stem}/{name}", mutated(fn), entry, expect, match, f"{parent}: {why}")
    add("jp2/JPEG2000/jp2-valid-wrapper", _jp2_valid(xml), "session.run", ACCEPTED, "",
        "JPEG2000.dcm's codestream in a valid JP2 wrapper with an 8 KB XML box first (decodes as before)")
    ds = _read("SC_rgb_jpeg_dcmtk.dcm")
    app = b"\xff\xe5" + struct.pack(">H", 10002) + bytes(10000)
    frames = [f[:2] + app + f[2:] for f in _fragments(ds)]
    frames = [f.replace(b"\xff\xc0\x00\x11\x08\x00\x64\x00\x64", b"\xff\xc0\x00\x11\x08\xea\x60\xea\x60")
              for f in frames]
    _re_encapsulate(ds, frames)
    add("jp2/SC_rgb_jpeg_dcmtk/app-segment-then-huge-sof", _write(ds), "session.run", "DicomError",
        r"PixelData.*declares", "JPEG baseline: a 10 KB APP5 segment before a SOF declaring 60000 x 60000")


def _jp2_valid(before: bytes) -> bytes:
    ds = _read("JPEG2000.dcm")
    _re_encapsulate(ds, [jp2_wrap(f, before=before) for f in _fragments(ds)])
    return _write(ds)


GROUPS: tuple[Callable, ...] = (_cases_padding, _cases_segmented_lut, _cases_jp2_boxes)


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
