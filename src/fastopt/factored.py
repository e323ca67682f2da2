"""Optimizer classes of the factored rules (:data:`fastopt.rules.FACTORED_RULES`).

A factored rule keeps states of other shapes than its parameters (Adafactor's
``row_var`` and ``col_var`` of a matrix) and which states a parameter has
depends on its number of dimensions, so these classes do not step through
the Plan of :mod:`fastopt.optim`, which keeps parameter-shaped states in
one buffer: each parameter is stepped with its own call of the rule's
functional door (one C call: the axis pass and the rule's passes).  Groups,
None gradients, ``skip_nonfinite``, ``ema_decay`` and ``ema_weights()``,
``accumulation_steps``, ``state_dict``, checkpoints and schedules behave as
in :class:`fastopt.optim.Optimizer`, bit for bit the same averages and mean
gradients.  The average moves in the rule's C call (in its update loop for
weights below 0.5, else in a pass over the tensor after it); the mean
gradient is a NumPy pass of its own before the call, since a step of
Adafactor reads the gradient in its first pass already.

Everything a step could reject is checked before the first array is
written: an error leaves parameters, states and step counts as they were.
"""
import numpy as np

from fastopt import _core, checkpoint
from fastopt.optim import Optimizer
from fastopt.rules import FACTORED_RULES

__all__ = ["Adafactor"]


class Adafactor(Optimizer):
    """Adafactor (torch.optim.Adafactor): a factored second moment for
    parameters of 2 or more dimensions (the leading ones batch), a full one
    for vectors and scalars, and a step relative to the parameter's RMS.

    The rule, line by line: :func:`fastopt.reference.adafactor`.
    Source: Shazeer & Stern, Adafactor: Adaptive Learning Rates with
    Sublinear Memory Cost (ICML 2018); torch.optim.Adafactor (torch 2.13):
    names, defaults, state keys and its formulation (lerp weight
    t^beta2_decay, rho = min(lr, 1/sqrt(t)), update clipped by
    max(1, RMS(update) / d), decoupled weight decay).

    Hyperparameters:
        lr: learning rate (relative step rho = min(lr, 1 / sqrt(t)))
        beta2_decay: exponent of the second moment's lerp weight t^beta2_decay (<= 0)
        eps: (eps1, eps2): eps1 floors the row mean and, squared, the
            variance estimate (None: the dtype's machine epsilon, as torch's
            finfo(dtype).eps); eps2 floors the parameter's RMS
        d: clipping threshold of the update's RMS (>= 1)
        weight_decay: decoupled weight decay, param * (1 - lr * weight_decay)
        foreach: accepted for torch's signature and ignored (every step is
            one fused C call per parameter)
        maximize: ascend instead of descend
        skip_nonfinite: skip a step whose gradients hold a NaN or an infinity
        ema_decay, accumulation_steps: a weight average and gradient
            accumulation, as :class:`fastopt.optim.Optimizer` describes them

    States (per parameter, torch's keys): step; row_var (shape with the last
    dimension 1) and col_var (the second-to-last 1) for parameters of 2 or
    more dimensions; variance (the parameter's shape) for the others.  The
    step count is an int, as in every fastopt state_dict.  With
    ``ema_decay``: ema (the parameter's shape); with ``accumulation_steps``
    > 1: grad_accum and ``state_dict()["accumulation"]``.
    """

    rule = FACTORED_RULES["adafactor"]

    def __init__(self, params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3),
                 d=1.0, weight_decay=0.0, *, foreach=None, maximize=False,
                 skip_nonfinite=False, ema_decay=None, accumulation_steps=1):
        Optimizer.__init__(self, params, dict(
            lr=lr, beta2_decay=beta2_decay, eps=eps, d=d,
            weight_decay=weight_decay, foreach=foreach, maximize=maximize),
            skip_nonfinite=skip_nonfinite, ema_decay=ema_decay,
            accumulation_steps=accumulation_steps)
        self._steps = [0] * len(self._params)
        self._states = [{} for _ in self._params]
        # per parameter: its average (None before its first step), its
        # accumulation buffer (made at its first gradient, kept) and whether
        # the buffer holds gradients of this window
        self._ema = [None] * len(self._params)
        self._acc = [None] * len(self._params)
        self._seen = [False] * len(self._params)

    def _check_group(self, group):
        foreach = group.get("foreach")
        if foreach is not None and not isinstance(foreach, (bool, np.bool_)):
            raise TypeError(f"foreach must be None or a bool, got {foreach!r}")
        for name in ("lr", "beta2_decay", "eps", "d", "weight_decay", "maximize"):
            if name not in group:
                raise ValueError(f"{name} is missing")
        _core._adafactor_hypers(group["lr"], group["beta2_decay"], group["eps"],
                                group["d"], group["weight_decay"], group["maximize"])

    def _make_plans(self):
        # states are kept per parameter (self._states), not in plans; the
        # parameters are checked here, as a Plan checks them
        for i, p in enumerate(self._params):
            if not isinstance(p, np.ndarray) or p.dtype not in (np.float32, np.float64):
                raise TypeError(f"parameter {self._labels[i]!r} must be a float32 "
                                f"or float64 numpy.ndarray, got "
                                f"{getattr(p, 'dtype', type(p).__name__)}")
            if not (p.flags.c_contiguous and p.flags.aligned and p.flags.writeable
                    and p.dtype.isnative):
                raise ValueError(f"parameter {self._labels[i]!r} must be a "
                                 f"writable, C-contiguous, aligned, native-order array")
        return [], []

    def _kernel_hypers(self, group):
        return {k: group[k] for k in ("lr", "beta2_decay", "eps", "d",
                                      "weight_decay", "maximize")}

    def _new_states(self, p):
        return {s.state_key: np.zeros(s.shape_for(p.shape), dtype=p.dtype)
                for s in self.rule.states if s.present(p.ndim)}

    def step(self, grads):
        """Apply one update with ``grads`` (a list in the parameters' order,
        or a dict by name); a None gradient leaves its parameter, state and
        step count alone.  Returns False if ``skip_nonfinite`` skipped it,
        or, with ``accumulation_steps`` k > 1, on the calls that only
        accumulate."""
        with self._lock:
            if self._ema_swapped:
                raise RuntimeError("step() inside ema_weights(): the parameters "
                                   "hold their averages; step after the with block")
            ordered = self._ordered(grads)
            hypers, start = [], 0
            for group in self.param_groups:
                self._check_group(group)
                n = len(group["params"])
                hypers += [self._kernel_hypers(group)] * n
                start += n
            arrays = list(self._params)
            names = [f"parameter {label!r}" for label in self._labels]
            for i, (p, g) in enumerate(zip(self._params, ordered)):
                if g is None:
                    continue
                label = self._labels[i]
                if not isinstance(g, np.ndarray):
                    raise TypeError(f"grad of parameter {label!r} must be a "
                                    f"numpy.ndarray, got {type(g).__name__}")
                if g.dtype != p.dtype or g.shape != p.shape:
                    raise ValueError(f"grad of parameter {label!r} must be a "
                                     f"{p.dtype} array of shape {p.shape}, got "
                                     f"{g.dtype} {g.shape}")
                if not (g.flags.c_contiguous and g.flags.aligned and g.dtype.isnative):
                    raise ValueError(f"grad of parameter {label!r} must be "
                                     f"C-contiguous, aligned and in native byte order")
                arrays.append(g)
                names.append(f"grad of parameter {label!r}")
            for i, state in enumerate(self._states):
                for key, value in state.items():
                    arrays.append(value)
                    names.append(f"state {key!r} of parameter {self._labels[i]!r}")
            for key, buffers in (("ema", self._ema), ("grad_accum", self._acc)):
                for i, value in enumerate(buffers):
                    if value is not None:
                        arrays.append(value)
                        names.append(f"state {key!r} of parameter {self._labels[i]!r}")
            _core.check_disjoint(arrays, names)
            finite = not self.skip_nonfinite or all(
                g is None or bool(np.isfinite(g).all()) for g in ordered)
            k = self.accumulation_steps
            if k > 1:
                if self._micro + 1 < k:
                    # not the window's last call: accumulate (a non-finite
                    # gradient marks the window, whose step is then skipped)
                    if finite:
                        for i, g in enumerate(ordered):
                            if g is not None:
                                self._accumulate(i, g)
                    else:
                        self._window_nonfinite = True
                    self._micro += 1
                    return False
                self._micro = 0
                if self.skip_nonfinite:
                    finite = finite and not self._window_nonfinite and all(
                        bool(np.isfinite(a).all())
                        for a, seen in zip(self._acc, self._seen) if seen)
                self._window_nonfinite = False
                if finite:
                    # the step makes the mean (acc + g) / k in its first
                    # pass; a window's first gradient in its last call is
                    # added to a cleared buffer (0 + g, as _accumulate)
                    means = []
                    for i, g in enumerate(ordered):
                        if g is not None and not self._seen[i]:
                            a = self._acc[i]
                            if a is None:
                                a = self._acc[i] = np.empty_like(self._params[i])
                            a.fill(0)
                        means.append(g is not None or self._seen[i])
                self._seen = [False] * len(self._params)
            if not finite:
                self.skipped_steps += 1
                return False
            w = None if self.ema_decay is None else 1.0 - self.ema_decay
            for i, (p, g) in enumerate(zip(self._params, ordered)):
                acc = None
                if k > 1:
                    if not means[i]:
                        continue
                    acc = self._acc[i]
                elif g is None:
                    continue
                if self._steps[i] == 0:
                    self._states[i] = self._new_states(p)
                s = self._states[i]
                ema = ema_weight = None
                if w is not None:
                    # the average moves in the step's own pass; the first
                    # one is a copy of the stepped parameter
                    if self._ema[i] is None:
                        ema = np.empty_like(p)
                    else:
                        ema, ema_weight = self._ema[i], w
                _core.adafactor(p, g, s.get("row_var"), s.get("col_var"),
                                s.get("variance"), step=self._steps[i] + 1,
                                ema=ema, ema_weight=ema_weight, grad_accum=acc,
                                mean_count=None if acc is None else k, **hypers[i])
                self._steps[i] += 1
                if ema is not None:
                    self._ema[i] = ema
            return True

    def _accumulate(self, i, g):
        """Add g into parameter i's buffer: 0 + g for its first gradient of
        the window (as the fused step adds into a cleared buffer: -0 becomes
        +0), acc + g after it."""
        a = self._acc[i]
        if a is None:
            a = self._acc[i] = np.empty_like(self._params[i])
        if self._seen[i]:
            np.add(a, g, out=a)
        else:
            np.add(g, a.dtype.type(0), out=a)
            self._seen[i] = True

    def state_dict(self):
        """As :meth:`fastopt.optim.Optimizer.state_dict`: ``{"format",
        "version", "optimizer", "state": {index: {"step": int, "row_var",
        "col_var" | "variance": array copies}}, "param_groups",
        "skipped_steps"}``."""
        with self._lock:
            state = {}
            for i, (t, s) in enumerate(zip(self._steps, self._states)):
                entry = {"step": t, **{k: v.copy() for k, v in s.items()}} if t else {"step": 0}
                if self._ema[i] is not None:
                    entry["ema"] = self._ema[i].copy()
                if self._seen[i]:
                    entry["grad_accum"] = self._acc[i].copy()
                if len(entry) > 1 or t:
                    state[i] = entry
            return self._state_dict_of(state)

    def load_state_dict(self, state_dict):
        """Restore a state from :meth:`state_dict`, copying its arrays; every
        mismatch raises ValueError and changes nothing."""
        with self._lock:
            if self._ema_swapped:
                raise RuntimeError("load_state_dict() inside ema_weights()")
            groups, steps, entries, skipped = checkpoint.check_state_dict(self, state_dict)
            micro, nonfinite = checkpoint.check_accumulation(self, state_dict)
            for group, hyper in zip(self.param_groups, groups):
                kept = {k: group[k] for k in ("params", "param_names") if k in group}
                group.clear()
                group.update(kept)
                group.update(hyper)
            extra = ("ema", "grad_accum")
            for i, p in enumerate(self._params):
                self._steps[i] = steps[i]
                self._states[i] = ({k: np.array(v, dtype=p.dtype, copy=True)
                                    for k, v in entries[i].items() if k not in extra}
                                   if steps[i] else {})
                self._ema[i], self._acc[i] = (
                    np.array(entries[i][k], dtype=p.dtype, copy=True)
                    if k in entries[i] else None for k in extra)
                self._seen[i] = "grad_accum" in entries[i]
            self.skipped_steps = skipped
            self._micro, self._window_nonfinite = micro, nonfinite

    def _swap_ema(self):
        for p, e in zip(self._params, self._ema):
            if e is not None:
                tmp = p.copy()
                np.copyto(p, e)
                np.copyto(e, tmp)
