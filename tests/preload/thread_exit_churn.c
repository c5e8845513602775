/* Detached threads that start, allocate and end while other threads allocate. glibc frees the
 * TLS blocks of cached thread stacks from an exiting detached thread after that thread's own
 * thread-locals are destroyed: those frees reach the tracker from a thread with no state left
 * (and, traced, with no std `thread::current`). Each short thread also leaves a pthread key
 * value for its destructor to free. Arguments: busy threads, short threads. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static pthread_key_t key;

static void *busy(void *arg) {
    long id = (long)arg;
    void *keep[64];
    for (int r = 0; r < 200; r++) {
        for (int i = 0; i < 64; i++) {
            keep[i] = malloc((i * 37 + id) % 3000 + 1);
            memset(keep[i], i, 1);
        }
        for (int i = 0; i < 64; i++)
            free(keep[i]);
    }
    return NULL;
}

static void *short_lived(void *arg) {
    (void)arg;
    free(malloc(1000));
    pthread_setspecific(key, strdup("x"));
    return NULL;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 8, d = argc > 2 ? atoi(argv[2]) : 300;
    pthread_key_create(&key, free);
    pthread_t *t = calloc(n, sizeof *t);
    for (long i = 0; i < n; i++)
        if (pthread_create(&t[i], 0, busy, (void *)i))
            return 3;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    for (int i = 0; i < d; i++) {
        pthread_t x;
        if (pthread_create(&x, &a, short_lived, 0))
            return 4;
    }
    for (int i = 0; i < n; i++)
        pthread_join(t[i], 0);
    free(t);
    /* The detached threads finish. */
    usleep(200000);
    puts("done");
    return 0;
}
