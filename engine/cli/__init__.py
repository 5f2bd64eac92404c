"""`slicert` command line. Each command lives in its own module and registers itself here; heavy
imports (ONNX Runtime, PyTorch) happen inside the command bodies, never at start-up."""
from __future__ import annotations

import importlib

import typer

app = typer.Typer(name="slicert", help="SliceRT: fast, honest per-slice inference for medical imaging.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)



@app.callback()
def _root() -> None:
    """SliceRT: fast, honest per-slice inference for medical imaging."""


# Order = order in --help. Each module defines register(app).
_COMMAND_MODULES = [
    "tools.demo",
    "engine.cli.info",
    "engine.cli.bench",
    "engine.cli.build",
    "engine.cli.inspect",
    "engine.cli.serve_dicom",
    "engine.cli.dicom_out",
    "engine.cli.worker",
    "tools.quantize.cli",
    "tools.cli",
    "tools.dataset.cli",
    "tools.batch.cli",
]


def _register() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(app)


def main() -> None:
    _register()
    app()
