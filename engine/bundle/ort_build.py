"""CPU target: ONNX Runtime graph optimizations (level ALL) done once at build time, saved, verified.

Verification loads the saved model the way the runtime will (optimizations disabled, explicit CPU
provider) and checks its outputs against the source model optimized online, on seeded random inputs
at batch 1 and at max_batch.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import BundleError

# Saved-then-reloaded vs online-optimized: the same kernels on the same graph; differences come only
# from re-association in fused kernels. Stated per element as atol + rtol * |ref|.
VERIFY_ATOL = 1e-4
VERIFY_RTOL = 1e-3


def _feed(sess, batch: int, seed: int) -> dict[str, np.ndarray]:
    from engine.backends.onnxruntime import _ORT_TYPES

    rng = np.random.default_rng(seed)
    feed = {}
    for i in sess.get_inputs():
        dims = [batch if k == 0 else d for k, d in enumerate(i.shape)]
        if any(not isinstance(d, int) for d in dims):
            raise BundleError(f"model input {i.name!r} has shape {i.shape}: only the batch axis may be dynamic")
        feed[i.name] = rng.standard_normal(dims).astype(_ORT_TYPES[i.type])
    return feed


def optimize_for_cpu(onnx_bytes: bytes, *, max_batch: int, threads: int = 1, label: str = "model") -> tuple[bytes,
                                                                                                           dict[str, Any]]:
    """(ORT-optimized model bytes, verification record). Raises BundleError if the result differs."""
    import onnxruntime as ort

    from engine.backends.onnxruntime import session_options

    providers = ["CPUExecutionProvider"]
    with tempfile.TemporaryDirectory(prefix="slicert-ort-") as tmp:
        out = Path(tmp) / "model.ort.onnx"
        so = session_options(threads, optimized_model=False)
        so.optimized_model_filepath = str(out)
        try:
            online = ort.InferenceSession(onnx_bytes, so, providers=providers)
        except Exception as exc:
            raise BundleError(f"onnxruntime cannot load {label}: {exc}") from exc
        if not out.is_file():
            raise BundleError(f"onnxruntime did not write the optimized model for {label}")
        optimized_bytes = out.read_bytes()
    try:
        saved = ort.InferenceSession(optimized_bytes, session_options(threads, optimized_model=True),
                                     providers=providers)
    except Exception as exc:
        raise BundleError(f"the ORT-optimized {label} does not load back: {exc}") from exc

    worst = 0.0
    for seed, batch in enumerate(sorted({1, max_batch})):
        feed = _feed(online, batch, seed)
        ref = online.run(None, feed)
        got = saved.run(None, feed)
        for o, r, g in zip(online.get_outputs(), ref, got):
            if r.shape != g.shape:
                raise BundleError(f"ORT-optimized {label}: output {o.name!r} shape {g.shape} != {r.shape}")
            r64, g64 = r.astype(np.float64), g.astype(np.float64)
            err = np.abs(g64 - r64)
            bad = err > VERIFY_ATOL + VERIFY_RTOL * np.abs(r64)
            if bad.any() or not np.isfinite(g64).all():
                raise BundleError(f"ORT-optimized {label}: output {o.name!r} differs from the source model by up to "
                                  f"{float(err.max()):.3g} (tolerance {VERIFY_ATOL} + {VERIFY_RTOL}*|ref|)")
            worst = max(worst, float(err.max()))
    return optimized_bytes, {"max_abs_err_vs_source": worst, "atol": VERIFY_ATOL, "rtol": VERIFY_RTOL,
                             "batches_checked": sorted({1, max_batch})}
