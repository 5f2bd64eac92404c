"""Bad input is refused with a DicomError (or subclass) naming the source and the attribute."""
from __future__ import annotations

import io
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pydicom
import pytest

from engine import dicom
from engine.errors import DicomError, PixelLimitExceeded, UnsupportedTransferSyntax

from .oracle import data_file


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _refused(src, attribute: str, match: str = "", cls=DicomError) -> DicomError:
    with pytest.raises(cls) as info:
        seq = dicom.read(src)
        if isinstance(seq, dicom.FrameSequence):
            list(seq)
    msg = str(info.value)
    if isinstance(src, str):
        assert src in msg
    assert attribute in msg, msg
    assert match in msg, msg
    return info.value


def _mr(**attrs) -> pydicom.Dataset:
    ds = pydicom.dcmread(data_file("MR_small.dcm"))
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


@pytest.mark.parametrize("content", [b"", b"hello, this is not a DICOM file\n" * 20,
                                     b"\x89PNG\r\n\x1a\n" + bytes(300), os.urandom(2000)])
def test_not_dicom(tmp_path, content):
    path = tmp_path / "scan.dcm"
    path.write_bytes(content)
    _refused(str(path), "", "DICOM file")


@pytest.mark.parametrize("fraction", [0.004, 0.02, 0.5, 0.9999])
def test_truncated_uncompressed_file(tmp_path, fraction):
    data = pathlib.Path(data_file("MR_small.dcm")).read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: int(len(data) * fraction)])
    err = _refused(str(path), "")
    assert "truncated" in str(err) or "missing" in str(err)


def test_truncated_pixel_data_names_pixel_data():
    _refused(data_file("MR_truncated.dcm"), "PixelData (7FE0,0010)", "truncated")


@pytest.mark.parametrize("name", ["US1_J2KR.dcm", "emri_small_RLE.dcm"])
def test_truncated_compressed_file(tmp_path, name):
    data = pathlib.Path(data_file(name)).read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: len(data) * 3 // 4])
    _refused(str(path), "PixelData (7FE0,0010)", "truncated")


def test_missing_pixel_data():
    ds = _mr()
    del ds.PixelData
    _refused(ds, "PixelData (7FE0,0010)", "missing")
    _refused(data_file("rtplan.dcm"), "PixelData (7FE0,0010)", "not an image")


def test_bits_stored_greater_than_bits_allocated():
    _refused(_mr(BitsStored=17), "BitsStored (0028,0101)", "BitsAllocated=16")


@pytest.mark.parametrize("keyword", ["Rows", "Columns"])
def test_zero_rows_or_columns(keyword):
    _refused(_mr(**{keyword: 0}), f"{keyword} (0028,", "must be >= 1")


@pytest.mark.parametrize("attrs", [dict(Rows=65), dict(Rows=63), dict(Columns=128), dict(NumberOfFrames=2)])
def test_geometry_inconsistent_with_data_length(attrs):
    _refused(_mr(**attrs), "PixelData (7FE0,0010)", "needs")


def test_zero_padding_after_the_frames_is_accepted_with_a_note():
    # MR_small_padded.dcm: MR_small.dcm plus 128 zero bytes after the pixels; pydicom reads both alike
    padded, plain = dicom.read(data_file("MR_small_padded.dcm")), dicom.read(data_file("MR_small.dcm"))
    np.testing.assert_array_equal(padded.pixels, plain.pixels)
    assert padded.pixels.shape == (64, 64) and np.ptp(padded.pixels) > 0
    assert any("128 bytes of zero padding" in n for n in padded.decode_warnings)
    assert padded.spec_for(_model()).to_dict() == plain.spec_for(_model()).to_dict()


@pytest.mark.parametrize("pad", [b"\x01" * 128, b"\0" * 8192, b"\0" * 126 + b"\x07\0"])
def test_excess_pixel_data_that_is_not_padding_is_refused(pad):
    # non-zero bytes past the frames (Rows one too small looks like this), or a whole extra frame
    ds = _mr()
    ds.PixelData = ds.PixelData + pad
    _refused(ds, "PixelData (7FE0,0010)", "inconsistent")


def test_rows_one_too_small_is_still_refused():
    _refused(_mr(Rows=63), "PixelData (7FE0,0010)", "inconsistent")


def _model():
    from engine.spec import PreprocessSpec

    return PreprocessSpec(out_height=32, out_width=32)


@pytest.mark.parametrize("attrs,match", [
    (dict(WindowWidth=0.5), "must be >= 1 for LINEAR"),
    (dict(WindowWidth=0, VOILUTFunction="LINEAR_EXACT"), "must be > 0 for LINEAR_EXACT"),
    (dict(WindowWidth=0.9, VOILUTFunction="SIGMOID"), "must be >= 1 for SIGMOID"),
    (dict(WindowWidth=[400, 0], WindowCenter=[40, 40]), "value 1 is 0"),
])
def test_window_width_below_minimum(attrs, match):
    _refused(_mr(**attrs), "WindowWidth (0028,1051)", match)


def test_window_width_minimum_for_linear_exact_is_above_zero():
    assert dicom.read(_mr(WindowWidth=0.5, VOILUTFunction="LINEAR_EXACT")).windows[0].width == 0.5


@pytest.mark.parametrize("attrs,attribute", [
    (dict(VOILUTFunction="GAMMA"), "VOILUTFunction (0028,1056)"),
    (dict(WindowCenter=[1, 2], WindowWidth=[100]), "WindowWidth (0028,1051)"),
    (dict(RescaleSlope=0, RescaleIntercept=0), "RescaleSlope (0028,1053)"),
    (dict(RescaleSlope=1e35, RescaleIntercept=0), "RescaleSlope (0028,1053)"),
    (dict(PhotometricInterpretation="CMYK"), "PhotometricInterpretation (0028,0004)"),
    (dict(PhotometricInterpretation="RGB"), "SamplesPerPixel (0028,0002)"),
    (dict(PixelRepresentation=2), "PixelRepresentation (0028,0103)"),
    (dict(BitsAllocated=12), "BitsAllocated (0028,0100)"),
])
def test_invalid_header_values(attrs, attribute):
    _refused(_mr(**attrs), attribute)


def test_broken_lut_descriptors_and_data():
    ds = pydicom.dcmread(data_file("mlut_18.dcm"))
    ds.ModalityLUTSequence[0].LUTDescriptor = [4096, 0]
    _refused(ds, "LUTDescriptor (0028,3002)", "3 values")
    ds = pydicom.dcmread(data_file("vlut_04.dcm"))
    ds.VOILUTSequence[0].LUTData = ds.VOILUTSequence[0].LUTData[:100]
    _refused(ds, "LUTData (0028,3006)", "holds 100 entries")
    ds = pydicom.dcmread(data_file("OBXXXX1A.dcm"))
    del ds.GreenPaletteColorLookupTableDescriptor
    _refused(ds, "GreenPaletteColorLookupTableDescriptor (0028,1102)")


def test_unsupported_transfer_syntax():
    ds = pydicom.dcmread(data_file("MR_small_jp2klossless.dcm"))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    err = _refused(ds, "TransferSyntaxUID (0002,0010)", "MPEG2", UnsupportedTransferSyntax)
    assert "transcode" in str(err)
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5"
    _refused(ds, "TransferSyntaxUID (0002,0010)", "not a known transfer syntax", UnsupportedTransferSyntax)


def test_missing_decoder_names_the_package_to_install():
    """Run in a fresh interpreter where the JPEG 2000 plugins cannot be imported, as on a device
    installed without pylibjpeg-openjpeg (and without Pillow)."""
    code = textwrap.dedent(f"""
        import importlib.metadata as md
        import sys
        BLOCKED = ('openjpeg', 'PIL', 'gdcm')
        class Block:  # the modules cannot be imported...
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in BLOCKED:
                    raise ModuleNotFoundError('No module named ' + repr(name), name=name)
        sys.meta_path.insert(0, Block())
        entry_points = md.entry_points
        def without_blocked(**kw):  # ...and their plugin entry points are not registered
            return md.EntryPoints([e for e in entry_points(**kw) if e.value.replace(':', '.').split('.')[0] not in BLOCKED])
        md.entry_points = without_blocked
        from engine import dicom
        from engine.errors import UnsupportedTransferSyntax
        try:
            dicom.read({data_file("US1_J2KR.dcm")!r})
        except UnsupportedTransferSyntax as e:
            print('REFUSED', e)
        print(dicom.read({data_file("US1_UNCR.dcm")!r}).pixels.shape)  # uncompressed still reads
    """)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, check=False)
    assert "REFUSED" in out.stdout, out.stdout + out.stderr
    assert "TransferSyntaxUID (0002,0010)" in out.stdout
    assert "pylibjpeg-openjpeg" in out.stdout and "US1_J2KR.dcm" in out.stdout
    assert "(480, 640, 3)" in out.stdout


def test_corrupt_compressed_stream():
    # pydicom's JPEG-lossy.dcm is deliberately corrupt: no decoder accepts its scan header
    _refused(data_file("JPEG-lossy.dcm"), "PixelData (7FE0,0010)", "cannot be decoded")


def test_corrupt_frame_in_a_cine_fails_at_that_frame_only():
    ds = pydicom.dcmread(data_file("emri_small_RLE.dcm"))
    from pydicom.encaps import encapsulate, generate_frames

    frames = list(generate_frames(ds.PixelData, number_of_frames=10))
    frames[4] = frames[4][:10]  # an RLE header and nothing else
    ds.PixelData = encapsulate(frames)
    seq = dicom.read(ds)
    assert seq[3].pixels.shape == (64, 64)
    with pytest.raises(DicomError, match=r"PixelData \(7FE0,0010\): frame 4"):
        seq[4]


def test_fewer_compressed_frames_than_declared():
    ds = pydicom.dcmread(data_file("emri_small_RLE.dcm"))
    ds.NumberOfFrames = 12
    seq = dicom.read(ds)
    assert len(seq) == 12
    with pytest.raises(DicomError, match=r"PixelData \(7FE0,0010\)"):
        list(seq)


def test_absurd_size_is_refused_before_allocating():
    ds = _mr(Rows=65535, Columns=65535, NumberOfFrames=1000)
    err = _refused(ds, "Rows (0028,0010)", "exceeds the configured limit", PixelLimitExceeded)
    assert "4294836225000" in str(err)


def test_every_error_is_a_value_error_for_callers_that_catch_broadly():
    with pytest.raises(ValueError):
        dicom.read(b"not dicom at all" * 20)
    assert issubclass(UnsupportedTransferSyntax, DicomError) and issubclass(PixelLimitExceeded, DicomError)


def test_file_without_preamble_but_with_garbage_is_refused(tmp_path):
    path = tmp_path / "raw.dcm"
    path.write_bytes(b"\x08\x00\x05\x00" + bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8)))
    with pytest.raises(DicomError, match="raw.dcm"):
        dicom.read(str(path))


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_gdcm.dcm", "emri_small_jpeg_ls_lossless.dcm",
                                  "JPGLosslessP14SV1_1s_1f_8b.dcm", "US1_J2KR.dcm", "examples_ybr_color.dcm"])
def test_codestream_size_is_read_before_decoding(name):
    from pydicom.encaps import get_frame

    from engine.dicom.codestream import declared_size

    ds = pydicom.dcmread(data_file(name))
    frame = get_frame(ds.PixelData, 0, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1))
    assert declared_size(frame) == (ds.Rows, ds.Columns)


def test_oversized_codestream_is_refused_without_decoding(monkeypatch):
    """A frame whose header declares more pixels than Rows x Columns never reaches the decoder."""
    from pydicom.encaps import encapsulate, get_frame
    from pydicom.pixels.decoders.base import DecodeRunner

    ds = pydicom.dcmread(data_file("US1_J2KR.dcm"))
    frame = bytearray(get_frame(ds.PixelData, 0, number_of_frames=1))
    siz = frame.find(b"\xff\x4f\xff\x51") + 4
    frame[siz + 4:siz + 12] = (60000).to_bytes(4, "big") + (60000).to_bytes(4, "big")  # Xsiz, Ysiz
    ds.PixelData = encapsulate([bytes(frame)])
    decoded = []
    monkeypatch.setattr(DecodeRunner, "_decode_frame", lambda self, src: decoded.append(src))
    _refused(ds, "PixelData (7FE0,0010)", "declares 60000 x 60000 pixels")
    assert decoded == []


def test_concurrent_reads_leave_warning_filters_intact():
    """catch_warnings swaps process-global state; concurrent reads must not leave it replaced."""
    import threading
    import warnings

    before_filters, before_hook = list(warnings.filters), warnings.showwarning
    paths = [data_file(n) for n in ("MR_small.dcm", "SC_rgb_jpeg.dcm", "US1_J2KR.dcm", "badVR.dcm")]
    errors: list[BaseException] = []

    def work(path):
        for _ in range(5):
            try:
                dicom.read(path)
            except DicomError:
                pass
            except BaseException as exc:  # noqa: BLE001 - any other exception fails the test below
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in paths * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert warnings.filters == before_filters and warnings.showwarning is before_hook


def _re_encapsulated(name: str, change) -> pydicom.Dataset:
    from pydicom.encaps import encapsulate, generate_frames

    ds = pydicom.dcmread(data_file(name))
    n = int(ds.get("NumberOfFrames", 1) or 1)
    ds.PixelData = encapsulate([change(f) for f in generate_frames(ds.PixelData, number_of_frames=n)])
    return ds


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "emri_small_RLE.dcm"])
def test_rle_decoder_panic_becomes_dicom_error(name):
    """pylibjpeg-rle is Rust: a replicate run past the end of a segment panics, and pyo3's
    PanicException derives from BaseException. It must still reach the caller as a DicomError."""
    def overrun(frame: bytes) -> bytes:
        first = int.from_bytes(frame[4:8], "little")  # PS3.5 G.3.1: offset of segment 1
        return frame[:first] + b"\x81" + frame[first + 1:]  # 0x81: repeat the next byte 128 times

    err = _refused(_re_encapsulated(name, overrun), "PixelData (7FE0,0010)", "frame 0: cannot be decoded")
    assert "PanicException" in str(err) and "Rows" in str(err)


def test_rle_with_one_row_fewer_than_encoded_is_refused():
    ds = pydicom.dcmread(data_file("MR_small_RLE.dcm"))
    ds.Rows -= 1
    _refused(ds, "PixelData (7FE0,0010)", "Rows 63")


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "JPEG-LL.dcm", "emri_small_jpeg_ls_lossless.dcm",
                                  "US1_J2KR.dcm", "emri_small_jpeg_2k_lossless.dcm"])
def test_truncated_codestream_is_refused_not_decoded_short(name):
    """libjpeg decodes a JPEG cut short without complaint (the missing rows come back as garbage);
    every JPEG-family frame must end with its FF D9 end marker."""
    def half(frame: bytes) -> bytes:
        return frame[: (len(frame) // 2) & ~1]

    _refused(_re_encapsulated(name, half), "PixelData (7FE0,0010)", "no end-of-image marker")


@pytest.mark.parametrize("frame, complete", [
    (b"\xff\xd8\x01\x02\xff\xd9", True),
    (b"\xff\xd8\x01\xff\xd9\x00", True),  # PS3.5 A.4 pad byte
    (b"\xff\xd8\x01\xff\xd9\xff", True),  # 0xFF pad, as in pydicom-data's JPEG-LL.dcm / US1_J2KR.dcm
    (b"\xff\xd8\x01\x02\x03\x04", False),
    (b"\xff\xd8\x01\xff\x00\x00", False),  # stuffed FF 00 then a pad byte: entropy data, not EOI
    (b"\xff\xd9\x01\x02", False),
])
def test_end_marker_detection(frame, complete):
    from engine.dicom.codestream import has_end_marker

    assert has_end_marker(frame) is complete


def test_truncated_between_elements_says_truncated_and_where():
    """Cut inside the data set, between two elements: pydicom reports 'No tag to read' (OSError)."""
    data = pathlib.Path(data_file("US1_J2KR.dcm")).read_bytes()
    err = _refused(data[:883], "", "file is truncated (ends at byte 883")
    assert "cannot be parsed" not in str(err)
