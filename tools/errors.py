"""Typed errors of the toolchain. They derive from engine.errors so callers catch one hierarchy."""
from __future__ import annotations

from engine.errors import InputError, SliceRTError


class DataMissing(SliceRTError, FileNotFoundError):
    """A data package or file the toolchain needs is not installed; the message says how to install it."""


class ChecksumMismatch(SliceRTError, ValueError):
    """A source file does not match its recorded SHA-256 (corrupt or different version)."""


class UnwritableOutput(InputError):
    """An output directory cannot be created or written."""


class DatasetError(InputError):
    """A user's dataset (DICOM folder, labels file, masks, splits file) cannot be used as given; the
    message names the file and the problem."""


class LabelsError(DatasetError):
    """The labels file is malformed or names images that are not in the folder."""


class MixedImages(DatasetError):
    """The images differ (size, modality, colour) in a way the model's input spec cannot take."""


class MaskMismatch(DatasetError):
    """A segmentation mask is missing, unreadable, of another shape than its image, or holds unknown classes."""


class EmptyClass(DatasetError):
    """A class has no example (in the dataset or in a split that needs one)."""


class SplitLeak(DatasetError):
    """The same patient appears in two splits, or the splits file does not describe this dataset."""


class SpecError(InputError):
    """The model's input spec (spec file or CLI flags) is invalid."""


class TeacherError(InputError):
    """The user's teacher model cannot be loaded or does not fit the spec (input shape, outputs)."""


__all__ = ["ChecksumMismatch", "DataMissing", "DatasetError", "EmptyClass", "LabelsError", "MaskMismatch",
           "MixedImages", "SpecError", "SplitLeak", "TeacherError", "UnwritableOutput"]
