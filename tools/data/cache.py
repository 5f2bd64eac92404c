"""On-disk dataset cache: <cache>/datasets/<name>-<key>/{data.npz, card.json, card.md}.

The key hashes everything that determines the data (generator version, parameters, seed, source
checksums), so a changed generator never serves stale data. card.json records the SHA-256 of
data.npz; a cache entry that fails that check is rebuilt (it is ours and reproducible).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from tools.io import ensure_writable_dir, publish_dir, read_json, save_npz_atomic, sha256_file, staging_dir


def default_cache_dir() -> Path:
    """$SLICERT_CACHE, else ~/.cache/slicert."""
    env = os.environ.get("SLICERT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "slicert"


def cache_key(name: str, version: int, params: dict, seed: int, source_sha256: dict) -> str:
    blob = json.dumps({"name": name, "version": version, "params": params, "seed": seed,
                       "source": source_sha256}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def entry_dir(cache_dir: Path, name: str, key: str) -> Path:
    return Path(cache_dir) / "datasets" / f"{name}-{key}"


def pack(splits: dict) -> dict[str, np.ndarray]:
    arrays = {}
    for split, d in splits.items():
        arrays[f"{split}/images"] = d["images"]
        arrays[f"{split}/targets"] = d["targets"]
        for k, v in d["meta"].items():
            arrays[f"{split}/meta/{k}"] = v
    return arrays


def unpack(arrays) -> dict:
    splits: dict = {}
    for full in arrays.files:
        split, kind, *rest = full.split("/")
        d = splits.setdefault(split, {"meta": {}})
        if kind == "meta":
            d["meta"][rest[0]] = arrays[full]
        else:
            d[kind] = arrays[full]
    return splits


def try_load(directory: Path) -> tuple[dict, dict] | None:
    """(splits, card) if the entry is complete and its data matches the recorded hash, else None."""
    card_path, data_path = directory / "card.json", directory / "data.npz"
    if not (card_path.is_file() and data_path.is_file()):
        return None
    try:
        card = read_json(card_path)
        if sha256_file(data_path) != card.get("data_sha256"):
            return None
        with np.load(data_path, allow_pickle=False) as z:
            splits = unpack(z)
    except (OSError, ValueError, KeyError):
        return None
    return splits, card


def store(directory: Path, splits: dict, card: dict, write_card) -> dict:
    """Write a complete entry in a staging directory, then move it into place (replacing a corrupt one)."""
    ensure_writable_dir(directory.parent)
    tmp = staging_dir(directory)
    try:
        save_npz_atomic(tmp / "data.npz", pack(splits))
        card = dict(card, data_sha256=sha256_file(tmp / "data.npz"))
        write_card(tmp, card)
        publish_dir(tmp, directory, force=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return card
