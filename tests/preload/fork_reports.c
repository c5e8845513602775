/* fork from a program whose other threads keep raising reports (an invalid free each turn): a
 * child that raises a report of its own must find the report machinery free (the symbolizer
 * and the report log are locked by whichever thread is reporting at the fork). Prints "ok"
 * when every child finished; a child that does not finish in 3 s counts as hung. */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "fork_children.h"

static volatile int stop;

/* The offset is computed where the compiler cannot see it (gcc warns about a constant one). */
static char *inside(char *p) { return p + (getpid() > 0 ? 16 : 0); }

static void *report_forever(void *arg) {
    (void)arg;
    while (!stop) {
        char *p = malloc(64);
        free(inside(p));
        free(p);
    }
    return 0;
}

static pthread_t t[3];

static void child(int c) {
    (void)c;
    char *p = malloc(64);
    free(inside(p));
    free(p);
}

static void stop_threads(void) {
    stop = 1;
    for (int i = 0; i < 3; i++) pthread_join(t[i], 0);
}

int main(void) {
    for (int i = 0; i < 3; i++) pthread_create(&t[i], 0, report_forever, 0);
    return fork_children(40, child, 3, stop_threads);
}
