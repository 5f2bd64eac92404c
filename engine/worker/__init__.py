"""Isolated mode: SliceRT as a separate worker process that firmware reaches over POSIX shared memory.

* `layout`     the versioned shared-memory contract (mirrored by cpp/client/slicert_shm_layout.h);
* `serve`      the worker loop: frames in place from the slots into Session.run_into, results in place;
* `supervisor` restarts a worker that died or hung; the segment outlives the worker, so clients stay
  connected and see the new worker's epoch;
* `main`       process entry points (`slicert worker`, `python -m engine.worker`).

The firmware side is the C library in cpp/client (libc + pthreads only). docs/firmware.md has the protocol.
"""

from __future__ import annotations
