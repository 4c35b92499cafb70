"""`SimCluster`: a deterministic simulation of a cluster around a real consensus core.

The core is `RaftCore` or `PaxosCore`, built by `make_core(SimOptions.consensus, ...)`: both take
the same inputs and hand out the same `Ready` batches, so everything below runs either one
unchanged; only the safety checker depends on the protocol (checkers.py, `make_checker`).

Everything random comes from one `random.Random(seed)`: each core's election-jitter rng is
derived from it, and so is every network fault, fsync delay, crash and client action. Nothing
here sleeps, reads a clock, or uses threads or asyncio: time is a step counter, so a run
replays exactly from its seed (`KVSTORE_SIM_SEED=N`).

Each step delivers the messages that are due, ticks the nodes whose tick falls on this step,
and runs every node's Ready loop the way `kvstore/node.py` does: send `messages`, write
`entries` and `hard_state` (unsynced), and later -- in the same step or a few steps on, which
models an fsync running while the core keeps taking messages -- sync, send
`persisted_messages`, restore a snapshot, apply `committed_entries`, serve reads, `advance()`.

A crash loses whatever was not synced (storage.py) and everything in flight to or from the
node; a restart rebuilds the core from durable storage with `Config.applied` set to the state
machine's last checkpoint, whose state is the starting point the core replays entries onto.
A crash may also keep part of the first lost append, as far as the redo log allows: a prefix of
its entries without its hard state, but never part of an append that overwrites older entries
(native/FORMAT.md §4): a Paxos acceptor relies on that never to lose an accepted value.

The state machine is a small key-value map of put-style commands `key=proposal-id`, so a lost,
replaced or reordered write shows up. Checkers (checkers.py) run after every step.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kvstore.consensus import ConsensusCore, make_core
from kvstore.consensus.config import Config
from kvstore.consensus.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    SnapshotMeta,
)
from kvstore.errors import KVStoreError, ProposalDroppedError
from tests.sim.checkers import SafetyViolation, SimFailure, make_checker
from tests.sim.network import NetworkOptions, SimNetwork
from tests.sim.storage import SimStorage

KEYS = tuple(b"k%d" % i for i in range(6))
"""Few keys, so reads and writes of the same key overlap often."""


def encode_put(key: bytes, proposal_id: bytes) -> bytes:
    """The command that writes `proposal_id` under `key`."""
    return key + b"=" + proposal_id


def decode_put(data: bytes) -> tuple[bytes, bytes] | None:
    """`(key, proposal_id)` of a put command, None for anything else (e.g. a no-op)."""
    key, sep, pid = data.partition(b"=")
    return (key, pid) if sep else None


def apply_conf_change(conf: ConfState, change: ConfChange) -> ConfState:
    """The configuration after `change` (single-server change, etcd semantics)."""
    voters = set(conf.voters)
    learners = set(conf.learners)
    node = change.node_id
    if change.type == ConfChangeType.ADD_VOTER:
        voters.add(node)
        learners.discard(node)
    elif change.type == ConfChangeType.ADD_LEARNER:
        voters.discard(node)  # demotes a voter
        learners.add(node)
    else:
        voters.discard(node)
        learners.discard(node)
    return ConfState(tuple(sorted(voters)), tuple(sorted(learners)))


@dataclass(slots=True)
class KvState:
    """The state machine: applied index, hash chain over what was applied, data, config."""

    applied: int
    chain: int
    data: dict[bytes, tuple[int, bytes]]
    """key -> (index of the write, proposal id)."""
    conf: ConfState
    term: int = 0
    """Term of the entry at `applied` (for snapshot metadata)."""

    def copy(self) -> KvState:
        """An independent copy (the values are immutable)."""
        return KvState(self.applied, self.chain, dict(self.data), self.conf, self.term)


@dataclass(slots=True)
class SimOptions:
    """Shape of the simulated cluster and of the application around each core."""

    consensus: str = "raft"
    """The protocol of every core: "raft" or "paxos" (`kvstore.consensus.CONSENSUS_KINDS`)."""
    n_nodes: int = 3
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    steps_per_tick: int = 2
    """Simulator steps per tick: messages may arrive within a tick."""
    tick_skip_probability: float = 0.0
    """Chance that a node misses a tick (clock drift). Keep 0 when testing lease reads."""
    network: NetworkOptions = field(default_factory=NetworkOptions)
    sync_now_probability: float = 0.5
    """Chance that a Ready's fsync completes in the step it was started."""
    sync_delay_steps_max: int = 4
    """Otherwise the fsync completes 1 to this many steps later."""
    crash_keeps_unsynced_prefix: bool = True
    """A crash keeps a random prefix of the unsynced writes (else it loses all of them)."""
    crash_tears_appends: bool = True
    """With `crash_keeps_unsynced_prefix`: the write after that prefix may survive in part,
    as far as the redo log allows (storage.py)."""
    checkpoint_entries: int = 0
    """Applied entries between state machine checkpoints, each followed by log compaction
    through the checkpoint (0: never checkpoint or compact)."""
    fresh_snapshot_probability: float = 0.5
    """Chance that a leader sends a snapshot of its current state instead of the one the core
    named (allowed: index >= the core's and <= its commit)."""
    report_unreachable_probability: float = 0.5
    """Chance that a message lost to a partition or crash is reported to the sender's core."""
    max_inflight_msgs: int = 256
    max_append_bytes: int = 1 << 20
    max_committed_bytes_per_ready: int = 16 << 20
    forward_proposals: bool = True
    trace_max: int = 300
    """Events kept for the failure report."""
    trace_messages: bool = True
    """Record every message delivery in the trace (costs time)."""


@dataclass(slots=True)
class SnapshotBlob:
    """What the application streams to a lagging follower: the state at `meta.index`."""

    meta: SnapshotMeta
    state: KvState


class SimNode:
    """One member: its core, storage model, state machine and the application's bookkeeping."""

    def __init__(self, node_id: str, bootstrap: tuple[str, ...], base_conf: ConfState) -> None:
        self.id = node_id
        self.bootstrap = bootstrap
        """`Config.initial_voters` (empty for a node that joins later)."""
        self.storage = SimStorage()
        self.alive = False
        self.incarnation = 0
        self.core: ConsensusCore = None  # type: ignore[assignment]  # set by start()
        self.sm = KvState(0, 0, {}, base_conf)
        self.checkpoint = self.sm.copy()
        """Durable state machine image (what a restart starts from)."""
        self.snap_blob: SnapshotBlob | None = None
        """The blob matching `storage.snapshot_meta()` (what the core asks us to send)."""
        self.snapshot_files: dict[int, SnapshotBlob] = {}
        """Received snapshots, durable (DATA_DIR/snapshots/), by index."""
        self.pending_ready: Ready | None = None
        self.sync_due_step = 0
        self.waiting_reads: list[ReadState] = []
        self.read_keys: dict[bytes, bytes] = {}
        """ctx -> key of the reads asked on this node."""
        self.proposals: dict[bytes, bytes] = {}
        """proposal id -> key, proposed here and not yet applied here."""
        self.tick_phase = 0
        self.role: Role = Role.FOLLOWER
        self.term = 0


class SimCluster:
    """A seeded, deterministic cluster of consensus cores. See the module docstring."""

    def __init__(
        self,
        seed: int,
        n_nodes: int | None = None,
        options: SimOptions | None = None,
        *,
        check: bool = True,
        consensus: str | None = None,
    ) -> None:
        """`n_nodes` and `consensus`, when given, override those fields of `options`."""
        self.seed = seed
        self.rng = random.Random(seed)
        opts = options if options is not None else SimOptions()
        if n_nodes is not None:
            opts = replace(opts, n_nodes=n_nodes)
        if consensus is not None:
            opts = replace(opts, consensus=consensus)
        self.options = opts
        self.net = SimNetwork(self.rng, opts.network)
        self.check_enabled = check
        self.checker = make_checker(opts.consensus)
        self.now = 0
        self.trace: deque[tuple[int, str, tuple[Any, ...]]] = deque(maxlen=opts.trace_max)
        ids = tuple(f"n{i}" for i in range(1, opts.n_nodes + 1))
        self.base_conf = ConfState(ids, ())
        self.nodes: dict[str, SimNode] = {}
        self._next_id = opts.n_nodes + 1
        self._proposal_seq = 0
        self._read_seq = 0
        self.removed: set[str] = set()
        """Nodes whose removal was committed (ids are never reused)."""
        for nid in ids:
            node = SimNode(nid, ids, self.base_conf)
            node.tick_phase = self.rng.randrange(opts.steps_per_tick)
            self.nodes[nid] = node
            self._start(node)
        self.stats: dict[str, int] = {
            "proposed": 0,
            "acked": 0,
            "reads": 0,
            "crashes": 0,
            "snapshots_sent": 0,
            "snapshots_installed": 0,
            "conf_changes": 0,
            "dropped_proposals": 0,
            "torn_appends": 0,
        }

    # --- trace ----------------------------------------------------------------------------------

    def log(self, fmt: str, *args: Any) -> None:
        """Record a trace event (formatted only when a failure is reported)."""
        self.trace.append((self.now, fmt, args))

    def trace_tail(self, n: int = 60) -> str:
        """The last `n` trace events, one per line."""
        lines = [f"[{step:6d}] " + (fmt % args) for step, fmt, args in list(self.trace)[-n:]]
        return "\n".join(lines)

    def fail(self, why: str) -> SimFailure:
        """A `SimFailure` carrying the seed and the trace tail."""
        kind = self.options.consensus
        err = SimFailure(
            f"{why}\nconsensus={kind} seed={self.seed} step={self.now} "
            f"(replay: KVSTORE_SIM_SEED={self.seed} KVSTORE_SIM_CONSENSUS={kind})\n"
            f"--- trace tail ---\n{self.trace_tail()}"
        )
        err.cluster = self
        return err

    # --- lifecycle ------------------------------------------------------------------------------

    def _config(self, node: SimNode) -> Config:
        o = self.options
        return Config(
            node_id=node.id,
            initial_voters=node.bootstrap,
            election_ticks=o.election_ticks,
            heartbeat_ticks=o.heartbeat_ticks,
            pre_vote=o.pre_vote,
            check_quorum=o.check_quorum,
            max_inflight_msgs=o.max_inflight_msgs,
            max_append_bytes=o.max_append_bytes,
            max_committed_bytes_per_ready=o.max_committed_bytes_per_ready,
            forward_proposals=o.forward_proposals,
            applied=node.checkpoint.applied,
        )

    def _start(self, node: SimNode) -> None:
        # A snapshot whose install reached the disk but whose restore did not finish: the
        # received file is there, so the restart restores from it (as the real node would).
        snap = node.storage.snapshot_meta()
        if snap.index > node.checkpoint.applied:
            blob = node.snapshot_files.get(snap.index)
            if blob is None:
                raise self.fail(f"{node.id}: durable snapshot {snap.index} has no data file")
            node.checkpoint = blob.state.copy()
            node.snap_blob = blob
        node.sm = node.checkpoint.copy()
        node.incarnation += 1
        node.alive = True
        node.pending_ready = None
        node.waiting_reads = []
        node.role = Role.FOLLOWER
        node.term = node.storage.hard_state.term
        core_rng = random.Random(self.rng.getrandbits(64))
        node.core = make_core(self.options.consensus, self._config(node), node.storage, core_rng)
        self.net.set_down(node.id, False)
        self.log("%s start (incarnation %d, applied %d, log [%d, %d])", node.id,
                 node.incarnation, node.checkpoint.applied, node.storage.first_index(),
                 node.storage.last_index())  # fmt: skip

    def crash(self, node_id: str) -> None:
        """Crash `node_id`: lose unsynced writes and everything in flight to and from it."""
        node = self.nodes[node_id]
        if not node.alive:
            return
        node.alive = False
        torn_before = node.storage.torn_appends
        kept = node.storage.crash(
            self.rng if self.options.crash_keeps_unsynced_prefix else None,
            tear=self.options.crash_tears_appends,
        )
        torn = node.storage.torn_appends - torn_before
        self.stats["torn_appends"] += torn
        # A snapshot stream cut by the crash fails at its sender, whose application reports
        # it to the core (the real node does the same when the stream breaks).
        for msg, payload in self.net.set_down(node_id, True):
            if msg.recipient == node_id and msg.type == MessageType.SNAPSHOT:
                self._lost(msg, payload)
        for ctx in node.read_keys:
            self.checker.forget_read(ctx)
        node.read_keys.clear()
        node.proposals.clear()
        node.waiting_reads = []
        node.pending_ready = None
        self.checker.forget_leader(node_id)
        # Keep only the received snapshot files a restart may still need.
        snap_index = node.storage.snapshot_meta().index
        node.snapshot_files = {i: b for i, b in node.snapshot_files.items() if i >= snap_index}
        if node.snap_blob is not None and node.snap_blob.meta.index != snap_index:
            node.snap_blob = node.snapshot_files.get(snap_index)
        self.stats["crashes"] += 1
        self.log("%s CRASH (kept %d unsynced writes%s)", node_id, kept,
                 " and part of the next" if torn else "")  # fmt: skip

    def restart(self, node_id: str) -> None:
        """Restart a crashed node from its durable storage and checkpoint."""
        node = self.nodes[node_id]
        if not node.alive:
            self._start(node)

    def add_node(self) -> str:
        """Create (and start) a fresh node that waits to be contacted; return its id."""
        nid = f"n{self._next_id}"
        self._next_id += 1
        node = SimNode(nid, (), self.base_conf)
        node.tick_phase = self.rng.randrange(self.options.steps_per_tick)
        self.nodes[nid] = node
        self._start(node)
        return nid

    # --- client actions -------------------------------------------------------------------------

    def new_proposal(self, node_id: str, key: bytes | None = None) -> tuple[bytes, bytes]:
        """A fresh `(proposal_id, data)` for a write proposed at `node_id`."""
        self._proposal_seq += 1
        pid = b"%s-%d" % (node_id.encode(), self._proposal_seq)
        k = key if key is not None else self.rng.choice(KEYS)
        return pid, encode_put(k, pid)

    def propose(self, node_id: str, count: int = 1) -> list[bytes]:
        """Propose `count` writes at `node_id` (one batch when > 1); return the accepted ids."""
        node = self.nodes[node_id]
        if not node.alive:
            return []
        items = [self.new_proposal(node_id) for _ in range(count)]
        try:
            if count == 1:
                index = node.core.propose(items[0][1])
            else:
                index = node.core.propose_many([d for _, d in items])
        except ProposalDroppedError as e:
            self.stats["dropped_proposals"] += 1
            self.log("%s propose x%d dropped: %s", node_id, count, e.reason)
            return []
        for pid, data in items:
            key = data.partition(b"=")[0]
            node.proposals[pid] = key
        self.stats["proposed"] += count
        self.log("%s propose x%d -> index %d (%s..)", node_id, count, index, items[0][0])
        return [pid for pid, _ in items]

    def read(self, node_id: str, key: bytes | None = None, *, lease: bool = False) -> bytes | None:
        """Ask `node_id` for a linearizable read of `key`; return its request id if taken."""
        node = self.nodes[node_id]
        if not node.alive:
            return None
        self._read_seq += 1
        ctx = b"r%d" % self._read_seq
        k = key if key is not None else self.rng.choice(KEYS)
        self.checker.on_read_request(ctx, k)
        try:
            node.core.read_index(ctx, lease=lease)
        except KVStoreError as e:
            self.checker.forget_read(ctx)
            self.log("%s read %s refused: %s", node_id, ctx, e)
            return None
        node.read_keys[ctx] = k
        self.stats["reads"] += 1
        self.log("%s read_index %s key %s", node_id, ctx, k)
        return ctx

    def propose_conf_change(self, node_id: str, change: ConfChange) -> bool:
        """Propose a membership change at `node_id`; False if the core refused it."""
        node = self.nodes[node_id]
        if not node.alive:
            return False
        try:
            node.core.propose_conf_change(change)
        except ProposalDroppedError as e:
            self.log("%s conf change %s refused: %s", node_id, change, e.reason)
            return False
        self.stats["conf_changes"] += 1
        self.log("%s propose conf change %s %s", node_id, change.type.name, change.node_id)
        return True

    # --- the step -------------------------------------------------------------------------------

    def step(self) -> None:
        """Advance one step: deliver due messages, tick, run Ready loops, check safety.

        Raises `SimFailure` (with the seed and a trace tail) on a broken property or when a
        core raises: a core never raises for what the network or the application may do.
        """
        try:
            self._step()
        except SimFailure:
            raise
        except SafetyViolation as e:
            raise self.fail(str(e)) from None
        except Exception as e:
            raise self.fail(f"unexpected {type(e).__name__}: {e}") from e

    def _step(self) -> None:
        self.now += 1
        self._deliver()
        spt = self.options.steps_per_tick
        skip_p = self.options.tick_skip_probability
        for node in self.nodes.values():
            if not node.alive or (self.now + node.tick_phase) % spt:
                continue
            if skip_p > 0 and self.rng.random() < skip_p:
                continue
            node.core.tick()
        for node in self.nodes.values():
            if node.alive:
                self._run_ready(node)
        if self.check_enabled:
            self._check()

    def run(self, steps: int, until: Callable[[], bool] | None = None) -> bool:
        """Run up to `steps` steps, stopping early once `until()` holds; return whether it did."""
        for _ in range(steps):
            if until is not None and until():
                return True
            self.step()
        return until() if until is not None else True

    def _deliver(self) -> None:
        for msg, payload, ok in self.net.deliverable(self.now):
            if not ok:
                self._lost(msg, payload)
                continue
            node = self.nodes.get(msg.recipient)
            if node is None or not node.alive:
                self._lost(msg, payload)
                continue
            if self.options.trace_messages:
                self.log("deliver %s", _fmt_msg(msg))
            if msg.type == MessageType.SNAPSHOT:
                incarnation, blob = payload
                node.snapshot_files[blob.meta.index] = blob
            node.core.step(msg)
            if msg.type == MessageType.SNAPSHOT:
                # The stream finished: the sender's application reports it to its core.
                sender = self.nodes[msg.sender]
                if sender.alive and sender.incarnation == incarnation:
                    sender.core.report_snapshot(msg.recipient, True)

    def _lost(self, msg: Message, payload: Any) -> None:
        sender = self.nodes.get(msg.sender)
        if sender is None or not sender.alive:
            return
        if msg.type == MessageType.SNAPSHOT:
            incarnation, _ = payload
            if sender.incarnation == incarnation:
                sender.core.report_snapshot(msg.recipient, False)
                self.log("%s snapshot to %s failed", msg.sender, msg.recipient)
        elif self.rng.random() < self.options.report_unreachable_probability:
            sender.core.report_unreachable(msg.recipient)

    def _send(self, node: SimNode, msgs: Sequence[Message]) -> None:
        for m in msgs:
            if m.type == MessageType.SNAPSHOT:
                m = self._attach_snapshot(node, m)
                payload = (node.incarnation, self._blob_for(node, m))
                if not self.net.send(self.now, m, payload):
                    self._lost(m, payload)  # the stream failed: the application reports it
            elif not self.net.send(self.now, m) and self.net.partitioned:
                self._lost(m, None)

    def _blob_for(self, node: SimNode, m: Message) -> SnapshotBlob:
        assert m.snapshot is not None
        if node.snap_blob is not None and node.snap_blob.meta == m.snapshot:
            return node.snap_blob
        if node.sm.applied == m.snapshot.index:
            return SnapshotBlob(m.snapshot, node.sm.copy())
        raise self.fail(f"{node.id}: no snapshot data for {m.snapshot}")

    def _attach_snapshot(self, node: SimNode, m: Message) -> Message:
        """The application picks what to stream: the core's snapshot, or a fresher one."""
        meta = m.snapshot
        if meta is None:
            raise self.fail(f"{node.id} sent a SNAPSHOT message without metadata")
        expected = node.storage.snapshot_meta()
        if meta != expected:
            raise self.fail(f"{node.id} sent snapshot {meta}, its log's snapshot is {expected}")
        self.stats["snapshots_sent"] += 1
        sm = node.sm
        if sm.applied > meta.index and self.rng.random() < self.options.fresh_snapshot_probability:
            fresh = SnapshotMeta(sm.applied, sm.term, sm.conf)
            self.log("%s sends a fresher snapshot %d (core named %d)", node.id, sm.applied,
                     meta.index)  # fmt: skip
            return m._replace(snapshot=fresh)
        return m

    # --- the Ready loop -------------------------------------------------------------------------

    def _run_ready(self, node: SimNode) -> None:
        for _ in range(8):  # bounded: a Ready loop that never settles is a bug we want to see
            if node.pending_ready is not None:
                if self.now < node.sync_due_step:
                    return
                self._finish_ready(node)
                continue
            if not node.core.has_ready():
                return
            rd = node.core.ready()
            self._start_ready(node, rd)
            o = self.options
            if self.rng.random() < o.sync_now_probability:
                node.sync_due_step = self.now
            else:
                node.sync_due_step = self.now + self.rng.randint(1, o.sync_delay_steps_max)

    def _start_ready(self, node: SimNode, rd: Ready) -> None:
        if rd.soft_state is not None:
            self.log("%s soft state %s leader=%s", node.id, rd.soft_state.role.value,
                     rd.soft_state.leader_id)  # fmt: skip
        storage = node.storage
        old_hs = storage.hard_state
        hs = rd.hard_state
        needs_sync = bool(rd.entries) or rd.snapshot is not None
        if hs is not None and (hs.term != old_hs.term or hs.vote != old_hs.vote):
            needs_sync = True
        if needs_sync and not rd.must_sync:
            raise self.fail(f"{node.id}: Ready with entries/snapshot/term/vote but must_sync=False")
        if hs is not None and (
            hs.term < old_hs.term
            or (hs.term == old_hs.term and old_hs.vote is not None and hs.vote != old_hs.vote)
            or hs.commit < old_hs.commit
        ):
            # Figure 2: terms only grow, one vote per term, and commit never goes back.
            raise self.fail(f"{node.id}: hard state went back from {old_hs} to {hs}")
        # Send now: nothing here waits for our own disk (thesis §10.2.1).
        self._send(node, rd.messages)
        if rd.snapshot is not None:
            if rd.snapshot.index not in node.snapshot_files:
                raise self.fail(f"{node.id}: Ready.snapshot {rd.snapshot} was never received")
            storage.install_snapshot(rd.snapshot)
            self.log("%s install snapshot %d/%d", node.id, rd.snapshot.index, rd.snapshot.term)
        if rd.entries or hs is not None:
            storage.append(list(rd.entries), hs)
        if rd.entries:
            ents = list(rd.entries)
            first = ents[0].index
            if self.check_enabled:
                self.checker.on_entries_written(node.id, ents, storage.term_or_none(first - 1))
            self.log("%s append [%d..%d] terms %d..%d", node.id, first, ents[-1].index,
                     ents[0].term, ents[-1].term)  # fmt: skip
        if hs is not None:
            if hs.term != old_hs.term or hs.vote != old_hs.vote:
                self.log("%s hard state term=%d vote=%s commit=%d", node.id, hs.term, hs.vote,
                         hs.commit)  # fmt: skip
            if self.check_enabled and hs.commit > old_hs.commit:
                self._record_commit(node, hs.term, old_hs.commit, hs.commit)
        node.pending_ready = rd

    def _record_commit(self, node: SimNode, term: int, old: int, new: int) -> None:
        storage = node.storage
        lo = max(old + 1, storage.first_index())
        hi = min(new, storage.last_index())
        if new > storage.last_index():
            raise self.fail(
                f"{node.id}: commit {new} beyond its last written index {storage.last_index()}"
            )
        term_of: dict[int, int] = {}
        for i in range(lo, hi + 1):
            t = storage.term_or_none(i)
            assert t is not None
            term_of[i] = t
        self.checker.on_commit(node.id, term, term_of)
        # Leaders already found complete must hold what was committed in an earlier term.
        for other in self.nodes.values():
            if other.alive and other.role == Role.LEADER:
                lt = other.term
                if lt > term and self.checker.leader_checked(other.id, lt):
                    held = {i: other.storage.term_or_none(i) for i in term_of
                            if i >= other.storage.first_index()}  # fmt: skip
                    self.checker.check_leader_log(other.id, lt, held)

    def _finish_ready(self, node: SimNode) -> None:
        rd = node.pending_ready
        assert rd is not None
        node.pending_ready = None
        if rd.must_sync:
            node.storage.sync()
        self._send(node, rd.persisted_messages)
        if rd.snapshot is not None:
            blob = node.snapshot_files[rd.snapshot.index]
            if self.check_enabled:
                self.checker.on_snapshot_restored(node.id, rd.snapshot.index, blob.state.chain)
            node.sm = blob.state.copy()
            # The restore is durable with the snapshot file: it is the new checkpoint.
            node.checkpoint = blob.state.copy()
            node.snap_blob = blob
            node.snapshot_files = {
                i: b for i, b in node.snapshot_files.items() if i >= blob.meta.index
            }
            self.stats["snapshots_installed"] += 1
        self._apply(node, rd.committed_entries)
        if rd.read_states:
            node.waiting_reads.extend(rd.read_states)
        if node.waiting_reads:
            self._serve_reads(node)
        for d in rd.dropped:
            if d.context in node.read_keys:
                del node.read_keys[d.context]
                self.checker.forget_read(d.context)
            self.log("%s dropped %r: %s", node.id, d.context, d.reason)
        node.core.advance(rd)
        self._maybe_checkpoint(node)

    def _apply(self, node: SimNode, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        sm = node.sm
        check = self.check_enabled
        if check:
            # What is applied must be on this node's disk: a crash right after applying must
            # not leave the state machine ahead of the durable log.
            durable = node.storage.durable
            last = entries[-1]
            if durable.term_at(last.index) != last.term and last.index > durable.snap.index:
                raise self.fail(
                    f"{node.id}: committed entry {last.index}/{last.term} applied before it was "
                    f"durable (durable log ends at {durable.last_index()})"
                )
        applied = sm.applied
        data = sm.data
        proposals = node.proposals
        conf_change = EntryType.CONF_CHANGE
        for e in entries:
            index = e.index
            if index != applied + 1:
                raise self.fail(
                    f"{node.id}: committed entry {index} handed out after applied {applied}"
                )
            applied = index
            if check:
                sm.chain = self.checker.on_apply(node.id, e, sm.chain)
            if e.type == conf_change:
                change = ConfChange.decode(e.data)
                if change.type == ConfChangeType.REMOVE:
                    self.removed.add(change.node_id)
                sm.conf = apply_conf_change(sm.conf, change)
                self.log("%s applied conf change at %d -> %s", node.id, index, sm.conf)
                continue
            key, sep, pid = e.data.partition(b"=")  # decode_put, inlined: the hot path
            if not sep:
                continue
            data[key] = (index, pid)
            if pid in proposals:
                del proposals[pid]
                self.stats["acked"] += 1
                if check:
                    self.checker.on_ack(pid, key, index, e.data)
        sm.applied = applied
        sm.term = entries[-1].term

    def _serve_reads(self, node: SimNode) -> None:
        keep: list[ReadState] = []
        for rs in node.waiting_reads:
            if rs.index > node.sm.applied:
                keep.append(rs)
                continue
            key = node.read_keys.pop(rs.request_ctx, None)
            if key is None:
                continue  # not ours (or answered twice: the first answer counted)
            observed = node.sm.data.get(key, (0, b""))[0]
            if self.check_enabled:
                self.checker.on_read_answer(node.id, rs.request_ctx, observed)
            self.log("%s read %s at index %d -> write %d", node.id, rs.request_ctx, rs.index,
                     observed)  # fmt: skip
        node.waiting_reads = keep

    def _maybe_checkpoint(self, node: SimNode) -> None:
        every = self.options.checkpoint_entries
        if every <= 0 or node.sm.applied - node.checkpoint.applied < every:
            return
        node.storage.sync()
        node.checkpoint = node.sm.copy()
        idx = node.checkpoint.applied
        if idx > node.storage.snapshot_meta().index:
            node.storage.compact_through(idx, node.checkpoint.conf)
            node.snap_blob = SnapshotBlob(node.storage.snapshot_meta(), node.checkpoint.copy())
            self.log("%s checkpoint + compact through %d", node.id, idx)

    # --- checking -------------------------------------------------------------------------------

    def _check(self) -> None:
        checker = self.checker
        for node in self.nodes.values():
            if not node.alive:
                continue
            core = node.core
            role = core.role
            term = core.term
            if role != node.role or term != node.term:
                if node.role == Role.LEADER:
                    checker.forget_leader(node.id)
                node.role = role
                node.term = term
            if role != Role.LEADER:
                continue
            checker.on_leader(node.id, term)
            checker.check_leader(node.id, term, node.storage, core)

    # --- queries --------------------------------------------------------------------------------

    def alive_nodes(self) -> list[SimNode]:
        """Nodes that are up, in id order of creation."""
        return [n for n in self.nodes.values() if n.alive]

    def leader(self) -> SimNode | None:
        """The live leader of the highest term, if any."""
        best: SimNode | None = None
        for n in self.nodes.values():
            if n.alive and n.core.role == Role.LEADER and (best is None or n.term > best.term):
                best = n
        return best

    def members(self) -> ConfState:
        """The configuration as the current leader sees it (else the most applied node's)."""
        ld = self.leader()
        if ld is not None:
            return ld.core.status().conf_state
        best = max(self.nodes.values(), key=lambda n: n.sm.applied)
        return best.sm.conf


def _fmt_msg(m: Message) -> str:
    parts = [f"{m.sender}->{m.recipient} {m.type.name} t{m.term}"]
    if m.type in (MessageType.APPEND, MessageType.VOTE, MessageType.PRE_VOTE, MessageType.ACCEPT):
        parts.append(f"lt{m.log_term} i{m.index}")
    if m.entries:
        parts.append(f"[{m.entries[0].index}..{m.entries[-1].index}]")
    if m.commit:
        parts.append(f"c{m.commit}")
    if m.reject:
        parts.append(f"REJECT hint{m.reject_hint}")
    elif m.type in (MessageType.APPEND_RESPONSE, MessageType.ACCEPTED):
        parts.append(f"i{m.index}")
    if m.snapshot is not None:
        parts.append(f"snap{m.snapshot.index}/{m.snapshot.term}")
    return " ".join(parts)
