"""Keeps one worker alive on a segment it owns.

The supervisor creates the segment (so it outlives any worker), starts `python -m engine.worker` as a
child, and polls every 10 ms: a child that exited, or that has published nothing (heartbeat) for the
segment's hang timeout, is killed (SIGKILL), reaped, marked DOWN in the header, and started again. The
new worker bumps the epoch and fails the frames the old one left pending, so clients get
STATUS_RESTARTED for those and carry on with the next frames without reconnecting.

A worker that dies within a second of becoming ready is restarted with an exponential back-off
(0.1 s doubling to 5 s), so a poison bundle cannot spin the CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from engine.worker import layout as L

POLL_S = 0.01


def _log(msg: str) -> None:
    print(f"slicert supervisor[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


class Supervisor:
    def __init__(self, opts, geometry: L.Geometry, *, start_timeout_s: float = 120.0):
        self.opts = opts
        self.seg = L.Segment.create(opts.shm, geometry, supervisor_pid=os.getpid())
        self.hang_ns = geometry.hang_timeout_ms * 1_000_000
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    def _spawn(self) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "engine.worker", *self.opts.argv()]
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL)

    def _kill(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def _mark_down(self) -> None:
        self.seg.set_u32(L.H_WORKER_STATE, L.STATE_DOWN)

    def run(self, should_stop) -> None:
        backoff = 0.0
        while not should_stop():
            epoch_before = self.seg.u32(L.H_WORKER_EPOCH)
            t_spawn = time.monotonic()
            proc = self.proc = self._spawn()
            ready_at = None
            why = None
            while not should_stop():
                rc = proc.poll()
                if rc is not None:
                    why = f"exited with status {rc}"
                    break
                state = self.seg.u32(L.H_WORKER_STATE)
                epoch = self.seg.u32(L.H_WORKER_EPOCH)
                now_ns = time.monotonic_ns()
                if ready_at is None:
                    if state == L.STATE_READY and epoch != epoch_before:
                        ready_at = time.monotonic()
                        _log(
                            f"worker pid {proc.pid} ready {1e3 * (ready_at - t_spawn):.0f} ms after start "
                            f"(epoch {epoch}, restarts so far {self.restarts})"
                        )
                    elif time.monotonic() - t_spawn > self.start_timeout_s:
                        why = f"not ready {self.start_timeout_s:.0f} s after start"
                        break
                elif now_ns - self.seg.u64(L.H_HEARTBEAT_NS) > self.hang_ns:
                    why = f"hung: no heartbeat for more than {self.hang_ns // 1_000_000} ms"
                    break
                time.sleep(POLL_S)
            self._kill(proc)
            self._mark_down()
            if should_stop():
                break
            self.restarts += 1
            self.seg.set_u32(L.H_RESTARTS, self.restarts)
            lived = time.monotonic() - (ready_at or t_spawn)
            backoff = 0.0 if ready_at is not None and lived > 1.0 else min(5.0, max(0.1, 2 * backoff))
            _log(
                f"worker pid {proc.pid} {why}; restart {self.restarts}"
                + (f" after {backoff:.1f} s back-off" if backoff else "")
            )
            if backoff:
                time.sleep(backoff)

    def close(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._mark_down()
        self.seg.unlink_if_ours()
        self.seg.close()
