"""Walk a folder of DICOM files (recursively) through engine.dicom.read, the runtime's own reader.

Every file is either an ImageRecord (usable single-frame image with its header facts) or an Unusable
entry with a typed reason: the engine.errors class the reader raised (DicomError,
UnsupportedTransferSyntax, PixelLimitExceeded, ...) or one of the reasons below. Nothing is skipped
silently.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

# Reasons that are not reader errors.
NOT_DICOM = "NotDicom"
MULTI_FRAME = "MultiFrame"
NO_PATIENT_ID = "NoPatientID"
NO_SOP_UID = "NoSOPInstanceUID"
DUPLICATE_UID = "DuplicateSOPInstanceUID"
SEGMENTATION_OBJECT = "SegmentationObject"
UNLABELLED = "Unlabelled"
NO_MASK = "NoMask"

_PREAMBLE = 128  # PS3.10 7.1: 128-byte preamble, then "DICM"


@dataclass(frozen=True)
class ImageRecord:
    """One usable DICOM image. Units: mm."""

    path: Path  # absolute
    rel: str  # path relative to the folder, POSIX separators
    sha256: str
    sop_instance_uid: str
    patient_id: str
    modality: str
    photometric: str  # as stored
    transfer_syntax: str  # name
    rows: int
    columns: int
    pixel_spacing_mm: tuple[float, float] | None


@dataclass(frozen=True)
class Unusable:
    rel: str
    reason: str  # error class name or one of the reasons above
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"file": self.rel, "reason": self.reason, "detail": self.detail}


def _files(root: Path, exclude: set[Path]) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        # Sorted walk: the same folder always gives the same order (and the same split).
        dirnames[:] = sorted(n for n in dirnames if (d / n).resolve() not in exclude and not n.startswith("."))
        for name in sorted(filenames):
            p = d / name
            if p.resolve() in exclude or name.startswith("."):
                continue
            out.append(p)
    return out


def scan(root: str | os.PathLike, *, exclude: tuple[Path, ...] = (), pixel_limit: int | None = None
         ) -> tuple[list[ImageRecord], list[Unusable]]:
    """(usable images, unusable files) of `root`, both sorted by relative path."""
    from engine import dicom
    from engine.errors import SliceRTError

    root = Path(root)
    excl = {Path(p).resolve() for p in exclude}
    records: list[ImageRecord] = []
    bad: list[Unusable] = []
    seen_uid: dict[str, str] = {}
    kwargs = {} if pixel_limit is None else {"pixel_limit": pixel_limit}
    for p in _files(root, excl):
        rel = p.relative_to(root).as_posix()
        try:
            data = p.read_bytes()
            img = dicom.read(p, **kwargs)
        except OSError as exc:
            bad.append(Unusable(rel, "OSError", exc.strerror or str(exc)))
            continue
        except SliceRTError as exc:
            no_preamble = len(data) < _PREAMBLE + 4 or data[_PREAMBLE:_PREAMBLE + 4] != b"DICM"
            reason = NOT_DICOM if no_preamble and type(exc).__name__ == "DicomError" else type(exc).__name__
            bad.append(Unusable(rel, reason, str(exc)))
            continue
        ds = img.dataset
        if (img.info.modality or "").upper() == "SEG":
            bad.append(Unusable(rel, SEGMENTATION_OBJECT, "a DICOM SEG object (a mask, not an image)"))
            continue
        if not hasattr(img, "pixels"):
            if len(img) != 1:
                bad.append(Unusable(rel, MULTI_FRAME, f"{len(img)} frames: the dataset takes single-frame images "
                                                     f"(one label or mask per file)"))
                continue
        uid = str(ds.get("SOPInstanceUID", "") or "").strip()
        pid = str(ds.get("PatientID", "") or "").strip()
        if not uid:
            bad.append(Unusable(rel, NO_SOP_UID, "SOPInstanceUID (0008,0018) missing or empty"))
            continue
        if uid in seen_uid:
            bad.append(Unusable(rel, DUPLICATE_UID, f"same SOPInstanceUID as {seen_uid[uid]}"))
            continue
        if not pid:
            bad.append(Unusable(rel, NO_PATIENT_ID, "PatientID (0010,0020) missing or empty: splits are by patient"))
            continue
        seen_uid[uid] = rel
        i = img.info
        records.append(ImageRecord(path=p.resolve(), rel=rel, sha256=hashlib.sha256(data).hexdigest(),
                                   sop_instance_uid=uid, patient_id=pid, modality=(i.modality or "").upper() or "?",
                                   photometric=i.source_photometric, transfer_syntax=i.transfer_syntax_name,
                                   rows=i.rows, columns=i.columns, pixel_spacing_mm=i.pixel_spacing_mm))
    return records, bad
