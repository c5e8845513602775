/*
 * The comparison benchmark's workloads as a C program, for allocators brought in with
 * LD_PRELOAD (glibc when nothing is preloaded). It mirrors benches/compare/src/workload.rs:
 * the same patterns, parameters and random sequence (xorshift64* seeded through splitmix64);
 * keep the two in step.
 *
 *   workloads WORKLOAD THREADS OPS_PER_THREAD SEED
 *   WORKLOAD: random | lifo64 | larson | prodcons | fifo64 | mstress | scratch | pareto | realloc
 * (the last five mirror benches/compare/src/patterns.rs)
 *
 * prints one line the Rust harness parses (benches/compare/src/child.rs):
 *   RESULT pairs=N seconds=F base_rss_kib=N peak_rss_kib=N
 * pairs counts malloc+free pairs over all threads; seconds is wall time from starting the first
 * thread to joining the last; peak_rss_kib is VmHWM from /proc/self/status.
 *
 * Every block is touched (first and last byte written) as a program would. The harness's own
 * memory (slot arrays, batches) lives on stacks or in static storage, so only the workload's
 * blocks go through the allocator under test.
 *
 * Build: gcc -O2 -pthread -o workloads workloads.c
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { RANDOM_WINDOW = 4096, LARSON_SLOTS = 2000, LIFO_BURST = 1000, BATCH = 256,
       BATCHES_IN_FLIGHT = 16, MAX_THREADS = 64, FIFO_BURST = 1000, MSTRESS_PHASES = 10,
       MSTRESS_WINDOW = 1000, SCRATCH_WRITES = 50, SCRATCH_SIZE = 8, PARETO_WINDOW = 4096,
       PARETO_MAX = 1024, REALLOC_FROM = 1 << 10, REALLOC_TO = 32 << 20 };

/* ---- random numbers: the same generator as benches/compare/src/rng.rs ---- */
typedef struct { uint64_t state; } rng_t;

static rng_t rng_new(uint64_t seed) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    rng_t r = { (z ^ (z >> 31)) | 1 };
    return r;
}

static inline uint64_t rng_next(rng_t *r) {
    uint64_t x = r->state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->state = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* in 0..n, by multiply-shift as in rng.rs */
static inline size_t rng_below(rng_t *r, size_t n) {
    return (size_t)(((unsigned __int128)rng_next(r) * n) >> 64);
}

static inline size_t rng_between(rng_t *r, size_t lo, size_t hi) {
    return lo + rng_below(r, hi - lo + 1);
}

/* ---- blocks ---- */
static void die_oom(size_t size) {
    fprintf(stderr, "workloads: the allocator returned null for %zu bytes\n", size);
    exit(2);
}

static inline void *alloc_touched(size_t size, unsigned char tag) {
    volatile unsigned char *p = malloc(size);
    if (__builtin_expect(p == NULL, 0)) die_oom(size);
    p[0] = tag;
    p[size - 1] = tag;
    return (void *)p;
}

/* ---- random replacement (random, larson) ---- */
static uint64_t replace_randomly(rng_t *r, size_t window, size_t lo, size_t hi, uint64_t ops) {
    void *slots[RANDOM_WINDOW > LARSON_SLOTS ? RANDOM_WINDOW : LARSON_SLOTS];
    for (size_t i = 0; i < window; i++) slots[i] = alloc_touched(rng_between(r, lo, hi), 1);
    for (uint64_t i = 0; i < ops; i++) {
        size_t k = rng_below(r, window);
        free(slots[k]);
        slots[k] = alloc_touched(rng_between(r, lo, hi), (unsigned char)i);
    }
    for (size_t i = 0; i < window; i++) free(slots[i]);
    return ops + window;
}

/* ---- LIFO bursts of 64 B ---- */
static uint64_t lifo_bursts(uint64_t ops) {
    void *live[LIFO_BURST];
    uint64_t bursts = (ops + LIFO_BURST - 1) / LIFO_BURST;
    for (uint64_t b = 0; b < bursts; b++) {
        for (int i = 0; i < LIFO_BURST; i++) live[i] = alloc_touched(64, (unsigned char)b);
        for (int i = LIFO_BURST - 1; i >= 0; i--) free(live[i]);
    }
    return bursts * LIFO_BURST;
}

/* ---- FIFO bursts of 64 B (bench-malloc-simple) ---- */
static uint64_t fifo_bursts(uint64_t ops) {
    void *live[FIFO_BURST];
    uint64_t bursts = (ops + FIFO_BURST - 1) / FIFO_BURST;
    for (uint64_t b = 0; b < bursts; b++) {
        for (int i = 0; i < FIFO_BURST; i++) live[i] = alloc_touched(64, (unsigned char)b);
        for (int i = 0; i < FIFO_BURST; i++) free(live[i]);
    }
    return bursts * FIFO_BURST;
}

/* ---- Pareto sizes (alloc-test): x_min 8, alpha 1, in integers as patterns.rs draws them ---- */
static inline size_t pareto_size(rng_t *r) {
    uint64_t k = (rng_next(r) >> 11) + 1;
    uint64_t s = (8ull << 53) / k;
    return s < PARETO_MAX ? (size_t)s : PARETO_MAX;
}

static uint64_t pareto(rng_t *r, uint64_t ops) {
    void *slots[PARETO_WINDOW];
    for (size_t i = 0; i < PARETO_WINDOW; i++) slots[i] = alloc_touched(pareto_size(r), 1);
    for (uint64_t i = 0; i < ops; i++) {
        size_t k = rng_below(r, PARETO_WINDOW);
        free(slots[k]);
        slots[k] = alloc_touched(pareto_size(r), (unsigned char)i);
    }
    for (size_t i = 0; i < PARETO_WINDOW; i++) free(slots[i]);
    return ops + PARETO_WINDOW;
}

/* ---- buffers grown by realloc from 1 KiB to 32 MiB by a quarter at a time ---- */
static uint64_t grow_buffers(uint64_t ops) {
    uint64_t done = 0, count = 0;
    while (done < ops) {
        size_t size = REALLOC_FROM;
        unsigned char *p = alloc_touched(size, 1);
        count++;
        while (size < REALLOC_TO && done < ops) {
            size_t next = size + size / 4;
            if (next > REALLOC_TO) next = REALLOC_TO;
            unsigned char *q = realloc(p, next);
            if (q == NULL) die_oom(next);
            ((volatile unsigned char *)q)[next - 1] = 1;
            p = q;
            size = next;
            done++;
            count++;
        }
        free(p);
    }
    return count;
}

/* ---- cache-scratch: passive false sharing ---- */
static void *scratch_first[MAX_THREADS];

static uint64_t scratch(size_t index, uint64_t ops) {
    free(scratch_first[index]);
    for (uint64_t i = 0; i < ops; i++) {
        volatile unsigned char *p = alloc_touched(SCRATCH_SIZE, 0);
        for (int w = 0; w < SCRATCH_WRITES; w++) p[w % SCRATCH_SIZE] = (unsigned char)i;
        free((void *)p);
    }
    return ops;
}

/* ---- mstress: each phase's thread t frees what phase-1's thread t-1 left it ---- */
static void *mstress_left[MAX_THREADS][MSTRESS_WINDOW];
static int mstress_has[MAX_THREADS];

/* ---- producer/consumer: batches go over a bounded queue, come back empty over another ---- */
typedef struct { void *blocks[BATCH]; } batch_t;

typedef struct {
    batch_t *items[BATCHES_IN_FLIGHT];
    size_t head, count;
    int closed;
    pthread_mutex_t lock;
    pthread_cond_t changed;
} queue_t;

typedef struct {
    queue_t full, empty;
    batch_t batches[BATCHES_IN_FLIGHT];
} pair_t;

static pair_t pairs[MAX_THREADS / 2];

static void queue_init(queue_t *q) {
    memset(q, 0, sizeof *q);
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->changed, NULL);
}

static void queue_push(queue_t *q, batch_t *b) {
    pthread_mutex_lock(&q->lock);
    while (q->count == BATCHES_IN_FLIGHT) pthread_cond_wait(&q->changed, &q->lock);
    q->items[(q->head + q->count++) % BATCHES_IN_FLIGHT] = b;
    pthread_cond_broadcast(&q->changed);
    pthread_mutex_unlock(&q->lock);
}

/* NULL once the queue is closed and drained */
static batch_t *queue_pop(queue_t *q) {
    pthread_mutex_lock(&q->lock);
    while (q->count == 0 && !q->closed) pthread_cond_wait(&q->changed, &q->lock);
    batch_t *b = NULL;
    if (q->count > 0) {
        b = q->items[q->head];
        q->head = (q->head + 1) % BATCHES_IN_FLIGHT;
        q->count--;
        pthread_cond_broadcast(&q->changed);
    }
    pthread_mutex_unlock(&q->lock);
    return b;
}

static void queue_close(queue_t *q) {
    pthread_mutex_lock(&q->lock);
    q->closed = 1;
    pthread_cond_broadcast(&q->changed);
    pthread_mutex_unlock(&q->lock);
}

static uint64_t produce(pair_t *pair, rng_t *r, uint64_t ops) {
    uint64_t batches = (ops + BATCH - 1) / BATCH;
    for (uint64_t n = 0; n < batches; n++) {
        batch_t *b = queue_pop(&pair->empty);
        for (int i = 0; i < BATCH; i++) b->blocks[i] = alloc_touched(rng_between(r, 16, 256), (unsigned char)n);
        queue_push(&pair->full, b);
    }
    queue_close(&pair->full);
    return batches * BATCH;
}

static uint64_t consume(pair_t *pair) {
    uint64_t checksum = 0;
    batch_t *b;
    while ((b = queue_pop(&pair->full)) != NULL) {
        for (int i = 0; i < BATCH; i++) {
            checksum += *(volatile unsigned char *)b->blocks[i];
            free(b->blocks[i]);
        }
        queue_push(&pair->empty, b);
    }
    __asm__ volatile("" : : "r"(checksum));
    return 0; /* the producer counts the pairs */
}

/* ---- threads ---- */
typedef enum { W_RANDOM, W_LIFO64, W_LARSON, W_PRODCONS, W_FIFO64, W_MSTRESS, W_SCRATCH,
               W_PARETO, W_REALLOC, W_COUNT } workload_t;

typedef struct {
    workload_t workload;
    size_t index;
    uint64_t ops, seed, pairs, phase;
    void *slots_out[MSTRESS_WINDOW];
} job_t;

static uint64_t mstress_job(job_t *job) {
    uint64_t per_phase = (job->ops + MSTRESS_PHASES - 1) / MSTRESS_PHASES;
    rng_t r = rng_new(job->seed + job->phase * 1000 + job->index);
    void **slots = job->slots_out;
    size_t t = job->index;
    if (mstress_has[t])
        for (int i = 0; i < MSTRESS_WINDOW; i++) free(mstress_left[t][i]);
    for (int i = 0; i < MSTRESS_WINDOW; i++) slots[i] = alloc_touched(rng_between(&r, 8, 1024), 1);
    for (uint64_t i = 0; i < per_phase; i++) {
        size_t k = rng_below(&r, MSTRESS_WINDOW);
        void *fresh = alloc_touched(rng_between(&r, 8, 1024), (unsigned char)i);
        free(slots[k]);
        slots[k] = fresh;
    }
    return per_phase + MSTRESS_WINDOW;
}

static void *thread_main(void *arg) {
    job_t *job = arg;
    rng_t r = rng_new(job->seed + job->index);
    switch (job->workload) {
    case W_RANDOM: job->pairs = replace_randomly(&r, RANDOM_WINDOW, 8, 256, job->ops); break;
    case W_LARSON: job->pairs = replace_randomly(&r, LARSON_SLOTS, 10, 1010, job->ops); break;
    case W_LIFO64: job->pairs = lifo_bursts(job->ops); break;
    case W_FIFO64: job->pairs = fifo_bursts(job->ops); break;
    case W_PARETO: job->pairs = pareto(&r, job->ops); break;
    case W_REALLOC: job->pairs = grow_buffers(job->ops); break;
    case W_SCRATCH: job->pairs = scratch(job->index, job->ops); break;
    case W_MSTRESS: job->pairs = mstress_job(job); break;
    case W_COUNT: break;
    case W_PRODCONS:
        job->pairs = job->index % 2 == 0 ? produce(&pairs[job->index / 2], &r, job->ops)
                                          : consume(&pairs[job->index / 2]);
        break;
    }
    return NULL;
}

static uint64_t status_kib(const char *field) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    uint64_t kib = 0;
    size_t n = strlen(field);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, n) == 0 && line[n] == ':') { kib = strtoull(line + n + 1, NULL, 10); break; }
    fclose(f);
    return kib;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    static const char *names[] = { "random", "lifo64", "larson", "prodcons", "fifo64", "mstress",
                                   "scratch", "pareto", "realloc" };
    if (argc != 5) {
        fprintf(stderr, "usage: %s random|lifo64|larson|prodcons|fifo64|mstress|scratch|pareto|realloc THREADS OPS_PER_THREAD SEED\n", argv[0]);
        return 1;
    }
    int w = -1;
    for (int i = 0; i < W_COUNT; i++) if (strcmp(argv[1], names[i]) == 0) w = i;
    long threads = strtol(argv[2], NULL, 10);
    uint64_t ops = strtoull(argv[3], NULL, 10), seed = strtoull(argv[4], NULL, 10);
    if (w < 0) { fprintf(stderr, "workloads: unknown workload %s\n", argv[1]); return 1; }
    if (threads < 1 || threads > MAX_THREADS || (w == W_PRODCONS && threads % 2 != 0)) {
        fprintf(stderr, "workloads: %ld threads: need 1..%d (an even count for prodcons)\n", threads, MAX_THREADS);
        return 1;
    }

    /* fopen/stdio allocate: do it before measuring, and before the baseline */
    uint64_t base_rss_kib = status_kib("VmRSS");
    static job_t jobs[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    if (w == W_PRODCONS)
        for (long p = 0; p < threads / 2; p++) {
            queue_init(&pairs[p].full);
            queue_init(&pairs[p].empty);
            for (int i = 0; i < BATCHES_IN_FLIGHT; i++) queue_push(&pairs[p].empty, &pairs[p].batches[i]);
        }
    double start = now_seconds();
    uint64_t total = 0;
    if (w == W_SCRATCH) {
        /* one thread hands out neighbouring blocks, as cache-scratch does */
        for (long t = 0; t < threads; t++) scratch_first[t] = alloc_touched(SCRATCH_SIZE, 1);
        total += (uint64_t)threads;
    }
    int phases = w == W_MSTRESS ? MSTRESS_PHASES : 1;
    for (int phase = 0; phase < phases; phase++) {
        for (long t = 0; t < threads; t++) {
            jobs[t].workload = (workload_t)w;
            jobs[t].index = (size_t)t;
            jobs[t].ops = ops;
            jobs[t].seed = seed;
            jobs[t].phase = (uint64_t)phase;
            jobs[t].pairs = 0;
            if (pthread_create(&ids[t], NULL, thread_main, &jobs[t]) != 0) {
                fprintf(stderr, "workloads: cannot start thread %ld\n", t);
                return 1;
            }
        }
        for (long t = 0; t < threads; t++) {
            pthread_join(ids[t], NULL);
            total += jobs[t].pairs;
        }
        if (w == W_MSTRESS)
            /* thread t's window goes to the next phase's thread t+1 */
            for (long t = 0; t < threads; t++) {
                long to = (t + 1) % threads;
                memcpy(mstress_left[to], jobs[t].slots_out, sizeof jobs[t].slots_out);
                mstress_has[to] = 1;
            }
    }
    if (w == W_MSTRESS)
        for (long t = 0; t < threads; t++)
            for (int i = 0; i < MSTRESS_WINDOW; i++) free(mstress_left[t][i]);
    double seconds = now_seconds() - start;
    printf("RESULT pairs=%llu seconds=%.9f base_rss_kib=%llu peak_rss_kib=%llu\n",
           (unsigned long long)total, seconds, (unsigned long long)base_rss_kib,
           (unsigned long long)status_kib("VmHWM"));
    return 0;
}
