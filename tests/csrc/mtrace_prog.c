/* mtrace_prog.c - glibc mtrace() around known allocations (tests/test_import.py).
 * Run with MALLOC_TRACE=FILE (and, on glibc >= 2.34, LD_PRELOAD=libc_malloc_debug.so.0).
 * mtrace logs malloc, calloc, memalign and realloc(NULL) as '+', free and realloc(p, 0) as
 * '-', a moving or growing realloc as '<' then '>'. The expected trace ops are exported. */
#define _GNU_SOURCE
#include <malloc.h>
#include <mcheck.h>
#include <stdint.h>
#include <stdlib.h>

const uint32_t mt_expected_malloc = 5;   /* '+' lines: 2 malloc, calloc, memalign, realloc(NULL) */
const uint32_t mt_expected_realloc = 1;  /* '<' '>' pairs */
const uint32_t mt_expected_free = 5;     /* '-' lines: 4 free, realloc(p, 0) */

int main(void) {
    mtrace();
    void *a = malloc(100);
    void *b = malloc(7);
    void *c = calloc(4, 32);
    void *d = memalign(64, 200);
    a = realloc(a, 5000);
    void *e = realloc(NULL, 10);
    e = realloc(e, 0);
    free(a);
    free(b);
    free(c);
    free(d);
    muntrace();
    return e != NULL;
}
