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


class StorageFullError(KVStoreError):
    """The store reached its storage quota: writes that add data are refused on every member
    alike, while reads and deletes keep working. Free space (delete keys) and writes resume."""


class SessionExpiredError(KVStoreError):
    """A write retried under a client session the cluster no longer knows (expired, or never
    registered). Its outcome is unknown: it may have been applied once, and it is never applied
    a second time. Start a new session (a new client) and read before writing again."""


class CompactedError(KVStoreError):
    """The requested revision is older than the oldest one the store still holds.

    `oldest_revision` is the oldest revision that can still be read or watched from."""

    def __init__(self, oldest_revision: int, message: str | None = None) -> None:
        super().__init__(
            message or f"revision compacted: the oldest revision still held is {oldest_revision}"
        )
        self.oldest_revision = oldest_revision


class LeaseNotFoundError(KVStoreError):
    """The lease does not exist: it was never granted, it expired, or it was revoked."""

    def __init__(self, lease_id: int, message: str | None = None) -> None:
        super().__init__(message or f"lease {lease_id} not found (expired or revoked)")
        self.lease_id = lease_id


# --- internal -----------------------------------------------------------------------------------


class ProposalDroppedError(KVStoreError):
    """The Raft core refused a proposal; `reason` says why (not leader, transfer in progress...)."""

    def __init__(self, reason: str, *, leader_id: str | None = None) -> None:
        super().__init__(f"proposal dropped: {reason}")
        self.reason = reason
        self.leader_id = leader_id


class StorageError(KVStoreError):
    """Base of the errors a `LogView` may raise to the Raft core."""


class LogCompactedError(StorageError):
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
