"""Argument checking and lifecycle of `kvstore.Node`, and argument checking of `kvstore.Client`.

Every public method refuses bad input with `InvalidArgumentError` before anything is sent or
written: the leader's commit index does not move (unless an election appended its no-op).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import kvstore
from kvstore.testing.local_cluster import free_ports

from .conftest import FAST, EmbeddedCluster

LIMIT = FAST.max_value_bytes
TOO_BIG = b"v" * (LIMIT + 1)
LONG_KEY = b"k" * 512

# (name, call) pairs; each call must raise InvalidArgumentError on a Node or a Client alike.
BAD_CALLS: list[tuple[str, Callable[[Any], object]]] = [
    ("put-str-key", lambda n: n.put("k", b"v")),
    ("put-empty-key", lambda n: n.put(b"", b"v")),
    ("put-long-key", lambda n: n.put(LONG_KEY, b"v")),
    ("put-none-key", lambda n: n.put(None, b"v")),
    ("put-bytearray-key", lambda n: n.put(bytearray(b"k"), b"v")),
    ("put-str-value", lambda n: n.put(b"k", "v")),
    ("put-none-value", lambda n: n.put(b"k", None)),
    ("put-oversized-value", lambda n: n.put(b"k", TOO_BIG)),
    ("put-zero-timeout", lambda n: n.put(b"k", b"v", timeout_s=0)),
    ("put-negative-timeout", lambda n: n.put(b"k", b"v", timeout_s=-1)),
    ("put-bool-timeout", lambda n: n.put(b"k", b"v", timeout_s=True)),
    ("put-str-timeout", lambda n: n.put(b"k", b"v", timeout_s="1")),
    ("get-str-key", lambda n: n.get("k")),
    ("get-empty-key", lambda n: n.get(b"")),
    ("get-long-key", lambda n: n.get(LONG_KEY)),
    ("get-bad-consistency", lambda n: n.get(b"k", consistency="strong")),
    ("get-none-consistency", lambda n: n.get(b"k", consistency=None)),
    ("get-bad-timeout", lambda n: n.get(b"k", timeout_s=0)),
    ("delete-str-key", lambda n: n.delete("k")),
    ("delete-empty-key", lambda n: n.delete(b"")),
    ("delete-long-key", lambda n: n.delete(LONG_KEY)),
    ("delete-bad-timeout", lambda n: n.delete(b"k", timeout_s=-0.5)),
    ("cas-empty-key", lambda n: n.cas(b"", None, b"v")),
    ("cas-long-key", lambda n: n.cas(LONG_KEY, None, b"v")),
    ("cas-str-expected", lambda n: n.cas(b"k", "v", b"v")),
    ("cas-oversized-expected", lambda n: n.cas(b"k", TOO_BIG, b"v")),
    ("cas-str-new", lambda n: n.cas(b"k", None, "v")),
    ("cas-oversized-new", lambda n: n.cas(b"k", None, TOO_BIG)),
    ("cas-bad-timeout", lambda n: n.cas(b"k", None, b"v", timeout_s=0)),
    ("scan-str-prefix", lambda n: n.scan("k")),
    ("scan-none-prefix", lambda n: n.scan(None)),
    ("scan-zero-limit", lambda n: n.scan(b"", limit=0)),
    ("scan-negative-limit", lambda n: n.scan(b"", limit=-1)),
    ("scan-float-limit", lambda n: n.scan(b"", limit=1.5)),
    ("scan-bool-limit", lambda n: n.scan(b"", limit=True)),
    ("scan-bad-consistency", lambda n: n.scan(b"", consistency="eventual")),
    ("scan-bad-timeout", lambda n: n.scan(b"", timeout_s=0)),
    ("add-member-empty-id", lambda n: n.add_member("", "127.0.0.1:1")),
    ("add-member-int-id", lambda n: n.add_member(4, "127.0.0.1:1")),
    ("add-member-no-port", lambda n: n.add_member("n9", "127.0.0.1")),
    ("add-member-bad-port", lambda n: n.add_member("n9", "127.0.0.1:http")),
    ("add-member-int-address", lambda n: n.add_member("n9", 7001)),
    ("add-member-bad-timeout", lambda n: n.add_member("n9", "127.0.0.1:1", timeout_s=0)),
    ("remove-member-empty-id", lambda n: n.remove_member("")),
    ("remove-member-none-id", lambda n: n.remove_member(None)),
    ("remove-member-not-a-member", lambda n: n.remove_member("n9")),
    ("transfer-empty-id", lambda n: n.transfer_leadership("")),
    ("transfer-not-a-voter", lambda n: n.transfer_leadership("n9")),
    ("transfer-bad-timeout", lambda n: n.transfer_leadership("n1", timeout_s=-1)),
]

NODE_ONLY_BAD_CALLS: list[tuple[str, Callable[[Any], object]]] = [
    ("wait-for-leader-zero-timeout", lambda n: n.wait_for_leader(timeout_s=0)),
]

CLIENT_ONLY_BAD_CALLS: list[tuple[str, Callable[[Any], object]]] = [
    ("status-bad-address", lambda c: c.status("nowhere")),
    ("status-bad-timeout", lambda c: c.status(timeout_s=0)),
]


LEADER_ONLY = {"remove-member-not-a-member", "transfer-not-a-voter"}
"""Whether a node is a member is the leader's call: a follower redirects these instead."""


def _commit_and_term(node: kvstore.Node) -> tuple[int, int]:
    status = node.status()
    return status.commit_index, status.term


def _assert_nothing_written(
    leader: kvstore.Node, before: tuple[int, int], keys_before: list[tuple[bytes, bytes]]
) -> None:
    commit, term = _commit_and_term(leader)
    if term == before[1]:  # a new term appends a no-op: only then may the commit index move
        assert commit == before[0], "a refused call wrote to the log"
    assert leader.scan(b"", consistency="stale") == keys_before


@pytest.fixture(scope="module")
def client(shared_cluster: EmbeddedCluster) -> Iterator[kvstore.Client]:
    addresses = [node.address for node in shared_cluster.nodes.values()]
    with kvstore.Client(addresses, timeout_s=5.0) as the_client:
        # A client registers its session through the log before its first write: do it now,
        # so the tests below see only what a refused call itself writes.
        the_client.delete(b"api/register-session")
        yield the_client


@pytest.mark.parametrize(
    ("name", "call"),
    BAD_CALLS + NODE_ONLY_BAD_CALLS,
    ids=[n for n, _ in BAD_CALLS + NODE_ONLY_BAD_CALLS],
)
def test_node_refuses_bad_input_and_writes_nothing(
    shared_cluster: EmbeddedCluster, name: str, call: Callable[[Any], object]
) -> None:
    leader = shared_cluster.leader()
    before = _commit_and_term(leader)
    keys_before = leader.scan(b"", consistency="stale")
    nodes = [leader] if name in LEADER_ONLY else list(shared_cluster.nodes.values())
    for node in nodes:
        with pytest.raises(kvstore.InvalidArgumentError):
            call(node)
    _assert_nothing_written(leader, before, keys_before)


@pytest.mark.parametrize(
    "call",
    [c for _, c in BAD_CALLS + CLIENT_ONLY_BAD_CALLS],
    ids=[n for n, _ in BAD_CALLS + CLIENT_ONLY_BAD_CALLS],
)
def test_client_refuses_bad_input_and_writes_nothing(
    shared_cluster: EmbeddedCluster, client: kvstore.Client, call: Callable[[Any], object]
) -> None:
    leader = shared_cluster.leader()
    before = _commit_and_term(leader)
    keys_before = leader.scan(b"", consistency="stale")
    with pytest.raises(kvstore.InvalidArgumentError):
        call(client)
    _assert_nothing_written(leader, before, keys_before)


def test_client_with_a_bigger_limit_is_refused_by_the_node(
    shared_cluster: EmbeddedCluster, client: kvstore.Client
) -> None:
    """The client's own limit is 1 MiB; the node's is smaller and it refuses, writing nothing."""
    leader = shared_cluster.leader()
    before = _commit_and_term(leader)
    keys_before = leader.scan(b"", consistency="stale")
    with pytest.raises(kvstore.InvalidArgumentError):
        client.put(b"big", TOO_BIG)
    with pytest.raises(kvstore.InvalidArgumentError):
        client.cas(b"big", None, TOO_BIG)
    _assert_nothing_written(leader, before, keys_before)


def test_good_input_after_bad_input_still_works(
    shared_cluster: EmbeddedCluster, client: kvstore.Client
) -> None:
    """The refusals above left both the node and the client usable."""
    node = next(iter(shared_cluster.nodes.values()))
    node.put(b"api/after", b"ok")
    assert client.get(b"api/after") == b"ok"
    assert node.get(b"api/after") == b"ok"
    value_at_limit = b"x" * LIMIT
    client.put(b"api/at-limit", value_at_limit)
    assert node.get(b"api/at-limit") == value_at_limit
    key_at_limit = b"k" * 511
    node.put(key_at_limit, b"")
    assert client.get(key_at_limit) == b""


@pytest.mark.parametrize(
    "make",
    [
        lambda d, p: kvstore.Node("", d, p),
        lambda d, p: kvstore.Node(1, d, p),
        lambda d, p: kvstore.Node("n1", d, {}),
        lambda d, p: kvstore.Node("n1", d, {"n2": p["n1"]}),
        lambda d, p: kvstore.Node("n1", d, {"n1": "localhost"}),
        lambda d, p: kvstore.Node("n1", d, {"n1": p["n1"], "": p["n1"]}),
        lambda d, p: kvstore.Node("n1", d, p, secret=b""),
        lambda d, p: kvstore.Node("n1", d, p, secret="secret"),
        lambda d, p: kvstore.Node("n1", d, p, options={"tick_s": 1}),
        lambda d, p: kvstore.Node("n1", d, p, options=kvstore.Options(tick_s=0)),
        lambda d, p: kvstore.Node("n1", d, p, options=kvstore.Options(election_ticks=1)),
        lambda d, p: kvstore.Node("n1", 42, p),
    ],
    ids=[
        "empty-id",
        "int-id",
        "no-peers",
        "self-missing",
        "bad-address",
        "empty-peer-id",
        "empty-secret",
        "str-secret",
        "options-dict",
        "zero-tick",
        "election-not-above-heartbeat",
        "int-data-dir",
    ],
)
def test_node_constructor_refuses_bad_arguments(
    tmp_path: Path, make: Callable[[Path, dict[str, str]], kvstore.Node]
) -> None:
    peers = {"n1": f"127.0.0.1:{free_ports(1)[0]}"}
    with pytest.raises(kvstore.InvalidArgumentError):
        make(tmp_path / "n1", peers)
    assert not (tmp_path / "n1").exists(), "a refused constructor created the data directory"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"endpoints": []},
        {"endpoints": ["localhost"]},
        {"endpoints": {"127.0.0.1:1": 0}},
        {"endpoints": {"127.0.0.1:1": -1.0}},
        {"endpoints": 7001},
        {"endpoints": ["127.0.0.1:1"], "balancer": "fastest"},
        {"endpoints": ["127.0.0.1:1"], "secret": "secret"},
        {"endpoints": ["127.0.0.1:1"], "timeout_s": 0},
        {"endpoints": ["127.0.0.1:1"], "max_value_bytes": 0},
    ],
    ids=[
        "no-endpoints",
        "no-port",
        "zero-weight",
        "negative-weight",
        "int-endpoints",
        "unknown-balancer",
        "str-secret",
        "zero-timeout",
        "zero-value-limit",
    ],
)
def test_client_constructor_refuses_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(kvstore.InvalidArgumentError):
        kvstore.Client(**kwargs)


def test_lifecycle_start_twice_stop_twice_and_calls_after_stop(tmp_path: Path) -> None:
    peers = {"solo": f"127.0.0.1:{free_ports(1)[0]}"}
    node = kvstore.Node("solo", tmp_path / "solo", peers, options=FAST)
    with pytest.raises(kvstore.UnavailableError):
        node.put(b"k", b"v")  # not started yet
    with node:
        with pytest.raises(kvstore.KVStoreError, match="already started"):
            node.start()
        assert node.wait_for_leader(timeout_s=10) == "solo"
        node.put(b"k", b"v")
        assert node.get(b"k") == b"v"
        status = node.status()
        assert status.role == "leader" and status.members == {"solo": node.address}
    node.stop()  # a second stop is harmless
    for call in (
        lambda: node.put(b"k", b"v2"),
        lambda: node.get(b"k", consistency="stale"),
        lambda: node.status(),
        lambda: node.wait_for_leader(timeout_s=1),
    ):
        with pytest.raises(kvstore.UnavailableError):
            call()
    with pytest.raises(kvstore.KVStoreError, match="already started"):
        node.start()  # a node object is started once; a new one reopens the data directory
