"""Bundle file format: round trip, integrity checks naming the member, schema versioning, atomic and
non-overwriting writes."""
from __future__ import annotations

import json
import os
import struct
import zipfile

import pytest

import engine.bundle.writer as writer_mod
from engine.bundle import format as fmt
from engine.bundle import open_bundle, write_bundle
from engine.errors import BundleError, OutputExists
from engine.spec import PreprocessSpec


def _manifest(**over):
    m = {"format": fmt.FORMAT_NAME, "schema_version": fmt.SCHEMA_VERSION,
         "model": {"name": "m", "task": "classification", "labels": ["a", "b"]},
         "input": {"name": "input", "shape": [-1, 1, 8, 8], "dtype": "float32"},
         "preprocess": PreprocessSpec(8, 8).to_dict(), "voi_policy": "dicom",
         "output": {"name": "scores", "postprocess": "softmax"},
         "variants": {"fp32": {"onnx": "onnx/model.fp32.onnx"}}, "engines": [], "provenance": {}}
    m.update(over)
    return m


def _onnx_bytes() -> bytes:
    """A real (identity) ONNX model padded to ~10 KB: the reader parses every ONNX member's protobuf."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["scores"])], "identity",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 1, 8, 8])])
    graph.doc_string = "x" * 10_000
    return helper.make_model(graph).SerializeToString()


MEMBERS = {"onnx/model.fp32.onnx": _onnx_bytes(), "reports/accuracy_report.json": b'{"ok": true}',
           "engines/trt-11.4/sm_87.fp32.plan": os.urandom(5000)}


def _rewrite_zip(src, dst, transform):
    """Copy a bundle member by member through `transform(name, data) -> (name, data) | None`."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            out = transform(info.filename, zin.read(info.filename))
            if out is not None:
                zout.writestr(out[0], out[1])


def test_round_trip_members_manifest_and_alignment(tmp_path):
    path = write_bundle(tmp_path / "b.slicert", _manifest(), MEMBERS)
    with open_bundle(path) as b:
        assert sorted(b.members) == sorted(MEMBERS)
        for name, data in MEMBERS.items():
            assert b.read(name) == data
            assert b.manifest["members"][name]["size"] == len(data)
            # Member data starts on a page boundary (the writer's zipalign-style padding).
            assert b._offsets[name][0] % fmt.ALIGNMENT == 0
        assert b.spec == PreprocessSpec(8, 8)
        assert b.labels == ["a", "b"]
        with b.view("onnx/model.fp32.onnx") as v:
            assert v.readonly and v.nbytes == len(MEMBERS["onnx/model.fp32.onnx"])
    # Standard tools read it too, and every member is stored, not deflated.
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}


def test_tampered_member_is_named(tmp_path):
    path = write_bundle(tmp_path / "b.slicert", _manifest(), MEMBERS)
    with open_bundle(path) as b:
        start, size = b._offsets["onnx/model.fp32.onnx"]
    raw = bytearray(path.read_bytes())
    raw[start + size // 2] ^= 0x01  # one flipped bit in the middle of the model
    path.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"'onnx/model\.fp32\.onnx' failed its SHA-256 check"):
        open_bundle(path)


@pytest.mark.parametrize("victim", ["onnx/model.fp32.onnx", "engines/trt-11.4/sm_87.fp32.plan"])
def test_truncated_inside_member_is_named(tmp_path, victim):
    path = write_bundle(tmp_path / "b.slicert", _manifest(), MEMBERS)
    with open_bundle(path) as b:
        start, size = b._offsets[victim]
    path.write_bytes(path.read_bytes()[:start + size - 7])
    with pytest.raises(BundleError, match=rf"truncated inside member '{victim}'"):
        open_bundle(path)


def test_truncated_directory_names_last_member(tmp_path):
    path = write_bundle(tmp_path / "b.slicert", _manifest(), MEMBERS)
    data = path.read_bytes()
    cut = data.rfind(b"PK\x01\x02")  # the last central-directory entry
    path.write_bytes(data[:cut + 10])
    with pytest.raises(BundleError, match=r"truncated.*after the last member 'reports/accuracy_report\.json'"):
        open_bundle(path)


def test_not_a_bundle(tmp_path):
    (tmp_path / "x.slicert").write_bytes(b"this is not a zip file at all" * 10)
    with pytest.raises(BundleError, match="not a SliceRT bundle"):
        open_bundle(tmp_path / "x.slicert")
    (tmp_path / "empty.slicert").write_bytes(b"")
    with pytest.raises(BundleError, match="empty"):
        open_bundle(tmp_path / "empty.slicert")
    with pytest.raises(BundleError, match="no bundle at"):
        open_bundle(tmp_path / "missing.slicert")


def test_unlisted_missing_and_compressed_members(tmp_path):
    path = write_bundle(tmp_path / "b.slicert", _manifest(), MEMBERS)
    extra = tmp_path / "extra.slicert"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(extra, "w") as zout:
        for i in zin.infolist():
            zout.writestr(i.filename, zin.read(i.filename))
        zout.writestr("onnx/evil.onnx", b"x")
    with pytest.raises(BundleError, match=r"'onnx/evil\.onnx' is not listed in the manifest"):
        open_bundle(extra)

    missing = tmp_path / "missing.slicert"
    _rewrite_zip(path, missing, lambda n, d: None if n == "reports/accuracy_report.json" else (n, d))
    with pytest.raises(BundleError, match=r"'reports/accuracy_report\.json' is listed in the manifest but missing"):
        open_bundle(missing)

    deflated = tmp_path / "deflated.slicert"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as zout:
        for i in zin.infolist():
            zout.writestr(i.filename, zin.read(i.filename))
    with pytest.raises(BundleError, match=r"member 'engines/trt-11\.4/sm_87\.fp32\.plan' is compressed"):
        open_bundle(deflated)


def test_newer_schema_says_how_to_fix(tmp_path):
    path = write_bundle(tmp_path / "b.slicert", _manifest(), MEMBERS)
    newer = tmp_path / "newer.slicert"

    def bump(name, data):
        if name == fmt.MANIFEST:
            m = json.loads(data)
            m["schema_version"] = fmt.SCHEMA_VERSION + 1
            data = json.dumps(m).encode()
        return name, data

    _rewrite_zip(path, newer, bump)
    with pytest.raises(BundleError, match=r"schema version 2 is newer .*upgrade SliceRT.*rebuild"):
        open_bundle(newer)


def test_corrupt_manifest_is_named(tmp_path):
    path = write_bundle(tmp_path / "b.slicert", _manifest(), MEMBERS)
    bad = tmp_path / "bad.slicert"
    _rewrite_zip(path, bad, lambda n, d: (n, b"{not json" if n == fmt.MANIFEST else d))
    with pytest.raises(BundleError, match=r"'manifest\.json' is not valid JSON"):
        open_bundle(bad)
    # A flipped byte in the manifest is caught by the zip CRC-32.
    raw = bytearray(path.read_bytes())
    at = raw.find(b'"schema_version"')
    raw[at + 3] ^= 0x20
    path.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"manifest\.json"):
        open_bundle(path)


@pytest.mark.parametrize("change, match", [
    ({"format": "other"}, "not a SliceRT bundle manifest"),
    ({"model": {"name": "m", "task": "detection", "labels": ["a"]}}, "model.task"),
    ({"model": {"name": "m", "task": "classification", "labels": []}}, "model.labels"),
    ({"preprocess": {"out_height": 0, "out_width": 8}}, "preprocess"),
    ({"voi_policy": "auto"}, "voi_policy"),
    ({"variants": {"fp64": {"onnx": "onnx/model.fp32.onnx"}}}, "unknown variant 'fp64'"),
    ({"variants": {"fp32": {"onnx": "onnx/nope.onnx"}}}, "names 'onnx/nope.onnx'"),
])
def test_manifest_validation_names_the_field(tmp_path, change, match):
    with pytest.raises(BundleError, match=match):
        write_bundle(tmp_path / "b.slicert", _manifest(**change), MEMBERS)
    assert not (tmp_path / "b.slicert").exists()


@pytest.mark.parametrize("name", ["../evil.onnx", "/abs.onnx", "a//b", "a/../b", ""])
def test_member_names_cannot_escape(tmp_path, name):
    with pytest.raises(BundleError, match="invalid bundle member name"):
        write_bundle(tmp_path / "b.slicert", _manifest(), {**MEMBERS, name: b"x"})


def test_never_overwrites_without_force(tmp_path):
    path = tmp_path / "b.slicert"
    path.write_bytes(b"user data")
    with pytest.raises(OutputExists, match="--force"):
        write_bundle(path, _manifest(), MEMBERS)
    assert path.read_bytes() == b"user data"
    write_bundle(path, _manifest(), MEMBERS, force=True)
    with open_bundle(path) as b:
        assert b.read("reports/accuracy_report.json") == b'{"ok": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.slicert"]  # no temp files left


def test_publish_refuses_a_file_that_appeared_meanwhile(tmp_path, monkeypatch):
    # Another process creates the target after the early check: the hard-link publish still refuses.
    path = tmp_path / "b.slicert"
    real = writer_mod._publish

    def racing_publish(tmp, target, force):
        target.write_bytes(b"created by someone else")
        return real(tmp, target, force)

    monkeypatch.setattr(writer_mod, "_publish", racing_publish)
    with pytest.raises(OutputExists):
        write_bundle(path, _manifest(), MEMBERS)
    assert path.read_bytes() == b"created by someone else"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.slicert"]


@pytest.mark.parametrize("existing", [False, True])
def test_exception_mid_write_leaves_no_partial_file(tmp_path, monkeypatch, existing):
    path = tmp_path / "b.slicert"
    if existing:
        write_bundle(path, _manifest(), MEMBERS)
        before = path.read_bytes()
    real = writer_mod._write_member
    calls = []

    def failing_write_member(zf, fh, name, source, size, sha):
        calls.append(name)
        if name == "onnx/model.fp32.onnx":
            fh.write(b"half a member")
            raise OSError(28, "No space left on device")
        return real(zf, fh, name, source, size, sha)

    monkeypatch.setattr(writer_mod, "_write_member", failing_write_member)
    with pytest.raises(OSError, match="No space left"):
        write_bundle(path, _manifest(), MEMBERS, force=True)
    assert "onnx/model.fp32.onnx" in calls
    if existing:
        assert path.read_bytes() == before  # the old bundle is untouched
        open_bundle(path).close()
    else:
        assert not path.exists()
    assert [p.name for p in tmp_path.iterdir()] == (["b.slicert"] if existing else [])


def test_member_changed_during_write_is_refused(tmp_path, monkeypatch):
    src = tmp_path / "model.onnx"
    src.write_bytes(b"a" * 1000)
    real = writer_mod._digest

    def digest_then_modify(source):
        out = real(source)
        if str(source) == str(src):
            src.write_bytes(b"b" * 1000)
        return out

    monkeypatch.setattr(writer_mod, "_digest", digest_then_modify)
    with pytest.raises(BundleError, match="changed while the bundle was being written"):
        write_bundle(tmp_path / "b.slicert", _manifest(), {"onnx/model.fp32.onnx": src})
    assert not (tmp_path / "b.slicert").exists()


def test_zip64_sized_padding_is_computed_for_large_headers():
    # The local header grows by 20 bytes when zip64 is needed; alignment must account for it.
    small = writer_mod._padding_extra(100, "x", zip64=False)
    big = writer_mod._padding_extra(100, "x", zip64=True)
    assert (100 + 30 + 1 + len(small)) % fmt.ALIGNMENT == 0
    assert (100 + 30 + 1 + 20 + len(big)) % fmt.ALIGNMENT == 0
    assert struct.unpack("<HH", small[:4])[1] == len(small) - 4


def test_hostile_manifest_json_is_a_bundle_error(tmp_path):
    path = write_bundle(tmp_path / "b.slicert", _manifest(), MEMBERS)
    deep = tmp_path / "deep.slicert"
    _rewrite_zip(path, deep, lambda n, d: (n, b"[" * 100000 + b"]" * 100000 if n == fmt.MANIFEST else d))
    with pytest.raises(BundleError, match="nests JSON too deeply"):
        open_bundle(deep)
    with pytest.raises(BundleError, match="must be a str or os.PathLike"):
        open_bundle(None)
