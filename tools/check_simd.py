#!/usr/bin/env python3
"""Check from the disassembly that each level's kernels use its vector width.

Usage: python tools/check_simd.py [BUILD_DIR]   (default: build/)

For every rule's range function at every compiled level, counts packed
arithmetic instructions by register width (xmm = 128, ymm = 256, zmm = 512
bits) and reports the widest packed sqrt and division.  Exits 1 when a level
lacks its width: AVX-512 must use zmm, AVX2 ymm, the baseline packed xmm, for
the multiplies of every update rule of the table (src/fastopt/rules.py) and
for sqrt and division wherever the rule has them; a function without packed
arithmetic at its level's width fails.
"""
import collections
import importlib.util
import pathlib
import re
import subprocess
import sys

WIDTH = {"baseline": "xmm", "avx2": "ymm", "avx512": "zmm"}

def _table_rules():
    """The rules of src/fastopt/rules.py, read as plain data."""
    path = pathlib.Path(__file__).resolve().parent.parent / "src/fastopt/rules.py"
    spec = importlib.util.spec_from_file_location("fastopt_rules", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.RULES)


TABLE_RULES = _table_rules()
RULES = TABLE_RULES + ["scale", "clamp", "sumsq"]
ARITH = re.compile(r"\b(v?)(sqrt|div|mul|add|sub|max|min)p([sd])\b.*%([xyz]mm)")


def functions(obj):
    """{function name: [instruction lines]} from objdump -d."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(obj)],
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


def main():
    build = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "build")
    failures = 0
    for level, reg in WIDTH.items():
        objs = sorted(build.glob(f"temp*/{level}/csrc/kernels_isa.o"))
        if not objs:
            print(f"{level}: not built")
            continue
        funcs = functions(objs[-1])
        print(f"{level} ({objs[-1]}), expected {reg}:")
        for rule in RULES:
            for dt in ("f32", "f64"):
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
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
