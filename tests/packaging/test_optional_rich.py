"""The library runs without rich (the `cli` extra); the command line falls back to plain text.

rich is installed in the development venv, so these tests hide it: `None` in `sys.modules`
makes every `import rich...` raise ModuleNotFoundError, as it does where rich is absent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import kvstore
from kvstore import cli
from kvstore.testing.local_cluster import free_ports

ROOT = Path(__file__).resolve().parents[2]
RICH_MODULES = ("rich", "rich.console", "rich.table", "rich.progress", "rich.box")
BOX_DRAWING = {chr(code) for code in range(0x2500, 0x2580)}


@pytest.fixture
def without_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in RICH_MODULES:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.fixture
def address(tmp_path: Path) -> Iterator[str]:
    """The address of a running single-member cluster (its leader)."""
    (port,) = free_ports(1)
    peers = {"n1": f"127.0.0.1:{port}"}
    with kvstore.Node("n1", tmp_path / "n1", peers) as node:
        node.wait_for_leader(timeout_s=15.0)
        yield peers["n1"]


def test_importing_the_library_and_the_cli_imports_no_rich() -> None:
    code = (
        "import json, sys, kvstore, kvstore.aio, kvstore.cli; print(json.dumps(list(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    modules = json.loads(done.stdout)
    assert "kvstore.cli" in modules
    assert not [name for name in modules if name.split(".")[0] == "rich"]


def test_status_prints_plain_columns_without_rich(
    without_rich: None, address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", "--endpoints", address]) == cli.EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["address", "node", "role", "term", "leader", "commit", "applied"]
    assert lines[1].split()[:3] == [address, "n1", "leader"]
    assert not BOX_DRAWING & set("".join(lines))


def test_status_marks_an_unreachable_member_without_rich_markup(
    without_rich: None, address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (closed_port,) = free_ports(1)
    down = f"127.0.0.1:{closed_port}"
    cli.main(["status", "--endpoints", f"{address},{down}", "--timeout", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:3] == [address, "n1", "leader"]
    assert lines[2].startswith(down), lines
    assert "[red]" not in lines[2] and "[/red]" not in lines[2], lines


@pytest.mark.parametrize("command", ["demo", "bench"])
def test_drawing_commands_name_the_extra_without_rich(
    without_rich: None, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([command]) == cli.EXIT_ERROR
    assert "pip install 'kvstore-raft[cli]'" in capsys.readouterr().err


def test_version_flag_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"kvstore {kvstore.__version__}"
    assert kvstore.__version__[0].isdigit()
