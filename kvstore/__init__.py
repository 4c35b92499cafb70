"""kvstore: an embedded, Raft-replicated, durable key-value store.

Only the names in `__all__` (and the `kvstore.aio` module) are public; every other module is
internal and may change.
"""

from kvstore.client.balancer import (
    Balancer,
    LeastLatency,
    RandomBalancer,
    RoundRobin,
    WeightedRoundRobin,
)
from kvstore.client.client import Client
from kvstore.errors import (
    AuthenticationError,
    CompactedError,
    CorruptionError,
    InvalidArgumentError,
    KVStoreError,
    LeaseNotFoundError,
    NotLeaderError,
    OperationTimeoutError,
    SessionExpiredError,
    StorageFullError,
    UnavailableError,
)
from kvstore.node import Node, NodeFailedError
from kvstore.options import Options, Status

__all__ = [
    "AuthenticationError",
    "Balancer",
    "Client",
    "CompactedError",
    "CorruptionError",
    "InvalidArgumentError",
    "KVStoreError",
    "LeaseNotFoundError",
    "LeastLatency",
    "Node",
    "NodeFailedError",
    "NotLeaderError",
    "OperationTimeoutError",
    "Options",
    "RandomBalancer",
    "RoundRobin",
    "SessionExpiredError",
    "Status",
    "StorageFullError",
    "UnavailableError",
    "WeightedRoundRobin",
]
