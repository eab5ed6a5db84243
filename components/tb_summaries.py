"""TensorBoard logs of a search: one log directory a user opens with `tensorboard --logdir`.

Layout under the log directory (each sub-directory is a TensorBoard "run"):

* `final/<function>-seed<N>/` one per final training run: an HParams session (`activation`,
  `seed`, `stage`) with the metrics `test_accuracy`, `val_accuracy`, and its training curves
  (`epoch_*`; the Reporter copies the run's own Keras logs, `train/` and `validation/`, instead
  when it has them).
* `search/trial_<id>/` one per search trial: its curves (`epoch_loss`, `epoch_accuracy`,
  `epoch_val_loss`, `epoch_val_accuracy`, `epoch_learning_rate` at step = epoch, from 0), its
  learned activation parameters at the end of training (`learned/<layer>/<parameter>/mean`, and
  `/min`, `/max` for per-channel ones, at the step of its last epoch), and an HParams session
  with `activation`, `stage`, `generation` and the metric `fitness`.
* `functions/` images of the function shapes, one tag per function.
* `evolution/` best / median fitness and candidate counts (distinct, rejected, duplicates,
  stopped early) per generation (step = generation: a population's worth of proposals, for every
  strategy); with the rl strategy also `controller/` (baseline reward, certainty, updates).
* the log directory itself holds the HParams experiment definition: `activation` is a string
  hyper-parameter whose discrete domain is the set of functions trained, so the HParams
  dashboard can filter and sort by it. Spellings of one function are one value (a trial's
  `mul(x,one(x))` and its final run's simplified `x`; a trial's `gelu(x)` and the baseline
  `gelu`).

Every per-epoch summary, here and in a run's own Keras logs (`trainer.train`), is at step =
epoch counted from 0, as Keras' TensorBoard callback writes its `epoch_*` scalars.

Run directory names are slugs of the expression plus a short hash (expressions contain
characters such as `(`, `*` and `|`); the exact expression is always in the hparam value and in
the summary descriptions.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
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
    a single number at `first_step`. Non-finite values and None are skipped (TensorBoard cannot
    plot them and a diverged epoch should not flatten the chart; JSON records, such as a trial's
    history, hold NaN as None).
    """
    path = Path(logdir) / run_name
    writer = tf.summary.create_file_writer(str(path))
    with writer.as_default():
        for tag, values in scalars.items():
            series = [values] if _is_number(values) else list(values)
            for offset, value in enumerate(series):
                if value is None:
                    continue
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
        optional `generation`, `history` (written as for runs) and `activation_stats` (the
        learned parameters at the end of training, `trainer.train.TrainResult.activation_stats`).
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

    label = _activation_labels([str(r["function"]) for r in runs], [str(t["expression"]) for t in trials])
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
        if trial.get("activation_stats"):
            write_learned_parameters(logdir, name, trial["activation_stats"], step=_last_epoch(trial.get("history")))
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
                    run_name: str = EVOLUTION_RUN, strategy: str | None = None) -> list[str]:
    """Writes the search's progress: `evolution/best`, `evolution/median` and candidate counts
    (`distinct`, `rejected`, `duplicates`, `stopped_early`: the report's columns), and for the rl
    strategy the controller (`controller/baseline`: its running mean reward; `controller/certainty`:
    0 while it samples uniformly, 1 once every choice is certain; `controller/updates`), each at
    step = generation (a population's worth of proposals, whatever the strategy, which the
    descriptions name). Returns the tags written."""
    keys = {"best": "evolution/best", "median": "evolution/median", "distinct": "evolution/distinct",
            "rejected": "evolution/rejected", "duplicates": "evolution/duplicates",
            "stopped_early": "evolution/stopped_early", "controller_baseline": "controller/baseline",
            "controller_certainty": "controller/certainty", "controller_updates": "controller/updates"}
    searched = f"the {strategy} search" if strategy else "the search"
    description = f"{searched}, per generation (a population's worth of proposals)"
    writer = tf.summary.create_file_writer(str(Path(logdir) / run_name))
    tags = set()
    with writer.as_default():
        for index, entry in enumerate(history):
            if not isinstance(entry, Mapping) or "generation" not in entry:
                raise SummaryError(f"history entry {index} needs 'generation', got {entry!r}")
            for key, tag in keys.items():
                value = entry.get(key)
                if _is_number(value) and math.isfinite(float(value)):
                    tf.summary.scalar(tag, float(value), step=int(entry["generation"]), description=description)
                    tags.add(tag)
    writer.close()
    return sorted(tags)


def _activation_labels(functions: Sequence[str], expressions: Sequence[str] = ()) -> Callable[[Any], str]:
    """`label(text)`: the HParams value of a function, so one function is one value in the
    dashboard's filters. Final runs train the simplest form of a search result
    (`activations.simplify`) while its trials keep the search's spelling, and a trial may spell a
    baseline's usual name (`gelu(x)` for `gelu`): texts whose simplified forms are equal are one
    group. A group with a final run shows the run's text (a usual name first); a group of trials
    only shows its one text, or the simplified form when it has several. Text that does not
    parse is kept as given."""
    from activations.named import usual_name

    groups: dict[str, list[str]] = {}
    for text in [*functions, *expressions]:
        key = _simplest(text)
        if key is not None and text not in groups.setdefault(key, []):
            groups[key].append(text)
    shown = {}
    for key, texts in groups.items():
        runs = [t for t in texts if t in functions]
        if runs:
            shown[key] = next((t for t in runs if usual_name(t) is not None), runs[0])
        else:
            shown[key] = texts[0] if len(texts) == 1 else key
    return lambda text: shown.get(_simplest(str(text)), str(text))


@functools.lru_cache(maxsize=4096)
def _simplest(text: str) -> str | None:
    """The canonical text of `text`'s simplest form (a usual name resolved), or None when it does
    not parse. Cached: a dashboard labels every trial and run, often the same text many times."""
    import activations
    from activations.named import expression_for

    try:
        return str(activations.simplify(expression_for(text)))
    except ValueError:
        return None


def write_learned_parameters(logdir: PathLike, run_name: str,
                             stats: Mapping[str, Mapping[str, Mapping[str, float]]], *, step: int = 0) -> list[str]:
    """Writes a run's learned activation parameters (`{layer: {parameter: {mean, min, max,
    size}}}`, as `trainer.train.TrainResult.activation_stats`) as scalars at `step`.

    A search trial keeps these statistics, not the values themselves, so they are scalars, not
    histograms: `learned/<layer>/<parameter>/mean`, and `/min` and `/max` for a parameter with
    one value per channel. Returns the tags written.
    """
    scalars = {}
    for layer, params in stats.items():
        for name, values in params.items():
            keys = ("mean",) if int(values.get("size", 1) or 1) == 1 else ("mean", "min", "max")
            for key in keys:
                if values.get(key) is not None:
                    scalars[_tag(f"learned/{layer}/{name}/{key}")] = values[key]
    if scalars:
        write_scalars(logdir, run_name, scalars, first_step=step)
    return sorted(scalars)


def _last_epoch(history: Mapping[str, Sequence[Any]] | None) -> int:
    """The step (epoch from 0) of a history's last epoch; 0 without one."""
    lengths = [len(values) for values in (history or {}).values() if isinstance(values, Sequence)]
    return max(lengths) - 1 if lengths else 0


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
        # Curves get Keras' `epoch_` prefix so they never mix with the session's metric tags;
        # `epoch` itself (Keras' 0-based index in a run's history) is the step, not a curve.
        write_scalars(path.parent, path.name, {f"epoch_{k}": v for k, v in history.items() if k != "epoch"})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) or (
        hasattr(value, "dtype") and getattr(value, "shape", None) == ())


def _tag(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_./-]+", "_", str(name)) or "value"
