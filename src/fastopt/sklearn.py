"""scikit-learn's MLPClassifier and MLPRegressor on fastopt's fused updates.

:class:`MLPClassifier` and :class:`MLPRegressor` are scikit-learn's own
estimators (same constructor, attributes, ``fit``, ``partial_fit``,
``predict``, pickling, ``warm_start``, early stopping and learning-rate
schedules): scikit-learn trains, and only the optimizer's
``update_params`` changes, with the last two operations of each layer's
coefficient gradient (``_compute_loss_grad``'s ``+= alpha * coef`` and
``/= n``), which the update does in its loop.  Where scikit-learn builds
its ``AdamOptimizer`` or ``SGDOptimizer`` for ``solver="adam"`` or
``"sgd"``, these estimators keep a :class:`FusedAdamOptimizer` or
:class:`FusedSGDOptimizer` instead:
subclasses of scikit-learn's classes, with its attributes and schedules,
whose update is one in-place fastopt call over all weights and biases
(the rules ``sklearn_adam`` and ``sklearn_sgd`` of :mod:`fastopt.rules`,
scikit-learn's formulas in its operation order).  ``coefs_``,
``intercepts_``, ``loss_curve_`` and ``n_iter_`` are bit-identical to
stock scikit-learn's.  ``solver="lbfgs"`` is scikit-learn's, unchanged.

scikit-learn has no public hook for its optimizers: the estimators rely on
its private ``_optimizer`` attribute, ``_fit_stochastic`` and
``_compute_loss_grad``, and on the optimizers' attributes
(``ms``, ``vs``, ``t``, ``velocities``, ``learning_rate``, ...).  That is
pinned to the versions in :data:`SUPPORTED_VERSIONS` (the extra
``fastopt[sklearn]``); on another version the estimators train exactly as
stock scikit-learn does and say so with a :class:`FallbackWarning`.

A tensor the kernel cannot take is stepped in NumPy with scikit-learn's
own expressions, so the results stay scikit-learn's in every case: one
whose gradient or state has another dtype (MLPRegressor with float32 ``X``
and float64 targets gets float64 gradients for its output layer, and
scikit-learn's arithmetic then makes that layer's states float64), arrays
that are not contiguous or that share memory (a hand-made ``coefs_``), and
hyperparameters that NumPy would not treat as Python floats (a NumPy
float64 ``momentum`` promotes float32 weights to float64 in scikit-learn's
arithmetic).

This module imports scikit-learn; ``import fastopt`` does not import it.
"""
import warnings

import numpy as np
# scikit-learn ships no type information (and is absent without the extra)
import sklearn  # type: ignore
from sklearn.neural_network import (  # type: ignore
    MLPClassifier as _MLPClassifier, MLPRegressor as _MLPRegressor)
from sklearn.neural_network._stochastic_optimizers import (  # type: ignore
    AdamOptimizer, SGDOptimizer)
from sklearn.utils.extmath import safe_sparse_dot  # type: ignore

from fastopt import _core

__all__ = ["MLPClassifier", "MLPRegressor", "FusedAdamOptimizer",
           "FusedSGDOptimizer", "FallbackWarning", "SUPPORTED_VERSIONS",
           "supported"]

#: scikit-learn versions whose private optimizer protocol these estimators
#: follow, as [lowest, first unsupported) of (major, minor); 1.6.1 and
#: 1.9.1 are tested.
SUPPORTED_VERSIONS = ((1, 6), (1, 10))


class FallbackWarning(UserWarning):
    """The installed scikit-learn is outside :data:`SUPPORTED_VERSIONS`:
    training runs on scikit-learn's own optimizers."""


def _minor(version):
    parts = []
    for piece in version.split(".")[:2]:
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        parts.append(int(digits or 0))
    return tuple(parts + [0] * (2 - len(parts)))


def supported(version=None):
    """Whether scikit-learn ``version`` (the installed one by default) is
    one whose optimizers these estimators replace."""
    lo, hi = SUPPORTED_VERSIONS
    return lo <= _minor(sklearn.__version__ if version is None else version) < hi


_SUPPORTED = supported()
# the bias gradient of _compute_loss_grad: a mean before 1.7, where sample
# weights came in; a sum divided by the batch's weight sum from then on
_INTERCEPT_MEAN = _minor(sklearn.__version__) < (1, 7)


def _fallback_warning():
    lo, hi = SUPPORTED_VERSIONS
    warnings.warn(
        f"fastopt.sklearn supports scikit-learn >={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]}, "
        f"not {sklearn.__version__}: training with scikit-learn's own "
        f"optimizers", FallbackWarning, stacklevel=3)


def _plain(value, dtype):
    """Whether NumPy treats ``value`` in arithmetic with ``dtype`` arrays as
    the Python float the kernel's coefficient is: a Python int or float
    (converted to the arrays' dtype), or a NumPy float64 with float64
    arrays."""
    kind = type(value)
    return kind is float or kind is int or (kind is np.float64 and dtype == np.float64)


def _finishable(alpha, divisor, dtype):
    """Whether the kernel can finish a raw coefficient gradient of ``dtype``
    exactly as _compute_loss_grad does, ``grad += alpha * coef`` then
    ``grad /= divisor``: both Python numbers or NumPy scalars that NumPy
    computes with at the arrays' precision (a float32 is exact in float64
    arithmetic too), finite, and a positive divisor."""
    for value in (alpha, divisor):
        if not (_plain(value, dtype) or type(value) is np.float32):
            return False
    return 0.0 <= float(alpha) < np.inf and 0.0 < float(divisor) < np.inf


def _finish(params, grads, raw):
    """scikit-learn's own two lines for the raw gradients ``raw`` names,
    in place, for a step the kernel did not take with them (alpha and
    divisor as Python floats: NumPy computes with them as with the values
    ``_finishable`` accepted)."""
    finish, layers = raw
    for k in sorted(layers):
        grads[k] += finish["alpha"] * params[k]
        grads[k] /= finish["divisor"]


def _groups(params, grads, states, plain):
    """Split the tensors of a step: {dtype: indices} of those whose
    parameter, gradient and states share a float32 or float64 dtype and
    whose hyperparameters ``plain(dtype)`` allows, and the indices of the
    rest (a float64 gradient of float32 weights, as MLPRegressor makes for
    its output layer with float64 targets)."""
    fused, rest = {}, []
    for k, (p, g) in enumerate(zip(params, grads)):
        dtype = getattr(p, "dtype", None)
        if (dtype in _DTYPES and getattr(g, "dtype", None) == dtype
                and all(getattr(s[k], "dtype", None) == dtype for s in states)
                and plain(dtype)):
            fused.setdefault(dtype, []).append(k)
        else:
            rest.append(k)
    return fused, rest


_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _pick(arrays, indices):
    return [arrays[k] for k in indices]


# Networks below this many parameters step on one thread.  Right after
# scikit-learn's matrix products (OpenBLAS's threads) waking a second thread
# cost about 100 us on a 2-core machine, more than such a step gains from it:
# fit() with (256, 256) layers (9.4e4 parameters) at batch 32 ran 1.1-1.2x
# faster on one thread; with (1024, 1024) (1.2e6) two threads were as fast
# or faster (python -m fastopt bench --sklearn, FASTOPT_NUM_THREADS=1 and 2).
ONE_THREAD_BELOW = 1 << 19


def _update(optimizer, rule, params, grads, states, hyper, plain, raw):
    """One optimizer step of ``rule`` (its hyperparameters ``hyper``), on
    one thread for a small network.  ``raw`` ({"alpha": alpha, "divisor":
    divisor}, {layer, ...}), or None, names the coefficient gradients that
    scikit-learn's backprop left raw.  When it names every coefficient (the
    first half of ``params``, scikit-learn's ``coefs_ + intercepts_``) one
    fastopt call finishes them in its loop and steps all tensors; otherwise
    they are finished in NumPy first.  A call checks everything before it
    writes; tensors it refuses are stepped by dtype group, and those no call
    takes by the optimizer's ``_numpy_update(k, param, grad)``."""
    size = 0
    for p in params:
        size += getattr(p, "size", 0)
    cap = _core.swap_thread_cap(1) if size < ONE_THREAD_BELOW else None
    try:
        if raw is not None:
            count = len(raw[1])
            if 2 * count == len(params) == len(grads) and plain(params[0].dtype):
                try:
                    _core.step_many(rule, params, grads, list(states),
                                    first=(count, raw[0]), **hyper)
                    return
                except (TypeError, ValueError):
                    pass                # refused before anything was written
            _finish(params, grads, raw)
        _update_rest(rule, params, grads, states, hyper, plain, optimizer._numpy_update)
    finally:
        if cap is not None:
            _core.swap_thread_cap(cap)


def _update_rest(rule, params, grads, states, hyper, plain, numpy_update):
    """The step of finished gradients."""
    if len(grads) == len(params) and params and plain(getattr(params[0], "dtype", None)):
        try:
            _core.step_many(rule, params, grads, list(states), **hyper)
            return
        except (TypeError, ValueError):
            pass                        # refused before anything was written
    fused, rest = _groups(params, grads, states, plain)
    for indices in fused.values():
        try:
            _core.step_many(rule, _pick(params, indices), _pick(grads, indices),
                            [_pick(s, indices) for s in states], **hyper)
        except (TypeError, ValueError):
            rest += indices             # refused before anything was written
    for k in sorted(rest):
        numpy_update(k, params[k], grads[k])


class FusedAdamOptimizer(AdamOptimizer):
    """scikit-learn's AdamOptimizer whose update runs in place in one fastopt
    call (rule ``sklearn_adam``; one per dtype when they differ): ``ms`` and ``vs`` are updated in
    place rather than replaced, ``t`` and ``learning_rate`` advance as
    scikit-learn's do.  Results are bit-identical to AdamOptimizer's."""

    def update_params(self, params, grads):
        if not _SUPPORTED:
            _fallback_warning()
            return super().update_params(params, grads)
        if type(params) is not list or type(grads) is not list:
            params, grads = list(params), list(grads)
        self.t += 1
        self.learning_rate = (self.learning_rate_init
                              * np.sqrt(1 - self.beta_2 ** self.t)
                              / (1 - self.beta_1 ** self.t))
        lr = self.learning_rate_init

        def plain(dtype):
            return (type(lr) in (float, int, np.float64, np.float32)
                    and all(_plain(x, dtype) for x in (self.beta_1, self.beta_2,
                                                       self.epsilon)))

        _update(self, "sklearn_adam", params, grads, (self.ms, self.vs),
                {"step": self.t, "lr": lr, "betas": (self.beta_1, self.beta_2),
                 "eps": self.epsilon},
                plain, self.__dict__.pop("_raw", None))

    def _numpy_update(self, k, param, grad):
        """One tensor's step in NumPy, with scikit-learn's expressions (and
        so its dtype promotions), for a tensor the kernel does not take."""
        self.ms[k] = self.beta_1 * self.ms[k] + (1 - self.beta_1) * grad
        self.vs[k] = self.beta_2 * self.vs[k] + (1 - self.beta_2) * (grad ** 2)
        param += -self.learning_rate * self.ms[k] / (np.sqrt(self.vs[k]) + self.epsilon)


class FusedSGDOptimizer(SGDOptimizer):
    """scikit-learn's SGDOptimizer whose update runs in place in one fastopt
    call (rule ``sklearn_sgd``; one per dtype when they differ): ``velocities`` are updated in
    place rather than replaced; the schedules (``iteration_ends``,
    ``trigger_stopping``) are scikit-learn's.  Results are bit-identical to
    SGDOptimizer's."""

    def update_params(self, params, grads):
        if not _SUPPORTED:
            _fallback_warning()
            return super().update_params(params, grads)
        if type(params) is not list or type(grads) is not list:
            params, grads = list(params), list(grads)

        def plain(dtype):
            return _plain(self.learning_rate, dtype) and _plain(self.momentum, dtype)

        _update(self, "sklearn_sgd", params, grads, (self.velocities,),
                {"lr": self.learning_rate, "momentum": self.momentum,
                 "nesterov": bool(self.nesterov)},
                plain, self.__dict__.pop("_raw", None))

    def _numpy_update(self, k, param, grad):
        """One tensor's step in NumPy, with scikit-learn's expressions."""
        update = self.momentum * self.velocities[k] - self.learning_rate * grad
        self.velocities[k] = update
        if self.nesterov:
            update = self.momentum * update - self.learning_rate * grad
        param += update


_FUSED = {AdamOptimizer: FusedAdamOptimizer, SGDOptimizer: FusedSGDOptimizer}


def _fused(optimizer):
    """The fused twin of a stock optimizer that scikit-learn just built,
    holding the same attributes (its fresh states included)."""
    cls = _FUSED.get(type(optimizer))
    if cls is None:
        return optimizer
    if not _SUPPORTED:
        _fallback_warning()
        return optimizer
    twin = cls.__new__(cls)
    twin.__dict__.update(optimizer.__dict__)
    return twin


class _Fused:
    """Swaps the optimizer scikit-learn's ``_fit_stochastic`` assigns to
    ``self._optimizer`` for its fused twin.  While ``_fit_stochastic`` runs,
    the backprop leaves each layer's coefficient gradient raw (the product
    of activations and deltas) and the fused update finishes it in its
    loop: ``_compute_loss_grad``'s ``grad += alpha * coef`` and
    ``grad /= n`` (or the batch's weight sum) are two NumPy passes over
    every weight per batch otherwise."""

    def __setattr__(self, name, value):
        if name == "_optimizer":
            value = _fused(value)
        super().__setattr__(name, value)

    def _fit_stochastic(self, *args, **kwargs):
        self.__dict__["_defer_finish"] = True
        try:
            return super()._fit_stochastic(*args, **kwargs)
        finally:
            del self.__dict__["_defer_finish"]
            optimizer = self.__dict__.get("_optimizer")
            if optimizer is not None:
                optimizer.__dict__.pop("_raw", None)

    def _compute_loss_grad(self, layer, sw_sum, activations, deltas, coef_grads,
                           intercept_grads):
        optimizer = self.__dict__.get("_optimizer")
        coef = self.coefs_[layer]
        if not (self.__dict__.get("_defer_finish")
                and isinstance(optimizer, (FusedAdamOptimizer, FusedSGDOptimizer))
                and _finishable(self.alpha, sw_sum, coef.dtype)):
            return super()._compute_loss_grad(layer, sw_sum, activations, deltas,
                                              coef_grads, intercept_grads)
        inputs, delta = activations[layer], deltas[layer]
        if type(inputs) is np.ndarray and type(delta) is np.ndarray:
            grad = inputs.T @ delta     # safe_sparse_dot's product of two arrays
        else:
            grad = safe_sparse_dot(inputs.T, delta)
        coef_grads[layer] = grad
        if type(grad) is np.ndarray and grad.dtype == coef.dtype:
            raw = optimizer.__dict__.get("_raw")
            if raw is None:
                raw = optimizer.__dict__["_raw"] = (
                    {"alpha": float(self.alpha), "divisor": float(sw_sum)}, set())
            raw[1].add(layer)
        else:
            grad += self.alpha * coef
            grad /= sw_sum
        if type(delta) is np.ndarray:   # np.mean, np.sum: an array's own methods
            bias = delta.mean(0) if _INTERCEPT_MEAN else delta.sum(axis=0) / sw_sum
        elif _INTERCEPT_MEAN:
            bias = np.mean(delta, 0)
        else:
            bias = np.sum(delta, axis=0) / sw_sum
        intercept_grads[layer] = bias


class MLPClassifier(_Fused, _MLPClassifier):
    __doc__ = (
        "scikit-learn's MLPClassifier, trained with fastopt's fused Adam "
        "and SGD updates\n    (bit-identical results; see "
        ":mod:`fastopt.sklearn`).\n\n" + (_MLPClassifier.__doc__ or ""))


class MLPRegressor(_Fused, _MLPRegressor):
    __doc__ = (
        "scikit-learn's MLPRegressor, trained with fastopt's fused Adam "
        "and SGD updates\n    (bit-identical results; see "
        ":mod:`fastopt.sklearn`).\n\n" + (_MLPRegressor.__doc__ or ""))
