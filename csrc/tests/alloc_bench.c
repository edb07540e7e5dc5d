/* alloc_bench.c - an allocation-heavy program: the workload for measuring the recorder's
 * overhead (scripts/bench_record.py runs it with and without libhfrecord.so).
 *
 *   alloc_bench THREADS ITERATIONS [WORKING_SET]
 *
 * Each thread keeps WORKING_SET slots; every iteration picks a slot (xorshift), frees what is
 * there or allocates 16..1039 bytes into it (every 16th allocation a calloc, every 32nd a
 * realloc of the slot's block), and touches the first byte. Prints one line:
 *   calls=N seconds=S
 * where N is the number of malloc-family calls made.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long g_iterations;
static long g_ws = 4096;

typedef struct { uint64_t calls; unsigned seed; } worker;

static void *run(void *arg) {
    worker *w = arg;
    void **slots = calloc((size_t)g_ws, sizeof *slots);
    uint64_t calls = 1;
    uint32_t x = w->seed | 1;
    for (long i = 0; i < g_iterations; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        long k = (long)(x % (uint32_t)g_ws);
        size_t size = 16 + (x >> 8) % 1024;
        if (slots[k] && (x & 31) == 7) {
            slots[k] = realloc(slots[k], size);
        } else if (slots[k]) {
            free(slots[k]);
            slots[k] = NULL;
        } else if ((x & 15) == 3) {
            slots[k] = calloc(1, size);
        } else {
            slots[k] = malloc(size);
        }
        calls++;
        if (slots[k]) *(volatile char *)slots[k] = 1;
    }
    for (long k = 0; k < g_ws; k++) {
        if (slots[k]) {
            free(slots[k]);
            calls++;
        }
    }
    free(slots);
    w->calls = calls + 1;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s THREADS ITERATIONS [WORKING_SET]\n", argv[0]);
        return 2;
    }
    int threads = atoi(argv[1]);
    g_iterations = atol(argv[2]);
    if (argc > 3) g_ws = atol(argv[3]);
    if (threads < 1 || threads > 256 || g_iterations < 1 || g_ws < 1) return 2;
    pthread_t tids[256];
    worker ws[256];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < threads; i++) {
        ws[i].seed = 2654435761u * (unsigned)(i + 1);
        pthread_create(&tids[i], NULL, run, &ws[i]);
    }
    uint64_t calls = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(tids[i], NULL);
        calls += ws[i].calls;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("calls=%llu seconds=%.6f\n", (unsigned long long)calls, s);
    return 0;
}
