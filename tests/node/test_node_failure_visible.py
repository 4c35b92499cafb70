"""A member that stops serving says so: after a storage failure the embedded `Node` names the
cause in `node.failure` and `status().failure`, and every other call raises `NodeFailedError`
(an `UnavailableError`) whose message carries the cause, chained with `raise ... from`. A full
disk reads "No space left on device (ENOSPC)", never a bare I/O error or a timeout."""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import kvstore
from kvstore.storage.wal import FaultSpec, WalFailedError
from kvstore.testing.local_cluster import wait_until

from .conftest import FAST, WAIT_S


@pytest.fixture
def single(tmp_path: Path) -> Iterator[kvstore.Node]:
    with kvstore.Node("n1", tmp_path / "n1", {"n1": "127.0.0.1:0"}, options=FAST) as node:
        node.wait_for_leader(timeout_s=WAIT_S)
        yield node


@pytest.mark.parametrize(
    ("kind", "code", "reason"),
    [
        ("sync", errno.ENOSPC, "ENOSPC 28 (No space left on device)"),
        ("write", errno.EMFILE, "EMFILE 24 (Too many open files)"),
    ],
)
def test_failure_is_named_by_the_property_the_status_and_every_call(
    single: kvstore.Node, kind: str, code: int, reason: str
) -> None:
    node = single
    node.put(b"before", b"1")
    assert node.failure is None and node.status().failure is None
    assert node._runtime._wal is not None
    node._runtime._wal.inject_fault(FaultSpec(kind, error=code))
    # A lone member: nobody else could have committed it, but the log may hold it.
    with pytest.raises(kvstore.KVStoreError) as first:
        node.put(b"doomed", b"1")
    assert reason in str(first.value)
    assert not isinstance(first.value, TimeoutError) or "outcome is unknown" in str(first.value)
    failure = wait_until(lambda: node.failure, timeout_s=WAIT_S, what="the failure")
    assert isinstance(failure, kvstore.NodeFailedError)
    assert isinstance(failure, kvstore.UnavailableError)
    assert reason in str(failure) and "n1" in str(failure)
    assert isinstance(failure.__cause__, WalFailedError)
    status = node.status()
    assert status.failure is not None and reason in status.failure
    assert status.role == "follower" and status.leader_id is None
    for call in (
        lambda: node.put(b"k", b"v"),
        lambda: node.get(b"k"),
        lambda: node.get(b"k", consistency="stale"),
        lambda: node.delete(b"k"),
        lambda: node.cas(b"k", None, b"v"),
        lambda: node.scan(),
        lambda: node.wait_for_leader(timeout_s=1),
        lambda: node.add_member("n9", "127.0.0.1:1"),
        lambda: node.remove_member("n9"),
        lambda: node.transfer_leadership("n9"),
    ):
        with pytest.raises(kvstore.NodeFailedError, match=re.escape(reason)) as raised:
            call()
        assert isinstance(raised.value.__cause__, WalFailedError)
        assert isinstance(raised.value.__cause__.__cause__, OSError)
        assert raised.value.__cause__.__cause__.errno == code
    node.stop()
    node.stop()  # still safe to call twice


def test_a_healthy_node_reports_no_failure(single: kvstore.Node) -> None:
    single.put(b"k", b"v")
    assert single.failure is None
    assert single.status().failure is None
