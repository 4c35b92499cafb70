"""The client imports no server code (issue 12 item 5): what client and server must agree on
lives in the wire protocol or in `kvstore.wire`, never in a server module the client reaches
into.

Checked statically on every client module's imports (including imports inside functions).
The server's request handler lives in the node package (`kvstore/node/service.py`), so every
module of the client package is checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CLIENT_DIR = Path(__file__).resolve().parents[2] / "kvstore" / "client"
SERVER_SIDE = (
    "kvstore.node",
    "kvstore.storage",
    "kvstore.raft",
    "kvstore.paxos",
    "kvstore.consensus",
)
CLIENT_FILES = sorted(CLIENT_DIR.glob("*.py"))


def server_imports(source: str) -> list[str]:
    """Every import of a server-side module in `source`, as `line N: module`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for module in modules:
            if any(module == s or module.startswith(s + ".") for s in SERVER_SIDE):
                found.append(f"line {node.lineno}: {module}")
                break
    return found


def test_the_check_sees_server_imports() -> None:
    assert server_imports("from kvstore.storage.commands import SESSION_WINDOW\n")
    assert server_imports("def f():\n    import kvstore.node\n")
    assert server_imports("from kvstore import node\n")
    assert not server_imports("from kvstore.wire import SESSION_WINDOW\n")


@pytest.mark.parametrize("path", CLIENT_FILES, ids=lambda p: p.name)
def test_client_module_imports_no_server_code(path: Path) -> None:
    assert server_imports(path.read_text()) == [], path
