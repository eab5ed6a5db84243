"""Child networks: the architectures a candidate activation function is trained in.

Every builder takes an *activation factory*, a zero-argument callable that returns a fresh Keras
layer each time it is called. A network calls it once per activation site, so a parametric
activation gets its own learnable parameters in every layer (and, with per-channel sharing, in
every channel of that layer) instead of one set tied across the whole network.

Architectures (parameter counts at 32x32x3 input, 10 classes, trainable weights):

* ``mlp`` - two hidden Dense layers (256, 128); a quick check on tiny inputs.
* ``small_cnn`` - four 3x3 convolutions (32, 32, 64, 64) with batch normalisation; works on 8x8.
* ``resnet20`` / ``resnet56`` - He et al. 2016, "Deep Residual Learning", CIFAR variant: a 3x3
  stem with 16 filters, three stages of 16/32/64 filters with n = 3 / 9 basic blocks each
  (post-activation: conv-BN-act-conv-BN, add, act). Shortcuts where the shape changes use
  **option A** (parameter-free: stride-2 subsampling and zero-padding of the new channels), as in
  the paper's CIFAR experiments, so the counts are the published 0.27M and 0.85M.

* ``resnet56_v2`` - the pre-activation form (He et al. 2016, "Identity Mappings"): each basic
  block is BN-act-conv-BN-act-conv added to an untouched shortcut, with a final BN-act before
  pooling; option-A shortcuts as above (0.85M).
* ``wrn_10_4`` - Wide ResNet (Zagoruyko & Komodakis 2016) depth 10, width 4: one pre-activation
  block per stage of 64/128/256 filters, 1x1 convolution shortcuts where the shape changes
  (1.2M).
* ``all_cnn_c`` - Springenberg et al. 2015, "Striving for Simplicity": nine convolutions, strided
  convolutions instead of pooling, dropout, global average pooling, no batch normalisation
  (1.37M).

The logits layer (and anything after it) runs in float32 whatever the global dtype policy, so a
network built under ``mixed_float16`` or ``mixed_bfloat16`` computes its loss in float32.
The networks output logits (no softmax). Batch normalisation is :class:`FusedBatchNormalization`
(TensorFlow's fused kernel, about twice as fast under mixed bfloat16 on CPU);
:func:`portable_model` swaps Keras' own layer back in for saving.
"""

from __future__ import annotations

import math
import numbers
import operator
import re
from collections.abc import Callable, Sequence
from typing import Union

import keras
from keras import layers

import activations

ActivationFactory = Callable[[], keras.layers.Layer]
ActivationSpec = Union[str, ActivationFactory]

MODEL_NAMES = ("mlp", "small_cnn", "resnet20", "resnet56", "resnet56_v2", "wrn_10_4", "all_cnn_c")
SHARING_MODES = ("layer", "channel")


class ModelError(ValueError):
    """A child network cannot be built as asked: the message names what is wrong and what is allowed."""


# --------------------------------------------------------------------------------------------
# Activation factories


def activation_factory(activation: ActivationSpec, sharing: str = "layer") -> ActivationFactory:
    """Turns an activation spec into a factory returning a fresh layer per call.

    Args:
      activation: a zero-argument callable returning a Keras layer (returned unchanged), or a
        name / expression text understood by ``activations.get`` (e.g. ``"relu"``,
        ``"x*sigmoid(beta*x)"``).
      sharing: ``"layer"`` (one value per parameter per layer) or ``"channel"`` (one per
        channel); used only when ``activation`` is text.

    Raises:
      ModelError: neither text nor a callable, or an unknown sharing mode.
      activations.ExpressionError: text that is neither a known name nor a valid expression.
    """
    if isinstance(activation, keras.layers.Layer):
        raise ModelError(
            f"activation is a layer ({type(activation).__name__}); pass a factory that makes a new one per "
            f"site, e.g. lambda: keras.layers.{type(activation).__name__}(), so each site has its own parameters"
        )
    if callable(activation) and not isinstance(activation, str):
        return activation
    if not isinstance(activation, str) or not activation.strip():
        raise ModelError(
            "activation must be a name or expression text (e.g. 'relu', 'x*sigmoid(beta*x)') or a "
            f"zero-argument callable returning a Keras layer; got {activation!r}"
        )
    if sharing not in SHARING_MODES:
        raise ModelError(f"unknown sharing {sharing!r}: allowed are {', '.join(SHARING_MODES)}")
    text = activation.strip()
    activations.get(text, sharing=sharing)  # fail now, with the library's own message, on bad text
    return lambda: activations.get(text, sharing=sharing)


SITE_NAME = "act_{:02d}"
"""Name of the n-th activation site (from 1, input to output) when its layer kept Keras' automatic
name. Automatic names count up over the whole process (parametric_activation_136, ...), so two
runs of one model, or two seeds, named the same site differently: per-layer results (learned
parameters, TensorBoard tags) could not be lined up across runs."""


_SITE_MARK = "_actsearch_activation_site"
"""Attribute :func:`build_model` sets on every layer its activation factory made (the site's
number, from 1), so :func:`activation_layers` finds a user's own activation layer whatever its
type or name."""
_SITE_NAME_PATTERN = re.compile(r"act_\d{2,}")
"""Names :data:`SITE_NAME` gives: how a site is still recognised in a copy (clone, saved and
loaded model) that lost the attribute."""


def _automatic_name(layer: keras.layers.Layer) -> bool:
    """Whether `layer.name` is the one Keras made up from its class (`re_lu`, `re_lu_4`)."""
    words = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", re.sub(r"\W+", "", type(layer).__name__))
    base = re.sub("([a-z])([A-Z])", r"\1_\2", words).lower()
    return re.fullmatch(rf"{re.escape(base)}(_\d+)?", layer.name) is not None


def _checked_factory(activation: ActivationSpec, sharing: str) -> ActivationFactory:
    factory = activation_factory(activation, sharing)
    seen: set[int] = set()

    def make() -> keras.layers.Layer:
        layer = factory()
        if not isinstance(layer, keras.layers.Layer):
            raise ModelError(
                f"the activation factory must return a Keras layer; it returned {type(layer).__name__}"
            )
        if id(layer) in seen:
            raise ModelError(
                "the activation factory returned the same layer twice: it must build a new layer "
                "on every call so that each activation site has its own parameters"
            )
        seen.add(id(layer))
        if _automatic_name(layer):  # before it is built: its weights take the new name
            layer.name = SITE_NAME.format(len(seen))
        setattr(layer, _SITE_MARK, len(seen))
        return layer

    return make


# --------------------------------------------------------------------------------------------
# Building blocks


@keras.saving.register_keras_serializable(package="actsearch")
class FusedBatchNormalization(layers.BatchNormalization):
    """Batch normalisation through TensorFlow's fused kernel: one op forward, one backward.

    Why: Keras' ``BatchNormalization`` computes the moments and the normalisation with separate
    ops, in float32 even under a mixed policy (it upcasts bfloat16 inputs). On this project's
    CPUs that made ResNet-20 training under ``mixed_bfloat16`` about twice as slow as with the
    fused kernel, which reads and writes bfloat16 directly and keeps float32 statistics, and
    it is faster in float32 too.

    Same weights and config as ``BatchNormalization`` (:func:`portable_model` swaps it back for
    saving). One difference: the moving variance is updated with the unbiased batch variance,
    as the fused kernel (and tf.keras 2, and PyTorch) do. Other backends, masks, synchronized
    statistics and inputs that are not 4-D channels-last use Keras' implementation.
    """

    def _fusable(self, inputs, mask) -> bool:
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.synchronized
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = tf.cast(inputs, self.compute_dtype)
        channels = inputs.shape[-1]
        scale = self.gamma.value if self.scale else tf.ones([channels], tf.float32)
        offset = self.beta.value if self.center else tf.zeros([channels], tf.float32)
        if training and self.trainable:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, scale, offset,
                mean=self.moving_mean.value, variance=self.moving_variance.value,
                epsilon=self.epsilon, is_training=True, exponential_avg_factor=1.0 - self.momentum,
            )
            self.moving_mean.assign(mean)
            self.moving_variance.assign(variance)
            return y
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x, scale, offset,
            mean=self.moving_mean.value, variance=self.moving_variance.value,
            epsilon=self.epsilon, is_training=False,
        )
        return y


def portable_model(model: keras.Model) -> keras.Model:
    """A copy of ``model`` with Keras' own ``BatchNormalization`` in place of the fused one.

    Same weights and outputs (in inference); saving this copy gives a ``.keras`` file that
    loads in safe mode with only ``import activations`` (no trainer code needed).
    """

    def clone(layer):
        if isinstance(layer, FusedBatchNormalization):
            return layers.BatchNormalization.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    if not any(isinstance(layer, FusedBatchNormalization) for layer in model._flatten_layers()):
        return model
    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _conv(filters: int, kernel: int = 3, stride: int = 1, name: str | None = None, **kwargs):
    return layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding=kwargs.pop("padding", "same"),
        use_bias=kwargs.pop("use_bias", False),
        kernel_initializer="he_normal",
        name=name,
        **kwargs,
    )


def _bn(name: str | None = None):
    return FusedBatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


def _logits(x, num_classes: int):
    """Global average pooling and the float32 logits layer."""
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return layers.Dense(num_classes, dtype="float32", name="logits")(x)


def _shortcut_a(x, filters: int, stride: int, name: str):
    """Option-A shortcut: subsample by ``stride`` and zero-pad the new channels (no parameters).

    Built from Keras layers only (so saved models need no custom class): a 1x1 max-pool with
    the block's stride picks every stride-th pixel, and the channel padding is a 3-D zero
    padding of the view (pixels, 1, 1, channels) read channels-first, split evenly before and
    after the existing channels, so the padding copies whole channel vectors. (Padding the view
    (height, width, channels, 1) instead, with its length-1 innermost axis, took 4x as long;
    picking the pixels by cropping reshaped views had a backward pass 10x slower than the
    max-pool's.)
    """
    if stride == 1 and x.shape[-1] == filters:
        return x
    if stride != 1:
        x = layers.MaxPooling2D(pool_size=1, strides=stride, name=f"{name}_subsample")(x)
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    extra = filters - channels
    if extra > 0:
        before = extra // 2
        x = layers.Reshape((height * width, 1, 1, channels), name=f"{name}_expand")(x)
        x = layers.ZeroPadding3D(
            ((0, 0), (0, 0), (before, extra - before)), data_format="channels_first", name=f"{name}_pad"
        )(x)
        x = layers.Reshape((height, width, filters), name=f"{name}_shortcut")(x)
    return x


def _basic_block_v1(x, filters: int, stride: int, act: ActivationFactory, name: str):
    shortcut = _shortcut_a(x, filters, stride, name)
    y = _conv(filters, 3, stride, name=f"{name}_conv1")(x)
    y = _bn(f"{name}_bn1")(y)
    y = act()(y)
    y = _conv(filters, 3, 1, name=f"{name}_conv2")(y)
    y = _bn(f"{name}_bn2")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return act()(y)


def _basic_block_v2(x, filters: int, stride: int, act: ActivationFactory, name: str, projection: bool):
    """Pre-activation basic block; ``projection``: 1x1-conv shortcut (WRN) instead of option A."""
    pre = _bn(f"{name}_bn1")(x)
    pre = act()(pre)
    changes = stride != 1 or x.shape[-1] != filters
    if not changes:
        shortcut = x
    elif projection:
        shortcut = _conv(filters, 1, stride, name=f"{name}_shortcut")(pre)
    else:
        shortcut = _shortcut_a(x, filters, stride, name)
    y = _conv(filters, 3, stride, name=f"{name}_conv1")(pre)
    y = _bn(f"{name}_bn2")(y)
    y = act()(y)
    y = _conv(filters, 3, 1, name=f"{name}_conv2")(y)
    return layers.Add(name=f"{name}_add")([shortcut, y])


# --------------------------------------------------------------------------------------------
# Architectures


def _mlp(inputs, num_classes: int, act: ActivationFactory):
    x = layers.Flatten(name="flatten")(inputs)
    for i, units in enumerate((256, 128), start=1):
        x = layers.Dense(units, kernel_initializer="he_normal", name=f"dense{i}")(x)
        x = act()(x)
    return layers.Dense(num_classes, dtype="float32", name="logits")(x)


def _small_cnn(inputs, num_classes: int, act: ActivationFactory):
    x = inputs
    for i, filters in enumerate((32, 32, 64, 64), start=1):
        x = _conv(filters, 3, 1, name=f"conv{i}")(x)
        x = _bn(f"bn{i}")(x)
        x = act()(x)
        if i == 2 and min(x.shape[1], x.shape[2]) >= 4:
            x = layers.MaxPooling2D(2, name="pool1")(x)
    return _logits(x, num_classes)


def _resnet_v1(blocks_per_stage: int):
    def build(inputs, num_classes: int, act: ActivationFactory):
        x = _conv(16, 3, 1, name="stem_conv")(inputs)
        x = _bn("stem_bn")(x)
        x = act()(x)
        for stage, filters in enumerate((16, 32, 64), start=1):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 1 and block == 0 else 1
                x = _basic_block_v1(x, filters, stride, act, name=f"stage{stage}_block{block + 1}")
        return _logits(x, num_classes)

    return build


def _resnet_v2(blocks_per_stage: int, widths: Sequence[int], projection: bool):
    def build(inputs, num_classes: int, act: ActivationFactory):
        x = _conv(16, 3, 1, name="stem_conv")(inputs)
        for stage, filters in enumerate(widths, start=1):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 1 and block == 0 else 1
                x = _basic_block_v2(
                    x, filters, stride, act, name=f"stage{stage}_block{block + 1}", projection=projection
                )
        x = _bn("final_bn")(x)
        x = act()(x)
        return _logits(x, num_classes)

    return build


def _all_cnn_c(inputs, num_classes: int, act: ActivationFactory):
    def conv(x, filters, kernel, stride, name, padding="same"):
        x = layers.Conv2D(
            filters, kernel, strides=stride, padding=padding, kernel_initializer="he_normal", name=name
        )(x)
        return act()(x)

    x = layers.Dropout(0.2, name="input_dropout")(inputs)
    x = conv(x, 96, 3, 1, "conv1")
    x = conv(x, 96, 3, 1, "conv2")
    x = conv(x, 96, 3, 2, "conv3")
    x = layers.Dropout(0.5, name="dropout1")(x)
    x = conv(x, 192, 3, 1, "conv4")
    x = conv(x, 192, 3, 1, "conv5")
    x = conv(x, 192, 3, 2, "conv6")
    x = layers.Dropout(0.5, name="dropout2")(x)
    # The paper's 3x3 "valid" convolution; on inputs too small for it, "same" keeps a map.
    x = conv(x, 192, 3, 1, "conv7", padding="valid" if min(x.shape[1], x.shape[2]) >= 3 else "same")
    x = conv(x, 192, 1, 1, "conv8")
    x = layers.Conv2D(num_classes, 1, kernel_initializer="he_normal", dtype="float32", name="conv9")(x)
    return layers.GlobalAveragePooling2D(dtype="float32", name="logits")(x)


_BUILDERS = {
    "mlp": _mlp,
    "small_cnn": _small_cnn,
    "resnet20": _resnet_v1(3),
    "resnet56": _resnet_v1(9),
    "resnet56_v2": _resnet_v2(9, (16, 32, 64), projection=False),
    "wrn_10_4": _resnet_v2(1, (64, 128, 256), projection=True),
    "all_cnn_c": _all_cnn_c,
}
assert tuple(_BUILDERS) == MODEL_NAMES


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    activation: ActivationSpec = "relu",
    *,
    sharing: str = "layer",
) -> keras.Model:
    """Builds one of :data:`MODEL_NAMES` as a functional Keras model that outputs float32 logits.

    Args:
      name: the architecture (see the module docstring).
      input_shape: ``(height, width, channels)``.
      num_classes: number of output logits (>= 2).
      activation: a zero-argument factory returning a new activation layer per call, or a name /
        expression text (turned into a factory by :func:`activation_factory`).
      sharing: parameter sharing for a text ``activation``: ``"layer"`` or ``"channel"``.

    Raises:
      ModelError: unknown name, bad shape or class count, or a factory that reuses layers.
    """
    if name not in _BUILDERS:
        raise ModelError(f"unknown model {name!r}: allowed are {', '.join(MODEL_NAMES)}")
    try:
        shape = tuple(operator.index(d) for d in input_shape)  # whole numbers only: 8.5 is not 8
    except TypeError as error:
        raise ModelError(f"input_shape must be (height, width, channels) of whole numbers; got {input_shape!r}") from error
    if len(shape) != 3 or min(shape) < 1:
        raise ModelError(f"input_shape must be (height, width, channels) of positive sizes; got {input_shape!r}")
    if name.startswith(("resnet", "wrn")) and min(shape[:2]) < 4:
        raise ModelError(f"model {name!r} needs images of at least 4x4 pixels; got {shape[0]}x{shape[1]}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ModelError(f"num_classes must be an integer >= 2; got {num_classes!r}")
    num_classes = int(num_classes)
    act = _checked_factory(activation, sharing)
    inputs = keras.Input(shape=shape, name="image")
    outputs = _BUILDERS[name](inputs, num_classes, act)
    return keras.Model(inputs, outputs, name=name)


def count_params(model: keras.Model) -> dict[str, int]:
    """Parameter counts: ``total``, ``trainable``, ``non_trainable`` and ``activation``.

    ``activation`` counts the trainable weights that live in activation layers (the learnable
    parameters of parametric activation functions, and those of any layer an activation factory
    made: see :func:`activation_layers`).
    """
    def size(weight) -> int:
        return int(math.prod(weight.shape))

    trainable = sum(size(w) for w in model.trainable_weights)
    non_trainable = sum(size(w) for w in model.non_trainable_weights)
    activation = sum(size(w) for layer in activation_layers(model) for w in layer.trainable_weights)
    return {
        "total": trainable + non_trainable,
        "trainable": trainable,
        "non_trainable": non_trainable,
        "activation": activation,
    }


def activation_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The activation layers of a model, in order: every layer an activation factory made.

    Why not by type alone: a factory may return any layer (a user's own ``keras.layers.Layer``
    subclass with learnable weights); :func:`build_model` marks each one, and names it
    ``act_NN`` when it kept Keras' automatic name, so it is found by that mark or name. Models not
    built here are searched by type (:data:`_ACTIVATION_LAYER_TYPES`).
    """
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True) if _is_activation_site(layer)]


def _is_activation_site(layer: keras.layers.Layer) -> bool:
    """Whether ``layer`` sits at an activation site (see :func:`activation_layers`)."""
    return (
        getattr(layer, _SITE_MARK, None) is not None
        or _SITE_NAME_PATTERN.fullmatch(layer.name) is not None
        or isinstance(layer, _ACTIVATION_LAYER_TYPES)
    )


# What activations.get returns (ParametricActivation, or Keras' fused ReLU / Identity) plus the
# Keras activation layers a hand-written factory may use.
_ACTIVATION_LAYER_TYPES = (
    activations.ParametricActivation,
    layers.Activation,
    layers.ReLU,
    layers.Identity,
    layers.LeakyReLU,
    layers.PReLU,
    layers.ELU,
)
