/* The update rules for one instruction-set level.
 *
 * The build compiles this file once per level with that level's -m flags and
 * FO_ISA set to its name (baseline, avx2, avx512); each compilation exports
 * one table, fo_table_<FO_ISA>, with a row per rule of FO_RULE_LIST.  The
 * source is identical for every level, and no level may contract or
 * reassociate floating-point operations, so every level produces the same
 * bits. */
#include <float.h>
#include <math.h>

#include "fastopt/isa.h"

#ifndef FO_ISA
#error "compile with -DFO_ISA=<level>"
#endif

#define FO_CAT_(a, b) a##b
#define FO_CAT(a, b) FO_CAT_(a, b)

#define FO_LOWP(x) FO_CAT(FO_CAT(x, _lowp_), FO_ISA)
#include "fastopt/lowp.h"
#include "fastopt/q8.h"

#define FO_T float
#define FO_SQRT sqrtf
#define FO_NAME(x) FO_CAT(FO_CAT(x, _f32_), FO_ISA)
#include "fastopt/rules.h"
#undef FO_NAME
#undef FO_SQRT
#undef FO_T

#define FO_T double
#define FO_SQRT sqrt
#define FO_NAME(x) FO_CAT(FO_CAT(x, _f64_), FO_ISA)
#include "fastopt/rules.h"
#undef FO_NAME
#undef FO_SQRT
#undef FO_T

/* float32 parameters with bfloat16 states: the same rules, loading and
 * storing their states through lowp.h (only the rules' rows are used) */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#define FO_T float
#define FO_SQRT sqrtf
#define FO_BF16 1
#define FO_NAME(x) FO_CAT(FO_CAT(x, _bf16_), FO_ISA)
#include "fastopt/rules.h"
#undef FO_NAME
#undef FO_BF16
#undef FO_SQRT
#undef FO_T
#pragma GCC diagnostic pop

/* float32 parameters with 8-bit states: the same rules again, decoding
 * each state element as they read it (rules.h, FO_Q8), for the rules of
 * FO_Q8_LIST: those whose loops store every state they are given on every
 * step, which the requantization after the loop reads back.  Left out:
 * ADOPT (its first step stores v alone), Muon (its momentum loop indexes
 * the buffer directly) and the rules with per-tensor reductions (they
 * have no 8-bit states).  A rule left out is still right, only slower:
 * its states are decoded into scratch before its loop. */
#define FO_Q8_LIST(X) X(sgd, SGD) X(momentum, MOMENTUM) X(rmsprop, RMSPROP) \
    X(adam, ADAM) X(adagrad, ADAGRAD) X(lion, LION) X(adadelta, ADADELTA) \
    X(rprop, RPROP) X(adamax, ADAMAX) X(radam, RADAM) X(nadam, NADAM) \
    X(asgd, ASGD) X(ademamix, ADEMAMIX) X(sklearn_adam, SKLEARN_ADAM) \
    X(sklearn_sgd, SKLEARN_SGD) X(adamw_schedulefree, ADAMW_SCHEDULEFREE) \
    X(sgd_schedulefree, SGD_SCHEDULEFREE)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#define FO_T float
#define FO_SQRT sqrtf
#define FO_Q8 1
#define FO_NAME(x) FO_CAT(FO_CAT(x, _q8_), FO_ISA)
#include "fastopt/rules.h"
#undef FO_NAME
#undef FO_Q8
#undef FO_SQRT
#undef FO_T
#pragma GCC diagnostic pop

/* this level's rules that move the averages in their loop */
extern const fo_range_fn FO_CAT(fo_rules_ema_, FO_ISA)[FO_NRULES][2];

#define FO_PAIR(x) {FO_CAT(FO_CAT(x, _f32_), FO_ISA), FO_CAT(FO_CAT(x, _f64_), FO_ISA)}
#define FO_RULE_ROW(name, NAME) [FO_RULE_##NAME] = FO_PAIR(name##_range),
#define FO_BF16_ROW(name, NAME) [FO_RULE_##NAME] = FO_CAT(FO_CAT(name##_range, _bf16_), FO_ISA),
#define FO_Q8_ROW(name, NAME) [FO_RULE_##NAME] = FO_CAT(FO_CAT(name##_range, _q8_), FO_ISA),
#define FO_REDUCE_ROW(name, NAME) [FO_RULE_##NAME] = FO_PAIR(name##_reduce),
#define FO_AXES_ROW(name, NAME) [FO_RULE_##NAME] = FO_PAIR(name##_axes),

const fo_isa_table FO_CAT(fo_table_, FO_ISA) = {
    .rule = {FO_RULE_LIST(FO_RULE_ROW)},
    .rule_bf16 = {FO_RULE_LIST(FO_BF16_ROW)},
    .rule_q8 = {FO_Q8_LIST(FO_Q8_ROW)},
    .rule_ema = FO_CAT(fo_rules_ema_, FO_ISA),
    .reduce = {FO_REDUCE_LIST(FO_REDUCE_ROW)},
    .axes = {FO_AXES_LIST(FO_AXES_ROW)},
    .rowsq = FO_PAIR(rowsq_range),
    .colsq = FO_PAIR(colsq_range),
    .scale = FO_PAIR(scale_range),
    .clamp = FO_PAIR(clamp_range),
    .traffic = FO_PAIR(traffic_range),
    .accumulate = FO_PAIR(accumulate_range),
    .mean = FO_PAIR(mean_chunk),
    .ema = FO_PAIR(ema_chunk),
    .bf16_decode = FO_LOWP(bf16_decode),
    .bf16_encode = FO_LOWP(bf16_encode),
    .q8_encode = FO_LOWP(q8_encode),
    .q8_decode = FO_LOWP(q8_decode),
    .sumsq = FO_PAIR(sumsq_range),
    .allfinite = FO_PAIR(allfinite_range),
};
