"""The replicated state: committed entries applied to an LMDB environment.

Modelled on hashicorp/raft's FSM (apply, snapshot, restore) and on etcd's cindex: each batch of
entries is applied in ONE LMDB write transaction that also records `applied_index`,
`applied_term` and the client session table, so the data never disagrees with the index it
claims to cover.

Durability: the environment is opened with `sync=False, metasync=False`. The redo log is the
source of truth; after a process crash, LMDB holds everything committed before it (the page
cache survives) and the node replays the log from `applied_index() + 1`. `checkpoint()` forces
LMDB to disk and returns the index it is durable at, so the log below it may be compacted.
Caveat: this covers process crashes only. After a power loss or kernel crash between
checkpoints, the LMDB file itself may be inconsistent: with `sync=False` LMDB reuses pages of
the checkpointed version and the kernel may write its meta page before the pages it points to.
Surviving that needs `sync=True` (one fdatasync per applied batch) or a fresh snapshot from the
leader when the environment fails to open.

Layout: four named sub-databases in one environment (in `directory`):

- `data`: key -> value.
- `meta`: `applied` -> (index u64, term u64); `format` -> 1 byte (`FORMAT_VERSION`);
  `clock` -> the log's clock (u64 ms, see below); `member/<id>` -> role byte (0 voter,
  1 learner) + address (UTF-8).
- `sessions`: session id (u64 big-endian) -> (newest seq applied u64, clock at the session's
  last activity u64 ms, applied bits, result bits); bit i of each (`SESSION_WINDOW` bits,
  little-endian) stands for seq `newest - i`: whether it was applied, and whether its result
  was True.
- `session_age`: (clock at last activity u64, session id u64), both big-endian so keys sort by
  age -> empty. Expiry pops the first keys: O(log n) per expired session, no scan.

Sessions (Raft thesis §6.3): a client registers a session through the log (`Op.REGISTER`); its
id is the index of the register entry. Per session the table holds the newest seq applied and a
window of the `SESSION_WINDOW` seqs below it (applied or not, and each result). A seq in the
window that was applied is answered with its first result and not applied again; one that was
not applied yet is applied (a session's concurrent commands may commit out of order); one below
the window is rejected as STALE; one more than `SESSION_WINDOW` above the newest is rejected as
SEQ_TOO_FAR and changes nothing. A write whose session is not in the table (never registered,
or expired) is rejected as SESSION_EXPIRED and never applied. At most `sessions_max` sessions
are held: a registration beyond that is REFUSED (SESSIONS_FULL), never served by evicting a
live session, so nobody can push others' sessions out by registering many.

Time and expiry: the state machine reads no clock. Each command carries `stamp_ms`, the wall
clock of the node that proposed it if that node was leading (followers stamp 0), and `apply`
keeps `clock = max(clock, stamp_ms)` in `meta`. A session is EXPIRED at the first entry after
which `clock - last activity > session_timeout_s`: a write of it is refused from then on, and
it is deleted from the table (at that write, at the next registration, or at the end of the
batch, whichever comes first; all three give the state an entry-by-entry expiry would). Why
only the leader stamps: a follower whose clock runs ahead could otherwise expire every session
early with a single write; with leader stamps only a leader's skew matters, the thesis's own
choice, and the max() makes a lagging leader harmless (the clock never goes back). A leader
whose clock jumps ahead by X expires sessions up to X early, and afterwards expiry pauses
until the other leaders' clocks pass that time (sessions then live up to X longer, and a full
table refuses registrations meanwhile); keep `session_timeout_s` well above the clock error of
your members (NTP keeps it to milliseconds).

Determinism: `apply` depends only on the entries and the prior state, never on how the entries
were split into batches, the local clock or the node. `sessions_max` and `session_timeout_s`
must be the same on every member: they decide which writes are refused.

Threads: one writer at a time (`apply`, `restore`); reads (`get`, `scan`, `applied_index`,
`members`, `snapshot`) may run in any thread, concurrently with the writer, without blocking it
(LMDB readers see the last committed transaction).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import lmdb

from kvstore.closing import ClosingContext
from kvstore.errors import CorruptionError, InvalidArgumentError, invariant
from kvstore.options import KEY_BYTES_MAX, check_key, check_limit
from kvstore.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    SnapshotMeta,
)
from kvstore.storage.commands import (
    SESSION_WINDOW,
    CommandRejected,
    Op,
    Result,
    ResultCode,
    decode_fields,
)
from kvstore.storage.snapshot import fsync_dir

FORMAT_VERSION = 2
"""Layout version stored in `meta`; an environment with another version is refused. Version 2
(sessions registered through the log, expiring by the log's clock) replaced version 1 (random
16-byte client ids, evicted by age): the log entries of version 1 do not decode as version 2
commands, so a version 1 store is refused rather than migrated."""

ROLE_VOTER = "voter"
ROLE_LEARNER = "learner"
_ROLE_CODES = {ROLE_VOTER: 0, ROLE_LEARNER: 1}
_ROLE_NAMES = {code: name for name, code in _ROLE_CODES.items()}

_DB_DATA = b"data"
_DB_META = b"meta"
_DB_SESSIONS = b"sessions"
_DB_SESSION_AGE = b"session_age"
_DB_NAMES = (_DB_DATA, _DB_META, _DB_SESSIONS, _DB_SESSION_AGE)

_KEY_APPLIED = b"applied"
_KEY_FORMAT = b"format"
_KEY_CLOCK = b"clock"
_MEMBER_PREFIX = b"member/"

_APPLIED = struct.Struct("<QQ")
_WINDOW_BYTES = SESSION_WINDOW // 8
_WINDOW_MASK = (1 << SESSION_WINDOW) - 1
_SESSION = struct.Struct(f"<QQ{_WINDOW_BYTES}s{_WINDOW_BYTES}s")
_SESSION_KEY = struct.Struct(">Q")
_AGE = struct.Struct(">QQ")
_CLOCK = struct.Struct("<Q")
_NO_BITS = bytes(_WINDOW_BYTES)

_NO_APPLIED = _APPLIED.pack(0, 0)

READERS_MAX = 4096
"""LMDB reader slots: read transactions open at once, across all threads (each stale read in
an application thread holds one while it runs). LMDB's default of 126 made 256 threads reading
at once fail with MDB_READERS_FULL; each slot costs 64 bytes of the lock file."""

# Module globals for the per-entry loop: an enum member looked up through its class costs more.
_NORMAL, _CONF_CHANGE = EntryType.NORMAL, EntryType.CONF_CHANGE
_PUT, _DELETE, _REGISTER = Op.PUT, Op.DELETE, Op.REGISTER
_SESSION_EXPIRED = CommandRejected(
    ResultCode.SESSION_EXPIRED,
    "the client session is unknown or expired; the write was not applied",
)


class StateMachine(ClosingContext):
    """The LMDB state machine of one node. See the module docstring for layout and guarantees.

    `StateMachine(directory, map_size_bytes=..., sessions_max=..., session_timeout_s=...)`
    creates `directory` if needed and opens (or creates) the environment in it. Use `close()`
    or `with`.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        map_size_bytes: int = 1 << 30,
        sessions_max: int = 100_000,
        session_timeout_s: float = 600.0,
    ) -> None:
        if map_size_bytes < 1 << 20:
            raise InvalidArgumentError(f"map_size_bytes must be >= 1 MiB, got {map_size_bytes}")
        if sessions_max < 1:
            raise InvalidArgumentError(f"sessions_max must be >= 1, got {sessions_max}")
        self._directory = Path(directory)
        self._directory.mkdir(parents=True, exist_ok=True)
        self._sessions_max = sessions_max
        self._init_sessions(session_timeout_s)
        # writemap stays off. Measured here: it doubles one-entry transactions (52k -> 92k/s)
        # but changes nothing at 10 to 1,000 entries per batch; small batches only happen at
        # low load, where the log's fsync dominates anyway. Its costs: the file becomes a
        # sparse map-sized file, and a full disk turns into SIGBUS instead of an error.
        self._env: lmdb.Environment | None = lmdb.open(
            str(self._directory),
            map_size=map_size_bytes,
            max_dbs=len(_DB_NAMES),
            sync=False,
            metasync=False,
            max_readers=READERS_MAX,
        )
        env = self._env
        invariant(env.max_key_size() >= 511, "LMDB built with a key limit below 511 bytes")
        with env.begin(write=True) as txn:
            self._data = env.open_db(_DB_DATA, txn=txn)
            self._meta = env.open_db(_DB_META, txn=txn)
            self._sessions = env.open_db(_DB_SESSIONS, txn=txn)
            self._session_age = env.open_db(_DB_SESSION_AGE, txn=txn)
            version = txn.get(_KEY_FORMAT, db=self._meta)
            if version is None:
                txn.put(_KEY_FORMAT, bytes([FORMAT_VERSION]), db=self._meta)
                txn.put(_KEY_APPLIED, _NO_APPLIED, db=self._meta)
            elif version != bytes([FORMAT_VERSION]):
                env.close()
                self._env = None
                raise CorruptionError(
                    f"state format {version!r} is not {FORMAT_VERSION}: written by another "
                    "version of kvstore (version 1 kept client sessions differently); start "
                    "this member with an empty data directory so it receives a snapshot",
                    path=str(self._directory),
                    offset=0,
                )

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        """The directory holding the LMDB environment."""
        return self._directory

    def close(self) -> None:
        """Close the environment. Safe to call twice; later calls on this object fail."""
        if self._env is not None:
            self._env.close()
            self._env = None

    def _open_env(self) -> lmdb.Environment:
        env = self._env
        invariant(env is not None, "state machine used after close()")
        assert env is not None  # for mypy; invariant() above fires under -O too
        return env

    # --- writes -----------------------------------------------------------------------------

    def apply(self, entries: Sequence[Entry]) -> list[Result]:
        """Apply committed entries in order, all in one write transaction; one result each.

        Entries at or below `applied_index()` are skipped (idempotent replay) and give None.
        The rest must follow on without a gap (a gap is a bug: `InvariantError`, nothing
        applied). Results: register -> the session id; put -> True, delete -> existed, cas ->
        swapped; None for no-op entries and conf changes; `CommandRejected` for a write the
        session rules refuse (see the module docstring) or for data that does not decode
        (applied as a no-op, the same way on every member).

        LMDB errors (e.g. `lmdb.MapFullError`) abort the whole batch and propagate: the state
        is unchanged and the node must stop.
        """
        env = self._open_env()
        results: list[Result] = []
        if not entries:
            return results
        data_db, meta_db = self._data, self._meta
        apply_command = self._apply_command
        # Sessions touched by this batch, kept in memory and written once at the end: a
        # pipelining client sends many commands under one session, and four LMDB calls per
        # entry for its bookkeeping were half the cost of applying a put (measured).
        sessions: dict[int, list[int]] = {}
        # The transaction's default database is `data`, so the commonest calls need no `db=`.
        with env.begin(db=data_db, write=True) as txn:
            start_clock = self._clock = self._read_clock(txn)
            start_index, term = _read_applied(txn, meta_db)
            index = start_index
            append = results.append
            for entry in entries:
                entry_index = entry.index
                if entry_index <= start_index:
                    append(None)
                    continue
                if entry_index != index + 1:
                    invariant(False, f"apply: entry {entry_index} does not follow index {index}")
                index = entry_index
                term = entry.term
                entry_type = entry.type
                if entry_type == _NORMAL:
                    data = entry.data
                    append(apply_command(txn, index, data, sessions) if data else None)
                elif entry_type == _CONF_CHANGE:
                    append(self._apply_conf_change(txn, meta_db, entry.data))
                else:
                    append(
                        CommandRejected(ResultCode.MALFORMED, f"unknown entry type {entry_type}")
                    )
            if sessions:
                self._write_sessions(txn, sessions)
            if self._clock != start_clock:
                self._expire_sessions(txn)
                txn.put(_KEY_CLOCK, _CLOCK.pack(self._clock), db=meta_db)
            if index != start_index:
                txn.put(_KEY_APPLIED, _APPLIED.pack(index, term), db=meta_db)
        return results

    # --- sessions (Raft thesis §6.3; see the module docstring) -----------------------------

    def _init_sessions(self, session_timeout_s: float) -> None:
        if not (isinstance(session_timeout_s, int | float) and 0 < session_timeout_s < 1e12):
            raise InvalidArgumentError(
                f"session_timeout_s must be a positive finite number, got {session_timeout_s!r}"
            )
        self._session_timeout_ms = max(1, round(session_timeout_s * 1000))
        self._clock = 0
        """The log's clock while a batch is applied (ms; see the module docstring)."""

    def _read_clock(self, txn: lmdb.Transaction[bytes]) -> int:
        raw = txn.get(_KEY_CLOCK, db=self._meta)
        return 0 if raw is None else int(_CLOCK.unpack(raw)[0])

    def _write_sessions(self, txn: lmdb.Transaction[bytes], sessions: dict[int, list[int]]) -> None:
        """Write the sessions this batch changed (see `_apply_command`), then forget them."""
        sessions_db, age_db = self._sessions, self._session_age
        for session_id, state in sessions.items():
            top_seq, last_active, applied_bits, result_bits, stored_active, dirty = state
            if not dirty:
                continue
            key = _SESSION_KEY.pack(session_id)
            record = _SESSION.pack(
                top_seq,
                last_active,
                applied_bits.to_bytes(_WINDOW_BYTES, "little"),
                result_bits.to_bytes(_WINDOW_BYTES, "little"),
            )
            txn.put(key, record, db=sessions_db)
            if last_active != stored_active:
                txn.delete(_AGE.pack(stored_active, session_id), db=age_db)
                txn.put(_AGE.pack(last_active, session_id), b"", db=age_db)
        sessions.clear()

    def _expire_sessions(self, txn: lmdb.Transaction[bytes]) -> None:
        """Delete every session idle for more than the timeout by the current clock (oldest
        activity first: the age keys sort by it, so this stops at the first live one)."""
        oldest_live = self._clock - self._session_timeout_ms
        cursor = txn.cursor(db=self._session_age)
        sessions_db = self._sessions
        while cursor.first():
            last_active, session_id = _AGE.unpack(cursor.key())
            if last_active >= oldest_live:
                break
            invariant(
                txn.delete(_SESSION_KEY.pack(session_id), db=sessions_db),
                "session_age index is out of step with sessions",
            )
            cursor.delete()

    def _register_session(
        self, txn: lmdb.Transaction[bytes], index: int, sessions: dict[int, list[int]]
    ) -> Result:
        """A new session with id `index`, or SESSIONS_FULL. Expired sessions go first, so a
        full table only refuses while `sessions_max` sessions are really live."""
        self._write_sessions(txn, sessions)
        self._expire_sessions(txn)
        held: int = txn.stat(self._sessions)["entries"]
        if held >= self._sessions_max:
            return CommandRejected(
                ResultCode.SESSIONS_FULL,
                f"too many client sessions ({held} live, the limit is {self._sessions_max}); "
                "try again once idle ones expire",
            )
        clock = self._clock
        txn.put(
            _SESSION_KEY.pack(index),
            _SESSION.pack(0, clock, _NO_BITS, _NO_BITS),
            db=self._sessions,
        )
        txn.put(_AGE.pack(clock, index), b"", db=self._session_age)
        return index

    def _apply_command(
        self,
        txn: lmdb.Transaction[bytes],
        index: int,
        data: bytes,
        sessions: dict[int, list[int]],
    ) -> Result:
        """Apply one command. Its session's state lives in `sessions` (session id -> [newest
        seq, clock at last activity, applied bits, result bits, last activity as stored,
        changed]) until `_write_sessions` stores it at the end of the batch: the final state
        is the same as storing it after every command, whatever the batch boundaries."""
        # Runs once per entry: plain locals and module constants, no NamedTuple, no enum lookup.
        try:
            op, session_id, seq, key, value, expected, new, stamp_ms = decode_fields(data)
        except ValueError as exc:
            return CommandRejected(ResultCode.MALFORMED, str(exc))
        clock = self._clock
        if stamp_ms > clock:
            self._clock = clock = stamp_ms
        state = sessions.get(session_id)
        if state is None:
            if op is _REGISTER:
                return self._register_session(txn, index, sessions)
            stored = txn.get(_SESSION_KEY.pack(session_id), db=self._sessions)
            if stored is None:
                return _SESSION_EXPIRED
            top_seq, last_active, applied_raw, result_raw = _SESSION.unpack(stored)
            state = [
                top_seq,
                last_active,
                int.from_bytes(applied_raw, "little"),
                int.from_bytes(result_raw, "little"),
                last_active,
                0,
            ]
            sessions[session_id] = state
        top_seq, last_active, applied_bits, result_bits = state[0], state[1], state[2], state[3]
        if clock - last_active > self._session_timeout_ms:
            # Expired: gone from now on, whatever this batch holds after it.
            del sessions[session_id]
            txn.delete(_SESSION_KEY.pack(session_id), db=self._sessions)
            txn.delete(_AGE.pack(state[4], session_id), db=self._session_age)
            return _SESSION_EXPIRED
        if seq <= top_seq:
            # Bit i stands for seq top_seq - i.
            age = top_seq - seq
            if age >= SESSION_WINDOW:
                return CommandRejected(
                    ResultCode.STALE,
                    f"seq {seq} is more than {SESSION_WINDOW} below the session's {top_seq}",
                )
            bit = 1 << age
            if applied_bits & bit:
                return bool(result_bits & bit)
        elif seq - top_seq > SESSION_WINDOW:
            # Never move the window by such a jump: a forged seq of 2**64-1 would block every
            # later write of the session.
            return CommandRejected(
                ResultCode.SEQ_TOO_FAR,
                f"seq {seq} is more than {SESSION_WINDOW} above the session's {top_seq}",
            )
        result = self._apply_op(txn, op, key, value, expected, new)
        if seq > top_seq:
            shift = seq - top_seq
            applied_bits = (applied_bits << shift) & _WINDOW_MASK
            result_bits = (result_bits << shift) & _WINDOW_MASK
            top_seq = seq
        bit = 1 << (top_seq - seq)
        applied_bits |= bit
        if result:
            result_bits |= bit
        state[0], state[1], state[2], state[3], state[5] = (
            top_seq,
            clock,
            applied_bits,
            result_bits,
            1,
        )
        return result

    @staticmethod
    def _apply_op(
        txn: lmdb.Transaction[bytes],
        op: Op,
        key: bytes,
        value: bytes | None,
        expected: bytes | None,
        new: bytes | None,
    ) -> bool:
        if op is _PUT:
            txn.put(key, value)  # type: ignore[arg-type]  # decode sets it for PUT
            return True
        if op is _DELETE:
            deleted: bool = txn.delete(key)
            return deleted
        if txn.get(key) != expected:
            return False
        if new is None:
            txn.delete(key)
        else:
            txn.put(key, new)
        return True

    @staticmethod
    def _apply_conf_change(
        txn: lmdb.Transaction[bytes], meta_db: lmdb._Database, data: bytes
    ) -> Result:
        try:
            change = ConfChange.decode(data)
        except ValueError as exc:
            return CommandRejected(ResultCode.MALFORMED, f"conf change: {exc}")
        member_key = _MEMBER_PREFIX + change.node_id.encode()
        if change.type == ConfChangeType.REMOVE:
            txn.delete(member_key, db=meta_db)
            return None
        role = ROLE_VOTER if change.type == ConfChangeType.ADD_VOTER else ROLE_LEARNER
        # Decoding with "replace" keeps the members table in step with the Raft core, which
        # applies the change whatever the context holds.
        address = change.context.decode("utf-8", "replace")
        if not address:
            # Promoting a learner without repeating its address keeps the known one.
            old = txn.get(member_key, db=meta_db)
            if old is not None:
                address = old[1:].decode("utf-8", "replace")
        txn.put(member_key, bytes([_ROLE_CODES[role]]) + address.encode(), db=meta_db)
        return None

    def checkpoint(self) -> int:
        """Make LMDB durable at (at least) the returned applied index.

        The log below that index may then be compacted. Safe from any thread; the index is
        read before the sync, so a concurrent apply can only make the sync cover more.
        """
        env = self._open_env()
        index = self.applied_index()
        env.sync(True)
        return index

    # --- reads ------------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """The value of `key`, or None. Raises `InvalidArgumentError` for a bad key."""
        # The hot path of every stale read: the common case is checked inline, check_key()
        # only runs to raise (or for a bytes subclass).
        if type(key) is not bytes or not 0 < len(key) <= KEY_BYTES_MAX:
            check_key(key)
        return self.lookup(key)

    def lookup(self, key: bytes) -> bytes | None:
        """`get` for a key the caller has checked already (`Node.get` does, first thing)."""
        env = self._env
        if env is None:
            env = self._open_env()  # raises: used after close()
        # No `with`: the read transaction is the temporary below, and py-lmdb aborts it when it
        # is freed at the end of this statement (CPython frees it at once, by reference
        # count). Skipping __enter__/__exit__ halves the cost of a read (measured: 805 ns with
        # the `with` block, 374 ns without).
        value: bytes | None = env.begin(db=self._data).get(key)
        return value

    def scan(self, prefix: bytes = b"", limit: int | None = None) -> list[tuple[bytes, bytes]]:
        """Pairs whose key starts with `prefix`, sorted by key, at most `limit` of them."""
        if not isinstance(prefix, bytes):
            raise InvalidArgumentError("prefix must be bytes")
        check_limit(limit)
        out: list[tuple[bytes, bytes]] = []
        with self._open_env().begin(db=self._data) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(prefix):
                return out
            for key, value in cursor.iternext():
                if not key.startswith(prefix) or (limit is not None and len(out) >= limit):
                    break
                out.append((key, value))
        return out

    def applied_index(self) -> int:
        """Index of the last applied entry (0 before any)."""
        return self.applied()[0]

    def applied_term(self) -> int:
        """Term of the last applied entry (0 before any)."""
        return self.applied()[1]

    def applied(self) -> tuple[int, int]:
        """(applied index, applied term), read together."""
        with self._open_env().begin() as txn:
            return _read_applied(txn, self._meta)

    def members(self) -> dict[str, tuple[str, str]]:
        """node_id -> (address, role) for every member, role being "voter" or "learner"."""
        with self._open_env().begin() as txn:
            return _read_members(txn, self._meta)

    def conf_state(self) -> ConfState:
        """The configuration the applied conf changes describe (ids sorted)."""
        return _conf_state(self.members())

    def session(self, session_id: int) -> tuple[int, bool] | None:
        """(newest seq applied for a session, its result), or None if unknown or expired
        (seq 0 for a session without writes yet). An expired session may still be reported
        here until the next apply deletes it."""
        with self._open_env().begin(db=self._sessions) as txn:
            stored = txn.get(_SESSION_KEY.pack(session_id))
        if stored is None:
            return None
        seq, _active, _applied, result_raw = _SESSION.unpack(stored)
        return seq, bool(result_raw[0] & 1)

    def session_ids(self) -> list[int]:
        """The ids of the sessions held, ascending (the order they registered in)."""
        with self._open_env().begin(db=self._sessions) as txn:
            return [_SESSION_KEY.unpack(key)[0] for key in txn.cursor().iternext(values=False)]

    def clock_ms(self) -> int:
        """The log's clock: the largest proposer stamp applied so far (ms; 0 before any)."""
        with self._open_env().begin() as txn:
            return self._read_clock(txn)

    def session_count(self) -> int:
        """Number of client sessions held (at most `sessions_max`)."""
        with self._open_env().begin() as txn:
            entries: int = txn.stat(self._sessions)["entries"]
            return entries

    def digest(self) -> bytes:
        """SHA-256 over everything replicated (data, sessions, members, applied index and
        term), read in one transaction: equal on two members that applied the same entries."""
        digest = hashlib.sha256()
        with self._open_env().begin() as txn:
            for name, db in zip(_DB_NAMES, self._dbs(), strict=True):
                digest.update(b"\x00db:" + name)
                for key, value in txn.cursor(db=db).iternext():
                    digest.update(len(key).to_bytes(4, "little") + key)
                    digest.update(len(value).to_bytes(4, "little") + value)
        return digest.digest()

    def _dbs(self) -> tuple[lmdb._Database, ...]:
        return (self._data, self._meta, self._sessions, self._session_age)

    # --- snapshots --------------------------------------------------------------------------

    def snapshot(self, path: str | os.PathLike[str]) -> SnapshotMeta:
        """Write a consistent, compacted copy of the whole state as ONE file at `path`.

        Returns the applied index, term and configuration of exactly that copy: they are read
        in the same read transaction the copy is taken from. The writer is not blocked. The
        file is written beside `path` and renamed into place once synced. It may take a while
        for a big state: call it off the event loop.
        """
        env = self._open_env()
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        with env.begin() as txn:
            index, term = _read_applied(txn, self._meta)
            conf = _conf_state(_read_members(txn, self._meta))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                env.copyfd(fd, compact=True, txn=txn)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
            os.close(fd)
        os.replace(tmp, target)
        fsync_dir(target.parent)
        return SnapshotMeta(index, term, conf)

    def restore(self, path: str | os.PathLike[str]) -> SnapshotMeta:
        """Replace all state (data, sessions, members, applied index) with a snapshot file.

        Atomicity: the old contents are dropped and the snapshot's copied in ONE LMDB write
        transaction, then synced, so a crash at any point leaves either the old state or the
        new one, never a mix. This keeps the environment open (readers in other threads go on
        seeing the old state until the commit), which a swap of directories could not.
        Raises `CorruptionError` if the file is not a snapshot of this format.
        """
        env = self._open_env()
        source = Path(path)
        try:
            snap_env = lmdb.open(
                str(source),
                subdir=False,
                readonly=True,
                lock=False,
                max_dbs=len(_DB_NAMES),
            )
        except lmdb.Error as exc:
            raise CorruptionError(
                f"not an LMDB snapshot: {exc}", path=str(source), offset=0
            ) from exc
        try:
            try:
                snap_dbs = [snap_env.open_db(name, create=False) for name in _DB_NAMES]
            except lmdb.Error as exc:
                raise CorruptionError(
                    f"snapshot lacks a sub-database: {exc}", path=str(source), offset=0
                ) from exc
            with snap_env.begin() as snap_txn:
                version = snap_txn.get(_KEY_FORMAT, db=snap_dbs[1])
                applied = snap_txn.get(_KEY_APPLIED, db=snap_dbs[1])
                if version != bytes([FORMAT_VERSION]) or applied is None:
                    raise CorruptionError(
                        "snapshot has no valid format or applied index", path=str(source), offset=0
                    )
                index, term = _APPLIED.unpack(applied)
                conf = _conf_state(_read_members(snap_txn, snap_dbs[1]))
                with env.begin(write=True) as txn:
                    for live_db, snap_db in zip(self._dbs(), snap_dbs, strict=True):
                        txn.drop(live_db, delete=False)
                        # The source is sorted in the same key order: MDB_APPEND is a fast path.
                        cursor = txn.cursor(db=live_db)
                        consumed, added = cursor.putmulti(
                            snap_txn.cursor(db=snap_db).iternext(), append=True
                        )
                        if consumed != added:
                            raise CorruptionError(
                                "snapshot keys out of order", path=str(source), offset=0
                            )
                    # No eviction here, even if the snapshot holds more than our
                    # sessions_max: members must agree on it, and a full table only refuses
                    # registrations until sessions expire.
        finally:
            snap_env.close()
        env.sync(True)
        return SnapshotMeta(index, term, conf)


def _read_applied(txn: lmdb.Transaction[bytes], meta_db: lmdb._Database) -> tuple[int, int]:
    raw = txn.get(_KEY_APPLIED, db=meta_db)
    invariant(raw is not None, "meta lacks the applied index")
    assert raw is not None  # for mypy; invariant() above fires under -O too
    index, term = _APPLIED.unpack(raw)
    return index, term


def _read_members(
    txn: lmdb.Transaction[bytes], meta_db: lmdb._Database
) -> dict[str, tuple[str, str]]:
    cursor = txn.cursor(db=meta_db)
    members: dict[str, tuple[str, str]] = {}
    if not cursor.set_range(_MEMBER_PREFIX):
        return members
    for key, value in cursor.iternext():
        if not key.startswith(_MEMBER_PREFIX):
            break
        node_id = key[len(_MEMBER_PREFIX) :].decode()
        members[node_id] = (value[1:].decode("utf-8", "replace"), _ROLE_NAMES[value[0]])
    return members


def _conf_state(members: dict[str, tuple[str, str]]) -> ConfState:
    voters = tuple(sorted(i for i, (_, role) in members.items() if role == ROLE_VOTER))
    learners = tuple(sorted(i for i, (_, role) in members.items() if role == ROLE_LEARNER))
    return ConfState(voters, learners)
