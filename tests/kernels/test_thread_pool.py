"""The persistent thread pool: concurrent callers, results independent of the thread count, and a
forked child (e.g. a PyTorch DataLoader worker) that preprocesses without deadlocking."""
from __future__ import annotations

import multiprocessing
import threading
import warnings

import numpy as np

from engine.preprocess import get_num_threads, preprocess, set_num_threads
from engine.spec import PreprocessSpec

SPEC = PreprocessSpec(out_height=96, out_width=80, voi_function="sigmoid", window_center=2000, window_width=1500,
                      normalize="zscore")


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, (700, 500), dtype=np.uint16)


def test_concurrent_callers_get_the_serial_results():
    images = [_image(i) for i in range(6)]
    expected = [preprocess(x, SPEC) for x in images]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                results[i] = preprocess(images[i], SPEC)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads)
    for i, e in enumerate(expected):
        np.testing.assert_array_equal(results[i], e)


def _child(q) -> None:
    q.put(preprocess(_image(1), SPEC))


def test_forked_child_can_preprocess():
    before = get_num_threads()
    set_num_threads(2)
    try:
        expected = preprocess(_image(1), SPEC)  # the pool's workers exist in the parent now
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Python >= 3.12 warns on fork with threads
            p = ctx.Process(target=_child, args=(q,))
            p.start()
        got = q.get(timeout=60)
        p.join(timeout=60)
        assert p.exitcode == 0
        np.testing.assert_array_equal(got, expected)
    finally:
        set_num_threads(before)
