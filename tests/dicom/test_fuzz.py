"""Fuzzing real files: header values overwritten, bytes flipped, files truncated. The only acceptable
outcomes are a valid image (whose spec the kernel accepts) or a DicomError, within a time bound.

Examples per strategy: SLICERT_FUZZ_EXAMPLES (default 40; CI keeps the default, a fuzzing session
can raise it). Derandomized so CI is reproducible; set SLICERT_FUZZ_RANDOM=1 to explore new inputs.
"""
from __future__ import annotations

import io
import os
import pathlib
from datetime import timedelta
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import dicom
from engine.errors import DicomError
from engine.spec import PreprocessSpec

from .oracle import data_file

# Small real files covering every code path: native/big-endian, RLE, JPEG 2000, JPEG-LS, JPEG lossless,
# JPEG baseline YBR, palette, modality LUT, VOI LUT, multi-frame.
FILES = ["MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm",
         "emri_small_jpeg_ls_lossless.dcm", "SC_rgb_rle_2frame.dcm", "SC_rgb_jpeg_gdcm.dcm",
         "SC_ybr_full_422_uncompressed.dcm", "OBXXXX1A_rle.dcm", "mlut_18.dcm", "vlut_04.dcm",
         "JPEG2000.dcm", "examples_ybr_color.dcm", "gdcm-US-ALOKA-16.dcm", "US1_J2KR.dcm"]
EXAMPLES = int(os.environ.get("SLICERT_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=5), derandomize=os.environ.get("SLICERT_FUZZ_RANDOM") != "1",
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], database=None)
MODEL = PreprocessSpec(out_height=16, out_width=16, out_channels=1, resize="area")


@cache
def _file(name: str) -> tuple[bytes, tuple[tuple[int, int, str], ...], int, int]:
    """(bytes, header element (value offset, length, keyword), pixel data offset, pixel count)."""
    import pydicom

    data = pathlib.Path(data_file(name)).read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data))
    fields: list[tuple[int, int, str]] = []

    def collect(dataset) -> None:
        for tag, elem in dataset._dict.items():
            if tag == 0x7FE00010:
                continue
            offset = getattr(elem, "value_tell", None)
            length = getattr(elem, "length", 0)
            if elem.VR == "SQ" if hasattr(elem, "VR") else False:
                for item in dataset[tag].value:
                    collect(item)
            elif offset is not None and 0 < length < 0xFFFFFFFF:
                fields.append((offset, min(length, 64), str(pydicom.datadict.keyword_for_tag(tag) or tag)))

    collect(ds)
    pixel_offset = ds._dict[0x7FE00010].value_tell
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return data, tuple(fields), pixel_offset, ds.Rows * ds.Columns * frames


def _exercise(data: bytes, pixels: int) -> None:
    try:
        result = dicom.read(data, pixel_limit=4 * pixels)
        frames = [result] if isinstance(result, dicom.Slice) else [f for _, f in zip(range(3), result)]
    except DicomError as exc:
        assert str(exc).startswith("<"), exc  # names the source
        return
    from engine.preprocess import preprocess

    for s in frames:
        assert s.pixels.shape[:2] == (s.rows, s.columns)
        spec = s.spec_for(MODEL)  # anything the reader accepts must give a spec the kernel accepts
        out = preprocess(s.pixels, spec)
        assert np.isfinite(out).all()


@st.composite
def header_overwrite(draw):
    name = draw(st.sampled_from(FILES))
    data, fields, _, pixels = _file(name)
    offset, length, _keyword = draw(st.sampled_from(fields))
    special = {1: [b"\x00", b"\xff", b"9"], 2: [b"\x00\x00", b"\xff\xff", b"\x00\x80", b"\x01\x00", b"-1", b"0 "],
               4: [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"1e39", b"-0.0", b"NaN ", b"inf "]}
    value = draw(st.one_of(st.binary(min_size=length, max_size=length),
                           st.sampled_from(special.get(length, [bytes(length)]))))
    mutated = bytearray(data)
    mutated[offset:offset + length] = value
    return bytes(mutated), pixels


@st.composite
def byte_flips(draw):
    name = draw(st.sampled_from(FILES))
    data, _, pixel_offset, pixels = _file(name)
    mutated = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, pixel_offset + 16))  # header, and the pixel element's own header
        mutated[pos] ^= draw(st.integers(1, 255))
    return bytes(mutated), pixels


@st.composite
def truncations(draw):
    name = draw(st.sampled_from(FILES))
    data, _, _, pixels = _file(name)
    return data[: draw(st.integers(0, len(data) - 1))], pixels


@pytest.mark.timeout(300)
@FUZZ
@given(header_overwrite())
def test_fuzz_header_values(case):
    _exercise(*case)


@pytest.mark.timeout(300)
@FUZZ
@given(byte_flips())
def test_fuzz_byte_flips(case):
    _exercise(*case)


@pytest.mark.timeout(300)
@FUZZ
@given(truncations())
def test_fuzz_truncation(case):
    _exercise(*case)
