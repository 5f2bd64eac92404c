"""Model identity recorded in every SEG and SR: which model, which version, which exact bundle file
(SHA-256 of its bytes) and which precision variant produced a result.

The bundle digest is computed once per Session, on first use, from the memory map the Session verified
at load (not by re-opening the path, which another process may have replaced since).
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field

from engine.errors import InputError

MANUFACTURER = "SliceRT"


def _slicert_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("slicert")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"


@dataclass
class ModelIdentity:
    """Who produced a Result. `bundle_sha256` is the hex SHA-256 of the whole `.slicert` file."""

    name: str
    task: str
    labels: tuple[str, ...]
    variant: str  # precision variant that ran: fp32 | fp16 | int8 | mixed
    backend: str  # onnxruntime | tensorrt | ...
    bundle_path: str
    model_version: str | None  # the manifest's model.version, when the toolchain recorded one
    created_utc: str | None
    _bundle: object = field(default=None, repr=False, compare=False)
    _sha: str | None = field(default=None, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def of_session(cls, session) -> ModelIdentity:
        m = session.bundle.manifest
        model = m["model"]
        version = model.get("version")
        return cls(name=str(model["name"]), task=session.task, labels=tuple(session.labels), variant=session.variant,
                   backend=str(session.info.get("backend")), bundle_path=str(session.bundle.path),
                   model_version=None if version is None else str(version), created_utc=m.get("created_utc"),
                   _bundle=session.bundle)

    @property
    def bundle_sha256(self) -> str:
        with self._lock:
            if self._sha is None:
                self._sha = self._digest()
            return self._sha

    def _digest(self) -> str:
        mm = getattr(self._bundle, "_mm", None)
        h = hashlib.sha256()
        if mm is not None:
            h.update(memoryview(mm))
        else:  # the Session was closed before the first SEG/SR: hash the file it was loaded from
            try:
                with open(self.bundle_path, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
            except OSError as exc:
                raise InputError(f"cannot hash bundle {self.bundle_path} for the DICOM model identity "
                                 f"(the session was closed and the file is gone: {exc}); create the SEG/SR before "
                                 f"closing the session") from None
        return h.hexdigest()

    @property
    def version(self) -> str:
        """Algorithm Version as recorded in DICOM: the manifest's model version, else the first 16 hex
        digits of the bundle SHA-256 (a content address is an honest version when none was given)."""
        return self.model_version or f"sha256:{self.bundle_sha256[:16]}"

    @property
    def software_version(self) -> str:
        return f"slicert {_slicert_version()}"

    def parameters(self) -> list[str]:
        """Algorithm Parameters (TID 4019): the exact bundle and the variant that ran."""
        return [f"bundle_sha256={self.bundle_sha256}", f"precision={self.variant}", f"backend={self.backend}"]


def derived_uid(seed: str | None, *parts) -> str:
    """A new random UID, or (seed given) a UID derived from seed and parts: the same source, model and
    object always get the same UID, so storing a result twice (a resend, a restart) overwrites or is
    ignored by the archive instead of duplicating it."""
    from pydicom.uid import generate_uid

    if seed is None:
        return generate_uid()
    return generate_uid(entropy_srcs=[seed, *(str(p) for p in parts)])


def identity_of(result) -> ModelIdentity:
    ident = getattr(result, "identity", None)
    if ident is None:
        raise InputError("this Result carries no model identity (it was not produced by Session.run/run_into/"
                         "run_batch/stream); a DICOM SEG/SR must say which model made it")
    return ident
