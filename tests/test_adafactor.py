"""Adafactor against torch.optim.Adafactor (torch 2.13) and its reference.

torch's _single_tensor_adafactor: step t counts from 1; the second
moment's lerp weight is t^beta2_decay (1 - beta2_t); rho = min(lr,
1/sqrt(t)); alpha = max(eps2, RMS(param)) * rho with the parameter's RMS
taken before the decoupled decay param *= 1 - lr * weight_decay; a
parameter of 2 or more dimensions keeps row_var (last dimension 1) and
col_var (second-to-last 1), lerped towards the means of g * g along the last
and the second-to-last axis, and its variance estimate is row_var @ col_var
divided by the mean of row_var over the rows, floored at eps1; a vector or
scalar keeps a full variance; the update g / sqrt(max(v, eps1^2)) is
divided by max(1, RMS(update) / d); eps1 None is finfo(dtype).eps.

Adafactor is a factored rule (rules.FACTORED_RULES): its states are not of
the parameter's shape, so the table-driven tests (test_kernels,
test_properties, test_state_machine, test_fuzz, test_bad_input,
test_torch_conformance), whose models make parameter-shaped states through
the generated doors and Plan, do not cover it; this file does their part:
kernel against reference bit for bit on every level and thread count, the
same bits across levels and threads, bad input at the functional door and
the class, torch conformance of every option over 50 steps, groups, None
gradients, skip_nonfinite, checkpoints and schedules.
"""
import itertools

import numpy as np
import pytest

import fastopt
from conformance import assert_close
from fastopt import _core, functional, reference

# 0-D, 1-D, 2-D and 3-D parameters (3-D: a batch of matrices); (3, 4099):
# rows longer than a block of the sums; (64, 70): enough rows and columns
# for two threads to split the axis pass
SHAPES = [(), (7,), (4099,), (5, 6), (3, 4, 9), (1, 1), (3, 4099), (2, 64, 70)]
DTYPES = [np.float32, np.float64]

# Every option: the defaults, maximize, decoupled weight decay, a given eps1,
# the clipping threshold d, an lr above 1/sqrt(t) for the first steps (rho
# switches from lr to 1/sqrt(t) at t = 3), a slower beta2_decay.
CONFIGS = {
    "defaults": {},
    "maximize": {"maximize": True},
    "weight_decay": {"weight_decay": 0.2, "lr": 0.05},
    "eps1": {"eps": (1e-3, 1e-2)},
    "d": {"d": 1.7},
    "rho_switch": {"lr": 0.6},
    "beta2_decay": {"beta2_decay": -0.5, "maximize": True, "weight_decay": 0.1},
}


def new_states(p):
    if p.ndim >= 2:
        return [np.zeros(p.shape[:-1] + (1,), p.dtype),
                np.zeros(p.shape[:-2] + (1,) + p.shape[-1:], p.dtype), None]
    return [None, None, np.zeros_like(p)]


def run(fn, p, grads, hyper):
    p = p.copy()
    states = new_states(p)
    for t, g in enumerate(grads, start=1):
        fn(p, g, *states, step=t, **hyper)
    return [p] + [s for s in states if s is not None]


def data(rng, shape, dtype, steps):
    p = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(steps)]
    return p, grads


# ---------------------------------------------------------------------------
# kernel = reference, bit for bit

@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_kernel_equals_reference_every_level_and_thread(exec_env, rng, shape, dtype):
    for name in ("defaults", "maximize", "eps1"):
        p, grads = data(rng, shape, dtype, 3)
        got = run(functional.adafactor, p, grads, CONFIGS[name])
        want = run(reference.adafactor, p, grads, CONFIGS[name])
        for x, y in zip(got, want):
            np.testing.assert_array_equal(x, y, err_msg=name)
            assert x.tobytes() == y.tobytes(), name


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_kernel_equals_reference_every_option(rng, config, dtype):
    for shape in SHAPES[:5]:
        p, grads = data(rng, shape, dtype, 6)
        got = run(functional.adafactor, p, grads, CONFIGS[config])
        want = run(reference.adafactor, p, grads, CONFIGS[config])
        for x, y in zip(got, want):
            assert x.tobytes() == y.tobytes(), shape


def test_same_bits_on_every_level_and_thread_count(restore_config, rng):
    """The row and column sums, the norms and the update: one answer
    whatever the level and the split between threads."""
    from conftest import AVAILABLE_LEVELS
    for dtype in DTYPES:
        p, grads = data(rng, (2, 300, 70), dtype, 3)
        results = []
        for level, threads in itertools.product(AVAILABLE_LEVELS, (1, 2)):
            fastopt.set_simd_level(level)
            fastopt.set_num_threads(threads)
            _core.set_parallel_threshold(1 if threads > 1 else 1 << 15)
            results.append(b"".join(x.tobytes() for x in
                                    run(functional.adafactor, p, grads, {})))
        assert len(set(results)) == 1


def test_sums_along_axes_are_the_references(rng):
    """The reference's row sums are fastopt's sums of squares of each row;
    its column sums a running sum down the rows."""
    x = rng.standard_normal((2, 3, 9000))
    np.testing.assert_array_equal(reference.rowsq(x)[1, 2, 0], reference.sumsq(x[1, 2]))
    col = 0.0
    for r in range(3):
        col += x[1, r, 5] * x[1, r, 5]
    assert reference.colsq(x)[1, 0, 5] == col


# ---------------------------------------------------------------------------
# the traps, by name

def test_lerp_weight_and_relative_step():
    """1 - beta2_t = t^beta2_decay (1 at step 1: the state becomes the first
    mean); rho = min(lr, 1/sqrt(t))."""
    c1 = _core.adafactor_coefficients(1, lr=0.6)
    c9 = _core.adafactor_coefficients(9, lr=0.6)
    assert c1["weight"] == 1.0 and c1["rho"] == 0.6
    assert c9["weight"] == pytest.approx(9.0 ** -0.8, rel=1e-15)
    assert c9["rho"] == 1.0 / 3.0
    assert _core.adafactor_coefficients(4)["rho"] == 1e-2


def test_first_step_sets_states_to_the_first_means(rng):
    p, (g,) = data(rng, (4, 5), np.float64, 1)
    row, col, _ = new_states(p)
    functional.adafactor(p, g, row, col, None, step=1)
    np.testing.assert_allclose(row, (g * g).mean(axis=-1, keepdims=True), rtol=1e-15)
    np.testing.assert_allclose(col, (g * g).mean(axis=-2, keepdims=True), rtol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_eps1_none_is_the_dtypes_machine_epsilon(dtype):
    """A zero gradient: v = 0 is floored at eps1^2 with eps1 = finfo.eps, so
    the update is 0 and the parameter only decays."""
    p = np.ones((3, 4), dtype)
    g = np.zeros_like(p)
    g[0, 0] = np.finfo(dtype).eps   # g^2 underflows the floor's scale
    got = run(functional.adafactor, p, [g], {})
    want = run(reference.adafactor, p, [g], {})
    assert all(x.tobytes() == y.tobytes() for x, y in zip(got, want))
    assert _core.adafactor_coefficients(1)["dtype_eps"]
    assert not _core.adafactor_coefficients(1, eps=(1e-30, 1e-3))["dtype_eps"]


# ---------------------------------------------------------------------------
# torch conformance: 50 steps, every option, float64 and float32

def torch_run(torch, params, grads, hyper, groups=None, foreach=False, sched=None):
    tp = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    spec = [{"params": tp}] if groups is None else [
        {"params": [tp[i] for i in idx], **g} for idx, g in groups]
    opt = torch.optim.Adafactor(spec, foreach=foreach, **hyper)
    s = sched(torch.optim.lr_scheduler, opt) if sched else None
    for gs in grads:
        for x, g in zip(tp, gs):
            x.grad = None if g is None else torch.tensor(g.copy())
        opt.step()
        if s:
            s.step()
    return [x.detach().numpy() for x in tp], opt


def fastopt_run(params, grads, hyper, groups=None, sched=None):
    ps = [p.copy() for p in params]
    spec = [{"params": ps}] if groups is None else [
        {"params": [ps[i] for i in idx], **g} for idx, g in groups]
    opt = fastopt.Adafactor(spec, **hyper)
    s = sched(fastopt.lr_scheduler, opt) if sched else None
    for gs in grads:
        opt.step(list(gs))
        if s:
            s.step()
    return ps, opt


CONF_SHAPES = [(), (7,), (5, 6), (3, 4, 9)]
RTOL = {np.float64: 1e-10, np.float32: 1e-5}


def problem(dtype, steps=50, none_every=0):
    rng = np.random.default_rng(12)
    params = [rng.standard_normal(s).astype(dtype) for s in CONF_SHAPES]
    grads = []
    for t in range(steps):
        gs = [rng.standard_normal(s).astype(dtype) for s in CONF_SHAPES]
        if none_every and t % none_every == 1:
            gs[1] = None
        grads.append(gs)
    return params, grads


def check_torch(torch, got, opt, want, topt, dtype):
    # the conformance harness's measure: rtol, and rtol times the tensor's
    # largest magnitude for an element that cancelled near zero
    for i, (p, q) in enumerate(zip(got, want)):
        assert_close(p, q, RTOL[dtype], f"param {i}")
    sd, tsd = opt.state_dict()["state"], topt.state_dict()["state"]
    assert sorted(sd) == sorted(tsd)
    for i in sd:
        assert sorted(sd[i]) == sorted(tsd[i])
        assert sd[i]["step"] == int(tsd[i]["step"].item())
        for key in sd[i]:
            if key != "step":
                want_state = tsd[i][key].numpy()
                assert sd[i][key].shape == want_state.shape
                assert_close(sd[i][key], want_state, RTOL[dtype], f"{key} of param {i}")


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_torch_conformance(config, dtype):
    torch = pytest.importorskip("torch")
    params, grads = problem(dtype)
    got, opt = fastopt_run(params, grads, CONFIGS[config])
    want, topt = torch_run(torch, params, grads, CONFIGS[config])
    check_torch(torch, got, opt, want, topt, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_torch_conformance_groups_none_grads_schedule_foreach(dtype):
    """Two groups with their own options, a parameter without a gradient
    every fourth step (its step count lags), StepLR, and torch's foreach
    path."""
    torch = pytest.importorskip("torch")
    params, grads = problem(dtype, none_every=4)
    groups = [([0, 1], {}), ([2, 3], {"lr": 0.3, "weight_decay": 0.1, "d": 1.3})]

    def sched(mod, opt):
        return mod.StepLR(opt, step_size=7, gamma=0.5)
    got, opt = fastopt_run(params, grads, {}, groups, sched)
    for foreach in (False, True):
        want, topt = torch_run(torch, params, grads, {}, groups, foreach, sched)
        check_torch(torch, got, opt, want, topt, dtype)
    assert opt.state_dict()["state"][1]["step"] < 50


def test_constructor_defaults_and_state_keys_are_torchs():
    torch = pytest.importorskip("torch")
    import inspect
    ours = inspect.signature(fastopt.Adafactor).parameters
    theirs = inspect.signature(torch.optim.Adafactor).parameters
    for name, par in theirs.items():
        assert name in ours
        assert ours[name].default == par.default, name
        assert ours[name].kind == par.kind, name
    p = [np.zeros((2, 3)), np.zeros(4)]
    opt = fastopt.Adafactor(p)
    opt.step([np.ones((2, 3)), np.ones(4)])
    st = opt.state_dict()["state"]
    assert sorted(st[0]) == ["col_var", "row_var", "step"]
    assert st[0]["row_var"].shape == (2, 1) and st[0]["col_var"].shape == (1, 3)
    assert sorted(st[1]) == ["step", "variance"]
    assert opt.param_groups[0]["eps"] == (None, 1e-3)


# ---------------------------------------------------------------------------
# the class: skip_nonfinite, checkpoints, errors leave everything as it was

def snapshot(opt, params):
    return [p.copy() for p in params], opt.state_dict()


def same(a, b):
    (pa, sa), (pb, sb) = a, b
    assert all(x.tobytes() == y.tobytes() for x, y in zip(pa, pb))
    assert sa["skipped_steps"] == sb["skipped_steps"]
    assert sa["state"].keys() == sb["state"].keys()
    for i in sa["state"]:
        for k, v in sa["state"][i].items():
            w = sb["state"][i][k]
            assert (v == w) if k == "step" else v.tobytes() == w.tobytes()


def test_skip_nonfinite(rng):
    params = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    opt = fastopt.Adafactor(params, skip_nonfinite=True)
    opt.step([rng.standard_normal((3, 4)), rng.standard_normal(5)])
    before = snapshot(opt, params)
    bad = rng.standard_normal(5)
    bad[2] = np.nan
    assert opt.step([rng.standard_normal((3, 4)), bad]) is False
    assert opt.skipped_steps == 1
    after = snapshot(opt, params)
    before[1]["skipped_steps"] = 1
    same(before, after)


def test_checkpoint_resumes_bit_exactly(tmp_path, rng):
    shapes = [(4, 6), (2, 3, 5), (7,), ()]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes]
             for _ in range(10)]
    a = [p.copy() for p in params]
    opt = fastopt.Adafactor(a, weight_decay=0.1)
    for gs in grads:
        opt.step(gs)
    b = [p.copy() for p in params]
    first = fastopt.Adafactor(b, weight_decay=0.1)
    for gs in grads[:5]:
        first.step(gs)
    first.save(tmp_path / "ckpt")
    c = [p.copy() for p in b]
    resumed = fastopt.Adafactor(c, weight_decay=0.1)
    resumed.load(tmp_path / "ckpt")
    for gs in grads[5:]:
        resumed.step(gs)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, c))


def test_load_rejects_wrong_state_shapes(rng):
    params = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    opt = fastopt.Adafactor(params)
    opt.step([rng.standard_normal((3, 4)), rng.standard_normal(5)])
    before = snapshot(opt, params)
    for i, key, value in ((0, "row_var", np.zeros((3, 4))),
                          (0, "variance", np.zeros((3, 4))),
                          (1, "row_var", np.zeros((5, 1)))):
        sd = opt.state_dict()
        sd["state"][i][key] = value
        with pytest.raises(ValueError, match=key):
            opt.load_state_dict(sd)
        same(before, snapshot(opt, params))
    sd = opt.state_dict()
    del sd["state"][0]["col_var"]
    with pytest.raises(ValueError, match="col_var"):
        opt.load_state_dict(sd)


BAD_CLASS_STEPS = [
    ("grad dtype", lambda gs: [gs[0].astype(np.float32), gs[1]], ValueError, "grad of parameter 0"),
    ("grad shape", lambda gs: [gs[0].T.copy(), gs[1]], ValueError, "grad of parameter 0"),
    ("grad type", lambda gs: [gs[0], list(gs[1])], TypeError, "grad of parameter 1"),
    ("grad strided", lambda gs: [gs[0], np.repeat(gs[1], 2)[::2]], ValueError, "grad of parameter 1"),
    ("grad is param", lambda gs: gs[:1] + ["PARAM1"], ValueError, "grad of parameter 1"),
    ("count", lambda gs: gs[:1], ValueError, "gradients"),
]


@pytest.mark.parametrize("case", BAD_CLASS_STEPS, ids=lambda c: c[0])
def test_bad_steps_change_nothing(rng, case):
    _, make, exc, match = case
    params = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    opt = fastopt.Adafactor(params)
    grads = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    opt.step(grads)
    before = snapshot(opt, params)
    bad = [params[1] if isinstance(g, str) else g for g in make(grads)]
    with pytest.raises(exc, match=match):
        opt.step(bad)
    same(before, snapshot(opt, params))


def test_bad_group_hyperparameter_changes_nothing(rng):
    params = [rng.standard_normal((3, 4))]
    opt = fastopt.Adafactor(params)
    opt.step([rng.standard_normal((3, 4))])
    before = snapshot(opt, params)
    opt.param_groups[0]["d"] = 0.5
    with pytest.raises(ValueError, match="d"):
        opt.step([rng.standard_normal((3, 4))])
    opt.param_groups[0]["d"] = 1.0
    same(before, snapshot(opt, params))


# ---------------------------------------------------------------------------
# the functional door: every bad argument named, nothing written

def good_call(dtype=np.float64, shape=(3, 4)):
    rng = np.random.default_rng(5)
    p = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    return [p, g] + new_states(p)


BAD_HYPERS = [
    ({"lr": -1.0}, ValueError, "learning rate"),
    ({"lr": "0.1"}, TypeError, "lr"),
    ({"beta2_decay": 0.5}, ValueError, "beta2_decay"),
    ({"beta2_decay": float("nan")}, ValueError, "beta2_decay"),
    ({"eps": (-1.0, 1e-3)}, ValueError, "epsilon1"),
    ({"eps": (None, -1.0)}, ValueError, "epsilon2"),
    ({"eps": 1e-3}, TypeError, "eps"),
    ({"eps": (None, 1e-3, 1.0)}, TypeError, "eps"),
    ({"d": 0.5}, ValueError, "Clipping threshold d"),
    ({"weight_decay": -0.1}, ValueError, "weight_decay"),
    ({"maximize": "yes"}, TypeError, "maximize"),
    ({"step": 0}, ValueError, "step"),
    ({"step": 1.5}, TypeError, "step"),
]


@pytest.mark.parametrize("case", BAD_HYPERS, ids=lambda c: str(c[0]))
def test_functional_bad_hyperparameters(case):
    bad, exc, match = case
    args = good_call()
    before = [None if a is None else a.copy() for a in args]
    kw = {"step": 1, **bad}
    with pytest.raises(exc, match=match):
        functional.adafactor(*args, **kw)
    for a, b in zip(args, before):
        assert (a is None and b is None) or a.tobytes() == b.tobytes()


def _bad_arrays():
    cases = []

    def case(name, edit, exc, match, shape=(3, 4)):
        cases.append((name, edit, exc, match, shape))
    case("param list", lambda a: [a[0].tolist()] + a[1:], TypeError, "param")
    case("param int", lambda a: [a[0].astype(np.int64)] + a[1:], TypeError, "param")
    case("param readonly", lambda a: [_readonly(a[0])] + a[1:], ValueError, "param")
    case("grad dtype", lambda a: [a[0], a[1].astype(np.float32)] + a[2:], TypeError, "grad")
    case("grad shape", lambda a: [a[0], a[1].reshape(4, 3)] + a[2:], ValueError, "grad")
    case("grad strided", lambda a: [a[0], np.asfortranarray(a[1])] + a[2:], ValueError, "grad")
    case("row_var shape", lambda a: a[:2] + [np.zeros((1, 4)), a[3], None], ValueError, "row_var")
    case("col_var shape", lambda a: a[:3] + [np.zeros((3, 1)), None], ValueError, "col_var")
    case("col_var missing", lambda a: a[:3] + [None, None], ValueError, "col_var")
    case("variance for a matrix", lambda a: a[:4] + [np.zeros((3, 4))], ValueError, "variance")
    case("row_var dtype", lambda a: a[:2] + [a[2].astype(np.float32), a[3], None], TypeError, "row_var")
    case("row_var swapped", lambda a: a[:2] + [a[2].astype(">f8"), a[3], None], ValueError, "row_var")
    case("variance missing", lambda a: a[:2] + [None, None, None], ValueError, "variance", (5,))
    case("row_var for a vector", lambda a: a[:2] + [np.zeros((5, 1)), None, a[4]], ValueError, "row_var", (5,))
    case("variance shape", lambda a: a[:4] + [np.zeros(4)], ValueError, "variance", (5,))
    case("grad is param", lambda a: [a[0], a[0]] + a[2:], ValueError, "grad")
    case("variance is grad", lambda a: a[:4] + [a[1]], ValueError, "variance", (5,))
    return cases


def _readonly(x):
    x = x.copy()
    x.flags.writeable = False
    return x


@pytest.mark.parametrize("case", _bad_arrays(), ids=lambda c: c[0])
def test_functional_bad_arrays(case):
    _, edit, exc, match, shape = case
    args = edit(good_call(shape=shape))
    before = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    with pytest.raises(exc, match=match):
        functional.adafactor(*args, step=1)
    for a, b in zip(args, before):
        if isinstance(a, np.ndarray):
            assert a.tobytes() == b.tobytes()


def test_empty_parameter_is_left_alone():
    for shape in [(0,), (0, 3), (2, 0, 4)]:
        args = good_call(shape=shape)
        functional.adafactor(*args, step=1)
        assert args[0].size == 0


def test_sharded_optimizer_refuses_it():
    pytest.importorskip("mpi4py")
    from fastopt.distributed import ShardedOptimizer
    with pytest.raises(ValueError, match="element-wise rules only"):
        ShardedOptimizer(fastopt.Adafactor, [np.zeros((3, 4))])


# ---------------------------------------------------------------------------
# ema_decay and accumulation_steps: the averages and mean gradients of
# test_ema_accumulation's model around Adafactor's own steps

EMA_SHAPES = [(5, 6), (7,), (2, 3, 4), ()]


def _lerp_model(ema, p, w):
    """torch.lerp(ema, p, w) in its two forms"""
    return ema + w * (p - ema) if w < 0.5 else p - (p - ema) * (1.0 - w)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("decay", [0.9, 0.3])
def test_ema_is_lerp_of_the_plain_steps(rng, dtype, decay):
    params = [rng.standard_normal(s).astype(dtype) for s in EMA_SHAPES]
    plain = [p.copy() for p in params]
    opt = fastopt.Adafactor(params, lr=0.05, ema_decay=decay)
    ref = fastopt.Adafactor(plain, lr=0.05)
    ema = [None] * len(params)
    for t in range(6):
        grads = [rng.standard_normal(s).astype(dtype) for s in EMA_SHAPES]
        if t % 3 == 1:
            grads[1] = None           # parameter 1 skips this step
        opt.step(grads)
        ref.step(grads)
        for i, g in enumerate(grads):
            if g is not None:
                ema[i] = plain[i].copy() if ema[i] is None else _lerp_model(
                    ema[i], plain[i], 1.0 - decay)
    state = opt.state_dict()["state"]
    for i in range(len(params)):
        assert params[i].tobytes() == plain[i].tobytes()
        assert state[i]["ema"].dtype == dtype
        assert state[i]["ema"].tobytes() == ema[i].tobytes(), i
    # evaluating with the averages swaps them in and back, bit for bit
    with opt.ema_weights():
        assert all(p.tobytes() == e.tobytes() for p, e in zip(params, ema))
        with pytest.raises(RuntimeError, match="inside ema_weights"):
            opt.step([np.zeros(s, dtype) for s in EMA_SHAPES])
    assert all(p.tobytes() == q.tobytes() for p, q in zip(params, plain))


@pytest.mark.parametrize("decay", [0.999, 0.3])
def test_ema_in_the_step_on_every_level_and_thread_count(restore_config, rng, decay):
    """The average moves in Adafactor's C call (in its loop for weights
    below 0.5, after it otherwise): the model's lerp of the plain steps, the
    same bits at every level and thread split, for a matrix, a batch of
    matrices and a vector large enough to split."""
    from conftest import AVAILABLE_LEVELS
    shapes = [(300, 70), (2, 40, 30), (5000,)]
    for dtype in DTYPES:
        start = [rng.standard_normal(s).astype(dtype) for s in shapes]
        steps = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(3)]
        plain = [p.copy() for p in start]
        ref = fastopt.Adafactor(plain, lr=0.05)
        ema = [None] * len(shapes)
        for grads in steps:
            ref.step(grads)
            ema = [q.copy() if e is None else _lerp_model(e, q, 1.0 - decay)
                   for e, q in zip(ema, plain)]
        for level, threads in itertools.product(AVAILABLE_LEVELS, (1, 2)):
            fastopt.set_simd_level(level)
            fastopt.set_num_threads(threads)
            _core.set_parallel_threshold(1 if threads > 1 else 1 << 15)
            params = [p.copy() for p in start]
            opt = fastopt.Adafactor(params, lr=0.05, ema_decay=decay)
            for grads in steps:
                opt.step(grads)
            state = opt.state_dict()["state"]
            for i in range(len(shapes)):
                assert params[i].tobytes() == plain[i].tobytes(), (level, threads, i)
                assert state[i]["ema"].tobytes() == ema[i].tobytes(), (level, threads, i)


def test_functional_ema_is_checked_before_anything_is_written(rng):
    p = rng.standard_normal((4, 5))
    g = rng.standard_normal((4, 5))
    row, col = np.zeros((4, 1)), np.zeros((1, 5))
    before = [x.copy() for x in (p, row, col)]
    bad = [(np.zeros((4, 5), np.float32), TypeError, "ema must have dtype"),
           (np.zeros((5, 4)), ValueError, "ema must have shape"),
           (np.zeros((4, 10))[:, ::2], ValueError, "ema must be C-contiguous"),
           (p, ValueError, "shares memory"),
           ([[0.0] * 5] * 4, TypeError, "ema must be a numpy.ndarray")]
    for ema, err, msg in bad:
        with pytest.raises(err, match=msg):
            functional.adafactor(p, g, row, col, None, step=1, ema=ema, ema_weight=0.1)
    e = np.zeros((4, 5))
    for w, msg in ((0.0, "ema_weight"), (1.5, "ema_weight"), (float("nan"), "ema_weight")):
        with pytest.raises(ValueError, match=msg):
            functional.adafactor(p, g, row, col, None, step=1, ema=e, ema_weight=w)
    with pytest.raises(ValueError, match="ema_weight needs ema"):
        functional.adafactor(p, g, row, col, None, step=1, ema_weight=0.1)
    assert all(x.tobytes() == y.tobytes() for x, y in zip((p, row, col), before))
    assert not e.any()


@pytest.mark.parametrize("shape", [(40, 70), (2, 30, 20), (3000,), ()])
def test_functional_mean_gradient_is_made_in_the_step(rng, shape, exec_env):
    """With grad_accum the step runs on (grad_accum + grad) / mean_count
    (grad_accum / mean_count without grad), made in its first pass and left
    in grad_accum: the same bits as the step on the mean made by NumPy."""
    for dtype, with_grad in itertools.product(DTYPES, (True, False)):
        p0 = rng.standard_normal(shape).astype(dtype)
        acc0 = rng.standard_normal(shape).astype(dtype)
        g = rng.standard_normal(shape).astype(dtype) if with_grad else None
        mean = np.asarray((acc0 + g if with_grad else acc0) / dtype(3), dtype=dtype)
        states = _fresh_states(p0)
        want, want_states = p0.copy(), _fresh_states(p0)
        for step in (1, 2):
            p, acc = p0.copy() if step == 1 else p, acc0.copy()
            functional.adafactor(p, g, *states, step=step, grad_accum=acc, mean_count=3)
            functional.adafactor(want, mean.copy(), *want_states, step=step)
            assert acc.tobytes() == mean.tobytes()
            assert p.tobytes() == want.tobytes(), (dtype, with_grad, step)
            for x, y in zip(states, want_states):
                assert x is None or x.tobytes() == y.tobytes()


def _fresh_states(p):
    if p.ndim >= 2:
        return (np.zeros(p.shape[:-1] + (1,), p.dtype),
                np.zeros(p.shape[:-2] + (1,) + p.shape[-1:], p.dtype), None)
    return None, None, np.zeros(p.shape, p.dtype)


def test_functional_grad_accum_is_checked_before_anything_is_written(rng):
    p = rng.standard_normal((4, 5))
    g = rng.standard_normal((4, 5))
    row, col = np.zeros((4, 1)), np.zeros((1, 5))
    acc = rng.standard_normal((4, 5))
    before = [x.copy() for x in (p, row, col, acc)]
    bad = [(dict(grad_accum=acc), ValueError, "grad_accum needs mean_count"),
           (dict(mean_count=2), ValueError, "mean_count needs grad_accum"),
           (dict(grad_accum=acc, mean_count=0.5), ValueError, "mean_count"),
           (dict(grad_accum=acc, mean_count=float("nan")), ValueError, "mean_count"),
           (dict(grad_accum=acc, mean_count=True), TypeError, "mean_count"),
           (dict(grad_accum=acc.astype(np.float32), mean_count=2), TypeError,
            "grad_accum must have dtype"),
           (dict(grad_accum=np.zeros((5, 4)), mean_count=2), ValueError,
            "grad_accum must have shape"),
           (dict(grad_accum=g, mean_count=2), ValueError, "shares memory")]
    for kw, err, msg in bad:
        with pytest.raises(err, match=msg):
            functional.adafactor(p, g, row, col, None, step=1, **kw)
    with pytest.raises(TypeError, match="grad must be a numpy.ndarray"):
        functional.adafactor(p, None, row, col, None, step=1)
    assert all(x.tobytes() == y.tobytes() for x, y in zip((p, row, col, acc), before))


def _mean(window, i, k, dtype):
    """((0 + g_1) + ... + g_k) / k over the gradients parameter i got"""
    got = [gs[i] for gs in window if gs[i] is not None]
    if not got:
        return None
    acc = np.zeros_like(got[0])
    for g in got:
        acc = acc + g
    return np.array(acc / dtype(k), dtype=dtype)   # 0-d stays an array


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_accumulation_steps_on_the_mean(rng, dtype, exec_env):
    k = 3
    params = [rng.standard_normal(s).astype(dtype) for s in EMA_SHAPES]
    plain = [p.copy() for p in params]
    opt = fastopt.Adafactor(params, accumulation_steps=k, ema_decay=0.8)
    ref = fastopt.Adafactor(plain, ema_decay=0.8)
    window = []
    for t in range(12):
        grads = [rng.standard_normal(s).astype(dtype) for s in EMA_SHAPES]
        if t % 4 == 0:
            grads[0] = None
        if t in (6, 7, 8):
            grads[2] = None           # parameter 2 gets nothing this window
        if t in (9, 10):
            grads[1] = None           # parameter 1's first gradient: the last call
        window.append(grads)
        stepped = opt.step(grads)
        assert stepped is (len(window) == k)
        if stepped:
            ref.step([_mean(window, i, k, dtype) for i in range(len(params))])
            window = []
        for p, q in zip(params, plain):
            assert p.tobytes() == q.tobytes()
    mine, theirs = opt.state_dict(), ref.state_dict()
    assert mine["accumulation"] == {"steps": k, "count": 0, "nonfinite": False}
    for i in range(len(params)):
        for key, value in theirs["state"][i].items():
            got = mine["state"][i][key]
            assert got == value if key == "step" else got.tobytes() == value.tobytes()
        assert "grad_accum" not in mine["state"][i]


def test_accumulation_with_a_nonfinite_micro_batch_skips_the_window(rng):
    params = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    opt = fastopt.Adafactor(params, accumulation_steps=2, skip_nonfinite=True)
    before = [p.copy() for p in params]
    bad = rng.standard_normal(5)
    bad[1] = np.inf
    assert opt.step([rng.standard_normal((3, 4)), bad]) is False
    assert opt.state_dict()["accumulation"]["nonfinite"] is True
    assert opt.step([rng.standard_normal((3, 4)), rng.standard_normal(5)]) is False
    assert opt.skipped_steps == 1
    assert all(p.tobytes() == q.tobytes() for p, q in zip(params, before))
    sd = opt.state_dict()
    assert sd["accumulation"] == {"steps": 2, "count": 0, "nonfinite": False}
    assert sd["state"] == {}
    # the next window steps
    opt.step([rng.standard_normal((3, 4)), rng.standard_normal(5)])
    assert opt.step([rng.standard_normal((3, 4)), rng.standard_normal(5)]) is True
    assert not np.array_equal(params[0], before[0])


def test_checkpoint_inside_a_window_resumes_bit_exactly(tmp_path, rng):
    shapes = [(4, 6), (7,)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes]
             for _ in range(11)]
    kw = dict(accumulation_steps=3, ema_decay=0.5)
    a = [p.copy() for p in params]
    whole = fastopt.Adafactor(a, **kw)
    for gs in grads:
        whole.step(gs)
    b = [p.copy() for p in params]
    first = fastopt.Adafactor(b, **kw)
    for gs in grads[:7]:              # two windows and one call of the third
        first.step(gs)
    sd = first.state_dict()
    assert sd["accumulation"]["count"] == 1 and "grad_accum" in sd["state"][0]
    first.save(tmp_path / "ckpt")
    c = [p.copy() for p in b]
    resumed = fastopt.Adafactor(c, **kw)
    resumed.load(tmp_path / "ckpt")
    for gs in grads[7:]:
        resumed.step(gs)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, c))
    for i in range(2):
        assert (whole.state_dict()["state"][i]["ema"].tobytes()
                == resumed.state_dict()["state"][i]["ema"].tobytes())
    # a state_dict with an average does not load into an optimizer without
    plain = fastopt.Adafactor([p.copy() for p in params], accumulation_steps=3)
    with pytest.raises(ValueError, match="ema_decay=None"):
        plain.load_state_dict(sd)
    with pytest.raises(ValueError, match="ema_decay"):
        fastopt.Adafactor([p.copy() for p in params], ema_decay=1.5)
