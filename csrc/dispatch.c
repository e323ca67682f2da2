/* Entry points: choose the instruction-set level, split work across threads.
 *
 * The rules themselves live in rules.h; this file only decides which compiled
 * copy runs and which elements each thread takes.  Every rule is element-wise,
 * so any split of the elements gives the same bits; the one reduction
 * (fo_sumsq_*) combines fixed blocks in index order so that it too is
 * independent of the split. */
#include <stdlib.h>
#include <math.h>
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
/* steps of at least this many bytes prefetch in their loops over bfloat16
 * and 8-bit states (prefetch_step) */
static size_t prefetch_min = FO_STREAM_MIN;
/* A cap on the threads of the steps the calling thread makes (0: none),
 * which fastopt.limit_threads sets around a block of code. */
static _Thread_local int thread_cap = 0;

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
 * (OMP_NUM_THREADS, threadpoolctl's threadpool_limits) and by the calling
 * thread's cap. */
int fo_num_threads_get(void)
{
#ifdef _OPENMP
    const int omp = omp_get_max_threads();
    const int n = (num_threads > 0 && num_threads < omp) ? num_threads : omp;
    return (thread_cap > 0 && thread_cap < n) ? thread_cap : n;
#else
    return 1;
#endif
}

int fo_thread_cap_swap(int n)
{
    const int old = thread_cap;
    thread_cap = n > 0 ? n : 0;
    return old;
}

size_t fo_parallel_threshold(void) { return parallel_threshold; }
void fo_parallel_threshold_set(size_t n) { parallel_threshold = n; }
size_t fo_prefetch_threshold(void) { return prefetch_min; }
void fo_prefetch_threshold_set(size_t n) { prefetch_min = n; }

static size_t total_elements(const fo_tensor *t, size_t count)
{
    size_t total = 0;
    for (size_t k = 0; k < count; k++) total += t[k].n;
    return total;
}

/* A tensor-relative split point x of a tensor of n elements, moved down to
 * a multiple of `block` (none when block is 0); n stays n */
static size_t block_floor(size_t x, size_t n, size_t block)
{
    return block == 0 || x >= n ? x : x - x % block;
}

/* Apply fn to the global element range [lo, hi) of the concatenated
 * tensors.  With block > 0 each tensor's part starts and ends on a multiple
 * of block from the tensor's start (or its end): every thread moves the
 * same tensor-relative points the same way, so the parts still cover each
 * tensor exactly once. */
static void run_range_blocks(fo_range_fn fn, const void *args,
                             const fo_tensor *t, size_t count, size_t lo,
                             size_t hi, size_t block)
{
    size_t base = 0;
    for (size_t k = 0; k < count && base < hi; k++) {
        const size_t n = t[k].n;
        const size_t a = block_floor(lo > base ? lo - base : 0, n, block);
        const size_t b = block_floor(hi < base + n ? hi - base : n, n, block);
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

/* The largest piece of a blockwise (8-bit) step handed to a thread as it
 * comes free: about 76 per 10^7 elements.  Out of cache a thread's loop
 * prefetches FO_PF_AHEAD elements ahead (rules.h), so the first 2,048 of
 * each piece it takes are not in flight when it starts them (the other
 * thread's prefetches ran into them); pieces of 2^15 left 6 % of the
 * elements that way, and AdamW's two-thread step took 1.09 of a C loop's
 * time with them against 1.05 with pieces of 2^17 (medians of 13
 * alternating runs; performance notes) */
#define FO_BLOCK_PIECE ((size_t)1 << 17)

static void drive_blocks(fo_range_fn fn, const void *args,
                         const fo_tensor *t, size_t count, size_t block)
{
    const size_t total = total_elements(t, count);
    if (total == 0) return;
#ifdef _OPENMP
    if (total >= parallel_threshold) {
        const int nt = fo_num_threads_get();
        if (nt > 1 && block > 0) {
            /* Blockwise states are compute-bound (the codec): equal halves
             * finish when the slower core does, and on a core shared with
             * other work that is the one-thread time.  Pieces taken
             * dynamically balance the work; each block is still coded by
             * one thread, so the bits do not depend on the split. */
            size_t piece = total / ((size_t)nt * 4);   /* at least 4 per thread */
            piece = piece < FO_BLOCK_PIECE ? piece : FO_BLOCK_PIECE;
            piece = (piece + block - 1) / block * block;
            piece = piece > block ? piece : block;
            const long long pieces = (long long)((total + piece - 1) / piece);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
            for (long long k = 0; k < pieces; k++) {
                const size_t lo = (size_t)k * piece;
                const size_t hi = total - lo < piece ? total : lo + piece;
                run_range_blocks(fn, args, t, count, lo, hi, block);
            }
            return;
        }
        if (nt > 1) {
#pragma omp parallel num_threads(nt)
            {
                const int id = omp_get_thread_num(), parts = omp_get_num_threads();
                run_range_blocks(fn, args, t, count, split_point(total, id, parts),
                                 split_point(total, id + 1, parts), block);
            }
            return;
        }
    }
#endif
    run_range_blocks(fn, args, t, count, 0, total, block);
}

static void drive(fo_range_fn fn, const void *args, const fo_tensor *t,
                  size_t count)
{
    drive_blocks(fn, args, t, count, 0);
}

static void reduce_tensors(fo_reduce_fn fn, const void *args, fo_tensor *t,
                           size_t count, int nred, int dt, const fo_fuse *f);

/* One entry point for every rule: the row of the active level's table; a
 * two-pass rule first makes its per-tensor coefficients. */
void fo_run(int rule, int dt, const fo_args *a, fo_tensor *t, size_t count)
{
    fo_run_fused(rule, dt, a, t, count, NULL);
}

void fo_accumulate(int dt, const fo_tensor *t, size_t c) { drive(active->accumulate[dt], NULL, t, c); }

static const size_t itemsize[2] = {sizeof(float), sizeof(double)};

/* The bytes of a state element under the fused step's flags: 1 for 8-bit
 * codes, 2 for bfloat16, else the parameter's dtype dt */
static size_t state_itemsize(unsigned flags, int dt)
{
    return (flags & FO_FUSE_Q8) ? 1 : (flags & FO_FUSE_BF16) ? 2 : itemsize[dt];
}

#define FO_FUSE_CHUNK FO_SUMSQ_BLOCK
/* bfloat16 states with nothing else to do chunk by chunk (no mean
 * gradient, no average after the loop) take longer chunks: out of cache
 * the step then comes closer to its traffic floor (AdamW, 5 * 10^7
 * elements: 81-84 % of it against 75-79 % in chunks of FO_FUSE_CHUNK), in
 * cache it is the same.  The loops' 32-bit index needs chunks below 2^32. */
#define FO_BF16_CHUNK ((size_t)1 << 16)

/* The part [lo, lo + n) of tensor t, as a tensor of its own; its states
 * have elements of state_size bytes (the parameter's, or 2 for bfloat16) */
static fo_tensor part_of(const fo_tensor *t, size_t lo, size_t n, int dt,
                         size_t state_size)
{
    fo_tensor s = *t;
    const size_t off = lo * itemsize[dt], soff = lo * state_size;
#define FO_SHIFT(x, o) ((x) == NULL ? NULL : (void *)((char *)(x) + (o)))
    s.p = FO_SHIFT(t->p, off);
    s.g = FO_SHIFT((void *)t->g, off);
    for (int k = 0; k < FO_MAX_STATES; k++) s.s[k] = FO_SHIFT(t->s[k], soff);
    s.acc = FO_SHIFT(t->acc, off);
    s.ema = FO_SHIFT(t->ema, off);
#undef FO_SHIFT
    s.n = n;
    return s;
}

/* SplitMix64's finalizer (Steele, Lea & Flood 2014) of z + the golden gamma */
static uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t fo_lowp_tensor_key(uint64_t seed, uint64_t index, uint64_t step)
{
    return mix64(mix64(mix64(seed) + index) + step);
}

uint32_t fo_lowp_slot_key(uint64_t key, int slot)
{
    return (uint32_t)(mix64(key + (uint64_t)slot) >> 32);
}

void fo_bf16_decode(const void *in, float *out, size_t n)
{
    active->bf16_decode(in, out, n);
}

void fo_bf16_encode(const float *x, void *out, size_t n, uint32_t key,
                    size_t index0, int low)
{
    active->bf16_encode(x, out, n, key, index0, low);
}

/* 8-bit blockwise states: the active level's codec (q8.h) */
void fo_q8_encode(const float *x, uint8_t *codes, float *scales, size_t n,
                  int nonneg, uint32_t key, size_t index0)
{
    active->q8_encode(x, codes, scales, n, nonneg, key, index0);
}

void fo_q8_decode(const uint8_t *codes, const float *scales, float *out,
                  size_t n, int nonneg)
{
    active->q8_decode(codes, scales, out, n, nonneg);
}

/* Scratch for one chunk's gradient.  This file is compiled at the
 * baseline level, whose stack is only 16-byte aligned; the rules' loops
 * read and write the scratch (this and fused_range's) in vectors of up to
 * 64 bytes, which must not straddle cache lines */
typedef union {
    _Alignas(64) float f[FO_FUSE_CHUNK];
    double d[FO_FUSE_CHUNK];
} fo_chunk;

typedef struct {
    fo_range_fn fn;
    int dt;
    const fo_args *a;
    const fo_fuse *f;
    int ema_in_loop;   /* fn moves the averages itself */
    int q8_in_loop;    /* fn decodes 8-bit states itself (rules.h, FO_Q8) */
    int prefetch;      /* fn's loop prefetches (rules.h, FO_FOR) */
} fo_fused_call;

/* The plan of a loop over chunk s (elements [at, at + s.n) of t) of
 * bfloat16 or 8-bit states (rules.h, FO_FOR): the parameter, the gradient
 * unless it is the chunk's mean (scratch), and each state (its codes for 8
 * bits), as far as t's end.  These loops never move an average (rule_loop
 * gives them none in the loop), so no average is streamed beside them. */
static void prefetch_plan(fo_prefetch *pf, const fo_tensor *t,
                          const fo_tensor *s, size_t at, unsigned flags)
{
    int n = 2;
    pf->base[0] = (const char *)s->p;
    pf->base[1] = (flags & FO_FUSE_MEAN) ? NULL : (const char *)s->g;
    for (int k = 0; k < FO_MAX_STATES; k++)
        if (s->s[k] != NULL) pf->base[n++] = (const char *)s->s[k];
    pf->count = n;
    pf->limit = t->n - at;
}

/* Whether the loops over bfloat16 or 8-bit states of a step on these
 * tensors prefetch: when the step's arrays cannot stay in cache (at least
 * prefetch_min bytes, by default FO_STREAM_MIN).  In cache the prefetches
 * only cost (AdamW with bfloat16 states at 10^6 elements, 20 MB: slower
 * with them) */
static int prefetch_step(const fo_tensor *t, size_t count, unsigned flags,
                         int dt)
{
    size_t bytes = 0;
    const size_t state_size = state_itemsize(flags, dt);
    for (size_t k = 0; k < count; k++) {
        size_t per = 2 * itemsize[dt];
        for (int j = 0; j < FO_MAX_STATES; j++)
            if (t[k].s[j] != NULL) per += state_size;
        bytes += t[k].n * per;
        if (bytes >= prefetch_min) return 1;
    }
    return 0;
}

/* Each rule's never negative states, as the rule table gives them
 * (fo_table.h): the maps its loop that decodes 8-bit states was compiled
 * for (rules.h, FO_Q8) */
#define FO_Q8_SIGNS_ROW(name, NAME) [FO_RULE_##NAME] = FO_##NAME##_Q8_NONNEG,
static const unsigned q8_signs[FO_NRULES] = {FO_RULE_LIST(FO_Q8_SIGNS_ROW)};
#undef FO_Q8_SIGNS_ROW

/* The rule's loop that decodes 8-bit states as it reads them (rules.h,
 * FO_Q8), when the states are 8-bit, the rule has one and the states'
 * maps are the ones it was compiled for; else NULL (the states are then
 * decoded into scratch before the rule's float32 loop) */
static fo_range_fn q8_loop(int rule, const fo_fuse *f)
{
    if (f == NULL || !(f->flags & FO_FUSE_Q8) || f->q8_nonneg != q8_signs[rule])
        return NULL;
    return active->rule_q8[rule];
}

/* The loop to run for the rule under f, and its arguments.  For an
 * average in lerp's first form (weight < 0.5, states in the parameters'
 * dtype) that is the loop that moves it as it stores each parameter
 * element (rules.h, FO_EMA), given the weight in *own, a copy of a;
 * returns 1 then. */
static int rule_loop(int rule, int dt, const fo_args *a, const fo_fuse *f,
                     fo_range_fn *fn, const fo_args **args, fo_args *own)
{
    const unsigned flags = f == NULL ? 0 : f->flags;
    *args = a;
    if (flags & FO_FUSE_BF16) {
        *fn = active->rule_bf16[rule];
        return 0;
    }
    const fo_range_fn q8 = q8_loop(rule, f);
    if (q8 != NULL) {
        /* an average then moves over each chunk after the loop, with the
         * arithmetic of the loops that move it */
        *fn = q8;
        return 0;
    }
    if (!(flags & FO_FUSE_EMA) || !(f->ema_weight < 0.5)) {
        *fn = active->rule[rule][dt];
        return 0;
    }
    *own = *a;
    own->ema_w = f->ema_weight;
    *fn = active->rule_ema[rule][dt];
    *args = own;
    return 1;
}

/* Elements [lo, hi) of one tensor, chunk by chunk: the mean gradient, the
 * states decoded (8-bit), the rule's loop, the states requantized, the
 * average (unless the loop moved it) */
static void fused_range(const void *args, const fo_tensor *t, size_t lo,
                        size_t hi)
{
    const fo_fused_call *c = (const fo_fused_call *)args;
    const unsigned flags = c->f->flags;
    const int q8 = (flags & FO_FUSE_Q8) != 0;
    const size_t state_size = state_itemsize(flags, c->dt);
    const size_t chunk = q8 ? FO_Q8_CHUNK
        : (flags & FO_FUSE_BF16) && !(flags & (FO_FUSE_MEAN | FO_FUSE_EMA | FO_FUSE_EMA_COPY))
        ? FO_BF16_CHUNK : FO_FUSE_CHUNK;
    fo_chunk tmp;
    _Alignas(64) float scratch[FO_MAX_STATES][FO_Q8_CHUNK];
    for (size_t at = lo; at < hi; at += chunk) {
        const size_t n = hi - at < chunk ? hi - at : chunk;
        fo_tensor s = part_of(t, at, n, c->dt, state_size);
        s.at = t->at + at;
        fo_prefetch pf;   /* s.pf is NULL: run_update cleared t's */
        if (c->prefetch) {
            prefetch_plan(&pf, t, &s, at, flags);
            s.pf = &pf;
        }
        if (flags & FO_FUSE_MEAN) {
            active->mean[c->dt](&s, n, &tmp, c->f->count, 1);
            s.g = &tmp;
        }
        if (q8 && c->q8_in_loop) {
            /* block by block, the loop decoding each state as it reads it
             * and storing the new values to scratch (rules.h, FO_Q8); at
             * is a multiple of FO_Q8_BLOCK: lo is, and so is the chunk */
            fo_tensor w = s;
            for (int k = 0; k < FO_MAX_STATES; k++) {
                /* a slot the rule does not use is declared all the same */
                w.q8_codes[k] = NULL;
                w.q8_scale[k] = 0.0f;
                if (s.s[k] == NULL) continue;
                w.q8_codes[k] = (const uint8_t *)s.s[k];
                w.s[k] = scratch[k];
            }
            for (size_t b = 0; b < n; b += FO_Q8_BLOCK) {
                for (int k = 0; k < FO_MAX_STATES; k++)
                    if (s.s[k] != NULL)
                        w.q8_scale[k] = ((const float *)t->scale[k])[(at + b) / FO_Q8_BLOCK];
                c->fn(c->a, &w, b, n - b < FO_Q8_BLOCK ? n : b + FO_Q8_BLOCK);
            }
        } else if (q8) {
            fo_tensor w = s;
            for (int k = 0; k < FO_MAX_STATES; k++) {
                if (s.s[k] == NULL) continue;
                active->q8_decode((const uint8_t *)s.s[k],
                                  (const float *)t->scale[k] + at / FO_Q8_BLOCK,
                                  scratch[k], n, (c->f->q8_nonneg >> k) & 1u);
                w.s[k] = scratch[k];
            }
            c->fn(c->a, &w, 0, n);
        }
        if (q8) {
            for (int k = 0; k < FO_MAX_STATES; k++) {
                if (s.s[k] == NULL) continue;
                active->q8_encode(scratch[k], (uint8_t *)s.s[k],
                                  (float *)t->scale[k] + at / FO_Q8_BLOCK, n,
                                  (c->f->q8_nonneg >> k) & 1u,
                                  fo_lowp_slot_key(t->key, k), s.at);
            }
        } else {
            c->fn(c->a, &s, 0, n);
        }
        if ((flags & (FO_FUSE_EMA | FO_FUSE_EMA_COPY)) && !c->ema_in_loop)
            active->ema[c->dt](&s, n, c->f->ema_weight,
                               (flags & FO_FUSE_EMA_COPY) != 0);
    }
}

/* The rule's update loop over the tensors with what f adds around it: the
 * loop alone when nothing is left to add chunk by chunk (no mean gradient,
 * and the average, if any, moved in the loop), else chunk by chunk. */
static void run_update(int rule, int dt, const fo_args *a, fo_tensor *t,
                       size_t count, const fo_fuse *f)
{
    const unsigned flags = f == NULL ? 0 : f->flags;
    fo_range_fn fn;
    const fo_args *la;
    fo_args own;
    const int in_loop = rule_loop(rule, dt, a, f, &fn, &la, &own);
    /* only the tensors fused_range hands a loop carry a prefetch plan;
     * callers need not set the field, so it is cleared here */
    for (size_t k = 0; k < count; k++) t[k].pf = NULL;
    /* 8-bit states always go through fused_range (decoded around the
     * loop), in pieces of whole blocks; bfloat16 states too, in chunks
     * (FO_BF16_CHUNK or FO_FUSE_CHUNK elements), which their loops' 32-bit
     * index needs (rules.h, FO_FOR) */
    if ((flags & (FO_FUSE_EMA | FO_FUSE_EMA_COPY)) && !in_loop
        && active->axes[rule][dt] != NULL) {
        /* a factored rule's loop finds an element's row and column states
         * from its place in the tensor, so it runs on whole tensors, never
         * on fused_range's chunks; the average follows, over each tensor
         * (the first average, a copy, or a weight >= 0.5; smaller weights
         * move it in the loop) */
        drive(fn, la, t, count);
        for (size_t k = 0; k < count; k++)
            active->ema[dt](&t[k], t[k].n, f->ema_weight,
                            (flags & FO_FUSE_EMA_COPY) != 0);
    } else if ((flags & (FO_FUSE_MEAN | FO_FUSE_Q8 | FO_FUSE_BF16)) == 0
        && (in_loop || flags == 0)) {
        drive(fn, la, t, count);
    } else {
        const int q8_in_loop = q8_loop(rule, f) != NULL;
        /* the loops over bfloat16 states, and over 8-bit ones that decode
         * them (the others run on scratch) */
        const int pf = ((flags & FO_FUSE_BF16) || q8_in_loop)
            && prefetch_step(t, count, flags, dt);
        const fo_fused_call c = {fn, dt, la, f, in_loop, q8_in_loop, pf};
        drive_blocks(fused_range, &c, t, count,
                     (flags & FO_FUSE_Q8) ? FO_Q8_BLOCK : 0);
    }
}

/* Columns per piece of the column sums' work: a cache line's worth of
 * float64 columns, so threads split a matrix's columns without sharing
 * lines of the sums. */
#define FO_COL_GRAIN 64

/* fo_axis_sumsq; with mean_count > 0, of the mean gradient
 * (acc + g) / mean_count (acc / mean_count where g is NULL), which the row
 * pass makes into acc, row by row, just before it sums the row, and the
 * column pass then reads there */
static void axis_sumsq(int dt, const fo_tensor *t, double *out,
                       double mean_count)
{
    const size_t R = t->rows, C = t->cols;
    if (R == 0 || C == 0 || t->n == 0) return;
    const void *src = mean_count > 0 ? t->acc : t->g;
    const size_t B = t->n / (R * C), pieces = (C + FO_COL_GRAIN - 1) / FO_COL_GRAIN;
    const fo_rowsq_fn rowsq = active->rowsq[dt];
    const fo_colsq_fn colsq = active->colsq[dt];
    const int nt = fo_num_threads_get();
    const long long nrows = (long long)(B * R), ncols = (long long)(B * pieces);
    (void)nt;
    /* every sum is made by one thread in a fixed order: any split of the
     * rows and columns between threads gives the same bits */
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1 && t->n >= parallel_threshold)
#endif
    {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (long long r = 0; r < nrows; r++) {
            if (mean_count > 0) {
                const fo_tensor row = part_of(t, (size_t)r * C, C, dt, itemsize[dt]);
                active->mean[dt](&row, C, NULL, mean_count, 0);
            }
            rowsq(src, C, (size_t)r, (size_t)r + 1, out);
        }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (long long k = 0; k < ncols; k++) {
            const size_t b = (size_t)k / pieces, lo = ((size_t)k % pieces) * FO_COL_GRAIN;
            const size_t hi = lo + FO_COL_GRAIN < C ? lo + FO_COL_GRAIN : C;
            colsq((const char *)src + b * R * C * itemsize[dt], R, C, lo, hi,
                  out + B * R + b * C);
        }
    }
}

void fo_axis_sumsq(int dt, const fo_tensor *t, double *out)
{
    axis_sumsq(dt, t, out, 0.0);
}

/* acc = (acc + g) / count over tensor elements [lo, hi) (args: fo_in_place_mean) */
typedef struct {
    int dt;
    double count;
} fo_in_place_mean;

static void mean_in_place_range(const void *args, const fo_tensor *t,
                                size_t lo, size_t hi)
{
    const fo_in_place_mean *m = (const fo_in_place_mean *)args;
    const fo_tensor s = part_of(t, lo, hi - lo, m->dt, itemsize[m->dt]);
    active->mean[m->dt](&s, hi - lo, NULL, m->count, 0);
}

void fo_run_fused(int rule, int dt, const fo_args *a, fo_tensor *t,
                  size_t count, const fo_fuse *f)
{
    const fo_reduce_fn reduce = active->reduce[rule][dt];
    const fo_axes_fn axes = active->axes[rule][dt];
    fo_fuse without_mean;
    if (axes != NULL) {
        /* a factored rule: the sums along the last two axes, then its
         * states from them, before the reduction pass.  With a mean
         * gradient its first pass makes it into acc (a matrix's row pass;
         * a vector's own pass), and the later passes read it from there:
         * the rule's passes read the gradient more than once, so it is
         * made once rather than chunk by chunk in each */
        const int mean = f != NULL && (f->flags & FO_FUSE_MEAN);
        for (size_t k = 0; k < count; k++) {
            if (t[k].n != 0 && t[k].cols != 0) {
                axis_sumsq(dt, &t[k], t[k].scratch, mean ? f->count : 0.0);
                axes(a, &t[k]);
            } else if (mean && t[k].n != 0) {
                const fo_in_place_mean m = {dt, f->count};
                drive(mean_in_place_range, &m, &t[k], 1);
            }
            if (mean) t[k].g = t[k].acc;
        }
        if (mean) {
            without_mean = *f;
            without_mean.flags &= ~FO_FUSE_MEAN;
            f = &without_mean;
        }
    }
    if (reduce != NULL) {
        reduce_tensors(reduce, a, t, count, fo_reductions(rule), dt, f);
        for (size_t k = 0; k < count; k++) fo_tensor_coefficients(rule, a, &t[k]);
    }
    run_update(rule, dt, a, t, count, f);
}

/* The first pass of a two-pass rule over the ranges [lo[b], hi[b]) of one
 * tensor (in parallel when large), range b's sums into out[b * nred ...]:
 * given the ranges of fo_run's blocks, the same bits as its block sums, so
 * a caller holding part of a tensor (a shard of it) can make its share of
 * the tensor's sums.  Writes the states the pass writes. */
void fo_reduce_ranges(int rule, int dt, const fo_args *a, const fo_tensor *t,
                      const size_t *lo, const size_t *hi, size_t count,
                      double *out)
{
    const fo_reduce_fn fn = active->reduce[rule][dt];
    const int nred = fo_reductions(rule);
    const int nt = fo_num_threads_get();
    size_t elems = 0;
    if (fn == NULL) return;
    for (size_t b = 0; b < count; b++) elems += hi[b] - lo[b];
    (void)nt;
    (void)elems;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && elems >= parallel_threshold)
#endif
    for (long long b = 0; b < (long long)count; b++)
        fn(a, t, lo[b], hi[b], out + (size_t)b * (size_t)nred);
}

/* The update pass of a two-pass rule over tensors whose sums the caller
 * put in t[k].r (put together from fo_reduce_ranges, across processes):
 * the per-tensor coefficients, then the rule's loop, with what f adds
 * around it (the averages; not FO_FUSE_MEAN, which the first pass makes). */
void fo_run_given_sums(int rule, int dt, const fo_args *a, fo_tensor *t,
                       size_t count, const fo_fuse *f)
{
    for (size_t k = 0; k < count; k++) fo_tensor_coefficients(rule, a, &t[k]);
    run_update(rule, dt, a, t, count, f);
}

void fo_scale(int dt, double s, const fo_tensor *t, size_t c) { drive(active->scale[dt], &s, t, c); }
void fo_clamp(int dt, double s, const fo_tensor *t, size_t c) { drive(active->clamp[dt], &s, t, c); }
void fo_traffic(int dt, const fo_tensor *t, size_t c) { drive(active->traffic[dt], NULL, t, c); }

/* Blocks of FO_SUMSQ_BLOCK elements (a tensor's last block may be shorter)
 * are summed independently, in parallel when large, into a fixed-size window
 * of partial sums, which the calling thread then adds in block order. */
#define FO_SUMSQ_WINDOW 256

/* The next window of up to FO_SUMSQ_WINDOW blocks, from block (tensor *k,
 * offset *off) on: each block's tensor and start, their element count in
 * *elems; returns how many. */
static int next_window(const fo_tensor *t, size_t count, size_t *k, size_t *off,
                       size_t *tk, size_t *lo, size_t *elems)
{
    int nb = 0;
    *elems = 0;
    while (*k < count && nb < FO_SUMSQ_WINDOW) {
        if (*off >= t[*k].n) { (*k)++; *off = 0; continue; }
        tk[nb] = *k;
        lo[nb] = *off;
        *off += FO_SUMSQ_BLOCK;
        *elems += *off < t[*k].n ? FO_SUMSQ_BLOCK : t[*k].n - lo[nb];
        nb++;
    }
    return nb;
}

double fo_sumsq(int dt, const fo_tensor *t, size_t count)
{
    const fo_sumsq_fn fn = active->sumsq[dt];
    double partial[FO_SUMSQ_WINDOW];
    double total = 0.0;
    size_t k = 0, off = 0; /* next block: tensor k, offset off */
    const int nt = fo_num_threads_get();
    while (k < count) {
        size_t tk[FO_SUMSQ_WINDOW], lo[FO_SUMSQ_WINDOW], elems;
        const int nb = next_window(t, count, &k, &off, tk, lo, &elems);
        (void)nt;
        (void)elems;
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

/* The per-tensor sums of a two-pass rule, into t[k].r: each tensor cut into
 * blocks of FO_SUMSQ_BLOCK elements (the last may be shorter), the blocks
 * of a window summed independently (in parallel when large), then added to
 * their tensor's sums in block order by the calling thread. */
static void reduce_tensors(fo_reduce_fn fn, const void *args, fo_tensor *t,
                           size_t count, int nred, int dt, const fo_fuse *f)
{
    const int mean = f != NULL && (f->flags & FO_FUSE_MEAN);
    double partial[FO_SUMSQ_WINDOW][FO_MAX_REDUCTIONS];
    size_t tk[FO_SUMSQ_WINDOW], lo[FO_SUMSQ_WINDOW];
    size_t k = 0, off = 0; /* next block: tensor k, offset off */
    const int nt = fo_num_threads_get();
    for (size_t j = 0; j < count; j++)
        for (int r = 0; r < nred; r++) t[j].r[r] = 0.0;
    while (k < count) {
        size_t elems;
        const int nb = next_window(t, count, &k, &off, tk, lo, &elems);
        (void)nt;
        (void)elems;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && elems >= parallel_threshold)
#endif
        for (int b = 0; b < nb; b++) {
            const fo_tensor *tt = &t[tk[b]];
            const size_t hi = lo[b] + FO_SUMSQ_BLOCK < tt->n ? lo[b] + FO_SUMSQ_BLOCK : tt->n;
            if (mean) {
                /* the block's mean gradient; acc is cleared by the update pass */
                fo_chunk tmp;
                fo_tensor s = part_of(tt, lo[b], hi - lo[b], dt, itemsize[dt]);
                active->mean[dt](&s, hi - lo[b], &tmp, f->count, 0);
                s.g = &tmp;
                fn(args, &s, 0, hi - lo[b], partial[b]);
            } else {
                fn(args, tt, lo[b], hi, partial[b]);
            }
        }
        for (int b = 0; b < nb; b++)
            for (int r = 0; r < nred; r++) t[tk[b]].r[r] += partial[b][r];
    }
}

size_t fo_sumsq_block_count(const fo_tensor *t, size_t count)
{
    size_t n = 0;
    for (size_t k = 0; k < count; k++)
        n += (t[k].n + FO_SUMSQ_BLOCK - 1) / FO_SUMSQ_BLOCK;
    return n;
}

/* Block b of the traversal above, with the same function: out[b] equals
 * partial[b] of fo_sumsq bit for bit. */
void fo_sumsq_blocks(int dt, const fo_tensor *t, size_t count, double *out)
{
    const fo_sumsq_fn fn = active->sumsq[dt];
    const int nt = fo_num_threads_get();
    size_t b = 0, elems = 0;
    for (size_t k = 0; k < count; k++) elems += t[k].n;
    (void)nt;
    for (size_t k = 0; k < count; k++) {
        const long long nb = (long long)((t[k].n + FO_SUMSQ_BLOCK - 1) / FO_SUMSQ_BLOCK);
        const fo_tensor *tt = &t[k];
        double *o = out + b;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1 && elems >= parallel_threshold)
#endif
        for (long long j = 0; j < nb; j++) {
            const size_t lo = (size_t)j * FO_SUMSQ_BLOCK;
            const size_t hi = lo + FO_SUMSQ_BLOCK < tt->n ? lo + FO_SUMSQ_BLOCK : tt->n;
            o[j] = fn(tt, lo, hi);
        }
        b += (size_t)nb;
    }
}

int fo_allfinite(int dt, const fo_tensor *t, size_t count)
{
    const fo_allfinite_fn fn = active->allfinite[dt];
    for (size_t k = 0; k < count; k++)
        if (t[k].n && !fn(&t[k], 0, t[k].n)) return 0;
    return 1;
}
