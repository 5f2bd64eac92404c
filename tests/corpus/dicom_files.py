"""Malformed DICOM derived from real pydicom test files (pydicom-data), never hand-written bytes.

Three generators, each applied systematically to several parents:
  * truncation: the parent cut at structural offsets (inside the preamble, the File Meta group, the
    data set, the Pixel Data element header, 1/4, 1/2, 3/4 of the pixel value, inside the last
    fragment); identical byte prefixes across parents are kept once;
  * header mutation: one attribute of the Image Pixel (PS3.3 C.7.6.3), Modality LUT (C.11.1), VOI
    LUT (C.11.2) or Palette (C.7.6.3.1.5) module set to a value the standard forbids or that
    contradicts the Pixel Data, or a transfer syntax this machine cannot decode;
  * payload damage: encapsulated fragments zeroed/garbled/cut, frame counts that disagree with the
    fragments, non-DICOM bytes (PNG, ZIP, ONNX, text, random) handed to the DICOM entry points.

Every case records what a correct reader must say: the DicomError subclass and a regex for the
attribute or condition at fault (PS3.3 keyword, "truncated", the transfer syntax name).
"""
from __future__ import annotations

import copy
import hashlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from tests.corpus.case import Case

# Parents: (file, what it exercises). All ship with pydicom / pydicom-data (offline).
CT = "CT_small.dcm"  # 16-bit signed CT with Rescale Slope/Intercept, explicit VR little endian
MR = "MR_small.dcm"  # 16-bit MR
BE = "MR_small_bigendian.dcm"  # explicit VR big endian
RGB = "SC_rgb.dcm"  # 8-bit RGB, uncompressed
MF = "emri_small.dcm"  # 10-frame MR, uncompressed
PAL = "OBXXXX1A.dcm"  # PALETTE COLOR
MLUT = "mlut_18.dcm"  # Modality LUT Sequence
VLUT = "vlut_04.dcm"  # VOI LUT Sequence
JPG = "SC_rgb_jpeg_dcmtk.dcm"  # JPEG baseline, YBR_FULL
JLL = "JPEG-LL.dcm"  # JPEG lossless
J2K = "JPEG2000.dcm"  # JPEG 2000
J2KR = "US1_J2KR.dcm"  # JPEG 2000 lossless, YBR_RCT colour
RLE = "MR_small_RLE.dcm"  # RLE lossless
RLEMF = "emri_small_RLE.dcm"  # 10-frame RLE
NO_PIXELS = "rtplan.dcm"  # an RT Plan: no image at all
REAL_TRUNCATED = "MR_truncated.dcm"  # pydicom's own truncated file

MULTI_FRAME = {MF, RLEMF}
ENCAPSULATED = {JPG, JLL, J2K, J2KR, RLE, RLEMF}
GREY = {CT, MR, BE, MF, MLUT, VLUT, JLL, J2K, RLE, RLEMF}

TRUNCATION_PARENTS = (CT, MR, BE, RGB, MF, PAL, JPG, JLL, J2K, J2KR, RLE, RLEMF)
PIXEL_MODULE_PARENTS = (CT, MR, BE, RGB, MF, JPG, RLE)
GREY_VOI_PARENTS = (CT, MR, BE, MF)

TRUNCATED = r"truncat"


def parent_path(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)  # never get_testdata_files(): it hangs offline
    if path is None:
        raise FileNotFoundError(f"pydicom test file {name} is not installed (pip install pydicom-data)")
    return Path(path)


# Mutations that make a single-frame parent multi-frame: those go through Session.stream.
FRAME_COUNT_MUTATIONS = {"number-of-frames-doubled", "more-frames-than-fragments"}


def _entry(parent: str, mutation: str = "") -> str:
    return "session.stream" if parent in MULTI_FRAME or mutation in FRAME_COUNT_MUTATIONS else "session.run"


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


# -- serialization helpers ------------------------------------------------------------------------
def _read(name: str):
    import pydicom

    return pydicom.dcmread(parent_path(name))


def _write(ds) -> bytes:
    """Preamble + File Meta + data set written like the original encoding, whatever the File Meta's
    Transfer Syntax UID now says (pydicom's save_as refuses a native Pixel Data under an
    encapsulated syntax; a corrupt file is exactly that)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    fp = DicomBytesIO()
    fp.write((ds.preamble or b"\0" * 128) + b"DICM")
    write_file_meta_info(fp, ds.file_meta, enforce_standard=False)
    fp.is_implicit_VR, fp.is_little_endian = ds.original_encoding
    write_dataset(fp, ds)
    return fp.getvalue()


def _raw(ds, keyword: str, vr: str, value: bytes | str) -> None:
    """Put `value` into the data set byte-for-byte, bypassing pydicom's value validation: the point
    is to write what the standard forbids."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    data = value.encode("latin-1") if isinstance(value, str) else value
    if len(data) % 2:
        data += b" " if isinstance(value, str) else b"\0"
    tag = Tag(keyword)
    implicit, little = ds.original_encoding if ds.original_encoding[0] is not None else (False, True)
    ds[tag] = RawDataElement(tag, vr, len(data), data, 0, implicit, little)


def _set_ts(ds, uid: str) -> None:
    _raw(ds.file_meta, "TransferSyntaxUID", "UI", uid.encode() + (b"\0" if len(uid) % 2 else b""))


# -- header mutations -------------------------------------------------------------------------------
Mutation = Callable[[object], None]


def _pixel_module_mutations(parent: str) -> Iterator[tuple[str, Mutation, str, str, str]]:
    """(name, mutate(ds), expected class, message regex, why)."""
    colour = parent not in GREY
    spp_wrong = 1 if colour else 3
    # A decoder cannot tell a wrong header from wrong data: for compressed parents, a message that
    # names the length/shape disagreement names the problem too.
    rows = r"Rows|length|shape" if parent in ENCAPSULATED else r"Rows"
    columns = r"Columns|length|shape" if parent in ENCAPSULATED else r"Columns"
    yield ("rows-zero", lambda ds: setattr(ds, "Rows", 0), "DicomError", r"Rows \(0028,0010\).*>= 1",
           "Rows = 0 (PS3.3 C.7.6.3: at least one row)")
    yield ("columns-zero", lambda ds: setattr(ds, "Columns", 0), "DicomError", r"Columns \(0028,0011\).*>= 1",
           "Columns = 0")
    yield ("rows-plus-one", lambda ds: setattr(ds, "Rows", ds.Rows + 1), "DicomError", rows,
           "Rows one larger than the Pixel Data holds")
    yield ("rows-minus-one", lambda ds: setattr(ds, "Rows", ds.Rows - 1), "DicomError", rows,
           "Rows one smaller than the Pixel Data holds")
    yield ("columns-doubled", lambda ds: setattr(ds, "Columns", ds.Columns * 2), "DicomError", columns,
           "Columns twice what the Pixel Data holds")
    yield ("rows-bad-binary", lambda ds: _raw(ds, "Rows", "US", b"\x01\x02\x03\x04\x05\x06"), "DicomError", r"Rows",
           "Rows (US, one value) holds three values")
    yield ("bits-allocated-12", lambda ds: setattr(ds, "BitsAllocated", 12), "DicomError", r"BitsAllocated",
           "BitsAllocated 12 (must be 1 or a multiple of 8)")
    yield ("bits-allocated-0", lambda ds: setattr(ds, "BitsAllocated", 0), "DicomError", r"BitsAllocated",
           "BitsAllocated 0")
    yield ("bits-stored-0", lambda ds: setattr(ds, "BitsStored", 0), "DicomError", r"BitsStored",
           "BitsStored 0")
    yield ("bits-stored-above-allocated", lambda ds: setattr(ds, "BitsStored", ds.BitsAllocated + 1), "DicomError",
           r"BitsStored", "BitsStored > BitsAllocated")
    yield ("pixel-representation-2", lambda ds: setattr(ds, "PixelRepresentation", 2), "DicomError",
           r"PixelRepresentation", "PixelRepresentation 2 (0 or 1 only)")
    yield ("samples-per-pixel-wrong", lambda ds: setattr(ds, "SamplesPerPixel", spp_wrong), "DicomError",
           r"SamplesPerPixel", f"SamplesPerPixel {spp_wrong} contradicts the photometric interpretation")
    yield ("samples-per-pixel-0", lambda ds: setattr(ds, "SamplesPerPixel", 0), "DicomError", r"SamplesPerPixel",
           "SamplesPerPixel 0")
    yield ("photometric-unknown", lambda ds: _raw(ds, "PhotometricInterpretation", "CS", "HSV_SPACE"), "DicomError",
           r"PhotometricInterpretation", "PhotometricInterpretation HSV_SPACE (not a defined term)")
    yield ("photometric-missing", lambda ds: delattr(ds, "PhotometricInterpretation"), "DicomError",
           r"PhotometricInterpretation", "PhotometricInterpretation removed (Type 1)")
    yield ("number-of-frames-text", lambda ds: _raw(ds, "NumberOfFrames", "IS", "ten"), "DicomError",
           r"NumberOfFrames", "NumberOfFrames 'ten' (IS)")
    yield ("number-of-frames-doubled", lambda ds: _raw(ds, "NumberOfFrames", "IS",
                                                        str(2 * int(ds.get("NumberOfFrames", 1) or 1))),
           "DicomError", r"NumberOfFrames|frame", "NumberOfFrames twice the frames present")
    yield ("pixel-limit-rows-columns", lambda ds: (setattr(ds, "Rows", 20000), setattr(ds, "Columns", 20000)),
           "PixelLimitExceeded", r"exceeds the configured limit", "20000 x 20000 pixels (above the 2^28 limit)")
    yield ("pixel-data-removed", lambda ds: delattr(ds, "PixelData"), "DicomError", r"PixelData.*missing",
           "Pixel Data element removed")
    yield ("pixel-data-empty", lambda ds: _raw(ds, "PixelData", "OB", b""), "DicomError",
           r"PixelData.*(empty|missing)", "Pixel Data element present with zero length")
    yield ("float-and-integer-pixel-data", lambda ds: _raw(ds, "FloatPixelData", "OF", b"\0" * 16), "DicomError",
           r"FloatPixelData|only one", "both Pixel Data and Float Pixel Data (PS3.3 C.7.6.3: one only)")
    if parent == BE:  # the syntaxes below are little endian: the body would be misread, not the pixels
        return
    yield ("transfer-syntax-unknown", lambda ds: _set_ts(ds, "1.2.3.4.5.6"), "UnsupportedTransferSyntax",
           r"TransferSyntaxUID.*1\.2\.3\.4\.5\.6", "Transfer Syntax UID that is no transfer syntax")
    yield ("transfer-syntax-mpeg2", lambda ds: _set_ts(ds, "1.2.840.10008.1.2.4.100"), "UnsupportedTransferSyntax",
           r"MPEG2", "MPEG2 video transfer syntax (no decoder)")
    yield ("transfer-syntax-hevc", lambda ds: _set_ts(ds, "1.2.840.10008.1.2.4.107"), "UnsupportedTransferSyntax",
           r"HEVC", "HEVC/H.265 transfer syntax (no decoder)")
    yield ("transfer-syntax-jpip", lambda ds: _set_ts(ds, "1.2.840.10008.1.2.4.94"), "UnsupportedTransferSyntax",
           r"JPIP", "JPIP referenced (pixels not in the file)")


def _grey_voi_mutations() -> Iterator[tuple[str, Mutation, str, str, str]]:
    def window(center: str, width: str, function: str | None = None) -> Mutation:
        def apply(ds) -> None:
            _raw(ds, "WindowCenter", "DS", center)
            _raw(ds, "WindowWidth", "DS", width)
            if function is not None:
                _raw(ds, "VOILUTFunction", "CS", function)
        return apply

    def rescale(slope: str, intercept: str = "0") -> Mutation:
        def apply(ds) -> None:
            _raw(ds, "RescaleSlope", "DS", slope)
            _raw(ds, "RescaleIntercept", "DS", intercept)
        return apply

    def without(keyword: str, then: Mutation) -> Mutation:
        def apply(ds) -> None:
            then(ds)
            delattr(ds, keyword)
        return apply

    yield ("rescale-slope-zero", rescale("0"), "DicomError", r"RescaleSlope", "Rescale Slope 0 (C.11.1.1.2)")
    yield ("rescale-slope-text", rescale("steep"), "DicomError", r"RescaleSlope", "Rescale Slope 'steep'")
    yield ("rescale-slope-nan", rescale("NaN"), "DicomError", r"RescaleSlope", "Rescale Slope NaN")
    yield ("rescale-slope-inf", rescale("inf"), "DicomError", r"RescaleSlope", "Rescale Slope inf")
    yield ("rescale-slope-huge", rescale("1e37"), "DicomError", r"RescaleSlope",
           "Rescale Slope 1e37 (beyond float32 after scaling)")
    yield ("rescale-slope-two-values", rescale("1\\2"), "DicomError", r"RescaleSlope", "Rescale Slope with 2 values")
    yield ("rescale-intercept-text", rescale("1", "minus"), "DicomError", r"RescaleIntercept",
           "Rescale Intercept 'minus'")
    yield ("rescale-intercept-huge", rescale("1", "1e38"), "DicomError", r"Rescale",
           "Rescale Intercept 1e38 (beyond float32)")
    yield ("window-width-zero", window("40", "0"), "DicomError", r"WindowWidth", "Window Width 0 (C.11.2.1.2.1)")
    yield ("window-width-negative", window("40", "-400"), "DicomError", r"WindowWidth", "Window Width -400")
    yield ("window-width-nan", window("40", "NaN"), "DicomError", r"WindowWidth", "Window Width NaN")
    yield ("window-center-text", window("middle", "400"), "DicomError", r"WindowCenter", "Window Center 'middle'")
    yield ("window-center-huge", window("1e35", "400"), "DicomError", r"WindowCenter", "Window Center 1e35")
    yield ("window-count-mismatch", window("40\\80", "400"), "DicomError", r"WindowWidth",
           "2 window centers, 1 width")
    yield ("window-center-without-width", without("WindowWidth", window("40", "400")), "DicomError", r"WindowWidth",
           "Window Center without Window Width")
    yield ("window-width-without-center", without("WindowCenter", window("40", "400")), "DicomError",
           r"WindowCenter", "Window Width without Window Center")
    yield ("voi-function-unknown", window("40", "400", "GAMMA"), "DicomError", r"VOILUTFunction",
           "VOI LUT Function GAMMA (C.11.2.1.3)")
    yield ("linear-exact-width-zero", window("40", "0", "LINEAR_EXACT"), "DicomError", r"WindowWidth",
           "LINEAR_EXACT with Window Width 0 (must be > 0)")
    yield ("sigmoid-width-half", window("40", "0.5", "SIGMOID"), "DicomError", r"WindowWidth",
           "SIGMOID with Window Width 0.5")


def _lut_mutations(seq_keyword: str) -> Iterator[tuple[str, Mutation, str, str, str]]:
    def item(fn: Callable) -> Mutation:
        def apply(ds) -> None:
            fn(ds[seq_keyword].value[0])
        return apply

    def descriptor(*values: int) -> Mutation:
        import struct

        return item(lambda it: _raw(it, "LUTDescriptor", "US", struct.pack(f"<{len(values)}H", *values)))

    def data_bytes(fn: Callable[[bytes], bytes]) -> Mutation:
        def apply(it) -> None:
            value = it["LUTData"].value
            raw = value if isinstance(value, bytes) else np.asarray(value, "<u2").tobytes()
            _raw(it, "LUTData", "OW", fn(raw))
        return item(apply)

    yield ("lut-descriptor-two-values", descriptor(4096, 0), "DicomError", r"LUTDescriptor",
           "LUT Descriptor with 2 values (needs 3)")
    yield ("lut-descriptor-bits-0", descriptor(4096, 0, 0), "DicomError", r"LUTDescriptor",
           "LUT Descriptor bits per entry 0")
    yield ("lut-descriptor-bits-17", descriptor(4096, 0, 17), "DicomError", r"LUTDescriptor",
           "LUT Descriptor bits per entry 17")
    yield ("lut-data-half", data_bytes(lambda b: b[:len(b) // 2]), "DicomError", r"LUTData",
           "LUT Data holds half the entries the descriptor announces")
    yield ("lut-data-removed", item(lambda it: delattr(it, "LUTData")), "DicomError", r"LUTData",
           "LUT Data removed")


def _palette_mutations() -> Iterator[tuple[str, Mutation, str, str, str]]:
    import struct

    def desc(colour: str, *values: int) -> Mutation:
        return lambda ds: _raw(ds, f"{colour}PaletteColorLookupTableDescriptor", "US",
                               struct.pack(f"<{len(values)}H", *values))

    yield ("palette-red-descriptor-removed", lambda ds: delattr(ds, "RedPaletteColorLookupTableDescriptor"),
           "DicomError", r"RedPaletteColorLookupTableDescriptor", "Red palette descriptor removed")
    yield ("palette-green-bits-12", desc("Green", 256, 0, 12), "DicomError", r"GreenPaletteColorLookupTable",
           "Green palette with 12 bits per entry (8 or 16 only)")
    yield ("palette-blue-descriptor-two-values", desc("Blue", 256, 0), "DicomError",
           r"BluePaletteColorLookupTableDescriptor", "Blue palette descriptor with 2 values")
    yield ("palette-red-data-short", lambda ds: _raw(ds, "RedPaletteColorLookupTableData", "OW",
                                                     ds.RedPaletteColorLookupTableData[:64]),
           "DicomError", r"RedPaletteColorLookupTableData", "Red palette data shorter than its descriptor")
    yield ("palette-green-data-removed", lambda ds: delattr(ds, "GreenPaletteColorLookupTableData"), "DicomError",
           r"GreenPaletteColorLookupTable", "Green palette data removed")


# -- encapsulated payload damage ---------------------------------------------------------------------
def _fragments(ds) -> list[bytes]:
    """The data fragments, without the Basic Offset Table item (PS3.5 A.4)."""
    from pydicom.encaps import generate_fragments

    items = list(generate_fragments(ds.PixelData))  # the first item is the Basic Offset Table
    return items[1:]


def _re_encapsulate(ds, fragments: list[bytes]) -> None:
    """Encapsulated Pixel Data (PS3.5 A.4): an empty Basic Offset Table item, then one item per
    fragment (even length). pydicom appends the Sequence Delimitation Item when writing."""
    item = b"\xfe\xff\x00\xe0"
    data = bytearray(item + bytes(4))
    for f in fragments:
        f = f + b"\0" * (len(f) % 2)
        data += item + len(f).to_bytes(4, "little") + f
    ds.PixelData = bytes(data)
    ds["PixelData"].is_undefined_length = True


def _payload_mutations(parent: str) -> Iterator[tuple[str, Mutation, str, str, str]]:
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(parent.encode()).digest()[:4], "little"))
    garbage_seed = int(rng.integers(1 << 31))

    def each_fragment(fn: Callable[[bytes], bytes]) -> Mutation:
        return lambda ds: _re_encapsulate(ds, [fn(f) for f in _fragments(ds)])

    def zero(f: bytes) -> bytes:
        return bytes(len(f))

    def garble(f: bytes) -> bytes:
        r = np.random.default_rng(garbage_seed)
        return r.integers(0, 256, len(f), dtype=np.uint8).tobytes()

    def garble_body(f: bytes) -> bytes:
        # keep the codec's header (first 1/8) so the decoder starts, then feed it garbage
        keep = min(len(f), max(16, len(f) // 8))
        r = np.random.default_rng(garbage_seed + 1)
        return f[:keep] + r.integers(0, 256, len(f) - keep, dtype=np.uint8).tobytes()

    def first_quarter(f: bytes) -> bytes:
        q = max(2, (len(f) // 4) & ~1)
        return f[:q]

    decode = r"PixelData.*(cannot be decoded|decoded to)"
    yield ("fragments-zeroed", each_fragment(zero), "DicomError", decode, "every fragment's bytes set to 0")
    yield ("fragments-random", each_fragment(garble), "DicomError", decode, "every fragment replaced by noise")
    yield ("fragments-body-garbled", each_fragment(garble_body), "DicomError", decode,
           "codestream header kept, body replaced by noise")
    yield ("fragments-cut-to-quarter", each_fragment(first_quarter), "DicomError", decode,
           "each fragment cut to its first quarter (sequence itself intact)")
    yield ("no-fragments", lambda ds: _re_encapsulate(ds, []), "DicomError", r"PixelData",
           "encapsulated Pixel Data with a Basic Offset Table and no fragment")
    if parent in (RLE, RLEMF):
        def replicate_overflow(f: bytes) -> bytes:
            # PS3.5 G.3.1: a control byte n in [-127, -1] repeats the next byte 1 - n times. 0x81 (-127)
            # as the first byte of segment 1 starts a 128-byte run; the decoder must bound-check it.
            first = int.from_bytes(f[4:8], "little")
            return f[:first] + b"\x81" + f[first + 1:]
        yield ("rle-segment-starts-with-128-byte-run", each_fragment(replicate_overflow), "DicomError", decode,
               "first RLE control byte changed to a 128-byte replicate run (overruns the segment)")
    if parent in MULTI_FRAME:
        yield ("more-frames-than-fragments", lambda ds: _raw(ds, "NumberOfFrames", "IS", str(ds.NumberOfFrames * 2)),
               "DicomError", r"NumberOfFrames", "NumberOfFrames twice the number of fragments")


# -- truncation -------------------------------------------------------------------------------------
def _truncation_offsets(data: bytes, parent: str) -> list[tuple[str, int]]:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    pixel = ds.get_item(0x7FE00010)
    value_start = pixel.value_tell
    meta_end = 132 + 12 + int(ds.file_meta.get("FileMetaInformationGroupLength", 0))
    n = len(data)
    body = n - value_start
    points = [("in-preamble", 100), ("after-dicm-prefix", 132), ("in-file-meta", (132 + meta_end) // 2),
              ("after-file-meta", meta_end), ("in-data-set", (meta_end + value_start) // 2),
              ("in-pixel-element-header", value_start - 6), ("pixel-value-1-byte", value_start + 1),
              ("pixel-value-quarter", value_start + body // 4), ("pixel-value-half", value_start + body // 2),
              ("pixel-value-three-quarters", value_start + 3 * body // 4)]
    if parent in ENCAPSULATED:
        points.append(("in-last-fragment", n - 9))  # 8-byte sequence delimiter + 1 byte of the last fragment
    else:
        points.append(("last-byte-missing", n - 1))
    return [(name, off) for name, off in points if 0 < off < n]


def _truncation_match(name: str) -> str:
    if name == "in-preamble":
        return r"not a DICOM file"
    return TRUNCATED


# -- foreign bytes ----------------------------------------------------------------------------------
def _foreign() -> Iterator[tuple[str, bytes, str, str]]:
    rng = np.random.default_rng(7)
    yield ("empty", b"", r"empty", "zero-byte file")
    yield ("png", b"\x89PNG\r\n\x1a\n" + rng.integers(0, 256, 600, dtype=np.uint8).tobytes(), r"not a DICOM",
           "a PNG signature followed by data")
    yield ("zip", b"PK\x03\x04" + bytes(200), r"not a DICOM", "a ZIP local header")
    yield ("text", b"patient: anonymous\nstudy: chest\n" * 20, r"not a DICOM", "a text file")
    yield ("json", b'{"Rows": 512, "Columns": 512, "PixelData": "AAAA"}', r"not a DICOM", "a JSON document")
    yield ("random-4k", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), r"not a DICOM", "4 KiB of noise")
    yield ("dicm-prefix-only", bytes(128) + b"DICM", r"truncat|missing|empty",
           "a preamble and 'DICM' and nothing else")
    yield ("dicm-prefix-then-noise", bytes(128) + b"DICM" + rng.integers(0, 256, 512, dtype=np.uint8).tobytes(),
           r"cannot be parsed|File Meta|TransferSyntax|truncat", "'DICM' followed by noise")
    yield ("pdf", b"%PDF-1.7\n" + bytes(300), r"not a DICOM", "a PDF header")
    yield ("group-0008-noise", b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" + rng.integers(0, 256, 300, dtype=np.uint8)
           .tobytes(), r"cannot be parsed|truncat|PixelData", "a raw data set start followed by noise")


# -- assembly -----------------------------------------------------------------------------------------
def generate(out: Path) -> list[Case]:
    """Write every DICOM case under out/dicom/ and return the cases."""
    import pydicom
    from pydicom import config

    folder = out / "dicom"
    folder.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    seen: dict[str, str] = {}
    forms = ("path", "bytes", "fileobj")

    def add(case_id: str, data: bytes, entry: str, expect: str, match: str, why: str, **kwargs) -> None:
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:  # the same bytes from another parent: one case is enough
            return
        seen[digest] = case_id
        rel = f"dicom/{case_id.split('/', 1)[1].replace('/', '__')}.dcm"
        (out / rel).write_bytes(data)
        form = kwargs.pop("form", forms[len(cases) % len(forms)])
        cases.append(Case(id=case_id, group="dicom", entry=entry, expect=expect, match=match, why=why, file=rel,
                          kwargs={"form": form, **kwargs}, native=False))

    saved = (config.settings.reading_validation_mode, config.settings.writing_validation_mode)
    config.settings.reading_validation_mode = config.settings.writing_validation_mode = config.IGNORE
    try:
        for parent in TRUNCATION_PARENTS:
            data = parent_path(parent).read_bytes()
            for name, off in _truncation_offsets(data, parent):
                add(f"dicom/{_stem(parent)}/truncated-{name}", data[:off], _entry(parent), "DicomError",
                    _truncation_match(name), f"{parent} cut at byte {off} of {len(data)} ({name})")

        def mutate(parent: str, items) -> None:
            base = _read(parent)
            for name, fn, expect, match, why in items:
                ds = copy.deepcopy(base)
                fn(ds)
                add(f"dicom/{_stem(parent)}/{name}", _write(ds), _entry(parent, name), expect, match,
                    f"{parent}: {why}", form=("path", "bytes", "dataset")[len(cases) % 3])

        for parent in PIXEL_MODULE_PARENTS:
            mutate(parent, _pixel_module_mutations(parent))
        for parent in GREY_VOI_PARENTS:
            mutate(parent, _grey_voi_mutations())
        mutate(MLUT, _lut_mutations("ModalityLUTSequence"))
        mutate(VLUT, _lut_mutations("VOILUTSequence"))
        mutate(PAL, _palette_mutations())
        for parent in sorted(ENCAPSULATED):
            mutate(parent, _payload_mutations(parent))

        add(f"dicom/{_stem(NO_PIXELS)}/as-is", parent_path(NO_PIXELS).read_bytes(), "session.run", "DicomError",
            r"PixelData.*missing", "an RT Plan: a valid DICOM object without an image")
        add(f"dicom/{_stem(REAL_TRUNCATED)}/as-is", parent_path(REAL_TRUNCATED).read_bytes(), "session.run",
            "DicomError", TRUNCATED, "pydicom's truncated MR test file")
        for name, data, match, why in _foreign():
            add(f"dicom/foreign/{name}", data, "session.run", "DicomError", match, why, form="path")

        # the reader's own arguments
        ct = parent_path(CT).read_bytes()
        add("dicom/CT_small/pixel-limit-below-image", ct, "dicom.read", "PixelLimitExceeded",
            r"16384 pixels exceeds the configured limit of 16383", "CT_small (128 x 128) read with pixel_limit=16383",
            pixel_limit=16383, form="path")
        for bad in (0, -1, True, 2.5, "1000"):
            cases.append(Case(id=f"dicom/CT_small/pixel-limit-arg-{bad!r}", group="dicom", entry="dicom.read",
                              expect="InputError", match=r"pixel_limit", why=f"pixel_limit={bad!r}",
                              file="dicom/" + _copy_once(out, CT), kwargs={"form": "path", "pixel_limit": bad}))
    finally:
        config.settings.reading_validation_mode, config.settings.writing_validation_mode = saved
    _ = pydicom  # imported for its config side effects only
    return cases


def _copy_once(out: Path, parent: str) -> str:
    name = f"parent__{parent}"
    target = out / "dicom" / name
    if not target.exists():
        target.write_bytes(parent_path(parent).read_bytes())
    return name
