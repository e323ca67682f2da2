"""fastopt.distributed: sharded steps against one process, bit for bit.

Each test launches ``mpiexec -n P python tests/mpi_worker.py SCENARIO``,
which writes every rank's result to a file, and checks every rank's file
against the single-process reference of tests/mpi_cases.py: the class
stepped on the mean of the ranks' gradients summed in rank order.  Skipped
when mpi4py or mpiexec is absent (``pip install ".[mpi]"``).
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastopt
import fastopt.distributed
from fastopt import _core

from conftest import AVAILABLE_LEVELS
from mpi_cases import (CASES, LEVEL_CASES, NONE_CASES, RESHARD_CASES, NAMES, SHAPES, STEPS,
                       grads, mean, micro, none_reference, reference, start)

try:
    import mpi4py  # noqa: F401
    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False
MPIEXEC = shutil.which("mpiexec") or shutil.which(
    "mpiexec", path=os.path.dirname(sys.executable))

needs_mpi = pytest.mark.skipif(
    not (HAVE_MPI4PY and MPIEXEC),
    reason="needs mpi4py and mpiexec: pip install \".[mpi]\" (mpi4py and MPICH)")

WORKER = os.path.join(os.path.dirname(__file__), "mpi_worker.py")


def launch(P, scenario, out, *args, expect_ok=True, env=None):
    """Run the worker on P ranks; return the CompletedProcess."""
    environ = dict(os.environ, NO_COLOR="1", PY_COLORS="0", OMP_NUM_THREADS="1",
                   OMP_WAIT_POLICY="passive")
    environ.update(env or {})
    cmd = [MPIEXEC, "-n", str(P), sys.executable, WORKER, scenario, str(out),
           *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=environ)
    if expect_ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def results(out, P):
    """Every rank's file: each rank must have written one."""
    files = [os.path.join(out, f"rank{r}.npz") for r in range(P)]
    for f in files:
        assert os.path.exists(f), f"{f} missing"
    return [dict(np.load(f)) for f in files]


def same_bits(actual, desired, what):
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert actual.dtype == desired.dtype and actual.shape == desired.shape, what
    assert actual.tobytes() == desired.tobytes(), (
        f"{what}: {np.count_nonzero(actual != desired)} elements differ")


def check_rank(res, case, world_sizes, rank):
    case_id = case[0]
    params, opt, norms = reference(case, world_sizes)
    for name in NAMES:
        same_bits(res[f"{case_id}|param|{name}"], params[name], f"{case_id} {name} rank {rank}")
        same_bits(res[f"{case_id}|view|{name}"], params[name], f"{case_id} view {name}")
    k = case[2].get("accumulation_steps", 1)
    for t in range(len(world_sizes) - STEPS, len(world_sizes)):
        assert list(res[f"{case_id}|stepped{t}"]) == [False] * (k - 1) + [True], case_id
    if "ema_decay" in case[2]:
        with opt.ema_weights():
            for name in NAMES:
                same_bits(res[f"{case_id}|ema|{name}"], params[name], f"{case_id} ema {name}")
                same_bits(res[f"{case_id}|emaview|{name}"], params[name],
                          f"{case_id} ema view {name}")
    for t, norm in enumerate(norms[-STEPS:]):
        t += len(world_sizes) - STEPS
        same_bits(res[f"{case_id}|norm{t}"], np.array(norm), f"{case_id} norm {t}")
    # per-tensor and global sums of squares of the parameters, rebuilt from
    # shards, carry grad_sumsq's bits
    per = [_core.grad_sumsq([params[n]]) for n in NAMES]
    same_bits(res[f"{case_id}|sumsq"], np.array(per), f"{case_id} sumsq")
    total = _core.grad_sumsq([params[n] for n in NAMES])
    same_bits(res[f"{case_id}|sumsq_all"], np.array(total), f"{case_id} sumsq_all")
    return opt


def check_state(res, case, opt):
    """The state gathered on rank 0 is the single process's state_dict."""
    case_id = case[0]
    for i, entry in opt.state_dict()["state"].items():
        for key, v in entry.items():
            same_bits(res[f"{case_id}|state|{i}|{key}"], np.asarray(v),
                      f"{case_id} state {i} {key}")


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory):
    """Every rank's results of the trajectory scenario, by world size."""
    done = {}

    def get(P):
        if P not in done:
            out = tmp_path_factory.mktemp(f"trajectory{P}")
            launch(P, "trajectory", out)
            done[P] = results(out, P)
        return done[P]
    return get


@needs_mpi
@pytest.mark.parametrize("P", [1, 2, 3, 4])
def test_trajectories_equal_one_process(trajectories, P):
    """At 4 ranks MPICH's own reduce-scatter (deterministic=False) differs
    from the serial sum in 28 of the 32 cases; Alltoall and the ordered sum
    do not."""
    per_rank = trajectories(P)
    for case in CASES:
        for r, res in enumerate(per_rank):
            opt = check_rank(res, case, [P] * STEPS, r)
        check_state(per_rank[0], case, opt)


@needs_mpi
@pytest.mark.parametrize("level", AVAILABLE_LEVELS)
def test_trajectories_at_every_level_two_threads(tmp_path, level):
    """The ranks' kernels at each instruction-set level, on two threads that
    split even the small shards, against the reference at this process's."""
    launch(2, "trajectory", tmp_path,
           env={"MPI_WORKER_EXEC": f"{level}:2", "OMP_NUM_THREADS": "2"})
    for case in LEVEL_CASES:
        for r, res in enumerate(results(tmp_path, 2)):
            check_rank(res, case, [2] * STEPS, r)


@needs_mpi
def test_state_shrinks_with_ranks(trajectories):
    """Each of 3 ranks holds a third of the state, give or take padding."""
    one, three = trajectories(1)[0], trajectories(3)
    for case in CASES:
        whole = int(one[f"{case[0]}|state_nbytes"])
        parts = [int(r[f"{case[0]}|state_nbytes"]) for r in three]
        assert max(parts) <= whole // 3 + 64 * 8 * 4, (case[0], whole, parts)


@needs_mpi
def test_nondeterministic_ranks_agree(tmp_path):
    """deterministic=False (MPI's reduce-scatter): every rank holds the same
    parameters, close to the serial mean's trajectory."""
    launch(3, "nondeterministic", tmp_path)
    per_rank = results(tmp_path, 3)
    for case in CASES[:8]:
        params, _, _ = reference(case, [3] * STEPS)
        for name in NAMES:
            key = f"{case[0]}|param|{name}"
            for res in per_rank[1:]:
                same_bits(res[key], per_rank[0][key], key)
            np.testing.assert_allclose(per_rank[0][key], params[name], rtol=1e-3, atol=1e-3)


@needs_mpi
def test_resharding_3_to_2_and_consolidate(tmp_path):
    """STEPS steps on 3 ranks, a checkpoint, STEPS more on 2: the single
    process's trajectory with the same means; consolidate() of the
    checkpoint loads into the single-process class."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    launch(3, "save", tmp_path / "a", folder)
    shutil.copy(tmp_path / "a" / "rank0.npz", folder / "params.npz")
    launch(2, "resume", tmp_path / "b", folder)
    per_rank = results(tmp_path / "b", 2)
    for case in RESHARD_CASES:
        for r, res in enumerate(per_rank):
            opt = check_rank(res, case, [3] * STEPS + [2] * STEPS, r)
        check_state(per_rank[0], case, opt)
        # consolidate: the single process's checkpoint after the first STEPS
        _, opt3, _ = reference(case, [3] * STEPS)
        out = tmp_path / f"{case[0]}.npz"
        fastopt.distributed.consolidate(folder / case[0], out)
        fresh = getattr(fastopt, case[1])(dict(zip(NAMES, start(case[3]))), **case[2])
        fresh.load(out)
        want, got = opt3.state_dict(), fresh.state_dict()
        assert got["param_groups"] == want["param_groups"]
        for i, entry in want["state"].items():
            assert set(got["state"][i]) == set(entry)
            for key, v in entry.items():
                same_bits(np.asarray(got["state"][i][key]), np.asarray(v), f"{case[0]} {key}")


@needs_mpi
def test_rank_killed_mid_save_leaves_previous_checkpoint(tmp_path):
    folder = tmp_path / "ckpt"
    proc = launch(2, "kill", tmp_path, folder, expect_ok=False)
    assert proc.returncode != 0
    case = next(c for c in CASES if c[0] == "Adam-float32")
    _, opt, _ = reference(case, [2] * STEPS)        # the first save's state
    sd = fastopt.distributed.consolidate(folder)
    for i, entry in opt.state_dict()["state"].items():
        for key, v in entry.items():
            same_bits(np.asarray(sd["state"][i][key]), np.asarray(v), key)


@needs_mpi
def test_error_on_one_rank_aborts_the_job(tmp_path):
    proc = launch(2, "abort", tmp_path, expect_ok=False)
    assert proc.returncode != 0
    assert "rank 1 of 2 failed in step: ValueError: grad of parameter 'big' has shape" \
        in proc.stderr, proc.stderr
    assert not os.path.exists(tmp_path / "rank0.npz")


@needs_mpi
def test_none_grads_are_zeros_unless_none_on_every_rank(tmp_path):
    """A None gradient is that rank's zeros: the trajectory is one process's
    on the mean with zeros in their place.  A parameter with None on every
    rank raises the same ValueError on every rank, without hanging, and
    leaves the parameters and step counts as they were."""
    P = 3
    launch(P, "nones", tmp_path)
    per_rank = results(tmp_path, P)
    for case in NONE_CASES:
        case_id = case[0]
        want = none_reference(case, P)
        for r, res in enumerate(per_rank):
            assert "the grad of parameter(s) ['w'] is None on every rank" in str(
                res[f"{case_id}|error"]), (case_id, r)
            for name in NAMES:
                same_bits(res[f"{case_id}|param|{name}"], want[name], f"{case_id} {name} {r}")
                same_bits(res[f"{case_id}|after|{name}"], want[name], f"{case_id} after {name}")
        assert set(per_rank[0][f"{case_id}|steps"]) == {STEPS}


@needs_mpi
def test_groups_and_dtypes_as_two_sharded_optimizers(tmp_path):
    """A float32 group and a float64 group with their own hyperparameters,
    one ShardedOptimizer each on one communicator: one process's optimizer
    with the two groups, bit for bit."""
    P = 3
    launch(P, "two_optimizers", tmp_path)
    params = {**dict(zip(NAMES[:2], start("float32")[:2])),
              **dict(zip(NAMES[2:], start("float64")[2:]))}
    one = fastopt.Adam([{"params": {n: params[n] for n in NAMES[:2]}, "lr": 0.01},
                        {"params": {n: params[n] for n in NAMES[2:]}, "lr": 0.003,
                         "weight_decay": 0.1}])
    for t in range(STEPS):
        g = {}
        for dtype, tag, names in (("float32", "two-32", NAMES[:2]),
                                  ("float64", "two-64", NAMES[2:])):
            per_rank = [grads(tag, t, q, dtype) for q in range(P)]
            for j, n in enumerate(NAMES):
                if n in names:
                    total = per_rank[0][j].copy()
                    for q in range(1, P):
                        total += per_rank[q][j]
                    g[n] = total / total.dtype.type(P)
        one.step(g)
    for r, res in enumerate(results(tmp_path, P)):
        for n in NAMES:
            same_bits(res[f"param|{n}"], params[n], f"{n} rank {r}")


@needs_mpi
def test_mismatched_shapes_detected_on_every_rank(tmp_path):
    launch(3, "mismatch", tmp_path)
    for res in results(tmp_path, 3):
        assert str(res["error"]) == ("params must be the same on every rank: rank 2 has "
                                     "parameter 'c' with shape (14,) where rank 0 has "
                                     "'c' with shape (13,)")


# -- one process, no mpiexec -------------------------------------------------

def test_sumsq_blocks_add_up_to_grad_sumsq(rng):
    for dtype in (np.float32, np.float64):
        gs = [rng.standard_normal(n).astype(dtype) for n in (5000, 1, 0, 9000, 4096)]
        blocks = _core.grad_sumsq_blocks(gs)
        assert blocks.size == 2 + 1 + 0 + 3 + 1
        total = 0.0
        for b in blocks:
            total += b
        assert total == _core.grad_sumsq(gs)
        for k, g in enumerate(gs):
            if g.size:
                assert _core.grad_sumsq_blocks([g])[0] == _core.grad_sumsq([g[:4096]])


class _OneRank:
    """The few communicator methods a one-rank ShardedOptimizer calls."""

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1

    def allgather(self, x):
        return [x]


@pytest.mark.parametrize("saved, loaded", [("8bit", None), (None, "8bit"),
                                           ("8bit", "bfloat16"), ("bfloat16", "8bit")])
def test_sharded_checkpoint_between_layouts_is_refused(tmp_path, saved, loaded):
    """8-bit states start every parameter on a block boundary of the flat
    buffers, other state dtypes pack them: a checkpoint of one layout does
    not load into the other, and the loading optimizer keeps its state."""
    from fastopt.distributed import ShardedOptimizer

    def make(state_dtype):
        hyper = {} if state_dtype is None else {"state_dtype": state_dtype}
        return ShardedOptimizer(fastopt.Adam, dict(zip(NAMES, start("float32"))),
                                _OneRank(), **hyper)
    g = dict(zip(NAMES, [np.ones(s, np.float32) for s in SHAPES]))
    first = make(saved)
    first.step(g)
    first.save(tmp_path / "ckpt")
    other = make(loaded)
    with pytest.raises(ValueError) as e:
        other.load(tmp_path / "ckpt")
    assert "load it with the state_dtype it was saved with" in str(e.value)
    assert other.optimizer.state_dict()["state"] == {}


@pytest.mark.parametrize("bad, exc, message", [
    (lambda g: {**g, "big": None}, ValueError,
     "the grad of parameter(s) ['big'] is None on every rank"),
    (lambda g: {**g, "b": g["b"].astype(np.float64)}, TypeError,
     "grad of parameter 'b' has dtype float64"),
    (lambda g: {**g, "c": g["c"][:-1]}, ValueError, "grad of parameter 'c' has shape (12,)"),
    (lambda g: {k: g[k] for k in NAMES[:-1]}, ValueError, "missing ['c']"),
    (lambda g: list(g.values()), TypeError, "grads must be a dict"),
])
def test_bad_grads_change_nothing(bad, exc, message):
    from fastopt.distributed import ShardedOptimizer
    params = dict(zip(NAMES, start("float32")))
    opt = ShardedOptimizer(fastopt.Adam, params, _OneRank())
    before = {k: v.copy() for k, v in params.items()}
    g = dict(zip(NAMES, [np.ones(s, np.float32) for s in SHAPES]))
    with pytest.raises(exc) as e:
        opt.step(bad(g))
    assert message in str(e.value)
    for k in NAMES:
        same_bits(params[k], before[k], k)
    assert opt.optimizer.state_dict()["state"] == {}


@pytest.mark.parametrize("args, exc, message", [
    ((dict, {}), TypeError, "optimizer_class must be a fastopt optimizer class"),
    ((fastopt.Adam, {}), ValueError, "params is empty"),
    ((fastopt.Adam, {"a": np.zeros(3, np.int64)}), TypeError, "parameter 'a' has dtype int64"),
    ((fastopt.Adam, [np.zeros(3, np.float32), np.zeros(2)]), TypeError,
     "one dtype per sharded optimizer"),
    ((fastopt.Adam, [np.zeros(3)], {"state_dtype": "bfloat16"}), ValueError,
     "state_dtype='bfloat16' needs float32 parameters"),
    ((fastopt.LAMB, [np.zeros(3, np.float32)], {"state_dtype": "bfloat16"}), ValueError,
     "state_dtype='bfloat16' is not available for LAMB"),
])
def test_bad_construction(args, exc, message):
    from fastopt.distributed import ShardedOptimizer
    cls, params, *hyper = args
    with pytest.raises(exc) as e:
        ShardedOptimizer(cls, params, comm=_OneRank(), **(hyper[0] if hyper else {}))
    assert message in str(e.value)


def test_one_rank_matches_one_process_with_clipping():
    """In process, one rank: the sharded step is the class's step after
    clip_grad_norm_, bit for bit."""
    from fastopt.distributed import ShardedOptimizer
    case = next(c for c in CASES if c[0] == "Adam-clip-float32")
    params = dict(zip(NAMES, start("float32")))
    opt = ShardedOptimizer(fastopt.Adam, params, _OneRank())
    for t in range(STEPS):
        opt.step(dict(zip(NAMES, mean(case[0], t, 1, "float32"))), max_norm=1.0)
    want, _, _ = reference(case, [1] * STEPS)
    for k in NAMES:
        same_bits(params[k], want[k], k)


def _table(text):
    """The demo table's rows: optimizer -> (lr, final cost, accuracy, published)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("optimizer"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = tuple(cells[1:5])
    return rows


@needs_mpi
def test_demo_distributed_prints_the_single_process_table():
    args = ["demo", "--epochs", "30", "--optimizers", "gd,adam", "--no-plot"]
    env = dict(os.environ, NO_COLOR="1", OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "fastopt", *args], capture_output=True,
                         text=True, timeout=120, env=env)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "fastopt", *args,
                          "--distributed"], capture_output=True, text=True, timeout=120,
                         env=env)
    assert two.returncode == 0, two.stderr
    assert "data-parallel on 2 ranks" in two.stdout
    assert two.stdout.count("optimizer      lr") == 1      # rank 0 alone prints
    assert _table(two.stdout) == _table(one.stdout)
    assert set(_table(one.stdout)) == {"gd", "adam"}


@needs_mpi
@pytest.mark.parametrize("state_dtype", ["bfloat16", "8bit"])
def test_demo_distributed_with_low_precision_states(state_dtype):
    args = ["demo", "--epochs", "30", "--optimizers", "adam", "--no-plot",
            "--state-dtype", state_dtype]
    env = dict(os.environ, NO_COLOR="1", OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "fastopt", *args], capture_output=True,
                         text=True, timeout=120, env=env)
    two = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "fastopt", *args,
                          "--distributed"], capture_output=True, text=True, timeout=120,
                         env=env)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert f"float32, {state_dtype} optimizer states, data-parallel on 2 ranks" in two.stdout
    # stochastic rounding draws the same bits in both; the mean gradient of
    # two slices rounds differently from one product, so the runs agree to
    # the accuracy, not to every digit of the cost
    assert _table(two.stdout)["adam"][2] == _table(one.stdout)["adam"][2]
    bad = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "fastopt", *args,
                          "--dtype", "float64", "--distributed"], capture_output=True,
                         text=True, timeout=120, env=env)
    assert bad.returncode == 2 and "needs float32 weights" in bad.stderr


@needs_mpi
def test_memory_example_prints_state_per_rank():
    env = dict(os.environ, NO_COLOR="1", OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive")
    r = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m",
                        "fastopt.course.sharded_memory", "--width", "40"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "one process: 14,408 bytes of optimizer state" in r.stdout, r.stdout
    assert r.stdout.count("bytes of optimizer state (") == 2
    assert "equal one process's: True" in r.stdout


# -- the two passes of LAMB and LARS taken apart (fastopt._core) --------------

TWO_PASS = [("lamb", dict(lr=0.01, weight_decay=0.1, betas=(0.8, 0.95)), 2),
            ("lars", dict(lr=0.5, momentum=0.9, weight_decay=0.01, nesterov=True), 1)]


def _at(rule, step):
    """The step count argument: LAMB's bias corrections use it, LARS has none."""
    return {"step": step} if rule == "lamb" else {}


def _lanes(squares):
    """A block's sums from its elements' squares, in the kernels' order
    written out element by element: element 8k + j into lane j from 0.0,
    then the lanes left to right."""
    out = []
    for column in squares.T:
        lanes = [0.0] * 8
        for i, x in enumerate(column):
            lanes[i % 8] += float(x)
        total = lanes[0]
        for j in range(1, 8):
            total += lanes[j]
        out.append(total)
    return np.array(out)


@pytest.mark.parametrize("rule, hyper, nstates", TWO_PASS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_two_passes_apart_equal_one_step(exec_env, rng, rule, hyper, nstates, dtype):
    """reduce_ranges over a tensor's blocks, its middle block cut into ranges
    of one element (added over 8 lanes here), the blocks added in order
    from 0.0, then step_given_sums: the functional step, bit for bit, at
    every level and thread count, over three steps so the states carry."""
    B = _core.SUMSQ_BLOCK
    n = 2 * B + 901
    p = rng.standard_normal(n).astype(dtype)
    want, got = p.copy(), p.copy()
    states_w = [np.zeros(n, dtype) for _ in range(nstates)]
    states_g = [np.zeros(n, dtype) for _ in range(nstates)]
    cut = np.arange(B, 2 * B)
    ranges = np.concatenate([[[0, B]], np.stack([cut, cut + 1], axis=1), [[2 * B, n]]])
    for step in (1, 2, 3):
        g = rng.standard_normal(n).astype(dtype)
        getattr(fastopt.functional, rule)(want, g, *states_w, **_at(rule, step), **hyper)
        rows = _core.reduce_ranges(rule, [got], [g], [[s] for s in states_g], [ranges],
                                   **_at(rule, step), **hyper)[0]
        assert rows.shape == (ranges.shape[0], 2)
        sums = np.zeros(2)
        for block in (rows[0], _lanes(rows[1:B + 1]), rows[-1]):
            sums += block
        _core.step_given_sums(rule, [got], [g], [[s] for s in states_g], sums[None, :],
                              **_at(rule, step), **hyper)
        same_bits(got, want, f"{rule} step {step}")
        for a, b in zip(states_g, states_w):
            same_bits(a, b, f"{rule} states step {step}")


@pytest.mark.parametrize("rule, hyper, nstates", TWO_PASS)
def test_given_sums_step_parts_of_a_tensor_as_the_whole(rng, rule, hyper, nstates):
    """The update pass over three parts of one tensor, each given the whole
    tensor's sums, is the whole tensor's update (the sharded case)."""
    n = 5000
    p = rng.standard_normal(n)
    g = rng.standard_normal(n)
    want, got = p.copy(), p.copy()
    states_w = [np.zeros(n) for _ in range(nstates)]
    states_g = [np.zeros(n) for _ in range(nstates)]
    getattr(fastopt.functional, rule)(want, g, *states_w, **_at(rule, 1), **hyper)
    rows = _core.reduce_ranges(rule, [got], [g], [[s] for s in states_g],
                               [np.array([[0, 4096], [4096, n]])], **_at(rule, 1), **hyper)[0]
    sums = 0.0 + rows[0] + rows[1]
    cuts = [(0, 17), (17, 4500), (4500, n)]
    _core.step_given_sums(rule, [got[a:b] for a, b in cuts], [g[a:b] for a, b in cuts],
                          [[s[a:b] for a, b in cuts] for s in states_g],
                          np.repeat(sums[None, :], 3, axis=0), **_at(rule, 1), **hyper)
    same_bits(got, want, rule)


@pytest.mark.parametrize("call, exc, message", [
    (lambda p, g, s: _core.reduce_ranges("lamb", [p], [g], s, [np.array([[0, 9]])], step=1),
     ValueError, "ranges[0] must hold 0 <= start <= stop <= 8"),
    (lambda p, g, s: _core.reduce_ranges("lamb", [p], [g], s, [np.array([[3, 2]])], step=1),
     ValueError, "ranges[0] must hold"),
    (lambda p, g, s: _core.reduce_ranges("lamb", [p], [g], s, [np.array([[0.0, 2.0]])],
                                         step=1), TypeError, "integer array of shape (m, 2)"),
    (lambda p, g, s: _core.reduce_ranges("lamb", [p], [g], s, [np.array([0, 2])], step=1),
     TypeError, "integer array of shape (m, 2)"),
    (lambda p, g, s: _core.reduce_ranges("lamb", [p], [g], s, None, step=1),
     TypeError, "ranges must be a list of 1"),
    (lambda p, g, s: _core.reduce_ranges("lamb", [p], [g], s, [np.array([[0, 8]])], step=1,
                                         lr=-1.0), ValueError, "lr"),
    (lambda p, g, s: _core.reduce_ranges("adam", [p], [g], s, [np.array([[0, 8]])], step=1),
     ValueError, "adam has no per-tensor reductions"),
    (lambda p, g, s: _core.step_given_sums("lamb", [p], [g], s, np.zeros((1, 3)), step=1),
     TypeError, "sums must be a float64 array of shape (1, 2)"),
    (lambda p, g, s: _core.step_given_sums("lamb", [p], [g], s, np.zeros((1, 2), np.float32),
                                           step=1), TypeError, "sums must be a float64"),
    (lambda p, g, s: _core.step_given_sums("lamb", [p], [g], s[:1], np.zeros((1, 2)), step=1),
     ValueError, "exp_avg_sq"),
    (lambda p, g, s: _core.step_given_sums("lamb", [p], [g], s, np.zeros((1, 2)), step=1,
                                           ema=[p]), ValueError, "ema[0] shares memory"),
    (lambda p, g, s: _core.step_given_sums("lamb", [p], [g], s, np.zeros((1, 2)), step=1,
                                           ema=[s[0][0]]), ValueError, "ema[0] shares memory"),
    (lambda p, g, s: _core.step_given_sums("lamb", [p], [g], s, np.zeros((1, 2)), step=1,
                                           ema=[np.zeros(8)]), ValueError,
     "ema[0] must be a writable C-contiguous array"),
    (lambda p, g, s: _core.step_given_sums("lamb", [p], [g], s, np.zeros((1, 2)), step=1,
                                           ema=[np.zeros(8, np.float32)], ema_weight=0.0),
     ValueError, "ema_weight must be in (0, 1]"),
    (lambda p, g, s: _core.step_given_sums("lamb", [p], [g], s, np.zeros((1, 2)), step=1,
                                           ema_weight=0.5), ValueError, "ema_weight without ema"),
])
def test_two_pass_halves_check_everything_first(call, exc, message):
    p, g = np.ones(8, np.float32), np.ones(8, np.float32)
    s = [[np.zeros(8, np.float32)], [np.zeros(8, np.float32)]]
    with pytest.raises(exc) as e:
        call(p, g, s)
    assert message in str(e.value)
    same_bits(p, np.ones(8, np.float32), "param")
    for (v,) in s:
        same_bits(v, np.zeros(8, np.float32), "state")


@pytest.mark.parametrize("cls", [fastopt.LAMB, fastopt.LARS])
def test_lamb_lars_one_rank_in_process(cls):
    """In process, one rank: a sharded LAMB or LARS is the class's step."""
    from fastopt.distributed import ShardedOptimizer
    case = next(c for c in CASES if c[0] == f"{cls.__name__}-float32")
    params = dict(zip(NAMES, start("float32")))
    opt = ShardedOptimizer(cls, params, _OneRank(), **case[2])
    for t in range(STEPS):
        opt.step(dict(zip(NAMES, mean(case[0], t, 1, "float32"))))
    want, ref, _ = reference(case, [1] * STEPS)
    for k in NAMES:
        same_bits(params[k], want[k], k)
    assert opt.optimizer.state_dict()["state"][0]["step"] == STEPS


@pytest.mark.parametrize("cls, hyper, dtype", [
    (fastopt.Adam, {"ema_decay": 0.9, "accumulation_steps": 3}, "float32"),
    (fastopt.LAMB, {"ema_decay": 0.3, "accumulation_steps": 2, "weight_decay": 0.01},
     "float64"),
    (fastopt.LARS, {"accumulation_steps": 2}, "float32"),
])
def test_one_rank_equals_the_class_accumulating_itself(cls, hyper, dtype):
    """In process, one rank: a sharded optimizer with ema_decay and
    accumulation_steps is the class made with them and fed the same calls
    (a None among them), bit for bit: parameters, averages, state and every
    call's return value."""
    from fastopt.distributed import ShardedOptimizer
    k = hyper["accumulation_steps"]
    mine = dict(zip(NAMES, start(dtype)))
    theirs = dict(zip(NAMES, start(dtype)))
    sharded = ShardedOptimizer(cls, mine, _OneRank(), **hyper)
    one = cls(theirs, **hyper)
    for t in range(STEPS):
        for i in range(k):
            g = dict(zip(NAMES, micro("one-rank", t, i, 0, dtype)))
            if t == 1 and i == 0:
                g["b"] = None        # adds nothing to the window
            assert sharded.step(g) == one.step(
                {n: None if v is None else v.copy() for n, v in g.items()})
    for n in NAMES:
        same_bits(mine[n], theirs[n], n)
    if "ema_decay" in hyper:
        with sharded.ema_weights(), one.ema_weights():
            for n in NAMES:
                same_bits(mine[n], theirs[n], f"ema {n}")
                same_bits(sharded.params[n], theirs[n], f"ema view {n}")
        for n in NAMES:
            same_bits(mine[n], theirs[n], f"{n} after ema_weights")
    want = one.state_dict()["state"]
    got = sharded.consolidated_state_dict()["state"]
    for i, entry in want.items():
        assert set(got[i]) == set(entry)
        for key, v in entry.items():
            same_bits(np.asarray(got[i][key]), np.asarray(v), f"{i} {key}")


def test_accumulation_windows_and_ema_misuse(tmp_path):
    from fastopt.distributed import ShardedOptimizer
    params = dict(zip(NAMES, start("float32")))
    opt = ShardedOptimizer(fastopt.Adam, params, _OneRank(), ema_decay=0.5,
                           accumulation_steps=2)
    g = dict(zip(NAMES, grads("misuse", 0, 0, "float32")))
    with opt.ema_weights():      # no average yet: the parameters stay
        for n, v in zip(NAMES, start("float32")):
            same_bits(params[n], v, n)
    assert opt.step(g) is False
    with pytest.raises(ValueError, match="middle of an accumulation window"):
        opt.save(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()
    assert opt.step(g) is True
    with opt.ema_weights():
        with pytest.raises(RuntimeError, match="inside ema_weights"):
            opt.step(g)
        with pytest.raises(RuntimeError, match="already active"):
            with opt.ema_weights():
                pass
    with pytest.raises(ValueError, match="keeps no averages"):
        with ShardedOptimizer(fastopt.Adam, params, _OneRank()).ema_weights():
            pass


@pytest.mark.parametrize("kw, exc, message", [
    (dict(accumulation_steps=0), ValueError, "accumulation_steps must be an int >= 1"),
    (dict(accumulation_steps=True), TypeError, "accumulation_steps must be an int"),
    (dict(accumulation_steps=2.0), TypeError, "accumulation_steps must be an int"),
    (dict(ema_decay=1.5), ValueError, "ema_decay"),
    (dict(ema_decay="0.9"), TypeError, "ema_decay"),
])
def test_bad_ema_and_accumulation(kw, exc, message):
    from fastopt.distributed import ShardedOptimizer
    with pytest.raises(exc, match=message):
        ShardedOptimizer(fastopt.Adam, [np.zeros(3, np.float32)], _OneRank(), **kw)
