"""Activation ranges from the calibration split: max (MinMax), percentile or entropy (KL histogram).

One calibration run per quantize command: the ranges are saved as ONNX Runtime's calibration cache
(JSON) and every variant (full INT8, per-layer sensitivity probes, mixed precision, both Q/DQ forms)
reuses them, so all variants see identical scales.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from engine.errors import InputError
from tools.quantize.runner import quiet_ort_logging

METHODS = ("max", "percentile", "entropy")
DEFAULT_PERCENTILE = 99.999
CALIB_BATCH = 32


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over an in-memory (N, C, H, W) array."""

    def __init__(self, x: np.ndarray, batch: int = CALIB_BATCH):
        self._x, self._batch, self._i = x, batch, 0

    def get_next(self):
        if self._i >= len(self._x):
            return None
        b = self._x[self._i:self._i + self._batch]
        self._i += self._batch
        return {"input": b}

    def __len__(self):
        return len(self._x)


def ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    try:
        return {"max": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                "entropy": CalibrationMethod.Entropy}[method]
    except KeyError:
        raise InputError(f"calibration method {method!r}: choose one of {METHODS}") from None


def _collect(model_path: Path, x: np.ndarray, method: str, workdir: Path, percentile: float):
    from onnxruntime.quantization.calibrate import create_calibrator

    extra = {"percentile": percentile} if method == "percentile" else {}
    cal = create_calibrator(model_path, None, augmented_model_path=str(workdir / f"augmented_{method}.onnx"),
                            calibrate_method=ort_method(method), extra_options=extra)
    # ORT's histogram calibrators print progress to stdout; keep the CLI's stdout for results.
    with contextlib.redirect_stdout(io.StringIO()):
        cal.collect_data(_Reader(x))
        return cal.compute_data()


def calibrate(model_path: str | Path, x: np.ndarray, method: str, workdir: str | Path, *,
              percentile: float = DEFAULT_PERCENTILE) -> tuple[Path, dict[str, tuple[float, float]]]:
    """Compute activation ranges of every float tensor over `x` and write ORT's calibration cache.

    Histogram methods are clipped to the observed min/max: a percentile or KL range never extends
    beyond what the data showed, and a tensor that was never negative (ReLU outputs) keeps lower
    bound 0, which the CPU Q/DQ form needs to fold ReLU into QuantizeLinear.
    Returns (cache path, {tensor: (low, high)})."""
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    if method not in METHODS:
        raise InputError(f"calibration method {method!r}: choose one of {METHODS}")
    if not 0.0 < percentile <= 100.0:
        raise InputError(f"percentile must be in (0, 100], got {percentile}")
    workdir = Path(workdir)
    model_path = Path(model_path)
    with quiet_ort_logging():
        minmax = _collect(model_path, x, "max", workdir, percentile)
        ranges = minmax if method == "max" else _collect(model_path, x, method, workdir, percentile)
    out: dict[str, TensorData] = {}
    summary: dict[str, tuple[float, float]] = {}
    for name, td in ranges.items():
        lo, hi = (np.asarray(v, np.float32).reshape(()) for v in td.range_value)
        if method != "max" and name in minmax:
            mlo, mhi = (np.asarray(v, np.float32).reshape(()) for v in minmax[name].range_value)
            lo, hi = np.maximum(lo, mlo), np.minimum(hi, mhi)
            if not hi > lo:  # degenerate histogram: fall back to the observed range
                lo, hi = mlo, mhi
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise InputError(f"calibration: tensor {name!r} reached a non-finite value ({lo}, {hi}) on the "
                             f"calibration set; the FP32 model itself overflows")
        out[name] = TensorData(lowest=lo.astype(np.float32), highest=hi.astype(np.float32))
        summary[name] = (float(lo), float(hi))
    cache = workdir / f"calibration_{method}.json"
    save_tensors_data(TensorsData(ort_method(method), out), cache)
    return cache, summary
