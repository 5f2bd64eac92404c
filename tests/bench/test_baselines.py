"""The baseline pipelines do the same work as SliceRT (so speed-ups never come from skipped steps), and the
overhead references compute what Session.run computes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools import baselines as bl  # noqa: E402
from engine.bench.runner import run_benchmark  # noqa: E402
from engine.spec import PreprocessSpec  # noqa: E402

ENV = {"slicert": "test"}


def _cxr_like_spec():
    return PreprocessSpec(
        out_height=128,
        out_width=128,
        voi_function="linear",
        window_center=2048.0,
        window_width=4096.0,
        resize="area",
        normalize="zscore",
    )


def test_user_preprocessing_of_real_cr_matches_engine():
    import engine.dicom
    from pydicom.data import get_testdata_file

    inputs = bl.cr_file(get_testdata_file("RG1_UNCR.dcm", download=False))
    spec = _cxr_like_spec()
    # The user applies the file's own window (pydicom apply_voi_lut) and inverts MONOCHROME1 by hand:
    # that is SliceRT's spec for this file under voi_policy "dicom".
    derived = engine.dicom.read(inputs.items[0]).spec_for(spec, "dicom")
    assert derived.invert and derived.window_width == 30000.0
    agree = bl.input_agreement(inputs, spec, derived)
    assert agree["value_range"] > 1.0
    assert agree["max_abs_diff"] <= 1e-4 * agree["value_range"]


def test_user_preprocessing_of_raw_images_matches_engine(rng):
    spec = _cxr_like_spec()
    imgs = [rng.integers(0, 4096, size=(192, 176), dtype=np.uint16) for _ in range(2)]
    agree = bl.input_agreement(bl.raw_images("sim", imgs, "random"), spec, spec)
    assert agree["max_abs_diff"] <= 1e-4 * agree["value_range"]


def test_user_preprocessing_of_real_cine_matches_engine():
    import deid_data

    path = Path(deid_data.__file__).parent / "data" / "ultrasounds" / "ultrasound-multiframe.dcm"
    cine = bl.cine_frames(path, max_frames=2)
    assert len(cine.items) == 2 and cine.items[0].shape == (600, 800, 3) and len(cine.slices) == 2
    assert cine.pixel_spacing_mm is not None
    spec = PreprocessSpec(
        out_height=96,
        out_width=96,
        voi_function="linear",
        window_center=128.0,
        window_width=256.0,
        resize="area",
    )
    agree = bl.input_agreement(cine, spec, cine.slices[0].spec_for(spec, "dicom"))
    # cv2's RGB->grey rounds luma to uint8: at most half a grey level (1/255 of the range) apart.
    assert agree["max_abs_diff"] <= 0.5 / 255 + 1e-5


def test_overhead_references_compute_what_session_run_computes(tiny_bundle, rng):
    import engine

    x = rng.integers(0, 4096, size=(40, 36), dtype=np.uint16)
    with engine.load(tiny_bundle, threads=1) as s:
        want = s.run(x).scores.copy()
        variant, model_file, optimized = s.variant, s.info["model_file"], s.info["model_optimized"]
    direct = bl.backend_direct("direct", tiny_bundle, x, variant=variant, threads=1)
    raw = bl.raw_calls("raw", tiny_bundle, x, model_file=model_file, optimized=optimized, threads=1)
    got = {}

    class Grab:  # record each reference's output right after its step
        def __init__(self, cfg):
            self.cfg, self.name, self.meta, self.items_per_call = cfg, cfg.name, cfg.meta, 1

        def load(self):
            self.cfg.load()

        def step(self):
            st = self.cfg.step()
            got[self.name] = np.array(self.cfg.last_output, copy=True)
            return st

        def close(self):
            self.cfg.close()

    run_benchmark([Grab(direct), Grab(raw)], n=3, warmup=0, environment=ENV)
    np.testing.assert_allclose(got["direct"], want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got["raw"], want, rtol=1e-6, atol=1e-7)


def test_user_ort_pipeline_and_slicert_agree_on_the_same_model(tiny_bundle, tiny_classifier_onnx, rng):
    from engine.bundle import open_bundle

    with open_bundle(tiny_bundle) as b:
        spec = b.spec  # the user pipeline preprocesses exactly as the bundle says
    inputs = bl.raw_images("sim", [rng.integers(0, 4096, size=(64, 64), dtype=np.uint16)], "random")
    user = bl.onnxruntime_user("ort", tiny_classifier_onnx["path"], inputs, spec, "classification", threads=1)
    ours = bl.slicert("slicert", tiny_bundle, inputs, threads=1)
    run = run_benchmark([user, ours], n=5, warmup=1, environment=ENV)
    for c in run.configurations:
        assert {"preprocess", "infer", "postprocess"} <= set(c.stages)
    label, probs = user.last_output
    np.testing.assert_allclose(probs, ours.last_result.scores, atol=1e-5)
    assert ours.last_result.label == ours.last_result.labels[label]
