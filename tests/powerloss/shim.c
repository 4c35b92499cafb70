/* Power-loss recorder: an LD_PRELOAD shim that logs every file operation under one directory.
 *
 * POWERLOSS_DIR names the directory (an absolute, resolved path) and POWERLOSS_LOG the log
 * file. Each operation on a file or directory under POWERLOSS_DIR is appended to the log as one
 * record (see image.py for the format), in the order the operations took effect:
 *
 * - data and size changes (write, pwrite, writev, pwritev, ftruncate, fallocate,
 *   posix_fallocate) are performed and recorded under one lock, so a change recorded before a
 *   sync's start completed before that sync began;
 * - fsync and fdatasync record a start (before the call) and an end (after it, with its result):
 *   a change is durable once a sync of its file that started after it has ended;
 * - opens (with O_CREAT, O_TRUNC, O_DSYNC), close, dup, rename, unlink, mkdir and rmdir are
 *   recorded for the namespace;
 * - a writable shared mmap, msync, sync, syncfs and sync_file_range are recorded as
 *   UNSUPPORTED: the image builder refuses a log it cannot model.
 *
 * Built by the tests with gcc (-shared -fPIC -ldl); never part of the product.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum {
    OP_OPEN = 1,
    OP_CLOSE = 2,
    OP_DUP = 3,
    OP_WRITE = 4,
    OP_TRUNCATE = 5,
    OP_FALLOCATE = 6,
    OP_RENAME = 7,
    OP_UNLINK = 8,
    OP_MKDIR = 9,
    OP_RMDIR = 10,
    OP_SYNC_BEGIN = 11,
    OP_SYNC_END = 12,
    OP_UNSUPPORTED = 13,
};

#pragma pack(push, 1)
struct record {
    uint32_t total_bytes; /* header + paths + data */
    uint32_t op;
    int32_t fd;
    int32_t flags;  /* open flags; fallocate mode; 1 for fdatasync */
    int64_t offset; /* write/fallocate offset; DUP: the old fd */
    int64_t length; /* bytes written; new size; fallocate length */
    int64_t result; /* OPEN: 1 if it created the file; SYNC_END: 0 or errno */
    uint64_t dev;
    uint64_t ino;
    uint32_t mode; /* st_mode of an opened file */
    uint32_t tid;
    uint32_t path_bytes;
    uint32_t path2_bytes;
};
#pragma pack(pop)

#define FDS_MAX 65536

struct tracked {
    uint8_t on;
    uint8_t dsync;
    uint8_t append;
    uint64_t dev, ino;
};

static struct tracked fds[FDS_MAX];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char watch[PATH_MAX];
static size_t watch_len;
static int log_fd = -1;
static pthread_once_t once = PTHREAD_ONCE_INIT;

#define REAL(name) real_##name
#define DECL(ret, name, ...)                                                                       \
    static ret (*real_##name)(__VA_ARGS__);                                                        \
    static void load_##name(void) {                                                                \
        if (!real_##name) real_##name = dlsym(RTLD_NEXT, #name);                                   \
    }

DECL(int, openat, int, const char *, int, ...)
DECL(int, close, int)
DECL(int, closedir, DIR *)
DECL(int, dup, int)
DECL(int, dup2, int, int)
DECL(int, dup3, int, int, int)
DECL(ssize_t, write, int, const void *, size_t)
DECL(ssize_t, pwrite, int, const void *, size_t, off_t)
DECL(ssize_t, pwrite64, int, const void *, size_t, off_t)
DECL(ssize_t, writev, int, const struct iovec *, int)
DECL(ssize_t, pwritev, int, const struct iovec *, int, off_t)
DECL(ssize_t, pwritev64, int, const struct iovec *, int, off_t)
DECL(int, ftruncate, int, off_t)
DECL(int, ftruncate64, int, off_t)
DECL(int, fallocate, int, int, off_t, off_t)
DECL(int, fallocate64, int, int, off_t, off_t)
DECL(int, posix_fallocate, int, off_t, off_t)
DECL(int, posix_fallocate64, int, off_t, off_t)
DECL(int, renameat, int, const char *, int, const char *)
DECL(int, renameat2, int, const char *, int, const char *, unsigned int)
DECL(int, unlinkat, int, const char *, int)
DECL(int, mkdirat, int, const char *, mode_t)
DECL(int, fsync, int)
DECL(int, fdatasync, int)
DECL(int, msync, void *, size_t, int)
DECL(void *, mmap, void *, size_t, int, int, int, off_t)
DECL(void *, mmap64, void *, size_t, int, int, int, off_t)
DECL(int, syncfs, int)
DECL(void, sync, void)
DECL(int, sync_file_range, int, off_t, off_t, unsigned int)

static void init(void) {
    const char *dir = getenv("POWERLOSS_DIR");
    const char *path = getenv("POWERLOSS_LOG");
    if (!dir || !path) return;
    snprintf(watch, sizeof watch, "%s", dir);
    watch_len = strlen(watch);
    while (watch_len > 1 && watch[watch_len - 1] == '/') watch[--watch_len] = 0;
    log_fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC,
                          0600);
}

static int active(void) {
    pthread_once(&once, init);
    return log_fd >= 0;
}

static int under(const char *path) {
    return strncmp(path, watch, watch_len) == 0 &&
           (path[watch_len] == '/' || path[watch_len] == 0);
}

/* Absolute path of `name` relative to `dirfd` (or the cwd); 0 on failure. */
static int resolve(int dirfd, const char *name, char *out) {
    if (name[0] == '/') {
        snprintf(out, PATH_MAX, "%s", name);
        return 1;
    }
    char base[PATH_MAX / 2];
    if (dirfd == AT_FDCWD) {
        if (!getcwd(base, sizeof base)) return 0;
    } else {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
        ssize_t n = readlink(link, base, sizeof base - 1);
        if (n < 0) return 0;
        base[n] = 0;
    }
    snprintf(out, PATH_MAX, "%s/%s", base, name);
    return 1;
}

static int fd_path(int fd, char *out) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, PATH_MAX - 1);
    if (n < 0) return 0;
    out[n] = 0;
    return 1;
}

/* Append one record; the caller holds `lock`. */
static void emit(struct record *r, const char *path, const char *path2, const void *data,
                 size_t data_bytes) {
    size_t p1 = path ? strlen(path) : 0, p2 = path2 ? strlen(path2) : 0;
    size_t total = sizeof *r + p1 + p2 + data_bytes;
    r->total_bytes = (uint32_t)total;
    r->path_bytes = (uint32_t)p1;
    r->path2_bytes = (uint32_t)p2;
    r->tid = (uint32_t)syscall(SYS_gettid);
    char *buf = malloc(total);
    if (!buf) abort();
    memcpy(buf, r, sizeof *r);
    if (p1) memcpy(buf + sizeof *r, path, p1);
    if (p2) memcpy(buf + sizeof *r + p1, path2, p2);
    if (data_bytes) memcpy(buf + sizeof *r + p1 + p2, data, data_bytes);
    size_t done = 0;
    while (done < total) {
        ssize_t n = syscall(SYS_write, log_fd, buf + done, total - done);
        if (n <= 0) abort(); /* a recorder that loses records would lie */
        done += (size_t)n;
    }
    free(buf);
}

/* Is `fd` a tracked file, still the one it was opened as? (fd numbers are reused by sockets
 * and by closes the shim does not see, e.g. inside closedir). */
static int tracked(int fd) {
    if (fd < 0 || fd >= FDS_MAX || !fds[fd].on) return 0;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_dev != fds[fd].dev || st.st_ino != fds[fd].ino) {
        fds[fd].on = 0;
        return 0;
    }
    return 1;
}

static void after_open(int fd, int flags, int created) {
    if (fd < 0 || fd >= FDS_MAX) return;
    char path[PATH_MAX];
    struct stat st;
    if (!fd_path(fd, path) || !under(path) || fstat(fd, &st) != 0) {
        fds[fd].on = 0;
        return;
    }
    pthread_mutex_lock(&lock);
    fds[fd] = (struct tracked){1, (flags & (O_DSYNC | O_SYNC)) != 0, (flags & O_APPEND) != 0,
                               st.st_dev, st.st_ino};
    struct record r = {.op = OP_OPEN, .fd = fd, .flags = flags, .result = created,
                       .dev = st.st_dev, .ino = st.st_ino, .mode = st.st_mode};
    emit(&r, path, NULL, NULL, 0);
    pthread_mutex_unlock(&lock);
}

static int do_openat(int dirfd, const char *name, int flags, mode_t mode,
                     int (*real)(int, const char *, int, ...)) {
    if (!active()) return real(dirfd, name, flags, mode);
    if (!(flags & O_CREAT)) {
        int fd = real(dirfd, name, flags, mode);
        after_open(fd, flags, 0);
        return fd;
    }
    /* Under the lock, so "did it exist" and the create are one step for the recorder. */
    char path[PATH_MAX];
    if (!resolve(dirfd, name, path) || !under(path)) {
        int fd = real(dirfd, name, flags, mode);
        if (fd >= 0 && fd < FDS_MAX) fds[fd].on = 0;
        return fd;
    }
    pthread_mutex_lock(&lock);
    struct stat st;
    int existed = fstatat(dirfd, name, &st, 0) == 0;
    int fd = real(dirfd, name, flags, mode);
    pthread_mutex_unlock(&lock);
    after_open(fd, flags, fd >= 0 && !existed);
    return fd;
}

static mode_t va_mode(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

int open(const char *path, int flags, ...) {
    load_openat();
    va_list ap;
    va_start(ap, flags);
    mode_t mode = va_mode(flags, ap);
    va_end(ap);
    return do_openat(AT_FDCWD, path, flags, mode, real_openat);
}
int open64(const char *path, int flags, ...) {
    load_openat();
    va_list ap;
    va_start(ap, flags);
    mode_t mode = va_mode(flags, ap);
    va_end(ap);
    return do_openat(AT_FDCWD, path, flags, mode, real_openat);
}
int openat(int dirfd, const char *path, int flags, ...) {
    load_openat();
    va_list ap;
    va_start(ap, flags);
    mode_t mode = va_mode(flags, ap);
    va_end(ap);
    return do_openat(dirfd, path, flags, mode, real_openat);
}
int openat64(int dirfd, const char *path, int flags, ...) {
    load_openat();
    va_list ap;
    va_start(ap, flags);
    mode_t mode = va_mode(flags, ap);
    va_end(ap);
    return do_openat(dirfd, path, flags, mode, real_openat);
}
int __open_2(const char *path, int flags) {
    load_openat();
    return do_openat(AT_FDCWD, path, flags, 0, real_openat);
}
int __open64_2(const char *path, int flags) {
    load_openat();
    return do_openat(AT_FDCWD, path, flags, 0, real_openat);
}
int __openat_2(int dirfd, const char *path, int flags) {
    load_openat();
    return do_openat(dirfd, path, flags, 0, real_openat);
}
int __openat64_2(int dirfd, const char *path, int flags) {
    load_openat();
    return do_openat(dirfd, path, flags, 0, real_openat);
}
int creat(const char *path, mode_t mode) {
    load_openat();
    return do_openat(AT_FDCWD, path, O_WRONLY | O_CREAT | O_TRUNC, mode, real_openat);
}

static void forget(int fd, int op, int64_t arg) {
    if (!active() || fd < 0 || fd >= FDS_MAX || !fds[fd].on) return;
    pthread_mutex_lock(&lock);
    fds[fd].on = 0;
    struct record r = {.op = (uint32_t)op, .fd = fd, .offset = arg};
    emit(&r, NULL, NULL, NULL, 0);
    pthread_mutex_unlock(&lock);
}

int close(int fd) {
    load_close();
    forget(fd, OP_CLOSE, 0);
    return real_close(fd);
}

int closedir(DIR *dir) {
    load_closedir();
    forget(dirfd(dir), OP_CLOSE, 0);
    return real_closedir(dir);
}

static int after_dup(int old, int fd) {
    if (fd < 0 || fd >= FDS_MAX || !active()) return fd;
    if (!tracked(old)) {
        fds[fd].on = 0;
        return fd;
    }
    pthread_mutex_lock(&lock);
    fds[fd] = fds[old];
    struct record r = {.op = OP_DUP, .fd = fd, .offset = old, .dev = fds[old].dev,
                       .ino = fds[old].ino};
    emit(&r, NULL, NULL, NULL, 0);
    pthread_mutex_unlock(&lock);
    return fd;
}
int dup(int old) {
    load_dup();
    return after_dup(old, real_dup(old));
}
int dup2(int old, int new) {
    load_dup2();
    return after_dup(old, real_dup2(old, new));
}
int dup3(int old, int new, int flags) {
    load_dup3();
    return after_dup(old, real_dup3(old, new, flags));
}

/* Perform a positioned or current-position write of `data` under the lock and record it. */
static ssize_t record_write(int fd, const void *data, size_t len, int64_t offset, int positioned,
                            ssize_t (*perform)(void *), void *ctx) {
    (void)len; /* the bytes recorded are those the call reports written */
    pthread_mutex_lock(&lock);
    if (!positioned) {
        if (fds[fd].append) {
            struct stat st;
            offset = fstat(fd, &st) == 0 ? st.st_size : 0;
        } else {
            offset = lseek(fd, 0, SEEK_CUR);
        }
    }
    ssize_t n = perform(ctx);
    if (n > 0) {
        struct record r = {.op = OP_WRITE, .fd = fd, .offset = offset, .length = n,
                           .dev = fds[fd].dev, .ino = fds[fd].ino};
        emit(&r, NULL, NULL, data, (size_t)n);
        if (fds[fd].dsync) {
            /* O_DSYNC: this write is durable when it returns (a sync of its own range). */
            struct record b = {.op = OP_SYNC_BEGIN, .fd = fd, .flags = 2, .offset = offset,
                               .length = n, .dev = fds[fd].dev, .ino = fds[fd].ino};
            emit(&b, NULL, NULL, NULL, 0);
            struct record e = b;
            e.op = OP_SYNC_END;
            emit(&e, NULL, NULL, NULL, 0);
        }
    }
    pthread_mutex_unlock(&lock);
    return n;
}

struct write_args {
    int fd;
    const void *buf;
    size_t len;
    off_t off;
    const struct iovec *iov;
    int iovcnt;
    ssize_t (*fn)();
};
static ssize_t do_write(void *p) {
    struct write_args *a = p;
    return ((ssize_t(*)(int, const void *, size_t))a->fn)(a->fd, a->buf, a->len);
}
static ssize_t do_pwrite(void *p) {
    struct write_args *a = p;
    return ((ssize_t(*)(int, const void *, size_t, off_t))a->fn)(a->fd, a->buf, a->len, a->off);
}
static ssize_t do_writev(void *p) {
    struct write_args *a = p;
    return ((ssize_t(*)(int, const struct iovec *, int))a->fn)(a->fd, a->iov, a->iovcnt);
}
static ssize_t do_pwritev(void *p) {
    struct write_args *a = p;
    return ((ssize_t(*)(int, const struct iovec *, int, off_t))a->fn)(a->fd, a->iov, a->iovcnt,
                                                                      a->off);
}

ssize_t write(int fd, const void *buf, size_t len) {
    load_write();
    if (!active() || !tracked(fd)) return real_write(fd, buf, len);
    struct write_args a = {.fd = fd, .buf = buf, .len = len, .fn = (ssize_t(*)())real_write};
    return record_write(fd, buf, len, 0, 0, do_write, &a);
}

static ssize_t any_pwrite(ssize_t (*real)(int, const void *, size_t, off_t), int fd,
                          const void *buf, size_t len, off_t off) {
    if (!active() || !tracked(fd)) return real(fd, buf, len, off);
    struct write_args a = {.fd = fd, .buf = buf, .len = len, .off = off, .fn = (ssize_t(*)())real};
    return record_write(fd, buf, len, off, 1, do_pwrite, &a);
}
ssize_t pwrite(int fd, const void *buf, size_t len, off_t off) {
    load_pwrite();
    return any_pwrite(real_pwrite, fd, buf, len, off);
}
ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off) {
    load_pwrite64();
    return any_pwrite(real_pwrite64, fd, buf, len, off);
}

static char *gather(const struct iovec *iov, int n, size_t *len) {
    size_t total = 0;
    for (int i = 0; i < n; i++) total += iov[i].iov_len;
    char *buf = malloc(total ? total : 1);
    if (!buf) abort();
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        memcpy(buf + at, iov[i].iov_base, iov[i].iov_len);
        at += iov[i].iov_len;
    }
    *len = total;
    return buf;
}

ssize_t writev(int fd, const struct iovec *iov, int n) {
    load_writev();
    if (!active() || !tracked(fd)) return real_writev(fd, iov, n);
    size_t len;
    char *buf = gather(iov, n, &len);
    struct write_args a = {.fd = fd, .iov = iov, .iovcnt = n, .fn = (ssize_t(*)())real_writev};
    ssize_t r = record_write(fd, buf, len, 0, 0, do_writev, &a);
    free(buf);
    return r;
}

static ssize_t any_pwritev(ssize_t (*real)(int, const struct iovec *, int, off_t), int fd,
                           const struct iovec *iov, int n, off_t off) {
    if (!active() || !tracked(fd)) return real(fd, iov, n, off);
    size_t len;
    char *buf = gather(iov, n, &len);
    struct write_args a = {.fd = fd, .iov = iov, .iovcnt = n, .off = off,
                           .fn = (ssize_t(*)())real};
    ssize_t r = record_write(fd, buf, len, off, 1, do_pwritev, &a);
    free(buf);
    return r;
}
ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t off) {
    load_pwritev();
    return any_pwritev(real_pwritev, fd, iov, n, off);
}
ssize_t pwritev64(int fd, const struct iovec *iov, int n, off_t off) {
    load_pwritev64();
    return any_pwritev(real_pwritev64, fd, iov, n, off);
}

static int record_size(int fd, int op, int mode, int64_t off, int64_t len, int rc, int ok) {
    if (ok) {
        struct record r = {.op = (uint32_t)op, .fd = fd, .flags = mode, .offset = off,
                           .length = len, .dev = fds[fd].dev, .ino = fds[fd].ino};
        emit(&r, NULL, NULL, NULL, 0);
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

static int any_ftruncate(int (*real)(int, off_t), int fd, off_t len) {
    if (!active() || !tracked(fd)) return real(fd, len);
    pthread_mutex_lock(&lock);
    int rc = real(fd, len);
    return record_size(fd, OP_TRUNCATE, 0, 0, len, rc, rc == 0);
}
int ftruncate(int fd, off_t len) {
    load_ftruncate();
    return any_ftruncate(real_ftruncate, fd, len);
}
int ftruncate64(int fd, off_t len) {
    load_ftruncate64();
    return any_ftruncate(real_ftruncate64, fd, len);
}

static int any_fallocate(int (*real)(int, int, off_t, off_t), int fd, int mode, off_t off,
                         off_t len) {
    if (!active() || !tracked(fd)) return real(fd, mode, off, len);
    pthread_mutex_lock(&lock);
    int rc = real(fd, mode, off, len);
    return record_size(fd, OP_FALLOCATE, mode, off, len, rc, rc == 0);
}
int fallocate(int fd, int mode, off_t off, off_t len) {
    load_fallocate();
    return any_fallocate(real_fallocate, fd, mode, off, len);
}
int fallocate64(int fd, int mode, off_t off, off_t len) {
    load_fallocate64();
    return any_fallocate(real_fallocate64, fd, mode, off, len);
}

static int any_posix_fallocate(int (*real)(int, off_t, off_t), int fd, off_t off, off_t len) {
    if (!active() || !tracked(fd)) return real(fd, off, len);
    pthread_mutex_lock(&lock);
    int rc = real(fd, off, len);
    return record_size(fd, OP_FALLOCATE, 0, off, len, rc, rc == 0);
}
int posix_fallocate(int fd, off_t off, off_t len) {
    load_posix_fallocate();
    return any_posix_fallocate(real_posix_fallocate, fd, off, len);
}
int posix_fallocate64(int fd, off_t off, off_t len) {
    load_posix_fallocate64();
    return any_posix_fallocate(real_posix_fallocate64, fd, off, len);
}

/* A namespace change: performed and recorded under the lock. */
static int record_name_op(int op, int dirfd, const char *name, int dirfd2, const char *name2,
                          int (*perform)(void *), void *ctx) {
    char path[PATH_MAX], path2[PATH_MAX];
    int watched = active() && resolve(dirfd, name, path) &&
                  (!name2 || resolve(dirfd2, name2, path2)) &&
                  (under(path) || (name2 && under(path2)));
    if (!watched) return perform(ctx);
    pthread_mutex_lock(&lock);
    int rc = perform(ctx);
    if (rc == 0) {
        struct record r = {.op = (uint32_t)op};
        emit(&r, path, name2 ? path2 : NULL, NULL, 0);
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

struct name_args {
    int dirfd, dirfd2, flags;
    const char *name, *name2;
    mode_t mode;
    unsigned int rflags;
};
static int do_renameat2(void *p) {
    struct name_args *a = p;
    load_renameat2();
    if (a->rflags) return real_renameat2(a->dirfd, a->name, a->dirfd2, a->name2, a->rflags);
    load_renameat();
    return real_renameat(a->dirfd, a->name, a->dirfd2, a->name2);
}
static int do_unlinkat(void *p) {
    struct name_args *a = p;
    load_unlinkat();
    return real_unlinkat(a->dirfd, a->name, a->flags);
}
static int do_mkdirat(void *p) {
    struct name_args *a = p;
    load_mkdirat();
    return real_mkdirat(a->dirfd, a->name, a->mode);
}

int rename(const char *old, const char *new) {
    struct name_args a = {AT_FDCWD, AT_FDCWD, 0, old, new, 0, 0};
    return record_name_op(OP_RENAME, AT_FDCWD, old, AT_FDCWD, new, do_renameat2, &a);
}
int renameat(int d1, const char *old, int d2, const char *new) {
    struct name_args a = {d1, d2, 0, old, new, 0, 0};
    return record_name_op(OP_RENAME, d1, old, d2, new, do_renameat2, &a);
}
int renameat2(int d1, const char *old, int d2, const char *new, unsigned int flags) {
    struct name_args a = {d1, d2, 0, old, new, 0, flags};
    return record_name_op(flags ? OP_UNSUPPORTED : OP_RENAME, d1, old, d2, new, do_renameat2,
                          &a);
}
int unlink(const char *path) {
    struct name_args a = {AT_FDCWD, 0, 0, path, NULL, 0, 0};
    return record_name_op(OP_UNLINK, AT_FDCWD, path, 0, NULL, do_unlinkat, &a);
}
int unlinkat(int dirfd, const char *path, int flags) {
    struct name_args a = {dirfd, 0, flags, path, NULL, 0, 0};
    return record_name_op((flags & AT_REMOVEDIR) ? OP_RMDIR : OP_UNLINK, dirfd, path, 0, NULL,
                          do_unlinkat, &a);
}
int rmdir(const char *path) {
    struct name_args a = {AT_FDCWD, 0, AT_REMOVEDIR, path, NULL, 0, 0};
    return record_name_op(OP_RMDIR, AT_FDCWD, path, 0, NULL, do_unlinkat, &a);
}
int mkdir(const char *path, mode_t mode) {
    struct name_args a = {AT_FDCWD, 0, 0, path, NULL, mode, 0};
    return record_name_op(OP_MKDIR, AT_FDCWD, path, 0, NULL, do_mkdirat, &a);
}
int mkdirat(int dirfd, const char *path, mode_t mode) {
    struct name_args a = {dirfd, 0, 0, path, NULL, mode, 0};
    return record_name_op(OP_MKDIR, dirfd, path, 0, NULL, do_mkdirat, &a);
}

static int any_sync(int (*real)(int), int fd, int datasync) {
    if (!active() || !tracked(fd)) return real(fd);
    pthread_mutex_lock(&lock);
    struct record b = {.op = OP_SYNC_BEGIN, .fd = fd, .flags = datasync, .offset = 0,
                       .length = -1, .dev = fds[fd].dev, .ino = fds[fd].ino};
    emit(&b, NULL, NULL, NULL, 0);
    pthread_mutex_unlock(&lock);
    int rc = real(fd);
    int err = rc == 0 ? 0 : errno;
    pthread_mutex_lock(&lock);
    struct record e = b;
    e.op = OP_SYNC_END;
    e.result = err;
    emit(&e, NULL, NULL, NULL, 0);
    pthread_mutex_unlock(&lock);
    errno = err;
    return rc;
}
int fsync(int fd) {
    load_fsync();
    return any_sync(real_fsync, fd, 0);
}
int fdatasync(int fd) {
    load_fdatasync();
    return any_sync(real_fdatasync, fd, 1);
}

static void unsupported(const char *what, int fd) {
    pthread_mutex_lock(&lock);
    struct record r = {.op = OP_UNSUPPORTED, .fd = fd};
    emit(&r, what, NULL, NULL, 0);
    pthread_mutex_unlock(&lock);
}

static void *any_mmap(void *(*real)(void *, size_t, int, int, int, off_t), void *addr, size_t len,
                      int prot, int flags, int fd, off_t off) {
    if (active() && (prot & PROT_WRITE) && (flags & MAP_SHARED) && tracked(fd)) {
        char path[PATH_MAX];
        if (fd_path(fd, path)) unsupported(path, fd);
    }
    return real(addr, len, prot, flags, fd, off);
}
void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    load_mmap();
    return any_mmap(real_mmap, addr, len, prot, flags, fd, off);
}
void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    load_mmap64();
    return any_mmap(real_mmap64, addr, len, prot, flags, fd, off);
}
int msync(void *addr, size_t len, int flags) {
    load_msync();
    /* Only a writable shared map of a watched file matters, and that is refused at mmap. */
    return real_msync(addr, len, flags);
}
int syncfs(int fd) {
    load_syncfs();
    if (active()) unsupported("syncfs", fd);
    return real_syncfs(fd);
}
void sync(void) {
    load_sync();
    if (active()) unsupported("sync", -1);
    real_sync();
}
int sync_file_range(int fd, off_t off, off_t len, unsigned int flags) {
    load_sync_file_range();
    if (active() && tracked(fd)) unsupported("sync_file_range", fd);
    return real_sync_file_range(fd, off, len, flags);
}
