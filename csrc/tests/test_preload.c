/* test_preload.c - the malloc family of libhakmem_preload.so in a multi-threaded program.
 *
 * Run with LD_PRELOAD=libhakmem_preload.so (make test does). Checks that the library really
 * stands in for malloc, alignment and usable sizes of every entry point, contents across
 * realloc, calloc zeroing, errors, pointers from libc (__libc_malloc) going through free,
 * realloc and malloc_usable_size, threads with cross-thread frees, and fork while other
 * threads allocate. Prints one line per check and "N passed, M failed"; exit 1 on a failure.
 */
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern void *__libc_malloc(size_t size);

static int g_passed, g_failed;

#define CHECK(cond, ...)                                   \
    do {                                                   \
        if (cond) {                                        \
            g_passed++;                                    \
        } else {                                           \
            g_failed++;                                    \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);    \
            printf(__VA_ARGS__);                           \
            printf("\n");                                  \
        }                                                  \
    } while (0)

static int aligned(const void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

/* Sizes that reach every hakmem-ref path: Tiny classes, Mid, L25, mmap (and BigCache). */
static const size_t k_sizes[] = {0, 1, 7, 8, 9, 16, 24, 100, 128, 500, 1024, 1025, 3000, 20000, 32736,
                                 32768, 70000, 300000, 1048000, 1048576, 1500000, 3 << 20};
#define NSIZES (sizeof k_sizes / sizeof k_sizes[0])

static void fill(unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(seed * 31u + i * 7u);
}

static int same(const unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(seed * 31u + i * 7u)) return 0;
    return 1;
}

static void test_basics(void) {
    /* hakmem-ref's smallest Tiny class is 8 bytes; glibc's smallest chunk has 24 usable */
    void *p = malloc(1);
    CHECK(p && malloc_usable_size(p) == 8, "malloc is hakmem-ref's (usable size of malloc(1) is %zu, want 8)",
          p ? malloc_usable_size(p) : 0);
    free(p);
    for (size_t i = 0; i < NSIZES; i++) {
        size_t n = k_sizes[i];
        unsigned char *m = malloc(n);
        CHECK(m != NULL, "malloc(%zu)", n);
        CHECK(malloc_usable_size(m) >= n, "malloc_usable_size(malloc(%zu)) = %zu", n, malloc_usable_size(m));
        CHECK(aligned(m, n >= 16 ? 16 : 8), "malloc(%zu) = %p is aligned", n, (void *)m);
        fill(m, n, (unsigned)i);
        unsigned char *c = calloc(1, n);
        int zero = 1;
        for (size_t k = 0; k < n; k++) zero &= c[k] == 0;
        CHECK(c && zero, "calloc(1, %zu) is zeroed", n);
        /* grow and shrink: the old contents survive */
        size_t bigger = n * 2 + 100;
        unsigned char *r = realloc(m, bigger);
        CHECK(r && same(r, n, (unsigned)i), "realloc(%zu -> %zu) keeps the contents", n, bigger);
        unsigned char *s = realloc(r, n / 2 + 1);
        CHECK(s && same(s, n / 2 + 1 < n ? n / 2 + 1 : n, (unsigned)i), "realloc shrink keeps the contents (%zu)", n);
        free(s);
        free(c);
    }
    free(NULL);
    void *z = malloc(0);
    CHECK(z != NULL, "malloc(0) returns a unique pointer");
    free(z);
    CHECK(realloc(malloc(10), 0) == NULL, "realloc(p, 0) frees and returns NULL");
    void *r0 = realloc(NULL, 40);
    CHECK(r0 && malloc_usable_size(r0) >= 40, "realloc(NULL, n) is malloc(n)");
    free(r0);
    volatile size_t big = (size_t)1 << 40, huge = (size_t)-4096; /* volatile: no compile-time size warnings */
    errno = 0;
    CHECK(calloc(big, big) == NULL && errno == ENOMEM, "calloc overflow: NULL, ENOMEM");
    errno = 0;
    CHECK(reallocarray(NULL, big, big) == NULL && errno == ENOMEM, "reallocarray overflow");
    errno = 0;
    CHECK(malloc(huge) == NULL && errno == ENOMEM, "malloc(huge): NULL, ENOMEM");
    CHECK(malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL) == 0");
}

static void test_aligned(void) {
    static const size_t aligns[] = {8, 16, 32, 64, 256, 4096, 65536, 1 << 21};
    static const size_t sizes[] = {1, 8, 24, 100, 1000, 5000, 100000, 3 << 20};
    for (size_t a = 0; a < sizeof aligns / sizeof aligns[0]; a++)
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            size_t al = aligns[a], n = sizes[s];
            void *p = NULL;
            int rc = posix_memalign(&p, al, n);
            CHECK(rc == 0 && p && aligned(p, al) && malloc_usable_size(p) >= n, "posix_memalign(%zu, %zu) = %p", al, n, p);
            if (p) memset(p, 0xab, n);
            free(p);
            void *m = memalign(al, n);
            CHECK(m && aligned(m, al < 16 ? 16 : al), "memalign(%zu, %zu) = %p", al, n, m);
            free(m);
            void *q = aligned_alloc(al, n);
            CHECK(q && aligned(q, al), "aligned_alloc(%zu, %zu) = %p", al, n, q);
            free(q);
        }
    long page = sysconf(_SC_PAGESIZE);
    void *v = valloc(10);
    CHECK(v && aligned(v, (size_t)page), "valloc is page-aligned");
    free(v);
    void *pv = pvalloc(10);
    CHECK(pv && aligned(pv, (size_t)page) && malloc_usable_size(pv) >= (size_t)page, "pvalloc rounds up to a page");
    free(pv);
    void *p = (void *)1;
    CHECK(posix_memalign(&p, 24, 10) == EINVAL && p == (void *)1, "posix_memalign(24): EINVAL, *out untouched");
    CHECK(posix_memalign(&p, 4, 10) == EINVAL, "posix_memalign(4): EINVAL (not a multiple of sizeof(void *))");
    errno = 0;
    CHECK(aligned_alloc(24, 10) == NULL && errno == EINVAL, "aligned_alloc(24): NULL, EINVAL");
    void *m = memalign(48, 10);
    CHECK(m && aligned(m, 64), "memalign(48) rounds the alignment up to 64, as glibc does");
    free(m);
}

/* A pointer glibc made, handed to the replacement: free must not crash (the seed's LD_PRELOAD
 * routing skips it), realloc must keep its contents, usable size must be glibc's. */
static void test_foreign(void) {
    unsigned char *f = __libc_malloc(200);
    fill(f, 200, 5);
    CHECK(malloc_usable_size(f) >= 200, "malloc_usable_size of a libc pointer is glibc's (%zu)", malloc_usable_size(f));
    unsigned char *g = realloc(f, 5000);
    CHECK(g && g != f && same(g, 200, 5), "realloc of a libc pointer moves it into hakmem-ref with its contents");
    CHECK(malloc_usable_size(g) >= 5000, "and the new block is hakmem-ref's");
    free(g);
    void *h = __libc_malloc(64);
    free(h);
    CHECK(1, "free of a libc pointer returns");
}

#define NTHREADS 8
#define SLOTS 512
static void *volatile g_shared[NTHREADS][SLOTS];
static volatile int g_stop;

struct worker {
    int id;
    unsigned seed;
    long ops, bad;
};

static unsigned rnd(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return *s >> 8;
}

/* Each thread allocates into its own row and frees from a neighbour's row (cross-thread
 * frees); block contents carry the size so a block handed out twice shows up. */
static void *worker_main(void *arg) {
    struct worker *w = arg;
    for (int it = 0; it < 20000; it++) {
        unsigned r = rnd(&w->seed);
        size_t n = (r & 7) == 0 ? 1 + rnd(&w->seed) % 200000 : 1 + rnd(&w->seed) % 2048;
        int slot = (int)(rnd(&w->seed) % SLOTS);
        int row = (r & 1) ? w->id : (w->id + 1) % NTHREADS;
        void *old = __atomic_exchange_n(&g_shared[row][slot], NULL, __ATOMIC_ACQ_REL);
        if (old) {
            size_t had = *(size_t *)old;
            if (malloc_usable_size(old) < had) w->bad++;
            if ((r & 3) == 1) {
                old = realloc(old, had + 64);
                if (!old || *(size_t *)old != had) w->bad++;
            }
            free(old);
        }
        void *p;
        switch (r % 5) {
        case 0: p = calloc(1, n + sizeof(size_t)); break;
        case 1: p = memalign(64, n + sizeof(size_t)); if (p && ((uintptr_t)p & 63)) w->bad++; break;
        default: p = malloc(n + sizeof(size_t)); break;
        }
        if (!p) { w->bad++; continue; }
        *(size_t *)p = n;
        old = __atomic_exchange_n(&g_shared[w->id][slot], p, __ATOMIC_ACQ_REL);
        free(old);
        w->ops++;
    }
    return NULL;
}

static void test_threads(void) {
    pthread_t t[NTHREADS];
    struct worker w[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        w[i] = (struct worker){.id = i, .seed = 1234u + (unsigned)i};
        pthread_create(&t[i], NULL, worker_main, &w[i]);
    }
    long ops = 0, bad = 0;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(t[i], NULL);
        ops += w[i].ops;
        bad += w[i].bad;
    }
    CHECK(bad == 0 && ops == NTHREADS * 20000L, "%d threads, %ld operations, cross-thread frees: %ld bad", NTHREADS, ops, bad);
    for (int i = 0; i < NTHREADS; i++)
        for (int j = 0; j < SLOTS; j++) free(g_shared[i][j]);
}

static void *spinner(void *arg) {
    (void)arg;
    while (!__atomic_load_n(&g_stop, __ATOMIC_ACQUIRE)) free(malloc(100 + (size_t)(rand() & 4095)));
    return NULL;
}

/* fork() while other threads allocate: the child must find the allocator unlocked. */
static void test_fork(void) {
    pthread_t t[3];
    for (int i = 0; i < 3; i++) pthread_create(&t[i], NULL, spinner, NULL);
    int ok = 1;
    for (int k = 0; k < 20 && ok; k++) {
        pid_t pid = fork();
        if (pid == 0) {
            for (int i = 0; i < 1000; i++) free(malloc((size_t)(i * 37) % 70000 + 1));
            _exit(0);
        }
        int st = 0;
        if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) ok = 0;
    }
    __atomic_store_n(&g_stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
    CHECK(ok, "20 forks while 3 threads allocate: every child allocates and exits 0");
}

int main(void) {
    test_basics();
    test_aligned();
    test_foreign();
    test_threads();
    test_fork();
    printf("# preload (LD_PRELOAD=libhakmem_preload.so)\n%d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
