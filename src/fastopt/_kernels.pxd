# Declarations of csrc/fastopt/kernels.h and scalars.h, one to one.

cdef extern from "fastopt/kernels.h" nogil:
    ctypedef struct fo_tensor:
        void *p
        const void *g
        void *s0
        void *s1
        void *s2
        size_t n

    ctypedef struct fo_sgd_args:
        double lr, momentum, one_minus_dampening, l2, sign
        int has_l2, has_momentum, first_step, nesterov

    ctypedef struct fo_momentum_args:
        double lr, beta, one_minus_beta, l2, sign
        int has_l2

    ctypedef struct fo_rmsprop_args:
        double lr, alpha, one_minus_alpha, eps, momentum, l2, sign
        int has_l2, centered, has_momentum

    ctypedef struct fo_adam_args:
        double step_size, inv_sqrt_bc2, beta1, one_minus_beta1, beta2
        double one_minus_beta2, eps, l2, decay, sign
        int has_l2, amsgrad

    ctypedef struct fo_adagrad_args:
        double clr, eps, l2, sign
        int has_l2

    void fo_sgd_f32(const fo_sgd_args *a, const fo_tensor *t, size_t count)
    void fo_sgd_f64(const fo_sgd_args *a, const fo_tensor *t, size_t count)
    void fo_momentum_f32(const fo_momentum_args *a, const fo_tensor *t, size_t count)
    void fo_momentum_f64(const fo_momentum_args *a, const fo_tensor *t, size_t count)
    void fo_rmsprop_f32(const fo_rmsprop_args *a, const fo_tensor *t, size_t count)
    void fo_rmsprop_f64(const fo_rmsprop_args *a, const fo_tensor *t, size_t count)
    void fo_adam_f32(const fo_adam_args *a, const fo_tensor *t, size_t count)
    void fo_adam_f64(const fo_adam_args *a, const fo_tensor *t, size_t count)
    void fo_adagrad_f32(const fo_adagrad_args *a, const fo_tensor *t, size_t count)
    void fo_adagrad_f64(const fo_adagrad_args *a, const fo_tensor *t, size_t count)

    int FO_SUMSQ_BLOCK
    double fo_sumsq_f32(const fo_tensor *t, size_t count)
    double fo_sumsq_f64(const fo_tensor *t, size_t count)
    int fo_allfinite_f32(const fo_tensor *t, size_t count)
    int fo_allfinite_f64(const fo_tensor *t, size_t count)
    void fo_scale_f32(double scale, const fo_tensor *t, size_t count)
    void fo_scale_f64(double scale, const fo_tensor *t, size_t count)
    void fo_clamp_f32(double clip, const fo_tensor *t, size_t count)
    void fo_clamp_f64(double clip, const fo_tensor *t, size_t count)

    void fo_traffic_f32(const fo_tensor *t, size_t count)
    void fo_traffic_f64(const fo_tensor *t, size_t count)

    const char *fo_level_name(int level)
    int fo_level_supported(int level)
    int fo_level_compiled(int level)
    int fo_level_get()
    const char *fo_cpu_features()
    int fo_level_set(int level)
    int fo_num_threads_get()
    void fo_num_threads_set(int n)
    size_t fo_parallel_threshold()
    void fo_parallel_threshold_set(size_t n)
    int fo_openmp_enabled()

cdef extern from "fastopt/scalars.h" nogil:
    double fo_bias_correction(double beta, long long step)
    double fo_adam_step_size(double lr, double beta1, long long step)
    double fo_adam_inv_sqrt_bc2(double beta2, long long step)
    double fo_decay_factor(double lr, double weight_decay)
    double fo_adagrad_clr(double lr, double lr_decay, long long step)
