"""Dataset cards: what the data is, how big, how it is split, and which parts are real or simulated."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tools.io import write_json_atomic, write_text_atomic


def make_card(*, name: str, task: str, labels: tuple[str, ...], built: dict, params: dict, seed: int,
              version: int, key: str, spec_dict: dict, voi_policy: str) -> dict[str, Any]:
    splits = {}
    for split, d in built["splits"].items():
        images, targets = d["images"], d["targets"]
        if task == "classification":
            counts = np.bincount(targets, minlength=len(labels))
            per_class = {lab: int(c) for lab, c in zip(labels, counts)}
        else:
            counts = np.bincount(targets.ravel(), minlength=len(labels))
            per_class = {lab: {"pixels": int(c), "images_with": int((targets == k).any(axis=(1, 2)).sum())}
                         for k, (lab, c) in enumerate(zip(labels, counts))}
        splits[split] = {"n": int(images.shape[0]), "classes": per_class}
    first = next(iter(built["splits"].values()))["images"]
    return {
        "name": name,
        "task": task,
        "labels": list(labels),
        "generator_version": version,
        "seed": seed,
        "cache_key": key,
        "image": {"shape": list(first.shape[1:]), "dtype": str(first.dtype),
                  "pixel_spacing_mm": list(built["pixel_spacing_mm"]) if built["pixel_spacing_mm"] else None},
        "splits": splits,
        "provenance": built["provenance"],
        "source_sha256": built["source_sha256"],
        "preprocess": spec_dict,
        "voi_policy": voi_policy,
        "params": params,
    }


def card_markdown(card: dict[str, Any]) -> str:
    prov = card["provenance"]
    lines = [f"# Dataset card: {card['name']}", "",
             f"- task: {card['task']}; labels: {', '.join(card['labels'])}",
             f"- real: {prov['real']}", f"- simulated: {prov['simulated']}"]
    if "label" in prov:
        lines.append(f"- name in reports: **{prov['label']}**")
    lines += [f"- splits: {prov['split_rule']}", f"- caveat: {prov['caveat']}",
              f"- stored images: {card['image']['dtype']} {card['image']['shape']} (raw detector-style values; "
              f"model inputs come from engine.preprocess with the `preprocess` spec)",
              f"- generator version {card['generator_version']}, seed {card['seed']}, cache key {card['cache_key']}",
              "", "| split | images | classes |", "|---|---|---|"]
    for split, s in card["splits"].items():
        cls = ", ".join(f"{k}: {v if isinstance(v, int) else v['images_with']}" for k, v in s["classes"].items())
        lines.append(f"| {split} | {s['n']} | {cls} |")
    if card["task"] == "segmentation":
        lines.append("\n(segmentation class counts = images containing the class)")
    if card["source_sha256"]:
        lines += ["", "Source files (SHA-256 verified on every build):"]
        lines += [f"- {k}: `{v}`" for k, v in card["source_sha256"].items()]
    return "\n".join(lines) + "\n"


def write_card(directory: Path, card: dict[str, Any], *, force: bool = True) -> None:
    write_json_atomic(directory / "card.json", card, force=force)
    write_text_atomic(directory / "card.md", card_markdown(card), force=force)
