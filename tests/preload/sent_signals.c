/* SIGSEGV and SIGBUS sent to the program (raise, kill) rather than raised by an access: the
 * instrumented library's fault handler must let them end the program as they would without it.
 * Argument: raise-segv, raise-bus, kill-segv, ignored-segv (SIG_IGN first: it goes on). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    char *volatile p = malloc(10);
    p[0] = 1;
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "raise-segv"))
        raise(SIGSEGV);
    if (!strcmp(mode, "raise-bus"))
        raise(SIGBUS);
    if (!strcmp(mode, "kill-segv"))
        kill(getpid(), SIGSEGV);
    if (!strcmp(mode, "ignored-segv")) {
        signal(SIGSEGV, SIG_IGN);
        raise(SIGSEGV);
    }
    free(p);
    puts("went on");
    return 0;
}
