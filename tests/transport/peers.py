"""Test helper: start in-process members' transports so they know each other's addresses."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Protocol, TypeVar

from kvstore.transport.tcp import PeerTransport


class HasTransport(Protocol):
    transport: PeerTransport


M = TypeVar("M", bound=HasTransport)


@contextlib.asynccontextmanager
async def started(nodes: Mapping[str, M]) -> AsyncIterator[Mapping[str, M]]:
    """Start every node's transport on an ephemeral port, tell each the others' addresses,
    yield them, and close every transport at the end."""
    try:
        for node in nodes.values():
            await node.transport.start()
        peers = {node_id: node.transport.address for node_id, node in nodes.items()}
        for node in nodes.values():
            node.transport.set_peers(peers)
        yield nodes
    finally:
        for node in nodes.values():
            await node.transport.close()
