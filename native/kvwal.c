/*
 * kvwal: the kvstore redo log. See kvwal.h for the API and the locking, FORMAT.md for the bytes.
 *
 * Layout of this file: small helpers (little-endian, errors, faults, I/O); the in-memory index;
 * record encoding and parsing; the segment helper thread; recovery (open); writing (append,
 * rotation, sync, truncate, compaction, install); reading; life cycle and introspection.
 */
#define _GNU_SOURCE /* flock, O_DIRECTORY, renameat, fdopendir: glibc hides them under -std=c11 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "kvwal.h"

/* ---- Format constants (FORMAT.md §2) ------------------------------------------------------- */

enum {
    REC_ZERO = 0,
    REC_SEGMENT = 1,
    REC_ENTRY = 2,
    REC_HARD_STATE = 3,
    REC_TRUNCATE = 4,
    REC_SNAPSHOT = 5,
    REC_TYPE_MAX = 5,
};

#define HDR_BYTES 12u
#define SNAP_FLAG_RESET 0x1u
#define SEG_MAGIC "KVWALSEG"
/* The segment format version (FORMAT.md §8). Writers write SEG_VERSION; readers accept
 * SEG_VERSION_MIN .. SEG_VERSION and refuse any other, and any SEGMENT flag outside
 * SEG_FLAGS_KNOWN. */
#define SEG_VERSION 2u
#define SEG_VERSION_MIN 1u
#define SEG_FLAGS_KNOWN 0u
#define SEG_PAYLOAD_BYTES 32u
#define ENTRY_FIXED_BYTES 16u
#define HS_FIXED_BYTES 16u
#define SNAP_FIXED_BYTES 16u
#define TRUNC_PAYLOAD_BYTES 16u       /* index, last (FORMAT.md §2) */
#define TRUNC_LEGACY_PAYLOAD_BYTES 8u /* index alone, version 1 only: a cut at once */
#define TMP_NAME "segment.tmp"
#define SEG_NAME_LEN 37 /* 16 hex + '-' + 16 hex + ".wal" */
#define CRC_MASK_DELTA 0xA282EAD8u

/* A batch is encoded into a scratch buffer and written when the buffer holds this much, so a
 * huge batch does not need a buffer as big as itself. */
#define SCRATCH_FLUSH_BYTES (4u << 20)
/* Reading entries: consecutive records closer than this are fetched with one pread. */
#define READ_GAP_BYTES (64u << 10)
#define READ_SPAN_BYTES (4u << 20)
#define ZERO_CHUNK_BYTES (1u << 20)
/* Private files (DESIGN §4): the log holds every value written, so only its owner may read it.
 * The umask can only narrow these. */
#define DIR_MODE 0700
#define FILE_MODE 0600

enum { PREP_IDLE, PREP_WANTED, PREP_BUSY, PREP_READY, PREP_FAILED };

/* A preparation that fails for want of a resource that may come back (file descriptors, disk
 * space, memory) is tried again after a pause that doubles from the first to the last. */
#define PREP_BACKOFF_FIRST_MS 1u
#define PREP_BACKOFF_LAST_MS 100u

/* ---- Types --------------------------------------------------------------------------------- */

struct segment {
    uint64_t seq;
    uint64_t first_index;
    uint64_t size; /* file size: the capacity for records */
    int fd;
    char name[SEG_NAME_LEN + 1];
};

/* One live entry in the in-memory index. */
struct ient {
    uint64_t term;
    uint64_t seq; /* segment */
    uint64_t off; /* file offset of the record header */
    uint32_t len; /* data bytes */
    uint32_t type;
};

struct fault {
    int err;
    uint64_t skip;
    uint64_t partial;
};

struct kvwal {
    pthread_mutex_t mu;
    /* Two condition variables, so that an append does not wake the threads waiting for an
     * fdatasync and an fdatasync does not wake the waiting writers: with one shared variable,
     * 32 threads in group commit spent half their time waking up for nothing. */
    pthread_cond_t writer_cv; /* writer flag released, segment prepared, poison */
    pthread_cond_t sync_cv;   /* an fdatasync ended or the durable position moved, poison */
    pthread_cond_t prep_cv; /* wakes the helper thread */

    int opened;
    int failed; /* poisoned */
    unsigned flags;
    uint64_t segment_bytes;
    char *dir;
    int dirfd;

    struct segment *segs; /* in seq order; the last one receives appends */
    size_t nsegs, segs_cap;
    uint64_t write_off; /* next record offset in the last segment */

    /* Live entries: index base + k is ents[head + k], for k < count. */
    struct ient *ents;
    size_t ents_head, ents_count, ents_cap;
    uint64_t base;
    struct ient *pend; /* a batch's new entries until its write succeeded */
    size_t pend_cap;
    /* Where each entry's data lies in a msgpack-framed batch (kvwal_log_append_msgpack). */
    uint64_t *frame_offs;
    uint32_t *frame_lens;
    size_t frame_cap;

    uint64_t snap_index, snap_term;
    uint8_t *snap_conf;
    size_t snap_conf_len;
    kvwal_hard_state_t hs;

    uint64_t appended, durable; /* positions: bytes written since open / known durable */
    int writer_busy;
    int syncing;

    uint8_t *scratch;
    size_t scratch_cap;

    pthread_t prep_thread;
    int prep_started, prep_stop, prep_state, prep_fd, prep_err;
    atomic_int prep_abort; /* read without the mutex by prepare_file: close() stops a zero-fill */
    uint64_t prep_size;
    uint32_t prep_retry_ms;     /* how long a waiting writer lets transient failures be retried */
    uint64_t prep_wait_since;   /* CLOCK_MONOTONIC ns when a writer began to wait; 0: none */

    struct fault faults[4];
    kvwal_stats_t stats;
    kvwal_recovery_t recovery;
    kvwal_error_t poison_cause; /* the failure that poisoned the handle (code 0: none) */
};

/* ---- Little-endian helpers ----------------------------------------------------------------- */

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
/* On little-endian hosts a memcpy is one plain store. */
static inline void put_le16(uint8_t *p, uint16_t v) {
    memcpy(p, &v, 2);
}
static inline void put_le32(uint8_t *p, uint32_t v) {
    memcpy(p, &v, 4);
}
static inline void put_le64(uint8_t *p, uint64_t v) {
    memcpy(p, &v, 8);
}
#else
static inline void put_le16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void put_le32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline void put_le64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
#endif
static inline uint16_t get_le16(const uint8_t *p) {
    return (uint16_t)(p[0] | p[1] << 8);
}
static inline uint32_t get_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t get_le64(const uint8_t *p) {
    return (uint64_t)get_le32(p) | (uint64_t)get_le32(p + 4) << 32;
}

static inline uint64_t align8(uint64_t n) {
    return (n + 7u) & ~(uint64_t)7u;
}
static inline uint64_t rec_bytes(uint64_t payload) {
    return align8(HDR_BYTES + payload);
}

/* ---- CRC of a record (FORMAT.md §2) -------------------------------------------------------- */

/* From crc32c.c (library-internal): CRCs of many independent buffers
 * (three crc32 chains at a time), and the CRC of a record's 16-byte seed. */
void kvwal__crc32c_many(size_t n, const uint8_t *const *bufs, const size_t *lens, uint32_t *crcs,
                        int portable);
uint32_t kvwal__crc32c_u64x2(uint64_t a, uint64_t b, int portable);


static uint32_t crc_mask(uint32_t c) {
    return ((c >> 15) | (c << 17)) + CRC_MASK_DELTA;
}

/* `rec` points at the record header; covers bytes [4, 12 + len) seeded with (seq, offset). */
static uint32_t rec_crc(unsigned flags, uint64_t seq, uint64_t off, const uint8_t *rec,
                        uint32_t len) {
    int portable = (flags & KVWAL_FLAG_PORTABLE_CRC) != 0;
    uint32_t c = kvwal__crc32c_u64x2(seq, off, portable);
    size_t n = (size_t)HDR_BYTES - 4 + len;
    c = portable ? kvwal_crc32c_portable(c, rec + 4, n) : kvwal_crc32c(c, rec + 4, n);
    return crc_mask(c);
}


/* Records of a batch get their CRCs in groups, so that independent crc32 chains overlap. */
#define CRC_QUEUE_LEN 24
struct crc_queue {
    size_t n;
    const uint8_t *bufs[CRC_QUEUE_LEN];
    size_t lens[CRC_QUEUE_LEN];
    uint32_t crcs[CRC_QUEUE_LEN];
    uint8_t *recs[CRC_QUEUE_LEN];
};

static void crc_queue_flush(unsigned flags, struct crc_queue *q) {
    kvwal__crc32c_many(q->n, q->bufs, q->lens, q->crcs, (flags & KVWAL_FLAG_PORTABLE_CRC) != 0);
    for (size_t k = 0; k < q->n; k++) put_le32(q->recs[k], crc_mask(q->crcs[k]));
    q->n = 0;
}

/* Queue the CRC of the record at `rec` (file offset `off` of segment `seq`, payload `len`). */
static inline void crc_queue_add(unsigned flags, struct crc_queue *q, uint64_t seq, uint64_t off,
                          uint8_t *rec, uint32_t len) {
    q->crcs[q->n] = kvwal__crc32c_u64x2(seq, off, (flags & KVWAL_FLAG_PORTABLE_CRC) != 0);
    q->bufs[q->n] = rec + 4;
    q->lens[q->n] = (size_t)HDR_BYTES - 4 + len;
    q->recs[q->n] = rec;
    if (++q->n == CRC_QUEUE_LEN) crc_queue_flush(flags, q);
}

/* ---- Errors -------------------------------------------------------------------------------- */

const char *kvwal_strerror(int code) {
    switch (code) {
    case 0:
        return "success";
    case KVWAL_ECORRUPT:
        return "KVWAL_ECORRUPT: the log is corrupt";
    case KVWAL_ETORN:
        return "KVWAL_ETORN: a torn tail was cut";
    case KVWAL_EFAILED:
        return "KVWAL_EFAILED: an earlier write or fsync failed; the log is poisoned";
    case KVWAL_ECOMPACTED:
        return "KVWAL_ECOMPACTED: index compacted into a snapshot";
    case KVWAL_EUNAVAILABLE:
        return "KVWAL_EUNAVAILABLE: index beyond the last entry";
    case KVWAL_EINVAL:
        return "KVWAL_EINVAL: invalid argument";
    case KVWAL_ETOOBIG:
        return "KVWAL_ETOOBIG: record, vote or configuration too big";
    case KVWAL_ECLOSED:
        return "KVWAL_ECLOSED: the log is not open";
    case KVWAL_ERANGE:
        return "KVWAL_ERANGE: buffer too small";
    default:
        break;
    }
    if (code > 0) {
        return strerror(code);
    }
    return "unknown kvwal error";
}

/* The detail of the calling thread's latest failed call (kvwal_error_last()). It belongs to the
 * thread, like errno, so a thread is never told the path and offset of another thread's
 * failure; a handle keeps only the cause that poisoned it (poison_cause), which is the same for
 * every later call. */
static _Thread_local kvwal_error_t last_error;

/* A public call starts: no detail yet (so a failure without one is not shown an older one). */
static inline void error_clear(void) {
    last_error.code = 0;
}

/* This call fails because the handle is poisoned: its detail is what poisoned it. Under the
 * mutex. */
static int error_poisoned(struct kvwal *wal) {
    last_error = wal->poison_cause;
    return KVWAL_EFAILED;
}

int kvwal_error_last(kvwal_error_t *out) {
    *out = last_error;
    return 0;
}

/* Record the detail of a failure; returns `code` so call sites can `return set_error(...)`.
 * `name` is a file inside the log directory (or NULL). Callers hold the mutex or are alone. The
 * first KVWAL_EFAILED detail is also kept as the handle's poison cause. */
__attribute__((format(printf, 7, 8))) static int set_error(struct kvwal *wal, int code,
                                                           int sys_errno, const char *name,
                                                           int has_offset, uint64_t offset,
                                                           const char *fmt, ...) {
    kvwal_error_t *e = &last_error;
    e->code = code;
    e->sys_errno = sys_errno;
    e->has_offset = has_offset;
    e->offset = offset;
    if (name != NULL && wal->dir != NULL) {
        snprintf(e->path, sizeof e->path, "%s/%s", wal->dir, name);
    } else if (wal->dir != NULL) {
        snprintf(e->path, sizeof e->path, "%s", wal->dir);
    } else {
        e->path[0] = '\0';
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    if (code == KVWAL_EFAILED && wal->poison_cause.code == 0) wal->poison_cause = *e;
    return code;
}

/* The symbolic name of the errno values a log meets, so that an operator reading "ENOSPC" or
 * "EMFILE" knows at once what ran out ("errno" and the number for others). */
static const char *errno_name(int err) {
    switch (err) {
    case ENOSPC: return "ENOSPC";
    case EDQUOT: return "EDQUOT";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case ENOMEM: return "ENOMEM";
    case EIO: return "EIO";
    case EROFS: return "EROFS";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EINVAL: return "EINVAL";
    case EFBIG: return "EFBIG";
    default: return "errno";
    }
}

/* A write or sync failed: from now on every call fails (the file's state is unknown). */
static int poison(struct kvwal *wal, int sys_errno, const char *name, const char *what) {
    wal->failed = 1;
    set_error(wal, KVWAL_EFAILED, sys_errno, name, 0, 0, "%s failed: %s %d (%s)", what,
              errno_name(sys_errno), sys_errno, strerror(sys_errno));
    pthread_cond_broadcast(&wal->writer_cv);
    pthread_cond_broadcast(&wal->sync_cv);
    return KVWAL_EFAILED;
}

/* ---- Fault injection and I/O --------------------------------------------------------------- */

/* Under the mutex (or alone at open). Returns the errno to fail with, or 0. */
static int fault_take(struct kvwal *wal, int kind, uint64_t *partial) {
    struct fault *f = &wal->faults[kind];
    if (f->err == 0) {
        return 0;
    }
    if (f->skip > 0) {
        f->skip--;
        return 0;
    }
    int err = f->err;
    if (kind == KVWAL_FAULT_PREPARE) {
        /* `partial` counts the preparations in a row that fail (kvwal_log_inject_fault). */
        if (f->partial > 1) {
            f->partial--;
            return err;
        }
    } else if (partial != NULL) {
        *partial = f->partial;
    }
    f->err = 0;
    return err;
}

static int pwrite_all(int fd, const uint8_t *buf, size_t len, uint64_t off) {
    while (len > 0) {
        ssize_t n = pwrite(fd, buf, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (n == 0) return EIO;
        buf += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int pread_all(int fd, uint8_t *buf, size_t len, uint64_t off) {
    while (len > 0) {
        ssize_t n = pread(fd, buf, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (n == 0) return EIO; /* the file is shorter than the index says */
        buf += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

/* A log write, subject to KVWAL_FAULT_WRITE. Returns 0 or an errno. */
static int log_write(struct kvwal *wal, int fd, const uint8_t *buf, size_t len, uint64_t off) {
    uint64_t partial = 0;
    int err = fault_take(wal, KVWAL_FAULT_WRITE, &partial);
    if (err != 0) {
        if (partial > 0) {
            (void)pwrite_all(fd, buf, partial < len ? (size_t)partial : len, off);
        }
        return err;
    }
    return pwrite_all(fd, buf, len, off);
}

/* fdatasync (data files) or fsync (directories), subject to KVWAL_FAULT_SYNC. */
static int log_sync_fd(struct kvwal *wal, int fd, int is_dir) {
    int err = fault_take(wal, KVWAL_FAULT_SYNC, NULL);
    if (err != 0) return err;
    int rc;
    do {
        rc = is_dir ? fsync(fd) : fdatasync(fd);
    } while (rc != 0 && errno == EINTR);
    if (!is_dir) wal->stats.fdatasyncs++;
    return rc == 0 ? 0 : errno;
}

/* Take the group and other bits off an existing file or directory (made by an older version,
 * or by hand). Best effort: a file we cannot chmod is still ours to use, so a failure is
 * ignored. */
static void private_mode(int fd, mode_t mode) {
    struct stat st;
    if (fstat(fd, &st) == 0 && (st.st_mode & 077) != 0) (void)fchmod(fd, st.st_mode & mode);
}

/* ---- In-memory index ----------------------------------------------------------------------- */

static inline uint64_t last_index(const struct kvwal *wal) {
    return wal->base + wal->ents_count - 1; /* base >= 1, so this is base - 1 when empty */
}

static inline struct ient *ent_at(struct kvwal *wal, uint64_t index) {
    return &wal->ents[wal->ents_head + (size_t)(index - wal->base)];
}

static int ents_reserve(struct kvwal *wal, size_t extra) {
    if (wal->ents_head + wal->ents_count + extra <= wal->ents_cap) return 0;
    if (wal->ents_count + extra <= wal->ents_cap / 2) {
        /* Plenty of room once the compacted front is reclaimed. */
        memmove(wal->ents, wal->ents + wal->ents_head, wal->ents_count * sizeof *wal->ents);
        wal->ents_head = 0;
        return 0;
    }
    if (wal->ents_head > 0) {
        memmove(wal->ents, wal->ents + wal->ents_head, wal->ents_count * sizeof *wal->ents);
        wal->ents_head = 0;
    }
    size_t cap = wal->ents_cap ? wal->ents_cap * 2 : 1024;
    while (cap < wal->ents_count + extra) cap *= 2;
    /* realloc, not malloc + copy: glibc moves big blocks with mremap, without touching them. */
    struct ient *n = realloc(wal->ents, cap * sizeof *n);
    if (n == NULL) return ENOMEM;
    wal->ents = n;
    wal->ents_cap = cap;
    return 0;
}

/* Keep entries <= index. */
static void ents_truncate_after(struct kvwal *wal, uint64_t index) {
    if (index + 1 <= wal->base) {
        wal->ents_count = 0;
        wal->base = index + 1;
    } else if (index - wal->base + 1 < wal->ents_count) {
        wal->ents_count = (size_t)(index - wal->base + 1);
    }
}

/* Drop entries <= index (a compaction). */
static void ents_compact(struct kvwal *wal, uint64_t index) {
    if (wal->ents_count == 0 || index >= last_index(wal)) {
        wal->ents_count = 0;
        wal->ents_head = 0;
        wal->base = index + 1;
        return;
    }
    if (index >= wal->base) {
        size_t drop = (size_t)(index - wal->base + 1);
        wal->ents_head += drop;
        wal->ents_count -= drop;
        wal->base = index + 1;
    }
}

static void ents_clear(struct kvwal *wal, uint64_t base) {
    wal->ents_count = 0;
    wal->ents_head = 0;
    wal->base = base;
}

/* ---- Segments ------------------------------------------------------------------------------ */

static struct segment *seg_last(struct kvwal *wal) {
    return &wal->segs[wal->nsegs - 1];
}

static struct segment *seg_by_seq(struct kvwal *wal, uint64_t seq) {
    if (wal->nsegs == 0 || seq < wal->segs[0].seq) return NULL;
    uint64_t k = seq - wal->segs[0].seq;
    return k < wal->nsegs ? &wal->segs[k] : NULL;
}

static int segs_push(struct kvwal *wal, const struct segment *s) {
    if (wal->nsegs == wal->segs_cap) {
        size_t cap = wal->segs_cap ? wal->segs_cap * 2 : 16;
        struct segment *n = realloc(wal->segs, cap * sizeof *n);
        if (n == NULL) return ENOMEM;
        wal->segs = n;
        wal->segs_cap = cap;
    }
    wal->segs[wal->nsegs++] = *s;
    return 0;
}

static void seg_name(char *out, uint64_t seq, uint64_t first_index) {
    snprintf(out, SEG_NAME_LEN + 1, "%016llx-%016llx.wal", (unsigned long long)seq,
             (unsigned long long)first_index);
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Parse "<16 hex>-<16 hex>.wal"; returns 1 on a match. */
static int seg_parse_name(const char *name, uint64_t *seq, uint64_t *first) {
    if (strlen(name) != SEG_NAME_LEN || name[16] != '-' || strcmp(name + 33, ".wal") != 0) {
        return 0;
    }
    uint64_t a = 0, b = 0;
    for (int i = 0; i < 16; i++) {
        int x = hexval(name[i]), y = hexval(name[17 + i]);
        if (x < 0 || y < 0) return 0;
        a = a << 4 | (uint64_t)x;
        b = b << 4 | (uint64_t)y;
    }
    *seq = a;
    *first = b;
    return 1;
}

/* ---- Record encoding ----------------------------------------------------------------------- */

/* Encode one record at dst (which will live at file offset `off` of segment `seq`). The payload
 * is fixed[0..nfixed) as u64s followed by `data`. The CRC is stored now, or later by `q` if it is
 * not NULL. Returns the record's size with padding. */
static inline uint64_t rec_encode(unsigned flags, struct crc_queue *q, uint8_t *dst, uint64_t seq,
                           uint64_t off, uint8_t type, uint8_t aux, const uint64_t *fixed,
                           unsigned nfixed, const uint8_t *data, size_t data_len) {
    uint32_t len = (uint32_t)(8u * nfixed + data_len);
    uint64_t total = rec_bytes(len);
    put_le32(dst + 4, len);
    dst[8] = type;
    dst[9] = aux;
    put_le16(dst + 10, 0);
    for (unsigned i = 0; i < nfixed; i++) put_le64(dst + HDR_BYTES + 8u * i, fixed[i]);
    if (data_len > 0) memcpy(dst + HDR_BYTES + 8u * nfixed, data, data_len);
    memset(dst + HDR_BYTES + len, 0, (size_t)(total - HDR_BYTES - len));
    if (q != NULL) {
        crc_queue_add(flags, q, seq, off, dst, len);
    } else {
        put_le32(dst, rec_crc(flags, seq, off, dst, len));
    }
    return total;
}

/* The preamble of a new segment (FORMAT.md §3), into a fresh buffer. */
static int preamble_build(struct kvwal *wal, uint64_t seq, uint64_t first_index,
                          unsigned snap_flags, uint8_t **out, size_t *out_len) {
    size_t len = (size_t)(rec_bytes(SEG_PAYLOAD_BYTES) +
                          rec_bytes(SNAP_FIXED_BYTES + wal->snap_conf_len) +
                          rec_bytes(HS_FIXED_BYTES + wal->hs.vote_len));
    uint8_t *buf = malloc(len);
    if (buf == NULL) return ENOMEM;
    uint8_t seg_payload[SEG_PAYLOAD_BYTES];
    memcpy(seg_payload, SEG_MAGIC, 8);
    put_le32(seg_payload + 8, SEG_VERSION);
    put_le32(seg_payload + 12, 0);
    put_le64(seg_payload + 16, seq);
    put_le64(seg_payload + 24, first_index);
    uint64_t off = 0;
    off += rec_encode(wal->flags, NULL, buf + off, seq, off, REC_SEGMENT, 0, NULL, 0, seg_payload,
                      sizeof seg_payload);
    uint64_t snap[2] = {wal->snap_index, wal->snap_term};
    off += rec_encode(wal->flags, NULL, buf + off, seq, off, REC_SNAPSHOT, (uint8_t)snap_flags, snap, 2,
                      wal->snap_conf, wal->snap_conf_len);
    uint64_t hs[2] = {wal->hs.term, wal->hs.commit};
    off += rec_encode(wal->flags, NULL, buf + off, seq, off, REC_HARD_STATE, 0, hs, 2, wal->hs.vote,
                      wal->hs.vote_len);
    *out = buf;
    *out_len = (size_t)off;
    return 0;
}

/* ---- Preparing segments -------------------------------------------------------------------- */

/* Create TMP_NAME of `size` bytes: fallocate, optionally write zeros, fdatasync. Returns an fd
 * or -errno (-ECANCELED if `abort` became non-zero). Runs in the helper thread (or alone at
 * open): touches no shared state but the abort flag. */
static int prepare_file(int dirfd, uint64_t size, int zero_fill, atomic_int *abort) {
    int fd = openat(dirfd, TMP_NAME, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, FILE_MODE);
    if (fd < 0) return -errno;
    int err = posix_fallocate(fd, 0, (off_t)size);
    if (err == 0 && zero_fill) {
        /* Written zeros turn ext4's unwritten extents into written ones, so a later fdatasync
         * of log data needs no extent conversion (FORMAT.md §7). */
        uint8_t *zeros = calloc(1, ZERO_CHUNK_BYTES);
        if (zeros == NULL) {
            err = ENOMEM;
        } else {
            for (uint64_t off = 0; off < size && err == 0; off += ZERO_CHUNK_BYTES) {
                if (atomic_load_explicit(abort, memory_order_relaxed)) {
                    err = ECANCELED;
                    break;
                }
                uint64_t n = size - off < ZERO_CHUNK_BYTES ? size - off : ZERO_CHUNK_BYTES;
                err = pwrite_all(fd, zeros, (size_t)n, off);
            }
            free(zeros);
        }
    }
    if (err == 0 && fdatasync(fd) != 0) err = errno;
    if (err != 0) {
        close(fd);
        unlinkat(dirfd, TMP_NAME, 0);
        return -err;
    }
    return fd;
}

static uint64_t monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Whether a preparation that failed with `err` is worth trying again. Under the mutex. Only
 * shortages that can end are retried, and only until a writer that needs the segment has
 * waited `prep_retry_ms` for it: then the failure is reported (and poisons the log). */
static int prep_should_retry(struct kvwal *wal, int err) {
    if (wal->prep_stop || wal->prep_retry_ms == 0) return 0;
    if (err != EMFILE && err != ENFILE && err != ENOSPC && err != EDQUOT && err != ENOMEM) {
        return 0;
    }
    if (wal->prep_wait_since == 0) return 1;
    return monotonic_ns() - wal->prep_wait_since < (uint64_t)wal->prep_retry_ms * 1000000u;
}

/* Sleep about `ms` milliseconds on prep_cv, so that close() wakes it. Under the mutex. */
static void prep_pause(struct kvwal *wal, uint32_t ms) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until); /* pthread_cond_timedwait's default clock */
    until.tv_sec += ms / 1000u;
    until.tv_nsec += (long)(ms % 1000u) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    (void)pthread_cond_timedwait(&wal->prep_cv, &wal->mu, &until);
}

static void *prep_main(void *arg) {
    struct kvwal *wal = arg;
    pthread_mutex_lock(&wal->mu);
    for (;;) {
        while (!wal->prep_stop && wal->prep_state != PREP_WANTED) {
            pthread_cond_wait(&wal->prep_cv, &wal->mu);
        }
        if (wal->prep_stop) break;
        wal->prep_state = PREP_BUSY;
        uint64_t size = wal->prep_size;
        int zero_fill = !(wal->flags & KVWAL_FLAG_NO_ZERO_FILL);
        int dirfd = wal->dirfd;
        uint32_t backoff_ms = PREP_BACKOFF_FIRST_MS;
        int fd;
        for (;;) {
            int fault = fault_take(wal, KVWAL_FAULT_PREPARE, NULL);
            pthread_mutex_unlock(&wal->mu);
            fd = fault ? -fault : prepare_file(dirfd, size, zero_fill, &wal->prep_abort);
            pthread_mutex_lock(&wal->mu);
            if (fd >= 0 || !prep_should_retry(wal, -fd)) break;
            /* Out of descriptors, space or memory: others may give some back (a client
             * disconnects, a compaction deletes segments). Nobody waits yet, or not for long:
             * pause, then try again. */
            wal->stats.prepare_retries++;
            prep_pause(wal, backoff_ms);
            if (wal->prep_stop) {
                fd = -ECANCELED;
                break;
            }
            backoff_ms = backoff_ms * 2 > PREP_BACKOFF_LAST_MS ? PREP_BACKOFF_LAST_MS
                                                                : backoff_ms * 2;
        }
        if (fd < 0) {
            wal->prep_state = PREP_FAILED;
            wal->prep_err = -fd;
        } else {
            wal->prep_state = PREP_READY;
            wal->prep_fd = fd;
        }
        pthread_cond_broadcast(&wal->writer_cv);
    }
    pthread_mutex_unlock(&wal->mu);
    return NULL;
}

/* Ask the helper thread for the next segment once the current one is half full, so that it is
 * ready before rotation needs it. Under the mutex. */
static void prep_maybe_start(struct kvwal *wal) {
    if (wal->prep_state == PREP_IDLE && wal->prep_started &&
        wal->write_off >= seg_last(wal)->size / 2) {
        wal->prep_state = PREP_WANTED;
        wal->prep_size = wal->segment_bytes;
        pthread_cond_signal(&wal->prep_cv);
    }
}

/* Give the prepared TMP_NAME (open as fd, `size` bytes) its preamble and final name, and make it
 * the last segment. Under the mutex as the writer (or alone at open). On failure the handle is
 * poisoned and fd is closed. */
static int segment_install(struct kvwal *wal, int fd, uint64_t size, uint64_t seq,
                           uint64_t first_index, unsigned snap_flags) {
    struct segment s = {.seq = seq, .first_index = first_index, .size = size, .fd = fd};
    seg_name(s.name, seq, first_index);
    uint8_t *pre = NULL;
    size_t pre_len = 0;
    int err = preamble_build(wal, seq, first_index, snap_flags, &pre, &pre_len);
    if (err == 0 && pre_len > size) err = EINVAL; /* cannot happen: size >= segment_bytes_min */
    if (err == 0) err = log_write(wal, fd, pre, pre_len, 0);
    free(pre);
    if (err == 0) err = log_sync_fd(wal, fd, 0);
    if (err == 0 && renameat(wal->dirfd, TMP_NAME, wal->dirfd, s.name) != 0) err = errno;
    if (err == 0) err = log_sync_fd(wal, wal->dirfd, 1);
    if (err == 0) err = segs_push(wal, &s);
    if (err != 0) {
        close(fd);
        return poison(wal, err, s.name, "creating a segment");
    }
    wal->write_off = pre_len;
    wal->appended += pre_len;
    wal->stats.segments_created++;
    return 0;
}

/* Start a new segment that can hold at least `need` bytes of records after its preamble.
 * Under the mutex as the writer; may release the mutex while the helper thread works. */
static int segment_rotate(struct kvwal *wal, uint64_t need, uint64_t first_index,
                          unsigned snap_flags) {
    struct segment *old = seg_last(wal);
    uint64_t seq = old->seq + 1;
    /* Sync the full segment now, so that a sync only ever needs the newest segment's fd and an
     * older segment is never torn. The mutex is released meanwhile (readers and syncers go on);
     * the writer flag keeps the segment list as it is. */
    int fd_old = old->fd;
    char name_old[SEG_NAME_LEN + 1];
    memcpy(name_old, old->name, sizeof name_old);
    uint64_t covered = wal->appended;
    int err = fault_take(wal, KVWAL_FAULT_SYNC, NULL);
    if (err == 0) {
        pthread_mutex_unlock(&wal->mu);
        int rc;
        do {
            rc = fdatasync(fd_old);
        } while (rc != 0 && errno == EINTR);
        err = rc == 0 ? 0 : errno;
        pthread_mutex_lock(&wal->mu);
        wal->stats.fdatasyncs++;
    }
    if (err != 0) return poison(wal, err, name_old, "fdatasync of a full segment");
    if (wal->failed) return KVWAL_EFAILED;
    if (wal->durable < covered) {
        wal->durable = covered;
        pthread_cond_broadcast(&wal->sync_cv);
    }

    if (wal->prep_state == PREP_IDLE) {
        wal->prep_state = PREP_WANTED;
        wal->prep_size = wal->segment_bytes;
        pthread_cond_signal(&wal->prep_cv);
    }
    if (wal->prep_state == PREP_WANTED || wal->prep_state == PREP_BUSY) {
        wal->stats.rotation_waits++;
        /* From now on the helper's retries of a transient failure are on this writer's clock
         * (prep_should_retry). */
        wal->prep_wait_since = monotonic_ns();
        while (!wal->failed &&
               (wal->prep_state == PREP_WANTED || wal->prep_state == PREP_BUSY)) {
            pthread_cond_wait(&wal->writer_cv, &wal->mu);
        }
        wal->prep_wait_since = 0;
    }
    if (wal->failed) return KVWAL_EFAILED;
    if (wal->prep_state == PREP_FAILED) {
        wal->prep_state = PREP_IDLE;
        return poison(wal, wal->prep_err, TMP_NAME, "preparing a segment");
    }
    int fd = wal->prep_fd;
    uint64_t size = wal->prep_size;
    wal->prep_fd = -1;
    wal->prep_state = PREP_IDLE;

    uint8_t *pre = NULL;
    size_t pre_len = 0;
    err = preamble_build(wal, seq, first_index, snap_flags, &pre, &pre_len);
    free(pre);
    if (err == 0 && pre_len + need > size) {
        /* A record bigger than a segment: this segment grows to hold it (FORMAT.md §1). */
        uint64_t want = (pre_len + need + 4095u) & ~(uint64_t)4095u;
        err = posix_fallocate(fd, 0, (off_t)want);
        if (err == 0) size = want;
    }
    if (err != 0) {
        close(fd);
        return poison(wal, err, TMP_NAME, "growing a segment");
    }
    return segment_install(wal, fd, size, seq, first_index, snap_flags);
}

/* ---- Writer entry and exit ----------------------------------------------------------------- */

/* Take the mutex and the writer flag. On success the mutex is held. */
static int writer_enter(struct kvwal *wal) {
    error_clear();
    pthread_mutex_lock(&wal->mu);
    while (wal->writer_busy && !wal->failed) {
        pthread_cond_wait(&wal->writer_cv, &wal->mu);
    }
    int rc = wal->failed ? error_poisoned(wal) : !wal->opened ? KVWAL_ECLOSED : 0;
    if (rc != 0) {
        pthread_mutex_unlock(&wal->mu);
        return rc;
    }
    wal->writer_busy = 1;
    return 0;
}

static int writer_exit(struct kvwal *wal, int rc) {
    if (rc == KVWAL_EFAILED) error_poisoned(wal);
    wal->writer_busy = 0;
    /* Every waiter wants the flag and only one can have it. */
    pthread_cond_signal(&wal->writer_cv);
    pthread_mutex_unlock(&wal->mu);
    return rc;
}

/* ---- Writing a batch of records ------------------------------------------------------------ */

/* What a batch holds: [TRUNCATE] + entries + [HARD_STATE] (+ a lone SNAPSHOT marker). */
struct batch_in {
    int truncate;
    uint64_t truncate_index;
    uint64_t truncate_last; /* the batch's last entry (truncate_index for a bare cut) */
    size_t count;
    const uint64_t *indexes, *terms;
    const uint8_t *types;
    const uint32_t *lengths;
    const uint64_t *offsets; /* entry k's data at data + offsets[k]; NULL: packed back to back */
    const uint8_t *data;
    const kvwal_hard_state_t *hs;
    int snapshot; /* a compaction marker: snap_* fields of the handle */
};

struct rec_desc {
    uint8_t type, aux;
    unsigned nfixed;
    uint64_t fixed[2];
    const uint8_t *data;
    size_t data_len;
};

static size_t batch_nrecs(const struct batch_in *b) {
    return (size_t)(b->truncate != 0) + b->count + (size_t)(b->hs != NULL) +
           (size_t)(b->snapshot != 0);
}

/* Record k of the batch; `data_off` walks the entries' data (records are visited in order). */
static inline void batch_rec(const struct kvwal *wal, const struct batch_in *b, size_t k,
                             size_t *data_off, struct rec_desc *r) {
    r->aux = 0;
    r->data = NULL;
    r->data_len = 0;
    if (b->truncate) {
        if (k == 0) {
            r->type = REC_TRUNCATE;
            r->nfixed = 2;
            r->fixed[0] = b->truncate_index;
            r->fixed[1] = b->truncate_last;
            return;
        }
        k--;
    }
    if (k < b->count) {
        r->type = REC_ENTRY;
        r->aux = b->types[k];
        r->nfixed = 2;
        r->fixed[0] = b->indexes[k];
        r->fixed[1] = b->terms[k];
        r->data = b->data + (b->offsets != NULL ? b->offsets[k] : *data_off);
        r->data_len = b->lengths[k];
        *data_off += b->lengths[k];
        return;
    }
    k -= b->count;
    if (b->hs != NULL && k == 0) {
        r->type = REC_HARD_STATE;
        r->nfixed = 2;
        r->fixed[0] = b->hs->term;
        r->fixed[1] = b->hs->commit;
        r->data = b->hs->vote;
        r->data_len = b->hs->vote_len;
        return;
    }
    r->type = REC_SNAPSHOT;
    r->nfixed = 2;
    r->fixed[0] = wal->snap_index;
    r->fixed[1] = wal->snap_term;
    r->data = wal->snap_conf;
    r->data_len = wal->snap_conf_len;
}

static int scratch_reserve(struct kvwal *wal, size_t n) {
    if (n <= wal->scratch_cap) return 0;
    size_t cap = wal->scratch_cap ? wal->scratch_cap : 64u << 10;
    while (cap < n) cap *= 2;
    uint8_t *p = realloc(wal->scratch, cap);
    if (p == NULL) return ENOMEM;
    wal->scratch = p;
    wal->scratch_cap = cap;
    return 0;
}

/* Encode and write the batch, rotating segments as needed. Fills wal->pend[k] with the
 * location of entry k. Under the mutex as the writer. Does not touch the index. */
static int batch_write(struct kvwal *wal, const struct batch_in *b) {
    if (b->truncate && b->count > 0) {
        /* An overwrite batch never spans segments (FORMAT.md §5), so that one left unfinished
         * by a crash lies at the end of the newest segment, where recovery can cut it. */
        uint64_t total = rec_bytes(TRUNC_PAYLOAD_BYTES);
        for (size_t k = 0; k < b->count; k++) total += rec_bytes(ENTRY_FIXED_BYTES + b->lengths[k]);
        if (b->hs != NULL) total += rec_bytes(HS_FIXED_BYTES + b->hs->vote_len);
        if (wal->write_off + total > seg_last(wal)->size) {
            int err = segment_rotate(wal, total, b->truncate_index + 1, 0);
            if (err != 0) return err;
        }
    }
    size_t nrecs = batch_nrecs(b);
    size_t data_off = 0;
    size_t buf_len = 0;         /* encoded, not yet written */
    uint64_t chunk_off = wal->write_off; /* file offset of scratch[0] */
    uint64_t pos = wal->write_off;       /* file offset of the next record */
    uint64_t written = 0;
    size_t entry_k = 0;
    struct crc_queue q;
    q.n = 0;
    int err;
    for (size_t k = 0; k < nrecs; k++) {
        struct rec_desc r;
        batch_rec(wal, b, k, &data_off, &r);
        uint64_t size = rec_bytes(8u * r.nfixed + r.data_len);
        if (pos + size > seg_last(wal)->size) {
            if (buf_len > 0) {
                crc_queue_flush(wal->flags, &q);
                err = log_write(wal, seg_last(wal)->fd, wal->scratch, buf_len, chunk_off);
                if (err != 0) return poison(wal, err, seg_last(wal)->name, "pwrite");
                written += buf_len;
                buf_len = 0;
            }
            wal->write_off = pos;
            uint64_t before = wal->appended;
            /* The index the next entry will have, for the new segment's name. */
            uint64_t next = r.type == REC_ENTRY ? r.fixed[0]
                            : entry_k > 0      ? b->indexes[entry_k - 1] + 1
                            : b->truncate      ? b->truncate_index + 1
                                               : last_index(wal) + 1;
            err = segment_rotate(wal, size, next, 0);
            if (err != 0) return err;
            written += wal->appended - before; /* the preamble */
            wal->appended = before;
            pos = chunk_off = wal->write_off;
        }
        if (buf_len + size > wal->scratch_cap) {
            if (buf_len > 0) {
                crc_queue_flush(wal->flags, &q);
                err = log_write(wal, seg_last(wal)->fd, wal->scratch, buf_len, chunk_off);
                if (err != 0) return poison(wal, err, seg_last(wal)->name, "pwrite");
                written += buf_len;
                chunk_off += buf_len;
                buf_len = 0;
            }
            uint64_t want = size > SCRATCH_FLUSH_BYTES ? size : SCRATCH_FLUSH_BYTES;
            if (scratch_reserve(wal, (size_t)want) != 0) {
                return poison(wal, ENOMEM, NULL, "allocating the write buffer");
            }
        }
        uint64_t seq = seg_last(wal)->seq;
        rec_encode(wal->flags, &q, wal->scratch + buf_len, seq, pos, r.type, r.aux, r.fixed,
                   r.nfixed, r.data, r.data_len);
        if (r.type == REC_ENTRY) {
            struct ient *e = &wal->pend[entry_k++];
            e->term = r.fixed[1];
            e->seq = seq;
            e->off = pos;
            e->len = (uint32_t)r.data_len;
            e->type = r.aux;
        }
        buf_len += (size_t)size;
        pos += size;
    }
    if (buf_len > 0) {
        crc_queue_flush(wal->flags, &q);
        err = log_write(wal, seg_last(wal)->fd, wal->scratch, buf_len, chunk_off);
        if (err != 0) return poison(wal, err, seg_last(wal)->name, "pwrite");
        written += buf_len;
    }
    wal->write_off = pos;
    wal->appended += written;
    wal->stats.records_appended += nrecs;
    prep_maybe_start(wal);
    return 0;
}

static int pend_reserve(struct kvwal *wal, size_t n) {
    if (n <= wal->pend_cap) return 0;
    size_t cap = wal->pend_cap ? wal->pend_cap : 256;
    while (cap < n) cap *= 2;
    struct ient *p = realloc(wal->pend, cap * sizeof *p);
    if (p == NULL) return ENOMEM;
    wal->pend = p;
    wal->pend_cap = cap;
    return 0;
}

/* Nothing to write: report the position so that callers can sync it. */
static int append_nothing(struct kvwal *wal, uint64_t *out_position) {
    pthread_mutex_lock(&wal->mu);
    int rc = wal->failed ? error_poisoned(wal) : !wal->opened ? KVWAL_ECLOSED : 0;
    if (rc == 0 && out_position != NULL) *out_position = wal->appended;
    pthread_mutex_unlock(&wal->mu);
    return rc;
}

/* The rest of an append once the caller holds the writer flag and `b` (without its truncate
 * fields) describes the entries: validate everything, then write, then index. `data_len` is
 * what the lengths must add up to, or UINT64_MAX when the data is not one packed block. */
static int append_locked(struct kvwal *wal, struct batch_in *b, uint64_t data_len,
                         uint64_t *out_position) {
    size_t count = b->count;
    const uint64_t *indexes = b->indexes;
    const uint32_t *lengths = b->lengths;
    const kvwal_hard_state_t *hard_state = b->hs;
    uint64_t total = 0;
    for (size_t k = 0; k < count; k++) {
        if (indexes[k] != indexes[0] + k) {
            set_error(wal, KVWAL_EINVAL, 0, NULL, 0, 0,
                      "append: entry %zu has index %llu, expected %llu (not consecutive)", k,
                      (unsigned long long)indexes[k], (unsigned long long)(indexes[0] + k));
            return writer_exit(wal, KVWAL_EINVAL);
        }
        if (lengths[k] > KVWAL_RECORD_BYTES_MAX - ENTRY_FIXED_BYTES) {
            set_error(wal, KVWAL_ETOOBIG, 0, NULL, 0, 0, "append: entry %llu has %u bytes",
                      (unsigned long long)indexes[k], lengths[k]);
            return writer_exit(wal, KVWAL_ETOOBIG);
        }
        total += lengths[k];
    }
    if (data_len != UINT64_MAX && total != data_len) {
        set_error(wal, KVWAL_EINVAL, 0, NULL, 0, 0,
                  "append: lengths add up to %llu bytes but data has %llu",
                  (unsigned long long)total, (unsigned long long)data_len);
        return writer_exit(wal, KVWAL_EINVAL);
    }
    if (hard_state != NULL && hard_state->vote_len > KVWAL_VOTE_BYTES_MAX) {
        set_error(wal, KVWAL_ETOOBIG, 0, NULL, 0, 0, "append: vote of %zu bytes",
                  hard_state->vote_len);
        return writer_exit(wal, KVWAL_ETOOBIG);
    }
    uint64_t last = last_index(wal);
    if (count > 0) {
        if (indexes[0] <= wal->snap_index) {
            set_error(wal, KVWAL_ECOMPACTED, 0, NULL, 0, 0,
                      "append: first index %llu is not above the snapshot index %llu",
                      (unsigned long long)indexes[0], (unsigned long long)wal->snap_index);
            return writer_exit(wal, KVWAL_ECOMPACTED);
        }
        if (indexes[0] > last + 1) {
            set_error(wal, KVWAL_EINVAL, 0, NULL, 0, 0,
                      "append: first index %llu leaves a gap after the last index %llu",
                      (unsigned long long)indexes[0], (unsigned long long)last);
            return writer_exit(wal, KVWAL_EINVAL);
        }
        if (indexes[0] <= last) {
            /* The new entries conflict with the tail: cut it, in the same write (etcd). */
            b->truncate = 1;
            b->truncate_index = indexes[0] - 1;
            b->truncate_last = indexes[count - 1];
        }
    }
    if (pend_reserve(wal, count) != 0 || ents_reserve(wal, count) != 0) {
        set_error(wal, ENOMEM, ENOMEM, NULL, 0, 0, "append: out of memory");
        return writer_exit(wal, ENOMEM);
    }

    int rc = batch_write(wal, b);
    if (rc != 0) return writer_exit(wal, rc);

    if (count > 0) {
        ents_truncate_after(wal, indexes[0] - 1);
        /* ents_reserve ran before the write; truncation only frees room. */
        memcpy(&wal->ents[wal->ents_head + wal->ents_count], wal->pend, count * sizeof *wal->pend);
        wal->ents_count += count;
    }
    if (hard_state != NULL) wal->hs = *hard_state;
    wal->stats.append_calls++;
    if (out_position != NULL) *out_position = wal->appended;
    return writer_exit(wal, 0);
}

int kvwal_log_append(kvwal_t *wal, size_t count, const uint64_t *indexes, const uint64_t *terms,
                     const uint8_t *types, const uint32_t *lengths, const uint8_t *data,
                     size_t data_len, const kvwal_hard_state_t *hard_state,
                     uint64_t *out_position) {
    error_clear();
    if (count > 0 && (indexes == NULL || terms == NULL || types == NULL || lengths == NULL)) {
        return KVWAL_EINVAL;
    }
    if (count == 0 && hard_state == NULL) return append_nothing(wal, out_position);
    int rc = writer_enter(wal);
    if (rc != 0) return rc;
    struct batch_in b = {.count = count, .indexes = indexes, .terms = terms, .types = types,
                         .lengths = lengths, .data = data, .hs = hard_state};
    return append_locked(wal, &b, data_len, out_position);
}

static inline uint32_t get_be16(const uint8_t *p) {
    return (uint32_t)p[0] << 8 | p[1];
}
static inline uint32_t get_be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Find the `count` bin objects of the msgpack array in packed[0 .. len) (see kvwal.h): their
 * offsets and lengths go to wal->frame_offs/frame_lens. Under the writer flag. */
static int frames_parse(struct kvwal *wal, size_t count, const uint8_t *packed, size_t len) {
    if (count > wal->frame_cap) {
        size_t cap = wal->frame_cap ? wal->frame_cap : 256;
        while (cap < count) cap *= 2;
        uint64_t *offs = realloc(wal->frame_offs, cap * sizeof *offs);
        if (offs != NULL) wal->frame_offs = offs;
        uint32_t *lens = offs != NULL ? realloc(wal->frame_lens, cap * sizeof *lens) : NULL;
        if (lens == NULL) {
            return set_error(wal, ENOMEM, ENOMEM, NULL, 0, 0, "append: out of memory");
        }
        wal->frame_lens = lens;
        wal->frame_cap = cap;
    }
    size_t pos, n;
    if (len >= 1 && (packed[0] & 0xf0u) == 0x90u) {
        n = packed[0] & 0x0fu;
        pos = 1;
    } else if (len >= 3 && packed[0] == 0xdcu) {
        n = get_be16(packed + 1);
        pos = 3;
    } else if (len >= 5 && packed[0] == 0xddu) {
        n = get_be32(packed + 1);
        pos = 5;
    } else {
        return set_error(wal, KVWAL_EINVAL, 0, NULL, 0, 0, "append: data is not a msgpack array");
    }
    if (n != count) {
        return set_error(wal, KVWAL_EINVAL, 0, NULL, 0, 0,
                         "append: %zu entries but %zu data items", count, n);
    }
    for (size_t k = 0; k < count; k++) {
        /* bin 8, bin 16, bin 32: a tag, then the length (big-endian) in 1, 2 or 4 bytes. */
        size_t left = len - pos, head;
        uint32_t n_bytes;
        if (left >= 2 && packed[pos] == 0xc4u) {
            n_bytes = packed[pos + 1];
            head = 2;
        } else if (left >= 3 && packed[pos] == 0xc5u) {
            n_bytes = get_be16(packed + pos + 1);
            head = 3;
        } else if (left >= 5 && packed[pos] == 0xc6u) {
            n_bytes = get_be32(packed + pos + 1);
            head = 5;
        } else {
            return set_error(wal, KVWAL_EINVAL, 0, NULL, 0, 0,
                             "append: data item %zu is not msgpack bin", k);
        }
        if (n_bytes > left - head) {
            return set_error(wal, KVWAL_EINVAL, 0, NULL, 0, 0,
                             "append: data item %zu runs past the end", k);
        }
        wal->frame_offs[k] = pos + head;
        wal->frame_lens[k] = n_bytes;
        pos += head + n_bytes;
    }
    if (pos != len) {
        return set_error(wal, KVWAL_EINVAL, 0, NULL, 0, 0,
                         "append: %zu bytes after the msgpack array", len - pos);
    }
    return 0;
}

int kvwal_log_append_msgpack(kvwal_t *wal, size_t count, const uint64_t *indexes,
                             const uint64_t *terms, const uint8_t *types, const uint8_t *packed,
                             size_t packed_len, const kvwal_hard_state_t *hard_state,
                             uint64_t *out_position) {
    error_clear();
    if (count > 0 && (indexes == NULL || terms == NULL || types == NULL || packed == NULL)) {
        return KVWAL_EINVAL;
    }
    if (count == 0 && hard_state == NULL) return append_nothing(wal, out_position);
    int rc = writer_enter(wal);
    if (rc != 0) return rc;
    if (count > 0) {
        rc = frames_parse(wal, count, packed, packed_len);
        if (rc != 0) return writer_exit(wal, rc);
    }
    struct batch_in b = {.count = count, .indexes = indexes, .terms = terms, .types = types,
                         .lengths = wal->frame_lens, .offsets = wal->frame_offs, .data = packed,
                         .hs = hard_state};
    return append_locked(wal, &b, UINT64_MAX, out_position);
}

int kvwal_log_truncate_after(kvwal_t *wal, uint64_t index, uint64_t *out_position) {
    int rc = writer_enter(wal);
    if (rc != 0) return rc;
    if (index < wal->snap_index) {
        set_error(wal, KVWAL_ECOMPACTED, 0, NULL, 0, 0,
                  "truncate_after(%llu): below the snapshot index %llu",
                  (unsigned long long)index, (unsigned long long)wal->snap_index);
        return writer_exit(wal, KVWAL_ECOMPACTED);
    }
    if (index < last_index(wal)) {
        struct batch_in b = {.truncate = 1, .truncate_index = index, .truncate_last = index};
        rc = batch_write(wal, &b);
        if (rc != 0) return writer_exit(wal, rc);
        ents_truncate_after(wal, index);
    }
    if (out_position != NULL) *out_position = wal->appended;
    return writer_exit(wal, 0);
}

/* ---- Sync (group commit) ------------------------------------------------------------------- */

/* Under the mutex; returns with it held. See kvwal.h for the protocol. */
static int sync_to_locked(struct kvwal *wal, uint64_t position) {
    while (wal->durable < position) {
        if (wal->failed) return KVWAL_EFAILED;
        if (wal->syncing) {
            /* Another thread's fdatasync is in flight: when it ends it may cover us. */
            pthread_cond_wait(&wal->sync_cv, &wal->mu);
            continue;
        }
        wal->syncing = 1;
        uint64_t goal = wal->appended;
        struct segment *seg = seg_last(wal);
        int fd = seg->fd;
        char name[SEG_NAME_LEN + 1];
        memcpy(name, seg->name, sizeof name);
        int err = fault_take(wal, KVWAL_FAULT_SYNC, NULL);
        pthread_mutex_unlock(&wal->mu);
        if (err == 0) {
            int rc;
            do {
                rc = fdatasync(fd);
            } while (rc != 0 && errno == EINTR);
            err = rc == 0 ? 0 : errno;
        }
        pthread_mutex_lock(&wal->mu);
        wal->syncing = 0;
        wal->stats.fdatasyncs++;
        if (err != 0) return poison(wal, err, name, "fdatasync");
        if (wal->durable < goal) wal->durable = goal;
        pthread_cond_broadcast(&wal->sync_cv);
    }
    return wal->failed ? KVWAL_EFAILED : 0;
}

static int sync_common(struct kvwal *wal, int to_end, uint64_t position) {
    error_clear();
    pthread_mutex_lock(&wal->mu);
    wal->stats.sync_calls++;
    int rc = wal->failed ? KVWAL_EFAILED : !wal->opened ? KVWAL_ECLOSED : 0;
    if (rc == 0) {
        if (to_end) position = wal->appended;
        if (position > wal->appended) {
            rc = set_error(wal, KVWAL_EINVAL, 0, NULL, 0, 0,
                           "sync_to(%llu): beyond the append position %llu",
                           (unsigned long long)position, (unsigned long long)wal->appended);
        } else {
            rc = sync_to_locked(wal, position);
        }
    }
    if (rc == KVWAL_EFAILED) error_poisoned(wal);
    pthread_mutex_unlock(&wal->mu);
    return rc;
}

int kvwal_log_sync(kvwal_t *wal) {
    return sync_common(wal, 1, 0);
}

int kvwal_log_sync_to(kvwal_t *wal, uint64_t position) {
    return sync_common(wal, 0, position);
}

/* ---- Compaction and snapshots -------------------------------------------------------------- */

static int snap_set(struct kvwal *wal, uint64_t index, uint64_t term, const uint8_t *conf,
                    size_t conf_len) {
    uint8_t *copy = NULL;
    if (conf_len > 0) {
        copy = malloc(conf_len);
        if (copy == NULL) return ENOMEM;
        memcpy(copy, conf, conf_len);
    }
    free(wal->snap_conf);
    wal->snap_conf = copy;
    wal->snap_conf_len = conf_len;
    wal->snap_index = index;
    wal->snap_term = term;
    return 0;
}

/* Close and unlink segments [0, n) (oldest first), then fsync the directory. As the writer. */
static int segments_delete_front(struct kvwal *wal, size_t n) {
    if (n == 0) return 0;
    /* A sync in flight may still be using an fd that was the newest when it started. */
    while (wal->syncing) pthread_cond_wait(&wal->sync_cv, &wal->mu);
    for (size_t k = 0; k < n; k++) {
        struct segment *s = &wal->segs[k];
        close(s->fd);
        s->fd = -1;
        if (unlinkat(wal->dirfd, s->name, 0) != 0 && errno != ENOENT) {
            int err = errno;
            char name[SEG_NAME_LEN + 1];
            memcpy(name, s->name, sizeof name);
            memmove(wal->segs, wal->segs + k + 1, (wal->nsegs - k - 1) * sizeof *wal->segs);
            wal->nsegs -= k + 1;
            return poison(wal, err, name, "unlink of a compacted segment");
        }
        wal->stats.segments_deleted++;
    }
    memmove(wal->segs, wal->segs + n, (wal->nsegs - n) * sizeof *wal->segs);
    wal->nsegs -= n;
    int err = log_sync_fd(wal, wal->dirfd, 1);
    if (err != 0) return poison(wal, err, NULL, "fsync of the log directory");
    return 0;
}

int kvwal_log_compact_through(kvwal_t *wal, uint64_t index, uint64_t term, const uint8_t *conf,
                              size_t conf_len) {
    error_clear();
    if (conf_len > KVWAL_RECORD_BYTES_MAX - SNAP_FIXED_BYTES) return KVWAL_ETOOBIG;
    int rc = writer_enter(wal);
    if (rc != 0) return rc;
    if (index < wal->snap_index) {
        set_error(wal, KVWAL_ECOMPACTED, 0, NULL, 0, 0,
                  "compact_through(%llu): below the snapshot index %llu",
                  (unsigned long long)index, (unsigned long long)wal->snap_index);
        return writer_exit(wal, KVWAL_ECOMPACTED);
    }
    if (index == wal->snap_index) return writer_exit(wal, 0);
    if (index > last_index(wal)) {
        set_error(wal, KVWAL_EUNAVAILABLE, 0, NULL, 0, 0,
                  "compact_through(%llu): beyond the last index %llu",
                  (unsigned long long)index, (unsigned long long)last_index(wal));
        return writer_exit(wal, KVWAL_EUNAVAILABLE);
    }
    if (ent_at(wal, index)->term != term) {
        set_error(wal, KVWAL_EINVAL, 0, NULL, 0, 0,
                  "compact_through(%llu): term %llu differs from the entry's term %llu",
                  (unsigned long long)index, (unsigned long long)term,
                  (unsigned long long)ent_at(wal, index)->term);
        return writer_exit(wal, KVWAL_EINVAL);
    }
    if (snap_set(wal, index, term, conf, conf_len) != 0) {
        return writer_exit(wal, set_error(wal, ENOMEM, ENOMEM, NULL, 0, 0, "out of memory"));
    }
    ents_compact(wal, index);
    struct batch_in b = {.snapshot = 1};
    rc = batch_write(wal, &b);
    /* The marker must be durable before the segments it makes redundant go away. */
    if (rc == 0) rc = sync_to_locked(wal, wal->appended);
    if (rc == 0) {
        /* Live entries are in increasing (seq, offset) order: the first one's segment and all
         * newer ones must stay; with no live entry, only the newest segment stays. */
        uint64_t keep_seq = wal->ents_count > 0 ? ent_at(wal, wal->base)->seq : seg_last(wal)->seq;
        size_t n = 0;
        while (n + 1 < wal->nsegs && wal->segs[n].seq < keep_seq) n++;
        rc = segments_delete_front(wal, n);
    }
    return writer_exit(wal, rc);
}

int kvwal_log_install_snapshot(kvwal_t *wal, uint64_t index, uint64_t term, const uint8_t *conf,
                               size_t conf_len) {
    error_clear();
    if (conf_len > KVWAL_RECORD_BYTES_MAX - SNAP_FIXED_BYTES) return KVWAL_ETOOBIG;
    int rc = writer_enter(wal);
    if (rc != 0) return rc;
    if (snap_set(wal, index, term, conf, conf_len) != 0) {
        return writer_exit(wal, set_error(wal, ENOMEM, ENOMEM, NULL, 0, 0, "out of memory"));
    }
    ents_clear(wal, index + 1);
    /* A fresh segment whose preamble says RESET: once it is durable, replay gives the new state
     * whether or not the older segments are still there, so deleting them is safe. */
    rc = segment_rotate(wal, 0, index + 1, SNAP_FLAG_RESET);
    if (rc == 0) {
        wal->durable = wal->appended; /* segment_install synced the preamble */
        rc = segments_delete_front(wal, wal->nsegs - 1);
    }
    return writer_exit(wal, rc);
}

/* ---- Reading ------------------------------------------------------------------------------- */

static int reader_enter(struct kvwal *wal) {
    error_clear();
    pthread_mutex_lock(&wal->mu);
    int rc = wal->failed ? error_poisoned(wal) : !wal->opened ? KVWAL_ECLOSED : 0;
    if (rc != 0) pthread_mutex_unlock(&wal->mu);
    return rc;
}

static int reader_exit(struct kvwal *wal, int rc) {
    pthread_mutex_unlock(&wal->mu);
    return rc;
}

/* Check that `rec` (read from segment `s` at offset `off`) is the ENTRY the index expects. */
static int entry_verify(struct kvwal *wal, const struct segment *s, uint64_t off,
                        const uint8_t *rec, uint64_t index, const struct ient *e) {
    uint32_t len = get_le32(rec + 4);
    if (rec[8] != REC_ENTRY || len != ENTRY_FIXED_BYTES + e->len ||
        get_le64(rec + HDR_BYTES) != index || get_le32(rec) != rec_crc(wal->flags, s->seq, off,
                                                                        rec, len)) {
        return set_error(wal, KVWAL_ECORRUPT, 0, s->name, 1, off,
                         "entry %llu failed verification on read", (unsigned long long)index);
    }
    return 0;
}

int kvwal_log_entries(kvwal_t *wal, uint64_t lo, uint64_t hi, uint64_t max_bytes,
                      kvwal_batch_t *out) {
    memset(out, 0, sizeof *out);
    int rc = reader_enter(wal);
    if (rc != 0) return rc;
    uint64_t first = wal->snap_index + 1, last = last_index(wal);
    if (lo > hi) {
        return reader_exit(wal, set_error(wal, KVWAL_EINVAL, 0, NULL, 0, 0,
                                          "entries(%llu, %llu): lo > hi", (unsigned long long)lo,
                                          (unsigned long long)hi));
    }
    if (lo < first) return reader_exit(wal, KVWAL_ECOMPACTED);
    if (hi > last + 1) return reader_exit(wal, KVWAL_EUNAVAILABLE);

    size_t n = 0;
    uint64_t bytes = 0;
    for (uint64_t i = lo; i < hi; i++) {
        uint64_t len = ent_at(wal, i)->len;
        if (n > 0 && bytes + len > max_bytes) break;
        bytes += len;
        n++;
    }
    size_t block_len = n * 8 + (n + 1) * 8 + n + (size_t)bytes;
    uint8_t *block = malloc(block_len ? block_len : 1);
    if (block == NULL) return reader_exit(wal, ENOMEM);
    out->block = block;
    out->terms = (uint64_t *)block;
    out->offsets = (uint64_t *)(block + n * 8);
    out->types = block + n * 8 + (n + 1) * 8;
    out->data = out->types + n;
    out->data_len = (size_t)bytes;
    out->count = n;

    uint8_t *span = NULL;
    size_t span_cap = 0;
    uint64_t data_pos = 0;
    size_t k = 0;
    while (k < n) {
        /* A run of records in one segment, close together: one pread. */
        const struct ient *e0 = ent_at(wal, lo + k);
        uint64_t run_lo = e0->off;
        uint64_t run_hi = e0->off + rec_bytes(ENTRY_FIXED_BYTES + e0->len);
        size_t run_n = 1;
        while (k + run_n < n) {
            const struct ient *e = ent_at(wal, lo + k + run_n);
            uint64_t end = e->off + rec_bytes(ENTRY_FIXED_BYTES + e->len);
            if (e->seq != e0->seq || e->off < run_hi || e->off - run_hi > READ_GAP_BYTES ||
                end - run_lo > READ_SPAN_BYTES) {
                break;
            }
            run_hi = end;
            run_n++;
        }
        struct segment *s = seg_by_seq(wal, e0->seq);
        if (s == NULL) {
            rc = set_error(wal, KVWAL_ECORRUPT, 0, NULL, 0, 0, "entry %llu: segment %llu gone",
                           (unsigned long long)(lo + k), (unsigned long long)e0->seq);
            break;
        }
        size_t span_len = (size_t)(run_hi - run_lo);
        if (span_len > span_cap) {
            free(span);
            span = malloc(span_len);
            span_cap = span ? span_len : 0;
            if (span == NULL) {
                rc = ENOMEM;
                break;
            }
        }
        int err = pread_all(s->fd, span, span_len, run_lo);
        if (err != 0) {
            rc = set_error(wal, err, err, s->name, 1, run_lo, "pread failed: %s", strerror(err));
            break;
        }
        for (size_t j = 0; j < run_n; j++, k++) {
            const struct ient *e = ent_at(wal, lo + k);
            const uint8_t *rec = span + (e->off - run_lo);
            rc = entry_verify(wal, s, e->off, rec, lo + k, e);
            if (rc != 0) break;
            out->terms[k] = e->term;
            out->types[k] = (uint8_t)e->type;
            out->offsets[k] = data_pos;
            memcpy(out->data + data_pos, rec + HDR_BYTES + ENTRY_FIXED_BYTES, e->len);
            data_pos += e->len;
        }
        if (rc != 0) break;
    }
    free(span);
    if (rc != 0) {
        kvwal_batch_free(out);
        return reader_exit(wal, rc);
    }
    out->offsets[n] = data_pos;
    return reader_exit(wal, 0);
}

void kvwal_batch_free(kvwal_batch_t *batch) {
    if (batch == NULL) return;
    free(batch->block);
    memset(batch, 0, sizeof *batch);
}

int kvwal_log_term(kvwal_t *wal, uint64_t index, uint64_t *out_term) {
    int rc = reader_enter(wal);
    if (rc != 0) return rc;
    if (index < wal->snap_index) {
        rc = KVWAL_ECOMPACTED;
    } else if (index > last_index(wal)) {
        rc = KVWAL_EUNAVAILABLE;
    } else {
        *out_term = index == wal->snap_index ? wal->snap_term : ent_at(wal, index)->term;
    }
    return reader_exit(wal, rc);
}

int kvwal_log_first_index(kvwal_t *wal, uint64_t *out_index) {
    int rc = reader_enter(wal);
    if (rc == 0) *out_index = wal->snap_index + 1;
    return rc == 0 ? reader_exit(wal, 0) : rc;
}

int kvwal_log_last_index(kvwal_t *wal, uint64_t *out_index) {
    int rc = reader_enter(wal);
    if (rc == 0) *out_index = last_index(wal);
    return rc == 0 ? reader_exit(wal, 0) : rc;
}

int kvwal_log_hard_state(kvwal_t *wal, kvwal_hard_state_t *out) {
    int rc = reader_enter(wal);
    if (rc == 0) *out = wal->hs;
    return rc == 0 ? reader_exit(wal, 0) : rc;
}

int kvwal_log_snapshot(kvwal_t *wal, uint64_t *out_index, uint64_t *out_term, uint8_t *conf,
                       size_t conf_cap, size_t *out_conf_len) {
    int rc = reader_enter(wal);
    if (rc != 0) return rc;
    *out_index = wal->snap_index;
    *out_term = wal->snap_term;
    *out_conf_len = wal->snap_conf_len;
    if (wal->snap_conf_len > conf_cap) return reader_exit(wal, KVWAL_ERANGE);
    if (wal->snap_conf_len > 0) memcpy(conf, wal->snap_conf, wal->snap_conf_len);
    return reader_exit(wal, 0);
}

/* ---- Recovery ------------------------------------------------------------------------------ */

enum { PARSE_OK, PARSE_END, PARSE_BAD };

/* Is there a valid record at `off` of buf[0..size)? Fills *len and *type when PARSE_OK. */
static int rec_parse(unsigned flags, const uint8_t *buf, uint64_t size, uint64_t seq,
                     uint64_t off, uint32_t *len_out, uint8_t *type_out) {
    if (off + HDR_BYTES > size) return PARSE_END;
    const uint8_t *p = buf + off;
    uint8_t type = p[8];
    if (type == REC_ZERO) return PARSE_END;
    uint32_t len = get_le32(p + 4);
    if (type > REC_TYPE_MAX || get_le16(p + 10) != 0 || len > KVWAL_RECORD_BYTES_MAX ||
        off + HDR_BYTES + len > size) {
        return PARSE_BAD;
    }
    static const uint32_t min_len[REC_TYPE_MAX + 1] = {
        0, SEG_PAYLOAD_BYTES, ENTRY_FIXED_BYTES, HS_FIXED_BYTES, TRUNC_LEGACY_PAYLOAD_BYTES,
        SNAP_FIXED_BYTES};
    if (len < min_len[type] || (type == REC_SEGMENT && len != SEG_PAYLOAD_BYTES) ||
        (type == REC_TRUNCATE && len != TRUNC_PAYLOAD_BYTES &&
         len != TRUNC_LEGACY_PAYLOAD_BYTES)) {
        return PARSE_BAD;
    }
    if (get_le32(p) != rec_crc(flags, seq, off, p, len)) return PARSE_BAD;
    *len_out = len;
    *type_out = type;
    return PARSE_OK;
}

/* Replay state beyond the handle's own fields: where we are, and an open overwrite batch
 * (FORMAT.md §4), whose entries wait in wal->pend until its last one is read. */
struct replay {
    const struct segment *seg; /* the segment being read */
    uint32_t version;          /* its format version */
    uint64_t off;
    int batch_open;
    uint64_t batch_off;  /* offset of its TRUNCATE record */
    uint64_t batch_cut;  /* TRUNCATE's index: entries above it are cut when the batch closes */
    uint64_t batch_last; /* its last entry */
    size_t batch_held;   /* entries read so far: batch_cut + 1 .. batch_cut + batch_held */
};

static int replay_corrupt(struct kvwal *wal, const struct replay *rp, const char *what) {
    return set_error(wal, KVWAL_ECORRUPT, 0, rp->seg->name, 1, rp->off, "%s", what);
}

/* Set entry `index` (described by `e`), dropping every entry >= index first (FORMAT.md §4). */
static int replay_entry(struct kvwal *wal, const struct replay *rp, uint64_t index,
                        const struct ient *e) {
    if (index <= wal->snap_index) {
        return replay_corrupt(wal, rp, "entry at or below the snapshot index");
    }
    if (wal->ents_count > 0 && index > last_index(wal) + 1) {
        return replay_corrupt(wal, rp, "entry index leaves a gap");
    }
    if (wal->ents_count > 0 && index >= wal->base) {
        ents_truncate_after(wal, index - 1);
    } else {
        /* The first entry seen, or one below the first known: its predecessors down to the
         * snapshot lie in deleted segments (checked at the end). */
        ents_clear(wal, index);
    }
    if (ents_reserve(wal, 1) != 0) return ENOMEM;
    wal->ents[wal->ents_head + wal->ents_count++] = *e;
    return 0;
}

/* A bare cut: every entry above `index` is dropped. */
static void replay_cut(struct kvwal *wal, uint64_t index) {
    if (wal->ents_count == 0) {
        if (index + 1 < wal->base) wal->base = index + 1;
    } else {
        ents_truncate_after(wal, index);
    }
}

/* The overwrite batch's last entry was read: its cut and its entries take effect together. */
static int replay_batch_close(struct kvwal *wal, struct replay *rp) {
    struct replay at = *rp;
    at.off = rp->batch_off; /* errors name the batch's TRUNCATE record */
    replay_cut(wal, rp->batch_cut);
    for (size_t k = 0; k < rp->batch_held; k++) {
        int rc = replay_entry(wal, &at, rp->batch_cut + 1 + k, &wal->pend[k]);
        if (rc != 0) return rc;
    }
    rp->batch_open = 0;
    rp->batch_held = 0;
    return 0;
}

/* Apply one valid record to the handle's state (FORMAT.md §4). */
static int replay_record(struct kvwal *wal, struct replay *rp, const uint8_t *p, uint32_t len,
                         uint8_t type) {
    const uint8_t *pl = p + HDR_BYTES;
    uint8_t aux = p[9];
    if (rp->batch_open) {
        /* Inside an overwrite batch only its next entry may come; it is held until the last. */
        if (type != REC_ENTRY || get_le64(pl) != rp->batch_cut + 1 + rp->batch_held) {
            return replay_corrupt(wal, rp, "unexpected record inside an overwrite batch");
        }
        if (pend_reserve(wal, rp->batch_held + 1) != 0) return ENOMEM;
        struct ient *e = &wal->pend[rp->batch_held++];
        e->term = get_le64(pl + 8);
        e->seq = rp->seg->seq;
        e->off = rp->off;
        e->len = len - ENTRY_FIXED_BYTES;
        e->type = aux;
        return get_le64(pl) == rp->batch_last ? replay_batch_close(wal, rp) : 0;
    }
    switch (type) {
    case REC_SEGMENT:
        return replay_corrupt(wal, rp, "segment header in the middle of a segment");
    case REC_ENTRY: {
        struct ient e = {.term = get_le64(pl + 8),
                         .seq = rp->seg->seq,
                         .off = rp->off,
                         .len = len - ENTRY_FIXED_BYTES,
                         .type = aux};
        return replay_entry(wal, rp, get_le64(pl), &e);
    }
    case REC_HARD_STATE:
        if (len - HS_FIXED_BYTES > KVWAL_VOTE_BYTES_MAX) {
            return replay_corrupt(wal, rp, "vote too long");
        }
        wal->hs.term = get_le64(pl);
        wal->hs.commit = get_le64(pl + 8);
        wal->hs.vote_len = len - HS_FIXED_BYTES;
        memcpy(wal->hs.vote, pl + HS_FIXED_BYTES, wal->hs.vote_len);
        return 0;
    case REC_TRUNCATE: {
        if (len == TRUNC_LEGACY_PAYLOAD_BYTES && rp->version >= 2) {
            return replay_corrupt(wal, rp, "8-byte TRUNCATE in a segment of version 2 or later");
        }
        uint64_t index = get_le64(pl);
        uint64_t last = len == TRUNC_PAYLOAD_BYTES ? get_le64(pl + 8) : index;
        if (index < wal->snap_index) {
            return replay_corrupt(wal, rp, "truncation below the snapshot index");
        }
        if (last < index) {
            return replay_corrupt(wal, rp, "truncation whose batch ends before it");
        }
        if (last == index) {
            replay_cut(wal, index);
            return 0;
        }
        rp->batch_open = 1;
        rp->batch_off = rp->off;
        rp->batch_cut = index;
        rp->batch_last = last;
        rp->batch_held = 0;
        return 0;
    }
    case REC_SNAPSHOT: {
        uint64_t index = get_le64(pl), term = get_le64(pl + 8);
        if (!(aux & SNAP_FLAG_RESET) && index < wal->snap_index) {
            return replay_corrupt(wal, rp, "snapshot marker below the previous one");
        }
        if (snap_set(wal, index, term, pl + SNAP_FIXED_BYTES, len - SNAP_FIXED_BYTES) != 0) {
            return ENOMEM;
        }
        if (aux & SNAP_FLAG_RESET) {
            ents_clear(wal, index + 1);
        } else if (wal->ents_count == 0) {
            if (wal->base < index + 1) wal->base = index + 1;
        } else {
            ents_compact(wal, index);
        }
        return 0;
    }
    default:
        return replay_corrupt(wal, rp, "unknown record type");
    }
}

/* Offset just past the last non-zero byte of buf[from, size), or `from` if all zero. */
static uint64_t nonzero_end(const uint8_t *buf, uint64_t from, uint64_t size) {
    uint64_t end = size;
    while (end > from && (end & 7u) != 0) {
        if (buf[end - 1] != 0) return end;
        end--;
    }
    while (end >= from + 8) {
        uint64_t w;
        memcpy(&w, buf + end - 8, 8);
        if (w != 0) break;
        end -= 8;
    }
    while (end > from && buf[end - 1] == 0) end--;
    return end;
}

/* The offset of the first valid record at an 8-aligned offset in (from, size), or 0 if none. */
static uint64_t valid_record_after(unsigned flags, const uint8_t *buf, uint64_t size,
                                   uint64_t seq, uint64_t from) {
    for (uint64_t off = align8(from + 1); off + HDR_BYTES <= size; off += 8) {
        uint8_t type = buf[off + 8];
        if (type == REC_ZERO || type > REC_TYPE_MAX) continue; /* cheap reject first */
        uint32_t len;
        uint8_t t;
        if (rec_parse(flags, buf, size, seq, off, &len, &t) == PARSE_OK) return off;
    }
    return 0;
}

#define DISK_PAGE_BYTES 4096u

static int all_zero(const uint8_t *p, uint64_t n) {
    for (uint64_t i = 0; i < n; i++) {
        if (p[i] != 0) return 0;
    }
    return 1;
}

/* Is there a hole between a damaged record at `off` and the next valid record at `next`: a
 * disk page that never reached the disk (FORMAT.md §6 rule 3)? A page is written whole or not
 * at all, so the hole is the rest of the page holding `off`, or a whole page, that lies entirely
 * before `next` and is still the zeros of preallocation: a power cut kept a later page of
 * unsynced writes but not this one. Damage to data that was written (bit rot, a bad copy, a
 * wrong length field) does not zero whole pages. */
static int unwritten_page_between(const uint8_t *buf, uint64_t off, uint64_t next) {
    uint64_t page_end = (off / DISK_PAGE_BYTES + 1) * DISK_PAGE_BYTES;
    if (page_end <= next && all_zero(buf + off, page_end - off)) return 1;
    for (uint64_t page = page_end; page + DISK_PAGE_BYTES <= next; page += DISK_PAGE_BYTES) {
        if (all_zero(buf + page, DISK_PAGE_BYTES)) return 1;
    }
    return 0;
}

/* Zero buf-region [from, to) of a segment on disk and make it durable (cutting a torn tail). */
static int zero_range(struct kvwal *wal, int fd, uint64_t from, uint64_t to) {
    uint8_t *zeros = calloc(1, ZERO_CHUNK_BYTES);
    if (zeros == NULL) return ENOMEM;
    int err = 0;
    for (uint64_t off = from; off < to && err == 0; off += ZERO_CHUNK_BYTES) {
        uint64_t n = to - off < ZERO_CHUNK_BYTES ? to - off : ZERO_CHUNK_BYTES;
        err = log_write(wal, fd, zeros, (size_t)n, off);
    }
    free(zeros);
    if (err == 0) err = log_sync_fd(wal, fd, 0);
    return err;
}

/* A buffer reused for every segment of a scan: a fresh 64 MiB allocation per segment would
 * spend a third of the scan in page faults. */
struct scan_buf {
    uint8_t *data;
    size_t cap;
};

/* The SEGMENT record's payload `pl` at the start of rp->seg: the magic, a version this build
 * reads, only known flags, and the seq and first index of the file name (FORMAT.md §6, §8). */
static int segment_header_check(struct kvwal *wal, const struct replay *rp, const uint8_t *pl) {
    uint32_t version = get_le32(pl + 8);
    uint32_t flags = get_le32(pl + 12);
    if (memcmp(pl, SEG_MAGIC, 8) != 0) {
        return replay_corrupt(wal, rp, "not a kvstore log segment (bad magic)");
    }
    if (version < SEG_VERSION_MIN || version > SEG_VERSION) {
        return set_error(wal, KVWAL_ECORRUPT, 0, rp->seg->name, 1, rp->off,
                         "segment format version %u is not supported (this build reads "
                         "versions %u to %u)",
                         version, SEG_VERSION_MIN, SEG_VERSION);
    }
    if ((flags & ~SEG_FLAGS_KNOWN) != 0) {
        return set_error(wal, KVWAL_ECORRUPT, 0, rp->seg->name, 1, rp->off,
                         "segment header flags 0x%x are not known (known: 0x%x)", flags,
                         SEG_FLAGS_KNOWN);
    }
    if (get_le64(pl + 16) != rp->seg->seq || get_le64(pl + 24) != rp->seg->first_index) {
        return replay_corrupt(wal, rp, "segment header does not match its file name");
    }
    return 0;
}

/* Scan segment k (already in wal->segs with its fd open). */
static int recover_segment(struct kvwal *wal, size_t k, struct scan_buf *sb) {
    struct segment *s = &wal->segs[k];
    int is_last = k + 1 == wal->nsegs;
    struct stat st;
    if (fstat(s->fd, &st) != 0) {
        return set_error(wal, errno, errno, s->name, 0, 0, "fstat failed: %s", strerror(errno));
    }
    if ((st.st_mode & 077) != 0) (void)fchmod(s->fd, st.st_mode & FILE_MODE);
    uint64_t size = (uint64_t)st.st_size;
    s->size = size;
    if (size > sb->cap) {
        free(sb->data);
        sb->data = malloc(size);
        sb->cap = sb->data != NULL ? (size_t)size : 0;
        if (sb->data == NULL) {
            return set_error(wal, ENOMEM, ENOMEM, s->name, 0, 0, "out of memory");
        }
    }
    uint8_t *buf = sb->data;
    int err = pread_all(s->fd, buf, (size_t)size, 0);
    if (err != 0) {
        return set_error(wal, err, err, s->name, 0, 0, "read failed: %s", strerror(err));
    }
    wal->recovery.segments++;
    wal->recovery.bytes_scanned += size;

    struct replay rp = {.seg = s, .off = 0};
    int rc = 0;
    uint64_t off = 0;
    uint32_t len = 0;
    uint8_t type = 0;
    int st_parse = rec_parse(wal->flags, buf, size, s->seq, 0, &len, &type);
    if (st_parse == PARSE_OK && type == REC_SEGMENT) {
        const uint8_t *pl = buf + HDR_BYTES;
        rc = segment_header_check(wal, &rp, pl);
        if (rc != 0) return rc;
        rp.version = get_le32(pl + 8);
        wal->recovery.records++;
        off = rec_bytes(len);
        for (;;) {
            st_parse = rec_parse(wal->flags, buf, size, s->seq, off, &len, &type);
            if (st_parse != PARSE_OK) break;
            rp.off = off;
            rc = replay_record(wal, &rp, buf + off, len, type);
            if (rc != 0) {
                    return rc == ENOMEM ? set_error(wal, ENOMEM, ENOMEM, NULL, 0, 0, "out of memory")
                                    : rc;
            }
            wal->recovery.records++;
            off += rec_bytes(len);
        }
    }
    /* The records stop at `off`. Decide between a clean end, a torn tail and corruption. */
    rp.off = off;
    if (off == 0) {
        /* A segment gets its name only once its preamble is durable (FORMAT.md §5), so a bad
         * header is damage, never a crash. */
        return replay_corrupt(wal, &rp, "damaged segment header");
    }
    uint64_t end = nonzero_end(buf, off, size);
    if (end > off) {
        /* Only the newest segment can hold unsynced writes (rule 4), so only there can a
         * never-written page be a power cut's hole rather than damage. */
        uint64_t next = valid_record_after(wal->flags, buf, size, s->seq, off);
        int hole = is_last && next != 0 && unwritten_page_between(buf, off, next);
        if (next != 0 && !hole) {
            return replay_corrupt(wal, &rp, "damaged record followed by valid records");
        }
        if (!is_last) {
            return replay_corrupt(wal, &rp, "damaged record in an older segment");
        }
    }
    uint64_t cut = off;
    if (rp.batch_open) {
        /* An overwrite batch a crash left unfinished (FORMAT.md §6 rule 5): void. Its cut never
         * happened and its entries are dropped, so the older entries stay; its records go with
         * the torn tail, so that later appends never follow them. */
        rp.off = rp.batch_off;
        if (!is_last) {
            return replay_corrupt(wal, &rp, "unfinished overwrite batch in an older segment");
        }
        cut = rp.batch_off;
        end = nonzero_end(buf, cut, size);
        wal->recovery.torn_batch_first = rp.batch_cut + 1;
        wal->recovery.torn_batch_last = rp.batch_last;
        rp.batch_open = 0;
        rp.batch_held = 0;
    }
    if (end > cut) {
        /* A torn tail: nothing valid after it, in the newest segment. */
        wal->recovery.torn = 1;
        wal->recovery.torn_offset = cut;
        wal->recovery.torn_bytes = end - cut;
        snprintf(wal->recovery.torn_path, sizeof wal->recovery.torn_path, "%s/%s", wal->dir,
                 s->name);
        err = zero_range(wal, s->fd, cut, end);
        if (err != 0) {
            wal->failed = 1;
            return set_error(wal, KVWAL_EFAILED, err, s->name, 1, cut,
                             "cutting a torn tail failed: %s", strerror(err));
        }
    }
    if (is_last) wal->write_off = cut;
    return 0;
}

struct name_entry {
    uint64_t seq, first;
};

static int name_cmp(const void *a, const void *b) {
    const struct name_entry *x = a, *y = b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* List the segment files of the directory, sorted by seq. */
static int list_segments(struct kvwal *wal, struct name_entry **out, size_t *out_n) {
    int fd = dup(wal->dirfd);
    if (fd < 0) return errno;
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        int err = errno;
        close(fd);
        return err;
    }
    rewinddir(d);
    struct name_entry *v = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    int err = 0;
    while ((de = readdir(d)) != NULL) {
        struct name_entry e;
        if (!seg_parse_name(de->d_name, &e.seq, &e.first)) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            struct name_entry *nv = realloc(v, cap * sizeof *nv);
            if (nv == NULL) {
                err = ENOMEM;
                break;
            }
            v = nv;
        }
        v[n++] = e;
    }
    closedir(d);
    if (err != 0) {
        free(v);
        return err;
    }
    qsort(v, n, sizeof *v, name_cmp);
    *out = v;
    *out_n = n;
    return 0;
}

static int recover(struct kvwal *wal) {
    struct name_entry *names = NULL;
    size_t n = 0;
    int err = list_segments(wal, &names, &n);
    if (err != 0) return set_error(wal, err, err, NULL, 0, 0, "listing the log directory failed");
    for (size_t k = 0; k < n; k++) {
        struct segment s = {.seq = names[k].seq, .first_index = names[k].first, .fd = -1};
        seg_name(s.name, s.seq, s.first_index);
        if (k > 0 && names[k].seq != names[k - 1].seq + 1) {
            free(names);
            return set_error(wal, KVWAL_ECORRUPT, 0, s.name, 1, 0,
                             "segment %llu is missing before this one",
                             (unsigned long long)(names[k - 1].seq + 1));
        }
        s.fd = openat(wal->dirfd, s.name, O_RDWR | O_CLOEXEC);
        if (s.fd < 0 || segs_push(wal, &s) != 0) {
            err = s.fd < 0 ? errno : ENOMEM;
            if (s.fd >= 0) close(s.fd);
            free(names);
            return set_error(wal, err, err, s.name, 0, 0, "opening a segment failed: %s",
                             strerror(err));
        }
    }
    free(names);
    /* Replay starts from scratch: the first segment's preamble sets the snapshot. */
    ents_clear(wal, 1);
    struct scan_buf sb = {NULL, 0};
    for (size_t k = 0; k < wal->nsegs; k++) {
        int rc = recover_segment(wal, k, &sb);
        if (rc != 0) {
            free(sb.data);
            return rc;
        }
    }
    free(sb.data);
    if (wal->nsegs > 0 && wal->base != wal->snap_index + 1) {
        return set_error(wal, KVWAL_ECORRUPT, 0, wal->segs[0].name, 1, 0,
                         "entries %llu..%llu are missing", (unsigned long long)(wal->snap_index + 1),
                         (unsigned long long)(wal->base - 1));
    }
    return 0;
}

/* ---- Life cycle ---------------------------------------------------------------------------- */

int kvwal_log_create(kvwal_t **out) {
    struct kvwal *wal = calloc(1, sizeof *wal);
    if (wal == NULL) return ENOMEM;
    pthread_mutex_init(&wal->mu, NULL);
    pthread_cond_init(&wal->writer_cv, NULL);
    pthread_cond_init(&wal->sync_cv, NULL);
    pthread_cond_init(&wal->prep_cv, NULL);
    wal->dirfd = -1;
    wal->prep_fd = -1;
    wal->prep_retry_ms = KVWAL_PREPARE_RETRY_MS_DEFAULT;
    atomic_init(&wal->prep_abort, 0);
    wal->base = 1;
    *out = wal;
    return 0;
}

static int fsync_parent(const char *dir) {
    char *copy = strdup(dir);
    if (copy == NULL) return ENOMEM;
    char *slash = strrchr(copy, '/');
    const char *parent = ".";
    if (slash == copy) {
        parent = "/";
    } else if (slash != NULL) {
        *slash = '\0';
        parent = copy;
    }
    int fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int err = 0;
    if (fd < 0 || fsync(fd) != 0) err = errno;
    if (fd >= 0) close(fd);
    free(copy);
    return err;
}

int kvwal_log_open(kvwal_t *wal, const char *dir, uint64_t segment_bytes, unsigned flags) {
    error_clear();
    if (wal->opened || wal->dir != NULL) return KVWAL_EINVAL;
    if (segment_bytes < KVWAL_SEGMENT_BYTES_MIN ||
        (flags & ~(KVWAL_FLAG_NO_ZERO_FILL | KVWAL_FLAG_PORTABLE_CRC)) != 0) {
        return set_error(wal, KVWAL_EINVAL, 0, NULL, 0, 0, "bad segment_bytes or flags");
    }
    wal->segment_bytes = (segment_bytes + 4095u) & ~(uint64_t)4095u;
    wal->flags = flags;
    wal->dir = strdup(dir);
    if (wal->dir == NULL) return ENOMEM;

    if (mkdir(dir, DIR_MODE) == 0) {
        int err = fsync_parent(dir);
        if (err != 0) return set_error(wal, err, err, NULL, 0, 0, "fsync of the parent failed");
    } else if (errno != EEXIST) {
        int err = errno;
        return set_error(wal, err, err, NULL, 0, 0, "mkdir failed: %s", strerror(err));
    }
    wal->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (wal->dirfd < 0) {
        int err = errno;
        return set_error(wal, err, err, NULL, 0, 0, "open failed: %s", strerror(err));
    }
    private_mode(wal->dirfd, DIR_MODE);
    if (flock(wal->dirfd, LOCK_EX | LOCK_NB) != 0) {
        int err = errno == EWOULDBLOCK ? EBUSY : errno;
        return set_error(wal, err, err, NULL, 0, 0, "the log is locked by another handle");
    }
    if (unlinkat(wal->dirfd, TMP_NAME, 0) != 0 && errno != ENOENT) {
        int err = errno;
        return set_error(wal, err, err, TMP_NAME, 0, 0, "removing a stale temporary failed");
    }

    int rc = recover(wal);
    if (rc != 0) return rc;

    if (wal->nsegs == 0) {
        /* A new log. Its first segment is not zero-filled, so that creating a log stays
         * instant (FORMAT.md §1). */
        int fd = prepare_file(wal->dirfd, wal->segment_bytes, 0, &wal->prep_abort);
        if (fd < 0) {
            return set_error(wal, -fd, -fd, TMP_NAME, 0, 0, "creating the first segment failed");
        }
        rc = segment_install(wal, fd, wal->segment_bytes, 1, 1, 0);
        if (rc != 0) return rc;
    }
    wal->durable = wal->appended;

    int err = pthread_create(&wal->prep_thread, NULL, prep_main, wal);
    if (err != 0) return set_error(wal, err, err, NULL, 0, 0, "starting the helper thread");
    wal->prep_started = 1;
    wal->opened = 1;
    pthread_mutex_lock(&wal->mu);
    prep_maybe_start(wal);
    pthread_mutex_unlock(&wal->mu);
    return 0;
}

int kvwal_log_close(kvwal_t *wal) {
    if (wal == NULL) return 0;
    int first_err = 0;
    pthread_mutex_lock(&wal->mu);
    while (wal->syncing) pthread_cond_wait(&wal->sync_cv, &wal->mu);
    wal->opened = 0;
    wal->prep_stop = 1;
    atomic_store(&wal->prep_abort, 1);
    pthread_cond_broadcast(&wal->prep_cv);
    pthread_mutex_unlock(&wal->mu);
    if (wal->prep_started) pthread_join(wal->prep_thread, NULL);
    if (wal->prep_fd >= 0) {
        close(wal->prep_fd);
        unlinkat(wal->dirfd, TMP_NAME, 0);
    }
    for (size_t k = 0; k < wal->nsegs; k++) {
        if (wal->segs[k].fd >= 0 && close(wal->segs[k].fd) != 0 && first_err == 0) {
            first_err = errno;
        }
    }
    if (wal->dirfd >= 0) close(wal->dirfd); /* also releases the flock */
    free(wal->segs);
    free(wal->ents);
    free(wal->pend);
    free(wal->frame_offs);
    free(wal->frame_lens);
    free(wal->scratch);
    free(wal->snap_conf);
    free(wal->dir);
    pthread_cond_destroy(&wal->prep_cv);
    pthread_cond_destroy(&wal->sync_cv);
    pthread_cond_destroy(&wal->writer_cv);
    pthread_mutex_destroy(&wal->mu);
    free(wal);
    return first_err;
}

/* ---- Introspection and tests --------------------------------------------------------------- */

int kvwal_log_stats(kvwal_t *wal, kvwal_stats_t *out) {
    pthread_mutex_lock(&wal->mu);
    *out = wal->stats;
    out->appended_position = wal->appended;
    out->durable_position = wal->durable;
    out->segment_count = wal->nsegs;
    pthread_mutex_unlock(&wal->mu);
    return 0;
}

int kvwal_log_recovery(kvwal_t *wal, kvwal_recovery_t *out) {
    pthread_mutex_lock(&wal->mu);
    *out = wal->recovery;
    pthread_mutex_unlock(&wal->mu);
    return 0;
}

int kvwal_log_error(kvwal_t *wal, kvwal_error_t *out) {
    pthread_mutex_lock(&wal->mu);
    *out = wal->poison_cause;
    pthread_mutex_unlock(&wal->mu);
    return 0;
}

int kvwal_log_set_prepare_retry(kvwal_t *wal, uint32_t retry_ms) {
    pthread_mutex_lock(&wal->mu);
    wal->prep_retry_ms = retry_ms;
    pthread_mutex_unlock(&wal->mu);
    return 0;
}

int kvwal_log_inject_fault(kvwal_t *wal, int kind, uint64_t skip, int err,
                           uint64_t partial_bytes) {
    if (kind < KVWAL_FAULT_WRITE || kind > KVWAL_FAULT_PREPARE || err < 0) return KVWAL_EINVAL;
    pthread_mutex_lock(&wal->mu);
    wal->faults[kind].err = err;
    wal->faults[kind].skip = skip;
    wal->faults[kind].partial = partial_bytes;
    pthread_mutex_unlock(&wal->mu);
    return 0;
}
