"""Helpers for the attack tests: real sockets on 127.0.0.1, real `PeerTransport`s and real
`kvstore serve` processes. Waits are on conditions with deadlines, never bare sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from kvstore.consensus.types import Message, MessageType
from kvstore.transport.codec import PROTOCOL_VERSION, FrameKind
from kvstore.transport.tcp import FramedConnection, PeerTransport
from tests.transport.peers import started

MEMBER_SECRET = b"member secret \x00\xff"
CLIENT_SECRET = b"client secret, handed to applications"
TEST_DEADLINE_S = 30.0


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, TEST_DEADLINE_S))


async def wait_until(
    condition: Callable[[], object], timeout_s: float = 10.0, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.005)


def heartbeat(sender: str, recipient: str, term: int = 1) -> Message:
    return Message(MessageType.HEARTBEAT, recipient, sender, term=term)


class Member:
    """One `PeerTransport` with the member and client secrets, and what it delivered. Client
    connections get an echo service: each REQUEST is answered with its body."""

    def __init__(self, node_id: str, **kw: Any) -> None:
        self.node_id = node_id
        self.received: list[Message] = []
        self.requests: list[object] = []
        kw.setdefault("secret", MEMBER_SECRET)
        kw.setdefault("client_secret", CLIENT_SECRET)
        self.transport = PeerTransport(
            node_id,
            "127.0.0.1:0",
            {},
            on_message=self.received.append,
            on_unreachable=lambda peer: None,
            on_client_connection=self.echo,
            **kw,
        )

    async def echo(self, conn: FramedConnection) -> None:
        while True:
            _kind, body = await conn.receive()
            self.requests.append(body)
            await conn.send(FrameKind.RESPONSE, body)


@contextlib.asynccontextmanager
async def members(*ids: str, **kw: Any) -> AsyncIterator[dict[str, Member]]:
    """Started members that know each other's (ephemeral) addresses."""
    nodes = {node_id: Member(node_id, **kw) for node_id in ids}
    async with started(nodes):
        yield nodes


async def read_until_closed(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> bytes | None:
    """Everything the other side sent until it closed; None if it did not close in time."""
    data = b""
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await reader.read(65536):
                data += chunk
    except ConnectionError:
        return data
    except TimeoutError:
        return None
    return data


# --- attackers and observers of real processes ------------------------------------------------


def rss_bytes(pid: int) -> int:
    """The resident set size of process `pid` (VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class RssSampler:
    """Samples a process's RSS every few ms in a thread; `max_bytes` is the peak seen."""

    def __init__(self, pid: int, interval_s: float = 0.005) -> None:
        self.pid = pid
        self.max_bytes = rss_bytes(pid)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.max_bytes = max(self.max_bytes, rss_bytes(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Slowloris:
    """Holds `count` idle TCP connections to each address from a thread: each sends the first
    3 bytes of a frame header and nothing more, and is reopened when the node closes it (at most
    `reopen_per_s` reopenings per second in all). Use as a context manager."""

    def __init__(
        self, addresses: list[str], count: int, *, reopen_per_s: float = 200.0, source: str = ""
    ) -> None:
        self.addresses = addresses
        self.count = count
        self.source = source
        self.opened = 0
        self._reopen_interval_s = 1.0 / reopen_per_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._sockets: list[socket.socket] = []

    def _open(self, address: str) -> socket.socket | None:
        host, port = address.rsplit(":", 1)
        try:
            sock = socket.create_connection(
                (host, int(port)),
                timeout=1.0,
                source_address=(self.source, 0) if self.source else None,
            )
            sock.sendall(b"\x00\x00\x00")
            sock.setblocking(False)
        except OSError:
            return None
        self.opened += 1
        return sock

    def _run(self) -> None:
        held: list[tuple[str, socket.socket | None]] = []
        for address in self.addresses:
            for _ in range(self.count):
                held.append((address, self._open(address)))
        while not self._stop.wait(0.02):
            for i, (address, sock) in enumerate(held):
                if self._stop.is_set():
                    break
                if sock is not None:
                    try:
                        if sock.recv(4096):
                            continue  # something to read: still open
                    except BlockingIOError:
                        continue  # nothing to read: still open
                    except OSError:
                        pass
                    sock.close()
                held[i] = (address, self._open(address))
                time.sleep(self._reopen_interval_s)
        for _, sock in held:
            if sock is not None:
                sock.close()

    def __enter__(self) -> Slowloris:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def bomb(address: str, frame_bytes: int, *, send_bytes: int | None = None) -> bool:
    """Send the header of a `frame_bytes` HELLO full of empty msgpack arrays, then up to
    `send_bytes` of it (default all), without any handshake. True if the node closed the
    connection within 1 s of the header while the body was still incomplete (or while sending)."""
    host, port = address.rsplit(":", 1)
    header = struct.pack(">IBB", frame_bytes, PROTOCOL_VERSION, 1)
    body = b"\x90" * (frame_bytes - 2 if send_bytes is None else min(send_bytes, frame_bytes - 2))
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        try:
            sock.sendall(header + body)
        except OSError:
            return True  # closed while we were sending
        sock.settimeout(1.0)
        try:
            return sock.recv(65536) == b""
        except TimeoutError:
            return False
        except OSError:
            return True
