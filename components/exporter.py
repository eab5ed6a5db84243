"""Exporter: hands the winning activation back in a form any Keras model can use.

Writes `activation.json` (expression, sharing mode, statistics of the learned parameters, the
evaluation summary; read by `activations.load`) and `model.keras` (the winner's best trained
model, loadable with `keras.saving.load_model` in safe mode after `import activations`).

`model.keras` takes raw images as the training data holds them: pixel values 0..255 (uint8 or
float), in the shape the network was trained on. Most sources store such pixels already; one that
does not (scikit-learn's digits are 0..16, scaled by 255/16) says so through
`trainer.sources.pixel_encoding`, and the `"input"` entry repeats it. The model's first layers
apply the normalisation the training pipeline applied (`trainer.input_pipeline.normalization_layers`:
Keras' own `Normalization` / `Rescaling` layers holding the run's own per-channel statistics,
recorded in its result.json), then the trained network; so its predictions on raw images equal the
trained network's on the normalised ones. `activation.json`'s `"input"` entry says so (shape,
dtype, value range, how the source's own pixels map to it, the normalisation and its statistics).
Its `"output"` entry says the model outputs logits and names the class of each output, from the
Examples' statistics.json (the optional `examples` input); without class names it is left out.

The winner is the blessed function of the search with the largest gain over the baseline (a
blessed baseline such as Swish only when no function of the search was blessed). When nothing was
blessed the best function of the search is still exported, marked `"blessed": false`, so the user
can inspect it; the evaluation summary in the file says plainly that it did not beat the baseline.
That best function is the one with the best mean validation accuracy over its final runs: the test
accuracy is what the evaluation reports, and choosing by it would select on the reported data.
`origin` says where the function came from (an evolved function, or one the search started from).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from typing import Any

from components.base import Artifact, BaseExecutor, Component, ComponentSpec, InputSpec, OutputSpec, Parameter
from components.statistics import Evaluation, FunctionStats, percentage_points
from components.trainer import LEARNED_STATISTICS_NOTE, learned_parameter_statistics, read_runs


MODEL_LOADING = ("import activations, then keras.saving.load_model('model.keras'): the model's activation layers "
                 "are activations.ParametricActivation, which Keras finds only once the library is imported")
"""activation.json's `model_loading`: without the import Keras fails with an opaque "could not be
deserialized" error, and the report or this file is where a user looks."""


PRECISION_NOTE = ("model.keras computes in float32 whatever precision the run trained under (its weights were "
                  "float32 throughout), so it converts to TensorFlow Lite and runs on devices without bfloat16 or "
                  "float16 arithmetic")


class ExporterSpec(ComponentSpec):
    INPUTS = {
        "evaluation": InputSpec("Evaluation"),
        "trained_models": InputSpec("TrainedModels"),
        "examples": InputSpec("Examples", optional=True, doc="its statistics.json names the model's output classes"),
    }
    OUTPUTS = {"exported": OutputSpec("ExportedActivation", publish_as="exported_activation")}
    PARAMETERS = {"sharing": Parameter(str, default="channel", choices=("layer", "channel"))}


def choose_function(evaluation: Evaluation, runs: list[dict[str, Any]]) -> tuple[str, bool]:
    """(function, blessed): the blessed function of the search with the largest gain, else a
    blessed baseline (Swish may beat ReLU when no discovery does), else the best function of
    the search by mean validation accuracy (`rank_unblessed`; exported for inspection, marked
    not blessed)."""
    kinds = {run["function"]: run.get("kind") for run in runs}
    by_gain = sorted((f for f in evaluation.blessed_functions), key=lambda f: f.diff, reverse=True)
    blessed = [f for f in by_gain if kinds.get(f.function) != "baseline"] or by_gain
    if blessed:
        return blessed[0].function, True
    ranked, _ = rank_unblessed(evaluation, runs)
    discovered = [f for f in ranked if kinds.get(f.function) != "baseline"]
    pick = (discovered or ranked or list(evaluation.functions))[0]
    return pick.function, False


def validation_scores(runs: list[dict[str, Any]]) -> dict[str, float] | None:
    """{function: mean validation accuracy of its runs} (each run's best epoch, as the search
    scored its trials). A diverged run scores chance level, as in the evaluation: the weights of
    its best epoch are gone. None when a run that did not diverge recorded no validation
    accuracy (data without a validation split): only test accuracy can rank then."""
    values: dict[str, list[float]] = {}
    for run in runs:
        value = run.get("val_accuracy")
        if run.get("diverged"):
            classes = run.get("num_classes")
            value = 1.0 / classes if isinstance(classes, int) and classes > 0 else 0.0
        elif not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return None
        values.setdefault(run["function"], []).append(float(value))
    return {function: statistics.fmean(v) for function, v in values.items()}


def rank_unblessed(evaluation: Evaluation,
                   runs: list[dict[str, Any]]) -> tuple[list[FunctionStats], dict[str, float] | None]:
    """The functions besides the baseline, best first, and the validation scores that ranked them.

    Ranked by mean validation accuracy of the final runs: the test accuracy is what the
    evaluation reports, and picking by it would select on that data (as choosing a seed by it
    would). By mean test accuracy, with None for the scores, only when validation accuracy is
    missing."""
    candidates = [f for f in evaluation.functions if f.function != evaluation.baseline and f.mean is not None]
    names = {f.function for f in candidates}
    scores = validation_scores([run for run in runs if run["function"] in names])
    if scores is None or not names <= set(scores):
        return sorted(candidates, key=lambda f: f.mean, reverse=True), None
    return sorted(candidates, key=lambda f: scores[f.function], reverse=True), scores


def export_reason(evaluation: Evaluation, function: str, blessed: bool, runs: list[dict[str, Any]]) -> str:
    """Why `function` is the one exported, in a sentence (the evaluation's summary speaks of the
    best function overall by test accuracy, which may be one the export passes over)."""
    stats = evaluation[function]
    if blessed:
        return f"blessed: it beat {evaluation.baseline} by {percentage_points(stats.diff)}"
    _, scores = rank_unblessed(evaluation, runs)
    gain = "" if stats.diff is None else f"{percentage_points(stats.diff)} vs {evaluation.baseline}"
    if scores is not None and function in scores:
        by = f"mean validation accuracy of its final runs ({100 * scores[function]:.2f}%"
        by += f"; its mean {evaluation.metric} is {gain})" if gain else ")"
    else:
        by = f"mean {evaluation.metric}, as the runs did not all record a validation accuracy"
        by += f" ({gain})" if gain else ""
    return (f"not blessed: no function of the search beat {evaluation.baseline}; this is the search's best by "
            f"{by}, exported for inspection only")


def run_data(trained_uri: str, run: dict[str, Any]) -> dict[str, Any]:
    """What a run's result.json records of its data: the source, and the normalisation its
    training pipeline applied (the statistics that run used: its own train split's)."""
    path = os.path.join(trained_uri, run["run_dir"], "result.json")
    with open(path) as f:
        result = json.load(f)
    data = result.get("data") or {}
    if not data.get("normalization"):
        raise ValueError(f"{path} does not record the input normalisation of the run (written by an older "
                         "trainer?): run the Trainer again to export a model that takes raw images")
    return data


def _statistics(examples: Artifact | None) -> dict[str, Any]:
    """The Examples' statistics.json, or {} when the input is not wired or cannot be read (an
    entry built from it is then left out, not guessed)."""
    if examples is None:
        return {}
    from components.example_gen import read_statistics

    try:
        return read_statistics(examples)
    except (OSError, ValueError):
        return {}


def read_resize(examples: Artifact | None) -> list[int] | None:
    """[height, width] the data step resized every image to (`--image_size`), or None."""
    size = _statistics(examples).get("resized_to")
    return [int(d) for d in size] if isinstance(size, list) and len(size) == 2 else None


def read_class_names(examples: Artifact | None) -> list[str] | None:
    """The class names in label order, from the Examples' statistics.json; None when the input
    is not wired or the artifact does not name them (the `"output"` entry is then left out, not
    guessed)."""
    names = _statistics(examples).get("class_names")
    return [str(name) for name in names] if isinstance(names, list) and names else None


def input_entry(shape: list[int], data: dict[str, Any], resized_to: list[int] | None = None) -> dict[str, Any]:
    """The `"input"` entry of activation.json: what the exported model takes. The note says how
    to get there from the source's own images (`trainer.sources.pixel_encoding`): not every
    source stores 0..255 pixels, and an unscaled image gives chance accuracy."""
    from trainer.data import DataError
    from trainer.sources import pixel_encoding

    entry = {"shape": shape, "dtype": "uint8 or float32", "value_range": [0, 255], "normalized_internally": True,
             "normalization": data["normalization"]}
    note = "feed images of this shape with pixel values 0..255 as the data source stores them"
    try:
        encoding = pixel_encoding(data["source"]) if data.get("source") else None
    except DataError:
        encoding = None
    if encoding is not None:
        entry.update(source=data["source"], source_pixels=encoding)
        note = f"feed images of this shape with pixel values 0..255: {encoding['note']}"
    if resized_to:
        entry["resized_to"] = resized_to
        note += (f"; the data step resized every source image to {resized_to[0]}x{resized_to[1]} (bilinear) "
                 "before training, so resize yours the same way")
    entry["note"] = note + "; the model's first layers apply the training pipeline's normalisation"
    return entry


def output_entry(class_names: list[str] | None, units: int) -> dict[str, Any] | None:
    """The `"output"` entry of activation.json: the model outputs logits, output i for class i.
    None when the class names are unknown or do not match the outputs: a wrong name is worse
    than none."""
    if not class_names or len(class_names) != units:
        return None
    return {"kind": "logits", "class_names": list(class_names),
            "note": ("one logit per class, in the order of class_names; apply softmax for probabilities "
                     "(argmax gives the predicted class)")}


def export_raw_input_model(trained_uri: str, run: dict[str, Any], path: str,
                           class_names: list[str] | None = None, resized_to: list[int] | None = None
                           ) -> dict[str, Any]:
    """Saves the run's trained model behind its input normalisation at `path` (a model of raw
    0..255 images); returns the entries of activation.json describing what it takes (`"input"`)
    and what it outputs (`"output"`, when the class names are known)."""
    import keras

    import activations  # noqa: F401  (registers the activation layers the model holds)
    from trainer.input_pipeline import raw_input_model
    from trainer.precision import float32_copy

    data = run_data(trained_uri, run)
    trained = keras.saving.load_model(os.path.join(trained_uri, run["model_path"]), safe_mode=True)
    # Shipped in float32 whatever the run trained under: a mixed policy saved with the layers
    # would make every user's copy compute in bfloat16 or float16 (no TensorFlow Lite, slow or
    # failing on many devices). The weights are float32 either way.
    model = float32_copy(raw_input_model(trained, data["normalization"]))
    model.save(path)
    entries = {"input": input_entry([int(d) for d in model.input_shape[1:]], data, resized_to),
               "precision": {"model": "float32", "trained_under": run.get("precision"), "note": PRECISION_NOTE}}
    output = output_entry(class_names, int(model.output_shape[-1]))
    if output is not None:
        entries["output"] = output
    return entries


class ExporterExecutor(BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:  # noqa: N802
        from activations.export import activation_record
        from activations.named import expression_for, known_equivalent

        trained = input_dict["trained_models"][0]
        with open(os.path.join(input_dict["evaluation"][0].uri, "evaluation.json")) as f:
            evaluation = Evaluation.from_json(f.read())
        runs = read_runs(trained)
        function, blessed = choose_function(evaluation, runs)
        own_runs = [run for run in runs if run["function"] == function]
        stats = evaluation[function]
        summary = {
            "function": function,
            "blessed": blessed,
            "verdict": stats.verdict,
            "baseline": evaluation.baseline,
            "mean_test_accuracy": stats.mean,
            "std_test_accuracy": stats.std,
            "gain_over_baseline": stats.diff,
            "welch_p_holm": stats.welch_p_holm,
            "mannwhitney_p_holm": stats.mannwhitney_p_holm,
            "wins_ties_losses": [stats.wins, stats.ties, stats.losses],
            "seeds": list(stats.seeds),
            "summary": evaluation.summary,
            "why_exported": export_reason(evaluation, function, blessed, runs),
        }
        out = output_dict["exported"][0]
        learned = learned_parameter_statistics(own_runs)
        notes = {"learned_parameters_note": LEARNED_STATISTICS_NOTE} if learned else {}
        record = activation_record(str(expression_for(function)), exec_properties["sharing"],
                                   learned, summary, name=function, **notes,
                                   origin=own_runs[0].get("origin") if own_runs else None,
                                   searched_as=own_runs[0].get("searched_as") if own_runs else None,
                                   equivalent_to=known_equivalent(function))
        # The model shipped is the seed with the best validation accuracy: choosing by test
        # accuracy would select on the data the evaluation reports.
        finished = [r for r in own_runs if r.get("model_path") and r.get("val_accuracy") is not None]
        if finished:
            best = max(finished, key=lambda r: r["val_accuracy"])
            examples = (input_dict.get("examples") or [None])[0]
            record.update(export_raw_input_model(trained.uri, best, out.path("model.keras"),
                                                 read_class_names(examples), read_resize(examples)))
            record["model_seed"] = best["seed"]
            record["model_loading"] = MODEL_LOADING
        with open(out.path("activation.json"), "w") as f:
            json.dump(record, f, indent=2)
        out.properties.update({"function": function, "blessed": blessed, "has_model": bool(finished)})
        self.context.progress(f"exported {function} ({'blessed' if blessed else 'not blessed'})")


class Exporter(Component):
    SPEC_CLASS = ExporterSpec
    EXECUTOR_CLASS = ExporterExecutor
