"""Bad inputs: the right exception, a message naming the argument, and no
array touched.

BAD_INPUTS is the table.  Each case starts from a valid call of one rule
(VALID: every state of the rule switched on, so every slot exists) and
changes it: `hp` overrides hyperparameters, `edit` replaces arrays.  The test
snapshots every array reachable from the call (and the buffers that views
share) as bytes before the call and compares after.
"""
import dataclasses
import re
from typing import Callable, Optional

import numpy as np
import pytest

from fastopt import _core, functional
from fastopt.rules import RULES
from conftest import many

N = 8
F32 = np.float32

VALID = {
    "sgd": (functional.sgd, ("param", "grad", "momentum_buffer"),
            dict(lr=0.1, momentum=0.9, step=1)),
    "momentum": (functional.momentum, ("param", "grad", "velocity"),
                 dict(lr=0.1, beta=0.9)),
    "rmsprop": (functional.rmsprop,
                ("param", "grad", "square_avg", "grad_avg", "momentum_buffer"),
                dict(lr=0.1, centered=True, momentum=0.9)),
    "adam": (functional.adam,
             ("param", "grad", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
             dict(lr=0.1, amsgrad=True, step=1)),
    "adagrad": (functional.adagrad, ("param", "grad", "state_sum"),
                dict(lr=0.1, step=1)),
}
HAND_WRITTEN = tuple(VALID)


def _switched_on(rule):
    """Hyperparameters that make every state of the rule needed."""
    hp = {s.when: True if rule.hyper(s.when).check == "flag" else 0.5
          for s in rule.states if s.when is not None}
    return {**hp, **({"step": 1} if rule.step is not None else {})}


# every other rule of the table, with every state switched on
VALID.update({name: (getattr(functional, name),
                     ("param", "grad") + tuple(s.name for s in rule.states)
                     + rule.scalar_keys,
                     _switched_on(rule))
              for name, rule in RULES.items() if name not in VALID})
# per-tensor scalar states: float64 arrays of one element, checked apart
SCALARS = {rule: RULES[rule].scalar_keys for rule in VALID}
STATES = {rule: tuple(n for n in names[2:] if n not in SCALARS[rule])
          for rule, (_, names, _) in VALID.items()}
WRITABLE = {rule: ("param",) + STATES[rule] for rule in VALID}
ALL_SLOTS = {rule: tuple(n for n in names if n not in SCALARS[rule])
             for rule, (_, names, _) in VALID.items()}


def _valid_arrays(rule, dtype=F32):
    names = ALL_SLOTS[rule]
    # a rule with a matrix step takes matrices only
    shape = (2, N // 2) if RULES[rule].matrix else N
    arrays = {name: np.zeros(shape, dtype) for name in names}
    arrays.update({name: np.ones(1) for name in SCALARS[rule]})
    arrays["param"][...] = np.arange(N).reshape(shape)
    arrays["grad"][...] = 0.5
    return arrays


@dataclasses.dataclass
class Bad:
    id: str
    rule: str                       # a rule of VALID, or "call" for `call`
    exc: type
    match: str
    hp: dict = dataclasses.field(default_factory=dict)
    edit: Optional[Callable] = None  # arrays dict -> None, edits in place
    call: Optional[Callable] = None  # () -> (fn, args, kwargs), rule "call"
    xfail: Optional[str] = None


# ---- array edits -----------------------------------------------------------

def _set(slot, make):
    def edit(arrays):
        arrays[slot] = make(arrays[slot])
    return edit


def _noncontig(a):
    buf = np.zeros(2 * a.size, a.dtype)
    return buf[::2]


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _swapped(a):
    return a.astype(a.dtype.newbyteorder())


def _overlap(first, second, shift):
    """first and second become views of one buffer, `shift` elements apart."""
    def edit(arrays):
        buf = np.zeros(N + shift, arrays[first].dtype)
        arrays[first] = buf[:N]
        arrays[second] = buf[shift:shift + N]
    return edit


def _same(first, second):
    def edit(arrays):
        arrays[second] = arrays[first]
    return edit


def _missing(slot):
    def edit(arrays):
        arrays[slot] = None
    return edit


BAD_DTYPES = [("int64", np.int64), ("int32", np.int32), ("float16", np.float16),
              ("complex64", np.complex64), ("object", object)]


def _array_cases():
    cases = []
    for rule in VALID:
        for slot in ALL_SLOTS[rule]:
            name = slot
            for dname, dt in BAD_DTYPES:
                cases.append(Bad(f"{rule}-{slot}-{dname}", rule, TypeError,
                                 rf"^{name} must have dtype float32 or float64",
                                 edit=_set(slot, lambda a, dt=dt: a.astype(dt))))
            if slot != "param":
                # float64 among float32: named against the param
                cases.append(Bad(f"{rule}-{slot}-float64-with-float32", rule,
                                 TypeError, rf"^{name} has dtype float64 but "
                                 r"param has dtype float32",
                                 edit=_set(slot, lambda a: a.astype(np.float64))))
                cases.append(Bad(f"{rule}-{slot}-size-mismatch", rule,
                                 ValueError, rf"^{name} has {N + 1} elements "
                                 rf"but param has {N}",
                                 edit=_set(slot, lambda a: np.zeros(N + 1, a.dtype))))
                cases.append(Bad(f"{rule}-{slot}-2d-size-mismatch", rule,
                                 ValueError, rf"^{name} has {N * 2} elements",
                                 edit=_set(slot, lambda a: np.zeros((2, N), a.dtype))))
            cases.append(Bad(f"{rule}-{slot}-noncontiguous", rule, ValueError,
                             rf"^{name} must be C-contiguous",
                             edit=_set(slot, _noncontig)))
            cases.append(Bad(f"{rule}-{slot}-byteswapped", rule, TypeError,
                             rf"^{name} must be in native byte order",
                             edit=_set(slot, _swapped)))
            cases.append(Bad(f"{rule}-{slot}-list", rule, TypeError,
                             rf"^{name} must be a numpy.ndarray, got list",
                             edit=_set(slot, lambda a: a.tolist())))
            cases.append(Bad(f"{rule}-{slot}-scalar", rule, TypeError,
                             rf"^{name} must be a numpy.ndarray, got float",
                             edit=_set(slot, lambda a: 1.0)))
            if slot in WRITABLE[rule]:
                cases.append(Bad(f"{rule}-{slot}-readonly", rule, ValueError,
                                 rf"^{name} is read-only",
                                 edit=_set(slot, _readonly)))
        # overlaps: grad or a state with the param, a state with a state
        slots = ALL_SLOTS[rule]
        pairs = [("param", s) for s in slots[1:]] + \
                [(a, b) for i, a in enumerate(slots[1:], 1) for b in slots[i + 1:]]
        for a, b in pairs:
            either = rf"({b} overlaps {a}|{a} overlaps {b}) in memory"
            cases.append(Bad(f"{rule}-{b}-is-{a}", rule, ValueError, either,
                             edit=_same(a, b)))
            cases.append(Bad(f"{rule}-{b}-overlaps-{a}", rule, ValueError,
                             either, edit=_overlap(a, b, 3)))
            cases.append(Bad(f"{rule}-{b}-overlaps-{a}-by-one", rule,
                             ValueError, either, edit=_overlap(a, b, N - 1)))
    return cases


def _scalar_cases():
    """Per-tensor scalar states: a writable float64 array of one element,
    apart from every other array of the call."""
    cases = []
    for rule in VALID:
        scalars = SCALARS[rule]
        for slot in scalars:
            for label, make in (("float32", lambda a: a.astype(np.float32)),
                                ("two", lambda a: np.ones(2)),
                                ("empty", lambda a: np.ones(0))):
                cases.append(Bad(f"{rule}-{slot}-{label}", rule, ValueError,
                                 rf"^{slot} must be a float64 array of one element",
                                 edit=_set(slot, make)))
            for label, make in (("float", lambda a: 1.0), ("list", lambda a: [1.0]),
                                ("none", lambda a: None)):
                cases.append(Bad(f"{rule}-{slot}-{label}", rule, TypeError,
                                 rf"^{slot} must be a float64 numpy.ndarray of one element",
                                 edit=_set(slot, make)))
            cases.append(Bad(f"{rule}-{slot}-readonly", rule, ValueError,
                             rf"^{slot} must be writable", edit=_set(slot, _readonly)))

            def inside_param(arrays, slot=slot, rule=rule):
                arrays["param"] = arrays["param"].astype(np.float64)
                for other in ALL_SLOTS[rule][1:]:
                    arrays[other] = arrays[other].astype(np.float64)
                arrays[slot] = arrays["param"][3:4]
            cases.append(Bad(f"{rule}-{slot}-inside-param", rule, ValueError,
                             rf"^{slot} overlaps param in memory", edit=inside_param))
        for i, a in enumerate(scalars):
            for b in scalars[i + 1:]:
                cases.append(Bad(f"{rule}-{b}-is-{a}", rule, ValueError,
                                 rf"^{b} is the same memory as {a}", edit=_same(a, b)))
    return cases


# ---- hyperparameters -------------------------------------------------------

NAN, INF = float("nan"), float("inf")


def _hp_cases():
    cases = []

    def bad(rule, key, value, exc, match, label=None, **more):
        label = label or f"{key}={value!r}"
        cases.append(Bad(f"{rule}-{label}", rule, exc, match,
                         hp={key: value, **more}))

    for rule in HAND_WRITTEN:
        for v in (-1.0, NAN, INF, -INF):
            bad(rule, "lr", v, ValueError, r"Invalid learning rate: .*\(lr must")
            bad(rule, "weight_decay", v, ValueError,
                r"Invalid weight_decay value: .*\(weight_decay must")
        bad(rule, "lr", "0.1", TypeError, r"^lr must be a real number, got str")
        bad(rule, "lr", None, TypeError, r"^lr must be a real number")
        bad(rule, "lr", True, TypeError, r"^lr must be a real number, got bool")
        bad(rule, "lr", 1j, TypeError, r"^lr must be a real number, got complex")
        bad(rule, "weight_decay", [0.1], TypeError, r"^weight_decay must be a real")
        bad(rule, "maximize", 1, TypeError, r"^maximize must be a bool, got int")
        bad(rule, "maximize", None, TypeError, r"^maximize must be a bool")
        if rule in ("rmsprop", "adam", "adagrad"):
            for v in (-1e-8, NAN, INF):
                bad(rule, "eps", v, ValueError, r"Invalid epsilon value: .*\(eps must")
    for rule in ("sgd", "adam", "adagrad"):
        for v, exc, msg in ((0, ValueError, r"^step must be >= 1, got 0"),
                            (-3, ValueError, r"^step must be >= 1, got -3"),
                            (1.0, TypeError, r"^step must be an int, got float"),
                            (True, TypeError, r"^step must be an int, got bool"),
                            (np.True_, TypeError, r"^step must be an int, got bool"),
                            ("1", TypeError, r"^step must be an int, got str"),
                            (2 ** 63, ValueError, r"^step is too large")):
            bad(rule, "step", v, exc, msg)
    bad("adam", "step", None, TypeError, r"^step must be an int, got NoneType")
    bad("adagrad", "step", None, TypeError, r"^step must be an int")
    bad("sgd", "step", None, ValueError, r"^step is required when momentum")
    # SGD
    for v in (-0.1, NAN, INF):
        bad("sgd", "momentum", v, ValueError, r"Invalid momentum value: .*\(momentum must")
    for v in (-0.1, 1.1, NAN, INF):
        bad("sgd", "dampening", v, ValueError,
            r"Invalid dampening value: .*\(dampening must be finite and in \[0, 1\]")
    bad("sgd", "nesterov", 1, TypeError, r"^nesterov must be a bool")
    bad("sgd", "nesterov", True, ValueError,
        r"Nesterov momentum requires a momentum and zero dampening",
        label="nesterov-dampening0.1", dampening=0.1)
    # nesterov without momentum: no buffer then, see _CALL_CASES
    # momentum (seed form)
    for v in (-0.1, 1.0, 1.5, NAN, INF):
        bad("momentum", "beta", v, ValueError,
            r"Invalid beta value: .*\(beta must be finite and in \[0, 1\)")
    # RMSProp
    for v in (-0.1, 1.01, NAN):
        bad("rmsprop", "alpha", v, ValueError,
            r"Invalid alpha value: .*\(alpha must be finite and in \[0, 1\]")
    for v in (-0.5, NAN, INF):
        bad("rmsprop", "momentum", v, ValueError, r"Invalid momentum value: .*momentum must")
    bad("rmsprop", "centered", 1, TypeError, r"^centered must be a bool")
    # Adam
    for betas, index in (((1.0, 0.999), 0), ((-0.1, 0.999), 0), ((NAN, 0.999), 0),
                         ((0.9, 1.0), 1), ((0.9, 1.5), 1), ((0.9, INF), 1)):
        bad("adam", "betas", betas, ValueError,
            rf"Invalid beta parameter at index {index}: .*\(betas\[{index}\] must")
    for betas in ((0.9,), (0.9, 0.99, 0.999), 0.9, "ab", None):
        bad("adam", "betas", betas, TypeError, r"^betas must be a pair")
    bad("adam", "betas", (0.9, "0.999"), TypeError, r"^betas\[1\] must be a real number")
    bad("adam", "amsgrad", "yes", TypeError, r"^amsgrad must be a bool")
    bad("adam", "decoupled_weight_decay", 1, TypeError,
        r"^decoupled_weight_decay must be a bool")
    # Adagrad
    for v in (-0.1, NAN, INF):
        bad("adagrad", "lr_decay", v, ValueError, r"Invalid lr_decay value: .*\(lr_decay must")
    # every other rule of the table, from its hyperparameters' checks
    for name, rule in RULES.items():
        if name in HAND_WRITTEN:
            continue
        for h in rule.kernel_hypers:
            label = re.escape(h.label or h.name)
            if h.check == "flag":
                bad(name, h.name, 1, TypeError, rf"^{h.name} must be a bool, got int")
            elif h.length:
                word = {2: "pair", 3: "triple"}[h.length]
                last = h.length - 1
                bad(name, h.name, (h.lo - 1.0,) + tuple(h.default[1:]), ValueError,
                    rf"Invalid {label} at index 0: .*\({h.name}\[0\] must")
                bad(name, h.name, tuple(h.default[:last]) + (NAN,), ValueError,
                    rf"Invalid {label} at index {last}: .*\({h.name}\[{last}\] must")
                bad(name, h.name, (h.lo,), TypeError, rf"^{h.name} must be a {word}")
                bad(name, h.name, tuple(h.default) + (h.lo,), TypeError,
                    rf"^{h.name} must be a {word}")
            elif h.check == "count":
                for v in (int(h.lo) - 1, -(2 ** 70)):
                    bad(name, h.name, v, ValueError,
                        rf"^Invalid {label}: {v} \({h.name} must be None or an "
                        rf"int >= {h.lo:g}\)")
                bad(name, h.name, 2 ** 53 + 1, ValueError, rf"\({h.name} must be None "
                    rf"or an int <= 2\*\*53\)")
                for v in (1.0, "3", True, np.float64(2.0)):
                    bad(name, h.name, v, TypeError,
                        rf"^{h.name} must be None or an int, got {type(v).__name__}")
            elif h.check == "int":
                for v in (int(h.lo) - 1, int(h.hi) + 1):
                    bad(name, h.name, v, ValueError,
                        rf"^Invalid {label}: {v} \({h.name} must be an int in "
                        rf"\[{h.lo:g}, {h.hi:g}\]\)")
                for v in (1.0, None, True, "3"):
                    bad(name, h.name, v, TypeError,
                        rf"^{h.name} must be an int, got {type(v).__name__}")
            elif h.check == "choice":
                for v in ("x", "", "Original"):
                    bad(name, h.name, v, ValueError,
                        rf"^Invalid {label}: {v!r} \({h.name} must be one of ")
                for v in (1, 0.5, b"original"):
                    bad(name, h.name, v, TypeError,
                        rf"^{h.name} must be one of .*, got {type(v).__name__}")
            else:
                for v in (h.lo - 1.0, NAN, INF):
                    bad(name, h.name, v, ValueError,
                        rf"Invalid {label}: .*\({h.name} must be finite")
                bad(name, h.name, "0.1", TypeError,
                    rf"^{h.name} must be a real number, got str")
        if rule.step == "required":
            bad(name, "step", 0, ValueError, r"^step must be >= 1, got 0")
    return cases


# ---- missing or unused states, and calls that do not fit the pattern -------

def _state_cases():
    cases = [
        Bad("sgd-momentum_buffer-missing", "sgd", ValueError,
            r"^momentum_buffer is required when momentum != 0",
            edit=_missing("momentum_buffer")),
        Bad("sgd-momentum_buffer-unused", "sgd", ValueError,
            r"^momentum_buffer is given but not used", hp=dict(momentum=0.0)),
        Bad("momentum-velocity-missing", "momentum", ValueError,
            r"^velocity is required", edit=_missing("velocity")),
        Bad("rmsprop-square_avg-missing", "rmsprop", ValueError,
            r"^square_avg is required", edit=_missing("square_avg")),
        Bad("rmsprop-grad_avg-missing", "rmsprop", ValueError,
            r"^grad_avg is required when centered=True", edit=_missing("grad_avg")),
        Bad("rmsprop-grad_avg-unused", "rmsprop", ValueError,
            r"^grad_avg is given but not used", hp=dict(centered=False)),
        Bad("rmsprop-momentum_buffer-missing", "rmsprop", ValueError,
            r"^momentum_buffer is required when momentum != 0",
            edit=_missing("momentum_buffer")),
        Bad("rmsprop-momentum_buffer-unused", "rmsprop", ValueError,
            r"^momentum_buffer is given but not used", hp=dict(momentum=0.0)),
        Bad("adam-exp_avg-missing", "adam", ValueError, r"^exp_avg is required",
            edit=_missing("exp_avg")),
        Bad("adam-exp_avg_sq-missing", "adam", ValueError,
            r"^exp_avg_sq is required", edit=_missing("exp_avg_sq")),
        Bad("adam-max_exp_avg_sq-missing", "adam", ValueError,
            r"^max_exp_avg_sq is required when amsgrad=True",
            edit=_missing("max_exp_avg_sq")),
        Bad("adam-max_exp_avg_sq-unused", "adam", ValueError,
            r"^max_exp_avg_sq is given but not used", hp=dict(amsgrad=False)),
        Bad("adagrad-state_sum-missing", "adagrad", ValueError,
            r"^state_sum is required", edit=_missing("state_sum")),
        Bad("sgd-nesterov-without-momentum", "sgd", ValueError,
            r"Nesterov momentum requires a momentum",
            hp=dict(momentum=0.0, nesterov=True), edit=_missing("momentum_buffer")),
        Bad("sgd-nesterov-tiny-dampening", "sgd", ValueError,
            r"Nesterov momentum requires a momentum and zero dampening",
            hp=dict(nesterov=True, dampening=1e-20)),
    ]
    # every other rule of the table: each state missing, and each optional
    # one given while its option is off
    for name, rule in RULES.items():
        if name in HAND_WRITTEN:
            continue
        for st in rule.states:
            cases.append(Bad(f"{name}-{st.name}-missing", name, ValueError,
                             rf"^{st.name} is required", edit=_missing(st.name)))
            if st.when is not None:
                off = False if rule.hyper(st.when).check == "flag" else 0.0
                cases.append(Bad(f"{name}-{st.name}-unused", name, ValueError,
                                 rf"^{st.name} is given but not used",
                                 hp={st.when: off}))
    return cases


def _arrs(*sizes, dtype=F32):
    return [np.zeros(n, dtype) for n in sizes]


def _many_cases():
    def call(fn, *args, **kwargs):
        return lambda: (fn, args, kwargs)

    p, g, s = _arrs(3, 4), _arrs(3, 4), _arrs(3, 4)
    shared = np.zeros(4, F32)
    mixed_p = [np.zeros(3, F32), np.zeros(4)]
    mixed_g = [np.zeros(3, F32), np.zeros(4)]
    ro = np.zeros(4, F32)
    ro.flags.writeable = False
    return [
        Bad("sgd_many-params-tuple", "call", TypeError, r"'params'",
            call=call(many("sgd"), tuple(_arrs(3)), _arrs(3))),
        Bad("adam_many-grads-ndarray", "call", TypeError, r"'grads'",
            call=call(many("adam"), _arrs(3), np.zeros(3, F32), _arrs(3),
                      _arrs(3), step=1)),
        Bad("adam_many-too-few-grads", "call", ValueError,
            r"^got 1 grad arrays for 2 parameters",
            call=call(many("adam"), _arrs(3, 4), _arrs(3), _arrs(3, 4),
                      _arrs(3, 4), step=1)),
        Bad("adam_many-too-many-exp_avgs", "call", ValueError,
            r"^got 3 exp_avg arrays for 2 parameters",
            call=call(many("adam"), _arrs(3, 4), _arrs(3, 4), _arrs(3, 4, 5),
                      _arrs(3, 4), step=1)),
        Bad("rmsprop_many-square_avgs-missing", "call", ValueError,
            r"^square_avgs is required",
            call=call(many("rmsprop"), _arrs(3), _arrs(3), None)),
        Bad("adam_many-max_exp_avg_sqs-missing", "call", ValueError,
            r"^max_exp_avg_sqs is required when amsgrad=True",
            call=call(many("adam"), _arrs(3), _arrs(3), _arrs(3), _arrs(3),
                      amsgrad=True, step=1)),
        Bad("sgd_many-grads[1]-size", "call", ValueError,
            r"^grads\[1\] has 5 elements but params\[1\] has 4",
            call=call(many("sgd"), _arrs(3, 4), _arrs(3, 5))),
        Bad("sgd_many-grads[1]-int", "call", TypeError,
            r"^grads\[1\] must have dtype float32 or float64",
            call=call(many("sgd"), _arrs(3, 4), [np.zeros(3, F32),
                                                   np.zeros(4, np.int32)])),
        Bad("sgd_many-labels", "call", TypeError,
            r"^grad of parameter 'b1' must have dtype",
            call=call(many("sgd"), _arrs(3, 4), [np.zeros(3, F32),
                                                   np.zeros(4, np.int32)],
                      labels=["W1", "b1"])),
        Bad("sgd_many-params[1]-readonly", "call", ValueError,
            r"^params\[1\] is read-only",
            call=call(many("sgd"), [np.zeros(3, F32), ro], _arrs(3, 4))),
        Bad("sgd_many-mixed-dtypes", "call", TypeError,
            r"^params\[1\] has dtype float64 but params\[0\] has dtype float32",
            call=call(many("sgd"), mixed_p, mixed_g)),
        Bad("sgd_many-mixed-dtypes-names-params[1]", "call", TypeError,
            r"^params\[1\] has dtype float64",
            call=call(many("sgd"), mixed_p, mixed_g)),
        Bad("sgd_many-same-param-twice", "call", ValueError,
            r"params\[1\] overlaps params\[0\]|params\[0\] overlaps params\[1\]",
            call=call(many("sgd"), [shared, shared], _arrs(4, 4))),
        Bad("adam_many-state-is-other-param", "call", ValueError,
            r"overlaps .* in memory",
            call=call(many("adam"), p, g, [s[0], p[1]], _arrs(3, 4), step=1)),
        Bad("momentum_many-velocities-missing", "call", ValueError,
            r"^velocities is required",
            call=call(many("momentum"), _arrs(3), _arrs(3), None)),
        # gradient utilities
        Bad("grad_sumsq-tuple", "call", TypeError, r"'grads'",
            call=call(_core.grad_sumsq, tuple(_arrs(3)))),
        Bad("grad_sumsq-int", "call", TypeError,
            r"^grads\[1\] must have dtype float32 or float64",
            call=call(_core.grad_sumsq, [np.zeros(3), np.zeros(3, np.int64)])),
        Bad("grad_sumsq-mixed", "call", TypeError,
            r"^grads\[1\] has dtype float64 but the first has float32",
            call=call(_core.grad_sumsq, [np.zeros(3, F32), np.zeros(3)])),
        Bad("grad_allfinite-noncontiguous", "call", ValueError,
            r"^grads\[0\] must be C-contiguous",
            call=call(_core.grad_allfinite, [np.zeros(6)[::2]])),
        Bad("grad_scale_-readonly", "call", ValueError,
            r"^grads\[0\] is read-only",
            call=call(_core.grad_scale_, [ro], 2.0)),
        Bad("grad_scale_-same-twice", "call", ValueError,
            r"grads\[1\] overlaps grads\[0\]|grads\[0\] overlaps grads\[1\]",
            call=call(_core.grad_scale_, [shared, shared], 2.0)),
        Bad("grad_clamp_-byteswapped", "call", TypeError,
            r"^grads\[0\] must be in native byte order",
            call=call(_core.grad_clamp_, [np.zeros(3, ">f8")], 1.0)),
        Bad("grad_scale_-scale-str", "call", TypeError, r"^scale must be a real number",
            call=call(_core.grad_scale_, [np.zeros(3)], "2")),
        Bad("grad_clamp_-negative-clip", "call", ValueError, r"^clip must be >= 0",
            call=call(_core.grad_clamp_, [np.zeros(3)], -1.0)),
        Bad("grad_clamp_-nan-clip", "call", ValueError, r"^clip must be >= 0",
            call=call(_core.grad_clamp_, [np.zeros(3)], float("nan"))),
    ]


BAD_INPUTS = _array_cases() + _scalar_cases() + _hp_cases() + _state_cases() + _many_cases()
assert len({c.id for c in BAD_INPUTS}) == len(BAD_INPUTS), "ids must be unique"


# ---------------------------------------------------------------------------

def _build(case):
    if case.rule == "call":
        return case.call()
    fn, names, hp = VALID[case.rule]
    arrays = _valid_arrays(case.rule)
    if case.edit:
        case.edit(arrays)
    args = [arrays[name] for name in names]
    return fn, args, {**hp, **case.hp}


def _arrays_in(obj, out):
    if isinstance(obj, np.ndarray):
        out.append(obj)
        base = obj.base
        while isinstance(base, np.ndarray):
            out.append(base)
            base = base.base
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            _arrays_in(x, out)
    elif isinstance(obj, dict):
        for x in obj.values():
            _arrays_in(x, out)
    return out


def _params():
    for case in BAD_INPUTS:
        marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
        yield pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", list(_params()))
def test_bad_input(case):
    fn, args, kwargs = _build(case)
    arrays = _arrays_in([args, kwargs], [])
    before = [a.tobytes() for a in arrays]
    with pytest.raises(case.exc, match=case.match):
        fn(*args, **kwargs)
    after = [a.tobytes() for a in arrays]
    for k, (b, a) in enumerate(zip(before, after)):
        assert b == a, f"array {k} changed although the call was refused"


# ---------------------------------------------------------------------------
# Gradients: read-only accepted, non-contiguous refused (above, per rule)

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule", list(VALID))
def test_readonly_grad_is_accepted(rule, dtype):
    fn, names, hp = VALID[rule]
    arrays = _valid_arrays(rule, dtype)
    arrays["grad"].flags.writeable = False
    grad_before = arrays["grad"].tobytes()
    param_before = arrays["param"].copy()
    # a later step: a first step may only initialise a state (ADOPT's sets v)
    fn(*[arrays[n] for n in names], **{**hp, **({"step": 2} if "step" in hp else {})})
    assert arrays["grad"].tobytes() == grad_before
    assert not np.array_equal(arrays["param"], param_before)


def test_readonly_grad_many_and_sumsq():
    g = np.ones(5)
    g.flags.writeable = False
    p = np.zeros(5)
    many("sgd")([p], [g], lr=0.5)
    np.testing.assert_array_equal(p, -0.5)
    assert _core.grad_sumsq([g]) == 5.0
    assert _core.grad_allfinite([g])


@pytest.mark.parametrize("rule", list(VALID))
def test_zero_size_accepts_anything_overlapping(rule):
    """Empty arrays hold no memory, so they never overlap."""
    fn, names, hp = VALID[rule]
    buf = np.zeros(4, F32)
    empty = buf[:0].reshape(0, 3) if RULES[rule].matrix else buf[:0]
    fn(*[np.ones(1) if n in SCALARS[rule] else empty for n in names], **hp)


# ---------------------------------------------------------------------------
# A None inside a list of states: crashes the interpreter (segfault) at the
# time of writing, so it runs in a child process.

NONE_IN_LIST = [
    ("sgd_many", "many('sgd')([p], [g], [None], momentum=0.9, step=1)"),
    ("momentum_many", "many('momentum')([p], [g], [None])"),
    ("rmsprop_many", "many('rmsprop')([p], [g], [None])"),
    ("adam_many-exp_avgs", "many('adam')([p], [g], [None], [v], step=1)"),
    ("adam_many-max_exp_avg_sqs",
     "many('adam')([p], [g], [m], [v], [None], amsgrad=True, step=1)"),
    ("adagrad_many", "many('adagrad')([p], [g], [None], step=1)"),
]


@pytest.mark.parametrize("code", [c for _, c in NONE_IN_LIST],
                         ids=[i for i, _ in NONE_IN_LIST])
def test_none_inside_state_list_is_refused(code):
    import subprocess
    import sys
    prog = (
        "import numpy as np\n"
        "from fastopt import _core\n"
        "def many(name):\n"
        "    return lambda ps, gs, *s, **k: _core.step_many(name, ps, gs, list(s), **k)\n"
        "p, g, m, v = (np.ones(16) for _ in range(4))\n"
        "try:\n"
        f"    {code}\n"
        "except (TypeError, ValueError) as e:\n"
        "    print('refused:', e)\n"
        "    raise SystemExit(0)\n"
        "raise SystemExit(3)\n"
    )
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert "refused:" in r.stdout


def test_messages_name_the_cure():
    """A written array that cannot take the update in place is refused with
    why a copy would not help; a read-only input is told how to pass one."""
    from fastopt import functional
    square = np.zeros((4, 4))
    with pytest.raises(ValueError, match="copy would leave yours unchanged.*same array"):
        functional.sgd(square.T, np.zeros(16), np.zeros(16), momentum=0.9, step=1)
    with pytest.raises(ValueError, match=r"^grad must be C-contiguous: .*np.ascontiguousarray"):
        functional.sgd(np.zeros(16), square.T, np.zeros(16), momentum=0.9, step=1)
    frozen = np.zeros(16)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only; .*a copy would take the update"):
        functional.sgd(frozen, np.zeros(16), np.zeros(16), momentum=0.9, step=1)
