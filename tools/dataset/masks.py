"""Segmentation masks, one per image, holding class ids (0 = the first label, usually background).

Where a mask is looked for, for the image `<rel>.dcm` (path relative to the DICOM folder), in order:
    MASKS/<rel without suffix>.{png,npy,nii.gz,nii}
    MASKS/<rel>.{png,npy,nii.gz,nii}
    MASKS/<SOPInstanceUID>.{png,npy,nii.gz,nii}
    a DICOM SEG object anywhere under MASKS whose frames reference the image's SOPInstanceUID
    (read with highdicom when it is installed)

Formats: PNG (greyscale 8/16-bit, or palette, values = class ids), NPY (2-D integer array), NIfTI
(2-D or 2-D x 1; voxel axes (i, j) are (column, row) of the image, as ITK, SimpleITK and MONAI write
a DICOM slice, so the array is transposed to (rows, columns)). The mask must have the image's
rows x columns and only class ids of the spec: MaskMismatch names the mask and the image otherwise.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from tools.dataset.scan import ImageRecord
from tools.errors import MaskMismatch

SUFFIXES = (".png", ".npy", ".nii.gz", ".nii")
MAX_MASK_BYTES = 1 << 28  # 256 MiB: a bound on what one mask file may hold


class MaskIndex:
    """Finds the mask of each image under a masks folder (files by name; DICOM SEG by reference)."""

    def __init__(self, masks_dir: str | Path):
        self.dir = Path(masks_dir)
        if not self.dir.is_dir():
            raise MaskMismatch(f"{self.dir}: masks folder not found")
        self._seg: dict[str, Path] | None = None

    def find(self, rec: ImageRecord) -> Path | str | None:
        stem = rec.rel[: -len(Path(rec.rel).suffix)] if Path(rec.rel).suffix else rec.rel
        for base in (stem, rec.rel, rec.sop_instance_uid):
            for suf in SUFFIXES:
                p = self.dir / f"{base}{suf}"
                if p.is_file():
                    return p
        seg = self._seg_index().get(rec.sop_instance_uid)
        return seg

    def _seg_index(self) -> dict[str, Path]:
        """SOPInstanceUID -> DICOM SEG file referencing it (built once, only if .dcm files exist here)."""
        if self._seg is None:
            self._seg = {}
            dcm = sorted(p for p in self.dir.rglob("*.dcm") if p.is_file())
            if dcm:
                try:
                    import highdicom  # noqa: F401
                except ImportError:
                    return self._seg
                import pydicom

                for p in dcm:
                    try:
                        ds = pydicom.dcmread(p, stop_before_pixels=True)
                    except Exception:  # pydicom raises many types on damaged files; skip, the scan reports it
                        continue
                    if str(ds.get("Modality", "")).upper() != "SEG":
                        continue
                    for ref in _referenced_uids(ds):
                        self._seg.setdefault(ref, p)
        return self._seg


def _referenced_uids(ds) -> list[str]:
    out = []
    for series in ds.get("ReferencedSeriesSequence", []):
        for inst in series.get("ReferencedInstanceSequence", []):
            out.append(str(inst.ReferencedSOPInstanceUID))
    for frame in ds.get("PerFrameFunctionalGroupsSequence", []):
        for der in frame.get("DerivationImageSequence", []):
            for src in der.get("SourceImageSequence", []):
                out.append(str(src.ReferencedSOPInstanceUID))
    return out


def read_mask(mask: Path, rec: ImageRecord, num_classes: int) -> np.ndarray:
    """(rows, columns) uint8 class ids of `rec`'s mask; MaskMismatch naming both files otherwise."""
    name = mask.name.lower()
    try:
        if mask.stat().st_size > MAX_MASK_BYTES:
            raise MaskMismatch(f"{mask}: larger than {MAX_MASK_BYTES >> 20} MiB")
        if name.endswith(".png"):
            arr = _png(mask)
        elif name.endswith(".npy"):
            arr = np.load(mask, allow_pickle=False)
        elif name.endswith((".nii", ".nii.gz")):
            arr = _nifti(mask)
        elif name.endswith(".dcm"):
            arr = _seg(mask, rec, num_classes)
        else:
            raise MaskMismatch(f"{mask}: unknown mask format (use {', '.join(SUFFIXES)} or DICOM SEG)")
    except MaskMismatch:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise MaskMismatch(f"{mask}: cannot read the mask of {rec.rel} ({exc})") from None
    arr = np.asarray(arr)
    if arr.ndim == 3 and 1 in arr.shape:
        arr = arr.reshape([d for d in arr.shape if d != 1] or [1])
    if arr.ndim != 2:
        raise MaskMismatch(f"{mask}: mask of {rec.rel} must be 2-D class ids, got shape {arr.shape}")
    if arr.shape != (rec.rows, rec.columns):
        raise MaskMismatch(f"{mask}: mask shape {arr.shape[0]}x{arr.shape[1]} differs from its image {rec.rel} "
                           f"({rec.rows}x{rec.columns})")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise MaskMismatch(f"{mask}: mask values must be integer class ids, found fractional or NaN values")
    elif arr.dtype.kind not in "iub":
        raise MaskMismatch(f"{mask}: mask dtype {arr.dtype} is not integer class ids")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise MaskMismatch(f"{mask}: class ids must lie in [0, {num_classes}) for the spec's {num_classes} labels, "
                           f"found [{arr.min():g}, {arr.max():g}]")
    return arr.astype(np.uint8)


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16", "1"):
            raise MaskMismatch(f"{path}: PNG mode {im.mode} is not a class-id mask (save class ids as a greyscale "
                               f"or palette PNG)")
        return np.asarray(im)  # palette PNG: the indices are the class ids


def _nifti(path: Path) -> np.ndarray:
    import nibabel as nib

    img = nib.load(str(path))
    arr = np.asarray(img.dataobj)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim != 2:
        raise MaskMismatch(f"{path}: a per-image NIfTI mask must be 2-D (or 2-D x 1), got shape {arr.shape}")
    return arr.T  # (i, j) = (column, row) -> (row, column)


def _seg(path: Path, rec: ImageRecord, num_classes: int) -> np.ndarray:
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    numbers = list(seg.segment_numbers)
    if max(numbers, default=0) >= num_classes:
        raise MaskMismatch(f"{path}: segment number {max(numbers)} has no class among the spec's {num_classes} "
                           f"labels (segment k is class k)")
    px = seg.get_pixels_by_source_instance(source_sop_instance_uids=[rec.sop_instance_uid],
                                           segment_numbers=numbers, combine_segments=True, relabel=False)
    return np.asarray(px)[0]
