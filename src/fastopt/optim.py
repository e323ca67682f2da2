"""Optimizer classes: torch.optim's interface over fastopt's fused kernels.

An optimizer owns a model's parameters (NumPy arrays, updated in place) and
their state.  ``step(grads)`` applies one update.  The classes are made from
the rule table (:mod:`fastopt.rules`): a class is its rule's defaults and
docstring over this module's :class:`Optimizer`.

The work of a step is organised around *buckets*, the parameters of one
group that share a dtype, each held by a ``fastopt._core.Plan``: the one step
engine, which checked parameters once, keeps each kind of state in ONE
contiguous buffer (with a view per parameter) and the step count of each
parameter, and steps a whole bucket in one call into C (one per distinct
step count when gradients were missing).  The C boundary fuses neighbouring
tensors whose arrays continue one another, so parameters, states and
gradients that are back-to-back views of one buffer each (see
:class:`fastopt.FlatParams`) are stepped as a single tensor.

Everything a step could reject is checked before the first array is written:
an error leaves parameters, states and step counts as they were.  Step
counts follow torch: each parameter counts the steps in which it got a
gradient, and bias corrections use that count.
"""
import contextlib
import numbers
import threading

import numpy as np

from fastopt import _core, checkpoint, reference
from fastopt.checkpoint import FORMAT, VERSION
from fastopt.rules import RULES

__all__ = ["Optimizer"] + [name for rule in RULES.values()
                           for name, *_ in rule.classes()]


STATE_DTYPES = (None, "float32", "float64", "bfloat16", "8bit")


def _check_state_dtype(state_dtype, seed):
    if state_dtype is not None and not isinstance(state_dtype, str):
        raise TypeError(f"state_dtype must be None or a str, got "
                        f"{type(state_dtype).__name__}")
    if state_dtype not in STATE_DTYPES:
        raise ValueError(f"state_dtype must be one of {list(STATE_DTYPES)}, "
                         f"got {state_dtype!r}")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")


def check_averaging(ema_decay, accumulation_steps):
    """The checked (ema_decay, accumulation_steps) of an optimizer: None or
    a decay in [0, 1), and an int k >= 1."""
    if ema_decay is not None:
        ema_decay = _core.check_real(ema_decay, "ema_decay", 0.0, 1.0,
                                     label="ema_decay value")
    if (isinstance(accumulation_steps, (bool, np.bool_))
            or not isinstance(accumulation_steps, numbers.Integral)):
        raise TypeError(f"accumulation_steps must be an int >= 1, got "
                        f"{type(accumulation_steps).__name__}")
    if not 1 <= accumulation_steps < 2 ** 31:
        raise ValueError(f"accumulation_steps must be an int >= 1, got "
                         f"{accumulation_steps!r}")
    return ema_decay, int(accumulation_steps)


class Optimizer:
    """Base class: parameter groups, buckets, checked steps and checkpoints.

    ``rule`` (a :class:`fastopt.rules.Rule`) says everything about the
    update; a subclass only sets it and its constructor's defaults.

    Parameters are given as a list or tuple of arrays, a dict name -> array,
    or a list of group dicts ``{"params": list or dict, **hyperparameters}``
    whose hyperparameters override the defaults.  Hyperparameters in
    ``param_groups`` may be changed between steps; the parameter lists may not.

    Every optimizer also takes, keyword-only:

    - ``ema_decay``: None (the default) or a decay in [0, 1): each step also
      keeps an exponential moving average of every parameter, in the same
      pass over memory, ``ema = lerp(ema, param, 1 - ema_decay)`` as
      torch.lerp computes it (torch.optim.swa_utils.AveragedModel with
      get_ema_multi_avg_fn): the average starts as a copy of the parameter
      after its first step.  ``with opt.ema_weights(): ...`` evaluates with
      the averages; the state_dict keeps them as state key ``"ema"``.
    - ``accumulation_steps``: k >= 1 (default 1).  With k > 1 the first
      k - 1 calls of ``step`` add their gradients into a buffer and change
      nothing else, and the k-th steps on the mean (g_1 + ... + g_k) / k
      (summed in call order, then divided by k) and clears the buffer, in one
      pass (optax.MultiSteps).  A None gradient adds nothing; a parameter
      steps at the k-th call if it got a gradient in any of the k calls.
      With ``skip_nonfinite``, a NaN or infinity in any of the k gradients
      skips the whole accumulated step (optax.apply_if_finite) and clears
      the buffer.  The buffers are state key ``"grad_accum"``, the calls
      made so far ``state_dict()["accumulation"]``.
    - ``state_dtype``: None (the default: states in the parameters' dtype;
      ``"float32"`` or ``"float64"`` say the same and must match it) or
      ``"bfloat16"`` for float32 parameters: every array state is kept as
      bfloat16 bits (uint16 arrays, 2 bytes an element in place of 4), the
      rule's float32 math runs on the decoded values in the same pass, and
      every state write rounds stochastically, its random bits a hash of
      (``seed``, the parameter's index, its step, the state, the element's
      index), so results are the same bits for every thread count and
      instruction set and are reproduced by
      :func:`fastopt.reference.bf16_step`.  Round-to-nearest would stall
      decaying averages (0.999 * v rounds back to v), which stochastic
      rounding does not do on average.  Underflow: a state below bfloat16's
      smallest subnormal (about 9.2e-41) becomes 0, e.g. Adam's v for
      |g| below about 1e-20, harmless next to eps.  ``state_float32(p)``
      reads a parameter's states as float32; :mod:`fastopt.states` converts
      states and state_dicts between dtypes.  Not for rules with a first
      pass over the states (LAMB, LARS).
    - ``state_dtype="8bit"`` (float32 parameters): every array state is
      kept as uint8 codes with one float32 scale per block of 256 elements
      of each parameter (the largest |value| of the block), about 1 byte an
      element.  A code is a tiny float relative to the block's scale, so
      that small values keep their relative precision: three mantissa
      bits and an exponent, over 32 binades for a state that is never
      negative (Adam's v, Adagrad's sum, RMSprop's square_avg, ...; 8 bits)
      and 16 for a signed one (a sign bit and 7 bits), code 0 being 0 and
      the top code the scale itself; codes round stochastically and
      without bias.  Each block is decoded, updated by the rule's
      float32 loop and requantized by one thread from L1, so results are the
      same bits for every thread count and instruction set and are
      reproduced by :func:`fastopt.reference.q8_step`.  A block holding a
      NaN or infinity keeps a non-finite scale and decodes to NaN.  The
      state_dict holds the codes under each state's key (uint8, the
      parameter's shape) and the scales under ``key + ".scale"`` (float32,
      one per block).
    - ``seed``: an int in [0, 2**64) (default 0), the seed of stochastic
      rounding; kept in the state_dict.
    """

    rule = None

    def __init__(self, params, defaults, *, skip_nonfinite=False,
                 ema_decay=None, accumulation_steps=1, state_dtype=None, seed=0):
        _core.check_flag(skip_nonfinite, "skip_nonfinite")
        _check_state_dtype(state_dtype, seed)
        ema_decay, accumulation_steps = check_averaging(ema_decay, accumulation_steps)
        self._check_group(defaults)
        if state_dtype in ("bfloat16", "8bit") and self.rule.reductions:
            raise ValueError(f"state_dtype={state_dtype!r} is not available for "
                             f"{type(self).__name__}: its first pass reads the "
                             f"states its update pass then writes")
        if state_dtype == "bfloat16" and self.rule.matrix:
            raise ValueError(f"state_dtype='bfloat16' is not available for "
                             f"{type(self).__name__}: its step has a matrix step "
                             f"between two passes over its states")
        self.defaults = dict(defaults)
        self.skip_nonfinite = bool(skip_nonfinite)
        self.ema_decay = ema_decay
        self.accumulation_steps = int(accumulation_steps)
        self.state_dtype = state_dtype
        self.seed = int(seed)
        self._micro = 0               # calls accumulated in this window
        self._window_nonfinite = False
        self._ema_swapped = False
        self.skipped_steps = 0
        self._lock = threading.Lock()
        self.param_groups = []
        self._params = []
        self._labels = []
        named = True
        specs, self._list_ok = self._group_specs(params)
        for spec, names, arrays in specs:
            group = {"params": arrays, **self.defaults, **spec}
            self._check_group(group)
            if names is not None:
                group["param_names"] = names
                self._labels.extend(names)
            else:
                named = False
                self._labels.extend(range(len(self._params),
                                          len(self._params) + len(arrays)))
            self._params.extend(arrays)
            self.param_groups.append(group)
        if not self._params:
            raise ValueError("optimizer got an empty parameter list")
        self._names = None
        if named:
            if len(set(self._labels)) != len(self._labels):
                raise ValueError("parameter names must be unique across groups")
            self._names = list(self._labels)
            self._name_set = set(self._names)
        self._plans, self._index = self._make_plans()
        _core.check_disjoint(self._params, [f"parameter {label!r}"
                                            for label in self._labels])
        for plan, idx in zip(self._plans, self._index):
            dtype = plan.params[0].dtype
            if state_dtype in ("float32", "float64") and dtype != state_dtype:
                raise ValueError(f"state_dtype={state_dtype!r} but parameter "
                                 f"{self._labels[idx[0]]!r} is {dtype}: array states "
                                 f"follow their parameter's dtype, or are 'bfloat16'")
            if state_dtype == "bfloat16":
                plan.set_state_format("bfloat16", self.seed, idx)
            elif state_dtype == "8bit":
                plan.set_state_format("8bit", self.seed, idx, nonneg=self._nonneg_slots())
        for plan in self._plans:
            if ema_decay is not None:
                plan.enable_ema(1.0 - ema_decay)
            if self.accumulation_steps > 1:
                plan.enable_accumulation()
        # The common case, one bucket holding every parameter in order: a
        # step hands the caller's gradients to the plan as they are.
        self._single = len(self._plans) == 1 and self.accumulation_steps == 1

    def _check_group(self, group):
        _core.check_hyperparameters(self.rule.name, group)

    @staticmethod
    def _group_specs(params):
        """[(hyperparameter overrides, names or None, arrays)], list_ok."""
        def arrays_of(p, where):
            if isinstance(p, dict):
                for name in p:
                    if not isinstance(name, str):
                        raise TypeError(f"parameter names must be str, got "
                                        f"{name!r} in {where}")
                return list(p), list(p.values())
            if isinstance(p, (list, tuple)):
                return None, list(p)
            raise TypeError(f"{where} must be a list, tuple or dict of arrays, "
                            f"got {type(p).__name__}"
                            + ("; wrap a single array in a list"
                               if isinstance(p, np.ndarray) else ""))

        if isinstance(params, (list, tuple)) and params and all(
                isinstance(g, dict) for g in params):
            specs = []
            for k, g in enumerate(params):
                if "params" not in g:
                    raise ValueError(f"parameter group {k} has no 'params'")
                names, arrays = arrays_of(g["params"], f"param_groups[{k}]['params']")
                spec = {key: v for key, v in g.items() if key != "params"}
                specs.append((spec, names, arrays))
            return specs, True
        if isinstance(params, (list, tuple)) and any(isinstance(g, dict) for g in params):
            raise TypeError("params must be all arrays or all group dicts")
        names, arrays = arrays_of(params, "params")
        return [({}, names, arrays)], names is None

    def _make_plans(self):
        """A plan per bucket, and the parameter positions of each."""
        plans, index, start = [], [], 0
        for group in self.param_groups:
            positions = range(start, start + len(group["params"]))
            dtypes = dict.fromkeys(getattr(self._params[i], "dtype", None)
                                   for i in positions)
            for dtype in dtypes:
                idx = [i for i in positions
                       if getattr(self._params[i], "dtype", None) == dtype]
                names = ([self._names[i] for i in idx]
                         if self._names is not None else None)
                plans.append(_core.Plan(self.rule.name, [self._params[i] for i in idx],
                                        group, [self._labels[i] for i in idx], names))
                index.append(idx)
            start += len(group["params"])
        return plans, index

    # -- stepping ------------------------------------------------------------

    def step(self, grads):
        """Apply one update with ``grads``; return False if it was skipped.

        ``grads`` has the structure of the parameters: a list in their order
        (for group dicts: all groups' parameters in order), or a dict with
        the parameters' names.  A grad of None leaves its parameter, state
        and step count alone.  With ``skip_nonfinite=True`` a step with any
        NaN or infinite gradient changes nothing, counts in
        ``skipped_steps`` and returns False; otherwise step returns True.
        With ``accumulation_steps`` k > 1, only every k-th call updates the
        parameters and returns True; the others accumulate and return False.
        """
        with self._lock:
            if self._ema_swapped:
                raise RuntimeError("step() inside ema_weights(): the parameters "
                                   "hold their averages; step after the with block")
            if self.accumulation_steps > 1:
                return self._accumulating_step(grads)
            if self._single:
                # a list, or a dict by name, goes to the plan as it is
                if not ((type(grads) is list and self._list_ok)
                        or (type(grads) is dict and self._names is not None)):
                    grads = self._ordered(grads)
                if self._plans[0].step(grads, self.skip_nonfinite) == 2:
                    self.skipped_steps += 1
                    return False
                return True
            ordered = self._ordered(grads)
            parts = [[ordered[i] for i in idx] for idx in self._index]
            for plan, part in zip(self._plans, parts):
                plan.prepare(part)
            self._check_across(ordered)
            if self.skip_nonfinite and not all(plan.allfinite() for plan in self._plans):
                self.skipped_steps += 1
                return False
            for plan in self._plans:
                plan.run()
            return True

    def _accumulating_step(self, grads):
        ordered = self._ordered(grads)
        parts = [[ordered[i] for i in idx] for idx in self._index]
        final = self._micro + 1 == self.accumulation_steps
        for plan, part in zip(self._plans, parts):
            plan.prepare(part, final)
        self._check_across(ordered)
        finite = not self.skip_nonfinite or all(
            plan.allfinite(final) for plan in self._plans)
        if not final:
            if finite:
                for plan in self._plans:
                    plan.accumulate()
            else:
                self._window_nonfinite = True
            self._micro += 1
            return False
        self._micro = 0
        if not finite or self._window_nonfinite:
            self._window_nonfinite = False
            for plan in self._plans:
                plan.clear_accumulation()
            self.skipped_steps += 1
            return False
        for plan in self._plans:
            plan.run(float(self.accumulation_steps))
        return True

    def _check_across(self, ordered):
        """Each plan checked its own arrays; here no gradient may share
        memory with another bucket's arrays either."""
        arrays = list(self._params)
        names = [f"parameter {label!r}" for label in self._labels]
        for g, label in zip(ordered, self._labels):
            if g is not None:
                arrays.append(g)
                names.append(f"grad of parameter {label!r}")
        for plan in self._plans:
            for slot, key in enumerate(self.rule.state_keys):
                views = plan.state(slot)
                if views is not None:
                    arrays.append(views[0].base if views[0].base is not None else views[0])
                    names.append(f"the {key} buffer")
        _core.check_disjoint(arrays, names)

    def _ordered(self, grads):
        """grads as one list aligned with self._params."""
        if type(grads) is list and self._list_ok and len(grads) == len(self._params):
            return grads
        if isinstance(grads, dict):
            if self._names is None:
                raise TypeError("grads must be a list: the parameters were "
                                "given without names")
            if grads.keys() != self._name_set:
                missing = [k for k in self._names if k not in grads]
                extra = [k for k in grads if k not in self._name_set]
                raise ValueError(f"grads must have the parameters' names; "
                                 f"missing {missing}, unexpected {extra}")
            return [grads[k] for k in self._names]
        if isinstance(grads, (list, tuple)):
            if not self._list_ok:
                raise TypeError("grads must be a dict: the parameters were "
                                "given as a dict")
            if len(grads) != len(self._params):
                raise ValueError(f"got {len(grads)} gradients for "
                                 f"{len(self._params)} parameters")
            return grads if type(grads) is list else list(grads)
        raise TypeError(f"grads must be a list or dict of arrays, got "
                        f"{type(grads).__name__}")

    # -- state ---------------------------------------------------------------

    def _hyper(self, group):
        return {k: v for k, v in group.items() if k not in ("params", "param_names")}

    def state_dict(self):
        """The optimizer's state as a dict of plain values and array copies:

        ``{"format": "fastopt", "version": 1, "optimizer": class name,
        "state": {index: {"step": int, key: array, ...}},
        (a per-tensor scalar state, such as NAdam's mu_product, as a 0-d
        float64 array, as torch keeps it in a 0-d tensor)
        "param_groups": [{**hyperparameters, "params": [index, ...]}],
        "skipped_steps": int}``, indices counting parameters across groups,
        state keys as torch names them.  Only parameters that have taken a
        step have a state entry."""
        keys = self.rule.state_keys
        with self._lock:
            state = {}
            for plan, idx in zip(self._plans, self._index):
                views = [plan.state(k) for k in range(len(keys))]
                scalars = plan.get_scalars()
                ema, ema_ready = plan.ema(), plan.get_flags("ema")
                acc, seen = plan.accumulated(), plan.get_flags("seen")
                for j, (i, t) in enumerate(zip(idx, plan.get_steps())):
                    entry = {"step": t}
                    if t:
                        for key, v in zip(keys, views):
                            if v is not None:
                                entry[key] = v[j].copy()
                        if self._q8:
                            for slot, key in enumerate(keys):
                                sv = plan.scales(slot)
                                if sv is not None:
                                    entry[key + ".scale"] = sv[j].copy()
                        for key, value in zip(self.rule.scalar_keys, scalars[j]):
                            entry[key] = np.array(value)
                    if ema is not None and ema_ready[j]:
                        entry["ema"] = ema[j].copy()
                    if acc is not None and seen[j]:
                        entry["grad_accum"] = acc[j].copy()
                    if len(entry) > 1 or t:
                        state[i] = entry
            extra = {}
            if self._bf16 or self._q8:
                extra = {"state_dtype": self.state_dtype, "seed": self.seed}
            return self._state_dict_of(state, extra)

    def _state_dict_of(self, state, extra=None):
        """The state dict around the parameters' entries `state` (index:
        entry): the format's header, the groups' hyperparameters with
        their parameters' indices, `extra`'s fields, and the accumulation
        window; the caller holds the lock."""
        groups, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            saved = {**self._hyper(group), "params": list(range(start, start + n))}
            if "param_names" in group:
                saved["param_names"] = list(group["param_names"])
            groups.append(saved)
            start += n
        sd = {"format": FORMAT, "version": VERSION,
              "optimizer": type(self).__name__,
              "state": dict(sorted(state.items())),
              "param_groups": groups,
              "skipped_steps": self.skipped_steps,
              **(extra or {})}
        if self.accumulation_steps > 1:
            sd["accumulation"] = {"steps": self.accumulation_steps,
                                  "count": self._micro,
                                  "nonfinite": self._window_nonfinite}
        return sd

    def load_state_dict(self, state_dict):
        """Restore a state from :meth:`state_dict`, copying its arrays.

        Everything is checked first (format, optimizer class, group and
        parameter counts, hyperparameters, step counts, state shapes and
        dtypes); any mismatch raises ValueError and changes nothing."""
        keys = self.rule.state_keys
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
            scalar_keys = self.rule.scalar_keys
            for plan, idx in zip(self._plans, self._index):
                plan.set_steps([steps[i] for i in idx])
                # a parameter without a saved step gets its start values at
                # its first step
                plan.set_scalars([tuple(float(entries[i].get(key, 0.0))
                                        for key in scalar_keys) for i in idx])
                for slot, key in enumerate(keys):
                    if any(key in entries[i] for i in idx):
                        plan.allocate(slot, 0.0)
                    views = plan.state(slot)
                    if views is None:
                        continue
                    init = self._initial(plan.group, slot)
                    scales = plan.scales(slot)
                    for j, (i, view) in enumerate(zip(idx, views)):
                        if key in entries[i]:
                            np.copyto(view, entries[i][key])
                            if scales is not None:
                                np.copyto(scales[j], entries[i][key + ".scale"])
                        else:
                            plan.fill_state(slot, j, init)
                for flag, key, views in (("ema", "ema", plan.ema()),
                                         ("seen", "grad_accum", plan.accumulated())):
                    if views is None:
                        continue
                    plan.set_flags(flag, [key in entries[i] for i in idx])
                    for i, view in zip(idx, views):
                        if key in entries[i]:
                            np.copyto(view, entries[i][key])
                        else:
                            view.fill(0)
            self.skipped_steps = skipped
            self._micro, self._window_nonfinite = micro, nonfinite
            if self._bf16 or self._q8:
                self.seed = int(state_dict["seed"])
                for plan in self._plans:
                    plan.set_seed(self.seed)

    def swap(self, key):
        """Exchange every parameter's values with those of its state ``key``
        (an array state such as ASGD's ``ax``), in place; a second call swaps
        them back, bit for bit.  For evaluating with averaged weights:
        ``opt.swap("ax"); evaluate(); opt.swap("ax")``.  Parameters that have
        not taken a step have no such state and keep their values."""
        keys = self.rule.state_keys
        if key not in keys:
            raise ValueError(f"{type(self).__name__} has no array state {key!r}; "
                             f"its states are {list(keys)}")
        if self._bf16 or self._q8:
            raise ValueError(f"swap() needs states in the parameters' dtype: with "
                             f"state_dtype={self.state_dtype!r} a parameter could not get its "
                             "own bits back; read the average with state_float32(p)")
        slot = keys.index(key)
        with self._lock:
            for plan in self._plans:
                views = plan.state(slot)
                if views is None:
                    continue
                for p, v, t in zip(plan.params, views, plan.get_steps()):
                    if t:
                        tmp = p.copy()
                        np.copyto(p, v)
                        np.copyto(v, tmp)

    @contextlib.contextmanager
    def ema_weights(self):
        """Within the ``with`` block the parameters hold their averages
        (``ema_decay``); on leaving it they get their own values back, bit
        for bit.  Parameters without an average yet keep their values.
        Stepping inside the block raises RuntimeError."""
        if self.ema_decay is None:
            raise ValueError(f"{type(self).__name__} keeps no averages; make it "
                             f"with ema_decay=... to use ema_weights()")
        with self._lock:
            if self._ema_swapped:
                raise RuntimeError("ema_weights() is already active")
            self._swap_ema()
            self._ema_swapped = True
        try:
            yield self
        finally:
            with self._lock:
                self._swap_ema()
                self._ema_swapped = False

    def _swap_ema(self):
        for plan in self._plans:
            for p, e, ready in zip(plan.params, plan.ema(), plan.get_flags("ema")):
                if ready:
                    tmp = p.copy()
                    np.copyto(p, e)
                    np.copyto(e, tmp)

    @property
    def _bf16(self):
        return self.state_dtype == "bfloat16"

    @property
    def _q8(self):
        return self.state_dtype == "8bit"

    def _nonneg_slots(self):
        """The slots of the states that are never negative (coded without a
        sign in 8 bits)."""
        return [k for k, st in enumerate(self.rule.states) if st.sign == "nonneg"]

    def _decoded(self, plan, slot, j, view):
        """Parameter j's state ``slot`` of ``plan`` (its view) in float32."""
        if self._bf16:
            return _core.bf16_decode(view)
        if self._q8:
            nonneg = self.rule.states[slot].sign == "nonneg"
            return _core.q8_decode(view, plan.scales(slot)[j], nonneg).reshape(view.shape)
        return view.copy()

    def _stored(self, value):
        """A state element's start value as the states store it."""
        return int(reference.bf16_nearest(value)) if self._bf16 else value

    def state_float32(self, param):
        """The array states of ``param`` (one of the optimizer's parameter
        arrays) as new arrays in float32, or in the parameter's dtype when
        the states are kept in it: ``{state key: array}``, bfloat16 states
        decoded exactly.  Empty before the parameter's first step."""
        for plan, idx in zip(self._plans, self._index):
            for j, p in enumerate(plan.params):
                if p is param:
                    with self._lock:
                        if not plan.get_steps()[j]:
                            return {}
                        out = {}
                        for slot, key in enumerate(self.rule.state_keys):
                            views = plan.state(slot)
                            if views is not None:
                                out[key] = self._decoded(plan, slot, j, views[j])
                        return out
        raise ValueError("param is not one of the optimizer's parameter arrays")

    def _initial(self, group, slot):
        init = self.rule.states[slot].initial
        return float(group[init]) if isinstance(init, str) else float(init)

    def save(self, path):
        """Write the state to ``path`` atomically (see fastopt.checkpoint)."""
        checkpoint.save(self, path)

    def load(self, path):
        """Restore the state written by :meth:`save` (see fastopt.checkpoint)."""
        checkpoint.load(self, path)

    def __repr__(self):
        return (f"{type(self).__name__}({len(self._params)} parameters in "
                f"{len(self.param_groups)} groups, defaults={self.defaults})")


# ---------------------------------------------------------------------------
# Methods of the schedule-free rules' classes


def _lerp(param, end, weight):
    """param = torch.lerp(param, end, weight), in place, with torch's two
    branches (ATen/native/Lerp.h): param + weight * (end - param) for
    |weight| < 0.5, end - (end - param) * (1 - weight) otherwise; weight
    and 1 - weight rounded once to the arrays' dtype, as NumPy rounds a
    Python float.  Element-wise, so the result of each element depends on
    that element alone."""
    diff = end - param
    if abs(weight) < 0.5:
        param[...] = param + weight * diff
    else:
        param[...] = end - diff * (1.0 - weight)


class ScheduleFree(Optimizer):
    """train() and eval() of the schedule-free rules (the schedulefree
    package's methods of the same names).

    During training the parameters hold y; ``eval()`` sets them to x, the
    average the schedule-free method evaluates at (x = lerp(y, z, 1 - 1/beta)),
    and ``train()`` back to y (y = lerp(x, z, 1 - beta)), with beta = betas[0]
    (AdamW) or momentum (SGD) of each parameter's group.  A second call of
    the same method changes nothing (``train_mode`` says which is in force).
    A step in eval mode raises RuntimeError.  Parameters that have not
    taken a step have no z and keep their values, as in the package.  The
    swap rounds (lerp there and back is y up to rounding, as in the package).

    Unlike the package, a new optimizer starts in train mode: before its
    first step no parameter has a z, so the package's required first
    ``train()`` changes nothing there, and the trajectories are the same.
    ``state_dict()`` and checkpoints carry ``train_mode``; loading one sets
    the mode and leaves the parameters as they are (they are the caller's,
    saved in the mode the checkpoint names)."""

    train_mode = True

    def _beta(self, group):
        return group["betas"][0] if "betas" in group else group["momentum"]

    def _switch(self, to_train):
        slot = self.rule.state_keys.index("z")
        with self._lock:
            if self.train_mode == to_train:
                return
            for group in self.param_groups:
                self._check_group(self._hyper(group))
                if not to_train and not self._beta(group) > 0:
                    # y = (1 - beta) z + beta x: with beta = 0, y is z and
                    # x cannot be recovered (the package divides by zero)
                    name = "betas[0]" if "betas" in group else "momentum"
                    raise ValueError(f"eval() needs {name} > 0, got "
                                     f"{self._beta(group)!r}: with 0 the "
                                     f"parameters hold z and x is lost")
            for plan in self._plans:
                views = plan.state(slot)
                if views is None:
                    continue
                beta = float(self._beta(plan.group))
                weight = 1.0 - beta if to_train else 1.0 - 1.0 / beta
                for j, (p, z, t) in enumerate(zip(plan.params, views, plan.get_steps())):
                    if t:
                        if self._bf16 or self._q8:
                            z = self._decoded(plan, slot, j, z)
                        _lerp(p, z, weight)
            self.train_mode = to_train

    def train(self):
        """Set the parameters to y, the point where gradients are taken
        (a no-op in train mode)."""
        self._switch(True)

    def eval(self):
        """Set the parameters to x, the averaged point to evaluate and save
        the model at (a no-op in eval mode)."""
        self._switch(False)

    def step(self, grads):
        if not self.train_mode:
            raise RuntimeError(f"{type(self).__name__} is in eval mode (the "
                               f"parameters hold x): call .train() before "
                               f".step(), and .eval() again before evaluating")
        return Optimizer.step(self, grads)

    def state_dict(self):
        """Optimizer.state_dict() and ``"train_mode"``: the mode the
        parameters were in."""
        state = Optimizer.state_dict(self)
        state["train_mode"] = self.train_mode
        return state

    def load_state_dict(self, state_dict):
        """Optimizer.load_state_dict(), and the train or eval mode of the
        state_dict (a bool ``"train_mode"``, required)."""
        mode = state_dict.get("train_mode") if isinstance(state_dict, dict) else None
        if not isinstance(mode, (bool, np.bool_)):
            raise ValueError(f"state_dict of {type(self).__name__} needs a bool "
                             f"'train_mode', got {mode!r}")
        Optimizer.load_state_dict(self, state_dict)
        self.train_mode = bool(mode)


# ---------------------------------------------------------------------------
# The classes, from the table


def _docstring(rule, doc, fixed):
    lines = [doc, "",
             f"The rule, line by line: :func:`fastopt.reference.{rule.name}`.",
             f"Source: {rule.source}."]
    if rule.torch:
        lines.append(f"Names, defaults and state keys: {rule.torch}.")
    lines += ["", "Hyperparameters:"]
    lines += [f"    {h.name}: {h.doc}" for h in rule.hypers if h.name not in fixed]
    lines += ["    skip_nonfinite: skip a step whose gradients hold a NaN or an infinity",
              "", "States: " + ", ".join(
                  [s.state_key + ("" if s.when is None else f" (when {s.when})")
                   for s in rule.states]
                  + [f"{s.name} (per tensor)" for s in rule.scalar_states])]
    return "\n".join(lines)


def _make_class(rule, name, fixed, defaults, doc, base):
    """A subclass of ``base`` whose constructor has the rule's
    hyperparameters (less ``fixed``) with their defaults, torch's order."""
    hypers = [h for h in rule.hypers if h.name not in fixed]
    default = {h.name: defaults.get(h.name, h.default) for h in hypers}
    args = ", ".join(f"{h.name}={default[h.name]!r}" for h in hypers if not h.keyword_only)
    kwargs = ", ".join(f"{h.name}={default[h.name]!r}" for h in hypers if h.keyword_only)
    given = ", ".join(f"{h.name}={h.name}" for h in hypers)
    source = (f"def __init__(self, params, {args}, *, {kwargs}, skip_nonfinite=False,\n"
              f"             ema_decay=None, accumulation_steps=1, state_dtype=None,\n"
              f"             seed=0):\n"
              f"    Optimizer.__init__(self, params, dict({given}, **FIXED),\n"
              f"                       skip_nonfinite=skip_nonfinite, ema_decay=ema_decay,\n"
              f"                       accumulation_steps=accumulation_steps,\n"
              f"                       state_dtype=state_dtype, seed=seed)\n")
    namespace = {"Optimizer": Optimizer, "FIXED": dict(fixed)}
    exec(source, namespace)
    return type(name, (base,), {"__init__": namespace["__init__"], "rule": rule,
                                "__doc__": _docstring(rule, doc, fixed),
                                "__module__": __name__, "__qualname__": name})


def _classes():
    made = {}
    for rule in RULES.values():
        base = globals()[rule.mixin] if rule.mixin else Optimizer
        for name, fixed, defaults, doc in rule.classes():
            made[name] = _make_class(rule, name, fixed, defaults, doc, base)
            base = made[rule.cls]
    return made


globals().update(_classes())
