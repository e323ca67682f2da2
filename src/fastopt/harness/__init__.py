"""The benchmark machinery, kept apart from the library.

- ``fastopt.harness.bench``: the measurements behind ``python -m fastopt
  bench`` (every rule against the memory-bandwidth floor, the NumPy reference
  and torch.optim) and the rule table the pytest-benchmark suite in
  benchmarks/ reuses.

None of it is needed to use the optimizers.
"""
