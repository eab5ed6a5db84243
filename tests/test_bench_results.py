"""bench/run_all.py: a partial run (`--only`) replaces its own sections of results.md only; the
benchmarks' progress reaches the terminal without TensorFlow's start-up notes."""

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


def test_run_relays_tables_and_progress_without_tensorflow_start_up_notes(tmp_path, monkeypatch, capfd):
    run_all = load_run_all()
    (tmp_path / "fake.py").write_text(
        "import sys\n"
        "print('I0000 port.cc:153] oneDNN custom operations are on. You may see ...', file=sys.stderr)\n"
        "print('WARNING:tensorflow:5 out of the last 13 calls to f triggered tf.function retracing.', file=sys.stderr)\n"
        "print('round 1 of 3', file=sys.stderr)\n"
        "print('| relu | 1.00x |')\n"
        "sys.exit(3)\n"
    )
    monkeypatch.setattr(run_all, "HERE", str(tmp_path))

    code, output, seconds = run_all.run("fake", [])

    assert (code, output) == (3, "| relu | 1.00x |\n") and seconds > 0
    out, err = capfd.readouterr()
    assert "[fake] | relu | 1.00x |" in out
    assert "round 1 of 3" in err
    assert "oneDNN" not in err and "retracing" not in err


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
