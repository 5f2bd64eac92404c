"""DICOM SEG and TID 1500 SR from real results on real images, read back with pydicom/highdicom to the
same numbers, and validated by dciodvfy + dcmdump (zero errors). The models are the tiny synthetic
fixtures: the masks mean nothing medically; what is tested is that the objects say exactly what the
Result says, about the right image, frame and model."""
from __future__ import annotations

import hashlib

import numpy as np
import pydicom
import pytest

from engine import dicom
from engine.errors import DicomError, InputError

from .conftest import sample_file
from .dicom_tools import save, validate

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def _frames_by_segment(seg: pydicom.Dataset) -> dict[tuple[int, int], np.ndarray]:
    """{(source frame number 1-based or 1, segment number): binary plane} read with pydicom alone."""
    px = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    out = {}
    for k, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        src = group.DerivationImageSequence[0].SourceImageSequence[0]
        out[(int(src.get("ReferencedFrameNumber", 1)), number)] = px[k]
    return out


def _check_identity(seg_or_desc, bundle_path, variant="fp32"):
    algo = seg_or_desc.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    params = {p.split("=", 1)[0]: p.split("=", 1)[1] for p in str(algo.AlgorithmParameters).split(",")}
    assert algo.AlgorithmName == "tiny-segmentation"
    assert params["bundle_sha256"] == hashlib.sha256(bundle_path.read_bytes()).hexdigest()
    assert params["precision"] == variant


def test_seg_single_frame_cr_without_frame_of_reference(seg_session, dicom_bundles, tmp_path):
    path = sample_file("RG1_UNCR.dcm")
    src = pydicom.dcmread(path, stop_before_pixels=True)
    r = seg_session.run(path)
    seg = r.to_dicom_seg(path)
    assert seg.SOPClassUID == SEG_CLASS and seg.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["organ", "lesion"]  # background is no segment
    assert "FrameOfReferenceUID" not in seg  # the CR has none, and none is invented
    assert seg.StudyInstanceUID == src.StudyInstanceUID and seg.PatientID == src.PatientID
    assert seg.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert (seg.Rows, seg.Columns) == (src.Rows, src.Columns)
    _check_identity(seg, dicom_bundles["segmentation"])
    out = save(seg, tmp_path / "cr.seg.dcm")
    planes = _frames_by_segment(pydicom.dcmread(out))
    assert set(planes) == {(1, 1), (1, 2)}
    for number, index in ((1, 1), (2, 2)):
        np.testing.assert_array_equal(planes[(1, number)], (r.mask == index).astype(np.uint8))
    assert (r.mask > 0).any()  # the comparison is not between two empty images
    print("dciodvfy warnings:", validate(out))


def test_seg_ct_with_frame_of_reference_keeps_geometry(seg_session, tmp_path):
    path = sample_file("CT_small.dcm")
    src = pydicom.dcmread(path, stop_before_pixels=True)
    r = seg_session.run(path)
    seg = r.to_dicom_seg(path)
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [float(v) for v in src.PixelSpacing]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == \
        [float(v) for v in src.ImageOrientationPatient]
    pos = seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient
    assert [float(v) for v in pos] == [float(v) for v in src.ImagePositionPatient]
    out = save(seg, tmp_path / "ct.seg.dcm")
    planes = _frames_by_segment(pydicom.dcmread(out))
    np.testing.assert_array_equal(planes[(1, 2)], (r.mask == 2).astype(np.uint8))
    print("dciodvfy warnings:", validate(out))


def test_seg_multiframe_cine_without_frame_of_reference_is_one_seg_per_frame(seg_session, tmp_path):
    from engine.dicomout.seg import build_segs

    path = sample_file("color3d_jpeg_baseline.dcm")
    seq = dicom.read(path)
    results = [seg_session.run(seq[i]) for i in (0, 7)]
    segs = build_segs(results, path)
    assert len(segs) == 2
    assert len({s.SeriesInstanceUID for s in segs}) == 1 and len({s.SOPInstanceUID for s in segs}) == 2
    for seg, r, frame in zip(segs, results, (1, 8)):
        out = save(seg, tmp_path / f"cine{frame}.seg.dcm")
        back = pydicom.dcmread(out)
        refs = [it for g in back.PerFrameFunctionalGroupsSequence for it in g.DerivationImageSequence[0].SourceImageSequence]
        assert {int(it.ReferencedFrameNumber) for it in refs} == {frame}
        assert {it.ReferencedSOPClassUID for it in refs} == {seq.dataset.SOPClassUID}  # the true class, not a stand-in
        planes = _frames_by_segment(back)
        np.testing.assert_array_equal(planes[(frame, 1)], (r.mask == 1).astype(np.uint8))
        print("dciodvfy warnings:", validate(out))


def test_seg_multiframe_with_frame_of_reference_is_one_seg(seg_session, tmp_path):
    from engine.dicomout.seg import build_segs

    path = sample_file("eCT_Supplemental.dcm")
    seq = dicom.read(path)
    src = seq.dataset
    results = [seg_session.run(seq[i]) for i in range(len(seq))]
    (seg,) = build_segs(results, path)
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    out = save(seg, tmp_path / "ect.seg.dcm")
    back = pydicom.dcmread(out)
    planes = _frames_by_segment(back)
    assert set(planes) == {(f, s) for f in (1, 2) for s in (1, 2)}
    for g in back.PerFrameFunctionalGroupsSequence:  # each SEG frame sits where its source frame sits
        f = int(g.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        want = src.PerFrameFunctionalGroupsSequence[f - 1].PlanePositionSequence[0].ImagePositionPatient
        assert [float(v) for v in g.PlanePositionSequence[0].ImagePositionPatient] == [float(v) for v in want]
    for f, r in enumerate(results, start=1):
        np.testing.assert_array_equal(planes[(f, 1)], (r.mask == 1).astype(np.uint8))
    print("dciodvfy warnings:", validate(out))


def _groups(sr_path):
    import highdicom as hd

    sr = hd.sr.srread(sr_path)
    return sr, sr.content.get_planar_roi_measurement_groups(), sr.content.get_image_measurement_groups()


def _items(group):
    return group[0].ContentSequence  # a highdicom template is a sequence of one CONTAINER item


def _values(group) -> dict[str, float]:
    return {m.name.meaning: m.value for m in group.get_measurements()}


@pytest.mark.parametrize("name", ["CT_small.dcm", "RG1_UNCR.dcm", "US1_UNCR.dcm"])
def test_sr_segmentation_reads_back_to_the_result(seg_session, dicom_bundles, tmp_path, name):
    path = sample_file(name)
    r = seg_session.run(path)
    seg = r.to_dicom_seg(path)
    sr = r.to_dicom_sr(path, seg=seg)
    out = save(sr, tmp_path / "seg.sr.dcm")
    back, rois, images = _groups(out)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert str(back.ContentTemplateSequence[0].TemplateIdentifier) == "1500"
    assert [str(g.tracking_identifier) for g in rois] == ["organ", "lesion"]
    for g, label, number in zip(rois, ("organ", "lesion"), (1, 2)):
        v = _values(g)
        assert v["Pixel count"] == r.pixel_counts[label]
        if r.areas_mm2 is None:
            assert "Area" not in v  # no pixel spacing: no area is invented
        else:
            assert v["Area"] == pytest.approx(r.areas_mm2[label], rel=1e-12)
            assert g.get_measurements()[0].unit.value == "mm2"
        item = next(it for it in _items(g) if it.ValueType == "IMAGE" and it.ConceptNameCodeSequence[0].CodeValue == "121214")
        sop = item.ReferencedSOPSequence[0]
        assert sop.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        frame = int(sop.ReferencedFrameNumber)  # the SEG frame of this segment
        assert int(seg.PerFrameFunctionalGroupsSequence[frame - 1].SegmentIdentificationSequence[0]
                   .ReferencedSegmentNumber) == number
    (img,) = images
    assert _values(img)["Inference latency (decode to post-processing)"] == pytest.approx(r.timings_ms["total"], 1e-12)
    algo = [it.TextValue for it in _items(img) if it.ConceptNameCodeSequence[0].CodeValue == "111002"]  # parameters
    assert f"bundle_sha256={hashlib.sha256(dicom_bundles['segmentation'].read_bytes()).hexdigest()}" in algo
    assert "precision=fp32" in algo
    if name == "CT_small.dcm":
        assert r.areas_mm2 is not None and r.areas_mm2["organ"] > 0  # at least one case checks real mm²
    print("dciodvfy warnings:", validate(out), validate(save(seg, tmp_path / "seg.dcm")))


def test_sr_cine_frames_with_areas_from_ultrasound_regions(seg_session, tmp_path):
    from engine.dicomout.seg import build_segs
    from engine.dicomout.sr import build_sr

    path = sample_file("color3d_jpeg_baseline.dcm")
    seq = dicom.read(path)
    results = [seg_session.run(seq[i]) for i in (2, 40)]
    segs = build_segs(results, path)
    out = save(build_sr(results, path, segs=segs), tmp_path / "cine.sr.dcm")
    _, rois, images = _groups(out)
    assert len(rois) == 4 and len(images) == 2
    for g, (r, label) in zip(rois, [(results[0], "organ"), (results[0], "lesion"), (results[1], "organ"),
                                    (results[1], "lesion")]):
        assert _values(g)["Area"] == pytest.approx(r.areas_mm2[label], rel=1e-12)
        item = next(it for it in _items(g) if it.ValueType == "IMAGE")
        seg = next(s for s in segs if s.SOPInstanceUID == item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        src_frame = int(seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
                        .ReferencedFrameNumber)
        assert src_frame == r.frame_index + 1
    print("dciodvfy warnings:", validate(out))


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "US1_UNCR.dcm"])
def test_sr_classifier_probabilities_and_label(cls_session, tmp_path, name):
    path = sample_file(name)
    r = cls_session.run(path)
    out = save(r.to_dicom_sr(path), tmp_path / "cls.sr.dcm")
    _, rois, images = _groups(out)
    assert rois == []
    (img,) = images
    v = _values(img)
    got = [v[f"Probability of {lab}"] for lab in r.labels]
    np.testing.assert_allclose(got, r.scores.astype(np.float64), rtol=1e-7)
    (pred,) = [q for q in img.get_qualitative_evaluations() if q.name.meaning == "Predicted class"]
    assert pred.value.meaning == r.label
    src = pydicom.dcmread(path, stop_before_pixels=True)
    ref = next(it for it in _items(img) if it.ValueType == "IMAGE").ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
    print("dciodvfy warnings:", validate(out))


def test_sr_reports_trust_flags_ood_and_eligibility(cls_session, tmp_path):
    """`result.ood` / `result.eligibility` come from engine.trust when the bundle has a trust section; the tiny
    bundle has none, so the values (of the real types) are set on a real result here."""
    from engine.dicomout.sr import build_sr
    from engine.trust.ood import OODScore

    path = sample_file("RG1_UNCR.dcm")
    r = cls_session.run(path)
    assert r.ood is None and r.eligibility in (None, ())  # the tiny bundle carries no trust section
    r.ood = OODScore(score=3.25, threshold=1.5, flag=True, statistic="input_mean",
                     reason="input_mean 0.91 above 0.62", signals={"input_mean": 0.91})
    r.eligibility = ("Modality CR is not one of ['DX']",)
    out = save(build_sr([r], path), tmp_path / "ood.sr.dcm")
    (img,) = _groups(out)[2]
    v = _values(img)
    assert v["Out-of-distribution score"] == 3.25 and v["Out-of-distribution threshold"] == 1.5
    q = {e.name.meaning: e.value for e in img.get_qualitative_evaluations()}
    assert q["Out of distribution"].value == "373066001"  # SCT Yes
    assert q["Out-of-distribution statistic"].meaning == "input_mean"
    assert q["Eligible input (bundle's intended inputs)"].value == "373067005"  # SCT No
    print("dciodvfy warnings:", validate(out))
    r.ood, r.eligibility = None, None  # absent / not checked: no trust items at all
    (img,) = _groups(save(build_sr([r], path), tmp_path / "no-ood.sr.dcm"))[2]
    assert "Out-of-distribution score" not in _values(img)
    assert not [e for e in img.get_qualitative_evaluations() if "Eligible" in e.name.meaning]


def test_bad_requests_get_typed_errors(seg_session, cls_session, tmp_path):
    ct, cr = sample_file("CT_small.dcm"), sample_file("RG1_UNCR.dcm")
    r = seg_session.run(ct)
    with pytest.raises(InputError, match="128x128 but the source image is 1955x1841"):
        r.to_dicom_seg(cr)
    with pytest.raises(InputError, match="segmentation result"):
        cls_session.run(cr).to_dicom_seg(cr)
    ds = pydicom.dcmread(ct)
    del ds.SOPInstanceUID
    with pytest.raises(DicomError, match="SOPInstanceUID"):
        r.to_dicom_seg(ds)
    with pytest.raises(DicomError, match="cannot read"):
        r.to_dicom_seg(b"not a dicom file at all")
    cine = sample_file("color3d_jpeg_baseline.dcm")
    frame = seg_session.run(dicom.read(cine)[0])
    frame.frame_index = None
    with pytest.raises(InputError, match="120 frames"):
        frame.to_dicom_seg(cine)
    from engine.session import Result

    with pytest.raises(InputError, match="no model identity"):
        Result("segmentation", ["background", "x"]).to_dicom_sr(ct)


def test_cli_dicom_out_writes_valid_seg_and_sr(dicom_bundles, tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"DICM" * 10)
    files = [sample_file("CT_small.dcm"), sample_file("US1_UNCR.dcm"), str(bad)]
    r = subprocess.run([sys.executable, "-m", "engine.cli", "dicom-out", str(dicom_bundles["segmentation"]), *files,
                        "--out", str(tmp_path / "out"), "--threads", "1"], check=False, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1 and "bad.dcm: DicomError" in r.stderr  # the bad file is named, the others written
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["CT_small.seg.dcm", "CT_small.sr.dcm", "US1_UNCR.seg.dcm", "US1_UNCR.sr.dcm"]
    for name in written:
        validate(tmp_path / "out" / name)
