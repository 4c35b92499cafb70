"""The redo log: a thin wrapper over the C library in native/ (built as `kvstore._kvwal`).

`WriteAheadLog` implements the Raft core's `LogView` (read side) plus the writes a node makes:
`append` (entries and hard state, one C call per batch), `sync` (group commit), `truncate_after`,
`compact_through` and `install_snapshot`. The format is in native/FORMAT.md, the C API and its
locking in native/kvwal.h.

Threads: every method may be called from any thread. The C layer does its own locking (one
writer at a time, one fdatasync at a time, reads alongside an fdatasync); this wrapper only makes
sure that `close()` waits until no call is using the handle, so the handle is never freed under
a running call. The handle is released by `close()` or the `with` block, never by `ffi.gc`.

Errors: one table maps the C codes to exceptions (py-lmdb style). A failed write or fsync
poisons the log: that call and every later one raise `WalFailedError`, whose message names
the errno ("ENOSPC 28 (No space left on device)"). Preparing the next segment is not such a
write: the C helper thread retries it through a transient shortage (`set_prepare_retry`).
"""

from __future__ import annotations

import errno as errno_codes
import logging
import os
import threading
from array import array
from collections.abc import Sequence
from itertools import chain
from typing import Any, NamedTuple

import msgpack

from kvstore._kvwal import ffi, lib
from kvstore.closing import ClosingContext
from kvstore.consensus.types import ConfState, Entry, EntryType, HardState, SnapshotMeta
from kvstore.errors import (
    CorruptionError,
    InvalidArgumentError,
    KVStoreError,
    LogCompactedError,
    LogUnavailableError,
    WalFailedError,
)

__all__ = [
    "PREPARE_RETRY_S_DEFAULT",
    "SEGMENT_BYTES_DEFAULT",
    "FaultSpec",
    "RecoveryReport",
    "WalStats",
    "WriteAheadLog",
    "crc32c",
]

logger = logging.getLogger(__name__)

SEGMENT_BYTES_DEFAULT = 64 << 20
"""Size of each preallocated segment file unless the caller says otherwise."""

PREPARE_RETRY_S_DEFAULT: float = lib.KVWAL_PREPARE_RETRY_MS_DEFAULT / 1000
"""How long an append waits out a transient failure to prepare the next segment (10 s)."""

_U64_MAX = (1 << 64) - 1
_VOTE_BYTES_MAX: int = lib.KVWAL_VOTE_BYTES_MAX
_SNAPSHOT_CONF_GUESS_BYTES = 1024

# One table from C codes to exception classes (py-lmdb's `_error_map`).
_ERRORS: dict[int, type[KVStoreError]] = {
    lib.KVWAL_ECORRUPT: CorruptionError,
    lib.KVWAL_EFAILED: WalFailedError,
    lib.KVWAL_ECLOSED: WalFailedError,
    lib.KVWAL_ECOMPACTED: LogCompactedError,
    lib.KVWAL_EUNAVAILABLE: LogUnavailableError,
    lib.KVWAL_EINVAL: InvalidArgumentError,
    lib.KVWAL_ETOOBIG: InvalidArgumentError,
}

_FAULT_KINDS = {
    "write": lib.KVWAL_FAULT_WRITE,
    "sync": lib.KVWAL_FAULT_SYNC,
    "prepare": lib.KVWAL_FAULT_PREPARE,
}

_ENTRY_TYPES: dict[int, EntryType] = {int(t): t for t in EntryType}


# append() frames a batch's data with msgpack, into a Packer that keeps its buffer between
# calls; the C side reads that buffer in place. So a batch allocates and copies no block as big
# as its data (packb() did both, and a fresh block per batch can also make glibc hand memory back
# and fault it in again). One packer per thread, since append() may run in several threads at
# once; a thread drops its packer after a batch bigger than this, so that one huge batch does not
# pin a huge buffer for good.
_PACKER_KEEP_BYTES = 4 << 20
_packers = threading.local()


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC32C of `data`, extending `crc` (0 to start): the checksum the log uses."""
    if type(data) is bytes:  # cffi passes bytes as a pointer itself: no buffer object to make
        return int(lib.kvwal_crc32c(crc, data, len(data)))
    return int(lib.kvwal_crc32c(crc, ffi.from_buffer("uint8_t[]", data), len(data)))


class RecoveryReport(NamedTuple):
    """What opening the log found. `torn` says whether a torn tail was cut, and where.

    `torn_batch` is the range of entries `(first, last)` of an append that overwrote older
    entries and that a crash left unfinished: the cut took it whole, so the entries it would
    have replaced are still in the log (native/FORMAT.md §4); None if there was none.
    """

    segments: int
    records: int
    bytes_scanned: int
    torn: bool
    torn_path: str | None
    torn_offset: int
    torn_bytes: int
    torn_batch: tuple[int, int] | None = None


class WalStats(NamedTuple):
    """Counters since open. Group commit shows as `fdatasyncs` far below `sync_calls`."""

    appended_position: int
    durable_position: int
    append_calls: int
    records_appended: int
    sync_calls: int
    fdatasyncs: int
    segments_created: int
    segments_deleted: int
    segment_count: int
    rotation_waits: int
    prepare_retries: int
    """Segment preparations tried again after a transient EMFILE, ENFILE, ENOSPC, EDQUOT or
    ENOMEM (see `WriteAheadLog`)."""


class FaultSpec(NamedTuple):
    """Tests only: make the (skip + 1)-th next `kind` operation fail with `error` (an errno).

    `kind` is "write", "sync" or "prepare". For writes, `partial_bytes` of that write reach the
    file before it fails. For "prepare", `times` preparations in a row fail (the helper thread
    retries transient errors: see `WriteAheadLog`).
    """

    kind: str
    error: int = errno_codes.EIO
    skip: int = 0
    partial_bytes: int = 0
    times: int = 1


def _encode_conf(conf: ConfState) -> bytes:
    packed: bytes = msgpack.packb([list(conf.voters), list(conf.learners)])
    return packed


def _decode_conf(data: bytes) -> ConfState:
    if not data:
        return ConfState()
    voters, learners = msgpack.unpackb(data)
    return ConfState(tuple(voters), tuple(learners))


class WriteAheadLog(ClosingContext):
    """The redo log of one node, in `directory` (created if missing). Opening recovers it.

    Implements `kvstore.consensus.types.LogView`. Raises `CorruptionError` (with path and offset) if
    the log is damaged anywhere but in a torn tail; a torn tail is cut, logged and described by
    `recovery`.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = SEGMENT_BYTES_DEFAULT,
        zero_fill: bool = True,
        portable_crc: bool = False,
        faults: Sequence[FaultSpec] = (),
        prepare_retry_s: float = PREPARE_RETRY_S_DEFAULT,
    ) -> None:
        """Open the log. `zero_fill=False` prepares segments with fallocate only, and
        `portable_crc=True` forces the table CRC code (both for tests and benchmarks); `faults`
        are armed before the open (tests only). `prepare_retry_s`: see `set_prepare_retry`."""
        if segment_bytes < lib.KVWAL_SEGMENT_BYTES_MIN:
            raise InvalidArgumentError(
                f"segment_bytes must be >= {lib.KVWAL_SEGMENT_BYTES_MIN}, got {segment_bytes}"
            )
        self._directory = os.fspath(directory)
        # `_lock` guards the in-flight count; `_cond` (on the same lock) lets close() wait.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._inflight = 0
        self._closing = False
        self._handle: Any = None
        out = ffi.new("kvwal_t **")
        rc = lib.kvwal_log_create(out)
        if rc:
            raise OSError(rc, os.strerror(rc))
        handle = out[0]
        try:
            # The C side creates (and fsyncs the parent of) the log directory itself, not its
            # ancestors.
            os.makedirs(os.path.dirname(os.path.abspath(self._directory)), exist_ok=True)
            for fault in faults:
                self._arm(handle, fault)
            lib.kvwal_log_set_prepare_retry(handle, _retry_ms(prepare_retry_s))
            flags = (0 if zero_fill else lib.KVWAL_FLAG_NO_ZERO_FILL) | (
                lib.KVWAL_FLAG_PORTABLE_CRC if portable_crc else 0
            )
            rc = lib.kvwal_log_open(handle, os.fsencode(self._directory), segment_bytes, flags)
            if rc:
                raise _error(handle, "open", rc)
        except BaseException:
            lib.kvwal_log_close(handle)
            raise
        self._handle = handle
        self.recovery = self._read_recovery(handle)
        """What the open found (`RecoveryReport`)."""
        if self.recovery.torn:
            batch = self.recovery.torn_batch
            logger.warning(
                "redo log: cut a torn tail of %d bytes at offset %d of %s%s",
                self.recovery.torn_bytes,
                self.recovery.torn_offset,
                self.recovery.torn_path,
                ""
                if batch is None
                else f" (an unfinished overwrite of entries {batch[0]}..{batch[1]}: the older "
                "entries stay)",
            )

    # ---- handle life cycle ---------------------------------------------------------------------

    @property
    def directory(self) -> str:
        """The log's directory."""
        return self._directory

    def _enter(self) -> Any:
        with self._lock:
            if self._handle is None or self._closing:
                raise WalFailedError(f"the redo log in {self._directory} is closed")
            self._inflight += 1
            return self._handle

    def _exit(self) -> None:
        with self._lock:
            self._inflight -= 1
            if self._closing and not self._inflight:
                self._cond.notify_all()

    def close(self) -> None:
        """Close the files (idempotent). Waits for calls in other threads to return first.

        Does not sync: call `sync()` first if the tail must be durable.
        """
        with self._cond:
            if self._handle is None or self._closing:
                return
            self._closing = True
            while self._inflight:
                self._cond.wait()
            handle, self._handle = self._handle, None
        rc = lib.kvwal_log_close(handle)
        if rc:
            logger.warning("redo log: closing %s: %s", self._directory, os.strerror(rc))

    # ---- writing -------------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry], hard_state: HardState | None = None) -> int:
        """Append `entries` (consecutive indexes) and then `hard_state`, in one write.

        If the first entry's index is at or below `last_index()`, the conflicting suffix is cut
        first, in the same write. Returns a position: the entries are durable once
        `sync(position)` (or `sync()`) returns. Raises `LogCompactedError` if the first index is at
        or below the snapshot, `InvalidArgumentError` for a gap or non-consecutive indexes.
        """
        hs = ffi.NULL
        if hard_state is not None:
            hs = ffi.new("kvwal_hard_state_t *")
            hs.term = hard_state.term
            hs.commit = hard_state.commit
            if hard_state.vote is not None:
                vote = hard_state.vote.encode()
                if not 0 < len(vote) <= _VOTE_BYTES_MAX:
                    raise InvalidArgumentError(
                        f"vote must be 1 to {_VOTE_BYTES_MAX} bytes, got {len(vote)}"
                    )
                ffi.memmove(hs.vote, vote, len(vote))
                hs.vote_len = len(vote)
        count = len(entries)
        if count == 1:
            # The common case of one proposal per turn: fewer temporary objects.
            try:
                term, index, etype, data = entries[0]
            except (TypeError, ValueError):
                raise InvalidArgumentError("append takes a sequence of Entry") from None
            nums = ffi.new("uint64_t[3]", (index, term))  # index, term, out position
            handle = self._enter()
            try:
                rc = lib.kvwal_log_append(
                    handle,
                    1,
                    nums,
                    nums + 1,
                    ffi.new("uint8_t *", etype),
                    ffi.new("uint32_t *", len(data)),
                    ffi.from_buffer("uint8_t[]", data),
                    len(data),
                    hs,
                    nums + 2,
                )
                if rc:
                    raise _error(handle, "append", rc)
            finally:
                self._exit()
            return int(nums[2])
        out = ffi.new("uint64_t *")
        if not count:
            handle = self._enter()
            try:
                rc = lib.kvwal_log_append(
                    handle, 0, ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL, ffi.NULL, 0, hs, out
                )
                if rc:
                    raise _error(handle, "append", rc)
            finally:
                self._exit()
            return int(out[0])
        # Every step below is one call that loops in C, so the entries cost no Python bytecode
        # each: chain() flattens them (term, index, type, data, term, ...), slices pick the
        # columns, array()/bytes() pack the numbers and msgpack frames the data (each item's
        # length, then its bytes: one pass, where join() + map(len) took two), all read in place
        # by kvwal_log_append_msgpack. (zip(*entries) would transpose faster, but it holds one
        # live iterator per entry, which sets off the cyclic GC on big batches.)
        flat: list[Any] = list(chain.from_iterable(entries))
        if len(flat) != 4 * count:
            raise InvalidArgumentError("append takes a sequence of Entry")
        terms = flat[0::4]
        types = flat[2::4]
        term = terms[0]
        try:
            # A batch usually shares one term and holds only NORMAL entries. Counting them (an
            # identity test per item) and repeating one value is cheaper than converting each.
            if terms.count(term) == count:
                term_column = array("Q", (term,)) * count
            else:
                term_column = array("Q", terms)
            normal = types.count(EntryType.NORMAL) == count
            type_column = bytes(count) if normal else bytes(types)
            indexes = ffi.from_buffer("uint64_t[]", array("Q", flat[1::4]))
            packer = getattr(_packers, "packer", None)
            if packer is None:
                packer = _packers.packer = msgpack.Packer(autoreset=False)
            packer.pack(flat[3::4])  # resets itself if it raises
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidArgumentError(f"append takes a sequence of Entry: {exc}") from None
        view = packer.getbuffer()
        size = len(view)
        try:
            handle = self._enter()
            try:
                with ffi.from_buffer("uint8_t[]", view) as packed:
                    rc = lib.kvwal_log_append_msgpack(
                        handle,
                        count,
                        indexes,
                        ffi.from_buffer("uint64_t[]", term_column),
                        type_column,
                        packed,
                        size,
                        hs,
                        out,
                    )
                if rc:
                    raise _error(handle, "append", rc)
            finally:
                self._exit()
        finally:
            view.release()
            if size > _PACKER_KEEP_BYTES:
                _packers.packer = None
            else:
                packer.reset()
        return int(out[0])

    def sync(self, position: int | None = None) -> None:
        """Return once everything appended before this call (or up to `position`) is durable.

        Group commit: one fdatasync covers every record appended before it started, so
        concurrent callers share them. Safe from any thread while others append.
        """
        handle = self._enter()
        try:
            if position is None:
                rc = lib.kvwal_log_sync(handle)
            else:
                rc = lib.kvwal_log_sync_to(handle, position)
            if rc:
                raise _error(handle, "sync", rc)
        finally:
            self._exit()

    def truncate_after(self, index: int) -> int:
        """Cut every entry after `index` (a TRUNCATE record; nothing is rewritten). Returns the
        position to `sync()` for durability. A no-op if `index >= last_index()`."""
        out = ffi.new("uint64_t *")
        handle = self._enter()
        try:
            rc = lib.kvwal_log_truncate_after(handle, index, out)
            if rc:
                raise _error(handle, "truncate_after", rc)
        finally:
            self._exit()
        return int(out[0])

    def compact_through(self, meta: SnapshotMeta) -> None:
        """Drop entries <= `meta.index`, now covered by a snapshot (e.g. an LMDB checkpoint).

        Durable on return; whole segments holding only dropped entries are deleted. `meta.term`
        must be the term of entry `meta.index`. A no-op if `meta.index` is the current snapshot.
        """
        conf = _encode_conf(meta.conf_state)
        handle = self._enter()
        try:
            rc = lib.kvwal_log_compact_through(
                handle, meta.index, meta.term, ffi.from_buffer("uint8_t[]", conf), len(conf)
            )
            if rc:
                raise _error(handle, "compact_through", rc)
        finally:
            self._exit()

    def install_snapshot(self, meta: SnapshotMeta) -> None:
        """Discard the whole log: the next entry is `meta.index + 1`. The hard state is kept.
        Durable on return."""
        conf = _encode_conf(meta.conf_state)
        handle = self._enter()
        try:
            rc = lib.kvwal_log_install_snapshot(
                handle, meta.index, meta.term, ffi.from_buffer("uint8_t[]", conf), len(conf)
            )
            if rc:
                raise _error(handle, "install_snapshot", rc)
        finally:
            self._exit()

    # ---- reading (LogView) ---------------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The persisted hard state and the configuration as of the latest snapshot."""
        return self.hard_state(), self.snapshot_meta().conf_state

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries in `[lo, hi)`, stopping before the entry that would take their data past
        `max_bytes` (but always at least one). Raises `LogCompactedError` if
        `lo < first_index()`, `LogUnavailableError` if `hi > last_index() + 1`."""
        batch = ffi.new("kvwal_batch_t *")
        budget = _U64_MAX if max_bytes is None else max(0, max_bytes)
        handle = self._enter()
        try:
            rc = lib.kvwal_log_entries(handle, lo, hi, budget, batch)
            if rc:
                raise _error(handle, "entries", rc)
        finally:
            self._exit()
        try:
            count = batch.count
            if not count:
                return []
            terms = ffi.unpack(batch.terms, count)
            offsets = ffi.unpack(batch.offsets, count + 1)
            types = ffi.unpack(batch.types, count)
            data = ffi.buffer(batch.data, batch.data_len)[:]
        finally:
            lib.kvwal_batch_free(batch)
        etypes = _ENTRY_TYPES
        try:
            return [
                Entry(terms[k], lo + k, etypes[types[k]], data[offsets[k] : offsets[k + 1]])
                for k in range(count)
            ]
        except KeyError as exc:
            raise CorruptionError(f"unknown entry type {exc.args[0]}") from None

    def term(self, index: int) -> int:
        """The term of entry `index`, for `first_index() - 1 <= index <= last_index()`."""
        out = ffi.new("uint64_t *")
        handle = self._enter()
        try:
            rc = lib.kvwal_log_term(handle, index, out)
            if rc:
                raise _error(handle, "term", rc)
        finally:
            self._exit()
        return int(out[0])

    def first_index(self) -> int:
        """The first index still in the log (snapshot index + 1)."""
        out = ffi.new("uint64_t *")
        handle = self._enter()
        try:
            rc = lib.kvwal_log_first_index(handle, out)
            if rc:
                raise _error(handle, "first_index", rc)
        finally:
            self._exit()
        return int(out[0])

    def last_index(self) -> int:
        """The last index in the log (the snapshot's index when the log is empty)."""
        out = ffi.new("uint64_t *")
        handle = self._enter()
        try:
            rc = lib.kvwal_log_last_index(handle, out)
            if rc:
                raise _error(handle, "last_index", rc)
        finally:
            self._exit()
        return int(out[0])

    def hard_state(self) -> HardState:
        """The latest persisted hard state (all zero / no vote if none was written)."""
        out = ffi.new("kvwal_hard_state_t *")
        handle = self._enter()
        try:
            rc = lib.kvwal_log_hard_state(handle, out)
            if rc:
                raise _error(handle, "hard_state", rc)
        finally:
            self._exit()
        vote = ffi.buffer(out.vote, out.vote_len)[:].decode() if out.vote_len else None
        return HardState(int(out.term), vote, int(out.commit))

    def snapshot_meta(self) -> SnapshotMeta:
        """The latest snapshot (or compaction point): its index, term and configuration."""
        index = ffi.new("uint64_t *")
        term = ffi.new("uint64_t *")
        size = ffi.new("size_t *")
        cap = _SNAPSHOT_CONF_GUESS_BYTES
        handle = self._enter()
        try:
            while True:
                conf = ffi.new("uint8_t[]", cap)
                rc = lib.kvwal_log_snapshot(handle, index, term, conf, cap, size)
                if rc != lib.KVWAL_ERANGE:
                    break
                cap = int(size[0])  # it grew between the calls: ask again with room for it
            if rc:
                raise _error(handle, "snapshot_meta", rc)
        finally:
            self._exit()
        data = ffi.buffer(conf, size[0])[:]
        return SnapshotMeta(int(index[0]), int(term[0]), _decode_conf(data))

    # ---- introspection and tests ---------------------------------------------------------------

    def stats(self) -> WalStats:
        """Counters since open (also on a poisoned log)."""
        out = ffi.new("kvwal_stats_t *")
        handle = self._enter()
        try:
            lib.kvwal_log_stats(handle, out)
        finally:
            self._exit()
        return WalStats(*(int(getattr(out, name)) for name in WalStats._fields))

    def set_prepare_retry(self, retry_s: float) -> None:
        """How long an append that needs the next segment waits while its preparation keeps
        failing for want of file descriptors, disk space or memory (EMFILE, ENFILE, ENOSPC,
        EDQUOT, ENOMEM), retried in the background, before the log fails with that error (0:
        at once). Until an append needs the segment, such failures are retried without limit.
        """
        retry_ms = _retry_ms(retry_s)
        handle = self._enter()
        try:
            lib.kvwal_log_set_prepare_retry(handle, retry_ms)
        finally:
            self._exit()

    def inject_fault(self, fault: FaultSpec) -> None:
        """Tests only: arm a fault (see `FaultSpec`) on the open log."""
        handle = self._enter()
        try:
            self._arm(handle, fault)
        finally:
            self._exit()

    @staticmethod
    def _arm(handle: Any, fault: FaultSpec) -> None:
        kind = _FAULT_KINDS[fault.kind]
        if fault.times < 1 or (fault.times != 1 and fault.kind != "prepare"):
            raise InvalidArgumentError(f"times must be >= 1, and 1 unless kind is prepare: {fault}")
        # The C call counts repeated preparation failures in its partial-bytes argument.
        partial = fault.times if fault.kind == "prepare" else fault.partial_bytes
        rc = lib.kvwal_log_inject_fault(
            handle, kind, fault.skip, fault.error, min(partial, _U64_MAX)
        )
        if rc:
            raise _error(handle, "inject_fault", rc)

    @staticmethod
    def _read_recovery(handle: Any) -> RecoveryReport:
        out = ffi.new("kvwal_recovery_t *")
        lib.kvwal_log_recovery(handle, out)
        torn = bool(out.torn)
        return RecoveryReport(
            segments=int(out.segments),
            records=int(out.records),
            bytes_scanned=int(out.bytes_scanned),
            torn=torn,
            torn_path=os.fsdecode(ffi.string(out.torn_path)) if torn else None,
            torn_offset=int(out.torn_offset),
            torn_bytes=int(out.torn_bytes),
            torn_batch=(int(out.torn_batch_first), int(out.torn_batch_last))
            if out.torn_batch_first
            else None,
        )


def _retry_ms(retry_s: float) -> int:
    if isinstance(retry_s, bool) or not isinstance(retry_s, int | float):
        raise InvalidArgumentError(f"prepare_retry_s must be a number, got {retry_s!r}")
    if not 0 <= retry_s <= 3600:  # also refuses nan
        raise InvalidArgumentError(f"prepare_retry_s must be in [0, 3600], got {retry_s!r}")
    return round(retry_s * 1000)


def _error(handle: Any, what: str, rc: int) -> Exception:
    """The exception for C code `rc`, with the detail of the call that just failed.

    The detail is the calling thread's (kvwal_error_last(), like errno), so it describes this
    call and never another thread's failure; it must be read before this thread makes another
    kvwal call. A call that failed because the log is poisoned carries the cause that poisoned
    it. `handle` is unused: the detail belongs to the call, not to the handle.
    """
    del handle
    detail = ffi.new("kvwal_error_t *")
    lib.kvwal_error_last(detail)
    reason = ffi.string(lib.kvwal_strerror(rc)).decode()
    path: str | None = None
    offset: int | None = None
    if detail.code == rc:
        reason = ffi.string(detail.message).decode(errors="replace") or reason
        path = os.fsdecode(ffi.string(detail.path)) or None
        if detail.has_offset:
            offset = int(detail.offset)
    message = f"redo log {what}: {reason}"
    if rc > 0:
        return OSError(rc, message, path)
    cls = _ERRORS.get(rc, KVStoreError)
    if cls is CorruptionError:
        return CorruptionError(message, path=path, offset=offset)
    if cls is WalFailedError and detail.sys_errno:
        exc = WalFailedError(f"{message} ({path})" if path else message)
        exc.__cause__ = OSError(detail.sys_errno, os.strerror(detail.sys_errno), path)
        return exc
    return cls(message)
