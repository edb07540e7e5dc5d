/* hfreplay_main.c - hfreplay, the standalone native replay: one binary trace through one
 * allocator in this process, results into a shared result file. It is what the toolkit runs
 * in its replay child, and what a user runs under valgrind, gdb or perf. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "hakmem.h"
#include "hfinspect.h"
#include "hftrace.h"

#define EXIT_USAGE 2
#define EXIT_BAD_INPUT 3
#define EXIT_SYSTEM 4
#define MAX_KNOBS 256

static const char k_usage[] =
    "usage: hfreplay TRACE.htb (--lib PATH | --libc) [--knob NAME=VALUE]... [--check-every N] [--threads]\n"
    "                [--check-from A] [--check-to B]\n"
    "                [--no-judge] [--results-fd FD | --results FILE] [--quiet] [--aslr]\n"
    "                [--stop-before N [--inspect-addr ADDR]... [--inspect-out FILE]] [--time] [--floor]\n"
    "                [--max-memory BYTES]\n"
    "Replays a binary trace through an allocator (a library with the hakmem ABI, or libc malloc) and\n"
    "writes one result record per event to the result file. Knobs: the trace's '# knob' lines, then\n"
    "--knob (which override them), all applied before the first allocation.\n"
    "ASLR is switched off (the process re-executes itself once) so that a serial replay puts every\n"
    "block at the same address each run; --aslr keeps it. --stop-before N replays events 0..N-1 one\n"
    "by one, then prints a JSON description of the heap as event N is about to see it (its pointer,\n"
    "the bytes around its header, owners, probe verdicts, registry history, check, memory map).\n"
    "--check-from A / --check-to B limit --check-every to events A..B: checked after every Nth event\n"
    "counted from A, and after B (to narrow down the first failing event with few checks).\n"
    "--time prints how long the replay took - the hfd_replay call: the loop and the oracle; not\n"
    "process start, mapping the trace and the result file, or validating the trace, done before -\n"
    "as one 'timing:' line on stdout (wall and CPU seconds, events/s), also with --quiet.\n"
    "--floor is the benchmark's baseline: it decodes the trace into plain arrays, then times only\n"
    "the allocator calls in trace order on this thread (no oracle, no results, no validation\n"
    "beyond the header's) and prints the 'timing:' line.\n"
    "--max-memory BYTES limits the address space the replay may map beyond what the process holds\n"
    "when it starts (the trace, the result file, the libraries): setrlimit(RLIMIT_AS). Past it the\n"
    "allocator's mmap fails and its allocations return NULL, which the result records (a NULL block\n"
    "for a non-zero size); replay threads' stacks (1 MiB each) count against it.\n"
    "Exit status: 0 replay done; 2 usage; 3 bad trace, library or knob; 4 system error (result file);\n"
    "killed by the allocator's signal (SIGSEGV, ...) when the replay crashes, the crash record kept.\n";

static const char *const k_outcome_names[HFR_OUT_COUNT] = {
    "none", "correct", "misrouted", "leaked", "invalid_magic", "crashed", "detected_invalid"};

static hfr_header *g_res;   /* where failures are recorded, once mapped */

static void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void usage_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("hfreplay: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(" (hfreplay --help for usage)\n", stderr);
    va_end(ap);
    exit(EXIT_USAGE);
}

/* One line on stderr, the same text in the result file, state FAILED. */
static void fail(int status, const char *file, const char *fmt, ...) __attribute__((format(printf, 3, 4), noreturn));
static void fail(int status, const char *file, const char *fmt, ...) {
    char reason[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    for (char *p = reason; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    fprintf(stderr, "hfreplay: %s: %s\n", file, reason);
    if (g_res) {
        /* The file is the caller's; the result file keeps the reason, as hfd_replay writes it. */
        size_t l = strlen(reason);
        if (l >= sizeof g_res->error) l = sizeof g_res->error - 1;
        memcpy(g_res->error, reason, l);
        g_res->error[l] = '\0';
        __atomic_store_n(&g_res->state, (uint32_t)HFR_STATE_FAILED, __ATOMIC_SEQ_CST);
    }
    exit(status);
}

static uint64_t parse_u64(const char *opt, const char *s) {
    char *end = NULL;
    errno = 0;
    if (!s || !*s || *s == '-') usage_error("%s needs a non-negative number, got '%s'", opt, s ? s : "");
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end) usage_error("%s needs a non-negative number, got '%s'", opt, s);
    return (uint64_t)v;
}

struct knob {
    char name[128];
    char value[256];
    const char *origin;   /* file the knob came from, for messages */
    unsigned line;        /* header line, 0 for --knob */
};

static int split_knob(const char *s, size_t len, struct knob *k) {
    const char *eq = memchr(s, '=', len);
    if (!eq || eq == s) return -1;
    size_t nl = (size_t)(eq - s), vl = len - nl - 1;
    if (nl >= sizeof k->name || vl >= sizeof k->value) return -1;
    memcpy(k->name, s, nl);
    k->name[nl] = '\0';
    memcpy(k->value, eq + 1, vl);
    k->value[vl] = '\0';
    for (size_t i = 0; i < nl; i++)
        if (k->name[i] == ' ' || k->name[i] == '\t') return -1;
    return 0;
}

/* The "# knob NAME=VALUE" lines of the trace's header text. */
static int header_knobs(const char *trace_path, const void *map, uint64_t len, struct knob *out, int max) {
    if (len < sizeof(hft_header)) return 0;
    const hft_header *h = map;
    if (sizeof(hft_header) + (uint64_t)h->text_len > len) return 0;   /* validation reported it */
    const char *t = (const char *)map + sizeof(hft_header), *end = t + h->text_len;
    int n = 0;
    unsigned line = 0;
    static const char prefix[] = "# knob ";
    while (t < end) {
        const char *nl = memchr(t, '\n', (size_t)(end - t));
        const char *le = nl ? nl : end;
        line++;
        size_t ll = (size_t)(le - t);
        while (ll && (t[ll - 1] == '\r' || t[ll - 1] == ' ' || t[ll - 1] == '\t')) ll--;
        if (ll >= sizeof prefix - 1 && memcmp(t, prefix, sizeof prefix - 1) == 0) {
            if (n == max) fail(EXIT_BAD_INPUT, trace_path, "header line %u: more than %d knob lines", line, max);
            const char *kv = t + sizeof prefix - 1;
            size_t kl = ll - (sizeof prefix - 1);
            while (kl && (*kv == ' ' || *kv == '\t')) { kv++; kl--; }
            if (split_knob(kv, kl, &out[n]) != 0)
                fail(EXIT_BAD_INPUT, trace_path, "header line %u: malformed knob line '%.*s' (expected '# knob NAME=VALUE')",
                     line, (int)(ll > 200 ? 200 : ll), t);
            out[n].origin = trace_path;
            out[n].line = line;
            n++;
        }
        t = nl ? nl + 1 : end;
    }
    return n;
}

static const char *route_name(const char *(*fn)(uint32_t), uint32_t r, char *buf, size_t cap) {
    const char *s = fn ? fn(r) : NULL;
    if (s && strcmp(s, "unknown") != 0) return s;
    if (r == 0) return "none";
    snprintf(buf, cap, "route %u", r);
    return buf;
}

/* ------------------------------------------------------------ memory limit */

/* RLIMIT_AS = what the process maps now (the trace, the result file, the libraries, the
 * allocator's own start-up) + budget, so that the budget is the replay's, whatever the size of
 * the trace. Past it mmap fails: hakmem-ref's allocations return NULL, which the result
 * records. A limit the kernel refuses (above the hard limit) is a note, not a failure. */
static void limit_memory(uint64_t budget) {
    unsigned long long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%llu", &pages) != 1) pages = 0;
        fclose(f);
    }
    uint64_t in_use = (uint64_t)pages * (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t want = in_use + budget < in_use ? UINT64_MAX : in_use + budget;
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) != 0) return;
    if (rl.rlim_max != RLIM_INFINITY && want > (uint64_t)rl.rlim_max) want = (uint64_t)rl.rlim_max;
    if (rl.rlim_cur != RLIM_INFINITY && want > (uint64_t)rl.rlim_cur) return;   /* a tighter limit is in force */
    rl.rlim_cur = (rlim_t)want;
    if (setrlimit(RLIMIT_AS, &rl) != 0)
        fprintf(stderr, "hfreplay: note: --max-memory %" PRIu64 ": setrlimit: %s\n", budget, strerror(errno));
}

/* ------------------------------------------------------------------ timing */

static double clock_seconds(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double now_seconds(void) { return clock_seconds(CLOCK_MONOTONIC); }

/* CPU time of the whole process (all replay threads): on a busy machine, what the work cost
 * whatever else ran. */
static double cpu_seconds(void) { return clock_seconds(CLOCK_PROCESS_CPUTIME_ID); }

/* One machine-readable line (scripts/bench.py reads it): wall and CPU seconds of the phase. */
static void print_timing(const char *phase, uint64_t events, double seconds, double cpu) {
    printf("timing: phase=%s events=%" PRIu64 " seconds=%.6f cpu_seconds=%.6f events_per_s=%.0f\n", phase, events,
           seconds, cpu, seconds > 0 ? (double)events / seconds : 0.0);
    fflush(stdout);
}

/* -------------------------------------------------------------------- floor */

/* The baseline of the replay's overhead: the same allocator calls, through function pointers as
 * the replay makes them, from arrays decoded beforehand, with nothing else per event (no
 * validation, oracle, decision or result record). */
typedef struct floor_api {
    void *(*alloc)(size_t size, uintptr_t site);
    void (*free)(void *ptr, size_t size, uintptr_t site);
    void *(*calloc)(size_t nmemb, size_t size, uintptr_t site);
    void *(*realloc)(void *ptr, size_t size, uintptr_t site);
    void *(*memalign)(size_t alignment, size_t size, uintptr_t site);
} floor_api;

extern void *__libc_malloc(size_t size);

static void *floor_libc_alloc(size_t size, uintptr_t site) { (void)site; return malloc(size); }
static void floor_libc_free(void *ptr, size_t size, uintptr_t site) { (void)size; (void)site; free(ptr); }
static void *floor_libc_calloc(size_t nmemb, size_t size, uintptr_t site) { (void)site; return calloc(nmemb, size); }
static void *floor_libc_realloc(void *ptr, size_t size, uintptr_t site) { (void)site; return realloc(ptr, size); }
static void *floor_libc_memalign(size_t alignment, size_t size, uintptr_t site) {
    (void)site;
    void *p = NULL;
    return posix_memalign(&p, alignment < sizeof(void *) ? sizeof(void *) : alignment, size) == 0 ? p : NULL;
}

__attribute__((noinline)) static int run_floor(const char *trace_path, const void *map, int use_libc, void *handle) {
    floor_api api = {0};
    if (use_libc) {
        api = (floor_api){floor_libc_alloc, floor_libc_free, floor_libc_calloc, floor_libc_realloc, floor_libc_memalign};
    } else if (handle) {
        *(void **)&api.alloc = dlsym(handle, "hak_alloc_at");
        *(void **)&api.free = dlsym(handle, "hak_free_at");
        *(void **)&api.calloc = dlsym(handle, "hak_calloc_at");
        *(void **)&api.realloc = dlsym(handle, "hak_realloc_at");
        *(void **)&api.memalign = dlsym(handle, "hak_memalign_at");
    }
    if (!api.alloc || !api.free) fail(EXIT_BAD_INPUT, trace_path, "--floor: the allocator's hak_alloc_at/hak_free_at are not reachable");
    const hft_header *h = map;
    const hft_record *recs = (const hft_record *)((const char *)map + h->records_offset);
    uint64_t n = h->num_events;
    uint8_t *op = malloc(n ? n : 1);
    uint32_t *obj = malloc(sizeof(uint32_t) * (n ? n : 1)), *obj2 = malloc(sizeof(uint32_t) * (n ? n : 1));
    uint64_t *size = malloc(sizeof(uint64_t) * (n ? n : 1)), *site = malloc(sizeof(uint64_t) * (n ? n : 1));
    int64_t *arg = malloc(sizeof(int64_t) * (n ? n : 1));
    void **ptr = calloc((size_t)h->num_objects + 1, sizeof(void *));
    if (!op || !obj || !obj2 || !size || !site || !arg || !ptr) fail(EXIT_SYSTEM, trace_path, "--floor: out of memory decoding %" PRIu64 " events", n);
    for (uint64_t i = 0; i < n; i++) {
        op[i] = recs[i].op;
        obj[i] = recs[i].obj;
        obj2[i] = recs[i].obj2;
        size[i] = recs[i].size;
        arg[i] = recs[i].arg;
        site[i] = recs[i].site;
        if ((op[i] == HFT_OP_REALLOC && !api.realloc) || (op[i] == HFT_OP_MEMALIGN && !api.memalign))
            fail(EXIT_BAD_INPUT, trace_path, "--floor: event %" PRIu64 " needs an entry point the allocator lacks", i);
    }
    double c0 = cpu_seconds(), t0 = now_seconds();
    for (uint64_t i = 0; i < n; i++) {
        uint32_t o = obj[i];
        switch (op[i]) {
        case HFT_OP_MALLOC: ptr[o] = api.alloc((size_t)size[i], (uintptr_t)site[i]); break;
        case HFT_OP_CALLOC:
            if (api.calloc) {
                ptr[o] = api.calloc((size_t)arg[i], (size_t)size[i], (uintptr_t)site[i]);
            } else {
                size_t total = (size_t)arg[i] * (size_t)size[i];
                ptr[o] = api.alloc(total, (uintptr_t)site[i]);
                if (ptr[o]) memset(ptr[o], 0, total ? total : 1);
            }
            break;
        case HFT_OP_MEMALIGN: ptr[o] = api.memalign((size_t)arg[i], (size_t)size[i], (uintptr_t)site[i]); break;
        case HFT_OP_LIBC_MALLOC: ptr[o] = use_libc ? api.alloc((size_t)size[i], (uintptr_t)site[i]) : __libc_malloc((size_t)size[i]); break;
        case HFT_OP_REALLOC: {
            void *q = api.realloc(obj2[i] ? ptr[obj2[i]] : NULL, (size_t)size[i], (uintptr_t)site[i]);
            if (o) ptr[o] = q;
            break;
        }
        case HFT_OP_FREE:
        case HFT_OP_FREE_LIBC:
        case HFT_OP_DOUBLE_FREE: api.free(o ? ptr[o] : NULL, 0, (uintptr_t)site[i]); break;
        case HFT_OP_FREE_INTERIOR: api.free((char *)ptr[o] + arg[i], 0, (uintptr_t)site[i]); break;
        case HFT_OP_FREE_RAW: api.free((void *)(uintptr_t)arg[i], 0, (uintptr_t)site[i]); break;
        case HFT_OP_CORRUPT:
            if (ptr[o]) {
                volatile uint8_t *dst = (volatile uint8_t *)ptr[o] + arg[i];
                for (uint64_t k = 0; k < size[i]; k++) dst[k] = (uint8_t)(recs[i].value >> (8 * k));
            }
            break;
        default: break;
        }
    }
    double t1 = now_seconds(), c1 = cpu_seconds();
    print_timing("floor", n, t1 - t0, c1 - c0);
    free(op); free(obj); free(obj2); free(size); free(site); free(arg); free(ptr);
    return 0;
}

int main(int argc, char **argv) {
    const char *trace_path = NULL, *lib = NULL, *results_file = NULL;
    int use_libc = 0, threads = 0, judge = 1, quiet = 0, results_fd = -1;
    uint64_t check_every = 0, check_from = 0, check_to = UINT64_MAX;
    uint64_t stop_before = UINT64_MAX;
    uint64_t max_memory = 0;   /* 0: no limit */
    uint64_t extra_addrs[64];
    int n_extra = 0, keep_aslr = 0, show_time = 0, floor = 0;
    const char *inspect_out = NULL;
    static struct knob knobs[MAX_KNOBS];
    static struct knob opt_knobs[MAX_KNOBS];
    int n_opt_knobs = 0;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
#define NEED_ARG() do { if (i + 1 >= argc) usage_error("%s needs an argument", a); } while (0)
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(k_usage, stdout);
            return 0;
        } else if (strcmp(a, "--lib") == 0) {
            NEED_ARG();
            lib = argv[++i];
        } else if (strcmp(a, "--libc") == 0) {
            use_libc = 1;
        } else if (strcmp(a, "--knob") == 0) {
            NEED_ARG();
            const char *kv = argv[++i];
            if (n_opt_knobs == MAX_KNOBS) usage_error("more than %d --knob options", MAX_KNOBS);
            if (split_knob(kv, strlen(kv), &opt_knobs[n_opt_knobs]) != 0)
                usage_error("--knob needs NAME=VALUE, got '%s'", kv);
            opt_knobs[n_opt_knobs].origin = "--knob";
            opt_knobs[n_opt_knobs].line = 0;
            n_opt_knobs++;
        } else if (strcmp(a, "--check-every") == 0) {
            NEED_ARG();
            check_every = parse_u64(a, argv[++i]);
        } else if (strcmp(a, "--check-from") == 0) {
            NEED_ARG();
            check_from = parse_u64(a, argv[++i]);
        } else if (strcmp(a, "--check-to") == 0) {
            NEED_ARG();
            check_to = parse_u64(a, argv[++i]);
        } else if (strcmp(a, "--threads") == 0) {
            threads = 1;
        } else if (strcmp(a, "--no-judge") == 0) {
            judge = 0;
        } else if (strcmp(a, "--results-fd") == 0) {
            NEED_ARG();
            uint64_t fd = parse_u64(a, argv[++i]);
            if (fd > 1u << 30) usage_error("--results-fd %s is not a file descriptor", argv[i]);
            results_fd = (int)fd;
        } else if (strcmp(a, "--results") == 0) {
            NEED_ARG();
            results_file = argv[++i];
        } else if (strcmp(a, "--quiet") == 0 || strcmp(a, "-q") == 0) {
            quiet = 1;
        } else if (strcmp(a, "--aslr") == 0) {
            keep_aslr = 1;
        } else if (strcmp(a, "--time") == 0) {
            show_time = 1;
        } else if (strcmp(a, "--floor") == 0) {
            floor = 1;
        } else if (strcmp(a, "--max-memory") == 0) {
            NEED_ARG();
            max_memory = parse_u64(a, argv[++i]);
        } else if (strcmp(a, "--stop-before") == 0) {
            NEED_ARG();
            stop_before = parse_u64(a, argv[++i]);
        } else if (strcmp(a, "--inspect-addr") == 0) {
            NEED_ARG();
            if (n_extra == 64) usage_error("more than 64 --inspect-addr options");
            extra_addrs[n_extra++] = parse_u64(a, argv[++i]);
        } else if (strcmp(a, "--inspect-out") == 0) {
            NEED_ARG();
            inspect_out = argv[++i];
        } else if (a[0] == '-' && a[1]) {
            usage_error("unknown option '%s'", a);
        } else if (!trace_path) {
            trace_path = a;
        } else {
            usage_error("more than one trace ('%s' and '%s')", trace_path, a);
        }
#undef NEED_ARG
    }
    if (!trace_path) usage_error("no trace given");
    if (!!lib + use_libc != 1) usage_error("give exactly one of --lib PATH and --libc");
    if (results_fd >= 0 && results_file) usage_error("give at most one of --results-fd and --results");
    if ((n_extra || inspect_out) && stop_before == UINT64_MAX) usage_error("--inspect-addr and --inspect-out go with --stop-before");
    if ((check_from || check_to != UINT64_MAX) && !check_every) usage_error("--check-from and --check-to go with --check-every");
    if (check_from > check_to)
        usage_error("--check-from %" PRIu64 " is after --check-to %" PRIu64, check_from, check_to);

    /* Deterministic addresses: without ASLR a serial replay lays out the heap identically every
     * run, so a second run (an inspection) sees the addresses the first one recorded. */
    if (!keep_aslr) {
        int pers = personality(0xffffffff);
        if (pers != -1 && !(pers & ADDR_NO_RANDOMIZE) && personality((unsigned long)pers | ADDR_NO_RANDOMIZE) != -1) {
            execv("/proc/self/exe", argv);
            personality((unsigned long)pers); /* exec failed: go on with ASLR */
        }
    }

    /* The trace, read-only and in place. A failure to open it is reported once the result
     * file exists, so that the caller finds the reason there too. */
    const void *map = NULL;
    uint64_t len = 0;
    char open_err[300] = "";
    int tfd = open(trace_path, O_RDONLY | O_CLOEXEC);
    struct stat stt;
    if (tfd < 0) {
        snprintf(open_err, sizeof open_err, "cannot open: %s", strerror(errno));
    } else if (fstat(tfd, &stt) != 0 || !S_ISREG(stt.st_mode)) {
        snprintf(open_err, sizeof open_err, "not a regular file");
    } else if (stt.st_size > 0) {
        len = (uint64_t)stt.st_size;
        void *m = mmap(NULL, (size_t)len, PROT_READ, MAP_PRIVATE, tfd, 0);
        if (m == MAP_FAILED) snprintf(open_err, sizeof open_err, "cannot map %" PRIu64 " bytes: %s", len, strerror(errno));
        else map = m;
    } else {
        map = "";   /* empty file: validation says what is wrong with it */
    }
    if (tfd >= 0) close(tfd);

    /* Size the results by the header's event count, but never beyond what the file holds. */
    uint64_t n = 0;
    if (map && len >= sizeof(hft_header)) {
        const hft_header *h = map;
        if (h->records_offset <= len && h->num_events <= (len - h->records_offset) / sizeof(hft_record))
            n = h->num_events;
    }
    size_t res_size = sizeof(hfr_header) + (size_t)n * sizeof(hfr_event);
    const char *res_name = results_file ? results_file : "--results-fd";
    void *rm;
    int res_zeroed = 1;   /* every byte of the result file reads 0: hfd_replay_ex need not clear it */
    if (results_fd >= 0 || results_file) {
        int fd = results_fd;
        if (results_file) {
            fd = open(results_file, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
            if (fd < 0) fail(EXIT_SYSTEM, res_name, "cannot create: %s", strerror(errno));
        }
        if (ftruncate(fd, (off_t)res_size) != 0) fail(EXIT_SYSTEM, res_name, "cannot size to %zu bytes: %s", res_size, strerror(errno));
        /* A given fd may hold old bytes: punch them out (the caller's mapping of it stays valid
         * and reads zeros). Where the file system cannot, the replay clears the records itself. */
        if (!results_file && res_size && fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)res_size) != 0)
            res_zeroed = 0;
        rm = mmap(NULL, res_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (rm == MAP_FAILED) fail(EXIT_SYSTEM, res_name, "cannot map %zu bytes: %s", res_size, strerror(errno));
        if (results_file) close(fd);
    } else {
        rm = mmap(NULL, res_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (rm == MAP_FAILED) fail(EXIT_SYSTEM, "results", "cannot map %zu bytes: %s", res_size, strerror(errno));
    }
    /* Fault the result pages in now, in one call, rather than one page fault per 85 events
     * during the replay (a no-op where the kernel lacks MADV_POPULATE_WRITE). */
#ifdef MADV_POPULATE_WRITE
    if (!floor && stop_before == UINT64_MAX) (void)madvise(rm, res_size, MADV_POPULATE_WRITE);
#endif
    hfr_header *res = rm;
    hfr_event *events = (hfr_event *)(res + 1);
    memcpy(res->magic, HFR_MAGIC, sizeof res->magic);
    res->version = HFR_VERSION;
    res->event_size = sizeof(hfr_event);
    res->num_events = n;
    res->events_done = 0;
    res->threads_used = 0;
    res->first_check_failure = UINT64_MAX;
    res->check_msg[0] = '\0';
    res->error[0] = '\0';
    res->crash.magic = 0;
    __atomic_store_n(&res->state, (uint32_t)HFR_STATE_RUNNING, __ATOMIC_SEQ_CST);
    g_res = res;

    if (!map) fail(EXIT_BAD_INPUT, trace_path, "%s", open_err);
    if (hfd_trace_validate(map, len) != HFD_OK) fail(EXIT_BAD_INPUT, trace_path, "%s", hfd_last_error());

    /* The allocator, then its knobs, before anything is allocated through it. */
    void *handle = NULL;
    int (*set_knob)(const char *, const char *) = NULL;
    const char *(*last_error)(void) = NULL;
    const char *(*route_fn)(uint32_t) = NULL;
    if (use_libc) {
        if (hfd_bind_libc() != HFD_OK) fail(EXIT_BAD_INPUT, "libc", "%s", hfd_last_error());
    } else {
        if (hfd_bind_library(lib) != HFD_OK) fail(EXIT_BAD_INPUT, lib, "%s", hfd_last_error());
        handle = dlopen(lib, RTLD_NOW | RTLD_NOLOAD);
        if (handle) {
            *(void **)&set_knob = dlsym(handle, "hak_set_knob");
            *(void **)&last_error = dlsym(handle, "hak_last_error");
            *(void **)&route_fn = dlsym(handle, "hak_route_name");
        }
    }
    int n_knobs = header_knobs(trace_path, map, len, knobs, MAX_KNOBS);
    for (int k = 0; k < n_opt_knobs; k++) {
        if (n_knobs == MAX_KNOBS) usage_error("more than %d knobs", MAX_KNOBS);
        knobs[n_knobs++] = opt_knobs[k];
    }
    if (use_libc) {
        if (n_knobs) fprintf(stderr, "hfreplay: note: --libc: %d knob%s ignored\n", n_knobs, n_knobs == 1 ? "" : "s");
    } else if (n_knobs) {
        if (!set_knob) fail(EXIT_BAD_INPUT, lib, "has no hak_set_knob, so knob %s=%s cannot be set", knobs[0].name, knobs[0].value);
        for (int k = 0; k < n_knobs; k++) {
            if (set_knob(knobs[k].name, knobs[k].value) == 0) continue;
            const char *why = last_error ? last_error() : "rejected";
            if (knobs[k].line)
                fail(EXIT_BAD_INPUT, knobs[k].origin, "header line %u: knob %s=%s: %s", knobs[k].line, knobs[k].name,
                     knobs[k].value, why);
            fail(EXIT_BAD_INPUT, lib, "--knob %s=%s: %s", knobs[k].name, knobs[k].value, why);
        }
    }

    if (max_memory) limit_memory(max_memory);
    if (floor) {
        if (stop_before != UINT64_MAX) usage_error("--floor and --stop-before do not go together");
        int frc = run_floor(trace_path, map, use_libc, handle);
        __atomic_store_n(&res->state, (uint32_t)HFR_STATE_DONE, __ATOMIC_SEQ_CST);
        return frc;
    }
    if (hfd_install_crash_handler(&res->crash) != HFD_OK) fail(EXIT_SYSTEM, trace_path, "%s", hfd_last_error());
    if (stop_before != UINT64_MAX) {
        FILE *out = stdout;
        if (inspect_out && !(out = fopen(inspect_out, "w"))) fail(EXIT_SYSTEM, inspect_out, "cannot create: %s", strerror(errno));
        char err[512];
        if (hfi_inspect(map, len, res, events, stop_before, handle, judge, threads, extra_addrs, n_extra, out, err, sizeof err) != 0)
            fail(EXIT_BAD_INPUT, trace_path, "%s", err);
        if (out != stdout) fclose(out);
        __atomic_store_n(&res->state, (uint32_t)HFR_STATE_DONE, __ATOMIC_SEQ_CST);
        return 0;
    }
    hfr_options opts = {.check_every = check_every, .threads = (uint32_t)threads, .judge = (uint32_t)judge};
    hfd_check_window(check_from, check_to);
    double c0 = cpu_seconds(), t0 = now_seconds();
    /* The trace was validated above, before the allocator was bound (so that a bad trace is
     * reported first), and a read-only private mapping cannot change: not validated again. */
    uint32_t flags = HFD_REPLAY_VALIDATED | (res_zeroed ? HFD_REPLAY_ZEROED : 0u);
    int rc = hfd_replay_ex(map, len, res, events, &opts, flags);
    double t1 = now_seconds(), c1 = cpu_seconds();
    if (rc != HFD_OK) fail(rc == HFD_ESYS ? EXIT_SYSTEM : EXIT_BAD_INPUT, trace_path, "%s", hfd_last_error());
    __atomic_store_n(&res->state, (uint32_t)HFR_STATE_DONE, __ATOMIC_SEQ_CST);
    if (res->error[0]) fprintf(stderr, "hfreplay: %s: %s\n", trace_path, res->error);
    if (show_time) print_timing(threads && res->threads_used > 1 ? "replay_threads" : "replay", res->num_events, t1 - t0, c1 - c0);

    if (!quiet) {
        hfr_summary s;
        hfd_summarize(events, res->num_events, &s);
        char buf[32];
        printf("trace     %s\n", trace_path);
        printf("allocator %s\n", use_libc ? "libc" : lib);
        printf("events    %" PRIu64 " done of %" PRIu64 " on %u thread%s\n", s.events_done, res->num_events,
               res->threads_used, res->threads_used == 1 ? "" : "s");
        printf("allocs    %" PRIu64 "\n", s.allocs);
        printf("frees     %" PRIu64 "\n", s.frees);
        printf("routes\n");
        for (uint32_t r = 0; r < 32; r++)
            if (s.route_counts[r]) printf("  %-28s %" PRIu64 "\n", route_name(route_fn, r, buf, sizeof buf), s.route_counts[r]);
        printf("outcomes\n");
        for (int o = 1; o < HFR_OUT_COUNT; o++)
            if (s.outcome_counts[o]) printf("  %-28s %" PRIu64 "\n", k_outcome_names[o], s.outcome_counts[o]);
        if (s.first_anomaly != UINT64_MAX)
            printf("first anomaly: event %" PRIu64 " (%s)\n", s.first_anomaly,
                   k_outcome_names[events[s.first_anomaly].outcome < HFR_OUT_COUNT ? events[s.first_anomaly].outcome : 0]);
        else
            printf("first anomaly: none\n");
        if (res->first_check_failure != UINT64_MAX)
            printf("first check failure: event %" PRIu64 ": %s\n", res->first_check_failure, res->check_msg);
        else if (check_every && (check_from || check_to != UINT64_MAX))
            printf("first check failure: none (checked every %" PRIu64 " events from %" PRIu64 " to %" PRIu64 ")\n",
                   check_every, check_from, check_to == UINT64_MAX ? (res->num_events ? res->num_events - 1 : 0) : check_to);
        else if (check_every)
            printf("first check failure: none (checked every %" PRIu64 " events)\n", check_every);
        fflush(stdout);
    }
    return 0;
}
