"""Process-shared futex wait/wake on a 32-bit word of a mapped segment, through libc's syscall(2).

ctypes releases the GIL for the call. Not FUTEX_PRIVATE: the word is shared between processes.
The syscall number and the ordering argument in engine/worker/serve.py are x86-64 facts; `check_platform`
refuses other machines instead of running with a wrong memory model.
"""

from __future__ import annotations

import ctypes
import errno
import platform

from engine.errors import BackendUnavailable

SYS_FUTEX_X86_64 = 202
FUTEX_WAIT, FUTEX_WAKE = 0, 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def check_platform() -> None:
    machine = platform.machine()
    if platform.system() != "Linux" or machine not in ("x86_64", "AMD64"):
        # The worker publishes results with plain aligned stores and relies on x86-64's total store
        # order; a weakly ordered CPU (aarch64) would need fences Python cannot issue.
        raise BackendUnavailable(
            f"the isolated worker runs on Linux x86-64 only (this is {platform.system()} "
            f"{machine}); use embedded mode (docs/firmware.md) here"
        )


class Futex:
    """wait(addr, expected, timeout_s) and wake(addr) on absolute addresses inside a live mapping."""

    def __init__(self):
        check_platform()
        libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long
        self._syscall.argtypes = [
            ctypes.c_long,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_uint,
        ]
        self._ts = _Timespec()
        self._ts_ptr = ctypes.addressof(self._ts)

    def wait(self, addr: int, expected: int, timeout_s: float) -> bool:
        """Sleep while *addr == expected, at most timeout_s. False on timeout; True when woken or changed."""
        sec = int(timeout_s)
        self._ts.tv_sec = sec
        self._ts.tv_nsec = int((timeout_s - sec) * 1e9)
        rc = self._syscall(SYS_FUTEX_X86_64, addr, FUTEX_WAIT, expected & 0xFFFFFFFF, self._ts_ptr, None, 0)
        if rc == 0:
            return True
        err = ctypes.get_errno()
        if err in (errno.EAGAIN, errno.EINTR):
            return True
        if err == errno.ETIMEDOUT:
            return False
        raise OSError(err, f"futex wait failed: {errno.errorcode.get(err, err)}")

    def wake(self, addr: int, n: int = 2147483647) -> int:
        return int(self._syscall(SYS_FUTEX_X86_64, addr, FUTEX_WAKE, n, None, None, 0))
