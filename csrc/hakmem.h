/* hakmem.h - public ABI of hakmem-ref, the reference allocator of hakmem-forensics.
 *
 * hakmem-ref reproduces the free path of hakmem as described in the seed analysis
 * (shared/seed/FALSE_POSITIVE_SEGV_FIX.md): headerless Tiny blocks in SuperSlabs found
 * through a SuperSlab registry, Mid and L25 pools with an AllocHeader in front of each
 * block (each pool with its own registry), mmap'd large blocks freed through BigCache /
 * the HAKMEM_BIGCACHE_L25 band / batch madvise / a whale cache / munmap, and the MALLOC
 * method (header + libc malloc) when a pool feature is switched off.
 *
 * Every exported symbol starts with hak_ and is the only visible one (-fvisibility=hidden).
 * Structs in this file are mirrored by ctypes Structures in forensics/native.py; a test
 * compares their field offsets with the DWARF of the built library. Change both or neither,
 * and bump HAK_ABI_VERSION when a struct or a signature changes.
 *
 * Error convention: functions returning int return 0 on success or a negative HAK_E*
 * code; hak_last_error() then returns a message for the calling thread.
 */
#ifndef HAKMEM_H
#define HAKMEM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The preload build (hakmem_preload.c) defines HAK_API empty before including this, so that
 * library exports the malloc family only and a libhakmem.so loaded beside it keeps its own hak_*. */
#ifndef HAK_API
#define HAK_API __attribute__((visibility("default")))
#endif

#define HAK_ABI_VERSION 1u

/* ---------------------------------------------------------------- geometry */
#define HAKMEM_MAGIC        0x48414B4Du      /* "HAKM" little-endian-ish */
#define HAK_HEADER_SIZE     32u              /* sizeof(AllocHeader) */
#define HAK_SUPERSLAB_SIZE  (1u << 20)       /* SuperSlabs are aligned to their own size */
#define HAK_MID_CHUNK_SIZE  (1u << 20)       /* Mid pool chunks, aligned to their own size */
#define HAK_L25_CHUNK_SIZE  (4u << 20)       /* L25 pool chunks, aligned to their own size */
#define HAK_TINY_NUM_CLASSES 8
#define HAK_MID_NUM_CLASSES  5
#define HAK_L25_NUM_CLASSES  5
#define HAK_BIGCACHE_MIN     (2u << 20)      /* class_bytes >= 2 MiB go to BigCache (seed) */
#define HAK_BIGCACHE_L25_MIN (512u << 10)    /* HAKMEM_BIGCACHE_L25 band: [512 KiB, 2 MiB) (seed) */
#define HAK_BATCH_MIN_SIZE   (64u << 10)     /* batch madvise takes MMAP blocks at least this big */

/* Allocation methods stored in AllocHeader.method (Tiny blocks have no header). */
enum hak_method {
    ALLOC_METHOD_MALLOC = 1,   /* header + libc malloc; free: __libc_free(raw) */
    ALLOC_METHOD_MMAP = 2,     /* header + mmap; free: BigCache / batch / whale / munmap */
    ALLOC_METHOD_POOL = 3,     /* Mid pool */
    ALLOC_METHOD_L25_POOL = 4, /* L25 pool */
};

/* The header in front of every non-Tiny block: raw = ptr - HAK_HEADER_SIZE. magic is the
 * first field, so the seed's SEGV faults at exactly ptr - HAK_HEADER_SIZE. */
typedef struct AllocHeader {
    uint32_t magic;        /* HAKMEM_MAGIC */
    uint32_t method;       /* enum hak_method */
    size_t size;           /* requested user size */
    uintptr_t alloc_site;  /* caller-supplied call site */
    size_t class_bytes;    /* bytes of the whole block including the header (pool class, mapping length) */
} AllocHeader;

/* Who owns an address (ground truth from the allocator's own bookkeeping, not the registries). */
enum hak_owner_kind {
    HAK_OWNER_NONE = 0,
    HAK_OWNER_TINY = 1,
    HAK_OWNER_MID = 2,
    HAK_OWNER_L25 = 3,
    HAK_OWNER_MMAP = 4,    /* large block, method MMAP */
    HAK_OWNER_MALLOC = 5,  /* header + libc malloc */
};

/* State of the block an address falls in. */
enum hak_block_state {
    HAK_BLOCK_NONE = 0,     /* not inside a block (e.g. SuperSlab tail never carved) */
    HAK_BLOCK_LIVE = 1,     /* allocated, not freed */
    HAK_BLOCK_FREE = 2,     /* on a free list, or carved and returned */
    HAK_BLOCK_CACHED = 3,   /* freed large block held by BigCache / batch / whale cache */
};

typedef struct hak_owner_info {
    uint32_t kind;          /* enum hak_owner_kind */
    uint32_t state;         /* enum hak_block_state */
    uintptr_t block_ptr;    /* user pointer of the block containing addr (0 if none) */
    size_t block_size;      /* usable bytes of that block (class size for Tiny) */
    size_t class_bytes;     /* bytes of the block including header */
    uintptr_t region_base;  /* SuperSlab / pool chunk / mapping / libc block containing addr */
    size_t region_size;
    int32_t class_index;    /* size class within its pool, -1 if none */
    uint32_t registered;    /* 1 if region_base is in its registry (SS, Mid or L25 registry) */
    uint32_t method;        /* enum hak_method the block needs at free (0 for Tiny) */
    uint32_t pad;
} hak_owner_info;

typedef struct hak_geometry {
    uint32_t abi_version;
    uint32_t header_size;
    uint32_t magic;
    uint32_t page_size;
    uint64_t superslab_size;
    uint64_t mid_chunk_size;
    uint64_t l25_chunk_size;
    uint32_t num_tiny_classes;
    uint32_t num_mid_classes;
    uint32_t num_l25_classes;
    uint32_t build_release;                    /* 1 = release build (debug logs compiled out) */
    uint32_t tiny_class_sizes[HAK_TINY_NUM_CLASSES]; /* user bytes per Tiny class */
    uint32_t mid_class_bytes[HAK_MID_NUM_CLASSES];   /* block bytes incl. header */
    uint32_t l25_class_bytes[HAK_L25_NUM_CLASSES];   /* block bytes incl. header */
    uint64_t tiny_max;        /* largest size served by Tiny */
    uint64_t mid_max;         /* largest user size served by Mid */
    uint64_t l25_max;         /* largest user size served by L25; above: MMAP */
    uint64_t bigcache_min;    /* HAK_BIGCACHE_MIN */
    uint64_t bigcache_l25_min;/* HAK_BIGCACHE_L25_MIN */
    uint64_t batch_min_size;  /* HAK_BATCH_MIN_SIZE */
} hak_geometry;

/* Constants readable from the ELF file without loading it (pyelftools, `info`). */
HAK_API extern const uint32_t hak_abi_version_const;
HAK_API extern const uint32_t hak_header_size_const;
HAK_API extern const uint32_t hak_magic_const;
HAK_API extern const uint64_t hak_superslab_size_const;
HAK_API extern const uint32_t hak_tiny_class_sizes_const[HAK_TINY_NUM_CLASSES];
HAK_API extern const uint32_t hak_build_release_const;   /* 1 release, 0 debug */

/* ------------------------------------------------------------------ routes */
/* Route of a free, named as the route-trace line prints it (the seed's names where the
 * seed has one). hak_route_name() returns the string. */
enum hak_route {
    HAK_ROUTE_NONE = 0,
    HAK_ROUTE_NULL,                        /* "null": free(NULL) */
    HAK_ROUTE_SS_HIT,                      /* "ss_hit": SS registry hit -> hak_tiny_free */
    HAK_ROUTE_MID_HIT,                     /* "mid_hit": Mid registry hit -> hak_pool_free */
    HAK_ROUTE_L25_HIT,                     /* "l25_hit": L25 registry hit -> hak_l25_pool_free */
    HAK_ROUTE_UNMAPPED_HEADER_FALLBACK,    /* "unmapped_header_fallback": probe said unreadable */
    HAK_ROUTE_INVALID_MAGIC_TINY_RECOVERY, /* "invalid_magic_tiny_recovery" */
    HAK_ROUTE_INVALID_MAGIC_SKIP,          /* "invalid_magic_skip": skipped with the one-time warning */
    HAK_ROUTE_INVALID_MAGIC_LIBC,          /* "invalid_magic_libc": __libc_free(ptr) */
    HAK_ROUTE_BIGCACHE,                    /* "bigcache": class_bytes >= 2 MiB, cached */
    HAK_ROUTE_BIGCACHE_L25,                /* "bigcache_l25": HAKMEM_BIGCACHE_L25 band, cached */
    HAK_ROUTE_POOL_HDR,                    /* "pool_hdr": header method POOL -> hak_pool_free */
    HAK_ROUTE_POOL_HDR_DISABLED,           /* "pool_hdr_disabled": method POOL, pool off: nothing freed */
    HAK_ROUTE_L25_HDR,                     /* "l25_hdr": header method L25_POOL -> hak_l25_pool_free */
    HAK_ROUTE_MALLOC_HDR,                  /* "malloc_hdr": header method MALLOC -> __libc_free(raw) */
    HAK_ROUTE_MMAP_BATCH,                  /* "mmap_batch": batch madvise */
    HAK_ROUTE_MMAP_WHALE,                  /* "mmap_whale": whale cache kept it */
    HAK_ROUTE_MMAP_MUNMAP,                 /* "mmap_munmap": munmap */
    HAK_ROUTE_UNKNOWN_METHOD,              /* "unknown_method": nothing freed */
    HAK_ROUTE_COUNT
};

/* What the chosen route finally called. */
enum hak_action {
    HAK_ACTION_NONE = 0,       /* "none": nothing freed (skip, unknown method, pool disabled) */
    HAK_ACTION_TINY_FREE,      /* "tiny_free" */
    HAK_ACTION_POOL_FREE,      /* "pool_free" */
    HAK_ACTION_L25_FREE,       /* "l25_free" */
    HAK_ACTION_LIBC_FREE_PTR,  /* "libc_free_ptr": __libc_free(ptr) */
    HAK_ACTION_LIBC_FREE_RAW,  /* "libc_free_raw": __libc_free(ptr - HEADER_SIZE) */
    HAK_ACTION_BIGCACHE_PUT,   /* "bigcache_put" */
    HAK_ACTION_BATCH_ADD,      /* "batch_add" */
    HAK_ACTION_WHALE_PUT,      /* "whale_put" */
    HAK_ACTION_MUNMAP,         /* "munmap" */
    HAK_ACTION_COUNT
};

/* Stages of the free path: bits for hak_free_decision.stages_tried / stages_hit. A stage
 * "hits" when its lookup finds the pointer (ss/mid/l25), the probe says readable, the magic
 * matches, or the method is one the switch knows. */
enum hak_stage_bit {
    HAK_STAGE_SS = 1u << 0,
    HAK_STAGE_MID = 1u << 1,
    HAK_STAGE_L25 = 1u << 2,
    HAK_STAGE_PROBE = 1u << 3,
    HAK_STAGE_MAGIC = 1u << 4,
    HAK_STAGE_METHOD = 1u << 5,
};

/* Where the allocator is right now; what a crash handler reports. hak_stage_name(). */
enum hak_stage {
    HAK_AT_IDLE = 0,      /* "idle" */
    HAK_AT_ALLOC,         /* "alloc" */
    HAK_AT_SS_LOOKUP,     /* "ss_lookup" */
    HAK_AT_MID_LOOKUP,    /* "mid_lookup" */
    HAK_AT_L25_LOOKUP,    /* "l25_lookup" */
    HAK_AT_PROBE,         /* "probe" */
    HAK_AT_MAGIC_READ,    /* "magic_read": reading hdr->magic at ptr - HEADER_SIZE */
    HAK_AT_DISPATCH,      /* "dispatch": reading the rest of the header, choosing a route */
    HAK_AT_TINY_FREE,     /* "tiny_free" */
    HAK_AT_POOL_FREE,     /* "pool_free" */
    HAK_AT_L25_FREE,      /* "l25_free" */
    HAK_AT_LIBC_FREE,     /* "libc_free" */
    HAK_AT_BIGCACHE,      /* "bigcache" */
    HAK_AT_BATCH,         /* "batch" */
    HAK_AT_WHALE,         /* "whale" */
    HAK_AT_MUNMAP,        /* "munmap" */
    HAK_AT_REALLOC,       /* "realloc" */
    HAK_AT_USABLE_SIZE,   /* "usable_size" */
    HAK_AT_CHECK,         /* "check": hak_debug_check walking the heap */
    HAK_AT_COUNT
};

/* Probe verdicts in hak_free_decision.probe. */
#define HAK_PROBE_NOT_RUN   (-1)
#define HAK_PROBE_UNREADABLE 0
#define HAK_PROBE_READABLE   1

/* Readability probes (HAKMEM_HEADER_PROBE): see probes.h for their code. */
enum hak_probe_kind {
    HAK_PROBE_OFF = 0,          /* "off": no probe, dereference the header (pre-fix; can SEGV) */
    HAK_PROBE_SEED_MINCORE = 1, /* "seed-mincore": the seed's Option 1, exactly as written */
    HAK_PROBE_SEED_MSYNC = 2,   /* "seed-msync": the seed's Option 2, exactly as written */
    HAK_PROBE_MINCORE = 3,      /* "mincore": corrected mincore (page-aligned, both pages of the header) */
    HAK_PROBE_SAFE = 4,         /* "safe": reads the header through the kernel; right for PROT_NONE too */
    HAK_PROBE_COUNT
};

/* The decision of one free. */
typedef struct hak_free_decision {
    uint64_t seq;           /* global free sequence number, 1-based; same as seq= in the route trace */
    uintptr_t ptr;
    uint32_t route;         /* enum hak_route */
    uint32_t action;        /* enum hak_action */
    uint32_t stages_tried;  /* enum hak_stage_bit mask */
    uint32_t stages_hit;    /* enum hak_stage_bit mask */
    int32_t probe;          /* HAK_PROBE_NOT_RUN / _UNREADABLE / _READABLE */
    uint32_t probe_kind;    /* enum hak_probe_kind in force */
    uint32_t magic_found;   /* valid when stages_tried & HAK_STAGE_MAGIC */
    int32_t method;         /* header method read, -1 if the header was not read */
    uint64_t tid;           /* gettid() of the freeing thread */
} hak_free_decision;

/* ------------------------------------------------------- registry reqtrace */
enum hak_reg_kind { HAK_REG_SS = 0, HAK_REG_MID = 1, HAK_REG_L25 = 2 };  /* "ss", "mid", "l25" */

enum hak_reqtrace_op {
    HAK_REQ_REGISTER = 0,        /* "register" */
    HAK_REQ_UNREGISTER = 1,      /* "unregister" */
    HAK_REQ_LOOKUP_HIT = 2,      /* "lookup_hit" */
    HAK_REQ_LOOKUP_MISS = 3,     /* "lookup_miss" */
    HAK_REQ_CAPACITY_ERROR = 4,  /* "capacity_error": registry full, region in use unregistered */
    HAK_REQ_DROPPED = 5,         /* "dropped": registration dropped by fault injection */
    HAK_REQ_COUNT
};

typedef struct hak_reqtrace_rec {
    uint64_t seq;          /* reqtrace sequence number, 1-based */
    uint64_t free_seq;     /* hak_free_decision.seq of the last free begun when this was recorded */
    uintptr_t base;        /* region base (SuperSlab / chunk) */
    uintptr_t addr;        /* address looked up (== base for register/unregister) */
    uint32_t op;           /* enum hak_reqtrace_op */
    uint32_t reg;          /* enum hak_reg_kind */
    uint32_t live;         /* live blocks in the region then (unregister: > 0 means early; lookup_miss: 0) */
    uint32_t pad;
    uint64_t tid;
} hak_reqtrace_rec;

#define HAK_REQTRACE_RING 8192
#define HAK_ROUTE_RING 4096

/* Where the calling thread is in the allocator; a crash handler reads it. */
typedef struct hak_free_state {
    volatile uintptr_t ptr;     /* pointer being freed / reallocated / queried */
    volatile uint32_t stage;    /* enum hak_stage */
    volatile uint32_t pad;
    volatile uint64_t seq;      /* free seq in progress */
} hak_free_state;

typedef struct hak_stats {
    uint64_t allocs, frees;
    uint64_t superslabs, superslabs_registered, superslabs_released_live;
    uint64_t mid_chunks, l25_chunks;
    uint64_t mmap_live, mmap_cached;
    uint64_t malloc_live;
    uint64_t route_counts[HAK_ROUTE_COUNT];
} hak_stats;

/* ------------------------------------------------------------- allocation */
HAK_API int hak_init(void);   /* reads HAKMEM_* knobs; implicit on first use */
HAK_API uint32_t hak_abi_version(void);
HAK_API void *hak_alloc_at(size_t size, uintptr_t site);
HAK_API void hak_free_at(void *ptr, size_t size, uintptr_t site);   /* size/site may be 0 */
HAK_API void *hak_calloc_at(size_t nmemb, size_t size, uintptr_t site);
HAK_API void *hak_realloc_at(void *ptr, size_t size, uintptr_t site);
HAK_API void *hak_memalign_at(size_t alignment, size_t size, uintptr_t site);
HAK_API size_t hak_usable_size(void *ptr);
/* The internal free entry points the router dispatches to (the seed calls them directly). */
HAK_API void hak_tiny_free(void *ptr);

/* ------------------------------------------------------------------- knobs */
/* Names are the environment variable names. Values as strings ("0"/"1", numbers, enum
 * names). Every knob can be set at any time; set before the first allocation to be sure
 * nothing was done under the old value.
 *   HAKMEM_MODE                 direct | ldpreload  (default: ldpreload if LD_PRELOAD names libhakmem)
 *   HAKMEM_INVALID_FREE         0|1   g_invalid_free_mode (default 1)
 *   HAKMEM_INVALID_FREE_LOG     0|1   g_invalid_free_log  (default 1)
 *   HAKMEM_HEADER_PROBE         off|seed-mincore|seed-msync|mincore|safe (default off; safe in
 *                                     the preload library libhakmem_preload.so)
 *   HAKMEM_FREE_ROUTE_TRACE     0|1   one stderr line per free
 *   HAKMEM_SUPER_REG_REQTRACE   0|1|2|3|4 registry request ring (2: also print each request;
 *                                     3: record only changes - register, unregister, capacity_error,
 *                                     dropped - so lookups never push them out of the ring;
 *                                     4: as 3, and print each change as it happens)
 *   HAKMEM_ALLOC_TRACE          0|1   one [hakmem-alloc] line per allocation (path, size, pointer)
 *   HAKMEM_TRACE_FD             N     the fd hakmem's lines go to (default 2, stderr)
 *   HAKMEM_TRACE_FILE           PATH  environment only: append hakmem's lines to PATH instead of
 *                                     fd 2; "%p" in PATH becomes the process id (one file per
 *                                     process, also after fork in the preload library)
 *   HAKMEM_TINY / HAKMEM_POOL / HAKMEM_L25   0|1 pool features (off: MALLOC method)
 *   HAKMEM_BIGCACHE / HAKMEM_BIGCACHE_L25 / HAKMEM_BATCH_MADVISE / HAKMEM_WHALE   0|1
 *   HAKMEM_SS_REG_CAPACITY      N     SuperSlab registry capacity (SP_META_CAPACITY_ERROR beyond)
 *   HAKMEM_SS_REG_DROP_EVERY    N     drop every Nth SuperSlab registration (0 = never)
 *   HAKMEM_MID_REG_DROP_EVERY / HAKMEM_L25_REG_DROP_EVERY   N   same for the pool registries
 *   HAKMEM_SS_EARLY_RELEASE     K     release a SuperSlab when its live count drops to K (0 = off)
 *   HAKMEM_SS_GUARD             none|protnone  below each SuperSlab: an unmapped hole (none,
 *                                     unmapped when made) or a PROT_NONE guard page
 */
HAK_API int hak_set_knob(const char *name, const char *value);
HAK_API int hak_get_knob(const char *name, char *buf, size_t cap);
/* Fills buf with the knob names separated by '\n'; returns the length needed. */
HAK_API size_t hak_knob_names(char *buf, size_t cap);
HAK_API const char *hak_last_error(void);

#define HAK_OK 0
#define HAK_EINVAL (-1)      /* bad value */
#define HAK_ENOKNOB (-2)     /* unknown knob name */
#define HAK_ERANGE (-3)      /* buffer too small */
#define HAK_ECHECK (-4)      /* consistency check found a broken invariant */

/* ----------------------------------------------------------- introspection */
HAK_API void hak_get_geometry(hak_geometry *out);
HAK_API int hak_last_free_decision(hak_free_decision *out);   /* calling thread's last free; HAK_EINVAL if none */
/* Copies up to cap decisions from the global route ring, oldest first; returns the count. */
HAK_API size_t hak_route_ring_get(hak_free_decision *out, size_t cap);
HAK_API void hak_route_ring_clear(void);
HAK_API const char *hak_route_name(uint32_t route);
HAK_API const char *hak_action_name(uint32_t action);
HAK_API const char *hak_stage_name(uint32_t stage);
HAK_API const char *hak_probe_name(uint32_t kind);
HAK_API const char *hak_reqtrace_op_name(uint32_t op);
HAK_API int hak_owner(const void *addr, hak_owner_info *out);     /* HAK_OK; kind NONE if unowned */
/* The oracle's question, cheaply: hak_owner's kind for addr, or'ed with HAK_OWNER_LIVE_BLOCK when
 * addr is the start (block_ptr) of a block in state LIVE. Same answer as hak_owner, without
 * filling a hak_owner_info; the replay asks it at every allocation and before every free. */
#define HAK_OWNER_LIVE_BLOCK 0x100u
#define HAK_OWNER_KIND_MASK 0xffu
HAK_API uint32_t hak_owner_kind(const void *addr);
/* The same two questions folded into the calls they follow or precede, so that the oracle costs
 * no lookup (and no second trip through the lock) on the common paths:
 * hak_alloc_owner_kind: hak_owner_kind(ptr) as it stood when the calling thread's last
 *   allocation returned ptr (hak_owner_kind(ptr) now, for any other pointer). Asked right after
 *   malloc/calloc/memalign: on one thread nothing can have changed in between; on several, the
 *   answer of a query made together with the allocation. Not after realloc (it frees too).
 * hak_free_owner_kind_at: hak_free_at(ptr, size, site), returning hak_owner_kind(ptr) as it stood
 *   just before the free, under the same lock. */
HAK_API uint32_t hak_alloc_owner_kind(const void *ptr);
HAK_API uint32_t hak_free_owner_kind_at(void *ptr, size_t size, uintptr_t site);
HAK_API hak_free_state *hak_debug_free_state(void);               /* calling thread's state */
HAK_API void hak_get_stats(hak_stats *out);
/* Walks free lists, registries and headers. HAK_OK, or HAK_ECHECK with the first broken
 * invariant written to msg (NUL-terminated, truncated to cap). */
HAK_API int hak_debug_check(char *msg, size_t cap);

/* Registry request trace (HAKMEM_SUPER_REG_REQTRACE). The dump prints to stderr the records
 * of ptr's SuperSlab-sized region (all records if ptr is NULL); the twin copies them, oldest
 * first, into out and returns how many there are (may exceed cap: only cap are copied). */
HAK_API void hak_super_reg_reqtrace_dump(void *ptr);
HAK_API size_t hak_super_reg_reqtrace_get(const void *ptr, hak_reqtrace_rec *out, size_t cap);
HAK_API void hak_super_reg_reqtrace_clear(void);

#ifdef __cplusplus
}
#endif
#endif /* HAKMEM_H */
