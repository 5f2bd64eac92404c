"""The seam below which the GPU lives, for the TensorRT backend and the TensorRT builder.

Everything those two need from a device goes through `current()`:
  * `native`: the CUDA resources and kernels of `engine._native` (streams, events, pinned and device
    buffers, CUDA graph capture, the preprocessing kernel, `set_device`, device queries);
  * `import_tensorrt(builder=...)`: the TensorRT Python module (`tensorrt`, or the lean runtime
    `tensorrt_lean` when only it is installed and no builder is needed);
  * `has_module(name)`, `tensorrt_version()`, `machine()`: what is installed, from package metadata.

Production code above this seam is the same whatever sits below it. `CudaDevice` is the real one and
the only one engine/ ships. The test suite installs a host-memory emulation with `install()`
(tests/runtime/fake_device_trt.py); a run through it exercises SliceRT's control flow only and is
never GPU verification.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
from typing import Any

_TRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-lean-cu13", "tensorrt_lean")


class CudaDevice:
    """The real device: engine._native (compiled CUDA resources) and the installed TensorRT module."""

    emulated = False
    description = "CUDA (engine._native) + TensorRT"

    @property
    def native(self) -> Any:
        from engine import _native

        return _native

    def has_module(self, name: str) -> bool:
        return importlib.util.find_spec(name) is not None

    def import_tensorrt(self, *, builder: bool) -> Any:
        """`tensorrt` when installed (always when `builder`), else `tensorrt_lean` (runs plans only).
        Raises ImportError/OSError when the wheel is present but its libraries do not load."""
        if builder or self.has_module("tensorrt"):
            import tensorrt as trt
        else:
            import tensorrt_lean as trt
        return trt

    def tensorrt_version(self) -> str | None:
        """Installed TensorRT version from package metadata (imports nothing)."""
        for dist in _TRT_DISTRIBUTIONS:
            try:
                return importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
        return None

    def machine(self) -> str:
        """CPU architecture of this host (serialized engines are not portable across platforms)."""
        return platform.machine()


_current: Any = CudaDevice()


def current() -> Any:
    """The device layer in use (CudaDevice unless a test installed an emulation)."""
    return _current


def install(layer: Any) -> Any:
    """Replace the device layer; returns the previous one. For tests and `gpu_acceptance --dry-run`."""
    global _current
    previous, _current = _current, layer
    return previous


__all__ = ["CudaDevice", "current", "install"]
