"""`slicert batch`: one bundle over a DICOM archive, a row per image or frame in one Parquet table.

    inputs.py    INPUT (folder, list file, glob) -> the files to run, in a fixed order
    work.py      BatchWorker: one loaded Session; a file -> rows (results, or the typed refusal)
    table.py     the result table: parts written atomically, resume keys, the final Parquet file
    executors.py where workers run: in this process (default), or an actor pool on a Ray cluster
    job.py       the driver shared by both executors: plan, dispatch, progress, finalize, summary

Nothing here imports torch; Ray is imported only by the Ray executor (extra `[ray]`), and `engine/`
imports none of this.
"""
from tools.batch.job import BatchSummary, run_batch

__all__ = ["BatchSummary", "run_batch"]
