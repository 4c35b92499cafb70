"""The consensus cores stay pure: no module under kvstore/consensus/ (the kernel both cores
share), kvstore/raft/ or kvstore/paxos/ may do I/O, read a clock or use the global random generator
(DESIGN.md §1). Checked twice: statically on the source, and at run time on what importing each
core actually loads."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

KVSTORE_DIR = Path(__file__).resolve().parents[2] / "kvstore"
PURE_PACKAGES = {
    "consensus": (
        "kvstore.consensus.types",
        "kvstore.consensus.core_base",
        "kvstore.consensus.memory",
        "kvstore.consensus.protocol",
    ),
    "raft": ("kvstore.raft.core",),
    "paxos": ("kvstore.paxos.core", "kvstore.paxos.ballot", "kvstore.paxos.recovery"),
}
"""Each pure package, and the modules the run-time probe imports from it (the first one must
be newly loaded by the import: the probe is not vacuous)."""
PURE_FILES = sorted(p for pkg in PURE_PACKAGES for p in (KVSTORE_DIR / pkg).glob("*.py"))
FORBIDDEN = (
    "asyncio",
    "socket",
    "time",
    "os",
    "threading",
    "lmdb",
    "kvstore._kvwal",
    "kvstore.storage",
    "kvstore.transport",
)


def _forbidden(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in FORBIDDEN)


def _violations(source: str) -> list[str]:
    """Every forbidden import in `source`, and every use of `random` other than `random.Random`."""
    tree = ast.parse(source)
    problems: list[str] = []
    random_aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _forbidden(alias.name):
                    problems.append(f"line {node.lineno}: import {alias.name}")
                if alias.name == "random":
                    random_aliases.add(alias.asname or "random")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0 and _forbidden(module):
                problems.append(f"line {node.lineno}: from {module} import ...")
            if node.level == 0 and module == "kvstore":
                for alias in node.names:
                    if _forbidden(f"kvstore.{alias.name}"):
                        problems.append(f"line {node.lineno}: from kvstore import {alias.name}")
            if node.level == 0 and module == "random":
                for alias in node.names:
                    if alias.name != "Random":
                        problems.append(f"line {node.lineno}: from random import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in random_aliases and node.attr != "Random":
                problems.append(f"line {node.lineno}: random.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in random_aliases:
            parent_ok = any(
                isinstance(p, ast.Attribute) and p.value is node and p.attr == "Random"
                for p in ast.walk(tree)
            )
            if not parent_ok:
                problems.append(f"line {node.lineno}: bare use of module random")
    return problems


def test_checker_catches_forbidden_imports() -> None:
    """The static check itself must flag each kind of violation (else the next test is empty)."""
    assert _violations("import os\n")
    assert _violations("import time as t\n")
    assert _violations("from asyncio import sleep\n")
    assert _violations("from kvstore.storage.wal import WriteAheadLog\n")
    assert _violations("from kvstore import transport\n")
    assert _violations("import random\nx = random.random()\n")
    assert _violations("import random\nf = random\n")
    assert _violations("from random import randint\n")
    assert not _violations("import random\ndef f(r: random.Random) -> None: ...\n")
    assert not _violations("from random import Random\n")
    assert not _violations("from kvstore.errors import invariant\n")


@pytest.mark.parametrize("package", sorted(PURE_PACKAGES))
def test_each_package_is_globbed(package: str) -> None:
    """Guards the parametrised test below against an empty or partial glob."""
    names = {f"{package}.{p.stem}" for p in PURE_FILES if p.parent.name == package}
    assert {m.removeprefix("kvstore.") for m in PURE_PACKAGES[package]} <= names


@pytest.mark.parametrize("path", PURE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_core_module_imports_nothing_impure(path: Path) -> None:
    """DESIGN.md §1: a core imports nothing that does I/O and no global randomness."""
    assert _violations(path.read_text()) == []


_RUNTIME_PROBE = r"""
import importlib, json, sys, types
# Load the core without running kvstore/__init__.py, which pulls in the node (asyncio...):
# the question is what the core's package itself needs.
root, names = sys.argv[1], sys.argv[2:]
pkg = types.ModuleType("kvstore")
pkg.__path__ = [root + "/kvstore"]
sys.modules["kvstore"] = pkg
# What the standard library itself preloads (dataclasses imports inspect, which imports os) is
# not the core's doing: the static test covers direct imports of those.
import dataclasses, enum, typing, collections, bisect, itertools, functools, operator, random
before = set(sys.modules)
for name in names:
    importlib.import_module(name)
print(json.dumps({"before": sorted(before), "after": sorted(sys.modules)}))
"""


@pytest.mark.parametrize("package", sorted(PURE_PACKAGES))
def test_importing_the_core_loads_no_impure_module(package: str) -> None:
    """DESIGN.md §1, checked at run time in a fresh interpreter."""
    modules = PURE_PACKAGES[package]
    out = subprocess.run(
        [sys.executable, "-S", "-c", _RUNTIME_PROBE, str(KVSTORE_DIR.parent), *modules],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    loaded = json.loads(out.stdout)
    added = set(loaded["after"]) - set(loaded["before"])
    assert set(modules) <= added
    assert sorted(m for m in added if _forbidden(m)) == []
    # Modules the prelude did not load must still be absent after importing the core.
    for name in ("asyncio", "socket", "threading", "lmdb", "kvstore._kvwal"):
        assert name not in loaded["after"], name
