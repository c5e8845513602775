/* A program that closes standard error at exit, as coreutils' programs do (close_stdout), after
 * the allocator's exit hook was registered, and leaks a block whose address no memory keeps.
 * The exit-time leak report must still reach the original standard error. Prints "ok". */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static volatile uintptr_t hidden;
static char *volatile first;

static void close_streams(void) {
    fclose(stdout);
    fclose(stderr);
}

int main(void) {
    first = malloc(10); /* the allocator starts (and registers its exit hook) first; */
    free(first);        /* through a volatile pointer, which the compiler cannot elide */
    atexit(close_streams);
    char *p = malloc(345);
    p[0] = 1;
    hidden = (uintptr_t)p ^ 0x5a5a5a5a5a5a5a5aull;
    p = 0;
    puts("ok");
    return 0;
}
