"""Type information: the stubs against the built package (mypy's stubtest),
and the README's examples under ``mypy --strict``.  Both skip without mypy,
which the ``test`` extra installs."""
import pathlib
import re
import subprocess
import sys

import pytest

pytest.importorskip("mypy")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(args, cwd):
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_py_typed_and_stubs_are_installed():
    import fastopt
    here = pathlib.Path(fastopt.__file__).parent
    for name in ("py.typed", "_core.pyi", "functional.pyi", "reference.pyi", "optim.pyi"):
        assert (here / name).is_file(), name


def test_stubtest_passes_against_the_built_package(tmp_path):
    # from outside the source tree: the installed package is what is checked
    out = _run(["mypy.stubtest", "fastopt", "--allowlist",
                str(ROOT / "tools" / "stubtest-allowlist.txt"),
                "--mypy-config-file", str(tmp_path / "none.ini")], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_readme_examples_pass_mypy_strict(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks
    example = tmp_path / "readme_examples.py"
    example.write_text("\n".join(blocks))
    out = _run(["mypy", "--strict", "--no-incremental", str(example)], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_rules_signature_reaches_the_type_checker(tmp_path):
    """Wrong types at the functional door and the class door are caught."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import numpy as np\n"
        "import fastopt\n"
        "from fastopt import functional as F\n"
        "p = np.zeros(3, np.float32)\n"
        "F.adam(p, p, p, p, step='1')\n"
        "fastopt.NAdam([p], momentum_decay='x')\n")
    out = _run(["mypy", "--strict", "--no-incremental", str(bad)], tmp_path)
    assert out.returncode == 1
    assert 'bad.py:5: error: Argument "step" to "adam"' in out.stdout, out.stdout
    assert 'bad.py:6: error: Argument "momentum_decay" to "NAdam"' in out.stdout, out.stdout
