"""A fault-injecting TCP proxy for the links between cluster members, all on 127.0.0.1.

Members know each other by node id, not by address, so a member's `--peers` map may name a
proxy's address for another member. `PeerMesh` sets up one proxy per ordered pair (a, b): the
one `a` dials to reach `b`. Traffic from a to b then flows forward through proxy a->b and
backward through proxy b->a (the answers on connections b opened), so `PeerMesh.set_link(a, b,
...)` changes both, and one direction can fail while the other works.

Faults, per direction of a proxy:
- ``pass``: forward bytes as they come.
- ``delay``: forward each chunk `delay_s` (plus up to `jitter_s`) after it arrived, in order.
- ``blackhole``: read and discard: the sender sees its writes succeed and nothing arrives,
  like packets dropped on the floor. A TCP stream cannot lose bytes in the middle and go on, so
  a connection that lost bytes is reset as soon as the direction heals (the peer reconnects).
- ``cut``: reset every connection at once and refuse new ones until healed.

`ProxyNetwork` runs every proxy on one asyncio loop in a background thread; its methods are
called from ordinary threads and return once the change is in effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

CHUNK_BYTES_MAX = 64 << 10
"""Largest chunk read from a socket at once."""
DELAYED_CHUNKS_MAX = 4096
"""Chunks held per direction of a connection while delayed; the reader waits past it."""
CONNECTIONS_MAX = 256
"""Open connections per proxy; more are refused."""
CONTROL_TIMEOUT_S = 10.0
"""How long a control call waits for the proxy loop."""

MODES = ("pass", "delay", "blackhole", "cut")


@dataclass(frozen=True, slots=True)
class Fault:
    """What one direction of a link does to the bytes it carries. See the module docstring."""

    mode: str = "pass"
    delay_s: float = 0.0
    jitter_s: float = 0.0
    """Extra random delay per chunk in [0, jitter_s); order within a connection is kept."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown fault mode {self.mode!r}; use one of {MODES}")
        if self.delay_s < 0 or self.jitter_s < 0:
            raise ValueError("delay_s and jitter_s must be >= 0")


PASS = Fault()
BLACKHOLE = Fault("blackhole")
CUT = Fault("cut")


def delay(delay_s: float, jitter_s: float = 0.0) -> Fault:
    """A `delay` fault."""
    return Fault("delay", delay_s, jitter_s)


@dataclass
class DirectionStats:
    """Bytes seen by one direction of a proxy since it started."""

    forwarded_bytes: int = 0
    dropped_bytes: int = 0
    resets: int = 0
    """Connections closed because of a fault (cut, or healed after losing bytes)."""


FORWARD, BACKWARD = 0, 1
"""Directions of a proxy: forward carries what the dialling side sends, backward the answers."""


class _Connection:
    """One proxied connection: two pumps, each with a writer task for delayed delivery."""

    def __init__(
        self,
        proxy: Proxy,
        streams: tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter], ...],
    ) -> None:
        self.proxy = proxy
        (self.down_reader, self.down_writer), (self.up_reader, self.up_writer) = streams
        self.tainted = [False, False]
        self.closed = False
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for direction, reader, writer in (
            (FORWARD, self.down_reader, self.up_writer),
            (BACKWARD, self.up_reader, self.down_writer),
        ):
            queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(DELAYED_CHUNKS_MAX)
            self.tasks.append(asyncio.create_task(self._pump(direction, reader, queue)))
            self.tasks.append(asyncio.create_task(self._deliver(direction, writer, queue)))

    async def _pump(
        self,
        direction: int,
        reader: asyncio.StreamReader,
        queue: asyncio.Queue[tuple[float, bytes]],
    ) -> None:
        loop = asyncio.get_running_loop()
        stats = self.proxy.stats[direction]
        try:
            while not self.closed:
                data = await reader.read(CHUNK_BYTES_MAX)
                if not data:
                    break
                fault = self.proxy.faults[direction]
                if fault.mode == "cut":
                    stats.resets += 1
                    break
                if fault.mode == "blackhole":
                    stats.dropped_bytes += len(data)
                    self.tainted[direction] = True
                    continue
                if self.tainted[direction]:
                    stats.resets += 1
                    break  # bytes were lost in the middle of this stream: it is unusable
                extra = fault.jitter_s * self.proxy.rng.random() if fault.jitter_s else 0.0
                due = loop.time() + (fault.delay_s + extra if fault.mode == "delay" else 0.0)
                await queue.put((due, data))
        except (ConnectionError, OSError):
            pass
        finally:
            self.close()

    async def _deliver(
        self,
        direction: int,
        writer: asyncio.StreamWriter,
        queue: asyncio.Queue[tuple[float, bytes]],
    ) -> None:
        loop = asyncio.get_running_loop()
        stats = self.proxy.stats[direction]
        due_last = 0.0
        try:
            while not self.closed:
                due, data = await queue.get()
                due = max(due, due_last)  # jitter never reorders a stream
                due_last = due
                wait_s = due - loop.time()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                if self.closed:
                    break
                writer.write(data)
                stats.forwarded_bytes += len(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Close both sockets (the pumps then end); safe to call twice."""
        if self.closed:
            return
        self.closed = True
        self.proxy.connections.discard(self)
        for writer in (self.down_writer, self.up_writer):
            with contextlib.suppress(Exception):
                writer.transport.abort()  # a reset, not a graceful FIN: like a broken link
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()


@dataclass(eq=False)
class Proxy:
    """One listening address on 127.0.0.1 that forwards to `target`, with a fault per direction."""

    name: str
    target: str
    address: str = ""
    """host:port to dial instead of `target` (set once listening)."""
    faults: list[Fault] = field(default_factory=lambda: [PASS, PASS])
    stats: list[DirectionStats] = field(
        default_factory=lambda: [DirectionStats(), DirectionStats()]
    )
    connections: set[_Connection] = field(default_factory=set)
    rng: random.Random = field(default_factory=random.Random)
    _server: asyncio.Server | None = None

    async def _start(self, port: int) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        bound = self._server.sockets[0].getsockname()
        self.address = f"{bound[0]}:{bound[1]}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if CUT in self.faults or len(self.connections) >= CONNECTIONS_MAX:
            writer.transport.abort()
            return
        host, _, port = self.target.rpartition(":")
        try:
            upstream = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.transport.abort()  # the target is down: so is this connection
            return
        if CUT in self.faults:  # cut while we were dialling
            writer.transport.abort()
            upstream[1].transport.abort()
            return
        connection = _Connection(self, ((reader, writer), upstream))
        self.connections.add(connection)
        connection.start()

    def _apply(self, forward: Fault | None, backward: Fault | None) -> None:
        for direction, fault in ((FORWARD, forward), (BACKWARD, backward)):
            if fault is None:
                continue
            self.faults[direction] = fault
            for connection in list(self.connections):
                if fault.mode == "cut" or (
                    fault.mode != "blackhole" and connection.tainted[direction]
                ):
                    self.stats[direction].resets += 1
                    connection.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


class ProxyNetwork:
    """Many proxies on one asyncio loop in a daemon thread. Use as a context manager."""

    def __init__(self, *, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="kvstore-proxies", daemon=True
        )
        self._thread.start()
        self.proxies: dict[str, Proxy] = {}
        self._closed = False

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(CONTROL_TIMEOUT_S)

    def add(self, name: str, target: str, *, port: int = 0) -> Proxy:
        """Start a proxy to `target` ("host:port") listening on 127.0.0.1:`port` (0: any)."""
        if name in self.proxies:
            raise ValueError(f"a proxy named {name!r} exists already")
        proxy = Proxy(name, target, rng=random.Random(self._rng.getrandbits(64)))
        self._call(proxy._start(port))
        self.proxies[name] = proxy
        return proxy

    def set(
        self, name: str, *, forward: Fault | None = None, backward: Fault | None = None
    ) -> None:
        """Change the faults of one proxy (None: leave that direction as it is)."""
        proxy = self.proxies[name]

        async def apply() -> None:
            proxy._apply(forward, backward)

        self._call(apply())

    def heal(self) -> None:
        """Every direction of every proxy back to `pass` (resetting connections that lost data)."""

        async def apply() -> None:
            for proxy in self.proxies.values():
                proxy._apply(PASS, PASS)

        self._call(apply())

    def close(self) -> None:
        """Stop every proxy and the loop; safe to call twice."""
        if self._closed:
            return
        self._closed = True

        async def shutdown() -> None:
            for proxy in self.proxies.values():
                await proxy._close()

        with contextlib.suppress(Exception):
            self._call(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CONTROL_TIMEOUT_S)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> ProxyNetwork:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class PeerMesh:
    """A proxy for every ordered pair of members; faults are set per direction of traffic.

    `addresses` maps each node id to the address it listens on. `peers_for(a)` is the `--peers`
    map member a should start with: its own real address, and the proxy a->b for every b.
    """

    def __init__(self, network: ProxyNetwork, addresses: Mapping[str, str]) -> None:
        self.network = network
        self.addresses = dict(addresses)
        self.links: dict[tuple[str, str], Fault] = {}
        for src in self.addresses:
            for dst in self.addresses:
                if src != dst:
                    network.add(self._name(src, dst), self.addresses[dst])
                    self.links[(src, dst)] = PASS

    @staticmethod
    def _name(src: str, dst: str) -> str:
        return f"{src}->{dst}"

    def peers_for(self, node_id: str) -> dict[str, str]:
        """The peers map for `node_id`: itself at its own address, the others via proxies."""
        return {
            other: (
                address
                if other == node_id
                else self.network.proxies[self._name(node_id, other)].address
            )
            for other, address in self.addresses.items()
        }

    def set_link(self, src: str, dst: str, fault: Fault) -> None:
        """What happens to everything `src` sends to `dst` (on connections either one opened)."""
        self.network.set(self._name(src, dst), forward=fault)
        self.network.set(self._name(dst, src), backward=fault)
        self.links[(src, dst)] = fault

    def set_links(self, pairs: Iterable[tuple[str, str]], fault: Fault) -> None:
        """`set_link` for each (src, dst) pair."""
        for src, dst in pairs:
            self.set_link(src, dst, fault)

    def partition(self, *groups: Iterable[str], fault: Fault = BLACKHOLE) -> None:
        """Cut traffic between the groups both ways; members left out of every group form one
        more group. Links inside a group are healed."""
        sides = [set(group) for group in groups]
        rest = set(self.addresses) - set().union(*sides)
        if rest:
            sides.append(rest)
        side_of = {node: index for index, side in enumerate(sides) for node in side}
        for src, dst in self.links:
            self.set_link(src, dst, PASS if side_of[src] == side_of[dst] else fault)

    def bridge(self, left: Iterable[str], middle: str, right: Iterable[str]) -> None:
        """Two halves that cannot talk to each other, and one member that talks to both."""
        left_set, right_set = set(left), set(right)
        if middle in left_set | right_set or left_set & right_set:
            raise ValueError("the bridge member and the two halves must not overlap")
        for src, dst in self.links:
            split = (src in left_set and dst in right_set) or (src in right_set and dst in left_set)
            self.set_link(src, dst, BLACKHOLE if split else PASS)

    def isolate(self, node_id: str, fault: Fault = BLACKHOLE) -> None:
        """Cut `node_id` from every other member, both ways."""
        self.partition([node_id], fault=fault)

    def heal(self) -> None:
        """Every link back to `pass`."""
        for pair in self.links:
            self.links[pair] = PASS
        self.network.heal()

    def describe(self) -> str:
        """The faulty links, e.g. "n1->n2 blackhole, n3->n1 delay 0.05s"; "healed" if none."""
        parts = [
            f"{src}->{dst} {fault.mode}" + (f" {fault.delay_s:g}s" if fault.mode == "delay" else "")
            for (src, dst), fault in sorted(self.links.items())
            if fault.mode != "pass"
        ]
        return ", ".join(parts) if parts else "healed"
