"""The `kvstore` command never shows a traceback for bad input: each case below runs the real
command (`python -m kvstore ...` in a subprocess) and gets one clear line on stderr and a
non-zero exit status, before anything is sent. Secret files that others may read are refused,
as ssh refuses an open private key."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import kvstore
from kvstore.testing.local_cluster import free_ports

RUN_S = 60.0


def run(args: Sequence[str | bytes], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m kvstore ARGS`; arguments given as bytes reach argv as those raw bytes."""
    argv = [sys.executable, "-m", "kvstore", *(os.fsencode(a) for a in args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=RUN_S, cwd=cwd)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    error_lines = [line for line in lines if "error" in line.lower()]
    assert len(error_lines) == 1, result.stderr
    for needle in needles:
        assert needle in error_lines[0], result.stderr


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kvstore.Node]:
    """One member serving clients (the bad calls must fail before reaching it)."""
    data_dir = tmp_path_factory.mktemp("cli")
    with kvstore.Node("n1", data_dir / "n1", {"n1": "127.0.0.1:0"}) as member:
        member.wait_for_leader(timeout_s=15)
        yield member


@pytest.mark.parametrize("timeout", ["nan", "inf", "-1", "1e9"])
def test_bad_timeout_is_refused_before_anything_is_sent(node: kvstore.Node, timeout: str) -> None:
    result = run(["put", "k", "v", "--endpoints", node.address, "--timeout", timeout])
    assert_one_line_error(result, "--timeout")
    assert result.returncode == 2
    assert node.get(b"k", consistency="stale") is None


def test_unknown_log_level_is_a_usage_error() -> None:
    result = run(["--log-level", "bogus", "status"])
    assert_one_line_error(result, "bogus")
    assert result.returncode == 2


@pytest.mark.parametrize(
    "args",
    [
        [b"put", b"\xff\xfekey", b"v"],
        [b"put", b"key", b"\xffvalue"],
        [b"get", b"caf\xe9"],
        [b"cas", b"k", b"--absent", b"--new", b"\xff"],
    ],
    ids=["key", "value", "latin1-key", "cas-new"],
)
def test_arguments_that_are_not_utf8_are_refused(node: kvstore.Node, args: list[bytes]) -> None:
    result = run([*args, b"--endpoints", node.address.encode()])
    assert_one_line_error(result, "not valid UTF-8")
    assert result.returncode == 2
    assert node.scan(consistency="stale") == []


@pytest.mark.parametrize(
    "peers",
    ["n1=", "n1=127.0.0.1:1,n1=127.0.0.1:2", "n1=h:99999"],
)
def test_bad_peers_are_refused(tmp_path: Path, peers: str) -> None:
    result = run(["serve", "--id", "n1", "--data-dir", str(tmp_path / "d"), "--peers", peers])
    assert_one_line_error(result)
    assert result.returncode == 2


@pytest.mark.parametrize(
    "args",
    [
        [b"serve", b"--id", b"n\xff", b"--data-dir", b"d", b"--peers", b"n1=127.0.0.1:1"],
        [b"serve", b"--id", b"n1", b"--data-dir", b"d", b"--peers", b"n\xff=127.0.0.1:1"],
        [b"member", b"remove", b"n\xff"],
        [b"get", b"k", b"--endpoints", b"127.0.0.1:\xff"],
        [b"scan", b"--limit", b"0"],
        [b"demo", b"--keys", b"-1"],
        [b"bench", b"--ops", b"x"],
    ],
    ids=["serve-id", "peer-id", "member-id", "endpoint", "limit", "demo-keys", "bench-ops"],
)
def test_other_bad_arguments_are_usage_errors(tmp_path: Path, args: list[bytes]) -> None:
    result = run(args, cwd=tmp_path)
    assert_one_line_error(result)
    assert result.returncode == 2
    assert not (tmp_path / "d").exists()


def test_two_ids_on_one_address_are_refused_at_once(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_ports(1)[0]}"
    peers = f"n1={address},n2={address}"
    result = run(["serve", "--id", "n1", "--data-dir", str(tmp_path / "d"), "--peers", peers])
    assert_one_line_error(result, "'n1' and 'n2' have the same address")
    assert result.returncode == 2


def test_missing_secret_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result = run(["get", "k", "--secret-file", str(missing)])
    assert_one_line_error(result, f"cannot read secret file {missing}", "No such file")
    assert result.returncode == 2


def test_unreadable_secret_file_is_a_directory(tmp_path: Path) -> None:
    result = run(["get", "k", "--secret-file", str(tmp_path)])
    assert_one_line_error(result, "cannot read secret file")


@pytest.mark.parametrize("mode", [0o644, 0o640])
@pytest.mark.parametrize("command", ["serve", "client"])
def test_secret_file_readable_by_others_is_refused(tmp_path: Path, mode: int, command: str) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cret")
    secret.chmod(mode)
    if command == "serve":
        port = free_ports(1)[0]
        args = ["serve", "--id", "n1", "--data-dir", str(tmp_path / "d")]
        args += ["--peers", f"n1=127.0.0.1:{port}", "--secret-file", str(secret)]
    else:
        args = ["get", "k", "--secret-file", str(secret)]
    result = run(args)
    assert_one_line_error(
        result, f"secret file {secret} is readable by others (mode 0{mode:o}); chmod 600 {secret}"
    )
    assert result.returncode == 2
    assert not (tmp_path / "d").exists()  # refused before the data directory was created


def test_owner_only_secret_file_is_accepted(node: kvstore.Node, tmp_path: Path) -> None:
    """The same file at 0600 gets past the check (the node has no secret: refused there)."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cret\n")
    secret.chmod(0o600)
    result = run(["get", "k", "--endpoints", node.address, "--secret-file", str(secret)])
    assert "readable by others" not in result.stderr
    assert_one_line_error(result, "AuthenticationError")


def test_errors_from_the_cluster_are_one_line(node: kvstore.Node) -> None:
    long_key = "k" * 600
    result = run(["put", long_key, "v", "--endpoints", node.address])
    assert_one_line_error(result, "InvalidArgumentError", "key must be 1 to 511 bytes")
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    result = run(["get", "k", "--endpoints", dead, "--timeout", "0.5"])
    assert_one_line_error(result, "UnavailableError")
    assert result.returncode == 4  # the cluster is unavailable


def test_help_documents_the_exit_status() -> None:
    result = run(["--help"])
    assert result.returncode == 0
    assert "exit status" in result.stdout and "stopped serving" in result.stdout
