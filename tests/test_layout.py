"""Package layout: library at the top, the course experiment in fastopt.course,
the benchmark machinery in fastopt.harness, old paths kept as aliases."""
import importlib
import subprocess
import sys

import pytest

import fastopt

MOVED = [
    ("fastopt.datasets", "fastopt.course.datasets"),
    ("fastopt.data", "fastopt.course.data"),
    ("fastopt.models", "fastopt.course.models"),
    ("fastopt.demo", "fastopt.course.demo"),
    ("fastopt.bench", "fastopt.harness.bench"),
]


@pytest.mark.parametrize("old, new", MOVED, ids=[old for old, _ in MOVED])
def test_old_path_is_the_new_module(old, new):
    new_module = importlib.import_module(new)
    assert importlib.import_module(old) is new_module
    assert sys.modules[old] is new_module
    assert getattr(fastopt, old.rsplit(".", 1)[1]) is new_module


def run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args", [["demo", "--help"], ["bench", "--help"], ["info"]],
                         ids=" ".join)
def test_command_line_runs(args):
    r = run("-m", "fastopt", *args)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert r.stdout


def test_library_import_leaves_course_and_harness_out():
    r = run("-c", "import sys, fastopt; print(sorted(m for m in sys.modules "
                  "if m.startswith(('fastopt.course', 'fastopt.harness'))))")
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.strip() == "[]"
