from __future__ import annotations

import sys

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from engine.bench.configs import parse_config_spec, parse_input, synthetic_image
from engine.cli import bench as bench_cli
from engine.errors import InputError


@pytest.fixture
def cli():
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    bench_cli.register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["bench", *map(str, args)])


def test_missing_bundle(cli, tmp_path):
    r = cli(tmp_path / "nope.slicert")
    assert r.exit_code == 2
    assert "BundleError" in r.output and "does not exist" in r.output


@pytest.mark.parametrize(
    "args,match",
    [
        (["--n", "0"], "--n"),
        (["--warmup", "-1"], "--warmup"),
        (["--threads", "0"], "--threads"),
        (["--batch", "0"], "--batch"),
        (["--cold-start-repeats", "-1"], "--cold-start-repeats"),
    ],
)
def test_bad_counts(cli, tmp_path, args, match):
    r = cli(tmp_path / "x.slicert", *args)
    assert r.exit_code == 2 and "InputError" in r.output and match in r.output


def test_existing_output_refused_before_anything_runs(cli, tmp_path):
    out = tmp_path / "r.json"
    out.write_text("previous results")
    r = cli(tmp_path / "missing.slicert", "--json", out)
    assert r.exit_code == 2 and "OutputExists" in r.output and "--force" in r.output
    assert out.read_text() == "previous results"


def test_unwritable_output_path(cli, tmp_path):
    r = cli(tmp_path / "missing.slicert", "--md", tmp_path / "no-dir" / "r.md")
    assert r.exit_code == 2 and "does not exist" in r.output and "no-dir" in r.output


def test_same_file_for_two_outputs(cli, tmp_path):
    r = cli(tmp_path / "m.slicert", "--json", tmp_path / "a", "--md", tmp_path / "a")
    assert r.exit_code == 2 and "different files" in r.output


def test_plot_extra_missing(cli, tmp_path, monkeypatch):
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    r = cli(tmp_path / "m.slicert", "--plot", tmp_path / "p.png")
    assert r.exit_code == 2 and "PlotUnavailable" in r.output and "pip install slicert[plot]" in r.output


def test_several_bundles_need_compare(cli, tmp_path):
    r = cli(tmp_path / "a.slicert", tmp_path / "b.slicert")
    assert r.exit_code == 2 and "--compare" in r.output


def test_bad_pin(cli, tmp_path):
    r = cli(tmp_path / "a.slicert", "--pin", "x")
    assert r.exit_code == 2 and "--pin" in r.output


def test_parse_config_spec():
    assert parse_config_spec("m.slicert") == (__import__("pathlib").Path("m.slicert"), {}, None)
    p, kw, name = parse_config_spec("dir:with:colons/m.slicert:backend=onnxruntime, threads=2,name=ort 2t")
    assert str(p) == "dir:with:colons/m.slicert"
    assert kw == {"backend": "onnxruntime", "threads": 2} and name == "ort 2t"
    with pytest.raises(InputError, match="key=value"):
        parse_config_spec("m.slicert:threads=2,oops")


def test_parse_input_synthetic_and_files(tmp_path):
    x, meta = parse_input("synthetic:64x48")
    assert x.shape == (64, 48) and x.dtype == np.uint16 and x.std() > 100 and x.max() <= 4095
    assert "not a real image" in meta["input"]
    rgb, _ = parse_input("synthetic:32x32", in_channels=3)
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(synthetic_image((16, 16)), synthetic_image((16, 16)))  # seeded
    arr = np.arange(12, dtype=np.int16).reshape(3, 4)
    np.save(tmp_path / "a.npy", arr)
    got, meta = parse_input(str(tmp_path / "a.npy"))
    np.testing.assert_array_equal(got, arr)
    for bad in ("synthetic:64", "synthetic:0x4", "synthetic:axb", str(tmp_path / "missing.dcm")):
        with pytest.raises(InputError):
            parse_input(bad)


# -- end to end on a real bundle (engine.load + Session.run on ONNX Runtime) --------------------------
def test_cli_end_to_end_json_md_plot(cli, tiny_bundle, tmp_path):
    import json

    from engine.bench import report

    out_json, out_md, out_png = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.png"
    r = cli(
        tiny_bundle,
        "--input",
        "synthetic:200x180",
        "--n",
        "30",
        "--warmup",
        "3",
        "--threads",
        "1",
        "--json",
        out_json,
        "--md",
        out_md,
        "--plot",
        out_png,
        "--cold-start-repeats",
        "1",
    )
    assert r.exit_code == 0, r.output
    assert "p99.9" in r.output and "preprocess" in r.output  # the table went to the terminal
    d = json.loads(out_json.read_text())
    c = d["configurations"][0]
    assert c["stages"] == ["decode", "preprocess", "h2d", "infer", "d2h", "postprocess"]
    assert len(c["samples_ns"]["total"]) == 30 and c["stats_ms"]["total"]["n"] == 30
    assert c["meta"]["session_info"]["backend"] == "onnxruntime"
    assert c["meta"]["input_shape"] == [200, 180] and "not a real image" in c["meta"]["input"]
    assert c["cold_start_ms"] >= c["first_inference_ms"] > 0
    assert d["settings"]["threads"] == 1
    assert report.read_json(out_json).configurations[0].stats() == c["stats_ms"]
    cp = c["cold_start_process"]  # fresh processes: import + load + first result, measured after the loop
    assert cp["repeats"] == 1 and len(cp["load_ms"]) == 1
    assert cp["spawn_to_exit_ms"][0] > cp["import_to_first_result_ms"][0] > cp["load_ms"][0] > 0
    md = out_md.read_text()
    assert "| tiny | total |" in md and "| tiny | preprocess |" in md
    # A raw array needs no decoding and the CPU has no h2d/d2h: kept (as zeros) in the JSON, not in tables.
    assert "| tiny | decode |" not in md and "tiny: decode, h2d, d2h" in md
    assert set(c["samples_ns"]["decode"]) == {0}
    assert out_png.read_bytes()[:4] == b"\x89PNG"
    # A second run must not overwrite the results...
    before = out_json.read_bytes()
    r = cli(tiny_bundle, "--n", "2", "--warmup", "0", "--json", out_json, "--cold-start-repeats", "0")
    assert r.exit_code == 2 and "OutputExists" in r.output and out_json.read_bytes() == before
    # ... unless asked to.
    r = cli(
        tiny_bundle, "--n", "2", "--warmup", "0", "--json", out_json, "--force", "--cold-start-repeats", "0"
    )
    assert r.exit_code == 0 and json.loads(out_json.read_text())["settings"]["n"] == 2


def test_cli_compare_interleaves_configurations(cli, tiny_bundle, tmp_path):
    import json

    out = tmp_path / "c.json"
    r = cli(
        "--compare",
        f"{tiny_bundle}:threads=1,name=one",
        f"{tiny_bundle}:threads=2,name=two",
        "--input",
        "synthetic:64x64",
        "--n",
        "20",
        "--warmup",
        "2",
        "--json",
        out,
        "--reference",
        "two",
        "--cold-start-repeats",
        "0",
    )
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert [c["name"] for c in d["configurations"]] == ["one", "two"]
    assert d["configurations"][0]["meta"]["load_kwargs"] == {"threads": 1}
    assert d["comparisons"][0]["name"] == "one" and d["comparisons"][0]["reference"] == "two"
    assert d["comparisons"][0]["paired_speedup"]["n"] == 20


def test_cli_batch_and_dicom_input(cli, tiny_bundle, tmp_path):
    import json

    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm", download=False)
    out = tmp_path / "b.json"
    r = cli(
        tiny_bundle,
        "--input",
        path,
        "--batch",
        "2",
        "--n",
        "5",
        "--warmup",
        "1",
        "--json",
        out,
        "--cold-start-repeats",
        "0",
    )
    assert r.exit_code == 0, r.output
    c = json.loads(out.read_text())["configurations"][0]
    assert c["items_per_call"] == 2 and c["meta"]["load_kwargs"]["max_batch"] == 2
    assert "DICOM file CT_small.dcm" in c["meta"]["input"]
    assert min(c["samples_ns"]["decode"]) > 0  # the file is decoded on every call


def test_cli_unknown_load_option(cli, tiny_bundle):
    r = cli(f"{tiny_bundle}:colour=blue")
    assert r.exit_code == 2 and "unknown option" in r.output and "threads" in r.output


def test_cli_corrupt_bundle_is_bundle_error(cli, tmp_path):
    bad = tmp_path / "bad.slicert"
    bad.write_bytes(b"not a zip at all" * 10)
    r = cli(bad, "--n", "1")
    assert r.exit_code == 2 and "BundleError" in r.output


def test_cli_cine_input_runs_pre_decoded_frames(cli, tiny_bundle, tmp_path):
    import json
    from pathlib import Path

    import deid_data

    cine = Path(deid_data.__file__).parent / "data" / "ultrasounds" / "ultrasound-multiframe.dcm"
    out = tmp_path / "cine.json"
    r = cli(
        tiny_bundle, "--input", cine, "--n", "4", "--warmup", "0", "--json", out, "--cold-start-repeats", "0"
    )
    assert r.exit_code == 0, r.output
    c = json.loads(out.read_text())["configurations"][0]
    assert c["meta"]["frames"] == 30 and c["meta"]["input_shape"] == [600, 800, 3]
    assert set(c["samples_ns"]["decode"]) == {0}  # decoded before timing; RGB -> grey by the spec from DICOM


def test_cli_unavailable_backend_is_typed(cli, tiny_bundle):
    r = cli(tiny_bundle, "--backend", "tensorrt", "--n", "1", "--cold-start-repeats", "0")
    assert r.exit_code == 2 and "BackendUnavailable" in r.output and "onnxruntime" in r.output
