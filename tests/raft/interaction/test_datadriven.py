"""The datadriven runner itself: parsing, comparison, rewriting."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.raft.interaction.datadriven import Command, DataDrivenError, parse, parse_args, run_file

SCRIPT = """\
# a comment
echo a b=1 c=(x, y)
----
a b=1 c=(x, y)

blank
----
----
first

third
----
----
"""


def _echo(cmd: Command) -> str:
    if cmd.name == "blank":
        return "first\n\nthird"
    return cmd.text.split(None, 1)[1]


def test_parse_args() -> None:
    args = parse_args("3 voters=(1,2, 3) learners=() x=y")
    assert [(a.key, a.values) for a in args] == [
        ("3", []),
        ("voters", ["1", "2", "3"]),
        ("learners", []),
        ("x", ["y"]),
    ]


def test_parse_blocks_and_commands() -> None:
    chunks = parse(SCRIPT)
    cmds = [c.command for c in chunks if c.command is not None]
    assert [c.name for c in cmds] == ["echo", "blank"]
    assert cmds[0].get_list("c") == ["x", "y"]
    assert cmds[0].positional() == ["a"]
    assert cmds[1].double_separator
    assert cmds[1].expected == "first\n\nthird"


def test_run_passes_and_fails_with_diff(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text(SCRIPT)
    run_file(f, _echo)
    f.write_text(SCRIPT.replace("a b=1 c=(x, y)\n\n", "wrong\n\n"))
    with pytest.raises(AssertionError, match=r"\+a b=1 c=\(x, y\)"):
        run_file(f, _echo)


def test_rewrite_restores_golden_output(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text(SCRIPT.replace("a b=1 c=(x, y)\n\n", "stale\nlines\n\n").replace("third", "x"))
    run_file(f, _echo, rewrite=True)
    assert f.read_text() == SCRIPT


def test_malformed_file() -> None:
    with pytest.raises(DataDrivenError, match="expected '----'"):
        parse("cmd\nno separator\n")
    with pytest.raises(DataDrivenError, match="unterminated"):
        parse("cmd\n----\n----\nout\n")
