/* hfreplay.c - the native replay loop: validates a mapped binary trace, replays it through
 * the bound allocator (in trace order, or on one real thread per trace thread), judges every
 * free against the owner of its block (the oracle) and writes one hfr_event per event.
 * See hftrace.h for the ABI and docs/trace-format.md for the file formats. */
#include "hftrace.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "hakmem.h"
#include "hfd_internal.h"

/* The block a libc_malloc event makes must come from glibc itself, even when the process
 * runs under an LD_PRELOADed allocator that took over malloc(). */
extern void *__libc_malloc(size_t size);

_Static_assert(sizeof(hft_header) == 64, "hft_header is 64 bytes (docs/trace-format.md)");
_Static_assert(sizeof(hft_record) == 48, "hft_record is 48 bytes (docs/trace-format.md)");
_Static_assert(sizeof(hfr_event) == 48, "hfr_event is 48 bytes");
_Static_assert(HAK_ROUTE_COUNT <= 32, "hfr_summary.route_counts has 32 slots");

#define NO_EVENT UINT64_MAX
#define NO_SLOT UINT32_MAX
#define MAX_TRACE_THREADS 1024u       /* distinct trace tids replayed at once */
#define WORKER_STACK_SIZE (1u << 20)
#define ALT_STACK_SIZE (64u * 1024u)
#define WHY_CAP 200
#define PREFETCH_AHEAD 16             /* events: the serial loop's prefetch distance */

static const char *const k_op_names[HFT_OP_COUNT] = {
    "op 0", "malloc", "calloc", "realloc", "memalign", "free", "thread_end", "free_interior", "double_free",
    "free_raw", "libc_malloc", "free_libc", "corrupt"};

/* ------------------------------------------------------------ object table */

/* What the validation knows of an id, in trace order. */
enum vstate { VS_NEVER = 0, VS_LIVE = 1, VS_LIVE_LIBC = 2, VS_FREED = 3 };

typedef struct obj_ent {
    uintptr_t ptr;     /* current block; kept after the free (double_free frees it again) */
    uint64_t last1;    /* 1 + index of the last event that touched the id, 0 = none */
    uint8_t vstate;    /* enum vstate */
    uint8_t owner;     /* owner at allocation: hak_owner_kind / HFR_OWNER_* */
    uint8_t pad[6];
} obj_ent;

static int is_live(const obj_ent *e) { return e->vstate == VS_LIVE || e->vstate == VS_LIVE_LIBC; }
static uint64_t last_of(const obj_ent *e) { return e->last1 ? e->last1 - 1 : NO_EVENT; }

static void describe(const obj_ent *e, char *buf, size_t cap) {
    switch (e->vstate) {
    case VS_NEVER: snprintf(buf, cap, "never allocated"); break;
    case VS_FREED: snprintf(buf, cap, "already freed; last used by event %llu", (unsigned long long)last_of(e)); break;
    default: snprintf(buf, cap, "live; last used by event %llu", (unsigned long long)last_of(e)); break;
    }
}

static int why_fail(char *why, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int why_fail(char *why, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, WHY_CAP, fmt, ap);
    va_end(ap);
    return -1;
}

/* Checks that record r (event i) makes sense given what came before, then advances the
 * table's validation state. deps[] receives the events that last touched the objects r uses
 * (NO_EVENT if none): a threaded replay waits for them. On error nothing is changed. */
static int apply_record(obj_ent *t, uint32_t nobj, const hft_record *r, uint64_t i, char *why, uint64_t deps[2]) {
    uint8_t op = r->op;
    char st[96];
    deps[0] = deps[1] = NO_EVENT;
    if (op == 0 || op >= HFT_OP_COUNT) return why_fail(why, "unknown op %u", op);
    const char *name = k_op_names[op];
    if (r->obj > nobj)
        return why_fail(why, "%s: object id %u is out of range (the header says %u objects)", name, r->obj, nobj);
    if (r->obj2 > nobj)
        return why_fail(why, "%s: old object id %u is out of range (the header says %u objects)", name, r->obj2, nobj);
    obj_ent *e = r->obj ? &t[r->obj] : NULL, *e2 = r->obj2 ? &t[r->obj2] : NULL;
    uint64_t me = i + 1;
    switch (op) {
    case HFT_OP_MALLOC:
    case HFT_OP_CALLOC:
    case HFT_OP_MEMALIGN:
    case HFT_OP_LIBC_MALLOC:
        if (!e) return why_fail(why, "%s needs an object id (got 0)", name);
        if (is_live(e)) { describe(e, st, sizeof st); return why_fail(why, "%s of object %u which is %s", name, r->obj, st); }
        deps[0] = last_of(e);
        e->vstate = op == HFT_OP_LIBC_MALLOC ? VS_LIVE_LIBC : VS_LIVE;
        e->last1 = me;
        return 0;
    case HFT_OP_REALLOC:
        if (!e2) {
            if (!e) return why_fail(why, "realloc names neither a new nor an old object");
            if (is_live(e)) {
                describe(e, st, sizeof st);
                return why_fail(why, "realloc of NULL into object %u which is %s", r->obj, st);
            }
            deps[0] = last_of(e);
            e->vstate = VS_LIVE;
            e->last1 = me;
            return 0;
        }
        if (!is_live(e2)) {
            describe(e2, st, sizeof st);
            return why_fail(why, "realloc of object %u which is not live (%s)", r->obj2, st);
        }
        if (r->size == 0) {
            if (e) return why_fail(why, "realloc of object %u to size 0 frees it: the new object id must be 0 (got %u)",
                                   r->obj2, r->obj);
            deps[0] = last_of(e2);
            e2->vstate = VS_FREED;
            e2->last1 = me;
            return 0;
        }
        if (!e) return why_fail(why, "realloc of object %u to %llu bytes needs a new object id (got 0)", r->obj2,
                                (unsigned long long)r->size);
        if (e != e2 && is_live(e)) {
            describe(e, st, sizeof st);
            return why_fail(why, "realloc of object %u into object %u which is %s", r->obj2, r->obj, st);
        }
        deps[0] = last_of(e2);
        if (e != e2) {
            deps[1] = last_of(e);
            e2->vstate = VS_FREED;
            e2->last1 = me;
        }
        e->vstate = VS_LIVE;
        e->last1 = me;
        return 0;
    case HFT_OP_FREE:
        if (!e) return 0;   /* free(NULL) */
        if (!is_live(e)) { describe(e, st, sizeof st); return why_fail(why, "free of object %u which is not live (%s)", r->obj, st); }
        deps[0] = last_of(e);
        e->vstate = VS_FREED;
        e->last1 = me;
        return 0;
    case HFT_OP_FREE_LIBC:
        if (!e) return why_fail(why, "free_libc needs an object id (got 0)");
        if (e->vstate == VS_LIVE)
            return why_fail(why, "free_libc of object %u which comes from the allocator under test, not from libc_malloc",
                            r->obj);
        if (e->vstate != VS_LIVE_LIBC) {
            describe(e, st, sizeof st);
            return why_fail(why, "free_libc of object %u which is not live (%s)", r->obj, st);
        }
        deps[0] = last_of(e);
        e->vstate = VS_FREED;
        e->last1 = me;
        return 0;
    case HFT_OP_FREE_INTERIOR:
    case HFT_OP_CORRUPT:
        if (!e) return why_fail(why, "%s needs an object id (got 0)", name);
        if (!is_live(e)) { describe(e, st, sizeof st); return why_fail(why, "%s of object %u which is not live (%s)", name, r->obj, st); }
        if (op == HFT_OP_CORRUPT && (r->size < 1 || r->size > 8))
            return why_fail(why, "corrupt of object %u writes %llu bytes; LEN must be 1..8", r->obj,
                            (unsigned long long)r->size);
        deps[0] = last_of(e);
        e->last1 = me;
        return 0;
    case HFT_OP_DOUBLE_FREE:
        if (!e) return why_fail(why, "double_free needs an object id (got 0)");
        if (e->vstate == VS_NEVER) return why_fail(why, "double_free of object %u which was never allocated", r->obj);
        if (is_live(e)) {
            describe(e, st, sizeof st);
            return why_fail(why, "double_free of object %u which is %s: only a freed object can be freed again", r->obj, st);
        }
        deps[0] = last_of(e);
        e->last1 = me;
        return 0;
    default:   /* free_raw, thread_end: no object */
        return 0;
    }
}

/* apply_record for the two events that make up most traces, when valid: a malloc of an object
 * that is not live, a free of one that is (or of NULL). 1 if done (same effect as apply_record),
 * 0 to let apply_record check (and explain) everything else. Branch-free on the op: a trace's
 * mallocs and frees interleave at random, and a mispredicted branch per event cost more than
 * the rest of the check. t[0] is a spare entry: free(NULL) writes it, nothing reads it. */
static inline int apply_common(obj_ent *t, uint32_t nobj, const hft_record *r, uint64_t i, uint64_t deps[2]) {
    uint32_t id = r->obj;
    if ((id > nobj) | (r->obj2 > nobj)) return 0;
    obj_ent *e = &t[id];
    uint32_t is_m = r->op == HFT_OP_MALLOC, is_f = r->op == HFT_OP_FREE, some = id != 0;
    uint32_t live = (uint8_t)(e->vstate - VS_LIVE) <= (uint8_t)(VS_LIVE_LIBC - VS_LIVE);
    /* valid: malloc (1) of some id not live: index 0b0101; free (2) of no id (0b1000, 0b1010) or of
     * a live one (0b1011). A bit mask, so that the compiler makes no branch of it. */
    uint32_t idx = ((is_m | is_f << 1) << 2) | live << 1 | some;
    if (__builtin_expect(!((0xD20u >> idx) & 1u), 0)) return 0;
    uint64_t last = e->last1 - 1;   /* last_of(e): wraps to NO_EVENT when last1 is 0 */
    deps[0] = some ? last : NO_EVENT;
    deps[1] = NO_EVENT;
    e->vstate = is_m ? VS_LIVE : VS_FREED;
    e->last1 = i + 1;
    return 1;
}

/* ------------------------------------------------------------ trace header */

typedef struct trace_view {
    const hft_header *h;
    const hft_record *recs;
    uint64_t n;
    uint32_t nobj;
} trace_view;

static void printable(const char *src, size_t n, char *dst, size_t cap) {
    size_t o = 0;
    for (size_t k = 0; k < n && o + 5 < cap; k++) {
        unsigned char ch = (unsigned char)src[k];
        if (ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\') dst[o++] = (char)ch;
        else o += (size_t)snprintf(dst + o, cap - o, "\\x%02x", ch);
    }
    dst[o] = '\0';
}

/* Header and size checks; msg gets "byte offset N: reason". */
static int check_header(const void *trace, uint64_t len, trace_view *tv, char *msg, size_t cap) {
    if (!trace) { snprintf(msg, cap, "no trace (NULL)"); return -1; }
    if ((uintptr_t)trace % 8) { snprintf(msg, cap, "trace buffer at %p is not 8-byte aligned", trace); return -1; }
    if (len < sizeof(hft_header)) {
        snprintf(msg, cap, "byte offset %llu: truncated: the file ends inside the %zu-byte header",
                 (unsigned long long)len, sizeof(hft_header));
        return -1;
    }
    const hft_header *h = trace;
    if (memcmp(h->magic, HFT_MAGIC, sizeof h->magic) != 0) {
        char got[48];
        printable(h->magic, sizeof h->magic, got, sizeof got);
        snprintf(msg, cap, "byte offset 0: bad magic \"%s\" (expected \"HKTRACE\\x00\"): not a binary trace", got);
        return -1;
    }
    if (h->version != HFT_VERSION) {
        snprintf(msg, cap, "byte offset 8: unsupported version %u (this replay reads version %u)", h->version, HFT_VERSION);
        return -1;
    }
    if (h->record_size != sizeof(hft_record)) {
        snprintf(msg, cap, "byte offset 12: record size %u (expected %zu)", h->record_size, sizeof(hft_record));
        return -1;
    }
    uint64_t text_end = sizeof(hft_header) + (uint64_t)h->text_len;
    if (h->records_offset % 8 || h->records_offset < text_end) {
        snprintf(msg, cap, "byte offset 32: records offset %llu is %s", (unsigned long long)h->records_offset,
                 h->records_offset % 8 ? "not a multiple of 8" : "inside the header text");
        return -1;
    }
    if (text_end > len || h->records_offset > len) {
        snprintf(msg, cap, "byte offset %llu: truncated: the header text and padding run to byte offset %llu",
                 (unsigned long long)len, (unsigned long long)h->records_offset);
        return -1;
    }
    uint64_t room = (len - h->records_offset) / sizeof(hft_record);
    if (h->num_events > room) {
        uint64_t whole = h->records_offset + room * sizeof(hft_record);
        snprintf(msg, cap, "byte offset %llu: truncated: the header declares %llu events but the file holds %llu%s",
                 (unsigned long long)(whole < len ? whole : len), (unsigned long long)h->num_events,
                 (unsigned long long)room, whole < len ? " and part of the next" : "");
        return -1;
    }
    uint64_t end = h->records_offset + h->num_events * sizeof(hft_record);
    if (end != len) {
        snprintf(msg, cap, "byte offset %llu: %llu bytes after the last of the %llu events the header declares",
                 (unsigned long long)end, (unsigned long long)(len - end), (unsigned long long)h->num_events);
        return -1;
    }
    tv->h = h;
    tv->recs = (const hft_record *)((const char *)trace + h->records_offset);
    tv->n = h->num_events;
    tv->nobj = h->num_objects;
    return 0;
}

static uint64_t byte_offset(const trace_view *tv, uint64_t i) { return tv->h->records_offset + i * sizeof(hft_record); }

/* ------------------------------------------------------------ replay state */

typedef struct tslot {         /* one incarnation of a trace thread: one pthread */
    uint32_t chain;            /* its trace tid's chain */
    uint32_t seq;              /* which incarnation of its chain (0 = first) */
    uint32_t next;             /* the next incarnation of the same tid (after a thread_end), NO_SLOT */
    uint64_t start, n;         /* its events: order[start .. start+n) */
    pthread_t th;
    pthread_t pred;            /* the incarnation it follows; joined first */
    int has_pred;
    struct replay_ctx *c;
} tslot;

typedef struct tchain {        /* the incarnations of one trace tid */
    uint32_t tid;
    uint32_t first, cur;       /* first slot; slot being filled while planning */
    int ended;                 /* planning: cur ended with a thread_end */
    uint32_t total, created;
    int failed;                /* a later incarnation will never be created */
    pthread_t last;            /* the newest created one: nobody else joins it */
    void *stack[2];            /* mapped before the replay starts; incarnations alternate */
    void *alt;                 /* alternate signal stack for the crash handler, or NULL */
} tchain;

typedef struct replay_ctx {
    hfd_vtable vt;
    hfd_owner_kind_fn owner_kind;   /* the library's hak_owner_kind, or NULL: then vt.owner() */
    hfd_owner_kind_fn alloc_owner_kind;          /* hak_alloc_owner_kind, or NULL */
    hfd_free_owner_kind_fn free_owner_kind;      /* hak_free_owner_kind_at, or NULL */
    int binding;
    int judge;                 /* the oracle may call vt.owner() */
    uint64_t check_every;
    uint64_t check_from, check_to;   /* hfd_check_window: only events from..to are checked */
    obj_ent *objs;
    uint32_t nobj;
    /* consistency check: the first failure */
    pthread_mutex_t check_lock;
    int check_seen;
    uint64_t first_check;
    char check_msg[256];
    /* hfd_replay only */
    hfr_header *res;
    hfr_event *events;
    const hft_record *recs;
    uint64_t n;
    /* threaded */
    uint64_t *deps;            /* 2 per event */
    uint64_t *order;           /* event indexes grouped by slot */
    tslot *slots;
    uint32_t nslots;
    tchain *chains;
    uint32_t nchains;
    volatile int abort;
    uint32_t go;               /* futex word: 1 once every first thread exists */
    uint32_t gen;              /* futex word: bumped after every finished event */
    uint32_t waiters;
    pthread_mutex_t spawn_lock;
    pthread_cond_t spawn_cond;
    char thread_err[256];
} replay_ctx;

/* hfd_check_window: the events the following replays check (all of them by default). */
static uint64_t g_check_from = 0, g_check_to = UINT64_MAX;

static void ctx_setup(replay_ctx *c, const hfd_vtable *vt, int binding, const hfr_options *opts) {
    c->vt = *vt;
    c->owner_kind = vt->owner ? hfd__owner_kind() : NULL;
    c->alloc_owner_kind = c->owner_kind ? hfd__alloc_owner_kind() : NULL;
    c->free_owner_kind = c->owner_kind ? hfd__free_owner_kind() : NULL;
    c->binding = binding;
    c->judge = opts->judge && vt->owner != NULL;
    c->check_every = vt->debug_check ? opts->check_every : 0;
    c->check_from = g_check_from;
    c->check_to = g_check_to;
    c->check_seen = 0;
    c->first_check = NO_EVENT;
    c->check_msg[0] = '\0';
}

static const hfr_options k_default_options = {0, 0, 1, 0};

/* ------------------------------------------------------------------ oracle */

/* fresh: p was just returned by malloc, calloc or memalign on this thread (not realloc, which
 * frees too): the allocator can answer from what that allocation made (hak_alloc_owner_kind). */
static uint8_t owner_at_alloc(const replay_ctx *c, void *p, int from_libc, int fresh) {
    if (!p) return HAK_OWNER_NONE;
    if (from_libc || c->binding == HFD_BOUND_LIBC) return HFR_OWNER_LIBC;
    if (!c->judge) return HFR_OWNER_UNKNOWN;
    if (c->owner_kind) {
        uint32_t k = (fresh && c->alloc_owner_kind ? c->alloc_owner_kind(p) : c->owner_kind(p)) & HAK_OWNER_KIND_MASK;
        return k > HAK_OWNER_MALLOC ? HFR_OWNER_UNKNOWN : (uint8_t)k;
    }
    hak_owner_info o;
    if (c->vt.owner(p, &o) != 0 || o.kind > HAK_OWNER_MALLOC) return HFR_OWNER_UNKNOWN;
    return (uint8_t)o.kind;
}

/* 1 if, just before its free, the block is no longer live in the owner that made it
 * (its SuperSlab was released early, an earlier bad free took it, ...). */
static int lost_before_free(const replay_ctx *c, uintptr_t p, uint8_t owner) {
    if (!c->judge || !p || owner < HAK_OWNER_TINY || owner > HAK_OWNER_MALLOC) return 0;
    if (c->owner_kind) {
        uint32_t k = c->owner_kind((const void *)p);
        return (k & HAK_OWNER_KIND_MASK) != owner || !(k & HAK_OWNER_LIVE_BLOCK);
    }
    hak_owner_info o;
    if (c->vt.owner((const void *)p, &o) != 0) return 0;
    return o.kind != owner || o.state != HAK_BLOCK_LIVE || o.block_ptr != p;
}

static int action_fits(uint8_t owner, uint32_t action) {
    switch (owner) {
    case HAK_OWNER_TINY: return action == HAK_ACTION_TINY_FREE;
    case HAK_OWNER_MID: return action == HAK_ACTION_POOL_FREE;
    case HAK_OWNER_L25: return action == HAK_ACTION_L25_FREE;
    case HAK_OWNER_MMAP:
        return action == HAK_ACTION_BIGCACHE_PUT || action == HAK_ACTION_BATCH_ADD || action == HAK_ACTION_WHALE_PUT ||
               action == HAK_ACTION_MUNMAP;
    case HAK_OWNER_MALLOC: return action == HAK_ACTION_LIBC_FREE_RAW;
    case HFR_OWNER_LIBC: return action == HAK_ACTION_LIBC_FREE_PTR;
    case HFR_OWNER_UNKNOWN: return 1;   /* nothing to compare with: judged by route alone */
    default: return 0;                  /* the allocator did not own its own block */
    }
}

static int invalid_magic_route(uint32_t route) {
    return route == HAK_ROUTE_INVALID_MAGIC_TINY_RECOVERY || route == HAK_ROUTE_INVALID_MAGIC_SKIP ||
           route == HAK_ROUTE_INVALID_MAGIC_LIBC;
}

/* A legitimate free (free, free_libc, realloc's implicit free). d is NULL when the allocator
 * reported no decision for it (libc, or an allocator without hak_last_free_decision). */
static uint8_t judge_free(const replay_ctx *c, uintptr_t p, const hak_free_decision *d, int lost, uint8_t owner) {
    if (!p) return HFR_OUT_CORRECT;
    if (!d) return lost ? HFR_OUT_LEAKED : HFR_OUT_CORRECT;
    if (invalid_magic_route(d->route)) return HFR_OUT_INVALID_MAGIC;
    if (d->action == HAK_ACTION_NONE || lost) return HFR_OUT_LEAKED;
    return action_fits(c->judge ? owner : HFR_OWNER_UNKNOWN, d->action) ? HFR_OUT_CORRECT : HFR_OUT_MISROUTED;
}

/* free_interior, double_free, free_raw: refusing is right, acting on it is not. Without a
 * decision there is no evidence of a refusal. */
static uint8_t judge_forensic(const hak_free_decision *d) {
    if (d && d->action == HAK_ACTION_NONE) return HFR_OUT_DETECTED_INVALID;
    return HFR_OUT_MISROUTED;
}

/* -------------------------------------------------------------- one event */

static uint64_t decision_seq(const replay_ctx *c) {
    hak_free_decision d;
    if (c->vt.last_free_decision && c->vt.last_free_decision(&d) == 0) return d.seq;
    return 0;
}

/* The decision of the call that just returned, if it made one (its seq moved). */
static const hak_free_decision *new_decision(const replay_ctx *c, uint64_t before, hak_free_decision *d) {
    if (!c->vt.last_free_decision || c->vt.last_free_decision(d) != 0 || d->seq == before) return NULL;
    return d;
}

/* d was just written by the allocator field by field (hak_last_free_decision): read it the same
 * way (volatile stops the compiler merging the loads), or a wide load over narrow stores stalls
 * on store forwarding, once per free. */
static void fill_decision(hfr_event *ev, const volatile hak_free_decision *d) {
    ev->seq = d->seq;
    ev->route = d->route;
    ev->action = d->action;
    ev->stages_tried = d->stages_tried;
    ev->stages_hit = d->stages_hit;
    ev->probe = d->probe;
    ev->magic_found = d->magic_found;
    ev->method = d->method;
}

/* corrupt is meant to write out of bounds: keep the sanitizers out of it. */
__attribute__((noinline, no_sanitize_address)) static void corrupt_write(uintptr_t addr, uint64_t value, uint64_t len) {
    volatile uint8_t *dst = (volatile uint8_t *)addr;
    for (uint64_t k = 0; k < len; k++) dst[k] = (uint8_t)(value >> (8 * k));
}

static void *do_calloc(const replay_ctx *c, uint64_t nmemb, uint64_t size, uintptr_t site) {
    if (c->vt.calloc) return c->vt.calloc((size_t)nmemb, (size_t)size, site);
    size_t total;
    if (__builtin_mul_overflow((size_t)nmemb, (size_t)size, &total)) return NULL;
    void *p = c->vt.alloc(total, site);
    if (p) memset(p, 0, total ? total : 1);
    return p;
}

/* The replay of one event, shared by hfd_replay and hfd_step. r was validated against the
 * object table. While it runs the record says STARTED with outcome CRASHED (what stays in
 * the result file if the process dies here); it ends DONE with the real outcome. The record is
 * written field by field (a whole-struct copy from the stack stalls on store forwarding after
 * the byte fields are set). seen: the seq of the calling thread's last free
 * decision, kept by the caller across the events it runs (the loop's threads make every call
 * into the allocator themselves); NULL: ask the allocator (the stepping path, whose caller may
 * free in between). */
static void exec_event(replay_ctx *c, const hft_record *r, uint64_t i, hfr_event *ev, uint64_t *seen) {
    obj_ent *o = r->obj ? &c->objs[r->obj] : NULL;
    obj_ent *o2 = r->obj2 ? &c->objs[r->obj2] : NULL;
    uintptr_t site = (uintptr_t)r->site;
    hak_free_decision dbuf;
    const hak_free_decision *d = NULL;
    uint8_t owner = HAK_OWNER_NONE, outcome = HFR_OUT_NONE;
    uintptr_t fptr = 0;   /* the pointer handed to free, visible while the event runs */
    uint8_t fowner = HAK_OWNER_NONE;

    hfd__t_event_index = i;
    switch (r->op) {
    case HFT_OP_FREE:
    case HFT_OP_FREE_LIBC:
    case HFT_OP_DOUBLE_FREE: fptr = o ? o->ptr : 0; fowner = o ? o->owner : HAK_OWNER_NONE; break;
    case HFT_OP_FREE_INTERIOR: fptr = o->ptr + (uintptr_t)r->arg; fowner = o->owner; break;
    case HFT_OP_FREE_RAW: fptr = (uint64_t)r->arg; break;
    case HFT_OP_REALLOC: fptr = o2 ? o2->ptr : 0; fowner = o2 ? o2->owner : HAK_OWNER_NONE; break;
    default: break;
    }
    /* STARTED; the allocator call below cannot be moved above these stores */
    ev->ptr = fptr;
    ev->seq = 0;
    ev->route = ev->action = ev->stages_tried = ev->stages_hit = 0;
    ev->probe = HAK_PROBE_NOT_RUN;
    ev->magic_found = 0;
    ev->method = -1;
    ev->owner = fowner;
    ev->outcome = HFR_OUT_CRASHED;
    ev->check_failed = 0;
    __atomic_store_n(&ev->status, (uint8_t)HFR_EV_STARTED, __ATOMIC_RELEASE);

    switch (r->op) {
    case HFT_OP_MALLOC:
    case HFT_OP_CALLOC:
    case HFT_OP_MEMALIGN:
    case HFT_OP_LIBC_MALLOC: {
        void *p;
        if (r->op == HFT_OP_MALLOC) p = c->vt.alloc((size_t)r->size, site);
        else if (r->op == HFT_OP_CALLOC) p = do_calloc(c, (uint64_t)r->arg, r->size, site);
        else if (r->op == HFT_OP_MEMALIGN) p = c->vt.memalign((size_t)r->arg, (size_t)r->size, site);
        else p = c->binding == HFD_BOUND_LIBC ? c->vt.alloc((size_t)r->size, site) : __libc_malloc((size_t)r->size);
        owner = owner_at_alloc(c, p, r->op == HFT_OP_LIBC_MALLOC, 1);
        o->ptr = (uintptr_t)p;
        o->owner = owner;
        ev->ptr = (uintptr_t)p;
        break;
    }
    case HFT_OP_REALLOC: {
        uintptr_t old = o2 ? o2->ptr : 0;
        uint8_t old_owner = o2 ? o2->owner : HAK_OWNER_NONE;
        int lost = lost_before_free(c, old, old_owner);
        uint64_t before = seen ? *seen : decision_seq(c);
        void *p = c->vt.realloc((void *)old, (size_t)r->size, site);
        d = new_decision(c, before, &dbuf);
        if (o) {
            owner = owner_at_alloc(c, p, 0, 0);
            o->ptr = (uintptr_t)p;
            o->owner = owner;
        } else {
            owner = old_owner;
        }
        ev->ptr = (uintptr_t)p;
        if (d) {
            fill_decision(ev, d);
            outcome = judge_free(c, old, d, lost, old_owner);
        } else if (old && !c->vt.last_free_decision && (p || r->size == 0)) {
            outcome = judge_free(c, old, NULL, lost, old_owner);   /* libc: the old block went back */
        }
        break;
    }
    case HFT_OP_FREE:
    case HFT_OP_FREE_LIBC: {
        uintptr_t p = o ? o->ptr : 0;
        owner = o ? o->owner : HAK_OWNER_NONE;
        int lost;
        uint64_t before = seen ? *seen : decision_seq(c);
        if (c->free_owner_kind && c->judge && p && owner >= HAK_OWNER_TINY && owner <= HAK_OWNER_MALLOC) {
            /* lost_before_free's question and the free, in one call */
            uint32_t k = c->free_owner_kind((void *)p, 0, site);
            lost = (k & HAK_OWNER_KIND_MASK) != owner || !(k & HAK_OWNER_LIVE_BLOCK);
        } else {
            lost = lost_before_free(c, p, owner);
            c->vt.free((void *)p, 0, site);
        }
        d = new_decision(c, before, &dbuf);
        if (d) fill_decision(ev, d);
        outcome = judge_free(c, p, d, lost, owner);
        break;
    }
    case HFT_OP_FREE_INTERIOR:
    case HFT_OP_DOUBLE_FREE:
    case HFT_OP_FREE_RAW: {
        uintptr_t p = fptr;
        if (r->op != HFT_OP_FREE_RAW) {
            owner = o->owner;
        } else {
            owner = HFR_OWNER_UNKNOWN;   /* no object: say who owns the address, if we can ask */
            hak_owner_info oi;
            if (c->judge && c->owner_kind) {
                uint32_t k = c->owner_kind((const void *)p) & HAK_OWNER_KIND_MASK;
                if (k <= HAK_OWNER_MALLOC) owner = (uint8_t)k;
            } else if (c->judge && c->vt.owner((const void *)p, &oi) == 0 && oi.kind <= HAK_OWNER_MALLOC) {
                owner = (uint8_t)oi.kind;
            }
        }
        uint64_t before = seen ? *seen : decision_seq(c);
        c->vt.free((void *)p, 0, site);
        d = new_decision(c, before, &dbuf);
        if (d) fill_decision(ev, d);
        outcome = judge_forensic(d);
        break;
    }
    case HFT_OP_CORRUPT:
        owner = o->owner;
        if (o->ptr) corrupt_write(o->ptr + (uintptr_t)r->arg, r->value, r->size);
        break;
    default:   /* thread_end */
        break;
    }
    if (d && seen) *seen = d->seq;
    ev->owner = owner;
    ev->outcome = outcome;
    __atomic_store_n(&ev->status, (uint8_t)HFR_EV_DONE, __ATOMIC_RELEASE);   /* a threaded run_one fences after it */
}

/* The consistency check after event i (every check_every events counted from check_from,
 * and after check_to, until the first failure). With the default window it is every event
 * whose index + 1 is a multiple of check_every. */
static void check_after(replay_ctx *c, uint64_t i, hfr_event *ev) {
    if (!c->check_every || i < c->check_from || i > c->check_to) return;
    if ((i - c->check_from + 1) % c->check_every && i != c->check_to) return;
    if (__atomic_load_n(&c->check_seen, __ATOMIC_ACQUIRE)) return;
    char msg[256];
    msg[0] = '\0';
    if (c->vt.debug_check(msg, sizeof msg) == 0) return;
    msg[sizeof msg - 1] = '\0';
    pthread_mutex_lock(&c->check_lock);
    if (!c->check_seen) {
        c->first_check = i;
        snprintf(c->check_msg, sizeof c->check_msg, "%s", msg[0] ? msg : "consistency check failed (no message)");
        ev->check_failed = 1;
        if (c->res) {
            memcpy(c->res->check_msg, c->check_msg, sizeof c->res->check_msg);
            c->res->first_check_failure = i;
        }
        __atomic_store_n(&c->check_seen, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&c->check_lock);
}

/* --------------------------------------------------------------- threads */

static long futex(uint32_t *addr, int op, uint32_t val, const struct timespec *ts) {
    return syscall(SYS_futex, addr, op, val, ts, NULL, 0);
}

static void wake_waiters(replay_ctx *c) {
    __atomic_fetch_add(&c->gen, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&c->waiters, __ATOMIC_SEQ_CST)) futex(&c->gen, FUTEX_WAKE_PRIVATE, INT_MAX, NULL);
}

static int is_done(const replay_ctx *c, uint64_t e) {
    return __atomic_load_n(&c->events[e].status, __ATOMIC_SEQ_CST) == HFR_EV_DONE;
}

/* Waits until event e is DONE; -1 if the replay was aborted meanwhile. */
static int wait_done(replay_ctx *c, uint64_t e) {
    if (e == NO_EVENT || is_done(c, e)) return 0;
    for (int spin = 0; spin < 200; spin++) {
        if (is_done(c, e)) return 0;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    /* The finisher marks DONE, bumps gen, then reads waiters; we count ourselves in, then
     * look at the status again: one of the two sides always sees the other. */
    const struct timespec tick = {0, 10 * 1000 * 1000};
    for (;;) {
        if (is_done(c, e)) return 0;
        if (__atomic_load_n(&c->abort, __ATOMIC_SEQ_CST)) return -1;
        uint32_t g = __atomic_load_n(&c->gen, __ATOMIC_SEQ_CST);
        __atomic_fetch_add(&c->waiters, 1, __ATOMIC_SEQ_CST);
        if (!is_done(c, e) && !__atomic_load_n(&c->abort, __ATOMIC_SEQ_CST))
            futex(&c->gen, FUTEX_WAIT_PRIVATE, g, &tick);
        __atomic_fetch_sub(&c->waiters, 1, __ATOMIC_SEQ_CST);
    }
}

/* seen: the calling thread's last decision seq (exec_event). Serially, event i is the
 * (i+1)th done; on threads the count is shared, and the DONE store must be visible before
 * wake_waiters reads the waiter count (wait_done's side of the handshake). */
static void run_one(replay_ctx *c, uint64_t i, int threaded, uint64_t *seen) {
    hfr_event *ev = &c->events[i];
    exec_event(c, &c->recs[i], i, ev, seen);
    if (threaded) {
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        __atomic_fetch_add(&c->res->events_done, 1, __ATOMIC_SEQ_CST);
        wake_waiters(c);
    } else {
        __atomic_store_n(&c->res->events_done, i + 1, __ATOMIC_RELEASE);
    }
    if (c->check_every) check_after(c, i, ev);
}

static void *worker(void *arg);

static size_t worker_stack_size(void) {
    size_t sz = WORKER_STACK_SIZE;
    if (sz < (size_t)PTHREAD_STACK_MIN) sz = (size_t)PTHREAD_STACK_MIN;
    return sz;
}

static size_t alt_stack_size(void) {
    size_t sz = ALT_STACK_SIZE;
    if ((size_t)SIGSTKSZ > sz) sz = (size_t)SIGSTKSZ;
    return sz;
}

/* Starts slot s on its chain's pre-mapped stack: creating a thread maps nothing new. */
static int spawn(replay_ctx *c, tslot *s) {
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) != 0) return ENOMEM;
    int rc = pthread_attr_setstack(&attr, c->chains[s->chain].stack[s->seq % 2], worker_stack_size());
    s->c = c;
    if (rc == 0) rc = pthread_create(&s->th, &attr, worker, s);
    pthread_attr_destroy(&attr);
    return rc;
}

static void abort_replay(replay_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void abort_replay(replay_ctx *c, const char *fmt, ...) {
    if (!__atomic_exchange_n(&c->abort, 1, __ATOMIC_SEQ_CST)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->thread_err, sizeof c->thread_err, fmt, ap);
        va_end(ap);
    }
    wake_waiters(c);
}

/* The allocator under test must find the address space as a serial replay leaves it: a
 * mapping made by the replay machinery while events run could fill the very hole a wild
 * header read should fault in. So the stacks are mapped before anything runs, each thread
 * touches its thread-local storage (the driver's and the allocator's, whose first use may
 * allocate) before the start gate, and no thread runs an event before all first threads
 * exist. Only a tid that comes back after its thread_end starts a thread mid-replay. */
static void *worker(void *arg) {
    tslot *s = arg;
    replay_ctx *c = s->c;
    tchain *ch = &c->chains[s->chain];
    /* A real thread starts after the previous thread of its tid fully exited. */
    if (s->has_pred) pthread_join(s->pred, NULL);
    hfd_set_event_index(NO_EVENT);
    if (c->vt.debug_free_state) (void)c->vt.debug_free_state();
    uint64_t seen = decision_seq(c);   /* also touches the allocator's thread state */
    /* Threads do not inherit the alternate signal stack; the crash handler needs one. */
    stack_t old_ss = {.ss_sp = NULL, .ss_flags = SS_DISABLE, .ss_size = 0};
    int alt_set = 0;
    if (ch->alt) {
        stack_t ss = {.ss_sp = ch->alt, .ss_flags = 0, .ss_size = alt_stack_size()};
        alt_set = sigaltstack(&ss, &old_ss) == 0;
    }
    while (!__atomic_load_n(&c->go, __ATOMIC_SEQ_CST)) futex(&c->go, FUTEX_WAIT_PRIVATE, 0, NULL);
    for (uint64_t k = 0; k < s->n; k++) {
        uint64_t i = c->order[s->start + k];
        if (__atomic_load_n(&c->abort, __ATOMIC_SEQ_CST)) break;
        if (wait_done(c, c->deps[2 * i]) || wait_done(c, c->deps[2 * i + 1])) break;
        run_one(c, i, 1, &seen);
    }
    hfd_set_event_index(NO_EVENT);
    if (alt_set) {
        if (old_ss.ss_flags & SS_DISABLE) {
            stack_t off = {.ss_sp = NULL, .ss_flags = SS_DISABLE, .ss_size = 0};
            sigaltstack(&off, NULL);
        } else {
            old_ss.ss_flags = 0;
            sigaltstack(&old_ss, NULL);
        }
    }
    pthread_mutex_lock(&c->spawn_lock);
    if (s->next != NO_SLOT) {
        tslot *ns = &c->slots[s->next];
        int rc = -1;
        if (!__atomic_load_n(&c->abort, __ATOMIC_SEQ_CST)) {
            ns->pred = pthread_self();
            ns->has_pred = 1;
            rc = spawn(c, ns);
            if (rc != 0) abort_replay(c, "cannot start a replay thread for trace tid %u: %s", ch->tid, strerror(rc));
        }
        if (rc == 0) {
            ch->last = ns->th;
            ch->created++;
        } else {
            ch->failed = 1;
        }
    }
    pthread_cond_broadcast(&c->spawn_cond);
    pthread_mutex_unlock(&c->spawn_lock);
    return NULL;
}

/* Groups the events by trace thread. A tid that appears again after its thread_end is a new
 * thread (tids are reused), started when the previous one has exited. */
static int plan_threads(replay_ctx *c, char *msg, size_t cap) {
    uint32_t hcap = 2 * MAX_TRACE_THREADS;
    uint32_t *hash = malloc(sizeof(uint32_t) * hcap);   /* chain index + 1, 0 = empty */
    uint32_t *slot_of = malloc(sizeof(uint32_t) * (c->n ? c->n : 1));
    c->chains = calloc(MAX_TRACE_THREADS, sizeof(tchain));
    uint32_t slot_cap = 16;
    c->slots = calloc(slot_cap, sizeof(tslot));
    if (!hash || !slot_of || !c->chains || !c->slots) {
        free(hash);
        free(slot_of);
        snprintf(msg, cap, "out of memory planning the threads of %llu events", (unsigned long long)c->n);
        return HFD_ESYS;
    }
    memset(hash, 0, sizeof(uint32_t) * hcap);
    for (uint64_t i = 0; i < c->n; i++) {
        uint32_t tid = c->recs[i].tid;
        uint32_t h = (tid * 2654435761u) & (hcap - 1);
        while (hash[h] && c->chains[hash[h] - 1].tid != tid) h = (h + 1) & (hcap - 1);
        tchain *ch;
        if (!hash[h]) {
            if (c->nchains == MAX_TRACE_THREADS) {
                free(hash);
                free(slot_of);
                snprintf(msg, cap, "event %llu: the trace has more than %u threads, the most a threaded replay runs at once",
                         (unsigned long long)i, MAX_TRACE_THREADS);
                return HFD_EINVAL;
            }
            ch = &c->chains[c->nchains++];
            hash[h] = c->nchains;
            ch->tid = tid;
            ch->first = ch->cur = NO_SLOT;
        } else {
            ch = &c->chains[hash[h] - 1];
        }
        if (ch->cur == NO_SLOT || ch->ended) {
            if (c->nslots == slot_cap) {
                tslot *ns = realloc(c->slots, sizeof(tslot) * slot_cap * 2);
                if (!ns) {
                    free(hash);
                    free(slot_of);
                    snprintf(msg, cap, "out of memory planning %u threads", c->nslots);
                    return HFD_ESYS;
                }
                memset(ns + slot_cap, 0, sizeof(tslot) * slot_cap);
                c->slots = ns;
                slot_cap *= 2;
            }
            uint32_t sidx = c->nslots++;
            tslot *s = &c->slots[sidx];
            s->chain = (uint32_t)(ch - c->chains);
            s->seq = ch->total;
            s->next = NO_SLOT;
            if (ch->cur == NO_SLOT) ch->first = sidx;
            else c->slots[ch->cur].next = sidx;
            ch->cur = sidx;
            ch->ended = 0;
            ch->total++;
        }
        slot_of[i] = ch->cur;
        c->slots[ch->cur].n++;
        if (c->recs[i].op == HFT_OP_THREAD_END) ch->ended = 1;
    }
    free(hash);
    uint64_t pos = 0;
    for (uint32_t s = 0; s < c->nslots; s++) {
        c->slots[s].start = pos;
        pos += c->slots[s].n;
        c->slots[s].n = 0;
    }
    c->order = malloc(sizeof(uint64_t) * (c->n ? c->n : 1));
    if (!c->order) {
        free(slot_of);
        snprintf(msg, cap, "out of memory ordering %llu events", (unsigned long long)c->n);
        return HFD_ESYS;
    }
    for (uint64_t i = 0; i < c->n; i++) {
        tslot *s = &c->slots[slot_of[i]];
        c->order[s->start + s->n++] = i;
    }
    free(slot_of);
    return HFD_OK;
}

static void *map_stack(size_t sz, int guard) {
    void *p = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (p == MAP_FAILED) return NULL;
    if (guard) mprotect(p, (size_t)sysconf(_SC_PAGESIZE), PROT_NONE);   /* stacks grow down onto it */
    return p;
}

static void unmap_stacks(replay_ctx *c) {
    for (uint32_t k = 0; k < c->nchains; k++) {
        for (int j = 0; j < 2; j++)
            if (c->chains[k].stack[j]) munmap(c->chains[k].stack[j], worker_stack_size());
        if (c->chains[k].alt) munmap(c->chains[k].alt, alt_stack_size());
    }
}

static int run_threads(replay_ctx *c, char *msg, size_t cap) {
    int want_alt = hfd__crash_handler_installed();
    for (uint32_t k = 0; k < c->nchains; k++) {
        tchain *ch = &c->chains[k];
        ch->stack[0] = map_stack(worker_stack_size(), 1);
        if (ch->total > 1) ch->stack[1] = map_stack(worker_stack_size(), 1);
        if (want_alt) ch->alt = map_stack(alt_stack_size(), 0);
        if (!ch->stack[0] || (ch->total > 1 && !ch->stack[1]) || (want_alt && !ch->alt)) {
            unmap_stacks(c);
            snprintf(msg, cap, "cannot map the stacks of %u replay threads: %s", c->nchains, strerror(errno));
            return HFD_ESYS;
        }
    }
    pthread_mutex_lock(&c->spawn_lock);
    for (uint32_t k = 0; k < c->nchains; k++) {
        tchain *ch = &c->chains[k];
        if (__atomic_load_n(&c->abort, __ATOMIC_SEQ_CST)) { ch->failed = 1; continue; }
        int rc = spawn(c, &c->slots[ch->first]);
        if (rc != 0) {
            ch->failed = 1;
            abort_replay(c, "cannot start a replay thread for trace tid %u: %s", ch->tid, strerror(rc));
            continue;
        }
        ch->last = c->slots[ch->first].th;
        ch->created = 1;
    }
    __atomic_store_n(&c->go, 1, __ATOMIC_SEQ_CST);
    futex(&c->go, FUTEX_WAKE_PRIVATE, INT_MAX, NULL);
    for (;;) {
        int pending = 0;
        for (uint32_t k = 0; k < c->nchains; k++)
            if (!c->chains[k].failed && c->chains[k].created < c->chains[k].total) pending = 1;
        if (!pending) break;
        pthread_cond_wait(&c->spawn_cond, &c->spawn_lock);
    }
    pthread_mutex_unlock(&c->spawn_lock);
    for (uint32_t k = 0; k < c->nchains; k++)
        if (c->chains[k].created) pthread_join(c->chains[k].last, NULL);
    unmap_stacks(c);
    if (c->abort) {
        snprintf(msg, cap, "%s", c->thread_err);
        return HFD_ESYS;
    }
    return HFD_OK;
}

/* ------------------------------------------------------------- validation */

/* Validates every record in trace order against a fresh table (which it leaves in the
 * end state); deps, if not NULL, receives 2 per event; *many_tids, if not NULL, is set to 1 if
 * the records name more than one tid. */
static int validate_records(const trace_view *tv, obj_ent *t, uint64_t *deps, uint32_t *ops_used,
                            uint64_t *first_use, int *many_tids, char *msg, size_t cap) {
    char why[WHY_CAP];
    uint32_t tid0 = tv->n ? tv->recs[0].tid : 0, tid_diff = 0;
    for (uint64_t i = 0; i < tv->n; i++) {
        const hft_record *r = &tv->recs[i];
        uint64_t dd[2];
        if (apply_common(t, tv->nobj, r, i, dd)) {
            /* done: a valid malloc or free */
        } else if (apply_record(t, tv->nobj, r, i, why, dd) != 0) {
            snprintf(msg, cap, "event %llu (byte offset %llu): %s", (unsigned long long)i,
                     (unsigned long long)byte_offset(tv, i), why);
            return HFD_EINVAL;
        }
        if (deps) {
            deps[2 * i] = dd[0];
            deps[2 * i + 1] = dd[1];
        }
        if (ops_used && !(*ops_used & (1u << r->op))) {
            *ops_used |= 1u << r->op;
            first_use[r->op] = i;
        }
        tid_diff |= r->tid ^ tid0;
    }
    if (many_tids) *many_tids = tid_diff != 0;
    return HFD_OK;
}

/* For a trace validated before: the ops it uses (for op_needs) and whether it has several
 * tids, in one light pass over the op and tid fields. */
static void scan_records(const trace_view *tv, uint32_t *ops_used, uint64_t *first_use, int *many_tids) {
    uint32_t tid0 = tv->n ? tv->recs[0].tid : 0, tid_diff = 0, used = 0;
    for (uint64_t i = 0; i < tv->n; i++) {
        const hft_record *r = &tv->recs[i];
        if (!(used & (1u << r->op))) {
            used |= 1u << r->op;
            first_use[r->op] = i;
        }
        tid_diff |= r->tid ^ tid0;
    }
    *ops_used = used;
    *many_tids = tid_diff != 0;
}

/* The optional allocator entry points an op cannot do without (calloc falls back to alloc). */
static int op_needs(const hfd_vtable *vt, uint8_t op, const char **sym) {
    if (op == HFT_OP_REALLOC && !vt->realloc) { *sym = "hak_realloc_at"; return 1; }
    if (op == HFT_OP_MEMALIGN && !vt->memalign) { *sym = "hak_memalign_at"; return 1; }
    return 0;
}

static obj_ent *table_new(uint32_t nobj) {
    return calloc((size_t)nobj + 1, sizeof(obj_ent));
}

/* What hfd_trace_validate learnt of the last trace it passed on this thread: an
 * HFD_REPLAY_VALIDATED replay of the same bytes then needs no pass over them at all. */
static __thread struct {
    const void *trace;
    uint64_t len;
    uint32_t ops_used;
    int many_tids;
    uint64_t first_use[HFT_OP_COUNT];
} t_validated;

HFD_API int hfd_trace_validate(const void *trace, uint64_t len) {
    char msg[256];
    trace_view tv;
    t_validated.trace = NULL;
    if (check_header(trace, len, &tv, msg, sizeof msg) != 0) return hfd__set_error(HFD_EINVAL, "%s", msg);
    obj_ent *t = table_new(tv.nobj);
    if (!t) return hfd__set_error(HFD_ESYS, "cannot allocate the object table for %u objects", tv.nobj);
    uint32_t ops_used = 0;
    int many_tids = 0;
    int rc = validate_records(&tv, t, NULL, &ops_used, t_validated.first_use, &many_tids, msg, sizeof msg);
    free(t);
    if (rc != HFD_OK) return hfd__set_error(rc, "%s", msg);
    t_validated.trace = trace;
    t_validated.len = len;
    t_validated.ops_used = ops_used;
    t_validated.many_tids = many_tids;
    return HFD_OK;
}

/* ------------------------------------------------------------------ replay */

static int replay_fail(hfr_header *res, int code, const char *msg) {
    if (res) {
        snprintf(res->error, sizeof res->error, "%s", msg);
        __atomic_store_n(&res->state, (uint32_t)HFR_STATE_FAILED, __ATOMIC_SEQ_CST);
    }
    return hfd__set_error(code, "%s", msg);
}

/* flags: HFD_REPLAY_* (hfd_replay_ex). */
static int replay_impl(const void *trace, uint64_t len, hfr_header *res, hfr_event *events, const hfr_options *opts,
                       uint32_t flags) {
    if (!res) return hfd__set_error(HFD_EINVAL, "hfd_replay: result header is NULL");
    if (flags & ~(uint32_t)(HFD_REPLAY_ZEROED | HFD_REPLAY_VALIDATED))
        return hfd__set_error(HFD_EINVAL, "hfd_replay_ex: unknown flags %#x", flags & ~(uint32_t)(HFD_REPLAY_ZEROED | HFD_REPLAY_VALIDATED));
    memcpy(res->magic, HFR_MAGIC, sizeof res->magic);
    res->version = HFR_VERSION;
    res->event_size = sizeof(hfr_event);
    res->events_done = 0;
    res->threads_used = 0;
    res->first_check_failure = UINT64_MAX;
    res->check_msg[0] = '\0';
    res->error[0] = '\0';
    __atomic_store_n(&res->state, (uint32_t)HFR_STATE_RUNNING, __ATOMIC_SEQ_CST);
    if (!opts) opts = &k_default_options;

    const hfd_vtable *bound = hfd__vtable();
    if (!bound->alloc || !bound->free) return replay_fail(res, HFD_ENOTBOUND, "hfd_replay: no allocator bound");

    char msg[256];
    trace_view tv;
    if (check_header(trace, len, &tv, msg, sizeof msg) != 0) return replay_fail(res, HFD_EINVAL, msg);
    if (tv.n && !events) return replay_fail(res, HFD_EINVAL, "hfd_replay: event array is NULL");

    replay_ctx *c = calloc(1, sizeof *c);
    if (!c) return replay_fail(res, HFD_ESYS, "hfd_replay: out of memory");
    ctx_setup(c, bound, hfd_binding(), opts);
    pthread_mutex_init(&c->check_lock, NULL);
    pthread_mutex_init(&c->spawn_lock, NULL);
    pthread_cond_init(&c->spawn_cond, NULL);
    c->res = res;
    c->events = events;
    c->recs = tv.recs;
    c->n = tv.n;
    c->nobj = tv.nobj;
    int threaded = opts->threads != 0;
    int rc = HFD_OK;

    c->objs = table_new(tv.nobj);
    if (!c->objs) {
        snprintf(msg, sizeof msg, "cannot allocate the object table for %u objects", tv.nobj);
        rc = HFD_ESYS;
        goto out;
    }
    /* Everything is checked before anything runs: a bad event late in a trace must not
     * leave half a replay behind. The dependencies a threaded replay waits on cost 16 bytes an
     * event: they are worked out (a second pass) only for a trace that has several threads. */
    uint32_t ops_used = 0;
    uint64_t first_use[HFT_OP_COUNT];
    int many_tids = 0;
    if ((flags & HFD_REPLAY_VALIDATED) && t_validated.trace == trace && t_validated.len == len) {
        ops_used = t_validated.ops_used;
        many_tids = t_validated.many_tids;
        memcpy(first_use, t_validated.first_use, sizeof first_use);
    } else if (flags & HFD_REPLAY_VALIDATED) {
        scan_records(&tv, &ops_used, first_use, &many_tids);
    } else {
        rc = validate_records(&tv, c->objs, NULL, &ops_used, first_use, &many_tids, msg, sizeof msg);
    }
    if (rc != HFD_OK) goto out;
    if (threaded && (!many_tids || opts->limit)) threaded = 0;   /* one trace thread, or an inspection: serial */
    if (threaded) {
        c->deps = malloc(sizeof(uint64_t) * 2 * (tv.n ? tv.n : 1));
        if (!c->deps) {
            snprintf(msg, sizeof msg, "cannot allocate the dependencies of %llu events", (unsigned long long)tv.n);
            rc = HFD_ESYS;
            goto out;
        }
        memset(c->objs, 0, sizeof(obj_ent) * ((size_t)tv.nobj + 1));
        rc = validate_records(&tv, c->objs, c->deps, NULL, NULL, NULL, msg, sizeof msg);
        if (rc != HFD_OK) goto out;
    }
    for (uint8_t op = 1; op < HFT_OP_COUNT; op++) {
        const char *sym;
        if ((ops_used & (1u << op)) && op_needs(&c->vt, op, &sym)) {
            snprintf(msg, sizeof msg, "event %llu (byte offset %llu): %s needs %s, which the bound allocator lacks",
                     (unsigned long long)first_use[op], (unsigned long long)byte_offset(&tv, first_use[op]),
                     k_op_names[op], sym);
            rc = HFD_ENOSYM;
            goto out;
        }
    }
    if (threaded) {
        rc = plan_threads(c, msg, sizeof msg);
        if (rc != HFD_OK) goto out;
        if (c->nchains < 2) threaded = 0;   /* one trace thread: trace order on this thread */
        if (opts->limit) threaded = 0;      /* an inspection: serial, up to the limit */
    }
    memset(c->objs, 0, sizeof(obj_ent) * ((size_t)tv.nobj + 1));
    if (tv.n && !(flags & HFD_REPLAY_ZEROED)) memset(events, 0, sizeof(hfr_event) * tv.n);
    res->num_events = tv.n;
    if (opts->check_every && !c->vt.debug_check)
        snprintf(res->error, sizeof res->error,
                 "note: no consistency check: the allocator has no hak_debug_check (check every %llu skipped)",
                 (unsigned long long)opts->check_every);

    if (!threaded) {
        res->threads_used = 1;
        uint64_t end = opts->limit && opts->limit < tv.n ? opts->limit : tv.n;
        uint64_t seen = decision_seq(c);
        for (uint64_t i = 0; i < end; i++) {
            /* Records are read, and results written, once each, far beyond the caches: ask for
             * them ~16 events ahead (measured: 5-12% off the serial loop) */
            if (i + PREFETCH_AHEAD < end) {
                __builtin_prefetch(&c->recs[i + PREFETCH_AHEAD], 0, 0);
                __builtin_prefetch(&c->events[i + PREFETCH_AHEAD], 1, 0);
            }
            run_one(c, i, 0, &seen);
        }
        hfd_set_event_index(NO_EVENT);
    } else {
        res->threads_used = c->nslots;
        rc = run_threads(c, msg, sizeof msg);
    }

out:
    free(c->objs);
    free(c->deps);
    free(c->order);
    free(c->slots);
    free(c->chains);
    pthread_mutex_destroy(&c->check_lock);
    pthread_mutex_destroy(&c->spawn_lock);
    pthread_cond_destroy(&c->spawn_cond);
    free(c);
    if (rc != HFD_OK) return replay_fail(res, rc, msg);
    __atomic_store_n(&res->state, (uint32_t)HFR_STATE_DONE, __ATOMIC_SEQ_CST);
    hfd__set_error(HFD_OK, "%s", "");
    return HFD_OK;
}

HFD_API int hfd_replay(const void *trace, uint64_t len, hfr_header *res, hfr_event *events, const hfr_options *opts) {
    return replay_impl(trace, len, res, events, opts, 0);
}

HFD_API int hfd_replay_ex(const void *trace, uint64_t len, hfr_header *res, hfr_event *events, const hfr_options *opts,
                          uint32_t flags) {
    return replay_impl(trace, len, res, events, opts, flags);
}

/* ---------------------------------------------------------------- stepping */

static replay_ctx g_step;
static int g_step_ready;
static hfr_options g_step_opts = {0, 0, 1, 0};

HFD_API int hfd_step_options(const hfr_options *opts) {
    g_step_opts = opts ? *opts : k_default_options;
    if (g_step_ready) {
        g_step.judge = g_step_opts.judge && g_step.vt.owner != NULL;
        g_step.check_every = g_step.vt.debug_check ? g_step_opts.check_every : 0;
    }
    return HFD_OK;
}

HFD_API int hfd_check_window(uint64_t from, uint64_t to) {
    if (from > to)
        return hfd__set_error(HFD_EINVAL, "hfd_check_window: from %llu is after to %llu", (unsigned long long)from,
                              (unsigned long long)to);
    g_check_from = from;
    g_check_to = to;
    if (g_step_ready) {
        g_step.check_from = from;
        g_step.check_to = to;
    }
    return HFD_OK;
}

HFD_API int hfd_step_reset(uint32_t num_objects) {
    const hfd_vtable *bound = hfd__vtable();
    if (!bound->alloc || !bound->free) return hfd__set_error(HFD_ENOTBOUND, "hfd_step_reset: no allocator bound");
    obj_ent *t = table_new(num_objects);
    if (!t) return hfd__set_error(HFD_ESYS, "hfd_step_reset: cannot allocate the object table for %u objects", num_objects);
    if (g_step_ready) {
        free(g_step.objs);
        pthread_mutex_destroy(&g_step.check_lock);
    }
    memset(&g_step, 0, sizeof g_step);
    ctx_setup(&g_step, bound, hfd_binding(), &g_step_opts);
    pthread_mutex_init(&g_step.check_lock, NULL);
    g_step.objs = t;
    g_step.nobj = num_objects;
    g_step_ready = 1;
    return HFD_OK;
}

HFD_API int hfd_step(const hft_record *rec, uint64_t index, hfr_event *out) {
    if (!rec || !out) return hfd__set_error(HFD_EINVAL, "hfd_step: record or result is NULL");
    if (!g_step_ready) return hfd__set_error(HFD_EINVAL, "hfd_step: call hfd_step_reset first");
    const char *sym;
    if (rec->op < HFT_OP_COUNT && op_needs(&g_step.vt, rec->op, &sym))
        return hfd__set_error(HFD_ENOSYM, "event %llu: %s needs %s, which the bound allocator lacks",
                              (unsigned long long)index, k_op_names[rec->op], sym);
    char why[WHY_CAP];
    uint64_t deps[2];
    if (apply_record(g_step.objs, g_step.nobj, rec, index, why, deps) != 0)
        return hfd__set_error(HFD_EINVAL, "event %llu: %s", (unsigned long long)index, why);
    exec_event(&g_step, rec, index, out, NULL);
    int failed_before = g_step.check_seen;
    check_after(&g_step, index, out);
    hfd_set_event_index(NO_EVENT);
    if (!failed_before && g_step.check_seen) hfd__set_error(HFD_OK, "%s", g_step.check_msg);
    else hfd__set_error(HFD_OK, "%s", "");
    return HFD_OK;
}

/* --------------------------------------------------------------- summary */

HFD_API void hfd_summarize(const hfr_event *events, uint64_t n, hfr_summary *out) {
    if (!out) return;
    memset(out, 0, sizeof *out);
    out->first_anomaly = UINT64_MAX;
    if (!events) return;
    for (uint64_t i = 0; i < n; i++) {
        const hfr_event *e = &events[i];
        uint8_t st = __atomic_load_n(&e->status, __ATOMIC_ACQUIRE);
        if (st != HFR_EV_DONE && st != HFR_EV_STARTED) continue;
        uint8_t oc = e->outcome < HFR_OUT_COUNT ? e->outcome : HFR_OUT_NONE;
        if (st == HFR_EV_STARTED) oc = HFR_OUT_CRASHED;
        out->outcome_counts[oc]++;
        if (oc != HFR_OUT_NONE && oc != HFR_OUT_CORRECT && out->first_anomaly == UINT64_MAX) out->first_anomaly = i;
        if (st != HFR_EV_DONE) continue;
        out->events_done++;
        if (oc != HFR_OUT_NONE) {
            out->frees++;
            out->route_counts[e->route < 32 ? e->route : 0]++;
        } else if (e->ptr) {
            out->allocs++;
        }
    }
}
