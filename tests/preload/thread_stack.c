/* Threads whose first allocation happens inside glibc's pthread_getattr_np, which holds the
 * thread's lock while it reallocates its cpuset buffer (the JVM asks for every thread it
 * starts). An allocator that asks pthread_getattr_np again from there (for the stack's
 * bounds) waits on that lock for good: the test runs this under a deadline.
 *
 * Build: gcc -O1 -pthread -o thread_stack thread_stack.c
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static void *worker(void *arg) {
    pthread_attr_t attr;
    void *addr;
    size_t size;
    (void)arg;
    if (pthread_getattr_np(pthread_self(), &attr) != 0) return (void *)1;
    if (pthread_attr_getstack(&attr, &addr, &size) != 0) return (void *)1;
    pthread_attr_destroy(&attr);
    /* The stack holds this frame. */
    char here;
    if ((char *)addr > &here || &here >= (char *)addr + size) return (void *)1;
    free(malloc(100));
    return NULL;
}

int main(void) {
    for (int round = 0; round < 8; round++) {
        pthread_t th[4];
        for (int i = 0; i < 4; i++)
            if (pthread_create(&th[i], NULL, worker, NULL) != 0) return 2;
        for (int i = 0; i < 4; i++) {
            void *r;
            if (pthread_join(th[i], &r) != 0 || r != NULL) return 3;
        }
    }
    puts("ok");
    return 0;
}
