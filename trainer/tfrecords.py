"""The on-disk TFRecord format shared with the pipeline components.

:func:`encode_example` / :func:`decode_example` fix how one image and its label are stored;
:func:`write_tfrecords` / :func:`read_tfrecords` write and read whole splits as ordered shards.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from trainer.data import DataError, _is_int

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
