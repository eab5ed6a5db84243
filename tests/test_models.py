"""Child networks: published parameter counts, forward passes, per-site activation layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import activations
from trainer import models
from trainer.models import MODEL_NAMES, ModelError, activation_layers, build_model, count_params

# Trainable parameters of the published architectures (32x32x3 input, 10 classes).
PUBLISHED = {
    "resnet20": 0.27e6,  # He et al. 2016, Table 6
    "resnet56": 0.85e6,  # He et al. 2016, Table 6
    "resnet56_v2": 0.85e6,  # same layers, pre-activation order
    "wrn_10_4": 1.2e6,  # Zagoruyko & Komodakis 2016 (WRN-10-4)
    "all_cnn_c": 1.37e6,  # Springenberg et al. 2015, All-CNN-C
}

# The activation sites each architecture has (one per conv/dense that the paper activates).
SITES = {
    "mlp": 2,
    "small_cnn": 4,
    "resnet20": 1 + 2 * 9,
    "resnet56": 1 + 2 * 27,
    "resnet56_v2": 2 * 27 + 1,
    "wrn_10_4": 2 * 3 + 1,
    "all_cnn_c": 8,
}


@pytest.fixture(scope="module")
def built():
    """Every architecture built once at 32x32x3 with ReLU (shared by the tests below)."""
    return {name: build_model(name, (32, 32, 3), 10, "relu") for name in MODEL_NAMES}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_published_architectures(built, name):
    trainable = count_params(built[name])["trainable"]
    assert trainable == pytest.approx(PUBLISHED[name], rel=0.03), trainable


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_runs_forward_and_outputs_logits(built, name):
    model = built[name]
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    logits = keras.ops.convert_to_numpy(model(images, training=False))
    assert logits.shape == (2, 10)
    assert logits.dtype == np.float32
    assert np.all(np.isfinite(logits))
    assert len(activation_layers(model)) == SITES[name]


@pytest.mark.parametrize("name", ["mlp", "small_cnn", "resnet20"])
def test_small_digit_images_work(name):
    model = build_model(name, (8, 8, 1), 10, "relu")
    logits = keras.ops.convert_to_numpy(model(np.zeros((2, 8, 8, 1), "float32")))
    assert logits.shape == (2, 10)


def test_every_activation_site_gets_its_own_per_channel_parameters():
    # PReLU with shared spatial axes has one learnable slope per channel.
    model = build_model("resnet20", (32, 32, 3), 10, lambda: keras.layers.PReLU(shared_axes=[1, 2]))
    sites = activation_layers(model)
    assert len(sites) == SITES["resnet20"]
    assert len({id(layer) for layer in sites}) == len(sites)
    widths = [layer.weights[0].shape[-1] for layer in sites]
    # stem 16, then 6 sites each in the 16/32/64 stages
    assert widths == [16] * 7 + [32] * 6 + [64] * 6
    assert count_params(model)["activation"] == sum(widths)
    plain = count_params(build_model("resnet20", (32, 32, 3), 10, "relu"))
    assert count_params(model)["trainable"] == plain["trainable"] + sum(widths)


@pytest.mark.parametrize("sharing,expected", [("layer", 1), ("channel", 32)])
def test_expression_activation_parameters_per_layer_or_channel(sharing, expected):
    model = build_model("small_cnn", (8, 8, 1), 10, "x*sigmoid(beta*x)", sharing=sharing)
    sites = [layer for layer in activation_layers(model) if layer.weights]
    assert len(sites) == SITES["small_cnn"]
    assert int(np.prod(sites[0].weights[0].shape)) == expected  # first conv: 32 channels


def test_logits_stay_float32_under_mixed_precision():
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model("all_cnn_c", (8, 8, 3), 10, "relu")
        resnet = build_model("resnet20", (8, 8, 3), 10, "relu")
    finally:
        keras.mixed_precision.set_global_policy(previous)
    for m in (model, resnet):
        assert m.layers[1].compute_dtype == "bfloat16"
        assert m.output.dtype == "float32"
        out = m(np.zeros((1, 8, 8, 3), "float32"))
        assert keras.backend.standardize_dtype(out.dtype) == "float32"


def test_unknown_model_name_lists_the_allowed_ones():
    with pytest.raises(ModelError) as error:
        build_model("resnet18", (32, 32, 3), 10, "relu")
    for name in MODEL_NAMES:
        assert name in str(error.value)


def test_bad_arguments_are_reported():
    with pytest.raises(ModelError, match="input_shape"):
        build_model("mlp", (32, 32), 10, "relu")
    with pytest.raises(ModelError, match="num_classes"):
        build_model("mlp", (8, 8, 1), 1, "relu")
    with pytest.raises(ModelError, match="sharing"):
        build_model("mlp", (8, 8, 1), 10, "relu", sharing="neuron")
    with pytest.raises(activations.ExpressionError, match="no_such_activation"):
        build_model("mlp", (8, 8, 1), 10, "no_such_activation")
    with pytest.raises(ModelError, match=r"of whole numbers; got \(8.5, 8, 1\)"):
        build_model("mlp", (8.5, 8, 1), 10, "relu")
    with pytest.raises(ModelError, match=r"activation is a layer \(ReLU\); pass a factory .*lambda: keras.layers.ReLU\(\)"):
        build_model("mlp", (8, 8, 1), 10, keras.layers.ReLU())
    # NumPy integers (as data sets report them) are integers.
    assert build_model("mlp", np.array([8, 8, 1]), np.int64(10), "relu").output_shape == (None, 10)


def test_activation_sites_have_the_same_names_in_every_build():
    """Keras' automatic names count up over the process; per-layer results of two runs (seeds)
    must line up, so the sites are named by position. A name the user chose is kept."""
    from trainer.models import activation_layers

    first, second = (build_model("small_cnn", (8, 8, 1), 3, "swish") for _ in range(2))
    names = [layer.name for layer in activation_layers(first)]
    assert names == [layer.name for layer in activation_layers(second)] == ["act_01", "act_02", "act_03", "act_04"]
    assert [w.path for w in activation_layers(second)[0].weights] == ["act_01/beta"]
    counter = iter(range(10))
    named = build_model("mlp", (8, 8, 1), 3, lambda: keras.layers.ReLU(name=f"mine_{next(counter)}"))
    assert [layer.name for layer in activation_layers(named)][:2] == ["mine_0", "mine_1"]


class _ScaledTanh(keras.layers.Layer):
    """A user's own activation layer with one learnable weight per channel (no activations type)."""

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return self.scale * keras.ops.tanh(x)


@pytest.mark.parametrize("named", [False, True])
def test_custom_activation_layers_are_counted_whatever_their_type_or_name(named):
    """Every layer the factory made is an activation site: its weights count as activation ones."""
    counter = iter(range(1, 10))
    factory = (lambda: _ScaledTanh(name=f"mine_{next(counter)}")) if named else _ScaledTanh
    model = build_model("mlp", (8, 8, 1), 3, factory)
    sites = activation_layers(model)
    assert [type(layer) for layer in sites] == [_ScaledTanh, _ScaledTanh]
    assert [layer.name for layer in sites] == (["mine_1", "mine_2"] if named else ["act_01", "act_02"])
    assert count_params(model)["activation"] == 256 + 128  # one scale per channel of the hidden layers


def test_custom_activation_sites_are_still_found_in_a_clone():
    """A copy loses build_model's mark but keeps the act_NN names, so it counts the same."""
    model = build_model("mlp", (8, 8, 1), 3, _ScaledTanh)
    copy = keras.models.clone_model(model)
    assert count_params(copy)["activation"] == count_params(model)["activation"] == 256 + 128


def test_a_factory_that_reuses_one_layer_is_rejected():
    shared = keras.layers.Activation("relu")
    with pytest.raises(ModelError, match="same layer twice"):
        build_model("mlp", (8, 8, 1), 10, lambda: shared)
    with pytest.raises(ModelError, match="must return a Keras layer"):
        build_model("mlp", (8, 8, 1), 10, lambda: "relu")


@pytest.mark.parametrize(
    "size, channels, filters, stride",
    [(4, 4, 8, 2), (6, 3, 8, 3), (5, 4, 8, 2), (4, 4, 4, 2), (4, 2, 5, 1)],
)
def test_option_a_shortcut_subsamples_and_zero_pads(size, channels, filters, stride):
    inputs = keras.Input((size, size, channels))
    model = keras.Model(inputs, models._shortcut_a(inputs, filters, stride, "block"))
    assert count_params(model)["total"] == 0
    x = np.arange(2 * size * size * channels, dtype="float32").reshape(2, size, size, channels)
    y = keras.ops.convert_to_numpy(model(x))
    subsampled = x[:, ::stride, ::stride, :]
    assert y.shape == subsampled.shape[:3] + (filters,)
    before = (filters - channels) // 2
    np.testing.assert_array_equal(y[..., before:before + channels], subsampled)
    assert not y[..., :before].any() and not y[..., before + channels:].any()


def test_option_a_shortcut_passes_gradients_to_the_kept_pixels_only():
    inputs = keras.Input((4, 4, 2))
    model = keras.Model(inputs, models._shortcut_a(inputs, 4, 2, "block"))
    x = tf.constant(np.ones((1, 4, 4, 2), "float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(model(x))
    grad = tape.gradient(total, x).numpy()
    expected = np.zeros_like(grad)
    expected[:, ::2, ::2, :] = 1.0
    np.testing.assert_array_equal(grad, expected)


def test_fused_batch_norm_matches_keras_batch_norm():
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(16, 5, 5, 4)).astype("float32")
    keras_bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    fused = models.FusedBatchNormalization(momentum=0.9, epsilon=1e-5)
    y_keras = keras.ops.convert_to_numpy(keras_bn(x, training=True))
    y_fused = keras.ops.convert_to_numpy(fused(x, training=True))
    np.testing.assert_allclose(y_fused, y_keras, atol=1e-5)
    np.testing.assert_allclose(fused.moving_mean.numpy(), keras_bn.moving_mean.numpy(), rtol=1e-5)
    # The fused kernel tracks the unbiased variance: n / (n - 1) times Keras' biased one.
    n = 16 * 5 * 5
    unbiased = 0.9 + 0.1 * x.reshape(-1, 4).var(axis=0) * n / (n - 1)
    np.testing.assert_allclose(fused.moving_variance.numpy(), unbiased, rtol=1e-4)
    fused.moving_variance.assign(keras_bn.moving_variance.numpy())
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(fused(x)), keras.ops.convert_to_numpy(keras_bn(x)), atol=1e-5
    )


def test_portable_models_save_with_keras_layers_only_and_round_trip(tmp_path):
    model = build_model("resnet20", (8, 8, 3), 10, lambda: activations.get("swish", sharing="channel"))
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype("float32")
    model(x, training=True)  # move the batch-norm statistics away from their initial values
    portable = models.portable_model(model)
    layer_types = {type(layer) for layer in portable.layers}
    assert models.FusedBatchNormalization not in layer_types
    assert keras.layers.BatchNormalization in layer_types
    path = tmp_path / "m.keras"
    portable.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), expected, rtol=1e-5, atol=1e-5)
