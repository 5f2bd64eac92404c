"""`slicert inspect BUNDLE`: verify a bundle and show its manifest, variants, engines, accuracy, trust, provenance."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer


def _fmt(v: Any) -> str:
    """Plain text for a table cell, escaped so '[gpu]' and the like are not read as rich markup."""
    from rich.markup import escape

    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return escape(json.dumps(v, sort_keys=True))
    return escape(str(v))


def _accuracy_rows(acc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(variant, metrics "name value [CI95]", gate, agreement) per variant of the quantizer's report."""
    rows = []
    variants = acc.get("variants") if isinstance(acc.get("variants"), dict) else {}
    for name, entry in variants.items():
        if not isinstance(entry, dict):
            continue
        metrics = []
        for metric, m in (entry.get("metrics") or {}).items():
            if isinstance(m, dict) and isinstance(m.get("value"), (int, float)):
                ci = m.get("ci95")
                ci_txt = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if isinstance(ci, list) and len(ci) == 2 and None not in ci else ""
                metrics.append(f"{metric} {m['value']:.4f}{ci_txt}")
            elif isinstance(m, (int, float)):
                metrics.append(f"{metric} {m:.4f}")
        passed = entry.get("passed")
        gate = ("pass" if passed else "FAIL" if passed is False else "-") + (
            " (loss accepted)" if entry.get("accepted_loss") else "")
        if entry.get("reason"):
            gate += f": {entry['reason']}"
        agreement = ", ".join(f"{k} {v:.4f}" for k, v in (entry.get("agreement") or {}).items()
                              if isinstance(v, (int, float)))
        rows.append((_fmt(name), _fmt("; ".join(metrics) or "-"), _fmt(gate), _fmt(agreement or "-")))
    return rows


def render(path: Path, console: Any = None) -> dict[str, Any]:
    """Print the bundle's summary with rich; returns the manifest. Raises BundleError when it fails to verify."""
    from rich.console import Console
    from rich.table import Table

    from engine.bundle import open_bundle

    console = console or Console()
    with open_bundle(path) as b:
        m = b.manifest
        size = path.stat().st_size
    console.print(f"[bold]{_fmt(path)}[/]  ({size / 1024:.1f} KiB, schema {m['schema_version']}, every member's SHA-256 "
                  f"verified)")

    t = Table(title="model", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value")
    model = m["model"]
    for k, v in (("name", model["name"]), ("task", model["task"]), ("labels", ", ".join(model["labels"])),
                 ("input", f"{m['input']['name']} {m['input']['dtype']} {m['input']['shape']} "
                           f"({m['input'].get('layout', 'NCHW')}, max batch {m['input'].get('max_batch', 1)})"),
                 ("output", f"{m['output']['name']} {m['output'].get('dtype', '')} {m['output'].get('shape', '')} "
                            f"-> {m['output']['postprocess']}"),
                 ("voi policy", m["voi_policy"]), ("created", m.get("created_utc")),
                 ("dataset", model.get("dataset"))):
        t.add_row(k, _fmt(v))
    spec = m["preprocess"]
    t.add_row("preprocess", ", ".join(f"{k}={_fmt(v)}" for k, v in spec.items()
                                      if k not in ("modality_lut", "voi_lut") or v is not None))
    console.print(t)

    t = Table(title="variants")
    for col in ("variant", "ONNX", "ORT optimized", "accuracy gate", "default for"):
        t.add_column(col, overflow="fold")
    defaults = m.get("default_variant", {})
    for v, e in m["variants"].items():
        gate = e.get("accuracy_gate") or {}
        passed = gate.get("passed")
        gate_txt = ("pass" if passed else "FAIL" if passed is False else "not stated") + (
            f" ({gate['detail']})" if gate.get("detail") else "")
        t.add_row(v, f"{e['onnx']} ({m['members'][e['onnx']]['size'] / 1024:.1f} KiB)",
                  e.get("ort") or "-", _fmt(gate_txt), ", ".join(k for k, d in defaults.items() if d == v) or "-")
    for v, why in (m.get("excluded_variants") or {}).items():
        t.add_row(v, "[yellow]left out[/]", "-", _fmt(why), "-")
    console.print(t)

    t = Table(title="TensorRT engines")
    for col in ("plan", "variant", "GPU", "TensorRT", "compat", "max batch"):
        t.add_column(col, overflow="fold")
    for e in m["engines"]:
        cc = e.get("compute_capability") or []
        t.add_row(e["plan"], e["variant"], _fmt(f"{e.get('device_name', '?')} sm_{''.join(map(str, cc))}"),
                  e["trt_version"], f"{e.get('hardware_compat', 'none')}"
                  + (", version-compatible (lean runtime excluded)" if e.get("version_compatible") else ""),
                  _fmt(e.get("max_batch")))
    console.print(t)
    if not m["engines"]:
        console.print(f"  no engines: {_fmt(m.get('engines_not_built') or 'none built')}")

    acc = m.get("accuracy")
    if isinstance(acc, dict):
        gate = acc.get("gate") if isinstance(acc.get("gate"), dict) else {}
        title = "accuracy report (from the quantizer"
        if gate.get("metric"):
            title += f"; gate: Δ{gate['metric']} <= {gate.get('budget')} on the {gate.get('split', '?')} split"
        t = Table(title=_fmt(title + ")"))
        for col in ("variant", "metrics (95% CI)", "gate", "agreement with FP32"):
            t.add_column(col, overflow="fold")
        for row in _accuracy_rows(acc):
            t.add_row(*row)
        console.print(t)
        data = acc.get("data") if isinstance(acc.get("data"), dict) else {}
        if data.get("description") or "synthetic" in data:
            console.print(_fmt(f"  data: {data.get('description', '?')} (synthetic: {data.get('synthetic', '?')})"))
        for note in acc.get("notes") or []:
            console.print(_fmt(f"  note: {note}"))
    else:
        console.print("accuracy: no report in this bundle")
    from engine.cli.inspect_trust import render_trust

    render_trust(console, m, _fmt)  # eligibility, OOD false alarms / detection, ECE (issue 17)

    t = Table(title="provenance", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value")
    for k, v in m["provenance"].items():
        t.add_row(k, _fmt(v))
    console.print(t)

    t = Table(title="members")
    for col in ("member", "bytes", "sha256"):
        t.add_column(col)
    for name, e in sorted(m["members"].items()):
        t.add_row(name, str(e["size"]), e["sha256"][:16] + "...")
    console.print(t)
    return m


def register(app: typer.Typer) -> None:
    @app.command()
    def inspect(
        bundle: Path = typer.Argument(..., help="A .slicert bundle."),
        as_json: bool = typer.Option(False, "--json", help="Print the verified manifest as JSON."),
    ) -> None:
        """Verify a bundle and print its manifest, variants, engines, accuracy and provenance."""
        from engine.errors import SliceRTError

        try:
            if as_json:
                from engine.bundle import open_bundle

                with open_bundle(bundle) as b:
                    typer.echo(json.dumps(b.manifest, indent=2, sort_keys=True))
                return
            render(bundle)
        except SliceRTError as exc:
            typer.echo(f"error: {type(exc).__name__}: {exc}", err=True)
            raise typer.Exit(code=2) from None
