"""Reading data sources: :func:`load_dataset` and the reader of each source kind.

Sources are named by a URI-like string:

* ``embedded:digits`` - scikit-learn's 1,797 handwritten 8x8 grey digits (ships with scikit-learn,
  no download; the default for quick runs),
* ``tfds:<name>`` - any TensorFlow Datasets image-classification set (``tfds:cifar10``,
  ``tfds:mnist``, ``tfds:cifar100``, a config such as ``tfds:name/config``),
* ``folder:<path>`` - an image folder laid out as ``<class>/<image>`` or
  ``<split>/<class>/<image>`` (how users bring their own images).

:func:`load_dataset` returns a :class:`trainer.data.Dataset` holding every split in memory as
``uint8`` images and integer labels, split deterministically by :mod:`trainer.data`.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import logging
import os
import socket
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import tensorflow as tf

from trainer.data import (
    _MAX_LISTED,
    _SPLIT_ALIASES,
    DEFAULT_SOURCE,
    SPLITS,
    CorruptImagesError,
    DataError,
    Dataset,
    DataSpec,
    _check_caps,
    _check_fractions,
    _is_int,
    _materialise,
    _plan,
    _Pool,
    _pool_limit,
    stratified_order,
)
from trainer.files import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

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
      source: ``embedded:digits``, ``tfds:<name>`` or ``folder:<path>``. A folder is
        ``<class>/<image>`` or ``<split>/<class>/<image>`` with split folders named
        ``train``/``training``, ``val``/``valid``/``validation``/``dev``, ``test``/``testing``
        (any case); images in sub-folders of a class folder belong to it (with a warning), a
        directory link (a linked class folder too) is followed only out of the folder, an image
        in several splits (through links) is kept in the first of train, validation, test (with
        a warning), and a folder whose top-level folders hold no images but alike-named
        sub-folders (unrecognised split names) is refused. Files: ``IMAGE_EXTENSIONS``; EXIF
        orientation is applied. ``Dataset.source_images`` counts the images listed.
      data_dir: TFDS data directory (``tfds:`` only; default: TFDS's own default).
      splits: (train, validation, test) fractions used for splits the source lacks: a source
        with no splits is divided three ways; a missing validation or test split is carved from
        train. Splits are stratified by class and depend only on the data and ``seed``.
      seed: seed of the split.
      max_examples: a cap PER SPLIT: an int caps each of train, validation and test (``1000``
        keeps up to 3000 examples in all), a dict caps the splits it names (``{"train": 1000}``);
        kept examples are a stratified subset. The CLI's ``--max_examples`` differs: it caps the
        examples kept in all and divides them among the splits by their fractions (the
        ExampleGen component turns it into such a dict), so the same number keeps about a
        third as much there.
      image_size: ``(height, width)`` or one int for square images; images are resized to it,
        stretched to exactly that size (the aspect ratio is not kept: crop or pad them yourself
        first if it matters) with a bilinear filter: PIL's ``BILINEAR`` for folders, antialiased
        ``tf.image.resize`` for the other sources. Required for folders or TFDS sets whose
        images differ in size. A folder mixing grey and colour images gives 3 channels, each grey
        image copied into all three; alpha channels are dropped (not composited).
      download: ``tfds:`` only - download and prepare a set that is not prepared in
        ``data_dir``. When False, or when the internet is unreachable, an unprepared set fails
        at once with a DataError instead of retrying a download for minutes.
      skip_corrupt: ``folder:`` only - skip undecodable images with a warning listing them,
        instead of raising :class:`CorruptImagesError`. Only the images the splits keep (after
        ``max_examples``) are decoded, and so checked; a skipped image leaves the split order
        and the next images in it take its place, and a class left with no decodable image is
        dropped with a warning.
      cache_dir: ``folder:`` only - keep the decoded splits in this directory as ``.npz``
        files, keyed by the folder's file list (names, sizes, modification times) and every
        argument above, so later runs and other processes skip decoding.

    A class with few examples keeps at least one in train when validation/test are carved. A
    class with no train example at all (a folder's train split lacking a class its test split
    has) is kept with a warning and listed in ``Dataset.untrained_classes``; in a folder, fewer
    than 2 classes with train examples is an error.

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
        held = sum(pool.labels.size for pool in pools.values())
        return Dataset(str(spec), arrays, class_names, source_images=held)
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


DIGITS_SCALE = 255.0 / 16.0
"""``embedded:digits`` holds scikit-learn's pixel counts (0..16) times this, rounded to uint8."""


def _digits_pools(size: tuple[int, int] | None) -> tuple[dict[str, _Pool], list[str]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are counts 0..16; spread them over the uint8 range like any other image.
    images = np.round(digits.images * DIGITS_SCALE).astype(np.uint8)[..., None]
    images = _resize_arrays(images, size)
    names = [str(int(n)) for n in digits.target_names]
    return {"train": _array_pool(images, digits.target)}, names


def pixel_encoding(source: str | DataSpec) -> dict[str, Any]:
    """How the source's own pixel values became the uint8 0..255 pixels a :class:`Dataset` holds:
    ``source_range`` (the values as the source itself gives them), ``scale`` (the factor they were
    multiplied by before rounding to uint8) and a ``note`` saying so in words.

    A model trained on the data takes the 0..255 pixels, so a user feeding the source's own images
    must apply the same scaling; declared here, beside the readers, so it cannot drift from them.
    """
    spec = DataSpec.parse(source)
    if spec.scheme == "embedded":
        return {"source_range": [0, 16], "scale": DIGITS_SCALE,
                "note": ("scikit-learn's load_digits().images hold 0..16: multiply them by 255/16 and round "
                         "to get the 0..255 pixels trained on (np.round(images * 255 / 16)[..., None], one "
                         "channel)")}
    if spec.scheme == "tfds":
        return {"source_range": [0, 255], "scale": 1.0,
                "note": "the TFDS images as TFDS gives them (uint8, 0..255)"}
    return {"source_range": [0, 255], "scale": 1.0,
            "note": ("the folder's image files decoded to 8-bit pixels (0..255) as PIL reads them; "
                     "16-bit and 0..1 float grey files were scaled to 0..255")}


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
            f"TFDS data set {name!r} has images of varying size {shape}: pass image_size=(h, w) "
            "(--image_size=N on the command line)"
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

_Listing = dict[str, dict[str, list[str]]]
"""``{split: {class name: sorted image paths}}`` of a folder source."""

_CACHE_FORMAT = 3
"""Part of the decode cache key: bumped when the same files and arguments give other splits."""


_UNREADABLE_EXTENSIONS = tuple(e for e in (".webp",) if e not in IMAGE_EXTENSIONS)
"""Image files this PIL build cannot decode (WebP without libwebp): named in a warning."""


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _is_image(entry: os.DirEntry) -> bool:
    return _is_image_name(entry.name) and entry.is_file()


def _subdirs(path: str) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        entries = [e for e in it if e.is_dir() and not e.name.startswith(".")]
    return sorted(entries, key=lambda e: e.name)


def _loose_images(path: str) -> int:
    """Images directly in ``path`` (the root or a split folder), outside any class folder."""
    with os.scandir(path) as it:
        return sum(1 for e in it if _is_image(e))


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class _Walker:
    """Lists class folders, sub-folders included, following links only out of the tree.

    Sub-folders of a class folder belong to it, so they are read: a user's ``cat/2019/*.jpg``
    beside images directly in ``cat/``, or ``cat/2019`` and ``dog/2020``. (Class folders that
    hold no images of their own but alike-named sub-folders, ``cat/2019`` and ``dog/2019``, look
    like an unrecognised ``<split>/<class>/<image>`` layout and are refused by
    :func:`_refuse_unnamed_splits`.)
    A directory link is skipped (and named in a warning) when its target lies in a class folder
    or a folder already read through another link (its files are read there), or contains one
    of those or the root (``ln -s .. cat/up`` would make every image of every class a cat too,
    and a link up the tree is a cycle). A class folder that is itself a link is checked the same
    way: ``test/cat -> ../train/cat`` would put the same images in train and test.
    """

    def __init__(self, root: str, class_folders: Sequence[str]):
        self.root = os.path.realpath(root)
        # Only real class folders claim their tree: a linked one must pass `_follow` like others.
        self.claimed = [os.path.realpath(f) for f in class_folders if not os.path.islink(f)]
        self.visited: set[str] = set()
        self.skipped_links: list[str] = []
        self.unreadable: list[str] = []
        self.real: dict[str, str] = {}

    def _follow(self, link: str) -> bool:
        real = os.path.realpath(link)
        seen = [*self.claimed, *self.visited]
        refused = _within(self.root, real) or any(_within(real, d) or _within(d, real) for d in seen)
        if refused:
            self.skipped_links.append(link)
        else:
            self.visited.add(real)
        return not refused

    def images(self, folder: str) -> list[str]:
        """Sorted image paths under ``folder`` (one class folder), hidden entries skipped; each
        one's real path goes to :attr:`real` (``realpath`` runs for links only: it costs a
        system call per path component, 2 s on CIFAR-10's 50,000 files)."""
        if os.path.islink(folder) and not self._follow(folder):
            return []
        self.visited.add(os.path.realpath(folder))
        found = []
        pending = [(folder, os.path.realpath(folder))]
        while pending:
            path, real = pending.pop()
            for entry in self._entries(path):
                if entry.is_dir():
                    if not entry.is_symlink():
                        pending.append((entry.path, os.path.join(real, entry.name)))
                    elif self._follow(entry.path):
                        pending.append((entry.path, os.path.realpath(entry.path)))
                elif _is_image_name(entry.name):  # broken links too: reported as unreadable
                    found.append(entry.path)
                    linked = entry.is_symlink()
                    self.real[entry.path] = os.path.realpath(entry.path) if linked else os.path.join(real, entry.name)
                elif entry.name.lower().endswith(_UNREADABLE_EXTENSIONS):
                    self.unreadable.append(entry.path)
        return sorted(found)

    @staticmethod
    def _entries(path: str) -> list[os.DirEntry]:
        try:
            with os.scandir(path) as it:
                return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as err:
            logger.warning("cannot read folder %s, its images are left out: %s", path, err)
            return []


def _folder_root(spec: DataSpec) -> str:
    root = os.path.abspath(os.path.expanduser(spec.target))
    if not os.path.exists(root):
        raise DataError(f"image folder {spec.target!r} does not exist (resolved to {root})")
    if not os.path.isdir(root):
        raise DataError(f"image folder {spec.target!r} is not a directory")
    return root


def _split_folders(root: str) -> dict[str, str] | None:
    """``{split: folder path}`` when ``root`` holds only split folders (``<split>/<class>/<image>``),
    None for a ``<class>/<image>`` folder; refuses mixes, doubles and a missing train split."""
    top = _subdirs(root)
    named = [e.name for e in top if e.name.lower() in _SPLIT_ALIASES]
    if len(named) >= 2 and len(named) < len(top):
        others = [e.name for e in top if e.name.lower() not in _SPLIT_ALIASES]
        raise DataError(
            f"image folder {root} mixes split folders ({', '.join(named)}) with other folders "
            f"({', '.join(others)}): read as <class>/<image>, every split would become a class. Keep only "
            "the split folders (<split>/<class>/<image>) or only class folders (<class>/<image>)"
        )
    if not top or len(named) < len(top):
        return None
    found: dict[str, str] = {}
    for entry in top:
        ours = _SPLIT_ALIASES[entry.name.lower()]
        if ours in found:
            raise DataError(
                f"image folder {root} has two folders for the {ours!r} split "
                f"({os.path.basename(found[ours])}, {entry.name}); keep one"
            )
        found[ours] = entry.path
    if "train" not in found:
        accepted = ", ".join(a for a, s in _SPLIT_ALIASES.items() if s == "train")
        raise DataError(
            f"image folder {root} has the split folders {', '.join(named)} but no train split to "
            f"learn from: name the training images' folder one of {accepted} (any case), beside them"
        )
    return found


def _refuse_unnamed_splits(root: str, classes: Mapping[str, list[str]]) -> None:
    """Refuses a ``<class>/<image>`` reading of what looks like ``<split>/<class>/<image>``.

    Why: ``kaggle/{training_set,test_set}/{cat,dog}`` (split names not in the recognised list),
    or a folder one level above the data, would read as the classes ``test_set`` and
    ``training_set``, and training "succeeds" on a meaningless task. The sign: most images sit in
    sub-folders of the top-level folders, and those sub-folders repeat their names across
    top-level folders. "Most", not "all": one stray image in ``training_set/`` used to switch
    the check off.
    """
    inner: dict[str, Counter] = {}
    direct = nested = 0
    for name, files in classes.items():
        folder = os.path.join(root, name)
        held = Counter()
        for f in files:
            rel = os.path.relpath(os.path.dirname(f), folder)
            if rel == os.curdir:
                direct += 1
            else:
                nested += 1
                held[rel.split(os.sep)[0]] += 1
        inner[name] = held
    # One pass: list.count per name took 32 s for 50,000 one-image folders.
    counts = Counter(n for held in inner.values() for n in held)
    repeated = sorted(n for n, count in counts.items() if count >= 2)
    if not repeated or nested <= direct:
        return
    tops = sorted(n for n, held in inner.items() if held)
    example = max(tops, key=lambda n: ("train" in n.lower(), sum(inner[n].values())))
    listed = ", ".join(repeated[:_MAX_LISTED]) + (" ..." if len(repeated) > _MAX_LISTED else "")
    raise DataError(
        f"image folder {root} looks like <split>/<class>/<image> with split folders that are not "
        f"recognised: {nested} of its {nested + direct} images sit in sub-folders of {', '.join(tops)} "
        f"named alike ({listed}), so {', '.join(map(repr, tops))} would become the classes. "
        f"Rename the split folders (recognised: {', '.join(_SPLIT_ALIASES)}; any case), or point "
        f"folder: at one of them (e.g. folder:{os.path.join(root, example)}). If they really are "
        "classes whose images are sorted into sub-folders, move the images into the class folders."
    )


def _one_class_per_file(
    root: str, listing: _Listing, folders: Mapping[str, Mapping[str, str]], real: Mapping[str, str]
) -> _Listing:
    """The listing with each real file once per split. A file reached (through file links) from
    several classes stays only in the class folder that really holds it; when none or several do
    its class is ambiguous, so it is left out, with a warning."""
    result: _Listing = {}
    ambiguous: list[str] = []
    for split, classes in listing.items():
        owners: dict[str, set[str]] = {}
        for name, files in classes.items():
            for f in files:
                owners.setdefault(real[f], set()).add(name)
        owner: dict[str, str | None] = {}
        for path, names in owners.items():
            if len(names) > 1:
                holders = [n for n in names if _within(path, os.path.realpath(folders[split][n]))]
                names = set(holders) if len(holders) == 1 else set()
                if not names:
                    ambiguous.append(path)
            owner[path] = next(iter(names), None)
        result[split] = {name: _unique_files(files, name, owner, real) for name, files in classes.items()}
    if ambiguous:
        logger.warning(
            "image folder %s: %d image(s) linked into several class folders are left out (their class "
            "is ambiguous): %s", root, len(ambiguous), ", ".join(sorted(ambiguous)[:_MAX_LISTED]),
        )
    return result


def _one_split_per_file(root: str, listing: _Listing, real: Mapping[str, str]) -> _Listing:
    """The listing with each real file in one split only: the first of train, validation, test
    that holds it, with a warning naming the others.

    Why: a file linked from one split folder into another (or two split folders linked to one
    place) puts the same image in train and test, and test accuracy silently measures recall.
    """
    first: dict[str, tuple[str, str]] = {}
    for split in SPLITS:  # train first: an image the model learns stays there
        for files in listing.get(split, {}).values():
            for f in files:
                first.setdefault(real[f], (split, f))
    result: _Listing = {}
    repeated: list[str] = []
    for split, classes in listing.items():
        result[split] = {}
        for name, files in classes.items():
            result[split][name] = [f for f in files if first[real[f]][0] == split]
            repeated += [f for f in files if first[real[f]][0] != split]
    if repeated:
        named = [f"{os.path.relpath(f, root)} (= {os.path.relpath(first[real[f]][1], root)})"
                 for f in repeated[:_MAX_LISTED]]
        logger.warning(
            "image folder %s: %d image(s) are the same file as one in an earlier split and are left "
            "out of the later split (an image in both train and test inflates test accuracy): %s%s",
            root, len(repeated), ", ".join(named), " ..." if len(repeated) > _MAX_LISTED else "",
        )
    return result


def _unique_files(
    files: Sequence[str], name: str, owner: Mapping[str, str | None], real: Mapping[str, str]
) -> list[str]:
    """The files of class ``name`` it owns, each real file once."""
    seen: set[str] = set()
    kept = []
    for f in files:
        if owner[real[f]] == name and real[f] not in seen:
            seen.add(real[f])
            kept.append(f)
    return kept


def _warn_about_layout(
    root: str,
    listing: _Listing,
    folders: Mapping[str, Mapping[str, str]],
    splits: Mapping[str, str] | None,
    walker: _Walker,
) -> None:
    """Warns about what is read or left out in a way users may not expect: links not followed,
    images in sub-folders of class folders, images loose in split folders."""
    if walker.skipped_links:
        logger.warning(
            "image folder %s: directory link(s) not followed, as they lead back up the tree, into a class "
            "folder or to a folder already read: %s", root,
            ", ".join(os.path.relpath(p, root) for p in walker.skipped_links[:_MAX_LISTED]),
        )
    if walker.unreadable:
        logger.warning(
            "image folder %s: %d file(s) this PIL build cannot decode are ignored: %s", root,
            len(walker.unreadable), ", ".join(os.path.relpath(p, root) for p in walker.unreadable[:_MAX_LISTED]),
        )
    nested = {}
    for split, classes in listing.items():
        for name, files in classes.items():
            folder = folders[split][name]
            count = sum(os.path.dirname(f) != folder for f in files)
            if count:
                nested[os.path.relpath(folder, root)] = count
    if nested:
        logger.warning(
            "image folder %s: class folder(s) hold images in sub-folders, read as images of the class "
            "folder: %s", root, ", ".join(f"{name} ({n})" for name, n in sorted(nested.items())),
        )
    for path in (splits or {}).values():
        count = _loose_images(path)
        if count:
            logger.warning(
                "image folder %s: %d image(s) directly in split folder %s, outside any class folder, "
                "are ignored", root, count, os.path.basename(path),
            )


def _check_classes(
    root: str, listing: _Listing, folders: Mapping[str, Mapping[str, str]], split_layout: bool
) -> None:
    """Refuses a folder without images in class folders or with a single class; warns about
    class folders without images and images outside any class folder."""
    class_names = _class_names(listing)
    loose = _loose_images(root)
    empty = sorted({c for classes in listing.values() for c in classes} - set(class_names))
    if empty and class_names:
        logger.warning("image folder %s: class folder(s) %s hold no images and are left out", root, empty)
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
        only = class_names[0]
        found = [os.path.relpath(folders[s][only], root) for s in listing if listing[s].get(only)]
        layout = "<split>/<class>/<image>" if split_layout else "<class>/<image>"
        raise DataError(
            f"image folder {root} has a single class {only!r}: classification needs at least "
            f"2 class folders ({layout}; found only {', '.join(found)})"
        )


def _class_names(listing: _Listing) -> list[str]:
    """The classes with at least one image in some split, sorted: their label order."""
    return sorted({c for classes in listing.values() for c, files in classes.items() if files})


def _list_folder(root: str) -> _Listing:
    """Every image of a folder source by split and class, after the layout checks."""
    splits = _split_folders(root)
    # Train first: of two links to one folder, the first walked is read (see _Walker).
    parents = {s: splits[s] for s in SPLITS if s in splits} if splits is not None else {"train": root}
    folders = {split: {e.name: e.path for e in _subdirs(path)} for split, path in parents.items()}
    walker = _Walker(root, [f for classes in folders.values() for f in classes.values()])
    listing = {
        split: {name: walker.images(path) for name, path in classes.items()}
        for split, classes in folders.items()
    }
    if splits is None:
        _refuse_unnamed_splits(root, listing["train"])
    listing = _one_class_per_file(root, listing, folders, walker.real)
    listing = _one_split_per_file(root, listing, walker.real)
    _warn_about_layout(root, listing, folders, splits, walker)
    _check_classes(root, listing, folders, splits is not None)
    return listing


def _folder_pools(
    listing: _Listing, class_names: Sequence[str]
) -> tuple[dict[str, _Pool], dict[str, list[str]]]:
    """Each split's labels (as undecoded pools) and file paths, in one order."""
    index = {c: i for i, c in enumerate(class_names)}
    pools: dict[str, _Pool] = {}
    paths: dict[str, list[str]] = {}
    for split, classes in listing.items():
        files = [(f, index[c]) for c in sorted(classes) if c in index for f in classes[c]]
        if files:
            paths[split] = [f for f, _ in files]
            pools[split] = _Pool(np.array([label for _, label in files], np.int32))
    return pools, paths


def _without(listing: _Listing, bad: set[str]) -> _Listing:
    """The listing less the ``bad`` files (skipped as corrupt)."""
    return {
        split: {name: [f for f in files if f not in bad] for name, files in classes.items()}
        for split, classes in listing.items()
    }


def _check_decodable_classes(root: str, class_names: Sequence[str], skipped: int) -> None:
    if not class_names:
        raise DataError(f"image folder {root}: no image could be decoded ({skipped} corrupt)")
    if len(class_names) < 2:
        raise DataError(
            f"image folder {root}: after skipping {skipped} corrupt image(s) only the class "
            f"{class_names[0]!r} has decodable images; classification needs at least 2 classes"
        )


@dataclasses.dataclass
class _Drawn:
    """The splits drawn from a folder, every kept image decoded (see :func:`_decode_planned`)."""

    listing: _Listing  # less the corrupt files
    class_names: list[str]  # the classes with a file left
    splits: dict[str, tuple[list[str], np.ndarray]]  # {split: (kept paths, labels)}
    decoded: dict[str, np.ndarray]  # the kept images only, by path
    bad: list[str]  # the corrupt files found, sorted


def _decode_planned(
    root: str,
    listing: _Listing,
    fractions: Mapping[str, float],
    caps: Mapping[str, int | None],
    seed: int,
    size: tuple[int, int] | None,
    skip_corrupt: bool,
) -> _Drawn:
    """Draws the splits and decodes the images they keep; with ``skip_corrupt``, takes the
    undecodable ones out and draws again until every kept image decodes.

    Each pool's order is drawn once, over every listed file, and a corrupt file is only taken
    out of it: the other files keep their places, so a capped split keeps the images it had and
    tops up past its end for the ones taken out (a fresh order each round picked a mostly new
    set: 39,486 decodes to keep 6,250 of 50,000 files). Only the kept images stay decoded. A
    folder without corrupt files gets :func:`_assign`'s splits. Drawing again (rather than
    leaving holes) keeps the fractions and the rule that a class's only image goes to train
    true of the images actually used.
    """
    listed = _class_names(listing)
    pools, paths = _folder_pools(listing, listed)
    labels = {name: pool.labels for name, pool in pools.items()}
    orders = {name: stratified_order(pool_labels, seed) for name, pool_labels in labels.items()}
    dead: dict[str, list[int]] = {name: [] for name in orders}  # indices of corrupt files
    decoded: dict[str, np.ndarray] = {}
    bad: list[str] = []
    while True:
        live = _live_orders(orders, dead)
        _check_train_images(root, live, len(bad))
        plan = _plan(live, labels, fractions, caps)
        wanted = {paths[pool][i]: (pool, i) for pool, idx in plan.values() for i in idx}
        fresh = _decode_files([f for f in wanted if f not in decoded], size)
        decoded = {f: decoded[f] if f in decoded else fresh[f] for f in wanted}  # the kept only
        failed = sorted(f for f, image in fresh.items() if image is None)
        if not failed:
            break
        if not skip_corrupt:
            raise CorruptImagesError(
                _corrupt_message(root, failed)
                + " (pass skip_corrupt=True, --skip_corrupt on the command line, to skip them)",
                failed,
            )
        bad += failed
        for f in failed:
            pool, i = wanted[f]
            dead[pool].append(i)
        _check_decodable_classes(root, _class_names(_without(listing, set(bad))), len(bad))
    left = _without(listing, set(bad))
    class_names = _class_names(left)
    relabel = np.array([class_names.index(c) if c in class_names else -1 for c in listed], np.int32)
    splits = {
        split: ([paths[pool][i] for i in idx], relabel[labels[pool][idx]])
        for split, (pool, idx) in plan.items()
    }
    return _Drawn(left, class_names, splits, decoded, sorted(bad))


def _live_orders(orders: Mapping[str, np.ndarray], dead: Mapping[str, list[int]]) -> dict[str, np.ndarray]:
    """Each pool's order less its corrupt files, in place; a pool left empty is dropped (a
    provided split with no decodable image is then carved from train, as if absent)."""
    live = {}
    for name, order in orders.items():
        kept = order[~np.isin(order, dead[name])] if dead[name] else order
        if kept.size:
            live[name] = kept
    return live


def _check_train_images(root: str, live: Mapping[str, np.ndarray], skipped: int) -> None:
    """Refuses split folders whose train folder has no (decodable) image, saying so: the
    generic "no train split" read as if the folder were missing."""
    if "train" in live:
        return
    folder = os.path.basename((_split_folders(root) or {}).get("train", "train"))
    what = f"no decodable image ({skipped} corrupt skipped)" if skipped else "no images in class folders"
    raise DataError(
        f"image folder {root}: its train folder {folder!r} has {what}, so there is nothing to learn "
        f"from (the other split folders are for evaluation). Put the training images in "
        f"{folder}/<class>/<image>"
    )


def _corrupt_message(root: str, bad: Sequence[str]) -> str:
    listed = ", ".join(os.path.relpath(f, root) for f in bad[:_MAX_LISTED])
    more = f" and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
    return f"{len(bad)} corrupt or unreadable image(s) in {root}: {listed}{more}"


_FILES_PER_SIZE = 3
"""Files named for each minority image size in the mixed-size error."""


def _check_one_size(root: str, images: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """The (height, width) all images share; else a DataError naming the sizes and, for each but
    the most common, a few of its files (so a stray image can be found and removed)."""
    by_size: dict[tuple[int, int], list[str]] = {}
    for path, image in images.items():
        by_size.setdefault(image.shape[:2], []).append(path)
    if not by_size:
        raise DataError(f"image folder {root}: the splits keep no image (see max_examples)")
    if len(by_size) == 1:
        return next(iter(by_size))
    ranked = sorted(by_size.items(), key=lambda item: (-len(item[1]), item[0]))
    parts = [f"{h}x{w} ({len(files)})" for (h, w), files in ranked[:5]]
    named = []
    for (h, w), files in ranked[1:6]:
        listed = ", ".join(os.path.relpath(f, root) for f in sorted(files)[:_FILES_PER_SIZE])
        more = f" and {len(files) - _FILES_PER_SIZE} more" if len(files) > _FILES_PER_SIZE else ""
        named.append(f"{h}x{w}: {listed}{more}")
    raise DataError(
        f"images in {root} differ in size ({', '.join(parts)}; {'; '.join(named)}): pass "
        "image_size=(height, width) (--image_size=N on the command line), or remove the odd ones"
    )


def _check_splits(
    root: str,
    listing: _Listing,
    class_names: Sequence[str],
    arrays: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> None:
    """Refuses splits whose train images cover fewer than 2 classes; warns about split folders
    without images, provided evaluation splits missing classes and classes without a train image
    (which :attr:`Dataset.untrained_classes` also lists, so callers can report them)."""
    for split, classes in listing.items():
        held = {c for c, files in classes.items() if files}
        if not held:
            logger.warning("image folder %s: split %r has no images and is ignored", root, split)
        elif split != "train":
            missing = sorted(set(class_names) - held)
            if missing:
                logger.warning("image folder %s: split %r lacks classes %s", root, split, missing)
    train_labels = arrays["train"][1]
    untrained = [c for i, c in enumerate(class_names) if not np.any(train_labels == i)]
    if len(class_names) - len(untrained) < 2:
        raise DataError(
            f"image folder {root}: only {len(class_names) - len(untrained)} class(es) have train "
            f"images (none for {untrained}); classification needs at least 2. Give the train "
            "split images of more classes"
        )
    if untrained:
        logger.warning(
            "image folder %s: " + UNTRAINED_WARNING + " %s: the model gets an output for each it never learns "
            "(Dataset.untrained_classes lists them)", root, untrained,
        )


UNTRAINED_WARNING = "no train image of class(es)"
"""The start of the loader's warning about classes without train images (callers that report
`Dataset.untrained_classes` themselves leave it out)."""


def _load_folder(
    spec: DataSpec,
    fractions: Mapping[str, float],
    caps: Mapping[str, int | None],
    seed: int,
    size: tuple[int, int] | None,
    skip_corrupt: bool,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Reads a ``folder:`` source (see :func:`load_dataset`).

    With ``skip_corrupt``, a class left with no decodable image is dropped with a warning rather
    than failing the load: the user asked to get past bad files, and keeping the class would give
    the model an output it never learns. ``Dataset.class_names`` shows the drop. Fewer than two
    classes with train images still fail.
    """
    root = _folder_root(spec)
    listing = _list_folder(root)
    listed_classes = _class_names(listing)
    found = sum(len(files) for classes in listing.values() for files in classes.values())
    cache_path = None
    if cache_dir is not None:
        _, paths = _folder_pools(listing, listed_classes)
        options = (_CACHE_FORMAT, fractions, caps, seed, size, skip_corrupt, listed_classes)
        cache_path = _folder_cache_path(cache_dir, root, paths, options)
        cached = _read_cache(cache_path, str(spec))
        if cached is not None:
            return cached
    drawn = _decode_planned(root, listing, fractions, caps, seed, size, skip_corrupt)
    if drawn.bad:
        logger.warning("skipping %s", _corrupt_message(root, drawn.bad))
    dropped = sorted(set(listed_classes) - set(drawn.class_names))
    if dropped:
        logger.warning(
            "image folder %s: class(es) %s have no decodable image and are left out", root, dropped
        )
    height, width = _check_one_size(root, drawn.decoded)
    channels = max(image.shape[2] for image in drawn.decoded.values())
    arrays = {}
    for split, (files, labels) in drawn.splits.items():
        images = np.zeros((len(files), height, width, channels), np.uint8)
        for row, f in enumerate(files):
            images[row] = drawn.decoded[f]  # a grey image broadcasts over RGB channels
        arrays[split] = (images, labels)
    _check_splits(root, drawn.listing, drawn.class_names, arrays)
    dataset = Dataset(str(spec), arrays, drawn.class_names, skipped_files=drawn.bad, source_images=found)
    if cache_path is not None:
        _write_cache(cache_path, dataset)
    return dataset


def _folder_cache_path(cache_dir, root: str, paths: Mapping[str, list[str]], options) -> str:
    """The cache file of a folder's decoded splits: a hash of the arguments and of every listed
    file's name, size and modification time (a broken link hashes as "unreadable": decoding
    reports it, the key must not crash on it)."""
    digest = hashlib.sha256(repr((root, sorted(paths), options)).encode())
    for split in sorted(paths):
        for path in paths[split]:
            try:
                info = os.stat(path)
                state = f"{info.st_size}\0{info.st_mtime_ns}"
            except OSError:
                state = "unreadable"
            digest.update(f"{split}\0{path}\0{state}\n".encode())
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
            found = int(saved["source_images"])
    except (OSError, ValueError, KeyError) as err:
        logger.warning("ignoring unreadable data cache %s: %s", path, err)
        return None
    if skipped:
        logger.warning(
            "skipping %d corrupt image(s) (cached): %s", len(skipped), ", ".join(skipped)
        )
    logger.info("read decoded images from cache %s", path)
    return Dataset(source, arrays, class_names, skipped_files=skipped, source_images=found)


def _write_cache(path: str, dataset: Dataset) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    payload = {"class_names": np.array(dataset.class_names, dtype=str),
               "skipped_files": np.array(dataset.skipped_files, dtype=str),
               "source_images": np.array(dataset.source_images, dtype=np.int64)}
    for split in SPLITS:
        payload[f"{split}_images"], payload[f"{split}_labels"] = dataset.arrays(split)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **payload)
    os.replace(tmp, path)  # atomic: concurrent readers see the whole file or none


def _decode_file(path: str, size: tuple[int, int] | None) -> np.ndarray | None:
    """One image file as a ``(height, width, 1 or 3)`` uint8 array, or None when undecodable.

    EXIF orientation is applied first (a phone photo taken upright is stored sideways with a tag
    saying so). Grey files (and palette files whose colours are all grey) give one channel,
    others RGB; alpha is dropped, not composited (PIL's conversion keeps the colour values of
    transparent pixels). With ``size``, the image is stretched to exactly (height, width), the
    aspect ratio not kept, with PIL's bilinear filter (which averages the source pixels when
    shrinking). :func:`_load_folder` copies a grey image into all 3 channels when the folder
    mixes grey and colour images.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            grey = image.mode in ("1", "L", "LA", "I", "I;16", "F")
            if image.mode in ("P", "PA"):  # palette images (GIF, some PNG): grey or colour?
                rgb = np.asarray(image.convert("RGB"))
                grey = bool(np.all(rgb == rgb[..., :1]))
            if image.mode.startswith("I") or image.mode == "F":
                image = _to_8_bit(image)  # convert("L") would clip 16-bit values at 255
            image = image.convert("L" if grey else "RGB")
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        logger.debug("cannot decode %s: %s", path, err)
        return None
    return array[..., None] if array.ndim == 2 else array


def _to_8_bit(image):
    """A 16/32-bit integer or float grey image as 8-bit grey, its range scaled, not clipped.

    16-bit modes span 0..65535; a 32-bit integer image whose values fit 8 bits keeps them; a float
    image in [0, 1] is scaled to 0..255 and any other is clipped to it.
    """
    from PIL import Image

    values = np.asarray(image, np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and values.size and values.max() > 255):
        values = values * (255.0 / 65535.0)
    elif image.mode == "F" and values.size and values.max() <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), "L")


def _decode_files(
    files: Sequence[str], size: tuple[int, int] | None
) -> dict[str, np.ndarray | None]:
    workers = min(8, os.cpu_count() or 1)
    if len(files) < 64 or workers == 1:
        return {f: _decode_file(f, size) for f in files}
    with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while decoding
        return dict(zip(files, pool.map(lambda f: _decode_file(f, size), files, chunksize=64)))
