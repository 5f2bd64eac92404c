"""The result table of a batch: one Parquet file, built from parts that are each written atomically.

While a job runs, every finished chunk of files becomes `OUT.parts/part-*.parquet` (written to a
temporary name, then renamed), so an interrupted job leaves only whole parts and never a half-written
table. Finishing merges the parts (and a previous OUT of the same bundle) into OUT through another
rename. A re-run reads the keys already present and skips those files: a key is the file's name, the
SHA-256 of its bytes and the bundle's SHA-256, so a changed file or a new bundle runs again.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from engine.errors import OutputExists

FIXED_HEAD = ("file", "frame", "status", "label")
FIXED_TAIL = ("ood_flag", "ood_score", "sop_instance_uid", "study_instance_uid", "series_instance_uid",
              "read_ms", "decode_ms", "preprocess_ms", "infer_ms", "postprocess_ms", "total_ms", "worker",
              "error_class", "error_message", "dicom_out", "dicom_out_error", "file_sha256", "bundle_sha256", "task")


def schema(task: str, labels: list[str]):
    """The Arrow schema of a table for a bundle of `task` with `labels` (one column per label)."""
    import pyarrow as pa

    types: dict[str, Any] = {"file": pa.string(), "frame": pa.int32(), "status": pa.string(), "label": pa.string()}
    for lab in labels:
        if task == "classification":
            types[f"score_{lab}"] = pa.float32()
        else:
            types[f"pixels_{lab}"] = pa.int64()
            types[f"area_mm2_{lab}"] = pa.float64()
    types.update({"ood_flag": pa.bool_(), "ood_score": pa.float64()})
    for c in FIXED_TAIL[2:]:
        types[c] = pa.float64() if c.endswith("_ms") else pa.string()
    return pa.schema([pa.field(k, v) for k, v in types.items()])


class ResultTable:
    """Parts and the final table for output path `out` (a .parquet file)."""

    def __init__(self, out: str | os.PathLike[str], task: str, labels: list[str], bundle_sha256: str,
                 *, force: bool = False):
        self.out = Path(out)
        self.parts_dir = self.out.with_name(self.out.name + ".parts")
        self.schema = schema(task, labels)
        self.bundle_sha256 = bundle_sha256
        self._seq = 0
        self._keep_previous = not force
        if self.out.exists() and not force:
            other = self._bundles_in(self.out)
            if other and other != {bundle_sha256}:
                raise OutputExists(f"{self.out} holds results of another bundle (sha256 {sorted(other)[0][:16]}...); "
                                   f"choose another --out, or pass --force to replace it")
        if force:
            self.discard()

    @staticmethod
    def _bundles_in(path: Path) -> set[str]:
        import pyarrow.parquet as pq

        col = pq.read_table(path, columns=["bundle_sha256"]).column("bundle_sha256")
        return {v for v in col.to_pylist() if v}

    def _tables(self) -> list:
        import pyarrow.parquet as pq

        paths = sorted(self.parts_dir.glob("part-*.parquet")) if self.parts_dir.is_dir() else []
        if self.out.exists() and self._keep_previous:
            paths.insert(0, self.out)
        return [pq.read_table(p, schema=self.schema) for p in paths]

    def done_keys(self) -> set[tuple[str, str]]:
        """(file, file_sha256) of every file that already has rows for this bundle."""
        keys = set()
        for t in self._tables():
            d = t.select(["file", "file_sha256", "bundle_sha256"]).to_pydict()
            keys.update((f, h) for f, h, b in zip(d["file"], d["file_sha256"], d["bundle_sha256"])
                        if h and b == self.bundle_sha256)
        return keys

    def write_part(self, rows: list[dict[str, Any]]) -> Path:
        """Write `rows` as one new part, atomically; returns its path."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.parts_dir.mkdir(parents=True, exist_ok=True)
        names = self.schema.names
        table = pa.Table.from_pylist([{k: r.get(k) for k in names} for r in rows], schema=self.schema)
        self._seq += 1
        final = self.parts_dir / f"part-{self._seq:06d}-{uuid.uuid4().hex[:12]}.parquet"
        tmp = final.with_name("." + final.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        return final

    def finalize(self) -> int:
        """Merge the previous table and every part into `out` (one rename); returns the row count."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        tables = [t.filter(pc.equal(t["bundle_sha256"], self.bundle_sha256)) for t in self._tables()]
        # Each file's rows come from the newest source that has it (a file refused as unreadable and
        # run again on resume is reported once), and once per (content, frame) within it: a part may
        # survive a crash between its write and the merge.
        newest = {f: i for i, t in enumerate(tables) for f in t.column("file").to_pylist()}
        kept = []
        seen = set()
        for i, t in enumerate(tables):
            d = t.select(["file", "file_sha256", "frame"]).to_pydict()
            keep = []
            for j, key in enumerate(zip(d["file"], d["file_sha256"], d["frame"])):
                if newest[key[0]] == i and key not in seen:
                    seen.add(key)
                    keep.append(j)
            kept.append(t.take(pa.array(keep, pa.int64())))
        table = pa.concat_tables(kept) if kept else self.schema.empty_table()
        table = table.sort_by([("file", "ascending"), ("frame", "ascending")])
        tmp = self.out.with_name(f".{self.out.name}.{os.getpid()}.tmp")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp)
        os.replace(tmp, self.out)
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        return table.num_rows

    def discard(self) -> None:
        """--force: forget earlier parts (the final table is replaced at finalize, not before)."""
        shutil.rmtree(self.parts_dir, ignore_errors=True)
