/* What the fork tests share: fork `n` children while the program's other threads run, each
 * running `child(c)` and then ending by itself; wait for each at most `seconds` (a child still
 * running then counts as hung and is killed). Then `stop_threads()`, and prints "ok" when every
 * child finished with status 0; returns the program's exit status. */
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static int fork_children(int n, void (*child)(int c), int seconds, void (*stop_threads)(void)) {
    int hung = 0, failed = 0;
    for (int c = 0; c < n; c++) {
        pid_t pid = fork();
        if (pid == 0) {
            child(c);
            _exit(0);
        }
        int st = 0, w = 0;
        for (; w < seconds * 100 && waitpid(pid, &st, WNOHANG) != pid; w++) usleep(10000);
        if (w == seconds * 100) {
            hung++;
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
        } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            failed++;
        }
    }
    stop_threads();
    if (hung || failed) {
        printf("%d of %d children hung, %d failed\n", hung, n, failed);
        return 1;
    }
    puts("ok");
    return 0;
}
