"""Latency of the DICOM node (docs/dicom-node.md): receive -> results stored in Orthanc, and the SEG/SR
encoding time alone.

Setup: a real Orthanc (Debian package) on loopback, `DicomNode` (what `slicert serve-dicom` runs) in this
process forwarding to it, dcmtk `storescu` as the sender (a separate process, one association per image,
sent one at a time so no image waits behind another). Bundles: the tiny synthetic test models
(tests/runtime/tiny_models.py) unless --seg-bundle / --cls-bundle are given, so inference is a small
part and the figures are the node's own cost: spool write + fsync, DICOM decode, inference, SEG/SR
encoding (highdicom), C-STORE to Orthanc. Inputs: real chest CR RG1_UNCR.dcm (1955x1841) and real
ultrasound US1_UNCR.dcm (640x480 RGB), each round a copy with a new SOP Instance UID.

  (a) receive -> stored: from the instance fully received (spool file written) to Orthanc's C-STORE
      success for the last result object, as the node measures it (perf in its log: "receive->stored").
  (b) encoding alone: build_segs + build_sr (or build_sr) on a Result already computed, in-process,
      interleaved over the same inputs.

    python benchmarks/bench_dicom_node.py [--rounds 20] [--json .benchmarks/dicom_node.json] [--no-results]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "runtime"))
sys.path.insert(0, str(ROOT / "tests" / "dicomout"))
INPUTS = {"chest CR RG1_UNCR.dcm (1955x1841)": "RG1_UNCR.dcm", "ultrasound US1_UNCR.dcm (640x480 RGB)": "US1_UNCR.dcm"}
BEGIN, END = "<!-- bench_dicom_node: begin -->", "<!-- bench_dicom_node: end -->"


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q / 100 * (len(v) - 1))))]


def _bundles(tmp: Path, seg: Path | None, cls: Path | None) -> dict[str, Path]:
    if seg and cls:
        return {"segmentation": seg, "classification": cls}
    import tiny_models

    from engine.bundle import build_bundle

    out = {}
    for task in ("segmentation", "classification"):
        export = tiny_models.write_export(tmp / f"export_{task}", task)
        out[task] = tmp / f"{task}.slicert"
        build_bundle(export, out[task], precision="fp32", target="cpu", max_batch=1)
    return out


def _copies(src: str, n: int, folder: Path, tag: str) -> list[Path]:
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(src)
    out = []
    for i in range(n):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        p = folder / f"{tag}-{i:03d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        out.append(p)
    return out


def _storescu() -> str:
    from dicom_tools import dcmtk

    return dcmtk("storescu")


def node_latency(bundles, rounds: int, tmp: Path) -> list[dict]:
    from orthanc import Orthanc
    from pydicom.data import get_testdata_file

    from engine.dicomout.node import AEAddress, DicomNode, NodeConfig

    orthanc = Orthanc(tmp / "orthanc").start()
    rows = []
    try:
        storescu = _storescu()
        for task, bundle in bundles.items():
            cfg = NodeConfig(bundle=bundle, port=0, forward=AEAddress.parse(orthanc.address), spool=tmp / f"spool-{task}",
                             threads=1)
            node = DicomNode(cfg)
            node.start()
            try:
                for label, name in INPUTS.items():
                    files = _copies(get_testdata_file(name, download=False), rounds + 2, tmp / "in" / task, name)
                    before = len(node.metrics)
                    for f in files:
                        subprocess.run([storescu, "-aet", "BENCH", "-aec", cfg.ae_title, "127.0.0.1", str(node.port),
                                        str(f)], check=True, capture_output=True, timeout=120)
                        if not node.wait_idle(120):
                            raise RuntimeError("node did not store results within 120 s")
                    m = node.metrics[before + 2:]  # the first two are warm-up (imports, first association)
                    rows.append({"task": task, "input": label, "n": len(m),
                                 **{f"{k}_p50": statistics.median(x[k] for x in m) for k in
                                    ("latency_ms", "infer_ms", "encode_ms", "send_ms")},
                                 "latency_ms_p99": pct([x["latency_ms"] for x in m], 99),
                                 "objects": m[0]["objects"]})
                    orthanc.delete_all()
            finally:
                node.stop()
    finally:
        orthanc.stop()
    return rows


def encoding_alone(bundles, rounds: int) -> list[dict]:
    import gc

    from pydicom.data import get_testdata_file

    import engine
    from engine.dicomout.seg import build_segs
    from engine.dicomout.sr import build_sr

    cases = []
    sessions = {t: engine.load(b, threads=1) for t, b in bundles.items()}
    for task, s in sessions.items():
        for label, name in INPUTS.items():
            path = get_testdata_file(name, download=False)
            cases.append((task, label, path, s.run(path), {"seg": [], "sr": []}))
    for _ in range(2):  # warm-up
        for task, _l, path, r, _t in cases:
            segs = build_segs([r], path) if task == "segmentation" else []
            build_sr([r], path, segs=segs)
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):  # interleaved: every case once per round
            for task, _l, path, r, t in cases:
                t0 = time.perf_counter()
                segs = build_segs([r], path) if task == "segmentation" else []
                t1 = time.perf_counter()
                build_sr([r], path, segs=segs)
                t2 = time.perf_counter()
                t["seg"].append((t1 - t0) * 1e3)
                t["sr"].append((t2 - t1) * 1e3)
    finally:
        gc.enable()
        for s in sessions.values():
            s.close()
    out = []
    for task, label, _p, _r, t in cases:
        tot = [a + b for a, b in zip(t["seg"], t["sr"])]
        out.append({"task": task, "input": label, "n": rounds, "seg_ms_p50": statistics.median(t["seg"]),
                    "sr_ms_p50": statistics.median(t["sr"]), "total_ms_p50": statistics.median(tot),
                    "total_ms_p99": pct(tot, 99)})
    return out


def markdown(lat, enc, rounds, load) -> str:
    lines = [BEGIN, "## DICOM node: receive -> stored in Orthanc, and SEG/SR encoding",
             "", (f"`python benchmarks/bench_dicom_node.py --rounds {rounds}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.1f} / "
             f"{load[1]:.1f} (1/5 min) during the run: the machine was shared, so absolute times and tails are noisy. "
             "Bundles: the tiny synthetic test models (inference is a small part of each figure; the figures are the "
             "node's own cost). Sender: dcmtk storescu, one association per image, one image at a time; destination: "
             "Orthanc 1.10 on loopback. p99 over n samples is the largest but one or the largest for small n."), "",
             "| model | input | n | receive->stored p50 ms | p99 ms | inference p50 | SEG/SR encode p50 | C-STORE to Orthanc p50 | objects |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in lat:
        lines.append(f"| {r['task']} | {r['input']} | {r['n']} | {r['latency_ms_p50']:.0f} | {r['latency_ms_p99']:.0f} | "
                     f"{r['infer_ms_p50']:.1f} | {r['encode_ms_p50']:.0f} | {r['send_ms_p50']:.0f} | "
                     f"{'SEG + SR' if r['objects'] == 2 else 'SR'} |")
    lines += ["", "Encoding alone (in-process, interleaved, GC off during timing):", "",
              "| model | input | n | SEG p50 ms | SR p50 ms | total p50 ms | total p99 ms |", "|---|---|---|---|---|---|---|"]
    for r in enc:
        seg = f"{r['seg_ms_p50']:.0f}" if r["task"] == "segmentation" else "-"
        lines.append(f"| {r['task']} | {r['input']} | {r['n']} | {seg} | {r['sr_ms_p50']:.0f} | {r['total_ms_p50']:.0f} | "
                     f"{r['total_ms_p99']:.0f} |")
    lines += ["", ("Encoding (highdicom building and checking the objects in Python) dominates the node's latency; "
                   "inference on these tiny models and the network hop are small beside it."), END]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seg-bundle", type=Path)
    ap.add_argument("--cls-bundle", type=Path)
    ap.add_argument("--json", type=Path, default=ROOT / ".benchmarks" / "dicom_node.json")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--no-results", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import logging

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-dicom-node-") as d:
        tmp = Path(d)
        bundles = _bundles(tmp, args.seg_bundle, args.cls_bundle)
        load0 = os.getloadavg()
        enc = encoding_alone(bundles, args.rounds)
        lat = node_latency(bundles, args.rounds, tmp)
        load1 = os.getloadavg()
    load = (max(load0[0], load1[0]), max(load0[1], load1[1]))
    md = markdown(lat, enc, args.rounds, load)
    print(md)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"latency": lat, "encoding": enc, "rounds": args.rounds, "loadavg": load}, indent=2))
    if not args.no_results:
        text = args.results.read_text() if args.results.exists() else "# SliceRT benchmark results\n"
        if BEGIN in text and END in text:
            text = text[:text.index(BEGIN)] + md + text[text.index(END) + len(END) + 1:]
        else:
            text = text.rstrip("\n") + "\n\n" + md
        args.results.write_text(text)


if __name__ == "__main__":
    main()
