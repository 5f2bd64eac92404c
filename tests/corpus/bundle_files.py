"""Broken `.slicert` bundles, all derived from real bundles built by `engine.bundle.build_bundle`.

The valid parents are built from the tiny synthetic models of tests/runtime/tiny_models.py (the
same fixtures every runtime test uses; synthetic weights, no medical meaning). From them:
  * truncation at structural offsets (inside the first local header, the manifest, a model member,
    the central directory, the end-of-central-directory record);
  * one flipped byte inside each member's data (integrity: SHA-256 / CRC-32 must catch it);
  * a zip that is structurally valid but whose manifest breaks one rule of schema 1, or whose
    members disagree with the manifest (missing, unlisted, compressed, wrong size, unsafe name);
  * consistent-but-wrong content: digests recomputed so integrity passes, but the ONNX model is
    garbage or disagrees with the manifest (shape, output name, label count);
  * foreign files: ONNX/JSON/tar/npz/gzip/zip-without-manifest/another tool's manifest;
  * engines for another GPU: a manifest listing only TensorRT plans for other compute capabilities
    or TensorRT versions (loaded with backend="tensorrt"; the GPU facts are simulated because this
    machine has no GPU, see runner.simulated_gpu).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tests.corpus.case import Case

VALID_CLASSIFIER = "bundles/valid-classifier.slicert"  # voi_policy "dicom": DICOM VOI fields are used
VALID_SEGMENTER = "bundles/valid-segmenter.slicert"


def _build_valid(out: Path) -> None:
    from engine.bundle import build_bundle
    from tests.runtime import tiny_models

    for task, rel in (("classification", VALID_CLASSIFIER), ("segmentation", VALID_SEGMENTER)):
        export = tiny_models.write_export(out / "exports" / task, task)
        meta = json.loads((export / "model.json").read_text())
        meta["voi_policy"] = "dicom"
        (export / "model.json").write_text(json.dumps(meta, indent=2))
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        build_bundle(export, target, precision="fp32", target="cpu", force=True)


# -- zip surgery --------------------------------------------------------------------------------------
def read_members(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(manifest, {member name: bytes}) of a bundle, without SliceRT's reader."""
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    return json.loads(members.pop("manifest.json")), members


def write_zip(path: Path, entries: list[tuple[str, bytes]], *, deflate: frozenset[str] = frozenset()) -> None:
    """A plain zip (members stored unless named in `deflate`), fixed timestamps."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            zf.writestr(info, data)


def repack(path: Path, manifest: Any, members: dict[str, bytes], *, manifest_bytes: bytes | None = None,
           fix_digests: bool = False, deflate: frozenset[str] = frozenset()) -> None:
    if fix_digests:
        manifest = json.loads(json.dumps(manifest))
        manifest["members"] = {n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for n, b in
                               members.items()}
    data = manifest_bytes if manifest_bytes is not None else json.dumps(manifest, indent=2).encode()
    write_zip(path, [("manifest.json", data), *sorted(members.items())], deflate=deflate)


def _member_data_offsets(path: Path) -> dict[str, tuple[int, int]]:
    raw = path.read_bytes()
    out = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            h = info.header_offset
            n_name = int.from_bytes(raw[h + 26:h + 28], "little")
            n_extra = int.from_bytes(raw[h + 28:h + 30], "little")
            start = h + 30 + n_name + n_extra
            out[info.filename] = (start, info.file_size)
    return out


# -- ONNX helpers ----------------------------------------------------------------------------------------
def _onnx_classifier_variant(side: int = 32, output_name: str = "scores", k: int = 3, inputs: int = 1) -> bytes:
    """A tiny classifier like tiny_models.classifier but with another input side / output name /
    class count / input count, to disagree with a manifest on purpose."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    inits = [numpy_helper.from_array(rng.standard_normal((k, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(k).astype(np.float32), "b")]
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "w", "b"], [output_name], transB=1)]
    graph_inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, side, side])]
    if inputs == 2:
        graph_inputs.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["N", 1]))
        nodes[-1] = helper.make_node("Gemm", ["f", "w", "b"], ["g"], transB=1)
        nodes.append(helper.make_node("Add", ["g", "extra"], [output_name]))
    graph = helper.make_graph(nodes, "corpus_variant", graph_inputs,
                              [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", k])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="slicert-corpus")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


# -- the cases -------------------------------------------------------------------------------------------
def generate(out: Path) -> list[Case]:
    _build_valid(out)
    folder = out / "bundles"
    valid = out / VALID_CLASSIFIER
    raw = valid.read_bytes()
    n = len(raw)
    manifest, members = read_members(valid)
    cases: list[Case] = []

    def add(name: str, writer: Callable[[Path], None], expect: str, match: str, why: str, *,
            entry: str = "engine.load", kwargs: dict | None = None, suffix: str = ".slicert") -> None:
        rel = f"bundles/{name}{suffix}"
        target = out / rel
        if target.exists() and target.is_dir():
            pass
        else:
            writer(target)
        cases.append(Case(id=f"bundle/classifier/{name}", group="bundle", entry=entry, expect=expect, match=match,
                          why=why, file=rel, kwargs=kwargs or {}))

    def cut(k: int) -> Callable[[Path], None]:
        return lambda p: p.write_bytes(raw[:k])

    # truncation ---------------------------------------------------------------------------------
    offsets = _member_data_offsets(valid)
    first_model = next(m for m in sorted(offsets) if m.endswith(".onnx"))
    mstart, msize = offsets[first_model]
    manifest_start, manifest_size = offsets["manifest.json"]
    eocd = raw.rfind(b"PK\x05\x06")
    central = raw.rfind(b"PK\x01\x02", 0, eocd)
    points = [("empty", 0, r"empty"), ("in-first-local-header", 10, r"not a SliceRT bundle|not a zip"),
              ("in-manifest", manifest_start + manifest_size // 2, r"truncat"),
              ("after-manifest", manifest_start + manifest_size, r"truncat"),
              ("in-model-member", mstart + msize // 2, r"truncat"),
              ("at-half", n // 2, r"truncat"), ("at-three-quarters", 3 * n // 4, r"truncat"),
              ("in-central-directory", central + 20, r"truncat"), ("in-end-record", eocd + 10, r"truncat")]
    # (Cutting only into the trailing zip comment is not a case: every member is still complete and
    # verified by its SHA-256, so accepting that file is right.)
    seen = set()
    for name, k, match in points:
        if k in seen:
            continue
        seen.add(k)
        add(f"truncated-{name}", cut(k), "BundleError", match, f"valid bundle cut at byte {k} of {n} ({name})")

    # one flipped byte inside each member --------------------------------------------------------
    for member, (start, size) in sorted(offsets.items()):
        def flip(p: Path, at: int = start + size // 2) -> None:
            data = bytearray(raw)
            data[at] ^= 0x5A
            p.write_bytes(bytes(data))
        safe = member.replace("/", "_")
        match = rf"{member}.*(SHA-256|corrupt)" if member != "manifest.json" else r"manifest\.json.*(corrupt|CRC)"
        add(f"flipped-byte-{safe}", flip, "BundleError", match, f"one byte of member {member} flipped")

    # manifest breaks schema 1 -----------------------------------------------------------------------
    def edited(fn: Callable[[dict], Any]) -> Callable[[Path], None]:
        def write(p: Path) -> None:
            m = json.loads(json.dumps(manifest))
            result = fn(m)
            repack(p, m if result is None else result, members)
        return write

    def setter(path: str, value: Any) -> Callable[[dict], None]:
        keys = path.split(".")

        def apply(m: dict) -> None:
            obj = m
            for k in keys[:-1]:
                obj = obj[k]
            obj[keys[-1]] = value
        return apply

    def deleter(path: str) -> Callable[[dict], None]:
        keys = path.split(".")

        def apply(m: dict) -> None:
            obj = m
            for k in keys[:-1]:
                obj = obj[k]
            del obj[keys[-1]]
        return apply

    schema_edits = [
        ("format-other", setter("format", "tensorflow-savedmodel"), r"not a SliceRT bundle manifest"),
        ("schema-version-newer", setter("schema_version", 99), r"schema version 99 is newer"),
        ("schema-version-zero", setter("schema_version", 0), r"schema_version"),
        ("schema-version-string", setter("schema_version", "1"), r"schema_version"),
        ("model-missing", deleter("model"), r"'model'"),
        ("task-unknown", setter("model.task", "detection"), r"model\.task"),
        ("labels-empty", setter("model.labels", []), r"model\.labels"),
        ("labels-not-strings", setter("model.labels", [0, 1, 2]), r"model\.labels"),
        ("input-shape-3d", setter("input.shape", [-1, 32, 32]), r"input\.shape"),
        ("preprocess-out-height-zero", setter("preprocess.out_height", 0), r"preprocess.*out_height"),
        ("preprocess-unknown-field", setter("preprocess.gamma", 2.2), r"preprocess.*gamma"),
        ("preprocess-not-object", setter("preprocess", "area-32"), r"preprocess"),
        ("voi-policy-unknown", setter("voi_policy", "auto"), r"voi_policy"),
        ("postprocess-wrong-task", setter("output.postprocess", "argmax"), r"postprocess"),
        ("member-digest-not-hex", lambda m: m["members"][first_model].__setitem__("sha256", "z" * 64),
         rf"{first_model}.*sha256"),
        ("member-size-string", lambda m: m["members"][first_model].__setitem__("size", "4096"), r"size"),
        ("variants-empty", setter("variants", {}), r"no model variant"),
        ("variant-unknown", lambda m: m["variants"].__setitem__("int4", m["variants"]["fp32"]), r"int4"),
        ("variant-onnx-unlisted", setter("variants.fp32.onnx", "onnx/model.elsewhere.onnx"),
         r"onnx/model\.elsewhere\.onnx"),
        ("engine-plan-unlisted", setter("engines", [{"plan": "engines/trt-11.4/sm_86.fp32.plan", "variant": "fp32",
                                                    "trt_version": "11.4.0"}]), r"sm_86\.fp32\.plan"),
        ("engine-hardware-compat-unknown",
         setter("engines", [{"plan": first_model, "variant": "fp32", "trt_version": "11.4.0",
                             "hardware_compat": "turing+"}]), r"hardware_compat"),
        ("provenance-missing", deleter("provenance"), r"provenance"),
        # fields the runtime reads after validation: their types must be checked too
        ("ort-not-object", setter("ort", 1.5), r"\bort\b"),
        ("ort-cpu-flags-not-strings", setter("ort.cpu_flags", [None, 3]), r"cpu_flags"),
        ("default-variant-not-object", setter("default_variant", 3), r"default_variant"),
        ("default-variant-unhashable", setter("default_variant.onnxruntime", {"variant": "fp32"}),
         r"default_variant"),
        ("variant-onnx-is-a-list", setter("variants.fp32.onnx", ["onnx/model.fp32.onnx"]), r"variants\.fp32\.onnx"),
        ("manifest-is-a-list", lambda m: [m], r"not a SliceRT bundle manifest"),
        ("member-name-escapes", lambda m: m["members"].__setitem__("../../etc/passwd", m["members"][first_model]),
         r"\.\./\.\./etc/passwd"),
    ]
    for name, fn, match in schema_edits:
        add(f"manifest-{name}", edited(fn), "BundleError", match, f"manifest edited: {name}")
    add("manifest-not-json", lambda p: repack(p, None, members, manifest_bytes=b"{\"format\": \"slicert-bundle\", "),
        "BundleError", r"manifest\.json.*JSON", "manifest.json is cut-off JSON")
    add("manifest-deeply-nested", lambda p: repack(p, None, members, manifest_bytes=b"[" * 100_000 + b"]" * 100_000),
        "BundleError", r"manifest\.json", "manifest.json nests 100000 arrays (hostile JSON)")
    add("manifest-not-utf8", lambda p: repack(p, None, members, manifest_bytes=b"\xff\xfe{\x00}\x00"),
        "BundleError", r"manifest\.json", "manifest.json in UTF-16 with a BOM")

    # members disagree with the manifest ---------------------------------------------------------------
    def without(member: str) -> Callable[[Path], None]:
        return lambda p: repack(p, manifest, {k: v for k, v in members.items() if k != member})

    add("member-missing", without(first_model), "BundleError", rf"{first_model}.*missing",
        f"{first_model} listed in the manifest but absent")
    add("member-unlisted", lambda p: repack(p, manifest, {**members, "onnx/extra.onnx": b"\0" * 64}), "BundleError",
        r"onnx/extra\.onnx.*not listed", "an extra member the manifest does not list")
    add("member-deflated", lambda p: repack(p, manifest, members, deflate=frozenset({first_model})), "BundleError",
        rf"{first_model}.*compressed", f"{first_model} stored deflated (repacked by a zip tool)")
    add("member-size-mismatch", edited(lambda m: m["members"][first_model].__setitem__(
        "size", m["members"][first_model]["size"] + 1)), "BundleError", rf"{first_model}.*bytes",
        "manifest size one byte larger than the member")

    # consistent (digests fixed) but wrong content -------------------------------------------------------
    garbage = np.random.default_rng(5).integers(0, 256, 2048, dtype=np.uint8).tobytes()

    def consistent(changes: dict[str, bytes | None], edit: Callable[[dict], None] | None = None):
        def write(p: Path) -> None:
            m = json.loads(json.dumps(manifest))
            if edit:
                edit(m)
            new = {k: v for k, v in {**members, **changes}.items() if v is not None}
            repack(p, m, new, fix_digests=True)
        return write

    model_members = [k for k in members if k.endswith(".onnx")]
    add("models-garbage-digests-fixed", consistent({k: garbage for k in model_members}), "BundleError",
        r"onnx|model", "every model member replaced by noise, digests recomputed (integrity passes)")
    for name, onnx_bytes, match, why in [
        ("model-input-64-spec-32", _onnx_classifier_variant(side=64), r"shape|64|32",
         "the model takes 64x64 but the manifest's spec produces 32x32"),
        ("model-output-renamed", _onnx_classifier_variant(output_name="probs"), r"probs|scores|output",
         "the model's output is 'probs', the manifest says 'scores'"),
        ("model-five-classes", _onnx_classifier_variant(k=5), r"labels|classes|5|3",
         "the model outputs 5 scores, the manifest lists 3 labels"),
        ("model-two-inputs", _onnx_classifier_variant(inputs=2), r"input", "the model has two inputs"),
    ]:
        add(f"consistent-{name}", consistent({k: onnx_bytes for k in model_members}), "BundleError", match,
            why + " (digests recomputed)")

    # foreign files --------------------------------------------------------------------------------
    onnx_raw = members[first_model]
    add("foreign-onnx-file", lambda p: p.write_bytes(onnx_raw), "BundleError", r"not a SliceRT bundle",
        "a bare ONNX model with a .slicert name")
    add("foreign-json", lambda p: p.write_bytes(json.dumps(manifest).encode()), "BundleError",
        r"not a SliceRT bundle", "the manifest alone, not zipped")
    add("foreign-gzip", lambda p: p.write_bytes(gzip.compress(raw, mtime=0)), "BundleError", r"not a SliceRT bundle",
        "the bundle gzip-compressed")

    def tar(p: Path) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            info = tarfile.TarInfo("model.onnx")
            info.size = len(onnx_raw)
            tf.addfile(info, io.BytesIO(onnx_raw))
        p.write_bytes(buf.getvalue())
    add("foreign-tar", tar, "BundleError", r"not a SliceRT bundle", "a tar archive of the model")

    def npz(p: Path) -> None:
        buf = io.BytesIO()
        np.savez(buf, weights=np.arange(10.0))
        p.write_bytes(buf.getvalue())
    add("foreign-npz", npz, "BundleError", r"no manifest\.json", "a NumPy .npz (a zip without manifest)")
    add("foreign-savedmodel-zip", lambda p: write_zip(p, [("saved_model.pb", b"\x08\x01"),
                                                          ("variables/variables.index", b"\0" * 16)]),
        "BundleError", r"no manifest\.json", "a zipped TensorFlow SavedModel layout")
    add("foreign-other-tool-manifest", lambda p: write_zip(p, [("manifest.json", json.dumps(
        {"name": "resnet50", "version": 3, "inputs": [{"name": "x", "shape": [1, 3, 224, 224]}]}).encode()),
        ("model.onnx", onnx_raw)]), "BundleError", r"not a SliceRT bundle manifest",
        "a zip with another tool's manifest.json")

    def directory(p: Path) -> None:
        p.mkdir(exist_ok=True)
        (p / "manifest.json").write_text("{}")
    add("foreign-directory", directory, "BundleError", r"directory", "a folder named like a bundle")
    cases.append(Case(id="bundle/classifier/nonexistent-path", group="bundle", entry="engine.load",
                      expect="BundleError", match=r"no bundle at", why="a path that does not exist",
                      file="bundles/does-not-exist.slicert"))
    cases.append(Case(id="bundle/classifier/open-bundle-flipped-byte", group="bundle", entry="bundle.open",
                      expect="BundleError", match=rf"{first_model}.*SHA-256",
                      why="open_bundle (the reader behind `slicert inspect`) on a flipped byte",
                      file=f"bundles/flipped-byte-{first_model.replace('/', '_')}.slicert"))

    # engines for another GPU -------------------------------------------------------------------------------
    plan = np.random.default_rng(9).integers(0, 256, 4096, dtype=np.uint8).tobytes()

    def with_engines(engines: list[dict]) -> Callable[[Path], None]:
        def edit(m: dict) -> None:
            m["engines"] = engines
        return consistent({e["plan"]: plan for e in engines}, edit)

    def engine(cc: tuple[int, int], trt: str, compat: str = "none", variant: str = "fp32", vc: bool = False) -> dict:
        key = "ampere+" if compat == "ampere+" else f"sm_{cc[0]}{cc[1]}"
        mm = ".".join(trt.split(".")[:2])
        return {"plan": f"engines/trt-{mm}/{key}.{variant}.plan", "variant": variant, "trt_version": trt,
                "compute_capability": list(cc), "hardware_compat": compat, "version_compatible": vc}

    gpu_cases = [
        ("engine-sm75-trt10-on-sm86-trt11", [engine((7, 5), "10.0.1")], (8, 6), "11.4.0",
         r"no engine fits sm_86 with TensorRT 11\.4\.0.*sm_75.*10\.0\.1",
         "only a Turing plan built by TensorRT 10.0, device is sm_86 with TensorRT 11.4"),
        ("engine-sm86-on-sm89", [engine((8, 6), "11.4.0")], (8, 9), "11.4.0", r"no engine fits sm_89.*sm_86",
         "only an sm_86 plan, device is sm_89 (same TensorRT)"),
        ("engine-ampere-plus-on-turing", [engine((8, 0), "11.4.0", "ampere+")], (7, 5), "11.4.0",
         r"no engine fits sm_75.*ampere\+", "an Ampere+ hardware-compatible plan on a Turing (sm_75) device"),
        ("engine-newer-trt-version-compatible", [engine((8, 6), "11.6.0", vc=True)], (8, 6), "11.4.0",
         r"no engine fits sm_86 with TensorRT 11\.4\.0.*11\.6\.0",
         "a version-compatible plan built by a NEWER TensorRT (11.6) than the device has (11.4)"),
        ("engine-only-int8-variant", [engine((8, 6), "11.4.0", variant="int8")], (8, 6), "11.4.0",
         r"no TensorRT engine for the fp32 variant", "the only plan is for the int8 variant, the bundle runs fp32"),
        ("engine-none-built", [], (8, 6), "11.4.0", r"built without TensorRT",
         "no TensorRT engine at all (a CPU-only bundle) with backend='tensorrt'"),
    ]
    for name, engines, cc, trt, match, why in gpu_cases:
        add(name, with_engines(engines), "EngineMismatch", match, why + " (GPU facts simulated)",
            entry="engine.load.gpu", kwargs={"compute_capability": list(cc), "trt_version": trt})
    add("engine-sm75-trt10-real-machine", with_engines([engine((7, 5), "10.0.1")]), "BackendUnavailable",
        r"tensorrt.*cannot run here", "a foreign-GPU plan loaded with backend='tensorrt' on this GPU-less machine",
        kwargs={"backend": "tensorrt"})
    _ = folder
    return cases
