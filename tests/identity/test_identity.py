"""Member identity: the `DATA_DIR/identity` file (owner-only, atomic, survives restarts), the
cluster id every founder derives alike, the conflict rules of `check_peer`, and embedded nodes
that learn each other's incarnations and refuse a data directory started under another id."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import kvstore
from kvstore.identity import (
    IDENTITY_FILE,
    IdentityConflictError,
    IdentityStore,
    check_peer,
    check_wire_identity,
    cluster_id_for,
)
from kvstore.testing.local_cluster import wait_until
from kvstore.transport.identity import IdentityExchange

from ..node.conftest import FAST, WAIT_S, EmbeddedCluster


def test_identity_file_is_created_owner_only_and_read_back(tmp_path: Path) -> None:
    store = IdentityStore.open(tmp_path, node_id="n1", cluster_id="c1")
    path = tmp_path / IDENTITY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(store.incarnation) == 32
    store.accept("n2", "c1", "inc-2", dialed=True)
    again = IdentityStore.open(tmp_path, node_id="n1", cluster_id="ignored-once-created")
    assert (again.incarnation, again.cluster_id) == (store.incarnation, "c1")
    assert again.seen("n2") == ("inc-2", True)
    assert not list(tmp_path.glob("*.tmp"))
    again.forget_except(["n1"])
    assert IdentityStore.open(tmp_path, node_id="n1", cluster_id=None).seen("n2") is None


def test_each_new_data_directory_gets_its_own_incarnation(tmp_path: Path) -> None:
    first = IdentityStore.open(tmp_path / "a", node_id="n1", cluster_id=None)
    second = IdentityStore.open(tmp_path / "b", node_id="n1", cluster_id=None)
    assert first.incarnation != second.incarnation


def test_joining_member_adopts_the_cluster_id_once(tmp_path: Path) -> None:
    store = IdentityStore.open(tmp_path, node_id="n4", cluster_id=None)
    store.accept("n1", "cluster-a", "inc-1", dialed=False)
    assert store.cluster_id == "cluster-a"
    store.accept("n2", None, "inc-2", dialed=False)
    assert IdentityStore.open(tmp_path, node_id="n4", cluster_id=None).cluster_id == "cluster-a"


def test_a_dialed_incarnation_replaces_a_claimed_one(tmp_path: Path) -> None:
    store = IdentityStore.open(tmp_path, node_id="n1", cluster_id="c")
    store.accept("n2", "c", "claimed", dialed=False)
    store.accept("n2", "c", "real", dialed=True)
    assert store.seen("n2") == ("real", True)


def test_data_directory_of_another_member_is_refused(tmp_path: Path) -> None:
    IdentityStore.open(tmp_path, node_id="n1", cluster_id=None)
    with pytest.raises(kvstore.InvalidArgumentError, match="belongs to member 'n1', not 'n2'"):
        IdentityStore.open(tmp_path, node_id="n2", cluster_id=None)


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"[]", b'{"version": 1}', b'{"version": 9}', b'{"version": 1, "node_id": 5}'],
)
def test_damaged_identity_file_is_corruption(tmp_path: Path, content: bytes) -> None:
    (tmp_path / IDENTITY_FILE).write_bytes(content)
    with pytest.raises(kvstore.CorruptionError, match="identity"):
        IdentityStore.open(tmp_path, node_id="n1", cluster_id=None)


def test_cluster_id_depends_on_name_and_founders_not_their_order() -> None:
    assert cluster_id_for("a", ["n1", "n2"]) == cluster_id_for("a", ["n2", "n1"])
    assert cluster_id_for("a", ["n1", "n2"]) != cluster_id_for("b", ["n1", "n2"])
    assert cluster_id_for("a", ["n1", "n2"]) != cluster_id_for("a", ["n1", "n3"])


def _check(**overrides: object) -> None:
    arguments: dict[str, object] = {
        "node_id": "n1",
        "cluster_id": "c",
        "peer_id": "n2",
        "peer_cluster_id": "c",
        "peer_incarnation": "new",
        "remembered": None,
        "dialed": False,
        "connected": (),
    }
    arguments.update(overrides)
    check_peer(**arguments)  # type: ignore[arg-type]


def test_check_peer_accepts_what_fits() -> None:
    _check()
    _check(remembered=("new", True), connected=("new",))
    _check(peer_cluster_id=None)  # a member still joining
    _check(cluster_id=None)  # we are the one joining
    _check(dialed=True, remembered=("claimed", False))  # the dialed one is the authority
    _check(dialed=True, connected=("other",))  # the one dialing in is closed instead


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"peer_cluster_id": "d"}, "'n2' is a member of another cluster"),
        ({"connected": ("old",)}, "member id 'n2' is already connected to 'n1' as incarnation old"),
        ({"remembered": ("old", True)}, "came back as incarnation new, but 'n1' knew it as old"),
        ({"remembered": ("old", False)}, "its data directory was wiped or replaced"),
        ({"remembered": ("old", True), "dialed": True}, "kvstore member remove n2"),
    ],
)
def test_check_peer_names_each_conflict(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(IdentityConflictError, match=message):
        _check(**overrides)
    assert issubclass(IdentityConflictError, kvstore.AuthenticationError)


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {},
        {"incarnation": ""},
        {"incarnation": 5},
        {"incarnation": "x" * 65},
        {"incarnation": "i", "cluster_id": ""},
        {"incarnation": "i", "cluster_id": 1},
    ],
)
def test_malformed_identity_frames_are_refused(body: object) -> None:
    with pytest.raises(ValueError):
        check_wire_identity(body)
    assert check_wire_identity({"incarnation": "i", "cluster_id": None}) == (None, "i")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    embedded = EmbeddedCluster(tmp_path)
    try:
        yield embedded.start()
    finally:
        embedded.stop()


def _remembered(node: kvstore.Node) -> dict[str, dict[str, object]]:
    data = json.loads((node.data_dir / IDENTITY_FILE).read_text())
    peers: dict[str, dict[str, object]] = data["peers"]
    return peers


def test_founders_share_a_cluster_id_and_learn_each_others_incarnations(
    cluster: EmbeddedCluster,
) -> None:
    nodes = list(cluster.nodes.values())
    expected = cluster_id_for(FAST.cluster_name, cluster.peers)
    assert {node.cluster_id for node in nodes} == {expected}
    assert len({node.incarnation for node in nodes}) == 3
    for node in nodes:
        wanted = {
            other.node_id: {"incarnation": other.incarnation, "dialed": True}
            for other in nodes
            if other is not node
        }
        wait_until(
            lambda node=node, wanted=wanted: _remembered(node) == wanted,
            timeout_s=WAIT_S,
            what=f"{node.node_id} to dial and remember every peer",
        )


def test_joiner_learns_the_cluster_id_and_a_removed_member_is_forgotten(
    cluster: EmbeddedCluster,
) -> None:
    leader = cluster.leader()
    joiner = cluster.start_node("n4", join=True, peers={**cluster.peers, "n4": "127.0.0.1:0"})
    assert joiner.cluster_id is None
    leader.add_member("n4", joiner.address, timeout_s=WAIT_S)
    wait_until(
        lambda: joiner.cluster_id == leader.cluster_id, timeout_s=WAIT_S, what="n4 to learn it"
    )
    wait_until(lambda: "n4" in _remembered(leader), timeout_s=WAIT_S, what="the leader to meet n4")
    leader.remove_member("n4", timeout_s=WAIT_S)
    for node in cluster.nodes.values():
        if node is not joiner:
            wait_until(
                lambda node=node: "n4" not in _remembered(node),
                timeout_s=WAIT_S,
                what=f"{node.node_id} to forget n4",
            )


def test_node_refuses_a_data_directory_of_another_member(cluster: EmbeddedCluster) -> None:
    n1 = cluster.nodes["n1"]
    cluster.stop_node("n1")
    with pytest.raises(kvstore.InvalidArgumentError, match="belongs to member 'n1', not 'n2'"):
        kvstore.Node("n2", n1.data_dir, cluster.peers, options=FAST).start()


def test_adding_a_member_at_another_members_address_is_refused(cluster: EmbeddedCluster) -> None:
    leader = cluster.leader()
    taken = next(node.address for node in cluster.nodes.values() if node is not leader)
    with pytest.raises(kvstore.InvalidArgumentError, match="already has the address"):
        leader.add_member("n4", taken, timeout_s=WAIT_S)
    assert set(leader.status().members) == {"n1", "n2", "n3"}


class _FakeConnection:
    """Stands in for a `FramedConnection` in `IdentityExchange`'s bookkeeping."""

    def __init__(self) -> None:
        self.closed = False

    def abort(self) -> None:
        self.closed = True


def test_a_claim_that_came_first_cannot_make_a_member_refuse_the_real_one(
    tmp_path: Path,
) -> None:
    """A second process reached n1 before n1 ever dialed the real n2: what n1 then finds at
    n2's configured address wins, the claimant's connection is closed, and its next claim is
    refused while the real n2 is connected."""
    store = IdentityStore.open(tmp_path, node_id="n1", cluster_id="c")
    exchange = IdentityExchange("n1", store)
    claimant, real = _FakeConnection(), _FakeConnection()
    accept = exchange._check_and_accept
    accept(claimant, "n2", {"cluster_id": "c", "incarnation": "second"}, dialed=False)  # type: ignore[arg-type]
    assert store.seen("n2") == ("second", False)
    accept(real, "n2", {"cluster_id": "c", "incarnation": "real"}, dialed=True)  # type: ignore[arg-type]
    assert claimant.closed and not real.closed
    assert store.seen("n2") == ("real", True)
    with pytest.raises(
        IdentityConflictError, match="already connected to 'n1' as incarnation real"
    ):
        accept(_FakeConnection(), "n2", {"cluster_id": "c", "incarnation": "second"}, dialed=False)  # type: ignore[arg-type]
    real.closed = True  # the real one went away: the memory still refuses the other
    with pytest.raises(IdentityConflictError, match="knew it as real"):
        accept(_FakeConnection(), "n2", {"cluster_id": "c", "incarnation": "second"}, dialed=False)  # type: ignore[arg-type]
