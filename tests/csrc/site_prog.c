/* site_prog.c - calls the malloc family from itself and through libsite.so, on known lines
 * (tests/test_symbolize.py). Built both as PIE and as a fixed-address executable. */
#include <stdlib.h>

void *lib_alloc(size_t n);
void lib_free(void *p);

static void *make(size_t n) {
    return calloc(1, n);   /* LINE:make_calloc */
}

int main(void) {
    void *a = lib_alloc(40);
    void *b = make(24);
    void *c = malloc(8);   /* LINE:main_malloc */
    lib_free(a);
    free(b);
    free(c);   /* LINE:main_free */
    return 0;
}
