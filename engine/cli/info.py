from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def info(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
        """Versions, CUDA compiled/available (with the reason), backends, CPU features, threads."""
        from rich.console import Console
        from rich.table import Table

        from engine.envinfo import environment

        env = environment()
        try:
            from engine.backends import available_backends

            env["backends"] = available_backends()
        except ImportError:
            env["backends"] = {}
        if as_json:
            typer.echo(json.dumps(env, indent=2))
            return
        table = Table(title="SliceRT", show_header=False)
        table.add_column("key", style="bold")
        table.add_column("value")
        table.add_row("version", env["slicert"])
        table.add_row("python", f"{env['python']} on {env['platform']}")
        table.add_row("CPU", f"{env['cpu_model']} ({env['cpus_usable']} usable of {env['cpu_count']} cores)")
        table.add_row("CPU features", " ".join(env["cpu_flags"]) or "-")
        cuda = "compiled in" if env["cuda_compiled"] else "not compiled"
        if env["cuda_devices"]:
            cuda += f", {env['cuda_devices']} device(s): " + ", ".join(g.get("name", "?") for g in env["gpus"])
        else:
            cuda += f", unavailable: {env['cuda_reason']}"
        table.add_row("CUDA", cuda)
        for name, status in env["backends"].items():
            table.add_row(f"backend {name}", status)
        for name, ver in env["versions"].items():
            table.add_row(name, ver or "not installed")
        Console().print(table)
