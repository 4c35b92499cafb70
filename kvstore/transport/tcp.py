"""The asyncio TCP layer over the sans-I/O codec, handshake and frame MAC.

- `FramedConnection`: one TCP connection after its handshake, sending and receiving frames;
  after a shared-secret handshake every frame it sends is followed by a MAC tag and every frame
  it receives is verified before its body is decoded (`kvstore.transport.frame_mac`): a frame
  that fails closes the connection.
- `connect_client()`: what `kvstore.Client` calls to reach a node.
- `PeerTransport`: what the node uses. It listens on one address for peers and clients alike
  (the HELLO says which), keeps one outbound connection per peer, and passes one-way Raft
  messages: `send()` never blocks and never raises; failures are reported via `on_unreachable`.

What a connection costs the listener before it is authenticated (`PeerTransport`):
- frames of at most `HANDSHAKE_FRAME_BYTES_MAX` (4 KiB): a bigger length prefix closes the
  connection as soon as its 6-byte header is in, before any body is read or decoded;
- reads of at most that size, and `handshake_timeout_s` (2 s) for the whole handshake;
- at most `handshakes_max` connections in their handshake at once, and at most
  `handshakes_per_address_max` from one source address. A new connection beyond either cap
  evicts the OLDEST unauthenticated one (of its address, or overall) instead of being refused:
  idle connections cannot lock anyone out (slowloris), and a real client or a reconnecting
  member, whose handshake takes a round trip or two, is evicted only if that many newer
  connections arrive within that time;
- nothing about the cluster: the listener sends its nonce and nothing else until the dialer's
  proof verified (see `kvstore.transport.auth`).
Refusals, evictions, timeouts and protocol errors are logged through a token bucket per reason,
with a "suppressed N similar" count on the next line that gets through.

Established connections: a peer connection may send only RAFT, SNAPSHOT_CHUNK, IDENTITY and
ERROR frames, a client connection only REQUEST frames; anything else closes it. Established member
connections never count against the client cap, which follows RLIMIT_NOFILE: the soft limit
minus a reserve for the log, LMDB, snapshots, peers, handshakes and the accept backlog
(`client_connection_cap()`), never above `client_connections_max`. Beyond it a new client is
turned away with `ERROR_BUSY`, so the node's own files can still be opened.

With a TLS configuration (kvstore/transport/tls.py) every connection is mutual TLS 1.3: the
listener is a TLS server that requires a client certificate, dialers present theirs, and the
identity each certificate names is checked against the ids of the handshake (at the accept and
dial points below, in the blocks marked TLS); the handshake itself then runs without a secret.

Everything here runs on one event loop; call `PeerTransport` methods from that loop's thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import resource
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

from kvstore.consensus.types import Message, MessageType
from kvstore.errors import AuthenticationError, RemoteProtocolError
from kvstore.transport.auth import (
    ROLE_CLIENT,
    ROLE_PEER,
    DialerHandshake,
    ListenerHandshake,
    Outgoing,
    refusal_body,
)
from kvstore.transport.codec import (
    DIALER_HANDSHAKE_FRAME_BYTES_MAX,
    HANDSHAKE_FRAME_BYTES_MAX,
    NEED_DATA,
    FrameDecoder,
    FrameKind,
    decode_batch,
    encode_frame,
)
from kvstore.transport.frame_mac import FrameAuthenticator
from kvstore.transport.tls import (
    Identity,
    TLSConfig,
    check_listener,
    check_peer_claim,
    client_context,
    connection_identity,
    server_context,
)

if TYPE_CHECKING:
    from kvstore.transport.identity import IdentityExchange

log = logging.getLogger("kvstore.transport")

READ_CHUNK_BYTES: Final = 256 << 10
"""Bytes asked of the socket per read; also the stream reader's buffer limit."""

ROLE_NODE: Final = "node"
"""`FramedConnection.role` of a connection made by `connect_client`: the other side is a node."""

HANDSHAKE_TIMEOUT_S: Final = 2.0
"""Default time an inbound connection has to finish its handshake."""

DIAL_TIMEOUT_S: Final = 5.0
"""Default time an outbound peer connection has to connect and finish its handshake."""

HANDSHAKES_MAX: Final = 64
"""Default number of inbound connections allowed in their handshake at once."""

HANDSHAKES_PER_ADDRESS_MAX: Final = 32
"""Default number of inbound connections from one source address in their handshake at once."""

ACCEPT_BACKLOG: Final = 64
"""The listen backlog; also how many connections one accept burst may open at once (each is
evicted or admitted as soon as its handler runs, but holds a descriptor until then)."""

FD_RESERVE: Final = 64
"""File descriptors kept out of the client cap for the log, LMDB, snapshots and the runtime."""

FD_RESERVE_PER_PEER: Final = 4
"""File descriptors kept per peer (its inbound and outbound connections, a snapshot stream)."""

SEND_COALESCE_BYTES_MAX: Final = 256 << 10
"""Frames and tags up to this size are joined into one write; bigger ones are written apart
(a join would copy them)."""

ERROR_BUSY: Final = "busy"
"""ERROR code sent to a client turned away because the node has too many client connections."""

PEER_FRAME_KINDS: Final = frozenset(
    {FrameKind.RAFT, FrameKind.SNAPSHOT_CHUNK, FrameKind.ERROR, FrameKind.IDENTITY}
)
"""What an authenticated peer may send on its connection to us."""

CLIENT_FRAME_KINDS: Final = frozenset({FrameKind.REQUEST})
"""What an authenticated client may send: never a peer frame, whatever secret it holds."""

LOG_BURST: Final = 5
"""Lines per reason logged at once before the rate limit applies."""

LOG_LINES_PER_S: Final = 0.2
"""Lines per reason per second past the burst (one every 5 s)."""


class RateLimitedLog:
    """A token bucket per reason in front of a logger: `LOG_BURST` lines at once, then
    `LOG_LINES_PER_S`. Lines beyond are counted and the count is appended to the next line of
    that reason that gets through ("suppressed N similar"). Reasons are a fixed set of short
    strings chosen by the code, never by the other side, so the table stays small."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = LOG_BURST,
        lines_per_s: float = LOG_LINES_PER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._burst = float(burst)
        self._lines_per_s = lines_per_s
        self._clock = clock
        self._buckets: dict[str, list[float]] = {}  # reason -> [tokens, last refill, suppressed]

    def log(self, reason: str, level: int, msg: str, *args: object) -> bool:
        """Log `msg % args` at `level` if the bucket of `reason` has a token; True if logged."""
        if not self._logger.isEnabledFor(level):
            return False
        now = self._clock()
        bucket = self._buckets.get(reason)
        if bucket is None:
            bucket = self._buckets[reason] = [self._burst, now, 0.0]
        tokens = min(self._burst, bucket[0] + (now - bucket[1]) * self._lines_per_s)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            bucket[2] += 1
            return False
        bucket[0] = tokens - 1.0
        suppressed = int(bucket[2])
        bucket[2] = 0.0
        if suppressed:
            msg += f" (suppressed {suppressed} similar)"
        self._logger.log(level, msg, *args)
        return True

    def suppressed(self, reason: str) -> int:
        """Lines of `reason` dropped since the last one logged."""
        bucket = self._buckets.get(reason)
        return 0 if bucket is None else int(bucket[2])

    def flush(self, level: int = logging.WARNING) -> None:
        """Log one summary line per reason with lines still suppressed (e.g. at shutdown, so
        the count of an attack that stopped is not lost)."""
        for reason, bucket in self._buckets.items():
            if bucket[2]:
                self._logger.log(
                    level,
                    "suppressed %d similar lines (%s) since the last one",
                    int(bucket[2]),
                    reason,
                )
                bucket[2] = 0.0


limited_log = RateLimitedLog(log)
"""The rate-limited log of `FramedConnection`s (each `PeerTransport` has its own as well)."""

_CLOSE_TIMEOUT_S: Final = 1.0

BACKOFF_INITIAL_S: Final = 0.05
BACKOFF_MAX_S: Final = 2.0


def parse_address(address: str) -> tuple[str, int]:
    """Split `"host:port"` (or `"[v6]:port"`) into host and port; `ValueError` if malformed."""
    host, sep, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"address must be 'host:port', got {address!r}")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    """Inverse of `parse_address`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class FramedConnection:
    """One TCP connection after a successful handshake: frames in, frames out.

    `receive()` is for one reader at a time; any number of tasks may send. Bytes that break the
    protocol (a frame whose MAC fails included) close the connection and are logged (rate
    limited); the caller sees `RemoteProtocolError`.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        frame_bytes_max: int,
        write_buffer_bytes_max: int = 64 << 20,
        peer_id: str | None = None,
        role: str | None = None,
        read_chunk_bytes: int = READ_CHUNK_BYTES,
    ) -> None:
        """`frame_bytes_max` bounds frames in both directions; `write_buffer_bytes_max` bounds
        what `send_nowait` may leave in the write buffer; `read_chunk_bytes` what one read asks
        of the socket (small while the other side is not authenticated)."""
        self._reader = reader
        self._writer = writer
        self._decoder = FrameDecoder(frame_bytes_max)
        self._frame_bytes_max = frame_bytes_max
        self._write_buffer_bytes_max = write_buffer_bytes_max
        self._read_chunk_bytes = read_chunk_bytes
        self._mac: FrameAuthenticator | None = None
        self._closed = False
        self.receivable_kinds: frozenset[FrameKind] | None = None
        """The frame kinds the other side may send (None: any); another kind closes the
        connection with `RemoteProtocolError`."""
        self.peer_id: str | None = peer_id
        """The authenticated node id of the other side; None when the other side is a client."""
        self.role: str | None = role
        """What the other side is: `"peer"` (a member), `"client"`, or `"node"` (we are the
        client that dialed it)."""
        peer = writer.get_extra_info("peername")
        self.remote_address: str = (
            format_address(str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else "?"
        )
        """The other side's "host:port", for logs."""
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Raft messages and client requests are small and latency-bound: no Nagle delay.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def __repr__(self) -> str:
        return f"<FramedConnection {self.role or '?'} {self.peer_id or ''}@{self.remote_address}>"

    @property
    def authenticated_frames(self) -> bool:
        """Whether every frame carries a MAC (after a shared-secret handshake)."""
        return self._mac is not None

    def authenticate_frames(self, authenticator: FrameAuthenticator) -> None:
        """From now on, seal every frame we send and verify every frame we receive with
        `authenticator` (what the handshake derived). Call once, right after the handshake."""
        if self._mac is not None:
            raise RuntimeError("frames are already authenticated")
        self._mac = authenticator
        self._decoder.authenticate_with(authenticator)

    def set_limits(self, *, frame_bytes_max: int, read_chunk_bytes: int) -> None:
        """Change the frame limit (both directions) and the read size, e.g. once the other side
        is authenticated."""
        self._decoder.frame_bytes_max = frame_bytes_max
        self._frame_bytes_max = frame_bytes_max
        self._read_chunk_bytes = read_chunk_bytes

    @property
    def closed(self) -> bool:
        """Whether `close()` was called or the connection was found broken."""
        return self._closed or self._writer.is_closing()

    @property
    def write_buffer_bytes(self) -> int:
        """Bytes written but not yet handed to the kernel."""
        return self._writer.transport.get_write_buffer_size()

    async def receive(self) -> tuple[FrameKind, object]:
        """Return the next frame. Raises `ConnectionError` once the connection is closed (by
        either side), `RemoteProtocolError` on bytes that break the protocol (logged; the
        connection is closed)."""
        decoder = self._decoder
        while True:
            try:
                frame = decoder.next_frame()
                if frame is not NEED_DATA:
                    kinds = self.receivable_kinds
                    if kinds is not None and frame[0] not in kinds:
                        raise RemoteProtocolError(
                            f"a {self.role} connection may not send {frame[0].name} frames"
                        )
            except RemoteProtocolError as exc:
                # Abort: a stream that broke the protocol (or failed its MAC) gets no more
                # bytes from us, buffered or not.
                self.abort()
                limited_log.log(
                    "protocol-error", logging.WARNING, "closing connection %r: %s", self, exc
                )
                raise
            except ConnectionError:
                self.close()
                raise
            if frame is not NEED_DATA:
                return frame
            if self._closed:
                raise ConnectionError("connection closed")
            try:
                data = await self._reader.read(self._read_chunk_bytes)
            except OSError:
                self.close()
                raise
            decoder.receive_data(data)

    def send_nowait(self, kind: FrameKind, body: object) -> None:
        """Buffer one frame for sending without waiting.

        Raises `ConnectionError` if the connection is closed, `BufferError` if the write buffer
        already holds more than `write_buffer_bytes_max` (the other side is not reading), and
        `ValueError` if the frame would exceed `frame_bytes_max`.
        """
        if self.closed:
            raise ConnectionError("connection closed")
        if self.write_buffer_bytes > self._write_buffer_bytes_max:
            raise BufferError(
                f"write buffer of {self!r} holds over {self._write_buffer_bytes_max} bytes"
            )
        self._write_frames((encode_frame(kind, body, frame_bytes_max=self._frame_bytes_max),))

    async def send(self, kind: FrameKind, body: object) -> None:
        """Send one frame, waiting while the write buffer is above its high-water mark.

        Raises `ConnectionError` if the connection is closed, `ValueError` if the frame would
        exceed `frame_bytes_max`.
        """
        if self.closed:
            raise ConnectionError("connection closed")
        self._write_frames((encode_frame(kind, body, frame_bytes_max=self._frame_bytes_max),))
        await self._writer.drain()

    async def drain(self) -> None:
        """Wait until the write buffer is below its high-water mark."""
        await self._writer.drain()

    def _write_bytes(self, data: bytes) -> None:
        """Write raw bytes, no MAC added (tests use it to send what a broken peer would)."""
        self._writer.write(data)

    def _write_frames(self, frames: Sequence[bytes]) -> None:
        """Write already-encoded frames in order, each followed by its tag when frames are
        authenticated; small ones coalesced into one write (one syscall, fewer packets)."""
        mac = self._mac
        write = self._writer.write
        if mac is None:
            write(frames[0] if len(frames) == 1 else b"".join(frames))
            return
        parts: list[bytes] = []
        size = 0
        for frame in frames:
            tag = mac.seal(frame)  # sealed in write order: the sequence numbers follow it
            if len(frame) > SEND_COALESCE_BYTES_MAX:
                if parts:
                    write(b"".join(parts))
                    parts, size = [], 0
                write(frame)
                write(tag)
                continue
            parts.append(frame)
            parts.append(tag)
            size += len(frame)
            if size > SEND_COALESCE_BYTES_MAX:
                write(b"".join(parts))
                parts, size = [], 0
        if parts:
            write(b"".join(parts))

    def close(self) -> None:
        """Close the connection (what is buffered is still sent). Idempotent."""
        if not self._closed:
            self._closed = True
            self._writer.close()

    def abort(self) -> None:
        """Close at once, dropping whatever is buffered."""
        self._closed = True
        self._writer.transport.abort()

    async def wait_closed(self) -> None:
        """Wait until the connection is closed; never raises for a broken connection."""
        try:
            # Bounded: a graceful close waits for the other side to take the buffered bytes.
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self._writer.wait_closed()
        except TimeoutError:
            self.abort()
        except OSError:
            pass


async def _run_handshake(
    conn: FramedConnection, handshake: DialerHandshake | ListenerHandshake, first: Outgoing
) -> None:
    """Exchange handshake frames until `handshake` is established; nothing else is read."""
    for kind, body in first:
        conn.send_nowait(kind, body)
    await conn.drain()
    while not handshake.established:
        kind, body = await conn.receive()
        for out_kind, out_body in handshake.receive(kind, body):
            conn.send_nowait(out_kind, out_body)
        await conn.drain()
    # The handshake's own frames went out bare; from the next frame on, both ways, every frame
    # carries its MAC. Nothing past the handshake's last frame has been decoded yet.
    authenticator = handshake.frame_authenticator()
    if authenticator is not None:
        conn.authenticate_frames(authenticator)


def _send_refusal(conn: FramedConnection, reason: str) -> None:
    # Best effort: tell the other side why before closing, so its error says so too.
    with contextlib.suppress(ConnectionError, BufferError, ValueError, OSError):
        conn.send_nowait(FrameKind.ERROR, refusal_body(reason))


async def _dial(
    address: str,
    handshake: DialerHandshake,
    *,
    frame_bytes_max: int,
    role: str,
    tls_context: ssl.SSLContext | None = None,
    target_id: str | None = None,
) -> FramedConnection:
    """Connect to `address` and run the dialer side of the handshake (no timeout here).

    With `tls_context`, the connection is TLS and the listener's certificate must name a member
    (`target_id` when given) before anything is sent.
    """
    host, port = parse_address(address)
    try:
        reader, writer = await asyncio.open_connection(
            host, port, limit=READ_CHUNK_BYTES, ssl=tls_context
        )
    except ssl.SSLError as exc:
        raise _tls_refusal(exc) from exc
    # Until the node proved itself it gets no more room than a handshake needs.
    conn = FramedConnection(
        reader,
        writer,
        frame_bytes_max=min(frame_bytes_max, DIALER_HANDSHAKE_FRAME_BYTES_MAX),
        role=role,
    )
    try:
        identity = None
        if tls_context is not None:
            identity = _tls_identity(conn)
            check_listener(identity, target_id)
        try:
            await _run_handshake(conn, handshake, handshake.start())
        except ssl.SSLError as exc:
            # TLS 1.3: the listener checks our certificate after our side of the TLS handshake
            # is done, so its refusal arrives as an alert on the first read.
            raise _tls_refusal(exc) from exc
        if identity is not None:
            _check_dialed_identity(identity, handshake.peer_id)
        conn.set_limits(frame_bytes_max=frame_bytes_max, read_chunk_bytes=READ_CHUNK_BYTES)
    except AuthenticationError as exc:
        _send_refusal(conn, str(exc))
        conn.close()
        await conn.wait_closed()
        raise
    except BaseException:
        conn.abort()
        raise
    conn.peer_id = handshake.peer_id
    return conn


async def connect_client(
    address: str,
    *,
    secret: bytes | None,
    timeout_s: float,
    frame_bytes_max: int = 16 << 20,
    tls_context: ssl.SSLContext | None = None,
) -> FramedConnection:
    """Dial a node at `"host:port"` as a client and complete the handshake.

    With a `secret` (the client secret), both sides prove they hold it and every later frame
    is authenticated. The returned connection's `peer_id` is the
    node's id (proven when there is a secret). Raises `AuthenticationError` if the node refuses
    us or cannot prove the secret, `ConnectionError`/`OSError` if it cannot be reached,
    `TimeoutError` if connecting and the handshake take longer than `timeout_s`, `ValueError`
    on a malformed address. With `tls_context` (`kvstore.transport.tls.client_context`) the
    connection is mutual TLS and the node must present a member certificate; a TLS refusal
    either way raises `AuthenticationError`.
    """
    handshake = DialerHandshake(role=ROLE_CLIENT, node_id=None, target_id=None, secret=secret)
    async with asyncio.timeout(timeout_s):
        return await _dial(
            address,
            handshake,
            frame_bytes_max=frame_bytes_max,
            role=ROLE_NODE,
            tls_context=tls_context,
        )


async def connect_peer(
    address: str,
    *,
    node_id: str,
    target_id: str,
    secret: bytes | None,
    member_ids: Iterable[str],
    timeout_s: float,
    frame_bytes_max: int = 64 << 20,
    consensus: str = "raft",
    tls_context: ssl.SSLContext | None = None,
) -> FramedConnection:
    """Dial `target_id` at `address` as the peer `node_id` (what `PeerTransport` does for each
    peer; public for tools and tests). Raises like `connect_client`, and `AuthenticationError`
    also when the listener is not `target_id` (`ConsensusMismatchError` when it runs another
    `consensus` protocol). With `tls_context`, the listener's certificate must name member
    `target_id`."""
    handshake = DialerHandshake(
        role=ROLE_PEER,
        node_id=node_id,
        target_id=target_id,
        secret=secret,
        member_ids=member_ids,
        consensus=consensus,
    )
    async with asyncio.timeout(timeout_s):
        return await _dial(
            address,
            handshake,
            frame_bytes_max=frame_bytes_max,
            role=ROLE_PEER,
            tls_context=tls_context,
            target_id=target_id,
        )


# --- TLS identity checks (mutual TLS: kvstore/transport/tls.py) ---------------------------------


def _tls_identity(conn: FramedConnection) -> Identity:
    """The verified identity in the other side's certificate; `AuthenticationError` if none."""
    return connection_identity(conn._writer.get_extra_info("ssl_object"))


def _check_dialed_identity(identity: Identity, listener_id: str | None) -> None:
    # The handshake's id must be the one the certificate proves (clients dial any member).
    if listener_id != identity.name:
        raise AuthenticationError(
            f"the listener says it is {listener_id!r} but its certificate names {identity}"
        )


def _tls_refusal(exc: ssl.SSLError) -> Exception:
    """A TLS failure while dialing: a refused or unverifiable certificate is an authentication
    failure (not worth retrying); a connection cut mid-handshake stays an `OSError`."""
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError):
        return exc
    return AuthenticationError(f"TLS refused: {exc.reason or exc}")


# --- the node's transport ---------------------------------------------------------------------


class _PeerLink:
    """The outbound side towards one peer: a bounded queue of encoded frames and a task that
    dials, runs the handshake, then writes whatever is queued, reconnecting with backoff."""

    def __init__(self, transport: PeerTransport, peer_id: str) -> None:
        self.peer_id = peer_id
        self._transport = transport
        self._frames: collections.deque[bytes] = collections.deque()
        self._frame_bytes = 0
        self._chunks: collections.deque[bytes] = collections.deque()
        self._chunk_bytes = 0
        self._wakeup = asyncio.Event()
        self._conn: FramedConnection | None = None
        self._backoff_s = BACKOFF_INITIAL_S
        self._failures = 0
        self._dial_now = transport.identity is not None and transport.identity.dial_at_start
        """Dial before anything is queued: with identities, every member dials every peer
        at start, so it knows each peer's incarnation before anyone else claims the id."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"peer-{peer_id}")

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    @property
    def queued_bytes(self) -> int:
        return self._frame_bytes + self._chunk_bytes

    def enqueue(self, frame: bytes) -> bool:
        """Queue a RAFT frame; False (nothing queued) when the queue is full."""
        conn = self._conn
        if (
            conn is not None
            and not self._frames
            and not self._chunks
            and not conn.closed
            and conn.write_buffer_bytes == 0
        ):
            # Nothing waits ahead of this frame and the kernel took every byte so far: write it
            # now rather than wake the pump, one loop iteration less per message on the path
            # of every commit and read index. Bytes the kernel does not take stay in the
            # connection's buffer, in order; later frames then queue behind them and the pump
            # drains with its stall timeout.
            try:
                conn._write_frames((frame,))
            except (OSError, RuntimeError):
                pass  # closing under us: queue it instead, the pump reconnects
            else:
                return True
        if self._frame_bytes + len(frame) > self._transport.send_queue_bytes_max:
            return False
        self._frames.append(frame)
        self._frame_bytes += len(frame)
        self._wakeup.set()
        return True

    def enqueue_chunk(self, frame: bytes) -> bool:
        """Queue a SNAPSHOT_CHUNK frame; False when the snapshot queue is full."""
        size = len(frame)
        # One chunk is always accepted into an empty queue, however big, so progress is possible.
        if self._chunks and self._chunk_bytes + size > self._transport.snapshot_queue_bytes_max:
            return False
        self._chunks.append(frame)
        self._chunk_bytes += size
        self._wakeup.set()
        return True

    def redial(self) -> None:
        """Drop the current connection (the peer's address changed); the next frame redials."""
        if self._conn is not None:
            self._conn.close()
        self._wakeup.set()

    async def stop(self) -> None:
        self._task.cancel()
        if self._conn is not None:
            self._conn.abort()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def _drop_queued(self) -> None:
        dropped = bool(self._frames or self._chunks)
        self._frames.clear()
        self._chunks.clear()
        self._frame_bytes = self._chunk_bytes = 0
        if dropped:
            self._transport._report_unreachable(self.peer_id)

    async def _run(self) -> None:
        while True:
            try:
                await self._run_once()
            except Exception:
                # A bug here must not silently stop all traffic to this peer.
                log.exception("%s: link to %s failed", self._transport.node_id, self.peer_id)
                self._drop_queued()
                await asyncio.sleep(BACKOFF_MAX_S)

    async def _run_once(self) -> None:
        """Wait for something to send, connect, and write until the connection is lost."""
        transport = self._transport
        while not (self._frames or self._chunks or self._dial_now):
            self._wakeup.clear()
            await self._wakeup.wait()
        conn = await self._connect()
        if conn is None:
            # Messages that waited for a dial that failed are stale: the core retries.
            self._drop_queued()
            delay_s = self._backoff_s * transport._rng.uniform(0.5, 1.5)
            self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
            await asyncio.sleep(delay_s)
            return
        self._conn = conn
        self._failures = 0
        self._dial_now = False
        connected_at = asyncio.get_running_loop().time()
        try:
            await self._pump(conn)
        finally:
            self._conn = None
            conn.abort()
            await conn.wait_closed()
        transport._report_unreachable(self.peer_id)
        if asyncio.get_running_loop().time() - connected_at < BACKOFF_MAX_S:
            # A peer that accepts and then drops us at once must not make us spin.
            await asyncio.sleep(self._backoff_s * transport._rng.uniform(0.5, 1.5))
            self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
        else:
            self._backoff_s = BACKOFF_INITIAL_S

    async def _connect(self) -> FramedConnection | None:
        transport = self._transport
        address = transport._peers.get(self.peer_id)
        if address is None:
            return None
        try:
            conn = await connect_peer(
                address,
                node_id=transport.node_id,
                target_id=self.peer_id,
                secret=transport._secret,
                member_ids=transport._member_ids(),
                timeout_s=transport.dial_timeout_s,
                frame_bytes_max=transport.frame_bytes_max,
                consensus=transport.consensus,
                tls_context=transport._client_tls,
            )
            if transport.identity is not None:  # cluster id and incarnation (identity.py)
                await transport.identity.offer(conn, self.peer_id)
        except AuthenticationError as exc:
            # A configuration error (wrong secret, wrong address): always worth a warning.
            log.warning(
                "%s: peer %s at %s refused: %s", transport.node_id, self.peer_id, address, exc
            )
            return None
        except (OSError, TimeoutError, RemoteProtocolError, ValueError) as exc:
            self._failures += 1
            # Say it once per outage; a down peer would otherwise log every backoff period.
            level = logging.WARNING if self._failures == 1 else logging.DEBUG
            log.log(
                level,
                "%s: cannot reach peer %s at %s: %r",
                transport.node_id,
                self.peer_id,
                address,
                exc,
            )
            return None
        log.info("%s: connected to peer %s at %s", transport.node_id, self.peer_id, address)
        return conn

    async def _pump(self, conn: FramedConnection) -> None:
        transport = self._transport
        watcher = asyncio.get_running_loop().create_task(self._watch(conn))
        try:
            while True:
                while not (self._frames or self._chunks) and not conn.closed:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                if conn.closed:
                    return
                # Coalesce everything queued into one write (one syscall, fewer packets); at most
                # one snapshot chunk rides along, so a snapshot never starves Raft traffic.
                parts = list(self._frames)
                self._frames.clear()
                self._frame_bytes = 0
                if self._chunks:
                    chunk = self._chunks.popleft()
                    self._chunk_bytes -= len(chunk)
                    parts.append(chunk)
                conn._write_frames(parts)
                async with asyncio.timeout(transport.write_stall_timeout_s):
                    await conn.drain()
        except (OSError, TimeoutError) as exc:
            log.warning("%s: connection to peer %s lost: %r", transport.node_id, self.peer_id, exc)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _watch(self, conn: FramedConnection) -> None:
        # The listener never writes after the handshake; reading finds EOF or an ERROR at once,
        # where a write to a dead connection might go unnoticed for a while.
        try:
            kind, body = await conn.receive()
            log.warning(
                "%s: peer %s sent %s on our outbound connection: %.200r",
                self._transport.node_id,
                self.peer_id,
                kind.name,
                body,
            )
        except (OSError, RemoteProtocolError):
            pass
        finally:
            conn.close()
            self._wakeup.set()


class PeerTransport:
    """The node's network: one listening address for peers and clients, and one outbound
    connection per peer.

    Raft messages travel one way, in RAFT frames (one per recipient per `send` call). Inbound
    messages go to `on_message` after checking that their sender is the authenticated peer and
    their recipient is this node. Client connections go to `on_client_connection`.
    """

    identity: IdentityExchange | None = None
    """Set by the node: after each peer handshake both sides exchange and check their cluster
    id and incarnation (`kvstore.transport.identity`); None skips the exchange."""

    def __init__(
        self,
        node_id: str,
        listen_address: str,
        peers: Mapping[str, str],
        *,
        secret: bytes | None,
        client_secret: bytes | None = None,
        on_message: Callable[[Message], None],
        on_unreachable: Callable[[str], None],
        on_client_connection: Callable[[FramedConnection], Awaitable[None]],
        on_snapshot_chunk: Callable[[str, object], None] | None = None,
        is_member: Callable[[str], bool] | None = None,
        frame_bytes_max: int = 64 << 20,
        client_frame_bytes_max: int = 16 << 20,
        send_queue_bytes_max: int = 64 << 20,
        snapshot_queue_bytes_max: int = 8 << 20,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        handshakes_max: int = HANDSHAKES_MAX,
        client_connections_max: int = 4096,
        write_stall_timeout_s: float = 30.0,
        rng: random.Random | None = None,
        consensus: str = "raft",
        tls: TLSConfig | None = None,
        handshakes_per_address_max: int = HANDSHAKES_PER_ADDRESS_MAX,
        dial_timeout_s: float = DIAL_TIMEOUT_S,
    ) -> None:
        """`peers` maps node id -> "host:port" (this node may be in it; it is never dialed).

        `secret` is the member secret: peers prove it, and so do clients unless
        `client_secret` is given (then clients prove that one, and a holder of only the client
        secret can never connect as a peer). Without `secret` nothing is authenticated
        (plaintext, for one machine); `client_secret` needs `secret`.

        `is_member(id)` decides whether an inbound peer may connect (default: `id in peers`, as
        of the handshake). `send_queue_bytes_max` bounds the RAFT frames queued per peer,
        `snapshot_queue_bytes_max` the snapshot chunks. `frame_bytes_max` bounds frames from
        peers, `client_frame_bytes_max` frames from clients. A connection has
        `handshake_timeout_s` to finish its handshake; at most `handshakes_max` inbound
        connections may be in their handshake at once, `handshakes_per_address_max` from one
        source address, and a new one beyond either evicts the oldest (see the module doc).
        Beyond `client_connection_cap()` open client connections (`client_connections_max`, or
        less when RLIMIT_NOFILE is lower), a new client gets an ERROR frame with code
        `ERROR_BUSY` right after its handshake, and is closed. Outbound peer connections have
        `dial_timeout_s` to connect and finish their handshake. A peer that accepts no bytes
        for `write_stall_timeout_s` is disconnected. `rng` jitters backoff.
        `consensus` is the protocol this node runs: peers running another one are refused at
        the handshake, both ways (`ConsensusMismatchError`, logged); clients are not affected.
        With `tls`, every connection is mutual TLS: inbound and outbound peers must present the
        member certificate of their id, clients any certificate of the cluster CA, and a client
        certificate asking for a peer connection is refused (kvstore/transport/tls.py).
        """
        if tls is not None and secret is not None:
            raise ValueError("give either a TLS configuration or a secret, not both")
        self._server_tls = None if tls is None else server_context(tls)
        self._client_tls = None if tls is None else client_context(tls)
        self.node_id = node_id
        self.listen_address = listen_address
        self._peers: dict[str, str] = dict(peers)
        if client_secret is not None and secret is None:
            raise ValueError("client_secret needs a member secret")
        self._secret = secret
        self._client_secret = client_secret
        self.consensus = consensus
        self._on_message = on_message
        self._on_unreachable = on_unreachable
        self._on_client_connection = on_client_connection
        self._on_snapshot_chunk = on_snapshot_chunk
        self._is_member = is_member or (lambda peer_id: peer_id in self._peers)
        self.frame_bytes_max = frame_bytes_max
        self.client_frame_bytes_max = client_frame_bytes_max
        self.send_queue_bytes_max = send_queue_bytes_max
        self.snapshot_queue_bytes_max = snapshot_queue_bytes_max
        self.handshake_timeout_s = handshake_timeout_s
        self.handshakes_max = handshakes_max
        self.handshakes_per_address_max = handshakes_per_address_max
        self.client_connections_max = client_connections_max
        self.write_stall_timeout_s = write_stall_timeout_s
        self.dial_timeout_s = dial_timeout_s
        for name in (
            "frame_bytes_max",
            "client_frame_bytes_max",
            "send_queue_bytes_max",
            "snapshot_queue_bytes_max",
            "handshakes_max",
            "handshakes_per_address_max",
            "client_connections_max",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (0 < handshake_timeout_s < float("inf")) or not (0 < dial_timeout_s < float("inf")):
            raise ValueError("handshake_timeout_s and dial_timeout_s must be finite and > 0")
        if not write_stall_timeout_s > 0:
            raise ValueError("timeouts must be > 0")
        self._rng = rng or random.Random()
        self.limited_log = RateLimitedLog(log)
        """This node's rate-limited log, for everything a remote side can trigger at will."""
        self._server: asyncio.Server | None = None
        self._address: str | None = None
        self._links: dict[str, _PeerLink] = {}
        self._inbound: dict[str, FramedConnection] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._pending: dict[FramedConnection, str] = {}
        """Inbound connections in their handshake -> source host, oldest first."""
        self._pending_per_host: dict[str, int] = {}
        self._evicted: set[FramedConnection] = set()
        self._client_connections = 0
        self._unreachable_pending: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._closed = asyncio.Event()
        self.dropped_messages = 0
        """Messages dropped by `send` so far (unknown recipient, full queue, local type)."""

    # --- lifecycle ---

    @property
    def address(self) -> str:
        """The bound "host:port" (the real port when `listen_address` asked for port 0)."""
        if self._address is None:
            raise RuntimeError("PeerTransport.start() has not run")
        return self._address

    async def start(self) -> None:
        """Bind the listening address and start the outbound links."""
        if self._server is not None or self._closing:
            raise RuntimeError("PeerTransport already started")
        self._loop = asyncio.get_running_loop()
        host, port = parse_address(self.listen_address)
        self._server = await asyncio.start_server(
            self._on_accept,
            host,
            port,
            limit=READ_CHUNK_BYTES,
            reuse_address=True,
            backlog=ACCEPT_BACKLOG,
            ssl=self._server_tls,
            ssl_handshake_timeout=None if self._server_tls is None else self.handshake_timeout_s,
        )
        bound_port = self._server.sockets[0].getsockname()[1]
        self._address = format_address(host, int(bound_port))
        for peer_id in self._peers:
            if peer_id != self.node_id:
                self._links[peer_id] = _PeerLink(self, peer_id)
        log.info("%s: listening on %s", self.node_id, self._address)

    async def close(self) -> None:
        """Close the listener and every connection, inbound and outbound. Idempotent."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self.limited_log.flush()
        try:
            if self._server is not None:
                self._server.close()
            links = list(self._links.values())
            self._links.clear()
            await asyncio.gather(*(link.stop() for link in links))
            for conn in list(self._inbound.values()):
                conn.abort()
            tasks = list(self._handlers | self._background)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._server is not None:
                await self._server.wait_closed()
        finally:
            self._closed.set()

    # --- membership ---

    def set_peers(self, peers: Mapping[str, str]) -> None:
        """Replace the id -> address map: links to removed peers close, new peers get one, and
        a peer whose address changed is redialed."""
        old = self._peers
        self._peers = dict(peers)
        if self._server is None or self._closing:
            return
        for peer_id in list(self._links):
            if peer_id not in self._peers:
                self._spawn(self._links.pop(peer_id).stop())
            elif old.get(peer_id) != self._peers[peer_id]:
                self._links[peer_id].redial()
        for peer_id in self._peers:
            if peer_id != self.node_id and peer_id not in self._links:
                self._links[peer_id] = _PeerLink(self, peer_id)

    def _member_ids(self) -> list[str]:
        return sorted(self._peers)

    # --- limits ---

    @property
    def _handshakes(self) -> int:
        """Inbound connections in their handshake right now."""
        return len(self._pending)

    def client_connection_cap(self) -> int:
        """How many client connections may be open at once: `client_connections_max`, or the
        RLIMIT_NOFILE soft limit minus what the node needs for itself, whichever is lower.

        The reserve: `FD_RESERVE` (log segments, LMDB, snapshots, the runtime), plus
        `FD_RESERVE_PER_PEER` per peer, plus one per handshake slot and per connection one
        accept burst may open (`ACCEPT_BACKLOG`). Read at each new client, so a raised limit
        takes effect at once. At least 1.
        """
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.client_connections_max
        reserve = (
            FD_RESERVE
            + FD_RESERVE_PER_PEER * len(self._peers)
            + self.handshakes_max
            + ACCEPT_BACKLOG
        )
        return max(1, min(self.client_connections_max, soft - reserve))

    def _admit(self, conn: FramedConnection, host: str) -> None:
        """Take a slot for a connection about to start its handshake, evicting the oldest
        unauthenticated connection of `host` (if it has too many) or else the oldest overall
        (if all slots are taken)."""
        victim: FramedConnection | None = None
        if self._pending_per_host.get(host, 0) >= self.handshakes_per_address_max:
            victim = next(c for c, h in self._pending.items() if h == host)
        elif len(self._pending) >= self.handshakes_max:
            victim = next(iter(self._pending))
        if victim is not None:
            self.limited_log.log(
                "handshake-evicted",
                logging.WARNING,
                "%s: %d connections in their handshake (%d from %s); evicting the oldest, from %s",
                self.node_id,
                len(self._pending),
                self._pending_per_host.get(host, 0),
                host,
                victim.remote_address,
            )
            self._release(victim)
            self._evicted.add(victim)
            victim.abort()
        self._pending[conn] = host
        self._pending_per_host[host] = self._pending_per_host.get(host, 0) + 1

    def _release(self, conn: FramedConnection) -> None:
        """Give back the handshake slot of `conn` (if it still holds one)."""
        host = self._pending.pop(conn, None)
        if host is None:
            return
        left = self._pending_per_host[host] - 1
        if left:
            self._pending_per_host[host] = left
        else:
            del self._pending_per_host[host]

    # --- sending ---

    def send(self, messages: Iterable[Message]) -> None:
        """Queue `messages` for their recipients: one RAFT frame per recipient per call.

        Never blocks and never raises. A message for an unknown recipient, or that does not fit
        in its recipient's queue, is dropped and `on_unreachable(recipient)` is called soon
        after (not from inside this call).
        """
        if self._closing or self._loop is None:
            return
        groups: dict[str, list[Message]] = {}
        for msg in messages:
            if msg.type < MessageType.PROPOSE:
                # A bug upstream; sending it would make the receiver drop the connection.
                log.error("%s: not sending local message %r", self.node_id, msg)
                self.dropped_messages += 1
                continue
            group = groups.get(msg.recipient)
            if group is None:
                groups[msg.recipient] = [msg]
            else:
                group.append(msg)
        for recipient, group in groups.items():
            link = self._links.get(recipient)
            if link is not None:
                try:
                    frame = encode_frame(
                        FrameKind.RAFT, group, frame_bytes_max=self.frame_bytes_max
                    )
                except (ValueError, TypeError) as exc:
                    log.error("%s: cannot encode messages to %s: %r", self.node_id, recipient, exc)
                else:
                    if link.enqueue(frame):
                        continue
            self.dropped_messages += len(group)
            self._report_unreachable(recipient)

    def send_snapshot_chunk(self, peer_id: str, body: object) -> bool:
        """Queue one SNAPSHOT_CHUNK frame for `peer_id`; False when its snapshot queue is full
        (try again later), the peer is unknown or the transport is closed."""
        link = self._links.get(peer_id)
        if link is None or self._closing:
            return False
        try:
            frame = encode_frame(
                FrameKind.SNAPSHOT_CHUNK, body, frame_bytes_max=self.frame_bytes_max
            )
        except (ValueError, TypeError) as exc:
            log.error("%s: cannot encode a snapshot chunk for %s: %r", self.node_id, peer_id, exc)
            return False
        return link.enqueue_chunk(frame)

    def is_connected(self, peer_id: str) -> bool:
        """Whether the outbound connection to `peer_id` is up right now."""
        link = self._links.get(peer_id)
        return link is not None and link.connected

    def queued_bytes(self, peer_id: str) -> int:
        """Bytes queued for `peer_id` and not yet written (RAFT and snapshot frames)."""
        link = self._links.get(peer_id)
        return 0 if link is None else link.queued_bytes

    def _report_unreachable(self, peer_id: str) -> None:
        # Deferred and coalesced: the caller may be inside the node's Ready loop, and a burst of
        # drops for one peer is one piece of news.
        if self._closing or self._loop is None or peer_id in self._unreachable_pending:
            return
        self._unreachable_pending.add(peer_id)
        self._loop.call_soon(self._flush_unreachable, peer_id)

    def _flush_unreachable(self, peer_id: str) -> None:
        self._unreachable_pending.discard(peer_id)
        if self._closing:
            return
        try:
            self._on_unreachable(peer_id)
        except Exception:
            log.exception("%s: on_unreachable(%r) failed", self.node_id, peer_id)

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- receiving ---

    async def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            # Only close() cancels these tasks. Ending normally matters: asyncio's stream
            # callback in 3.11 calls task.exception(), which raises for a cancelled task.
            writer.transport.abort()
        finally:
            if task is not None:
                self._handlers.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Until the dialer proved itself: tiny frames, tiny reads, a short deadline, a slot.
        conn = FramedConnection(
            reader,
            writer,
            frame_bytes_max=HANDSHAKE_FRAME_BYTES_MAX,
            read_chunk_bytes=HANDSHAKE_FRAME_BYTES_MAX,
        )
        if self._closing:
            conn.abort()
            return
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) else "?"
        self._admit(conn, host)
        is_member = self._is_member
        identity: Identity | None = None
        if self._server_tls is not None:
            try:
                identity = _tls_identity(conn)
            except AuthenticationError as exc:
                self.limited_log.log(
                    "refused", logging.WARNING, "%s: refused %s: %s", self.node_id, host, exc
                )
                _send_refusal(conn, str(exc))
                conn.close()
                await conn.wait_closed()
                self._release(conn)
                return
            is_member = self._tls_is_member(identity)
        handshake = ListenerHandshake(
            node_id=self.node_id,
            secret=self._secret,
            client_secret=self._client_secret,
            member_ids=self._member_ids(),
            is_member=is_member,
            consensus=self.consensus,
        )
        node_id, address = self.node_id, conn.remote_address
        try:
            async with asyncio.timeout(self.handshake_timeout_s):
                await _run_handshake(conn, handshake, [])
                if identity is not None and handshake.role == ROLE_PEER:
                    # Also checked when HELLO arrived (`_tls_is_member`); kept here so that no
                    # peer connection is ever served without its certificate matching.
                    check_peer_claim(identity, str(handshake.peer_id))
        except AuthenticationError as exc:
            self.limited_log.log(
                "refused", logging.WARNING, "%s: refused %s: %s", node_id, address, exc
            )
            # Before the proof verified, the auth module's messages say nothing about us.
            _send_refusal(conn, str(exc))
            conn.close()
            await conn.wait_closed()
            return
        except TimeoutError:
            self.limited_log.log(
                "handshake-timeout",
                logging.WARNING,
                "%s: handshake with %s timed out",
                node_id,
                address,
            )
            conn.abort()
            await conn.wait_closed()
            return
        except RemoteProtocolError as exc:
            self.limited_log.log(
                "bad-handshake",
                logging.WARNING,
                "%s: bad handshake from %s: %s",
                node_id,
                address,
                exc,
            )
            conn.abort()
            await conn.wait_closed()
            return
        except (OSError, ValueError) as exc:
            if conn not in self._evicted:  # an eviction was logged when it happened
                self.limited_log.log(
                    "left-in-handshake",
                    logging.INFO,
                    "%s: %s left during handshake: %r",
                    node_id,
                    address,
                    exc,
                )
            conn.abort()
            await conn.wait_closed()
            return
        finally:
            self._release(conn)
            self._evicted.discard(conn)
        if handshake.role == ROLE_CLIENT:
            conn.role = ROLE_CLIENT
            conn.peer_id = None
            conn.receivable_kinds = CLIENT_FRAME_KINDS
            conn.set_limits(
                frame_bytes_max=self.client_frame_bytes_max, read_chunk_bytes=READ_CHUNK_BYTES
            )
            await self._serve_client(conn)
        else:
            conn.role = ROLE_PEER
            conn.peer_id = handshake.peer_id
            conn.receivable_kinds = PEER_FRAME_KINDS
            conn.set_limits(frame_bytes_max=self.frame_bytes_max, read_chunk_bytes=READ_CHUNK_BYTES)
            exchange = self.identity
            if exchange is not None and not await exchange.answer(conn, conn.peer_id or ""):
                return  # refused (another cluster, a second process, wiped data): logged
            await self._serve_peer(conn)

    def _tls_is_member(self, identity: Identity) -> Callable[[str], bool]:
        """`is_member` for one TLS connection: a peer claim must match the certificate (else
        `AuthenticationError` naming the conflict, before we answer the HELLO)."""

        def is_member(claimed_id: str) -> bool:
            check_peer_claim(identity, claimed_id)
            return self._is_member(claimed_id)

        return is_member

    async def _serve_client(self, conn: FramedConnection) -> None:
        cap = self.client_connection_cap()
        if self._client_connections >= cap:
            self.limited_log.log(
                "clients-full",
                logging.WARNING,
                "%s: %d client connections open (cap %d); turning %s away",
                self.node_id,
                self._client_connections,
                cap,
                conn.remote_address,
            )
            with contextlib.suppress(ConnectionError, BufferError, ValueError, OSError):
                conn.send_nowait(
                    FrameKind.ERROR, {"code": ERROR_BUSY, "message": "too many client connections"}
                )
            conn.close()
            await conn.wait_closed()
            return
        self._client_connections += 1
        try:
            await self._on_client_connection(conn)
        except (OSError, RemoteProtocolError):
            pass  # the connection broke; already logged where it matters
        except Exception:
            log.exception("%s: client connection handler failed for %r", self.node_id, conn)
        finally:
            self._client_connections -= 1
            conn.close()
            await conn.wait_closed()

    async def _serve_peer(self, conn: FramedConnection) -> None:
        peer_id = conn.peer_id
        if peer_id is None:
            raise AssertionError("peer connection without an id")
        previous = self._inbound.get(peer_id)
        if previous is not None:
            # The peer redialed: its old connection is dead or about to be.
            previous.abort()
        self._inbound[peer_id] = conn
        log.info("%s: peer %s connected from %s", self.node_id, peer_id, conn.remote_address)
        try:
            while True:
                kind, body = await conn.receive()
                if kind is FrameKind.RAFT:
                    self._deliver(peer_id, decode_batch(body))
                elif kind is FrameKind.SNAPSHOT_CHUNK:
                    self._deliver_chunk(peer_id, body)
                elif kind is FrameKind.ERROR:
                    log.warning("%s: peer %s sent an error: %.200r", self.node_id, peer_id, body)
                    return
                else:
                    raise RemoteProtocolError(f"unexpected {kind.name} frame from a peer")
        except RemoteProtocolError as exc:
            self.limited_log.log(
                "peer-protocol-error",
                logging.WARNING,
                "%s: closing connection from peer %s: %s",
                self.node_id,
                peer_id,
                exc,
            )
        except OSError:
            pass  # EOF or reset: the peer's own link reconnects
        finally:
            conn.abort()
            if self._inbound.get(peer_id) is conn:
                del self._inbound[peer_id]
            await conn.wait_closed()

    def _deliver(self, peer_id: str, messages: list[Message]) -> None:
        on_message = self._on_message
        node_id = self.node_id
        for msg in messages:
            if msg.sender != peer_id or msg.recipient != node_id:
                log.warning(
                    "%s: dropped %s from %s to %s on the connection of peer %s",
                    node_id,
                    msg.type.name,
                    msg.sender,
                    msg.recipient,
                    peer_id,
                )
                continue
            try:
                on_message(msg)
            except Exception:
                log.exception("%s: on_message failed for %s", node_id, msg.type.name)

    def _deliver_chunk(self, peer_id: str, body: object) -> None:
        if self._on_snapshot_chunk is None:
            log.warning("%s: no snapshot handler; dropped a chunk from %s", self.node_id, peer_id)
            return
        try:
            self._on_snapshot_chunk(peer_id, body)
        except Exception:
            log.exception("%s: on_snapshot_chunk failed for %s", self.node_id, peer_id)
