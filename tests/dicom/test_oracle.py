"""Correctness oracle: SliceRT's grey levels (reader + native kernel, modality LUT -> VOI -> inversion,
identity geometry) against pydicom's own apply_modality_lut / apply_voi_lut / apply_color_lut /
convert_color_space, on real files.

Tolerance: |slicert - pydicom| <= ATOL on the [0, 1] output range. The kernel computes in float32
and pydicom in float64, so the difference is float32 rounding of values in [0, 1]: ATOL = 2e-6
(~ 17 float32 ulps at 1.0, 0.13 of a 16-bit grey level). The one documented exception is YBR -> RGB:
SliceRT uses exact integer arithmetic, pydicom float32, and they differ by one 8-bit level on 28 of
the 2^24 possible YCbCr triples (test_color.py checks SliceRT is the exact one), so YBR files allow
1/255 on at most 1e-5 of the samples.
"""
from __future__ import annotations

import numpy as np
import pydicom
import pytest

from engine import dicom

from .oracle import data_file, kernel_grey_levels, pydicom_reference

ATOL = 2e-6

# (file, what it covers)
ORACLE_FILES = [
    ("RG1_UNCR.dcm", "chest CR, MONOCHROME1, 15-bit, window"),
    ("RG1_J2KR.dcm", "chest CR, JPEG 2000 lossless"),
    ("RG3_UNCR.dcm", "extremity CR, MONOCHROME1, 10-bit"),
    ("RG3_J2KR.dcm", "extremity CR, JPEG 2000 lossless"),
    ("RG3_J2KI.dcm", "extremity CR, JPEG 2000 lossy"),
    ("US1_UNCR.dcm", "ultrasound RGB"),
    ("US1_J2KR.dcm", "ultrasound YBR_RCT (JPEG 2000 lossless)"),
    ("US1_J2KI.dcm", "ultrasound YBR_ICT (JPEG 2000 lossy)"),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "ultrasound grey, JPEG lossless SV1"),
    ("gdcm-US-ALOKA-16.dcm", "PALETTE COLOR, segmented 16-bit LUTs, implicit VR"),
    ("gdcm-US-ALOKA-16_big.dcm", "PALETTE COLOR, big endian"),
    ("OBXXXX1A_rle.dcm", "PALETTE COLOR, RLE"),
    ("vlut_04.dcm", "VOI LUT Sequence"),
    ("mlut_18.dcm", "Modality LUT Sequence, signed input, negative first mapped value"),
    ("CT_small.dcm", "rescale slope/intercept, signed, no window"),
    ("MR_small_bigendian.dcm", "explicit VR big endian"),
    ("image_dfl.dcm", "deflated explicit VR little endian"),
    ("SC_ybr_full_uncompressed.dcm", "YBR_FULL native"),
    ("SC_ybr_full_422_uncompressed.dcm", "YBR_FULL_422 native (subsampled)"),
    ("color-pl.dcm", "RGB planar configuration 1, non-square PixelAspectRatio"),
    ("SC_rgb_16bit.dcm", "RGB 16-bit"),
]


def _check(ours: np.ndarray, ref: np.ndarray, ybr: bool) -> None:
    assert ours.shape == ref.shape
    err = np.abs(ours.astype(np.float64) - ref)
    assert ref.max() > ref.min(), "reference image is constant: the comparison would prove nothing"
    if not ybr:
        assert err.max() <= ATOL, f"max error {err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)}"
    else:
        assert err.max() <= 1 / 255 + ATOL
        assert np.count_nonzero(err > ATOL) <= max(1, int(1e-5 * err.size))


@pytest.mark.parametrize("name,covers", ORACLE_FILES, ids=[n for n, _ in ORACLE_FILES])
def test_grey_levels_match_pydicom(name, covers):
    path = data_file(name)
    ds = pydicom.dcmread(path)
    s = dicom.read(path)
    assert isinstance(s, dicom.Slice)
    _check(kernel_grey_levels(s), pydicom_reference(ds), ybr="YBR" in s.source_photometric)


@pytest.mark.parametrize("frame", [0, 57, 119])
def test_echo_cine_ybr_full_422_jpeg_baseline(frame):
    path = data_file("color3d_jpeg_baseline.dcm")
    ds = pydicom.dcmread(path)
    seq = dicom.read(path)
    assert isinstance(seq, dicom.FrameSequence) and len(seq) == 120
    s = seq[frame]
    assert s.frame_index == frame and s.pixels.shape == (480, 640, 3)
    _check(kernel_grey_levels(s), pydicom_reference(ds, index=frame), ybr=True)


def test_multiframe_palette_frames_match_pydicom():
    path = data_file("OBXXXX1A_rle_2frame.dcm")
    ds = pydicom.dcmread(path)
    for i, s in enumerate(dicom.read(path)):
        _check(kernel_grey_levels(s), pydicom_reference(ds, index=i), ybr=False)


@pytest.mark.parametrize("stem", ["RG1", "RG3", "US1", "693", "MR2"])
def test_lossless_jpeg2000_decodes_identically_to_uncompressed(stem):
    unc = dicom.read(data_file(f"{stem}_UNCR.dcm"))
    j2k = dicom.read(data_file(f"{stem}_J2KR.dcm"))
    assert unc.pixels.dtype == j2k.pixels.dtype
    assert np.ptp(unc.pixels) > 0
    np.testing.assert_array_equal(unc.pixels, j2k.pixels)
    np.testing.assert_array_equal(kernel_grey_levels(unc), kernel_grey_levels(j2k))


@pytest.mark.parametrize("other", ["emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm",
                                   "emri_small_jpeg_ls_lossless.dcm", "emri_small_big_endian.dcm"])
def test_multiframe_codecs_decode_identically(other):
    ref = dicom.read(data_file("emri_small.dcm"))
    seq = dicom.read(data_file(other))
    assert len(seq) == len(ref) == 10
    for a, b in zip(ref, seq):
        np.testing.assert_array_equal(a.pixels, b.pixels)


def test_monochrome1_is_inverted_after_voi():
    """PS3.3 C.7.6.3.1.2: MONOCHROME1 inverts the VOI output. Inverting before the window would map
    the window's low edge to white instead of black: check the two differ on RG3 and ours is after."""
    s = dicom.read(data_file("RG3_UNCR.dcm"))
    ours = kernel_grey_levels(s)
    w = s.windows[0]
    x = s.pixels.astype(np.float64)
    c, width = w.center - 0.5, w.width - 1
    voi = np.clip((x - c) / width + 0.5, 0, 1)
    np.testing.assert_allclose(ours, 1 - voi, atol=ATOL, rtol=0)
    # inverting stored values first (x -> 1023 - x) then windowing is off by (1023 - 2c)/(w - 1) =
    # 0.074 of the range inside this (nearly centred) window: detectably different.
    wrong = np.clip((1023 - x - c) / width + 0.5, 0, 1)
    assert np.abs(wrong - ours).max() > 0.05
