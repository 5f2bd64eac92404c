"""`slicert serve-dicom` against a real PACS (Orthanc) and a real independent client (dcmtk storescu /
echoscu): results found through Orthanc's REST API and checked against session.run on the same files.
The bundles are the tiny synthetic fixtures; the images are real (pydicom-data CR and ultrasound)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest

from .conftest import sample_file
from .dicom_tools import dcmtk, missing_tools, validate
from .orthanc import Orthanc, free_port

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 120  # bound on every wait for results (the CI machine may be loaded)
pytestmark = pytest.mark.timeout(900)  # a hard bound per test on top of every bounded wait


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    o = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield o
    o.stop()


@pytest.fixture
def pacs(orthanc):
    orthanc.delete_all()
    return orthanc


class Node:
    """`slicert serve-dicom` as a separate process, as an integrator would run it."""

    def __init__(self, tmp: Path, bundle: Path, *args: str, spool: Path | None = None, name: str = "node"):
        self.port = free_port()
        self.spool = spool or tmp / f"{name}-spool"
        self.log = tmp / f"{name}.log"
        self.cmd = [sys.executable, "-m", "engine.cli", "serve-dicom", "--bundle", str(bundle), "--port",
                    str(self.port), "--spool", str(self.spool), "--threads", "1", "--timeout", "10", *args]
        self.proc = None

    def start(self) -> Node:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        start = len(self.text())
        deadline = time.monotonic() + 90
        while "listening on" not in self.text()[start:]:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve-dicom exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve-dicom did not start:\n{self.text()[-3000:]}")
            time.sleep(0.1)
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no clean-up of any kind
        self.proc.wait(timeout=10)

    def pending(self) -> list[Path]:
        return sorted((self.spool / "pending").glob("*.dcm"))

    def drained(self, timeout_s: float = WAIT_S) -> list[Path]:
        """The pending spool once it is empty or timeout_s passed: an instance leaves it only after the
        destination acknowledged its last result, a moment after that result is visible in Orthanc."""
        deadline = time.monotonic() + timeout_s
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.pending()


@pytest.fixture
def nodes():
    started: list[Node] = []

    def make(*args, **kw) -> Node:
        n = Node(*args, **kw)
        started.append(n)
        return n.start()
    yield make
    for n in started:
        n.stop()


@pytest.fixture(autouse=True)
def _tools():
    missing = missing_tools(("storescu", "echoscu"))
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install dcmtk)")


def copies(src: str, n: int, folder: Path, tag: str, corrupt: set[int] = frozenset()) -> list[Path]:
    """n copies of a real image, each a new instance (own SOP Instance UID) of one new series."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(src)
    series = generate_uid(entropy_srcs=[tag, "series"])
    out = []
    for i in range(n):
        uid = generate_uid(entropy_srcs=[tag, str(i)])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SeriesInstanceUID = series
        ds.InstanceNumber = i + 1
        rows = ds.Rows
        if i in corrupt:  # declares twice the rows its Pixel Data holds: the engine must refuse it
            ds.Rows = rows * 2
        p = folder / f"{tag}-{i:03d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        ds.Rows = rows
        out.append(p)
    return out


def storescu(port: int, files, aet: str = "SENDER", aec: str = "SLICERT", timeout: float = 120, extra=()):
    return subprocess.run([dcmtk("storescu"), "-v", "-aet", aet, "-aec", aec, "-to", "30", "-ta", "30", "-td", "30",
                           *extra, "127.0.0.1", str(port), *map(str, files)], check=False, capture_output=True, text=True,
                          timeout=timeout)


def _source_uid(obj) -> str:
    if obj.Modality == "SEG":
        return str(obj.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
                   .ReferencedSOPInstanceUID)
    return _sr_source(obj)


def _sr_source(sr) -> str:
    import highdicom as hd

    (img,) = hd.sr.ComprehensiveSR.from_dataset(sr).content.get_image_measurement_groups()
    ref = next(it for it in img[0].ContentSequence if it.ValueType == "IMAGE")
    return str(ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)


def _by_source(objs) -> dict[str, list]:
    out: dict[str, list] = {}
    for o in objs:
        out.setdefault(_source_uid(o), []).append(o)
    return out


def _measures(sr) -> tuple[dict, dict]:
    import highdicom as hd

    content = hd.sr.ComprehensiveSR.from_dataset(sr).content
    rois = {str(g.tracking_identifier): {m.name.meaning: m.value for m in g.get_measurements()}
            for g in content.get_planar_roi_measurement_groups()}
    (img,) = content.get_image_measurement_groups()
    return rois, {m.name.meaning: m.value for m in img.get_measurements()}


def _seg_planes(seg) -> dict[int, np.ndarray]:
    px = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    return {int(g.SegmentIdentificationSequence[0].ReferencedSegmentNumber): px[k]
            for k, g in enumerate(seg.PerFrameFunctionalGroupsSequence)}


def test_end_to_end_cr_and_ultrasound_storescu_to_orthanc(pacs, nodes, dicom_bundles, seg_session, cls_session,
                                                          tmp_path):
    seg_node = nodes(tmp_path, dicom_bundles["segmentation"], "--forward", pacs.address, name="seg")
    cls_node = nodes(tmp_path, dicom_bundles["classification"], "--forward", pacs.address, "--ae-title",
                     "SLICERTCLS", name="cls")
    echo = subprocess.run([dcmtk("echoscu"), "-aec", "SLICERT", "127.0.0.1", str(seg_node.port)], check=False,
                          capture_output=True, text=True, timeout=60)
    assert echo.returncode == 0, echo.stderr
    files = [*copies(sample_file("RG1_UNCR.dcm"), 1, tmp_path / "in", "cr1"),
             *copies(sample_file("RG3_UNCR.dcm"), 1, tmp_path / "in", "cr3"),
             *copies(sample_file("US1_UNCR.dcm"), 1, tmp_path / "in", "us"),
             *copies(sample_file("US1_J2KR.dcm"), 1, tmp_path / "in", "usj2k")]  # JPEG 2000 on the wire
    for port, aec in ((seg_node.port, "SLICERT"), (cls_node.port, "SLICERTCLS")):
        r = storescu(port, files[:3], aec=aec)
        assert r.returncode == 0, r.stdout + r.stderr
        r = storescu(port, files[3:], aec=aec, extra=("-xv",))  # propose JPEG 2000 lossless: no transcoding
        assert r.returncode == 0 and "JPEG 2000" in r.stdout + r.stderr, r.stdout + r.stderr
    segs = pacs.wait_for("SEG", 4, WAIT_S)
    srs = pacs.wait_for("SR", 8, WAIT_S)
    assert len(segs) == 4 and len(srs) == 8, (seg_node.text()[-3000:], cls_node.text()[-3000:])
    seg_by, sr_by = _by_source(segs), _by_source(srs)
    for f in files:
        uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        (seg,) = seg_by[uid]
        sr_seg = next(s for s in sr_by[uid] if "organ" in str(s.ContentSequence))
        sr_cls = next(s for s in sr_by[uid] if s is not sr_seg)
        r = seg_session.run(f)  # the same file, in this process
        planes = _seg_planes(seg)
        np.testing.assert_array_equal(planes[1], (r.mask == 1).astype(np.uint8))
        np.testing.assert_array_equal(planes[2], (r.mask == 2).astype(np.uint8))
        rois, _ = _measures(sr_seg)
        assert {k: v["Pixel count"] for k, v in rois.items()} == {k: r.pixel_counts[k] for k in ("organ", "lesion")}
        c = cls_session.run(f)
        _, image = _measures(sr_cls)
        np.testing.assert_allclose([image[f"Probability of {lab}"] for lab in c.labels], c.scores, rtol=1e-7)
        for obj in (seg, sr_seg, sr_cls):
            path = tmp_path / f"{obj.Modality}-{obj.SOPInstanceUID}.dcm"
            obj.save_as(path, enforce_file_format=True)
            validate(path)
    log = seg_node.text()
    assert re.search(r"assoc \d+: accepted SENDER@127\.0\.0\.1:\d+ -> SLICERT", log)
    assert "C-ECHO" in log and "receive->stored" in log and "released" in log
    assert seg_node.drained() == [] and cls_node.drained() == []


def test_eight_concurrent_associations(pacs, nodes, dicom_bundles, tmp_path):
    node = nodes(tmp_path, dicom_bundles["segmentation"], "--forward", pacs.address)
    batches = [copies(sample_file("US1_UNCR.dcm"), 2, tmp_path / f"b{k}", f"conc{k}") for k in range(8)]
    with ThreadPoolExecutor(8) as pool:
        runs = list(pool.map(lambda fs: storescu(node.port, fs), batches))
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs if r.returncode]
    segs, srs = pacs.wait_for("SEG", 16, WAIT_S), pacs.wait_for("SR", 16, WAIT_S)
    want = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for fs in batches for f in fs}
    assert sorted(_source_uid(s) for s in segs) == sorted(want)  # each exactly once
    assert sorted(_source_uid(s) for s in srs) == sorted(want)
    log = node.text()
    assert len(re.findall(r"assoc \d+: accepted SENDER", log)) == 8
    assert len(re.findall(r"assoc \d+: released after [\d.]+ s; 2 stored, 0 refused", log)) == 8


def test_corrupt_file_mid_batch_is_refused_and_the_node_keeps_serving(pacs, nodes, dicom_bundles, tmp_path):
    node = nodes(tmp_path, dicom_bundles["segmentation"], "--forward", pacs.address)
    files = copies(sample_file("US1_UNCR.dcm"), 5, tmp_path / "in", "corrupt", corrupt={2})
    r = storescu(node.port, files, extra=("--no-halt",))  # as a modality does: keep sending after a failure
    out = r.stdout + r.stderr
    bad_uid = str(pydicom.dcmread(files[2], stop_before_pixels=True).SOPInstanceUID)
    assert re.search(r"Store Response \(Error: CannotUnderstand\)", out), out  # the failure status reached the sender
    segs = pacs.wait_for("SEG", 4, WAIT_S)
    good = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for i, f in enumerate(files) if i != 2}
    assert {_source_uid(s) for s in segs} == good and len(segs) == 4
    assert re.search(rf"refused {re.escape(bad_uid)} .*DicomError", node.text())
    assert node.drained() == []  # the refused instance is not kept either
    again = storescu(node.port, copies(sample_file("RG1_UNCR.dcm"), 1, tmp_path / "after", "after"))
    assert again.returncode == 0 and node.proc.poll() is None
    assert len(pacs.wait_for("SEG", 5, WAIT_S)) == 5


def test_association_policy_transfer_syntax_calling_and_called_ae(pacs, nodes, dicom_bundles, tmp_path):
    from pynetdicom import AE

    node = nodes(tmp_path, dicom_bundles["segmentation"], "--reply-to", f"SENDER@127.0.0.1:{pacs.dicom_port}")
    # A syntax the engine cannot decode (MPEG-2 video) is refused at association time.
    ae = AE(ae_title="SENDER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.6.1", ["1.2.840.10008.1.2.4.100"])
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="SLICERT")
    try:
        assert assoc.is_established
        (us,) = [c for c in assoc.rejected_contexts if c.abstract_syntax == "1.2.840.10008.5.1.4.1.1.6.1"]
        assert us.result == 0x04  # transfer syntax not supported
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    assert "no transfer syntax the engine decodes" in node.text()
    # Results go back to the caller's configured address; an unknown caller is rejected.
    files = copies(sample_file("US1_UNCR.dcm"), 1, tmp_path / "in", "reply")
    assert storescu(node.port, files).returncode == 0
    assert len(pacs.wait_for("SR", 1, WAIT_S)) == 1
    stranger = storescu(node.port, copies(sample_file("US1_UNCR.dcm"), 1, tmp_path / "x", "x"), aet="STRANGER")
    assert stranger.returncode != 0
    wrong_called = storescu(node.port, files, aec="NOTSLICERT")
    assert wrong_called.returncode != 0
    time.sleep(1.0)
    assert len(pacs.instances("SR")) == 1  # nothing was sent for the refused associations
    assert re.search(r"association from STRANGER@.* rejected: calling AE 'STRANGER' has no --reply-to", node.text())


def test_killed_mid_batch_then_restarted_loses_and_duplicates_nothing(pacs, nodes, dicom_bundles, tmp_path):
    files = copies(sample_file("US1_UNCR.dcm"), 8, tmp_path / "in", "kill")
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    spool = tmp_path / "spool"
    # Phase 1: the destination is down, so acknowledged instances can only be in the spool; the node is
    # killed (SIGKILL) after the third image of the batch, while the sender is still sending.
    down = f"ORTHANC@127.0.0.1:{free_port()}"
    node = nodes(tmp_path, dicom_bundles["segmentation"], "--forward", down, spool=spool, name="n1")
    acked = []
    for i, f in enumerate(files):
        if i == 3:
            node.kill()
        r = storescu(node.port, [f], timeout=60)
        if r.returncode == 0:
            acked.append(uids[i])
    assert acked == uids[:3]
    assert sorted(p.name.split("-")[-1][:-4] for p in node.pending()) == sorted(acked)  # durable before the ack
    assert pacs.instances() == []
    # Phase 2: restarted on the same spool with the destination up: the spool is resumed; the sender
    # then resends the whole batch (it saw failures). Every image gets exactly one SEG and one SR.
    node2 = nodes(tmp_path, dicom_bundles["segmentation"], "--forward", pacs.address, spool=spool, name="n2")
    assert "3 resumed" in node2.text()
    assert len(pacs.wait_for("SEG", 3, WAIT_S)) == 3
    assert storescu(node2.port, files).returncode == 0
    segs, srs = pacs.wait_for("SEG", 8, WAIT_S), pacs.wait_for("SR", 8, WAIT_S)
    time.sleep(1.0)
    segs, srs = pacs.instances("SEG"), pacs.instances("SR")
    assert sorted(_source_uid(s) for s in segs) == sorted(uids)
    assert sorted(_source_uid(s) for s in srs) == sorted(uids)
    assert node2.drained() == []
