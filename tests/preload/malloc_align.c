/* C's alignment promise under a preload library: malloc, calloc and realloc of more than 8
 * bytes return 16-aligned memory (max_align_t; SSE code stores to it with movaps), requests of
 * at most 8 bytes at least 8-aligned. Sizes 1..1100 a few times each, so that guarded blocks
 * (placed against their guard page) and red-zoned ones are among them. Prints the number of
 * misaligned blocks of each entry point and exits 1 if any, else prints "ok". */
#ifdef __SSE2__
#include <emmintrin.h>
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static int misaligned(const void *p, size_t size) {
    size_t need = size > 8 ? 16 : 8;
    return p == NULL || ((uintptr_t)p % need) != 0;
}

int main(void) {
    enum { ROUNDS = 6, MAX = 1100 };
    static void *held[ROUNDS][MAX + 1];
    long bad_malloc = 0, bad_calloc = 0, bad_realloc = 0;
    for (int r = 0; r < ROUNDS; r++) {
        for (size_t n = 1; n <= MAX; n++) {
            void *m = malloc(n);
            bad_malloc += misaligned(m, n);
            void *c = calloc(1, n);
            bad_calloc += misaligned(c, n);
            void *g = realloc(c, n + 7);
            bad_realloc += misaligned(g, n + 7);
#ifdef __SSE2__
            if (n >= 16 && !misaligned(m, n)) {
                /* What SSE code does with a 16-aligned block: an aligned 16-byte store. */
                _mm_store_si128((__m128i *)m, _mm_set1_epi8((char)n));
            }
#endif
            free(g);
            held[r][n] = m;
        }
    }
    for (int r = 0; r < ROUNDS; r++)
        for (size_t n = 1; n <= MAX; n++) free(held[r][n]);
    if (bad_malloc || bad_calloc || bad_realloc) {
        printf("misaligned: malloc %ld calloc %ld realloc %ld\n", bad_malloc, bad_calloc,
               bad_realloc);
        return 1;
    }
    printf("ok\n");
    return 0;
}
