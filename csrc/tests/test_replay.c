/* test_replay.c - the native replay (hfreplay.c, hftrace.h) and the hfreplay executable,
 * driven against an allocator with the hakmem ABI (HAKMEM_LIB) and against libc.
 *
 * Traces are built in memory (and written to temporary files for the executable). Every
 * replay runs in a fork()ed child, so it starts from an untouched allocator, may set knobs
 * "before first use" and may crash; results come back through MAP_SHARED memory or the
 * result file. Prints one line per check and finally "N passed, M failed"; exit status 1
 * if anything failed.
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
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hakmem.h"
#include "hfdriver.h"
#include "hftrace.h"

/* ---------------------------------------------------------------- the ABI */

#define API_FN(n) __typeof__(&n) n
static struct {
    API_FN(hak_alloc_at);
    API_FN(hak_free_at);
    API_FN(hak_set_knob);
    API_FN(hak_last_error);
    API_FN(hak_get_geometry);
    API_FN(hak_route_ring_get);
    API_FN(hak_route_name);
    API_FN(hak_action_name);
    API_FN(hak_get_stats);
} H;

static const char *g_lib_path;
static char g_exe[4096];     /* the hfreplay next to this test */
static hak_geometry G;
/* free_raw's target: readable memory nobody allocated, at the same address in every child. */
static char g_wild[256] __attribute__((aligned(64)));

/* ----------------------------------------------------------------- checks */

struct results {
    int passed, failed;
};
static struct results *R;

static void check(int ok, const char *detail, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void check(int ok, const char *detail, const char *fmt, ...) {
    char msg[600];
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

typedef struct {
    int bad;
    char why[500];
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
    char msg[500], detail[560];
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
static const char *const k_outcomes[HFR_OUT_COUNT] = {"none", "correct", "misrouted", "leaked", "invalid_magic",
                                                      "crashed", "detected_invalid"};
static const char *out_s(uint32_t o) { return o < HFR_OUT_COUNT ? k_outcomes[o] : "?"; }

/* ---------------------------------------------------------- trace builder */

typedef struct tb {
    char text[1024];
    hft_record *r;
    size_t n, cap;
    uint32_t nobj;
    void *buf;     /* built: header, text, padding, records */
    size_t len;
} tb;

static void tb_init(tb *t, const char *text) {
    memset(t, 0, sizeof *t);
    snprintf(t->text, sizeof t->text, "%s", text ? text : "# hakmem-trace v1\n");
}

static size_t tb_add(tb *t, uint8_t op, uint32_t tid, uint32_t obj, uint32_t obj2, uint64_t size, int64_t arg, uint64_t value) {
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 64;
        t->r = realloc(t->r, t->cap * sizeof *t->r);
    }
    hft_record *r = &t->r[t->n];
    memset(r, 0, sizeof *r);
    r->op = op;
    r->tid = tid;
    r->obj = obj;
    r->obj2 = obj2;
    r->size = size;
    r->arg = arg;
    r->value = value;
    r->site = 0x401000u + (uint64_t)t->n * 16u;
    if (obj > t->nobj) t->nobj = obj;
    if (obj2 > t->nobj) t->nobj = obj2;
    return t->n++;
}

#define MALLOC(t, tid, o, sz) tb_add((t), HFT_OP_MALLOC, (tid), (o), 0, (sz), 0, 0)
#define CALLOC(t, tid, o, nm, sz) tb_add((t), HFT_OP_CALLOC, (tid), (o), 0, (sz), (nm), 0)
#define REALLOC(t, tid, nw, old, sz) tb_add((t), HFT_OP_REALLOC, (tid), (nw), (old), (sz), 0, 0)
#define MEMALIGN(t, tid, o, al, sz) tb_add((t), HFT_OP_MEMALIGN, (tid), (o), 0, (sz), (al), 0)
#define FREE(t, tid, o) tb_add((t), HFT_OP_FREE, (tid), (o), 0, 0, 0, 0)
#define THREAD_END(t, tid) tb_add((t), HFT_OP_THREAD_END, (tid), 0, 0, 0, 0, 0)
#define FREE_INTERIOR(t, tid, o, off) tb_add((t), HFT_OP_FREE_INTERIOR, (tid), (o), 0, 0, (off), 0)
#define DOUBLE_FREE(t, tid, o) tb_add((t), HFT_OP_DOUBLE_FREE, (tid), (o), 0, 0, 0, 0)
#define FREE_RAW(t, tid, addr) tb_add((t), HFT_OP_FREE_RAW, (tid), 0, 0, 0, (int64_t)(addr), 0)
#define LIBC_MALLOC(t, tid, o, sz) tb_add((t), HFT_OP_LIBC_MALLOC, (tid), (o), 0, (sz), 0, 0)
#define FREE_LIBC(t, tid, o) tb_add((t), HFT_OP_FREE_LIBC, (tid), (o), 0, 0, 0, 0)
#define CORRUPT(t, tid, o, off, len, val) tb_add((t), HFT_OP_CORRUPT, (tid), (o), 0, (len), (off), (val))

static uint64_t tb_records_offset(const tb *t) { return (sizeof(hft_header) + strlen(t->text) + 7) & ~(uint64_t)7; }

static void tb_build(tb *t) {
    size_t tl = strlen(t->text);
    uint64_t off = tb_records_offset(t);
    t->len = off + t->n * sizeof(hft_record);
    free(t->buf);
    t->buf = calloc(1, t->len);   /* malloc alignment: at least 8 */
    hft_header *h = t->buf;
    memcpy(h->magic, HFT_MAGIC, 8);
    h->version = HFT_VERSION;
    h->record_size = sizeof(hft_record);
    h->num_events = t->n;
    h->num_objects = t->nobj;
    uint32_t tids[64];
    uint32_t nt = 0;
    for (size_t i = 0; i < t->n; i++) {
        uint32_t k = 0;
        while (k < nt && tids[k] != t->r[i].tid) k++;
        if (k == nt && nt < 64) tids[nt++] = t->r[i].tid;
    }
    h->num_threads = nt;
    h->records_offset = off;
    h->text_len = (uint32_t)tl;
    memcpy((char *)t->buf + sizeof *h, t->text, tl);
    memcpy((char *)t->buf + off, t->r, t->n * sizeof(hft_record));
}

static const hft_record *tb_recs(const tb *t) { return (const hft_record *)((const char *)t->buf + tb_records_offset(t)); }

static void tb_free(tb *t) {
    free(t->r);
    free(t->buf);
    memset(t, 0, sizeof *t);
}

static int tb_write(tb *t, char *path, size_t cap) {
    tb_build(t);
    const char *dir = getenv("TMPDIR");
    snprintf(path, cap, "%s/hfreplay-test-XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0) return -1;
    ssize_t w = write(fd, t->buf, t->len);
    close(fd);
    return w == (ssize_t)t->len ? 0 : -1;
}

/* ---------------------------------------------------------- replay children */

typedef struct child_info {
    int rc;                 /* hfd_replay / first failing hfd_step */
    char err[512];          /* hfd_last_error() after it */
    uint64_t step_fail_index;
    char step_check_msg[256];
    int n_os_tids;          /* distinct tids among the route ring's free decisions */
    int main_tid_freed;     /* the replay's calling thread made one of those decisions */
    uint64_t allocs_before_fail;
} child_info;

typedef struct replay_run {
    hfr_header *res;        /* MAP_SHARED, followed by the events */
    hfr_event *ev;
    child_info *ci;
    size_t size;
    int status;             /* wait status of the child */
} replay_run;

enum { MODE_REPLAY = 0, MODE_STEP = 1, MODE_REPLAY_ZEROED = 2 };
enum { BIND_LIB = 0, BIND_LIBC = 1, BIND_TABLE_MIN = 2 };

static void run_free(replay_run *rr) {
    if (rr->res) munmap(rr->res, rr->size);
    memset(rr, 0, sizeof *rr);
}

/* Maps the shared result area for a replay of t. Replays whose pointers are compared must
 * all be prepared before the first of them forks: the parent's address space is the
 * children's, and one more mapping in it moves where the allocator's mmaps land. */
static void run_prepare(tb *t, replay_run *rr) {
    tb_build(t);
    memset(rr, 0, sizeof *rr);
    rr->size = sizeof(hfr_header) + t->n * sizeof(hfr_event) + sizeof(child_info);
    rr->res = mmap(NULL, rr->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    rr->ev = (hfr_event *)(rr->res + 1);
    rr->ci = (child_info *)(rr->ev + t->n);
}

/* Replays t in a fresh child: knobs ("NAME=VALUE", NULL-terminated) first, then the binding,
 * then hfd_replay (or hfd_step per event). Prepares rr unless run_prepare did. */
static void run_child(tb *t, const char *const *knobs, int bind, int mode, const hfr_options *o, replay_run *rr) {
    if (!rr->res) run_prepare(t, rr);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(60);   /* a deadlocked threaded replay dies with SIGALRM instead of hanging the suite */
        child_info *ci = rr->ci;
        for (const char *const *k = knobs; k && *k; k++) {
            char name[128];
            const char *eq = strchr(*k, '=');
            snprintf(name, sizeof name, "%.*s", (int)(eq - *k), *k);
            if (H.hak_set_knob(name, eq + 1) != HAK_OK) {
                fprintf(stderr, "knob %s: %s\n", *k, H.hak_last_error());
                _exit(7);
            }
        }
        if (bind == BIND_LIBC) {
            hfd_bind_libc();
        } else if (bind == BIND_TABLE_MIN) {
            hfd_vtable vt;
            memset(&vt, 0, sizeof vt);
            vt.alloc = H.hak_alloc_at;
            vt.free = H.hak_free_at;
            hfd_bind_table(&vt);
        }
        hak_stats st0;
        H.hak_get_stats(&st0);
        if (mode == MODE_REPLAY || mode == MODE_REPLAY_ZEROED) {
            /* run_prepare's fresh mapping is all zero, and the trace is not written to after
             * tb_build: what HFD_REPLAY_ZEROED and HFD_REPLAY_VALIDATED ask of their caller */
            if (mode == MODE_REPLAY) ci->rc = hfd_replay(t->buf, t->len, rr->res, rr->ev, o);
            else if (hfd_trace_validate(t->buf, t->len) != HFD_OK) ci->rc = -100;
            else ci->rc = hfd_replay_ex(t->buf, t->len, rr->res, rr->ev, o, HFD_REPLAY_ZEROED | HFD_REPLAY_VALIDATED);
            snprintf(ci->err, sizeof ci->err, "%s", hfd_last_error());
        } else {
            hfd_step_options(o);
            ci->rc = hfd_step_reset(t->nobj);
            ci->step_fail_index = UINT64_MAX;
            const hft_record *recs = tb_recs(t);
            for (size_t i = 0; ci->rc == HFD_OK && i < t->n; i++) {
                ci->rc = hfd_step(&recs[i], i, &rr->ev[i]);
                if (ci->rc != HFD_OK) ci->step_fail_index = i;
                else if (rr->ev[i].check_failed)
                    snprintf(ci->step_check_msg, sizeof ci->step_check_msg, "%s", hfd_last_error());
            }
            snprintf(ci->err, sizeof ci->err, "%s", hfd_last_error());
        }
        hak_stats st1;
        H.hak_get_stats(&st1);
        ci->allocs_before_fail = st1.allocs - st0.allocs;
        static hak_free_decision ring[HAK_ROUTE_RING];
        size_t nr = H.hak_route_ring_get(ring, HAK_ROUTE_RING);
        uint64_t seen[64];
        int ns = 0;
        uint64_t me = (uint64_t)syscall(SYS_gettid);
        for (size_t i = 0; i < nr; i++) {
            if (ring[i].tid == me) ci->main_tid_freed = 1;
            int k = 0;
            while (k < ns && seen[k] != ring[i].tid) k++;
            if (k == ns && ns < 64) seen[ns++] = ring[i].tid;
        }
        ci->n_os_tids = ns;
        fflush(stdout);
        fflush(stderr);
        _exit(0);
    }
    waitpid(pid, &rr->status, 0);
}

static int child_ok(const replay_run *rr, const char *what) {
    char d[120];
    snprintf(d, sizeof d, "wait status %#x (signal %d)", rr->status, WIFSIGNALED(rr->status) ? WTERMSIG(rr->status) : 0);
    int ok = WIFEXITED(rr->status) && WEXITSTATUS(rr->status) == 0;
    check(ok, d, "%s: the replay child ran to completion", what);
    return ok;
}

/* ------------------------------------------------------------ expectations */

enum tier { T_NONE = 0, T_TINY, T_MID, T_L25, T_MMAP };

static enum tier tier_of(uint64_t size) {
    if (size <= G.tiny_max) return T_TINY;
    if (size <= G.mid_max) return T_MID;
    if (size <= G.l25_max) return T_L25;
    return T_MMAP;
}

static const uint8_t k_tier_owner[] = {HAK_OWNER_NONE, HAK_OWNER_TINY, HAK_OWNER_MID, HAK_OWNER_L25, HAK_OWNER_MMAP};

/* The route a correctly registered block of that tier takes. */
static int route_fits(enum tier t, uint32_t route) {
    switch (t) {
    case T_TINY: return route == HAK_ROUTE_SS_HIT;
    case T_MID: return route == HAK_ROUTE_MID_HIT;
    case T_L25: return route == HAK_ROUTE_L25_HIT;
    case T_MMAP:
        return route == HAK_ROUTE_BIGCACHE || route == HAK_ROUTE_BIGCACHE_L25 || route == HAK_ROUTE_MMAP_BATCH ||
               route == HAK_ROUTE_MMAP_WHALE || route == HAK_ROUTE_MMAP_MUNMAP;
    default: return 0;
    }
}

typedef struct expect {
    int is_free;          /* a legit free (or realloc that frees): outcome CORRECT expected */
    enum tier freed;      /* tier of the block freed (route check), T_NONE for free(NULL) */
    enum tier made;       /* tier of the block made (owner check), T_NONE if none */
} expect;

/* ---------------------------------------------------------------- traces */

/* Every allocation path and a legit free of each, a realloc chain across all tiers, calloc,
 * memalign, free(NULL), thread_end. exp gets one entry per event. */
static void basic_trace(tb *t, expect *exp) {
    uint64_t sizes[] = {8, 100, G.tiny_max, G.tiny_max + 1, 5000, G.mid_max, G.mid_max + 1, 200000, G.l25_max,
                        (uint64_t)3 << 20, (uint64_t)1536 << 10};
    size_t ns = sizeof sizes / sizeof sizes[0];
    enum tier obj_tier[64] = {0};
    tb_init(t, NULL);
#define E(idx, f, fr, md) (exp[idx] = (expect){(f), (fr), (md)})
    for (size_t k = 0; k < ns; k++) {
        obj_tier[k + 1] = tier_of(sizes[k]);
        E(MALLOC(t, 1, (uint32_t)k + 1, sizes[k]), 0, T_NONE, obj_tier[k + 1]);
    }
    uint32_t o = (uint32_t)ns;
    obj_tier[o + 1] = tier_of(128);
    E(CALLOC(t, 1, o + 1, 4, 32), 0, T_NONE, obj_tier[o + 1]);
    obj_tier[o + 2] = tier_of(3000);
    E(CALLOC(t, 1, o + 2, 3, 1000), 0, T_NONE, obj_tier[o + 2]);
    obj_tier[o + 3] = T_TINY;
    E(MEMALIGN(t, 1, o + 3, 64, 200), 0, T_NONE, T_TINY);
    obj_tier[o + 4] = T_MMAP;
    E(MEMALIGN(t, 1, o + 4, 4096, 5000), 0, T_NONE, T_MMAP);
    /* realloc chain 15 -> 16 -> ... -> 20 across every tier, then size 0, then from NULL */
    uint32_t c0 = o + 5;
    E(MALLOC(t, 1, c0, 16), 0, T_NONE, T_TINY);
    uint64_t chain[] = {100, 5000, 200000, (uint64_t)3 << 20, 10};
    enum tier prev = T_TINY;
    for (size_t k = 0; k < 5; k++) {
        enum tier nt = tier_of(chain[k]);
        E(REALLOC(t, 1, c0 + 1 + (uint32_t)k, c0 + (uint32_t)k, chain[k]), 1, prev, nt);
        prev = nt;
    }
    E(REALLOC(t, 1, 0, c0 + 5, 0), 1, prev, T_NONE);
    uint32_t fromnull = c0 + 6;
    E(REALLOC(t, 1, fromnull, 0, 64), 0, T_NONE, T_TINY);
    obj_tier[fromnull] = T_TINY;
    E(FREE(t, 1, 0), 1, T_NONE, T_NONE);
    for (uint32_t k = 1; k <= o + 4; k++) E(FREE(t, 1, k), 1, obj_tier[k], T_NONE);
    E(FREE(t, 1, fromnull), 1, T_TINY, T_NONE);
    E(THREAD_END(t, 1), 0, T_NONE, T_NONE);
#undef E
}

/* ------------------------------------------------------------- scenarios */

static void check_basic_events(const char *what, const tb *t, const expect *exp, const hfr_event *ev, int libc, int judge) {
    agg_t a = {0};
    const hft_record *recs = t->r;
    for (size_t i = 0; i < t->n; i++) {
        const hfr_event *e = &ev[i];
        const expect *x = &exp[i];
        AGG(&a, e->status == HFR_EV_DONE, "event %zu status %u", i, e->status);
        AGG(&a, e->check_failed == 0, "event %zu check_failed", i);
        if (x->is_free) {
            AGG(&a, e->outcome == HFR_OUT_CORRECT, "event %zu (op %u) outcome %s, route %s", i, recs[i].op,
                out_s(e->outcome), route_s(e->route));
            if (libc) {
                AGG(&a, e->route == 0 && e->seq == 0 && e->probe == HAK_PROBE_NOT_RUN && e->method == -1,
                    "event %zu: libc free with route %u seq %lu probe %d method %d", i, e->route,
                    (unsigned long)e->seq, e->probe, e->method);
            } else if (x->freed == T_NONE && recs[i].op == HFT_OP_FREE) {
                AGG(&a, e->route == HAK_ROUTE_NULL && e->ptr == 0 && e->seq, "event %zu free(NULL): route %s ptr %#lx", i,
                    route_s(e->route), (unsigned long)e->ptr);
            } else {
                AGG(&a, route_fits(x->freed, e->route) && e->seq > 0, "event %zu: tier %d freed by route %s (seq %lu)",
                    i, x->freed, route_s(e->route), (unsigned long)e->seq);
            }
        } else {
            AGG(&a, e->outcome == HFR_OUT_NONE && e->route == 0 && e->seq == 0 && e->probe == HAK_PROBE_NOT_RUN &&
                        e->method == -1,
                "event %zu (op %u): non-free with outcome %s route %u probe %d method %d", i, recs[i].op,
                out_s(e->outcome), e->route, e->probe, e->method);
        }
        if (x->made != T_NONE) {
            uint8_t want = libc ? HFR_OWNER_LIBC : judge ? k_tier_owner[x->made] : HFR_OWNER_UNKNOWN;
            AGG(&a, e->ptr != 0 && e->owner == want, "event %zu: made %#lx owner %u, expected %u", i,
                (unsigned long)e->ptr, e->owner, want);
        }
        if (recs[i].op == HFT_OP_MEMALIGN)
            AGG(&a, e->ptr % (uint64_t)recs[i].arg == 0, "event %zu: memalign(%ld) gave %#lx", i, (long)recs[i].arg,
                (unsigned long)e->ptr);
    }
    agg_report(&a, "%s: %zu events, every allocation owned by its tier, every free correct by its tier's route", what,
               t->n);
}

static void sc_basic(void) {
    static expect exp[256];
    tb t;
    basic_trace(&t, exp);
    hfr_options o = {0, 0, 1};
    replay_run rr = {0}, st = {0}, rc = {0}, rz = {0};
    run_prepare(&t, &rr);
    run_prepare(&t, &st);
    run_prepare(&t, &rc);
    run_prepare(&t, &rz);
    run_child(&t, NULL, BIND_LIB, MODE_REPLAY, &o, &rr);
    if (child_ok(&rr, "basic")) {
        const hfr_header *h = rr.res;
        check(rr.ci->rc == HFD_OK, rr.ci->err, "basic: hfd_replay -> HFD_OK");
        CHECK(memcmp(h->magic, HFR_MAGIC, 8) == 0 && h->version == HFR_VERSION && h->event_size == sizeof(hfr_event) &&
                  h->num_events == t.n,
              "basic: hfd_replay filled the result header (%lu events)", (unsigned long)h->num_events);
        CHECK(h->state == HFR_STATE_DONE && h->events_done == t.n && h->threads_used == 1 &&
                  h->first_check_failure == UINT64_MAX && h->error[0] == '\0',
              "basic: state %u, %lu events done, %u thread, no check failure, no error \"%s\"", h->state,
              (unsigned long)h->events_done, h->threads_used, h->error);
        check_basic_events("basic", &t, exp, rr.ev, 0, 1);
        hfr_summary s;
        hfd_summarize(rr.ev, t.n, &s);
        uint64_t want_frees = 0, want_allocs = 0, want_routes[32] = {0};
        for (size_t i = 0; i < t.n; i++) {
            if (exp[i].is_free) { want_frees++; want_routes[rr.ev[i].route]++; }
            else if (exp[i].made != T_NONE) want_allocs++;
        }
        CHECK(s.events_done == t.n && s.frees == want_frees && s.allocs == want_allocs &&
                  s.outcome_counts[HFR_OUT_CORRECT] == want_frees && s.outcome_counts[HFR_OUT_NONE] == t.n - want_frees &&
                  memcmp(s.route_counts, want_routes, sizeof want_routes) == 0 && s.first_anomaly == UINT64_MAX,
              "basic: summary %lu done, %lu frees (want %lu), %lu allocs (want %lu), %lu correct, no anomaly",
              (unsigned long)s.events_done, (unsigned long)s.frees, (unsigned long)want_frees, (unsigned long)s.allocs,
              (unsigned long)want_allocs, (unsigned long)s.outcome_counts[HFR_OUT_CORRECT]);
        CHECK(s.route_counts[HAK_ROUTE_SS_HIT] && s.route_counts[HAK_ROUTE_MID_HIT] && s.route_counts[HAK_ROUTE_L25_HIT] &&
                  s.route_counts[HAK_ROUTE_BIGCACHE] && s.route_counts[HAK_ROUTE_NULL] == 1,
              "basic: routes ss_hit %lu mid_hit %lu l25_hit %lu bigcache %lu null %lu",
              (unsigned long)s.route_counts[HAK_ROUTE_SS_HIT], (unsigned long)s.route_counts[HAK_ROUTE_MID_HIT],
              (unsigned long)s.route_counts[HAK_ROUTE_L25_HIT], (unsigned long)s.route_counts[HAK_ROUTE_BIGCACHE],
              (unsigned long)s.route_counts[HAK_ROUTE_NULL]);
    }

    /* The stepping path: a fresh child, the same trace, one hfd_step per event. */
    run_child(&t, NULL, BIND_LIB, MODE_STEP, &o, &st);
    if (child_ok(&st, "basic, stepped") && child_ok(&rr, "basic (again)")) {
        check(st.ci->rc == HFD_OK, st.ci->err, "basic, stepped: every hfd_step -> HFD_OK");
        size_t first_diff = t.n;
        for (size_t i = 0; i < t.n && first_diff == t.n; i++)
            if (memcmp(&st.ev[i], &rr.ev[i], sizeof(hfr_event)) != 0) first_diff = i;
        char d[200] = "";
        if (first_diff < t.n)
            snprintf(d, sizeof d, "event %zu: ptr %#lx/%#lx seq %lu/%lu route %u/%u outcome %u/%u owner %u/%u", first_diff,
                     (unsigned long)st.ev[first_diff].ptr, (unsigned long)rr.ev[first_diff].ptr,
                     (unsigned long)st.ev[first_diff].seq, (unsigned long)rr.ev[first_diff].seq, st.ev[first_diff].route,
                     rr.ev[first_diff].route, st.ev[first_diff].outcome, rr.ev[first_diff].outcome,
                     st.ev[first_diff].owner, rr.ev[first_diff].owner);
        check(first_diff == t.n, d, "basic: hfd_step gives byte-identical records to hfd_replay (%zu events)", t.n);
    }

    /* hfd_replay_ex on a zeroed array and a validated trace: the same records, without clearing
     * or validating first. */
    run_child(&t, NULL, BIND_LIB, MODE_REPLAY_ZEROED, &o, &rz);
    if (child_ok(&rz, "basic, zeroed") && child_ok(&rr, "basic (again)")) {
        size_t diff = t.n;
        for (size_t i = 0; i < t.n && diff == t.n; i++)
            if (memcmp(&rz.ev[i], &rr.ev[i], sizeof(hfr_event)) != 0) diff = i;
        check(rz.ci->rc == HFD_OK && diff == t.n && rz.res->state == HFR_STATE_DONE && rz.res->events_done == t.n, rz.ci->err,
              "basic: hfd_replay_ex (zeroed, validated) gives byte-identical records to hfd_replay (first difference: "
              "event %zu of %zu)",
              diff, t.n);
    }

    /* A clean heap passes the check after every event. */
    hfr_options oc = {1, 0, 1};
    run_child(&t, NULL, BIND_LIB, MODE_REPLAY, &oc, &rc);
    if (child_ok(&rc, "basic, check every event")) {
        int any = 0;
        for (size_t i = 0; i < t.n; i++) any |= rc.ev[i].check_failed;
        CHECK(rc.ci->rc == HFD_OK && rc.res->first_check_failure == UINT64_MAX && !any && rc.res->check_msg[0] == '\0',
              "basic, check every event: no check fails on a clean heap (\"%s\")", rc.res->check_msg);
        size_t diff = t.n;
        for (size_t i = 0; i < t.n && diff == t.n; i++)
            if (memcmp(&rc.ev[i], &rr.ev[i], sizeof(hfr_event)) != 0) diff = i;
        char d[200] = "";
        if (diff < t.n)
            snprintf(d, sizeof d, "event %zu: ptr %#lx/%#lx seq %lu/%lu route %u/%u", diff, (unsigned long)rc.ev[diff].ptr,
                     (unsigned long)rr.ev[diff].ptr, (unsigned long)rc.ev[diff].seq, (unsigned long)rr.ev[diff].seq,
                     rc.ev[diff].route, rr.ev[diff].route);
        check(diff == t.n, d, "basic, check every event: the records are the same as without the check");
    }
    run_free(&rc);
    run_free(&st);
    run_free(&rz);

    /* Without the oracle: owners unknown, frees judged by route alone (all correct here). */
    hfr_options nj = {0, 0, 0};
    replay_run rj = {0};
    run_child(&t, NULL, BIND_LIB, MODE_REPLAY, &nj, &rj);
    if (child_ok(&rj, "basic, no judge")) check_basic_events("basic, no judge", &t, exp, rj.ev, 0, 0);
    run_free(&rj);

    /* libc: same trace, same loop; every object libc's, every free correct, no routes. */
    replay_run rl = {0};
    run_child(&t, NULL, BIND_LIBC, MODE_REPLAY, &o, &rl);
    if (child_ok(&rl, "basic, libc")) {
        check(rl.ci->rc == HFD_OK, rl.ci->err, "basic, libc: hfd_replay -> HFD_OK");
        check_basic_events("basic, libc", &t, exp, rl.ev, 1, 1);
    }
    run_free(&rl);
    run_free(&rr);
    tb_free(&t);
}

static void expect_free(agg_t *a, const hfr_event *ev, size_t i, uint8_t outcome, uint32_t route, uint32_t action,
                        int owner) {
    const hfr_event *e = &ev[i];
    AGG(a, e->status == HFR_EV_DONE && e->outcome == outcome && e->route == route && e->action == action &&
               (owner < 0 || e->owner == owner),
        "event %zu: status %u outcome %s route %s action %s owner %u; expected %s / %s / %s / owner %d", i, e->status,
        out_s(e->outcome), route_s(e->route), H.hak_action_name(e->action), e->owner, out_s(outcome), route_s(route),
        H.hak_action_name(action), owner);
}

static void sc_forensic(void) {
    for (int ld = 0; ld < 2; ld++) {
        tb t;
        tb_init(&t, NULL);
        memset(g_wild, 0, sizeof g_wild);
        size_t i_mal1 = MALLOC(&t, 1, 1, 256);
        size_t i_int1 = FREE_INTERIOR(&t, 1, 1, 16);
        MALLOC(&t, 1, 2, G.tiny_max + 100);
        size_t i_int2 = FREE_INTERIOR(&t, 1, 2, 64);
        MALLOC(&t, 1, 3, 64);
        size_t i_free3 = FREE(&t, 1, 3);
        size_t i_dbl3 = DOUBLE_FREE(&t, 1, 3);
        size_t i_raw = FREE_RAW(&t, 1, (uintptr_t)(g_wild + 64));
        size_t i_lm = LIBC_MALLOC(&t, 1, 4, 100);
        size_t i_fl = FREE_LIBC(&t, 1, 4);
        MALLOC(&t, 1, 5, (uint64_t)3 << 20);
        size_t i_cor = CORRUPT(&t, 1, 5, -(int64_t)HAK_HEADER_SIZE, 4, 0x11223344u);
        size_t i_free5 = FREE(&t, 1, 5);
        THREAD_END(&t, 1);
        const char *knobs[] = {ld ? "HAKMEM_MODE=ldpreload" : "HAKMEM_MODE=direct", NULL};
        const char *mode = ld ? "ldpreload" : "direct";
        hfr_options o = {0, 0, 1};
        replay_run rr = {0};
        run_child(&t, knobs, BIND_LIB, MODE_REPLAY, &o, &rr);
        if (!child_ok(&rr, mode)) { run_free(&rr); tb_free(&t); continue; }
        check(rr.ci->rc == HFD_OK, rr.ci->err, "forensic ops (%s mode): hfd_replay -> HFD_OK", mode);
        const hfr_event *ev = rr.ev;
        agg_t a = {0};
        expect_free(&a, ev, i_int1, HFR_OUT_MISROUTED, HAK_ROUTE_SS_HIT, HAK_ACTION_TINY_FREE, HAK_OWNER_TINY);
        AGG(&a, ev[i_int1].ptr == ev[i_mal1].ptr + 16, "free_interior ptr %#lx, block %#lx", (unsigned long)ev[i_int1].ptr,
            (unsigned long)ev[i_mal1].ptr);
        agg_report(&a, "forensic (%s): free_interior of a Tiny block -> ss_hit / tiny_free: misrouted", mode);
        expect_free(&a, ev, i_int2, HFR_OUT_MISROUTED, HAK_ROUTE_MID_HIT, HAK_ACTION_POOL_FREE, HAK_OWNER_MID);
        agg_report(&a, "forensic (%s): free_interior of a Mid block -> mid_hit / pool_free: misrouted", mode);
        expect_free(&a, ev, i_free3, HFR_OUT_CORRECT, HAK_ROUTE_SS_HIT, HAK_ACTION_TINY_FREE, HAK_OWNER_TINY);
        expect_free(&a, ev, i_dbl3, HFR_OUT_MISROUTED, HAK_ROUTE_SS_HIT, HAK_ACTION_TINY_FREE, HAK_OWNER_TINY);
        AGG(&a, ev[i_dbl3].ptr == ev[i_free3].ptr && ev[i_dbl3].seq == ev[i_free3].seq + 1, "double free ptr %#lx seq %lu",
            (unsigned long)ev[i_dbl3].ptr, (unsigned long)ev[i_dbl3].seq);
        agg_report(&a, "forensic (%s): double_free of a Tiny block frees the same pointer again: misrouted", mode);
        if (!ld)
            expect_free(&a, ev, i_raw, HFR_OUT_MISROUTED, HAK_ROUTE_INVALID_MAGIC_TINY_RECOVERY, HAK_ACTION_TINY_FREE,
                        HAK_OWNER_NONE);
        else
            expect_free(&a, ev, i_raw, HFR_OUT_DETECTED_INVALID, HAK_ROUTE_INVALID_MAGIC_SKIP, HAK_ACTION_NONE,
                        HAK_OWNER_NONE);
        AGG(&a, ev[i_raw].ptr == (uintptr_t)(g_wild + 64) && ev[i_raw].magic_found == 0 &&
                    (ev[i_raw].stages_tried & HAK_STAGE_MAGIC),
            "free_raw ptr %#lx magic %#x tried %#x", (unsigned long)ev[i_raw].ptr, ev[i_raw].magic_found,
            ev[i_raw].stages_tried);
        agg_report(&a, "forensic (%s): free_raw of a wild address -> %s", mode,
                   ld ? "invalid_magic_skip: detected_invalid" : "invalid_magic_tiny_recovery / tiny_free: misrouted");
        AGG(&a, ev[i_lm].owner == HFR_OWNER_LIBC && ev[i_lm].ptr && ev[i_lm].outcome == HFR_OUT_NONE,
            "libc_malloc owner %u", ev[i_lm].owner);
        expect_free(&a, ev, i_fl, HFR_OUT_INVALID_MAGIC,
                    ld ? HAK_ROUTE_INVALID_MAGIC_SKIP : HAK_ROUTE_INVALID_MAGIC_TINY_RECOVERY,
                    ld ? HAK_ACTION_NONE : HAK_ACTION_TINY_FREE, HFR_OWNER_LIBC);
        agg_report(&a, "forensic (%s): free_libc of a libc block through the allocator -> invalid_magic", mode);
        AGG(&a, ev[i_cor].status == HFR_EV_DONE && ev[i_cor].outcome == HFR_OUT_NONE && ev[i_cor].ptr == 0 &&
                    ev[i_cor].owner == HAK_OWNER_MMAP,
            "corrupt event: outcome %u ptr %#lx owner %u", ev[i_cor].outcome, (unsigned long)ev[i_cor].ptr, ev[i_cor].owner);
        expect_free(&a, ev, i_free5, HFR_OUT_INVALID_MAGIC,
                    ld ? HAK_ROUTE_INVALID_MAGIC_SKIP : HAK_ROUTE_INVALID_MAGIC_TINY_RECOVERY,
                    ld ? HAK_ACTION_NONE : HAK_ACTION_TINY_FREE, HAK_OWNER_MMAP);
        AGG(&a, ev[i_free5].magic_found == 0x11223344u, "magic found %#x", ev[i_free5].magic_found);
        agg_report(&a, "forensic (%s): corrupt of an MMAP header, then its free finds magic 0x11223344 -> invalid_magic",
                   mode);
        hfr_summary s;
        hfd_summarize(ev, t.n, &s);
        CHECK(s.first_anomaly == i_int1 && s.outcome_counts[HFR_OUT_INVALID_MAGIC] == 2 &&
                  s.outcome_counts[HFR_OUT_MISROUTED] == (ld ? 3u : 4u),
              "forensic (%s): summary first anomaly %lu, %lu invalid_magic, %lu misrouted", mode,
              (unsigned long)s.first_anomaly, (unsigned long)s.outcome_counts[HFR_OUT_INVALID_MAGIC],
              (unsigned long)s.outcome_counts[HFR_OUT_MISROUTED]);
        run_free(&rr);
        tb_free(&t);
    }
}

static void sc_leaked_misrouted(void) {
    /* A SuperSlab released while a block is live: the later free finds it gone. */
    tb t;
    tb_init(&t, NULL);
    MALLOC(&t, 1, 1, 64);
    MALLOC(&t, 1, 2, 64);
    MALLOC(&t, 1, 3, 64);
    size_t f1 = FREE(&t, 1, 1);
    size_t f2 = FREE(&t, 1, 2);
    size_t f3 = FREE(&t, 1, 3);
    const char *knobs[] = {"HAKMEM_MODE=direct", "HAKMEM_SS_EARLY_RELEASE=1", "HAKMEM_HEADER_PROBE=safe", NULL};
    hfr_options o = {1, 0, 1};
    replay_run rr = {0};
    run_child(&t, knobs, BIND_LIB, MODE_REPLAY, &o, &rr);
    if (child_ok(&rr, "early release")) {
        agg_t a = {0};
        expect_free(&a, rr.ev, f1, HFR_OUT_CORRECT, HAK_ROUTE_SS_HIT, HAK_ACTION_TINY_FREE, HAK_OWNER_TINY);
        expect_free(&a, rr.ev, f2, HFR_OUT_CORRECT, HAK_ROUTE_SS_HIT, HAK_ACTION_TINY_FREE, HAK_OWNER_TINY);
        expect_free(&a, rr.ev, f3, HFR_OUT_LEAKED, HAK_ROUTE_UNMAPPED_HEADER_FALLBACK, HAK_ACTION_TINY_FREE, HAK_OWNER_TINY);
        AGG(&a, rr.ev[f3].probe == HAK_PROBE_UNREADABLE, "probe %d", rr.ev[f3].probe);
        agg_report(&a, "early release: the free of a block whose SuperSlab is gone -> unmapped_header_fallback: leaked");
        CHECK(rr.res->first_check_failure == f2 && rr.ev[f2].check_failed && !rr.ev[f3].check_failed &&
                  strstr(rr.res->check_msg, "released while 1 of its blocks were live"),
              "early release: the check after every event names event %zu first (got %lu: \"%s\")", f2,
              (unsigned long)rr.res->first_check_failure, rr.res->check_msg);
    }
    run_free(&rr);
    tb_free(&t);

    /* The seed's HAKMEM_BIGCACHE_L25 band takes an L25 block whose registration was dropped. */
    tb_init(&t, NULL);
    CHECK(G.mid_max < 600000 && G.l25_max >= 600000, "600000 bytes is an L25 size (mid_max %lu, l25_max %lu)",
          (unsigned long)G.mid_max, (unsigned long)G.l25_max);
    size_t m = MALLOC(&t, 1, 1, 600000);
    size_t f = FREE(&t, 1, 1);
    const char *k2[] = {"HAKMEM_BIGCACHE_L25=1", "HAKMEM_L25_REG_DROP_EVERY=1", NULL};
    hfr_options o2 = {0, 0, 1};
    run_child(&t, k2, BIND_LIB, MODE_REPLAY, &o2, &rr);
    if (child_ok(&rr, "bigcache_l25")) {
        agg_t a = {0};
        AGG(&a, rr.ev[m].owner == HAK_OWNER_L25, "owner %u", rr.ev[m].owner);
        expect_free(&a, rr.ev, f, HFR_OUT_MISROUTED, HAK_ROUTE_BIGCACHE_L25, HAK_ACTION_BIGCACHE_PUT, HAK_OWNER_L25);
        hfr_summary s;
        hfd_summarize(rr.ev, t.n, &s);
        AGG(&a, s.first_anomaly == f && s.outcome_counts[HFR_OUT_MISROUTED] == 1, "first anomaly %lu",
            (unsigned long)s.first_anomaly);
        agg_report(&a, "bigcache_l25: an unregistered L25 block goes to bigcache_put instead of l25_free: misrouted");
    }
    run_free(&rr);
    tb_free(&t);
}

static void sc_check_every(void) {
    tb t;
    tb_init(&t, NULL);
    MALLOC(&t, 1, 1, 64);
    MALLOC(&t, 1, 2, 64);
    FREE(&t, 1, 1);
    size_t dbl = DOUBLE_FREE(&t, 1, 1);
    FREE(&t, 1, 2);
    MALLOC(&t, 1, 3, 2000);
    FREE(&t, 1, 3);
    /* checks run after events 0..6 (every 1), 1,3,5 (every 2), 2,5 (every 3) */
    size_t fail_at[4] = {0, dbl, dbl, 5};
    replay_run runs[4] = {{0}}, st = {0};
    for (int k = 1; k <= 3; k++) run_prepare(&t, &runs[k]);
    run_prepare(&t, &st);
    for (uint64_t every = 1; every <= 3; every++) {
        hfr_options o = {every, 0, 1};
        replay_run *rr = &runs[every];
        run_child(&t, NULL, BIND_LIB, MODE_REPLAY, &o, rr);
        if (!child_ok(rr, "check every")) continue;
        int flagged = 0;
        for (size_t i = 0; i < t.n; i++) flagged += rr->ev[i].check_failed;
        CHECK(rr->res->first_check_failure == fail_at[every] && rr->ev[fail_at[every]].check_failed && flagged == 1 &&
                  strstr(rr->res->check_msg, "double free") && rr->res->state == HFR_STATE_DONE &&
                  rr->res->events_done == t.n,
              "check every %lu: first failure at event %zu (got %lu, %d flagged): \"%s\"", (unsigned long)every,
              fail_at[every], (unsigned long)rr->res->first_check_failure, flagged, rr->res->check_msg);
    }
    replay_run base = runs[1];
    /* Stepping with the same options gives the same records and the message. */
    hfr_options o1 = {1, 0, 1};
    run_child(&t, NULL, BIND_LIB, MODE_STEP, &o1, &st);
    if (child_ok(&st, "check every, stepped") && base.res) {
        int same = 1;
        for (size_t i = 0; i < t.n; i++) same &= memcmp(&st.ev[i], &base.ev[i], sizeof(hfr_event)) == 0;
        CHECK(same && st.ev[dbl].check_failed && strstr(st.ci->step_check_msg, "double free"),
              "check every 1, stepped: identical records, check_failed at event %zu, message \"%s\"", dbl,
              st.ci->step_check_msg);
    }
    run_free(&st);
    for (int k = 1; k <= 3; k++) run_free(&runs[k]);
    tb_free(&t);

    /* A corrupted Mid header is caught right after the corrupt, though the free goes fine. */
    tb_init(&t, NULL);
    MALLOC(&t, 1, 1, 5000);
    size_t cor = CORRUPT(&t, 1, 1, -(int64_t)HAK_HEADER_SIZE, 4, 0xdeadbeefu);
    size_t fr = FREE(&t, 1, 1);
    hfr_options o = {1, 0, 1};
    replay_run rr = {0};
    run_child(&t, NULL, BIND_LIB, MODE_REPLAY, &o, &rr);
    if (child_ok(&rr, "check, corrupt")) {
        CHECK(rr.res->first_check_failure == cor && strstr(rr.res->check_msg, "0xDEADBEEF") &&
                  rr.ev[fr].outcome == HFR_OUT_CORRECT && rr.ev[fr].route == HAK_ROUTE_MID_HIT,
              "check, corrupt: the header overwrite is named at event %zu (\"%s\"); the free still mid_hit/correct",
              cor, rr.res->check_msg);
    }
    run_free(&rr);
    tb_free(&t);
}

static uint32_t rng_state = 12345;
static uint32_t rng(void) {
    rng_state = rng_state * 1103515245u + 12345u;
    return rng_state >> 8;
}

/* Four trace threads; every block is freed by another thread than the one that made it,
 * in a randomly interleaved trace order. */
static void threads_trace(tb *t, int rounds) {
    static const uint64_t sizes[] = {24, 700, 3000, 70000, 1228800};
    tb_init(t, NULL);
    uint32_t obj[5][64];
    uint32_t next = 1;
    for (int r = 0; r <= rounds; r++) {
        /* this round's ops: thread t mallocs obj[t][r], frees obj[t-1][r-1] */
        struct { int tid, kind; } ops[8];
        int n = 0;
        for (int th = 1; th <= 4; th++) {
            if (r < rounds) ops[n++] = (typeof(ops[0])){th, 0};
            if (r > 0) ops[n++] = (typeof(ops[0])){th, 1};
        }
        for (int k = n - 1; k > 0; k--) {
            int j = (int)(rng() % (uint32_t)(k + 1));
            typeof(ops[0]) tmp = ops[k];
            ops[k] = ops[j];
            ops[j] = tmp;
        }
        /* a free of last round's object may come before this round's malloc: fine */
        for (int k = 0; k < n; k++) {
            int th = ops[k].tid;
            if (ops[k].kind == 0) {
                obj[th][r] = next++;
                MALLOC(t, (uint32_t)th, obj[th][r], sizes[(th + r) % 5]);
            } else {
                int from = th == 1 ? 4 : th - 1;
                FREE(t, (uint32_t)th, obj[from][r - 1]);
            }
        }
    }
    for (int th = 1; th <= 4; th++) THREAD_END(t, (uint32_t)th);
}

static void sc_threads(void) {
    tb t;
    threads_trace(&t, 40);
    for (int run = 0; run < 5; run++) {
        hfr_options o = {0, 1, 1};
        replay_run rr = {0};
        run_child(&t, NULL, BIND_LIB, MODE_REPLAY, &o, &rr);
        if (!child_ok(&rr, "threads")) { run_free(&rr); continue; }
        agg_t a = {0};
        size_t frees = 0;
        for (size_t i = 0; i < t.n; i++) {
            const hfr_event *e = &rr.ev[i];
            AGG(&a, e->status == HFR_EV_DONE, "event %zu status %u", i, e->status);
            if (t.r[i].op == HFT_OP_FREE) {
                frees++;
                AGG(&a, e->outcome == HFR_OUT_CORRECT, "event %zu (tid %u, free of %u): outcome %s route %s", i, t.r[i].tid,
                    t.r[i].obj, out_s(e->outcome), route_s(e->route));
            } else if (t.r[i].op == HFT_OP_MALLOC) {
                AGG(&a, e->owner == k_tier_owner[tier_of(t.r[i].size)], "event %zu owner %u", i, e->owner);
            }
        }
        AGG(&a, rr.ci->rc == HFD_OK && rr.res->threads_used == 4 && rr.res->events_done == t.n &&
                    rr.res->state == HFR_STATE_DONE,
            "rc %d (%s) threads_used %u done %lu", rr.ci->rc, rr.ci->err, rr.res->threads_used,
            (unsigned long)rr.res->events_done);
        AGG(&a, rr.ci->n_os_tids == 4 && !rr.ci->main_tid_freed, "frees came from %d OS threads (main thread %d)",
            rr.ci->n_os_tids, rr.ci->main_tid_freed);
        agg_report(&a, "threads, run %d: 4 real threads, %zu cross-thread frees all correct", run + 1, frees);
        run_free(&rr);
    }
    tb_free(&t);

    /* A tid that comes back after its thread_end is a new thread. */
    tb_init(&t, NULL);
    MALLOC(&t, 1, 1, 100);
    MALLOC(&t, 2, 2, 3000);
    THREAD_END(&t, 2);
    FREE(&t, 1, 2);
    MALLOC(&t, 2, 3, 200000);
    FREE(&t, 2, 1);
    THREAD_END(&t, 2);
    FREE(&t, 1, 3);
    hfr_options o = {0, 1, 1};
    replay_run rr = {0};
    run_child(&t, NULL, BIND_LIB, MODE_REPLAY, &o, &rr);
    if (child_ok(&rr, "thread reuse")) {
        int ok = rr.ci->rc == HFD_OK && rr.res->threads_used == 3 && rr.res->events_done == t.n;
        for (size_t i = 0; i < t.n; i++)
            if (t.r[i].op == HFT_OP_FREE) ok &= rr.ev[i].outcome == HFR_OUT_CORRECT;
        CHECK(ok, "thread reuse: tid 2 after its thread_end runs on a third thread (threads_used %u), frees correct",
              rr.res->threads_used);
    }
    run_free(&rr);
    tb_free(&t);

    /* One trace thread: the threaded option runs it on the caller. */
    tb_init(&t, NULL);
    MALLOC(&t, 7, 1, 100);
    FREE(&t, 7, 1);
    run_child(&t, NULL, BIND_LIB, MODE_REPLAY, &o, &rr);
    if (child_ok(&rr, "one tid"))
        CHECK(rr.ci->rc == HFD_OK && rr.res->threads_used == 1 && rr.ci->main_tid_freed,
              "threads with a single trace tid: replayed on the calling thread (threads_used %u)", rr.res->threads_used);
    run_free(&rr);
    tb_free(&t);
}

/* Validation: each broken trace is rejected before anything runs. */
static void expect_invalid(const char *what, const void *buf, size_t len, int want_rc, const char *want1, const char *want2) {
    static char store[1 << 16] __attribute__((aligned(8)));
    hfr_header *res = calloc(1, sizeof *res);
    hfr_event *ev = calloc(64, sizeof *ev);
    const void *p = buf;
    if (len <= sizeof store) {   /* an 8-aligned copy: malformed sizes keep their length */
        memcpy(store, buf, len);
        p = store;
    }
    int rc = hfd_replay(p, len, res, ev, NULL);
    char d[700];
    snprintf(d, sizeof d, "rc %d, state %u, error \"%s\", last error \"%s\"", rc, res->state, res->error, hfd_last_error());
    check(rc == want_rc && res->state == HFR_STATE_FAILED && strstr(res->error, want1) &&
              (!want2 || strstr(res->error, want2)) && strcmp(res->error, hfd_last_error()) == 0 && res->events_done == 0,
          d, "bad trace (%s): rejected with \"%s\"%s%s", what, want1, want2 ? " ... " : "", want2 ? want2 : "");
    int vrc = hfd_trace_validate(p, len);
    if (want_rc == HFD_EINVAL)
        check(vrc == HFD_EINVAL && strstr(hfd_last_error(), want1), hfd_last_error(),
              "bad trace (%s): hfd_trace_validate agrees", what);
    free(res);
    free(ev);
}

static void sc_bad_traces(void) {
    tb t;
    tb_init(&t, NULL);
    MALLOC(&t, 1, 1, 64);
    MALLOC(&t, 1, 2, 64);
    FREE(&t, 1, 1);
    FREE(&t, 1, 2);
    tb_build(&t);
    uint64_t ro = tb_records_offset(&t);
    char want[200], want2[200];
    char *b = malloc(t.len + 64);

    CHECK(hfd_trace_validate(t.buf, t.len) == HFD_OK, "a good trace validates (%s)", hfd_last_error());
    memcpy(b, t.buf, t.len);
    memcpy(b, "HKTRACX", 8);
    expect_invalid("wrong magic", b, t.len, HFD_EINVAL, "byte offset 0: bad magic", "HKTRACX");
    expect_invalid("empty", t.buf, 0, HFD_EINVAL, "byte offset 0: truncated", NULL);
    expect_invalid("header cut", t.buf, 30, HFD_EINVAL, "byte offset 30: truncated", NULL);
    snprintf(want, sizeof want, "byte offset %lu: truncated: the header declares 4 events but the file holds 3",
             (unsigned long)(ro + 3 * sizeof(hft_record)));
    expect_invalid("last record cut", t.buf, t.len - 20, HFD_EINVAL, want, NULL);
    memcpy(b, t.buf, t.len);
    memset(b + t.len, 0, 16);
    snprintf(want, sizeof want, "byte offset %lu: 16 bytes after the last of the 4 events", (unsigned long)t.len);
    expect_invalid("trailing bytes", b, t.len + 16, HFD_EINVAL, want, NULL);
    memcpy(b, t.buf, t.len);
    ((hft_header *)b)->version = 2;
    expect_invalid("version 2", b, t.len, HFD_EINVAL, "byte offset 8: unsupported version 2", NULL);
    memcpy(b, t.buf, t.len);
    ((hft_header *)b)->record_size = 40;
    expect_invalid("record size", b, t.len, HFD_EINVAL, "byte offset 12: record size 40", NULL);

#define MUTATE(idx, field, val) do { memcpy(b, t.buf, t.len); ((hft_record *)(b + ro))[idx].field = (val); } while (0)
    MUTATE(2, op, 77);
    snprintf(want, sizeof want, "event 2 (byte offset %lu): unknown op 77", (unsigned long)(ro + 2 * sizeof(hft_record)));
    expect_invalid("unknown op", b, t.len, HFD_EINVAL, want, NULL);
    MUTATE(3, obj, 3);
    ((hft_header *)b)->num_objects = 9;
    snprintf(want, sizeof want, "event 3 (byte offset %lu): free of object 3 which is not live (never allocated)",
             (unsigned long)(ro + 3 * sizeof(hft_record)));
    expect_invalid("free of a never-allocated object", b, t.len, HFD_EINVAL, want, NULL);
    MUTATE(3, obj, 1);
    snprintf(want, sizeof want, "event 3 (byte offset %lu): free of object 1 which is not live (already freed; last used by event 2)",
             (unsigned long)(ro + 3 * sizeof(hft_record)));
    expect_invalid("free of a freed object", b, t.len, HFD_EINVAL, want, NULL);
    MUTATE(1, obj, 1);
    snprintf(want, sizeof want, "event 1 (byte offset %lu): malloc of object 1 which is live", (unsigned long)(ro + 48));
    expect_invalid("malloc of a live object", b, t.len, HFD_EINVAL, want, NULL);
    MUTATE(1, obj, 5);
    snprintf(want, sizeof want, "event 1 (byte offset %lu): malloc: object id 5 is out of range (the header says 2 objects)",
             (unsigned long)(ro + 48));
    expect_invalid("object id out of range", b, t.len, HFD_EINVAL, want, NULL);
    MUTATE(2, op, HFT_OP_DOUBLE_FREE);
    snprintf(want, sizeof want, "event 2 (byte offset %lu): double_free of object 1 which is live", (unsigned long)(ro + 96));
    expect_invalid("double_free of a live object", b, t.len, HFD_EINVAL, want, NULL);
    MUTATE(2, op, HFT_OP_FREE_LIBC);
    expect_invalid("free_libc of an allocator object", b, t.len, HFD_EINVAL, "free_libc of object 1 which comes from the allocator", NULL);
    MUTATE(2, op, HFT_OP_CORRUPT);
    ((hft_record *)(b + ro))[2].size = 9;
    expect_invalid("corrupt of 9 bytes", b, t.len, HFD_EINVAL, "LEN must be 1..8", NULL);
    MUTATE(2, op, HFT_OP_REALLOC);
    ((hft_record *)(b + ro))[2].obj2 = 1;
    ((hft_record *)(b + ro))[2].obj = 2;
    ((hft_record *)(b + ro))[2].size = 0;
    expect_invalid("realloc to 0 naming a new object", b, t.len, HFD_EINVAL, "the new object id must be 0 (got 2)", NULL);
#undef MUTATE

    /* Nothing ran: the bad event is the last one, the good ones before it were not replayed. */
    tb bt;
    tb_init(&bt, NULL);
    MALLOC(&bt, 1, 1, 64);
    MALLOC(&bt, 1, 2, 5000);
    FREE(&bt, 1, 2);
    FREE(&bt, 1, 2);
    hfr_options o = {0, 0, 1};
    replay_run rr = {0};
    run_child(&bt, NULL, BIND_LIB, MODE_REPLAY, &o, &rr);
    if (child_ok(&rr, "late bad event")) {
        snprintf(want2, sizeof want2, "event 3 (byte offset %lu): free of object 2 which is not live",
                 (unsigned long)(tb_records_offset(&bt) + 3 * sizeof(hft_record)));
        int pending = 1;
        for (size_t i = 0; i < bt.n; i++) pending &= rr.ev[i].status == HFR_EV_PENDING;
        CHECK(rr.ci->rc == HFD_EINVAL && rr.res->state == HFR_STATE_FAILED && strstr(rr.res->error, want2) &&
                  rr.res->events_done == 0 && pending && rr.ci->allocs_before_fail == 0,
              "a bad last event: rejected before any event ran (%lu allocations made, error \"%s\")",
              (unsigned long)rr.ci->allocs_before_fail, rr.res->error);
    }
    run_free(&rr);

    /* An op the allocator cannot do. */
    tb_free(&bt);
    tb_init(&bt, NULL);
    MALLOC(&bt, 1, 1, 64);
    REALLOC(&bt, 1, 2, 1, 100);
    FREE(&bt, 1, 2);
    run_child(&bt, NULL, BIND_TABLE_MIN, MODE_REPLAY, &o, &rr);
    if (child_ok(&rr, "no realloc"))
        CHECK(rr.ci->rc == HFD_ENOSYM && strstr(rr.res->error, "event 1 (byte offset") &&
                  strstr(rr.res->error, "realloc needs hak_realloc_at") && rr.res->state == HFR_STATE_FAILED,
              "realloc with an allocator without hak_realloc_at: HFD_ENOSYM (\"%s\")", rr.res->error);
    run_free(&rr);
    run_child(&bt, NULL, BIND_TABLE_MIN, MODE_REPLAY_ZEROED, &o, &rr);   /* validated beforehand: the ops still checked */
    if (child_ok(&rr, "no realloc, validated"))
        CHECK(rr.ci->rc == HFD_ENOSYM && strstr(rr.res->error, "event 1 (byte offset") &&
                  strstr(rr.res->error, "realloc needs hak_realloc_at") && rr.res->events_done == 0,
              "hfd_replay_ex (validated): realloc without hak_realloc_at is still HFD_ENOSYM (\"%s\")", rr.res->error);
    run_free(&rr);
    {
        hfr_header hh;
        memset(&hh, 0, sizeof hh);
        hfr_event ev1[8];
        int frc = hfd_replay_ex(bt.buf, bt.len, &hh, ev1, &o, 4u);
        CHECK(frc == HFD_EINVAL && strstr(hfd_last_error(), "unknown flags"), "hfd_replay_ex with an unknown flag: HFD_EINVAL (\"%s\")",
              hfd_last_error());
    }

    /* A minimal table (alloc + free only): no owner, no decisions, no check. */
    tb_free(&bt);
    tb_init(&bt, NULL);
    MALLOC(&bt, 1, 1, 64);
    MALLOC(&bt, 1, 2, 64);
    FREE(&bt, 1, 1);
    size_t dbl = DOUBLE_FREE(&bt, 1, 1);
    FREE(&bt, 1, 2);
    hfr_options oc = {1, 0, 1};
    run_child(&bt, NULL, BIND_TABLE_MIN, MODE_REPLAY, &oc, &rr);
    if (child_ok(&rr, "minimal table")) {
        CHECK(rr.ci->rc == HFD_OK && rr.res->state == HFR_STATE_DONE && rr.ev[0].owner == HFR_OWNER_UNKNOWN &&
                  rr.ev[2].outcome == HFR_OUT_CORRECT && rr.ev[2].route == 0 && rr.ev[2].seq == 0 &&
                  rr.ev[dbl].outcome == HFR_OUT_MISROUTED && rr.res->first_check_failure == UINT64_MAX &&
                  strstr(rr.res->error, "note: no consistency check"),
              "minimal table: owners unknown, frees correct without routes, a double free misrouted, check skipped "
              "with a note (\"%s\")", rr.res->error);
    }
    run_free(&rr);
    tb_free(&bt);
    free(b);
    tb_free(&t);
}

static void sc_step_api(void) {
    hft_record r;
    memset(&r, 0, sizeof r);
    r.op = HFT_OP_MALLOC;
    r.obj = 1;
    r.size = 64;
    hfr_event e;
    CHECK(hfd_step(&r, 0, &e) == HFD_EINVAL && strstr(hfd_last_error(), "hfd_step_reset"),
          "hfd_step before hfd_step_reset -> HFD_EINVAL (\"%s\")", hfd_last_error());
    CHECK(hfd_step_reset(3) == HFD_OK, "hfd_step_reset(3)");
    r.op = HFT_OP_FREE;
    CHECK(hfd_step(&r, 0, &e) == HFD_EINVAL &&
              strcmp(hfd_last_error(), "event 0: free of object 1 which is not live (never allocated)") == 0,
          "hfd_step of a free of a never-allocated object -> \"%s\"", hfd_last_error());
    r.op = HFT_OP_MALLOC;
    CHECK(hfd_step(&r, 0, &e) == HFD_OK && e.status == HFR_EV_DONE && e.ptr && e.owner == HAK_OWNER_TINY,
          "after the refused step the table is unchanged: malloc of object 1 works (%#lx)", (unsigned long)e.ptr);
    uint64_t p = e.ptr;
    CHECK(hfd_step(&r, 1, &e) == HFD_EINVAL && strstr(hfd_last_error(), "event 1: malloc of object 1 which is live"),
          "hfd_step of a malloc of a live object -> \"%s\"", hfd_last_error());
    r.obj = 4;
    CHECK(hfd_step(&r, 1, &e) == HFD_EINVAL && strstr(hfd_last_error(), "out of range (the header says 3 objects)"),
          "hfd_step with object id 4 of 3 -> \"%s\"", hfd_last_error());
    r.op = HFT_OP_FREE;
    r.obj = 1;
    CHECK(hfd_step(&r, 2, &e) == HFD_OK && e.ptr == p && e.outcome == HFR_OUT_CORRECT && e.route == HAK_ROUTE_SS_HIT,
          "hfd_step free of object 1: ss_hit, correct");
    CHECK(hfd_step(NULL, 3, &e) == HFD_EINVAL, "hfd_step(NULL) -> HFD_EINVAL");
}

static void sc_summarize(void) {
    hfr_event ev[6];
    memset(ev, 0, sizeof ev);
    ev[0] = (hfr_event){.ptr = 0x1000, .status = HFR_EV_DONE, .outcome = HFR_OUT_NONE};                 /* alloc */
    ev[1] = (hfr_event){.ptr = 0x1000, .route = HAK_ROUTE_SS_HIT, .status = HFR_EV_DONE, .outcome = HFR_OUT_CORRECT};
    ev[2] = (hfr_event){.ptr = 0, .status = HFR_EV_DONE, .outcome = HFR_OUT_NONE};                      /* thread_end */
    ev[3] = (hfr_event){.ptr = 0x2000, .route = HAK_ROUTE_INVALID_MAGIC_SKIP, .status = HFR_EV_DONE,
                        .outcome = HFR_OUT_INVALID_MAGIC};
    ev[4] = (hfr_event){.ptr = 0x3000, .status = HFR_EV_STARTED, .outcome = HFR_OUT_CRASHED};
    ev[5] = (hfr_event){.status = HFR_EV_PENDING};
    hfr_summary s;
    hfd_summarize(ev, 6, &s);
    CHECK(s.events_done == 4 && s.frees == 2 && s.allocs == 1 && s.route_counts[HAK_ROUTE_SS_HIT] == 1 &&
              s.route_counts[HAK_ROUTE_INVALID_MAGIC_SKIP] == 1 && s.outcome_counts[HFR_OUT_NONE] == 2 &&
              s.outcome_counts[HFR_OUT_CORRECT] == 1 && s.outcome_counts[HFR_OUT_INVALID_MAGIC] == 1 &&
              s.outcome_counts[HFR_OUT_CRASHED] == 1 && s.first_anomaly == 3,
          "hfd_summarize: %lu done, %lu frees, %lu allocs, crashed %lu, first anomaly %lu", (unsigned long)s.events_done,
          (unsigned long)s.frees, (unsigned long)s.allocs, (unsigned long)s.outcome_counts[HFR_OUT_CRASHED],
          (unsigned long)s.first_anomaly);
    ev[3].status = HFR_EV_PENDING;
    hfd_summarize(ev, 6, &s);
    CHECK(s.first_anomaly == 4, "hfd_summarize: a STARTED event is the first anomaly (crashed) when nothing else is");
}

/* ------------------------------------------------------ the hfreplay binary */

typedef struct exe_run {
    int status;
    char out[1 << 14];
    char err[1 << 16];
    hfr_header *res;
    size_t res_size;
} exe_run;

static void drain(int fd, char *buf, size_t cap) {
    size_t n = 0;
    for (;;) {
        char tmp[4096];
        ssize_t r = read(fd, tmp, sizeof tmp);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        for (ssize_t i = 0; i < r && n + 1 < cap; i++) buf[n++] = tmp[i];
    }
    buf[n] = '\0';
}

/* Bytes the next run_exe writes into its result memfd first (0: none): a reused file. */
static size_t g_prefill;

/* Runs hfreplay with argv (NULL-terminated, without argv[0]); the result file is a memfd
 * passed as --results-fd unless use_fd is 0. */
static void run_exe(const char *const *args, int use_fd, exe_run *er) {
    memset(er, 0, sizeof *er);
    int mfd = -1;
    char fdarg[16];
    const char *argv[40];
    int k = 0;
    argv[k++] = "hfreplay";
    for (const char *const *a = args; *a && k < 34; a++) argv[k++] = *a;
    if (use_fd) {
        mfd = (int)syscall(SYS_memfd_create, "hfreplay-results", 0u);
        if (g_prefill) {
            static char junk[4096];
            memset(junk, 0xA5, sizeof junk);
            for (size_t off = 0; off < g_prefill; off += sizeof junk)
                if (write(mfd, junk, sizeof junk) != (ssize_t)sizeof junk) break;
            g_prefill = 0;
        }
        snprintf(fdarg, sizeof fdarg, "%d", mfd);
        argv[k++] = "--results-fd";
        argv[k++] = fdarg;
    }
    argv[k] = NULL;
    int po[2], pe[2];
    if (pipe(po) || pipe(pe)) return;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(po[1], 1);
        dup2(pe[1], 2);
        close(po[0]);
        close(pe[0]);
        close(po[1]);
        close(pe[1]);
        execv(g_exe, (char *const *)argv);
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    drain(pe[0], er->err, sizeof er->err);   /* the child writes little to stdout: no deadlock */
    drain(po[0], er->out, sizeof er->out);
    close(po[0]);
    close(pe[0]);
    waitpid(pid, &er->status, 0);
    if (mfd >= 0) {
        struct stat st;
        if (fstat(mfd, &st) == 0 && st.st_size >= (off_t)sizeof(hfr_header)) {
            er->res_size = (size_t)st.st_size;
            er->res = mmap(NULL, er->res_size, PROT_READ, MAP_SHARED, mfd, 0);
            if (er->res == MAP_FAILED) er->res = NULL;
        }
        close(mfd);
    }
}

static void exe_free(exe_run *er) {
    if (er->res) munmap(er->res, er->res_size);
    er->res = NULL;
}

static const char *k_crash_header = "# hakmem-trace v1\n# knob HAKMEM_MODE=direct\n# knob HAKMEM_SS_REG_CAPACITY=1\n"
                                    "# knob HAKMEM_HEADER_PROBE=off\n# meta scenario=registry-escape\n";

/* The seed's SEGV: with registry capacity 1 the second SuperSlab of a class is used
 * unregistered; its first block starts at the SuperSlab's first byte, and its free reads the
 * header from the unmapped hole below. threaded: the free runs on a second trace thread. */
static size_t crash_trace(tb *t, int threaded) {
    uint32_t per_ss = (uint32_t)(G.superslab_size / G.tiny_class_sizes[HAK_TINY_NUM_CLASSES - 1]);
    tb_init(t, k_crash_header);
    for (uint32_t k = 1; k <= per_ss + 1; k++) MALLOC(t, 1, k, G.tiny_class_sizes[HAK_TINY_NUM_CLASSES - 1]);
    size_t i = FREE(t, threaded ? 2 : 1, per_ss + 1);
    FREE(t, 1, 1);
    return i;
}

static void sc_exe_crash(void) {
    for (int threaded = 0; threaded < 2; threaded++) {
        tb t;
        size_t ci = crash_trace(&t, threaded);
        char path[512];
        if (tb_write(&t, path, sizeof path) != 0) { check(0, strerror(errno), "write the crash trace"); tb_free(&t); return; }
        const char *what = threaded ? "crash on a replay thread" : "crash";
        const char *args[] = {path, "--lib", g_lib_path, "--quiet", threaded ? "--threads" : NULL, NULL};
        exe_run er;
        run_exe(args, 1, &er);
        char d[300];
        snprintf(d, sizeof d, "wait status %#x (exit %d, signal %d); stderr: %.200s", er.status,
                 WIFEXITED(er.status) ? WEXITSTATUS(er.status) : -1, WIFSIGNALED(er.status) ? WTERMSIG(er.status) : 0,
                 er.err);
        check(WIFSIGNALED(er.status) && WTERMSIG(er.status) == SIGSEGV, d,
              "%s: hfreplay on the registry-escape trace (probe off) dies by SIGSEGV", what);
        const hfr_header *h = er.res;
        if (!h || er.res_size != sizeof(hfr_header) + t.n * sizeof(hfr_event)) {
            check(0, NULL, "%s: result file has %zu bytes, expected %zu", what, er.res_size,
                  sizeof(hfr_header) + t.n * sizeof(hfr_event));
            exe_free(&er);
            unlink(path);
            tb_free(&t);
            continue;
        }
        const hfr_event *ev = (const hfr_event *)(h + 1);
        const hfd_crash_record *c = &h->crash;
        /* On threads, trace thread 1 may finish its last event (ci + 1) before thread 2 dies. */
        CHECK(memcmp(h->magic, HFR_MAGIC, 8) == 0 && h->state == HFR_STATE_RUNNING && h->num_events == t.n &&
                  (h->events_done == ci || (threaded && h->events_done == ci + 1)),
              "%s: result header intact, state RUNNING, %lu events done before the crash", what,
              (unsigned long)h->events_done);
        CHECK(c->magic == HFD_CRASH_MAGIC && c->signo == SIGSEGV && c->event_index == ci,
              "%s: crash record complete, event_index %lu == the crashing event %zu", what, (unsigned long)c->event_index, ci);
        CHECK(ev[ci - 1].ptr && ev[ci].ptr == ev[ci - 1].ptr && c->fault_addr == ev[ci].ptr - HAK_HEADER_SIZE &&
                  c->ptr == ev[ci].ptr && c->stage == HAK_AT_MAGIC_READ,
              "%s: fault_addr %#lx == ptr %#lx - %u, stage %s", what, (unsigned long)c->fault_addr,
              (unsigned long)ev[ci].ptr, HAK_HEADER_SIZE, c->stage_name);
        int done = 1;
        for (size_t i = 0; i < ci; i++) done &= ev[i].status == HFR_EV_DONE;
        CHECK(done && ev[ci].status == HFR_EV_STARTED && ev[ci].outcome == HFR_OUT_CRASHED &&
                  (threaded || ev[ci + 1].status == HFR_EV_PENDING),
              "%s: events before it DONE, the crashing one STARTED/crashed%s", what, threaded ? "" : ", the next PENDING");
        hfr_summary s;
        hfd_summarize(ev, t.n, &s);
        CHECK(s.first_anomaly == ci && s.outcome_counts[HFR_OUT_CRASHED] == 1, "%s: summary: first anomaly %lu", what,
              (unsigned long)s.first_anomaly);
        char line[160];
        snprintf(line, sizeof line, "stage=magic_read event=%zu\n", ci);
        check(strstr(er.err, "[hakmem] CRASH: SIGSEGV") && strstr(er.err, line), er.err,
              "%s: stderr has the crash line ending \"%.*s\"", what, (int)strlen(line) - 1, line);
        if (threaded)
            CHECK(h->threads_used == 2 && c->tid != 0 && ev[ci].status == HFR_EV_STARTED,
                  "%s: the crash came from the second trace thread's real thread (threads_used %u)", what, h->threads_used);
        exe_free(&er);

        if (!threaded) {
            /* The same trace with the safe probe (the option overrides the header's knob). */
            char rpath[600];
            snprintf(rpath, sizeof rpath, "%s.res", path);
            const char *a2[] = {path, "--lib", g_lib_path, "--knob", "HAKMEM_HEADER_PROBE=safe", "--results", rpath, NULL};
            run_exe(a2, 0, &er);
            snprintf(d, sizeof d, "status %#x; stderr: %.250s", er.status, er.err);
            check(WIFEXITED(er.status) && WEXITSTATUS(er.status) == 0, d,
                  "--knob HAKMEM_HEADER_PROBE=safe overrides the header's 'off': hfreplay exits 0");
            int fd = open(rpath, O_RDONLY);
            struct stat st;
            void *m = MAP_FAILED;
            if (fd >= 0 && fstat(fd, &st) == 0 && (size_t)st.st_size == sizeof(hfr_header) + t.n * sizeof(hfr_event))
                m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
            if (fd >= 0) close(fd);
            if (m != MAP_FAILED) {
                const hfr_header *h2 = m;
                const hfr_event *e2 = (const hfr_event *)(h2 + 1);
                CHECK(h2->state == HFR_STATE_DONE && h2->events_done == t.n && h2->crash.magic == 0 &&
                          e2[ci].route == HAK_ROUTE_UNMAPPED_HEADER_FALLBACK && e2[ci].action == HAK_ACTION_TINY_FREE &&
                          e2[ci].probe == HAK_PROBE_UNREADABLE && e2[ci].outcome == HFR_OUT_CORRECT &&
                          e2[ci].owner == HAK_OWNER_TINY && e2[ci + 1].outcome == HFR_OUT_CORRECT,
                      "probe safe (--results FILE): the escaped block's free -> unmapped_header_fallback / tiny_free, "
                      "correct (route %s)", route_s(e2[ci].route));
                munmap(m, sizeof(hfr_header) + t.n * sizeof(hfr_event));
            } else {
                check(0, NULL, "--results %s: a result file of the right size", rpath);
            }
            CHECK(strstr(er.out, "unmapped_header_fallback") && strstr(er.out, "correct") &&
                      strstr(er.out, "first anomaly: none"),
                  "hfreplay prints a summary with route and outcome counts");
            unlink(rpath);
        }
        unlink(path);
        tb_free(&t);
    }
}

static void sc_exe_errors(void) {
    exe_run er;
    const char *none[] = {NULL};
    run_exe(none, 0, &er);
    CHECK(WIFEXITED(er.status) && WEXITSTATUS(er.status) == 2 && strstr(er.err, "hfreplay: no trace given") &&
              strchr(er.err, '\n') == er.err + strlen(er.err) - 1,
          "hfreplay without arguments: exit 2 and one line (\"%.*s\")", (int)strcspn(er.err, "\n"), er.err);
    const char *both[] = {"x.htb", "--lib", "a.so", "--libc", NULL};
    run_exe(both, 0, &er);
    CHECK(WIFEXITED(er.status) && WEXITSTATUS(er.status) == 2 && strstr(er.err, "exactly one of --lib"),
          "hfreplay --lib and --libc: exit 2");

    tb t;
    tb_init(&t, "# hakmem-trace v1\n# knob HAKMEM_HEADER_PROBE=safe\n");
    MALLOC(&t, 1, 1, 64);
    MALLOC(&t, 1, 2, 64);
    FREE(&t, 1, 1);
    FREE(&t, 1, 2);
    char path[512];
    tb_write(&t, path, sizeof path);
    const char *libc_args[] = {path, "--libc", NULL};
    run_exe(libc_args, 1, &er);
    CHECK(WIFEXITED(er.status) && WEXITSTATUS(er.status) == 0 && strstr(er.err, "note: --libc: 1 knob ignored") && er.res &&
              er.res->state == HFR_STATE_DONE && strstr(er.out, "allocator libc"),
          "hfreplay --libc: exit 0, knobs ignored with a note (\"%.*s\")", (int)strcspn(er.err, "\n"), er.err);
    exe_free(&er);
    const char *badknob[] = {path, "--lib", g_lib_path, "--knob", "HAKMEM_NO_SUCH=1", NULL};
    run_exe(badknob, 1, &er);
    CHECK(WIFEXITED(er.status) && WEXITSTATUS(er.status) == 3 && strstr(er.err, "unknown knob") && er.res &&
              er.res->state == HFR_STATE_FAILED && strstr(er.res->error, "HAKMEM_NO_SUCH"),
          "hfreplay --knob of an unknown knob: exit 3, FAILED (\"%.*s\")", (int)strcspn(er.err, "\n"), er.err);
    exe_free(&er);
    const char *badlib[] = {path, "--lib", "/nonexistent/libx.so", NULL};
    run_exe(badlib, 1, &er);
    CHECK(WIFEXITED(er.status) && WEXITSTATUS(er.status) == 3 && strstr(er.err, "hfreplay: /nonexistent/libx.so: ") &&
              er.res && er.res->state == HFR_STATE_FAILED,
          "hfreplay with a missing library: exit 3, FAILED (\"%.*s\")", (int)strcspn(er.err, "\n"), er.err);
    exe_free(&er);
    unlink(path);

    /* An unknown op: exit 3, one line naming file, event and byte offset; FAILED with the same reason. */
    t.r[2].op = 77;
    tb_write(&t, path, sizeof path);
    const char *bad[] = {path, "--lib", g_lib_path, NULL};
    run_exe(bad, 1, &er);
    char want[700];
    snprintf(want, sizeof want, "hfreplay: %s: event 2 (byte offset %lu): unknown op 77\n", path,
             (unsigned long)(tb_records_offset(&t) + 2 * sizeof(hft_record)));
    CHECK(WIFEXITED(er.status) && WEXITSTATUS(er.status) == 3 && strcmp(er.err, want) == 0,
          "hfreplay on a trace with an unknown op: exit 3, stderr exactly \"%.*s\" (got \"%.*s\")", (int)strlen(want) - 1,
          want, (int)strcspn(er.err, "\n"), er.err);
    CHECK(er.res && er.res->state == HFR_STATE_FAILED && strcmp(er.res->error, strchr(want + 10, ':') + 2) != 0 &&
              strncmp(er.res->error, "event 2 (byte offset", 20) == 0 && er.res->events_done == 0,
          "... and the result file says FAILED: \"%s\"", er.res ? er.res->error : "(none)");
    exe_free(&er);
    unlink(path);

    /* A truncated file. */
    tb_build(&t);
    t.r[2].op = HFT_OP_FREE;
    tb_build(&t);
    const char *dir = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/hfreplay-test-XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(path);
    ssize_t w = write(fd, t.buf, t.len - 10);
    close(fd);
    run_exe(bad, 1, &er);
    snprintf(want, sizeof want, "byte offset %lu: truncated", (unsigned long)(tb_records_offset(&t) + 3 * sizeof(hft_record)));
    CHECK(w > 0 && WIFEXITED(er.status) && WEXITSTATUS(er.status) == 3 && strstr(er.err, want) && er.res &&
              er.res->state == HFR_STATE_FAILED && strstr(er.res->error, want),
          "hfreplay on a truncated trace: exit 3, \"%.*s\"", (int)strcspn(er.err, "\n"), er.err);
    exe_free(&er);
    unlink(path);
    tb_free(&t);
}

/* ------------------------------------------------------------------ runner */

static void run_scenario(const char *name, void (*fn)(void)) {
    const char *only = getenv("TEST_REPLAY_ONLY");   /* a substring of the scenario names to run */
    if (only && *only && !strstr(name, only)) return;
    printf("# %s\n", name);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
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

/* hfd_check_window / --check-from --check-to: only a window of events is checked. */
/* --time and --floor print one "timing:" line; a result fd that held old bytes ends up with
 * exactly the records of a fresh one (the replay punches it clean or clears it). */
static void sc_exe_timing(void) {
    tb t;
    tb_init(&t, NULL);
    for (uint32_t k = 1; k <= 40; k++) MALLOC(&t, 1, k, 16 + 40 * k);
    for (uint32_t k = 1; k <= 40; k += 2) FREE(&t, 1, k);
    char path[512];
    tb_write(&t, path, sizeof path);
    char want[96];
    snprintf(want, sizeof want, "timing: phase=replay events=%zu seconds=", t.n);
    exe_run er;
    const char *timed[] = {path, "--lib", g_lib_path, "--time", "--quiet", NULL};
    run_exe(timed, 1, &er);
    CHECK(WIFEXITED(er.status) && WEXITSTATUS(er.status) == 0 && strstr(er.out, want) && strstr(er.out, "cpu_seconds=") &&
              !strstr(er.out, "routes") && er.res && er.res->state == HFR_STATE_DONE,
          "hfreplay --time --quiet: exit 0, only the timing line (\"%.*s\")", (int)strcspn(er.out, "\n"), er.out);
    exe_free(&er);
    /* A reused result file: the seed's crash stops the replay early, and every record after the
     * crashing event must still read PENDING (all zero), not the file's old bytes. */
    tb tc;
    size_t ci = crash_trace(&tc, 0);
    char cpath[512];
    tb_write(&tc, cpath, sizeof cpath);
    g_prefill = 8u << 20;   /* bigger than the result file: ftruncate keeps old bytes everywhere */
    const char *crash_args[] = {cpath, "--lib", g_lib_path, "--quiet", NULL};
    run_exe(crash_args, 1, &er);
    size_t dirty = 0, n_after = 0;
    if (er.res) {
        const unsigned char *ev = (const unsigned char *)(er.res + 1);
        for (size_t i = ci + 1; i < tc.n; i++, n_after++)
            for (size_t b = 0; b < sizeof(hfr_event); b++) dirty += ev[i * sizeof(hfr_event) + b] != 0;
    }
    CHECK(WIFSIGNALED(er.status) && WTERMSIG(er.status) == SIGSEGV && er.res && n_after > 0 && dirty == 0,
          "hfreplay crashing on a result fd full of old bytes: the %zu records after the crash read PENDING (%zu nonzero "
          "bytes)", n_after, dirty);
    exe_free(&er);
    unlink(cpath);
    tb_free(&tc);
    snprintf(want, sizeof want, "timing: phase=floor events=%zu seconds=", t.n);
    const char *fl[] = {path, "--lib", g_lib_path, "--floor", NULL};
    run_exe(fl, 1, &er);
    CHECK(WIFEXITED(er.status) && WEXITSTATUS(er.status) == 0 && strstr(er.out, want) && !strstr(er.out, "routes"),
          "hfreplay --floor: exit 0, the timing line (\"%.*s\")", (int)strcspn(er.out, "\n"), er.out);
    exe_free(&er);
    const char *flc[] = {path, "--libc", "--floor", NULL};
    run_exe(flc, 1, &er);
    CHECK(WIFEXITED(er.status) && WEXITSTATUS(er.status) == 0 && strstr(er.out, want),
          "hfreplay --libc --floor: exit 0, the timing line");
    exe_free(&er);
    unlink(path);
    tb_free(&t);
}

static void sc_check_window(void) {
    tb t;
    tb_init(&t, NULL);
    MALLOC(&t, 1, 1, 64);
    MALLOC(&t, 1, 2, 64);
    FREE(&t, 1, 1);
    size_t dbl = DOUBLE_FREE(&t, 1, 1);
    FREE(&t, 1, 2);
    MALLOC(&t, 1, 3, 2000);
    FREE(&t, 1, 3);
    /* {from, to, every, first failure}: every-1 inside the window; every-N counts from `from`
     * and always checks `to`; a window that ends before the double free sees nothing. */
    const struct { uint64_t from, to, every, want; } cases[] = {
        {2, 3, 1, dbl}, {0, 2, 1, UINT64_MAX}, {0, 1, 5, UINT64_MAX}, {1, 6, 3, dbl}, {0, 3, 9, dbl}, {3, 3, 1, dbl},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        hfr_options o = {cases[k].every, 0, 1};
        replay_run rr = {0};
        CHECK(hfd_check_window(cases[k].from, cases[k].to) == HFD_OK, "hfd_check_window(%lu, %lu)",
              (unsigned long)cases[k].from, (unsigned long)cases[k].to);
        run_child(&t, NULL, BIND_LIB, MODE_REPLAY, &o, &rr);
        if (child_ok(&rr, "check window")) {
            int flagged = 0;
            for (size_t i = 0; i < t.n; i++) flagged += rr.ev[i].check_failed;
            CHECK(rr.res->first_check_failure == cases[k].want && flagged == (cases[k].want != UINT64_MAX) &&
                      rr.res->events_done == t.n,
                  "window %lu..%lu every %lu: first failure %ld (got %ld, %d flagged)", (unsigned long)cases[k].from,
                  (unsigned long)cases[k].to, (unsigned long)cases[k].every, (long)cases[k].want,
                  (long)rr.res->first_check_failure, flagged);
        }
        run_free(&rr);
    }
    CHECK(hfd_check_window(4, 3) == HFD_EINVAL && strstr(hfd_last_error(), "after"),
          "hfd_check_window(4, 3): HFD_EINVAL (\"%s\")", hfd_last_error());
    hfd_check_window(0, UINT64_MAX);

    /* The same through the executable's flags. */
    char path[512];
    if (tb_write(&t, path, sizeof path) != 0) { check(0, strerror(errno), "write the window trace"); tb_free(&t); return; }
    exe_run er;
    const char *args[] = {path, "--lib", g_lib_path, "--check-every", "1", "--check-from", "2", "--check-to", "3", NULL};
    run_exe(args, 1, &er);
    CHECK(WIFEXITED(er.status) && WEXITSTATUS(er.status) == 0 && er.res && er.res->first_check_failure == dbl &&
              strstr(er.out, "first check failure: event 3"),
          "hfreplay --check-every 1 --check-from 2 --check-to 3: the double free at event %zu (\"%.*s\")", dbl,
          (int)strcspn(er.err, "\n"), er.err);
    exe_free(&er);
    const char *before[] = {path, "--lib", g_lib_path, "--check-every", "1", "--check-to", "2", NULL};
    run_exe(before, 1, &er);
    CHECK(WIFEXITED(er.status) && WEXITSTATUS(er.status) == 0 && er.res && er.res->first_check_failure == UINT64_MAX &&
              strstr(er.out, "first check failure: none (checked every 1 events from 0 to 2)"),
          "hfreplay --check-to 2: no failure before the double free (\"%s\")", er.out);
    exe_free(&er);
    const char *lonely[] = {path, "--lib", g_lib_path, "--check-from", "2", NULL};
    run_exe(lonely, 0, &er);
    CHECK(WIFEXITED(er.status) && WEXITSTATUS(er.status) == 2 && strstr(er.err, "go with --check-every"),
          "hfreplay --check-from without --check-every: exit 2 (\"%.*s\")", (int)strcspn(er.err, "\n"), er.err);
    const char *reversed[] = {path, "--lib", g_lib_path, "--check-every", "1", "--check-from", "5", "--check-to", "2", NULL};
    run_exe(reversed, 0, &er);
    CHECK(WIFEXITED(er.status) && WEXITSTATUS(er.status) == 2 && strstr(er.err, "is after --check-to"),
          "hfreplay --check-from 5 --check-to 2: exit 2 (\"%.*s\")", (int)strcspn(er.err, "\n"), er.err);
    unlink(path);
    tb_free(&t);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    R = mmap(NULL, sizeof *R, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    g_lib_path = getenv("HAKMEM_LIB");
    if (!g_lib_path || !*g_lib_path) {
        printf("FAIL HAKMEM_LIB is not set\n0 passed, 1 failed\n");
        return 1;
    }
    ssize_t n = readlink("/proc/self/exe", g_exe, sizeof g_exe - 16);
    if (n > 0) {
        g_exe[n] = '\0';
        char *slash = strrchr(g_exe, '/');
        if (slash) strcpy(slash + 1, "hfreplay");
    }
    check(access(g_exe, X_OK) == 0, g_exe, "the hfreplay executable is next to the test (%s)", g_exe);
    void *lib = dlopen(g_lib_path, RTLD_NOW | RTLD_LOCAL);
    check(lib != NULL, dlerror(), "dlopen(%s)", g_lib_path);
    if (!lib) { printf("%d passed, %d failed\n", R->passed, R->failed); return 1; }
    int missing = 0;
#define RES(nm) do { H.nm = (__typeof__(H.nm))dlsym(lib, #nm); if (!H.nm) missing++; } while (0)
    RES(hak_alloc_at); RES(hak_free_at); RES(hak_set_knob); RES(hak_last_error); RES(hak_get_geometry);
    RES(hak_route_ring_get); RES(hak_route_name); RES(hak_action_name); RES(hak_get_stats);
#undef RES
    check(missing == 0, NULL, "the hak_* functions the test needs resolve (%d missing)", missing);
    int rc = hfd_bind_library(g_lib_path);
    check(rc == HFD_OK, hfd_last_error(), "hfd_bind_library(%s)", g_lib_path);
    if (missing || rc != HFD_OK) { printf("%d passed, %d failed\n", R->passed, R->failed); return 1; }
    H.hak_get_geometry(&G);

    run_scenario("summarize", sc_summarize);
    run_scenario("step api", sc_step_api);
    run_scenario("basic paths, stepping, check, no judge, libc", sc_basic);
    run_scenario("forensic ops", sc_forensic);
    run_scenario("leaked and misrouted frees", sc_leaked_misrouted);
    run_scenario("consistency check", sc_check_every);
    run_scenario("threads", sc_threads);
    run_scenario("bad traces", sc_bad_traces);
    run_scenario("hfreplay: registry-escape crash", sc_exe_crash);
    run_scenario("hfreplay: errors", sc_exe_errors);
    run_scenario("consistency check window", sc_check_window);
    run_scenario("hfreplay: --time, --floor, a reused result file", sc_exe_timing);

    printf("%d passed, %d failed\n", R->passed, R->failed);
    return R->failed ? 1 : 0;
}
