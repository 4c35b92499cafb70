"""kvstore: an embedded, Raft-replicated, durable key-value store.

Only the names in `__all__` are public; every other module is internal.
"""

from kvstore.errors import (
    AuthenticationError,
    CorruptionError,
    InvalidArgumentError,
    KVStoreError,
    NotLeaderError,
    OperationTimeoutError,
    UnavailableError,
)

__all__ = [
    "AuthenticationError",
    "CorruptionError",
    "InvalidArgumentError",
    "KVStoreError",
    "NotLeaderError",
    "OperationTimeoutError",
    "UnavailableError",
]
