/* Entry points: choose the instruction-set level, split work across threads.
 *
 * The rules themselves live in rules.h; this file only decides which compiled
 * copy runs and which elements each thread takes.  Every rule is element-wise,
 * so any split of the elements gives the same bits; the one reduction
 * (fo_sumsq_*) combines fixed blocks in index order so that it too is
 * independent of the split. */
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "fastopt/isa.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

/* Elements per step from which a second thread is used.  Measured on a
 * 2-core AVX2 machine (python -m fastopt bench --rules adam,sgd --sizes
 * 1e4,3e4,... --parallel-threshold 1): at 3e4 elements two threads ran Adam
 * float32 1.8x, SGD float32 1.2x and SGD float64 1.3x faster than one; at
 * 1e4 SGD float32 ran 10% slower on two (starting the team costs about as
 * much as the work).  So 2^15. */
#define FO_DEFAULT_PARALLEL_THRESHOLD ((size_t)1 << 15)

/* Thread split points are rounded to this many elements, so threads do not
 * share cache lines of the larger float64 arrays. */
#define FO_SPLIT_GRAIN 64

static const fo_isa_table *active = &fo_table_baseline;
static int active_level = FO_BASELINE;
static int num_threads = 0; /* 0: as many as OpenMP offers */
static size_t parallel_threshold = FO_DEFAULT_PARALLEL_THRESHOLD;

const char *fo_level_name(int level)
{
    switch (level) {
    case FO_BASELINE: return "baseline";
    case FO_AVX2: return "avx2";
    case FO_AVX512: return "avx512";
    default: return "unknown";
    }
}

static const fo_isa_table *table_for(int level)
{
    switch (level) {
    case FO_BASELINE: return &fo_table_baseline;
#ifdef FO_HAVE_AVX2
    case FO_AVX2: return &fo_table_avx2;
#endif
#ifdef FO_HAVE_AVX512
    case FO_AVX512: return &fo_table_avx512;
#endif
    default: return NULL;
    }
}

int fo_level_compiled(int level) { return table_for(level) != NULL; }

int fo_level_supported(int level)
{
    if (!fo_level_compiled(level)) return 0;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    switch (level) {
    case FO_BASELINE: return 1;
    case FO_AVX2: return __builtin_cpu_supports("x86-64-v3") > 0;
    case FO_AVX512: return __builtin_cpu_supports("x86-64-v4") > 0;
    }
    return 0;
#else
    return level == FO_BASELINE;
#endif
}

/* The architecture this copy of the library was compiled for, and how many
 * levels it has: x86-64 the three of fo_level, every other architecture
 * its baseline alone (on aarch64: NEON, which every AArch64 CPU has). */
const char *fo_arch_name(void)
{
#if defined(__x86_64__)
    return "x86_64";
#elif defined(__i386__)
    return "x86";
#elif defined(__aarch64__)
    return "aarch64";
#elif defined(__arm__)
    return "arm";
#elif defined(__powerpc64__)
    return "ppc64";
#elif defined(__riscv)
    return "riscv";
#elif defined(__s390x__)
    return "s390x";
#else
    return "unknown";
#endif
}

int fo_level_count(void)
{
#if defined(__x86_64__) || defined(__i386__)
    return FO_AVX512 + 1;
#else
    return FO_BASELINE + 1;
#endif
}

/* The CPU features that decide the level, as the CPU reports them
 * (space-separated; on aarch64 NEON, which the baseline needs, and SVE when
 * the Linux kernel reports it, for information; empty elsewhere). */
const char *fo_cpu_features(void)
{
#if defined(__x86_64__) || defined(__i386__)
    static char buf[128];
    size_t len = 0;
    __builtin_cpu_init();
    buf[0] = 0;
    /* __builtin_cpu_supports needs a literal, hence a macro */
#define FO_FEATURE(name) \
    if (__builtin_cpu_supports(name) && len + sizeof name + 1 < sizeof buf) { \
        if (len) buf[len++] = ' '; \
        memcpy(buf + len, name, sizeof name); \
        len += sizeof name - 1; \
    }
    FO_FEATURE("sse2") FO_FEATURE("sse4.2") FO_FEATURE("avx") FO_FEATURE("fma")
    FO_FEATURE("avx2") FO_FEATURE("avx512f") FO_FEATURE("avx512bw")
    FO_FEATURE("avx512dq") FO_FEATURE("avx512vl")
#undef FO_FEATURE
    return buf;
#elif defined(__aarch64__) && defined(__linux__)
    const unsigned long hw = getauxval(AT_HWCAP);
    /* HWCAP_ASIMD and HWCAP_SVE of <asm/hwcap.h> */
    if (hw & (1ul << 22)) return (hw & (1ul << 1)) ? "neon sve" : "sve";
    return (hw & (1ul << 1)) ? "neon" : "";
#elif defined(__aarch64__)
    return "neon";
#else
    return "";
#endif
}

int fo_level_get(void) { return active_level; }

int fo_level_set(int level)
{
    if (!fo_level_supported(level)) return -1;
    active = table_for(level);
    active_level = level;
    return 0;
}

int fo_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

void fo_num_threads_set(int n) { num_threads = n > 0 ? n : 0; }

/* The configured count, capped by OpenMP's own limit for the calling thread
 * (OMP_NUM_THREADS, threadpoolctl's threadpool_limits). */
int fo_num_threads_get(void)
{
#ifdef _OPENMP
    const int omp = omp_get_max_threads();
    return (num_threads > 0 && num_threads < omp) ? num_threads : omp;
#else
    return 1;
#endif
}

size_t fo_parallel_threshold(void) { return parallel_threshold; }
void fo_parallel_threshold_set(size_t n) { parallel_threshold = n; }

static size_t total_elements(const fo_tensor *t, size_t count)
{
    size_t total = 0;
    for (size_t k = 0; k < count; k++) total += t[k].n;
    return total;
}

/* Apply fn to the global element range [lo, hi) of the concatenated tensors. */
static void run_range(fo_range_fn fn, const void *args, const fo_tensor *t,
                      size_t count, size_t lo, size_t hi)
{
    size_t base = 0;
    for (size_t k = 0; k < count && base < hi; k++) {
        const size_t n = t[k].n;
        const size_t a = lo > base ? lo - base : 0;
        const size_t b = hi < base + n ? hi - base : n;
        if (a < b) fn(args, &t[k], a, b);
        base += n;
    }
}

static size_t split_point(size_t total, int part, int parts)
{
    if (part >= parts) return total;
    const size_t x = (size_t)((unsigned __int128)total * (unsigned)part / (unsigned)parts);
    return x - x % FO_SPLIT_GRAIN;
}

static void drive(fo_range_fn fn, const void *args, const fo_tensor *t,
                  size_t count)
{
    const size_t total = total_elements(t, count);
    if (total == 0) return;
#ifdef _OPENMP
    if (total >= parallel_threshold) {
        const int nt = fo_num_threads_get();
        if (nt > 1) {
#pragma omp parallel num_threads(nt)
            {
                const int id = omp_get_thread_num(), parts = omp_get_num_threads();
                run_range(fn, args, t, count, split_point(total, id, parts),
                          split_point(total, id + 1, parts));
            }
            return;
        }
    }
#endif
    run_range(fn, args, t, count, 0, total);
}

/* One entry point for every rule: the row of the active level's table. */
void fo_run(int rule, int dt, const fo_args *a, const fo_tensor *t,
            size_t count)
{
    drive(active->rule[rule][dt], a, t, count);
}

void fo_scale(int dt, double s, const fo_tensor *t, size_t c) { drive(active->scale[dt], &s, t, c); }
void fo_clamp(int dt, double s, const fo_tensor *t, size_t c) { drive(active->clamp[dt], &s, t, c); }
void fo_traffic(int dt, const fo_tensor *t, size_t c) { drive(active->traffic[dt], NULL, t, c); }

/* Blocks of FO_SUMSQ_BLOCK elements (a tensor's last block may be shorter)
 * are summed independently, in parallel when large, into a fixed-size window
 * of partial sums, which the calling thread then adds in block order. */
#define FO_SUMSQ_WINDOW 256

double fo_sumsq(int dt, const fo_tensor *t, size_t count)
{
    const fo_sumsq_fn fn = active->sumsq[dt];
    double partial[FO_SUMSQ_WINDOW];
    double total = 0.0;
    size_t k = 0, off = 0; /* next block: tensor k, offset off */
    const int nt = fo_num_threads_get();
    while (k < count) {
        /* gather up to a window of blocks */
        size_t tk[FO_SUMSQ_WINDOW], lo[FO_SUMSQ_WINDOW];
        int nb = 0;
        size_t elems = 0;
        while (k < count && nb < FO_SUMSQ_WINDOW) {
            if (off >= t[k].n) { k++; off = 0; continue; }
            tk[nb] = k;
            lo[nb] = off;
            off += FO_SUMSQ_BLOCK;
            elems += off < t[k].n ? FO_SUMSQ_BLOCK : t[k].n - lo[nb];
            nb++;
        }
        (void)nt;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && elems >= parallel_threshold)
#endif
        for (int b = 0; b < nb; b++) {
            const fo_tensor *tt = &t[tk[b]];
            const size_t hi = lo[b] + FO_SUMSQ_BLOCK < tt->n ? lo[b] + FO_SUMSQ_BLOCK : tt->n;
            partial[b] = fn(tt, lo[b], hi);
        }
        for (int b = 0; b < nb; b++) total += partial[b];
    }
    return total;
}

int fo_allfinite(int dt, const fo_tensor *t, size_t count)
{
    const fo_allfinite_fn fn = active->allfinite[dt];
    for (size_t k = 0; k < count; k++)
        if (t[k].n && !fn(&t[k], 0, t[k].n)) return 0;
    return 1;
}
