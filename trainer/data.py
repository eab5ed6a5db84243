"""Image-classification data for child networks: sources, splits, pipelines and TFRecords.

Every trial, final run and user run reads its data through this module, so that the same source
string always yields the same images in the same train/validation/test split.

Sources are named by a URI-like string:

* ``embedded:digits`` - scikit-learn's 1,797 handwritten 8x8 grey digits (ships with scikit-learn,
  no download; the default for quick runs),
* ``tfds:<name>`` - any TensorFlow Datasets image-classification set (``tfds:cifar10``,
  ``tfds:mnist``, ``tfds:cifar100``, a config such as ``tfds:name/config``),
* ``folder:<path>`` - an image folder laid out as ``<class>/<image>`` or
  ``<split>/<class>/<image>`` (how users bring their own images).

:func:`load_dataset` returns a :class:`Dataset` holding every split in memory as ``uint8`` images
and integer labels (child networks work on small images, and in-memory arrays make the split, the
normalisation statistics and TFRecord export exact and cheap). :func:`make_pipeline` turns a split
into a batched, normalised, optionally augmented ``tf.data`` pipeline that is deterministic given
its seed. :func:`encode_example` / :func:`decode_example` fix the on-disk TFRecord format shared
with the pipeline components.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import logging
import math
import os
import socket
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

SCHEMES = ("embedded", "tfds", "folder")
EMBEDDED_SETS = ("digits",)
SPLITS = ("train", "validation", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
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
    ):
        missing = [s for s in SPLITS if s not in splits]
        if missing:
            raise DataError(f"a Dataset needs the splits {SPLITS}; missing {missing}")
        self.source = source
        self.class_names = tuple(str(c) for c in class_names)
        self.skipped_files = tuple(skipped_files)
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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_examples(self) -> dict[str, int]:
        return {name: int(self._arrays[name][1].shape[0]) for name in SPLITS}

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
        """SHA-256 of the class names and every split's arrays: equal data, equal fingerprint."""
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
    """Maps each split to ``(pool name, example indices)``.

    Splits the source provides are used as they are; missing validation/test splits are carved
    from ``train`` with their fractions renormalised over the carved splits (so (0.8, 0.1, 0.1)
    with a provided test split puts 1/9 of train into validation). Size limits keep the first
    examples of each split's stratified order.
    """
    if "train" not in pool_labels:
        raise DataError(
            f"the source has the splits {sorted(pool_labels)} but no train split to learn from"
        )
    result: dict[str, tuple[str, np.ndarray]] = {}
    carved = ["train"] + [s for s in SPLITS[1:] if s not in pool_labels]
    for split in SPLITS:
        if split in pool_labels and split not in carved:
            order = stratified_order(pool_labels[split], seed)
            result[split] = (split, order[: caps[split]])
    train_labels = pool_labels["train"]
    order = stratified_order(train_labels, seed)
    total = sum(fractions[s] for s in carved)
    n = order.size
    start = 0
    # Carved splits take exact rounded shares from the head of the order; train takes the rest.
    for split in carved[1:]:
        count = int(round(n * fractions[split] / total))
        result[split] = ("train", order[start : start + count][: caps[split]])
        start += count
    result["train"] = ("train", order[start:][: caps["train"]])
    return result


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


# --------------------------------------------------------------------------------------------
# Loading


def load_dataset(
    source: str | DataSpec = DEFAULT_SOURCE,
    *,
    data_dir: str | os.PathLike | None = None,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    max_examples: int | Mapping[str, int | None] | None = None,
    image_size: int | Sequence[int] | None = None,
    download: bool = True,
    skip_corrupt: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Loads a source into a :class:`Dataset` with train, validation and test splits.

    Args:
      source: ``embedded:digits``, ``tfds:<name>`` or ``folder:<path>``.
      data_dir: TFDS data directory (``tfds:`` only; default: TFDS's own default).
      splits: (train, validation, test) fractions used for splits the source lacks: a source
        with no splits is divided three ways; a missing validation or test split is carved from
        train. Splits are stratified by class and depend only on the data and ``seed``.
      seed: seed of the split.
      max_examples: size limit for every split (an int) or per split (``{"train": 1000}``);
        kept examples are a stratified subset.
      image_size: ``(height, width)`` or one int for square images; images are resized to it.
        Required for folders or TFDS sets whose images differ in size.
      download: ``tfds:`` only - download and prepare a set that is not prepared in
        ``data_dir``. When False, or when the internet is unreachable, an unprepared set fails
        at once with a DataError instead of retrying a download for minutes.
      skip_corrupt: ``folder:`` only - skip undecodable images with a warning listing them,
        instead of raising :class:`CorruptImagesError`. Only the images the splits keep (after
        ``max_examples``) are decoded, and so checked.
      cache_dir: ``folder:`` only - keep the decoded splits in this directory as ``.npz``
        files, keyed by the folder's file list (names, sizes, modification times) and every
        argument above, so later runs and other processes skip decoding.

    Raises:
      DataError: unknown scheme, missing path, unknown TFDS name, no images, corrupt images...
    """
    spec = DataSpec.parse(source)
    fractions = _check_fractions(splits)
    caps = _check_caps(max_examples)
    size = _check_image_size(image_size)
    if not _is_int(seed, 0):
        raise DataError(f"seed must be a non-negative integer; got {seed!r}")
    if data_dir is not None and spec.scheme != "tfds":
        logger.warning("data_dir=%s is ignored for %s sources", data_dir, spec.scheme)
    if spec.scheme == "embedded":
        pools, class_names = _digits_pools(size)
        arrays = _materialise(pools, fractions, caps, seed)
        return Dataset(str(spec), arrays, class_names)
    if spec.scheme == "tfds":
        pools, class_names = _tfds_pools(spec.target, data_dir, download, fractions, caps, size)
        arrays = _materialise(pools, fractions, caps, seed)
        return Dataset(str(spec), arrays, class_names)
    return _load_folder(spec, fractions, caps, seed, size, skip_corrupt, cache_dir)


def _check_image_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        dims = (int(image_size), int(image_size))
    else:
        try:
            dims = tuple(int(d) for d in image_size)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            dims = ()
    if len(dims) != 2 or min(dims) < 1:
        raise DataError(
            f"image_size must be a positive int or (height, width); got {image_size!r}"
        )
    return dims  # type: ignore[return-value]


def _resize_arrays(images: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or images.shape[1:3] == size:
        return images
    out = []
    for start in range(0, images.shape[0], 1024):
        chunk = tf.image.resize(images[start : start + 1024], size, antialias=True)
        out.append(np.clip(np.round(chunk.numpy()), 0, 255).astype(np.uint8))
    if not out:
        return np.zeros((0, *size, images.shape[-1]), np.uint8)
    return np.concatenate(out)


def _array_pool(images: np.ndarray, labels: np.ndarray) -> _Pool:
    return _Pool(np.asarray(labels, np.int32), lambda idx: images[idx])


# embedded:digits ----------------------------------------------------------------------------


def _digits_pools(size: tuple[int, int] | None) -> tuple[dict[str, _Pool], list[str]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are counts 0..16; spread them over the uint8 range like any other image.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    images = _resize_arrays(images, size)
    names = [str(int(n)) for n in digits.target_names]
    return {"train": _array_pool(images, digits.target)}, names


# tfds:<name> --------------------------------------------------------------------------------


def internet_reachable(timeout: float = 3.0) -> bool:
    """Whether an HTTPS connection to the internet (or the configured proxy) can be opened.

    TFDS retries a failing download for minutes; this cheap probe lets an offline machine fail
    at once. Tests that mock TFDS downloads patch this function.
    """
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    host, port = "storage.googleapis.com", 443
    if proxy:
        from urllib.parse import urlsplit

        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = parts.hostname or host, parts.port or 80
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tfds_builder(name: str, data_dir: str | os.PathLike | None):
    import tensorflow_datasets as tfds

    base = name.split("/")[0].split(":")[0]
    try:
        return tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
    except tfds.core.registered.DatasetNotFoundError:
        known = tfds.list_builders(with_community_datasets=False)
        close = difflib.get_close_matches(base, known, n=5, cutoff=0.6)
        hint = f"close names: {', '.join(close)}" if close else "no close names"
        raise DataError(
            f"unknown TFDS data set {name!r} ({hint}); see tfds.list_builders() for all "
            f"{len(known)} names"
        ) from None
    except Exception as err:  # bad config or version: TFDS raises assorted errors
        raise DataError(f"cannot open TFDS data set {name!r}: {err}") from err


def _tfds_keys(name: str, info) -> tuple[str, str, Any]:
    """The image and label feature names of an image-classification TFDS set."""
    import tensorflow_datasets as tfds

    features = info.features
    keys = info.supervised_keys
    if isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys):
        image_key, label_key = keys
    else:
        images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
        labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
        image_key = images[0] if len(images) == 1 else ""
        label_key = labels[0] if len(labels) == 1 else ""
    image_feature = features[image_key] if image_key in features else None
    label_feature = features[label_key] if label_key in features else None
    if not isinstance(image_feature, tfds.features.Image) or not isinstance(
        label_feature, tfds.features.ClassLabel
    ):
        raise DataError(
            f"TFDS data set {name!r} is not an image-classification set: it needs one image "
            f"feature and one class-label feature; its features are {list(features)}"
        )
    return image_key, label_key, label_feature


def _tfds_pools(
    name: str,
    data_dir: str | os.PathLike | None,
    download: bool,
    fractions: Mapping[str, float],
    caps: Mapping[str, int | None],
    size: tuple[int, int] | None,
) -> tuple[dict[str, _Pool], list[str]]:
    builder = _tfds_builder(name, data_dir)
    image_key, label_key, label_feature = _tfds_keys(name, builder.info)
    shape = tuple(builder.info.features[image_key].shape)
    if size is None and any(d is None for d in shape[:2]):
        raise DataError(
            f"TFDS data set {name!r} has images of varying size {shape}: pass image_size=(h, w)"
        )
    if not builder.is_prepared():
        where = builder.data_dir
        if not download:
            raise DataError(
                f"TFDS data set {name!r} is not prepared in {where} and download=False: prepare "
                "it first (e.g. `tfds build` on a machine with internet, then copy its data "
                "directory) or pass data_dir= pointing to prepared data"
            )
        if not internet_reachable():
            raise DataError(
                f"TFDS data set {name!r} is not prepared in {where} and the internet is "
                "unreachable, so it cannot be downloaded: prepare it on a machine with internet "
                "and pass data_dir= pointing to a copy of its data directory"
            )
        logger.info("downloading and preparing TFDS data set %s into %s", name, where)
        try:
            builder.download_and_prepare()
        except Exception as err:
            raise DataError(f"downloading TFDS data set {name!r} failed: {err}") from err

    known = list(builder.info.splits.keys())
    available: dict[str, str] = {}  # our split name -> TFDS split name
    for tfds_split in known or list(SPLITS):  # splits unknown (mocked metadata): try ours
        ours = _SPLIT_ALIASES.get(tfds_split.lower())
        if ours and ours not in available:
            available[ours] = tfds_split
    limits = _pool_limit(list(available), fractions, caps)
    pools = {}
    for ours, tfds_split in available.items():
        images, labels = _read_tfds_split(
            builder, tfds_split, image_key, label_key, limits[ours], size
        )
        if images is None:
            continue
        pools[ours] = _array_pool(images, labels)
    return pools, list(label_feature.names)


def _read_tfds_split(builder, split, image_key, label_key, limit, size):
    try:
        ds = builder.as_dataset(split=split, shuffle_files=False)
    except (ValueError, KeyError) as err:
        logger.debug("TFDS split %s unavailable: %s", split, err)
        return None, None
    ds = ds.map(lambda ex: (ex[image_key], ex[label_key]))
    if limit is not None:
        ds = ds.take(limit)
    if size is not None:
        def resize(image, label):
            image = tf.image.resize(image, size, antialias=True)
            return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8), label

        ds = ds.map(resize)
    images, labels = [], []
    for batch_images, batch_labels in ds.batch(1024).as_numpy_iterator():
        images.append(batch_images)
        labels.append(batch_labels)
    if not images:
        spec = ds.element_spec[0]
        return np.zeros((0, *spec.shape), np.uint8), np.zeros((0,), np.int32)
    images = np.concatenate(images)
    if images.dtype != np.uint8:
        raise DataError(f"TFDS split {split!r} has {images.dtype} images; uint8 images are needed")
    return images, np.concatenate(labels).astype(np.int32)


# folder:<path> ------------------------------------------------------------------------------


def _is_image(entry: os.DirEntry) -> bool:
    return (
        not entry.name.startswith(".")
        and entry.name.lower().endswith(IMAGE_EXTENSIONS)
        and entry.is_file()
    )


def _subdirs(path: str) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        entries = [e for e in it if e.is_dir() and not e.name.startswith(".")]
    return sorted(entries, key=lambda e: e.name)


def _class_files(path: str) -> dict[str, list[str]]:
    """``{class name: sorted image paths}`` for a ``<class>/<image>`` folder (recursive)."""
    result = {}
    for entry in _subdirs(path):
        files = []
        for root, dirs, names in os.walk(entry.path, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files.extend(
                os.path.join(root, n)
                for n in names
                if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)
            )
        result[entry.name] = sorted(files)
    return result


def _load_folder(
    spec: DataSpec,
    fractions: Mapping[str, float],
    caps: Mapping[str, int | None],
    seed: int,
    size: tuple[int, int] | None,
    skip_corrupt: bool,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
    root = os.path.abspath(os.path.expanduser(spec.target))
    if not os.path.exists(root):
        raise DataError(f"image folder {spec.target!r} does not exist (resolved to {root})")
    if not os.path.isdir(root):
        raise DataError(f"image folder {spec.target!r} is not a directory")
    top = _subdirs(root)
    split_layout = bool(top) and all(e.name.lower() in _SPLIT_ALIASES for e in top)
    per_split: dict[str, dict[str, list[str]]] = {}
    if split_layout:
        for entry in top:
            ours = _SPLIT_ALIASES[entry.name.lower()]
            if ours in per_split:
                raise DataError(
                    f"image folder {root} has two folders for the {ours!r} split; keep one"
                )
            per_split[ours] = _class_files(entry.path)
    else:
        per_split["train"] = _class_files(root)
    class_names = sorted({c for classes in per_split.values() for c, f in classes.items() if f})
    with os.scandir(root) as it:
        loose = sum(1 for e in it if _is_image(e))
    if not class_names:
        layout = "<class>/<image> or <split>/<class>/<image>"
        raise DataError(
            f"image folder {root} has no images in class folders (expected {layout}; "
            f"extensions {', '.join(IMAGE_EXTENSIONS)})"
            + ("; its images sit directly in the folder, outside any class folder" if loose else "")
        )
    if loose:
        logger.warning(
            "image folder %s: %d image(s) outside any class folder are ignored", root, loose
        )
    if len(class_names) < 2:
        logger.warning("image folder %s has a single class %r", root, class_names[0])
    index = {c: i for i, c in enumerate(class_names)}
    paths: dict[str, list[str]] = {}
    pools: dict[str, _Pool] = {}
    for split, classes in per_split.items():
        files = [(f, index[c]) for c in sorted(classes) for f in classes[c] if c in index]
        if not files:
            logger.warning("image folder %s: split %r has no images and is ignored", root, split)
            continue
        missing = sorted(set(class_names) - {c for c, f in classes.items() if f})
        if missing:
            logger.warning("image folder %s: split %r lacks classes %s", root, split, missing)
        paths[split] = [f for f, _ in files]
        pools[split] = _Pool(np.array([label for _, label in files], np.int32))

    plan = _assign({k: p.labels for k, p in pools.items()}, fractions, caps, seed)
    cache_path = None
    if cache_dir is not None:
        cache_path = _folder_cache_path(
            cache_dir, root, paths, (fractions, caps, seed, size, skip_corrupt, class_names)
        )
        cached = _read_cache(cache_path, str(spec))
        if cached is not None:
            return cached
    # Decode only the images the splits keep.
    wanted = {split: [paths[pool][i] for i in idx] for split, (pool, idx) in plan.items()}
    decoded = _decode_files([f for files in wanted.values() for f in files], size)
    bad = sorted(f for f, image in decoded.items() if image is None)
    if bad:
        listed = ", ".join(os.path.relpath(f, root) for f in bad[:_MAX_LISTED])
        more = f" and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        message = f"{len(bad)} corrupt or unreadable image(s) in {root}: {listed}{more}"
        if not skip_corrupt:
            raise CorruptImagesError(message + " (pass skip_corrupt=True to skip them)", bad)
        logger.warning("skipping %s", message)
    good = [image for image in decoded.values() if image is not None]
    if not good:
        raise DataError(f"image folder {root}: no image could be decoded")
    shapes = Counter(image.shape[:2] for image in good)
    if len(shapes) > 1:
        common = ", ".join(f"{h}x{w} ({n})" for (h, w), n in shapes.most_common(5))
        raise DataError(
            f"images in {root} differ in size ({common}): pass image_size=(height, width)"
        )
    channels = max(image.shape[2] for image in good)
    height, width = next(iter(shapes))
    arrays = {}
    for split, (pool, idx) in plan.items():
        keep = [i for i, f in zip(idx, wanted[split]) if decoded[f] is not None]
        images = np.zeros((len(keep), height, width, channels), np.uint8)
        for row, f in enumerate(f for f in wanted[split] if decoded[f] is not None):
            images[row] = decoded[f]  # a grey image broadcasts over RGB channels
        arrays[split] = (images, pools[pool].labels[np.asarray(keep, np.int64)])
    dataset = Dataset(str(spec), arrays, class_names, skipped_files=bad)
    if cache_path is not None:
        _write_cache(cache_path, dataset)
    return dataset


def _folder_cache_path(cache_dir, root: str, paths: Mapping[str, list[str]], options) -> str:
    digest = hashlib.sha256(repr((root, sorted(paths), options)).encode())
    for split in sorted(paths):
        for path in paths[split]:
            info = os.stat(path)
            digest.update(f"{split}\0{path}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    name = f"folder-{os.path.basename(root) or 'root'}-{digest.hexdigest()[:20]}.npz"
    return os.path.join(os.fspath(cache_dir), name)


def _read_cache(path: str, source: str) -> Dataset | None:
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {s: (saved[f"{s}_images"], saved[f"{s}_labels"]) for s in SPLITS}
            class_names = [str(c) for c in saved["class_names"]]
            skipped = [str(f) for f in saved["skipped_files"]]
    except (OSError, ValueError, KeyError) as err:
        logger.warning("ignoring unreadable data cache %s: %s", path, err)
        return None
    if skipped:
        logger.warning(
            "skipping %d corrupt image(s) (cached): %s", len(skipped), ", ".join(skipped)
        )
    logger.info("read decoded images from cache %s", path)
    return Dataset(source, arrays, class_names, skipped_files=skipped)


def _write_cache(path: str, dataset: Dataset) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    payload = {"class_names": np.array(dataset.class_names, dtype=str),
               "skipped_files": np.array(dataset.skipped_files, dtype=str)}
    for split in SPLITS:
        payload[f"{split}_images"], payload[f"{split}_labels"] = dataset.arrays(split)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **payload)
    os.replace(tmp, path)  # atomic: concurrent readers see the whole file or none


def _decode_file(path: str, size: tuple[int, int] | None) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            grey = image.mode in ("1", "L", "LA", "I", "I;16", "F")
            if image.mode in ("P", "PA"):  # palette images (GIF, some PNG): grey or colour?
                rgb = np.asarray(image.convert("RGB"))
                grey = bool(np.all(rgb == rgb[..., :1]))
            image = image.convert("L" if grey else "RGB")
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        logger.debug("cannot decode %s: %s", path, err)
        return None
    return array[..., None] if array.ndim == 2 else array


def _decode_files(
    files: Sequence[str], size: tuple[int, int] | None
) -> dict[str, np.ndarray | None]:
    workers = min(8, os.cpu_count() or 1)
    if len(files) < 64 or workers == 1:
        return {f: _decode_file(f, size) for f in files}
    with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while decoding
        return dict(zip(files, pool.map(lambda f: _decode_file(f, size), files, chunksize=64)))


# --------------------------------------------------------------------------------------------
# tf.data pipelines


def make_pipeline(
    data: Dataset | tf.data.Dataset,
    *,
    split: str = "train",
    batch_size: int,
    training: bool | None = None,
    augment: bool | str = False,
    normalize: str = "per_channel",
    stats: tuple[Sequence[float], Sequence[float]] | None = None,
    cache: bool = True,
    shuffle_buffer: int | None = None,
    seed: int = 0,
    drop_remainder: bool = False,
    pad: int | None = None,
    input_shape: Sequence[int] | None = None,
) -> tf.data.Dataset:
    """A batched ``tf.data`` pipeline of ``(float32 images, int32 labels)`` for one split.

    Steps: decode (when ``data`` yields serialized examples), cache, shuffle (training only),
    batch, augment (training only), normalise, prefetch. Shuffling and augmentation are seeded
    (stateless random ops fed from a seeded stream), so two pipelines built with the same seed
    yield the same batches epoch after epoch, while each epoch differs from the last.

    Args:
      data: a :class:`Dataset` (its ``split`` is used), or a ``tf.data.Dataset`` of
        ``(uint8 image, label)`` pairs or of serialized examples (then ``input_shape`` is needed).
      split: which split of a :class:`Dataset`.
      batch_size: examples per batch.
      training: shuffle and (if asked) augment; default: ``split == "train"``.
      augment: False, True (= "crop_flip"), "crop_flip", "crop" or "flip"; the standard CIFAR
        augmentation pads ``pad`` black pixels on each side, crops back at a random offset and
        flips horizontally with probability 1/2. Applied only when training.
      normalize: "per_channel" ((x - mean) / std with the train split's per-channel statistics,
        or ``stats``), "unit" (x / 255) or "symmetric" (x / 127.5 - 1).
      stats: (mean, std) per channel on the [0, 1] scale; default: the Dataset's train split.
      cache: cache the undecoded-then-decoded examples in memory (a Dataset's splits already
        live in memory, so this only matters for ``tf.data`` input such as TFRecords).
      shuffle_buffer: default: the whole split for a Dataset, 10,000 otherwise.
      seed: seed of shuffling and augmentation.
      drop_remainder: drop a last, smaller batch.
      pad: padding of the crop augmentation; default: height / 8 (4 for 32x32 images).
      input_shape: image shape of serialized input.
    """
    if not _is_int(batch_size, 1):
        raise DataError(f"batch_size must be a positive integer; got {batch_size!r}")
    if normalize not in NORMALIZATIONS:
        raise DataError(f"unknown normalize {normalize!r}: allowed are {', '.join(NORMALIZATIONS)}")
    if augment is True:
        augment = "crop_flip"
    if augment is not False and augment not in AUGMENTATIONS:
        raise DataError(
            f"unknown augment {augment!r}: allowed are False, True, {', '.join(AUGMENTATIONS)}"
        )
    training = (split == "train") if training is None else bool(training)
    if isinstance(data, Dataset):
        ds = data.split(split)
        shape = data.input_shape
        if stats is None and normalize == "per_channel":
            stats = data.channel_stats()
        if shuffle_buffer is None:
            shuffle_buffer = max(1, data.num_examples[_check_split(split)])
        cache = False  # already in memory; caching would only copy it
    elif isinstance(data, tf.data.Dataset):
        ds = data
        if isinstance(ds.element_spec, tf.TensorSpec) and ds.element_spec.dtype == tf.string:
            if input_shape is None:
                raise DataError("serialized examples need input_shape=(height, width, channels)")
            shape = tuple(int(d) for d in input_shape)
            ds = ds.map(lambda x: decode_example(x, shape), num_parallel_calls=tf.data.AUTOTUNE)
        else:
            shape = tuple(ds.element_spec[0].shape)
        if stats is None and normalize == "per_channel":
            raise DataError(
                "normalize='per_channel' on a tf.data input needs stats=(mean, std) from the "
                "train split (Dataset.channel_stats())"
            )
        if shuffle_buffer is None:
            shuffle_buffer = 10_000
    else:
        raise DataError(f"data must be a Dataset or a tf.data.Dataset; got {type(data).__name__}")
    channels = shape[-1]
    if stats is not None:
        mean = np.asarray(stats[0], np.float32).reshape(-1)
        std = np.asarray(stats[1], np.float32).reshape(-1)
        if mean.shape != (channels,) or std.shape != (channels,) or np.any(std <= 0):
            raise DataError(
                f"stats must be (mean, std) with {channels} values each and std > 0; got {stats!r}"
            )
    if pad is None:
        pad = max(1, int(round(shape[0] / 8)))

    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(int(shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if training and augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, seeds))
        mode = augment

        def augment_batch(batch, key):
            images, labels = batch
            return _augment(images, key, mode, pad), labels

        ds = ds.map(augment_batch, num_parallel_calls=tf.data.AUTOTUNE)

    def normalise(images, labels):
        x = tf.cast(images, tf.float32)
        if normalize == "per_channel":
            x = (x / 255.0 - mean) / std
        elif normalize == "unit":
            x = x / 255.0
        else:
            x = x / 127.5 - 1.0
        return x, tf.cast(labels, tf.int32)

    ds = ds.map(normalise, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _augment(images: tf.Tensor, key: tf.Tensor, mode: str, pad: int) -> tf.Tensor:
    """Pad-and-crop and/or horizontal flip of a batch, per image, from a stateless seed."""
    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    key = tf.cast(key, tf.int64)
    if mode in ("crop_flip", "crop"):
        padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        offsets = tf.random.stateless_uniform(
            [2, batch], seed=tf.stack([key, 1]), minval=0, maxval=2 * pad + 1, dtype=tf.int32
        )
        rows = offsets[0][:, None] + tf.range(height)[None, :]
        cols = offsets[1][:, None] + tf.range(width)[None, :]
        images = tf.gather(padded, rows, axis=1, batch_dims=1)
        images = tf.gather(images, cols, axis=2, batch_dims=1)
    if mode in ("crop_flip", "flip"):
        flip = tf.random.stateless_uniform([batch], seed=tf.stack([key, 2])) < 0.5
        images = tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    return images


# --------------------------------------------------------------------------------------------
# TFRecord format shared with the pipeline components

_FEATURES = {
    "image/raw": tf.io.FixedLenFeature([], tf.string),
    "image/shape": tf.io.FixedLenFeature([3], tf.int64),
    "label": tf.io.FixedLenFeature([], tf.int64),
}


def encode_example(image: np.ndarray, label: int) -> bytes:
    """Serializes one image (uint8, height x width x channels) and its label as a tf.train.Example.

    The image is stored as raw bytes with its shape, which decodes faster than PNG and needs no
    TensorFlow ops, so Beam workers can call this on plain numpy arrays.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3:
        raise DataError(
            f"encode_example needs a uint8 image of shape (height, width, channels); "
            f"got {image.dtype} {image.shape}"
        )
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/raw": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[np.ascontiguousarray(image).tobytes()])
                ),
                "image/shape": tf.train.Feature(int64_list=tf.train.Int64List(value=image.shape)),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
            }
        )
    )
    return example.SerializeToString()


def decode_example(
    serialized: bytes | tf.Tensor, input_shape: Sequence[int]
) -> tuple[tf.Tensor, tf.Tensor]:
    """Parses one :func:`encode_example` record into ``(uint8 image, int32 label)`` tensors.

    Works eagerly and inside ``tf.data`` maps; a record whose stored shape differs from
    ``input_shape`` fails with an InvalidArgumentError naming both shapes.
    """
    shape = [int(d) for d in input_shape]
    parsed = tf.io.parse_single_example(serialized, _FEATURES)
    check = tf.debugging.assert_equal(
        parsed["image/shape"],
        tf.constant(shape, tf.int64),
        message=f"stored image shape differs from input_shape {tuple(shape)}",
    )
    with tf.control_dependencies([check]):
        image = tf.reshape(tf.io.decode_raw(parsed["image/raw"], tf.uint8), shape)
    return image, tf.cast(parsed["label"], tf.int32)


def write_tfrecords(
    examples: tuple[np.ndarray, np.ndarray] | tf.data.Dataset,
    path_prefix: str | os.PathLike,
    num_shards: int = 1,
) -> list[str]:
    """Writes ``(images, labels)`` arrays (e.g. ``Dataset.arrays("train")``) or a tf.data
    dataset of pairs as ``<prefix>-00000-of-0000N.tfrecord`` shards, in order, in contiguous
    blocks (so reading the sorted shards back gives the original order). Returns the paths."""
    if not _is_int(num_shards, 1):
        raise DataError(f"num_shards must be a positive integer; got {num_shards!r}")
    if isinstance(examples, tf.data.Dataset):
        pairs = list(examples.as_numpy_iterator())
        images = np.stack([p[0] for p in pairs]) if pairs else np.zeros((0, 1, 1, 1), np.uint8)
        labels = np.array([p[1] for p in pairs], np.int64)
    else:
        images, labels = (np.asarray(a) for a in examples)
    prefix = os.fspath(path_prefix)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    paths = []
    for shard, block in enumerate(np.array_split(np.arange(len(labels)), num_shards)):
        path = f"{prefix}-{shard:05d}-of-{num_shards:05d}.tfrecord"
        with tf.io.TFRecordWriter(path) as writer:
            for i in block:
                writer.write(encode_example(images[i], int(labels[i])))
        paths.append(path)
    return paths


def read_tfrecords(pattern: str | Sequence[str], input_shape: Sequence[int]) -> tf.data.Dataset:
    """Reads shards written by :func:`write_tfrecords` (or the ExampleGen component) in sorted
    file order as a ``tf.data.Dataset`` of ``(uint8 image, int32 label)`` pairs."""
    patterns = [pattern] if isinstance(pattern, (str, os.PathLike)) else list(pattern)
    files = sorted({f for p in patterns for f in tf.io.gfile.glob(os.fspath(p))})
    if not files:
        raise DataError(f"no TFRecord files match {pattern!r}")
    shape = tuple(int(d) for d in input_shape)
    return tf.data.TFRecordDataset(files).map(
        lambda x: decode_example(x, shape), num_parallel_calls=tf.data.AUTOTUNE
    )
