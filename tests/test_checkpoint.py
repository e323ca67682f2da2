"""fastopt.checkpoint: atomic .npz checkpoints with a checksum; resuming in a
new process is bit-identical to an uninterrupted run."""
import copy
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastopt
from fastopt import checkpoint
from fastopt.optim import SGD, Adam


def _model(seed=0):
    rng = np.random.default_rng(seed)
    return {"W1": rng.standard_normal((5, 2)), "b1": rng.standard_normal((5, 1)),
            "W2": rng.standard_normal((1, 5)).astype(np.float32),
            "b2": rng.standard_normal((1, 1)).astype(np.float32)}


def _grads(params, t):
    rng = np.random.default_rng(1000 + t)
    return {k: rng.standard_normal(p.shape).astype(p.dtype) for k, p in params.items()}


def _trained(steps=4, **config):
    params = _model()
    opt = Adam(params, lr=0.01, amsgrad=True, **config)
    for t in range(steps):
        g = _grads(params, t)
        if t == 1:
            g["b1"] = None
        opt.step(g)
    return opt, params


def _same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if key == "state":
            assert a["state"].keys() == b["state"].keys()
            for i in a["state"]:
                ea, eb = a["state"][i], b["state"][i]
                assert ea.keys() == eb.keys()
                for k in ea:
                    if k == "step":
                        assert ea[k] == eb[k]
                    else:
                        assert ea[k].dtype == eb[k].dtype
                        assert ea[k].tobytes() == eb[k].tobytes()
        else:
            assert a[key] == b[key]


def test_round_trip(tmp_path):
    opt, params = _trained()
    path = tmp_path / "opt.ckpt"
    opt.save(path)
    assert sorted(os.listdir(tmp_path)) == ["opt.ckpt"]      # no temporary left
    fresh = Adam(_model(), lr=0.5)
    fresh.load(str(path))
    _same_state(fresh.state_dict(), opt.state_dict())
    assert fresh.param_groups[0]["betas"] == (0.9, 0.999)
    checkpoint.save(opt, tmp_path / "b.npz")
    other = Adam(_model())
    checkpoint.load(other, tmp_path / "b.npz")
    _same_state(other.state_dict(), opt.state_dict())


def test_write_is_atomic_and_synced(tmp_path, monkeypatch):
    opt, _ = _trained()
    path = tmp_path / "opt.npz"
    opt.save(path)
    original = path.read_bytes()
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    opt.save(path)
    assert len(synced) == (2 if os.name == "posix" else 1)   # the file, then the folder

    for name in ["fsync", "replace"]:
        def fail(*args):
            raise OSError("disk full")
        monkeypatch.setattr(os, name, fail)
        with pytest.raises(OSError, match="disk full"):
            opt.save(path)
        monkeypatch.undo()
        assert path.read_bytes() == original                 # the old file survives
        assert sorted(os.listdir(tmp_path)) == ["opt.npz"]   # no temporary left


def test_unserializable_hyperparameter_fails_before_writing(tmp_path):
    opt, _ = _trained()
    opt.param_groups[0]["note"] = object()
    with pytest.raises(TypeError, match="cannot store"):
        opt.save(tmp_path / "x.npz")
    assert os.listdir(tmp_path) == []


def _damaged(tmp_path, how):
    opt, _ = _trained()
    path = tmp_path / "opt.npz"
    opt.save(path)
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "empty":
        data = bytearray()
    elif how.startswith("flip"):
        data[int(len(data) * float(how[4:]))] ^= 0x10
    elif how == "text":
        data = bytearray(b"hello, not a checkpoint\n")
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("how", ["truncated", "empty", "flip0.1", "flip0.3", "flip0.5",
                                 "flip0.7", "flip0.9", "flip0.99", "text"])
def test_damaged_files_raise_valueerror_naming_the_file(tmp_path, how):
    path = _damaged(tmp_path, how)
    opt, _ = _trained(steps=1)
    before = opt.state_dict()
    with pytest.raises(ValueError, match="opt.npz"):
        opt.load(path)
    _same_state(opt.state_dict(), before)


def test_every_flipped_bit_sampled_across_the_file_is_caught(tmp_path):
    opt, _ = _trained()
    path = tmp_path / "opt.npz"
    opt.save(path)
    data = path.read_bytes()
    for pos in range(0, len(data), max(1, len(data) // 200)):
        damaged = bytearray(data)
        damaged[pos] ^= 1 << (pos % 8)
        path.write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match="opt.npz"):
            checkpoint.read_state(path)


def test_npy_and_foreign_npz_are_refused(tmp_path):
    opt, _ = _trained()
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(ValueError, match="a.npy"):
        opt.load(tmp_path / "a.npy")
    np.savez(tmp_path / "b.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="b.npz.*not a fastopt checkpoint"):
        opt.load(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", meta=np.zeros(2, object))
    with pytest.raises(ValueError, match="c.npz"):
        opt.load(tmp_path / "c.npz")


def test_checksum_covers_content_rewritten_as_a_valid_zip(tmp_path):
    opt, _ = _trained()
    path = tmp_path / "opt.npz"
    opt.save(path)
    data = path.read_bytes()
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["state/0/exp_avg"] = arrays["state/0/exp_avg"] + 1e-12
    np.savez(path, **arrays)                   # valid zip CRCs, no digest
    with pytest.raises(ValueError, match="opt.npz: not a fastopt checkpoint"):
        opt.load(path)
    forged = bytearray(data)
    forged[-1] ^= 1                            # the digest itself damaged
    path.write_bytes(bytes(forged))
    with pytest.raises(ValueError, match="opt.npz: checksum mismatch"):
        opt.load(path)


def test_wrong_version_and_wrong_optimizer(tmp_path):
    opt, _ = _trained()
    # a file of a later version, written by hand: write_state refuses to
    # write anything but the current layout
    meta = {k: v for k, v in opt.state_dict().items() if k != "state"}
    meta.update(version=2, steps={})
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    (tmp_path / "v2.npz").write_bytes(checkpoint._seal(buf.getvalue()))
    with pytest.raises(ValueError, match="v2.npz: checkpoint version 2 is not supported"):
        opt.load(tmp_path / "v2.npz")
    opt.save(tmp_path / "adam.npz")
    sgd = SGD(_model())
    with pytest.raises(ValueError, match="adam.npz: state_dict is for optimizer 'Adam'"):
        sgd.load(tmp_path / "adam.npz")
    small = Adam({"W1": np.zeros((5, 2))})
    with pytest.raises(ValueError, match="adam.npz: .*has 4 parameters"):
        small.load(tmp_path / "adam.npz")


def test_file_layout(tmp_path):
    opt, _ = _trained()
    opt.save(tmp_path / "opt.npz")
    with np.load(tmp_path / "opt.npz", allow_pickle=False) as z:
        names = set(z.files)
        meta = json.loads(z["meta"].tobytes())
    assert {"meta", "state/0/exp_avg", "state/3/max_exp_avg_sq"} <= names
    assert meta["format"] == "fastopt" and meta["version"] == 1
    assert meta["steps"] == {"0": 4, "1": 3, "2": 4, "3": 4}


SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from fastopt.optim import Adam, RMSprop

    mode, folder, k, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = np.random.default_rng(0)
    params = {"W1": rng.standard_normal((64, 32)).astype(np.float32),
              "b1": rng.standard_normal((64, 1)).astype(np.float32),
              "W2": rng.standard_normal((1, 64)),
              "b2": rng.standard_normal((1, 1))}

    def make(cls):
        if cls == "adam":
            return Adam(params, lr=1e-2, amsgrad=True, weight_decay=1e-3)
        return RMSprop(params, lr=1e-3, momentum=0.9, centered=True)

    def grads(t):
        g = np.random.default_rng(100 + t)
        out = {key: g.standard_normal(p.shape).astype(p.dtype) for key, p in params.items()}
        if t % 7 == 3:
            out["b1"] = None
        return out

    cls = sys.argv[5]
    opt = make(cls)
    start = 0
    if mode == "resume":
        with np.load(folder + "/params.npz") as z:
            for key in params:
                params[key][...] = z[key]
        opt.load(folder + "/opt.ckpt")
        start = k
    stop = k if mode == "first" else n
    for t in range(start, stop):
        opt.step(grads(t))
    if mode == "first":
        np.savez(folder + "/params.npz", **params)
        opt.save(folder + "/opt.ckpt")
    else:
        np.savez(folder + "/" + mode + ".npz", **params)
        opt.save(folder + "/" + mode + ".ckpt")
""")


@pytest.mark.parametrize("cls", ["adam", "rmsprop"])
def test_resume_in_a_new_process_is_bit_identical(tmp_path, cls):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = dict(os.environ)
    for mode in ["full", "first", "resume"]:
        subprocess.run([sys.executable, str(script), mode, str(tmp_path), "13", "30", cls],
                       check=True, env=env, timeout=120)
    with np.load(tmp_path / "full.npz") as a, np.load(tmp_path / "resume.npz") as b:
        for key in a.files:
            assert a[key].dtype == b[key].dtype
            assert a[key].tobytes() == b[key].tobytes(), key
    full_sd = checkpoint.read_state(tmp_path / "full.ckpt")
    resumed_sd = checkpoint.read_state(tmp_path / "resume.ckpt")
    _same_state(full_sd, resumed_sd)
    assert {e["step"] for e in full_sd["state"].values()} == {30, 26}


@pytest.mark.parametrize("spoil, error", [
    (lambda sd: sd.update(version=2), ValueError),
    (lambda sd: sd.pop("format"), ValueError),
    (lambda sd: sd["state"][0].update(exp_avg=np.array([object()], object)), ValueError),
    (lambda sd: sd["state"][0].update(step="3"), ValueError),
    (lambda sd: sd["state"].update({-1: {"step": 1}}), ValueError),
    (lambda sd: sd["state"][0].update({"a/b": np.zeros(2)}), ValueError),
    (lambda sd: sd["param_groups"].append(3), ValueError),
    (lambda sd: sd["param_groups"][0].update(lr=object()), TypeError),
    (lambda sd: sd.update(skipped_steps=-1), ValueError),
])
def test_write_state_refuses_what_it_could_not_read_back(tmp_path, spoil, error):
    opt, _ = _trained()
    opt.save(tmp_path / "opt.npz")
    before = sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir())
    sd = opt.state_dict()
    spoil(sd)
    with pytest.raises(error):
        checkpoint.write_state(tmp_path / "opt.npz", sd)
    assert sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir()) == before


def test_paths_may_be_bytes_or_pathlike(tmp_path):
    opt, _ = _trained()
    opt.save(os.fsencode(tmp_path / "a.npz"))
    checkpoint.load(opt, tmp_path / "a.npz")
    assert checkpoint.read_state(str(tmp_path / "a.npz"))["optimizer"] == "Adam"
    with pytest.raises(TypeError, match="path must be"):
        opt.save(3)


@pytest.mark.parametrize("cls, key", [(fastopt.NAdam, "mu_product"),
                                      (fastopt.SGDScheduleFree, "weight_sum")])
def test_scalar_state_past_the_float_range_is_refused(cls, key):
    """An int too large for a float as a per-tensor scalar state: ValueError
    naming it (not OverflowError), and nothing loaded."""
    opt = cls([np.ones(3)])
    opt.step([np.ones(3)])
    sd = opt.state_dict()
    before = copy.deepcopy(sd)
    sd["state"][0][key] = 10 ** 400
    with pytest.raises(ValueError, match=f"{key}.*float range"):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert after["state"][0][key] == before["state"][0][key]


@pytest.mark.parametrize("name", [name for name, rule in fastopt.rules.RULES.items()
                                  if any(h.late for h in rule.hypers)])
def test_state_dict_from_before_a_late_hyperparameter_loads_with_its_default(name):
    """A hyperparameter added to a rule later (Hyper.late) may be missing
    from a saved group: it takes the table's default, and the step equals
    one of an optimizer built with the defaults; any other missing one is
    refused."""
    rule = fastopt.rules.RULES[name]
    cls = getattr(fastopt, rule.cls)
    late = [h for h in rule.hypers if h.late]
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(6) for _ in range(3)]
    saved = cls([np.ones(6)])
    saved.step([grads[0]])
    sd = saved.state_dict()
    for h in late:
        del sd["param_groups"][0][h.name]
    loaded = cls([saved.param_groups[0]["params"][0].copy()])
    loaded.load_state_dict(sd)
    for h in late:
        assert loaded.param_groups[0][h.name] == h.default
    for g in grads[1:]:
        saved.step([g])
        loaded.step([g])
    np.testing.assert_array_equal(loaded.param_groups[0]["params"][0],
                                  saved.param_groups[0]["params"][0])
    sd = saved.state_dict()
    del sd["param_groups"][0]["lr"]
    with pytest.raises(ValueError, match=r"lacks hyperparameters \['lr'\]"):
        cls([np.ones(6)]).load_state_dict(sd)
