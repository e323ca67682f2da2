"""Golden bits: the exact results of every rule, option and dtype through the
public API, recorded in tests/data/golden_bits.json.

The other suites compare the kernels with fastopt.reference; this one pins
the bits themselves, so that a redesign of the internals (kernels, the C
boundary, buckets, plans, state_dict) that was meant to change nothing is
shown to change nothing.

Each case runs STEPS steps from seeded inputs and records a sha256 over every
parameter and state array (name, dtype, shape, little-endian bytes) after
step 1 (first-step paths) and after the last step.  Cases:
  - fn/<config>/<dtype>/n=<size>: fastopt.functional.<rule> on arrays
    allocated here, at SIZES (70001 is above the 2**15 parallel threshold);
  - class/<config>/<dtype>: the optimizer class with the same
    hyperparameters over a model of MODEL_SHAPES, hashed through
    opt.state_dict() (arrays, kinds and step counts) plus the parameters;
  - engine/<Class>/<scenario>/<dtype>: parameter groups, None grads,
    mixed dtypes, a state_dict round trip into a fresh optimizer,
    skip_nonfinite with a NaN step, options switched on mid-run, named
    parameters, FlatParams, a parameter above the parallel threshold.
"<rule>-defaults" configs pass no hyperparameter at all, so that a changed
default shows.

Inputs come from np.random.default_rng(zlib.crc32(case id)) and use only
raw 64-bit draws, powers of two and rounding casts, exact everywhere.  The
rules' bias corrections come from fastopt's own powers (fo_math.h), not the
C library; the digests do not depend on the SIMD level or the thread count
(--regenerate checks that).  Long runs on other machines are pinned by
tests/test_golden_trajectories.py.

test_ids_match fails when a case is added or removed without regenerating.
Regenerate only for a deliberate change of behaviour, and say so in the
commit:

    python tests/test_golden_bits.py --regenerate
"""
import dataclasses
import hashlib
import itertools
import json
import os
import pathlib
import sys
import zlib
from typing import Callable

# as conftest does, for the script mode: idle OpenMP workers must not spin
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fastopt  # noqa: E402
from fastopt import functional  # noqa: E402
from fastopt import SGD, Adagrad, Adam, AdamW, Momentum, RMSprop  # noqa: E402

DATA = pathlib.Path(__file__).parent / "data" / "golden_bits.json"
STEPS = 12
RECORDED = (1, STEPS)
DTYPES = (np.float32, np.float64)
SIZES = (1, 17, 1000, 70001)
MODEL_SHAPES = ((3, 5), (5,), (7, 2, 3))
THREADS = 2          # so that sizes above the threshold really split


# ---------------------------------------------------------------------------
# Configurations: test_kernels' grid, frozen here so that editing that table
# does not move the golden ids.

@dataclasses.dataclass(frozen=True)
class Config:
    id: str
    rule: str          # a fastopt.functional name, or "adamw" (class only)
    hp: dict


_SHORT = {"momentum": "mom", "dampening": "damp", "weight_decay": "wd",
          "decoupled_weight_decay": "decoupled", "lr_decay": "lrdecay",
          "initial_accumulator_value": "init"}
_UNSHOWN = ("lr", "eps", "betas", "alpha")   # the same in every config of a rule


def _config(rule, **hp):
    shown = [_SHORT.get(k, k) if v is True else f"{_SHORT.get(k, k)}{v:g}"
             for k, v in hp.items()
             if v is not False and v != 0 and k not in _UNSHOWN]
    return Config("-".join([rule] + shown) if shown else f"{rule}-plain", rule, hp)


def _defaults(rule):
    return Config(f"{rule}-defaults", rule, {})


CONFIGS = (
    # nesterov needs momentum > 0 and no dampening
    [_config("sgd", lr=0.05, momentum=mom, dampening=damp, nesterov=nest,
             weight_decay=wd, maximize=mx)
     for mom in (0.0, 0.9) for damp in (0.0, 0.1) for nest in (False, True)
     for wd in (0.0, 0.01) for mx in (False, True)
     if not (nest and (mom == 0 or damp != 0))]
    + [_config("momentum", lr=0.05, beta=beta, weight_decay=wd, maximize=mx)
       for beta in (0.9, 0.5) for wd in (0.0, 0.01) for mx in (False, True)]
    + [_config("rmsprop", lr=0.01, alpha=0.99, eps=1e-8, centered=c,
               momentum=mom, weight_decay=wd, maximize=mx)
       for c in (False, True) for mom in (0.0, 0.9) for wd in (0.0, 0.01)
       for mx in (False, True)]
    + [_config("adam", lr=0.01, betas=(0.9, 0.999), eps=1e-8, amsgrad=ams,
               weight_decay=wd, decoupled_weight_decay=dec, maximize=mx)
       for ams in (False, True) for wd in (0.0, 0.01) for dec in (False, True)
       for mx in (False, True)]
    + [_config("adagrad", lr=0.1, lr_decay=lrd, weight_decay=wd, eps=1e-10,
               maximize=mx, initial_accumulator_value=init)
       for lrd in (0.0, 0.01) for wd in (0.0, 0.01) for mx in (False, True)
       for init in (0.0, 0.1)]
    + [_defaults(rule) for rule in ("sgd", "momentum", "rmsprop", "adam", "adagrad")]
)

# AdamW's weight_decay is left at its default (1e-2) unless shown
ADAMW_CONFIGS = (
    [_config("adamw", lr=0.01, betas=(0.9, 0.999), eps=1e-8, amsgrad=ams,
             maximize=mx, **({"weight_decay": wd} if wd else {}))
     for ams in (False, True) for mx in (False, True) for wd in (None, 0.1)]
    + [_defaults("adamw")]
)

CLASSES = {"sgd": SGD, "momentum": Momentum, "rmsprop": RMSprop, "adam": Adam,
           "adagrad": Adagrad, "adamw": AdamW}


# ---------------------------------------------------------------------------
# Inputs and digests

def _rng(case_id):
    # crc32, not hash(): str hashes are salted per process
    return np.random.default_rng(zlib.crc32(case_id.encode()))


# a draw's low byte picks a scale: 2**-12 .. 2**3, or 0 for one in 16
_SCALES = np.array([2.0 ** ((k & 15) - 12) for k in range(256)])
_SCALES_ZEROS = np.where(np.arange(256) >> 4 == 0, 0.0, _SCALES)


def _values(rng, shape, dtype, zeros=True):
    """Values over 16 binary orders of magnitude; with `zeros`, about 1/16
    exact zeros of either sign (a sparse gradient's entries), except in a
    one-element array, whose step would then be void.  Raw 64-bit draws
    scaled by powers of two: exact everywhere, where standard_normal's
    ziggurat calls exp and log."""
    n = int(np.prod(shape))
    raw = rng.bit_generator.random_raw(n).view(np.int64)
    scales = _SCALES_ZEROS if zeros and n > 1 else _SCALES
    # bits 11..63: [-1, 1) with 53 bits; bits 0..7: the scale
    x = (((raw >> 11) & (2 ** 53 - 1)).astype(np.float64) * 2.0 ** -52 - 1.0
         ) * scales.take(raw & 255)
    return x.astype(dtype).reshape(shape)


def _digest(arrays, extra=""):
    """sha256 over (name, dtype, shape, little-endian bytes) of each array,
    then `extra`.  Every array must be finite: no case is meant to make a
    NaN or an infinity, and a hash of one would record a failure as golden."""
    h = hashlib.sha256()
    for name, a in arrays:
        assert np.isfinite(a).all(), f"{name} is not finite"
        h.update(f"{name}:{a.dtype.name}:{a.shape};".encode())
        h.update(np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes())
    h.update(extra.encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------
# Door (a): fastopt.functional

def _always(hp):
    return True


# each function's state arguments in positional order, and when it needs them
SLOTS = {
    "sgd": (("momentum_buffer", lambda hp: hp.get("momentum", 0) != 0),),
    "momentum": (("velocity", _always),),
    "rmsprop": (("square_avg", _always),
                ("grad_avg", lambda hp: hp.get("centered", False)),
                ("momentum_buffer", lambda hp: hp.get("momentum", 0) != 0)),
    "adam": (("exp_avg", _always), ("exp_avg_sq", _always),
             ("max_exp_avg_sq", lambda hp: hp.get("amsgrad", False))),
    "adagrad": (("state_sum", _always),),
}
TAKES_STEP = ("sgd", "adam", "adagrad")


def run_functional(case_id, cfg, dtype, n):
    rng = _rng(case_id)
    fn = getattr(functional, cfg.rule)
    kw = dict(cfg.hp)
    # a state-sum start value, not an argument of the function
    start = kw.pop("initial_accumulator_value", 0.0)
    param = _values(rng, (n,), dtype, zeros=False)
    states = [(name, np.full(n, start, dtype) if need(cfg.hp) else None)
              for name, need in SLOTS[cfg.rule]]
    # trailing unused slots are left out, so their defaults are used
    while states and states[-1][1] is None:
        states.pop()
    out = {}
    for t in range(1, STEPS + 1):
        grad = _values(rng, (n,), dtype)
        if cfg.rule in TAKES_STEP:
            kw["step"] = t
        fn(param, grad, *(a for _, a in states), **kw)
        if t in RECORDED:
            out[f"step{t}"] = _digest(
                [("param", param)] + [(k, a) for k, a in states if a is not None])
    return out


# ---------------------------------------------------------------------------
# Door (b): the optimizer classes

@dataclasses.dataclass(frozen=True)
class Run:
    """One class trajectory.  groups: (number of parameters, overrides) in
    parameter order, None for one plain list; missing(t, i): parameter i
    gets None at step t; reload_at: after that step, state_dict() into a
    fresh optimizer on copies of the parameters; nan_at: a NaN in the first
    gradient at that step; change_at: {step: overrides of every group}."""
    cls: type
    hp: dict
    shapes: tuple = MODEL_SHAPES
    dtypes: tuple = None            # per parameter; None: all `dtype`
    groups: tuple = None
    missing: Callable = None
    reload_at: int = None
    nan_at: int = None
    skip_nonfinite: bool = False
    change_at: dict = None
    named: bool = False
    flat: bool = False


def _class_digest(opt, params):
    sd = opt.state_dict()
    arrays = [(f"param{i}", p) for i, p in enumerate(params)]
    steps = []
    for i in sorted(sd["state"]):
        entry = sd["state"][i]
        steps.append(f"{i}:{entry['step']}")
        arrays += [(f"state{i}.{k}", entry[k]) for k in sorted(entry) if k != "step"]
    return _digest(arrays, f"steps {' '.join(steps)}; skipped {sd['skipped_steps']}")


def run_class(case_id, run, dtype):
    rng = _rng(case_id)
    dtypes = run.dtypes or (dtype,) * len(run.shapes)
    params = [_values(rng, s, d, zeros=False) for s, d in zip(run.shapes, dtypes)]
    names = [f"p{i}" for i in range(len(params))]
    flat = None
    if run.flat:
        flat = fastopt.FlatParams(params)
        params = flat.params

    def make(params):
        given = dict(zip(names, params)) if run.named else list(params)
        if run.groups is not None:
            given, start = [], 0
            for count, overrides in run.groups:
                part = params[start:start + count]
                given.append({"params": dict(zip(names[start:start + count], part))
                              if run.named else part, **overrides})
                start += count
        kw = {"skip_nonfinite": True} if run.skip_nonfinite else {}
        return run.cls(given, **run.hp, **kw)

    opt = make(params)
    out = {}
    for t in range(1, STEPS + 1):
        grads = [_values(rng, p.shape, p.dtype) for p in params]
        if run.nan_at == t:
            grads[0].flat[0] = np.nan
        if flat is not None:
            for view, g in zip(flat.grads, grads):
                view[...] = g
            grads = flat.grads
        grads = [None if run.missing and run.missing(t, i) else g
                 for i, g in enumerate(grads)]
        for overrides in (run.change_at or {}).get(t, ()):
            for group in opt.param_groups:
                group.update(overrides)
        took = opt.step(dict(zip(names, grads)) if run.named else grads)
        assert took is (run.nan_at != t), f"step {t} returned {took}"
        if t in RECORDED:
            out[f"step{t}"] = _class_digest(opt, params)
        if run.reload_at == t:
            sd = opt.state_dict()
            params = [p.copy() for p in params]
            flat = None     # the copies are separate arrays from here on
            opt = make(params)
            opt.load_state_dict(sd)
    return out


# Per class: hyperparameters that switch on every state and most options,
# and overrides for a second parameter group that differ in each of them.
REPRESENTATIVE = {
    SGD: (dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
          dict(lr=0.02, momentum=0.5, nesterov=False, dampening=0.1, maximize=True)),
    Momentum: (dict(lr=0.05, beta=0.9, weight_decay=0.01, maximize=True),
               dict(lr=0.02, beta=0.5, weight_decay=0.0, maximize=False)),
    RMSprop: (dict(lr=0.01, centered=True, momentum=0.9, weight_decay=0.01),
              dict(lr=0.005, alpha=0.9, centered=False, momentum=0.0, maximize=True)),
    Adam: (dict(lr=0.01, amsgrad=True, weight_decay=0.01),
           dict(lr=0.02, betas=(0.8, 0.99), amsgrad=False,
                decoupled_weight_decay=True, eps=1e-6)),
    AdamW: (dict(lr=0.01, amsgrad=True),
            dict(lr=0.02, betas=(0.8, 0.99), amsgrad=False, weight_decay=0.1)),
    Adagrad: (dict(lr=0.1, lr_decay=0.01, weight_decay=0.01,
                   initial_accumulator_value=0.1),
              dict(lr=0.05, lr_decay=0.0, initial_accumulator_value=0.5,
                   maximize=True)),
}

# Per class: a start with optional states off, and what switches them on
# after some steps (a state kind that starts fresh mid-run).
SWITCH_ON = {
    SGD: (dict(lr=0.05), dict(momentum=0.9)),
    Momentum: (dict(lr=0.05), dict(beta=0.5, weight_decay=0.01)),
    RMSprop: (dict(lr=0.01), dict(centered=True, momentum=0.9)),
    Adam: (dict(lr=0.01), dict(amsgrad=True)),
    AdamW: (dict(lr=0.01), dict(amsgrad=True)),
    Adagrad: (dict(lr=0.1), dict(lr_decay=0.01)),
}


def _gaps(t, i):
    # parameter 1 misses steps 1, 4 and 5, parameter 2 step 9: step counts
    # diverge, and parameter 1's first step is not the model's
    return (i == 1 and t in (1, 4, 5)) or (i == 2 and t == 9)


def _scenarios(cls):
    """{name: (Run, dtypes)}; dtypes None means the Run fixes them."""
    hp, other = REPRESENTATIVE[cls]
    start, switch = SWITCH_ON[cls]
    both = DTYPES
    mixed = (np.float32, np.float64, np.float32)
    return {
        "groups": (Run(cls, hp, groups=((2, {}), (1, other))), both),
        "none-grads": (Run(cls, hp, missing=_gaps), both),
        "mixed-dtypes": (Run(cls, hp, dtypes=mixed), None),
        "reload": (Run(cls, hp, reload_at=6), both),
        "reload-after-gaps": (Run(cls, hp, missing=_gaps, reload_at=5), both),
        "skip-nonfinite": (Run(cls, hp, nan_at=3, skip_nonfinite=True), both),
        # as a scheduler does: lr halved, then an option turned on
        "switch-on": (Run(cls, start, change_at={
            4: ({"lr": start["lr"] / 2},), 7: (switch,)}), both),
        "named": (Run(cls, hp, named=True, missing=_gaps), both),
        "flat": (Run(cls, hp, flat=True), both),
        "large": (Run(cls, hp, shapes=((3, 5), (271, 263), (5,))), both),
        # parameters 0 and 1 share a bucket, so their step counts diverge
        "everything": (Run(cls, hp, shapes=MODEL_SHAPES + ((4,),),
                           dtypes=(np.float32, np.float32, np.float64, np.float32),
                           groups=((3, {}), (1, other)), missing=_gaps,
                           reload_at=6, nan_at=8, skip_nonfinite=True,
                           named=True), None),
    }


# ---------------------------------------------------------------------------
# The cases

def _dtype_name(dtype):
    return np.dtype(dtype).name


def all_cases():
    """{case id: function returning {"step1": hex, "step12": hex}}."""
    cases = {}

    def add(case_id, fn, *args):
        assert case_id not in cases, case_id
        cases[case_id] = lambda: fn(case_id, *args)

    for cfg, dtype, n in itertools.product(CONFIGS, DTYPES, SIZES):
        add(f"fn/{cfg.id}/{_dtype_name(dtype)}/n={n}", run_functional, cfg, dtype, n)
    for cfg, dtype in itertools.product(CONFIGS + ADAMW_CONFIGS, DTYPES):
        add(f"class/{cfg.id}/{_dtype_name(dtype)}", run_class,
            Run(CLASSES[cfg.rule], cfg.hp), dtype)
    for cls in REPRESENTATIVE:
        for name, (run, dtypes) in _scenarios(cls).items():
            for dtype in dtypes or (None,):
                label = _dtype_name(dtype) if dtype else "mixed"
                add(f"engine/{cls.__name__}/{name}/{label}", run_class, run, dtype)
    return cases


CASES = all_cases()


def load_golden():
    if not DATA.exists():
        return {}
    with open(DATA) as f:
        return json.load(f)


GOLDEN = load_golden()


@pytest.fixture(autouse=True, scope="module")
def threads():
    saved = fastopt.get_num_threads()
    fastopt.set_num_threads(THREADS)
    yield
    fastopt.set_num_threads(saved)


def test_ids_match():
    missing = sorted(set(CASES) - set(GOLDEN))
    extra = sorted(set(GOLDEN) - set(CASES))
    assert not missing and not extra, (
        f"generated but not stored: {missing[:10]} ({len(missing)}); stored "
        f"but not generated: {extra[:10]} ({len(extra)}); regenerate only if "
        f"the change is deliberate")


@pytest.mark.parametrize("case_id", sorted(GOLDEN))
def test_golden(case_id):
    if case_id not in CASES:
        pytest.fail(f"{case_id} is stored but no longer generated")
    got, want = CASES[case_id](), GOLDEN[case_id]
    differ = [k for k in want if got.get(k) != want[k]]
    assert not differ and got.keys() == want.keys(), (
        f"bits differ after {', '.join(differ) or 'other steps'}: "
        f"got {got}, stored {want}")


# ---------------------------------------------------------------------------
# Regeneration

def regenerate():
    """Compute every case at two execution environments, refuse if they
    differ (the digests must not depend on them), then write DATA."""
    saved = fastopt.get_simd_level(), fastopt.get_num_threads()
    try:
        fastopt.set_num_threads(THREADS)
        digests = {k: fn() for k, fn in CASES.items()}
        fastopt.set_simd_level("baseline")
        fastopt.set_num_threads(1)
        again = {k: fn() for k, fn in CASES.items()}
    finally:
        fastopt.set_simd_level(saved[0])
        fastopt.set_num_threads(saved[1])
    differ = [k for k in digests if digests[k] != again[k]]
    if differ:
        sys.exit(f"not written: {len(differ)} cases differ between "
                 f"{saved[0]}/{THREADS} threads and baseline/1 thread, "
                 f"e.g. {differ[:5]}")
    DATA.parent.mkdir(exist_ok=True)
    # one case per line: a changed case is a one-line diff
    lines = [f"  {json.dumps(k)}: {json.dumps(digests[k], sort_keys=True)}"
             for k in sorted(digests)]
    DATA.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"wrote {len(digests)} cases to {DATA}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(__doc__)
    regenerate()
