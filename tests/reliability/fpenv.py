"""The calling thread's floating-point environment (x86 MXCSR flush-to-zero / denormals-are-zero).

A library must not change it behind its caller's back: with FTZ/DAZ set, every later float
computation on that thread (NumPy, the caller's own code, hypothesis' float generation) silently
treats subnormal numbers as zero.
"""
from __future__ import annotations

import ctypes
import ctypes.util


def subnormals_work() -> bool:
    """True when this thread computes with subnormal numbers (no FTZ/DAZ)."""
    tiny = 5e-324  # the smallest positive subnormal double
    return tiny * 1.0 != 0.0 and tiny / 2.0 == 0.0 and (2.2250738585072014e-308 / 2.0) != 0.0


def restore_default() -> None:
    """fesetenv(FE_DFL_ENV): glibc resets x87 and MXCSR (FTZ/DAZ cleared) on this thread."""
    libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
    fe_dfl_env = ctypes.c_void_p(-1)  # glibc: #define FE_DFL_ENV ((const fenv_t *) -1)
    if libm.fesetenv(fe_dfl_env) != 0:
        raise OSError("fesetenv(FE_DFL_ENV) failed")
