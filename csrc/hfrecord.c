/* hfrecord.c - libhfrecord.so: an LD_PRELOAD recorder of every malloc-family call.
 *
 *   HFRECORD_DIR=/some/dir LD_PRELOAD=libhfrecord.so program args...
 *
 * Each process image writes <pid>-<gen>.hfrec and <pid>-<gen>.maps into HFRECORD_DIR
 * (format: hfrecord.h); `hakmem-forensics record` sets this up and turns the logs into
 * traces. Without HFRECORD_DIR every call passes straight through.
 *
 * What it must never do: allocate (it lives inside malloc), take a lock that a caller of
 * malloc may hold, or change errno. Calls go to the next definition in the lookup order
 * (dlsym RTLD_NEXT: libc, or an allocator preloaded after this library), and dlsym's own
 * allocations during that lookup come from a static bootstrap arena.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <malloc.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "hfrecord.h"

#define EXPORT __attribute__((visibility("default")))
#define TLS __thread __attribute__((tls_model("initial-exec")))
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#define MAX_WINDOWS (1u << 16)          /* 192 GiB of records */
#define DIR_MAX 3072

EXPORT const uint32_t hfrec_version_const = HFREC_VERSION;

/* ------------------------------------------------------------------ the real allocator */

typedef void *(*malloc_fn)(size_t);
typedef void *(*calloc_fn)(size_t, size_t);
typedef void *(*realloc_fn)(void *, size_t);
typedef void *(*reallocarray_fn)(void *, size_t, size_t);
typedef void (*free_fn)(void *);
typedef void *(*memalign_fn)(size_t, size_t);
typedef int (*posix_memalign_fn)(void **, size_t, size_t);
typedef void *(*valloc_fn)(size_t);
typedef size_t (*usable_fn)(void *);

static struct {
    malloc_fn malloc;
    calloc_fn calloc;
    realloc_fn realloc;
    reallocarray_fn reallocarray;
    free_fn free;
    memalign_fn memalign;
    posix_memalign_fn posix_memalign;
    memalign_fn aligned_alloc;
    valloc_fn valloc;
    valloc_fn pvalloc;
    usable_fn usable;
} real;

enum { RESOLVE_NONE, RESOLVE_BUSY, RESOLVE_DONE };
static int g_resolve_state;

/* Bootstrap arena: what dlsym (or another thread, while dlsym runs) gets. Never freed. */
static char g_boot[1 << 20] __attribute__((aligned(64)));
static size_t g_boot_used;

static int is_boot(const void *p) {
    return (const char *)p >= g_boot && (const char *)p < g_boot + sizeof g_boot;
}

static void *boot_alloc(size_t n, size_t align) {
    if (align < 16) align = 16;
    size_t need = n + align + 16;
    if (need < n) return NULL;
    size_t start = __atomic_fetch_add(&g_boot_used, need, __ATOMIC_RELAXED);
    if (start + need > sizeof g_boot) {
        errno = ENOMEM;
        return NULL;
    }
    uintptr_t p = ((uintptr_t)(g_boot + start) + 16 + align - 1) & ~(uintptr_t)(align - 1);
    ((size_t *)p)[-1] = n;   /* the size, for realloc and malloc_usable_size */
    return (void *)p;          /* static memory starts zeroed and is never reused: calloc-ready */
}

static size_t boot_size(const void *p) { return ((const size_t *)p)[-1]; }

static TLS int t_resolving;

/* 1 when the real functions can be called; 0 while they are being looked up (then the
 * caller uses the bootstrap arena: never spin here, the resolver may need a lock the
 * caller holds). */
static int ensure_resolved(void) {
    int st = __atomic_load_n(&g_resolve_state, __ATOMIC_ACQUIRE);
    if (st == RESOLVE_DONE) return 1;
    if (st == RESOLVE_BUSY || t_resolving) return 0;
    int expected = RESOLVE_NONE;
    if (!__atomic_compare_exchange_n(&g_resolve_state, &expected, RESOLVE_BUSY, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE))
        return expected == RESOLVE_DONE;
    t_resolving = 1;
    real.malloc = (malloc_fn)dlsym(RTLD_NEXT, "malloc");
    real.calloc = (calloc_fn)dlsym(RTLD_NEXT, "calloc");
    real.realloc = (realloc_fn)dlsym(RTLD_NEXT, "realloc");
    real.reallocarray = (reallocarray_fn)dlsym(RTLD_NEXT, "reallocarray");
    real.free = (free_fn)dlsym(RTLD_NEXT, "free");
    real.memalign = (memalign_fn)dlsym(RTLD_NEXT, "memalign");
    real.posix_memalign = (posix_memalign_fn)dlsym(RTLD_NEXT, "posix_memalign");
    real.aligned_alloc = (memalign_fn)dlsym(RTLD_NEXT, "aligned_alloc");
    real.valloc = (valloc_fn)dlsym(RTLD_NEXT, "valloc");
    real.pvalloc = (valloc_fn)dlsym(RTLD_NEXT, "pvalloc");
    real.usable = (usable_fn)dlsym(RTLD_NEXT, "malloc_usable_size");
    t_resolving = 0;
    if (!real.malloc || !real.free || !real.calloc || !real.realloc) {
        static const char msg[] = "libhfrecord: cannot find the real malloc/free (dlsym RTLD_NEXT)\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
        _exit(127);
    }
    __atomic_store_n(&g_resolve_state, RESOLVE_DONE, __ATOMIC_RELEASE);
    return 1;
}

/* ------------------------------------------------------------------ the log */

enum { LOG_UNOPENED, LOG_OPEN, LOG_OFF };
static int g_log_state;
static int g_fd = -1, g_maps_fd = -1;
static hfrec_header *g_hdr;
static char *g_windows[MAX_WINDOWS];
static uint64_t g_file_size;
static uint64_t g_maps_off;
static unsigned long long g_adds_seen;
static pthread_mutex_t g_win_lock = PTHREAD_MUTEX_INITIALIZER;   /* opening, mapping windows */
static pthread_mutex_t g_snap_lock = PTHREAD_MUTEX_INITIALIZER;  /* maps snapshots */
static pthread_key_t g_key;
static int g_key_ok, g_atfork_done;
static uint32_t g_next_thread = 1;

static TLS int t_in_hook;       /* inside one of our functions: nested calls are the allocator's own */
static TLS uint32_t t_thread;   /* 1, 2, ... in the order threads first called */
static TLS uint32_t t_tid;

static void emit(uint8_t op, uint64_t ret, uint64_t a, uint64_t b, const void *site);
static void snapshot_maps(int force);

static size_t put_str(char *dst, size_t cap, size_t at, const char *s) {
    while (*s && at + 1 < cap) dst[at++] = *s++;
    dst[at < cap ? at : cap - 1] = '\0';
    return at;
}

static size_t put_u64(char *dst, size_t cap, size_t at, uint64_t v) {
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n && at + 1 < cap) dst[at++] = tmp[--n];
    dst[at < cap ? at : cap - 1] = '\0';
    return at;
}

static size_t log_path(char *dst, size_t cap, const char *dir, uint64_t pid, uint32_t gen, const char *ext) {
    size_t at = put_str(dst, cap, 0, dir);
    at = put_str(dst, cap, at, "/");
    at = put_u64(dst, cap, at, pid);
    at = put_str(dst, cap, at, "-");
    at = put_u64(dst, cap, at, gen);
    return put_str(dst, cap, at, ext);
}

static void read_small_file(const char *path, char *dst, size_t cap) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    size_t got = 0;
    while (got + 1 < cap) {
        ssize_t n = read(fd, dst + got, cap - 1 - got);
        if (n <= 0) break;
        got += (size_t)n;
    }
    dst[got] = '\0';
    close(fd);
}

static void on_thread_exit(void *value);
static void atfork_prepare(void);
static void atfork_parent(void);
static void atfork_child(void);

/* Under g_win_lock. 1 when the log is open. */
static int log_open_locked(void) {
    const char *dir = getenv("HFRECORD_DIR");
    if (!dir || !*dir || strlen(dir) >= DIR_MAX) return 0;
    char path[DIR_MAX + 64];
    uint64_t pid = (uint64_t)getpid();
    uint32_t gen;
    int fd = -1;
    for (gen = 0; gen < 10000; gen++) {
        log_path(path, sizeof path, dir, pid, gen, ".hfrec");
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd >= 0 || errno != EEXIST) break;
    }
    if (fd < 0) return 0;
    uint64_t size = HFREC_HEADER_SIZE + HFREC_WINDOW_SIZE;
    if (ftruncate(fd, (off_t)size) != 0) {
        close(fd);
        return 0;
    }
    void *h = mmap(NULL, HFREC_HEADER_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (h == MAP_FAILED) {
        close(fd);
        return 0;
    }
    log_path(path, sizeof path, dir, pid, gen, ".maps");
    int mfd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    hfrec_header *hdr = (hfrec_header *)h;
    memcpy(hdr->magic, HFREC_MAGIC, 8);
    hdr->version = HFREC_VERSION;
    hdr->record_size = HFREC_RECORD_SIZE;
    hdr->pid = (uint32_t)pid;
    hdr->ppid = (uint32_t)getppid();
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    hdr->start_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    hdr->generation = gen;
    hdr->records_offset = HFREC_HEADER_SIZE;
    hdr->pointer_size = sizeof(void *);
    hdr->page_size = (uint32_t)sysconf(_SC_PAGESIZE);
    hdr->window_size = HFREC_WINDOW_SIZE;
    ssize_t n = readlink("/proc/self/exe", hdr->exe, sizeof hdr->exe - 1);
    hdr->exe[n > 0 ? n : 0] = '\0';
    read_small_file("/proc/self/cmdline", hdr->cmdline, sizeof hdr->cmdline);
    g_fd = fd;
    g_maps_fd = mfd;
    g_file_size = size;
    g_maps_off = 0;
    g_adds_seen = 0;
    if (!g_key_ok) g_key_ok = pthread_key_create(&g_key, on_thread_exit) == 0;
    if (!g_atfork_done) g_atfork_done = pthread_atfork(atfork_prepare, atfork_parent, atfork_child) == 0;
    __atomic_store_n(&g_hdr, hdr, __ATOMIC_RELEASE);
    return 1;
}

static int log_open(void) {
    int st = __atomic_load_n(&g_log_state, __ATOMIC_ACQUIRE);
    if (st != LOG_UNOPENED) return st == LOG_OPEN;
    int opened = 0;
    pthread_mutex_lock(&g_win_lock);
    st = g_log_state;
    if (st == LOG_UNOPENED) {
        st = log_open_locked() ? LOG_OPEN : LOG_OFF;
        opened = st == LOG_OPEN;
        __atomic_store_n(&g_log_state, st, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&g_win_lock);
    if (opened) snapshot_maps(1);
    return st == LOG_OPEN;
}

static char *map_window(uint64_t w) {
    pthread_mutex_lock(&g_win_lock);
    char *base = g_windows[w];
    if (!base) {
        uint64_t end = HFREC_HEADER_SIZE + (w + 1) * (uint64_t)HFREC_WINDOW_SIZE;
        if (end > g_file_size) {
            /* grow ahead by a few windows: one ftruncate per 12 MiB of records */
            uint64_t want = end + 3 * (uint64_t)HFREC_WINDOW_SIZE;
            if (ftruncate(g_fd, (off_t)want) == 0) g_file_size = want;
            else if (ftruncate(g_fd, (off_t)end) == 0) g_file_size = end;
        }
        if (end <= g_file_size) {
            void *m = mmap(NULL, HFREC_WINDOW_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, g_fd,
                           (off_t)(HFREC_HEADER_SIZE + w * (uint64_t)HFREC_WINDOW_SIZE));
            if (m != MAP_FAILED) {
                base = (char *)m;
                __atomic_store_n(&g_windows[w], base, __ATOMIC_RELEASE);
                /* Windows far behind are done: drop their pages from this process (they stay
                 * in the file; a late writer would fault them back in, which is safe). */
                if (w >= 4 && g_windows[w - 4]) madvise(g_windows[w - 4], HFREC_WINDOW_SIZE, MADV_DONTNEED);
            }
        }
    }
    pthread_mutex_unlock(&g_win_lock);
    return base;
}

static hfrec_record *slot_at(uint64_t off) {
    uint64_t w = off / HFREC_WINDOW_SIZE;
    if (UNLIKELY(w >= MAX_WINDOWS)) return NULL;
    char *base = __atomic_load_n(&g_windows[w], __ATOMIC_ACQUIRE);
    if (UNLIKELY(!base)) base = map_window(w);
    return base ? (hfrec_record *)(base + off % HFREC_WINDOW_SIZE) : NULL;
}

static void thread_register(void) {
    t_thread = __atomic_fetch_add(&g_next_thread, 1, __ATOMIC_RELAXED);
    t_tid = (uint32_t)syscall(SYS_gettid);
    if (g_key_ok) pthread_setspecific(g_key, (void *)(uintptr_t)1);
}

static void emit(uint8_t op, uint64_t ret, uint64_t a, uint64_t b, const void *site) {
    if (UNLIKELY(__atomic_load_n(&g_log_state, __ATOMIC_ACQUIRE) != LOG_OPEN) && !log_open()) return;
    if (UNLIKELY(!t_thread)) thread_register();
    uint64_t off = __atomic_fetch_add(&g_hdr->tail, HFREC_RECORD_SIZE, __ATOMIC_RELAXED);
    hfrec_record *r = slot_at(off);
    if (UNLIKELY(!r)) {
        __atomic_fetch_add(&g_hdr->dropped, 1, __ATOMIC_RELAXED);
        return;
    }
    r->flags = 0;
    r->reserved = 0;
    r->thread = t_thread;
    r->tid = t_tid;
    r->reserved2 = 0;
    r->ret = ret;
    r->a = a;
    r->b = b;
    r->site = (uint64_t)(uintptr_t)site;
    __atomic_store_n(&r->op, op, __ATOMIC_RELEASE);
    /* Every 1024 records: has a library been loaded since the last snapshot? */
    if (UNLIKELY((off / HFREC_RECORD_SIZE & 1023) == 1023) && op != HFREC_MAPS) snapshot_maps(0);
}

/* ------------------------------------------------------------------ memory-map snapshots */

static int adds_cb(struct dl_phdr_info *info, size_t size, void *data) {
    if (size >= offsetof(struct dl_phdr_info, dlpi_adds) + sizeof info->dlpi_adds)
        *(unsigned long long *)data = info->dlpi_adds;
    return 1;   /* the counter is the same in every entry: stop at the first */
}

static char *g_maps_buf;
static size_t g_maps_cap;

/* Keep the lines a call site can be in: executable and backed by a file. In place. */
static size_t filter_maps(char *buf, size_t len) {
    size_t out = 0, i = 0;
    while (i < len) {
        size_t j = i;
        while (j < len && buf[j] != '\n') j++;
        size_t line_len = j - i;
        /* start-end perms ...: perms is the second field */
        size_t k = i;
        while (k < j && buf[k] != ' ') k++;
        int exec = k + 3 < j && buf[k + 3] == 'x';
        int file = 0;
        for (size_t m = k; m < j; m++)
            if (buf[m] == '/') { file = 1; break; }
        if (exec && file) {
            memmove(buf + out, buf + i, line_len);
            out += line_len;
            buf[out++] = '\n';
        }
        i = j + 1;
    }
    return out;
}

/* force: take one even if no library was loaded since the last. */
static void snapshot_maps(int force) {
    unsigned long long adds = 0;
    dl_iterate_phdr(adds_cb, &adds);   /* outside our locks: it takes the loader's lock */
    if (!force && adds == __atomic_load_n(&g_adds_seen, __ATOMIC_RELAXED)) return;
    if (pthread_mutex_trylock(&g_snap_lock) != 0) return;   /* someone is taking one */
    __atomic_store_n(&g_adds_seen, adds, __ATOMIC_RELAXED);
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd >= 0 && g_maps_fd >= 0) {
        size_t len = 0;
        for (;;) {
            if (len + 4096 > g_maps_cap) {
                size_t cap = g_maps_cap ? g_maps_cap * 2 : 256 * 1024;
                void *m = g_maps_buf ? mremap(g_maps_buf, g_maps_cap, cap, MREMAP_MAYMOVE)
                                     : mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                if (m == MAP_FAILED) break;
                g_maps_buf = (char *)m;
                g_maps_cap = cap;
            }
            ssize_t n = read(fd, g_maps_buf + len, g_maps_cap - len);
            if (n <= 0) break;
            len += (size_t)n;
        }
        len = filter_maps(g_maps_buf, len);
        size_t done = 0;
        while (done < len) {
            ssize_t n = write(g_maps_fd, g_maps_buf + done, len - done);
            if (n <= 0) break;
            done += (size_t)n;
        }
        if (done == len) {
            emit(HFREC_MAPS, 0, g_maps_off, len, NULL);
            g_maps_off += len;
        }
    }
    if (fd >= 0) close(fd);
    pthread_mutex_unlock(&g_snap_lock);
}

/* ------------------------------------------------------------------ threads, fork, exit */

/* A TSD destructor: re-arm until the last round, so the thread_end comes after the frees
 * other destructors make. */
static void on_thread_exit(void *value) {
    uintptr_t round = (uintptr_t)value;
    if (round < PTHREAD_DESTRUCTOR_ITERATIONS) {
        pthread_setspecific(g_key, (void *)(round + 1));
        return;
    }
    int saved = errno;
    t_in_hook++;
    emit(HFREC_THREAD_END, 0, 0, 0, NULL);
    t_in_hook--;
    errno = saved;
}

static void atfork_prepare(void) {
    pthread_mutex_lock(&g_snap_lock);
    pthread_mutex_lock(&g_win_lock);
}

static void atfork_parent(void) {
    pthread_mutex_unlock(&g_win_lock);
    pthread_mutex_unlock(&g_snap_lock);
}

/* The child starts a log of its own: forget the parent's (its windows map the parent's file). */
static void atfork_child(void) {
    for (uint32_t w = 0; w < MAX_WINDOWS; w++) {
        if (g_windows[w]) {
            munmap(g_windows[w], HFREC_WINDOW_SIZE);
            g_windows[w] = NULL;
        }
    }
    if (g_hdr) munmap(g_hdr, HFREC_HEADER_SIZE);
    g_hdr = NULL;
    if (g_fd >= 0) close(g_fd);
    if (g_maps_fd >= 0) close(g_maps_fd);
    g_fd = g_maps_fd = -1;
    g_file_size = 0;
    g_maps_off = 0;
    g_adds_seen = 0;
    g_next_thread = 1;
    t_thread = 0;
    t_tid = 0;
    g_log_state = LOG_UNOPENED;
    pthread_mutex_init(&g_win_lock, NULL);
    pthread_mutex_init(&g_snap_lock, NULL);
}

__attribute__((constructor)) static void hfrec_init(void) {
    t_in_hook++;
    ensure_resolved();
    t_in_hook--;
}

__attribute__((destructor)) static void hfrec_fini(void) {
    if (__atomic_load_n(&g_log_state, __ATOMIC_ACQUIRE) != LOG_OPEN) return;
    int saved = errno;
    t_in_hook++;
    snapshot_maps(0);
    __atomic_or_fetch(&g_hdr->flags, HFREC_FLAG_EXITED, __ATOMIC_RELEASE);
    t_in_hook--;
    errno = saved;
}

/* ------------------------------------------------------------------ the interposed functions */

#define SITE() __builtin_return_address(0)
#define PASS_THROUGH() (t_in_hook || __atomic_load_n(&g_log_state, __ATOMIC_RELAXED) == LOG_OFF)

EXPORT void *malloc(size_t n) {
    if (UNLIKELY(!ensure_resolved())) return boot_alloc(n, 16);
    if (PASS_THROUGH()) return real.malloc(n);
    t_in_hook = 1;
    void *p = real.malloc(n);
    int e = errno;
    emit(HFREC_MALLOC, (uintptr_t)p, 0, n, SITE());
    errno = e;
    t_in_hook = 0;
    return p;
}

EXPORT void *calloc(size_t nmemb, size_t size) {
    if (UNLIKELY(!ensure_resolved())) {
        size_t total;
        if (__builtin_mul_overflow(nmemb, size, &total)) return NULL;
        return boot_alloc(total, 16);
    }
    if (PASS_THROUGH()) return real.calloc(nmemb, size);
    t_in_hook = 1;
    void *p = real.calloc(nmemb, size);
    int e = errno;
    emit(HFREC_CALLOC, (uintptr_t)p, nmemb, size, SITE());
    errno = e;
    t_in_hook = 0;
    return p;
}

/* A block from the bootstrap arena is moved to a real one; the trace sees a fresh malloc. */
static void *realloc_boot(void *p, size_t n, const void *site) {
    void *q = real.malloc(n ? n : 1);
    if (!q) return NULL;
    size_t old = boot_size(p);
    memcpy(q, p, old < n ? old : n);
    if (!PASS_THROUGH()) {
        int e = errno;
        t_in_hook = 1;
        emit(HFREC_MALLOC, (uintptr_t)q, 0, n ? n : 1, site);
        t_in_hook = 0;
        errno = e;
    }
    return q;
}

EXPORT void *realloc(void *p, size_t n) {
    if (UNLIKELY(!ensure_resolved())) {
        void *q = boot_alloc(n, 16);
        if (q && p) memcpy(q, p, is_boot(p) && boot_size(p) < n ? boot_size(p) : n);
        return q;
    }
    if (UNLIKELY(p && is_boot(p))) return realloc_boot(p, n, SITE());
    if (PASS_THROUGH()) return real.realloc(p, n);
    t_in_hook = 1;
    int e = errno;
    emit(HFREC_REALLOC_BEGIN, 0, (uintptr_t)p, n, SITE());
    errno = e;
    void *q = real.realloc(p, n);
    e = errno;
    emit(HFREC_REALLOC_END, (uintptr_t)q, (uintptr_t)p, n, SITE());
    errno = e;
    t_in_hook = 0;
    return q;
}

EXPORT void *reallocarray(void *p, size_t nmemb, size_t size) {
    size_t n;
    if (__builtin_mul_overflow(nmemb, size, &n)) {
        errno = ENOMEM;
        return NULL;
    }
    if (UNLIKELY(!ensure_resolved())) {
        void *q = boot_alloc(n, 16);
        if (q && p) memcpy(q, p, is_boot(p) && boot_size(p) < n ? boot_size(p) : n);
        return q;
    }
    if (UNLIKELY(p && is_boot(p))) return realloc_boot(p, n, SITE());
    if (PASS_THROUGH()) return real.realloc(p, n);
    t_in_hook = 1;
    int e = errno;
    emit(HFREC_REALLOC_BEGIN, 0, (uintptr_t)p, n, SITE());
    errno = e;
    void *q = real.realloc(p, n);
    e = errno;
    emit(HFREC_REALLOC_END, (uintptr_t)q, (uintptr_t)p, n, SITE());
    errno = e;
    t_in_hook = 0;
    return q;
}

EXPORT void free(void *p) {
    if (UNLIKELY(p && is_boot(p))) return;
    if (UNLIKELY(!ensure_resolved())) return;   /* only bootstrap blocks exist yet */
    if (PASS_THROUGH()) {
        real.free(p);
        return;
    }
    t_in_hook = 1;
    int e = errno;
    emit(HFREC_FREE, 0, (uintptr_t)p, 0, SITE());   /* before the free: see hfrecord.h */
    errno = e;
    real.free(p);
    errno = e;
    t_in_hook = 0;
}

static void *aligned_common(uint8_t op, memalign_fn fn, size_t align, size_t n, const void *site) {
    if (PASS_THROUGH()) return fn(align, n);
    t_in_hook = 1;
    void *p = fn(align, n);
    int e = errno;
    emit(op, (uintptr_t)p, align, n, site);
    errno = e;
    t_in_hook = 0;
    return p;
}

EXPORT void *memalign(size_t align, size_t n) {
    if (UNLIKELY(!ensure_resolved())) return boot_alloc(n, align);
    return aligned_common(HFREC_MEMALIGN, real.memalign, align, n, SITE());
}

EXPORT void *aligned_alloc(size_t align, size_t n) {
    if (UNLIKELY(!ensure_resolved())) return boot_alloc(n, align);
    return aligned_common(HFREC_ALIGNED_ALLOC, real.aligned_alloc ? real.aligned_alloc : real.memalign, align, n,
                          SITE());
}

EXPORT int posix_memalign(void **out, size_t align, size_t n) {
    if (UNLIKELY(!ensure_resolved())) {
        void *p = boot_alloc(n, align);
        if (!p) return ENOMEM;
        *out = p;
        return 0;
    }
    if (PASS_THROUGH()) return real.posix_memalign(out, align, n);
    t_in_hook = 1;
    int e = errno;
    int rc = real.posix_memalign(out, align, n);
    emit(HFREC_POSIX_MEMALIGN, rc == 0 ? (uintptr_t)*out : 0, align, n, SITE());
    errno = e;
    t_in_hook = 0;
    return rc;
}

static void *page_alloc(uint8_t op, valloc_fn fn, size_t n, const void *site) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if (PASS_THROUGH()) return fn(n);
    t_in_hook = 1;
    void *p = fn(n);
    int e = errno;
    emit(op, (uintptr_t)p, page, n, site);
    errno = e;
    t_in_hook = 0;
    return p;
}

EXPORT void *valloc(size_t n) {
    if (UNLIKELY(!ensure_resolved())) return boot_alloc(n, 4096);
    return page_alloc(HFREC_VALLOC, real.valloc, n, SITE());
}

EXPORT void *pvalloc(size_t n) {
    if (UNLIKELY(!ensure_resolved())) return boot_alloc((n + 4095) & ~(size_t)4095, 4096);
    return page_alloc(HFREC_PVALLOC, real.pvalloc ? real.pvalloc : real.valloc, n, SITE());
}

EXPORT size_t malloc_usable_size(void *p) {
    if (p && is_boot(p)) return boot_size(p);
    if (UNLIKELY(!ensure_resolved()) || !real.usable) return 0;
    if (PASS_THROUGH()) return real.usable(p);
    t_in_hook = 1;
    size_t n = real.usable(p);
    int e = errno;
    emit(HFREC_USABLE_SIZE, n, (uintptr_t)p, 0, SITE());
    errno = e;
    t_in_hook = 0;
    return n;
}
