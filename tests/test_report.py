"""Tests for the report: contents of report.md / report.html and rendering in headless Chromium."""

import base64
import html as html_lib
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from matplotlib.figure import Figure

from components import report as rp
from components import statistics as st

BROWSER_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
EXPR = "max(relu(x),cosh(elu(x)))"
ORIGINS = {"relu": "baseline", "swish": "search initial candidate, trial 02",
           EXPR: "evolved (insert), generation 3, trial 27"}


def _runs(rng):
    runs = []
    for name, mean in [("relu", 0.90), ("swish", 0.93), (EXPR, 0.90), ("x|y", 0.85)]:
        for seed in range(4):
            run = dict(function=name, seed=seed, test_accuracy=float(mean + rng.normal(0, 0.004)),
                       val_accuracy=float(mean + rng.normal(0, 0.004)), diverged=False,
                       origin=ORIGINS.get(name))
            if name == EXPR:
                run["learned_parameters"] = {
                    f"block{i}/act": {"alpha": list(rng.normal(1.0 + i / 10, 0.05, size=3)),
                                      "beta": float(rng.normal(0.5, 0.02))} for i in range(3)}
            runs.append(run)
    for run in runs:
        run["precision"] = "mixed_bfloat16"
    runs.append(dict(function="x|y", seed=4, test_accuracy=float("nan"), diverged=True,
                     num_classes=10))
    runs += [dict(function="fewseeds", seed=s, test_accuracy=0.97, val_accuracy=0.9)
             for s in range(2)]
    return runs


def _png(path, kind="relu"):
    fig = Figure(figsize=(3, 2), dpi=60)
    ax = fig.add_subplot()
    x = np.linspace(-4, 4, 50)
    ax.plot(x, np.maximum(x, 0) if kind == "relu" else x / (1 + np.exp(-x)))
    fig.savefig(path)
    return path


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(5)
    runs = _runs(rng)
    plots = {"relu": _png(tmp_path / "relu.png"),
             "swish": [_png(tmp_path / "swish.png", "swish"), _png(tmp_path / "swish_d.png")]}
    history = [dict(generation=g, best=0.5 + 0.04 * g, median=0.4 + 0.03 * g, distinct=4 * (g + 1),
                    rejected=g % 3, duplicates=1) for g in range(5)]
    # As the Tuner writes them: ids from "00" in proposal order, parents are earlier trials' ids.
    trials = [dict(trial_id=f"{i:02d}", expression=f"tanh(x)*{i}", fitness=0.5 + i / 100, generation=i // 4,
                   parents=[f"{i - 4:02d}", f"{i - 3:02d}"] if i >= 4 else []) for i in range(12)]
    trials.append(dict(trial_id="12", expression="bad(x)", fitness=float("nan"), generation=3, parents=["00"]))
    config = {"data": {"name": "digits", "train_examples": 1200}, "model": {"name": "mlp",
              "width": 64}, "budget": {"epochs": 3, "batch_size": 32}, "seeds": [0, 1, 2, 3]}
    return dict(evaluation=st.evaluate(runs), runs=runs, history=history, trials=trials,
                function_plots=plots, config=config)


def _write(tmp_path, inputs, **overrides):
    return rp.write_report(tmp_path / "out", **{**inputs, **overrides})


def _data_uri_images(text):
    return re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)


def test_markdown_has_results_table_and_verdicts(tmp_path, inputs):
    md_path, _ = _write(tmp_path, inputs)
    md = md_path.read_text()
    ev = inputs["evaluation"]
    assert md.startswith("# ")
    assert "| Function | Origin | n | Mean ± std | 95% CI | Δ vs relu |" in md
    for f in ev.functions:
        row = next(line for line in md.splitlines()
                   if line.startswith("| `" + rp.function_label(f.function).replace("|", "\\|") + "`"))
        assert f"{100 * f.mean:.2f}" in row
        assert f"| {ORIGINS.get(f.function, '—')} |" in row  # where the function came from
        if not f.is_baseline:
            assert f"{100 * f.diff:+.2f} pp" in row
            assert f.win_tie_loss in row
    assert ev.summary in md
    assert "**BLESSED**" in md  # swish
    assert "too few seeds for a test (n=2)" in md
    assert "1 diverged" in md
    # Pipes inside expressions are escaped so the table keeps its columns.
    assert "`x\\|y`" in md
    # Figures are linked as files that exist.
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 6  # accuracy, 3 given plots, 1 parameter plot, evolution
    for link in links:
        assert (md_path.parent / link).is_file()
    # Reproduction settings and trials.
    for text in ("data.name", "digits", "budget.epochs", "model.width", "seeds (final runs)"):
        assert text in md
    assert "| `precision (final runs)` | `mixed_bfloat16` |" in md  # what `auto` chose
    assert "could not be decoded" not in md  # nothing was skipped
    skipped = [f"cat/{i}.jpg" for i in range(12)]
    md = _write(tmp_path, inputs, skipped_files=skipped)[0].read_text()
    assert ("12 image file(s) of the data source could not be decoded and were left out (`skip_corrupt`): "
            "`cat/0.jpg`, `cat/1.jpg`,") in md
    assert "`cat/9.jpg` and 2 more; ExampleGen's statistics.json lists them all." in md
    assert "Top 10 of 13 search trials" in md
    assert "| Rank | Trial | Expression | Fitness (val. acc. %) | Generation | Parents | Simplest form |" in md
    rows = re.findall(r"^\| (\d+) \| `(\d+)` \| `tanh\(x\) \* (\d+)` \| ([\d.]+) \| \d+ \| ([^|]+) \|", md, re.M)
    assert [int(r[2]) for r in rows] == list(range(11, 1, -1))  # best fitness first
    assert [r[0] for r in rows] == [str(rank) for rank in range(1, 11)]
    # The Trial column shows the trial's id (not its rank), and Parents name trial ids: ones in
    # the table or earlier trials, never ranks.
    assert [r[1] for r in rows] == [f"{i:02d}" for i in range(11, 1, -1)]
    shown = {r[1] for r in rows}
    for _, trial_id, _, _, parents in rows:
        for parent in re.findall(r"`([^`]+)`", parents):
            assert parent in shown or parent < trial_id, (trial_id, parent)
    assert "| 1 | `11` | `tanh(x) * 11` | 61.00 | 2 | `07`, `08` |" in md
    assert "bad(x)" not in md  # NaN fitness sorts last, outside the top 10
    # The distinct count is a running total, and the table says so.
    assert "| Generation | Best (%) | Median (%) | Distinct so far | Rejected | Duplicates |" in md
    assert "distinct functions the search had proposed by the end of the generation" in md
    assert "| 4 | 66.00 | 52.00 | 20 | 1 | 1 |" in md


def test_trials_show_the_simplest_form_of_roundabout_expressions(tmp_path, inputs):
    trials = [dict(trial_id="12", expression="mish(x - beta*zero(x))", fitness=0.9, generation=3, parents=["07"]),
              dict(trial_id="01", expression="x * sigmoid(beta * x)", fitness=0.8, generation=0, parents=[]),
              dict(expression="not an expression(", fitness=0.1, generation=0, parents=[])]
    md = _write(tmp_path, inputs, trials=trials)[0].read_text()
    rows = {line.split(" | ")[2]: line for line in md.splitlines() if line.startswith("| ") and line.count(" | ") >= 6}
    assert rows["`mish(x - beta * zero(x))`"].startswith("| 1 | `12` |")
    assert rows["`not an expression(`"].startswith("| 3 | — |")  # no id given: none shown
    assert rows["`mish(x - beta * zero(x))`"].endswith("| `mish(x)` |")
    assert rows["`x * sigmoid(beta * x)`"].endswith("| — |")
    assert rows["`not an expression(`"].endswith("| — |")


def test_trials_the_search_stopped_early_are_marked_and_counted(tmp_path, inputs):
    trials = [dict(trial_id="03", expression="tanh(x)", fitness=0.9, generation=0, parents=[], stopped_at=None),
              dict(trial_id="07", expression="sin(x)", fitness=0.2, generation=1, parents=["03"], stopped_at=1)]
    history = [dict(row, stopped_early=row["generation"] % 2) for row in inputs["history"]]
    md = _write(tmp_path, inputs, trials=trials, history=history)[0].read_text()
    assert "| 2 | `07` | `sin(x)` | 20.00 (stopped after epoch 1) | 1 |" in md
    assert "| 1 | `03` | `tanh(x)` | 90.00 | 0 |" in md
    assert "| Generation | Best (%) | Median (%) | Distinct so far | Rejected | Duplicates | Stopped early |" in md
    assert "| 1 | 54.00 | 43.00 | 8 | 1 | 1 | 1 |" in md


def test_the_command_that_recreates_the_run_is_shown_verbatim(tmp_path, inputs):
    command = "actsearch run --seed_functions='relu,add(x,relu(x))' --name=\"a<b>&c\""
    md_path, html_path = _write(tmp_path, inputs, command=command)
    assert f"```sh\n{command}\n```" in md_path.read_text()
    assert f"<pre><code>{html_lib.escape(command)}</code></pre>" in html_path.read_text()
    md_path, html_path = _write(tmp_path, inputs)  # no command given: no empty block
    assert "```sh" not in md_path.read_text() and "<pre>" not in html_path.read_text()


def test_html_is_self_contained_with_embedded_pngs(tmp_path, inputs):
    _, html_path = _write(tmp_path, inputs)
    text = html_path.read_text()
    assert text.startswith("<!DOCTYPE html>")
    # No external resources, no scripts.
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", text)
    assert "<script" not in text and "<link" not in text and "@import" not in text
    images = _data_uri_images(text)
    assert len(images) == 6 and len(re.findall("<img ", text)) == 6
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")
    # The given plots are embedded byte for byte.
    assert base64.b64encode((tmp_path / "relu.png").read_bytes()).decode() in images
    assert html_lib.escape(inputs["evaluation"].summary) in text
    assert 'class="badge badge-BLESSED"' in text
    assert f"<code>{html_lib.escape(rp.function_label(EXPR))}</code>" in text


def test_nothing_beats_baseline_is_stated(tmp_path):
    rng = np.random.default_rng(0)
    runs = [dict(function=f, seed=s, test_accuracy=float(m + rng.normal(0, 0.003)))
            for f, m in [("relu", 0.9), ("worse", 0.85)] for s in range(3)]
    ev = st.evaluate(runs)
    md_path, html_path = rp.write_report(tmp_path, evaluation=ev.to_dict(), runs=runs,
                                         config={"model": "mlp"},
                                         exported={"function": "worse", "why_exported": "not blessed: because"})
    assert "**NOT BLESSED** — No function beat relu" in md_path.read_text()
    assert "Exported: worse in export/activation.json (not blessed: because)." in md_path.read_text()
    assert "No function beat relu" in html_path.read_text()
    # Optional sections are left out when their data is not given.
    assert "Search progress" not in md_path.read_text()
    assert "search trials" not in md_path.read_text()


def test_bad_inputs_raise_clear_errors(tmp_path, inputs):
    with pytest.raises(rp.ReportError, match="plot for function 'relu' not found"):
        _write(tmp_path, inputs, function_plots={"relu": tmp_path / "missing.png"})
    (tmp_path / "fake.png").write_text("not a png")
    with pytest.raises(rp.ReportError, match="not a PNG"):
        _write(tmp_path, inputs, function_plots={"relu": tmp_path / "fake.png"})
    with pytest.raises(rp.ReportError, match="history entry 0"):
        _write(tmp_path, inputs, history=[{"generation": 0, "best": 1.0}])
    with pytest.raises(rp.ReportError, match="trial 0"):
        _write(tmp_path, inputs, trials=[{"fitness": 1.0}])
    with pytest.raises(rp.ReportError, match="config"):
        _write(tmp_path, inputs, config=None)
    with pytest.raises(rp.ReportError, match="evaluation"):
        _write(tmp_path, inputs, evaluation="BLESSED")
    assert issubclass(rp.ReportError, ValueError)


def test_rewriting_drops_stale_figures(tmp_path, inputs):
    _write(tmp_path, inputs)
    figures = tmp_path / "out" / rp.FIGURES_DIR
    assert len(list(figures.glob("*.png"))) == 6
    _write(tmp_path, inputs, function_plots={}, history=None)
    left = sorted(p.name for p in figures.glob("*.png"))
    assert len(left) == 2 and left[0] == "accuracy.png" and left[1].startswith("parameters_")


# ---------------------------------------------------------------------------------------------
# Rendering in a real browser.

_PROBE = """<script>
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "render-check";
  out.textContent = JSON.stringify({
    images: [...document.images].map(i => [i.naturalWidth, i.naturalHeight, i.complete]),
    tables: [...document.querySelectorAll("table")].map(t => t.rows.length),
    badges: [...document.querySelectorAll(".badge")].map(b => b.textContent),
    width: document.body.scrollWidth, height: document.body.scrollHeight,
  });
  document.body.appendChild(out);
});
</script>"""


def _browser():
    for name in BROWSER_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless browser found (looked for " + ", ".join(BROWSER_CANDIDATES)
                + "); install Debian's `chromium` package to run the rendering test")


def _run_browser(browser, tmp_path, *args):
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--disable-extensions", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'browser-profile'}", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{browser} did not finish within 60 s: {' '.join(cmd)}")


def test_report_renders_in_headless_chromium(tmp_path, inputs):
    browser = _browser()
    _, html_path = _write(tmp_path, inputs)
    # A test copy of the page with a probe that records, after load, what the browser rendered.
    probe_page = html_path.with_name("probe.html")
    probe_page.write_text(html_path.read_text().replace("</body>", _PROBE + "</body>"))
    dom = _run_browser(browser, tmp_path, "--dump-dom", probe_page.as_uri()).stdout
    match = re.search(r'<pre id="render-check">(.*?)</pre>', dom, re.S)
    assert match, "the page's load event never fired in the browser:\n" + dom[-2000:]
    result = json.loads(html_lib.unescape(match.group(1)))
    assert len(result["images"]) == 6
    for width, height, complete in result["images"]:
        assert complete and width > 0 and height > 0  # every embedded PNG decoded
    ev = inputs["evaluation"]
    # Results table: header + one row per function; then settings, history, trials, runs tables.
    assert result["tables"][0] == 1 + len(ev.functions)
    assert len(result["tables"]) == 5
    assert sorted(result["badges"]) == sorted(
        {"BASELINE": "baseline", "BLESSED": "BLESSED", "NOT_BLESSED": "NOT BLESSED"}[f.verdict]
        for f in ev.functions)
    assert result["height"] > 1500  # the figures take up space on the page

    # The page itself (no probe) draws: a screenshot is not a blank canvas.
    shot = tmp_path / "shot.png"
    _run_browser(browser, tmp_path, f"--screenshot={shot}", "--window-size=1100,4000",
                 "--hide-scrollbars", html_path.as_uri())
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (4000, 1100)
    dark = (pixels.mean(axis=-1) < 0.5).mean()
    assert 0.005 < dark < 0.5, dark  # text and lines on a light page
    colourful = (pixels.max(axis=-1) - pixels.min(axis=-1) > 0.3).mean()
    assert colourful > 0.002, colourful  # the coloured verdict badges and plot lines are visible


# ---------------------------------------------------------------------------------------------
# What the review of a run's report found.


def test_parameter_bars_span_seeds_and_channels_not_only_layer_means():
    """A per-channel layer spanning 0.97-1.03 drew as a point at its mean; now its bar spans
    min to max over seeds and channels, as the caption says. Old records (the layer mean alone)
    still draw, as a point."""
    runs = [{"learned_parameters": {"act_01": {"alpha": {"mean": 0.9985, "min": 0.97, "max": 1.03, "size": 64}},
                                    "act_02": {"alpha": {"mean": 1.1, "min": 1.05, "max": 1.12}}}},
            {"learned_parameters": {"act_01": {"alpha": {"mean": 1.0015, "min": 0.98, "max": 1.04, "size": 64}},
                                    "act_02": {"alpha": 1.2}}}]  # an older record: the mean only
    fig = rp._parameter_plot("alpha*x", runs)
    (ax,) = fig.axes
    (bars,) = ax.collections
    spans = sorted((float(seg[0][0]), float(seg[0][1]), float(seg[1][1])) for seg in bars.get_segments())
    assert spans[0] == pytest.approx((0.0, 0.97, 1.04))  # over both seeds and all channels
    assert spans[1] == pytest.approx((1.0, 1.05, 1.2))
    assert list(ax.lines[0].get_ydata()) == pytest.approx([1.0, 1.15])  # mean over seeds of the layer means
    # Old records alone, and per-channel lists, still draw.
    old = rp._parameter_plot("alpha*x", [{"learned_parameters": {"a": {"alpha": 0.5}}}])
    assert [list(seg[:, 1]) for seg in old.axes[0].collections[0].get_segments()] == [[0.5, 0.5]]
    listed = rp._parameter_plot("alpha*x", [{"learned_parameters": {"a": {"alpha": [0.9, 1.0, 1.4]}}}])
    assert [list(seg[:, 1]) for seg in listed.axes[0].collections[0].get_segments()] == [pytest.approx([0.9, 1.4])]


def test_a_single_generation_is_labelled_with_whole_numbers():
    fig = rp._evolution_plot([dict(generation=0, best=0.9, median=0.8, distinct=2, rejected=0, duplicates=0)])
    fig.canvas.draw()
    ticks = [t for t in fig.axes[-1].get_xticks() if fig.axes[-1].get_xlim()[0] <= t <= fig.axes[-1].get_xlim()[1]]
    assert ticks == [0.0]


def test_the_accuracy_plot_says_what_its_colours_and_marks_mean(tmp_path, inputs):
    fig = rp._accuracy_plot(inputs["evaluation"], inputs["runs"])
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["baseline", "not blessed", "blessed", "mean of relu",
                                                          "diverged"]
    md = _write(tmp_path, inputs)[0].read_text()
    assert "coloured by the function's verdict (gray: the baseline relu, green: blessed, blue: not blessed)" in md


def test_unset_settings_show_a_dash_not_none_or_an_empty_code_span(tmp_path, inputs):
    config = {"data_dir": None, "resume_root": "", "beam_options": [], "resources": {}, "augment": False}
    md = _write(tmp_path, inputs, config=config)[0].read_text()
    for key in config:
        if key != "augment":
            assert f"| `{key}` | — |" in md
    assert "| `augment` | `False` |" in md
    assert "`None`" not in md and "``" not in md and "`[]`" not in md
    assert "—: not set or empty (the default applies)." in md


def test_verdicts_are_spelled_the_same_in_the_summary_and_the_badges(tmp_path):
    runs = [dict(function=f, seed=s, test_accuracy=m + 0.001 * s) for f, m in [("relu", 0.9), ("tanh(x)", 0.8)]
            for s in range(3)]
    md_path, html_path = rp.write_report(tmp_path, evaluation=st.evaluate(runs), runs=runs, config={})
    text = html_path.read_text()
    assert "<strong>NOT BLESSED</strong>" in text and ">NOT BLESSED</span>" in text
    assert "NOT_BLESSED" not in text.replace("badge-NOT_BLESSED", "")  # only as a CSS class
    assert "NOT_BLESSED" not in md_path.read_text()
    assert "| NOT BLESSED |" in md_path.read_text()


def test_the_summary_names_the_seed_whose_model_was_exported(tmp_path, inputs):
    exported = {"function": EXPR, "why_exported": "not blessed: because", "model_seed": 2}
    md = _write(tmp_path, inputs, exported=exported)[0].read_text()
    assert (f"Exported: {rp.function_label(EXPR)} in export/activation.json (not blessed: because); "
            "export/model.keras is the trained model of its seed 2, the seed with the best validation accuracy (load "
            "it with keras.saving.load_model after `import activations`") in md
    assert "when one was saved" not in md
    md = _write(tmp_path, inputs, exported=dict(exported, model_seed=None))[0].read_text()
    assert "no trained model was saved" in md and "export/model.keras is the trained model" not in md


def test_the_mann_whitney_floor_is_explained_with_this_runs_seed_counts(tmp_path, inputs):
    from scipy import stats

    # The bound the report states is scipy's smallest exact p: 3 vs 3 perfectly separated gives 0.1.
    assert rp._mannwhitney_floor(3, 3) == pytest.approx(stats.mannwhitneyu([4, 5, 6], [1, 2, 3]).pvalue) == 0.1
    assert rp._mannwhitney_floor(4, 4) == pytest.approx(stats.mannwhitneyu([5, 6, 7, 8], [1, 2, 3, 4]).pvalue)
    md = _write(tmp_path, inputs)[0].read_text()
    assert "e.g. 3 vs 3 cannot go below 0.1 (here 2 vs 4 runs: 0.133, 4 vs 4 runs: 0.029, 5 vs 4 runs: 0.016)" in md
    assert "scipy uses a normal approximation" in md


def test_a_baselines_search_rank_is_explained_and_old_records_read_the_same(tmp_path, inputs):
    for origin in ("baseline; also the search's rank 3 (search initial candidate, trial 02)",
                   "baseline; also the search's #3 (search initial candidate, trial 02)"):  # as records said before
        runs = [dict(run, origin=origin) if run["function"] == "relu" else run for run in inputs["runs"]]
        md = _write(tmp_path, inputs, runs=runs)[0].read_text()
        assert "| `relu` | baseline; also the search's rank 3 (search initial candidate, trial 02) |" in md
        assert "\"Also the search's rank N\": the search found this baseline too, as the N-th best" in md
    assert "the search's rank N" not in _write(tmp_path, inputs)[0].read_text()  # no baseline ranked: not explained


def test_notes_such_as_a_top_k_shortfall_are_in_the_summary(tmp_path, inputs):
    note = "top_k=2 asked for the search's 2 best functions, but the search found only 1 distinct function"
    md_path, html_path = _write(tmp_path, inputs, notes=[note])
    summary = md_path.read_text().split("## Results")[0]
    assert f"Note: {note}" in summary and html_lib.escape(f"Note: {note}") in html_path.read_text()


def test_expressions_are_written_in_infix_form_and_baselines_by_name(tmp_path):
    canonical = "add(mul(alpha,x),tanh(x))"
    runs = [dict(function=f, seed=s, test_accuracy=m + 0.001 * s, origin=f,
                 learned_parameters={"act": {"alpha": {"mean": 1.0, "min": 0.9, "max": 1.1}}} if f != "relu" else {})
            for f, m in [("relu", 0.8), (canonical, 0.9)] for s in range(3)]
    trials = [dict(trial_id="1", expression=canonical, fitness=0.9, generation=0, parents=[])]
    md_path, html_path = rp.write_report(tmp_path, evaluation=st.evaluate(runs), runs=runs, trials=trials,
                                         config={}, exported={"function": canonical, "why_exported": "blessed"})
    md = md_path.read_text()
    assert "alpha * x + tanh(x)" in md.split("## Summary")[1].split("\n\n")[1]  # the evaluation's summary line
    assert "Exported: alpha * x + tanh(x) in export/activation.json" in md
    assert "| `alpha * x + tanh(x)` | add(mul(alpha,x),tanh(x)) | 3 |" in md  # results (this origin is text)
    assert "| 1 | `1` | `alpha * x + tanh(x)` |" in md  # trials
    assert "| `relu` | 0 |" in md and "| `alpha * x + tanh(x)` | 0 |" in md  # all runs
    assert "| `functions compared` | `relu`, `alpha * x + tanh(x)` |" in md
    # The canonical form the machine files use is named once, under the function's shape.
    assert md.count(f"`{canonical}`") == 1
    assert f"Canonical form (as runs.jsonl and activation.json write it): `{canonical}`" in md
    labels = [t.get_text() for t in rp._accuracy_plot(st.evaluate(runs), runs).axes[0].get_yticklabels()]
    assert labels == ["relu", "alpha * x + tanh(x)"]
    assert rp.function_label("elu(x)") == "elu(x)" and rp.function_label("gelu") == "gelu"


def _statistics(**overrides):
    """A statistics.json as ExampleGen writes it for a small image folder."""
    counts = {"train": {"one": 0, "three": 40, "two": 45}, "validation": {"one": 6, "three": 9, "two": 9},
              "test": {"one": 0, "three": 12, "two": 12}}
    stats = {"source": "folder:/data/digits", "class_names": ["one", "three", "two"], "num_classes": 3,
             "input_shape": [16, 16, 3], "num_examples": {"train": 85, "validation": 24, "test": 24},
             "skipped_files": [], "channel_mean": [0.5, 0.4, 0.3], "channel_std": [0.2, 0.2, 0.25],
             "class_counts": counts, "resized_to": [16, 16], "found_images": 20000, "max_examples": 133,
             "summary": "found 20000 images in 3 classes; kept 133 (85 train, 24 validation, 24 test; max_examples=133)",
             "untrained_classes": ["one"],
             "notes": ["the train split has no images of class(es) ['one']: the model has an output for each",
                       "the validation split has only 24 images: one image moves its accuracy by 4.2 pp",
                       "the test split has no images of class(es) ['one']: its accuracy says nothing about them",
                       "the loader warned: image folder /data/digits: split 'train' lacks classes ['one']"]}
    return {**stats, **overrides}


def test_the_data_section_shows_source_counts_per_class_and_examplegens_notes(tmp_path, inputs):
    md_path, html_path = _write(tmp_path, inputs, data=_statistics())
    md, page = md_path.read_text(), html_path.read_text()
    data = md.split("## Data")[1].split("## Reproducing this result")[0]
    assert "Source: `folder:/data/digits`; 3 classes; input shape 16 x 16 x 3" in data
    assert "every image resized to 16 x 16 (--image_size)" in data
    assert "What ExampleGen read: found 20000 images in 3 classes; kept 133 (85 train, 24 validation, 24 test; " \
           "max_examples=133)." in data
    assert "| Class | Train | Validation | Test | Total |" in data
    assert "| one | 0 (none) | 6 | 0 (none) | 6 |" in data
    assert "| All classes | 85 | 24 | 24 | 133 |" in data
    for note in _statistics()["notes"]:
        assert f"- {note}" in data and html_lib.escape(note) in page
    assert "<h2>Data</h2>" in page and "<td><span class=\"nw\">0 (none)</span></td>" in page
    # A class the model never trained on is said first, in the summary.
    summary = md.split("## Results")[0]
    assert "Note: the train split has no images of class(es) ['one']" in summary


def test_many_classes_get_per_split_totals_and_a_shortened_class_list(tmp_path, inputs):
    names = [f"c{i:03d}" for i in range(100)]
    counts = {split: {name: (0 if (split, name) == ("test", "c007") else 5) for name in names}
              for split in ("train", "validation", "test")}
    md = _write(tmp_path, inputs, data=_statistics(class_names=names, num_classes=100, class_counts=counts,
                                                   untrained_classes=[], notes=[]))[0].read_text()
    data = md.split("## Data")[1].split("## Reproducing this result")[0]
    assert "| Split | Images | Fewest per class | Most per class | Classes without images |" in data
    assert "| Test | 495 | 0 (c007) | 5 (c000) | c007 |" in data
    assert "| Train | 500 | 5 (c000) | 5 (c000) | none |" in data
    assert "`c019` and 80 more." in data and "c020" not in data
    assert "Note: the train split" not in md and "ExampleGen's notes" not in data


def test_an_older_statistics_file_or_none_still_gives_a_report(tmp_path, inputs):
    old = {"source": "embedded:digits", "class_names": [str(d) for d in range(10)], "num_classes": 10,
           "input_shape": [8, 8, 1], "num_examples": {"train": 1257, "validation": 180, "test": 360},
           "skipped_files": ["bad.png"]}
    md = _write(tmp_path, inputs, data=old)[0].read_text()
    data = md.split("## Data")[1].split("## Reproducing this result")[0]
    assert "Source: `embedded:digits`; 10 classes; input shape 8 x 8 x 1" in data
    assert "| Train | 1257 |" in data and "| Test | 360 |" in data
    assert "1 image file(s) of the data source could not be decoded" in md  # skipped_files from the data
    assert "Note: the train split" not in md
    counts = {"train": {"a": 0, "b": 9}, "validation": {"a": 2, "b": 2}, "test": {"a": 3, "b": 3}}
    md = _write(tmp_path, inputs, data={**old, "class_names": ["a", "b"], "class_counts": counts})[0].read_text()
    assert "Note: the train split has no images of class(es) ['a']" in md.split("## Results")[0]
    assert "## Data" not in _write(tmp_path, inputs)[0].read_text()
    with pytest.raises(rp.ReportError, match="data must be the mapping of statistics.json"):
        _write(tmp_path, inputs, data=["not", "a", "mapping"])


def test_the_reporter_reads_the_data_section_from_the_examples_input_when_wired(tmp_path):
    from components.base import Artifact
    from components.reporter import ReporterSpec, read_data

    assert ReporterSpec.INPUTS["examples"].optional  # a DAG without it still runs
    assert read_data({}) is None and read_data({"examples": []}) is None
    examples = Artifact("Examples", str(tmp_path / "examples"))
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "statistics.json").write_text(json.dumps(_statistics()))
    assert read_data({"examples": [examples]}) == _statistics()


def test_the_search_progress_says_how_each_strategy_proposed_its_trials(tmp_path, inputs):
    said = {}
    for strategy in ("evolution", "random", "exhaustive", "rl"):
        config = {"strategy": strategy, "space": "swish" if strategy in ("exhaustive", "rl") else "pangaea",
                  "population_size": 8, "tournament_size": 3, "core_units": None, "unary_forms": ["x", "tanh(x)"]}
        md = _write(tmp_path / strategy, inputs, config=config)[0].read_text()
        progress = md.split("## Search progress", 1)[1].split("\n\n", 2)[1]
        said[strategy] = progress.split(" Best and median", 1)[0]
    assert said["evolution"] == ("The search proposed its trials by regularized evolution (PANGAEA's aging "
                                 "selection) over the pangaea space, a population of 8 with tournaments of 3.")
    assert "independent random samples of the pangaea space" in said["random"]
    assert "exhaustive enumeration of the Swish paper's core units (1 unit, the chosen unary and binary forms)" \
        in said["exhaustive"]
    assert "controller trained by REINFORCE" in said["rl"] and "up to 2 core units" in said["rl"]
    assert "one evolution bred" not in md
    # A budget the starting functions used up: the sentence says the strategy proposed nothing.
    seeds_only = [dict(trial, operator="seed") for trial in inputs["trials"]]
    assert "the strategy itself proposed none" in rp.search_sentence({"strategy": "rl"}, seeds_only)
    some = [dict(trial, operator="seed" if i < 3 else "controller") for i, trial in enumerate(inputs["trials"])]
    assert f"3 of its {len(some)} trials trained the functions it started from" in rp.search_sentence({"strategy": "rl"}, some)
    assert "samples one core unit" in rp.search_sentence({"strategy": "rl", "core_units": 1})
