"""Exporter: hands the winning activation back in a form any Keras model can use.

Writes `activation.json` (expression, sharing mode, statistics of the learned parameters, the
evaluation summary; read by `activations.load`) and `model.keras` (the winner's best trained
model, loadable with `keras.saving.load_model` in safe mode after `import activations`).

`model.keras` takes raw images, exactly as the data source stores them: pixel values 0..255 (uint8
or float), in the shape the network was trained on. Its first layers apply the normalisation the
training pipeline applied (`trainer.input_pipeline.normalization_layers`: Keras' own
`Normalization` / `Rescaling` layers holding the run's own per-channel statistics, recorded in its
result.json), then the trained network; so its predictions on raw images equal the trained
network's on the normalised ones. `activation.json`'s `"input"` entry says so (shape, dtype,
value range, the normalisation and its statistics).

The winner is the blessed function of the search with the largest gain over the baseline (a
blessed baseline such as Swish only when no function of the search was blessed). When nothing was
blessed the best function of the search is still exported, marked `"blessed": false`, so the user
can inspect it; the evaluation summary in the file says plainly that it did not beat the baseline.
`origin` says where the function came from (an evolved function, or one the search started from).
"""

from __future__ import annotations

import json
import os
from typing import Any

from components.base import BaseExecutor, Component, ComponentSpec, InputSpec, OutputSpec, Parameter
from components.statistics import Evaluation, percentage_points
from components.trainer import learned_parameter_statistics, read_runs


class ExporterSpec(ComponentSpec):
    INPUTS = {"evaluation": InputSpec("Evaluation"), "trained_models": InputSpec("TrainedModels")}
    OUTPUTS = {"exported": OutputSpec("ExportedActivation", publish_as="exported_activation")}
    PARAMETERS = {"sharing": Parameter(str, default="channel", choices=("layer", "channel"))}


def choose_function(evaluation: Evaluation, runs: list[dict[str, Any]]) -> tuple[str, bool]:
    """(function, blessed): the blessed function of the search with the largest gain, else a
    blessed baseline (Swish may beat ReLU when no discovery does), else the best function of
    the search by mean (exported for inspection, marked not blessed)."""
    kinds = {run["function"]: run.get("kind") for run in runs}
    by_gain = sorted((f for f in evaluation.blessed_functions), key=lambda f: f.diff, reverse=True)
    blessed = [f for f in by_gain if kinds.get(f.function) != "baseline"] or by_gain
    if blessed:
        return blessed[0].function, True
    ranked = sorted(
        (f for f in evaluation.functions if f.function != evaluation.baseline and f.mean is not None),
        key=lambda f: f.mean, reverse=True,
    )
    discovered = [f for f in ranked if kinds.get(f.function) != "baseline"]
    pick = (discovered or ranked or list(evaluation.functions))[0]
    return pick.function, False


def export_reason(evaluation: Evaluation, function: str, blessed: bool) -> str:
    """Why `function` is the one exported, in a sentence (the evaluation's summary speaks of the
    best function overall, which may be a baseline the export passes over)."""
    stats = evaluation[function]
    if blessed:
        return f"blessed: it beat {evaluation.baseline} by {percentage_points(stats.diff)}"
    gain = "" if stats.diff is None else f" ({percentage_points(stats.diff)} vs {evaluation.baseline})"
    return (f"not blessed: no function of the search beat {evaluation.baseline}; this is the search's best by "
            f"mean {evaluation.metric}{gain}, exported for inspection only")


def run_normalization(trained_uri: str, run: dict[str, Any]) -> dict[str, Any]:
    """The normalisation a run's training pipeline applied, from its result.json (the statistics
    are the ones that run used: its own train split's)."""
    path = os.path.join(trained_uri, run["run_dir"], "result.json")
    with open(path) as f:
        result = json.load(f)
    normalization = (result.get("data") or {}).get("normalization")
    if not normalization:
        raise ValueError(f"{path} does not record the input normalisation of the run (written by an older "
                         "trainer?): run the Trainer again to export a model that takes raw images")
    return normalization


def export_raw_input_model(trained_uri: str, run: dict[str, Any], path: str) -> dict[str, Any]:
    """Saves the run's trained model behind its input normalisation at `path` (a model of raw
    0..255 images); returns the `"input"` entry of activation.json describing what it takes."""
    import keras

    import activations  # noqa: F401  (registers the activation layers the model holds)
    from trainer.input_pipeline import raw_input_model

    normalization = run_normalization(trained_uri, run)
    trained = keras.saving.load_model(os.path.join(trained_uri, run["model_path"]), safe_mode=True)
    model = raw_input_model(trained, normalization)
    model.save(path)
    return {
        "shape": [int(d) for d in model.input_shape[1:]],
        "dtype": "uint8 or float32",
        "value_range": [0, 255],
        "normalized_internally": True,
        "normalization": normalization,
        "note": ("feed raw images as the data source stores them (pixel values 0..255, this shape); "
                 "the model's first layers apply the training pipeline's normalisation"),
    }


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
            "why_exported": export_reason(evaluation, function, blessed),
        }
        out = output_dict["exported"][0]
        record = activation_record(str(expression_for(function)), exec_properties["sharing"],
                                   learned_parameter_statistics(own_runs), summary, name=function,
                                   origin=own_runs[0].get("origin") if own_runs else None,
                                   searched_as=own_runs[0].get("searched_as") if own_runs else None,
                                   equivalent_to=known_equivalent(function))
        # The model shipped is the seed with the best validation accuracy: choosing by test
        # accuracy would select on the data the evaluation reports.
        finished = [r for r in own_runs if r.get("model_path") and r.get("val_accuracy") is not None]
        if finished:
            best = max(finished, key=lambda r: r["val_accuracy"])
            record["input"] = export_raw_input_model(trained.uri, best, out.path("model.keras"))
            record["model_seed"] = best["seed"]
        with open(out.path("activation.json"), "w") as f:
            json.dump(record, f, indent=2)
        out.properties.update({"function": function, "blessed": blessed, "has_model": bool(finished)})
        self.context.progress(f"exported {function} ({'blessed' if blessed else 'not blessed'})")


class Exporter(Component):
    SPEC_CLASS = ExporterSpec
    EXECUTOR_CLASS = ExporterExecutor
