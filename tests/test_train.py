"""Training runs: metrics, divergence, resume, reproducibility, precision, logs."""

import glob
import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import activations
from trainer import precision as precision_lib
from trainer.callbacks import ActivationHistograms, ActivationImages, activation_parameter_stats, mean_learning_rate
from trainer.models import build_model
from trainer.precision import PrecisionError, precision_scope, resolve_precision
from trainer.sources import load_dataset
from trainer.train import TrainConfig, TrainConfigError, TrainResult, learning_rate_schedule, train

SMALL = {"train": 320, "validation": 100, "test": 100}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("embedded:digits", max_examples=SMALL, seed=0)


def tiny(**changes) -> TrainConfig:
    values = dict(model="mlp", epochs=2, batch_size=32, precision="float32", quiet=True, max_examples=SMALL)
    values.update(changes)
    return TrainConfig(**values)


def _weights_equal(a: keras.Model, b: keras.Model) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


def _event_steps(log_dir: str) -> dict[str, list[tuple[int, float | None]]]:
    """`{tag: [(step, scalar value or None), ...]}` of every summary under `log_dir`."""
    found: dict[str, list[tuple[int, float | None]]] = {}
    for path in glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor) if value.HasField("tensor") else None
                scalar = float(array) if array is not None and array.ndim == 0 and array.dtype.kind == "f" else None
                found.setdefault(value.tag, []).append((event.step, scalar))
    return found


def _event_tags(log_dir: str) -> set[str]:
    tags = set()
    for path in glob.glob(os.path.join(log_dir, "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    return tags


# --------------------------------------------------------------------------------------------
# A normal run


def test_small_cnn_learns_digits_and_reports_everything(digits, tmp_path):
    lines = []
    config = tiny(
        model="small_cnn", activation="x*sigmoid(beta*x)", sharing="channel", epochs=3, quiet=False,
        output_dir=str(tmp_path / "run"), save_model=True,
    )
    result = train(config, digits, print_fn=lines.append)

    assert not result.diverged and result.divergence_reason is None
    assert result.best_val_accuracy > 0.5  # chance is 0.1
    assert result.test_accuracy > 0.5
    assert result.score == result.best_val_accuracy
    assert result.best_val_accuracy == max(result.history["val_accuracy"])
    assert result.final_val_accuracy == result.history["val_accuracy"][-1]
    assert math.isfinite(result.final_loss) and result.final_loss < result.history["loss"][0]
    assert result.epochs_run == 3 and result.initial_epoch == 0
    assert result.steps_run == 3 * (320 // 32)
    assert result.images_per_sec > 0 and result.train_time > 0
    assert result.params["trainable"] > 0 and result.precision == "float32"
    assert len(lines) == 3 and lines[0].startswith("epoch 1/3") and "val_accuracy" in lines[0]

    # Files of the run: config, result, history, TensorBoard scalars, activation image.
    stored = json.loads(open(tmp_path / "run" / "config.json").read())
    assert stored == {**config.to_dict(), "dataset": {"source": digits.source, "fingerprint": digits.fingerprint()}}
    saved = json.loads(open(result.result_path).read())
    assert saved["best_val_accuracy"] == result.best_val_accuracy
    assert TrainResult.from_dict(saved).to_dict() == saved
    # Learned per-channel beta of each of the four activation sites, logged and drawn.
    stats = result.activation_stats
    assert len(stats) == 4 and [s["beta"]["size"] for s in stats.values()] == [32, 32, 64, 64]
    assert any(s["beta"]["std"] > 0 for s in stats.values())  # the channels learned apart
    assert result.params["activation"] == 32 + 32 + 64 + 64
    tags = _event_tags(result.log_dir)
    assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"} <= tags
    for layer in stats:
        assert f"{layer}/beta" in tags and f"activation/{layer}" in tags
    assert len(result.image_paths) == 4 and all(os.path.getsize(p) > 0 for p in result.image_paths)
    assert not os.path.exists(os.path.join(tmp_path, "run", "backup"))  # removed when complete

    # The saved model loads in safe mode and computes what the trained model computes.
    loaded = keras.saving.load_model(result.model_path, safe_mode=True)
    images = digits.arrays("test")[0][:4].astype("float32") / 16.0
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(images)),
        keras.ops.convert_to_numpy(result.model(images, training=False)),
        rtol=1e-4, atol=1e-4,
    )


def test_steps_mode_takes_exactly_the_requested_steps(digits):
    result = train(tiny(steps=13), digits)
    assert result.steps_run == 13
    assert result.epochs_run == 2  # 10 steps per pass, then 3 more


# --------------------------------------------------------------------------------------------
# Divergence


def test_divergence_is_reported_not_raised(digits):
    config = tiny(epochs=3, learning_rate=1e6, warmup_epochs=0, schedule="constant", weight_decay=0.0)
    result = train(config, digits)
    assert result.diverged
    assert "non-finite" in result.divergence_reason
    assert math.isnan(result.score)
    assert result.steps_run < 3 * 10  # stopped early
    assert result.test_accuracy is None
    json.dumps(result.to_dict(), allow_nan=False)  # strict JSON despite NaN losses


def test_an_exploding_activation_diverges(digits):
    # Plain products are unbounded (the library bounds exp, pow, cosh... but not x*x): x^8
    # through two layers overflows float32 at once.
    result = train(tiny(activation="x*x*x*x*x*x*x*x", epochs=2), digits)
    assert result.diverged and "epoch 1, batch 1" in result.divergence_reason
    assert math.isnan(result.score) and result.epochs_run == 1


def test_a_run_below_the_bar_of_an_epoch_stops_early(digits):
    # Bars a search hands its trials: an impossible one after epoch 2 of 4 stops the run there.
    stopped = train(tiny(epochs=4, stop_below=[None, 1.01, None]), digits)
    assert stopped.stopped_at == 2 and stopped.epochs_run == 2 and not stopped.diverged
    assert stopped.best_val_accuracy == max(stopped.history["val_accuracy"])
    full = train(tiny(epochs=4, stop_below=[0.0, 0.0, None, 1.01]), digits)  # bars met; the last epoch never stops
    assert full.stopped_at is None and full.epochs_run == 4
    assert full.history["val_accuracy"][:2] == stopped.history["val_accuracy"]  # same run until the stop


def test_the_bar_compares_the_best_so_far_including_epochs_before_a_resume():
    from trainer.callbacks import StopBelow

    bar = StopBelow([0.5, 0.7, 0.7], epochs=4)
    bar.set_model(keras.Sequential())
    bar.seen([0.8])  # epoch 1, run before the interruption
    bar.on_epoch_end(1, {"val_accuracy": 0.6})
    assert bar.stopped_at is None and bar.best == 0.8
    fresh = StopBelow([0.5, 0.7, 0.7], epochs=4)
    fresh.set_model(keras.Sequential())
    fresh.on_epoch_end(0, {"val_accuracy": 0.55})
    fresh.on_epoch_end(1, {"val_accuracy": math.nan})  # a non-finite value keeps the best so far
    assert fresh.stopped_at == 2 and fresh.model.stop_training


# --------------------------------------------------------------------------------------------
# Resume and reproducibility


class _KillAfterSecondEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("simulated kill")


class _SeenEpochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


@pytest.fixture(scope="module")
def reference_run(digits, tmp_path_factory):
    """An uninterrupted 4-epoch run (with an output dir, like the resumed one)."""
    return train(tiny(epochs=4, augment=True, output_dir=str(tmp_path_factory.mktemp("reference"))), digits)


def test_a_killed_run_resumes_from_its_last_epoch(digits, tmp_path, reference_run):
    config = tiny(epochs=4, augment=True, output_dir=str(tmp_path / "run"))
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(config, digits, callbacks=[_KillAfterSecondEpoch()])
    assert os.path.exists(tmp_path / "run" / "backup" / "training_metadata.json")

    seen = _SeenEpochs()
    resumed = train(config, digits, callbacks=[seen])
    assert seen.epochs == [2, 3]
    assert resumed.initial_epoch == 2 and resumed.epochs_run == 4
    assert resumed.history["epoch"] == [0.0, 1.0, 2.0, 3.0]
    assert resumed.steps_run == reference_run.steps_run
    # Same weights, optimizer state, data order and augmentation as the uninterrupted run.
    assert _weights_equal(resumed.model, reference_run.model)
    assert resumed.history["val_accuracy"] == reference_run.history["val_accuracy"]


def test_a_killed_run_with_dropout_resumes_exactly(digits, tmp_path):
    # all_cnn_c has three Dropout layers: their masks must continue as in the uninterrupted run.
    config = tiny(model="all_cnn_c", epochs=3, batch_size=64, augment=True, tensorboard=False, evaluate_test=False,
                  output_dir=str(tmp_path / "run"))
    reference = train(config.replace(output_dir=str(tmp_path / "reference")), digits)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(config, digits, callbacks=[_KillAfterSecondEpoch()])

    seen = _SeenEpochs()
    resumed = train(config, digits, callbacks=[seen])
    assert seen.epochs == [2] and resumed.initial_epoch == 2
    assert _weights_equal(resumed.model, reference.model)
    assert resumed.history["loss"] == reference.history["loss"]
    assert resumed.history["val_accuracy"] == reference.history["val_accuracy"]


def test_dropout_is_reseeded_per_layer_and_epoch_from_the_run_seed():
    from trainer.callbacks import EpochSeeds, seed_generators

    model = build_model("all_cnn_c", (8, 8, 1), 10, "relu")
    seeds = EpochSeeds(seed=3)
    seeds.set_model(model)

    def states(epoch):
        seeds.on_epoch_begin(epoch)
        return [tuple(keras.ops.convert_to_numpy(g.state.value)) for g in seed_generators(model)]

    first = states(0)
    assert len(first) == 3  # input_dropout, dropout1, dropout2
    assert len(set(first + states(1))) == 6  # a new mask stream for every layer and epoch
    assert states(0) == first  # what a resumed run recomputes


def test_a_backup_written_before_dropout_reseeding_still_resumes(digits, tmp_path, monkeypatch):
    # Such a backup has the same files (nothing was added to it): it loads, and the epochs still
    # to run draw their dropout masks by (seed, layer, epoch) as any run of this version does.
    import trainer.train as train_module

    config = tiny(model="all_cnn_c", epochs=3, batch_size=64, tensorboard=False, evaluate_test=False,
                  output_dir=str(tmp_path / "run"))
    with monkeypatch.context() as patch:
        patch.setattr(train_module, "EpochSeeds", lambda seed: keras.callbacks.Callback())  # the old trainer
        with pytest.raises(RuntimeError, match="simulated kill"):
            train(config, digits, callbacks=[_KillAfterSecondEpoch()])
    resumed = train(config, digits)
    assert resumed.initial_epoch == 2 and resumed.epochs_run == 3 and not resumed.diverged


def test_a_backup_of_another_configuration_is_refused_not_resumed(digits, tmp_path):
    config = tiny(epochs=4, output_dir=str(tmp_path / "run"))
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(config, digits, callbacks=[_KillAfterSecondEpoch()])
    other = tiny(epochs=4, seed=7, learning_rate=0.01, output_dir=str(tmp_path / "run"))
    with pytest.raises(TrainConfigError, match="unfinished run of another configuration \\(differing: learning_rate, seed\\)"):
        train(other, digits)
    other_data = load_dataset("embedded:digits", max_examples=SMALL, seed=1)  # same source, other split
    with pytest.raises(TrainConfigError, match=r"differing: the data \(was 'embedded:digits', now 'embedded:digits'\)"):
        train(config, other_data)
    assert os.path.exists(tmp_path / "run" / "backup" / "training_metadata.json")  # nothing thrown away
    fresh = train(TrainConfig(**{**other.to_dict(), "resume": False}), digits)
    assert fresh.initial_epoch == 0 and fresh.epochs_run == 4


def test_an_unreadable_backup_starts_the_run_afresh(digits, tmp_path, caplog):
    config = tiny(epochs=3, output_dir=str(tmp_path / "run"))
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(config, digits, callbacks=[_KillAfterSecondEpoch()])
    for name in ("latest.weights.h5", "latest.weights.h5.bkp"):  # as if killed while both were written
        path = tmp_path / "run" / "backup" / name
        if path.exists():
            path.write_bytes(path.read_bytes()[:96])
    seen = _SeenEpochs()
    result = train(config, digits, callbacks=[seen])
    assert seen.epochs == [0, 1, 2] and result.epochs_run == 3
    assert "starting afresh" in caplog.text
    assert _csv_epochs(tmp_path / "run" / "history.csv") == [0, 1, 2]  # the dropped run's rows went with it


def test_a_backup_that_opens_but_does_not_load_falls_back_to_the_previous_copy(digits, tmp_path, caplog):
    import h5py

    config = tiny(epochs=4, output_dir=str(tmp_path / "run"))
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(config, digits, callbacks=[_KillAfterSecondEpoch()])
    backup = tmp_path / "run" / "backup"
    assert (backup / "latest.weights.h5.bkp").exists()  # two copies are kept
    with h5py.File(backup / "latest.weights.h5", "w") as f:  # as after a Ctrl-C mid-save: no layers
        f.create_group("vars")
    seen = _SeenEpochs()
    result = train(config, digits, callbacks=[seen])
    assert seen.epochs == [1, 2, 3] and result.epochs_run == 4  # the previous copy holds one epoch
    assert "resuming from the previous one" in caplog.text
    # Epoch 1 ran twice; history.csv keeps one row of it, as a plain CSV reader sees it.
    assert _csv_epochs(tmp_path / "run" / "history.csv") == [0, 1, 2, 3]
    assert result.history["epoch"] == [0.0, 1.0, 2.0, 3.0]


def test_history_csv_ends_where_the_resumed_backup_does(digits, tmp_path):
    """A row written after the backup (a kill between the two) is dropped before the epoch reruns."""
    config = tiny(epochs=3, tensorboard=False, evaluate_test=False, output_dir=str(tmp_path / "run"))
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(config, digits, callbacks=[_KillAfterSecondEpoch()])
    history = tmp_path / "run" / "history.csv"
    lines = history.read_bytes().splitlines(keepends=True)
    assert lines[-1].startswith(b"1,")
    history.write_bytes(b"".join(lines) + b"2," + lines[-1][2:])  # epoch 2 logged, not backed up
    assert _csv_epochs(history) == [0, 1, 2]
    train(config, digits)
    assert _csv_epochs(history) == [0, 1, 2]


def _csv_epochs(path) -> list[int]:
    """The epoch column of a history.csv, read as any CSV reader would."""
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_output_dir_folders_the_trainer_did_not_make_are_never_deleted(digits, tmp_path):
    (tmp_path / "mine" / "logs").mkdir(parents=True)
    (tmp_path / "mine" / "logs" / "notes.txt").write_text("keep me")
    with pytest.raises(TrainConfigError, match="no run of this trainer wrote"):
        train(tiny(epochs=1, output_dir=str(tmp_path / "mine")), digits)
    assert (tmp_path / "mine" / "logs" / "notes.txt").read_text() == "keep me"


def test_a_config_json_of_another_program_is_not_taken_for_the_trainers(digits, tmp_path):
    (tmp_path / "mine" / "logs").mkdir(parents=True)
    (tmp_path / "mine" / "logs" / "notes.txt").write_text("keep me")
    (tmp_path / "mine" / "config.json").write_text('{"my": "settings"}')
    with pytest.raises(TrainConfigError, match="no run of this trainer wrote"):
        train(tiny(epochs=1, output_dir=str(tmp_path / "mine")), digits)
    (tmp_path / "mine" / "logs" / "notes.txt").unlink()
    (tmp_path / "mine" / "logs").rmdir()
    with pytest.raises(TrainConfigError, match="holds a config.json that this trainer did not write"):
        train(tiny(epochs=1, output_dir=str(tmp_path / "mine")), digits)
    assert (tmp_path / "mine" / "config.json").read_text() == '{"my": "settings"}'


@pytest.mark.parametrize("where, message", [("file", "is a file"), ("under", "lies under the file")])
def test_an_output_dir_that_cannot_be_a_directory_is_refused_before_the_data_loads(tmp_path, where, message):
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" if where == "file" else tmp_path / "afile" / "run"
    with pytest.raises(TrainConfigError, match=f"output_dir=.*{message}"):
        train(tiny(epochs=1, data="folder:/nonexistent", output_dir=str(target)))  # the data would fail later


def test_images_per_second_counts_the_images_a_step_really_takes(digits):
    """A batch larger than the training split is the whole split: the rate must not scale with
    the batch size asked for."""
    whole = train(tiny(epochs=3, batch_size=320), digits)
    huge = train(tiny(epochs=3, batch_size=100_000), digits)
    assert 0.33 < huge.images_per_sec / whole.images_per_sec < 3


def test_no_validation_split_is_said_and_the_score_is_nan(digits, caplog):
    data = load_dataset("embedded:digits", max_examples={"train": 200, "validation": 0, "test": 50}, seed=0)
    result = train(tiny(epochs=1), data)
    assert "has no validation split" in caplog.text
    assert result.best_val_accuracy is None and math.isnan(result.score) and not result.diverged


def test_same_seed_same_run_and_other_seed_other_run(digits, reference_run):
    again = train(tiny(epochs=4, augment=True), digits)  # no output dir, no backup to share
    assert _weights_equal(again.model, reference_run.model)
    assert again.history["loss"] == reference_run.history["loss"]
    other = train(tiny(epochs=1, seed=1), digits)
    first_epoch = train(tiny(epochs=1), digits)
    assert not _weights_equal(other.model, first_epoch.model)


# --------------------------------------------------------------------------------------------
# Precision


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_runs_keep_float32_logits_and_restore_the_policy(digits, policy):
    before = keras.mixed_precision.global_policy().name
    result = train(tiny(model="small_cnn", epochs=1, precision=policy), digits)
    assert keras.mixed_precision.global_policy().name == before
    assert result.precision == policy
    assert math.isfinite(result.final_loss) and not result.diverged
    model = result.model
    assert model.get_layer("conv1").compute_dtype == policy.split("_")[1]
    assert model.output.dtype == "float32"
    assert keras.backend.standardize_dtype(model(np.zeros((1, 8, 8, 1), "float32")).dtype) == "float32"
    is_scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert is_scaled == (policy == "mixed_float16")


def test_auto_precision_follows_the_hardware(tmp_path):
    assert resolve_precision("auto", num_gpus=2) == "mixed_float16"
    assert resolve_precision("auto", num_gpus=0, bf16_cpu=True) == "mixed_bfloat16"
    assert resolve_precision("auto", num_gpus=0, bf16_cpu=False) == "float32"
    assert resolve_precision("mixed_float16", num_gpus=0) == "mixed_float16"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu sse avx512f avx512_bf16\n")
    assert precision_lib.cpu_supports_bf16(str(cpuinfo))
    cpuinfo.write_text("processor : 0\nflags : fpu sse avx2\n")
    assert not precision_lib.cpu_flags(str(cpuinfo)) & set(precision_lib.BF16_CPU_FLAGS)
    assert precision_lib.distribution_strategy(num_gpus=0) is tf.distribute.get_strategy()


def test_precision_scope_restores_the_policy_even_on_error():
    before = keras.mixed_precision.global_policy().name
    with pytest.raises(KeyError):
        with precision_scope("mixed_bfloat16") as name:
            assert name == keras.mixed_precision.global_policy().name == "mixed_bfloat16"
            raise KeyError("boom")
    assert keras.mixed_precision.global_policy().name == before
    with pytest.raises(PrecisionError, match="mixed_bfloat16"):
        resolve_precision("bf16")


# --------------------------------------------------------------------------------------------
# Configuration


def test_the_config_json_a_run_writes_reads_back_as_its_config(reference_run):
    """A run's directory describes it completely: config.json (with its "dataset" entry) loads."""
    with open(os.path.join(reference_run.output_dir, "config.json"), encoding="utf-8") as f:
        text = f.read()
    assert "dataset" in json.loads(text)  # the resume check's record of the data stays
    assert TrainConfig.from_json(text) == TrainConfig.from_dict(reference_run.config)
    with pytest.raises(TrainConfigError, match=r"unknown TrainConfig fields \['datasets'\]"):
        TrainConfig.from_dict({"model": "mlp", "datasets": {}})


def test_config_round_trips_and_rejects_bad_values():
    config = tiny(optimizer="adamw", augment="crop_flip", label_smoothing=0.1, output_dir="/tmp/x")
    assert TrainConfig.from_json(config.to_json()) == config
    with pytest.raises(TrainConfigError, match="resnet20"):
        tiny(model="resnet21")
    with pytest.raises(TrainConfigError, match="adamw"):
        tiny(optimizer="rmsprop")
    with pytest.raises(TrainConfigError, match="precision"):
        tiny(precision="half")
    with pytest.raises(TrainConfigError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"model": "mlp", "learning_rates": 0.1})
    for field, value, message in [("warmup_epochs", math.inf, "number >= 0"), ("learning_rate", math.inf, "positive"),
                                  ("seed", -1, r"\[0, 2\*\*32\)"), ("seed", 2**40, r"\[0, 2\*\*32\)"),
                                  ("activation", "x**", "is invalid: not a known name or a valid expression"),
                                  ("resume", "no", "True or False"), ("quiet", "false", "True or False"),
                                  ("output_dir", "", "a directory path"), ("splits", None, "three fractions"),
                                  ("stop_below", 0.5, "a list of numbers"), ("stop_below", [0.5, "x"], "a list of numbers"),
                                  ("stop_below", [math.nan], "a list of numbers"),
                                  ("augment", 1, "allowed are False, True"), ("augment", 0.0, "allowed are False"),
                                  ("skip_corrupt", "yes", "True or False"),
                                  # the data fields, by the data module's own rules (not only in train())
                                  ("splits", [0.5, 0.5, 0.5], "summing to 1"), ("splits", [0.0, 0.5, 0.5], "train > 0"),
                                  ("max_examples", -5, "non-negative integer"),
                                  ("max_examples", {"training": 5}, "unknown splits"),
                                  ("max_examples", {"train": 1.5}, "non-negative integer"),
                                  ("image_size", 0, "positive int or \\(height, width\\)"),
                                  ("image_size", [8], "positive int or \\(height, width\\)")]:
        with pytest.raises(TrainConfigError, match=f"TrainConfig.{field}=.*{message}"):
            tiny(**{field: value})


def test_adamw_without_weight_decay_builds(digits):
    from trainer.train import make_optimizer

    assert isinstance(make_optimizer(tiny(optimizer="adamw", weight_decay=0.0), 0.01), keras.optimizers.AdamW)


def test_a_callers_op_determinism_is_left_as_found(digits):
    from tensorflow.python.framework import config as tf_config

    tf.config.experimental.enable_op_determinism()
    try:
        train(tiny(epochs=1, deterministic=True), digits)
        assert tf_config.is_op_determinism_enabled()
    finally:
        tf_config.disable_op_determinism()


def test_adamw_with_label_smoothing_and_augmentation_trains(digits):
    result = train(
        tiny(model="small_cnn", optimizer="adamw", learning_rate=3e-3, label_smoothing=0.1, augment="flip"),
        digits,
    )
    assert not result.diverged and result.best_val_accuracy > 0.2


# --------------------------------------------------------------------------------------------
# Activation summaries


def _expected_rates(peak: float, warmup: int, total: int, steps_per_epoch: int) -> list[float]:
    """The mean rate of each epoch's steps: linear warm-up from 0, then cosine decay to 0."""
    def rate(step):
        if step < warmup:
            return peak * step / warmup
        return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
    return [float(np.mean([rate(s) for s in range(e * steps_per_epoch, (e + 1) * steps_per_epoch)]))
            for e in range(total // steps_per_epoch)]


def test_the_mean_rate_of_a_long_epoch_is_sampled_closely():
    steps, epochs = 390, 30
    config = TrainConfig(learning_rate=0.002, epochs=epochs)
    optimizer = keras.optimizers.SGD(learning_rate=learning_rate_schedule(config, steps, steps * epochs))
    expected = _expected_rates(0.002, steps, steps * epochs, steps)
    sampled = [mean_learning_rate(optimizer, e * steps, (e + 1) * steps) for e in range(epochs)]
    assert sampled == pytest.approx(expected, rel=1e-3, abs=1e-7)
    assert mean_learning_rate(keras.optimizers.SGD(learning_rate=0.01), 0, 10) == pytest.approx(0.01)  # fixed rate


def test_each_epoch_logs_the_learning_rate_it_trained_with_and_summaries_share_the_epoch_step(digits, tmp_path):
    config = tiny(activation="x*sigmoid(beta*x)", epochs=3, learning_rate=0.002,
                  warmup_epochs=1.0, output_dir=str(tmp_path / "run"))
    result = train(config, digits)

    # 10 steps an epoch, 30 in all, so the warm-up is capped at a fifth: 6 steps.
    expected = _expected_rates(0.002, 6, 30, 10)
    assert result.history["learning_rate"] == pytest.approx(expected, rel=1e-5)
    assert expected[1] > expected[0] > expected[2] > 0  # warm-up, then decay; the last epoch trained too
    steps = _event_steps(result.log_dir)
    assert [step for step, _ in steps["epoch_learning_rate"]] == [0, 1, 2]
    assert [value for _, value in steps["epoch_learning_rate"]] == pytest.approx(expected, rel=1e-5)
    # One step unit for everything per epoch: the epoch, from 0, as Keras' epoch_* scalars.
    layer = next(iter(result.activation_stats))
    assert [step for step, _ in steps[f"{layer}/beta"]] == [0, 1, 2]
    assert [step for step, _ in steps[f"activation/{layer}"]] == [2]
    assert sorted(step for step, _ in steps["epoch_accuracy"]) == [0, 0, 1, 1, 2, 2]  # train/ and validation/
    assert not [tag for tag in steps if tag.endswith("_vs_iterations")]  # validation metrics: once, per epoch


def test_activation_parameters_are_logged_as_histograms_and_images(digits, tmp_path):
    model = build_model("small_cnn", (8, 8, 1), 10, lambda: activations.get("prelu", sharing="channel"))
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images, labels = digits.arrays("train")
    log_dir, image_dir = str(tmp_path / "logs"), str(tmp_path / "images")
    drawn = ActivationImages(log_dir, image_dir)
    model.fit(
        images[:64].astype("float32") / 16.0, labels[:64], epochs=2, batch_size=32, verbose=0,
        callbacks=[ActivationHistograms(log_dir), drawn],
    )
    names = [layer.name for layer in model.layers if isinstance(layer, activations.ParametricActivation)]
    assert len(names) == 4
    tags = _event_tags(log_dir)
    for name in names:
        assert f"{name}/alpha" in tags
        assert f"activation/{name}" in tags
    assert len(drawn.paths) == 4
    steps = _event_steps(log_dir)
    assert [step for step, _ in steps[f"{names[0]}/alpha"]] == [0, 1]
    assert [step for step, _ in steps[f"activation/{names[0]}"]] == [1]  # the last epoch, not iteration 4
    stats = activation_parameter_stats(model)
    assert set(stats) == set(names)
    alpha = stats[names[0]]["alpha"]
    assert alpha["size"] == 32 and alpha["min"] <= alpha["mean"] <= alpha["max"] and alpha["std"] >= 0


# --------------------------------------------------------------------------------------------
# Several devices


_MIRRORED_SCRIPT = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from trainer import train as T
T.distribution_strategy = lambda: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
r = T.train(T.TrainConfig(model="small_cnn", activation="swish", sharing="channel", epochs=1,
            batch_size=32, precision="mixed_bfloat16", quiet=True,
            max_examples={"train": 128, "validation": 64, "test": 64}))
assert type(r.model.distribute_strategy).__name__ == "MirroredStrategy"
assert not r.diverged and r.final_loss is not None and r.test_accuracy is not None
print("OK", r.steps_run)
"""


def test_training_under_mirrored_strategy_on_two_devices():
    # Two logical CPU devices stand in for two GPUs (devices must be set before TF starts).
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "OK 4" in done.stdout
