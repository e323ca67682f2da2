"""Optimizer classes: torch.optim's interface over fastopt's fused kernels.

An optimizer owns a model's parameters (NumPy arrays, updated in place) and
their state.  ``step(grads)`` applies one update.  The work of a step is
organised around *buckets*: the parameters of one group that share a dtype.
Each bucket keeps its parameters in a list and each kind of state in ONE
contiguous buffer (with per-parameter views).  In the common case (one
bucket, every gradient present, equal step counts) a step is a single call
into C through a ``fastopt._core.Plan``, which checked parameters and states
once and checks only the gradients per step; otherwise a step makes one
``fastopt._core.*_many`` call per bucket and step count.  The C boundary
fuses neighbouring tensors whose arrays continue one another, so parameters,
states and gradients that are back-to-back views of one buffer each (see
:class:`fastopt.FlatParams`) are stepped as a single tensor.

Everything a step could reject is checked before the first array is written:
an error leaves parameters, states and step counts as they were.

Step counts follow torch: each parameter counts the steps in which it got a
gradient, and bias corrections use that count.
"""
import math
import numbers
import threading
from operator import attrgetter

import numpy as np

from fastopt import _core, checkpoint
from fastopt.checkpoint import FORMAT, VERSION

__all__ = ["Optimizer", "SGD", "Momentum", "RMSprop", "Adam", "AdamW",
           "Adagrad"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_MAX_STEP = 2 ** 62          # the core refuses larger step counts
_ALL = "all"                 # a call covering every tensor of a bucket
_shape = attrgetter("shape")


# ---------------------------------------------------------------------------
# Hyperparameter checks, with torch.optim's wording


def _real(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} is outside the float range: {value!r}") from None


def _check_range(value, name, label, hi=math.inf, hi_open=True):
    """value is finite, >= 0 and < hi (hi_open) or <= hi."""
    v = _real(value, name)
    if not (math.isfinite(v) and v >= 0.0 and (v < hi if hi_open else v <= hi)):
        raise ValueError(f"Invalid {label}: {value}")


def _check_flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


def _check_betas(betas):
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for i, beta in enumerate(betas):
        _check_range(beta, f"betas[{i}]", f"beta parameter at index {i}", 1.0)


def _check_common(group):
    _check_range(group["lr"], "lr", "learning rate")
    _check_range(group["weight_decay"], "weight_decay", "weight_decay value")
    _check_flag(group["maximize"], "maximize")


# ---------------------------------------------------------------------------
# Arrays


def _address(a):
    return a.__array_interface__["data"][0]


def _check_disjoint(ranges):
    """ranges: (address, nbytes, what) triples; raise if two intersect."""
    ranges = sorted(r for r in ranges if r[1])
    widest = None
    for lo, nbytes, what in ranges:
        if widest is not None and lo < widest[0] + widest[1]:
            raise ValueError(f"{what} overlaps {widest[2]} in memory; every "
                             f"array of a step must be separate")
        if widest is None or lo + nbytes > widest[0] + widest[1]:
            widest = (lo, nbytes, what)


def _check_param(p, label):
    if not isinstance(p, np.ndarray):
        raise TypeError(f"parameter {label!r} must be a numpy.ndarray, got "
                        f"{type(p).__name__}")
    if p.dtype not in _FLOATS:
        if p.dtype.kind == "f" and p.dtype.newbyteorder() in _FLOATS:
            raise TypeError(f"parameter {label!r} must be in native byte "
                            f"order, got {p.dtype}")
        raise TypeError(f"parameter {label!r} must have dtype float32 or "
                        f"float64, got {p.dtype}")
    if not p.flags.c_contiguous:
        raise ValueError(f"parameter {label!r} must be C-contiguous: it is "
                         f"updated in place, so it cannot be copied")
    if not p.flags.aligned:
        raise ValueError(f"parameter {label!r} is not aligned to its dtype")
    if not p.flags.writeable:
        raise ValueError(f"parameter {label!r} is read-only; it is updated "
                         f"in place")


def _grad_error(g, shape, label):
    if not isinstance(g, np.ndarray):
        return TypeError(f"grad of parameter {label!r} must be a "
                         f"numpy.ndarray or None, got {type(g).__name__}")
    return ValueError(f"grad of parameter {label!r} has shape {g.shape} "
                      f"but the parameter has shape {shape}")


def _check_step_count(step, where):
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral):
        raise ValueError(f"{where}: step must be an int, got {type(step).__name__}")
    if not 0 <= step < _MAX_STEP:
        raise ValueError(f"{where}: step must be >= 0 and < 2**62, got {step}")


# ---------------------------------------------------------------------------
# Buckets


class _Bucket:
    """The parameters of one group that share a dtype: the unit of a call.

    States live in one 1-D buffer per kind (``buffers``), with views shaped
    like the parameters (``views``).  Step counts are one int while they are
    equal (``step``) and a list only after they diverge (``steps``)."""

    def __init__(self, group, index, params, labels):
        self.group = group
        self.index = index
        self.params = params
        self.labels = labels
        self.dtype = params[0].dtype
        self.shapes = [p.shape for p in params]
        self.sizes = [p.size for p in params]
        self.total = sum(self.sizes)
        self.step = 0
        self.steps = None
        self.buffers = {}
        self.views = {}
        self._cached_sel = self._cached_slots = self._cached_states = None

    def step_list(self):
        return self.steps if self.steps is not None else [self.step] * len(self.params)

    def allocate(self, kind, value):
        buf = np.full(self.total, value, dtype=self.dtype)
        views, offset = [], 0
        for p, n in zip(self.params, self.sizes):
            views.append(buf[offset:offset + n].reshape(p.shape))
            offset += n
        self.buffers[kind] = buf
        self.views[kind] = views
        self._cached_sel = None

    def check_grads(self, grads):
        """Raise unless each grad is None or has its parameter's shape;
        return the number of Nones.

        The type, dtype and memory layout are left to the kernel call, which
        checks them before writing, or to Optimizer._precheck when a step
        makes several calls."""
        try:
            if list(map(_shape, grads)) == self.shapes:
                return 0
        except AttributeError:  # a None or not an array: look one by one
            pass
        missing = 0
        for g, shape, label in zip(grads, self.shapes, self.labels):
            if g is None:
                missing += 1
            elif not isinstance(g, np.ndarray) or g.shape != shape:
                raise _grad_error(g, shape, label)
        return missing

    def calls(self, grads, missing):
        """The kernel calls for this step: (bucket, selection, params, grads,
        step, labels), one per distinct step count among present grads."""
        if missing == 0 and self.steps is None:
            return [(self, _ALL, self.params, grads, self.step + 1, self.labels)]
        steps = self.step_list()
        by_step = {}
        for j, g in enumerate(grads):
            if g is not None:
                by_step.setdefault(steps[j], []).append(j)
        return [(self, sel, [self.params[j] for j in sel], [grads[j] for j in sel],
                 t + 1, [self.labels[j] for j in sel])
                for t, sel in by_step.items()]

    def states(self, slots, sel, initial):
        """The state arrays of a call, per slot (None for an unused slot);
        kinds not allocated yet start at initial(kind)."""
        if sel is self._cached_sel and slots == self._cached_slots:
            return self._cached_states
        for kind in slots:
            if kind is not None and kind not in self.buffers:
                self.allocate(kind, initial(kind))
        if sel is _ALL:
            states = [None if k is None else self.views[k] for k in slots]
        else:
            return [None if k is None else [self.views[k][j] for j in sel]
                    for k in slots]
        # Buffers and views never move, so whole-bucket lists can be reused.
        self._cached_sel, self._cached_slots, self._cached_states = sel, slots, states
        return states

    def advance(self, sel):
        if sel is _ALL:
            self.step += 1
            return
        steps = self.step_list()
        for j in sel:
            steps[j] += 1
        if steps.count(steps[0]) == len(steps):
            self.step, self.steps = steps[0], None
        else:
            self.step, self.steps = None, steps


# ---------------------------------------------------------------------------
# The base class


class Optimizer:
    """Base class: parameter groups, buckets, checked steps and checkpoints.

    Subclasses define the rule through four hooks: ``_check_group`` (the
    hyperparameter checks), ``_slots`` (the state kinds a group needs, in the
    kernel's argument order, None for an unused slot), ``_update`` (one call
    of the rule's ``*_many`` kernel) and, when a state does not start at
    zero, ``_initial``.  ``_kinds`` lists every state kind of the rule in the
    kernel's slot order, ``_rule`` names the kernel for ``_core.Plan``.

    Parameters are given as a list or tuple of arrays, a dict name -> array,
    or a list of group dicts ``{"params": list or dict, **hyperparameters}``
    whose hyperparameters override the defaults.  Hyperparameters in
    ``param_groups`` may be changed between steps; the parameter lists may not.
    """

    _kinds = ()
    _rule = None
    # kinds an option may switch on after steps were taken: a state without
    # them is whole, the buffer starts afresh
    _optional = ()

    def __init__(self, params, defaults, *, skip_nonfinite=False):
        _check_flag(skip_nonfinite, "skip_nonfinite")
        self._check_group(defaults)
        self.defaults = dict(defaults)
        self.skip_nonfinite = bool(skip_nonfinite)
        self.skipped_steps = 0
        self._lock = threading.Lock()
        self._fast = None
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
        for p, label in zip(self._params, self._labels):
            _check_param(p, label)
        _check_disjoint([(_address(p), p.nbytes, f"parameter {label!r}")
                         for p, label in zip(self._params, self._labels)])
        self._names = None
        if named:
            if len(set(self._labels)) != len(self._labels):
                raise ValueError("parameter names must be unique across groups")
            self._names = list(self._labels)
            self._name_set = set(self._names)
        self._buckets = self._make_buckets()
        # The common case, one bucket holding every parameter in order, lets
        # a step hand the caller's gradient list to the kernel as it is.
        self._single = (len(self._buckets) == 1
                        and len(self._buckets[0].params) == len(self._params))

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

    def _make_buckets(self):
        buckets, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            positions = range(start, start + n)
            for dtype in dict.fromkeys(self._params[i].dtype for i in positions):
                index = [i for i in positions if self._params[i].dtype == dtype]
                buckets.append(_Bucket(group, index,
                                       [self._params[i] for i in index],
                                       [self._labels[i] for i in index]))
            start += n
        return buckets

    # -- rule hooks ----------------------------------------------------------

    def _check_group(self, group):
        raise NotImplementedError

    def _slots(self, group):
        raise NotImplementedError

    def _update(self, group, params, grads, states, step, labels):
        raise NotImplementedError

    def _initial(self, group, kind):
        return 0.0

    # -- stepping ------------------------------------------------------------

    def step(self, grads):
        """Apply one update with ``grads``; return False if it was skipped.

        ``grads`` has the structure of the parameters: a list in their order
        (for group dicts: all groups' parameters in order), or a dict with
        the parameters' names.  A grad of None leaves its parameter, state
        and step count alone.  With ``skip_nonfinite=True`` a step with any
        NaN or infinite gradient changes nothing, counts in
        ``skipped_steps`` and returns False; otherwise step returns True.
        """
        with self._lock:
            plan = self._fast if self._fast is not None else self._make_fast()
            if plan is not None:
                bucket = self._buckets[0]
                code = plan.step(grads, bucket.step + 1, bucket.group,
                                 self.skip_nonfinite)
                if code == 1:
                    bucket.step += 1
                    return True
                if code == 2:
                    self.skipped_steps += 1
                    return False
            # The general path: check everything first, since making a
            # missing state buffer or a second call must not follow a failure.
            calls = self._plan(grads)
            self._precheck(calls)
            if self.skip_nonfinite and not self._allfinite(calls):
                self.skipped_steps += 1
                return False
            self._fast = None   # buffers or step counts may change below
            for bucket, sel, params, gs, step, labels in calls:
                group = bucket.group
                states = bucket.states(self._slots(group), sel,
                                       lambda kind: self._initial(group, kind))
                self._update(group, params, gs, states, step, labels)
                bucket.advance(sel)
            return True

    def _make_fast(self):
        """The _core.Plan for whole-model steps in one call into C, when the
        model is one bucket whose parameters share a step count; else None.
        Kept until a step takes the general path or a state is loaded."""
        if not self._single or self._buckets[0].steps is not None:
            return None
        bucket = self._buckets[0]
        states = [bucket.views.get(kind) for kind in self._kinds]
        self._fast = _core.Plan(self._rule, bucket.params,
                                states + [None] * (3 - len(states)),
                                bucket.labels, self._names)
        return self._fast

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

    def _plan(self, grads):
        """Check every gradient and return the step's kernel calls."""
        ordered = self._ordered(grads)
        if self._single:
            bucket = self._buckets[0]
            return bucket.calls(ordered, bucket.check_grads(ordered))
        calls = []
        for bucket in self._buckets:
            gs = [ordered[i] for i in bucket.index]
            calls.extend(bucket.calls(gs, bucket.check_grads(gs)))
        return calls

    def _precheck(self, calls):
        """Check in Python what the kernel calls would check, so that no
        call can fail after another has written, and a skipped step is never
        an invalid one."""
        for group in {id(c[0].group): c[0].group for c in calls}.values():
            self._check_group(group)
        ranges = []
        for bucket, sel, params, grads, step, labels in calls:
            for p, g, label in zip(params, grads, labels):
                if not isinstance(g, np.ndarray):
                    raise _grad_error(g, p.shape, label)
                if g.dtype != bucket.dtype:
                    raise TypeError(f"grad of parameter {label!r} has dtype "
                                    f"{g.dtype} but the parameter has dtype "
                                    f"{bucket.dtype}")
                if not (g.flags.c_contiguous and g.flags.aligned):
                    raise ValueError(f"grad of parameter {label!r} must be "
                                     f"C-contiguous and aligned")
                if not p.flags.writeable:
                    raise ValueError(f"parameter {label!r} is read-only; it "
                                     f"is updated in place")
                ranges.append((_address(p), p.nbytes, f"parameter {label!r}"))
                ranges.append((_address(g), g.nbytes,
                               f"grad of parameter {label!r}"))
        _check_disjoint(ranges)

    @staticmethod
    def _allfinite(calls):
        by_dtype = {}
        for bucket, sel, params, grads, step, labels in calls:
            gs, ls = by_dtype.setdefault(bucket.dtype, ([], []))
            gs.extend(grads)
            ls.extend(labels)
        return all(_core.grad_allfinite(gs, ls) for gs, ls in by_dtype.values())

    # -- state ---------------------------------------------------------------

    def _hyper(self, group):
        return {k: v for k, v in group.items() if k not in ("params", "param_names")}

    def state_dict(self):
        """The optimizer's state as a dict of plain values and array copies:

        ``{"format": "fastopt", "version": 1, "optimizer": class name,
        "state": {index: {"step": int, kind: array, ...}},
        "param_groups": [{**hyperparameters, "params": [index, ...]}],
        "skipped_steps": int}``, indices counting parameters across groups.
        Only parameters that have taken a step have a state entry."""
        with self._lock:
            state = {}
            for bucket in self._buckets:
                for j, (i, t) in enumerate(zip(bucket.index, bucket.step_list())):
                    if t:
                        entry = {"step": t}
                        for kind in self._kinds:
                            if kind in bucket.views:
                                entry[kind] = bucket.views[kind][j].copy()
                        state[i] = entry
            groups, start = [], 0
            for group in self.param_groups:
                n = len(group["params"])
                saved = {**self._hyper(group), "params": list(range(start, start + n))}
                if "param_names" in group:
                    saved["param_names"] = list(group["param_names"])
                groups.append(saved)
                start += n
            return {"format": FORMAT, "version": VERSION,
                    "optimizer": type(self).__name__,
                    "state": dict(sorted(state.items())),
                    "param_groups": groups,
                    "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict):
        """Restore a state from :meth:`state_dict`, copying its arrays.

        Everything is checked first (format, optimizer class, group and
        parameter counts, hyperparameters, step counts, state shapes and
        dtypes); any mismatch raises ValueError and changes nothing."""
        with self._lock:
            groups, steps, entries, skipped = self._check_state_dict(state_dict)
            self._fast = None
            for group, hyper in zip(self.param_groups, groups):
                kept = {k: group[k] for k in ("params", "param_names") if k in group}
                group.clear()
                group.update(kept)
                group.update(hyper)
            for bucket in self._buckets:
                bucket_steps = [steps[i] for i in bucket.index]
                if bucket_steps.count(bucket_steps[0]) == len(bucket_steps):
                    bucket.step, bucket.steps = bucket_steps[0], None
                else:
                    bucket.step, bucket.steps = None, bucket_steps
                for i in bucket.index:
                    for kind in entries[i]:
                        if kind not in bucket.buffers:
                            bucket.allocate(kind, 0.0)
                for kind, views in bucket.views.items():
                    init = self._initial(bucket.group, kind)
                    for i, view in zip(bucket.index, views):
                        if kind in entries[i]:
                            np.copyto(view, entries[i][kind])
                        else:
                            view.fill(init)
            self.skipped_steps = skipped

    def _check_state_dict(self, sd):
        """(hyperparameters per group, step per parameter, states per
        parameter, skipped_steps), or ValueError."""
        if not isinstance(sd, dict):
            raise ValueError(f"state_dict must be a dict, got {type(sd).__name__}")
        if sd.get("format") != FORMAT:
            raise ValueError(f"not a fastopt state_dict (format {sd.get('format')!r})")
        if sd.get("version") != VERSION:
            raise ValueError(f"unsupported state_dict version {sd.get('version')!r}; "
                             f"this fastopt reads version {VERSION}")
        if sd.get("optimizer") != type(self).__name__:
            raise ValueError(f"state_dict is for optimizer {sd.get('optimizer')!r}, "
                             f"not {type(self).__name__}")
        skipped = sd.get("skipped_steps")
        if (isinstance(skipped, (bool, np.bool_))
                or not isinstance(skipped, numbers.Integral) or skipped < 0):
            raise ValueError(f"skipped_steps must be an int >= 0, got {skipped!r}")
        saved_groups, state = sd.get("param_groups"), sd.get("state")
        if not isinstance(saved_groups, list) or not isinstance(state, dict):
            raise ValueError("state_dict needs a list 'param_groups' and a dict 'state'")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(saved_groups)} parameter groups, "
                             f"the optimizer {len(self.param_groups)}")
        position, hypers = {}, []
        for k, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            where = f"param_groups[{k}]"
            if not isinstance(saved, dict) or not isinstance(saved.get("params"), list):
                raise ValueError(f"{where} must be a dict with a list 'params'")
            indices = saved["params"]
            if len(indices) != len(group["params"]):
                raise ValueError(f"{where} has {len(indices)} parameters, the "
                                 f"optimizer's group {len(group['params'])}")
            if "param_names" in saved and "param_names" in group and (
                    list(saved["param_names"]) != group["param_names"]):
                raise ValueError(f"{where} names parameters {saved['param_names']}, "
                                 f"the optimizer's group {group['param_names']}")
            offset = len(position)
            for j, i in enumerate(indices):
                if (isinstance(i, (bool, np.bool_)) or not isinstance(i, numbers.Integral)
                        or i in position):
                    raise ValueError(f"{where}['params'] must hold distinct int "
                                     f"indices, got {i!r}")
                position[i] = offset + j
            hyper = self._hyper(saved)
            missing = [name for name in self.defaults if name not in hyper]
            if missing:
                raise ValueError(f"{where} lacks hyperparameters {missing}")
            try:
                self._check_group(hyper)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where}: {e}") from e
            hypers.append(hyper)
        hyper_of = [hyper for g, hyper in zip(self.param_groups, hypers)
                    for _ in g["params"]]
        steps = [0] * len(self._params)
        entries = [{} for _ in self._params]
        for i, entry in state.items():
            where = f"state[{i!r}]"
            if isinstance(i, (bool, np.bool_)) or i not in position:
                raise ValueError(f"{where} is not a parameter index of the state_dict")
            pos = position[i]
            param, label = self._params[pos], self._labels[pos]
            if not isinstance(entry, dict) or "step" not in entry:
                raise ValueError(f"{where} must be a dict with a 'step'")
            _check_step_count(entry["step"], where)
            for kind, value in entry.items():
                if kind == "step":
                    continue
                if kind not in self._kinds:
                    raise ValueError(f"{where} has an unknown state {kind!r}; "
                                     f"{type(self).__name__} keeps {list(self._kinds)}")
                if (not isinstance(value, np.ndarray) or value.shape != param.shape
                        or value.dtype != param.dtype):
                    desc = (f"{value.dtype} array of shape {value.shape}"
                            if isinstance(value, np.ndarray) else type(value).__name__)
                    raise ValueError(f"{where}[{kind!r}] must be a {param.dtype} array "
                                     f"of shape {param.shape} like parameter "
                                     f"{label!r}, got {desc}")
                entries[pos][kind] = value
            if entry["step"]:
                needed = [k for k in self._slots(hyper_of[pos])
                          if k is not None and k not in entries[pos]
                          and k not in self._optional]
                if needed:
                    raise ValueError(f"{where} lacks states {needed}")
            steps[pos] = int(entry["step"])
        return hypers, steps, entries, int(skipped)

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
# The rules


class SGD(Optimizer):
    r"""Gradient descent with optional heavy-ball or Nesterov momentum,
    torch.optim.SGD's rule, names and defaults.

    With g the gradient, p the parameter, b the momentum buffer::

        g = -g if maximize;  g = g + weight_decay * p
        b = g on the parameter's first step, else momentum * b + (1 - dampening) * g
        g = g + momentum * b if nesterov else b      (when momentum != 0)
        p = p - lr * g

    With momentum=0 this is the seed's gradient descent ``p = p - lr * g``.
    The seed's momentum is NOT this rule with dampening=beta: on step 1 torch
    sets b = g where the seed gets (1 - beta) * g, and the seed's v is a
    different scale of the same average; use :class:`Momentum` for it.
    State: ``momentum_buffer`` (when momentum != 0).  If momentum is turned
    on after a parameter's first step, its buffer starts at zero.
    """

    _kinds = ("momentum_buffer",)
    _rule = "sgd"
    _optional = ("momentum_buffer",)

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0,
                 weight_decay=0, nesterov=False, *, maximize=False,
                 skip_nonfinite=False):
        super().__init__(params, dict(lr=lr, momentum=momentum,
                                      dampening=dampening,
                                      weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize),
                         skip_nonfinite=skip_nonfinite)

    def _check_group(self, group):
        _check_common(group)
        _check_range(group["momentum"], "momentum", "momentum value")
        _check_range(group["dampening"], "dampening", "dampening value", 1.0, False)
        _check_flag(group["nesterov"], "nesterov")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _slots(self, group):
        return ("momentum_buffer" if group["momentum"] != 0 else None,)

    def _update(self, group, params, grads, states, step, labels):
        _core.sgd_many(params, grads, states[0], lr=group["lr"],
                       momentum=group["momentum"], dampening=group["dampening"],
                       weight_decay=group["weight_decay"],
                       nesterov=group["nesterov"], maximize=group["maximize"],
                       step=step, labels=labels)


class Momentum(Optimizer):
    r"""The seed's momentum: an exponentially weighted average of gradients.

    With g the gradient, p the parameter, v the velocity (zero at first)::

        g = -g if maximize;  g = g + weight_decay * p
        v = beta * v + (1 - beta) * g
        p = p - lr * v

    This is the course's ``update_parameters_with_momentum``.  It is not
    torch's SGD(momentum=beta, dampening=beta): torch starts its buffer at
    b = g on step 1 where this rule has v = (1 - beta) * g, and the gap,
    beta^t * g_1, shrinks but never closes.  In exact arithmetic it equals
    torch's SGD(momentum=beta, dampening=0) with lr * (1 - beta), since then
    v = (1 - beta) * b at every step; the rounding differs.
    State: ``velocity``.
    """

    _kinds = ("velocity",)
    _rule = "momentum"

    def __init__(self, params, lr=1e-3, beta=0.9, *, weight_decay=0,
                 maximize=False, skip_nonfinite=False):
        super().__init__(params, dict(lr=lr, beta=beta,
                                      weight_decay=weight_decay,
                                      maximize=maximize),
                         skip_nonfinite=skip_nonfinite)

    def _check_group(self, group):
        _check_common(group)
        _check_range(group["beta"], "beta", "beta value", 1.0)

    def _slots(self, group):
        return ("velocity",)

    def _update(self, group, params, grads, states, step, labels):
        _core.momentum_many(params, grads, states[0], lr=group["lr"],
                            beta=group["beta"],
                            weight_decay=group["weight_decay"],
                            maximize=group["maximize"], labels=labels)


class RMSprop(Optimizer):
    r"""RMSProp, torch.optim.RMSprop's rule, names and defaults.

    With g the gradient, p the parameter::

        g = -g if maximize;  g = g + weight_decay * p
        v = alpha * v + (1 - alpha) * g^2                      (square_avg)
        centered:  a = alpha * a + (1 - alpha) * g;  v~ = v - a^2   (grad_avg)
        d = sqrt(v~) + eps          (v~ = v when not centered)
        momentum != 0:  b = momentum * b + g / d;  p = p - lr * b
        otherwise:      p = p - lr * g / d

    The seed's RMSProp ``s = beta*s + (1-beta)*g^2; p = p - lr*g/(sqrt(s)+eps)``
    is alpha=beta, centered=False, momentum=0 (eps outside the root; Keras
    puts it inside).  States: ``square_avg``, ``grad_avg`` (centered),
    ``momentum_buffer`` (momentum != 0).
    """

    _kinds = ("square_avg", "grad_avg", "momentum_buffer")
    _rule = "rmsprop"
    _optional = ("grad_avg", "momentum_buffer")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0,
                 momentum=0, centered=False, *, maximize=False,
                 skip_nonfinite=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps,
                                      weight_decay=weight_decay,
                                      momentum=momentum, centered=centered,
                                      maximize=maximize),
                         skip_nonfinite=skip_nonfinite)

    def _check_group(self, group):
        _check_common(group)
        _check_range(group["eps"], "eps", "epsilon value")
        _check_range(group["momentum"], "momentum", "momentum value")
        _check_range(group["alpha"], "alpha", "alpha value", 1.0, False)
        _check_flag(group["centered"], "centered")

    def _slots(self, group):
        return ("square_avg",
                "grad_avg" if group["centered"] else None,
                "momentum_buffer" if group["momentum"] != 0 else None)

    def _update(self, group, params, grads, states, step, labels):
        _core.rmsprop_many(params, grads, *states, lr=group["lr"],
                           alpha=group["alpha"], eps=group["eps"],
                           weight_decay=group["weight_decay"],
                           momentum=group["momentum"],
                           centered=group["centered"],
                           maximize=group["maximize"], labels=labels)


class Adam(Optimizer):
    r"""Adam, torch.optim.Adam's rule, names and defaults.

    With g the gradient, p the parameter, t the parameter's step count::

        g = -g if maximize
        L2 mode:        g = g + weight_decay * p
        decoupled mode: p = p * (1 - lr * weight_decay)      (AdamW)
        m = beta1 * m + (1 - beta1) * g                      (exp_avg)
        v = beta2 * v + (1 - beta2) * g^2                    (exp_avg_sq)
        amsgrad: v_max = max(v_max, v), used for v below     (max_exp_avg_sq)
        d = sqrt(v) / sqrt(1 - beta2^t) + eps
        p = p - (lr / (1 - beta1^t)) * m / d

    Mathematically the seed's Adam ``m_hat / (sqrt(s_hat) + eps)`` (eps
    outside the root, after bias correction); the rounding follows torch's
    order.  Bias corrections are computed from the integer t each step.
    """

    _kinds = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _rule = "adam"
    _optional = ("max_exp_avg_sq",)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0, amsgrad=False, *, maximize=False,
                 decoupled_weight_decay=False, skip_nonfinite=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps,
                                      weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize,
                                      decoupled_weight_decay=decoupled_weight_decay),
                         skip_nonfinite=skip_nonfinite)

    def _check_group(self, group):
        _check_common(group)
        _check_range(group["eps"], "eps", "epsilon value")
        _check_betas(group["betas"])
        _check_flag(group["amsgrad"], "amsgrad")
        _check_flag(group["decoupled_weight_decay"], "decoupled_weight_decay")

    def _slots(self, group):
        return ("exp_avg", "exp_avg_sq",
                "max_exp_avg_sq" if group["amsgrad"] else None)

    def _update(self, group, params, grads, states, step, labels):
        _core.adam_many(params, grads, *states, step=step, lr=group["lr"],
                        betas=group["betas"], eps=group["eps"],
                        weight_decay=group["weight_decay"],
                        amsgrad=group["amsgrad"], maximize=group["maximize"],
                        decoupled_weight_decay=group["decoupled_weight_decay"],
                        labels=labels)


class AdamW(Adam):
    r"""Adam with decoupled weight decay, torch.optim.AdamW's defaults.

    The parameter decays by ``p = p * (1 - lr * weight_decay)`` before the
    Adam update, instead of adding ``weight_decay * p`` to the gradient; see
    :class:`Adam` for the rest of the rule.  The seed has no weight decay.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=1e-2, amsgrad=False, *, maximize=False,
                 skip_nonfinite=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps,
                         weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, decoupled_weight_decay=True,
                         skip_nonfinite=skip_nonfinite)


class Adagrad(Optimizer):
    r"""Adagrad, torch.optim.Adagrad's rule, names and defaults.

    With g the gradient, p the parameter, t the parameter's step count::

        g = -g if maximize;  g = g + weight_decay * p
        clr = lr / (1 + (t - 1) * lr_decay)
        S = S + g^2                          (sum, starts at initial_accumulator_value)
        p = p - clr * g / (sqrt(S) + eps)

    Not in the seed; RMSProp replaces Adagrad's sum by an average.
    """

    _kinds = ("sum",)
    _rule = "adagrad"

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0,
                 initial_accumulator_value=0, eps=1e-10, *, maximize=False,
                 skip_nonfinite=False):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay,
                                      weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize),
                         skip_nonfinite=skip_nonfinite)

    def _check_group(self, group):
        _check_common(group)
        _check_range(group["lr_decay"], "lr_decay", "lr_decay value")
        _check_range(group["initial_accumulator_value"],
                     "initial_accumulator_value",
                     "initial_accumulator_value value")
        _check_range(group["eps"], "eps", "epsilon value")

    def _slots(self, group):
        return ("sum",)

    def _initial(self, group, kind):
        return float(group["initial_accumulator_value"])

    def _update(self, group, params, grads, states, step, labels):
        _core.adagrad_many(params, grads, states[0], step=step, lr=group["lr"],
                           lr_decay=group["lr_decay"],
                           weight_decay=group["weight_decay"], eps=group["eps"],
                           maximize=group["maximize"], labels=labels)
