"""The nemesis: faults injected into a cluster of `kvstore serve` processes.

Process faults (through `LocalCluster`): kill -9 and restart one member, the leader, a majority
or all of them; pause and resume (SIGSTOP/SIGCONT). Network faults: through a `PeerMesh` of TCP
proxies on 127.0.0.1 (black hole, delay, cut; one or both directions; majority/minority,
isolated leader, bridge), or at the network layer when the members run in namespaces
(`kvstore.testing.netns`). Disk faults on a stopped member's redo log (the functions at the end
of this module): a torn last write cut at a random byte, a torn write with a zeroed sector, and a
flipped byte in the middle of the log.

Every choice comes from one seeded `random.Random`, and every fault is written to a log of
`FaultEvent`s with its time, so a failing run says what was done to the cluster and when.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kvstore.errors import KVStoreError
from kvstore.testing import walformat
from kvstore.testing.local_cluster import LocalCluster, wait_until
from kvstore.testing.proxy import BLACKHOLE, Fault, PeerMesh

if TYPE_CHECKING:
    from kvstore.testing.netns import NetnsLab


@dataclass
class FaultEvent:
    """One fault the nemesis injected, or one heal."""

    at_s: float
    """Seconds since the nemesis started."""
    action: str
    """e.g. "kill", "restart", "pause", "partition", "heal", "tear-tail"."""
    targets: tuple[str, ...] = ()
    detail: str = ""

    def describe(self) -> str:
        """One line: time, action, targets, detail."""
        targets = ",".join(self.targets)
        return f"{self.at_s:7.2f}s {self.action} {targets} {self.detail}".rstrip()


@dataclass
class Nemesis:
    """Injects faults into `cluster` and records them. Heal everything with `heal_all()`.

    `leader` is a callable returning the current leader's node id (or None); the schedules use
    it to aim at the leader. `mesh` enables proxy faults, `lab` network-namespace faults.
    """

    cluster: LocalCluster
    rng: random.Random
    leader: Callable[[], str | None]
    mesh: PeerMesh | None = None
    lab: NetnsLab | None = None
    events: list[FaultEvent] = field(default_factory=list)
    killed: set[str] = field(default_factory=set)
    paused: set[str] = field(default_factory=set)
    started: float = field(default_factory=time.monotonic)
    network_faulty: bool = False

    def record(self, action: str, targets: Iterable[str] = (), detail: str = "") -> None:
        """Add an event to the log (schedules record their own steps, e.g. disk faults)."""
        if action in ("partition", "isolate", "bridge", "one-way", "slow", "netem"):
            self.network_faulty = True
        self.events.append(
            FaultEvent(time.monotonic() - self.started, action, tuple(targets), detail)
        )

    @property
    def node_ids(self) -> list[str]:
        """Every member's node id."""
        return list(self.cluster.members)

    def leader_or_any(self) -> str:
        """The leader's id if one is known, else a random member's."""
        leader = self.leader()
        return leader if leader is not None else self.rng.choice(self.node_ids)

    def majority(self, including: str | None = None) -> list[str]:
        """A random majority of the members, containing `including` if given."""
        others = [n for n in self.node_ids if n != including]
        self.rng.shuffle(others)
        size = len(self.node_ids) // 2 + 1
        chosen = ([including] if including else []) + others
        return sorted(chosen[:size])

    # --- processes ----------------------------------------------------------------------------

    def kill(self, node_ids: Iterable[str]) -> None:
        """SIGKILL each member (resuming it first if paused, so it dies at once)."""
        targets = sorted(set(node_ids) - self.killed)
        for node_id in targets:
            self.cluster.kill(node_id)
            self.paused.discard(node_id)
            self.killed.add(node_id)
        self.record("kill", targets)

    def restart(self, node_ids: Iterable[str] | None = None) -> None:
        """Start killed members again from their data directories (default: all killed)."""
        targets = sorted(self.killed if node_ids is None else set(node_ids) & self.killed)
        for node_id in targets:
            self.cluster.restart(node_id)
            self.killed.discard(node_id)
        if targets:
            self.record("restart", targets)

    def pause(self, node_ids: Iterable[str]) -> None:
        """SIGSTOP each member: its sockets stay open, it answers nothing."""
        targets = sorted(set(node_ids) - self.paused - self.killed)
        for node_id in targets:
            self.cluster.pause(node_id)
            self.paused.add(node_id)
        self.record("pause", targets)

    def resume(self, node_ids: Iterable[str] | None = None) -> None:
        """SIGCONT paused members (default: all paused)."""
        targets = sorted(self.paused if node_ids is None else set(node_ids) & self.paused)
        for node_id in targets:
            self.cluster.resume(node_id)
            self.paused.discard(node_id)
        if targets:
            self.record("resume", targets)

    # --- network ------------------------------------------------------------------------------

    def partition(self, *groups: Iterable[str], fault: Fault = BLACKHOLE) -> None:
        """Split the members into groups that cannot reach each other."""
        sides = [sorted(group) for group in groups]
        if self.lab is not None:
            self.lab.partition(*sides)
        else:
            self._need_mesh().partition(*sides, fault=fault)
        self.record("partition", (), " | ".join(",".join(side) for side in sides))

    def isolate(self, node_id: str) -> None:
        """Cut one member off from all others."""
        if self.lab is not None:
            self.lab.link_down(node_id)
        else:
            self._need_mesh().isolate(node_id)
        self.record("isolate", [node_id])

    def bridge(self) -> None:
        """Two halves that cannot talk, joined by one member that talks to both (proxies)."""
        nodes = self.node_ids
        self.rng.shuffle(nodes)
        middle, rest = nodes[0], nodes[1:]
        half = len(rest) // 2
        left, right = rest[:half], rest[half:]
        self._need_mesh().bridge(left, middle, right)
        self.record("bridge", [middle], f"{','.join(sorted(left))} | {','.join(sorted(right))}")

    def one_way(self, src: str, dsts: Iterable[str], fault: Fault = BLACKHOLE) -> None:
        """Everything `src` sends to each of `dsts` is lost; the other direction works."""
        targets = sorted(dsts)
        mesh = self._need_mesh()
        for dst in targets:
            mesh.set_link(src, dst, fault)
        self.record("one-way", [src], f"-> {','.join(targets)} {fault.mode}")

    def slow_links(self, fault: Fault) -> None:
        """Apply `fault` (usually a delay) to every link, both ways."""
        mesh = self._need_mesh()
        mesh.set_links(list(mesh.links), fault)
        self.record("slow", (), f"{fault.mode} {fault.delay_s:g}s jitter {fault.jitter_s:g}s")

    def netem(self, node_id: str, spec: str) -> None:
        """`tc netem` on a member's interface (namespaces only), e.g. "delay 50ms loss 10%"."""
        if self.lab is None:
            raise RuntimeError("netem needs the members in network namespaces")
        self.lab.netem(node_id, spec)
        self.record("netem", [node_id], spec)

    def heal_network(self) -> None:
        """Every link back to normal."""
        if not self.network_faulty:
            return
        if self.mesh is not None:
            self.mesh.heal()
        if self.lab is not None:
            self.lab.heal()
        self.network_faulty = False
        self.record("heal-network")

    def _need_mesh(self) -> PeerMesh:
        if self.mesh is None:
            raise RuntimeError("this fault needs a PeerMesh of proxies between the members")
        return self.mesh

    # --- everything -----------------------------------------------------------------------------

    def heal_all(self) -> None:
        """Resume paused members, heal the network, restart killed members."""
        self.resume()
        self.heal_network()
        self.restart()

    def describe(self) -> str:
        """Every recorded event, one per line."""
        return "\n".join(event.describe() for event in self.events)


def wait_serving(
    probe: Callable[[], object], *, timeout_s: float, interval_s: float = 0.05
) -> float:
    """Call `probe` until it returns without a kvstore or OS error; return the seconds it took.

    Raises TimeoutError naming the last error if the cluster does not serve within `timeout_s`.
    """
    started = time.monotonic()
    last: list[BaseException] = []

    def attempt() -> bool:
        try:
            probe()
        except (KVStoreError, OSError) as exc:
            last[:] = [exc]
            return False
        return True

    try:
        wait_until(attempt, timeout_s=timeout_s, interval_s=interval_s, what="the cluster to serve")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; last error: {last[0]!r}" if last else str(exc)) from None
    return time.monotonic() - started


# --- disk faults --------------------------------------------------------------------------------
#
# The redo log's format is in native/FORMAT.md, and `kvstore.testing.walformat` is its one
# Python reader: these functions use it to find record boundaries, and forge only what a crash
# or a bad disk could leave behind.

SECTOR_BYTES = 512


@dataclass(frozen=True, slots=True)
class DiskFault:
    """What a disk fault did: to which file, at which byte offset."""

    kind: str
    """"torn-tail", "torn-sector" or "flipped-byte"."""
    path: Path
    offset: int
    """For a torn write, where the partial record starts (recovery cuts the log there); for a
    flipped byte, where the damaged record starts (the offset the log reports as corrupt)."""
    detail: str


def wal_segments(data_dir: str | os.PathLike[str]) -> list[Path]:
    """The member's redo-log segments, oldest first."""
    return walformat.segment_paths(Path(data_dir) / "wal")


def _forge_partial_record(path: Path, rng: random.Random) -> tuple[int, bytearray, int]:
    """A complete, valid ENTRY record placed right after the last valid one of `path`.

    It is never written whole: the callers damage it first, as a crash in the middle of its
    write would. Its index is absurd so that, were it ever accepted, the damage would show.
    Returns (offset, record bytes, payload length).
    """
    records = walformat.read_records(path)
    if not records:
        raise ValueError(f"{path} holds no valid record")
    offset = records[-1].end
    payload = struct.pack("<QQ", 1 << 62, 1 << 40) + rng.randbytes(rng.randrange(1200, 3000))
    seq = walformat.segment_seq(path)
    encoded = walformat.encode_record(seq, offset, walformat.REC_ENTRY, payload)
    record = bytearray(encoded[: walformat.HEADER_BYTES + len(payload)])  # without the padding
    size = path.stat().st_size
    if offset + len(record) > size:
        raise ValueError(f"{path}: no room after the last record for a torn write")
    return offset, record, len(payload)


def tear_tail(data_dir: str | os.PathLike[str], rng: random.Random) -> DiskFault:
    """A crash in the middle of the last write: a new record cut at a random byte.

    Only bytes after the last valid record change, so nothing that was ever acknowledged is
    lost; on restart the member must cut the partial record and rejoin.
    """
    path = wal_segments(data_dir)[-1]
    offset, record, _ = _forge_partial_record(path, rng)
    cut = rng.randrange(1, len(record))  # at least one byte written, at least one missing
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(bytes(record[:cut]))
        file.flush()
        os.fsync(file.fileno())
    return DiskFault("torn-tail", path, offset, f"partial record of {cut}/{len(record)} bytes")


def zero_tail_sector(data_dir: str | os.PathLike[str], rng: random.Random) -> DiskFault:
    """A torn multi-sector write: a new record written whole except one zeroed 512-byte sector
    in its middle. As with `tear_tail`, only never-acknowledged bytes change."""
    path = wal_segments(data_dir)[-1]
    offset, record, _ = _forge_partial_record(path, rng)
    # Sectors that lie wholly inside the record, except its last one, so that non-zero bytes
    # follow the hole: the log must not mistake it for the clean end of the records.
    first = (offset + SECTOR_BYTES - 1) // SECTOR_BYTES
    last = (offset + len(record)) // SECTOR_BYTES - 1
    if last < first:
        raise ValueError(f"{path}: the forged record spans no whole inner sector")
    sector = rng.randint(first, last) * SECTOR_BYTES
    start = sector - offset
    record[start : start + SECTOR_BYTES] = bytes(SECTOR_BYTES)
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(bytes(record))
        file.flush()
        os.fsync(file.fileno())
    return DiskFault("torn-sector", path, offset, f"sector at byte {sector} zeroed")


def flip_middle_byte(data_dir: str | os.PathLike[str], rng: random.Random) -> DiskFault:
    """Flip one byte of a record that valid records follow: in an older segment if there is
    one, else in the middle of the only one. The member must refuse to start with
    `CorruptionError` naming this file and the record's offset."""
    segments = wal_segments(data_dir)
    path = rng.choice(segments[:-1]) if len(segments) > 1 else segments[-1]
    records = walformat.read_records(path)
    # Skip the segment's own header record (offset 0) and keep at least one valid record after.
    candidates = records[1:-1] if path == segments[-1] else records[1:]
    if not candidates:
        raise ValueError(f"{path} has no record in its middle to damage")
    victim = rng.choice(candidates)
    where = victim.offset + rng.randrange(walformat.HEADER_BYTES + victim.length)
    with open(path, "r+b") as file:
        file.seek(where)
        old = file.read(1)[0]
        file.seek(where)
        file.write(bytes([old ^ (1 << rng.randrange(8))]))
        file.flush()
        os.fsync(file.fileno())
    return DiskFault(
        "flipped-byte",
        path,
        victim.offset,
        f"bit flipped at byte {where} (record at {victim.offset}, type {victim.type})",
    )


def installed_snapshot(data_dir: str | os.PathLike[str]) -> bool:
    """Whether the member's redo log records that it installed a snapshot from a leader (a
    SNAPSHOT record with the RESET flag, FORMAT.md §4)."""
    return any(
        record.type == walformat.REC_SNAPSHOT and record.aux & walformat.SNAPSHOT_FLAG_RESET
        for path in wal_segments(data_dir)
        for record in walformat.read_records(path)
    )


def wipe_data_dir(data_dir: str | os.PathLike[str]) -> None:
    """Remove a member's data directory (the operator's recovery from corruption)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(data_dir)
