"""Open and verify a `.slicert` bundle.

Every member's SHA-256 is checked against the manifest before anything is used; a mismatch, a
missing or unexpected member, a compressed member or a truncated file raises BundleError naming the
member. The file is memory-mapped: `Bundle.view()` returns a zero-copy view of a member's bytes
(the writer aligned them to 4 KiB), which TensorRT can deserialize from directly.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import zipfile
from functools import cached_property
from pathlib import Path
from typing import Any

from engine.bundle import format as fmt
from engine.errors import BundleError
from engine.spec import PreprocessSpec

_LOCAL_SIG = b"PK\x03\x04"
_CENTRAL_SIG = b"PK\x01\x02"
_END_SIG = b"PK\x05\x06"
_LOCAL_FMT = "<4sHHHHHIIIHH"  # signature .. extra length (30 bytes)
_REBUILD = "copy the bundle again or rebuild it with `slicert build`"
MAX_MANIFEST_BYTES = 64 << 20  # generous: the accuracy report with its per-layer tables travels inside


def _local_data_offset(mm: mmap.mmap, header_offset: int, name: str, file_size: int) -> int:
    end = header_offset + struct.calcsize(_LOCAL_FMT)
    if end > file_size:
        raise BundleError(f"member {name!r}: local header lies beyond the end of the file; {_REBUILD}")
    fields = struct.unpack_from(_LOCAL_FMT, mm, header_offset)
    if fields[0] != _LOCAL_SIG:
        raise BundleError(f"member {name!r}: local header is damaged (bad signature); {_REBUILD}")
    return end + fields[9] + fields[10]


def _diagnose_unreadable(mm: mmap.mmap, size: int, path: Path, cause: Exception) -> BundleError:
    """The central directory cannot be read: walk the local headers to say which member broke."""
    off = 0
    last = None
    header = struct.calcsize(_LOCAL_FMT)
    while off + 4 <= size:
        sig = mm[off:off + 4]
        if sig == _LOCAL_SIG:
            if off + header > size:
                break
            fields = struct.unpack_from(_LOCAL_FMT, mm, off)
            n_name, n_extra, comp_size = fields[9], fields[10], fields[7]
            name = bytes(mm[off + header:min(size, off + header + n_name)]).decode("utf-8", "replace")
            data_end = off + header + n_name + n_extra + comp_size
            if data_end > size:
                return BundleError(
                    f"bundle {path} is truncated inside member {name!r}: the file ends at byte {size}, the member "
                    f"needs {data_end}; {_REBUILD}")
            last = name
            off = data_end + (16 if fields[2] & 0x08 else 0)  # data descriptor (never written by SliceRT)
            continue
        if sig in (_CENTRAL_SIG, _END_SIG):
            return BundleError(f"bundle {path} is truncated or damaged in its zip directory, after the last member "
                               f"{last!r} ({cause}); {_REBUILD}")
        break
    if last is None:
        return BundleError(f"{path} is not a SliceRT bundle (not a zip file: {cause})")
    return BundleError(f"bundle {path} is truncated after member {last!r}: the zip directory is missing; {_REBUILD}")


class Bundle:
    """A verified, open bundle. Use as a context manager or call close()."""

    def __init__(self, path: Path, fh, mm: mmap.mmap, zf: zipfile.ZipFile, manifest: dict[str, Any],
                 offsets: dict[str, tuple[int, int]]):
        self.path = path
        self.manifest = manifest
        self._fh, self._mm, self._zf, self._offsets = fh, mm, zf, offsets

    # -- members -------------------------------------------------------------------------------
    @property
    def members(self) -> list[str]:
        return sorted(self._offsets)

    def has(self, name: str) -> bool:
        return name in self._offsets

    def view(self, name: str) -> memoryview:
        """Zero-copy, read-only view of a member's bytes (valid until close())."""
        if self._mm is None:
            raise BundleError(f"bundle {self.path} is closed")
        try:
            start, size = self._offsets[name]
        except KeyError:
            raise BundleError(f"bundle {self.path} has no member {name!r} (members: {self.members})") from None
        return memoryview(self._mm)[start:start + size]

    def read(self, name: str) -> bytes:
        with self.view(name) as v:
            return bytes(v)

    def read_json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name))
        except RecursionError:
            raise BundleError(f"member {name!r} nests JSON too deeply") from None
        except ValueError as exc:
            raise BundleError(f"member {name!r} is not valid JSON: {exc}") from exc

    # -- manifest shortcuts --------------------------------------------------------------------
    @cached_property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.manifest["preprocess"])

    @property
    def task(self) -> str:
        return self.manifest["model"]["task"]

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["model"]["labels"])

    @property
    def variants(self) -> dict[str, dict[str, Any]]:
        return self.manifest["variants"]

    @property
    def engines(self) -> list[dict[str, Any]]:
        return self.manifest["engines"]

    def close(self) -> None:
        if self._mm is not None:
            self._zf.close()
            try:
                self._mm.close()
            except BufferError:  # a caller still holds a view(); the mapping is freed with it
                pass
            self._fh.close()
            self._mm = None

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self.manifest["model"]
        return f"<Bundle {self.path.name}: {m['name']} ({m['task']}), variants {sorted(self.variants)}>"


def _verify(mm: mmap.mmap, zf: zipfile.ZipFile, manifest: dict, size: int, path: Path,
            check_digests: bool) -> dict[str, tuple[int, int]]:
    listed = manifest["members"]
    present = {info.filename: info for info in zf.infolist()}
    for name in present:
        if name != fmt.MANIFEST and name not in listed:
            raise BundleError(f"bundle {path}: member {name!r} is not listed in the manifest (the file was "
                              f"modified after it was written); {_REBUILD}")
    offsets: dict[str, tuple[int, int]] = {}
    for name, entry in listed.items():
        info = present.get(name)
        if info is None:
            raise BundleError(f"bundle {path}: member {name!r} is listed in the manifest but missing from the file; "
                              f"{_REBUILD}")
        if info.compress_type != zipfile.ZIP_STORED:
            raise BundleError(f"bundle {path}: member {name!r} is compressed; SliceRT bundles store members "
                              f"uncompressed (was the file repacked?); {_REBUILD}")
        if info.file_size != entry["size"]:
            raise BundleError(f"bundle {path}: member {name!r} has {info.file_size} bytes, the manifest says "
                              f"{entry['size']}; {_REBUILD}")
        start = _local_data_offset(mm, info.header_offset, name, size)
        if start + info.file_size > size:
            raise BundleError(f"bundle {path} is truncated inside member {name!r}; {_REBUILD}")
        if check_digests:
            digest = hashlib.sha256(memoryview(mm)[start:start + info.file_size]).hexdigest()
            if digest != entry["sha256"]:
                raise BundleError(f"bundle {path}: member {name!r} failed its SHA-256 check (manifest "
                                  f"{entry['sha256'][:16]}..., file {digest[:16]}...): it was modified or corrupted "
                                  f"after the bundle was written; {_REBUILD}")
        offsets[name] = (start, info.file_size)
    return offsets


def open_bundle(path: os.PathLike[str] | str, *, verify: bool = True) -> Bundle:
    """Open a bundle, check its schema version and (by default) every member's SHA-256.

    Raises BundleError naming the member at fault, or saying how to fix a too-new schema.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise BundleError(f"a bundle path must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"no bundle at {path}" + (" (it is a directory)" if path.is_dir() else ""))
    fh = open(path, "rb")
    try:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise BundleError(f"{path} is empty, not a SliceRT bundle")
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except BaseException:
        fh.close()
        raise
    try:
        try:
            zf = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise _diagnose_unreadable(mm, size, path, exc) from None
        try:
            try:
                raw = zf.read(fmt.MANIFEST)  # zipfile checks the CRC-32 of the manifest itself
            except KeyError:
                raise BundleError(f"bundle {path} has no {fmt.MANIFEST}; it is a zip file but not a SliceRT bundle") \
                    from None
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise BundleError(f"bundle {path}: member {fmt.MANIFEST!r} is corrupted ({exc}); {_REBUILD}") from None
            if len(raw) > MAX_MANIFEST_BYTES:
                raise BundleError(f"bundle {path}: {fmt.MANIFEST} is {len(raw)} bytes, more than the "
                                  f"{MAX_MANIFEST_BYTES} a SliceRT manifest can be; {_REBUILD}")
            try:
                manifest = json.loads(raw)
            except RecursionError:
                raise BundleError(f"bundle {path}: member {fmt.MANIFEST!r} nests JSON too deeply to be a SliceRT "
                                  f"manifest; {_REBUILD}") from None
            except ValueError as exc:
                raise BundleError(f"bundle {path}: member {fmt.MANIFEST!r} is not valid JSON ({exc}); {_REBUILD}") \
                    from None
            fmt.validate_manifest(manifest)
            offsets = _verify(mm, zf, manifest, size, path, verify)
        except BaseException:
            zf.close()
            raise
    except BaseException:
        mm.close()
        fh.close()
        raise
    return Bundle(path, fh, mm, zf, manifest, offsets)
