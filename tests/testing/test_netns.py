"""Network namespaces: one per member, a bridge between them, faults at the link layer.

Skipped, with the reason, where namespaces cannot be made (not root, no iproute2...).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from kvstore.testing.netns import NetnsLab, probe, probe_netem, run_in_namespace

REASON = probe()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no network namespaces: {REASON}")

CONNECT_TIMEOUT_S = 1.0


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    with NetnsLab(["n1", "n2", "n3"]) as made:
        yield made


@pytest.fixture
def listeners(lab: NetnsLab) -> Iterator[dict[str, socket.socket]]:
    """A listening socket at each member's own address, made inside its namespace."""

    def listen(node_id: str) -> socket.socket:
        host, _, port = lab.address(node_id).rpartition(":")
        sock = socket.socket()
        sock.bind((host, int(port)))
        sock.listen(16)
        return sock

    made = {
        node_id: run_in_namespace(lab.namespace(node_id), lambda n=node_id: listen(n))
        for node_id in lab.node_ids
    }
    yield made
    for sock in made.values():
        sock.close()


def reaches(lab: NetnsLab, namespace: str, node_id: str) -> bool:
    """Whether a TCP connection from `namespace` to the member's address completes."""
    host, _, port = lab.address(node_id).rpartition(":")

    def attempt() -> bool:
        try:
            with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
                return True
        except OSError:
            return False

    return run_in_namespace(namespace, attempt)


def reaches_soon(lab: NetnsLab, namespace: str, node_id: str, timeout_s: float = 10.0) -> bool:
    """Whether a connection completes within `timeout_s`: a port that just came up or moved
    bridge may drop the first packets while neighbours (ARP) are learned again."""
    deadline = time.monotonic() + timeout_s
    while not reaches(lab, namespace, node_id):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)  # poll interval, not synchronisation: the loop waits on the condition
    return True


def test_members_and_clients_reach_each_other(
    lab: NetnsLab, listeners: dict[str, socket.socket]
) -> None:
    for node_id in lab.node_ids:
        assert reaches_soon(lab, lab.client, node_id)
        for other in lab.node_ids:
            assert reaches_soon(lab, lab.namespace(other), node_id)


def test_link_down_isolates_one_member_but_not_from_clients(
    lab: NetnsLab, listeners: dict[str, socket.socket]
) -> None:
    lab.link_down("n1")
    assert not reaches(lab, lab.namespace("n2"), "n1")
    assert not reaches(lab, lab.namespace("n1"), "n3")
    assert reaches_soon(lab, lab.namespace("n2"), "n3")
    assert reaches_soon(lab, lab.client, "n1")
    lab.heal()
    assert reaches_soon(lab, lab.namespace("n2"), "n1")


def test_bridge_partition_splits_minority_from_majority(
    lab: NetnsLab, listeners: dict[str, socket.socket]
) -> None:
    lab.partition(["n3"], ["n1", "n2"])
    assert not reaches(lab, lab.namespace("n1"), "n3")
    assert not reaches(lab, lab.namespace("n3"), "n2")
    assert reaches_soon(lab, lab.namespace("n1"), "n2")
    lab.heal()
    assert reaches_soon(lab, lab.namespace("n1"), "n3")


def test_close_removes_every_namespace() -> None:
    import subprocess

    with NetnsLab(["a", "b"]) as made:
        names = list(made.namespaces)
        assert len(names) == 4
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed.split() for name in names)


@pytest.mark.skipif(probe_netem() is not None, reason=f"{probe_netem()}")
def test_netem_delay_slows_a_member(lab: NetnsLab, listeners: dict[str, socket.socket]) -> None:
    import time

    lab.netem("n1", "delay 200ms")
    started = time.monotonic()
    assert reaches_soon(lab, lab.namespace("n2"), "n1")
    assert time.monotonic() - started >= 0.2
    lab.heal()
