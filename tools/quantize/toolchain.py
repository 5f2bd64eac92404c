"""Find the dataset a toolchain export was trained on (model.json "dataset" card) and turn its calib/val/
test splits into model inputs through the toolchain's engine.preprocess path, with the MODEL's spec."""
from __future__ import annotations

import json
from typing import Any

from engine.errors import InputError
from tools.quantize import data as data_mod


def dataset_for_export(meta: dict[str, Any], *, chw: tuple, calib_n: int) -> data_mod.QuantDataset:
    card = meta.get("dataset")
    if not isinstance(card, dict) or not isinstance(card.get("name"), str):
        raise InputError("model.json has no dataset card with a 'name'; pass dataset= (raw splits or a QuantDataset)")
    if card.get("kind") == "dicom_folder":  # a user's DICOM folder (tools.byom / tools.dataset)
        return _dicom_folder(meta, card, chw, calib_n)
    from tools.data import _module, load_dataset

    name, seed = card["name"], int(card.get("seed", 0))
    # The card records the generator parameters; --fast data is the one whose parameters equal the fast
    # recipe's (compared through JSON so tuples and lists agree). Datasets identical in both modes
    # (the CT: all 133 slices either way) match both, and then which one is loaded does not matter.
    fast_params = json.loads(json.dumps(_module(name)["params"](True, seed)))
    fast = card.get("params") == fast_params
    ds = load_dataset(name, fast=fast, seed=seed)
    if ds.task != meta["task"]:
        raise InputError(f"dataset {name!r} is {ds.task}, model.json says {meta['task']}")
    spec = meta["_spec"]
    n_calib = len(ds.splits["calib"].images)
    if n_calib < data_mod.MIN_CALIB_SLICES:
        raise InputError(f"dataset {name!r} (fast={fast}) has {n_calib} calibration slices; the quantizer needs at "
                         f"least {data_mod.MIN_CALIB_SLICES} from the calib split (never the test split)")
    raw_calib = ds.splits["calib"].images[:calib_n]
    calib = data_mod.calibration_split(_inputs(raw_calib, spec), chw, calib_n)
    splits = {}
    for split in ("val", "test"):
        x = data_mod.check_inputs(ds.inputs(split, spec), chw, f"{split} split")
        y = data_mod.check_targets(ds.targets(split, spec), len(x), ds.task, f"{split} split targets", len(ds.labels))
        splits[split] = data_mod.Split(x=x, y=y, sha256=data_mod.hash_array(x))
    prov = card.get("provenance", {})
    synthetic = bool(prov.get("simulated")) or "synthetic" in str(prov).lower()
    return data_mod.QuantDataset(calib=calib, val=splits["val"], test=splits["test"], provenance={
        "dataset": name, "seed": seed, "fast": fast, "cache_key": card.get("cache_key"),
        "description": prov.get("label") or f"{name}: real={prov.get('real')}; simulated={prov.get('simulated')}",
        "synthetic": synthetic, "real": prov.get("real"), "simulated": prov.get("simulated")})


def _inputs(images, spec):
    from tools.data.inputs import model_inputs

    return model_inputs(images, spec)


def _dicom_folder(meta: dict[str, Any], card: dict[str, Any], chw: tuple, calib_n: int) -> data_mod.QuantDataset:
    """The calib/val/test splits of the user's DICOM folder that model.json's card names, reopened with the
    same spec and splits file; InputError if the files changed since the model was trained."""
    from tools import model_spec
    from tools.dataset import open_folder
    from tools.dataset.quant import quant_dataset

    spec = model_spec.from_dict(meta.get("spec") or {}, "model.json 'spec'")
    folder = open_folder(card["root"], spec, labels=card.get("labels_file"), masks=card.get("masks_dir"),
                         splits=card.get("splits_file"))
    if folder.fingerprint != card.get("fingerprint"):
        raise InputError(f"{card['root']}: the DICOM folder, its labels/masks or splits changed since this model was "
                         f"trained (fingerprint {folder.fingerprint} != {card.get('fingerprint')}); retrain, or pass "
                         f"dataset= explicitly")
    return quant_dataset(folder, chw, calib_n)
