/* hftrace.h - the binary trace format and the replay result file (docs/trace-format.md).
 *
 * A binary trace is: hft_header, then text_len bytes of header text (the text format's
 * header lines: "# hakmem-trace v1", "# knob K=V", "# meta K=V", other comments), zero
 * padding up to records_offset (a multiple of 8), then num_events fixed-size hft_records.
 * The native replay maps it and walks the records in place. All integers little-endian.
 *
 * A replay writes a result file: hfr_header, then one hfr_event per trace event. The replay
 * child and the Python parent map the same file (a memfd), so everything observed before a
 * crash is kept. The structs are mirrored in forensics/ (a test checks offsets against DWARF).
 */
#ifndef HFTRACE_H
#define HFTRACE_H

#include <stdint.h>

#include "hfdriver.h"

#ifdef __cplusplus
extern "C" {
#endif

#define HFT_MAGIC "HKTRACE"   /* 8 bytes with the NUL */
#define HFT_VERSION 1u

enum hft_op {
    HFT_OP_MALLOC = 1,        /* "malloc OBJ SIZE" */
    HFT_OP_CALLOC = 2,        /* "calloc OBJ NMEMB SIZE": arg = nmemb, size = element size */
    HFT_OP_REALLOC = 3,       /* "realloc NEW OLD SIZE": obj = new, obj2 = old (0 = NULL); size 0 frees */
    HFT_OP_MEMALIGN = 4,      /* "memalign OBJ ALIGN SIZE": arg = alignment */
    HFT_OP_FREE = 5,          /* "free OBJ" (0 = free(NULL)) */
    HFT_OP_THREAD_END = 6,    /* "thread_end" */
    HFT_OP_FREE_INTERIOR = 7, /* "free_interior OBJ OFFSET": free(ptr + arg) of a live block */
    HFT_OP_DOUBLE_FREE = 8,   /* "double_free OBJ": free again a block already freed */
    HFT_OP_FREE_RAW = 9,      /* "free_raw ADDR": free((void *)arg), an address nobody allocated */
    HFT_OP_LIBC_MALLOC = 10,  /* "libc_malloc OBJ SIZE": the object comes from libc malloc, not the allocator */
    HFT_OP_FREE_LIBC = 11,    /* "free_libc OBJ": a libc_malloc object freed through the allocator */
    HFT_OP_CORRUPT = 12,      /* "corrupt OBJ OFFSET LEN VALUE": write LEN (1..8) bytes of VALUE at ptr + arg */
    HFT_OP_COUNT
};

typedef struct hft_header {
    char magic[8];            /* HFT_MAGIC */
    uint32_t version;         /* HFT_VERSION */
    uint32_t record_size;     /* sizeof(hft_record) */
    uint64_t num_events;
    uint32_t num_objects;     /* object ids are 1..num_objects */
    uint32_t num_threads;     /* distinct tids */
    uint64_t records_offset;  /* file offset of the first record, multiple of 8 */
    uint32_t text_len;        /* header text bytes right after this struct */
    uint32_t reserved0;
    uint64_t reserved[2];
} hft_header;                 /* 64 bytes */

typedef struct hft_record {
    uint8_t op;               /* enum hft_op */
    uint8_t flags;            /* 0 */
    uint16_t reserved;
    uint32_t tid;             /* thread id as recorded */
    uint32_t obj;             /* object id, 0 = none */
    uint32_t obj2;            /* realloc: old object id, 0 = NULL */
    uint64_t size;            /* bytes (malloc/realloc/memalign/libc_malloc), element size (calloc), LEN (corrupt) */
    int64_t arg;              /* nmemb (calloc), alignment (memalign), offset (free_interior, corrupt), address (free_raw) */
    uint64_t value;           /* corrupt: bytes to write, little-endian */
    uint64_t site;            /* call site, 0 = unknown */
} hft_record;                 /* 48 bytes */

/* ------------------------------------------------------------- results */
#define HFR_MAGIC "HKRESLT"
#define HFR_VERSION 1u

/* Who owned the object when it was made: enum hak_owner_kind, plus: */
#define HFR_OWNER_LIBC 6      /* libc_malloc objects; every object when bound to libc */
#define HFR_OWNER_UNKNOWN 7   /* the allocator has no hak_owner */

enum hfr_outcome {
    HFR_OUT_NONE = 0,             /* not a free (allocation, thread_end, corrupt) */
    HFR_OUT_CORRECT = 1,          /* freed by the route its owner needs */
    HFR_OUT_MISROUTED = 2,        /* freed through the wrong path (e.g. a Mid block sent to tiny_free), or an invalid free acted upon */
    HFR_OUT_LEAKED = 3,           /* nothing freed, or the block was no longer live in its owner when freed */
    HFR_OUT_INVALID_MAGIC = 4,    /* took an invalid-magic route (whatever it then did) */
    HFR_OUT_CRASHED = 5,          /* the process died in this event */
    HFR_OUT_DETECTED_INVALID = 6, /* a forensic op the allocator refused safely (nothing freed) */
    HFR_OUT_COUNT
};

enum hfr_status { HFR_EV_PENDING = 0, HFR_EV_STARTED = 1, HFR_EV_DONE = 2 };

/* While an event runs its record says STARTED with outcome CRASHED, so a process that dies
 * in it leaves exactly that behind; it ends DONE with the real outcome. Fields a free
 * decision fills (seq .. method) are 0, except probe and method which are -1, when the
 * event made no decision (allocations, thread_end, corrupt, and frees under libc). */
typedef struct hfr_event {
    uint64_t ptr;             /* pointer returned (allocations, realloc), passed to free (frees, forensic frees); 0 for corrupt/thread_end */
    uint64_t seq;             /* hak_free_decision.seq of this free, 0 if none */
    uint32_t route;           /* enum hak_route, 0 if none (allocation, or libc) */
    uint32_t action;          /* enum hak_action */
    uint32_t stages_tried;
    uint32_t stages_hit;
    int32_t probe;            /* HAK_PROBE_NOT_RUN / _UNREADABLE / _READABLE */
    uint32_t magic_found;
    int32_t method;
    uint8_t owner;            /* owner of the object at its allocation (hak_owner_kind / HFR_OWNER_*); realloc: of
                                 the new block (size 0: of the old); free_raw: owner of the address, if judged */
    uint8_t outcome;          /* enum hfr_outcome */
    uint8_t status;           /* enum hfr_status */
    uint8_t check_failed;     /* 1 if the consistency check after this event failed */
} hfr_event;                  /* 48 bytes */

enum hfr_state { HFR_STATE_INIT = 0, HFR_STATE_RUNNING = 1, HFR_STATE_DONE = 2, HFR_STATE_FAILED = 3 };

typedef struct hfr_header {
    char magic[8];                     /* HFR_MAGIC */
    uint32_t version;                  /* HFR_VERSION */
    uint32_t event_size;               /* sizeof(hfr_event) */
    uint64_t num_events;
    volatile uint64_t events_done;     /* progress: events completed */
    volatile uint32_t state;           /* enum hfr_state */
    uint32_t threads_used;             /* 1 = serial */
    uint64_t first_check_failure;      /* event index, UINT64_MAX if none (or no check ran) */
    char check_msg[256];
    char error[256];                   /* set with HFR_STATE_FAILED */
    hfd_crash_record crash;            /* magic == HFD_CRASH_MAGIC if the child crashed */
} hfr_header;

/* NULL options mean {0, 0, 1}. */
typedef struct hfr_options {
    uint64_t check_every;     /* run the consistency check after every Nth event (index+1 a multiple of N), until it first fails; 0 = never */
    uint32_t threads;         /* 0 = one thread in trace order; 1 = one real thread per trace tid (at most 1024; a
                                 tid seen again after its thread_end is a new thread), each waiting for the events
                                 that last touched its objects; a single-tid trace still runs on the caller */
    uint32_t judge;           /* 1 = call owner() to judge routes (the oracle) */
    uint64_t limit;           /* 0 = the whole trace; N = only events [0, N), on the calling thread (an
                                 inspection stops there: the same code path, so the same heap, as the run
                                 it inspects) */
} hfr_options;

/* Over the events with status DONE or STARTED (a STARTED one counts as CRASHED). frees: DONE
 * events with an outcome (free ops, and reallocs that freed their old block); allocs: DONE
 * events without an outcome that returned a block (so a realloc that moved counts as a free). */
typedef struct hfr_summary {
    uint64_t events_done, frees, allocs;
    uint64_t route_counts[32];         /* by enum hak_route (index 0: frees with no route, e.g. libc) */
    uint64_t outcome_counts[HFR_OUT_COUNT];
    uint64_t first_anomaly;            /* event index of the first free whose outcome is not correct, UINT64_MAX */
} hfr_summary;

/* Replays the mapped trace (trace points to the start of the file, 8-byte aligned; len is
 * its size) through the bound allocator, writing events[i] for each event i as it goes
 * (events must hold num_events records). It fills the header itself (magic, version,
 * event_size, progress, threads_used, check fields, state RUNNING then DONE or FAILED, and
 * num_events once the trace is valid) but never touches res->crash. The whole trace is validated before anything runs.
 * Returns HFD_OK, or an error code with hfd_last_error() and res->error set ("event 123
 * (byte offset 6000): free of object 7 which is not live (...)"): malformed trace, object
 * misuse that would make the replay meaningless (HFD_EINVAL), an op the allocator lacks an
 * entry point for (HFD_ENOSYM), no binding (HFD_ENOTBOUND), out of memory or threads
 * (HFD_ESYS). With status DONE, res->error may hold a "note: ..." (e.g. no debug check). */
HFD_API int hfd_replay(const void *trace, uint64_t len, hfr_header *res, hfr_event *events, const hfr_options *opts);

/* hfd_replay with promises from a caller that knows more (hfreplay does), each saving a pass
 * over a big trace; HFD_EINVAL for an unknown flag. Otherwise identical to hfd_replay. */
#define HFD_REPLAY_ZEROED 1u     /* events is all zero bytes already (a fresh mapping, a file just created or
                                    hole-punched): not cleared first, so each record is written where it is first
                                    touched (on 10M events, 480 MB less to write and to fetch back) */
#define HFD_REPLAY_VALIDATED 2u  /* hfd_trace_validate returned HFD_OK on these very bytes, which cannot have
                                    changed since (a read-only mapping): not validated again. A trace that is not
                                    valid after all makes the replay's behaviour undefined. */
HFD_API int hfd_replay_ex(const void *trace, uint64_t len, hfr_header *res, hfr_event *events, const hfr_options *opts,
                          uint32_t flags);

/* The same validation without replaying (no binding needed): HFD_OK, or HFD_EINVAL with the
 * message in hfd_last_error(). */
HFD_API int hfd_trace_validate(const void *trace, uint64_t len);

/* Replays one event through the binding (the stepping path): same effects and same result
 * record as the loop on one thread. The object table lives in the driver between calls;
 * hfd_step_reset() clears it and takes the binding in force. The record is validated
 * against the table first (HFD_EINVAL "event N: ...", nothing done). When the consistency
 * check fails after this event, out->check_failed is 1 and hfd_last_error() holds the
 * check's message (the return is still HFD_OK). */
HFD_API int hfd_step_reset(uint32_t num_objects);
HFD_API int hfd_step(const hft_record *rec, uint64_t index, hfr_event *out);
/* Options for the following hfd_step calls (threads is ignored); NULL = {0, 0, 1}, the
 * default. Kept across hfd_step_reset. */
HFD_API int hfd_step_options(const hfr_options *opts);

/* Limits the consistency check of the following hfd_replay and hfd_step calls to events
 * from..to (inclusive): the check runs after event i when from <= i <= to and either
 * (i - from + 1) is a multiple of check_every or i == to. The default, (0, UINT64_MAX), is
 * every event whose index + 1 is a multiple of check_every. HFD_EINVAL if from > to. Used to
 * narrow down the first failing event (bisection) with few checks. */
HFD_API int hfd_check_window(uint64_t from, uint64_t to);

/* Aggregates the event records (those with status DONE or STARTED). */
HFD_API void hfd_summarize(const hfr_event *events, uint64_t n, hfr_summary *out);

#ifdef __cplusplus
}
#endif
#endif /* HFTRACE_H */
