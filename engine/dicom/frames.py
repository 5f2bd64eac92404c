"""Pixel Data -> one frame of kernel-ready pixels, decoding only the frame asked for.

Native (uncompressed) data is exposed as a read-only NumPy view of the Pixel Data bytes: no copy, and
any frame is a slice of it. Encapsulated (compressed) data is decoded one frame at a time with
pydicom's decoders (pylibjpeg / openjpeg / rle plugins), so a 120-frame cine yields its first frame
after one JPEG decode, not 120.

After decoding, every frame is brought to what engine.preprocess accepts: native byte order, a
supported dtype, only BitsStored bits significant (PS3.5 8.1.1), and colour as RGB.
"""
from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from engine.dicom import offsets
from engine.dicom.capture import pydicom_warnings
from engine.dicom.codestream import has_end_marker, needs_end_marker, size_statements
from engine.dicom.color import Palette, ybr_full_to_rgb
from engine.dicom.header import PixelModule
from engine.dicom.problems import fail
from engine.dicom.values import raw
from engine.errors import DicomError, UnsupportedTransferSyntax

# What the native kernel accepts (engine.preprocess contract).
KERNEL_DTYPES = (np.uint8, np.uint16, np.int16, np.int32, np.float32)


class FrameDecoder:
    """Decodes frames of one data set on demand. Not thread-safe: use one per thread."""

    def __init__(self, ds: Any, pm: PixelModule, source: str, palette: Palette | None):
        from pydicom.pixels import get_decoder

        self._ds = ds
        self._pm = pm
        self._source = source
        self._palette = palette
        self.notes: list[str] = []
        try:
            self._decoder = get_decoder(pm.transfer_syntax_uid)
        except NotImplementedError:
            raise fail(source, "TransferSyntaxUID",
                       f"{pm.transfer_syntax_name} ({pm.transfer_syntax_uid}) cannot be decoded: pydicom has "
                       f"no decoder for it (video and JPEG 2000 Part 2 syntaxes are not supported); "
                       f"transcode to an uncompressed, JPEG, JPEG-LS, JPEG 2000 or RLE syntax",
                       UnsupportedTransferSyntax) from None
        if not self._decoder.is_available:
            missing = "; ".join(self._decoder.missing_dependencies) or "a decoding plugin"
            raise fail(source, "TransferSyntaxUID",
                       f"{pm.transfer_syntax_name} ({pm.transfer_syntax_uid}) needs a decoder that is not "
                       f"installed: {missing}", UnsupportedTransferSyntax)
        self._options: dict[str, Any] = {
            "raw": True,  # colour conversion is done here, once, with exact integer tables
            "allow_excess_frames": False,  # the header's NumberOfFrames is the contract
            "correct_unused_bits": False,  # checked (and fixed only when needed) below, saving a copy
            "number_of_frames": pm.number_of_frames,
            "photometric_interpretation": pm.photometric,
        }
        self._all: np.ndarray | None = None
        self._shortage: str | None = None
        self._pixel_data = ds[pm.pixel_keyword].value
        tables = (raw(ds, "ExtendedOffsetTable", source), raw(ds, "ExtendedOffsetTableLengths", source))
        self._extended_offsets = tables if None not in tables else None
        if pm.encapsulated:
            self._check_offset_tables()
        else:
            self._options["view_only"] = True
            self._check_native_length()

    def __len__(self) -> int:
        return self._pm.number_of_frames

    # -- decoding ------------------------------------------------------------------------------
    def frame(self, index: int) -> np.ndarray:
        pm = self._pm
        if not 0 <= index < pm.number_of_frames:
            raise IndexError(f"frame {index} out of range for {pm.number_of_frames} frame(s)")
        if not pm.encapsulated:
            if self._all is None:
                arr, props = self._call(lambda: self._decoder.as_array(self._ds, **self._options), None)
                self._all = arr if pm.number_of_frames > 1 else arr[None]
                self._all_props = props
            return self._finish(self._all[index], self._all_props, index)
        if self._shortage:
            raise fail(self._source, "PixelData", f"frame {index}: {self._shortage}")
        from pydicom.encaps import get_frame

        encoded = self._call(lambda: get_frame(self._pixel_data, index, number_of_frames=pm.number_of_frames,
                                               extended_offsets=self._extended_offsets), index)
        self._check_codestream(encoded, index)
        arr, props = self._call(lambda: self._decoder.as_array(self._ds, index=index, **self._options), index)
        return self._finish(arr, props, index)

    def float_range(self) -> tuple[float, float]:
        """(min, max) of the finite values over all frames of native float pixel data."""
        self.frame(0)  # decodes (views) every frame of native data at once
        assert self._all is not None
        finite = self._all[np.isfinite(self._all)]
        if finite.size == 0:
            raise fail(self._source, self._pm.pixel_keyword, "holds no finite value (all NaN or Inf)")
        return float(finite.min()), float(finite.max())

    def iterate(self) -> Iterator[np.ndarray]:
        if not self._pm.encapsulated:
            for i in range(self._pm.number_of_frames):
                yield self.frame(i)
            return
        if self._shortage:
            raise fail(self._source, "PixelData", f"frame 0: {self._shortage}")
        from pydicom.encaps import generate_frames

        # iter_array walks the fragments once instead of re-locating frame i from the start; a second
        # walk, in lockstep, hands us each codestream to check before iter_array decodes it.
        encoded = generate_frames(self._pixel_data, number_of_frames=self._pm.number_of_frames,
                                  extended_offsets=self._extended_offsets)
        it = self._decoder.iter_array(self._ds, **self._options)
        for i in range(self._pm.number_of_frames):
            self._check_codestream(self._call(lambda: next(encoded), i), i)
            arr, props = self._call(lambda: next(it), i)
            yield self._finish(arr, props, i)

    def _call(self, fn: Callable[[], Any], index: int | None) -> Any:
        where = "" if index is None else f"frame {index}: "
        with pydicom_warnings(self.notes):
            try:
                result = fn()
            except DicomError:
                raise
            except StopIteration:
                raise fail(self._source, "PixelData", f"{where}missing: fewer encapsulated frames than "
                                                      f"NumberOfFrames {self._pm.number_of_frames}") from None
            except (KeyboardInterrupt, SystemExit, GeneratorExit):
                raise
            except BaseException as exc:
                # Decoders raise RuntimeError/ValueError/KeyError... on corrupt data, and the Rust RLE
                # plugin (pylibjpeg-rle, via pyo3) panics on out-of-bounds runs: pyo3_runtime.PanicException
                # derives from BaseException, so `except Exception` would let it reach the caller.
                pm = self._pm
                raise fail(self._source, "PixelData",
                           f"{where}cannot be decoded as {pm.transfer_syntax_name} "
                           f"({type(exc).__name__}: {exc}); the data is corrupt or disagrees with "
                           f"Rows {pm.rows} x Columns {pm.columns} x BitsAllocated {pm.bits_allocated}") from exc
        return result

    # -- checks and normalization ----------------------------------------------------------------
    def _check_codestream(self, encoded: bytes, index: int) -> None:
        pm = self._pm
        if needs_end_marker(pm.transfer_syntax_uid) and not has_end_marker(encoded):
            raise fail(self._source, "PixelData", f"frame {index}: cannot be decoded as {pm.transfer_syntax_name}: "
                                                  f"truncated stream (no end-of-image marker FF D9 at its end)")
        if not needs_end_marker(pm.transfer_syntax_uid):
            return  # RLE: no size in the stream; the decoder writes exactly Rows x Columns
        try:
            statements = size_statements(encoded)
        except ValueError as exc:
            raise fail(self._source, "PixelData", f"frame {index}: {exc}; refusing to decode it") from None
        if not statements:
            raise fail(self._source, "PixelData", f"frame {index}: no {pm.transfer_syntax_name} header stating the "
                                                  f"image size (JPEG SOF / JPEG 2000 SIZ) was found; refusing to "
                                                  f"decode it")
        expected = (pm.rows, pm.columns)
        for st in statements:
            if (st.rows, st.columns) != expected:
                raise fail(self._source, "PixelData", f"frame {index}: the codestream declares {st.rows} x "
                                                      f"{st.columns} pixels ({st.where}) but Rows x Columns is "
                                                      f"{expected[0]} x {expected[1]}; refusing to decode it")
            if st.components != pm.samples_per_pixel:
                raise fail(self._source, "PixelData", f"frame {index}: the codestream declares {st.components} "
                                                      f"component(s) ({st.where}) but SamplesPerPixel is "
                                                      f"{pm.samples_per_pixel}; refusing to decode it")

    def _check_offset_tables(self) -> None:
        """Use the Basic / Extended Offset Tables only after checking them against the fragments
        (engine.dicom.offsets); a table that fails is dropped, for pydicom's decoder too."""
        pm = self._pm
        frag = offsets.fragments(self._pixel_data)
        if frag is None:
            return
        if len(frag.items) < pm.number_of_frames:
            # PS3.5 A.4: every frame has at least one fragment. Raised when a frame is asked for, so
            # the header (len, info) stays readable.
            self._shortage = (f"missing: the Pixel Data holds {len(frag.items)} fragment(s), fewer encapsulated "
                              f"frames than NumberOfFrames {pm.number_of_frames} (PS3.5 A.4)")
        problem = offsets.basic_table_problem(frag, pm.number_of_frames)
        drop_basic = problem is not None
        if drop_basic:
            self.notes.append(f"Basic Offset Table {problem}: ignored, frames located by walking the fragments")
        drop_extended = False
        if self._extended_offsets is not None:
            values = []
            for data in self._extended_offsets:
                data = bytes(data) if isinstance(data, (bytes, bytearray, memoryview)) else b""
                values.append(struct.unpack(f"<{len(data) // 8}Q", data[: len(data) // 8 * 8]) if data else ())
            problem = offsets.extended_table_problem(frag, pm.number_of_frames, values[0], values[1])
            if problem is not None:
                drop_extended = True
                self._extended_offsets = None
                self.notes.append(f"Extended Offset Table {problem}: ignored, frames located by walking the "
                                  f"fragments")
        if drop_basic or drop_extended:
            replaced = offsets.without_basic_table(self._pixel_data) if drop_basic else None
            self._ds = offsets.decode_view(self._ds, pm.pixel_keyword, replaced, drop_extended)
            if replaced is not None:
                self._pixel_data = replaced

    def _check_native_length(self) -> None:
        pm = self._pm
        if pm.photometric == "YBR_FULL_422":
            # PS3.3 C.7.6.3.1.2: two luminance samples share one Cb and one Cr.
            bits_per_frame = pm.rows * pm.columns * 2 * pm.bits_allocated
        else:
            bits_per_frame = pm.rows * pm.columns * pm.samples_per_pixel * pm.bits_allocated
        expected = math.ceil(bits_per_frame * pm.number_of_frames / 8)
        data = self._ds[pm.pixel_keyword].value
        actual = len(data)
        # PS3.5 7.1.1: values have even length, so one trailing pad byte is allowed.
        if actual in (expected, expected + 1) or (expected % 2 == 1 and actual == expected + 1):
            return
        # Some writers pad Pixel Data with zero bytes (pydicom-data's MR_small_padded.dcm: one 128-byte
        # row). Accept less than one frame of zeros after the frames, as pydicom does; anything else
        # past the frames (non-zero bytes, or a whole frame) means the geometry is wrong. A last row
        # of non-zero pixels (Rows one too small) is therefore still refused.
        extra = actual - expected
        if 0 < extra < math.ceil(bits_per_frame / 8) and bytes(data[expected:]).count(0) == extra:
            self.notes.append(f"{pm.pixel_keyword} carries {extra} bytes of zero padding after the "
                              f"{pm.number_of_frames} frame(s); ignored")
            return
        geometry = (f"Rows {pm.rows} x Columns {pm.columns} x SamplesPerPixel {pm.samples_per_pixel} x "
                    f"BitsAllocated {pm.bits_allocated} x NumberOfFrames {pm.number_of_frames}")
        if actual < expected:
            raise fail(self._source, pm.pixel_keyword,
                       f"holds {actual} bytes but {geometry} needs {expected}: truncated Pixel Data or "
                       f"wrong Rows/Columns")
        raise fail(self._source, pm.pixel_keyword,
                   f"holds {actual} bytes but {geometry} needs {expected}: Rows/Columns/NumberOfFrames "
                   f"are inconsistent with the data (refusing to guess the geometry)")

    def _finish(self, arr: np.ndarray, props: dict[str, Any], index: int) -> np.ndarray:
        pm = self._pm
        expected_shape = (pm.rows, pm.columns) + ((3,) if pm.samples_per_pixel == 3 else ())
        if arr.shape != expected_shape:
            raise fail(self._source, "PixelData", f"frame {index} decoded to shape {arr.shape}, "
                                                  f"Rows/Columns/SamplesPerPixel say {expected_shape}")
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))  # big-endian syntaxes: one unavoidable copy
        if arr.dtype.kind in "iu":
            arr = self._stored_bits_only(arr, index)
            if arr.dtype == np.uint32:
                if arr.size and int(arr.max()) >= 1 << 31:
                    raise fail(self._source, "BitsStored", f"unsigned 32-bit values >= 2^31 are not supported "
                                                           f"by the preprocessing kernel (BitsStored {pm.bits_stored})")
                arr = arr.view(np.int32)
            elif arr.dtype == np.int8:
                arr = arr.astype(np.int16)
        elif arr.dtype == np.float64:
            raise fail(self._source, pm.pixel_keyword, "64-bit float pixels are not supported by the "
                                                       "preprocessing kernel")
        photometric = str(props.get("photometric_interpretation", pm.photometric)).upper()
        if photometric in ("YBR_FULL", "YBR_FULL_422"):
            if arr.dtype != np.uint8:
                raise fail(self._source, "BitsAllocated", f"{photometric} with {arr.dtype} samples is not "
                                                          f"supported (8-bit only)")
            arr = ybr_full_to_rgb(arr)
        elif photometric == "PALETTE COLOR":
            assert self._palette is not None
            arr = self._palette.apply(arr)
        elif photometric not in ("RGB", "MONOCHROME1", "MONOCHROME2"):
            raise fail(self._source, "PhotometricInterpretation",
                       f"frame {index} decoded as {photometric}, which SliceRT cannot convert to RGB")
        if arr.dtype.type not in KERNEL_DTYPES:
            raise fail(self._source, "BitsAllocated", f"decoded dtype {arr.dtype} is not supported")
        return arr

    def _stored_bits_only(self, arr: np.ndarray, index: int) -> np.ndarray:
        """PS3.5 8.1.1: only BitsStored bits carry the value; the rest may hold anything (old overlay
        planes, garbage). Checking the range costs one read pass; fixing it costs a copy, so fix only
        when a value actually lies outside what BitsStored allows."""
        pm = self._pm
        bits = pm.bits_stored
        width = arr.dtype.itemsize * 8
        if arr.size and not pm.encapsulated and pm.high_bit != bits - 1 and width == pm.bits_allocated:
            # PS3.5 8.1.1: the value occupies bits [HighBit - BitsStored + 1, HighBit] of the cell:
            # move HighBit to the top, then shift down (arithmetic for signed: sign-extends).
            out = np.array(arr, copy=True)
            np.left_shift(out, width - 1 - pm.high_bit, out=out)
            np.right_shift(out, width - bits, out=out)
            return out
        if bits >= width or arr.size == 0:
            return arr
        signed = arr.dtype.kind == "i"
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        if (not signed or lo <= int(arr.min())) and int(arr.max()) <= hi:  # unsigned: no min pass
            return arr
        self.notes.append(f"frame {index}: bits above BitsStored {bits} were set; masked them (PS3.5 8.1.1)")
        out = np.array(arr, copy=True)
        shift = width - bits
        np.left_shift(out, shift, out=out)
        np.right_shift(out, shift, out=out)  # arithmetic for signed dtypes: sign-extends
        return out
