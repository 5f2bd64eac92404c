"""One toolchain, imported one way: the demo zoo (tools.pipeline) and a user's model (tools.byom) both run
their steps through tools.core, and the steps never import whoever drives or displays them
(cli -> pipeline/byom -> core -> train/distill/export), at module level or lazily inside a function.
Only a step module's `if __name__ == "__main__":` block may import the CLI (`python -m tools.train`)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"
DRIVERS = {"tools.cli", "tools.pipeline", "tools.byom", "tools.demo"}


def _is_main_block(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def imports(rel: str) -> set[str]:
    """Every tools.* module `rel` imports anywhere outside its __main__ block."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_main_block(child):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module:
                found.add(child.module)
                found.update(f"{child.module}.{a.name}" for a in child.names)  # from tools import byom
            visit(child)

    visit(ast.parse((TOOLS / rel).read_text(encoding="utf-8")))
    return {m for m in found if m == "tools" or m.startswith("tools.")}


@pytest.mark.parametrize("rel", ["core.py", "train.py", "distill.py", "export.py", "dataset/zoo.py"])
def test_steps_never_import_their_drivers(rel):
    assert not imports(rel) & DRIVERS, (rel, sorted(imports(rel) & DRIVERS))


def test_zoo_and_byom_share_the_core_and_not_each_other():
    for rel in ("pipeline.py", "byom.py"):
        got = imports(rel)
        assert "tools.core" in got, rel
        assert not got & (DRIVERS - {f"tools.{rel[:-3]}"}), (rel, sorted(got & DRIVERS))
    # The steps run in tools.core only: neither driver calls the training loop or the exporter itself.
    for rel in ("pipeline.py", "byom.py"):
        src = (TOOLS / rel).read_text(encoding="utf-8")
        for call in ("fit(", "kd_loss(", "build_export(", "export_model("):
            assert call not in src, (rel, call)
