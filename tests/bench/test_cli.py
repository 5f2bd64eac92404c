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


@pytest.mark.parametrize("args,match", [(["--n", "0"], "--n"), (["--warmup", "-1"], "--warmup"),
                                        (["--threads", "0"], "--threads"), (["--batch", "0"], "--batch")])
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
