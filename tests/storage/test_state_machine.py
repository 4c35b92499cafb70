"""The LMDB state machine: command semantics, sessions, replay, durability, snapshots,
membership, malformed entries, and a model-based test against a dict."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterable
from pathlib import Path

import lmdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore.errors import CorruptionError, InvalidArgumentError, InvariantError
from kvstore.raft.types import ConfChange, ConfChangeType, ConfState, Entry, EntryType
from kvstore.storage.commands import (
    SEQ_MAX,
    SESSION_WINDOW,
    CommandRejected,
    ResultCode,
    encode_cas,
    encode_delete,
    encode_put,
)
from kvstore.storage.state_machine import StateMachine


def cid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def entries(datas: Iterable[bytes], *, first_index: int = 1, term: int = 1) -> list[Entry]:
    return [Entry(term, first_index + i, EntryType.NORMAL, d) for i, d in enumerate(datas)]


def conf(kind: ConfChangeType, node_id: str, address: str = "") -> bytes:
    return ConfChange(kind, node_id, address.encode()).encode()


class Log:
    """Builds a contiguous log of entries the way a leader would."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []

    def add(self, data: bytes, *, term: int = 1, kind: EntryType = EntryType.NORMAL) -> Entry:
        entry = Entry(term, len(self.entries) + 1, kind, data)
        self.entries.append(entry)
        return entry


@pytest.fixture
def sm(tmp_path: Path) -> Iterable[StateMachine]:
    with StateMachine(tmp_path / "state", map_size_bytes=64 << 20) as machine:
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
    assert (sm.applied_index(), sm.applied_term()) == (4, 3)


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


# --- sessions -------------------------------------------------------------------------------


def test_retried_command_gets_its_first_result_and_is_not_applied_twice(
    sm: StateMachine,
) -> None:
    c = cid(7)
    put1 = encode_put(c, 1, b"k", b"first")
    assert apply_one(sm, put1) is True
    assert apply_one(sm, encode_put(c, 2, b"k", b"second")) is True
    assert apply_one(sm, put1) is True  # the retry is answered...
    assert sm.get(b"k") == b"second"  # ...but not applied again

    delete3 = encode_delete(c, 3, b"k")
    assert apply_one(sm, delete3) is True
    assert apply_one(sm, encode_put(c, 4, b"k", b"back")) is True
    assert apply_one(sm, delete3) is True  # first result (it existed), key untouched
    assert sm.get(b"k") == b"back"

    cas5 = encode_cas(c, 5, b"k", b"nope", b"x")
    assert apply_one(sm, cas5) is False
    assert apply_one(sm, encode_put(c, 6, b"k", b"nope")) is True
    assert apply_one(sm, cas5) is False  # would swap now, but the first answer stands
    assert sm.get(b"k") == b"nope"
    assert sm.session(c) == (6, True)


def test_out_of_order_commands_of_one_session_all_apply_once(sm: StateMachine) -> None:
    """Concurrent writers sharing a session may commit out of seq order; within the window,
    each command still applies exactly once."""
    c = cid(3)
    assert apply_one(sm, encode_put(c, 5, b"five", b"5")) is True
    assert apply_one(sm, encode_put(c, 2, b"two", b"2")) is True
    assert apply_one(sm, encode_delete(c, 4, b"absent")) is False
    assert sm.get(b"two") == b"2"
    assert apply_one(sm, encode_put(c, 2, b"two", b"again")) is True  # duplicate of seq 2
    assert sm.get(b"two") == b"2"
    assert apply_one(sm, encode_delete(c, 4, b"absent")) is False
    assert sm.session(c) == (5, True)


def test_seq_below_the_window_is_stale_and_not_applied(sm: StateMachine) -> None:
    c = cid(4)
    apply_one(sm, encode_put(c, 1, b"k", b"v"))
    apply_one(sm, encode_put(c, 1 + SESSION_WINDOW, b"k", b"v2"))
    # seq 1 is exactly SESSION_WINDOW below the newest: out of the window, even as a retry.
    for data in (encode_put(c, 1, b"k", b"v"), encode_put(c, 1, b"other", b"x")):
        result = apply_one(sm, data)
        assert isinstance(result, CommandRejected)
        assert result.code == ResultCode.STALE
    assert sm.get(b"other") is None
    assert sm.get(b"k") == b"v2"
    # seq 2, the oldest still inside the window, was never applied: it applies now, once.
    assert apply_one(sm, encode_put(c, 2, b"edge", b"e")) is True
    assert apply_one(sm, encode_delete(c, 2, b"edge")) is True  # same seq: first result
    assert sm.get(b"edge") == b"e"


def test_a_huge_seq_jump_is_cheap_and_resets_the_window(sm: StateMachine) -> None:
    """A client may jump to any seq up to 2**64 - 1; the window must not grow with the gap."""
    c = cid(5)
    apply_one(sm, encode_put(c, 1, b"a", b"1"))
    apply_one(sm, encode_put(c, SEQ_MAX, b"b", b"2"))
    assert sm.session(c) == (SEQ_MAX, True)
    assert apply_one(sm, encode_put(c, SEQ_MAX, b"b", b"again")) is True  # a retry
    assert sm.get(b"b") == b"2"
    result = apply_one(sm, encode_put(c, 2, b"c", b"3"))
    assert isinstance(result, CommandRejected) and result.code == ResultCode.STALE
    assert apply_one(sm, encode_put(c, SEQ_MAX - 1, b"d", b"4")) is True  # in the window
    assert sm.get(b"d") == b"4"


def test_sessions_are_bounded_and_the_least_recently_applied_is_evicted(tmp_path: Path) -> None:
    with StateMachine(tmp_path / "s", sessions_max=3) as sm:
        for n in range(3):
            apply_one(sm, encode_put(cid(n), 1, b"k%d" % n, b"v"))
        apply_one(sm, encode_put(cid(0), 2, b"k0", b"w"))  # client 0 is now the most recent
        apply_one(sm, encode_put(cid(3), 1, b"k3", b"v"))  # evicts client 1, the oldest
        assert sm.session_count() == 3
        assert sm.session(cid(1)) is None
        assert sm.session(cid(0)) == (2, True)
        assert sm.session(cid(2)) == (1, True)
        apply_one(sm, encode_put(cid(4), 1, b"k4", b"v"))  # evicts client 2
        assert sm.session(cid(2)) is None
        assert sm.session_count() == 3
        # Documented cost of the bound: an evicted client's retry applies again.
        apply_one(sm, encode_delete(cid(5), 1, b"k1"))
        assert apply_one(sm, encode_put(cid(1), 1, b"k1", b"v")) is True
        assert sm.get(b"k1") == b"v"


def test_reopening_with_a_smaller_session_bound_converges(tmp_path: Path) -> None:
    with StateMachine(tmp_path / "s", sessions_max=10) as sm:
        sm.apply(entries(encode_put(cid(n), 1, b"k", b"v") for n in range(10)))
    with StateMachine(tmp_path / "s", sessions_max=4) as sm:
        apply_one(sm, encode_put(cid(99), 1, b"k", b"v"))
        assert sm.session_count() == 4
        assert [sm.session(cid(n)) is not None for n in (7, 8, 9, 99)] == [True] * 4


# --- replay, ordering, durability -----------------------------------------------------------


def test_already_applied_entries_are_skipped(tmp_path: Path) -> None:
    log = [encode_put(cid(1), i + 1, b"k%d" % (i % 4), b"v%d" % i) for i in range(15)]
    with StateMachine(tmp_path / "a") as once, StateMachine(tmp_path / "b") as replayed:
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
        sm.apply(entries([encode_put(cid(1), 2, b"b", b"2")], first_index=3))
    with pytest.raises(InvariantError):  # the first entry is fine, the second jumps
        sm.apply([entries([b""], first_index=2)[0], entries([b""], first_index=4)[0]])
    assert sm.digest() == before
    assert sm.applied_index() == 1


def test_noop_entries_advance_the_applied_index(sm: StateMachine) -> None:
    assert sm.apply([Entry(5, 1), Entry(5, 2)]) == [None, None]
    assert (sm.applied_index(), sm.applied_term()) == (2, 5)
    assert sm.apply([]) == []


def test_checkpoint_then_reopen_keeps_index_and_data(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    with StateMachine(directory) as sm:
        sm.apply(entries((encode_put(cid(1), i, b"k%d" % i, b"v") for i in range(1, 51)), term=2))
        assert sm.checkpoint() == 50
        digest = sm.digest()
    with StateMachine(directory) as sm:
        assert (sm.applied_index(), sm.applied_term()) == (50, 2)
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
    with StateMachine(live, sessions_max=3) as sm:
        sm.apply(log.entries[:120])
        checkpoint = sm.checkpoint()
    # What survived on disk: the environment as of the checkpoint.
    shutil.copytree(live, tmp_path / "crashed")
    with StateMachine(live, sessions_max=3) as sm:
        sm.apply(log.entries[120:])
        expected = sm.digest()
    with StateMachine(tmp_path / "crashed", sessions_max=3) as sm:
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
        from kvstore.raft.types import Entry
        from kvstore.storage.commands import encode_put
        from kvstore.storage.state_machine import StateMachine
        sm = StateMachine({str(directory)!r})
        data = [encode_put(bytes(16), i, b"k%d" % i, b"v%d" % i) for i in range(1, 201)]
        sm.apply([Entry(1, i + 1, data=d) for i, d in enumerate(data[:100])])
        sm.checkpoint()
        sm.apply([Entry(1, i + 101, data=d) for i, d in enumerate(data[100:])])
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
    data = [encode_put(bytes(16), i, b"k%d" % i, b"v%d" % i) for i in range(1, 201)]
    with StateMachine(tmp_path / "reference") as reference:
        reference.apply(entries(data))
        with StateMachine(directory) as sm:
            assert sm.applied_index() == 200
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
    log = [*entries([good]), *entries(garbage, first_index=2)]
    log.append(Entry(1, len(log) + 1, EntryType.CONF_CHANGE, b"\x00"))  # truncated conf change
    log.append(Entry(1, len(log) + 1, 7, b"what"))  # type: ignore[arg-type]  # unknown type
    digests = []
    for name in ("a", "b"):
        with StateMachine(tmp_path / name) as sm:
            results = sm.apply(log)
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
    assert sm.apply(log.entries) == [None, None, None]
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
    with StateMachine(tmp_path / "src") as src:
        log = build_state(src, rng, 2000)
        meta = src.snapshot(tmp_path / "snap")
        assert (meta.index, meta.term) == (src.applied_index(), src.applied_term())
        assert meta.conf_state == ConfState(("n1",), ("n2",))
        with StateMachine(tmp_path / "dst") as dst:
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
    with StateMachine(tmp_path / "src") as src, StateMachine(tmp_path / "dst") as dst:
        src.apply(entries([encode_put(cid(1), 1, b"only-in-src", b"1")], term=4))
        src.snapshot(tmp_path / "snap")
        dst.apply(entries(encode_put(cid(2), i, b"k%d" % i, b"v") for i in range(1, 30)))
        dst.apply(
            [Entry(1, 30, EntryType.CONF_CHANGE, conf(ConfChangeType.ADD_VOTER, "old", "h:9"))]
        )
        dst.restore(tmp_path / "snap")
        assert dst.scan() == [(b"only-in-src", b"1")]
        assert (dst.applied_index(), dst.applied_term()) == (1, 4)
        assert dst.members() == {}
        assert dst.session(cid(2)) is None
        assert dst.digest() == src.digest()


def test_restore_obeys_the_receivers_session_bound(tmp_path: Path) -> None:
    with StateMachine(tmp_path / "src", sessions_max=10) as src:
        src.apply(entries(encode_put(cid(n), 1, b"k%d" % n, b"v") for n in range(10)))
        src.snapshot(tmp_path / "snap")
    with StateMachine(tmp_path / "dst", sessions_max=4) as dst:
        dst.restore(tmp_path / "snap")
        assert dst.session_count() == 4
        assert [n for n in range(10) if dst.session(cid(n)) is not None] == [6, 7, 8, 9]


def test_restore_of_a_bad_file_fails_and_keeps_the_old_state(tmp_path: Path) -> None:
    with StateMachine(tmp_path / "s") as sm:
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
    with StateMachine(tmp_path / "src") as src:
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
                    src.apply(entries(batch, first_index=index + 1))
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
            with StateMachine(tmp_path / f"dst{n}") as dst:
                assert dst.restore(tmp_path / f"snap{n}") == meta
                keys = [key for key, _ in dst.scan()]
                assert keys == [b"%08d" % i for i in range(1, meta.index + 1)]
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


# --- model-based ----------------------------------------------------------------------------


class Model:
    """The specification, written plainly: a dict, and per client the set of seqs applied in
    the window below its newest seq, their results, and the index of its last apply."""

    def __init__(self, sessions_max: int) -> None:
        self.data: dict[bytes, bytes] = {}
        self.sessions: dict[bytes, tuple[int, dict[int, bool], int]] = {}
        self.sessions_max = sessions_max

    def apply(self, index: int, op: tuple[object, ...]) -> object:
        kind, client, seq, key = op[0], op[1], op[2], op[3]
        assert isinstance(client, bytes) and isinstance(seq, int) and isinstance(key, bytes)
        top, done, _ = self.sessions.get(client, (seq, {}, 0))
        if seq <= top - SESSION_WINDOW:
            return ResultCode.STALE
        if seq in done:
            return done[seq]
        if kind == "put":
            self.data[key] = op[4]  # type: ignore[assignment]
            result = True
        elif kind == "delete":
            result = self.data.pop(key, None) is not None
        else:
            expected, new = op[4], op[5]
            result = self.data.get(key) == expected
            if result:
                if new is None:
                    self.data.pop(key, None)
                else:
                    self.data[key] = new  # type: ignore[assignment]
        top = max(top, seq)
        done = {s: r for s, r in done.items() if s > top - SESSION_WINDOW}
        done[seq] = result
        is_new = client not in self.sessions
        self.sessions[client] = (top, done, index)
        if is_new and len(self.sessions) > self.sessions_max:
            oldest = min(self.sessions, key=lambda c: self.sessions[c][2])
            del self.sessions[oldest]
        return result


def encode_op(op: tuple[object, ...]) -> bytes:
    kind, client, seq, key = op[0], op[1], op[2], op[3]
    assert isinstance(client, bytes) and isinstance(seq, int) and isinstance(key, bytes)
    if kind == "put":
        return encode_put(client, seq, key, op[4])  # type: ignore[arg-type]
    if kind == "delete":
        return encode_delete(client, seq, key)
    return encode_cas(client, seq, key, op[4], op[5])  # type: ignore[arg-type]


small_values = st.sampled_from([None, b"", b"a", b"b"])


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[tuple[object, ...]], list[int]]:
    """A command history with fresh commands, retries of earlier ones, out-of-order seqs and
    jumps past the window, plus how the log is cut into apply batches."""
    ops: list[tuple[object, ...]] = []
    next_seq = {c: 1 for c in range(4)}
    for _ in range(draw(st.integers(1, 60))):
        if ops and draw(st.integers(0, 4)) == 0:
            ops.append(draw(st.sampled_from(ops)))  # a retry, byte for byte
            continue
        c = draw(st.integers(0, 3))
        step = draw(st.sampled_from(["next", "next", "next", "skip", "back", "far"]))
        if step == "next":
            seq = next_seq[c]
        elif step == "skip":  # leaves a hole that a later "back" may fill
            seq = next_seq[c] + 1
        elif step == "back":  # an older seq: applied already, or a hole, or out of the window
            seq = max(1, next_seq[c] - draw(st.integers(1, 3)))
        else:
            seq = next_seq[c] + SESSION_WINDOW
        next_seq[c] = max(next_seq[c], seq + 1)
        key = draw(st.sampled_from([b"x", b"y", b"z"]))
        kind = draw(st.sampled_from(["put", "delete", "cas"]))
        if kind == "put":
            ops.append(("put", cid(c), seq, key, draw(st.sampled_from([b"", b"a", b"b"]))))
        elif kind == "delete":
            ops.append(("delete", cid(c), seq, key))
        else:
            ops.append(("cas", cid(c), seq, key, draw(small_values), draw(small_values)))
    cuts = sorted(set(draw(st.lists(st.integers(1, len(ops)), max_size=6))))
    return ops, cuts


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_random_histories_match_the_model(
    scenario: tuple[list[tuple[object, ...]], list[int]],
) -> None:
    ops, cuts = scenario
    model = Model(sessions_max=3)
    expected = []
    for index, op in enumerate(ops, start=1):
        outcome = model.apply(index, op)
        expected.append(outcome)
    log = entries(encode_op(op) for op in ops)
    with tempfile.TemporaryDirectory() as directory:
        digests = []
        for name, bounds in (("batched", cuts), ("whole", [])):
            with StateMachine(Path(directory) / name, sessions_max=3) as sm:
                results: list[object] = []
                for lo, hi in zip([0, *bounds], [*bounds, len(log)], strict=True):
                    results.extend(sm.apply(log[lo:hi]))
                got = [r.code if isinstance(r, CommandRejected) else r for r in results]
                assert got == expected
                assert dict(sm.scan()) == model.data
                assert sm.session_count() == len(model.sessions)
                for client, (top, done, _) in model.sessions.items():
                    assert sm.session(client) == (top, done[top])
                digests.append(sm.digest())
        # However the log was cut into batches, the state is the same.
        assert digests[0] == digests[1]
