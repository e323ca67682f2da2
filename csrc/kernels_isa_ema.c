/* The update rules for one instruction-set level, in the form that also
 * moves each parameter's average (ema_decay) as it stores the parameter
 * element (rules.h with FO_EMA; kernels.h, fo_run_fused).  Compiled once
 * per level with that level's flags, as kernels_isa.c is, and apart from it
 * so that the two compile side by side. */
#include <float.h>
#include <math.h>

#include "fastopt/isa.h"

#ifndef FO_ISA
#error "compile with -DFO_ISA=<level>"
#endif

#define FO_CAT_(a, b) a##b
#define FO_CAT(a, b) FO_CAT_(a, b)

/* only the rules' rows are used */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#define FO_EMA 1
#define FO_T float
#define FO_SQRT sqrtf
#define FO_NAME(x) FO_CAT(FO_CAT(x, _emaf32_), FO_ISA)
#include "fastopt/rules.h"
#undef FO_NAME
#undef FO_SQRT
#undef FO_T
#define FO_T double
#define FO_SQRT sqrt
#define FO_NAME(x) FO_CAT(FO_CAT(x, _emaf64_), FO_ISA)
#include "fastopt/rules.h"
#undef FO_NAME
#undef FO_SQRT
#undef FO_T
#undef FO_EMA
#pragma GCC diagnostic pop

#define FO_EMA_ROW(name, NAME) [FO_RULE_##NAME] = {FO_CAT(FO_CAT(name##_range, _emaf32_), FO_ISA), \
                                                   FO_CAT(FO_CAT(name##_range, _emaf64_), FO_ISA)},

const fo_range_fn FO_CAT(fo_rules_ema_, FO_ISA)[FO_NRULES][2] = {FO_RULE_LIST(FO_EMA_ROW)};
