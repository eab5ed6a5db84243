"""The ``tf.data`` input pipeline of a split: :func:`make_pipeline`.

Turns a :class:`trainer.data.Dataset` split, or ``tf.data`` input such as TFRecords read with
:mod:`trainer.tfrecords`, into a batched, normalised, optionally augmented pipeline that is
deterministic given its seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from trainer.data import (
    AUGMENTATIONS,
    NORMALIZATIONS,
    DataError,
    Dataset,
    _check_split,
    _is_int,
)
from trainer.tfrecords import decode_example

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


# --------------------------------------------------------------------------------------------
# The same normalisation inside a model


def input_normalization(normalize: str, data: Dataset) -> dict:
    """JSON record of the normalisation :func:`make_pipeline` applies for ``normalize`` on ``data``:
    ``{"normalize": ...}`` plus, for ``per_channel``, the train split's ``mean`` and ``std`` per
    channel on the [0, 1] scale (the float32 values the pipeline uses)."""
    if normalize not in NORMALIZATIONS:
        raise DataError(f"unknown normalize {normalize!r}: allowed are {', '.join(NORMALIZATIONS)}")
    record: dict = {"normalize": normalize}
    if normalize == "per_channel":
        mean, std = data.channel_stats()
        record["mean"] = [float(v) for v in np.asarray(mean, np.float32)]
        record["std"] = [float(v) for v in np.asarray(std, np.float32)]
    return record


def normalization_layers(normalization: dict) -> list:
    """Keras layers computing, on raw 0..255 pixels, exactly what :func:`make_pipeline`'s
    normalisation computes (bit for bit in float32), from an :func:`input_normalization` record.

    Only Keras' own serialisable layers, so a model holding them loads in safe mode. The division
    by 255 (127.5) is a ``Normalization`` with mean 0 and standard deviation 255 (127.5) rather
    than ``Rescaling(1 / 255)``: it divides, as the pipeline does, where ``Rescaling`` multiplies
    by the rounded reciprocal and can differ in the last bit.
    """
    import keras

    normalize = normalization.get("normalize")
    if normalize not in NORMALIZATIONS:
        raise DataError(f"unknown normalize {normalize!r}: allowed are {', '.join(NORMALIZATIONS)}")
    divisor = 127.5 if normalize == "symmetric" else 255.0
    layers = [keras.layers.Normalization(axis=None, mean=0.0, variance=divisor**2, dtype="float32",
                                         name=f"divide_by_{divisor:g}".replace(".", "_"))]
    if normalize == "symmetric":
        layers.append(keras.layers.Rescaling(1.0, offset=-1.0, dtype="float32", name="minus_one"))
    elif normalize == "per_channel":
        mean = np.asarray(normalization["mean"], np.float32)
        std = np.asarray(normalization["std"], np.float32)
        if mean.ndim != 1 or mean.shape != std.shape or np.any(std <= 0):
            raise DataError(f"per_channel normalisation needs mean and std per channel, std > 0; got {normalization!r}")
        # sqrt(float32(std ** 2)) == std exactly, so the layer divides by the pipeline's std.
        layers.append(keras.layers.Normalization(axis=-1, mean=mean, variance=np.square(std), dtype="float32",
                                                 name="per_channel_standardize"))
    return layers


def raw_input_model(model, normalization: dict, input_shape: Sequence[int] | None = None):
    """``model`` (trained on :func:`make_pipeline`'s normalised images) behind
    :func:`normalization_layers`: a model of raw images, uint8 or float 0..255."""
    import keras

    shape = tuple(int(d) for d in (input_shape or model.input_shape[1:]))
    inputs = keras.Input(shape, dtype="float32", name="raw_image")
    x = inputs
    for layer in normalization_layers(normalization):
        x = layer(x)
    return keras.Model(inputs, model(x), name=f"{model.name}_on_raw_images")


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
