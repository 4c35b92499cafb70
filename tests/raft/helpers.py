"""A tiny in-memory network of consensus cores for unit tests (etcd's raft_test.go `network`).

It carries either core (`consensus="raft"`, the default, or `"paxos"`): it uses only what both
share (the public interface in kvstore/consensus/core_base.py).

Each `Peer` stores its Readys in a `MemoryLogView` at once (as if every fsync were instant) and
applies committed entries to a list. `Network.send()` delivers messages breadth-first until
none are left, through filters that drop, cut, isolate or ignore.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from typing import Any

from kvstore.consensus import make_core
from kvstore.consensus.config import Config
from kvstore.consensus.core_base import CoreBase
from kvstore.consensus.memory import MemoryLogView
from kvstore.consensus.types import (
    ConfState,
    DroppedProposal,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    SnapshotMeta,
)


def new_config(node_id: str, voters: Iterable[str] = (), **options: Any) -> Config:
    """A Config with test-friendly defaults (pre-vote and check-quorum off unless asked)."""
    options.setdefault("election_ticks", 10)
    options.setdefault("heartbeat_ticks", 1)
    options.setdefault("pre_vote", False)
    options.setdefault("check_quorum", False)
    return Config(node_id=node_id, initial_voters=tuple(voters), **options)


def persist(storage: MemoryLogView, rd: Ready) -> None:
    """Do what the node does with a Ready's durable parts."""
    if rd.snapshot is not None:
        storage.apply_snapshot(rd.snapshot)
    if rd.entries:
        storage.append(rd.entries)
    if rd.hard_state is not None:
        storage.set_hard_state(rd.hard_state)


class Peer:
    """One member: its core, its storage, and what it applied, read and dropped."""

    def __init__(self, core: CoreBase, storage: MemoryLogView) -> None:
        self.core = core
        self.storage = storage
        self.applied: list[Entry] = []
        self.read_states: list[ReadState] = []
        self.dropped: list[DroppedProposal] = []
        self.snapshots: list[SnapshotMeta] = []

    @property
    def id(self) -> str:
        return self.core.node_id

    def handle(self, rd: Ready) -> None:
        """Persist, record and acknowledge one Ready (its messages are the caller's business)."""
        persist(self.storage, rd)
        if rd.snapshot is not None:
            self.snapshots.append(rd.snapshot)
        self.applied.extend(rd.committed_entries)
        self.read_states.extend(rd.read_states)
        self.dropped.extend(rd.dropped)
        self.core.advance(rd)

    def take_ready(self) -> Ready:
        """One Ready, handled (persisted, applied, advanced): the caller delivers its messages."""
        rd = self.core.ready()
        self.handle(rd)
        return rd

    def process_ready(self) -> list[Message]:
        """Run the Ready loop until the core has nothing left; return the messages to send."""
        out: list[Message] = []
        core = self.core
        while core.has_ready():
            rd = core.ready()
            out.extend(rd.messages)
            out.extend(rd.persisted_messages)
            self.handle(rd)
        return out

    def applied_data(self) -> list[bytes]:
        """The data of the NORMAL, non-empty entries applied so far."""
        return [e.data for e in self.applied if e.type == EntryType.NORMAL and e.data]


def new_peer(
    node_id: str,
    voters: Iterable[str] = (),
    *,
    storage: MemoryLogView | None = None,
    seed: int = 0,
    consensus: str = "raft",
    **options: Any,
) -> Peer:
    """A Peer running the `consensus` core over a fresh (or the given) MemoryLogView."""
    storage = storage if storage is not None else MemoryLogView()
    config = new_config(node_id, voters, **options)
    core = make_core(consensus, config, storage, random.Random(seed))
    assert isinstance(core, CoreBase)
    return Peer(core, storage)


def log_storage(
    voters: Iterable[str],
    terms: Iterable[int] = (),
    *,
    term: int | None = None,
    vote: str | None = None,
    commit: int = 0,
    learners: Iterable[str] = (),
) -> MemoryLogView:
    """A MemoryLogView holding one entry per item of `terms` (entry i+1 has term terms[i]),
    the configuration in its snapshot point, and a hard state (term defaults to the last one)."""
    terms = list(terms)
    entries = [Entry(t, i, EntryType.NORMAL, b"e%d" % i) for i, t in enumerate(terms, start=1)]
    if term is None:
        term = terms[-1] if terms else 1
    return MemoryLogView(
        snapshot=SnapshotMeta(0, 0, ConfState(tuple(sorted(voters)), tuple(sorted(learners)))),
        hard_state=HardState(term, vote, commit),
        entries=entries,
    )


def peer_with_log(
    node_id: str,
    voters: Iterable[str],
    terms: Iterable[int] = (),
    *,
    seed: int = 0,
    term: int | None = None,
    commit: int = 0,
    learners: Iterable[str] = (),
    **options: Any,
) -> Peer:
    """A restarted peer whose log holds entries of the given terms (see `log_storage`)."""
    storage = log_storage(voters, terms, term=term, commit=commit, learners=learners)
    return new_peer(node_id, (), storage=storage, seed=seed, **options)


def terms_of(peer: Peer) -> list[int]:
    """The terms of every entry in the peer's stable log, from its first index on."""
    s = peer.storage
    return [s.term(i) for i in range(s.first_index(), s.last_index() + 1)]


class Network:
    """Peers wired together through message filters. Deterministic given `seed`."""

    def __init__(
        self,
        ids: Iterable[str],
        *,
        seed: int = 0,
        learners: Iterable[str] = (),
        peers: dict[str, Peer] | None = None,
        consensus: str = "raft",
        **options: Any,
    ) -> None:
        self.rng = random.Random(seed)
        voters = tuple(ids)
        self.peers: dict[str, Peer] = {}
        for k, node in enumerate(voters):
            if peers is not None and node in peers:
                self.peers[node] = peers[node]
            else:
                self.peers[node] = new_peer(
                    node, voters, seed=seed * 1000 + k, consensus=consensus, **options
                )
        for node in learners:
            if peers is not None and node in peers:
                self.peers[node] = peers[node]
            else:
                self.peers[node] = new_peer(
                    node, (), seed=seed * 1000 + 999, consensus=consensus, **options
                )
        self.dropped_links: dict[tuple[str, str], float] = {}
        self.ignored: set[MessageType] = set()
        self.down: set[str] = set()
        self.sent: list[Message] = []
        """Every message handed to the network, delivered or not, in order."""
        self.delivered: list[Message] = []
        """Every message delivered, in order (for assertions on traffic)."""

    @classmethod
    def of(cls, *peers: Peer, seed: int = 0) -> Network:
        """A network of existing peers (built with `peer_with_log`, say)."""
        by_id = {p.id: p for p in peers}
        return cls(list(by_id), seed=seed, peers=by_id)

    def __getitem__(self, node: str) -> Peer:
        return self.peers[node]

    def core(self, node: str) -> Any:
        """The core of `node` (a RaftCore or a PaxosCore, as the network was built)."""
        return self.peers[node].core

    # --- faults ------------------------------------------------------------------------------

    def drop(self, frm: str, to: str, perc: float) -> None:
        """Drop messages from `frm` to `to` with probability `perc`."""
        self.dropped_links[(frm, to)] = perc

    def cut(self, a: str, b: str) -> None:
        """Drop every message between `a` and `b`, both ways."""
        self.drop(a, b, 1.0)
        self.drop(b, a, 1.0)

    def isolate(self, node: str) -> None:
        """Cut `node` off from everybody."""
        for other in self.peers:
            if other != node:
                self.cut(node, other)

    def ignore(self, kind: MessageType) -> None:
        """Drop every message of type `kind`."""
        self.ignored.add(kind)

    def recover(self) -> None:
        """Remove every filter."""
        self.dropped_links.clear()
        self.ignored.clear()

    def passes(self, m: Message) -> bool:
        if m.type in self.ignored or m.recipient in self.down or m.sender in self.down:
            return False
        perc = self.dropped_links.get((m.sender, m.recipient), 0.0)
        return not (perc and self.rng.random() < perc)

    # --- delivery ----------------------------------------------------------------------------

    def send(self, *msgs: Message, budget: int | None = None) -> None:
        """Deliver `msgs` and everything they cause, until the network is quiet (or `budget`
        messages were handled: the rest are dropped)."""
        queue = deque(msgs)
        while queue:
            if budget is not None:
                if budget <= 0:
                    return
                budget -= 1
            m = queue.popleft()
            self.sent.append(m)
            if not self.passes(m):
                continue
            peer = self.peers.get(m.recipient)
            if peer is None:
                continue
            self.delivered.append(m)
            peer.core.step(m)
            queue.extend(peer.process_ready())

    def collect(self) -> list[Message]:
        """Run every live peer's Ready loop; return their messages."""
        out: list[Message] = []
        for node, peer in self.peers.items():
            if node not in self.down:
                out.extend(peer.process_ready())
        return out

    def stabilize(self, budget: int | None = None) -> None:
        """Deliver until no peer has anything left to say (or `budget` messages were handled)."""
        while True:
            msgs = self.collect()
            if not msgs or (budget is not None and budget <= 0):
                return
            before = len(self.sent)
            self.send(*msgs, budget=budget)
            if budget is not None:
                budget -= len(self.sent) - before

    def tick(self, node: str, n: int = 1) -> None:
        """Tick one peer `n` times, delivering what each tick causes."""
        for _ in range(n):
            self.peers[node].core.tick()
            self.stabilize()

    def tick_all(self, n: int = 1) -> None:
        """Tick every live peer `n` times, delivering after each round."""
        for _ in range(n):
            for node, peer in self.peers.items():
                if node not in self.down:
                    peer.core.tick()
            self.stabilize()

    def elect(self, node: str) -> None:
        """Make `node` campaign and deliver everything."""
        self.peers[node].core.campaign()
        self.stabilize()

    def leader(self) -> str | None:
        """The one live peer in the leader role with the highest term, if any."""
        leaders = [
            (p.core.term, node)
            for node, p in self.peers.items()
            if p.core.role == Role.LEADER and node not in self.down
        ]
        return max(leaders)[1] if leaders else None

    def propose(self, node: str, *datas: bytes) -> int:
        """Propose at `node` and deliver everything; returns the index (0 when forwarded)."""
        index = self.peers[node].core.propose_many(datas)
        self.stabilize()
        return index
