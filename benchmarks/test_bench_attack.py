"""Throughput of a 3-member cluster under a sustained pre-auth attacker (issue 11).

A `LocalCluster` of 3 `kvstore serve` processes in the shared-secret mode, and one client
(`kvstore.aio.Client`) keeping `inflight` puts in flight, in alternating phases of `PHASE_S`
seconds: clean, attacked, clean, attacked, ... clean (`CYCLES` attacked phases). In an attacked
phase an attacker process (no secret) holds `SLOWLORIS_PER_MEMBER` idle connections against
every member, reopening each one the node closes, and sends every member a pre-auth bomb every
`BOMB_INTERVAL_S` (the header of an 8 MiB frame and 256 KiB of its body of empty msgpack arrays,
alternating with a whole 4 MiB frame: the issue's "4 MiB every 1.5 s" and more), all from the
clients' own address; in a clean phase it holds nothing and sends nothing.

The figure is the ratio of the attacked phases' throughput to the clean ones'; alternating
phases spread the drift of a shared machine over both sides. The target is >= 0.8, and no
election may happen: every member's term is the same before and after. Beside it: the members'
CPU per put in each kind of phase, and the attacker's own CPU (it runs on the same cores as the
cluster, as it would on a shared host, and what it uses is taken from the cluster).

Run with `pytest benchmarks/test_bench_attack.py --benchmark-only -s`; KVSTORE_ATTACK_PHASE_S
sets the seconds per phase (default 3).

Measured on this machine (2 shared cores, 4 runs): ratio at 64 in flight min 0.99, median 1.01;
at 256 in flight min 0.82, median 0.94; no election in any run. The attacker opened about 100
connections and sent 5 bombs per second, using some 0.06 CPU-s/s itself; against an idle
cluster it raised the members' CPU from 0.048 to about 0.07-0.08 CPU-s/s in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
PHASE_S = float(os.environ.get("KVSTORE_ATTACK_PHASE_S", "3"))
CYCLES = 3
RAMP_S = 0.3
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


def _close_all(selector: selectors.BaseSelector) -> int:
    keys = list(selector.get_map().values())
    for key in keys:
        selector.unregister(key.fileobj)
        key.fileobj.close()  # type: ignore[union-attr]
    return len(keys)


def attack(addresses: list[str], active: Any, stop: Any, counters: Any) -> None:
    """Slowloris and pre-auth bombs against every address while `active` is set, until `stop`
    is set; while `active` is clear, it holds no connection and sends nothing.

    Idle connections wait in one selector, so the attacker spends its CPU on reopening what the
    nodes close, not on polling what they keep."""
    selector = selectors.DefaultSelector()
    to_open: list[str] = []
    next_bomb = time.monotonic()
    bombs = 0
    while not stop.is_set():
        if not active.is_set():
            _close_all(selector)
            to_open = [address for address in addresses for _ in range(SLOWLORIS_PER_MEMBER)]
            active.wait(0.05)
            next_bomb = time.monotonic()
            continue
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
        while to_open and time.monotonic() < next_bomb and active.is_set():
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
    _close_all(selector)
    selector.close()


class Attacker:
    """`attack` in a child process, switched on and off by `active`. `counters` holds the
    connections opened and the bombs sent so far; `cpu_s()` the CPU seconds it used."""

    def __init__(self, addresses: list[str]) -> None:
        context = multiprocessing.get_context("spawn")
        self.active = context.Event()
        self._stop = context.Event()
        self.counters = context.Array("q", 2)
        self._process = context.Process(
            target=attack, args=(addresses, self.active, self._stop, self.counters), daemon=True
        )

    def cpu_s(self) -> float:
        assert self._process.pid is not None
        return _cpu_s(self._process.pid)

    def __enter__(self) -> Attacker:
        self._process.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._process.join(30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


# --- the workload -------------------------------------------------------------------------------


async def _put_for(client: kvstore.aio.Client, inflight: int, duration_s: float) -> int:
    """Puts with `inflight` in flight for `duration_s`; returns how many completed."""
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

    await asyncio.gather(*(worker(n) for n in range(inflight)))
    assert errors <= done // 100, f"{errors} errors for {done} puts"
    return done


@dataclasses.dataclass
class _Phases:
    """What the phases of one kind (clean or attacked) added up to."""

    puts: int = 0
    seconds: float = 0.0
    members_cpu_s: float = 0.0
    rates: list[float] = dataclasses.field(default_factory=list)

    async def run(self, client: kvstore.aio.Client, cluster: LocalCluster, inflight: int) -> None:
        cpu = _members_cpu_s(cluster)
        started = time.monotonic()
        puts = await _put_for(client, inflight, PHASE_S)
        seconds = time.monotonic() - started
        self.members_cpu_s += _members_cpu_s(cluster) - cpu
        self.puts += puts
        self.seconds += seconds
        self.rates.append(puts / seconds)

    @property
    def ops_per_s(self) -> float:
        return self.puts / self.seconds

    @property
    def cpu_ms_per_put(self) -> float:
        return 1000 * self.members_cpu_s / max(1, self.puts)


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
    clean, attacked = _Phases(), _Phases()
    attacker_figures: dict[str, float] = {}

    async def phases() -> None:
        async with kvstore.aio.Client(cluster.addresses, secret=SECRET, timeout_s=10) as client:
            await _put_for(client, inflight, 1.0)  # warm the connections
            with Attacker(cluster.addresses) as attacker:
                for _ in range(CYCLES):
                    await clean.run(client, cluster, inflight)
                    attacker.active.set()
                    await asyncio.sleep(RAMP_S)  # the idle connections are in place
                    await attacked.run(client, cluster, inflight)
                    attacker.active.clear()
                    await asyncio.sleep(RAMP_S)  # ... and gone
                await clean.run(client, cluster, inflight)
                attacker_figures["connections"] = attacker.counters[0]
                attacker_figures["bombs"] = attacker.counters[1]
                attacker_figures["cpu_s"] = attacker.cpu_s()

    terms_before = _terms(cluster)
    benchmark.pedantic(lambda: asyncio.run(phases()), rounds=1, iterations=1, warmup_rounds=0)
    terms_after = _terms(cluster)
    ratio = attacked.ops_per_s / clean.ops_per_s
    benchmark.extra_info.update(
        inflight=inflight,
        ops_per_s_clean=round(clean.ops_per_s, 1),
        ops_per_s_attacked=round(attacked.ops_per_s, 1),
        ratio=round(ratio, 3),
        clean_phases=[round(rate) for rate in clean.rates],
        attacked_phases=[round(rate) for rate in attacked.rates],
        members_cpu_ms_per_put_clean=round(clean.cpu_ms_per_put, 4),
        members_cpu_ms_per_put_attacked=round(attacked.cpu_ms_per_put, 4),
        attacker_connections=int(attacker_figures["connections"]),
        attacker_bombs=int(attacker_figures["bombs"]),
        attacker_cpu_s=round(attacker_figures["cpu_s"], 2),
        terms_before=str(terms_before),
        terms_after=str(terms_after),
    )
    print(
        f"\n{inflight} in flight: {clean.ops_per_s:.0f} ops/s clean "
        f"{[round(rate) for rate in clean.rates]}, {attacked.ops_per_s:.0f} under attack "
        f"{[round(rate) for rate in attacked.rates]}: ratio {ratio:.2f} (target >= "
        f"{RATIO_TARGET}); members' CPU per put {clean.cpu_ms_per_put:.3f} ms clean, "
        f"{attacked.cpu_ms_per_put:.3f} ms attacked; attacker opened "
        f"{int(attacker_figures['connections'])} connections, sent "
        f"{int(attacker_figures['bombs'])} bombs, used {attacker_figures['cpu_s']:.1f} CPU s; "
        f"terms {terms_before} -> {terms_after}"
    )
    assert terms_after == terms_before, "an election happened under attack"
    assert ratio >= RATIO_TARGET, f"throughput under attack is {ratio:.2f} of the baseline"
