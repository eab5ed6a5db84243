"""The unit of work the Tuner and Trainer fan out: one `trainer.train` run on an Examples artifact.

A job is plain JSON (a `TrainConfig` dict, the Examples URI, an optional cap on training
examples), so it runs the same in this process, in a Beam worker process or on a remote Beam
runner. The Examples are read once per process and kept for the next job.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

_DATASETS: dict[tuple[str, int | None], Any] = {}


def load_examples(examples_uri: str, train_examples: int | None = None):
    """The Examples artifact as a `trainer.data.Dataset`, the train split cut to
    `train_examples` (the content-sorted order of the shards makes the cut a random subset)."""
    key = (examples_uri, train_examples)
    if key not in _DATASETS:
        from components.example_gen import read_examples
        from trainer.data import Dataset

        dataset = read_examples(examples_uri)
        if train_examples is not None and train_examples < dataset.num_examples["train"]:
            images, labels = dataset.arrays("train")
            splits = {split: dataset.arrays(split) for split in ("validation", "test")}
            splits["train"] = (images[:train_examples], labels[:train_examples])
            dataset = Dataset(dataset.source, splits, dataset.class_names)
        _DATASETS[key] = dataset
    return _DATASETS[key]


def _finite_or_none(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


HISTORY_FILE = "history.csv"
"""What `trainer.train` appends a row to after each epoch in its `output_dir` (its CSVLogger); a
resumed run trims it to the restored backup's epochs, and a fresh start removes it."""


def progress_path(config: Mapping[str, Any], examples_uri: str | None = None,
                  train_examples: int | None = None) -> str | None:
    """The run's `history.csv`, the fan-out's progress signal for a `train_job` (None without an
    `output_dir`): it changes only when an epoch ends, so a start after which it changed got
    somewhere (the whole run was killed) rather than taking its process down at once."""
    del examples_uri, train_examples  # the same arguments as train_job
    output_dir = config.get("output_dir")
    if not output_dir:
        return None
    return os.path.join(os.path.abspath(os.path.expanduser(os.fspath(output_dir))), HISTORY_FILE)


def train_job(config: Mapping[str, Any], examples_uri: str, train_examples: int | None = None) -> dict[str, Any]:
    """Runs one training; returns the JSON-able `TrainResult` fields plus `num_classes`."""
    from trainer.train import TrainConfig, train

    dataset = load_examples(examples_uri, train_examples)
    result = train(TrainConfig.from_dict(dict(config)), dataset)
    record = result.to_dict()
    record["num_classes"] = dataset.num_classes
    for key in ("best_val_accuracy", "final_val_accuracy", "test_accuracy"):
        record[key] = _finite_or_none(record.get(key))
    return record


train_job.progress_path = progress_path  # read by components.fanout.progress_path
