/* The leak check of a child forked from a multithreaded program. The parent's main thread and
 * a second thread each hold a block whose address no memory holds (kept masked, as a thread
 * that was allocating at the fork may hold its newest block in a register alone); the child
 * leaks one block of its own, masked alike, and ends with exit(). The child's report must name
 * the main thread's block (222 bytes: the thread that forked is the child's) and its own (333),
 * and leave out the other thread's (111): that thread is the parent's, whose check judges it.
 * The parent frees its two blocks and leaks nothing. Prints "child 0" and "ok". */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define MASK ((uintptr_t)0x5a5a5a5a5a5a5a5aull)

static volatile uintptr_t held_by_thread, held_by_main, leaked_by_child;
static int ready[2], done[2];

static void *holder(void *arg) {
    char c = 0;
    (void)arg;
    char *p = malloc(111);
    p[0] = 1;
    held_by_thread = (uintptr_t)p ^ MASK;
    p = 0;
    if (write(ready[1], &c, 1) != 1 || read(done[0], &c, 1) != 1) return 0;
    free((void *)(held_by_thread ^ MASK));
    return 0;
}

int main(void) {
    pthread_t t;
    char c = 0;
    if (pipe(ready) || pipe(done)) return 2;
    char *m = malloc(222);
    m[0] = 2;
    held_by_main = (uintptr_t)m ^ MASK;
    m = 0;
    pthread_create(&t, 0, holder, 0);
    if (read(ready[0], &c, 1) != 1) return 2;
    pid_t pid = fork();
    if (pid == 0) {
        char *x = malloc(333);
        x[0] = 3;
        leaked_by_child = (uintptr_t)x ^ MASK;
        x = 0;
        exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    printf("child %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    fflush(stdout);
    if (write(done[1], &c, 1) != 1) return 2;
    pthread_join(t, 0);
    free((void *)(held_by_main ^ MASK));
    puts("ok");
    return 0;
}
