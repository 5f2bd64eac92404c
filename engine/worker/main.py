"""Process entry points of isolated mode: a standalone worker, the supervised child, and the supervisor."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass

from engine.worker import layout as L


@dataclass
class WorkerOptions:
    """What a worker process needs: the bundle, the segment name, and how to load the session."""

    bundle: str
    shm: str
    threads: int | None = None
    precision: str = "best"
    backend: str = "auto"
    spin_us: float = 0.0

    def argv(self) -> list[str]:
        out = [
            "--bundle",
            str(self.bundle),
            "--shm",
            self.shm,
            "--precision",
            self.precision,
            "--backend",
            self.backend,
            "--spin-us",
            str(self.spin_us),
        ]
        if self.threads is not None:
            out += ["--threads", str(self.threads)]
        return out


def _log(msg: str) -> None:
    print(f"slicert worker[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


class _StopFlag:
    def __init__(self):
        self.stop = False

    def __call__(self) -> bool:
        return self.stop

    def install(self) -> None:
        def handler(signum, frame):
            self.stop = True

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def load_session(opts: WorkerOptions):
    """engine.load + one warm-up frame, so the first real frame does not pay ONNX Runtime's lazy set-up."""
    import numpy as np

    import engine

    session = engine.load(opts.bundle, backend=opts.backend, precision=opts.precision, threads=opts.threads)
    try:
        session.run(np.zeros((max(64, session.min_side), max(64, session.min_side)), np.uint16))
    except Exception:
        session.close()
        raise
    return session


def serve_on(
    opts: WorkerOptions, segment: L.Segment, should_stop, session=None, t0: float | None = None
) -> None:
    """Take over `segment` with `session` (loaded here if None) and serve until should_stop()."""
    from engine.worker.serve import Worker

    t0 = time.perf_counter() if t0 is None else t0
    if session is None:
        session = load_session(opts)
    try:
        worker = Worker(session, segment, log=_log)
        worker.start()
        _log(
            f"ready in {(time.perf_counter() - t0) * 1e3:.0f} ms (epoch {worker.epoch}, {session.info['backend']} "
            f"{session.variant}, segment {segment.name!r} {segment.geometry.total_size} bytes)"
        )
        try:
            worker.serve(should_stop, spin_us=opts.spin_us)
        finally:
            worker.stop()
            worker.close()
    finally:
        session.close()


def run_standalone(opts: WorkerOptions, geometry: L.Geometry) -> int:
    """`slicert worker` without --supervise: create the segment, serve, unlink it at exit."""
    stop = _StopFlag()
    stop.install()
    seg = L.Segment.create(opts.shm, geometry)
    try:
        serve_on(opts, seg, stop)
    finally:
        seg.unlink_if_ours()
        seg.close()
    return 0


def child_main(argv: list[str]) -> int:
    """`python -m engine.worker ...`: the supervised worker. It loads the session, then waits for one line
    on stdin from the supervisor ("go") before it attaches to the segment, so a standby worker is ready to
    take over in milliseconds; end of input means the supervisor is gone: exit."""
    p = argparse.ArgumentParser(prog="python -m engine.worker")
    p.add_argument("--bundle", required=True)
    p.add_argument("--shm", required=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", default="best")
    p.add_argument("--backend", default="auto")
    p.add_argument("--spin-us", type=float, default=0.0)
    a = p.parse_args(argv)
    stop = _StopFlag()
    stop.install()
    opts = WorkerOptions(
        bundle=a.bundle,
        shm=a.shm,
        threads=a.threads,
        precision=a.precision,
        backend=a.backend,
        spin_us=a.spin_us,
    )
    session = load_session(opts)
    try:
        print("loaded", flush=True)  # to the supervisor: this child can take over at once
        if not sys.stdin.buffer.readline() or stop():
            return 0
        t0 = time.perf_counter()
        seg = L.Segment.attach(a.shm)
    except BaseException:
        session.close()
        raise
    try:
        serve_on(opts, seg, stop, session=session, t0=t0)
    finally:
        seg.close()
    return 0


def run_supervised(
    opts: WorkerOptions, geometry: L.Geometry, *, standby: bool = False, start_timeout_s: float = 120.0
) -> int:
    """`slicert worker --supervise`: own the segment, run the worker as a child, restart it when it dies
    or stops beating for the segment's hang timeout. standby: keep a second, loaded worker waiting."""
    from engine.worker.supervisor import Supervisor

    stop = _StopFlag()
    stop.install()
    sup = Supervisor(opts, geometry, standby=standby, start_timeout_s=start_timeout_s)
    try:
        sup.run(stop)
    finally:
        sup.close()
    return 0
