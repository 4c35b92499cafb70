"""etcd as a peer: a 3-member etcd cluster on loopback ports, driven through its HTTP/JSON gateway.

The members are `etcd` processes (Debian's etcd-server) with their data in a temporary folder and
etcd's default durability: every committed batch is fsynced (there is no `--unsafe-no-fsync`).
The driver is a small asyncio HTTP/1.1 client in this process with one keep-alive connection per
operation in flight, since Go's HTTP server answers one request at a time per connection. Puts go
to the leader (as kvstore's client sends writes to its leader); reads are spread over all members
(as kvstore's client balances them). etcd has no lease reads: its "stale" row is a serializable
range (the answering member's own state), its "linearizable" row the default range (ReadIndex).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from kvstore.bench.recorder import (
    PUT_CONCURRENT,
    PUT_SEQUENTIAL,
    BenchError,
    BenchSettings,
    OperationError,
    Progress,
    Recorder,
    WorkloadResult,
    bench_keys,
    bench_value,
    get_workload,
    measure,
    run_async,
)
from kvstore.testing.local_cluster import free_ports

ETCD = "etcd"
"""This peer's system id in the results."""
ETCD_BINARY_ENV = "KVSTORE_BENCH_ETCD"
"""Environment variable naming the etcd binary to use instead of the one on PATH."""
START_S_MAX = 30.0
"""How long the members may take to elect a leader and answer /health."""
STOP_S_MAX = 10.0
HEAD_BYTES_MAX = 64 << 10
"""Largest response head (status line + headers) the HTTP client accepts."""
BODY_BYTES_MAX = 16 << 20


def find_etcd() -> str | None:
    """The etcd binary: $KVSTORE_BENCH_ETCD, else `etcd` on PATH (Debian: /usr/bin/etcd)."""
    configured = os.environ.get(ETCD_BINARY_ENV)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("etcd")


def available() -> str | None:
    """None when etcd can run here, else why not."""
    if find_etcd() is None:
        return (
            "etcd is not installed (Debian: apt-get install etcd-server, or run "
            "benchmarks/install_peers.sh; or set KVSTORE_BENCH_ETCD to its path)"
        )
    return None


# --- the cluster --------------------------------------------------------------------------------


@dataclass
class EtcdMember:
    """One etcd process: its name, client address ("host:port") and peer port."""

    name: str
    address: str
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None


class EtcdCluster:
    """Starts and stops `size` etcd members on 127.0.0.1. Use as a context manager."""

    def __init__(self, size: int = 3, *, binary: str | None = None) -> None:
        found = binary or find_etcd()
        if found is None:
            raise BenchError(available() or "etcd not found")
        self.binary = found
        self._tempdir = tempfile.TemporaryDirectory(prefix="kvstore-bench-etcd-")
        self.base_dir = Path(self._tempdir.name)
        ports = free_ports(2 * size)
        self.members = [
            EtcdMember(
                name=f"e{i + 1}",
                address=f"127.0.0.1:{ports[2 * i]}",
                peer_port=ports[2 * i + 1],
                data_dir=self.base_dir / f"e{i + 1}",
                log_path=self.base_dir / f"e{i + 1}.log",
            )
            for i in range(size)
        ]

    @property
    def addresses(self) -> list[str]:
        """Every member's client address."""
        return [member.address for member in self.members]

    def start(self) -> EtcdCluster:
        """Start every member; return once each is healthy and they agree on a leader."""
        initial_cluster = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
        token = f"kvstore-bench-{os.getpid()}-{time.monotonic_ns()}"
        for member in self.members:
            command = [
                self.binary,
                "--name", member.name,
                "--data-dir", str(member.data_dir),
                "--listen-client-urls", f"http://{member.address}",
                "--advertise-client-urls", f"http://{member.address}",
                "--listen-peer-urls", f"http://127.0.0.1:{member.peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{member.peer_port}",
                "--initial-cluster", initial_cluster,
                "--initial-cluster-token", token,
                "--initial-cluster-state", "new",
                "--logger", "zap",
                "--log-level", "warn",
            ]  # fmt: skip
            with open(member.log_path, "ab") as log:
                member.process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=log
                )
        try:
            self._wait_started()
        except BaseException:
            self.close()
            raise
        return self

    def _wait_started(self) -> None:
        deadline = time.monotonic() + START_S_MAX
        pending = list(self.members)
        while pending:
            member = pending[0]
            if member.process is not None and member.process.poll() is not None:
                raise BenchError(
                    f"etcd {member.name} exited with {member.process.returncode}; "
                    f"log:\n{self.log_tail(member)}"
                )
            with contextlib.suppress(OSError, OperationError, ValueError):
                health = json.loads(_get_sync(member.address, "/health", timeout_s=1.0))
                if health.get("health") == "true":
                    pending.pop(0)
                    continue
            if time.monotonic() > deadline:
                raise BenchError(
                    f"etcd {member.name} not healthy after {START_S_MAX:.0f} s; "
                    f"log:\n{self.log_tail(member)}"
                )
            time.sleep(0.05)
        while self.leader_address() is None:
            if time.monotonic() > deadline:
                raise BenchError(f"etcd elected no leader in {START_S_MAX:.0f} s")
            time.sleep(0.05)

    def leader_address(self) -> str | None:
        """The client address of the member that reports itself leader, if any."""
        for member in self.members:
            try:
                status = json.loads(
                    _post_sync(member.address, "/v3/maintenance/status", b"{}", timeout_s=2.0)
                )
            except (OSError, OperationError, ValueError):
                continue
            leader = status.get("leader")
            if leader and leader == status.get("header", {}).get("member_id"):
                return member.address
        return None

    def log_tail(self, member: EtcdMember, lines: int = 20) -> str:
        """The last lines of that member's log."""
        if not member.log_path.exists():
            return ""
        return "\n".join(member.log_path.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        """Stop every member this cluster started (SIGKILL past STOP_S_MAX); remove the data.

        One at a time: a leader that gets SIGTERM hands leadership over first, and when all
        members stop together that hand-over waits out its timeout (seconds) for nothing.
        """
        for member in self.members:
            if member.process is None:
                continue
            if member.process.poll() is None:
                member.process.send_signal(signal.SIGTERM)
            try:
                member.process.wait(timeout=STOP_S_MAX)
            except subprocess.TimeoutExpired:
                member.process.kill()
                member.process.wait()
            member.process = None
        self._tempdir.cleanup()

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _get_sync(address: str, path: str, *, timeout_s: float) -> bytes:
    return _request_sync("GET", address, path, None, timeout_s=timeout_s)


def _post_sync(address: str, path: str, body: bytes, *, timeout_s: float) -> bytes:
    return _request_sync("POST", address, path, body, timeout_s=timeout_s)


def _request_sync(
    method: str, address: str, path: str, body: bytes | None, *, timeout_s: float
) -> bytes:
    host, port = _split(address)
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise OperationError(f"{method} {path}: HTTP {response.status} {data[:200]!r}")
        return data
    finally:
        connection.close()


# --- the asyncio HTTP client --------------------------------------------------------------------


class HttpConnection:
    """One keep-alive HTTP/1.1 connection carrying one request at a time.

    Just enough HTTP for a JSON gateway: POST with a Content-Length body; responses with a
    Content-Length or chunked body. Any failure closes the connection, and the next request
    dials again, since a half-read response would desynchronise every later one.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self._host, self._port = _split(address)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._prefix_host = f"Host: {address}\r\nContent-Type: application/json\r\n".encode()

    async def connect(self) -> None:
        """Dial now (rather than on the first request)."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(
                self._host, self._port, limit=HEAD_BYTES_MAX
            )

    async def post(self, path: bytes, body: bytes) -> bytes:
        """POST `body` to `path`; the response body, or OperationError if not HTTP 200."""
        try:
            await self.connect()
            if self._reader is None or self._writer is None:
                raise OperationError(f"no connection to {self.address}")
            self._writer.write(
                b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s"
                % (path, self._prefix_host, len(body), body)
            )
            status, data = await read_response(self._reader)
        except BaseException:
            self.close()
            raise
        if status != 200:
            raise OperationError(f"POST {path!r}: HTTP {status} {data[:200]!r}")
        return data

    def close(self) -> None:
        """Close the socket (the next `post` dials again)."""
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one HTTP/1.1 response: (status, body). Handles Content-Length and chunked bodies."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as error:
        raise OperationError("HTTP response head is too long") from error
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise OperationError(f"not an HTTP/1.x status line: {lines[0][:100]!r}")
    status = int(parts[1])
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        return status, await _read_chunked(reader)
    if length is None:
        raise OperationError("HTTP response has neither Content-Length nor chunked encoding")
    if not 0 <= length <= BODY_BYTES_MAX:
        raise OperationError(f"HTTP response body of {length} bytes is out of range")
    return status, await reader.readexactly(length)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            # Trailers (none expected) end with an empty line.
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return bytes(body)
        if len(body) + size > BODY_BYTES_MAX:
            raise OperationError("chunked HTTP response body is too large")
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise OperationError("chunk is not followed by CRLF")


# --- etcd's v3 gateway --------------------------------------------------------------------------


def put_body(key: bytes, value_b64: bytes) -> bytes:
    """The JSON body of /v3/kv/put (keys and values travel base64-encoded)."""
    return b'{"key":"%s","value":"%s"}' % (base64.b64encode(key), value_b64)


def range_body(key: bytes, *, serializable: bool) -> bytes:
    """The JSON body of /v3/kv/range for one key."""
    flag = b',"serializable":true' if serializable else b""
    return b'{"key":"%s"%s}' % (base64.b64encode(key), flag)


def check_range(data: bytes, key: bytes, value_b64: bytes) -> None:
    """OperationError unless the range response holds `key` with the expected value."""
    kvs = json.loads(data).get("kvs")
    if not kvs or kvs[0].get("value", "").encode() != value_b64:
        raise OperationError(f"etcd range of {key!r} did not return the value written")


class ConnectionPool:
    """A fixed set of open connections, each lent to one operation at a time."""

    def __init__(self, addresses: list[str], size: int) -> None:
        # Round-robin over the members, like kvstore's client balancer.
        self._all = [HttpConnection(addresses[i % len(addresses)]) for i in range(size)]
        self._free = list(self._all)

    async def open(self) -> None:
        """Dial every connection (outside the timed section)."""
        await asyncio.gather(*(connection.connect() for connection in self._all))

    async def post(self, path: bytes, body: bytes) -> bytes:
        """POST over a free connection. Never more callers than connections (one per worker)."""
        connection = self._free.pop()
        try:
            return await connection.post(path, body)
        finally:
            self._free.append(connection)

    def close(self) -> None:
        """Close every connection."""
        for connection in self._all:
            connection.close()


def run_pooled(
    addresses: list[str],
    recorder: Recorder,
    *,
    concurrency: int,
    timeout_s: float,
    make_op: Callable[[ConnectionPool], Callable[[int], Awaitable[object]]],
) -> None:
    """Open `concurrency` connections, then keep `concurrency` operations in flight over them."""

    async def main() -> None:
        pool = ConnectionPool(addresses, concurrency)
        try:
            await asyncio.wait_for(pool.open(), timeout=timeout_s)
            op = make_op(pool)

            async def timed(number: int) -> None:
                async with asyncio.timeout(timeout_s):
                    await op(number)

            await run_async(timed, recorder, concurrency=concurrency)
        finally:
            pool.close()

    asyncio.run(main())


class EtcdWorkloads:
    """The benchmark's workloads against a running `EtcdCluster`."""

    def __init__(self, cluster: EtcdCluster, settings: BenchSettings, progress: Progress) -> None:
        self.cluster = cluster
        self.settings = settings
        self.progress = progress
        self.value_b64 = base64.b64encode(bench_value(settings.value_bytes))
        self.keys = bench_keys(max(settings.ops, settings.concurrent_ops))

    def put_sequential(self) -> WorkloadResult:
        """One connection to the leader; each put waits for its commit."""
        return self._measure(PUT_SEQUENTIAL, self._leader(), 1, self._puts, self.settings.ops)

    def put_concurrent(self) -> WorkloadResult:
        """`concurrency` connections to the leader, one put in flight on each."""
        settings = self.settings
        return self._measure(
            PUT_CONCURRENT,
            self._leader(),
            settings.concurrency,
            self._puts,
            settings.concurrent_ops,
        )

    def get(self, consistency: str, *, concurrent: bool) -> WorkloadResult:
        """Ranges of keys the puts wrote: "linearizable" (ReadIndex) or "stale" (serializable)."""
        if consistency not in ("linearizable", "stale"):
            raise BenchError(f"etcd has no {consistency!r} reads")
        serializable = consistency == "stale"
        settings, keys, value_b64 = self.settings, self.keys, self.value_b64

        def make(pool: ConnectionPool) -> Callable[[int], Awaitable[object]]:
            async def op(number: int) -> None:
                key = keys[number % settings.ops]
                body = range_body(key, serializable=serializable)
                check_range(await pool.post(b"/v3/kv/range", body), key, value_b64)

            return op

        return self._measure(
            get_workload(consistency, concurrent=concurrent),
            self.cluster.addresses,
            settings.concurrency if concurrent else 1,
            make,
            settings.concurrent_ops if concurrent else settings.ops,
        )

    def run_all(self) -> list[WorkloadResult]:
        """Every workload etcd supports, puts first (the reads read what they wrote)."""
        results = [self.put_sequential(), self.put_concurrent()]
        for consistency in ("linearizable", "stale"):
            for concurrent in (False, True):
                results.append(self.get(consistency, concurrent=concurrent))
        return results

    def _leader(self) -> list[str]:
        leader = self.cluster.leader_address()
        if leader is None:
            raise BenchError("etcd has no leader")
        return [leader]

    def _puts(self, pool: ConnectionPool) -> Callable[[int], Awaitable[object]]:
        keys, value_b64 = self.keys, self.value_b64

        async def op(number: int) -> None:
            await pool.post(b"/v3/kv/put", put_body(keys[number], value_b64))

        return op

    def _measure(
        self,
        workload: str,
        addresses: list[str],
        concurrency: int,
        make_op: Callable[[ConnectionPool], Callable[[int], Awaitable[object]]],
        ops: int,
    ) -> WorkloadResult:
        settings = self.settings
        return measure(
            ETCD,
            workload,
            settings,
            self.progress,
            lambda r: run_pooled(
                addresses,
                r,
                concurrency=concurrency,
                timeout_s=settings.timeout_s,
                make_op=make_op,
            ),
            concurrency=concurrency,
            ops=ops,
        )


def run(settings: BenchSettings, progress: Progress) -> list[WorkloadResult]:
    """Start a 3-member etcd cluster, run the workloads, stop it."""
    with EtcdCluster(3) as cluster:
        progress.note(
            f"etcd: 3 members ({find_etcd()}), leader at {cluster.leader_address() or '?'}"
        )
        return EtcdWorkloads(cluster, settings, progress).run_all()
