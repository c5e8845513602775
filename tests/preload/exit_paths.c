/* Ends without exit hooks, or vforks a child that does: the trace must still hold the events.
 * `exit_paths _exit`: 1000 allocations (500 freed), then _exit(0).
 * `exit_paths vfork`: 500 allocations, a vfork child that execs /bin/true (and _exits if the
 * exec fails), then 500 more allocations in the parent and a normal exit: the parent's trace
 * goes on after its vfork child, whose _exit and exec run in the parent's memory. */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

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
