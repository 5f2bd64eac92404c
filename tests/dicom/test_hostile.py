"""Root causes of issue 13 (independent attack corpus): resource bombs refused before the expensive
step, values the file states in places the reader did not look (Enhanced multi-frame functional
groups), offset tables, absurd spacing, and values that vanish in float32."""
from __future__ import annotations

import io
import pathlib
import struct

import numpy as np
import pydicom
import pytest

from engine import dicom
from engine.dicom import color
from engine.errors import DicomError
from tests.corpus.hostile_dicom import segmented_lut_words, with_segmented_palette

from .oracle import data_file


def _bytes(ds) -> bytes:
    from tests.corpus.dicom_files import _write

    return _write(ds)


# -- segmented palette LUT fan-out (PS3.3 C.7.9.2) ---------------------------------------------------
@pytest.mark.parametrize("fan_out,layers,leaf,bits", [(20, 8, "discrete0", 16), (8, 8, "linear0", 16),
                                                      (6, 6, "discrete0", 8), (40, 4, "indirect0", 16)])
def test_segmented_lut_fan_out_is_bounded(monkeypatch, fan_out, layers, leaf, bits):
    calls = []
    original = color._expand_segments

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(color, "_expand_segments", counting)
    words = segmented_lut_words(fan_out, layers, leaf, bits)
    ramp = [0, 1, 0, 1, 255, (1 << bits) - 1]
    ds = with_segmented_palette((ramp, words, ramp), bits)
    with pytest.raises(DicomError, match=r"SegmentedGreenPaletteColorLookupTableData \(0028,1222\).*"
                                         r"(fan-out|nest too deeply)"):
        dicom.read(_bytes(ds))
    # fan_out ** layers expansions naively (up to 2.6e10); the budget allows 4 x (data + entries)
    assert len(calls) <= 4 * (len(words) + 256) + 64 + 2, len(calls)


def test_segmented_lut_valid_indirect_segment_still_expands():
    # discrete 0; linear to 30000 over 127; replay that linear segment (now from 30000 to 30000: flat)
    nested = [0, 1, 0, 1, 127, 30000, 2, 1, 6, 0, 1, 128, 65535]
    table = color._segmented(struct.pack(f"<{len(nested)}H", *nested), 256, 16, True, "x", "k")
    lin = np.around(np.linspace(30000 / 127, 30000, 127))
    want = np.concatenate([[0], lin, np.full(127, 30000), [round(30000 + 35535 / 128)]])  # ramp starts at 255
    np.testing.assert_array_equal(table, want[:256])


# -- JPEG 2000: the size is found inside JP2 boxes, before decoding -------------------------------------
def _j2k_with(fn) -> pydicom.Dataset:
    from tests.corpus.dicom_files import _fragments, _re_encapsulate

    ds = pydicom.dcmread(data_file("JPEG2000.dcm"))
    _re_encapsulate(ds, [fn(f) for f in _fragments(ds)])
    return ds


def test_jp2_wrapper_with_a_large_box_first_decodes_like_the_raw_codestream():
    from tests.corpus.hostile_dicom import _box, jp2_wrap

    big = _box(b"xml ", b"<a>" + b"x" * 20000 + b"</a>")
    wrapped = dicom.read(_bytes(_j2k_with(lambda f: jp2_wrap(f, before=big))))
    plain = dicom.read(data_file("JPEG2000.dcm"))
    np.testing.assert_array_equal(wrapped.pixels, plain.pixels)


@pytest.mark.parametrize("rows,columns,ihdr", [(60000, 60000, None), (1024, 256, (50000, 50000)),
                                               (1024, 70000, None)])
def test_jp2_declared_size_is_checked_before_the_decoder_runs(monkeypatch, rows, columns, ihdr):
    from pydicom.pixels.decoders.base import DecodeRunner

    from tests.corpus.hostile_dicom import _box, jp2_wrap, set_siz

    def never(*args, **kwargs):
        raise AssertionError("the decoder ran")

    monkeypatch.setattr(DecodeRunner, "decode", never)
    big = _box(b"uuid", bytes(16) + bytes(9000))
    ds = _j2k_with(lambda f: jp2_wrap(set_siz(f, rows, columns), before=big, ihdr_size=ihdr))
    with pytest.raises(DicomError, match=r"PixelData \(7FE0,0010\): frame 0: the codestream declares"):
        dicom.read(_bytes(ds))


def test_size_statements_walk_boxes_and_refuse_broken_ones():
    from pydicom.encaps import get_frame

    from engine.dicom.codestream import size_statements
    from tests.corpus.hostile_dicom import _box, jp2_wrap

    raw = get_frame(pydicom.dcmread(data_file("JPEG2000.dcm")).PixelData, 0, number_of_frames=1)
    found = size_statements(jp2_wrap(raw, before=_box(b"free", bytes(5000), extended=True)))
    assert [(s.rows, s.columns, s.components) for s in found] == [(1024, 256, 1)] * 2
    assert [s.where for s in found] == ["JP2 image header box (ihdr)", "JPEG 2000 SIZ in the JP2 'jp2c' box"]
    for broken in (jp2_wrap(raw)[:40],  # cut inside the header superbox
                   jp2_wrap(raw, before=struct.pack(">I4s", 4, b"bad!")),  # LBox below its own header
                   b"\r\n\x87\n" + raw):  # what openjpeg takes for JP2 without the signature box
        with pytest.raises(ValueError):
            size_statements(broken)


# -- declared lengths against the file, before pydicom reads ----------------------------------------
def _with_private_element(name: str, length: int) -> bytes:
    from tests.corpus.hostile_dicom import _offset_of

    data = pathlib.Path(data_file(name)).read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data))
    at = _offset_of(data, ds, next(e for e in ds if e.tag.group > 0x0008).tag)
    return data[:at] + struct.pack("<HH2sHI", 0x0009, 0x1001, b"OB", 0, length) + data[at:]


@pytest.mark.parametrize("form", ["path", "bytes", "bytesio", "file"])
def test_element_declaring_4_gib_is_refused_by_name(tmp_path, form):
    data = _with_private_element("CT_small.dcm", 0xFFFFFFF0)
    path = tmp_path / "private.dcm"
    path.write_bytes(data)
    buf = io.BytesIO(data)
    with open(path, "rb") as fp:
        src = {"path": str(path), "bytes": data, "bytesio": buf, "file": fp}[form]
        with pytest.raises(DicomError, match=r"\(0009,1001\): element declares 4294967280 bytes but only \d+ "
                                             r"remain in the file"):
            dicom.read(src)
    buf.write(b"still writable")  # the prescan released its view of the caller's buffer


def test_prescan_passes_every_valid_test_file_through_unchanged():
    # the same pixels as pydicom for files of each encoding, compressed ones included
    for name in ("CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                 "emri_small_RLE.dcm", "rtdose.dcm", "liver.dcm"):
        ds = pydicom.dcmread(data_file(name))
        if "PixelData" not in ds or ds.get("BitsAllocated") == 1:
            continue
        img = dicom.read(data_file(name))
        first = img if hasattr(img, "pixels") else img[0]
        ref = ds.pixel_array if int(ds.get("NumberOfFrames", 1) or 1) == 1 else ds.pixel_array[0]
        if first.is_color:
            continue  # colour conversion is checked in test_color
        np.testing.assert_array_equal(first.pixels, ref)


def test_sequences_nested_beyond_the_limit_are_refused():
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from engine.dicom.prescan import MAX_DEPTH

    ds = pydicom.dcmread(data_file("MR_small.dcm"))
    inner = Dataset()
    for _ in range(MAX_DEPTH + 5):
        outer = Dataset()
        outer.ReferencedImageSequence = Sequence([inner])
        inner = outer
    ds.ReferencedImageSequence = inner.ReferencedImageSequence
    with pytest.raises(DicomError, match=r"ReferencedImageSequence \(0008,1140\): sequences nest deeper"):
        dicom.read(_bytes(ds))


# -- the Deflated transfer syntax: bounded inflation --------------------------------------------------
def test_deflated_test_file_reads_like_pydicom():
    ds = pydicom.dcmread(data_file("image_dfl.dcm"))
    img = dicom.read(data_file("image_dfl.dcm"))
    assert img.transfer_syntax_uid == "1.2.840.10008.1.2.1.99"
    np.testing.assert_array_equal(img.pixels, ds.pixel_array)


def test_deflated_ct_keeps_its_header():
    from tests.corpus.hostile_dicom import _explicit_le, _read, deflated_file

    img = dicom.read(deflated_file(_explicit_le(_read("CT_small.dcm"))))
    ref = dicom.read(data_file("CT_small.dcm"))
    np.testing.assert_array_equal(img.pixels, ref.pixels)
    assert (img.rescale_intercept, img.windows, img.pixel_spacing_mm) == (ref.rescale_intercept, ref.windows,
                                                                          ref.pixel_spacing_mm)


@pytest.mark.parametrize("where,peak_mib", [("trailer", 8), ("header", 200), ("pixels", 8)])
def test_deflate_bomb_is_refused_within_a_memory_bound(where, peak_mib):
    import tracemalloc

    from tests.corpus.hostile_dicom import GIB, MIB, Zeros, _element, _explicit_le, _read, deflated_file

    head, pixel, tail = _explicit_le(_read("CT_small.dcm"))
    parts = {"trailer": [head, pixel, _element(0xFFFC, 0xFFFC, b"OB", 3 * GIB // 2), Zeros(3 * GIB // 2)],
             "header": [head, _element(0x0029, 0x1010, b"OB", 300 * MIB), Zeros(300 * MIB), pixel, tail],
             "pixels": [head, _element(0x7FE0, 0x0010, b"OW", GIB), Zeros(GIB)]}[where]
    data = deflated_file(parts)
    assert len(data) < 2 * MIB  # inflates to 0.3-1.5 GiB
    tracemalloc.start()
    try:
        with pytest.raises(DicomError, match=r"PixelData \(7FE0,0010\): the Deflated data set inflates beyond"):
            dicom.read(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < peak_mib * MIB, f"{peak / MIB:.1f} MiB"


# -- Basic / Extended Offset Tables are checked before they locate frames -----------------------------
def _emri_with_tables(name: str, basic, extended=None):
    from tests.corpus.hostile_dicom import _frames_of, encapsulate

    ds = pydicom.dcmread(data_file(name))
    frames = _frames_of(ds)
    sizes = [len(f) + len(f) % 2 for f in frames]
    right = [sum(8 + s for s in sizes[:i]) for i in range(len(frames))]
    lengths = [len(f) for f in frames]
    encapsulate(ds, [[f] for f in frames], basic=basic(right), extended=None if extended is None else
                extended(right, lengths))
    return _bytes(ds)


def _swap23(x):
    x = list(x)
    x[2], x[3] = x[3], x[2]
    return x


@pytest.mark.parametrize("name", ["emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm"])
@pytest.mark.parametrize("basic,extended,note", [
    (lambda r: [0] * len(r), None, "Basic Offset Table entries 0 and 1 (0, 0) do not increase"),
    (_swap23, None, "Basic Offset Table entries 2 and 3"),
    (lambda r: r[:5], None, "Basic Offset Table has 5 entries for NumberOfFrames 10"),
    (lambda r: r[:4] + [r[4] + 2] + r[5:], None, "entry 4"),
    (lambda r: [], lambda r, n: (_swap23(r), n), "Extended Offset Table entries 2 and 3"),
    (lambda r: [], lambda r, n: (r, n[1:] + n[:1]), "Extended Offset Table length 0"),
    (lambda r: [], lambda r, n: ([0] * len(r), n), "Extended Offset Table entries 0 and 1"),
])
def test_broken_offset_tables_never_return_another_frame(name, basic, extended, note):
    from pydicom.pixels import pixel_array

    seq = dicom.read(_emri_with_tables(name, basic, extended))
    want = pixel_array(data_file(name))
    for i in (3, 2, 9, 0):  # random access: each frame located on its own
        np.testing.assert_array_equal(seq[i].pixels, want[i])
    np.testing.assert_array_equal(np.stack([s.pixels for s in seq]), want)  # and in order
    assert any(note in n for n in seq.decode_warnings), seq.decode_warnings


def test_valid_offset_tables_are_used_without_a_note():
    from pydicom.pixels import pixel_array

    seq = dicom.read(_emri_with_tables("emri_small_RLE.dcm", lambda r: r))
    np.testing.assert_array_equal(seq[7].pixels, pixel_array(data_file("emri_small_RLE.dcm"))[7])
    seq = dicom.read(_emri_with_tables("emri_small_RLE.dcm", lambda r: [], lambda r, n: (r, n)))
    np.testing.assert_array_equal(seq[5].pixels, pixel_array(data_file("emri_small_RLE.dcm"))[5])
    assert not any("Offset Table" in n for n in seq.decode_warnings)


# -- Enhanced multi-frame: rescale, VOI and spacing from the functional groups ------------------------
def test_enhanced_ct_shared_groups_give_the_classic_grey_levels():
    from tests.corpus.hostile_dicom import classic_reference

    from .oracle import kernel_grey_levels, pydicom_reference

    ds = pydicom.dcmread(data_file("eCT_Supplemental.dcm"))
    assert "RescaleIntercept" not in ds  # only in SharedFunctionalGroupsSequence
    seq = dicom.read(data_file("eCT_Supplemental.dcm"))
    assert (seq.rescale_intercept, seq.rescale_slope) == (-1024.0, 1.0)
    assert seq.windows == (dicom.Window(49.0, 102.0),)
    assert seq.pixel_spacing_mm == (0.388672, 0.388672) and "Shared Functional Groups" in seq.spacing_source
    classic = classic_reference(ds)
    for i, frame in enumerate(seq):
        assert frame.info.modality_lut.intercept == -1024.0
        ref = pydicom_reference(classic, index=i)  # pydicom's chain on the classic form of the same frame
        np.testing.assert_allclose(kernel_grey_levels(frame), ref, atol=2e-6, rtol=1e-5)


def test_enhanced_per_frame_values_apply_to_their_frame_only():
    from engine.errors import InputError
    from engine.spec import PreprocessSpec
    from tests.corpus.hostile_dicom import enhanced_ct

    ds = enhanced_ct(per_frame=[{}, {"PixelValueTransformationSequence": {"RescaleIntercept": "0", "RescaleSlope": "2"},
                                     "FrameVOILUTSequence": {"WindowCenter": "1000", "WindowWidth": "400",
                                                             "VOILUTFunction": "SIGMOID"},
                                     "PixelMeasuresSequence": {"PixelSpacing": ["0.5", "0.25"]}}])
    del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    ds.PerFrameFunctionalGroupsSequence[0].PixelValueTransformationSequence = pydicom.Sequence([pydicom.Dataset()])
    item = ds.PerFrameFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    item.RescaleIntercept, item.RescaleSlope = "-1024", "1"
    seq = dicom.read(_bytes(ds))
    f0, f1 = seq[0], seq[1]
    assert (f0.rescale_slope, f0.rescale_intercept, f0.windows[0].width, f0.pixel_spacing_mm) == \
        (1.0, -1024.0, 102.0, (0.388672, 0.388672))
    assert (f1.rescale_slope, f1.rescale_intercept, f1.windows[0].center, f1.voi_lut_function) == \
        (2.0, 0.0, 1000.0, "SIGMOID")
    assert f1.pixel_spacing_mm == (0.5, 0.25) and "Per-frame" in f1.spacing_source
    assert [s.rescale_slope for s in seq] == [1.0, 2.0]  # iteration too
    model = PreprocessSpec(out_height=16, out_width=16)
    assert f1.spec_for(model).rescale_slope == 2.0 and f1.spec_for(model).voi_function == "sigmoid"
    assert seq.frames_differ
    with pytest.raises(InputError, match="use seq\\[i\\].spec_for"):
        seq.spec_for(model)


@pytest.mark.parametrize("per_frame,shared,match", [
    (None, {"PixelValueTransformationSequence": {"RescaleSlope": "0", "RescaleIntercept": "0"}},
     r"SharedFunctionalGroupsSequence > PixelValueTransformationSequence: RescaleSlope \(0028,1053\): must be non-zero"),
    ([{}, {"FrameVOILUTSequence": {"WindowCenter": "40", "WindowWidth": "0.5"}}], None,
     r"PerFrameFunctionalGroupsSequence item 1 > FrameVOILUTSequence: WindowWidth \(0028,1051\)"),
])
def test_bad_values_in_functional_groups_are_refused_with_their_path(per_frame, shared, match):
    from tests.corpus.hostile_dicom import enhanced_ct

    with pytest.raises(DicomError, match=match):
        dicom.read(_bytes(enhanced_ct(per_frame=per_frame, shared=shared)))


def test_enhanced_mr_without_functional_groups_reads_as_before():
    seq = dicom.read(data_file("emri_small.dcm"))  # Enhanced MR Image Storage, no functional groups kept
    assert not seq.frames_differ and seq.modality_lut.kind == "identity"


# -- float32 terms, float pixel data, HighBit, masked arrays ----------------------------------------------
@pytest.mark.parametrize("changes,field", [
    (dict(voi_function="linear_exact", window_width=1e-46), "window_width"),  # 0 in float32
    (dict(voi_function="linear_exact", window_width=1e-40), "window_width"),  # ramp slope overflows float32
    (dict(rescale_slope=1e-46), "rescale_slope"),
    (dict(voi_function="linear", window_width=1 + 2**-20, rescale_slope=1e36), "window_width"),
])
def test_spec_values_are_validated_in_float32_terms(changes, field):
    from engine.errors import InputError
    from engine.spec import PreprocessSpec

    with pytest.raises(InputError, match=f"PreprocessSpec.{field}"):
        PreprocessSpec(out_height=8, out_width=8, **changes)


def test_narrowest_window_float32_can_follow_stays_finite():
    from engine.preprocess import preprocess
    from engine.spec import PreprocessSpec

    x = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096
    for width in (1e-20, 1e-6, 1e-3):  # narrower than one pixel step (1/4096) down to 1e-20
        spec = PreprocessSpec(out_height=64, out_width=64, resize="nearest", voi_function="linear_exact",
                              window_center=float(x[10, 10]), window_width=width)
        out = preprocess(x, spec)
        assert np.isfinite(out).all() and out.min() == 0 and out.max() == 1


@pytest.mark.parametrize("width", ["1e-46", "1e-40", "1e-31"])
def test_file_window_width_zero_in_float32_is_refused(width):
    ds = pydicom.dcmread(data_file("CT_small.dcm"))
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = "40", width, "LINEAR_EXACT"
    with pytest.raises(DicomError, match=r"WindowWidth \(0028,1051\).*float32"):
        dicom.read(ds)


@pytest.mark.parametrize("parent,scale", [("MR_small.dcm", 1.0), ("CT_small.dcm", 1e-3), ("MR_small.dcm", 1e-6)])
def test_float_pixel_data_is_windowed_over_its_own_range(parent, scale):
    from engine.spec import PreprocessSpec
    from tests.corpus.hostile_dicom import float_pixels

    from .oracle import kernel_grey_levels

    ds, values = float_pixels(parent, scale=scale)
    img = dicom.read(_bytes(ds))
    lo, hi = float(values.min()), float(values.max())
    assert img.value_range == (lo, hi)
    grey = kernel_grey_levels(img)
    np.testing.assert_allclose(grey, (values - lo) / (hi - lo), atol=2e-6, rtol=1e-5)
    assert img.spec_for(PreprocessSpec(out_height=8, out_width=8)).window_width == pytest.approx(hi - lo)


@pytest.mark.parametrize("parent,bits,high", [("CT_small.dcm", 12, 13), ("CT_small.dcm", 12, 15),
                                              ("MR_small.dcm", 10, 14), ("MR_small.dcm", 12, 12)])
def test_high_bit_places_the_stored_bits(parent, bits, high):
    from tests.corpus.hostile_dicom import high_bit_shifted

    shifted, plain = high_bit_shifted(parent, bits, high)
    got, want = dicom.read(_bytes(shifted)), dicom.read(_bytes(plain))
    np.testing.assert_array_equal(got.pixels, want.pixels)
    assert got.pixels.dtype == want.pixels.dtype and np.ptp(got.pixels) > 0
    assert any(f"bits {high - bits + 1}-{high}" in n for n in got.warnings)


@pytest.mark.parametrize("bits,high", [(12, 16), (12, 10), (16, 14)])
def test_high_bit_outside_the_cell_is_refused(bits, high):
    ds = pydicom.dcmread(data_file("CT_small.dcm"))
    ds.BitsStored, ds.HighBit = bits, high
    with pytest.raises(DicomError, match=r"HighBit \(0028,0102\): .*must be in"):
        dicom.read(ds)


@pytest.mark.parametrize("mask", ["none", "diagonal", "all"])
def test_masked_arrays_are_refused_not_unmasked(mask):
    from engine.errors import InputError
    from engine.preprocess import preprocess
    from engine.spec import PreprocessSpec
    from tests.corpus.arrays import materialize

    x = materialize({"make": "array", "then": [["masked", mask]]})
    with pytest.raises(InputError, match="masked array"):
        preprocess(x, PreprocessSpec(out_height=8, out_width=8))


def test_per_frame_items_that_do_not_match_the_frames():
    from tests.corpus.hostile_dicom import enhanced_ct

    # pydicom-data's one-frame cut of a 3-frame Segmentation keeps 3 per-frame items without rescale/VOI/spacing
    s = dicom.read(data_file("liver_1frame.dcm"))
    assert any("3 items for NumberOfFrames 1" in n and "ignored" in n for n in s.warnings)
    ds = enhanced_ct(per_frame=[{"PixelValueTransformationSequence": {"RescaleIntercept": "0", "RescaleSlope": "1"}}])
    ds.PerFrameFunctionalGroupsSequence.append(ds.PerFrameFunctionalGroupsSequence[0])
    with pytest.raises(DicomError, match=r"PerFrameFunctionalGroupsSequence \(5200,9230\): has 3 items for "
                                         r"NumberOfFrames 2"):
        dicom.read(_bytes(ds))
