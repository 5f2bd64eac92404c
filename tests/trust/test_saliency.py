"""Saliency on request: a class-activation map from the same inference call (extra ONNX output), in the
source geometry like masks; a segmenter's per-pixel confidence; off by default."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from engine.errors import InputError

from .conftest import SRC_HW


def test_cam_is_in_source_geometry_from_one_inference_call(cls_trust_session, trust_dirs, monkeypatch):
    s = cls_trust_session
    image = trust_dirs["cls_splits"]["test"][3]
    assert s.run(image).saliency is None  # off by default
    calls = []
    backend = s._backend
    real = type(backend).infer

    def counting(self, n=1):
        calls.append(n)
        return real(self, n)

    monkeypatch.setattr(type(backend), "infer", counting)
    r = s.run(image, saliency=True)
    assert calls == [1]  # one inference call: the CAM came out of it, no second pass
    assert r.saliency.shape == SRC_HW and r.saliency.dtype == np.float32
    assert float(r.saliency.max()) == pytest.approx(1.0) and float(r.saliency.min()) >= 0.0


def test_cam_output_is_the_feature_maps_times_the_classifier_weights(trust_bundles, trust_dirs):
    """slicert_cam of the bundled model = sum_c W[k, c] * relu(conv(x))[c]; its spatial mean + bias = logits."""
    import onnxruntime as ort

    from engine.bundle import open_bundle
    from engine.preprocess import preprocess

    with open_bundle(trust_bundles["cls"]) as b:
        model_bytes = b.read(b.variants["fp32"]["onnx"])
        spec = b.spec
    m = onnx.load_from_string(model_bytes)
    w = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    m.graph.output.append(onnx.helper.make_tensor_value_info("r", onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = preprocess(trust_dirs["cls_splits"]["test"][0], spec)
    scores, feats, cam, fmap = sess.run(["scores", "slicert_features", "slicert_cam", "r"], {"input": x})
    want = np.einsum("kc,nchw->nkhw", w["fc_w"], fmap)
    np.testing.assert_allclose(cam, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cam.mean(axis=(2, 3)) + w["fc_b"], scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feats, fmap.mean(axis=(2, 3)), rtol=1e-4, atol=1e-6)


def test_cam_peak_lands_where_the_model_looks(cls_trust_session, trust_dirs):
    """The source pixel with the highest saliency lies in the model-grid cell of the CAM's maximum."""
    import onnxruntime as ort

    from engine.preprocess import preprocess

    s = cls_trust_session
    image = trust_dirs["cls_splits"]["test"][7]
    r = s.run(image, saliency=True)
    sess = ort.InferenceSession(s.bundle.read(s.bundle.variants["fp32"]["onnx"]), providers=["CPUExecutionProvider"])
    cam = sess.run(["slicert_cam"], {"input": preprocess(image, s.spec)})[0][0, int(np.argmax(r.scores))]
    cy, cx = np.unravel_index(np.argmax(cam), cam.shape)
    # Back to the source: 32 model rows/cols cover 97 x 83 source pixels.
    y0, y1 = int(cy * SRC_HW[0] / cam.shape[0]), int(np.ceil((cy + 1) * SRC_HW[0] / cam.shape[0]))
    x0, x1 = int(cx * SRC_HW[1] / cam.shape[1]), int(np.ceil((cx + 1) * SRC_HW[1] / cam.shape[1]))
    assert float(r.saliency[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1].max()) >= 0.95


def test_segmenter_confidence_map(trust_bundles, trust_dirs):
    import onnxruntime as ort

    import engine
    from engine.preprocess import preprocess

    image = trust_dirs["seg_splits"]["test"][1]
    with engine.load(trust_bundles["seg"], threads=1) as s:
        r = s.run(image, saliency=True)
        t = s.info["trust"]["temperature"]
        sess = ort.InferenceSession(s.bundle.read(s.bundle.variants["fp32"]["onnx"]),
                                    providers=["CPUExecutionProvider"])
        logits = sess.run(["logits"], {"input": preprocess(image, s.spec)})[0][0] / t
        batch = s.run_batch([image, image], saliency=True)
        frames = list(s.stream(np.stack([image, image]), drop_stale=False, saliency=True))
    assert r.saliency.shape == SRC_HW == r.mask.shape
    assert float(r.saliency.min()) >= 1 / 3 - 1 / 255  # max softmax of 3 classes is at least 1/3
    e = np.exp(logits - logits.max(axis=0))
    conf = (e / e.sum(axis=0)).max(axis=0)  # (32, 32) model grid
    # The model pixel each source pixel shows, from the masks' own source mapping (row and column index maps).
    from engine.postprocess import mask_to_source

    grid = np.indices((32, 32)).astype(np.uint8)
    rows, cols = (mask_to_source(g, SRC_HW, s.spec) for g in grid)
    np.testing.assert_allclose(r.saliency, conf[rows, cols], atol=1 / 255 + 1e-6)
    for b in batch + frames:
        np.testing.assert_array_equal(b.saliency, r.saliency)


def test_saliency_needs_the_cam_output(trust_bundles):
    import engine

    with engine.load(trust_bundles["plain"], threads=1) as s:
        assert "unavailable" in s.info["trust"]["saliency"]
        with pytest.raises(InputError, match="no class-activation output"):
            s.run(np.zeros((64, 64), np.uint16), saliency=True)
