"""Long runs: consecutive Session.run calls with RSS sampled and per-call latency recorded.

Criteria (issue 9): flat memory, RSS growth < 1 MB after warm-up; no latency drift, p99 of the last
10% of calls within 10% of the p99 of the first 10% (both counted after the warm-up); and the same
input gives bit-identical scores at the start and at the end.

* CI: 5,000 calls. This machine has 2 cores shared with other jobs, so a wall-clock p99 over a few
  seconds measures the neighbours as much as SliceRT. The CI drift check therefore uses the calling
  thread's CPU time (time.thread_time_ns; the session runs single-threaded so all work is on that
  thread, and preemption by other processes is not counted) and compares the median of per-block
  medians (blocks of 50 calls) of the last 10% with the first 10%: a per-call p99 over 450 calls of
  ~25 us swung by -85%..+890% between back-to-back runs here, the block medians by under 7%.
  Wall-clock p99s are recorded in the figures, not asserted.
* On demand (SLICERT_SLOW=1, marker `slow`): 100,000 calls with the issue's criteria verbatim on
  wall-clock latency: p99(last 10%) <= 1.10 x p99(first 10%), and RSS growth < 1 MB.
"""
from __future__ import annotations

import ctypes
import gc
import time

import numpy as np
import psutil
import pytest

from tests.corpus import bundle_files, dicom_files

RSS_GROWTH_LIMIT_BYTES = 1 << 20  # 1 MB
DRIFT_LIMIT = 0.10
BLOCK = 50
RSS_EVERY = 100


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_in_use() -> int | None:
    """Bytes the C heap has handed out and not freed (glibc mallinfo2: main arena + mmapped blocks),
    or None off glibc. Separates a leak (this grows) from the allocator keeping freed pages (only
    RSS grows)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None
    m = libc.mallinfo2()
    return int(m.uordblks + m.hblkhd)


def _inputs(n: int = 8) -> list[np.ndarray]:
    rng = np.random.default_rng(2026)
    return [rng.integers(0, 4096, (64, 64)).astype(np.uint16) for _ in range(n)]


def soak(run, inputs: list, calls: int, warmup: int) -> dict:
    """Call run(inputs[i % len]) `calls` times; per-call wall and thread-CPU ns, RSS every RSS_EVERY."""
    proc = psutil.Process()
    # Filled, not np.empty: untouched pages of a 100,000-call record would be faulted in during the
    # loop and show up as 16 bytes of "RSS growth" per call (measured here before this fix).
    wall = np.full(calls, -1, np.int64)
    cpu = np.full(calls, -1, np.int64)
    rss = np.full((calls // RSS_EVERY + 2, 2), -1, np.int64)  # (call index, RSS bytes); same reason
    n_rss = 0
    heap: list[tuple[int, int | None]] = []
    first_scores = run(inputs[0]).scores.copy()
    perf, tcpu = time.perf_counter_ns, time.thread_time_ns
    for i in range(calls):
        x = inputs[i % len(inputs)]
        c0, t0 = tcpu(), perf()
        run(x)
        t1, c1 = perf(), tcpu()
        wall[i], cpu[i] = t1 - t0, c1 - c0
        if i % RSS_EVERY == 0 or i == calls - 1:
            rss[n_rss, 0], rss[n_rss, 1] = i, proc.memory_info().rss
            n_rss += 1
            if i == warmup or i == calls - 1:
                heap.append((i, heap_in_use()))
    last_scores = run(inputs[0]).scores.copy()
    stats = summarize(wall, cpu, [(int(i), int(r)) for i, r in rss[:n_rss]], warmup, first_scores, last_scores)
    if len(heap) == 2 and heap[0][1] is not None:
        stats["heap_in_use_growth_bytes"] = heap[1][1] - heap[0][1]
    return stats


def _p99(a: np.ndarray) -> float:
    return float(np.percentile(a, 99))


def _median_of_blocks(a: np.ndarray, stat) -> float:
    """Median over consecutive blocks of BLOCK calls of stat(block): one burst of interference moves
    one block, not the figure."""
    n = len(a) // BLOCK
    return float(np.median([stat(a[i * BLOCK:(i + 1) * BLOCK]) for i in range(n)])) if n else float(stat(a))


def summarize(wall, cpu, rss, warmup, first_scores, last_scores) -> dict:
    steady_wall, steady_cpu = wall[warmup:], cpu[warmup:]
    tenth = max(BLOCK, len(steady_wall) // 10)
    after_warmup = [r for i, r in rss if i >= warmup]
    growth = after_warmup[-1] - after_warmup[0]
    out = {
        "calls": len(wall), "warmup_calls": int(warmup),
        "rss_after_warmup_mb": after_warmup[0] / 2**20, "rss_end_mb": after_warmup[-1] / 2**20,
        "rss_growth_bytes": int(growth), "rss_max_excursion_bytes": int(max(after_warmup) - after_warmup[0]),
        "wall_median_us": float(np.median(steady_wall)) / 1e3,
        "wall_p99_first_us": _p99(steady_wall[:tenth]) / 1e3, "wall_p99_last_us": _p99(steady_wall[-tenth:]) / 1e3,
        "cpu_block_median_first_us": _median_of_blocks(steady_cpu[:tenth], np.median) / 1e3,
        "cpu_block_median_last_us": _median_of_blocks(steady_cpu[-tenth:], np.median) / 1e3,
        "cpu_block_p99_first_us": _median_of_blocks(steady_cpu[:tenth], _p99) / 1e3,
        "cpu_block_p99_last_us": _median_of_blocks(steady_cpu[-tenth:], _p99) / 1e3,
        "scores_identical_start_end": bool(np.array_equal(first_scores, last_scores)),
        # RSS relative to the end of warm-up, at 20 evenly spaced points (KiB): shows steps vs trends
        "rss_series_kib": [int((r - after_warmup[0]) // 1024) for r in
                           np.array(after_warmup)[np.linspace(0, len(after_warmup) - 1, 21).astype(int)]],
    }
    out["wall_p99_drift"] = out["wall_p99_last_us"] / out["wall_p99_first_us"] - 1
    out["cpu_block_p99_drift"] = out["cpu_block_p99_last_us"] / out["cpu_block_p99_first_us"] - 1
    out["cpu_block_median_drift"] = out["cpu_block_median_last_us"] / out["cpu_block_median_first_us"] - 1
    return out


@pytest.fixture
def single_threaded_session(corpus_dir):
    import engine
    from engine import preprocess

    before = preprocess.get_num_threads()
    s = engine.load(corpus_dir / bundle_files.VALID_CLASSIFIER, threads=1)
    yield s
    s.close()
    preprocess.set_num_threads(before)  # load(threads=) sets the process-wide kernel pool


def _assert_flat_memory(stats: dict) -> None:
    assert stats["rss_growth_bytes"] < RSS_GROWTH_LIMIT_BYTES, (
        f"RSS grew {stats['rss_growth_bytes'] / 2**20:.2f} MB over {stats['calls'] - stats['warmup_calls']} calls "
        f"after warm-up: {stats}")
    assert stats["scores_identical_start_end"], "the same input gave different scores after the soak"


@pytest.mark.timeout(300, method="thread")
def test_soak_5000_runs_flat_memory_no_drift(single_threaded_session, figures):
    gc.collect()
    stats = soak(single_threaded_session.run, _inputs(), calls=5000, warmup=500)
    figures.add("soak_ci_raw_5000", stats)
    _assert_flat_memory(stats)
    assert stats["cpu_block_median_drift"] <= DRIFT_LIMIT, (
        f"per-call CPU time drifted {stats['cpu_block_median_drift']:+.1%} (median of block medians, last vs first "
        f"10%): {stats}")


@pytest.mark.timeout(300, method="thread")
def test_soak_dicom_and_segmenter_flat_memory(corpus_dir, figures):
    """1,000 runs from DICOM bytes (parse + decode per call) on the classifier and 1,000 segmenter
    runs (mask + areas per call): no growth either."""
    import engine

    ct = dicom_files.parent_path(dicom_files.CT).read_bytes()
    mr = dicom_files.parent_path(dicom_files.MR).read_bytes()
    with engine.load(corpus_dir / bundle_files.VALID_CLASSIFIER) as cls:
        dicom_stats = soak(cls.run, [ct, mr], calls=1000, warmup=200)
    with engine.load(corpus_dir / bundle_files.VALID_SEGMENTER) as seg:
        def run_seg(x):
            r = seg.run(x, pixel_spacing_mm=(0.5, 0.5))
            r.scores = r.mask  # soak() compares .scores start vs end: compare the mask
            return r
        seg_stats = soak(run_seg, _inputs(), calls=1000, warmup=200)
    figures.add("soak_ci_dicom_1000", dicom_stats)
    figures.add("soak_ci_segmenter_1000", seg_stats)
    _assert_flat_memory(dicom_stats)
    _assert_flat_memory(seg_stats)


@pytest.mark.slow
@pytest.mark.timeout(3600, method="thread")
def test_soak_100000_runs_issue_criteria(single_threaded_session, figures):
    """The issue's criteria verbatim, on wall-clock latency (run on a quiet machine)."""
    gc.collect()
    stats = soak(single_threaded_session.run, _inputs(), calls=100_000, warmup=2_000)
    figures.add("soak_slow_raw_100000", stats)
    _assert_flat_memory(stats)
    assert stats["wall_p99_drift"] <= DRIFT_LIMIT, (
        f"p99 latency of the last 10% is {stats['wall_p99_drift']:+.1%} vs the first 10%: {stats}")
    assert stats["cpu_block_median_drift"] <= DRIFT_LIMIT, stats
