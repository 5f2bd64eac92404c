"""OpenVINO precision variants, through the same accuracy gate as every other variant.

* INT8 (`model.int8.openvino.xml` + `.bin`): NNCF post-training quantization (`nncf.quantize`) of the
  FP32 model read by OpenVINO, calibrated on the SAME calibration slices as the ONNX Runtime / TensorRT
  INT8 forms (the quantizer's "calib" split, preprocessed by engine.preprocess). Stored as OpenVINO IR,
  not ONNX, because NNCF's OpenVINO backend produces FakeQuantize nodes placed for OpenVINO's CPU plugin
  (its low-precision transformations fuse them into INT8 kernels) and OpenVINO has no ONNX writer for
  them; an IR also loads without the ONNX frontend conversion (shorter cold start).
* BF16: the FP32 model compiled with INFERENCE_PRECISION_HINT=bf16; only on a CPU with AMX-BF16 or
  AVX512-BF16 (engine.backends.openvino.BF16_FLAGS). No file: the bundle runs its FP32 ONNX with the hint.

Each is run by OpenVINO itself on the held-out test split, scored like the others (metrics.evaluate
against the FP32 student's outputs), and gated with gate.check. When full INT8 loses more than the budget
on the VALIDATION split, the most sensitive layers of the quantizer's ranking (also from the validation
split) stay FP32 one more at a time (NNCF ignored scope), as the mixed-precision search does for the other
forms; the test split only gates the result. (Measured on an earlier quantizer-test classifier: full
NNCF INT8 lost 0.016 AUC, most of it in the 1-channel stem convolution, K = 9.) A form that fails is not written and is
never bundled, so `best` cannot pick it; ONNX Runtime/TensorRT forms are unaffected either way.
Report keys: variants.int8_ov, variants.bf16_ov (contract 6; engine/bundle/sources.py reads them).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FILES = {"int8_ov": ("model.int8.openvino.xml", "model.int8.openvino.bin")}
EVAL_BATCH = 32
CALIB_BATCH = 32
MAX_FP32_LAYERS = 3  # each try is one NNCF run; the search stops here (the quantizer's cap may be larger)


@dataclass
class OpenVINOForms:
    """What the OpenVINO step produced: report entries, files to write, and what was skipped and why."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # report variants.<key>
    files: dict[str, bytes] = field(default_factory=dict)  # file name -> bytes (only gated-and-passed forms)
    skipped: dict[str, str] = field(default_factory=dict)  # key -> why it was not built


def compile_cpu(model, *, threads: int = 1, precision: str = "f32"):
    """A CPU compiled model with the runtime's latency settings (engine/backends/openvino.py)."""
    from engine.backends.openvino import compile_config, core

    return core().compile_model(model, "CPU", compile_config(threads, "bf16" if precision == "bf16" else "fp32",
                                                             None))


def run_batched(compiled, x: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """First output of `compiled` over x (N, C, H, W) in batches, as float32."""
    req = compiled.create_infer_request()
    outs = []
    for i in range(0, len(x), batch):
        res = req.infer({0: np.ascontiguousarray(x[i:i + batch])})
        outs.append(np.array(res[compiled.outputs[0]], dtype=np.float32))
    return np.concatenate(outs)


def read_fp32(model_path: Path):
    """The FP32 ONNX as an ov.Model with a dynamic batch axis (read from bytes, like the runtime)."""
    import openvino as ov

    from engine.backends.openvino import core

    model = core().read_model(Path(model_path).read_bytes())
    shape = model.inputs[0].get_partial_shape()
    model.reshape({model.inputs[0].get_any_name(): ov.PartialShape([-1, *list(shape)[1:]])})
    return model


def nncf_int8(model, calib_x: np.ndarray, fp32_layers: list[str] = ()):
    """NNCF post-training INT8 (default preset: symmetric weights and activations, per-channel weights,
    fast bias correction) over every calibration slice, fed in batches of CALIB_BATCH slices (measured 7x
    faster than one slice per NNCF sample: 5 s vs 35 s for 256 slices of 32x32 on the 2-core machine; the
    min/max statistics see the same slices). `fp32_layers`: ONNX node names left unquantized (OpenVINO
    names its nodes after them, e.g. "<name>/WithoutBiases")."""
    import re

    import nncf

    items = [calib_x[i:i + CALIB_BATCH] for i in range(0, len(calib_x), CALIB_BATCH)]
    kw = {}
    if fp32_layers:
        kw["ignored_scope"] = nncf.IgnoredScope(patterns=[re.escape(n) + "(/.*)?$" for n in fp32_layers],
                                                validate=False)
    # NNCF prints progress bars to stdout and logs statistics at INFO; the quantizer's stdout is for results.
    nncf.set_log_level(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NNCF's own deprecation notices about its optional backends
        return nncf.quantize(model, nncf.Dataset(items), subset_size=len(items), **kw)


def ir_bytes(model) -> tuple[bytes, bytes]:
    """(xml, bin) of an ov.Model, FP32 weights kept (no FP16 compression: the gate measured these)."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="slicert-ov-") as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        return xml.read_bytes(), xml.with_suffix(".bin").read_bytes()


def build(src_path: Path, ds, *, evaluate, gate, results_fp32: dict[str, Any], cpu_has_bf16: bool | None = None,
          val_ok=None, ranking: list[str] = (), max_fp32_layers: int = 0, say=lambda _m: None) -> OpenVINOForms:
    """Make, evaluate and gate the OpenVINO forms. `evaluate(name, out) -> result dict` scores a test-split
    output; `gate(name, result) -> gate record`; `val_ok(out) -> bool` says whether a validation-split output
    is within budget (None: no search); `ranking`: layer names, most sensitive first (validation split).
    Returns the entries and the files to publish."""
    import importlib.util

    from engine.backends.openvino import cpu_has_bf16 as _bf16_here

    forms = OpenVINOForms()
    if importlib.util.find_spec("openvino") is None:
        forms.skipped["int8_ov"] = forms.skipped["bf16_ov"] = "openvino is not installed"
        return forms
    fp32 = read_fp32(src_path)
    if importlib.util.find_spec("nncf") is None:
        forms.skipped["int8_ov"] = "nncf is not installed (pip install nncf; it is in the tools extra)"
    else:
        say(f"OpenVINO INT8 (NNCF, {len(ds.calib.x)} calibration slices)")
        q, kept, tried = nncf_int8(fp32, ds.calib.x), [], []
        if val_ok is not None and ranking:
            ok = val_ok(run_batched(compile_cpu(q), ds.val.x))
            tried.append({"fp32_layers": [], "val_within_budget": ok})
            for k in range(1, min(max_fp32_layers, MAX_FP32_LAYERS) + 1):
                if ok:
                    break
                kept = list(ranking[:k])
                say(f"OpenVINO INT8: {k} most sensitive layer(s) kept FP32 (validation split)")
                q = nncf_int8(fp32, ds.calib.x, kept)
                ok = val_ok(run_batched(compile_cpu(q), ds.val.x))
                tried.append({"fp32_layers": kept, "val_within_budget": ok})
        xml, weights = ir_bytes(q)
        compiled = compile_cpu(q)
        out = run_batched(compiled, ds.test.x)
        forms.entries["int8_ov"] = _entry("int8_ov", evaluate, gate, out, compiled, results_fp32,
                                          method="NNCF post-training quantization (nncf.quantize, default preset)",
                                          file=FILES["int8_ov"][0], weights=FILES["int8_ov"][1],
                                          weights_sha=hashlib.sha256(weights).hexdigest())
        forms.entries["int8_ov"]["fp32_layers"] = kept
        forms.entries["int8_ov"]["fp32_layer_search"] = tried
        # Proof of "the same calibration slices": the digest the report records for the calib split.
        forms.entries["int8_ov"]["calibration"] = {"split": "calib", "n_slices": len(ds.calib.x),
                                                   "data_sha256": ds.calib.sha256}
        if forms.entries["int8_ov"]["passed"]:
            forms.files.update({FILES["int8_ov"][0]: xml, FILES["int8_ov"][1]: weights})
        else:
            forms.entries["int8_ov"]["file"] = forms.entries["int8_ov"]["weights_file"] = None
    has_bf16 = _bf16_here() if cpu_has_bf16 is None else cpu_has_bf16
    if not has_bf16:
        from engine.backends.openvino import BF16_FLAGS

        forms.skipped["bf16_ov"] = f"this CPU has none of {list(BF16_FLAGS)}: OpenVINO would not run bf16 natively"
    else:
        say("OpenVINO BF16 (inference precision hint on the FP32 model)")
        compiled = compile_cpu(fp32, precision="bf16")
        out = run_batched(compiled, ds.test.x)
        forms.entries["bf16_ov"] = _entry("bf16_ov", evaluate, gate, out, compiled, results_fp32,
                                          method="FP32 model, INFERENCE_PRECISION_HINT=bf16", file=None)
    return forms


def _entry(key, evaluate, gate, out, compiled, results_fp32, *, method, file, weights=None, weights_sha=None):
    from tools.quantize import metrics

    if not np.all(np.isfinite(out)):
        res = {"metrics": {n: {"value": float("nan"), "ci95": [float("nan")] * 2} for n in results_fp32["metrics"]}}
        g = gate(key, res)
        g["passed"] = False
        reason = "non-finite outputs on the test split"
    else:
        res = evaluate(key, out)
        g = gate(key, res)
        reason = None
    entry = {"file": file, "target": "openvino", "passed": bool(g["passed"]), "accepted_loss": False,
             "method": method,
             "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
             "reason": reason or (f"Δ{g['metric']} {g['loss']:+.4f} {'<=' if g['passed'] else '>'} budget "
                                  f"{g['budget']} (test split, run by OpenVINO)"),
             "gate": g, **res}
    if "_samples" in res and "_samples" in results_fp32:
        entry["delta_vs_fp32"] = {n: metrics.paired_delta(res, results_fp32, n) for n in res["metrics"]}
    if weights is not None:
        entry["weights_file"], entry["weights_sha256"] = weights, weights_sha
    return entry
