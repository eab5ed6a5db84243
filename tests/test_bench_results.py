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
