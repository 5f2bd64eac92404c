"""Typed errors raised by SliceRT. Every failure a caller can cause maps to one of these.

The native module translates its C++ exceptions into these same classes, so callers catch one
hierarchy whether the failure was found in Python or in C++/CUDA.
"""
from __future__ import annotations


class SliceRTError(Exception):
    """Base class of every SliceRT error."""


class InputError(SliceRTError, ValueError):
    """An array, spec or argument is invalid (shape, dtype, strides, NaN, range...)."""


class IneligibleInput(InputError):
    """A DICOM is outside the inputs the bundle states it is intended for (modality, photometric
    interpretation, body part, view, pixel spacing, bit depth); `reasons` lists each mismatch. Raised
    under engine.load(..., eligibility="refuse"), the default."""

    def __init__(self, message: str, *, reasons: tuple[str, ...] = ()):
        super().__init__(message)
        self.reasons = tuple(reasons)


class DicomError(SliceRTError, ValueError):
    """A DICOM file cannot be read or would decode to a wrong image; the message names file and attribute."""


class UnsupportedTransferSyntax(DicomError):
    """The pixel data is encoded with a transfer syntax SliceRT cannot decode here."""


class PixelLimitExceeded(DicomError):
    """The image holds more pixels than the configured limit."""


class BundleError(SliceRTError):
    """A bundle is missing, corrupt, tampered with, or of an unknown schema."""


class SignatureError(BundleError):
    """A bundle's signature is missing, broken, or not by a trusted key (engine.load(trusted_keys=...))."""


class EngineMismatch(BundleError):
    """No engine in the bundle fits this GPU / TensorRT version, and rebuilding was not allowed."""


class BackendUnavailable(SliceRTError, RuntimeError):
    """The requested backend (TensorRT, CUDA, ONNX Runtime provider) cannot run on this machine."""


class SessionClosed(SliceRTError, RuntimeError):
    """A closed Session was used."""


class AccuracyGateError(SliceRTError):
    """A quantized/reduced-precision variant lost more accuracy than its budget allows."""


class OutputExists(SliceRTError, FileExistsError):
    """A command would overwrite an existing file; pass force=True / --force to allow it."""


class SharedMemoryError(SliceRTError, ValueError):
    """An isolated-mode shared-memory segment is missing, of another layout version, or has a field out of
    bounds (the segment is untrusted input: the message names the field)."""


class CudaError(SliceRTError, RuntimeError):
    """A CUDA runtime call or kernel launch failed. Carries the CUDA error code, device, file and line."""

    def __init__(self, message: str, *, code: int = -1, device: int = -1, file: str = "", line: int = 0):
        super().__init__(f"{message} [device {device}, {file}:{line}]" if file else message)
        self.code = code
        self.device = device
        self.file = file
        self.line = line


__all__ = [
    "SliceRTError", "InputError", "IneligibleInput", "DicomError", "UnsupportedTransferSyntax", "PixelLimitExceeded",
    "BundleError", "SignatureError", "EngineMismatch", "BackendUnavailable", "SessionClosed", "AccuracyGateError",
    "OutputExists", "CudaError", "SharedMemoryError",
]
