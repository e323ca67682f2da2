#!/usr/bin/env python3
"""Check from the disassembly that each level's kernels use its vector width.

Usage: python tools/check_simd.py [BUILD_DIR]   (default: build/)

Objects of either architecture are found in BUILD_DIR (x86-64 levels and an
aarch64 cross build, e.g. from tools/test_aarch64.sh); on aarch64 the one
level, NEON, must use 128-bit vectors (v.4s, v.2d) in every rule.  On both,
any fused multiply-add (vfmadd..., fmadd/fmsub/fnmadd/fnmsub/fmla/fmls)
fails: it would mean a build without -ffp-contract=off.

For every rule's range function at every compiled level (kernels_isa.o:
float32, float64, bfloat16 and 8-bit states; kernels_isa_ema.o: the loops that
move the averaged parameters, emaf32 and emaf64), counts packed
arithmetic instructions by register width (xmm = 128, ymm = 256, zmm = 512
bits) and reports the widest packed sqrt and division.  Exits 1 when a level
lacks its width: AVX-512 must use zmm, AVX2 ymm, the baseline packed xmm, for
the multiplies of every update rule of the table (src/fastopt/rules.py) and
for sqrt and division wherever the rule has them; a function without packed
arithmetic at its level's width fails.  The 8-bit state codec (q8.h) is
checked the same way at every level: q8_encode and q8_decode must have
packed multiplies at the level's width (v.4s on aarch64), and q8_encode
packed float-to-int conversions (cvttps2dq, fcvtzs), which only its
element loop has: a loop that is not vectorised (gcc keeps one scalar when
it cannot if-convert a trapping operation) converts with cvttss2si.
"""
import collections
import importlib.util
import pathlib
import re
import shutil
import subprocess
import sys

WIDTH = {"baseline": "xmm", "avx2": "ymm", "avx512": "zmm"}
# aarch64 has one level, NEON: 128-bit vectors, v<n>.4s (float32) and
# v<n>.2d (float64)
ARM_ARITH = re.compile(r"\bf(sqrt|div|mul|add|sub|max|min|maxnm|minnm|cmgt|cmge|cmeq|abs|neg)"
                       r"\s+v\d+\.(4s|2d)\b")
# fused multiply-adds, which -ffp-contract=off must keep out of every level
FUSED = {"x86": re.compile(r"\bvf(n?)m(add|sub)"),
         "aarch64": re.compile(r"\b(fmadd|fmsub|fnmadd|fnmsub|fmla|fmls)\b")}

def _table_rules():
    """The rules of src/fastopt/rules.py, read as plain data."""
    path = pathlib.Path(__file__).resolve().parent.parent / "src/fastopt/rules.py"
    spec = importlib.util.spec_from_file_location("fastopt_rules", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RULES


TABLE = _table_rules()
TABLE_RULES = list(TABLE)
# rules whose bfloat16 row is never called: a matrix step between passes
# (Muon) refuses bfloat16 states
NO_BF16 = {name for name, rule in TABLE.items() if getattr(rule, "matrix", "")}
RULES = TABLE_RULES + ["scale", "clamp", "sumsq"]
# the 8-bit codec (q8.h, one copy per level, named <name>_lowp_<level>):
# the packed operations each must have
CODEC = {"q8_encode": ("mul", "cvt"), "q8_decode": ("mul",)}
# packed float32-to-int32 conversions (destination register last)
CVT = {"x86": re.compile(r"\bv?cvttps2dq\b.*%([xyz]mm)"),
       "aarch64": re.compile(r"\bfcvtzs\s+v\d+\.4s\b")}


def codec_count(body, arch):
    """Counter of the packed operations of a codec function: (op, register
    width) on x86, op on aarch64; conversions count as "cvt"."""
    count = collections.Counter()
    for line in body:
        if arch == "x86":
            m = ARITH.search(line)
            if m:
                count[(m.group(2), m.group(4))] += 1
            m = CVT["x86"].search(line)
            if m:
                count[("cvt", m.group(1))] += 1
        else:
            m = ARM_ARITH.search(line)
            if m:
                count[m.group(1)] += 1
            if CVT["aarch64"].search(line):
                count["cvt"] += 1
    return count


def row_kinds(rule):
    """The rows of a rule's range function: f32, f64; for a rule of the
    table also emaf32, emaf64 (the loops moving the averages, rules.h with
    FO_EMA) and bf16 (float32 parameters with bfloat16 states, lowp.h)."""
    kinds = ("f32", "f64")
    if rule in TABLE_RULES:
        kinds += ("emaf32", "emaf64") + (() if rule in NO_BF16 else ("bf16",))
    return kinds


def kinds_at(rule, funcs, level):
    """row_kinds, and q8 where the level has the rule's loop for 8-bit
    states (rules.h with FO_Q8; only rules of kernels_isa.c's FO_Q8_LIST
    have one, and Adam must)"""
    kinds = row_kinds(rule)
    if rule == "adam" or f"{rule}_range_q8_{level}" in funcs:
        kinds += ("q8",)
    return kinds


ARITH = re.compile(r"\b(v?)(sqrt|div|mul|add|sub|max|min)p([sd])\b.*%([xyz]mm)")


def arch_of(obj):
    """'aarch64' or 'x86', from the ELF header."""
    with open(obj, "rb") as f:
        head = f.read(20)
    return "aarch64" if int.from_bytes(head[18:20], "little") == 183 else "x86"


def objdump(arch):
    """the host's objdump for x86, the cross binutils' for aarch64 objects"""
    if arch == "aarch64" and shutil.which("aarch64-linux-gnu-objdump"):
        return "aarch64-linux-gnu-objdump"
    return "objdump"


def functions(obj):
    """{function name: [instruction lines]} from objdump -d."""
    out = subprocess.run([objdump(arch_of(obj)), "-d", "--no-show-raw-insn", str(obj)],
                         check=True, capture_output=True, text=True).stdout
    funcs, name = {}, None
    for line in out.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if m:
            name = m.group(1)
            funcs[name] = []
        elif name and line.strip():
            funcs[name].append(line)
    return funcs


def level_functions(obj):
    """functions() of a level's kernels_isa.o and of the kernels_isa_ema.o
    beside it."""
    funcs = functions(obj)
    ema = obj.with_name("kernels_isa_ema.o")
    if ema.exists():
        funcs.update(functions(ema))
    return funcs


def fused(funcs, arch):
    """[(function, instruction)] of the fused multiply-adds in funcs."""
    return [(name, line.strip()) for name, body in funcs.items()
            for line in body if FUSED[arch].search(line)]


def check_aarch64(obj):
    """NEON in every rule's loop and no fused multiply-add anywhere."""
    funcs = level_functions(obj)
    failures = 0
    print(f"aarch64 baseline = NEON ({obj}), expected v.4s/v.2d:")
    for rule in RULES:
        for dt in kinds_at(rule, funcs, "baseline"):
            body = funcs.get(f"{rule}_range_{dt}_baseline", [])
            count = collections.Counter()
            for line in body:
                m = ARM_ARITH.search(line)
                if m:
                    count[m.group(1)] += 1
            need = {"mul"} if rule in TABLE_RULES and not (rule == "sumsq" and dt == "f32") else set()
            missing = sorted(op for op in need if not count[op])
            if not count:
                missing.append("any vector arithmetic")
            status = "ok" if body and not missing else f"MISSING {missing}"
            failures += status != "ok"
            summary = ", ".join(f"{op}={n}" for op, n in sorted(count.items()))
            print(f"  {rule:9s} {dt}: {status:24s} {summary}")
    for name, need in CODEC.items():
        body = funcs.get(f"{name}_lowp_baseline", [])
        count = codec_count(body, "aarch64")
        missing = [op for op in need if not count[op]]
        status = "ok" if body and not missing else f"MISSING {missing}"
        failures += status != "ok"
        summary = ", ".join(f"{op}={n}" for op, n in sorted(count.items()))
        print(f"  {name:9s} f32: {status:24s} {summary}")
    bad = fused(funcs, "aarch64")
    for name, line in bad[:10]:
        print(f"  FUSED multiply-add in {name}: {line}")
    print(f"  fused multiply-adds: {len(bad)}")
    return failures + len(bad)


def main():
    build = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "build")
    failures = 0
    arm = [o for o in sorted(build.glob("temp*/baseline/csrc/kernels_isa.o"))
           if arch_of(o) == "aarch64"]
    for obj in arm[-1:]:
        failures += check_aarch64(obj)
    for level, reg in WIDTH.items():
        objs = [o for o in sorted(build.glob(f"temp*/{level}/csrc/kernels_isa.o"))
                if arch_of(o) == "x86"]
        if not objs:
            print(f"{level}: not built")
            continue
        funcs = level_functions(objs[-1])
        bad = fused(funcs, "x86")
        for name, line in bad[:10]:
            print(f"  FUSED multiply-add in {name}: {line}")
        failures += len(bad)
        print(f"{level} ({objs[-1]}), expected {reg}, fused multiply-adds: {len(bad)}:")
        for rule in RULES:
            for dt in kinds_at(rule, funcs, level):
                body = funcs.get(f"{rule}_range_{dt}_{level}", [])
                count = collections.Counter()
                for line in body:
                    m = ARITH.search(line)
                    if m:
                        count[(m.group(2), m.group(4))] += 1
                ops = sorted({op for op, _ in count})
                summary = ", ".join(f"{op}:" + "/".join(f"{r}={count[(op, r)]}"
                                    for r in ("xmm", "ymm", "zmm") if count[(op, r)])
                                    for op in ops)
                need = [op for op in ("sqrt", "div", "mul") if op in ops]
                if rule in TABLE_RULES:   # every update rule multiplies
                    need = sorted(set(need) | {"mul"})
                missing = [op for op in need if not count[(op, reg)]]
                if not any(count[(op, reg)] for op in ops):
                    missing.append("any packed arithmetic")
                if rule == "sumsq":  # accumulates in double: f32 is widened
                    missing = [op for op in missing if op != "mul" or dt == "f64"]
                status = "ok" if body and not missing else f"MISSING {reg} {missing}"
                failures += status != "ok"
                print(f"  {rule:9s} {dt}: {status:24s} {summary}")
        for name, need in CODEC.items():
            body = funcs.get(f"{name}_lowp_{level}", [])
            count = codec_count(body, "x86")
            missing = [op for op in need if not count[(op, reg)]]
            status = "ok" if body and not missing else f"MISSING {reg} {missing}"
            failures += status != "ok"
            summary = ", ".join(f"{op}:" + "/".join(f"{r}={count[(op, r)]}"
                                for r in ("xmm", "ymm", "zmm") if count[(op, r)])
                                for op in sorted({op for op, _ in count}))
            print(f"  {name:9s} f32: {status:24s} {summary}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
