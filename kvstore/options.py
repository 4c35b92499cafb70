"""Public value types: `Options` (a node's tunables) and `Status` (what a member reports).

Also the argument checks every public entry point runs before anything is sent or written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal, get_args

from kvstore.consensus import CONSENSUS_KINDS
from kvstore.consensus.config import check_ticks
from kvstore.errors import InvalidArgumentError

KEY_BYTES_MAX = 511
"""LMDB's default maximum key size."""

Consistency = Literal["linearizable", "lease", "stale"]
"""A read's consistency level: "linearizable" (a quorum round, the default), "lease" (the
leader's lease, no round) or "stale" (the local state, possibly behind)."""

CONSISTENCY_LEVELS: tuple[Consistency, ...] = get_args(Consistency)
"""Every `Consistency`, in wire-code order (the protocol sends a level as its index here)."""

CLUSTER_NAME_CHARS_MAX = 128
"""Longest `Options.cluster_name`."""

TIMEOUT_S_MAX = 24 * 3600.0
"""Longest timeout any call accepts (a day): the wire protocol refuses longer ones, and the
standard library's waits overflow on timeouts of a few hundred years."""


@dataclass(frozen=True, slots=True)
class Options:
    """A node's tunables. The defaults suit a LAN cluster; nothing needs changing for a demo."""

    tick_s: float = 0.025
    """Length of one Raft tick."""
    election_ticks: int = 12
    """Ticks without a leader before a follower campaigns (randomised in [n, 2n)).

    The default election timeout is 0.3-0.6 s, so a leader kill is over in well under a second
    (measured: 0.5-0.8 s from kill -9 to a new leader with the old 0.5-1 s timeout). Twelve
    short ticks rather than six long ones: two followers whose timers land on the same tick
    split the vote and start over, and finer ticks make that half as likely."""
    heartbeat_ticks: int = 1
    """Ticks between leader heartbeats."""
    pre_vote: bool = True
    check_quorum: bool = True
    max_value_bytes: int = 1 << 20
    """Largest value accepted by put/cas."""
    max_inflight_appends: int = 256
    """APPEND messages in flight per follower before the leader waits for acks."""
    append_bytes_max: int = 1 << 20
    """Entry bytes per APPEND message."""
    max_pending_proposals: int = 100_000
    """Proposals waiting for commit on this node before new ones are refused."""
    segment_bytes: int = 64 << 20
    """Size of each preallocated redo-log segment."""
    map_size_bytes: int = 1 << 30
    """Initial LMDB map size. The map grows by itself (doubling) as the state grows; the limit
    on the data is `quota_bytes`."""
    checkpoint_entries: int = 50_000
    """Applied entries between LMDB checkpoints (after which the log is compacted)."""
    sessions_max: int = 100_000
    """Most live client sessions (for exactly-once retries): a registration beyond it is
    refused (the write fails with `UnavailableError`), never served by evicting a live session.
    Must be the same on every member, or a registration could succeed on some members and not
    on others."""
    snapshot_chunk_bytes: int = 1 << 20
    """Chunk size when streaming a snapshot to a lagging member."""
    frame_bytes_max: int = 64 << 20
    """Largest frame accepted on the wire; a bigger one closes that connection."""
    consensus: str = "raft"
    """The protocol the cluster runs: "raft" or "paxos" (kvstore.consensus.CONSENSUS_KINDS).
    Every member must run the same one: peers refuse each other's handshake otherwise."""
    # --- storage ---
    quota_bytes: int = 8 << 30
    """The store's storage quota: at this logical size (the sum of `len(key) + len(value) + 16`
    over every key), writes that add data are refused with `StorageFullError` while reads,
    deletes and writes that do not grow the store go on (like etcd's NOSPACE alarm). Must be
    the same on every member: it decides, at apply time, which writes are refused. The files
    on disk take more (B-tree pages, free pages): budget about twice the quota."""

    # --- sessions ---
    session_timeout_s: float = 600.0
    """A client session without writes for this long expires (Raft thesis §6.3): its next
    write is refused with `SessionExpiredError` if it was a retry, and sent again under a new
    session if it was a first attempt. Time here is the log's clock (the leaders' wall clocks,
    see kvstore.storage.state_machine), so it must be the SAME on every member, like
    `sessions_max`; keep it well above your clock error and your longest write timeout."""

    # --- identity ---
    cluster_name: str = "kvstore"
    """Read once, when a new cluster is created: its cluster id is a hash of this name and the
    founding member ids (`kvstore.identity`). Give clusters that share member ids different
    names, so a member pointed at the wrong cluster is refused ("member of another cluster")."""

    # --- history ---
    history_revisions_max: int = 100_000
    """Revisions of history kept for reads at a past revision and for watches: older ones are
    compacted at apply (`kvstore.storage.mvcc`), and asking for them raises `CompactedError`.
    Must be the SAME on every member: it decides, at apply time, what is compacted."""
    history_bytes_max: int = 1 << 30
    """Bytes of history (events not yet compacted) above which the history is compacted down to
    the latest revision, whatever `history_revisions_max` allows. The same on every member."""

    def validate(self) -> None:
        """Raise `InvalidArgumentError` naming the first setting that is out of range.

        Every field is checked by its declared type first (`check_field`): a float must be a
        finite number >= 0 (never nan or inf), an int an int (not a bool, not a float), a bool a
        bool, a str a str; then the settings with tighter ranges are checked one by one.
        """
        for field in fields(self):
            check_field(getattr(self, field.name), field.name, str(field.type))
        if self.tick_s <= 0:
            raise InvalidArgumentError(f"tick_s must be > 0, got {self.tick_s}")
        check_ticks(self.heartbeat_ticks, self.election_ticks)
        for name in (
            "max_value_bytes",
            "max_inflight_appends",
            "append_bytes_max",
            "max_pending_proposals",
            "segment_bytes",
            "map_size_bytes",
            "checkpoint_entries",
            "snapshot_chunk_bytes",
            "frame_bytes_max",
        ):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.segment_bytes < 1 << 16:
            raise InvalidArgumentError(f"segment_bytes must be >= 65536, got {self.segment_bytes}")
        if self.frame_bytes_max < self.max_value_bytes + (64 << 10):
            raise InvalidArgumentError("frame_bytes_max must exceed max_value_bytes by 64 KiB")
        for name in ("history_revisions_max", "history_bytes_max"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"{name} must be >= 1, got {getattr(self, name)}")
        quota = self.quota_bytes
        if isinstance(quota, bool) or not isinstance(quota, int) or quota < 1:
            raise InvalidArgumentError(f"quota_bytes must be an int >= 1, got {quota!r}")
        if not (
            isinstance(self.session_timeout_s, int | float)
            and math.isfinite(self.session_timeout_s)
            and 0.001 <= self.session_timeout_s <= 1e9
        ):
            raise InvalidArgumentError(
                f"session_timeout_s must be a finite number in [0.001, 1e9], "
                f"got {self.session_timeout_s!r}"
            )
        if not 0 < len(self.cluster_name) <= CLUSTER_NAME_CHARS_MAX:
            raise InvalidArgumentError(
                f"cluster_name must be 1 to {CLUSTER_NAME_CHARS_MAX} characters, "
                f"got {self.cluster_name!r}"
            )
        if self.consensus not in CONSENSUS_KINDS:
            raise InvalidArgumentError(
                f"consensus must be one of {', '.join(CONSENSUS_KINDS)}; got {self.consensus!r}"
            )


@dataclass(frozen=True, slots=True)
class Status:
    """What one member reports about itself."""

    node_id: str
    role: str
    """"leader", "follower", "candidate" or "learner"."""
    term: int
    leader_id: str | None
    commit_index: int
    applied_index: int
    members: dict[str, str]
    """node_id -> address of every member (voters and learners)."""
    failure: str | None = None
    """Why this member stopped serving (a storage failure such as "No space left on device"),
    or None while it serves. A failed member reports role "follower" and no leader."""


def check_key(key: object) -> bytes:
    """Return `key` if it is 1 to 511 bytes, else raise `InvalidArgumentError`."""
    if not isinstance(key, bytes):
        raise InvalidArgumentError(f"key must be bytes, got {type(key).__name__}")
    if not 1 <= len(key) <= KEY_BYTES_MAX:
        raise InvalidArgumentError(f"key must be 1 to {KEY_BYTES_MAX} bytes, got {len(key)}")
    return key


def check_value(value: object, max_value_bytes: int, *, name: str = "value") -> bytes:
    """Return `value` if it is bytes of at most `max_value_bytes`, else raise."""
    if not isinstance(value, bytes):
        raise InvalidArgumentError(f"{name} must be bytes, got {type(value).__name__}")
    if len(value) > max_value_bytes:
        raise InvalidArgumentError(
            f"{name} is {len(value)} bytes, more than the limit of {max_value_bytes}"
        )
    return value


def check_optional_value(value: object, max_value_bytes: int, *, name: str) -> bytes | None:
    """Like `check_value`, but None is allowed (cas: "absent" / "delete")."""
    return None if value is None else check_value(value, max_value_bytes, name=name)


def check_consistency(consistency: object) -> Consistency:
    """Return `consistency` if it names a read level, else raise (callers that skip a type
    checker can pass anything)."""
    for level in CONSISTENCY_LEVELS:
        if consistency == level and isinstance(consistency, str):
            return level
    raise InvalidArgumentError(
        f"consistency must be one of {', '.join(CONSISTENCY_LEVELS)}; got {consistency!r}"
    )


def check_timeout(timeout_s: object, name: str = "timeout_s") -> float:
    """Return `timeout_s` as a float if it is a finite number in (0, `TIMEOUT_S_MAX`], else raise
    `InvalidArgumentError` naming `name`. nan, inf, 0, negatives and bools are refused.

    The one timeout check of the public API (Node, both clients, the CLI): call it before
    anything is sent or written."""
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, int | float)
        or not 0 < timeout_s <= TIMEOUT_S_MAX  # False for nan
    ):
        raise InvalidArgumentError(
            f"{name} must be a number of seconds in (0, {TIMEOUT_S_MAX:g}], got {timeout_s!r}"
        )
    return float(timeout_s)


def check_field(value: object, name: str, kind: str) -> None:
    """Raise `InvalidArgumentError` unless `value` fits the declared type `kind` of setting
    `name`: "float" a finite number >= 0, "int" an int (not a bool), "bool" a bool, "str" a str.
    Other kinds are not checked here."""
    if kind == "float":
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise InvalidArgumentError(f"{name} must be a finite number >= 0, got {value!r}")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgumentError(f"{name} must be an int, got {value!r}")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise InvalidArgumentError(f"{name} must be True or False, got {value!r}")
    elif kind == "str" and not isinstance(value, str):
        raise InvalidArgumentError(f"{name} must be a str, got {value!r}")


def check_limit(limit: object) -> int | None:
    """Return `limit` if it is None or a positive int, else raise."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidArgumentError(f"limit must be None or a positive int, got {limit!r}")
    return limit
