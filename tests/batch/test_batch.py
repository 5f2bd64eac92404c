"""`slicert batch`: rows equal session.run on the same files, bad files are rows, resume and atomic
output, labels scored, and the same results from a real local Ray cluster, also when a worker dies."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from engine.errors import InputError, OutputExists  # noqa: E402
from tools.batch import run_batch  # noqa: E402

DICOMS = 6  # 5 real files + the truncated one; README.txt is not counted as an image


def _table(path: Path) -> dict[str, list]:
    return pq.read_table(path).to_pydict()


def _expected(bundle: Path, archive: Path) -> dict[tuple[str, int | None], object]:
    """What session.run gives for every image/frame of the archive, keyed like the table's rows."""
    import engine
    from engine import dicom
    from engine.errors import SliceRTError

    out = {}
    with engine.load(bundle, threads=1) as s:
        for p in sorted(archive.rglob("*.dcm")):
            name = os.path.relpath(p, archive)
            try:
                img = dicom.read(p)
                frames = list(img) if hasattr(img, "__len__") else [img]
                for sl in frames:
                    out[(name, sl.frame_index if hasattr(img, "__len__") else None)] = s.run(sl)
            except SliceRTError as exc:
                out[(name, None)] = exc
    return out


def _check_against_session(table: dict[str, list], expected: dict, task: str, labels: list[str]) -> None:
    assert len(table["file"]) == len(expected)
    for i, (f, frame, status) in enumerate(zip(table["file"], table["frame"], table["status"])):
        want = expected[(f, frame)]
        if isinstance(want, Exception):
            assert status == "refused" and table["error_class"][i] == type(want).__name__
            assert f in table["error_message"][i]
            continue
        assert status == "ok", table["error_message"][i]
        assert table["label"][i] == want.label
        if task == "classification":
            got = np.array([table[f"score_{lab}"][i] for lab in labels], np.float32)
            np.testing.assert_allclose(got, want.scores, rtol=0, atol=1e-6)
        else:
            for lab in labels:
                assert table[f"pixels_{lab}"][i] == want.pixel_counts[lab]
                if want.areas_mm2 is None:
                    assert table[f"area_mm2_{lab}"][i] is None
                else:
                    assert table[f"area_mm2_{lab}"][i] == pytest.approx(want.areas_mm2[lab], rel=1e-12)


@pytest.mark.parametrize("key", ["cls", "seg"])
def test_in_process_rows_equal_session_run(key, bundles, archive, tmp_path):
    import engine

    out = tmp_path / "r.parquet"
    s = run_batch(archive, bundles[key], out, chunk_size=2)
    t = _table(out)
    with engine.load(bundles[key]) as sess:
        task, labels = sess.task, list(sess.labels)
    _check_against_session(t, _expected(bundles[key], archive), task, labels)
    assert s.files == DICOMS and s.not_dicom_files == 1
    assert s.ok_files == 5 and s.refused == {"DicomError": 1} and s.failed == {}
    assert s.rows == 4 + 10 + 1  # emri_small.dcm is 10 frames, a row each; the refused file is one row
    frames = [fr for f, fr in zip(t["file"], t["frame"]) if f.endswith("emri_small.dcm")]
    assert frames == list(range(10))
    ok = [i for i, st in enumerate(t["status"]) if st == "ok"]
    assert all(t["sop_instance_uid"][i] and t["study_instance_uid"][i] for i in ok)
    assert all(t["total_ms"][i] > 0 and t["infer_ms"][i] > 0 for i in ok)
    assert set(t["worker"]) == {f"in-process:{os.getpid()}"}
    assert not out.with_name(out.name + ".parts").exists()


def test_resume_skips_done_files_and_reruns_changed_ones(bundles, archive, tmp_path):
    arch = tmp_path / "arch"
    shutil.copytree(archive, arch)
    out = tmp_path / "r.parquet"
    first = run_batch(arch, bundles["cls"], out)
    before = _table(out)
    # One file changes content, one is new: only those two run (a refused file with the same bytes is
    # done too: it would be refused again).
    ct = (arch / "patientA" / "CT_small.dcm")
    shutil.copy(arch / "patientA" / "MR_small.dcm", ct)
    shutil.copy(arch / "patientB" / "MR_small_RLE.dcm", arch / "patientB" / "copy.dcm")
    second = run_batch(arch, bundles["cls"], out)
    after = _table(out)
    assert first.resumed_files == 0 and second.resumed_files == DICOMS - 1
    assert second.files == DICOMS + 1
    assert len(after["file"]) == len(before["file"]) + 1  # one new file; the changed one replaced, not added
    keys = list(zip(after["file"], after["frame"]))
    assert len(keys) == len(set(keys)), "a file's rows appear twice"
    i = after["file"].index("patientA/CT_small.dcm")
    assert after["file_sha256"][i] != before["file_sha256"][before["file"].index("patientA/CT_small.dcm")]
    _check_against_session(after, _expected(bundles["cls"], arch), "classification",
                           ["normal", "nodule", "effusion"])


class _Stop(Exception):
    pass


def test_interrupted_run_leaves_no_half_table_and_resumes(bundles, archive, tmp_path):
    out = tmp_path / "r.parquet"
    calls = []

    def stop_after_two(done, total, elapsed):
        calls.append(done)
        if len(calls) == 2:
            raise _Stop

    with pytest.raises(_Stop):
        run_batch(archive, bundles["cls"], out, chunk_size=1, progress=stop_after_two)
    assert not out.exists(), "an interrupted run must not leave a table"
    parts = list(out.with_name(out.name + ".parts").glob("part-*.parquet"))
    assert len(parts) == 2 and not list(out.parent.rglob("*.tmp"))
    resumed = run_batch(archive, bundles["cls"], out, chunk_size=1)
    assert resumed.resumed_files == 2 and resumed.files == DICOMS
    clean = run_batch(archive, bundles["cls"], tmp_path / "clean.parquet")
    a, b = _table(out), _table(tmp_path / "clean.parquet")
    for col in ("file", "frame", "status", "label", "score_nodule", "file_sha256"):
        assert a[col] == b[col], col
    assert clean.ok_files == resumed.ok_files


def test_force_and_a_table_of_another_bundle(bundles, archive, tmp_path):
    out = tmp_path / "r.parquet"
    run_batch(archive, bundles["cls"], out)
    with pytest.raises(OutputExists, match="another bundle"):
        run_batch(archive, bundles["seg"], out)
    s = run_batch(archive, bundles["seg"], out, force=True)
    assert s.resumed_files == 0 and set(_table(out)["task"]) == {"segmentation"}


def test_list_file_glob_and_bad_inputs(bundles, archive, tmp_path):
    lst = tmp_path / "files.txt"
    lst.write_text(f"# two files\n{archive / 'patientA' / 'CT_small.dcm'}\n\n{archive / 'patientA' / 'MR_small.dcm'}\n")
    s = run_batch(lst, bundles["cls"], tmp_path / "a.parquet")
    assert s.files == 2 and s.ok_files == 2
    s = run_batch(str(archive / "**" / "MR_*.dcm"), bundles["cls"], tmp_path / "b.parquet")
    assert s.files == 2 and sorted(_table(tmp_path / "b.parquet")["file"]) == ["patientA/MR_small.dcm",
                                                                             "patientB/MR_small_RLE.dcm"]
    lst.write_text("missing.dcm\n")
    with pytest.raises(InputError, match="line 1"):
        run_batch(lst, bundles["cls"], tmp_path / "c.parquet")
    with pytest.raises(InputError, match="matches no file"):
        run_batch(str(tmp_path / "*.nothing"), bundles["cls"], tmp_path / "c.parquet")
    with pytest.raises(InputError, match="chunk_size"):
        run_batch(archive, bundles["cls"], tmp_path / "c.parquet", chunk_size=0)


def test_labels_give_accuracy_with_ci(bundles, archive, tmp_path):
    out = tmp_path / "r.parquet"
    run_batch(archive, bundles["cls"], out)
    t = _table(out)
    singles = [(f, lab) for f, fr, lab, st in zip(t["file"], t["frame"], t["label"], t["status"])
               if st == "ok" and fr is None]
    assert len(singles) == 4
    others = {"normal": "nodule", "nodule": "effusion", "effusion": "normal"}
    rows = [f"{f},{lab if k % 2 == 0 else others[lab]}" for k, (f, lab) in enumerate(singles)]
    rows.append("patientB/truncated.dcm,normal")  # labelled, but the engine refuses it
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\n" + "\n".join(rows) + "\n")
    s = run_batch(archive, bundles["cls"], out, labels=str(labels))
    a = s.accuracy
    assert a["n"] == 4 and a["accuracy"] == 0.5 and a["labelled_but_refused"] == 1
    lo, hi = a["accuracy_ci95"]
    assert 0.0 < lo < 0.5 < hi < 1.0
    from tools.errors import LabelsError

    labels.write_text("file,label\nnot/there.dcm,normal\n")
    with pytest.raises(LabelsError, match="not/there.dcm"):
        run_batch(archive, bundles["cls"], out, labels=str(labels))


def test_cli_batch_json_and_pandas(bundles, archive, tmp_path):
    pd = pytest.importorskip("pandas")
    out = tmp_path / "cli.parquet"
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "batch", str(archive), "--bundle", str(bundles["seg"]),
                           "--out", str(out), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["files"] == DICOMS and summary["refused"] == {"DicomError": 1}
    df = pd.read_parquet(out)
    assert len(df) == 15 and set(df["status"]) == {"ok", "refused"}
    bad = subprocess.run([sys.executable, "-m", "engine.cli", "batch", str(tmp_path / "nope"), "--bundle",
                          str(bundles["seg"]), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "InputError" in bad.stderr and "Traceback" not in bad.stderr


# -- Ray: a real local cluster (one per test session) --------------------------------------------------

def test_ray_two_workers_give_the_in_process_results(ray_cluster, bundles, archive, tmp_path):
    s = run_batch(archive, bundles["cls"], tmp_path / "ray.parquet", executor="ray", workers=2, chunk_size=1)
    t = _table(tmp_path / "ray.parquet")
    _check_against_session(t, _expected(bundles["cls"], archive), "classification",
                           ["normal", "nodule", "effusion"])
    assert s.executor == "ray" and s.workers == 2 and s.worker_deaths == 0
    assert all(w.startswith("ray:") for w in t["worker"])
    assert s.startup_s > 0


def test_ray_worker_killed_mid_job_every_file_once(ray_cluster, bundles, archive, tmp_path):
    killed = []

    def kill_one(ex):
        if not killed:
            pids = ex.busy_pids() or list(ex._pids.values())
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    s = run_batch(archive, bundles["seg"], tmp_path / "ray.parquet", executor="ray", workers=2, chunk_size=1,
                  on_chunk=kill_one)
    assert killed and s.worker_deaths >= 1
    t = _table(tmp_path / "ray.parquet")
    keys = list(zip(t["file"], t["frame"]))
    assert len(keys) == len(set(keys))
    _check_against_session(t, _expected(bundles["seg"], archive), "segmentation",
                           ["background", "organ", "lesion"])
    assert s.files == DICOMS and s.failed == {}


def test_dicom_out_writes_seg_and_sr_per_file(bundles, archive, tmp_path):
    pytest.importorskip("highdicom")
    import pydicom

    out, dcm = tmp_path / "r.parquet", tmp_path / "dicom-out"
    run_batch(archive, bundles["seg"], out, dicom_out=dcm)
    t = _table(out)
    for f, frame, status, written, err in zip(t["file"], t["frame"], t["status"], t["dicom_out"],
                                              t["dicom_out_error"]):
        if status != "ok":
            assert written is None
            continue
        if frame is not None and err is not None:
            # emri_small.dcm has a Frame of Reference but no per-frame plane positions: its SEG cannot be
            # placed, and the batch records that typed refusal instead of writing a misplaced SEG.
            assert written is None and err.startswith("DicomError:") and "Plane Position" in err
            continue
        assert err is None, err
        paths = written.split(";")
        assert paths[-1] == str(dcm / (f + ".sr.dcm")) and any(p.endswith(".seg.dcm") or ".seg-" in p for p in paths)
        sr = pydicom.dcmread(paths[-1])
        src = pydicom.dcmread(archive / f, stop_before_pixels=True)
        refs = {r.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for ser in s.ReferencedSeriesSequence for r in ser.ReferencedSOPSequence}
        assert src.SOPInstanceUID in refs
    # UIDs derive from the file's and the bundle's hashes: a forced re-run writes the same objects.
    first = pydicom.dcmread(dcm / "patientA" / "CT_small.dcm.sr.dcm").SOPInstanceUID
    run_batch(archive, bundles["seg"], out, dicom_out=dcm, force=True)
    assert pydicom.dcmread(dcm / "patientA" / "CT_small.dcm.sr.dcm").SOPInstanceUID == first
