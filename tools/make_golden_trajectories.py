#!/usr/bin/env python3
"""Write tests/data/golden_trajectories.json (see tests/test_golden_trajectories.py).

    python tools/make_golden_trajectories.py [--check]

Computes every trajectory at every instruction-set level this machine runs
and at 1 and 2 threads (two threads splitting even these small arrays), and
writes the file only if all of them agree; --check compares with the file
instead of writing it.  Regenerate only for a deliberate change of the
rules' results, and say why in the commit.
"""
import json
import os
import pathlib
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
TESTS = pathlib.Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

import fastopt  # noqa: E402
from fastopt import _core  # noqa: E402
import test_golden_trajectories as golden  # noqa: E402


def main():
    check = "--check" in sys.argv[1:]
    levels = [lvl for lvl, (compiled, supported) in _core.simd_levels().items()
              if compiled and supported]
    results = {}
    threshold = _core.get_parallel_threshold()
    for level in levels:
        for threads in (1, 2):
            fastopt.set_simd_level(level)
            fastopt.set_num_threads(threads)
            _core.set_parallel_threshold(1 if threads > 1 else threshold)
            results[(level, threads)] = golden.compute_all()
            print(f"{level}, {threads} thread(s): {len(results[(level, threads)])} "
                  "trajectories", file=sys.stderr)
    first = next(iter(results.values()))
    for key, got in results.items():
        if got != first:
            bad = [k for k in got if got[k] != first[k]]
            sys.exit(f"{key} differs from {next(iter(results))} in {bad}")
    data = {"about": "tests/test_golden_trajectories.py; written by "
                     "tools/make_golden_trajectories.py",
            "written_on": {"machine": fastopt._config.config()["machine"],
                           "levels": levels, "threads": [1, 2]},
            "cases": first}
    if check:
        want = golden.load()["cases"]
        bad = sorted(k for k in set(want) | set(first) if want.get(k) != first.get(k))
        print("all match" if not bad else f"differ: {bad}")
        sys.exit(1 if bad else 0)
    with open(golden.DATA, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {golden.DATA} ({len(first)} trajectories)", file=sys.stderr)


if __name__ == "__main__":
    main()
