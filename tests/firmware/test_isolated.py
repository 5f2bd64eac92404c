"""Isolated mode end to end: the C client (compiled here, also under ASan + UBSan) against a real
`slicert worker` process on POSIX shared memory.

Timeouts are bounded everywhere: the client waits at most the time it is given, the tests at most
START_TIMEOUT_S for a worker to start and 60 s for any driver answer.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from engine.worker import layout as L
from tests.firmware.fwutil import Interactive, driver_env, unique_name

REC_HEAD = struct.Struct("<iiii")
K = L.MAX_CLASSES


def write_frames(path, frames: list[np.ndarray]) -> None:
    with open(path, "wb") as f:
        for x in frames:
            f.write(np.ascontiguousarray(x).tobytes())


def read_records(path, n: int) -> list[dict]:
    with open(path, "rb") as f:
        raw = f.read()
    off, out = 0, []
    for _ in range(n):
        status, label, ncls, has_areas = REC_HEAD.unpack_from(raw, off)
        off += REC_HEAD.size
        scores = np.frombuffer(raw, "<f4", K, off)
        off += 4 * K
        counts = np.frombuffer(raw, "<u8", K, off)
        off += 8 * K
        areas = np.frombuffer(raw, "<f8", K, off)
        off += 8 * K
        mh, mw = struct.unpack_from("<II", raw, off)
        off += 8
        mask = np.frombuffer(raw, np.uint8, mh * mw, off).reshape(mh, mw)
        off += mh * mw
        out.append(
            {
                "status": status,
                "label": label,
                "ncls": ncls,
                "has_areas": has_areas,
                "scores": scores[:ncls],
                "counts": counts[:ncls],
                "areas": areas[:ncls],
                "mask": mask,
            }
        )
    assert off == len(raw)
    return out


def run_driver(exe, name, frames, mode, spacing, tmp_path, tag, env=None) -> list[dict]:
    x0 = frames[0]
    h, w = x0.shape[:2]
    ch = 3 if x0.ndim == 3 else 1
    dtype = {np.uint8: 1, np.uint16: 2, np.int16: 3, np.int32: 4, np.float32: 5}[x0.dtype.type]
    fin, fout = tmp_path / f"{tag}.frames", tmp_path / f"{tag}.results"
    write_frames(fin, frames)
    row, col = spacing or (0.0, 0.0)
    proc = subprocess.run(
        [
            str(exe),
            "run",
            name,
            mode,
            str(fin),
            str(len(frames)),
            str(h),
            str(w),
            str(ch),
            str(dtype),
            repr(row),
            repr(col),
            str(fout),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"DONE {len(frames)}" in proc.stdout, proc.stdout + proc.stderr
    return read_records(fout, len(frames))


def assert_same_as_session(records, frames, session, spacing, rgb=False):
    spec = session.spec.replace(in_channels=3) if rgb else None
    for i, (rec, x) in enumerate(zip(records, frames)):
        assert rec["status"] == 0, f"frame {i}: status {rec['status']}"
        ref = session.run(x, spec=spec, pixel_spacing_mm=spacing)
        if session.task == "classification":
            np.testing.assert_array_equal(rec["scores"], ref.scores, err_msg=f"frame {i}")
            assert session.labels[rec["label"]] == ref.label
        else:
            np.testing.assert_array_equal(rec["mask"], ref.mask, err_msg=f"frame {i}")
            assert list(rec["counts"]) == list(ref.pixel_counts.values())
            if spacing is None:
                assert rec["has_areas"] == 0 and ref.areas_mm2 is None
            else:
                assert rec["has_areas"] == 1
                assert list(rec["areas"]) == list(ref.areas_mm2.values())  # same float64 arithmetic, exactly


@pytest.fixture(scope="module")
def sessions(fw_bundles):
    import engine

    s = {k: engine.load(p, precision="fp32", threads=1) for k, p in fw_bundles.items()}
    yield s
    for v in s.values():
        v.close()


CASES = {
    "cls-u16": ("cls", lambda rng: rng.integers(0, 4096, (97, 83)).astype(np.uint16), None),
    "cls-rgb-u8": ("cls", lambda rng: rng.integers(0, 256, (50, 61, 3)).astype(np.uint8), None),
    "seg-u16-spacing": ("seg", lambda rng: rng.integers(0, 4096, (80, 70)).astype(np.uint16), (0.5, 0.7)),
    "seg-f32": ("seg", lambda rng: rng.uniform(0, 4095, (40, 48)).astype(np.float32), None),
}


@pytest.mark.parametrize("sanitized", [False, True], ids=["plain", "asan-ubsan"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_results_identical_to_session_run(
    case, sanitized, request, fw_bundles, sessions, start_worker, rng, tmp_path
):
    key, make, spacing = CASES[case]
    exe = request.getfixturevalue("asan_driver" if sanitized else "driver")
    frames = [make(rng) for _ in range(12)]
    w = start_worker(fw_bundles[key])
    recs = run_driver(exe, w.name, frames, "still", spacing, tmp_path, case, env=driver_env(sanitized))
    assert_same_as_session(recs, frames, sessions[key], spacing, rgb=frames[0].ndim == 3)
    assert w.proc.poll() is None, "the worker must still be serving"


def test_two_clients_on_one_worker(driver, fw_bundles, sessions, start_worker, rng, tmp_path):
    w = start_worker(fw_bundles["seg"], lanes=2)
    jobs = []
    for tag, spacing in (("a", (0.3, 0.3)), ("b", None)):
        frames = [rng.integers(0, 4096, (64, 72)).astype(np.uint16) for _ in range(40)]
        fin, fout = tmp_path / f"{tag}.frames", tmp_path / f"{tag}.results"
        write_frames(fin, frames)
        row, col = spacing or (0.0, 0.0)
        p = subprocess.Popen(
            [
                str(driver),
                "run",
                w.name,
                "still",
                str(fin),
                "40",
                "64",
                "72",
                "1",
                "2",
                repr(row),
                repr(col),
                str(fout),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        jobs.append((p, frames, spacing, fout))
    lanes = set()
    for p, frames, spacing, fout in jobs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and "DONE 40" in out, out + err
        lanes.add(out.split()[2])
        assert_same_as_session(read_records(fout, 40), frames, sessions["seg"], spacing)
    assert lanes == {"0", "1"}, "each client gets its own lane"
    # a third client finds no free lane: an error code and a message, not a hang
    out = subprocess.run([str(driver), "connect", w.name], capture_output=True, text=True, timeout=30).stdout
    assert out.startswith("CONNECT SLICERT_OK"), out  # the two finished clients released their lanes
    a = subprocess.Popen(
        [str(driver), "interactive", w.name, "still", "32", "32", "32", "32"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    b = subprocess.Popen(
        [str(driver), "interactive", w.name, "still", "32", "32", "32", "32"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert a.stdout.readline().startswith("CONNECTED") and b.stdout.readline().startswith("CONNECTED")
        out = subprocess.run(
            [str(driver), "connect", w.name], capture_output=True, text=True, timeout=30
        ).stdout
        assert out.startswith("CONNECT SLICERT_E_NO_LANE") and "lanes are taken" in out, out
    finally:
        for p in (a, b):
            p.communicate("quit\n", timeout=30)


def _wait_busy_then_stop(w, lane: int, seq: int, timeout_s: float = 10.0) -> bool:
    """SIGSTOP the worker while it runs frame `seq` of `lane`; True if it was caught mid-frame."""
    seg = w.seg
    t0 = time.monotonic()
    done_off = seg.slot_offset(lane, 0) + L.S_DONE_SEQ
    while time.monotonic() - t0 < timeout_s:
        if seg.u32(L.H_BUSY_LANE) == lane and seg.u64(L.H_BUSY_SEQ) == seq:
            os.kill(w.worker_pid, signal.SIGSTOP)
            dones = [
                seg.u64(done_off + i * seg.geometry.slot_size) for i in range(seg.geometry.slots_per_lane)
            ]
            if seg.u32(L.H_BUSY_LANE) == lane and seg.u64(L.H_BUSY_SEQ) == seq and seq not in dones:
                return True
            os.kill(w.worker_pid, signal.SIGCONT)
            return False
        if any(
            seg.u64(done_off + i * seg.geometry.slot_size) == seq for i in range(seg.geometry.slots_per_lane)
        ):
            return False
    return False


@pytest.mark.parametrize("standby", [False, True], ids=["fresh-worker", "standby-worker"])
def test_worker_killed_mid_frame_then_restarted(standby, driver, fw_bundles, start_worker):
    # 1 lane x 2 slots of 8 MiB: stays well inside a container's default 64 MiB /dev/shm
    w = start_worker(
        fw_bundles["cls"],
        supervise=True,
        standby=standby,
        lanes=1,
        slots=2,
        max_frame_bytes=8 << 20,
        hang_timeout_ms=2000,
    )
    d = Interactive(driver, w.name, "still", 64, 64, 2048, 2048)
    try:
        assert d.cmd("small 5") == "OK 5"
        if standby:  # the supervisor publishes the standby's pid once it has loaded its session
            t0 = time.monotonic()
            while w.seg.u32(L.H_STANDBY_PID) == 0:
                assert time.monotonic() - t0 < 120, "the standby worker never loaded"
                time.sleep(0.05)
            standby_pid = w.seg.u32(L.H_STANDBY_PID)
        caught = False
        for _ in range(30):  # a 2048 x 2048 frame takes a few ms to preprocess: catch the worker inside it
            ans = d.cmd("big").split()
            assert ans[1] == "SLICERT_OK", ans
            if _wait_busy_then_stop(w, d.lane, int(ans[2])):
                caught = True
                break
            assert d.cmd("wait 5000").split()[1] == "SLICERT_OK"
        assert caught, "never caught the worker inside a frame"
        epoch = w.epoch
        old_pid = w.worker_pid
        os.kill(old_pid, signal.SIGKILL)  # killed mid-frame
        t_kill = time.monotonic()
        ans = d.cmd("wait 3000").split()
        status, elapsed_ms = ans[1], float(ans[2])
        assert status in ("SLICERT_E_WORKER_DOWN", "SLICERT_E_RESTARTED"), ans
        assert elapsed_ms < 3000 + 200, "the client's wait must end within its timeout"
        ans = d.cmd("recover 60000", timeout_s=90).split()
        assert ans[1] == "SLICERT_OK", ans
        recovered_s = time.monotonic() - t_kill
        assert w.epoch == epoch + 1 and w.worker_pid != old_pid
        if standby:
            assert w.worker_pid == standby_pid, "the loaded standby took over"
        assert d.cmd("small 20") == "OK 20"
        stats = d.cmd("stats").split()
        assert int(stats[stats.index("epochs") + 1]) >= 2
        print(f"worker restart: client served again {recovered_s * 1e3:.0f} ms after SIGKILL")
    finally:
        d.close()


def test_hung_worker_times_out_and_supervisor_replaces_it(driver, fw_bundles, start_worker):
    w = start_worker(fw_bundles["cls"], supervise=True, hang_timeout_ms=300)
    d = Interactive(driver, w.name, "still", 64, 64, 64, 64)
    try:
        assert d.cmd("small 3") == "OK 3"
        epoch, pid = w.epoch, w.worker_pid
        os.kill(pid, signal.SIGSTOP)  # hung: alive, silent
        assert d.cmd("big").split()[1] in ("SLICERT_OK", "SLICERT_E_WORKER_DOWN")
        ans = d.cmd("wait 5000").split()
        assert ans[1] in ("SLICERT_E_WORKER_DOWN", "SLICERT_E_RESTARTED"), ans
        assert float(ans[2]) < 300 + 1000, "hang detected within the hang timeout plus one poll"
        w.wait_ready(epoch_after=epoch)
        assert w.worker_pid != pid
        assert d.cmd("recover 60000", timeout_s=90).split()[1] == "SLICERT_OK"
        assert d.cmd("small 10") == "OK 10"
    finally:
        d.close()


def test_a_second_worker_on_a_served_segment_is_refused(driver, fw_bundles, start_worker):
    w = start_worker(fw_bundles["cls"])
    cmd = [sys.executable, "-m", "engine.cli", "worker", "--bundle", str(fw_bundles["cls"]), "--shm", w.name]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode != 0 and f"is in use by worker pid {w.worker_pid}" in p.stderr, p.stderr[-2000:]
    d = Interactive(driver, w.name, "still", 64, 64, 64, 64)
    try:
        assert d.cmd("small 3") == "OK 3", "the first worker still serves its segment"
    finally:
        d.close()


@pytest.mark.parametrize("sanitized", [False, True], ids=["plain", "asan-ubsan"])
def test_client_reconnects_to_a_recreated_segment(sanitized, request, fw_bundles, start_worker):
    exe = request.getfixturevalue("asan_driver" if sanitized else "driver")
    w = start_worker(fw_bundles["cls"])
    d = Interactive(exe, w.name, "still", 64, 64, 64, 64, env=driver_env(sanitized))
    try:
        assert d.cmd("small 2") == "OK 2"
        w.stop()  # the whole service goes away (segment unlinked), then comes back under the same name
        w2 = start_worker(fw_bundles["cls"], name=w.name)
        ans = d.cmd("try")
        assert ans.startswith("TRY SLICERT_E_WORKER_DOWN") and "slicert_reconnect" in ans, ans
        assert d.cmd("reconnect") == "RECONNECT SLICERT_OK -"
        assert d.cmd("small 5") == "OK 5"
        assert w2.proc.poll() is None
    finally:
        assert d.close() == 0


@pytest.mark.parametrize("sanitized", [False, True], ids=["plain", "asan-ubsan"])
def test_standalone_worker_death_is_an_error_code_not_a_hang(sanitized, request, fw_bundles, start_worker):
    exe = request.getfixturevalue("asan_driver" if sanitized else "driver")
    w = start_worker(fw_bundles["cls"], hang_timeout_ms=500)
    d = Interactive(exe, w.name, "still", 64, 64, 64, 64, env=driver_env(sanitized))
    try:
        assert d.cmd("small 2") == "OK 2"
        os.kill(w.worker_pid, signal.SIGKILL)
        w.proc.wait(timeout=30)  # reaped: the pid is gone
        t0 = time.monotonic()
        ans = d.cmd("small 1")
        assert ans == "OK 0"
        ans = d.cmd("big").split()
        assert ans[1] in ("SLICERT_E_WORKER_DOWN", "SLICERT_OK"), ans
        if ans[1] == "SLICERT_OK":  # queued before the client noticed: the wait reports it
            assert d.cmd("wait 2000").split()[1] == "SLICERT_E_WORKER_DOWN"
        assert time.monotonic() - t0 < 10
    finally:
        assert d.close() == 0


@pytest.mark.parametrize("sanitized", [False, True], ids=["plain", "asan-ubsan"])
def test_cine_latest_frame_wins_and_still_keeps_order(sanitized, request, fw_bundles, start_worker):
    exe = request.getfixturevalue("asan_driver" if sanitized else "driver")
    w = start_worker(fw_bundles["cls"], slots=4, hang_timeout_ms=5000)
    cine = Interactive(exe, w.name, "cine", 64, 64, 64, 64, env=driver_env(sanitized))
    try:
        assert cine.cmd("small 2") == "OK 2"
        os.kill(w.worker_pid, signal.SIGSTOP)
        try:
            ans = cine.cmd("burst 3").split()  # all three queue up behind the stopped worker
        finally:
            os.kill(w.worker_pid, signal.SIGCONT)
        assert ans[:3] == ["BURST", "busy", "0"], ans
        ans = cine.cmd("wait 5000").split()
        assert ans[1] == "SLICERT_OK", ans
        assert cine.cmd("latest").split()[1] == "SLICERT_E_PENDING"
        os.kill(w.worker_pid, signal.SIGSTOP)
        try:
            ans = cine.cmd("burst 6").split()  # 4 slots: 4 queued, the 2 newest refused (counted)
        finally:
            os.kill(w.worker_pid, signal.SIGCONT)
        assert ans[:3] == ["BURST", "busy", "2"], ans
        time.sleep(0.2)
        ans = cine.cmd("latest").split()
        assert ans[1] == "SLICERT_OK" and ans[3:] == ["dropped_before", "3"], ans
        stats = cine.cmd("stats").split()
        assert stats[stats.index("busy") + 1] == "2"
        lane_off = w.seg.lane_offset(cine.lane)
        assert w.seg.u64(lane_off + L.L_WORKER_DROPPED) == 2 + 3  # superseded in the two bursts
    finally:
        assert cine.close() == 0

    still = Interactive(exe, w.name, "still", 64, 64, 64, 64, env=driver_env(sanitized))
    try:
        os.kill(w.worker_pid, signal.SIGSTOP)
        try:
            ans = still.cmd("burst 4").split()
        finally:
            os.kill(w.worker_pid, signal.SIGCONT)
        assert ans[:3] == ["BURST", "busy", "0"], ans
        last = int(ans[4])
        assert still.cmd("wait 5000").split()[1] == "SLICERT_OK"
        seg, lane = w.seg, still.lane
        taken = {}
        for i in range(4):
            off = seg.slot_offset(lane, i)
            taken[seg.u64(off + L.S_DONE_SEQ)] = (
                seg.u64(off + L.S_TAKEN_NS),
                struct.unpack_from("<i", seg.mm, off + L.S_STATUS)[0],
            )
        assert sorted(taken) == list(range(last - 3, last + 1))
        assert all(st == 0 for _, st in taken.values()), "still frames are never dropped"
        order = sorted(taken, key=lambda s: taken[s][0])
        assert order == sorted(taken), "still frames run in submission order"
    finally:
        assert still.close() == 0


def _claim_rogue_lane(seg, lane: int) -> None:
    seg.set_u32(seg.lane_offset(lane) + L.L_OWNER_PID, os.getpid())
    seg.set_u32(seg.lane_offset(lane) + L.L_MODE, L.MODE_STILL)


def _rogue_submit(seg, lane: int, slot: int, seq: int, **fields) -> tuple[int, str]:
    """Write a descriptor the way a buggy or hostile client might, and return (status, message)."""
    d = {"dtype": 2, "channels": 1, "height": 32, "width": 32, "row": 0.0, "col": 0.0}
    d.update(fields)
    nbytes = fields.get("nbytes", d["height"] * d["width"] * d["channels"] * L.ITEMSIZE.get(d["dtype"], 2))
    off = seg.slot_offset(lane, slot)
    struct.pack_into(
        "<IIIIddQQ",
        seg.mm,
        off + L.S_DTYPE,
        d["dtype"],
        d["channels"],
        d["height"],
        d["width"],
        d["row"],
        d["col"],
        nbytes,
        0,
    )
    seg.set_u64(off + L.S_REQ_SEQ, seq)
    t0 = time.monotonic()
    while seg.u64(off + L.S_DONE_SEQ) != seq:  # the worker polls at least every 20 ms
        assert time.monotonic() - t0 < 30, "the worker did not answer a corrupt slot"
        time.sleep(0.002)
    status = struct.unpack_from("<i", seg.mm, off + L.S_STATUS)[0]
    msg = bytes(seg.mm[off + L.S_MESSAGE : off + L.S_MESSAGE + L.MESSAGE_BYTES]).split(b"\0")[0].decode()
    return status, msg


def test_corrupt_slot_headers_are_rejected_and_the_worker_survives(
    driver, fw_bundles, sessions, start_worker, rng, tmp_path
):
    w = start_worker(fw_bundles["cls"], lanes=2)
    seg = w.seg
    _claim_rogue_lane(seg, 1)
    cases = [
        ({"dtype": 99}, "dtype code 99"),
        ({"dtype": 0}, "dtype code 0"),
        ({"channels": 2}, "channels 2"),
        ({"height": 0}, "height x width 0 x 32"),
        ({"width": 70000}, "outside [1, 65535]"),
        ({"height": 60000, "width": 60000}, "larger than the slot"),
        ({"nbytes": 12345}, "frame_bytes 12345"),
        ({"nbytes": 2**64 - 1}, "frame_bytes 18446744073709551615"),
        ({"row": float("nan"), "col": 1.0}, "pixel spacing"),
        ({"row": -1.0, "col": -1.0}, "pixel spacing"),
        ({"row": 1.0, "col": float("inf")}, "pixel spacing"),
        ({"height": 4, "width": 4}, "min_side"),  # valid layout, but the session refuses a 4 x 4 image
    ]
    seq = 0
    for fields, expect in cases:
        seq += 1
        status, msg = _rogue_submit(seg, 1, 0, seq, **fields)
        assert status == L.STATUS_REJECTED, (fields, status, msg)
        assert expect in msg, (fields, msg)
    # the sequence number going backwards is refused too, and the slot is consistent again afterwards
    status, msg = _rogue_submit(seg, 1, 1, 0xFFFF, dtype=2)
    assert status == L.STATUS_OK
    status, msg = _rogue_submit(seg, 1, 1, 7)
    assert status == L.STATUS_REJECTED and "went backwards" in msg
    assert seg.u64(seg.lane_offset(1) + L.L_REJECTED) == len(cases) + 1
    assert w.proc.poll() is None and seg.u32(L.H_WORKER_STATE) == L.STATE_READY
    # a well-behaved client on the other lane is served, bit-identical to session.run
    frames = [rng.integers(0, 4096, (50, 50)).astype(np.uint16) for _ in range(5)]
    recs = run_driver(driver, w.name, frames, "still", None, tmp_path, "after")
    assert_same_as_session(recs, frames, sessions["cls"], None)


@pytest.mark.parametrize("sanitized", [False, True], ids=["plain", "asan-ubsan"])
def test_corrupt_or_foreign_segment_header_is_refused_by_the_client(sanitized, request, tmp_path):
    exe = request.getfixturevalue("asan_driver" if sanitized else "driver")
    env = driver_env(sanitized)

    def connect(name):
        out = subprocess.run([str(exe), "connect", name], capture_output=True, text=True, timeout=30, env=env)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    name = unique_name()
    assert connect(name).startswith("CONNECT SLICERT_E_NOT_FOUND")
    seg = L.Segment.create(
        name, L.Geometry(lane_count=1, slots_per_lane=2, frame_capacity=4096, mask_capacity=0)
    )
    try:
        assert connect(name).startswith("CONNECT SLICERT_OK")  # no worker yet: connecting is fine
        cases = [
            (L.H_VERSION, "<I", 2, "SLICERT_E_VERSION", "layout version 2"),
            (L.H_MAGIC, "<Q", 0x1234, "SLICERT_E_CORRUPT", "bad magic"),
            (L.H_HEADER_SIZE, "<I", 64, "SLICERT_E_CORRUPT", "header_size 64"),
            (L.H_LANE_COUNT, "<I", 1000, "SLICERT_E_CORRUPT", "lanes 1000"),
            (L.H_SLOT_SIZE, "<Q", 2**63, "SLICERT_E_CORRUPT", "sizes disagree"),
            (L.H_TOTAL_SIZE, "<Q", 1, "SLICERT_E_CORRUPT", "sizes disagree"),
            (L.H_FRAME_CAPACITY, "<Q", 2**40, "SLICERT_E_CORRUPT", "geometry out of bounds"),
        ]
        for off, fmt, value, status, text in cases:
            saved = bytes(seg.mm[off : off + struct.calcsize(fmt)])
            struct.pack_into(fmt, seg.mm, off, value)
            try:
                out = connect(name)
                assert out.startswith(f"CONNECT {status}") and text in out, (off, out)
                with pytest.raises(L.SharedMemoryError):  # the worker side refuses it too
                    L.Segment.attach(name)
            finally:
                seg.mm[off : off + len(saved)] = saved
        assert connect(name).startswith("CONNECT SLICERT_OK")
    finally:
        seg.close()
        L.unlink(name)
    # a segment shorter than its header (or truncated) is refused, not mapped past its end
    with open(L.shm_path(name), "wb") as f:
        f.write(b"\0" * 100)
    try:
        assert "smaller than its 4096-byte header" in connect(name)
    finally:
        L.unlink(name)


def test_10000_frames_flat_memory_on_both_sides(driver, fw_bundles, start_worker):
    w = start_worker(fw_bundles["seg"])
    worker = psutil.Process(w.worker_pid)
    client_kb, worker_rss = {}, {}
    with subprocess.Popen(
        [str(driver), "soak", w.name, "10000", "48", "40"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as p:
        try:
            for line in p.stdout:
                parts = line.split()
                if parts[0] == "AT":
                    k = int(parts[1])
                    client_kb[k] = int(parts[2])
                    worker_rss[k] = worker.memory_info().rss
                elif parts[0] == "DONE":
                    assert parts[3] == "0" and parts[5] == "10000", line
            assert p.wait(timeout=600) == 0, p.stderr.read()
        finally:
            if p.poll() is None:
                p.kill()
    assert sorted(client_kb) == list(range(1000, 10001, 1000))
    # after a 2,000-frame warm-up: the client allocates nothing after connect, the worker is flat
    client_growth_kb = client_kb[10000] - client_kb[2000]
    worker_growth = worker_rss[10000] - worker_rss[2000]
    print(
        f"client RssAnon {client_kb[2000]} -> {client_kb[10000]} kB; worker RSS {worker_rss[2000] >> 10} -> "
        f"{worker_rss[10000] >> 10} kB"
    )
    assert client_growth_kb <= 0, f"client anonymous memory grew by {client_growth_kb} kB"
    assert worker_growth < 1 << 20, f"worker RSS grew by {worker_growth} bytes"
    lane_completed = sum(
        w.seg.u64(w.seg.lane_offset(i) + L.L_COMPLETED) for i in range(w.seg.geometry.lane_count)
    )
    assert lane_completed == 10000
