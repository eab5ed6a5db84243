"""The run's human-readable report: `report.md` and a self-contained `report.html`.

The report answers three questions for a reader who was not watching the run: did anything beat
the baseline (results table, verdicts, accuracy distributions), what do the winners look like
(function shapes, learned parameters per layer), and how can the result be reproduced (data,
model, budget, seeds, search progress, best trials).

`report.html` carries every figure as a base64 `data:` URI and its CSS inline, so it can be
mailed, attached to a pipeline run or opened offline. `report.md` links the same figures as PNG
files in `report_figures/` next to it.

Functions are written for people: a named baseline by its name (`relu`), every expression in
infix form (`alpha * x + tanh(x)`, `function_label`); the canonical form the machine files key
on (`add(mul(alpha,x),tanh(x))`, in runs.jsonl and activation.json) is named once per function,
under its shape.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import math
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from components.statistics import BASELINE, BLESSED, NOT_BLESSED, Evaluation, FunctionStats, percentage_points

FIGURES_DIR = "report_figures"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

PathLike = str | Path


class ReportError(ValueError):
    """Raised when the report's inputs are missing or malformed."""


def write_report(
    output_dir: PathLike,
    *,
    evaluation: Evaluation | Mapping[str, Any],
    runs: Sequence[Mapping[str, Any]],
    history: Sequence[Mapping[str, Any]] | None = None,
    trials: Sequence[Mapping[str, Any]] | None = None,
    function_plots: Mapping[str, PathLike | Sequence[PathLike]] | None = None,
    config: Mapping[str, Any],
    title: str = "Activation function search",
    top_trials: int = 10,
    command: str = "",
    exported: Mapping[str, Any] | None = None,
    skipped_files: Sequence[str] | None = None,
    notes: Sequence[str] | None = None,
    data: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Writes `report.md`, `report.html` and their figures into `output_dir`.

    Args:
      output_dir: directory to write into (created if needed).
      evaluation: the `Evaluation` (or its `to_dict()` form, e.g. read from evaluation.json).
      runs: the final run records that were evaluated. Optional keys used when present:
        `diverged` (marked in the distribution plot) and `learned_parameters`, a mapping
        `{layer name: {parameter name: value or list of per-channel values}}` that is plotted
        per layer for each function.
      history: evolution progress, one dict per generation with `generation`, `best`, `median`
        and optionally `distinct` (distinct functions proposed so far: cumulative), `rejected`
        and `duplicates` (of that generation).
      trials: search trials, dicts with `expression`, `fitness`, `generation`, `parents` (trial
        ids) and `trial_id`; the `top_trials` best by fitness are tabulated.
      function_plots: function name -> PNG path (or list of PNG paths) showing its shape and
        derivative; embedded as given.
      config: what is needed to reproduce the run (data, model, budget, seeds, ...); nested
        mappings are flattened into dotted keys.
      title: the report's heading.
      top_trials: how many trials the trials table shows.
      command: the shell command that recreates the run, shown for copying (none: not shown).
      exported: the exported function's `function` and `why_exported` (the `evaluation` entry
        of its activation.json; `why_exported` says how it was chosen: blessed, else by mean
        validation accuracy) and optionally `model_seed` (the seed whose model export/model.keras
        holds; None: no model was saved), named in the summary; None: no export to name.
      skipped_files: images of the data source left out as corrupt (default: `data`'s
        `skipped_files`).
      notes: sentences about the run a reader should not miss (e.g. the search found fewer
        functions than top_k), shown in the summary.
      data: ExampleGen's statistics.json (source, class names, counts per split and class,
        input shape, resize, its notes and the loader's warnings), shown in a Data section;
        every key is optional, so an older file without the newer ones works. None: no section.

    Returns:
      `(md_path, html_path)`.

    Raises:
      ReportError: malformed inputs or a function plot that is missing or not a PNG.
    """
    evaluation = _as_evaluation(evaluation)
    if not isinstance(config, Mapping):
        raise ReportError(f"config must be a mapping of settings, got {type(config).__name__}")
    if data is not None and not isinstance(data, Mapping):
        raise ReportError(f"data must be the mapping of statistics.json, got {type(data).__name__}")
    if skipped_files is None and data:
        skipped_files = data.get("skipped_files")
    runs = list(runs)
    history = _check_history(history) if history else None
    _check_trials(trials or [])
    _check_function_plots(function_plots or {})
    out = Path(output_dir)
    figures_dir = out / FIGURES_DIR
    figures_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_figures(figures_dir, function_plots or {})

    figures: dict[str, Path] = {}
    figures["accuracy"] = _accuracy_figure(evaluation, runs, figures_dir / "accuracy.png")
    if history:
        figures["evolution"] = _evolution_figure(history, figures_dir / "evolution.png")
    shapes = _collect_function_figures(evaluation, runs, function_plots or {}, figures_dir)

    doc = _Document(title)
    _summary_section(doc, evaluation, exported, [*(notes or []), *_untrained_note(data)])
    _results_section(doc, evaluation, {run["function"]: run.get("origin") or run.get("kind") for run in runs})
    doc.heading("Accuracy distributions")
    doc.paragraph(f"{evaluation.metric} of every run, one row per function; each dot is a run, coloured by "
                  f"the function's verdict (gray: the baseline {function_label(evaluation.baseline)}, green: "
                  "blessed, blue: not blessed); boxes span the quartiles, with the median as a black line. "
                  "The dashed line is the baseline's mean. Red crosses mark diverged runs, which count as "
                  "failures.")
    doc.image(figures["accuracy"], "Accuracy distribution per function")
    _shapes_section(doc, shapes)
    if history:
        doc.heading("Search progress")
        doc.paragraph(search_sentence(config, trials) + " Best and median fitness (a trial's best validation accuracy, in percent) of each "
                      "generation of trials (a population's worth of "
                      "proposals, whatever the strategy); how many distinct functions the search "
                      "had proposed by the end of the generation (a running total); and how many "
                      "of the generation's candidates were rejected before training, or were "
                      "duplicates of functions already proposed (neither is trained), and how many of "
                      "its trials were stopped early, after an epoch below most earlier trials "
                      "(their fitness is their best until then).")
        doc.image(figures["evolution"], "Best and median fitness per generation")
        doc.table(*_history_table(history))
    if trials:
        _trials_section(doc, trials, top_trials)
    if data:
        _data_section(doc, data)
    _reproduce_section(doc, config, runs, evaluation, command, skipped_files or [])
    _runs_section(doc, runs, evaluation.metric)

    md_path = out / "report.md"
    html_path = out / "report.html"
    md_path.write_text(doc.markdown(relative_to=out))
    html_path.write_text(doc.html())
    return md_path, html_path


# ---------------------------------------------------------------------------------------------
# Sections.


def _summary_section(doc: "_Document", ev: Evaluation, exported: Mapping[str, Any] | None,
                     notes: Sequence[str]) -> None:
    doc.heading("Summary")
    doc.verdict(ev.verdict, _humanize(ev.summary, ev))
    for note in notes:
        doc.paragraph(f"Note: {note}")
    if exported:
        doc.paragraph(_export_sentence(exported, ev))
    settings = (f"Baseline {function_label(ev.baseline)}; metric {ev.metric}; a function is blessed when its mean "
                f"gain exceeds {100 * ev.threshold:.2f} pp and its {_p_label(ev.blessing_p)} "
                f"p-value is below {ev.alpha:g}. Tests need at least {ev.min_seeds} seeds per "
                "function; p-values are two-sided and Holm-corrected over the functions "
                "compared, separately for Welch's t-test and the Mann-Whitney U test.")
    doc.paragraph(settings)


def _export_sentence(exported: Mapping[str, Any], ev: Evaluation) -> str:
    """What export/ holds, naming the seed whose model was saved: the report knows whether a
    model was saved (`model_seed`), so it says so rather than "when one was saved"."""
    text = (f"Exported: {function_label(str(exported['function']))} in export/activation.json"
            f" ({_humanize(str(exported.get('why_exported', '')), ev)})")
    if "model_seed" not in exported:
        return text + "."
    seed = exported["model_seed"]
    if seed is None:
        return text + ("; no trained model was saved (none of its final runs finished with one), so there is "
                       "no export/model.keras.")
    return (text + f"; export/model.keras is the trained model of its seed {seed}, the seed with the best "
            "validation accuracy (load it with keras.saving.load_model after `import activations`, which "
            "registers its activation layers). The model outputs logits (apply softmax for probabilities); activation.json's "
            "\"input\" entry says what it takes and its \"output\" entry, when the run named its classes, which "
            "output is which class.")


def _results_section(doc: "_Document", ev: Evaluation, origins: Mapping[str, str | None]) -> None:
    doc.heading("Results")
    base = function_label(ev.baseline)
    header = ["Function", "Origin", "n", "Mean ± std", "95% CI", f"Δ vs {base}",
              "Welch p (Holm)", "Mann-Whitney p (Holm)", "Win/tie/loss", "Verdict"]
    rows = []
    for f in ev.functions:
        rows.append([
            _Code(function_label(f.function)), _origin_text(origins.get(f.function)) or "—",
            str(f.n) + (f" ({f.n_diverged} diverged)" if f.n_diverged else ""),
            _pct(f.mean) + (f" ± {100 * f.std:.2f}" if f.std is not None else ""),
            f"[{_pct(f.ci_low)}, {_pct(f.ci_high)}]" if f.ci_low is not None else "—",
            "—" if f.is_baseline else percentage_points(f.diff),
            _p_cell(f, f.welch_p_holm, f.welch_p),
            _p_cell(f, f.mannwhitney_p_holm, f.mannwhitney_p),
            "—" if f.is_baseline else f.win_tie_loss,
            _Verdict(f.verdict),
        ])
    doc.table(header, rows)
    doc.paragraph("Accuracies in percent; Δ in percentage points (pp). 95% CI: Student-t interval "
                  "of the mean over seeds, within 0-100%. p-values: Holm-corrected, "
                  "raw value in parentheses. " + _mannwhitney_note(ev) + " Win/tie/loss pairs each run with "
                  "the baseline run of the same seed, or with the baseline median when that seed is missing. "
                  + _origin_note(origins))
    doc.bullets([(_Code(function_label(f.function)), ": " + _humanize(
        f.reason + (f" ({f.p_note})" if f.p_note and f.p_note not in f.reason else ""), ev))
                 for f in ev.functions if not f.is_baseline])


def _mannwhitney_note(ev: Evaluation) -> str:
    """Why a Mann-Whitney p can stay high however clear the gap: with n and m runs its exact
    two-sided p is at least 2/C(n+m, n) (3 vs 3 seeds: 0.1), and a reader sees a p of 0.1
    next to a large gain and wonders."""
    base = next((f.n for f in ev.functions if f.is_baseline), None)
    sizes = sorted({f.n for f in ev.functions if not f.is_baseline and f.n})
    if base and sizes:
        pairs = ", ".join(f"{n} vs {base} runs: {_fmt_p(_mannwhitney_floor(n, base))}" for n in sizes)
        here = f" (here {pairs})"
    else:
        here = ""
    return ("The Mann-Whitney test compares ranks, so few seeds bound its smallest possible p-value: with n "
            f"and m runs a side the exact two-sided p is at least 2/C(n+m, n), e.g. 3 vs 3 cannot go below 0.1{here}, "
            "before the Holm correction; when values tie, scipy uses a normal approximation instead of the "
            "exact distribution.")


def _mannwhitney_floor(n: int, m: int) -> float:
    """The smallest exact two-sided Mann-Whitney p-value with n and m observations."""
    return min(1.0, 2 / math.comb(n + m, n))


_OLD_RANK = re.compile(r"the search's #(\d+)")


def search_sentence(config: Mapping[str, Any], trials: Sequence[Mapping[str, Any]] | None = None) -> str:
    """How the search proposed its trials, in words: the progress and trials tables read
    differently for evolution, an enumeration, random samples or a learning controller; and how
    many trials only trained the functions it started from (with a small budget, all of them)."""
    strategy, space = config.get("strategy", "evolution"), config.get("space", "pangaea")
    units = config.get("core_units") or (1 if strategy == "exhaustive" else 2)
    forms = ("every unary and binary form" if not (config.get("unary_forms") or config.get("binary_forms"))
             else "the chosen unary and binary forms")
    kinds = {
        "evolution": f"regularized evolution (PANGAEA's aging selection) over the {space} space, a population of "
                     f"{config.get('population_size', '?')} with tournaments of {config.get('tournament_size', '?')}",
        "random": f"independent random samples of the {space} space (the baseline evolution has to beat)",
        "exhaustive": f"an exhaustive enumeration of the Swish paper's core units ({units} unit{'s' if units > 1 else ''}, "
                      f"{forms}) in an order the seed fixes",
        "rl": f"the Swish paper's reinforcement-learning search: a controller trained by REINFORCE on the trials' "
              f"fitness samples {'up to 2 core units' if units > 1 else 'one core unit'} over {forms}",
    }
    sentence = f"The search proposed its trials by {kinds.get(strategy, strategy)}."
    started = sum(1 for trial in trials or () if trial.get("operator") == "seed")
    if started and started == len(trials):
        sentence += (f" All {started} trials trained the functions it started from (seed functions and sampled "
                     "candidates): the strategy itself proposed none (raise max_trials).")
    elif started:
        sentence += (f" {started} of its {len(trials)} trials trained the functions it started from (seed functions "
                     "and sampled candidates).")
    return sentence


def _origin_text(origin: str | None) -> str | None:
    """An origin as the report shows it; records written before the rank was spelled out said
    "the search's #3"."""
    return _OLD_RANK.sub(r"the search's rank \1", origin) if origin else origin


def _origin_note(origins: Mapping[str, str | None]) -> str:
    """What the Origin column means; the rank of a baseline only when one has it."""
    text = ("Origin: where the function came from (a baseline, a function the search started from, or one "
            "the search proposed: bred by evolution, enumerated, sampled or chosen by the controller), with its "
            "trial's id as in the trials table below.")
    if any("the search's rank" in (_origin_text(o) or "") for o in origins.values()):
        text += (" \"Also the search's rank N\": the search found this baseline too, as the N-th best of the "
                 "distinct functions it ranked; it is trained once, as the baseline.")
    return text


def _shapes_section(doc: "_Document", shapes: list[tuple[str, list[Path]]]) -> None:
    if not shapes:
        return
    doc.heading("Function shapes and learned parameters")
    doc.paragraph("Each function with its derivative, and where it has learnable parameters, "
                  "their trained values per layer (dots: the mean over seeds of the layer's mean; bars span "
                  "min to max over seeds and channels).")
    for name, paths in shapes:
        label = function_label(name)
        doc.subheading(_Code(label))
        if label != name:
            doc.paragraph(["Canonical form (as runs.jsonl and activation.json write it): ", _Code(name)])
        for path in paths:
            doc.image(path, f"{label}: {path.stem}")


def _check_trials(trials) -> None:
    for index, trial in enumerate(trials):
        if not isinstance(trial, Mapping) or "expression" not in trial:
            raise ReportError(f"trial {index} must be a dict with at least 'expression' and "
                              f"'fitness', got {trial!r}")


def _trials_section(doc: "_Document", trials: Sequence[Mapping[str, Any]], top: int) -> None:
    def key(trial):
        fitness = _finite(trial.get("fitness"))
        return (fitness is None, -(fitness or 0.0))

    best = sorted(trials, key=key)[:top]
    doc.heading(f"Top {len(best)} of {len(trials)} search trials")
    doc.paragraph("Trial is the trial's id (the order in which the search proposed it, from 0, as "
                  "in the Origin column above and the progress lines); Parents (evolution only) are the ids "
                  "of the trials it was bred from: earlier trials, not necessarily among those listed here. "
                  "Expressions as the search wrote them (in infix form); where that spelling carries dead "
                  "terms, the last column gives the same function in its simplest form (the form the "
                  "final runs train).")
    rows = []
    for rank, trial in enumerate(best, 1):
        parents = trial.get("parents") or []
        if isinstance(parents, str):
            parents = [p for p in parents.split(",") if p]
        fitness = _finite(trial.get("fitness"))
        trial_id = trial.get("trial_id")
        stopped = trial.get("stopped_at")
        rows.append([str(rank), "—" if trial_id is None else _Code(str(trial_id)),
                     _Code(function_label(str(trial["expression"]))),
                     _pct(fitness)
                     + (f" (stopped after epoch {stopped})" if stopped else ""),
                     str(trial.get("generation", "—")),
                     _CodeList([str(p) for p in parents]) if parents else "—",
                     _simplest_form(str(trial["expression"]))])
    doc.table(["Rank", "Trial", "Expression", "Fitness (val. acc. %)", "Generation", "Parents", "Simplest form"],
              rows)


def _simplest_form(text: str) -> Any:
    """The simplified expression as code, or a dash when it is the same (or not an expression)."""
    import activations

    try:
        expression = activations.parse(text)
    except activations.ExpressionError:
        return "—"
    simplest = activations.simplify(expression)
    return "—" if simplest == expression else _Code(simplest.infix())


SKIPPED_LISTED = 10
"""Skipped images named in the report; statistics.json lists all of them."""


CLASS_TABLE_LIMIT = 12
"""Up to this many classes the Data section tabulates every class per split; beyond, per-split
totals (a 100-class table buries the few empty cells that matter)."""

CLASSES_LISTED = 20
"""Class names written out when there are too many to tabulate; statistics.json has them all."""

_SPLIT_LABELS = {"train": "Train", "validation": "Validation", "test": "Test"}


def _untrained_note(data: Mapping[str, Any] | None) -> list[str]:
    """The summary's note on classes with no training image: every image of them is an error,
    whatever the activation, which a reader of the results should know first."""
    data = data or {}
    untrained = data.get("untrained_classes")
    if untrained is None:  # an older statistics.json: read it off the train counts
        train = (data.get("class_counts") or {}).get("train") or {}
        untrained = [name for name, count in train.items() if count == 0]
    if not untrained:
        return []
    return [f"the train split has no images of class(es) {list(untrained)}: the model has an output for each that it "
            "never trained on, and every validation or test image of them counts as an error (see Data below)."]


def _data_section(doc: "_Document", data: Mapping[str, Any]) -> None:
    """What the run trained and evaluated on, from ExampleGen's statistics.json: a review of
    image-folder data found the report silent on it, and the loader's warnings gone after the
    first run."""
    doc.heading("Data")
    doc.paragraph(_data_sentence(data))
    if data.get("summary"):
        doc.paragraph(f"What ExampleGen read: {data['summary']}.")
    counts = data.get("class_counts")
    names = [str(name) for name in data.get("class_names") or []]
    if isinstance(counts, Mapping) and counts and names and len(names) <= CLASS_TABLE_LIMIT:
        doc.table(*_class_count_table(counts, names))
    elif isinstance(counts, Mapping) and counts:
        doc.table(*_split_total_table(counts))
        if names:
            more = f" and {len(names) - CLASSES_LISTED} more" if len(names) > CLASSES_LISTED else ""
            doc.paragraph(["Classes, in label order: ", _CodeList(names[:CLASSES_LISTED]), more + "."])
    elif isinstance(data.get("num_examples"), Mapping):  # an older statistics.json: split sizes only
        doc.table(["Split", "Images"], [[_SPLIT_LABELS.get(split, split), str(count)]
                                        for split, count in data["num_examples"].items()])
    notes = [str(note) for note in data.get("notes") or []]
    if notes:
        doc.paragraph("ExampleGen's notes on the data (it printed them once, when it read the source):")
        doc.bullets([(note,) for note in notes])


def _data_sentence(data: Mapping[str, Any]) -> list[Any]:
    """Source, classes, input shape and resize in one paragraph (pieces, the source as code)."""
    parts: list[Any] = ["Source: ", _Code(str(data.get("source", "unknown")))]
    if data.get("num_classes") is not None:
        parts.append(f"; {data['num_classes']} classes")
    shape = data.get("input_shape")
    if shape:
        parts.append("; input shape " + " x ".join(str(d) for d in shape) + " (height x width x channels)")
    resized = data.get("resized_to")
    if resized:
        parts.append(f"; every image resized to {resized[0]} x {resized[1]} (--image_size): resize your own "
                     "images the same way before the exported model")
    mean, std = data.get("channel_mean"), data.get("channel_std")
    if mean and std:
        parts.append("; normalised with the train split's per-channel mean "
                     + ", ".join(f"{v:.3f}" for v in mean) + " and std " + ", ".join(f"{v:.3f}" for v in std)
                     + " (pixels on the 0-1 scale)")
    parts.append(".")
    return parts


def _class_count_table(counts: Mapping[str, Mapping[str, int]], names: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Images per class (rows) and split (columns), with totals; an empty cell reads "0 (none)"
    so a class missing from a split stands out."""
    splits = [split for split in _SPLIT_LABELS if split in counts] + [s for s in counts if s not in _SPLIT_LABELS]

    def cell(count: int) -> str:
        return "0 (none)" if count == 0 else str(count)

    rows = []
    for name in names:
        per_split = [int((counts[split] or {}).get(name, 0)) for split in splits]
        rows.append([name] + [cell(c) for c in per_split] + [str(sum(per_split))])
    totals = [sum(int(v) for v in (counts[split] or {}).values()) for split in splits]
    rows.append(["All classes"] + [str(t) for t in totals] + [str(sum(totals))])
    return ["Class"] + [_SPLIT_LABELS.get(split, split) for split in splits] + ["Total"], rows


def _split_total_table(counts: Mapping[str, Mapping[str, int]]) -> tuple[list[str], list[list[str]]]:
    """Per split: images, the smallest and largest class, and the classes without images."""
    rows = []
    for split, per_class in counts.items():
        per_class = {str(k): int(v) for k, v in (per_class or {}).items()}
        empty = sorted(name for name, count in per_class.items() if count == 0)
        fewest = min(per_class.items(), key=lambda item: item[1], default=None)
        most = max(per_class.items(), key=lambda item: item[1], default=None)
        rows.append([_SPLIT_LABELS.get(split, split), str(sum(per_class.values())),
                     f"{fewest[1]} ({fewest[0]})" if fewest else "—", f"{most[1]} ({most[0]})" if most else "—",
                     _shorten(", ".join(empty), 200) if empty else "none"])
    return ["Split", "Images", "Fewest per class", "Most per class", "Classes without images"], rows


def _reproduce_section(doc: "_Document", config: Mapping[str, Any], runs, ev: Evaluation, command: str,
                       skipped_files: Sequence[str]) -> None:
    doc.heading("Reproducing this result")
    if command:
        doc.paragraph("The same run from the command line, from the directory it was started in (relative "
                      "paths in it are relative to that directory):")
        doc.code(command)
    doc.paragraph("The data, model, training budget and seeds of the run. Training every "
                  "function below with these settings reproduces the comparison.")
    rows = [[_Code(key), _setting_cell(value)] for key, value in _flatten(config)]
    seeds = sorted({int(r["seed"]) for r in runs if "seed" in r})
    rows.append([_Code("seeds (final runs)"), _setting_cell(", ".join(map(str, seeds)))])
    # `precision auto` picks per machine; this is what it picked for these runs.
    precisions = sorted({str(r["precision"]) for r in runs if r.get("precision")})
    if precisions:
        rows.append([_Code("precision (final runs)"), _Code(", ".join(precisions))])
    rows.append([_Code("functions compared"),
                 _CodeList([function_label(f.function) for f in ev.functions])])
    doc.table(["Setting", "Value"], rows)
    if any(cell == _UNSET for _, cell in rows):
        doc.paragraph(f"{_UNSET}: not set or empty (the default applies).")
    if skipped_files:
        named = ", ".join(f"`{path}`" for path in skipped_files[:SKIPPED_LISTED])
        more = f" and {len(skipped_files) - SKIPPED_LISTED} more" if len(skipped_files) > SKIPPED_LISTED else ""
        doc.paragraph(f"{len(skipped_files)} image file(s) of the data source could not be decoded and were "
                      f"left out (`skip_corrupt`): {named}{more}; ExampleGen's statistics.json lists them all.")


def _runs_section(doc: "_Document", runs, metric: str) -> None:
    doc.heading("All final runs")
    rows = []
    for r in sorted(runs, key=lambda r: (str(r.get("function")), r.get("seed", 0))):
        rows.append([_Code(function_label(str(r.get("function")))), str(r.get("seed", "—")),
                     _pct(_finite(r.get(metric))), _pct(_finite(r.get("val_accuracy"))),
                     "yes" if r.get("diverged") else "no"])
    doc.table(["Function", "Seed", f"{metric} (%)", "val_accuracy (%)", "Diverged"], rows)


_COUNT_LABELS = {"distinct": "distinct so far", "rejected": "rejected", "duplicates": "duplicates",
                 "stopped_early": "stopped early"}
"""The history's candidate counts: `distinct` is a running total, the others are per generation."""


def _history_table(history) -> tuple[list[str], list[list[Any]]]:
    extra = [k for k in _COUNT_LABELS if any(k in h for h in history)]
    header = ["Generation", "Best (%)", "Median (%)"] + [_COUNT_LABELS[k].capitalize() for k in extra]
    rows = []
    for h in history:
        rows.append([str(h["generation"]), _pct(_finite(h["best"])), _pct(_finite(h["median"]))]
                    + [str(h.get(k, "—")) for k in extra])
    return header, rows


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib's object API: no pyplot, no global backend state).


_VERDICT_COLOURS = {BASELINE: ("tab:gray", "baseline"), NOT_BLESSED: ("tab:blue", "not blessed"),
                    BLESSED: ("tab:green", "blessed")}


def _accuracy_figure(ev: Evaluation, runs, path: Path) -> Path:
    _accuracy_plot(ev, runs).savefig(path)
    return path


def _accuracy_plot(ev: Evaluation, runs) -> Figure:
    """Runs per function; the legend names the colours (verdicts) and marks, which a reader of
    the figure alone could not guess."""
    names = [function_label(f.function) for f in ev.functions]
    height = 1.6 + 0.45 * len(names)
    fig = Figure(figsize=(8, height), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    data = [np.array(f.values) * 100 for f in ev.functions]
    positions = np.arange(len(names))[::-1]
    ax.boxplot(data, positions=positions, orientation="horizontal", widths=0.5,
               showfliers=False, medianprops=dict(color="black"))
    rng = np.random.default_rng(0)
    for f, y in zip(ev.functions, positions):
        diverged = _diverged_flags(f, runs, ev.metric)
        values = np.array(f.values) * 100
        jitter = y + rng.uniform(-0.15, 0.15, size=len(values))
        color = _VERDICT_COLOURS.get(f.verdict, _VERDICT_COLOURS[NOT_BLESSED])[0]
        ok = ~diverged
        ax.scatter(values[ok], jitter[ok], s=18, color=color, alpha=0.8, zorder=3)
        if diverged.any():
            ax.scatter(values[diverged], jitter[diverged], s=30, marker="x", color="tab:red", zorder=3)
    ax.axvline(ev.functions[0].mean * 100, color="tab:gray", linestyle="--", linewidth=1)
    ax.set_yticks(positions, [_mpl_text(_shorten(n, 45)) for n in names])
    ax.set_xlabel(f"{ev.metric} (%)")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(handles=_accuracy_legend(ev, runs), loc="outside upper center", ncols=5, fontsize=8)
    return fig


def _accuracy_legend(ev: Evaluation, runs) -> list[Line2D]:
    """One entry per verdict colour and mark the figure uses."""
    verdicts = {f.verdict for f in ev.functions}
    handles = [Line2D([], [], marker="o", linestyle="", color=colour, label=label)
               for verdict, (colour, label) in _VERDICT_COLOURS.items() if verdict in verdicts]
    baseline = _shorten(function_label(ev.baseline), 30)
    handles.append(Line2D([], [], color="tab:gray", linestyle="--", label=f"mean of {baseline}"))
    if any(_diverged_flags(f, runs, ev.metric).any() for f in ev.functions):
        handles.append(Line2D([], [], marker="x", linestyle="", color="tab:red", label="diverged"))
    return handles


def _evolution_figure(history, path: Path) -> Path:
    _evolution_plot(history).savefig(path)
    return path


def _evolution_plot(history) -> Figure:
    """Fitness per generation and the candidate counts; generations are whole numbers, also
    when there is only one (matplotlib's default ticks ran -0.4..0.4 then)."""
    gens = [h["generation"] for h in history]
    counts = [k for k in _COUNT_LABELS if any(k in h for h in history)]
    fig = Figure(figsize=(8, 5.5 if counts else 3.5), dpi=100, layout="constrained")
    axes = fig.subplots(2 if counts else 1, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    def percent(key):
        return [np.nan if _finite(h[key]) is None else 100 * _finite(h[key]) for h in history]

    ax.plot(gens, percent("best"), marker="o", label="best")
    ax.plot(gens, percent("median"), marker="s", label="median")
    ax.set_ylabel("fitness: val. accuracy (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    if counts:
        ax2 = axes[1]
        width = 0.8 / len(counts)
        for i, key in enumerate(counts):
            ax2.bar(np.array(gens) + (i - (len(counts) - 1) / 2) * width,
                    [h.get(key, 0) for h in history], width=width, label=_COUNT_LABELS[key])
        ax2.set_ylabel("candidates")
        top = max((h.get(k, 0) or 0) for h in history for k in counts)
        ax2.set_ylim(0, max(1, top) * 1.35)  # headroom for the legend
        ax2.legend(ncol=len(counts), loc="upper left")
        ax2.grid(axis="y", alpha=0.3)
    axes[-1].set_xlabel("generation")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    return fig


def _parameter_figure(name: str, records: list[Mapping[str, Any]], path: Path) -> Path | None:
    fig = _parameter_plot(name, records)
    if fig is None:
        return None
    fig.savefig(path)
    return path


def _parameter_plot(name: str, records: list[Mapping[str, Any]]) -> Figure | None:
    """Learned parameters per layer: the mean over seeds of each layer's mean, bars from the min
    to the max over seeds and channels (a per-channel layer spans a range its mean hides)."""
    per_param, layers = _parameter_ranges(name, records)
    if not per_param:
        return None
    fig = Figure(figsize=(8, 3.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(layers))
    for offset, (param, by_layer) in enumerate(sorted(per_param.items())):
        shift = (offset - (len(per_param) - 1) / 2) * 0.08
        xs, mean, low, high = [], [], [], []
        for i, layer in enumerate(layers):
            ranges = by_layer.get(layer)
            if ranges:
                centre = float(np.mean([r[0] for r in ranges]))
                xs.append(i + shift)
                mean.append(centre)
                low.append(max(0.0, centre - min(r[1] for r in ranges)))
                high.append(max(0.0, max(r[2] for r in ranges) - centre))
        ax.errorbar(xs, mean, yerr=[low, high], marker="o", capsize=3, label=_mpl_text(param))
    # Numbered, not named: names are long, and runs of other versions named sites differently.
    ax.set_xticks(x, [str(i + 1) for i in range(len(layers))])
    ax.set_xlabel("activation layer (1 = nearest the input)")
    ax.set_ylabel("learned value")
    ax.set_title(_mpl_text(f"Learned parameters per layer: {_shorten(function_label(name), 60)}"), fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _parameter_ranges(name: str, records: list[Mapping[str, Any]]):
    """({parameter: {layer: [(mean, min, max) per run]}}, layers in order of appearance)."""
    per_param: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    layers: list[str] = []
    for record in records:
        learned = record.get("learned_parameters") or {}
        if not isinstance(learned, Mapping):
            raise ReportError(f"learned_parameters of a {name} run must map layer -> "
                              f"{{parameter: value}}, got {type(learned).__name__}")
        for layer, params in learned.items():
            if layer not in layers:
                layers.append(layer)
            for param, value in dict(params).items():
                ranges = _layer_range(name, param, value)
                if ranges is not None:
                    per_param.setdefault(param, {}).setdefault(layer, []).append(ranges)
    return per_param, layers


def _layer_range(name: str, param: str, value: Any) -> tuple[float, float, float] | None:
    """(mean, min, max) of one layer's parameter in one run, from a summary `{mean, min, max,
    ...}` (the Trainer's record), a list of per-channel values, or one number (a layer-shared
    value, or the mean alone, as records kept it before min and max: its range is the mean)."""
    if isinstance(value, Mapping):
        mean = _finite(value.get("mean"))
        if mean is None:
            return None
        low, high = _finite(value.get("min")), _finite(value.get("max"))
        return mean, mean if low is None else low, mean if high is None else high
    try:
        flat = [v for v in np.ravel(np.asarray(value, dtype=float)).tolist() if math.isfinite(v)]
    except (TypeError, ValueError):
        raise ReportError(f"learned value of {param!r} in a {name} run must be a number, a list of numbers or "
                          f"{{mean, min, max}}, got {value!r}") from None
    return (float(np.mean(flat)), min(flat), max(flat)) if flat else None


def _plot_paths(given) -> list[Path]:
    return [Path(given)] if isinstance(given, (str, Path)) else [Path(p) for p in given]


def _check_function_plots(function_plots) -> None:
    if not isinstance(function_plots, Mapping):
        raise ReportError("function_plots must map function name -> PNG path(s), got "
                          f"{type(function_plots).__name__}")
    for name, given in function_plots.items():
        for path in _plot_paths(given):
            _check_png(path, name)


def _collect_function_figures(ev: Evaluation, runs, function_plots, figures_dir: Path):
    order = [f.function for f in ev.functions]
    order += [name for name in function_plots if name not in order]
    shapes: list[tuple[str, list[Path]]] = []
    for index, name in enumerate(order):
        paths: list[Path] = []
        given = function_plots.get(name)
        if given is not None:
            for k, source in enumerate(_plot_paths(given)):
                target = figures_dir / f"function_{index:02d}_{k}.png"
                if source.resolve() != target.resolve():
                    shutil.copyfile(source, target)
                paths.append(target)
        records = [r for r in runs if r.get("function") == name]
        param_plot = _parameter_figure(name, records, figures_dir / f"parameters_{index:02d}.png")
        if param_plot is not None:
            paths.append(param_plot)
        if paths:
            shapes.append((name, paths))
    return shapes


def _remove_stale_figures(figures_dir: Path, function_plots) -> None:
    """Drops PNGs of an earlier report in the same place, keeping any given as inputs."""
    keep = {path.resolve() for given in function_plots.values() for path in _plot_paths(given)}
    for old in figures_dir.glob("*.png"):
        if old.resolve() not in keep:
            old.unlink()


def _check_png(path: Path, name: str) -> None:
    if not path.is_file():
        raise ReportError(f"plot for function {name!r} not found: {path}")
    with path.open("rb") as fh:
        if fh.read(8) != _PNG_SIGNATURE:
            raise ReportError(f"plot for function {name!r} is not a PNG file: {path}")


# ---------------------------------------------------------------------------------------------
# A tiny document model rendered both as Markdown and as HTML.


class _Code(str):
    """Text shown in monospace (expressions, settings)."""


class _CodeList(list):
    """Several monospace items in one cell."""


class _Verdict(str):
    """A verdict badge."""


class _Document:
    def __init__(self, title: str):
        self.title = title
        self.blocks: list[tuple[str, Any]] = []

    def heading(self, text):
        self.blocks.append(("h2", text))

    def subheading(self, text):
        self.blocks.append(("h3", text))

    def paragraph(self, text):
        self.blocks.append(("p", text))

    def verdict(self, verdict, text):
        self.blocks.append(("verdict", (verdict, text)))

    def bullets(self, items):
        self.blocks.append(("ul", items))

    def table(self, header, rows):
        self.blocks.append(("table", (header, rows)))

    def image(self, path: Path, alt: str):
        self.blocks.append(("img", (Path(path), alt)))

    def code(self, text: str):
        self.blocks.append(("pre", text))

    # -- Markdown --

    def markdown(self, relative_to: Path) -> str:
        lines = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "h2":
                lines += [f"## {_md(value)}", ""]
            elif kind == "h3":
                lines += [f"### {_md(value)}", ""]
            elif kind == "p":
                lines += [_parts(value, _md), ""]
            elif kind == "verdict":
                lines += [f"**{verdict_text(value[0])}** — {_md(value[1])}", ""]
            elif kind == "ul":
                lines += ["- " + "".join(_md(part) for part in item) for item in value] + [""]
            elif kind == "table":
                header, rows = value
                lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
                lines.append("|" + "|".join("---" for _ in header) + "|")
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
                lines.append("")
            elif kind == "pre":
                lines += ["```sh", value, "```", ""]
            elif kind == "img":
                path, alt = value
                rel = path.relative_to(relative_to).as_posix()
                lines += [f"![{_md(alt).replace(']', '')}]({rel})", ""]
        return "\n".join(lines)

    # -- HTML --

    def html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind in ("h2", "h3"):
                body.append(f"<{kind}>{_html(value)}</{kind}>")
            elif kind == "p":
                body.append(f"<p>{_parts(value, _html)}</p>")
            elif kind == "verdict":
                css = "blessed" if value[0] == BLESSED else "not-blessed"
                body.append(f'<div class="verdict {css}"><strong>{html.escape(verdict_text(value[0]))}</strong>'
                            f" {_html(value[1])}</div>")
            elif kind == "ul":
                items = "".join("<li>" + "".join(_html(p) for p in item) + "</li>"
                                for item in value)
                body.append(f"<ul>{items}</ul>")
            elif kind == "table":
                header, rows = value
                head = "".join(f"<th>{_html(h)}</th>" for h in header)
                rows_html = "".join("<tr>" + "".join(f"<td>{_cell_html(c)}</td>" for c in row)
                                    + "</tr>" for row in rows)
                body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
                            f"<tbody>{rows_html}</tbody></table></div>")
            elif kind == "pre":
                body.append(f"<pre><code>{html.escape(value)}</code></pre>")
            elif kind == "img":
                path, alt = value
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                body.append(f'<figure><img src="data:image/png;base64,{data}" '
                            f'alt="{html.escape(alt, quote=True)}"></figure>')
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head>\n"
                f"<body><main>\n" + "\n".join(body) + "\n</main></body></html>\n")


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;
background:#fafafa;line-height:1.45}
main{max-width:1280px;margin:0 auto;padding:1.5rem 2rem 3rem;background:#fff}
h1{font-size:1.7rem;border-bottom:2px solid #ddd;padding-bottom:.3rem}
h2{font-size:1.3rem;margin-top:2rem;border-bottom:1px solid #eee}
h3{font-size:1.05rem;margin-top:1.4rem}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em;
background:#f3f3f3;padding:0 .25em;border-radius:3px;word-break:break-all}
pre{background:#f3f3f3;padding:.6rem .8rem;border-radius:4px;white-space:pre-wrap}
pre code{padding:0;word-break:break-all}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem}
th,td{border:1px solid #ddd;padding:.3rem .55rem;text-align:left;vertical-align:top}
td code{display:inline-block;min-width:10em}
.nw{white-space:nowrap}
th{background:#f0f0f0}
tbody tr:nth-child(even){background:#fafafa}
.badge{display:inline-block;padding:.05rem .45rem;border-radius:3px;font-size:.8rem;
font-weight:600;white-space:nowrap}
.badge-BLESSED{background:#d7f5dd;color:#145a24}
.badge-NOT_BLESSED{background:#f4e1e1;color:#7a1c1c}
.badge-BASELINE{background:#e8e8e8;color:#444}
.verdict{padding:.7rem 1rem;border-radius:4px;margin:.6rem 0}
.verdict.blessed{background:#e6f7ea;border-left:5px solid #2e8b46}
.verdict.not-blessed{background:#fbeeee;border-left:5px solid #b33a3a}
figure{margin:.8rem 0}
img{max-width:100%;height:auto;border:1px solid #eee}
"""


def verdict_text(verdict: str) -> str:
    """A verdict as the report writes it, in Markdown and HTML alike: "NOT BLESSED", not the
    evaluation's key "NOT_BLESSED"."""
    return "baseline" if verdict == BASELINE else verdict.replace("_", " ")


def _parts(value: Any, render) -> str:
    """A paragraph: one piece of text, or a list of pieces (plain and code) rendered in a row."""
    return "".join(render(part) for part in value) if isinstance(value, list) else render(value)


def _html(value: Any) -> str:
    if isinstance(value, _Verdict):
        return f'<span class="badge badge-{html.escape(value)}">{html.escape(verdict_text(value))}</span>'
    if isinstance(value, _Code):
        return f"<code>{html.escape(value)}</code>"
    if isinstance(value, _CodeList):
        return ", ".join(f"<code>{html.escape(v)}</code>" for v in value)
    return html.escape(str(value))


def _cell_html(value: Any) -> str:
    """A table cell: short plain text (numbers, intervals) stays on one line, notes wrap."""
    if type(value) is str and len(value) <= 22:
        return f'<span class="nw">{html.escape(value)}</span>'
    return _html(value)


def _md(value: Any) -> str:
    if isinstance(value, _Code):
        return f"`{value}`"
    if isinstance(value, _CodeList):
        return ", ".join(f"`{v}`" for v in value)
    if isinstance(value, _Verdict):
        return f"**{verdict_text(value)}**" if value == BLESSED else verdict_text(value)
    return str(value)


def _md_cell(value: Any) -> str:
    return _md(value).replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------------------------------------
# Small helpers.


def _as_evaluation(evaluation) -> Evaluation:
    if isinstance(evaluation, Evaluation):
        return evaluation
    if isinstance(evaluation, Mapping):
        try:
            return Evaluation.from_dict(evaluation)
        except (KeyError, TypeError) as e:
            raise ReportError(f"evaluation dict is not an Evaluation.to_dict() form: {e}") from e
    raise ReportError(f"evaluation must be an Evaluation or its dict form, got "
                      f"{type(evaluation).__name__}")


def _check_history(history) -> list[Mapping[str, Any]]:
    for index, h in enumerate(history):
        if not isinstance(h, Mapping) or not {"generation", "best", "median"} <= set(h):
            raise ReportError(f"history entry {index} must be a dict with generation, best and "
                              f"median (optionally distinct, rejected, duplicates), got {h!r}")
    return sorted(history, key=lambda h: h["generation"])


def _diverged_flags(f: FunctionStats, runs, metric) -> np.ndarray:
    records = [r for r in runs if r.get("function") == f.function]
    if len(records) != f.n:  # runs do not match the evaluation; mark nothing
        return np.zeros(f.n, dtype=bool)
    return np.array([bool(r.get("diverged")) for r in records], dtype=bool)


def _p_label(blessing_p: str) -> str:
    return {"welch_holm": "Holm-corrected Welch", "mannwhitney_holm":
            "Holm-corrected Mann-Whitney", "welch": "uncorrected Welch",
            "mannwhitney": "uncorrected Mann-Whitney"}.get(blessing_p, blessing_p)


def _p_cell(f: FunctionStats, corrected, raw) -> str:
    if f.is_baseline:
        return "—"
    if corrected is None:
        if f.p_note and f.p_note.startswith("too few seeds"):
            return f"too few seeds for a test (n={f.n})"
        if f.p_note and f.p_note.startswith("zero variance"):
            return "no test: zero variance"
        return "no test"  # the reason is listed under the table
    return f"{_fmt_p(corrected)} ({_fmt_p(raw)})"


def _fmt_p(p: float) -> str:
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _flatten(config: Mapping[str, Any], prefix: str = ""):
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, name + ".")
        else:
            yield name, value


_UNSET = "—"
"""A setting that is None or empty: Python's `None` and an empty code span read as noise."""


def _setting_cell(value: Any) -> Any:
    """A settings-table value: `_UNSET` (plain) for None and empty values, else code."""
    if value is None or (isinstance(value, (str, list, tuple, Mapping)) and not value):
        return _UNSET
    return _Code(_format_value(value))


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v) for v in value) if value else "[]"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return str(value)
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return str(value)


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@functools.lru_cache(maxsize=1024)
def function_label(function: str) -> str:
    """How the report writes a function for people: a name (a named baseline such as `relu`) as
    given, any expression in infix form (`alpha * x + tanh(x)`, not the canonical
    `add(mul(alpha,x),tanh(x))`, which the plots' own titles do not use either); text that does
    not parse as it is."""
    text = function.strip()
    if _IDENTIFIER.fullmatch(text):
        return text
    import activations

    try:
        return activations.parse(text).infix()
    except ValueError:
        return function


def _humanize(text: str, ev: Evaluation) -> str:
    """`text` (the evaluation's own sentences) with each function written as `function_label`
    writes it; one pass, longest name first, so no label is rewritten again."""
    names = sorted((f.function for f in ev.functions if function_label(f.function) != f.function),
                   key=len, reverse=True)
    if not names or not text:
        return text
    pattern = re.compile("|".join(re.escape(name) for name in names))
    return pattern.sub(lambda match: function_label(match.group(0)), text)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mpl_text(text: str) -> str:
    """Keeps matplotlib from reading `$...$` in expressions as math."""
    return text.replace("$", r"\$")
