"""SliceRT runtime: load a bundle, run one slice or frame, get scores or masks with physical units.

`import engine` stays light: ONNX Runtime, TensorRT and pydicom are imported only when a backend
or reader needs them, and PyTorch never is.
"""
from __future__ import annotations

from engine import errors  # noqa: F401  (must precede _native: it registers these classes)

try:
    from engine._native import cuda_compiled, cuda_devices  # noqa: F401
except ModuleNotFoundError as _e:
    if _e.name != "engine._native":
        raise
    from engine._missing_native import explain as _explain

    raise ImportError(_explain(__file__), name="engine._native") from None

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy public API: keeps `import engine` cheap for firmware start-up.
    if name == "load":
        from engine.session import load

        return load
    if name in ("Session", "Result"):
        import engine.session as _s

        return getattr(_s, name)
    if name == "PreprocessSpec":
        from engine.spec import PreprocessSpec

        return PreprocessSpec
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
