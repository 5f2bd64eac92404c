"""The Image Pixel module (PS3.3 C.7.6.3): read it, check it is self-consistent, enforce the pixel limit.

Everything here is decided from the header alone, before a single byte of Pixel Data is decoded,
so a hostile or damaged file is refused before it can allocate memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.dicom.problems import fail
from engine.dicom.values import get_int, get_str, raw
from engine.errors import PixelLimitExceeded, UnsupportedTransferSyntax

# Default cap on Rows x Columns x Number of Frames: 2^28 pixels (a 16k x 16k single frame, or
# ~870 frames of 640x480 cine). Large enough for any projection radiograph or ultrasound loop,
# small enough that a damaged header cannot make the reader allocate tens of gigabytes.
DEFAULT_PIXEL_LIMIT = 1 << 28

GREY = ("MONOCHROME1", "MONOCHROME2")
COLOUR_3 = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420")
PALETTE = "PALETTE COLOR"


@dataclass(frozen=True)
class PixelModule:
    transfer_syntax_uid: str
    transfer_syntax_name: str
    encapsulated: bool
    little_endian: bool
    pixel_keyword: str
    rows: int
    columns: int
    number_of_frames: int
    samples_per_pixel: int
    photometric: str  # as written in the file
    planar_configuration: int
    bits_allocated: int
    bits_stored: int
    high_bit: int
    pixel_representation: int

    @property
    def is_grey(self) -> bool:
        return self.photometric in GREY


def read_pixel_module(ds: Any, source: str, pixel_limit: int, notes: list[str]) -> PixelModule:
    keywords = [kw for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if kw in ds]
    if not keywords:
        raise fail(source, "PixelData", "missing: the file is truncated or is not an image "
                                        f"(SOP Class {get_str(ds, 'SOPClassUID', source, '?')})")
    if len(keywords) > 1:
        raise fail(source, keywords[1], f"only one of {keywords} may be present (PS3.3 C.7.6.3)")
    pixel_keyword = keywords[0]
    if raw(ds, pixel_keyword, source) is None:
        raise fail(source, pixel_keyword, "element is present but empty (truncated file?)")

    ts_uid, ts_name, encapsulated, little = _transfer_syntax(ds, source)

    rows = get_int(ds, "Rows", source)
    columns = get_int(ds, "Columns", source)
    for keyword, value in (("Rows", rows), ("Columns", columns)):
        if value < 1:
            raise fail(source, keyword, f"must be >= 1, got {value}")
    frames = get_int(ds, "NumberOfFrames", source, default=1)
    if frames < 1:
        # pydicom also reads 0 as 1; it is a common writer bug for single-frame objects.
        notes.append(f"NumberOfFrames {frames} is invalid; assuming 1 frame")
        frames = 1

    total = rows * columns * frames
    if total > pixel_limit:
        raise fail(source, "Rows", f"{rows} x Columns {columns} x NumberOfFrames {frames} = {total} "
                                   f"pixels exceeds the configured limit of {pixel_limit} "
                                   f"(raise pixel_limit= to accept it)", PixelLimitExceeded)

    spp = get_int(ds, "SamplesPerPixel", source, default=1)
    photometric = (get_str(ds, "PhotometricInterpretation", source) or "").upper()
    if not photometric:
        raise fail(source, "PhotometricInterpretation", "required attribute is missing")
    if photometric in GREY or photometric == PALETTE:
        if spp != 1:
            raise fail(source, "SamplesPerPixel", f"must be 1 for {photometric}, got {spp}")
    elif photometric in COLOUR_3:
        if spp != 3:
            raise fail(source, "SamplesPerPixel", f"must be 3 for {photometric}, got {spp}")
    else:
        raise fail(source, "PhotometricInterpretation",
                   f"{photometric!r} is not supported (expected one of {GREY + COLOUR_3 + (PALETTE,)})")
    planar = get_int(ds, "PlanarConfiguration", source, default=0) if spp > 1 else 0
    if planar not in (0, 1):
        raise fail(source, "PlanarConfiguration", f"must be 0 or 1, got {planar}")

    if pixel_keyword == "PixelData":
        allocated = get_int(ds, "BitsAllocated", source)
    else:
        allocated = 32 if pixel_keyword == "FloatPixelData" else 64
    if allocated not in (1, 8, 16, 32, 64) and not (encapsulated and allocated % 8 == 0 and 0 < allocated <= 64):
        raise fail(source, "BitsAllocated", f"must be 1 or a multiple of 8 up to 64, got {allocated}")
    stored = get_int(ds, "BitsStored", source, default=allocated) if pixel_keyword == "PixelData" else allocated
    if not 1 <= stored <= allocated:
        raise fail(source, "BitsStored", f"must be in [1, BitsAllocated={allocated}], got {stored}")
    high_bit = get_int(ds, "HighBit", source, default=stored - 1)
    if pixel_keyword == "PixelData" and not stored - 1 <= high_bit <= allocated - 1:
        # PS3.5 8.1.1: the BitsStored bits end at HighBit inside a BitsAllocated-bit cell.
        raise fail(source, "HighBit", f"{high_bit} places BitsStored {stored} bits outside the BitsAllocated "
                                      f"{allocated}-bit cell: must be in [{stored - 1}, {allocated - 1}] "
                                      f"(PS3.5 8.1.1)")
    if high_bit != stored - 1:
        # PS3.5 8.1.1: the value sits in bits [HighBit - BitsStored + 1, HighBit]. Native data is
        # shifted down when decoded (frames.py); decoders of compressed syntaxes already return
        # right-aligned values (the codestream's precision is BitsStored), so their HighBit is moot.
        where = ("ignored: the codec returns right-aligned values" if encapsulated else
                 f"the stored value is read from bits {high_bit - stored + 1}-{high_bit} (PS3.5 8.1.1)")
        notes.append(f"HighBit {high_bit} != BitsStored - 1 = {stored - 1}: {where}")
    representation = get_int(ds, "PixelRepresentation", source, default=0)
    if representation not in (0, 1):
        raise fail(source, "PixelRepresentation", f"must be 0 (unsigned) or 1 (signed), got {representation}")

    return PixelModule(ts_uid, ts_name, encapsulated, little, pixel_keyword, rows, columns, frames, spp,
                       photometric, planar, allocated, stored, high_bit, representation)


def _transfer_syntax(ds: Any, source: str) -> tuple[str, str, bool, bool]:
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    uid = get_str(meta, "TransferSyntaxUID", source) if meta is not None else None
    if not uid:
        # Files without File Meta (old ACR-NEMA style) are always uncompressed: infer the syntax
        # from how pydicom actually parsed the data set.
        encoding = getattr(ds, "original_encoding", (None, None))
        table = {(True, True): ImplicitVRLittleEndian, (False, True): ExplicitVRLittleEndian,
                 (False, False): ExplicitVRBigEndian}
        inferred = table.get(tuple(encoding))
        pixel = ds.get("PixelData") if "PixelData" in ds else None
        if inferred is None or (pixel is not None and getattr(ds["PixelData"], "is_undefined_length", False)):
            raise fail(source, "TransferSyntaxUID", "missing from the File Meta Information and cannot be "
                                                    "inferred (compressed Pixel Data needs it)")
        uid = inferred
    uid = UID(uid)
    if not uid.is_transfer_syntax:
        raise fail(source, "TransferSyntaxUID", f"{str(uid)!r} is not a known transfer syntax",
                   UnsupportedTransferSyntax)
    return str(uid), uid.name, bool(uid.is_encapsulated), bool(uid.is_little_endian)
