"""Image-classification data for child networks: the base of the data modules.

Every trial, final run and user run reads its data through the ``trainer`` data modules, so that
the same source string always yields the same images in the same train/validation/test split.

This module holds what the others share: the constants (schemes, splits, normalisations,
augmentations...), the errors (:class:`DataError`, :class:`CorruptImagesError`), parsed source
strings (:class:`DataSpec`, :func:`parse_source`), the :class:`Dataset` holding every split in
memory as ``uint8`` images and integer labels (child networks work on small images, and
in-memory arrays make the split, the normalisation statistics and TFRecord export exact and
cheap), and the deterministic, stratified splitting (:func:`stratified_order`).

The rest lives in:

* :mod:`trainer.sources` - :func:`~trainer.sources.load_dataset` and the readers of the
  ``embedded:``, ``tfds:`` and ``folder:`` sources,
* :mod:`trainer.input_pipeline` - :func:`~trainer.input_pipeline.make_pipeline` turns a split
  into a batched, normalised, optionally augmented ``tf.data`` pipeline that is deterministic
  given its seed,
* :mod:`trainer.tfrecords` - :func:`~trainer.tfrecords.encode_example` /
  :func:`~trainer.tfrecords.decode_example` fix the on-disk TFRecord format shared with the
  pipeline components.

Those modules import this one, never the reverse.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

SCHEMES = ("embedded", "tfds", "folder")
EMBEDDED_SETS = ("digits",)
SPLITS = ("train", "validation", "test")
NORMALIZATIONS = ("per_channel", "unit", "symmetric")
AUGMENTATIONS = ("crop_flip", "crop", "flip")
DEFAULT_SOURCE = "embedded:digits"

# Folder names (case-insensitive) recognised as splits in a `<split>/<class>/<image>` layout.
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}
_MAX_LISTED = 20  # file names quoted in an error message before "... and N more"


class DataError(ValueError):
    """A data source cannot be read as asked: the message says what is wrong and what is allowed."""


class CorruptImagesError(DataError):
    """Some image files could not be decoded; ``files`` lists every one of them."""

    def __init__(self, message: str, files: Sequence[str]):
        super().__init__(message)
        self.files = tuple(files)


# --------------------------------------------------------------------------------------------
# Source strings


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A parsed source string: ``scheme`` is one of :data:`SCHEMES`, ``target`` names the data."""

    scheme: str
    target: str

    @classmethod
    def parse(cls, source: str | DataSpec) -> DataSpec:
        """Parses ``embedded:<name>``, ``tfds:<name>`` or ``folder:<path>``; raises DataError."""
        if isinstance(source, DataSpec):
            return source
        if not isinstance(source, str) or not source.strip():
            raise DataError(
                f"data source must be a non-empty string such as {DEFAULT_SOURCE!r}, "
                f"'tfds:cifar10' or 'folder:/path/to/images'; got {source!r}"
            )
        text = source.strip()
        scheme, sep, target = text.partition(":")
        scheme = scheme.strip().lower()
        target = target.strip()
        if not sep or scheme not in SCHEMES:
            raise DataError(
                f"unknown data source scheme in {source!r}: allowed schemes are "
                f"{', '.join(s + ':' for s in SCHEMES)} (e.g. {DEFAULT_SOURCE!r}, "
                "'tfds:cifar10', 'folder:/path/to/images')"
            )
        if not target:
            raise DataError(f"data source {source!r} names no data set or folder after {scheme!r}")
        if scheme == "embedded" and target not in EMBEDDED_SETS:
            raise DataError(
                f"unknown embedded data set {target!r}: allowed are "
                f"{', '.join('embedded:' + n for n in EMBEDDED_SETS)}"
            )
        return cls(scheme, target)

    def __str__(self) -> str:
        return f"{self.scheme}:{self.target}"


def parse_source(source: str | DataSpec) -> DataSpec:
    """Parses a source string (see :class:`DataSpec`)."""
    return DataSpec.parse(source)


# --------------------------------------------------------------------------------------------
# The loaded data set


class Dataset:
    """Train/validation/test splits of one image-classification source, held in memory.

    Images are ``uint8`` arrays of shape ``(n, height, width, channels)``, labels ``int32``
    arrays of shape ``(n,)`` with values in ``[0, num_classes)``.
    """

    def __init__(
        self,
        source: str,
        splits: Mapping[str, tuple[np.ndarray, np.ndarray]],
        class_names: Sequence[str],
        *,
        skipped_files: Sequence[str] = (),
        source_images: int | None = None,
    ):
        missing = [s for s in SPLITS if s not in splits]
        if missing:
            raise DataError(f"a Dataset needs the splits {SPLITS}; missing {missing}")
        self.source = source
        self.class_names = tuple(str(c) for c in class_names)
        self.skipped_files = tuple(skipped_files)
        # How many images the source held before caps and skips (a folder's listed files), so a
        # caller need not count them again by other rules; None when the source does not know.
        self.source_images = source_images
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        shape = None
        for name in SPLITS:
            images, labels = splits[name]
            images = np.asarray(images)
            labels = np.asarray(labels).astype(np.int32, copy=False)
            if images.dtype != np.uint8 or images.ndim != 4:
                raise DataError(
                    f"split {name!r}: images must be uint8 of shape (n, height, width, channels); "
                    f"got {images.dtype} {images.shape}"
                )
            if labels.shape != (images.shape[0],):
                raise DataError(
                    f"split {name!r}: {images.shape[0]} images but labels of shape {labels.shape}"
                )
            if labels.size and (labels.min() < 0 or labels.max() >= len(self.class_names)):
                raise DataError(
                    f"split {name!r}: labels must lie in [0, {len(self.class_names)}); "
                    f"got [{labels.min()}, {labels.max()}]"
                )
            if shape is None:
                shape = images.shape[1:]
            elif images.shape[0] and images.shape[1:] != shape:
                raise DataError(f"split {name!r}: image shape {images.shape[1:]} != {shape}")
            self._arrays[name] = (images, labels)
        self.input_shape: tuple[int, int, int] = tuple(int(d) for d in shape)  # type: ignore
        self._stats: tuple[np.ndarray, np.ndarray] | None = None
        self._fingerprint: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_examples(self) -> dict[str, int]:
        return {name: int(self._arrays[name][1].shape[0]) for name in SPLITS}

    def class_counts(self) -> dict[str, dict[str, int]]:
        """``{split: {class name: examples}}``, zeros included, so a caller can report a class a
        split lacks (a folder's test split may hold a class its train split has not)."""
        counts = {}
        for name in SPLITS:
            per_class = np.bincount(self._arrays[name][1], minlength=self.num_classes)
            counts[name] = {c: int(n) for c, n in zip(self.class_names, per_class)}
        return counts

    @property
    def untrained_classes(self) -> tuple[str, ...]:
        """Classes with no train example: the model gets an output for them it never learns,
        and their validation/test accuracy is zero. Empty for a well-formed source."""
        train = self.class_counts()["train"]
        return tuple(c for c in self.class_names if train[c] == 0)

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The ``(images, labels)`` numpy arrays of one split (not copies: do not modify)."""
        return self._arrays[_check_split(split)]

    def split(self, split: str) -> tf.data.Dataset:
        """One split as a ``tf.data.Dataset`` of ``(uint8 image, int32 label)`` pairs."""
        images, labels = self.arrays(split)
        return tf.data.Dataset.from_tensor_slices((images, labels))

    @property
    def train(self) -> tf.data.Dataset:
        return self.split("train")

    @property
    def validation(self) -> tf.data.Dataset:
        return self.split("validation")

    @property
    def test(self) -> tf.data.Dataset:
        return self.split("test")

    def channel_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and standard deviation of the train split on the [0, 1] scale."""
        if self._stats is None:
            images = self._arrays["train"][0]
            if images.shape[0] == 0:
                raise DataError("cannot compute normalisation statistics: the train split is empty")
            flat = images.reshape(-1, images.shape[-1])
            total = np.zeros(flat.shape[1], np.float64)
            total_sq = np.zeros(flat.shape[1], np.float64)
            for start in range(0, flat.shape[0], 1 << 20):  # bounded float64 temporaries
                chunk = flat[start : start + (1 << 20)].astype(np.float64) / 255.0
                total += chunk.sum(axis=0)
                total_sq += np.square(chunk).sum(axis=0)
            mean = total / flat.shape[0]
            std = np.sqrt(np.maximum(total_sq / flat.shape[0] - np.square(mean), 0.0))
            # A constant channel would divide by zero; 1/255 is one grey level.
            self._stats = (mean.astype(np.float32), np.maximum(std, 1 / 255).astype(np.float32))
        return self._stats

    def fingerprint(self) -> str:
        """SHA-256 of the class names and every split's arrays: equal data, equal fingerprint.

        Computed once per Dataset (CIFAR-10 takes about 0.2 s) and kept, like `channel_stats`:
        every trial a worker process trains on its cached Dataset records it."""
        if self._fingerprint is None:
            self._fingerprint = self._hash_arrays()
        return self._fingerprint

    def _hash_arrays(self) -> str:
        digest = hashlib.sha256()
        digest.update(repr((self.class_names, self.input_shape)).encode())
        for name in SPLITS:
            images, labels = self._arrays[name]
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(images).tobytes())
            digest.update(np.ascontiguousarray(labels).astype("<i4").tobytes())
        return digest.hexdigest()

    def metadata(self) -> dict[str, Any]:
        """JSON-serialisable description (source, classes, shape, split sizes, statistics)."""
        info: dict[str, Any] = {
            "source": self.source,
            "class_names": list(self.class_names),
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "num_examples": self.num_examples,
            "class_counts": self.class_counts(),
            "untrained_classes": list(self.untrained_classes),
            "skipped_files": list(self.skipped_files),
        }
        if self.num_examples["train"]:
            mean, std = self.channel_stats()
            info["channel_mean"] = [float(v) for v in mean]
            info["channel_std"] = [float(v) for v in std]
        return info

    def __repr__(self) -> str:
        return (
            f"Dataset({self.source!r}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, num_examples={self.num_examples})"
        )


def _is_int(value: Any, minimum: int) -> bool:
    """Whether ``value`` is an integer (not a bool) of at least ``minimum``."""
    return (
        isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum
    )


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: allowed are {', '.join(SPLITS)}")
    return split


# --------------------------------------------------------------------------------------------
# Deterministic, stratified splitting


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded permutation of ``range(len(labels))`` in which every class is spread evenly.

    Each example of a class with ``n`` members gets the key ``(rank + u) / n`` (``rank`` a random
    rank inside its class, ``u`` uniform in [0, 1)); sorting by key interleaves the classes, so
    any contiguous slice of the order - a split, or the first ``k`` examples kept by a size
    limit - has close to the class proportions of the whole. Depends only on the labels (in
    their given order) and the seed, so it is stable across runs.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keys = np.empty(labels.shape[0], np.float64)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        ranks = rng.permutation(members.size)
        keys[members] = (ranks + rng.random(members.size)) / members.size
    return np.argsort(keys, kind="stable")


def _check_fractions(splits: Sequence[float]) -> dict[str, float]:
    try:
        values = [float(v) for v in splits]
    except (TypeError, ValueError):
        values = []
    if (
        len(values) != 3
        or any(not math.isfinite(v) or v < 0 for v in values)
        or values[0] <= 0
        or abs(sum(values) - 1.0) > 1e-6
    ):
        raise DataError(
            "splits must be three fractions (train, validation, test), each >= 0, train > 0, "
            f"summing to 1, e.g. (0.8, 0.1, 0.1); got {splits!r}"
        )
    return dict(zip(SPLITS, values))


def _check_caps(max_examples: int | Mapping[str, int | None] | None) -> dict[str, int | None]:
    if max_examples is None:
        return dict.fromkeys(SPLITS)
    if isinstance(max_examples, Mapping):
        unknown = set(max_examples) - set(SPLITS)
        if unknown:
            raise DataError(
                f"max_examples names unknown splits {sorted(unknown)}: allowed are {SPLITS}"
            )
        caps = {s: max_examples.get(s) for s in SPLITS}
    else:
        caps = dict.fromkeys(SPLITS, max_examples)
    for split, cap in caps.items():
        if cap is not None and not _is_int(cap, 0):
            raise DataError(
                f"max_examples for {split!r} must be a non-negative integer or None; got {cap!r}"
            )
    return {s: (None if c is None else int(c)) for s, c in caps.items()}


@dataclasses.dataclass
class _Pool:
    """Examples of one source split before they are decoded: labels plus a loader by index."""

    labels: np.ndarray
    load: Callable[[np.ndarray], Any] | None = None


def _assign(
    pool_labels: Mapping[str, np.ndarray],
    fractions: Mapping[str, float],
    caps: Mapping[str, int | None],
    seed: int,
) -> dict[str, tuple[str, np.ndarray]]:
    """Maps each split to ``(pool name, example indices)``: :func:`_plan` over each pool's
    :func:`stratified_order`."""
    orders = {name: stratified_order(labels, seed) for name, labels in pool_labels.items()}
    return _plan(orders, pool_labels, fractions, caps)


def _plan(
    orders: Mapping[str, np.ndarray],
    pool_labels: Mapping[str, np.ndarray],
    fractions: Mapping[str, float],
    caps: Mapping[str, int | None],
) -> dict[str, tuple[str, np.ndarray]]:
    """Maps each split to ``(pool name, example indices)`` given each pool's order.

    An order may leave examples of its pool out (the folder reader drops corrupt files from a
    fixed order, so the other files keep their places and a capped draw keeps its images).
    Splits the source provides are used as they are; missing validation/test splits are carved
    from ``train`` with their fractions renormalised over the carved splits (so (0.8, 0.1, 0.1)
    with a provided test split puts 1/9 of train into validation), but never a class's last
    train example (:func:`_carvable`): a class's only image goes to train. Size limits keep the
    first examples of each split's order.
    """
    if "train" not in orders:
        raise DataError(
            f"the source has the splits {sorted(orders)} but no train split to learn from"
        )
    result: dict[str, tuple[str, np.ndarray]] = {}
    carved = ["train"] + [s for s in SPLITS[1:] if s not in orders]
    for split in SPLITS:
        if split in orders and split not in carved:
            result[split] = (split, orders[split][: caps[split]])
    train_labels = pool_labels["train"]
    order = orders["train"]
    total = sum(fractions[s] for s in carved)
    n = order.size
    carvable = _carvable(order, train_labels)
    start = 0
    taken = [np.zeros(0, order.dtype)]
    # Carved splits take exact rounded shares from the head of the order (less each class's
    # last example, kept for train); train takes the rest.
    for split in carved[1:]:
        count = int(round(n * fractions[split] / total))
        part = carvable[start : start + count]
        result[split] = ("train", part[: caps[split]])
        taken.append(part)
        start += count
    rest = order[~np.isin(order, np.concatenate(taken))]
    result["train"] = ("train", _cap_keeping_classes(rest, train_labels, caps["train"]))
    return result


def _cap_keeping_classes(order: np.ndarray, labels: np.ndarray, cap: int | None) -> np.ndarray:
    """The first ``cap`` examples of ``order``, except that a class the cap would leave out
    entirely gets its first example in, in place of the last example of a class that has
    several: a tiny class of a large folder could otherwise vanish from train under
    ``max_examples``, and the model would have an output it never trains on."""
    head = order[:cap]
    if cap is None or cap <= 0 or head.size == order.size:
        return head
    labels = np.asarray(labels)
    head = head.copy()
    missing = [order[np.flatnonzero(labels[order] == cls)[0]] for cls in np.unique(labels[order])
               if not np.any(labels[head] == cls)]
    for example in missing:
        counts = np.bincount(labels[head], minlength=labels.max() + 1)
        for position in range(head.size - 1, -1, -1):
            if counts[labels[head[position]]] > 1:
                head[position] = example
                break
    return head


def _carvable(order: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``order`` without each class's last example in it: what validation/test may be carved from.

    Why: a class with one image (or a few, in a small folder) could land wholly in the carved
    head, leaving the model an output it never trains on. Each class thus keeps at least one
    train example. Classes with more than a handful of examples have their last one near the end
    of the stratified order, far past the carved head, so their split is unchanged.
    """
    ordered = np.asarray(labels)[order]
    _, first_from_end = np.unique(ordered[::-1], return_index=True)
    keep = np.ones(order.size, bool)
    keep[order.size - 1 - first_from_end] = False
    return order[keep]


def _pool_limit(
    available: Sequence[str], fractions: Mapping[str, float], caps: Mapping[str, int | None]
) -> dict[str, int | None]:
    """How many examples to read from each source split so that every size limit can be met."""
    limits: dict[str, int | None] = {}
    carved = ["train"] + [s for s in SPLITS[1:] if s not in available]
    total = sum(fractions[s] for s in carved)
    need = 0
    for split in carved:
        share = fractions[split] / total
        if share == 0:
            continue
        if caps[split] is None:
            need = None
            break
        need = max(need, math.ceil(caps[split] / share))
    limits["train"] = need
    for split in available:
        if split != "train":
            limits[split] = caps.get(split)
    return limits


def _materialise(
    pools: Mapping[str, _Pool],
    fractions: Mapping[str, float],
    caps: Mapping[str, int | None],
    seed: int,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    plan = _assign({k: p.labels for k, p in pools.items()}, fractions, caps, seed)
    return {
        split: (pools[pool].load(idx), pools[pool].labels[idx])
        for split, (pool, idx) in plan.items()
    }
