"""The bench's markdown report (`python -m fastopt bench --markdown PATH`):
every record a row, the figures those of the records."""
import argparse
import re

import pytest

from fastopt.harness import bench


def _record(rule, n, fastopt_s, floor_s, numpy_s, **torch):
    return {"rule": rule, "dtype": "float32", "n": n, "threads": 2,
            "simd": "avx2", "bytes": 28 * n, "fastopt_s": fastopt_s,
            "floor_s": floor_s, "numpy_s": numpy_s, **torch}


def _rows(text, table=0):
    """Header, rule line and rows of the text's table number ``table``."""
    blocks = [b for b in text.split("\n\n") if b.startswith("|")]
    lines = blocks[table].splitlines()
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return cells[0], cells[1], cells[2:]


def test_markdown_table_columns_and_figures():
    recs = [_record("adam", 10**7, 0.0110, 0.0100, 0.1320,
                    torch_fused_2t_s=0.0121, torch_foreach_1t_s=0.0550,
                    torch_foreach_2t_s=0.0330),
            _record("lion", 10**5, 2.0e-5, 1.5e-5, 2.6e-4)]
    text = bench.markdown_table(recs, header="run of the test")
    assert text.startswith("run of the test\n\n")
    head, rule, rows = _rows(text)
    assert head == ["rule", "dtype", "elements", "threads", "fastopt ns/el",
                    "floor ns/el", "GB/s", "%floor", "× NumPy",
                    "× torch fused 2t", "× torch foreach 2t", "× torch foreach 1t"]
    assert len(rule) == len(head)
    assert rows[0] == ["adam", "float32", "1e+07", "2", "1.100", "1.000", "25.5",
                       "91%", "12.0", "1.10", "3.00", "5.00"]
    # a column a record lacks is a dash, not a number
    assert rows[1] == ["lion", "float32", "1e+05", "2", "0.200", "0.150", "140.0",
                       "75%", "13.0", "–", "–", "–"]


def test_bench_cli_writes_the_markdown_of_its_records(tmp_path):
    out = tmp_path / "bench.md"
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(
        ["--quick", "--rules", "sgd,rprop", "--sizes", "1000", "--dtypes",
         "float32,float64", "--threads", "1", "--no-torch", "--markdown", str(out)])
    assert bench.main(args) == 0
    text = out.read_text()
    assert text.startswith("`python -m fastopt bench`: fastopt ")
    head, _, summary = _rows(text, 0)
    assert head == ["rule", "dtype", "%floor 1e+03 1t", "× torch 1e+03 1t",
                    "× NumPy 1e+03 1t"]
    assert [(r[0], r[1]) for r in summary] == [
        ("sgd", "float32"), ("sgd", "float64"), ("rprop", "float32"), ("rprop", "float64")]
    head, _, rows = _rows(text, 1)
    assert head[-1] == "× NumPy"          # no torch columns without torch
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("sgd", "float32", "1e+03"), ("sgd", "float64", "1e+03"),
        ("rprop", "float32", "1e+03"), ("rprop", "float64", "1e+03")]
    for r, s in zip(rows, summary):
        fastopt_ns, floor_ns = float(r[4]), float(r[5])
        assert fastopt_ns > 0 and floor_ns > 0
        # %floor comes from the unrounded times; the ns columns have 3 decimals
        assert abs(int(r[7][:-1]) - 100 * floor_ns / fastopt_ns) <= 2
        # one size and one thread count: the summary repeats the record
        assert s[2:] == [r[7], "–", r[8]]


@pytest.mark.parametrize("key, column", [("torch_fused_2t_s", ("fused", 2)),
                                         ("torch_sf-forloop_1t_s", ("sf-forloop", 1))])
def test_torch_column_names(key, column):
    assert bench._torch_column(key) == column


def test_markdown_and_json_name_the_command_as_run(tmp_path):
    import json
    from fastopt.__main__ import main
    out, records = tmp_path / "bench.md", tmp_path / "bench.json"
    argv = ["bench", "--quick", "--rules", "sgd", "--sizes", "1000", "--dtypes",
            "float32", "--threads", "1", "--no-torch", "--markdown", str(out),
            "--json", str(records)]
    assert main(argv) == 0
    command = f"python -m fastopt {' '.join(argv)}"
    assert out.read_text().startswith(f"`{command}`: ")
    saved = json.loads(records.read_text())
    assert saved["command"] == command and len(saved["records"]) == 1


def test_summary_table_one_row_per_rule_and_dtype():
    recs = [_record("adam", 10**5, 2.0e-5, 1.0e-5, 2.0e-4, torch_fused_2t_s=8.0e-5,
                    torch_foreach_2t_s=1.6e-4, torch_fused_1t_s=1.0e-6),
            _record("adam", 10**7, 0.0110, 0.0100, 0.1320, torch_fused_2t_s=0.0121,
                    torch_foreach_2t_s=0.0110),
            dict(_record("adam", 10**7, 0.0200, 0.0190, 0.1000), threads=1),
            _record("lion", 10**7, 0.0050, 0.0045, 0.0600)]
    head, rule, rows = _rows(bench.summary_table(recs))
    assert head == ["rule", "dtype", "%floor 1e+07 1t", "%floor 1e+07 2t",
                    "× torch 1e+05 2t", "× torch 1e+07 2t", "× NumPy 1e+07 2t"]
    assert len(rule) == len(head)
    # the fastest torch path at fastopt's thread count (1t's faster time is
    # not a peer of the 2-thread row); foreach beats fused at 10^7
    assert rows == [
        ["adam", "float32", "95%", "91%", "4.00 (fused)", "1.00 (foreach)", "12.0"],
        ["lion", "float32", "–", "90%", "–", "–", "12.0"]]


def test_plot_puts_four_rules_a_row(tmp_path):
    pytest.importorskip("matplotlib")
    import struct
    recs = [_record(rule, n, 1e-9 * n, 0.9e-9 * n, 1e-8 * n)
            for rule in ("sgd", "adam", "lion", "nadam", "rprop") for n in (10**5, 10**7)]
    path = tmp_path / "bench.png"
    assert bench.plot(recs, str(path)) == str(path)
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    # five panels: a row of four and a second row, at the figure's 110 dpi
    assert (width, height) == (round(4.2 * 4 * 110), round(3.6 * 2 * 110))


_STATE_RESULTS = {
    10**5: {1: {"float32": 0.06, "bfloat16": 0.05, "8bit": 0.11, "floor_28": 0.057,
                "floor_20": 0.02, "floor_16": 0.0132, "torch": 0.2, "bnb": 1.76},
            2: {"float32": 0.07, "bfloat16": 0.04, "8bit": 0.08, "floor_28": 0.03,
                "floor_20": 0.016, "floor_16": 0.012}}}


def test_state_dtype_tables_columns_and_figures():
    from fastopt.harness import state_bench
    text = state_bench.markdown(_STATE_RESULTS, "run of the test")
    assert text.startswith("run of the test\n\nbfloat16 states\n\n")
    assert "\n8-bit states\n\n" in text
    head, rule, rows = _rows(text, 0)
    assert head[:2] == ["elements", "threads"] and len(rule) == len(head) == 9
    assert rows == [["1e+05", "1", "0.06", "0.05", "0.20", "0.30", "0.25", "0.10", "40%"],
                    ["1e+05", "2", "0.07", "0.04", "-", "-", "-", "-", "40%"]]
    head, rule, rows = _rows(text, 1)
    assert head[-2:] == ["bitsandbytes AdamW8bit ms", "bitsandbytes / 8-bit"]
    assert len(rule) == len(head) == 11
    assert rows == [["1e+05", "1", "0.06", "0.05", "0.11", "0.20", "0.55", "0.07", "12%",
                     "1.76", "16"],
                    ["1e+05", "2", "0.07", "0.04", "0.08", "-", "-", "-", "15%", "-", "-"]]
    # the printed table has every figure of both
    head, _, rows = _rows(state_bench.table(_STATE_RESULTS, state_bench.ALL_COLUMNS))
    assert len(head) == 16 and rows[0][-2:] == ["1.76", "16"]


def test_state_dtype_bench_cli_writes_its_tables(tmp_path):
    from fastopt.__main__ import main
    out = tmp_path / "states.md"
    argv = ["bench", "--state-dtypes", "--quick", "--sizes", "1024", "--threads", "1",
            "--no-torch", "--markdown", str(out)]
    assert main(argv) == 0
    text = out.read_text()
    assert text.startswith(f"`python -m fastopt {' '.join(argv)}`: ")
    for table in (0, 1):
        _, _, rows = _rows(text, table)
        assert [r[:2] for r in rows] == [["1e+03", "1"]]
        # milliseconds with two decimals (0.00 at this size)
        assert all(re.fullmatch(r"\d+\.\d\d", c) for c in rows[0][2:4])
