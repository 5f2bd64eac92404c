"""engine.dicom.read: inputs, header interpretation, zero-copy views, lazy frames, byte orders."""
from __future__ import annotations

import copy
import io
import pathlib

import numpy as np
import pydicom
import pytest

from engine import dicom
from engine.errors import InputError, PixelLimitExceeded

from .oracle import data_file


def _group_0028(ds) -> dict:
    return {elem.keyword: copy.deepcopy(elem.value) for elem in ds if elem.tag.group == 0x0028}


def test_every_input_kind_reads_the_same_image():
    path = data_file("US1_UNCR.dcm")
    raw = pathlib.Path(path).read_bytes()
    ds = pydicom.dcmread(path)
    before = _group_0028(ds)
    with open(path, "rb") as fp:
        results = [dicom.read(path), dicom.read(pathlib.Path(path)), dicom.read(raw), dicom.read(bytearray(raw)),
                   dicom.read(memoryview(raw)), dicom.read(io.BytesIO(raw)), dicom.read(fp), dicom.read(ds)]
    first = results[0]
    assert first.pixels.shape == (480, 640, 3) and np.ptp(first.pixels) > 0
    for s in results[1:]:
        np.testing.assert_array_equal(s.pixels, first.pixels)
        assert (s.rows, s.columns, s.photometric, s.bits_stored) == (480, 640, "RGB", 8)
    assert results[0].source == path
    assert results[2].source == f"<{len(raw)} bytes>"
    # the caller's Dataset is never modified (pydicom's own apply_windowing writes to it)
    assert _group_0028(ds) == before


def test_chest_cr_header_is_interpreted():
    s = dicom.read(data_file("RG1_UNCR.dcm"))
    assert isinstance(s, dicom.Slice) and s.frame_index == 0 and s.number_of_frames == 1
    assert (s.rows, s.columns) == (1955, 1841) and s.pixels.shape == (1955, 1841)
    assert (s.bits_allocated, s.bits_stored, s.high_bit, s.pixel_representation) == (16, 15, 14, 0)
    assert s.photometric == s.source_photometric == "MONOCHROME1" and s.invert
    assert s.modality == "CR" and s.transfer_syntax_name == "Explicit VR Little Endian"
    assert s.windows == (dicom.Window(15000.0, 30000.0, ""),) and s.voi_lut_function == "LINEAR"
    assert s.modality_lut.kind == "identity" and s.value_range == (0.0, 32767.0)
    # RG1's PixelSpacing is 0\0: invalid (PS3.3 10.7.1.3), so no spacing, and the reason is recorded
    assert s.pixel_spacing_mm is None and s.spacing_source.startswith("none")
    assert any("PixelSpacing" in w and "not positive" in w for w in s.warnings)
    assert s.pixels.max() <= 2**15 - 1


def test_uncompressed_pixels_are_a_view_of_pixel_data_not_a_copy():
    ds = pydicom.dcmread(data_file("RG1_UNCR.dcm"))
    s = dicom.read(ds)
    buffer = np.frombuffer(ds.PixelData, dtype=np.uint8)
    assert np.shares_memory(s.pixels, buffer)
    assert not s.pixels.flags.writeable


def test_planar_configuration_1_reads_like_0_as_a_strided_view():
    px = dicom.read(data_file("color-px.dcm"))
    pl = dicom.read(data_file("color-pl.dcm"))
    assert (px.planar_configuration, pl.planar_configuration) == (0, 1)
    np.testing.assert_array_equal(pl.pixels, px.pixels)
    assert not pl.pixels.flags.c_contiguous  # a (3, H, W) plane stack viewed as (H, W, 3)
    # PixelAspectRatio 4\3 (vertical\horizontal): non-square pixels without a spacing
    assert pl.pixel_aspect_ratio == pytest.approx(4 / 3)


@pytest.mark.parametrize("little,big", [("MR_small.dcm", "MR_small_bigendian.dcm"),
                                        ("SC_rgb.dcm", "SC_rgb_expb.dcm"),
                                        ("SC_rgb_16bit.dcm", "SC_rgb_expb_16bit.dcm"),
                                        ("OBXXXX1A.dcm", "OBXXXX1A_expb.dcm")])
def test_big_endian_reads_like_little_endian_in_native_order(little, big):
    a, b = dicom.read(data_file(little)), dicom.read(data_file(big))
    assert b.transfer_syntax_name == "Explicit VR Big Endian"
    assert b.pixels.dtype.isnative and b.pixels.dtype == a.pixels.dtype
    np.testing.assert_array_equal(a.pixels, b.pixels)


def test_deflated_transfer_syntax():
    path = data_file("image_dfl.dcm")
    s = dicom.read(path)
    assert s.transfer_syntax_name == "Deflated Explicit VR Little Endian"
    np.testing.assert_array_equal(s.pixels, pydicom.dcmread(path).pixel_array)


def test_file_without_meta_header_is_read_with_inferred_syntax():
    s = dicom.read(data_file("OT-PAL-8-face.dcm"))  # no preamble, no File Meta: old ACR-NEMA style
    assert s.transfer_syntax_name == "Implicit VR Little Endian"
    assert s.source_photometric == "PALETTE COLOR" and s.pixels.shape == (480, 640, 3)


def test_multiframe_is_lazy_and_indexable():
    seq = dicom.read(data_file("color3d_jpeg_baseline.dcm"))
    assert isinstance(seq, dicom.FrameSequence)
    assert len(seq) == 120 and seq.number_of_frames == 120
    assert seq.frame_time_ms == pytest.approx(33.333)
    last = seq[-1]
    assert last.frame_index == 119
    np.testing.assert_array_equal(last.pixels, seq[119].pixels)
    with pytest.raises(IndexError):
        seq[120]
    with pytest.raises(TypeError):
        seq[1.5]


def test_frames_are_decoded_one_at_a_time(monkeypatch):
    """A spy on pydicom's per-frame codestream parse, which precedes every frame decode on both the
    random-access and the iterating path (the real decoder still runs), counts decoded frames."""
    from pydicom.pixels.decoders.base import DecodeRunner

    calls = []
    original = DecodeRunner._get_frame_info

    def spy(self, src):
        calls.append(len(src))
        return original(self, src)

    monkeypatch.setattr(DecodeRunner, "_get_frame_info", spy)
    seq = dicom.read(data_file("color3d_jpeg_baseline.dcm"))
    assert calls == []  # reading the header decodes nothing
    seq[5]
    assert len(calls) == 1
    it = iter(seq)
    frames = [next(it) for _ in range(3)]
    assert len(calls) == 4 and [f.frame_index for f in frames] == [0, 1, 2]


def test_iteration_yields_every_frame_once():
    seq = dicom.read(data_file("emri_small_jpeg_2k_lossless.dcm"))
    frames = list(seq)
    assert [f.frame_index for f in frames] == list(range(10))
    assert all(f.pixels.shape == (64, 64) for f in frames)
    # frames differ (it is a real series), and random access agrees with iteration
    assert not np.array_equal(frames[0].pixels, frames[9].pixels)
    np.testing.assert_array_equal(seq[7].pixels, frames[7].pixels)


def test_ultrasound_region_calibration():
    seq = dicom.read(data_file("color3d_jpeg_baseline.dcm"))
    regions = seq.ultrasound_regions
    assert len(regions) >= 1
    r = regions[0]
    assert r.units_x == r.units_y == "cm" and r.spatial_format == "2D"
    assert seq.pixel_spacing_mm == pytest.approx((r.physical_delta_y * 10, r.physical_delta_x * 10))
    assert seq.spacing_source.startswith("SequenceOfUltrasoundRegions")


def test_pixel_limit_is_enforced_before_decoding():
    path = data_file("RG1_J2KR.dcm")
    with pytest.raises(PixelLimitExceeded, match=r"RG1_J2KR\.dcm.*Rows \(0028,0010\).*3599155"):
        dicom.read(path, pixel_limit=3_000_000)
    assert dicom.read(data_file("RG1_UNCR.dcm"), pixel_limit=1955 * 1841).pixels.size == 1955 * 1841
    for bad in (0, -1, 1.5, True, "big"):
        with pytest.raises(InputError):
            dicom.read(path, pixel_limit=bad)


def test_wrong_input_type_is_an_input_error():
    with pytest.raises(InputError, match="expected a path, bytes"):
        dicom.read(12345)


def test_missing_path_raises_file_not_found():
    with pytest.raises(FileNotFoundError):
        dicom.read("/nonexistent/slice.dcm")


def test_bits_above_bits_stored_are_ignored_unsigned():
    """PS3.5 8.1.1: bits above BitsStored are not part of the value (old overlays lived there)."""
    ds = pydicom.dcmread(data_file("emri_small.dcm"))  # 16 allocated, 12 stored, unsigned
    clean = dicom.read(ds)[3].pixels.copy()
    all_frames = np.frombuffer(ds.PixelData, dtype="<u2").reshape(10, 64, 64)
    dirty = all_frames | np.uint16(0xA000)
    ds.PixelData = dirty.tobytes()
    seq = dicom.read(ds)
    np.testing.assert_array_equal(seq[3].pixels, clean)
    assert any("BitsStored 12" in w for w in seq.decode_warnings)  # recorded, not silent


def test_signed_values_are_sign_extended_from_bits_stored():
    ds = pydicom.dcmread(data_file("MR_small.dcm"))  # signed 16-bit
    values = np.clip(ds.pixel_array.astype(np.int32) - 1500, -2048, 2047).astype(np.int16)
    assert values.min() < 0 < values.max()
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = (values.view(np.uint16) & np.uint16(0x0FFF)).tobytes()  # no sign extension on disk
    s = dicom.read(ds)
    assert s.pixels.dtype == np.int16
    np.testing.assert_array_equal(s.pixels, values)


def test_rtdose_32bit_unsigned_is_exposed_as_int32():
    s = dicom.read(data_file("rtdose_1frame.dcm"))
    ref = pydicom.dcmread(data_file("rtdose_1frame.dcm")).pixel_array
    assert s.pixels.dtype == np.int32
    np.testing.assert_array_equal(s.pixels, ref.astype(np.int64))


def test_importing_engine_dicom_does_not_import_pydicom():
    import subprocess
    import sys

    code = "import sys, engine.dicom; assert 'pydicom' not in sys.modules, 'pydicom imported eagerly'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr


def test_decode_notes_are_exposed_on_single_frame_slices():
    ds = pydicom.dcmread(data_file("MR_small.dcm"))
    values = ds.pixel_array.astype(np.int16)
    ds.BitsStored, ds.HighBit = 14, 13
    ds.PixelData = (np.clip(values, 0, 8191).view(np.uint16) | np.uint16(0x8000)).tobytes()  # bit 15 set
    s = dicom.read(ds)
    assert s.pixels.min() >= 0 and s.pixels.max() <= 8191
    assert any("BitsStored 14" in w for w in s.decode_warnings)
