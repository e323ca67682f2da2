"""Golden trajectories: the same bits on every machine.

tests/data/golden_trajectories.json holds, for long runs of every rule
(several options, float32 and float64, 300 to 1,200 steps, beta2 = 0.9999
past step 1,000 for the Adam family), a SHA-256 over the parameter and every
state after a few chosen steps, and the first parameter values as hex.  The
file was written on x86-64 by tools/make_golden_trajectories.py; this test
recomputes every trajectory at every instruction-set level and thread count
of the machine it runs on and requires the same digests.  It runs as it is
on x86-64 with and without FMA (tools/test_without_avx2.sh) and on emulated
aarch64 (tools/test_aarch64.sh, .ci/run), so one file pins one trajectory
across all of them: kernels without contraction, and per-step scalars that
do not come from the C library (csrc/fastopt/fo_math.h).

Inputs are platform-neutral: the start values and the gradient noise are
raw 64-bit draws of NumPy's PCG64 scaled by powers of two, and the gradient
of each step is g = (p - target) * curvature + noise, three basic
operations that IEEE 754 fixes to the bit (NumPy never contracts them).

Regenerate only for a deliberate change of the rules' results, and say why
in the commit: python tools/make_golden_trajectories.py
"""
import hashlib
import json
import pathlib
import zlib

import numpy as np
import pytest

from conftest import RULES

DATA = pathlib.Path(__file__).parent / "data" / "golden_trajectories.json"
N = 301                      # odd, and above two threads' split grain
DTYPES = ("float32", "float64")
LONG = 1200                  # past step 1,000 for beta2 = 0.9999
SHORT = 300
RECORD = (1, 2, 10, 100, 300, 500, 1000, LONG)

# id: (rule, hyperparameters, steps)
CASES = {
    "adam-b2_0.9999": ("adam", dict(lr=1e-3, betas=(0.9, 0.9999)), LONG),
    "adam-amsgrad-wd": ("adam", dict(lr=1e-3, betas=(0.9, 0.9999), amsgrad=True,
                                     weight_decay=1e-2), LONG),
    "adamw-b2_0.9995": ("adam", dict(lr=1e-3, betas=(0.8, 0.9995), weight_decay=1e-2,
                                     decoupled_weight_decay=True), LONG),
    "radam-b2_0.9999": ("radam", dict(lr=1e-3, betas=(0.9, 0.9999)), LONG),
    "adamax-b1_0.95": ("adamax", dict(lr=2e-3, betas=(0.95, 0.999)), LONG),
    "nadam": ("nadam", dict(lr=2e-3, betas=(0.9, 0.9999)), LONG),
    "nadam-decoupled": ("nadam", dict(lr=1e-2, momentum_decay=0.05, weight_decay=0.1,
                                      decoupled_weight_decay=True), SHORT),
    "asgd-averaging": ("asgd", dict(lr=1e-2, lambd=1e-2, alpha=0.75, t0=100.0), SHORT),
    "asgd-defaults": ("asgd", dict(), SHORT),
    "ademamix-warmups": ("ademamix", dict(lr=1e-3, betas=(0.9, 0.9999, 0.999),
                                          alpha=5.0, alpha_warmup=250,
                                          beta3_warmup=250, weight_decay=0.01), SHORT),
    "ademamix-defaults": ("ademamix", dict(), LONG),
    "adopt": ("adopt", dict(lr=1e-3), LONG),
    "adopt-noclip-decouple": ("adopt", dict(lr=1e-3, clip=False, weight_decay=0.01,
                                            decouple=True), SHORT),
    "sgd-nesterov": ("sgd", dict(lr=1e-2, momentum=0.9, nesterov=True,
                                 weight_decay=1e-3), SHORT),
    "momentum": ("momentum", dict(lr=1e-2, beta=0.9), SHORT),
    "rmsprop-centered-momentum": ("rmsprop", dict(lr=1e-3, centered=True,
                                                  momentum=0.9), SHORT),
    "adagrad-lr_decay": ("adagrad", dict(lr=1e-2, lr_decay=1e-3,
                                         initial_accumulator_value=0.1), SHORT),
    "lion": ("lion", dict(lr=1e-4, weight_decay=0.1), SHORT),
    "adadelta": ("adadelta", dict(), SHORT),
    "rprop": ("rprop", dict(), SHORT),
    "lamb-wd": ("lamb", dict(lr=1e-3, betas=(0.9, 0.9999), weight_decay=0.01), LONG),
    "lars-nesterov": ("lars", dict(lr=0.1, weight_decay=1e-4, nesterov=True), SHORT),
    "sklearn_sgd": ("sklearn_sgd", dict(), SHORT),
    "adamw_schedulefree": ("adamw_schedulefree",
                           dict(lr=1e-3, betas=(0.9, 0.9999), warmup_steps=50,
                                r=0.5, weight_decay=0.01), LONG),
    "sgd_schedulefree": ("sgd_schedulefree", dict(lr=0.1, warmup_steps=20), SHORT),
}


def _draws(rng, n, dtype, exponent):
    """[-1, 1) * 2^exponent from raw 53-bit draws: exact on every machine."""
    raw = rng.bit_generator.random_raw(n)
    x = ((raw >> np.uint64(11)).astype(np.float64) * 2.0 ** -52 - 1.0) * 2.0 ** exponent
    return x.astype(dtype)


def _digest(arrays):
    h = hashlib.sha256()
    for name, a in arrays:
        h.update(f"{name}:{a.dtype.name}:{a.shape};".encode())
        h.update(np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def run_case(case_id, dtype):
    """{"sha256": {step: hex}, "param": [hex of the first values]} of one
    trajectory, on the current level and threads."""
    rule_name, hp, steps = CASES[case_id]
    rule = RULES[rule_name]
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(zlib.crc32(f"{case_id}/{dtype.name}".encode()))
    param = _draws(rng, N, dtype, 0)
    target = _draws(rng, N, dtype, 0)
    curvature = np.abs(_draws(rng, N, dtype, 1))
    states = rule.new_states(hp, N, dtype)
    digests = {}
    for t in range(1, steps + 1):
        grad = (param - target) * curvature + _draws(rng, N, dtype, -3)
        rule.call(rule.kernel, param, grad, states, hp, t)
        if t in RECORD:
            arrays = [("param", param)] + sorted(states.items())
            for name, a in arrays:
                assert np.isfinite(a).all(), f"{case_id}: {name} not finite at step {t}"
            digests[str(t)] = _digest(arrays)
    return {"steps": steps, "sha256": digests,
            "param": [float(v).hex() for v in param[:4]]}


def compute_all():
    return {f"{cid}/{dt}": run_case(cid, dt) for cid in CASES for dt in DTYPES}


def load():
    with open(DATA) as f:
        return json.load(f)


def test_ids_match():
    assert sorted(load()["cases"]) == sorted(f"{c}/{d}" for c in CASES for d in DTYPES)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case_id", list(CASES))
def test_trajectory(case_id, dtype, exec_env):
    want = load()["cases"][f"{case_id}/{dtype}"]
    got = run_case(case_id, dtype)
    first = next((s for s in want["sha256"] if got["sha256"].get(s) != want["sha256"][s]),
                 None)
    assert first is None, (
        f"{case_id}/{dtype} at level/threads {exec_env}: first differs after step "
        f"{first}; first values {got['param']} against {want['param']}")
    assert got == want
