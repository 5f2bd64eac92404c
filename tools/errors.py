"""Typed errors of the toolchain. They derive from engine.errors so callers catch one hierarchy."""
from __future__ import annotations

from engine.errors import InputError, SliceRTError


class DataMissing(SliceRTError, FileNotFoundError):
    """A data package or file the toolchain needs is not installed; the message says how to install it."""


class ChecksumMismatch(SliceRTError, ValueError):
    """A source file does not match its recorded SHA-256 (corrupt or different version)."""


class UnwritableOutput(InputError):
    """An output directory cannot be created or written."""


__all__ = ["ChecksumMismatch", "DataMissing", "UnwritableOutput"]
