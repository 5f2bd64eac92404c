"""Splits by PatientID: train (fit), val (model selection, mixed-precision layer choice), calib
(quantizer calibration) and test (reported only). A patient's images are never in two splits.

The first run draws the split from a seed and writes it to a splits file (JSON, one entry per
image); later runs read that file and never re-draw, so the test split stays fixed while models
change. A splits file that puts one patient in two splits, or does not cover this dataset's images,
raises SplitLeak naming the file.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from tools.dataset.scan import ImageRecord
from tools.errors import DatasetError, SplitLeak

SPLITS = ("train", "val", "calib", "test")
DEFAULT_FRACTIONS = {"train": 0.6, "val": 0.15, "calib": 0.1, "test": 0.15}
SCHEMA = "slicert-splits/1"


def patient_key(patient_id: str) -> str:
    """A stable pseudonym of a PatientID for files that leave the data folder (reports, model.json)."""
    return hashlib.sha256(patient_id.encode("utf-8")).hexdigest()[:12]


def draw(records: list[ImageRecord], seed: int, fractions: dict[str, float] | None = None,
         classes_of: dict[str, set[int]] | None = None) -> dict[str, str]:
    """{image rel: split}. Patients are shuffled with `seed`; one patient each goes to test, val and
    calib first, then each next patient joins the split furthest below its target share, counted per
    class (`classes_of`: image rel -> class ids it holds) so that every split sees every class when
    the data allows it."""
    fr = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    if set(fr) != set(SPLITS) or any(not (0 <= v <= 1) for v in fr.values()) or abs(sum(fr.values()) - 1) > 1e-6:
        raise DatasetError(f"split fractions must give each of {SPLITS} a share in [0, 1] summing to 1, got {fr}")
    by_patient: dict[str, list[str]] = {}
    for r in records:
        by_patient.setdefault(r.patient_id, []).append(r.rel)
    patients = sorted(by_patient)
    if len(patients) < 4:
        raise DatasetError(f"{len(patients)} patient(s): splitting by PatientID needs at least 4 (one per split "
                           f"{SPLITS}); images of one patient are never split apart")
    order = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]
    # Per patient: image count (column 0) and images holding each class (columns 1..).
    k = 1 + max((max(c, default=-1) for c in (classes_of or {}).values()), default=-1) + 1
    counts = {}
    for pid, rels in by_patient.items():
        v = np.zeros(k)
        v[0] = len(rels)
        for rel in rels:
            for c in (classes_of or {}).get(rel, ()):
                v[1 + c] += 1
        counts[pid] = v
    total = np.maximum(sum(counts.values()), 1)
    have = {s: np.zeros(k) for s in SPLITS}
    assign: dict[str, str] = {}
    for pid, first in zip(order, ("test", "val", "calib")):
        assign[pid] = first
        have[first] += counts[pid]
    for pid in order[3:]:
        v = counts[pid] / total
        s = max(SPLITS, key=lambda s: (float((v * (fr[s] * total - have[s]) / total).sum()), s == "train"))
        assign[pid] = s
        have[s] += counts[pid]
    return {rel: assign[pid] for pid, rels in by_patient.items() for rel in rels}


def write(path: Path, records: list[ImageRecord], files: dict[str, str], seed: int) -> None:
    from tools.io import write_json_atomic

    by_rel = {r.rel: r for r in records}
    write_json_atomic(path, {
        "schema": SCHEMA, "by": "PatientID", "seed": seed,
        "note": "written once by `slicert dataset check`; reused unchanged by every later run. Delete it to re-split.",
        "files": {rel: {"split": s, "patient": patient_key(by_rel[rel].patient_id)} for rel, s in sorted(files.items())},
    }, force=False)


def read(path: Path, records: list[ImageRecord]) -> dict[str, str]:
    """{image rel: split} from a splits file, checked against `records` (the labelled usable images)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SplitLeak(f"{path}: not a readable splits file ({exc})") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise SplitLeak(f"{path}: expected {{\"files\": {{image: {{\"split\": ...}}}}}} ({SCHEMA})")
    out: dict[str, str] = {}
    for rel, entry in files.items():
        s = entry.get("split") if isinstance(entry, dict) else entry
        if s not in SPLITS:
            raise SplitLeak(f"{path}: {rel}: split must be one of {SPLITS}, got {s!r}")
        out[rel] = s
    where: dict[str, tuple[str, str]] = {}
    missing = []
    for r in records:
        s = out.get(r.rel)
        if s is None:
            missing.append(r.rel)
            continue
        seen = where.get(r.patient_id)
        if seen is not None and seen[0] != s:
            raise SplitLeak(f"{path}: patient {r.patient_id!r} is in two splits: {seen[1]} in {seen[0]!r}, {r.rel} in "
                            f"{s!r}; a patient's images must all be in one split")
        where.setdefault(r.patient_id, (s, r.rel))
    if missing:
        raise SplitLeak(f"{path}: {len(missing)} labelled image(s) are not in this splits file (e.g. {missing[0]}); "
                        f"the file was written for other data: delete it to draw a new split, or add them")
    return {r.rel: out[r.rel] for r in records}


def load_or_draw(path: Path, records: list[ImageRecord], seed: int, fractions: dict[str, float] | None = None,
                 classes_of: dict[str, set[int]] | None = None) -> tuple[dict[str, str], str]:
    """(split of every record, "reused" | "written")."""
    path = Path(path)
    if path.is_file():
        return read(path, records), "reused"
    files = draw(records, seed, fractions, classes_of)
    write(path, records, files, seed)
    return files, "written"
