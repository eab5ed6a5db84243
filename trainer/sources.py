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
    IMAGE_EXTENSIONS,
    SPLITS,
    CorruptImagesError,
    DataError,
    Dataset,
    DataSpec,
    _assign,
    _check_caps,
    _check_fractions,
    _is_int,
    _materialise,
    _Pool,
    _pool_limit,
)
from trainer.files import walk_files

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
      source: ``embedded:digits``, ``tfds:<name>`` or ``folder:<path>``.
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
    return {
        entry.name: sorted(f for f in walk_files(entry.path) if f.lower().endswith(IMAGE_EXTENSIONS))
        for entry in _subdirs(path)
    }


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
    split_named = [e.name for e in top if e.name.lower() in _SPLIT_ALIASES]
    split_layout = bool(top) and len(split_named) == len(top)
    if len(split_named) >= 2 and not split_layout:
        others = [e.name for e in top if e.name.lower() not in _SPLIT_ALIASES]
        raise DataError(
            f"image folder {root} mixes split folders ({', '.join(split_named)}) with other folders "
            f"({', '.join(others)}): read as <class>/<image>, every split would become a class. Keep only "
            "the split folders (<split>/<class>/<image>) or only class folders (<class>/<image>)"
        )
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
    empty = sorted({c for classes in per_split.values() for c in classes} - set(class_names))
    if empty and class_names:
        logger.warning("image folder %s: class folder(s) %s hold no images and are left out", root, empty)
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
        raise DataError(
            f"image folder {root} has a single class {class_names[0]!r}: classification needs at least "
            "2 class folders (<class>/<image>)"
        )
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
            raise CorruptImagesError(message + " (pass skip_corrupt=True, --skip_corrupt on the command line, to skip them)", bad)
        logger.warning("skipping %s", message)
    good = [image for image in decoded.values() if image is not None]
    if not good:
        raise DataError(f"image folder {root}: no image could be decoded")
    shapes = Counter(image.shape[:2] for image in good)
    if len(shapes) > 1:
        common = ", ".join(f"{h}x{w} ({n})" for (h, w), n in shapes.most_common(5))
        raise DataError(
            f"images in {root} differ in size ({common}): pass image_size=(height, width) "
            "(--image_size=N on the command line)"
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
