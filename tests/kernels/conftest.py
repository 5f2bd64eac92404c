from __future__ import annotations

import numpy as np
import pytest

from engine.preprocess import output_shape, preprocess_into
from engine.spec import PreprocessSpec

# Poison values: NaN cannot be produced by the kernel (finite input, finite spec), so any NaN left in a
# float output is an element the kernel never wrote. int8 has no such value: the kernel runs twice
# over two different poisons and both results must agree.
_OUT = {"float32": np.float32, "float16": np.float16, "int8": np.int8}


def run_poisoned(x: np.ndarray, spec: PreprocessSpec, *, frame: int | None = None, batch: int = 1,
                 batch_index: int = 0) -> np.ndarray:
    """preprocess_into a poisoned batch buffer and return slot batch_index (checks every element of it
    was written and no other slot was touched)."""
    shape = output_shape(spec, batch)
    dtype = _OUT[spec.out_dtype]
    results = []
    for poison in ((np.nan, 17) if dtype is not np.int8 else (-77, 91)):
        out = np.full(shape, poison, dtype=dtype)
        preprocess_into(out, x, spec, batch_index, frame=frame)
        others = np.delete(out, batch_index, axis=0)
        if dtype is np.int8:
            assert np.all(others == poison), "a batch slot other than batch_index was written"
        else:
            assert np.all(np.isnan(others)), "a batch slot other than batch_index was written"
            assert not np.isnan(out[batch_index]).any(), "some output elements were never written"
        results.append(out[batch_index:batch_index + 1].copy())
        if dtype is not np.int8:
            break
    if dtype is np.int8:
        np.testing.assert_array_equal(results[0], results[1], err_msg="int8 output depends on the poison")
    return results[0]


def assert_close(got: np.ndarray, ref: np.ndarray, *, atol: float, rtol: float, what: str = "") -> None:
    """|got - ref| <= atol + rtol * |ref| elementwise, with the worst offender in the message."""
    got64 = got.astype(np.float64)
    err = np.abs(got64 - ref)
    bound = atol + rtol * np.abs(ref)
    bad = err > bound
    if bad.any():
        i = np.unravel_index(np.argmax(err - bound), err.shape)
        raise AssertionError(f"{what}: {int(bad.sum())}/{err.size} elements out of tolerance; worst at {i}: "
                             f"got {got64[i]!r}, ref {ref[i]!r}, |err| {err[i]:.3g} > {bound[i]:.3g}")


@pytest.fixture
def rng():
    return np.random.default_rng(20261123)
