"""Hostile bundles (issue 13): external data, unbounded loops, resource bombs, duplicate names/keys,
failed accuracy gates, signatures, files that shrink after open, typed load-time errors, and
terminal escapes in `slicert inspect`. Every bundle here is built by the real builder from the tiny
synthetic models (tests/runtime/tiny_models.py) and then edited the way an attacker would."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny_models
from onnx import TensorProto, helper, numpy_helper

import engine
from engine.bundle import build_bundle, open_bundle, signing, write_bundle
from engine.errors import AccuracyGateError, BundleError, DicomError, InputError, SignatureError

FP32 = "onnx/model.fp32.onnx"


def _parts(bundle: Path) -> tuple[dict, dict[str, bytes]]:
    with open_bundle(bundle) as b:
        manifest = json.loads(json.dumps(b.manifest))
        members = {n: b.read(n) for n in b.members}
    manifest.pop("members")
    return manifest, members


def _rewrite(src: Path, dst: Path, *, models: dict[str, bytes] | None = None, edit=None, **kw) -> Path:
    """`src` rewritten with members replaced and the manifest edited, digests recomputed by the real
    writer: integrity passes, only the checks under test can refuse it."""
    manifest, members = _parts(src)
    members.update(models or {})
    if edit is not None:
        edit(manifest)
    return write_bundle(dst, manifest, members, force=True, **kw)


def _fp32_only(manifest: dict) -> None:
    manifest["variants"] = {"fp32": {k: v for k, v in manifest["variants"]["fp32"].items() if k != "ort"}}
    manifest["default_variant"] = {"onnxruntime": "fp32", "tensorrt": "fp32"}


@pytest.fixture(scope="module")
def fp32_bundle(model_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("sec") / "fp32.slicert"
    build_bundle(model_dirs["cls_export"], out, precision="fp32", target="cpu")
    return out


def _external(t: onnx.TensorProto, location: str) -> None:
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * 4))):
        e = t.external_data.add()
        e.key, e.value = key, value


def _with_external(where: str, location: str) -> bytes:
    m = tiny_models.classifier()
    g = m.graph
    if where == "initializer":
        _external(g.initializer[1], location)
    elif where == "constant-attribute":
        t = numpy_helper.from_array(np.zeros(3, np.float32), "c")
        _external(t, location)
        g.node.insert(0, helper.make_node("Constant", [], ["unused_c"], value=t))
    elif where == "if-subgraph":
        t = numpy_helper.from_array(np.zeros(3, np.float32), "w_then")
        _external(t, location)
        then_g = helper.make_graph([helper.make_node("Identity", ["w_then"], ["o"])], "then", [],
                                   [helper.make_tensor_value_info("o", TensorProto.FLOAT, [3])], [t])
        else_g = helper.make_graph([helper.make_node("Identity", ["fc_b"], ["o2"])], "else", [],
                                   [helper.make_tensor_value_info("o2", TensorProto.FLOAT, [3])])
        g.initializer.append(numpy_helper.from_array(np.array(True), "flag"))
        g.node.append(helper.make_node("If", ["flag"], ["unused_if"], then_branch=then_g, else_branch=else_g))
    elif where == "sparse-initializer":
        values = numpy_helper.from_array(np.ones(1, np.float32), "sp")
        _external(values, location)
        indices = numpy_helper.from_array(np.zeros(1, np.int64), "sp_idx")
        g.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [3]))
    return m.SerializeToString()


# -- Security 1: external data ----------------------------------------------------------------------
@pytest.mark.parametrize("where", ["initializer", "constant-attribute", "if-subgraph", "sparse-initializer"])
@pytest.mark.parametrize("location", ["/etc/passwd", "../../../../etc/passwd"])
def test_external_data_is_refused_before_any_runtime(fp32_bundle, tmp_path, where, location, monkeypatch):
    bad = _rewrite(fp32_bundle, tmp_path / "ext.slicert", models={FP32: _with_external(where, location)},
                   edit=_fp32_only)
    monkeypatch.chdir("/")  # a service's working directory: where ONNX Runtime would resolve the path
    import onnxruntime

    created = []
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: created.append(a))
    with pytest.raises(BundleError, match=rf"member '{FP32}'.*refers to external data '{location}'"):
        engine.load(bad)
    with pytest.raises(BundleError, match=r"external data"):
        open_bundle(bad)  # `slicert inspect` refuses it too
    assert created == []  # refused before any runtime saw the bytes


def test_external_data_in_the_optimized_member_is_refused(model_dirs, tmp_path):
    good = tmp_path / "cpu.slicert"
    build_bundle(model_dirs["cls_export"], good, precision="fp32", target="cpu")
    bad = _rewrite(good, tmp_path / "ext-ort.slicert", models={"ort/model.fp32.ort.onnx": _with_external(
        "initializer", "/etc/shadow")})
    with pytest.raises(BundleError, match=r"'ort/model\.fp32\.ort\.onnx'.*external data '/etc/shadow'"):
        engine.load(bad, use_optimized=False)  # every ONNX member is checked, used or not


def test_build_refuses_a_source_with_external_data(model_dirs, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.onnx").write_bytes(_with_external("initializer", "weights.bin"))
    (src / "model.json").write_text((model_dirs["cls_export"] / "model.json").read_text())
    with pytest.raises(InputError, match=r"external data 'weights\.bin'"):
        build_bundle(src, tmp_path / "x.slicert", precision="fp32", target="cpu")


# -- Security 3: loops and bombs ----------------------------------------------------------------------
def _loop_model(trips: int | None, *, dynamic: bool = False, body_ops: int = 1, nested: int | None = None):
    """The classifier with a Loop over its input before the conv: `trips` iterations (None: while-loop)."""
    m = tiny_models.classifier()
    g = m.graph
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    nodes, v = [], "v_in"
    for i in range(body_ops):
        nodes.append(helper.make_node("Mul", [v, "one"], [f"v{i}"]))
        v = f"v{i}"
    nodes.append(helper.make_node("Identity", [v], ["v_out"]))
    nodes.append(helper.make_node("Identity", ["c_in"], ["c_out"]))
    inits = [one]
    if nested is not None:
        inits.append(numpy_helper.from_array(np.array(nested, np.int64), "M_in"))
        inner = helper.make_graph([helper.make_node("Identity", ["ci"], ["co"]), helper.make_node("Identity", ["x"], ["y"])],
                                  "inner", [helper.make_tensor_value_info("j", TensorProto.INT64, []),
                                            helper.make_tensor_value_info("ci", TensorProto.BOOL, []),
                                            helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                                  [helper.make_tensor_value_info("co", TensorProto.BOOL, []),
                                   helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        nodes.insert(0, helper.make_node("Loop", ["M_in", "c_in", "v_in"], ["v_inner"], body=inner))
    body = helper.make_graph(nodes, "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                                             helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
                                             helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
                             [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)], inits)
    g.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    if dynamic:
        g.node.insert(0, helper.make_node("Size", ["input"], ["M"]))
    elif trips is not None:
        g.initializer.append(numpy_helper.from_array(np.array(trips, np.int64), "M"))
    g.node.insert(len(g.node) - 5 + (1 if dynamic else 0) + 5 - 5, helper.make_node(
        "Loop", ["M" if (trips is not None or dynamic) else "", "cond", "input"], ["looped"], body=body))
    conv = next(n for n in g.node if n.op_type == "Conv")
    conv.input[0] = "looped"
    return m.SerializeToString()


@pytest.mark.parametrize("trips,match", [(10**15, r"runs 1000000000000000 iterations"), (2**63 - 1, r"iterations"),
                                         (65537, r"runs 65537 iterations"), (-5, r"runs -5 iterations"),
                                         (None, r"no trip count")])
def test_unbounded_loops_are_refused_before_warm_up(fp32_bundle, tmp_path, trips, match):
    bad = _rewrite(fp32_bundle, tmp_path / "loop.slicert", models={FP32: _loop_model(trips)}, edit=_fp32_only)
    t0 = time.perf_counter()
    with pytest.raises(BundleError, match=match):
        engine.load(bad)
    assert time.perf_counter() - t0 < 10


def test_dynamic_and_nested_loop_counts_are_refused(fp32_bundle, tmp_path):
    bad = _rewrite(fp32_bundle, tmp_path / "dyn.slicert", models={FP32: _loop_model(None, dynamic=True)},
                   edit=_fp32_only)
    with pytest.raises(BundleError, match=r"trip count 'M' computed at run time"):
        engine.load(bad)
    bad = _rewrite(fp32_bundle, tmp_path / "nest.slicert", models={FP32: _loop_model(300, nested=300)},
                   edit=_fp32_only)
    with pytest.raises(BundleError, match=r"90000 iterations in all"):
        engine.load(bad)


def test_a_small_constant_loop_still_loads_and_runs(fp32_bundle, tmp_path, pixels):
    ok = _rewrite(fp32_bundle, tmp_path / "loop-ok.slicert", models={FP32: _loop_model(4)}, edit=_fp32_only)
    with engine.load(ok) as s, engine.load(fp32_bundle, precision="fp32") as ref:
        assert np.allclose(s.run(pixels).scores, ref.run(pixels).scores, atol=1e-6)  # Mul by 1, 4 times


def test_warm_up_has_a_time_bound(fp32_bundle, tmp_path, monkeypatch):
    import engine.backends.onnxruntime as ort_backend

    slow = _rewrite(fp32_bundle, tmp_path / "slow.slicert", models={FP32: _loop_model(65536, body_ops=8)},
                    edit=_fp32_only)
    monkeypatch.setattr(ort_backend, "WARMUP_TIME_LIMIT_S", 0.3)
    t0 = time.perf_counter()
    with pytest.raises(BundleError, match=r"took more than 0\.3 s and was stopped"):
        engine.load(slow, threads=1)
    assert time.perf_counter() - t0 < 8


def _zip(path: Path, entries: list[tuple[str, bytes, int]]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names we write on purpose
        with zipfile.ZipFile(path, "w") as zf:
            for name, data, method in entries:
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = method
                zf.writestr(info, data)
    return path


def test_manifest_deflate_bomb_is_refused_before_inflating(tmp_path):
    import tracemalloc

    bomb = _zip(tmp_path / "bomb.slicert", [("manifest.json", b" " * (300 << 20), zipfile.ZIP_DEFLATED)])
    assert bomb.stat().st_size < 1 << 20
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(BundleError, match=r"manifest\.json is 314572800 bytes, more than"):
        open_bundle(bomb)
    assert time.perf_counter() - t0 < 2 and tracemalloc.get_traced_memory()[1] < 8 << 20
    tracemalloc.stop()
    ratio = _zip(tmp_path / "ratio.slicert", [("manifest.json", b"{" + b" " * (20 << 20) + b"}", zipfile.ZIP_DEFLATED)])
    with pytest.raises(BundleError, match=r"decompression bomb"):
        open_bundle(ratio)


def test_manifest_whose_header_understates_its_size_is_capped(fp32_bundle, tmp_path):
    manifest, _ = _parts(fp32_bundle)
    raw = json.dumps(manifest).encode()
    p = _zip(tmp_path / "liar.slicert", [("manifest.json", raw + b" " * 5000, zipfile.ZIP_DEFLATED)])
    data = bytearray(p.read_bytes())
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24:cd + 28] = (100).to_bytes(4, "little")  # central directory: uncompressed size 100
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"manifest\.json"):
        open_bundle(p)


def test_two_manifests_or_duplicate_keys_are_refused(fp32_bundle, tmp_path):
    manifest, members = _parts(fp32_bundle)
    good = write_bundle(tmp_path / "g.slicert", manifest, members)
    with zipfile.ZipFile(good) as zf:
        entries = [(i.filename, zf.read(i.filename), zipfile.ZIP_STORED) for i in zf.infolist()]
    other = json.loads(entries[0][1])
    other["model"]["labels"] = ["a", "b", "c"]
    two = _zip(tmp_path / "two.slicert", [*entries, ("manifest.json", json.dumps(other).encode(), zipfile.ZIP_STORED)])
    with pytest.raises(BundleError, match=r"'manifest\.json' appears twice"):
        engine.load(two)
    dup_member = _zip(tmp_path / "dupm.slicert", [*entries, (FP32, entries[1][1], zipfile.ZIP_STORED)])
    with pytest.raises(BundleError, match=r"appears twice"):
        engine.load(dup_member)
    text = entries[0][1].decode()
    for key, dup in (("voi_policy", text.replace("{", '{"voi_policy": "model", ', 1)),  # top level and nested
                     ("task", text.replace('"model": {', '"model": {"task": "segmentation", ', 1))):
        p = _zip(tmp_path / "dupk.slicert", [("manifest.json", dup.encode(), zipfile.ZIP_STORED), *entries[1:]])
        with pytest.raises(BundleError, match=rf"duplicate JSON key {key!r}"):
            open_bundle(p)


# -- silently wrong: gates --------------------------------------------------------------------------
def _edit_manifest_in_zip(src: Path, dst: Path, edit) -> Path:
    """`src` with only manifest.json edited in place (no writer validation; member digests unchanged)."""
    with zipfile.ZipFile(src) as zf:
        entries = [(i.filename, zf.read(i.filename), zipfile.ZIP_STORED) for i in zf.infolist()]
    m = json.loads(entries[0][1])
    edit(m)
    return _zip(dst, [("manifest.json", json.dumps(m).encode(), zipfile.ZIP_STORED), *entries[1:]])


def _fail_gate(variant: str, form: str | None = None):
    def edit(m: dict) -> None:
        gate = m["variants"][variant].setdefault("accuracy_gate", {})
        if form is None:
            gate["passed"], gate["detail"] = False, "AUC dropped 0.2"
        else:
            gate.setdefault("forms", {})[form] = {"passed": False, "detail": "AUC dropped 0.2"}
    return edit


def test_best_and_default_never_pick_a_failed_variant(cls_bundle, tmp_path):
    with engine.load(cls_bundle) as s:
        assert s.variant == "int8"  # the fixture's best on CPU
    for form in (None, "onnxruntime"):
        def with_default(m, form=form):
            _fail_gate("int8", form)(m)
            m["default_variant"]["onnxruntime"] = "int8"
        with pytest.raises(BundleError, match=r"default_variant\.\w+ names 'int8', whose accuracy gate failed"):
            _rewrite(cls_bundle, tmp_path / "def.slicert", edit=with_default)  # the writer refuses it
        bad = _edit_manifest_in_zip(cls_bundle, tmp_path / "def.slicert", with_default)  # a hand-made file
        with pytest.raises(BundleError, match=r"default_variant\.\w+ names 'int8', whose accuracy gate failed"):
            engine.load(bad)

        def without_default(m, form=form):
            _fail_gate("int8", form)(m)
            for b in [b for b, v in m["default_variant"].items() if v == "int8" and form in (None, b)]:
                m["default_variant"].pop(b)
        skipped = _rewrite(cls_bundle, tmp_path / "skip.slicert", edit=without_default)
        with engine.load(skipped, backend="onnxruntime") as s:
            assert s.variant == "fp32"  # BEST_ORDER on CPU: int8 (failed) -> mixed (absent) -> fp32
        with engine.load(skipped, backend="onnxruntime", precision="int8") as s:
            assert s.variant == "int8"  # an explicit request is the caller's choice


def test_every_variant_failed_is_an_accuracy_gate_error(fp32_bundle, tmp_path):
    def edit(m):
        _fp32_only(m)
        _fail_gate("fp32")(m)
        m.pop("default_variant")
    bad = _rewrite(fp32_bundle, tmp_path / "allfail.slicert", edit=edit)
    with pytest.raises(AccuracyGateError, match=r"every variant failed its accuracy gate"):
        engine.load(bad, backend="onnxruntime")


def test_gate_fields_must_be_booleans(fp32_bundle, tmp_path):
    def edit(m):
        m["variants"]["fp32"]["accuracy_gate"] = {"passed": "yes"}
    with pytest.raises(BundleError, match=r"accuracy_gate\.passed must be true, false or null"):
        _rewrite(fp32_bundle, tmp_path / "yes.slicert", edit=edit)


# -- Security 2: signatures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    a = signing.generate_keypair(root / "a.pem")
    b = signing.generate_keypair(root / "b.pem")
    return {"a": a, "b": b}


def test_signed_bundle_verifies_with_its_key_and_only_with_it(fp32_bundle, tmp_path, keys, pixels):
    priv, pub, fp = keys["a"]
    assert oct(priv.stat().st_mode & 0o777) == "0o600"
    signed = _rewrite(fp32_bundle, tmp_path / "signed.slicert", sign_key=priv)
    with engine.load(signed, trusted_keys=[pub]) as s:
        assert s.info["signature"] == {"signed": True, "signer": fp, "verified": True,
                                       "detail": f"signed by trusted key {fp}; signature verified"}
        s.run(pixels)
    with engine.load(signed, trusted_keys=[pub.read_bytes()]) as s:  # PEM bytes work too
        assert s.info["signature"]["verified"]
    with engine.load(signed) as s:  # no trusted keys: checked against its own key, signer not trusted
        assert s.info["signature"]["signer"] == fp and s.info["signature"]["verified"] is False
    with pytest.raises(SignatureError, match=rf"signed by key {fp}, which is not one of the trusted keys"):
        engine.load(signed, trusted_keys=[keys["b"][1]])
    with pytest.raises(SignatureError, match=r"is not signed"):
        engine.load(fp32_bundle, trusted_keys=[pub])
    with engine.load(fp32_bundle) as s:
        assert s.info["signature"]["signed"] is False


def test_a_signed_bundle_edited_after_signing_is_refused(fp32_bundle, tmp_path, keys):
    priv, pub, _ = keys["a"]
    signed = _rewrite(fp32_bundle, tmp_path / "s.slicert", sign_key=priv)
    with zipfile.ZipFile(signed) as zf:
        entries = [(i.filename, zf.read(i.filename), zipfile.ZIP_STORED) for i in zf.infolist()]
    m = json.loads(entries[0][1])
    m["model"]["labels"] = ["normal", "effusion", "nodule"]  # swapped labels: digests still match
    tampered = _zip(tmp_path / "t.slicert", [("manifest.json", json.dumps(m, indent=2, sort_keys=True).encode(),
                                               zipfile.ZIP_STORED), *entries[1:]])
    for kw in ({}, {"trusted_keys": [pub]}):
        with pytest.raises(SignatureError, match=r"does not match the manifest"):
            engine.load(tampered, **kw)
    sig = json.loads({n: d for n, d, _ in entries}["signature.json"])
    sig["fingerprint"] = "0" * 64
    forged = _zip(tmp_path / "f.slicert", [(n, json.dumps(sig).encode() if n == "signature.json" else d, c)
                                           for n, d, c in entries])
    with pytest.raises(SignatureError, match=r"names signer"):
        open_bundle(forged)


@pytest.mark.parametrize("bad,match", [([], r"trusted_keys is empty"), (["/nonexistent/key.pem"], r"cannot read"),
                                       ([b"not a key"], r"not a PEM public key"), (3, r"trusted_keys must be")])
def test_bad_trusted_keys_are_input_errors(fp32_bundle, bad, match):
    with pytest.raises(InputError, match=match):
        engine.load(fp32_bundle, trusted_keys=bad)


def test_private_key_given_as_trusted_key_is_refused(fp32_bundle, keys):
    with pytest.raises(InputError, match=r"not a PEM public key"):
        engine.load(fp32_bundle, trusted_keys=[keys["a"][0]])


def test_cli_keygen_build_sign_and_inspect(model_dirs, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "engine.cli", *map(str, args)], capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": "200"}, check=False)
    r = cli("keygen", tmp_path / "k.pem")
    assert r.returncode == 0, r.stderr
    fp = r.stdout.split("fingerprint ")[1].strip()
    r = cli("build", model_dirs["cls_export"], "--out", tmp_path / "b.slicert", "--precision", "fp32", "--target",
            "cpu", "--sign", tmp_path / "k.pem")
    assert r.returncode == 0, r.stderr
    r = cli("inspect", tmp_path / "b.slicert")
    assert r.returncode == 0 and f"signed by key {fp}" in r.stdout and "signer not checked" in r.stdout, r.stdout
    r = cli("inspect", tmp_path / "b.slicert", "--trusted-key", tmp_path / "k.pub.pem")
    assert r.returncode == 0 and f"signed by trusted key {fp}: signature verified" in r.stdout, r.stdout
    assert cli("keygen", tmp_path / "other.pem").returncode == 0
    r = cli("inspect", tmp_path / "b.slicert", "--trusted-key", tmp_path / "other.pub.pem")
    assert r.returncode == 2 and "SignatureError" in r.stderr and "not one of the trusted keys" in r.stderr
    assert cli("keygen", tmp_path / "k.pem").returncode == 2  # never overwrites a key


# -- untyped errors ------------------------------------------------------------------------------------------------
def test_bundle_truncated_after_open_does_not_kill_the_process(fp32_bundle, tmp_path):
    victim = tmp_path / "victim.slicert"
    victim.write_bytes(fp32_bundle.read_bytes())
    code = textwrap.dedent(f"""
        import os, numpy as np, engine
        from engine.bundle import open_bundle
        from engine.errors import BundleError
        p = {str(victim)!r}
        s = engine.load(p)
        b = open_bundle(p)
        x = np.random.default_rng(0).integers(0, 4096, (64, 64)).astype(np.uint16)
        before = s.run(x).scores.copy()
        os.truncate(p, os.path.getsize(p) // 3)
        try:
            b.read({FP32!r})
            print("read: no error")
        except BundleError as exc:
            print("read: BundleError", "truncated" in str(exc))
        print("run after truncation equal:", np.array_equal(s.run(x).scores, before))
        try:
            engine.load(p)
        except BundleError as exc:
            print("reload: BundleError")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, f"process died with {r.returncode}: {r.stderr[-2000:]}"
    assert r.stdout.split("\n")[:3] == ["read: BundleError True", "run after truncation equal: True",
                                        "reload: BundleError"], r.stdout


def test_member_rewritten_after_open_is_caught_on_read(fp32_bundle, tmp_path):
    victim = tmp_path / "v.slicert"
    victim.write_bytes(fp32_bundle.read_bytes())
    with open_bundle(victim) as b:
        start, size = b._offsets[FP32]
        with open(victim, "r+b") as fh:  # same size, other bytes: a TOCTOU swap after verification
            fh.seek(start + size // 2)
            fh.write(b"\0" * 8)
        with pytest.raises(BundleError, match=r"changed on disk after the bundle was opened"):
            b.read(FP32)


def test_load_time_runtime_failure_is_a_bundle_error(fp32_bundle, tmp_path):
    m = tiny_models.classifier()
    g = m.graph
    g.node[-1].output[0] = "scores_raw"
    # Static shape [N, 3] (the manifest's), but index 5 is out of range: ONNX Runtime fails only at run time.
    g.initializer.append(numpy_helper.from_array(np.array([0, 1, 5], np.int64), "pick"))
    g.node.append(helper.make_node("Gather", ["scores_raw", "pick"], ["scores"], axis=1))
    bad = _rewrite(fp32_bundle, tmp_path / "rt.slicert", models={FP32: m.SerializeToString()}, edit=_fp32_only)
    with pytest.raises(BundleError, match=rf"member '{FP32}': onnxruntime failed during the load-time warm-up"):
        engine.load(bad)


def test_model_input_dtype_must_be_the_spec_dtype(fp32_bundle, tmp_path):
    m = tiny_models.classifier()
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    bad = _rewrite(fp32_bundle, tmp_path / "f16.slicert", models={FP32: m.SerializeToString()}, edit=_fp32_only)
    with pytest.raises(BundleError, match=r"input 'input' takes float16, but the manifest's preprocessing writes "
                                          r"float32"):
        engine.load(bad)


def test_max_batch_is_bounded_before_allocating(fp32_bundle, monkeypatch):
    from engine import session

    for n in (4097, 100_000):
        t0 = time.perf_counter()
        with pytest.raises(InputError, match=r"max_batch must be an integer in \[1, 4096\]"):
            engine.load(fp32_bundle, max_batch=n)
        assert time.perf_counter() - t0 < 2
    monkeypatch.setattr(session, "MAX_BATCH_BUFFER_BYTES", 1 << 20)
    with pytest.raises(InputError, match=r"max_batch=1000 needs 4 MiB .*4108 bytes per slice.*max_batch <= 255"):
        engine.load(fp32_bundle, max_batch=1000)


@pytest.mark.parametrize("hw", [(10**6, 10**6), (-1, 5), (0, 5), (5,), "ab", (2.5, 3), (True, 3), None])
def test_new_result_sizes_are_input_errors(seg_bundle, hw):
    with engine.load(seg_bundle) as s:
        with pytest.raises(InputError, match=r"src_hw|source image size"):
            s.new_result(src_hw=hw)
        assert s.new_result(src_hw=(np.int64(40), 50)).mask.shape == (40, 50)


def test_paths_with_nul_bytes_are_typed(fp32_bundle):
    with pytest.raises(BundleError, match=r"NUL byte"):
        engine.load(str(fp32_bundle) + "\0.txt")
    with engine.load(fp32_bundle) as s, pytest.raises(DicomError, match=r"NUL byte"):
        s.run("/tmp/image\0.dcm")


# -- Security 4: inspect prints nothing a terminal would execute ----------------------------------------
def test_inspect_escapes_control_sequences_and_survives_odd_accuracy_fields(fp32_bundle, tmp_path):
    from rich.console import Console

    from engine.cli.inspect import render

    hostile = {"esc": "\x1b]0;owned\x07\x1b[2J\x1b]52;c;Y3VybCBldmlsfHNo\x07", "c1": "\x9b31m\x9d0;x\x9c"}

    def edit(m):
        m["model"]["name"] = "tiny" + hostile["esc"]
        m["model"]["dataset"] = {"name": hostile["c1"]}
        m["provenance"]["notes"] = [hostile["esc"]]
        m["provenance"]["\x1b[31mkey"] = "v"
        m["accuracy"] = {"gate": ["not", "a", "dict"], "notes": 5, "data": "text",
                         "variants": {"fp32": {"metrics": [1, 2], "agreement": ["x"], "passed": "maybe",
                                               "reason": hostile["esc"]},
                                      "fp16": {"metrics": {"auc": {"value": 0.9, "ci95": ["a", None]},
                                                           "ece": {"value": True}, "f1": "x"},
                                               "agreement": {"top1": "x", "iou": 0.5}},
                                      "int8": "not a dict"}}
    bad = _rewrite(fp32_bundle, tmp_path / "esc.slicert", edit=edit)
    buf = io.StringIO()
    render(bad, Console(file=buf, width=200, force_terminal=True, color_system=None))
    out = buf.getvalue()
    for ch in ("\x07", "\x9b", "\x9c", "\x9d", "]0;owned\x07"):
        assert ch not in out
    assert out.count("\x1b") == 0  # color_system=None: rich emits no escapes of its own either
    assert "\\x1b]0;owned\\x07" in out and "iou 0.5000" in out and "auc 0.9000" in out


def test_tensorrt_host_code_needs_a_verified_signature(model_dirs, tmp_path, keys, pixels):
    """Version-compatible plans run host code from the bundle: only with a trusted signature. Runs on the
    host-memory emulation of TensorRT (tests/runtime/fake_device_trt.py, not GPU verification), which
    refuses such plans unless engine_host_code_allowed is set, as TensorRT does."""
    import fake_device_trt as fake

    import engine.device

    priv, pub, fp = keys["a"]
    dev = fake.EmulatedDevice()
    previous = engine.device.install(dev)
    try:
        out = tmp_path / "vc.slicert"
        build_bundle(model_dirs["cls_export"], out, precision="fp32", target="auto", version_compatible=True,
                     sign_key=priv)
        unsigned = _rewrite(out, tmp_path / "vc-unsigned.slicert")
        for path, kw, match in [(out, {}, r"signer is not trusted"), (unsigned, {}, r"not signed")]:
            with pytest.raises(SignatureError, match=rf"version-compatible, so it runs host code.*{match}"):
                engine.load(path, backend="tensorrt", **kw)
        with engine.load(out, backend="tensorrt", trusted_keys=[pub]) as s:
            assert s.info["signature"]["verified"] and s.info["signature"]["signer"] == fp
            assert s.run(pixels).scores.shape == (3,)
    finally:
        engine.device.install(previous)
    assert dev.hazards == []
