"""Classification labels from a CSV file: a header row, then one image per row.

    file,label                       or      SOPInstanceUID,label
    patient1/slice001.dcm,liver              1.2.826.0.1.3680043.8.498.1,liver

`file` is the path relative to the DICOM folder. Labels are class names (or class ids when the spec
names the classes). Every row must name an image of the folder: a row naming a missing image, an
empty label, a duplicate row or an unknown class is a LabelsError naming the file and line.
"""
from __future__ import annotations

import csv
from pathlib import Path

from tools.dataset.scan import ImageRecord
from tools.errors import LabelsError

_FILE_KEYS = ("file", "path", "filename")
_UID_KEYS = ("sopinstanceuid", "sop_instance_uid")
_LABEL_KEYS = ("label", "class")
MAX_ROWS = 10_000_000  # a bound on a malformed file, far above any archive


def read_labels(path: str | Path, records: list[ImageRecord], unusable_rel: set[str],
                classes: tuple[str, ...] | None) -> tuple[dict[str, str], tuple[str, ...]]:
    """({image rel path: class name}, classes). Rows naming a file the scan found unusable are dropped
    (that file is reported with its reason); rows naming nothing in the folder raise LabelsError."""
    path = Path(path)
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise LabelsError(f"{path}: cannot open the labels file ({exc.strerror or exc})") from None
    by_rel = {r.rel: r for r in records}
    by_uid = {r.sop_instance_uid: r for r in records}
    out: dict[str, str] = {}
    first_line: dict[str, int] = {}
    with f:
        try:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise LabelsError(f"{path}: empty labels file (expected a header row 'file,label' or "
                                  f"'SOPInstanceUID,label')")
            keys = [h.strip().lower() for h in header]
            key_col = next((i for i, k in enumerate(keys) if k in _FILE_KEYS + _UID_KEYS), None)
            label_col = next((i for i, k in enumerate(keys) if k in _LABEL_KEYS), None)
            if key_col is None or label_col is None:
                raise LabelsError(f"{path}: header {header!r} must have a 'file' (or 'SOPInstanceUID') column and a "
                                  f"'label' column")
            by_uid_col = keys[key_col] in _UID_KEYS
            missing: list[str] = []
            for row in reader:
                line = reader.line_num
                if line > MAX_ROWS:
                    raise LabelsError(f"{path}: more than {MAX_ROWS} rows")
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) <= max(key_col, label_col):
                    raise LabelsError(f"{path}:{line}: expected {len(header)} columns, got {len(row)}")
                key, label = row[key_col].strip(), row[label_col].strip()
                if not key or not label:
                    raise LabelsError(f"{path}:{line}: empty {'image' if not key else 'label'}")
                rec = by_uid.get(key) if by_uid_col else by_rel.get(Path(key).as_posix())
                if rec is None:
                    if not by_uid_col and Path(key).as_posix() in unusable_rel:
                        continue  # exists, but unusable: reported by the scan with its reason
                    missing.append(f"line {line}: {key}")
                    continue
                if rec.rel in first_line:
                    raise LabelsError(f"{path}:{line}: {key} is labelled twice (first on line {first_line[rec.rel]})")
                first_line[rec.rel] = line
                out[rec.rel] = label
        except csv.Error as exc:
            raise LabelsError(f"{path}: not a readable CSV file ({exc})") from None
        except UnicodeDecodeError:
            raise LabelsError(f"{path}: not UTF-8 text") from None
    if missing:
        what = "SOPInstanceUID(s) not found among the readable images" if by_uid_col else "image(s) not in the folder"
        raise LabelsError(f"{path}: {len(missing)} {what}: {', '.join(missing[:5])}"
                          f"{' ...' if len(missing) > 5 else ''}")
    if not out:
        raise LabelsError(f"{path}: no labelled image")
    if classes is None:
        classes = tuple(sorted(set(out.values())))
    else:
        known = set(classes)
        # Class ids are accepted where the spec names the classes.
        ids = {str(i): c for i, c in enumerate(classes)}
        for rel, label in list(out.items()):
            if label not in known:
                if label in ids:
                    out[rel] = ids[label]
                else:
                    raise LabelsError(f"{path}:{first_line[rel]}: label {label!r} is not one of the spec's classes "
                                      f"{list(classes)}")
    return out, classes
