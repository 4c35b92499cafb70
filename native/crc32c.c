/*
 * CRC32C (Castagnoli, reflected polynomial 0x82F63B78) for the redo log.
 *
 * Two implementations with one result:
 *  - portable: slicing-by-8 over tables built once (pthread_once), 8 bytes per step;
 *  - SSE4.2: the crc32 instruction, compiled with a target attribute so that the rest of the
 *    library needs no -msse4.2 and still runs on CPUs without it. The CPU is checked at run time.
 */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "kvwal.h"

#define CRC32C_POLY 0x82F63B78u

/* Library-internal (declared again in kvwal.c, not part of the public header): the CRC32C of n
 * independent buffers, crcs[k] extended with bufs[k][0 .. lens[k]); and the CRC32C of the 16
 * bytes le64(a) || le64(b) (a record's seed). */
void kvwal__crc32c_many(size_t n, const uint8_t *const *bufs, const size_t *lens, uint32_t *crcs,
                        int portable);
uint32_t kvwal__crc32c_u64x2(uint64_t a, uint64_t b, int portable);

/* tables[k][b] = CRC of byte b followed by k zero bytes. Written once, then only read. */
static uint32_t crc_tables[8][256];
static pthread_once_t crc_tables_once = PTHREAD_ONCE_INIT;

static void crc_tables_build(void) {
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = b;
        for (int bit = 0; bit < 8; bit++) {
            c = (c & 1u) ? (c >> 1) ^ CRC32C_POLY : c >> 1;
        }
        crc_tables[0][b] = c;
    }
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = crc_tables[0][b];
        for (int k = 1; k < 8; k++) {
            c = (c >> 8) ^ crc_tables[0][c & 0xFFu];
            crc_tables[k][b] = c;
        }
    }
}

static inline uint64_t load_le64(const uint8_t *p) {
    /* Byte-wise so that unaligned input is fine and the result does not depend on host order. */
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
           (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 |
           (uint64_t)p[7] << 56;
}

uint32_t kvwal_crc32c_portable(uint32_t crc, const uint8_t *buf, size_t len) {
    pthread_once(&crc_tables_once, crc_tables_build);
    uint32_t c = ~crc;
    while (len >= 8) {
        uint64_t w = load_le64(buf) ^ c;
        c = crc_tables[7][w & 0xFF] ^ crc_tables[6][(w >> 8) & 0xFF] ^
            crc_tables[5][(w >> 16) & 0xFF] ^ crc_tables[4][(w >> 24) & 0xFF] ^
            crc_tables[3][(w >> 32) & 0xFF] ^ crc_tables[2][(w >> 40) & 0xFF] ^
            crc_tables[1][(w >> 48) & 0xFF] ^ crc_tables[0][w >> 56];
        buf += 8;
        len -= 8;
    }
    while (len--) {
        c = (c >> 8) ^ crc_tables[0][(c ^ *buf++) & 0xFF];
    }
    return ~c;
}

/* The CRC of a and b laid out little-endian, one after the other (what the crc32 instruction
 * reads from memory on x86). */
static uint32_t crc_u64x2_portable(uint64_t a, uint64_t b) {
    uint8_t buf[16];
    for (int i = 0; i < 8; i++) {
        buf[i] = (uint8_t)(a >> (8 * i));
        buf[8 + i] = (uint8_t)(b >> (8 * i));
    }
    return kvwal_crc32c_portable(0, buf, sizeof buf);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define KVWAL_HAVE_SSE42 1
#include <nmmintrin.h>

/* The raw (not inverted) CRC update with the crc32 instruction. */
__attribute__((target("sse4.2"))) static uint32_t crc_raw_sse42(uint32_t crc, const uint8_t *buf,
                                                                size_t len) {
    uint64_t c = crc;
    /* Align big buffers to 8 bytes first: unaligned 8-byte loads are legal on x86 but slower
     * across cache lines. Small ones are not worth the byte loop. */
    while (len >= 256 && ((uintptr_t)buf & 7u) != 0) {
        c = _mm_crc32_u8((uint32_t)c, *buf++);
        len--;
    }
    /* The crc32 chain is serial (3-cycle latency): several GB/s on one buffer. Many small
     * buffers go through crc_many_sse42 instead, which overlaps three chains. */
    while (len >= 32) {
        uint64_t w0, w1, w2, w3;
        memcpy(&w0, buf, 8);
        memcpy(&w1, buf + 8, 8);
        memcpy(&w2, buf + 16, 8);
        memcpy(&w3, buf + 24, 8);
        c = _mm_crc32_u64(c, w0);
        c = _mm_crc32_u64(c, w1);
        c = _mm_crc32_u64(c, w2);
        c = _mm_crc32_u64(c, w3);
        buf += 32;
        len -= 32;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, buf, 8);
        c = _mm_crc32_u64(c, w);
        buf += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    if (len >= 4) {
        uint32_t w;
        memcpy(&w, buf, 4);
        c32 = _mm_crc32_u32(c32, w);
        buf += 4;
        len -= 4;
    }
    while (len--) {
        c32 = _mm_crc32_u8(c32, *buf++);
    }
    return c32;
}

static uint32_t crc32c_sse42(uint32_t crc, const uint8_t *buf, size_t len) {
    return ~crc_raw_sse42(~crc, buf, len);
}

/* Three independent buffers in lockstep, so the CPU runs their crc32 chains in parallel. */
__attribute__((target("sse4.2"))) static void crc_three_sse42(const uint8_t *const *bufs,
                                                              const size_t *lens,
                                                              uint32_t *crcs) {
    const uint8_t *a = bufs[0], *b = bufs[1], *c = bufs[2];
    size_t common = lens[0];
    if (lens[1] < common) common = lens[1];
    if (lens[2] < common) common = lens[2];
    common &= ~(size_t)7;
    uint64_t x = (uint32_t)~crcs[0], y = (uint32_t)~crcs[1], z = (uint32_t)~crcs[2];
    for (size_t i = 0; i < common; i += 8) {
        uint64_t wa, wb, wc;
        memcpy(&wa, a + i, 8);
        memcpy(&wb, b + i, 8);
        memcpy(&wc, c + i, 8);
        x = _mm_crc32_u64(x, wa);
        y = _mm_crc32_u64(y, wb);
        z = _mm_crc32_u64(z, wc);
    }
    crcs[0] = ~crc_raw_sse42((uint32_t)x, a + common, lens[0] - common);
    crcs[1] = ~crc_raw_sse42((uint32_t)y, b + common, lens[1] - common);
    crcs[2] = ~crc_raw_sse42((uint32_t)z, c + common, lens[2] - common);
}

__attribute__((target("sse4.2"))) static uint32_t seed_sse42(uint64_t a, uint64_t b) {
    return ~(uint32_t)_mm_crc32_u64(_mm_crc32_u64(0xFFFFFFFFu, a), b);
}

uint32_t kvwal__crc32c_u64x2(uint64_t a, uint64_t b, int portable) {
    /* The crc32 instruction reads the u64 in memory order, i.e. little-endian on x86. */
    if (!portable && __builtin_cpu_supports("sse4.2")) return seed_sse42(a, b);
    return crc_u64x2_portable(a, b);
}

void kvwal__crc32c_many(size_t n, const uint8_t *const *bufs, const size_t *lens, uint32_t *crcs,
                        int portable) {
    size_t k = 0;
    if (!portable && __builtin_cpu_supports("sse4.2")) {
        for (; k + 3 <= n; k += 3) crc_three_sse42(bufs + k, lens + k, crcs + k);
        for (; k < n; k++) crcs[k] = crc32c_sse42(crcs[k], bufs[k], lens[k]);
        return;
    }
    for (; k < n; k++) crcs[k] = kvwal_crc32c_portable(crcs[k], bufs[k], lens[k]);
}

int kvwal_crc32c_hw_available(void) {
    return __builtin_cpu_supports("sse4.2") ? 1 : 0;
}

uint32_t kvwal_crc32c_hw(uint32_t crc, const uint8_t *buf, size_t len) {
    if (!kvwal_crc32c_hw_available()) {
        return 0;
    }
    return crc32c_sse42(crc, buf, len);
}

uint32_t kvwal_crc32c(uint32_t crc, const uint8_t *buf, size_t len) {
    if (__builtin_cpu_supports("sse4.2")) {
        return crc32c_sse42(crc, buf, len);
    }
    return kvwal_crc32c_portable(crc, buf, len);
}

#else /* no SSE4.2 path in this build */

int kvwal_crc32c_hw_available(void) {
    return 0;
}

uint32_t kvwal_crc32c_hw(uint32_t crc, const uint8_t *buf, size_t len) {
    (void)crc;
    (void)buf;
    (void)len;
    return 0;
}

uint32_t kvwal_crc32c(uint32_t crc, const uint8_t *buf, size_t len) {
    return kvwal_crc32c_portable(crc, buf, len);
}

uint32_t kvwal__crc32c_u64x2(uint64_t a, uint64_t b, int portable) {
    (void)portable;
    return crc_u64x2_portable(a, b);
}

void kvwal__crc32c_many(size_t n, const uint8_t *const *bufs, const size_t *lens, uint32_t *crcs,
                        int portable) {
    (void)portable;
    for (size_t k = 0; k < n; k++) crcs[k] = kvwal_crc32c_portable(crcs[k], bufs[k], lens[k]);
}

#endif
