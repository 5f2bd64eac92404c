"""Where batch workers run: in this process, or as an actor pool on a Ray cluster.

Both take chunks of (path, name) pairs and yield (chunk index, rows) as chunks finish, so the driver
(job.py) is one code path. The Ray executor keeps one loaded Session per actor and re-runs a chunk
elsewhere when its actor dies or hangs past the task timeout; a chunk is yielded once, so every file
is accounted for exactly once. Files are read by path: on a multi-node cluster they must be on storage
every node mounts at the same path, and slicert must be installed on every node.
"""
from __future__ import annotations

import collections
import os
import time
from collections.abc import Iterator
from typing import Any

from tools.batch.work import BatchWorker

Chunk = list[tuple[str, str]]  # (path, name)


def _process_chunk(worker: BatchWorker, chunk: Chunk) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path, name in chunk:
        rows.extend(worker.process(path, name))
    return rows


class InProcessExecutor:
    """One worker in this process: the default, and what an embedded device runs."""

    name = "in-process"

    def __init__(self, bundle: str, *, threads: int = 1, precision: str = "best", dicom_out: str | None = None):
        self.bundle, self.threads, self.precision, self.dicom_out = bundle, threads, precision, dicom_out
        self.workers = 1
        self.startup_s = 0.0
        self.worker_deaths = 0
        self._worker: BatchWorker | None = None

    def start(self) -> None:
        t0 = time.perf_counter()
        self._worker = BatchWorker(self.bundle, threads=self.threads, precision=self.precision,
                                   worker=f"in-process:{os.getpid()}", dicom_out=self.dicom_out)
        self.startup_s = time.perf_counter() - t0

    def map(self, chunks: list[Chunk]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        for i, chunk in enumerate(chunks):
            yield i, _process_chunk(self._worker, chunk)

    def busy_pids(self) -> list[int]:
        return []

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None


class _RayWorker:
    """The actor body: one BatchWorker (one loaded Session) per actor process."""

    def __init__(self, bundle: str, threads: int, precision: str, dicom_out: str | None):
        import ray

        ctx = ray.get_runtime_context()
        name = f"ray:{ctx.get_node_id()[:8]}:{os.getpid()}"
        self.worker = BatchWorker(bundle, threads=threads, precision=precision, worker=name, dicom_out=dicom_out)

    def pid(self) -> int:
        return os.getpid()

    def run(self, chunk: Chunk) -> list[dict[str, Any]]:
        return _process_chunk(self.worker, chunk)


class RayExecutor:
    """An actor pool of `workers` actors on a Ray cluster (`address`=None: a local one on this machine)."""

    name = "ray"

    def __init__(self, bundle: str, *, address: str | None = None, workers: int = 2, threads: int = 1,
                 precision: str = "best", num_cpus: int | None = None, max_retries: int = 3,
                 task_timeout_s: float = 600.0, dicom_out: str | None = None):
        self.dicom_out = dicom_out
        self.bundle, self.address, self.workers, self.threads = bundle, address, workers, threads
        self.precision, self.num_cpus, self.max_retries, self.task_timeout_s = (precision, num_cpus, max_retries,
                                                                                task_timeout_s)
        self.startup_s = 0.0  # ray.init + every actor's engine.load, measured apart from the work
        self.worker_deaths = 0
        self._actors: list[Any] = []
        self._pids: dict[Any, int] = {}
        self._busy: dict[Any, Any] = {}
        self._owns_ray = False

    def _new_actor(self):
        import ray

        actor = self._cls.remote(self.bundle, self.threads, self.precision, self.dicom_out)
        self._pids[actor] = ray.get(actor.pid.remote(), timeout=self.task_timeout_s)
        return actor

    def start(self) -> None:
        import ray

        t0 = time.perf_counter()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "configure_logging": False}
            if self.address is None:
                kwargs["num_cpus"] = self.num_cpus or os.cpu_count() or 1
            ray.init(address=self.address, **kwargs)
            self._owns_ray = True
        # Actors are replaced by this executor, not restarted by Ray: a restarted actor would silently
        # re-run whatever it held, and the driver could not account for that chunk exactly once.
        self._cls = ray.remote(num_cpus=self.threads, max_restarts=0, max_task_retries=0)(_RayWorker)
        self._actors = [self._new_actor() for _ in range(self.workers)]
        self.startup_s = time.perf_counter() - t0

    def busy_pids(self) -> list[int]:
        """PIDs of actors now running a chunk (for tests that kill one mid-task)."""
        return [self._pids[a] for a in list(self._busy.values()) if a in self._pids]

    def _replace(self, actor) -> Any:
        import ray

        ray.kill(actor, no_restart=True)
        self._pids.pop(actor, None)
        self.worker_deaths += 1
        return self._new_actor()

    def map(self, chunks: list[Chunk]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        queue = collections.deque(range(len(chunks)))
        idle = list(self._actors)
        tries = collections.Counter()
        started: dict[Any, float] = {}
        chunk_of: dict[Any, int] = {}
        while queue or self._busy:
            while queue and idle:
                actor, cid = idle.pop(), queue.popleft()
                ref = actor.run.remote(chunks[cid])
                self._busy[ref] = actor
                started[ref] = time.monotonic()
                tries[cid] += 1
                chunk_of[ref] = cid
            ready, _ = ray.wait(list(self._busy), num_returns=1, timeout=1.0)
            now = time.monotonic()
            hung = [r for r in self._busy if r not in ready and now - started[r] > self.task_timeout_s]
            for ref in ready + hung:
                actor, cid = self._busy.pop(ref), chunk_of.pop(ref)
                started.pop(ref, None)
                try:
                    if ref in hung:
                        raise GetTimeoutError(f"chunk {cid} ran over {self.task_timeout_s} s")
                    rows = ray.get(ref)
                except (RayActorError, GetTimeoutError) as exc:
                    idle.append(self._replace(actor))
                    if tries[cid] <= self.max_retries:
                        queue.appendleft(cid)  # run it again on another (new) actor
                        continue
                    rows = [_lost_row(name, f"{type(exc).__name__}: worker lost {tries[cid]} times")
                            for _p, name in chunks[cid]]
                else:
                    idle.append(actor)
                yield cid, rows
        self._actors = idle

    def close(self) -> None:
        import ray

        for a in self._actors:
            ray.kill(a, no_restart=True)
        self._actors = []
        if self._owns_ray:
            ray.shutdown()


def _lost_row(name: str, message: str) -> dict[str, Any]:
    return {"file": name, "status": "failed", "error_class": "WorkerLost", "error_message": f"{name}: {message}"}
