"""Write a `.slicert` bundle atomically: temp file in the target folder, fsync, then one rename.

A crash or exception at any point leaves either the old file (or nothing) under the final name, never
a partial bundle. An existing file is never replaced unless `force=True`; without force the publish
step is a hard link, which fails if another process created the target in the meantime (no
check-then-write race).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import struct
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Union

from engine.bundle import format as fmt
from engine.bundle import signing
from engine.errors import BundleError, OutputExists

MemberSource = Union[bytes, bytearray, memoryview, "os.PathLike[str]", str]

_CHUNK = 1 << 20
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: same inputs give the same member bytes
_ZIPALIGN_EXTRA_ID = 0xD935  # the extra-field id Android's zipalign uses for padding
_LOCAL_HEADER_SIZE = 30
_ZIP64_EXTRA_SIZE = 20


def _chunks(source: MemberSource):
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source).cast("B")
        for start in range(0, len(view), _CHUNK):
            yield view[start:start + _CHUNK]
        return
    with open(source, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


def _digest(source: MemberSource) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    for chunk in _chunks(source):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def sha256_file(path: os.PathLike[str] | str) -> str:
    """Hex SHA-256 of a file's bytes."""
    return _digest(Path(path))[0]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _padding_extra(header_offset: int, name: str, zip64: bool) -> bytes:
    """An extra field that makes the member's data start on an ALIGNMENT boundary."""
    data_start = header_offset + _LOCAL_HEADER_SIZE + len(name.encode("utf-8")) + (
        _ZIP64_EXTRA_SIZE if zip64 else 0)
    pad = -data_start % fmt.ALIGNMENT
    if pad == 0:
        return b""
    if pad < 4:  # an extra field needs a 4-byte header
        pad += fmt.ALIGNMENT
    return struct.pack("<HH", _ZIPALIGN_EXTRA_ID, pad - 4) + b"\0" * (pad - 4)


def _write_member(zf: zipfile.ZipFile, fh, name: str, source: MemberSource, size: int, sha256: str) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    info.file_size = size
    zip64 = size * 1.05 > zipfile.ZIP64_LIMIT  # the rule zipfile applies when opening for write
    info.extra = _padding_extra(fh.tell(), name, zip64)
    h = hashlib.sha256()
    with zf.open(info, "w", force_zip64=zip64) as out:
        for chunk in _chunks(source):
            h.update(chunk)
            out.write(chunk)
    if h.hexdigest() != sha256:
        raise BundleError(f"member {name!r} changed while the bundle was being written; write it again")
    # The padding only matters in the local header; keep the central directory lean.
    info.extra = b""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on this platform/filesystem: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(tmp: Path, target: Path, force: bool) -> None:
    if force:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)  # atomic and refuses to replace: no window between check and write
    except FileExistsError:
        raise OutputExists(f"{target} already exists; pass force=True (CLI: --force) to replace it") from None
    except OSError:
        # Filesystems without hard links (FAT, some network mounts): fall back to check + rename.
        if target.exists():
            raise OutputExists(f"{target} already exists; pass force=True (CLI: --force) to replace it") from None
        os.replace(tmp, target)
        return
    os.unlink(tmp)


def write_bundle(path: os.PathLike[str] | str, manifest: Mapping, members: Mapping[str, MemberSource], *,
                 force: bool = False, sign_key=None) -> Path:
    """Write `manifest` + `members` as one bundle file at `path`; returns the path.

    `members` maps member names (e.g. "onnx/model.fp32.onnx") to bytes or a file path. The writer
    fills `manifest["members"]` with each member's SHA-256 and size (bytes) and validates the manifest
    before anything is written. Raises OutputExists if `path` exists and `force` is False.
    `sign_key`: an Ed25519 private key (PEM path/bytes, see engine.bundle.signing) signing the manifest.
    """
    target = Path(path)
    if target.exists() and not force:
        raise OutputExists(f"{target} already exists; pass force=True (CLI: --force) to replace it")
    if target.is_dir():
        raise OutputExists(f"{target} is a directory; give a file path such as {target / 'model.slicert'}")
    if not target.parent.is_dir():
        raise BundleError(f"cannot write {target}: folder {target.parent} does not exist")

    manifest = json.loads(json.dumps(dict(manifest)))  # deep copy; also proves it is plain JSON
    entries: dict[str, dict] = {}
    for name in sorted(members):
        if name in (fmt.MANIFEST, signing.SIGNATURE):
            raise BundleError(f"{name} is written by the writer; do not pass it as a member")
        fmt.check_member_name(name)
        sha, size = _digest(members[name])
        entries[name] = {"sha256": sha, "size": size}
    manifest["members"] = entries
    manifest.setdefault("created_utc", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    fmt.validate_manifest(manifest)
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
    signature = None if sign_key is None else signing.sign(manifest_bytes, sign_key)

    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                zf.comment = f"SliceRT bundle, schema {fmt.SCHEMA_VERSION}".encode()
                _write_member(zf, fh, fmt.MANIFEST, manifest_bytes, len(manifest_bytes), sha256_bytes(manifest_bytes))
                if signature is not None:
                    _write_member(zf, fh, signing.SIGNATURE, signature, len(signature), sha256_bytes(signature))
                for name in entries:
                    _write_member(zf, fh, name, members[name], entries[name]["size"], entries[name]["sha256"])
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        _publish(tmp, target, force)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target
