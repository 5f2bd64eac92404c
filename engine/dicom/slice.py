"""What engine.dicom.read returns: `Slice` (one frame) and `FrameSequence` (lazy multi-frame), both
backed by one immutable `ImageInfo` built from the header.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.dicom.lut import LookupTable, ModalityLUT, Window
from engine.dicom.spacing import UltrasoundRegion

if TYPE_CHECKING:
    from engine.dicom.frames import FrameDecoder
    from engine.spec import PreprocessSpec


@dataclass(frozen=True, eq=False)
class ImageInfo:
    """Everything SliceRT derives from a DICOM header. Units: mm, ms; value ranges in modality units."""

    source: str  # file name, or a description of the in-memory input
    modality: str
    sop_class_uid: str
    transfer_syntax_uid: str
    transfer_syntax_name: str
    rows: int
    columns: int
    number_of_frames: int
    samples_per_pixel: int  # as stored (PALETTE COLOR: 1, expanded to 3 in `pixels`)
    source_photometric: str  # Photometric Interpretation as stored, e.g. "YBR_FULL_422"
    photometric: str  # of `Slice.pixels`: "MONOCHROME1", "MONOCHROME2" or "RGB"
    planar_configuration: int
    bits_allocated: int
    bits_stored: int
    high_bit: int
    pixel_representation: int  # 0 unsigned, 1 two's complement
    modality_lut: ModalityLUT
    windows: tuple[Window, ...]  # every VOI window in the file, first is the default
    voi_lut_function: str  # LINEAR | LINEAR_EXACT | SIGMOID (PS3.3 C.11.2.1.3)
    voi_luts: tuple[LookupTable, ...]
    presentation_lut_shape: str  # IDENTITY | INVERSE | "" (PS3.3 C.11.6)
    value_range: tuple[float, float]  # modality-output range (grey) or sample range (colour)
    rgb_bits: int  # bits per colour sample in `pixels` (0 for grey)
    pixel_spacing_mm: tuple[float, float] | None  # (row, column) spacing
    spacing_source: str  # which attribute/rule gave pixel_spacing_mm, or why there is none
    pixel_aspect_ratio: float  # row spacing / column spacing
    ultrasound_regions: tuple[UltrasoundRegion, ...]
    frame_time_ms: float | None
    frame_time_vector_ms: tuple[float, ...] | None
    warnings: tuple[str, ...]  # non-fatal oddities found while reading, for logs

    @property
    def is_color(self) -> bool:
        return self.photometric == "RGB"

    @property
    def rescale_slope(self) -> float:
        return self.modality_lut.slope

    @property
    def rescale_intercept(self) -> float:
        return self.modality_lut.intercept

    @property
    def invert(self) -> bool:
        """MONOCHROME1: minimum value is white; inverted after VOI (PS3.3 C.7.6.3.1.2)."""
        return self.photometric == "MONOCHROME1"


_INFO_NAMES = frozenset(f.name for f in fields(ImageInfo)) | {"is_color", "rescale_slope", "rescale_intercept",
                                                                "invert"}


class _HasInfo:
    info: ImageInfo

    def __getattr__(self, name: str) -> Any:
        # Header attributes read the same on a Slice and a FrameSequence: slice.windows, seq.frame_time_ms.
        if name in _INFO_NAMES:
            return getattr(self.info, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | _INFO_NAMES)

    def spec_for(self, model_spec: PreprocessSpec, voi_policy: str = "dicom") -> PreprocessSpec:
        """model_spec with the DICOM-derived fields filled in (see engine.dicom.specmap.spec_for)."""
        from engine.dicom.specmap import spec_for

        return spec_for(self.info, model_spec, voi_policy)


class Slice(_HasInfo):
    """One frame: `pixels` holds raw stored values, (H, W) grey or (H, W, 3) RGB.

    Grey pixels are a read-only view of the file's Pixel Data when the transfer syntax is
    uncompressed little endian; the modality LUT, VOI and MONOCHROME1 inversion are NOT applied
    (the native kernel applies them, driven by `spec_for`).
    """

    def __init__(self, pixels: np.ndarray, frame_index: int, info: ImageInfo, dataset: Any,
                 decode_warnings: tuple[str, ...] = ()):
        self.pixels = pixels
        self.frame_index = frame_index
        self.info = info
        self.dataset = dataset  # the pydicom Dataset, for attributes SliceRT does not interpret
        self.decode_warnings = decode_warnings  # non-fatal notes from decoding (e.g. masked high bits)

    def __repr__(self) -> str:
        i = self.info
        return (f"Slice({i.source!r}, frame {self.frame_index + 1}/{i.number_of_frames}, "
                f"{self.pixels.shape} {self.pixels.dtype}, {i.photometric}, spacing {i.pixel_spacing_mm})")


class FrameSequence(_HasInfo):
    """A multi-frame image; frames are decoded when asked for, one at a time.

    `len(seq)` is the frame count; `seq[i]` decodes frame i; iterating decodes frames in order
    without re-scanning the compressed stream. Not thread-safe: use one sequence per thread.
    """

    def __init__(self, decoder: FrameDecoder, info: ImageInfo, dataset: Any,
                 frame_infos: tuple[ImageInfo, ...] | None = None):
        self._decoder = decoder
        # Enhanced multi-frame images state rescale, VOI and spacing per frame (Per-frame Functional
        # Groups, PS3.3 C.7.6.16): each Slice carries its frame's ImageInfo; `info` is frame 0's.
        self._frame_infos = frame_infos
        self.info = info if frame_infos is None else frame_infos[0]
        self.dataset = dataset

    def frame_info(self, index: int) -> ImageInfo:
        """The ImageInfo of frame `index` (differs from `info` only for Enhanced multi-frame images
        whose functional groups differ per frame)."""
        return self.info if self._frame_infos is None else self._frame_infos[index]

    @property
    def frames_differ(self) -> bool:
        """True when frames have different rescale, VOI or spacing (Per-frame Functional Groups)."""
        return self._frame_infos is not None and len({id(i) for i in self._frame_infos}) > 1

    def spec_for(self, model_spec: PreprocessSpec, voi_policy: str = "dicom") -> PreprocessSpec:
        """model_spec filled in from the header; refused when frames differ (use seq[i].spec_for)."""
        if self.frames_differ:
            from engine.errors import InputError

            raise InputError(f"{self.info.source}: frames have different Rescale/VOI/Pixel Spacing (Per-frame "
                             f"Functional Groups): use seq[i].spec_for(...) for frame i")
        return super().spec_for(model_spec, voi_policy)

    def __len__(self) -> int:
        return self.info.number_of_frames

    def __getitem__(self, index: int) -> Slice:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"frame index must be an integer, got {type(index).__name__}")
        n = len(self)
        i = int(index) + n if index < 0 else int(index)
        if not 0 <= i < n:
            raise IndexError(f"frame {index} out of range for {n} frames")
        return Slice(self._decoder.frame(i), i, self.frame_info(i), self.dataset, tuple(self._decoder.notes))

    def __iter__(self) -> Iterator[Slice]:
        for i, pixels in enumerate(self._decoder.iterate()):
            yield Slice(pixels, i, self.frame_info(i), self.dataset, tuple(self._decoder.notes))

    @property
    def decode_warnings(self) -> tuple[str, ...]:
        return tuple(self._decoder.notes)

    def __repr__(self) -> str:
        i = self.info
        return (f"FrameSequence({i.source!r}, {len(self)} frames of {i.rows}x{i.columns} {i.photometric}, "
                f"frame time {i.frame_time_ms} ms)")
