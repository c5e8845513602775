/* The corruption suite's C program: each case commits one heap bug through malloc/free, for
 * the instrumented preload library to catch. `corruption CASE`; run.sh runs every case with
 * the options it needs and checks the report's kind and the function named in it.
 *
 * Every bug sits in its own non-inlined function, named after the case, so the report can be
 * checked for it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline))

/* Keeps the compiler from proving the bugs away. */
static volatile unsigned char sink;

static NOINLINE void flip(unsigned char *p) { *p = (unsigned char)~*p; }

NOINLINE void one_byte_overflow(void) {
    unsigned char *p = malloc(16);
    flip(p + 16);
    free(p);
}

NOINLINE void far_overflow(void) {
    unsigned char *p = malloc(64);
    p[64 + 200] = 1; /* lands in the guard page after a right-aligned slot */
    free(p);
}

NOINLINE void underflow(void) {
    unsigned char *p = malloc(32);
    flip(p - 1);
    free(p);
}

NOINLINE void use_after_free_write(void) {
    unsigned char *p = malloc(64);
    free(p);
    p[3] = 7; /* into the poisoned, quarantined block */
    for (int i = 0; i < 256; i++) free(malloc(256)); /* push it out of quarantine */
}

NOINLINE void use_after_free_read(void) {
    unsigned char *p = malloc(48);
    free(p);
    sink = p[10]; /* faults: the freed guard slot is inaccessible */
}

NOINLINE void double_free(void) {
    void *p = malloc(40);
    free(p);
    free(p);
}

NOINLINE void invalid_free(void) {
    char *p = malloc(100);
    free(p + 8);
    free(p);
}

static void *volatile hidden;

NOINLINE void leak(void) {
    char *p = malloc(777);
    memset(p, 1, 777);
    /* keep only a disguised copy of the address */
    hidden = (void *)((unsigned long)p ^ ~0UL);
}

int main(int argc, char **argv) {
    static const struct { const char *name; void (*run)(void); } cases[] = {
        {"one_byte_overflow", one_byte_overflow},
        {"far_overflow", far_overflow},
        {"underflow", underflow},
        {"use_after_free_write", use_after_free_write},
        {"use_after_free_read", use_after_free_read},
        {"double_free", double_free},
        {"invalid_free", invalid_free},
        {"leak", leak},
    };
    if (argc != 2) {
        fprintf(stderr, "usage: %s CASE\n", argv[0]);
        return 2;
    }
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (strcmp(argv[1], cases[i].name) == 0) {
            cases[i].run();
            return 0;
        }
    }
    fprintf(stderr, "unknown case: %s\n", argv[1]);
    return 2;
}
