# Declarations of csrc/fastopt/kernels.h and scalars.h, one to one.

from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef extern from "fastopt/kernels.h" nogil:
    enum:
        FO_MAX_STATES
        FO_MAX_COEFFICIENTS
        FO_MAX_SCALARS
        FO_MAX_SCALAR_STATES
        FO_MAX_REDUCTIONS
        FO_NRULES
        FO_MAXIMIZE
        FO_L2
        FO_SUMSQ_BLOCK
    const double FO_NO_COUNT

    ctypedef struct fo_tensor:
        void *p
        const void *g
        void *s[FO_MAX_STATES]
        size_t n
        double r[FO_MAX_REDUCTIONS]
        void *acc
        void *ema
        uint64_t key
        size_t at
        void *scale[FO_MAX_STATES]
        size_t rows
        size_t cols
        double *scratch

    ctypedef struct fo_fuse:
        unsigned flags
        unsigned q8_nonneg
        double count
        double ema_weight

    enum:
        FO_FUSE_MEAN
        FO_FUSE_EMA
        FO_FUSE_EMA_COPY
        FO_FUSE_BF16
        FO_FUSE_Q8
        FO_Q8_BLOCK
        FO_STREAM_MIN

    uint64_t fo_lowp_tensor_key(uint64_t seed, uint64_t index, uint64_t step)
    uint32_t fo_lowp_slot_key(uint64_t key, int slot)
    void fo_q8_encode(const float *x, uint8_t *codes, float *scales, size_t n,
                      int nonneg, uint32_t key, size_t index0)
    void fo_q8_decode(const uint8_t *codes, const float *scales, float *out,
                      size_t n, int nonneg)
    void fo_bf16_decode(const void *inp, float *out, size_t n)
    void fo_bf16_encode(const float *x, void *out, size_t n, uint32_t key,
                        size_t index0, int low)

    ctypedef struct fo_args:
        double c[FO_MAX_COEFFICIENTS]
        double sc[FO_MAX_SCALAR_STATES]
        unsigned opts

    const char *fo_coefficients(int rule, const double *h, long long step,
                                fo_args *a)
    void fo_run(int rule, int dt, const fo_args *a, fo_tensor *t,
                size_t count)
    int fo_reductions(int rule)
    void fo_run_fused(int rule, int dt, const fo_args *a, fo_tensor *t,
                      size_t count, const fo_fuse *f)
    void fo_accumulate(int dt, const fo_tensor *t, size_t count)
    void fo_reduce_ranges(int rule, int dt, const fo_args *a, const fo_tensor *t,
                          const size_t *lo, const size_t *hi, size_t count,
                          double *out)
    void fo_run_given_sums(int rule, int dt, const fo_args *a, fo_tensor *t,
                           size_t count, const fo_fuse *f)

    void fo_axis_sumsq(int dt, const fo_tensor *t, double *out)
    double fo_sumsq(int dt, const fo_tensor *t, size_t count)
    size_t fo_sumsq_block_count(const fo_tensor *t, size_t count)
    void fo_sumsq_blocks(int dt, const fo_tensor *t, size_t count, double *out)
    int fo_allfinite(int dt, const fo_tensor *t, size_t count)
    void fo_scale(int dt, double scale, const fo_tensor *t, size_t count)
    void fo_clamp(int dt, double clip, const fo_tensor *t, size_t count)
    void fo_traffic(int dt, const fo_tensor *t, size_t count)

    const char *fo_level_name(int level)
    int fo_level_supported(int level)
    int fo_level_compiled(int level)
    int fo_level_get()
    const char *fo_cpu_features()
    int fo_level_set(int level)
    int fo_num_threads_get()
    void fo_num_threads_set(int n)
    int fo_thread_cap_swap(int n)
    size_t fo_parallel_threshold()
    void fo_parallel_threshold_set(size_t n)
    size_t fo_prefetch_threshold()
    void fo_prefetch_threshold_set(size_t n)
    int fo_openmp_enabled()
    const char *fo_arch_name()
    int fo_level_count()

cdef extern from "fastopt/scalars.h" nogil:
    double fo_bias_correction(double beta, long long step)

cdef extern from "fastopt/fo_math.h" nogil:
    double fo_powi(double x, long long n)
    double fo_pow(double x, double y)
    double fo_exp(double x)
    double fo_log(double x)
