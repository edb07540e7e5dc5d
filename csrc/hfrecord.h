/* hfrecord.h - the raw log format of libhfrecord.so, the LD_PRELOAD recorder (hfrecord.c).
 *
 * The recorder writes one log per process image into $HFRECORD_DIR:
 *
 *   <pid>-<gen>.hfrec   a header page, then chunks of records (this file's structs)
 *   <pid>-<gen>.maps    memory-map snapshots: the executable, file-backed lines of
 *                       /proc/self/maps, appended one snapshot after the other
 *
 * gen is 0 for the first image of a pid and counts up for the images it exec()s (the
 * recorder takes the first name that does not exist yet). A forked child writes its own
 * pair of files under its own pid.
 *
 * Each thread fills a private buffer and writes it with pwrite() into a chunk slot of the
 * file it reserved (one atomic add per chunk, so threads never share a cache line per call).
 * A chunk slot is HFREC_CHUNK_SIZE bytes: an hfrec_chunk header, then up to
 * HFREC_CHUNK_RECORDS records. A slot whose magic is missing was reserved and never written
 * (the process died first): readers skip it. Partial chunks are written at thread exit, at
 * process exit, before exec(), and from a handler of fatal signals (SIGSEGV, SIGABRT, ...
 * when the program left them at their default), so the calls before a crash are kept; a
 * SIGKILL loses what the threads had not written yet (at most one chunk each).
 *
 * Order across threads: every record carries a timestamp, taken after the real call returned
 * for allocations and before the real call for frees (and realloc, which takes two records:
 * BEGIN before, END after). So an address is never seen allocated again before the free that
 * released it, and merging the threads' records by timestamp gives the order of the calls.
 * Ties are broken by thread, then by the thread's own order. The clock is the TSC where the
 * kernel itself trusts it across CPUs (clocksource "tsc", x86-64), else CLOCK_MONOTONIC. As
 * long as only one thread has called the allocator, timestamps are 0: its records precede
 * the first record of any other thread, which switches timestamps on before taking its own.
 *
 * Little-endian, native word size. docs/trace-format.md ("Recorder raw logs") has the prose.
 */
#ifndef HFRECORD_H
#define HFRECORD_H

#include <stdint.h>

#define HFREC_MAGIC "HFRECRD"          /* 8 bytes with the NUL */
#define HFREC_CHUNK_MAGIC "HFCHUNK"    /* 8 bytes with the NUL */
#define HFREC_VERSION 1
#define HFREC_HEADER_SIZE 4096          /* chunk slots start here */
#define HFREC_RECORD_SIZE 48
#define HFREC_CHUNK_HEADER_SIZE 64
#define HFREC_CHUNK_SIZE 65536
#define HFREC_CHUNK_RECORDS ((HFREC_CHUNK_SIZE - HFREC_CHUNK_HEADER_SIZE) / HFREC_RECORD_SIZE)   /* 1364 */

enum hfrec_op {
    HFREC_EMPTY = 0,
    HFREC_MALLOC = 1,           /* ret = malloc(b) */
    HFREC_CALLOC = 2,           /* ret = calloc(a, b) */
    HFREC_REALLOC_BEGIN = 3,    /* realloc(a, b) starts (also reallocarray, b = nmemb * size) */
    HFREC_REALLOC_END = 4,      /* ret = realloc(a, b) returned */
    HFREC_MEMALIGN = 5,         /* ret = memalign(a, b) */
    HFREC_POSIX_MEMALIGN = 6,   /* posix_memalign(&ret, a, b); ret 0 when it failed */
    HFREC_ALIGNED_ALLOC = 7,    /* ret = aligned_alloc(a, b) */
    HFREC_VALLOC = 8,           /* ret = valloc(b); a = page size */
    HFREC_PVALLOC = 9,          /* ret = pvalloc(b); a = page size */
    HFREC_FREE = 10,            /* free(a) */
    HFREC_USABLE_SIZE = 11,     /* ret = malloc_usable_size(a) */
    HFREC_THREAD_END = 12,      /* the thread is exiting (its last TSD destructor round) */
    HFREC_MAPS = 13,            /* a snapshot: a = byte offset in the .maps file, b = its length */
    HFREC_FORK = 14,            /* fork() returned ret = the child's pid (the child inherits the heap) */
    HFREC_OP_COUNT
};

/* One record, 48 bytes. */
typedef struct hfrec_record {
    uint8_t op;          /* enum hfrec_op */
    uint8_t flags;       /* 0 */
    uint16_t reserved;
    uint32_t reserved2;
    uint64_t ts;         /* order key: header.clock ticks; 0 while one thread was the only caller */
    uint64_t ret;        /* returned pointer (or usable size) */
    uint64_t a;          /* pointer argument, nmemb or alignment */
    uint64_t b;          /* size */
    uint64_t site;       /* return address of the call (__builtin_return_address(0)) */
} hfrec_record;

/* The header of a chunk slot, 64 bytes; count records follow it. */
typedef struct hfrec_chunk {
    char magic[8];       /* "HFCHUNK\0" */
    uint32_t thread;     /* 1, 2, ...: the order in which threads first called the allocator */
    uint32_t tid;        /* kernel thread id */
    uint32_t count;      /* records written */
    uint32_t capacity;   /* HFREC_CHUNK_RECORDS */
    uint64_t index;      /* this thread's chunk number: 0, 1, ... */
    uint64_t reserved[4];
} hfrec_chunk;

#define HFREC_CLOCK_MONOTONIC 1    /* header.clock: nanoseconds of CLOCK_MONOTONIC */
#define HFREC_CLOCK_TSC 2          /* header.clock: TSC ticks */

#define HFREC_FLAG_EXITED 1u    /* header.flags: the process ran its exit-time destructors */
#define HFREC_FLAG_EXEC 2u      /* it called exec() (the next generation continues the story) */
#define HFREC_FLAG_SIGNAL 4u    /* it died of header.signal (a fatal signal left at its default) */
#define HFREC_FLAG_FORKED 8u    /* this image is a forked child (not exec'd since): it inherited the heap */

/* The header page, written when the log is opened; flags and signal again at the end. */
typedef struct hfrec_header {
    char magic[8];              /* "HFRECRD\0" */
    uint32_t version;           /* HFREC_VERSION */
    uint32_t record_size;       /* HFREC_RECORD_SIZE */
    uint32_t chunk_size;        /* HFREC_CHUNK_SIZE */
    uint32_t chunk_header_size; /* HFREC_CHUNK_HEADER_SIZE */
    uint32_t pid;
    uint32_t ppid;
    uint64_t start_ns;          /* CLOCK_REALTIME when the log was opened */
    uint64_t start_mono_ns;     /* CLOCK_MONOTONIC at the same moment (the records' clock) */
    uint32_t generation;        /* exec() generation: <gen> in the file name */
    uint32_t flags;             /* HFREC_FLAG_* */
    uint32_t signal;            /* with HFREC_FLAG_SIGNAL */
    uint32_t pointer_size;      /* sizeof(void *) */
    uint32_t page_size;
    uint32_t clock;             /* what record.ts counts: HFREC_CLOCK_* */
    uint64_t dropped;           /* records lost (a buffer could not be allocated) */
    uint64_t start_clock;       /* the record clock at start_mono_ns */
    char reserved[40];
    char exe[256];              /* readlink("/proc/self/exe"), NUL-terminated, truncated */
    char cmdline[3712];         /* /proc/self/cmdline: arguments separated by NUL, truncated */
} hfrec_header;

_Static_assert(sizeof(hfrec_record) == HFREC_RECORD_SIZE, "hfrec_record is 48 bytes");
_Static_assert(sizeof(hfrec_chunk) == HFREC_CHUNK_HEADER_SIZE, "hfrec_chunk is 64 bytes");
_Static_assert(sizeof(hfrec_header) == HFREC_HEADER_SIZE, "hfrec_header fills the header page");

#endif
