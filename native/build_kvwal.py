"""cffi build script for `kvstore._kvwal` (out-of-line API mode).

setup.py names it in `cffi_modules`, so `pip install -e .` compiles the extension. The cdef below
mirrors native/kvwal.h; constants are declared as `...` so the C compiler supplies their values.
"""

from __future__ import annotations

from cffi import FFI

# Relative paths keep setuptools happy (it refuses absolute source paths in some modes); the
# build runs from the project root.
SOURCES = ["native/kvwal.c", "native/crc32c.c"]

CDEF = """
#define KVWAL_ECORRUPT ...
#define KVWAL_ETORN ...
#define KVWAL_EFAILED ...
#define KVWAL_ECOMPACTED ...
#define KVWAL_EUNAVAILABLE ...
#define KVWAL_EINVAL ...
#define KVWAL_ETOOBIG ...
#define KVWAL_ECLOSED ...
#define KVWAL_ERANGE ...
#define KVWAL_RECORD_BYTES_MAX ...
#define KVWAL_VOTE_BYTES_MAX ...
#define KVWAL_SEGMENT_BYTES_MIN ...
#define KVWAL_PATH_BYTES_MAX ...
#define KVWAL_FLAG_NO_ZERO_FILL ...
#define KVWAL_FLAG_PORTABLE_CRC ...
#define KVWAL_FAULT_WRITE ...
#define KVWAL_FAULT_SYNC ...
#define KVWAL_FAULT_PREPARE ...

typedef struct kvwal kvwal_t;

typedef struct kvwal_hard_state {
    uint64_t term;
    uint64_t commit;
    size_t vote_len;
    uint8_t vote[...];
} kvwal_hard_state_t;

typedef struct kvwal_batch {
    size_t count;
    uint64_t *terms;
    uint64_t *offsets;
    uint8_t *types;
    uint8_t *data;
    size_t data_len;
    ...;
} kvwal_batch_t;

typedef struct kvwal_error {
    int code;
    int sys_errno;
    int has_offset;
    uint64_t offset;
    char path[...];
    char message[...];
} kvwal_error_t;

typedef struct kvwal_recovery {
    uint64_t segments;
    uint64_t records;
    uint64_t bytes_scanned;
    int torn;
    uint64_t torn_offset;
    uint64_t torn_bytes;
    char torn_path[...];
    uint64_t torn_batch_first;
    uint64_t torn_batch_last;
} kvwal_recovery_t;

typedef struct kvwal_stats {
    uint64_t appended_position;
    uint64_t durable_position;
    uint64_t append_calls;
    uint64_t records_appended;
    uint64_t sync_calls;
    uint64_t fdatasyncs;
    uint64_t segments_created;
    uint64_t segments_deleted;
    uint64_t segment_count;
    uint64_t rotation_waits;
} kvwal_stats_t;

uint32_t kvwal_crc32c(uint32_t crc, const uint8_t *buf, size_t len);
uint32_t kvwal_crc32c_portable(uint32_t crc, const uint8_t *buf, size_t len);
uint32_t kvwal_crc32c_hw(uint32_t crc, const uint8_t *buf, size_t len);
int kvwal_crc32c_hw_available(void);
const char *kvwal_strerror(int code);

int kvwal_log_create(kvwal_t **out);
int kvwal_log_open(kvwal_t *wal, const char *dir, uint64_t segment_bytes, unsigned flags);
int kvwal_log_close(kvwal_t *wal);
int kvwal_log_append(kvwal_t *wal, size_t count, const uint64_t *indexes, const uint64_t *terms,
                     const uint8_t *types, const uint32_t *lengths, const uint8_t *data,
                     size_t data_len, const kvwal_hard_state_t *hard_state,
                     uint64_t *out_position);
int kvwal_log_append_msgpack(kvwal_t *wal, size_t count, const uint64_t *indexes,
                             const uint64_t *terms, const uint8_t *types, const uint8_t *packed,
                             size_t packed_len, const kvwal_hard_state_t *hard_state,
                             uint64_t *out_position);
int kvwal_log_truncate_after(kvwal_t *wal, uint64_t index, uint64_t *out_position);
int kvwal_log_sync(kvwal_t *wal);
int kvwal_log_sync_to(kvwal_t *wal, uint64_t position);
int kvwal_log_compact_through(kvwal_t *wal, uint64_t index, uint64_t term, const uint8_t *conf,
                              size_t conf_len);
int kvwal_log_install_snapshot(kvwal_t *wal, uint64_t index, uint64_t term, const uint8_t *conf,
                               size_t conf_len);
int kvwal_log_entries(kvwal_t *wal, uint64_t lo, uint64_t hi, uint64_t max_bytes,
                      kvwal_batch_t *out);
void kvwal_batch_free(kvwal_batch_t *batch);
int kvwal_log_term(kvwal_t *wal, uint64_t index, uint64_t *out_term);
int kvwal_log_first_index(kvwal_t *wal, uint64_t *out_index);
int kvwal_log_last_index(kvwal_t *wal, uint64_t *out_index);
int kvwal_log_hard_state(kvwal_t *wal, kvwal_hard_state_t *out);
int kvwal_log_snapshot(kvwal_t *wal, uint64_t *out_index, uint64_t *out_term, uint8_t *conf,
                       size_t conf_cap, size_t *out_conf_len);
int kvwal_log_stats(kvwal_t *wal, kvwal_stats_t *out);
int kvwal_log_recovery(kvwal_t *wal, kvwal_recovery_t *out);
int kvwal_log_error(kvwal_t *wal, kvwal_error_t *out);
int kvwal_log_inject_fault(kvwal_t *wal, int kind, uint64_t skip, int err,
                           uint64_t partial_bytes);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "kvstore._kvwal",
    '#include "kvwal.h"',
    sources=SOURCES,
    include_dirs=["native"],
    extra_compile_args=[
        "-std=c11",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-O2",
        "-pthread",
    ],
    extra_link_args=["-pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
