"""Bundle members for the OpenVINO backend: the NNCF INT8 IR and the BF16 variant, each only when the
quantizer's accuracy report says it passed its gate (variants.<v>_ov, tools/quantize/openvino_forms.py).

  * int8 (or mixed) with an OpenVINO form: `openvino/model.<v>.xml` + `.bin` travel in the bundle and the
    variant's entry gets {"openvino": {"xml", "bin"}} and a gate record for the "openvino" form. When the
    ONNX Runtime/TensorRT forms of that variant were not bundled (they failed, or mixed superseded them),
    the variant is bundled for OpenVINO alone: {"backends": ["openvino"], "onnx": <the FP32 member>}.
  * bf16: {"onnx": <the FP32 member>, "backends": ["openvino"]}: OpenVINO compiles the FP32 model with
    INFERENCE_PRECISION_HINT=bf16 (engine/backends/openvino.py).
A form whose gate failed or was not stated is left out and recorded in `excluded_variants`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from engine.bundle import format as fmt


def _verify_ir(xml: bytes, weights: bytes, label: str, chw: list[int]) -> dict[str, Any]:
    """Compile the IR from bytes and run it once on seeded random input: it must load and give finite outputs."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return {"verified": False, "why": "openvino is not installed on the build machine"}
    from engine.backends.openvino import compile_config, core
    from engine.errors import InputError

    try:
        model = core().read_model(xml, weights)
        compiled = core().compile_model(model, "CPU", compile_config(1, "int8", None))
        x = np.random.default_rng(0).standard_normal((1, *chw)).astype(np.float32)
        out = np.asarray(compiled.create_infer_request().infer({0: x})[compiled.outputs[0]])
    except RuntimeError as exc:
        raise InputError(f"{label}: OpenVINO cannot load/compile it: {str(exc).splitlines()[-1]}") from None
    if not np.all(np.isfinite(out)):
        raise InputError(f"{label}: OpenVINO gives non-finite outputs on a random input")
    return {"verified": True, "output_shape": list(out.shape)}


def add_openvino_variants(src, precision: str, entries: dict[str, dict[str, Any]], members: dict[str, Any],
                          excluded: dict[str, str], notes: list[str], chw: list[int]) -> list[str]:
    """Attach OpenVINO forms to `entries`/`members` in place; returns the variants added for OpenVINO alone."""
    from engine.bundle.sources import gate_status
    from engine.bundle.writer import sha256_bytes

    added: list[str] = []
    fp32 = entries.get("fp32", {}).get("onnx")
    for v, (xml_path, bin_path) in src.openvino.items():
        if precision not in ("best", v):
            continue
        passed, detail = gate_status(src.accuracy_report, v, "openvino")
        if passed is not True:
            excluded[f"{v} (openvino form)"] = (f"failed its accuracy gate: {detail}" if passed is False
                                                else f"no passing accuracy gate recorded ({detail})")
            continue
        if v not in entries and fp32 is None:
            notes.append(f"{v} OpenVINO form left out: an OpenVINO-only variant needs the FP32 model in the bundle")
            continue
        xml, weights = xml_path.read_bytes(), bin_path.read_bytes()
        names = fmt.openvino_members(v)
        members[names["xml"]], members[names["bin"]] = xml, weights
        form = {**names, "source_file": xml_path.name, "source_sha256": sha256_bytes(xml),
                "weights_source_file": bin_path.name, "verification": _verify_ir(xml, weights, xml_path.name, chw)}
        record = {"passed": True, "detail": detail}
        if v in entries:
            entries[v]["openvino"] = form
            entries[v].setdefault("accuracy_gate", {}).setdefault("forms", {})["openvino"] = record
        else:
            entries[v] = {"onnx": fp32, "backends": ["openvino"], "openvino": form,
                          "accuracy_gate": {"passed": True, "detail": detail, "forms": {"openvino": record}}}
            added.append(v)
    if precision in ("best", "bf16") and fp32 is not None:
        passed, detail = gate_status(src.accuracy_report, "bf16", "openvino")
        if passed is True:
            entries["bf16"] = {"onnx": fp32, "backends": ["openvino"], "openvino_precision": "bf16",
                               "accuracy_gate": {"passed": True, "detail": detail,
                                                 "forms": {"openvino": {"passed": True, "detail": detail}}}}
            added.append("bf16")
        elif passed is False:
            excluded["bf16"] = f"failed its accuracy gate: {detail}"
        else:
            skipped = ((src.accuracy_report or {}).get("openvino") or {}).get("skipped", {}).get("bf16_ov")
            if skipped:
                notes.append(f"bf16 not built by the quantizer: {skipped}")
    return added


def static_defaults(entries: dict[str, dict[str, Any]]) -> dict[str, str]:
    """default_variant per backend when nothing was timed: the first variant of fmt.BEST_ORDER that the
    backend runs (a variant restricted to other backends, or an int8 without an OpenVINO form, is skipped)."""
    from engine.backends.cpu_choice import gate_ok

    out = {}
    for backend, order in fmt.BEST_ORDER.items():
        for v in (*order, *entries):
            e = entries.get(v)
            if e is None or (e.get("backends") is not None and backend not in e["backends"]):
                continue
            if backend == "openvino" and v in ("int8", "mixed") and "openvino" not in e:
                continue
            if gate_ok(e, backend):
                out[backend] = v
                break
    return out
