"""The LMDB state machine: command semantics, replay, durability, snapshots, membership and
malformed entries. Client sessions (registration, expiry, dedup, the model-based test) are in
test_sessions.py."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterable
from pathlib import Path

import lmdb
import pytest

from kvstore.consensus.types import ConfChange, ConfChangeType, ConfState, Entry, EntryType
from kvstore.errors import CorruptionError, InvalidArgumentError, InvariantError
from kvstore.storage.commands import (
    CommandRejected,
    ResultCode,
    encode_cas,
    encode_delete,
    encode_put,
    encode_register,
)
from kvstore.storage.state_machine import StateMachine

SESSIONS = 8
"""`open_sm` registers this many client sessions first, in entries 1..SESSIONS."""
FIRST = SESSIONS + 1
"""The first index after those registrations."""


def cid(n: int) -> int:
    """The id of the n-th session `open_sm` registered (0 <= n < SESSIONS): its entry's index."""
    assert 0 <= n < SESSIONS
    return n + 1


def register_entries() -> list[Entry]:
    return [Entry(1, n + 1, EntryType.NORMAL, encode_register(n + 1)) for n in range(SESSIONS)]


def open_sm(directory: Path, **kwargs: int) -> StateMachine:
    """A state machine whose log starts with `SESSIONS` session registrations."""
    sm = StateMachine(directory, **kwargs)
    sm.apply(register_entries())
    return sm


def entries(datas: Iterable[bytes], *, first_index: int = FIRST, term: int = 1) -> list[Entry]:
    return [Entry(term, first_index + i, EntryType.NORMAL, d) for i, d in enumerate(datas)]


def conf(kind: ConfChangeType, node_id: str, address: str = "") -> bytes:
    return ConfChange(kind, node_id, address.encode()).encode()


class Log:
    """Builds a contiguous log of entries the way a leader would, starting with the session
    registrations `open_sm` applies."""

    def __init__(self) -> None:
        self.entries: list[Entry] = register_entries()

    def add(self, data: bytes, *, term: int = 1, kind: EntryType = EntryType.NORMAL) -> Entry:
        entry = Entry(term, len(self.entries) + 1, kind, data)
        self.entries.append(entry)
        return entry


@pytest.fixture
def sm(tmp_path: Path) -> Iterable[StateMachine]:
    with open_sm(tmp_path / "state", map_size_bytes=64 << 20) as machine:
        yield machine


def apply_one(sm: StateMachine, data: bytes) -> object:
    index = sm.applied_index() + 1
    (result,) = sm.apply([Entry(1, index, EntryType.NORMAL, data)])
    return result


# --- basic commands -------------------------------------------------------------------------


def test_apply_puts_then_reads_see_them(sm: StateMachine) -> None:
    results = sm.apply(
        entries(
            [
                encode_put(cid(1), 1, b"b", b"2"),
                encode_put(cid(1), 2, b"a", b"1"),
                encode_put(cid(1), 3, b"ab", b"3"),
                encode_put(cid(1), 4, b"c", b""),
            ],
            term=3,
        )
    )
    assert results == [True, True, True, True]
    assert sm.get(b"a") == b"1"
    assert sm.get(b"c") == b""
    assert sm.get(b"zz") is None
    assert sm.scan() == [(b"a", b"1"), (b"ab", b"3"), (b"b", b"2"), (b"c", b"")]
    assert sm.scan(b"a") == [(b"a", b"1"), (b"ab", b"3")]
    assert sm.scan(b"a", limit=1) == [(b"a", b"1")]
    assert sm.scan(b"d") == []
    assert (sm.applied_index(), sm.applied_term()) == (SESSIONS + 4, 3)


def test_reads_check_arguments(sm: StateMachine) -> None:
    with pytest.raises(InvalidArgumentError):
        sm.get(b"")
    with pytest.raises(InvalidArgumentError):
        sm.get(b"k" * 512)
    with pytest.raises(InvalidArgumentError):
        sm.scan(b"", limit=0)


def test_delete_reports_whether_the_key_existed(sm: StateMachine) -> None:
    apply_one(sm, encode_put(cid(1), 1, b"k", b"v"))
    assert apply_one(sm, encode_delete(cid(1), 2, b"k")) is True
    assert sm.get(b"k") is None
    assert apply_one(sm, encode_delete(cid(1), 3, b"k")) is False


def test_cas_semantics(sm: StateMachine) -> None:
    c = cid(1)
    # expected None = "must be absent": creates the key only if it does not exist.
    assert apply_one(sm, encode_cas(c, 1, b"k", None, b"v1")) is True
    assert sm.get(b"k") == b"v1"
    assert apply_one(sm, encode_cas(c, 2, b"k", None, b"other")) is False
    assert sm.get(b"k") == b"v1"
    # Mismatch leaves the value alone; a match swaps.
    assert apply_one(sm, encode_cas(c, 3, b"k", b"wrong", b"v2")) is False
    assert sm.get(b"k") == b"v1"
    assert apply_one(sm, encode_cas(c, 4, b"k", b"v1", b"v2")) is True
    assert sm.get(b"k") == b"v2"
    # An empty value is a present value, not "absent".
    assert apply_one(sm, encode_cas(c, 5, b"k", b"", b"v3")) is False
    # new None = delete.
    assert apply_one(sm, encode_cas(c, 6, b"k", b"v2", None)) is True
    assert sm.get(b"k") is None
    assert apply_one(sm, encode_cas(c, 7, b"k", b"v2", None)) is False
    # absent -> absent: the expectation holds, so it "swaps" to nothing.
    assert apply_one(sm, encode_cas(c, 8, b"k", None, None)) is True
    assert sm.get(b"k") is None


# --- replay, ordering, durability -----------------------------------------------------------


def test_already_applied_entries_are_skipped(tmp_path: Path) -> None:
    log = [encode_put(cid(1), i + 1, b"k%d" % (i % 4), b"v%d" % i) for i in range(15)]
    with open_sm(tmp_path / "a") as once, open_sm(tmp_path / "b") as replayed:
        once.apply(entries(log))
        replayed.apply(entries(log[:10]))
        results = replayed.apply(entries(log))
        assert results[:10] == [None] * 10
        assert results[10:] == [True] * 5
        assert replayed.apply(entries(log[:3])) == [None] * 3
        assert replayed.digest() == once.digest()


def test_a_gap_is_a_bug_and_applies_nothing(sm: StateMachine) -> None:
    sm.apply(entries([encode_put(cid(1), 1, b"a", b"1")]))
    before = sm.digest()
    with pytest.raises(InvariantError):
        sm.apply(entries([encode_put(cid(1), 2, b"b", b"2")], first_index=FIRST + 2))
    with pytest.raises(InvariantError):  # the first entry is fine, the second jumps
        sm.apply(
            [entries([b""], first_index=FIRST + 1)[0], entries([b""], first_index=FIRST + 3)[0]]
        )
    assert sm.digest() == before
    assert sm.applied_index() == FIRST


def test_noop_entries_advance_the_applied_index(sm: StateMachine) -> None:
    assert sm.apply([Entry(5, FIRST), Entry(5, FIRST + 1)]) == [None, None]
    assert (sm.applied_index(), sm.applied_term()) == (FIRST + 1, 5)
    assert sm.apply([]) == []


def test_checkpoint_then_reopen_keeps_index_and_data(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    with open_sm(directory) as sm:
        sm.apply(entries((encode_put(cid(1), i, b"k%d" % i, b"v") for i in range(1, 51)), term=2))
        assert sm.checkpoint() == SESSIONS + 50
        digest = sm.digest()
    with open_sm(directory) as sm:
        assert (sm.applied_index(), sm.applied_term()) == (SESSIONS + 50, 2)
        assert sm.get(b"k50") == b"v"
        assert sm.digest() == digest


def test_lost_tail_is_rebuilt_by_replaying_the_log(tmp_path: Path) -> None:
    """Crash after apply without checkpoint: the disk holds the state at the checkpoint; the
    node replays the log from applied_index + 1 and must reach the same state."""
    rng = random.Random(1234)
    log = Log()
    for n in range(300):
        c = rng.randrange(5)
        key = b"k%d" % rng.randrange(20)
        choice = rng.random()
        if choice < 0.5:
            log.add(encode_put(cid(c), n + 1, key, b"v%d" % n))
        elif choice < 0.8:
            log.add(encode_cas(cid(c), n + 1, key, None, b"c%d" % n))
        else:
            log.add(encode_delete(cid(c), n + 1, key))
    live = tmp_path / "live"
    with open_sm(live, sessions_max=3) as sm:
        sm.apply(log.entries[:120])
        checkpoint = sm.checkpoint()
    # What survived on disk: the environment as of the checkpoint.
    shutil.copytree(live, tmp_path / "crashed")
    with open_sm(live, sessions_max=3) as sm:
        sm.apply(log.entries[120:])
        expected = sm.digest()
    with open_sm(tmp_path / "crashed", sessions_max=3) as sm:
        assert sm.applied_index() == checkpoint == 120
        sm.apply(log.entries[sm.applied_index() :])
        assert sm.digest() == expected
        # Replaying from an older point (the log may start before the checkpoint) is harmless.
        sm.apply(log.entries[50:])
        assert sm.digest() == expected


def test_process_kill_after_apply_keeps_applied_state(tmp_path: Path) -> None:
    """SIGKILL after apply (no checkpoint): LMDB's committed pages are in the page cache, so
    reopening finds everything applied, and replaying the log again changes nothing."""
    directory = tmp_path / "state"
    script = textwrap.dedent(
        f"""
        import os, signal
        from kvstore.consensus.types import Entry
        from kvstore.storage.commands import encode_put, encode_register
        from kvstore.storage.state_machine import StateMachine
        sm = StateMachine({str(directory)!r})
        sm.apply([Entry(1, n + 1, data=encode_register(n + 1)) for n in range({SESSIONS})])
        data = [encode_put(1, i, b"k%d" % i, b"v%d" % i) for i in range(1, 201)]
        sm.apply([Entry(1, i + {FIRST}, data=d) for i, d in enumerate(data[:100])])
        sm.checkpoint()
        sm.apply([Entry(1, i + {FIRST + 100}, data=d) for i, d in enumerate(data[100:])])
        print("applied", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert proc.stdout.strip() == b"applied"
    data = [encode_put(cid(0), i, b"k%d" % i, b"v%d" % i) for i in range(1, 201)]
    with open_sm(tmp_path / "reference") as reference:
        reference.apply(entries(data))
        with open_sm(directory) as sm:
            assert sm.applied_index() == SESSIONS + 200
            assert sm.digest() == reference.digest()
            sm.apply(entries(data))
            assert sm.digest() == reference.digest()


# --- malformed entries ----------------------------------------------------------------------


def test_malformed_entries_are_deterministic_no_ops(tmp_path: Path) -> None:
    rng = random.Random(99)
    good = encode_put(cid(1), 1, b"k", b"v")
    garbage = [
        b"\x01",
        b"\xff" * 40,
        good[:20],
        bytes(rng.randrange(256) for _ in range(64)),
        encode_delete(cid(1), 2, b"k") + b"!",
    ]
    log = [*register_entries(), *entries([good]), *entries(garbage, first_index=FIRST + 1)]
    log.append(Entry(1, len(log) + 1, EntryType.CONF_CHANGE, b"\x00"))  # truncated conf change
    log.append(Entry(1, len(log) + 1, 7, b"what"))  # type: ignore[arg-type]  # unknown type
    digests = []
    for name in ("a", "b"):
        with open_sm(tmp_path / name) as sm:
            results = sm.apply(log)[SESSIONS:]
            assert results[0] is True
            for result in results[1:]:
                assert isinstance(result, CommandRejected), result
                assert result.code == ResultCode.MALFORMED
            assert sm.applied_index() == len(log)
            assert sm.scan() == [(b"k", b"v")]
            digests.append(sm.digest())
    assert digests[0] == digests[1]


# --- membership -----------------------------------------------------------------------------


def test_members_follow_conf_changes(sm: StateMachine) -> None:
    log = Log()
    log.add(conf(ConfChangeType.ADD_VOTER, "n1", "127.0.0.1:7001"), kind=EntryType.CONF_CHANGE)
    log.add(conf(ConfChangeType.ADD_VOTER, "n2", "127.0.0.1:7002"), kind=EntryType.CONF_CHANGE)
    log.add(conf(ConfChangeType.ADD_LEARNER, "n3", "127.0.0.1:7003"), kind=EntryType.CONF_CHANGE)
    assert sm.apply(log.entries) == [None] * (SESSIONS + 3)
    assert sm.members() == {
        "n1": ("127.0.0.1:7001", "voter"),
        "n2": ("127.0.0.1:7002", "voter"),
        "n3": ("127.0.0.1:7003", "learner"),
    }
    assert sm.conf_state() == ConfState(("n1", "n2"), ("n3",))

    log.add(conf(ConfChangeType.ADD_VOTER, "n3"), kind=EntryType.CONF_CHANGE)  # promote
    log.add(conf(ConfChangeType.REMOVE, "n1"), kind=EntryType.CONF_CHANGE)
    log.add(conf(ConfChangeType.ADD_VOTER, "n2", "10.0.0.2:7002"), kind=EntryType.CONF_CHANGE)
    sm.apply(log.entries)
    assert sm.members() == {
        "n2": ("10.0.0.2:7002", "voter"),
        "n3": ("127.0.0.1:7003", "voter"),  # promotion kept the known address
    }
    assert sm.conf_state() == ConfState(("n2", "n3"), ())
    log.add(conf(ConfChangeType.REMOVE, "n9"), kind=EntryType.CONF_CHANGE)  # unknown: no-op
    sm.apply(log.entries)
    assert set(sm.members()) == {"n2", "n3"}


# --- snapshots ------------------------------------------------------------------------------


def build_state(sm: StateMachine, rng: random.Random, count: int) -> list[Entry]:
    log = Log()
    log.add(conf(ConfChangeType.ADD_VOTER, "n1", "h:1"), kind=EntryType.CONF_CHANGE)
    log.add(conf(ConfChangeType.ADD_LEARNER, "n2", "h:2"), kind=EntryType.CONF_CHANGE)
    for n in range(count):
        key = b"key-%05d" % rng.randrange(count)
        log.add(encode_put(cid(n % 7), n + 1, key, rng.randbytes(rng.randrange(1, 200))), term=2)
    sm.apply(log.entries)
    return log.entries


def test_snapshot_restores_into_a_fresh_directory_identically(tmp_path: Path) -> None:
    rng = random.Random(5)
    with open_sm(tmp_path / "src") as src:
        log = build_state(src, rng, 2000)
        meta = src.snapshot(tmp_path / "snap")
        assert (meta.index, meta.term) == (src.applied_index(), src.applied_term())
        assert meta.conf_state == ConfState(("n1",), ("n2",))
        with open_sm(tmp_path / "dst") as dst:
            assert dst.restore(tmp_path / "snap") == meta
            assert dst.digest() == src.digest()
            assert dst.scan() == src.scan()
            assert dst.members() == src.members()
            # Sessions came along: a retry of the last command is answered, not re-applied.
            last = log[-1]
            assert dst.session(cid((len(log) - 3) % 7)) == src.session(cid((len(log) - 3) % 7))
            assert dst.apply([last._replace(index=meta.index + 1)]) == [True]
            assert dst.scan() == src.scan()


def test_restore_replaces_existing_state(tmp_path: Path) -> None:
    with open_sm(tmp_path / "src") as src, open_sm(tmp_path / "dst") as dst:
        src.apply(entries([encode_put(cid(1), 1, b"only-in-src", b"1")], term=4))
        src.snapshot(tmp_path / "snap")
        dst.apply(entries(encode_put(cid(2), i, b"k%d" % i, b"v") for i in range(1, 30)))
        dst.apply(
            [
                Entry(
                    1,
                    SESSIONS + 30,
                    EntryType.CONF_CHANGE,
                    conf(ConfChangeType.ADD_VOTER, "old", "h:9"),
                )
            ]
        )
        dst.restore(tmp_path / "snap")
        assert dst.scan() == [(b"only-in-src", b"1")]
        assert (dst.applied_index(), dst.applied_term()) == (FIRST, 4)
        assert dst.members() == {}
        assert dst.session(cid(2)) == src.session(cid(2)) == (0, False)  # not dst's seq 29
        assert dst.digest() == src.digest()


def test_restore_of_a_bad_file_fails_and_keeps_the_old_state(tmp_path: Path) -> None:
    with open_sm(tmp_path / "s") as sm:
        sm.apply(entries([encode_put(cid(1), 1, b"k", b"v")]))
        before = sm.digest()
        junk = tmp_path / "junk"
        junk.write_bytes(random.Random(3).randbytes(64 << 10))
        with pytest.raises(CorruptionError):
            sm.restore(junk)
        plain = tmp_path / "plain.mdb"  # a valid LMDB file, but not one of our snapshots
        env = lmdb.open(str(plain), subdir=False)
        with env.begin(write=True) as txn:
            txn.put(b"k", b"v")
        env.close()
        with pytest.raises(CorruptionError):
            sm.restore(plain)
        assert sm.digest() == before


def test_snapshot_metadata_matches_its_data_under_concurrent_applies(tmp_path: Path) -> None:
    """The copy and its (index, term) come from one read transaction: with a writer running,
    the restored data must hold exactly the keys of entries 1..index."""
    with open_sm(tmp_path / "src") as src:
        src.apply(entries([encode_put(cid(1), 1, b"%08d" % 1, b"v")]))
        stop = threading.Event()
        failure: list[BaseException] = []

        def writer() -> None:
            try:
                index = 1
                while not stop.is_set() and index < 20_000:
                    batch = [
                        encode_put(cid(1), i, b"%08d" % i, b"v")
                        for i in range(index + 1, index + 51)
                    ]
                    src.apply(entries(batch, first_index=SESSIONS + index + 1))
                    index += 50
            except BaseException as exc:  # surfaced below
                failure.append(exc)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            metas = []
            for n in range(5):
                metas.append(src.snapshot(tmp_path / f"snap{n}"))
        finally:
            stop.set()
            thread.join(timeout=60)
        assert not failure, failure
        for n, meta in enumerate(metas):
            with open_sm(tmp_path / f"dst{n}") as dst:
                assert dst.restore(tmp_path / f"snap{n}") == meta
                keys = [key for key, _ in dst.scan()]
                assert keys == [b"%08d" % i for i in range(1, meta.index - SESSIONS + 1)]
                assert dst.applied_index() == meta.index


def test_reads_do_not_wait_for_an_open_write_transaction(sm: StateMachine) -> None:
    sm.apply(entries([encode_put(cid(1), 1, b"k", b"v")]))
    env = sm._env  # reach in to hold the writer's lock the way a long apply would
    assert env is not None
    writing = env.begin(write=True)
    try:
        result: list[object] = []
        reader = threading.Thread(target=lambda: result.append((sm.get(b"k"), sm.scan())))
        reader.start()
        reader.join(timeout=10)
        assert not reader.is_alive(), "a reader blocked behind the write transaction"
        assert result == [(b"v", [(b"k", b"v")])]
    finally:
        writing.abort()


# --- lifecycle ------------------------------------------------------------------------------


def test_close_is_idempotent_and_later_use_fails(tmp_path: Path) -> None:
    sm = StateMachine(tmp_path / "s")
    sm.close()
    sm.close()
    with pytest.raises(InvariantError):
        sm.get(b"k")
    with pytest.raises(InvariantError):
        sm.apply(entries([b""]))


def test_refuses_another_format(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    StateMachine(directory).close()
    env = lmdb.open(str(directory), max_dbs=4)
    with env.begin(write=True) as txn:
        txn.put(b"format", b"\x63", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(CorruptionError):
        StateMachine(directory)


def test_constructor_checks_arguments(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError):
        StateMachine(tmp_path / "a", sessions_max=0)
    with pytest.raises(InvalidArgumentError):
        StateMachine(tmp_path / "b", map_size_bytes=1000)
