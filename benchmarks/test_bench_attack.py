"""Throughput of a 3-member cluster under a sustained pre-auth attacker (issue 11).

A `LocalCluster` of 3 `kvstore serve` processes in the shared-secret mode, and one client
(`kvstore.aio.Client`) keeping `inflight` puts in flight for `PHASE_S` seconds per phase:

1. without an attacker,
2. while an attacker process (no secret) holds `SLOWLORIS_PER_MEMBER` idle connections against
   every member, reopening each one the node closes, and sends every member a pre-auth bomb
   every `BOMB_INTERVAL_S` (the header of an 8 MiB frame and 256 KiB of its body of empty msgpack
   arrays, alternating with a whole 4 MiB frame: the issue's "4 MiB every 1.5 s" and more), all
   from the clients' own address,
3. without the attacker again.

The figure is the ratio of phase 2 to the mean of phases 1 and 3 (so drift on a shared machine
counts against neither side); the target is >= 0.8. Beside it: the CPU seconds the members and
the attacker used per phase (on a machine with few cores, the attacker's own CPU is taken from
the cluster). No election may happen: every member's term
is the same before and after. The attacker runs in its own process, competing for the same CPUs
as the cluster, as it would on a shared host.

Run with `pytest benchmarks/test_bench_attack.py --benchmark-only -s`; KVSTORE_ATTACK_PHASE_S
sets the seconds per phase (default 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import selectors
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

import kvstore
import kvstore.aio
from kvstore.testing.local_cluster import LocalCluster

SECRET = b"attack-bench-secret"
PHASE_S = float(os.environ.get("KVSTORE_ATTACK_PHASE_S", "5"))
SLOWLORIS_PER_MEMBER = 100
REOPEN_PER_S = 100.0
BOMB_INTERVAL_S = 0.75
VALUE = b"v" * 100
RATIO_TARGET = 0.8

pytestmark = pytest.mark.timeout(600)


# --- the attacker (a child process) ---------------------------------------------------------------


def _open_idle(address: str) -> socket.socket | None:
    host, port = address.rsplit(":", 1)
    try:
        sock = socket.create_connection((host, int(port)), timeout=1.0)
        sock.sendall(b"\x00\x00")  # half a length prefix, then silence
        sock.setblocking(False)
    except OSError:
        return None
    return sock


def _bomb(address: str, frame_bytes: int, send_bytes: int) -> None:
    host, port = address.rsplit(":", 1)
    header = struct.pack(">IBB", frame_bytes, 1, 1)  # version 1, HELLO
    with (
        contextlib.suppress(OSError),
        socket.create_connection((host, int(port)), timeout=1.0) as sock,
    ):
        sock.sendall(header + b"\x90" * send_bytes)


def attack(addresses: list[str], stop: Any, counters: Any) -> None:
    """Slowloris and pre-auth bombs against every address until `stop` is set.

    Idle connections wait in one selector, so the attacker spends its CPU on reopening what the
    nodes close, not on polling what they keep."""
    selector = selectors.DefaultSelector()
    to_open = [address for address in addresses for _ in range(SLOWLORIS_PER_MEMBER)]
    next_bomb = time.monotonic()
    bombs = 0
    while not stop.is_set():
        now = time.monotonic()
        if now >= next_bomb:
            for address in addresses:
                if bombs % 2:
                    _bomb(address, 4 << 20, (4 << 20) - 2)
                else:
                    _bomb(address, 8 << 20, 256 << 10)
            bombs += 1
            counters[1] += len(addresses)
            next_bomb = now + BOMB_INTERVAL_S
        while to_open and time.monotonic() < next_bomb and not stop.is_set():
            address = to_open.pop()
            sock = _open_idle(address)
            if sock is None:
                to_open.append(address)
                break
            selector.register(sock, selectors.EVENT_READ, address)
            counters[0] += 1
            time.sleep(1.0 / REOPEN_PER_S)
        for key, _ in selector.select(timeout=max(0.0, min(0.1, next_bomb - time.monotonic()))):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if sock.recv(4096):
                    continue  # the node said something; the connection stays
            except BlockingIOError:
                continue
            except OSError:
                pass
            selector.unregister(sock)
            sock.close()
            to_open.append(key.data)
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    selector.close()


@contextlib.contextmanager
def attacker(addresses: list[str]) -> Iterator[Any]:
    """Run `attack` in a child process; yields its counters [connections opened, bombs, CPU
    seconds used (filled in when it stops)]."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    counters = context.Array("d", 3)
    process = context.Process(target=attack, args=(addresses, stop, counters), daemon=True)
    process.start()
    try:
        yield counters
    finally:
        stop.set()
        assert process.pid is not None
        with contextlib.suppress(OSError):
            counters[2] = _cpu_s(process.pid)
        process.join(30)
        if process.is_alive():
            process.kill()
            process.join()


# --- the workload -------------------------------------------------------------------------------


async def _put_for(client: kvstore.aio.Client, inflight: int, duration_s: float) -> float:
    """Puts with `inflight` in flight for `duration_s`; returns completed puts per second."""
    done = 0
    errors = 0
    deadline = time.monotonic() + duration_s

    async def worker(number: int) -> None:
        nonlocal done, errors
        i = 0
        while time.monotonic() < deadline:
            try:
                await client.put(b"attack/%d/%d" % (number, i), VALUE, timeout_s=10)
                done += 1
            except kvstore.KVStoreError:
                errors += 1
            i += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(n) for n in range(inflight)))
    elapsed_s = time.monotonic() - started
    assert errors <= done // 100, f"{errors} errors for {done} puts"
    return done / elapsed_s


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds used by process `pid` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _members_cpu_s(cluster: LocalCluster) -> float:
    return sum(_cpu_s(m.process.pid) for m in cluster if m.process is not None)


def _terms(cluster: LocalCluster) -> dict[str, int]:
    with kvstore.Client(cluster.addresses, secret=SECRET, timeout_s=10) as client:
        return {m.node_id: client.status(m.address).term for m in cluster}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3, secret=SECRET) as local:
        with kvstore.Client(local.addresses, secret=SECRET, timeout_s=10) as client:
            local.wait_for_leader(client, timeout_s=30)
            client.put(b"attack/warmup", VALUE)
        yield local


@pytest.mark.parametrize("inflight", [64, 256])
def test_bench_attack_put_throughput_under_attack(
    benchmark: Any, cluster: LocalCluster, inflight: int
) -> None:
    figures: dict[str, float] = {}

    async def phases() -> None:
        async with kvstore.aio.Client(cluster.addresses, secret=SECRET, timeout_s=10) as client:
            await _put_for(client, inflight, 1.0)  # warm the connections
            cpu = _members_cpu_s(cluster)
            figures["before"] = await _put_for(client, inflight, PHASE_S)
            figures["cpu_before"], cpu = _members_cpu_s(cluster) - cpu, _members_cpu_s(cluster)
            with attacker(cluster.addresses) as counters:
                await asyncio.sleep(0.5)  # the idle connections are in place
                cpu = _members_cpu_s(cluster)
                figures["attacked"] = await _put_for(client, inflight, PHASE_S)
                figures["cpu_attacked"] = _members_cpu_s(cluster) - cpu
                figures["attacker_connections"] = counters[0]
                figures["attacker_bombs"] = counters[1]
            figures["attacker_cpu"] = counters[2]
            cpu = _members_cpu_s(cluster)
            figures["after"] = await _put_for(client, inflight, PHASE_S)
            figures["cpu_after"] = _members_cpu_s(cluster) - cpu

    terms_before = _terms(cluster)
    benchmark.pedantic(lambda: asyncio.run(phases()), rounds=1, iterations=1, warmup_rounds=0)
    terms_after = _terms(cluster)
    baseline = (figures["before"] + figures["after"]) / 2

    def ops(ops_per_s: float) -> float:
        return max(1.0, ops_per_s * PHASE_S)

    ratio = figures["attacked"] / baseline
    benchmark.extra_info.update(
        inflight=inflight,
        ops_per_s_before=round(figures["before"], 1),
        ops_per_s_attacked=round(figures["attacked"], 1),
        ops_per_s_after=round(figures["after"], 1),
        ratio=round(ratio, 3),
        attacker_connections=int(figures["attacker_connections"]),
        attacker_bombs=int(figures["attacker_bombs"]),
        attacker_cpu_s=round(figures["attacker_cpu"], 2),
        members_cpu_s_per_kop_before=round(
            1000 * figures["cpu_before"] / ops(figures["before"]), 3
        ),
        members_cpu_s_per_kop_attacked=round(
            1000 * figures["cpu_attacked"] / ops(figures["attacked"]), 3
        ),
        terms_before=str(terms_before),
        terms_after=str(terms_after),
    )
    print(
        f"\n{inflight} in flight: {figures['before']:.0f} ops/s before, "
        f"{figures['attacked']:.0f} under attack, {figures['after']:.0f} after: "
        f"ratio {ratio:.2f} (target >= {RATIO_TARGET}); attacker opened "
        f"{int(figures['attacker_connections'])} connections, sent "
        f"{int(figures['attacker_bombs'])} bombs, used {figures['attacker_cpu']:.1f} CPU s; "
        f"members' CPU ms per put {benchmark.extra_info['members_cpu_s_per_kop_before']} "
        f"before, {benchmark.extra_info['members_cpu_s_per_kop_attacked']} under attack; "
        f"terms {terms_before} -> {terms_after}"
    )
    assert terms_after == terms_before, "an election happened under attack"
    assert ratio >= RATIO_TARGET, f"throughput under attack is {ratio:.2f} of the baseline"
