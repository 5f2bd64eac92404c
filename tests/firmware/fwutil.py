"""Helpers of the firmware tests: the C driver build, worker processes, the interactive driver."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT_DIR = ROOT / "cpp" / "client"
HERE = Path(__file__).parent

CC = os.environ.get("CC", "cc")
WARNINGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-Wpedantic", "-Wshadow", "-Wconversion"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]
START_TIMEOUT_S = 120.0  # a worker loads ONNX Runtime and the bundle; several seconds on a loaded 2-core box
_names = itertools.count()


def compile_driver(out: Path, *, sanitize: bool) -> Path:
    if shutil.which(CC) is None:
        pytest.fail(f"no C compiler {CC!r} on PATH: the firmware tests need one (set CC)")
    flags = WARNINGS + (SANITIZE + ["-O1"] if sanitize else ["-O2"])
    cmd = [
        CC,
        *flags,
        "-I",
        str(CLIENT_DIR),
        str(HERE / "client_driver.c"),
        str(CLIENT_DIR / "slicert_client.c"),
        "-o",
        str(out),
        "-pthread",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    return out


def driver_env(sanitized: bool) -> dict:
    env = dict(os.environ)
    if sanitized:
        env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=1:halt_on_error=1"
        env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    return env


def unique_name() -> str:
    return f"slrt_test_{os.getpid()}_{next(_names)}"


class WorkerProcess:
    """`slicert worker` in a subprocess (the same entry point users run), with bounded start and stop."""

    def __init__(
        self,
        bundle: Path,
        *,
        supervise: bool = False,
        lanes: int = 2,
        slots: int = 4,
        max_frame_bytes: int = 1 << 20,
        max_mask_pixels: int = 1 << 18,
        hang_timeout_ms: int = 2000,
        spin_us: float = 0.0,
        cmd_prefix: tuple[str, ...] = (),
        name: str | None = None,
        standby: bool = False,
    ):
        from engine.worker import layout

        self.name = name or unique_name()
        self.layout = layout
        cmd = [
            *cmd_prefix,
            sys.executable,
            "-m",
            "engine.cli",
            "worker",
            "--bundle",
            str(bundle),
            "--shm",
            self.name,
            "--lanes",
            str(lanes),
            "--slots",
            str(slots),
            "--max-frame-bytes",
            str(max_frame_bytes),
            "--max-mask-pixels",
            str(max_mask_pixels),
            "--hang-timeout-ms",
            str(hang_timeout_ms),
            "--threads",
            "1",
            "--precision",
            "fp32",
            "--spin-us",
            str(spin_us),
        ]
        if supervise:
            cmd.append("--supervise")
        if standby:
            cmd.append("--standby")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.seg = None
        self._log: str | None = None
        self.wait_ready()

    def wait_ready(self, epoch_after: int = 0, timeout_s: float = START_TIMEOUT_S) -> float:
        """Seconds until a worker with an epoch > epoch_after is READY."""
        L = self.layout
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited with {self.proc.returncode}: {self.proc.communicate()[1]}"
                )
            if self.seg is None and os.path.exists(L.shm_path(self.name)):
                try:
                    self.seg = L.Segment.attach(self.name)
                except Exception:
                    self.seg = None  # still being initialised
            if (
                self.seg is not None
                and self.seg.u32(L.H_WORKER_STATE) == L.STATE_READY
                and self.seg.u32(L.H_WORKER_EPOCH) > epoch_after
            ):
                return time.monotonic() - t0
            time.sleep(0.01)
        raise AssertionError(f"worker on {self.name} not ready within {timeout_s} s")

    @property
    def worker_pid(self) -> int:
        return self.seg.u32(self.layout.H_WORKER_PID)

    @property
    def epoch(self) -> int:
        return self.seg.u32(self.layout.H_WORKER_EPOCH)

    def stop(self) -> str:
        """SIGTERM, bounded wait, then SIGKILL; removes a segment left behind. Idempotent."""
        if self._log is not None:
            return self._log
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            err = self.proc.communicate(timeout=20)[1]
        except subprocess.TimeoutExpired:
            self.proc.kill()
            err = self.proc.communicate()[1]
        if self.seg is not None:
            self.seg.close()
            self.seg = None
        if self.layout._live_owner(self.layout.shm_path(self.name)) is None:  # not another test's live worker
            self.layout.unlink(self.name)
        self._log = err
        return err


class Interactive:
    """The driver's `interactive` mode: one command per line on stdin, one answer line on stdout
    (read by a thread, so a blocked driver turns into a bounded test failure, never a hung test)."""

    def __init__(self, exe: Path, name: str, mode: str, h: int, w: int, big_h: int, big_w: int, env=None):
        import queue
        import threading

        self.proc = subprocess.Popen(
            [str(exe), "interactive", name, mode, str(h), str(w), str(big_h), str(big_w)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        self.hello = self.read_line()
        assert self.hello.startswith("CONNECTED"), self.hello
        self.lane = int(self.hello.split()[2])

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def read_line(self, timeout_s: float = 60.0) -> str:
        import queue

        t0 = time.monotonic()
        while True:
            left = timeout_s - (time.monotonic() - t0)
            if left <= 0:
                raise AssertionError(f"no answer from the driver within {timeout_s} s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"driver exited ({self.proc.wait()}): {self.proc.stderr.read()}")
            if not line.startswith("FRAME "):  # per-frame failure notes are informational
                return line.strip()

    def cmd(self, line: str, timeout_s: float = 60.0) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.read_line(timeout_s)

    def close(self) -> int:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._reader.join(timeout=10)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return rc
