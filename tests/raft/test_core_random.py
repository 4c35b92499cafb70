"""Seeded random runs of a small cluster against Raft's safety properties (paper figure 3).

A compact cousin of the simulator in tests/sim: messages are reordered, duplicated and dropped,
links are cut, nodes crash (losing the Ready they had not finished persisting), logs are
compacted and snapshots sent, members are added, promoted and removed, leadership moves, reads
are asked. After every step the checks of figure 3 run; at the end the faults heal and the
cluster must converge. A failure names its seed; rerun it with KVSTORE_RAFT_RANDOM_SEEDS=<seed>.
"""

from __future__ import annotations

import os
import random

import pytest

from kvstore.consensus.config import Config
from kvstore.consensus.memory import MemoryLogView
from kvstore.consensus.types import (
    ConfChange,
    ConfChangeType,
    Entry,
    Message,
    MessageType,
    Ready,
    Role,
)
from kvstore.errors import InvalidArgumentError, ProposalDroppedError
from kvstore.raft.core import RaftCore

MT = MessageType


class _Node:
    def __init__(self, node_id: str, voters: tuple[str, ...], seed: float, options: dict) -> None:
        self.id = node_id
        self.storage = MemoryLogView()
        self.applied: list[tuple[int, int, bytes]] = []
        self.options = options
        self.pending: Ready | None = None
        self.core = RaftCore(Config(node_id, voters, **options), self.storage, random.Random(seed))

    def restart(self, voters: tuple[str, ...], seed: float) -> None:
        """Crash: the Ready not yet persisted is lost; the state machine keeps what it applied."""
        self.pending = None
        applied = self.applied[-1][0] if self.applied else 0
        fresh = self.storage.hard_state.term == 0 and self.storage.last_index() == 0
        bootstrap = voters if fresh and self.id in voters else ()
        config = Config(self.id, bootstrap, applied=applied, **self.options)
        self.core = RaftCore(config, self.storage, random.Random(seed))


class _Run:
    def __init__(self, seed: int, size: int) -> None:
        self.seed = seed
        self.rng = rng = random.Random(seed)
        self.options = {
            "pre_vote": rng.random() < 0.7,
            "check_quorum": rng.random() < 0.7,
            "election_ticks": rng.choice([5, 10]),
            "max_inflight_msgs": rng.choice([1, 4, 256]),
            "max_append_bytes": rng.choice([10, 1 << 20]),
        }
        self.initial = tuple("abcdefg"[:size])
        self.nodes = {n: _Node(n, self.initial, rng.random(), self.options) for n in self.initial}
        self.pool: list[Message] = []
        self.cut: set[tuple[str, str]] = set()
        self.committed: dict[int, tuple[int, bytes]] = {}
        self.leaders: dict[int, str] = {}
        self.reads: dict[bytes, int] = {}
        self.counter = 0
        self.next_node = size

    # --- the application's side ---------------------------------------------------------------

    def take_ready(self, node: _Node) -> None:
        if node.pending is None and node.core.has_ready():
            node.pending = node.core.ready()
            self.pool.extend(node.pending.messages)

    def finish_ready(self, node: _Node) -> None:
        rd = node.pending
        if rd is None:
            return
        node.pending = None
        if rd.snapshot is not None:
            node.storage.apply_snapshot(rd.snapshot)
            upto = rd.snapshot.index
            node.applied = [(i, *self.committed[i]) for i in range(1, upto + 1)]
        if rd.entries:
            node.storage.append(rd.entries)
        if rd.hard_state is not None:
            node.storage.set_hard_state(rd.hard_state)
        self.pool.extend(rd.persisted_messages)
        for entry in rd.committed_entries:
            self.apply(node, entry)
        for state in rd.read_states:
            floor = self.reads.pop(state.request_ctx, None)
            assert floor is None or state.index >= floor, "a read missed an acknowledged write"
        node.core.advance(rd)

    def apply(self, node: _Node, entry: Entry) -> None:
        last = node.applied[-1][0] if node.applied else 0
        assert entry.index == last + 1, f"{node.id} applies {entry.index} after {last}"
        seen = self.committed.setdefault(entry.index, (entry.term, entry.data))
        assert seen == (entry.term, entry.data), "state machine safety: two values at one index"
        node.applied.append((entry.index, entry.term, entry.data))

    def deliver(self, m: Message, *, lossy: bool) -> None:
        node = self.nodes.get(m.recipient)
        lost = (m.sender, m.recipient) in self.cut or (lossy and self.rng.random() < 0.05)
        if node is None or lost:
            if m.type == MT.SNAPSHOT:
                self.nodes[m.sender].core.report_snapshot(m.recipient, False)
            return
        if m.type == MT.SNAPSHOT:
            assert m.snapshot is not None
            if m.snapshot.index > len(self.committed):
                return  # cannot happen: the leader compacts only applied entries
            self.nodes[m.sender].core.report_snapshot(m.recipient, True)
        node.core.step(m)

    # --- checks (figure 3) ---------------------------------------------------------------------

    def check(self) -> None:
        for node in self.nodes.values():
            core = node.core
            if core.role != Role.LEADER:
                continue
            if self.leaders.setdefault(core.term, node.id) != node.id:
                raise AssertionError(f"election safety: two leaders in term {core.term}")
            # Leader completeness: every applied (hence committed) entry is in the leader's log.
            storage_first = node.storage.first_index()
            for index in range(
                max(storage_first, 1), min(len(self.committed), core.last_index) + 1
            ):
                if index <= node.storage.last_index():
                    assert node.storage.term(index) == self.committed[index][0], (
                        f"leader completeness: {node.id} lacks committed entry {index}"
                    )

    def check_log_matching(self) -> None:
        logs = []
        for node in self.nodes.values():
            s = node.storage
            logs.append({i: s.term(i) for i in range(s.first_index(), s.last_index() + 1)})
        for a in logs:
            for b in logs:
                common = sorted(set(a) & set(b))
                for k, index in enumerate(common):
                    if a[index] == b[index]:
                        assert all(a[i] == b[i] for i in common[:k]), "log matching violated"

    # --- faults and workload -------------------------------------------------------------------

    def leader(self) -> _Node | None:
        leaders = [n for n in self.nodes.values() if n.core.role == Role.LEADER]
        return max(leaders, key=lambda n: n.core.term) if leaders else None

    def step(self, k: int) -> None:
        rng = self.rng
        node = rng.choice(list(self.nodes.values()))
        r = rng.random()
        if r < 0.10:
            node.core.tick()
        elif r < 0.55:
            for _ in range(rng.randrange(1, 6)):
                if self.pool:
                    at = rng.randrange(len(self.pool)) if rng.random() < 0.3 else 0
                    m = self.pool[at] if rng.random() < 0.05 else self.pool.pop(at)
                    self.deliver(m, lossy=True)
        elif r < 0.70:
            self.take_ready(node)
        elif r < 0.85:
            self.finish_ready(node)
        elif r < 0.90:
            self.propose(node)
        elif r < 0.905:
            a, b = rng.sample(sorted(self.nodes), 2)
            if rng.random() < 0.5:
                self.cut |= {(a, b), (b, a)}
            else:
                self.cut.clear()
        elif r < 0.908:
            for m in self.pool:
                if m.type == MT.SNAPSHOT and m.recipient == node.id and m.sender != node.id:
                    self.nodes[m.sender].core.report_snapshot(m.recipient, False)
            self.pool = [m for m in self.pool if node.id not in (m.recipient, m.sender)]
            node.restart(self.initial, rng.random())
        elif r < 0.93:
            applied = node.core.applied_index
            if node.pending is None and applied > node.storage.first_index():
                node.storage.compact(applied)
        elif r < 0.94:
            ctx = b"read-%d" % k
            self.reads[ctx] = max(
                (n.applied[-1][0] if n.applied else 0) for n in self.nodes.values()
            )
            node.core.read_index(ctx, lease=rng.random() < 0.3)
        elif r < 0.945:
            self.change_membership()
        elif r < 0.95:
            leader = self.leader()
            if leader is not None:
                leader.core.transfer_leadership(rng.choice(leader.core.conf_state.voters))
        self.check()
        if k % 200 == 0:
            self.check_log_matching()

    def propose(self, node: _Node) -> None:
        target = self.leader() or node
        self.counter += 1
        try:
            target.core.propose_many([b"%d-%d-%d" % (self.seed, self.counter, j) for j in range(3)])
        except ProposalDroppedError:
            pass

    def change_membership(self) -> None:
        leader = self.leader()
        if leader is None:
            return
        conf = leader.core.conf_state
        choice = self.rng.random()
        try:
            if choice < 0.3 and len(self.nodes) < 7:
                node_id = "abcdefg"[self.next_node]
                self.next_node += 1
                self.nodes[node_id] = _Node(node_id, (), self.rng.random(), self.options)
                leader.core.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, node_id))
            elif choice < 0.6 and conf.learners:
                node_id = self.rng.choice(conf.learners)
                leader.core.propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, node_id))
            elif len(conf.voters) > 3:
                node_id = self.rng.choice(conf.voters)
                leader.core.propose_conf_change(ConfChange(ConfChangeType.REMOVE, node_id))
        except (ProposalDroppedError, InvalidArgumentError):
            pass

    def heal_and_converge(self) -> None:
        """Liveness: with every fault gone, a leader emerges and every member catches up."""
        self.cut.clear()
        for _ in range(300):
            for node in self.nodes.values():
                node.core.tick()
            while True:
                for node in self.nodes.values():
                    self.take_ready(node)
                    self.finish_ready(node)
                if not self.pool:
                    break
                pool, self.pool = self.pool, []
                for m in pool:
                    self.deliver(m, lossy=False)
            self.check()
            leader = self.leader()
            if leader is None:
                continue
            core = leader.core
            members = set(core.conf_state.voters) | set(core.conf_state.learners)
            if core.commit_index == core.last_index and all(
                self.nodes[m].core.applied_index == core.last_index for m in members
            ):
                self.check_log_matching()
                return
        raise AssertionError("the cluster did not converge after the faults healed")


SEEDS = [int(s) for s in os.environ.get("KVSTORE_RAFT_RANDOM_SEEDS", "").split(",") if s]


@pytest.mark.parametrize(
    ("seed", "size"), [(s, 3) for s in SEEDS or range(10)] + [(s, 5) for s in SEEDS or range(5)]
)
def test_random_faults_keep_raft_safe_and_live(seed: int, size: int) -> None:
    """Raft figure 3: election safety, log matching, leader completeness and state machine
    safety hold under message loss, reordering, duplication, partitions, crashes, compaction,
    membership changes and transfers; reads see every write acknowledged before them; and once
    the faults heal the cluster converges."""
    run = _Run(seed, size)
    try:
        for k in range(1500):
            run.step(k)
        run.heal_and_converge()
    except AssertionError as exc:
        raise AssertionError(f"seed {seed} (size {size}, {run.options}): {exc}") from exc
