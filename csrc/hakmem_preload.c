/* hakmem_preload.c - hakmem-ref as an LD_PRELOAD malloc replacement (libhakmem_preload.so).
 *
 *     LD_PRELOAD=libhakmem_preload.so HAKMEM_FREE_ROUTE_TRACE=1 HAKMEM_TRACE_FILE=/tmp/h.%p.log prog
 *
 * The allocator is hakmem_ref.c itself, compiled into this translation unit so the wrappers can
 * use its internals (ownership maps, the lock, the trace fd) without widening the ABI. Only the
 * malloc family is exported; the hak_* functions stay hidden here, so the toolkit's own
 * libhakmem.so (loaded by ctypes, possibly inside a preloaded process) never mixes with it.
 *
 * What a real program needs beyond the ctypes library:
 *   - early start: ld.so and libc call malloc before any constructor runs. init_once() only uses
 *     getenv, open and fcntl (no allocation) and the lock is a static initializer.
 *   - threads: the allocator's one lock; TLS is initial-exec (see the Makefile), so touching a
 *     __thread variable never calls into ld.so (which could allocate).
 *   - fork: pthread_atfork takes the lock before fork and releases it in both processes; the
 *     child forgets its cached tid and, with a "%p" trace file, opens its own.
 *   - foreign pointers (libc's, ld.so's): free() takes the seed's router like any pointer; with
 *     the safe probe (this build's default) the header read cannot fault, and in LD_PRELOAD mode
 *     an invalid magic is skipped (leaked) or handed to __libc_free as the seed does. realloc()
 *     and malloc_usable_size() of a pointer hakmem does not own ask glibc for its size.
 *   - with tracing on: a "[hakmem] PROCESS:" line when a HAKMEM_TRACE_FILE opens (also in a
 *     forked child), a "[hakmem] STATS:" line at exit, and a "[hakmem] CRASH:" line from a SIGSEGV/SIGBUS/SIGABRT/SIGILL/SIGFPE handler
 *     (HAKMEM_CRASH_HANDLER=0 leaves the program's signals alone). See docs/route-trace.md.
 */
#define HAK_API /* hidden */
#ifndef HAK_DEFAULT_PROBE
#define HAK_DEFAULT_PROBE HAK_PROBE_SAFE
#endif
#include "hakmem_ref.c"

#include <dlfcn.h>
#include <signal.h>

#define PRELOAD_API __attribute__((visibility("default")))
#define SITE() ((uintptr_t)__builtin_return_address(0))

/* ------------------------------------------------------------ ownership */
/* 1 if ptr is the start of a block hakmem-ref made, from its ground-truth maps (not the
 * registries, which fault injection may have emptied). Interior pointers count as not owned. */
static int owned_locked(void *ptr) {
    uintptr_t a = (uintptr_t)ptr;
    if (ss_find_locked(a)) return 1;
    uintptr_t raw = a - HAK_HEADER_SIZE;
    if (hm_get(&g_mid.all, raw & ~(uintptr_t)(g_mid.chunk_size - 1))) return 1;
    if (hm_get(&g_l25.all, raw & ~(uintptr_t)(g_l25.chunk_size - 1))) return 1;
    if (hm_get(&g_large, raw)) return 1;
    if (hm_get(&g_malloc, raw)) return 1;
    return 0;
}

static int owned(void *ptr) {
    ensure_init();
    LOCK();
    int r = owned_locked(ptr);
    UNLOCK();
    return r;
}

/* glibc's malloc_usable_size, for pointers glibc made. Resolved outside the lock: dlsym may
 * allocate, and that allocation comes back here. */
typedef size_t (*usable_fn)(void *);
static usable_fn g_libc_usable;

static size_t libc_usable_size(void *ptr) {
    usable_fn f = __atomic_load_n(&g_libc_usable, __ATOMIC_ACQUIRE);
    if (!f) {
        f = (usable_fn)dlsym(RTLD_NEXT, "malloc_usable_size");
        if (!f) return 0;
        __atomic_store_n(&g_libc_usable, f, __ATOMIC_RELEASE);
    }
    return f(ptr);
}

/* -------------------------------------------------------------- the API */
PRELOAD_API void *malloc(size_t size) { return hak_alloc_at(size, SITE()); }

PRELOAD_API void free(void *ptr) { hak_free_at(ptr, 0, SITE()); }

PRELOAD_API void *calloc(size_t nmemb, size_t size) { return hak_calloc_at(nmemb, size, SITE()); }

PRELOAD_API void *realloc(void *ptr, size_t size) {
    uintptr_t site = SITE();
    if (!ptr || owned(ptr)) return hak_realloc_at(ptr, size, site);
    /* Not ours (libc's): a hakmem block with the old contents, and the old pointer goes through
     * the free router like any free() of it would (LD_PRELOAD mode: skipped or __libc_free). */
    if (size == 0) {
        hak_free_at(ptr, 0, site);
        return NULL;
    }
    size_t old = libc_usable_size(ptr);
    void *n = hak_alloc_at(size, site);
    if (!n) return NULL;
    memcpy(n, ptr, old < size ? old : size);
    hak_free_at(ptr, 0, site);
    return n;
}

PRELOAD_API void *reallocarray(void *ptr, size_t nmemb, size_t size) {
    size_t total;
    if (__builtin_mul_overflow(nmemb, size, &total)) { errno = ENOMEM; return NULL; }
    return realloc(ptr, total);
}

PRELOAD_API size_t malloc_usable_size(void *ptr) {
    if (!ptr) return 0;
    if (owned(ptr)) return hak_usable_size(ptr);
    return libc_usable_size(ptr);
}

static int pow2(size_t a) { return a && !(a & (a - 1)); }

/* glibc's memalign: alignments that are not powers of two are rounded up to one. */
PRELOAD_API void *memalign(size_t alignment, size_t size) {
    if (alignment > ((size_t)1 << (sizeof(size_t) * 8 - 2))) { errno = EINVAL; return NULL; }
    if (alignment < 16) alignment = 16;
    while (!pow2(alignment)) alignment = (alignment | (alignment - 1)) + 1;
    return hak_memalign_at(alignment, size, SITE());
}

PRELOAD_API int posix_memalign(void **out, size_t alignment, size_t size) {
    if (!pow2(alignment) || alignment % sizeof(void *)) return EINVAL;
    int saved = errno;
    void *p = hak_memalign_at(alignment, size, SITE());
    if (!p) { errno = saved; return ENOMEM; }
    *out = p;
    return 0;
}

PRELOAD_API void *aligned_alloc(size_t alignment, size_t size) {
    if (!pow2(alignment)) { errno = EINVAL; return NULL; }
    return hak_memalign_at(alignment, size, SITE());
}

PRELOAD_API void *valloc(size_t size) {
    ensure_init();
    return hak_memalign_at(g_page, size, SITE());
}

PRELOAD_API void *pvalloc(size_t size) {
    ensure_init();
    size_t rounded = (size + g_page - 1) & ~(g_page - 1);
    if (rounded < size) { errno = ENOMEM; return NULL; }
    return hak_memalign_at(g_page, rounded ? rounded : g_page, SITE());
}

/* C23, glibc 2.39+: without these, a program calling them would hand our blocks to glibc. */
PRELOAD_API void free_sized(void *ptr, size_t size) { (void)size; hak_free_at(ptr, 0, SITE()); }
PRELOAD_API void free_aligned_sized(void *ptr, size_t alignment, size_t size) {
    (void)alignment; (void)size;
    hak_free_at(ptr, 0, SITE());
}

/* ------------------------------------------------------ process lines */
static int tracing(void) { return K.route_trace || K.alloc_trace || K.reqtrace == 2 || K.reqtrace == 4; }

/* ----------------------------------------------------------------- fork */
static void atfork_prepare(void) {
    ensure_init();
    LOCK();
}

static void atfork_parent(void) { UNLOCK(); }

static void atfork_child(void) {
    LOCK_RESET(); /* only the forking thread exists, and prepare held it */
    t_tid = 0;                         /* cur_tid() cached the parent's thread id */
    if (g_trace_file_fd >= 0 && strstr(g_trace_path, "%p")) {
        int old = g_trace_file_fd;
        if (trace_file_open() >= 0) close(old);
        trace_process_line("fork");
    }
}

/* ---------------------------------------------------------------- crash */
static const int k_crash_signals[] = {SIGSEGV, SIGBUS, SIGABRT, SIGILL, SIGFPE};
#define N_CRASH (sizeof k_crash_signals / sizeof k_crash_signals[0])
static struct sigaction g_old_sa[N_CRASH];

static size_t s_put(char *b, size_t n, size_t cap, const char *s) {
    while (*s && n < cap) b[n++] = *s++;
    return n;
}

static size_t s_num(char *b, size_t n, size_t cap, uint64_t v, unsigned base) {
    char t[24];
    int k = 0;
    do { t[k++] = "0123456789abcdef"[v % base]; v /= base; } while (v);
    while (k && n < cap) b[n++] = t[--k];
    return n;
}

static const char *crash_signal_name(int s) {
    switch (s) {
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGABRT: return "SIGABRT";
    case SIGILL: return "SIGILL";
    default: return "SIGFPE";
    }
}

/* The driver's crash line, from inside the program: async-signal-safe, then the signal goes
 * on to whatever handled it before (the default action: the process dies with it). */
static void crash_handler(int signo, siginfo_t *si, void *uc) {
    (void)uc;
    int saved = errno;
    uintptr_t fault = (si && si->si_code > 0 && signo != SIGABRT) ? (uintptr_t)si->si_addr : 0;
    uint32_t stage = t_state.stage;
    char line[256];
    size_t cap = sizeof line - 1, n = 0;
    n = s_put(line, n, cap, "[hakmem] CRASH: ");
    n = s_put(line, n, cap, crash_signal_name(signo));
    n = s_put(line, n, cap, " fault=0x");
    n = s_num(line, n, cap, fault, 16);
    n = s_put(line, n, cap, " ptr=0x");
    n = s_num(line, n, cap, stage == HAK_AT_IDLE ? 0 : t_state.ptr, 16);
    n = s_put(line, n, cap, " stage=");
    n = s_put(line, n, cap, stage < HAK_AT_COUNT ? k_stage_names[stage] : "unknown");
    n = s_put(line, n, cap, " event=- free_seq=");
    n = s_num(line, n, cap, stage == HAK_AT_IDLE ? 0 : t_state.seq, 10);
    line[n++] = '\n';
    for (size_t off = 0; off < n;) {
        ssize_t w = write(g_log_fd, line + off, n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        off += (size_t)w;
    }
    for (size_t i = 0; i < N_CRASH; i++)
        if (k_crash_signals[i] == signo) sigaction(signo, &g_old_sa[i], NULL);
    errno = saved;
    /* Returning re-runs a faulting instruction under the old action; a raised signal
     * (abort, kill) has to be raised again. */
    if (!si || si->si_code <= 0 || signo == SIGABRT) syscall(SYS_tgkill, (long)getpid(), (long)syscall(SYS_gettid), (long)signo);
}

static void install_crash_handler(void) {
    const char *e = getenv("HAKMEM_CRASH_HANDLER");
    if (e && e[0] == '0') return;
    static char alt[64 * 1024];
    stack_t ss = {.ss_sp = alt, .ss_size = sizeof alt, .ss_flags = 0};
    stack_t cur;
    if (sigaltstack(NULL, &cur) == 0 && (cur.ss_flags & SS_DISABLE)) sigaltstack(&ss, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = crash_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < N_CRASH; i++) {
        struct sigaction old;
        if (sigaction(k_crash_signals[i], NULL, &old) != 0) continue;
        /* a handler someone installed before us stays: we only replace the defaults */
        if (!(old.sa_flags & SA_SIGINFO) && old.sa_handler != SIG_DFL) continue;
        if ((old.sa_flags & SA_SIGINFO) && old.sa_sigaction) continue;
        g_old_sa[i] = old;
        sigaction(k_crash_signals[i], &sa, NULL);
    }
}

/* ----------------------------------------------------- start and exit */
__attribute__((constructor)) static void preload_init(void) {
    ensure_init();
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
    if (tracing()) install_crash_handler();
}

__attribute__((destructor)) static void preload_fini(void) {
    if (!tracing()) return;
    LOCK();
    unsigned long long allocs = g_stats.allocs, frees = g_stats.frees;
    UNLOCK();
    hak_log("[hakmem] STATS: pid=%ld allocs=%llu frees=%llu\n", (long)getpid(), allocs, frees);
}
