"""What a leader knows about each follower's log, and how fast it may send to it.

A follower is in one of three states (etcd's progress tracker):
- PROBE: the leader does not know where the follower's log ends. It sends one APPEND and waits
  for the answer (or the next heartbeat answer) before sending another.
- REPLICATE: the follower is known to match up to `match`. The leader streams APPENDs
  optimistically (moving `next` on as it sends), up to the in-flight limits.
- SNAPSHOT: the follower needs a snapshot; nothing else is sent until it is installed.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, ItemsView
from typing import NamedTuple


class ProgressState(enum.IntEnum):
    """How the leader replicates to one follower."""

    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class PeerProgress(NamedTuple):
    """A read-only copy of one follower's progress, for `RaftCore.status()`."""

    match: int
    next: int
    state: ProgressState


class Inflights:
    """APPENDs sent in REPLICATE state and not yet acknowledged: a bounded window.

    Each element is (last index of the message, entry bytes in it). The window is full once it
    holds `count_max` messages or `bytes_max` bytes; one message may overshoot the byte limit so
    that an entry larger than the limit still goes out.
    """

    __slots__ = ("_queue", "bytes", "bytes_max", "count_max")

    def __init__(self, count_max: int, bytes_max: int) -> None:
        self._queue: deque[tuple[int, int]] = deque()
        self.count_max = count_max
        self.bytes_max = bytes_max
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, last_index: int, nbytes: int) -> None:
        """Record a message carrying entries up to `last_index`."""
        self._queue.append((last_index, nbytes))
        self.bytes += nbytes

    def free_le(self, index: int) -> None:
        """Forget every message whose entries are all at or below `index` (acknowledged)."""
        queue = self._queue
        while queue and queue[0][0] <= index:
            self.bytes -= queue.popleft()[1]

    def free_first(self) -> None:
        """Forget the oldest message (a heartbeat answer shows the follower is alive)."""
        if self._queue:
            self.bytes -= self._queue.popleft()[1]

    def full(self) -> bool:
        """Whether the leader must wait for acks before sending more."""
        return len(self._queue) >= self.count_max or self.bytes >= self.bytes_max

    def reset(self) -> None:
        """Forget everything in flight."""
        self._queue.clear()
        self.bytes = 0


class Progress:
    """The leader's view of one member's log (the leader keeps one for itself too)."""

    __slots__ = (
        "inflights",
        "is_learner",
        "last_heard_tick",
        "match",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "sent_commit",
        "state",
    )

    def __init__(
        self, next_index: int, *, is_learner: bool, inflight_msgs: int, inflight_bytes: int
    ) -> None:
        self.match = 0
        """The highest index known to be stored on that member and to match the leader's log."""
        self.next = next_index
        """The next index to send."""
        self.state = ProgressState.PROBE
        self.probe_sent = False
        """PROBE: an APPEND was sent and not yet answered: wait."""
        self.pending_snapshot = 0
        """SNAPSHOT: the index of the snapshot being sent."""
        self.recent_active = False
        """Heard from during the current check-quorum period."""
        self.last_heard_tick = -(1 << 62)
        """The leader's tick when this member last answered (for the lease)."""
        self.sent_commit = 0
        """The commit index last sent to this member (to know when to tell it a newer one)."""
        self.is_learner = is_learner
        self.inflights = Inflights(inflight_msgs, inflight_bytes)

    def __repr__(self) -> str:
        return (
            f"Progress(match={self.match}, next={self.next}, state={self.state.name}, "
            f"probe_sent={self.probe_sent}, pending_snapshot={self.pending_snapshot}, "
            f"inflight={len(self.inflights)})"
        )

    def become_probe(self) -> None:
        """Go back to probing from just after the last known match (or the snapshot sent)."""
        if self.state == ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.reset()

    def become_replicate(self) -> None:
        """Stream entries from just after `match`."""
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.reset()

    def become_snapshot(self, snapshot_index: int) -> None:
        """Wait for the snapshot at `snapshot_index` to be installed."""
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = snapshot_index
        self.probe_sent = False
        self.inflights.reset()

    def maybe_update(self, index: int) -> bool:
        """The member acknowledged entries through `index`; True if `match` moved on."""
        self.probe_sent = False
        if index >= self.next:
            self.next = index + 1
        if index > self.match:
            self.match = index
            return True
        return False

    def maybe_decrease_to(self, rejected: int, match_hint: int) -> bool:
        """The member rejected the APPEND after `rejected`; back off using its hint.

        `match_hint` is the highest index that may match (computed from the member's hint and
        the term of its entry there, Raft §5.3 fast backtracking). Returns False for a stale
        rejection (an answer to an APPEND we no longer care about).
        """
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            # In REPLICATE everything above `match` is speculation: restart from there.
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        """Whether the leader must hold back APPENDs to this member for now."""
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def snapshot(self) -> PeerProgress:
        """An immutable copy for status reports."""
        return PeerProgress(self.match, self.next, self.state)


class ProgressTracker:
    """The leader's `Progress` of every member, held by the core (composition).

    Reads like a mapping from node id to `Progress` (`get`, `in`, `[]`, `items`), plus the two
    views the leader's hot paths iterate: `peers` (every member but the leader, sorted by id:
    whom it sends to) and `voters` (the voters' progress: what a quorum holds). Empty when the
    node does not lead.
    """

    __slots__ = ("_by_id", "get", "peers", "voters")

    def __init__(self) -> None:
        self._by_id: dict[str, Progress] = {}
        self.get: Callable[[str], Progress | None] = self._by_id.get
        """The progress of a node, or None if it is not tracked: the dict's own `get`, bound
        directly so that the leader's per-answer lookup costs what a dict lookup costs."""
        self.peers: list[tuple[str, Progress]] = []
        """Every member but the leader, sorted by id."""
        self.voters: list[Progress] = []
        """The voters' progress (the leader's own included), in voter id order."""

    def set(
        self, progress: dict[str, Progress], leader_id: str, voter_ids: tuple[str, ...]
    ) -> None:
        """Track `progress` (by member id, in sorted id order) for the leader `leader_id`."""
        self._by_id = progress
        self.get = progress.get
        self.peers = [(node, pr) for node, pr in progress.items() if node != leader_id]
        self.voters = [progress[v] for v in voter_ids if v in progress]

    def clear(self) -> None:
        """Forget every member (the node no longer leads)."""
        self._by_id = {}
        self.get = self._by_id.get
        self.peers = []
        self.voters = []

    def __contains__(self, node: object) -> bool:
        return node in self._by_id

    def __getitem__(self, node: str) -> Progress:
        return self._by_id[node]

    def items(self) -> ItemsView[str, Progress]:
        """(member id, progress) pairs, in sorted id order."""
        return self._by_id.items()

    def quorum_match(self) -> int:
        """The highest index a quorum of voters holds (0 without voters)."""
        voters = self.voters
        if not voters:
            return 0
        matches = sorted([pr.match for pr in voters], reverse=True)
        return matches[len(matches) // 2]

    def snapshot(self) -> dict[str, PeerProgress]:
        """Immutable copies of every member's progress, for status reports."""
        return {node: pr.snapshot() for node, pr in self._by_id.items()}
