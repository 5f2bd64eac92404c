"""Generate the bad-input corpus: files + cases.json, deterministically, into a folder.

    python tests/corpus/generate.py --out /tmp/slicert-corpus        # write it, print a summary
    python tests/corpus/generate.py --out DIR --list                 # also list every case

Nothing here is committed as binary: DICOM cases are derived from the pydicom test files installed
with pydicom / pydicom-data, bundles from bundles the real builder makes from generated tiny models.
The same code version gives the same cases (ids, inputs, expectations); bundle bytes differ only in
their build timestamp. Tests call `ensure(folder)`, which regenerates when this code changed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests.corpus` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.corpus import api_cases, bundle_files, dicom_files, hostile_bundles, hostile_dicom
from tests.corpus.case import Case

CASES_FILE = "cases.json"
STAMP_FILE = "generator.sha256"


def code_digest() -> str:
    """Digest of what the corpus files depend on: the generator, the tiny model fixtures, the bundle
    writer/builder (valid parents are built with it) and the library versions that write files."""
    import importlib.metadata

    here = Path(__file__).resolve().parent
    root = here.parents[1]
    h = hashlib.sha256()
    sources = sorted(here.glob("*.py")) + [root / "tests" / "runtime" / "tiny_models.py"] + sorted(
        (root / "engine" / "bundle").glob("*.py"))
    for path in sources:
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    for dist in ("pydicom", "onnx", "onnxruntime", "numpy"):
        try:
            h.update(f"{dist}=={importlib.metadata.version(dist)}".encode())
        except importlib.metadata.PackageNotFoundError:
            pass
    return h.hexdigest()


def generate(out: Path) -> list[Case]:
    """Write the corpus into `out` (emptied first) and return its cases."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cases: list[Case] = []
    cases += bundle_files.generate(out)  # first: the valid bundles the sessions load
    cases += hostile_bundles.generate(out)
    cases += dicom_files.generate(out)
    cases += hostile_dicom.generate(out)
    cases += hostile_dicom.array_cases()
    cases += api_cases.array_cases()
    cases += api_cases.preprocess_cases()
    cases += api_cases.postprocess_cases()
    cases += api_cases.load_cases(bundle_files.VALID_CLASSIFIER)
    cases += api_cases.spec_cases(out)
    ids = Counter(c.id for c in cases)
    dupes = [i for i, n in ids.items() if n > 1]
    if dupes:
        raise RuntimeError(f"duplicate case ids: {dupes}")
    (out / CASES_FILE).write_text(json.dumps([c.to_json() for c in cases], indent=1, allow_nan=True))
    (out / STAMP_FILE).write_text(code_digest())
    return cases


def load(out: Path) -> list[Case]:
    return [Case.from_json(d) for d in json.loads((Path(out) / CASES_FILE).read_text())]


def ensure(out: Path) -> list[Case]:
    """The corpus in `out`, regenerated unless it was made by this exact generator code."""
    out = Path(out)
    stamp = out / STAMP_FILE
    if stamp.is_file() and stamp.read_text() == code_digest() and (out / CASES_FILE).is_file():
        return load(out)
    return generate(out)


def summary(cases: list[Case]) -> str:
    by_group = Counter(c.group for c in cases)
    by_expect = Counter(c.expect for c in cases)
    lines = [f"{len(cases)} cases"]
    lines += [f"  {g:<11} {n}" for g, n in sorted(by_group.items())]
    lines += ["expected outcomes:"] + [f"  {e:<26} {n}" for e, n in sorted(by_expect.items())]
    lines.append(f"reach the native module: {sum(c.native for c in cases)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to (re)create")
    parser.add_argument("--list", action="store_true", help="print every case id and why")
    args = parser.parse_args(argv)
    cases = generate(args.out)
    print(summary(cases))
    if args.list:
        for c in cases:
            print(f"{c.id:<70} {c.expect:<20} {c.why}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
