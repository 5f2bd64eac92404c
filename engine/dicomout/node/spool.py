"""Received instances on disk until their results are stored.

Write path (before the C-STORE is acknowledged): the bytes as received go to incoming/<random>.part,
are flushed and fsync'ed, then renamed into pending/ (os.replace: atomic on POSIX) and the directory
is fsync'ed, so after a crash a pending file is either complete or absent. A .part left in incoming/
was never acknowledged (the sender saw no success and sends again): it is deleted at start.

Names keep arrival order and routing across a restart: <receive time ns, 20 digits>-<calling AE as
hex>-<SOP Instance UID>.dcm. `remove` runs only after the destination acknowledged every result.
Files the engine refuses on resume go to failed/ with a .txt saying why (never silently dropped).
"""
from __future__ import annotations

import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from engine.errors import InputError

_UID_RE = re.compile(r"^[0-9.]{1,64}$")
_NAME_RE = re.compile(r"^(?P<ns>\d{20})-(?P<ae>[0-9a-f]{0,32})-(?P<uid>[0-9.]{1,64})\.dcm$")


@dataclass(frozen=True)
class SpoolEntry:
    path: Path
    received_ns: int  # time.time_ns() at receipt
    calling_ae: str
    sop_instance_uid: str


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.incoming = self.root / "incoming"
        self.pending_dir = self.root / "pending"
        self.failed = self.root / "failed"
        for d in (self.incoming, self.pending_dir, self.failed):
            d.mkdir(parents=True, exist_ok=True)

    def discard_partial(self) -> int:
        """Delete never-acknowledged partial writes (start-up). Returns how many."""
        n = 0
        for p in self.incoming.glob("*.part"):
            p.unlink(missing_ok=True)
            n += 1
        return n

    def write(self, data: bytes, calling_ae: str, sop_instance_uid: str) -> SpoolEntry:
        """Store one received instance durably; returns its entry. Raises OSError when the disk fails."""
        uid = str(sop_instance_uid)
        if not _UID_RE.match(uid):
            raise InputError(f"SOP Instance UID {uid[:80]!r} is not a DICOM UID (digits and dots, <= 64 chars)")
        ns = time.time_ns()
        name = f"{ns:020d}-{calling_ae.strip().encode('ascii', 'replace').hex()}-{uid}.dcm"
        tmp = self.incoming / f"{uuid.uuid4().hex}.part"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        final = self.pending_dir / name
        os.replace(tmp, final)
        _fsync_dir(self.pending_dir)
        return SpoolEntry(final, ns, calling_ae.strip(), uid)

    def pending(self) -> list[SpoolEntry]:
        """Acknowledged instances whose results are not stored yet, oldest first."""
        out = []
        for p in sorted(self.pending_dir.glob("*.dcm")):
            m = _NAME_RE.match(p.name)
            if m is None:  # not ours: leave it alone, but do not process it either
                continue
            out.append(SpoolEntry(p, int(m["ns"]), bytes.fromhex(m["ae"]).decode("ascii", "replace"), m["uid"]))
        return out

    def remove(self, entry: SpoolEntry) -> None:
        entry.path.unlink(missing_ok=True)
        _fsync_dir(self.pending_dir)

    def quarantine(self, entry: SpoolEntry, reason: str) -> Path:
        dst = self.failed / entry.path.name
        os.replace(entry.path, dst)
        dst.with_suffix(".txt").write_text(reason + "\n")
        _fsync_dir(self.pending_dir)
        return dst
