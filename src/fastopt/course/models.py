"""A small fully connected network in NumPy, in the seed course's layout.

The network is LINEAR→RELU repeated for the hidden layers, then
LINEAR→SIGMOID; examples are columns. For layer ``l = 1 … L`` with
``A0 = X``::

    Z_l = W_l · A_{l−1} + b_l
    A_l = max(0, Z_l)          for l < L
    A_L = 1 / (1 + exp(−Z_L))

The cost of a batch of ``m`` examples is the summed cross-entropy
``Σ −(Y·log A_L + (1 − Y)·log(1 − A_L))``, and the gradients are those of
its mean, ``cost / m``::

    dZ_L = (1/m)·(A_L − Y)
    dW_l = dZ_l · A_{l−1}ᵀ
    db_l = Σ_columns dZ_l
    dZ_{l−1} = (W_lᵀ · dZ_l) ⊙ [A_{l−1} > 0]

These are the course's formulas in the course's operation order, so
training reproduces its numbers. All intermediate arrays live in work
buffers cached per batch size, and gradients are written into arrays that
are allocated once and reused by every step, so an optimizer can be set up
once against :attr:`MLP.params` and :attr:`MLP.grads`.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import numpy as np

from .data import RandomSource, check_random_state

__all__ = ["MLP", "he_init"]

# Work buffers kept for this many distinct batch sizes: a training run needs
# two (full batches and the remainder) and evaluation one more.
_MAX_WORKSPACES = 8


def he_init(
    layer_dims: Sequence[int],
    *,
    random_state: RandomSource = None,
    dtype=np.float64,
) -> dict[str, np.ndarray]:
    """The course's He initialisation: ``W_l = randn(n_l, n_{l−1})·√(2/n_{l−1})``.

    Weights are drawn layer by layer, ``W1`` first, as standard normals of
    shape ``(n_l, n_{l−1})`` in float64, scaled, then rounded once to
    ``dtype``; biases are zero columns of shape ``(n_l, 1)``.

    Parameters
    ----------
    layer_dims : sequence of int
        Units per layer, inputs first, e.g. ``[2, 5, 2, 1]``.
    random_state : None, int, numpy.random.RandomState or numpy.random.Generator
        Random source, as in :func:`fastopt.course.data.check_random_state`.
        ``random_state=3`` gives the course's parameters (its
        ``np.random.seed(3)``) without touching NumPy's global generator;
        ``None`` draws from the global generator.
    dtype : float dtype, default float64

    Returns
    -------
    dict of str to ndarray
        ``{"W1": …, "b1": …, "W2": …}``, in layer order.
    """
    dims = _check_layer_dims(layer_dims)
    dtype = _check_dtype(dtype)
    generator = check_random_state(random_state)
    draw = (
        generator.standard_normal
        if isinstance(generator, np.random.Generator)
        else lambda shape: generator.randn(*shape)
    )
    params = {}
    for l in range(1, len(dims)):
        weights = draw((dims[l], dims[l - 1])) * np.sqrt(2 / dims[l - 1])
        params[f"W{l}"] = weights.astype(dtype, copy=False)
        params[f"b{l}"] = np.zeros((dims[l], 1), dtype=dtype)
    return params


class MLP:
    """LINEAR→RELU→…→LINEAR→SIGMOID network with reusable buffers.

    Parameters
    ----------
    layer_dims : sequence of int
        Units per layer, inputs first; the course uses ``[2, 5, 2, 1]``.
    dtype : float dtype, optional
        float64 (default) or float32. With ``params``, defaults to their
        dtype.
    random_state : None, int, numpy.random.RandomState or numpy.random.Generator
        Random source for :func:`he_init`; ``3`` gives the course's initial
        parameters. Ignored when ``params`` is given.
    params : mapping of str to ndarray, optional
        Parameters to use instead of drawing new ones. The arrays are used
        as given, without copying (they may be views of one flat buffer),
        and are only ever updated in place.

    Attributes
    ----------
    params : dict of str to ndarray
        ``W1, b1, …, WL, bL``; ``W_l`` of shape ``(n_l, n_{l−1})``, ``b_l``
        of shape ``(n_l, 1)``.
    grads : dict of str to ndarray
        ``dW1, db1, …``: the default target of :meth:`backward`, allocated
        once, same shapes as ``params``.
    param_names, grad_names : tuple of str
        Keys of ``params`` and ``grads``, matched by position.

    Notes
    -----
    :meth:`forward` keeps its activations in buffers owned by the model
    (one set per batch size); :meth:`cost` and :meth:`backward` use those
    of the latest forward pass, so call them before the next one. The input
    ``X`` is kept by reference until then, not copied.
    """

    def __init__(
        self,
        layer_dims: Sequence[int],
        *,
        dtype=None,
        random_state: RandomSource = None,
        params: Mapping[str, np.ndarray] | None = None,
    ):
        self.layer_dims = _check_layer_dims(layer_dims)
        self.n_layers = len(self.layer_dims) - 1
        self.param_names = tuple(
            f"{kind}{l}" for l in range(1, self.n_layers + 1) for kind in ("W", "b")
        )
        self.grad_names = tuple(f"d{name}" for name in self.param_names)
        self._layer_names = tuple(
            zip(self.param_names[::2], self.param_names[1::2], strict=True)
        )
        self._grad_layer_names = tuple(
            zip(self.grad_names[::2], self.grad_names[1::2], strict=True)
        )
        if params is None:
            self.dtype = _check_dtype(np.float64 if dtype is None else dtype)
            self.params = he_init(
                self.layer_dims, random_state=random_state, dtype=self.dtype
            )
        else:
            self.params = dict(params)
            if dtype is None:
                dtype = getattr(self.params.get("W1"), "dtype", np.float64)
            self.dtype = _check_dtype(dtype)
            self._check_arrays(self.params, self.param_names, "params")
        self.grads = {
            gname: np.zeros(self.params[pname].shape, dtype=self.dtype)
            for pname, gname in zip(self.param_names, self.grad_names, strict=True)
        }
        self._workspaces: dict[int, _Workspace] = {}
        self._last: _Workspace | None = None

    def __repr__(self) -> str:
        return f"MLP({list(self.layer_dims)}, dtype={self.dtype.name})"

    def forward(self, X) -> np.ndarray:
        """Output ``A_L`` of shape ``(n_L, m)`` for inputs ``X`` of shape ``(n_0, m)``.

        ``X`` is converted to the model's dtype (a copy if it differs). The
        returned array belongs to the model and is overwritten by the next
        forward pass with the same batch size: copy it to keep it.
        """
        X = _as_array(X, self.dtype, "X")
        if X.ndim != 2 or X.shape[0] != self.layer_dims[0] or X.shape[1] == 0:
            raise ValueError(
                f"X must have shape ({self.layer_dims[0]}, m) with m >= 1, "
                f"got {X.shape}"
            )
        work = self._workspace(X.shape[1])
        work.A[0] = X
        params = self.params
        last = self.n_layers
        for l, (w_name, b_name) in enumerate(self._layer_names, start=1):
            Z = work.A[l]
            np.dot(params[w_name], work.A[l - 1], out=Z)
            np.add(Z, params[b_name], out=Z)
            if l < last:
                np.maximum(0.0, Z, out=Z)
            else:
                np.negative(Z, out=Z)
                np.exp(Z, out=Z)
                np.add(Z, 1.0, out=Z)
                np.reciprocal(Z, out=Z)
        self._last = work
        return work.A[last]

    def cost(self, Y) -> float:
        """Summed cross-entropy of the latest forward pass against labels ``Y``.

        ``Σ −(Y·log A_L + (1 − Y)·log(1 − A_L))`` over the batch: the
        course's ``compute_cost``. Divide by the batch size for the mean, or
        add up the batches of an epoch and divide by the number of examples
        for the course's reported cost.
        """
        work = self._require_forward()
        return self._cost(work, self._check_labels(Y, work))

    def backward(self, Y, *, grads: Mapping[str, np.ndarray] | None = None):
        """Gradients of the mean cost of the latest forward pass.

        Parameters
        ----------
        Y : array_like of shape (n_L, m)
            Labels of the batch given to :meth:`forward`; shape ``(m,)`` is
            accepted when ``n_L == 1``.
        grads : mapping of str to ndarray, optional
            Where to write ``dW1, db1, …``: C-contiguous arrays of the
            parameters' shapes and dtype, for instance views of one flat
            buffer. Defaults to :attr:`grads`.

        Returns
        -------
        The mapping the gradients were written into.
        """
        work = self._require_forward()
        Y = self._check_labels(Y, work)
        if grads is None:
            grads = self.grads
        else:
            self._check_arrays(grads, self.grad_names, "grads")
        self._backward(work, Y, grads)
        return grads

    def forward_backward(
        self, X, Y, *, grads: Mapping[str, np.ndarray] | None = None
    ) -> float:
        """One training step's gradient work: forward, cost, backward.

        Returns the batch's summed cost (as :meth:`cost`) and leaves the
        gradients of its mean in ``grads`` (default :attr:`grads`).
        """
        if grads is None:
            grads = self.grads
        else:
            self._check_arrays(grads, self.grad_names, "grads")
        self.forward(X)
        work = self._last
        assert work is not None  # forward() leaves its workspace
        Y = self._check_labels(Y, work)
        total = self._cost(work, Y)
        self._backward(work, Y, grads)
        return total

    def predict(self, X) -> np.ndarray:
        """Class labels ``A_L > 0.5`` as intp, shape ``(n_L, m)``."""
        # exp(-Z) overflows to inf for a large negative Z, and the sigmoid
        # is then exactly 0: the right label, nothing to warn about
        with np.errstate(over="ignore"):
            return (self.forward(X) > 0.5).astype(np.intp)

    def accuracy(self, X, Y) -> float:
        """Fraction of labels in ``Y`` that :meth:`predict` gets right."""
        predicted = self.predict(X)
        Y = np.asarray(Y)
        if Y.size != predicted.size:
            raise ValueError(
                f"Y must hold {predicted.size} labels, got shape {Y.shape}"
            )
        return float(np.mean(predicted == Y.reshape(predicted.shape)))

    def _workspace(self, m: int) -> _Workspace:
        work = self._workspaces.pop(m, None)
        if work is None:
            if len(self._workspaces) >= _MAX_WORKSPACES:
                del self._workspaces[next(iter(self._workspaces))]
            work = _Workspace(self.layer_dims, m, self.dtype)
        self._workspaces[m] = work
        return work

    def _cost(self, work: _Workspace, Y: np.ndarray) -> float:
        A = work.A[self.n_layers]
        positive, negative, complement = work.cost_terms
        np.log(A, out=positive)
        np.negative(positive, out=positive)
        np.multiply(positive, Y, out=positive)
        np.subtract(1.0, A, out=negative)
        np.log(negative, out=negative)
        np.negative(negative, out=negative)
        np.subtract(1.0, Y, out=complement)
        np.multiply(negative, complement, out=negative)
        np.add(positive, negative, out=positive)
        total = float(np.add.reduce(positive, axis=None))
        if total != total:
            return self._saturated_cost(A, Y)
        return total

    @staticmethod
    def _saturated_cost(A: np.ndarray, Y: np.ndarray) -> float:
        """The summed cost where the course's formula gave NaN: a prediction
        at exactly 0 or 1 (float32 saturates the sigmoid long before
        float64) makes its term of the other class 0 * inf.  That term is
        0 (the limit of y log a as y -> 0) and counts as 0 here; every
        other term is the formula's, in its operations and dtype, so the
        sum is what the formula gives wherever it is defined, and NaN
        activations stay NaN."""
        with np.errstate(divide="ignore", invalid="ignore"):
            positive = np.where(Y == 0, 0.0, np.negative(np.log(A)) * Y)
            negative = np.where(Y == 1, 0.0, np.negative(np.log(1.0 - A)) * (1.0 - Y))
        return float(np.add.reduce(np.add(positive, negative), axis=None))

    def _backward(self, work: _Workspace, Y: np.ndarray, grads: Mapping) -> None:
        params = self.params
        dZ = work.dZ[self.n_layers]
        np.subtract(work.A[self.n_layers], Y, out=dZ)
        np.multiply(1.0 / work.m, dZ, out=dZ)
        for l in range(self.n_layers, 0, -1):
            dW_name, db_name = self._grad_layer_names[l - 1]
            np.dot(dZ, work.A[l - 1].T, out=grads[dW_name])
            np.add.reduce(dZ, axis=1, keepdims=True, out=grads[db_name])
            if l > 1:
                dA = work.dZ[l - 1]
                np.dot(params[self._layer_names[l - 1][0]].T, dZ, out=dA)
                active = work.active[l - 1]
                np.greater(work.A[l - 1], 0.0, out=active)
                np.multiply(dA, active, out=dA)
                dZ = dA

    def _require_forward(self) -> _Workspace:
        if self._last is None:
            raise RuntimeError("call forward() before cost() or backward()")
        return self._last

    def _check_labels(self, Y, work: _Workspace) -> np.ndarray:
        Y = _as_array(Y, self.dtype, "Y")
        shape = (self.layer_dims[-1], work.m)
        if Y.shape == shape:
            return Y
        if self.layer_dims[-1] == 1 and Y.shape == (work.m,):
            return Y.reshape(shape)
        raise ValueError(
            f"Y must have shape {shape} to match the latest forward pass, got {Y.shape}"
        )

    def _check_arrays(self, arrays: Mapping, names: tuple, what: str) -> None:
        for index, name in enumerate(names):
            layer = index // 2 + 1
            shape = (
                (self.layer_dims[layer], self.layer_dims[layer - 1])
                if index % 2 == 0
                else (self.layer_dims[layer], 1)
            )
            array = arrays.get(name)
            if not isinstance(array, np.ndarray):
                raise TypeError(f"{what}[{name!r}] must be a numpy array")
            if array.shape != shape or array.dtype != self.dtype:
                raise ValueError(
                    f"{what}[{name!r}] must have shape {shape} and dtype "
                    f"{self.dtype}, got {array.shape} and {array.dtype}"
                )
            if what == "grads" and not array.flags.c_contiguous:
                raise ValueError(f"grads[{name!r}] must be C-contiguous")
            if what == "grads" and not array.flags.writeable:
                raise ValueError(f"grads[{name!r}] must be writable")


class _Workspace:
    """Buffers for one batch size ``m``: activations, deltas, masks, cost terms."""

    __slots__ = ("A", "active", "cost_terms", "dZ", "m")

    def __init__(self, layer_dims: tuple[int, ...], m: int, dtype: np.dtype):
        self.m = m
        self.A: list = [None] + [np.empty((n, m), dtype) for n in layer_dims[1:]]
        self.dZ: list = [None] + [np.empty((n, m), dtype) for n in layer_dims[1:]]
        self.active: list = [None] + [np.empty((n, m), bool) for n in layer_dims[1:-1]]
        self.cost_terms = tuple(np.empty((layer_dims[-1], m), dtype) for _ in range(3))


def _check_layer_dims(layer_dims) -> tuple[int, ...]:
    dims = tuple(layer_dims)
    if len(dims) < 2:
        raise ValueError(
            f"layer_dims must list at least the input and output sizes, got {dims}"
        )
    for n in dims:
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
            raise ValueError(f"layer_dims must be positive ints, got {dims}")
    return tuple(int(n) for n in dims)


def _as_array(x, dtype: np.dtype, name: str) -> np.ndarray:
    if np.iscomplexobj(x):         # NumPy would drop the imaginary part
        raise TypeError(f"{name} must be real, got complex values")
    try:
        return np.asarray(x, dtype=dtype)
    except OverflowError as e:     # Python ints beyond the float range
        raise ValueError(f"{name} cannot be converted to {dtype}: {e}") from None


def _check_dtype(dtype) -> np.dtype:
    try:
        dtype = np.dtype(dtype)
    except (TypeError, ValueError, SyntaxError):   # NumPy parses "a,b" as code
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return dtype
