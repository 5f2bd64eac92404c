"""The isolated worker: serves frames from a shared-memory ring (engine/worker/layout.py) with one Session.

Frames are read in place (a NumPy view of the slot goes straight into `Session.run_into`) and results are
written in place (the Result's `scores` / `mask` arrays are views of the slot's result area), so nothing
is copied between the firmware's slot and the model input except by the fused preprocessing pass itself.

Scheduling: lanes are served round-robin, one frame per lane per round. A still lane (MODE_STILL) runs
its pending frames in submission order; a cine lane (MODE_CINE) runs only its newest pending frame and
marks the older ones STATUS_DROPPED (latest frame wins; counted in the lane and in the next result).

Every descriptor field is checked before it is used: a bad one fails that frame with STATUS_REJECTED
and a message naming the field; the worker carries on.
"""

from __future__ import annotations

import os
import struct
import sys
import time

import numpy as np

from engine.errors import SharedMemoryError, SliceRTError
from engine.worker import layout as L
from engine.worker.futex import Futex

_now_ns = time.monotonic_ns  # CLOCK_MONOTONIC, the clock the C client reads
_REQ = struct.Struct("<IIIIddQQ")  # dtype .. submit_ns, at S_DTYPE
_META = struct.Struct("<iIiIIIIIQQ")  # status .. done_ns, at S_STATUS
_TIMINGS = struct.Struct(f"<{L.N_TIMINGS}d")
_BUSY = struct.Struct("<IIQQ")  # busy_lane, task, busy_seq, busy_since_ns at H_BUSY_LANE
_LANE_DONE = struct.Struct("<IIQQQ")  # done_word, pad, completed, worker_dropped, rejected
_IDLE = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_IDLE_WAIT_S = 0.02  # heartbeat period while idle; also bounds how long a stop request waits


class Worker:
    """Serve `session` on `segment`. Call `start()` once, then `serve(should_stop)`."""

    def __init__(self, session, segment: L.Segment, *, log=None):
        self.session = session
        self.seg = segment
        self.g = segment.geometry
        self.futex = Futex()
        self.log = log or (lambda msg: print(f"slicert worker: {msg}", file=sys.stderr, flush=True))
        self.task = L.TASK_CLASSIFICATION if session.task == "classification" else L.TASK_SEGMENTATION
        self.labels = list(session.labels)
        if len(self.labels) > L.MAX_CLASSES:
            raise SharedMemoryError(
                f"the model has {len(self.labels)} classes; layout version {L.LAYOUT_VERSION} "
                f"carries at most {L.MAX_CLASSES}"
            )
        self.label_index = {lab: i for i, lab in enumerate(self.labels)}
        self.spec_rgb = session.spec.replace(in_channels=3)
        mm = segment.mm
        g = self.g
        self.base = np.frombuffer(mm, dtype=np.uint8)
        self.base_addr = self.base.ctypes.data
        self.hdr32 = self.base[: L.HEADER_SIZE].view("<u4")
        self.hdr64 = self.base[: L.HEADER_SIZE].view("<u8")
        first = L.HEADER_SIZE + L.LANE_HEADER_SIZE
        shape, strides = (g.lane_count, g.slots_per_lane), (g.lane_size, g.slot_size)
        self.req = np.ndarray(shape, "<u8", buffer=mm, offset=first + L.S_REQ_SEQ, strides=strides)
        self.done = np.ndarray(shape, "<u8", buffer=mm, offset=first + L.S_DONE_SEQ, strides=strides)
        self.lane32 = [
            self.base[segment.lane_offset(i) : segment.lane_offset(i) + L.LANE_HEADER_SIZE].view("<u4")
            for i in range(g.lane_count)
        ]
        # Offsets computed once: the hot path does no geometry arithmetic.
        self.slot_off = [
            [segment.slot_offset(i, j) for j in range(g.slots_per_lane)] for i in range(g.lane_count)
        ]
        self.done_word_addr = [
            self.base_addr + segment.lane_offset(i) + L.L_DONE_WORD for i in range(g.lane_count)
        ]
        # Worker-owned lane words, kept in Python and written whole (they continue across restarts).
        self.done_words = [int(v[L.L_DONE_WORD // 4]) for v in self.lane32]
        self.lane_counts = [
            [int(v.view("<u8")[k // 8]) for k in (L.L_COMPLETED, L.L_WORKER_DROPPED, L.L_REJECTED)]
            for v in self.lane32
        ]
        self.done_list = self.done.tolist()  # the worker's copy of the words only it writes
        self.epoch = 0
        self._views: dict[tuple, np.ndarray] = {}
        self._results: dict[tuple, object] = {}
        self._dropped_carry = [0] * g.lane_count
        self._next_lane = 0
        self.frames = 0

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Take over the segment: new epoch, fail frames a previous worker left pending, publish READY."""
        h32, h64 = self.hdr32, self.hdr64
        old_pid = int(h32[L.H_WORKER_PID // 4])
        if (
            int(h32[L.H_WORKER_STATE // 4]) == L.STATE_READY
            and old_pid != os.getpid()
            and L.pid_alive(old_pid)
        ):
            raise SharedMemoryError(
                f"shared-memory segment {self.seg.name!r} is already served by worker pid {old_pid}"
            )
        self.epoch = (int(h32[L.H_WORKER_EPOCH // 4]) + 1) & 0xFFFFFFFF
        h32[L.H_WORKER_STATE // 4] = L.STATE_DOWN
        h32[L.H_WORKER_EPOCH // 4] = self.epoch
        h32[L.H_WORKER_PID // 4] = os.getpid()
        mm = self.seg.mm
        struct.pack_into("<I", mm, L.H_TASK, self.task)
        struct.pack_into("<I", mm, L.H_NUM_CLASSES, len(self.labels))
        mm[L.H_BUNDLE_NAME : L.H_BUNDLE_NAME + 64] = _cstr(self.session.bundle.path.name, 64)
        for i in range(L.MAX_CLASSES):
            off = L.H_LABELS + i * L.LABEL_BYTES
            mm[off : off + L.LABEL_BYTES] = _cstr(
                self.labels[i] if i < len(self.labels) else "", L.LABEL_BYTES
            )
        stale = 0
        for lane, slot in zip(*np.nonzero(self.req != self.done)):
            self._finish(
                int(lane),
                int(slot),
                int(self.req[lane, slot]),
                L.STATUS_RESTARTED,
                f"the worker restarted (epoch {self.epoch}) before this frame finished",
                _now_ns(),
            )
            stale += 1
        if stale:
            self.log(f"epoch {self.epoch}: failed {stale} frame(s) left pending by the previous worker")
        h32[L.H_BUSY_LANE // 4] = L.NONE_U32
        h64[L.H_HEARTBEAT_NS // 8] = _now_ns()
        h32[L.H_WORKER_STATE // 4] = L.STATE_READY  # last: clients submit only after this

    def stop(self) -> None:
        self.hdr32[L.H_WORKER_STATE // 4] = L.STATE_DOWN
        for lane in range(self.g.lane_count):
            self.futex.wake(self.done_word_addr[lane])

    def close(self) -> None:
        self._views.clear()
        self._results.clear()
        del self.req, self.done, self.lane32, self.hdr32, self.hdr64, self.base

    # -- the loop ----------------------------------------------------------------------------------------
    def serve(self, should_stop, max_frames: int | None = None, spin_us: float = 0.0) -> None:
        """Serve until should_stop(). spin_us: after a frame, poll this long before sleeping on the
        doorbell (a back-to-back frame then skips the futex wake-up, ~10-50 us on a loaded machine)."""
        h32, h64 = self.hdr32, self.hdr64
        spin_ns = int(spin_us * 1e3)
        last_work = 0
        i_db, i_wait, i_hb = L.H_DOORBELL // 4, L.H_WORKER_WAITING // 4, L.H_HEARTBEAT_NS // 8
        db_addr = self.base_addr + L.H_DOORBELL
        req, done = self.req, self.done_list
        lanes = self.g.lane_count
        while not should_stop():
            db = int(h32[i_db])  # before the scan: a publish after this changes the word the futex compares
            h64[i_hb] = _now_ns()
            # req_seq of every slot as Python ints (aligned 8-byte loads), against the worker's own copy of
            # done_seq: two list compares when idle, a few microseconds cheaper than NumPy on 2 x 4 words.
            reqs = req.tolist()
            if reqs != done:
                start = self._next_lane
                self._next_lane = (start + 1) % lanes
                for k in range(lanes):
                    lane = (start + k) % lanes
                    r, d = reqs[lane], done[lane]
                    if r != d:
                        self._serve_lane(lane, [(j, v) for j, (v, dv) in enumerate(zip(r, d)) if v != dv])
                if max_frames is not None and self.frames >= max_frames:
                    return
                last_work = _now_ns()
                continue
            if spin_ns and _now_ns() - last_work < spin_ns:
                continue
            h32[i_wait] = 1
            self.futex.wait(db_addr, db, _IDLE_WAIT_S)
            h32[i_wait] = 0

    def _serve_lane(self, lane: int, pending: list[tuple[int, int]]) -> None:
        """pending: (slot, req_seq) of this lane's slots whose req_seq != done_seq."""
        if len(pending) == 1:
            self._run_slot(lane, *pending[0])
            return
        slots = [p[0] for p in pending]
        seqs = [p[1] for p in pending]
        cine = int(self.lane32[lane][L.L_MODE // 4]) == L.MODE_CINE
        pick = (
            max(range(len(seqs)), key=seqs.__getitem__)
            if cine
            else min(range(len(seqs)), key=seqs.__getitem__)
        )
        if cine:
            now = _now_ns()
            for j, seq in enumerate(seqs):
                if j != pick:
                    self._finish(
                        lane,
                        slots[j],
                        seq,
                        L.STATUS_DROPPED,
                        "superseded by a newer cine frame before it ran",
                        now,
                    )
                    self.lane_counts[lane][1] += 1
                    self._dropped_carry[lane] += 1
        self._run_slot(lane, slots[pick], seqs[pick])

    def _run_slot(self, lane: int, slot: int, seq: int) -> None:
        t_taken = _now_ns()
        mm = self.seg.mm
        _BUSY.pack_into(mm, L.H_BUSY_LANE, lane, self.task, seq, t_taken)
        off = self.slot_off[lane][slot]
        dtype, ch, h, w, sp_row, sp_col, nbytes, _submit_ns = _REQ.unpack_from(mm, off + L.S_DTYPE)
        problem = self._check_request(lane, slot, seq, dtype, ch, h, w, sp_row, sp_col, nbytes)
        if problem is not None:
            self._finish(lane, slot, seq, L.STATUS_REJECTED, problem, t_taken)
            return
        key = (lane, slot, dtype, ch, h, w)
        x = self._views.get(key)
        if x is None:
            if len(self._views) > 4 * self.g.lane_count * self.g.slots_per_lane:
                self._views.clear()
            x = self._views[key] = np.ndarray(
                (h, w, 3) if ch == 3 else (h, w), L.DTYPES[dtype], buffer=mm, offset=off + L.SLOT_META_SIZE
            )
        r = self._result(lane, slot, h, w)
        try:
            self.session.run_into(
                r,
                x,
                spec=self.spec_rgb if ch == 3 else None,
                pixel_spacing_mm=(sp_row, sp_col) if sp_row > 0 else None,
            )
        except SliceRTError as exc:
            self._finish(lane, slot, seq, L.STATUS_REJECTED, f"{type(exc).__name__}: {exc}", t_taken)
            return
        except Exception as exc:  # a bug, not the frame's fault: say so, keep serving the others
            self.log(f"unexpected {type(exc).__name__} on lane {lane} frame {seq}: {exc}")
            self._finish(
                lane, slot, seq, L.STATUS_REJECTED, f"internal error {type(exc).__name__}: {exc}", t_taken
            )
            return
        flags, label, mh, mw = 0, -1, 0, 0
        if self.task == L.TASK_CLASSIFICATION:
            label = self.label_index[r.label]
        else:
            flags |= L.RF_HAS_MASK
            mh, mw = h, w
            k = len(self.labels)
            struct.pack_into(f"<{k}Q", mm, off + L.S_PIXEL_COUNTS, *r.pixel_counts.values())
            if r.areas_mm2 is not None:
                flags |= L.RF_HAS_AREAS
                struct.pack_into(f"<{k}d", mm, off + L.S_AREAS_MM2, *r.areas_mm2.values())
        tm = r.timings_ms
        t_done = _now_ns()
        _TIMINGS.pack_into(
            mm,
            off + L.S_TIMINGS,
            tm["decode"],
            tm["preprocess"],
            tm["h2d"],
            tm["infer"],
            tm["d2h"],
            tm["postprocess"],
            tm["total"],
            (t_done - t_taken) * 1e-6,
        )
        self._publish(lane, slot, seq, L.STATUS_OK, flags, label, mh, mw, t_taken, t_done, b"")

    def _check_request(self, lane, slot, seq, dtype, ch, h, w, sp_row, sp_col, nbytes) -> str | None:
        where = f"lane {lane} slot {slot} frame {seq}"
        done = self.done_list[lane][slot]
        if seq < done:
            return f"{where}: req_seq went backwards (done_seq is {done})"
        if dtype not in L.DTYPES:
            return f"{where}: dtype code {dtype} is not one of {sorted(L.DTYPES)} ({', '.join(L.DTYPES.values())})"
        if ch not in (1, 3):
            return f"{where}: channels {ch} must be 1 (grey) or 3 (RGB)"
        if not (1 <= h <= L.MAX_SIDE and 1 <= w <= L.MAX_SIDE):
            return f"{where}: height x width {h} x {w} is outside [1, {L.MAX_SIDE}]"
        want = h * w * ch * L.ITEMSIZE[dtype]
        if nbytes != want:
            return f"{where}: frame_bytes {nbytes} does not match {h} x {w} x {ch} x {L.ITEMSIZE[dtype]} = {want}"
        if want > self.g.frame_capacity:
            return f"{where}: frame of {want} bytes is larger than the slot's {self.g.frame_capacity}"
        if self.task == L.TASK_SEGMENTATION and h * w > self.g.mask_capacity:
            return f"{where}: a {h} x {w} mask does not fit the slot's {self.g.mask_capacity}-pixel mask area"
        if not (sp_row == 0.0 and sp_col == 0.0):
            if not (0.0 < sp_row <= 1e3 and 0.0 < sp_col <= 1e3):  # NaN fails both comparisons
                return f"{where}: pixel spacing ({sp_row!r}, {sp_col!r}) mm must be both 0 (unknown) or in (0, 1000]"
        return None

    def _result(self, lane: int, slot: int, h: int, w: int):
        key = (lane, slot, h, w) if self.task == L.TASK_SEGMENTATION else (lane, slot)
        r = self._results.get(key)
        if r is not None:
            return r
        if len(self._results) > 4 * self.g.lane_count * self.g.slots_per_lane:
            self._results.clear()
        from engine.session import Result

        r = Result(self.session.task, self.session.labels)
        off = self.slot_off[lane][slot]
        if self.task == L.TASK_CLASSIFICATION:
            r.scores = np.ndarray((len(self.labels),), "<f4", buffer=self.seg.mm, offset=off + L.S_SCORES)
        else:
            r.mask = np.ndarray((h, w), np.uint8, buffer=self.seg.mm, offset=self.seg.mask_offset(lane, slot))
            r._scratch = {}
        self._results[key] = r
        return r

    def _finish(self, lane: int, slot: int, seq: int, status: int, message: str, t_taken: int) -> None:
        if status == L.STATUS_REJECTED:
            self.lane_counts[lane][2] += 1
        t_done = _now_ns()
        self._publish(
            lane, slot, seq, status, 0, -1, 0, 0, t_taken, t_done, message.encode("utf-8", "replace")
        )

    def _publish(
        self, lane, slot, seq, status, flags, label, mh, mw, t_taken, t_done, message: bytes
    ) -> None:
        mm = self.seg.mm
        off = self.slot_off[lane][slot]
        dropped = 0
        if status in (L.STATUS_OK, L.STATUS_REJECTED):
            dropped, self._dropped_carry[lane] = self._dropped_carry[lane], 0
        _META.pack_into(
            mm,
            off + L.S_STATUS,
            status,
            flags,
            label,
            dropped,
            mh,
            mw,
            self.epoch,
            len(self.labels),
            t_taken,
            t_done,
        )
        if status != L.STATUS_OK or message:
            mm[off + L.S_MESSAGE : off + L.S_MESSAGE + L.MESSAGE_BYTES] = _cstr(message, L.MESSAGE_BYTES)
        # One aligned 8-byte store (NumPy), after the result block: this publishes it. x86-64 keeps stores
        # in program order; struct.pack_into may write byte by byte, so it is never used for done_seq.
        self.done[lane, slot] = seq
        self.done_list[lane][slot] = seq
        counts = self.lane_counts[lane]
        counts[0] += 1
        self.frames += 1
        lane_off = self.slot_off[lane][0] - L.LANE_HEADER_SIZE
        # done_word is only a futex compare value: a torn (byte-wise) update still reads as "changed".
        word = self.done_words[lane] = (self.done_words[lane] + 1) & 0xFFFFFFFF
        _LANE_DONE.pack_into(mm, lane_off + L.L_DONE_WORD, word, 0, *counts)
        _IDLE.pack_into(mm, L.H_BUSY_LANE, L.NONE_U32)
        _U64.pack_into(mm, L.H_FRAMES_DONE, self.frames)
        # Always wake: the kernel orders this against a client entering its wait, so no wake-up is lost
        # (a "waiting" flag checked here would need a store-load fence Python cannot issue).
        self.futex.wake(self.done_word_addr[lane])


def _cstr(value, n: int) -> bytes:
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
    raw = raw[: n - 1]
    return raw + b"\0" * (n - len(raw))
