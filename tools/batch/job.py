"""The batch driver, one code path for every executor: plan, dispatch, write parts, merge, summarize."""
from __future__ import annotations

import collections
import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tools.batch.inputs import resolve_inputs
from tools.batch.table import ResultTable
from tools.batch.work import file_sha256

# progress(files_done, files_total, elapsed_s) after every finished chunk.
Progress = Callable[[int, int, float], None]


@dataclasses.dataclass
class BatchSummary:
    """What a batch did. Times in seconds; rates in images (rows) per second of work, start-up excluded."""

    out: str
    executor: str
    workers: int
    files: int
    rows: int
    ok_files: int
    refused: dict[str, int]
    failed: dict[str, int]
    resumed_files: int
    not_dicom_files: int
    startup_s: float
    work_s: float
    images_per_s: float
    worker_deaths: int
    accuracy: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _bundle_identity(bundle: Path) -> tuple[str, list[str], str]:
    from engine.bundle.reader import open_bundle

    b = open_bundle(bundle)
    try:
        return b.task, list(b.labels), file_sha256(bundle)
    finally:
        b.close()


def make_executor(kind: str, bundle: str, *, workers: int | None, threads: int, precision: str,
                  address: str | None, num_cpus: int | None, task_timeout_s: float, dicom_out: str | None):
    from tools.batch import executors

    if kind == "in-process":
        return executors.InProcessExecutor(bundle, threads=threads, precision=precision, dicom_out=dicom_out)
    if kind == "ray":
        return executors.RayExecutor(bundle, address=address, workers=workers or 2, threads=threads,
                                     precision=precision, num_cpus=num_cpus, task_timeout_s=task_timeout_s,
                                     dicom_out=dicom_out)
    raise ValueError(f"unknown executor {kind!r}")


def run_batch(input: str | os.PathLike[str], bundle: str | os.PathLike[str], out: str | os.PathLike[str], *,
              executor: str = "in-process", ray_address: str | None = None, workers: int | None = None,
              threads: int = 1, precision: str = "best", chunk_size: int = 8, labels: str | None = None,
              force: bool = False, num_cpus: int | None = None, task_timeout_s: float = 600.0,
              dicom_out: str | os.PathLike[str] | None = None,
              progress: Progress | None = None, on_chunk: Callable[[Any], None] | None = None) -> BatchSummary:
    """Run `bundle` over every DICOM file of `input` and write one Parquet table to `out`.

    executor: "in-process" (default; no Ray needed) or "ray" (`ray_address`=None starts a local
    cluster of `num_cpus` CPUs; `workers` actors, each with one Session of `threads` threads).
    A re-run with the same `out` skips files already done (same name, same bytes, same bundle);
    `force` starts over. `dicom_out`: also write a DICOM SEG (segmentation) and a TID 1500 SR per file
    under this folder (the `dicom` extra), named after the file. `labels`: a CSV (file,label or SOPInstanceUID,label) scored into `accuracy`.
    `on_chunk(executor)` is called after each finished chunk (tests use it to kill a worker).
    """
    from engine.errors import InputError

    _require("pyarrow", "batch")
    if executor == "ray":
        _require("ray", "ray")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    bundle = Path(bundle)
    root, files, not_dicom = resolve_inputs(input)
    task, label_names, bundle_sha = _bundle_identity(bundle)
    table = ResultTable(out, task, label_names, bundle_sha, force=force)
    names = [os.path.relpath(f, root) for f in files]
    done = table.done_keys()
    todo = [(str(f), n) for f, n in zip(files, names)
            if not done or (n, file_sha256(f)) not in done]  # hash only when there is something to resume
    chunks = [todo[i:i + chunk_size] for i in range(0, len(todo), chunk_size)]

    ex = make_executor(executor, str(bundle), workers=workers, threads=threads, precision=precision,
                       address=ray_address, num_cpus=num_cpus, task_timeout_s=task_timeout_s,
                       dicom_out=None if dicom_out is None else str(Path(dicom_out).resolve()))
    n_done = len(files) - len(todo)
    n_rows = 0
    t_work = 0.0
    try:
        ex.start()
        t0 = time.perf_counter()
        for _cid, rows in ex.map(chunks):
            for r in rows:
                r.setdefault("bundle_sha256", bundle_sha)
                r.setdefault("task", task)
            table.write_part(rows)
            n_rows += len(rows)
            n_done += len({r["file"] for r in rows})
            if progress is not None:
                progress(n_done, len(files), time.perf_counter() - t0)
            if on_chunk is not None:
                on_chunk(ex)
        t_work = time.perf_counter() - t0
    finally:
        ex.close()
    table.finalize()
    return _summarize(table, names, ex, len(files) - len(todo), len(not_dicom), n_rows, t_work, labels)


def _require(module: str, extra: str) -> None:
    import importlib.util

    from engine.errors import BackendUnavailable

    if importlib.util.find_spec(module) is None:
        raise BackendUnavailable(f"slicert batch needs {module}: python -m pip install 'slicert[{extra}]'")


def _summarize(table: ResultTable, names: list[str], ex, resumed: int, not_dicom: int, n_rows: int, work_s: float,
               labels: str | None) -> BatchSummary:
    import pyarrow.parquet as pq

    from engine.errors import BundleError

    d = pq.read_table(table.out).to_pydict()
    wanted = set(names)
    by_file: dict[str, list[int]] = collections.defaultdict(list)
    for i, f in enumerate(d["file"]):
        if f in wanted:
            by_file[f].append(i)
    missing = wanted - set(by_file)
    if missing:  # an accounting bug must never look like a finished job
        raise BundleError(f"batch lost {len(missing)} file(s), e.g. {sorted(missing)[0]}")
    refused, failed = collections.Counter(), collections.Counter()
    ok = rows = 0
    for _f, idx in by_file.items():
        rows += len(idx)
        status, cls = d["status"][idx[0]], d["error_class"][idx[0]]
        if status == "ok":
            ok += 1
        elif status == "refused":
            refused[cls] += 1
        else:
            failed[cls] += 1
    accuracy = None
    if labels is not None:
        from tools.batch.accuracy import score_labels

        accuracy = score_labels(d, labels)
    return BatchSummary(out=str(table.out), executor=ex.name, workers=ex.workers, files=len(names), rows=rows,
                        ok_files=ok, refused=dict(refused), failed=dict(failed), resumed_files=resumed,
                        not_dicom_files=not_dicom, startup_s=ex.startup_s, work_s=work_s,
                        images_per_s=(n_rows / work_s) if work_s > 0 else 0.0,
                        worker_deaths=ex.worker_deaths, accuracy=accuracy)
