"""The package boundaries of issue 12, checked on the source and at run time.

- kvstore/raft/ and kvstore/paxos/ never import each other: what both need is in the kernel,
  kvstore/consensus/.
- The kernel imports neither protocol (make_core loads a core by module name on demand), and,
  like the cores, nothing that does I/O (tests/raft/test_imports.py checks that part).
- Storage and transport speak only the kernel's types: they import neither protocol, so the
  redo log and the wire stay the same whichever protocol runs.

Imports inside functions and `from kvstore import raft` count too.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

KVSTORE_DIR = Path(__file__).resolve().parents[1] / "kvstore"

RULES: dict[str, tuple[str, ...]] = {
    "raft": ("kvstore.paxos",),
    "paxos": ("kvstore.raft",),
    "consensus": ("kvstore.raft", "kvstore.paxos", "kvstore.node"),
    "storage": ("kvstore.raft", "kvstore.paxos", "kvstore.node"),
    "transport": ("kvstore.raft", "kvstore.paxos", "kvstore.node"),
}
"""Each package under kvstore/, and the modules none of its files may import."""


def imported_modules(source: str) -> list[tuple[int, str]]:
    """Every module `source` imports, as (line, dotted name); `from a import b` yields both
    `a` and `a.b` (b may be a submodule)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def violations(source: str, forbidden: tuple[str, ...]) -> list[str]:
    """Every import in `source` of a module in (or under) `forbidden`, as `line N: module`."""
    return [
        f"line {line}: {module}"
        for line, module in imported_modules(source)
        if any(module == f or module.startswith(f + ".") for f in forbidden)
    ]


def test_the_check_sees_every_form_of_import() -> None:
    forbidden = ("kvstore.raft",)
    assert violations("import kvstore.raft.core\n", forbidden)
    assert violations("from kvstore.raft.core import RaftCore\n", forbidden)
    assert violations("from kvstore import raft\n", forbidden)
    assert violations("def f():\n    from kvstore.raft import core\n", forbidden)
    assert not violations("from kvstore.raftish import x\n", forbidden)
    assert not violations("from kvstore.consensus.types import Entry\n", forbidden)


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_exists_and_is_globbed(package: str) -> None:
    assert list((KVSTORE_DIR / package).glob("*.py")), package


@pytest.mark.parametrize(
    "path",
    sorted(p for package in RULES for p in (KVSTORE_DIR / package).glob("*.py")),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_module_keeps_its_package_boundary(path: Path) -> None:
    assert violations(path.read_text(), RULES[path.parent.name]) == [], path


_RUNTIME_PROBE = r"""
import importlib, json, sys, types
# Load without running kvstore/__init__.py (which imports the node, hence every package).
root, names = sys.argv[1], sys.argv[2:]
pkg = types.ModuleType("kvstore")
pkg.__path__ = [root + "/kvstore"]
sys.modules["kvstore"] = pkg
for name in names:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize(
    ("modules", "forbidden"),
    [
        (("kvstore.consensus", "kvstore.consensus.memory"), ("kvstore.raft", "kvstore.paxos")),
        (("kvstore.raft.core",), ("kvstore.paxos",)),
        (("kvstore.paxos.core",), ("kvstore.raft",)),
        (
            (
                "kvstore.storage.wal",
                "kvstore.storage.state_machine",
                "kvstore.transport.codec",
                "kvstore.transport.tcp",
            ),
            ("kvstore.raft", "kvstore.paxos", "kvstore.node"),
        ),
    ],
    ids=["consensus", "raft", "paxos", "storage+transport"],
)
def test_importing_loads_no_forbidden_package(
    modules: tuple[str, ...], forbidden: tuple[str, ...]
) -> None:
    """What importing actually loads, in a fresh interpreter: catches imports the static
    check cannot see (through a third module)."""
    out = subprocess.run(
        [sys.executable, "-c", _RUNTIME_PROBE, str(KVSTORE_DIR.parent), *modules],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    loaded = json.loads(out.stdout)
    assert set(modules) <= set(loaded)
    bad = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden)]
    assert bad == []


def test_make_core_loads_the_protocol_it_is_asked_for() -> None:
    """The kernel's one link to the protocols is by name, and it works for each."""
    probe = (
        "import random, sys\n"
        "from kvstore.consensus import make_core\n"
        "from kvstore.consensus.config import Config\n"
        "from kvstore.consensus.memory import MemoryLogView\n"
        "assert 'kvstore.paxos.core' not in sys.modules\n"
        "core = make_core('paxos', Config('a', ('a',)), MemoryLogView(), random.Random(1))\n"
        "assert type(core).__module__ == 'kvstore.paxos.core', type(core)\n"
        "assert 'kvstore.raft.core' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)
