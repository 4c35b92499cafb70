"""Private files (DESIGN §4): every directory a node writes is 0700 and every file 0600, whatever
the umask, and files left wider by an older version are narrowed when they are opened again."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import kvstore
from kvstore.storage.snapshot import SnapshotWriter
from kvstore.storage.state_machine import StateMachine
from kvstore.storage.wal import WriteAheadLog
from kvstore.testing.local_cluster import free_ports

OPTIONS = kvstore.Options(segment_bytes=1 << 16)
"""Small segments, so that a few puts rotate the log (a prepared segment is a file too)."""


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Relative path -> permission bits of `root` and everything below it."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def wrong_modes(root: Path) -> dict[str, str]:
    """Everything under `root` that is not 0700 (directories) or 0600 (files)."""
    wrong = {}
    for name, mode in modes(root).items():
        want = 0o700 if (root / name).is_dir() else 0o600
        if mode != want:
            wrong[name] = f"{mode:o}"
    return wrong


def test_a_node_writes_only_private_files_under_a_wide_umask(tmp_path: Path) -> None:
    data_dir = tmp_path / "n1"
    with umask(0):  # the widest: every mode asked for is the mode given
        node = kvstore.Node(
            "n1", data_dir, {"n1": f"127.0.0.1:{free_ports(1)[0]}"}, options=OPTIONS
        )
        with node:
            node.wait_for_leader(timeout_s=15.0)
            for number in range(200):  # 200 x 1 KiB: more than one 64 KiB segment
                node.put(b"key-%d" % number, b"v" * 1024)
            # An outgoing snapshot and an incoming partial one, as the node writes them.
            assert node._runtime._sm is not None
            node._runtime._sm.snapshot(data_dir / "snapshots" / "out-n2-1")
            with SnapshotWriter(data_dir / "snapshots", "in-1", 100) as writer:
                writer.write_chunk(0, b"x" * 10)
        found = modes(data_dir)
    assert "wal" in found and "state/data.mdb" in found and "snapshots/out-n2-1" in found
    assert len([name for name in found if name.startswith("wal/")]) >= 2, found
    assert wrong_modes(data_dir) == {}


def test_files_left_world_readable_are_narrowed_when_opened(tmp_path: Path) -> None:
    with umask(0o022):
        with WriteAheadLog(tmp_path / "wal", segment_bytes=1 << 16):
            pass
        with StateMachine(tmp_path / "state"):
            pass
    # As an older version left them: directories 0755, files 0644.
    for path in [tmp_path / "wal", tmp_path / "state", *tmp_path.glob("*/*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    assert wrong_modes(tmp_path / "wal") and wrong_modes(tmp_path / "state")
    with WriteAheadLog(tmp_path / "wal", segment_bytes=1 << 16):
        pass
    with StateMachine(tmp_path / "state"):
        pass
    assert wrong_modes(tmp_path / "wal") == {}
    assert wrong_modes(tmp_path / "state") == {}


@pytest.mark.parametrize("mask", [0o000, 0o077])
def test_snapshot_files_are_private(tmp_path: Path, mask: int) -> None:
    (tmp_path / "snaps").mkdir(mode=0o700)
    with umask(mask), StateMachine(tmp_path / "state") as sm:
        sm.snapshot(tmp_path / "snaps" / "full.snap")
        writer = SnapshotWriter(tmp_path / "incoming", "s-1", 4)
        writer.write_chunk(0, b"abcd")
        writer.close()
    assert stat.S_IMODE((tmp_path / "snaps" / "full.snap").stat().st_mode) == 0o600
    assert wrong_modes(tmp_path / "incoming") == {}
