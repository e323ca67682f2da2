"""Checkpoints under SIGKILL: a child steps and saves to one path in a loop;
the parent kills it at random moments, then checks that the file loads as a
complete state the child produced (the state after exactly k steps, for the
k the child last reported or the one after), never a mix.

Damaged, truncated, foreign and wrong-version files are covered by
test_checkpoint.py."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

from fastopt import checkpoint
from fastopt.optim import Adam

CHILD = textwrap.dedent("""
    import os, sys
    import numpy as np
    sys.path[:0] = [{testdir!r}]
    from test_checkpoint_kill import make, grads
    path, slow = sys.argv[1], sys.argv[2] == "slow"
    if slow:                      # stay inside the write until killed
        real = os.fsync
        def fsync(fd):
            print("in-write", flush=True)
            sys.stdin.read()      # the parent never writes; EOF if it dies
            real(fd)
        os.fsync = fsync
    params, opt = make()
    print("ready", flush=True)
    t = 0
    while True:
        t += 1
        opt.step(grads(params, t))
        opt.save(path)
        print("saved", t, flush=True)
""")


def make():
    rng = np.random.default_rng(5)
    params = {"w": rng.standard_normal(60_000), "b": rng.standard_normal(30_000).astype(np.float32),
              "c": rng.standard_normal(7)}
    return params, Adam(params, lr=1e-3, amsgrad=True)


def grads(params, t):
    rng = np.random.default_rng(t)
    g = {k: rng.standard_normal(p.shape).astype(p.dtype) for k, p in params.items()}
    if t % 3 == 0:
        g["c"] = None
    return g


def _state_bytes(sd):
    return {i: {k: v.tobytes() if isinstance(v, np.ndarray) else v for k, v in e.items()}
            for i, e in sd["state"].items()}


def _spawn(path, mode):
    return subprocess.Popen([sys.executable, "-c", CHILD.format(
        testdir=os.path.dirname(__file__)), str(path), mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _reap(child):
    child.send_signal(signal.SIGKILL)
    out = child.stdout.read()
    child.wait()
    child.stdin.close()
    child.stdout.close()
    return out


def _temp_files(folder):
    return [f for f in os.listdir(folder) if f.endswith(".tmp")]


def test_killed_saves_leave_an_old_or_new_complete_checkpoint(tmp_path):
    rng = np.random.default_rng(int(time.time()))
    path = tmp_path / "opt.npz"
    saves = kills = 0
    checked = []
    while saves < 200 or kills < 12:
        child = _spawn(path, "fast")
        assert child.stdout.readline().strip() == "ready"
        # The kill lands at a random point of a random cycle (step and save):
        # after 1 to 30 reported saves, a random fraction of the last cycle's
        # length into the next.  Measured on the child, so the same on a
        # fast or a slow machine.
        lines, before = [], time.perf_counter()
        for _ in range(rng.integers(1, 31)):
            lines.append(child.stdout.readline())
            assert lines[-1].startswith("saved"), lines[-1]
            now = time.perf_counter()
            cycle, before = now - before, now
        time.sleep(rng.uniform(0, cycle))
        out = _reap(child)
        kills += 1
        # only whole lines count: the kill may cut the child's last report
        # short (seen as a bare "saved"), which then was not made
        done = [int(line.split()[1]) for line in lines + out.split("\n")[:-1]
                if line.startswith("saved ")]
        saves += len(done)
        sd = checkpoint.read_state(path)        # complete: checksum, format, version
        k = sd["state"][0]["step"]
        last = done[-1]
        # the save of step last+1 may have been renamed into place just
        # before the kill, after which the child could not report it
        assert k in (last, last + 1), (k, last)
        params, opt = make()
        for t in range(1, k + 1):
            opt.step(grads(params, t))
        assert _state_bytes(sd) == _state_bytes(opt.state_dict()), f"mixed state at k={k}"
        fresh_params, fresh = make()
        fresh.load(path)                        # and the optimizer accepts it
        checked.append(k)
        path.unlink()                  # next child starts from step 1 again
    before_cleanup = len(_temp_files(tmp_path))
    params, opt = make()                # the next save and load clear what
    opt.step(grads(params, 1))          # killed writers left behind
    opt.save(path)
    opt.load(path)
    print(f"{kills} kills, {saves} completed saves, checkpoints verified at steps {checked}, "
          f"temp files of killed writers: {before_cleanup}, after a save and a load: "
          f"{len(_temp_files(tmp_path))}")
    assert saves >= 200 and len(checked) == kills
    assert _temp_files(tmp_path) == []


def test_a_write_killed_mid_file_leaves_no_temp_file(tmp_path):
    """A later save or load removes the temporary file of a killed writer."""
    path = tmp_path / "opt.npz"
    child = _spawn(path, "slow")
    assert child.stdout.readline().strip() == "ready"
    assert child.stdout.readline().strip() == "in-write"   # inside write_state
    _reap(child)
    assert not path.exists()
    params, opt = make()
    opt.step(grads(params, 1))
    opt.save(path)                             # a later save
    opt.load(path)                             # and a load
    assert _temp_files(tmp_path) == []
