/* fork from a program whose other threads keep allocating: the child must find every lock of
 * the allocator free (its other threads are gone). Each child allocates (sampled stacks,
 * guarded blocks, the quarantine: the tracker's locks), frees and exits, half of them through
 * exit() (the exit-time leak check), half through _exit(). Prints "ok" when every child
 * finished; a child that does not finish in 10 s counts as hung. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

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

int main(void) {
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], 0, churn, (void *)(size_t)(i * 77));
    int hung = 0, failed = 0;
    for (int c = 0; c < 60; c++) {
        pid_t pid = fork();
        if (pid == 0) {
            for (int i = 0; i < 20000; i++) {
                char *x = malloc(i % 500 + 1);
                x[0] = 2;
                free(x);
            }
            if (c % 2) exit(0);
            _exit(0);
        }
        int st = 0, w = 0;
        for (; w < 1000 && waitpid(pid, &st, WNOHANG) != pid; w++) usleep(10000);
        if (w == 1000) {
            hung++;
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
        } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            failed++;
        }
    }
    stop = 1;
    for (int i = 0; i < 4; i++) pthread_join(t[i], 0);
    if (hung || failed) {
        printf("%d of 60 children hung, %d failed\n", hung, failed);
        return 1;
    }
    puts("ok");
    return 0;
}
