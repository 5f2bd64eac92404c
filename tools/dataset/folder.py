"""A dataset from a folder of DICOM files: images + labels or masks, split by patient, turned into
model inputs by the runtime's own code.

Model inputs are made exactly as `engine.load(bundle).run(path)` makes them: engine.dicom.read(path)
-> Slice.spec_for(model spec, voi policy) -> engine.preprocess.preprocess_into (the fused native
kernel). Same reader, same spec derivation, same kernel: no train/serve skew (tested bit for bit).
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tools.dataset import scan as scan_mod
from tools.dataset import splits as splits_mod
from tools.dataset.scan import ImageRecord, Unusable
from tools.errors import DatasetError, EmptyClass, LabelsError, MaskMismatch, MixedImages

VERSION = 1  # bump when what a dataset yields for the same files changes


@dataclass
class DicomFolder:
    """The checked dataset. `records[split]` are the images of each split in a fixed order."""

    root: Path
    spec: Any  # tools.model_spec.ModelSpec
    records: dict[str, list[ImageRecord]]
    targets: dict[str, np.ndarray]  # classification: (N,) int64; segmentation: (N, H, W) int64 on the model grid
    report: dict[str, Any]
    labels_file: Path | None = None
    masks_dir: Path | None = None
    splits_file: Path | None = None
    _inputs: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def labels(self) -> tuple[str, ...]:
        return self.spec.labels

    @property
    def fingerprint(self) -> str:
        """Hash of everything that determines the tensors: files, targets, splits, spec."""
        h = hashlib.sha256()
        h.update(json.dumps({"v": VERSION, "spec": self.spec.to_dict()}, sort_keys=True).encode())
        for s in splits_mod.SPLITS:
            for r in self.records[s]:
                h.update(f"{s}:{r.rel}:{r.sha256}".encode())
            h.update(np.ascontiguousarray(self.targets[s]).tobytes())
        return h.hexdigest()[:16]

    def inputs(self, split: str) -> np.ndarray:
        """(N, C, H, W) float32 model inputs of `split` (computed once), as the runtime makes them."""
        if split not in self._inputs:
            self._inputs[split] = model_inputs([r.path for r in self.records[split]], self.spec)
        return self._inputs[split]

    def meta(self, split: str) -> dict[str, np.ndarray]:
        """Per-image values the metrics can break results down by: none for a DICOM folder."""
        return {}

    def card(self) -> dict[str, Any]:
        """The model.json "dataset" card: where the data is and what it holds, without patient identifiers."""
        r = self.report
        return {"kind": "dicom_folder", "name": self.root.name, "root": str(self.root),
                "labels_file": str(self.labels_file) if self.labels_file else None,
                "masks_dir": str(self.masks_dir) if self.masks_dir else None,
                "splits_file": str(self.splits_file) if self.splits_file else None,
                "fingerprint": self.fingerprint, "task": self.task, "labels": list(self.labels),
                "splits": {s: {"n": r["images"][s], "patients": r["patients"][s], "classes": r["classes"][s]}
                           for s in splits_mod.SPLITS},
                "modalities": r["modalities"],
                "provenance": {"real": f"DICOM folder {self.root} ({r['n_used']} images, "
                                       f"{sum(r['patients'].values())} patients)",
                               "simulated": None, "label": f"DICOM folder {self.root.name}",
                               "split_rule": "by PatientID (no patient in two splits), fixed in the splits file"}}


def model_inputs(paths: list[Path], spec, progress: Callable[[float], None] | None = None) -> np.ndarray:
    """DICOM files -> (N, C, H, W) float32 through the runtime's reader, spec derivation and kernel."""
    from engine import dicom
    from engine.preprocess import preprocess_into

    p = spec.preprocess
    out = np.empty((len(paths), p.out_channels, p.out_height, p.out_width), np.float32)
    for i, path in enumerate(paths):
        img = dicom.read(path)
        if not hasattr(img, "pixels"):
            img = img[0]
        preprocess_into(out, img.pixels, img.spec_for(p, spec.voi_policy), i)
        if progress is not None and (i + 1) % 32 == 0:
            progress((i + 1) / len(paths))
    return out


def _counter(values) -> dict[str, int]:
    return dict(sorted(Counter(values).items(), key=lambda kv: (-kv[1], kv[0])))


def _check_images(recs: list[ImageRecord], spec, where: str) -> None:
    """MixedImages when the images differ in a way the spec cannot take."""
    mods = _counter(r.modality for r in recs)
    if spec.modalities:
        bad = [r for r in recs if r.modality not in spec.modalities]
        if bad:
            raise MixedImages(f"{where}: {len(bad)} image(s) of modality {sorted({r.modality for r in bad})} but the "
                              f"spec takes {list(spec.modalities)}: {', '.join(r.rel for r in bad[:5])}")
    elif len(mods) > 1:
        minority = [r for r in recs if r.modality != next(iter(mods))]
        raise MixedImages(f"{where}: images of several modalities {mods} (e.g. {minority[0].rel} is "
                          f"{minority[0].modality}); one model spec cannot window them alike: list the ones it "
                          f"takes in the spec's \"modalities\" or remove the others")
    colour = [r for r in recs if r.photometric not in ("MONOCHROME1", "MONOCHROME2")]
    if colour and len(colour) != len(recs):
        raise MixedImages(f"{where}: mixes colour ({colour[0].rel}: {colour[0].photometric}) and greyscale images; "
                          f"the model takes one kind")
    if colour and spec.voi_policy == "model":
        raise MixedImages(f"{where}: {colour[0].rel} is colour ({colour[0].photometric}) but the spec's fixed VOI "
                          f"window applies to grey modality values: use voi policy 'dicom'")
    if spec.source_size:
        bad = [r for r in recs if (r.rows, r.columns) != spec.source_size]
        if bad:
            raise MixedImages(f"{where}: the spec takes {spec.source_size[0]}x{spec.source_size[1]} images only; "
                              f"{len(bad)} differ, e.g. {bad[0].rel} ({bad[0].rows}x{bad[0].columns})")
    roi = spec.preprocess.roi
    if roi is not None:
        bad = [r for r in recs if r.rows < roi[0] + roi[2] or r.columns < roi[1] + roi[3]]
        if bad:
            raise MixedImages(f"{where}: the spec's roi {roi} does not fit inside {len(bad)} image(s), e.g. "
                              f"{bad[0].rel} ({bad[0].rows}x{bad[0].columns})")


def open_folder(root: str | Path, spec, *, labels: str | Path | None = None, masks: str | Path | None = None,
                splits: str | Path | None = None, seed: int = 0, fractions: dict[str, float] | None = None,
                exclude: tuple[Path, ...] = ()) -> DicomFolder:
    """Check a DICOM folder against a model spec and split it by patient.

    classification: `labels` (CSV, see tools.dataset.labels) is required; segmentation: `masks` (a folder,
    see tools.dataset.masks) is required. `splits`: the splits file (default: splits.json next to the labels
    file, else next to the masks folder); drawn with `seed` and written if absent, else read and reused.
    Raises DatasetError subclasses naming the file: LabelsError, MaskMismatch, MixedImages, EmptyClass,
    SplitLeak."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: DICOM folder not found")
    labels_p = Path(labels).expanduser() if labels is not None else None
    masks_p = Path(masks).expanduser() if masks is not None else None
    if spec.task == "classification" and labels_p is None:
        raise LabelsError(f"{root}: a classification dataset needs a labels file (--labels labels.csv: file,label)")
    if spec.task == "segmentation" and masks_p is None:
        raise MaskMismatch(f"{root}: a segmentation dataset needs a masks folder (--masks DIR: one mask per image)")
    if splits is None:
        splits = (labels_p.parent if labels_p is not None else masks_p.parent) / "splits.json"
    splits_p = Path(splits).expanduser()
    skip = tuple(p for p in (labels_p, masks_p, splits_p) if p is not None) + tuple(exclude)
    records, unusable = scan_mod.scan(root, exclude=skip)
    unusable_rel = {u.rel for u in unusable}

    k = len(spec.labels)
    used: list[ImageRecord] = []
    target_of: dict[str, Any] = {}
    if spec.task == "classification":
        from tools.dataset.labels import read_labels

        lab, _ = read_labels(labels_p, records, unusable_rel, spec.labels)
        idx = {c: i for i, c in enumerate(spec.labels)}
        for r in records:
            if r.rel in lab:
                used.append(r)
                target_of[r.rel] = idx[lab[r.rel]]
            else:
                unusable.append(Unusable(r.rel, scan_mod.UNLABELLED, f"not in {labels_p.name}"))
    else:
        from tools.dataset.masks import MaskIndex, read_mask

        index = MaskIndex(masks_p)
        wanted = None
        if labels_p is not None:  # optional for segmentation: the list of images to use
            from tools.dataset.labels import read_labels

            wanted = set(read_labels(labels_p, records, unusable_rel, None)[0])
        for r in records:
            if wanted is not None and r.rel not in wanted:
                unusable.append(Unusable(r.rel, scan_mod.UNLABELLED, f"not in {labels_p.name}"))
                continue
            m = index.find(r)
            if m is None:
                unusable.append(Unusable(r.rel, scan_mod.NO_MASK, f"no mask under {masks_p}"))
                continue
            used.append(r)
            target_of[r.rel] = read_mask(m, r, k)
    if not used:
        raise DatasetError(f"{root}: no usable labelled image ({len(records)} readable, {len(unusable)} unusable; "
                           f"first reason: {unusable[0].reason + ': ' + unusable[0].detail if unusable else 'none'})")
    _check_images(used, spec, str(root))

    if spec.task == "classification":
        classes_of = {rel: {t} for rel, t in target_of.items()}
    else:
        classes_of = {rel: set(np.unique(m).tolist()) for rel, m in target_of.items()}
    split_of, status = splits_mod.load_or_draw(splits_p, used, seed, fractions, classes_of)
    by_split = {s: [r for r in used if split_of[r.rel] == s] for s in splits_mod.SPLITS}
    for s in splits_mod.SPLITS:
        if not by_split[s]:
            raise DatasetError(f"{splits_p}: split {s!r} holds no image; every split needs at least one patient")

    targets: dict[str, np.ndarray] = {}
    classes: dict[str, dict] = {}
    if spec.task == "classification":
        for s in splits_mod.SPLITS:
            targets[s] = np.array([target_of[r.rel] for r in by_split[s]], np.int64)
            counts = np.bincount(targets[s], minlength=k)
            classes[s] = {c: int(n) for c, n in zip(spec.labels, counts)}
        total = {c: sum(classes[s][c] for s in classes) for c in spec.labels}
        for c, n in total.items():
            if n == 0:
                raise EmptyClass(f"{labels_p}: class {c!r} has no image (the spec lists {list(spec.labels)})")
        for s in ("train", "val", "test"):
            empty = [c for c in spec.labels if classes[s][c] == 0]
            if empty:
                raise EmptyClass(f"{splits_p}: the {s} split has no image of class {empty[0]!r} (train needs every "
                                 f"class; val/test metrics such as AUC need them too): add data or draw another "
                                 f"split (delete the file, change --seed)")
    else:
        from tools.data.inputs import masks_to_grid

        for s in splits_mod.SPLITS:
            grid = [masks_to_grid(target_of[r.rel][None], spec.preprocess, k)[0] for r in by_split[s]]
            targets[s] = np.stack(grid).astype(np.int64)
            px = Counter()
            with_cls = Counter()
            for r in by_split[s]:
                m = target_of[r.rel]
                bc = np.bincount(m.ravel(), minlength=k)
                px.update({i: int(v) for i, v in enumerate(bc)})
                with_cls.update({i for i in range(k) if bc[i]})
            classes[s] = {c: {"pixels": px[i], "images_with": with_cls[i]} for i, c in enumerate(spec.labels)}
        for i, c in enumerate(spec.labels):
            if sum(classes[s][c]["pixels"] for s in classes) == 0:
                raise EmptyClass(f"{masks_p}: class {c!r} (id {i}) appears in no mask")
            if classes["train"][c]["pixels"] == 0:
                raise EmptyClass(f"{splits_p}: class {c!r} appears in no training mask; the student cannot learn it")

    def spacing(r: ImageRecord) -> str:
        return "none" if r.pixel_spacing_mm is None else "x".join(f"{v:.4g}" for v in r.pixel_spacing_mm)

    unusable.sort(key=lambda u: u.rel)
    report = {
        "root": str(root), "task": spec.task, "labels": list(spec.labels), "spec": spec.where,
        "n_files": len(records) + len([u for u in unusable if u.reason not in (scan_mod.UNLABELLED, scan_mod.NO_MASK)]),
        "n_readable": len(records), "n_used": len(used),
        "images": {s: len(by_split[s]) for s in splits_mod.SPLITS},
        "patients": {s: len({r.patient_id for r in by_split[s]}) for s in splits_mod.SPLITS},
        "classes": classes,
        "modalities": _counter(r.modality for r in records),
        "photometric": _counter(r.photometric for r in records),
        "sizes": _counter(f"{r.rows}x{r.columns}" for r in records),
        "pixel_spacing_mm": _counter(spacing(r) for r in records),
        "transfer_syntaxes": _counter(r.transfer_syntax for r in records),
        "unusable": [u.to_dict() for u in unusable],
        "unusable_by_reason": _counter(u.reason for u in unusable),
        "splits_file": str(splits_p), "splits_status": status, "seed": seed,
        "labels_file": str(labels_p) if labels_p else None, "masks_dir": str(masks_p) if masks_p else None,
    }
    return DicomFolder(root=root.resolve(), spec=spec, records=by_split, targets=targets, report=report,
                       labels_file=labels_p.resolve() if labels_p else None,
                       masks_dir=masks_p.resolve() if masks_p else None, splits_file=splits_p.resolve())


def report_markdown(rep: dict[str, Any]) -> str:
    """The check report as Markdown (what `slicert dataset check` prints, for a file or a ticket)."""
    lines = [f"# Dataset check: {rep['root']}", "",
             f"- task: {rep['task']}; classes: {', '.join(rep['labels'])}; spec: {rep['spec']}",
             f"- files: {rep['n_files']}, readable images: {rep['n_readable']}, used: {rep['n_used']}",
             f"- splits ({rep['splits_status']} {rep['splits_file']}, by PatientID): " + ", ".join(
                 f"{s} {rep['images'][s]} images / {rep['patients'][s]} patients" for s in splits_mod.SPLITS)]
    for key, title in (("modalities", "modalities"), ("photometric", "photometric interpretations"),
                       ("sizes", "sizes (rows x columns)"), ("pixel_spacing_mm", "pixel spacings (mm)"),
                       ("transfer_syntaxes", "transfer syntaxes")):
        lines.append(f"- {title}: " + ", ".join(f"{k} ({v})" for k, v in rep[key].items()))
    lines += ["", "| split | " + " | ".join(rep["labels"]) + " |", "|---|" + "---:|" * len(rep["labels"])]
    for s, cls in rep["classes"].items():
        cells = [str(v if isinstance(v, int) else v["images_with"]) for v in cls.values()]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    if rep["task"] == "segmentation":
        lines.append("\n(segmentation: images containing each class)")
    if rep["unusable"]:
        lines += ["", f"Unusable files ({len(rep['unusable'])}): " + ", ".join(
            f"{k} {v}" for k, v in rep["unusable_by_reason"].items()), "", "| file | reason | detail |", "|---|---|---|"]
        lines += [f"| {u['file']} | {u['reason']} | {u['detail']} |" for u in rep["unusable"]]
    return "\n".join(lines) + "\n"
