"""`slicert inspect BUNDLE`: verify a bundle and show its manifest, variants, engines, accuracy, trust, provenance."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer


def _fmt(v: Any) -> str:
    """Plain text for a table cell: terminal control characters shown as escapes (engine.safe_text:
    a manifest string must not set the window title or clear the screen), and rich markup escaped so
    '[gpu]' and the like are not read as markup."""
    from rich.markup import escape

    from engine.safe_text import safe

    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return escape(json.dumps(v, sort_keys=True))  # ensure_ascii: control characters become \uXXXX
    return escape(safe(str(v)))


def _num(v: Any, spec: str) -> str | None:
    """format(v, spec) for a real number (not bool), else None: report fields may have any shape."""
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _signature_line(sig: Any) -> str:
    if sig is None or not sig.signed:
        return "[yellow]not signed[/] (integrity only: `slicert build --sign KEY` adds authenticity)"
    if sig.verified:
        return f"[bold green]signed[/] by trusted key {_fmt(sig.signer)}: signature verified"
    return (f"signed by key {_fmt(sig.signer)}: signature valid, [yellow]signer not checked[/] (pass --trusted-key "
            f"PUBLIC.pem to verify who signed)")


def _accuracy_rows(acc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(variant, metrics "name value [CI95]", gate, agreement) per variant of the quantizer's report."""
    rows = []
    variants = acc.get("variants") if isinstance(acc.get("variants"), dict) else {}
    for name, entry in variants.items():
        if not isinstance(entry, dict):
            continue
        metrics = []
        entry_metrics = entry.get("metrics")
        for metric, m in (entry_metrics.items() if isinstance(entry_metrics, dict) else ()):
            if isinstance(m, dict) and _num(m.get("value"), ".4f") is not None:
                ci = m.get("ci95")
                lo, hi = (_num(ci[0], ".3f"), _num(ci[1], ".3f")) if isinstance(ci, list) and len(ci) == 2 else (None,
                                                                                                               None)
                ci_txt = f" [{lo}, {hi}]" if lo is not None and hi is not None else ""
                metrics.append(f"{metric} {_num(m['value'], '.4f')}{ci_txt}")
            elif _num(m, ".4f") is not None:
                metrics.append(f"{metric} {_num(m, '.4f')}")
        passed = entry.get("passed")
        gate = ("pass" if passed else "FAIL" if passed is False else "-") + (
            " (loss accepted)" if entry.get("accepted_loss") else "")
        if entry.get("reason"):
            gate += f": {entry['reason']}"
        agree = entry.get("agreement")
        agreement = ", ".join(f"{k} {_num(v, '.4f')}" for k, v in (agree.items() if isinstance(agree, dict) else ())
                              if _num(v, ".4f") is not None)
        rows.append((_fmt(name), _fmt("; ".join(metrics) or "-"), _fmt(gate), _fmt(agreement or "-")))
    return rows


def render(path: Path, console: Any = None, trusted_keys: Any = None) -> dict[str, Any]:
    """Print the bundle's summary with rich; returns the manifest. Raises BundleError when it fails to verify
    (SignatureError when `trusted_keys` are given and no trusted key signed it)."""
    from rich.console import Console
    from rich.table import Table

    from engine.bundle import open_bundle

    console = console or Console()
    with open_bundle(path, trusted_keys=trusted_keys) as b:
        m = b.manifest
        sig = b.signature
        size = path.stat().st_size
    console.print(f"[bold]{_fmt(path)}[/]  ({size / 1024:.1f} KiB, schema {m['schema_version']}, every member's SHA-256 "
                  f"verified)")
    console.print(f"  signature: {_signature_line(sig)}")

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
        t.add_row(_fmt(v), _fmt(f"{e['onnx']} ({m['members'][e['onnx']]['size'] / 1024:.1f} KiB)"),
                  _fmt(e.get("ort") or "-"), _fmt(gate_txt), _fmt(", ".join(k for k, d in defaults.items() if d == v)
                                                                   or "-"))
    for v, why in (m.get("excluded_variants") or {}).items():
        t.add_row(_fmt(v), "[yellow]left out[/]", "-", _fmt(why), "-")
    console.print(t)

    t = Table(title="TensorRT engines")
    for col in ("plan", "variant", "GPU", "TensorRT", "compat", "max batch"):
        t.add_column(col, overflow="fold")
    for e in m["engines"]:
        cc = e.get("compute_capability") or []
        t.add_row(_fmt(e["plan"]), _fmt(e["variant"]), _fmt(f"{e.get('device_name', '?')} sm_{''.join(map(str, cc))}"),
                  _fmt(e["trt_version"]), _fmt(f"{e.get('hardware_compat', 'none')}"
                                               + (", version-compatible (lean runtime excluded)"
                                                  if e.get("version_compatible") else "")),
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
        notes = acc.get("notes")
        for note in notes if isinstance(notes, list) else ([notes] if notes else []):
            console.print(_fmt(f"  note: {note}"))
    else:
        console.print("accuracy: no report in this bundle")
    from engine.cli.inspect_trust import render_trust

    render_trust(console, m, _fmt)  # eligibility, OOD false alarms / detection, ECE (issue 17)

    t = Table(title="provenance", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value")
    for k, v in m["provenance"].items():
        t.add_row(_fmt(k), _fmt(v))
    console.print(t)

    t = Table(title="members")
    for col in ("member", "bytes", "sha256"):
        t.add_column(col)
    for name, e in sorted(m["members"].items()):
        t.add_row(_fmt(name), str(e["size"]), e["sha256"][:16] + "...")
    console.print(t)
    return m


def register(app: typer.Typer) -> None:
    @app.command()
    def inspect(
        bundle: Path = typer.Argument(..., help="A .slicert bundle."),
        as_json: bool = typer.Option(False, "--json", help="Print the verified manifest as JSON."),
        trusted_key: list[Path] = typer.Option([], "--trusted-key",
                                               help="Ed25519 public key (PEM); the bundle must be signed by one."),
    ) -> None:
        """Verify a bundle and print its manifest, variants, engines, accuracy and provenance."""
        from engine.errors import SliceRTError

        try:
            if as_json:
                from engine.bundle import open_bundle

                with open_bundle(bundle, trusted_keys=trusted_key or None) as b:
                    typer.echo(json.dumps(b.manifest, indent=2, sort_keys=True))  # ensure_ascii: no raw controls
                return
            render(bundle, trusted_keys=trusted_key or None)
        except SliceRTError as exc:
            from engine.safe_text import safe

            typer.echo(f"error: {type(exc).__name__}: {safe(exc)}", err=True)
            raise typer.Exit(code=2) from None
