"""TensorBoard logs of a search: one log directory a user opens with `tensorboard --logdir`.

Layout under the log directory (each sub-directory is a TensorBoard "run"):

* `final/<function>-seed<N>/` one per final training run: an HParams session (`activation`,
  `seed`, `stage`) with the metrics `test_accuracy`, `val_accuracy`, and its training curves
  (`epoch_*`; the Reporter copies the run's own Keras logs, `train/` and `validation/`, instead
  when it has them).
* `search/trial_<id>/` one per search trial: its curves, and an HParams session with `activation`,
  `stage`, `generation` and the metric `fitness`.
* `functions/` images of the function shapes, one tag per function.
* `evolution/` best / median fitness and candidate counts per generation (step = generation).
* the log directory itself holds the HParams experiment definition: `activation` is a string
  hyper-parameter whose discrete domain is the set of expressions trained, so the HParams
  dashboard can filter and sort by it.

Run directory names are slugs of the expression plus a short hash (expressions contain
characters such as `(`, `*` and `|`); the exact expression is always in the hparam value and in
the summary descriptions.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

PathLike = str | Path

FINAL_DIR = "final"
SEARCH_DIR = "search"
FUNCTIONS_RUN = "functions"
EVOLUTION_RUN = "evolution"

#: Metrics of the HParams experiment (scalars written at step 0 of each session).
FINAL_METRICS = ("test_accuracy", "val_accuracy")
SEARCH_METRIC = "fitness"


class SummaryError(ValueError):
    """Raised for inputs that cannot be written as TensorBoard summaries."""


def slug(text: str, limit: int = 48) -> str:
    """A file-system and tag safe name for an expression, unique through a short hash."""
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.")[:limit] or "f"
    return f"{cleaned}-{digest}"


def final_run_name(function: str, seed: int) -> str:
    """Run directory (relative to the log directory) of a final training run."""
    return f"{FINAL_DIR}/{slug(function)}-seed{int(seed)}"


def trial_run_name(trial_id: str | int) -> str:
    """Run directory (relative to the log directory) of a search trial."""
    return f"{SEARCH_DIR}/trial_{re.sub(r'[^A-Za-z0-9_.-]+', '_', str(trial_id))}"


def write_scalars(logdir: PathLike, run_name: str,
                  scalars: Mapping[str, Sequence[float] | float], *, first_step: int = 0) -> Path:
    """Writes curves (e.g. a Keras `History.history` dict) as scalars of one run.

    Each key becomes a tag; a sequence is written at steps `first_step, first_step+1, ...`;
    a single number at `first_step`. Non-finite values are skipped (TensorBoard cannot plot
    them and a diverged epoch should not flatten the chart).
    """
    path = Path(logdir) / run_name
    writer = tf.summary.create_file_writer(str(path))
    with writer.as_default():
        for tag, values in scalars.items():
            series = [values] if _is_number(values) else list(values)
            for offset, value in enumerate(series):
                if not _is_number(value):
                    raise SummaryError(f"scalar {tag!r} of run {run_name!r} must be numbers, "
                                       f"got {value!r}")
                if math.isfinite(float(value)):
                    tf.summary.scalar(_tag(tag), float(value), step=first_step + offset)
    writer.close()
    return path


def write_hparams(
    logdir: PathLike,
    runs: Sequence[Mapping[str, Any]],
    trials: Sequence[Mapping[str, Any]] | None = None,
    *,
    metrics: Sequence[str] = FINAL_METRICS,
) -> list[str]:
    """Writes the HParams experiment and one session per final run and per trial.

    Args:
      logdir: the log directory.
      runs: final run records with `function`, `seed` and the `metrics`; an optional `history`
        mapping (tag -> per-epoch values, e.g. Keras `History.history`) is written as the run's
        curves under `epoch_<tag>`.
      trials: search trials with `trial_id` (or their position), `expression`, `fitness`,
        optional `generation` and `history`.
      metrics: metric fields of the final runs.

    Returns:
      The run names written, relative to `logdir`.
    """
    trials = list(trials or [])
    runs = list(runs)
    for index, run in enumerate(runs):
        if not isinstance(run, Mapping) or "function" not in run or "seed" not in run:
            raise SummaryError(f"run {index} needs at least 'function' and 'seed', got {run!r}")
    for index, trial in enumerate(trials):
        if not isinstance(trial, Mapping) or "expression" not in trial:
            raise SummaryError(f"trial {index} needs at least 'expression', got {trial!r}")
    if not runs and not trials:
        raise SummaryError("nothing to write: pass final runs and/or search trials")

    label = _activation_labels(str(r["function"]) for r in runs)
    expressions = sorted({label(r["function"]) for r in runs} | {label(t["expression"]) for t in trials})
    activation = hp.HParam("activation", hp.Discrete(expressions),
                           description="activation function (canonical expression or name)")
    stages = ([FINAL_DIR] if runs else []) + ([SEARCH_DIR] if trials else [])
    stage = hp.HParam("stage", hp.Discrete(stages),
                      description="final = evaluation run, search = search trial")
    hparams = [activation, stage]
    seed = generation = None
    if runs:
        seed = hp.HParam("seed", hp.Discrete(sorted({int(r["seed"]) for r in runs})),
                         description="random seed of the final run")
        hparams.append(seed)
    generations = sorted({int(t["generation"]) for t in trials if "generation" in t})
    if generations:
        generation = hp.HParam("generation", hp.IntInterval(min(generations), max(generations)),
                               description="generation in which the trial was proposed")
        hparams.append(generation)
    metric_specs = [hp.Metric(m, display_name=m) for m in metrics] if runs else []
    if trials:
        metric_specs.append(hp.Metric(SEARCH_METRIC, display_name="search fitness"))

    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        hp.hparams_config(hparams=hparams, metrics=metric_specs)
    writer.close()

    names = []
    for run in runs:
        name = final_run_name(str(run["function"]), int(run["seed"]))
        values = {activation: label(run["function"]), stage: FINAL_DIR, seed: int(run["seed"])}
        results = {m: run.get(m) for m in metrics}
        _write_session(Path(logdir) / name, values, results, run.get("history"))
        names.append(name)
    for index, trial in enumerate(trials):
        name = trial_run_name(trial.get("trial_id", index))
        values = {activation: label(trial["expression"]), stage: SEARCH_DIR}
        if generation is not None and "generation" in trial:
            values[generation] = int(trial["generation"])
        _write_session(Path(logdir) / name, values, {SEARCH_METRIC: trial.get("fitness")},
                       trial.get("history"))
        names.append(name)
    return names


def write_function_images(logdir: PathLike, plots: Mapping[str, PathLike | Sequence[PathLike]],
                          *, run_name: str = FUNCTIONS_RUN) -> list[str]:
    """Writes PNG plots of function shapes as images, one tag per function (and plot).

    Returns the tags written; each tag's description is the full expression.
    """
    writer = tf.summary.create_file_writer(str(Path(logdir) / run_name))
    tags = []
    with writer.as_default():
        for index, (function, given) in enumerate(plots.items()):
            paths = [given] if isinstance(given, (str, Path)) else list(given)
            for k, path in enumerate(paths):
                path = Path(path)
                if not path.is_file():
                    raise SummaryError(f"plot for function {function!r} not found: {path}")
                data = path.read_bytes()
                if not data.startswith(b"\x89PNG\r\n\x1a\n"):
                    raise SummaryError(f"plot for function {function!r} is not a PNG: {path}")
                image = tf.io.decode_png(data, channels=4)
                tag = f"function_shape/{index:02d}_{slug(function, 40)}" + (f"_{k}" if k else "")
                tf.summary.image(tag, image[tf.newaxis], step=0,
                                 description=f"`{function}`: {path.name}")
                tags.append(tag)
    writer.close()
    return tags


def write_evolution(logdir: PathLike, history: Sequence[Mapping[str, Any]], *,
                    run_name: str = EVOLUTION_RUN) -> list[str]:
    """Writes evolution progress: `evolution/best`, `evolution/median` and candidate counts,
    each at step = generation. Returns the tags written."""
    keys = ("best", "median", "distinct", "rejected", "duplicates")
    writer = tf.summary.create_file_writer(str(Path(logdir) / run_name))
    tags = set()
    with writer.as_default():
        for index, entry in enumerate(history):
            if not isinstance(entry, Mapping) or "generation" not in entry:
                raise SummaryError(f"history entry {index} needs 'generation', got {entry!r}")
            for key in keys:
                value = entry.get(key)
                if _is_number(value) and math.isfinite(float(value)):
                    tf.summary.scalar(f"evolution/{key}", float(value),
                                      step=int(entry["generation"]))
                    tags.add(f"evolution/{key}")
    writer.close()
    return sorted(tags)


def _activation_labels(functions: Iterable[str]):
    """`label(text)`: the HParams value of a function. A search trial or final run that computes a
    usual name the runs use (`gelu(x)` when the baseline `gelu` was trained) is shown by that
    name, so one function is one value in the dashboard's filters; other text is kept as given."""
    from activations.named import expression_for, usual_name

    def canonical(text: str) -> str | None:
        try:
            return str(expression_for(text))
        except ValueError:
            return None

    names = {canonical(f): f for f in functions if usual_name(f) is not None}
    return lambda text: names.get(canonical(str(text)), str(text))


def _write_session(path: Path, values: Mapping[Any, Any], results: Mapping[str, Any],
                   history: Mapping[str, Sequence[float]] | None) -> None:
    writer = tf.summary.create_file_writer(str(path))
    with writer.as_default():
        hp.hparams({k: v for k, v in values.items() if k is not None},
                   trial_id=path.name)
        for metric, value in results.items():
            if _is_number(value) and math.isfinite(float(value)):
                tf.summary.scalar(metric, float(value), step=0)
    writer.close()
    if history:
        # Curves get Keras' `epoch_` prefix so they never mix with the session's metric tags.
        write_scalars(path.parent, path.name, {f"epoch_{k}": v for k, v in history.items()})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) or (
        hasattr(value, "dtype") and getattr(value, "shape", None) == ())


def _tag(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_./-]+", "_", str(name)) or "value"
