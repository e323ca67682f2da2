/* The 8-bit AdamW step of the library (fo_run_fused) beside a plain C loop
 * of the same arithmetic, in one process, on arrays in 2 MiB pages, the two
 * steps alternating: the library's time over the loop's shows what the
 * library's driving (chunks, calls, prefetch plans) costs, without Python
 * or NumPy around it.  Built and run by tools/q8_probe.sh.
 *
 *   q8_probe N REPS THREADS PREFETCH
 *
 * N elements (a multiple of 1,024 is used), the best of REPS steps each,
 * THREADS 1 or 2 (the loop gives each thread half of the array; the
 * library hands out pieces of 2^15 elements as threads come free),
 * PREFETCH 0 or 1 (both prefetch or neither).  The loop decodes the codes
 * as it reads them, stores the new states to scratch and requantizes each
 * 1,024-element chunk with the library's codec (q8.h), prefetching 2,048
 * elements ahead in strips of 64 (the library's strips are 128); its bits
 * are not compared (the keys differ), only its time. */
#define _GNU_SOURCE
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "fastopt/kernels.h"
#define FO_LOWP(x) x##_probe
#include "fastopt/lowp.h"
#include "fastopt/q8.h"

void fo_prefetch_threshold_set(size_t n);

enum { CHUNK = FO_Q8_CHUNK, STRIP = 64, AHEAD = 2048 };   /* the library's chunk */

typedef struct { float beta1, omb1, beta2, omb2, step, inv_sqrt_bc2, eps, decay; } coef;

static void *pages(size_t bytes)
{
    const size_t huge = (size_t)1 << 21;
    void *p = aligned_alloc(huge, (bytes + huge - 1) / huge * huge);
    if (p == NULL) { perror("aligned_alloc"); exit(1); }
    madvise(p, bytes, MADV_HUGEPAGE);
    memset(p, 0, bytes);
    return p;
}

static double seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

#define PF(a) __asm__ volatile("prefetcht0 %0" : : "m"(*(const char *)(a)))

/* one block of 256: the rule's loop with the states decoded as read */
__attribute__((noinline)) static void block(const coef *c, float *restrict p,
    const float *restrict g, const uint8_t *restrict cm, const uint8_t *restrict cv,
    float scm, float scv, float *restrict sm, float *restrict sv, int prefetch)
{
    for (uint32_t s = 0; s < FO_Q8_BLOCK; s += STRIP) {
        if (prefetch) {
            for (uint32_t o = 0; o < 4 * STRIP; o += 64) {
                PF((const char *)(p + s + AHEAD) + o);
                PF((const char *)(g + s + AHEAD) + o);
            }
            PF(cm + s + AHEAD);
            PF(cv + s + AHEAD);
        }
#pragma GCC ivdep
        for (uint32_t i = s; i < s + STRIP; i++) {
            const float gi = g[i], pi = p[i] * c->decay;
            const float mi = c->beta1 * q8_load_probe(cm[i], scm, 127u) + c->omb1 * gi;
            const float vi = c->beta2 * q8_load_probe(cv[i], scv, 255u) + c->omb2 * (gi * gi);
            sm[i] = mi;
            sv[i] = vi;
            p[i] = pi - c->step * (mi / (sqrtf(vi) * c->inv_sqrt_bc2 + c->eps));
        }
    }
}

static void loop_step(const coef *c, float *p, const float *g, uint8_t *cm, uint8_t *cv,
                      float *scm, float *scv, size_t n, uint32_t key, int prefetch)
{
    _Alignas(64) float sm[CHUNK], sv[CHUNK];
    for (size_t at = 0; at < n; at += CHUNK) {
        for (size_t b = at; b < at + CHUNK; b += FO_Q8_BLOCK)
            block(c, p + b, g + b, cm + b, cv + b, scm[b / FO_Q8_BLOCK], scv[b / FO_Q8_BLOCK],
                  sm + (b - at), sv + (b - at), prefetch && b + FO_Q8_BLOCK + AHEAD < n);
        q8_encode_probe(sm, cm + at, scm + at / FO_Q8_BLOCK, CHUNK, 0, key, at);
        q8_encode_probe(sv, cv + at, scv + at / FO_Q8_BLOCK, CHUNK, 1, key + 1u, at);
    }
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s N REPS THREADS PREFETCH\n", argv[0]);
        return 2;
    }
    const size_t n = (size_t)atof(argv[1]) / CHUNK * CHUNK;
    const int reps = atoi(argv[2]), threads = atoi(argv[3]), prefetch = atoi(argv[4]);
    if (n == 0 || reps < 1 || (threads != 1 && threads != 2)) {
        fprintf(stderr, "N >= 1024, REPS >= 1, THREADS 1 or 2\n");
        return 2;
    }
    if (fo_level_set(fo_level_count() - 1) != 0) {
        fprintf(stderr, "this CPU lacks the widest level the probe is built for\n");
        return 1;
    }
    fo_num_threads_set(threads);
    fo_prefetch_threshold_set(prefetch ? 0 : (size_t)-1);
    /* AdamW, lr 1e-3, weight decay 1e-2, at step 5 */
    const double h[FO_ADAM_NH] = {1e-3, 0.9, 0.999, 1e-8, 1e-2, 0, 0, 1};
    fo_args a;
    const char *msg = fo_coefficients(FO_RULE_ADAM, h, 5, &a);
    if (msg != NULL) { fprintf(stderr, "%s\n", msg); return 1; }
    const coef c = {
        (float)a.c[FO_ADAM_C_BETA1], (float)a.c[FO_ADAM_C_ONE_MINUS_BETA1],
        (float)a.c[FO_ADAM_C_BETA2], (float)a.c[FO_ADAM_C_ONE_MINUS_BETA2],
        (float)a.c[FO_ADAM_C_STEP_SIZE], (float)a.c[FO_ADAM_C_INV_SQRT_BC2],
        (float)a.c[FO_ADAM_C_EPS], (float)a.c[FO_ADAM_C_DECAY]};
    const size_t nb = n / FO_Q8_BLOCK;
    float *p[2], *scale[2][2];
    uint8_t *code[2][2];
    float *g = pages(4 * n + 4 * AHEAD);
    for (int k = 0; k < 2; k++) {
        p[k] = pages(4 * n + 4 * AHEAD);
        for (int j = 0; j < 2; j++) {
            code[k][j] = pages(n + AHEAD);
            scale[k][j] = pages(4 * nb);
        }
    }
    uint32_t r = 12345u;
    for (size_t i = 0; i < n; i++) {
        r = r * 1664525u + 1013904223u;
        const float u = (float)(r >> 8) * 0x1p-24f - 0.5f;
        p[0][i] = p[1][i] = u;
        g[i] = 0.02f * u * u * u + 1e-3f * u;
    }
    const size_t half = n / 2 / CHUNK * CHUNK;
    double best_lib = INFINITY, best_loop = INFINITY;
    for (int rep = 0; rep < reps; rep++) {
        fo_tensor t;
        memset(&t, 0, sizeof t);
        t.p = p[0];
        t.g = g;
        t.s[0] = code[0][0];
        t.s[1] = code[0][1];
        t.scale[0] = scale[0][0];
        t.scale[1] = scale[0][1];
        t.n = n;
        t.key = 1000u + (uint64_t)rep;
        const fo_fuse f = {FO_FUSE_Q8, FO_ADAM_Q8_NONNEG, 0.0, 0.0};
        double t0 = seconds();
        fo_run_fused(FO_RULE_ADAM, 0, &a, &t, 1, &f);
        double t1 = seconds();
        if (threads == 1) {
            loop_step(&c, p[1], g, code[1][0], code[1][1], scale[1][0], scale[1][1], n,
                      2000u + 2u * (uint32_t)rep, prefetch);
        } else {
#pragma omp parallel for num_threads(2)
            for (int q = 0; q < 2; q++) {
                const size_t o = q ? half : 0, m = q ? n - half : half;
                loop_step(&c, p[1] + o, g + o, code[1][0] + o, code[1][1] + o,
                          scale[1][0] + o / FO_Q8_BLOCK, scale[1][1] + o / FO_Q8_BLOCK, m,
                          2000u + 2u * (uint32_t)rep, prefetch);
            }
        }
        double t2 = seconds();
        if (t1 - t0 < best_lib) best_lib = t1 - t0;
        if (t2 - t1 < best_loop) best_loop = t2 - t1;
    }
    printf("n=%zu threads=%d prefetch=%d: library %.3f, C loop %.3f ns an element "
           "(best of %d), library / loop %.3f\n", n, threads, prefetch,
           best_lib / n * 1e9, best_loop / n * 1e9, reps, best_lib / best_loop);
    return 0;
}
