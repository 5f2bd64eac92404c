"""Segmentation Result -> DICOM Segmentation (PS3.3 A.51), built with highdicom.

One segment per model class except class 0 when it is "background" (the engine's argmax convention:
class 0 is what no segment covers). BINARY segments, one frame per segment per source frame, empty
segments kept (omit_empty_frames=False) so that every segment an SR measures exists in the SEG.

Geometry. The Result's mask is already in the source image's pixel grid (ROI, letterbox and resize
undone), so each SEG frame corresponds pixel-for-pixel to its source frame; the SEG takes pixel
measures, plane orientation and position from the source.
  * Source with a Frame of Reference (CT, MR, enhanced multi-frame): one SEG; frames of a multi-frame
    source are matched by their plane positions (highdicom).
  * Source without a Frame of Reference (CR, DX, US, most cine loops): the Frame of Reference module
    is then absent from the SEG as well (PS3.3 A.51.3: it is required only when the source has one),
    and there are no plane positions to match frames by. A single-frame source gets one SEG. A
    multi-frame source gets ONE SEG PER ANALYSED FRAME, each referencing its source frame by
    Referenced Frame Number (PS3.3 C.10.3 Image SOP Instance Reference Macro) in the Derivation Image
    and Source Image sequences. Why: highdicom builds SEGs without a Frame of Reference for one source
    frame only, and a per-frame SEG is unambiguous for every viewer (no frame-matching rule needed).
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import numpy as np

from engine.dicom.capture import pydicom_warnings
from engine.dicomout import codes
from engine.dicomout.identity import MANUFACTURER, ModelIdentity, derived_uid, identity_of
from engine.dicomout.source import has_frame_of_reference, number_of_frames, source_dataset
from engine.errors import InputError

_log = logging.getLogger("slicert.dicomout")
SEG_SERIES_NUMBER = 9101
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # default Series Number of SliceRT SEG series (a site may set its own)


def segment_classes(labels: Sequence[str]) -> list[tuple[int, int, str]]:
    """[(segment_number, class_index, label)] for the classes that become segments."""
    start = 1 if labels and labels[0].strip().lower() == "background" else 0
    return [(n, i, labels[i]) for n, i in enumerate(range(start, len(labels)), start=1)]


def _segment_descriptions(ident: ModelIdentity):
    import highdicom as hd
    from pydicom.sr.codedict import codes as std

    algo = hd.AlgorithmIdentificationSequence(
        name=ident.name[:64], family=std.cid7162.ArtificialIntelligence, version=ident.version[:64],
        source=MANUFACTURER, parameters={"bundle_sha256": ident.bundle_sha256, "precision": ident.variant,
                                         "backend": ident.backend})
    return [hd.seg.SegmentDescription(
        segment_number=number, segment_label=label[:64], segmented_property_category=codes.local(codes.MODEL_CLASS),
        segmented_property_type=codes.class_concept(label, index),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo,
        tracking_uid=hd.UID(), tracking_id=f"{ident.name} {label}"[:64])
        for number, index, label in segment_classes(ident.labels)]


def _stack(results, ident: ModelIdentity, rows: int, cols: int) -> np.ndarray:
    """(F, rows, cols, S) uint8 binary stack, one plane per segment."""
    classes = segment_classes(ident.labels)
    out = np.zeros((len(results), rows, cols, len(classes)), np.uint8)
    for f, r in enumerate(results):
        if r.task != "segmentation" or r.mask is None:
            raise InputError(f"to_dicom_seg needs a segmentation result with a mask, got a {r.task} result")
        if r.mask.shape != (rows, cols):
            raise InputError(f"the result's mask is {r.mask.shape[0]}x{r.mask.shape[1]} but the source image is "
                             f"{rows}x{cols}: pass the DICOM image this result was computed from")
        for s, (_n, index, _label) in enumerate(classes):
            np.equal(r.mask, index, out=out[f, :, :, s])
    return out


def _frame_index(result, n_frames: int) -> int:
    fi = result.frame_index
    if fi is None:
        if n_frames == 1:
            return 0
        raise InputError(f"the source has {n_frames} frames but the result does not say which one it is for "
                         f"(frame_index is None): run the DICOM itself (session.stream / run) so results carry "
                         f"their frame")
    if not 0 <= fi < n_frames:
        raise InputError(f"the result is for frame {fi} but the source has {n_frames} frame(s)")
    return int(fi)


def _header_view(ds, multi_frame: bool):
    """A header-only shallow copy of a source without a Frame of Reference, as highdicom needs it: one
    frame, and no Pixel Spacing when the source's is not usable (RG1_UNCR.dcm says 0\\0; a SEG must
    not repeat an invalid value). The caller's dataset is never modified."""
    import pydicom

    # Element by element: copy.copy(Dataset) shares the element dict with the original.
    view = pydicom.Dataset()
    for elem in ds:
        if elem.keyword not in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            view.add(copy.copy(elem))
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta
    if multi_frame:
        for kw in ("PixelData", "FrameIncrementPointer", "FrameTime", "FrameTimeVector",
                   "PerFrameFunctionalGroupsSequence"):
            if kw in view:
                delattr(view, kw)
        view.NumberOfFrames = 1
        # highdicom reads a multi-frame IOD's geometry from functional groups, which classic multi-frame
        # objects (US/XA cine) lack: it is shown a single-frame IOD without a Frame of Reference
        # (Secondary Capture), and _reference_frame puts the true SOP Class back into every reference.
        view.SOPClassUID = _SECONDARY_CAPTURE
    spacing = view.get("PixelSpacing")
    if spacing is not None:
        try:
            usable = len(spacing) == 2 and all(float(v) > 0 for v in spacing)
        except (TypeError, ValueError):
            usable = False
        if not usable:
            del view.PixelSpacing
    return view


def _reference_frame(seg, source, frame_number: int) -> None:
    """Every reference to the source instance gets its true SOP Class; image references (Source Image
    Sequence, also inside Derivation Image Sequence) get Referenced Frame Number (1-based)."""
    uid, sop_class = str(source.SOPInstanceUID), str(source.SOPClassUID)

    def walk(ds):
        for elem in ds:
            if elem.VR != "SQ":
                continue
            for item in elem.value:
                if item.get("ReferencedSOPInstanceUID") == uid:
                    item.ReferencedSOPClassUID = sop_class
                    if elem.keyword == "SourceImageSequence":
                        item.ReferencedFrameNumber = frame_number
                walk(item)
    walk(seg)


def build_segs(results: Sequence, source, *, series_instance_uid: str | None = None,
               series_number: int = SEG_SERIES_NUMBER, first_instance_number: int = 1,
               series_description: str | None = None, uid_seed: str | None = None) -> list:
    """DICOM SEG(s) (pydicom Datasets) for `results` of frames of one `source` image.

    Returns one SEG for a single-frame source or a source with a Frame of Reference, else one per
    result (see the module docstring). All share `series_instance_uid` (new when None). `uid_seed`:
    derive the SOP Instance UIDs from it (engine.dicomout.identity.derived_uid) instead of random ones.
    """
    import highdicom as hd

    results = list(results)
    if not results:
        raise InputError("build_segs: no results")
    ds = source_dataset(source)
    ident = identity_of(results[0])
    for r in results[1:]:
        if identity_of(r) is not ident and identity_of(r).bundle_sha256 != ident.bundle_sha256:
            raise InputError("build_segs: the results come from different bundles; one SEG per model")
    n_frames = number_of_frames(ds)
    frames = [_frame_index(r, n_frames) for r in results]
    if len(set(frames)) != len(frames):
        raise InputError(f"build_segs: two results for the same source frame ({sorted(frames)})")
    rows, cols = int(ds.Rows), int(ds.Columns)
    stack = _stack(results, ident, rows, cols)
    series_uid = series_instance_uid or hd.UID()
    common = {"segmentation_type": hd.seg.SegmentationTypeValues.BINARY, "series_instance_uid": series_uid,
              "series_number": series_number, "manufacturer": MANUFACTURER,
              "manufacturer_model_name": ident.name[:64], "software_versions": ident.software_version,
              "device_serial_number": ident.bundle_sha256[:16], "content_label": "SLICERT",
              "content_description": f"{ident.name} ({ident.variant})"[:64], "omit_empty_frames": False,
              "series_description": (series_description or f"SliceRT SEG {ident.name}")[:64]}
    descriptions = _segment_descriptions(ident)
    if not descriptions:
        raise InputError(f"model {ident.name} has no class besides background: nothing to put in a SEG")

    notes: list[str] = []
    with pydicom_warnings(notes):  # highdicom warns about oddities of the SOURCE header (e.g. a 1-part name)
        if has_frame_of_reference(ds):
            positions = _plane_positions(ds, frames) if n_frames > 1 else None
            out = [hd.seg.Segmentation(source_images=[ds], pixel_array=stack, segment_descriptions=descriptions,
                                       sop_instance_uid=derived_uid(uid_seed, "seg", frames[0]),
                                       instance_number=first_instance_number,
                                       plane_positions=positions, **common)]
        else:
            out = []
            for k, frame in enumerate(frames):
                seg = hd.seg.Segmentation(source_images=[_header_view(ds, n_frames > 1)],
                                          pixel_array=stack[k:k + 1], segment_descriptions=descriptions,
                                          sop_instance_uid=derived_uid(uid_seed, "seg", frame),
                                          instance_number=first_instance_number + k,
                                          **common)
                if n_frames > 1:
                    _reference_frame(seg, ds, frame + 1)
                if "PatientOrientation" not in seg:
                    # General Image, Type 2C: required when there is no Image Orientation (Patient) (PS3.3
                    # C.7.6.1); the SEG frame has the source's orientation, which may be unknown (empty).
                    seg.PatientOrientation = ds.get("PatientOrientation", "")
                out.append(seg)
    for n in notes:
        _log.debug("SEG for %s: %s", ds.get("SOPInstanceUID"), n)
    return out


def _plane_positions(ds, frames: list[int]):
    """Plane Position (Patient) of each analysed frame of a multi-frame source with a Frame of Reference."""
    import highdicom as hd

    from engine.errors import DicomError

    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    out = []
    for f in frames:
        item = per_frame[f] if per_frame is not None and f < len(per_frame) else None
        seq = (item.get("PlanePositionSequence") if item is not None else None) or \
            (shared.get("PlanePositionSequence") if shared is not None else None)
        if not seq or "ImagePositionPatient" not in seq[0]:
            raise DicomError(f"source: frame {f + 1} has a Frame of Reference but no Plane Position (Patient) "
                             f"(PerFrameFunctionalGroupsSequence); its SEG frame cannot be placed")
        out.append(hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT,
                                            [float(v) for v in seq[0].ImagePositionPatient]))
    return out


def result_to_seg(result, source, **options):
    """`Result.to_dicom_seg(source)`: the DICOM SEG (pydicom Dataset) of one segmentation result."""
    (seg,) = build_segs([result], source, **options)
    return seg
