"""bench/run_all.py: a partial run (`--only`) replaces its own sections of results.md only."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_run_all():
    spec = importlib.util.spec_from_file_location("run_all", os.path.join(ROOT, "bench", "run_all.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_partial_run_keeps_other_sections_and_benchmark_order():
    run_all = load_run_all()
    existing = "# Benchmark results\n\nold header\n\n## A\n\nold a\n\n## B\n\nold b\n| x |\n\n## Z\n\nextra\n"
    previous = run_all.sections_of(existing)
    assert previous == {"A": "old a", "B": "old b\n| x |", "Z": "extra"}

    text = run_all.render("# Benchmark results\n\nnew header", previous, {"B": "new b", "C": "new c"}, ["C", "A", "B"])

    assert "old header" not in text and "new header" in text
    assert run_all.sections_of(text) == {"C": "new c", "A": "old a", "B": "new b", "Z": "extra"}
    assert text.index("## C") < text.index("## A") < text.index("## B") < text.index("## Z")


def test_every_benchmark_has_a_distinct_title():
    run_all = load_run_all()
    titles = [entry[1] for entry in run_all.BENCHMARKS.values()]
    assert len(set(titles)) == len(titles)


def _run_bench(script, *arguments):
    import subprocess
    import sys

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", script), *arguments],
        capture_output=True, text=True, env=env, timeout=300,
    )


def test_operator_cost_prints_relu_and_exact_form_rows_as_ratios():
    result = _run_bench(
        "operator_cost.py", "--operators", "sin,tanh", "--dtypes", "float32,bfloat16", "--shape", "4,4,4,2",
        "--rounds", "1", "--calls", "1",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| ")}
    assert set(rows) == {"operator", "relu", "sin", "tanh", "sin (exact form)"}
    assert rows["relu"].count("| 1.0x |") == 2  # the reference, once per dtype
    assert "tanh (exact form)" not in rows  # tanh has no separate vectorised form


def test_operator_cost_rejects_unknown_or_binary_operators():
    result = _run_bench("operator_cost.py", "--operators", "sine,add")
    assert result.returncode != 0
    assert "not unary operators: ['sine', 'add']" in result.stderr
