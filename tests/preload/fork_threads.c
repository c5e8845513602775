/* fork from a program whose other threads keep allocating: the child must find every lock of
 * the allocator free (its other threads are gone). Each child allocates (sampled stacks,
 * guarded blocks, the quarantine: the tracker's locks), frees and exits, half of them through
 * exit() (the exit-time leak check), half through _exit(). Prints "ok" when every child
 * finished; a child that does not finish in 10 s counts as hung. */
#include <pthread.h>
#include <stdlib.h>

#include "fork_children.h"

static volatile int stop;

static void *churn(void *arg) {
    unsigned i = (unsigned)(size_t)arg;
    while (!stop) {
        char *p = malloc(++i % 300 + 1);
        p[0] = 1;
        free(p);
    }
    return 0;
}

static pthread_t t[4];

static void child(int c) {
    for (int i = 0; i < 20000; i++) {
        char *x = malloc(i % 500 + 1);
        x[0] = 2;
        free(x);
    }
    if (c % 2) exit(0);
}

static void stop_threads(void) {
    stop = 1;
    for (int i = 0; i < 4; i++) pthread_join(t[i], 0);
}

int main(void) {
    for (int i = 0; i < 4; i++) pthread_create(&t[i], 0, churn, (void *)(size_t)(i * 77));
    return fork_children(60, child, 10, stop_threads);
}
