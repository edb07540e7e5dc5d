/* libsite.c - a shared library that allocates on known lines (tests/test_symbolize.py): its
 * call sites are symbolized through the load bias of a shared object. */
#include <stdlib.h>

void *lib_alloc(size_t n) {
    return malloc(n);   /* LINE:lib_malloc */
}

void lib_free(void *p) {
    free(p);   /* LINE:lib_free */
}
