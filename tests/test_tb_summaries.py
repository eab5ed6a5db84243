"""TensorBoard summaries of a search, read back from the event files as TensorBoard reads them:
trial curves and learned parameters, one HParams value per function, evolution counts."""

import json
import os

import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from components import tb_summaries as tbs
from conftest import run_tuner


def _accumulator(path) -> EventAccumulator:
    events = EventAccumulator(str(path), size_guidance={"tensors": 0, "images": 0, "histograms": 0})
    events.Reload()
    return events


def _scalars(path) -> dict[str, list[tuple[int, float]]]:
    """`{tag: [(step, value), ...]}` of the scalar summaries of one run directory."""
    events = _accumulator(path)
    return {tag: [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
            for tag in events.Tags()["tensors"]
            if events.SummaryMetadata(tag).plugin_data.plugin_name == "scalars"}


def _hparams_data(path) -> list[plugin_data_pb2.HParamsPluginData]:
    events = _accumulator(path)
    return [plugin_data_pb2.HParamsPluginData.FromString(events.SummaryMetadata(tag).plugin_data.content)
            for tag in events.Tags()["tensors"] if events.SummaryMetadata(tag).plugin_data.plugin_name == "hparams"]


def _activation_domain(logdir) -> set[str]:
    (experiment,) = [d.experiment for d in _hparams_data(logdir) if d.HasField("experiment")]
    (info,) = [h for h in experiment.hparam_infos if h.name == "activation"]
    return {value.string_value for value in info.domain_discrete.values}


def _session_activation(run_dir) -> str:
    (start,) = [d.session_start_info for d in _hparams_data(run_dir) if d.HasField("session_start_info")]
    return start.hparams["activation"].string_value


TRIAL = {"trial_id": "03", "expression": "tanh(mul(beta,x))", "fitness": 0.8, "generation": 1,
         "history": {"loss": [1.5, 0.9, 0.6], "accuracy": [0.4, 0.7, 0.8], "val_loss": [1.2, None, 0.7],
                     "val_accuracy": [0.5, 0.75, 0.8], "learning_rate": [0.001, 0.0015, 0.0005]},
         "activation_stats": {"act_01": {"beta": {"mean": 1.2, "std": 0.1, "min": 1.0, "max": 1.4, "size": 32}},
                              "act_02": {"beta": {"mean": 0.9, "std": 0.0, "min": 0.9, "max": 0.9, "size": 1}}}}


# --------------------------------------------------------------------------------------------
# Search trials


def test_a_trial_run_holds_its_epoch_curves_and_learned_parameters(tmp_path):
    (name,) = tbs.write_hparams(tmp_path, [], [TRIAL])
    scalars = _scalars(tmp_path / name)

    assert scalars["epoch_loss"] == [(0, 1.5), (1, pytest.approx(0.9)), (2, pytest.approx(0.6))]
    assert [step for step, _ in scalars["epoch_val_accuracy"]] == [0, 1, 2]
    assert [step for step, _ in scalars["epoch_val_loss"]] == [0, 2]  # None (NaN in JSON) is no point
    assert [value for _, value in scalars["epoch_learning_rate"]] == pytest.approx([0.001, 0.0015, 0.0005])
    # Learned parameters at the trial's last epoch; min and max only for per-channel values.
    assert scalars["learned/act_01/beta/mean"] == [(2, pytest.approx(1.2))]
    assert scalars["learned/act_01/beta/max"] == [(2, pytest.approx(1.4))]
    assert scalars["learned/act_02/beta/mean"] == [(2, pytest.approx(0.9))]
    assert "learned/act_02/beta/min" not in scalars
    assert scalars["fitness"] == [(0, pytest.approx(0.8))]


def test_trial_records_of_older_searches_without_curves_still_load(tmp_path):
    old = {k: v for k, v in TRIAL.items() if k not in ("history", "activation_stats")}
    (name,) = tbs.write_hparams(tmp_path, [], [old])
    assert set(_scalars(tmp_path / name)) == {"fitness"}


def _fake_train_job(config, examples_uri, train_examples=None):
    epochs = 3
    return {"best_val_accuracy": 0.5 + 0.1 * config["activation"].count("tanh"),
            "history": {"epoch": [0.0, 1.0, 2.0], "loss": [1.0, 0.8, 0.6], "accuracy": [0.3, 0.4, 0.5],
                        "val_loss": [1.1, 0.9, 0.7], "val_accuracy": [0.4, 0.45, 0.5],
                        "learning_rate": [0.001, 0.002, 0.001], "epoch_time": [1.0] * epochs,
                        "images_per_sec": [100.0] * epochs},
            "activation_stats": {"act_01": {"alpha": {"mean": 0.3, "std": 0.0, "min": 0.3, "max": 0.3, "size": 1}}}}


def test_the_tuner_keeps_each_trials_curves_for_its_tensorboard_run(tmp_path, monkeypatch):
    from components.tuner import read_trials

    out = run_tuner(tmp_path, monkeypatch, _fake_train_job, max_trials=3, population_size=2, top_k=1)
    trials = read_trials(out)
    assert len(trials) == 3
    # The training curves, not the timing columns (those stay in the trial's own result).
    assert trials[0]["history"] == {"loss": [1.0, 0.8, 0.6], "accuracy": [0.3, 0.4, 0.5],
                                    "val_loss": [1.1, 0.9, 0.7], "val_accuracy": [0.4, 0.45, 0.5],
                                    "learning_rate": [0.001, 0.002, 0.001]}
    assert trials[0]["activation_stats"]["act_01"]["alpha"]["mean"] == 0.3

    # The search's own TensorBoard, and the report's (written from trials.jsonl), draw them.
    for logdir in (out.path("tensorboard"), tmp_path / "report_logs"):
        if logdir != out.path("tensorboard"):
            tbs.write_hparams(logdir, [], read_trials(out))
        scalars = _scalars(os.path.join(logdir, tbs.trial_run_name(trials[0]["trial_id"])))
        assert scalars["epoch_val_accuracy"] == [(0, pytest.approx(0.4)), (1, pytest.approx(0.45)),
                                                 (2, pytest.approx(0.5))]
        assert {"epoch_loss", "epoch_accuracy", "epoch_val_loss", "epoch_learning_rate",
                "learned/act_01/alpha/mean", "fitness"} <= set(scalars)
        assert "epoch_epoch_time" not in scalars and "epoch_epoch" not in scalars


def test_a_resumed_search_keeps_trial_records_written_before_curves_were_kept(tmp_path, monkeypatch):
    from components.tuner import read_trials

    out = run_tuner(tmp_path, monkeypatch, _fake_train_job, max_trials=3, population_size=2, top_k=1)
    with open(out.path("trials.jsonl")) as f:
        old = [{k: v for k, v in json.loads(line).items() if k not in ("history", "activation_stats")} for line in f]
    with open(out.path("trials.jsonl"), "w") as f:
        f.writelines(json.dumps(record) + "\n" for record in old)
    names = tbs.write_hparams(tmp_path / "logs", [], read_trials(out))
    assert [set(_scalars(tmp_path / "logs" / name)) for name in names] == [{"fitness"}] * 3


# --------------------------------------------------------------------------------------------
# One function, one HParams value


def test_spellings_of_one_function_are_one_activation_value(tmp_path):
    runs = [{"function": "bessel_i1e(mul(alpha,x))", "seed": 0, "test_accuracy": 0.9},
            {"function": "gelu", "seed": 0, "test_accuracy": 0.9}]
    trials = [{"trial_id": "0", "expression": "bessel_i1e(mul(alpha,mul(x,one(x))))", "fitness": 0.8},
              {"trial_id": "1", "expression": "gelu(x)", "fitness": 0.8},
              # Two trials of one function that no final run trained: its simplest form.
              {"trial_id": "2", "expression": "tanh(mul(x,one(x)))", "fitness": 0.7},
              {"trial_id": "3", "expression": "tanh(add(x,zero(x)))", "fitness": 0.7},
              # A function with one spelling keeps it, simplifiable or not.
              {"trial_id": "4", "expression": "sin(mul(x,one(x)))", "fitness": 0.6}]
    tbs.write_hparams(tmp_path, runs, trials)

    assert _activation_domain(tmp_path) == {"bessel_i1e(mul(alpha,x))", "gelu", "tanh(x)", "sin(mul(x,one(x)))"}
    shown = {trial["trial_id"]: _session_activation(tmp_path / tbs.trial_run_name(trial["trial_id"]))
             for trial in trials}
    assert shown == {"0": "bessel_i1e(mul(alpha,x))", "1": "gelu", "2": "tanh(x)", "3": "tanh(x)",
                     "4": "sin(mul(x,one(x)))"}
    assert _session_activation(tmp_path / tbs.final_run_name("bessel_i1e(mul(alpha,x))", 0)) == \
        "bessel_i1e(mul(alpha,x))"


# --------------------------------------------------------------------------------------------
# Evolution


def test_evolution_counts_include_the_trials_stopped_early(tmp_path):
    history = [{"generation": g, "best": 0.5 + 0.1 * g, "median": 0.5, "distinct": 4, "rejected": 0,
                "duplicates": 1, "stopped_early": g} for g in range(3)]
    tags = tbs.write_evolution(tmp_path, history)
    assert "evolution/stopped_early" in tags
    assert _scalars(tmp_path / tbs.EVOLUTION_RUN)["evolution/stopped_early"] == [(0, 0.0), (1, 1.0), (2, 2.0)]


def test_the_rl_controller_gets_its_own_curves_and_every_curve_names_the_strategy(tmp_path):
    history = [{"generation": g, "best": 0.5, "median": 0.4, "controller_baseline": 0.1 * g,
                "controller_certainty": 0.05 * g, "controller_updates": 8 * g} for g in range(3)]
    tags = tbs.write_evolution(tmp_path, history, strategy="rl")
    assert {"controller/baseline", "controller/certainty", "controller/updates", "evolution/best"} <= set(tags)
    scalars = _scalars(tmp_path / tbs.EVOLUTION_RUN)
    assert scalars["controller/updates"] == [(0, 0.0), (1, 8.0), (2, 16.0)]
    events = _accumulator(tmp_path / tbs.EVOLUTION_RUN)
    assert "the rl search, per generation" in events.SummaryMetadata("controller/certainty").summary_description
