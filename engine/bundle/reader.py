"""Open and verify a `.slicert` bundle.

Every member's SHA-256 is checked against the manifest before anything is used; a mismatch, a
missing, unexpected or duplicated member, a compressed member or a truncated file raises BundleError
naming the member.

Members are read with pread() from the open file, not served from a memory mapping: a mapped file
that shrinks afterwards (another process truncating or rewriting it) kills the reader with SIGBUS on
the next touch of a lost page, which no Python code can catch. A read that comes back short is a
BundleError instead. When the file's size, mtime or ctime (which no user can set back) changed
since open_bundle, `read()` hashes the bytes it returns again (verify=True), so what a runtime gets is
exactly what the manifest's digest covers even if the file was rewritten in place after the check;
an unchanged file costs one fstat per read. The ONNX members are read once at open: the bytes that are
hashed are the bytes onnx_guard checks.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
import zlib
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
_CHUNK = 1 << 20
MAX_MANIFEST_BYTES = 64 << 20  # generous: the accuracy report with its per-layer tables travels inside
MAX_SIGNATURE_BYTES = 64 << 10
# A deflated JSON manifest compresses 5-20x; a ratio beyond this is a decompression bomb, refused from
# the zip header before a byte is inflated (the inflation itself is capped too: the header can lie).
MAX_INFLATE_RATIO = 200


class _File:
    """pread() access to the bundle file: a short read raises, it never faults (unlike an mmap)."""

    def __init__(self, fh, path: Path):
        self.fh, self.path, self.fd = fh, path, fh.fileno()

    def read(self, offset: int, size: int, what: str) -> bytes:
        try:
            data = os.pread(self.fd, size, offset)
            while len(data) < size:  # pread may return less than asked on some filesystems
                more = os.pread(self.fd, size - len(data), offset + len(data))
                if not more:
                    break
                data += more
        except OSError as exc:
            raise BundleError(f"bundle {self.path}: cannot read {what}: {exc.strerror or exc}") from exc
        if len(data) != size:
            raise BundleError(f"bundle {self.path} is truncated inside {what}: the file ends before byte "
                              f"{offset + size} (was it cut or rewritten after it was opened?); {_REBUILD}")
        return data

    def sha256(self, offset: int, size: int, what: str) -> str:
        h = hashlib.sha256()
        for start in range(offset, offset + size, _CHUNK):
            h.update(self.read(start, min(_CHUNK, offset + size - start), what))
        return h.hexdigest()


def _stat_key(fh) -> tuple[int, int, int]:
    st = os.fstat(fh.fileno())
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object_pairs_hook: a key given twice is refused (two tools would read two different values)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BundleError(f"duplicate JSON key {key!r}: different readers would see different values")
        out[key] = value
    return out


def parse_json(raw: bytes, what: str) -> Any:
    """Strict JSON for bundle members: UTF-8, no duplicate keys, bounded nesting. Raises BundleError."""
    try:
        return json.loads(raw, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise BundleError(f"{what} nests JSON too deeply; {_REBUILD}") from None
    except BundleError as exc:
        raise BundleError(f"{what}: {exc}; {_REBUILD}") from None
    except ValueError as exc:
        raise BundleError(f"{what} is not valid JSON ({exc}); {_REBUILD}") from None


def _local_data_offset(f: _File, header_offset: int, name: str, file_size: int) -> int:
    end = header_offset + struct.calcsize(_LOCAL_FMT)
    if end > file_size:
        raise BundleError(f"member {name!r}: local header lies beyond the end of the file; {_REBUILD}")
    fields = struct.unpack(_LOCAL_FMT, f.read(header_offset, end - header_offset, f"the local header of {name!r}"))
    if fields[0] != _LOCAL_SIG:
        raise BundleError(f"member {name!r}: local header is damaged (bad signature); {_REBUILD}")
    return end + fields[9] + fields[10]


def _diagnose_unreadable(f: _File, size: int, path: Path, cause: Exception) -> BundleError:
    """The central directory cannot be read: walk the local headers to say which member broke."""
    off = 0
    last = None
    header = struct.calcsize(_LOCAL_FMT)
    try:
        while off + 4 <= size:
            sig = f.read(off, 4, "a zip header")
            if sig == _LOCAL_SIG:
                if off + header > size:
                    break
                fields = struct.unpack(_LOCAL_FMT, f.read(off, header, "a local header"))
                n_name, n_extra, comp_size = fields[9], fields[10], fields[7]
                name = f.read(off + header, min(n_name, size - off - header), "a member name").decode("utf-8", "replace")
                data_end = off + header + n_name + n_extra + comp_size
                if data_end > size:
                    return BundleError(
                        f"bundle {path} is truncated inside member {name!r}: the file ends at byte {size}, the "
                        f"member needs {data_end}; {_REBUILD}")
                last = name
                off = data_end + (16 if fields[2] & 0x08 else 0)  # data descriptor (never written by SliceRT)
                continue
            if sig in (_CENTRAL_SIG, _END_SIG):
                return BundleError(f"bundle {path} is truncated or damaged in its zip directory, after the last "
                                   f"member {last!r} ({cause}); {_REBUILD}")
            break
    except BundleError as exc:  # the file shrank while we walked it
        return exc
    if last is None:
        return BundleError(f"{path} is not a SliceRT bundle (not a zip file: {cause})")
    return BundleError(f"bundle {path} is truncated after member {last!r}: the zip directory is missing; {_REBUILD}")


class Bundle:
    """A verified, open bundle. Use as a context manager or call close()."""

    def __init__(self, path: Path, fh, manifest: dict[str, Any], offsets: dict[str, tuple[int, int]], *,
                 manifest_bytes: bytes = b"", verified: bool = True, signature: Any = None):
        self.path = path
        self.manifest = manifest
        self.manifest_bytes = manifest_bytes  # exactly what a signature covers
        self.signature = signature  # engine.bundle.signing.SignatureStatus
        self._fh, self._offsets, self._verified = fh, offsets, verified
        self._file = _File(fh, path)
        self._stat = _stat_key(fh)

    # -- members -------------------------------------------------------------------------------
    @property
    def members(self) -> list[str]:
        return sorted(self._offsets)

    def has(self, name: str) -> bool:
        return name in self._offsets

    def read(self, name: str) -> bytes:
        """A member's bytes, read from the file now and (verify=True) checked against its SHA-256 again."""
        if self._fh is None:
            raise BundleError(f"bundle {self.path} is closed")
        try:
            start, size = self._offsets[name]
        except KeyError:
            raise BundleError(f"bundle {self.path} has no member {name!r} (members: {self.members})") from None
        data = self._file.read(start, size, f"member {name!r}")
        if self._verified and _stat_key(self._fh) != self._stat and \
                hashlib.sha256(data).hexdigest() != self.manifest["members"][name]["sha256"]:
            raise BundleError(f"bundle {self.path}: member {name!r} changed on disk after the bundle was opened "
                              f"(its SHA-256 no longer matches the manifest); {_REBUILD}")
        return data

    def view(self, name: str) -> memoryview:
        """Read-only view of a member's bytes (a verified copy: see the module docstring)."""
        return memoryview(self.read(name))

    def read_json(self, name: str) -> Any:
        return parse_json(self.read(name), f"member {name!r}")

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
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self.manifest["model"]
        return f"<Bundle {self.path.name}: {m['name']} ({m['task']}), variants {sorted(self.variants)}>"


def _check_names(zf: zipfile.ZipFile, path: Path) -> dict[str, zipfile.ZipInfo]:
    """{name: info}; a name present twice is refused: zip tools disagree on which copy they read."""
    present: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        if info.filename in present:
            raise BundleError(f"bundle {path}: member {info.filename!r} appears twice in the zip (different tools "
                              f"would read different copies); {_REBUILD}")
        present[info.filename] = info
    return present


def _read_small(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, path: Path) -> bytes:
    """A small member (manifest, signature), inflated with a cap: the header's sizes are checked first,
    and at most limit + 1 bytes are ever produced, whatever the header claims."""
    name = info.filename
    if info.file_size > limit:
        raise BundleError(f"bundle {path}: {name} is {info.file_size} bytes, more than the {limit} a SliceRT "
                          f"{name} can be; {_REBUILD}")
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_INFLATE_RATIO * max(info.compress_size, 1):
        raise BundleError(f"bundle {path}: {name} inflates {info.compress_size} bytes to {info.file_size} (more than "
                          f"{MAX_INFLATE_RATIO}x: a decompression bomb); {_REBUILD}")
    try:
        with zf.open(info) as fh:
            raw = fh.read(limit + 1)  # zipfile checks the CRC-32 when the member is read to its end
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, ValueError, RuntimeError, zlib.error) as exc:
        raise BundleError(f"bundle {path}: member {name!r} is corrupted ({exc}); {_REBUILD}") from None
    if len(raw) > limit:
        raise BundleError(f"bundle {path}: {name} inflates to more than {limit} bytes; {_REBUILD}")
    return raw


def _verify(f: _File, present: dict[str, zipfile.ZipInfo], manifest: dict, size: int, path: Path,
            check_digests: bool, keep: set[str], kept: dict[str, bytes]) -> dict[str, tuple[int, int]]:
    """Offsets of every listed member, its digest checked; the bytes of members in `keep` go to `kept`."""
    from engine.bundle.signing import SIGNATURE

    listed = manifest["members"]
    for name in present:
        if name not in (fmt.MANIFEST, SIGNATURE) and name not in listed:
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
        start = _local_data_offset(f, info.header_offset, name, size)
        if start + info.file_size > size:
            raise BundleError(f"bundle {path} is truncated inside member {name!r}; {_REBUILD}")
        if name in keep:
            kept[name] = f.read(start, info.file_size, f"member {name!r}")
        if check_digests:
            digest = (hashlib.sha256(kept[name]).hexdigest() if name in kept
                      else f.sha256(start, info.file_size, f"member {name!r}"))
            if digest != entry["sha256"]:
                raise BundleError(f"bundle {path}: member {name!r} failed its SHA-256 check (manifest "
                                  f"{entry['sha256'][:16]}..., file {digest[:16]}...): it was modified or corrupted "
                                  f"after the bundle was written; {_REBUILD}")
        offsets[name] = (start, info.file_size)
    return offsets


def open_bundle(path: os.PathLike[str] | str, *, verify: bool = True, trusted_keys: Any = None) -> Bundle:
    """Open a bundle, check its schema version, (by default) every member's SHA-256, that no ONNX
    member refers to data outside the bundle, and its signature.

    trusted_keys: None, or Ed25519 public keys (PEM file paths, PEM bytes or key objects): the bundle
    must then carry a valid signature by one of them (engine.errors.SignatureError otherwise). The
    outcome is `Bundle.signature` (signer fingerprint, verified or why not).
    Raises BundleError naming the member at fault, or saying how to fix a too-new schema.
    """
    from engine.bundle import onnx_guard, signing

    if not isinstance(path, (str, os.PathLike)):
        raise BundleError(f"a bundle path must be a str or os.PathLike, got {type(path).__name__}")
    if "\0" in os.fspath(path):
        raise BundleError(f"bundle path {os.fspath(path)!r} contains a NUL byte; no file can have that name")
    keys = signing.load_public_keys(trusted_keys)  # bad key arguments fail before any file is touched
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"no bundle at {path}" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        fh = open(path, "rb")  # noqa: SIM115 - held by the Bundle until close()
    except OSError as exc:
        raise BundleError(f"cannot open bundle {path}: {exc.strerror or exc}") from exc
    try:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise BundleError(f"{path} is empty, not a SliceRT bundle")
        f = _File(fh, path)
        try:
            zf = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise _diagnose_unreadable(f, size, path, exc) from None
        with zf:
            present = _check_names(zf, path)
            info = present.get(fmt.MANIFEST)
            if info is None:
                raise BundleError(f"bundle {path} has no {fmt.MANIFEST}; it is a zip file but not a SliceRT bundle")
            raw = _read_small(zf, info, MAX_MANIFEST_BYTES, path)
            sig_info = present.get(signing.SIGNATURE)
            sig_raw = None if sig_info is None else _read_small(zf, sig_info, MAX_SIGNATURE_BYTES, path)
        manifest = parse_json(raw, f"bundle {path}: member {fmt.MANIFEST!r}")
        fmt.validate_manifest(manifest)
        kept: dict[str, bytes] = {}
        onnx_names = onnx_guard.onnx_members(manifest)
        offsets = _verify(f, present, manifest, size, path, verify, onnx_names, kept)
        signature = signing.check(raw, sig_raw, keys, path)
        bundle = Bundle(path, fh, manifest, offsets, manifest_bytes=raw, verified=verify, signature=signature)
        onnx_guard.check_bundle(bundle, kept)  # the very bytes whose digests were checked
    except BaseException:
        fh.close()
        raise
    return bundle
