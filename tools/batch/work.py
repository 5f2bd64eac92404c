"""BatchWorker: one loaded Session; turns a file into result rows, or into one refusal row.

A bad file is a row, never a failed job: every `engine.errors` exception becomes status "refused"
with its class and message; anything else (a bug) becomes status "failed" with the same fields, so
the summary shows it instead of the job dying.
"""
from __future__ import annotations

import hashlib
import io
import os
import socket
import time
from pathlib import Path
from typing import Any

# A file larger than this is refused before it is read into memory (an archive's largest multi-frame
# objects are a few hundred MB; engine.dicom's pixel limit bounds the decoded size separately).
MAX_FILE_BYTES = 2 << 30

STAGES = ("read", "decode", "preprocess", "infer", "postprocess", "total")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in chunks (memory stays bounded for any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class BatchWorker:
    """Holds one Session for `bundle_path` and runs files through it."""

    def __init__(self, bundle_path: str | os.PathLike[str], *, threads: int = 1, precision: str = "best",
                 worker: str | None = None, dicom_out: str | os.PathLike[str] | None = None):
        import engine

        self.dicom_out = None if dicom_out is None else Path(dicom_out)

        self.session = engine.load(bundle_path, threads=threads, precision=precision)
        self.bundle_sha256 = file_sha256(Path(bundle_path))
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        self.labels = list(self.session.labels)
        self.task = self.session.task

    def close(self) -> None:
        self.session.close()

    def process(self, path: str | os.PathLike[str], name: str) -> list[dict[str, Any]]:
        """Rows for the file at `path`, reported as `name` (relative to the batch's root)."""
        from engine.errors import SliceRTError

        t0 = time.perf_counter()
        base: dict[str, Any] = {"file": name, "file_sha256": None, "bundle_sha256": self.bundle_sha256,
                                "worker": self.worker, "task": self.task}
        try:
            size = os.path.getsize(path)
            if size > MAX_FILE_BYTES:
                from engine.errors import InputError

                raise InputError(f"{name}: file is {size} bytes, over the batch limit of {MAX_FILE_BYTES}")
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            return [self._error_row(base, "refused", "OSError", f"{name}: cannot read: {exc.strerror or exc}")]
        except SliceRTError as exc:
            return [self._error_row(base, "refused", type(exc).__name__, str(exc))]
        base["file_sha256"] = hashlib.sha256(data).hexdigest()
        read_ms = (time.perf_counter() - t0) * 1e3
        try:
            return self._run(data, name, base, read_ms)
        except SliceRTError as exc:
            return [self._error_row(base, "refused", type(exc).__name__, str(exc))]
        except Exception as exc:  # a bug, not a bad file: still a row, never a dead job
            return [self._error_row(base, "failed", type(exc).__name__, f"{name}: {exc}")]

    def _run(self, data: bytes, name: str, base: dict[str, Any], read_ms: float) -> list[dict[str, Any]]:
        from engine import dicom

        t0 = time.perf_counter()
        buf = io.BytesIO(data)
        buf.name = name  # error messages name the file
        img = dicom.read(buf)
        header_ms = (time.perf_counter() - t0) * 1e3
        ds = img.dataset
        ids = {"sop_instance_uid": _uid(ds, "SOPInstanceUID"), "study_instance_uid": _uid(ds, "StudyInstanceUID"),
               "series_instance_uid": _uid(ds, "SeriesInstanceUID")}
        multi = hasattr(img, "__len__")
        frames = iter(img if multi else [img])  # a FrameSequence decodes each frame when it is reached
        rows, results = [], []
        for k in range(len(img) if multi else 1):
            t1 = time.perf_counter()
            sl = next(frames)
            frame_ms = (time.perf_counter() - t1) * 1e3
            r = self.session.run(sl)
            row = dict(base, **ids, status="ok", error_class=None, error_message=None,
                       frame=sl.frame_index if multi else None)
            self._fill_result(row, r)
            tm = r.timings_ms
            # The file read and header parse count for the first frame; each frame's own decode for it.
            row["read_ms"] = read_ms if k == 0 else 0.0
            row["decode_ms"] = frame_ms + (header_ms if k == 0 else 0.0)
            for s in ("preprocess", "infer", "postprocess"):
                row[f"{s}_ms"] = tm[s]
            row["total_ms"] = row["read_ms"] + row["decode_ms"] + tm["preprocess"] + tm["infer"] + tm["postprocess"]
            rows.append(row)
            if self.dicom_out is not None:
                results.append(r)
        if self.dicom_out is not None:
            written, error = self._write_dicom(name, ds, results, base["file_sha256"])
            for row in rows:
                row["dicom_out"], row["dicom_out_error"] = written, error
        return rows

    def _write_dicom(self, name: str, ds, results: list, content_sha256: str) -> tuple[str | None, str | None]:
        """SEG(s) (segmentation) and a TID 1500 SR for one file's results under dicom_out, mirroring the
        archive's folders. UIDs derive from the file's and the bundle's SHA-256, so a re-run writes the
        same objects. Returns (';'-joined paths, None) or (None, the typed error that stopped it)."""
        from engine.dicomout.seg import build_segs
        from engine.dicomout.sr import build_sr
        from engine.errors import SliceRTError

        seed = f"{content_sha256}:{self.bundle_sha256}"
        try:
            segs = build_segs(results, ds, uid_seed=seed) if self.task == "segmentation" else None
            sr = build_sr(results, ds, segs=segs, uid_seed=seed)
        except SliceRTError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        objects = [(f".seg{'' if len(segs) == 1 else f'-{i + 1}'}.dcm", seg) for i, seg in enumerate(segs or [])]
        objects.append((".sr.dcm", sr))
        paths = []
        for suffix, obj in objects:
            path = self.dicom_out / (name + suffix)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            obj.save_as(tmp, enforce_file_format=True)
            os.replace(tmp, path)
            paths.append(str(path))
        return ";".join(paths), None

    def _fill_result(self, row: dict[str, Any], r) -> None:
        row["label"] = r.label
        if self.task == "classification":
            for lab, s in zip(self.labels, r.scores.tolist()):
                row[f"score_{lab}"] = float(s)
        else:
            areas = r.areas_mm2 or {}
            for lab in self.labels:
                row[f"pixels_{lab}"] = int(r.pixel_counts[lab]) if r.pixel_counts else None
                row[f"area_mm2_{lab}"] = float(areas[lab]) if lab in areas else None
        ood = getattr(r, "ood", None)
        if ood is not None:
            row["ood_flag"] = bool(_field(ood, "flag"))
            score = _field(ood, "score")
            row["ood_score"] = None if score is None else float(score)
        else:
            row["ood_flag"] = row["ood_score"] = None

    def _error_row(self, base: dict[str, Any], status: str, cls: str, message: str) -> dict[str, Any]:
        return dict(base, status=status, error_class=cls, error_message=message, frame=None, label=None,
                    sop_instance_uid=None, study_instance_uid=None, series_instance_uid=None)


def _field(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _uid(ds: Any, keyword: str) -> str | None:
    v = getattr(ds, keyword, None) if ds is not None else None
    return str(v) if v else None
