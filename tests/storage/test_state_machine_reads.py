"""The state machine's read path under many reader threads, and the fast `get` (no `with`)
still behaving like a read transaction: it sees the latest apply and ends at once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kvstore.consensus.types import Entry
from kvstore.errors import InvalidArgumentError, InvariantError
from kvstore.storage.commands import encode_put, encode_register
from kvstore.storage.mvcc import HEADER_BYTES
from kvstore.storage.state_machine import READERS_MAX, StateMachine

CLIENT = 1
"""The session `_registered` opens: the index of its register entry."""
READER_THREADS = 300
"""More than LMDB's default of 126 reader slots, as many as a thread-per-request app may use."""


def _put(index: int, key: bytes, value: bytes) -> Entry:
    """The put with seq `index`, at log index `index + 1` (after the registration)."""
    return Entry(1, index + 1, data=encode_put(CLIENT, index, key, value))


def _registered(sm: StateMachine) -> StateMachine:
    sm.apply([Entry(1, CLIENT, data=encode_register(1))])
    return sm


def test_more_readers_at_once_than_lmdb_default(tmp_path: Path) -> None:
    """Every thread holds a read transaction at the same moment (a barrier inside it), as
    concurrent stale reads do; with LMDB's default reader table the 127th failed."""
    assert READERS_MAX >= READER_THREADS
    with _registered(StateMachine(tmp_path)) as sm:
        sm.apply([_put(1, b"k", b"v")])
        env = sm._open_env()
        barrier = threading.Barrier(READER_THREADS, timeout=30)
        seen: list[bytes | None] = []
        errors: list[BaseException] = []

        def reader() -> None:
            try:
                with env.begin(db=sm._data) as txn:
                    barrier.wait()  # all transactions are open now
                    stored = txn.get(b"k")
                    seen.append(None if stored is None else stored[HEADER_BYTES:])
            except BaseException as error:
                errors.append(error)
                barrier.abort()

        threads = [threading.Thread(target=reader) for _ in range(READER_THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert seen == [b"v"] * READER_THREADS


def test_get_sees_every_apply_and_leaves_no_reader_behind(tmp_path: Path) -> None:
    """`get` runs its transaction without a `with` block: it must not pin an old snapshot,
    and it must release its reader slot (else READERS_MAX gets would exhaust the table)."""
    with _registered(StateMachine(tmp_path)) as sm:
        for index in range(1, READERS_MAX + 50):
            if index % 512 == 1:
                sm.apply([_put(index // 512 + 1, b"k", b"%d" % index)])
                expected = b"%d" % index
            assert sm.get(b"k") == expected
        assert sm.get(b"absent") is None
        # No reader holds a snapshot: every slot is free ("-": py-lmdb keeps a reset spare).
        lines = sm._open_env().readers().splitlines()
        assert lines == ["(no active readers)"] or all(
            line.split()[-1] == "-" for line in lines[1:]
        ), lines


@pytest.mark.parametrize("key", [b"", b"x" * 512, "text", bytearray(b"k"), None])
def test_get_refuses_bad_keys(tmp_path: Path, key: object) -> None:
    with StateMachine(tmp_path) as sm, pytest.raises(InvalidArgumentError):
        sm.get(key)  # type: ignore[arg-type]


def test_get_after_close_is_a_bug(tmp_path: Path) -> None:
    sm = StateMachine(tmp_path)
    sm.close()
    with pytest.raises(InvariantError):
        sm.get(b"k")
