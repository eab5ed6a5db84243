"""Early stopping of hopeless trials: the quantile rule, and the oracle and tuner that apply it."""

import json
import types

import keras_tuner
import numpy as np
import pytest

from activations.oracle import DEFAULT_SEEDS, EvolutionaryOracle, EvolutionaryTuner
from activations.stopping import QuantileStopping, is_below

ACCURACY = keras_tuner.Objective("val_accuracy", direction="max")


def test_thresholds_are_the_quantile_of_earlier_bests_per_epoch():
    rule = QuantileStopping(quantile=0.25, grace_epochs=1, min_trials=3)
    curves = [[0.5, 0.4, 0.9], [0.2, 0.6, 0.7], [0.3, 0.35], [0.8, 0.9, 0.95]]
    # Bests so far: [0.5, 0.5, 0.9], [0.2, 0.6, 0.7], [0.3, 0.35], [0.8, 0.9, 0.95].
    expected = [np.quantile([0.5, 0.2, 0.3, 0.8], 0.25), np.quantile([0.5, 0.6, 0.35, 0.9], 0.25),
                np.quantile([0.9, 0.7, 0.95], 0.25)]
    assert rule.thresholds(curves) == pytest.approx(expected)


def test_no_threshold_in_the_grace_epochs_or_with_too_few_earlier_trials():
    curves = [[0.1, 0.2, 0.3, 0.4]] * 4 + [[0.1, 0.2]]
    assert QuantileStopping(grace_epochs=2, min_trials=5).thresholds(curves)[:3] == [None, 0.2, None]
    assert QuantileStopping(min_trials=6).thresholds(curves) == [None] * 4
    assert QuantileStopping().thresholds([]) == []


def test_a_stopped_trial_carries_its_best_forward_so_the_bar_does_not_rise():
    rule = QuantileStopping(quantile=0.5, min_trials=3)
    curves = [[0.9, 0.95], [0.8, 0.85], [0.1]]
    assert rule.thresholds(curves)[1] is None  # only two trials reached epoch 2
    assert rule.thresholds(curves, stopped=[False, False, True])[1] == pytest.approx(0.85)


def test_non_finite_points_count_as_the_worst_and_minimising_objectives_work():
    rule = QuantileStopping(quantile=0.5, min_trials=3)
    assert rule.thresholds([[None], [0.5], [0.7]]) == [pytest.approx(0.5)]
    losses = [[1.0], [2.0], [3.0], [4.0]]
    bar = rule.thresholds(losses, direction="min")[0]
    assert bar == pytest.approx(2.5)
    assert rule.should_stop([3.0], [bar], "min") and not rule.should_stop([2.0], [bar], "min")


@pytest.mark.parametrize("direction, sign", [("min", 1.0), ("max", -1.0)])
def test_a_diverged_run_does_not_switch_the_rule_off_in_either_direction(direction, sign):
    # The quantile lands exactly on the 4th value, beside the diverged run's infinity: numpy's
    # interpolation gives NaN there (v + (inf - v) * 0), which used to mean "no bar".
    rule = QuantileStopping(quantile=0.25)
    curves = [[sign * 1.0], [sign * 2.0], [sign * 3.0], [sign * 4.0], [None]]
    assert rule.thresholds(curves, direction) == [pytest.approx(sign * 4.0)]
    assert rule.thresholds([[sign * v] for v in (1.0, 2.0, 3.0, 4.0, 5.0)] + [[None]], direction) \
        == [pytest.approx(sign * 4.75)]


def test_should_stop_compares_the_best_so_far_with_the_bar_of_its_epoch():
    rule = QuantileStopping()
    bars = [None, 0.6, 0.7]
    assert not rule.should_stop([0.1], bars)           # no bar after epoch 1
    assert rule.should_stop([0.1, 0.5], bars)          # best 0.5 < 0.6
    assert not rule.should_stop([0.65, 0.5], bars)     # best so far 0.65 >= 0.6
    assert not rule.should_stop([0.1, 0.5, 0.6, 0.1], bars)  # past the known epochs: no bar
    assert rule.should_stop([None, None], bars)       # nothing finite: worse than any bar
    assert not is_below(0.1, None) and is_below(None, 0.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(quantile=0.0), "quantile must lie in \\(0, 1\\)"),
    (dict(quantile=True), "quantile must lie in"),
    (dict(grace_epochs=0), "grace_epochs must be an integer >= 1"),
    (dict(min_trials=2.5), "min_trials must be an integer >= 1"),
])
def test_bad_rule_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantileStopping(**kwargs)
    with pytest.raises(ValueError, match="direction must be 'max' or 'min'"):
        QuantileStopping().thresholds([[0.1]], direction="up")


def _oracle(**kwargs) -> EvolutionaryOracle:
    settings = dict(objective=ACCURACY, max_trials=20, population_size=6, tournament_size=2, seed=3,
                    idle_sleep=0.0, seed_functions=DEFAULT_SEEDS[:6], stopping=QuantileStopping(min_trials=3))
    settings.update(kwargs)
    oracle = EvolutionaryOracle(**settings)
    oracle.verbose = 0
    return oracle


def _finish_generation(oracle, curves):
    trials = oracle.propose_batch()
    for trial, curve in zip(trials, curves):
        oracle.report(trial.trial_id, value=max(curve), curve=curve)
    return trials


def test_the_oracle_stops_a_hopeless_trial_from_the_curves_of_ended_ones():
    oracle = _oracle()
    assert oracle.stopping_thresholds() == []  # nothing ended yet
    _finish_generation(oracle, [[0.6, 0.8], [0.5, 0.7], [0.7, 0.9], [0.4, 0.6], [0.65, 0.85], [0.55, 0.75]])
    bars = oracle.stopping_thresholds()
    assert bars == pytest.approx([np.quantile([0.6, 0.5, 0.7, 0.4, 0.65, 0.55], 0.25),
                                  np.quantile([0.8, 0.7, 0.9, 0.6, 0.85, 0.75], 0.25)])
    hopeless, promising = oracle.propose_batch(2)
    assert oracle.observe(hopeless.trial_id, 0, 0.1)  # below the bar after epoch 1: stop
    assert not oracle.observe(promising.trial_id, 0, 0.6)
    oracle.report(hopeless.trial_id, value=0.1, curve=[0.1], stopped_at=1)
    oracle.report(promising.trial_id, value=0.9, curve=[0.6, 0.9])
    assert oracle.lineage(hopeless.trial_id)["stopped_at"] == 1
    assert oracle.lineage(promising.trial_id)["stopped_at"] is None
    assert oracle.counts()["stopped_early"] == 1
    assert sum(row["stopped_early"] for row in oracle.history()) == 1
    # The stopped trial's best carries forward into the bar of epoch 2 (it lowers, not raises, it).
    assert oracle.stopping_thresholds()[1] < np.quantile([0.8, 0.7, 0.9, 0.6, 0.85, 0.75, 0.9], 0.25)

    state = json.loads(json.dumps(oracle.get_state()))  # plain JSON, curves included
    again = _oracle()
    again.set_state(state)
    assert again.stopping_thresholds() == oracle.stopping_thresholds()


def test_without_a_rule_nothing_is_stopped_and_bad_settings_are_named():
    oracle = _oracle(stopping=None)
    _finish_generation(oracle, [[0.9]] * 6)
    (trial,) = oracle.propose_batch(1)
    assert oracle.stopping_thresholds() == [] and not oracle.observe(trial.trial_id, 0, 0.0)
    assert _oracle(stopping=0.5).stopping == QuantileStopping(quantile=0.5)
    with pytest.raises(ValueError, match="stopping must be a QuantileStopping, a quantile in \\(0, 1\\) or None"):
        _oracle(stopping="median")
    with pytest.raises(ValueError, match="stopped_at must be an integer >= 1"):
        oracle.report(trial.trial_id, value=0.5, stopped_at=0)


def _tuner_with_two_running_trials(tmp_path):
    """An EvolutionaryTuner whose oracle has bars from one ended generation, the two running
    trials it proposed next (the first to be fed a hopeless epoch), and a stand-in model for each."""
    tuner = EvolutionaryTuner(lambda hp: None, objective=ACCURACY, max_trials=20, population_size=6,
                              tournament_size=2, seed=3, seed_functions=DEFAULT_SEEDS[:6],
                              stopping=QuantileStopping(min_trials=3), directory=str(tmp_path), project_name="p")
    _finish_generation(tuner.oracle, [[0.6, 0.8], [0.5, 0.7], [0.7, 0.9], [0.4, 0.6], [0.65, 0.85], [0.55, 0.75]])
    hopeless, promising = tuner.oracle.propose_batch(2)
    models = {trial.trial_id: types.SimpleNamespace(stop_training=False) for trial in (hopeless, promising)}
    return tuner, hopeless, promising, models


def test_the_tuner_stops_fit_after_an_epoch_below_the_bar(tmp_path):
    tuner, hopeless, promising, models = _tuner_with_two_running_trials(tmp_path)
    oracle = tuner.oracle
    tuner.on_epoch_end(hopeless, models[hopeless.trial_id], 0, logs={"val_accuracy": 0.2, "loss": 2.0})
    tuner.on_epoch_end(promising, models[promising.trial_id], 0, logs={"val_accuracy": 0.62})
    tuner.on_epoch_end(promising, models[promising.trial_id], 1, logs={"loss": 0.3})  # no objective: no decision
    assert models[hopeless.trial_id].stop_training and not models[promising.trial_id].stop_training
    assert oracle.lineage(hopeless.trial_id)["curve"] == [0.2]


class _LoopbackClient:
    """Builds a KerasTuner `OracleClient` whose calls reach the chief's servicer in this process,
    through the same request and response protos as gRPC (no network)."""

    @staticmethod
    def make(chief_oracle):
        from keras_tuner.src import protos
        from keras_tuner.src.distribute.oracle_chief import OracleServicer
        from keras_tuner.src.distribute.oracle_client import OracleClient
        from keras_tuner.src.engine.trial import Trial

        servicer = OracleServicer(chief_oracle)

        class Loopback(OracleClient):
            def __init__(self):  # no channel
                self._oracle, self.multi_worker, self.should_report = chief_oracle, False, True

            def update_trial(self, trial_id, metrics, step=0):
                request = protos.get_service().UpdateTrialRequest(trial_id=trial_id, metrics=metrics, step=step)
                wire = protos.get_service().UpdateTrialResponse.FromString(
                    servicer.UpdateTrial(request, None).SerializeToString())
                return Trial.from_proto(wire.trial)

        return Loopback()


def test_a_distributed_worker_asks_the_chiefs_oracle_whether_to_stop(tmp_path):
    tuner, hopeless, promising, models = _tuner_with_two_running_trials(tmp_path)
    chief = tuner.oracle
    tuner.oracle = _LoopbackClient.make(chief)        # what a worker's tuner holds
    assert getattr(tuner.oracle, "stopping", None) is None     # the client exposes no rule of its own
    tuner.on_epoch_end(hopeless, models[hopeless.trial_id], 0, logs={"val_accuracy": 0.2})
    tuner.on_epoch_end(promising, models[promising.trial_id], 0, logs={"val_accuracy": 0.62})
    assert models[hopeless.trial_id].stop_training and not models[promising.trial_id].stop_training
    # The chief observed the epochs for its rule and recorded no result from them.
    assert chief.lineage(hopeless.trial_id)["stopped_at"] == 1 and chief.lineage(hopeless.trial_id)["curve"] == [0.2]
    assert chief.trials[hopeless.trial_id].status == "RUNNING"
    assert not chief.trials[hopeless.trial_id].metrics.exists("val_accuracy")
    # The trial's end, as KerasTuner reports it, is an ordinary update (no epoch mark).
    chief.update_trial(hopeless.trial_id, {"val_accuracy": 0.2})
    assert chief.trials[hopeless.trial_id].metrics.get_best_value("val_accuracy") == 0.2


@pytest.mark.parametrize("where", ["in process", "distributed"])
def test_a_trials_last_epoch_is_recorded_but_never_stops_it(tmp_path, monkeypatch, where):
    tuner, first, second, models = _tuner_with_two_running_trials(tmp_path)
    chief = tuner.oracle
    if where == "distributed":
        tuner.oracle = _LoopbackClient.make(chief)

    def fit(self, trial, *args, **kwargs):
        """As KerasTuner's trial and Keras' `fit`: the callbacks learn the epochs, then hear of each
        until one stops the run. Without `epochs` from `search`, the hypermodel sets 3."""
        model, epochs = models[trial.trial_id], kwargs.get("epochs", 3)
        for callback in kwargs["callbacks"]:
            callback.set_params({"epochs": epochs, "steps": 1, "verbose": 0})
            callback.on_train_begin()
        for epoch, value in zip(range(epochs), [0.6, 0.61, 0.62]):
            self.on_epoch_end(trial, model, epoch, logs={"val_accuracy": value})
            if model.stop_training:
                break

    monkeypatch.setattr(keras_tuner.Tuner, "run_trial", fit)
    # The bars: about 0.51 after epoch 1, 0.71 after epoch 2; 0.61 misses the second.
    tuner.run_trial(first, epochs=2)  # ...at the last epoch: the trial ran its whole budget
    assert not models[first.trial_id].stop_training
    assert chief.lineage(first.trial_id)["stopped_at"] is None
    assert chief.lineage(first.trial_id)["curve"] == [0.6, 0.61]  # still observed, for the bars
    tuner.run_trial(second)  # ...with an epoch to come (the hypermodel's third): stopped
    assert models[second.trial_id].stop_training and chief.lineage(second.trial_id)["stopped_at"] == 2
