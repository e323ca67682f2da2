"""The pytest-benchmark suite (`pytest benchmarks --benchmark-only`) is not
part of the test run, so its workloads are run here once each, untimed, on
a small size: a rule whose workload the suite cannot build or check fails
here rather than in a user's benchmark run."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from fastopt.harness.bench import RULES

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "test_rules.py"


@pytest.fixture(scope="module")
def suite():
    if not SUITE.exists():
        pytest.skip("benchmarks/ is not beside tests/ (an installed copy of the tests)")
    spec = importlib.util.spec_from_file_location("fastopt_benchmark_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Once:
    """Stands for pytest-benchmark's fixture: runs the workload once."""

    def __init__(self):
        self.extra_info = {}
        self.group = None
        self.calls = 0

    def __call__(self, fn, *args):
        self.calls += 1
        return fn(*args)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", [r for r in RULES if not RULES[r].entry.matrix])
def test_every_benchmark_runs(suite, name, dtype):
    for impl in ("fastopt", "reference"):
        bench = _Once()
        suite.test_rule(bench, impl, name, dtype, 1000)
        assert bench.calls == 1 and bench.group == f"{name} {np.dtype(dtype).name} n=1000"
        assert bench.extra_info["bytes"] > 0
    bench = _Once()
    suite.test_traffic_floor(bench, name, dtype, 1000)
    assert bench.calls == 1


def test_the_suite_covers_every_rule_but_matrix_ones(suite):
    mark = next(m for m in suite.test_rule.pytestmark if m.name == "parametrize"
                and m.args[0] == "name,dtype,n")
    assert {name for name, _, _ in mark.args[1]} == {
        r for r in RULES if not RULES[r].entry.matrix}
