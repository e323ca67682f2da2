"""The seed's published test vectors, reproduced through fastopt.functional.

Inputs (optimizer-math.md): np.random.seed(1), then randn in this order:
W1 (2, 3), b1 (2, 1), W2 (3, 3), b2 (3, 1), dW1 (2, 3), db1 (2, 1),
dW2 (3, 3), db2 (3, 1).  Parameters are the seed's dict layout; each update
goes through fastopt.functional, one call per parameter, in place.
"""
import numpy as np
import pytest

from fastopt import functional

ATOL = 1e-8
NAMES = ["W1", "b1", "W2", "b2"]


def seed_inputs():
    np.random.seed(1)
    shapes = {"W1": (2, 3), "b1": (2, 1), "W2": (3, 3), "b2": (3, 1)}
    params = {k: np.random.randn(*s) for k, s in shapes.items()}
    grads = {"d" + k: np.random.randn(*s) for k, s in shapes.items()}
    return params, grads


def zeros_like(params):
    return {"d" + k: np.zeros_like(v) for k, v in params.items()}


def check(actual, expected):
    np.testing.assert_allclose(np.asarray(actual).ravel(),
                               np.asarray(expected).ravel(), rtol=0, atol=ATOL)


# ---------------------------------------------------------------------------
# Each vector: how to update, and the published numbers.  `expect` maps a
# name (param "W1", first moment "v_dW1", second moment "s_dW1") to the
# values, optionally indexed by a row (name, row).

def _gd(params, grads, states):
    for k in NAMES:
        functional.sgd(params[k], grads["d" + k], lr=0.01)


def _momentum(params, grads, states):
    for k in NAMES:
        functional.momentum(params[k], grads["d" + k], states["v"]["d" + k],
                            lr=0.01, beta=0.9)


def _adam(lr, betas, eps):
    def update(params, grads, states):
        for k in NAMES:
            # one update applied with t = 2, from zero moments
            functional.adam(params[k], grads["d" + k], states["v"]["d" + k],
                            states["s"]["d" + k], step=2, lr=lr, betas=betas,
                            eps=eps)
    return update


SEED_VECTORS = [
    pytest.param(_gd, {
        "W1": [[1.63535156, -0.62320365, -0.53718766],
               [-1.07799357, 0.85639907, -2.29470142]],
        "b2": [-0.88020257, 0.02561572, 0.57539477],
    }, id="gradient-descent"),
    pytest.param(_momentum, {
        "W1": [[1.62544598, -0.61290114, -0.52907334],
               [-1.07347112, 0.86450677, -2.30085497]],
        "b1": [1.74493465, -0.76027113],
        "b2": [-0.87809283, 0.04055394, 0.58207317],
        "v_dW1": [[-0.11006192, 0.11447237, 0.09015907],
                  [0.05024943, 0.09008559, -0.06837279]],
        "v_db2": [0.02344157, 0.16598022, 0.07420442],
    }, id="momentum-seed-form"),
    pytest.param(_adam(0.01, (0.9, 0.999), 1e-8), {
        "W1": [[1.63178673, -0.61919778, -0.53561312],
               [-1.08040999, 0.85796626, -2.29409733]],
        "b1": [1.75225313, -0.75376553],
        ("W2", 2): [1.14121081, -1.09244991, -0.16498684],
        "b2": [-0.88529979, 0.03477238, 0.57537385],
        "s_dW1": [[0.00121136, 0.00131039, 0.00081287],
                  [0.0002525, 0.00081154, 0.00046748]],
        "s_db2": [5.49507194e-05, 2.75494327e-03, 5.50629536e-04],
    }, id="adam-t2"),
    pytest.param(_adam(0.02, (0.8, 0.888), 1e-2), {
        ("W1", 0): [1.63942428, -0.6268425, -0.54320974],
        ("b1", 0): [1.75854357],
        ("b2", 0): [-0.89228024],
        ("v_dW1", 0): [-0.22012384, 0.22894474, 0.18031814],
        ("s_dW1", 0): [0.13567261, 0.14676395, 0.09104097],
    }, id="adam-2021-edition-t2"),
]


@pytest.mark.parametrize("update, expect", SEED_VECTORS)
def test_seed_vector(update, expect):
    params, grads = seed_inputs()
    states = {"v": zeros_like(params), "s": zeros_like(params)}
    update(params, grads, states)
    for key, values in expect.items():
        name, row = key if isinstance(key, tuple) else (key, None)
        if name.startswith(("v_", "s_")):
            actual = states[name[0]][name[2:]]
        else:
            actual = params[name]
        if row is not None:
            actual = actual[row]
        check(actual, values)


def test_inputs_are_the_seeds():
    """Guard on the input order: W1[0, 0] and dW1[0, 0] of np.random.seed(1)."""
    params, grads = seed_inputs()
    assert params["W1"][0, 0] == pytest.approx(1.62434536, abs=1e-8)
    assert grads["dW1"][0, 0] == pytest.approx(-1.10061918, abs=1e-8)
