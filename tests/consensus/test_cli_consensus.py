"""`--consensus raft|paxos` on the command line, end to end on real `kvstore serve` processes.

Every member of a cluster must run the same protocol: a member started with another one is
refused at the handshake by both sides, each naming both protocols in its log. Paxos runs a
fixed configuration: `kvstore member add/remove` is refused with a clear error. Waits are on
conditions with deadlines (`wait_until`), never bare sleeps.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest

import kvstore
from kvstore.cli import build_parser
from kvstore.testing.local_cluster import LocalCluster, free_ports, wait_until

WAIT_S = 30.0


def test_the_consensus_option_of_serve_demo_and_bench(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    serve = ["serve", "--id", "n1", "--data-dir", "d", "--peers", "n1=127.0.0.1:7001"]
    assert parser.parse_args(serve).consensus == "raft"
    assert parser.parse_args([*serve, "--consensus", "paxos"]).consensus == "paxos"
    assert parser.parse_args(["demo", "--consensus", "paxos"]).consensus == "paxos"
    assert parser.parse_args(["bench", "--consensus", "paxos"]).consensus == "paxos"
    assert parser.parse_args(["bench"]).consensus == "raft"
    with pytest.raises(SystemExit):
        parser.parse_args([*serve, "--consensus", "zab"])
    assert "invalid choice: 'zab'" in capsys.readouterr().err


def test_options_validate_the_protocol() -> None:
    kvstore.Options(consensus="paxos").validate()
    with pytest.raises(kvstore.InvalidArgumentError, match="consensus must be one of raft, paxos"):
        kvstore.Options(consensus="zab").validate()


def _logs(cluster: LocalCluster, node_id: str) -> str:
    path = cluster.members[node_id].log_path
    return path.read_text(errors="replace") if path is not None and path.exists() else ""


def _leader(cluster: LocalCluster, client: kvstore.Client) -> str | None:
    for member in cluster:
        try:
            status = client.status(member.address, timeout_s=1.0)
        except (kvstore.KVStoreError, OSError):
            continue
        if status.role == "leader":
            return status.node_id
    return None


def test_a_paxos_cluster_serves_and_refuses_a_raft_member() -> None:
    """Three `serve --consensus paxos` members; the third is started with `--consensus raft`
    instead. The two Paxos members form a quorum and serve; the Raft one is refused by both,
    both ways, and every side's log names both protocols."""
    cluster = LocalCluster(3, consensus="paxos")
    with contextlib.closing(cluster):
        odd = cluster.members["n3"]
        odd.extra_args += ["--consensus", "raft"]  # the last --consensus wins
        cluster.start()
        with kvstore.Client(
            [cluster.members["n1"].address, cluster.members["n2"].address], timeout_s=10.0
        ) as client:
            leader = wait_until(lambda: _leader(cluster, client), timeout_s=WAIT_S, what="leader")
            assert leader in ("n1", "n2")
            client.put(b"k", b"v", timeout_s=10.0)
            assert client.get(b"k", timeout_s=10.0) == b"v"

            def refused_everywhere() -> bool:
                logs = {n: _logs(cluster, n) for n in ("n1", "n2", "n3")}
                return all("consensus mismatch" in text for text in logs.values())

            wait_until(refused_everywhere, timeout_s=WAIT_S, what="mismatch refusals in logs")
            # The Raft member (n3) says what it runs and what the others run, and so do they.
            assert "runs paxos" in _logs(cluster, "n3") and "runs raft" in _logs(cluster, "n3")
            for node_id in ("n1", "n2"):
                assert "runs raft" in _logs(cluster, node_id)
                assert "runs paxos" in _logs(cluster, node_id)
            # It never joined: it knows no leader and holds none of the cluster's writes.
            status = client.status(odd.address, timeout_s=5.0)
            assert status.leader_id is None and status.role != "leader"
            with kvstore.Client([odd.address], timeout_s=5.0) as alone:
                assert alone.get(b"k", consistency="stale", timeout_s=5.0) is None


def test_membership_commands_are_refused_on_a_paxos_cluster() -> None:
    """`kvstore member add/remove` against a Paxos cluster fail (exit 2) with an error that says
    why; the cluster keeps serving in its configuration."""
    with LocalCluster(3, consensus="paxos") as cluster:
        endpoints = ",".join(cluster.addresses)
        with kvstore.Client(cluster.addresses, timeout_s=10.0) as client:
            wait_until(lambda: _leader(cluster, client), timeout_s=WAIT_S, what="a leader")
            [port] = free_ports(1)
            for args in (["add", "n4", f"127.0.0.1:{port}"], ["remove", "n3"]):
                result = subprocess.run(
                    [sys.executable, "-m", "kvstore", "member", *args, "--endpoints", endpoints],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert result.returncode == 2, result.stdout + result.stderr
                assert "paxos" in result.stderr, result.stderr
            client.put(b"after", b"ok", timeout_s=10.0)
            status = client.status(timeout_s=5.0)
            assert sorted(status.members) == ["n1", "n2", "n3"]
