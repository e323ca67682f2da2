"""fastopt.sklearn's MLPClassifier and MLPRegressor against stock scikit-learn.

Every training run is done twice, by scikit-learn's estimator and by
fastopt's, from the same data and random_state; coefs_, intercepts_,
loss_curve_, n_iter_ (and what early stopping records) must be identical bit
for bit, and every step of the fastopt run must have gone through the fused
update (scikit-learn's own update_params is made to fail during it).  Small
data and few epochs keep this cheap."""
import inspect
import io
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")

from sklearn import datasets  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.neural_network import MLPClassifier as StockClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as StockRegressor  # noqa: E402
from sklearn.neural_network import _stochastic_optimizers as sk_opt  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import fastopt.sklearn as fsk  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
    pytest.mark.skipif(not fsk.supported(), reason="unsupported scikit-learn"),
]

STOCK = {fsk.MLPClassifier: StockClassifier, fsk.MLPRegressor: StockRegressor}


def _data(name, dtype):
    if name == "binary":
        X, y = datasets.make_classification(240, 12, n_informative=6, random_state=0)
    elif name == "multiclass":
        X, y = datasets.make_classification(240, 10, n_informative=6, n_classes=4,
                                            random_state=1)
    elif name == "multilabel":
        X, y = datasets.make_multilabel_classification(200, 9, n_classes=3,
                                                       random_state=2)
    elif name == "iris":
        X, y = datasets.load_iris(return_X_y=True)
    else:
        X, y = datasets.make_regression(220, 8, n_targets=2 if name == "regression2"
                                        else 1, noise=5.0, random_state=3)
        y = y / 100.0
    return X.astype(dtype), y


CLASSIFIERS = ("binary", "multiclass", "multilabel", "iris")


def _estimators(dataset, **kw):
    kw.setdefault("hidden_layer_sizes", (16, 8))
    kw.setdefault("random_state", 7)
    kw.setdefault("max_iter", 4)
    kw.setdefault("batch_size", 32)
    cls = fsk.MLPClassifier if dataset in CLASSIFIERS else fsk.MLPRegressor
    return STOCK[cls](**kw), cls(**kw)


@pytest.fixture
def fused_only(monkeypatch):
    """Makes scikit-learn's own update_params fail, and the NumPy path of the
    fused optimizers for any tensor the kernel should have taken: call it
    after the stock run, and the fastopt run that follows must run on the
    kernel."""
    def patch():
        def refuse(self, params, grads):
            raise AssertionError("the stock update ran")

        def only_mixed(self, k, param, grad):
            # the one case the kernel cannot take in these runs: float64
            # gradients of float32 weights (MLPRegressor's output layer)
            assert grad.dtype != param.dtype, "a tensor missed the kernel"
            numpy_update[type(self)](self, k, param, grad)
        for cls in (sk_opt.AdamOptimizer, sk_opt.SGDOptimizer):
            monkeypatch.setattr(cls, "update_params", refuse)
        for cls in numpy_update:
            monkeypatch.setattr(cls, "_numpy_update", only_mixed)
    numpy_update = {cls: cls._numpy_update
                    for cls in (fsk.FusedAdamOptimizer, fsk.FusedSGDOptimizer)}
    return patch


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


def assert_same_model(mine, stock):
    assert type(mine._optimizer) in (fsk.FusedAdamOptimizer, fsk.FusedSGDOptimizer)
    assert len(mine.coefs_) == len(stock.coefs_)
    for a, b in zip(mine.coefs_ + mine.intercepts_, stock.coefs_ + stock.intercepts_):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(_bits(a), _bits(b))
    assert mine.loss_curve_ == stock.loss_curve_
    assert mine.n_iter_ == stock.n_iter_ and mine.t_ == stock.t_
    assert mine.best_loss_ == stock.best_loss_ or (
        mine.best_loss_ is None and stock.best_loss_ is None)
    assert (getattr(mine, "validation_scores_", None)
            == getattr(stock, "validation_scores_", None))
    a, b = mine._optimizer, stock._optimizer
    assert a.learning_rate == b.learning_rate
    states = ("ms", "vs", "t") if hasattr(b, "ms") else ("velocities",)
    for key in states:
        x, y = getattr(a, key), getattr(b, key)
        if key == "t":
            assert x == y
        else:
            for u, v in zip(x, y):
                assert u.dtype == v.dtype
                np.testing.assert_array_equal(_bits(u), _bits(v))


def _fit_both(fused_only, dataset, dtype, fit=None, **kw):
    X, y = _data(dataset, dtype)
    stock, mine = _estimators(dataset, **kw)
    fit = fit or (lambda est: est.fit(X, y))
    fit(stock)
    fused_only()
    fit(mine)
    assert_same_model(mine, stock)
    return mine, stock


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("dataset", CLASSIFIERS + ("regression", "regression2"))
def test_fit_is_stock(fused_only, dataset, solver, dtype):
    mine, _ = _fit_both(fused_only, dataset, dtype, solver=solver)
    X, _ = _data(dataset, dtype)
    assert mine.coefs_[0].dtype == dtype


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_small_networks_step_on_one_thread(monkeypatch, solver):
    """Below fsk.ONE_THREAD_BELOW parameters each update runs capped at one
    thread (waking a second right after scikit-learn's matrix products
    costs more than it gains); at or above it with fastopt's own count;
    the cap ends with the update, and the model is the same either way."""
    import fastopt
    from fastopt import _core
    seen = []
    step_many = _core.step_many

    def recording(*args, **kw):
        seen.append(fastopt.get_num_threads())
        return step_many(*args, **kw)
    monkeypatch.setattr(_core, "step_many", recording)
    X, y = _data("multiclass", np.float64)
    full = fastopt.get_num_threads()
    small = _estimators("multiclass", solver=solver, max_iter=2)[1].fit(X, y)
    assert seen and set(seen) == {1}
    assert fastopt.get_num_threads() == full
    seen.clear()
    n = sum(a.size for a in small.coefs_ + small.intercepts_)
    monkeypatch.setattr(fsk, "ONE_THREAD_BELOW", n)
    large = _estimators("multiclass", solver=solver, max_iter=2)[1].fit(X, y)
    assert seen and set(seen) == {full}
    for a, b in zip(small.coefs_ + small.intercepts_, large.coefs_ + large.intercepts_):
        np.testing.assert_array_equal(_bits(a), _bits(b))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("schedule", ["constant", "invscaling", "adaptive"])
def test_sgd_schedules_and_nesterov(fused_only, schedule, nesterov, dtype):
    # tol so large that no epoch counts as an improvement: adaptive divides
    # its rate by 5 after every second epoch, the others stop
    kw = dict(solver="sgd", learning_rate=schedule, nesterovs_momentum=nesterov,
              momentum=0.8, learning_rate_init=0.05, max_iter=7)
    if schedule == "adaptive":
        kw.update(tol=1e3, n_iter_no_change=1)
    mine, _ = _fit_both(fused_only, "multiclass", dtype, **kw)
    if schedule != "constant":
        assert mine._optimizer.learning_rate < 0.05
    if schedule == "adaptive":
        assert mine.n_iter_ == 7


@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("dataset", ["binary", "regression"])
def test_early_stopping(fused_only, dataset, solver):
    mine, _ = _fit_both(fused_only, dataset, np.float64, solver=solver,
                        early_stopping=True, validation_fraction=0.2,
                        n_iter_no_change=2, max_iter=12, tol=1e-2)
    assert mine.validation_scores_ and mine.best_validation_score_ is not None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_partial_fit_sequence(fused_only, solver, dtype):
    X, y = _data("multiclass", dtype)
    classes = np.unique(y)

    def fit(est):
        for k, part in enumerate(np.array_split(np.arange(len(y)), 4)):
            if est.__class__.__name__ == "MLPClassifier":
                est.partial_fit(X[part], y[part], classes=classes if k == 0 else None)
    _fit_both(fused_only, "multiclass", dtype, fit=fit, solver=solver)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_warm_start(fused_only, solver):
    X, y = _data("regression", np.float32)

    def fit(est):
        est.fit(X, y)
        est.set_params(max_iter=3, learning_rate_init=0.003)
        est.fit(X[:150], y[:150])
    _fit_both(fused_only, "regression", np.float32, fit=fit, solver=solver,
              warm_start=True)


def test_batch_larger_than_data_and_no_shuffle(fused_only):
    with pytest.warns(UserWarning, match="clipped"):
        _fit_both(fused_only, "iris", np.float64, batch_size=1000, shuffle=False)


def test_lbfgs_is_stock():
    X, y = _data("binary", np.float64)
    stock, mine = _estimators("binary", solver="lbfgs", max_iter=15)
    stock.fit(X, y)
    mine.fit(X, y)
    for a, b in zip(mine.coefs_, stock.coefs_):
        np.testing.assert_array_equal(a, b)
    assert mine.loss_ == stock.loss_ and not hasattr(mine, "_optimizer")


def test_numpy_hyperparameters_that_change_numpys_arithmetic_fall_back():
    """A NumPy float64 momentum promotes float32 weights to float64 in
    scikit-learn's own arithmetic: that step is scikit-learn's, and the
    results are still identical."""
    X, y = _data("binary", np.float32)
    for kw in (dict(solver="sgd", momentum=np.float64(0.7)),
               dict(solver="adam", beta_1=np.float64(0.8)),
               dict(solver="adam", epsilon=np.float32(1e-7)),
               # alpha * coef in float64, then added to a float32 gradient
               dict(solver="sgd", alpha=np.float64(1e-3)),
               # a float32 alpha is the same number in float32 arithmetic
               dict(solver="adam", alpha=np.float32(1e-3))):
        stock, mine = _estimators("binary", **kw)
        stock.fit(X, y)
        mine.fit(X, y)
        assert_same_model(mine, stock)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_backprop_leaves_coefficient_gradients_to_the_update(monkeypatch, solver):
    """During fit each batch's coefficient gradients reach the update raw,
    in one call with the biases', finished there with alpha and the batch's
    sample count (the last batch of 240 at batch 32 has 16)."""
    calls = []
    step_many = fsk._core.step_many

    def spy(*args, **kwargs):
        calls.append(kwargs.get("first"))
        return step_many(*args, **kwargs)
    monkeypatch.setattr(fsk._core, "step_many", spy)
    X, y = _data("binary", np.float32)
    stock, mine = _estimators("binary", solver=solver, alpha=3e-3, max_iter=2)
    mine.fit(X, y)
    stock.fit(X, y)
    assert_same_model(mine, stock)
    assert calls == [(3, {"alpha": 3e-3, "divisor": 32.0})] * 7 + [
        (3, {"alpha": 3e-3, "divisor": 16.0})] + [
        (3, {"alpha": 3e-3, "divisor": 32.0})] * 7 + [
        (3, {"alpha": 3e-3, "divisor": 16.0})]


@pytest.mark.parametrize("weights", ["float64", "dtype", "integral"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_sample_weights(fused_only, solver, dtype, weights):
    """Weighted batches divide by their weight sum (scikit-learn 1.7 on), a
    NumPy scalar of the weights' dtype: finished in the loop when NumPy's
    arithmetic with it is the arrays' own, else by scikit-learn's lines."""
    if "sample_weight" not in inspect.signature(StockClassifier.fit).parameters:
        pytest.skip("this scikit-learn's MLP takes no sample weights")
    X, y = _data("multiclass", dtype)
    w = np.random.default_rng(0).uniform(0.1, 3.0, len(y))
    w = {"float64": w, "dtype": w.astype(dtype), "integral": np.round(w * 4)}[weights]
    _fit_both(fused_only, "multiclass", dtype, solver=solver,
              fit=lambda est: est.fit(X, y, sample_weight=w))


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_sparse_input(fused_only, solver):
    """A CSR X: the first layer's gradient is scikit-learn's sparse product,
    still finished in the update."""
    sparse = pytest.importorskip("scipy.sparse")
    X, y = _data("multiclass", np.float64)
    X[np.abs(X) < 0.8] = 0.0
    X = sparse.csr_matrix(X)
    _fit_both(fused_only, "multiclass", np.float64, solver=solver,
              fit=lambda est: est.fit(X, y))


def test_unusable_arrays_fall_back():
    """Hand-made Fortran-ordered weights: scikit-learn updates them in place
    where the kernel would refuse them; the result is still scikit-learn's."""
    X, y = _data("binary", np.float64)
    stock, mine = _estimators("binary", warm_start=True, max_iter=2)
    stock.fit(X, y)
    mine.fit(X, y)
    for est in (stock, mine):
        est.coefs_ = [np.asfortranarray(c) for c in est.coefs_]
        est.fit(X, y)
    assert not mine.coefs_[0].flags.c_contiguous
    assert_same_model(mine, stock)


def test_unsupported_version_falls_back_with_a_warning(monkeypatch):
    assert fsk.supported("1.6.1") and fsk.supported("1.9.1")
    assert not fsk.supported("1.5.2") and not fsk.supported("1.10.0")
    assert not fsk.supported("2.0.dev0")
    monkeypatch.setattr(fsk, "_SUPPORTED", False)
    X, y = _data("binary", np.float64)
    stock, mine = _estimators("binary")
    stock.fit(X, y)
    with pytest.warns(fsk.FallbackWarning, match=r"scikit-learn >=1\.6,<1\.10"):
        mine.fit(X, y)
    assert type(mine._optimizer) is sk_opt.AdamOptimizer
    for a, b in zip(mine.coefs_, stock.coefs_):
        np.testing.assert_array_equal(a, b)


def test_clone_and_params():
    est = fsk.MLPClassifier(hidden_layer_sizes=(5,), solver="sgd", momentum=0.5)
    twin = clone(est)
    assert type(twin) is fsk.MLPClassifier
    assert twin.get_params() == est.get_params()
    assert fsk.MLPRegressor().get_params() == StockRegressor().get_params()


def test_pickle_round_trip_and_resume(fused_only):
    """A pickled fitted model predicts the same and resumes partial_fit
    exactly as the original and as stock scikit-learn do."""
    X, y = _data("multiclass", np.float32)
    stock, mine = _estimators("multiclass")
    stock.fit(X, y)
    fused_only()
    mine.fit(X, y)
    back = pickle.loads(pickle.dumps(mine))
    assert type(back._optimizer) is fsk.FusedAdamOptimizer
    np.testing.assert_array_equal(back.predict_proba(X), mine.predict_proba(X))
    for est in (mine, back):
        est.partial_fit(X[:64], y[:64])
    assert_same_model(back, mine)


def test_pickle_resume_equals_stock():
    X, y = _data("multiclass", np.float32)
    stock, mine = _estimators("multiclass", solver="sgd")
    stock.fit(X, y)
    mine.fit(X, y)
    back = pickle.loads(pickle.dumps(mine))
    stock.partial_fit(X[:64], y[:64])
    back.partial_fit(X[:64], y[:64])
    assert_same_model(back, stock)


def test_pipeline(fused_only):
    X, y = _data("multiclass", np.float64)
    stock = make_pipeline(StandardScaler(), StockClassifier(
        hidden_layer_sizes=(8,), max_iter=3, random_state=0))
    mine = make_pipeline(StandardScaler(), fsk.MLPClassifier(
        hidden_layer_sizes=(8,), max_iter=3, random_state=0))
    stock.fit(X, y)
    fused_only()
    mine.fit(X, y)
    assert_same_model(mine[-1], stock[-1])
    np.testing.assert_array_equal(mine.predict(X), stock.predict(X))


def test_grid_search_two_jobs():
    """GridSearchCV in two worker processes: the same scores and best model
    as stock scikit-learn's, and the refit model is fastopt's."""
    X, y = _data("binary", np.float64)
    grid = {"solver": ["adam", "sgd"], "learning_rate_init": [1e-3, 1e-2]}
    base = dict(hidden_layer_sizes=(6,), max_iter=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        stock = GridSearchCV(StockClassifier(**base), grid, cv=2, n_jobs=2).fit(X, y)
        mine = GridSearchCV(fsk.MLPClassifier(**base), grid, cv=2, n_jobs=2).fit(X, y)
    for key in ("split0_test_score", "split1_test_score", "mean_test_score"):
        np.testing.assert_array_equal(mine.cv_results_[key], stock.cv_results_[key])
    assert mine.best_params_ == stock.best_params_
    assert type(mine.best_estimator_) is fsk.MLPClassifier
    assert_same_model(mine.best_estimator_, stock.best_estimator_)


def _check_results(estimator):
    from sklearn.utils.estimator_checks import check_estimator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(estimator, on_fail=None, on_skip=None)
    return {r["check_name"]: r["status"] for r in results}


@pytest.mark.parametrize("cls", [fsk.MLPClassifier, fsk.MLPRegressor])
def test_check_estimator_as_stock(cls):
    """scikit-learn's check_estimator: every check that the stock estimator
    passes, fastopt's passes too, and they fail and skip the same ones.  Few
    epochs keep it cheap; with them both estimators fail
    check_classifiers_train (its accuracy bar needs the default max_iter)."""
    kw = dict(hidden_layer_sizes=(4,), max_iter=8, random_state=0)
    stock = _check_results(STOCK[cls](**kw))
    mine = _check_results(cls(**kw))
    assert mine == stock
    passed = [name for name, status in stock.items() if status == "passed"]
    assert len(passed) > 20
    assert [name for name in passed if mine[name] != "passed"] == []


def test_import_fastopt_does_not_need_scikit_learn():
    code = ("import sys; sys.modules['sklearn'] = None; import fastopt; "
            "import fastopt.functional as F; assert F.sklearn_adam; "
            "assert 'fastopt.sklearn' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_bench_row_at_a_small_size():
    """The bench's measurement on a tiny model: every field, identical
    weights checked inside, the update timed within the fit."""
    from fastopt.harness import sklearn_bench
    X, y = _data("multiclass", np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        rec = sklearn_bench.measure((8,), 32, "float32", "adam", X, y, 1, 2)
    assert rec["steps"] == -(-len(y) // 32)
    for name in ("stock", "fastopt"):
        assert 0 < rec[f"{name}_update_s"] < rec[f"{name}_fit_s"]
        assert 0 < rec[f"{name}_update_share"] < 1
    out = io.StringIO()
    sklearn_bench.print_table([rec], file=out)
    assert "| adam | (8,) | 32 | float32 |" in out.getvalue()
