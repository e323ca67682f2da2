"""Train the seed's moons classifier with GD, momentum, RMSProp and Adam.

The experiment of the seed article (Deep Learning Specialization, course 2,
week 2): the 300 noisy moon points of ``course_moons``, the network
[2, 5, 2, 1] (LINEAR→RELU→LINEAR→RELU→LINEAR→SIGMOID) with He initial
weights drawn from seed 3, mini-batches of 64 reshuffled before every epoch
with the course's seeds 11, 12, …, and one optimizer step per mini-batch.
Every optimizer starts from the same initial weights.

Course settings: 10,000 epochs, lr = 0.0007, momentum β = 0.9,
Adam β1 = 0.9, β2 = 0.999, ε = 1e-8 (Adam's t counts mini-batches).
RMSProp: the course has no RMSProp run and so no published number; it runs
here with torch's defaults alpha = 0.99, eps = 1e-8 and the course's rate.

With --lr-decay the rate follows the course's scheduled decay
lr = lr0 / (1 + decay_rate·floor(epoch / time_interval)), decay_rate = 1,
time_interval = 1000, over 5,000 epochs, from lr0 = 0.1 (GD, momentum) and
0.01 (Adam, RMSProp). As in the course, the rate is recomputed at the end of
epoch i from i, so epoch e trains with the rate of e − 1.

The cost of an epoch is the summed cross-entropy of its mini-batches divided
by the number of examples. The table gives, per optimizer, the final cost,
the training accuracy, the wall time of the run and the share of it spent
in opt.step, and, where the settings are the course's, its published
accuracy (GD 0.7967, momentum 0.7967, Adam 0.94; with --epochs 5000: 0.7167,
0.7167, 0.9433; with --lr-decay: 0.9433, 0.9533, 0.94).

--compare-batching also trains plain gradient descent (lr 0.0007 unless
--lr) with batches of the whole set, of --batch-size and of one example, for
the same number of epochs each, and compares cost curves and time per epoch.
That budget is --epochs if given, else 1,000: stochastic descent takes 300
steps per epoch, 60 times the mini-batch run's work.

Figures (cost curves and each optimizer's decision boundary) need
matplotlib: pip install "fastopt[plot]".
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from ..lr_scheduler import scheduled_inverse_time_decay
from .data import course_minibatches
from .datasets import course_moons
from .models import MLP, he_init

__all__ = [
    "OPTIMIZERS",
    "Run",
    "add_arguments",
    "format_table",
    "main",
    "make_optimizer",
    "train",
]

LAYER_DIMS = (2, 5, 2, 1)
COURSE_LR = 0.0007
COURSE_EPOCHS = 10_000
DECAY_EPOCHS = 5_000
DECAY_RATE = 1.0
TIME_INTERVAL = 1000
DEFAULT_PLOT = "fastopt-demo.png"
BATCHING_EPOCHS = 1000  # --compare-batching without --epochs


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer of the demo: its label, its rates and how to build it."""

    label: str
    lr: float  # the course's constant rate
    decay_lr0: float  # starting rate with --lr-decay
    build: Callable  # (params, lr) -> optimizer


def _sgd(params, lr, **extra):
    from ..optim import SGD

    return SGD(params, lr=lr, **extra)


def _momentum(params, lr, **extra):
    from ..optim import Momentum

    return Momentum(params, lr=lr, beta=0.9, **extra)


def _rmsprop(params, lr, **extra):
    from ..optim import RMSprop

    return RMSprop(params, lr=lr, alpha=0.99, eps=1e-8, **extra)


def _adam(params, lr, **extra):
    from ..optim import Adam

    return Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, **extra)


#: The optimizers, in the order they run and are reported.
OPTIMIZERS = {
    "gd": OptimizerSpec("gradient descent", COURSE_LR, 0.1, _sgd),
    "momentum": OptimizerSpec("momentum", COURSE_LR, 0.1, _momentum),
    "rmsprop": OptimizerSpec("RMSProp", COURSE_LR, 0.01, _rmsprop),
    "adam": OptimizerSpec("Adam", COURSE_LR, 0.01, _adam),
}

#: The course's training accuracies, by (lr decay, epochs); only shown when
#: every other setting is the course's.
PUBLISHED = {
    (False, 10_000): {"gd": 0.7967, "momentum": 0.7967, "adam": 0.94},
    (False, 5_000): {"gd": 0.7167, "momentum": 0.7167, "adam": 0.9433},
    (True, 5_000): {"gd": 0.9433, "momentum": 0.9533, "adam": 0.94},
}


def make_optimizer(name: str, params, lr: float, **extra):
    """The optimizer ``name`` (a key of :data:`OPTIMIZERS`) over ``params``;
    ``extra`` goes to its constructor (``state_dtype=...``)."""
    return OPTIMIZERS[name].build(params, lr, **extra)


@dataclasses.dataclass
class Run:
    """The outcome of one training run."""

    name: str
    label: str
    batch_size: int
    lr: float
    costs: np.ndarray  # cost of every epoch, epoch total / m
    accuracy: float
    wall_time: float  # seconds for the whole run, progress bar excluded
    step_time: float  # seconds inside opt.step
    steps: int
    model: MLP

    @property
    def final_cost(self) -> float:
        return float(self.costs[-1])

    @property
    def step_share(self) -> float:
        return self.step_time / self.wall_time if self.wall_time > 0 else 0.0


def train(
    name: str,
    X: np.ndarray,
    Y: np.ndarray,
    init_params: dict,
    *,
    epochs: int = COURSE_EPOCHS,
    batch_size: int = 64,
    lr: float | None = None,
    lr_decay: bool = False,
    progress: Callable[[int], None] | None = None,
    label: str | None = None,
    state_dtype: str | None = None,
) -> Run:
    """Train a fresh copy of ``init_params`` with optimizer ``name``, as the course does.

    Epoch ``e`` (from 0) shuffles with the course's seed ``11 + e`` and takes
    one optimizer step per mini-batch. ``lr`` defaults to the course's rate,
    or with ``lr_decay`` to the optimizer's starting rate of the course's
    decay run. ``progress(epoch)`` is called after every epoch.
    ``state_dtype`` is the optimizer's (None: the weights' dtype).
    """
    spec = OPTIMIZERS[name]
    if lr is None:
        lr = spec.decay_lr0 if lr_decay else spec.lr
    model = MLP(LAYER_DIMS, params={k: v.copy() for k, v in init_params.items()})
    # The optimizer's keys are the parameters' names; the model writes the
    # gradients into the same arrays at every step.
    grads = {p: model.grads[g] for p, g in zip(model.param_names, model.grad_names)}
    opt = make_optimizer(name, model.params, lr,
                         **({} if state_dtype is None else {"state_dtype": state_dtype}))
    group = opt.param_groups[0]
    Y = np.asarray(Y, dtype=model.dtype)  # batches then need no conversion
    m = X.shape[1]
    costs = np.empty(epochs)
    forward_backward = model.forward_backward
    step = opt.step
    clock = time.perf_counter
    step_time = 0.0
    steps = 0

    # float32 weights saturate the output sigmoid at exactly 0 or 1 (exp
    # overflows, log(0) in the cost, whose limit the model takes): expected
    # arithmetic of the course's network, not something to warn about
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        start = clock()
        for epoch in range(epochs):
            total = 0.0
            for X_batch, Y_batch in course_minibatches(X, Y, epoch, batch_size):
                total += forward_backward(X_batch, Y_batch)
                t0 = clock()
                step(grads)
                step_time += clock() - t0
                steps += 1
            costs[epoch] = total / m
            if lr_decay:
                # The course recomputes the rate after epoch i from i.
                group["lr"] = scheduled_inverse_time_decay(lr, epoch, DECAY_RATE, TIME_INTERVAL)
            if progress is not None:
                pause = clock()
                progress(epoch + 1)
                start += clock() - pause
        wall = clock() - start

    return Run(
        name=name,
        label=spec.label if label is None else label,
        batch_size=min(batch_size, m),
        lr=lr,
        costs=costs,
        accuracy=model.accuracy(X, Y),
        wall_time=wall,
        step_time=step_time,
        steps=steps,
        model=model,
    )


class _Progress:
    """A one-line text progress bar on stderr, drawn only on a terminal."""

    WIDTH = 30

    def __init__(self, label: str, total: int, stream=None):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = _isatty(self.stream)
        self.label = label
        self.total = total
        self.every = max(1, total // 100)
        self.start = time.perf_counter()

    def __call__(self, done: int) -> None:
        if self.enabled and (done % self.every == 0 or done == self.total):
            filled = self.WIDTH * done // self.total
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            elapsed = time.perf_counter() - self.start
            self.stream.write(
                f"\r{self.label:<18} [{bar}] {done}/{self.total} epochs {elapsed:6.1f} s"
            )
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned first column, right-aligned others, two spaces apart."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells):
        out = [str(cells[0]).ljust(widths[0])]
        out += [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _optimizer_table(runs: Sequence[Run], published: dict) -> str:
    header = ["optimizer", "lr", "final cost", "accuracy", "published",
              "wall time", "in opt.step"]
    rows = []
    for run in runs:
        ref = published.get(run.name)
        rows.append([
            run.name,
            f"{run.lr:g}",
            f"{run.final_cost:.6f}",
            f"{run.accuracy:.4f}",
            "-" if ref is None else f"{ref:.4f}",
            f"{run.wall_time:.2f} s",
            f"{100 * run.step_share:.1f} %",
        ])
    return format_table(header, rows)


def _batching_table(runs: Sequence[Run]) -> str:
    header = ["batching", "batch size", "steps/epoch", "final cost", "accuracy",
              "time/epoch", "in opt.step"]
    rows = []
    for run in runs:
        epochs = len(run.costs)
        rows.append([
            run.label,
            str(run.batch_size),
            str(run.steps // epochs),
            f"{run.final_cost:.6f}",
            f"{run.accuracy:.4f}",
            f"{1e3 * run.wall_time / epochs:.3f} ms",
            f"{100 * run.step_share:.1f} %",
        ])
    return format_table(header, rows)


# ---------------------------------------------------------------------------
# Figure


def _load_pyplot():
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    return plt


def _decision_boundary(ax, model: MLP, X: np.ndarray, Y: np.ndarray) -> None:
    pad = 0.5
    x0 = np.linspace(X[0].min() - pad, X[0].max() + pad, 300)
    x1 = np.linspace(X[1].min() - pad, X[1].max() + pad, 300)
    g0, g1 = np.meshgrid(x0, x1)
    grid = np.vstack([g0.ravel(), g1.ravel()])
    with np.errstate(over="ignore"):   # a saturated sigmoid is exactly 0
        prob = model.forward(grid).reshape(g0.shape).copy()
    ax.contourf(g0, g1, prob, levels=[0.0, 0.5, 1.0], colors=["#f4b6b0", "#b3cde3"],
                alpha=0.8)
    ax.contour(g0, g1, prob, levels=[0.5], colors="k", linewidths=0.8)
    labels = np.asarray(Y).ravel()
    for cls, color in ((0, "#d7301f"), (1, "#2166ac")):
        pts = X[:, labels == cls]
        ax.scatter(pts[0], pts[1], s=9, c=color, edgecolors="none",
                   label=f"class {cls}")
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def plot(path: str, runs: Sequence[Run], X, Y, batching: Sequence[Run] = (),
         title: str = "") -> str:
    """Write cost curves and decision boundaries to ``path``; return the path."""
    plt = _load_pyplot()
    n = len(runs)
    top = 2 if batching else 1
    cols = max(n, 2 * top)
    fig = plt.figure(figsize=(3.4 * cols, 7.2), layout="constrained")
    grid = fig.add_gridspec(2, cols, height_ratios=[1, 1.05])

    span = cols // top
    ax = fig.add_subplot(grid[0, :span])
    for i, run in enumerate(runs):
        ax.plot(np.arange(1, len(run.costs) + 1), run.costs, lw=1.2,
                ls=("-", "--", "-.", ":")[i % 4],
                label=f"{run.name} (acc {run.accuracy:.4f})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cost (epoch total / m)")
    ax.set_title("cost per epoch by optimizer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

    if batching:
        ax = fig.add_subplot(grid[0, span:])
        for run in batching:
            per_epoch = 1e3 * run.wall_time / len(run.costs)
            ax.plot(np.arange(1, len(run.costs) + 1), run.costs, lw=1.0,
                    label=f"{run.label} (b={run.batch_size}, {per_epoch:.2f} ms/epoch)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("cost (epoch total / m)")
        ax.set_title("gradient descent: batch, mini-batch, stochastic")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    for i, run in enumerate(runs):
        ax = fig.add_subplot(grid[1, i])
        _decision_boundary(ax, run.model, X, Y)
        ax.set_title(f"{run.label}: accuracy {run.accuracy:.4f}", fontsize=10)
        if i == 0:
            ax.legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------
# Command line


def _optimizer_list(text: str) -> list[str]:
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one optimizer")
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown optimizer {unknown[0]!r}; choose among {','.join(OPTIMIZERS)}"
        )
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError("each optimizer may be named once")
    return names


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32), got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser``."""
    parser.add_argument(
        "--optimizers", type=_optimizer_list, default=list(OPTIMIZERS),
        metavar="LIST",
        help="comma-separated optimizers among gd,momentum,rmsprop,adam "
             "(default: all four)")
    parser.add_argument(
        "--epochs", type=_positive_int, default=None,
        help=f"epochs per run (default {COURSE_EPOCHS}; {DECAY_EPOCHS} with --lr-decay)")
    parser.add_argument(
        "--batch-size", type=_positive_int, default=64,
        help="examples per mini-batch (default 64)")
    parser.add_argument(
        "--lr", type=_positive_float, default=None,
        help=f"learning rate of every optimizer (default {COURSE_LR}; with "
             "--lr-decay the starting rate, default 0.1 for gd and momentum, "
             "0.01 for rmsprop and adam)")
    parser.add_argument(
        "--seed", type=_seed, default=3,
        help="seed of the He initial weights (default 3, the course's)")
    parser.add_argument(
        "--dtype", choices=("float32", "float64"), default=None,
        help="floating-point type of data, weights and optimizer state "
             "(default float64; float32 with --state-dtype)")
    parser.add_argument(
        "--state-dtype", choices=("bfloat16", "8bit"), default=None,
        help="keep the optimizers' states in bfloat16 or 8-bit blocks (float32 "
             "weights; stochastic rounding, see fastopt.Optimizer)")
    parser.add_argument(
        "--lr-decay", action="store_true",
        help="the course's scheduled decay lr0/(1 + floor(epoch/1000))")
    parser.add_argument(
        "--compare-batching", action="store_true",
        help="also train gradient descent with batch, mini-batch and "
             "stochastic (size 1) batches and compare them, for --epochs "
             f"epochs (default {BATCHING_EPOCHS})")
    parser.add_argument(
        "--plot", metavar="PATH", default=DEFAULT_PLOT,
        help=f"where to write the figure (default ./{DEFAULT_PLOT}); needs matplotlib")
    parser.add_argument(
        "--no-plot", dest="plot", action="store_const", const=None,
        help="write no figure")
    parser.add_argument(
        "--distributed", action="store_true",
        help="train data-parallel over the MPI ranks of mpiexec with the "
             "optimizer state sharded (fastopt.distributed; needs "
             "fastopt[mpi]); rank 0 prints the table; no figure")


def weights_dtype(args: argparse.Namespace) -> np.dtype | None:
    """The weights' dtype of ``args``: ``--dtype``, by default float64, or
    float32 with ``--state-dtype``; None (with a message) for low-precision
    states on float64 weights."""
    state_dtype = getattr(args, "state_dtype", None)
    dtype = np.dtype(args.dtype or ("float64" if state_dtype is None else "float32"))
    if state_dtype is not None and dtype != np.float32:
        print(f"--state-dtype {state_dtype} needs float32 weights (--dtype float32)",
              file=sys.stderr)
        return None
    return dtype


@dataclasses.dataclass
class Setup:
    """What a demo run takes from its arguments: the epochs, the states'
    dtype, the data (in the weights' dtype), the first weights, the course's numbers
    to show beside the runs (none outside its settings), the words naming
    the lr decay (if any) and the header line describing the run."""
    epochs: int
    state_dtype: str | None
    X: np.ndarray
    Y: np.ndarray
    init_params: dict
    published: dict
    decay: str
    header: str


def setup(args: argparse.Namespace) -> Setup | None:
    """The run ``args`` describe; None (with a message) when the weights'
    dtype is refused (weights_dtype)."""
    epochs = args.epochs
    if epochs is None:
        epochs = DECAY_EPOCHS if args.lr_decay else COURSE_EPOCHS
    state_dtype = getattr(args, "state_dtype", None)
    dtype = weights_dtype(args)
    if dtype is None:
        return None
    X, Y = course_moons(dtype=dtype)
    init_params = he_init(LAYER_DIMS, random_state=args.seed, dtype=dtype)
    # the course's numbers are shown beside runs in its settings, and beside
    # float32 runs with bfloat16 or 8-bit states, whose point is to
    # reproduce them
    course_settings = (args.lr is None and args.batch_size == 64 and args.seed == 3
                       and (dtype == np.float64 or state_dtype is not None))
    published = PUBLISHED.get((args.lr_decay, epochs), {}) if course_settings else {}
    decay = " with the course's lr decay" if args.lr_decay else ""
    states = f", {state_dtype} optimizer states" if state_dtype else ""
    header = (f"moons {X.shape[1]} points, network {list(LAYER_DIMS)}, {epochs} epochs, "
              f"batches of {args.batch_size}, {dtype.name}{states}{decay}")
    return Setup(epochs, state_dtype, X, Y, init_params, published, decay, header)


def main(args: argparse.Namespace) -> int:
    """Run the demo for parsed ``args``; return the exit status."""
    if getattr(args, "distributed", False):
        from .distributed_demo import main as distributed_main

        return distributed_main(args)
    cfg = setup(args)
    if cfg is None:
        return 2
    epochs, state_dtype = cfg.epochs, cfg.state_dtype
    X, Y, init_params, published = cfg.X, cfg.Y, cfg.init_params, cfg.published
    print(cfg.header)

    runs = []
    for name in args.optimizers:
        bar = _Progress(name, epochs)
        try:
            runs.append(train(name, X, Y, init_params, epochs=epochs,
                              batch_size=args.batch_size, lr=args.lr,
                              lr_decay=args.lr_decay, progress=bar,
                              state_dtype=state_dtype))
        finally:
            bar.close()
    print()
    print(_optimizer_table(runs, published))
    total = sum(run.wall_time for run in runs)
    print(f"\ntotal training time {total:.2f} s")

    batching = []
    if args.compare_batching:
        lr = COURSE_LR if args.lr is None else args.lr
        budget = BATCHING_EPOCHS if args.epochs is None else epochs
        m = X.shape[1]
        for label, size in (("batch", m), ("mini-batch", args.batch_size),
                            ("stochastic", 1)):
            bar = _Progress(label, budget)
            try:
                batching.append(train("gd", X, Y, init_params, epochs=budget,
                                      batch_size=size, lr=lr, progress=bar,
                                      label=label))
            finally:
                bar.close()
        print(f"\ngradient descent, lr {lr:g}, {budget} epochs each:\n")
        print(_batching_table(batching))

    if args.plot is not None:
        if _load_pyplot() is None:
            print('\nno figure: matplotlib is not installed; pip install "fastopt[plot]" '
                  "(or matplotlib) to get one")
        else:
            title = (f"moons, [2, 5, 2, 1], {epochs} epochs, batch {args.batch_size}"
                     f"{cfg.decay}")
            path = plot(args.plot, runs, X, Y, batching, title=title)
            print(f"\nfigure written to {os.path.abspath(path)}")
    return 0
