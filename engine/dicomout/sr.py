"""Any Result -> DICOM SR, TID 1500 Imaging Measurement Report (PS3.16 A.35.1), built with highdicom.

Content (one report per source image; a multi-frame source may have one group set per analysed frame):
  * Observation context: the device observer (TID 1004) is the model: name, "<name> <variant>" as model
    name, the first 16 hex digits of the bundle SHA-256 as serial number, a UID derived from the digest.
  * Per segmentation class (not background), TID 1410 Planar ROI group referencing the SEG's segment
    frame (ReferencedSegmentationFrame) when a SEG is given, else a TID 1501 group on the source image:
    Area (SCT 42798000) in mm2 when the pixel spacing is known, always the pixel count (99SLICERT).
  * Per image, a TID 1501 group on the source image (frame): for classifiers the probability of each
    class (UCUM "1") and the predicted class (qualitative, DCM 121071 Finding); the out-of-distribution
    flag (Yes/No), the statistic that decided it (coded), score and threshold when the result has
    `ood` (engine.trust); "Eligible input" (Yes/No) when the header was checked against the bundle's
    intended inputs (Result.eligibility under the "flag" policy); the inference latency in ms (decode
    to post-processing, Result.timings_ms["total"]). Reasons in words stay in the logs: TID 1501 has
    no free-text row, and a reason is not a concept to code.
  * Every group carries TID 4019 Algorithm Identification: model name, version, and parameters
    bundle_sha256=..., precision=..., backend=....
Numbers are written as DS (16 characters): probabilities and areas read back to ~1e-9 relative.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from engine.dicom.capture import pydicom_warnings
from engine.dicomout import codes
from engine.dicomout.identity import MANUFACTURER, ModelIdentity, derived_uid, identity_of
from engine.dicomout.seg import segment_classes
from engine.dicomout.source import number_of_frames, source_dataset
from engine.errors import InputError

_log = logging.getLogger("slicert.dicomout")
SR_SERIES_NUMBER = 9102


def ood_fields(result) -> dict | None:
    """{score, threshold, flag, reason} of `result.ood` when the result has one (engine.trust), else None."""
    ood = getattr(result, "ood", None)
    if ood is None:
        return None
    get = ood.get if isinstance(ood, dict) else (lambda k, d=None: getattr(ood, k, d))
    score, threshold, flag = get("score"), get("threshold"), get("flag")
    if score is None or flag is None:
        return None
    return {"score": float(score), "threshold": None if threshold is None else float(threshold),
            "flag": bool(flag), "statistic": str(get("statistic", "") or ""), "reason": str(get("reason", "") or "")}


def _algorithm(ident: ModelIdentity):
    import highdicom as hd

    return hd.sr.AlgorithmIdentification(name=ident.name[:64], version=ident.version[:64],
                                         parameters=ident.parameters(), manufacturer=MANUFACTURER)


def _num(name, value: float, unit, algo):
    import highdicom as hd

    return hd.sr.Measurement(name=name, value=float(value), unit=unit, algorithm_id=algo)


def _seg_frame_index(segs) -> dict[tuple[int, int], tuple[object, int]]:
    """{(source frame 0-based, segment number): (SEG dataset, SEG frame number 1-based)}."""
    out = {}
    for seg in segs or ():
        for k, group in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
            segment = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            src_frame = 0
            for der in group.get("DerivationImageSequence") or ():
                for item in der.get("SourceImageSequence") or ():
                    if "ReferencedFrameNumber" in item:
                        src_frame = int(item.ReferencedFrameNumber) - 1
            out[(src_frame, segment)] = (seg, k)
    return out


def _source_image(ds, frame: int | None, kind):
    kw = {"referenced_sop_class_uid": ds.SOPClassUID, "referenced_sop_instance_uid": ds.SOPInstanceUID}
    if frame is not None:
        kw["referenced_frame_numbers"] = [frame + 1]
    return kind(**kw)


def build_sr(results: Sequence, source, *, segs: Sequence | None = None, series_instance_uid: str | None = None,
             series_number: int = SR_SERIES_NUMBER, instance_number: int = 1, series_description: str | None = None,
             uid_seed: str | None = None):
    """One TID 1500 report (pydicom Dataset, Comprehensive SR) for `results` of frames of one `source`;
    `segs` the SEG(s) built from the same results (build_segs), to reference their segments. `uid_seed`:
    derive the SOP Instance UID from it instead of a random one (engine.dicomout.identity.derived_uid)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes as std
    from pydicom.uid import generate_uid

    results = list(results)
    if not results:
        raise InputError("build_sr: no results")
    ds = source_dataset(source)
    ident = identity_of(results[0])
    n_frames = number_of_frames(ds)
    algo = _algorithm(ident)
    seg_frames = _seg_frame_index(segs)
    groups = []
    for r in results:
        frame = r.frame_index if n_frames > 1 else None
        if n_frames > 1 and frame is None:
            raise InputError(f"the source has {n_frames} frames but a result does not say which one it is for")
        where = "" if frame is None else f" frame {frame + 1}"
        if r.task == "segmentation":
            if r.pixel_counts is None:
                raise InputError("a segmentation result without pixel counts cannot be reported")
            for number, index, label in segment_classes(ident.labels):
                measurements = []
                if r.areas_mm2 is not None:
                    measurements.append(_num(std.SCT.Area, r.areas_mm2[label], std.UCUM.SquareMillimeter, algo))
                measurements.append(_num(codes.local(codes.PIXEL_COUNT), r.pixel_counts[label],
                                         codes.coded("{pixels}", "pixels", "UCUM"), algo))
                tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{label}{where}"[:64])
                finding = codes.class_concept(label, index)
                hit = seg_frames.get((frame or 0, number))
                if hit is not None:
                    seg, seg_frame = hit
                    ref = hd.sr.ReferencedSegmentationFrame(
                        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, frame_number=seg_frame,
                        segment_number=number, source_image=_source_image(ds, frame, hd.sr.SourceImageForSegmentation))
                    groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                        tracking_identifier=tracking, referenced_segment=ref, finding_type=finding,
                        algorithm_id=algo, measurements=measurements))
                else:
                    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                        tracking_identifier=tracking, finding_type=finding, algorithm_id=algo, measurements=measurements,
                        source_images=[_source_image(ds, frame, hd.sr.SourceImageForMeasurementGroup)]))
        groups.append(_image_group(r, ds, frame, ident, algo, where))

    observer = hd.sr.ObserverContext(
        observer_type=std.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[ident.bundle_sha256]), name=ident.name[:64], manufacturer_name=MANUFACTURER,
            model_name=f"{ident.name} {ident.variant}"[:64], serial_number=ident.bundle_sha256[:16]))
    report = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_device_context=observer),
                                     procedure_reported=std.SCT.ImagingProcedure, imaging_measurements=groups)
    evidence = [ds, *(_reference_only(x) for x in segs or ())]  # the source first: patient and study come from it
    notes: list[str] = []
    with pydicom_warnings(notes):
        sr = hd.sr.ComprehensiveSR(
            evidence=evidence, content=report, series_instance_uid=series_instance_uid or hd.UID(),
            series_number=series_number, sop_instance_uid=derived_uid(uid_seed, "sr"), instance_number=instance_number,
            manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
            series_description=(series_description or f"SliceRT SR {ident.name}")[:64],
            coding_schemes=[codes.scheme_item()])
    for n in notes:
        _log.debug("SR for %s: %s", ds.get("SOPInstanceUID"), n)
    _frame_references_only(sr)
    return sr


def _frame_references_only(sr) -> None:
    """A reference to a SEG frame identifies its segment through the frame: PS3.3 C.18.3.1 requires
    Referenced Segment Number only when no Referenced Frame Number is given (highdicom writes both)."""
    def walk(items):
        for item in items or ():
            for ref in item.get("ReferencedSOPSequence") or ():
                if "ReferencedFrameNumber" in ref and "ReferencedSegmentNumber" in ref:
                    del ref.ReferencedSegmentNumber
            walk(item.get("ContentSequence"))
    walk(sr.get("ContentSequence"))


def _reference_only(ds):
    """What the SR's evidence lists need of an instance: highdicom walks (and copies) the evidence
    datasets, so a multi-megabyte SEG would cost ~0.3 s to pass whole."""
    from pydicom import Dataset

    ref = Dataset()
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        setattr(ref, kw, ds.get(kw))
    return ref


def _image_group(r, ds, frame, ident: ModelIdentity, algo, where: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes as std

    measurements, evaluations = [], []
    if r.task == "classification":
        if r.scores is None or r.label is None:
            raise InputError("a classification result without scores cannot be reported")
        for index, (label, p) in enumerate(zip(ident.labels, r.scores.tolist())):
            measurements.append(_num(codes.probability_concept(label, index), p, std.UCUM.NoUnits, algo))
        best = ident.labels.index(r.label)
        evaluations.append(hd.sr.QualitativeEvaluation(name=codes.local(codes.PREDICTED),
                                                       value=codes.class_concept(r.label, best)))
    ood = ood_fields(r)
    if ood is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(name=codes.local(codes.OOD_FLAG),
                                                       value=std.SCT.Yes if ood["flag"] else std.SCT.No))
        measurements.append(_num(codes.local(codes.OOD_SCORE), ood["score"], std.UCUM.NoUnits, algo))
        if ood["threshold"] is not None:
            measurements.append(_num(codes.local(codes.OOD_THRESHOLD), ood["threshold"], std.UCUM.NoUnits, algo))
        if ood["statistic"]:
            evaluations.append(hd.sr.QualitativeEvaluation(
                name=codes.local(codes.OOD_STATISTIC), value=codes.coded(codes.statistic_value(ood["statistic"]),
                                                                         ood["statistic"])))
    eligibility = getattr(r, "eligibility", None)
    if eligibility is not None:  # None: not checked (raw array input, or the bundle states no intended inputs)
        evaluations.append(hd.sr.QualitativeEvaluation(name=codes.local(codes.ELIGIBLE),
                                                       value=std.SCT.No if eligibility else std.SCT.Yes))
    measurements.append(_num(codes.local(codes.LATENCY), r.timings_ms["total"], std.UCUM.Millisecond, algo))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{ident.name} image{where}"[:64]),
        algorithm_id=algo, measurements=measurements, qualitative_evaluations=evaluations or None,
        source_images=[_source_image(ds, frame, hd.sr.SourceImageForMeasurementGroup)])


def result_to_sr(result, source, *, seg=None, **options):
    """`Result.to_dicom_sr(source, seg)`: the TID 1500 report of one result (pydicom Dataset)."""
    segs = None if seg is None else (list(seg) if isinstance(seg, (list, tuple)) else [seg])
    return build_sr([result], source, segs=segs, **options)
