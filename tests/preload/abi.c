/*
 * Exercises liballocscope.so's C ABI from a C program run under LD_PRELOAD: every entry point,
 * errno on failure, alignment, usable size, fork, and threads created and destroyed while
 * blocks cross between them. Prints "ok" and exits 0, or names the failed check and exits 1.
 *
 * Build: gcc -O1 -pthread -Wno-alloc-size-larger-than -o abi abi.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* C23 entry points this glibc may not declare: looked up at run time. */
typedef void (*free_sized_fn)(void *, size_t);
typedef void (*free_aligned_sized_fn)(void *, size_t, size_t);

#define CHECK(cond) do { if (!(cond)) { fprintf(stderr, "FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); exit(1); } } while (0)

static void fill(unsigned char *p, size_t n, unsigned char seed) { for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(seed + i); }
static int same(const unsigned char *p, size_t n, unsigned char seed) { for (size_t i = 0; i < n; i++) if (p[i] != (unsigned char)(seed + i)) return 0; return 1; }

enum { THREADS = 64, PER_THREAD = 2000 };
static void *handoff[THREADS][PER_THREAD];

static void *worker(void *arg) {
    long t = (long)arg;
    /* free what the previous thread left for us (remote frees into an exited thread's heap) */
    if (t > 0) for (int i = 0; i < PER_THREAD; i++) {
        CHECK(same(handoff[t - 1][i], 24 + i % 200, (unsigned char)i));
        free(handoff[t - 1][i]);
    }
    for (int i = 0; i < PER_THREAD; i++) {
        handoff[t][i] = malloc(24 + i % 200);
        CHECK(handoff[t][i] != NULL);
        fill(handoff[t][i], 24 + i % 200, (unsigned char)i);
    }
    return NULL;
}

int main(void) {
    /* our library serves malloc */
    Dl_info info;
    CHECK(dladdr((void *)malloc, &info) != 0);
    CHECK(info.dli_fname != NULL && strstr(info.dli_fname, "liballocscope") != NULL);

    /* malloc / free / usable size, 16-byte alignment above 8 bytes */
    for (size_t n = 0; n < 5000; n += 7) {
        unsigned char *p = malloc(n);
        CHECK(p != NULL);
        CHECK(malloc_usable_size(p) >= n);
        if (n > 8) CHECK(((uintptr_t)p & 15) == 0);
        fill(p, n, 3);
        CHECK(same(p, n, 3));
        free(p);
    }
    free(NULL);
    CHECK(malloc_usable_size(NULL) == 0);

    /* calloc zeroes, even on reused memory, and checks overflow */
    for (int round = 0; round < 3; round++) {
        unsigned char *d = malloc(4000); memset(d, 0xAB, 4000); free(d);
        unsigned char *z = calloc(1000, 4);
        CHECK(z != NULL);
        for (int i = 0; i < 4000; i++) CHECK(z[i] == 0);
        free(z);
    }
    errno = 0;
    CHECK(calloc(SIZE_MAX / 2, 4) == NULL && errno == ENOMEM);

    /* realloc keeps contents; size 0 frees; reallocarray checks overflow */
    unsigned char *r = malloc(10);
    fill(r, 10, 9);
    for (size_t n = 20; n < 3000000; n *= 3) { r = realloc(r, n); CHECK(r != NULL); CHECK(same(r, 10, 9)); }
    CHECK(realloc(r, 0) == NULL);
    r = realloc(NULL, 100); CHECK(r != NULL);
    errno = 0;
    CHECK(reallocarray(r, SIZE_MAX / 2, 4) == NULL && errno == ENOMEM);
    r = reallocarray(r, 10, 10); CHECK(r != NULL);
    free_sized_fn free_sized = (free_sized_fn)dlsym(RTLD_DEFAULT, "free_sized");
    free_aligned_sized_fn free_aligned_sized =
        (free_aligned_sized_fn)dlsym(RTLD_DEFAULT, "free_aligned_sized");
    CHECK(free_sized != NULL && free_aligned_sized != NULL);
    free_sized(r, 100);

    /* aligned entry points */
    for (size_t a = 8; a <= (1 << 20); a *= 2) {
        void *p = NULL;
        CHECK(posix_memalign(&p, a, 100) == 0 && ((uintptr_t)p % a) == 0);
        free(p);
        p = aligned_alloc(a, 3 * a);
        CHECK(p != NULL && ((uintptr_t)p % a) == 0);
        free_aligned_sized(p, a, 3 * a);
        p = memalign(a, 1000);
        CHECK(p != NULL && ((uintptr_t)p % a) == 0);
        free(p);
    }
    void *bad = NULL;
    CHECK(posix_memalign(&bad, 24, 100) == EINVAL);
    CHECK(posix_memalign(&bad, 0, 100) == EINVAL);
    CHECK(posix_memalign(&bad, sizeof(void *) / 2, 100) == EINVAL);
    /* alignments above 2 MiB, as glibc serves them (4 MiB to 1 GiB); the slack stays
       unmapped or untouched, so only the pages written become resident */
    for (size_t a = (size_t)4 << 20; a <= ((size_t)1 << 30); a <<= 2) {
        void *p = NULL;
        CHECK(posix_memalign(&p, a, 100) == 0 && ((uintptr_t)p % a) == 0);
        memset(p, 1, 100);
        free(p);
        p = aligned_alloc(a, 3 << 20);
        CHECK(p != NULL && ((uintptr_t)p % a) == 0);
        ((char *)p)[0] = 1; ((char *)p)[(3 << 20) - 1] = 1;
        free(p);
        p = memalign(a, 1000);
        CHECK(p != NULL && ((uintptr_t)p % a) == 0 && malloc_usable_size(p) >= 1000);
        p = realloc(p, 5 << 20);
        CHECK(p != NULL);
        free(p);
    }
    /* what no address space holds: ENOMEM, as glibc reports it; EINVAL only for an
       alignment memalign cannot round up to a power of two */
    CHECK(posix_memalign(&bad, 64, SIZE_MAX / 2) == ENOMEM);
    CHECK(posix_memalign(&bad, SIZE_MAX / 2 + 1, 100) == ENOMEM);
    errno = 0;
    CHECK(aligned_alloc(SIZE_MAX / 2 + 1, 100) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(aligned_alloc(64, SIZE_MAX / 2) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(memalign(SIZE_MAX / 2 + 1, 100) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(memalign(SIZE_MAX / 2 + 2, 100) == NULL && errno == EINVAL);
    errno = 0;
    CHECK(memalign((size_t)64 << 20, SIZE_MAX - (64 << 20)) == NULL && errno == ENOMEM);
    long page = sysconf(_SC_PAGESIZE);
    void *v = valloc(10); CHECK(v && ((uintptr_t)v % page) == 0); free(v);
    void *pv = pvalloc(10); CHECK(pv && ((uintptr_t)pv % page) == 0 && malloc_usable_size(pv) >= (size_t)page); free(pv);
    errno = 0;
    CHECK(malloc(SIZE_MAX - 4096) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(malloc(PTRDIFF_MAX) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(realloc(v = malloc(8), SIZE_MAX / 2 + 1) == NULL && errno == ENOMEM);
    free(v);

    /* threads created and destroyed, blocks freed by the next thread */
    for (long t = 0; t < THREADS; t++) {
        pthread_t th;
        CHECK(pthread_create(&th, NULL, worker, (void *)t) == 0);
        CHECK(pthread_join(th, NULL) == 0);
    }
    for (int i = 0; i < PER_THREAD; i++) free(handoff[THREADS - 1][i]);

    /* fork: the child allocates, frees parent blocks, runs threads */
    unsigned char *before = malloc(777);
    fill(before, 777, 5);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        if (!same(before, 777, 5)) _exit(2);
        free(before);
        for (int i = 0; i < 10000; i++) { void *p = malloc(i % 3000); if (!p) _exit(3); free(p); }
        pthread_t th;
        if (pthread_create(&th, NULL, worker, (void *)0) != 0) _exit(4);
        pthread_join(th, NULL);
        _exit(0);
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(same(before, 777, 5));
    free(before);

    puts("ok");
    return 0;
}
