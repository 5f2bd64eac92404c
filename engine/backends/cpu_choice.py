"""Which CPU backend `engine.load(backend="auto")` tries first: OpenVINO or ONNX Runtime.

Rule, in order:
  1. Measured: the manifest's `cpu_timings` (written by `slicert build`, engine/bundle/cpu_timing.py)
     were taken on a CPU with the same model name and instruction-set flags as this one: the backend
     whose variant for the requested precision ran faster there goes first.
  2. Not measured here (no timings, or timings from another CPU): OpenVINO first when the bundle has an
     OpenVINO INT8 form (NNCF IR) that passed its gate AND this CPU has INT8 dot-product instructions
     (AVX512-VNNI, AVX-VNNI or AMX-INT8), where OpenVINO's INT8 ran 4-9x faster than ONNX Runtime on the
     architectures of issue 14; otherwise ONNX Runtime, the reference backend.
The answer is an order, not a verdict: a backend that then cannot run the bundle is skipped as before.
"""
from __future__ import annotations

CPU_BACKENDS = ("openvino", "onnxruntime")
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def gate_ok(entry: dict, backend: str) -> bool:
    """False when the variant's accuracy gate failed, overall or for `backend`'s form (None = not stated)."""
    gate = entry.get("accuracy_gate") or {}
    form = (gate.get("forms") or {}).get(backend)
    return gate.get("passed") is not False and not (isinstance(form, dict) and form.get("passed") is False)


def timing_flags() -> list[str]:
    """The CPU flags recorded with (and compared against) build-time timings."""
    from engine.envinfo import cpu_flags

    return cpu_flags(("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
                      "avx512_bf16", "amx_bf16", "amx_int8", "neon", "asimd"))


def _timings_here(manifest) -> dict | None:
    from engine.envinfo import cpu_model

    t = manifest.get("cpu_timings")
    if not t:
        return None
    if t.get("cpu_model") != cpu_model() or sorted(t.get("cpu_flags", [])) != sorted(timing_flags()):
        return None
    return t


def _variant_ms(bundle, backend: str, precision: str, per_variant: dict) -> tuple[str, float] | None:
    """(variant, ms) the backend would run for `precision`, from the measured table."""
    usable = {v: ms for v, ms in per_variant.items() if v in bundle.variants and gate_ok(bundle.variants[v], backend)}
    if precision != "best":
        return (precision, usable[precision]) if precision in usable else None
    if not usable:
        return None
    v = min(usable, key=usable.get)
    return v, usable[v]


def auto_order(bundle, precision: str, names: list[str]) -> tuple[list[str], str]:
    """(backend names in the order auto tries them, why the CPU backends are in that order)."""
    from engine.backends import backend_class

    cpu = [n for n in names if n in CPU_BACKENDS and backend_class(n).availability()[0]]
    if len(cpu) < 2:  # nothing to order: the registry order stands and auto reports what was unavailable
        return list(names), ""
    timed = _timings_here(bundle.manifest)
    first = None
    if timed is not None:
        ms = {b: _variant_ms(bundle, b, precision, timed["median_ms"].get(b) or {}) for b in cpu}
        measured = {b: m for b, m in ms.items() if m is not None}
        if len(measured) == 2:
            first = min(measured, key=lambda b: measured[b][1])
            other = next(b for b in cpu if b != first)
            why = (f"{first} first: its {measured[first][0]} ran {measured[first][1]:.2f} ms vs {other}'s "
                   f"{measured[other][0]} {measured[other][1]:.2f} ms, measured at build on this CPU "
                   f"({timed.get('threads', '?')} thread(s), median of {timed.get('calls', '?')} calls)")
        elif measured:
            first = next(iter(measured))
            why = f"{first} first: the only CPU backend with a build-time timing for precision {precision!r}"
    if first is None:
        from engine.envinfo import cpu_flags

        ov_int8 = any(isinstance(e.get("openvino"), dict) and gate_ok(e, "openvino")
                      for v, e in bundle.variants.items() if v in ("int8", "mixed"))
        dot = cpu_flags(INT8_DOT_FLAGS)
        if ov_int8 and dot and precision in ("best", "int8", "mixed"):
            first = "openvino"
            why = (f"openvino first: no build-time timings for this CPU; the bundle has an OpenVINO INT8 form and "
                   f"the CPU has {dot} (rule, see engine/backends/cpu_choice.py)")
        else:
            first = "onnxruntime"
            reason = ("the bundle has no OpenVINO INT8 form" if not ov_int8 else
                      "this CPU has no INT8 dot-product instructions (VNNI/AMX)" if not dot else
                      f"precision {precision!r} is not INT8")
            why = (f"onnxruntime first: no build-time timings for this CPU and {reason} (rule, see "
                   f"engine/backends/cpu_choice.py)")
    order = [n for n in names if n not in cpu]
    order += [first] + [b for b in cpu if b != first]
    return order, why
