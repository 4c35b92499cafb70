"""The exception hierarchy. Public classes are re-exported from `kvstore`; the rest are internal.

Operating errors (a peer went away, a quorum was lost, the disk failed) are typed exceptions
that callers handle. Broken invariants are programmer errors and crash through `invariant()`.
"""

from __future__ import annotations


class KVStoreError(Exception):
    """Base class of every error kvstore raises on purpose."""


class InvalidArgumentError(KVStoreError, ValueError):
    """A caller passed a bad argument (wrong type, empty or oversized key or value).

    Raised before anything is sent or written.
    """


class NotLeaderError(KVStoreError):
    """The member asked is not the leader. Carries the leader's id and address when known."""

    def __init__(
        self,
        message: str = "not the leader",
        *,
        leader_id: str | None = None,
        leader_address: str | None = None,
    ) -> None:
        super().__init__(message)
        self.leader_id = leader_id
        self.leader_address = leader_address


class UnavailableError(KVStoreError):
    """No quorum or no leader could be reached in time; nothing was done."""


class OperationTimeoutError(KVStoreError, TimeoutError):
    """The operation did not finish in time. Its outcome is unknown: it may still take effect."""


class AuthenticationError(KVStoreError):
    """The other side did not prove knowledge of the cluster secret, or refused ours."""


class CorruptionError(KVStoreError):
    """Stored data failed verification. Names the file and the byte offset of the damage."""

    def __init__(self, message: str, *, path: str | None = None, offset: int | None = None) -> None:
        if path is None:
            where = ""
        elif offset is None:
            where = f" ({path})"
        else:
            where = f" ({path} at offset {offset})"
        super().__init__(message + where)
        self.path = path
        self.offset = offset


# --- internal -----------------------------------------------------------------------------------


class ProposalDroppedError(KVStoreError):
    """The Raft core refused a proposal; `reason` says why (not leader, transfer in progress...)."""

    def __init__(self, reason: str, *, leader_id: str | None = None) -> None:
        super().__init__(f"proposal dropped: {reason}")
        self.reason = reason
        self.leader_id = leader_id


class StorageError(KVStoreError):
    """Base of the errors a `LogView` may raise to the Raft core."""


class CompactedError(StorageError):
    """The requested log index lies below the first index: it was compacted into a snapshot."""


class LogUnavailableError(StorageError):
    """The requested log index lies above the last index: it does not exist (yet)."""


class WalFailedError(KVStoreError):
    """A write or fsync of the redo log failed earlier; the log is poisoned: all calls fail."""


class RemoteProtocolError(KVStoreError):
    """A peer or client sent bytes that break the wire protocol; that connection is closed."""


class InvariantError(AssertionError):
    """A broken invariant: a bug in kvstore, never an operating condition."""


def invariant(condition: bool, message: str) -> None:
    """Crash with `InvariantError` when `condition` is false. Unlike `assert`, fires under -O."""
    if not condition:
        raise InvariantError(message)
