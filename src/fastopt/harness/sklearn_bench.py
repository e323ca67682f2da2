"""fit() of scikit-learn's MLPClassifier, stock against fastopt.sklearn.

``python -m fastopt bench --sklearn``: a synthetic classification set of
20,000 samples x 100 features (make_classification, 10 classes), for each
hidden-layer shape, batch size, dtype and solver one fit of each estimator
in turn (the order alternating from one repeat to the next, so drifts of a
shared machine hit both alike), the same random_state and data.  Reported:
median fit() seconds, the speedup, and the share of fit() spent in the
optimizer's update_params (timed around each call in the same runs;
fastopt's also finishes the coefficient gradients, the two passes stock
scikit-learn makes in its backprop before the update).
Before anything is timed, one pair of fits is checked to give identical
weights.
"""
import contextlib
import statistics
import sys
import time
import warnings

import numpy as np

# scikit-learn and threadpoolctl ship no type information: their imports
# carry "type: ignore".

HIDDEN = [(100,), (256, 256), (1024, 1024)]
BATCHES = [32, 200]
DTYPES = ["float32", "float64"]


def add_arguments(parser):
    parser.add_argument("--sklearn", action="store_true",
                        help="fit() of MLPClassifier: stock scikit-learn "
                             "against fastopt.sklearn (needs scikit-learn)")
    parser.add_argument("--sklearn-epochs", type=int, default=1, metavar="N",
                        help="epochs per fit (max_iter; default 1)")
    parser.add_argument("--sklearn-repeats", type=int, default=3, metavar="N",
                        help="fits of each estimator per row (default 3)")
    parser.add_argument("--sklearn-solvers", default="adam",
                        help="comma list among adam, sgd (default adam)")
    parser.add_argument("--sklearn-hidden", default=None,
                        help="semicolon list of shapes, e.g. '100;256,256'")
    parser.add_argument("--sklearn-batches", default=None,
                        help="comma list of batch sizes (default 32,200)")
    parser.add_argument("--sklearn-samples", type=int, default=20000,
                        metavar="N", help="samples of the data set (default 20000)")
    parser.add_argument("--sklearn-threads", type=int, default=None,
                        metavar="N", help="BLAS and fastopt threads (default: "
                        "as installed; threadpoolctl limits both)")


class _TimedUpdates:
    """Records in the optimizer the seconds spent in its update_params."""

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name == "_optimizer":
            opt = self.__dict__["_optimizer"]      # after any swap by the class
            update = opt.update_params
            opt.update_seconds = 0.0

            def timed(params, grads):
                t0 = time.perf_counter()
                update(params, grads)
                opt.update_seconds += time.perf_counter() - t0
            opt.update_params = timed


def _timed(cls):
    """``cls`` whose optimizer records the seconds spent in update_params."""
    return type(cls.__name__, (_TimedUpdates, cls), {})


def _fit(cls, X, y, kw):
    est = cls(**kw)
    t0 = time.perf_counter()
    est.fit(X, y)
    total = time.perf_counter() - t0
    return est, total, est._optimizer.update_seconds


def _same(a, b):
    return all(np.array_equal(u, v) for u, v in
               zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_))


def measure(hidden, batch, dtype, solver, X, y, epochs, repeats):
    from sklearn.neural_network import MLPClassifier as Stock  # type: ignore

    import fastopt.sklearn as fsk
    kinds = {"stock": _timed(Stock), "fastopt": _timed(fsk.MLPClassifier)}
    kw = dict(hidden_layer_sizes=hidden, batch_size=batch, solver=solver,
              max_iter=epochs, random_state=0, tol=0.0)
    X = X.astype(dtype)
    fits = {k: [] for k in kinds}
    updates = {k: [] for k in kinds}
    models = {}
    for rep in range(repeats):
        order = list(kinds) if rep % 2 == 0 else list(kinds)[::-1]
        for name in order:
            est, total, upd = _fit(kinds[name], X, y, kw)
            fits[name].append(total)
            updates[name].append(upd)
            models[name] = est
        if rep == 0 and not _same(models["stock"], models["fastopt"]):
            raise AssertionError(f"fastopt.sklearn differs from scikit-learn "
                                 f"for {kw}")
    rec = {"hidden": hidden, "batch": batch, "dtype": dtype, "solver": solver,
           "epochs": epochs, "repeats": repeats,
           "steps": epochs * -(-X.shape[0] // batch)}
    for name in kinds:
        rec[f"{name}_fit_s"] = statistics.median(fits[name])
        rec[f"{name}_update_s"] = statistics.median(updates[name])
        rec[f"{name}_update_share"] = statistics.median(
            u / f for u, f in zip(updates[name], fits[name]))
    rec["speedup"] = rec["stock_fit_s"] / rec["fastopt_fit_s"]
    rec["update_speedup"] = rec["stock_update_s"] / rec["fastopt_update_s"]
    return rec


def print_table(records, file=sys.stdout):
    print("| solver | hidden | batch | dtype | stock fit s | fastopt fit s "
          "| speedup | update share stock | update share fastopt | update speedup |",
          file=file)
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|", file=file)
    for r in records:
        hidden = "(" + ", ".join(map(str, r["hidden"])) + ("," if len(r["hidden"]) == 1 else "") + ")"
        print(f"| {r['solver']} | {hidden} | {r['batch']} | {r['dtype']} "
              f"| {r['stock_fit_s']:.2f} | {r['fastopt_fit_s']:.2f} "
              f"| {r['speedup']:.2f} | {100 * r['stock_update_share']:.0f} % "
              f"| {100 * r['fastopt_update_share']:.0f} % "
              f"| {r['update_speedup']:.1f} |", file=file)


def _shapes(text):
    if not text:
        return HIDDEN
    return [tuple(int(n) for n in part.split(",")) for part in text.split(";")]


def main(args):
    try:
        import sklearn  # type: ignore
        from sklearn.datasets import make_classification  # type: ignore
    except ImportError:
        print("bench --sklearn needs scikit-learn: pip install 'fastopt[sklearn]'",
              file=sys.stderr)
        return 2
    import fastopt
    import fastopt.sklearn as fsk
    if not fsk.supported():
        print(f"scikit-learn {sklearn.__version__} is not supported by "
              f"fastopt.sklearn", file=sys.stderr)
        return 2
    solvers = [s.strip() for s in args.sklearn_solvers.split(",") if s.strip()]
    batches = ([int(b) for b in args.sklearn_batches.split(",")]
               if args.sklearn_batches else BATCHES)
    dtypes = [d.strip() for d in args.dtypes.split(",")] if args.dtypes else DTYPES
    X, y = make_classification(args.sklearn_samples, 100, n_informative=40,
                               n_classes=10, random_state=0)
    print(f"fastopt {fastopt.__version__} bench --sklearn: scikit-learn "
          f"{sklearn.__version__}, numpy {np.__version__}, SIMD "
          f"{fastopt.get_simd_level()}, "
          f"{args.sklearn_threads or fastopt.get_num_threads()} fastopt "
          f"threads, BLAS threads {args.sklearn_threads or 'as installed'}; "
          f"{X.shape[0]} x {X.shape[1]} samples, 10 classes, "
          f"{args.sklearn_epochs} epoch(s) per fit, median of "
          f"{args.sklearn_repeats} interleaved fits")
    records = []
    t_start = time.perf_counter()
    limits = contextlib.nullcontext()
    if args.sklearn_threads:
        from threadpoolctl import threadpool_limits  # type: ignore
        limits = threadpool_limits(args.sklearn_threads)
        fastopt.set_num_threads(args.sklearn_threads)
    with limits, warnings.catch_warnings():
        warnings.simplefilter("ignore")      # ConvergenceWarning after few epochs
        for solver in solvers:
            for hidden in _shapes(args.sklearn_hidden):
                for batch in batches:
                    for dtype in dtypes:
                        rec = measure(hidden, batch, dtype, solver, X, y,
                                      args.sklearn_epochs, args.sklearn_repeats)
                        records.append(rec)
                        print(f"  {solver} {hidden} batch {batch} {dtype}: "
                              f"{rec['stock_fit_s']:.2f} s -> "
                              f"{rec['fastopt_fit_s']:.2f} s "
                              f"({rec['speedup']:.2f}x)", file=sys.stderr)
    print()
    print_table(records)
    print(f"\ntotal bench time {time.perf_counter() - t_start:.0f} s")
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump({"config": fastopt._config.config(), "sklearn": records},
                      f, indent=1, default=str)
        print(f"wrote {args.json}")
    return 0
