"""A small datadriven test runner (the format of cockroachdb's datadriven, written anew).

A test file is a sequence of blocks::

    # a comment line (ignored, kept on rewrite)
    command arg1 key=value key=(a,b,c)
    ----
    expected output, up to a blank line

When the expected output itself contains blank lines, the block uses a doubled separator and
ends with a doubled one too::

    command
    ----
    ----
    output with

    a blank line
    ----
    ----

`run_file(path, handler, rewrite=False)` runs every block through `handler(cmd) -> str`,
compares the output, and fails with a diff on the first mismatch. With `rewrite=True` it writes
the actual outputs back into the file instead (review the diff before committing it).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SEPARATOR = "----"

_ARG_RE = re.compile(r"([^\s=()]+)(?:=(\([^)]*\)|[^\s]+))?")


class DataDrivenError(Exception):
    """A malformed test file, or a command the handler does not know."""


@dataclass(slots=True)
class Arg:
    """One argument: `key`, `key=value` or `key=(v1,v2)`."""

    key: str
    values: list[str] = field(default_factory=list)

    @property
    def value(self) -> str:
        """The single value (raises if there is not exactly one)."""
        if len(self.values) != 1:
            raise DataDrivenError(f"argument {self.key} needs exactly one value: {self.values}")
        return self.values[0]


@dataclass(slots=True)
class Command:
    """One directive: its name, its arguments, and where it sits in the file."""

    name: str
    args: list[Arg]
    line: int
    """1-based line of the directive, for error messages."""
    text: str
    """The directive as written."""
    expected: str = ""
    double_separator: bool = False

    def positional(self) -> list[str]:
        """Arguments given without `=` (in order)."""
        return [a.key for a in self.args if not a.values]

    def get(self, key: str, default: str | None = None) -> str | None:
        """The single value of `key=...`, or `default`."""
        for a in self.args:
            if a.key == key and a.values:
                return a.value
        return default

    def get_list(self, key: str) -> list[str] | None:
        """The values of `key=(...)` (or `key=v` as a one-item list), or None if absent."""
        for a in self.args:
            if a.key == key and a.values:
                return list(a.values)
        return None

    def fail(self, why: str) -> DataDrivenError:
        """An error naming this directive's line."""
        return DataDrivenError(f"line {self.line}: {self.text!r}: {why}")


def parse_args(text: str) -> list[Arg]:
    """Split `a b=1 c=(x,y)` into arguments."""
    args: list[Arg] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        m = _ARG_RE.match(text, pos)
        if m is None or m.end() == pos:
            raise DataDrivenError(f"cannot parse arguments at {text[pos:]!r}")
        key, raw = m.group(1), m.group(2)
        if raw is None:
            args.append(Arg(key))
        elif raw.startswith("("):
            inner = raw[1:-1].strip()
            args.append(Arg(key, [v.strip() for v in inner.split(",")] if inner else []))
        else:
            args.append(Arg(key, [raw]))
        pos = m.end()
    return args


@dataclass(slots=True)
class _Chunk:
    """Either literal lines (comments, blank lines) or a command block."""

    literal: list[str] | None = None
    command: Command | None = None


def parse(text: str) -> list[_Chunk]:
    """Parse a whole file into literal chunks and command blocks."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    chunks: list[_Chunk] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            chunks.append(_Chunk(literal=[line]))
            i += 1
            continue
        start = i
        directive = line.strip()
        i += 1
        if i >= len(lines) or lines[i] != SEPARATOR:
            raise DataDrivenError(f"line {start + 1}: expected {SEPARATOR!r} after {directive!r}")
        i += 1
        parts = directive.split(None, 1)
        cmd = Command(parts[0], parse_args(parts[1] if len(parts) > 1 else ""), start + 1,
                      directive)  # fmt: skip
        out: list[str] = []
        if i < len(lines) and lines[i] == SEPARATOR:
            cmd.double_separator = True
            i += 1
            while True:
                if i + 1 >= len(lines):
                    raise DataDrivenError(f"line {start + 1}: unterminated {SEPARATOR} block")
                if lines[i] == SEPARATOR and lines[i + 1] == SEPARATOR:
                    i += 2
                    break
                out.append(lines[i])
                i += 1
        else:
            while i < len(lines) and lines[i].strip():
                out.append(lines[i])
                i += 1
        cmd.expected = "\n".join(out)
        chunks.append(_Chunk(command=cmd))
    return chunks


def _render(chunks: list[_Chunk], outputs: dict[int, str]) -> str:
    lines: list[str] = []
    for k, ch in enumerate(chunks):
        if ch.literal is not None:
            lines.extend(ch.literal)
            continue
        cmd = ch.command
        assert cmd is not None
        out = outputs.get(k, cmd.expected).rstrip("\n")
        lines.append(cmd.text)
        lines.append(SEPARATOR)
        needs_double = any(not ln.strip() for ln in out.split("\n")) and out != ""
        if needs_double:
            lines.append(SEPARATOR)
            lines.extend(out.split("\n"))
            lines.append(SEPARATOR)
            lines.append(SEPARATOR)
        elif out:
            lines.extend(out.split("\n"))
    return "\n".join(lines) + "\n"


def run_file(path: Path, handler: Callable[[Command], str], *, rewrite: bool = False) -> None:
    """Run every block of `path` through `handler`; compare, or rewrite the file."""
    text = path.read_text()
    chunks = parse(text)
    outputs: dict[int, str] = {}
    for k, ch in enumerate(chunks):
        cmd = ch.command
        if cmd is None:
            continue
        actual = handler(cmd).rstrip("\n")
        outputs[k] = actual
        if not rewrite and actual != cmd.expected.rstrip("\n"):
            diff = "\n".join(
                difflib.unified_diff(
                    cmd.expected.split("\n"), actual.split("\n"), "expected", "actual", lineterm=""
                )
            )
            raise AssertionError(
                f"{path.name}:{cmd.line}: output of {cmd.text!r} differs "
                f"(rerun with `pytest --rewrite` and review the diff if the change is intended)"
                f"\n{diff}"
            )
    if rewrite:
        new = _render(chunks, outputs)
        if new != text:
            path.write_text(new)
