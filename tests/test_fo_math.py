"""fastopt's own powers, exp and log (csrc/fastopt/fo_math.h).

The per-step scalars (beta^t, NAdam's 0.96^(t psi), ASGD's
(1 + lambd lr t)^alpha, AdEMAMix's beta3 warm-up) are computed with basic
IEEE 754 operations only, so that they are the same bits on every machine
(the C library's pow differs between libraries and, in glibc, between x86
CPUs with and without FMA).  Here their accuracy is measured against values
that involve no C library at all: exact rationals (fractions) for integer
powers, and Python's decimal module at 60 digits (correctly rounded ln, exp
and power) for the rest.  On every sample below the result is the correctly
rounded double (0 ULP); against the C library's math.pow/log/exp the
difference is at most 1 ULP, and it is the C library that is off (the
decimal values decide).  Samples are seeded and small enough to take a few
seconds.
"""
import decimal
import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

import fastopt
from fastopt import _core

CTX = decimal.Context(prec=60)


def ulps(a, b):
    """|a - b| in units in the last place, for finite doubles of one sign."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert ((a >= 0) == (b >= 0)).all()
    return np.abs(a.view(np.int64) - b.view(np.int64))


def correctly_rounded(f, *args):
    """float() of a 60-digit decimal result (correctly rounded to double
    but for values within 10^-44 relative of a rounding boundary)."""
    return np.array([float(f(*(Decimal(float(x)) for x in a))) for a in zip(*args)])


def test_powi_is_exact_rational_rounded():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(0.5, 1.0, 300), 1 - 10 ** rng.uniform(-6, -1, 300),
                        rng.uniform(1.0, 2.0, 100)])
    n = rng.integers(0, 200, x.size)
    got = _core._fo_math("powi", x, n)
    exact = np.array([float(Fraction(float(a)) ** int(k)) for a, k in zip(x, n)])
    np.testing.assert_array_equal(got, exact)


def test_powi_large_steps():
    # beta^t up to a million steps: Adam's bias corrections of long runs
    rng = np.random.default_rng(2)
    x = np.concatenate([[0.9, 0.99, 0.999, 0.9995, 0.9999, 0.99999],
                        1 - 10 ** rng.uniform(-5, -1, 200)])
    n = np.concatenate([[1000, 10_000, 100_000, 223, 494, 1_000_000],
                        rng.integers(1, 10 ** 6, 200)])
    got = _core._fo_math("powi", x, n)
    want = correctly_rounded(lambda a, k: CTX.power(a, int(k)), x, n)
    keep = want > 1e-290      # far from underflow, where ULPs are relative
    assert keep.sum() > 100
    assert ulps(got[keep], want[keep]).max() == 0
    libm = np.array([math.pow(a, int(k)) for a, k in zip(x, n)])
    assert ulps(libm[keep], got[keep]).max() <= 1


def test_powi_special():
    x = np.array([0.0, 0.0, 1.0, 0.9, 0.9, 0.5, 2.0, 0.9])
    n = np.array([0, 5, 10 ** 12, 0, 1, 1074, 1023, 10 ** 9])
    want = [1.0, 0.0, 1.0, 1.0, 0.9, 2.0 ** -1074, 2.0 ** 1023, 0.0]
    np.testing.assert_array_equal(_core._fo_math("powi", x, n), want)
    assert _core._fo_math("powi", [2.0], [1024])[0] == math.inf
    assert _core.bias_correction(0.9999, 494) == 1.0 - _core._fo_math("powi", [0.9999], [494])[0]


@pytest.mark.parametrize("lo,hi", [(0.5, 2.0), (1e-300, 1e300), (1 - 1e-6, 1 + 1e-6)])
def test_log(lo, hi):
    rng = np.random.default_rng(3)
    x = np.exp(rng.uniform(math.log(lo), math.log(hi), 400))
    got = _core._fo_math("log", x)
    want = correctly_rounded(lambda a: CTX.ln(a), x)
    nonzero = want != 0
    assert ulps(np.abs(got[nonzero]), np.abs(want[nonzero])).max() == 0
    assert (np.sign(got) == np.sign(want)).all()
    libm = np.array([math.log(v) for v in x])
    assert ulps(np.abs(libm[nonzero]), np.abs(got[nonzero])).max() <= 1


def test_exp():
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.uniform(-708, 709, 400), rng.uniform(-1, 1, 200)])
    got = _core._fo_math("exp", x)
    want = correctly_rounded(lambda a: CTX.exp(a), x)
    assert ulps(got, want).max() == 0
    assert ulps([math.exp(v) for v in x], got).max() <= 1


# (base range, exponent range): NAdam 0.96^(t psi), ASGD's
# (1 + lambd lr t)^alpha, AdEMAMix's 0.5^(1 / (f + 1)), and a general one
POW_RANGES = {
    "nadam": ((0.96, 0.96), (0.0, 4000.0)),
    "asgd": ((1.0, 20.0), (-1.0, 1.0)),
    "ademamix": ((0.5, 0.5), (1e-5, 1.0)),
    "general": ((0.01, 100.0), (-50.0, 50.0)),
}


@pytest.mark.parametrize("case", list(POW_RANGES))
def test_pow(case):
    (xlo, xhi), (ylo, yhi) = POW_RANGES[case]
    rng = np.random.default_rng(5)
    x = rng.uniform(xlo, xhi, 300)
    y = rng.uniform(ylo, yhi, 300)
    got = _core._fo_math("pow", x, y)
    want = correctly_rounded(lambda a, b: CTX.power(a, b), x, y)
    keep = want > 1e-290
    assert keep.sum() > 200
    assert ulps(got[keep], want[keep]).max() == 0
    assert ulps([math.pow(a, b) for a, b in zip(x[keep], y[keep])], got[keep]).max() <= 1


def test_pow_special():
    inf, nan = math.inf, math.nan
    cases = [(2.0, 0.0, 1.0), (nan, 0.0, 1.0), (1.0, nan, 1.0), (0.0, 2.0, 0.0),
             (0.0, -2.0, inf), (inf, 0.5, inf), (inf, -0.5, 0.0), (2.0, inf, inf),
             (0.5, inf, 0.0), (2.0, -inf, 0.0), (4.0, 0.5, 2.0), (2.0, 1100.0, inf),
             (2.0, -1100.0, 0.0), (2.0, -1074.0, 2.0 ** -1074)]
    x, y, want = map(np.array, zip(*cases))
    np.testing.assert_array_equal(_core._fo_math("pow", x, y), want)
    assert np.isnan(_core._fo_math("pow", [-2.0, nan, 2.0], [0.5, 1.0, nan])).all()
    assert list(_core._fo_math("log", [0.0, inf, 1.0])) == [-inf, inf, 0.0]
    assert np.isnan(_core._fo_math("log", [-1.0, nan])).all()
    assert list(_core._fo_math("exp", [-inf, inf, 0.0, 710.0, -746.0])) == [0.0, inf, 1.0, inf, 0.0]


def test_bad_name():
    with pytest.raises(ValueError, match="name"):
        _core._fo_math("sin", [1.0])
    with pytest.raises(ValueError, match="same number"):
        _core._fo_math("pow", [1.0, 2.0], [1.0])


def test_adam_bias_correction_uses_it():
    # the step where glibc's FMA-less pow first differs for beta2 = 0.9999
    # (t = 494) gives the correctly rounded power here, whatever the machine
    for beta, t in ((0.9999, 494), (0.9995, 223), (0.999, 1000)):
        exact = float(Fraction(beta) ** t)
        assert fastopt._core.bias_correction(beta, t) == 1.0 - exact
