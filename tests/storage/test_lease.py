"""Leases in the state machine: grant (assigned or given ids), attach through a txn put, move
between leases, detach by a plain put, revoke deleting every key at one revision with its
events in history, expiry committed without a session, bad input and refusals."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kvstore.consensus.types import Entry
from kvstore.errors import InvalidArgumentError
from kvstore.storage.commands import (
    LEASE_TTL_MS_MAX,
    CommandRejected,
    LeaseGranted,
    ResultCode,
    TxnCompare,
    TxnOutcome,
    encode_delete,
    encode_lease_grant,
    encode_lease_revoke,
    encode_put,
    encode_register,
    encode_txn,
    txn_delete,
    txn_delete_range,
    txn_get,
    txn_put,
)
from kvstore.storage.mvcc import EVENT_DELETE
from kvstore.storage.state_machine import StateMachine
from tests.storage.session_driver import Driver


@pytest.fixture
def sm(tmp_path: Path) -> StateMachine:
    machine = StateMachine(tmp_path / "state")
    yield machine  # type: ignore[misc]
    machine.close()


def test_grant_assigns_the_entry_index_or_takes_the_given_id(sm: StateMachine) -> None:
    d = Driver(sm)
    granted = d.grant(5000)
    assert granted == LeaseGranted(d.index, 5000)
    assert d.grant(3000, lease_id=77) == LeaseGranted(77, 3000)
    again = d.grant(1000, lease_id=77)
    assert isinstance(again, CommandRejected) and again.code == ResultCode.LEASE_EXISTS
    assert sm.leases() == [(2, 5000), (77, 3000)]
    assert sm.lease_ttl_ms(77) == 3000 and sm.lease_ttl_ms(5) is None
    assert sm.revision() == 0  # leases change no key


def test_attach_move_detach_and_revoke_at_one_revision(sm: StateMachine) -> None:
    d = Driver(sm)
    first = d.grant(5000)
    second = d.grant(5000)
    assert isinstance(first, LeaseGranted) and isinstance(second, LeaseGranted)
    for key in (b"a", b"b", b"c"):
        assert d.put(key, b"v", lease=first.lease_id)
    assert sm.get_kv(b"a") == (b"a", b"v", 1, 1, 1, first.lease_id)
    assert sm.lease_keys(first.lease_id) == [b"a", b"b", b"c"]
    d.put(b"b", b"moved", lease=second.lease_id)  # moves b to the second lease
    d.put(b"c", b"plain")  # a put without a lease detaches c
    d.put(b"d", b"none")
    assert sm.lease_keys(first.lease_id) == [b"a"]
    assert sm.lease_keys(second.lease_id) == [b"b"]
    assert sm.get_kv(b"c") == (b"c", b"plain", 3, 5, 2, 0)
    d.put(b"e", b"v", lease=second.lease_id)
    before = sm.revision()
    assert d.apply(encode_lease_revoke(1, d.next_seq(), second.lease_id)) is True
    assert sm.revision() == before + 1  # both keys at one revision
    assert sm.get(b"b") is None and sm.get(b"e") is None and sm.get(b"a") == b"v"
    [(revision, events)] = sm.events(before + 1, prev_kv=True)
    assert revision == before + 1
    assert [(kind, kv[0]) for kind, kv, _ in events] == [(EVENT_DELETE, b"b"), (EVENT_DELETE, b"e")]
    assert events[0][2] is not None and events[0][2][1] == b"moved"
    assert sm.lease_ttl_ms(second.lease_id) is None and sm.lease_keys(second.lease_id) == []
    # Revoking again, or putting with the revoked lease, is refused with a typed result.
    again = d.apply(encode_lease_revoke(1, d.next_seq(), second.lease_id))
    assert isinstance(again, CommandRejected) and again.code == ResultCode.LEASE_NOT_FOUND
    refused = d.put(b"f", b"v", lease=second.lease_id)
    assert isinstance(refused, CommandRejected) and refused.code == ResultCode.LEASE_NOT_FOUND
    assert sm.get(b"f") is None and sm.revision() == before + 1


def test_deleted_key_leaves_its_lease_and_an_empty_revoke_keeps_the_revision(
    sm: StateMachine,
) -> None:
    d = Driver(sm)
    granted = d.grant(1000)
    assert isinstance(granted, LeaseGranted)
    d.put(b"k", b"v", lease=granted.lease_id)
    d.apply(encode_delete(1, d.next_seq(), b"k"))
    assert sm.lease_keys(granted.lease_id) == []
    revision = sm.revision()
    assert d.apply(encode_lease_revoke(1, d.next_seq(), granted.lease_id)) is True
    assert sm.revision() == revision  # no key deleted: no revision


def test_expiry_is_a_revoke_without_a_session(tmp_path: Path) -> None:
    """The leader commits expiry as a revoke with session 0: two members applying the same
    log end identical, the keys gone at the same revision."""
    machines = [StateMachine(tmp_path / str(n)) for n in range(2)]
    try:
        entries = [
            Entry(1, 1, data=encode_register(1)),
            Entry(1, 2, data=encode_lease_grant(0, 1, 2000)),
            Entry(
                1, 3, data=encode_txn(1, 1, [], [txn_put(b"x", b"1", 2), txn_put(b"y", b"2", 2)])
            ),
            Entry(1, 4, data=encode_lease_revoke(0, 1, 2)),
        ]
        results = machines[0].apply(entries)
        assert results[1] == LeaseGranted(2, 2000) and isinstance(results[2], TxnOutcome)
        assert results[3] is True
        for entry in entries:
            machines[1].apply([entry])
        assert machines[0].digest() == machines[1].digest()
        assert machines[1].get(b"x") is None and machines[1].revision() == 2
    finally:
        for machine in machines:
            machine.close()


@pytest.mark.parametrize("ttl_ms", [0, -1, LEASE_TTL_MS_MAX + 1, 365 * 24 * 3600 * 1000, 1.5, True])
def test_bad_ttls_are_refused_when_encoding(ttl_ms: object) -> None:
    with pytest.raises(InvalidArgumentError, match="ttl"):
        encode_lease_grant(1, 1, ttl_ms)  # type: ignore[arg-type]


def test_bad_lease_ids_are_refused_when_encoding() -> None:
    with pytest.raises(InvalidArgumentError, match="lease id"):
        encode_lease_revoke(1, 1, 0)
    with pytest.raises(InvalidArgumentError, match="lease id"):
        encode_lease_grant(1, 1, 1000, lease_id=1 << 63)
    with pytest.raises(InvalidArgumentError):
        sm_less = encode_txn(1, 1, [], [txn_put(b"k", b"v", lease=-1)])
        del sm_less


def test_snapshot_carries_the_lease_tables(tmp_path: Path) -> None:
    with StateMachine(tmp_path / "a") as source, StateMachine(tmp_path / "b") as target:
        d = Driver(source)
        granted = d.grant(9000)
        assert isinstance(granted, LeaseGranted)
        d.put(b"k1", b"v", lease=granted.lease_id)
        d.put(b"k2", b"v", lease=granted.lease_id)
        source.snapshot(tmp_path / "snap")
        target.restore(tmp_path / "snap")
        assert target.digest() == source.digest()
        assert target.leases() == [(granted.lease_id, 9000)]
        assert target.lease_keys(granted.lease_id) == [b"k1", b"k2"]


def test_random_txns_and_leases_are_deterministic_whatever_the_batches(
    tmp_path: Path, seed: int
) -> None:
    """Txns (with leases), grants, revokes, puts and deletes under tight history bounds: three
    members that split the same log into different batches end with the same digest."""
    rng = random.Random(seed)
    entries = [Entry(1, 1, data=encode_register(1))]
    granted: list[int] = []
    for seq in range(1, 600):
        index = seq + 1
        key = b"k%02d" % rng.randrange(20)
        roll = rng.random()
        if roll < 0.1:
            data = encode_lease_grant(1, seq, rng.randrange(1, 10_000))
            granted.append(index)
        elif roll < 0.15 and granted:
            data = encode_lease_revoke(rng.choice((0, 1)), seq, rng.choice(granted))
        elif roll < 0.5:
            lease = rng.choice(granted) if granted and rng.random() < 0.5 else 0
            data = encode_txn(
                1,
                seq,
                [TxnCompare(key, "version", rng.choice(("<", ">", "==")), rng.randrange(3))],
                [txn_put(key, rng.randbytes(8), lease), txn_get(key)],
                [txn_delete(key), txn_delete_range(b"k1", b"k2")],
            )
        elif roll < 0.8:
            data = encode_put(1, seq, key, rng.randbytes(rng.randrange(30)))
        else:
            data = encode_delete(1, seq, key)
        entries.append(Entry(1, index, data=data))
    machines = [
        StateMachine(tmp_path / str(n), history_revisions_max=23, history_bytes_max=3000)
        for n in range(3)
    ]
    try:
        machines[0].apply(entries)
        for machine, sizes in zip(machines[1:], ((1,), (3, 17, 60)), strict=True):
            at = 0
            while at < len(entries):
                size = rng.choice(sizes)
                machine.apply(entries[at : at + size])
                at += size
        assert len({machine.digest() for machine in machines}) == 1
        assert len({machine.oldest_revision() for machine in machines}) == 1
        for lease_id, _ttl in machines[0].leases():
            for key in machines[0].lease_keys(lease_id):
                kv = machines[0].get_kv(key)
                assert kv is not None and kv[5] == lease_id
    finally:
        for machine in machines:
            machine.close()
