"""The shared-memory contract of isolated mode, layout version 1 (docs/firmware.md).

One POSIX shared-memory segment holds a header, then `lane_count` lanes (one per client), each a lane
header followed by `slots_per_lane` frame slots. Every word has exactly one writer:

* header geometry (offsets 0..127): whoever creates the segment (supervisor or standalone worker);
* header worker block (128..191) and every slot's result block: the worker;
* header doorbell (192) and each lane's client block and slot request block: the client owning the lane.

A client publishes a frame by writing its descriptor and pixels, then storing `req_seq` (release);
the worker publishes a result by writing the result block, then storing `done_seq = req_seq`. A slot
is pending while `req_seq != done_seq`. Offsets here and in cpp/client/slicert_shm_layout.h must agree
(tests/firmware/test_layout.py compares them).

The segment is untrusted input: `Segment.attach` checks every header field against the segment's real
size before anything is mapped as an array, and the worker re-checks each frame descriptor.
"""

from __future__ import annotations

import mmap
import os
import re
import secrets
import struct
from dataclasses import dataclass

from engine.errors import SharedMemoryError

MAGIC = 0x0054524543494C53  # b"SLICERT\0" read as a little-endian u64
LAYOUT_VERSION = 1
HEADER_SIZE = 4096
LANE_HEADER_SIZE = 256
SLOT_META_SIZE = 2048
MAX_CLASSES = 64
LABEL_BYTES = 32
MESSAGE_BYTES = 256
MAX_LANES = 64
MAX_SLOTS = 64
MAX_SIDE = 65535
ALIGN = 64

# -- header ---------------------------------------------------------------------------------------------
H_MAGIC = 0  # u64
H_VERSION = 8  # u32
H_HEADER_SIZE = 12  # u32
H_TOTAL_SIZE = 16  # u64
H_LANE_COUNT = 24  # u32
H_SLOTS_PER_LANE = 28  # u32
H_LANE_SIZE = 32  # u64
H_SLOT_SIZE = 40  # u64
H_FRAME_CAPACITY = 48  # u64 bytes
H_MASK_CAPACITY = 56  # u64 bytes (pixels of a uint8 mask)
H_MAX_CLASSES = 64  # u32
H_HANG_TIMEOUT_MS = 68  # u32: a worker silent this long is hung (clients and supervisor agree on it)
H_SEGMENT_ID = 72  # u64 random, changes when the segment is re-created
H_SUPERVISOR_PID = 80  # u32, 0 = standalone worker
H_RESTARTS = 84  # u32 worker restarts done by the supervisor
H_STANDBY_PID = 88  # u32 pid of a loaded standby worker, 0 = none (supervisor --standby)
# worker block
H_WORKER_PID = 128  # u32
H_WORKER_EPOCH = 132  # u32, +1 at every worker start
H_WORKER_STATE = 136  # u32 STATE_*
H_WORKER_WAITING = 140  # u32, 1 while the worker sleeps on the doorbell
H_HEARTBEAT_NS = 144  # u64 CLOCK_MONOTONIC
H_BUSY_LANE = 152  # u32 lane of the frame in progress, NONE when idle
H_TASK = 156  # u32 TASK_*
H_BUSY_SEQ = 160  # u64
H_BUSY_SINCE_NS = 168  # u64 CLOCK_MONOTONIC
H_FRAMES_DONE = 176  # u64
H_NUM_CLASSES = 184  # u32
# client block
H_DOORBELL = 192  # u32 futex word, clients add 1 after each publish
H_BUNDLE_NAME = 256  # char[64]
H_LABELS = 512  # char[MAX_CLASSES][LABEL_BYTES]

STATE_DOWN, STATE_READY, STATE_STOPPING = 0, 1, 2
TASK_NONE, TASK_CLASSIFICATION, TASK_SEGMENTATION = 0, 1, 2
NONE_U32 = 0xFFFFFFFF

# -- lane -----------------------------------------------------------------------------------------------
L_OWNER_PID = 0  # u32 (client CAS 0 -> pid)
L_MODE = 4  # u32 MODE_*
L_CLIENT_ABI = 8  # u32
L_CLIENT_WAITING = 12  # u32
L_CLAIM_NONCE = 16  # u64
L_SUBMITTED = 24  # u64
L_CLIENT_DROPPED = 32  # u64 frames the client could not queue (all slots busy)
L_DONE_WORD = 64  # u32 futex word, worker adds 1 after each result
L_COMPLETED = 72  # u64
L_WORKER_DROPPED = 80  # u64 cine frames superseded by a newer one before they ran
L_REJECTED = 88  # u64

MODE_STILL, MODE_CINE = 1, 2

# -- slot: request (client) -----------------------------------------------------------------------------
S_REQ_SEQ = 0  # u64
S_DTYPE = 8  # u32 DTYPE_*
S_CHANNELS = 12  # u32 1 or 3
S_HEIGHT = 16  # u32
S_WIDTH = 20  # u32
S_SPACING_ROW_MM = 24  # f64, 0 = unknown
S_SPACING_COL_MM = 32  # f64
S_FRAME_BYTES = 40  # u64
S_SUBMIT_NS = 48  # u64 CLOCK_MONOTONIC
# -- slot: result (worker) ------------------------------------------------------------------------------
S_DONE_SEQ = 64  # u64
S_STATUS = 72  # i32 STATUS_*
S_RESULT_FLAGS = 76  # u32 RF_*
S_LABEL = 80  # i32 argmax class, -1 for segmentation
S_DROPPED_BEFORE = 84  # u32 frames of this lane dropped since the previous result
S_MASK_HEIGHT = 88  # u32
S_MASK_WIDTH = 92  # u32
S_WORKER_EPOCH = 96  # u32
S_NUM_CLASSES = 100  # u32
S_TAKEN_NS = 104  # u64
S_DONE_NS = 112  # u64
S_TIMINGS = 128  # f64[8] ms: decode preprocess h2d infer d2h postprocess total worker
S_SCORES = 192  # f32[64]
S_PIXEL_COUNTS = 448  # u64[64]
S_AREAS_MM2 = 960  # f64[64]
S_MESSAGE = 1472  # char[256]

RF_HAS_AREAS, RF_HAS_MASK = 1, 2
N_TIMINGS = 8
TIMING_KEYS = ("decode", "preprocess", "h2d", "infer", "d2h", "postprocess", "total")

# Status codes written into a slot; the same numbers as slicert_status in slicert_client.h.
STATUS_OK = 0
STATUS_RESTARTED = 10
STATUS_DROPPED = 11
STATUS_REJECTED = 12

DTYPES = {1: "uint8", 2: "uint16", 3: "int16", 4: "int32", 5: "float32"}
ITEMSIZE = {1: 1, 2: 2, 3: 2, 4: 4, 5: 4}

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_GEOMETRY = struct.Struct("<QIIQIIQQQQII")  # magic .. hang_timeout_ms, offsets 0..71


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class Geometry:
    """Sizes of a segment. frame_capacity: bytes of one frame; mask_capacity: pixels of one label mask."""

    lane_count: int = 2
    slots_per_lane: int = 4
    frame_capacity: int = 4 << 20
    mask_capacity: int = 1 << 20
    hang_timeout_ms: int = 1000

    @property
    def slot_size(self) -> int:
        return SLOT_META_SIZE + _align(self.frame_capacity) + _align(self.mask_capacity)

    @property
    def lane_size(self) -> int:
        return LANE_HEADER_SIZE + self.slots_per_lane * self.slot_size

    @property
    def total_size(self) -> int:
        return HEADER_SIZE + self.lane_count * self.lane_size

    def check(self) -> Geometry:
        for name, v, lo, hi in (
            ("lane_count", self.lane_count, 1, MAX_LANES),
            ("slots_per_lane", self.slots_per_lane, 1, MAX_SLOTS),
            ("frame_capacity", self.frame_capacity, 1, 1 << 31),
            ("mask_capacity", self.mask_capacity, 0, 1 << 31),
            ("hang_timeout_ms", self.hang_timeout_ms, 10, 600_000),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise SharedMemoryError(
                    f"shared-memory geometry: {name} must be an integer in [{lo}, {hi}], got {v!r}"
                )
        if self.total_size > 1 << 36:
            raise SharedMemoryError(
                f"shared-memory geometry: {self.total_size} bytes in all is more than 64 GiB"
            )
        return self


def check_name(name: str) -> str:
    """The segment name without its leading '/', or SharedMemoryError."""
    if not isinstance(name, str):
        raise SharedMemoryError(f"shared-memory name must be a string, got {type(name).__name__}")
    bare = name[1:] if name.startswith("/") else name
    if not _NAME.match(bare):
        raise SharedMemoryError(f"shared-memory name {name!r} must be 1-200 characters of A-Z a-z 0-9 . _ -")
    return bare


def shm_path(name: str) -> str:
    # glibc's shm_open(3) maps "/NAME" to this file; the worker opens it directly so Python's
    # multiprocessing resource tracker never unlinks a segment the firmware still uses.
    return "/dev/shm/" + check_name(name)


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (EPERM counts: it exists, under another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _live_owner(path: str) -> str | None:
    """'worker pid N' / 'supervisor pid N' when an existing segment at `path` is still served, else None."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_SIZE)
    except OSError:
        return None
    if len(raw) < HEADER_SIZE or struct.unpack_from("<Q", raw, H_MAGIC)[0] != MAGIC:
        return None
    sup = struct.unpack_from("<I", raw, H_SUPERVISOR_PID)[0]
    pid, state = (
        struct.unpack_from("<I", raw, H_WORKER_PID)[0],
        struct.unpack_from("<I", raw, H_WORKER_STATE)[0],
    )
    if sup and sup != os.getpid() and pid_alive(sup):
        return f"supervisor pid {sup}"
    if state == STATE_READY and pid != os.getpid() and pid_alive(pid):
        return f"worker pid {pid}"
    return None


def unlink(name: str) -> None:
    try:
        os.unlink(shm_path(name))
    except FileNotFoundError:
        pass


class Segment:
    """A mapped segment: `mm` (mmap) plus the validated geometry and offset helpers."""

    def __init__(self, name: str, mm: mmap.mmap, geometry: Geometry, created: bool):
        self.name = check_name(name)
        self.mm = mm
        self.geometry = geometry
        self.created = created
        self.inode: int | None = None

    def unlink_if_ours(self) -> None:
        """Remove the name only if it still refers to the segment this process created."""
        try:
            if self.inode is not None and os.stat(shm_path(self.name)).st_ino == self.inode:
                os.unlink(shm_path(self.name))
        except FileNotFoundError:
            pass

    # -- creation and attachment -------------------------------------------------------------------------
    @classmethod
    def create(
        cls, name: str, geometry: Geometry, *, supervisor_pid: int = 0, replace: bool = True
    ) -> Segment:
        """A fresh, zero-filled segment with the geometry header written (mode 0600: same user only)."""
        g = geometry.check()
        path = shm_path(name)
        if replace:
            owner = _live_owner(path)
            if owner:
                raise SharedMemoryError(
                    f"shared-memory segment {name!r} is in use by {owner}; pick another --shm"
                )
            unlink(name)  # a leftover of a process that died without cleaning up
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise SharedMemoryError(f"shared-memory segment {name!r} already exists ({path})") from None
        except OSError as exc:
            raise SharedMemoryError(f"cannot create shared-memory segment {name!r}: {exc.strerror}") from None
        try:
            os.ftruncate(fd, g.total_size)
            mm = mmap.mmap(fd, g.total_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            os.close(fd)
            unlink(name)
            raise SharedMemoryError(
                f"cannot size shared-memory segment {name!r} to {g.total_size} bytes: {exc.strerror}"
            ) from None
        inode = os.fstat(fd).st_ino
        os.close(fd)
        struct.pack_into(
            "<QIIQIIQQQQII",
            mm,
            0,
            0,
            LAYOUT_VERSION,
            HEADER_SIZE,
            g.total_size,
            g.lane_count,
            g.slots_per_lane,
            g.lane_size,
            g.slot_size,
            g.frame_capacity,
            g.mask_capacity,
            MAX_CLASSES,
            g.hang_timeout_ms,
        )
        struct.pack_into("<QII", mm, H_SEGMENT_ID, secrets.randbits(64), supervisor_pid, 0)
        struct.pack_into("<I", mm, H_BUSY_LANE, NONE_U32)
        struct.pack_into("<Q", mm, H_MAGIC, MAGIC)  # last: a reader never sees a magic over a half header
        seg = cls(name, mm, g, created=True)
        seg.inode = inode
        return seg

    @classmethod
    def attach(cls, name: str) -> Segment:
        """Map an existing segment after checking every geometry field against its real size."""
        path = shm_path(name)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise SharedMemoryError(f"shared-memory segment {name!r} does not exist ({path})") from None
        except OSError as exc:
            raise SharedMemoryError(f"cannot open shared-memory segment {name!r}: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE:
                raise SharedMemoryError(
                    f"shared-memory segment {name!r} is {size} bytes, smaller than the "
                    f"{HEADER_SIZE}-byte header"
                )
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        try:
            g = validate_header(bytes(mm[: _GEOMETRY.size]), size, name)
        except SharedMemoryError:
            mm.close()
            raise
        return cls(name, mm, g, created=False)

    def close(self) -> None:
        try:
            self.mm.close()
        except BufferError:  # views still exported: the mapping goes when they do
            pass

    # -- offsets ---------------------------------------------------------------------------------------
    def lane_offset(self, lane: int) -> int:
        return HEADER_SIZE + lane * self.geometry.lane_size

    def slot_offset(self, lane: int, slot: int) -> int:
        return self.lane_offset(lane) + LANE_HEADER_SIZE + slot * self.geometry.slot_size

    def frame_offset(self, lane: int, slot: int) -> int:
        return self.slot_offset(lane, slot) + SLOT_META_SIZE

    def mask_offset(self, lane: int, slot: int) -> int:
        return self.frame_offset(lane, slot) + _align(self.geometry.frame_capacity)

    # -- small typed accessors (tests, supervisor; the worker's hot loop uses numpy views) ------------------
    def u32(self, off: int) -> int:
        return struct.unpack_from("<I", self.mm, off)[0]

    def u64(self, off: int) -> int:
        return struct.unpack_from("<Q", self.mm, off)[0]

    def set_u32(self, off: int, v: int) -> None:
        struct.pack_into("<I", self.mm, off, v)

    def set_u64(self, off: int, v: int) -> None:
        struct.pack_into("<Q", self.mm, off, v)


def validate_header(raw: bytes, size: int, name: str = "?") -> Geometry:
    """Geometry from the first 72 bytes of a segment of `size` bytes, or SharedMemoryError naming the field."""
    (
        magic,
        version,
        header_size,
        total_size,
        lanes,
        slots,
        lane_size,
        slot_size,
        frame_cap,
        mask_cap,
        max_classes,
        hang_ms,
    ) = _GEOMETRY.unpack_from(raw, 0)
    where = f"shared-memory segment {name!r}"
    if magic != MAGIC:
        raise SharedMemoryError(
            f"{where}: bad magic {magic:#018x} (not a SliceRT segment, or not yet initialised)"
        )
    if version != LAYOUT_VERSION:
        raise SharedMemoryError(
            f"{where}: layout version {version}, this worker speaks version {LAYOUT_VERSION}"
        )
    if header_size != HEADER_SIZE:
        raise SharedMemoryError(f"{where}: header_size {header_size}, expected {HEADER_SIZE}")
    if max_classes != MAX_CLASSES:
        raise SharedMemoryError(f"{where}: max_classes {max_classes}, expected {MAX_CLASSES}")
    g = Geometry(
        lane_count=lanes,
        slots_per_lane=slots,
        frame_capacity=frame_cap,
        mask_capacity=mask_cap,
        hang_timeout_ms=hang_ms,
    )
    g.check()
    for field, got, want in (
        ("slot_size", slot_size, g.slot_size),
        ("lane_size", lane_size, g.lane_size),
        ("total_size", total_size, g.total_size),
        ("file size", size, g.total_size),
    ):
        if got != want:
            raise SharedMemoryError(f"{where}: {field} is {got}, the geometry implies {want}")
    return g
