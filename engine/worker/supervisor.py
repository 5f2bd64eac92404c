"""Keeps one worker alive on a segment it owns.

The supervisor creates the segment (so it outlives any worker), starts `python -m engine.worker` as a
child, and polls every 10 ms: a child that exited, or that has published nothing (heartbeat) for the
segment's hang timeout, is killed (SIGKILL), reaped, marked DOWN in the header, and started again. The
new worker bumps the epoch and fails the frames the old one left pending, so clients get
STATUS_RESTARTED for those and carry on with the next frames without reconnecting.

A worker that dies within a second of becoming ready is restarted with an exponential back-off
(0.1 s doubling to 5 s), so a poison bundle cannot spin the CPU.

With `standby`, a second child is kept loaded (session open, warm-up frame run) and waiting on its stdin;
a restart then hands over to it in milliseconds instead of paying Python and ONNX Runtime start-up again,
at the cost of a second worker's memory. Every child waits for the supervisor's "go" before it attaches.
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
    def __init__(self, opts, geometry: L.Geometry, *, standby: bool = False, start_timeout_s: float = 120.0):
        self.opts = opts
        self.seg = L.Segment.create(opts.shm, geometry, supervisor_pid=os.getpid())
        self.hang_ns = geometry.hang_timeout_ms * 1_000_000
        self.start_timeout_s = start_timeout_s
        self.standby = standby
        self.proc: subprocess.Popen | None = None
        self.spare: subprocess.Popen | None = None
        self.restarts = 0

    def _spawn(self) -> subprocess.Popen:
        # The child loads its session, then waits for a line on stdin before it touches the segment.
        cmd = [sys.executable, "-m", "engine.worker", *self.opts.argv()]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        os.set_blocking(proc.stdout.fileno(), False)
        return proc

    def _check_spare(self) -> None:
        """Replace a standby that died; publish its pid once it says it has loaded."""
        spare = self.spare
        if spare is None:
            return
        if spare.poll() is not None:
            _log(f"standby worker pid {spare.pid} exited with {spare.returncode}; replacing it")
            self._kill(spare)
            self.seg.set_u32(L.H_STANDBY_PID, 0)
            self.spare = self._spawn()
            return
        if self.seg.u32(L.H_STANDBY_PID) != spare.pid:
            try:
                line = spare.stdout.read()
            except (BlockingIOError, ValueError):
                line = None
            if line and b"loaded" in line:
                self.seg.set_u32(L.H_STANDBY_PID, spare.pid)

    @staticmethod
    def _go(proc: subprocess.Popen) -> bool:
        try:
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            return True
        except (BrokenPipeError, ValueError):
            return False

    def _kill(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout):
            if f:
                try:
                    f.close()
                except BrokenPipeError:
                    pass

    def _mark_down(self) -> None:
        self.seg.set_u32(L.H_WORKER_STATE, L.STATE_DOWN)

    def _next_worker(self) -> tuple[subprocess.Popen, float]:
        """The standby (already loaded) when there is a live one, else a fresh child."""
        proc, t_start = None, time.monotonic()
        if self.spare is not None and self.spare.poll() is None:
            proc, self.spare = self.spare, None
            self.seg.set_u32(L.H_STANDBY_PID, 0)
        if proc is None:
            proc = self._spawn()
        self._go(proc)
        return proc, t_start

    def run(self, should_stop) -> None:
        backoff = 0.0
        while not should_stop():
            epoch_before = self.seg.u32(L.H_WORKER_EPOCH)
            proc, t_start = self._next_worker()
            self.proc = proc
            ready_at = None
            why = None
            while not should_stop():
                rc = proc.poll()
                if rc is not None:
                    why = f"exited with status {rc}"
                    break
                self._check_spare()
                state = self.seg.u32(L.H_WORKER_STATE)
                epoch = self.seg.u32(L.H_WORKER_EPOCH)
                now_ns = time.monotonic_ns()
                if ready_at is None:
                    if state == L.STATE_READY and epoch != epoch_before:
                        ready_at = time.monotonic()
                        _log(
                            f"worker pid {proc.pid} ready {1e3 * (ready_at - t_start):.0f} ms after start "
                            f"(epoch {epoch}, restarts so far {self.restarts})"
                        )
                        if self.standby and self.spare is None:
                            # only now: a standby starting up would compete for the CPU with the takeover
                            self.spare = self._spawn()
                    elif time.monotonic() - t_start > self.start_timeout_s:
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
            lived = time.monotonic() - (ready_at or t_start)
            backoff = 0.0 if ready_at is not None and lived > 1.0 else min(5.0, max(0.1, 2 * backoff))
            _log(
                f"worker pid {proc.pid} {why}; restart {self.restarts}"
                + (f" after {backoff:.1f} s back-off" if backoff else "")
            )
            if backoff:
                time.sleep(backoff)

    def close(self) -> None:
        for proc in (self.spare, self.proc):
            if proc is None:
                continue
            if proc.poll() is None:
                if proc.stdin:
                    try:
                        proc.stdin.close()  # a standby exits on end of input
                    except BrokenPipeError:
                        pass
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for f in (proc.stdin, proc.stdout):
                if f:
                    try:
                        f.close()
                    except BrokenPipeError:
                        pass
        self._mark_down()
        self.seg.unlink_if_ours()
        self.seg.close()
