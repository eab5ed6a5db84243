"""ExampleGen: reads a data source once and writes its splits as TFRecord shards.

Every later step reads the same shards, so a search, the final runs and the evaluation see exactly
the same train/validation/test split. The shards are written by an Apache Beam pipeline (the
runner is an option), and `statistics.json` beside them records counts per class and split, the
image shape, the normalisation statistics, how many images the source held against how many were
kept (`found_images`, `summary`), and the notes on weak data with the loader's warnings (`notes`,
`untrained_classes`): the terminal shows those once, the report on every run.

Artifact layout::

    <uri>/<split>/data-<shard>-of-<n>.tfrecord
    <uri>/statistics.json
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from typing import Any, Iterator, Mapping, Sequence

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
        from trainer.sources import UNTRAINED_WARNING, load_dataset

        out = output_dict["examples"][0]
        p = exec_properties
        fractions = (1.0 - p["validation_fraction"] - p["test_fraction"], p["validation_fraction"], p["test_fraction"])
        self.context.progress(f"reading {p['source']}")
        with LoaderWarnings() as loader:
            dataset = load_dataset(
                p["source"], data_dir=p["data_dir"], splits=fractions, seed=p["seed"],
                max_examples=_split_caps(p["max_examples"], fractions), image_size=p["image_size"],
                skip_corrupt=p["skip_corrupt"],
            )
        found = found_images(dataset, p["max_examples"])
        summary = kept_summary(found, dataset.num_classes, dataset.num_examples, p["max_examples"],
                               len(dataset.skipped_files))
        self.context.progress(summary)
        self.context.progress("writing TFRecords with Beam")
        _write_splits(dataset, out.uri, p["num_shards"], p["beam_options"])
        stats = data_statistics(dataset, p["image_size"])
        stats.update(found_images=found, max_examples=p["max_examples"], summary=summary)
        weak = data_warnings(stats["class_counts"], stats["untrained_classes"])
        for index, note in enumerate(weak):
            serious = index == 0 and stats["untrained_classes"]  # data_warnings puts it first
            self.context.progress(f"{'WARNING' if serious else 'note'}: {note}")
        # Kept with the data: the terminal shows them once, a cached re-run never again.
        stats["notes"] = weak + [f"the loader warned: {message}" for message in loader.messages
                                 if UNTRAINED_WARNING not in message]  # said first, above
        with open(out.path("statistics.json"), "w") as f:
            json.dump(stats, f, indent=2)
        out.properties.update(
            {"source": p["source"], "num_examples": stats["num_examples"], "input_shape": stats["input_shape"],
             "num_classes": stats["num_classes"]}
        )

    @classmethod
    def external_fingerprint(cls, exec_properties: Mapping[str, Any]) -> str | None:
        """A folder source is re-read when the images the loader reads change (names, sizes,
        times). Other files (notes.txt, Thumbs.db, desktop.ini) are left out: touching one must
        not re-run hours of search. Only `stat`, never the content: it runs on every cached run."""
        source = exec_properties.get("source", "")
        if not source.startswith("folder:"):
            return None
        root = _folder_root(source)
        digest = hashlib.sha256()
        for path in image_files(root):
            try:
                stat = os.stat(path)
                state = f"{stat.st_size}:{stat.st_mtime_ns}"
            except OSError:  # a broken link: the loader reports it; here it is a state like any other
                state = "unreadable"
            digest.update(f"{os.path.relpath(path, root)}:{state}".encode())
        return digest.hexdigest()


def data_statistics(dataset, image_size: int | None) -> dict[str, Any]:
    """The Dataset's metadata (counts per split and class, the classes with no training image...)
    with its fingerprint and the resize a user must repeat on their own images."""
    stats = dataset.metadata()
    stats["fingerprint"] = dataset.fingerprint()
    if image_size:  # what a user must do to their own images before the exported model
        stats["resized_to"] = [image_size, image_size]
    return stats


def _folder_root(source: str) -> str:
    return os.path.normpath(os.path.expanduser(source[len("folder:"):]))


def image_files(root: str) -> Iterator[str]:
    """The image files under `root` (the loader's extensions, every file its walk could reach: a
    superset of what it reads, so a change to any of them changes the cache key). From
    `trainer.files`, free of TensorFlow: the key is computed on every cached run."""
    from trainer.files import IMAGE_EXTENSIONS, walk_files

    return (path for path in walk_files(root) if path.lower().endswith(IMAGE_EXTENSIONS))


def found_images(dataset, max_examples: int | None) -> int | None:
    """How many images the source holds, before `max_examples` keeps a subset; None when that is
    not known without reading the whole source (a capped TFDS set).

    The loader's own count (`Dataset.source_images`, a folder's listed images) comes first: a
    walk of our own by other rules (loose images in split folders, a file reached through two
    links, links the loader refuses) once said "found 14, kept 19"."""
    if dataset.source_images is not None:
        return dataset.source_images
    if max_examples is None:  # nothing was capped: everything read was kept or skipped
        return sum(dataset.num_examples.values()) + len(dataset.skipped_files)
    return None


def kept_summary(found: int | None, num_classes: int, kept: Mapping[str, int], max_examples: int | None,
                 skipped: int = 0) -> str:
    """One line saying how much of the source a run uses: a `--max_examples` cap or skipped
    images are otherwise invisible next to the split sizes."""
    per_split = ", ".join(f"{kept[split]} {split}" for split in SPLITS)
    cap = "no cap" if max_examples is None else f"max_examples={max_examples}"
    if found is None:
        head = f"the source has {num_classes} classes (its image count is unknown: the cap limited the reading)"
    else:
        head = f"found {found} images in {num_classes} classes"
    corrupt = f"; {skipped} skipped as corrupt" if skipped else ""
    return f"{head}; kept {sum(kept.values())} ({per_split}; {cap}){corrupt}"


class LoaderWarnings(logging.Handler):
    """Collects what the `trainer` data modules log as warnings while loading (empty class
    folders, loose images, skipped corrupt files...), so statistics.json keeps them.

    The terminal still shows each as it happens, also when the load then fails: with no other
    handler for them, Python's last-resort handler printed them, and this handler alone would
    silence it, so it passes them on to it."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []
        self._echo = False

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.messages:
            self.messages.append(message)
        if self._echo and logging.lastResort is not None:
            logging.lastResort.handle(record)

    def __enter__(self) -> "LoaderWarnings":
        logger = logging.getLogger("trainer")
        self._echo = not logger.hasHandlers()
        logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("trainer").removeHandler(self)


SMALL_EVALUATION_SPLIT = 100
"""Below this many images, one image moves a split's accuracy by more than a percentage point."""


def data_warnings(class_counts: Mapping[str, Mapping[str, int]], untrained: Sequence[str]) -> list[str]:
    """What makes a run's comparisons weak, said before hours of training, worst first: classes
    the model never trains on (`untrained`: `Dataset.untrained_classes`), evaluation splits that
    miss classes, or so small that one image moves their accuracy by points."""
    notes = []
    untrained = list(untrained)
    if untrained:
        notes.append(f"the train split has no images of class(es) {untrained}: the model has an output for "
                     "each that it never trained on, so every image of them is misclassified (give training "
                     "images of them, or remove their folders)")
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
