"""The environment the interaction scripts drive: a few `RaftCore`s and a hand-operated network.

Nothing happens unless a command says so: ticks, Ready handling and message delivery are all
explicit, so a script pins down one exact interleaving and its golden output shows every Ready
(hard state, entries, messages, committed entries, read states) and every delivered message.

Node ids are "1", "2", ... Each core's rng is `random.Random(int(node_id))`. Storage is the
simulator's `SimStorage`, synced at every Ready (the scripts are about the protocol, not about
crashes; `restart` rebuilds a core from its storage).

Commands (arguments in brackets are optional):

    add-nodes N [voters=(1,2,3)] [learners=(4)] [index=K] [pre-vote=true] [check-quorum=true]
              [election=10] [heartbeat=1] [inflight=256] [max-append-bytes=N] [forward=true]
        Create N nodes. Nodes in `voters` bootstrap with Config.initial_voters; with `learners`
        or `index`, they start from a snapshot at index K (default 1) holding the configuration
        instead. Other nodes start empty and wait to be contacted.
    campaign N | tick N [count] | tick-heartbeat N | tick-election N
        tick-election: a leader ticks election_ticks times; anyone else ticks until its role or
        term changes or it has new work (at most 2 * election_ticks ticks, the top of the
        randomised timeout).
    propose N data | propose-many N d1 d2 ...
    propose-conf-change N add-voter|add-learner|remove ID
    read-index N ctx [lease=true] | transfer-leader from=N to=M | campaign N
    process-ready [N ...]      handle the Ready of the given nodes (default: all)
    deliver-msgs [N ...] [drop=(N,...)] [type=APPEND]
        deliver queued messages to the given recipients (default: all); `drop` loses those to
        the listed nodes instead; `type` restricts to one message type.
    stabilize [N ...]          process-ready and deliver-msgs until nothing is left
    partition 1 / 2 3 | heal   cut the links between groups (messages across are dropped)
    compact N index | restart N | report-unreachable N peer | report-snapshot N peer ok|fail
    status N | log N | raft-state
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from kvstore.consensus.config import Config
from kvstore.consensus.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Ready,
    SnapshotMeta,
)
from kvstore.errors import KVStoreError
from kvstore.raft.core import RaftCore
from tests.raft.interaction.datadriven import Command, DataDrivenError
from tests.sim.storage import LogImage, SimStorage


def fmt_entry(e: Entry) -> str:
    """`term/index TYPE payload`."""
    if e.type == EntryType.CONF_CHANGE:
        try:
            cc = ConfChange.decode(e.data)
            body = f"{cc.type.name} {cc.node_id}"
        except ValueError:
            body = f"<bad conf change {e.data!r}>"
        return f"{e.term}/{e.index} CONF_CHANGE {body}"
    return f"{e.term}/{e.index} NORMAL {_q(e.data)}"


def _q(data: bytes) -> str:
    """Printable ASCII in quotes; anything else (e.g. a read round id) in hex."""
    if all(32 <= b < 127 and b != 34 for b in data):
        return '"' + data.decode("ascii") + '"'
    return "0x" + data.hex()


def fmt_conf(conf: ConfState) -> str:
    """`voters=(1,2,3)` plus ` learners=(4)` when there are learners."""
    out = f"voters=({','.join(conf.voters)})"
    if conf.learners:
        out += f" learners=({','.join(conf.learners)})"
    return out


def fmt_snapshot(meta: SnapshotMeta) -> str:
    """`index=I term=T voters=(..)`."""
    return f"index={meta.index} term={meta.term} {fmt_conf(meta.conf_state)}"


_LOG_POSITION = frozenset({MessageType.APPEND, MessageType.VOTE, MessageType.PRE_VOTE})


def fmt_msg(m: Message) -> str:
    """One line per message: `from->to TYPE` and every field that is not at its default."""
    parts = [f"{m.sender}->{m.recipient} {m.type.name} term={m.term}"]
    if m.type in _LOG_POSITION:
        # The entry before `entries` (APPEND) or the candidate's last entry: term/index.
        parts.append(f"log={m.log_term}/{m.index}")
    else:
        if m.index:
            parts.append(f"index={m.index}")
        if m.log_term:
            parts.append(f"log_term={m.log_term}")
    if m.commit:
        parts.append(f"commit={m.commit}")
    if m.reject:
        parts.append(f"reject=true hint={m.reject_hint}")
    if m.context:
        parts.append(f"ctx={_q(m.context)}")
    if m.snapshot is not None:
        parts.append(f"snapshot=({fmt_snapshot(m.snapshot)})")
    if m.entries:
        parts.append("entries=[" + ", ".join(fmt_entry(e) for e in m.entries) + "]")
    return " ".join(parts)


def fmt_hard_state(hs: HardState) -> str:
    """`term=T vote=V commit=C`."""
    return f"term={hs.term} vote={hs.vote if hs.vote is not None else '-'} commit={hs.commit}"


def fmt_ready(node_id: str, rd: Ready) -> list[str]:
    """The readable trace of one Ready."""
    out = [f"> {node_id} handling Ready (must_sync={str(rd.must_sync).lower()})"]
    if rd.soft_state is not None:
        leader = rd.soft_state.leader_id if rd.soft_state.leader_id is not None else "-"
        out.append(f"  role: {rd.soft_state.role.value}, leader: {leader}")
    if rd.hard_state is not None:
        out.append(f"  hard state: {fmt_hard_state(rd.hard_state)}")
    if rd.snapshot is not None:
        out.append(f"  snapshot: {fmt_snapshot(rd.snapshot)}")

    def section(title: str, lines: Sequence[str]) -> None:
        if lines:
            out.append(f"  {title}:")
            out.extend(f"    {ln}" for ln in lines)

    section("entries", [fmt_entry(e) for e in rd.entries])
    section("messages", [fmt_msg(m) for m in rd.messages])
    section("persisted messages", [fmt_msg(m) for m in rd.persisted_messages])
    section("committed entries", [fmt_entry(e) for e in rd.committed_entries])
    section("read states", [f"index={r.index} ctx={_q(r.request_ctx)}" for r in rd.read_states])
    section("dropped", [f"ctx={_q(d.context)} reason={d.reason}" for d in rd.dropped])
    return out


@dataclass(slots=True)
class EnvNode:
    """One core with its storage and a minimal state machine (applied index, configuration)."""

    id: str
    config: Config
    storage: SimStorage
    core: RaftCore
    applied: int = 0
    conf_history: list[tuple[int, ConfState]] = field(default_factory=list)
    """(index, configuration from that index on), as applied."""

    def conf_at(self, index: int) -> ConfState:
        """The applied configuration as of `index`."""
        conf = ConfState()
        for i, c in self.conf_history:
            if i <= index:
                conf = c
        return conf


class InteractionEnv:
    """Runs one script's commands against a set of cores. See the module docstring."""

    def __init__(self) -> None:
        self.nodes: dict[str, EnvNode] = {}
        self.queue: list[Message] = []
        """Messages sent and not yet delivered, in send order."""
        self.blocked: set[tuple[str, str]] = set()

    # --- dispatch -------------------------------------------------------------------------------

    def handle(self, cmd: Command) -> str:
        """Run one command; return its output (errors from the core are part of the output)."""
        method = getattr(self, "_cmd_" + cmd.name.replace("-", "_"), None)
        if method is None:
            raise cmd.fail("unknown command")
        try:
            out: list[str] = method(cmd)
        except KVStoreError as e:
            return f"error: {type(e).__name__}: {e}"
        return "\n".join(out) if out else "ok"

    def _node(self, cmd: Command, node_id: str) -> EnvNode:
        node = self.nodes.get(node_id)
        if node is None:
            raise cmd.fail(f"no node {node_id}")
        return node

    def _ids(self, cmd: Command) -> list[str]:
        ids = cmd.positional()
        return ids if ids else sorted(self.nodes, key=int)

    # --- setup ----------------------------------------------------------------------------------

    def _cmd_add_nodes(self, cmd: Command) -> list[str]:
        pos = cmd.positional()
        if len(pos) != 1:
            raise cmd.fail("add-nodes takes a count")
        count = int(pos[0])
        voters = tuple(cmd.get_list("voters") or ())
        learners = tuple(cmd.get_list("learners") or ())
        index_arg = cmd.get("index")
        from_snapshot = bool(learners) or index_arg is not None
        snap_index = int(index_arg) if index_arg is not None else 1

        def flag(name: str, default: bool) -> bool:
            v = cmd.get(name)
            return default if v is None else v == "true"

        out: list[str] = []
        for _ in range(count):
            nid = str(len(self.nodes) + 1)
            member = nid in voters or nid in learners
            image = LogImage()
            if member and from_snapshot:
                conf = ConfState(voters, learners)
                image = LogImage(
                    SnapshotMeta(snap_index, 1, conf), [], HardState(1, None, snap_index)
                )
            config = Config(
                node_id=nid,
                initial_voters=voters if (member and not from_snapshot and nid in voters) else (),
                election_ticks=int(cmd.get("election", "10") or 10),
                heartbeat_ticks=int(cmd.get("heartbeat", "1") or 1),
                pre_vote=flag("pre-vote", True),
                check_quorum=flag("check-quorum", True),
                max_inflight_msgs=int(cmd.get("inflight", "256") or 256),
                max_append_bytes=int(cmd.get("max-append-bytes", str(1 << 20)) or 1 << 20),
                forward_proposals=flag("forward", True),
                applied=image.snap.index,
            )
            config.validate()
            storage = SimStorage(image)
            core = RaftCore(config, storage, random.Random(int(nid)))
            node = EnvNode(nid, config, storage, core, applied=image.snap.index)
            if member:
                base = image.snap.conf_state if from_snapshot else ConfState(voters, ())
                node.conf_history.append((image.snap.index, base))
            self.nodes[nid] = node
            out.append(f"{nid}: {self._status_line(node)}")
        return out

    def _cmd_restart(self, cmd: Command) -> list[str]:
        (nid,) = cmd.positional()
        node = self._node(cmd, nid)
        node.storage.sync()
        config = replace(node.config, applied=node.applied)
        node.core = RaftCore(config, node.storage, random.Random(int(nid)))
        self.queue = [m for m in self.queue if m.recipient != nid]
        return [f"{nid}: {self._status_line(node)}"]

    # --- inputs ---------------------------------------------------------------------------------

    def _cmd_campaign(self, cmd: Command) -> list[str]:
        for nid in cmd.positional():
            self._node(cmd, nid).core.campaign()
        return []

    def _cmd_tick(self, cmd: Command) -> list[str]:
        pos = cmd.positional()
        node = self._node(cmd, pos[0])
        for _ in range(int(pos[1]) if len(pos) > 1 else 1):
            node.core.tick()
        return []

    def _cmd_tick_heartbeat(self, cmd: Command) -> list[str]:
        for nid in cmd.positional():
            node = self._node(cmd, nid)
            for _ in range(node.config.heartbeat_ticks):
                node.core.tick()
        return []

    def _cmd_tick_election(self, cmd: Command) -> list[str]:
        out: list[str] = []
        for nid in cmd.positional():
            node = self._node(cmd, nid)
            core = node.core
            e = node.config.election_ticks
            if core.role.value == "leader":
                for _ in range(e):
                    core.tick()
                continue
            # Tick until the timeout fires: the role or term changes, or (a pre-candidate
            # starting another round) new work appears.
            before = (core.role, core.term)
            had_ready = core.has_ready()
            for _ in range(2 * e):
                core.tick()
                if (core.role, core.term) != before or (not had_ready and core.has_ready()):
                    break
            else:
                out.append(f"{nid}: no change after {2 * e} ticks")
        return out

    def _cmd_propose(self, cmd: Command) -> list[str]:
        pos = cmd.positional()
        index = self._node(cmd, pos[0]).core.propose(pos[1].encode() if len(pos) > 1 else b"")
        return [f"index {index}" if index else "forwarded"]

    def _cmd_propose_many(self, cmd: Command) -> list[str]:
        pos = cmd.positional()
        index = self._node(cmd, pos[0]).core.propose_many([p.encode() for p in pos[1:]])
        return [f"first index {index}" if index else "forwarded"]

    def _cmd_propose_conf_change(self, cmd: Command) -> list[str]:
        pos = cmd.positional()
        if len(pos) != 3:
            raise cmd.fail("usage: propose-conf-change N add-voter|add-learner|remove ID")
        kinds = {
            "add-voter": ConfChangeType.ADD_VOTER,
            "add-learner": ConfChangeType.ADD_LEARNER,
            "remove": ConfChangeType.REMOVE,
        }
        change = ConfChange(kinds[pos[1]], pos[2])
        index = self._node(cmd, pos[0]).core.propose_conf_change(change)
        return [f"index {index}" if index else "forwarded"]

    def _cmd_read_index(self, cmd: Command) -> list[str]:
        pos = cmd.positional()
        self._node(cmd, pos[0]).core.read_index(pos[1].encode(), lease=cmd.get("lease") == "true")
        return []

    def _cmd_transfer_leader(self, cmd: Command) -> list[str]:
        src, dst = cmd.get("from"), cmd.get("to")
        if src is None or dst is None:
            raise cmd.fail("usage: transfer-leader from=N to=M")
        self._node(cmd, src).core.transfer_leadership(dst)
        return []

    def _cmd_report_unreachable(self, cmd: Command) -> list[str]:
        pos = cmd.positional()
        self._node(cmd, pos[0]).core.report_unreachable(pos[1])
        return []

    def _cmd_report_snapshot(self, cmd: Command) -> list[str]:
        pos = cmd.positional()
        self._node(cmd, pos[0]).core.report_snapshot(pos[1], pos[2] == "ok")
        return []

    def _cmd_compact(self, cmd: Command) -> list[str]:
        pos = cmd.positional()
        node = self._node(cmd, pos[0])
        index = int(pos[1])
        if index > node.applied:
            raise cmd.fail(f"cannot compact through {index}: applied is {node.applied}")
        node.storage.sync()
        node.storage.compact_through(index, node.conf_at(index))
        return [f"{node.id}: log [{node.storage.first_index()}, {node.storage.last_index()}]"]

    # --- network --------------------------------------------------------------------------------

    def _cmd_partition(self, cmd: Command) -> list[str]:
        groups: list[list[str]] = [[]]
        for tok in cmd.positional():
            if tok == "/":
                groups.append([])
            else:
                groups[-1].append(tok)
        for i, a in enumerate(groups):
            for b in groups[i + 1 :]:
                for x in a:
                    for y in b:
                        self.blocked.add((x, y))
                        self.blocked.add((y, x))
        return []

    def _cmd_heal(self, cmd: Command) -> list[str]:
        self.blocked.clear()
        return []

    def _cmd_deliver_msgs(self, cmd: Command) -> list[str]:
        targets = set(cmd.positional())
        drop = set(cmd.get_list("drop") or ())
        mtype = cmd.get("type")
        return self._deliver(targets, drop, mtype)

    def _deliver(self, targets: set[str], drop: set[str], mtype: str | None) -> list[str]:
        out: list[str] = []
        keep: list[Message] = []
        batch: list[Message] = []
        for m in self.queue:
            if mtype is not None and m.type.name != mtype:
                keep.append(m)
            elif m.recipient in drop:
                out.append(f"dropped: {fmt_msg(m)}")
            elif targets and m.recipient not in targets:
                keep.append(m)
            else:
                batch.append(m)
        self.queue = keep
        by_node: dict[str, list[Message]] = {}
        for m in batch:
            by_node.setdefault(m.recipient, []).append(m)
        for nid in sorted(by_node, key=int):
            out.append(f"> {nid} receiving messages")
            node = self.nodes.get(nid)
            for m in by_node[nid]:
                if (m.sender, m.recipient) in self.blocked:
                    out.append(f"  dropped (partition): {fmt_msg(m)}")
                    continue
                if node is None:
                    out.append(f"  dropped (no such node): {fmt_msg(m)}")
                    continue
                out.append(f"  {fmt_msg(m)}")
                node.core.step(m)
        return out

    # --- the Ready loop -------------------------------------------------------------------------

    def _cmd_process_ready(self, cmd: Command) -> list[str]:
        out: list[str] = []
        for nid in self._ids(cmd):
            node = self._node(cmd, nid)
            if node.core.has_ready():
                out.extend(self._process(node))
            elif cmd.positional():
                out.append(f"> {nid} has no Ready")
        return out

    def _process(self, node: EnvNode) -> list[str]:
        rd = node.core.ready()
        out = fmt_ready(node.id, rd)
        self.queue.extend(rd.messages)
        if rd.snapshot is not None:
            node.storage.install_snapshot(rd.snapshot)
        if rd.entries or rd.hard_state is not None:
            node.storage.append(list(rd.entries), rd.hard_state)
        node.storage.sync()
        self.queue.extend(rd.persisted_messages)
        if rd.snapshot is not None:
            node.applied = rd.snapshot.index
            node.conf_history.append((rd.snapshot.index, rd.snapshot.conf_state))
        for e in rd.committed_entries:
            if e.index != node.applied + 1:
                out.append(
                    f"  !! committed entry {e.index} handed out after applied {node.applied}"
                )
            node.applied = e.index
            if e.type == EntryType.CONF_CHANGE:
                conf = node.conf_at(e.index)
                node.conf_history.append((e.index, _apply_change(conf, ConfChange.decode(e.data))))
        node.core.advance(rd)
        return out

    def _cmd_stabilize(self, cmd: Command) -> list[str]:
        ids = cmd.positional()
        only = set(ids)
        out: list[str] = []
        for _ in range(200):  # bounded: a script that never settles is a bug to see
            progressed = False
            for nid in ids or sorted(self.nodes, key=int):
                node = self.nodes[nid]
                if node.core.has_ready():
                    out.extend(self._process(node))
                    progressed = True
            pending = [m for m in self.queue if not only or m.recipient in only]
            if pending:
                out.extend(self._deliver(only, set(), None))
                progressed = True
            if not progressed:
                return out
        raise DataDrivenError("stabilize did not settle in 200 rounds")

    # --- inspection -----------------------------------------------------------------------------

    def _status_line(self, node: EnvNode) -> str:
        st = node.core.status()
        leader = st.leader_id if st.leader_id is not None else "-"
        return (
            f"{st.role.value} term={st.term} vote={st.vote if st.vote is not None else '-'} "
            f"commit={st.commit} applied={node.applied} leader={leader} {fmt_conf(st.conf_state)} "
            f"log=[{node.storage.first_index()}, {node.storage.last_index()}]"
        )

    def _cmd_status(self, cmd: Command) -> list[str]:
        out: list[str] = []
        for nid in self._ids(cmd):
            node = self._node(cmd, nid)
            st = node.core.status()
            out.append(f"{nid}: {self._status_line(node)}")
            for peer in sorted(st.progress or {}, key=int):
                p = st.progress[peer]
                state = getattr(p.state, "name", str(p.state)).lower()
                out.append(f"  {peer}: match={p.match} next={p.next} state={state}")
            if st.transferee is not None:
                out.append(f"  transferring to {st.transferee}")
        return out

    def _cmd_raft_state(self, cmd: Command) -> list[str]:
        return [
            f"{nid}: {self._status_line(self.nodes[nid])}" for nid in sorted(self.nodes, key=int)
        ]

    def _cmd_log(self, cmd: Command) -> list[str]:
        out: list[str] = []
        for nid in self._ids(cmd):
            node = self._node(cmd, nid)
            snap = node.storage.snapshot_meta()
            out.append(f"{nid}: snapshot {snap.index}/{snap.term}, hard state "
                       f"{fmt_hard_state(node.storage.hard_state)}")  # fmt: skip
            ents = node.storage.all_entries()
            out.extend(f"  {fmt_entry(e)}" for e in ents)
            if not ents:
                out.append("  (no entries)")
        return out


def _apply_change(conf: ConfState, change: ConfChange) -> ConfState:
    voters = set(conf.voters)
    learners = set(conf.learners)
    if change.type == ConfChangeType.ADD_VOTER:
        learners.discard(change.node_id)
        voters.add(change.node_id)
    elif change.type == ConfChangeType.ADD_LEARNER:
        voters.discard(change.node_id)
        learners.add(change.node_id)
    else:
        voters.discard(change.node_id)
        learners.discard(change.node_id)
    return ConfState(tuple(sorted(voters, key=int)), tuple(sorted(learners, key=int)))
