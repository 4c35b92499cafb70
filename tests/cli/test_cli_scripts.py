"""The `kvstore` command is scriptable: each test runs the real command (`python -m kvstore ...`
in a subprocess) against a real 3-member cluster of `kvstore serve` processes. `--json` prints
one JSON document, exit statuses tell the failure classes apart (1 absent / compare failed,
2 usage, 4 unavailable, 5 authentication), `-` reads a value from standard input byte for
byte, `--hex` addresses binary keys, and `status` lists every member and exits 4 when one is
down."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from kvstore.client.client import Client
from kvstore.testing.local_cluster import LocalCluster, free_ports, wait_until

RUN_S = 60.0
SECRET = b"cli-scripts-secret"
BOX_DRAWING = {chr(code) for code in range(0x2500, 0x2580)}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3, secret=SECRET) as local:
        with Client(local.addresses, secret=SECRET) as client:
            local.wait_for_leader(client)
        yield local


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster.addresses, secret=SECRET) as connected:
        yield connected


def run(
    cluster: LocalCluster | None,
    args: Sequence[str],
    *,
    stdin: bytes = b"",
    endpoints: str | None = None,
    secret_file: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """`python -m kvstore ARGS --endpoints ... --secret-file ...` with `stdin` as its input."""
    argv = [sys.executable, "-m", "kvstore", *args]
    if cluster is not None:
        argv += ["--endpoints", endpoints or ",".join(cluster.addresses)]
        argv += ["--secret-file", str(secret_file or cluster.secret_file)]
    return subprocess.run(argv, capture_output=True, input=stdin, timeout=RUN_S)


def document(result: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    """The one JSON document on stdout (it must be exactly one)."""
    assert b"Traceback" not in result.stderr, result.stderr
    parsed = json.loads(result.stdout)
    assert isinstance(parsed, dict), result.stdout
    return parsed


def test_json_documents_parse(cluster: LocalCluster) -> None:
    put = run(cluster, ["put", "json/k", "v1", "--json"])
    assert put.returncode == 0, put.stderr
    assert document(put) == {"key": "json/k", "ok": True, "encoding": "utf-8"}
    got = document(run(cluster, ["get", "json/k", "--json"]))
    assert got == {"key": "json/k", "found": True, "value": "v1", "encoding": "utf-8"}
    cas = run(cluster, ["cas", "json/k", "--expected", "v1", "--new", "v2", "--json"])
    assert cas.returncode == 0 and document(cas)["swapped"] is True
    run(cluster, ["put", "json/l", "é", "--json"])
    scan = document(run(cluster, ["scan", "json/", "--json"]))
    assert scan["count"] == 2
    assert scan["items"] == [{"key": "json/k", "value": "v2"}, {"key": "json/l", "value": "é"}]
    deleted = run(cluster, ["delete", "json/k", "--json"])
    assert deleted.returncode == 0 and document(deleted)["deleted"] is True


def test_each_failure_class_has_its_exit_status(cluster: LocalCluster, tmp_path: Path) -> None:
    absent = run(cluster, ["get", "codes/absent", "--json"])
    assert absent.returncode == 1
    assert document(absent) == {
        "key": "codes/absent",
        "found": False,
        "value": None,
        "encoding": "utf-8",
    }
    assert run(cluster, ["delete", "codes/absent"]).returncode == 1
    failed = run(cluster, ["cas", "codes/absent", "--expected", "x", "--new", "y", "--json"])
    assert failed.returncode == 1 and document(failed)["swapped"] is False

    assert run(cluster, ["get", "k", "--no-such-flag"]).returncode == 2
    bad_hex = run(cluster, ["get", "zz", "--hex"])
    assert bad_hex.returncode == 2 and b"not hex" in bad_hex.stderr

    dead = ",".join(f"127.0.0.1:{port}" for port in free_ports(2))
    unreachable = run(cluster, ["get", "k", "--timeout", "0.5"], endpoints=dead)
    assert unreachable.returncode == 4, unreachable.stderr
    assert b"UnavailableError" in unreachable.stderr and b"Traceback" not in unreachable.stderr

    wrong = tmp_path / "wrong-secret"
    wrong.write_bytes(b"not the secret")
    wrong.chmod(0o600)
    refused = run(cluster, ["get", "k"], secret_file=wrong)
    assert refused.returncode == 5, refused.stderr
    assert b"AuthenticationError" in refused.stderr
    refused_status = run(cluster, ["status", "--json"], secret_file=wrong)
    assert refused_status.returncode == 5, refused_status.stderr  # not "a member is down"
    assert document(refused_status)["error"]["type"] == "AuthenticationError"
    unreachable_json = run(cluster, ["put", "k", "v", "--json", "--timeout", "0.5"], endpoints=dead)
    assert unreachable_json.returncode == 4
    assert document(unreachable_json)["error"]["exit_status"] == 4


def test_help_documents_every_exit_status() -> None:
    result = run(None, ["--help"])
    assert result.returncode == 0
    for line in ("4    the cluster is unavailable", "5    authentication failed", "--json"):
        assert line.encode() in result.stdout, result.stdout


def test_dash_reads_the_value_from_stdin_exactly(cluster: LocalCluster, client: Client) -> None:
    assert run(cluster, ["put", "stdin/text", "-"], stdin=b"v\n").returncode == 0
    assert client.get(b"stdin/text") == b"v\n"
    binary = bytes(range(256)) * 4
    assert run(cluster, ["put", "stdin/binary", "-"], stdin=binary).returncode == 0
    assert client.get(b"stdin/binary") == binary
    literal = run(cluster, ["put", "stdin/literal", "-", "--value-literal"], stdin=b"ignored")
    assert literal.returncode == 0
    assert client.get(b"stdin/literal") == b"-"
    swapped = run(cluster, ["cas", "stdin/text", "--expected", "v\n", "--new", "-"], stdin=b"w")
    assert swapped.returncode == 0, swapped.stderr
    assert client.get(b"stdin/text") == b"w"


def test_hex_round_trip_of_a_binary_key(cluster: LocalCluster, client: Client) -> None:
    key, value = b"\x00\xffhex\x80", b"\xfe\x00\n"
    put = run(cluster, ["put", key.hex(), value.hex(), "--hex"])
    assert put.returncode == 0, put.stderr
    assert client.get(key) == value
    got = run(cluster, ["get", key.hex(), "--hex"])
    assert got.returncode == 0 and got.stdout == value.hex().encode() + b"\n"
    got_json = document(run(cluster, ["get", key.hex(), "--hex", "--json"]))
    assert got_json == {"key": key.hex(), "found": True, "value": value.hex(), "encoding": "hex"}
    scan = document(run(cluster, ["scan", "00ff", "--hex", "--json"]))
    assert scan["items"] == [{"key": key.hex(), "value": value.hex()}]
    # Without --hex, JSON cannot carry these bytes: one clear line, exit 2, no garbled document.
    assert run(cluster, ["put", b"hex/bad".hex(), "ff", "--hex"]).returncode == 0
    refused = run(cluster, ["get", "hex/bad", "--json"])
    assert refused.returncode == 2 and b"add --hex" in refused.stderr, refused.stderr
    assert document(refused)["error"]["type"] == "InvalidArgumentError"


def test_status_lists_every_member(cluster: LocalCluster) -> None:
    # Asked through one endpoint, status still lists all three members (from its members map).
    first = cluster.addresses[0]
    result = run(cluster, ["status", "--json"], endpoints=first)
    assert result.returncode == 0, result.stderr
    status = document(result)
    assert status["healthy"] is True
    assert sorted(row["node_id"] for row in status["members"]) == sorted(cluster.members)
    assert all(row["reachable"] for row in status["members"])
    assert sum(row["role"] == "leader" for row in status["members"]) == 1
    text = run(cluster, ["status"], endpoints=first)
    assert text.returncode == 0
    lines = text.stdout.decode().splitlines()
    assert not BOX_DRAWING & set(text.stdout.decode())  # stdout is a pipe here: plain text
    assert len(lines) == 1 + len(cluster.members)
    for node_id, member in cluster.members.items():
        assert any(line.split()[:2] == [member.address, node_id] for line in lines)


def test_status_with_a_stopped_member_exits_4_and_lists_it(cluster: LocalCluster) -> None:
    stopped = "n3"
    cluster.stop(stopped)
    try:
        first = cluster.addresses[0]
        result = run(cluster, ["status", "--json", "--timeout", "1"], endpoints=first)
        assert result.returncode == 4, result.stderr
        rows = {row["node_id"]: row for row in document(result)["members"]}
        assert set(rows) == set(cluster.members)
        assert rows[stopped]["reachable"] is False and rows[stopped]["error"]
        assert all(rows[node]["reachable"] for node in rows if node != stopped)
        text = run(cluster, ["status", "--timeout", "1"], endpoints=first)
        assert text.returncode == 4
        address = cluster.members[stopped].address
        line = next(ln for ln in text.stdout.decode().splitlines() if ln.startswith(address))
        assert line.split()[1:3] == [stopped, "unreachable"]
    finally:
        cluster.restart(stopped)
        with Client(cluster.addresses, secret=SECRET) as client:
            wait_until(
                lambda: all(s is not None for s in cluster.statuses(client).values()),
                timeout_s=15,
                what="every member answering",
            )


def test_transfer_leader_prints_its_result_as_json(cluster: LocalCluster, client: Client) -> None:
    leader = cluster.wait_for_leader(client)
    target = next(node_id for node_id in sorted(cluster.members) if node_id != leader)
    result = run(cluster, ["transfer-leader", target, "--json", "--timeout", "10"])
    assert result.returncode == 0, result.stderr
    assert document(result) == {"transfer_leader": target, "ok": True, "encoding": "utf-8"}
    wait_until(
        lambda: client.status(cluster.members[target].address).role == "leader",
        timeout_s=15,
        what=f"{target} to lead",
    )
