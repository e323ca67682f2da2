"""Build of fastopt's C kernels and Cython boundary.

csrc/kernels_isa.c holds every update rule and is compiled once per
instruction-set level of the *target* architecture (x86-64: baseline, AVX2 =
x86-64-v3, AVX-512 = x86-64-v4; aarch64/arm64: baseline alone, which is
NEON, the AArch64 baseline; other architectures: baseline); csrc/dispatch.c
picks the best level the CPU supports at import.  The target is read from
ARCHFLAGS (macOS: several -arch flags, as universal2, get the baseline
alone), else _PYTHON_HOST_PLATFORM (set by cross builds), else
sysconfig.get_platform(): never from the build machine.  The default build
never uses -march=native: a wheel must run on any CPU of its architecture.

No level may change rounding: -ffp-contract=off keeps a*b+c from becoming a
fused multiply-add, and -ffast-math is never used.  -fno-math-errno lets
sqrt vectorise (errno is the only thing it gives up).

Environment switches:
  FASTOPT_SANITIZE=1   build with AddressSanitizer and UndefinedBehaviorSanitizer
  FASTOPT_OPENMP=0|1   build without / with OpenMP; unset: with it when a
                       probe compiles and links an OpenMP program (Apple
                       clang without libomp does not: one thread)
  FASTOPT_LEVELS=...   comma-separated levels to build (default: all for the arch)
"""
import concurrent.futures
import importlib.util
import os
import platform
import re
import sysconfig
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

def _load_table():
    """src/fastopt/rules.py, read as plain data before anything is built."""
    spec = importlib.util.spec_from_file_location("fastopt_rules", "src/fastopt/rules.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _generate():
    """Write what the rule table determines: the C indices (fo_table.h) and
    the Cython entry points (_functional.pxi, from its Tempita template)."""
    from Cython import Tempita
    table = _load_table()
    rules = list(table.RULES.values())
    # the C side also numbers the factored rules, after the others
    c_rules = rules + list(getattr(table, "FACTORED_RULES", {}).values())
    c = ["/* Written by setup.py from src/fastopt/rules.py; do not edit. */",
         "#ifndef FASTOPT_FO_TABLE_H", "#define FASTOPT_FO_TABLE_H",
         f"#define FO_MAX_STATES {table.MAX_STATES}",
         f"#define FO_MAX_COEFFICIENTS {table.MAX_COEFFICIENTS}",
         f"#define FO_MAX_SCALARS {table.MAX_SCALARS}",
         f"#define FO_MAX_SCALAR_STATES {table.MAX_SCALAR_STATES}",
         f"#define FO_MAX_REDUCTIONS {table.MAX_REDUCTIONS}",
         "#define FO_RULE_LIST(X) " + " ".join(f"X({r.name}, {r.name.upper()})"
                                               for r in c_rules),
         "enum { " + ", ".join(f"FO_RULE_{r.name.upper()}" for r in c_rules)
         + ", FO_NRULES };",
         "#define FO_REDUCE_LIST(X) " + " ".join(
             f"X({r.name}, {r.name.upper()})" for r in c_rules if r.reductions),
         "#define FO_AXES_LIST(X) " + " ".join(
             f"X({r.name}, {r.name.upper()})" for r in c_rules
             if any(getattr(s, "shape", "full") != "full" for s in r.states))]
    for r in c_rules:
        up = r.name.upper()
        c.append(f"/* {r.name} */")
        for kind, names in (("H", r.scalars), ("C", r.coefficients),
                            ("S", [s.name for s in r.states]),
                            ("T", [s.name for s in r.scalar_states]),
                            ("R", r.reductions)):
            c.append("enum { " + "".join(f"FO_{up}_{kind}_{n.upper()}, " for n in names)
                     + f"FO_{up}_N{kind} }};")
        for bit, name in enumerate(r.options, start=2):
            c.append(f"#define FO_{up}_O_{name.upper()} (1u << {bit})")
        # each state's sign, for the loops that decode 8-bit states as they
        # read them (rules.h, FO_Q8), and the rule's mask of never negative
        # states, which fastopt passes as q8_nonneg (optim.py)
        if r.states:
            c.append("enum { " + "".join(
                f"FO_{up}_S_{s.name.upper()}_NONNEG = {int(s.sign == 'nonneg')}, "
                for s in r.states) + "};")
        c.append(f"#define FO_{up}_Q8_NONNEG {sum(1 << k for k, s in enumerate(r.states) if s.sign == 'nonneg')}u")
    c.append("#endif")
    _write("csrc/fastopt/fo_table.h", "\n".join(c) + "\n")
    with open("src/fastopt/_functional.pxi.tp") as f:
        template = Tempita.Template(f.read(), name="_functional.pxi.tp")
    _write("src/fastopt/_functional.pxi",
           template.substitute(rules=rules, INF=table.INF))
    # type stubs: the compiled module's, the classes', and the functional
    # and reference functions (signatures of the compiled module's)
    with open("src/fastopt/_core.pyi.tp") as f:
        template = Tempita.Template(f.read(), name="_core.pyi.tp")
    _write("src/fastopt/_core.pyi", template.substitute(rules=rules))
    with open("src/fastopt/optim.pyi.tp") as f:
        template = Tempita.Template(f.read(), name="optim.pyi.tp")
    _write("src/fastopt/optim.pyi", template.substitute(rules=rules))
    extra = {"functional": [],
             "reference": ["from typing import Any", "",
                           "from numpy.typing import ArrayLike", "",
                           "SUMSQ_BLOCK: int", "",
                           "def sumsq(x: ArrayLike) -> float: ...",
                           "def lowp_tensor_key(seed: int, index: int, step: int) -> int: ...",
                           "def lowp_slot_key(key: int, slot: int) -> int: ...",
                           "def hash32(x: ArrayLike) -> Any: ...",
                           "def bf16_decode(bits: ArrayLike) -> Any: ...",
                           "def bf16_nearest(x: ArrayLike) -> Any: ...",
                           "def bf16_round(x: ArrayLike, key: int, start: int = 0, low: bool = False) -> Any: ...",
                           "Q8_BLOCK: int",
                           "def q8_table(nonneg: bool) -> Any: ...",
                           "def q8_encode(x: ArrayLike, nonneg: bool, key: int = 0, start: int = 0) -> Any: ...",
                           "def q8_decode(codes: ArrayLike, scales: ArrayLike, nonneg: bool) -> Any: ...",
                           "def q8_step(name: str, key: int, param: Any, grad: Any, *states: Any,",
                           "            **kwargs: Any) -> None: ...",
                           "def bf16_step(name: str, key: int, param: Any, grad: Any,",
                           "              *states: Any, **kwargs: Any) -> None: ...", ""]}
    for module in ("functional", "reference"):
        _write(f"src/fastopt/{module}.pyi", "\n".join(
            ["# Written by setup.py from src/fastopt/rules.py; do not edit.",
             "from fastopt._core import (",
             *[f"    {r.name} as {r.name}," for r in c_rules],
             ")", "", *extra[module], f"__all__ = {[r.name for r in c_rules]!r}", ""]))


def _write(path, text):
    """Write text unless the file already holds it (keeps rebuilds lazy)."""
    if os.path.exists(path):
        with open(path) as f:
            if f.read() == text:
                return
    with open(path, "w") as f:
        f.write(text)


_generate()

COMMON = ["-O3",
          # Never fuse a*b+c into one FMA: an FMA rounds once where the
          # reference rounds twice, so results would change with the
          # instruction set (gcc in GNU mode and clang, as Apple's, contract
          # by default on aarch64 and x86-64-v3), and fo_math.h's error-free
          # products need each product rounded on its own.
          "-ffp-contract=off",
          "-fno-math-errno", "-std=c11"]

X86_LEVELS = {
    "baseline": [],
    "avx2": ["-march=x86-64-v3"],
    "avx512": ["-march=x86-64-v4", "-mprefer-vector-width=512"],
}


X86 = ("x86_64", "amd64", "i686", "i386", "x86")
ARM64 = ("aarch64", "arm64")


def _target_archs():
    """The architectures the extension is built for (several for a macOS
    universal2 build), from the target platform, not the build machine."""
    archs = re.findall(r"-arch\s+(\S+)", os.environ.get("ARCHFLAGS", ""))
    if archs:
        return sorted(set(a.lower() for a in archs))
    plat = (os.environ.get("_PYTHON_HOST_PLATFORM") or sysconfig.get_platform()).lower()
    arch = plat.rsplit("-", 1)[-1]
    if arch == "universal2":
        return ["arm64", "x86_64"]
    if arch in ("win32",):
        return ["x86"]
    return [arch]


TARGET_ARCHS = _target_archs()
TARGET_ARCH = TARGET_ARCHS[0] if len(TARGET_ARCHS) == 1 else "+".join(TARGET_ARCHS)


def _is_x86():
    return len(TARGET_ARCHS) == 1 and TARGET_ARCHS[0] in X86


def _levels():
    available = X86_LEVELS if _is_x86() else {"baseline": []}
    wanted = os.environ.get("FASTOPT_LEVELS")
    if not wanted:
        return available
    names = [w.strip() for w in wanted.split(",") if w.strip()]
    unknown = [n for n in names if n not in available]
    if unknown or "baseline" not in names:
        raise SystemExit(f"FASTOPT_LEVELS must include baseline and name only "
                         f"{', '.join(available)}; got {wanted!r}")
    return {n: available[n] for n in names}


def _flag(name, default):
    return os.environ.get(name, default).strip().lower() not in ("0", "false", "no", "off", "")


SANITIZE = _flag("FASTOPT_SANITIZE", "0")
# None: decided by a probe of the compiler at build time
OPENMP = (None if os.environ.get("FASTOPT_OPENMP", "").strip() == ""
          else _flag("FASTOPT_OPENMP", "1"))
LEVELS = _levels()

extra_compile = list(COMMON)
extra_link = []
if SANITIZE:
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
           "-fno-sanitize-recover=undefined"]
    extra_compile += san
    extra_link += san

# Every C source includes some of these (the kernels at each level all of
# them), so a change to any one rebuilds the objects
HEADERS = sorted(os.path.join("csrc", "fastopt", f) for f in os.listdir("csrc/fastopt")
                 if f.endswith(".h"))


class BuildExt(build_ext):
    """Compile kernels_isa.c once per level, then link them into _core."""

    def _openmp(self):
        """(use OpenMP, why): FASTOPT_OPENMP when set, else whether the
        compiler compiles and links a small OpenMP program (only compiled,
        never run, so that cross builds probe their target)."""
        if OPENMP is not None:
            return OPENMP, f"FASTOPT_OPENMP={os.environ['FASTOPT_OPENMP'].strip()}"
        src = ("#include <omp.h>\n"
               "int fo_probe(void) { int n = 0;\n"
               "#pragma omp parallel reduction(+:n)\n"
               "  n += 1;\n"
               "  return n + omp_get_max_threads(); }\n")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "fo_openmp_probe.c")
            with open(path, "w") as f:
                f.write(src)
            try:
                objs = self.compiler.compile([path], output_dir=tmp,
                                             extra_postargs=["-fopenmp"])
                self.compiler.link_shared_object(
                    objs, os.path.join(tmp, "fo_openmp_probe.so"),
                    extra_postargs=["-fopenmp"])
            except Exception:  # CompileError, LinkError: no OpenMP here
                return False, "the compiler has no OpenMP (probe failed): one thread"
        return True, "the compiler's OpenMP (probe)"

    def _accepted(self, flags):
        """flags, when the compiler compiles a small file with them, else []"""
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "fo_flag_probe.c")
            with open(path, "w") as f:
                f.write("int fo_probe(int x) { return x + 1; }\n")
            try:
                self.compiler.compile([path], output_dir=tmp, extra_postargs=flags)
            except Exception:  # CompileError: not this compiler's flag
                return []
        return flags

    def build_extension(self, ext):
        self.openmp, self.openmp_reason = self._openmp()
        omp = ["-fopenmp"] if self.openmp else []
        ext.extra_compile_args = list(ext.extra_compile_args) + omp
        ext.extra_link_args = list(ext.extra_link_args) + omp
        # every level's two files (the rules; the rules moving averages)
        # are separate compilations: they run side by side, one per CPU
        jobs = [(level, flags, src) for level, flags in LEVELS.items()
                for src in ("csrc/kernels_isa.c", "csrc/kernels_isa_ema.c")]
        # The loops that move averages have up to seven arrays, whose
        # restrict-qualified pointers gcc does not always trust: it then
        # vectorises behind run-time overlap checks, more than its default
        # of 10 (tools/check_simd.py finds such a loop scalar).
        ema_flags = self._accepted(["--param=vect-max-version-for-alias-checks=64"])

        def compile_one(job):
            level, flags, src = job
            return self.compiler.compile(
                [src],
                output_dir=os.path.join(self.build_temp, level),
                macros=[("FO_ISA", level)],
                include_dirs=["csrc"],
                extra_postargs=extra_compile + omp + flags
                + (ema_flags if src.endswith("_ema.c") else []),
                depends=HEADERS,
            )
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            objects = [o for objs in pool.map(compile_one, jobs) for o in objs]
        ext.extra_objects = objects
        self._write_build_info(ext)
        super().build_extension(ext)

    def _build_info_path(self):
        if self.inplace or getattr(self, "editable_mode", False):
            folder = os.path.join("src", "fastopt")
        else:
            folder = os.path.join(self.build_lib, "fastopt")
        return os.path.join(folder, "_build_info.py")

    def get_outputs(self):
        return super().get_outputs() + [self._build_info_path()]

    def _write_build_info(self, ext):
        path = self._build_info_path()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cc = sysconfig.get_config_var("CC") or "cc"
        info = {
            "compiler": cc,
            "common_flags": extra_compile + (["-fopenmp"] if self.openmp else []),
            "level_flags": LEVELS,
            "openmp": self.openmp,
            "openmp_reason": self.openmp_reason,
            "sanitize": SANITIZE,
            "machine": platform.machine(),
            "target_arch": TARGET_ARCH,
        }
        with open(path, "w") as f:
            f.write("# Written by setup.py at build time.\n")
            f.write(f"BUILD = {info!r}\n")


macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
macros += [(f"FO_HAVE_{level.upper()}", "1") for level in LEVELS if level != "baseline"]

extensions = [
    Extension(
        "fastopt._core",
        sources=["src/fastopt/_core.pyx", "csrc/dispatch.c", "csrc/coefficients.c"],
        include_dirs=[np.get_include(), "csrc", "src/fastopt"],
        define_macros=macros,
        extra_compile_args=extra_compile,
        extra_link_args=extra_link,
        depends=HEADERS + ["src/fastopt/_kernels.pxd"]
                + [os.path.join("src/fastopt", f) for f in os.listdir("src/fastopt")
                   if f.endswith(".pxi")],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": 3, "boundscheck": False,
                             "wraparound": False, "cdivision": True},
    ),
    cmdclass={"build_ext": BuildExt},
)
