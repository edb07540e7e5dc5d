/* hfrecord.h - the raw log format of libhfrecord.so, the LD_PRELOAD recorder (hfrecord.c).
 *
 * The recorder writes one log per process image into $HFRECORD_DIR:
 *
 *   <pid>-<gen>.hfrec   header page + fixed-size records (this file's structs)
 *   <pid>-<gen>.maps    memory-map snapshots: the executable, file-backed lines of
 *                       /proc/self/maps, appended one snapshot after the other
 *
 * gen is 0 for the first image of a pid and counts up for the images it exec()s (the
 * recorder takes the first name that does not exist yet). A forked child writes its own
 * pair of files under its own pid.
 *
 * The .hfrec file is written through a shared mapping, so whatever a process recorded is in
 * the file even when it crashes, is killed, or exec()s: there is no buffer to flush. Records
 * are reserved by an atomic add on hfrec_header.tail, which makes the file order the global
 * order of the calls across threads: allocations take their slot after the real call
 * returned, frees before the real free runs, so an address is never seen allocated again
 * before the free that released it. realloc takes two slots (BEGIN before the call, END
 * after it) for the same reason. A slot whose op is still 0 was reserved by a thread that
 * never finished writing it (the process died in between); readers skip it.
 *
 * Little-endian, native word size. docs/trace-format.md ("Recorder raw logs") has the prose.
 */
#ifndef HFRECORD_H
#define HFRECORD_H

#include <stdint.h>

#define HFREC_MAGIC "HFRECRD"          /* 8 bytes with the NUL */
#define HFREC_VERSION 1
#define HFREC_HEADER_SIZE 4096          /* records start here */
#define HFREC_RECORD_SIZE 48
/* The file is mapped in windows of this many bytes: a multiple of the page size and of the
 * record size, so a record never straddles two windows. */
#define HFREC_WINDOW_SIZE (12288u * 256u)   /* 3 MiB, 65536 records */

enum hfrec_op {
    HFREC_EMPTY = 0,            /* reserved, never completed */
    HFREC_MALLOC = 1,           /* ret = malloc(b) */
    HFREC_CALLOC = 2,           /* ret = calloc(a, b) */
    HFREC_REALLOC_BEGIN = 3,    /* realloc(a, b) starts (slot taken before the call) */
    HFREC_REALLOC_END = 4,      /* ret = realloc(a, b) returned */
    HFREC_MEMALIGN = 5,         /* ret = memalign(a, b) */
    HFREC_POSIX_MEMALIGN = 6,   /* posix_memalign(&ret, a, b); ret 0 on failure */
    HFREC_ALIGNED_ALLOC = 7,    /* ret = aligned_alloc(a, b) */
    HFREC_VALLOC = 8,           /* ret = valloc(b); a = page size */
    HFREC_PVALLOC = 9,          /* ret = pvalloc(b); a = page size */
    HFREC_FREE = 10,            /* free(a) (slot taken before the call) */
    HFREC_USABLE_SIZE = 11,     /* ret = malloc_usable_size(a) */
    HFREC_THREAD_END = 12,      /* the thread is exiting (its last TSD destructor round) */
    HFREC_MAPS = 13,            /* a snapshot: a = byte offset in the .maps file, b = its length */
    HFREC_OP_COUNT
};

/* One record, 48 bytes. */
typedef struct hfrec_record {
    uint8_t op;          /* enum hfrec_op; stored last, with release order */
    uint8_t flags;       /* 0 */
    uint16_t reserved;
    uint32_t thread;     /* 1, 2, ...: the order in which threads first called the allocator */
    uint32_t tid;        /* kernel thread id */
    uint32_t reserved2;
    uint64_t ret;        /* returned pointer (or usable size) */
    uint64_t a;          /* pointer argument, nmemb or alignment */
    uint64_t b;          /* size */
    uint64_t site;       /* return address of the call (__builtin_return_address(0)) */
} hfrec_record;

#define HFREC_FLAG_EXITED 1u   /* header.flags: the process ran its exit-time destructors */

/* The header page. tail is updated atomically by every writer; the other fields are
 * written once when the log is opened, except flags and dropped. */
typedef struct hfrec_header {
    char magic[8];              /* "HFRECRD\0" */
    uint32_t version;           /* HFREC_VERSION */
    uint32_t record_size;       /* HFREC_RECORD_SIZE */
    uint64_t tail;              /* bytes of records reserved after the header page */
    uint32_t pid;
    uint32_t ppid;
    uint64_t start_ns;          /* CLOCK_REALTIME when the log was opened */
    uint32_t generation;        /* exec() generation: <gen> in the file name */
    uint32_t flags;             /* HFREC_FLAG_* */
    uint64_t records_offset;    /* HFREC_HEADER_SIZE */
    uint64_t dropped;           /* records lost (a window could not be mapped) */
    uint32_t pointer_size;      /* sizeof(void *) */
    uint32_t page_size;
    uint64_t window_size;       /* HFREC_WINDOW_SIZE */
    char reserved[48];
    char exe[256];              /* readlink("/proc/self/exe"), NUL-terminated, truncated */
    char cmdline[3712];         /* /proc/self/cmdline: arguments separated by NUL, truncated */
} hfrec_header;

_Static_assert(sizeof(hfrec_record) == HFREC_RECORD_SIZE, "hfrec_record is 48 bytes");
_Static_assert(sizeof(hfrec_header) == HFREC_HEADER_SIZE, "hfrec_header fills the header page");
_Static_assert(HFREC_WINDOW_SIZE % HFREC_RECORD_SIZE == 0, "records never straddle windows");
_Static_assert(HFREC_WINDOW_SIZE % 4096 == 0, "windows are page aligned");

#endif
