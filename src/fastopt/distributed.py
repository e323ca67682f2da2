"""Data-parallel training over MPI with the optimizer state sharded (ZeRO-1).

Every rank (process) holds the model's full parameters and computes
gradients on its own part of the data.  :class:`ShardedOptimizer` lays the
parameters out back to back in one flat buffer, padded to ``P * S`` elements
for ``P`` ranks, and rank ``r`` owns the shard ``[r*S, (r+1)*S)``: a
parameter may straddle two or more ranks (the flat partitioning of DeepSpeed
ZeRO stage 1, Rajbhandari et al. 2020, arXiv:1910.02054, and torch's
``ZeroRedundancyOptimizer`` shards whole parameters instead).  A step

1. averages the gradients over the ranks, each rank receiving the mean for
   its shard only:  ``mean = (((g_0 + g_1) + g_2) + ... + g_{P-1}) / P``,
   summed in rank order and divided in the gradients' dtype;
2. optionally clips by the global norm, computed across the shards;
3. updates its shard with the fused kernel of ``optimizer_class`` (one of
   fastopt's own optimizers, stepping the shard as a single tensor), so each
   rank stores only ``1/P`` of the optimizer state;
4. all-gathers the updated shards into every rank's full parameters.

Determinism.  With ``deterministic=True`` (the default) step 1 is an
``Alltoall`` followed by the sum in rank order on the receiving rank (the
same bytes over the wire as a ring reduce-scatter), so a trajectory is bit
for bit the one of a single process stepping ``optimizer_class`` on the mean
above, for every number of ranks ``P``: the update of an element depends
on that element alone (and, for LAMB and LARS, on per-parameter sums made
with one process's bits, below), and the kernels give the same bits for any
split of the elements.  With ``deterministic=False`` step 1 is MPI's
``Reduce_scatter_block``, whose order of summation is the MPI library's
choice: results are reproducible only for the same ``P`` and the same MPI
(with 3 or more ranks they differ from the serial sum in the last bits).
Norms (:meth:`ShardedOptimizer.sumsq`, :meth:`ShardedOptimizer.clip_grad_norm_`)
are put together from the same fixed blocks ``fastopt.clip_grad_norm_``
adds, in the same order, so they carry its bits for every ``P``.

Rules with per-tensor sums (LAMB's and LARS's trust ratios, ``reductions``
in the rule table) step in their two passes taken apart: each rank runs the
first pass over the sum blocks of its shard (FO_SUMSQ_BLOCK elements from
each parameter's start, the blocks ``fo_run`` adds), a block cut by a shard
boundary element by element; the rows are gathered in rank order, the cut
blocks' element squares are added over the kernel's 8 lanes, every
parameter's sums are the blocks added in order from 0.0 as in one process,
and the update pass runs on each parameter's part of the shard with them.

Per-tensor scalar states (NAdam's ``mu_product``, ASGD's ``eta`` and ``mu``)
depend on the step count and the hyperparameters alone, never on the data;
each rank keeps one copy for its shard, which equals every parameter's copy
in the single process because every parameter steps at every step.

None gradients.  A gradient of None is that rank's zeros (as torch's DDP
fills in unused parameters), so the step is one process's on the mean with
zeros in their place.  A parameter whose gradient is None on every rank
(through a whole accumulation window) would not step in one process but
would here, so that call raises the same ValueError on every rank and
changes nothing; finding it costs one small ``Allreduce`` per step.

Averages and accumulation.  ``ema_decay=`` keeps the average of the
weights as the optimizers do, each rank for its shard (fused into the
update's pass); :meth:`ShardedOptimizer.ema_weights` gathers the averages
into every rank's parameters for the ``with`` block.
``accumulation_steps=k`` sums each rank's gradients over k calls on the rank
itself (call order, from zeros) and communicates once per window:
the step is on ``(((A_0 + A_1) + ...) / P) / k`` for the ranks' sums
``A_q``, in the gradients' dtype.  With one rank that is, bit for bit, the
class made with ``accumulation_steps=k``; with more it is one process
stepping (without accumulating) on that mean, which differs in the last
bits from accumulating the ranks' means call by call (that would need one
communication per call).

Failures.  Shapes, dtype, optimizer class and hyperparameters are compared
across ranks at construction, and a mismatch raises the same ValueError on
every rank.  An error inside a step on one rank would leave the others
waiting in a collective forever; with more than one rank it is printed with
the rank's number and, half a second later (for the launcher to forward the
message), the job is ended with ``comm.Abort``.

Checkpoints (:meth:`ShardedOptimizer.save`, :meth:`ShardedOptimizer.load`,
:func:`consolidate`): a folder with one file per rank, each written
atomically by :func:`fastopt.checkpoint.write_state` (checksummed), and a
``manifest.json`` that rank 0 writes atomically last, once every rank has
written its file; the manifest is the commit point, so a rank killed
mid-save leaves the previous manifest and its files loadable.  A checkpoint
can be loaded on any number of ranks, and :func:`consolidate` turns it into
the single-process checkpoint of ``optimizer_class``.

State dtypes.  States in the parameters' dtype: the shard is one tensor of
``optimizer_class``.  ``state_dtype="bfloat16"`` (float32 parameters): the
stochastic rounding of a state element draws its random bits from its
parameter's index, step and position in that parameter, so each
parameter's part of the shard is a tensor of its own that draws the bits of
its place in the whole parameter (``Plan.set_state_format``'s ``positions``
and ``offsets``); the result is one process's with the same seed, bit for
bit.  Checkpoints hold the shard's states as one array either way (the
bfloat16 bits as uint16), and :func:`consolidate` keeps ``state_dtype`` and
``seed``.  ``state_dtype="8bit"``: a state's blocks of 256 elements (one
scale each) count from its parameter's first element, so the flat buffers
start every parameter on a multiple of 256 (zeros between parameters, never
copied back) and shards are whole blocks: each part of a shard is whole
blocks of its parameter (or ends with it), stepped as a tensor of its own
as for bfloat16, and the codes and scales are one process's.  Checkpoints
hold the shard's codes and its scales (one per block); this layout is
recorded in the manifest, and a checkpoint of the other layout is refused.

Needs mpi4py (``pip install "fastopt[mpi]"`` installs mpi4py and MPICH);
importing ``fastopt`` does not import this module.
"""
import contextlib
import json
import math
import os
import secrets
import sys
import time

import numpy as np

from fastopt import _core, checkpoint, clip
from fastopt.optim import Optimizer, check_averaging

__all__ = ["ShardedOptimizer", "consolidate", "MANIFEST"]

#: the name of a sharded checkpoint's manifest inside its folder
MANIFEST = "manifest.json"
_KIND = "fastopt-sharded"
_VERSION = 1

# Shards are a multiple of this many elements (256 bytes of float32): every
# shard starts on a cache line, and no two ranks write one line.
_ALIGN = 64
# Elements per scale of 8-bit states (FO_Q8_BLOCK, fastopt.reference.Q8_BLOCK)
_Q8_BLOCK = 256

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _mpi():
    try:
        from mpi4py import MPI  # type: ignore[import-not-found, unused-ignore]
    except ImportError as e:
        raise ImportError("fastopt.distributed needs mpi4py: pip install "
                          "\"fastopt[mpi]\" (mpi4py and MPICH)") from e
    return MPI


class ShardedOptimizer:
    """``optimizer_class`` over ``params`` with its state sharded across ranks.

    ``optimizer_class``: a fastopt optimizer class (``fastopt.Adam``, ...);
    ``params``: a list, tuple or dict of float32 or float64 arrays, all of
    one dtype, the same shapes (and names) on every rank; ``comm``: an mpi4py
    communicator (``MPI.COMM_WORLD`` when None); ``deterministic``: see the
    module docstring; ``skip_nonfinite``: skip a step whose mean gradient
    holds a NaN or an infinity on any rank (decided together);
    ``ema_decay``, ``accumulation_steps``: as the class takes them (module
    docstring); ``hyperparameters``: the class's keyword arguments.

    ``step(grads)`` updates the arrays given as ``params`` in place.  The
    optimizer also keeps the parameters and gradients as views of its own
    flat buffers (``self.params``, ``self.grads``, same structure): a model
    that trains on those views saves two copies per step (gradients in,
    parameters out).

    ``param_groups`` is the shard optimizer's one group: its hyperparameters
    may be changed between steps (a learning-rate scheduler works on it),
    identically on every rank.
    """

    def __init__(self, optimizer_class, params, comm=None, deterministic=True, *,
                 skip_nonfinite=False, ema_decay=None, accumulation_steps=1,
                 **hyperparameters):
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, Optimizer)
                and optimizer_class.rule is not None):
            raise TypeError(f"optimizer_class must be a fastopt optimizer class such as "
                            f"fastopt.Adam, got {optimizer_class!r}")
        if getattr(optimizer_class.rule, "factored", False):
            # row and column states: not element-wise, so not split by shards
            raise ValueError(f"{optimizer_class.__name__} keeps states of other "
                             f"shapes than its parameters (row and column "
                             f"statistics, {', '.join(optimizer_class.rule.state_keys)}) "
                             f"and sums along their axes; ShardedOptimizer takes "
                             f"element-wise rules only")
        if getattr(optimizer_class.rule, "matrix", ""):
            # a shard is a slice of the flattened parameters: the matrix
            # step (Newton-Schulz) needs each parameter whole, as a matrix
            raise ValueError(f"{optimizer_class.__name__} has a matrix step "
                             f"({optimizer_class.rule.matrix}) over each whole "
                             f"parameter; ShardedOptimizer takes element-wise "
                             f"rules only: use a one-process "
                             f"{optimizer_class.__name__} on every rank")
        ema_decay, accumulation_steps = check_averaging(ema_decay, accumulation_steps)
        self.ema_decay = ema_decay
        self.accumulation_steps = int(accumulation_steps)
        _core.check_flag(deterministic, "deterministic")
        _core.check_flag(skip_nonfinite, "skip_nonfinite")
        if comm is None:
            comm = _mpi().COMM_WORLD
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.deterministic = bool(deterministic)
        self.skip_nonfinite = bool(skip_nonfinite)
        self.optimizer_class = optimizer_class
        self._user, self._names = _arrays(params)
        self.dtype = self._user[0].dtype
        self.shapes = [a.shape for a in self._user]
        self.sizes = [int(a.size) for a in self._user]
        # 8-bit states keep a scale per block of 256 elements counted from
        # each parameter's first element: every parameter then starts on a
        # block boundary of the flat buffers (zeros in the gaps, never
        # copied back) and shards are whole blocks, so each part of a shard
        # is whole blocks of its parameter (or ends where it does)
        state_dtype = hyperparameters.get("state_dtype")
        self._block = _Q8_BLOCK if state_dtype == "8bit" else 0
        self.offsets, self._flat = _flat_layout(self.sizes, self._block)
        self._ends = self.offsets[:-1] + np.asarray(self.sizes, dtype=np.int64)
        self.numel = int(sum(self.sizes))
        self._check_across_ranks(dict(hyperparameters, ema_decay=ema_decay,
                                      accumulation_steps=self.accumulation_steps))

        P, r = self.size, self.rank
        S = -(-max(self._flat, 1) // P)
        align = max(_ALIGN, self._block)
        self.shard_size = S = -(-S // align) * align
        self.lo, self.hi = min(r * S, self._flat), min((r + 1) * S, self._flat)
        self.param_buffer = np.zeros(P * S, dtype=self.dtype)
        self.grad_buffer = np.zeros(P * S, dtype=self.dtype)
        views = [self.param_buffer[o:o + n].reshape(s)
                 for o, n, s in zip(self.offsets, self.sizes, self.shapes)]
        gviews = [self.grad_buffer[o:o + n].reshape(s)
                  for o, n, s in zip(self.offsets, self.sizes, self.shapes)]
        for v, a in zip(views, self._user):
            np.copyto(v, a)
        self._views, self._gviews = views, gviews
        if self._names is None:
            self.params, self.grads = views, gviews
        else:
            self.params = dict(zip(self._names, views))
            self.grads = dict(zip(self._names, gviews))
        self._param_shard = self.param_buffer[r * S:(r + 1) * S]
        self._grad_shard = np.zeros(S, dtype=self.dtype)   # the mean, for this shard
        self._recv = np.empty((P, S), dtype=self.dtype) if self.deterministic else None
        # each parameter's part of this shard: (index, start, end) in the shard
        self._segments = []
        for k in range(len(self.sizes)):
            lo = max(int(self.offsets[k]), r * S)
            hi = min(int(self._ends[k]), (r + 1) * S)
            if lo < hi:
                self._segments.append((k, lo - r * S, hi - r * S))
        # the shard as one tensor of the class (its checks are the class's),
        # or, for bfloat16 and 8-bit states, the parts as tensors of their
        # own, each drawing the random bits of its place in its parameter
        # (and, 8-bit, its blocks); a shard of padding alone is one tensor
        # whose bits matter to no one
        extra = {} if ema_decay is None else {"ema_decay": ema_decay}
        self._parts = None
        if state_dtype in ("bfloat16", "8bit"):
            self._parts = self._segments or [(0, 0, S)]
        shard_params = ([self._param_shard] if self._parts is None else
                        [self._param_shard[a:b] for _, a, b in self._parts])
        self.optimizer = optimizer_class(shard_params, **hyperparameters, **extra)
        if self._parts is not None:
            self.optimizer._plans[0].set_state_format(
                state_dtype, self.optimizer.seed, [k for k, _, _ in self._parts],
                [r * S + a - int(self.offsets[k]) for k, a, _ in self._parts],
                **({"nonneg": self.optimizer._nonneg_slots()} if self._block else {}))
            self._grad_parts = [self._grad_shard[a:b] for _, a, b in self._parts]
        # gradients accumulated on this rank since the window began (the
        # window's only communication is at its end), and the calls made
        self._accum = (np.zeros(P * S, dtype=self.dtype) if self.accumulation_steps > 1
                       else None)
        self._accum_views = None if self._accum is None else [
            self._accum[o:o + n].reshape(s)
            for o, n, s in zip(self.offsets, self.sizes, self.shapes)]
        self._micro = 0
        self._seen = np.zeros(len(self._user), dtype=np.uint8)   # in this window
        self._ema_active = False
        self.skipped_steps = 0
        self.times = {"pack": 0.0, "reduce": 0.0, "update": 0.0, "gather": 0.0,
                      "unpack": 0.0}
        self._blocks = _BlockLayout(self.offsets[:-1], self._ends, S, P)
        # a rule with per-tensor sums (LAMB's and LARS's trust ratios): the
        # first pass over this shard's blocks, the sums put together across
        # ranks, then the update pass over each parameter's part of the shard
        self._two_pass = bool(getattr(optimizer_class.rule, "reductions", ()))

    # -- construction --------------------------------------------------------

    def _check_across_ranks(self, hyperparameters):
        """The same layout, class and hyperparameters on every rank, or the
        same ValueError on every rank."""
        labels = self._names if self._names is not None else list(range(len(self._user)))
        mine = {"optimizer_class": self.optimizer_class.__name__,
                "deterministic": self.deterministic,
                "skip_nonfinite": self.skip_nonfinite,
                "dtype": str(self.dtype),
                "parameters": [(label, tuple(s)) for label, s in zip(labels, self.shapes)],
                "hyperparameters": repr(sorted(hyperparameters.items()))}
        everyone = self.comm.allgather(mine)
        first = everyone[0]
        for q, theirs in enumerate(everyone):
            for key in first:
                if theirs[key] == first[key]:
                    continue
                if key == "parameters":
                    a, b = first[key], theirs[key]
                    if len(a) != len(b):
                        what = f"{len(b)} parameters where rank 0 has {len(a)}"
                    else:
                        k = next(i for i in range(len(a)) if a[i] != b[i])
                        what = (f"parameter {b[k][0]!r} with shape {b[k][1]} where "
                                f"rank 0 has {a[k][0]!r} with shape {a[k][1]}")
                else:
                    what = f"{key} {theirs[key]} where rank 0 has {first[key]}"
                raise ValueError(f"params must be the same on every rank: rank {q} "
                                 f"has {what}")

    # -- stepping ------------------------------------------------------------

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def defaults(self):
        return self.optimizer.defaults

    def step(self, grads, *, max_norm=None, norm_type=2.0):
        """One update with this rank's gradients ``grads`` (the structure of
        ``params``).  A gradient of None is zeros from this rank; a
        parameter whose gradient is None on every rank (in every call of an
        accumulation window) raises the same ValueError on every rank and
        changes nothing, since one process would not step it while a shard
        steps all its elements.  With ``max_norm``, the mean gradient is first
        clipped to that global norm (``norm_type`` 2 or inf) as
        ``fastopt.clip_grad_norm_`` would clip it in one process.  Returns
        False when ``skip_nonfinite`` skipped the step, else True; every rank
        returns the same.

        With ``accumulation_steps=k`` a call only adds ``grads`` into this
        rank's sum and returns False, except every k-th, which averages the
        ranks' sums (one communication per window) and steps on that mean
        divided by k; ``max_norm`` is that call's."""
        if self._ema_active:
            raise RuntimeError("step() inside ema_weights()")
        missing = None
        with self._errors("step"):
            ordered = self._ordered(grads)
            if max_norm is not None:
                max_norm = clip._nonneg(max_norm, "max_norm")
                norm_type = clip._norm_type(norm_type)
            t0 = time.perf_counter()
            k = self.accumulation_steps
            if k > 1 and self._micro + 1 < k:
                # acc = acc + g, from zeros, as an optimizer's accumulation
                for i, (g, a) in enumerate(zip(ordered, self._accum_views)):
                    if g is not None:
                        np.add(a, g, out=a)
                        self._seen[i] = 1
                self._micro += 1
                self.times["pack"] += time.perf_counter() - t0
                return False
            missing = self._missing_everywhere(ordered)
            if missing is None:
                if k > 1:
                    # the window's last call: (acc + g) in the gradient buffer
                    for g, a, v in zip(ordered, self._accum_views, self._gviews):
                        if g is None:
                            np.copyto(v, a)
                        else:
                            np.add(a, g, out=v)
                    self._accum.fill(0)
                    self._seen[:] = 0
                    self._micro = 0
                else:
                    for g, v in zip(ordered, self._gviews):
                        if g is None:
                            v.fill(0)
                        elif g is not v:
                            np.copyto(v, g)
        if missing is not None:
            raise ValueError(f"the grad of parameter(s) {missing} is None on every rank"
                             + (" in every call of the window" if k > 1 else "")
                             + "; one process would not step them, a sharded step "
                             "steps every parameter (pass zeros, or leave them out)")
        with self._errors("step"):
            t1 = time.perf_counter()
            self._reduce()
            if k > 1:
                np.divide(self._grad_shard, self.dtype.type(k), out=self._grad_shard)
            t2 = time.perf_counter()
            if max_norm is not None:
                self._clip(max_norm, norm_type)
            if self.skip_nonfinite and not self._allfinite():
                self.skipped_steps += 1
                self.times["pack"] += t1 - t0
                self.times["reduce"] += time.perf_counter() - t1
                return False
            t3 = time.perf_counter()
            if self._two_pass:
                self._step_two_pass()
            elif self._parts is None:
                self.optimizer.step([self._grad_shard])
            else:
                self.optimizer.step(self._grad_parts)
            t4 = time.perf_counter()
            self._gather()
            t5 = time.perf_counter()
            for a, v in zip(self._user, self._views):
                if a is not v:
                    np.copyto(a, v)
            t6 = time.perf_counter()
            for key, dt in zip(self.times, (t1 - t0, t3 - t1, t4 - t3, t5 - t4, t6 - t5)):
                self.times[key] += dt
            return True

    def _missing_everywhere(self, ordered):
        """The labels of the parameters with no gradient on any rank in this
        call (and this window), or None; a collective, the same on every
        rank."""
        have = self._seen.copy()
        for i, g in enumerate(ordered):
            if g is not None:
                have[i] = 1
        if self.size > 1:
            self.comm.Allreduce(_mpi().IN_PLACE, have, op=_mpi().MAX)
        if have.all():
            return None
        labels = self._names if self._names is not None else list(range(len(self._user)))
        return [labels[i] for i in np.flatnonzero(have == 0)]

    def _step_two_pass(self):
        """The shard optimizer's step for a rule with per-tensor sums: its
        first pass over the blocks (and parts of blocks) this rank holds,
        every parameter's sums put together on every rank as one process
        adds them, then the update pass on each parameter's part of the
        shard with its parameter's sums (fastopt._core.reduce_ranges and
        step_given_sums).  The states and step count stay the shard
        optimizer's, so checkpoints are the same as for any rule."""
        opt = self.optimizer
        rule, plan, group = opt.rule, opt._plans[0], opt.param_groups[0]
        names = {h.name for h in rule.hypers}
        hyper = {k: v for k, v in group.items() if k in names}
        step = plan.get_steps()[0] + 1
        for slot, st in enumerate(rule.states):
            if (st.when is None or group[st.when]) and plan.state(slot) is None:
                plan.allocate(slot, opt._initial(group, slot))
        states = [plan.state(slot) for slot in range(len(rule.states))]
        p, g = self._param_shard, self._grad_shard
        ema, fuse = plan.ema(), {}
        if ema is not None:
            # the average's first value is a copy, then lerp with 1 - decay
            fuse["ema_weight"] = (1.0 - self.ema_decay if plan.get_flags("ema")[0]
                                  else None)

        def reduce(ranges):
            return _core.reduce_ranges(
                rule.name, [p], [g], [None if v is None else [v[0]] for v in states],
                [ranges], step=step, **hyper)[0]

        sums = self._blocks.rule_sums(reduce, len(rule.reductions), self.comm, self.rank)
        segs = self._segments
        if segs:
            _core.step_given_sums(
                rule.name, [p[a:b] for _, a, b in segs], [g[a:b] for _, a, b in segs],
                [None if v is None else [v[0][a:b] for _, a, b in segs] for v in states],
                np.ascontiguousarray(sums[[k for k, _, _ in segs]]), step=step,
                ema=None if ema is None else [ema[0][a:b] for _, a, b in segs],
                **fuse, **hyper)
        plan.set_steps([step])
        if ema is not None:
            plan.set_flags("ema", [True])

    @contextlib.contextmanager
    def ema_weights(self):
        """Within the ``with`` block every rank's parameters (the arrays given
        as ``params`` and the views ``self.params``) hold their averages
        (``ema_decay``), gathered from the ranks' shards; on leaving it they
        get their own values back, bit for bit.  Before the first step there
        are no averages and the parameters keep their values.  A collective
        (every rank enters it); stepping inside the block raises
        RuntimeError.  Holds one more copy of the parameters meanwhile."""
        if self.ema_decay is None:
            raise ValueError("this ShardedOptimizer keeps no averages; make it "
                             "with ema_decay=... to use ema_weights()")
        if self._ema_active:
            raise RuntimeError("ema_weights() is already active")
        plan = self.optimizer._plans[0]
        saved = None
        with self._errors("ema_weights"):
            if plan.get_flags("ema")[0]:
                saved = self.param_buffer.copy()
                shard = self._joined(plan.ema(), 0)
                if self.size > 1:
                    self.comm.Allgather(shard, self.param_buffer)
                else:
                    np.copyto(self.param_buffer, shard)
                self._unpack()
        self._ema_active = True
        try:
            yield self
        finally:
            self._ema_active = False
            if saved is not None:
                np.copyto(self.param_buffer, saved)
                self._unpack()

    def _unit(self, key):
        """Elements per entry of a state array: 256 for 8-bit scales (one
        per block), else 1."""
        return self._block if self._block and key.endswith(".scale") else 1

    def _joined(self, views, fill, unit=1):
        """One array of the shard's length from the shard optimizer's views
        (its own when it has one tensor; ``fill`` where no part lies), of
        one entry per ``unit`` elements."""
        if self._parts is None:
            return views[0]
        out = np.full(self.shard_size // unit, fill, dtype=views[0].dtype)
        for (_, a, b), v in zip(self._parts, views):
            out[a // unit:a // unit + v.size] = v
        return out

    def _shard_state_dict(self):
        """The shard optimizer's state_dict with the shard as one tensor
        (index 0), whatever tensors it steps."""
        sd = self.optimizer.state_dict()
        if self._parts is None:
            return sd
        entries = [sd["state"].get(i) for i in range(len(self._parts))]
        state = {}
        if entries[0] is not None:
            state[0] = {}
            for key, v in entries[0].items():
                if isinstance(v, np.ndarray) and v.ndim == 1:
                    v = self._joined([e[key] for e in entries],
                                     self._initial_value(key), self._unit(key))
                state[0][key] = v
        return {**sd, "state": state,
                "param_groups": [dict(sd["param_groups"][0], params=[0])]}

    def _load_shard_state_dict(self, sd):
        """optimizer.load_state_dict of a state_dict of
        :meth:`_shard_state_dict`'s form."""
        if self._parts is None:
            self.optimizer.load_state_dict(sd)
            return
        entry = sd["state"].get(0)
        state = {}
        if entry is not None:
            for i, (_, a, b) in enumerate(self._parts):
                state[i] = {key: v[a // u:-(-b // u)] if isinstance(v, np.ndarray)
                            and v.ndim == 1 else v
                            for key, v in entry.items() for u in [self._unit(key)]}
        groups = [dict(sd["param_groups"][0], params=list(range(len(self._parts))))]
        self.optimizer.load_state_dict({**sd, "state": state, "param_groups": groups})

    def _unpack(self):
        for a, v in zip(self._user, self._views):
            if a is not v:
                np.copyto(a, v)

    def _ordered(self, grads):
        n = len(self._user)
        if self._names is not None:
            if not isinstance(grads, dict):
                raise TypeError(f"grads must be a dict with the parameters' names, "
                                f"got {type(grads).__name__}")
            if list(grads) != self._names and set(grads) != set(self._names):
                missing = [k for k in self._names if k not in grads]
                extra = [k for k in grads if k not in self._names]
                raise ValueError(f"grads must have the parameters' names; missing "
                                 f"{missing}, unexpected {extra}")
            ordered, labels = [grads[k] for k in self._names], self._names
        else:
            if not isinstance(grads, (list, tuple)):
                raise TypeError(f"grads must be a list of arrays, got {type(grads).__name__}")
            if len(grads) != n:
                raise ValueError(f"got {len(grads)} gradients for {n} parameters")
            ordered, labels = list(grads), list(range(n))
        for g, label, shape in zip(ordered, labels, self.shapes):
            if g is None:
                continue
            if not isinstance(g, np.ndarray):
                raise TypeError(f"grad of parameter {label!r} must be a numpy.ndarray, "
                                f"got {type(g).__name__}")
            if g.dtype != self.dtype:
                raise TypeError(f"grad of parameter {label!r} has dtype {g.dtype}; "
                                f"the parameters are {self.dtype}")
            if g.shape != shape:
                raise ValueError(f"grad of parameter {label!r} has shape {g.shape}; "
                                 f"the parameter has {shape}")
        return ordered

    def _reduce(self):
        """self._grad_shard = the mean of the ranks' gradients over this shard."""
        P, out = self.size, self._grad_shard
        if P == 1:
            np.copyto(out, self.grad_buffer)
            return
        mpi = _mpi()
        if self.deterministic:
            self.comm.Alltoall(self.grad_buffer, self._recv)
            np.copyto(out, self._recv[0])
            for q in range(1, P):
                np.add(out, self._recv[q], out=out)
        else:
            self.comm.Reduce_scatter_block(self.grad_buffer, out, op=mpi.SUM)
        np.divide(out, self.dtype.type(P), out=out)

    def _gather(self):
        if self.size > 1:
            self.comm.Allgather(_mpi().IN_PLACE, self.param_buffer)

    def _allfinite(self):
        ok = _core.grad_allfinite([self._grad_shard[:self.hi - self.lo]])
        if self.size == 1:
            return ok
        return self.comm.allreduce(int(ok), op=_mpi().MIN) == 1

    # -- reductions across shards ------------------------------------------

    def sumsq(self, shard=None, per_tensor=False):
        """Sum of squares of a sharded buffer, in double, with
        ``fastopt._core.grad_sumsq``'s bits: over all parameters (a float), or
        per parameter (``per_tensor=True``: a float64 array, one per
        parameter), the same on every rank.  A collective: every rank calls
        it.  ``shard``: this rank's ``shard_size`` elements laid out as the
        parameters' shard (default: the mean gradient of the last step);
        ``self.param_shard`` gives the parameters' (for trust ratios)."""
        if shard is None:
            shard = self._grad_shard
        if not (isinstance(shard, np.ndarray) and shard.shape == (self.shard_size,)
                and shard.dtype == self.dtype):
            raise ValueError(f"shard must be a {self.dtype} array of shape "
                             f"({self.shard_size},)")
        partials = self._blocks.partials(shard, self.comm, self.rank)
        return self._blocks.total(partials, per_tensor)

    @property
    def param_shard(self):
        """This rank's shard of the flat parameters (a view)."""
        return self._param_shard

    @property
    def grad_shard(self):
        """This rank's shard of the last step's mean gradient (a view)."""
        return self._grad_shard

    def _norm(self, norm_type):
        if norm_type == 2.0:
            return math.sqrt(self.sumsq())
        part = self._grad_shard[:self.hi - self.lo]
        m = float(np.max(np.abs(part))) if part.size else 0.0
        maxima = [m] if self.size == 1 else self.comm.allgather(m)
        norm = 0.0
        for m in maxima:
            if m != m:
                return m
            norm = max(norm, m)
        return norm

    def _clip(self, max_norm, norm_type):
        norm = self._norm(norm_type)
        coef = max_norm / (norm + clip._EPS)
        if not coef >= 1.0 and self.hi > self.lo:
            _core.grad_scale_([self._grad_shard[:self.hi - self.lo]], coef)
        self.last_norm = norm

    def clip_grad_norm_(self, max_norm, norm_type=2.0):
        """Clip the mean gradient of this rank's shard, as held after a step's
        reduction, to the global norm ``max_norm``; returns the norm.  (A
        step does this itself with ``step(grads, max_norm=...)``.)"""
        with self._errors("clip_grad_norm_"):
            max_norm = clip._nonneg(max_norm, "max_norm")
            self._clip(max_norm, clip._norm_type(norm_type))
            return self.last_norm

    # -- memory ----------------------------------------------------------------

    def state_nbytes(self):
        """Bytes of optimizer state this rank holds (array and scalar states)."""
        total = 0
        for plan in self.optimizer._plans:
            for slot in range(len(self.optimizer.rule.state_keys)):
                views = plan.state(slot)
                if views is not None:
                    total += sum(v.nbytes for v in views)
            total += 8 * len(self.optimizer.rule.scalar_keys)
        return total

    # -- failures ------------------------------------------------------------

    def _errors(self, what):
        return _AbortOnError(self.comm, self.rank, self.size, what)

    # -- checkpoints ---------------------------------------------------------

    def _layout(self):
        return {"optimizer": self.optimizer_class.__name__,
                "dtype": str(self.dtype),
                "names": self._names,
                "shapes": [list(s) for s in self.shapes],
                "numel": self.numel,
                # 8-bit states' layout (parameters on block boundaries)
                **({"block": self._block} if self._block else {})}

    def save(self, path):
        """Write a sharded checkpoint into the folder ``path`` (created if
        missing); a collective.  Each rank writes its shard's state file
        atomically; rank 0 then commits the manifest atomically and removes
        the files of the checkpoint it replaced."""
        path = os.fsdecode(path)
        if self._micro:
            # the accumulated sums are each rank's own gradients, of no use
            # on another world size
            raise ValueError(f"save() in the middle of an accumulation window "
                             f"({self._micro} of {self.accumulation_steps} calls "
                             f"made); save after the window's last call")
        tag = None
        if self.rank == 0:
            os.makedirs(path, exist_ok=True)
            tag = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"
        tag = self.comm.bcast(tag, root=0) if self.size > 1 else tag
        name = f"shard-{tag}-{self.rank:05d}-of-{self.size:05d}.npz"
        error = None
        try:
            checkpoint.write_state(os.path.join(path, name), self._shard_state_dict())
        except OSError as e:
            error = f"rank {self.rank}: {e}"
        results = self.comm.allgather((name, error)) if self.size > 1 else [(name, error)]
        errors = [e for _, e in results if e is not None]
        if errors:
            raise OSError(f"sharded checkpoint {path!r} not written: " + "; ".join(errors))
        if self.rank == 0:
            manifest = {"kind": _KIND, "version": _VERSION, "tag": tag,
                        **self._layout(),
                        "world_size": self.size, "shard_size": self.shard_size,
                        "skipped_steps": self.skipped_steps,
                        "files": [n for n, _ in results]}
            old = _read_manifest(path, missing_ok=True)
            checkpoint.write_bytes(os.path.join(path, MANIFEST),
                                   json.dumps(manifest, indent=1).encode())
            if old is not None:
                for n in old["files"]:
                    if n not in manifest["files"]:
                        try:
                            os.unlink(os.path.join(path, n))
                        except OSError:
                            pass
        if self.size > 1:
            self.comm.Barrier()

    def load(self, path):
        """Restore from a sharded checkpoint written on any number of ranks;
        a collective.  Every rank reads the old shards that overlap its own
        and checks them; an error on any rank raises the same ValueError on
        all and changes nothing."""
        path = os.fsdecode(path)
        error, state = None, None
        try:
            manifest = _read_manifest(path)
            mine = self._layout()
            if manifest.get("block", 0) != mine.get("block", 0):
                raise ValueError(
                    f"{path}: the checkpoint's flat layout is "
                    f"{_layout_words(manifest)}, this optimizer's "
                    f"{_layout_words(mine)}; load it with the state_dtype it "
                    f"was saved with")
            for key in mine:
                if manifest[key] != mine[key]:
                    raise ValueError(f"{path}: the checkpoint's {key} is "
                                     f"{manifest[key]!r}, this optimizer's {mine[key]!r}")
            state = self._shard_state(path, manifest)
        except (OSError, ValueError, KeyError) as e:
            error = f"rank {self.rank}: {type(e).__name__}: {e}"
        errors = self.comm.allgather(error) if self.size > 1 else [error]
        errors = [e for e in errors if e is not None]
        if errors:
            raise ValueError(f"sharded checkpoint {path!r} not loaded: " + "; ".join(errors))
        self._load_shard_state_dict(state)
        self.skipped_steps = int(manifest["skipped_steps"])

    def _shard_state(self, path, manifest):
        """The shard optimizer's state_dict for this rank's range, from the
        old shards that overlap it."""
        S = self.shard_size
        lo, hi = self.rank * S, (self.rank + 1) * S
        arrays, entry, template = {}, None, None
        for q, old in _overlapping(manifest, lo, hi):
            sd = checkpoint.read_state(os.path.join(path, manifest["files"][q]))
            template = template or sd
            e = sd["state"].get(0)
            if e is None:
                continue
            entry = entry or e
            if e["step"] != entry["step"]:
                raise ValueError(f"{path}: shard files disagree on the step count")
            a, b = max(lo, old[0]), min(hi, old[1], self._flat)
            for key, v in e.items():
                if isinstance(v, np.ndarray) and v.ndim == 1:
                    if key not in arrays:
                        arrays[key] = self._initial_state(key, v.dtype)
                    u = self._unit(key)     # all bounds are whole blocks
                    arrays[key][(a - lo) // u:(b - lo) // u] = \
                        v[(a - old[0]) // u:(b - old[0]) // u]
        if template is None:      # this rank's range lies wholly in padding
            template = checkpoint.read_state(os.path.join(path, manifest["files"][0]))
            entry = template["state"].get(0)
            if entry is not None:
                for key, v in entry.items():
                    if isinstance(v, np.ndarray) and v.ndim == 1:
                        arrays[key] = self._initial_state(key, v.dtype)
        state = {}
        if entry is not None:
            state[0] = {k: v for k, v in entry.items()
                        if not (isinstance(v, np.ndarray) and v.ndim == 1)}
            state[0].update(arrays)
        groups = [dict(template["param_groups"][0], params=[0])]
        return {**template, "state": state, "param_groups": groups, "skipped_steps": 0}

    def _initial_state(self, key, dtype):
        return np.full(self.shard_size // self._unit(key), self._initial_value(key),
                       dtype=dtype)

    def _initial_value(self, key):
        """A state element's start value as the shard's state stores it."""
        rule = self.optimizer.rule
        if key not in rule.state_keys:      # the averages ("ema"), 8-bit scales
            return 0
        slot = rule.state_keys.index(key)
        init = self.optimizer._initial(self.optimizer.param_groups[0], slot)
        return self.optimizer._stored(init)

    def consolidated_state_dict(self, root=0):
        """The state_dict a single process stepping ``optimizer_class`` on
        ``params`` would have, gathered on rank ``root`` (None on the
        others); a collective."""
        sd = self._shard_state_dict()
        entry = sd["state"].get(0, {})
        full = {}
        keys = list(self.optimizer.rule.state_keys)
        for key in keys + [k + ".scale" for k in keys] + ["ema"]:
            if key in entry:
                buf = (np.empty(self.size * self.shard_size // self._unit(key),
                                dtype=entry[key].dtype)
                       if self.rank == root else None)
                if self.size > 1:
                    self.comm.Gather(entry[key], buf, root=root)
                else:
                    buf = entry[key]
                full[key] = buf
        if self.rank != root:
            return None
        return _single_process(sd, entry, full, self._layout(), self.skipped_steps)

    def __repr__(self):
        return (f"ShardedOptimizer({self.optimizer_class.__name__}, "
                f"{len(self._user)} parameters, {self.numel} elements, rank "
                f"{self.rank} of {self.size}, shard {self.shard_size}, "
                f"deterministic={self.deterministic})")


_ABORT_GRACE_S = 0.5


class _AbortOnError:
    """Within a step: raise as usual on one rank; with several, print the
    error with the rank's number and end the job (the others would wait in
    a collective forever)."""

    def __init__(self, comm, rank, size, what):
        self.comm, self.rank, self.size, self.what = comm, rank, size, what

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is None or self.size == 1 or not issubclass(kind, Exception):
            return False
        sys.stderr.write(f"fastopt.distributed: rank {self.rank} of {self.size} failed "
                         f"in {self.what}: {kind.__name__}: {value}; aborting the job\n")
        sys.stderr.flush()
        # the launcher forwards a rank's output from a pipe, and aborting
        # at once can end the job before it has read the message, which is
        # then lost with everything else the rank printed (seen under
        # MPICH's hydra)
        time.sleep(_ABORT_GRACE_S)
        self.comm.Abort(1)
        return False


def _arrays(params):
    if isinstance(params, dict):
        names, arrays = list(params), list(params.values())
        for k in names:
            if not isinstance(k, str):
                raise TypeError(f"parameter names must be str, got {k!r}")
    elif isinstance(params, (list, tuple)):
        names, arrays = None, list(params)
    else:
        raise TypeError(f"params must be a list, tuple or dict of arrays, got "
                        f"{type(params).__name__}")
    if not arrays:
        raise ValueError("params is empty")
    labels = names if names is not None else range(len(arrays))
    for a, label in zip(arrays, labels):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"parameter {label!r} must be a numpy.ndarray, got "
                            f"{type(a).__name__}")
        if a.dtype not in _FLOATS:
            raise TypeError(f"parameter {label!r} has dtype {a.dtype}; float32 or "
                            f"float64 expected")
        if a.dtype != arrays[0].dtype:
            raise TypeError(f"parameter {label!r} has dtype {a.dtype} but the first "
                            f"has {arrays[0].dtype}; one dtype per sharded optimizer")
        if not a.flags.writeable:
            raise ValueError(f"parameter {label!r} is read-only")
    return arrays, names


class _BlockLayout:
    """Where fastopt's sum-of-squares blocks fall in a sharded flat buffer.

    ``fastopt._core.grad_sumsq`` cuts each tensor into blocks of SUMSQ_BLOCK
    elements from its first element and adds the blocks' sums left to
    right.  A block wholly inside one rank's shard is summed there; one
    that crosses a shard boundary (at most one per boundary) is put together
    on every rank from the pieces all ranks hold.  All block sums are then
    gathered, in order, on every rank, and added as in one process."""

    def __init__(self, first, last, S, P):
        """``first``, ``last``: each tensor's extent [first, last) in the
        flat buffer (gaps between tensors are in no block)."""
        B = _core.SUMSQ_BLOCK
        N = int(last[-1])
        starts, ends, tensor = [], [], []
        for k in range(len(first)):
            a = np.arange(first[k], last[k], B, dtype=np.int64)
            starts.append(a)
            ends.append(np.minimum(a + B, last[k]))
            tensor.append(np.full(a.size, k, dtype=np.int64))
        self.starts, self.ends = np.concatenate(starts), np.concatenate(ends)
        self.tensor = np.concatenate(tensor)
        self.ntensors = len(first)
        owner_lo = self.starts // S
        owner_hi = (self.ends - 1) // S
        inside = owner_lo == owner_hi
        self.straddling = np.flatnonzero(~inside)
        self.S, self.P, self.N = S, P, N
        # per rank: the ids of its whole blocks, in order, and its runs
        # (contiguous stretches of whole blocks of one tensor)
        self.ids, self.runs = [], []
        for q in range(P):
            ids = np.flatnonzero(inside & (owner_lo == q))
            self.ids.append(ids)
            runs = []
            if ids.size:
                cut = np.flatnonzero((np.diff(ids) != 1)
                                     | (np.diff(self.tensor[ids]) != 0)) + 1
                for part in np.split(ids, cut):
                    runs.append((int(self.starts[part[0]]) - q * S,
                                 int(self.ends[part[-1]]) - q * S))
            self.runs.append(runs)
        self.order = np.concatenate(self.ids) if self.ids else np.zeros(0, np.int64)
        self.counts = [int(i.size) for i in self.ids]
        # the pieces of crossing blocks each rank holds, in flat order
        self.pieces = []
        for q in range(P):
            lo, hi = q * S, (q + 1) * S
            mine = []
            for b in self.straddling:
                a, e = max(lo, int(self.starts[b])), min(hi, int(self.ends[b]))
                if a < e:
                    mine.append((a - lo, e - lo))
            self.pieces.append(mine)
        self.piece_counts = [sum(e - a for a, e in p) for p in self.pieces]

    def partials(self, shard, comm, rank):
        """Every block's sum of squares, in order (the same on all ranks)."""
        local = _core.grad_sumsq_blocks([shard[a:e] for a, e in self.runs[rank]])
        mine = (np.concatenate([shard[a:e] for a, e in self.pieces[rank]])
                if self.pieces[rank] else np.zeros(0, shard.dtype))
        if self.P > 1:
            got = np.empty(int(sum(self.counts)), dtype=np.float64)
            comm.Allgatherv(local, (got, self.counts))
            pieces = np.empty(int(sum(self.piece_counts)), dtype=shard.dtype)
            comm.Allgatherv(mine, (pieces, self.piece_counts))
        else:
            got, pieces = local, mine
        out = np.empty(self.starts.size, dtype=np.float64)
        out[self.order] = got
        offset = 0
        if self.straddling.size:
            # pieces arrive rank by rank, each rank's in flat order: flat order
            whole = []
            for b in self.straddling:
                n = int(self.ends[b] - self.starts[b])
                whole.append(pieces[offset:offset + n])
                offset += n
            out[self.straddling] = _core.grad_sumsq_blocks(whole)
        return out

    def rule_sums(self, reduce, nred, comm, rank):
        """A two-pass rule's sums per tensor (an array of shape (tensors,
        nred)), the same bits on every rank as one process makes them:
        ``reduce(ranges)`` runs the rule's first pass over this rank's
        ranges (shard indices) and returns each range's sums.  A whole
        block is one range; a block crossing a shard boundary is split into
        ranges of one element, whose squares every rank adds over the 8
        lanes of the block as the kernels do.  All rows are gathered in rank
        order; blocks are then added in order from 0.0."""
        S, lo = self.S, rank * self.S
        ids = self.ids[rank]
        whole = np.stack([self.starts[ids] - lo, self.ends[ids] - lo], axis=1)
        elems = (np.concatenate([np.arange(a, e, dtype=np.int64) for a, e in self.pieces[rank]])
                 if self.pieces[rank] else np.zeros(0, np.int64))
        ranges = np.concatenate([whole, np.stack([elems, elems + 1], axis=1)])
        rows = np.ascontiguousarray(reduce(ranges), dtype=np.float64)
        if self.P > 1:
            counts = [(w + e) * nred for w, e in zip(self.counts, self.piece_counts)]
            got = np.empty((sum(counts) // nred, nred), dtype=np.float64)
            comm.Allgatherv(rows, (got, counts))
        else:
            got = rows
        # rank by rank: its whole blocks' rows, then its pieces' elements
        cuts = np.cumsum([0] + [w + e for w, e in zip(self.counts, self.piece_counts)])
        wrows = [got[cuts[q]:cuts[q] + self.counts[q]] for q in range(self.P)]
        erows = [got[cuts[q] + self.counts[q]:cuts[q + 1]] for q in range(self.P)]
        blocks = np.zeros((self.starts.size, nred), dtype=np.float64)
        blocks[self.order] = np.concatenate(wrows) if wrows else np.zeros((0, nred))
        elements = np.concatenate(erows) if erows else np.zeros((0, nred))
        offset = 0
        for b in self.straddling:
            n = int(self.ends[b] - self.starts[b])
            blocks[b] = _lane_sum(elements[offset:offset + n])
            offset += n
        out = np.zeros((self.ntensors, nred), dtype=np.float64)
        bounds = np.searchsorted(self.tensor, np.arange(self.ntensors + 1))
        for k in range(self.ntensors):
            part = blocks[bounds[k]:bounds[k + 1]]
            if part.size:
                out[k] = np.add.accumulate(
                    np.concatenate([np.zeros((1, nred)), part]), axis=0)[-1]
        return out

    def total(self, partials, per_tensor):
        """0.0 plus the block sums left to right: over all, or per tensor."""
        if not per_tensor:
            return float(np.add.accumulate(np.concatenate([[0.0], partials]))[-1])
        out = np.zeros(self.ntensors, dtype=np.float64)
        bounds = np.searchsorted(self.tensor, np.arange(self.ntensors + 1))
        for k in range(self.ntensors):
            part = partials[bounds[k]:bounds[k + 1]]
            if part.size:
                out[k] = np.add.accumulate(np.concatenate([[0.0], part]))[-1]
        return out


def _lane_sum(squares):
    """The sums of one block from its elements' squares (rows, one column per
    sum), as the kernels add them: element 8k + j into lane j, each lane in
    index order from 0.0, then the lanes in order (fastopt.reference.sumsq)."""
    n, nred = squares.shape
    lanes = np.zeros((8, nred), dtype=np.float64)
    full = n - n % 8
    if full:        # a running sum down each lane: index order
        lanes += np.add.accumulate(squares[:full].reshape(-1, 8, nred), axis=0)[-1]
    lanes[:n - full] += squares[full:]
    total = lanes[0].copy()
    for j in range(1, 8):
        total += lanes[j]
    return total


# -- checkpoints -------------------------------------------------------------

def _read_manifest(path, missing_ok=False):
    name = os.path.join(path, MANIFEST)
    try:
        with open(name, "rb") as f:
            manifest = json.loads(f.read().decode())
    except FileNotFoundError:
        if missing_ok:
            return None
        raise ValueError(f"{path}: no {MANIFEST}: not a sharded checkpoint") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{name}: not a readable manifest ({e})") from None
    if not (isinstance(manifest, dict) and manifest.get("kind") == _KIND
            and manifest.get("version") == _VERSION):
        raise ValueError(f"{name}: not a fastopt sharded checkpoint of version {_VERSION}")
    return manifest


def _overlapping(manifest, lo, hi):
    """(old rank, (start, end)) of the old shards overlapping [lo, hi) and
    the real elements."""
    S = manifest["shard_size"]
    hi = min(hi, _manifest_flat(manifest))
    for q in range(manifest["world_size"]):
        a, b = q * S, (q + 1) * S
        if a < hi and lo < b:
            yield q, (a, b)


def _flat_layout(sizes, block):
    """Each parameter's start in the flat buffers and their end (an array
    of len(sizes) + 1): back to back, or each on a multiple of ``block``
    (8-bit states) with every size rounded up to one."""
    if block:
        sizes = [-(-n // block) * block for n in sizes]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return offsets, int(offsets[-1])


def _layout_words(layout):
    block = layout.get("block", 0)
    return (f"8-bit states' (every parameter on a block of {block} elements)"
            if block else "other state dtypes' (parameters back to back)")


def _manifest_flat(manifest):
    """The flat length of a checkpoint's parameters (padding excluded)."""
    if not manifest.get("block"):
        return manifest["numel"]
    sizes = [int(np.prod(s, dtype=np.int64)) for s in manifest["shapes"]]
    return _flat_layout(sizes, manifest["block"])[1]


def _single_process(sd, entry, full, layout, skipped):
    """A single process's state_dict from a shard's and the full arrays."""
    shapes = layout["shapes"]
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    block = layout.get("block", 0)
    offsets, _ = _flat_layout(sizes, block)
    state = {}
    if entry:
        for i, shape in enumerate(shapes):
            e = {k: v for k, v in entry.items() if k not in full}
            for key, buf in full.items():
                if block and key.endswith(".scale"):   # one per block
                    a = int(offsets[i]) // block
                    e[key] = buf[a:a - (-sizes[i] // block)].copy()
                else:
                    e[key] = buf[offsets[i]:offsets[i] + sizes[i]].reshape(shape).copy()
            state[i] = e
    group = {k: v for k, v in sd["param_groups"][0].items()
             if k not in ("params", "param_names")}
    group["params"] = list(range(len(shapes)))
    if layout["names"] is not None:
        group["param_names"] = list(layout["names"])
    out = {"format": sd["format"], "version": sd["version"],
           "optimizer": layout["optimizer"], "state": state,
           "param_groups": [group], "skipped_steps": skipped}
    for key in ("state_dtype", "seed"):
        if key in sd:
            out[key] = sd[key]
    return out


def consolidate(path, out=None):
    """The single-process checkpoint of a sharded checkpoint folder ``path``:
    returns the state_dict that ``optimizer_class(params, ...)`` loads with
    ``load_state_dict``, and with ``out`` also writes it there atomically
    (``opt.load(out)`` then resumes in one process).  Needs no MPI."""
    path = os.fsdecode(path)
    manifest = _read_manifest(path)
    S, P = manifest["shard_size"], manifest["world_size"]
    block = manifest.get("block", 0)
    shards = [checkpoint.read_state(os.path.join(path, n)) for n in manifest["files"]]
    entries = [sd["state"].get(0) for sd in shards]
    full = {}
    entry = entries[0] or {}
    if any((e is None) != (entries[0] is None) for e in entries):
        raise ValueError(f"{path}: shard files disagree on whether a step was taken")
    for key, v in entry.items():
        if isinstance(v, np.ndarray) and v.ndim == 1:
            u = block if block and key.endswith(".scale") else 1
            buf = np.empty(P * S // u, dtype=v.dtype)
            for q, e in enumerate(entries):
                if e["step"] != entry["step"]:
                    raise ValueError(f"{path}: shard files disagree on the step count")
                buf[q * S // u:(q + 1) * S // u] = e[key]
            full[key] = buf
    sd = _single_process(shards[0], entry, full, manifest, manifest["skipped_steps"])
    if out is not None:
        checkpoint.write_state(out, sd)
    return sd
