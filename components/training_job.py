"""The unit of work the Tuner and Trainer fan out: one `trainer.train` run on an Examples artifact.

A job is plain JSON (a `TrainConfig` dict, the Examples URI, an optional cap on training
examples), so it runs the same in this process, in a Beam worker process or on a remote Beam
runner. The Examples are read once per process and kept for the next job.
"""

from __future__ import annotations

import csv
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
    `output_dir`): it gets a row when an epoch ends, read as a count by `progress_count`."""
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


def progress_count(history: str) -> int:
    """The epochs `history.csv` holds (distinct `epoch` values; 0 without the file): the fan-out's
    high-water mark for a `train_job`. Not the file's size or time, which change at every start
    (the run trims or removes its history back to its backup's epochs), so a run killed after its
    first epoch at each start would look as if it got on; its epoch count stays at 1."""
    try:
        with open(history, newline="", encoding="utf-8") as f:
            return len({row["epoch"] for row in csv.DictReader(f) if row.get("epoch")})
    except (OSError, UnicodeDecodeError, csv.Error):
        return 0


train_job.progress_path = progress_path  # read by components.fanout.progress_path
train_job.progress_count = progress_count  # read by components.fanout.progress_count
