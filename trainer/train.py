"""The one training entry point: a search trial, a final run and a user all call :func:`train`.

    from trainer.train import TrainConfig, train
    result = train(TrainConfig(model="resnet20", data="tfds:cifar10", activation="x*sigmoid(beta*x)",
                               epochs=30, output_dir="runs/swish"))
    print(result.best_val_accuracy, result.diverged)

A run is described completely by a :class:`TrainConfig` (JSON-able, so it travels between
processes) and summarised by a :class:`TrainResult` (JSON-able too). What a run guarantees:

* **Reproducible** - the seed fixes the initial weights, the data split, the data order and
  the augmentation (``keras.utils.set_random_seed`` plus seeded ``tf.data`` pipelines);
  ``deterministic=True`` also asks TensorFlow for deterministic kernels.
* **Resumable** - with an ``output_dir``, the state is backed up after every epoch
  (``keras.callbacks.BackupAndRestore`` in ``<output_dir>/backup``); calling :func:`train`
  again with the same config after a crash continues from the last finished epoch, as the
  uninterrupted run would have (bit for bit on the CPU): the data order is realigned, and
  dropout is re-seeded at each epoch from (seed, layer, epoch) by
  ``trainer.callbacks.EpochSeeds``. (A ``steps`` run whose epochs are shorter than a pass over
  the data resumes with another data order.) The backup is removed when a run completes, so a
  later call starts afresh.
* **Divergence is a result, not an exception** - a NaN or infinite loss stops the run at once
  and the result says ``diverged=True`` with the reason; its :attr:`TrainResult.score` is NaN.
* **Fast** - precision per :mod:`trainer.precision` (``auto`` = mixed bfloat16 on CPUs that
  have it, mixed float16 on GPUs), float32 logits, ``MirroredStrategy`` on several GPUs.
* **Observable** - with an ``output_dir``: TensorBoard scalars, histograms of every activation
  parameter, an image of each learned activation (all at step = epoch, from 0),
  ``history.csv``, ``config.json`` and ``result.json``.

Optimisers: ``sgd`` (momentum, optionally Nesterov), ``adam`` and ``adamw``; the learning rate
rises linearly during a warm-up and then follows a cosine decay (``schedule="cosine"``) or stays
constant (``schedule="constant"``). Weight decay is decoupled (Keras' optimizers apply
``w -= lr * weight_decay * w``) and spares one-dimensional variables: biases, batch-norm scales
and shifts, and the parameters of the activation functions.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from activations.expression import is_finite_number
from activations.named import expression_for
from trainer import data as data_lib
from trainer.callbacks import (
    ActivationHistograms,
    ActivationImages,
    DivergenceMonitor,
    EpochLogger,
    EpochSeeds,
    EpochStats,
    EpochTensorBoard,
    StepLimit,
    StopBelow,
    activation_parameter_stats,
)
from trainer.input_pipeline import input_normalization, make_pipeline
from trainer.models import (
    MODEL_NAMES,
    SHARING_MODES,
    activation_factory,
    build_model,
    count_params,
    portable_model,
)
from trainer.precision import PRECISIONS, distribution_strategy, precision_scope
from trainer.sources import _check_image_size, load_dataset

logger = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "constant")
DEFAULT_LEARNING_RATES = {"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 1e-4, "adam": 0.0, "adamw": 1e-2}
MAX_WARMUP_FRACTION = 0.2


class TrainConfigError(ValueError):
    """A training configuration value is invalid; the message names it and what is allowed."""


_DATA_KEY = "dataset"
"""config.json's entry beside the TrainConfig fields: the source and fingerprint of the data the
run trained on (`train` may get a loaded Dataset whatever `TrainConfig.data` says). The resume
check compares it; :meth:`TrainConfig.from_dict` skips it, so config.json reads back as a config."""


# --------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run. JSON-able via :meth:`to_dict` / :meth:`from_dict`.

    Attributes:
      model: one of :data:`trainer.models.MODEL_NAMES`.
      data: data source string (``embedded:digits``, ``tfds:cifar10``, ``folder:<path>``); ignored
        when :func:`train` receives a loaded ``dataset``.
      activation: activation name or expression text (``"relu"``, ``"x*sigmoid(beta*x)"``).
      sharing: ``"layer"`` or ``"channel"``: how an activation's parameters are shared.
      epochs: passes over the training split (ignored when ``steps`` is set).
      steps: total optimizer steps instead of epochs (the data repeats as needed; validation
        happens after every pass over the training split and at the end).
      batch_size: examples per step.
      optimizer: ``sgd``, ``adam`` or ``adamw``.
      learning_rate: peak learning rate; None: 0.1 for sgd, 1e-3 for adam / adamw.
      momentum, nesterov: SGD momentum.
      schedule: ``cosine`` (decay to 0 after the warm-up) or ``constant``.
      warmup_epochs: linear warm-up from 0 to the peak rate, in epochs (capped at a fifth of
        the run, so short runs still decay).
      weight_decay: decoupled weight decay of kernels; None: 1e-4 (sgd), 0 (adam), 1e-2 (adamw).
      label_smoothing: cross-entropy label smoothing.
      clipnorm: clip each gradient to this norm (None: no clipping).
      seed: seeds the initial weights, the data split and order, dropout and augmentation.
      precision: ``auto``, ``float32``, ``mixed_float16`` or ``mixed_bfloat16``.
      augment: False, True (pad-crop and flip), ``"crop_flip"``, ``"crop"`` or ``"flip"``.
      normalize: ``per_channel``, ``unit`` or ``symmetric`` (see trainer.input_pipeline.make_pipeline).
      max_examples: a cap PER SPLIT (stratified subsets): an int caps each of train, validation
        and test (``1000`` keeps up to 3000 examples in all), a dict caps the splits it names
        (``{"train": 1000}``); None keeps all. Not the same as the CLI's ``--max_examples``
        (``pipeline/config.py``), which caps the examples kept IN ALL and divides that number
        among the splits by their fractions: to reproduce a CLI run here, pass
        ``{"train": round(n * 0.8), "validation": round(n * 0.1), "test": round(n * 0.1)}``
        (with the run's ``splits``), not ``n``.
      image_size, data_dir, splits, skip_corrupt: passed to ``trainer.sources.load_dataset``
        with ``max_examples`` (``skip_corrupt``: leave out unreadable images, listing them in the
        result, instead of refusing the data). ``splits``, ``max_examples`` and ``image_size``
        are checked at construction by the data module's own rules.
      output_dir: where logs, backups and results go; None: nothing is written (no resume).
      resume: continue from a backup in ``output_dir`` when one exists.
      tensorboard: write TensorBoard logs (needs ``output_dir``).
      save_model: save the trained model as ``<output_dir>/model.keras`` (with Keras' own layers
        only, so it loads in safe mode after ``import activations``). It takes normalised images
        (see ``TrainResult.data["normalization"]``).
      evaluate_test: evaluate the test split at the end.
      deterministic: deterministic TensorFlow kernels (slower; for exact repeatability).
      quiet: no per-epoch progress lines.
      stop_below: per epoch, the validation accuracy the run's best so far must reach to go on:
        after epoch i + 1 a run whose best is below ``stop_below[i]`` stops early (None entries,
        epochs past the list and the last epoch never stop). A search's trials get these bars
        from the trials before them (``activations.stopping``) to drop hopeless candidates.
    """

    model: str = "small_cnn"
    data: str = data_lib.DEFAULT_SOURCE
    activation: str = "relu"
    sharing: str = "layer"
    epochs: int = 10
    steps: int | None = None
    batch_size: int = 128
    optimizer: str = "sgd"
    learning_rate: float | None = None
    momentum: float = 0.9
    nesterov: bool = False
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    weight_decay: float | None = None
    label_smoothing: float = 0.0
    clipnorm: float | None = None
    seed: int = 0
    precision: str = "auto"
    augment: bool | str = False
    normalize: str = "per_channel"
    max_examples: int | dict[str, int | None] | None = None
    image_size: int | list[int] | None = None
    data_dir: str | None = None
    splits: list[float] = dataclasses.field(default_factory=lambda: [0.8, 0.1, 0.1])
    skip_corrupt: bool = False
    output_dir: str | None = None
    resume: bool = True
    tensorboard: bool = True
    save_model: bool = False
    evaluate_test: bool = True
    deterministic: bool = False
    quiet: bool = False
    stop_below: list[float | None] | None = None

    def __post_init__(self):
        self.validate()

    # --- validation ---------------------------------------------------------------------------

    def validate(self) -> "TrainConfig":
        """Checks every field; raises :class:`TrainConfigError` naming the first bad one."""

        def fail(field: str, allowed: str):
            raise TrainConfigError(f"TrainConfig.{field}={getattr(self, field)!r} is invalid: {allowed}")

        def is_int(value) -> bool:
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

        is_number = is_finite_number  # an infinite rate or warm-up would fail hours later

        if self.model not in MODEL_NAMES:
            fail("model", f"allowed are {', '.join(MODEL_NAMES)}")
        if not isinstance(self.data, str) or not self.data.strip():
            fail("data", "expected a source string such as 'embedded:digits' or 'tfds:cifar10'")
        if not isinstance(self.activation, str) or not self.activation.strip():
            fail("activation", "expected a name or expression text such as 'relu' or 'x*sigmoid(beta*x)'")
        try:
            expression_for(self.activation)
        except ValueError as error:
            fail("activation", f"not a known name or a valid expression: {error}")
        if self.sharing not in SHARING_MODES:
            fail("sharing", f"allowed are {', '.join(SHARING_MODES)}")
        if not is_int(self.epochs) or self.epochs < 1:
            fail("epochs", "expected a positive integer")
        if self.steps is not None and (not is_int(self.steps) or self.steps < 1):
            fail("steps", "expected None or a positive integer")
        if not is_int(self.batch_size) or self.batch_size < 1:
            fail("batch_size", "expected a positive integer")
        if self.optimizer not in OPTIMIZERS:
            fail("optimizer", f"allowed are {', '.join(OPTIMIZERS)}")
        if self.learning_rate is not None and (not is_number(self.learning_rate) or not self.learning_rate > 0):
            fail("learning_rate", "expected None or a positive number")
        if not is_number(self.momentum) or not 0 <= self.momentum < 1:
            fail("momentum", "expected a number in [0, 1)")
        if self.schedule not in SCHEDULES:
            fail("schedule", f"allowed are {', '.join(SCHEDULES)}")
        if not is_number(self.warmup_epochs) or not self.warmup_epochs >= 0:
            fail("warmup_epochs", "expected a number >= 0")
        if self.weight_decay is not None and (not is_number(self.weight_decay) or not self.weight_decay >= 0):
            fail("weight_decay", "expected None or a number >= 0")
        if not is_number(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            fail("label_smoothing", "expected a number in [0, 1)")
        if self.clipnorm is not None and (not is_number(self.clipnorm) or not self.clipnorm > 0):
            fail("clipnorm", "expected None or a positive number")
        if not is_int(self.seed) or not 0 <= self.seed < 2**32:
            fail("seed", "expected an integer in [0, 2**32)")
        if self.precision not in PRECISIONS:
            fail("precision", f"allowed are {', '.join(PRECISIONS)}")
        if not (isinstance(self.augment, (bool, np.bool_))
                or isinstance(self.augment, str) and self.augment in data_lib.AUGMENTATIONS):
            fail("augment", f"allowed are False, True, {', '.join(data_lib.AUGMENTATIONS)}")
        if self.normalize not in data_lib.NORMALIZATIONS:
            fail("normalize", f"allowed are {', '.join(data_lib.NORMALIZATIONS)}")
        _check_data_fields(self, fail)
        for name in ("nesterov", "resume", "tensorboard", "save_model", "evaluate_test", "deterministic", "quiet",
                     "skip_corrupt"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                fail(name, "expected True or False")
        if self.stop_below is not None and (not isinstance(self.stop_below, (list, tuple)) or not all(
                bar is None or is_number(bar) for bar in self.stop_below)):
            fail("stop_below", "expected None or a list of numbers (or None) per epoch")
        if self.output_dir is not None and (not isinstance(self.output_dir, (str, os.PathLike))
                                            or not os.fspath(self.output_dir).strip()):
            fail("output_dir", "expected None or a directory path")
        return self

    # --- derived values -----------------------------------------------------------------------

    @property
    def peak_learning_rate(self) -> float:
        return float(self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATES[self.optimizer])

    @property
    def decay(self) -> float:
        return float(self.weight_decay if self.weight_decay is not None else DEFAULT_WEIGHT_DECAY[self.optimizer])

    # --- serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Builds a config from :meth:`to_dict` output or a run's ``config.json``.

        ``config.json`` holds one entry more, ``"dataset"`` (what data the run trained on, for the
        resume check); it is skipped, so a run's directory describes its config completely. Any
        other unknown key raises TrainConfigError: a typo must not silently become a default.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names - {_DATA_KEY})
        if unknown:
            raise TrainConfigError(f"unknown TrainConfig fields {unknown}: allowed are {', '.join(sorted(names))} "
                                   f"(and {_DATA_KEY!r}, which config.json adds and is ignored)")
        values = {k: v for k, v in values.items() if k != _DATA_KEY}
        if isinstance(values.get("image_size"), (list, tuple)):
            values["image_size"] = [int(v) for v in values["image_size"]]
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        """Reads :meth:`to_json` output or the ``config.json`` that :func:`train` writes."""
        return cls.from_dict(json.loads(text))

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def _check_data_fields(config: TrainConfig, fail: Callable[[str, str], Any]) -> None:
    """Checks ``splits``, ``max_examples`` and ``image_size`` by the data module's own rules.

    Why: ``load_dataset`` applies exactly these checks, but only once :func:`train` runs (after
    the config travelled to another process, maybe); reusing them here makes a bad value fail at
    construction, and validation and loading can never disagree about what is allowed.
    """
    checks: tuple[tuple[str, Callable[[Any], Any]], ...] = (
        ("splits", data_lib._check_fractions),
        ("max_examples", data_lib._check_caps),
        ("image_size", _check_image_size),
    )
    for field, check in checks:
        try:
            check(getattr(config, field))
        except data_lib.DataError as error:
            fail(field, str(error))


# --------------------------------------------------------------------------------------------
# Result


@dataclasses.dataclass
class TrainResult:
    """What a run produced. JSON-able via :meth:`to_dict` (non-finite numbers become None).

    Accuracies are fractions in [0, 1]; times are seconds. Epoch numbers in ``best_epoch`` and
    ``stopped_at`` count from 1, while ``history["epoch"]`` holds Keras' 0-based epoch index.
    ``train_time`` sums ``history["epoch_time"]`` (training and validation of each epoch, first
    tracing included); ``wall_time`` is the whole call, data loading included. ``images_per_sec``
    is the median over epochs of training images per second. ``steps_run`` counts optimizer
    updates (under ``mixed_float16`` a step the loss scale skips is not one).
    ``history["learning_rate"]`` is the mean rate of each epoch's steps (warm-up and decay show). ``data["normalization"]``
    is what the model's input expects: the saved ``model.keras`` takes normalised images
    (``trainer.input_pipeline.raw_input_model`` wraps it to take raw pixels, as the exported model
    does). ``model`` (the trained Keras model) is kept for the caller but never serialised.
    """

    config: dict[str, Any]
    precision: str
    diverged: bool = False
    divergence_reason: str | None = None
    best_val_accuracy: float | None = None
    best_epoch: int | None = None
    final_val_accuracy: float | None = None
    final_val_loss: float | None = None
    final_loss: float | None = None
    final_accuracy: float | None = None
    test_accuracy: float | None = None
    test_loss: float | None = None
    epochs_run: int = 0
    stopped_at: int | None = None
    steps_run: int = 0
    initial_epoch: int = 0
    train_time: float = 0.0
    wall_time: float = 0.0
    images_per_sec: float = 0.0
    params: dict[str, int] = dataclasses.field(default_factory=dict)
    activation_stats: dict[str, dict[str, dict[str, float]]] = dataclasses.field(default_factory=dict)
    history: dict[str, list[float | None]] = dataclasses.field(default_factory=dict)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    output_dir: str | None = None
    log_dir: str | None = None
    history_path: str | None = None
    backup_dir: str | None = None
    model_path: str | None = None
    result_path: str | None = None
    image_paths: list[str] = dataclasses.field(default_factory=list)
    model: keras.Model | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def score(self) -> float:
        """The search objective: best validation accuracy; NaN when the run diverged or the data
        has no validation split."""
        if self.diverged or self.best_val_accuracy is None:
            return float("nan")
        return float(self.best_val_accuracy)

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}
        return _jsonable(values)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainResult":
        names = {f.name for f in dataclasses.fields(cls)} - {"model"}
        return cls(**{k: v for k, v in values.items() if k in names})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _jsonable(value):
    """Plain JSON types; NaN and infinities become None (strict JSON has no such numbers)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


# --------------------------------------------------------------------------------------------
# Pieces of a run


class WarmupConstant(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``learning_rate`` over ``warmup_steps``, then constant."""

    def __init__(self, learning_rate: float, warmup_steps: int):
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        if self.warmup_steps <= 0:
            return keras.ops.full((), self.learning_rate, "float32")
        fraction = keras.ops.minimum(step / float(self.warmup_steps), 1.0)
        return self.learning_rate * fraction

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps}


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int, total_steps: int):
    """The warm-up + cosine (or constant) schedule of ``config`` over ``total_steps``."""
    peak = config.peak_learning_rate
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    warmup = max(0, min(warmup, int(MAX_WARMUP_FRACTION * total_steps)))
    if config.schedule == "constant":
        return WarmupConstant(peak, warmup)
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(peak, decay_steps=max(1, total_steps))
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(1, total_steps - warmup), warmup_target=peak, warmup_steps=warmup
    )


def make_optimizer(config: TrainConfig, schedule) -> keras.optimizers.Optimizer:
    """The optimizer of ``config`` (weight-decay exclusions are applied in :func:`train`)."""
    common: dict[str, Any] = {"learning_rate": schedule}
    if config.decay:  # AdamW refuses weight_decay=None; 0 means none
        common["weight_decay"] = config.decay
    if config.clipnorm is not None:
        common["clipnorm"] = float(config.clipnorm)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(momentum=float(config.momentum), nesterov=bool(config.nesterov), **common)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(**common)
    return keras.optimizers.AdamW(**common)


@contextlib.contextmanager
def _op_determinism(enabled: bool):
    if not enabled:
        yield
        return
    from tensorflow.python.framework import config as tf_config

    if tf_config.is_op_determinism_enabled():  # the caller's setting: leave it as found
        yield
        return
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        # TensorFlow has no public switch back; the private one keeps later runs fast.
        try:
            from tensorflow.python.framework import config as tf_config

            tf_config.disable_op_determinism()
        except (ImportError, AttributeError):  # pragma: no cover
            logger.warning("op determinism stays enabled for this process")


def _read_history(path: str) -> dict[str, list[float | None]]:
    """``history.csv`` as columns, one row per epoch (a repeated epoch keeps its last row)."""
    if not os.path.exists(path):
        return {}
    rows: dict[int, dict[str, str]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                rows[int(row["epoch"])] = row
            except (KeyError, ValueError):
                continue
    columns: dict[str, list[float | None]] = {}
    ordered = [rows[e] for e in sorted(rows)]
    keys = sorted({k for row in ordered for k in row if k})
    for key in keys:
        values: list[float | None] = []
        for row in ordered:
            try:
                values.append(float(row.get(key, "")))
            except (TypeError, ValueError):
                values.append(None)
        columns[key] = values
    return columns


def _align_data_order(
    train_ds: tf.data.Dataset, finished_epochs: int, steps_per_epoch: int, batches_per_epoch: int
) -> None:
    """Makes a resumed run see the data order the uninterrupted run would have seen.

    The training stream is a repeated, seeded shuffle: each pass over the data draws fresh
    randomness from the shuffle's (and the augmentation's) seeded generator when its inner
    iterator is created, and a run reads the stream through one iterator. Creating, unread, one
    iterator per finished pass advances those draws to where the interrupted run stopped, so
    the resumed run continues with the same shuffles and augmentations (checked by the tests).
    Only whole passes can be skipped this way; a ``steps`` run whose epochs are shorter than a
    pass resumes with the right weights but a different data order.
    """
    if finished_epochs <= 0:
        return
    if steps_per_epoch != batches_per_epoch:
        logger.info("resumed run: data order differs from the uninterrupted run (partial passes)")
        return
    for _ in range(finished_epochs):
        iter(train_ds)


def _compile(model: keras.Model, config: TrainConfig, schedule, one_hot: bool) -> None:
    """Compiles ``model`` with the optimizer, loss and accuracy metric of ``config``."""
    optimizer = make_optimizer(config, schedule)
    if config.decay:
        # Decay kernels only: not biases, batch-norm scales/shifts or activation parameters.
        optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if len(v.shape) <= 1])
    if one_hot:
        loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing)
        accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    model.compile(optimizer=optimizer, loss=loss, metrics=[accuracy])


class _RunCallbacks:
    """The built-in callbacks of a run, in the order they must run (see trainer.callbacks)."""

    def __init__(self, config: TrainConfig, paths: "_Paths", epochs: int, batch_size: int, print_fn):
        self.monitor = DivergenceMonitor()
        self.history = _History()
        self.images: ActivationImages | None = None
        self.backup = bool(paths.root and config.resume)
        # EpochSeeds in every run, not only resumable ones: a run's dropout masks depend on its seed only.
        seeds = EpochSeeds(config.seed)
        self.callbacks: list[keras.callbacks.Callback] = [self.monitor, seeds, EpochStats(batch_size)]
        if config.steps is not None:
            self.callbacks.append(StepLimit(config.steps))
        self.bar = StopBelow(config.stop_below, epochs) if config.stop_below else None
        if self.bar is not None:
            self.callbacks.append(self.bar)
        self.callbacks.append(self.history)
        summaries = os.path.join(paths.logs, "activations") if paths.root and config.tensorboard else None
        if paths.root:
            self.callbacks.append(keras.callbacks.CSVLogger(paths.history, append=True))
        if summaries:
            self.callbacks.append(
                EpochTensorBoard(log_dir=paths.logs, histogram_freq=0, write_graph=False, profile_batch=0)
            )
            self.callbacks.append(ActivationHistograms(summaries))
        if not config.quiet:
            self.callbacks.append(EpochLogger(epochs, print_fn))
        if paths.root:
            self.images = ActivationImages(summaries, paths.images)
            self.callbacks.append(self.images)
        if self.backup:
            # After the other built-in callbacks, so that an epoch is backed up once fully logged.
            # Two checkpoint copies: a kill while one is written leaves the other to resume from.
            self.callbacks.append(keras.callbacks.BackupAndRestore(backup_dir=paths.backup, double_checkpoint=True))


class _History(keras.callbacks.Callback):
    """Collects epoch logs in memory (used when no output_dir gives a CSV)."""

    def __init__(self):
        super().__init__()
        self.rows: dict[int, dict[str, float]] = {}

    def on_epoch_end(self, epoch, logs=None):
        self.rows[epoch] = {k: float(v) for k, v in (logs or {}).items()}

    def columns(self) -> dict[str, list[float | None]]:
        keys = sorted({k for row in self.rows.values() for k in row})
        ordered = [self.rows[e] for e in sorted(self.rows)]
        columns = {key: [row.get(key) for row in ordered] for key in keys}
        columns["epoch"] = [float(e) for e in sorted(self.rows)]
        return columns


def _last(values: list[float | None] | None) -> float | None:
    if not values:
        return None
    return values[-1]


def _finite(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------------------------
# The entry point


def train(
    config: TrainConfig,
    dataset: data_lib.Dataset | None = None,
    *,
    callbacks: list[keras.callbacks.Callback] | None = None,
    print_fn: Callable[[str], Any] | None = None,
) -> TrainResult:
    """Trains ``config.model`` with ``config.activation`` and returns the run's :class:`TrainResult`.

    Args:
      config: the run.
      dataset: an already loaded ``trainer.data.Dataset`` (e.g. shared by many trials); when
        None, ``config.data`` is loaded.
      callbacks: extra Keras callbacks (run after the built-in ones, once the epoch is backed up).
      print_fn: receives the per-epoch progress lines (default: print); unused when quiet.

    A diverged run returns normally with ``diverged=True``. Configuration and data errors raise
    (:class:`TrainConfigError`, ``trainer.data.DataError``, ``trainer.models.ModelError``...).
    """
    config.validate()
    started = time.perf_counter()
    paths = _Paths(config.output_dir)
    paths.check_usable()  # before the data loads: a bad directory should not cost a minute first
    if dataset is None:
        dataset = load_dataset(
            config.data,
            data_dir=config.data_dir,
            splits=tuple(config.splits),
            seed=config.seed,
            max_examples=config.max_examples,
            image_size=config.image_size,
            skip_corrupt=config.skip_corrupt,
        )
    elif not isinstance(dataset, data_lib.Dataset):
        raise TrainConfigError(f"dataset must be a trainer.data.Dataset; got {type(dataset).__name__}")
    n_train = dataset.num_examples["train"]
    if n_train == 0:
        raise TrainConfigError(f"the data {dataset.source!r} has an empty train split")
    if dataset.num_examples["validation"] == 0:
        logger.warning("the data %r has no validation split: the run reports no validation metrics and its "
                       "score (the search objective) is NaN", dataset.source)
    factory = activation_factory(config.activation, config.sharing)  # fails early on bad text

    data_record = {"source": dataset.source, "fingerprint": dataset.fingerprint()} if paths.root else None
    paths.prepare(resume=config.resume, config=config, data=data_record)
    if paths.root:
        with open(paths.config, "w", encoding="utf-8") as f:
            json.dump({**config.to_dict(), _DATA_KEY: data_record}, f, indent=2, sort_keys=True)

    batch_size = int(config.batch_size)
    drop_remainder = n_train >= batch_size
    batches_per_epoch = n_train // batch_size if drop_remainder else 1
    if config.steps is not None:
        steps_per_epoch = min(config.steps, batches_per_epoch)
        epochs = math.ceil(config.steps / steps_per_epoch)
        total_steps = config.steps
    else:
        steps_per_epoch = batches_per_epoch
        epochs = config.epochs
        total_steps = epochs * steps_per_epoch

    keras.utils.set_random_seed(config.seed)
    one_hot = config.label_smoothing > 0
    num_classes = dataset.num_classes

    def pipeline(split: str, training: bool) -> tf.data.Dataset:
        ds = make_pipeline(
            dataset,
            split=split,
            batch_size=batch_size,
            training=training,
            augment=config.augment if training else False,
            normalize=config.normalize,
            seed=config.seed,
            drop_remainder=drop_remainder if training else False,
        )
        if one_hot:
            ds = ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)))
        if training:
            # One endless stream read through one iterator: each pass is reshuffled (seeded),
            # and Keras counts epochs in steps, so every epoch has exactly steps_per_epoch batches.
            ds = ds.repeat()
        return ds

    train_ds = pipeline("train", training=True)
    val_ds = pipeline("validation", training=False) if dataset.num_examples["validation"] else None
    test_ds = pipeline("test", training=False) if dataset.num_examples["test"] else None

    strategy = distribution_strategy()
    with _op_determinism(config.deterministic), precision_scope(config.precision) as policy:
        with strategy.scope():
            model = build_model(config.model, dataset.input_shape, num_classes, factory)
            _compile(model, config, learning_rate_schedule(config, steps_per_epoch, total_steps), one_hot)
        if config.resume and paths.has_backup():
            paths.keep_a_loadable_backup(model)
        if config.resume:  # after any fallback: the history must end where the restored backup does
            paths.trim_history(paths.backed_up_epoch())
        # A batch larger than the training split is the whole split: count the images a step takes.
        run = _RunCallbacks(config, paths, epochs, batch_size if drop_remainder else n_train, print_fn)
        if run.backup:
            _align_data_order(train_ds, paths.backed_up_epoch(), steps_per_epoch, batches_per_epoch)
            if run.bar is not None:  # the best of the epochs before the interruption still counts
                run.bar.seen(_read_history(paths.history).get("val_accuracy", [])[: paths.backed_up_epoch()])
        monitor = run.monitor

        model.fit(
            train_ds,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            validation_data=val_ds,
            callbacks=run.callbacks + list(callbacks or []),
            shuffle=False,  # the pipeline shuffles, seeded
            verbose=0,
        )
        initial_epoch = int(getattr(model, "_initial_epoch", 0) or 0)

        test_loss = test_accuracy = None
        if test_ds is not None and config.evaluate_test and not monitor.diverged:
            test_loss, test_accuracy = model.evaluate(test_ds, verbose=0)
            if not math.isfinite(test_loss):
                monitor.diverged, monitor.reason = True, f"non-finite test loss ({test_loss})"

    history = _read_history(paths.history) if paths.root else run.history.columns()
    val_acc = [v for v in history.get("val_accuracy", []) if v is not None and math.isfinite(v)]
    best_val = max(val_acc) if val_acc else None
    best_epoch = None
    if best_val is not None:
        best_epoch = int(history["epoch"][history["val_accuracy"].index(best_val)]) + 1
    epochs_run = int(max(history.get("epoch", [-1.0]) or [-1.0])) + 1 if history.get("epoch") else 0
    speeds = [v for v in history.get("images_per_sec", []) if v is not None and v > 0]
    times = [v for v in history.get("epoch_time", []) if v is not None]

    result = TrainResult(
        config=config.to_dict(),
        precision=policy,
        diverged=monitor.diverged,
        divergence_reason=monitor.reason,
        best_val_accuracy=_finite(best_val),
        best_epoch=best_epoch,
        final_val_accuracy=_finite(_last(history.get("val_accuracy"))),
        final_val_loss=_finite(_last(history.get("val_loss"))),
        final_loss=_finite(_last(history.get("loss"))),
        final_accuracy=_finite(_last(history.get("accuracy"))),
        test_accuracy=_finite(test_accuracy),
        test_loss=_finite(test_loss),
        epochs_run=epochs_run,
        stopped_at=run.bar.stopped_at if run.bar is not None else None,
        steps_run=int(keras.ops.convert_to_numpy(model.optimizer.iterations.value)),
        initial_epoch=initial_epoch,
        train_time=float(sum(times)),
        wall_time=time.perf_counter() - started,
        images_per_sec=float(np.median(speeds)) if speeds else 0.0,
        params=count_params(model),
        activation_stats=activation_parameter_stats(model),
        history=history,
        data={"source": dataset.source, "input_shape": list(dataset.input_shape),
              "num_classes": num_classes, "num_examples": dataset.num_examples,
              "normalization": input_normalization(config.normalize, dataset)},
        output_dir=paths.root,
        log_dir=paths.logs if paths.root and config.tensorboard else None,
        history_path=paths.history if paths.root else None,
        backup_dir=paths.backup if paths.root and config.resume else None,
        image_paths=list(run.images.paths) if run.images is not None else [],
        model=model,
    )
    if paths.root:
        if config.save_model:
            portable_model(model).save(paths.model)
            result.model_path = paths.model
        result.result_path = paths.result
        with open(paths.result, "w", encoding="utf-8") as f:
            f.write(result.to_json())
    return result


_NOT_TRAINING = ("output_dir", "resume", "tensorboard", "save_model", "evaluate_test", "quiet", "stop_below")
"""TrainConfig fields that do not change what a run trains (`stop_below` only where it may end):
a backup resumes across them."""


def _stored_config(path: str) -> dict | None:
    """The config.json a run of this trainer wrote at `path`, or None (missing, unreadable, or a
    file of some other program: it must hold a TrainConfig's own fields)."""
    try:
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or not {"model", "activation", "data", "seed"} <= set(stored):
        return None
    return stored


def _changed_fields(stored: dict | None, config: "TrainConfig", data: dict | None) -> list[str]:
    """Training fields whose stored value (config.json of the run in the directory) differs, and
    "the data" when the stored run trained on other data. A field the stored file lacks (written
    before the field existed) counts as its default."""
    if stored is None:
        return []  # a backup without its config: nothing to compare, as before config.json existed
    current = config.to_dict()
    defaults = TrainConfig().to_dict()
    changed = sorted(name for name in current
                     if name not in _NOT_TRAINING and stored.get(name, defaults[name]) != current[name])
    stored_data = stored.get(_DATA_KEY)
    if isinstance(stored_data, dict) and data is not None and stored_data.get("fingerprint") != data["fingerprint"]:
        changed.append(f"the data (was {stored_data.get('source')!r}, now {data['source']!r})")
    return changed


def _csv_epoch(line: str, header: str) -> int | None:
    """The ``epoch`` value of one ``history.csv`` line (None when the line has none)."""
    try:
        names = next(csv.reader([header]))
        values = next(csv.reader([line]))
        return int(values[names.index("epoch")])
    except (StopIteration, ValueError, IndexError):
        return None


class _Paths:
    """The files of a run inside ``output_dir`` (all None-safe when there is no output_dir)."""

    def __init__(self, output_dir: str | os.PathLike | None):
        self.root = None if output_dir is None else os.path.abspath(os.path.expanduser(os.fspath(output_dir)))
        join = (lambda *p: os.path.join(self.root, *p)) if self.root else (lambda *p: None)
        self.config = join("config.json")
        self.result = join("result.json")
        self.history = join("history.csv")
        self.logs = join("logs")
        self.backup = join("backup")
        self.images = join("activations")
        self.model = join("model.keras")

    def has_backup(self) -> bool:
        return bool(self.root) and os.path.exists(os.path.join(self.backup, "training_metadata.json"))

    def backed_up_epoch(self) -> int:
        """The number of finished epochs recorded in the backup (0 without a backup)."""
        if not self.has_backup():
            return 0
        try:
            with open(os.path.join(self.backup, "training_metadata.json"), encoding="utf-8") as f:
                return int(json.load(f).get("epoch", 0))
        except (OSError, ValueError, TypeError):
            return 0

    def trim_history(self, epochs: int) -> None:
        """Keeps only the rows of ``history.csv`` of the first ``epochs`` epochs (0-based < epochs).

        Why: the CSV row of an epoch is written before the epoch is backed up, and a resume may
        fall back to the previous backup (or start afresh); the epochs after the restored backup
        run again and would append second rows (a CSV reader would see epochs 8 9 9 10). The file
        is rewritten atomically (a kill mid-write leaves the old one); with no rows left it is
        removed, so the CSV logger writes its header again.
        """
        if not self.root or not os.path.exists(self.history):
            return
        with open(self.history, newline="", encoding="utf-8") as f:
            lines = f.read().splitlines(keepends=True)
        kept = lines[:1] + [line for line in lines[1:]
                            if (epoch := _csv_epoch(line, lines[0])) is not None and epoch < epochs]
        if len(kept) == len(lines):
            return
        if len(kept) <= 1:
            os.remove(self.history)
            return
        partial = self.history + ".partial"
        with open(partial, "w", newline="", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(partial, self.history)
        logger.info("history.csv trimmed to the %d epochs of the backup", epochs)

    def check_usable(self) -> None:
        """Refuses an output_dir that is a file, lies under one, or cannot be written."""
        if not self.root:
            return
        existing = self.root
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        problem = None
        if not os.path.isdir(existing):
            problem = "is a file" if existing == self.root else f"lies under the file {existing!r}"
        elif not os.access(existing, os.W_OK | os.X_OK):
            problem = "is not writable" if existing == self.root else f"cannot be made: {existing!r} is not writable"
        if problem:
            raise TrainConfigError(f"TrainConfig.output_dir={self.root!r} {problem}: give a directory this "
                                   "process can write, or None to write nothing")

    def prepare(self, resume: bool, config: "TrainConfig", data: dict | None = None) -> None:
        """Creates the directory; a fresh (not resumed) run clears the previous run's files.

        A backup is resumed only when it belongs to the same configuration and data: a different
        one is refused (its unfinished run is not thrown away unasked); whether it loads
        is checked once the model exists (`keep_a_loadable_backup`). Folders this module did not make are never deleted: a directory that has
        `logs/`, `backup/` or `activations/` but no `config.json` this trainer wrote is refused.
        """
        if not self.root:
            return
        os.makedirs(self.root, exist_ok=True)
        stored = _stored_config(self.config)
        if stored is None and any(os.path.exists(p) for p in (self.logs, self.backup, self.images)):
            raise TrainConfigError(
                f"TrainConfig.output_dir={self.root!r} already holds logs/, backup/ or activations/ folders "
                "that no run of this trainer wrote (no config.json of this trainer): use a new or empty directory")
        if os.path.exists(self.config) and stored is None:
            raise TrainConfigError(
                f"TrainConfig.output_dir={self.root!r} holds a config.json that this trainer did not write; "
                "it would be overwritten: use a new or empty directory")
        if resume and self.has_backup():
            changed = _changed_fields(stored, config, data)
            if changed:
                raise TrainConfigError(
                    f"TrainConfig.output_dir={self.root!r} holds an unfinished run of another configuration "
                    f"(differing: {', '.join(changed)}): use another output_dir, or resume=False to start afresh there")
            logger.info("resuming from the backup in %s", self.backup)
            return
        for path in (self.history, self.result):
            if os.path.exists(path):
                os.remove(path)
        for path in (self.logs, self.backup, self.images):
            if os.path.isdir(path):
                shutil.rmtree(path)

    def keep_a_loadable_backup(self, model: keras.Model) -> None:
        """Makes sure the backup BackupAndRestore will restore loads into `model`.

        An interruption while the checkpoint was written can leave a file that opens but lacks
        layers (seen after a Ctrl-C): restoring it would fail in every later attempt. The
        previous copy (`.bkp`) replaces a broken latest one; when neither loads, the backup is
        dropped and the run starts afresh, with a warning. `model` keeps its initial weights.
        """
        import warnings

        latest = os.path.join(self.backup, "latest.weights.h5")
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)  # as fit does before restoring
        variables = list(model.variables) + (list(model.optimizer.variables) if model.optimizer else [])
        initial = [v.numpy() for v in variables]
        previous = os.path.join(self.backup, "previous.weights.h5")  # load_weights wants this suffix
        if os.path.exists(latest + ".bkp"):
            shutil.copy(latest + ".bkp", previous)
        for candidate in (latest, previous):
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("error", message="Skipping")  # Keras only warns about missing parts
                    model.load_weights(candidate)
            except Exception as error:  # noqa: BLE001 - any failure means: not this copy
                logger.info("backup %s does not load: %s", candidate, error)
                continue
            finally:
                for variable, value in zip(variables, initial):
                    variable.assign(value)
            if candidate != latest:
                # A new file, not a copy into the old one: a failed load may still hold it open.
                os.replace(previous, latest)
                metadata = os.path.join(self.backup, "training_metadata.json")
                if os.path.exists(metadata + ".bkp"):
                    shutil.copy(metadata + ".bkp", metadata)
                logger.warning("the latest backup in %s does not load; resuming from the previous one", self.backup)
            break
        else:
            logger.warning("no backup in %s loads (interrupted while it was saved?): starting afresh", self.backup)
            shutil.rmtree(self.backup)
            return
        if os.path.exists(previous):
            os.remove(previous)
