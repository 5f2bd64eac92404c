"""DICOM cases for the root causes of issue 13 (an independent attack corpus): resource bombs, the
Enhanced multi-frame functional groups, offset tables, absurd spacing, windows that vanish in float32,
float pixel data, HighBit, and valid padding that used to be refused.

Like dicom_files.py, every input is derived from a real pydicom / pydicom-data file or built with
pydicom's own writer; each root cause gets several variants (sizes, parents, placements) so that a
fix for one parameter value does not pass by accident.
"""
from __future__ import annotations

import copy
import io
import struct
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from tests.corpus.case import ACCEPTED, Case
from tests.corpus.dicom_files import _fragments, _raw, _re_encapsulate, _read, _write, parent_path


def _cases_padding(add: Callable) -> None:
    """Trailing zero padding shorter than one frame is valid (pydicom reads it); anything else is not."""
    add("padding/MR_small_padded/as-is", parent_path("MR_small_padded.dcm").read_bytes(), "session.run", ACCEPTED,
        "", "MR_small_padded.dcm: 128 bytes of zero padding after the pixels (pydicom decodes it as MR_small)",
        same_as="MR_small.dcm")
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
        same = {"same_as": parent} if expect == ACCEPTED else {}
        add(f"padding/{parent[:-4]}/{name}", _write(ds), entry,
            expect, "" if expect == ACCEPTED else r"PixelData.*inconsistent", f"{parent}: {why}", **same)


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
        "JPEG2000.dcm's codestream in a valid JP2 wrapper with an 8 KB XML box first (decodes as before)",
        same_as="JPEG2000.dcm")
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


def _explicit_le(ds) -> tuple[bytes, bytes, bytes]:
    """(elements before Pixel Data, the Pixel Data element, elements after it) of `ds` in explicit VR
    little endian, the encoding the Deflated syntax compresses (PS3.5 A.5)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    def encode(part) -> bytes:
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = False, True
        write_dataset(fp, part)
        return fp.getvalue()

    head = copy_without(ds, lambda tag: tag >= 0x7FE00000)
    pixel = copy_without(ds, lambda tag: tag != 0x7FE00010)
    tail = copy_without(ds, lambda tag: tag <= 0x7FE00010)
    return encode(head), encode(pixel), encode(tail)


def copy_without(ds, drop: Callable[[int], bool]):
    from pydicom.dataset import Dataset

    out = Dataset()
    for elem in ds:
        if not drop(int(elem.tag)):
            out.add(elem)
    return out


class Zeros(int):
    """A run of zero bytes in `deflated_file`'s parts, compressed without ever being built."""


def deflated_file(parts: Iterable[bytes | Zeros], meta_from: str = "CT_small.dcm") -> bytes:
    """Preamble + File Meta (Transfer Syntax: Deflated Explicit VR Little Endian) + the raw-deflated
    concatenation of `parts`. A `Zeros(n)` part is emitted as copies of one compressed 16 MiB block of
    zeros (after a full flush, a block references nothing before it, so copies concatenate into a
    valid stream): a 1.5 GiB bomb costs milliseconds to write and its inflated size never exists here."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    ds = _read(meta_from)
    meta = copy.deepcopy(ds.file_meta)
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    fp = DicomBytesIO()
    fp.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(fp, meta, enforce_standard=False)
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = bytearray()
    for part in parts:
        if isinstance(part, Zeros):
            body += deflater.flush(zlib.Z_FULL_FLUSH)
            block, size = _zero_block()
            whole, rest = divmod(int(part), size)
            body += block * whole
            body += deflater.compress(bytes(rest))
        else:
            body += deflater.compress(part)
    body += deflater.flush()
    return fp.getvalue() + bytes(body)


_ZERO_BLOCK: list[tuple[bytes, int]] = []


def _zero_block() -> tuple[bytes, int]:
    if not _ZERO_BLOCK:
        size = 16 << 20
        c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        _ZERO_BLOCK.append((c.compress(bytes(size)) + c.flush(zlib.Z_FULL_FLUSH), size))
    return _ZERO_BLOCK[0]


def _element(group: int, elem: int, vr: bytes, length: int) -> bytes:
    """An explicit VR little endian element header with a 4-byte length (PS3.5 7.1.2)."""
    return struct.pack("<HH2sHI", group, elem, vr, 0, length)


GIB = 1 << 30
MIB = 1 << 20


def _cases_deflate(add: Callable) -> None:
    from pydicom import dcmread

    add("deflate/image_dfl/as-is", parent_path("image_dfl.dcm").read_bytes(), "session.run", ACCEPTED, "",
        "pydicom's own Deflated Explicit VR Little Endian test file")
    for parent in ("CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm"):
        head, pixel, tail = _explicit_le(_read(parent))
        stem = parent[:-4]
        add(f"deflate/{stem}/valid", deflated_file([head, pixel, tail]), "session.run", ACCEPTED, "",
            f"{parent} re-encoded in the Deflated syntax", same_as=parent)
        add(f"deflate/{stem}/trailer-bomb-1.5GiB",
            deflated_file([head, pixel, _element(0xFFFC, 0xFFFC, b"OB", 3 * GIB // 2), Zeros(3 * GIB // 2)]),
            "session.run", "DicomError", r"PixelData.*inflates beyond",
            f"{parent} deflated with 1.5 GiB of zero Data Set Trailing Padding after the pixels (a ~1.5 MB file)")
        add(f"deflate/{stem}/private-element-bomb-200MiB",
            deflated_file([head, _element(0x0029, 0x1010, b"OB", 200 * MIB), Zeros(200 * MIB), pixel, tail]),
            "session.run", "DicomError", r"PixelData.*inflates beyond 64 MiB before its Pixel Data",
            f"{parent} deflated with a 200 MiB private element before Pixel Data (header bomb)")
    head, pixel, tail = _explicit_le(_read("CT_small.dcm"))
    add("deflate/CT_small/pixel-length-claims-1GiB",
        deflated_file([head, _element(0x7FE0, 0x0010, b"OW", GIB), Zeros(GIB)]), "session.run", "DicomError",
        r"PixelData.*inflates beyond", "Deflated CT_small whose Pixel Data declares and holds 1 GiB of zeros "
                                       "(Rows x Columns need 32 KiB)")
    big = _read("CT_small.dcm")
    big.Rows, big.Columns = 30000, 30000
    head, _, _ = _explicit_le(big)
    add("deflate/CT_small/rows-columns-30000",
        deflated_file([head, _element(0x7FE0, 0x0010, b"OW", 1800 * MIB), Zeros(1800 * MIB)]), "session.run",
        "PixelLimitExceeded", r"Rows.*exceeds the configured limit",
        "Deflated data set declaring 30000 x 30000 16-bit pixels (1.8 GB of zeros inflated): refused at the header")
    no_rows = copy_without(_read("MR_small.dcm"), lambda tag: tag == 0x00280010)
    h, p, t = _explicit_le(no_rows)
    add("deflate/MR_small/rows-missing", deflated_file([h, p, t]), "session.run", "DicomError", r"Rows",
        "Deflated data set without Rows before its Pixel Data")
    valid = deflated_file([*_explicit_le(_read("CT_small.dcm"))])
    meta_end = len(deflated_file([]))  - 2  # an empty raw-deflate stream is 2 bytes
    noise = np.random.default_rng(13).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    add("deflate/CT_small/stream-is-noise", valid[:meta_end] + b"\x07" + noise, "session.run", "DicomError",
        r"inflate|cannot be parsed|truncat", "Deflated syntax whose compressed stream is 4000 bytes of noise "
                                             "(raw deflate has no checksum: only a broken structure is detectable)")
    add("deflate/CT_small/stream-cut", valid[: len(valid) * 2 // 3], "session.run", "DicomError", r"truncat",
        "Deflated CT_small cut at two thirds of the compressed stream")
    _ = dcmread


def _cases_declared_lengths(add: Callable) -> None:
    """Elements, items and fragments whose declared length runs past the end of the file."""
    from pydicom import dcmread

    for parent in ("CT_small.dcm", "MR_small_bigendian.dcm", "rtplan.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                   "MR_small_implicit.dcm"):
        data = parent_path(parent).read_bytes()
        ds = dcmread(io.BytesIO(data))
        implicit, little = ds.original_encoding
        end = "<" if little else ">"
        first = next(e for e in ds if e.tag.group > 0x0008)
        at = _offset_of(data, ds, first.tag)
        stem = parent[:-4]
        for group, elem, length, name in ((0x0009, 0x1001, 0xFFFFFFF0, "private-4GiB"),
                                          (0x0009, 0x1002, 1 << 31, "private-2GiB"),
                                          (0x0009, 0x1003, len(data) + 2, "private-file-size-plus-2")):
            if implicit:
                header = struct.pack(f"{end}HHI", group, elem, length)
            else:
                header = struct.pack(f"{end}HH2sHI", group, elem, b"OB", 0, length)
            add(f"lengths/{stem}/{name}-before-{first.keyword or 'first'}", data[:at] + header + data[at:],
                "session.run", "DicomError", r"\(0009,10\d\d\).*declares \d+ bytes but only \d+ remain",
                f"{parent}: private element (0009,{elem:04X}) declaring {length} bytes inserted before "
                f"{first.keyword}")
    ds = _read("CT_small.dcm")
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.ReferencedImageSequence = Sequence([item])
    data = _write(ds)
    seq = data.index(struct.pack("<HH2s", 0x0008, 0x1140, b"SQ"))
    for name, patch, why in (
            ("sequence-length-4GiB", lambda b: b[:seq + 8] + struct.pack("<I", 0xFFFFFFF0) + b[seq + 12:],
             "Referenced Image Sequence declaring 4 GiB"),
            ("item-length-4GiB", lambda b: b[:seq + 16] + struct.pack("<I", 0xFFFFFFF0) + b[seq + 20:],
             "the sequence's item declaring 4 GiB")):
        add(f"lengths/CT_small/{name}", patch(data), "session.run", "DicomError",
            r"ReferencedImageSequence.*declares \d+ bytes but only \d+ remain", f"CT_small: {why}")
    raw = _with_private(parent_path("MR_small_implicit.dcm").read_bytes(), 0xFFFFFFF0)
    body = raw[132 + 12 + struct.unpack_from("<I", raw, 140)[0]:]  # the data set alone, no preamble/File Meta
    add("lengths/MR_small_implicit/no-file-meta-private-4GiB", body, "session.run", "DicomError",
        r"\(0009,1001\).*declares \d+ bytes but only \d+ remain",
        "a data set without preamble and File Meta (ACR-NEMA style) holding a private element declaring 4 GiB")
    jpg = parent_path("SC_rgb_jpeg_dcmtk.dcm").read_bytes()
    frag = jpg.index(b"\xfe\xff\x00\xe0", jpg.index(b"\xe0\x7f\x10\x00") + 20)  # first fragment item
    add("lengths/SC_rgb_jpeg_dcmtk/fragment-length-4GiB", jpg[:frag + 4] + struct.pack("<I", 0xFFFFFFF0) + jpg[frag + 8:],
        "session.run", "DicomError", r"PixelData.*(declares \d+ bytes but only|truncat)",
        "encapsulated Pixel Data whose first fragment declares 4 GiB")


def _with_private(data: bytes, length: int) -> bytes:
    """An implicit VR little endian file with private element (0009,1001) of `length` inserted before its
    first element after group 0008."""
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(data))
    at = _offset_of(data, ds, next(e for e in ds if e.tag.group > 0x0008).tag)
    return data[:at] + struct.pack("<HHI", 0x0009, 0x1001, length) + data[at:]


def _offset_of(data: bytes, ds, tag) -> int:
    """Byte offset of the element `tag` (top level) in the file `data` parsed as `ds`."""
    from pydicom import dcmread

    elem = dcmread(io.BytesIO(data)).get_item(tag)  # raw: it still knows where its value starts
    implicit, _ = ds.original_encoding
    header = 8 if implicit or elem.VR not in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR",
                                               "UT", "UV") else 12
    return elem.value_tell - header


def encapsulate(ds, frames: list[list[bytes]], basic: list[int] | None = None,
                extended: tuple[list[int], list[int]] | None = None) -> None:
    """Encapsulated Pixel Data (PS3.5 A.4) from frames given as fragment lists, with a Basic Offset
    Table (`basic`: None = the correct offsets, [] = empty, else written as given) and optionally an
    Extended Offset Table (PS3.3 C.7.6.3.1.8) written as given."""
    from pydicom.dataelem import DataElement

    body = bytearray()
    starts = []
    for fragments in frames:
        starts.append(len(body))
        for f in fragments:
            f = f + b"\0" * (len(f) % 2)
            body += b"\xfe\xff\x00\xe0" + struct.pack("<I", len(f)) + f
    table = starts if basic is None else basic
    bot = b"\xfe\xff\x00\xe0" + struct.pack(f"<I{len(table)}I", 4 * len(table), *table)
    ds.PixelData = bytes(bot + body)
    ds["PixelData"].is_undefined_length = True
    if extended is not None:
        ds[0x7FE00001] = DataElement(0x7FE00001, "OV", struct.pack(f"<{len(extended[0])}Q", *extended[0]))
        ds[0x7FE00002] = DataElement(0x7FE00002, "OV", struct.pack(f"<{len(extended[1])}Q", *extended[1]))


def _frames_of(ds) -> list[bytes]:
    from pydicom.encaps import generate_frames

    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))


def _cases_offset_tables(add: Callable) -> None:
    for parent in ("emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm"):
        stem = parent[:-4]
        frames = _frames_of(_read(parent))
        n = len(frames)
        sizes = [len(f) + len(f) % 2 for f in frames]
        right = [sum(8 + s for s in sizes[:i]) for i in range(n)]
        swapped = list(right)
        swapped[2], swapped[3] = swapped[3], swapped[2]
        mid = list(right)
        mid[4] += 2
        beyond = list(right)
        beyond[-1] = right[-1] + 10**6
        basics = (("bot-correct", right, ACCEPTED), ("bot-all-zero", [0] * n, ACCEPTED),
                  ("bot-frames-2-3-swapped", swapped, ACCEPTED), ("bot-reversed", right[::-1], ACCEPTED),
                  ("bot-half-the-entries", right[: n // 2], ACCEPTED), ("bot-entry-inside-a-fragment", mid, ACCEPTED),
                  ("bot-last-entry-beyond-the-data", beyond, ACCEPTED),
                  ("bot-first-entry-not-zero", [right[1]] + right[1:], ACCEPTED))
        for name, table, expect in basics:
            ds = _read(parent)
            encapsulate(ds, [[f] for f in frames], basic=table)
            add(f"offsets/{stem}/{name}", _write(ds), "session.stream", expect, "",
                f"{parent}: Basic Offset Table {name[4:].replace('-', ' ')}: frames must still be the file's frames",
                same_as=parent)
        lengths = [len(f) for f in frames]
        eot_swapped = (swapped, lengths)
        extendeds = (("eot-correct", (right, lengths)), ("eot-all-zero", ([0] * n, lengths)),
                     ("eot-frames-2-3-swapped", eot_swapped), ("eot-lengths-all-one", (right, [1] * n)),
                     ("eot-lengths-swapped", (right, lengths[1:] + lengths[:1])),
                     ("eot-one-entry-short", (right[:-1], lengths[:-1])))
        for name, table in extendeds:
            ds = _read(parent)
            encapsulate(ds, [[f] for f in frames], basic=[], extended=table)
            add(f"offsets/{stem}/{name}", _write(ds), "session.stream", ACCEPTED, "",
                f"{parent}: Extended Offset Table {name[4:].replace('-', ' ')}: frames must still be the file's "
                f"frames", same_as=parent)
    # JPEG 2000 frames split into two fragments each: the table is what tells the fragments apart
    parent = "emri_small_jpeg_2k_lossless.dcm"
    frames = _frames_of(_read(parent))
    split = [[f[: len(f) // 2 & ~1], f[len(f) // 2 & ~1:]] for f in frames]
    sizes = [sum(8 + len(p) + len(p) % 2 for p in parts) for parts in split]
    right = [sum(sizes[:i]) for i in range(len(split))]
    for name, table in (("two-fragments-bot-correct", right), ("two-fragments-bot-all-zero", [0] * len(right)),
                        ("two-fragments-bot-swapped", right[1:2] + right[:1] + right[2:])):
        ds = _read(parent)
        encapsulate(ds, split, basic=table)
        add(f"offsets/{parent[:-4]}/{name}", _write(ds), "session.stream", ACCEPTED, "",
            f"{parent} with every frame in two fragments and a Basic Offset Table "
            f"{name.split('bot-')[1].replace('-', ' ')}", same_as=parent)


def enhanced_ct(per_frame: list[dict] | None = None, shared: dict | None = None):
    """eCT_Supplemental.dcm (pydicom-data: Enhanced CT, 2 frames, rescale -1024 and a 49/102 window in
    the Shared Functional Groups) with macros set per frame or shared: {macro keyword: {attribute:
    value}}; a value given as bytes is written raw (bypassing pydicom's validation)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = _read("eCT_Supplemental.dcm")

    def put(container, macros: dict) -> None:
        for macro, attrs in macros.items():
            item = Dataset()
            for keyword, value in attrs.items():
                if isinstance(value, bytes):
                    _raw_in(item, keyword, value)
                else:
                    setattr(item, keyword, value)
            setattr(container, macro, Sequence([item]))

    if shared is not None:
        put(ds.SharedFunctionalGroupsSequence[0], shared)
    for i, macros in enumerate(per_frame or []):
        put(ds.PerFrameFunctionalGroupsSequence[i], macros)
    return ds


def _raw_in(item, keyword: str, value: bytes) -> None:
    from pydicom.datadict import dictionary_VR
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    tag = Tag(keyword)
    value = value + (b" " if len(value) % 2 else b"")
    item[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)


def classic_reference(ds):
    """The same frames as a classic multi-frame object: the shared macros' values at the top level and
    no functional groups; what an Enhanced reader must give for frames that share their values."""
    out = copy.deepcopy(ds)
    shared = out.SharedFunctionalGroupsSequence[0]
    for macro in ("PixelValueTransformationSequence", "FrameVOILUTSequence", "PixelMeasuresSequence"):
        if macro in shared:
            for elem in shared[macro].value[0]:
                out[elem.tag] = elem
    del out.SharedFunctionalGroupsSequence
    del out.PerFrameFunctionalGroupsSequence
    return out


def _cases_enhanced(add: Callable) -> None:
    base = _read("eCT_Supplemental.dcm")
    add("enhanced/eCT_Supplemental/classic-reference", _write(classic_reference(base)), "session.stream", ACCEPTED,
        "", "eCT_Supplemental's frames as a classic multi-frame object (rescale and window at the top level)")
    ref = "dicom13/enhanced__eCT_Supplemental__classic-reference.dcm"
    add("enhanced/eCT_Supplemental/as-is", _write(base), "session.stream", ACCEPTED, "",
        "Enhanced CT: Rescale Intercept -1024 and window 49/102 only in the Shared Functional Groups", same_as=ref)
    for name, shared in (("intercept-minus-1000", {"PixelValueTransformationSequence": {
                             "RescaleIntercept": "-1000", "RescaleSlope": "1", "RescaleType": "HU"}}),
                         ("slope-2-window-300-1500", {"PixelValueTransformationSequence": {
                             "RescaleIntercept": "-2048", "RescaleSlope": "2", "RescaleType": "HU"},
                             "FrameVOILUTSequence": {"WindowCenter": "300", "WindowWidth": "1500"}})):
        ds = enhanced_ct(shared=shared)
        refname = f"enhanced/eCT_Supplemental/{name}-classic-reference"
        add(refname, _write(classic_reference(ds)), "session.stream", ACCEPTED, "",
            f"classic form of the Enhanced CT with shared {name}")
        add(f"enhanced/eCT_Supplemental/shared-{name}", _write(ds), "session.stream", ACCEPTED, "",
            f"Enhanced CT with {name} in the Shared Functional Groups",
            same_as=f"dicom13/{refname.replace('/', '__')}.dcm")
    per_frame = [{"PixelValueTransformationSequence": {"RescaleIntercept": "-1024", "RescaleSlope": "1"}},
                 {"PixelValueTransformationSequence": {"RescaleIntercept": "0", "RescaleSlope": "1"},
                  "FrameVOILUTSequence": {"WindowCenter": "1000", "WindowWidth": "400"},
                  "PixelMeasuresSequence": {"PixelSpacing": ["0.5", "0.5"]}}]
    ds = enhanced_ct(per_frame=per_frame)
    del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence  # C.7.6.16.1: one place only
    add("enhanced/eCT_Supplemental/per-frame-differ", _write(ds), "session.stream", ACCEPTED, "",
        "Enhanced CT whose two frames have different rescale, window and spacing (Per-frame Functional Groups)")
    bad = (("shared-slope-zero", None, {"PixelValueTransformationSequence": {"RescaleSlope": b"0",
                                                                             "RescaleIntercept": b"-1024"}},
            r"SharedFunctionalGroupsSequence > PixelValueTransformationSequence: RescaleSlope"),
           ("per-frame-intercept-nan", [{}, {"PixelValueTransformationSequence": {"RescaleSlope": b"1",
                                                                                  "RescaleIntercept": b"NaN"}}], None,
            r"PerFrameFunctionalGroupsSequence item 1 > PixelValueTransformationSequence: RescaleIntercept"),
           ("per-frame-slope-text", [{"PixelValueTransformationSequence": {"RescaleSlope": b"steep",
                                                                           "RescaleIntercept": b"0"}}], None,
            r"PerFrameFunctionalGroupsSequence item 0 > .*RescaleSlope"),
           ("shared-window-width-zero", None, {"FrameVOILUTSequence": {"WindowCenter": b"40", "WindowWidth": b"0"}},
            r"SharedFunctionalGroupsSequence > FrameVOILUTSequence: WindowWidth"),
           ("per-frame-voi-function-gamma", [{}, {"FrameVOILUTSequence": {"WindowCenter": b"40",
                                                                          "WindowWidth": b"400",
                                                                          "VOILUTFunction": b"GAMMA"}}], None,
            r"FrameVOILUTSequence: VOILUTFunction"),
           ("shared-slope-1e37", None, {"PixelValueTransformationSequence": {"RescaleSlope": b"1e37",
                                                                             "RescaleIntercept": b"0"}},
            r"PixelValueTransformationSequence: RescaleSlope.*float32"))
    for name, per, shared, match in bad:
        add(f"enhanced/eCT_Supplemental/{name}", _write(enhanced_ct(per_frame=per, shared=shared)),
            "session.stream", "DicomError", match, f"Enhanced CT: {name.replace('-', ' ')} in a functional group")
    ds = enhanced_ct(per_frame=[{"PixelValueTransformationSequence": {"RescaleIntercept": "-1024",
                                                                      "RescaleSlope": "1"}}] * 2)
    ds.PerFrameFunctionalGroupsSequence.append(copy.deepcopy(ds.PerFrameFunctionalGroupsSequence[0]))
    add("enhanced/eCT_Supplemental/per-frame-items-3-for-2-frames", _write(ds), "session.stream", "DicomError",
        r"PerFrameFunctionalGroupsSequence.*3 items for NumberOfFrames 2",
        "Enhanced CT with 3 Per-frame Functional Groups items (each with a rescale) for 2 frames")
    ds = _read("eCT_Supplemental.dcm")
    ds.PerFrameFunctionalGroupsSequence.append(copy.deepcopy(ds.PerFrameFunctionalGroupsSequence[0]))
    add("enhanced/eCT_Supplemental/per-frame-items-3-for-2-frames-no-macros", _write(ds), "session.stream",
        ACCEPTED, "", "Enhanced CT with 3 Per-frame items for 2 frames, none with rescale/VOI/spacing: ignored",
        same_as="dicom13/enhanced__eCT_Supplemental__classic-reference.dcm")


def with_us_region(delta_x_cm: str, delta_y_cm: str, units: int = 3):
    """US1_UNCR.dcm (RGB ultrasound, 480 x 640) with one 2D region (PS3.3 C.8.5.5) of the given
    PhysicalDeltaX/Y (written raw, FD)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = _read("US1_UNCR.dcm")
    region = Dataset()
    region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 639, 479
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = units
    region.PhysicalDeltaX, region.PhysicalDeltaY = float(delta_x_cm), float(delta_y_cm)
    ds.SequenceOfUltrasoundRegions = Sequence([region])
    return ds


def _cases_spacing(add: Callable) -> None:
    """Absurd spacing from the file must not become inf/NaN/0 areas: ignored (no areas), with a note."""
    seg = {"session": "segmenter"}
    add("spacing/CT_small/as-is", parent_path("CT_small.dcm").read_bytes(), "session.run", ACCEPTED, "",
        "CT_small with its own Pixel Spacing: areas are reported", areas="finite", **seg)
    for name, value in (("1e300", "1e300\\1e300"), ("1e200-product-overflows", "1e200\\1e200"),
                        ("1e-300", "1e-300\\1e-300"), ("1e-170-product-underflows", "1e-170\\1e-170"),
                        ("2000mm", "2000\\0.5"), ("one-axis-1e308", "0.5\\1e308")):
        ds = _read("CT_small.dcm")
        _raw(ds, "PixelSpacing", "DS", value)
        add(f"spacing/CT_small/pixel-spacing-{name}", _write(ds), "session.run", ACCEPTED, "",
            f"CT_small with Pixel Spacing {value.replace(chr(92) * 2, chr(92))} mm: ignored, no areas", areas="none",
            **seg)
    for name, dx, dy, areas in (("1e300-cm", "1e300", "1e300", "none"), ("1e-300-cm", "1e-300", "1e-300", "none"),
                                ("1e160-cm-product-overflows", "1e160", "1e160", "none"),
                                ("0.01-cm", "0.01", "0.01", "finite")):
        add(f"spacing/US1_UNCR/region-delta-{name}", _write(with_us_region(dx, dy)), "session.run", ACCEPTED, "",
            f"ultrasound region with PhysicalDeltaX/Y {dx}/{dy} cm", areas=areas, **seg)
    ds = _read("CT_small.dcm")
    ds.Modality = "DX"
    _raw(ds, "ImagerPixelSpacing", "DS", "0.1\\0.1")
    _raw(ds, "EstimatedRadiographicMagnificationFactor", "DS", "1e-300")
    del ds.PixelSpacing
    add("spacing/CT_small/dx-magnification-1e-300", _write(ds), "session.run", ACCEPTED, "",
        "DX with Imager Pixel Spacing 0.1 mm and magnification factor 1e-300 (spacing / ERMF = 1e299 mm)",
        areas="finite", **seg)


def float_pixels(parent: str, scale: float = 1.0, nan_at: int | None = None, double: bool = False):
    """`parent`'s (grey, native) pixels as Float (or Double Float) Pixel Data (PS3.3 C.7.6.24), times
    `scale`; no window, no BitsStored/HighBit/PixelRepresentation (not used with float pixels)."""
    ds = _read(parent)
    values = ds.pixel_array.astype(np.float64 if double else np.float32) * scale
    if nan_at is not None:
        values.reshape(-1)[nan_at] = np.nan
    del ds.PixelData
    for keyword in ("BitsStored", "HighBit", "PixelRepresentation", "WindowCenter", "WindowWidth",
                    "RescaleSlope", "RescaleIntercept", "SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.BitsAllocated = 64 if double else 32
    if double:
        ds.DoubleFloatPixelData = values.tobytes()
    else:
        ds.FloatPixelData = values.tobytes()
    return ds, values


def integer_reference(parent: str):
    """`parent` with a LINEAR_EXACT window spanning exactly its data range: what its float twin must give."""
    ds = _read(parent)
    lo, hi = int(ds.pixel_array.min()), int(ds.pixel_array.max())
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if keyword in ds:
            delattr(ds, keyword)
    _raw(ds, "WindowCenter", "DS", repr((lo + hi) / 2))
    _raw(ds, "WindowWidth", "DS", str(hi - lo))
    _raw(ds, "VOILUTFunction", "CS", "LINEAR_EXACT")
    return ds


def high_bit_shifted(parent: str, bits_stored: int, high_bit: int):
    """`parent` (16-bit) with its values clipped to `bits_stored` bits and stored in bits
    [high_bit - bits_stored + 1, high_bit] of each cell (PS3.5 8.1.1), and the plain form (HighBit =
    BitsStored - 1) of the same values."""
    ds = _read(parent)
    signed = ds.PixelRepresentation == 1
    lo, hi = (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed else (0, (1 << bits_stored) - 1)
    values = np.clip(ds.pixel_array.astype(np.int64), lo, hi)
    cells = (values & ((1 << bits_stored) - 1)) << (high_bit - bits_stored + 1)
    plain = copy.deepcopy(ds)
    plain.BitsStored, plain.HighBit = bits_stored, bits_stored - 1
    plain.PixelData = values.astype(np.int16 if signed else np.uint16).tobytes()
    ds.BitsStored, ds.HighBit = bits_stored, high_bit
    ds.PixelData = cells.astype(np.uint16).tobytes()
    return ds, plain


def _cases_float_and_bits(add: Callable) -> None:
    for parent in ("MR_small.dcm", "CT_small.dcm"):
        stem = parent[:-4]
        refname = f"floats/{stem}/integer-reference"
        add(refname, _write(integer_reference(parent)), "session.run", ACCEPTED, "",
            f"{parent} with a LINEAR_EXACT window spanning its data range")
        ds, _ = float_pixels(parent)
        add(f"floats/{stem}/float-pixel-data", _write(ds), "session.run", ACCEPTED, "",
            f"{parent}'s values as Float Pixel Data without a window: grey levels from the data's range, as for "
            f"the integer file windowed over that range", same_as=f"dicom13/{refname.replace('/', '__')}.dcm")
        ds, _ = float_pixels(parent, scale=1e-3)
        add(f"floats/{stem}/float-pixel-data-milli", _write(ds), "session.run", ACCEPTED, "",
            f"{parent}'s values / 1000 as Float Pixel Data (a [0, 4] range windowed over [0, 2^32] was all black)")
        ds, _ = float_pixels(parent, nan_at=100)
        add(f"floats/{stem}/float-pixel-data-one-nan", _write(ds), "session.run", "InputError", r"NaN",
            f"{parent} as Float Pixel Data with one NaN")
        ds, _ = float_pixels(parent, double=True)
        add(f"floats/{stem}/double-float-pixel-data", _write(ds), "session.run", "DicomError",
            r"DoubleFloatPixelData.*64-bit float", f"{parent} as Double Float Pixel Data (no float64 kernel)")
    ds, values = float_pixels("MR_small.dcm")
    ds.FloatPixelData = np.full_like(values, np.nan).tobytes()
    add("floats/MR_small/float-pixel-data-all-nan", _write(ds), "session.run", "DicomError",
        r"FloatPixelData.*no finite value", "MR_small as Float Pixel Data, every value NaN")
    for name, width in (("1e-46", "1e-46"), ("1e-40", "1e-40"), ("1e-31", "1e-31")):
        ds = _read("CT_small.dcm")
        _raw(ds, "WindowCenter", "DS", "40")
        _raw(ds, "WindowWidth", "DS", width)
        _raw(ds, "VOILUTFunction", "CS", "LINEAR_EXACT")
        add(f"floats/CT_small/linear-exact-width-{name}", _write(ds), "session.run", "DicomError", r"WindowWidth",
            f"CT_small with a LINEAR_EXACT Window Width of {width} (> 0 in float64, 0 or unusable in float32)")
    ds = _read("CT_small.dcm")
    _raw(ds, "RescaleSlope", "DS", "1e-46")
    add("floats/CT_small/rescale-slope-1e-46", _write(ds), "session.run", "DicomError", r"RescaleSlope.*float32",
        "CT_small with Rescale Slope 1e-46 (0 in float32)")
    for parent, bits, high in (("CT_small.dcm", 12, 13), ("CT_small.dcm", 12, 15), ("MR_small.dcm", 10, 14)):
        ds, plain = high_bit_shifted(parent, bits, high)
        stem = parent[:-4]
        refname = f"highbit/{stem}/bits-{bits}-plain-for-high-bit-{high}"
        add(refname, _write(plain), "session.run", ACCEPTED, "", f"{parent} with {bits} bits stored from bit 0")
        add(f"highbit/{stem}/bits-{bits}-high-bit-{high}", _write(ds), "session.run", ACCEPTED, "",
            f"{parent} with BitsStored {bits} ending at HighBit {high} (PS3.5 8.1.1): the values must be read from "
            f"bits {high - bits + 1}-{high}", same_as=f"dicom13/{refname.replace('/', '__')}.dcm")
    for parent, bits, high in (("CT_small.dcm", 12, 16), ("MR_small.dcm", 12, 9), ("CT_small.dcm", 16, 14)):
        ds = _read(parent)
        ds.BitsStored, ds.HighBit = bits, high
        add(f"highbit/{parent[:-4]}/bits-{bits}-high-bit-{high}-invalid", _write(ds), "session.run", "DicomError",
            r"HighBit \(0028,0102\).*PS3.5 8.1.1", f"{parent}: BitsStored {bits} with HighBit {high} does not fit "
                                                   f"the 16-bit cell")


def array_cases() -> list[Case]:
    """The array / spec side of the same root causes (no files)."""
    cases = []
    for mask in ("none", "diagonal", "all"):
        for dtype in ("uint16", "float32"):
            recipe = {"make": "array", "dtype": dtype, "then": [["masked", mask]]}
            cases.append(Case(id=f"array13/masked-{mask}-{dtype}", group="array", entry="session.run",
                              expect="InputError", match=r"masked array", recipe=recipe,
                              why=f"a numpy masked array ({dtype}, mask {mask}): the mask would be dropped"))
    cases.append(Case(id="array13/masked-diagonal-preprocess", group="preprocess", entry="preprocess",
                      expect="InputError", match=r"masked array",
                      recipe={"make": "array", "then": [["masked", "diagonal"]]},
                      kwargs={"spec": {"make": "spec", "spec": {}}},
                      why="preprocess() with a numpy masked array"))
    for name, changes, match in (
            ("linear-exact-width-1e-46", {"voi_function": "linear_exact", "window_width": 1e-46}, r"window_width"),
            ("linear-exact-width-1e-40", {"voi_function": "linear_exact", "window_width": 1e-40}, r"window_width"),
            ("linear-exact-width-5e-45", {"voi_function": "linear_exact", "window_width": 5e-45}, r"window_width"),
            ("rescale-slope-1e-46", {"rescale_slope": 1e-46}, r"rescale_slope"),
            ("linear-width-just-above-1-slope-1e36", {"voi_function": "linear", "window_width": 1.0 + 2 ** -20,
                                                       "rescale_slope": 1e36}, r"window_width")):
        cases.append(Case(id=f"array13/spec-{name}", group="array", entry="session.run", expect="InputError",
                          match=match, recipe={"make": "array"}, kwargs={"spec": {"make": "spec", "spec": changes}},
                          why=f"spec=session.spec.replace({changes}): positive in float64, 0 or overflowing in "
                              f"float32 (the kernel's precision)"))
    return cases


GROUPS: tuple[Callable, ...] = (_cases_padding, _cases_segmented_lut, _cases_jp2_boxes, _cases_deflate,
                                _cases_declared_lengths, _cases_offset_tables, _cases_enhanced, _cases_spacing,
                                _cases_float_and_bits)


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
        if entry == "session.stream" and form == "fileobj":
            form = "bytes"  # Session.stream takes paths, bytes and Datasets (a file object is an iterable of lines)
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
