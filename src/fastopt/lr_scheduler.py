"""Learning-rate schedules: schedulers over ``param_groups`` and pure functions.

Every schedule exists twice, computing the same bits:

* a pure function of the epoch, ``f(base_lr, epoch, ...) -> float``;
* a scheduler class with torch.optim.lr_scheduler's name, constructor
  arguments and defaults, driving any optimizer that has ``param_groups``
  (a list of dicts, each with an ``"lr"`` key).  The constructor records
  ``"initial_lr"`` in every group (kept if already there, as torch does) and
  performs the initial step, so ``group["lr"]`` holds the epoch-0 value at
  once.  Each ``step()`` advances ``last_epoch`` by one and writes the new
  rate into every group; ``get_last_lr()`` returns those rates.

Closed form, not recursion.  Torch updates most schedules recursively
(``lr_e = lr_{e-1} * gamma``, the cosine ratio
``(1 + cos(pi e / T)) / (1 + cos(pi (e-1) / T))``, LinearLR's ratio of
consecutive factors), so its rates carry rounding that grows with the number
of steps.  Here the rate at epoch e is always a function of ``base_lr`` and
``e`` alone: it does not drift, ``step(epoch)`` jumps anywhere exactly, and
resuming from a ``state_dict`` gives the same bits as never stopping.  Over
100 steps the two differ by a few units in the last place (relative 1e-15 to
1e-13; the cosine near its minimum, where ``1 + cos`` cancels, is the worst
case).  Where torch also has a closed form (``_get_closed_form_lr``), the
operations here are the same, in the same order, and the bits equal.

Schedules, with ``e`` the epoch (``last_epoch``) and ``b`` the base rate:

=============================  ==================================================
``ConstantLR``                 ``b·factor`` for ``e < total_iters``, then ``b``
``StepLR``                     ``b·gamma^floor(e / step_size)``
``MultiStepLR``                ``b·gamma^(number of milestones <= e)``
``ExponentialLR``              ``b·gamma^e``
``CosineAnnealingLR``          ``eta_min + (b − eta_min)·(1 + cos(pi·e / T_max)) / 2``
``LinearLR``                   ``b·(s + (f − s)·min(e, total_iters) / total_iters)``
``OneCycleLR``                 warm-up to ``max_lr`` then anneal (see the class)
``InverseTimeDecayLR``         ``b / (1 + decay_rate·floor(e / time_interval))``
=============================  ==================================================

The last is the learning-rate decay of the Deep Learning Specialization
(course 2, week 2): with ``time_interval=1`` it is the course's
``lr0 / (1 + decay_rate·epoch)`` (:func:`inverse_time_decay`), with an
interval its scheduled decay (:func:`scheduled_inverse_time_decay`).

Arguments are checked before anything is written: a bad one raises TypeError
or ValueError naming it, and leaves the optimizer's groups as they were.
"""
import copy
import math
import numbers
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional, Union

from fastopt import _core

__all__ = [
    # schedulers
    "LRScheduler",
    "ConstantLR",
    "StepLR",
    "MultiStepLR",
    "ExponentialLR",
    "CosineAnnealingLR",
    "LinearLR",
    "OneCycleLR",
    "InverseTimeDecayLR",
    # pure functions
    "constant_lr",
    "step_lr",
    "multistep_lr",
    "exponential_lr",
    "cosine_annealing_lr",
    "linear_lr",
    "one_cycle_lr",
    "one_cycle_momentum",
    "inverse_time_decay",
    "scheduled_inverse_time_decay",
]


# ---------------------------------------------------------------------------
# Argument checks

def _real(x, name, *, lo=-math.inf, hi=math.inf, lo_open=False, hi_open=False):
    """x as a float: a real number (not bool), finite, within the bounds
    (the optimizers' check and message)."""
    return _core.check_real(x, name, lo, hi, closed=not hi_open, lo_open=lo_open)


_INT_MAX = 2 ** 62     # as the optimizers' step counts; keeps float(x) exact enough


def _int(x, name, lo):
    """x as an int (not bool) with lo <= x <= 2**62."""
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    if x < lo:
        raise ValueError(f"{name} must be >= {lo}, got {x}")
    if x > _INT_MAX:
        raise ValueError(f"{name} must be <= 2**62, got {x}")
    return int(x)


def _lr(x, name):
    return _real(x, name, lo=0.0)


def _epoch(epoch):
    return _int(epoch, "epoch", 0)


def _milestones(milestones):
    if isinstance(milestones, (str, bytes)) or not hasattr(milestones, "__iter__"):
        raise TypeError(f"milestones must be an iterable of ints, got "
                        f"{type(milestones).__name__}")
    return tuple(sorted(_int(m, f"milestones[{i}]", 0)
                        for i, m in enumerate(milestones)))


def _anneal_strategy(anneal_strategy):
    if not isinstance(anneal_strategy, str) or anneal_strategy not in ("cos", "linear"):
        raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got "
                         f"{anneal_strategy!r}")
    return anneal_strategy


def _flag(x, name):
    if x is True or x is False:
        return x
    raise TypeError(f"{name} must be a bool, got {type(x).__name__}")


# ---------------------------------------------------------------------------
# Pure functions of the epoch.  Each checks its arguments, then evaluates one
# closed form; the schedulers call the unchecked forms (the underscored
# twins) with arguments checked once in their constructors.

def _constant(b, e, factor, total_iters):
    return b * factor if e < total_iters else b


def constant_lr(base_lr: float, epoch: int, factor: float = 1.0 / 3,
                total_iters: int = 5) -> float:
    """``base_lr·factor`` while ``epoch < total_iters``, then ``base_lr``.

    ``factor=1`` is the constant schedule.
    """
    return _constant(_lr(base_lr, "base_lr"), _epoch(epoch),
                     _real(factor, "factor", lo=0.0, hi=1.0),
                     _int(total_iters, "total_iters", 1))


def _power(gamma, k):
    """gamma**k, inf where it leaves the float range (an optimizer then
    refuses the rate with a clear message)."""
    try:
        return gamma ** k
    except OverflowError:
        return math.inf


def _step(b, e, step_size, gamma):
    return b * _power(gamma, e // step_size)


def step_lr(base_lr: float, epoch: int, step_size: int, gamma: float = 0.1) -> float:
    """``base_lr·gamma^floor(epoch / step_size)``: decay by gamma every step_size epochs."""
    return _step(_lr(base_lr, "base_lr"), _epoch(epoch),
                 _int(step_size, "step_size", 1), _real(gamma, "gamma", lo=0.0))


def _multistep(b, e, milestones, gamma):
    return b * _power(gamma, bisect_right(milestones, e))


def multistep_lr(base_lr: float, epoch: int, milestones: Iterable[int],
                 gamma: float = 0.1) -> float:
    """``base_lr·gamma^k``, k the number of milestones <= epoch.

    A milestone listed twice counts twice, as in torch.
    """
    return _multistep(_lr(base_lr, "base_lr"), _epoch(epoch),
                      _milestones(milestones), _real(gamma, "gamma", lo=0.0))


def _exponential(b, e, gamma):
    return b * _power(gamma, e)


def exponential_lr(base_lr: float, epoch: int, gamma: float) -> float:
    """``base_lr·gamma^epoch``."""
    return _exponential(_lr(base_lr, "base_lr"), _epoch(epoch),
                        _real(gamma, "gamma", lo=0.0))


def _cosine(b, e, T_max, eta_min):
    # torch's closed form, operation for operation.
    return eta_min + (b - eta_min) * (1 + math.cos(math.pi * e / T_max)) / 2


def cosine_annealing_lr(base_lr: float, epoch: int, T_max: int,
                        eta_min: float = 0.0) -> float:
    """``eta_min + (base_lr − eta_min)·(1 + cos(pi·epoch / T_max)) / 2``.

    The rate reaches ``eta_min`` at ``epoch = T_max`` and, like torch's,
    climbs back after it (period ``2·T_max``): set T_max to the whole run.
    """
    return _cosine(_lr(base_lr, "base_lr"), _epoch(epoch),
                   _int(T_max, "T_max", 1), _lr(eta_min, "eta_min"))


def _linear(b, e, start_factor, end_factor, total_iters):
    # torch's closed form, operation for operation.
    return b * (start_factor + (end_factor - start_factor)
                * min(total_iters, e) / total_iters)


def linear_lr(base_lr: float, epoch: int, start_factor: float = 1.0 / 3,
              end_factor: float = 1.0, total_iters: int = 5) -> float:
    """Factor moving linearly from start_factor (epoch 0) to end_factor
    (epoch total_iters), then held:
    ``base_lr·(s + (f − s)·min(epoch, total_iters) / total_iters)``.
    """
    start, end = _linear_factors(start_factor, end_factor)
    return _linear(_lr(base_lr, "base_lr"), _epoch(epoch), start, end,
                   _int(total_iters, "total_iters", 1))


def _linear_factors(start_factor, end_factor):
    # torch's bounds: 0 < start_factor <= 1, 0 <= end_factor <= 1.
    return (_real(start_factor, "start_factor", lo=0.0, hi=1.0, lo_open=True),
            _real(end_factor, "end_factor", lo=0.0, hi=1.0))


def _inverse_time(b, e, decay_rate, time_interval):
    # The course's order: lr0 / (1 + decay_rate * floor(epoch / interval)).
    return b / (1 + decay_rate * (e // time_interval))


def inverse_time_decay(base_lr: float, epoch: int, decay_rate: float) -> float:
    """The course's decay: ``base_lr / (1 + decay_rate·epoch)``."""
    return _inverse_time(_lr(base_lr, "base_lr"), _epoch(epoch),
                         _real(decay_rate, "decay_rate", lo=0.0), 1)


def scheduled_inverse_time_decay(base_lr: float, epoch: int, decay_rate: float,
                                 time_interval: int = 1000) -> float:
    """The course's scheduled decay, lowering the rate every time_interval epochs:
    ``base_lr / (1 + decay_rate·floor(epoch / time_interval))``.
    """
    return _inverse_time(_lr(base_lr, "base_lr"), _epoch(epoch),
                         _real(decay_rate, "decay_rate", lo=0.0),
                         _int(time_interval, "time_interval", 1))


# One cycle.  A phase is (end_step, start key, end key); the keys name the
# values of the cycle: "initial" (max_lr / div_factor), "max", "min"
# (initial / final_div_factor).  The momentum moves inversely: its value for
# the key "initial" and "min" is max_momentum, for "max" base_momentum.

def _one_cycle_phases(total_steps, pct_start, three_phase):
    # torch's phase ends, operation for operation.
    if three_phase:
        return ((float(pct_start * total_steps) - 1, "initial", "max"),
                (float(2 * pct_start * total_steps) - 2, "max", "initial"),
                (total_steps - 1, "initial", "min"))
    return ((float(pct_start * total_steps) - 1, "initial", "max"),
            (total_steps - 1, "max", "min"))


def _anneal(strategy, start, end, pct):
    if strategy == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
    return (end - start) * pct + start


def _one_cycle(step, phases, values, strategy):
    """The value at ``step``: the phase holding it, annealed by its fraction."""
    start_step = 0.0
    for i, (end_step, k0, k1) in enumerate(phases):
        if step <= end_step or i == len(phases) - 1:
            # A phase of no length is at its end (torch: ZeroDivisionError).
            pct = (1.0 if end_step == start_step
                   else (step - start_step) / (end_step - start_step))
            return _anneal(strategy, values[k0], values[k1], pct)
        start_step = end_step
    raise AssertionError("unreachable")


def _phases(value, name):
    """Check a restored phase table: 2 or 3 (end_step, start key, end key)."""
    keys = ("initial", "max", "min")
    if not isinstance(value, (tuple, list)) or len(value) not in (2, 3) or not all(
            isinstance(p, (tuple, list)) and len(p) == 3 and isinstance(p[1], str)
            and isinstance(p[2], str) and p[1] in keys and p[2] in keys for p in value):
        raise ValueError(f"{name} must be 2 or 3 phases (end, start key, end key)")
    return tuple((_real(end, f"{name} end", lo=-2.0), a, b) for end, a, b in value)


def _one_cycle_args(total_steps, pct_start, anneal_strategy, three_phase):
    total_steps = _int(total_steps, "total_steps", 1)
    pct_start = _real(pct_start, "pct_start", lo=0.0, hi=1.0)
    three_phase = _flag(three_phase, "three_phase")
    if three_phase and pct_start > 0.5:
        raise ValueError(f"pct_start must be <= 0.5 when three_phase=True (the "
                         f"second phase mirrors the first), got {pct_start!r}")
    return (total_steps, _one_cycle_phases(total_steps, pct_start, three_phase),
            _anneal_strategy(anneal_strategy))


def _cycle_step(step, total_steps):
    step = _int(step, "step", 0)
    if step > total_steps:
        raise ValueError(f"step must be <= total_steps ({total_steps}), got {step}")
    return step


def one_cycle_lr(max_lr: float, step: int, total_steps: int, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False) -> float:
    """The rate of the 1cycle policy at ``step`` (0 <= step <= total_steps).

    From ``max_lr / div_factor`` up to ``max_lr`` over the first
    ``pct_start·total_steps − 1`` steps, then down to
    ``max_lr / div_factor / final_div_factor`` at step ``total_steps − 1``;
    with three_phase, back down to the initial rate symmetrically first, and
    to the minimum in a third phase.  Torch's schedule, bit for bit.
    """
    total_steps, phases, strategy = _one_cycle_args(
        total_steps, pct_start, anneal_strategy, three_phase)
    max_lr = _lr(max_lr, "max_lr")
    initial = max_lr / _real(div_factor, "div_factor", lo=0.0, lo_open=True)
    values = {"initial": initial, "max": max_lr,
              "min": initial / _real(final_div_factor, "final_div_factor",
                                     lo=0.0, lo_open=True)}
    return _one_cycle(_cycle_step(step, total_steps), phases, values, strategy)


def one_cycle_momentum(step: int, total_steps: int, pct_start: float = 0.3,
                       anneal_strategy: str = "cos", base_momentum: float = 0.85,
                       max_momentum: float = 0.95, three_phase: bool = False) -> float:
    """The momentum (or beta1) that the 1cycle policy pairs with
    :func:`one_cycle_lr`: from max_momentum down to base_momentum while the
    rate rises, and back while it falls."""
    total_steps, phases, strategy = _one_cycle_args(
        total_steps, pct_start, anneal_strategy, three_phase)
    hi = _real(max_momentum, "max_momentum", lo=0.0)
    values = {"initial": hi, "max": _real(base_momentum, "base_momentum", lo=0.0),
              "min": hi}
    return _one_cycle(_cycle_step(step, total_steps), phases, values, strategy)


# ---------------------------------------------------------------------------
# Schedulers

def _param_groups(optimizer):
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list):
        raise TypeError(f"optimizer must have a param_groups list, got "
                        f"{type(optimizer).__name__}")
    for i, g in enumerate(groups):
        if not isinstance(g, dict) or "lr" not in g:
            raise TypeError(f"optimizer.param_groups[{i}] must be a dict with "
                            f"an 'lr' key")
        _lr(g["lr"], f"optimizer.param_groups[{i}]['lr']")
    return groups


def _lr_list(value, name):
    if not isinstance(value, list):
        raise TypeError(f"{name} must be a list, got {type(value).__name__}")
    return [_lr(v, f"{name}[{i}]") for i, v in enumerate(value)]


def _per_group(value, name, n, check):
    """A value for each of n groups: one value for all, or a list of n."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} values for {n} param_groups")
        return [check(v, f"{name}[{i}]") for i, v in enumerate(value)]
    return [check(value, name)] * n


class LRScheduler:
    """Base of the schedulers: subclasses define ``_lr_at(base_lr, epoch)``.

    Attributes, as torch: ``optimizer``, ``base_lrs`` (each group's
    ``"initial_lr"``), ``last_epoch`` (the epoch of the rates now in the
    groups; -1 before the constructor's initial step).

    ``last_epoch=k >= 0`` resumes: every group must then already hold
    ``"initial_lr"``, and the initial step sets the rates of epoch k + 1.
    (Torch's recursive schedulers keep the groups' current rates on that
    step; here the rate is always the closed form at ``last_epoch``.)
    """

    def __init__(self, optimizer: Any, last_epoch: int = -1) -> None:
        groups = _param_groups(optimizer)
        last_epoch = _int(last_epoch, "last_epoch", -1)
        if last_epoch >= 0:
            for i, g in enumerate(groups):
                if "initial_lr" not in g:
                    raise KeyError(f"param 'initial_lr' is not specified in "
                                   f"param_groups[{i}] when resuming with "
                                   f"last_epoch={last_epoch}")
        for i, g in enumerate(groups):
            _lr(g.get("initial_lr", g["lr"]), f"optimizer.param_groups[{i}]['initial_lr']")
        # Checked; from here on nothing raises before the groups are written.
        for g in groups:
            g.setdefault("initial_lr", g["lr"])
        self.optimizer = optimizer
        self.base_lrs = [float(g["initial_lr"]) for g in groups]
        self.last_epoch = last_epoch
        self._last_lr: list[float] = []
        self.step()

    # Checks of the attributes a state_dict may restore, name -> check(value,
    # name) returning the value to keep; subclasses add their own.
    _checks = {
        "base_lrs": lambda v, name: _lr_list(v, name),
        "_last_lr": lambda v, name: _lr_list(v, name),
        "last_epoch": lambda v, name: _int(v, name, -1),
    }

    def _lr_at(self, base_lr, epoch):
        raise NotImplementedError

    def _updates(self, epoch):
        """The values to write into each group at ``epoch``."""
        return [{"lr": self._lr_at(b, epoch)} for b in self.base_lrs]

    def get_lr(self) -> list[float]:
        """The rates of ``last_epoch`` (computed, not read from the groups)."""
        return [u["lr"] for u in self._updates(self.last_epoch)]

    def get_last_lr(self) -> list[float]:
        """The rates the last step wrote into the groups."""
        return list(self._last_lr)

    def step(self, epoch: Optional[int] = None) -> None:
        """Advance to ``last_epoch + 1``, or jump to ``epoch`` (exact here,
        since every rate is a closed form; torch deprecates the argument)."""
        e = self.last_epoch + 1 if epoch is None else _epoch(epoch)
        groups = self.optimizer.param_groups
        if len(groups) != len(self.base_lrs):
            raise ValueError(f"the optimizer has {len(groups)} param_groups; "
                             f"this scheduler was built for {len(self.base_lrs)}")
        updates = self._updates(e)
        self.last_epoch = e
        for g, u in zip(groups, updates):
            g.update(u)
        self._last_lr = [float(g["lr"]) for g in groups]

    def state_dict(self) -> dict[str, Any]:
        """Every attribute except the optimizer, as torch."""
        return copy.deepcopy({k: v for k, v in self.__dict__.items()
                              if k != "optimizer"})

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` of the same class.

        As in torch, the groups' rates change at the next ``step()``.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got "
                            f"{type(state_dict).__name__}")
        unknown = sorted(set(state_dict) - (set(self.__dict__) - {"optimizer"}))
        if unknown:
            raise ValueError(f"state_dict has keys that {type(self).__name__} "
                             f"does not have: {', '.join(map(repr, unknown))}")
        new = copy.deepcopy(state_dict)
        probe = copy.copy(self)
        try:
            for cls in reversed(type(self).__mro__):
                for key, check in vars(cls).get("_checks", {}).items():
                    if key in new:
                        new[key] = check(new[key], key)
            probe.__dict__.update(new)
            # the values of its epoch must be computable from it
            updates = probe._updates(max(probe.last_epoch, 0))
            values = [v for u in updates for v in (u.values() if isinstance(u, dict) else [u])]
            for v in values:
                v = v if isinstance(v, tuple) else (v,)
                if not all(isinstance(x, float) for x in v):
                    raise TypeError(f"computed values {values!r} are not floats")
        except (ArithmeticError, TypeError, ValueError, AttributeError,
                IndexError, KeyError) as e:
            raise ValueError(f"state_dict holds values {type(self).__name__} "
                             f"cannot use: {e}") from e
        self.__dict__.update(new)

    def __repr__(self):
        return (f"{type(self).__name__}(last_epoch={self.last_epoch}, "
                f"last_lr={self._last_lr})")


class ConstantLR(LRScheduler):
    """``base_lr·factor`` for the first ``total_iters`` epochs, then ``base_lr``.

    ``factor=1.0`` gives a constant rate.  Torch divides by factor at
    total_iters, so its rate afterwards may be off by an ulp (and factor=0
    divides by zero there); here it is ``base_lr`` exactly.
    """

    _checks = {"factor": lambda v, name: _real(v, name, lo=0.0, hi=1.0),
               "total_iters": lambda v, name: _int(v, name, 1)}

    def __init__(self, optimizer: Any, factor: float = 1.0 / 3, total_iters: int = 5,
                 last_epoch: int = -1) -> None:
        self.factor = _real(factor, "factor", lo=0.0, hi=1.0)
        self.total_iters = _int(total_iters, "total_iters", 1)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, b, e):
        return _constant(b, e, self.factor, self.total_iters)


class StepLR(LRScheduler):
    """``base_lr·gamma^floor(epoch / step_size)``.

    Torch multiplies the previous rate by gamma (recursive): after k decays
    its rate may differ from ``gamma**k`` by a few ulp.
    """

    _checks = {"step_size": lambda v, name: _int(v, name, 1),
               "gamma": lambda v, name: _real(v, name, lo=0.0)}

    def __init__(self, optimizer: Any, step_size: int, gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        self.step_size = _int(step_size, "step_size", 1)
        self.gamma = _real(gamma, "gamma", lo=0.0)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, b, e):
        return _step(b, e, self.step_size, self.gamma)


class MultiStepLR(LRScheduler):
    """``base_lr·gamma^k``, k the number of milestones <= epoch (any order;
    a repeated milestone counts each time, as torch's Counter does)."""

    _checks = {"milestones": lambda v, name: _milestones(v),
               "gamma": lambda v, name: _real(v, name, lo=0.0)}

    def __init__(self, optimizer: Any, milestones: Iterable[int], gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        self.milestones = _milestones(milestones)
        self.gamma = _real(gamma, "gamma", lo=0.0)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, b, e):
        return _multistep(b, e, self.milestones, self.gamma)


class ExponentialLR(LRScheduler):
    """``base_lr·gamma^epoch``.

    Torch multiplies by gamma every step; after n steps its rate differs from
    ``gamma**n`` by up to about n/2 ulp.
    """

    _checks = {"gamma": lambda v, name: _real(v, name, lo=0.0)}

    def __init__(self, optimizer: Any, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = _real(gamma, "gamma", lo=0.0)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, b, e):
        return _exponential(b, e, self.gamma)


class CosineAnnealingLR(LRScheduler):
    """``eta_min + (base_lr − eta_min)·(1 + cos(pi·epoch / T_max)) / 2``.

    The SGDR closed form, which torch approximates by the recursion
    ``lr_e = eta_min + (lr_{e−1} − eta_min)·(1 + cos(pi·e/T)) / (1 + cos(pi·(e−1)/T))``;
    the two agree to about 1e-13 relative except near the minimum, where the
    recursion's ratio of two small ``1 + cos`` terms loses digits (and past
    it, where torch switches to an additive step).  Past ``T_max`` the rate
    rises again, period ``2·T_max``, as in torch.
    """

    _checks = {"T_max": lambda v, name: _int(v, name, 1),
               "eta_min": lambda v, name: _lr(v, name)}

    def __init__(self, optimizer: Any, T_max: int, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        self.T_max = _int(T_max, "T_max", 1)
        self.eta_min = _lr(eta_min, "eta_min")
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, b, e):
        return _cosine(b, e, self.T_max, self.eta_min)


class LinearLR(LRScheduler):
    """Factor from start_factor to end_factor over total_iters epochs, then held.

    Torch multiplies by the ratio of consecutive factors (recursive), off by
    a few ulp from ``base_lr·factor``; torch's bounds are kept:
    ``0 < start_factor <= 1`` and ``0 <= end_factor <= 1``.
    """

    _checks = {"start_factor": lambda v, name: _real(v, name, lo=0.0, hi=1.0, lo_open=True),
               "end_factor": lambda v, name: _real(v, name, lo=0.0, hi=1.0),
               "total_iters": lambda v, name: _int(v, name, 1)}

    def __init__(self, optimizer: Any, start_factor: float = 1.0 / 3,
                 end_factor: float = 1.0, total_iters: int = 5,
                 last_epoch: int = -1) -> None:
        self.start_factor, self.end_factor = _linear_factors(start_factor, end_factor)
        self.total_iters = _int(total_iters, "total_iters", 1)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, b, e):
        return _linear(b, e, self.start_factor, self.end_factor, self.total_iters)


class InverseTimeDecayLR(LRScheduler):
    """``base_lr / (1 + decay_rate·floor(epoch / time_interval))``.

    The course's learning-rate decay (not in torch): ``time_interval=1`` is
    ``lr0 / (1 + decay_rate·epoch)``; the course's scheduled decay uses
    ``time_interval=1000``.
    """

    _checks = {"decay_rate": lambda v, name: _real(v, name, lo=0.0),
               "time_interval": lambda v, name: _int(v, name, 1)}

    def __init__(self, optimizer: Any, decay_rate: float = 1.0, time_interval: int = 1,
                 last_epoch: int = -1) -> None:
        self.decay_rate = _real(decay_rate, "decay_rate", lo=0.0)
        self.time_interval = _int(time_interval, "time_interval", 1)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, b, e):
        return _inverse_time(b, e, self.decay_rate, self.time_interval)


def _momentum_key(optimizer):
    """'betas' or 'momentum': what 1cycle moves, from the optimizer's defaults
    (torch) or, for a bare object with param_groups, from its first group."""
    defaults = getattr(optimizer, "defaults", None)
    if not isinstance(defaults, dict):
        groups = optimizer.param_groups
        defaults = groups[0] if groups else {}
    if "betas" in defaults:
        return "betas"
    if "momentum" in defaults:
        return "momentum"
    raise ValueError("optimizer must support momentum or beta1 with "
                     "cycle_momentum=True (no 'momentum' or 'betas' found)")


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin), torch's schedule bit for bit.

    The rate anneals from ``initial_lr = max_lr / div_factor`` up to
    ``max_lr`` until step ``pct_start·total_steps − 1``, then down to
    ``min_lr = initial_lr / final_div_factor`` at step ``total_steps − 1``
    ('cos': ``end + (start − end)/2·(1 + cos(pi·pct))``; 'linear').  With
    ``three_phase=True`` it first comes back down to initial_lr, symmetric
    about the peak, and a third phase goes to min_lr.  With
    ``cycle_momentum`` the momentum (or Adam's beta1) moves inversely,
    between max_momentum and base_momentum.  Stepping past ``total_steps``
    raises ValueError.  ``step`` is per batch: ``last_epoch`` counts batches.

    Writes ``initial_lr``, ``max_lr``, ``min_lr`` (and ``max_momentum``,
    ``base_momentum``) into every group, as torch.  Departures from torch: a
    phase of no length (e.g. ``pct_start·total_steps == 1``) is at its end
    value where torch divides by zero; ``three_phase`` requires
    ``pct_start <= 0.5``.
    """

    _checks = {"total_steps": lambda v, name: _int(v, name, 1),
               "_anneal_strategy": lambda v, name: _anneal_strategy(v),
               "cycle_momentum": lambda v, name: _flag(v, name),
               "_phases": lambda v, name: _phases(v, name)}

    def __init__(self, optimizer: Any, max_lr: Union[float, Sequence[float]],
                 total_steps: Optional[int] = None, epochs: Optional[int] = None,
                 steps_per_epoch: Optional[int] = None, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", cycle_momentum: bool = True,
                 base_momentum: Union[float, Sequence[float]] = 0.85,
                 max_momentum: Union[float, Sequence[float]] = 0.95,
                 div_factor: float = 25.0, final_div_factor: float = 1e4,
                 three_phase: bool = False, last_epoch: int = -1) -> None:
        groups = _param_groups(optimizer)
        n = len(groups)
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("You must define either total_steps OR "
                                 "(epochs AND steps_per_epoch)")
            total_steps = (_int(epochs, "epochs", 1)
                           * _int(steps_per_epoch, "steps_per_epoch", 1))
        self.total_steps, self._phases, self._anneal_strategy = _one_cycle_args(
            total_steps, pct_start, anneal_strategy, three_phase)
        self.cycle_momentum = _flag(cycle_momentum, "cycle_momentum")
        resume = _int(last_epoch, "last_epoch", -1) >= 0
        max_lrs = _per_group(max_lr, "max_lr", n, _lr)
        div_factor = _real(div_factor, "div_factor", lo=0.0, lo_open=True)
        final_div_factor = _real(final_div_factor, "final_div_factor",
                                 lo=0.0, lo_open=True)
        keys: tuple[str, ...] = ("initial_lr", "max_lr", "min_lr")
        if self.cycle_momentum:
            self._momentum_key = _momentum_key(optimizer)
            max_ms = _per_group(max_momentum, "max_momentum", n,
                                lambda v, name: _real(v, name, lo=0.0))
            base_ms = _per_group(base_momentum, "base_momentum", n,
                                 lambda v, name: _real(v, name, lo=0.0))
            keys += ("max_momentum", "base_momentum")
        if resume:
            for i, g in enumerate(groups):
                missing = [k for k in keys if k not in g]
                if missing:
                    raise KeyError(f"param_groups[{i}] lacks {missing} when "
                                   f"resuming with last_epoch={last_epoch}")
        # Checked; now write.  What the arguments give together (an
        # initial rate max_lr / div_factor that overflows) is only checked
        # by the first schedule step below, so the groups are put back as
        # they were if it fails.
        saved = [dict(g) for g in groups]
        try:
            if not resume:
                for i, g in enumerate(groups):
                    g["initial_lr"] = max_lrs[i] / div_factor
                    g["max_lr"] = max_lrs[i]
                    g["min_lr"] = g["initial_lr"] / final_div_factor
                    if self.cycle_momentum:
                        self._set_momentum(g, max_ms[i])
                        g["max_momentum"] = max_ms[i]
                        g["base_momentum"] = base_ms[i]
            super().__init__(optimizer, last_epoch)
        except BaseException:
            for g, before in zip(groups, saved):
                g.clear()
                g.update(before)
            raise

    def _set_momentum(self, group, m):
        if self._momentum_key == "betas":
            group["betas"] = (m, *group["betas"][1:])
        else:
            group["momentum"] = m

    def _updates(self, epoch):
        if epoch > self.total_steps:
            raise ValueError(f"Tried to step {epoch} times. The specified "
                             f"number of total steps is {self.total_steps}")
        out = []
        for g in self.optimizer.param_groups:
            lrs = {"initial": g["initial_lr"], "max": g["max_lr"], "min": g["min_lr"]}
            u = {"lr": _one_cycle(epoch, self._phases, lrs, self._anneal_strategy)}
            if self.cycle_momentum:
                ms = {"initial": g["max_momentum"], "max": g["base_momentum"],
                      "min": g["max_momentum"]}
                m = _one_cycle(epoch, self._phases, ms, self._anneal_strategy)
                u[self._momentum_key] = ((m, *g["betas"][1:])
                                         if self._momentum_key == "betas" else m)
            out.append(u)
        return out
