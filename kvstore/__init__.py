"""kvstore: an embedded, Raft-replicated, durable key-value store.

Only the names in `__all__` (and the `kvstore.aio` module) are public; every other module is
internal and may change.
"""

from importlib import metadata as _metadata

from kvstore.client.balancer import (
    Balancer,
    BalancerName,
    LeastLatency,
    RandomBalancer,
    RoundRobin,
    WeightedRoundRobin,
)
from kvstore.client.client import Client
from kvstore.coordination import (
    AsyncWatch,
    Compare,
    KeyValue,
    Lease,
    Op,
    RangeResult,
    TxnResult,
    Watch,
    WatchEvent,
)
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
from kvstore.options import Consistency, Options, Status
from kvstore.transport.tls import TLSConfig

# The name kvstore is published under (`pip install kvstore-raft`): the index's `kvstore` is an
# unrelated project.
_DISTRIBUTION_NAME = "kvstore-raft"


def _source_tree_version() -> str:
    """The version in pyproject.toml beside the package, for a source tree that is not installed."""
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        with pyproject.open("rb") as file:
            return str(tomllib.load(file)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "0+unknown"


# The installed distribution's version (PEP 440), the one `kvstore --version` prints.
__version__: str
try:
    __version__ = _metadata.version(_DISTRIBUTION_NAME)
except _metadata.PackageNotFoundError:
    __version__ = _source_tree_version()

__all__ = [
    "AsyncWatch",
    "AuthenticationError",
    "Balancer",
    "BalancerName",
    "Client",
    "CompactedError",
    "Compare",
    "Consistency",
    "CorruptionError",
    "InvalidArgumentError",
    "KVStoreError",
    "KeyValue",
    "Lease",
    "LeaseNotFoundError",
    "LeastLatency",
    "Node",
    "NodeFailedError",
    "NotLeaderError",
    "Op",
    "OperationTimeoutError",
    "Options",
    "RandomBalancer",
    "RangeResult",
    "RoundRobin",
    "SessionExpiredError",
    "Status",
    "StorageFullError",
    "TLSConfig",
    "TxnResult",
    "UnavailableError",
    "Watch",
    "WatchEvent",
    "WeightedRoundRobin",
    "__version__",
]
