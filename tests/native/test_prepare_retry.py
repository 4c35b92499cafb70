"""Preparing the next log segment through a transient shortage (issue 11 item 4).

The helper thread that creates and preallocates the next segment meets EMFILE when idle
clients hold every descriptor, ENOSPC when the disk is momentarily full. Those are retried in
the background (with backoff) instead of poisoning the log: once descriptors or space come
back, the append that was waiting for the segment completes. A shortage that lasts longer than
the retry budget of a waiting append poisons the log, and the error says "ENOSPC ... No space
left on device". Failures of writes and fsyncs of records still poison at once (test_wal_faults).

On the old code the first EMFILE or ENOSPC poisoned the log for good.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import kvstore
from kvstore.consensus.types import Entry, EntryType
from kvstore.errors import WalFailedError
from kvstore.storage.wal import FaultSpec, WriteAheadLog
from kvstore.testing.local_cluster import free_ports, wait_until

SEGMENT_BYTES = 64 << 10
WAIT_S = 15.0


def batch(lo: int, hi: int, size: int = 1000) -> list[Entry]:
    return [Entry(1, i, EntryType.NORMAL, bytes([i % 256]) * size) for i in range(lo, hi)]


class BackgroundAppend(threading.Thread):
    """One append in a thread (it blocks while the next segment cannot be prepared)."""

    def __init__(self, wal: WriteAheadLog, entries: list[Entry]) -> None:
        super().__init__(daemon=True)
        self.wal, self.entries = wal, entries
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.wal.sync(self.wal.append(self.entries))
        except BaseException as exc:  # reported to the test thread
            self.error = exc


CHILD = textwrap.dedent(
    """
    import errno, json, os, resource, sys, threading, time
    from kvstore.consensus.types import Entry, EntryType
    from kvstore.storage.wal import WriteAheadLog

    def batch(lo, hi):
        return [Entry(1, i, EntryType.NORMAL, bytes([i % 256]) * 1000) for i in range(lo, hi)]

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
    wal = WriteAheadLog(sys.argv[1], segment_bytes=64 << 10, zero_fill=False)
    wal.sync(wal.append(batch(1, 20)))  # a third of the first segment: nothing prepared yet
    dummies = []
    try:
        while True:
            dummies.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == errno.EMFILE, exc
    outcome = {}

    def append():  # past the half (the preparation starts) and the end (rotation waits)
        try:
            wal.sync(wal.append(batch(20, 120)))
        except BaseException as exc:
            outcome["error"] = repr(exc)

    thread = threading.Thread(target=append)
    thread.start()
    deadline = time.monotonic() + 15
    while wal.stats().prepare_retries < 3 or wal.stats().rotation_waits < 1:
        assert thread.is_alive(), outcome
        assert time.monotonic() < deadline, wal.stats()
        time.sleep(0.005)
    retries_while_exhausted = wal.stats().prepare_retries
    for fd in dummies:
        os.close(fd)
    thread.join(15)
    assert not thread.is_alive()
    stats = wal.stats()
    print(json.dumps({
        "outcome": outcome,
        "retries": retries_while_exhausted,
        "segments": stats.segment_count,
        "last": wal.last_index(),
        "entry_119": wal.entries(119, 120)[0].data == bytes([119]) * 1000,
        "dummies": len(dummies),
    }))
    wal.close()
    """
)


def test_emfile_while_preparing_a_segment_is_retried_until_descriptors_come_back(
    tmp_path: Path,
) -> None:
    """In a child process with RLIMIT_NOFILE at 128 and every descriptor taken."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "wal")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["outcome"] == {}, report  # the old code: WalFailedError (EMFILE)
    assert report["retries"] >= 3 and report["dummies"] > 50, report
    assert report["segments"] == 2 and report["last"] == 119 and report["entry_119"], report


def test_a_transient_enospc_is_retried_and_the_append_completes(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT_BYTES) as wal:
        wal.sync(wal.append(batch(1, 20)))
        wal.inject_fault(FaultSpec("prepare", errno.ENOSPC, times=5))
        wal.sync(wal.append(batch(20, 120)))  # crosses into a second segment
        stats = wal.stats()
        assert stats.prepare_retries == 5 and stats.segment_count == 2
        assert wal.entries(119, 120)[0].data == bytes([119]) * 1000
        wal.sync(wal.append(batch(120, 200)))  # and the log goes on


def test_enospc_that_lasts_poisons_the_log_and_says_no_space_left(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT_BYTES, prepare_retry_s=0.3) as wal:
        wal.sync(wal.append(batch(1, 20)))
        wal.inject_fault(FaultSpec("prepare", errno.ENOSPC, times=(1 << 64) - 1))
        started = time.monotonic()
        with pytest.raises(WalFailedError, match=r"ENOSPC 28 \(No space left on device\)"):
            wal.append(batch(20, 120))
        waited_s = time.monotonic() - started
        assert 0.3 <= waited_s < 5.0, waited_s
        assert wal.stats().prepare_retries >= 3
        with pytest.raises(WalFailedError, match="No space left on device"):
            wal.append(batch(120, 121))  # poisoned: every later call fails


def test_enospc_writing_a_record_still_poisons_at_once(tmp_path: Path) -> None:
    """Only the preparation of a new segment is retried: a failed write of a record leaves the
    file in an unknown state (DESIGN §4)."""
    with WriteAheadLog(tmp_path / "wal", segment_bytes=SEGMENT_BYTES) as wal:
        wal.sync(wal.append(batch(1, 5)))
        wal.inject_fault(FaultSpec("write", errno.ENOSPC))
        with pytest.raises(WalFailedError, match=r"pwrite failed: ENOSPC 28"):
            wal.append(batch(5, 6))
        with pytest.raises(WalFailedError):
            wal.append(batch(5, 6))
        assert wal.stats().prepare_retries == 0


def test_a_node_whose_disk_stays_full_says_no_space_left_on_device(tmp_path: Path) -> None:
    options = kvstore.Options(segment_bytes=SEGMENT_BYTES)
    node = kvstore.Node(
        "n1", tmp_path / "n1", {"n1": f"127.0.0.1:{free_ports(1)[0]}"}, options=options
    )
    with node:
        node.wait_for_leader(timeout_s=WAIT_S)
        assert node._runtime._wal is not None
        node._runtime._wal.set_prepare_retry(0.2)
        node._runtime._wal.inject_fault(FaultSpec("prepare", errno.ENOSPC, times=(1 << 64) - 1))
        with pytest.raises(kvstore.KVStoreError):
            for number in range(200):  # 200 KiB: well past the first 64 KiB segment
                node.put(b"key-%d" % number, b"v" * 1000, timeout_s=5.0)
        with pytest.raises(kvstore.KVStoreError, match=r"(?i)no space left on device"):
            node.get(b"key-0")


@contextlib.contextmanager
def small_tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted for the test, or a skip when mounting is not permitted."""
    mount_point = tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}"
    mount_point.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
            check=True,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {exc}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False, timeout=10)


def test_a_really_full_disk_is_waited_out_then_reported(tmp_path: Path) -> None:
    """A 2 MiB tmpfs: filled by another file, the preparation meets a real ENOSPC and is retried;
    freeing the file lets the waiting append complete. Filled for good, the log fails with
    ENOSPC and says so."""
    with small_tmpfs(tmp_path, "2m") as disk:
        filler = disk / "filler"
        with WriteAheadLog(disk / "wal", segment_bytes=512 << 10, zero_fill=False) as wal:
            wal.sync(wal.append(batch(1, 100)))  # a fifth of the first segment
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            filler.write_bytes(b"\0" * (free - (64 << 10)))  # leaves less than a segment
            waiting = BackgroundAppend(wal, batch(100, 600))  # 500 KB: needs a second segment
            waiting.start()
            wait_until(
                lambda: wal.stats().prepare_retries >= 3 or not waiting.is_alive(),
                timeout_s=WAIT_S,
                what="the preparation to meet ENOSPC and retry",
            )
            assert waiting.is_alive() and waiting.error is None
            filler.unlink()
            waiting.join(WAIT_S)
            assert not waiting.is_alive() and waiting.error is None, waiting.error
            assert wal.stats().segment_count == 2 and wal.last_index() == 599
            # Now full for good: the next preparation fails until the budget is spent.
            wal.set_prepare_retry(0.3)
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            filler.write_bytes(b"\0" * (free - (64 << 10)))
            with pytest.raises(WalFailedError, match=r"ENOSPC 28 \(No space left on device\)"):
                for lo in range(600, 2000, 100):
                    wal.sync(wal.append(batch(lo, lo + 100)))
