"""Mutual TLS against three real `kvstore serve` processes (`LocalCluster(tls=True)`).

Clients with a client certificate read and write; everything else is refused: a client
certificate asking to speak Raft as member n2, a member's certificate claiming another member's
id, a dialer without a certificate, certificates of another CA, and bytes altered on the way
(the TLS record check fails, the connection dies, no altered value is ever stored).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import kvstore
import kvstore.aio
from kvstore import certs
from kvstore.consensus.types import Entry, Message, MessageType
from kvstore.storage.commands import encode_put
from kvstore.testing.local_cluster import LocalCluster, wait_until
from kvstore.transport.codec import FrameKind
from kvstore.transport.tcp import connect_client, connect_peer
from kvstore.transport.tls import client_context

WAIT_S = 20.0

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3, tls=True) as running:
        with kvstore.Client(running.addresses, tls=running.client_tls) as client:
            running.wait_for_leader(client, timeout_s=WAIT_S)
        yield running


def _client(cluster: LocalCluster, **kwargs: object) -> kvstore.Client:
    return kvstore.Client(cluster.addresses, tls=cluster.client_tls, **kwargs)  # type: ignore[arg-type]


def _follower(cluster: LocalCluster, client: kvstore.Client) -> tuple[str, kvstore.Status]:
    leader = cluster.wait_for_leader(client, timeout_s=WAIT_S)
    node_id = next(m.node_id for m in cluster if m.node_id != leader)
    return node_id, client.status(cluster.members[node_id].address)


def _wait_for_log(cluster: LocalCluster, node_id: str, text: str) -> None:
    wait_until(
        lambda: text in cluster.log_tail(node_id, 200),
        timeout_s=WAIT_S,
        what=f"{text!r} in the log of {node_id}",
    )


def test_put_get_through_both_clients(cluster: LocalCluster) -> None:
    with _client(cluster) as client:
        client.put(b"tls/sync", b"one")
        assert client.get(b"tls/sync") == b"one"

    async def main() -> bytes | None:
        async with kvstore.aio.Client(cluster.addresses, tls=cluster.client_tls) as aio:
            await aio.put(b"tls/aio", b"two")
            assert await aio.get(b"tls/aio", consistency="linearizable") == b"two"
            return await aio.get(b"tls/sync")

    assert asyncio.run(main()) == b"one"


def test_client_certificate_cannot_speak_raft(cluster: LocalCluster) -> None:
    """The attack of issue 11: a client credential connects as member n2 and sends a forged
    APPEND (a higher term, one PUT, a commit covering it). It must be refused at the handshake,
    naming the conflict, and nothing may be applied."""
    assert cluster.client_tls is not None
    with _client(cluster) as client:
        target, status = _follower(cluster, client)
        forger = next(m.node_id for m in cluster if m.node_id != target)

        async def attack() -> None:
            conn = await connect_peer(
                cluster.members[target].address,
                node_id=forger,
                target_id=target,
                secret=None,
                member_ids=list(cluster.members),
                timeout_s=5.0,
                tls_context=client_context(cluster.client_tls),  # type: ignore[arg-type]
            )
            # Only reached if the listener let a client certificate in: try the forgery.
            term, index = status.term + 5, status.commit_index
            forged = encode_put(b"forger-client-id", 1, b"tls/forged", b"evil")
            append = Message(
                MessageType.APPEND,
                target,
                forger,
                term=term,
                log_term=status.term,
                index=index,
                entries=(Entry(term, index + 1, data=forged),),
                commit=index + 1,
            )
            await conn.send(FrameKind.RAFT, [append])
            await asyncio.sleep(1.0)
            conn.close()

        with pytest.raises(kvstore.AuthenticationError, match="client certificate"):
            asyncio.run(attack())
        _wait_for_log(cluster, target, "cannot open a peer connection")
        assert client.get(b"tls/forged") is None
        after = client.status(cluster.members[target].address)
        assert after.term == status.term


def test_member_certificate_cannot_claim_another_member(cluster: LocalCluster) -> None:
    assert cluster.certs_dir is not None
    as_n1 = certs.member_config(cluster.certs_dir, "n1")

    async def claim_n2() -> None:
        conn = await connect_peer(
            cluster.members["n3"].address,
            node_id="n2",
            target_id="n3",
            secret=None,
            member_ids=list(cluster.members),
            timeout_s=5.0,
            tls_context=client_context(as_n1),
        )
        conn.close()

    with pytest.raises(kvstore.AuthenticationError, match=r"member 'n1'.*as member 'n2'"):
        asyncio.run(claim_n2())
    _wait_for_log(cluster, "n3", "cannot open a peer connection as member 'n2'")


def test_dialer_without_a_certificate_is_refused(cluster: LocalCluster) -> None:
    assert cluster.client_tls is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(
        cafile=cluster.client_tls.ca_file
    )  # trusts the node, shows nothing

    async def dial() -> None:
        conn = await connect_client(
            cluster.addresses[0], secret=None, timeout_s=5.0, tls_context=context
        )
        conn.close()

    with pytest.raises((kvstore.AuthenticationError, ConnectionError)):
        asyncio.run(dial())


def test_plaintext_client_is_refused(cluster: LocalCluster) -> None:
    with (
        kvstore.Client(cluster.addresses, timeout_s=1.0) as plain,
        pytest.raises(kvstore.UnavailableError),
    ):
        plain.put(b"tls/plain", b"x", timeout_s=1.0)
    with _client(cluster) as client:
        assert client.get(b"tls/plain") is None


def test_certificates_of_another_ca_are_refused(cluster: LocalCluster, tmp_path: Path) -> None:
    """Both ways: a client of another CA does not trust our members, and our members do not
    take its certificate even when it trusts them."""
    assert cluster.client_tls is not None
    other = tmp_path / "other"
    certs.init_ca(other, cluster="other")
    certs.issue_client(other, "intruder")
    intruder = certs.client_config(other, "intruder")
    with (
        kvstore.Client(cluster.addresses, tls=intruder, timeout_s=3.0) as client,
        pytest.raises(kvstore.AuthenticationError, match="TLS refused"),
    ):
        client.put(b"tls/intruder", b"x")

    # Trusts our CA, but presents a certificate our CA never signed.
    context = client_context(intruder)
    context.load_verify_locations(cafile=cluster.client_tls.ca_file)

    async def dial() -> None:
        conn = await connect_client(
            cluster.addresses[0], secret=None, timeout_s=5.0, tls_context=context
        )
        conn.close()

    with pytest.raises((kvstore.AuthenticationError, ConnectionError)):
        asyncio.run(dial())
    with _client(cluster) as client:
        assert client.get(b"tls/intruder") is None


class _FlippingProxy:
    """A TCP proxy on 127.0.0.1 that flips one byte in the middle of the first client-to-server
    chunk of at least `flip_bytes_min` bytes (past the TLS handshake, inside a request), once."""

    def __init__(self, target: str, *, flip_bytes_min: int) -> None:
        self.target = target
        self.flip_bytes_min = flip_bytes_min
        self.flipped = 0
        self.address = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10.0):
            raise TimeoutError("proxy did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        self._server = server
        self._ready.set()
        self._loop.run_forever()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.target.rsplit(":", 1)
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pump(reader, up_writer, flip=True),
            self._pump(up_reader, writer, flip=False),
            return_exceptions=True,
        )

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, flip: bool
    ) -> None:
        try:
            while data := await reader.read(1 << 16):
                if flip and not self.flipped and len(data) >= self.flip_bytes_min:
                    self.flipped += 1
                    middle = len(data) // 2
                    data = data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def close(self) -> None:
        async def shutdown() -> None:
            self._server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        self._loop.close()


def test_flipped_byte_breaks_the_connection_and_stores_nothing_altered(
    cluster: LocalCluster,
) -> None:
    value = b"good-value-" * 800  # ~8.8 KB: one big chunk, well past the TLS handshake's
    with _client(cluster) as client:
        leader = cluster.wait_for_leader(client, timeout_s=WAIT_S)
    proxy = _FlippingProxy(cluster.members[leader].address, flip_bytes_min=len(value) // 2)
    try:
        # The altered record fails TLS's integrity check: that connection dies, and the client's
        # retry (the proxy flips once) goes through unaltered.
        with (
            kvstore.Client([proxy.address], tls=cluster.client_tls, timeout_s=10.0) as victim,
            contextlib.suppress(kvstore.KVStoreError),
        ):
            victim.put(b"tls/tampered", value, timeout_s=10.0)
        assert proxy.flipped == 1
    finally:
        proxy.close()
    with _client(cluster) as client:
        stored = client.get(b"tls/tampered")
    assert stored in (None, value)


def test_member_cannot_start_with_another_members_certificate(cluster: LocalCluster) -> None:
    assert cluster.certs_dir is not None
    with pytest.raises(kvstore.InvalidArgumentError, match="names kvstore://member/n1"):
        kvstore.Node(
            "n2",
            cluster.base_dir / "wrong-cert",
            {"n2": "127.0.0.1:1"},
            tls=certs.member_config(cluster.certs_dir, "n1"),
        )
