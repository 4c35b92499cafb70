"""Running out of file descriptors degrades, never kills (issue 11: "running out of file
descriptors ends a node for good").

A node runs in a child process with RLIMIT_NOFILE lowered to 256. The test holds a few hundred
idle connections against it: authenticated clients (which the old code admitted up to 4,096)
and unauthenticated ones. Then the node writes enough to open several new log segments. On the
old code the idle clients took every descriptor, preparing the next segment failed with EMFILE,
the log was poisoned and every write after failed; here the client cap follows the limit (with a
reserve), clients beyond it are turned away with ERROR_BUSY, and every write succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kvstore.errors import AuthenticationError
from kvstore.testing.local_cluster import free_ports
from kvstore.transport.codec import FrameKind
from kvstore.transport.tcp import ERROR_BUSY, FramedConnection, connect_client

from .conftest import MEMBER_SECRET, TEST_DEADLINE_S

pytestmark = pytest.mark.slow

NOFILE = 256
AUTHENTICATED_CLIENTS = 250
UNAUTHENTICATED = 150
WRITES = 160
VALUE_BYTES = 6000  # 160 x 6 KB = 960 KB of log: some 15 segments of 64 KiB

CHILD = textwrap.dedent(
    """
    import resource, sys
    import kvstore
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, hard))
    node = kvstore.Node(
        "n1", sys.argv[1], {{"n1": sys.argv[2]}},
        options=kvstore.Options(segment_bytes=1 << 16, tick_s=0.025, election_ticks=12),
        secret={secret!r},
    )
    node.start()
    node.wait_for_leader(timeout_s=15)
    print("ready", node.address, flush=True)
    sys.stdin.readline()  # "write": the idle connections are in place
    done = 0
    try:
        for i in range({writes}):
            node.put(b"fd/%d" % i, bytes([i % 256]) * {value_bytes}, timeout_s=10)
            done += 1
        assert node.get(b"fd/0") == bytes([0]) * {value_bytes}
        print("ok", done, flush=True)
    except Exception as exc:
        print("failed after", done, "writes:", repr(exc), flush=True)
    sys.stdin.readline()  # "stop"
    node.stop()
    """
).format(nofile=NOFILE, secret=MEMBER_SECRET, writes=WRITES, value_bytes=VALUE_BYTES)


async def _read_line(stream: asyncio.StreamReader, timeout_s: float) -> str:
    async with asyncio.timeout(timeout_s):
        return (await stream.readline()).decode().strip()


def test_idle_connections_beyond_the_descriptor_limit_do_not_stop_the_log(tmp_path: Path) -> None:
    (port,) = free_ports(1)

    async def main() -> None:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            str(tmp_path / "n1"),
            f"127.0.0.1:{port}",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert child.stdin is not None and child.stdout is not None
        held: list[FramedConnection] = []
        raw: list[asyncio.StreamWriter] = []
        try:
            ready = await _read_line(child.stdout, 30)
            assert ready.startswith("ready"), ready
            address = ready.split()[1]
            busy = 0
            for _ in range(AUTHENTICATED_CLIENTS):
                try:
                    conn = await connect_client(address, secret=MEMBER_SECRET, timeout_s=5)
                except (OSError, TimeoutError, AuthenticationError):
                    continue  # the node could not even accept: also a refusal
                held.append(conn)
            for _ in range(UNAUTHENTICATED):
                with contextlib.suppress(OSError):
                    raw.append((await asyncio.open_connection("127.0.0.1", port))[1])
            # Clients past the cap were told so (ERROR_BUSY) and closed.
            for conn in held:
                with contextlib.suppress(TimeoutError, OSError, Exception):
                    async with asyncio.timeout(0.05):
                        kind, body = await conn.receive()
                        if kind is FrameKind.ERROR and isinstance(body, dict):
                            busy += body.get("code") == ERROR_BUSY
            child.stdin.write(b"write\n")
            await child.stdin.drain()
            result = await _read_line(child.stdout, 120)
            assert result == f"ok {WRITES}", result
            assert busy > 0, "every idle client was admitted: no cap below RLIMIT_NOFILE"
            print(f"{busy} of {AUTHENTICATED_CLIENTS} idle clients turned away with busy")
        finally:
            for conn in held:
                conn.abort()
            for writer in raw:
                writer.transport.abort()
            if child.returncode is None:
                with contextlib.suppress(OSError):
                    child.stdin.write(b"stop\n")
                    await child.stdin.drain()
                try:
                    async with asyncio.timeout(15):
                        await child.wait()
                except TimeoutError:
                    child.kill()
                    await child.wait()

    asyncio.run(asyncio.wait_for(main(), TEST_DEADLINE_S * 6))
