"""Hostile bundles of issue 13, derived from the corpus's valid classifier bundle (built by the real
builder from the synthetic tiny model of tests/runtime/tiny_models.py):

  * ONNX tensors that point outside the bundle (external data) in 4 places x 4 paths x 2 members;
  * Loops the load-time warm-up could never finish (huge, negative, absent, run-time or nested counts);
  * a manifest that is a deflate bomb (above the size cap, above the ratio cap, a size header that lies);
  * two manifest.json entries, a duplicated member, duplicated JSON keys at several depths;
  * a default_variant whose accuracy gate failed, malformed gate fields, every variant failed;
  * a model whose input dtype is not the spec's, a model that fails only when run (warm-up);
  * signatures: unsigned / other signer / edited after signing / forged / broken signature.json,
    trusted_keys arguments that are not keys; max_batch beyond its bounds; NUL bytes in paths.
Member digests are recomputed wherever the point is a check other than integrity.
"""
from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from tests.corpus.bundle_files import VALID_CLASSIFIER, read_members
from tests.corpus.case import Case

GROUP = "bundle"
KEYS = "bundles13/keys"


def _zip(path: Path, entries: list[tuple[str, bytes]], deflate: frozenset[str] = frozenset()) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point of some cases
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in entries:
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
                zf.writestr(info, data)


def _manifest_bytes(manifest: dict, members: dict[str, bytes]) -> bytes:
    m = json.loads(json.dumps(manifest))
    m["members"] = {n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for n, b in sorted(members.items())}
    return json.dumps(m, indent=2, sort_keys=True).encode()


def _pack(path: Path, manifest: dict, members: dict[str, bytes], *, manifest_raw: bytes | None = None,
          extra: list[tuple[str, bytes]] = ()) -> None:
    raw = manifest_raw if manifest_raw is not None else _manifest_bytes(manifest, members)
    _zip(path, [("manifest.json", raw), *sorted(members.items()), *extra])


# -- ONNX models ---------------------------------------------------------------------------------------
def _external(t, location: str) -> None:
    from onnx import TensorProto

    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "12")):
        e = t.external_data.add()
        e.key, e.value = key, value


def _with_external(where: str, location: str) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    from tests.runtime import tiny_models

    m = tiny_models.classifier()
    g = m.graph
    if where == "initializer":
        _external(g.initializer[3], location)
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
    else:  # sparse-initializer
        values = numpy_helper.from_array(np.ones(1, np.float32), "sp")
        _external(values, location)
        g.sparse_initializer.append(helper.make_sparse_tensor(values, numpy_helper.from_array(
            np.zeros(1, np.int64), "sp_idx"), [3]))
    return m.SerializeToString()


def _with_loop(trips: int | None, *, dynamic: bool = False, nested: int | None = None) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    from tests.runtime import tiny_models

    m = tiny_models.classifier()
    g = m.graph
    nodes = [helper.make_node("Identity", ["v_in"], ["v_out"]), helper.make_node("Identity", ["c_in"], ["c_out"])]
    inits = []
    if nested is not None:
        inits.append(numpy_helper.from_array(np.array(nested, np.int64), "M_in"))
        inner = helper.make_graph(
            [helper.make_node("Identity", ["ci"], ["co"]), helper.make_node("Identity", ["x"], ["y"])], "inner",
            [helper.make_tensor_value_info("j", TensorProto.INT64, []),
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
    at = 1 if dynamic else 0
    g.node.insert(at, helper.make_node("Loop", ["M" if trips is not None or dynamic else "", "cond", "input"],
                                       ["looped"], body=body))
    next(n for n in g.node if n.op_type == "Conv").input[0] = "looped"
    return m.SerializeToString()


def _with_input_dtype(elem: int) -> bytes:
    from tests.runtime import tiny_models

    m = tiny_models.classifier()
    m.graph.input[0].type.tensor_type.elem_type = elem
    return m.SerializeToString()


def _failing_at_run(index: int) -> bytes:
    from onnx import helper, numpy_helper

    from tests.runtime import tiny_models

    m = tiny_models.classifier()
    g = m.graph
    g.node[-1].output[0] = "scores_raw"
    g.initializer.append(numpy_helper.from_array(np.array([0, 1, index], np.int64), "pick"))
    g.node.append(helper.make_node("Gather", ["scores_raw", "pick"], ["scores"], axis=1))
    return m.SerializeToString()


def _keys(out: Path) -> dict[str, Any]:
    """Two fixed Ed25519 keys (seeded, so the corpus is reproducible) as PEM files."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    folder = out / KEYS
    folder.mkdir(parents=True, exist_ok=True)
    keys = {}
    for name in ("a", "b"):
        key = ed25519.Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"slicert-corpus-{name}".encode()).digest())
        (folder / f"{name}.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
        (folder / f"{name}.pub.pem").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        keys[name] = key
    (folder / "garbage.pub.pem").write_bytes(b"-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n")
    return keys


def generate(out: Path) -> list[Case]:
    from onnx import TensorProto

    from engine.bundle import signing

    folder = out / "bundles13"
    folder.mkdir(parents=True, exist_ok=True)
    manifest, members = read_members(out / VALID_CLASSIFIER)
    manifest.pop("members", None)
    onnx_member = manifest["variants"]["fp32"]["onnx"]
    ort_member = manifest["variants"]["fp32"].get("ort")
    cases: list[Case] = []

    def add(name: str, write, expect: str, match: str, why: str, entry: str = "engine.load", **kwargs) -> None:
        rel = f"bundles13/{name}.slicert"
        write(out / rel)
        cases.append(Case(id=f"bundle13/{name}", group=GROUP, entry=entry, expect=expect, match=match, why=why,
                          file=rel, kwargs=kwargs))

    def models(data: bytes, which: tuple[str, ...] = ("onnx",)):
        def write(p: Path) -> None:
            new = dict(members)
            for w in which:
                new[onnx_member if w == "onnx" else ort_member] = data
            _pack(p, manifest, new)
        return write

    # Security 1: external data -------------------------------------------------------------------------
    for where in ("initializer", "constant-attribute", "if-subgraph", "sparse-initializer"):
        for label, location in (("etc-passwd", "/etc/passwd"), ("dotdot", "../../../../etc/passwd"),
                                ("relative", "weights.bin"), ("proc-environ", "/proc/self/environ")):
            data = _with_external(where, location)
            for which in ("onnx", "ort"):
                member = onnx_member if which == "onnx" else ort_member
                add(f"external-{where}-{label}-{which}", models(data, (which,)), "BundleError",
                    rf"member '{member}'.*refers to external data '{location}'",
                    f"{where} tensor stored as external data at {location!r} in {member} (digests fixed)")

    # Security 3: loops the warm-up could not finish ---------------------------------------------------
    for label, trips, match in (("1e15", 10**15, r"runs 1000000000000000 iterations"),
                                ("int64-max", 2**63 - 1, r"runs 9223372036854775807 iterations"),
                                ("65537", 65537, r"runs 65537 iterations"), ("1e6", 10**6, r"iterations"),
                                ("negative", -1, r"runs -1 iterations")):
        add(f"loop-trips-{label}", models(_with_loop(trips)), "BundleError", match,
            f"an ONNX Loop of {trips} iterations before the conv (load-time warm-up would not return)")
    add("loop-while", models(_with_loop(None)), "BundleError", r"no trip count", "a Loop without trip count")
    add("loop-dynamic", models(_with_loop(None, dynamic=True)), "BundleError", r"computed at run time",
        "a Loop whose trip count is computed from the input (Size)")
    for outer, inner in ((300, 300), (1000, 100), (65536, 2)):
        add(f"loop-nested-{outer}x{inner}", models(_with_loop(outer, nested=inner)), "BundleError",
            rf"{outer * inner} iterations in all", f"Loops of {outer} x {inner} iterations, nested")

    # Security 3: manifest deflate bombs --------------------------------------------------------------
    def bomb(size: int):
        def write(p: Path) -> None:
            with zipfile.ZipFile(p, "w") as zf:
                info = zipfile.ZipInfo("manifest.json", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                with zf.open(info, "w", force_zip64=True) as fh:
                    fh.write(b"{")
                    chunk = b" " * (1 << 20)
                    for _ in range(size >> 20):
                        fh.write(chunk)
                    fh.write(b"}")
        return write
    for mib in (65, 300):
        add(f"manifest-deflate-bomb-{mib}mib", bomb(mib << 20), "BundleError", r"manifest\.json is \d+ bytes, more than",
            f"manifest.json deflated from {mib} MiB of spaces (> the 64 MiB cap)")
    for mib in (8, 30):
        add(f"manifest-deflate-ratio-{mib}mib", bomb(mib << 20), "BundleError", r"decompression bomb",
            f"manifest.json deflated from {mib} MiB of spaces (under the size cap, ratio > 200)")

    def lying_header(p: Path) -> None:
        raw = _manifest_bytes(manifest, members) + b" " * 4000
        _zip(p, [("manifest.json", raw), *sorted(members.items())], deflate=frozenset({"manifest.json"}))
        data = bytearray(p.read_bytes())
        cd = data.find(b"PK\x01\x02")
        data[cd + 24:cd + 28] = (200).to_bytes(4, "little")  # central directory says 200 bytes
        p.write_bytes(bytes(data))
    add("manifest-size-header-lies", lying_header, "BundleError", r"manifest\.json",
        "deflated manifest.json whose central-directory size says 200 bytes")

    # Silently wrong: two manifests, duplicate members, duplicate keys ------------------------------------
    def second_manifest(change_first: bool):
        def write(p: Path) -> None:
            other = json.loads(_manifest_bytes(manifest, members))
            other["model"]["labels"] = list(reversed(other["model"]["labels"]))
            raw, alt = _manifest_bytes(manifest, members), json.dumps(other, indent=2, sort_keys=True).encode()
            first, second = (alt, raw) if change_first else (raw, alt)
            _zip(p, [("manifest.json", first), *sorted(members.items()), ("manifest.json", second)])
        return write
    add("two-manifests-last-differs", second_manifest(False), "BundleError", r"'manifest\.json' appears twice",
        "two manifest.json entries, the second with reversed labels (tools disagree on which they read)")
    add("two-manifests-first-differs", second_manifest(True), "BundleError", r"'manifest\.json' appears twice",
        "two manifest.json entries, the first with reversed labels")
    add("duplicate-model-member", lambda p: _pack(p, manifest, members, extra=[(onnx_member, _with_loop(2))]),
        "BundleError", rf"'{onnx_member}' appears twice", "the ONNX member twice, the second another model")
    raw_text = _manifest_bytes(manifest, members).decode()
    for label, key, anchor, insert in (
            ("top-level", "voi_policy", "{", '{"voi_policy": "model", '),
            ("model-task", "task", '"model": {', '"model": {"task": "segmentation", '),
            ("input-dtype", "dtype", '"input": {', '"input": {"dtype": "float16", '),
            ("labels-object", "labels", '"model": {', '"model": {"labels": ["x", "y", "z"], '),
            ("member-sha256", "sha256", '"members": {\n    "' + onnx_member + '": {',
             '"members": {\n    "' + onnx_member + '": {"sha256": "' + "0" * 64 + '", ')):
        text = raw_text.replace(anchor, insert, 1)
        add(f"duplicate-json-key-{label}", lambda p, text=text: _pack(p, manifest, members, manifest_raw=text.encode()),
            "BundleError", rf"duplicate JSON key '{key}'", f"manifest.json gives {key!r} twice ({label})")

    # Silently wrong: accuracy gates ---------------------------------------------------------------------------------
    def gated(edit):
        def write(p: Path) -> None:
            m = json.loads(json.dumps(manifest))
            edit(m)
            _pack(p, m, members)
        return write

    def failed(form: str | None, default: str | None):
        def edit(m: dict) -> None:
            gate = m["variants"]["fp32"].setdefault("accuracy_gate", {})
            if form is None:
                gate.update(passed=False, detail="AUC dropped 0.2 (fixture)")
            else:
                gate.setdefault("forms", {})[form] = {"passed": False, "detail": "AUC dropped 0.2 (fixture)"}
            m["default_variant"] = {} if default is None else {default: "fp32"}
        return edit
    for backend in ("onnxruntime", "tensorrt"):
        add(f"default-variant-failed-gate-{backend}", gated(failed(None, backend)), "BundleError",
            rf"default_variant\.{backend} names 'fp32', whose accuracy gate failed",
            f"default_variant.{backend} names a variant whose accuracy gate failed")
    add("default-variant-failed-form-onnxruntime", gated(failed("onnxruntime", "onnxruntime")), "BundleError",
        r"accuracy gate failed for onnxruntime", "default names a variant whose onnxruntime form failed its gate")
    add("best-every-variant-failed", gated(failed(None, None)), "AccuracyGateError",
        r"every variant failed its accuracy gate", "the only variant failed its gate; precision='best'",
        backend="onnxruntime")
    for label, value in (("string-yes", "yes"), ("one", 1), ("string-false", "false")):
        add(f"gate-passed-{label}", gated(lambda m, v=value: m["variants"]["fp32"].__setitem__(
            "accuracy_gate", {"passed": v})), "BundleError", r"accuracy_gate\.passed must be true, false or null",
            f"accuracy_gate.passed = {value!r}")

    # Untyped errors: model input dtype, failures at warm-up ----------------------------------------------------
    for name, elem in (("float16", TensorProto.FLOAT16), ("int8", TensorProto.INT8), ("uint8", TensorProto.UINT8),
                       ("float64", TensorProto.DOUBLE), ("int64", TensorProto.INT64)):
        add(f"model-input-{name}", models(_with_input_dtype(elem), ("onnx", "ort")), "BundleError",
            rf"takes {name}, but the manifest's preprocessing writes float32",
            f"the model's input is {name}, the spec writes float32")
    for index in (5, -7, 1000):
        add(f"warm-up-fails-gather-{index}", models(_failing_at_run(index), ("onnx", "ort")), "BundleError",
            r"onnxruntime failed during the load-time warm-up",
            f"a Gather index {index} out of range: ONNX Runtime fails only when the model runs")

    # Security 2: signatures --------------------------------------------------------------------------------------
    keys = _keys(out)
    signed_raw = _manifest_bytes(manifest, members)
    sig_a = signing.sign(signed_raw, keys["a"])

    def signed(sig: bytes, raw: bytes = signed_raw):
        return lambda p: _pack(p, manifest, members, manifest_raw=raw, extra=[("signature.json", sig)])
    add("unsigned-with-trusted-key", lambda p: _pack(p, manifest, members), "SignatureError", r"is not signed",
        "an unsigned bundle loaded with trusted_keys", trusted_key_files=[f"{KEYS}/a.pub.pem"])
    add("signed-by-another-key", signed(sig_a), "SignatureError", r"not one of the trusted keys",
        "signed by key a, loaded trusting only key b", trusted_key_files=[f"{KEYS}/b.pub.pem"])
    tampered = json.loads(signed_raw)
    tampered["model"]["labels"] = list(reversed(tampered["model"]["labels"]))
    tampered_raw = json.dumps(tampered, indent=2, sort_keys=True).encode()
    add("signed-then-labels-swapped", signed(sig_a, tampered_raw), "SignatureError", r"does not match the manifest",
        "labels reordered after signing (digests still match), no trusted_keys")
    add("signed-then-labels-swapped-trusted", signed(sig_a, tampered_raw), "SignatureError",
        r"does not match the manifest", "labels reordered after signing, loaded trusting the signer",
        trusted_key_files=[f"{KEYS}/a.pub.pem"])
    doc = json.loads(sig_a)
    forged = dict(doc, fingerprint=hashlib.sha256(b"someone else").hexdigest())
    add("signature-fingerprint-forged", signed(json.dumps(forged).encode()), "SignatureError", r"names signer",
        "signature.json names another signer than its public key")
    flipped = dict(doc, signature=doc["signature"][:10] + ("A" if doc["signature"][10] != "A" else "B")
                   + doc["signature"][11:])
    add("signature-bytes-flipped", signed(json.dumps(flipped).encode()), "SignatureError",
        r"does not match the manifest", "one character of the signature changed")
    add("signature-not-json", signed(b"{\"format\": "), "BundleError", r"signature\.json.*not valid JSON",
        "signature.json is cut-off JSON")
    add("signature-other-format", signed(json.dumps({"format": "pgp", "version": 1}).encode()), "SignatureError",
        r"not a SliceRT Ed25519 signature", "signature.json of another format")
    add("signature-bad-base64", signed(json.dumps(dict(doc, public_key="@@@")).encode()), "SignatureError",
        r"malformed public_key", "signature.json with a public key that is not base64")
    valid = VALID_CLASSIFIER
    for label, files, match in (("empty", [], r"trusted_keys is empty"),
                                ("missing-file", [f"{KEYS}/missing.pub.pem"], r"cannot read"),
                                ("garbage-pem", [f"{KEYS}/garbage.pub.pem"], r"not a PEM public key"),
                                ("private-key", [f"{KEYS}/a.pem"], r"not a PEM public key")):
        cases.append(Case(id=f"load/trusted-keys-{label}", group="load", entry="engine.load", expect="InputError",
                          match=match, why=f"engine.load(bundle, trusted_keys={files})", file=valid,
                          kwargs={"trusted_key_files": files}))
    for n in (4097, 100_000, 10**9):
        cases.append(Case(id=f"load/max_batch-{n}", group="load", entry="engine.load", expect="InputError",
                          match=r"max_batch must be an integer in \[1, 4096\]",
                          why=f"engine.load(bundle, max_batch={n}) (would allocate GiB before the warm-up)",
                          file=valid, kwargs={"max_batch": n}))
    cases.append(Case(id="load/path-nul-byte", group="load", entry="engine.load", expect="BundleError",
                      match=r"NUL byte", why="a bundle path containing a NUL byte",
                      recipe={"make": "value", "value": str(out / "bundles13" / "x\0y.slicert")}))
    cases.append(Case(id="array/dicom-path-nul-byte", group="array", entry="session.run", expect="DicomError",
                      match=r"NUL byte", why="a DICOM path containing a NUL byte",
                      recipe={"make": "value", "value": "/tmp/slicert-corpus/image\0.dcm"}))
    return cases
