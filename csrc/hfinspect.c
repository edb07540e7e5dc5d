/* hfinspect.c - `hfreplay --stop-before N`: replay events [0, N) one by one, then look at the
 * heap the way event N is about to see it, and print what was found as one JSON document.
 *
 * This is how the toolkit explains an event after the fact: the replay is deterministic for a
 * serial trace (hfreplay runs with ASLR off), so a second run stopped just before event N sees
 * the same addresses the saved result recorded. What it reports: the bytes around
 * ptr - HEADER_SIZE (read through the kernel, so unreadable memory is reported, not faulted
 * on), who owns each address of interest, the verdict of every readability probe on the header,
 * the registry's change history for the pointer's region, the consistency check, and the
 * memory map. Everything printed is a fact read from the live process.
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hakmem.h"
#include "hfinspect.h"
#include "hftrace.h"
#include "probes.h"

#define DUMP_BEFORE 64   /* bytes shown below ptr (the header is the last 32 of them) */
#define DUMP_AFTER 64
#define MAX_REQ 8192

static const char *const k_owner_names[] = {"none", "tiny", "mid", "l25", "mmap", "malloc"};
static const char *const k_state_names[] = {"none", "live", "free", "cached"};
static const char *const k_reg_names[] = {"ss", "mid", "l25"};
static const char *const k_probe_names[] = {"off", "seed-mincore", "seed-msync", "mincore", "safe"};

typedef struct alloc_api {
    int (*owner)(const void *, hak_owner_info *);
    size_t (*reqtrace_get)(const void *, hak_reqtrace_rec *, size_t);
    const char *(*reqop_name)(uint32_t);
    int (*check)(char *, size_t);
    int (*get_knob)(const char *, char *, size_t);
    void (*get_stats)(hak_stats *);
} alloc_api;

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c == '\n') fputs("\\n", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c < 0x20 || c >= 0x7f) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

static void print_owner(FILE *f, const alloc_api *api, uint64_t addr) {
    hak_owner_info o;
    fprintf(f, "{\"addr\": %" PRIu64, addr);
    if (!api->owner || api->owner((const void *)(uintptr_t)addr, &o) != 0) {
        fputs(", \"kind\": null}", f);
        return;
    }
    fprintf(f, ", \"kind\": \"%s\", \"state\": \"%s\", \"block_ptr\": %" PRIu64 ", \"block_size\": %" PRIu64
               ", \"class_bytes\": %" PRIu64 ", \"region_base\": %" PRIu64 ", \"region_size\": %" PRIu64
               ", \"class_index\": %d, \"registered\": %s, \"method\": %u}",
            o.kind < 6 ? k_owner_names[o.kind] : "?", o.state < 4 ? k_state_names[o.state] : "?", (uint64_t)o.block_ptr,
            (uint64_t)o.block_size, (uint64_t)o.class_bytes, (uint64_t)o.region_base, (uint64_t)o.region_size,
            o.class_index, o.registered ? "true" : "false", o.method);
}

/* Bytes [base, base+len) read line by line through the kernel: a hex string with "??" for
 * every byte of a line that could not be read. */
static void print_dump(FILE *f, uint64_t base, size_t len) {
    fprintf(f, "{\"base\": %" PRIu64 ", \"len\": %zu, \"hex\": \"", base, len);
    for (size_t off = 0; off < len; off += 16) {
        unsigned char line[16];
        size_t n = len - off < 16 ? len - off : 16;
        int ok = hak_probe_safe((const void *)(uintptr_t)(base + off), n, line);
        for (size_t i = 0; i < n; i++) {
            if (ok) fprintf(f, "%02x", line[i]);
            else fputs("??", f);
        }
    }
    fputs("\"}", f);
}

static void print_probes(FILE *f, uint64_t addr, size_t len) {
    fprintf(f, "{\"addr\": %" PRIu64 ", \"len\": %zu", addr, len);
    for (int k = 1; k < HAK_PROBE_COUNT; k++)
        fprintf(f, ", \"%s\": %s", k_probe_names[k], hfd_probe(k, (const void *)(uintptr_t)addr, len) == 1 ? "true" : "false");
    fprintf(f, ", \"maps\": %s}", hfd_probe(HFD_PROBE_MAPS, (const void *)(uintptr_t)addr, len) == 1 ? "true" : "false");
}

static void print_reqtrace(FILE *f, const alloc_api *api, uint64_t addr) {
    static hak_reqtrace_rec recs[MAX_REQ];
    fputc('[', f);
    if (api->reqtrace_get) {
        size_t n = api->reqtrace_get((const void *)(uintptr_t)addr, recs, MAX_REQ);
        if (n > MAX_REQ) n = MAX_REQ;
        for (size_t i = 0; i < n; i++) {
            const hak_reqtrace_rec *r = &recs[i];
            const char *op = api->reqop_name ? api->reqop_name(r->op) : "?";
            fprintf(f, "%s{\"seq\": %" PRIu64 ", \"free_seq\": %" PRIu64 ", \"op\": \"%s\", \"reg\": \"%s\", \"base\": %" PRIu64
                       ", \"addr\": %" PRIu64 ", \"live\": %u, \"tid\": %" PRIu64 "}",
                    i ? ", " : "", r->seq, r->free_seq, op, r->reg < 3 ? k_reg_names[r->reg] : "?", (uint64_t)r->base,
                    (uint64_t)r->addr, r->live, r->tid);
        }
    }
    fputc(']', f);
}

static void print_maps(FILE *f) {
    char buf[65536];
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    size_t n = 0;
    if (fd >= 0) {
        ssize_t r;
        while (n < sizeof buf - 1 && (r = read(fd, buf + n, sizeof buf - 1 - n)) > 0) n += (size_t)r;
        close(fd);
    }
    buf[n] = 0;
    json_str(f, buf);
}

/* The pointer event rec hands to free (0 for events that free nothing). */
static uint64_t target_of(const hft_record *r, const uint64_t *objptr) {
    switch (r->op) {
    case HFT_OP_FREE:
    case HFT_OP_FREE_LIBC:
    case HFT_OP_DOUBLE_FREE: return r->obj ? objptr[r->obj] : 0;
    case HFT_OP_FREE_INTERIOR: return objptr[r->obj] + (uint64_t)r->arg;
    case HFT_OP_FREE_RAW: return (uint64_t)r->arg;
    case HFT_OP_REALLOC: return r->obj2 ? objptr[r->obj2] : 0;
    case HFT_OP_CORRUPT: return objptr[r->obj] + (uint64_t)r->arg;
    default: return 0;
    }
}

int hfi_inspect(const void *trace, uint64_t len, hfr_header *res, hfr_event *events, uint64_t stop, void *handle, int judge,
                int threads, const uint64_t *extra, int n_extra, FILE *out, char *err, size_t errcap) {
    const hft_header *h = trace;
    const hft_record *recs = (const hft_record *)((const char *)trace + h->records_offset);
    if (stop > h->num_events) {
        snprintf(err, errcap, "--stop-before %" PRIu64 ": the trace has %" PRIu64 " events", stop, h->num_events);
        return -1;
    }
    alloc_api api;
    memset(&api, 0, sizeof api);
    if (handle) {
        *(void **)&api.owner = dlsym(handle, "hak_owner");
        *(void **)&api.reqtrace_get = dlsym(handle, "hak_super_reg_reqtrace_get");
        *(void **)&api.reqop_name = dlsym(handle, "hak_reqtrace_op_name");
        *(void **)&api.check = dlsym(handle, "hak_debug_check");
        *(void **)&api.get_knob = dlsym(handle, "hak_get_knob");
        *(void **)&api.get_stats = dlsym(handle, "hak_get_stats");
    }
    /* Replay events [0, stop) with hfd_replay itself (not stepping): the same code path, so the
     * same allocations - also libc's - as the replay being inspected, and the same addresses. */
    if (stop > 0) {
        hfr_options opts = {.check_every = 0, .threads = (uint32_t)threads, .judge = (uint32_t)judge, .limit = stop};
        if (hfd_replay(trace, len, res, events, &opts) != HFD_OK) {
            snprintf(err, errcap, "%s", hfd_last_error());
            return -1;
        }
    } else {
        res->threads_used = 1;
    }
    uint64_t *objptr = calloc((size_t)h->num_objects + 1, sizeof *objptr);
    if (!objptr) {
        snprintf(err, errcap, "cannot allocate the object table");
        return -1;
    }
    for (uint64_t i = 0; i < stop; i++) {
        const hft_record *r = &recs[i];
        if (r->op == HFT_OP_MALLOC || r->op == HFT_OP_CALLOC || r->op == HFT_OP_MEMALIGN || r->op == HFT_OP_LIBC_MALLOC ||
            (r->op == HFT_OP_REALLOC && r->obj))
            objptr[r->obj] = events[i].ptr;
    }

    uint64_t target = stop < h->num_events ? target_of(&recs[stop], objptr) : 0;
    uint64_t hdr_addr = target ? target - HAK_HEADER_SIZE : 0;
    fprintf(out, "{\"schema\": \"hfreplay/inspect/1\", \"event\": %" PRIu64 ", \"events_done\": %" PRIu64, stop, stop);
    fprintf(out, ", \"op\": %u, \"target\": %" PRIu64 ", \"header_addr\": %" PRIu64, stop < h->num_events ? recs[stop].op : 0,
            target, hdr_addr);
    fputs(", \"dump\": ", out);
    if (target) print_dump(out, target - DUMP_BEFORE, DUMP_BEFORE + DUMP_AFTER);
    else fputs("null", out);
    fputs(", \"owners\": [", out);
    int first = 1;
    if (target) {
        print_owner(out, &api, hdr_addr);
        fputs(", ", out);
        print_owner(out, &api, target);
        first = 0;
    }
    for (int k = 0; k < n_extra; k++) {
        if (!first) fputs(", ", out);
        print_owner(out, &api, extra[k]);
        first = 0;
    }
    fputs("], \"probes\": [", out);
    first = 1;
    if (target) {
        print_probes(out, hdr_addr, HAK_HEADER_SIZE);
        first = 0;
    }
    for (int k = 0; k < n_extra; k++) {
        if (!first) fputs(", ", out);
        print_probes(out, extra[k], 1);
        first = 0;
    }
    fputs("], \"reqtrace\": ", out);
    print_reqtrace(out, &api, target ? target : (n_extra ? extra[0] : 0));
    fputs(", \"reqtrace_header_region\": ", out);
    if (target && ((hdr_addr ^ target) & ~(uint64_t)(HAK_SUPERSLAB_SIZE - 1))) print_reqtrace(out, &api, hdr_addr);
    else fputs("[]", out);
    fputs(", \"knobs\": {", out);
    if (api.get_knob) {
        static const char *const names[] = {"HAKMEM_SS_REG_CAPACITY", "HAKMEM_SS_REG_DROP_EVERY", "HAKMEM_SS_EARLY_RELEASE",
                                            "HAKMEM_HEADER_PROBE", "HAKMEM_MODE", "HAKMEM_SUPER_REG_REQTRACE"};
        for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
            char v[64];
            if (api.get_knob(names[k], v, sizeof v) != 0) continue;
            fprintf(out, "%s\"%s\": ", k ? ", " : "", names[k]);
            json_str(out, v);
        }
    }
    fputs("}, \"stats\": ", out);
    if (api.get_stats) {
        hak_stats s;
        api.get_stats(&s);
        fprintf(out, "{\"superslabs\": %" PRIu64 ", \"superslabs_registered\": %" PRIu64 ", \"superslabs_released_live\": %" PRIu64
                     ", \"mid_chunks\": %" PRIu64 ", \"l25_chunks\": %" PRIu64 "}",
                s.superslabs, s.superslabs_registered, s.superslabs_released_live, s.mid_chunks, s.l25_chunks);
    } else {
        fputs("null", out);
    }
    fputs(", \"check\": ", out);
    if (api.check) {
        char msg[512];
        if (api.check(msg, sizeof msg) == 0) fputs("null", out);
        else json_str(out, msg);
    } else {
        fputs("null", out);
    }
    fputs(", \"maps\": ", out);
    print_maps(out);
    fputs("}\n", out);
    fflush(out);
    free(objptr);
    return 0;
}
