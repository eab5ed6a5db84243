"""Pieces of the components that decide what gets trained and exported."""

from components.exporter import choose_function
from components.statistics import evaluate
from components.trainer import functions_to_train, learned_parameter_statistics


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
    # The learnable Swish of trial 01 is the named swish baseline: not trained twice.
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
    assert [c["kind"] for c in chosen] == ["baseline", "baseline", "discovered", "discovered", "given"]


def test_learned_parameter_statistics_ignore_missing_and_non_finite_values():
    runs = [{"learned_parameters": {"a1": {"beta": 1.0}, "a2": {"beta": 3.0, "alpha": None}}},
            {"learned_parameters": {"a1": {"beta": float("nan"), "alpha": 0.5}}}, {}]
    stats = learned_parameter_statistics(runs)
    assert stats["beta"] == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0, "count": 2}
    assert stats["alpha"]["count"] == 1


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


def _run_tuner(tmp_path, monkeypatch, job, max_trials=12, **settings):
    import os

    from components import training_job
    from components.base import Artifact, ExecutorContext
    from components.tuner import TunerExecutor

    monkeypatch.setattr(training_job, "train_job", job)
    candidates = Artifact("Candidates", str(tmp_path / "candidates"))
    os.makedirs(candidates.uri)
    with open(candidates.path("candidates.jsonl"), "w") as f:
        f.write('{"expression": "relu(x)"}\n{"expression": "tanh(x)"}\n')
    out = Artifact("SearchResults", str(tmp_path / "search"))
    os.makedirs(out.uri, exist_ok=True)
    parameters = {"train_config": {}, "space": "pangaea", "strategy": "evolution", "max_trials": max_trials,
                  "population_size": 4, "tournament_size": 2, "train_examples": None, "parallel_trials": 1,
                  "beam_options": [], "top_k": 3, "seed": 0, **settings}
    executor = TunerExecutor(ExecutorContext(component_id="tuner", resume_dir=str(tmp_path / "resume")))
    executor.Do({"examples": [Artifact("Examples", str(tmp_path / "examples"))], "candidates": [candidates]},
                {"search_results": [out]}, parameters)
    return out


def test_a_search_goes_on_through_any_number_of_diverging_candidates(tmp_path, monkeypatch):
    import json

    def diverges(config, examples_uri, train_examples=None):
        return {"diverged": True, "divergence_reason": "non-finite loss", "best_val_accuracy": None}

    out = _run_tuner(tmp_path, monkeypatch, diverges)  # 12 failures, beyond KerasTuner's limit of 10
    trials = [json.loads(line) for line in open(out.path("trials.jsonl"))]
    assert len(trials) == 12 and all(t["fitness"] is None for t in trials)
    assert all(t["error"] == "diverged: non-finite loss" for t in trials)


def test_the_tuner_runs_the_rl_controller_and_the_trainer_names_its_proposals(tmp_path, monkeypatch):
    import json

    from components.tuner import read_top

    def likes_tanh(config, examples_uri, train_examples=None):
        return {"best_val_accuracy": 0.5 + 0.1 * config["activation"].count("tanh")}

    out = _run_tuner(tmp_path, monkeypatch, likes_tanh, max_trials=10, strategy="rl", space="swish")
    trials = [json.loads(line) for line in open(out.path("trials.jsonl"))]
    assert [t["operator"] for t in trials] == ["seed"] * 2 + ["controller"] * 8
    state = json.load(open(tmp_path / "resume" / "oracle" / "oracle.json"))
    assert state["evolution"]["controller"]["updates"] >= 8  # each controller trial taught it
    top = read_top(out)
    controller_item = next(item for item in top if item["operator"] == "controller")
    (chosen,) = functions_to_train([], [controller_item], 1, [])
    assert chosen["origin"].startswith(f"search RL controller proposal, trial {controller_item['trial_id']}")


def test_trials_that_keep_raising_stop_the_search_with_the_reason(tmp_path, monkeypatch):
    import json

    import pytest

    from components.tuner import MAX_ERRORS_IN_A_ROW, TrialsFailingError

    def raises(config, examples_uri, train_examples=None):
        raise OSError("examples unreadable")

    with pytest.raises(TrialsFailingError, match=f"{MAX_ERRORS_IN_A_ROW} trials in a row .*examples unreadable"):
        _run_tuner(tmp_path, monkeypatch, raises)
    # What ran is kept for the next attempt: the oracle saved every reported trial.
    state = json.load(open(tmp_path / "resume" / "oracle" / "oracle.json"))
    assert len(state["evolution"]["ingested"]) == MAX_ERRORS_IN_A_ROW


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
