/* hfdriver.h - the toolkit's own C side (libhfdriver.so), separate from the allocator.
 *
 * It binds to an allocator's hak_* functions at run time (dlsym on a library the caller
 * names, or a table of function pointers the Python layer hands over), so the same driver
 * drives hakmem-ref, a user's own hakmem build, or plain libc malloc/free. It holds the
 * forensic machinery that must run in C: the crash handler, the readability probes and
 * the replay loop (hftrace.h, hfreplay.c).
 *
 * Exported symbols start with hfd_. Error convention as in hakmem.h: 0 or a negative
 * HFD_E* code, and hfd_last_error() for the message.
 */
#ifndef HFDRIVER_H
#define HFDRIVER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HFD_API __attribute__((visibility("default")))
#define HFD_ABI_VERSION 1u

#define HFD_OK 0
#define HFD_EINVAL (-1)
#define HFD_ENOSYM (-2)     /* a required symbol is missing from the allocator */
#define HFD_EDLOPEN (-3)    /* the library could not be opened */
#define HFD_ENOTBOUND (-4)  /* no allocator bound yet */
#define HFD_ESYS (-5)       /* a system call failed (errno in the message) */

/* The allocator surface the driver calls. Required: alloc, free. The rest is optional; a
 * NULL entry disables what needs it (e.g. no debug_free_state: crash stage "unknown"). */
typedef struct hfd_vtable {
    void *(*alloc)(size_t size, uintptr_t site);
    void (*free)(void *ptr, size_t size, uintptr_t site);
    void *(*calloc)(size_t nmemb, size_t size, uintptr_t site);
    void *(*realloc)(void *ptr, size_t size, uintptr_t site);
    void *(*memalign)(size_t alignment, size_t size, uintptr_t site);
    void *(*debug_free_state)(void);               /* hak_debug_free_state: hak_free_state* */
    const char *(*stage_name)(uint32_t stage);     /* hak_stage_name */
    int (*last_free_decision)(void *out);          /* hak_last_free_decision */
    int (*owner)(const void *addr, void *out);     /* hak_owner */
    int (*debug_check)(char *msg, size_t cap);     /* hak_debug_check */
} hfd_vtable;

/* Which allocator is bound. */
enum hfd_binding { HFD_BOUND_NONE = 0, HFD_BOUND_HAKMEM = 1, HFD_BOUND_LIBC = 2, HFD_BOUND_TABLE = 3 };

/* Crash record, written by the signal handler into memory the caller provides (the Python
 * layer maps it MAP_SHARED before fork, so the parent reads it after the child died). */
#define HFD_CRASH_MAGIC 0x48464443u  /* "HFDC" */
#define HFD_CRASH_MAPS_MAX 65536
typedef struct hfd_crash_record {
    uint32_t magic;          /* HFD_CRASH_MAGIC once the handler has filled the record */
    uint32_t version;        /* HFD_ABI_VERSION */
    int32_t signo;           /* SIGSEGV, SIGBUS, SIGABRT, ... */
    int32_t si_code;
    uintptr_t fault_addr;    /* siginfo si_addr (0 for SIGABRT) */
    uintptr_t ptr;           /* pointer being freed (hak_free_state.ptr), 0 if unknown */
    uint32_t stage;          /* hak_stage in force, 0xffffffff if unknown */
    uint32_t has_state;      /* 1 if ptr/stage came from the allocator's free state */
    uint64_t free_seq;       /* hak_free_state.seq */
    uint64_t event_index;    /* the crashing thread's hfd_set_event_index() value; UINT64_MAX if never set */
    uint64_t tid;
    char stage_name[32];
    uint32_t maps_len;       /* bytes of /proc/self/maps copied below (truncated to the buffer) */
    uint32_t maps_truncated;
    char maps[HFD_CRASH_MAPS_MAX];
} hfd_crash_record;

HFD_API uint32_t hfd_abi_version(void);
HFD_API const char *hfd_last_error(void);

/* Bind to the allocator loaded from path (dlopen RTLD_NOW|RTLD_NOLOAD first, then a plain
 * RTLD_NOW|RTLD_LOCAL), resolving hak_alloc_at, hak_free_at and the optional symbols. */
HFD_API int hfd_bind_library(const char *path);
/* Bind to libc malloc/free (the baseline). */
HFD_API int hfd_bind_libc(void);
/* Bind to a table of function pointers (copied). */
HFD_API int hfd_bind_table(const hfd_vtable *table);
HFD_API int hfd_binding(void);   /* enum hfd_binding */
/* Names of the optional symbols the bound library lacks, '\n'-separated; returns length needed. */
HFD_API size_t hfd_missing_symbols(char *buf, size_t cap);

/* Calls through the binding (for tests and stepping). */
HFD_API void *hfd_alloc(size_t size, uintptr_t site);
HFD_API void hfd_free(void *ptr, size_t size, uintptr_t site);

/* Crash handling: installs SIGSEGV/SIGBUS/SIGABRT/SIGILL/SIGFPE handlers on an alternate
 * stack that fill *rec (signal, fault address, the allocator's free state, event index, tid,
 * /proc/self/maps), print one "[hakmem] CRASH: ..." line to stderr, then re-raise the signal
 * with the default action so the process dies with it. */
HFD_API int hfd_install_crash_handler(hfd_crash_record *rec);
HFD_API void hfd_uninstall_crash_handler(void);
/* Per thread: each replay thread sets its own, and a crash reports the crashing thread's. */
HFD_API void hfd_set_event_index(uint64_t index);

/* Readability probes, the same code the allocator runs (probes.h), plus ground truth.
 * kind: enum hak_probe_kind from hakmem.h (0 off .. 4 safe), or HFD_PROBE_MAPS for the
 * /proc/self/maps ground truth (readable iff every byte lies in a mapping with 'r').
 * Returns 1 readable, 0 unreadable, HFD_EINVAL for an unknown kind. "off" always says 1. */
#define HFD_PROBE_MAPS 100
HFD_API int hfd_probe(int kind, const void *addr, size_t len);
/* Times n calls of a probe on addr; returns total nanoseconds (CLOCK_MONOTONIC) and, if
 * cycles is not NULL, total TSC cycles (0 where no TSC). */
HFD_API uint64_t hfd_probe_time(int kind, const void *addr, size_t len, uint64_t n, uint64_t *cycles);

#ifdef __cplusplus
}
#endif
#endif /* HFDRIVER_H */
