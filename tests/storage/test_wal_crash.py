"""Crash test with real processes: a child appends and syncs, reporting each durable index on a
pipe; the parent SIGKILLs it at a random moment, reopens the log and checks that every reported
index is there with its exact bytes, and that nothing after it is garbage.

Each round the child starts a new term and rewrites a few entries at the tail (as a new leader's
follower would), rotates segments (small ones) and compacts now and then, so kills also land in
the middle of truncations, rotations and segment deletions. KVSTORE_TEST_SEED replays a run.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from kvstore.storage.wal import WriteAheadLog

ROUNDS = 30
SEGMENT_BYTES = 32768
REPO = Path(__file__).resolve().parents[2]

# The child. Its entries' bytes are a function of (index, term), so the parent can check them.
CHILD = textwrap.dedent(
    """
    import hashlib, random, sys
    from kvstore.consensus.types import Entry, EntryType, HardState, SnapshotMeta
    from kvstore.storage.wal import WriteAheadLog

    def data(index, term):
        size = (index * 31 + term * 7) % 400
        if index % 97 == 0:
            size = 40000 + index % 1000  # bigger than a segment now and then
        unit = hashlib.blake2b(f"{index}:{term}".encode()).digest()
        return (unit * (size // len(unit) + 1))[:size]

    directory = sys.argv[1]
    seed, term, segment_bytes = (int(arg) for arg in sys.argv[2:5])
    rng = random.Random(seed)
    wal = WriteAheadLog(directory, segment_bytes=segment_bytes)
    first, last = wal.first_index(), wal.last_index()
    index = max(first, last + 1 - rng.randrange(0, 4))  # rewrite up to 3 entries of the tail
    print("ready", index, flush=True)
    while True:
        n = rng.randrange(1, 12)
        entries = [Entry(term, i, EntryType.NORMAL, data(i, term)) for i in range(index, index + n)]
        wal.sync(wal.append(entries, HardState(term, "child", index - 1)))
        index += n
        print("durable", index - 1, flush=True)
        if rng.random() < 0.1 and index - wal.first_index() > 100:
            point = index - 50
            wal.compact_through(SnapshotMeta(point, wal.term(point)))
            print("compacted", point, flush=True)
    """
)


def data(index: int, term: int) -> bytes:
    """The parent's copy of the child's `data`."""
    import hashlib

    size = (index * 31 + term * 7) % 400
    if index % 97 == 0:
        size = 40000 + index % 1000
    unit = hashlib.blake2b(f"{index}:{term}".encode()).digest()
    return (unit * (size // len(unit) + 1))[:size]


def test_sigkill_at_random_moments_loses_nothing_reported(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    directory = tmp_path / "wal"
    compacted_to = 0
    for term in range(1, ROUNDS + 1):
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD,
                str(directory),
                str(rng.randrange(1 << 30)),
                str(term),
                str(SEGMENT_BYTES),
            ],
            stdout=subprocess.PIPE,
            cwd=REPO,
            text=True,
        )
        assert child.stdout is not None
        try:
            ready = child.stdout.readline().split()
            assert ready and ready[0] == "ready", f"seed {seed}: child did not start"
            start = int(ready[1])
            durable = start - 1
            # Kill after a random number of reports: the child is then somewhere in its next
            # append, sync, rotation or compaction.
            for _ in range(rng.randrange(1, 40)):
                line = child.stdout.readline().split()
                assert line, f"seed {seed}: the child exited by itself"
                if line[0] == "durable":
                    durable = int(line[1])
                else:
                    compacted_to = max(compacted_to, int(line[1]))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()

        with WriteAheadLog(directory, segment_bytes=SEGMENT_BYTES) as wal:
            first, last = wal.first_index(), wal.last_index()
            context = f"seed {seed}, round {term}: first {first} last {last} durable {durable}"
            assert last >= durable, context
            # A reported compaction is durable; an unreported one went no further than the data.
            assert compacted_to <= first - 1 <= durable, context
            for entry in wal.entries(first, last + 1):
                # The child's first batch cut the tail at `start`: from there on, every entry
                # is this round's, reported durable or not...
                if entry.index >= start:
                    assert entry.term == term, f"{context} at {entry.index}"
                else:
                    assert entry.term < term, f"{context} at {entry.index}"
                # ...and every entry holds exactly the bytes it was given: no garbage.
                assert entry.data == data(entry.index, entry.term), f"{context} at {entry.index}"
            hard_state = wal.hard_state()
            assert (hard_state.term, hard_state.vote) == (term, "child"), context
            assert start - 1 <= hard_state.commit < last, context
