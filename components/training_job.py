"""The unit of work the Tuner and Trainer fan out: one `trainer.train` run on an Examples artifact.

A job is plain JSON (a `TrainConfig` dict, the Examples URI, an optional cap on training
examples), so it runs the same in this process, in a Beam worker process or on a remote Beam
runner. The Examples are read once per process and kept for the next job.
"""

from __future__ import annotations

import math
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
