"""ExampleGen: reads a data source once and writes its splits as TFRecord shards.

Every later step reads the same shards, so a search, the final runs and the evaluation see exactly
the same train/validation/test split. The shards are written by an Apache Beam pipeline (the
runner is an option), and `statistics.json` beside them records counts per class and split, the
image shape and the normalisation statistics.

Artifact layout::

    <uri>/<split>/data-<shard>-of-<n>.tfrecord
    <uri>/statistics.json
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Any, Mapping

import numpy as np

from components.base import Artifact, BaseExecutor, Component, ComponentSpec, OutputSpec, Parameter

SPLITS = ("train", "validation", "test")


class ExampleGenSpec(ComponentSpec):
    OUTPUTS = {"examples": OutputSpec("Examples", doc="TFRecord shards per split and statistics.json")}
    PARAMETERS = {
        "source": Parameter(str, doc="embedded:digits, tfds:<name> or folder:<path>"),
        "data_dir": Parameter(str, default=None, doc="TFDS data directory"),
        "validation_fraction": Parameter(float, default=0.1),
        "test_fraction": Parameter(float, default=0.2),
        "max_examples": Parameter(int, default=None, doc="cap on the examples kept (stratified)"),
        "image_size": Parameter(int, default=None, doc="resize images to this square size"),
        "skip_corrupt": Parameter(bool, default=False, doc="skip undecodable images of a folder"),
        "seed": Parameter(int, default=0, doc="seed of the split"),
        "num_shards": Parameter(int, default=2),
        "beam_options": Parameter(list, default=[], in_cache_key=False),
    }


def _split_caps(max_examples: int | None, fractions: tuple[float, float, float]) -> dict[str, int] | None:
    if max_examples is None:
        return None
    return {name: max(1, int(round(max_examples * fraction))) for name, fraction in zip(SPLITS, fractions)}


def _write_splits(dataset, uri: str, num_shards: int, beam_options) -> None:
    """One Beam pipeline with a branch per split: encode each example, write sharded TFRecords."""
    import apache_beam as beam

    from components.fanout import beam_pipeline
    from trainer.tfrecords import encode_example

    with beam_pipeline(beam_options) as pipeline:
        for split in SPLITS:
            images, labels = dataset.arrays(split)
            os.makedirs(os.path.join(uri, split), exist_ok=True)
            _ = (
                pipeline
                | f"Read{split}" >> beam.Create([(images[i], int(labels[i])) for i in range(len(labels))], reshuffle=False)
                | f"Encode{split}" >> beam.MapTuple(encode_example)
                | f"Write{split}" >> beam.io.WriteToTFRecord(
                    os.path.join(uri, split, "data"), file_name_suffix=".tfrecord", num_shards=num_shards
                )
            )


class ExampleGenExecutor(BaseExecutor):
    """Loads the source with `trainer.sources.load_dataset` and writes it with Beam."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:  # noqa: N802
        from trainer.sources import load_dataset

        out = output_dict["examples"][0]
        p = exec_properties
        fractions = (1.0 - p["validation_fraction"] - p["test_fraction"], p["validation_fraction"], p["test_fraction"])
        self.context.progress(f"reading {p['source']}")
        dataset = load_dataset(
            p["source"], data_dir=p["data_dir"], splits=fractions, seed=p["seed"],
            max_examples=_split_caps(p["max_examples"], fractions), image_size=p["image_size"],
            skip_corrupt=p["skip_corrupt"],
        )
        self.context.progress(f"writing TFRecords with Beam: {dataset.num_examples}")
        _write_splits(dataset, out.uri, p["num_shards"], p["beam_options"])
        stats = dataset.metadata()
        stats["class_counts"] = {
            split: {
                name: int(count)
                for name, count in zip(dataset.class_names, np.bincount(dataset.arrays(split)[1], minlength=dataset.num_classes))
            }
            for split in SPLITS
        }
        stats["fingerprint"] = dataset.fingerprint()
        if p["image_size"]:  # what a user must do to their own images before the exported model
            stats["resized_to"] = [p["image_size"], p["image_size"]]
        for note in data_warnings(stats["class_counts"]):
            self.context.progress(f"note: {note}")
        with open(out.path("statistics.json"), "w") as f:
            json.dump(stats, f, indent=2)
        out.properties.update(
            {"source": p["source"], "num_examples": stats["num_examples"], "input_shape": stats["input_shape"],
             "num_classes": stats["num_classes"]}
        )

    @classmethod
    def external_fingerprint(cls, exec_properties: Mapping[str, Any]) -> str | None:
        """A folder source is re-read when its files change (names, sizes, times)."""
        source = exec_properties.get("source", "")
        if not source.startswith("folder:"):
            return None
        from trainer.files import walk_files

        root = os.path.expanduser(source[len("folder:"):])
        digest = hashlib.sha256()
        for path in walk_files(root):
            try:
                stat = os.stat(path)
                state = f"{stat.st_size}:{stat.st_mtime_ns}"
            except OSError:  # a broken link: the loader reports it; here it is a state like any other
                state = "unreadable"
            digest.update(f"{os.path.relpath(path, root)}:{state}".encode())
        return digest.hexdigest()


SMALL_EVALUATION_SPLIT = 100
"""Below this many images, one image moves a split's accuracy by more than a percentage point."""


def data_warnings(class_counts: Mapping[str, Mapping[str, int]]) -> list[str]:
    """What makes a run's comparisons weak, said before hours of training: evaluation splits
    that miss classes, or so small that one image moves their accuracy by points."""
    notes = []
    for split in ("validation", "test"):
        counts = class_counts.get(split) or {}
        total = sum(counts.values())
        missing = sorted(name for name, count in counts.items() if count == 0)
        if total and missing:
            notes.append(f"the {split} split has no images of class(es) {missing}: its accuracy says nothing "
                         "about them (give more images of them, or larger split fractions)")
        if 0 < total < SMALL_EVALUATION_SPLIT:
            notes.append(f"the {split} split has only {total} images: one image moves its accuracy by "
                         f"{100 / total:.1f} pp, so small differences between functions are noise")
    return notes


class ExampleGen(Component):
    SPEC_CLASS = ExampleGenSpec
    EXECUTOR_CLASS = ExampleGenExecutor


def read_statistics(examples: Artifact | str) -> dict[str, Any]:
    uri = examples.uri if isinstance(examples, Artifact) else examples
    with open(os.path.join(uri, "statistics.json")) as f:
        return json.load(f)


def read_examples(examples: Artifact | str):
    """The shards of an Examples artifact as an in-memory `trainer.data.Dataset`, in an order
    that depends only on the content."""
    from trainer.data import Dataset
    from trainer.tfrecords import read_tfrecords

    uri = examples.uri if isinstance(examples, Artifact) else examples
    stats = read_statistics(uri)
    shape = stats["input_shape"]
    arrays = {}
    for split in SPLITS:
        files = sorted(glob.glob(os.path.join(uri, split, "*.tfrecord")))
        pairs = list(read_tfrecords(files, shape).as_numpy_iterator()) if files else []
        # Beam does not promise an order inside shards: sort by content for a reproducible order.
        pairs.sort(key=lambda pair: hashlib.sha1(pair[0].tobytes() + bytes([pair[1] % 256])).digest())
        images = np.stack([p[0] for p in pairs]) if pairs else np.zeros((0, *shape), np.uint8)
        labels = np.array([p[1] for p in pairs], np.int32)
        arrays[split] = (images, labels)
    return Dataset(stats["source"], arrays, stats["class_names"])
