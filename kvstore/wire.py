"""Constants of the client-server contract, in one neutral place that both sides import.

The client (`kvstore.client`: the clients, the balancers and the wire protocol) imports nothing
from the server side (the node, storage, the consensus cores): what both sides must agree on
lives here, in the request protocol (`kvstore.client.protocol`) or in the frame codec
(`kvstore.transport.codec`). tests/client/test_client_imports.py holds the client to that.
"""

from __future__ import annotations

__all__ = ["SESSION_WINDOW"]

SESSION_WINDOW = 256
"""How many of a client's most recent seqs the state machine remembers (applied or not, and the
result). Commands of one client may commit in any order within this window, so a client keeps
fewer than this many in flight. Part of the replicated format (kvstore.storage.commands), so it
must never differ between members."""
