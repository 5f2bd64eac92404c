"""One bad-input case: what to feed, through which public entry point, and what must come back.

Cases are plain data (JSON in `cases.json`) so the corpus can be listed, diffed and replayed outside
pytest. Inputs that a file cannot hold faithfully (strided views, misaligned buffers, Python objects)
are described by a `recipe` that `tests.corpus.arrays.materialize` rebuilds at run time.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# How a case is run (tests/reliability/runner.py implements each one).
ENTRIES = (
    "session.run",       # Session.run(input, **kwargs) on the corpus classifier (kwargs session="segmenter": segmenter)
    "session.stream",    # list(Session.stream(input, drop_stale=False, **kwargs))
    "session.run_batch", # Session.run_batch([valid, input])
    "dicom.read",        # engine.dicom.read(input, **kwargs), then every frame decoded
    "spec.from_dict",    # PreprocessSpec.from_dict(json.loads(file))
    "bundle.open",       # engine.bundle.open_bundle(file)
    "engine.load",       # engine.load(file, **kwargs)
    "engine.load.gpu",   # engine.load(file, backend="tensorrt") with the GPU facts in kwargs simulated
    "preprocess",        # engine.preprocess.preprocess(x, spec, **kwargs)
    "preprocess_into",   # engine.preprocess.preprocess_into(out, x, spec, ...)
    "set_num_threads",   # engine.preprocess.set_num_threads(n)
    "postprocess",       # engine.postprocess.<kwargs fn>(input, ...)
)

# `expect` is the name of an engine.errors class, or ACCEPTED for degenerate-but-valid inputs
# (e.g. a 1x1 image on a session loaded with min_side=1) that must give a finite, well-defined result.
ACCEPTED = "accepted"


@dataclass(frozen=True)
class Case:
    id: str  # "<group>/<parent>/<mutation>", unique
    group: str  # dicom | array | spec | bundle | load | preprocess | postprocess
    entry: str  # one of ENTRIES
    expect: str  # engine.errors class name, or ACCEPTED
    match: str  # regex (case-insensitive) the error message must match: it names the problem
    why: str  # what is wrong with the input, for humans
    file: str | None = None  # input file, relative to the corpus folder
    recipe: dict[str, Any] | None = None  # input rebuilt at run time
    kwargs: dict[str, Any] = field(default_factory=dict)
    native: bool = False  # reaches engine._native with the bad input (the sanitizer job replays these)

    def __post_init__(self) -> None:
        if self.entry not in ENTRIES:
            raise ValueError(f"case {self.id}: unknown entry {self.entry!r}")
        if (self.file is None) == (self.recipe is None):
            raise ValueError(f"case {self.id}: give exactly one of file / recipe")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Case:
        return cls(**data)
