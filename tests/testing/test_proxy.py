"""The fault-injecting TCP proxy, against a tiny echo server on 127.0.0.1."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from kvstore.testing.local_cluster import wait_until
from kvstore.testing.proxy import (
    BACKWARD,
    BLACKHOLE,
    CUT,
    FORWARD,
    PASS,
    Fault,
    PeerMesh,
    ProxyNetwork,
    delay,
)

WAIT_S = 5.0


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server = self.server
        assert isinstance(server, EchoServer)
        while True:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            with server.lock:
                server.received += data
            try:
                self.request.sendall(data)
            except OSError:
                return


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.lock = threading.Lock()
        self.received = b""

    @property
    def address(self) -> str:
        host, port = self.server_address[:2]
        return f"{host}:{port}"


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def network() -> Iterator[ProxyNetwork]:
    with ProxyNetwork(seed=1) as net:
        yield net


def dial(address: str, timeout_s: float = WAIT_S) -> socket.socket:
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=timeout_s)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def is_closed(sock: socket.socket, timeout_s: float = WAIT_S) -> bool:
    """True if the peer closes or resets `sock` within the deadline."""
    sock.settimeout(timeout_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_pass_forwards_both_ways(echo: EchoServer, network: ProxyNetwork) -> None:
    proxy = network.add("p", echo.address)
    with dial(proxy.address) as sock:
        payload = bytes(range(256)) * 1000
        sock.sendall(payload)
        assert recv_exactly(sock, len(payload)) == payload
    # The counters are bumped right after each write, so the data may arrive first.
    wait_until(
        lambda: (
            proxy.stats[FORWARD].forwarded_bytes == len(payload)
            and proxy.stats[BACKWARD].forwarded_bytes == len(payload)
        ),
        timeout_s=WAIT_S,
        what="the byte counters",
    )


def test_delay_holds_each_chunk_and_keeps_order(echo: EchoServer, network: ProxyNetwork) -> None:
    proxy = network.add("p", echo.address)
    network.set("p", forward=delay(0.2, jitter_s=0.05))
    with dial(proxy.address) as sock:
        started = time.monotonic()
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"
        elapsed_s = time.monotonic() - started
        assert 0.2 <= elapsed_s < 2.0
        # Many small writes with jitter still arrive whole and in order.
        payload = b"".join(b"%06d" % i for i in range(2000))
        for i in range(0, len(payload), 600):
            sock.sendall(payload[i : i + 600])
        assert recv_exactly(sock, len(payload)) == payload


def test_blackhole_drops_then_resets_on_heal(echo: EchoServer, network: ProxyNetwork) -> None:
    proxy = network.add("p", echo.address)
    with dial(proxy.address) as sock:
        sock.sendall(b"before")
        assert recv_exactly(sock, 6) == b"before"
        network.set("p", forward=BLACKHOLE)
        sock.sendall(b"lost")
        wait_until(lambda: proxy.stats[FORWARD].dropped_bytes == 4, timeout_s=WAIT_S, what="a drop")
        assert echo.received == b"before"
        network.heal()
        # The stream lost bytes: the proxy resets it instead of delivering a gap.
        assert is_closed(sock)
    with dial(proxy.address) as sock:
        sock.sendall(b"after")
        assert recv_exactly(sock, 5) == b"after"


def test_one_way_blackhole_lets_the_other_way_through(
    echo: EchoServer, network: ProxyNetwork
) -> None:
    proxy = network.add("p", echo.address)
    network.set("p", backward=BLACKHOLE)
    with dial(proxy.address) as sock:
        sock.sendall(b"hello")
        wait_until(lambda: echo.received == b"hello", timeout_s=WAIT_S, what="the server")
        wait_until(
            lambda: proxy.stats[BACKWARD].dropped_bytes == 5,
            timeout_s=WAIT_S,
            what="the answer to be dropped",
        )
        assert proxy.stats[BACKWARD].forwarded_bytes == 0


def test_cut_resets_connections_and_refuses_new_ones(
    echo: EchoServer, network: ProxyNetwork
) -> None:
    proxy = network.add("p", echo.address)
    with dial(proxy.address) as sock:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
        network.set("p", forward=CUT)
        assert is_closed(sock)
    with dial(proxy.address) as sock:
        assert is_closed(sock)
    network.set("p", forward=PASS)
    with dial(proxy.address) as sock:
        sock.sendall(b"y")
        assert recv_exactly(sock, 1) == b"y"


def test_target_down_closes_the_client_side(network: ProxyNetwork) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{server.getsockname()[1]}"
    server.close()  # nothing listens there now
    proxy = network.add("p", address)
    with dial(proxy.address) as sock:
        assert is_closed(sock)


def test_fault_validation() -> None:
    with pytest.raises(ValueError, match="mode"):
        Fault("drop-everything")
    with pytest.raises(ValueError):
        Fault("delay", delay_s=-1)


def test_mesh_routes_each_direction_through_its_own_proxies(network: ProxyNetwork) -> None:
    servers = {name: EchoServer() for name in ("a", "b", "c")}
    threads = [
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        for server in servers.values()
    ]
    for thread in threads:
        thread.start()
    try:
        mesh = PeerMesh(network, {name: s.address for name, s in servers.items()})
        peers_a = mesh.peers_for("a")
        assert peers_a["a"] == servers["a"].address
        assert peers_a["b"] == network.proxies["a->b"].address != servers["b"].address
        # Traffic from a to b is blocked on both proxies that carry it: forward on a->b (a
        # dialled b) and backward on b->a (b dialled a; what a answers flows back).
        mesh.set_link("a", "b", BLACKHOLE)
        assert network.proxies["a->b"].faults == [BLACKHOLE, PASS]
        assert network.proxies["b->a"].faults == [PASS, BLACKHOLE]
        with dial(peers_a["c"]) as sock:  # other links are untouched
            sock.sendall(b"ok")
            assert recv_exactly(sock, 2) == b"ok"
        mesh.partition(["a"], ["b", "c"])
        assert mesh.links[("b", "c")] == PASS
        assert mesh.links[("a", "c")] == BLACKHOLE and mesh.links[("c", "a")] == BLACKHOLE
        mesh.bridge(["a"], "b", ["c"])
        assert mesh.links[("a", "b")] == PASS and mesh.links[("b", "c")] == PASS
        assert mesh.links[("a", "c")] == BLACKHOLE and mesh.links[("c", "a")] == BLACKHOLE
        assert "a->c blackhole" in mesh.describe()
        mesh.heal()
        assert mesh.describe() == "healed"
        assert all(p.faults == [PASS, PASS] for p in network.proxies.values())
    finally:
        for server in servers.values():
            server.shutdown()
            server.server_close()
