/* Ends without exit hooks, or vforks a child that does: the trace must still hold the events.
 * `exit_paths _exit`: 1000 allocations (500 freed), then _exit(0).
 * `exit_paths vfork`: 500 allocations, a vfork child that execs /bin/true (and _exits if the
 * exec fails), then 500 more allocations in the parent and a normal exit: the parent's trace
 * goes on after its vfork child, whose _exit and exec run in the parent's memory.
 * `exit_paths exec-fails`: 500 allocations, an execv of a path that does not exist (which
 * fails), then 500 more and one 4242-byte block leaked: the trace goes on after the failed exec.
 * `exit_paths exec`: 500 allocations, then execv of this program in mode `after-exec 1`, which
 * makes 300 allocations of 201 bytes and execs `after-exec 2` (300 of 202 bytes): three
 * programs in one process, each image's trace kept whole. */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Where blocks go so that the compiler keeps their malloc and free. */
static char *volatile sink;

static void churn(int n) {
    for (int i = 0; i < n; i++) {
        char *p = malloc(100);
        memset(p, i, 100);
        if (i % 2) free(p);
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "_exit") == 0) {
        churn(1000);
        _exit(0);
    }
    if (argc > 1 && strcmp(argv[1], "exec-fails") == 0) {
        churn(500);
        char *args[] = {"/nonexistent/allocscope-test", 0};
        if (execv(args[0], args) != -1) return 2;
        churn(500);
        sink = malloc(4242);
        memset(sink, 1, 4242);
        sink = 0;
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "exec") == 0) {
        churn(500);
        char *args[] = {argv[0], "after-exec", "1", 0};
        execv(argv[0], args);
        return 2;
    }
    if (argc > 2 && strcmp(argv[1], "after-exec") == 0) {
        int image = atoi(argv[2]);
        for (int i = 0; i < 300; i++) {
            sink = malloc(200 + image);
            free(sink);
        }
        if (image < 2) {
            char *args[] = {argv[0], "after-exec", "2", 0};
            execv(argv[0], args);
            return 2;
        }
        /* A program this one starts, with the same options: it must leave the first
         * program's trace alone. */
        pid_t pid = fork();
        if (pid == 0) {
            char *args[] = {argv[0], "started", 0};
            execv(argv[0], args);
            _exit(127);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
    }
    if (argc > 1 && strcmp(argv[1], "started") == 0) {
        for (int i = 0; i < 7; i++) {
            sink = malloc(999);
            free(sink);
        }
        return 0;
    }
    churn(500);
    pid_t pid = vfork();
    if (pid == 0) {
        char *args[] = {"/bin/true", 0};
        execv("/bin/true", args);
        _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    churn(500);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}
