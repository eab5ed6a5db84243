"""Pieces of the components that decide what gets trained and exported."""

import pytest

from components.exporter import choose_function, export_reason
from components.statistics import evaluate
from components.trainer import functions_to_train, learned_parameter_statistics, run_record, shortfall_note
from conftest import run_tuner


def test_functions_to_train_skip_baseline_equivalents_and_say_where_each_came_from():
    top = [
        {"trial_id": "01", "expression": "x * sigmoid(beta * x)", "fitness": 0.9, "operator": "seed", "generation": 0},
        {"trial_id": "03", "expression": "elu(x)", "fitness": 0.88, "operator": "seed", "generation": 0},
        {"trial_id": "11", "expression": "mish(mul(alpha,x))", "fitness": 0.87, "operator": "insert",
         "generation": 2},
        {"trial_id": "12", "expression": "tanh(x)", "fitness": 0.5, "operator": "change", "generation": 2},
    ]
    chosen = functions_to_train(["relu", "swish"], top, top_k=2, extra=["relu(x) + 0 * x", "sin(x)"])
    assert [c["function"] for c in chosen] == ["relu", "swish", "elu(x)", "mish(mul(alpha,x))", "sin(x)"]
    origins = {c["function"]: c["origin"] for c in chosen}
    # The learnable Swish of trial 01 is the named swish baseline: not trained twice, and said.
    assert origins["swish"] == "baseline; also the search's rank 1 (search initial candidate, trial 01)"
    assert origins["elu(x)"] == "search initial candidate, trial 03"
    assert origins["mish(mul(alpha,x))"] == "evolved (insert), generation 2, trial 11"
    # A roundabout spelling is trained in its simplest form, and says how the search wrote it.
    (item,) = functions_to_train([], [{"trial_id": "26", "expression": "mish(sub(x,mul(beta,zero(x))))",
                                       "operator": "remove_parameter", "generation": 3}], 1, [])
    assert item["function"] == "mish(x)" and item["searched_as"] == "mish(sub(x,mul(beta,zero(x))))"
    assert item["origin"] == "evolved (remove_parameter), generation 3, trial 26; searched as mish(x - beta * zero(x))"
    # One that stays roundabout after simplifying is named as the known function it computes.
    (item,) = functions_to_train([], [{"trial_id": "27", "expression": "mul(x,sigmoid(identity(x)))",
                                       "operator": "insert", "generation": 4}], 1, [])
    assert item["function"] == "mul(x,sigmoid(x))"
    assert item["origin"] == ("evolved (insert), generation 4, trial 27; the same function as silu; "
                              "searched as x * sigmoid(identity(x))")
    assert origins["relu"] == "baseline" and origins["sin(x)"] == "given"
    # top_k asks for more than the search found: said, not silent.
    assert shortfall_note(chosen, 2) == ""
    assert shortfall_note(functions_to_train(["relu", "swish"], top[:2], top_k=5, extra=[]), 5) == (
        "note: top_k=5, but the search found 1 distinct function besides the baselines; training those")
    assert [c["kind"] for c in chosen] == ["baseline", "baseline", "discovered", "discovered", "given"]


def test_learned_parameter_statistics_ignore_missing_and_non_finite_values():
    # Records written before min and max were kept hold the layer mean alone: it stands for the layer.
    runs = [{"learned_parameters": {"a1": {"beta": 1.0}, "a2": {"beta": 3.0, "alpha": None}}},
            {"learned_parameters": {"a1": {"beta": float("nan"), "alpha": 0.5}}}, {}]
    stats = learned_parameter_statistics(runs)
    assert stats["beta"] == {"mean": 2.0, "std_of_layer_means": 1.0, "min": 1.0, "max": 3.0, "values": 2,
                             "layers": 2, "seeds": 1}
    assert stats["alpha"]["seeds"] == 1 and stats["alpha"]["min"] == stats["alpha"]["max"] == 0.5


def test_run_records_keep_each_layers_channel_range_and_the_statistics_cover_it():
    """With per-channel sharing a layer spanning 0.97-1.03 over 64 channels used to reach the
    record (and activation.json's min/max) as its mean alone."""
    def result(low, high):
        return {"test_accuracy": 0.9, "activation_stats": {
            "act_01": {"alpha": {"mean": 1.0, "std": 0.02, "min": low, "max": high, "size": 64}},
            "act_02": {"alpha": {"mean": 1.02, "std": 0.0, "min": 1.02, "max": 1.02, "size": 1}}}}

    function = {"function": "mul(alpha,x)", "kind": "discovered"}
    runs = [run_record(function, seed, result(low, high), f"runs/{seed}")
            for seed, (low, high) in enumerate([(0.97, 1.03), (0.96, 1.01)])]
    assert runs[0]["learned_parameters"]["act_01"]["alpha"] == {"mean": 1.0, "std": 0.02, "min": 0.97, "max": 1.03,
                                                               "size": 64}
    stats = learned_parameter_statistics(runs)["alpha"]
    assert stats["min"] == 0.96 and stats["max"] == 1.03  # channel values, not layer means
    assert stats["mean"] == pytest.approx(1.01)  # the mean of the layer means, where load() starts
    assert (stats["values"], stats["layers"], stats["seeds"]) == (130, 2, 2)
    assert stats["std_of_layer_means"] == pytest.approx(0.01)


def test_every_baseline_the_search_ranked_says_its_rank_also_below_the_top_k():
    top = [{"trial_id": "04", "expression": "tanh(x)", "operator": "seed"},
           {"trial_id": "05", "expression": "elu(x)", "operator": "seed"},
           {"trial_id": "00", "expression": "relu(x)", "operator": "seed"},
           {"trial_id": "07", "expression": "sin(x)", "operator": "seed"}]
    chosen = functions_to_train(["relu"], top, top_k=2, extra=[])
    assert [c["function"] for c in chosen] == ["relu", "tanh(x)", "elu(x)"]  # still the top 2 only
    assert chosen[0]["origin"] == "baseline; also the search's rank 3 (search initial candidate, trial 00)"


def test_a_top_k_shortfall_has_a_sentence_for_the_report():
    functions = functions_to_train(["relu"], [{"trial_id": "01", "expression": "tanh(x)"}], top_k=2, extra=[])
    assert shortfall_note(functions, 2, for_report=True) == (
        "top_k=2 asked for the search's 2 best functions, but the search found only 1 distinct function besides "
        "the baselines; the final runs trained it.")
    assert shortfall_note(functions, 1, for_report=True) == ""


def test_exporter_picks_the_blessed_winner_else_the_best_non_baseline():
    def runs(name, mean, kind):
        return [{"function": name, "seed": s, "test_accuracy": mean + 0.001 * s, "kind": kind} for s in range(4)]

    clear = runs("relu", 0.80, "baseline") + runs("swish", 0.81, "baseline") + runs("elu(x)", 0.90, "discovered")
    assert choose_function(evaluate(clear), clear) == ("elu(x)", True)
    both = runs("relu", 0.80, "baseline") + runs("swish", 0.90, "baseline") + runs("elu(x)", 0.85, "discovered")
    # A blessed function of the search is preferred to a baseline with a larger gain...
    assert choose_function(evaluate(both), both) == ("elu(x)", True)
    close = runs("relu", 0.80, "baseline") + runs("swish", 0.85, "baseline") + runs("elu(x)", 0.79, "discovered")
    # ...and a blessed baseline to a search result that did not beat ReLU.
    assert choose_function(evaluate(close), close) == ("swish", True)
    none = runs("relu", 0.80, "baseline") + runs("swish", 0.78, "baseline") + runs("elu(x)", 0.79, "discovered")
    assert choose_function(evaluate(none), none) == ("elu(x)", False)
    # Why each was exported, in words the report repeats (the evaluation's summary names swish).
    assert export_reason(evaluate(clear), "elu(x)", True, clear) == "blessed: it beat relu by +10.00 pp"
    # These runs record no validation accuracy: only then does test accuracy rank, and it is said.
    assert export_reason(evaluate(none), "elu(x)", False, none) == (
        "not blessed: no function of the search beat relu; this is the search's best by mean test_accuracy, "
        "as the runs did not all record a validation accuracy (-1.00 pp vs relu), exported for inspection only")


def test_an_unblessed_export_is_chosen_by_validation_accuracy_not_by_the_test_accuracy_reported():
    def runs(name, test, val, kind="discovered", diverged=()):
        return [{"function": name, "seed": s, "kind": kind, "test_accuracy": test + 0.001 * s, "num_classes": 10,
                 "val_accuracy": val, "diverged": s in diverged} for s in range(4)]

    # elu(x) has the better test accuracy, tanh(x) the better validation accuracy: tanh(x) is exported.
    mixed = runs("relu", 0.80, 0.80, "baseline") + runs("elu(x)", 0.79, 0.70) + runs("tanh(x)", 0.75, 0.78)
    evaluation = evaluate(mixed)
    assert max((f for f in evaluation.functions if f.function != "relu"), key=lambda f: f.mean).function == "elu(x)"
    assert choose_function(evaluation, mixed) == ("tanh(x)", False)
    assert export_reason(evaluation, "tanh(x)", False, mixed) == (
        "not blessed: no function of the search beat relu; this is the search's best by mean validation accuracy "
        "of its final runs (78.00%; its mean test_accuracy is -5.00 pp vs relu), exported for inspection only")
    # A diverged run's best epoch is gone: it scores chance level, as in the evaluation.
    unstable = (runs("relu", 0.80, 0.80, "baseline") + runs("elu(x)", 0.79, 0.79)
                + runs("tanh(x)", 0.75, 0.90, diverged=(0, 1)))
    assert choose_function(evaluate(unstable), unstable) == ("elu(x)", False)
    # Without a validation accuracy for some run that did not diverge, test accuracy ranks.
    missing = [dict(r, val_accuracy=None) if r["function"] == "tanh(x)" and r["seed"] == 2 else r for r in mixed]
    assert choose_function(evaluate(missing), missing) == ("elu(x)", False)
    assert "best by mean test_accuracy, as the runs did not all record a validation accuracy" in export_reason(
        evaluate(missing), "elu(x)", False, missing)


def _evaluate_relu_against_elu(tmp_path, trained, run_dir, elu_mean):
    """Final runs of relu (mean 0.80) and elu(x) (`elu_mean`), four seeds each, the first elu
    run with the model saved under `run_dir`; returns the Evaluator's artifact for them."""
    import json
    import os

    from components.base import Artifact
    from components.evaluator import EvaluatorExecutor

    with open(trained.path("runs.jsonl"), "w") as f:
        for name, mean, kind in (("relu", 0.80, "baseline"), ("elu(x)", elu_mean, "discovered")):
            for seed in range(4):
                real = name == "elu(x)" and seed == 0
                f.write(json.dumps({"function": name, "seed": seed, "kind": kind, "origin": kind,
                                    "test_accuracy": mean + 0.002 * seed, "val_accuracy": mean,
                                    "learned_parameters": {}, "run_dir": run_dir if real else None,
                                    "model_path": os.path.join(run_dir, "model.keras") if real else None}) + "\n")
    evaluation = Artifact("Evaluation", str(tmp_path / "evaluation"))
    os.makedirs(evaluation.uri)
    EvaluatorExecutor().Do({"trained_models": [trained]}, {"evaluation": [evaluation]},
                           {"baseline": "relu", "threshold": 0.0, "alpha": 0.05, "min_seeds": 3})
    return evaluation


def _trained_models_with_a_model(tmp_path, source: str, num_classes: int, model=None):
    """A TrainedModels artifact whose elu(x) seed 0 has a small saved model (`model`, or a dense
    layer over 8x8x1 images) and a result.json, and the Evaluation of its runs (nothing blessed)."""
    import json
    import os

    import keras

    from components.base import Artifact

    trained = Artifact("TrainedModels", str(tmp_path / "trained"))
    run_dir = os.path.join("runs", "elu-seed0")
    os.makedirs(trained.path(run_dir))
    if model is None:
        inputs = keras.Input((8, 8, 1))
        model = keras.Model(inputs, keras.layers.Dense(num_classes)(keras.layers.Flatten()(inputs)))
    model.save(trained.path(run_dir, "model.keras"))
    with open(trained.path(run_dir, "result.json"), "w") as f:
        json.dump({"data": {"source": source, "input_shape": [8, 8, 1], "num_classes": num_classes,
                            "normalization": {"normalize": "unit"}}}, f)
    evaluation = _evaluate_relu_against_elu(tmp_path, trained, run_dir, elu_mean=0.79)
    return trained, evaluation


def _export(tmp_path, trained, evaluation, examples=None) -> dict:
    import json
    import os

    from components.base import Artifact
    from components.exporter import ExporterExecutor

    exported = Artifact("ExportedActivation", str(tmp_path / "exported"))
    os.makedirs(exported.uri, exist_ok=True)
    inputs = {"evaluation": [evaluation], "trained_models": [trained]}
    if examples is not None:
        inputs["examples"] = [examples]
    ExporterExecutor().Do(inputs, {"exported": [exported]}, {"sharing": "channel"})
    with open(exported.path("activation.json")) as f:
        return json.load(f)


def test_the_export_names_the_class_of_each_logit_from_the_examples_statistics(tmp_path):
    import json
    import os

    import activations
    from components.base import Artifact

    names = ["cat", "dog", "fish"]
    trained, evaluation = _trained_models_with_a_model(tmp_path, "folder:/data/pets", len(names))
    examples = Artifact("Examples", str(tmp_path / "examples"))
    os.makedirs(examples.uri)
    with open(examples.path("statistics.json"), "w") as f:
        json.dump({"source": "folder:/data/pets", "class_names": names, "num_classes": 3, "resized_to": [8, 8]}, f)
    record = _export(tmp_path, trained, evaluation, examples)
    assert record["output"]["kind"] == "logits" and record["output"]["class_names"] == names
    # --image_size resized the source's images: the user must do the same to theirs.
    assert record["input"]["resized_to"] == [8, 8] and "resized every source image to 8x8" in record["input"]["note"]
    assert "softmax" in record["output"]["note"]
    assert record["input"]["value_range"] == [0, 255] and record["input"]["source_pixels"]["scale"] == 1.0
    # activations.load reads the file with its new entries.
    assert str(activations.load(tmp_path / "exported").expression) == record["expression"]
    # Not wired, an older artifact without class names, or names that do not match the outputs: no
    # entry rather than a guess.
    assert "output" not in _export(tmp_path, trained, evaluation)
    with open(examples.path("statistics.json"), "w") as f:
        json.dump({"source": "folder:/data/pets", "num_classes": 3}, f)
    assert "output" not in _export(tmp_path, trained, evaluation, examples)
    with open(examples.path("statistics.json"), "w") as f:
        json.dump({"class_names": ["cat", "dog"]}, f)
    assert "output" not in _export(tmp_path, trained, evaluation, examples)


def test_a_model_trained_in_mixed_precision_is_exported_computing_in_float32(tmp_path):
    """A mixed policy saved with the layers would make every user's copy compute in bfloat16,
    which TensorFlow Lite cannot convert (the packed bfloat16 kernels use bit operations it lacks)."""
    import keras
    import numpy as np
    import tensorflow as tf

    import activations
    from trainer.precision import precision_scope

    with precision_scope("mixed_bfloat16"):
        inputs = keras.Input((8, 8, 1))
        x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
        x = activations.get("swish", sharing="channel", initial={"beta": 1.5})(x)
        mixed = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(x)))
    assert mixed.layers[2].dtype_policy.name == "mixed_bfloat16"
    trained, evaluation = _trained_models_with_a_model(tmp_path, "folder:/data/pets", 3, model=mixed)
    record = _export(tmp_path, trained, evaluation)
    assert record["precision"]["model"] == "float32" and "TensorFlow Lite" in record["precision"]["note"]

    exported = keras.saving.load_model(tmp_path / "exported" / "model.keras", safe_mode=True)
    layers = list(exported._flatten_layers())
    assert {layer.dtype_policy.name for layer in layers} == {"float32"}
    (swish,) = [layer for layer in layers if isinstance(layer, activations.ParametricActivation)]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(swish.weights[0]), 1.5)  # the trained weights
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1)).astype("float32")
    # The same function as the mixed model (the raw-image model scales by 1/255 first), to bfloat16's precision.
    np.testing.assert_allclose(exported(images), mixed(images / 255.0).numpy().astype("float32"), atol=0.05)
    assert tf.lite.TFLiteConverter.from_keras_model(exported).convert()


def test_the_exported_input_entry_says_how_to_scale_the_sources_own_digits(tmp_path):
    import numpy as np
    from sklearn.datasets import load_digits

    from trainer.sources import load_dataset

    trained, evaluation = _trained_models_with_a_model(tmp_path, "embedded:digits", 10)
    entry = _export(tmp_path, trained, evaluation)["input"]
    assert entry["source"] == "embedded:digits" and entry["source_pixels"]["source_range"] == [0, 16]
    assert "255/16" in entry["note"] and "0..16" in entry["note"]
    # Scaling scikit-learn's images as the entry says gives exactly the pixels trained on.
    scaled = np.round(load_digits().images * entry["source_pixels"]["scale"]).astype(np.uint8)[..., None]
    data = load_dataset("embedded:digits")
    held = np.concatenate([data.arrays(split)[0] for split in ("train", "validation", "test")])
    assert sorted(map(bytes, scaled)) == sorted(map(bytes, held))


def test_the_reporter_says_what_the_terminal_said_and_keeps_one_copy_of_each_plot(tmp_path):
    """The top_k shortfall the Trainer printed, the exported model's seed, activation.json's
    note on what its statistics cover, and the function plots in report_figures/ only."""
    import json
    import os

    from components.base import Artifact
    from components.reporter import ReporterExecutor

    trained, evaluation = _trained_models_with_a_model(tmp_path, "embedded:digits", 10)
    record = _export(tmp_path, trained, evaluation)
    assert record["model_seed"] == 0 and "import activations" in record["model_loading"]
    with open(trained.path("runs.jsonl")) as f:  # as the Trainer writes them: every run has a directory
        runs = [json.loads(line) for line in f]
    with open(trained.path("runs.jsonl"), "w") as f:
        f.writelines(json.dumps(dict(run, run_dir=run["run_dir"] or f"runs/{run['function']}-{run['seed']}")) + "\n"
                     for run in runs)
    assert "learned_parameters_note" not in record  # elu(x) learns nothing: no statistics to explain
    note = shortfall_note(functions_to_train(["relu"], [{"expression": "elu(x)"}], 3, []), 3, for_report=True)
    trained.properties["shortfall_note"] = note
    report, logs = Artifact("Report", str(tmp_path / "report")), Artifact("TensorBoardLogs", str(tmp_path / "tb"))
    os.makedirs(report.uri)
    os.makedirs(logs.uri)
    inputs = {"evaluation": [evaluation], "trained_models": [trained],
              "exported": [Artifact("ExportedActivation", str(tmp_path / "exported"))]}
    ReporterExecutor().Do(inputs, {"report": [report], "tensorboard": [logs]},
                          {"config": {}, "title": "t", "command": ""})
    md = open(report.path("report.md")).read()
    assert f"Note: {note}" in md.split("## Results")[0]
    assert "export/model.keras is the trained model of its seed 0" in md
    assert sorted(os.listdir(report.uri)) == ["report.html", "report.md", "report_figures"]
    assert {"function_00_0.png", "function_01_0.png"} <= set(os.listdir(report.path("report_figures")))
    assert os.listdir(os.path.join(logs.uri, "functions"))  # TensorBoard got the images before they went


def test_the_exported_statistics_say_what_they_cover(tmp_path):
    import json
    import os

    from components.base import Artifact
    from components.evaluator import EvaluatorExecutor
    from components.exporter import ExporterExecutor
    from components.trainer import LEARNED_STATISTICS_NOTE

    trained = Artifact("TrainedModels", str(tmp_path / "trained"))
    os.makedirs(trained.uri)
    with open(trained.path("runs.jsonl"), "w") as f:
        for name, mean in (("relu", 0.80), ("mul(alpha,x)", 0.90)):
            for seed in range(3):
                learned = {f"act_{i}": {"alpha": {"mean": 1.0 + i / 100, "min": 0.97, "max": 1.03 + seed / 100,
                                                  "size": 64}} for i in range(4)} if name != "relu" else {}
                f.write(json.dumps({"function": name, "seed": seed, "kind": "discovered", "test_accuracy": mean + seed / 1e3,
                                    "val_accuracy": mean, "learned_parameters": learned, "model_path": None}) + "\n")
    evaluation = Artifact("Evaluation", str(tmp_path / "evaluation"))
    os.makedirs(evaluation.uri)
    EvaluatorExecutor().Do({"trained_models": [trained]}, {"evaluation": [evaluation]},
                           {"baseline": "relu", "threshold": 0.0, "alpha": 0.05, "min_seeds": 3})
    exported = Artifact("ExportedActivation", str(tmp_path / "exported"))
    os.makedirs(exported.uri)
    ExporterExecutor().Do({"evaluation": [evaluation], "trained_models": [trained]}, {"exported": [exported]},
                          {"sharing": "channel"})
    record = json.load(open(exported.path("activation.json")))
    assert record["learned_parameters"]["alpha"] == {
        "mean": pytest.approx(1.015), "std_of_layer_means": pytest.approx(0.01118034), "min": 0.97, "max": 1.05,
        "values": 4 * 64 * 3, "layers": 4, "seeds": 3}
    assert record["learned_parameters_note"] == LEARNED_STATISTICS_NOTE


def test_evaluator_and_exporter_artifacts_with_a_blessed_winner(tmp_path):
    import json
    import os

    from components.base import Artifact
    from components.evaluator import EvaluatorExecutor
    from components.exporter import ExporterExecutor

    trained = Artifact("TrainedModels", str(tmp_path / "trained"))
    os.makedirs(trained.uri)
    with open(trained.path("runs.jsonl"), "w") as f:
        for name, mean, kind in (("relu", 0.80, "baseline"), ("elu(x)", 0.90, "discovered")):
            for seed in range(4):
                f.write(json.dumps({"function": name, "seed": seed, "kind": kind, "origin": kind,
                                    "searched_as": "elu(identity(x))" if kind == "discovered" else None,
                                    "test_accuracy": mean + 0.002 * seed, "val_accuracy": mean,
                                    "learned_parameters": {}, "model_path": None}) + "\n")
    evaluation = Artifact("Evaluation", str(tmp_path / "evaluation"))
    os.makedirs(evaluation.uri)
    parameters = {"baseline": "relu", "threshold": 0.0, "alpha": 0.05, "min_seeds": 3}
    EvaluatorExecutor().Do({"trained_models": [trained]}, {"evaluation": [evaluation]}, parameters)
    # Properties must be plain JSON: the runners refuse anything else.
    assert json.loads(json.dumps(evaluation.properties, allow_nan=False)) == {
        "verdict": "BLESSED", "winner": "elu(x)", "gain": evaluation.properties["gain"]}
    assert abs(evaluation.properties["gain"] - 0.10) < 1e-9
    assert os.path.exists(evaluation.path("BLESSED"))

    exported = Artifact("ExportedActivation", str(tmp_path / "exported"))
    os.makedirs(exported.uri)
    ExporterExecutor().Do({"evaluation": [evaluation], "trained_models": [trained]}, {"exported": [exported]},
                          {"sharing": "channel"})
    record = json.load(open(exported.path("activation.json")))
    assert record["expression"] == "elu(x)" and record["evaluation"]["blessed"] is True
    assert record["origin"] == "discovered" and record["sharing"] == "channel"
    assert record["equivalent_to"] == "elu" and record["searched_as"] == "elu(identity(x))"
    json.dumps(exported.properties, allow_nan=False)


def test_the_exported_model_takes_raw_images_and_normalises_them_as_training_did(tmp_path):
    """The user feeds `export/model.keras` images as the data source stores them (0..255): its
    predictions are the trained network's on the training pipeline's normalised images."""
    import json
    import os
    import subprocess
    import sys

    import keras
    import numpy as np

    from components.base import Artifact
    from components.exporter import ExporterExecutor
    from conftest import PROJECT_ROOT
    from trainer.input_pipeline import make_pipeline
    from trainer.sources import load_dataset
    from trainer.train import TrainConfig, train

    data = load_dataset("embedded:digits", max_examples={"train": 200, "validation": 50, "test": 64}, seed=0)
    trained = Artifact("TrainedModels", str(tmp_path / "trained"))
    run_dir = os.path.join("runs", "elu-seed0")
    config = TrainConfig(model="small_cnn", activation="elu(x)", epochs=1, batch_size=32, precision="float32",
                         quiet=True, tensorboard=False, save_model=True, output_dir=trained.path(run_dir))
    result = train(config, data)
    assert result.data["normalization"]["normalize"] == "per_channel"
    evaluation = _evaluate_relu_against_elu(tmp_path, trained, run_dir, elu_mean=0.90)
    exported = Artifact("ExportedActivation", str(tmp_path / "exported"))
    os.makedirs(exported.uri)
    ExporterExecutor().Do({"evaluation": [evaluation], "trained_models": [trained]}, {"exported": [exported]},
                          {"sharing": "channel"})

    record = json.load(open(exported.path("activation.json")))
    mean, std = data.channel_stats()
    assert record["model_seed"] == 0 and record["input"]["normalized_internally"] is True
    assert record["input"]["shape"] == [8, 8, 1] and record["input"]["value_range"] == [0, 255]
    assert record["input"]["normalization"] == {"normalize": "per_channel", "mean": mean.tolist(),
                                                "std": std.tolist()}
    raw, _ = data.arrays("test")  # uint8, as the source stores them
    normalised = np.concatenate([x for x, _ in make_pipeline(data, split="test", batch_size=16).as_numpy_iterator()])
    expected = keras.ops.convert_to_numpy(result.model(normalised, training=False))
    # Raw images are not what the trained network itself takes (the bug this guards against):
    assert np.abs(keras.ops.convert_to_numpy(result.model(raw.astype("float32"), training=False)) - expected).max() > 1e-2

    np.save(tmp_path / "raw.npy", raw)
    code = (
        "import sys, numpy as np, keras, activations\n"
        "model = keras.saving.load_model(sys.argv[1])\n"  # safe mode, the default
        "raw = np.load(sys.argv[2])\n"
        "np.save(sys.argv[3], np.stack([model.predict(raw, verbose=0), model.predict(raw.astype('float32'), verbose=0)]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, exported.path("model.keras"), str(tmp_path / "raw.npy"),
                           str(tmp_path / "predicted.npy")], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES=""))
    assert done.returncode == 0, done.stderr[-3000:]
    from_uint8, from_float = np.load(tmp_path / "predicted.npy")
    np.testing.assert_allclose(from_uint8, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(from_uint8, from_float)


def test_a_search_goes_on_through_any_number_of_diverging_candidates(tmp_path, monkeypatch):
    import json

    calls = []

    def diverges_but_the_last(config, examples_uri, train_examples=None):
        calls.append(config["activation"])
        if len(calls) == 12:
            return {"best_val_accuracy": 0.5}
        return {"diverged": True, "divergence_reason": "non-finite loss", "best_val_accuracy": None}

    out = run_tuner(tmp_path, monkeypatch, diverges_but_the_last)  # 11 failures in a row, beyond KerasTuner's 10
    trials = [json.loads(line) for line in open(out.path("trials.jsonl"))]
    assert len(trials) == 12 and [t["fitness"] for t in trials] == [None] * 11 + [0.5]
    assert all(t["error"] == "diverged: non-finite loss" for t in trials[:11])


def test_the_progress_lines_name_each_trial_by_the_id_the_results_use(tmp_path, monkeypatch):
    import json
    import re

    events = []

    def likes_tanh(config, examples_uri, train_examples=None):
        return {"best_val_accuracy": 0.5 + 0.1 * config["activation"].count("tanh")}

    out = run_tuner(tmp_path, monkeypatch, likes_tanh, max_trials=10, progress=events.append)
    trials = [json.loads(line) for line in open(out.path("trials.jsonl"))]
    lines = [str(event) for event in events if event.total]
    assert lines[1].startswith("[tuner] trial 01 (2 of 10) [seed] tanh(x): val_accuracy 0.6000; best so far 0.6000")
    shown = [re.match(r"\[tuner\] trial (\S+) \((\d+) of 10\) \[[^]]+\] (.+): val_accuracy", line).groups()
             for line in lines]
    # Ids as in trials.jsonl (and the report, `actsearch show`), from 00; the count from 1.
    assert [(trial_id, expression) for trial_id, _, expression in shown] == [
        (t["trial_id"], t["expression"]) for t in trials]
    assert [int(done) for _, done, _ in shown] == list(range(1, 11))
    assert shown[0][0] == "00"


def test_trials_run_side_by_side_are_shown_as_each_ends_not_after_the_batch(tmp_path, monkeypatch):
    import os
    import re

    from components import fanout, tuner

    events = []

    def in_reverse(jobs, work_dir, *, parallelism=1, beam_options=(), progress=None, **_):
        # As parallel workers may: the batch's last trial ends first.
        assert parallelism == 4 and progress is not None
        os.makedirs(work_dir, exist_ok=True)
        for done, job in enumerate(reversed(jobs), 1):
            progress(done, len(jobs), fanout.execute_job(job, work_dir))
        events.append("batch returned")
        return [fanout.load_result(work_dir, job["id"]) for job in jobs]

    monkeypatch.setattr(tuner, "run_jobs", in_reverse)
    run_tuner(tmp_path, monkeypatch, lambda config, examples_uri, train_examples=None: {"best_val_accuracy": 0.5},
               max_trials=8, progress=events.append, parallel_trials=4)
    shown = [str(event) for event in events if event == "batch returned" or event.total]
    first = shown[:shown.index("batch returned")]
    assert [re.match(r"\[tuner\] trial (\S+) \((\d) of 8\)", line).groups() for line in first] == [
        ("3", "1"), ("2", "2"), ("1", "3"), ("0", "4")]


def test_the_tuner_runs_the_rl_controller_and_the_trainer_names_its_proposals(tmp_path, monkeypatch):
    import json

    from components.tuner import read_top

    def likes_tanh(config, examples_uri, train_examples=None):
        return {"best_val_accuracy": 0.5 + 0.1 * config["activation"].count("tanh")}

    out = run_tuner(tmp_path, monkeypatch, likes_tanh, max_trials=10, strategy="rl", space="swish")
    trials = [json.loads(line) for line in open(out.path("trials.jsonl"))]
    assert [t["operator"] for t in trials] == ["seed"] * 2 + ["controller"] * 8
    state = json.load(open(tmp_path / "resume" / "oracle" / "oracle.json"))
    assert state["evolution"]["controller"]["updates"] >= 8  # each controller trial taught it
    top = read_top(out)
    controller_item = next(item for item in top if item["operator"] == "controller")
    (chosen,) = functions_to_train([], [controller_item], 1, [])
    assert chosen["origin"].startswith(f"search RL controller proposal, trial {controller_item['trial_id']}")


def test_reranking_orders_the_shortlist_by_the_mean_over_more_seeds(tmp_path, monkeypatch):
    import json

    from components.tuner import read_top

    calls = []

    def lucky_relu(config, examples_uri, train_examples=None):
        # relu's search trial (seed 0) is lucky; on other seeds tanh is better. Everything else is poor.
        calls.append((config["activation"], config["seed"], config["stop_below"]))
        if config["activation"] == "relu(x)":
            return {"best_val_accuracy": 0.9 if config["seed"] == 0 else 0.3}
        if config["activation"] == "tanh(x)":
            return {"best_val_accuracy": 0.8} if config["seed"] != 2 else {"failed": True, "error": "boom"}
        return {"best_val_accuracy": 0.1}

    events = []
    out = run_tuner(tmp_path, monkeypatch, lucky_relu, max_trials=6, top_k=1, rerank_seeds=2,
                     train_config={"seed": 0}, stop_quantile=0.25, progress=events.append)
    reruns = calls[6:]            # the fan-out tries a job that raised once more
    assert sorted(reruns) == [("relu(x)", 1, None), ("relu(x)", 2, None), ("tanh(x)", 1, None)] + [("tanh(x)", 2, None)] * 2
    top = read_top(out)
    assert [item["expression"] for item in top[:2]] == ["tanh(x)", "relu(x)"]
    assert top[0]["rerun_fitness"] == [0.8, 0.0]            # a failed run counts as 0
    assert top[0]["mean_fitness"] == pytest.approx(1.6 / 3) and top[1]["mean_fitness"] == pytest.approx(1.5 / 3)
    assert top[0]["fitness"] == 0.8 and "mean_fitness" not in top[2]   # the rest keep the search's order
    (chosen,) = functions_to_train([], top, 1, [])
    assert chosen["function"] == "tanh(x)"
    assert chosen["origin"].endswith("re-ranked by mean validation accuracy 0.5333 over 3 runs")
    lines = [str(event) for event in events]
    assert any("re-ranking the best 2 functions: 2 more run(s) each, 4 in all" in line for line in lines)
    assert any(line.startswith("[tuner] re-ranked: tanh(x) 0.5333") for line in lines)

    # Run again (as after a crash before the step finished): nothing is trained twice.
    calls.clear()
    out = run_tuner(tmp_path, monkeypatch, lucky_relu, max_trials=6, top_k=1, rerank_seeds=2,
                     train_config={"seed": 0}, stop_quantile=0.25)
    assert calls == []
    assert read_top(out)[0]["expression"] == "tanh(x)"

    # Stopped in the middle of the re-runs: the finished ones are said to be done, the rest run.
    import glob
    import os

    os.remove(sorted(glob.glob(str(tmp_path / "resume" / "results" / "rerank_*seed2.json")))[0])
    calls.clear()
    events.clear()
    out = run_tuner(tmp_path, monkeypatch, lucky_relu, max_trials=6, top_k=1, rerank_seeds=2,
                     train_config={"seed": 0}, stop_quantile=0.25, progress=events.append)
    assert len(calls) == 1 and read_top(out)[0]["expression"] == "tanh(x)"
    lines = [str(event) for event in events]
    assert "[tuner] resuming the search: 6 of 6 trials already done (6/6)" in lines
    assert "[tuner] 3 of 4 re-runs already done by an earlier attempt (3/4)" in lines


def test_trials_below_most_earlier_ones_stop_early_with_bars_from_the_trials_before(tmp_path, monkeypatch):
    import json

    from activations.stopping import is_below

    bars_seen = []

    def curve_by_tanh(config, examples_uri, train_examples=None):
        # Functions with tanh learn (0.6, 0.7, 0.8 after epochs 1-3); the others start lower.
        bars = config.get("stop_below") or []
        bars_seen.append(bars)
        text = config["activation"]
        start = 0.6 if "tanh" in text else 0.1 + 0.05 * (len(text) % 7)
        curve, stopped_at = [], None
        for epoch in range(3):
            curve.append(start + 0.1 * epoch)
            if epoch < 2 and epoch < len(bars) and is_below(max(curve), bars[epoch]):
                stopped_at = epoch + 1
                break
        return {"best_val_accuracy": max(curve), "history": {"val_accuracy": curve}, "stopped_at": stopped_at}

    events = []
    out = run_tuner(tmp_path, monkeypatch, curve_by_tanh, max_trials=12, progress=events.append,
                     train_config={"epochs": 3}, stop_quantile=0.25)
    trials = [json.loads(line) for line in open(out.path("trials.jsonl"))]
    assert all(not bars for bars in bars_seen[:5])  # no bar before five trials have ended
    assert all(bars for bars in bars_seen[5:])
    stopped = [t for t in trials if t["stopped_at"]]
    assert stopped and all("tanh" not in t["expression"] for t in stopped)
    assert all(t["stopped_at"] is None for t in trials if "tanh" in t["expression"])
    assert all(t["stopped_at"] is None for t in trials[:5])
    counts = json.load(open(out.path("counts.json")))
    assert counts["stopped_early"] == len(stopped)
    lines = [str(event) for event in events if event.total]
    assert sum("(stopped after epoch 1: below most earlier trials)" in line for line in lines) == len(stopped)
    # Without a quantile no trial gets bars.
    bars_seen.clear()
    run_tuner(tmp_path / "off", monkeypatch, curve_by_tanh, max_trials=8, train_config={"epochs": 3})
    assert bars_seen and not any(bars_seen)


def test_trials_that_keep_raising_stop_the_search_with_the_reason(tmp_path, monkeypatch):
    import json

    import pytest

    from components.tuner import MAX_ERRORS_IN_A_ROW, TrialsFailingError

    def raises(config, examples_uri, train_examples=None):
        raise OSError("examples unreadable")

    with pytest.raises(TrialsFailingError, match=f"{MAX_ERRORS_IN_A_ROW} trials in a row .*examples unreadable"):
        run_tuner(tmp_path, monkeypatch, raises)
    # What ran is kept for the next attempt: the oracle saved every reported trial.
    state = json.load(open(tmp_path / "resume" / "oracle" / "oracle.json"))
    assert len(state["evolution"]["ingested"]) == MAX_ERRORS_IN_A_ROW


def test_a_short_search_whose_every_trial_fails_fails_with_the_reason(tmp_path, monkeypatch):
    import json
    import os

    import pytest

    from components.tuner import MAX_ERRORS_IN_A_ROW, TrialsFailingError

    def one_class(config, examples_uri, train_examples=None):
        raise ValueError("the training data has only one class")

    # Fewer trials than the guard against errors in a row: the search still does not "succeed".
    assert 4 < MAX_ERRORS_IN_A_ROW
    with pytest.raises(TrialsFailingError, match="none of the 4 search trials produced a result; all of them "
                                                 "failed with: ValueError: the training data has only one class"):
        run_tuner(tmp_path, monkeypatch, one_class, max_trials=4)
    assert not os.listdir(tmp_path / "search")  # nothing written for the steps downstream

    calls = []

    def mostly_failing(config, examples_uri, train_examples=None):  # the seeds are relu(x) and tanh(x)
        calls.append(config["activation"])
        if config["activation"] == "relu(x)":
            return {"diverged": True, "divergence_reason": "non-finite loss", "best_val_accuracy": None}
        if config["activation"] == "tanh(x)":
            return {"best_val_accuracy": 0.7}
        raise RuntimeError("model cannot be built")

    # Nothing of the failed search is kept (a resumed search would not train its trials again):
    # with the cause fixed, the same step starts over and completes, however many trials fail.
    out = run_tuner(tmp_path, monkeypatch, mostly_failing, max_trials=4)
    assert calls[:2] == ["relu(x)", "tanh(x)"]
    trials = [json.loads(line) for line in open(out.path("trials.jsonl"))]
    assert [t["fitness"] for t in trials] == [None, 0.7, None, None]
    assert out.properties["best_fitness"] == 0.7

    # When the reasons differ the most common is named; diverging counts as no result too.
    def diverges_or_raises(config, examples_uri, train_examples=None):
        if config["activation"] == "relu(x)":
            return {"diverged": True, "divergence_reason": "non-finite loss", "best_val_accuracy": None}
        raise RuntimeError("model cannot be built")

    with pytest.raises(TrialsFailingError, match=r"none of the 4 search trials produced a result; 3 of them "
                                                 r"\(the most common reason\) failed with: RuntimeError: model "
                                                 r"cannot be built"):
        run_tuner(tmp_path / "another", monkeypatch, diverges_or_raises, max_trials=4)


def test_the_code_version_covers_all_the_code_a_step_runs(monkeypatch):
    from components import base
    from components.evaluator import EvaluatorExecutor
    from components.example_gen import ExampleGenExecutor
    from components.tuner import TunerExecutor

    before = {executor: executor.code_version() for executor in (EvaluatorExecutor, ExampleGenExecutor, TunerExecutor)}
    original = base._module_source

    def edited(*names):
        monkeypatch.setattr(base, "_module_source", lambda m: original(m) + ("\n# edited" if m in names else ""))
        return {executor: executor.code_version() != version for executor, version in before.items()}

    # A helper module the evaluator imports inside a function; the trainer code the Tuner runs
    # only by name ("components.training_job:train_job"); the data module ExampleGen uses.
    assert edited("components.statistics") == {EvaluatorExecutor: True, ExampleGenExecutor: False, TunerExecutor: False}
    assert edited("trainer.train") == {EvaluatorExecutor: False, ExampleGenExecutor: False, TunerExecutor: True}
    assert edited("trainer.data")[ExampleGenExecutor] and edited("trainer.data")[TunerExecutor]
    monkeypatch.setattr(base, "_module_source", original)
    assert all(executor.code_version() == version for executor, version in before.items())


def test_how_a_step_runs_is_not_part_of_what_it_computes():
    from components.example_gen import ExampleGen
    from components.trainer import TrainerSpec
    from components.tuner import TunerSpec
    from pipeline.local_runner import compute_cache_key

    def key(**parameters):
        return compute_cache_key(ExampleGen(source="embedded:digits", **parameters), {})

    assert key() == key(beam_options=["--runner=DirectRunner"])  # where it runs: same result
    assert key() != key(seed=1)  # what it computes: another result
    # Final runs do not depend on how many run at once; trials do (a generation at a time).
    assert not TrainerSpec.PARAMETERS["parallelism"].in_cache_key
    assert TunerSpec.PARAMETERS["parallel_trials"].in_cache_key


def test_weak_evaluation_splits_are_named_before_training():
    from components.example_gen import data_warnings

    counts = {"train": {"cat": 38, "dog": 1}, "validation": {"cat": 150, "dog": 0}, "test": {"cat": 4, "dog": 4}}
    notes = data_warnings(counts, [])
    assert notes[0].startswith("the validation split has no images of class(es) ['dog']")
    assert notes[1].startswith("the test split has only 8 images: one image moves its accuracy by 12.5 pp")
    assert len(notes) == 2
    assert data_warnings({"validation": {"a": 60, "b": 60}, "test": {"a": 50, "b": 50}}, []) == []


def test_example_gen_resizes_and_skips_corrupt_images_when_asked(tmp_path):
    import json
    import os

    import numpy as np
    import pytest
    from PIL import Image

    from components.base import Artifact
    from components.example_gen import ExampleGenExecutor, read_examples
    from trainer.data import CorruptImagesError, DataError

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        os.makedirs(tmp_path / "images" / cls)
        for i in range(10):
            size = (12, 12) if i % 2 else (9, 14)  # two sizes: the folder needs image_size
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(tmp_path / "images" / cls / f"{i}.png")
    (tmp_path / "images" / "cat" / "broken.png").write_bytes(b"not a png")
    parameters = {"source": f"folder:{tmp_path / 'images'}", "data_dir": None, "validation_fraction": 0.2,
                  "test_fraction": 0.2, "max_examples": None, "seed": 0, "num_shards": 1, "beam_options": [],
                  "image_size": None, "skip_corrupt": False}

    def run(**overrides):
        examples = Artifact("Examples", str(tmp_path / f"examples{len(os.listdir(tmp_path))}"))
        os.makedirs(examples.uri)
        ExampleGenExecutor().Do({}, {"examples": [examples]}, {**parameters, **overrides})
        return examples

    with pytest.raises(CorruptImagesError, match="broken.png.*--skip_corrupt"):
        run()
    with pytest.raises(DataError, match="differ in size.*--image_size"):
        run(skip_corrupt=True)
    examples = run(image_size=8, skip_corrupt=True)
    stats = json.load(open(examples.path("statistics.json")))
    assert stats["input_shape"] == [8, 8, 3] and sum(stats["num_examples"].values()) == 20
    assert stats["resized_to"] == [8, 8]  # the exported model's "input" entry repeats it
    assert [os.path.basename(path) for path in stats["skipped_files"]] == ["broken.png"]  # the report names it
    assert read_examples(examples).arrays("train")[0].shape[1:] == (8, 8, 3)


def test_candidate_gen_says_why_a_seed_function_the_user_chose_is_left_out(tmp_path):
    import json
    import os

    from components.base import Artifact, ExecutorContext
    from components.candidate_gen import CandidateGenExecutor

    lines = []
    out = Artifact("Candidates", str(tmp_path / "candidates"))
    os.makedirs(out.uri)
    CandidateGenExecutor(ExecutorContext(on_progress=lambda event: lines.append(event.message))).Do(
        {}, {"candidates": [out]}, {"space": "pangaea", "seed_functions": ["relu", "x", "swish", "x*sigmoid(beta*x)"],
                                     "num_sampled": 2, "seed": 0})
    accepted = [json.loads(line)["expression"] for line in open(out.path("candidates.jsonl"))]
    assert accepted[:2] == ["relu(x)", "mul(x,sigmoid(mul(beta,x)))"] and len(accepted) == 4
    assert lines[0] == "4 candidates, 2 rejected"
    assert "seed function 'x' (x) is left out: affine in x" in lines[1]
    assert lines[2] == ("seed function 'x*sigmoid(beta*x)' (mul(x,sigmoid(mul(beta,x)))) is left out: "
                        "duplicate of mul(x,sigmoid(mul(beta,x)))")
    assert len(lines) == 3  # rejected samples are only counted


def test_the_cache_key_of_folder_data_follows_the_files_the_loader_reads(tmp_path):
    """Adding or changing an image changes it; hidden files do not; a broken link or a link
    back up the tree does not break it (the loader reports or skips those)."""
    import os

    from components.example_gen import ExampleGenExecutor

    (tmp_path / "images" / "cat").mkdir(parents=True)
    (tmp_path / "images" / "cat" / "0.png").write_bytes(b"a")

    def key():
        return ExampleGenExecutor.external_fingerprint({"source": f"folder:{tmp_path / 'images'}"})

    first = key()
    assert ExampleGenExecutor.external_fingerprint({"source": "embedded:digits"}) is None
    (tmp_path / "images" / "cat" / ".DS_Store").write_bytes(b"finder state")
    os.symlink(tmp_path / "images" / "cat", tmp_path / "images" / "cat" / "loop")
    assert key() == first
    (tmp_path / "images" / "cat" / "1.png").write_bytes(b"b")
    second = key()
    assert second != first
    os.symlink(tmp_path / "gone.png", tmp_path / "images" / "cat" / "2.png")
    assert key() not in (first, second)


def test_files_the_folder_loader_does_not_read_leave_the_cache_key_alone(tmp_path):
    """notes.txt, Thumbs.db, desktop.ini (or touching one) re-ran hours of search; an image, of
    any extension the loader reads and in any case, still counts."""
    import os

    from components.example_gen import ExampleGenExecutor
    from trainer.files import IMAGE_EXTENSIONS

    root = tmp_path / "images"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "0.png").write_bytes(b"a")

    def key():
        return ExampleGenExecutor.external_fingerprint({"source": f"folder:{root}/"})

    first = key()
    for name in ("notes.txt", "cat/Thumbs.db", "cat/desktop.ini"):
        (root / name).write_text("not an image")
    assert key() == first
    os.utime(root / "notes.txt", ns=(1, 1))  # `touch`
    assert key() == first
    for extension in IMAGE_EXTENSIONS:
        (root / "cat" / f"new{extension.upper()}").write_bytes(b"b")
        changed = key()
        assert changed != first
        first = changed


def test_weak_data_says_first_and_loudest_which_classes_have_no_training_images():
    from components import example_gen
    from components.example_gen import data_warnings

    counts = {"train": {"one": 0, "two": 50, "three": 0}, "validation": {"one": 3, "two": 4, "three": 2},
              "test": {"one": 200, "two": 200, "three": 200}}
    notes = data_warnings(counts, ["one", "three"])  # Dataset.untrained_classes, not counted again
    assert notes[0].startswith("the train split has no images of class(es) ['one', 'three']: the model has an "
                               "output for each that it never trained on")
    assert notes[1].startswith("the validation split has only 9 images")
    assert len(notes) == 2
    assert not hasattr(example_gen, "untrained_classes")  # one rule, the Dataset's


def test_example_gen_statistics_are_the_datasets_metadata_not_counted_again():
    """class_counts and untrained_classes come from Dataset.metadata(), not from counts of its
    own (two rules that could drift); statistics.json keeps its keys."""
    import numpy as np

    from components.example_gen import data_statistics
    from trainer.data import Dataset

    def split(labels):
        return np.zeros((len(labels), 2, 2, 1), np.uint8), np.array(labels, np.int32)

    dataset = Dataset("folder:/x", {"train": split([0, 0, 1]), "validation": split([1]), "test": split([2])},
                      ["a", "b", "c"], source_images=7)
    stats = data_statistics(dataset, 8)
    assert stats["class_counts"]["train"] == {"a": 2, "b": 1, "c": 0} and stats["untrained_classes"] == ["c"]
    assert {"fingerprint", "resized_to", "num_examples", "skipped_files"} <= set(stats)
    assert "source_images" not in stats  # found_images says it, under its own key
    metadata = dataset.metadata()
    dataset.metadata = lambda: {**metadata, "class_counts": "the Dataset's", "untrained_classes": "the Dataset's"}
    stats = data_statistics(dataset, None)
    assert stats["class_counts"] == stats["untrained_classes"] == "the Dataset's"


def test_example_gen_keeps_its_notes_and_the_loaders_warnings_and_says_how_much_it_kept(tmp_path):
    """Printed once on the terminal, they were gone on a cached re-run: statistics.json keeps
    them for the report. The terminal also says how many images the folder holds against how
    many the splits keep (a --max_examples cap was invisible)."""
    import json
    import os

    import numpy as np
    from PIL import Image

    from components.base import Artifact, ExecutorContext
    from components.example_gen import ExampleGenExecutor

    rng = np.random.default_rng(0)
    layout = {"train": {"two": 30, "three": 30}, "test": {"one": 6, "two": 6, "three": 6}}
    for split, classes in layout.items():
        for cls, count in classes.items():
            os.makedirs(tmp_path / "images" / split / cls)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(
                    tmp_path / "images" / split / cls / f"{i}.png")
    (tmp_path / "images" / "train" / "two" / "notes.txt").write_text("not an image")
    parameters = {"source": f"folder:{tmp_path / 'images'}", "data_dir": None, "validation_fraction": 0.2,
                  "test_fraction": 0.2, "max_examples": None, "seed": 0, "num_shards": 1, "beam_options": [],
                  "image_size": None, "skip_corrupt": False}

    def run(**overrides):
        lines = []
        examples = Artifact("Examples", str(tmp_path / f"examples{len(os.listdir(tmp_path))}"))
        os.makedirs(examples.uri)
        context = ExecutorContext(on_progress=lambda event: lines.append(event.message))
        ExampleGenExecutor(context).Do({}, {"examples": [examples]}, {**parameters, **overrides})
        return json.load(open(examples.path("statistics.json"))), lines

    stats, lines = run()
    assert stats["summary"] == "found 78 images in 3 classes; kept 78 (45 train, 15 validation, 18 test; no cap)"
    assert stats["found_images"] == 78 and stats["summary"] in lines
    assert stats["untrained_classes"] == ["one"]
    assert stats["notes"][0].startswith("the train split has no images of class(es) ['one']")
    # The loader's own warning about it is not repeated below ExampleGen's (the report shows both lists).
    assert not any("no train image" in note for note in stats["notes"])
    assert f"WARNING: {stats['notes'][0]}" in lines  # the loader's own warning was on the terminal already
    stats, lines = run(max_examples=20)
    assert stats["summary"] == "found 78 images in 3 classes; kept 20 (12 train, 4 validation, 4 test; max_examples=20)"
    assert stats["max_examples"] == 20 and sum(stats["num_examples"].values()) == 20


def test_example_gen_counts_the_images_the_loader_listed(tmp_path):
    """found_images is the loader's count: a walk by other rules counted an image loose in a split
    folder (ignored by the loader) and a file reached through a link twice ("found 14, kept 19")."""
    import json
    import os

    import numpy as np
    from PIL import Image

    from components.base import Artifact
    from components.example_gen import ExampleGenExecutor, found_images
    from trainer.data import Dataset

    root = tmp_path / "images"
    for cls in ("cat", "dog"):
        os.makedirs(root / "train" / cls)
        for i in range(5):
            Image.fromarray(np.full((4, 4, 3), i * 40, np.uint8)).save(root / "train" / cls / f"{i}.png")
    Image.new("RGB", (4, 4)).save(root / "train" / "loose.png")
    os.symlink(root / "train" / "dog" / "0.png", root / "train" / "cat" / "from_dog.png")
    examples = Artifact("Examples", str(tmp_path / "examples"))
    os.makedirs(examples.uri)
    ExampleGenExecutor().Do({}, {"examples": [examples]}, {
        "source": f"folder:{root}", "data_dir": None, "validation_fraction": 0.2, "test_fraction": 0.2,
        "max_examples": None, "seed": 0, "num_shards": 1, "beam_options": [], "image_size": None,
        "skip_corrupt": False})
    stats = json.load(open(examples.path("statistics.json")))
    assert stats["found_images"] == 10 == sum(stats["num_examples"].values())
    assert stats["summary"].startswith("found 10 images in 2 classes; kept 10 ")
    # Sources that do not say: every image read when nothing was capped, else unknown.
    empty = np.zeros((1, 2, 2, 1), np.uint8), np.zeros(1, np.int32)
    unknown = Dataset("tfds:x", dict.fromkeys(("train", "validation", "test"), empty), ["a"], skipped_files=["b"])
    assert found_images(unknown, None) == 4 and found_images(unknown, 3) is None


def test_the_loaders_warnings_are_kept_for_the_report_and_still_printed(monkeypatch, capsys):
    """Kept for statistics.json; the terminal shows them as before (Python's last-resort
    handler, which a handler of ours would otherwise silence), also when the load then fails."""
    import logging

    from components.example_gen import LoaderWarnings

    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in the CLI: nothing configured
    logger = logging.getLogger("trainer.sources")
    with pytest.raises(ValueError), LoaderWarnings() as loader:
        logger.warning("image folder %s: split %r lacks classes %s", "/data", "train", ["one"])
        logger.warning("image folder %s: split %r lacks classes %s", "/data", "train", ["one"])
        logger.info("not a warning")
        raise ValueError("the load fails")
    assert loader.messages == ["image folder /data: split 'train' lacks classes ['one']"]
    assert capsys.readouterr().err.count("split 'train' lacks classes ['one']") == 2
    logger.warning("after the load")
    assert len(loader.messages) == 1 and loader not in logging.getLogger("trainer").handlers


def test_the_oracles_warnings_reach_the_terminal_as_the_tuners_note_lines(tmp_path, monkeypatch, recwarn):
    """Not as a raw Python warning with a source line, and under every runner (compiled ones too)."""
    from conftest import run_tuner

    events = []
    run_tuner(tmp_path, monkeypatch, lambda config, examples_uri, train_examples=None: {"best_val_accuracy": 0.5},
              max_trials=3, progress=events.append, strategy="exhaustive", space="swish",
              unary_forms=["x", "tanh(x)"], binary_forms=["x1+x2", "x1*x2"])
    notes = [event.message for event in events if event.message.startswith("note: ")]
    assert len(notes) == 1 and "holds 8 functions" in notes[0] and "max_trials=3 trains at most 3" in notes[0]
    assert not [w for w in recwarn if "exhaustive space" in str(w.message)]


def test_trial_records_follow_the_ids_as_numbers_across_a_budget_that_grew(tmp_path):
    """A search resumed under a larger max_trials gets ids of another width ("7", then "08")."""
    import types

    from components.tuner import _trial_records

    ids = ["0", "1", "7", "08", "09", "10", "2"]
    oracle = types.SimpleNamespace(
        trials={tid: types.SimpleNamespace(message=None) for tid in ids},
        lineage=lambda tid: {"expression": "relu(x)", "fingerprint": f"fp{tid}", "fitness": 0.5, "status": "completed"})
    records = _trial_records(oracle, str(tmp_path))
    assert [r["trial_id"] for r in records] == ["0", "1", "2", "7", "08", "09", "10"]
