"""Product, tools and tests apart (issue 12 item 4).

The package holds what a user imports or runs: nothing in `kvstore/` reaches into the
checkout's `benchmarks/` or `tests/`, and no file anywhere finds modules by editing `sys.path`.
The testing toolkit (`kvstore.testing`) is public and needs nothing the library does not already
depend on. All checked statically on every module's imports, including those inside functions.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_FILES = sorted((ROOT / "kvstore").rglob("*.py"))
TESTING_FILES = sorted((ROOT / "kvstore" / "testing").glob("*.py"))
ALL_FILES = sorted(
    path for folder in ("kvstore", "tests", "benchmarks") for path in (ROOT / folder).rglob("*.py")
)
CHECKOUT_ONLY = ("benchmarks", "tests")
"""Top-level packages that exist only in the source checkout, never in an installed kvstore."""


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, module) for every absolute import in `source`."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def checkout_references(source: str) -> list[str]:
    """Imports of checkout-only packages, and strings naming one of their modules (what
    `importlib.import_module` would be handed), as `line N: name`."""
    found = [
        f"line {line}: {module}"
        for line, module in imported_modules(source)
        if module.split(".")[0] in CHECKOUT_ONLY
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            words = node.value.split()
            if len(words) == 1 and words[0].split(".")[0] in CHECKOUT_ONLY and "." in words[0]:
                found.append(f"line {node.lineno}: {node.value!r}")
    return found


def sys_path_uses(source: str) -> list[int]:
    """Lines that touch `sys.path` (append, insert, assign: any use is an edit or a read of
    where modules are found, which nothing here needs)."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and node.attr == "path"
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    ]


def test_the_checks_see_what_they_look_for() -> None:
    assert checkout_references("def f():\n    from benchmarks.peers import etcd\n")
    assert checkout_references('PEERS = {"etcd": "benchmarks.peers.etcd"}\n')
    assert checkout_references("import tests.conftest\n")
    assert not checkout_references('print("run the benchmarks. then the tests")\n')
    assert sys_path_uses("import sys\nsys.path.append('x')\n") == [2]
    assert sys_path_uses("import sys\nsys.path[:0] = ['x']\n") == [2]
    assert not sys_path_uses("import os\nos.path.join('a')\n")


def test_the_package_does_not_reach_into_the_checkout() -> None:
    found = {
        _rel(path): refs
        for path in PACKAGE_FILES
        if (refs := checkout_references(path.read_text(encoding="utf-8")))
    }
    assert found == {}


def test_no_file_edits_sys_path() -> None:
    found = {
        _rel(path): lines
        for path in ALL_FILES
        if (lines := sys_path_uses(path.read_text(encoding="utf-8")))
    }
    assert found == {}


def _dependency_imports() -> set[str]:
    """Import names of the library's own dependencies, from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = set()
    for requirement in project["dependencies"]:
        name = requirement.split(";")[0]
        for separator in "<>=!~[ ":
            name = name.split(separator)[0]
        names.add(name.strip().lower().replace("-", "_"))
    return names


def test_the_testing_toolkit_needs_only_the_library_dependencies() -> None:
    allowed = {"kvstore"} | _dependency_imports() | set(sys.stdlib_module_names)
    assert {"lmdb", "cffi", "msgpack"} <= allowed
    extra = [
        f"{_rel(path)} line {line}: {module}"
        for path in TESTING_FILES
        for line, module in imported_modules(path.read_text(encoding="utf-8"))
        if module.split(".")[0] not in allowed
    ]
    assert extra == [], f"kvstore.testing imports beyond the library's dependencies: {extra}"


def test_the_bench_command_loads_nothing_from_the_checkout() -> None:
    code = "import json, sys, kvstore.bench.command; print(json.dumps(list(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    modules = json.loads(done.stdout)
    assert "kvstore.bench.workloads" in modules
    assert not [name for name in modules if name.split(".")[0] in CHECKOUT_ONLY]
