/*
 * kvwal: the kvstore redo log (write-ahead log for a Raft node).
 *
 * Plain C11 + POSIX, no Python. The on-disk format is described in FORMAT.md beside this file.
 *
 * Conventions (LMDB's):
 *  - The handle is opaque (kvwal_t). Create it with kvwal_log_create(), open it with
 *    kvwal_log_open(), and always release it with kvwal_log_close(), even after a failed open.
 *  - Every function named kvwal_<object>_<verb> returns an int: 0 on success, a positive errno
 *    value for a failed system call that did not touch the log's files (open, mkdir, flock...),
 *    or a negative KVWAL_E* code from the reserved range [-30999, -30900].
 *    kvwal_strerror() explains any of them; kvwal_error_last() gives the detail (path, offset,
 *    errno) of the calling thread's latest failed call, like errno: the detail belongs to the
 *    call that failed, never to the handle, so a thread is never told another thread's path
 *    and offset. Read it right after the failing call, before the next kvwal call.
 *  - Out-parameters come last. Buffers are (const uint8_t *, size_t). Integers are fixed width.
 *  - Log indices start at 1; 0 means "none". Ranges are half-open [lo, hi).
 *
 * Durability: an append returns a position (a byte count since open, monotonic). A record is
 * durable once kvwal_log_sync_to(position) (or kvwal_log_sync()) has returned 0.
 *
 * Failure: any failed write or fsync poisons the handle (as LevelDB does after a failed sync,
 * the state of the file is unknown). The failing call and every later call except
 * kvwal_log_close() return KVWAL_EFAILED, and the detail of each of them (kvwal_error_last()) is
 * the cause that poisoned the handle, which kvwal_log_error() also gives.
 *
 * Threads and locking. cffi releases the GIL around every call, so callers may enter from many
 * threads at once. One mutex guards the handle's state: the append position, the in-memory
 * index, the hard state, the snapshot and the segment list.
 *  - Mutations (append, truncate_after, compact_through, install_snapshot) run one at a time: a
 *    "writer busy" flag, taken under the mutex, makes a second writer wait on a condition
 *    variable. A writer holds the mutex while it encodes and pwrite()s (page-cache speed) and
 *    releases it only while waiting for a prepared segment or for an fdatasync.
 *  - Group commit. kvwal_log_sync_to() takes the current append position under the mutex as
 *    its goal, releases the mutex, calls fdatasync(), then retakes the mutex and publishes the
 *    durable position. Only one fdatasync runs at a time; other syncing threads wait on a
 *    condition variable of their own (writers waiting for the flag have another, so neither kind
 *    wakes the other) and return as soon as a finished fdatasync covered their position, else
 *    the first of them to wake starts the next one. Appends proceed while fdatasync runs, which is
 *    what lets the next batch grow by itself.
 *  - Reads (entries, term, first/last index, hard state, snapshot, stats) take the mutex briefly
 *    (entries() pread()s under it), so they run alongside an in-flight fdatasync.
 *  - A helper thread per handle prepares the next segment (fallocate + zero-fill) in the
 *    background once the current one is half full; it touches only its own temporary file.
 *    A preparation that fails with EMFILE, ENFILE, ENOSPC, EDQUOT or ENOMEM is tried again
 *    (pauses of 1 ms doubling to 100 ms), for as long as no writer needs the segment and then
 *    for up to kvwal_log_set_prepare_retry() milliseconds of that writer's wait; only then
 *    does it poison the log. Other failures poison it at once.
 *  - kvwal_log_close() must not race with other calls on the same handle: the caller makes sure
 *    every other call has returned first (the Python wrapper does).
 */
#ifndef KVWAL_H
#define KVWAL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Error codes: reserved range -30999 .. -30900 ------------------------------------------ */

/** Stored data failed verification (CRC, framing, or a missing segment). Open fails. */
#define KVWAL_ECORRUPT (-30900)
/** A torn tail: only reported through kvwal_log_recovery(); open cuts it and succeeds. */
#define KVWAL_ETORN (-30901)
/** A write or fsync failed earlier: the handle is poisoned and refuses every call. */
#define KVWAL_EFAILED (-30902)
/** The index lies below the log's first index: it was compacted into a snapshot. */
#define KVWAL_ECOMPACTED (-30903)
/** The index lies above the log's last index: it does not exist (yet). */
#define KVWAL_EUNAVAILABLE (-30904)
/** A bad argument (non-contiguous entries, a gap after the last index, lo > hi...). */
#define KVWAL_EINVAL (-30905)
/** A record payload, vote or configuration exceeds its limit. */
#define KVWAL_ETOOBIG (-30906)
/** The handle is not open (never opened, or open failed). */
#define KVWAL_ECLOSED (-30907)
/** A caller's buffer is too small; the size needed was stored in the size out-parameter. */
#define KVWAL_ERANGE (-30908)

/* ---- Limits -------------------------------------------------------------------------------- */

/** Largest payload of one record (an entry's data is this minus 16 bytes). */
#define KVWAL_RECORD_BYTES_MAX (1u << 30)
/** Largest vote (a node id) in a hard state. */
#define KVWAL_VOTE_BYTES_MAX 1024
/** Smallest segment size accepted by kvwal_log_open(). */
#define KVWAL_SEGMENT_BYTES_MIN 4096
/** Longest path kvwal_error_last() and kvwal_log_recovery() report (longer ones are cut). */
#define KVWAL_PATH_BYTES_MAX 4096
/** Default of kvwal_log_set_prepare_retry(): how long a writer waits out transient failures. */
#define KVWAL_PREPARE_RETRY_MS_DEFAULT 10000

/* ---- Open flags ---------------------------------------------------------------------------- */

/** Prepare segments with posix_fallocate only, without writing zeros (see FORMAT.md §7). */
#define KVWAL_FLAG_NO_ZERO_FILL 0x1u
/** Compute every CRC with the portable table code even if the CPU has SSE4.2 (tests). */
#define KVWAL_FLAG_PORTABLE_CRC 0x2u

/* ---- Fault injection kinds (tests) --------------------------------------------------------- */

/** pwrite() of log data (records, preambles, zeroing a torn tail). */
#define KVWAL_FAULT_WRITE 1
/** fdatasync()/fsync() of a segment or of the directory. */
#define KVWAL_FAULT_SYNC 2
/** The helper thread's preparation of the next segment. */
#define KVWAL_FAULT_PREPARE 3

/* ---- Types --------------------------------------------------------------------------------- */

/** The opaque log handle. */
typedef struct kvwal kvwal_t;

/** A Raft hard state. `vote` holds `vote_len` bytes (0 = no vote). Used for input and output. */
typedef struct kvwal_hard_state {
    uint64_t term;
    uint64_t commit;
    size_t vote_len;
    uint8_t vote[KVWAL_VOTE_BYTES_MAX];
} kvwal_hard_state_t;

/**
 * Entries read by kvwal_log_entries(): entry k (0 <= k < count) has index lo + k, term
 * terms[k], type types[k] and data data[offsets[k] .. offsets[k + 1]). All arrays live in one
 * block owned by the batch; release it with kvwal_batch_free().
 */
typedef struct kvwal_batch {
    size_t count;
    uint64_t *terms;
    uint64_t *offsets; /* count + 1 elements */
    uint8_t *types;
    uint8_t *data;
    size_t data_len;
    void *block; /* private: the single allocation */
} kvwal_batch_t;

/** Detail of a failed call (kvwal_error_last()) or of what poisoned a handle (kvwal_log_error()). */
typedef struct kvwal_error {
    int code;          /* the code the failing call returned (0 if none yet) */
    int sys_errno;     /* the errno behind it, 0 if none */
    int has_offset;    /* whether `offset` means something */
    uint64_t offset;   /* byte offset in `path` */
    char path[KVWAL_PATH_BYTES_MAX]; /* the file concerned, "" if none */
    char message[256];
} kvwal_error_t;

/** What the last open found and did. */
typedef struct kvwal_recovery {
    uint64_t segments;      /* segment files read */
    uint64_t records;       /* valid records read */
    uint64_t bytes_scanned; /* bytes read from the segments */
    int torn;               /* 1 if a torn tail was cut */
    uint64_t torn_offset;   /* where the cut happened */
    uint64_t torn_bytes;    /* how many bytes were discarded (up to the last non-zero byte) */
    char torn_path[KVWAL_PATH_BYTES_MAX];
    /* The entries an unfinished overwrite batch would have written, [first, last] (0, 0: none):
     * the cut took the batch with it, so the entries it would have replaced are still there. */
    uint64_t torn_batch_first;
    uint64_t torn_batch_last;
} kvwal_recovery_t;

/** Counters since open. */
typedef struct kvwal_stats {
    uint64_t appended_position; /* bytes written since open */
    uint64_t durable_position;  /* bytes known durable since open */
    uint64_t append_calls;
    uint64_t records_appended;
    uint64_t sync_calls;        /* kvwal_log_sync/sync_to calls */
    uint64_t fdatasyncs;        /* fdatasync() calls on segments (group commit: << sync_calls) */
    uint64_t segments_created;
    uint64_t segments_deleted;
    uint64_t segment_count;     /* segment files in the log now */
    uint64_t rotation_waits;    /* rotations that had to wait for the helper thread */
    uint64_t prepare_retries;   /* preparations tried again after a transient failure */
} kvwal_stats_t;

/* ---- CRC32C -------------------------------------------------------------------------------- */

/**
 * Extend `crc` (0 to start) with `len` bytes of `buf`: CRC32C (Castagnoli), with the usual
 * pre- and post-inversion, so kvwal_crc32c(kvwal_crc32c(0, a), b) == kvwal_crc32c(0, a || b).
 * Uses the SSE4.2 crc32 instruction when the CPU has it (checked at run time), else tables.
 */
uint32_t kvwal_crc32c(uint32_t crc, const uint8_t *buf, size_t len);
/** The same, always with the portable slicing-by-8 tables. */
uint32_t kvwal_crc32c_portable(uint32_t crc, const uint8_t *buf, size_t len);
/** The same, always with SSE4.2; returns 0 and does nothing unless kvwal_crc32c_hw_available(). */
uint32_t kvwal_crc32c_hw(uint32_t crc, const uint8_t *buf, size_t len);
/** 1 if this CPU (and build) can run kvwal_crc32c_hw(), else 0. */
int kvwal_crc32c_hw_available(void);

/* ---- Errors -------------------------------------------------------------------------------- */

/** A static, human-readable description of any code these functions return. */
const char *kvwal_strerror(int code);

/**
 * Detail of the calling thread's latest failed kvwal call (thread-local, like errno; `code` is
 * 0 if that call gave none). Each public call that can fail clears it when it starts, so it
 * never describes an older call, nor another thread's.
 */
int kvwal_error_last(kvwal_error_t *out);

/* ---- Handle life cycle --------------------------------------------------------------------- */

/**
 * Allocate a handle (not yet open).
 * @param[out] out  the new handle
 * @return 0 or ENOMEM
 */
int kvwal_log_create(kvwal_t **out);

/**
 * Open (creating if needed) the log in directory `dir` and recover it: scan every segment,
 * verify every record, rebuild the index, cut a torn tail (see kvwal_log_recovery()).
 * @param[in] wal            a handle from kvwal_log_create(), not opened before
 * @param[in] dir            the directory (created if missing; its parent must exist)
 * @param[in] segment_bytes  size of new segments, >= KVWAL_SEGMENT_BYTES_MIN
 * @param[in] flags          KVWAL_FLAG_* bits
 * @return 0, KVWAL_ECORRUPT (see kvwal_error_last(): also for a segment of a format version this
 *         build does not read, or with unknown header flags), KVWAL_EINVAL, or an errno
 */
int kvwal_log_open(kvwal_t *wal, const char *dir, uint64_t segment_bytes, unsigned flags);

/**
 * Close the handle's files, stop its helper thread and free it. Does NOT sync: call
 * kvwal_log_sync() first if the tail must be durable. No other call may be in progress.
 * @return 0, or the first errno met while closing (the handle is freed anyway)
 */
int kvwal_log_close(kvwal_t *wal);

/* ---- Writing ------------------------------------------------------------------------------- */

/**
 * Append `count` entries and, if `hard_state` is not NULL, a hard state after them, in one
 * write. Entry k has index indexes[k], term terms[k], type types[k] and data
 * data[sum(lengths[0..k)) .. + lengths[k]); the lengths must add up to `data_len`.
 * Indexes must be consecutive, and the first must lie in [first_index, last_index + 1]. If it is
 * <= last_index, the conflicting suffix is cut first (a TRUNCATE record in the same write), and
 * the cut and the new entries are all-or-nothing across a crash: recovery applies the cut only
 * if every entry of this call is there, else it keeps the old entries (FORMAT.md §4).
 * Not durable until a sync covers the returned position.
 * @param[out] out_position  the append position after this batch (may be NULL)
 * @return 0, KVWAL_EINVAL, KVWAL_ECOMPACTED (first index below the log), KVWAL_ETOOBIG,
 *         KVWAL_EFAILED
 */
int kvwal_log_append(kvwal_t *wal, size_t count, const uint64_t *indexes, const uint64_t *terms,
                     const uint8_t *types, const uint32_t *lengths, const uint8_t *data,
                     size_t data_len, const kvwal_hard_state_t *hard_state,
                     uint64_t *out_position);

/**
 * kvwal_log_append() with the entries' data given as one msgpack array (https://msgpack.org,
 * the "array 16", "array 32" or "fixarray" format) of exactly `count` items, each a "bin 8",
 * "bin 16" or "bin 32" object, which is how msgpack writes byte strings: entry k's data is item
 * k. Nothing may follow the array. It saves a caller that holds its data as separate byte
 * strings (the Python wrapper) from measuring and joining them itself; the records written are
 * the same. Malformed framing fails with KVWAL_EINVAL before anything is written.
 * @return as kvwal_log_append()
 */
int kvwal_log_append_msgpack(kvwal_t *wal, size_t count, const uint64_t *indexes,
                             const uint64_t *terms, const uint8_t *types, const uint8_t *packed,
                             size_t packed_len, const kvwal_hard_state_t *hard_state,
                             uint64_t *out_position);

/**
 * Cut every entry with index > `index` (appends a TRUNCATE record). A no-op if index >= last.
 * @param[out] out_position  the append position afterwards (sync it for durability; may be NULL)
 * @return 0, KVWAL_ECOMPACTED (index < snapshot index), KVWAL_EFAILED
 */
int kvwal_log_truncate_after(kvwal_t *wal, uint64_t index, uint64_t *out_position);

/**
 * Make everything appended before this call durable (group commit, see the top of this file).
 * @return 0 or KVWAL_EFAILED
 */
int kvwal_log_sync(kvwal_t *wal);

/**
 * Return once every byte up to `position` (from an append) is durable.
 * @return 0, KVWAL_EINVAL (position beyond the append position) or KVWAL_EFAILED
 */
int kvwal_log_sync_to(kvwal_t *wal, uint64_t position);

/**
 * Compaction: record that entries <= `index` are covered by a snapshot of term `term` with
 * configuration `conf`, make that durable, then delete every whole segment that no longer holds
 * a live entry above `index` (never the newest one). Nothing is rewritten.
 * A no-op if `index` equals the current snapshot index.
 * @return 0, KVWAL_ECOMPACTED (index below the snapshot), KVWAL_EUNAVAILABLE (index > last),
 *         KVWAL_EINVAL (term differs from the entry's), KVWAL_ETOOBIG, KVWAL_EFAILED
 */
int kvwal_log_compact_through(kvwal_t *wal, uint64_t index, uint64_t term, const uint8_t *conf,
                              size_t conf_len);

/**
 * Install a snapshot: discard the whole log; the next entry will be `index` + 1 and
 * term(index) = `term`. The hard state is kept. Durable when it returns.
 * @return 0, KVWAL_ETOOBIG, KVWAL_EFAILED
 */
int kvwal_log_install_snapshot(kvwal_t *wal, uint64_t index, uint64_t term, const uint8_t *conf,
                               size_t conf_len);

/* ---- Reading ------------------------------------------------------------------------------- */

/**
 * Read entries [lo, hi), stopping before the entry that would take their data past `max_bytes`
 * (always at least one entry if lo < hi). Each record's CRC is verified again.
 * @param[out] out  filled on success; release with kvwal_batch_free()
 * @return 0, KVWAL_ECOMPACTED (lo < first index), KVWAL_EUNAVAILABLE (hi > last + 1),
 *         KVWAL_EINVAL (lo > hi), KVWAL_ECORRUPT, ENOMEM, EIO..., KVWAL_EFAILED
 */
int kvwal_log_entries(kvwal_t *wal, uint64_t lo, uint64_t hi, uint64_t max_bytes,
                      kvwal_batch_t *out);

/** Release what kvwal_log_entries() allocated (safe on a zeroed batch). */
void kvwal_batch_free(kvwal_batch_t *batch);

/**
 * The term of entry `index`, for first_index - 1 <= index <= last_index.
 * @return 0, KVWAL_ECOMPACTED, KVWAL_EUNAVAILABLE, KVWAL_EFAILED
 */
int kvwal_log_term(kvwal_t *wal, uint64_t index, uint64_t *out_term);

/** The first index in the log (snapshot index + 1). */
int kvwal_log_first_index(kvwal_t *wal, uint64_t *out_index);

/** The last index in the log (the snapshot index when the log is empty). */
int kvwal_log_last_index(kvwal_t *wal, uint64_t *out_index);

/** The latest hard state (all zero if none was ever written). */
int kvwal_log_hard_state(kvwal_t *wal, kvwal_hard_state_t *out);

/**
 * The latest snapshot marker. Copies the configuration into `conf` if it fits in `conf_cap`.
 * @param[out] out_conf_len  the configuration's length, also when it does not fit
 * @return 0, KVWAL_ERANGE (conf_cap too small), KVWAL_EFAILED
 */
int kvwal_log_snapshot(kvwal_t *wal, uint64_t *out_index, uint64_t *out_term, uint8_t *conf,
                       size_t conf_cap, size_t *out_conf_len);

/* ---- Introspection and tests --------------------------------------------------------------- */

/** Counters since open (works on a poisoned handle). */
int kvwal_log_stats(kvwal_t *wal, kvwal_stats_t *out);

/** What the open found (works on a poisoned handle). */
int kvwal_log_recovery(kvwal_t *wal, kvwal_recovery_t *out);

/** The failure that poisoned the handle (`code` 0 if it is not poisoned; works on any created
 * handle). The same for every thread, and it never changes once set. */
int kvwal_log_error(kvwal_t *wal, kvwal_error_t *out);

/**
 * How long a writer that needs the next segment lets the helper thread retry a preparation
 * that keeps failing for a transient reason (see the top of this file) before the log is
 * poisoned with that error. 0: never retry. Default KVWAL_PREPARE_RETRY_MS_DEFAULT.
 * @return 0
 */
int kvwal_log_set_prepare_retry(kvwal_t *wal, uint32_t retry_ms);

/**
 * Tests only: make the (skip + 1)-th next operation of `kind` (KVWAL_FAULT_*) fail with errno
 * `err`. For KVWAL_FAULT_WRITE, the first `partial_bytes` bytes of that write reach the file
 * before it fails (0: none); for KVWAL_FAULT_PREPARE, `partial_bytes` preparations in a row
 * fail (0 counts as 1; UINT64_MAX: every one until disarmed). One fault per kind is armed at a
 * time; err = 0 disarms it. May be called before kvwal_log_open() to hit recovery.
 * @return 0 or KVWAL_EINVAL
 */
int kvwal_log_inject_fault(kvwal_t *wal, int kind, uint64_t skip, int err,
                           uint64_t partial_bytes);

#ifdef __cplusplus
}
#endif

#endif /* KVWAL_H */
