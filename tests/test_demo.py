"""The demo: training runs, the command's tables, the figure, bad options."""
import io
import re

import numpy as np
import pytest

from fastopt.__main__ import main as cli
from fastopt.course import demo
from fastopt.course.datasets import course_moons
from fastopt.course.models import he_init


@pytest.fixture(scope="module")
def moons():
    X, Y = course_moons()
    return X, Y, he_init(demo.LAYER_DIMS, random_state=3)


def run_cli(capsys, *args):
    status = cli(["demo", *args])
    out = capsys.readouterr().out
    assert status == 0
    return out


def tables(out):
    """Every table in ``out`` as (header, rows), cells split on 2+ spaces."""
    lines = out.splitlines()
    found = []
    for i, line in enumerate(lines):
        if i and re.fullmatch(r"-+(  -+)+", line):
            header = re.split(r"\s{2,}", lines[i - 1].strip())
            rows = []
            for row in lines[i + 1:]:
                if not row.strip():
                    break
                rows.append(re.split(r"\s{2,}", row.strip()))
            found.append((header, rows))
    return found


# ---------------------------------------------------------------------------
# Training


def test_adam_ends_below_gd(moons):
    X, Y, init = moons
    gd = demo.train("gd", X, Y, init, epochs=300)
    adam = demo.train("adam", X, Y, init, epochs=300)
    assert adam.final_cost < gd.final_cost
    for run in (gd, adam):
        assert run.costs.shape == (300,)
        assert np.all(np.isfinite(run.costs))
        assert 0.0 <= run.accuracy <= 1.0
        assert run.steps == 300 * 5  # 300 = 4·64 + 44: five steps per epoch
        assert 0.0 < run.step_time < run.wall_time


def test_runs_start_from_the_same_weights(moons):
    X, Y, init = moons
    before = {k: v.copy() for k, v in init.items()}
    first = demo.train("momentum", X, Y, init, epochs=20)
    second = demo.train("momentum", X, Y, init, epochs=20)
    for k in init:
        np.testing.assert_array_equal(init[k], before[k])
        np.testing.assert_array_equal(first.model.params[k], second.model.params[k])
    np.testing.assert_array_equal(first.costs, second.costs)


def test_float32_run(moons):
    X, Y = course_moons(dtype=np.float32)
    init = he_init(demo.LAYER_DIMS, random_state=3, dtype=np.float32)
    run = demo.train("rmsprop", X, Y, init, epochs=50)
    assert run.model.params["W1"].dtype == np.float32
    assert run.costs[-1] < run.costs[0]


class _Recorder:
    """Stand-in optimizer that records the rate of every step."""

    def __init__(self, params, lr):
        self.param_groups = [{"lr": lr}]
        self.rates = []
        _Recorder.last = self

    def step(self, grads):
        self.rates.append(self.param_groups[0]["lr"])


def test_lr_decay_follows_the_course(moons, monkeypatch):
    # The course sets lr = schedule(lr0, i) at the end of epoch i.
    X, Y, init = moons
    spec = demo.OptimizerSpec("recorder", 1.0, 0.6, _Recorder)
    monkeypatch.setitem(demo.OPTIMIZERS, "recorder", spec)
    monkeypatch.setattr(demo, "TIME_INTERVAL", 2)
    demo.train("recorder", X, Y, init, epochs=6, lr_decay=True)
    per_epoch = np.array(_Recorder.last.rates).reshape(6, 5)
    assert np.all(per_epoch == per_epoch[:, :1])
    np.testing.assert_allclose(per_epoch[:, 0], [0.6, 0.6, 0.6, 0.3, 0.3, 0.2])


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stream, drawn", [(_Terminal(), True), (io.StringIO(), False)],
                         ids=["tty", "pipe"])
def test_progress_bar_only_on_a_terminal(stream, drawn):
    bar = demo._Progress("adam", 250, stream=stream)
    for done in range(1, 251):
        bar(done)
    bar.close()
    text = stream.getvalue()
    assert ("250/250 epochs" in text) is drawn
    assert bool(text) is drawn
    if drawn:  # redrawn about every 1 %, not every epoch
        assert text.count("\r") <= 130


# ---------------------------------------------------------------------------
# The command


def test_command_prints_the_table(capsys):
    out = run_cli(capsys, "--no-plot", "--epochs", "30")
    [(header, rows)] = tables(out)
    assert header == ["optimizer", "lr", "final cost", "accuracy", "published",
                      "wall time", "in opt.step"]
    assert [row[0] for row in rows] == ["gd", "momentum", "rmsprop", "adam"]
    for row in rows:
        assert len(row) == len(header)
        assert float(row[1]) == pytest.approx(0.0007)
        assert float(row[2]) > 0
        assert 0.0 <= float(row[3]) <= 1.0
        assert row[4] == "-"  # 30 epochs is not a published setting
        assert row[5].endswith(" s") and float(row[5][:-2]) >= 0
        assert row[6].endswith(" %") and 0 <= float(row[6][:-2]) <= 100
    assert "figure" not in out


def test_command_options(capsys):
    out = run_cli(capsys, "--no-plot", "--epochs", "5", "--optimizers", "adam,gd",
                  "--batch-size", "100", "--lr", "0.01", "--seed", "1",
                  "--dtype", "float32", "--lr-decay")
    [(header, rows)] = tables(out)
    assert [row[0] for row in rows] == ["adam", "gd"]
    assert all(float(row[1]) == 0.01 for row in rows)
    assert "float32" in out and "batches of 100" in out and "decay" in out


def test_compare_batching(capsys):
    out = run_cli(capsys, "--no-plot", "--epochs", "3", "--optimizers", "gd",
                  "--compare-batching")
    [_, (header, rows)] = tables(out)
    assert header[:3] == ["batching", "batch size", "steps/epoch"]
    assert [row[:3] for row in rows] == [["batch", "300", "1"],
                                         ["mini-batch", "64", "5"],
                                         ["stochastic", "1", "300"]]
    for row in rows:
        assert 0.0 <= float(row[4]) <= 1.0


def test_plot_written(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "demo.png"
    out = run_cli(capsys, "--epochs", "10", "--optimizers", "gd,adam",
                  "--compare-batching", "--plot", str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(path) in out


def test_without_matplotlib(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "_load_pyplot", lambda: None)
    path = tmp_path / "demo.png"
    out = run_cli(capsys, "--epochs", "2", "--optimizers", "gd", "--plot", str(path))
    assert "pip install" in out and "matplotlib" in out
    assert tables(out)
    assert not path.exists()


BAD_OPTIONS = [
    (["--optimizers", "sgd"], "unknown optimizer 'sgd'"),
    (["--optimizers", ","], "at least one optimizer"),
    (["--optimizers", "gd,gd"], "named once"),
    (["--epochs", "0"], "must be >= 1"),
    (["--epochs", "ten"], "expected an integer"),
    (["--batch-size", "-4"], "must be >= 1"),
    (["--lr", "0"], "must be a finite number > 0"),
    (["--lr", "nan"], "must be a finite number > 0"),
    (["--lr", "fast"], "expected a number"),
    (["--seed", "-1"], "must be in [0, 2**32)"),
    (["--dtype", "float16"], "invalid choice"),
    (["--bogus"], "unrecognized arguments"),
]


@pytest.mark.parametrize("args, message", BAD_OPTIONS,
                         ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_options_rejected(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        cli(["demo", "--no-plot", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("state_dtype", ["bfloat16", "8bit"])
def test_low_precision_states_train_like_float32(capsys, state_dtype):
    """--state-dtype runs on float32 weights and lands where the float32 run
    lands (same accuracy after a short run), with a finite cost."""
    X, Y = course_moons(dtype=np.float32)
    init = he_init(demo.LAYER_DIMS, random_state=3, dtype=np.float32)
    f32 = demo.train("adam", X, Y, init, epochs=200)
    low = demo.train("adam", X, Y, init, epochs=200, state_dtype=state_dtype)
    assert low.model.params["W1"].dtype == np.float32
    assert abs(low.accuracy - f32.accuracy) <= 0.02
    assert not np.array_equal(low.model.params["W1"], f32.model.params["W1"])
    assert np.isfinite(low.costs).all()
    out = run_cli(capsys, "--state-dtype", state_dtype, "--epochs", "20",
                  "--optimizers", "adam", "--no-plot")
    assert f"float32, {state_dtype} optimizer states" in out
    assert cli(["demo", "--state-dtype", state_dtype, "--dtype", "float64",
                "--no-plot"]) == 2
