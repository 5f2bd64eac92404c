"""Flags are carried into the bench report: a configuration whose results are flagged says so in JSON and
Markdown, with the reasons."""
from __future__ import annotations

from .conftest import data_file


def test_bench_counts_and_quotes_flagged_results(trust_bundles):
    from engine.bench import report
    from engine.bench.configs import SessionConfig
    from engine.bench.runner import run_benchmark

    cfg = SessionConfig("trust cls", trust_bundles["cls"], data_file("CT_small.dcm"),
                        load_kwargs={"threads": 1, "eligibility": "flag"})
    run = run_benchmark([cfg], n=5, warmup=1)
    meta = run.configurations[0].meta
    assert meta["flagged_results"] == 7  # first inference + 1 warm-up + 5 timed calls, each flagged
    assert any("Modality CT" in f for f in meta["flags"])
    assert meta["session_info"]["trust"]["eligibility"] == "flag"
    md = report.to_markdown(run)
    assert "Flagged results (trust checks): trust cls: 7 calls flagged, first inference and warm-up included" in md
