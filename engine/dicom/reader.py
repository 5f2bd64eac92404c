"""engine.dicom.read: one entry point from a DICOM input to a Slice or a lazy FrameSequence."""
from __future__ import annotations

import dataclasses
from typing import Any

from engine.dicom import color, frames, functional, header, lut, source, spacing
from engine.dicom.capture import pydicom_warnings
from engine.dicom.slice import FrameSequence, ImageInfo, Slice
from engine.dicom.values import get_str
from engine.errors import InputError


def read(src: Any, *, pixel_limit: int = header.DEFAULT_PIXEL_LIMIT) -> Slice | FrameSequence:
    """Read a DICOM image.

    src: a path, bytes, a binary file-like object, or a pydicom Dataset (never modified).
    pixel_limit: refuse images with more than this many pixels (Rows x Columns x NumberOfFrames)
    with PixelLimitExceeded, before any pixel data is decoded.

    Returns a Slice for single-frame images (pixels decoded now) or a FrameSequence for multi-frame
    images (frames decoded on access). Raises DicomError (or UnsupportedTransferSyntax /
    PixelLimitExceeded) naming the source and the offending attribute.
    """
    if isinstance(pixel_limit, bool) or not isinstance(pixel_limit, int) or pixel_limit < 1:
        raise InputError(f"engine.dicom.read: pixel_limit must be a positive integer, got {pixel_limit!r}")
    notes: list[str] = []
    # pydicom reports damaged values with warnings: record them as notes (see capture.py).
    with pydicom_warnings(notes):
        ds, name, parse_notes = source.load(src, pixel_limit)
        notes.extend(parse_notes)
        pm = header.read_pixel_module(ds, name, pixel_limit, notes)
        mlut = lut.read_modality_lut(ds, pm, name, notes)
        voi = lut.read_voi(ds, pm, mlut, name, notes)
        geometry = spacing.read_geometry(ds, name, pm.rows, pm.columns, pm.number_of_frames, notes)
        palette = None
        if pm.photometric == header.PALETTE:
            palette = color.read_palette(ds, name, pm.little_endian, signed=pm.pixel_representation == 1)
        modality = (get_str(ds, "Modality", name) or "").upper()
        sop_class_uid = get_str(ds, "SOPClassUID", name) or ""
        presentation_lut_shape = (get_str(ds, "PresentationLUTShape", name) or "").upper()

    if palette is not None:
        value_range, rgb_bits = (0.0, float((1 << palette.bits) - 1)), palette.bits
    elif pm.is_grey:
        value_range, rgb_bits = lut.modality_range(pm, mlut), 0
    else:
        value_range, rgb_bits = (0.0, float((1 << pm.bits_stored) - 1)), pm.bits_stored

    info = ImageInfo(
        source=name,
        modality=modality,
        sop_class_uid=sop_class_uid,
        transfer_syntax_uid=pm.transfer_syntax_uid,
        transfer_syntax_name=pm.transfer_syntax_name,
        rows=pm.rows,
        columns=pm.columns,
        number_of_frames=pm.number_of_frames,
        samples_per_pixel=pm.samples_per_pixel,
        source_photometric=pm.photometric,
        photometric=pm.photometric if pm.is_grey else "RGB",
        planar_configuration=pm.planar_configuration,
        bits_allocated=pm.bits_allocated,
        bits_stored=pm.bits_stored,
        high_bit=pm.high_bit,
        pixel_representation=pm.pixel_representation,
        modality_lut=mlut,
        windows=voi.windows,
        voi_lut_function=voi.function,
        voi_luts=voi.luts,
        presentation_lut_shape=presentation_lut_shape,
        value_range=value_range,
        rgb_bits=rgb_bits,
        pixel_spacing_mm=geometry.pixel_spacing_mm,
        spacing_source=geometry.spacing_source,
        pixel_aspect_ratio=geometry.pixel_aspect_ratio,
        ultrasound_regions=geometry.ultrasound_regions,
        frame_time_ms=geometry.frame_time_ms,
        frame_time_vector_ms=geometry.frame_time_vector_ms,
        warnings=(),
    )
    with pydicom_warnings(notes):
        # Enhanced multi-frame: rescale, VOI and spacing per frame from the functional groups
        per_frame = functional.frame_infos(ds, pm, info, name, notes)
    final: dict[int, ImageInfo] = {}

    def with_notes(i: ImageInfo) -> ImageInfo:
        if id(i) not in final:
            final[id(i)] = dataclasses.replace(i, warnings=tuple(notes))
        return final[id(i)]

    info = with_notes(info)
    frame_infos = None if per_frame is None else tuple(with_notes(i) for i in per_frame)
    decoder = frames.FrameDecoder(ds, pm, name, palette)
    if pm.pixel_keyword != "PixelData" and pm.is_grey:
        # Float / Double Float Pixel Data (PS3.3 C.7.6.24) have no stored range: BitsStored 32 would make
        # the default window span [0, 2^32 - 1] and every real value (e.g. [0, 1]) map to black. The
        # data's own finite range is the range of this image.
        lo, hi = decoder.float_range()
        if mlut.kind == "rescale":
            a, b = lo * mlut.slope + mlut.intercept, hi * mlut.slope + mlut.intercept
            lo, hi = min(a, b), max(a, b)
        if not hi > lo:
            hi = lo + 1.0  # a flat image: any window of it is flat
        info = dataclasses.replace(info, value_range=(lo, hi))
        frame_infos = None if frame_infos is None else tuple(dataclasses.replace(i, value_range=(lo, hi))
                                                             for i in frame_infos)
    if pm.number_of_frames > 1:
        return FrameSequence(decoder, info, ds, frame_infos)
    return Slice(decoder.frame(0), 0, info if frame_infos is None else frame_infos[0], ds, tuple(decoder.notes))
