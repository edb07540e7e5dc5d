/* hfdriver.c - the toolkit's driver library: run-time binding to an allocator, crash
 * handler, readability probes. See hfdriver.h for the ABI. */
#include "hfdriver.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

#include "hakmem.h"
#include "hfd_internal.h"
#include "probes.h"

/* ------------------------------------------------------------------ errors */

static __thread char g_err[512];

static int set_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int set_error(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return code;
}

int hfd__set_error(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return code;
}

HFD_API uint32_t hfd_abi_version(void) { return HFD_ABI_VERSION; }

HFD_API const char *hfd_last_error(void) { return g_err; }

/* ----------------------------------------------------------------- binding */

static hfd_vtable g_vt;
static int g_binding = HFD_BOUND_NONE;
/* hak_owner_kind, outside the vtable (a public struct): the replay's oracle uses it when the
 * bound library has it, and hak_owner otherwise. */
static hfd_owner_kind_fn g_owner_kind, g_alloc_owner_kind;
static hfd_free_owner_kind_fn g_free_owner_kind;

/* Optional symbols, in vtable order, with the hak_ name a library must export. */
struct opt_sym {
    const char *name;
    size_t offset;
};
static const struct opt_sym k_optional[] = {
    {"hak_calloc_at", offsetof(hfd_vtable, calloc)},
    {"hak_realloc_at", offsetof(hfd_vtable, realloc)},
    {"hak_memalign_at", offsetof(hfd_vtable, memalign)},
    {"hak_debug_free_state", offsetof(hfd_vtable, debug_free_state)},
    {"hak_stage_name", offsetof(hfd_vtable, stage_name)},
    {"hak_last_free_decision", offsetof(hfd_vtable, last_free_decision)},
    {"hak_owner", offsetof(hfd_vtable, owner)},
    {"hak_debug_check", offsetof(hfd_vtable, debug_check)},
};
#define N_OPTIONAL (sizeof k_optional / sizeof k_optional[0])

/* Object and function pointers have the same representation on every platform dlsym()
 * exists on; the vtable slots are written through this one cast. */
static void set_slot(hfd_vtable *vt, size_t offset, void *fn) {
    memcpy((char *)vt + offset, &fn, sizeof fn);
}

static void *get_slot(const hfd_vtable *vt, size_t offset) {
    void *fn;
    memcpy(&fn, (const char *)vt + offset, sizeof fn);
    return fn;
}

HFD_API int hfd_bind_library(const char *path) {
    if (!path || !*path) return set_error(HFD_EINVAL, "hfd_bind_library: empty library path");
    dlerror();
    /* Reuse the copy the caller (ctypes) already loaded, so both see the same allocator state. */
    void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (!h) h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        return set_error(HFD_EDLOPEN, "cannot open allocator library '%s': %s", path,
                         e ? e : "unknown dlopen error");
    }
    static const char *const required[] = {"hak_alloc_at", "hak_free_at"};
    void *req[2];
    for (size_t i = 0; i < 2; i++) {
        dlerror();
        req[i] = dlsym(h, required[i]);
        if (!req[i]) {
            const char *e = dlerror();
            int rc = set_error(HFD_ENOSYM, "library '%s' lacks required symbol %s: %s", path,
                               required[i], e ? e : "symbol is NULL");
            dlclose(h);
            return rc;
        }
    }
    hfd_vtable vt;
    memset(&vt, 0, sizeof vt);
    set_slot(&vt, offsetof(hfd_vtable, alloc), req[0]);
    set_slot(&vt, offsetof(hfd_vtable, free), req[1]);
    for (size_t i = 0; i < N_OPTIONAL; i++) set_slot(&vt, k_optional[i].offset, dlsym(h, k_optional[i].name));
    void *ok = dlsym(h, "hak_owner_kind"), *aok = dlsym(h, "hak_alloc_owner_kind"), *fok = dlsym(h, "hak_free_owner_kind_at");
    /* The previous library's handle is deliberately kept open: blocks it handed out may
     * still be live, and unloading an allocator under them would turn frees into crashes. */
    g_vt = vt;
    memcpy(&g_owner_kind, &ok, sizeof ok);
    memcpy(&g_alloc_owner_kind, &aok, sizeof aok);
    memcpy(&g_free_owner_kind, &fok, sizeof fok);
    if (!g_vt.owner || !g_owner_kind) {   /* they stand in for hak_owner, never alone */
        g_owner_kind = g_alloc_owner_kind = NULL;
        g_free_owner_kind = NULL;
    }
    g_binding = HFD_BOUND_HAKMEM;
    g_err[0] = '\0';
    return HFD_OK;
}

static void *libc_alloc(size_t size, uintptr_t site) { return malloc(size); }
static void libc_free(void *ptr, size_t size, uintptr_t site) { free(ptr); }
static void *libc_calloc(size_t nmemb, size_t size, uintptr_t site) { return calloc(nmemb, size); }
static void *libc_realloc(void *ptr, size_t size, uintptr_t site) { return realloc(ptr, size); }
static void *libc_memalign(size_t alignment, size_t size, uintptr_t site) {
    return memalign(alignment, size);
}

HFD_API int hfd_bind_libc(void) {
    hfd_vtable vt;
    memset(&vt, 0, sizeof vt);
    vt.alloc = libc_alloc;
    vt.free = libc_free;
    vt.calloc = libc_calloc;
    vt.realloc = libc_realloc;
    vt.memalign = libc_memalign;
    g_vt = vt;
    g_owner_kind = g_alloc_owner_kind = NULL;
    g_free_owner_kind = NULL;
    g_binding = HFD_BOUND_LIBC;
    g_err[0] = '\0';
    return HFD_OK;
}

HFD_API int hfd_bind_table(const hfd_vtable *table) {
    if (!table) return set_error(HFD_EINVAL, "hfd_bind_table: table is NULL");
    if (!table->alloc) return set_error(HFD_ENOSYM, "hfd_bind_table: required entry alloc (hak_alloc_at) is NULL");
    if (!table->free) return set_error(HFD_ENOSYM, "hfd_bind_table: required entry free (hak_free_at) is NULL");
    g_vt = *table;
    g_owner_kind = g_alloc_owner_kind = NULL;
    g_free_owner_kind = NULL;
    g_binding = HFD_BOUND_TABLE;
    g_err[0] = '\0';
    return HFD_OK;
}

HFD_API int hfd_binding(void) { return g_binding; }

const hfd_vtable *hfd__vtable(void) { return &g_vt; }

hfd_owner_kind_fn hfd__owner_kind(void) { return g_owner_kind; }
hfd_owner_kind_fn hfd__alloc_owner_kind(void) { return g_alloc_owner_kind; }
hfd_free_owner_kind_fn hfd__free_owner_kind(void) { return g_free_owner_kind; }

/* Like snprintf: returns the full length (without the NUL) even when cap is too small. */
HFD_API size_t hfd_missing_symbols(char *buf, size_t cap) {
    size_t need = 0;
    if (buf && cap) buf[0] = '\0';
    if (g_binding == HFD_BOUND_NONE) return 0;
    for (size_t i = 0; i < N_OPTIONAL; i++) {
        if (get_slot(&g_vt, k_optional[i].offset)) continue;
        const char *n = k_optional[i].name;
        size_t len = strlen(n);
        if (need) {
            if (buf && need + 1 < cap) { buf[need] = '\n'; buf[need + 1] = '\0'; }
            need++;
        }
        for (size_t j = 0; j < len; j++, need++)
            if (buf && need + 1 < cap) { buf[need] = n[j]; buf[need + 1] = '\0'; }
    }
    return need;
}

HFD_API void *hfd_alloc(size_t size, uintptr_t site) {
    if (!g_vt.alloc) { set_error(HFD_ENOTBOUND, "hfd_alloc: no allocator bound"); return NULL; }
    return g_vt.alloc(size, site);
}

HFD_API void hfd_free(void *ptr, size_t size, uintptr_t site) {
    if (!g_vt.free) { set_error(HFD_ENOTBOUND, "hfd_free: no allocator bound"); return; }
    g_vt.free(ptr, size, site);
}

/* ----------------------------------------------------------- crash handler */

static const int k_crash_signals[] = {SIGSEGV, SIGBUS, SIGABRT, SIGILL, SIGFPE};
#define N_CRASH_SIGNALS (sizeof k_crash_signals / sizeof k_crash_signals[0])
#define ALT_STACK_SIZE (64u * 1024u)

static hfd_crash_record *volatile g_rec;
/* Per thread: a crash on a replay thread reports the event that thread was running. */
__thread volatile uint64_t hfd__t_event_index = UINT64_MAX;
static struct sigaction g_old_actions[N_CRASH_SIGNALS];
static stack_t g_old_stack;
static void *g_alt_stack;
static size_t g_alt_stack_size;
static int g_installed;

HFD_API void hfd_set_event_index(uint64_t index) { hfd__t_event_index = index; }

int hfd__crash_handler_installed(void) { return g_installed; }

/* Async-signal-safe helpers: no stdio, no locale, no allocation. */
static size_t s_strlen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

static void s_strncpy(char *dst, const char *src, size_t cap) {
    size_t i = 0;
    if (!cap) return;
    if (src)
        for (; i + 1 < cap && src[i]; i++) dst[i] = src[i];
    for (; i < cap; i++) dst[i] = '\0';
}

static size_t s_put(char *buf, size_t pos, size_t cap, const char *s) {
    while (*s && pos < cap) buf[pos++] = *s++;
    return pos;
}

static size_t s_put_hex(char *buf, size_t pos, size_t cap, uint64_t v) {
    char tmp[16];
    int n = 0;
    do { tmp[n++] = "0123456789abcdef"[v & 15u]; v >>= 4; } while (v);
    while (n && pos < cap) buf[pos++] = tmp[--n];
    return pos;
}

static size_t s_put_dec(char *buf, size_t pos, size_t cap, uint64_t v) {
    char tmp[20];
    int n = 0;
    do { tmp[n++] = (char)('0' + v % 10u); v /= 10u; } while (v);
    while (n && pos < cap) buf[pos++] = tmp[--n];
    return pos;
}

static const char *signal_name(int signo) {
    switch (signo) {
    case SIGSEGV: return "SIGSEGV";
    case SIGBUS: return "SIGBUS";
    case SIGABRT: return "SIGABRT";
    case SIGILL: return "SIGILL";
    case SIGFPE: return "SIGFPE";
    default: return "SIGNAL";
    }
}

static void copy_maps(hfd_crash_record *rec) {
    uint32_t len = 0;
    rec->maps_truncated = 0;
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        for (;;) {
            if (len >= HFD_CRASH_MAPS_MAX) {
                char probe;
                ssize_t r;
                do r = read(fd, &probe, 1); while (r < 0 && errno == EINTR);
                rec->maps_truncated = r > 0;
                break;
            }
            ssize_t r = read(fd, rec->maps + len, HFD_CRASH_MAPS_MAX - len);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;
            len += (uint32_t)r;
        }
        close(fd);
    }
    if (len < HFD_CRASH_MAPS_MAX) rec->maps[len] = '\0';
    rec->maps_len = len;
}

static void crash_handler(int signo, siginfo_t *si, void *uctx) {
    int saved_errno = errno;
    hfd_crash_record *rec = g_rec;
    uintptr_t fault = 0;
    /* si_addr is only meaningful for kernel-generated faults (si_code > 0); for a signal
     * sent with kill()/tgkill() the same union holds the sender's pid and uid. */
    if (si && si->si_code > 0 &&
        (signo == SIGSEGV || signo == SIGBUS || signo == SIGILL || signo == SIGFPE))
        fault = (uintptr_t)si->si_addr;
    uintptr_t ptr = 0;
    uint32_t stage = 0xffffffffu;
    uint64_t seq = 0;
    int has_state = 0;
    const char *sname = "unknown";
    if (g_vt.debug_free_state) {
        const hak_free_state *st = (const hak_free_state *)g_vt.debug_free_state();
        if (st) {
            ptr = st->ptr;
            stage = st->stage;
            seq = st->seq;
            has_state = 1;
            if (g_vt.stage_name) {
                const char *n = g_vt.stage_name(stage);
                if (n) sname = n;
            }
        }
    }
    uint64_t event = hfd__t_event_index;
    if (rec) {
        rec->version = HFD_ABI_VERSION;
        rec->signo = signo;
        rec->si_code = si ? si->si_code : 0;
        rec->fault_addr = fault;
        rec->ptr = ptr;
        rec->stage = stage;
        rec->has_state = (uint32_t)has_state;
        rec->free_seq = seq;
        rec->event_index = event;
        rec->tid = (uint64_t)syscall(SYS_gettid);
        s_strncpy(rec->stage_name, sname, sizeof rec->stage_name);
        copy_maps(rec);
        /* The magic says "complete": it must not become visible before the rest. */
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        __asm__ __volatile__("" ::: "memory");
        *(volatile uint32_t *)&rec->magic = HFD_CRASH_MAGIC;
    }

    char line[256];
    size_t cap = sizeof line - 1, n = 0;
    n = s_put(line, n, cap, "[hakmem] CRASH: ");
    n = s_put(line, n, cap, signal_name(signo));
    n = s_put(line, n, cap, " fault=0x");
    n = s_put_hex(line, n, cap, fault);
    n = s_put(line, n, cap, " ptr=0x");
    n = s_put_hex(line, n, cap, ptr);
    n = s_put(line, n, cap, " stage=");
    /* Stage names come from the allocator; keep the line one line whatever they contain. */
    size_t sl = s_strlen(sname);
    for (size_t i = 0; i < sl && i < 31 && n < cap; i++)
        line[n++] = (sname[i] == '\n' || sname[i] == ' ') ? '_' : sname[i];
    n = s_put(line, n, cap, " event=");
    if (event == UINT64_MAX) n = s_put(line, n, cap, "-");
    else n = s_put_dec(line, n, cap, event);
    line[n++] = '\n';
    for (size_t off = 0; off < n;) {
        ssize_t w = write(STDERR_FILENO, line + off, n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        off += (size_t)w;
    }

    /* Die with the same signal. The signal is blocked while we run, so the re-raised one
     * stays pending and the default action takes it as soon as the handler returns (for a
     * real fault the faulting instruction is never retried). */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(signo, &dfl, NULL);
    syscall(SYS_tgkill, (long)getpid(), (long)syscall(SYS_gettid), (long)signo);
    errno = saved_errno;
    (void)uctx;
}

HFD_API int hfd_install_crash_handler(hfd_crash_record *rec) {
    if (!rec) return set_error(HFD_EINVAL, "hfd_install_crash_handler: record is NULL");
    rec->magic = 0;
    rec->version = HFD_ABI_VERSION;
    if (g_installed) {
        g_rec = rec;
        return HFD_OK;
    }
    if (!g_alt_stack) {
        size_t sz = ALT_STACK_SIZE;
#ifdef SIGSTKSZ
        if ((size_t)SIGSTKSZ > sz) sz = (size_t)SIGSTKSZ;
#endif
        void *st = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (st == MAP_FAILED)
            return set_error(HFD_ESYS, "hfd_install_crash_handler: mmap of %zu-byte alternate stack: %s",
                             sz, strerror(errno));
        g_alt_stack = st;
        g_alt_stack_size = sz;
    }
    stack_t ss;
    memset(&ss, 0, sizeof ss);
    ss.ss_sp = g_alt_stack;
    ss.ss_size = g_alt_stack_size;
    ss.ss_flags = 0;
    if (sigaltstack(&ss, &g_old_stack) != 0)
        return set_error(HFD_ESYS, "hfd_install_crash_handler: sigaltstack: %s", strerror(errno));
    g_rec = rec;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = crash_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < N_CRASH_SIGNALS; i++) {
        if (sigaction(k_crash_signals[i], &sa, &g_old_actions[i]) != 0) {
            int e = errno, failed = k_crash_signals[i];
            while (i-- > 0) sigaction(k_crash_signals[i], &g_old_actions[i], NULL);
            sigaltstack(&g_old_stack, NULL);
            g_rec = NULL;
            return set_error(HFD_ESYS, "hfd_install_crash_handler: sigaction(%s): %s",
                             signal_name(failed), strerror(e));
        }
    }
    g_installed = 1;
    return HFD_OK;
}

HFD_API void hfd_uninstall_crash_handler(void) {
    if (!g_installed) return;
    for (size_t i = 0; i < N_CRASH_SIGNALS; i++) sigaction(k_crash_signals[i], &g_old_actions[i], NULL);
    /* Restore the previous alternate stack (or none); ours stays mapped for the next install. */
    stack_t cur;
    if (sigaltstack(NULL, &cur) == 0 && cur.ss_sp == g_alt_stack) {
        if (g_old_stack.ss_flags & SS_DISABLE) {
            stack_t off;
            memset(&off, 0, sizeof off);
            off.ss_flags = SS_DISABLE;
            sigaltstack(&off, NULL);
        } else {
            stack_t old = g_old_stack;
            old.ss_flags = 0;
            sigaltstack(&old, NULL);
        }
    }
    g_rec = NULL;
    g_installed = 0;
}

/* ------------------------------------------------------------------ probes */

struct maps_reader {
    int fd;
    char buf[4096];
    size_t len, pos;
};

/* Reads one line (without '\n') into line; returns its length, -1 at EOF. Over-long lines
 * are cut; the rest is skipped (only the address range and perms at the front matter). */
static long maps_next_line(struct maps_reader *r, char *line, size_t cap) {
    size_t n = 0;
    int any = 0;
    for (;;) {
        if (r->pos == r->len) {
            ssize_t got;
            do got = read(r->fd, r->buf, sizeof r->buf); while (got < 0 && errno == EINTR);
            if (got <= 0) break;
            r->len = (size_t)got;
            r->pos = 0;
        }
        any = 1;
        char c = r->buf[r->pos++];
        if (c == '\n') break;
        if (n + 1 < cap) line[n++] = c;
    }
    line[n] = '\0';
    return (any || n) ? (long)n : -1;
}

static const char *parse_hex(const char *s, uintptr_t *out) {
    uintptr_t v = 0;
    int digits = 0;
    for (;; s++, digits++) {
        char c = *s;
        unsigned d;
        if (c >= '0' && c <= '9') d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') d = (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') d = (unsigned)(c - 'A' + 10);
        else break;
        v = (v << 4) | d;
    }
    *out = v;
    return digits ? s : NULL;
}

/* Ground truth: every byte of [addr, addr+len) lies in mappings whose perms start with 'r'.
 * /proc/self/maps lists mappings in ascending order, so one pass walks the range forward
 * across adjacent mappings. */
static int probe_maps(const void *addr, size_t len) {
    uintptr_t cur = (uintptr_t)addr;
    if (len == 0) len = 1;
    uintptr_t end = cur + len;
    if (end < cur) return 0;
    struct maps_reader r;
    r.fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    r.len = r.pos = 0;
    if (r.fd < 0) return set_error(HFD_ESYS, "open /proc/self/maps: %s", strerror(errno));
    char line[512];
    int readable = 0;
    while (maps_next_line(&r, line, sizeof line) >= 0) {
        uintptr_t lo, hi;
        const char *p = parse_hex(line, &lo);
        if (!p || *p != '-') continue;
        p = parse_hex(p + 1, &hi);
        if (!p || *p != ' ') continue;
        char perm_r = p[1];
        if (hi <= cur) continue;
        if (lo > cur) break;             /* a hole at cur */
        if (perm_r != 'r') break;        /* mapped but not readable */
        cur = hi;
        if (cur >= end) { readable = 1; break; }
    }
    close(r.fd);
    return readable;
}

HFD_API int hfd_probe(int kind, const void *addr, size_t len) {
    switch (kind) {
    case HAK_PROBE_OFF: return 1;
    case HAK_PROBE_SEED_MINCORE: return hak_probe_seed_mincore((void *)addr);
    case HAK_PROBE_SEED_MSYNC: return hak_probe_seed_msync((void *)addr);
    case HAK_PROBE_MINCORE: return hak_probe_mincore(addr, len);
    case HAK_PROBE_SAFE: return hak_probe_safe(addr, len, NULL);
    case HFD_PROBE_MAPS: return probe_maps(addr, len);
    default: return set_error(HFD_EINVAL, "hfd_probe: unknown probe kind %d", kind);
    }
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t now_cycles(void) {
#if defined(__x86_64__)
    return __rdtsc();
#else
    return 0;
#endif
}

HFD_API uint64_t hfd_probe_time(int kind, const void *addr, size_t len, uint64_t n, uint64_t *cycles) {
    if (cycles) *cycles = 0;
    if (hfd_probe(kind, addr, len) < 0) return 0;   /* unknown kind: message already set */
    volatile int sink = 0;
    uint64_t c0 = now_cycles();
    uint64_t t0 = now_ns();
    for (uint64_t i = 0; i < n; i++) sink += hfd_probe(kind, addr, len);
    uint64_t t1 = now_ns();
    uint64_t c1 = now_cycles();
    (void)sink;
    if (cycles) *cycles = c1 - c0;
    return t1 - t0;
}
