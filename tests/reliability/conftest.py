"""Fixtures shared by the reliability tests: the generated corpus, its sessions, and a figures log.

Set SLICERT_RELIABILITY_REPORT=path.json to collect the figures tests/RELIABILITY.md quotes (cases,
times, soak RSS/latency, concurrency); each test adds its section under its own key.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from tests.corpus import generate


def corpus_folder(config: pytest.Config) -> Path:
    """SLICERT_CORPUS_DIR, else pytest's cache folder keyed by the generator's code digest (so a
    changed generator never reuses stale files)."""
    env = os.environ.get("SLICERT_CORPUS_DIR")
    if env:
        return Path(env)
    cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
    root = Path(cache.mkdir("slicert-corpus")) if cache is not None else Path(tempfile.gettempdir()) / "slicert-corpus"
    return root / generate.code_digest()[:16]


def ensure_corpus(config: pytest.Config) -> list:
    folder = corpus_folder(config)
    if (folder / generate.CASES_FILE).is_file():
        return generate.ensure(folder)
    # Generate next to the target and rename into place: two pytest processes (e.g. the sanitizer
    # job and a normal run) never see a half-written corpus.
    import shutil

    if folder.parent.is_dir():  # corpora of older generator versions
        for old in folder.parent.iterdir():
            if old.name != folder.name and ".tmp-" not in old.name:
                shutil.rmtree(old, ignore_errors=True)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    cases = generate.generate(tmp)
    try:
        tmp.rename(folder)
    except OSError:  # another process won the race: use its corpus
        shutil.rmtree(tmp, ignore_errors=True)
        return generate.ensure(folder)
    return cases


@pytest.fixture(scope="session")
def corpus_dir(pytestconfig) -> Path:
    ensure_corpus(pytestconfig)
    return corpus_folder(pytestconfig)


class FiguresLog:
    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        self.sections: dict = {}

    def add(self, key: str, value) -> None:
        self.sections[key] = value

    def write(self) -> None:
        if self.path is None or not self.sections:
            return
        old = json.loads(self.path.read_text()) if self.path.is_file() else {}
        old.update(self.sections)
        self.path.write_text(json.dumps(old, indent=2, sort_keys=True, default=str))


@pytest.fixture(scope="session")
def figures():
    log = FiguresLog(os.environ.get("SLICERT_RELIABILITY_REPORT"))
    yield log
    log.write()
