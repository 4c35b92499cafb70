"""What this machine allows: the floors under the figures of issues 2 and 6.

Nothing of kvstore is timed here. These are the costs that no code above the kernel can remove,
measured in the same run as the rest, so that a ratio that misses its target can be read against
them (and so that a faster disk or machine shows at once in what it would change):

- `fdatasync` of a 200-byte overwrite in a preallocated file, back to back (the process never
  idles) and after 300 us of idling (as a node does between sequential writes while it waits for
  the network; an idle virtual CPU takes longer to wake when the disk completes). One record per
  fsync: the one-thread baseline of the group-commit benchmark is about this.
- three processes fsyncing a file each at the same moment, as the leader and both followers of
  a 3-node cluster on one disk do for every sequential write: the time until the second of them
  is done (what a write's quorum waits for) and until all three are.
- a round trip over 127.0.0.1 between two processes with blocking sockets: the least that the
  four network hops of a replicated write (client, leader, follower, leader, client) can cost is
  two of these.

Run with `make bench` or `pytest benchmarks/test_bench_floor.py --benchmark-only -s`.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

RECORD = b"r" * 200
FILE_BYTES = 1 << 20
IDLE_S = 300e-6
ROUNDS = 400
MESSAGE = b"m" * 64


def _prepared_file(path: Path) -> int:
    """A file of FILE_BYTES of zeros, durable, so that later writes change no metadata."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, bytes(FILE_BYTES))
    os.fsync(fd)
    return fd


class _Overwriter:
    """Overwrites RECORD at successive offsets of a prepared file and fdatasyncs each time."""

    def __init__(self, path: Path) -> None:
        self.fd = _prepared_file(path)
        self.offset = 0

    def write_and_sync(self) -> None:
        os.pwrite(self.fd, RECORD, self.offset)
        self.offset = (self.offset + 256) % FILE_BYTES
        os.fdatasync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def _report(benchmark: Any, name: str) -> None:
    stats = benchmark.stats.stats
    benchmark.extra_info["median_us"] = round(stats.median * 1e6, 1)
    benchmark.extra_info["min_us"] = round(stats.min * 1e6, 1)
    print(f"\n{name}: median {stats.median * 1e6:.0f} us, min {stats.min * 1e6:.0f} us")


def test_bench_floor_fdatasync_busy(benchmark: Any, tmp_path: Path) -> None:
    """Overwrite + fdatasync, back to back."""
    writer = _Overwriter(tmp_path / "busy")
    try:
        benchmark.pedantic(writer.write_and_sync, rounds=ROUNDS, iterations=1, warmup_rounds=20)
    finally:
        writer.close()
    _report(benchmark, "fdatasync, back to back")


def test_bench_floor_fdatasync_after_idle(benchmark: Any, tmp_path: Path) -> None:
    """Overwrite + fdatasync after 300 us blocked in select() (untimed)."""
    writer = _Overwriter(tmp_path / "idle")

    def idle() -> None:
        select.select([], [], [], IDLE_S)

    try:
        benchmark.pedantic(
            writer.write_and_sync, setup=idle, rounds=ROUNDS, iterations=1, warmup_rounds=20
        )
    finally:
        writer.close()
    _report(benchmark, "fdatasync after 300 us idle")


# ---- three processes fsyncing together ---------------------------------------------------------


def _fsync_on_demand(path: str, conn: multiprocessing.connection.Connection) -> None:
    """Child: for every byte string received, overwrite + fdatasync, then answer."""
    writer = _Overwriter(Path(path))
    try:
        while conn.recv_bytes():
            writer.write_and_sync()
            conn.send_bytes(b"d")
    finally:
        writer.close()


@pytest.fixture
def three_fsyncers(tmp_path: Path) -> Iterator[list[multiprocessing.connection.Connection]]:
    context = multiprocessing.get_context("spawn")
    conns: list[multiprocessing.connection.Connection] = []
    processes = []
    for number in range(3):
        ours, theirs = context.Pipe()
        process = context.Process(
            target=_fsync_on_demand, args=(str(tmp_path / f"node{number}"), theirs), daemon=True
        )
        process.start()
        conns.append(ours)
        processes.append(process)
    try:
        yield conns
    finally:
        for conn in conns:
            conn.send_bytes(b"")
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()


def test_bench_floor_three_fsyncs_together(
    benchmark: Any, three_fsyncers: list[multiprocessing.connection.Connection]
) -> None:
    """Three processes start an fdatasync each at once; timed until the second is done (the
    quorum of a 3-node write). The time until all three are done goes to extra_info."""
    second_done: list[float] = []
    all_done: list[float] = []

    def round_() -> None:
        started = time.perf_counter()
        for conn in three_fsyncers:
            conn.send_bytes(b"g")
        pending = list(three_fsyncers)
        done = 0
        while pending:
            for conn in multiprocessing.connection.wait(pending):
                assert isinstance(conn, multiprocessing.connection.Connection)
                conn.recv_bytes()
                pending.remove(conn)
                done += 1
                if done == 2:
                    second_done.append(time.perf_counter() - started)
        all_done.append(time.perf_counter() - started)

    benchmark.pedantic(round_, rounds=ROUNDS, iterations=1, warmup_rounds=20)
    quorum = sorted(second_done)
    all_done.sort()
    benchmark.extra_info["second_done_median_us"] = round(quorum[len(quorum) // 2] * 1e6, 1)
    benchmark.extra_info["all_done_median_us"] = round(all_done[len(all_done) // 2] * 1e6, 1)
    print(
        f"\nthree fsyncs together: second done after {quorum[len(quorum) // 2] * 1e6:.0f} us, "
        f"all three after {all_done[len(all_done) // 2] * 1e6:.0f} us (medians)"
    )


# ---- loopback round trip ---------------------------------------------------------------------


def _echo(listener: socket.socket) -> None:
    """Child: echo every message back until the peer closes."""
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn:
        while data := conn.recv(len(MESSAGE)):
            conn.sendall(data)


def test_bench_floor_loopback_round_trip(benchmark: Any) -> None:
    """64 bytes to another process over 127.0.0.1 and back, blocking sockets."""
    listener = socket.create_server(("127.0.0.1", 0))
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=_echo, args=(listener,), daemon=True)
    process.start()
    client = socket.create_connection(listener.getsockname())
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.close()

    def round_trip() -> None:
        client.sendall(MESSAGE)
        received = 0
        while received < len(MESSAGE):
            chunk = client.recv(len(MESSAGE) - received)
            assert chunk, "the echo process closed the connection"
            received += len(chunk)

    try:
        benchmark.pedantic(round_trip, rounds=ROUNDS * 5, iterations=1, warmup_rounds=50)
    finally:
        client.close()
        process.join(10)
        if process.is_alive():
            process.kill()
    _report(benchmark, "loopback round trip")
