"""Array and argument inputs that a file cannot hold faithfully, described as recipes.

A recipe is JSON: {"make": <builder>, ...}. `materialize(recipe)` rebuilds the object at run time,
from a seeded generator, so every run feeds the same values. Builders:

  array      {"dtype", "shape", "then": [[op, *args], ...]}   seeded values, then transforms:
               nan/inf [index...]     put NaN / +Inf / -Inf at an index ("all" for every pixel)
               fill [value]           every pixel = value
               swap                   non-native byte order (same values)
               strided_out [shape, strides]   as_strided view reaching outside the buffer
               broadcast [shape]      zero-stride view of one value
               misaligned            data pointer at an odd address (a 1-byte offset view)
               fortran / reversed / transposed / every_other   valid but non-contiguous layouts
               readonly
               masked [none|diagonal|all]   a numpy.ma.MaskedArray over the values
  value      {"value": any JSON}                                 the value itself (None, 3, "x", ...)
  object     {"kind": "list2d" | "dict" | "set" | "object" | "bytes_noise" | "memoryview_noise"}
  spec       {"spec": {...}, "base": "session"|"default"}       a PreprocessSpec (from the session's
             spec with changes, or from a dict)
  raw_spec   {"spec": {...}, "poke": {field: value}}            a valid spec with a field overwritten
             after validation (object.__setattr__): only the native parser stands in the way
"""
from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_SHAPE = (64, 64)


def _values(dtype: np.dtype, shape: tuple[int, ...], seed: int = 1234) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype.kind == "f":
        return rng.uniform(0, 4095, shape).astype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        hi = min(int(info.max), 4095)
        lo = max(int(info.min), 0)
        return rng.integers(lo, hi + 1, shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind == "c":
        return (rng.uniform(0, 1, shape) + 1j * rng.uniform(0, 1, shape)).astype(dtype)
    if dtype.kind == "U":
        return np.full(shape, "px", dtype=dtype)
    if dtype.kind == "O":
        return np.full(shape, None, dtype=object)
    if dtype.kind == "M":
        return np.full(shape, np.datetime64("2026-01-01"), dtype=dtype)
    if dtype.kind == "V":
        return np.zeros(shape, dtype=dtype)
    raise ValueError(f"no value builder for {dtype}")


def _index(arr: np.ndarray, where: Any) -> Any:
    if where == "all":
        return Ellipsis
    if where == "center":
        return tuple(s // 2 for s in arr.shape)
    if where == "last":
        return tuple(s - 1 for s in arr.shape)
    return tuple(where)


def _apply(arr: np.ndarray, op: str, args: list[Any]) -> np.ndarray:
    if op in ("nan", "inf", "-inf"):
        value = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[op]
        arr = arr.copy()
        arr[_index(arr, args[0])] = value
        return arr
    if op == "fill":
        return np.full(arr.shape, args[0], dtype=arr.dtype)
    if op == "swap":
        return arr.astype(arr.dtype.newbyteorder("S"))
    if op == "strided_out":
        shape, strides = args
        return np.lib.stride_tricks.as_strided(arr, shape=tuple(shape), strides=tuple(strides))
    if op == "broadcast":
        return np.broadcast_to(arr.reshape(-1)[:1].reshape(()), tuple(args[0]))
    if op == "misaligned":
        raw = np.zeros(arr.nbytes + 1, dtype=np.uint8)
        view = raw[1:].view(arr.dtype).reshape(arr.shape)
        view[...] = arr
        return view
    if op == "fortran":
        return np.asfortranarray(arr)
    if op == "reversed":
        return arr[::-1, ::-1]
    if op == "transposed":
        return arr.T
    if op == "every_other":
        big = np.repeat(np.repeat(arr, 2, axis=0), 2, axis=1)
        return big[::2, ::2]
    if op == "masked":  # a numpy masked array: mask nothing / the diagonal / everything
        rows, cols = np.indices(arr.shape[:2])
        mask = {"none": np.zeros(arr.shape, bool), "diagonal": rows == cols, "all": np.ones(arr.shape, bool)}[args[0]]
        return np.ma.masked_array(arr, mask=mask)
    if op == "readonly":
        arr = arr.copy()
        arr.setflags(write=False)
        return arr
    raise ValueError(f"unknown array op {op!r}")


def encode_value(v: Any) -> Any:
    """JSON form of a poked spec value: arrays as {"ndarray": nested list, "dtype": str}."""
    if isinstance(v, np.ndarray):
        return {"ndarray": v.tolist(), "dtype": str(v.dtype)}
    return v


def decode_value(v: Any) -> Any:
    if isinstance(v, dict) and "ndarray" in v:
        return np.asarray(v["ndarray"], dtype=v["dtype"])
    if isinstance(v, list):
        return tuple(v)  # spec sequences (roi, mean, std) are tuples
    return v


def materialize(recipe: dict[str, Any], session_spec=None) -> Any:
    make = recipe["make"]
    if make == "array":
        dtype = np.dtype(recipe.get("dtype", "uint16"))
        shape = tuple(recipe.get("shape", DEFAULT_SHAPE))
        arr = _values(dtype, shape, recipe.get("seed", 1234))
        for step in recipe.get("then", []):
            arr = _apply(arr, step[0], list(step[1:]))
        return arr
    if make == "value":
        return recipe["value"]
    if make == "object":
        kind = recipe["kind"]
        rng = np.random.default_rng(3)
        return {"list2d": [[1, 2], [3, 4]], "dict": {"pixels": [1, 2]}, "set": {1, 2}, "object": object(),
                "bytes_noise": rng.integers(0, 256, 256, dtype=np.uint8).tobytes(),
                "memoryview_noise": memoryview(rng.integers(0, 256, 256, dtype=np.uint8).tobytes())}[kind]
    if make == "spec":
        from engine.spec import PreprocessSpec

        if recipe.get("base", "session") == "session":
            return session_spec.replace(**recipe.get("spec", {}))
        return PreprocessSpec.from_dict(recipe["spec"])
    if make == "raw_spec":
        from engine.spec import PreprocessSpec

        spec = PreprocessSpec.from_dict(recipe["spec"])
        for name, value in recipe["poke"].items():
            object.__setattr__(spec, name, decode_value(value))  # what a buggy caller could leave
        return spec
    raise ValueError(f"unknown recipe {make!r}")
