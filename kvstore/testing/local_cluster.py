"""A cluster of `kvstore serve` processes on 127.0.0.1, for the demo, benchmarks and tests.

Each member is a real child process with its own data directory; members can be killed with
SIGKILL, paused with SIGSTOP, and restarted from their data directory alone.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from kvstore.errors import KVStoreError, UnavailableError
from kvstore.options import Status
from kvstore.transport.tls import TLSConfig

T = TypeVar("T")

SERVE_READY_S = 30.0
"""How long a starting member may take to print its listening line."""


_HANDED_OUT: set[int] = set()
"""Ports `free_ports` gave out in this process: never given twice."""
_PORTS_LOW = 10000


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as file:
            return int(file.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(count: int) -> list[int]:
    """Ports that are free on 127.0.0.1, distinct, and never given out before in this process.

    They come from BELOW the kernel's ephemeral range: a port picked here is closed again until
    the member binds it, and anything binding port 0 meanwhile (a proxy, a client's source
    port) draws from the ephemeral range, so it cannot take it (the torture's proxy mesh did:
    a proxy got a member's port and the member's peers map named one address twice)."""
    high = _ephemeral_low()
    rng = random.SystemRandom()
    sockets: list[socket.socket] = []
    try:
        for _ in range(10_000):
            if len(sockets) == count:
                break
            port = rng.randrange(_PORTS_LOW, high)
            if port in _HANDED_OUT:
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
            _HANDED_OUT.add(port)
        else:
            raise RuntimeError(f"no {count} free ports below {high} on 127.0.0.1")
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_until(
    condition: Callable[[], T], *, timeout_s: float, interval_s: float = 0.02, what: str
) -> T:
    """Poll `condition` until it returns a truthy value; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:.1f}s waiting for {what}")
        time.sleep(interval_s)


@dataclass
class Member:
    """One `kvstore serve` process and where it keeps its data."""

    node_id: str
    address: str
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    peers: dict[str, str] | None = None
    """This member's own `--peers` map, when it must differ from the cluster's (e.g. other
    members reached through proxies); None: every member at its own address."""
    command_prefix: list[str] = field(default_factory=list)
    """Prepended to the serve command, e.g. `ip netns exec NS` to run it in a namespace."""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class LocalCluster:
    """Starts, kills and restarts `kvstore serve` processes. Use as a context manager.

    `LocalCluster(3)` picks free loopback ports and a temporary folder; `close()` stops every
    process it started (by PID) and removes the folder unless `keep_data`.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        secret: bytes | None = None,
        keep_data: bool = False,
        log_level: str = "WARNING",
        addresses: Mapping[str, str] | None = None,
        consensus: str = "raft",
        tls: bool = False,
    ) -> None:
        """`addresses` (node id -> host:port) names the members and where they listen; by
        default they are n1..n<size> on free loopback ports. `consensus` ("raft" or "paxos")
        is passed to every member's `serve --consensus` (a member's `extra_args` may name
        another one, e.g. to test that a mismatch is refused). With `tls`, a cluster CA and a
        certificate per member are created in `certs_dir` (with `kvstore.certs`), every member
        serves mutual TLS, and `client_tls` is a client certificate's `TLSConfig`."""
        if size < 1:
            raise ValueError("a cluster needs at least one member")
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        if base_dir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="kvstore-cluster-")
            base_dir = self._tempdir.name
        self.base_dir = Path(base_dir)
        self.keep_data = keep_data
        self.log_level = log_level
        self.consensus = consensus
        self.secret_file: Path | None = None
        if secret is not None:
            self.secret_file = self.base_dir / "secret"
            # Owner-only, or `serve --secret-file` refuses it (as ssh refuses an open key).
            fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(secret)
        if addresses is None:
            ports = free_ports(size)
            addresses = {f"n{number}": f"127.0.0.1:{port}" for number, port in enumerate(ports, 1)}
        self.members: dict[str, Member] = {}
        for node_id, address in addresses.items():
            self.members[node_id] = Member(node_id, address, self.base_dir / node_id)
        # --- mutual TLS ---
        self.certs_dir: Path | None = None
        self.client_tls: TLSConfig | None = None
        """The `tls=` of a client of this cluster (None without TLS)."""
        if tls:
            from kvstore import certs

            self.certs_dir = self.base_dir / "certs"
            certs.init_ca(self.certs_dir, cluster="local")
            certs.issue_client(self.certs_dir, "local")
            self.client_tls = certs.client_config(self.certs_dir, "local")

    def member_tls(self, node_id: str) -> TLSConfig:
        """The `TLSConfig` of member `node_id` (its certificate is created on first use)."""
        from kvstore import certs

        if self.certs_dir is None:
            raise RuntimeError("this LocalCluster runs without TLS")
        cert, _key = certs.member_files(self.certs_dir, node_id)
        if not cert.exists():
            certs.issue_member(self.certs_dir, node_id)
        return certs.member_config(self.certs_dir, node_id)

    # --- processes --------------------------------------------------------------------------

    @property
    def peers_arg(self) -> str:
        return ",".join(
            f"{m.node_id}={m.address}"
            for m in self.members.values()
            if "--join" not in m.extra_args
        )

    @property
    def addresses(self) -> list[str]:
        return [m.address for m in self.members.values()]

    def start(self) -> LocalCluster:
        """Start every member that is not running and wait until each one listens."""
        for member in self.members.values():
            if not member.running:
                self._spawn(member)
        for member in self.members.values():
            self._wait_listening(member)
        return self

    def _spawn(self, member: Member) -> None:
        member.data_dir.mkdir(parents=True, exist_ok=True)
        member.log_path = self.base_dir / f"{member.node_id}.log"
        if member.peers is not None:
            peers = ",".join(f"{node_id}={address}" for node_id, address in member.peers.items())
        elif "--join" in member.extra_args:
            peers = self._join_peers(member)
        else:
            peers = self.peers_arg
        command = [
            *member.command_prefix,
            sys.executable,
            "-m",
            "kvstore",
            "--log-level",
            self.log_level,
            "serve",
            "--id",
            member.node_id,
            "--data-dir",
            str(member.data_dir),
            "--peers",
            peers,
            "--consensus",
            self.consensus,
            *member.extra_args,
        ]
        if self.secret_file is not None:
            command += ["--secret-file", str(self.secret_file)]
        if self.certs_dir is not None:
            tls = self.member_tls(member.node_id)
            command += ["--tls-ca", tls.ca_file, "--tls-cert", tls.cert_file]
            command += ["--tls-key", tls.key_file]
        with open(member.log_path, "ab") as log:
            member.process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL
            )

    def _join_peers(self, member: Member) -> str:
        return ",".join(f"{m.node_id}={m.address}" for m in self.members.values())

    def _wait_listening(self, member: Member) -> None:
        process = member.process
        if process is None or process.stdout is None:
            return
        # The child prints one line once its listener is bound; read it with a deadline.
        os.set_blocking(process.stdout.fileno(), False)
        deadline = time.monotonic() + SERVE_READY_S
        buffer = b""
        while b"\n" not in buffer:
            if process.poll() is not None:
                raise UnavailableError(
                    f"{member.node_id} exited with {process.returncode} while starting; "
                    f"see {member.log_path}:\n{self.log_tail(member.node_id)}"
                )
            if time.monotonic() > deadline:
                raise UnavailableError(f"{member.node_id} did not start listening in time")
            with contextlib.suppress(BlockingIOError):
                chunk = process.stdout.read()
                if chunk:
                    buffer += chunk
                    continue
            time.sleep(0.01)

    def log_tail(self, node_id: str, lines: int = 20) -> str:
        path = self.members[node_id].log_path
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` (SIGKILL by default) to that member and reap it."""
        member = self.members[node_id]
        if member.process is None:
            return
        if member.process.poll() is None:
            member.process.send_signal(sig)
            member.process.wait(timeout=30)
        self._close_pipe(member)
        member.process = None

    def pause(self, node_id: str) -> None:
        """SIGSTOP the member: it keeps its sockets but answers nothing."""
        process = self.members[node_id].process
        if process is not None:
            process.send_signal(signal.SIGSTOP)

    def resume(self, node_id: str) -> None:
        """SIGCONT a paused member."""
        process = self.members[node_id].process
        if process is not None:
            process.send_signal(signal.SIGCONT)

    def restart(self, node_id: str) -> None:
        """Start a killed member again from its data directory alone."""
        member = self.members[node_id]
        if member.running:
            raise RuntimeError(f"{node_id} is still running")
        self._spawn(member)
        self._wait_listening(member)

    def add_joiner(self, node_id: str) -> Member:
        """Start a new member in join mode (then add it with `Client.add_member`)."""
        port = free_ports(1)[0]
        member = Member(
            node_id, f"127.0.0.1:{port}", self.base_dir / node_id, extra_args=["--join"]
        )
        self.members[node_id] = member
        self._spawn(member)
        self._wait_listening(member)
        return member

    def stop(self, node_id: str, timeout_s: float = 10.0) -> int:
        """SIGTERM the member and wait for it; returns its exit status."""
        member = self.members[node_id]
        if member.process is None:
            return 0
        if member.process.poll() is None:
            member.process.send_signal(signal.SIGTERM)
        try:
            code = member.process.wait(timeout=timeout_s)
        finally:
            if member.process.poll() is None:
                member.process.kill()
                member.process.wait()
            self._close_pipe(member)
            member.process = None
        return code

    @staticmethod
    def _close_pipe(member: Member) -> None:
        if member.process is not None and member.process.stdout is not None:
            member.process.stdout.close()

    def close(self) -> None:
        """Stop every member (SIGCONT first, in case one is paused) and clean up."""
        for member in self.members.values():
            if member.process is not None and member.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    member.process.send_signal(signal.SIGCONT)
        for node_id in list(self.members):
            with contextlib.suppress(Exception):
                self.stop(node_id, timeout_s=10.0)
        if self._tempdir is not None and not self.keep_data:
            self._tempdir.cleanup()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Member]:
        return iter(self.members.values())

    # --- observation ------------------------------------------------------------------------

    def statuses(self, client: object) -> dict[str, Status | None]:
        """Each running member's status through `client.status(address)` (None if no answer)."""
        result: dict[str, Status | None] = {}
        for member in self.members.values():
            if not member.running:
                result[member.node_id] = None
                continue
            try:
                result[member.node_id] = client.status(member.address)  # type: ignore[attr-defined]
            except (KVStoreError, OSError):
                result[member.node_id] = None
        return result

    def leader(self, client: object) -> str | None:
        """The node id that a running member reports as leader and that says so itself."""
        for node_id, status in self.statuses(client).items():
            if status is not None and status.role == "leader":
                return node_id
        return None

    def wait_for_leader(
        self, client: object, *, timeout_s: float = 15.0, exclude: str | None = None
    ) -> str:
        """Wait until some running member (other than `exclude`) is leader; return its id."""

        def current() -> str | None:
            leader = self.leader(client)
            return leader if leader != exclude else None

        leader = wait_until(current, timeout_s=timeout_s, what="a leader")
        if leader is None:  # wait_until returns only a truthy value
            raise TimeoutError("no leader")
        return leader
