"""Fuzzing every public entry point with arbitrary arguments.

Property, for each entry point: a call either succeeds or raises one of the
documented exceptions (TypeError or ValueError; RuntimeError from
clip_grad_norm_ with error_if_nonfinite=True and from MLP.cost/backward
before a forward pass; KeyError from a scheduler resumed without its group
keys; OSError from the file system for a checkpoint path that is missing or
a folder; MemoryError from NumPy for a dataset or model size beyond any
memory), never crashes, and when it raises, every array it could reach (and
the optimizer's state and param_groups, the scheduler's state, the
configuration, the checkpoint folder) is byte for byte what it was.

Entry points: everything public except fastopt.reference, whose functions
are the NumPy specification of the rules and check nothing by design.

Arguments are drawn near the valid ones, so that checks deep in the call are
reached, and then spoiled one way or several: wrong types, dtypes (float16,
ints, complex, byte-swapped), shapes and sizes, non-contiguous, transposed,
misaligned and read-only views, views of one shared buffer (aliasing), 0-d
and empty arrays, NaN, infinities, huge, subnormal and negative values,
junk hyperparameters (NaN, bools, strings, None, numpy scalars, huge ints).

Example counts: 200 per entry point in the normal run;
``FASTOPT_FUZZ_EXAMPLES=10000`` (``bash tools/fuzz_long.sh``) for the long
run.  Bugs the fuzzing found are pinned by the regression tests at the
end.
"""
import copy
import hashlib
import os
import io
import json
import pathlib
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastopt
from fastopt import _core, checkpoint, functional, lr_scheduler
from fastopt.course import datasets, models
import fastopt.course.data
from fastopt.optim import SGD, Adagrad, Adam, AdamW, Momentum, RMSprop
from fastopt.rules import RULES as TABLE
from conftest import many

# NumPy warns about deprecated dtype aliases ("a") that the junk draws
pytestmark = pytest.mark.filterwarnings("ignore:Data type alias:DeprecationWarning")

EXAMPLES = int(os.environ.get("FASTOPT_FUZZ_EXAMPLES", "200"))
settings.register_profile(
    "fastopt-fuzz", max_examples=EXAMPLES, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much])
FUZZ = settings.get_profile("fastopt-fuzz")

# Ints up to and beyond the float range: beyond it, a hyperparameter is
# refused with ValueError (test_huge_int_hyperparameter_raises_valueerror).
FLOAT_INT_MAX = 2 ** 1100

# ---------------------------------------------------------------------------
# Values

SPECIAL = [0.0, -0.0, 1.0, -1.0, 0.5, np.nan, -np.nan, np.inf, -np.inf,
           1e308, -1e308, 3e38, 5e-324, 1e-45, 1e-39, 2.0 ** -1074, 1e-300,
           65504.0, 1e20, -1e20, 0.999, 0.1]

numbers_ = st.one_of(st.sampled_from(SPECIAL), st.floats(width=64),
                     st.floats(-10, 10))

JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-FLOAT_INT_MAX, FLOAT_INT_MAX),
    st.integers(-3, 3), numbers_, st.text(max_size=3),
    st.sampled_from([[], (), {}, [0.9, 0.999], (0.9,), (0.9, 0.999, 0.5),
                     ("a", "b"), (np.nan, 0.5), (0.5, 2), np.float32(0.5),
                     np.float64(-1.0), np.bool_(True), np.int64(3),
                     np.float16(0.1), np.array(0.5), np.array([0.1, 0.2]),
                     complex(1, 1), object(), "inf", b"1", 1j])
)


def hyper(valid):
    """A strategy: the valid value, another plausible one, or junk."""
    if isinstance(valid, (bool, tuple)):
        return st.one_of(st.just(valid), JUNK)
    return st.one_of(st.just(valid), st.floats(0, 1, exclude_max=True),
                     st.sampled_from([0, 1, 2]), st.floats(0, 1e6), JUNK)


# ---------------------------------------------------------------------------
# Arrays

FLOATS = [np.float32, np.float64]
OTHER_DTYPES = [np.float16, np.int64, np.int32, np.bool_, np.complex128,
                np.dtype(">f8"), np.dtype(">f4"), np.uint8, np.longdouble]
MIXES = ["normal", "normal", "special", "special", "huge", "tiny", "f32huge"]
SPOILS = ["none", "none", "none", "none", "dtype", "size", "strided",
          "transposed", "readonly", "misaligned", "alias", "alias_exact",
          "empty", "zero_d", "junk", "None", "fortran", "list"]


# With FASTOPT_FUZZ_LOG=path, each entry point appends its example count
# (every 1000 examples and at the end) so that a run cut short by a time
# limit still says exactly how far it got.
LOG = os.environ.get("FASTOPT_FUZZ_LOG")
COUNT = [0]


def _log(line):
    if LOG:
        with open(LOG, "a") as f:
            f.write(line + "\n")


@pytest.fixture(autouse=True)
def _count_examples(request):
    COUNT[0] = 0
    yield
    _log(f"{request.node.nodeid} done examples={COUNT[0]}")


class Pool:
    """Every array of one example, with a shared buffer for aliasing."""

    def __init__(self, data):
        COUNT[0] += 1
        if COUNT[0] % 1000 == 0:
            _log(f"{os.environ.get('PYTEST_CURRENT_TEST', '?')} examples={COUNT[0]}")
        self.data = data
        self.base = np.zeros(256, np.float64)
        self.base32 = self.base.view(np.float32)
        self.arrays = [self.base]
        self.handed = []

    def fill(self, a):
        """Write values into a writable contiguous array: a few draws pick
        the mix (specials, normals, huge, subnormal), a seeded generator the
        values, so that big arrays cost no more draws than small ones."""
        if not a.size or not a.flags.writeable or not (a.flags.c_contiguous
                                                      or a.flags.f_contiguous):
            return a
        seed, mix = self.data.draw(st.tuples(st.integers(0, 2 ** 32 - 1),
                                             st.sampled_from(MIXES)), label="values")
        rng = np.random.default_rng(seed)
        if mix == "special":
            vals = rng.choice(np.array(SPECIAL), a.size)
        else:
            vals = rng.standard_normal(a.size) * {"normal": 1.0, "huge": 1e300,
                                                   "tiny": 1e-310, "f32huge": 3e38}[mix]
        with np.errstate(all="ignore"):
            try:
                a.reshape(-1, order="A")[...] = vals.astype(a.dtype)
            except (TypeError, ValueError):
                pass
        return a

    def nice(self, shape, dtype):
        a = np.zeros(shape, dtype)
        self.fill(a)
        self.arrays.append(a)
        return a

    def array(self, shape, dtype, spoil=None):
        """An array like np.zeros(shape, dtype), spoiled one way (or not)."""
        d = self.data
        spoil = spoil or d.draw(st.sampled_from(SPOILS), label="spoil")
        n = int(np.prod(shape))
        if spoil == "none":
            return self.nice(shape, dtype)
        if spoil == "dtype":
            other = d.draw(st.sampled_from(OTHER_DTYPES + FLOATS))
            a = np.zeros(shape, other)
        elif spoil == "size":
            m = d.draw(st.integers(0, 9))
            a = np.zeros(m, dtype)
        elif spoil == "strided":
            a = np.zeros(2 * n + 1, dtype)[::2][:max(n, 1)]
        elif spoil == "transposed":
            a = np.zeros((3, max(n, 2)), dtype).T
        elif spoil == "fortran":
            a = np.asfortranarray(np.zeros((2, max(n, 2)), dtype))
        elif spoil == "readonly":
            a = np.zeros(shape, dtype)
            a.flags.writeable = False
        elif spoil == "misaligned":
            raw = np.zeros(n * np.dtype(dtype).itemsize + 8, np.uint8)
            a = raw[1:1 + n * np.dtype(dtype).itemsize].view(dtype)
            self.arrays.append(raw)
        elif spoil in ("alias", "alias_exact"):
            buf = self.base32 if np.dtype(dtype) == np.float32 else self.base
            if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
                buf = self.base.view(np.uint8)[: self.base.nbytes // np.dtype(dtype).itemsize
                                               * np.dtype(dtype).itemsize].view(dtype)
            start = 0 if spoil == "alias_exact" else d.draw(st.integers(0, 7))
            a = buf[start:start + n].reshape(shape) if n <= buf.size - start else buf[:0]
            self.handed.append(a)
            return a                           # its memory is the base's
        elif spoil == "empty":
            a = np.zeros((0,) + tuple(shape[1:]), dtype)
        elif spoil == "zero_d":
            a = np.zeros((), dtype)
        elif spoil == "junk":
            return d.draw(JUNK)
        elif spoil == "None":
            return None
        elif spoil == "list":
            return [0.0] * n
        if isinstance(a, np.ndarray):
            if a.flags.writeable:
                self.fill(a)
            self.arrays.append(a)
        return a

    def snapshot(self):
        return [(a.dtype.str, a.shape, a.tobytes()) for a in self.arrays]


def check_call(pool, fn, allowed=(TypeError, ValueError), extra_state=None,
               on_error=None):
    """Call fn(); if it raises, the exception must be allowed and every array
    (and extra_state()) unchanged, and on_error(exception) must pass.
    Returns True when fn succeeded."""
    before = pool.snapshot()
    state_before = extra_state() if extra_state else None
    try:
        with np.errstate(all="ignore"):
            fn()
    except allowed as e:
        assert str(e), f"{type(e).__name__} without a message"
        assert pool.snapshot() == before, f"arrays changed by a call raising {e!r}"
        if extra_state:
            assert extra_state() == state_before, f"state changed by a call raising {e!r}"
        if on_error:
            on_error(e)
        return False
    return True


# ---------------------------------------------------------------------------
# Functional rules and their *_many twins

RULES = {
    # name: (state slots, {hyperparameter: valid value}, takes step)
    "sgd": (("momentum_buffer",),
            dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0,
                 nesterov=False, maximize=False), True),
    "momentum": (("velocity",), dict(lr=0.1, beta=0.9, weight_decay=0.0,
                                     maximize=False), False),
    "rmsprop": (("square_avg", "grad_avg", "momentum_buffer"),
                dict(lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0,
                     momentum=0.5, centered=True, maximize=False), False),
    "adam": (("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
             dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                  amsgrad=True, maximize=False, decoupled_weight_decay=False), True),
    "adagrad": (("state_sum",), dict(lr=0.01, lr_decay=0.0, weight_decay=0.0,
                                     eps=1e-10, maximize=False), True),
}


def _switched_on(rule, kernel_only):
    """The rule's defaults with every state's option switched on."""
    hp = {h.name: h.default for h in rule.hypers if h.kernel or not kernel_only}
    hp.update({s.when: True if rule.hyper(s.when).check == "flag" else 0.5
               for s in rule.states if s.when is not None})
    return hp


# every other rule of the table
RULES.update({name: (tuple(s.name for s in rule.states), _switched_on(rule, True),
                     rule.step is not None)
              for name, rule in TABLE.items() if name not in RULES})
STEPS = st.one_of(st.integers(1, 5), st.integers(-2, 2 ** 64), st.sampled_from(
    [2 ** 62 - 1, 2 ** 62, 2 ** 62 + 1, 2 ** 63, 1.0, True, np.int64(3), None, "1"]))
SHAPES = st.sampled_from([(0,), (1,), (3,), (2, 3), (17,), (1, 1), (4, 1, 2)])
# a rule with a matrix step (Muon) takes matrices only
MATRIX_SHAPES = st.sampled_from([(0, 2), (1, 1), (2, 3), (3, 2), (1, 17)])


def draw_kwargs(data, rule):
    _, hps, takes_step = RULES[rule]
    kw = {}
    for name, valid in hps.items():
        choice = data.draw(st.sampled_from(["valid", "valid", "valid", "other", "omit"]))
        if choice == "valid":
            kw[name] = valid
        elif choice == "other":
            kw[name] = data.draw(hyper(valid))
    if takes_step and data.draw(st.integers(0, 9)):
        kw["step"] = data.draw(STEPS)
    if data.draw(st.integers(0, 19)) == 0:
        kw["bogus"] = 1.0
    return kw


@pytest.mark.parametrize("rule", sorted(RULES))
@FUZZ
@given(data=st.data())
def test_functional(rule, data):
    pool = Pool(data)
    shape = data.draw(SHAPES)
    dtype = data.draw(st.sampled_from(FLOATS))
    slots = RULES[rule][0]
    param = pool.array(shape, dtype)
    grad = pool.array(shape, dtype)
    states = [pool.array(shape, dtype) for _ in slots]
    nargs = data.draw(st.sampled_from([len(slots) + 2] * 4 + list(range(len(slots) + 4))))
    args = ([param, grad] + states + [pool.array(shape, dtype)])[:nargs]
    kw = draw_kwargs(data, rule)
    check_call(pool, lambda: getattr(functional, rule)(*args, **kw))


@pytest.mark.parametrize("rule", sorted(RULES))
@FUZZ
@given(data=st.data())
def test_many(rule, data):
    pool = Pool(data)
    k = data.draw(st.integers(0, 4))
    dtype = data.draw(st.sampled_from(FLOATS))
    shapes = [data.draw(SHAPES) for _ in range(k)]
    spoil = data.draw(st.sampled_from(["none", "none", None]))

    def lst(container=None):
        how = data.draw(st.sampled_from(["list"] * 6 + ["tuple", "None", "junk", "short"]))
        items = [pool.array(s, dtype, spoil) for s in shapes]
        if how == "tuple":
            return tuple(items)
        if how == "None":
            return None
        if how == "junk":
            return data.draw(JUNK)
        if how == "short":
            return items[:-1]
        return items

    params, grads = lst(), lst()
    states = [lst() for _ in RULES[rule][0]]
    kw = draw_kwargs(data, rule)
    kw.pop("bogus", None)
    how = data.draw(st.sampled_from(["none", "right", "right", "short", "long", "junk"]))
    n = len(params) if isinstance(params, (list, tuple)) else k
    if how == "right":
        kw["labels"] = [f"t{i}" for i in range(n)]
    elif how == "short":
        kw["labels"] = [f"t{i}" for i in range(max(n - 1, 0))]
    elif how == "long":
        kw["labels"] = tuple(range(n + 1))
    elif how == "junk":
        kw["labels"] = data.draw(JUNK)
    check_call(pool, lambda: many(rule)(params, grads, *states, **kw))


GRAD_UTILS = ["grad_sumsq", "grad_allfinite", "grad_scale_", "grad_clamp_"]


@pytest.mark.parametrize("name", GRAD_UTILS)
@FUZZ
@given(data=st.data())
def test_grad_utils(name, data):
    pool = Pool(data)
    k = data.draw(st.integers(0, 4))
    dtypes = data.draw(st.sampled_from(["one", "one", "mixed"]))
    d0 = data.draw(st.sampled_from(FLOATS))
    grads = [pool.array(data.draw(SHAPES),
                        d0 if dtypes == "one" else data.draw(st.sampled_from(FLOATS)))
             for _ in range(k)]
    if data.draw(st.integers(0, 9)) == 0:
        grads = tuple(grads) if data.draw(st.booleans()) else data.draw(JUNK)
    args = [grads]
    if name in ("grad_scale_", "grad_clamp_"):
        args.append(data.draw(st.one_of(st.floats(0, 10), JUNK)))
    if data.draw(st.booleans()) and isinstance(grads, list):
        args.append([f"g{i}" for i in range(len(grads))])
    check_call(pool, lambda: getattr(_core, name)(*args))


# ---------------------------------------------------------------------------
# Clipping


def grad_container(data, pool):
    k = data.draw(st.integers(0, 4))
    arrays = [pool.array(data.draw(SHAPES), data.draw(st.sampled_from(FLOATS)),
                         data.draw(st.sampled_from(["none"] * 3 + [None])))
              for _ in range(k)]
    how = data.draw(st.sampled_from(["list", "tuple", "dict", "single", "junk"]))
    if how == "tuple":
        return tuple(arrays)
    if how == "dict":
        return {f"g{i}": a for i, a in enumerate(arrays)}
    if how == "single":
        return arrays[0] if arrays else pool.nice((3,), np.float32)
    if how == "junk":
        return data.draw(JUNK)
    return arrays


@FUZZ
@given(data=st.data())
def test_clip_grad_norm(data):
    pool = Pool(data)
    grads = grad_container(data, pool)
    max_norm = data.draw(st.one_of(st.floats(0, 10), JUNK))
    kw = {}
    if data.draw(st.booleans()):
        kw["norm_type"] = data.draw(st.one_of(st.sampled_from([2, 2.0, np.inf, "inf", "INF", 1, 0]), JUNK))
    if data.draw(st.booleans()):
        kw["error_if_nonfinite"] = data.draw(st.one_of(st.booleans(), JUNK))
    allowed = (TypeError, ValueError)
    if kw.get("error_if_nonfinite") is True or isinstance(kw.get("error_if_nonfinite"), np.bool_):
        allowed += (RuntimeError,)
    check_call(pool, lambda: fastopt.clip_grad_norm_(grads, max_norm, **kw), allowed)


@FUZZ
@given(data=st.data())
def test_clip_grad_value(data):
    pool = Pool(data)
    grads = grad_container(data, pool)
    clip = data.draw(st.one_of(st.floats(0, 10), JUNK))
    check_call(pool, lambda: fastopt.clip_grad_value_(grads, clip))


# ---------------------------------------------------------------------------
# Optimizer classes

CLASSES = {
    SGD: dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False,
              maximize=False),
    Momentum: dict(lr=0.1, beta=0.9, weight_decay=0.0, maximize=False),
    RMSprop: dict(lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.5,
                  centered=True, maximize=False),
    Adam: dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, amsgrad=True,
               maximize=False, decoupled_weight_decay=False),
    AdamW: dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, amsgrad=False,
                maximize=False),
    Adagrad: dict(lr=0.01, lr_decay=0.01, weight_decay=0.0, initial_accumulator_value=0.1,
                  eps=1e-10, maximize=False),
}
# every other class of the table
CLASSES.update({getattr(fastopt, name): {k: v for k, v in _switched_on(rule, False).items()
                                         if k not in fixed}
                for rule in TABLE.values() for name, fixed, *_ in rule.classes()
                if getattr(fastopt, name) not in CLASSES})
CLASS_IDS = [c.__name__ for c in CLASSES]


def draw_hypers(data, cls, junk=True):
    kw = {}
    for name, valid in CLASSES[cls].items():
        choice = data.draw(st.sampled_from(["valid", "valid", "valid", "omit"]
                                           + (["other"] if junk else [])))
        if choice == "valid":
            kw[name] = valid
        elif choice == "other":
            kw[name] = data.draw(hyper(valid))
    if cls is SGD and kw.get("nesterov") is True and kw.get("momentum", 0) == 0:
        kw["nesterov"] = False
    return kw


def draw_params(data, pool, spoil="none", matrices=False):
    """(params structure, flat list of arrays, names or None)."""
    k = data.draw(st.integers(1, 4))
    shapes = MATRIX_SHAPES if matrices else SHAPES
    arrays = [pool.array(data.draw(shapes), data.draw(st.sampled_from(FLOATS)),
                         spoil or None) for _ in range(k)]
    how = data.draw(st.sampled_from(["list", "dict", "groups_list", "groups_dict", "tuple"]))
    names = [f"p{i}" for i in range(k)]
    if how == "list":
        return arrays, arrays, None
    if how == "tuple":
        return tuple(arrays), arrays, None
    if how == "dict":
        return dict(zip(names, arrays)), arrays, names
    cut = data.draw(st.integers(1, k)) if k > 1 else 1
    parts = [slice(0, cut), slice(cut, k)] if cut < k else [slice(0, k)]
    groups = []
    for s in parts:
        g = {"params": (dict(zip(names[s], arrays[s])) if how == "groups_dict"
                        else arrays[s])}
        if data.draw(st.booleans()):
            g["lr"] = data.draw(st.sampled_from([0.01, 0.5]))
        groups.append(g)
    return groups, arrays, names if how == "groups_dict" else None


def opt_state(opt):
    """A comparable picture of everything an optimizer holds."""
    sd = opt.state_dict()
    state = {i: {k: (v.dtype.str, v.tobytes()) if isinstance(v, np.ndarray) else v
                 for k, v in e.items()} for i, e in sd["state"].items()}
    groups = [{k: (repr(v) if k != "params" else [id(p) for p in v])
               for k, v in g.items()} for g in opt.param_groups]
    return repr(state), groups, sd["skipped_steps"], repr(sd.get("accumulation"))


@pytest.mark.parametrize("cls", list(CLASSES), ids=CLASS_IDS)
@FUZZ
@given(data=st.data())
def test_optimizer_constructor(cls, data):
    pool = Pool(data)
    params, _, _ = draw_params(data, pool, spoil=data.draw(st.sampled_from(["none", None])))
    if data.draw(st.integers(0, 9)) == 0:
        params = data.draw(st.one_of(JUNK, st.just([]), st.just([{"params": []}]),
                                     st.just([{"lr": 0.1}]), st.just([{"params": params}, 1.0])))
    kw = draw_hypers(data, cls)
    if data.draw(st.integers(0, 4)) == 0:
        kw["skip_nonfinite"] = data.draw(st.one_of(st.booleans(), JUNK))
    if data.draw(st.integers(0, 4)) == 0:
        kw["ema_decay"] = data.draw(st.one_of(st.none(), st.floats(0.0, 0.999), JUNK))
    if data.draw(st.integers(0, 4)) == 0:
        kw["accumulation_steps"] = data.draw(st.one_of(st.integers(-2, 4), JUNK))
    check_call(pool, lambda: cls(params, **kw))


def valid_optimizer(data, pool, cls):
    params, arrays, names = draw_params(data, pool, spoil="none",
                                        matrices=bool(cls.rule.matrix))
    kw = draw_hypers(data, cls, junk=False)
    kw["skip_nonfinite"] = data.draw(st.booleans())
    kw["ema_decay"] = data.draw(st.sampled_from([None, None, 0.5, 0.9]))
    kw["accumulation_steps"] = data.draw(st.sampled_from([1, 1, 2, 3]))
    opt = cls(params, **kw)
    return opt, arrays, names, isinstance(params, (list, tuple)) and (
        not params or not isinstance(params[0], dict)) or names is None


def draw_grads(data, pool, arrays, names):
    grads = []
    for a in arrays:
        spoil = data.draw(st.sampled_from(["none"] * 6 + [None]))
        grads.append(pool.array(a.shape, a.dtype, spoil))
    how = data.draw(st.sampled_from(["natural"] * 6 + ["list", "tuple", "dict", "junk",
                                                      "short", "extra"]))
    if how == "natural":
        return dict(zip(names, grads)) if names else grads
    if how == "list":
        return grads
    if how == "tuple":
        return tuple(grads)
    if how == "dict":
        return {f"p{i}": g for i, g in enumerate(grads)}
    if how == "junk":
        return data.draw(JUNK)
    if how == "short":
        return grads[:-1] if not names else dict(zip(names[:-1], grads))
    return (grads + [grads[0]]) if not names else {**dict(zip(names, grads)), "zz": grads[0]}


@pytest.mark.parametrize("cls", list(CLASSES), ids=CLASS_IDS)
@FUZZ
@given(data=st.data())
def test_optimizer_step(cls, data):
    pool = Pool(data)
    opt, arrays, names, _ = valid_optimizer(data, pool, cls)
    for _ in range(data.draw(st.integers(1, 3))):
        if data.draw(st.integers(0, 4)) == 0:    # junk hyperparameters in a group
            g = data.draw(st.sampled_from(opt.param_groups))
            key = data.draw(st.sampled_from(sorted(CLASSES[cls])))
            g[key] = data.draw(hyper(CLASSES[cls][key]))
        grads = draw_grads(data, pool, arrays, names)
        check_call(pool, lambda: opt.step(grads), extra_state=lambda: opt_state(opt))


def spoil_state_dict(data, sd):
    """A deep copy of sd with one to three values replaced by junk."""
    sd = copy.deepcopy(sd)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [((), k) for k in sd]
        for k in ("param_groups",):
            for gi, g in enumerate(sd.get(k, []) if isinstance(sd.get(k), list) else []):
                if isinstance(g, dict):
                    paths += [((k, gi), kk) for kk in g]
        if isinstance(sd.get("state"), dict):
            for i, e in sd["state"].items():
                paths.append((("state",), i))
                if isinstance(e, dict):
                    paths += [(("state", i), kk) for kk in e]
        where, key = data.draw(st.sampled_from(paths))
        node = sd
        for w in where:
            node = node[w]
        what = data.draw(st.sampled_from(["junk", "delete", "array", "wrongkey"]))
        if what == "delete":
            del node[key]
        elif what == "array":
            node[key] = data.draw(st.sampled_from([
                np.zeros(3), np.zeros((2, 2), np.float32), np.zeros(0), np.zeros(1, np.int64),
                np.full(1, np.nan)]))
        elif what == "wrongkey":
            node[data.draw(st.one_of(st.text(max_size=3), st.integers(-2, 9), st.just(True)))] = \
                data.draw(JUNK)
        else:
            node[key] = data.draw(JUNK)
    if data.draw(st.integers(0, 9)) == 0:
        return data.draw(JUNK)
    return sd


@pytest.mark.parametrize("cls", list(CLASSES), ids=CLASS_IDS)
@FUZZ
@given(data=st.data())
def test_optimizer_load_state_dict(cls, data):
    pool = Pool(data)
    opt, arrays, names, _ = valid_optimizer(data, pool, cls)
    step_with_nice_grads(opt, pool, arrays, names)
    sd = spoil_state_dict(data, opt.state_dict())
    if check_call(pool, lambda: opt.load_state_dict(sd), extra_state=lambda: opt_state(opt)):
        check_still_steps(data, pool, opt, arrays, names)


def step_with_nice_grads(opt, pool, arrays, names):
    with np.errstate(all="ignore"):
        opt.step([pool.nice(a.shape, a.dtype) for a in arrays] if not names else
                 {n: pool.nice(a.shape, a.dtype) for n, a in zip(names, arrays)})


def check_still_steps(data, pool, opt, arrays, names):
    """After an accepted load: the optimizer must still step or refuse cleanly.
    A schedule-free optimizer loaded in eval mode refuses to step by design
    (RuntimeError), so it goes back to train mode first, if it can."""
    if getattr(opt, "train_mode", True) is False:
        if not check_call(pool, opt.train, extra_state=lambda: opt_state(opt)):
            return
    grads = draw_grads(data, pool, arrays, names)
    check_call(pool, lambda: opt.step(grads), extra_state=lambda: opt_state(opt))


# ---------------------------------------------------------------------------
# FlatParams


@FUZZ
@given(data=st.data())
def test_flatparams(data):
    pool = Pool(data)
    k = data.draw(st.integers(0, 4))
    arrays = [pool.array(data.draw(SHAPES), data.draw(st.sampled_from(FLOATS)))
              for _ in range(k)]
    how = data.draw(st.sampled_from(["list", "tuple", "dict", "junk"]))
    params = {"list": arrays, "tuple": tuple(arrays), "dict": {f"p{i}": a for i, a in
                                                               enumerate(arrays)}}.get(how)
    if how == "junk":
        params = data.draw(JUNK)
    kw = {}
    if data.draw(st.booleans()):
        kw["dtype"] = data.draw(st.one_of(st.sampled_from(
            [np.float32, np.float64, "float32", "f8", np.int64, np.float16, ">f8",
             np.complex128, "foo", None]), JUNK))
    check_call(pool, lambda: fastopt.FlatParams(params, **kw))


# ---------------------------------------------------------------------------
# Schedulers

SCHEDULERS = {
    lr_scheduler.ConstantLR: dict(factor=0.5, total_iters=3),
    lr_scheduler.StepLR: dict(step_size=2, gamma=0.5),
    lr_scheduler.MultiStepLR: dict(milestones=[1, 3], gamma=0.5),
    lr_scheduler.ExponentialLR: dict(gamma=0.9),
    lr_scheduler.CosineAnnealingLR: dict(T_max=5, eta_min=0.0),
    lr_scheduler.LinearLR: dict(start_factor=0.5, end_factor=1.0, total_iters=3),
    lr_scheduler.InverseTimeDecayLR: dict(decay_rate=1.0, time_interval=2),
    lr_scheduler.OneCycleLR: dict(max_lr=0.1, total_steps=10, pct_start=0.3,
                                  anneal_strategy="cos", cycle_momentum=True,
                                  base_momentum=0.85, max_momentum=0.95,
                                  div_factor=25.0, final_div_factor=1e4,
                                  three_phase=False),
}
SMALL_INTS = st.one_of(st.integers(-2, 12), st.integers(-2 ** 70, 2 ** 70))


def sched_value(data, valid):
    if isinstance(valid, bool):
        return data.draw(st.one_of(st.booleans(), JUNK))
    if isinstance(valid, int):
        return data.draw(st.one_of(SMALL_INTS, JUNK))
    if isinstance(valid, list):
        return data.draw(st.one_of(st.lists(SMALL_INTS, max_size=4), JUNK))
    if isinstance(valid, str):
        return data.draw(st.one_of(st.sampled_from(["cos", "linear", "COS"]), JUNK))
    return data.draw(st.one_of(st.floats(-1, 2), JUNK))


def groups_state(opt):
    return repr([{k: v for k, v in g.items() if k not in ("params", "param_names")}
                 for g in opt.param_groups])


@pytest.mark.parametrize("cls", list(SCHEDULERS), ids=[c.__name__ for c in SCHEDULERS])
@FUZZ
@given(data=st.data())
def test_scheduler(cls, data):
    pool = Pool(data)
    ocls = data.draw(st.sampled_from([SGD, Adam, RMSprop, Adagrad]))
    opt, arrays, names, _ = valid_optimizer(data, pool, ocls)
    kw = {}
    for name, valid in SCHEDULERS[cls].items():
        choice = data.draw(st.sampled_from(["valid", "valid", "omit", "other"]))
        if choice == "valid":
            kw[name] = valid
        elif choice == "other":
            kw[name] = sched_value(data, valid)
    if data.draw(st.integers(0, 4)) == 0:
        kw["last_epoch"] = data.draw(st.one_of(st.integers(-2, 12), JUNK))
    if data.draw(st.integers(0, 9)) == 0:
        g = data.draw(st.sampled_from(opt.param_groups))
        g[data.draw(st.sampled_from(["lr", "initial_lr", "max_lr", "momentum"]))] = data.draw(JUNK)
    # KeyError: resuming without group keys (documented)
    allowed = (TypeError, ValueError, KeyError)
    target = opt if data.draw(st.integers(0, 19)) else data.draw(JUNK)
    box = []
    if not check_call(pool, lambda: box.append(cls(target, **kw)), allowed,
                      extra_state=lambda: groups_state(opt)):
        return
    sched = box[0]
    for _ in range(data.draw(st.integers(0, 4))):
        what = data.draw(st.sampled_from(["step", "step", "epoch", "load", "get"]))
        if what == "step":
            call = sched.step
        elif what == "epoch":
            epoch = data.draw(st.one_of(SMALL_INTS, JUNK))
            call = lambda: sched.step(epoch)  # noqa: E731
        elif what == "get":
            call = lambda: (sched.get_lr(), sched.get_last_lr())  # noqa: E731
        else:
            sd = sched.state_dict()
            if data.draw(st.booleans()) and sd:
                sd[data.draw(st.sampled_from(sorted(sd)))] = data.draw(JUNK)
            else:
                sd = data.draw(st.one_of(JUNK, st.just({"bogus": 1})))
            call = lambda: sched.load_state_dict(sd)  # noqa: E731
        # a refused state_dict leaves the scheduler as it was, an accepted
        # one is checked: either way the next calls are held to the same rule
        check_call(pool, call, allowed,
                   extra_state=lambda: (groups_state(opt), repr(sched.state_dict())))


PURE = {
    lr_scheduler.constant_lr: dict(base_lr=0.1, epoch=2, factor=0.5, total_iters=3),
    lr_scheduler.step_lr: dict(base_lr=0.1, epoch=2, step_size=2, gamma=0.5),
    lr_scheduler.multistep_lr: dict(base_lr=0.1, epoch=2, milestones=[1, 3], gamma=0.5),
    lr_scheduler.exponential_lr: dict(base_lr=0.1, epoch=2, gamma=0.9),
    lr_scheduler.cosine_annealing_lr: dict(base_lr=0.1, epoch=2, T_max=5, eta_min=0.0),
    lr_scheduler.linear_lr: dict(base_lr=0.1, epoch=2, start_factor=0.5, end_factor=1.0,
                                 total_iters=3),
    lr_scheduler.one_cycle_lr: dict(max_lr=0.1, step=2, total_steps=10, pct_start=0.3,
                                    anneal_strategy="cos"),
    lr_scheduler.one_cycle_momentum: dict(step=2, total_steps=10, pct_start=0.3,
                                          anneal_strategy="cos"),
    lr_scheduler.inverse_time_decay: dict(base_lr=0.1, epoch=2, decay_rate=1.0),
    lr_scheduler.scheduled_inverse_time_decay: dict(base_lr=0.1, epoch=2, decay_rate=1.0,
                                                    time_interval=2),
}


@pytest.mark.parametrize("fn", list(PURE), ids=[f.__name__ for f in PURE])
@FUZZ
@given(data=st.data())
def test_schedule_function(fn, data):
    pool = Pool(data)
    kw = {}
    for name, valid in PURE[fn].items():
        choice = data.draw(st.sampled_from(["valid", "other", "other"]))
        kw[name] = valid if choice == "valid" else sched_value(data, valid)
    check_call(pool, lambda: fn(**kw))


# ---------------------------------------------------------------------------
# State precision conversions (fastopt.states)

try:
    import ml_dtypes as _ml_dtypes  # type: ignore[import-not-found, unused-ignore]
except ImportError:
    _ml_dtypes = None

STATE_CONVERSIONS = ["to_bfloat16", "from_bfloat16", "as_bfloat16", "to_8bit", "from_8bit"]


@pytest.mark.parametrize("name", STATE_CONVERSIONS)
@FUZZ
@given(data=st.data())
def test_state_conversions(name, data):
    pool = Pool(data)
    shape = data.draw(SHAPES)
    n = int(np.prod(shape))
    wanted = {"to_bfloat16": np.float32, "from_bfloat16": np.uint16,
              "as_bfloat16": np.uint16, "to_8bit": np.float32,
              "from_8bit": np.uint8}[name]
    dtype = data.draw(st.sampled_from([wanted] * 3 + [np.uint16, np.uint8, np.int16]
                                      + FLOATS))
    x = pool.array(shape, dtype)
    args = [x]
    if name == "from_8bit":
        blocks = -(-n // 256)
        m = data.draw(st.sampled_from([blocks, blocks, blocks + 1, max(blocks - 1, 0)]))
        args.append(pool.array((m,), np.float32))
    kw = {}
    if name in ("to_8bit", "from_8bit") and data.draw(st.booleans()):
        kw["nonneg"] = data.draw(st.one_of(st.booleans(), JUNK))
    allowed = (TypeError, ValueError) + ((ImportError,) if name == "as_bfloat16"
                                         and _ml_dtypes is None else ())
    out = []
    if not check_call(pool, lambda: out.append(getattr(fastopt.states, name)(*args, **kw)),
                      allowed=allowed):
        return
    r = out[0]
    if name == "to_bfloat16":
        assert r.dtype == np.uint16 and r.shape == x.shape
        assert fastopt.states.from_bfloat16(r).shape == x.shape
    elif name == "from_bfloat16":
        assert r.dtype == np.float32 and r.shape == np.shape(x)
    elif name == "as_bfloat16":
        # a view: the same memory (of an empty array, the same pointer)
        assert r.shape == x.shape and r.strides == x.strides
        assert r.__array_interface__["data"][0] == x.__array_interface__["data"][0]
    elif name == "to_8bit":
        codes, scales = r
        assert codes.dtype == np.uint8 and codes.shape == x.shape
        assert scales.dtype == np.float32 and scales.shape == (-(-x.size // 256),)
    else:
        assert r.dtype == np.float32 and r.shape == np.shape(x)


# ---------------------------------------------------------------------------
# Checkpoints: the property extends to files.  A call that raises leaves the
# folder as it was (no temporary file, the old checkpoint intact); a failure
# to read is a ValueError naming the file, or the OSError of the file system
# for a path that is missing or a folder; what write_state accepts,
# read_state reads back.

NOT_TEXT_JUNK = JUNK.filter(lambda x: not isinstance(x, (str, bytes)))


def folder_state(folder):
    out = []
    for name in sorted(os.listdir(folder)):
        full = os.path.join(folder, name)
        if os.path.isdir(full):
            out.append((name, None))
        else:
            with open(full, "rb") as f:
                out.append((name, f.read()))
    return out


def draw_path(data, folder):
    """(path, kind): mostly the checkpoint file, sometimes a bad path."""
    kind = data.draw(st.sampled_from(["file"] * 6 + ["pathlike", "bytes", "missing",
                                                     "folder", "no_folder", "junk"]))
    target = os.path.join(folder, "ckpt.npz")
    return {"file": target, "pathlike": pathlib.Path(target),
            "bytes": os.fsencode(target), "missing": os.path.join(folder, "other.npz"),
            "folder": folder, "no_folder": os.path.join(folder, "nope", "c.npz"),
            "junk": None}[kind] if kind != "junk" else data.draw(NOT_TEXT_JUNK), kind


def damaged_bytes(data, raw, sd):
    """A checkpoint's bytes, intact or damaged one way ("resealed": content
    changed under a correct checksum, which may or may not still be valid)."""
    how = data.draw(st.sampled_from(["intact", "intact", "truncate", "flip", "garbage",
                                     "empty", "append", "resealed"]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    if how == "truncate":
        return raw[:int(rng.integers(0, len(raw)))]
    if how == "flip":
        b = bytearray(raw)
        i = int(rng.integers(0, len(b)))
        b[i] ^= 1 << int(rng.integers(0, 8))
        return bytes(b)
    if how == "garbage":
        return rng.bytes(int(rng.integers(1, 400)))
    if how == "empty":
        return b""
    if how == "append":
        return raw + rng.bytes(int(rng.integers(1, 9)))
    if how == "resealed":
        # a correct checksum over wrong content: the checks after the digest
        meta = spoil_state_dict(data, {k: v for k, v in sd.items() if k != "state"})
        if isinstance(meta, dict):
            meta["steps"] = data.draw(st.one_of(
                st.just({str(i): e["step"] for i, e in sd["state"].items()}), JUNK))
            for key in data.draw(st.lists(st.sampled_from(["format", "version"]), max_size=2)):
                meta[key] = data.draw(JUNK)
        arrays = {"meta": np.frombuffer(json.dumps(meta, default=repr).encode(), np.uint8)}
        if data.draw(st.booleans()):
            del arrays["meta"]
        for i, entry in sd["state"].items():
            for kind, value in entry.items():
                if kind != "step":
                    arrays[f"state/{i}/{kind}"] = value
        extra = data.draw(st.sampled_from([None, "pickled", "bad_name", "bad_index"]))
        if extra == "pickled":
            arrays["state/0/exp_avg"] = np.array([object()], dtype=object)
        elif extra == "bad_name":
            arrays["bogus"] = np.zeros(2)
        elif extra == "bad_index":
            arrays["state/x/exp_avg"] = np.zeros(2)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return checkpoint._seal(buf.getvalue())
    return raw


def checkpoint_sealed(b):
    """b ends with the SHA-256 of what precedes it (a resealed file)."""
    return len(b) > 64 and hashlib.sha256(b[:-64]).hexdigest().encode() == b[-64:]


def read_allowed(kind):
    return (TypeError,) if kind == "junk" else (
        (OSError,) if kind in ("missing", "folder", "no_folder") else (ValueError,))


def check_names_file(path, kind):
    def check(e):
        if isinstance(e, ValueError) and kind != "junk":
            assert os.fsdecode(os.fspath(path)) in str(e), f"{e!r} does not name the file"
    return check


def stepped_optimizer(data, pool):
    cls = data.draw(st.sampled_from(list(CLASSES)))
    opt, arrays, names, _ = valid_optimizer(data, pool, cls)
    for _ in range(data.draw(st.integers(0, 2))):
        step_with_nice_grads(opt, pool, arrays, names)
    return opt, arrays, names


@FUZZ
@given(data=st.data())
def test_checkpoint_read_state(data):
    pool = Pool(data)
    opt, _, _ = stepped_optimizer(data, pool)
    with tempfile.TemporaryDirectory() as folder:
        opt.save(os.path.join(folder, "ckpt.npz"))
        with open(os.path.join(folder, "ckpt.npz"), "rb") as f:
            raw = f.read()
        bad = damaged_bytes(data, raw, opt.state_dict())
        resealed = bad != raw and checkpoint_sealed(bad)
        with open(os.path.join(folder, "ckpt.npz"), "wb") as f:
            f.write(bad)
        path, kind = draw_path(data, folder)
        box = []
        ok = check_call(pool, lambda: box.append(checkpoint.read_state(path)),
                        read_allowed(kind), extra_state=lambda: folder_state(folder),
                        on_error=check_names_file(path, kind))
        if ok:
            assert bad == raw or resealed, "read_state accepted a damaged file"
            assert isinstance(box[0], dict)


@FUZZ
@given(data=st.data())
def test_checkpoint_load(data):
    pool = Pool(data)
    opt, arrays, names = stepped_optimizer(data, pool)
    with tempfile.TemporaryDirectory() as folder:
        source = opt
        if data.draw(st.integers(0, 3)) == 0:      # a checkpoint of another optimizer
            source, _, _ = stepped_optimizer(data, pool)
        source.save(os.path.join(folder, "ckpt.npz"))
        with open(os.path.join(folder, "ckpt.npz"), "rb") as f:
            raw = f.read()
        with open(os.path.join(folder, "ckpt.npz"), "wb") as f:
            f.write(damaged_bytes(data, raw, source.state_dict()))
        path, kind = draw_path(data, folder)
        how = data.draw(st.sampled_from(["method", "function"]))
        call = ((lambda: opt.load(path)) if how == "method"
                else (lambda: checkpoint.load(opt, path)))
        if check_call(pool, call, read_allowed(kind),
                      extra_state=lambda: (opt_state(opt), folder_state(folder)),
                      on_error=check_names_file(path, kind)):
            check_still_steps(data, pool, opt, arrays, names)


@FUZZ
@given(data=st.data())
def test_checkpoint_write_state(data):
    pool = Pool(data)
    opt, _, _ = stepped_optimizer(data, pool)
    with tempfile.TemporaryDirectory() as folder:
        if data.draw(st.booleans()):              # an older checkpoint to keep intact
            opt.save(os.path.join(folder, "ckpt.npz"))
        path, kind = draw_path(data, folder)
        sd = opt.state_dict()
        how = data.draw(st.sampled_from(["method", "save", "function", "spoiled",
                                         "spoiled", "object_array"]))
        if how == "method":
            call = lambda: opt.save(path)  # noqa: E731
        elif how == "save":
            call = lambda: checkpoint.save(opt, path)  # noqa: E731
        else:
            if how == "spoiled":
                sd = spoil_state_dict(data, sd)
            elif how == "object_array" and sd["state"]:
                entry = sd["state"][min(sd["state"])]
                entry[data.draw(st.sampled_from(sorted(entry)))] = np.array([object()], object)
            call = lambda: checkpoint.write_state(path, sd)  # noqa: E731
        allowed = (TypeError, ValueError) + ((OSError,) if kind in (
            "folder", "no_folder") else ())
        if check_call(pool, call, allowed, extra_state=lambda: folder_state(folder)):
            back = checkpoint.read_state(path)     # what was written reads back
            assert isinstance(back, dict)
            if how in ("method", "save"):
                assert same_state(back, sd)


def same_state(a, b):
    """Two state_dicts hold the same steps and the same arrays, bit for bit."""
    if sorted(a["state"]) != sorted(b["state"]):
        return False
    for i, entry in a["state"].items():
        other = b["state"][i]
        if sorted(entry) != sorted(other):
            return False
        for kind, value in entry.items():
            if kind == "step":
                if value != other[kind]:
                    return False
            elif value.dtype != other[kind].dtype or value.tobytes() != other[kind].tobytes():
                return False
    return a["param_groups"] == b["param_groups"] and a["skipped_steps"] == b["skipped_steps"]


# ---------------------------------------------------------------------------
# Configuration

@pytest.mark.parametrize("what", ["set_num_threads", "set_simd_level", "show_config"])
@FUZZ
@given(data=st.data())
def test_config(what, data):
    pool = Pool(data)
    threads, level = fastopt.get_num_threads(), fastopt.get_simd_level()
    value = data.draw(st.one_of(st.sampled_from(
        [None, 1, 2, 3, 64, 0, -1, 2 ** 31, 2 ** 64, np.int64(2), "baseline", "avx2",
         "avx512", "AVX2", "sse", "", io.StringIO()]), JUNK))
    try:
        check_call(pool, lambda: getattr(fastopt, what)(value),
                   extra_state=lambda: (fastopt.get_num_threads(), fastopt.get_simd_level()))
    finally:
        fastopt.set_num_threads(None)
        fastopt.set_simd_level(level)
    assert fastopt.get_num_threads() == threads


# ---------------------------------------------------------------------------
# Data, datasets and the model: sizes stay small or are absurd (refused at
# once); sizes in between would allocate gigabytes.  MemoryError is what
# NumPy raises for an absurd size and is allowed here.

SIZE_JUNK = JUNK.filter(lambda x: not (isinstance(x, int) and 10 ** 4 < abs(x) < 2 ** 62))
SIZES = st.one_of(st.integers(-3, 400), st.sampled_from([2 ** 40, 2 ** 62, 2 ** 63, 2 ** 70]),
                  SIZE_JUNK)
SEEDS = st.one_of(st.integers(-2, 2 ** 33), st.sampled_from(
    [np.random.RandomState(1), np.random.default_rng(2), None, np.int64(5)]), SIZE_JUNK)
DTYPES = st.one_of(st.sampled_from([np.float32, np.float64, "float32", "f8", np.float16,
                                    np.int64, np.complex128, ">f8", np.longdouble, None,
                                    "foo"]), SIZE_JUNK)
DATA_ALLOWED = (TypeError, ValueError, MemoryError)


def maybe(data, kw, name, strategy):
    if data.draw(st.booleans()):
        kw[name] = data.draw(strategy)


@FUZZ
@given(data=st.data())
def test_make_moons(data):
    pool = Pool(data)
    kw = {}
    maybe(data, kw, "noise", st.one_of(st.floats(-1, 1), JUNK))
    maybe(data, kw, "shuffle", st.one_of(st.booleans(), JUNK))
    maybe(data, kw, "random_state", SEEDS)
    maybe(data, kw, "dtype", DTYPES)
    maybe(data, kw, "layout", st.one_of(st.sampled_from(["rows", "columns", "Rows"]), JUNK))
    n = data.draw(st.one_of(SIZES, st.tuples(SIZES, SIZES)))
    box = []
    if check_call(pool, lambda: box.append(datasets.make_moons(n, **kw)), DATA_ALLOWED):
        X, y = box[0]
        assert X.dtype == np.dtype(kw.get("dtype", np.float64)) and X.size == 2 * y.size


@FUZZ
@given(data=st.data())
def test_course_moons(data):
    pool = Pool(data)
    kw = {}
    maybe(data, kw, "dtype", DTYPES)
    check_call(pool, lambda: datasets.course_moons(**kw), DATA_ALLOWED)


@FUZZ
@given(data=st.data())
def test_check_random_state(data):
    pool = Pool(data)
    check_call(pool, lambda: fastopt.course.data.check_random_state(data.draw(SEEDS)))


def examples_pair(data, pool):
    m = data.draw(st.integers(0, 9))
    axis = data.draw(st.sampled_from([0, 1]))
    shape_x = (m, 2) if axis == 0 else (2, m)
    shape_y = (m,) if axis == 0 else (1, m)
    X = pool.array(shape_x, data.draw(st.sampled_from(FLOATS)),
                   data.draw(st.sampled_from(["none"] * 4 + [None])))
    Y = pool.array(shape_y, data.draw(st.sampled_from(FLOATS)),
                   data.draw(st.sampled_from(["none"] * 4 + [None])))
    return X, Y, axis


@FUZZ
@given(data=st.data())
def test_minibatches(data):
    pool = Pool(data)
    X, Y, axis = examples_pair(data, pool)
    kw = {}
    maybe(data, kw, "shuffle", st.one_of(st.booleans(), JUNK))
    maybe(data, kw, "seed", SEEDS)
    kw["axis"] = data.draw(st.one_of(st.just(axis), st.integers(-3, 3), JUNK))
    size = data.draw(SIZES)
    check_call(pool, lambda: list(fastopt.course.data.minibatches(X, Y, size, **kw)), DATA_ALLOWED)


@FUZZ
@given(data=st.data())
def test_course_minibatches(data):
    pool = Pool(data)
    X, Y, _ = examples_pair(data, pool)
    kw = {}
    maybe(data, kw, "batch_size", SIZES)
    epoch = data.draw(st.one_of(st.integers(-2, 2 ** 33), SIZE_JUNK))
    check_call(pool, lambda: list(fastopt.course.data.course_minibatches(X, Y, epoch, **kw)),
               DATA_ALLOWED)


LAYERS = st.one_of(st.lists(st.one_of(st.integers(-1, 6), SIZES), max_size=5),
                   st.sampled_from([[2, 5, 2, 1], (2, 3, 1), [2, 2 ** 40, 1]]), SIZE_JUNK)


@FUZZ
@given(data=st.data())
def test_he_init(data):
    pool = Pool(data)
    kw = {}
    maybe(data, kw, "random_state", SEEDS)
    maybe(data, kw, "dtype", DTYPES)
    check_call(pool, lambda: models.he_init(data.draw(LAYERS), **kw), DATA_ALLOWED)


@FUZZ
@given(data=st.data())
def test_mlp(data):
    pool = Pool(data)
    dims = data.draw(st.one_of(st.sampled_from([[2, 5, 2, 1], [2, 3, 2], [3, 1]]), LAYERS))
    kw = {}
    maybe(data, kw, "dtype", DTYPES)
    maybe(data, kw, "random_state", SEEDS)
    if data.draw(st.integers(0, 3)) == 0 and isinstance(dims, list) and len(dims) >= 2 \
            and all(type(n) is int and 1 <= n <= 6 for n in dims):
        dtype = data.draw(st.sampled_from(FLOATS))
        params = {}
        for l in range(1, len(dims)):
            params[f"W{l}"] = pool.array((dims[l], dims[l - 1]), dtype,
                                         data.draw(st.sampled_from(["none"] * 6 + [None])))
            params[f"b{l}"] = pool.array((dims[l], 1), dtype,
                                         data.draw(st.sampled_from(["none"] * 6 + [None])))
        if data.draw(st.integers(0, 5)) == 0:
            params.pop(data.draw(st.sampled_from(sorted(params))))
        kw["params"] = params if data.draw(st.integers(0, 9)) else data.draw(JUNK)
    box = []
    if not check_call(pool, lambda: box.append(models.MLP(dims, **kw)), DATA_ALLOWED):
        return
    model = box[0]
    pool.arrays += list(model.params.values())
    n0, nL = model.layer_dims[0], model.layer_dims[-1]
    forwarded = False
    for _ in range(data.draw(st.integers(1, 4))):
        what = data.draw(st.sampled_from(["forward", "cost", "backward", "forward_backward",
                                          "predict", "accuracy"]))
        m = data.draw(st.integers(0, 5))
        X = pool.array((n0, m), data.draw(st.sampled_from(FLOATS)),
                       data.draw(st.sampled_from(["none"] * 4 + [None])))
        Y = pool.array((nL, m), data.draw(st.sampled_from(FLOATS)),
                       data.draw(st.sampled_from(["none"] * 4 + [None])))
        grads = {}
        if data.draw(st.integers(0, 3)) == 0:
            grads = {"grads": {k: pool.array(v.shape, v.dtype, data.draw(
                st.sampled_from(["none"] * 4 + [None]))) for k, v in model.grads.items()}}
        call = {"forward": lambda: model.forward(X), "cost": lambda: model.cost(Y),
                "backward": lambda: model.backward(Y, **grads),
                "forward_backward": lambda: model.forward_backward(X, Y, **grads),
                "predict": lambda: model.predict(X),
                "accuracy": lambda: model.accuracy(X, Y)}[what]
        # cost and backward before any forward pass: RuntimeError (documented)
        allowed = DATA_ALLOWED + ((RuntimeError,) if what in ("cost", "backward")
                                  and not forwarded else ())
        if check_call(pool, call, allowed) and what != "cost" and what != "backward":
            forwarded = True


# ---------------------------------------------------------------------------
# Regressions: bugs the fuzzing found, each pinned by a direct test (the first
# used to crash the interpreter, so its reproducers run in a subprocess)


def _run(code):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


SHORT_LABELS = [
    "many('sgd')([p], [g32], labels=[])",
    "many('adam')([p, p.copy()], [g, g[:2]], [p.copy(), p.copy()], "
    "[p.copy(), p.copy()], step=1, labels=['a'])",
    "_core.grad_sumsq([g, g32], labels=())",
]


@pytest.mark.parametrize("call", SHORT_LABELS)
def test_short_labels_raise(call):
    """Regression: labels shorter than the lists used to be read past their
    end (boundscheck=False) and crash; now an error.  In a subprocess, so
    that a crash fails this test only."""
    r = _run(f"""
        import numpy as np
        from fastopt import _core
        def many(name):
            return lambda ps, gs, *s, **k: _core.step_many(name, ps, gs, list(s), **k)
        p = np.ones(3); g = np.ones(3); g32 = g.astype(np.float32)
        try:
            {call}
        except (TypeError, ValueError) as e:
            print("raised", type(e).__name__)
    """)
    assert r.returncode == 0 and "raised" in r.stdout, (r.returncode, r.stderr[-500:])


HUGE_INT = [
    "fastopt.functional.sgd(p, g, lr=10**400)",
    "fastopt.SGD([p], lr=10**400)",
    "fastopt.clip_grad_norm_([g], 10**400)",
    "fastopt.clip_grad_value_([g], 10**400)",
    "fastopt.lr_scheduler.step_lr(10**400, 1, 2)",
]


@pytest.mark.parametrize("call", HUGE_INT)
def test_huge_int_hyperparameter_raises_valueerror(call):
    """A Python int beyond the float range is refused with ValueError, not
    the OverflowError that float() raises."""
    p, g = np.ones(3), np.ones(3)
    with pytest.raises(ValueError, match="outside the float range"):
        eval(call, {"fastopt": fastopt, "p": p, "g": g})


POWER_OVERFLOW = [
    "lr_scheduler.exponential_lr(0.1, 104, gamma=921.0)",
    "lr_scheduler.step_lr(0.1, 400, step_size=1, gamma=10.0)",
    "lr_scheduler.ExponentialLR(SGD([np.zeros(2)], lr=0.1), gamma=10.0).step(400)",
]


@pytest.mark.parametrize("call", POWER_OVERFLOW)
def test_schedule_power_overflow_gives_an_infinite_rate(call):
    """gamma**e beyond the float range is an infinite rate (which an
    optimizer then refuses), not an OverflowError."""
    out = eval(call, {"lr_scheduler": lr_scheduler, "SGD": SGD, "np": np})
    if out is not None:
        assert out == float("inf")


@pytest.mark.parametrize("bad", [0, False, "2", None])
def test_scheduler_load_state_dict_checks_values(bad):
    opt = SGD([np.zeros(2)], lr=0.1)
    sched = lr_scheduler.InverseTimeDecayLR(opt, decay_rate=1.0, time_interval=2)
    before = dict(sched.__dict__)
    sd = sched.state_dict()
    sd["time_interval"] = bad
    with pytest.raises(ValueError, match="cannot use"):
        sched.load_state_dict(sd)
    assert sched.__dict__ == before


@pytest.mark.parametrize("key, bad", [
    ("gamma", -2 ** 1100), ("gamma", -1.0), ("gamma", "0.5"), ("base_lrs", [2 ** 1100]),
    ("base_lrs", 0.1), ("last_epoch", 2 ** 70), ("last_epoch", 1.5), ("_last_lr", None),
], ids=lambda v: v if isinstance(v, str) else repr(v)[:12])
def test_scheduler_load_state_dict_checks_like_the_constructor(key, bad):
    """Regression: a state accepted because its values computed at the saved
    epoch could fail at the next one (a huge int gamma); every restored
    attribute now goes through the constructor's check."""
    opt = SGD([np.zeros(2)], lr=0.1)
    sched = lr_scheduler.ExponentialLR(opt, gamma=0.9)
    before = dict(sched.__dict__)
    sd = sched.state_dict()
    sd[key] = bad
    with pytest.raises(ValueError, match="cannot use"):
        sched.load_state_dict(sd)
    assert sched.__dict__ == before
    sched.step(4)


@pytest.mark.parametrize("call, error, match", [
    ("lr_scheduler.cosine_annealing_lr(0.1, 2 ** 1100, 5)", ValueError, "epoch must be <= 2"),
    ("lr_scheduler.linear_lr(0.1, 1, total_iters=2 ** 63)", ValueError, "total_iters"),
    ("datasets.make_moons(10, noise=2 ** 1100)", ValueError, "noise"),
    ("datasets.make_moons(10, noise='0.2')", TypeError, "noise"),
    ("datasets.make_moons(10, noise=-0.1)", ValueError, "noise"),
    ("datasets.make_moons(10, shuffle='no')", TypeError, "shuffle"),
    ("datasets.make_moons(10, dtype=',')", TypeError, "dtype"),
    ("fastopt.course.data.minibatches(np.zeros(4), np.zeros(4), 2, shuffle='no')", TypeError,
     "shuffle"),
    ("models.MLP([2, 1], dtype=',')", TypeError, "dtype"),
    ("models.MLP([2, 1]).forward(2 ** 1100)", ValueError, "X cannot be converted"),
    ("fastopt.FlatParams([np.zeros(2)], dtype=',')", TypeError, "dtype"),
    ("fastopt.show_config(file=1.0)", TypeError, "file"),
    ("checkpoint.read_state(3)", TypeError, "path must be"),
    ("fastopt.clip_grad_norm_([np.ones(2)], 1.0, norm_type=2 ** 1100)", ValueError,
     "norm_type must be 2 or inf"),
])
def test_found_by_fuzzing(call, error, match):
    """Each of these used to escape as OverflowError, SyntaxError or
    AttributeError, or (shuffle) to be taken as true."""
    with pytest.raises(error, match=match):
        eval(call, {"lr_scheduler": lr_scheduler, "datasets": datasets, "models": models,
                    "fastopt": fastopt, "np": np, "checkpoint": checkpoint})
