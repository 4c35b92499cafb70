"""Mutual TLS in one process: `PeerTransport`, `connect_peer`/`connect_client` and `TLSConfig`.

The checks the three-process tests cannot reach: a dialer refuses a listener whose certificate
names another member than the one it dialed (or that it claims to be), and configurations are
checked when they are made.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import kvstore
import kvstore.aio
from kvstore import certs
from kvstore.consensus.types import Message, MessageType
from kvstore.testing.local_cluster import free_ports
from kvstore.transport.tcp import FramedConnection, PeerTransport, connect_client, connect_peer
from kvstore.transport.tls import TLSConfig, client_context

WAIT_S = 10.0


async def _ignore(conn: FramedConnection) -> None:
    await conn.receive()


@contextlib.asynccontextmanager
async def _listener(
    node_id: str, tls: TLSConfig, received: list[Message] | None = None
) -> AsyncIterator[PeerTransport]:
    transport = PeerTransport(
        node_id,
        "127.0.0.1:0",
        {},
        secret=None,
        tls=tls,
        on_message=(received if received is not None else []).append,
        on_unreachable=lambda _peer: None,
        on_client_connection=_ignore,
        is_member=lambda _peer: True,
    )
    await transport.start()
    try:
        yield transport
    finally:
        await transport.close()


def test_peers_exchange_raft_over_tls(pki: Path) -> None:
    async def main() -> list[Message]:
        received: list[Message] = []
        async with _listener("n2", certs.member_config(pki, "n2"), received) as n2:
            sender = PeerTransport(
                "n1",
                "127.0.0.1:0",
                {"n2": n2.address},
                secret=None,
                tls=certs.member_config(pki, "n1"),
                on_message=lambda _msg: None,
                on_unreachable=lambda _peer: None,
                on_client_connection=_ignore,
            )
            await sender.start()
            try:
                sender.send([Message(MessageType.HEARTBEAT, "n2", "n1", term=7)])
                async with asyncio.timeout(WAIT_S):
                    while not received:
                        await asyncio.sleep(0.01)
            finally:
                await sender.close()
        return received

    [message] = asyncio.run(main())
    assert (message.type, message.sender, message.term) == (MessageType.HEARTBEAT, "n1", 7)


def test_dialer_refuses_a_listener_with_another_members_certificate(pki: Path) -> None:
    """An impostor that holds n1's certificate answers as "n3": a peer dialing n3 and a client
    both refuse it, though its handshake names the id they expect."""

    async def main() -> None:
        async with _listener("n3", certs.member_config(pki, "n1")) as impostor:
            with pytest.raises(kvstore.AuthenticationError, match="certificate names member 'n1'"):
                await connect_peer(
                    impostor.address,
                    node_id="n2",
                    target_id="n3",
                    secret=None,
                    member_ids=["n1", "n2", "n3"],
                    timeout_s=WAIT_S,
                    tls_context=client_context(certs.member_config(pki, "n2")),
                )
            with pytest.raises(kvstore.AuthenticationError, match="certificate names"):
                await connect_client(
                    impostor.address,
                    secret=None,
                    timeout_s=WAIT_S,
                    tls_context=client_context(certs.client_config(pki, "app")),
                )

    asyncio.run(main())


def test_a_client_certificate_cannot_serve_as_a_member(pki: Path) -> None:
    """A listener presenting a client certificate is refused by TLS itself (clients' certificates
    are for client authentication only) or by the identity check."""
    app = certs.client_config(pki, "app")

    async def main() -> None:
        async with _listener("n1", app) as fake:
            with pytest.raises(kvstore.AuthenticationError):
                await connect_client(
                    fake.address, secret=None, timeout_s=WAIT_S, tls_context=client_context(app)
                )

    asyncio.run(main())


def test_tls_config_checks_its_files(pki: Path, tmp_path: Path) -> None:
    ca, cert, key = pki / "ca.crt", pki / "member-n1.crt", pki / "member-n1.key"
    assert TLSConfig(str(ca), str(cert), str(key)).cert_file == str(cert)
    with pytest.raises(kvstore.InvalidArgumentError, match=r"missing\.crt"):
        TLSConfig(str(ca), str(tmp_path / "missing.crt"), str(key))
    loose = tmp_path / "loose.key"
    shutil.copy(key, loose)
    os.chmod(loose, 0o640)
    with pytest.raises(kvstore.InvalidArgumentError, match=r"loose\.key.*group or others"):
        TLSConfig(str(ca), str(cert), str(loose))
    with pytest.raises(kvstore.InvalidArgumentError, match="does not match"):
        TLSConfig(str(ca), str(pki / "member-n2.crt"), str(key))


def test_tls_and_secret_are_exclusive_and_a_node_needs_its_own_certificate(
    pki: Path, tmp_path: Path
) -> None:
    peers = {"n1": f"127.0.0.1:{free_ports(1)[0]}"}
    n1 = certs.member_config(pki, "n1")
    with pytest.raises(kvstore.InvalidArgumentError, match="not both"):
        kvstore.Node("n1", tmp_path / "a", peers, tls=n1, secret=b"s")
    with pytest.raises(kvstore.InvalidArgumentError, match="not both"):
        kvstore.Client(list(peers.values()), tls=n1, secret=b"s")
    with pytest.raises(kvstore.InvalidArgumentError, match="not both"):
        kvstore.aio.Client(list(peers.values()), tls=n1, secret=b"s")
    with pytest.raises(kvstore.InvalidArgumentError, match="kvstore://client/app"):
        kvstore.Node("n1", tmp_path / "b", peers, tls=certs.client_config(pki, "app"))
    with pytest.raises(kvstore.InvalidArgumentError, match="TLSConfig"):
        kvstore.Client(list(peers.values()), tls="ca.crt")  # type: ignore[arg-type]
