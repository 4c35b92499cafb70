"""Identity and misconfiguration, against real `kvstore serve` processes on 127.0.0.1.

Each member holds a cluster id and an incarnation (`DATA_DIR/identity`); after the handshake
peers exchange them and refuse, naming the conflict:

- a member of another cluster (same member ids, another --cluster-name);
- a second process started with the id of a running member (it neither takes over nor causes
  an election, and the real member keeps serving);
- a member whose data was wiped and that comes back under its old id; removing it, wiping it
  and adding it again (`--join`) still works.

On the code before identities, none of these was refused: each test waits for the refusal
in the logs and fails when it never comes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import kvstore
from kvstore.testing.local_cluster import LocalCluster, Member, free_ports, wait_until

from .conftest import ELECTION_TIMEOUT_MAX_S, WAIT_S, client_for, find_leader, running_cluster


def _log(path: Path | None) -> str:
    return path.read_text(errors="replace") if path is not None and path.exists() else ""


def _serve(
    tmp_path: Path, node_id: str, address: str, peers: dict[str, str], *extra: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """A lone `kvstore serve` process outside any `LocalCluster`; its stderr goes to a file."""
    log_path = tmp_path / f"{node_id}-outsider.log"
    peers_arg = ",".join(f"{peer}={where}" for peer, where in {**peers, node_id: address}.items())
    command = [sys.executable, "-m", "kvstore", "--log-level", "INFO", "serve", "--id", node_id]
    command += ["--data-dir", str(tmp_path / f"{node_id}-outsider"), "--peers", peers_arg, *extra]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    return process, log_path


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _terms(cluster: LocalCluster, client: kvstore.Client) -> dict[str, int]:
    return {
        node_id: status.term
        for node_id, status in cluster.statuses(client).items()
        if status is not None
    }


def _settled_terms(cluster: LocalCluster, client: kvstore.Client) -> dict[str, int]:
    """Every member's term, once all of them have heard from the same leader in one term."""

    def settled() -> dict[str, int] | None:
        statuses = cluster.statuses(client)
        views = {(s.term, s.leader_id) for s in statuses.values() if s is not None}
        if len(views) == 1 and None not in next(iter(views)) and None not in statuses.values():
            return {node_id: s.term for node_id, s in statuses.items() if s is not None}
        return None

    return wait_until(settled, timeout_s=WAIT_S, what="every member to follow one leader")


def test_member_of_another_cluster_is_refused(tmp_path: Path) -> None:
    with running_cluster(log_level="INFO") as cluster, client_for(cluster) as client:
        leader = find_leader(cluster, client)
        terms = _settled_terms(cluster, client)
        # Cluster B's n1, created under another name, is pointed at cluster A's n2 and n3.
        others = {m.node_id: m.address for m in cluster if m.node_id != "n1"}
        address = f"127.0.0.1:{free_ports(1)[0]}"
        process, log_path = _serve(
            tmp_path, "n1", address, others, "--cluster-name", "another-cluster"
        )
        try:
            wait_until(
                lambda: _log(log_path).count("is a member of another cluster") >= 2,
                timeout_s=WAIT_S,
                what="both of cluster A's members to refuse B's n1",
            )
            for member in ("n2", "n3"):
                assert "'n1' is a member of another cluster" in _log(
                    cluster.members[member].log_path
                )
            # No disruption: the same leader, the same terms, and cluster A still serves.
            client.put(b"after/outsider", b"1")
            assert find_leader(cluster, client) == leader
            assert _terms(cluster, client) == terms
        finally:
            _stop(process)


def test_second_process_with_a_members_id_is_refused_and_causes_no_election(
    tmp_path: Path,
) -> None:
    with running_cluster(log_level="INFO") as cluster, client_for(cluster) as client:
        leader = find_leader(cluster, client)
        victim = next(m for m in cluster if m.node_id != leader)
        terms = _settled_terms(cluster, client)
        others = {m.node_id: m.address for m in cluster if m is not victim}
        address = f"127.0.0.1:{free_ports(1)[0]}"
        process, log_path = _serve(tmp_path, victim.node_id, address, others)
        try:
            wait_until(
                lambda: _log(log_path).count("is already connected") >= 2,
                timeout_s=WAIT_S,
                what="both other members to refuse the second process",
            )
            # Give it time to campaign (it would, after an election timeout): nothing happens.
            deadline_log = _log(log_path)
            wait_until(
                lambda: (
                    _log(log_path).count("is already connected")
                    >= deadline_log.count("is already connected") + 2
                ),
                timeout_s=max(WAIT_S, 4 * ELECTION_TIMEOUT_MAX_S),
                what="more refusals (it keeps trying)",
            )
            assert process.poll() is None
            client.put(b"after/second-process", b"1")
            assert find_leader(cluster, client) == leader
            assert _terms(cluster, client) == terms
            with kvstore.Client([victim.address]) as own:
                wait_until(
                    lambda: own.get(b"after/second-process", consistency="stale") == b"1",
                    timeout_s=WAIT_S,
                    what="the real member to keep applying",
                )
                assert own.status().node_id == victim.node_id
        finally:
            _stop(process)


def _wipe_and_restart(cluster: LocalCluster, member: Member, *, join: bool) -> None:
    cluster.stop(member.node_id)
    shutil.rmtree(member.data_dir)
    if join:
        member.extra_args = [*member.extra_args, "--join"]
    cluster.restart(member.node_id)


def test_wiped_member_is_refused_until_removed_and_added_again() -> None:
    with running_cluster(log_level="INFO") as cluster, client_for(cluster) as client:
        leader = find_leader(cluster, client)
        client.put(b"before/wipe", b"1")
        wiped = next(m for m in cluster if m.node_id != leader)
        _wipe_and_restart(cluster, wiped, join=False)
        wait_until(
            lambda: "its data directory was wiped or replaced" in _log(wiped.log_path),
            timeout_s=WAIT_S,
            what="the wiped member to be refused",
        )
        leader_log = _log(cluster.members[leader].log_path)
        assert f"member '{wiped.node_id}' came back as incarnation" in leader_log
        # The others go on without it, and nothing is lost.
        client.put(b"during/wipe", b"1")
        assert find_leader(cluster, client) == leader
        # Remove it, wipe it again, add it back: it is accepted and catches up.
        client.remove_member(wiped.node_id, timeout_s=WAIT_S)
        _wipe_and_restart(cluster, wiped, join=True)
        client.add_member(wiped.node_id, wiped.address, timeout_s=WAIT_S)
        with kvstore.Client([wiped.address]) as own:
            wait_until(
                lambda: own.get(b"during/wipe", consistency="stale") == b"1",
                timeout_s=WAIT_S,
                what="the re-added member to catch up",
            )
            assert own.get(b"before/wipe", consistency="stale") == b"1"
            assert own.status().role in ("follower", "learner")
