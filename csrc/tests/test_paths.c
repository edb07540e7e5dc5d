/* test_paths.c - drives every allocation and free path of an allocator with the hakmem ABI
 * (HAKMEM_LIB, resolved with dlsym so the same driver runs against the release, debug and
 * ASan builds), the driver library's binding, crash handler and probes.
 *
 * Each scenario runs in a fork()ed child so that it starts from an untouched allocator and
 * can set knobs "before first use"; results are counted in a MAP_SHARED block. Prints one
 * line per check and finally "N passed, M failed"; exit status 1 if anything failed.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hakmem.h"
#include "hfdriver.h"

extern void *__libc_malloc(size_t size);
extern void __libc_free(void *ptr);

/* ------------------------------------------------------------ the hak_ ABI */

#define API_FN(n) __typeof__(&n) n
static struct {
    API_FN(hak_init);
    API_FN(hak_abi_version);
    API_FN(hak_alloc_at);
    API_FN(hak_free_at);
    API_FN(hak_calloc_at);
    API_FN(hak_realloc_at);
    API_FN(hak_memalign_at);
    API_FN(hak_usable_size);
    API_FN(hak_tiny_free);
    API_FN(hak_set_knob);
    API_FN(hak_get_knob);
    API_FN(hak_knob_names);
    API_FN(hak_last_error);
    API_FN(hak_get_geometry);
    API_FN(hak_last_free_decision);
    API_FN(hak_route_ring_get);
    API_FN(hak_route_ring_clear);
    API_FN(hak_route_name);
    API_FN(hak_action_name);
    API_FN(hak_stage_name);
    API_FN(hak_probe_name);
    API_FN(hak_reqtrace_op_name);
    API_FN(hak_owner);
    API_FN(hak_owner_kind);
    API_FN(hak_alloc_owner_kind);
    API_FN(hak_free_owner_kind_at);
    API_FN(hak_debug_free_state);
    API_FN(hak_get_stats);
    API_FN(hak_debug_check);
    API_FN(hak_super_reg_reqtrace_dump);
    API_FN(hak_super_reg_reqtrace_get);
    API_FN(hak_super_reg_reqtrace_clear);
    const uint32_t *abi_version_const;
    const uint32_t *header_size_const;
    const uint32_t *magic_const;
    const uint64_t *superslab_size_const;
    const uint32_t *tiny_class_sizes_const;
    const uint32_t *build_release_const;
} H;

static const char *g_lib_path;
static hak_geometry G;
static size_t g_page;

/* ------------------------------------------------------------------ checks */

struct results {
    int passed, failed;
};
static struct results *R;

static void check(int ok, const char *detail, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void check(int ok, const char *detail, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (ok) {
        R->passed++;
        printf("ok   %s\n", msg);
    } else {
        R->failed++;
        printf("FAIL %s%s%s\n", msg, detail && *detail ? " -- " : "", detail ? detail : "");
    }
    fflush(stdout);
}

#define CHECK(cond, ...) check(!!(cond), "expected " #cond, __VA_ARGS__)

/* An aggregated check: many conditions, one line, the first failure explained. */
typedef struct {
    int bad;
    char why[400];
} agg_t;

static void agg_fail(agg_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void agg_fail(agg_t *a, const char *fmt, ...) {
    if (a->bad++) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->why, sizeof a->why, fmt, ap);
    va_end(ap);
}
#define AGG(a, cond, ...) do { if (!(cond)) agg_fail((a), __VA_ARGS__); } while (0)

static void agg_report(agg_t *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void agg_report(agg_t *a, const char *fmt, ...) {
    char msg[400], detail[460];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (a->bad > 1) snprintf(detail, sizeof detail, "%s (and %d more)", a->why, a->bad - 1);
    else snprintf(detail, sizeof detail, "%s", a->why);
    check(!a->bad, detail, "%s", msg);
    a->bad = 0;
    a->why[0] = '\0';
}

static const char *route_s(uint32_t r) { const char *s = H.hak_route_name(r); return s ? s : "(null)"; }
static const char *action_s(uint32_t a) { const char *s = H.hak_action_name(a); return s ? s : "(null)"; }

static pid_t my_tid(void) { return (pid_t)syscall(SYS_gettid); }

/* -------------------------------------------------------------- utilities */

static int knob(const char *name, const char *value) {
    int rc = H.hak_set_knob(name, value);
    char d[300];
    snprintf(d, sizeof d, "rc=%d: %s", rc, H.hak_last_error() ? H.hak_last_error() : "");
    check(rc == HAK_OK, d, "hak_set_knob(%s, %s)", name, value);
    return rc;
}

static uint8_t pat(uint32_t seed, size_t j) { return (uint8_t)(seed * 131u + j * 7u + (j >> 9) + 1u); }

static void fill(void *p, size_t n, uint32_t seed) {
    uint8_t *b = p;
    for (size_t j = 0; j < n; j++) b[j] = pat(seed, j);
}

/* Returns the index of the first wrong byte, or (size_t)-1. */
static size_t verify(const void *p, size_t n, uint32_t seed) {
    const uint8_t *b = p;
    for (size_t j = 0; j < n; j++)
        if (b[j] != pat(seed, j)) return j;
    return (size_t)-1;
}

/* Live blocks of a scenario: the overlap check covers header + usable bytes. */
struct blk {
    uint8_t *p;
    size_t usable;
    size_t hdr;
    uint32_t seed;
};
#define MAX_BLKS 8192
static struct blk g_blks[MAX_BLKS];
static int g_nblks;

static void track(void *p, size_t usable, size_t hdr, uint32_t seed) {
    if (g_nblks < MAX_BLKS) g_blks[g_nblks++] = (struct blk){p, usable, hdr, seed};
}

static int cmp_blk(const void *a, const void *b) {
    uintptr_t x = (uintptr_t)((const struct blk *)a)->p, y = (uintptr_t)((const struct blk *)b)->p;
    return x < y ? -1 : x > y;
}

static void check_tracked(const char *what) {
    agg_t a = {0};
    for (int i = 0; i < g_nblks; i++) {
        size_t bad = verify(g_blks[i].p, g_blks[i].usable, g_blks[i].seed);
        AGG(&a, bad == (size_t)-1, "block %p (%zu bytes) byte %zu overwritten", (void *)g_blks[i].p,
            g_blks[i].usable, bad);
    }
    agg_report(&a, "%s: %d blocks keep their pattern", what, g_nblks);
    struct blk *s = malloc(sizeof(struct blk) * (size_t)(g_nblks ? g_nblks : 1));
    memcpy(s, g_blks, sizeof(struct blk) * (size_t)g_nblks);
    qsort(s, (size_t)g_nblks, sizeof *s, cmp_blk);
    for (int i = 1; i < g_nblks; i++) {
        uintptr_t prev_end = (uintptr_t)s[i - 1].p + s[i - 1].usable;
        uintptr_t lo = (uintptr_t)s[i].p - s[i].hdr;
        AGG(&a, prev_end <= lo, "block %p+%zu overlaps block %p (header at %p)", (void *)s[i - 1].p,
            s[i - 1].usable, (void *)s[i].p, (void *)lo);
    }
    free(s);
    agg_report(&a, "%s: %d blocks (with headers) do not overlap", what, g_nblks);
}

static const char *owner_kind_name(uint32_t k) {
    static const char *n[] = {"none", "tiny", "mid", "l25", "mmap", "malloc"};
    return k < 6 ? n[k] : "?";
}

/* The tier that must own a fresh block of size s with default knobs. */
static uint32_t tier_of(size_t s) {
    if (s <= G.tiny_max) return HAK_OWNER_TINY;
    if (s <= G.mid_max) return HAK_OWNER_MID;
    if (s <= G.l25_max) return HAK_OWNER_L25;
    return HAK_OWNER_MMAP;
}

static const AllocHeader *hdr_of(const void *p) {
    return (const AllocHeader *)((const char *)p - HAK_HEADER_SIZE);
}

/* Frees p and checks the decision (route/action NULL = don't care). Fills *out. */
static uint64_t g_last_seq;
static void free_expect(agg_t *a, void *p, size_t size, const char *route, const char *action,
                        hak_free_decision *out) {
    hak_free_decision d;
    memset(&d, 0, sizeof d);
    H.hak_free_at(p, size, 0x5157u);
    int rc = H.hak_last_free_decision(&d);
    AGG(a, rc == HAK_OK, "hak_last_free_decision after free(%p) returned %d", p, rc);
    AGG(a, d.ptr == (uintptr_t)p, "decision.ptr=%#lx, freed %p", (unsigned long)d.ptr, p);
    AGG(a, d.seq > g_last_seq, "decision.seq=%lu not after previous %lu", (unsigned long)d.seq,
        (unsigned long)g_last_seq);
    AGG(a, d.tid == (uint64_t)my_tid(), "decision.tid=%lu, gettid()=%d", (unsigned long)d.tid, (int)my_tid());
    g_last_seq = d.seq;
    if (route)
        AGG(a, strcmp(route_s(d.route), route) == 0, "free(%p size %zu): route %s, expected %s (action %s)",
            p, size, route_s(d.route), route, action_s(d.action));
    if (action)
        AGG(a, strcmp(action_s(d.action), action) == 0, "free(%p size %zu): action %s, expected %s (route %s)",
            p, size, action_s(d.action), action, route_s(d.route));
    if (out) *out = d;
}

/* Stderr capture into a memfd, so the allocator's messages can be asserted. */
struct capture {
    int saved, fd;
};
static void cap_begin(struct capture *c) {
    fflush(stderr);
    c->fd = (int)syscall(SYS_memfd_create, "stderr", 0);
    c->saved = dup(2);
    if (c->fd >= 0) dup2(c->fd, 2);
}
static void cap_end(struct capture *c, char *buf, size_t cap) {
    fflush(stderr);
    dup2(c->saved, 2);
    close(c->saved);
    buf[0] = '\0';
    if (c->fd < 0) return;
    ssize_t n = pread(c->fd, buf, cap - 1, 0);
    buf[n > 0 ? n : 0] = '\0';
    close(c->fd);
    if (n > 0) fputs(buf, stderr);   /* keep the allocator's messages in the log */
}

static void check_heap(const char *what) {
    char msg[512] = "";
    int rc = H.hak_debug_check(msg, sizeof msg);
    char d[600];
    snprintf(d, sizeof d, "rc=%d msg=\"%s\"", rc, msg);
    check(rc == HAK_OK, d, "%s: hak_debug_check reports a healthy heap", what);
}

/* ----------------------------------------------------------- scenarios */

static void sc_names(void) {
    static const char *routes[HAK_ROUTE_COUNT] = {
        NULL, "null", "ss_hit", "mid_hit", "l25_hit", "unmapped_header_fallback",
        "invalid_magic_tiny_recovery", "invalid_magic_skip", "invalid_magic_libc", "bigcache",
        "bigcache_l25", "pool_hdr", "pool_hdr_disabled", "l25_hdr", "malloc_hdr", "mmap_batch",
        "mmap_whale", "mmap_munmap", "unknown_method"};
    static const char *actions[HAK_ACTION_COUNT] = {
        "none", "tiny_free", "pool_free", "l25_free", "libc_free_ptr", "libc_free_raw",
        "bigcache_put", "batch_add", "whale_put", "munmap"};
    static const char *stages[HAK_AT_COUNT] = {
        "idle", "alloc", "ss_lookup", "mid_lookup", "l25_lookup", "probe", "magic_read", "dispatch",
        "tiny_free", "pool_free", "l25_free", "libc_free", "bigcache", "batch", "whale", "munmap",
        "realloc", "usable_size", "check"};
    static const char *probes[HAK_PROBE_COUNT] = {"off", "seed-mincore", "seed-msync", "mincore", "safe"};
    static const char *ops[HAK_REQ_COUNT] = {"register", "unregister", "lookup_hit", "lookup_miss",
                                             "capacity_error", "dropped"};
    agg_t a = {0};
    for (uint32_t i = 1; i < HAK_ROUTE_COUNT; i++)
        AGG(&a, strcmp(route_s(i), routes[i]) == 0, "hak_route_name(%u)=%s, expected %s", i, route_s(i), routes[i]);
    agg_report(&a, "hak_route_name gives the documented route names");
    for (uint32_t i = 0; i < HAK_ACTION_COUNT; i++)
        AGG(&a, strcmp(action_s(i), actions[i]) == 0, "hak_action_name(%u)=%s, expected %s", i, action_s(i), actions[i]);
    agg_report(&a, "hak_action_name gives the documented action names");
    for (uint32_t i = 0; i < HAK_AT_COUNT; i++) {
        const char *s = H.hak_stage_name(i);
        AGG(&a, s && strcmp(s, stages[i]) == 0, "hak_stage_name(%u)=%s, expected %s", i, s ? s : "(null)", stages[i]);
    }
    agg_report(&a, "hak_stage_name gives the documented stage names");
    for (uint32_t i = 0; i < HAK_PROBE_COUNT; i++) {
        const char *s = H.hak_probe_name(i);
        AGG(&a, s && strcmp(s, probes[i]) == 0, "hak_probe_name(%u)=%s, expected %s", i, s ? s : "(null)", probes[i]);
    }
    agg_report(&a, "hak_probe_name gives the documented probe names");
    for (uint32_t i = 0; i < HAK_REQ_COUNT; i++) {
        const char *s = H.hak_reqtrace_op_name(i);
        AGG(&a, s && strcmp(s, ops[i]) == 0, "hak_reqtrace_op_name(%u)=%s, expected %s", i, s ? s : "(null)", ops[i]);
    }
    agg_report(&a, "hak_reqtrace_op_name gives the documented op names");
}

static void sc_geometry_knobs(void) {
    CHECK(H.hak_abi_version() == HAK_ABI_VERSION, "hak_abi_version() == %u", HAK_ABI_VERSION);
    CHECK(H.hak_init() == HAK_OK, "hak_init() returns HAK_OK");
    agg_t a = {0};
    AGG(&a, G.abi_version == HAK_ABI_VERSION, "abi_version %u", G.abi_version);
    AGG(&a, G.header_size == HAK_HEADER_SIZE && sizeof(AllocHeader) == HAK_HEADER_SIZE, "header_size %u", G.header_size);
    AGG(&a, G.magic == HAKMEM_MAGIC, "magic %#x", G.magic);
    AGG(&a, G.page_size == g_page, "page_size %u", G.page_size);
    AGG(&a, G.superslab_size == HAK_SUPERSLAB_SIZE, "superslab_size %lu", (unsigned long)G.superslab_size);
    AGG(&a, G.mid_chunk_size == HAK_MID_CHUNK_SIZE, "mid_chunk_size %lu", (unsigned long)G.mid_chunk_size);
    AGG(&a, G.l25_chunk_size == HAK_L25_CHUNK_SIZE, "l25_chunk_size %lu", (unsigned long)G.l25_chunk_size);
    AGG(&a, G.num_tiny_classes == HAK_TINY_NUM_CLASSES && G.num_mid_classes == HAK_MID_NUM_CLASSES &&
                G.num_l25_classes == HAK_L25_NUM_CLASSES, "class counts %u/%u/%u", G.num_tiny_classes,
        G.num_mid_classes, G.num_l25_classes);
    AGG(&a, G.bigcache_min == HAK_BIGCACHE_MIN && G.bigcache_l25_min == HAK_BIGCACHE_L25_MIN &&
                G.batch_min_size == HAK_BATCH_MIN_SIZE, "bigcache/band/batch thresholds");
    for (int i = 1; i < HAK_TINY_NUM_CLASSES; i++)
        AGG(&a, G.tiny_class_sizes[i] > G.tiny_class_sizes[i - 1], "tiny classes not ascending at %d", i);
    for (int i = 1; i < HAK_MID_NUM_CLASSES; i++)
        AGG(&a, G.mid_class_bytes[i] > G.mid_class_bytes[i - 1], "mid classes not ascending at %d", i);
    for (int i = 1; i < HAK_L25_NUM_CLASSES; i++)
        AGG(&a, G.l25_class_bytes[i] > G.l25_class_bytes[i - 1], "l25 classes not ascending at %d", i);
    AGG(&a, G.tiny_max == G.tiny_class_sizes[HAK_TINY_NUM_CLASSES - 1], "tiny_max %lu != largest tiny class",
        (unsigned long)G.tiny_max);
    AGG(&a, G.tiny_max < G.mid_max && G.mid_max < G.l25_max, "tiers not ascending");
    AGG(&a, G.mid_max <= G.mid_class_bytes[HAK_MID_NUM_CLASSES - 1] - HAK_HEADER_SIZE, "mid_max beyond largest mid class");
    AGG(&a, G.l25_max <= G.l25_class_bytes[HAK_L25_NUM_CLASSES - 1] - HAK_HEADER_SIZE, "l25_max beyond largest l25 class");
    agg_report(&a, "hak_get_geometry matches hakmem.h (tiny %u..%u, mid_max %lu, l25_max %lu)",
               G.tiny_class_sizes[0], G.tiny_class_sizes[7], (unsigned long)G.mid_max, (unsigned long)G.l25_max);

    AGG(&a, H.abi_version_const && *H.abi_version_const == HAK_ABI_VERSION, "hak_abi_version_const");
    AGG(&a, H.header_size_const && *H.header_size_const == HAK_HEADER_SIZE, "hak_header_size_const");
    AGG(&a, H.magic_const && *H.magic_const == HAKMEM_MAGIC, "hak_magic_const");
    AGG(&a, H.superslab_size_const && *H.superslab_size_const == HAK_SUPERSLAB_SIZE, "hak_superslab_size_const");
    AGG(&a, H.tiny_class_sizes_const &&
                memcmp(H.tiny_class_sizes_const, G.tiny_class_sizes, sizeof G.tiny_class_sizes) == 0,
        "hak_tiny_class_sizes_const differs from geometry");
    /* The Makefile names the debug builds *_debug.so; anything else may be either. */
    int want_release = strstr(g_lib_path, "_debug") ? 0 : (int)G.build_release;
    AGG(&a, H.build_release_const && *H.build_release_const == G.build_release && G.build_release <= 1 &&
                (int)G.build_release == want_release,
        "hak_build_release_const=%u geometry=%u (library %s)", H.build_release_const ? *H.build_release_const : 99u,
        G.build_release, g_lib_path);
    agg_report(&a, "ELF constants match the geometry");

    char buf[64];
    CHECK(H.hak_set_knob("HAKMEM_NO_SUCH_KNOB", "1") == HAK_ENOKNOB, "unknown knob -> HAK_ENOKNOB");
    CHECK(H.hak_last_error() && *H.hak_last_error(), "hak_last_error has a message after a failed set (\"%s\")",
          H.hak_last_error() ? H.hak_last_error() : "");
    CHECK(H.hak_set_knob("HAKMEM_HEADER_PROBE", "bogus") == HAK_EINVAL, "bad probe name -> HAK_EINVAL");
    CHECK(H.hak_set_knob("HAKMEM_HEADER_PROBE", "safe") == HAK_OK &&
              H.hak_get_knob("HAKMEM_HEADER_PROBE", buf, sizeof buf) == HAK_OK && strcmp(buf, "safe") == 0,
          "HAKMEM_HEADER_PROBE round-trips through set/get (got \"%s\")", buf);
    CHECK(H.hak_get_knob("HAKMEM_HEADER_PROBE", buf, 2) == HAK_ERANGE, "hak_get_knob with a tiny buffer -> HAK_ERANGE");
    char names[4096];
    size_t need = H.hak_knob_names(names, sizeof names);
    CHECK(need < sizeof names && strstr(names, "HAKMEM_HEADER_PROBE") && strstr(names, "HAKMEM_SS_REG_CAPACITY") &&
              strstr(names, "HAKMEM_BIGCACHE_L25"),
          "hak_knob_names lists the knobs (%zu bytes)", need);
    CHECK(H.hak_knob_names(names, 4) == need, "hak_knob_names returns the length needed even when truncated");
}

/* One class: allocate n blocks spanning the class's size range, check ownership, fill. */
static void alloc_class(const char *tier, uint32_t kind, int cls, size_t lo, size_t hi, size_t class_bytes,
                        uint32_t method, void **ps, size_t *sizes, int n) {
    agg_t a = {0};
    for (int k = 0; k < n; k++) {
        size_t s = lo + (hi - lo) * (size_t)k / (size_t)(n > 1 ? n - 1 : 1);
        void *p = H.hak_alloc_at(s, 0x1000u + (uintptr_t)cls);
        ps[k] = p;
        sizes[k] = s;
        if (!p) { agg_fail(&a, "hak_alloc_at(%zu) returned NULL", s); continue; }
        hak_owner_info o;
        memset(&o, 0xee, sizeof o);
        int rc = H.hak_owner(p, &o);
        size_t us = H.hak_usable_size(p);
        AGG(&a, rc == HAK_OK && o.kind == kind, "alloc(%zu)=%p owner kind %s, expected %s", s, p,
            owner_kind_name(o.kind), owner_kind_name(kind));
        AGG(&a, o.state == HAK_BLOCK_LIVE && o.block_ptr == (uintptr_t)p, "alloc(%zu)=%p state %u block_ptr %#lx", s,
            p, o.state, (unsigned long)o.block_ptr);
        AGG(&a, o.class_index == cls, "alloc(%zu) class_index %d, expected %d", s, o.class_index, cls);
        AGG(&a, o.registered == 1, "alloc(%zu)=%p region %#lx not registered", s, p, (unsigned long)o.region_base);
        AGG(&a, o.method == method, "alloc(%zu) owner method %u, expected %u", s, o.method, method);
        AGG(&a, o.class_bytes == class_bytes, "alloc(%zu) class_bytes %zu, expected %zu", s, o.class_bytes, class_bytes);
        AGG(&a, us >= s && us == o.block_size, "alloc(%zu) usable_size %zu, owner block_size %zu", s, us, o.block_size);
        AGG(&a, o.region_base <= (uintptr_t)p && (uintptr_t)p + us <= o.region_base + o.region_size,
            "block %p+%zu outside its region %#lx+%zu", p, us, (unsigned long)o.region_base, o.region_size);
        /* malloc's alignment, 16, or the largest power of two dividing the block size if smaller. */
        size_t al = (size_t)1 << __builtin_ctzl(us | 16u);
        AGG(&a, ((uintptr_t)p & (al - 1)) == 0, "alloc(%zu)=%p not %zu-byte aligned", s, p, al);
        if (method) {
            const AllocHeader *h = hdr_of(p);
            AGG(&a, h->magic == HAKMEM_MAGIC && h->method == method && h->size == s && h->class_bytes == class_bytes &&
                        h->alloc_site == 0x1000u + (uintptr_t)cls,
                "header of %p: magic %#x method %u size %zu class_bytes %zu site %#lx", p, h->magic, h->method,
                h->size, h->class_bytes, (unsigned long)h->alloc_site);
        }
        fill(p, us, (uint32_t)(g_nblks + 1));
        track(p, us, method ? HAK_HEADER_SIZE : 0, (uint32_t)(g_nblks + 1));
    }
    agg_report(&a, "%s class %d [%zu..%zu]: %d blocks owned, live, registered, usable >= size", tier, cls, lo, hi, n);
}

static void free_class(const char *tier, int cls, void **ps, size_t *sizes, int n, uint32_t kind, const char *route,
                       const char *action, uint32_t stage_hit) {
    agg_t a = {0};
    for (int k = 0; k < n; k++) {
        if (!ps[k]) continue;
        hak_free_decision d;
        free_expect(&a, ps[k], sizes[k], route, action, &d);
        AGG(&a, (d.stages_tried & stage_hit) && (d.stages_hit & stage_hit), "stage bit %#x not tried+hit (%#x/%#x)",
            stage_hit, d.stages_tried, d.stages_hit);
        AGG(&a, d.probe == HAK_PROBE_NOT_RUN && d.method == -1, "registry hit but probe=%d method=%d", d.probe, d.method);
        hak_owner_info o;
        H.hak_owner(ps[k], &o);
        AGG(&a, o.kind == kind && o.state == HAK_BLOCK_FREE, "after free %p: owner kind %s state %u", ps[k],
            owner_kind_name(o.kind), o.state);
    }
    agg_report(&a, "%s class %d: every free took %s -> %s, block state FREE afterwards", tier, cls, route, action);
}

static void sc_tiny(void) {
    enum { N = 48 };
    static void *ps[HAK_TINY_NUM_CLASSES][N];
    static size_t sz[HAK_TINY_NUM_CLASSES][N];
    for (int c = 0; c < HAK_TINY_NUM_CLASSES; c++) {
        size_t lo = c ? G.tiny_class_sizes[c - 1] + 1 : 1;
        alloc_class("tiny", HAK_OWNER_TINY, c, lo, G.tiny_class_sizes[c], G.tiny_class_sizes[c], 0, ps[c], sz[c], N);
    }
    check_tracked("tiny");
    hak_owner_info o;
    CHECK(H.hak_owner((char *)ps[3][5] + 3, &o) == HAK_OK && o.block_ptr == (uintptr_t)ps[3][5] &&
              o.kind == HAK_OWNER_TINY,
          "hak_owner of an interior pointer names its block");
    int local;
    CHECK(H.hak_owner(&local, &o) == HAK_OK && o.kind == HAK_OWNER_NONE, "hak_owner of a stack address -> NONE");
    check_heap("tiny (all live)");

    hak_stats s0, s1;
    H.hak_get_stats(&s0);
    H.hak_route_ring_clear();
    for (int c = 0; c < HAK_TINY_NUM_CLASSES; c++)
        free_class("tiny", c, ps[c], sz[c], N, HAK_OWNER_TINY, "ss_hit", "tiny_free", HAK_STAGE_SS);
    H.hak_get_stats(&s1);
    uint64_t nfree = (uint64_t)HAK_TINY_NUM_CLASSES * N;
    CHECK(s1.frees - s0.frees == nfree && s1.route_counts[HAK_ROUTE_SS_HIT] - s0.route_counts[HAK_ROUTE_SS_HIT] == nfree,
          "hak_get_stats counts %lu frees, all ss_hit (got %lu / %lu)", (unsigned long)nfree,
          (unsigned long)(s1.frees - s0.frees),
          (unsigned long)(s1.route_counts[HAK_ROUTE_SS_HIT] - s0.route_counts[HAK_ROUTE_SS_HIT]));
    static hak_free_decision ring[HAK_ROUTE_RING];
    size_t nr = H.hak_route_ring_get(ring, HAK_ROUTE_RING);
    int mono = 1;
    for (size_t i = 1; i < nr; i++) mono &= ring[i].seq > ring[i - 1].seq;
    CHECK(nr == nfree && mono && ring[nr - 1].ptr == (uintptr_t)ps[7][N - 1] && ring[nr - 1].seq == g_last_seq,
          "route ring holds the %lu frees oldest first, ending with the last one (got %zu)", (unsigned long)nfree, nr);
    hak_free_state *st = H.hak_debug_free_state();
    CHECK(st && st->stage == HAK_AT_IDLE, "hak_debug_free_state: stage idle between calls (stage %u)",
          st ? st->stage : 99u);

    /* Freed blocks come back: a new block of class 0 is one of the freed ones. */
    g_nblks = 0;
    void *p = H.hak_alloc_at(G.tiny_class_sizes[0], 0);
    int reused = 0;
    for (int k = 0; k < N; k++) reused |= p == ps[0][k];
    CHECK(reused, "tiny class 0 reuses a freed block (%p)", p);
    H.hak_free_at(p, 0, 0);
    check_heap("tiny (after frees)");
}

static void sc_mid(void) {
    enum { N = 24 };
    static void *ps[HAK_MID_NUM_CLASSES][N];
    static size_t sz[HAK_MID_NUM_CLASSES][N];
    for (int c = 0; c < HAK_MID_NUM_CLASSES; c++) {
        size_t lo = c ? G.mid_class_bytes[c - 1] - HAK_HEADER_SIZE + 1 : G.tiny_max + 1;
        size_t hi = G.mid_class_bytes[c] - HAK_HEADER_SIZE;
        if (hi > G.mid_max) hi = G.mid_max;
        alloc_class("mid", HAK_OWNER_MID, c, lo, hi, G.mid_class_bytes[c], ALLOC_METHOD_POOL, ps[c], sz[c], N);
    }
    check_tracked("mid");
    check_heap("mid (all live)");
    for (int c = 0; c < HAK_MID_NUM_CLASSES; c++)
        free_class("mid", c, ps[c], sz[c], N, HAK_OWNER_MID, "mid_hit", "pool_free", HAK_STAGE_MID);
    check_heap("mid (after frees)");
}

static void sc_l25(void) {
    enum { N = 6 };
    static void *ps[HAK_L25_NUM_CLASSES][N];
    static size_t sz[HAK_L25_NUM_CLASSES][N];
    for (int c = 0; c < HAK_L25_NUM_CLASSES; c++) {
        size_t lo = c ? G.l25_class_bytes[c - 1] - HAK_HEADER_SIZE + 1 : G.mid_max + 1;
        size_t hi = G.l25_class_bytes[c] - HAK_HEADER_SIZE;
        if (hi > G.l25_max) hi = G.l25_max;
        alloc_class("l25", HAK_OWNER_L25, c, lo, hi, G.l25_class_bytes[c], ALLOC_METHOD_L25_POOL, ps[c], sz[c], N);
    }
    check_tracked("l25");
    check_heap("l25 (all live)");
    for (int c = 0; c < HAK_L25_NUM_CLASSES; c++)
        free_class("l25", c, ps[c], sz[c], N, HAK_OWNER_L25, "l25_hit", "l25_free", HAK_STAGE_L25);
    check_heap("l25 (after frees)");
}

static void sc_boundaries(void) {
    struct { size_t s; uint32_t kind; } b[] = {
        {1, HAK_OWNER_TINY}, {G.tiny_max, HAK_OWNER_TINY}, {G.tiny_max + 1, HAK_OWNER_MID},
        {G.mid_max, HAK_OWNER_MID}, {G.mid_max + 1, HAK_OWNER_L25}, {G.l25_max, HAK_OWNER_L25},
        {G.l25_max + 1, HAK_OWNER_MMAP},
    };
    for (size_t i = 0; i < sizeof b / sizeof b[0]; i++) {
        void *p = H.hak_alloc_at(b[i].s, 0);
        hak_owner_info o = {0};
        if (p) H.hak_owner(p, &o);
        CHECK(p && o.kind == b[i].kind, "alloc(%zu) is owned by %s (got %s)", b[i].s, owner_kind_name(b[i].kind),
              owner_kind_name(o.kind));
        if (p) H.hak_free_at(p, b[i].s, 0);
    }
    void *z = H.hak_alloc_at(0, 0);
    hak_owner_info o = {0};
    if (z) H.hak_owner(z, &o);
    CHECK(!z || (o.kind != HAK_OWNER_NONE && o.state == HAK_BLOCK_LIVE), "alloc(0) returns NULL or a live block (%p)", z);
    if (z) H.hak_free_at(z, 0, 0);
    agg_t a = {0};
    free_expect(&a, NULL, 0, "null", "none", NULL);
    agg_report(&a, "free(NULL) takes route null -> none");
    CHECK(H.hak_usable_size(NULL) == 0, "hak_usable_size(NULL) == 0");
}

/* A large MMAP block, freed under the given knobs. */
static void mmap_case(const char *title, size_t size, const char *route, const char *action, uint32_t after_kind,
                      uint32_t after_state) {
    g_nblks = 0;
    agg_t a = {0};
    void *p = H.hak_alloc_at(size, 0x77);
    hak_owner_info o = {0};
    if (!p) { check(0, "NULL", "%s: hak_alloc_at(%zu)", title, size); return; }
    H.hak_owner(p, &o);
    size_t us = H.hak_usable_size(p);
    const AllocHeader *h = hdr_of(p);
    AGG(&a, o.kind == HAK_OWNER_MMAP && o.method == ALLOC_METHOD_MMAP && o.state == HAK_BLOCK_LIVE,
        "owner kind %s method %u state %u", owner_kind_name(o.kind), o.method, o.state);
    AGG(&a, h->magic == HAKMEM_MAGIC && h->method == ALLOC_METHOD_MMAP && h->size == size && h->alloc_site == 0x77,
        "header magic %#x method %u size %zu", h->magic, h->method, h->size);
    AGG(&a, h->class_bytes >= size + HAK_HEADER_SIZE && h->class_bytes % g_page == 0 && o.class_bytes == h->class_bytes,
        "class_bytes %zu (owner %zu) for size %zu", h->class_bytes, o.class_bytes, size);
    AGG(&a, us >= size && us == o.block_size, "usable %zu owner block_size %zu", us, o.block_size);
    AGG(&a, ((uintptr_t)p - HAK_HEADER_SIZE) % g_page == 0, "raw %p not page aligned", (void *)hdr_of(p));
    agg_report(&a, "%s: alloc(%zu) is an MMAP block with a valid header (class_bytes %zu)", title, size, h->class_bytes);
    fill(p, us, 9);
    track(p, us, HAK_HEADER_SIZE, 9);
    check_tracked(title);
    size_t cb = h->class_bytes;
    free_expect(&a, p, size, route, action, NULL);
    agg_report(&a, "%s: free(size %zu, class_bytes %zu) -> %s / %s", title, size, cb, route, action);
    memset(&o, 0, sizeof o);
    H.hak_owner(p, &o);
    CHECK(o.kind == after_kind && (after_kind == HAK_OWNER_NONE || o.state == after_state),
          "%s: after free the owner is %s state %u (got %s state %u)", title, owner_kind_name(after_kind), after_state,
          owner_kind_name(o.kind), o.state);
    if (after_kind == HAK_OWNER_NONE)
        CHECK(hfd_probe(HFD_PROBE_MAPS, hdr_of(p), HAK_HEADER_SIZE) == 0, "%s: the mapping is gone (/proc/self/maps)",
              title);
    g_nblks = 0;
}

static size_t big_size(void) {
    size_t s = 3u << 20;
    return s > G.l25_max ? s : G.l25_max + (1u << 20);
}

static void sc_mmap_bigcache(void) {
    knob("HAKMEM_BIGCACHE", "1");
    knob("HAKMEM_BIGCACHE_L25", "0");
    mmap_case("bigcache", big_size(), "bigcache", "bigcache_put", HAK_OWNER_MMAP, HAK_BLOCK_CACHED);
    /* The cached block serves the next request of its size class. */
    void *p = H.hak_alloc_at(big_size(), 0);
    hak_owner_info o = {0};
    if (p) H.hak_owner(p, &o);
    CHECK(p && o.kind == HAK_OWNER_MMAP && o.state == HAK_BLOCK_LIVE, "bigcache: a new big block is live MMAP (%p)", p);
    if (p) H.hak_free_at(p, 0, 0);
    check_heap("bigcache");
}

/* A size whose MMAP mapping stays below the BigCache threshold and inside the L25 band. */
static size_t band_size(void) {
    size_t s = G.bigcache_l25_min > G.l25_max + 1 ? G.bigcache_l25_min : G.l25_max + 1;
    size_t mapped = (s + HAK_HEADER_SIZE + g_page - 1) / g_page * g_page;
    return mapped < G.bigcache_min ? s : 0;
}

static void sc_mmap_bigcache_l25(void) {
    knob("HAKMEM_BIGCACHE", "1");
    knob("HAKMEM_BIGCACHE_L25", "1");
    size_t s = band_size();
    if (s) {
        mmap_case("bigcache_l25", s, "bigcache_l25", "bigcache_put", HAK_OWNER_MMAP, HAK_BLOCK_CACHED);
    } else {
        /* No MMAP size lies in the band: only a header block escaping the L25 registry reaches it. */
        knob("HAKMEM_L25_REG_DROP_EVERY", "1");
        size_t sz = G.bigcache_l25_min > G.mid_max + 1 ? G.bigcache_l25_min : G.mid_max + 1;
        void *p = H.hak_alloc_at(sz, 0);
        hak_owner_info o = {0};
        if (p) H.hak_owner(p, &o);
        CHECK(p && o.kind == HAK_OWNER_L25 && o.registered == 0, "bigcache_l25: L25 block of %zu escapes its registry", sz);
        agg_t a = {0};
        if (p) free_expect(&a, p, sz, "bigcache_l25", "bigcache_put", NULL);
        agg_report(&a, "bigcache_l25: free(size %zu) -> bigcache_l25 / bigcache_put", sz);
    }
    knob("HAKMEM_BIGCACHE_L25", "0");
    knob("HAKMEM_BATCH_MADVISE", "0");
    knob("HAKMEM_WHALE", "0");
    if (s) mmap_case("band off", s, "mmap_munmap", "munmap", HAK_OWNER_NONE, 0);
    check_heap("bigcache_l25");
}

static void sc_mmap_batch(void) {
    knob("HAKMEM_BIGCACHE", "0");
    knob("HAKMEM_BATCH_MADVISE", "1");
    size_t s = G.batch_min_size > G.l25_max + 1 ? G.batch_min_size : G.l25_max + 1;
    mmap_case("batch", s, "mmap_batch", "batch_add", HAK_OWNER_MMAP, HAK_BLOCK_CACHED);
    mmap_case("batch big", big_size(), "mmap_batch", "batch_add", HAK_OWNER_MMAP, HAK_BLOCK_CACHED);
    check_heap("batch");
}

static void sc_mmap_whale(void) {
    knob("HAKMEM_BIGCACHE", "0");
    knob("HAKMEM_BATCH_MADVISE", "0");
    knob("HAKMEM_WHALE", "1");
    mmap_case("whale", big_size(), "mmap_whale", "whale_put", HAK_OWNER_MMAP, HAK_BLOCK_CACHED);
    check_heap("whale");
}

static void sc_mmap_munmap(void) {
    knob("HAKMEM_BIGCACHE", "0");
    knob("HAKMEM_BATCH_MADVISE", "0");
    knob("HAKMEM_WHALE", "0");
    mmap_case("munmap", big_size(), "mmap_munmap", "munmap", HAK_OWNER_NONE, 0);
    mmap_case("munmap small", G.l25_max + 1, "mmap_munmap", "munmap", HAK_OWNER_NONE, 0);
    check_heap("munmap");
}

static void malloc_method_case(const char *feature, size_t lo, size_t hi) {
    knob(feature, "0");
    enum { N = 16 };
    void *ps[N];
    size_t sz[N];
    agg_t a = {0};
    g_nblks = 0;
    for (int k = 0; k < N; k++) {
        size_t s = lo + (hi - lo) * (size_t)k / (N - 1);
        void *p = H.hak_alloc_at(s, 0x99);
        ps[k] = p;
        sz[k] = s;
        if (!p) { agg_fail(&a, "alloc(%zu) NULL", s); continue; }
        hak_owner_info o = {0};
        H.hak_owner(p, &o);
        const AllocHeader *h = hdr_of(p);
        size_t us = H.hak_usable_size(p);
        AGG(&a, o.kind == HAK_OWNER_MALLOC && o.method == ALLOC_METHOD_MALLOC && o.state == HAK_BLOCK_LIVE,
            "alloc(%zu) owner %s method %u", s, owner_kind_name(o.kind), o.method);
        AGG(&a, h->magic == HAKMEM_MAGIC && h->method == ALLOC_METHOD_MALLOC && h->size == s,
            "alloc(%zu) header magic %#x method %u size %zu", s, h->magic, h->method, h->size);
        AGG(&a, us >= s, "alloc(%zu) usable %zu", s, us);
        fill(p, us, (uint32_t)k + 100);
        track(p, us, HAK_HEADER_SIZE, (uint32_t)k + 100);
    }
    agg_report(&a, "%s=0: sizes %zu..%zu use the MALLOC method (header + libc malloc)", feature, lo, hi);
    check_tracked(feature);
    for (int k = 0; k < N; k++)
        if (ps[k]) free_expect(&a, ps[k], sz[k], "malloc_hdr", "libc_free_raw", NULL);
    agg_report(&a, "%s=0: every free takes malloc_hdr -> libc_free_raw", feature);
    knob(feature, "1");
    g_nblks = 0;
}

static void sc_malloc_method(void) {
    malloc_method_case("HAKMEM_TINY", 1, G.tiny_max);
    malloc_method_case("HAKMEM_POOL", G.tiny_max + 1, G.mid_max);
    malloc_method_case("HAKMEM_L25", G.mid_max + 1, G.l25_max);
    check_heap("malloc method");
}

static const char *route_for_owner(const hak_owner_info *o) {
    switch (o->kind) {
    case HAK_OWNER_TINY: return "ss_hit";
    case HAK_OWNER_MID: return "mid_hit";
    case HAK_OWNER_L25: return "l25_hit";
    case HAK_OWNER_MALLOC: return "malloc_hdr";
    default: return NULL;
    }
}

static void sc_memalign(void) {
    static const size_t aligns[] = {16, 32, 64, 128, 256, 512, 1024, 4096, 8192, 65536};
    const size_t sizes[] = {1, 24, 100, G.tiny_max, G.tiny_max + 1, 3000, G.mid_max, G.mid_max + 1, G.l25_max + 1};
    knob("HAKMEM_BIGCACHE", "0");
    knob("HAKMEM_BATCH_MADVISE", "0");
    knob("HAKMEM_WHALE", "0");
    for (size_t ai = 0; ai < sizeof aligns / sizeof aligns[0]; ai++) {
        agg_t a = {0};
        g_nblks = 0;
        void *ps[16];
        size_t n = sizeof sizes / sizeof sizes[0];
        for (size_t si = 0; si < n; si++) {
            size_t s = sizes[si];
            void *p = H.hak_memalign_at(aligns[ai], s, 0x55);
            ps[si] = p;
            if (!p) { agg_fail(&a, "memalign(%zu, %zu) NULL", aligns[ai], s); continue; }
            hak_owner_info o = {0};
            H.hak_owner(p, &o);
            size_t us = H.hak_usable_size(p);
            AGG(&a, (uintptr_t)p % aligns[ai] == 0, "memalign(%zu, %zu)=%p misaligned", aligns[ai], s, p);
            AGG(&a, us >= s, "memalign(%zu, %zu) usable %zu", aligns[ai], s, us);
            AGG(&a, o.kind != HAK_OWNER_NONE && o.block_ptr == (uintptr_t)p && o.state == HAK_BLOCK_LIVE,
                "memalign(%zu, %zu)=%p owner %s block_ptr %#lx state %u", aligns[ai], s, p, owner_kind_name(o.kind),
                (unsigned long)o.block_ptr, o.state);
            if (o.kind != HAK_OWNER_TINY && o.kind != HAK_OWNER_NONE)
                AGG(&a, hdr_of(p)->magic == HAKMEM_MAGIC && hdr_of(p)->method == o.method,
                    "memalign(%zu, %zu)=%p header magic %#x method %u, owner method %u", aligns[ai], s, p,
                    hdr_of(p)->magic, hdr_of(p)->method, o.method);
            fill(p, us, (uint32_t)(si + 7));
            track(p, us, o.kind == HAK_OWNER_TINY ? 0 : HAK_HEADER_SIZE, (uint32_t)(si + 7));
        }
        agg_report(&a, "memalign(%zu, 1..%zu): aligned, owned, live, usable >= size", aligns[ai], sizes[n - 1]);
        check_tracked("memalign");
        for (size_t si = 0; si < n; si++) {
            if (!ps[si]) continue;
            hak_owner_info o = {0};
            H.hak_owner(ps[si], &o);
            const char *r = o.kind == HAK_OWNER_MMAP ? "mmap_munmap" : route_for_owner(&o);
            free_expect(&a, ps[si], sizes[si], r, NULL, NULL);
        }
        agg_report(&a, "memalign(%zu, ...): each free takes its owner's route", aligns[ai]);
    }
    check_heap("memalign");
}

static void sc_calloc(void) {
    const size_t sizes[] = {1, 16, 100, G.tiny_max, G.tiny_max + 1, 5000, G.mid_max, G.mid_max + 1, G.l25_max,
                            G.l25_max + 1};
    knob("HAKMEM_BIGCACHE", "1");
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t s = sizes[i];
        /* Dirty blocks of this size first, so calloc has recycled memory to zero. */
        void *d[4];
        for (int k = 0; k < 4; k++) {
            d[k] = H.hak_alloc_at(s, 0);
            if (d[k]) memset(d[k], 0xAB, H.hak_usable_size(d[k]));
        }
        for (int k = 0; k < 4; k++) H.hak_free_at(d[k], s, 0);
        size_t nm = s >= 4 && s % 4 == 0 ? 4 : 1;
        uint8_t *p = H.hak_calloc_at(nm, s / nm, 0);
        int zero = p != NULL;
        size_t bad = 0;
        for (size_t j = 0; p && j < s; j++)
            if (p[j]) { zero = 0; bad = j; break; }
        hak_owner_info o = {0};
        if (p) H.hak_owner(p, &o);
        CHECK(zero && o.kind == tier_of(s), "calloc(%zu, %zu) is zeroed and owned by %s (got %s, first nonzero @%zu)",
              nm, s / nm, owner_kind_name(tier_of(s)), owner_kind_name(o.kind), bad);
        H.hak_free_at(p, s, 0);
    }
    CHECK(H.hak_calloc_at(SIZE_MAX / 2 + 1, 2, 0) == NULL, "calloc with nmemb*size overflowing returns NULL");
    check_heap("calloc");
}

static void sc_realloc(void) {
    const size_t chain[] = {8, 100, G.tiny_max, G.tiny_max + 1, 4000, G.mid_max, G.mid_max + 1, G.l25_max,
                            G.l25_max + 1, big_size(), G.l25_max, G.mid_max + 1, 3000, G.tiny_max, 40, 1};
    size_t n = sizeof chain / sizeof chain[0];
    uint8_t *p = H.hak_realloc_at(NULL, chain[0], 0);
    hak_owner_info o = {0};
    if (p) H.hak_owner(p, &o);
    CHECK(p && o.kind == HAK_OWNER_TINY && o.state == HAK_BLOCK_LIVE, "realloc(NULL, %zu) allocates", chain[0]);
    if (!p) return;
    fill(p, chain[0], 1);
    for (size_t i = 1; i < n; i++) {
        size_t old = chain[i - 1], s = chain[i];
        uint8_t *q = H.hak_realloc_at(p, s, 0);
        if (!q) { check(0, "NULL", "realloc(%zu -> %zu)", old, s); return; }
        size_t keep = old < s ? old : s;
        size_t bad = verify(q, keep, (uint32_t)i);
        memset(&o, 0, sizeof o);
        H.hak_owner(q, &o);
        CHECK(bad == (size_t)-1 && o.kind == tier_of(s) && o.state == HAK_BLOCK_LIVE && H.hak_usable_size(q) >= s,
              "realloc(%zu -> %zu) keeps the first %zu bytes and moves to %s (got %s, first bad byte %zd)", old, s,
              keep, owner_kind_name(tier_of(s)), owner_kind_name(o.kind), (ssize_t)bad);
        if (q != p && tier_of(old) == HAK_OWNER_TINY) {
            hak_owner_info oo = {0};
            H.hak_owner(p, &oo);
            CHECK(oo.state != HAK_BLOCK_LIVE || oo.block_ptr != (uintptr_t)p,
                  "realloc(%zu -> %zu) moved and released the old Tiny block", old, s);
        }
        fill(q, s, (uint32_t)i + 1);
        p = q;
    }
    H.hak_free_at(p, 0, 0);
    check_heap("realloc");
}

static void sc_debug_check(void) {
    void *ps[64];
    for (int i = 0; i < 64; i++) ps[i] = H.hak_alloc_at((size_t)(i * 97 % 5000) + 1, 0);
    for (int i = 0; i < 64; i += 2) H.hak_free_at(ps[i], 0, 0);
    check_heap("mixed workload");
    /* A header overwritten behind a live Mid and a live MMAP block: the check names the block. */
    void *hs[2] = {H.hak_alloc_at(3000, 0), H.hak_alloc_at(G.l25_max + 1, 0)};
    for (int i = 0; i < 2; i++) {
        AllocHeader *h = (AllocHeader *)((char *)hs[i] - HAK_HEADER_SIZE);
        uint32_t saved = h->magic;
        h->magic = 0x11111111u;
        char m[512] = "", want[32];
        snprintf(want, sizeof want, "%p", hs[i]);
        int rc = H.hak_debug_check(m, sizeof m);
        check(rc == HAK_ECHECK && strstr(m, want), m, "overwritten header of %s block %p: hak_debug_check -> HAK_ECHECK naming it",
              i ? "an MMAP" : "a Mid", hs[i]);
        h->magic = saved;
        check_heap("header restored");
    }
    void *a = H.hak_alloc_at(G.tiny_class_sizes[2], 0);
    void *b = H.hak_alloc_at(G.tiny_class_sizes[2], 0);
    H.hak_free_at(a, 0, 0);
    check_heap("one Tiny free");
    H.hak_free_at(a, 0, 0);   /* the deliberate double free */
    char msg[512] = "";
    int rc = H.hak_debug_check(msg, sizeof msg);
    char d[600];
    snprintf(d, sizeof d, "rc=%d msg=\"%s\"", rc, msg);
    check(rc == HAK_ECHECK && msg[0], d, "double free of a Tiny block: hak_debug_check -> HAK_ECHECK (\"%s\")", msg);
    char small[8];
    memset(small, 'x', sizeof small);
    rc = H.hak_debug_check(small, sizeof small);
    CHECK(rc == HAK_ECHECK && memchr(small, '\0', sizeof small), "hak_debug_check truncates its message to cap");
    (void)b;
}

static int find_rec(const hak_reqtrace_rec *r, size_t n, uint32_t op, uint32_t reg, uintptr_t base, uintptr_t addr) {
    for (size_t i = 0; i < n; i++)
        if (r[i].op == op && r[i].reg == reg && (!base || r[i].base == base) && (!addr || r[i].addr == addr))
            return (int)i;
    return -1;
}

static void sc_reqtrace(void) {
    knob("HAKMEM_SUPER_REG_REQTRACE", "1");
    void *p = H.hak_alloc_at(G.tiny_class_sizes[1], 0);
    hak_owner_info o = {0};
    H.hak_owner(p, &o);
    agg_t a = {0};
    hak_free_decision d;
    free_expect(&a, p, 0, "ss_hit", "tiny_free", &d);
    agg_report(&a, "reqtrace: Tiny free takes ss_hit");
    static hak_reqtrace_rec r[256];
    size_t n = H.hak_super_reg_reqtrace_get(p, r, 256);
    if (n > 256) n = 256;
    int ireg = find_rec(r, n, HAK_REQ_REGISTER, HAK_REG_SS, o.region_base, o.region_base);
    int ihit = find_rec(r, n, HAK_REQ_LOOKUP_HIT, HAK_REG_SS, o.region_base, (uintptr_t)p);
    CHECK(ireg >= 0, "reqtrace: register of SuperSlab %#lx recorded (%zu records)", (unsigned long)o.region_base, n);
    CHECK(ihit >= 0 && r[ihit].free_seq == d.seq, "reqtrace: lookup_hit of %p with free_seq %lu recorded", p,
          (unsigned long)d.seq);
    CHECK(ireg >= 0 && ihit > ireg && r[ihit].seq > r[ireg].seq, "reqtrace: records oldest first (register before hit)");
    /* hakmem.h: live = "live blocks in the region at that moment"; the block being freed is live. */
    CHECK(ihit >= 0 && r[ihit].live == 1, "reqtrace: lookup_hit record counts the 1 live block of the region (live=%u)",
          ihit >= 0 ? r[ihit].live : 0u);
    int mono = 1;
    for (size_t i = 1; i < n; i++) mono &= r[i].seq > r[i - 1].seq;
    CHECK(mono && n && r[0].seq >= 1, "reqtrace: seq strictly increasing, 1-based");
    CHECK(H.hak_super_reg_reqtrace_get(p, r, 1) == n, "reqtrace: count returned even when cap is smaller");

    /* A Mid block: the SS lookup misses first. */
    void *m = H.hak_alloc_at(G.mid_max, 0);
    H.hak_free_at(m, 0, 0);
    static hak_reqtrace_rec all[HAK_REQTRACE_RING];
    size_t na = H.hak_super_reg_reqtrace_get(NULL, all, HAK_REQTRACE_RING);
    if (na > HAK_REQTRACE_RING) na = HAK_REQTRACE_RING;
    CHECK(find_rec(all, na, HAK_REQ_LOOKUP_MISS, HAK_REG_SS, 0, (uintptr_t)m) >= 0, "reqtrace: lookup_miss of Mid block %p in the SS registry", m);
    CHECK(find_rec(all, na, HAK_REQ_LOOKUP_HIT, HAK_REG_MID, 0, (uintptr_t)m) >= 0, "reqtrace: lookup_hit of Mid block %p in the Mid registry", m);

    struct capture c;
    char out[8192];
    cap_begin(&c);
    H.hak_super_reg_reqtrace_dump(p);
    cap_end(&c, out, sizeof out);
    CHECK(strstr(out, "register") && strstr(out, "lookup_hit"), "reqtrace: dump(ptr) prints register and lookup_hit");
    H.hak_super_reg_reqtrace_clear();
    CHECK(H.hak_super_reg_reqtrace_get(NULL, all, 4) == 0, "reqtrace: clear empties the ring");
}

/* A memaligned large block is over-mapped: its mapping starts below raw, and class_bytes
 * counts the slack. When a cache hands it out again for a request needing class_bytes, the
 * block at raw must still hold the requested size. */
static void cache_reuse_case(const char *cache, size_t align, const char *route) {
    void *p = H.hak_memalign_at(align, 3u << 20, 0);
    if (!p) { check(0, NULL, "%s: memalign(%zu, 3 MiB)", cache, align); return; }
    size_t cb = hdr_of(p)->class_bytes;
    agg_t a = {0};
    free_expect(&a, p, 0, route, NULL, NULL);
    agg_report(&a, "%s: memalign(%zu, 3 MiB)=%p (class_bytes %zu) freed -> %s", cache, align, p, cb, route);
    size_t s = cb - HAK_HEADER_SIZE;   /* page_up(s + HEADER) == class_bytes: the cached block fits exactly */
    uint8_t *q = H.hak_alloc_at(s, 0);
    hak_owner_info o = {0};
    if (q) H.hak_owner(q, &o);
    size_t us = q ? H.hak_usable_size(q) : 0;
    int mapped = q ? hfd_probe(HFD_PROBE_MAPS, q, s) : 0;
    char d[256];
    snprintf(d, sizeof d, "alloc(%zu)=%p (%s the cached block): usable_size %zu, owner block_size %zu, "
             "[q, q+size) mapped: %d", s, (void *)q, q == p ? "is" : "is not", us, o.block_size, mapped);
    check(q && us >= s && o.block_size >= s && mapped == 1, d,
          "%s: reusing an over-mapped memalign block still gives the requested %zu bytes", cache, s);
    if (q && mapped) { fill(q, s, 5); H.hak_free_at(q, 0, 0); }
}

static void sc_cache_reuse(void) {
    knob("HAKMEM_BATCH_MADVISE", "0");
    knob("HAKMEM_BIGCACHE", "1");
    knob("HAKMEM_WHALE", "0");
    cache_reuse_case("bigcache", 4096, "bigcache");
    knob("HAKMEM_BIGCACHE", "0");
    knob("HAKMEM_WHALE", "1");
    cache_reuse_case("whale", 65536, "mmap_whale");
}

static void sc_early_release(void) {
    knob("HAKMEM_MODE", "direct");
    knob("HAKMEM_SUPER_REG_REQTRACE", "1");
    knob("HAKMEM_HEADER_PROBE", "safe");
    knob("HAKMEM_SS_EARLY_RELEASE", "1");
    uint8_t *a1 = H.hak_alloc_at(64, 0), *b1 = H.hak_alloc_at(64, 0);
    hak_owner_info o = {0};
    H.hak_owner(b1, &o);
    uintptr_t base = o.region_base;
    agg_t a = {0};
    free_expect(&a, a1, 0, "ss_hit", "tiny_free", NULL);
    agg_report(&a, "early release: free of one of two blocks -> ss_hit");
    hak_stats st;
    H.hak_get_stats(&st);
    memset(&o, 0, sizeof o);
    H.hak_owner(b1, &o);
    CHECK(st.superslabs_released_live == 1 && o.kind == HAK_OWNER_NONE && hfd_probe(HFD_PROBE_MAPS, b1, 1) == 0,
          "early release (K=1): SuperSlab %#lx released with its last block live (stats %lu, owner %s)",
          (unsigned long)base, (unsigned long)st.superslabs_released_live, owner_kind_name(o.kind));
    static hak_reqtrace_rec r[64];
    size_t n = H.hak_super_reg_reqtrace_get((void *)base, r, 64);
    int iu = find_rec(r, n > 64 ? 64 : n, HAK_REQ_UNREGISTER, HAK_REG_SS, base, base);
    CHECK(iu >= 0 && r[iu].live == 1, "early release: reqtrace unregister with live=1 (early)");
    char m[512] = "";
    int rc = H.hak_debug_check(m, sizeof m);
    check(rc == HAK_ECHECK && strstr(m, "released"), m, "early release: hak_debug_check reports the release");
    int hdr_readable = hfd_probe(HFD_PROBE_MAPS, b1 - HAK_HEADER_SIZE, HAK_HEADER_SIZE);
    free_expect(&a, b1, 0, hdr_readable ? NULL : "unmapped_header_fallback", NULL, NULL);
    agg_report(&a, "early release, probe safe: free of the orphaned block takes unmapped_header_fallback");
}

/* hak_owner_kind must say what hak_owner says: the kind, and (state LIVE, block_ptr == addr). */
static void kind_agrees(agg_t *a, const void *addr, const char *what) {
    hak_owner_info o;
    memset(&o, 0xAB, sizeof o);
    H.hak_owner(addr, &o);
    uint32_t want = o.kind | (o.state == HAK_BLOCK_LIVE && o.block_ptr == (uintptr_t)addr ? HAK_OWNER_LIVE_BLOCK : 0u);
    uint32_t got = H.hak_owner_kind(addr);
    AGG(a, got == want, "%s %p: hak_owner_kind %#x, hak_owner says %#x (%s, state %u, block %#lx)", what, addr, got, want,
        owner_kind_name(o.kind), o.state, (unsigned long)o.block_ptr);
}

static void sc_owner_kind(void) {
    agg_t a = {0};
    knob("HAKMEM_WHALE", "1");
    size_t sizes[] = {1, 8, 24, 100, 1024, 1025, 4000, 32736, 40000, 600000, 1048544, 1048545, 3 << 20};
    void *p[sizeof sizes / sizeof sizes[0]];
    int n = (int)(sizeof sizes / sizeof sizes[0]);
    for (int i = 0; i < n; i++) {
        p[i] = H.hak_alloc_at(sizes[i], 0);
        uint32_t fresh = H.hak_alloc_owner_kind(p[i]);
        kind_agrees(&a, p[i], "just allocated");   /* the thread's-last-allocation answer */
        AGG(&a, fresh == H.hak_owner_kind(p[i]), "size %zu: hak_alloc_owner_kind %#x, hak_owner_kind %#x", sizes[i], fresh,
            H.hak_owner_kind(p[i]));
    }
    for (int i = 0; i < n; i++) {
        kind_agrees(&a, p[i], "live");
        kind_agrees(&a, (char *)p[i] + 1, "interior");
        kind_agrees(&a, (char *)p[i] - HAK_HEADER_SIZE, "header");
    }
    void *al = H.hak_memalign_at(8192, 5000, 0), *at = H.hak_memalign_at(64, 48, 0);
    kind_agrees(&a, al, "memalign 8192");
    kind_agrees(&a, at, "memalign 64 (tiny)");
    for (int i = 0; i < n; i += 2) H.hak_free_at(p[i], 0, 0);
    for (int i = 0; i < n; i++) kind_agrees(&a, p[i], i % 2 ? "live after frees" : "freed or cached");
    int local = 0;
    kind_agrees(&a, &local, "stack");
    kind_agrees(&a, NULL, "NULL");
    void *r = H.hak_alloc_at(64, 0);
    void *r2 = H.hak_realloc_at(r, 128, 0);
    kind_agrees(&a, r2, "realloc'd");
    kind_agrees(&a, r, "realloc's old block");
    agg_report(&a, "hak_owner_kind agrees with hak_owner: Tiny, Mid, L25, MMAP, cached, interior, header, freed, "
                   "memalign, realloc, stack, NULL; hak_alloc_owner_kind right after each allocation agrees too");

    /* hak_free_owner_kind_at: the owner as it stood before the free, and the same free. */
    for (int i = 1; i < n; i += 2) {
        uint32_t before = H.hak_owner_kind(p[i]);
        hak_free_decision d1, d0;
        int had = H.hak_last_free_decision(&d0) == HAK_OK;
        uint32_t k = H.hak_free_owner_kind_at(p[i], 0, 0);
        int made = H.hak_last_free_decision(&d1) == HAK_OK && (!had || d1.seq == d0.seq + 1) && d1.ptr == (uintptr_t)p[i];
        AGG(&a, k == before && made && (H.hak_owner_kind(p[i]) & HAK_OWNER_LIVE_BLOCK) == 0,
            "size %zu: hak_free_owner_kind_at %#x (before: %#x), decision made %d, live after %#x", sizes[i], k, before,
            made, H.hak_owner_kind(p[i]));
    }
    uint8_t *twice = H.hak_alloc_at(48, 0);
    uint32_t k1 = H.hak_free_owner_kind_at(twice, 0, 0), k2 = H.hak_free_owner_kind_at(twice, 0, 0);
    AGG(&a, k1 == (HAK_OWNER_TINY | HAK_OWNER_LIVE_BLOCK) && k2 == HAK_OWNER_TINY,
        "the block just allocated freed twice: %#x then %#x (live tiny, then freed tiny)", k1, k2);
    agg_report(&a, "hak_free_owner_kind_at: the owner before the free (a second free sees it freed), and the free's "
                   "decision is made");

    /* MALLOC method, and a SuperSlab released under a block this thread just allocated: the
     * last-allocation answer must not outlive the release. */
    knob("HAKMEM_POOL", "0");
    void *m = H.hak_alloc_at(3000, 0);
    kind_agrees(&a, m, "MALLOC method, just allocated");
    kind_agrees(&a, (char *)m + 8, "MALLOC method, interior");
    knob("HAKMEM_SS_EARLY_RELEASE", "1");
    uint8_t *x = H.hak_alloc_at(200, 0), *y = H.hak_alloc_at(200, 0);
    kind_agrees(&a, y, "just allocated, before the early release");
    H.hak_free_at(x, 0, 0);
    hak_owner_info o = {0};
    H.hak_owner(y, &o);
    kind_agrees(&a, y, "just allocated, SuperSlab released by a free since");
    agg_report(&a, "hak_owner_kind agrees with hak_owner: MALLOC method; after an early release (owner %s)",
               owner_kind_name(o.kind));
    AGG(&a, o.kind == HAK_OWNER_NONE, "the early release left %s", owner_kind_name(o.kind));
    agg_report(&a, "early release: the block just allocated has no owner any more");
}

static void sc_drop_ss(void) {
    knob("HAKMEM_MODE", "direct");
    knob("HAKMEM_SUPER_REG_REQTRACE", "1");
    knob("HAKMEM_HEADER_PROBE", "safe");
    knob("HAKMEM_SS_REG_DROP_EVERY", "1");
    uint8_t *p = H.hak_alloc_at(16, 0);
    hak_owner_info o = {0};
    H.hak_owner(p, &o);
    static hak_reqtrace_rec r[64];
    size_t n = H.hak_super_reg_reqtrace_get(p, r, 64);
    CHECK(o.kind == HAK_OWNER_TINY && !o.registered && find_rec(r, n > 64 ? 64 : n, HAK_REQ_DROPPED, HAK_REG_SS, o.region_base, 0) >= 0,
          "SS_REG_DROP_EVERY=1: the SuperSlab is unregistered and reqtrace says dropped");
    char m[512] = "";
    int rc = H.hak_debug_check(m, sizeof m);
    check(rc == HAK_ECHECK && strstr(m, "registry"), m, "dropped registration: hak_debug_check reports the unregistered SuperSlab");
    agg_t a = {0};
    free_expect(&a, p, 0, (uintptr_t)p == o.region_base ? "unmapped_header_fallback" : "invalid_magic_tiny_recovery",
                "tiny_free", NULL);
    agg_report(&a, "dropped registration, probe safe: the escaped block is still freed by tiny_free");
}

/* Allocates Tiny blocks until one lands in an unregistered SuperSlab; returns its first
 * block (at the SuperSlab's base) and a later live block in it whose header position
 * (ptr - HAK_HEADER_SIZE) lies inside the SuperSlab and is not page aligned (so the seed's
 * mincore rejects it with EINVAL). */
static int find_unregistered(uint8_t **first, uint8_t **second) {
    for (int i = 0; i < 400000; i++) {
        int c = i < HAK_TINY_NUM_CLASSES ? i : HAK_TINY_NUM_CLASSES - 1;
        uint8_t *p = H.hak_alloc_at(G.tiny_class_sizes[c], 0);
        hak_owner_info o = {0};
        if (!p || H.hak_owner(p, &o) != HAK_OK || o.kind != HAK_OWNER_TINY) return 0;
        if (o.registered) continue;
        uintptr_t base = o.region_base;
        hak_owner_info f = {0};
        H.hak_owner((void *)base, &f);
        if (f.block_ptr != base || f.state != HAK_BLOCK_LIVE) return 0;
        *first = (uint8_t *)base;
        uint8_t *q = p;
#define LATER_OK(q) ((uintptr_t)(q) >= base + HAK_HEADER_SIZE && ((uintptr_t)(q) - HAK_HEADER_SIZE) % g_page)
        for (int k = 0; !LATER_OK(q) && k < 64; k++) q = H.hak_alloc_at(G.tiny_class_sizes[c], 0);
        hak_owner_info oq = {0};
        H.hak_owner(q, &oq);
        if (oq.region_base != base || oq.registered || !LATER_OK(q)) return 0;
#undef LATER_OK
        *second = q;
        return 1;
    }
    return 0;
}

static void sc_capacity_safe(void) {
    knob("HAKMEM_MODE", "direct");
    knob("HAKMEM_SUPER_REG_REQTRACE", "1");
    knob("HAKMEM_SS_REG_CAPACITY", "1");
    knob("HAKMEM_HEADER_PROBE", "safe");
    uint8_t *first = NULL, *second = NULL;
    int found = find_unregistered(&first, &second);
    CHECK(found, "capacity=1: a Tiny block of a second SuperSlab escapes the registry (first %p, second %p)",
          (void *)first, (void *)second);
    if (!found) return;
    static hak_reqtrace_rec r[64];
    size_t n = H.hak_super_reg_reqtrace_get(first, r, 64);
    if (n > 64) n = 64;
    CHECK(find_rec(r, n, HAK_REQ_CAPACITY_ERROR, HAK_REG_SS, (uintptr_t)first, 0) >= 0,
          "capacity=1: reqtrace records capacity_error for SuperSlab %p", (void *)first);
    fill(second, G.tiny_class_sizes[0], 3);

    uint8_t *blocks[2] = {first, second};
    for (int i = 0; i < 2; i++) {
        uint8_t *p = blocks[i];
        int readable = hfd_probe(HFD_PROBE_MAPS, p - HAK_HEADER_SIZE, HAK_HEADER_SIZE);
        uint32_t want_magic = readable ? hdr_of(p)->magic : 0;
        const char *route = readable ? "invalid_magic_tiny_recovery" : "unmapped_header_fallback";
        struct capture c;
        char out[4096];
        agg_t a = {0};
        hak_free_decision d;
        cap_begin(&c);
        free_expect(&a, p, 0, route, "tiny_free", &d);
        cap_end(&c, out, sizeof out);
        uint32_t lookups = HAK_STAGE_SS | HAK_STAGE_MID | HAK_STAGE_L25;
        AGG(&a, (d.stages_tried & lookups) == lookups && !(d.stages_hit & lookups), "stages tried %#x hit %#x",
            d.stages_tried, d.stages_hit);
        AGG(&a, d.probe_kind == HAK_PROBE_SAFE && d.probe == (readable ? HAK_PROBE_READABLE : HAK_PROBE_UNREADABLE),
            "probe kind %u verdict %d, ground truth %d", d.probe_kind, d.probe, readable);
        if (readable) {
            AGG(&a, (d.stages_tried & HAK_STAGE_MAGIC) && !(d.stages_hit & HAK_STAGE_MAGIC) && d.magic_found == want_magic,
                "magic stage tried/hit %#x/%#x found %#x (memory holds %#x)", d.stages_tried, d.stages_hit,
                d.magic_found, want_magic);
            char expect[128];
            snprintf(expect, sizeof expect, "[hakmem] ERROR: Invalid magic 0x%X (expected 0x%X)", want_magic, HAKMEM_MAGIC);
            AGG(&a, strstr(out, expect) != NULL, "stderr lacks \"%s\"", expect);
        } else {
            AGG(&a, !(d.stages_tried & HAK_STAGE_MAGIC), "magic read although the probe said unreadable");
        }
        agg_report(&a, "capacity=1, probe safe: free of %s block %p (header %s) -> %s / tiny_free",
                   i ? "a later" : "the first", (void *)p, readable ? "readable" : "unmapped", route);
        hak_owner_info o = {0};
        H.hak_owner(p, &o);
        CHECK(o.kind == HAK_OWNER_TINY && o.state == HAK_BLOCK_FREE, "capacity=1: block %p is free afterwards (state %u)",
              (void *)p, o.state);
    }
}

static void sc_seed_mincore(void) {
    knob("HAKMEM_MODE", "direct");
    knob("HAKMEM_SS_REG_CAPACITY", "1");
    knob("HAKMEM_HEADER_PROBE", "seed-mincore");
    uint8_t *first = NULL, *second = NULL;
    if (!find_unregistered(&first, &second)) { check(0, NULL, "seed-mincore: no escaped SuperSlab"); return; }
    /* second - 32 lies inside the SuperSlab (readable) but is not page aligned: the seed's
     * mincore says "unmapped" and the block takes the fallback for the wrong reason. */
    int truth = hfd_probe(HFD_PROBE_MAPS, second - HAK_HEADER_SIZE, HAK_HEADER_SIZE);
    agg_t a = {0};
    hak_free_decision d;
    free_expect(&a, second, 0, "unmapped_header_fallback", "tiny_free", &d);
    AGG(&a, d.probe == HAK_PROBE_UNREADABLE && d.probe_kind == HAK_PROBE_SEED_MINCORE, "probe %d kind %u", d.probe,
        d.probe_kind);
    agg_report(&a, "seed-mincore: readable (truth %d) unaligned header of %p judged unreadable -> fallback", truth,
               (void *)second);
}

static void sc_header_routes(void) {
    agg_t a = {0};
    struct capture c;
    char out[4096];
    hak_free_decision d;
    knob("HAKMEM_MODE", "direct");
    knob("HAKMEM_HEADER_PROBE", "safe");

    /* Mid/L25 registries dropping every registration: the header path dispatches by method. */
    knob("HAKMEM_MID_REG_DROP_EVERY", "1");
    knob("HAKMEM_L25_REG_DROP_EVERY", "1");
    knob("HAKMEM_BIGCACHE_L25", "0");
    void *m = H.hak_alloc_at(G.mid_max, 0);
    void *m2 = H.hak_alloc_at(G.mid_max, 0);
    void *l = H.hak_alloc_at(G.mid_max + 1, 0);
    hak_owner_info om = {0}, ol = {0};
    H.hak_owner(m, &om);
    H.hak_owner(l, &ol);
    CHECK(om.kind == HAK_OWNER_MID && !om.registered && ol.kind == HAK_OWNER_L25 && !ol.registered,
          "drop every registration: Mid and L25 chunks stay unregistered");
    free_expect(&a, m, 0, "pool_hdr", "pool_free", &d);
    AGG(&a, d.method == ALLOC_METHOD_POOL && d.magic_found == HAKMEM_MAGIC && d.probe == HAK_PROBE_READABLE,
        "method %d magic %#x probe %d", d.method, d.magic_found, d.probe);
    agg_report(&a, "unregistered Mid block -> pool_hdr / pool_free");
    free_expect(&a, l, 0, "l25_hdr", "l25_free", &d);
    AGG(&a, d.method == ALLOC_METHOD_L25_POOL, "method %d", d.method);
    agg_report(&a, "unregistered L25 block -> l25_hdr / l25_free");
    knob("HAKMEM_POOL", "0");
    free_expect(&a, m2, 0, "pool_hdr_disabled", "none", NULL);
    agg_report(&a, "POOL block freed with HAKMEM_POOL=0 -> pool_hdr_disabled / none");
    knob("HAKMEM_POOL", "1");

    /* Fake headers in memory of our own. */
    uint8_t *page = mmap(NULL, g_page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint8_t *fp = page + 256;
    AllocHeader *fh = (AllocHeader *)(fp - HAK_HEADER_SIZE);
    *fh = (AllocHeader){HAKMEM_MAGIC, 99, 100, 0, 4096};
    cap_begin(&c);
    free_expect(&a, fp, 0, "unknown_method", "none", &d);
    cap_end(&c, out, sizeof out);
    AGG(&a, d.method == 99, "method %d", d.method);
    AGG(&a, strstr(out, "[hakmem] ERROR: Unknown allocation method: 99") != NULL, "stderr: %s", out);
    agg_report(&a, "header with method 99 -> unknown_method / none, with the seed's error line");

    knob("HAKMEM_MODE", "ldpreload");
    knob("HAKMEM_INVALID_FREE", "1");
    fh->magic = 0xDEADBEEFu;
    cap_begin(&c);
    free_expect(&a, fp, 0, "invalid_magic_skip", "none", &d);
    free_expect(&a, fp, 0, "invalid_magic_skip", "none", NULL);
    cap_end(&c, out, sizeof out);
    AGG(&a, d.magic_found == 0xDEADBEEFu, "magic_found %#x", d.magic_found);
    AGG(&a, strstr(out, "[hakmem] ERROR: Invalid magic 0xDEADBEEF (expected 0x48414B4D)") != NULL, "stderr: %s", out);
    const char *w = strstr(out, "[hakmem] WARNING: Skipping free of invalid pointer");
    AGG(&a, w && !strstr(w + 1, "[hakmem] WARNING: Skipping free"), "skip warning not printed exactly once: %s", out);
    agg_report(&a, "ldpreload mode, bad magic -> invalid_magic_skip / none; error line + one-time warning");

    knob("HAKMEM_INVALID_FREE", "0");
    uint8_t *lp = __libc_malloc(200);
    uint32_t lm = hdr_of(lp)->magic;
    free_expect(&a, lp, 0, "invalid_magic_libc", "libc_free_ptr", &d);
    AGG(&a, d.magic_found == lm && lm != HAKMEM_MAGIC, "magic_found %#x, memory held %#x", d.magic_found, lm);
    agg_report(&a, "invalid-free mode 0, libc block -> invalid_magic_libc / libc_free_ptr");
    knob("HAKMEM_INVALID_FREE", "1");

    /* The log knob silences the invalid-magic line. */
    knob("HAKMEM_INVALID_FREE_LOG", "0");
    cap_begin(&c);
    free_expect(&a, fp, 0, "invalid_magic_skip", "none", NULL);
    cap_end(&c, out, sizeof out);
    AGG(&a, strstr(out, "Invalid magic") == NULL, "stderr: %s", out);
    agg_report(&a, "HAKMEM_INVALID_FREE_LOG=0 silences the invalid-magic line");
    munmap(page, g_page);
}

static void sc_route_trace(void) {
    knob("HAKMEM_FREE_ROUTE_TRACE", "1");
    void *p = H.hak_alloc_at(G.tiny_class_sizes[0], 0);
    struct capture c;
    char out[4096];
    agg_t a = {0};
    hak_free_decision d;
    cap_begin(&c);
    free_expect(&a, p, 0, "ss_hit", "tiny_free", &d);
    cap_end(&c, out, sizeof out);
    char seq[64], ptr[64];
    snprintf(seq, sizeof seq, "seq=%lu", (unsigned long)d.seq);
    snprintf(ptr, sizeof ptr, "%p", p);
    AGG(&a, strstr(out, "ss_hit") && strstr(out, seq) && strstr(out, ptr) && strchr(out, '\n') == strrchr(out, '\n'),
        "route trace output \"%s\" lacks one line with ss_hit, %s, %s", out, seq, ptr);
    agg_report(&a, "HAKMEM_FREE_ROUTE_TRACE=1 prints one line per free with route, seq and ptr");
}

/* ------------------------------------------------------ driver scenarios */

static void sc_driver_api(void) {
    char buf[256];
    CHECK(hfd_abi_version() == HFD_ABI_VERSION, "hfd_abi_version() == %u", HFD_ABI_VERSION);
    CHECK(hfd_binding() == HFD_BOUND_HAKMEM, "inherited binding is HAKMEM");
    size_t need = hfd_missing_symbols(buf, sizeof buf);
    CHECK(need == 0 && buf[0] == '\0', "hakmem-ref has every optional symbol (missing: \"%s\")", buf);

    CHECK(hfd_bind_library("/nonexistent/libnope.so") == HFD_EDLOPEN && strstr(hfd_last_error(), "/nonexistent/libnope.so"),
          "bind to a missing file -> HFD_EDLOPEN naming it (\"%s\")", hfd_last_error());
    CHECK(hfd_bind_library("libc.so.6") == HFD_ENOSYM && strstr(hfd_last_error(), "hak_alloc_at"),
          "bind to libc.so.6 -> HFD_ENOSYM naming hak_alloc_at (\"%s\")", hfd_last_error());
    CHECK(hfd_bind_library(NULL) == HFD_EINVAL, "bind to NULL path -> HFD_EINVAL");
    CHECK(hfd_binding() == HFD_BOUND_HAKMEM, "failed binds leave the binding alone");

    CHECK(hfd_bind_libc() == HFD_OK && hfd_binding() == HFD_BOUND_LIBC, "hfd_bind_libc");
    need = hfd_missing_symbols(buf, sizeof buf);
    CHECK(need == strlen(buf) && strstr(buf, "hak_debug_free_state") && strstr(buf, "hak_owner\n"),
          "libc binding lacks the hak_ introspection symbols");
    char tiny[6];
    CHECK(hfd_missing_symbols(tiny, sizeof tiny) == need && strlen(tiny) == sizeof tiny - 1,
          "hfd_missing_symbols truncates but returns the length needed");
    void *p = hfd_alloc(100, 0);
    CHECK(p != NULL, "hfd_alloc through libc");
    memset(p, 1, 100);
    hfd_free(p, 100, 0);

    hfd_vtable t;
    memset(&t, 0, sizeof t);
    t.alloc = H.hak_alloc_at;
    CHECK(hfd_bind_table(NULL) == HFD_EINVAL, "hfd_bind_table(NULL) -> HFD_EINVAL");
    CHECK(hfd_bind_table(&t) < 0 && hfd_binding() == HFD_BOUND_LIBC, "table without free is refused");
    t.free = H.hak_free_at;
    t.last_free_decision = (int (*)(void *))H.hak_last_free_decision;
    CHECK(hfd_bind_table(&t) == HFD_OK && hfd_binding() == HFD_BOUND_TABLE, "hfd_bind_table");
    need = hfd_missing_symbols(buf, sizeof buf);
    CHECK(strstr(buf, "hak_calloc_at") && !strstr(buf, "hak_last_free_decision"), "table binding: missing \"%s\"", buf);

    CHECK(hfd_bind_library(g_lib_path) == HFD_OK && hfd_binding() == HFD_BOUND_HAKMEM, "rebind to %s", g_lib_path);
    p = hfd_alloc(G.tiny_class_sizes[0], 0x42);
    hak_owner_info o = {0};
    H.hak_owner(p, &o);
    CHECK(o.kind == HAK_OWNER_TINY, "hfd_alloc reaches the allocator (Tiny block %p)", p);
    hfd_free(p, 0, 0);
    hak_free_decision d;
    H.hak_last_free_decision(&d);
    CHECK(d.ptr == (uintptr_t)p && d.route == HAK_ROUTE_SS_HIT, "hfd_free reaches the allocator (route %s)", route_s(d.route));
    CHECK(hfd_install_crash_handler(NULL) == HFD_EINVAL, "hfd_install_crash_handler(NULL) -> HFD_EINVAL");

    /* Install replaces the SIGSEGV action and an alternate stack; uninstall restores both. */
    struct sigaction before, during, after;
    stack_t ss_before, ss_during, ss_after;
    sigaction(SIGSEGV, NULL, &before);
    sigaltstack(NULL, &ss_before);
    hfd_crash_record *rec = mmap(NULL, sizeof *rec, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(hfd_install_crash_handler(rec) == HFD_OK, "hfd_install_crash_handler");
    sigaction(SIGSEGV, NULL, &during);
    sigaltstack(NULL, &ss_during);
    CHECK((during.sa_flags & SA_SIGINFO) && (during.sa_flags & SA_ONSTACK) && during.sa_sigaction != before.sa_sigaction &&
              ss_during.ss_size >= 65536 && !(ss_during.ss_flags & SS_DISABLE),
          "handler is SA_SIGINFO|SA_ONSTACK on a %zu-byte alternate stack", ss_during.ss_size);
    hfd_uninstall_crash_handler();
    sigaction(SIGSEGV, NULL, &after);
    sigaltstack(NULL, &ss_after);
    /* glibc adds SA_RESTORER to whatever it installs; it is not part of the caller's action. */
    int mask = ~0x04000000;
    CHECK(after.sa_sigaction == before.sa_sigaction && (after.sa_flags & mask) == (before.sa_flags & mask) &&
              ss_after.ss_sp == ss_before.ss_sp && (ss_after.ss_flags & SS_DISABLE) == (ss_before.ss_flags & SS_DISABLE),
          "hfd_uninstall_crash_handler restores the previous action and stack");
    munmap(rec, sizeof *rec);
}

static void sc_probes(void) {
    size_t ps = g_page;
    uint8_t *base = mmap(NULL, 5 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    /* A rw | B r (a separate mapping, adjacent) | C unmapped | D PROT_NONE | E rw */
    uint8_t *A = base, *B = base + ps, *C = base + 2 * ps, *D = base + 3 * ps, *E = base + 4 * ps;
    mprotect(B, ps, PROT_READ);
    munmap(C, ps);
    mprotect(D, ps, PROT_NONE);
    struct pcase {
        const char *name;
        const uint8_t *addr;
        size_t len;
        int truth, prot_none, aligned, unmapped;
    } pc[] = {
        {"mapped aligned", A, 1, 1, 0, 1, 0},
        {"mapped unaligned (page+8)", A + 8, 32, 1, 0, 0, 0},
        {"read-only aligned", B, 32, 1, 0, 1, 0},
        {"unmapped aligned", C, 1, 0, 0, 1, 1},
        {"unmapped unaligned (page+8)", C + 8, 32, 0, 0, 0, 1},
        {"PROT_NONE aligned", D, 1, 0, 1, 1, 0},
        {"PROT_NONE unaligned (page+8)", D + 8, 32, 0, 1, 0, 0},
        {"straddle rw|r adjacent mappings", B - 8, 16, 1, 0, 0, 0},
        {"straddle mapped|unmapped", C - 8, 16, 0, 0, 0, 0},
        {"straddle PROT_NONE|rw", E - 8, 16, 0, 1, 0, 0},
        {"two whole pages A+B", A, 2 * ps, 1, 0, 1, 0},
    };
    enum { NC = sizeof pc / sizeof pc[0] };
    int v[NC][6];
    static const int kinds[6] = {HAK_PROBE_OFF, HAK_PROBE_SEED_MINCORE, HAK_PROBE_SEED_MSYNC, HAK_PROBE_MINCORE,
                                 HAK_PROBE_SAFE, HFD_PROBE_MAPS};
    /* Measure everything before printing anything: output may allocate and map memory into C. */
    for (int i = 0; i < NC; i++)
        for (int k = 0; k < 6; k++) v[i][k] = hfd_probe(kinds[k], pc[i].addr, pc[i].len);
    for (int i = 0; i < NC; i++) {
        const struct pcase *c = &pc[i];
        char d[200];
        snprintf(d, sizeof d, "off=%d seed-mincore=%d seed-msync=%d mincore=%d safe=%d maps=%d", v[i][0], v[i][1],
                 v[i][2], v[i][3], v[i][4], v[i][5]);
        check(v[i][5] == c->truth, d, "probe %s: ground truth (maps) says %d", c->name, c->truth);
        check(v[i][4] == c->truth, d, "probe %s: safe agrees with ground truth", c->name);
        int want_mc = c->prot_none ? 1 : c->truth;
        check(v[i][3] == want_mc, d, "probe %s: mincore says %d%s", c->name, want_mc,
              c->prot_none ? " (PROT_NONE is resident, not readable)" : "");
        check(v[i][0] == 1, d, "probe %s: off always says 1", c->name);
        if (!c->aligned) check(v[i][1] == 0, d, "probe %s: seed-mincore says 0 for an unaligned address", c->name);
        else check(v[i][1] == (c->unmapped ? 0 : 1), d, "probe %s: seed-mincore on an aligned address", c->name);
        if (!c->aligned) check(v[i][2] == 0, d, "probe %s: seed-msync says 0 (EINVAL) for an unaligned address", c->name);
        if (c->aligned && c->unmapped)
            check(v[i][2] == 1, d, "probe %s: seed-msync says 1 for an unmapped page (inverted ENOMEM)", c->name);
        if (c->aligned && !c->unmapped && !c->prot_none)
            check(v[i][2] == 1, d, "probe %s: seed-msync says 1 for a mapped page", c->name);
    }
    CHECK(hfd_probe(7, A, 1) == HFD_EINVAL && strstr(hfd_last_error(), "7"), "hfd_probe(unknown kind 7) -> HFD_EINVAL");
    CHECK(hfd_probe(-1, A, 1) == HFD_EINVAL, "hfd_probe(kind -1) -> HFD_EINVAL");
    uint64_t cyc = 0;
    uint64_t ns = hfd_probe_time(HAK_PROBE_SAFE, A, 32, 1000, &cyc);
#if defined(__x86_64__)
    int cyc_ok = cyc > 0;
#else
    int cyc_ok = cyc == 0;   /* no TSC */
#endif
    CHECK(ns > 0 && cyc_ok, "hfd_probe_time(safe, 1000 calls): %lu ns, %lu cycles", (unsigned long)ns, (unsigned long)cyc);
    CHECK(hfd_probe_time(HFD_PROBE_MAPS, C, 1, 10, NULL) > 0, "hfd_probe_time works without a cycles pointer");
    CHECK(hfd_probe_time(55, A, 1, 10, &cyc) == 0 && cyc == 0, "hfd_probe_time(unknown kind) -> 0");
    munmap(A, 2 * ps);
    munmap(D, 2 * ps);
}

/* ---------------------------------------------------------- crash children */

struct crash_shared {
    hfd_crash_record rec;
    uintptr_t ptr;
    uint64_t tid;
    uint64_t prev_seq;
    int header_unreadable;
    int reached_free;
};

typedef void (*crash_fn)(struct crash_shared *sh, const char *arg);

/* Runs fn in a child whose stderr goes to a pipe; returns the wait status and the text. */
static int run_crash_child(crash_fn fn, const char *arg, struct crash_shared *sh, char *err, size_t errcap) {
    memset(sh, 0, sizeof *sh);
    int fds[2];
    if (pipe(fds) != 0) return -1;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        close(fds[1]);
        fn(sh, arg);
        _exit(3);   /* not reached when the crash happens */
    }
    close(fds[1]);
    size_t n = 0;
    for (;;) {
        char tmp[4096];
        ssize_t r = read(fds[0], tmp, sizeof tmp);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        for (ssize_t i = 0; i < r && n + 1 < errcap; i++) err[n++] = tmp[i];
    }
    err[n] = '\0';
    close(fds[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    fputs(err, stderr);
    return st;
}

static void crash_unregistered_first(struct crash_shared *sh, const char *probe) {
    H.hak_set_knob("HAKMEM_MODE", "direct");
    H.hak_set_knob("HAKMEM_SS_REG_CAPACITY", "1");
    H.hak_set_knob("HAKMEM_HEADER_PROBE", probe);
    if (strcmp(probe, "mincore") == 0) H.hak_set_knob("HAKMEM_SS_GUARD", "protnone");
    uint8_t *first = NULL, *second = NULL;
    if (!find_unregistered(&first, &second)) _exit(4);
    hak_free_decision d = {0};
    H.hak_free_at(second, 0, 0);   /* header inside the SuperSlab: recovered, no crash */
    H.hak_last_free_decision(&d);
    sh->prev_seq = d.seq;
    sh->ptr = (uintptr_t)first;
    sh->tid = (uint64_t)my_tid();
    sh->header_unreadable = hfd_probe(HFD_PROBE_MAPS, first - HAK_HEADER_SIZE, HAK_HEADER_SIZE) == 0;
    hfd_set_event_index(4242);
    if (hfd_install_crash_handler(&sh->rec) != HFD_OK) _exit(5);
    sh->reached_free = 1;
    H.hak_free_at(first, 0, 0);
}

static void crash_abort_libc(struct crash_shared *sh, const char *arg) {
    (void)arg;
    hfd_bind_libc();
    sh->tid = (uint64_t)my_tid();
    if (hfd_install_crash_handler(&sh->rec) != HFD_OK) _exit(5);
    sh->reached_free = 1;
    abort();
}

static void sc_crash_segv(const char *probe, int want_code) {
    struct crash_shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    static char err[1 << 16];
    int st = run_crash_child(crash_unregistered_first, probe, sh, err, sizeof err);
    const hfd_crash_record *r = &sh->rec;
    char d[300];
    snprintf(d, sizeof d, "status %#x (exited %d code %d, signaled %d sig %d), reached free %d", st, WIFEXITED(st),
             WIFEXITED(st) ? WEXITSTATUS(st) : -1, WIFSIGNALED(st), WIFSIGNALED(st) ? WTERMSIG(st) : -1,
             sh->reached_free);
    check(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV, d,
          "crash (probe %s): free of the first block of an unregistered SuperSlab kills the child with SIGSEGV", probe);
    CHECK(sh->header_unreadable, "crash (probe %s): its header at ptr-%u was unreadable (ground truth)", probe,
          HAK_HEADER_SIZE);
    CHECK(r->magic == HFD_CRASH_MAGIC && r->version == HFD_ABI_VERSION && r->signo == SIGSEGV,
          "crash (probe %s): record complete (magic %#x, signo %d)", probe, r->magic, r->signo);
    CHECK(r->si_code == want_code, "crash (probe %s): si_code %d (%s), got %d", probe, want_code,
          want_code == SEGV_MAPERR ? "SEGV_MAPERR" : "SEGV_ACCERR", r->si_code);
    CHECK(sh->ptr && r->fault_addr == sh->ptr - HAK_HEADER_SIZE, "crash (probe %s): fault_addr %#lx == ptr - %u (%#lx)",
          probe, (unsigned long)r->fault_addr, HAK_HEADER_SIZE, (unsigned long)(sh->ptr - HAK_HEADER_SIZE));
    CHECK(r->has_state == 1 && r->ptr == sh->ptr, "crash (probe %s): record ptr %#lx is the pointer being freed", probe,
          (unsigned long)r->ptr);
    CHECK(r->stage == HAK_AT_MAGIC_READ && strcmp(r->stage_name, "magic_read") == 0,
          "crash (probe %s): stage %u \"%s\" is magic_read", probe, r->stage, r->stage_name);
    CHECK(r->free_seq == sh->prev_seq + 1, "crash (probe %s): free_seq %lu follows the last finished free %lu", probe,
          (unsigned long)r->free_seq, (unsigned long)sh->prev_seq);
    CHECK(r->event_index == 4242 && r->tid == sh->tid, "crash (probe %s): event_index %lu, tid %lu", probe,
          (unsigned long)r->event_index, (unsigned long)r->tid);
    CHECK(r->maps_len > 100 && r->maps_len <= HFD_CRASH_MAPS_MAX && memmem(r->maps, r->maps_len, "libhfdriver", 11) &&
              memmem(r->maps, r->maps_len, "[stack]", 7),
          "crash (probe %s): /proc/self/maps copied (%u bytes, truncated %u)", probe, r->maps_len, r->maps_truncated);
    char line[200];
    snprintf(line, sizeof line, "[hakmem] CRASH: SIGSEGV fault=0x%lx ptr=0x%lx stage=magic_read event=4242\n",
             (unsigned long)(sh->ptr - HAK_HEADER_SIZE), (unsigned long)sh->ptr);
    check(strstr(err, line) != NULL, line, "crash (probe %s): stderr has the one-line crash report", probe);
    munmap(sh, sizeof *sh);
}

static void sc_crash_abort(void) {
    struct crash_shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    static char err[1 << 16];
    int st = run_crash_child(crash_abort_libc, NULL, sh, err, sizeof err);
    const hfd_crash_record *r = &sh->rec;
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT, "abort under the libc binding kills the child with SIGABRT");
    CHECK(r->magic == HFD_CRASH_MAGIC && r->signo == SIGABRT && r->fault_addr == 0 && r->tid == sh->tid,
          "abort: record signo %d fault %#lx", r->signo, (unsigned long)r->fault_addr);
    CHECK(r->has_state == 0 && r->ptr == 0 && r->stage == 0xffffffffu && strcmp(r->stage_name, "unknown") == 0 &&
              r->event_index == UINT64_MAX,
          "abort: no allocator state: stage %#x \"%s\", event %lu", r->stage, r->stage_name, (unsigned long)r->event_index);
    const char *line = "[hakmem] CRASH: SIGABRT fault=0x0 ptr=0x0 stage=unknown event=-\n";
    check(strstr(err, line) != NULL, err, "abort: stderr has \"%.*s\"", (int)strlen(line) - 1, line);
    munmap(sh, sizeof *sh);
}

/* --------------------------------------------------------------- runner */

static void run_scenario(const char *name, void (*fn)(void)) {
    printf("# %s\n", name);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        g_nblks = 0;
        fn();
        fflush(stdout);
        fflush(stderr);
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
        char d[100];
        snprintf(d, sizeof d, "status %#x (signal %d)", st, WIFSIGNALED(st) ? WTERMSIG(st) : 0);
        check(0, d, "scenario %s ran to completion", name);
    }
}

static void sc_crash_off(void) { sc_crash_segv("off", SEGV_MAPERR); }
static void sc_crash_mincore_protnone(void) { sc_crash_segv("mincore", SEGV_ACCERR); }

static int resolve(void *lib) {
    int missing = 0;
#define RES(n)                                                                 \
    do {                                                                       \
        H.n = (__typeof__(H.n))dlsym(lib, #n);                                 \
        if (!H.n) { printf("FAIL dlsym(%s): %s\n", #n, dlerror()); missing++; } \
    } while (0)
    RES(hak_init); RES(hak_abi_version); RES(hak_alloc_at); RES(hak_free_at); RES(hak_calloc_at);
    RES(hak_realloc_at); RES(hak_memalign_at); RES(hak_usable_size); RES(hak_tiny_free); RES(hak_set_knob);
    RES(hak_get_knob); RES(hak_knob_names); RES(hak_last_error); RES(hak_get_geometry);
    RES(hak_last_free_decision); RES(hak_route_ring_get); RES(hak_route_ring_clear); RES(hak_route_name);
    RES(hak_action_name); RES(hak_stage_name); RES(hak_probe_name); RES(hak_reqtrace_op_name); RES(hak_owner);
    RES(hak_owner_kind);
    RES(hak_alloc_owner_kind);
    RES(hak_free_owner_kind_at);
    RES(hak_debug_free_state); RES(hak_get_stats); RES(hak_debug_check); RES(hak_super_reg_reqtrace_dump);
    RES(hak_super_reg_reqtrace_get); RES(hak_super_reg_reqtrace_clear);
#undef RES
    H.abi_version_const = dlsym(lib, "hak_abi_version_const");
    H.header_size_const = dlsym(lib, "hak_header_size_const");
    H.magic_const = dlsym(lib, "hak_magic_const");
    H.superslab_size_const = dlsym(lib, "hak_superslab_size_const");
    H.tiny_class_sizes_const = dlsym(lib, "hak_tiny_class_sizes_const");
    H.build_release_const = dlsym(lib, "hak_build_release_const");
    return missing;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    R = mmap(NULL, sizeof *R, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    g_page = (size_t)sysconf(_SC_PAGESIZE);
    g_lib_path = getenv("HAKMEM_LIB");
    if (!g_lib_path || !*g_lib_path) {
        printf("FAIL HAKMEM_LIB is not set\n0 passed, 1 failed\n");
        return 1;
    }
    void *lib = dlopen(g_lib_path, RTLD_NOW | RTLD_LOCAL);
    check(lib != NULL, dlerror(), "dlopen(%s)", g_lib_path);
    if (!lib) { printf("%d passed, %d failed\n", R->passed, R->failed); return 1; }
    int missing = resolve(lib);
    check(missing == 0, NULL, "every hak_* function of hakmem.h resolves (%d missing)", missing);
    if (missing) { printf("%d passed, %d failed\n", R->passed, R->failed); return 1; }

    /* The driver before any binding. */
    CHECK(hfd_binding() == HFD_BOUND_NONE, "driver starts unbound");
    CHECK(hfd_alloc(16, 0) == NULL && strstr(hfd_last_error(), "bound"), "hfd_alloc unbound -> NULL (\"%s\")",
          hfd_last_error());
    int rc = hfd_bind_library(g_lib_path);
    check(rc == HFD_OK, hfd_last_error(), "hfd_bind_library(%s)", g_lib_path);
    if (rc != HFD_OK) { printf("%d passed, %d failed\n", R->passed, R->failed); return 1; }

    /* Geometry does not depend on knobs; reading it initialises nothing the children need fresh. */
    H.hak_get_geometry(&G);

    run_scenario("names", sc_names);
    run_scenario("geometry and knobs", sc_geometry_knobs);
    run_scenario("driver api", sc_driver_api);
    run_scenario("driver probes", sc_probes);
    run_scenario("tiny", sc_tiny);
    run_scenario("mid", sc_mid);
    run_scenario("l25", sc_l25);
    run_scenario("boundaries", sc_boundaries);
    run_scenario("mmap bigcache", sc_mmap_bigcache);
    run_scenario("mmap bigcache_l25", sc_mmap_bigcache_l25);
    run_scenario("mmap batch", sc_mmap_batch);
    run_scenario("mmap whale", sc_mmap_whale);
    run_scenario("mmap munmap", sc_mmap_munmap);
    run_scenario("malloc method", sc_malloc_method);
    run_scenario("memalign", sc_memalign);
    run_scenario("calloc", sc_calloc);
    run_scenario("realloc", sc_realloc);
    run_scenario("header routes", sc_header_routes);
    run_scenario("route trace", sc_route_trace);
    run_scenario("debug check", sc_debug_check);
    run_scenario("reqtrace", sc_reqtrace);
    run_scenario("cache reuse of memalign blocks", sc_cache_reuse);
    run_scenario("SuperSlab early release", sc_early_release);
    run_scenario("owner kind", sc_owner_kind);
    run_scenario("SuperSlab registration dropped", sc_drop_ss);
    run_scenario("capacity fault, probe safe", sc_capacity_safe);
    run_scenario("capacity fault, probe seed-mincore", sc_seed_mincore);
    run_scenario("crash, probe off", sc_crash_off);
    run_scenario("crash, probe mincore, PROT_NONE guard", sc_crash_mincore_protnone);
    run_scenario("crash, abort under libc", sc_crash_abort);

    printf("%d passed, %d failed\n", R->passed, R->failed);
    return R->failed ? 1 : 0;
}
