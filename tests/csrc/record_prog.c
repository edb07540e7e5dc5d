/* record_prog.c - a program with known allocations, for the recorder, importer and
 * symbolization tests (tests/test_record.py, tests/test_import_valgrind.py, ...).
 *
 *   record_prog ok        main + NTHREADS threads make every call of the malloc family;
 *                         some blocks are freed by another thread than the one that made them
 *   record_prog badfree   ok, then an interior free, a double free and a wild free
 *                         (for valgrind, which reports them instead of aborting)
 *   record_prog abort     ok, then an interior free: glibc aborts the process on it
 *   record_prog forkexec  a forked child makes CHILD_ALLOCS malloc/free pairs, frees a block its
 *                         parent allocated before the fork, and _exit()s; then the program
 *                         execs itself with "ok"
 *
 * The counts of the calls made from this file's own code in `ok` mode are exported as const
 * symbols (rec_expected_*), by trace op: posix_memalign, aligned_alloc and valloc are
 * `memalign` events. Lines the tests look for are marked LINE:<name>.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define NTHREADS 3
#define MAIN_MALLOCS 10
#define WORKER_MALLOCS 20
#define WORKER_CALLOCS 3
#define WORKER_REALLOCS 3
#define HANDED 5   /* blocks each worker leaves for main to free */
#define ALIGNED 4  /* memalign, posix_memalign, aligned_alloc, valloc */
#define CHILD_ALLOCS 7

const uint32_t rec_threads = NTHREADS + 1;
const uint32_t rec_expected_malloc = MAIN_MALLOCS + NTHREADS * WORKER_MALLOCS;
const uint32_t rec_expected_calloc = 2 + NTHREADS * WORKER_CALLOCS;
const uint32_t rec_expected_realloc = 2 + NTHREADS * WORKER_REALLOCS;
const uint32_t rec_expected_memalign = ALIGNED + NTHREADS * ALIGNED;
/* main: its MAIN_MALLOCS + 2 callocs + ALIGNED blocks, one free(NULL), the handed blocks;
 * workers: everything they made but the handed blocks */
const uint32_t rec_expected_free = (MAIN_MALLOCS + 2 + ALIGNED) + 1 + NTHREADS * HANDED +
                                   NTHREADS * (WORKER_MALLOCS + WORKER_CALLOCS + ALIGNED - HANDED);
const uint32_t rec_expected_usable_size = 1;
const uint32_t rec_child_mallocs = CHILD_ALLOCS;
const uint32_t rec_child_frees = CHILD_ALLOCS + 1;   /* its own blocks and the inherited one */
const uint32_t rec_interior_offset = 16;

static void *handed[NTHREADS][HANDED];

static void *worker(void *arg) {
    long t = (long)arg;
    void *blocks[WORKER_MALLOCS + WORKER_CALLOCS + ALIGNED];
    int n = 0;
    for (int i = 0; i < WORKER_MALLOCS; i++) blocks[n++] = malloc(16 + 8 * i);   /* LINE:worker_malloc */
    for (int i = 0; i < WORKER_CALLOCS; i++) blocks[n++] = calloc(4, 24);
    for (int i = 0; i < WORKER_REALLOCS; i++) blocks[i] = realloc(blocks[i], 4000 + i);
    blocks[n++] = memalign(64, 100);
    if (posix_memalign(&blocks[n++], 128, 200) != 0) abort();
    blocks[n++] = aligned_alloc(256, 512);
    blocks[n++] = valloc(300);
    for (int i = 0; i < HANDED; i++) handed[t][i] = blocks[i];
    for (int i = HANDED; i < n; i++) free(blocks[i]);   /* LINE:worker_free */
    return NULL;
}

static void workload(void) {
    void *mine[MAIN_MALLOCS + 2 + ALIGNED];
    int n = 0;
    for (int i = 0; i < MAIN_MALLOCS; i++) mine[n++] = malloc(100 + i);
    mine[n++] = calloc(10, 10);
    mine[n++] = calloc(1, 5000);
    mine[0] = realloc(mine[0], 300);
    mine[1] = realloc(mine[1], 20);
    mine[n++] = memalign(32, 64);
    if (posix_memalign(&mine[n++], 64, 64) != 0) abort();
    mine[n++] = aligned_alloc(64, 128);
    mine[n++] = valloc(64);
    if (malloc_usable_size(mine[2]) < 102) abort();
    pthread_t tids[NTHREADS];
    for (long t = 0; t < NTHREADS; t++) pthread_create(&tids[t], NULL, worker, (void *)t);
    for (int t = 0; t < NTHREADS; t++) pthread_join(tids[t], NULL);
    void *volatile nothing = NULL;   /* a literal free(NULL) is folded away by the compiler */
    free(nothing);
    for (int t = 0; t < NTHREADS; t++)
        for (int i = 0; i < HANDED; i++) free(handed[t][i]);   /* LINE:cross_thread_free */
    for (int i = 0; i < n; i++) free(mine[i]);
}

/* The deliberate bad frees: each on its own line. */
static void bad_frees(int all) {
    char *volatile x = malloc(64);
    free(x + 16);   /* LINE:interior */
    if (!all) return;
    free(x);
    free(x);   /* LINE:double */
    free((void *)(uintptr_t)0x1234);   /* LINE:wild */
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "ok";
    if (strcmp(mode, "forkexec") == 0) {
        void *before_fork = malloc(48);
        pid_t pid = fork();
        if (pid == 0) {
            void *p[CHILD_ALLOCS];
            for (int i = 0; i < CHILD_ALLOCS; i++) p[i] = malloc(32);   /* LINE:child_malloc */
            for (int i = 0; i < CHILD_ALLOCS; i++) free(p[i]);
            free(before_fork);   /* LINE:inherited_free */
            _exit(0);
        }
        free(before_fork);
        int status;
        waitpid(pid, &status, 0);
        execl("/proc/self/exe", argv[0], "ok", (char *)NULL);
        perror("execl");
        return 1;
    }
    workload();
    if (strcmp(mode, "badfree") == 0) bad_frees(1);
    else if (strcmp(mode, "abort") == 0) bad_frees(0);
    return 0;
}
