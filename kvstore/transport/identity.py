"""The identity exchange: right after a peer connection is authenticated, both sides say which
cluster they belong to and which incarnation of their member id they are, and refuse what does
not fit (`kvstore.identity.check_peer`: another cluster, a second process under a connected
member's id, a member whose data was wiped).

    dialer                                          listener
    IDENTITY {cluster_id, incarnation}  ->
                                        <- IDENTITY {cluster_id, incarnation}   (or ERROR)

It runs on the authenticated connection, after the handshake, so a stranger learns nothing and
(once frames are authenticated) nobody in the middle can rewrite it. A side that refuses sends
an ERROR frame whose message starts with "identity conflict" and closes; both sides log it.
The whole exchange has `timeout_s`; its frames are tiny.

`PeerTransport` calls `offer` after dialing a peer and `answer` after accepting one, when the
node set `PeerTransport.identity`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

from kvstore.errors import RemoteProtocolError
from kvstore.identity import (
    IDENTITY_CONFLICT,
    IdentityConflictError,
    IdentityStore,
    check_peer,
    check_wire_identity,
)
from kvstore.transport.codec import FrameKind

if TYPE_CHECKING:
    from kvstore.transport.tcp import FramedConnection

log = logging.getLogger("kvstore.transport")

ERROR_IDENTITY: Final = "identity"
"""ERROR code of a refused identity exchange."""

IDENTITY_TIMEOUT_S: Final = 5.0
"""Default time the exchange may take."""


class IdentityExchange:
    """Both sides of the exchange for one node, over its `IdentityStore`. Also tracks the
    incarnation behind every open peer connection, to refuse a second process that claims a
    member id already connected. Runs on the node's loop."""

    def __init__(
        self, node_id: str, store: IdentityStore, *, timeout_s: float = IDENTITY_TIMEOUT_S
    ) -> None:
        self.node_id = node_id
        self.dial_at_start = True
        """Whether the transport dials every peer at once, before anything is sent, so this
        member meets every peer it is configured with early. False for a member that joins:
        until it is added the others would refuse it."""
        self._store = store
        self._timeout_s = timeout_s
        self._open: dict[str, dict[FramedConnection, str]] = {}
        """peer id -> its open connections (either direction) -> the incarnation they proved."""

    def _ours(self) -> dict[str, str | None]:
        return {"cluster_id": self._store.cluster_id, "incarnation": self._store.incarnation}

    def connected(self, peer_id: str) -> list[str]:
        """The incarnations behind `peer_id`'s connections that are open now."""
        conns = self._open.get(peer_id)
        if not conns:
            return []
        for conn in [conn for conn in conns if conn.closed]:
            del conns[conn]
        if not conns:
            del self._open[peer_id]
        return list(conns.values())

    def _check_and_accept(
        self, conn: FramedConnection, peer_id: str, body: object, *, dialed: bool
    ) -> None:
        try:
            cluster_id, incarnation = check_wire_identity(body)
        except ValueError as error:
            raise RemoteProtocolError(str(error)) from None
        store = self._store
        check_peer(
            node_id=self.node_id,
            cluster_id=store.cluster_id,
            peer_id=peer_id,
            peer_cluster_id=cluster_id,
            peer_incarnation=incarnation,
            remembered=store.seen(peer_id),
            dialed=dialed,
            connected=self.connected(peer_id),
        )
        store.accept(peer_id, cluster_id, incarnation, dialed=dialed)
        conns = self._open.setdefault(peer_id, {})
        if dialed:
            # The process at the address we dial for this id is the one: any that dialed in
            # claiming the id under another incarnation is a second process. Close those.
            for other, claimed in list(conns.items()):
                if claimed != incarnation:
                    log.warning(
                        "%s: closing a connection that claimed to be %s as incarnation %s; %s "
                        "at its address is incarnation %s (a second process with its id?)",
                        self.node_id,
                        peer_id,
                        claimed,
                        peer_id,
                        incarnation,
                    )
                    other.abort()
                    del conns[other]
        conns[conn] = incarnation

    async def offer(self, conn: FramedConnection, peer_id: str) -> None:
        """Dialer side, on a connection to `peer_id` whose handshake just completed.

        Raises `IdentityConflictError` if either side refuses (the connection is closed),
        `RemoteProtocolError`, `OSError` or `TimeoutError` if the exchange breaks (aborted)."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await conn.send(FrameKind.IDENTITY, self._ours())
                kind, body = await conn.receive()
            if kind is FrameKind.ERROR:
                raise _refusal(peer_id, body)
            if kind is not FrameKind.IDENTITY:
                raise RemoteProtocolError(f"expected IDENTITY from {peer_id!r}, got {kind.name}")
            try:
                self._check_and_accept(conn, peer_id, body, dialed=True)
            except IdentityConflictError as error:
                await _refuse(conn, str(error))
                await conn.wait_closed()
                raise
        except BaseException:
            conn.abort()
            raise

    async def answer(self, conn: FramedConnection, peer_id: str) -> bool:
        """Listener side, on a connection from `peer_id` whose handshake just completed.

        True when the peer may go on; False when it was refused or the exchange broke (logged,
        the connection closed)."""
        try:
            async with asyncio.timeout(self._timeout_s):
                kind, body = await conn.receive()
                if kind is not FrameKind.IDENTITY:
                    raise RemoteProtocolError(f"expected IDENTITY, got {kind.name}")
                try:
                    self._check_and_accept(conn, peer_id, body, dialed=False)
                except IdentityConflictError as error:
                    log.warning("%s: refused peer %s: %s", self.node_id, peer_id, error)
                    await _refuse(conn, str(error))
                    await conn.wait_closed()
                    return False
                await conn.send(FrameKind.IDENTITY, self._ours())
        except (OSError, TimeoutError, RemoteProtocolError, ValueError) as error:
            log.warning("%s: identity exchange with %s failed: %r", self.node_id, peer_id, error)
            conn.abort()
            return False
        return True


async def _refuse(conn: FramedConnection, reason: str) -> None:
    """Tell the other side why before closing, so its log says so too (best effort)."""
    try:
        await conn.send(FrameKind.ERROR, {"code": ERROR_IDENTITY, "message": reason})
    except (OSError, ValueError):
        pass
    conn.close()


def _refusal(peer_id: str, body: object) -> Exception:
    """The exception for an ERROR frame received instead of the peer's IDENTITY."""
    code = body.get("code") if isinstance(body, dict) else None
    message = body.get("message") if isinstance(body, dict) else None
    text = str(message)[:400] if message is not None else "no reason given"
    if code == ERROR_IDENTITY and text.startswith(IDENTITY_CONFLICT):
        return IdentityConflictError(f"refused by {peer_id!r}: {text}")
    return ConnectionRefusedError(f"{peer_id!r} ended the identity exchange: {text}")


__all__ = ["ERROR_IDENTITY", "IdentityExchange"]
