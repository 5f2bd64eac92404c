"""PreprocessSpec: everything the fused kernel needs to turn raw pixels into a model input.

One spec describes the whole chain, in the order DICOM requires (PS3.3 C.11):
raw stored value -> modality LUT (rescale or LUT table) -> VOI (window or LUT table)
-> MONOCHROME1 inversion (after VOI, C.7.6.3.1.2) -> ROI crop -> resize/letterbox
-> normalization -> channel conversion -> layout and dtype.

It travels inside bundles as JSON (`to_dict` / `from_dict`), so the parser is strict: unknown keys,
wrong types and out-of-range values raise `InputError` naming the field.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.errors import InputError

VOI_FUNCTIONS = ("none", "linear", "linear_exact", "sigmoid", "lut")
RESIZE_MODES = ("nearest", "bilinear", "area")
NORMALIZE_MODES = ("none", "fixed", "zscore", "minmax")
LAYOUTS = ("NCHW", "NHWC")
OUT_DTYPES = ("float32", "float16", "int8")
MAX_OUTPUT_SIDE = 8192


def _table(value: Any, name: str) -> np.ndarray | None:
    if value is None:
        return None
    # Checked in float64 first: the table is stored as float32, and a finite value beyond float32's
    # range would become Inf in the cast (with a RuntimeWarning instead of an error).
    try:
        wide = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"PreprocessSpec.{name}: expected a table of numbers ({exc})") from None
    if wide.ndim != 1 or wide.size == 0:
        raise InputError(f"PreprocessSpec.{name}: expected a non-empty 1-D table, got shape {wide.shape}")
    if not np.all(np.isfinite(wide)):
        raise InputError(f"PreprocessSpec.{name}: table contains NaN or Inf")
    limit = float(np.finfo(np.float32).max)
    if float(np.max(np.abs(wide))) > limit:
        raise InputError(f"PreprocessSpec.{name}: table values must lie within float32 range "
                         f"(|v| <= {limit:.7g}); got {wide[np.argmax(np.abs(wide))]!r}")
    arr = np.ascontiguousarray(wide, dtype=np.float32)
    arr.setflags(write=False)
    return arr


def _roi(value: Any) -> tuple[int, ...]:
    # ROI is in whole source pixels; int() would silently truncate a fractional corner (0.5 -> 0).
    try:
        items = tuple(value)
    except TypeError:
        raise InputError(f"PreprocessSpec.roi: expected 4 integers (y0, x0, height, width), got {value!r}") from None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in items):
        raise InputError(f"PreprocessSpec.roi: expected integers (whole source pixels), got {value!r}")
    return tuple(int(v) for v in items)


@dataclass(frozen=True, eq=False)
class PreprocessSpec:
    """Raw pixels -> model input tensor, in one pass.

    Units: `window_center`/`window_width` are in modality output units (HU for CT);
    `output_min`/`output_max` bound the VOI output; `pad_value` is in VOI output units;
    `roi` is (y0, x0, height, width) in source pixels.
    """

    out_height: int
    out_width: int
    in_channels: int = 1  # 1 = grey (2-D, or (frames, H, W)); 3 = RGB interleaved (H, W, 3)
    out_channels: int = 1  # 3 from 1 replicates; 1 from 3 is BT.601 luma
    layout: str = "NCHW"
    out_dtype: str = "float32"
    quant_scale: float = 1.0  # int8 output: q = clamp(round(x / quant_scale) + quant_zero_point)
    quant_zero_point: int = 0
    # Modality LUT, PS3.3 C.11.1: a LUT table takes precedence over slope/intercept.
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    modality_lut: np.ndarray | None = field(default=None)
    modality_lut_first_mapped: int = 0
    # VOI, PS3.3 C.11.2.
    voi_function: str = "none"
    window_center: float = 0.0
    window_width: float = 1.0
    voi_lut: np.ndarray | None = field(default=None)
    voi_lut_first_mapped: int = 0
    voi_lut_bits: int = 16  # bits per VOI LUT entry: entries scale from [0, 2^bits - 1] to the output range
    output_min: float = 0.0
    output_max: float = 1.0
    invert: bool = False  # MONOCHROME1
    # Geometry.
    roi: tuple[int, int, int, int] | None = None
    resize: str = "area"
    letterbox: bool = False
    pad_value: float = 0.0
    # Normalization after resize.
    normalize: str = "none"
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    equalize: bool = False  # histogram equalization of the VOI output (needs a statistics pass)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "modality_lut", _table(self.modality_lut, "modality_lut"))
        set_(self, "voi_lut", _table(self.voi_lut, "voi_lut"))
        set_(self, "mean", tuple(float(v) for v in np.atleast_1d(self.mean)))
        set_(self, "std", tuple(float(v) for v in np.atleast_1d(self.std)))
        if self.roi is not None:
            set_(self, "roi", _roi(self.roi))
        self.validate()

    # -- validation --------------------------------------------------------------------------
    def validate(self) -> None:
        def bad(name: str, why: str) -> InputError:
            return InputError(f"PreprocessSpec.{name}: {why}")

        for name in ("out_height", "out_width"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 1 <= v <= MAX_OUTPUT_SIDE:
                raise bad(name, f"must be an integer in [1, {MAX_OUTPUT_SIDE}], got {v!r}")
        for name in ("in_channels", "out_channels"):
            if getattr(self, name) not in (1, 3):
                raise bad(name, f"must be 1 or 3, got {getattr(self, name)!r}")
        for name, allowed in (("layout", LAYOUTS), ("out_dtype", OUT_DTYPES), ("voi_function", VOI_FUNCTIONS),
                              ("resize", RESIZE_MODES), ("normalize", NORMALIZE_MODES)):
            if getattr(self, name) not in allowed:
                raise bad(name, f"must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("quant_scale", "rescale_slope", "rescale_intercept", "window_center", "window_width",
                     "output_min", "output_max", "pad_value"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
                raise bad(name, f"must be a finite number, got {v!r}")
        if self.quant_scale <= 0:
            raise bad("quant_scale", f"must be > 0, got {self.quant_scale}")
        if not -128 <= int(self.quant_zero_point) <= 127:
            raise bad("quant_zero_point", f"must be in [-128, 127], got {self.quant_zero_point}")
        if self.rescale_slope == 0:
            raise bad("rescale_slope", "must be non-zero")
        # The kernel computes in float32: a value that is fine in float64 can round to 0 there (a slope
        # or width of 1e-46), and a window narrower than float32 can follow makes the ramp's slope
        # inf and (x - c) * inf NaN. Checked on the float32 values the kernel will see.
        if np.float32(self.rescale_slope) == 0:
            raise bad("rescale_slope", f"{self.rescale_slope!r} is 0 in float32 (the kernel's precision)")
        # PS3.3 C.11.2.1.2.1: Window Width >= 1 for LINEAR/SIGMOID; > 0 for LINEAR_EXACT.
        if self.voi_function in ("linear", "sigmoid") and self.window_width < 1:
            raise bad("window_width", f"must be >= 1 for {self.voi_function.upper()} (PS3.3 C.11.2.1.2.1), "
                                      f"got {self.window_width}")
        if self.voi_function == "linear_exact" and not np.float32(self.window_width) > 0:
            raise bad("window_width", f"must be > 0 for LINEAR_EXACT (in float32, the kernel's precision), "
                                      f"got {self.window_width}")
        if self.voi_function in ("linear", "linear_exact") and self.modality_lut is None:
            w32 = np.float32(self.window_width)
            ramp = float(w32 - np.float32(1)) if self.voi_function == "linear" else float(w32)
            if ramp > 0:  # LINEAR with w == 1 is a step: no ramp, no division
                gain = abs(float(np.float32(self.rescale_slope))) * (float(self.output_max) - float(self.output_min))
                if not gain / ramp < 1e30:
                    raise bad("window_width", f"{self.window_width!r} is too narrow for float32 processing: the "
                                              f"ramp's slope (output range x rescale_slope / width = "
                                              f"{gain / ramp:.3g} per stored value) would overflow")
        if self.voi_function == "lut" and self.voi_lut is None:
            raise bad("voi_lut", "voi_function='lut' needs a voi_lut table")
        if not 1 <= int(self.voi_lut_bits) <= 16:
            raise bad("voi_lut_bits", f"must be in [1, 16], got {self.voi_lut_bits}")
        if self.voi_lut is not None:
            # PS3.3 C.11.2.1.1: VOI LUT entries are (2^bits - 1)-scaled output values; an entry outside
            # [0, 2^bits - 1] would map outside [output_min, output_max].
            top = (1 << int(self.voi_lut_bits)) - 1
            lo, hi = float(self.voi_lut.min()), float(self.voi_lut.max())
            if lo < 0 or hi > top:
                raise bad("voi_lut", f"entries must lie in [0, 2^voi_lut_bits - 1] = [0, {top}] (PS3.3 C.11.2.1.1), "
                                     f"got [{lo:g}, {hi:g}] with voi_lut_bits {self.voi_lut_bits}")
        if not self.output_max > self.output_min:
            raise bad("output_max", f"must exceed output_min ({self.output_min}), got {self.output_max}")
        if self.roi is not None:
            if len(self.roi) != 4 or self.roi[0] < 0 or self.roi[1] < 0 or self.roi[2] < 1 or self.roi[3] < 1:
                raise bad("roi", f"must be (y0 >= 0, x0 >= 0, height >= 1, width >= 1), got {self.roi!r}")
        if self.normalize == "fixed":
            for name in ("mean", "std"):
                v = getattr(self, name)
                if len(v) not in (1, self.out_channels):
                    raise bad(name, f"needs 1 or out_channels={self.out_channels} values, got {len(v)}")
                if not all(math.isfinite(x) for x in v):
                    raise bad(name, "contains NaN or Inf")
            if any(s <= 0 for s in self.std):
                raise bad("std", f"values must be > 0, got {self.std}")

    # -- JSON round trip ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                v = [float(x) for x in v]
            elif isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, (np.integer,)):
                v = int(v)
            elif isinstance(v, (np.floating,)):
                v = float(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, data: Any) -> "PreprocessSpec":
        if not isinstance(data, dict):
            raise InputError(f"PreprocessSpec: expected a JSON object, got {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InputError(f"PreprocessSpec: unknown field(s) {unknown}")
        missing = [n for n in ("out_height", "out_width") if n not in data]
        if missing:
            raise InputError(f"PreprocessSpec: missing required field(s) {missing}")
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            default = known[name].default
            if name in ("modality_lut", "voi_lut", "roi", "mean", "std"):
                if value is not None and not isinstance(value, (list, tuple)):
                    raise InputError(f"PreprocessSpec.{name}: expected a list, got {type(value).__name__}")
                if value is not None and not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                 for x in value):
                    raise InputError(f"PreprocessSpec.{name}: expected numbers only")
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise InputError(f"PreprocessSpec.{name}: expected true/false, got {value!r}")
            elif isinstance(default, str):
                if not isinstance(value, str):
                    raise InputError(f"PreprocessSpec.{name}: expected a string, got {value!r}")
            elif isinstance(default, int) or name in ("out_height", "out_width"):
                if not isinstance(value, int) or isinstance(value, bool):
                    raise InputError(f"PreprocessSpec.{name}: expected an integer, got {value!r}")
            elif isinstance(default, float):
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise InputError(f"PreprocessSpec.{name}: expected a number, got {value!r}")
            kwargs[name] = value
        try:
            return cls(**kwargs)
        except (TypeError, ValueError, OverflowError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"PreprocessSpec: {exc}") from exc

    def replace(self, **changes: Any) -> "PreprocessSpec":
        return dataclasses.replace(self, **changes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PreprocessSpec) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]
