"""Helpers for the Paxos core's unit tests, over the Raft tests' in-memory network.

`tests/raft/helpers.py` has a `Peer` (a core over a `MemoryLogView`, every Ready persisted at
once) and a `Network` (breadth-first delivery with drop / cut / isolate filters) that carry
either core; this module builds them with `PaxosCore`s.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kvstore.consensus.memory import MemoryLogView
from kvstore.consensus.types import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Ready,
    Role,
    SnapshotMeta,
)
from tests.raft.helpers import Network, Peer, new_config, new_peer

VOTERS3 = ("a", "b", "c")

paxos_config = new_config
"""A Config with test-friendly defaults: the same as the Raft tests use."""


def paxos_peer(node_id: str, voters: Iterable[str] = (), **kwargs: Any) -> Peer:
    """A Peer running a `PaxosCore` (see `new_peer` for the arguments)."""
    return new_peer(node_id, voters, consensus="paxos", **kwargs)


def paxos_network(ids: Iterable[str] = VOTERS3, *, seed: int = 0, **options: Any) -> Network:
    """A network of fresh Paxos members bootstrapped with `ids` as the configuration."""
    return Network(ids, seed=seed, consensus="paxos", **options)


def restart(net: Network, node: str, *, seed: int = 99, **options: Any) -> Peer:
    """Rebuild `node`'s core from its storage (a crash after everything was persisted)."""
    old = net.peers[node]
    peer = paxos_peer(node, (), storage=old.storage, seed=seed, **options)
    peer.applied = list(old.applied)
    net.peers[node] = peer
    return peer


def acceptor_storage(
    voters: Iterable[str],
    entries: Iterable[tuple[int, bytes]],
    *,
    promised: int,
    vote: str | None = None,
    commit: int = 0,
) -> MemoryLogView:
    """A MemoryLogView whose slots 1.. hold the given (ballot, value) pairs."""
    ents = [Entry(b, i, EntryType.NORMAL, d) for i, (b, d) in enumerate(entries, start=1)]
    return MemoryLogView(
        snapshot=SnapshotMeta(0, 0, ConfState(tuple(sorted(voters)), ())),
        hard_state=HardState(promised, vote, commit),
        entries=ents,
    )


def values(peer: Peer) -> list[bytes]:
    """The data of every entry in the peer's stable log, from its first index on."""
    s = peer.storage
    if s.last_index() < s.first_index():
        return []
    return [e.data for e in s.entries(s.first_index(), s.last_index() + 1)]


def of_type(msgs: Iterable[Message], kind: MessageType) -> list[Message]:
    """The messages of type `kind`."""
    return [m for m in msgs if m.type == kind]


def leader_of(net: Network) -> str:
    """The one live leader (asserts there is exactly one at the highest ballot)."""
    leaders = [n for n, p in net.peers.items() if p.core.role == Role.LEADER and n not in net.down]
    assert leaders, "no leader"
    return max(leaders, key=lambda n: net.peers[n].core.term)


def drain(peer: Peer) -> list[Ready]:
    """Take (and handle) every Ready the peer has; return them (messages undelivered)."""
    out: list[Ready] = []
    while peer.core.has_ready():
        out.append(peer.take_ready())
    return out
