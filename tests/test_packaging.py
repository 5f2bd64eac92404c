"""Packaging: the README's two commands are what CI runs, and every import they need is declared.

The dependency check is static: it follows the project's own imports (module level and lazy, inside
functions) from the modules each README command serves, maps every third-party module to its
installed distribution, and asserts that distribution is declared by the extras that command installs.
A fresh virtual environment per extra would prove the same by running, at minutes per extra; `.ci/run`
does run both README commands in one fresh environment, so this test guards the per-extra split.
"""
from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIRST_PARTY = ("engine", "tools", "benchmarks", "tests")

# Third-party modules that only commands of another extra reach (lazily, inside the command's code):
# they must be declared in that extra, not in the one being checked.
SERVED_BY_OTHER_EXTRA = {
    "tensorrt": "gpu",
    "tensorrt_lean": "gpu",
    "pyarrow": "batch",  # slicert batch
    "ray": "ray",  # slicert batch --ray
    "highdicom": "dicom",  # DICOM SEG/SR out, slicert serve-dicom, slicert batch --dicom-out
    "pynetdicom": "dicom",
}
# Import name -> distribution for optional packages that are not installed here (no GPU machine).
NOT_INSTALLED_HERE = {"tensorrt": "tensorrt-cu13", "tensorrt_lean": "tensorrt-cu13"}


def _load_ci_helper():
    spec = importlib.util.spec_from_file_location("readme_commands", ROOT / ".ci" / "readme_commands.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _readme_commands() -> list[str]:
    return _load_ci_helper().commands((ROOT / "README.md").read_text())


def _extras_of(command: str) -> set[str]:
    m = re.search(r'install -e "\.\[([^\]]*)\]"', command)
    assert m, f"README command installs no extras in the expected form: {command}"
    return {e.strip() for e in m.group(1).split(",") if e.strip()}


def _declared(extras: set[str]) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    optional = project["optional-dependencies"]
    for extra in extras:
        assert extra in optional, f"README installs extra [{extra}] that pyproject.toml does not define"
        reqs += optional[extra]
    return {canonicalize_name(Requirement(r).name) for r in reqs}


_LOCAL_HELPERS = {p.stem for d in ("tests", "benchmarks") for p in (ROOT / d).rglob("*.py")}


def _module_file(name: str) -> pathlib.Path | None:
    base = ROOT.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """True when an import sits in a try whose handlers catch ImportError: an optional-feature probe."""
    cur = node
    while cur in parents:
        cur = parents[cur]
        if isinstance(cur, ast.Try):
            for h in cur.handlers:
                names = [h.type] if not isinstance(h.type, ast.Tuple) else list(h.type.elts)
                if h.type is None or any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError",
                                                                               "Exception") for n in names):
                    return True
    return False


def _imports(path: pathlib.Path, modname: str) -> list[tuple[str, bool, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    out = []
    pkg = modname if path.name == "__init__.py" else modname.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, _guarded(node, parents), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, _guarded(node, parents), node.lineno))
            out += [(f"{mod}.{a.name}", _guarded(node, parents), node.lineno) for a in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            out.append((node.args[0].value, _guarded(node, parents), node.lineno))
    return out


def third_party_imports(entries: list[str]) -> dict[str, list[str]]:
    """Unguarded third-party top-level modules reached from `entries` -> where they are imported."""
    seen: set[str] = set()
    todo = list(entries)
    found: dict[str, list[str]] = {}
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        path = _module_file(mod)
        if path is None:
            continue
        for name, guarded, line in _imports(path, mod):
            top = name.split(".")[0]
            if not top or top in sys.stdlib_module_names or top == "__future__":
                continue
            if top in _LOCAL_HELPERS:  # a tests/ or benchmarks/ helper put on sys.path by its user
                continue
            if top in FIRST_PARTY:
                todo.append(name)
                # `from pkg import submodule` reaches pkg/__init__ too.
                todo.append(name.rpartition(".")[0] or name)
                continue
            if not guarded:
                found.setdefault(top, []).append(f"{path.relative_to(ROOT)}:{line}")
    return found


def _all_modules(folder: str) -> list[str]:
    return [".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            for p in (ROOT / folder).rglob("*.py")]


def _check(entries: list[str], extras: set[str]) -> list[str]:
    declared = _declared(extras)
    dists = importlib.metadata.packages_distributions()
    problems = []
    for top, where in sorted(third_party_imports(entries).items()):
        names = dists.get(top) or ([NOT_INSTALLED_HERE[top]] if top in NOT_INSTALLED_HERE else [])
        if not names:
            problems.append(f"{top} (imported at {where[0]}) is not installed and maps to no distribution")
            continue
        other = SERVED_BY_OTHER_EXTRA.get(top)
        want = _declared({other}) if other else declared
        if not any(canonicalize_name(n) in want for n in names):
            problems.append(f"{top} (distribution {names[0]}, imported at {where[0]}) is not declared by "
                            f"{'[' + other + ']' if other else 'the core dependencies or ' + str(sorted(extras))}")
    return problems


def test_readme_has_the_two_commands_ci_runs():
    cmds = _readme_commands()
    assert "slicert demo" in cmds[0], "command 1 must run the main job"
    assert "pytest" in cmds[1], "command 2 must run the tests"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_commands.py 1" in ci and "readme_commands.py 2" in ci, ".ci/run must take both from the README"
    assert "venv" in ci, ".ci/run must use a fresh virtual environment"


def test_readme_helper_refuses_a_third_command():
    helper = _load_ci_helper()
    text = "## Quick start (CPU)\n```bash\n# one\nexit 1\necho 2\necho 3\n```\n"
    with pytest.raises(ValueError, match="exactly 2 commands, found 3"):
        helper.commands(text)


def test_main_job_imports_are_declared_by_its_extras():
    """README command 1 (`slicert demo`, the toolchain) needs only the core and the extras it installs."""
    import engine.cli

    entries = ["engine.cli", *engine.cli._COMMAND_MODULES, *_all_modules("engine"), *_all_modules("tools")]
    assert not _check(entries, _extras_of(_readme_commands()[0]))


def test_runtime_imports_at_module_level_are_core():
    """`engine/` itself (the embedded runtime) imports nothing optional at module level."""
    problems = []
    dists = importlib.metadata.packages_distributions()
    core = _declared(set())
    for mod in _all_modules("engine"):
        tree = ast.parse(_module_file(mod).read_text())
        for node in tree.body:  # module level only: lazy imports live inside functions
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in FIRST_PARTY or top == "__future__":
                    continue
                if not any(canonicalize_name(d) in core for d in dists.get(top, [])):
                    problems.append(f"{mod}: {top}")
    assert not problems, f"engine/ imports optional packages at module level: {problems}"


def test_test_suite_imports_are_declared_by_its_extras():
    """README command 2 (the tests and benchmarks) needs only the core and the extras it installs."""
    entries = _all_modules("tests") + _all_modules("benchmarks")
    assert not _check(entries, _extras_of(_readme_commands()[1]))


def test_checker_catches_an_undeclared_import(tmp_path, monkeypatch):
    """The check can fail: an import of a package that no extra declares is reported."""
    fake = ROOT / "tools" / "_packaging_probe_tmp.py"
    assert not fake.exists()
    try:
        fake.write_text("def f():\n    import cv2\n    import pytest\n")
        problems = _check(["tools._packaging_probe_tmp"], {"plot"})
    finally:
        fake.unlink()
    assert any(p.startswith("cv2") for p in problems) and any(p.startswith("pytest") for p in problems)


def _import_engine_from_copy(tmp_path, site: pathlib.Path | None) -> str:
    """`import engine` with cwd = a copy of the source tree (no compiled extension); `site` as site-packages.

    `-S` keeps this machine's editable-install finder out, so the situation is the one a non-editable
    `pip install .` leaves: the checkout's engine/ first on sys.path, the installed package behind it.
    """
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "engine", checkout / "engine", ignore=shutil.ignore_patterns("_native*", "__pycache__"))
    code = f"import sys; sys.path[1:1] = [{str(site)!r}] if {site is not None} else []; import engine"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0, "importing a tree without engine._native must fail"
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:"), proc.stderr
    assert "engine._native" in last and str(checkout / "engine") in last and "pip install -e ." in last
    return last


def test_shadowed_source_tree_says_what_to_do(tmp_path):
    """A non-editable install shadowed by the checkout: the message names both places and the fix."""
    site = tmp_path / "site"
    (site / "engine").mkdir(parents=True)
    native = "engine/_native.cpython-311-x86_64-linux-gnu.so"
    (site / native).write_bytes(b"")
    info = site / "slicert-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: slicert\nVersion: 0.1.0\n")
    (info / "RECORD").write_text(f"{native},,\nslicert-0.1.0.dist-info/METADATA,,\n")
    last = _import_engine_from_copy(tmp_path, site)
    assert "instead of the installed package in " + str(site / "engine") in last
    assert "Run from outside the checkout" in last


def test_unbuilt_source_tree_says_what_to_do(tmp_path):
    """No install at all: the message says the extension is not built and how to build it."""
    last = _import_engine_from_copy(tmp_path, None)
    assert "is not built" in last
