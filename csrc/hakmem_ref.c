/* hakmem_ref.c - hakmem-ref: a working allocator that reproduces the free path of the seed
 * analysis (shared/seed/FALSE_POSITIVE_SEGV_FIX.md) faithfully enough that its bugs reproduce.
 * See hakmem.h for the ABI, the knobs and the route names.
 *
 * Layout of the file: utilities (logging, pages, hash maps) -> knobs -> registries and the
 * request trace -> Tiny (SuperSlabs) -> Mid/L25 pools -> large blocks and their caches ->
 * MALLOC method -> the free router -> public allocation API -> introspection -> check.
 *
 * One global lock guards the heap (see LOCK below). Internal functions ending in
 * _locked expect it held. Metadata never comes from libc malloc: it is mmap'd, so the same
 * code can later stand in for malloc under LD_PRELOAD.
 */
#include "hakmem.h"
#include "probes.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef HAKMEM_BUILD_RELEASE
#define HAKMEM_BUILD_RELEASE 0
#endif
/* The preload build defaults to the safe probe: a real program frees pointers no registry knows
 * (libc's, ld.so's), and reading their ptr - HEADER_SIZE unprobed is the seed's SEGV. */
#ifndef HAK_DEFAULT_PROBE
#define HAK_DEFAULT_PROBE HAK_PROBE_OFF
#endif

extern void *__libc_malloc(size_t);
extern void __libc_free(void *);

/* ------------------------------------------------------------ constants */
HAK_API const uint32_t hak_abi_version_const = HAK_ABI_VERSION;
HAK_API const uint32_t hak_header_size_const = HAK_HEADER_SIZE;
HAK_API const uint32_t hak_magic_const = HAKMEM_MAGIC;
HAK_API const uint64_t hak_superslab_size_const = HAK_SUPERSLAB_SIZE;
HAK_API const uint32_t hak_tiny_class_sizes_const[HAK_TINY_NUM_CLASSES] = {8, 16, 32, 64, 128, 256, 512, 1024};
HAK_API const uint32_t hak_build_release_const = HAKMEM_BUILD_RELEASE;

/* Pool classes are powers of two: a block index is a shift (pool_chunk.shift). */
static const uint32_t k_mid_class_bytes[HAK_MID_NUM_CLASSES] = {2048, 4096, 8192, 16384, 32768};
static const uint32_t k_l25_class_bytes[HAK_L25_NUM_CLASSES] = {65536, 131072, 262144, 524288, 1048576};
#define TINY_MAX 1024u
#define MID_MAX (32768u - HAK_HEADER_SIZE)
#define L25_MAX (1048576u - HAK_HEADER_SIZE)
#define BIGCACHE_SLOTS 16
#define WHALE_SLOTS 8
#define BATCH_SLOTS 8
#define GRAVEYARD_SLOTS 64

_Static_assert(sizeof(AllocHeader) == HAK_HEADER_SIZE, "AllocHeader must be HAK_HEADER_SIZE bytes");

/* --------------------------------------------------------------- logging */
/* hakmem's lines go to this fd: 2 unless HAKMEM_TRACE_FD / HAKMEM_TRACE_FILE say otherwise, so a
 * traced program's own stderr can stay the program's (hakmem-forensics run). */
static volatile int g_log_fd = 2;

static void hak_logv(const char *fmt, va_list ap) {
    char buf[768];
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    if (n < 0) return;
    if ((size_t)n >= sizeof buf) n = sizeof buf - 1;
    ssize_t off = 0;
    while (off < n) {
        ssize_t w = write(g_log_fd, buf + off, (size_t)(n - off));
        if (w <= 0) break;
        off += w;
    }
}

__attribute__((format(printf, 1, 2))) static void hak_log(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    hak_logv(fmt, ap);
    va_end(ap);
}

/* Debug diagnostics of our own; compiled out of the release build like the seed's
 * #if !HAKMEM_BUILD_RELEASE blocks. The seed's own messages are printed in both builds. */
#if HAKMEM_BUILD_RELEASE
#define HAK_DBG(...) ((void)0)
#else
#define HAK_DBG(...) hak_log(__VA_ARGS__)
#endif

static __thread char t_err[256];
static __thread uint64_t t_tid;
static __thread hak_free_state t_state;
static __thread hak_free_decision t_last;
static __thread int t_has_last;

/* The calling thread's last allocation and hak_owner_kind's answer for it, good while
 * g_heap_gen has not moved. Every free bumps it, and only a free changes what owns a live block
 * or its state (an early-released SuperSlab, a munmap, a block freed from another thread are
 * all frees), so right after an allocation - where the replay's oracle asks - the answer needs
 * no lookup. ptr 0: nothing cached (the allocation was not a plain block start). */
static uint64_t g_heap_gen;   /* written under the lock; hak_owner_kind reads it without */
static __thread struct {
    uintptr_t ptr;
    uint64_t gen;
    uint32_t kind;
} t_alloc;

/* Under the lock: one writer, so a plain increment published with a release store. */
static inline void heap_gen_bump(void) { __atomic_store_n(&g_heap_gen, g_heap_gen + 1, __ATOMIC_RELEASE); }

static inline void note_alloc(uintptr_t p, uint32_t kind) {
    t_alloc.ptr = p;
    t_alloc.gen = g_heap_gen;
    t_alloc.kind = kind;
}

__attribute__((format(printf, 2, 3))) static int set_error(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t_err, sizeof t_err, fmt, ap);
    va_end(ap);
    return code;
}

static uint64_t cur_tid(void) {
    if (!t_tid) t_tid = (uint64_t)syscall(SYS_gettid);
    return t_tid;
}

/* ----------------------------------------------------------------- pages */
static uintptr_t g_page;

static void *sys_map(size_t len) {
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static size_t page_up(size_t n) { return (n + g_page - 1) & ~(g_page - 1); }
static uintptr_t page_down(uintptr_t a) { return a & ~(g_page - 1); }

/* Maps len bytes aligned to align (a power of two >= page). With hole_below, the address
 * just below the result is guaranteed unmapped at the moment of return (the seed's SEGV:
 * ptr - HEADER_SIZE of a block at the region's first byte lands there). With guard, one
 * PROT_NONE page is kept mapped below instead. */
static void *map_aligned(size_t len, size_t align, int hole_below, int guard) {
    size_t span = len + align;
    uintptr_t r = (uintptr_t)sys_map(span);
    if (!r) return NULL;
    uintptr_t base = hole_below ? ((r + 1 + align - 1) & ~(uintptr_t)(align - 1))
                                : ((r + align - 1) & ~(uintptr_t)(align - 1));
    uintptr_t low_end = base;
    if (guard) {
        low_end = base - g_page;
        if (mprotect((void *)low_end, g_page, PROT_NONE) != 0) {
            munmap((void *)r, span);
            return NULL;
        }
    }
    if (low_end > r) munmap((void *)r, low_end - r);
    uintptr_t top = base + len, rend = r + span;
    if (rend > top) munmap((void *)top, rend - top);
    return (void *)base;
}

/* -------------------------------------------------------------- hash map */
/* Open addressing, uintptr_t -> void*, keys are region bases or block addresses (never 0/1). */
typedef struct hmap {
    uintptr_t *keys;
    void **vals;
    size_t slots, count, tombs;
} hmap;

#define HM_EMPTY 0u
#define HM_TOMB 1u

static size_t hm_hash(uintptr_t k, size_t slots) {
    uint64_t h = (uint64_t)k * 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
    return (size_t)h & (slots - 1);
}

static int hm_alloc_tables(hmap *m, size_t slots) {
    size_t kb = page_up(slots * sizeof(uintptr_t)), vb = page_up(slots * sizeof(void *));
    uintptr_t *k = sys_map(kb);
    void **v = sys_map(vb);
    if (!k || !v) {
        if (k) munmap(k, kb);
        if (v) munmap(v, vb);
        return -1;
    }
    m->keys = k;
    m->vals = v;
    m->slots = slots;
    m->count = m->tombs = 0;
    return 0;
}

static void *hm_get(const hmap *m, uintptr_t key) {
    if (!m->slots) return NULL;
    size_t mask = m->slots - 1;
    for (size_t i = hm_hash(key, m->slots), n = 0; n < m->slots; i = (i + 1) & mask, n++) {
        uintptr_t k = m->keys[i];
        if (k == key) return m->vals[i];
        if (k == HM_EMPTY) return NULL;
    }
    return NULL;
}

static int hm_put(hmap *m, uintptr_t key, void *val);

static int hm_grow(hmap *m) {
    hmap n = {0};
    size_t want = m->slots ? m->slots * 2 : 64;
    if (m->count * 4 < m->slots) want = m->slots; /* mostly tombstones: rehash in place size */
    if (hm_alloc_tables(&n, want) != 0) return -1;
    for (size_t i = 0; i < m->slots; i++)
        if (m->keys[i] > HM_TOMB) hm_put(&n, m->keys[i], m->vals[i]);
    if (m->slots) {
        munmap(m->keys, page_up(m->slots * sizeof(uintptr_t)));
        munmap(m->vals, page_up(m->slots * sizeof(void *)));
    }
    *m = n;
    return 0;
}

static int hm_put(hmap *m, uintptr_t key, void *val) {
    if ((m->count + m->tombs + 1) * 2 > m->slots && hm_grow(m) != 0) return -1;
    size_t mask = m->slots - 1;
    size_t tomb = (size_t)-1;
    for (size_t i = hm_hash(key, m->slots);; i = (i + 1) & mask) {
        uintptr_t k = m->keys[i];
        if (k == key) { m->vals[i] = val; return 0; }
        if (k == HM_TOMB && tomb == (size_t)-1) tomb = i;
        if (k == HM_EMPTY) {
            if (tomb != (size_t)-1) { i = tomb; m->tombs--; }
            m->keys[i] = key;
            m->vals[i] = val;
            m->count++;
            return 0;
        }
    }
}

static int hm_del(hmap *m, uintptr_t key) {
    if (!m->slots) return 0;
    size_t mask = m->slots - 1;
    for (size_t i = hm_hash(key, m->slots), n = 0; n < m->slots; i = (i + 1) & mask, n++) {
        uintptr_t k = m->keys[i];
        if (k == key) {
            m->keys[i] = HM_TOMB;
            m->vals[i] = NULL;
            m->count--;
            m->tombs++;
            return 1;
        }
        if (k == HM_EMPTY) return 0;
    }
    return 0;
}

/* Iterates the occupied slots: for each, m->keys[i] and m->vals[i]. `break` leaves the loop. */
#define HM_FOREACH(m, i) \
    for (size_t i = 0; i < (m)->slots; i++) \
        if ((m)->keys[i] > HM_TOMB)

/* ---------------------------------------------------------------- knobs */
enum knob_type { KB_BOOL, KB_LONG, KB_ENUM };

static struct {
    long mode_ldpreload;
    long invalid_free_mode, invalid_free_log;
    long probe;
    long route_trace, reqtrace;
    long feat_tiny, feat_pool, feat_l25, feat_bigcache, feat_bigcache_l25, feat_batch, feat_whale;
    long ss_reg_capacity, mid_reg_capacity, l25_reg_capacity;
    long ss_drop_every, mid_drop_every, l25_drop_every;
    long ss_early_release;
    long ss_guard;
    long alloc_trace, trace_fd;
} K = {
    .invalid_free_mode = 1, .invalid_free_log = 1, .probe = HAK_DEFAULT_PROBE, .trace_fd = 2,
    .feat_tiny = 1, .feat_pool = 1, .feat_l25 = 1, .feat_bigcache = 1, .feat_whale = 1,
    .ss_reg_capacity = 65536,
};

static const char *const k_mode_names[] = {"direct", "ldpreload", NULL};
static const char *const k_probe_names[] = {"off", "seed-mincore", "seed-msync", "mincore", "safe", NULL};
static const char *const k_guard_names[] = {"none", "protnone", NULL};

typedef struct knob_def {
    const char *name;
    enum knob_type type;
    long *val;
    const char *const *names;
    long min, max;
} knob_def;

static const knob_def k_knobs[] = {
    {"HAKMEM_MODE", KB_ENUM, &K.mode_ldpreload, k_mode_names, 0, 1},
    {"HAKMEM_INVALID_FREE", KB_BOOL, &K.invalid_free_mode, NULL, 0, 1},
    {"HAKMEM_INVALID_FREE_LOG", KB_BOOL, &K.invalid_free_log, NULL, 0, 1},
    {"HAKMEM_HEADER_PROBE", KB_ENUM, &K.probe, k_probe_names, 0, HAK_PROBE_COUNT - 1},
    {"HAKMEM_FREE_ROUTE_TRACE", KB_BOOL, &K.route_trace, NULL, 0, 1},
    {"HAKMEM_SUPER_REG_REQTRACE", KB_LONG, &K.reqtrace, NULL, 0, 4},
    {"HAKMEM_TINY", KB_BOOL, &K.feat_tiny, NULL, 0, 1},
    {"HAKMEM_POOL", KB_BOOL, &K.feat_pool, NULL, 0, 1},
    {"HAKMEM_L25", KB_BOOL, &K.feat_l25, NULL, 0, 1},
    {"HAKMEM_BIGCACHE", KB_BOOL, &K.feat_bigcache, NULL, 0, 1},
    {"HAKMEM_BIGCACHE_L25", KB_BOOL, &K.feat_bigcache_l25, NULL, 0, 1},
    {"HAKMEM_BATCH_MADVISE", KB_BOOL, &K.feat_batch, NULL, 0, 1},
    {"HAKMEM_WHALE", KB_BOOL, &K.feat_whale, NULL, 0, 1},
    {"HAKMEM_SS_REG_CAPACITY", KB_LONG, &K.ss_reg_capacity, NULL, 0, 1L << 30},
    {"HAKMEM_MID_REG_CAPACITY", KB_LONG, &K.mid_reg_capacity, NULL, 0, 1L << 30},
    {"HAKMEM_L25_REG_CAPACITY", KB_LONG, &K.l25_reg_capacity, NULL, 0, 1L << 30},
    {"HAKMEM_SS_REG_DROP_EVERY", KB_LONG, &K.ss_drop_every, NULL, 0, 1L << 30},
    {"HAKMEM_MID_REG_DROP_EVERY", KB_LONG, &K.mid_drop_every, NULL, 0, 1L << 30},
    {"HAKMEM_L25_REG_DROP_EVERY", KB_LONG, &K.l25_drop_every, NULL, 0, 1L << 30},
    {"HAKMEM_SS_EARLY_RELEASE", KB_LONG, &K.ss_early_release, NULL, 0, 1L << 20},
    {"HAKMEM_SS_GUARD", KB_ENUM, &K.ss_guard, k_guard_names, 0, 1},
    {"HAKMEM_ALLOC_TRACE", KB_BOOL, &K.alloc_trace, NULL, 0, 1},
    {"HAKMEM_TRACE_FD", KB_LONG, &K.trace_fd, NULL, 0, 1L << 20},
};
#define NKNOBS (sizeof k_knobs / sizeof k_knobs[0])

static const knob_def *knob_find(const char *name) {
    for (size_t i = 0; i < NKNOBS; i++)
        if (strcmp(k_knobs[i].name, name) == 0) return &k_knobs[i];
    return NULL;
}

static int knob_parse(const knob_def *d, const char *value, long *out) {
    if (!value) return set_error(HAK_EINVAL, "%s: no value", d->name);
    if (d->type == KB_ENUM) {
        for (long i = 0; d->names[i]; i++)
            if (strcmp(d->names[i], value) == 0) { *out = i; return HAK_OK; }
        char list[160] = "";
        for (long i = 0; d->names[i]; i++) {
            strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
            strncat(list, d->names[i], sizeof list - strlen(list) - 1);
        }
        return set_error(HAK_EINVAL, "%s: '%s' is not one of %s", d->name, value, list);
    }
    char *end = NULL;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno || end == value || *end) return set_error(HAK_EINVAL, "%s: '%s' is not a number", d->name, value);
    if (v < d->min || v > d->max)
        return set_error(HAK_EINVAL, "%s: %ld is out of range [%ld, %ld]", d->name, v, d->min, d->max);
    *out = v;
    return HAK_OK;
}

/* ---------------------------------------------------------------- state */
/* The heap lock: a futex word, 0 free, 1 held, 2 held with waiters (Drepper, "Futexes Are
 * Tricky", mutex 3), spinning a little before it sleeps. While the process has a single thread
 * (glibc's __libc_single_threaded, which goes false before a second thread first runs) nobody
 * can contend, so LOCK/UNLOCK skip the atomics, as glibc's own malloc does. The allocator never
 * creates a thread, so a section entered without the lock is left without it. */
static uint32_t g_lock;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_inited; /* set, with release, once init_once has run: ensure_init's fast path */

/* HAKMEM_TRACE_FILE: "%p" becomes the pid. Kept so the preload library can reopen it in a
 * forked child. Opened O_APPEND (whole lines from several processes never interleave) and
 * moved to a high fd, out of the way of programs that expect their own low fd numbers. */
static char g_trace_path[512];
static int g_trace_file_fd = -1;

static int trace_file_open(void) {
    char path[600];
    size_t o = 0;
    for (const char *s = g_trace_path; *s && o + 24 < sizeof path; s++) {
        if (s[0] == '%' && s[1] == 'p') {
            o += (size_t)snprintf(path + o, sizeof path - o, "%ld", (long)getpid());
            s++;
        } else {
            path[o++] = *s;
        }
    }
    path[o] = 0;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        hak_log("[hakmem] WARNING: cannot open HAKMEM_TRACE_FILE %s: %s\n", path, strerror(errno));
        return -1;
    }
    int high = fcntl(fd, F_DUPFD_CLOEXEC, 900);
    if (high >= 0) { close(fd); fd = high; }
    g_trace_file_fd = fd;
    g_log_fd = fd;
    K.trace_fd = fd;
    return fd;
}

/* First line of a process image in its trace file: a log can then tell the images of one pid
 * (exec) and of its forks apart. free_seq: frees counted before this image's first line (a
 * forked child continues its parent's count). */
static uint64_t g_free_seq;
static hak_stats g_stats;

static void trace_process_line(const char *start) {
    hak_log("[hakmem] PROCESS: pid=%ld ppid=%ld start=%s free_seq=%llu mode=%s probe=%s\n", (long)getpid(),
            (long)getppid(), start, (unsigned long long)g_free_seq, k_mode_names[K.mode_ldpreload], k_probe_names[K.probe]);
}

static void init_once(void) {
    g_page = hak_probe_page_size();
    const char *pre = getenv("LD_PRELOAD");
    K.mode_ldpreload = (pre && strstr(pre, "libhakmem")) ? 1 : 0;
    const char *tf = getenv("HAKMEM_TRACE_FILE");
    if (tf && *tf && strlen(tf) < sizeof g_trace_path) {
        memcpy(g_trace_path, tf, strlen(tf) + 1);
        trace_file_open();
    }
    for (size_t i = 0; i < NKNOBS; i++) {
        const char *e = getenv(k_knobs[i].name);
        long v;
        if (e && *e) {
            if (knob_parse(&k_knobs[i], e, &v) == HAK_OK) *k_knobs[i].val = v;
            else hak_log("[hakmem] WARNING: ignoring %s\n", t_err);
        }
        if (k_knobs[i].val == &K.trace_fd) g_log_fd = (int)K.trace_fd;
    }
    if (g_trace_file_fd >= 0) {
        g_log_fd = (int)(K.trace_fd = g_trace_file_fd); /* the file wins over the fd */
        trace_process_line("exec");
    }
}

static void init_once_mark(void) {
    init_once();
    __atomic_store_n(&g_inited, 1, __ATOMIC_RELEASE);
}

static inline void ensure_init(void) {
    if (__builtin_expect(!__atomic_load_n(&g_inited, __ATOMIC_ACQUIRE), 0)) pthread_once(&g_once, init_once_mark);
}

#if defined(__has_include)
#if __has_include(<sys/single_threaded.h>)
#include <sys/single_threaded.h>
#define HAK_SINGLE_THREADED() (__libc_single_threaded != 0)
#endif
#endif
#ifndef HAK_SINGLE_THREADED
#define HAK_SINGLE_THREADED() 0
#endif

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

__attribute__((noinline)) static void lock_slow(void) {
    for (int spin = 0; spin < 128; spin++) {
        uint32_t c = 0;
        if (__atomic_load_n(&g_lock, __ATOMIC_RELAXED) == 0 &&
            __atomic_compare_exchange_n(&g_lock, &c, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            return;
        cpu_relax();
    }
    while (__atomic_exchange_n(&g_lock, 2, __ATOMIC_ACQUIRE) != 0)
        syscall(SYS_futex, &g_lock, FUTEX_WAIT_PRIVATE, 2, NULL, NULL, 0);
}

static inline void lock_heap(void) {
    if (HAK_SINGLE_THREADED()) return;
    uint32_t c = 0;
    if (!__atomic_compare_exchange_n(&g_lock, &c, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) lock_slow();
}

static inline void unlock_heap(void) {
    if (HAK_SINGLE_THREADED()) return;
    if (__atomic_exchange_n(&g_lock, 0, __ATOMIC_RELEASE) == 2)
        syscall(SYS_futex, &g_lock, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

#define LOCK() lock_heap()
#define UNLOCK() unlock_heap()
/* A forked child has only the forking thread, which held the lock across fork (preload). */
#define LOCK_RESET() __atomic_store_n(&g_lock, 0, __ATOMIC_RELEASE)

/* ------------------------------------------------------ request trace */
static hak_reqtrace_rec g_reqring[HAK_REQTRACE_RING];
static uint64_t g_reqseq;

static const char *const k_reqop_names[HAK_REQ_COUNT] = {"register", "unregister", "lookup_hit",
                                                         "lookup_miss", "capacity_error", "dropped"};
static const char *const k_reg_names[3] = {"ss", "mid", "l25"};

static void reqtrace_print(const hak_reqtrace_rec *r) {
    hak_log("[hakmem-reg] seq=%llu free_seq=%llu tid=%llu op=%s reg=%s base=0x%lx addr=0x%lx live=%u\n",
            (unsigned long long)r->seq, (unsigned long long)r->free_seq, (unsigned long long)r->tid,
            k_reqop_names[r->op], k_reg_names[r->reg], (unsigned long)r->base, (unsigned long)r->addr, r->live);
}

static void reqtrace_add(uint32_t op, uint32_t reg, uintptr_t base, uintptr_t addr, int32_t live) {
    if (!K.reqtrace) return;
    hak_reqtrace_rec *r = &g_reqring[g_reqseq % HAK_REQTRACE_RING];
    r->seq = ++g_reqseq;
    r->free_seq = g_free_seq;
    r->base = base;
    r->addr = addr;
    r->op = op;
    r->reg = reg;
    r->live = live < 0 ? 0 : (uint32_t)live;
    r->pad = 0;
    r->tid = cur_tid();
    if (K.reqtrace == 2 || K.reqtrace == 4) reqtrace_print(r);
}

/* ----------------------------------------------------------- registries */
/* One implementation serves the SuperSlab, Mid and L25 registries: base (aligned to the
 * region size) -> region metadata, with a capacity limit and drop-every-Nth injection. */
typedef struct registry {
    hmap map;
    uint32_t kind;
    uintptr_t align;
    long *capacity;
    long *drop_every;
    uint64_t attempts;
} registry;

static registry g_ss_reg = {.kind = HAK_REG_SS, .align = HAK_SUPERSLAB_SIZE, .capacity = &K.ss_reg_capacity, .drop_every = &K.ss_drop_every};
static registry g_mid_reg = {.kind = HAK_REG_MID, .align = HAK_MID_CHUNK_SIZE, .capacity = &K.mid_reg_capacity, .drop_every = &K.mid_drop_every};
static registry g_l25_reg = {.kind = HAK_REG_L25, .align = HAK_L25_CHUNK_SIZE, .capacity = &K.l25_reg_capacity, .drop_every = &K.l25_drop_every};

static int reg_register(registry *r, uintptr_t base, void *meta, int32_t live) {
    r->attempts++;
    if (*r->drop_every > 0 && r->attempts % (uint64_t)*r->drop_every == 0) {
        reqtrace_add(HAK_REQ_DROPPED, r->kind, base, base, live);
        HAK_DBG("[hakmem] DEBUG: %s registration of 0x%lx dropped (fault injection, every %ld)\n",
                k_reg_names[r->kind], (unsigned long)base, *r->drop_every);
        return 0;
    }
    if (*r->capacity > 0 && (long)r->map.count >= *r->capacity) {
        reqtrace_add(HAK_REQ_CAPACITY_ERROR, r->kind, base, base, live);
        if (r->kind == HAK_REG_SS)
            HAK_DBG("[SP_META_CAPACITY_ERROR] SuperSlab registry full (%zu/%ld): SuperSlab 0x%lx is used unregistered\n",
                    r->map.count, *r->capacity, (unsigned long)base);
        else
            HAK_DBG("[hakmem] DEBUG: %s registry full (%zu/%ld): chunk 0x%lx is used unregistered\n",
                    k_reg_names[r->kind], r->map.count, *r->capacity, (unsigned long)base);
        return 0;
    }
    if (hm_put(&r->map, base, meta) != 0) return 0;
    reqtrace_add(HAK_REQ_REGISTER, r->kind, base, base, live);
    return 1;
}

static void reg_unregister(registry *r, uintptr_t base, int32_t live) {
    if (hm_del(&r->map, base)) reqtrace_add(HAK_REQ_UNREGISTER, r->kind, base, base, live);
}

static int32_t region_live(uint32_t kind, const void *meta);

static void *reg_lookup(registry *r, uintptr_t addr) {
    uintptr_t base = addr & ~(r->align - 1);
    void *v = hm_get(&r->map, base);
    if (K.reqtrace && K.reqtrace < 3) reqtrace_add(v ? HAK_REQ_LOOKUP_HIT : HAK_REQ_LOOKUP_MISS, r->kind, base, addr, v ? region_live(r->kind, v) : 0);
    return v;
}

/* ----------------------------------------------------------------- Tiny */
/* A SuperSlab: HAK_SUPERSLAB_SIZE bytes aligned to their size, all blocks of one class,
 * carved from the first byte on. Metadata (free list head, counts, live bitmap) lives out
 * of line in this struct; the free list's next pointers live in the free blocks. */
typedef struct ss_meta {
    uintptr_t base;
    uint32_t cls, block_size, capacity, bump;
    int32_t live;
    uint32_t registered;
    uint32_t shift;              /* log2(block_size): block index = (addr - base) >> shift */
    void *freelist;
    struct ss_meta *next, *prev; /* class list */
    size_t meta_bytes;
    uint64_t *mark;              /* scratch bitmap for the check */
    uint64_t bits[];             /* live bitmap, then mark bitmap */
} ss_meta;

typedef struct graveyard_rec {
    uintptr_t base;
    uint32_t cls;
    int32_t live;
    uint64_t free_seq;
} graveyard_rec;

static hmap g_ss_all;              /* ground truth: every SuperSlab in use, registered or not */
static ss_meta *g_cls_head[HAK_TINY_NUM_CLASSES];
static ss_meta *g_cls_cur[HAK_TINY_NUM_CLASSES];
static uint32_t g_cls_count[HAK_TINY_NUM_CLASSES];
static graveyard_rec g_graveyard[GRAVEYARD_SLOTS];
static uint32_t g_graveyard_n;

static inline int bit_get(const uint64_t *b, size_t i) { return (int)((b[i >> 6] >> (i & 63)) & 1); }
static inline void bit_set(uint64_t *b, size_t i) { b[i >> 6] |= 1ull << (i & 63); }
static inline void bit_clr(uint64_t *b, size_t i) { b[i >> 6] &= ~(1ull << (i & 63)); }

/* Classes are 8 << c bytes: the class of size is ceil(log2(size)) - 3. */
_Static_assert(HAK_TINY_NUM_CLASSES == 8 && TINY_MAX == 1024u, "Tiny classes are 8, 16, ..., 1024");
static int tiny_class_of(size_t size) {
    if (size > TINY_MAX) return -1;
    if (size <= 8) return 0;
    return (int)(64 - __builtin_clzll((unsigned long long)(size - 1))) - 3;
}

static ss_meta *ss_new_locked(uint32_t cls) {
    uint32_t bs = hak_tiny_class_sizes_const[cls];
    uint32_t cap = HAK_SUPERSLAB_SIZE / bs;
    size_t words = (cap + 63) / 64;
    size_t mb = page_up(sizeof(ss_meta) + 2 * words * sizeof(uint64_t));
    ss_meta *m = sys_map(mb);
    if (!m) return NULL;
    void *base = map_aligned(HAK_SUPERSLAB_SIZE, HAK_SUPERSLAB_SIZE, 1, K.ss_guard == 1);
    if (!base) { munmap(m, mb); return NULL; }
    m->base = (uintptr_t)base;
    m->cls = cls;
    m->block_size = bs;
    m->shift = (uint32_t)__builtin_ctz(bs);
    m->capacity = cap;
    m->meta_bytes = mb;
    m->mark = m->bits + words;
    if (hm_put(&g_ss_all, m->base, m) != 0) {
        munmap(base, HAK_SUPERSLAB_SIZE);
        munmap(m, mb);
        return NULL;
    }
    m->next = g_cls_head[cls];
    if (m->next) m->next->prev = m;
    g_cls_head[cls] = m;
    g_cls_count[cls]++;
    g_stats.superslabs++;
    m->registered = (uint32_t)reg_register(&g_ss_reg, m->base, m, 0);
    if (m->registered) g_stats.superslabs_registered++;
    HAK_DBG("[hakmem] DEBUG: SuperSlab 0x%lx class %u (%u-byte blocks) created, %s\n", (unsigned long)m->base,
            cls, bs, m->registered ? "registered" : "NOT registered");
    return m;
}

static void ss_release_locked(ss_meta *m) {
    heap_gen_bump();
    if (m->live > 0) {
        graveyard_rec *g = &g_graveyard[g_graveyard_n++ % GRAVEYARD_SLOTS];
        g->base = m->base;
        g->cls = m->cls;
        g->live = m->live;
        g->free_seq = g_free_seq;
        g_stats.superslabs_released_live++;
        HAK_DBG("[hakmem] DEBUG: SuperSlab 0x%lx released with %d live blocks (HAKMEM_SS_EARLY_RELEASE)\n",
                (unsigned long)m->base, m->live);
    }
    if (m->registered) {
        reg_unregister(&g_ss_reg, m->base, m->live);
        g_stats.superslabs_registered--;
    }
    hm_del(&g_ss_all, m->base);
    if (m->prev) m->prev->next = m->next;
    else g_cls_head[m->cls] = m->next;
    if (m->next) m->next->prev = m->prev;
    if (g_cls_cur[m->cls] == m) g_cls_cur[m->cls] = NULL;
    g_cls_count[m->cls]--;
    g_stats.superslabs--;
    munmap((void *)m->base, HAK_SUPERSLAB_SIZE);
    if (K.ss_guard == 1) munmap((void *)(m->base - g_page), g_page);
    munmap(m, m->meta_bytes);
}

static inline int ss_has_space(const ss_meta *m) { return m->freelist || m->bump < m->capacity; }

static void *tiny_alloc_locked(uint32_t cls) {
    ss_meta *m = g_cls_cur[cls];
    if (!m || !ss_has_space(m)) {
        for (m = g_cls_head[cls]; m && !ss_has_space(m); m = m->next) {}
        if (!m) m = ss_new_locked(cls);
        if (!m) return NULL;
        g_cls_cur[cls] = m;
    }
    void *p;
    if (m->freelist) {
        p = m->freelist;
        m->freelist = *(void **)p;
    } else {
        p = (void *)(m->base + (uintptr_t)m->bump * m->block_size);
        m->bump++;
    }
    size_t idx = ((uintptr_t)p - m->base) >> m->shift;
    if (idx < m->capacity) bit_set(m->bits, idx);
    m->live++;
    if (idx < m->bump && !((uintptr_t)p & (m->block_size - 1))) note_alloc((uintptr_t)p, HAK_OWNER_TINY | HAK_OWNER_LIVE_BLOCK);
    return p;
}

/* Free into a known SuperSlab. Like a release-build allocator it trusts the pointer: an
 * interior pointer or a double free goes onto the free list as given (the check finds it). */
static void tiny_free_in_locked(ss_meta *m, void *ptr) {
    size_t idx = ((uintptr_t)ptr - m->base) >> m->shift;
    if (idx < m->capacity) {
        if (!bit_get(m->bits, idx))
            HAK_DBG("[hakmem] DEBUG: hak_tiny_free: block %p of SuperSlab 0x%lx is not live (double free?)\n", ptr,
                    (unsigned long)m->base);
        bit_clr(m->bits, idx);
    }
    *(void **)ptr = m->freelist;
    m->freelist = ptr;
    m->live--;
    if (K.ss_early_release > 0 && m->live == K.ss_early_release) {
        ss_release_locked(m);
    } else if (m->live == 0 && g_cls_count[m->cls] > 1) {
        ss_release_locked(m);
    }
}

static ss_meta *ss_find_locked(uintptr_t addr) {
    return hm_get(&g_ss_all, addr & ~(uintptr_t)(HAK_SUPERSLAB_SIZE - 1));
}

/* hak_tiny_free as the router's fallbacks call it: the SS registry first, then the shared
 * pool's own list of SuperSlabs (how a registry escapee is still freed correctly). */
static void tiny_free_public_locked(void *ptr) {
    ss_meta *m = reg_lookup(&g_ss_reg, (uintptr_t)ptr);
    if (!m) m = ss_find_locked((uintptr_t)ptr);
    if (!m) {
        HAK_DBG("[hakmem] DEBUG: hak_tiny_free: %p is in no SuperSlab (ignored)\n", ptr);
        return;
    }
    tiny_free_in_locked(m, ptr);
}

/* ---------------------------------------------------------- Mid / L25 */
typedef struct pool_chunk {
    uintptr_t base;
    uint32_t cls, class_bytes, capacity, bump;
    int32_t live;
    uint32_t registered;
    uint32_t pool; /* HAK_REG_MID / HAK_REG_L25 */
    uint32_t shift; /* log2(class_bytes): block index = (raw - base) >> shift */
    struct pool_chunk *next;
    size_t meta_bytes;
    uint64_t *mark;
    uint64_t bits[];
} pool_chunk;

typedef struct pool_def {
    const char *name;
    uint32_t kind;     /* HAK_REG_MID / HAK_REG_L25 */
    uint32_t method;
    uint32_t owner;
    size_t chunk_size;
    int nclasses;
    const uint32_t *class_bytes;
    registry *reg;
    hmap all;          /* ground truth: chunk base -> chunk */
    pool_chunk *head[HAK_MID_NUM_CLASSES];
    pool_chunk *cur[HAK_MID_NUM_CLASSES];
    void *freelist[HAK_MID_NUM_CLASSES]; /* raw block addresses; next pointer at raw + HEADER */
    uint64_t nchunks;
} pool_def;

static int32_t region_live(uint32_t kind, const void *meta) {
    return kind == HAK_REG_SS ? ((const ss_meta *)meta)->live : ((const pool_chunk *)meta)->live;
}

static pool_def g_mid = {.name = "Mid", .kind = HAK_REG_MID, .method = ALLOC_METHOD_POOL, .owner = HAK_OWNER_MID,
                         .chunk_size = HAK_MID_CHUNK_SIZE, .nclasses = HAK_MID_NUM_CLASSES,
                         .class_bytes = k_mid_class_bytes, .reg = &g_mid_reg};
static pool_def g_l25 = {.name = "L25", .kind = HAK_REG_L25, .method = ALLOC_METHOD_L25_POOL, .owner = HAK_OWNER_L25,
                         .chunk_size = HAK_L25_CHUNK_SIZE, .nclasses = HAK_L25_NUM_CLASSES,
                         .class_bytes = k_l25_class_bytes, .reg = &g_l25_reg};

static int pool_class_of(const pool_def *p, size_t size) {
    for (int c = 0; c < p->nclasses; c++)
        if (size + HAK_HEADER_SIZE <= p->class_bytes[c]) return c;
    return -1;
}

static pool_chunk *pool_chunk_new_locked(pool_def *p, int cls) {
    uint32_t cb = p->class_bytes[cls];
    uint32_t cap = (uint32_t)(p->chunk_size / cb);
    size_t words = (cap + 63) / 64;
    size_t mb = page_up(sizeof(pool_chunk) + 2 * words * sizeof(uint64_t));
    pool_chunk *c = sys_map(mb);
    if (!c) return NULL;
    void *base = map_aligned(p->chunk_size, p->chunk_size, 0, 0);
    if (!base) { munmap(c, mb); return NULL; }
    c->base = (uintptr_t)base;
    c->cls = (uint32_t)cls;
    c->class_bytes = cb;
    c->shift = (uint32_t)__builtin_ctz(cb);
    c->capacity = cap;
    c->pool = p->kind;
    c->meta_bytes = mb;
    c->mark = c->bits + words;
    if (hm_put(&p->all, c->base, c) != 0) {
        munmap(base, p->chunk_size);
        munmap(c, mb);
        return NULL;
    }
    c->next = p->head[cls];
    p->head[cls] = c;
    p->nchunks++;
    c->registered = (uint32_t)reg_register(p->reg, c->base, c, 0);
    return c;
}

static void write_header(void *raw, uint32_t method, size_t size, uintptr_t site, size_t class_bytes) {
    AllocHeader *h = raw;
    h->magic = HAKMEM_MAGIC;
    h->method = method;
    h->size = size;
    h->alloc_site = site;
    h->class_bytes = class_bytes;
}

static void *pool_alloc_locked(pool_def *p, int cls, size_t size, uintptr_t site) {
    void *raw = p->freelist[cls];
    pool_chunk *c;
    if (raw) {
        p->freelist[cls] = *(void **)((char *)raw + HAK_HEADER_SIZE);
        c = hm_get(&p->all, (uintptr_t)raw & ~(uintptr_t)(p->chunk_size - 1));
    } else {
        c = p->cur[cls];
        if (!c || c->bump >= c->capacity) {
            c = pool_chunk_new_locked(p, cls);
            if (!c) return NULL;
            p->cur[cls] = c;
        }
        raw = (void *)(c->base + (uintptr_t)c->bump * c->class_bytes);
        c->bump++;
    }
    if (c) {
        size_t idx = ((uintptr_t)raw - c->base) >> c->shift;
        if (idx < c->capacity) bit_set(c->bits, idx);
        c->live++;
        if (idx < c->bump && !(((uintptr_t)raw - c->base) & (c->class_bytes - 1)))
            note_alloc((uintptr_t)raw + HAK_HEADER_SIZE, p->owner | HAK_OWNER_LIVE_BLOCK);
    }
    write_header(raw, p->method, size, site, p->class_bytes[cls]);
    return (char *)raw + HAK_HEADER_SIZE;
}

/* hak_pool_free / hak_l25_pool_free: trusts ptr - HEADER_SIZE to be the block. */
static void pool_free_locked(pool_def *p, void *ptr) {
    uintptr_t raw = (uintptr_t)ptr - HAK_HEADER_SIZE;
    pool_chunk *c = hm_get(&p->all, raw & ~(uintptr_t)(p->chunk_size - 1));
    if (!c) {
        HAK_DBG("[hakmem] DEBUG: %s pool free: %p is in no %s chunk (ignored)\n", p->name, ptr, p->name);
        return;
    }
    size_t idx = (raw - c->base) >> c->shift;
    if (idx < c->capacity) {
        if (!bit_get(c->bits, idx))
            HAK_DBG("[hakmem] DEBUG: %s pool free: block %p is not live (double free?)\n", p->name, ptr);
        bit_clr(c->bits, idx);
    }
    *(void **)(raw + HAK_HEADER_SIZE) = p->freelist[c->cls];
    p->freelist[c->cls] = (void *)raw;
    c->live--;
}

/* --------------------------------------------------------------- large */
/* Large blocks: header + mmap. The mapping starts at page_down(raw) and is class_bytes long.
 * g_large tracks every mapping by raw, live or held by a cache. */
enum { LG_LIVE = 1, LG_BIGCACHE = 2, LG_WHALE = 3, LG_BATCH = 4 };
typedef struct cache_ent {
    uintptr_t raw;
    size_t class_bytes;
} cache_ent;

static hmap g_large;  /* raw -> (void*)state */
static cache_ent g_bigcache[BIGCACHE_SLOTS];
static uint32_t g_bigcache_n;
static cache_ent g_whale[WHALE_SLOTS];
static uint32_t g_whale_n;
static cache_ent g_batch[BATCH_SLOTS];
static uint32_t g_batch_n;

static void large_set_state(uintptr_t raw, long st) { hm_put(&g_large, raw, (void *)st); }

static void *cache_take(cache_ent *ents, uint32_t *n, size_t need) {
    for (uint32_t i = 0; i < *n; i++) {
        /* an aligned block's mapping starts below raw: only the part from raw on is reusable */
        size_t from_raw = ents[i].class_bytes - (ents[i].raw - page_down(ents[i].raw));
        if (from_raw >= need && ents[i].class_bytes <= 2 * need) {
            uintptr_t raw = ents[i].raw;
            ents[i] = ents[--*n];
            return (void *)raw;
        }
    }
    return NULL;
}

static void *large_alloc_locked(size_t size, size_t align, uintptr_t site) {
    size_t need = page_up(size + HAK_HEADER_SIZE);
    if (need < size) return NULL;
    void *raw = NULL;
    size_t class_bytes = need;
    if (align <= 16) {
        if (K.feat_bigcache) raw = cache_take(g_bigcache, &g_bigcache_n, need);
        if (!raw && K.feat_whale) raw = cache_take(g_whale, &g_whale_n, need);
        if (raw) {
            AllocHeader *h = raw;
            class_bytes = h->class_bytes;
            g_stats.mmap_cached--;
            if (h->method != ALLOC_METHOD_MMAP) {
                /* a pool block the BigCache took in by mistake (HAKMEM_BIGCACHE_L25): hand it out as
                 * what its header says, so its next free goes back the way it came */
                h->size = size;
                h->alloc_site = site;
                return (char *)raw + HAK_HEADER_SIZE;
            }
        } else {
            raw = sys_map(need);
            if (!raw) return NULL;
        }
    } else {
        /* aligned: over-map, put ptr on the boundary, trim; the mapping starts at page_down(raw) */
        size_t span = page_up(need + align);
        uintptr_t m = (uintptr_t)sys_map(span);
        if (!m) return NULL;
        uintptr_t ptr = (m + HAK_HEADER_SIZE + align - 1) & ~(uintptr_t)(align - 1);
        uintptr_t start = page_down(ptr - HAK_HEADER_SIZE);
        uintptr_t end = page_up(ptr + size);
        if (start > m) munmap((void *)m, start - m);
        if (m + span > end) munmap((void *)end, m + span - end);
        raw = (void *)(ptr - HAK_HEADER_SIZE);
        class_bytes = end - start;
    }
    write_header(raw, ALLOC_METHOD_MMAP, size, site, class_bytes);
    large_set_state((uintptr_t)raw, LG_LIVE);
    note_alloc((uintptr_t)raw + HAK_HEADER_SIZE, HAK_OWNER_MMAP | HAK_OWNER_LIVE_BLOCK);
    g_stats.mmap_live++;
    return (char *)raw + HAK_HEADER_SIZE;
}

static void hkm_sys_munmap(void *raw, size_t class_bytes) {
    hm_del(&g_large, (uintptr_t)raw);
    munmap((void *)page_down((uintptr_t)raw), class_bytes);
}

/* hak_bigcache_put: 1 if the block was cached. Takes whatever header block it is given. */
static int hak_bigcache_put(void *ptr, size_t size, uintptr_t site) {
    (void)size; (void)site;
    if (g_bigcache_n >= BIGCACHE_SLOTS) return 0;
    uintptr_t raw = (uintptr_t)ptr - HAK_HEADER_SIZE;
    g_bigcache[g_bigcache_n].raw = raw;
    g_bigcache[g_bigcache_n].class_bytes = ((AllocHeader *)raw)->class_bytes;
    g_bigcache_n++;
    if (hm_get(&g_large, raw)) { large_set_state(raw, LG_BIGCACHE); g_stats.mmap_live--; }
    g_stats.mmap_cached++;
    return 1;
}

static void batch_flush_locked(void) {
    for (uint32_t i = 0; i < g_batch_n; i++) {
        madvise((void *)page_down(g_batch[i].raw), g_batch[i].class_bytes, MADV_DONTNEED);
        hkm_sys_munmap((void *)g_batch[i].raw, g_batch[i].class_bytes);
        g_stats.mmap_cached--;
    }
    g_batch_n = 0;
}

static void hak_batch_add(void *raw, size_t size) {
    (void)size;
    g_batch[g_batch_n].raw = (uintptr_t)raw;
    g_batch[g_batch_n].class_bytes = ((AllocHeader *)raw)->class_bytes;
    g_batch_n++;
    large_set_state((uintptr_t)raw, LG_BATCH);
    g_stats.mmap_live--;
    g_stats.mmap_cached++;
    if (g_batch_n == BATCH_SLOTS) batch_flush_locked();
}

/* hkm_whale_put: 0 if kept, non-zero if the caller must munmap (the seed's convention). */
static int hkm_whale_put(void *raw, size_t size) {
    (void)size;
    if (!K.feat_whale || g_whale_n >= WHALE_SLOTS) return 1;
    g_whale[g_whale_n].raw = (uintptr_t)raw;
    g_whale[g_whale_n].class_bytes = ((AllocHeader *)raw)->class_bytes;
    g_whale_n++;
    large_set_state((uintptr_t)raw, LG_WHALE);
    g_stats.mmap_live--;
    g_stats.mmap_cached++;
    return 0;
}

/* ------------------------------------------------------------- MALLOC */
static hmap g_malloc; /* raw -> 1 */

static void *malloc_method_alloc_locked(size_t size, uintptr_t site) {
    if (size + HAK_HEADER_SIZE < size) return NULL;
    void *raw = __libc_malloc(size + HAK_HEADER_SIZE);
    if (!raw) return NULL;
    write_header(raw, ALLOC_METHOD_MALLOC, size, site, size + HAK_HEADER_SIZE);
    hm_put(&g_malloc, (uintptr_t)raw, (void *)1);
    g_stats.malloc_live++;
    note_alloc((uintptr_t)raw + HAK_HEADER_SIZE, HAK_OWNER_MALLOC | HAK_OWNER_LIVE_BLOCK);
    return (char *)raw + HAK_HEADER_SIZE;
}

/* --------------------------------------------------------- free router */
static const char *const k_route_names[HAK_ROUTE_COUNT] = {
    "none", "null", "ss_hit", "mid_hit", "l25_hit", "unmapped_header_fallback", "invalid_magic_tiny_recovery",
    "invalid_magic_skip", "invalid_magic_libc", "bigcache", "bigcache_l25", "pool_hdr", "pool_hdr_disabled",
    "l25_hdr", "malloc_hdr", "mmap_batch", "mmap_whale", "mmap_munmap", "unknown_method"};
static const char *const k_action_names[HAK_ACTION_COUNT] = {
    "none", "tiny_free", "pool_free", "l25_free", "libc_free_ptr", "libc_free_raw", "bigcache_put", "batch_add",
    "whale_put", "munmap"};
static const char *const k_stage_names[HAK_AT_COUNT] = {
    "idle", "alloc", "ss_lookup", "mid_lookup", "l25_lookup", "probe", "magic_read", "dispatch", "tiny_free",
    "pool_free", "l25_free", "libc_free", "bigcache", "batch", "whale", "munmap", "realloc", "usable_size", "check"};
static const char *const k_stage_bit_names[6] = {"ss", "mid", "l25", "probe", "magic", "method"};

static hak_free_decision g_route_ring[HAK_ROUTE_RING];
static uint64_t g_route_ring_n;

static void stage_list(uint32_t mask, char *buf, size_t cap) {
    size_t o = 0;
    buf[0] = 0;
    for (int i = 0; i < 6; i++) {
        if (!(mask & (1u << i))) continue;
        int n = snprintf(buf + o, cap - o, "%s%s", o ? "," : "", k_stage_bit_names[i]);
        if (n < 0 || (size_t)n >= cap - o) break;
        o += (size_t)n;
    }
    if (!o) snprintf(buf, cap, "-");
}

__attribute__((noinline, cold)) static void route_trace_line(hak_free_decision d) {
    char tried[48], hit[48], magic[16], method[16];
    stage_list(d.stages_tried, tried, sizeof tried);
    stage_list(d.stages_hit, hit, sizeof hit);
    if (d.stages_tried & HAK_STAGE_MAGIC) snprintf(magic, sizeof magic, "0x%X", d.magic_found);
    else snprintf(magic, sizeof magic, "-");
    if (d.method >= 0) snprintf(method, sizeof method, "%d", d.method);
    else snprintf(method, sizeof method, "-");
    hak_log("[hakmem-route] seq=%llu tid=%llu ptr=0x%lx route=%s action=%s tried=%s hit=%s probe=%s magic=%s method=%s\n",
            (unsigned long long)d.seq, (unsigned long long)d.tid, (unsigned long)d.ptr, k_route_names[d.route],
            k_action_names[d.action], tried, hit,
            d.probe == HAK_PROBE_NOT_RUN ? "-" : d.probe ? "readable" : "unreadable", magic, method);
}

/* Records the decision (thread's last, the ring, the counters) and prints the route-trace
 * line, before the action runs: if the action crashes, the line is already out. Inlined into
 * free_locked, whose d never has its address taken, so the decision lives in registers and is
 * stored field by field: copying it out of memory right after its narrow fields were written
 * would stall on store forwarding, twice per free. */
static inline __attribute__((always_inline)) void decide(hak_free_decision *d, uint32_t route, uint32_t action) {
    d->route = route;
    d->action = action;
    t_last = *d;
    t_has_last = 1;
    g_route_ring[g_route_ring_n++ % HAK_ROUTE_RING] = *d;
    g_stats.route_counts[route]++;
    if (K.route_trace) route_trace_line(*d);
}

static int run_probe(long kind, void *raw) {
    switch (kind) {
    case HAK_PROBE_SEED_MINCORE: return hak_probe_seed_mincore(raw);
    case HAK_PROBE_SEED_MSYNC: return hak_probe_seed_msync(raw);
    case HAK_PROBE_MINCORE: return hak_probe_mincore(raw, HAK_HEADER_SIZE);
    case HAK_PROBE_SAFE: return hak_probe_safe(raw, HAK_HEADER_SIZE, NULL);
    default: return 1;
    }
}

#define STAGE(s) (t_state.stage = (s))

static void reqtrace_dump_unlocked(void *ptr);

static void libc_free_at_stage(void *p) {
    STAGE(HAK_AT_LIBC_FREE);
    __libc_free(p);
}

static void free_locked(void *ptr) {
    heap_gen_bump();
    hak_free_decision dd = {
        .seq = ++g_free_seq,
        .ptr = (uintptr_t)ptr,
        .probe = HAK_PROBE_NOT_RUN,
        .probe_kind = (uint32_t)K.probe,
        .method = -1,
        .tid = cur_tid(),
    };
    hak_free_decision *d = &dd;   /* decide() is inlined: dd stays in registers */
    t_state.ptr = (uintptr_t)ptr;
    t_state.seq = d->seq;
    g_stats.frees++;

    if (!ptr) { decide(d, HAK_ROUTE_NULL, HAK_ACTION_NONE); return; }

    /* SS-first lookup */
    d->stages_tried |= HAK_STAGE_SS;
    STAGE(HAK_AT_SS_LOOKUP);
    ss_meta *ss = reg_lookup(&g_ss_reg, (uintptr_t)ptr);
    if (ss) {
        d->stages_hit |= HAK_STAGE_SS;
        decide(d, HAK_ROUTE_SS_HIT, HAK_ACTION_TINY_FREE);
        STAGE(HAK_AT_TINY_FREE);
        tiny_free_in_locked(ss, ptr);
        return;
    }
    d->stages_tried |= HAK_STAGE_MID;
    STAGE(HAK_AT_MID_LOOKUP);
    if (reg_lookup(&g_mid_reg, (uintptr_t)ptr)) {
        d->stages_hit |= HAK_STAGE_MID;
        decide(d, HAK_ROUTE_MID_HIT, HAK_ACTION_POOL_FREE);
        STAGE(HAK_AT_POOL_FREE);
        pool_free_locked(&g_mid, ptr);
        return;
    }
    d->stages_tried |= HAK_STAGE_L25;
    STAGE(HAK_AT_L25_LOOKUP);
    if (reg_lookup(&g_l25_reg, (uintptr_t)ptr)) {
        d->stages_hit |= HAK_STAGE_L25;
        decide(d, HAK_ROUTE_L25_HIT, HAK_ACTION_L25_FREE);
        STAGE(HAK_AT_L25_FREE);
        pool_free_locked(&g_l25, ptr);
        return;
    }

    /* header path (the seed's lines 111-151) */
    void *raw = (char *)ptr - HAK_HEADER_SIZE;
    if (K.probe != HAK_PROBE_OFF) {
        d->stages_tried |= HAK_STAGE_PROBE;
        STAGE(HAK_AT_PROBE);
        int readable = run_probe(K.probe, raw);
        d->probe = readable ? HAK_PROBE_READABLE : HAK_PROBE_UNREADABLE;
        if (readable) d->stages_hit |= HAK_STAGE_PROBE;
        if (!readable) {
            if (!K.mode_ldpreload && K.invalid_free_mode) {
                decide(d, HAK_ROUTE_UNMAPPED_HEADER_FALLBACK, HAK_ACTION_TINY_FREE);
                STAGE(HAK_AT_TINY_FREE);
                tiny_free_public_locked(ptr);
                return;
            }
            decide(d, HAK_ROUTE_UNMAPPED_HEADER_FALLBACK, HAK_ACTION_LIBC_FREE_PTR);
            libc_free_at_stage(ptr);
            return;
        }
    }

    d->stages_tried |= HAK_STAGE_MAGIC;
    STAGE(HAK_AT_MAGIC_READ);
    AllocHeader *hdr = (AllocHeader *)raw;
    uint32_t magic = *(volatile uint32_t *)&hdr->magic;
    d->magic_found = magic;
    if (magic != HAKMEM_MAGIC) {
        if (K.invalid_free_log) hak_log("[hakmem] ERROR: Invalid magic 0x%X (expected 0x%X)\n", magic, HAKMEM_MAGIC);
        reqtrace_dump_unlocked(ptr); /* the seed's hak_super_reg_reqtrace_dump(ptr); we hold the lock */
        if (!K.mode_ldpreload && K.invalid_free_mode) {
            decide(d, HAK_ROUTE_INVALID_MAGIC_TINY_RECOVERY, HAK_ACTION_TINY_FREE);
            STAGE(HAK_AT_TINY_FREE);
            tiny_free_public_locked(ptr);
            return;
        }
        if (K.invalid_free_mode) {
            static int leak_warn = 0;
            if (!leak_warn) {
                hak_log("[hakmem] WARNING: Skipping free of invalid pointer %p (may leak memory)\n", ptr);
                leak_warn = 1;
            }
            decide(d, HAK_ROUTE_INVALID_MAGIC_SKIP, HAK_ACTION_NONE);
            return;
        }
        decide(d, HAK_ROUTE_INVALID_MAGIC_LIBC, HAK_ACTION_LIBC_FREE_PTR);
        libc_free_at_stage(ptr);
        return;
    }
    d->stages_hit |= HAK_STAGE_MAGIC;

    STAGE(HAK_AT_DISPATCH);
    size_t hsize = hdr->size, hclass = hdr->class_bytes;
    uintptr_t hsite = hdr->alloc_site;
    uint32_t method = hdr->method;
    if (K.feat_bigcache && hclass >= HAK_BIGCACHE_MIN) {
        STAGE(HAK_AT_BIGCACHE);
        if (g_bigcache_n < BIGCACHE_SLOTS) {
            decide(d, HAK_ROUTE_BIGCACHE, HAK_ACTION_BIGCACHE_PUT);
            hak_bigcache_put(ptr, hsize, hsite);
            return;
        }
    }
    if (K.feat_bigcache_l25 && K.feat_bigcache && hsize >= HAK_BIGCACHE_L25_MIN && hsize < HAK_BIGCACHE_MIN) {
        STAGE(HAK_AT_BIGCACHE);
        if (g_bigcache_n < BIGCACHE_SLOTS) {
            decide(d, HAK_ROUTE_BIGCACHE_L25, HAK_ACTION_BIGCACHE_PUT);
            hak_bigcache_put(ptr, hsize, hsite);
            return;
        }
    }
    d->stages_tried |= HAK_STAGE_METHOD;
    d->method = (int32_t)method;
    switch (method) {
    case ALLOC_METHOD_POOL:
        d->stages_hit |= HAK_STAGE_METHOD;
        if (K.feat_pool) {
            decide(d, HAK_ROUTE_POOL_HDR, HAK_ACTION_POOL_FREE);
            STAGE(HAK_AT_POOL_FREE);
            pool_free_locked(&g_mid, ptr);
            return;
        }
        decide(d, HAK_ROUTE_POOL_HDR_DISABLED, HAK_ACTION_NONE);
        return;
    case ALLOC_METHOD_L25_POOL:
        d->stages_hit |= HAK_STAGE_METHOD;
        decide(d, HAK_ROUTE_L25_HDR, HAK_ACTION_L25_FREE);
        STAGE(HAK_AT_L25_FREE);
        pool_free_locked(&g_l25, ptr);
        return;
    case ALLOC_METHOD_MALLOC:
        d->stages_hit |= HAK_STAGE_METHOD;
        decide(d, HAK_ROUTE_MALLOC_HDR, HAK_ACTION_LIBC_FREE_RAW);
        if (hm_del(&g_malloc, (uintptr_t)raw)) g_stats.malloc_live--;
        libc_free_at_stage(raw);
        return;
    case ALLOC_METHOD_MMAP:
        d->stages_hit |= HAK_STAGE_METHOD;
        if (K.feat_batch && hsize >= HAK_BATCH_MIN_SIZE) {
            decide(d, HAK_ROUTE_MMAP_BATCH, HAK_ACTION_BATCH_ADD);
            STAGE(HAK_AT_BATCH);
            hak_batch_add(raw, hsize);
            return;
        }
        if (K.feat_whale && g_whale_n < WHALE_SLOTS) {
            decide(d, HAK_ROUTE_MMAP_WHALE, HAK_ACTION_WHALE_PUT);
            STAGE(HAK_AT_WHALE);
            hkm_whale_put(raw, hsize);
            return;
        }
        decide(d, HAK_ROUTE_MMAP_MUNMAP, HAK_ACTION_MUNMAP);
        STAGE(HAK_AT_MUNMAP);
        if (hm_get(&g_large, (uintptr_t)raw)) g_stats.mmap_live--;
        hkm_sys_munmap(raw, hclass);
        return;
    default:
        hak_log("[hakmem] ERROR: Unknown allocation method: %d\n", (int)method);
        decide(d, HAK_ROUTE_UNKNOWN_METHOD, HAK_ACTION_NONE);
        return;
    }
}

/* ------------------------------------------------------------ public API */
HAK_API int hak_init(void) {
    ensure_init();
    return HAK_OK;
}

HAK_API uint32_t hak_abi_version(void) { return HAK_ABI_VERSION; }

/* HAKMEM_ALLOC_TRACE: one line per allocation, so a route log can say what each freed pointer
 * was allocated as (docs/route-trace.md). */
enum { AP_TINY, AP_MID, AP_L25, AP_MMAP, AP_MALLOC };
static const char *const k_alloc_path_names[] = {"tiny", "mid", "l25", "mmap", "malloc"};

static void alloc_trace(void *p, size_t size, size_t align, int path) {
    if (path == AP_MMAP && p) {
        /* a pool block handed back out of the BigCache (HAKMEM_BIGCACHE_L25) is what its header says */
        uint32_t m = ((AllocHeader *)((char *)p - HAK_HEADER_SIZE))->method;
        if (m == ALLOC_METHOD_POOL) path = AP_MID;
        else if (m == ALLOC_METHOD_L25_POOL) path = AP_L25;
    }
    hak_log("[hakmem-alloc] seq=%llu free_seq=%llu tid=%llu ptr=0x%lx size=%zu align=%zu path=%s\n",
            (unsigned long long)g_stats.allocs, (unsigned long long)g_free_seq, (unsigned long long)cur_tid(),
            (unsigned long)p, size, align, k_alloc_path_names[path]);
}

static void *alloc_locked(size_t size, uintptr_t site) {
    STAGE(HAK_AT_ALLOC);
    t_alloc.ptr = 0;
    g_stats.allocs++;
    size_t asked = size;
    if (size == 0) size = 1;
    int path;
    if (size <= TINY_MAX) path = K.feat_tiny ? AP_TINY : AP_MALLOC;
    else if (size <= MID_MAX) path = K.feat_pool ? AP_MID : AP_MALLOC;
    else if (size <= L25_MAX) path = K.feat_l25 ? AP_L25 : AP_MALLOC;
    else path = AP_MMAP;
    void *p;
    switch (path) {
    case AP_TINY: p = tiny_alloc_locked((uint32_t)tiny_class_of(size)); break;
    case AP_MID: p = pool_alloc_locked(&g_mid, pool_class_of(&g_mid, size), size, site); break;
    case AP_L25: p = pool_alloc_locked(&g_l25, pool_class_of(&g_l25, size), size, site); break;
    case AP_MALLOC: p = malloc_method_alloc_locked(size, site); break;
    default: p = large_alloc_locked(size, 16, site); break;
    }
    if (K.alloc_trace) alloc_trace(p, asked, 0, path);
    return p;
}

HAK_API void *hak_alloc_at(size_t size, uintptr_t site) {
    ensure_init();
    LOCK();
    void *p = alloc_locked(size, site);
    STAGE(HAK_AT_IDLE);
    UNLOCK();
    if (!p) errno = ENOMEM;
    return p;
}

HAK_API void hak_free_at(void *ptr, size_t size, uintptr_t site) {
    (void)size; (void)site;
    ensure_init();
    LOCK();
    free_locked(ptr);
    STAGE(HAK_AT_IDLE);
    UNLOCK();
}

HAK_API void hak_tiny_free(void *ptr) {
    ensure_init();
    LOCK();
    t_state.ptr = (uintptr_t)ptr;
    STAGE(HAK_AT_TINY_FREE);
    heap_gen_bump();
    tiny_free_public_locked(ptr);
    STAGE(HAK_AT_IDLE);
    UNLOCK();
}

HAK_API void *hak_calloc_at(size_t nmemb, size_t size, uintptr_t site) {
    size_t total;
    if (__builtin_mul_overflow(nmemb, size, &total)) { errno = ENOMEM; return NULL; }
    void *p = hak_alloc_at(total, site);
    if (p) memset(p, 0, total ? total : 1);
    return p;
}

/* Usable size through the same lookups the free path uses (SS registry, pool registries,
 * then the header behind the configured probe): a registry escapee reads its header here too. */
static size_t usable_size_locked(void *ptr) {
    if (!ptr) return 0;
    t_state.ptr = (uintptr_t)ptr;
    STAGE(HAK_AT_USABLE_SIZE);
    ss_meta *ss = reg_lookup(&g_ss_reg, (uintptr_t)ptr);
    if (ss) return ss->block_size;
    AllocHeader *hdr = (AllocHeader *)((char *)ptr - HAK_HEADER_SIZE);
    if (reg_lookup(&g_mid_reg, (uintptr_t)ptr) || reg_lookup(&g_l25_reg, (uintptr_t)ptr))
        return hdr->class_bytes - HAK_HEADER_SIZE;
    if (K.probe != HAK_PROBE_OFF && !run_probe(K.probe, hdr)) {
        ss = ss_find_locked((uintptr_t)ptr);
        return ss ? ss->block_size : 0;
    }
    if (hdr->magic != HAKMEM_MAGIC) {
        ss = ss_find_locked((uintptr_t)ptr);
        return ss ? ss->block_size : 0;
    }
    switch (hdr->method) {
    case ALLOC_METHOD_POOL:
    case ALLOC_METHOD_L25_POOL: return hdr->class_bytes - HAK_HEADER_SIZE;
    case ALLOC_METHOD_MALLOC: return hdr->size;
    case ALLOC_METHOD_MMAP: return hdr->class_bytes - ((uintptr_t)ptr - page_down((uintptr_t)hdr));
    default: return 0;
    }
}

HAK_API size_t hak_usable_size(void *ptr) {
    ensure_init();
    LOCK();
    size_t n = usable_size_locked(ptr);
    STAGE(HAK_AT_IDLE);
    UNLOCK();
    return n;
}

HAK_API void *hak_realloc_at(void *ptr, size_t size, uintptr_t site) {
    ensure_init();
    if (!ptr) return hak_alloc_at(size, site);
    LOCK();
    if (size == 0) {
        free_locked(ptr);
        STAGE(HAK_AT_IDLE);
        UNLOCK();
        return NULL;
    }
    size_t old = usable_size_locked(ptr);
    STAGE(HAK_AT_REALLOC);
    void *n = alloc_locked(size, site);
    if (n) {
        STAGE(HAK_AT_REALLOC);
        memcpy(n, ptr, old < size ? old : size);
        free_locked(ptr);
    }
    STAGE(HAK_AT_IDLE);
    UNLOCK();
    if (!n) errno = ENOMEM;
    return n;
}

HAK_API void *hak_memalign_at(size_t alignment, size_t size, uintptr_t site) {
    ensure_init();
    if (alignment == 0 || (alignment & (alignment - 1))) { errno = EINVAL; return NULL; }
    /* size < alignment would get a smaller Tiny class, aligned to its size only (8 for 1..8) */
    if (alignment <= 16) return hak_alloc_at(size < alignment ? alignment : size, site);
    if (size == 0) size = 1;
    LOCK();
    void *p;
    STAGE(HAK_AT_ALLOC);
    t_alloc.ptr = 0;
    g_stats.allocs++;
    size_t want = size > alignment ? size : alignment;
    int tiny = K.feat_tiny && want <= TINY_MAX;
    if (tiny) p = tiny_alloc_locked((uint32_t)tiny_class_of(want)); /* naturally aligned */
    else p = large_alloc_locked(size, alignment, site);
    if (K.alloc_trace) alloc_trace(p, size, alignment, tiny ? AP_TINY : AP_MMAP);
    STAGE(HAK_AT_IDLE);
    UNLOCK();
    if (!p) errno = ENOMEM;
    return p;
}

/* ----------------------------------------------------------------- knobs */
HAK_API int hak_set_knob(const char *name, const char *value) {
    ensure_init();
    if (!name) return set_error(HAK_EINVAL, "no knob name");
    const knob_def *d = knob_find(name);
    if (!d) return set_error(HAK_ENOKNOB, "unknown knob '%s'", name);
    long v;
    int rc = knob_parse(d, value, &v);
    if (rc != HAK_OK) return rc;
    LOCK();
    *d->val = v;
    if (d->val == &K.trace_fd) g_log_fd = (int)v;
    UNLOCK();
    return HAK_OK;
}

HAK_API int hak_get_knob(const char *name, char *buf, size_t cap) {
    ensure_init();
    if (!name) return set_error(HAK_EINVAL, "no knob name");
    const knob_def *d = knob_find(name);
    if (!d) return set_error(HAK_ENOKNOB, "unknown knob '%s'", name);
    char tmp[32];
    if (d->type == KB_ENUM) snprintf(tmp, sizeof tmp, "%s", d->names[*d->val]);
    else snprintf(tmp, sizeof tmp, "%ld", *d->val);
    if (!buf || strlen(tmp) + 1 > cap) return set_error(HAK_ERANGE, "buffer too small for %s", name);
    memcpy(buf, tmp, strlen(tmp) + 1);
    return HAK_OK;
}

HAK_API size_t hak_knob_names(char *buf, size_t cap) {
    size_t need = 0;
    for (size_t i = 0; i < NKNOBS; i++) need += strlen(k_knobs[i].name) + 1;
    if (buf && cap >= need) {
        size_t o = 0;
        for (size_t i = 0; i < NKNOBS; i++) {
            size_t l = strlen(k_knobs[i].name);
            memcpy(buf + o, k_knobs[i].name, l);
            o += l;
            buf[o++] = i + 1 < NKNOBS ? '\n' : '\0';
        }
    }
    return need;
}

HAK_API const char *hak_last_error(void) { return t_err; }

/* --------------------------------------------------------- introspection */
HAK_API void hak_get_geometry(hak_geometry *g) {
    ensure_init();
    memset(g, 0, sizeof *g);
    g->abi_version = HAK_ABI_VERSION;
    g->header_size = HAK_HEADER_SIZE;
    g->magic = HAKMEM_MAGIC;
    g->page_size = (uint32_t)g_page;
    g->superslab_size = HAK_SUPERSLAB_SIZE;
    g->mid_chunk_size = HAK_MID_CHUNK_SIZE;
    g->l25_chunk_size = HAK_L25_CHUNK_SIZE;
    g->num_tiny_classes = HAK_TINY_NUM_CLASSES;
    g->num_mid_classes = HAK_MID_NUM_CLASSES;
    g->num_l25_classes = HAK_L25_NUM_CLASSES;
    g->build_release = HAKMEM_BUILD_RELEASE;
    memcpy(g->tiny_class_sizes, hak_tiny_class_sizes_const, sizeof g->tiny_class_sizes);
    memcpy(g->mid_class_bytes, k_mid_class_bytes, sizeof g->mid_class_bytes);
    memcpy(g->l25_class_bytes, k_l25_class_bytes, sizeof g->l25_class_bytes);
    g->tiny_max = TINY_MAX;
    g->mid_max = MID_MAX;
    g->l25_max = L25_MAX;
    g->bigcache_min = HAK_BIGCACHE_MIN;
    g->bigcache_l25_min = HAK_BIGCACHE_L25_MIN;
    g->batch_min_size = HAK_BATCH_MIN_SIZE;
}

HAK_API int hak_last_free_decision(hak_free_decision *out) {
    if (!t_has_last) return set_error(HAK_EINVAL, "this thread has freed nothing yet");
    /* Field by field: t_last was just stored that way (decide), and the replay asks right after
     * every free; wide loads over those narrow stores would stall on store forwarding (volatile
     * keeps the compiler from merging the loads again). */
    const volatile hak_free_decision *d = &t_last;
    out->seq = d->seq;
    out->ptr = d->ptr;
    out->route = d->route;
    out->action = d->action;
    out->stages_tried = d->stages_tried;
    out->stages_hit = d->stages_hit;
    out->probe = d->probe;
    out->probe_kind = d->probe_kind;
    out->magic_found = d->magic_found;
    out->method = d->method;
    out->tid = d->tid;
    return HAK_OK;
}

HAK_API size_t hak_route_ring_get(hak_free_decision *out, size_t cap) {
    ensure_init();
    LOCK();
    uint64_t n = g_route_ring_n < HAK_ROUTE_RING ? g_route_ring_n : HAK_ROUTE_RING;
    uint64_t first = g_route_ring_n - n;
    size_t k = 0;
    for (uint64_t i = first; i < g_route_ring_n && k < cap; i++) out[k++] = g_route_ring[i % HAK_ROUTE_RING];
    UNLOCK();
    return k;
}

HAK_API void hak_route_ring_clear(void) {
    ensure_init();
    LOCK();
    g_route_ring_n = 0;
    UNLOCK();
}

#define NAME_OR(tbl, n, i) ((i) < (n) ? (tbl)[i] : "unknown")
HAK_API const char *hak_route_name(uint32_t r) { return NAME_OR(k_route_names, HAK_ROUTE_COUNT, r); }
HAK_API const char *hak_action_name(uint32_t a) { return NAME_OR(k_action_names, HAK_ACTION_COUNT, a); }
HAK_API const char *hak_stage_name(uint32_t s) { return NAME_OR(k_stage_names, HAK_AT_COUNT, s); }
HAK_API const char *hak_probe_name(uint32_t k) { return NAME_OR(k_probe_names, HAK_PROBE_COUNT, k); }
HAK_API const char *hak_reqtrace_op_name(uint32_t op) { return NAME_OR(k_reqop_names, HAK_REQ_COUNT, op); }

static int pool_owner(pool_def *p, uintptr_t a, hak_owner_info *o) {
    pool_chunk *c = hm_get(&p->all, a & ~(uintptr_t)(p->chunk_size - 1));
    if (!c) return 0;
    o->kind = p->owner;
    o->region_base = c->base;
    o->region_size = p->chunk_size;
    o->class_index = (int32_t)c->cls;
    o->registered = hm_get(&p->reg->map, c->base) != NULL;
    o->method = p->method;
    o->class_bytes = c->class_bytes;
    size_t idx = (a - c->base) / c->class_bytes;
    if (idx < c->bump) {
        o->block_ptr = c->base + idx * c->class_bytes + HAK_HEADER_SIZE;
        o->block_size = c->class_bytes - HAK_HEADER_SIZE;
        o->state = bit_get(c->bits, idx) ? HAK_BLOCK_LIVE : HAK_BLOCK_FREE;
    }
    return 1;
}

/* hak_owner's answer; the lock is held. */
static void owner_locked(uintptr_t a, hak_owner_info *o) {
    memset(o, 0, sizeof *o);
    o->class_index = -1;
    ss_meta *m = ss_find_locked(a);
    if (m) {
        o->kind = HAK_OWNER_TINY;
        o->region_base = m->base;
        o->region_size = HAK_SUPERSLAB_SIZE;
        o->class_index = (int32_t)m->cls;
        o->registered = hm_get(&g_ss_reg.map, m->base) != NULL;
        o->class_bytes = m->block_size;
        size_t idx = (a - m->base) / m->block_size;
        if (idx < m->bump) {
            o->block_ptr = m->base + idx * m->block_size;
            o->block_size = m->block_size;
            o->state = bit_get(m->bits, idx) ? HAK_BLOCK_LIVE : HAK_BLOCK_FREE;
        }
        return;
    }
    if (pool_owner(&g_mid, a, o) || pool_owner(&g_l25, a, o)) return;
    /* large mappings and MALLOC blocks: exact pointer first, then a scan for interior addresses */
    uintptr_t raw = a - HAK_HEADER_SIZE;
    void *exact = hm_get(&g_large, raw);
    if (exact) {
        /* the block's own pointer: no scan (the replay's oracle asks this on every allocation) */
        AllocHeader *h = (AllocHeader *)raw;
        uintptr_t start = page_down(raw);
        o->kind = HAK_OWNER_MMAP;
        o->method = ALLOC_METHOD_MMAP;
        o->region_base = start;
        o->region_size = h->class_bytes;
        o->class_bytes = h->class_bytes;
        o->block_ptr = a;
        o->block_size = h->class_bytes - (a - start);
        o->state = (long)exact == LG_LIVE ? HAK_BLOCK_LIVE : HAK_BLOCK_CACHED;
        return;
    }
    HM_FOREACH(&g_large, i) {
        uintptr_t k = g_large.keys[i];
        long v = (long)g_large.vals[i];
        AllocHeader *h = (AllocHeader *)k;
        uintptr_t start = page_down(k);
        if (a >= start && a < start + h->class_bytes) {
            o->kind = HAK_OWNER_MMAP;
            o->method = ALLOC_METHOD_MMAP;
            o->region_base = start;
            o->region_size = h->class_bytes;
            o->class_bytes = h->class_bytes;
            o->block_ptr = k + HAK_HEADER_SIZE;
            o->block_size = h->class_bytes - (k + HAK_HEADER_SIZE - start);
            o->state = v == LG_LIVE ? HAK_BLOCK_LIVE : HAK_BLOCK_CACHED;
            return;
        }
    }
    uintptr_t hit = 0;
    if (hm_get(&g_malloc, raw)) hit = raw;
    else {
        HM_FOREACH(&g_malloc, i) {
            uintptr_t k = g_malloc.keys[i];
            AllocHeader *h = (AllocHeader *)k;
            if (a >= k && a < k + h->class_bytes) { hit = k; break; }
        }
    }
    if (hit) {
        AllocHeader *h = (AllocHeader *)hit;
        o->kind = HAK_OWNER_MALLOC;
        o->method = ALLOC_METHOD_MALLOC;
        o->region_base = hit;
        o->region_size = h->class_bytes;
        o->class_bytes = h->class_bytes;
        o->block_ptr = hit + HAK_HEADER_SIZE;
        o->block_size = h->size;
        o->state = HAK_BLOCK_LIVE;
    }
}

HAK_API int hak_owner(const void *addr, hak_owner_info *o) {
    ensure_init();
    LOCK();
    owner_locked((uintptr_t)addr, o);
    UNLOCK();
    return HAK_OK;
}

/* hak_owner_kind: the same answer as hak_owner's kind and (state LIVE, block_ptr == addr),
 * with the common cases - a block's own pointer in a SuperSlab, a pool chunk, a large mapping
 * or a MALLOC block - answered without building a hak_owner_info. */
static int pool_kind(const pool_def *p, uintptr_t a, uint32_t *out) {
    const pool_chunk *c = hm_get(&p->all, a & ~(uintptr_t)(p->chunk_size - 1));
    if (!c) return 0;
    size_t idx = (a - c->base) >> c->shift;
    int live = idx < c->bump && bit_get(c->bits, idx) && c->base + ((uintptr_t)idx << c->shift) + HAK_HEADER_SIZE == a;
    *out = p->owner | (live ? HAK_OWNER_LIVE_BLOCK : 0u);
    return 1;
}

static uint32_t owner_kind_locked(uintptr_t a) {
    const ss_meta *m = ss_find_locked(a);
    if (m) {
        size_t idx = (a - m->base) >> m->shift;
        int live = idx < m->bump && bit_get(m->bits, idx) && m->base + ((uintptr_t)idx << m->shift) == a;
        return HAK_OWNER_TINY | (live ? HAK_OWNER_LIVE_BLOCK : 0u);
    }
    uint32_t k;
    if (pool_kind(&g_mid, a, &k) || pool_kind(&g_l25, a, &k)) return k;
    uintptr_t raw = a - HAK_HEADER_SIZE;
    void *exact = hm_get(&g_large, raw);
    if (exact) return HAK_OWNER_MMAP | ((long)exact == LG_LIVE ? HAK_OWNER_LIVE_BLOCK : 0u);
    /* a MALLOC block is libc memory, never inside one of our mappings: no scan can claim it */
    if (hm_get(&g_malloc, raw)) return HAK_OWNER_MALLOC | HAK_OWNER_LIVE_BLOCK;
    hak_owner_info o;
    owner_locked(a, &o);
    return o.kind | (o.state == HAK_BLOCK_LIVE && o.block_ptr == a ? HAK_OWNER_LIVE_BLOCK : 0u);
}

HAK_API uint32_t hak_owner_kind(const void *addr) {
    ensure_init();
    /* The block this thread just allocated, with no free anywhere since: the answer of that
     * moment, without the lock (a query ordered right after the allocation; on threads, any
     * free that comes later is ordered after it). */
    uintptr_t a = (uintptr_t)addr;
    if (a && a == t_alloc.ptr && t_alloc.gen == __atomic_load_n(&g_heap_gen, __ATOMIC_ACQUIRE)) return t_alloc.kind;
    LOCK();
    uint32_t k = owner_kind_locked((uintptr_t)addr);
    UNLOCK();
    return k;
}

HAK_API uint32_t hak_alloc_owner_kind(const void *ptr) {
    ensure_init();
    uintptr_t a = (uintptr_t)ptr;
    if (a && a == t_alloc.ptr) return t_alloc.kind;   /* as it stood when the allocation returned */
    return hak_owner_kind(ptr);
}

HAK_API uint32_t hak_free_owner_kind_at(void *ptr, size_t size, uintptr_t site) {
    (void)size; (void)site;
    ensure_init();
    uintptr_t a = (uintptr_t)ptr;
    LOCK();
    uint32_t k = a && a == t_alloc.ptr && t_alloc.gen == g_heap_gen ? t_alloc.kind : owner_kind_locked(a);
    free_locked(ptr);
    STAGE(HAK_AT_IDLE);
    UNLOCK();
    return k;
}

HAK_API hak_free_state *hak_debug_free_state(void) { return &t_state; }

HAK_API void hak_get_stats(hak_stats *out) {
    ensure_init();
    LOCK();
    *out = g_stats;
    out->mid_chunks = g_mid.nchunks;
    out->l25_chunks = g_l25.nchunks;
    UNLOCK();
}

/* ------------------------------------------------------------- reqtrace */
static int reqtrace_in_region(const hak_reqtrace_rec *r, uintptr_t region) {
    uintptr_t mask = ~(uintptr_t)(HAK_SUPERSLAB_SIZE - 1);
    return (r->base & mask) == region || (r->addr & mask) == region;
}

HAK_API size_t hak_super_reg_reqtrace_get(const void *ptr, hak_reqtrace_rec *out, size_t cap) {
    ensure_init();
    LOCK();
    uint64_t n = g_reqseq < HAK_REQTRACE_RING ? g_reqseq : HAK_REQTRACE_RING;
    uintptr_t region = (uintptr_t)ptr & ~(uintptr_t)(HAK_SUPERSLAB_SIZE - 1);
    size_t total = 0;
    for (uint64_t i = g_reqseq - n; i < g_reqseq; i++) {
        const hak_reqtrace_rec *r = &g_reqring[i % HAK_REQTRACE_RING];
        if (ptr && !reqtrace_in_region(r, region)) continue;
        if (out && total < cap) out[total] = *r;
        total++;
    }
    UNLOCK();
    return total;
}

/* Called from the free path with the lock held, and from outside without it. */
static void reqtrace_dump_unlocked(void *ptr) {
    if (!K.reqtrace) return;
    uint64_t n = g_reqseq < HAK_REQTRACE_RING ? g_reqseq : HAK_REQTRACE_RING;
    uintptr_t region = (uintptr_t)ptr & ~(uintptr_t)(HAK_SUPERSLAB_SIZE - 1);
    size_t shown = 0;
    hak_log("[hakmem] reqtrace for %p (region 0x%lx):\n", ptr, (unsigned long)region);
    for (uint64_t i = g_reqseq - n; i < g_reqseq; i++) {
        const hak_reqtrace_rec *r = &g_reqring[i % HAK_REQTRACE_RING];
        if (ptr && !reqtrace_in_region(r, region)) continue;
        reqtrace_print(r);
        shown++;
    }
    if (!shown) hak_log("[hakmem] reqtrace: no registry requests for that region\n");
}

HAK_API void hak_super_reg_reqtrace_dump(void *ptr) {
    ensure_init();
    LOCK();
    reqtrace_dump_unlocked(ptr);
    UNLOCK();
}

HAK_API void hak_super_reg_reqtrace_clear(void) {
    ensure_init();
    LOCK();
    g_reqseq = 0;
    UNLOCK();
}

/* ---------------------------------------------------------------- check */
#define CHECK_FAIL(...) do { snprintf(msg, cap, __VA_ARGS__); return HAK_ECHECK; } while (0)

static int check_header(uintptr_t raw, uint32_t method, const char *what, char *msg, size_t cap) {
    const AllocHeader *h = (const AllocHeader *)raw;
    if (h->magic != HAKMEM_MAGIC)
        CHECK_FAIL("%s block %p: header magic 0x%X (expected 0x%X): header overwritten", what,
                   (void *)(raw + HAK_HEADER_SIZE), h->magic, HAKMEM_MAGIC);
    if (h->method != method)
        CHECK_FAIL("%s block %p: header method %u (expected %u): header overwritten", what,
                   (void *)(raw + HAK_HEADER_SIZE), h->method, method);
    return HAK_OK;
}

static int check_ss(ss_meta *m, char *msg, size_t cap) {
    size_t words = (m->capacity + 63) / 64;
    memset(m->mark, 0, words * sizeof(uint64_t));
    size_t nfree = 0;
    for (void *p = m->freelist; p; p = *(void **)p) {
        uintptr_t a = (uintptr_t)p;
        if (a < m->base || a >= m->base + (uintptr_t)m->bump * m->block_size)
            CHECK_FAIL("SuperSlab 0x%lx (class %u): free-list entry %p outside the carved blocks", (unsigned long)m->base,
                       m->cls, p);
        if ((a - m->base) % m->block_size)
            CHECK_FAIL("SuperSlab 0x%lx (class %u): free-list entry %p is not on a %u-byte block boundary (interior free)",
                       (unsigned long)m->base, m->cls, p, m->block_size);
        size_t idx = (a - m->base) / m->block_size;
        if (bit_get(m->mark, idx))
            CHECK_FAIL("SuperSlab 0x%lx (class %u): block %p is on the free list twice (double free)", (unsigned long)m->base,
                       m->cls, p);
        bit_set(m->mark, idx);
        if (bit_get(m->bits, idx))
            CHECK_FAIL("SuperSlab 0x%lx (class %u): block %p is on the free list but marked live", (unsigned long)m->base,
                       m->cls, p);
        if (++nfree > m->capacity) break;
    }
    size_t live = 0;
    for (size_t w = 0; w < words; w++) live += (size_t)__builtin_popcountll(m->bits[w]);
    if ((int64_t)live != m->live)
        CHECK_FAIL("SuperSlab 0x%lx (class %u): live count %d but %zu blocks marked live", (unsigned long)m->base, m->cls,
                   m->live, live);
    if (live + nfree != m->bump)
        CHECK_FAIL("SuperSlab 0x%lx (class %u): %zu live + %zu free != %u carved blocks", (unsigned long)m->base, m->cls,
                   live, nfree, m->bump);
    int reg = hm_get(&g_ss_reg.map, m->base) != NULL;
    if (!reg && m->live > 0)
        CHECK_FAIL("SuperSlab 0x%lx (class %u) holds %d live blocks but is not in the SS registry", (unsigned long)m->base,
                   m->cls, m->live);
    return HAK_OK;
}

static int check_pool(pool_def *p, char *msg, size_t cap) {
    HM_FOREACH(&p->all, i) {
        pool_chunk *c = p->all.vals[i];
        memset(c->mark, 0, ((c->capacity + 63) / 64) * sizeof(uint64_t));
    }
    for (int cls = 0; cls < p->nclasses; cls++) {
        size_t n = 0;
        for (void *r = p->freelist[cls]; r; r = *(void **)((char *)r + HAK_HEADER_SIZE)) {
            uintptr_t a = (uintptr_t)r;
            pool_chunk *c = hm_get(&p->all, a & ~(uintptr_t)(p->chunk_size - 1));
            if (!c || c->cls != (uint32_t)cls)
                CHECK_FAIL("%s pool class %d: free-list entry %p is not in a chunk of that class", p->name, cls,
                           (void *)(a + HAK_HEADER_SIZE));
            if ((a - c->base) % c->class_bytes)
                CHECK_FAIL("%s pool class %d: free-list entry %p is not on a block boundary (interior free)", p->name,
                           cls, (void *)(a + HAK_HEADER_SIZE));
            size_t idx = (a - c->base) / c->class_bytes;
            if (bit_get(c->mark, idx))
                CHECK_FAIL("%s pool class %d: block %p is on the free list twice (double free)", p->name, cls,
                           (void *)(a + HAK_HEADER_SIZE));
            bit_set(c->mark, idx);
            if (bit_get(c->bits, idx))
                CHECK_FAIL("%s pool class %d: block %p is on the free list but marked live", p->name, cls,
                           (void *)(a + HAK_HEADER_SIZE));
            if (++n > (1u << 26)) break;
        }
    }
    HM_FOREACH(&p->all, j) {
        uintptr_t k = p->all.keys[j];
        pool_chunk *c = p->all.vals[j];
        int32_t live = 0;
        for (uint32_t i = 0; i < c->bump; i++) {
            if (!bit_get(c->bits, i)) continue;
            live++;
            int rc = check_header(k + (uintptr_t)i * c->class_bytes, p->method, p->name, msg, cap);
            if (rc) return rc;
        }
        if (live != c->live)
            CHECK_FAIL("%s chunk 0x%lx: live count %d but %d blocks marked live", p->name, (unsigned long)k, c->live, live);
        if (live > 0 && !hm_get(&p->reg->map, k))
            CHECK_FAIL("%s chunk 0x%lx holds %d live blocks but is not in the %s registry", p->name, (unsigned long)k,
                       live, p->name);
    }
    return HAK_OK;
}

HAK_API int hak_debug_check(char *msg, size_t cap) {
    ensure_init();
    char dummy[8];
    if (!msg || !cap) { msg = dummy; cap = sizeof dummy; }
    msg[0] = 0;
    LOCK();
    uint32_t saved = t_state.stage;
    STAGE(HAK_AT_CHECK);
    int rc = HAK_OK;
    for (uint32_t i = 0; i < g_graveyard_n && i < GRAVEYARD_SLOTS && rc == HAK_OK; i++) {
        graveyard_rec *g = &g_graveyard[i];
        snprintf(msg, cap, "SuperSlab 0x%lx (class %u) was released while %d of its blocks were live",
                 (unsigned long)g->base, g->cls, g->live);
        rc = HAK_ECHECK;
    }
    if (rc == HAK_OK) {
        HM_FOREACH(&g_ss_all, i) {
            if ((rc = check_ss(g_ss_all.vals[i], msg, cap)) != HAK_OK) break;
        }
    }
    if (rc == HAK_OK) {
        HM_FOREACH(&g_ss_reg.map, i) {
            uintptr_t k = g_ss_reg.map.keys[i];
            if (!hm_get(&g_ss_all, k)) {
                snprintf(msg, cap, "SS registry entry 0x%lx names no SuperSlab in use", (unsigned long)k);
                rc = HAK_ECHECK;
                break;
            }
        }
    }
    if (rc == HAK_OK) rc = check_pool(&g_mid, msg, cap);
    if (rc == HAK_OK) rc = check_pool(&g_l25, msg, cap);
    if (rc == HAK_OK) {
        HM_FOREACH(&g_large, i) {
            if ((long)g_large.vals[i] != LG_LIVE) continue;
            if ((rc = check_header(g_large.keys[i], ALLOC_METHOD_MMAP, "MMAP", msg, cap)) != HAK_OK) break;
        }
    }
    if (rc == HAK_OK) {
        HM_FOREACH(&g_malloc, i) {
            if ((rc = check_header(g_malloc.keys[i], ALLOC_METHOD_MALLOC, "MALLOC", msg, cap)) != HAK_OK) break;
        }
    }
    STAGE(saved);
    UNLOCK();
    if (rc != HAK_OK) set_error(rc, "%s", msg);
    return rc;
}
