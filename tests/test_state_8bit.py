"""state_dtype="8bit": states kept as uint8 codes with a float32 scale per
block of 256 elements, against fastopt.reference.q8_step bit for bit on
every level and thread count; the codec's edge cases, checkpoints,
conversions, bad input, and accuracy on the noisy quadratic of
test_state_dtype against a float64 run."""
import copy
import dataclasses
import inspect

import numpy as np
import pytest

import fastopt
from fastopt import _core, reference
from test_state_dtype import (CLASSES, _check, accuracy,
                              run_against_model, v_ratio_after_shrink)
from test_state_dtype import Model as BF16Model
from test_checkpoint import _same_state


class Model(BF16Model):
    """Per parameter: 8-bit states (codes, scales) at their start values,
    scalar states, a step count; a step is reference.q8_step."""

    STEP = staticmethod(reference.q8_step)

    def stored(self, spec, p, value):
        codes, scales = reference.q8_encode(np.full(p.size, value, np.float32),
                                            spec.sign == "nonneg")
        return codes.reshape(p.shape), scales

    @staticmethod
    def check_state(entry, key, pair, i):
        codes, scales = entry[key], entry[key + ".scale"]
        assert codes.dtype == np.uint8 and scales.dtype == np.float32
        assert codes.tobytes() == pair[0].tobytes(), f"{key} of {i}"
        assert scales.tobytes() == pair[1].tobytes(), f"{key}.scale of {i}"


@pytest.mark.parametrize("name,rule", CLASSES, ids=[c for c, _ in CLASSES])
def test_class_is_the_reference_bit_for_bit(name, rule, exec_env, prefetching, rng):
    """Every class with array states, every level and 1 and 2 threads,
    with and without prefetching: sizes below a block, not a multiple of
    256 and above a chunk (1,024), so thread splits fall inside tensors and
    are moved to block boundaries; a None gradient."""
    _check(*run_against_model(name, rule, rng, "8bit", Model, (3, 300, 2500), 4, 7))


def test_states_with_other_maps_than_the_table_are_still_exact(monkeypatch, exec_env, rng):
    """The loops that decode 8-bit states as they read them are compiled
    for the maps of the rule table (v never negative); states given other
    maps (here all signed, through the table the class and the reference
    read) take the decode-into-scratch path and still match the reference
    bit for bit on every level and thread count."""
    rule = fastopt.AdamW.rule
    signed = dataclasses.replace(rule, states=tuple(
        dataclasses.replace(s, sign="") for s in rule.states))
    monkeypatch.setattr(fastopt.AdamW, "rule", signed)
    monkeypatch.setitem(reference.RULES, rule.name, signed)
    opt, params, model = run_against_model("AdamW", signed, rng, "8bit", Model,
                                           (3, 300, 2500), 4, 7)
    assert opt._nonneg_slots() == []
    _check(opt, params, model)


def _special():
    return np.array([0.0, -0.0, 1e-45, -1e-38, 3.4e38, -3.4e38, 1.0, -1.0, 0.5,
                     1e-20, 7.0], np.float32)


def _step_twice(threads, params, grads):
    fastopt.set_num_threads(threads)
    _core.set_parallel_threshold(1)
    ps = [p.copy() for p in params]
    opt = fastopt.AdamW(ps, lr=1e-2, weight_decay=0.1, state_dtype="8bit", seed=3)
    for _ in range(2):
        opt.step(grads)
    return ps, opt.state_dict()


def test_pieces_of_long_steps_leave_the_bits_alone(restore_config, prefetching, rng):
    """Two threads take an 8-bit step's blocks in pieces of at most 2^17
    elements as they come free (dispatch.c): a tensor of nine whole pieces
    and part of a block, then a short one, which the last piece reaches
    into, end with the bits of one thread"""
    params = [rng.standard_normal(n).astype(np.float32) for n in (2 ** 20 + 2 ** 17 + 300, 1000)]
    grads = [rng.standard_normal(p.size).astype(np.float32) for p in params]
    p1, s1 = _step_twice(1, params, grads)
    p2, s2 = _step_twice(2, params, grads)
    for i in range(len(params)):
        assert p1[i].tobytes() == p2[i].tobytes(), f"parameter {i}"
    _same_state(s1, s2)


@pytest.mark.parametrize("nonneg", [True, False])
def test_codec_is_the_reference(nonneg, simd_level, rng):
    """The codec at every instruction-set level (q8.h, vectorised), against
    the reference bit for bit, in its general form and in its form for a
    whole chunk of 1,024 elements; a NaN scale is the largest NaN's bits."""
    x = np.concatenate([_special(), rng.standard_normal(1000).astype(np.float32),
                        rng.standard_normal(300).astype(np.float32) * 1e-30])
    if nonneg:
        x = np.abs(x)
    for part in (x[:1024], x):   # x last: its codes are decoded below
        for key, start in ((0, 0), (0x9E3779B9, 5), (0xFFFFFFFF, 2 ** 32 - 3)):
            codes, scales = _core.q8_encode(part, nonneg, key, start)
            rc, rs = reference.q8_encode(part, nonneg, key, start)
            assert codes.tobytes() == rc.tobytes() and scales.tobytes() == rs.tobytes()
    assert scales.size == 6
    for n, tiny in ((512, 300), (1024, 1024)):   # general form, whole chunk
        # NaNs of several payloads and signs, and an infinity, in one block:
        # the scale is the NaN whose bits without the sign are the largest
        y = x[:n].copy()
        y[[3, 40, 41, 100]] = np.array([0x7FC00001, 0xFFC00005, 0x7F800000, 0x7FA00002],
                                       np.uint32).view(np.float32)
        yc, ys = _core.q8_encode(y, nonneg, 3)
        rc, rs = reference.q8_encode(y, nonneg, 3)
        assert yc.tobytes() == rc.tobytes() and ys.tobytes() == rs.tobytes()
        assert ys[:1].view(np.uint32)[0] == 0x7FC00005 and np.isfinite(ys[1])
        # a block whose scale has no float32 reciprocal (below 2^-128) is
        # coded from its values times 2^64: the codes of the scaled block,
        # which is coded like any other, and the largest element exact
        t = np.resize(np.float32([1e-40, 3e-41, 0.0, -2e-40, 5e-45]), tiny)
        if nonneg:
            t = np.abs(t)
        tc, ts = _core.q8_encode(t, nonneg, 5)
        rc, rs = reference.q8_encode(t, nonneg, 5)
        assert tc.tobytes() == rc.tobytes() and ts.tobytes() == rs.tobytes()
        big_c, big_s = _core.q8_encode(t * np.float32(2.0 ** 64), nonneg, 5)
        assert tc.tobytes() == big_c.tobytes()
        assert np.array_equal(ts * np.float32(2.0 ** 64), big_s)
        top = _core.q8_decode(tc, ts, nonneg)[np.argmax(np.abs(t[:256]))]
        assert abs(top) == ts[0] and ts[0] == np.float32(2e-40)
    got = _core.q8_decode(codes, scales, nonneg)
    assert got.tobytes() == reference.q8_decode(codes, scales, nonneg).tobytes()
    # a code keeps three mantissa bits: values from 2^-15 of their block's
    # scale up decode within 1/8 of themselves, all within 1/16 of the
    # scale; the largest element of each block is exact
    scale = np.repeat(scales, 256)[:x.size]
    err = np.abs(got.astype(np.float64) - x)
    assert np.all(err <= scale / 16.0)
    big = np.abs(x) >= scale * 2.0 ** -15
    assert big.sum() > 1000 and np.all(err[big] <= np.abs(x[big]) / 8.0)
    for b in range(scales.size):
        blk = np.abs(x[b * 256:(b + 1) * 256])
        k = int(np.argmax(blk))
        assert abs(got[b * 256 + k]) == blk[k]


@pytest.mark.parametrize("nonneg", [True, False])
def test_codec_rounds_without_bias(nonneg):
    """Over many keys the decoded values average to the coded ones (within
    4 sigma of the spread stochastic rounding between two codes allows),
    in every binade and below the smallest code; the largest is exact."""
    x = np.float32(2.0) ** -np.linspace(0.0, 40.0 if nonneg else 22.0, 256)
    x = x.astype(np.float32)
    x[0] = 1.0
    if not nonneg:
        x[1::2] *= -1
    keys = 3000
    total = np.zeros(256)
    for key in range(keys):
        codes, scales = _core.q8_encode(x, nonneg, key * 0x9E3779B9 % 2 ** 32)
        total += _core.q8_decode(codes, scales, nonneg)
    mean = total / keys
    table = reference.q8_table(nonneg)
    # the gap between the two codes around each |x|
    grid = np.sort(np.unique(table))
    hi = grid[np.searchsorted(grid, np.abs(x))]
    lo = grid[np.maximum(np.searchsorted(grid, np.abs(x), side="right") - 1, 0)]
    sigma = (hi - lo) / 2 / np.sqrt(keys)
    assert mean[0] == x[0]
    assert np.all(np.abs(mean - x) <= 4 * sigma + (hi - lo) / 512), np.max(np.abs(mean - x) / (sigma + 1e-45))


def test_codec_edge_cases():
    # a block of zeros: scale 0, codes 0, decodes to zeros; signs kept
    x = np.zeros(600, np.float32)
    x[300] = -2.0
    x[301] = 1e-3
    codes, scales = _core.q8_encode(x, False)
    assert scales[0] == 0 and scales[2] == 0 and scales[1] == 2.0
    assert np.all(codes[:256] == 0)
    back = _core.q8_decode(codes, scales, False)
    assert back[300] == -2.0 and np.all(back[:256] == 0)
    # a value 5e-4 of its block's scale keeps its relative precision (a
    # float code with three mantissa bits: within 1/8)
    assert abs(back[301] - 1e-3) <= 1e-3 / 8
    # so does 1e-8 of its block's largest, in the map of states that are
    # never negative (32 binades; a square-root map would code it as 0)
    y = np.float32([1.0, 1e-8] + [0.0] * 10)
    codes, scales = _core.q8_encode(y, True, 1)
    assert abs(_core.q8_decode(codes, scales, True)[1] - 1e-8) <= 1e-8 / 8
    # a NaN or an infinity makes the block's scale non-finite and every one
    # of its elements NaN; the other blocks are untouched
    for bad in (np.nan, np.inf, -np.inf):
        y = np.ones(512, np.float32)
        y[10] = bad
        for nonneg in (True, False):
            codes, scales = _core.q8_encode(y, nonneg)
            rc, rs = reference.q8_encode(y, nonneg)
            assert codes.tobytes() == rc.tobytes() and scales.tobytes() == rs.tobytes()
            assert not np.isfinite(scales[0]) and scales[1] == 1.0
            back = _core.q8_decode(codes, scales, nonneg)
            assert np.all(np.isnan(back[:256])) and np.all(back[256:] == 1.0)
    # a state kept without a sign codes a negative value as 0
    codes, scales = _core.q8_encode(np.float32([-1.0, 4.0]), True)
    assert list(codes) == [0, 255] and scales[0] == 4.0
    # empty arrays
    codes, scales = _core.q8_encode(np.zeros(0, np.float32), True)
    assert codes.size == 0 and scales.size == 0


def test_state_dict_round_trip_resumes_bit_for_bit(tmp_path, rng):
    sizes = (700, 3)
    grads = [[rng.standard_normal(n).astype(np.float32) for n in sizes] for _ in range(6)]
    p0 = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    whole = [p.copy() for p in p0]
    opt = fastopt.AdamW(whole, state_dtype="8bit")
    for g in grads:
        opt.step(g)
    half = [p.copy() for p in p0]
    first = fastopt.AdamW(half, state_dtype="8bit")
    for g in grads[:3]:
        first.step(g)
    first.save(tmp_path / "ck")
    sd = first.state_dict()
    assert sd["state_dtype"] == "8bit"
    assert sd["state"][0]["exp_avg"].dtype == np.uint8
    assert sd["state"][0]["exp_avg.scale"].shape == (3,)
    second = fastopt.AdamW(half, state_dtype="8bit")
    second.load(tmp_path / "ck")
    for g in grads[3:]:
        second.step(g)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(whole, half))
    for key in ("exp_avg_sq", "exp_avg_sq.scale"):
        assert second.state_dict()["state"][0][key].tobytes() == \
            opt.state_dict()["state"][0][key].tobytes()


def test_conversions_and_state_float32(rng):
    p = rng.standard_normal(300).astype(np.float32)
    f32 = fastopt.Adam([p.copy()])
    f32.step([p.copy()])
    q8 = fastopt.Adam([p.copy()], state_dtype="8bit")
    with pytest.raises(ValueError, match="convert_state_dict"):
        q8.load_state_dict(f32.state_dict())
    converted = fastopt.states.convert_state_dict(f32.state_dict(), "8bit")
    q8.load_state_dict(converted)
    for key, nonneg in (("exp_avg", False), ("exp_avg_sq", True)):
        v = f32.state_float32(f32.param_groups[0]["params"][0])[key]
        got = q8.state_float32(q8.param_groups[0]["params"][0])[key]
        codes, scales = fastopt.states.to_8bit(v, nonneg)
        assert got.dtype == np.float32
        assert got.tobytes() == fastopt.states.from_8bit(codes, scales, nonneg).tobytes()
        # the conversions give their specification's bits
        want_codes, want_scales = reference.q8_encode(v, nonneg)
        assert codes.tobytes() == want_codes.tobytes()
        assert scales.tobytes() == want_scales.tobytes()
        assert got.tobytes() == reference.q8_decode(codes, scales, nonneg).tobytes()
    back = fastopt.states.convert_state_dict(q8.state_dict(), None)
    assert "exp_avg.scale" not in back["state"][0]
    f32.load_state_dict(back)
    bf = fastopt.states.convert_state_dict(q8.state_dict(), "bfloat16")
    fastopt.Adam([p.copy()], state_dtype="bfloat16").load_state_dict(bf)
    with pytest.raises(TypeError, match="x"):
        fastopt.states.to_8bit(np.ones(3))
    with pytest.raises(TypeError, match="codes"):
        fastopt.states.from_8bit(np.ones(3, np.uint16), np.ones(1, np.float32))
    with pytest.raises(ValueError, match="scales"):
        fastopt.states.from_8bit(np.ones(300, np.uint8), np.ones(1, np.float32))


def _misaligned(a):
    """A copy of a that is C-contiguous but not aligned to its dtype: a view
    one byte into a uint8 buffer."""
    buf = np.zeros(a.nbytes + 1, np.uint8)
    out = buf[1:].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert out.flags.c_contiguous and not out.flags.aligned
    return out


def test_conversions_of_misaligned_arrays(rng):
    """Regression, found by the conversion fuzzing under UBSan
    (tools/sanitize.sh): a contiguous array at an odd byte offset reached the
    C codecs as it was, and their typed loads of it are undefined behaviour
    (x86 happens to give the right values, so outside the sanitizer the old
    code passes this test too).  They now get an aligned copy; the results
    are those of the aligned array."""
    x = rng.standard_normal(700).astype(np.float32)
    for nonneg in (False, True):
        codes, scales = fastopt.states.to_8bit(x, nonneg)
        got_codes, got_scales = fastopt.states.to_8bit(_misaligned(x), nonneg)
        assert got_codes.tobytes() == codes.tobytes()
        assert got_scales.tobytes() == scales.tobytes()
        want = fastopt.states.from_8bit(codes, scales, nonneg)
        got = fastopt.states.from_8bit(codes, _misaligned(scales), nonneg)
        assert got.tobytes() == want.tobytes()
    bits = fastopt.states.to_bfloat16(x)
    assert fastopt.states.from_bfloat16(_misaligned(bits)).tobytes() == \
        fastopt.states.from_bfloat16(bits).tobytes()
    assert _core.bf16_round(_misaligned(x), 5).tobytes() == _core.bf16_round(x, 5).tobytes()


def test_state_dict_is_validated_before_anything_changes(rng):
    p = rng.standard_normal(300).astype(np.float32)
    opt = fastopt.Adam([p], state_dtype="8bit")
    opt.step([rng.standard_normal(300).astype(np.float32)])
    good = opt.state_dict()
    cases = []
    sd = copy.deepcopy(good)
    sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg"].astype(np.float32)
    cases.append((sd, "uint8"))
    sd = copy.deepcopy(good)
    sd["state"][0]["exp_avg.scale"] = sd["state"][0]["exp_avg.scale"][:1].copy()
    cases.append((sd, r"shape \(2,\)"))
    sd = copy.deepcopy(good)
    sd["state"][0]["exp_avg.scale"] = sd["state"][0]["exp_avg.scale"].astype(np.float64)
    cases.append((sd, "float32"))
    sd = copy.deepcopy(good)
    del sd["state"][0]["exp_avg_sq.scale"]
    cases.append((sd, "exp_avg_sq.scale"))
    sd = copy.deepcopy(good)
    sd["state"][0]["exp_avg_sqq.scale"] = good["state"][0]["exp_avg.scale"]
    cases.append((sd, "unknown state"))
    sd = copy.deepcopy(good)
    sd["state_dtype"] = "bfloat16"
    cases.append((sd, "convert_state_dict"))
    for sd, match in cases:
        with pytest.raises(ValueError, match=match):
            opt.load_state_dict(sd)
        now = opt.state_dict()
        for key in ("exp_avg", "exp_avg.scale", "exp_avg_sq", "exp_avg_sq.scale"):
            assert now["state"][0][key].tobytes() == good["state"][0][key].tobytes()


def test_float64_parameters_are_refused():
    with pytest.raises(ValueError, match="float32 parameters.*'w'"):
        fastopt.Adam({"w": np.ones(3)}, state_dtype="8bit")


def test_adagrad_start_value_and_schedule_free_eval(rng):
    p = rng.standard_normal(300).astype(np.float32)
    opt = fastopt.Adagrad([p], initial_accumulator_value=0.25, state_dtype="8bit")
    opt.step([np.zeros(300, np.float32)])
    assert np.all(opt.state_float32(p)["sum"] == np.float32(0.25))
    q = rng.standard_normal(300).astype(np.float32)
    sf = fastopt.AdamWScheduleFree([q], state_dtype="8bit")
    for _ in range(3):
        sf.step([rng.standard_normal(300).astype(np.float32)])
    y, z = q.copy(), sf.state_float32(q)["z"]
    sf.eval()
    fastopt.optim._lerp(y, z, 1.0 - 1.0 / 0.9)
    assert q.tobytes() == y.tobytes()


# ---------------------------------------------------------------------------
# Accuracy against float64 (the noisy diagonal quadratic of test_state_dtype)

def test_8bit_adamw_accuracy_on_a_noisy_quadratic():
    """After 1,000 AdamW steps: parameters within 0.2 (relative) of a
    float64 run, loss within 1e-3."""
    rel, gap = accuracy("8bit")
    assert rel <= 0.2, rel
    assert gap <= 1e-3, gap


def test_8bit_v_decays_after_gradients_shrink():
    """Large gradients, then 100x smaller: v follows float64's within 10%:
    the block's float32 scale decays with its values, so rounding the
    codes to nearest does not hold v up."""
    ratio = float(np.median(v_ratio_after_shrink("8bit")))
    assert 0.9 <= ratio <= 1.1, ratio


@pytest.mark.parametrize("decay", [0.9, 0.3])
def test_ema_leaves_the_8bit_step_alone_and_averages_its_parameters(decay, exec_env, prefetching, rng):
    """ema_decay with 8-bit states: the parameters and states are those of
    the optimizer without an average, bit for bit, and the average is
    lerp(ema, p, 1 - decay) of them in torch.lerp's two forms (in the
    rule's loop for weights below 0.5, after it otherwise)."""
    params = [rng.standard_normal(n).astype(np.float32) for n in (300, 2500)]
    plain = [p.copy() for p in params]
    opt = fastopt.AdamW(params, lr=1e-2, state_dtype="8bit", seed=3, ema_decay=decay)
    ref = fastopt.AdamW(plain, lr=1e-2, state_dtype="8bit", seed=3)
    w = np.float32(1.0 - decay)
    ema = None
    for _ in range(3):
        grads = [rng.standard_normal(p.size).astype(np.float32) for p in params]
        opt.step(grads)
        ref.step([g.copy() for g in grads])
        if ema is None:
            ema = [p.copy() for p in plain]
        elif w < 0.5:
            ema = [e + w * (p - e) for e, p in zip(ema, plain)]
        else:
            ema = [p - (p - e) * (np.float32(1) - w) for e, p in zip(ema, plain)]
    got, want = opt.state_dict()["state"], ref.state_dict()["state"]
    for i in range(2):
        assert params[i].tobytes() == plain[i].tobytes()
        for key, value in want[i].items():
            assert np.asarray(got[i][key]).tobytes() == np.asarray(value).tobytes(), key
        assert got[i]["ema"].tobytes() == ema[i].tobytes()
