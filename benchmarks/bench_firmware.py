"""Firmware integration figures (issue 20): what calling SliceRT from C costs.

* isolated mode: round trip of the C client (submit -> result seen) against a real `slicert worker`,
  minus `Session.run_into` called in-process from Python on the same frame, in alternating blocks;
  with the default (sleep on the futex at once) and with both sides polling 200 us first;
* embedded mode: run_into called from C++ through the CPython API (GIL taken per call, and held) against
  the same call from a Python loop, in the same process (examples/embedded);
* worker restart: SIGKILL of a supervised worker -> first successful frame on the same client handle.

    python benchmarks/bench_firmware.py [--bundle X.slicert] [--rounds 6] [--block 500] [--json out.json]

Without --bundle it builds the tiny synthetic classifier of tests/runtime/tiny_models.py (fp32), whose
inference takes tens of microseconds, so the transport overhead is not hidden behind the model.
Medians of per-call times; the machine's load is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "runtime"))

H, W = 64, 64


def _pattern(k: int = 1) -> np.ndarray:
    i = np.arange(H * W, dtype=np.uint64)
    return ((i * 2654435761 + k * 40503) & 4095).astype(np.uint16).reshape(H, W)  # the driver's pattern


def tiny_bundle(folder: Path) -> Path:
    import tiny_models
    from engine.bundle import build_bundle

    export = tiny_models.write_export(folder / "export_cls", "classification")
    out = folder / "cls.slicert"
    build_bundle(export, out, precision="fp32", target="cpu", max_batch=1)
    return out


def in_process_block(session, result, x, n: int, pause_s: float = 0.0) -> list[float]:
    """Per-call us of run_into from Python; pause_s > 0 sleeps between calls, as a frame-paced caller does
    (the core's caches and clock cool down between frames, which a hot loop never sees)."""
    ns = time.perf_counter_ns
    run_into = session.run_into
    out = []
    for _ in range(n):
        t0 = ns()
        run_into(result, x)
        out.append((ns() - t0) * 1e-3)
        if pause_s:
            time.sleep(pause_s)
    return out


def isolated_block(
    driver: Path, name: str, n: int, spin_us: int, prefix=()
) -> tuple[list[float], list[float]]:
    env = dict(os.environ, SLICERT_SPIN_US=str(spin_us))
    p = subprocess.run(
        [*prefix, str(driver), "bench", name, str(n), str(H), str(W), "50"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    if p.returncode != 0:
        raise RuntimeError(p.stdout + p.stderr)
    rt, worker = [], []
    for line in p.stdout.splitlines():
        parts = line.split()
        if parts[0] == "RT":
            rt.append(int(parts[1]) * 1e-3)
            worker.append(float(parts[3]) * 1e3)
    return rt, worker


def pct(v, q) -> float:
    return float(np.percentile(np.asarray(v), q))


def _set_fifo(priority: int | None) -> None:
    if priority is None:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    else:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))


def bench_isolated(bundle: Path, driver: Path, rounds: int, block: int, rt_priority: int | None) -> dict:
    """Round trip of the C client vs run_into in-process, alternating blocks, per scheduling class."""
    import engine
    from tests.firmware.fwutil import WorkerProcess

    session = engine.load(bundle, precision="fp32", threads=1)
    result = session.new_result()
    x = _pattern(1)
    in_process_block(session, result, x, 200)  # warm-up
    classes = [("normal", None)] + ([("fifo", rt_priority)] if rt_priority else [])
    # (worker spin, client spin) in us: both sleep on the futex at once (the default), or both poll first
    # (worker 500 us after each frame, client 300 us in slicert_wait): for a device with cores to spare.
    spins = ((0, 0), (500, 300))
    out = {}
    for cls_name, prio in classes:
        prefix = ("chrt", "-f", str(prio)) if prio else ()
        for worker_spin, client_spin in spins:
            w = WorkerProcess(bundle, max_frame_bytes=1 << 20, cmd_prefix=prefix, spin_us=worker_spin)
            try:
                hot, paced, rt, work = [], [], [], []
                for _ in range(rounds):
                    if prio:
                        _set_fifo(prio)
                    try:
                        hot += in_process_block(session, result, x, block)
                        paced += in_process_block(session, result, x, block // 4, pause_s=0.0002)
                    finally:
                        if prio:
                            _set_fifo(None)
                    r, k = isolated_block(driver, w.name, block, client_spin, prefix)
                    rt += r
                    work += k
            finally:
                w.stop()
            label = "sleep" if not worker_spin else f"poll (worker {worker_spin} us, client {client_spin} us)"
            out[f"{cls_name}, {label}"] = {
                "scheduling": cls_name if not prio else f"SCHED_FIFO {prio} (worker, client, baseline)",
                "client_spin_us": client_spin,
                "worker_spin_us": worker_spin,
                "calls": len(rt),
                "in_process_hot_us": {"p50": pct(hot, 50), "p99": pct(hot, 99)},
                "in_process_paced_us": {"p50": pct(paced, 50), "p99": pct(paced, 99)},
                "isolated_round_trip_us": {"p50": pct(rt, 50), "p99": pct(rt, 99)},
                "worker_frame_us_p50": pct(work, 50),
                "overhead_vs_hot_us": {"p50": pct(rt, 50) - pct(hot, 50), "p99": pct(rt, 99) - pct(hot, 99)},
                "overhead_vs_paced_us": {
                    "p50": pct(rt, 50) - pct(paced, 50),
                    "p99": pct(rt, 99) - pct(paced, 99),
                },
            }
    session.close()
    return out


def bench_embedded(bundle: Path, build: Path, frames: int) -> dict:
    gen = (
        ["-G", "Ninja"]
        if subprocess.run(["which", "ninja"], capture_output=True, check=False).returncode == 0
        else []
    )
    t0 = time.perf_counter()
    subprocess.run(
        [
            "cmake",
            "-S",
            str(ROOT / "examples" / "embedded"),
            "-B",
            str(build),
            *gen,
            f"-DPython_EXECUTABLE={sys.executable}",
            "-DCMAKE_BUILD_TYPE=Release",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True, timeout=600)
    build_s = time.perf_counter() - t0
    env = dict(os.environ, OMP_NUM_THREADS="1", SLICERT_PYTHON=sys.executable)
    t0 = time.perf_counter()
    p = subprocess.run(
        [str(build / "slicert_embed"), str(bundle), str(H), str(W), str(frames), "fp32"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(p.stdout + p.stderr)
    out = json.loads(p.stdout)
    out["process_wall_s"] = wall
    out["build_s"] = build_s
    return out


def _wait_standby(w, timeout_s: float = 180.0) -> None:
    from engine.worker import layout as L

    t0 = time.monotonic()
    while w.seg.u32(L.H_STANDBY_PID) == 0:
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError("the standby worker never loaded")
        time.sleep(0.05)


def bench_restart(bundle: Path, driver: Path, repeats: int, standby: bool) -> dict:
    """SIGKILL the supervised worker `repeats` times; ms until the same client handle has a result again."""
    from tests.firmware.fwutil import Interactive, WorkerProcess

    w = WorkerProcess(bundle, supervise=True, standby=standby, hang_timeout_ms=2000)
    d = Interactive(driver, w.name, "still", H, W, H, W)
    recover_ms, ready_ms = [], []
    try:
        assert d.cmd("small 20") == "OK 20"
        for _ in range(repeats):
            if standby:
                _wait_standby(w)
            epoch = w.epoch
            t_kill = time.monotonic()
            os.kill(w.worker_pid, signal.SIGKILL)
            ans = d.cmd("recover 120000", timeout_s=180).split()
            if ans[1] != "SLICERT_OK":
                raise RuntimeError(f"no recovery: {ans}")
            recover_ms.append((time.monotonic() - t_kill) * 1e3)
            w.wait_ready(epoch_after=epoch)
            ready_ms.append(float(ans[2]))
            assert d.cmd("small 20") == "OK 20"
    finally:
        d.close()
        log = w.stop()
    starts = [
        float(line.split(" ready ")[1].split(" ms")[0])
        for line in log.splitlines()
        if "slicert supervisor" in line and " ready " in line
    ][1:]
    return {
        "kill_to_first_result_ms": recover_ms,
        "median_ms": float(np.median(recover_ms)),
        "supervisor_spawn_to_ready_ms": starts,
    }


BEGIN, END = "<!-- bench_firmware: begin -->", "<!-- bench_firmware: end -->"


def markdown(report: dict) -> list[str]:
    """The RESULTS.md section for a report (measured now or read back from --json)."""
    iso, e, r = report["isolated"], report["embedded"], report["restart"]
    load = report["loadavg_before"]
    lines = [
        BEGIN,
        "## Firmware integration: isolated worker and embedded interpreter",
        "",
        f"`python benchmarks/bench_firmware.py` ({report['date']}); x86_64, {report['cpus']} cores, load average "
        f"{load[0]:.1f} / {load[1]:.1f} (1/5 min) at the start: the machine was shared, so absolute times and "
        f"tails are noisy. Bundle: {report['bundle']} (the tiny synthetic fp32 classifier of the tests, so "
        f"the transport is not hidden behind the model); frame {report['frame']}; 1 inference thread. "
        "In-process `run_into` and the isolated round trip are measured in alternating blocks; "
        "'hot' = back-to-back calls from a Python loop, 'paced' = the same with a 0.2 ms sleep between calls "
        "(caches and clocks cool between frames, as they do for a frame-paced caller and for the worker, "
        "which sleeps between frames). Round trip = C client `slicert_submit` -> result read back by "
        "`slicert_wait`, measured in C. Overhead = round trip - in-process run_into.",
        "",
        "| isolated mode (C client -> worker process) | in-process hot p50 / p99 us | in-process paced p50 us | "
        "round trip p50 / p99 us | overhead p50 vs hot / vs paced us | worker frame p50 us |",
        "|---|---|---|---|---|---|",
    ]
    for label, x in iso.items():
        lines.append(
            f"| {label} | {x['in_process_hot_us']['p50']:.1f} / {x['in_process_hot_us']['p99']:.1f} | "
            f"{x['in_process_paced_us']['p50']:.1f} | {x['isolated_round_trip_us']['p50']:.1f} / "
            f"{x['isolated_round_trip_us']['p99']:.1f} | {x['overhead_vs_hot_us']['p50']:.1f} / "
            f"{x['overhead_vs_paced_us']['p50']:.1f} | {x['worker_frame_us_p50']:.1f} |"
        )
    lines += [
        "",
        "| embedded mode (C++ hosting Python, same process) | p50 us | p99 us | over the Python loop, p50 us |",
        "|---|---|---|---|",
        f"| run_into from C++, GIL taken per call | {e['c_call_us_p50']:.1f} | {e['c_call_us_p99']:.1f} | "
        f"{e['c_call_us_p50'] - e['py_call_us_p50']:.1f} |",
        f"| run_into from C++, GIL held by the inference thread | {e['c_gil_held_us_p50']:.1f} | - | "
        f"{e['c_gil_held_us_p50'] - e['py_call_us_p50']:.1f} |",
        f"| run_into from a Python loop (same thread, same objects) | {e['py_call_us_p50']:.1f} | "
        f"{e['py_call_us_p99']:.1f} | - |",
        "",
        f"Embedded start-up: Py_InitializeFromConfig {e['init_ms']:.0f} ms, `import engine` + numpy "
        f"{e['import_ms']:.0f} ms, `engine.load` + `new_result` {e['load_ms']:.0f} ms.",
        "",
        f"Worker restart (supervised; SIGKILL -> first successful frame on the same client handle, "
        f"{len(r['kill_to_first_result_ms'])} kills): median {r['median_ms']:.0f} ms "
        f"({', '.join(f'{v:.0f}' for v in r['kill_to_first_result_ms'])}); of that, supervisor spawn -> worker "
        f"ready {', '.join(f'{v:.0f}' for v in r['supervisor_spawn_to_ready_ms'])} ms (Python start-up, "
        "ONNX Runtime import, bundle verification and load). The client gets its error code for the "
        "frame in flight within tens of milliseconds (tests/firmware/test_isolated.py); the restart time is "
        "how long the firmware runs without inference.",
    ]
    rs = report.get("restart_standby")
    if rs:
        lines += [
            "",
            f"With `--standby` (a second worker kept loaded, waiting to take over): median {rs['median_ms']:.0f} ms "
            f"({', '.join(f'{v:.0f}' for v in rs['kill_to_first_result_ms'])}), at the cost of a second worker "
            "process's memory.",
        ]
    lines += [
        END,
    ]
    return lines


def write_results(path: Path, lines: list[str]) -> None:
    md = "\n".join(lines) + "\n"
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + md + text[text.index(END) + len(END) + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + md
    path.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--block", type=int, default=500)
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--embedded-frames", type=int, default=3000)
    ap.add_argument(
        "--rt-priority",
        type=int,
        default=10,
        help="also measure with worker, client and baseline at SCHED_FIFO this priority (0: skip; "
        "needs CAP_SYS_NICE), as an acquisition loop usually runs",
    )
    ap.add_argument("--json", type=Path, help="write the raw figures here")
    ap.add_argument("--from-json", type=Path, help="do not measure: print (and --results) a saved report")
    ap.add_argument("--results", type=Path, help="upsert the section into this RESULTS.md")
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if a.from_json:
        report = json.loads(a.from_json.read_text())
    else:
        report = measure(a)
    lines = markdown(report)
    print("\n".join(lines[1:-1]))
    if a.json and not a.from_json:
        a.json.write_text(json.dumps(report, indent=2))
    if a.results:
        write_results(a.results, lines)
    return 0


def measure(a) -> dict:
    from tests.firmware.fwutil import compile_driver

    with tempfile.TemporaryDirectory(prefix="slicert-fw-bench-") as tmp:
        tmp = Path(tmp)
        bundle = a.bundle or tiny_bundle(tmp)
        driver = compile_driver(tmp / "client_driver", sanitize=False)
        report = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "bundle": str(bundle.name),
            "frame": f"{H}x{W} uint16",
            "cpus": os.cpu_count(),
            "loadavg_before": os.getloadavg(),
        }
        report["isolated"] = bench_isolated(bundle, driver, a.rounds, a.block, a.rt_priority or None)
        report["embedded"] = bench_embedded(bundle, tmp / "embedded", a.embedded_frames)
        report["restart"] = bench_restart(bundle, driver, a.restarts, standby=False)
        report["restart_standby"] = bench_restart(bundle, driver, a.restarts, standby=True)
        report["loadavg_after"] = os.getloadavg()
    return report


if __name__ == "__main__":
    sys.exit(main())
