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


def serve_on(opts: WorkerOptions, segment: L.Segment, should_stop) -> None:
    """Load the session, take over `segment`, serve until should_stop(). Start-up time is logged."""
    import engine
    from engine.worker.serve import Worker

    t0 = time.perf_counter()
    session = engine.load(opts.bundle, backend=opts.backend, precision=opts.precision, threads=opts.threads)
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
    """`python -m engine.worker --attach ...`: the supervised worker, attaching to the supervisor's segment."""
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
    seg = L.Segment.attach(a.shm)
    try:
        serve_on(opts, seg, stop)
    finally:
        seg.close()
    return 0


def run_supervised(opts: WorkerOptions, geometry: L.Geometry, *, start_timeout_s: float = 120.0) -> int:
    """`slicert worker --supervise`: own the segment, run the worker as a child, restart it when it dies
    or stops beating for the segment's hang timeout."""
    from engine.worker.supervisor import Supervisor

    stop = _StopFlag()
    stop.install()
    sup = Supervisor(opts, geometry, start_timeout_s=start_timeout_s)
    try:
        sup.run(stop)
    finally:
        sup.close()
    return 0
