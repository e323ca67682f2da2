"""Muon: its two element-wise passes against the reference, bit for bit;
its step against a float64 transcription of torch.optim.Muon's and against
torch.optim.Muon itself (bfloat16 Newton-Schulz).

torch 2.13, torch/optim/_muon.py, _single_tensor_muon, per 2-D parameter:
``buf.lerp_(g, 1 - momentum)``; ``u = g.lerp(buf, momentum)`` with Nesterov,
else ``buf``; ``u = NS(u)``: X = u (transposed when rows > cols) in
bfloat16, X /= max(||X||_F, eps), ns_steps times A = X X^T,
B = addmm(A, A, A, beta=b, alpha=c), X = addmm(X, B, X, beta=a);
``param.mul_(1 - lr * wd)``; ``param.add_(u, alpha=-lr * ratio)`` with ratio
sqrt(max(1, rows / cols)) (None, "original") or 0.2 sqrt(max(rows, cols))
("match_rms_adamw").  Defaults lr=1e-3, weight_decay=0.1, momentum=0.95,
nesterov=True, ns_coefficients=(3.4445, -4.775, 2.0315), eps=1e-7,
ns_steps=5, adjust_lr_fn=None.
"""
import copy
import inspect
import math

import numpy as np
import pytest

import fastopt
from fastopt import functional as F
from fastopt import matrix
from fastopt import reference as R
from fastopt.rules import RULES

DTYPES = [np.float32, np.float64]
# rows > cols, rows < cols, square, and one above the parallel threshold's
# default at 2 threads (the fixture lowers the threshold to 1 anyway)
SHAPES = [(7, 3), (3, 7), (16, 16), (40, 24)]
CONFIGS = [
    {},
    {"nesterov": False, "adjust_lr_fn": "match_rms_adamw"},
    # the other branch of both of torch's lerps (|weight| < 0.5 swapped)
    {"momentum": 0.3, "weight_decay": 0.0, "adjust_lr_fn": "original"},
    {"momentum": 0.3, "nesterov": False, "maximize": True, "lr": 0.02},
    {"ns_steps": 0, "eps": 1e-3, "ns_coefficients": (2.0, -1.5, 0.5)},
]
STEPS = 4


def _data(rng, shape, dtype, steps):
    p = rng.standard_normal(shape).astype(dtype)
    grads = [rng.standard_normal(shape).astype(dtype) for _ in range(steps)]
    return p, grads


# ---------------------------------------------------------------------------
# The table entry: torch's names and defaults

def test_constructor_is_torchs():
    sig = inspect.signature(fastopt.Muon)
    names = ["params", "lr", "weight_decay", "momentum", "nesterov",
             "ns_coefficients", "eps", "ns_steps", "adjust_lr_fn"]
    assert list(sig.parameters)[:len(names)] == names
    d = {k: v.default for k, v in sig.parameters.items()}
    assert (d["lr"], d["weight_decay"], d["momentum"], d["nesterov"]) == (1e-3, 0.1, 0.95, True)
    assert d["ns_coefficients"] == (3.4445, -4.775, 2.0315)
    assert (d["eps"], d["ns_steps"], d["adjust_lr_fn"]) == (1e-7, 5, None)
    assert RULES["muon"].state_keys == ("momentum_buffer",)


def test_constructor_matches_installed_torch():
    torch = pytest.importorskip("torch")
    theirs = inspect.signature(torch.optim.Muon).parameters
    ours = inspect.signature(fastopt.Muon).parameters
    for name, p in theirs.items():
        assert name in ours
        if name != "params":
            assert ours[name].default == p.default, name


# ---------------------------------------------------------------------------
# The two element-wise passes: kernel = reference, bit for bit, on every
# level and thread count (the Newton-Schulz step between them is the same
# NumPy function at both doors, so the passes decide every bit)

@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_functional_equals_reference_bit_for_bit(exec_env, rng, config, dtype):
    for shape in SHAPES:
        p, grads = _data(rng, shape, dtype, STEPS)
        kp, rp = p.copy(), p.copy()
        kb, rb = np.zeros_like(p), np.zeros_like(p)
        for g in grads:
            F.muon(kp, g, kb, **config)
            R.muon(rp, g, rb, **config)
            assert kp.tobytes() == rp.tobytes(), shape
            assert kb.tobytes() == rb.tobytes(), shape
        assert not np.array_equal(kp, p)


def test_many_and_class_equal_reference_bit_for_bit(exec_env, rng):
    """The multi-tensor call and the class (two groups, two dtypes, a None
    gradient at one step) against one reference call per tensor."""
    from fastopt import _core
    hp = {"lr": 0.01, "momentum": 0.9, "adjust_lr_fn": "match_rms_adamw"}
    shapes = [(5, 9), (9, 5), (6, 6)]
    ps = [rng.standard_normal(s) for s in shapes]
    many_p, many_b = [p.copy() for p in ps], [np.zeros_like(p) for p in ps]
    ref_p, ref_b = [p.copy() for p in ps], [np.zeros_like(p) for p in ps]
    cls_p = [p.copy() for p in ps[:2]] + [ps[2].astype(np.float32)]
    cls_ref = [p.copy() for p in cls_p]
    cls_ref_b = [np.zeros_like(p) for p in cls_p]
    opt = fastopt.Muon([{"params": cls_p[:1], "weight_decay": 0.0},
                        {"params": cls_p[1:]}], **hp)
    for t in range(STEPS):
        gs = [rng.standard_normal(s) for s in shapes]
        _core.step_many("muon", many_p, gs, [many_b], **hp)
        for p, g, b in zip(ref_p, gs, ref_b):
            R.muon(p, g, b, **hp)
        cgs = [gs[0], None if t == 1 else gs[1], gs[2].astype(np.float32)]
        opt.step(cgs)
        for k, (p, g, b) in enumerate(zip(cls_ref, cgs, cls_ref_b)):
            if g is not None:
                R.muon(p, g, b, **{**hp, **({"weight_decay": 0.0} if k == 0 else {})})
    assert all(a.tobytes() == b.tobytes() for a, b in zip(many_p, ref_p))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(many_b, ref_b))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(cls_p, cls_ref))
    state = opt.state_dict()["state"]
    assert [state[i]["step"] for i in range(3)] == [STEPS, STEPS - 1, STEPS]
    for i in range(3):
        assert set(state[i]) == {"step", "momentum_buffer"}
        assert state[i]["momentum_buffer"].tobytes() == cls_ref_b[i].tobytes()


def test_momentum_is_an_ema_not_torchs_docstring_sum():
    """torch's docstring says B = mu B + g; its code (and fastopt) lerps:
    after one step from zero the buffer is (1 - mu) g, not g."""
    g = np.arange(1.0, 7.0).reshape(2, 3)
    p, b = np.zeros((2, 3)), np.zeros((2, 3))
    F.muon(p, g, b, momentum=0.75)
    np.testing.assert_array_equal(b, 0.25 * g)
    F.muon(p, g, b, momentum=0.75)
    np.testing.assert_array_equal(b, 0.25 * g + 0.25 * (g - 0.25 * g))


# ---------------------------------------------------------------------------
# Against torch's algorithm in float64

def _torch_step_float64(torch, p, g, buf, lr, weight_decay, momentum, nesterov,
                        ns_coefficients, eps, ns_steps, adjust_lr_fn):
    """torch 2.13's _single_tensor_muon and _zeropower_via_newtonschulz on
    float64 tensors, the bfloat16 cast left out: torch's lerp, norm, clamp
    and addmm."""
    buf.lerp_(g, 1 - momentum)
    update = g.lerp(buf, momentum) if nesterov else buf
    a, b, c = ns_coefficients
    x = update.clone()
    if g.size(0) > g.size(1):
        x = x.T
    x = x.div(x.norm().clamp(min=eps))
    for _ in range(ns_steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    if g.size(0) > g.size(1):
        x = x.T
    A, B = p.shape
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        ratio = math.sqrt(max(1, A / B))
    else:
        ratio = 0.2 * math.sqrt(max(A, B))
    p.mul_(1 - lr * weight_decay)
    p.add_(x, alpha=-lr * ratio)


@pytest.mark.parametrize("config", [c for c in CONFIGS if "maximize" not in c], ids=str)
@pytest.mark.parametrize("shape", [(12, 5), (5, 12)], ids=str)
def test_float64_matches_transcription_of_torch(config, shape):
    """rtol 1e-10, not bit for bit: torch's addmm hands beta and alpha to
    its BLAS (one fused b A + c A A per product) and its norm and BLAS sum
    in other orders than NumPy's matmul and fastopt's sum of squares; the
    difference is rounding, amplified at most by the iteration's slope."""
    torch = pytest.importorskip("torch")
    hp = {h.name: h.default for h in RULES["muon"].hypers if h.name != "maximize"}
    hp.update(config)
    rng = np.random.default_rng(12)
    p, grads = _data(rng, shape, np.float64, 30)
    ours = p.copy()
    opt = fastopt.Muon([ours], **hp)
    tp, tb = torch.tensor(p), torch.zeros(shape, dtype=torch.float64)
    for g in grads:
        opt.step([g])
        _torch_step_float64(torch, tp, torch.tensor(g), tb, **hp)
    np.testing.assert_allclose(ours, tp.numpy(), rtol=1e-10, atol=0)
    np.testing.assert_allclose(opt.state_dict()["state"][0]["momentum_buffer"],
                               tb.numpy(), rtol=1e-10, atol=0)


# ---------------------------------------------------------------------------
# Against torch.optim.Muon itself (bfloat16 Newton-Schulz)

# torch rounds the update to bfloat16 (8 significant bits, a relative error
# of up to 2^-9 per rounding) before Newton-Schulz and after each of its 15
# products; fastopt keeps float32/float64.  The orthogonalised updates then
# differ by a few bfloat16 roundings of their largest entries: bounded here
# by 2^-4 = 32 bfloat16 unit roundoffs of max|update| per step (measured
# here: at most 0.034, about 17 of them), where a float32 Newton-Schulz
# against float64 differs by about 1e-6.  Everything else (momentum, decay, the lr ratio) is
# the same arithmetic.
BF16_BOUND = 2.0 ** -4


@pytest.mark.parametrize("config", [c for c in CONFIGS if "maximize" not in c], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(24, 10), (10, 24)], ids=str)
def test_matches_torch_muon_within_bfloat16(config, dtype, shape):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    p, grads = _data(rng, shape, dtype, 10)
    ours = p.copy()
    opt = fastopt.Muon([ours], **config)
    tp = torch.tensor(p.copy())
    topt = torch.optim.Muon([tp], **config)
    worst = 0.0
    for g in grads:
        # one step of each from the same parameter and buffer
        before = ours.copy()
        tp.data.copy_(torch.tensor(before))
        topt.state[tp]["momentum_buffer"] = torch.tensor(
            opt.state_dict()["state"][0]["momentum_buffer"].copy()) \
            if opt.state_dict()["state"] else torch.zeros(shape, dtype=tp.dtype)
        opt.step([g])
        tp.grad = torch.tensor(g)
        topt.step()
        ours_step, torch_step = ours - before, tp.numpy() - before
        # the decay part is the same arithmetic: compare what Newton-Schulz made
        scale = np.abs(torch_step).max()
        worst = max(worst, np.abs(ours_step - torch_step).max() / scale)
        # the buffers: the same lerps, up to torch rounding its weights to
        # float32 before 1 - w (a few ulps of the buffer's largest entries)
        buf = topt.state[tp]["momentum_buffer"].numpy()
        np.testing.assert_allclose(opt.state_dict()["state"][0]["momentum_buffer"], buf,
                                   rtol=0, atol=8 * np.finfo(dtype).eps * np.abs(buf).max())
    assert worst <= BF16_BOUND, worst
    assert worst > 0     # bfloat16 does differ: the comparison compares


# ---------------------------------------------------------------------------
# Matrices only, shapes, the lr adjustment

@pytest.mark.parametrize("bad", [np.ones(3), np.ones((2, 2, 2)), np.ones(())],
                         ids=lambda a: f"ndim{a.ndim}")
def test_refuses_parameters_that_are_not_matrices(bad):
    good = np.ones((3, 2))
    with pytest.raises(ValueError, match=r"Muon takes 2-D parameters.*another optimizer, such as AdamW"):
        fastopt.Muon([good, bad])
    with pytest.raises(ValueError, match=r"parameter 'bias' has shape"):
        fastopt.Muon({"w": good, "bias": bad})
    before = bad.copy()
    with pytest.raises(ValueError, match=r"Muon takes 2-D parameters"):
        F.muon(bad, np.ones_like(bad), np.zeros_like(bad))
    np.testing.assert_array_equal(bad, before)


@pytest.mark.parametrize("fn, shape, ratio", [
    (None, (8, 2), 2.0), ("original", (8, 2), 2.0), (None, (2, 8), 1.0),
    ("match_rms_adamw", (8, 2), 0.2 * math.sqrt(8)),
    ("match_rms_adamw", (2, 8), 0.2 * math.sqrt(8)),
    ("original", (6, 4), math.sqrt(1.5))])
def test_adjust_lr_fn_scales_the_step(fn, shape, ratio):
    """With momentum 0 and no decay the step is -lr * ratio * NS(g)."""
    assert matrix.muon_lr_ratio(fn, *shape) == ratio
    rng = np.random.default_rng(0)
    g = rng.standard_normal(shape)
    p, b = np.zeros(shape), np.zeros(shape)
    F.muon(p, g, b, lr=0.5, momentum=0.0, weight_decay=0.0, nesterov=False,
           adjust_lr_fn=fn)
    o = matrix.newton_schulz(g, (3.4445, -4.775, 2.0315), 5, 1e-7)
    np.testing.assert_array_equal(p, -(0.5 * ratio) * o)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_newton_schulz_orthogonalises_tall_and_wide(dtype):
    """Tall and wide matrices give transposed results (the Gram matrix is
    always the short side's), in the input's dtype, with singular values
    pulled into about [0.7, 1.2] (Jordan's quintic does not converge to 1),
    and the input unchanged."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((30, 12)).astype(dtype)
    kept = x.copy()
    tall = matrix.newton_schulz(x, (3.4445, -4.775, 2.0315), 5, 1e-7)
    wide = matrix.newton_schulz(np.ascontiguousarray(x.T), (3.4445, -4.775, 2.0315), 5, 1e-7)
    assert tall.dtype == dtype and tall.shape == (30, 12) and tall.flags.c_contiguous
    np.testing.assert_array_equal(x, kept)
    np.testing.assert_allclose(tall, wide.T, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-6 if dtype == np.float32 else 1e-14)
    s = np.linalg.svd(tall.astype(np.float64), compute_uv=False)
    assert 0.5 < s.min() and s.max() < 1.5, s
    assert np.linalg.svd(x.astype(np.float64), compute_uv=False).max() > 3


def test_zero_gradient_and_empty_matrix():
    """A zero update is divided by eps, not by zero; a matrix without
    elements steps without error."""
    p, b = np.ones((3, 4)), np.zeros((3, 4))
    F.muon(p, np.zeros((3, 4)), b, weight_decay=0.0)
    np.testing.assert_array_equal(p, np.ones((3, 4)))
    e = np.zeros((0, 4))
    F.muon(e, e.copy(), e.copy())
    fastopt.Muon([np.zeros((4, 0))]).step([np.zeros((4, 0))])


# ---------------------------------------------------------------------------
# The class: checkpoints, schedules, skipped steps, EMA and accumulation

def test_state_dict_resumes_bit_for_bit(tmp_path):
    rng = np.random.default_rng(7)
    ps = [rng.standard_normal((6, 4)), rng.standard_normal((4, 6)).astype(np.float32)]
    grads = [[rng.standard_normal(p.shape).astype(p.dtype) for p in ps] for _ in range(6)]
    ours = [p.copy() for p in ps]
    opt = fastopt.Muon(ours, lr=0.02, adjust_lr_fn="match_rms_adamw")
    for g in grads[:3]:
        opt.step(g)
    sd = copy.deepcopy(opt.state_dict())
    assert set(sd["state"][0]) == {"step", "momentum_buffer"}
    assert sd["param_groups"][0]["adjust_lr_fn"] == "match_rms_adamw"
    opt.save(tmp_path / "muon.npz")
    resumed = [p.copy() for p in ours]
    fresh = fastopt.Muon(resumed)
    fresh.load(tmp_path / "muon.npz")
    assert fresh.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"
    for g in grads[3:]:
        opt.step(g)
        fresh.step(g)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(ours, resumed))


def test_lr_scheduler_changes_lr_and_decay():
    rng = np.random.default_rng(8)
    p = rng.standard_normal((5, 5))
    grads = [rng.standard_normal((5, 5)) for _ in range(4)]
    ours, ref, b = p.copy(), p.copy(), np.zeros((5, 5))
    opt = fastopt.Muon([ours], lr=0.1)
    sched = fastopt.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for t, g in enumerate(grads):
        lr = 0.1 * 0.5 ** (t // 2)
        opt.step([g])
        R.muon(ref, g, b, lr=lr)
        sched.step()
    assert ours.tobytes() == ref.tobytes()


def test_skip_nonfinite_and_accumulation():
    rng = np.random.default_rng(9)
    p = rng.standard_normal((4, 3))
    g1, g2 = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    ours = p.copy()
    opt = fastopt.Muon([ours], skip_nonfinite=True)
    assert opt.step([np.full((4, 3), np.nan)]) is False
    assert ours.tobytes() == p.tobytes() and opt.state_dict()["state"] == {}
    acc = p.copy()
    opt2 = fastopt.Muon([acc], accumulation_steps=2, ema_decay=0.5)
    assert opt2.step([g1]) is False
    assert opt2.step([g2]) is True
    ref, b = p.copy(), np.zeros((4, 3))
    R.muon(ref, (g1 + g2) / 2, b)
    assert acc.tobytes() == ref.tobytes()
    with opt2.ema_weights():
        assert acc.tobytes() == ref.tobytes()   # the first average is a copy


def test_sharded_optimizer_refuses_muon():
    distributed = pytest.importorskip("fastopt.distributed")
    with pytest.raises(ValueError, match=r"Muon.*matrix step"):
        distributed.ShardedOptimizer(fastopt.Muon, [np.ones((4, 4))], comm=None)


def test_bfloat16_states_are_refused():
    """bfloat16 states are decoded and encoded inside one fused pass; Muon's
    step is two passes around a matrix step."""
    with pytest.raises(ValueError, match=r"state_dtype='bfloat16' is not available for Muon"):
        fastopt.Muon([np.ones((3, 2), np.float32)], state_dtype="bfloat16")
