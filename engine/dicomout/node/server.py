"""The SCP. One thread per association (pynetdicom); one results thread that encodes and stores.

C-STORE handling, in the association's thread, before the response is sent:
  1. the instance is written to the spool (durable, see spool.py); a disk failure answers 0xA700;
  2. the bundle runs on the spooled file (every frame of a multi-frame image); an image the engine
     refuses (engine.errors: unreadable, unsupported, too small, NaN output ...) is removed from the
     spool and answered 0xC000 "Cannot understand" with the reason in Error Comment, and logged;
  3. success (0x0000) is answered and the results are queued for the results thread.
Results thread: SEG (segmenters) + TID 1500 SR built with UIDs derived from (bundle SHA-256, source
SOP Instance UID), C-STOREd to the configured destination over one association; only when every
object was acknowledged is the spooled instance removed. An unreachable destination is retried with
a growing delay (up to NodeConfig.retry_max_s); results stay in the spool meanwhile. At start, every
pending spooled instance is run again and its results stored (resume after a crash or kill); derived
UIDs make a resend of already-stored results a no-op for the archive, never a duplicate.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from engine.dicomout.node.config import IMAGE_STORAGE, VERIFICATION, NodeConfig, decodable_transfer_syntaxes
from engine.dicomout.node.forward import Forwarder, ForwardError
from engine.dicomout.node.spool import Spool, SpoolEntry
from engine.errors import SliceRTError

_log = logging.getLogger("slicert.node")
_CANNOT_UNDERSTAND = 0xC000
_OUT_OF_RESOURCES = 0xA700


@dataclass
class _Job:
    entry: SpoolEntry
    results: list
    infer_ms: float
    attempts: int = 0


@dataclass
class _AssocStats:
    ident: int
    peer: str
    stored: int = 0
    refused: int = 0
    started: float = field(default_factory=time.perf_counter)


class DicomNode:
    """A running node. `start()` returns once it listens; `stop()` shuts it down (spool kept)."""

    def __init__(self, config: NodeConfig, *, session=None):
        import engine

        self.config = config
        self.session = session if session is not None else engine.load(config.bundle, threads=config.threads,
                                                                    eligibility=config.eligibility)
        self._own_session = session is None
        self.spool = Spool(config.spool)
        self.syntaxes = decodable_transfer_syntaxes()
        self._forwarder = Forwarder(config.ae_title, config.timeout_s, config.max_pdu)
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._stop = threading.Event()
        self._assocs: dict[int, _AssocStats] = {}
        self._assoc_lock = threading.Lock()
        self._next_assoc = 0
        self._server = None
        self._thread: threading.Thread | None = None
        self.metrics: list[dict[str, Any]] = []  # one entry per stored instance (benchmarks read it)
        self.stored_uids: list[str] = []  # SOP Instance UIDs of every result object stored, in order

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        from pynetdicom import AE, evt

        ident = self.session.identity
        dropped = self.spool.discard_partial()
        resumed = self._resume()
        _log.info("node %s: bundle %s (model %s, %s on %s, sha256 %s); results to %s; spool %s "
                  "(%d resumed, %d partial writes dropped); transfer syntaxes accepted: %s",
                  self.config.ae_title, self.config.bundle, ident.name, ident.variant, ident.backend,
                  ident.bundle_sha256, self.config.forward or {k: str(v) for k, v in self.config.reply_to.items()},
                  self.config.spool, resumed, dropped, ", ".join(self.syntaxes))
        ae = AE(ae_title=self.config.ae_title)
        ae.require_called_aet = True
        callers = list(self.config.allowed_callers) or ([] if self.config.forward else list(self.config.reply_to))
        ae.require_calling_aet = callers
        for uid in IMAGE_STORAGE:
            ae.add_supported_context(uid, self.syntaxes)
        ae.add_supported_context(VERIFICATION, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.config.timeout_s
        ae.maximum_pdu_size = self.config.max_pdu
        ae.maximum_associations = 64
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_ACCEPTED, self._on_accepted), (evt.EVT_REJECTED, self._on_rejected),
                    (evt.EVT_RELEASED, self._on_closed), (evt.EVT_ABORTED, self._on_closed)]
        self._thread = threading.Thread(target=self._results_loop, name="slicert-node-results", daemon=True)
        self._thread.start()
        self._server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)
        self.port = self._server.server_address[1]
        _log.info("node %s listening on %s:%d", self.config.ae_title, self.config.host, self.port)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._stop.set()
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._own_session:
            self.session.close()
        _log.info("node %s stopped; %d instance(s) left in the spool", self.config.ae_title,
                  len(self.spool.pending()))

    def wait_idle(self, timeout_s: float) -> bool:
        """True once every queued result was stored (tests and benchmarks)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._jobs.unfinished_tasks == 0:
                return True
            time.sleep(0.02)
        return False

    # -- engine ---------------------------------------------------------------------------------
    def _analyse(self, path) -> tuple[list, float]:
        from engine import dicom

        t0 = time.perf_counter()
        img = dicom.read(path)
        results = [self.session.run(img)] if hasattr(img, "pixels") else [self.session.run(f) for f in img]
        return results, (time.perf_counter() - t0) * 1e3

    def _resume(self) -> int:
        n = 0
        for entry in self.spool.pending():
            try:
                results, ms = self._analyse(entry.path)
            except SliceRTError as exc:  # acknowledged earlier, refused now (a different bundle?): keep it
                dst = self.spool.quarantine(entry, f"{type(exc).__name__}: {exc}")
                _log.error("resume: %s refused by the engine, moved to %s: %s", entry.sop_instance_uid, dst, exc)
                continue
            self._jobs.put(_Job(entry, results, ms))
            n += 1
        return n

    # -- association events ---------------------------------------------------------------------
    def _stats(self, assoc) -> _AssocStats:
        with self._assoc_lock:
            st = self._assocs.get(id(assoc))
            if st is None:
                self._next_assoc += 1
                req = assoc.requestor
                st = _AssocStats(self._next_assoc, f"{req.ae_title}@{req.address}:{req.port}")
                self._assocs[id(assoc)] = st
            return st

    def _on_accepted(self, event) -> None:
        st = self._stats(event.assoc)
        accepted = [c for c in event.assoc.accepted_contexts]
        rejected = event.assoc.rejected_contexts
        _log.info("assoc %d: accepted %s -> %s; %d context(s) accepted, %d rejected%s", st.ident, st.peer,
                  self.config.ae_title, len(accepted), len(rejected),
                  "" if not rejected else " (" + "; ".join(
                      f"{c.abstract_syntax.name} in {[str(t) for t in c.transfer_syntax]}: no transfer syntax the "
                      f"engine decodes" if c.result == 0x04 else f"{c.abstract_syntax.name}: not an image class"
                      for c in rejected[:8]) + ")")

    def _on_rejected(self, event) -> None:
        req = event.assoc.requestor
        ok, why = self.config.accepts_caller(req.ae_title)
        _log.warning("association from %s@%s:%s rejected%s", req.ae_title, req.address, req.port,
                     f": {why}" if not ok else " (called AE title is not "
                     f"{self.config.ae_title!r}, or no acceptable context)")

    def _on_closed(self, event) -> None:
        with self._assoc_lock:
            st = self._assocs.pop(id(event.assoc), None)
        if st is not None:
            how = "released" if event.event.name == "EVT_RELEASED" else "aborted"
            _log.info("assoc %d: %s after %.1f s; %d stored, %d refused", st.ident, how,
                      time.perf_counter() - st.started, st.stored, st.refused)

    def _on_echo(self, event) -> int:
        _log.info("assoc %d: C-ECHO", self._stats(event.assoc).ident)
        return 0x0000

    def _failure(self, code: int, comment: str):
        from pydicom import Dataset

        status = Dataset()
        status.Status = code
        status.ErrorComment = comment[:64]
        return status

    def _on_store(self, event):
        st = self._stats(event.assoc)
        try:
            uid = str(event.request.AffectedSOPInstanceUID)
            entry = self.spool.write(event.encoded_dataset(), event.assoc.requestor.ae_title, uid)
        except (OSError, SliceRTError) as exc:
            st.refused += 1
            _log.error("assoc %d: cannot spool instance: %s", st.ident, exc)
            return self._failure(_OUT_OF_RESOURCES if isinstance(exc, OSError) else _CANNOT_UNDERSTAND, str(exc))
        try:
            results, ms = self._analyse(entry.path)
        except SliceRTError as exc:
            self.spool.remove(entry)
            st.refused += 1
            _log.warning("assoc %d: refused %s (%s): %s: %s", st.ident, uid, event.context.abstract_syntax.name,
                         type(exc).__name__, exc)
            return self._failure(_CANNOT_UNDERSTAND, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug, not the sender's fault: say so, keep the instance, keep serving
            st.refused += 1
            _log.exception("assoc %d: internal error on %s (kept in the spool as %s)", st.ident, uid, entry.path)
            return self._failure(0xC001, f"internal error: {type(exc).__name__}")
        flags = sorted({f for r in results if getattr(r, "flagged", False) for f in r.flags})
        if flags:  # the SR carries the flags as coded Yes/No; the reasons in words are here
            _log.warning("assoc %d: %s flagged: %s", st.ident, uid, "; ".join(flags))
        self._jobs.put(_Job(entry, results, ms))
        st.stored += 1
        _log.info("assoc %d: received %s (%s, %d frame(s)), inference %.1f ms", st.ident, uid,
                  event.context.abstract_syntax.name, len(results), ms)
        return 0x0000

    # -- results --------------------------------------------------------------------------------
    def _encode(self, job: _Job) -> list:
        from engine.dicomout.identity import derived_uid
        from engine.dicomout.seg import build_segs
        from engine.dicomout.source import source_dataset
        from engine.dicomout.sr import build_sr

        src = source_dataset(job.entry.path)
        sha = self.session.identity.bundle_sha256
        seed = f"{sha}:{src.SOPInstanceUID}"
        segs = []
        if self.session.task == "segmentation":
            segs = build_segs(job.results, src, uid_seed=seed,
                              series_instance_uid=derived_uid(f"{sha}:{src.SeriesInstanceUID}", "seg-series"))
        sr = build_sr(job.results, src, segs=segs, uid_seed=seed,
                      series_instance_uid=derived_uid(f"{sha}:{src.SeriesInstanceUID}", "sr-series"))
        return [*segs, sr]

    def _results_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                self._jobs.task_done()
                return
            try:
                self._store(job)
            finally:
                self._jobs.task_done()

    def _store(self, job: _Job) -> None:
        entry = job.entry
        dest = self.config.destination_for(entry.calling_ae)
        if dest is None:
            _log.error("no destination configured for results of %s from %r: kept in the spool", entry.sop_instance_uid,
                       entry.calling_ae)
            return
        t0 = time.perf_counter()
        try:
            objects = self._encode(job)
        except SliceRTError as exc:
            dst = self.spool.quarantine(entry, f"encoding failed: {type(exc).__name__}: {exc}")
            _log.error("results of %s could not be encoded, instance moved to %s: %s", entry.sop_instance_uid, dst, exc)
            return
        encode_ms = (time.perf_counter() - t0) * 1e3
        delay = 0.5
        while True:
            job.attempts += 1
            try:
                t1 = time.perf_counter()
                self._forwarder.send(dest, objects)
                send_ms = (time.perf_counter() - t1) * 1e3
                break
            except ForwardError as exc:
                _log.warning("results of %s not stored at %s (attempt %d): %s; retrying in %.1f s",
                             entry.sop_instance_uid, dest, job.attempts, exc, delay)
                if self._stop.wait(delay):
                    _log.warning("stopping: results of %s stay in the spool", entry.sop_instance_uid)
                    return
                delay = min(delay * 2, self.config.retry_max_s)
        self.spool.remove(entry)
        latency_ms = (time.time_ns() - entry.received_ns) * 1e-6
        names = ", ".join(f"{o.Modality} {o.SOPInstanceUID}" for o in objects)
        _log.info("stored results of %s at %s: %s; encode %.1f ms, send %.1f ms, receive->stored %.1f ms",
                  entry.sop_instance_uid, dest, names, encode_ms, send_ms, latency_ms)
        self.stored_uids.extend(str(o.SOPInstanceUID) for o in objects)
        self.metrics.append({"sop_instance_uid": entry.sop_instance_uid, "infer_ms": job.infer_ms,
                             "encode_ms": encode_ms, "send_ms": send_ms, "latency_ms": latency_ms,
                             "objects": len(objects), "attempts": job.attempts})


def serve_forever(config: NodeConfig) -> None:
    """Run a node until SIGINT/SIGTERM."""
    import signal

    node = DicomNode(config)
    done = threading.Event()

    def _stop(signum, _frame):
        _log.info("signal %d: shutting down", signum)
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    node.start()
    try:
        done.wait()
    finally:
        node.stop()
