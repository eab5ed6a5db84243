"""Keras callbacks of a training run: divergence, timing, progress lines and activation summaries.

The learned activation functions are what the search is about, so a run records them: every
weight of every parametric activation layer as a TensorBoard histogram each epoch, and at the end
of training a picture of each layer's learned function (and its derivative) as a PNG file and a
TensorBoard image.

Callback order matters where one callback adds values to the epoch logs for the next ones:
:class:`EpochStats` must come before ``CSVLogger`` / :class:`EpochTensorBoard` /
:class:`EpochLogger` so that they record its timing and learning-rate values.

Every per-epoch summary is at step = epoch (from 0), the unit of Keras' ``epoch_*`` scalars:
the histograms after each epoch, and the images of the learned functions at the last epoch.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import activations
from activations.stopping import best_so_far, is_below
from trainer.models import activation_layers

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Activation layers and their parameters


def parametric_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Activation layers of ``model`` that hold learnable parameters, in network order."""
    return [layer for layer in activation_layers(model) if layer.weights]


def _parameter_name(layer: keras.layers.Layer, variable) -> str:
    name = getattr(variable, "name", "") or ""
    return name.rsplit("/", 1)[-1] or "weight"


def activation_parameters(model: keras.Model) -> dict[str, dict[str, np.ndarray]]:
    """``{layer name: {parameter name: values}}`` for every parametric activation layer."""
    found: dict[str, dict[str, np.ndarray]] = {}
    for layer in parametric_layers(model):
        found[layer.name] = {
            _parameter_name(layer, v): np.asarray(keras.ops.convert_to_numpy(v.value), np.float64).reshape(-1)
            for v in layer.weights
        }
    return found


def activation_parameter_stats(model: keras.Model) -> dict[str, dict[str, dict[str, float]]]:
    """Mean, standard deviation, minimum and maximum of each activation parameter, per layer.

    A layer-shared parameter is one scalar (std 0); a per-channel one has one value per channel.
    """
    stats: dict[str, dict[str, dict[str, float]]] = {}
    for layer, params in activation_parameters(model).items():
        stats[layer] = {
            name: {
                "mean": float(np.mean(values)),
                "std": float(np.std(values)),
                "min": float(np.min(values)),
                "max": float(np.max(values)),
                "size": int(values.size),
            }
            for name, values in params.items()
        }
    return stats


# --------------------------------------------------------------------------------------------
# Training control


class DivergenceMonitor(keras.callbacks.Callback):
    """Stops training at the first non-finite loss and remembers why.

    Checks the training loss after every batch (Keras stops within the epoch) and the validation
    loss after every epoch: a network whose validation loss is NaN or infinite has diverged too,
    even if the running training mean still looks finite.
    """

    def __init__(self):
        super().__init__()
        self.diverged = False
        self.reason: str | None = None
        self._epoch = 0

    def _stop(self, reason: str) -> None:
        if not self.diverged:
            self.diverged = True
            self.reason = reason
            logger.info("training stopped: %s", reason)
        self.model.stop_training = True

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._stop(f"non-finite training loss ({float(loss)}) at epoch {self._epoch + 1}, batch {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        for key in ("loss", "val_loss"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(float(value)):
                self._stop(f"non-finite {key} ({float(value)}) at the end of epoch {epoch + 1}")
                return


class StepLimit(keras.callbacks.Callback):
    """Stops training once the optimizer has taken ``steps`` steps (resumed runs included)."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = int(steps)

    def _iterations(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations.value))

    def on_train_batch_end(self, batch, logs=None):
        if self._iterations() >= self.steps:
            self.model.stop_training = True


class StopBelow(keras.callbacks.Callback):
    """Stops a run whose best validation accuracy so far misses the bar of its epoch.

    ``bars[i]`` applies after epoch i + 1 (None: no bar). The last epoch never stops (the run
    ends anyway), so ``stopped_at`` (the epoch, from 1, after which the run stopped) marks runs
    that were really cut short. A resumed run first hands the epochs it already ran to `seen`.
    """

    def __init__(self, bars, epochs: int):
        super().__init__()
        self.bars = list(bars)
        self.epochs = int(epochs)
        self.curve: list[float | None] = []  # val_accuracy after each epoch
        self.stopped_at: int | None = None

    @property
    def best(self) -> float | None:
        return best_so_far(self.curve)

    def seen(self, values) -> None:
        self.curve.extend(values)

    def on_epoch_end(self, epoch, logs=None):
        self.curve.append((logs or {}).get("val_accuracy"))
        bar = self.bars[epoch] if epoch < len(self.bars) else None
        if epoch + 1 < self.epochs and is_below(self.best, bar):
            self.model.stop_training = True
            self.stopped_at = epoch + 1
            logger.info("stopped after epoch %d: best val_accuracy %s is below %.4f", epoch + 1, self.best, bar)


def seed_generators(model: keras.Model) -> list[keras.random.SeedGenerator]:
    """The random-number generators of ``model``'s layers (one per Dropout layer), in network order."""
    found: list[keras.random.SeedGenerator] = []
    seen: set[int] = set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for generator in getattr(layer, "_seed_generators", ()):
            if id(generator) not in seen:
                seen.add(id(generator))
                found.append(generator)
    return found


def epoch_seed(seed: int, index: int, epoch: int) -> int:
    """The seed of generator ``index`` during ``epoch`` of a run seeded ``seed``.

    Mixed by NumPy's SeedSequence, so neighbouring runs, layers and epochs get unrelated masks;
    31 bits because TensorFlow's stateless random ops take int32 seeds (Keras folds larger ones).
    """
    return int(np.random.SeedSequence([seed, index, epoch]).generate_state(1)[0] >> 1)


class EpochSeeds(keras.callbacks.Callback):
    """Re-seeds every random layer (Dropout) at the start of each epoch from (run seed, layer, epoch).

    Why: a layer's SeedGenerator state advances with every draw, and the backup does not hold it
    (``save_weights`` stores weights and optimizer variables only), so a resumed run restarted
    dropout from the initial state and drew other masks than the uninterrupted run. Deriving
    each epoch's state from numbers a resumed run knows makes both draw the same masks with
    nothing saved: the backup format is unchanged (older backups load as before), and whichever
    of the two backup copies is restored, its epoch number brings the matching seeds.
    """

    def __init__(self, seed: int):
        super().__init__()
        self.seed = int(seed)

    def on_epoch_begin(self, epoch, logs=None):
        for index, generator in enumerate(seed_generators(self.model)):
            state = np.array([epoch_seed(self.seed, index, epoch), 0], dtype=generator.state.dtype)
            generator.state.assign(state)


RATE_SAMPLES = 16
"""Steps of an epoch at which :class:`EpochStats` evaluates the learning-rate schedule (all of
them in shorter epochs). Each evaluation is an eager call of about 1.4 ms here, so 16 cost about
20 ms an epoch (64 cost 90-160 ms, as much as a whole epoch of the demo); the schedules are
smooth: 16 samples give the mean of a 390-step epoch of a 30-epoch warm-up + cosine run within
0.01% (3% of the nearly zero rate of its last epoch)."""


def _rate_schedule(optimizer) -> Callable[[int], Any] | None:
    """The optimizer's learning-rate schedule, or None for a fixed rate. Keras keeps it in the
    private ``_learning_rate`` (``learning_rate`` gives only the current value); a loss-scale
    optimizer holds it in its inner optimizer."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    rate = getattr(inner, "_learning_rate", None)
    return rate if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule) else None


def _iterations(optimizer) -> int:
    """Steps the optimizer has taken (a resumed run's included): the schedule's step."""
    return int(keras.ops.convert_to_numpy(optimizer.iterations.value))


def mean_learning_rate(optimizer, first: int, end: int) -> float:
    """The mean learning rate of the optimizer steps ``first`` .. ``end - 1``: the rate an epoch
    trained with. Evaluated at up to :data:`RATE_SAMPLES` evenly spaced steps; a fixed rate, or
    an epoch that took no step, gives the current rate."""
    schedule = _rate_schedule(optimizer)
    if schedule is None or end <= first:
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    steps = np.unique(np.linspace(first, end - 1, num=min(RATE_SAMPLES, end - first)).round().astype(int))
    return float(np.mean([keras.ops.convert_to_numpy(schedule(int(step))) for step in steps]))


class EpochStats(keras.callbacks.Callback):
    """Adds ``epoch_time``, ``images_per_sec``, ``steps`` and ``learning_rate`` to the epoch logs.

    Throughput counts training batches only (no validation) and leaves out the first batch of a
    ``fit`` call, which includes tracing and compilation. ``learning_rate`` is the mean rate of
    the epoch's steps (:func:`mean_learning_rate`), not the optimizer's rate after them: that
    is already the next epoch's, so a warm-up would never show and the last epoch would read 0.
    """

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = int(batch_size)
        self._first_call_batch = True

    def on_train_begin(self, logs=None):
        self._first_call_batch = True

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        optimizer = getattr(self.model, "optimizer", None)
        self._first_iteration = _iterations(optimizer) if optimizer is not None else 0
        self._batch_start = None
        self._timed_batches = 0
        self._timed_seconds = 0.0
        self._untimed_batches = 0
        self._untimed_seconds = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self._batch_start is None:
            return
        elapsed = time.perf_counter() - self._batch_start
        if self._first_call_batch:
            self._first_call_batch = False
            self._untimed_batches += 1
            self._untimed_seconds += elapsed
        else:
            self._timed_batches += 1
            self._timed_seconds += elapsed

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["epoch_time"] = time.perf_counter() - self._epoch_start
        batches = self._timed_batches or self._untimed_batches
        seconds = self._timed_seconds if self._timed_batches else self._untimed_seconds
        logs["images_per_sec"] = batches * self.batch_size / seconds if seconds > 0 else 0.0
        logs["steps"] = float(self._timed_batches + self._untimed_batches)
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            logs["learning_rate"] = mean_learning_rate(optimizer, self._first_iteration, _iterations(optimizer))


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback with every per-epoch value at step = epoch, as it was trained.

    Keras overwrites the logs' ``learning_rate`` with the optimizer's current rate, the rate
    after the epoch's last step (0 after the last epoch of a cosine decay); :class:`EpochStats`
    put the rate the epoch trained with in the logs, which the CSV history and progress lines
    show too. Keras also writes each epoch's validation metrics a second time at step =
    iteration (``evaluation_*_vs_iterations``): the same values as ``epoch_*`` in another unit.
    """

    def _collect_learning_rate(self, logs):
        if "learning_rate" in logs:
            return logs
        return super()._collect_learning_rate(logs)

    def on_test_end(self, logs=None):
        self._pop_writer()  # what Keras does here, without the `_vs_iterations` copies


class EpochLogger(keras.callbacks.Callback):
    """One progress line per epoch: losses, accuracies, learning rate, time and throughput."""

    _ORDER = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")

    def __init__(self, epochs: int, print_fn: Callable[[str], Any] | None = None):
        super().__init__()
        self.epochs = int(epochs)
        self.print_fn = print_fn or (lambda line: print(line, flush=True))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        parts = [f"epoch {epoch + 1}/{self.epochs}"]
        for key in self._ORDER:
            if key in logs:
                parts.append(f"{key} {float(logs[key]):.4g}")
        if "epoch_time" in logs:
            parts.append(f"{float(logs['epoch_time']):.1f}s")
        if "images_per_sec" in logs:
            parts.append(f"{float(logs['images_per_sec']):.0f} img/s")
        self.print_fn(" - ".join(parts))


# --------------------------------------------------------------------------------------------
# TensorBoard summaries of the activation functions


def _summary_name(layer_name: str, param: str | None = None) -> str:
    name = layer_name if param is None else f"{layer_name}/{param}"
    return re.sub(r"[^A-Za-z0-9_./-]", "_", name)


class ActivationHistograms(keras.callbacks.Callback):
    """Writes a histogram of every weight of every parametric activation layer each epoch."""

    def __init__(self, log_dir: str):
        super().__init__()
        self.log_dir = os.fspath(log_dir)
        self._writer = None

    def _file_writer(self):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        return self._writer

    def on_epoch_end(self, epoch, logs=None):
        params = activation_parameters(self.model)
        if not params:
            return
        with self._file_writer().as_default():
            for layer, values in params.items():
                for name, array in values.items():
                    tf.summary.histogram(_summary_name(layer, name), array, step=epoch)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class ActivationImages(keras.callbacks.Callback):
    """At the end of training, draws each learned activation function and logs it as an image.

    Draws every parametric activation layer (or, when no layer has parameters, the first
    activation layer, so the run still shows its function) with ``activations.plot`` (function
    and derivative; per-channel parameters as a median curve with a percentile band) into
    ``image_dir/<layer>.png`` and writes the PNGs as TensorBoard images under ``log_dir``, at
    the step of the last epoch (from 0): the unit of the parameter histograms and the epoch
    scalars, so the image lines up with the histogram of the values it draws.
    """

    def __init__(self, log_dir: str | None, image_dir: str, max_layers: int = 64):
        super().__init__()
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.image_dir = os.fspath(image_dir)
        self.max_layers = int(max_layers)
        self.paths: list[str] = []
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _layers(self) -> list[keras.layers.Layer]:
        layers = parametric_layers(self.model)
        if not layers:
            layers = activation_layers(self.model)[:1]
        return layers[: self.max_layers]

    def on_train_end(self, logs=None):
        os.makedirs(self.image_dir, exist_ok=True)
        self.paths = []
        for layer in self._layers():
            path = os.path.join(self.image_dir, f"{_summary_name(layer.name).replace('/', '_')}.png")
            try:
                activations.plot(layer, path)
            except Exception as error:  # a drawing failure must not fail the training run
                logger.warning("could not draw activation layer %s: %s", layer.name, error)
                continue
            self.paths.append(path)
        if self.log_dir is None or not self.paths:
            return
        writer = tf.summary.create_file_writer(self.log_dir)
        with writer.as_default():
            for path in self.paths:
                image = tf.image.decode_png(tf.io.read_file(path), channels=4)
                name = os.path.splitext(os.path.basename(path))[0]
                tf.summary.image(f"activation/{name}", image[None], step=self._epoch)
        writer.close()
