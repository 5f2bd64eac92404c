"""Typed, validated access to data element values.

pydicom converts raw bytes to Python values lazily, on first access, and a damaged header can make
that conversion raise almost anything (ValueError, struct.error, UnicodeDecodeError...). Every read
of a header value goes through these helpers so a damaged value becomes a DicomError naming the
attribute, and a value of the wrong multiplicity or type is caught here instead of deep inside NumPy.
"""
from __future__ import annotations

import math
from typing import Any

from engine.dicom.problems import fail

_MISSING = object()


def raw(ds: Any, keyword: str, source: str) -> Any:
    """The element's value, or None when the element is absent or empty."""
    try:
        if keyword not in ds:
            return None
        value = ds[keyword].value
    except Exception as exc:  # conversion of a damaged value
        raise fail(source, keyword, f"value cannot be decoded ({type(exc).__name__}: {exc})") from exc
    if value is None or value == "" or (hasattr(value, "__len__") and not isinstance(value, (str, bytes))
                                         and len(value) == 0):
        return None
    return value


def _single(value: Any, keyword: str, source: str) -> Any:
    from pydicom.multival import MultiValue

    if isinstance(value, (MultiValue, list, tuple)):
        if len(value) != 1:
            raise fail(source, keyword, f"expected one value, got {len(value)}: {list(value)!r}")
        value = value[0]
    return value


def get_int(ds: Any, keyword: str, source: str, default: Any = _MISSING) -> int:
    value = raw(ds, keyword, source)
    if value is None:
        if default is _MISSING:
            raise fail(source, keyword, "required attribute is missing or empty")
        return default
    value = _single(value, keyword, source)
    try:
        as_float = float(value)
    except (TypeError, ValueError) as exc:
        raise fail(source, keyword, f"expected an integer, got {value!r}") from exc
    if not math.isfinite(as_float) or as_float != int(as_float):
        raise fail(source, keyword, f"expected an integer, got {value!r}")
    return int(as_float)


def get_float(ds: Any, keyword: str, source: str, default: Any = _MISSING) -> float:
    value = raw(ds, keyword, source)
    if value is None:
        if default is _MISSING:
            raise fail(source, keyword, "required attribute is missing or empty")
        return default
    value = _single(value, keyword, source)
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise fail(source, keyword, f"expected a number, got {value!r}") from exc
    if not math.isfinite(out):
        raise fail(source, keyword, f"must be finite, got {value!r}")
    return out


def get_floats(ds: Any, keyword: str, source: str) -> tuple[float, ...] | None:
    """All values of a multi-valued numeric element (DS/IS/FD/US...), or None when absent."""
    from pydicom.multival import MultiValue

    value = raw(ds, keyword, source)
    if value is None:
        return None
    items = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    out = []
    for item in items:
        try:
            f = float(item)
        except (TypeError, ValueError) as exc:
            raise fail(source, keyword, f"expected numbers, got {value!r}") from exc
        if not math.isfinite(f):
            raise fail(source, keyword, f"values must be finite, got {value!r}")
        out.append(f)
    return tuple(out)


def get_str(ds: Any, keyword: str, source: str, default: str | None = None) -> str | None:
    value = raw(ds, keyword, source)
    if value is None:
        return default
    value = _single(value, keyword, source)
    return str(value).strip()


def get_strs(ds: Any, keyword: str, source: str) -> tuple[str, ...]:
    from pydicom.multival import MultiValue

    value = raw(ds, keyword, source)
    if value is None:
        return ()
    items = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    return tuple(str(v).strip() for v in items)
