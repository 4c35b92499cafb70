"""Client sessions on a real 3-member cluster (Raft thesis §6.3): sessions registered through
the log, expired by the leader's clock on every member alike, renewed transparently for a
first attempt (by `kvstore.Client` and by the node's own writes), and a full table refusing
new sessions instead of evicting live ones."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import kvstore
from kvstore import node as node_module
from kvstore.storage.commands import CommandRejected, ResultCode
from kvstore.storage.state_machine import StateMachine
from kvstore.testing.local_cluster import wait_until
from tests.node.conftest import FAST, WAIT_S, EmbeddedCluster

SESSION_TIMEOUT_S = 0.5


def state_machine(node: kvstore.Node) -> StateMachine:
    sm = node._runtime._sm  # the test reads the session table the way the state machine holds it
    assert sm is not None
    return sm


def addresses(cluster: EmbeddedCluster) -> list[str]:
    return [node.address for node in cluster.nodes.values()]


@pytest.mark.parametrize("consensus", ["raft", "paxos"])
def test_expired_sessions_renew_transparently_for_first_attempts(
    tmp_path: Path, consensus: str
) -> None:
    options = dataclasses.replace(FAST, session_timeout_s=SESSION_TIMEOUT_S, consensus=consensus)
    cluster = EmbeddedCluster(tmp_path, options=options).start()
    try:
        leader = cluster.leader()
        follower = cluster.followers()[0]
        with (
            kvstore.Client(addresses(cluster)) as client,
            kvstore.Client(addresses(cluster)) as ticker,
        ):
            client.put(b"k", b"v1")
            follower.put(b"f", b"v1")  # the embedded path, through a follower
            old = set(state_machine(leader).session_ids())
            assert len(old) == 2

            def expired() -> bool:
                # Another client's writes carry the leader's clock forward (time in the
                # state machine comes only from the log).
                ticker.put(b"tick", b"")
                return not old & set(state_machine(leader).session_ids())

            wait_until(expired, timeout_s=WAIT_S, what="the idle sessions to expire")
            client.put(b"k", b"v2")  # refused as expired, sent again under a new session
            follower.put(b"f", b"v2")
            assert client.get(b"k") == b"v2"
            assert follower.get(b"f") == b"v2"
            # Both registered anew (the ticker's session lives on).
            assert len(set(state_machine(leader).session_ids()) - old) >= 3
        # Every member expired and registered the same sessions at the same entries.
        wait_until(
            lambda: len({n.status().applied_index for n in cluster.nodes.values()}) == 1,
            timeout_s=WAIT_S,
            what="every member to apply everything",
        )
        digests = {state_machine(node).digest() for node in cluster.nodes.values()}
        assert len(digests) == 1
        assert not old & set(state_machine(follower).session_ids())
    finally:
        cluster.stop()


def test_a_full_session_table_refuses_new_clients_and_keeps_the_old(tmp_path: Path) -> None:
    options = dataclasses.replace(FAST, sessions_max=2, session_timeout_s=60.0)
    cluster = EmbeddedCluster(tmp_path, options=options).start()
    try:
        endpoints = addresses(cluster)
        with kvstore.Client(endpoints) as a, kvstore.Client(endpoints) as b:
            a.put(b"a", b"1")
            b.put(b"b", b"1")
            for _ in range(3):  # an attacker's new clients cannot evict a's or b's session
                with (
                    kvstore.Client(endpoints) as attacker,
                    pytest.raises(kvstore.UnavailableError, match="too many client sessions"),
                ):
                    attacker.put(b"a", b"evil", timeout_s=5.0)  # a redirect under load
            a.put(b"a", b"2")
            b.put(b"b", b"2")
            assert a.get(b"a") == b"2"
            assert a.get(b"b") == b"2"
    finally:
        cluster.stop()


def test_an_expired_refusal_is_resent_only_when_its_one_copy_was_the_one_refused() -> None:
    """The node proposes a write again after a leader change; an earlier copy may then have
    been applied unseen, so a SESSION_EXPIRED answer no longer proves it never ran."""
    refused = CommandRejected(ResultCode.SESSION_EXPIRED, "expired")
    once = node_module._rejection_error(refused, submissions=1)
    assert isinstance(once, node_module._NeverAppliedError)
    twice = node_module._rejection_error(refused, submissions=2)
    assert isinstance(twice, kvstore.SessionExpiredError)
    assert not isinstance(twice, node_module._NeverAppliedError)
    assert "outcome unknown" in str(twice)
    too_far = node_module._rejection_error(CommandRejected(ResultCode.SEQ_TOO_FAR), 1)
    assert isinstance(too_far, kvstore.InvalidArgumentError)
    full = node_module._rejection_error(CommandRejected(ResultCode.SESSIONS_FULL), 1)
    assert isinstance(full, kvstore.UnavailableError)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), 1e12, "600"])
def test_options_check_the_session_timeout(bad: object) -> None:
    with pytest.raises(kvstore.InvalidArgumentError, match="session_timeout_s"):
        dataclasses.replace(FAST, session_timeout_s=bad).validate()  # type: ignore[arg-type]
