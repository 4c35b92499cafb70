"""Members on separate "hosts": one Linux network namespace each, faults at the network layer.

Needs root and iproute2 (`ip`, and `tc` for netem). `probe()` says why it cannot work here, so
tests can skip with a clear reason. Every namespace, link and address is created by the lab
itself and removed by `close()`; nothing touches the host's own interfaces or addresses.

Layout, for members n1..nN (i = 1..N):

    hub namespace:  bridges br0 and br1; port v<i> of member i sits on br0 (or br1 when
                    partitioned away)
    member i:       eth0 = 10.77.0.<10+i>/24 (the peer-to-peer network, via the hub),
                    cl0  = 10.78.<i>.2/30 (a private link to the client namespace)
    client:         c<i> = 10.78.<i>.1/30, with a host route to 10.77.0.<10+i> through it

Members listen on their eth0 address. Clients (the workload, status probes) run in the client
namespace, over links that partitions never touch: like Jepsen's control node, they watch the
cluster without being part of its network faults. Partitions move member ports between the two
bridges or take a port down (link down), and `netem()` adds delay, loss or reordering with
`tc netem` on a member's eth0, when the kernel has the netem qdisc.

Code that must run in the client namespace is run by `in_client(function)`: it runs on a new
thread that first enters the namespace (setns), and threads it starts inherit it.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
COMMAND_TIMEOUT_S = 20.0
PORT = 7000
"""The port every member listens on (each has its own address)."""

_counter = 0
_counter_lock = threading.Lock()


class NetnsUnavailable(RuntimeError):
    """Network namespaces (or netem) cannot be used on this machine; the message says why."""


def _run(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )
    if check and result.returncode != 0:
        raise NetnsUnavailable(
            f"`{' '.join(args)}` failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result


def _unique_prefix() -> str:
    global _counter
    with _counter_lock:
        _counter += 1
        return f"kvt{os.getpid() % 100000}x{_counter}"


def probe() -> str | None:
    """None if namespaces with veth pairs and a bridge can be made here, else the reason."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    name = _unique_prefix() + "p"
    try:
        _run(["ip", "netns", "add", name])
    except NetnsUnavailable as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _run(["ip", "-n", name, "link", "add", "b0", "type", "bridge"])
        _run(["ip", "-n", name, "link", "add", "va", "type", "veth", "peer", "name", "vb"])
        _run(["ip", "-n", name, "link", "set", "va", "master", "b0"])
    except NetnsUnavailable as exc:
        return f"cannot create veth pairs or bridges: {exc}"
    finally:
        _run(["ip", "netns", "del", name], check=False)
    return None


def probe_netem() -> str | None:
    """None if `tc netem` works in a namespace here, else the reason."""
    reason = probe()
    if reason is not None:
        return reason
    if shutil.which("tc") is None:
        return "tc (iproute2) is not installed"
    name = _unique_prefix() + "q"
    _run(["ip", "netns", "add", name])
    try:
        _run(["ip", "-n", name, "link", "add", "va", "type", "veth", "peer", "name", "vb"])
        result = _run(
            ["ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "va", "root", "netem"],
            check=False,
        )
        if result.returncode != 0:
            return f"tc netem is unavailable (kernel without sch_netem?): {result.stderr.strip()}"
    finally:
        _run(["ip", "netns", "del", name], check=False)
    return None


class NetnsLab:
    """The namespaces, links and addresses for one cluster. Use as a context manager."""

    def __init__(self, node_ids: Iterable[str]) -> None:
        self.node_ids = list(node_ids)
        if len(self.node_ids) > 200:
            raise ValueError("at most 200 members")
        self.prefix = _unique_prefix()
        self.hub = f"{self.prefix}h"
        self.client = f"{self.prefix}c"
        self.namespaces: list[str] = []
        self._number = {node_id: i for i, node_id in enumerate(self.node_ids, start=1)}
        self._netem: set[str] = set()

    # --- naming -----------------------------------------------------------------------------

    def namespace(self, node_id: str) -> str:
        """The namespace that member runs in."""
        return f"{self.prefix}n{self._number[node_id]}"

    def address(self, node_id: str) -> str:
        """host:port the member listens on (its peer and client service)."""
        return f"10.77.0.{10 + self._number[node_id]}:{PORT}"

    def exec_prefix(self, node_id: str) -> list[str]:
        """Prefix a command with this to run it in the member's namespace."""
        return ["ip", "netns", "exec", self.namespace(node_id)]

    def _port(self, node_id: str) -> str:
        return f"v{self._number[node_id]}"

    # --- life cycle ---------------------------------------------------------------------------

    def create(self) -> NetnsLab:
        """Make every namespace, bridge, link, address and route; undone by `close()`."""
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def _add_namespace(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _create(self) -> None:
        self._add_namespace(self.hub)
        self._add_namespace(self.client)
        for bridge in ("br0", "br1"):
            _run(["ip", "-n", self.hub, "link", "add", bridge, "type", "bridge"])
            _run(["ip", "-n", self.hub, "link", "set", bridge, "up"])
        for node_id, i in self._number.items():
            ns = self.namespace(node_id)
            self._add_namespace(ns)
            # The peer-to-peer link: eth0 in the member, v<i> on the hub's bridge.
            _run(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"v{i}"])
            _run(["ip", "-n", ns, "link", "set", f"v{i}", "netns", self.hub])
            _run(["ip", "-n", self.hub, "link", "set", f"v{i}", "master", "br0", "up"])
            _run(["ip", "-n", ns, "addr", "add", f"10.77.0.{10 + i}/24", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            # The client link: cl0 in the member, c<i> in the client namespace.
            _run(["ip", "-n", ns, "link", "add", "cl0", "type", "veth", "peer", "name", f"c{i}"])
            _run(["ip", "-n", ns, "link", "set", f"c{i}", "netns", self.client])
            _run(["ip", "-n", ns, "addr", "add", f"10.78.{i}.2/30", "dev", "cl0"])
            _run(["ip", "-n", ns, "link", "set", "cl0", "up"])
            _run(["ip", "-n", self.client, "addr", "add", f"10.78.{i}.1/30", "dev", f"c{i}"])
            _run(["ip", "-n", self.client, "link", "set", f"c{i}", "up"])
            route = [f"10.77.0.{10 + i}/32", "via", f"10.78.{i}.2", "dev", f"c{i}"]
            _run(["ip", "-n", self.client, "route", "add", *route])

    def close(self) -> None:
        """Delete every namespace the lab made (their links and addresses go with them)."""
        while self.namespaces:
            _run(["ip", "netns", "del", self.namespaces.pop()], check=False)

    def __enter__(self) -> NetnsLab:
        return self.create()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- faults -------------------------------------------------------------------------------

    def link_down(self, node_id: str) -> None:
        """Take the member's port on the hub down: it reaches no other member."""
        _run(["ip", "-n", self.hub, "link", "set", self._port(node_id), "down"])

    def link_up(self, node_id: str) -> None:
        """Bring the member's port on the hub back up."""
        _run(["ip", "-n", self.hub, "link", "set", self._port(node_id), "up"])

    def partition(self, *groups: Iterable[str]) -> None:
        """Two sides: the first group's ports move to br1, everyone else's stay on br0."""
        if len(groups) > 2:
            raise ValueError("a partition by bridges has two sides")
        away = set(groups[0]) if groups else set()
        for node_id in self.node_ids:
            bridge = "br1" if node_id in away else "br0"
            _run(["ip", "-n", self.hub, "link", "set", self._port(node_id), "master", bridge])

    def netem(self, node_id: str, spec: str) -> None:
        """Replace the member's eth0 qdisc with `tc netem <spec>` (e.g. "delay 50ms loss 5%")."""
        ns = self.namespace(node_id)
        command = ["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", "eth0", "root"]
        result = _run([*command, "netem", *spec.split()], check=False)
        if result.returncode != 0:
            raise NetnsUnavailable(f"tc netem failed: {result.stderr.strip()}")
        self._netem.add(node_id)

    def heal(self) -> None:
        """Every port up and on br0, every netem qdisc removed."""
        for node_id in self.node_ids:
            port = self._port(node_id)
            _run(["ip", "-n", self.hub, "link", "set", port, "master", "br0", "up"])
        for node_id in sorted(self._netem):
            ns = self.namespace(node_id)
            _run(
                ["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "eth0", "root"],
                check=False,
            )
        self._netem.clear()

    # --- running code in the client namespace ---------------------------------------------------

    def in_client(self, function: Callable[[], T], *, timeout_s: float | None = None) -> T:
        """Run `function` on a new thread inside the client namespace; return its result.

        Threads that `function` starts are born in the namespace too, and sockets keep the
        namespace they were made in, so a `kvstore.Client` built there works from any thread.
        """
        return run_in_namespace(self.client, function, timeout_s=timeout_s)


def run_in_namespace(name: str, function: Callable[[], T], *, timeout_s: float | None = None) -> T:
    """Run `function` on a new thread inside network namespace `name`; return its result."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def body() -> None:
        try:
            enter_namespace(name)
            future.set_result(function())
        except BaseException as exc:
            future.set_exception(exc)

    thread = threading.Thread(target=body, name=f"netns-{name}", daemon=True)
    thread.start()
    return future.result(timeout_s)


def enter_namespace(name: str) -> None:
    """Move the calling thread into network namespace `name` (made by `ip netns add`)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {name}: {os.strerror(errno)}")
    finally:
        os.close(fd)
