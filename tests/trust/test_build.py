"""Build-time side: the extra ONNX outputs do not move the answers of any variant, a stale trust.json is
refused, and `slicert inspect` shows the measurements."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))

import tiny_models  # noqa: E402

from engine.errors import InputError  # noqa: E402


def test_trust_outputs_leave_every_variant_unchanged(trust_dirs):
    from engine.trust.graph import add_trust_outputs, find_classifier_tail, verify_unchanged

    q = trust_dirs["cls_quant"]
    for f in (trust_dirs["cls_export"] / "model.onnx", q / "model.fp16.onnx", q / "model.int8.onnx",
              q / "model.int8.ort.onnx"):
        src = f.read_bytes()
        ext = add_trust_outputs(src)
        assert ext is not None, f.name
        err = verify_unchanged(src, ext, batch=3, seed=4)
        assert err <= (2e-3 if "fp16" in f.name else 1e-5), (f.name, err)
    assert find_classifier_tail(tiny_models.segmenter()) is None
    assert add_trust_outputs(tiny_models.segmenter().SerializeToString()) is None


def test_manifest_records_the_trust_section(trust_bundles):
    from engine.bundle import open_bundle

    with open_bundle(trust_bundles["cls"]) as b:
        t = b.manifest["trust"]
        assert t["outputs"] == {"features": "slicert_features", "cam": "slicert_cam"}
        assert set(t["variants"]) == set(b.variants)
        assert t["eligibility"]["modalities"] == ["CR", "DX"]
        assert "fitted_files" not in t
        for v, entry in b.variants.items():
            assert entry["trust_outputs_max_abs_change"] <= 2e-3, v
    with open_bundle(trust_bundles["plain"]) as b:
        assert b.manifest["trust"] is None


def test_stale_trust_file_is_refused(trust_dirs, tmp_path):
    from engine.bundle import build_bundle

    folder = tmp_path / "quant"
    shutil.copytree(trust_dirs["cls_quant"], folder)
    trust = json.loads((folder / "trust.json").read_text())
    trust["fitted_files"]["fp16"]["onnx"] = "0" * 64
    (folder / "trust.json").write_text(json.dumps(trust))
    with pytest.raises(InputError, match=r"model\.fp16\.onnx is not the model trust\.json was fitted on"):
        build_bundle(folder, tmp_path / "x.slicert", target="cpu")


def test_inspect_shows_eligibility_ood_and_calibration(trust_bundles):
    from typer.testing import CliRunner

    from engine.cli import _register, app

    _register()
    out = CliRunner().invoke(app, ["inspect", str(trust_bundles["cls"])], terminal_width=200)
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "intended inputs" in text and "CR, DX" in text
    assert "false alarms" in text and "AUROC" in text and "ECE" in text
    assert "int8" in text
