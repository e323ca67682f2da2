"""state_dtype="bfloat16": states kept as bfloat16 bits with stochastic
rounding, against fastopt.reference.bf16_step bit for bit on every level
and thread count; checkpoints, conversions, bad input, and accuracy on a
noisy quadratic against a float64 run."""
import copy
import functools
import inspect

import numpy as np
import pytest

import fastopt
from fastopt import _core, reference
from fastopt.rules import RULES

# the classes whose rule has array states and one pass (every class of such
# a rule: AdamW beside Adam); a rule with a matrix step refuses bfloat16
# states (tests/test_muon.py)
CLASSES = [(name, rule) for rule in RULES.values()
           if rule.states and not rule.reductions and not rule.matrix
           for name, *_ in rule.classes()]
TWO_PASS = [rule.cls for rule in RULES.values() if rule.reductions]


def _hypers(rule, name):
    """The class's defaults with every optional state switched on and
    weight decay where the rule has it."""
    cls = getattr(fastopt, name)
    h = {k: v for k, v in cls([np.zeros(1, np.float32)]).defaults.items()}
    for s in rule.states:
        if s.when is not None:
            h[s.when] = True if rule.hyper(s.when).check == "flag" else 0.5
    if "weight_decay" in h and not h["weight_decay"]:
        h["weight_decay"] = 0.01
    if "lr" in h and name in ("SGDScheduleFree",):
        h["lr"] = 0.1
    return h


class Model:
    """Per parameter: bfloat16 states at their start values, scalar states,
    a step count; a step is reference.bf16_step under the parameter's key.
    Subclasses for other stored forms override ``stored`` and ``STEP``."""

    STEP = staticmethod(reference.bf16_step)

    def __init__(self, rule, params, h, seed):
        self.rule, self.params, self.h, self.seed = rule, params, h, seed
        self.steps = [0] * len(params)
        self.states = [None] * len(params)
        self.kernel = {k.name: h[k.name] for k in rule.kernel_hypers}

    def stored(self, spec, p, value):
        """State ``spec`` of parameter ``p`` at ``value``, in stored form."""
        return np.full(p.shape, reference.bf16_nearest(value), np.uint16)

    @staticmethod
    def check_state(entry, key, bits, i):
        """``entry`` (a state_dict entry) holds state ``key`` as ``bits``."""
        got = entry[key]
        assert got.dtype == np.uint16
        assert got.tobytes() == bits.tobytes(), f"{key} of parameter {i}"

    def _start(self, p):
        out = []
        for s in self.rule.states:
            if s.when is not None and not self.h[s.when]:
                out.append(None)
                continue
            v = float(self.h[s.initial]) if isinstance(s.initial, str) else float(s.initial)
            out.append(self.stored(s, p, v))
        scal = [np.array([float(self.h[s.initial]) if isinstance(s.initial, str)
                          else float(s.initial)]) for s in self.rule.scalar_states]
        return out, scal

    def step(self, grads):
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if g is None:
                continue
            if self.states[i] is None:
                self.states[i] = self._start(p)
            self.steps[i] += 1
            arrays, scal = self.states[i]
            key = reference.lowp_tensor_key(self.seed, i, self.steps[i])
            step = {} if self.rule.step is None else {"step": self.steps[i]}
            self.STEP(self.rule.name, key, p, g, *arrays, *scal, **step, **self.kernel)


def _check(opt, params, model):
    for i, (p, q) in enumerate(zip(params, model.params)):
        assert p.tobytes() == q.tobytes(), f"parameter {i}"
    state = opt.state_dict()["state"]
    for i in range(len(params)):
        if not model.steps[i]:
            continue
        arrays, _ = model.states[i]
        for s, stored in zip(model.rule.states, arrays):
            if stored is not None:
                model.check_state(state[i], s.state_key, stored, i)


def _problem(rng, sizes=(1, 1500, 4097)):
    return [rng.standard_normal(n).astype(np.float32) for n in sizes]


def run_against_model(name, rule, rng, state_dtype, model_cls, sizes, steps, seed):
    """``steps`` steps of class ``name`` with ``state_dtype`` states and of
    its NumPy model from the same parameters (a None gradient for the
    second tensor at step 3); returns (optimizer, parameters, model)."""
    h = _hypers(rule, name)
    params = _problem(rng, sizes)
    ref = [p.copy() for p in params]
    cls = getattr(fastopt, name)
    ctor = {k: v for k, v in h.items() if k in inspect.signature(cls).parameters}
    opt = cls(params, **ctor, state_dtype=state_dtype, seed=seed)
    model = model_cls(rule, ref, h, seed)
    for t in range(steps):
        grads = [rng.standard_normal(p.size).astype(np.float32) for p in params]
        if t == 2:
            grads[1] = None
        opt.step(grads)
        model.step([None if g is None else g.copy() for g in grads])
    return opt, params, model


@pytest.mark.parametrize("name,rule", CLASSES, ids=[c for c, _ in CLASSES])
def test_class_is_the_reference_bit_for_bit(name, rule, exec_env, prefetching, rng):
    """Every class with array states, every level and 1 and 2 threads
    (thread splits and chunk edges inside the tensors), with and without
    prefetching, a None gradient."""
    _check(*run_against_model(name, rule, rng, "bfloat16", Model,
                              (1, 1500, 4097), 5, 11))


LONG = [(name, rule) for name, rule in CLASSES if name in ("AdamW", "SGD", "AdEMAMix")]


@pytest.mark.parametrize("name,rule", LONG, ids=[c for c, _ in LONG])
def test_long_tensors_are_the_reference_bit_for_bit(name, rule, exec_env, prefetching, rng):
    """A tensor of several of the step's longer bfloat16 chunks (2^16
    elements) and a part of one, split between threads: every chunk's
    random counters and element indices as in the reference."""
    _check(*run_against_model(name, rule, rng, "bfloat16", Model,
                              (2 * 2 ** 16 + 4099, 300), 3, 5))


def test_keys_are_the_references():
    for seed, index, step in [(0, 0, 1), (2 ** 64 - 1, 3, 2 ** 62), (12345, 2 ** 40, 7)]:
        key = _core.lowp_tensor_key(seed, index, step)
        assert key == reference.lowp_tensor_key(seed, index, step)
        for slot in range(4):
            assert _core.lowp_slot_key(key, slot) == reference.lowp_slot_key(key, slot)


def _special():
    bits = np.array([0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x7F7FFFFF,
                     0xFF7FFFFF, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000,
                     0x7F800001, 0xFF80FFFF, 0x3F800000, 0x3F80FFFF, 0x3F808000,
                     0x00010000, 0x0000FFFF,
                     # NaNs whose rounding would carry into the sign
                     0x7FFFFFFF, 0xFFFFFFFF, 0x7FFF8001], np.uint32)
    return bits.view(np.float32)


@pytest.mark.parametrize("start", [0, 5, 2 ** 32 - 3])
def test_codec_is_the_reference(simd_level, rng, start):
    x = np.concatenate([_special(), rng.standard_normal(1000).astype(np.float32),
                        rng.standard_normal(37).astype(np.float32) * 1e-39])
    for key in (0, 0xFFFFFFFF, 0x9E3779B9):
        for low in (False, True):
            got = _core.bf16_round(x, key, start, low)
            assert got.tobytes() == reference.bf16_round(x, key, start, low).tobytes()
    bits = rng.integers(0, 2 ** 16, 999).astype(np.uint16)
    assert _core.bf16_decode(bits).tobytes() == reference.bf16_decode(bits).tobytes()


def test_rounding_keeps_what_it_must():
    x = _special()
    for key in range(5):
        out = reference.bf16_decode(reference.bf16_round(x, key))
        exact = (x.view(np.uint32) & 0xFFFF) == 0
        assert np.array_equal(out[exact], x[exact], equal_nan=True)
        assert np.array_equal(np.isnan(out), np.isnan(x))
        # only values above the largest bfloat16 (3.3895e38) may become inf
        assert np.array_equal(np.isinf(out) & ~np.isinf(x),
                              (np.abs(x) > 3.3896e38) & ~np.isinf(x))
        # each result is one of the two bfloat16 neighbours
        finite = np.isfinite(x)
        lo = reference.bf16_decode(x.view(np.uint32)[finite] >> 16)
        assert np.all((out[finite] == lo) | (np.abs(out[finite]) > np.abs(lo)))


def test_rounding_is_unbiased():
    """1 + 2**-10 lies a quarter of the gap above 1 (gap 2**-7 ... an
    eighth): it rounds up with probability 1/8, so the mean is x."""
    n = 200_000
    x = np.full(n, 1 + 2 ** -10, np.float32)
    out = reference.bf16_decode(reference.bf16_round(x, 77))
    up = np.mean(out > 1)
    assert abs(up - 0.125) < 4 * np.sqrt(0.125 * 0.875 / n)
    assert abs(out.astype(np.float64).mean() - (1 + 2 ** -10)) < 1e-5
    # other keys and offsets draw other bits
    assert not np.array_equal(reference.bf16_round(x, 78), reference.bf16_round(x, 77))
    # so does the other half of the hash (odd slots), as unbiased
    low = reference.bf16_decode(reference.bf16_round(x, 77, low=True))
    assert not np.array_equal(low, out)
    assert abs(np.mean(low > 1) - 0.125) < 4 * np.sqrt(0.125 * 0.875 / n)
    # and the two halves are not correlated: 1/64 of elements round up in both
    both = np.mean((low > 1) & (out > 1))
    assert abs(both - 0.125 ** 2) < 4 * np.sqrt(0.125 ** 2 * (1 - 0.125 ** 2) / n)


def test_each_elements_bits_are_drawn_afresh_every_step():
    """The rounding bits of one element over the steps of a run (the slot
    keys the optimizer draws): uniform, not correlated from one step to the
    next, and those of the two states of a slot pair not correlated with
    each other.  A hash whose counter advanced with the step alone, or a
    key reused between steps, fails."""
    steps = 4000
    for seed, index, element in [(0, 0, 0), (7, 3, 1), (2 ** 63, 1, 123456)]:
        keys = np.array([reference.lowp_slot_key(reference.lowp_tensor_key(seed, index, t), 0)
                         for t in range(1, steps + 1)], np.uint64)
        h = reference.hash32(((keys + element) & 0xFFFFFFFF).astype(np.uint32))
        for r in (h >> np.uint32(16), h & np.uint32(0xFFFF)):
            u = (r.astype(np.float64) + 0.5) / 65536
            assert abs(u.mean() - 0.5) < 4 * np.sqrt(1 / 12 / steps)
            lag = np.corrcoef(u[:-1], u[1:])[0, 1]
            assert abs(lag) < 4 / np.sqrt(steps)
        hi = (h >> np.uint32(16)).astype(np.float64)
        lo = (h & np.uint32(0xFFFF)).astype(np.float64)
        assert abs(np.corrcoef(hi, lo)[0, 1]) < 4 / np.sqrt(steps)


def test_seed_changes_the_bits_and_the_same_seed_repeats_them(rng):
    def run(seed):
        p = np.linspace(-1, 1, 3001, dtype=np.float32)
        opt = fastopt.Adam([p], lr=1e-2, state_dtype="bfloat16", seed=seed)
        for k in range(3):
            opt.step([np.cos(p * (k + 1)).astype(np.float32)])
        return p.tobytes(), opt.state_dict()["state"][0]["exp_avg_sq"].tobytes()
    assert run(1) == run(1)
    assert run(1)[1] != run(2)[1]


def test_accumulation_and_ema_with_bfloat16_states(prefetching, rng):
    """accumulation_steps=2 on (g1, g2) is a step on (g1 + g2) / 2, and the
    EMA follows the parameter, with the same bfloat16 bits (with and
    without prefetching: a mean gradient is not prefetched)."""
    p, q = (np.full(2050, 0.5, np.float32) for _ in range(2))
    a = fastopt.AdamW([p], lr=1e-2, state_dtype="bfloat16", accumulation_steps=2,
                      ema_decay=0.9)
    b = fastopt.AdamW([q], lr=1e-2, state_dtype="bfloat16", ema_decay=0.9)
    for _ in range(3):
        g1, g2 = (rng.standard_normal(2050).astype(np.float32) for _ in range(2))
        a.step([g1])
        a.step([g2])
        b.step([(g1 + g2) / np.float32(2)])
    assert p.tobytes() == q.tobytes()
    sa, sb = a.state_dict()["state"][0], b.state_dict()["state"][0]
    for key in ("exp_avg", "exp_avg_sq", "ema"):
        assert sa[key].tobytes() == sb[key].tobytes()


def test_state_dict_round_trip_resumes_bit_for_bit(tmp_path, rng):
    grads = [[rng.standard_normal(n).astype(np.float32) for n in (70, 3)] for _ in range(6)]
    p0 = [rng.standard_normal(n).astype(np.float32) for n in (70, 3)]
    whole = [p.copy() for p in p0]
    opt = fastopt.NAdam(whole, state_dtype="bfloat16", seed=3)
    for g in grads:
        opt.step(g)
    half = [p.copy() for p in p0]
    first = fastopt.NAdam(half, state_dtype="bfloat16", seed=3)
    for g in grads[:3]:
        first.step(g)
    first.save(tmp_path / "ck")
    sd = first.state_dict()
    assert sd["state_dtype"] == "bfloat16" and sd["seed"] == 3
    assert sd["state"][0]["exp_avg"].dtype == np.uint16
    second = fastopt.NAdam(half, state_dtype="bfloat16", seed=99)
    second.load(tmp_path / "ck")
    assert second.seed == 3
    for g in grads[3:]:
        second.step(g)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(whole, half))
    assert second.state_dict()["state"][0]["exp_avg_sq"].tobytes() == \
        opt.state_dict()["state"][0]["exp_avg_sq"].tobytes()


def test_loading_another_state_dtype_is_refused_and_changes_nothing(rng):
    p = rng.standard_normal(10).astype(np.float32)
    f32 = fastopt.Adam([p.copy()])
    f32.step([p.copy()])
    bf = fastopt.Adam([p.copy()], state_dtype="bfloat16")
    bf.step([p.copy()])
    before = bf.state_dict()
    with pytest.raises(ValueError, match="convert_state_dict"):
        bf.load_state_dict(f32.state_dict())
    with pytest.raises(ValueError, match="convert_state_dict"):
        f32.load_state_dict(before)
    after = bf.state_dict()
    assert after["state"][0]["exp_avg"].tobytes() == before["state"][0]["exp_avg"].tobytes()
    # converted, it loads; the states are the float32 ones rounded to nearest
    converted = fastopt.states.convert_state_dict(f32.state_dict(), "bfloat16", seed=4)
    bf.load_state_dict(converted)
    m = f32.state_float32(f32.param_groups[0]["params"][0])["exp_avg"]
    got = bf.state_float32(bf.param_groups[0]["params"][0])["exp_avg"]
    assert got.tobytes() == fastopt.states.from_bfloat16(
        fastopt.states.to_bfloat16(m)).tobytes()
    back = fastopt.states.convert_state_dict(bf.state_dict(), None)
    assert "state_dtype" not in back and back["state"][0]["exp_avg"].dtype == np.float32
    f32.load_state_dict(back)


def test_state_float32_decodes_exactly(rng):
    p = rng.standard_normal(33).astype(np.float32)
    opt = fastopt.Adam([p], state_dtype="bfloat16")
    assert opt.state_float32(p) == {}
    opt.step([rng.standard_normal(33).astype(np.float32)])
    bits = opt.state_dict()["state"][0]["exp_avg"]
    got = opt.state_float32(p)["exp_avg"]
    assert got.dtype == np.float32
    assert got.tobytes() == ((bits.astype(np.uint32) << 16).view(np.float32)).tobytes()
    with pytest.raises(ValueError, match="param"):
        opt.state_float32(p.copy())


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(state_dtype="float16"), ValueError, "state_dtype"),
    (dict(state_dtype=16), TypeError, "state_dtype"),
    (dict(state_dtype="8-bit"), ValueError, "state_dtype"),
    (dict(state_dtype="float64"), ValueError, "state_dtype='float64'"),
    (dict(state_dtype="bfloat16", seed=-1), ValueError, "seed"),
    (dict(state_dtype="bfloat16", seed=2 ** 64), ValueError, "seed"),
    (dict(state_dtype="bfloat16", seed=1.0), TypeError, "seed"),
    (dict(state_dtype="bfloat16", seed=True), TypeError, "seed"),
])
def test_bad_state_dtype(kwargs, error, match):
    p = np.ones(3, np.float32)
    with pytest.raises(error, match=match):
        fastopt.Adam([p], **kwargs)
    assert np.all(p == 1)


def test_float64_parameters_with_bfloat16_states_are_refused():
    with pytest.raises(ValueError, match="float32 parameters.*'w'"):
        fastopt.Adam({"w": np.ones(3)}, state_dtype="bfloat16")
    fastopt.Adam([np.ones(3)], state_dtype="float64")


@pytest.mark.parametrize("state_dtype", ["bfloat16", "8bit"])
@pytest.mark.parametrize("name", TWO_PASS)
def test_two_pass_rules_refuse_low_precision_states(name, state_dtype):
    with pytest.raises(ValueError, match=name):
        getattr(fastopt, name)([np.ones(3, np.float32)], state_dtype=state_dtype)


@pytest.mark.parametrize("state_dtype", ["bfloat16", "8bit"])
def test_swap_is_refused_with_low_precision_states(state_dtype):
    p = np.ones(3, np.float32)
    opt = fastopt.ASGD([p], state_dtype=state_dtype)
    opt.step([np.ones(3, np.float32)])
    with pytest.raises(ValueError, match="state_float32"):
        opt.swap("ax")


def test_schedule_free_eval_uses_the_decoded_z(rng):
    p = rng.standard_normal(100).astype(np.float32)
    opt = fastopt.AdamWScheduleFree([p], state_dtype="bfloat16")
    for _ in range(3):
        opt.step([rng.standard_normal(100).astype(np.float32)])
    y = p.copy()
    z = opt.state_float32(p)["z"]
    opt.eval()
    x = y.copy()
    fastopt.optim._lerp(x, z, 1.0 - 1.0 / 0.9)
    assert p.tobytes() == x.tobytes()


# ---------------------------------------------------------------------------
# Accuracy against float64 (noisy diagonal quadratic)

def _quadratic(n=100_000, seed=0):
    rng = np.random.default_rng(seed)
    h = 10.0 ** rng.uniform(-2, 1, n)          # curvatures over three decades
    target = rng.standard_normal(n)
    return h, target, rng


def _train(dtype, state_dtype, steps=1000, n=100_000, shrink_at=None):
    h, target, rng = _quadratic(n)
    x = np.zeros(n, dtype)
    opt = fastopt.AdamW([x], lr=1e-2, weight_decay=0.0, state_dtype=state_dtype)
    noise = np.random.default_rng(1)
    for t in range(steps):
        g = h * (x - target) + 0.1 * noise.standard_normal(n)
        if shrink_at is not None and t >= shrink_at:
            g = g / 100.0
        opt.step([g.astype(dtype)])
    loss = 0.5 * float(np.sum(h * (x.astype(np.float64) - target) ** 2)) / n
    return x.astype(np.float64), loss, opt


@functools.lru_cache(maxsize=None)
def _float64_run(steps=1000, n=100_000, shrink_at=None):
    """_train in float64 (the reference of the low-precision runs), made
    once per setting for the tests of both state dtypes"""
    return _train(np.float64, None, steps, n, shrink_at)


def accuracy(state_dtype):
    """After 1,000 AdamW steps with float32 parameters and states in
    ``state_dtype``: the parameters' relative error against the float64
    run, and the gap between the losses."""
    x64, loss64, _ = _float64_run()
    x, loss, _ = _train(np.float32, state_dtype)
    return np.linalg.norm(x - x64) / np.linalg.norm(x64), abs(loss - loss64)


def v_ratio_after_shrink(state_dtype):
    """v / v_float64, element by element, 300 steps after the gradients
    shrank 100x (600 steps of 2e4 elements)."""
    setting = dict(steps=600, n=20_000, shrink_at=300)
    _, _, o64 = _float64_run(**setting)
    _, _, opt = _train(np.float32, state_dtype, **setting)
    v64 = o64.state_float32(o64.param_groups[0]["params"][0])["exp_avg_sq"]
    return opt.state_float32(opt.param_groups[0]["params"][0])["exp_avg_sq"] / v64


def test_bfloat16_adamw_accuracy_on_a_noisy_quadratic():
    """After 1,000 AdamW steps: parameters within 1e-2 (relative) of a
    float64 run, loss within 1e-3."""
    rel, gap = accuracy("bfloat16")
    assert rel <= 1e-2, rel
    assert gap <= 1e-3, gap


def test_bfloat16_v_decays_after_gradients_shrink():
    """Large gradients, then 100x smaller: v follows float64's within 10%
    (round-to-nearest would leave it stuck high)."""
    ratio = v_ratio_after_shrink("bfloat16")
    assert 0.9 <= float(np.median(ratio)) <= 1.1, np.median(ratio)
    worst = np.quantile(np.abs(ratio - 1), 0.99)
    assert worst < 0.5, worst


def test_bfloat16_state_dict_is_validated_before_anything_changes(rng):
    p = rng.standard_normal(10).astype(np.float32)
    opt = fastopt.Adam([p], state_dtype="bfloat16", seed=5)
    opt.step([rng.standard_normal(10).astype(np.float32)])
    good = opt.state_dict()
    bad_dtype = copy.deepcopy(good)
    bad_dtype["state"][0]["exp_avg"] = fastopt.states.from_bfloat16(good["state"][0]["exp_avg"])
    bad_shape = copy.deepcopy(good)
    bad_shape["state"][0]["exp_avg_sq"] = good["state"][0]["exp_avg_sq"][:5].copy()
    bad_seed = copy.deepcopy(good)
    bad_seed["seed"] = -3
    for sd, match in ((bad_dtype, "uint16"), (bad_shape, "uint16 array of shape"),
                      (bad_seed, "seed")):
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(sd)
        now = opt.state_dict()
        assert now["seed"] == 5
        for key in ("exp_avg", "exp_avg_sq"):
            assert now["state"][0][key].tobytes() == good["state"][0][key].tobytes()


def test_parts_of_a_parameter_draw_the_whole_parameters_bits(rng):
    """A parameter stepped as two parts (the plan told each part's
    parameter index and offset, as a shard of a larger buffer is) gets the
    bits of the whole parameter stepped at once."""
    n, cut = 5000, 1234
    p0 = rng.standard_normal(n).astype(np.float32)
    whole, parts = p0.copy(), p0.copy()
    a = fastopt.AdamW([whole], state_dtype="bfloat16", seed=9)
    b = fastopt.AdamW([parts[:cut], parts[cut:]], state_dtype="bfloat16", seed=9)
    b._plans[0].set_state_format("bfloat16", 9, [0, 0], [0, cut])
    for _ in range(3):
        g = rng.standard_normal(n).astype(np.float32)
        a.step([g])
        b.step([g[:cut], g[cut:]])
    assert whole.tobytes() == parts.tobytes()
    sa, sb = a.state_dict()["state"], b.state_dict()["state"]
    assert sa[0]["exp_avg_sq"].tobytes() == np.concatenate(
        [sb[0]["exp_avg_sq"], sb[1]["exp_avg_sq"]]).tobytes()


# ---------------------------------------------------------------------------
# ml_dtypes (optional): views of the stored bits, and its conversions as the
# reference for to_bfloat16/from_bfloat16

def test_bfloat16_conversions_match_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = ml_dtypes.bfloat16
    # decoding: every one of the 65536 patterns, byte for byte (NaNs too)
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    assert (fastopt.states.from_bfloat16(bits).tobytes()
            == bits.view(bf16).astype(np.float32).tobytes())
    # encoding: float32 patterns drawn uniformly over all 2^32, with the
    # ties (low 16 bits 0x8000) and their neighbours of each draw, rounded
    # to nearest even as ml_dtypes rounds
    rng = np.random.default_rng(5)
    u = rng.integers(0, 1 << 32, size=200_000, dtype=np.uint64).astype(np.uint32)
    hi = u & np.uint32(0xFFFF0000)
    u = np.concatenate([u, hi | np.uint32(0x8000), hi | np.uint32(0x7FFF),
                        hi | np.uint32(0x8001), hi])
    x = u.view(np.float32)
    mine = fastopt.states.to_bfloat16(x)
    with np.errstate(invalid="ignore"):
        theirs = x.astype(bf16).view(np.uint16)
    nan = np.isnan(x)
    assert np.array_equal(mine[~nan], theirs[~nan])
    # a NaN stays a NaN of the same sign; ml_dtypes drops the payload
    m, t = fastopt.states.from_bfloat16(mine[nan]), fastopt.states.from_bfloat16(theirs[nan])
    assert np.isnan(m).all() and np.isnan(t).all()
    assert np.array_equal(np.signbit(m), np.signbit(t))


def test_as_bfloat16_views_the_stored_states():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(6)
    w = rng.standard_normal((3, 70)).astype(np.float32)
    opt = fastopt.AdamW([w], lr=1e-2, state_dtype="bfloat16", seed=1)
    for _ in range(3):
        opt.step([rng.standard_normal(w.shape).astype(np.float32)])
    sd = opt.state_dict()
    for key, value in opt.state_float32(w).items():
        bits = sd["state"][0][key]
        view = fastopt.states.as_bfloat16(bits)
        assert view.dtype == ml_dtypes.bfloat16 and view.shape == w.shape
        assert np.shares_memory(view, bits)
        assert view.astype(np.float32).tobytes() == value.tobytes()
        # from_bfloat16 takes the view as it takes the bits
        assert fastopt.states.from_bfloat16(view).tobytes() == value.tobytes()
    # a strided view of a view: still the same memory
    bits = sd["state"][0]["exp_avg"]
    assert np.shares_memory(fastopt.states.as_bfloat16(bits[:, ::2]), bits)


def test_as_bfloat16_refuses_other_arrays_and_names_the_extra(monkeypatch):
    for bad in (np.zeros(3, np.float32), np.zeros(3, np.int16), [1, 2], 3):
        with pytest.raises(TypeError, match="bits must be a uint16 array"):
            fastopt.states.as_bfloat16(bad)
    import sys
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)   # as if not installed
    with pytest.raises(ImportError, match=r'pip install "fastopt\[bfloat16\]"'):
        fastopt.states.as_bfloat16(np.zeros(3, np.uint16))
