/* hfrecord.c - libhfrecord.so: an LD_PRELOAD recorder of every malloc-family call.
 *
 *   HFRECORD_DIR=/some/dir LD_PRELOAD=libhfrecord.so program args...
 *
 * Each process image writes <pid>-<gen>.hfrec and <pid>-<gen>.maps into HFRECORD_DIR
 * (format and ordering rules: hfrecord.h); `hakmem-forensics record` sets this up and turns
 * the logs into traces. Without HFRECORD_DIR every call passes straight through.
 *
 * Interposed: malloc, calloc, realloc, reallocarray, free, memalign, posix_memalign,
 * aligned_alloc, valloc, pvalloc, malloc_usable_size (recorded); fork (recorded in the parent:
 * the child's log starts from its parent's heap); exec*, _exit, _Exit (the buffers are
 * written out first). Fatal signals left at their default get a handler that does the same.
 *
 * What it must never do: allocate (it lives inside malloc), hold a lock while calling
 * something that may allocate or take the loader's lock, or change errno. Calls go to the
 * next definition in the lookup order (dlsym RTLD_NEXT: libc, or an allocator preloaded
 * after this library); dlsym's own allocations during that lookup come from a static
 * bootstrap arena.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "hfrecord.h"

#if defined(__x86_64__)
#include <x86intrin.h>
#endif

#define EXPORT __attribute__((visibility("default")))
#define TLS __thread __attribute__((tls_model("initial-exec")))
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#define DIR_MAX 3072

EXPORT const uint32_t hfrec_version_const = HFREC_VERSION;

/* ------------------------------------------------------------------ the real functions */

typedef void *(*malloc_fn)(size_t);
typedef void *(*calloc_fn)(size_t, size_t);
typedef void *(*realloc_fn)(void *, size_t);
typedef void (*free_fn)(void *);
typedef void *(*memalign_fn)(size_t, size_t);
typedef int (*posix_memalign_fn)(void **, size_t, size_t);
typedef void *(*valloc_fn)(size_t);
typedef size_t (*usable_fn)(void *);
typedef int (*execve_fn)(const char *, char *const[], char *const[]);
typedef int (*execv_fn)(const char *, char *const[]);
typedef int (*fexecve_fn)(int, char *const[], char *const[]);
typedef void (*exit_fn)(int);
typedef pid_t (*fork_fn)(void);

static struct {
    malloc_fn malloc;
    calloc_fn calloc;
    realloc_fn realloc;
    free_fn free;
    memalign_fn memalign;
    posix_memalign_fn posix_memalign;
    memalign_fn aligned_alloc;
    valloc_fn valloc;
    valloc_fn pvalloc;
    usable_fn usable;
    execve_fn execve;
    execv_fn execv;
    execv_fn execvp;
    execve_fn execvpe;
    fexecve_fn fexecve;
    exit_fn _exit;
    exit_fn _Exit;
    fork_fn fork;
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
    if (need < n || align > sizeof g_boot) return NULL;
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
    real.free = (free_fn)dlsym(RTLD_NEXT, "free");
    real.memalign = (memalign_fn)dlsym(RTLD_NEXT, "memalign");
    real.posix_memalign = (posix_memalign_fn)dlsym(RTLD_NEXT, "posix_memalign");
    real.aligned_alloc = (memalign_fn)dlsym(RTLD_NEXT, "aligned_alloc");
    real.valloc = (valloc_fn)dlsym(RTLD_NEXT, "valloc");
    real.pvalloc = (valloc_fn)dlsym(RTLD_NEXT, "pvalloc");
    real.usable = (usable_fn)dlsym(RTLD_NEXT, "malloc_usable_size");
    real.execve = (execve_fn)dlsym(RTLD_NEXT, "execve");
    real.execv = (execv_fn)dlsym(RTLD_NEXT, "execv");
    real.execvp = (execv_fn)dlsym(RTLD_NEXT, "execvp");
    real.execvpe = (execve_fn)dlsym(RTLD_NEXT, "execvpe");
    real.fexecve = (fexecve_fn)dlsym(RTLD_NEXT, "fexecve");
    real._exit = (exit_fn)dlsym(RTLD_NEXT, "_exit");
    real._Exit = (exit_fn)dlsym(RTLD_NEXT, "_Exit");
    real.fork = (fork_fn)dlsym(RTLD_NEXT, "fork");
    t_resolving = 0;
    if (!real.malloc || !real.free || !real.calloc || !real.realloc || !real.memalign) {
        static const char msg[] = "libhfrecord: cannot find the real malloc family (dlsym RTLD_NEXT)\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
        _exit(127);
    }
    __atomic_store_n(&g_resolve_state, RESOLVE_DONE, __ATOMIC_RELEASE);
    return 1;
}

/* ------------------------------------------------------------------ the log */

/* A thread's buffer: the chunk being filled, in private memory (mmap'd, never malloc'd). */
typedef struct tbuf {
    struct tbuf *next, *prev;   /* g_threads, under g_list_lock */
    uint64_t slot;              /* file offset of the chunk slot being filled */
    uint32_t n;                 /* records in recs[] (release-stored after each record) */
    uint32_t flushed;           /* records of recs[] already in the file */
    uint64_t total;             /* records this thread made */
    hfrec_chunk chunk;          /* written right before recs: one pwrite for a full chunk */
    hfrec_record recs[HFREC_CHUNK_RECORDS];
} tbuf;

_Static_assert(offsetof(tbuf, recs) == offsetof(tbuf, chunk) + sizeof(hfrec_chunk), "chunk header precedes records");

enum { LOG_UNOPENED, LOG_OPEN, LOG_OFF };
static int g_log_state;
static int g_fd = -1, g_maps_fd = -1;
static hfrec_header g_hdr;         /* our copy; written to the file at open and at the end */
static uint64_t g_tail = HFREC_HEADER_SIZE;   /* next free chunk slot */
static uint64_t g_maps_off;
static unsigned long long g_adds_seen;
static int g_exiting;              /* after the exit destructor: write every record through */
static int g_forked;               /* this image is a forked child: its heap is its parent's */
static tbuf *g_threads;
static pthread_mutex_t g_open_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t g_list_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t g_snap_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_key_t g_key;
static int g_key_ok, g_atfork_done;
static uint32_t g_next_thread = 1;
static int g_multi;                /* a second thread has called: records need timestamps */
static int g_use_tsc;

static TLS int t_in_hook;       /* inside one of our functions: nested calls are the allocator's own */
static TLS tbuf *t_buf;
static TLS uint32_t t_thread;   /* 1, 2, ... in the order threads first called */
static TLS uint32_t t_tid;
static TLS int t_ended;         /* its thread_end was written */

static void emit(uint8_t op, uint64_t ret, uint64_t a, uint64_t b, const void *site);
static void snapshot_maps(int force);
static void flush_all(int locked);

static void read_small_file(const char *path, char *dst, size_t cap);

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The order key of a record. While one thread is the only caller its records need none (0):
 * they all come before the first record of the second thread, which sets g_multi before it
 * takes its first timestamp (seq_cst on both sides). */
static uint64_t stamp(void) {
    if (!__atomic_load_n(&g_multi, __ATOMIC_SEQ_CST)) return 0;
#if defined(__x86_64__)
    if (g_use_tsc) return __rdtsc();
#endif
    return now_ns();
}

/* The TSC orders calls across CPUs only where it is synchronized; the kernel checked that
 * if it made it the clocksource. */
static int tsc_is_clocksource(void) {
#if defined(__x86_64__)
    char buf[32];
    buf[0] = '\0';
    read_small_file("/sys/devices/system/clocksource/clocksource0/current_clocksource", buf, sizeof buf);
    return strncmp(buf, "tsc", 3) == 0 && (buf[3] == '\n' || buf[3] == '\0');
#else
    return 0;
#endif
}

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

static void log_path(char *dst, size_t cap, const char *dir, uint64_t pid, uint32_t gen, const char *ext) {
    size_t at = put_str(dst, cap, 0, dir);
    at = put_str(dst, cap, at, "/");
    at = put_u64(dst, cap, at, pid);
    at = put_str(dst, cap, at, "-");
    at = put_u64(dst, cap, at, gen);
    put_str(dst, cap, at, ext);
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

static void write_all_at(int fd, const void *buf, size_t len, uint64_t off) {
    const char *p = buf;
    while (len) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
}

/* The header's flags and signal, rewritten in place. */
static void write_header_state(void) {
    if (g_fd < 0) return;
    write_all_at(g_fd, &g_hdr.flags, sizeof g_hdr.flags + sizeof g_hdr.signal, offsetof(hfrec_header, flags));
    write_all_at(g_fd, &g_hdr.dropped, sizeof g_hdr.dropped, offsetof(hfrec_header, dropped));
}

static void on_thread_exit(void *value);
static void atfork_prepare(void);
static void atfork_parent(void);
static void atfork_child(void);
static void install_signal_handlers(void);

/* Under g_open_lock. 1 when the log is open. */
static int log_open_locked(void) {
    const char *dir = getenv("HFRECORD_DIR");
    if (!dir || !*dir || strlen(dir) >= DIR_MAX) return 0;
    char path[DIR_MAX + 64];
    uint64_t pid = (uint64_t)getpid();
    uint32_t gen;
    int fd = -1;
    for (gen = 0; gen < 10000; gen++) {
        log_path(path, sizeof path, dir, pid, gen, ".hfrec");
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd >= 0 || errno != EEXIST) break;
    }
    if (fd < 0) return 0;
    log_path(path, sizeof path, dir, pid, gen, ".maps");
    int mfd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    hfrec_header *h = &g_hdr;
    memset(h, 0, sizeof *h);
    memcpy(h->magic, HFREC_MAGIC, 8);
    h->version = HFREC_VERSION;
    h->record_size = HFREC_RECORD_SIZE;
    h->chunk_size = HFREC_CHUNK_SIZE;
    h->chunk_header_size = HFREC_CHUNK_HEADER_SIZE;
    h->pid = (uint32_t)pid;
    h->ppid = (uint32_t)getppid();
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    h->start_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    g_use_tsc = tsc_is_clocksource();
    h->clock = g_use_tsc ? HFREC_CLOCK_TSC : HFREC_CLOCK_MONOTONIC;
    h->start_mono_ns = now_ns();
#if defined(__x86_64__)
    h->start_clock = g_use_tsc ? __rdtsc() : h->start_mono_ns;
#else
    h->start_clock = h->start_mono_ns;
#endif
    h->generation = gen;
    h->flags = g_forked ? HFREC_FLAG_FORKED : 0;
    h->pointer_size = sizeof(void *);
    h->page_size = (uint32_t)sysconf(_SC_PAGESIZE);
    ssize_t n = readlink("/proc/self/exe", h->exe, sizeof h->exe - 1);
    h->exe[n > 0 ? n : 0] = '\0';
    read_small_file("/proc/self/cmdline", h->cmdline, sizeof h->cmdline);
    write_all_at(fd, h, sizeof *h, 0);
    g_fd = fd;
    g_maps_fd = mfd;
    g_tail = HFREC_HEADER_SIZE;
    g_maps_off = 0;
    g_adds_seen = 0;
    if (!g_key_ok) g_key_ok = pthread_key_create(&g_key, on_thread_exit) == 0;
    if (!g_atfork_done) g_atfork_done = pthread_atfork(atfork_prepare, atfork_parent, atfork_child) == 0;
    install_signal_handlers();
    return 1;
}

static int log_open(void) {
    int st = __atomic_load_n(&g_log_state, __ATOMIC_ACQUIRE);
    if (st != LOG_UNOPENED) return st == LOG_OPEN;
    int opened = 0;
    pthread_mutex_lock(&g_open_lock);
    st = g_log_state;
    if (st == LOG_UNOPENED) {
        st = log_open_locked() ? LOG_OPEN : LOG_OFF;
        opened = st == LOG_OPEN;
        __atomic_store_n(&g_log_state, st, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&g_open_lock);
    if (opened) snapshot_maps(1);
    return st == LOG_OPEN;
}

static uint64_t reserve_slot(void) {
    return __atomic_fetch_add(&g_tail, HFREC_CHUNK_SIZE, __ATOMIC_RELAXED);
}

/* Write what the file does not have yet of b's chunk, then its header (so the count in the
 * file never covers records that are not there). Idempotent. */
static void chunk_flush(tbuf *b) {
    uint32_t n = __atomic_load_n(&b->n, __ATOMIC_ACQUIRE);
    uint32_t done = b->flushed;
    if (n > HFREC_CHUNK_RECORDS) n = HFREC_CHUNK_RECORDS;
    b->chunk.count = n;
    if (done == 0 && n > 0) {   /* header and records in one write */
        write_all_at(g_fd, &b->chunk, HFREC_CHUNK_HEADER_SIZE + (size_t)n * HFREC_RECORD_SIZE, b->slot);
    } else {
        if (n > done)
            write_all_at(g_fd, &b->recs[done], (size_t)(n - done) * HFREC_RECORD_SIZE,
                         b->slot + HFREC_CHUNK_HEADER_SIZE + (uint64_t)done * HFREC_RECORD_SIZE);
        write_all_at(g_fd, &b->chunk, HFREC_CHUNK_HEADER_SIZE, b->slot);
    }
    if (n > b->flushed) b->flushed = n;
}

static tbuf *thread_register(void) {
    tbuf *b = mmap(NULL, sizeof(tbuf), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b == MAP_FAILED) return NULL;
    if (!t_thread) {
        t_thread = __atomic_fetch_add(&g_next_thread, 1, __ATOMIC_RELAXED);
        t_tid = (uint32_t)syscall(SYS_gettid);
        if (t_thread > 1) __atomic_store_n(&g_multi, 1, __ATOMIC_SEQ_CST);
    }
    memcpy(b->chunk.magic, HFREC_CHUNK_MAGIC, 8);
    b->chunk.thread = t_thread;
    b->chunk.tid = t_tid;
    b->chunk.capacity = HFREC_CHUNK_RECORDS;
    b->slot = reserve_slot();
    pthread_mutex_lock(&g_list_lock);
    b->next = g_threads;
    if (g_threads) g_threads->prev = b;
    g_threads = b;
    pthread_mutex_unlock(&g_list_lock);
    if (g_key_ok) pthread_setspecific(g_key, (void *)(uintptr_t)1);
    t_buf = b;
    return b;
}

static void thread_unregister(tbuf *b) {
    pthread_mutex_lock(&g_list_lock);
    if (b->prev) b->prev->next = b->next;
    else g_threads = b->next;
    if (b->next) b->next->prev = b->prev;
    pthread_mutex_unlock(&g_list_lock);
    munmap(b, sizeof *b);
}

/* A record of a thread that has no buffer any more (after its thread_end): a chunk of its own. */
static void emit_direct(const hfrec_record *r) {
    struct {
        hfrec_chunk chunk;
        hfrec_record rec;
    } one;
    memset(&one, 0, sizeof one);
    memcpy(one.chunk.magic, HFREC_CHUNK_MAGIC, 8);
    one.chunk.thread = t_thread;
    one.chunk.tid = t_tid;
    one.chunk.count = 1;
    one.chunk.capacity = HFREC_CHUNK_RECORDS;
    one.chunk.index = UINT64_MAX;
    one.rec = *r;
    write_all_at(g_fd, &one, sizeof one, reserve_slot());
}

static void emit(uint8_t op, uint64_t ret, uint64_t a, uint64_t b, const void *site) {
    if (UNLIKELY(__atomic_load_n(&g_log_state, __ATOMIC_ACQUIRE) != LOG_OPEN) && !log_open()) return;
    tbuf *t = t_buf;
    if (UNLIKELY(!t)) {
        if (t_ended) {
            hfrec_record r = {op, 0, 0, 0, stamp(), ret, a, b, (uint64_t)(uintptr_t)site};
            emit_direct(&r);
            return;
        }
        t = thread_register();
        if (!t) {
            __atomic_fetch_add(&g_hdr.dropped, 1, __ATOMIC_RELAXED);
            return;
        }
    }
    uint32_t n = t->n;
    hfrec_record *r = &t->recs[n];
    r->op = op;
    r->flags = 0;
    r->reserved = 0;
    r->reserved2 = 0;
    r->ts = stamp();
    r->ret = ret;
    r->a = a;
    r->b = b;
    r->site = (uint64_t)(uintptr_t)site;
    __atomic_store_n(&t->n, n + 1, __ATOMIC_RELEASE);
    if (UNLIKELY(n + 1 == HFREC_CHUNK_RECORDS)) {
        chunk_flush(t);
        t->slot = reserve_slot();
        t->chunk.index++;
        t->flushed = 0;
        __atomic_store_n(&t->n, 0, __ATOMIC_RELEASE);
    } else if (UNLIKELY(__atomic_load_n(&g_exiting, __ATOMIC_RELAXED))) {
        chunk_flush(t);
    }
    /* Every 1024 records of a thread: has a library been loaded since the last snapshot? */
    if (UNLIKELY((++t->total & 1023) == 0) && op != HFREC_MAPS) snapshot_maps(0);
}

/* Write every thread's partial chunk. locked: take the list lock (not from a signal handler). */
static void flush_all(int locked) {
    if (__atomic_load_n(&g_log_state, __ATOMIC_ACQUIRE) != LOG_OPEN) return;
    if (locked) pthread_mutex_lock(&g_list_lock);
    for (tbuf *b = g_threads; b; b = b->next) chunk_flush(b);
    if (locked) pthread_mutex_unlock(&g_list_lock);
    write_header_state();
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
        size_t k = i;   /* start-end perms ...: perms is the second field */
        while (k < j && buf[k] != ' ') k++;
        int exec = k + 3 < j && buf[k + 3] == 'x';
        int file = 0;
        for (size_t m = k; m < j; m++)
            if (buf[m] == '/') {
                file = 1;
                break;
            }
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
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            len += (size_t)n;
        }
        len = filter_maps(g_maps_buf, len);
        size_t done = 0;
        while (done < len) {
            ssize_t n = write(g_maps_fd, g_maps_buf + done, len - done);
            if (n < 0 && errno == EINTR) continue;
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

/* ------------------------------------------------------------------ threads, fork, exec, exit, signals */

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
    tbuf *b = t_buf;
    if (b) {
        chunk_flush(b);
        t_buf = NULL;
        thread_unregister(b);
    }
    t_ended = 1;
    t_in_hook--;
    errno = saved;
}

static void atfork_prepare(void) {
    pthread_mutex_lock(&g_open_lock);
    pthread_mutex_lock(&g_snap_lock);
    pthread_mutex_lock(&g_list_lock);
}

static void atfork_parent(void) {
    pthread_mutex_unlock(&g_list_lock);
    pthread_mutex_unlock(&g_snap_lock);
    pthread_mutex_unlock(&g_open_lock);
}

/* The child starts a log of its own: the buffers it inherited hold the parent's records. */
static void atfork_child(void) {
    tbuf *b = g_threads;
    while (b) {
        tbuf *next = b->next;
        munmap(b, sizeof *b);
        b = next;
    }
    g_threads = NULL;
    t_buf = NULL;
    t_thread = 0;
    t_tid = 0;
    t_ended = 0;
    if (g_fd >= 0) close(g_fd);
    if (g_maps_fd >= 0) close(g_maps_fd);
    g_fd = g_maps_fd = -1;
    g_maps_off = 0;
    g_adds_seen = 0;
    g_next_thread = 1;
    g_multi = 0;
    g_exiting = 0;
    g_forked = 1;
    g_log_state = LOG_UNOPENED;
    pthread_mutex_init(&g_open_lock, NULL);
    pthread_mutex_init(&g_snap_lock, NULL);
    pthread_mutex_init(&g_list_lock, NULL);
}

/* Before exec() replaces the image: everything recorded goes to the file. */
static void before_exec(void) {
    if (__atomic_load_n(&g_log_state, __ATOMIC_ACQUIRE) != LOG_OPEN) return;
    g_hdr.flags |= HFREC_FLAG_EXEC;
    flush_all(1);
}

static void exec_failed(void) {
    if (__atomic_load_n(&g_log_state, __ATOMIC_ACQUIRE) != LOG_OPEN) return;
    g_hdr.flags &= ~HFREC_FLAG_EXEC;
    write_header_state();
}

static const int k_fatal_signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP, SIGSYS,
                                      SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGXCPU, SIGXFSZ};
static volatile sig_atomic_t g_in_fatal;

/* A signal that would kill the process: write what the threads recorded, then die of it. */
static void on_fatal_signal(int sig) {
    if (!g_in_fatal) {
        g_in_fatal = 1;
        g_hdr.flags |= HFREC_FLAG_SIGNAL;
        g_hdr.signal = (uint32_t)sig;
        flush_all(0);
    }
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, NULL);
    raise(sig);
}

/* Only where the program left the default: a handler of its own stays (and wins later). */
static void install_signal_handlers(void) {
    for (size_t i = 0; i < sizeof k_fatal_signals / sizeof k_fatal_signals[0]; i++) {
        struct sigaction old;
        if (sigaction(k_fatal_signals[i], NULL, &old) != 0) continue;
        if ((old.sa_flags & SA_SIGINFO) || old.sa_handler != SIG_DFL) continue;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_fatal_signal;
        sa.sa_flags = SA_RESTART | SA_NODEFER | SA_RESETHAND;
        sigemptyset(&sa.sa_mask);
        sigaction(k_fatal_signals[i], &sa, NULL);
    }
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
    g_hdr.flags |= HFREC_FLAG_EXITED;
    __atomic_store_n(&g_exiting, 1, __ATOMIC_RELEASE);   /* later records go straight to the file */
    flush_all(1);
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

/* A block from the bootstrap arena moves to a real one; the trace sees a fresh malloc. */
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

static void *realloc_common(void *p, size_t n, const void *site) {
    if (UNLIKELY(!ensure_resolved())) {
        void *q = boot_alloc(n, 16);
        if (q && p) memcpy(q, p, is_boot(p) && boot_size(p) < n ? boot_size(p) : n);
        return q;
    }
    if (UNLIKELY(p && is_boot(p))) return realloc_boot(p, n, site);
    if (PASS_THROUGH()) return real.realloc(p, n);
    t_in_hook = 1;
    int e = errno;
    emit(HFREC_REALLOC_BEGIN, 0, (uintptr_t)p, n, site);
    errno = e;
    void *q = real.realloc(p, n);
    e = errno;
    emit(HFREC_REALLOC_END, (uintptr_t)q, (uintptr_t)p, n, site);
    errno = e;
    t_in_hook = 0;
    return q;
}

EXPORT void *realloc(void *p, size_t n) { return realloc_common(p, n, SITE()); }

/* glibc's reallocarray calls its internal realloc, which an interposer never sees. */
EXPORT void *reallocarray(void *p, size_t nmemb, size_t size) {
    size_t n;
    if (__builtin_mul_overflow(nmemb, size, &n)) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc_common(p, n, SITE());
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

/* exec*: libc's exec functions call execve internally, out of an interposer's reach, so
 * each is wrapped to write the buffers out first. */
EXPORT int execve(const char *path, char *const argv[], char *const envp[]) {
    ensure_resolved();
    before_exec();
    int rc = real.execve(path, argv, envp);
    int e = errno;
    exec_failed();
    errno = e;
    return rc;
}

EXPORT int execv(const char *path, char *const argv[]) {
    ensure_resolved();
    before_exec();
    int rc = real.execv(path, argv);
    int e = errno;
    exec_failed();
    errno = e;
    return rc;
}

EXPORT int execvp(const char *file, char *const argv[]) {
    ensure_resolved();
    before_exec();
    int rc = real.execvp(file, argv);
    int e = errno;
    exec_failed();
    errno = e;
    return rc;
}

EXPORT int execvpe(const char *file, char *const argv[], char *const envp[]) {
    ensure_resolved();
    before_exec();
    int rc = real.execvpe ? real.execvpe(file, argv, envp) : (errno = ENOSYS, -1);
    int e = errno;
    exec_failed();
    errno = e;
    return rc;
}

EXPORT int fexecve(int fd, char *const argv[], char *const envp[]) {
    ensure_resolved();
    before_exec();
    int rc = real.fexecve ? real.fexecve(fd, argv, envp) : (errno = ENOSYS, -1);
    int e = errno;
    exec_failed();
    errno = e;
    return rc;
}

/* The parent notes each child it forks: the child's log starts with the heap it inherited,
 * which the converter rebuilds from the parent's records up to this one. */
EXPORT pid_t fork(void) {
    ensure_resolved();
    if (!real.fork) {
        errno = ENOSYS;
        return -1;
    }
    pid_t pid = real.fork();
    if (pid > 0 && !PASS_THROUGH()) {
        int e = errno;
        t_in_hook = 1;
        emit(HFREC_FORK, (uint64_t)pid, 0, 0, SITE());
        t_in_hook = 0;
        errno = e;
    }
    return pid;
}

/* _exit skips the destructors that write the buffers out (a forked child's usual way out). */
static void before_exit(void) {
    if (__atomic_load_n(&g_log_state, __ATOMIC_ACQUIRE) != LOG_OPEN) return;
    g_hdr.flags |= HFREC_FLAG_EXITED;
    flush_all(1);
}

EXPORT void _exit(int status) {
    ensure_resolved();
    before_exit();
    if (real._exit) real._exit(status);
    syscall(SYS_exit_group, status);
    __builtin_unreachable();
}

EXPORT void _Exit(int status) {
    ensure_resolved();
    before_exit();
    if (real._Exit) real._Exit(status);
    syscall(SYS_exit_group, status);
    __builtin_unreachable();
}

/* The list forms: collect the arguments on the stack (no allocation) and take the v forms. */
#define COLLECT_ARGS(arg0, ap, argv, with_env, envp)          \
    do {                                                      \
        size_t n_ = 1;                                        \
        va_start(ap, arg0);                                   \
        while (va_arg(ap, const char *)) n_++;                \
        va_end(ap);                                           \
        argv = __builtin_alloca((n_ + 1) * sizeof(char *));   \
        argv[0] = (char *)(arg0);                             \
        va_start(ap, arg0);                                   \
        for (size_t i_ = 1; i_ <= n_; i_++) argv[i_] = va_arg(ap, char *); \
        if (with_env) envp = va_arg(ap, char **);             \
        va_end(ap);                                           \
    } while (0)

EXPORT int execl(const char *path, const char *arg, ...) {
    va_list ap;
    char **argv;
    char **envp = NULL;
    COLLECT_ARGS(arg, ap, argv, 0, envp);
    (void)envp;
    return execv(path, argv);
}

EXPORT int execlp(const char *file, const char *arg, ...) {
    va_list ap;
    char **argv;
    char **envp = NULL;
    COLLECT_ARGS(arg, ap, argv, 0, envp);
    (void)envp;
    return execvp(file, argv);
}

EXPORT int execle(const char *path, const char *arg, ...) {
    va_list ap;
    char **argv;
    char **envp = NULL;
    COLLECT_ARGS(arg, ap, argv, 1, envp);
    return execve(path, argv, envp);
}
