"""The replicated state: committed entries applied to an LMDB environment.

Modelled on hashicorp/raft's FSM (apply, snapshot, restore) and on etcd's cindex: each batch of
entries is applied in ONE LMDB write transaction that also records `applied_index`,
`applied_term` and the client session table, so the data never disagrees with the index it
claims to cover.

Durability (power loss included): the environment is opened with `sync=True, metasync=False`
(MDB_NOMETASYNC). Each write transaction (one per applied batch) writes its pages and
fdatasyncs them BEFORE it writes the meta page that makes them current; that meta page is
flushed by the next transaction's fdatasync or by `checkpoint()`. LMDB never reuses a page of
the two newest versions, so after a power cut the file opens consistent, at its last
transaction or the one before, never torn. `checkpoint()` flushes the meta page and returns an
applied index that is durable against power loss: only then may the log below it be compacted.
The redo log stays the source of truth: entries above the applied index are replayed from it.
Cost (measured A/B against `sync=False`, `benchmarks/test_bench_powerloss.py`, three sittings
on a shared machine): one fdatasync per applied batch, 0.15 to 0.55 ms per one-entry commit
(13 to 33 us without). Batches grow under load, so it is paid per batch, not per write: through
a 3-member cluster, sequential puts ran at 0.91x to 1.06x the median ops/s of `sync=False`
(p50 up to +0.6 ms), and 256 puts in flight showed no loss (1.07x to 1.40x: noise). It is
paid on the loop thread, inside `apply`;
taking it off the write's latency would need the apply (LMDB's write transaction lives on one
thread) in a worker and reads gated on what it committed. The alternative, `sync=False` with a
read transaction pinned on the last checkpoint and a rollback after a reboot (boot id), saves
the fdatasync but needs LMDB's meta pages rewritten by hand and grows the file by every page
freed between checkpoints (one-entry commits: pages per commit times `checkpoint_entries`).

What open() refuses (`CorruptionError`, naming what is missing, never an empty store): a
sidecar file `CHECKPOINT_FILE`, written atomically and fsynced at creation and at every
checkpoint, records the latest durable checkpoint (applied index and LMDB transaction id). An
environment that is empty (never committed) or older than that checkpoint, or one whose tables
are gone, was lost (a power cut before this design, a copied or damaged file): it is refused.
The node also refuses a state older than the start of its log (`check_state_covers_log`).

Layout: named sub-databases in one environment (in `directory`):

- `data`: key -> metadata header + value (or a tombstone), and `history`: revisions, per-key
  metadata and the history of changes, kept by `kvstore.storage.mvcc` (see its docstring).
- `leases`: lease id (u64 big-endian) -> ttl_ms (u64); `lease_keys` (DUPSORT): lease id -> the
  keys attached to it (for a revoke). Leases are granted and revoked through the log
  (`commands.py`, "Leases"); expiry is the leader's, committed as a revoke.
- `meta`: `applied` -> (index u64, term u64, logical size u64: see "Quota"); `format` -> 1
  byte (`FORMAT_VERSION`); `clock` -> the log's clock (u64 ms, see below); `mvcc` -> the
  revision and the history's compaction state (`mvcc.MVCC_STATE`); `member/<id>` -> role
  byte (0 voter, 1 learner) + address (UTF-8).
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
keeps `clock = max(clock, stamp_ms)` in `meta`. The clock starts at 0 and runs from the first
stamped entry on (a cluster whose first writes came through followers has sessions whose
activity was recorded at 0); `meta` keeps that first stamp as the clock's ORIGIN, and a session's
activity counts as at least the origin, so the clock's first jump from 0 to a wall-clock time
expires nobody. A session is EXPIRED at the first entry after which
`clock - max(last activity, origin) > session_timeout_s`: a write of it is refused from then on, and
it is deleted from the table (at that write, at the next registration, or at the end of the
batch, whichever comes first; all three give the state an entry-by-entry expiry would). Why
only the leader stamps: a follower whose clock runs ahead could otherwise expire every session
early with a single write; with leader stamps only a leader's skew matters, the thesis's own
choice, and the max() makes a lagging leader harmless (the clock never goes back). A leader
whose clock jumps ahead by X expires sessions up to X early, and afterwards expiry pauses
until the other leaders' clocks pass that time (sessions then live up to X longer, and a full
table refuses registrations meanwhile); keep `session_timeout_s` well above the clock error of
your members (NTP keeps it to milliseconds).

Quota (like etcd's NOSPACE alarm, but decided by replicated state alone): `meta` holds the
store's logical size (in the `applied` record), the sum over every key of
`len(key) + len(value) + ENTRY_OVERHEAD_BYTES`, updated in the same transaction as the data.
A put, or a cas that would store a value, whose apply would take that size past `quota_bytes`
and grow it is refused: its result is `CommandRejected(STORAGE_FULL)`, nothing is written, and
its session records it as applied with result False (so a retry, or a duplicate in the log,
is answered False and never applied later; a put is True otherwise, so False means refused).
Deletes, cas-to-delete and overwrites that do not grow the store always apply, so deleting
frees room and writes resume. The history (events, tombstones) is not counted: it has its
own bounds (`kvstore.storage.mvcc`, "Sizes"). A lease costs `LEASE_BYTES`; a transaction is
refused whole if one of its puts would pass the quota. `quota_refuses(data)` gives the same
verdict on the applied state, for a proposer to refuse early (it passes every txn and lease
command: apply decides); the apply-time rule is the authority.

Map growth: the LMDB map (the largest the file may grow) starts at `map_size_bytes` and is
grown by doubling, between write transactions, once more than half of it is used; a batch that
still meets `lmdb.MapFullError` is rolled back, the map grown and the batch applied again in a
new transaction. The map is not capped (the logical quota bounds the data; B-tree overhead,
half-full pages and pages pinned by long readers come on top), so `apply` never fails for lack
of map space: only a disk that is really full (ENOSPC) makes it fail. Growing remaps the file:
every read but `lookup` enters a gate (`_reading`) that the growth closes while it waits for
the reads in progress to end. py-lmdb (>= 2.3) also makes a remap safe for operations it
overlaps, which fail cleanly instead; so `lookup`, the hot path, stays outside the gate and
reads again under it if a growth failed it. Growth that would wait is put off while
the map is at most three quarters used.

Determinism: `apply` depends only on the entries and the prior state, never on how the entries
were split into batches, the local clock or the node. `sessions_max`, `session_timeout_s` and
`quota_bytes` must be the same on every member: they decide which writes are refused.

Threads: one writer at a time (`apply`, `restore`); reads (`get`, `scan`, `applied_index`,
`members`, `snapshot`) may run in any thread, concurrently with the writer, without blocking it
(LMDB readers see the last committed transaction). Every use of the environment outside the
writer goes through the map-growth gate (`_reading`, never nested), except `lookup` (above).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import lmdb

from kvstore.closing import ClosingContext
from kvstore.consensus.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    SnapshotMeta,
)
from kvstore.errors import CompactedError, CorruptionError, InvalidArgumentError, invariant
from kvstore.options import KEY_BYTES_MAX, check_key, check_limit
from kvstore.storage.commands import (
    SESSION_WINDOW,
    TXN_BYTES_MAX,
    CommandRejected,
    CompareOp,
    CompareTarget,
    DecodedCompare,
    LeaseGranted,
    Op,
    Result,
    ResultCode,
    TxnOp,
    TxnOpType,
    TxnOutcome,
    decode_fields,
    decode_txn,
)
from kvstore.storage.mvcc import (
    HEADER,
    HEADER_BYTES,
    HISTORY_BYTES_MAX_DEFAULT,
    HISTORY_REVISIONS_MAX_DEFAULT,
    LEASE_KEY,
    MVCC_STATE_NEW,
    EventTuple,
    KvTuple,
    MvccReader,
    MvccState,
    MvccWriter,
    RangePage,
    prefix_end,
)
from kvstore.storage.snapshot import (
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    fsync_dir,
    make_private,
    private_dir,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 3
"""Layout version stored in `meta`; an environment with another version is refused. Version 3
(revisions: a metadata header before each value, the history tables) replaced version 2, whose
values carry no metadata; version 2 (sessions registered through the log, expiring by the
log's clock) replaced version 1 (random 16-byte client ids, evicted by age). Older stores are
refused rather than migrated: a member starts empty and receives a snapshot."""

ROLE_VOTER = "voter"
ROLE_LEARNER = "learner"
_ROLE_CODES = {ROLE_VOTER: 0, ROLE_LEARNER: 1}
_ROLE_NAMES = {code: name for name, code in _ROLE_CODES.items()}

_DB_DATA = b"data"
_DB_META = b"meta"
_DB_SESSIONS = b"sessions"
_DB_SESSION_AGE = b"session_age"
_DB_HISTORY = b"history"
_DB_LEASES = b"leases"
_DB_LEASE_KEYS = b"lease_keys"
_DB_NAMES = (
    _DB_DATA,
    _DB_META,
    _DB_SESSIONS,
    _DB_SESSION_AGE,
    _DB_HISTORY,
    _DB_LEASES,
    _DB_LEASE_KEYS,
)
_DUPSORT_DBS = frozenset((_DB_LEASE_KEYS,))

_KEY_APPLIED = b"applied"
_KEY_FORMAT = b"format"
_KEY_CLOCK = b"clock"
_KEY_CLOCK_ORIGIN = b"clock_origin"
_KEY_MVCC = b"mvcc"
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

_DAMAGE_ERRORS = (
    lmdb.CorruptedError,
    lmdb.PageNotFoundError,
    lmdb.InvalidError,
    lmdb.VersionMismatchError,
    lmdb.IncompatibleError,
)
"""What LMDB raises for a damaged file: refused at open as `CorruptionError`."""

CHECKPOINT_FILE = "checkpoint.json"
"""Sidecar in the state directory: the latest durable checkpoint (see the module docstring)."""
_CHECKPOINT_FORMAT = 1

QUOTA_BYTES_DEFAULT = 8 << 30
"""Default logical size at which writes that add data are refused (see "Quota" above)."""

ENTRY_OVERHEAD_BYTES = 16
"""What one key costs the quota beyond its key and value bytes (about LMDB's node header and
pointer), so that millions of empty values still count."""

LEASE_BYTES = 64
"""What one lease costs the quota (its row; the keys attached to it are counted as keys)."""
_LEASE_RECORD = struct.Struct("<Q")
"""A `leases` row: ttl_ms."""
_LEASE_GRANT_BODY = struct.Struct("<QQ")

_APPLIED_LOGICAL = struct.Struct("<QQQ")
"""The `applied` record with the logical size after index and term (a store written before the
quota has the first two only)."""
_STORAGE_FULL = CommandRejected(ResultCode.STORAGE_FULL, "the store is at its quota")
_MIB = 1 << 20
_MAP_FULL_RETRIES_MAX = 8
"""Grow-and-retry rounds for one batch that keeps meeting a full map (each at least doubles)."""
_REMAP_POLL_S = 0.0005
"""How often a map growth that must wait checks whether the reads in progress have ended."""

READERS_MAX = 4096
"""LMDB reader slots: read transactions open at once, across all threads (each stale read in
an application thread holds one while it runs). LMDB's default of 126 made 256 threads reading
at once fail with MDB_READERS_FULL; each slot costs 64 bytes of the lock file."""

# Module globals for the per-entry loop: an enum member looked up through its class costs more.
_NORMAL, _CONF_CHANGE = EntryType.NORMAL, EntryType.CONF_CHANGE
_PUT, _DELETE, _REGISTER, _TXN = Op.PUT, Op.DELETE, Op.REGISTER, Op.TXN
_LEASE_GRANT, _LEASE_REVOKE = Op.LEASE_GRANT, Op.LEASE_REVOKE
_TXN_WRITES = frozenset((TxnOpType.PUT, TxnOpType.DELETE, TxnOpType.DELETE_RANGE))
_SESSION_EXPIRED = CommandRejected(
    ResultCode.SESSION_EXPIRED,
    "the client session is unknown or expired; the write was not applied",
)


class StateMachine(ClosingContext):
    """The LMDB state machine of one node. See the module docstring for layout and guarantees.

    `StateMachine(directory, map_size_bytes=..., sessions_max=..., session_timeout_s=...,
    quota_bytes=..., history_revisions_max=..., history_bytes_max=...)` creates `directory`
    if needed and opens (or creates) the environment in it.
    `map_size_bytes` is the initial LMDB map size (it grows by itself); `quota_bytes` the logical
    size at which writes that add data are refused; the history bounds are those of
    `kvstore.storage.mvcc` (module docstring, "Compaction"). Use `close()` or `with`.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        map_size_bytes: int = 1 << 30,
        sessions_max: int = 100_000,
        session_timeout_s: float = 600.0,
        quota_bytes: int = QUOTA_BYTES_DEFAULT,
        history_revisions_max: int = HISTORY_REVISIONS_MAX_DEFAULT,
        history_bytes_max: int = HISTORY_BYTES_MAX_DEFAULT,
    ) -> None:
        if map_size_bytes < 1 << 20:
            raise InvalidArgumentError(f"map_size_bytes must be >= 1 MiB, got {map_size_bytes}")
        if sessions_max < 1:
            raise InvalidArgumentError(f"sessions_max must be >= 1, got {sessions_max}")
        if isinstance(quota_bytes, bool) or not isinstance(quota_bytes, int) or quota_bytes < 1:
            raise InvalidArgumentError(f"quota_bytes must be an int >= 1, got {quota_bytes!r}")
        self._init_quota(quota_bytes)
        for name, bound in (
            ("history_revisions_max", history_revisions_max),
            ("history_bytes_max", history_bytes_max),
        ):
            if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1:
                raise InvalidArgumentError(f"{name} must be an int >= 1, got {bound!r}")
        self._history_revisions_max = history_revisions_max
        self._history_bytes_max = history_bytes_max
        self._entry_index = 0
        """The index of the lease command being applied (a grant's id when it names none)."""
        self._writer: MvccWriter | None = None
        """The history writer of the batch being applied (None between batches)."""
        self._directory = Path(directory)
        create_directory_durably(self._directory)
        private_dir(self._directory)
        self._sessions_max = sessions_max
        self._checkpoint_lock = threading.Lock()
        """Serialises writers of the checkpoint sidecar (`checkpoint` and `restore`)."""
        self._init_sessions(session_timeout_s)
        # writemap stays off. Measured here: it doubles one-entry transactions (52k -> 92k/s)
        # but changes nothing at 10 to 1,000 entries per batch; small batches only happen at
        # low load, where the log's fsync dominates anyway. Its costs: the file becomes a
        # sparse map-sized file, and a full disk turns into SIGBUS instead of an error.
        self._env: lmdb.Environment | None = None
        try:
            self._env = lmdb.open(
                str(self._directory),
                map_size=map_size_bytes,
                max_dbs=len(_DB_NAMES),
                sync=True,
                metasync=False,
                max_readers=READERS_MAX,
                mode=PRIVATE_FILE_MODE,
            )
            for name in ("data.mdb", "lock.mdb", CHECKPOINT_FILE):  # made before files were 0600
                if (self._directory / name).exists():
                    make_private(self._directory / name)
            self._open_tables(self._env)
        except _DAMAGE_ERRORS as exc:
            self.close()
            raise CorruptionError(
                f"LMDB cannot open the state: {exc}", path=str(self._directory)
            ) from exc
        except BaseException:
            self.close()
            raise

    def _open_tables(self, env: lmdb.Environment) -> None:
        """Open (or, in a new environment, create) the tables; refuse a lost state.

        An environment is new when LMDB never committed a transaction in it; then, and only
        then, the tables are created. Otherwise each must exist, and the applied index must
        not be below the checkpoint the sidecar records.
        """
        invariant(env.max_key_size() >= 511, "LMDB built with a key limit below 511 bytes")
        recorded = self._read_checkpoint_file()
        new = env.info()["last_txnid"] == 0
        if new and recorded is not None and recorded[0] > 0:
            raise self._lost(
                f"the state is empty, but its checkpoint at applied index {recorded[0]} was durable"
            )
        try:
            with env.begin(write=True) as txn:
                (
                    self._data,
                    self._meta,
                    self._sessions,
                    self._session_age,
                    self._history,
                    self._leases,
                    self._lease_keys,
                ) = (
                    env.open_db(name, txn=txn, create=new, dupsort=name in _DUPSORT_DBS)
                    for name in _DB_NAMES
                )
                version = txn.get(_KEY_FORMAT, db=self._meta)
                if new:
                    txn.put(_KEY_FORMAT, bytes([FORMAT_VERSION]), db=self._meta)
                    txn.put(_KEY_APPLIED, _NO_APPLIED, db=self._meta)
                    txn.put(_KEY_MVCC, MVCC_STATE_NEW, db=self._meta)
                if version in (None, bytes([FORMAT_VERSION])):
                    self._load_logical_bytes(txn)
        except lmdb.NotFoundError as exc:
            raise self._lost(f"the state lacks a table ({exc})") from exc
        if not new and version is None:
            raise self._lost("the state lacks its format record")
        if not new and version != bytes([FORMAT_VERSION]):
            raise CorruptionError(
                f"state format {version!r} is not {FORMAT_VERSION}: written by another "
                "version of kvstore (version 2 kept no revisions, version 1 kept client "
                "sessions differently); start "
                "this member with an empty data directory so it receives a snapshot",
                path=str(self._directory),
                offset=0,
            )
        point = self._durable_point()
        applied = point[0]
        if recorded is not None and applied < recorded[0]:
            raise self._lost(
                f"state at applied index {applied} is older than its last durable checkpoint "
                f"at {recorded[0]}"
            )
        if new:
            # data.mdb's name must survive a power cut too: LMDB never fsyncs the directory.
            env.sync(True)
            fsync_dir(self._directory)
        if recorded is None:
            self._write_checkpoint_file(point)
        self._page_bytes: int = env.stat()["psize"]

    def _lost(self, what: str) -> CorruptionError:
        return CorruptionError(
            f"{what}: the state was lost (power cut?); remove this member, move its data "
            "directory aside and add it again: it receives a snapshot from the leader",
            path=str(self._directory),
        )

    def _read_checkpoint_file(self) -> tuple[int, int] | None:
        """(applied index, LMDB txn id) of the latest durable checkpoint, or None if the
        sidecar does not exist (a new directory, or one from before the sidecar)."""
        path = self._directory / CHECKPOINT_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            record = json.loads(raw)
            if record["format"] != _CHECKPOINT_FORMAT:
                raise ValueError(f"format {record['format']!r}")
            index, txn_id = record["applied_index"], record["lmdb_txn_id"]
            if type(index) is not int or type(txn_id) is not int or index < 0 or txn_id < 0:
                raise ValueError("bad numbers")
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptionError(
                f"checkpoint record unreadable: {exc}", path=str(path), offset=0
            ) from exc
        return index, txn_id

    def _durable_point(self) -> tuple[int, int]:
        """(applied index, LMDB transaction id) read together: `checkpoint` reads them before
        its sync, which then covers at least that transaction."""
        with self._reading() as env, env.begin() as txn:
            txn_id: int = txn.id()
            return _read_applied(txn, self._meta)[0], txn_id

    def _write_checkpoint_file(self, point: tuple[int, int]) -> None:
        """Durably record `point` (see `_durable_point`), synced already, as the checkpoint.

        Only the applied index is checked at open. The transaction id is for diagnostics: a
        power cut may undo the transactions after it, never it.
        """
        applied_index, txn_id = point
        record = {
            "format": _CHECKPOINT_FORMAT,
            "applied_index": applied_index,
            "lmdb_txn_id": txn_id,
        }
        path = self._directory / CHECKPOINT_FILE
        tmp = path.with_name(path.name + ".tmp")
        with self._checkpoint_lock:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, json.dumps(record).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            fsync_dir(self._directory)

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

    # --- quota and map growth ---------------------------------------------------------------

    def _init_quota(self, quota_bytes: int) -> None:
        self._quota_bytes = quota_bytes
        self._logical_bytes = 0
        """The logical size, kept by the writer as it applies (module docstring, "Quota")."""
        self._logical_applied = 0
        """The logical size as of the last committed batch: what other threads may read."""
        self._room_bytes = 0
        """About how many bytes may still be written before the map needs a look."""
        # The map-growth gate. A read appends to `_readers` and then checks `_remapping`;
        # growth sets `_remapping` and then waits until `_readers` is empty. Under the GIL each
        # list operation is atomic and the two sides' steps are ordered, so whichever comes
        # second sees the other: a read never overlaps a remap. (Two list operations cost less
        # than a lock taken twice.)
        self._readers: list[None] = []
        self._remapping = False
        self._remap_done = threading.Event()
        self._remap_done.set()

    @property
    def quota_bytes(self) -> int:
        """The logical size at which writes that add data are refused."""
        return self._quota_bytes

    def logical_bytes(self) -> int:
        """The store's logical size as of the last applied batch (module docstring, "Quota")."""
        return self._logical_applied

    def map_size_bytes(self) -> int:
        """The LMDB map's current size (it grows by itself: module docstring, "Map growth")."""
        with self._reading() as env:
            size: int = env.info()["map_size"]
            return size

    def quota_refuses(self, data: bytes) -> bool:
        """Whether applying the encoded command `data` now would be refused for the quota.

        Judged on the applied state, for a proposer to refuse a write early (apply decides).
        One comparison unless the store is within `len(data)` bytes of its quota: an encoded
        command is longer than what it can add.
        """
        logical = self._logical_applied
        if logical + len(data) <= self._quota_bytes:
            return False
        try:
            op, _session_id, _seq, key, value, expected, new, _stamp = decode_fields(data)
        except ValueError:
            return False  # apply rejects it as malformed
        if op is _DELETE or op is _REGISTER or (op is not _PUT and new is None):
            return False
        stored = value if op is _PUT else new
        assert stored is not None  # for mypy: decode sets it
        old = self.lookup(key)
        if op is not _PUT and old != expected:
            return False  # a cas that will not swap
        if old is None:
            grow = len(key) + len(stored) + ENTRY_OVERHEAD_BYTES
        else:
            grow = len(stored) - len(old)
        return grow > 0 and logical + grow > self._quota_bytes

    def _load_logical_bytes(self, txn: lmdb.Transaction[bytes]) -> None:
        """Read the logical size (in the `applied` record) in a write transaction. A store
        without one (written before the quota existed, or restored from such a snapshot) is
        counted once and the count stored."""
        raw = txn.get(_KEY_APPLIED, db=self._meta)
        invariant(raw is not None, "meta lacks the applied index")
        assert raw is not None  # for mypy; invariant() above fires under -O too
        if len(raw) >= _APPLIED_LOGICAL.size:
            _index, _term, total = _APPLIED_LOGICAL.unpack_from(raw)
        else:
            total = sum(
                len(key) + len(value) - HEADER_BYTES + ENTRY_OVERHEAD_BYTES
                for key, value in txn.cursor(db=self._data).iternext()
                if not value[0]  # tombstones are history (kvstore.storage.mvcc)
            )
            index, term = _APPLIED.unpack_from(raw)
            txn.put(_KEY_APPLIED, _APPLIED_LOGICAL.pack(index, term, total), db=self._meta)
        self._logical_bytes = self._logical_applied = total

    @contextlib.contextmanager
    def _reading(self) -> Iterator[lmdb.Environment]:
        """Hold off map growth while the block reads (never nest two of these)."""
        env = self._open_env()
        readers = self._readers
        readers.append(None)
        while self._remapping:
            readers.pop()
            self._remap_done.wait()
            readers.append(None)
        try:
            yield env
        finally:
            readers.pop()

    def _ensure_room(self, extra_bytes: int, *, force: bool = False) -> None:
        """Writer only, between transactions: grow the map (doubling at least) once the used
        pages plus `extra_bytes` pass half of it, or at once if `force` (after a full map)."""
        env = self._open_env()
        info = env.info()  # no gate: only this thread (the writer) remaps
        map_bytes: int = info["map_size"]
        need = (info["last_pgno"] + 1) * self._page_bytes + extra_bytes
        if force or need > map_bytes // 2:
            target = max(2 * map_bytes, -(-2 * need // _MIB) * _MIB)
            # Waiting for long reads (a snapshot being copied) is put off while there is room.
            if self._grow_map(target, wait=force or need > map_bytes * 3 // 4):
                map_bytes = target
        self._room_bytes = max(map_bytes - need, 0) // 4

    def _grow_map(self, map_bytes: int, *, wait: bool) -> bool:
        """Remap at `map_bytes` once no read is in progress; False if there were reads and not
        `wait`."""
        env = self._open_env()
        self._remap_done.clear()
        self._remapping = True
        try:
            while self._readers:
                if not wait:
                    return False
                time.sleep(_REMAP_POLL_S)
            env.set_mapsize(map_bytes)
        finally:
            self._remapping = False
            self._remap_done.set()
        logger.info("state machine: LMDB map grown to %d MiB", map_bytes // _MIB)
        return True

    # --- writes -----------------------------------------------------------------------------

    def apply(self, entries: Sequence[Entry]) -> list[Result]:
        """Apply committed entries in order, all in one write transaction; one result each.

        Entries at or below `applied_index()` are skipped (idempotent replay) and give None.
        The rest must follow on without a gap (a gap is a bug: `InvariantError`, nothing
        applied). Results: register -> the session id; put -> True, delete -> existed, cas ->
        swapped; None for no-op entries and conf changes; `CommandRejected` for a write the
        session rules refuse (see the module docstring) or for data that does not decode
        (applied as a no-op, the same way on every member).

        A put or cas that would take the store past its quota gives
        `CommandRejected(STORAGE_FULL)` (module docstring, "Quota"). A batch that meets a full
        map is rolled back, the map grown and the batch applied again ("Map growth"). Other
        LMDB errors (a full disk) abort the whole batch and propagate: the state is unchanged
        and the node must stop.
        """
        env = self._open_env()
        if not entries:
            return []
        if self._room_bytes <= 0:
            self._ensure_room(0)
        logical_start = self._logical_bytes
        try:
            results = self._apply_in_txn(env, entries)
        except lmdb.MapFullError:
            self._logical_bytes = logical_start
            return self._apply_after_map_full(env, entries)
        except BaseException:
            self._logical_bytes = logical_start
            raise
        logical = self._logical_applied = self._logical_bytes
        # `_applied_batch`, inlined: this runs once per batch.
        self._room_bytes -= 2 * max(logical - logical_start, 0) + 64 * len(entries)
        return results

    def _apply_after_map_full(
        self, env: lmdb.Environment, entries: Sequence[Entry]
    ) -> list[Result]:
        """Nothing of the batch was committed: grow the map past it and apply it again."""
        logical_start = self._logical_bytes
        for attempt in range(1, _MAP_FULL_RETRIES_MAX + 1):
            self._ensure_room(2 * sum(len(entry.data) for entry in entries), force=True)
            try:
                results = self._apply_in_txn(env, entries)
            except BaseException as exc:
                self._logical_bytes = logical_start
                if isinstance(exc, lmdb.MapFullError) and attempt < _MAP_FULL_RETRIES_MAX:
                    continue
                raise
            self._applied_batch(logical_start, len(entries))
            return results
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _applied_batch(self, logical_start: int, count: int) -> None:
        """After a commit: publish the logical size; count what the batch took from the map."""
        logical = self._logical_bytes
        self._logical_applied = logical
        # A rough count, so that `_ensure_room` runs only once a quarter of the free room may
        # be gone (an underestimate costs a retry after a full map, never an error).
        self._room_bytes -= 2 * max(logical - logical_start, 0) + 64 * count

    def _apply_in_txn(self, env: lmdb.Environment, entries: Sequence[Entry]) -> list[Result]:
        """`apply`'s one write transaction."""
        results: list[Result] = []
        data_db, meta_db = self._data, self._meta
        apply_command = self._apply_command
        # Sessions touched by this batch, kept in memory and written once at the end: a
        # pipelining client sends many commands under one session, and four LMDB calls per
        # entry for its bookkeeping were half the cost of applying a put (measured).
        sessions: dict[int, list[int]] = {}
        # The transaction's default database is `data`, so the commonest calls need no `db=`.
        with env.begin(db=data_db, write=True) as txn:
            start_clock = self._clock = self._read_clock(txn)
            self._clock_origin = self._read_clock(txn, _KEY_CLOCK_ORIGIN)
            start_index, term = _read_applied(txn, meta_db)
            mvcc_raw = txn.get(_KEY_MVCC, db=meta_db)
            invariant(mvcc_raw is not None, "meta lacks the mvcc record")
            assert mvcc_raw is not None  # for mypy
            writer = self._writer = MvccWriter(
                txn,
                self._mvcc_dbs(),
                MvccState(mvcc_raw),
                self._history_revisions_max,
                self._history_bytes_max,
                self._lease_keys,
            )
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
                if not start_clock:  # the clock ran for the first time in this batch
                    txn.put(_KEY_CLOCK_ORIGIN, _CLOCK.pack(self._clock_origin), db=meta_db)
            self._writer = None
            mvcc_packed = writer.state.pack()
            if mvcc_packed != mvcc_raw:
                txn.put(_KEY_MVCC, mvcc_packed, db=meta_db)
            if index != start_index:
                # The logical size rides in the same record: no extra write per batch.
                txn.put(
                    _KEY_APPLIED,
                    _APPLIED_LOGICAL.pack(index, term, self._logical_bytes),
                    db=meta_db,
                )
        return results

    # --- sessions (Raft thesis §6.3; see the module docstring) -----------------------------

    def _init_sessions(self, session_timeout_s: float) -> None:
        if not (isinstance(session_timeout_s, int | float) and 0 < session_timeout_s < 1e12):
            raise InvalidArgumentError(
                f"session_timeout_s must be a positive finite number, got {session_timeout_s!r}"
            )
        self._session_timeout_ms = max(1, round(session_timeout_s * 1000))
        self._clock = 0
        self._clock_origin = 0
        """The first stamp the log's clock took (see "Time and expiry"); 0 while it never ran."""
        """The log's clock while a batch is applied (ms; see the module docstring)."""

    def _read_clock(self, txn: lmdb.Transaction[bytes], key: bytes = _KEY_CLOCK) -> int:
        raw = txn.get(key, db=self._meta)
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
        origin = self._clock_origin
        cursor = txn.cursor(db=self._session_age)
        sessions_db = self._sessions
        while cursor.first():
            last_active, session_id = _AGE.unpack(cursor.key())
            # max() is non-decreasing in the sort key, so the first live one ends the scan.
            if max(last_active, origin) >= oldest_live:
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
            if not clock:
                self._clock_origin = stamp_ms
            self._clock = clock = stamp_ms
        if op is _LEASE_GRANT or op is _LEASE_REVOKE:
            self._entry_index = index  # a grant's lease id, when it names none
            if not session_id:  # the leader's expiry, or a grant without a session
                result = self._apply_op(txn, op, key, value, expected, new)
                self._writer.end_command()  # type: ignore[union-attr]  # set for the batch
                return result
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
        if clock - max(last_active, self._clock_origin) > self._session_timeout_ms:
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
        self._writer.end_command()  # type: ignore[union-attr]  # set for the batch
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

    def _apply_op(
        self,
        txn: lmdb.Transaction[bytes],
        op: Op,
        key: bytes,
        value: bytes | None,
        expected: bytes | None,
        new: bytes | None,
    ) -> Result:
        """Apply one operation to `data`, keeping the logical size (module docstring, "Quota")
        and the history (`kvstore.storage.mvcc`)."""
        if op is _TXN:
            return self._apply_txn(txn, value)  # type: ignore[arg-type]  # decode sets it
        if op is _LEASE_GRANT:
            return self._grant_lease(txn, value)  # type: ignore[arg-type]  # decode sets it
        if op is _LEASE_REVOKE:
            return self._revoke_lease(txn, int.from_bytes(value, "little"))  # type: ignore[arg-type]
        stored = txn.get(key)  # may be a tombstone: mvcc's, absent for everything here
        if op is _PUT:
            return self._store_within_quota(key, value, stored)  # type: ignore[arg-type]
        writer: MvccWriter = self._writer  # type: ignore[assignment]  # set for the batch
        current = None if stored is None or stored[0] else stored[HEADER_BYTES:]
        if op is _DELETE:
            if current is None:
                return False
            writer.delete(key, stored)
            self._logical_bytes -= len(key) + len(current) + ENTRY_OVERHEAD_BYTES
            return True
        if current != expected:
            return False
        if new is None:
            if current is not None:
                writer.delete(key, stored)
                self._logical_bytes -= len(key) + len(current) + ENTRY_OVERHEAD_BYTES
            return True
        return self._store_within_quota(key, new, stored)

    def _store_within_quota(
        self, key: bytes, value: bytes, old: bytes | None, lease: int = 0
    ) -> Result:
        """Store `value` at `key` (whose `data` value is `old`) unless that grows the store
        past its quota."""
        if old is None or old[0]:  # absent, or a tombstone
            grow = len(key) + len(value) + ENTRY_OVERHEAD_BYTES
        else:
            grow = len(value) - len(old) + HEADER_BYTES
        if grow > 0 and self._logical_bytes + grow > self._quota_bytes:
            return _STORAGE_FULL
        self._writer.put(key, value, lease, old)  # type: ignore[union-attr]  # set for the batch
        self._logical_bytes += grow
        return True

    # --- transactions (commands.py, "Transactions") -----------------------------------------

    def _apply_txn(self, txn: lmdb.Transaction[bytes], body: bytes) -> Result:
        """Evaluate the compares, then run the branch they chose at one revision.

        A branch that writes runs in a nested LMDB transaction: if any op is refused (the
        quota), it is aborted and nothing of the txn stays (`CommandRejected`).
        """
        try:
            compares, success, failure = decode_txn(body)
        except ValueError as exc:
            return CommandRejected(ResultCode.MALFORMED, f"txn: {exc}")
        writer: MvccWriter = self._writer  # type: ignore[assignment]  # set for the batch
        succeeded = all(self._compare(txn, compare) for compare in compares)
        ops = success if succeeded else failure
        writes = sum(op.type in _TXN_WRITES for op in ops)
        if not writes:
            results = [self._txn_read(txn, op) for op in ops]
            return TxnOutcome(succeeded, results, writer.state.revision)
        if writes == 1:
            # One write is refused before it writes anything (the lease and quota checks come
            # first): no nested transaction needed (it costs a fifth of a txn, measured).
            results = []
            for op in ops:
                result = self._txn_op(txn, op)
                if isinstance(result, CommandRejected):
                    return result
                results.append(result)
            return TxnOutcome(succeeded, results, writer.state.revision + int(writer.changed))
        logical_start = self._logical_bytes
        history_start = writer.state.history_bytes
        child = self._open_env().begin(write=True, parent=txn, db=self._data)
        writer.txn = child
        try:
            results = []
            for op in ops:
                result = self._txn_op(child, op)
                if isinstance(result, CommandRejected):
                    child.abort()
                    self._logical_bytes = logical_start
                    writer.forget_command(history_start)
                    return result
                results.append(result)
            child.commit()
        except BaseException:
            child.abort()
            raise
        finally:
            writer.txn = txn
        return TxnOutcome(succeeded, results, writer.state.revision + int(writer.changed))

    def _compare(self, txn: lmdb.Transaction[bytes], compare: DecodedCompare) -> bool:
        """One compare against the current state (etcd's rules: a value compare on an absent
        key is false whatever the op; version and revisions of an absent key are 0)."""
        stored = txn.get(compare.key)
        live = stored is not None and not stored[0]
        target = compare.target
        ours: bytes | int | bool
        if target is CompareTarget.VALUE:
            if not live:
                return False
            ours = stored[HEADER_BYTES:]  # type: ignore[index]  # live: not None
        elif target is CompareTarget.EXISTS:
            ours = live
        elif not live:
            ours = 0
        else:
            _flag, create, mod, version, _lease, _sub = HEADER.unpack_from(stored)  # type: ignore[arg-type]
            ours = (
                version
                if target is CompareTarget.VERSION
                else create
                if target is CompareTarget.CREATE_REVISION
                else mod
            )
        theirs = compare.value
        op = compare.op
        if op is CompareOp.EQUAL:
            return ours == theirs
        if op is CompareOp.NOT_EQUAL:
            return ours != theirs
        if op is CompareOp.LESS:
            return ours < theirs  # type: ignore[operator]  # same kinds: decode_txn
        return ours > theirs  # type: ignore[operator]

    def _txn_reader(self, txn: lmdb.Transaction[bytes]) -> MvccReader:
        """A reader of the latest state, the txn's own writes so far included."""
        writer: MvccWriter = self._writer  # type: ignore[assignment]  # set for the batch
        reader = MvccReader(txn, self._mvcc_dbs(), writer.state)
        reader.revision = writer.state.revision + int(writer.changed)
        return reader

    def _txn_read(self, txn: lmdb.Transaction[bytes], op: TxnOp) -> object:
        reader = self._txn_reader(txn)
        if op.type is TxnOpType.GET:
            return reader.get(op.key, reader.revision)
        end = prefix_end(op.key) if op.prefix else op.end
        return reader.range(
            op.key,
            end,
            reader.revision,
            single=op.end is None and not op.prefix,
            limit=op.limit,
            keys_only=False,
            count_only=False,
            bytes_max=TXN_BYTES_MAX,
            count_all=True,
        )

    def _txn_op(self, txn: lmdb.Transaction[bytes], op: TxnOp) -> object:
        kind = op.type
        if kind is TxnOpType.PUT:
            if op.lease and txn.get(LEASE_KEY.pack(op.lease), db=self._leases) is None:
                return CommandRejected(
                    ResultCode.LEASE_NOT_FOUND,
                    f"lease {op.lease} is not held (revoked or expired?)",
                )
            result = self._store_within_quota(op.key, op.value, txn.get(op.key), op.lease)
            return result if isinstance(result, CommandRejected) else None
        if kind is TxnOpType.DELETE:
            return self._apply_op(txn, _DELETE, op.key, None, None, None)
        if kind is not TxnOpType.DELETE_RANGE:
            return self._txn_read(txn, op)
        end = op.end
        if op.prefix:
            end = prefix_end(op.key)
        elif end is None:  # just the key
            end = op.key + b"\0"
        cursor = txn.cursor()
        doomed: list[tuple[bytes, bytes]] = []
        if cursor.set_range(op.key):
            for key, stored in cursor.iternext():
                if end is not None and key >= end:
                    break
                if not stored[0]:
                    doomed.append((key, stored))
        writer: MvccWriter = self._writer  # type: ignore[assignment]  # set for the batch
        for key, stored in doomed:
            writer.delete(key, stored)
            self._logical_bytes -= len(key) + len(stored) - HEADER_BYTES + ENTRY_OVERHEAD_BYTES
        return len(doomed)

    # --- leases (commands.py, "Leases") -------------------------------------------------------

    def _grant_lease(self, txn: lmdb.Transaction[bytes], payload: bytes) -> Result:
        lease_id, ttl_ms = _LEASE_GRANT_BODY.unpack(payload)
        lease_id = lease_id or self._entry_index
        key = LEASE_KEY.pack(lease_id)
        if txn.get(key, db=self._leases) is not None:
            return CommandRejected(ResultCode.LEASE_EXISTS, f"lease {lease_id} is held already")
        if self._logical_bytes + LEASE_BYTES > self._quota_bytes:
            return _STORAGE_FULL
        txn.put(key, _LEASE_RECORD.pack(ttl_ms), db=self._leases)
        self._logical_bytes += LEASE_BYTES
        return LeaseGranted(lease_id, ttl_ms)

    def _revoke_lease(self, txn: lmdb.Transaction[bytes], lease_id: int) -> Result:
        """Delete the lease and its keys, all at one revision (one event per key)."""
        key = LEASE_KEY.pack(lease_id)
        if txn.get(key, db=self._leases) is None:
            return CommandRejected(
                ResultCode.LEASE_NOT_FOUND, f"lease {lease_id} is not held (revoked or expired?)"
            )
        cursor = txn.cursor(db=self._lease_keys)
        attached = list(cursor.iternext_dup()) if cursor.set_key(key) else []
        writer: MvccWriter = self._writer  # type: ignore[assignment]  # set for the batch
        for attached_key in attached:
            stored = txn.get(attached_key)
            invariant(stored is not None and not stored[0], "lease_keys names an absent key")
            assert stored is not None  # for mypy
            writer.delete(attached_key, stored)
            self._logical_bytes -= (
                len(attached_key) + len(stored) - HEADER_BYTES + ENTRY_OVERHEAD_BYTES
            )
        txn.delete(key, db=self._leases)
        self._logical_bytes -= LEASE_BYTES
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
        """Make LMDB durable, power loss included, at (at least) the returned applied index.

        The log below that index may then be compacted. Safe from any thread; the index is
        read before the sync, so a concurrent apply can only make the sync cover more. Each
        transaction's pages were fdatasynced at its commit; this flushes the newest meta page,
        then records the index in the sidecar (`CHECKPOINT_FILE`), which open() checks.
        """
        point = self._durable_point()
        with self._reading() as env:  # a map growth would fail the sync
            env.sync(True)
        self._write_checkpoint_file(point)
        return point[0]

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
        try:
            stored: bytes | None = env.begin(db=self._data).get(key)
        except lmdb.Error:
            # Outside the gate (it would cost a sixth of a read), so a map growth may have
            # invalidated this read (py-lmdb fails it cleanly): read again under the gate, once
            # the growth is over. Any other error comes back and is raised.
            with self._reading() as env:
                stored = env.begin(db=self._data).get(key)
        if stored is None or stored[0]:  # absent, or a tombstone (kvstore.storage.mvcc)
            return None
        return stored[HEADER_BYTES:]

    def scan(self, prefix: bytes = b"", limit: int | None = None) -> list[tuple[bytes, bytes]]:
        """Pairs whose key starts with `prefix`, sorted by key, at most `limit` of them."""
        if not isinstance(prefix, bytes):
            raise InvalidArgumentError("prefix must be bytes")
        check_limit(limit)
        out: list[tuple[bytes, bytes]] = []
        with self._reading() as env, env.begin(db=self._data) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(prefix):
                return out
            for key, value in cursor.iternext():
                if not key.startswith(prefix) or (limit is not None and len(out) >= limit):
                    break
                if not value[0]:  # a tombstone (kvstore.storage.mvcc)
                    out.append((key, value[HEADER_BYTES:]))
        return out

    # --- revisions, ranges and history (kvstore.storage.mvcc) -----------------------------

    @contextlib.contextmanager
    def _mvcc_reader(self) -> Iterator[MvccReader]:
        """A reader on one read transaction (under the map-growth gate)."""
        with self._reading() as env, env.begin() as txn:
            raw = txn.get(_KEY_MVCC, db=self._meta)
            invariant(raw is not None, "meta lacks the mvcc record")
            assert raw is not None  # for mypy
            yield MvccReader(txn, self._mvcc_dbs(), MvccState(raw))

    def revision(self) -> int:
        """The store's revision: how many applied commands changed at least one key."""
        with self._mvcc_reader() as reader:
            return reader.revision

    def oldest_revision(self) -> int:
        """The oldest revision still readable (reads and watches below it raise
        `CompactedError`); it moves as the history is compacted (`kvstore.storage.mvcc`)."""
        with self._mvcc_reader() as reader:
            return reader.oldest

    def history_bytes(self) -> int:
        """Bytes of history not compacted yet (`kvstore.storage.mvcc`, "Sizes"): at most
        `history_bytes_max` plus the events of one command, once compaction has caught up."""
        with self._mvcc_reader() as reader:
            return reader.history_bytes

    def get_kv(self, key: bytes, revision: int | None = None) -> KvTuple | None:
        """`key` with its metadata (`KvTuple`, `kvstore.KeyValue` field order, lease 0 for
        none) at `revision` (None: the latest), or None if absent then.

        Raises `CompactedError` below `oldest_revision()`, `InvalidArgumentError` for a bad
        key or a revision after the latest."""
        if type(key) is not bytes or not 0 < len(key) <= KEY_BYTES_MAX:
            check_key(key)
        with self._mvcc_reader() as reader:
            return reader.get(key, reader.check_revision(revision))

    def range(
        self,
        start: bytes,
        end: bytes | None = None,
        *,
        prefix: bool = False,
        limit: int | None = None,
        revision: int | None = None,
        keys_only: bool = False,
        count_only: bool = False,
        bytes_max: int | None = None,
        count_all: bool = True,
    ) -> RangePage:
        """One page of the keys in `[start, end)` at `revision` (None: the latest), sorted.

        `end` None: just `start`, or with `prefix=True` every key starting with `start` (an
        empty `start`: every key). At most `limit` kvs; `bytes_max` cuts the page once its keys
        and values would pass that many bytes (always after at least one kv, so paging makes
        progress); `more` says whether matching keys follow. `count` counts every match (a
        walk over all of them: pass `count_all=False` when paging, then `count` is only the
        number returned). `keys_only` leaves values empty; `count_only` returns no kvs.
        Continue a range with `start = last_key + b"\\0"` and the same `revision`.

        Raises `CompactedError` below `oldest_revision()`, `InvalidArgumentError` for bad
        arguments.
        """
        if type(start) is not bytes or len(start) > KEY_BYTES_MAX:
            raise InvalidArgumentError(f"start must be bytes of at most {KEY_BYTES_MAX} bytes")
        if end is not None and (prefix or type(end) is not bytes):
            raise InvalidArgumentError("end must be bytes, and not given with prefix=True")
        check_limit(limit)
        if bytes_max is not None and (type(bytes_max) is not int or bytes_max < 1):
            raise InvalidArgumentError(f"bytes_max must be None or an int >= 1, got {bytes_max!r}")
        single = end is None and not prefix
        if single:
            check_key(start)
        elif prefix:
            end = prefix_end(start)
        with self._mvcc_reader() as reader:
            return reader.range(
                start,
                end,
                reader.check_revision(revision),
                single=single,
                limit=limit,
                keys_only=bool(keys_only),
                count_only=bool(count_only),
                bytes_max=bytes_max,
                count_all=bool(count_all),
            )

    def range_iter(
        self,
        start: bytes,
        end: bytes | None = None,
        *,
        prefix: bool = False,
        revision: int | None = None,
        page_size: int = 1000,
        bytes_max: int | None = None,
    ) -> Iterator[KvTuple]:
        """Every kv of a range (as `range`) at one revision, read page by page (each page in
        its own read transaction, at most `page_size` kvs and `bytes_max` bytes): constant
        memory for any number of keys. Raises `CompactedError` if the revision is compacted
        while it runs."""
        check_limit(page_size)
        page = self.range(
            start,
            end,
            prefix=prefix,
            limit=page_size,
            revision=revision,
            bytes_max=bytes_max,
            count_all=False,
        )
        at, bound = page.revision, end if not prefix else prefix_end(start)
        while True:
            yield from page.kvs
            if not page.more:
                return
            after = page.kvs[-1][0] + b"\0"
            if len(after) > KEY_BYTES_MAX:  # no key is longer: nothing can follow
                return
            if bound is None:
                page = self.range(
                    after,
                    prefix=True,
                    limit=page_size,
                    revision=at,
                    bytes_max=bytes_max,
                    count_all=False,
                )
            else:
                page = self.range(
                    after,
                    bound,
                    limit=page_size,
                    revision=at,
                    bytes_max=bytes_max,
                    count_all=False,
                )

    def events(
        self, start_revision: int, *, events_max: int = 1000, prev_kv: bool = False
    ) -> list[tuple[int, list[EventTuple]]]:
        """A page of history for a watcher: `[(revision, [(type, kv, prev_kv), ...]), ...]`
        for the revisions >= `start_revision`, in order, whole revisions only, stopping once
        `events_max` events were gathered (empty: nothing newer yet; continue from the last
        revision returned + 1). Events are `mvcc.EventTuple`s; `prev_kv` asks for each
        key's state before the event. Raises `CompactedError` if `start_revision` is below
        `oldest_revision()` (events were dropped), `InvalidArgumentError` for bad arguments.
        """
        if type(start_revision) is not int or start_revision < 1:
            raise InvalidArgumentError(
                f"start_revision must be an int >= 1, got {start_revision!r}"
            )
        check_limit(events_max)
        with self._mvcc_reader() as reader:
            if start_revision < reader.oldest:
                raise CompactedError(reader.oldest)
            return reader.events(start_revision, events_max=events_max, prev_kv=bool(prev_kv))

    def leases(self) -> list[tuple[int, int]]:
        """(lease id, ttl_ms) of every lease held, by id: what a new leader loads to time them
        (expiry is the leader's, in memory; committed as revokes)."""
        with self._reading() as env, env.begin(db=self._leases) as txn:
            return [
                (LEASE_KEY.unpack(key)[0], _LEASE_RECORD.unpack(value)[0])
                for key, value in txn.cursor().iternext()
            ]

    def lease_ttl_ms(self, lease_id: int) -> int | None:
        """The granted ttl of a lease (ms), or None if it is not held."""
        if (
            isinstance(lease_id, bool)
            or not isinstance(lease_id, int)
            or not 0 < lease_id < 1 << 63
        ):
            raise InvalidArgumentError(f"a lease id must be in 1..2**63-1, got {lease_id!r}")
        with self._reading() as env, env.begin(db=self._leases) as txn:
            raw = txn.get(LEASE_KEY.pack(lease_id))
        return None if raw is None else int(_LEASE_RECORD.unpack(raw)[0])

    def lease_keys(self, lease_id: int, limit: int | None = None) -> list[bytes]:
        """The keys attached to a lease, sorted (at most `limit`)."""
        check_limit(limit)
        with self._reading() as env, env.begin(db=self._lease_keys) as txn:
            cursor = txn.cursor()
            if not cursor.set_key(LEASE_KEY.pack(lease_id)):
                return []
            keys: list[bytes] = []
            for key in cursor.iternext_dup():
                if limit is not None and len(keys) >= limit:
                    break
                keys.append(key)
            return keys

    def events_iter(
        self, start_revision: int, *, events_max: int = 1000, prev_kv: bool = False
    ) -> Iterator[tuple[int, list[EventTuple]]]:
        """Every (revision, events) from `start_revision` up to the latest revision applied
        while it runs, read page by page (`events`): bounded memory. Raises `CompactedError`
        if compaction passes the next page's start before it is read."""
        while True:
            page = self.events(start_revision, events_max=events_max, prev_kv=prev_kv)
            if not page:
                return
            yield from page
            start_revision = page[-1][0] + 1

    def applied_index(self) -> int:
        """Index of the last applied entry (0 before any)."""
        return self.applied()[0]

    def applied_term(self) -> int:
        """Term of the last applied entry (0 before any)."""
        return self.applied()[1]

    def applied(self) -> tuple[int, int]:
        """(applied index, applied term), read together."""
        with self._reading() as env, env.begin() as txn:
            return _read_applied(txn, self._meta)

    def members(self) -> dict[str, tuple[str, str]]:
        """node_id -> (address, role) for every member, role being "voter" or "learner"."""
        with self._reading() as env, env.begin() as txn:
            return _read_members(txn, self._meta)

    def conf_state(self) -> ConfState:
        """The configuration the applied conf changes describe (ids sorted)."""
        return _conf_state(self.members())

    def session(self, session_id: int) -> tuple[int, bool] | None:
        """(newest seq applied for a session, its result), or None if unknown or expired
        (seq 0 for a session without writes yet). An expired session may still be reported
        here until the next apply deletes it."""
        with self._reading() as env, env.begin(db=self._sessions) as txn:
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
        with self._reading() as env, env.begin() as txn:
            entries: int = txn.stat(self._sessions)["entries"]
            return entries

    def digest(self) -> bytes:
        """SHA-256 over everything replicated (data, sessions, members, applied index and
        term), read in one transaction: equal on two members that applied the same entries."""
        digest = hashlib.sha256()
        with self._reading() as env, env.begin() as txn:
            for name, db in zip(_DB_NAMES, self._dbs(), strict=True):
                digest.update(b"\x00db:" + name)
                for key, value in txn.cursor(db=db).iternext():
                    digest.update(len(key).to_bytes(4, "little") + key)
                    digest.update(len(value).to_bytes(4, "little") + value)
        return digest.digest()

    def _dbs(self) -> tuple[lmdb._Database, ...]:
        return (
            self._data,
            self._meta,
            self._sessions,
            self._session_age,
            self._history,
            self._leases,
            self._lease_keys,
        )

    def _mvcc_dbs(self) -> tuple[lmdb._Database, lmdb._Database]:
        return self._data, self._history

    # --- snapshots --------------------------------------------------------------------------

    def snapshot(self, path: str | os.PathLike[str]) -> SnapshotMeta:
        """Write a consistent, compacted copy of the whole state as ONE file at `path`.

        Returns the applied index, term and configuration of exactly that copy: they are read
        in the same read transaction the copy is taken from. The writer is not blocked. The
        file is written beside `path` and renamed into place once synced. It may take a while
        for a big state: call it off the event loop.
        """
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        with self._reading() as env, env.begin() as txn:
            index, term = _read_applied(txn, self._meta)
            conf = _conf_state(_read_members(txn, self._meta))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
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
                snap_dbs = [
                    snap_env.open_db(name, create=False, dupsort=name in _DUPSORT_DBS)
                    for name in _DB_NAMES
                ]
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
                index, term = _APPLIED.unpack_from(applied)
                conf = _conf_state(_read_members(snap_txn, snap_dbs[1]))
                # The old pages are freed only at the commit: room for both, and for overhead.
                self._ensure_room(2 * source.stat().st_size)
                with env.begin(write=True) as txn:
                    for name, live_db, snap_db in zip(
                        _DB_NAMES, self._dbs(), snap_dbs, strict=True
                    ):
                        txn.drop(live_db, delete=False)
                        # The source is sorted in the same key order: MDB_APPEND is a fast path
                        # (not for duplicates, which it refuses).
                        cursor = txn.cursor(db=live_db)
                        dupsort = name in _DUPSORT_DBS
                        consumed, added = cursor.putmulti(
                            snap_txn.cursor(db=snap_db).iternext(),
                            dupdata=dupsort,
                            append=not dupsort,
                        )
                        if consumed != added:
                            raise CorruptionError(
                                "snapshot keys out of order", path=str(source), offset=0
                            )
                    # No eviction here, even if the snapshot holds more than our
                    # sessions_max: members must agree on it, and a full table only refuses
                    # registrations until sessions expire.
                    self._load_logical_bytes(txn)
        finally:
            snap_env.close()
        env.sync(True)
        self._write_checkpoint_file(self._durable_point())
        return SnapshotMeta(index, term, conf)


def check_state_covers_log(applied_index: int, log_first_index: int, state_dir: Path) -> None:
    """Raise `CorruptionError` if the state is older than the log's start.

    The log is compacted only through durable checkpoints, so LMDB at `applied_index` must
    reach at least the entry before the log's first one; otherwise entries in between exist
    nowhere and replaying the log would hit a gap.
    """
    if applied_index < log_first_index - 1:
        raise CorruptionError(
            f"state at applied index {applied_index} is older than the log, which starts at "
            f"{log_first_index}: the state was lost (power cut?); remove this member, move its "
            "data directory aside and add it again: it receives a snapshot from the leader",
            path=str(state_dir),
        )


def create_directory_durably(directory: Path) -> None:
    """Create `directory` and its missing ancestors so that a power cut keeps them: each
    created directory's parent is fsynced after it. New directories are private (0700)."""
    missing: list[Path] = []
    parent = directory
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for path in reversed(missing):
        path.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
        fsync_dir(path.parent)


def _read_applied(txn: lmdb.Transaction[bytes], meta_db: lmdb._Database) -> tuple[int, int]:
    raw = txn.get(_KEY_APPLIED, db=meta_db)
    invariant(raw is not None, "meta lacks the applied index")
    assert raw is not None  # for mypy; invariant() above fires under -O too
    index, term = _APPLIED.unpack_from(raw)  # the logical size may follow (see "Quota")
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
