from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from engine.bench import report
from engine.bench.files import atomic_write_text, check_output_path
from engine.bench.runner import OTHER, TOTAL, Pipeline, run_benchmark
from engine.errors import InputError, OutputExists


@pytest.fixture(scope="module")
def run():
    x = np.arange(50_000, dtype=np.float64)
    a = Pipeline("numpy-a", lambda: [("preprocess", np.sqrt), ("infer", np.sum)], input=x, meta={"kind": "a"})
    b = Pipeline(
        "numpy-b",
        lambda: [("decode", lambda v: v.copy()), ("preprocess", np.sqrt), ("postprocess", np.max)],
        input=x,
        items_per_call=2,
    )
    return run_benchmark([a, b], n=25, warmup=2)  # real environment(): the report must serialize it


def test_json_round_trip(run, tmp_path):
    path = report.write_json(run, tmp_path / "r.json")
    d = json.loads(path.read_text())
    assert d["schema"] == "slicert.bench" and d["schema_version"] == 1
    assert d["environment"]["cpu_model"] and "loadavg_before" in d["environment"]
    assert d["settings"]["gc_disabled"] is True and d["settings"]["clock"] == "time.perf_counter_ns"
    back = report.read_json(path)
    assert [c.name for c in back.configurations] == ["numpy-a", "numpy-b"]
    for orig, new, cd in zip(run.configurations, back.configurations, d["configurations"], strict=True):
        assert new.stages == orig.stages == cd["stages"]
        for k in orig.samples_ns:
            np.testing.assert_array_equal(new.samples_ns[k], orig.samples_ns[k])
        # Stats stored in the file are exactly what the raw samples in the file give.
        assert new.stats() == cd["stats_ms"] == orig.stats()
        assert new.items_per_call == orig.items_per_call and new.meta == orig.meta
        assert new.cold_start_ms == orig.cold_start_ms
    assert set(d["configurations"][1]["stats_ms"]) == {TOTAL, "decode", "preprocess", "postprocess", OTHER}
    assert d["comparisons"][0]["reference"] == "numpy-a"
    assert report.to_dict(back) == d  # rebuilding loses nothing


def test_json_reader_rejects_other_files(tmp_path):
    p = tmp_path / "x.json"
    for content, match in (
        ({"schema": "other"}, "not a SliceRT"),
        ({"schema": "slicert.bench", "schema_version": 99}, "schema_version"),
        ({"schema": "slicert.bench", "schema_version": 1}, "configurations"),
    ):
        p.write_text(json.dumps(content))
        with pytest.raises(InputError, match=match):
            report.read_json(p)
    p.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        report.read_json(p)
    with pytest.raises(InputError, match="does not exist"):
        report.read_json(tmp_path / "missing.json")


def test_never_overwrites_without_force(run, tmp_path):
    writers = {"r.json": report.write_json, "r.md": report.write_markdown, "r.png": report.write_plot}
    for name, write in writers.items():
        p = tmp_path / name
        p.write_text("user data")
        with pytest.raises(OutputExists, match="--force"):
            write(run, p)
        assert p.read_text() == "user data"
        write(run, p, force=True)
        assert p.read_bytes() != b"user data"
    assert sorted(os.listdir(tmp_path)) == sorted(writers)  # no temp files left behind


def test_unwritable_paths_are_input_errors(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match="does not exist"):
        check_output_path(tmp_path / "no" / "such" / "r.json", force=False)
    with pytest.raises(InputError, match="does not exist"):
        check_output_path(f / "r.json", force=False)  # parent is a file
    with pytest.raises(InputError, match="is a directory"):
        check_output_path(tmp_path, force=True)


def test_atomic_write_failure_leaves_no_partial_file(tmp_path):
    p = tmp_path / "r.md"

    def boom(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")

    from engine.bench.files import atomic_write

    with pytest.raises(RuntimeError):
        atomic_write(p, boom, force=False)
    assert os.listdir(tmp_path) == []
    atomic_write_text(p, "ok", force=False)
    assert p.read_text() == "ok"


def test_plot_is_a_real_png(run, tmp_path):
    from matplotlib.image import imread

    p = report.write_plot(run, tmp_path / "r.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(p)
    assert img.shape[0] > 300 and img.shape[1] > 600
    assert img[..., :3].std() > 0.05  # not a blank canvas


def test_plot_without_matplotlib_names_the_extra(run, tmp_path, monkeypatch):
    # A None entry in sys.modules makes `import matplotlib` raise ImportError, as when it is not installed.
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(report.PlotUnavailable, match=r"pip install slicert\[plot\]") as ei:
        report.write_plot(run, tmp_path / "r.png")
    assert isinstance(ei.value, ImportError)
    assert not (tmp_path / "r.png").exists()


def test_markdown_and_table_list_every_stage(run, tmp_path):
    md = report.to_markdown(run)
    for c in run.configurations:
        for s in [TOTAL, *c.stages, OTHER]:
            assert f"| {c.name} | {s} |" in md
    assert "Speed-up vs reference" in md and "Load average" in md and "disabled" in md
    from rich.console import Console

    console = Console(record=True, width=160)
    report.render_table(run, console=console)
    text = console.export_text()
    assert "numpy-a" in text and "numpy-b" in text and "p99.9" in text and "postprocess" in text


def test_short_runs_say_their_p99_9_is_not_a_measured_tail(run):
    md = report.to_markdown(run)
    assert "p99.9 from 25 < 1000 samples" in md
