"""The recorded workload: a one-member `Node` that checkpoints and compacts its log often.

Run as `python -m tests.powerloss.workload ROOT COUNT` (under the shim): starts node n1 in
`ROOT/n1` with tiny checkpoints and segments, puts COUNT keys from `WRITERS` threads and, after
each put returned (the write is acknowledged: committed, fsynced in the log and applied),
appends its number to `ROOT/ACKS`, so the recording knows what was acknowledged before each
crash point.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import kvstore

OPTIONS = kvstore.Options(
    tick_s=0.01,
    election_ticks=10,
    checkpoint_entries=40,
    segment_bytes=1 << 16,
    map_size_bytes=1 << 22,
)
"""Checkpoints every 40 entries (so the log is compacted many times) and 64 KiB segments."""


def key(number: int) -> bytes:
    """The key of write `number`."""
    return b"key-%06d" % number


def value(number: int) -> bytes:
    """The value of write `number` (big enough that LMDB splits and reuses pages)."""
    return (b"value-%06d-" % number) * 40


def open_node(data_dir: Path) -> kvstore.Node:
    """The workload's node (not started)."""
    return kvstore.Node("n1", data_dir, {"n1": "127.0.0.1:0"}, options=OPTIONS)


WRITERS = 4
"""Threads putting at once, so batches of several entries are applied while checkpoints run."""


def main() -> None:
    root = Path(sys.argv[1])
    count = int(sys.argv[2])
    acks = os.open(root / "ACKS", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with open_node(root / "n1") as node:

        def writer(first: int) -> None:
            for number in range(first, count, WRITERS):
                node.put(key(number), value(number), timeout_s=30.0)
                os.write(acks, b"%d\n" % number)

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(WRITERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    os.close(acks)


if __name__ == "__main__":
    main()
