"""Backend registry: TensorRT (GPU) first, then the CPU backends, as in ggml's backend registry.
"auto" orders the two CPU backends per bundle (OpenVINO or ONNX Runtime first; engine/backends/cpu_choice.py).

Listing the registry imports no heavy library: each backend answers `availability()` from package
metadata and the native CUDA probe, and imports tensorrt/onnxruntime only when activated.
"""
from __future__ import annotations

import importlib

from engine.backends.base import Backend
from engine.errors import BackendUnavailable, InputError

# Priority order; the CPU backend is last so "auto" prefers an accelerator when one can run the bundle.
_BACKENDS = {
    "tensorrt": "engine.backends.tensorrt:TensorRTBackend",
    "openvino": "engine.backends.openvino:OpenVINOBackend",
    "onnxruntime": "engine.backends.onnxruntime:OnnxRuntimeBackend",
}


def backend_names() -> list[str]:
    return list(_BACKENDS)


def backend_class(name: str) -> type[Backend]:
    try:
        target = _BACKENDS[name]
    except KeyError:
        raise InputError(f"unknown backend {name!r}; choose 'auto' or one of {backend_names()}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def available_backends() -> dict[str, str]:
    """{backend name: "available: ..." or "unavailable: <reason>"}, in priority order (`slicert info`)."""
    out = {}
    for name in _BACKENDS:
        ok, why = backend_class(name).availability()
        out[name] = f"{'available' if ok else 'unavailable'}: {why}"
    return out


def registered_backends() -> list[type[Backend]]:
    """Backend classes usable on this machine, in priority order (CPU last)."""
    return [cls for cls in map(backend_class, _BACKENDS) if cls.availability()[0]]


def require_backend(name: str) -> type[Backend]:
    """The class of an explicitly requested backend, or BackendUnavailable listing what is available."""
    cls = backend_class(name)
    ok, why = cls.availability()
    if not ok:
        status = "; ".join(f"{n}: {s}" for n, s in available_backends().items())
        usable = [c.name for c in registered_backends()]
        raise BackendUnavailable(f"backend {name!r} cannot run here: {why}. Available: {usable or 'none'} "
                                 f"({status}); pass backend='auto' to pick one")
    return cls


__all__ = ["Backend", "available_backends", "backend_class", "backend_names", "registered_backends",
           "require_backend"]
