"""The Paxos core stays pure like the Raft core (DESIGN.md §1): no module under kvstore/paxos/
does I/O, reads a clock or uses the global random generator. Checked statically on the source
(with the Raft tests' checker) and at run time on what importing the core loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.raft.test_imports import _forbidden, _violations

PAXOS_DIR = Path(__file__).resolve().parents[2] / "kvstore" / "paxos"


def test_the_package_is_there() -> None:
    """Guards the parametrised test below against an empty glob."""
    names = {p.name for p in PAXOS_DIR.glob("*.py")}
    assert {"__init__.py", "core.py", "ballot.py", "recovery.py"} <= names


@pytest.mark.parametrize("path", sorted(PAXOS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_paxos_module_imports_nothing_impure(path: Path) -> None:
    assert _violations(path.read_text()) == []


_RUNTIME_PROBE = r"""
import importlib, json, sys, types
root = sys.argv[1]
pkg = types.ModuleType("kvstore")
pkg.__path__ = [root + "/kvstore"]
sys.modules["kvstore"] = pkg
import dataclasses, enum, typing, collections, bisect, itertools, functools, operator, random
before = set(sys.modules)
importlib.import_module("kvstore.paxos.core")
print(json.dumps({"before": sorted(before), "after": sorted(sys.modules)}))
"""


def test_importing_the_core_loads_no_impure_module() -> None:
    root = str(PAXOS_DIR.parents[1])
    out = subprocess.run(
        [sys.executable, "-S", "-c", _RUNTIME_PROBE, root],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    loaded = json.loads(out.stdout)
    added = set(loaded["after"]) - set(loaded["before"])
    assert "kvstore.paxos.core" in added
    assert sorted(m for m in added if _forbidden(m)) == []
    for name in ("asyncio", "socket", "threading", "lmdb", "kvstore._kvwal"):
        assert name not in loaded["after"], name
