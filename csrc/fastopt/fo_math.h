/* Powers, exp and log for the per-step scalars, from basic IEEE 754
 * operations only: +, -, *, / and sqrt of doubles in round-to-nearest.
 *
 * Why not the C library: pow(), exp() and log() are not correctly rounded
 * and each C library (and glibc itself, by CPU: it picks another pow on x86
 * without FMA) rounds some arguments differently, so beta^t, and with it a
 * whole training trajectory, would depend on the machine.  IEEE 754 fixes
 * the result of every basic operation to the bit, so a fixed sequence of
 * them gives the same double on every conforming machine.  What that needs:
 *   - doubles evaluated as doubles (FLT_EVAL_METHOD 0; checked below, which
 *     rules out x87 arithmetic);
 *   - no contraction of a*b+c into a fused multiply-add: the error-free
 *     products below rely on each product being rounded on its own
 *     (setup.py compiles everything with -ffp-contract=off);
 *   - round-to-nearest, which no part of fastopt changes, and gradual
 *     underflow (no flush-to-zero, as neither NumPy nor fastopt enables).
 *
 * Accuracy: values are carried as unevaluated sums hi + lo of two doubles
 * ("double-double", about 106 bits), with Dekker's error-free product
 * (Veltkamp splitting, no FMA needed) and Knuth's error-free sum, and are
 * rounded to double once, at the end.  The result is therefore the
 * correctly rounded one except when the exact value lies within about
 * 2^-90 relative of a rounding boundary; tests/test_fo_math.py measures the
 * error against exact rationals and against the C library.
 *
 * The methods are the textbook ones: exponentiation by squaring; for log,
 * x = 2^k m with m in [sqrt(1/2), sqrt(2)] and log m = 2 atanh(s),
 * s = (m - 1) / (m + 1), as its odd series; for exp, a = k log 2 + r with
 * |r| <= log(2)/2 and exp r as its Taylor series (see e.g. J.-M. Muller,
 * "Elementary Functions", and T. J. Dekker, "A floating-point technique for
 * extending the available precision", Numer. Math. 18, 1971). */
#ifndef FASTOPT_FO_MATH_H
#define FASTOPT_FO_MATH_H

#include <float.h>
#include <math.h>     /* INFINITY and NAN only: no function of libm is called */
#include <stdint.h>
#include <string.h>

#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "fastopt needs double arithmetic evaluated in double (FLT_EVAL_METHOD 0)"
#endif

typedef struct { double hi, lo; } fo_dd;

static inline double fo_abs(double x) { return x < 0.0 ? -x : x; }

/* s + e == a + b exactly (Knuth's TwoSum) */
static inline fo_dd fo_two_sum(double a, double b)
{
    const double s = a + b;
    const double bb = s - a;
    const fo_dd r = {s, (a - (s - bb)) + (b - bb)};
    return r;
}

/* the same when |a| >= |b| or a == 0 (Dekker's FastTwoSum) */
static inline fo_dd fo_fast_two_sum(double a, double b)
{
    const double s = a + b;
    const fo_dd r = {s, b - (s - a)};
    return r;
}

/* p + e == a * b exactly (Dekker's TwoProduct with Veltkamp's split into
 * 26-bit halves), for |a|, |b| below 2^996 and products far from underflow */
static inline fo_dd fo_two_prod(double a, double b)
{
    const double split = 134217729.0;   /* 2^27 + 1 */
    const double ca = split * a, cb = split * b;
    const double ah = ca - (ca - a), al = a - ah;
    const double bh = cb - (cb - b), bl = b - bh;
    const double p = a * b;
    const fo_dd r = {p, ((ah * bh - p) + ah * bl + al * bh) + al * bl};
    return r;
}

static inline fo_dd fo_dd_add(fo_dd a, fo_dd b)
{
    fo_dd s = fo_two_sum(a.hi, b.hi);
    const fo_dd t = fo_two_sum(a.lo, b.lo);
    s.lo += t.hi;
    s = fo_fast_two_sum(s.hi, s.lo);
    s.lo += t.lo;
    return fo_fast_two_sum(s.hi, s.lo);
}

static inline fo_dd fo_dd_neg(fo_dd a)
{
    const fo_dd r = {-a.hi, -a.lo};
    return r;
}

static inline fo_dd fo_dd_mul(fo_dd a, fo_dd b)
{
    const double prod = a.hi * b.hi;
    if (!(fo_abs(prod) <= DBL_MAX && fo_abs(a.hi) < 0x1p996
          && fo_abs(b.hi) < 0x1p996)) {
        const fo_dd r = {prod, 0.0};   /* overflows, or NaN: no lower part */
        return r;
    }
    fo_dd p = fo_two_prod(a.hi, b.hi);
    p.lo += a.hi * b.lo + a.lo * b.hi;
    return fo_fast_two_sum(p.hi, p.lo);
}

static inline fo_dd fo_dd_mul_d(fo_dd a, double b)
{
    const fo_dd bb = {b, 0.0};
    return fo_dd_mul(a, bb);
}

/* a / b, two correction steps of long division */
static inline fo_dd fo_dd_div(fo_dd a, fo_dd b)
{
    const double q1 = a.hi / b.hi;
    fo_dd r = fo_dd_add(a, fo_dd_neg(fo_dd_mul_d(b, q1)));
    const double q2 = r.hi / b.hi;
    r = fo_dd_add(r, fo_dd_neg(fo_dd_mul_d(b, q2)));
    const double q3 = r.hi / b.hi;
    fo_dd q = fo_fast_two_sum(q1, q2);
    q = fo_dd_add(q, (fo_dd){q3, 0.0});
    return q;
}

/* 1/n as a double-double, for a whole number 1 <= n < 2^53 */
static inline fo_dd fo_dd_recip(double n)
{
    const double hi = 1.0 / n;
    const fo_dd p = fo_two_prod(n, hi);   /* n * hi, within one ulp of 1 */
    const fo_dd r = {hi, ((1.0 - p.hi) - p.lo) / n};
    return fo_fast_two_sum(r.hi, r.lo);
}

/* log 2 = LN2_HI + LN2_LO to about 2^-107 */
#define FO_LN2_HI 0x1.62e42fefa39efp-1
#define FO_LN2_LO 0x1.abc9e3b39803fp-56

static inline uint64_t fo_bits(double x)
{
    uint64_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline double fo_from_bits(uint64_t u)
{
    double x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* 2^k for -1022 <= k <= 1023, exactly */
static inline double fo_exp2i(int k)
{
    return fo_from_bits((uint64_t)(k + 1023) << 52);
}

/* x * 2^k, exact unless the result is subnormal (then rounded once more)
 * or overflows */
static inline double fo_scale2(double x, int k)
{
    while (k > 1023) { x *= 0x1p1023; k -= 1023; }
    while (k < -1022) {
        if (x == 0.0) return x;
        x *= 0x1p-1022; k += 1022;
    }
    return x * fo_exp2i(k);
}

/* log x as a double-double, for finite x > 0 */
static inline fo_dd fo_log_dd(double x)
{
    int k = 0;
    if (x < 0x1p-1022) { x *= 0x1p54; k = -54; }   /* subnormal: normalise */
    const uint64_t u = fo_bits(x);
    k += (int)((u >> 52) & 0x7ff) - 1023;
    double m = fo_from_bits((u & ((1ull << 52) - 1)) | (1023ull << 52));  /* [1, 2) */
    if (m > 1.4142135623730951) { m *= 0.5; k += 1; }          /* [0.707, 1.414] */
    /* s = (m - 1) / (m + 1); m - 1 is exact (Sterbenz), m + 1 exact as a sum */
    const fo_dd num = {m - 1.0, 0.0};
    const fo_dd s = fo_dd_div(num, fo_two_sum(m, 1.0));
    const fo_dd s2 = fo_dd_mul(s, s);                          /* <= 0.0295 */
    /* atanh(s)/s = sum s2^j / (2j + 1): terms from j = 6 on are below 2^-30
     * of the sum, so they are summed in double; j = 21 is the last above
     * 2^-110 */
    double tail = 1.0 / 43.0;
    for (int j = 20; j >= 6; j--) tail = tail * s2.hi + 1.0 / (double)(2 * j + 1);
    fo_dd p = {tail, 0.0};
    for (int j = 5; j >= 0; j--)
        p = fo_dd_add(fo_dd_mul(p, s2), fo_dd_recip((double)(2 * j + 1)));
    fo_dd r = fo_dd_mul(p, s);
    r.hi *= 2.0;   /* exact */
    r.lo *= 2.0;
    const fo_dd ln2 = {FO_LN2_HI, FO_LN2_LO};
    return fo_dd_add(fo_dd_mul_d(ln2, (double)k), r);
}

/* exp(a) rounded to double, for a double-double a */
static inline double fo_exp_dd(fo_dd a)
{
    if (a.hi != a.hi) return a.hi;                 /* NaN */
    if (a.hi > 709.8) return INFINITY;
    if (a.hi < -745.2) return 0.0;
    /* k = nearest integer to a / log 2, by the 1.5 * 2^52 rounding trick */
    const double shift = 0x1.8p52;
    const double kd = (a.hi * 1.4426950408889634 + shift) - shift;
    const fo_dd ln2 = {FO_LN2_HI, FO_LN2_LO};
    const fo_dd r = fo_dd_add(a, fo_dd_neg(fo_dd_mul_d(ln2, kd)));   /* |r| <~ 0.35 */
    /* exp r = sum r^j / j!: from j = 8 on the terms are below 2^-27 of the
     * sum, summed in double; j = 23 is the last above 2^-110 */
    static const double inv_fact[24] = {
        1.0, 1.0, 1.0 / 2.0, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0,
        1.0 / 5040.0, 1.0 / 40320.0, 1.0 / 362880.0, 1.0 / 3628800.0,
        1.0 / 39916800.0, 1.0 / 479001600.0, 1.0 / 6227020800.0,
        1.0 / 87178291200.0, 1.0 / 1307674368000.0, 1.0 / 20922789888000.0,
        1.0 / 355687428096000.0, 1.0 / 6402373705728000.0,
        1.0 / 121645100408832000.0, 1.0 / 2432902008176640000.0,
        1.0 / 51090942171709440000.0, 1.0 / 1124000727777607680000.0,
        1.0 / 25852016738884976640000.0};
    double tail = inv_fact[23];
    for (int j = 22; j >= 8; j--) tail = tail * r.hi + inv_fact[j];
    fo_dd p = {tail, 0.0};
    static const double fact[8] = {1, 1, 2, 6, 24, 120, 720, 5040};
    for (int j = 7; j >= 0; j--)
        p = fo_dd_add(fo_dd_mul(p, r), fo_dd_recip(fact[j]));
    return fo_scale2(p.hi + p.lo, (int)kd);
}

static inline double fo_log(double x)
{
    if (x != x || x < 0.0) return NAN;
    if (x == 0.0) return -INFINITY;
    if (x > DBL_MAX) return x;                           /* +inf */
    const fo_dd r = fo_log_dd(x);
    return r.hi + r.lo;
}

static inline double fo_exp(double x)
{
    const fo_dd a = {x, 0.0};
    return fo_exp_dd(a);
}

/* x^n for a whole number n, by exponentiation by squaring in
 * double-double: the same products in the same order for a given n, each
 * rounded as IEEE 754 prescribes, so the same bits everywhere; about
 * log2(n) squarings, each losing a little under 2^-104 relative, so the
 * result is correctly rounded but for exact values extremely close to a
 * rounding boundary. */
static inline double fo_powi(double x, long long n)
{
    if (n < 0) return 1.0 / fo_powi(x, -n);
    fo_dd result = {1.0, 0.0}, base = {x, 0.0};
    unsigned long long e = (unsigned long long)n;
    while (e) {
        if (e & 1u) result = fo_dd_mul(result, base);
        e >>= 1;
        if (e) base = fo_dd_mul(base, base);
        /* past the range of double: the lower part no longer matters */
        if (result.hi == 0.0 || base.hi == 0.0) {
            result.lo = base.lo = 0.0;
            if (result.hi == 0.0) break;
        }
    }
    return result.hi + result.lo;
}

/* x^y for a real y: exp(y log x) with log x and the product kept in
 * double-double.  Special values as C's pow for the x >= 0 used here;
 * x < 0 gives NaN. */
static inline double fo_pow(double x, double y)
{
    if (y == 0.0 || x == 1.0) return 1.0;
    if (x != x || y != y || x < 0.0) return NAN;
    if (x == 0.0) return y > 0.0 ? 0.0 : INFINITY;
    if (x > DBL_MAX) return y > 0.0 ? x : 0.0;
    if (y > DBL_MAX || y < -DBL_MAX)
        return (x > 1.0) == (y > 0.0) ? INFINITY : 0.0;
    return fo_exp_dd(fo_dd_mul_d(fo_log_dd(x), y));
}

#endif
