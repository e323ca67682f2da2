"""The rule table is the one description of a rule: every place that knows
a rule must know every rule of the table, and no other.

Fails when a rule is registered in one place and missing in another (C
kernel, coefficients, functional entry point, reference, class, bench row,
SIMD check), and when one mistake gets different messages at different
doors."""
import importlib.util
import inspect
import pathlib

import numpy as np
import pytest

import fastopt
from fastopt import _core, functional, optim, reference
from fastopt.harness import bench
from fastopt.rules import FACTORED_RULES, RULES

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_functional_and_reference_have_every_rule_and_no_other():
    # the factored rules' doors are written by hand (_factored.pxi), after
    # the generated ones
    assert list(functional.__all__) == list(RULES) + list(FACTORED_RULES)
    assert list(reference.__all__) == list(RULES) + list(FACTORED_RULES)
    assert [f.__name__ for f in _core.FUNCTIONS] == list(RULES)
    for name, entry in FACTORED_RULES.items():
        assert getattr(functional, name) is getattr(_core, name)
        assert callable(getattr(reference, name))
        assert getattr(fastopt, entry.cls).rule is entry
        assert entry.cls in fastopt.__all__


@pytest.mark.parametrize("name", list(RULES))
def test_signatures_follow_the_table(name):
    entry = RULES[name]
    sig = inspect.signature(getattr(functional, name))
    params = list(sig.parameters.values())
    assert [p.name for p in params[:2]] == ["param", "grad"]
    assert [p.name for p in params[2:2 + len(entry.states)]] == [s.name for s in entry.states]
    for h in entry.kernel_hypers:
        assert sig.parameters[h.name].default == h.default
    assert inspect.signature(getattr(reference, name)) == sig
    for cls, fixed, defaults, _ in entry.classes():
        csig = inspect.signature(getattr(fastopt, cls))
        for h in entry.hypers:
            if h.name in fixed:
                assert h.name not in csig.parameters
            else:
                assert csig.parameters[h.name].default == defaults.get(h.name, h.default)
                assert (csig.parameters[h.name].kind is inspect.Parameter.KEYWORD_ONLY) \
                    == h.keyword_only


@pytest.mark.parametrize("name", list(RULES))
def test_c_side_knows_the_rule(name):
    """The coefficients come back under the table's names (the C side was
    built from this table), and the kernel runs at every level."""
    entry = RULES[name]
    c = _core.coefficients(name, 1)
    assert set(entry.coefficients) <= set(c)
    assert all(isinstance(c[k], float) for k in entry.coefficients)
    assert all(isinstance(c[o], bool) for o in entry.options)


def test_classes_bench_rows_and_simd_check_have_every_rule():
    classes = [cls for entry in RULES.values() for cls, *_ in entry.classes()]
    assert [c for c in optim.__all__ if c != "Optimizer"] == classes
    assert all(getattr(fastopt, c).rule is RULES[getattr(fastopt, c).rule.name]
               for c in classes)
    factored = [cls for entry in FACTORED_RULES.values() for cls, *_ in entry.classes()]
    assert sorted(bench.RULES) == sorted(c.lower() for c in classes + factored)
    spec = importlib.util.spec_from_file_location("check_simd", ROOT / "tools/check_simd.py")
    check_simd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_simd)
    assert set(RULES) <= set(check_simd.RULES)


def _bad_values(h):
    if h.check == "flag":
        return ["yes"]
    if h.length:
        return [(h.hi,) + (0.5,) * (h.length - 1), 3.0, (0.5,) * (h.length + 1)]
    if h.check == "count":
        return [-1, 2.0, "x", 2 ** 60]
    if h.check == "int":
        return [int(h.lo) - 1, int(h.hi) + 1, 2.0, None, True]
    if h.check == "choice":
        return ["x", 1, b"original"]
    return [h.lo - 1.0, float("nan"), "x"] + ([h.hi + 1.0] if h.hi < np.inf else [])


CASES = [(name, h.name, v) for name, entry in RULES.items()
         for h in entry.kernel_hypers for v in _bad_values(h)]


@pytest.mark.parametrize("name, hyper, value", CASES,
                         ids=[f"{n}-{h}-{v!r}" for n, h, v in CASES])
def test_same_mistake_same_message_at_every_door(name, hyper, value):
    """The functional door, the class door, a class's group changed before
    a step and the multi-tensor call all give one exception and message."""
    entry = RULES[name]
    shape = (2, 2) if entry.matrix else 4      # a rule with a matrix step takes matrices
    p, g = np.ones(shape), np.ones(shape)
    states = [np.zeros(shape) for _ in entry.states]
    states += [np.ones(1) for _ in entry.scalar_states]
    step = {"step": 1} if entry.step is not None else {}
    messages = []

    def record(call):
        with pytest.raises((TypeError, ValueError)) as info:
            call()
        messages.append((type(info.value), str(info.value)))

    record(lambda: getattr(functional, name)(p, g, *states, **step, **{hyper: value}))
    record(lambda: _core.step_many(name, [p], [g], [[s] for s in states], **step,
                                   **{hyper: value}))
    cls = getattr(fastopt, entry.cls)
    record(lambda: cls([p], **{hyper: value}))
    opt = cls([p])
    opt.param_groups[0][hyper] = value
    before = p.copy()
    record(lambda: opt.step([g]))
    assert np.array_equal(p, before)
    assert len(set(messages)) == 1, messages


@pytest.mark.parametrize("row", list(bench.RULES))
def test_bench_row_runs_and_checks_exactly(row):
    """Each bench row calls its kernel and reference as a user would (scalar
    states included) and finds them equal before any timing."""
    rule = bench.RULES[row]
    for dtype in (np.float32, np.float64):
        p, g, states = bench._arrays(rule, 37, dtype, np.random.default_rng(0))
        kp, _ = bench._check_exact(rule, p, g, states)
        assert not np.array_equal(kp, p)


@pytest.mark.parametrize("row", list(bench.RULES))
def test_bench_row_measures_a_small_size(row):
    """A whole measurement of a row at a small size, torch's steps (checked
    against fastopt's before timing) included where torch is installed."""
    try:
        import torch
    except ImportError:
        torch = None
    rule = bench.RULES[row]
    threads = torch.get_num_threads() if torch else 1
    for dtype in (np.float32, np.float64):
        recs = bench.measure_size(rule, dtype, 1000, [1], 0.005, torch,
                                  np.random.default_rng(1), threads)
        assert recs and all(r["fastopt_s"] > 0 for r in recs)
        if torch is not None and rule.torch_cls:
            # a package peer (schedulefree) has its own columns, when installed
            package = rule.entry.package if not rule.entry.torch else ""
            if package and importlib.util.find_spec(package.split(".")[0]) is None:
                continue
            key = "torch_sf-forloop_1t_s" if package else "torch_forloop_1t_s"
            assert all(key in r for r in recs)


def test_readme_lists_every_rule_as_the_table_says():
    """README's table of rules is `python -m fastopt rules`, so it names
    every class with its source, conformance test and bytes per element."""
    from pathlib import Path
    from fastopt.rules import readme_table
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("<!-- rules table: python -m fastopt rules -->\n")
    end = readme.index("<!-- end of rules table -->")
    assert readme[start:end].split("\n", 1)[1].rstrip("\n") == readme_table()
    for r in RULES.values():
        assert f"| `{r.cls}` |" in readme_table()
