"""ParametricActivation: weights, config, save/load, mixed precision, fused vs portable paths."""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import activations
from activations import ParametricActivation
from activations.expression import ExpressionError

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Expressions exercising parameters, constants, kinks, protected operators, n-ary operators,
# expressions that ignore x and expressions without parameters.
EXPRESSIONS = [
    "x * sigmoid(beta * x)",
    "max(relu(x), cosh(elu(x)))",
    "alpha * tanh(x) + (1 - alpha) * softplus(gamma * x)",
    "div(x, 1 + abs(beta * x))",
    "max_n(x, alpha * x, sin(beta * x))",
    "log(x) * exp(-x^2) + alpha",
    "alpha",
    "2.5",
    "relu(x)",
    "cos(alpha * x) + sinc(beta * x) - asinh(x) * atan(x)",
    "bessel_i0e(beta * x) - bessel_i1e(x) + mish(alpha * x)",
    "sinh(alpha * x) + expm1(x) * selu(beta * x) - elish(x) + log_sigmoid(x) * swish(x) + gaussian(softsign(x))",
]


@pytest.fixture(autouse=True)
def _float32_policy():
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


def _inputs(shape=(3, 5, 4), seed=0):
    return np.random.default_rng(seed).normal(scale=2.0, size=shape).astype("float32")


def _set_parameters(layer, seed=1):
    rng = np.random.default_rng(seed)
    for weight in layer.trainable_weights:
        weight.assign(rng.uniform(0.3, 1.7, size=weight.shape).astype("float32"))


def _values_and_gradients(layer, x, dtype="float32"):
    x = tf.constant(x, dtype=dtype)
    probe = tf.sin(tf.cast(x, "float32"))  # a non-uniform upstream gradient
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(tf.cast(y, "float32") * probe)
    grads = tape.gradient(loss, [x] + layer.trainable_weights, unconnected_gradients="zero")
    return y, grads


# --- weights and arguments -----------------------------------------------------------------------


def test_layer_sharing_creates_float32_scalars_with_initial_values():
    layer = ParametricActivation("alpha * x + beta * relu(x)", initial={"beta": 0.5})
    layer.build((None, 8, 8, 6))
    assert [w.name for w in layer.weights] == ["alpha", "beta"]
    assert all(tuple(w.shape) == () and w.dtype == "float32" for w in layer.weights)
    assert float(layer.parameters["alpha"].numpy()) == 1.0
    assert float(layer.parameters["beta"].numpy()) == 0.5


def test_channel_sharing_creates_one_value_per_channel():
    layer = ParametricActivation("x * sigmoid(beta * x)", sharing="channel", initial=0.25)
    y = layer(_inputs((2, 3, 7)))
    assert y.shape == (2, 3, 7)
    (beta,) = layer.weights
    assert tuple(beta.shape) == (7,)
    np.testing.assert_array_equal(beta.numpy(), np.full(7, 0.25, "float32"))


def test_expression_without_parameters_has_no_weights_and_ignoring_x_broadcasts():
    assert ParametricActivation("relu(x)")(_inputs()).shape == (3, 5, 4)
    constant = ParametricActivation("alpha", sharing="channel", initial=0.5)
    y = constant(_inputs((2, 6)))
    assert y.shape == (2, 6)
    np.testing.assert_allclose(y.numpy(), 0.5)


@pytest.mark.parametrize("sharing", ["global", "Layer", None, "channels"])
def test_bad_sharing_is_a_clear_value_error(sharing):
    with pytest.raises(ValueError, match="sharing must be one of 'layer', 'channel'"):
        ParametricActivation("x", sharing=sharing)


@pytest.mark.parametrize(
    "initial, message",
    [
        ("1.0", "initial must be None, a finite number or a dict"),
        ([1.0], "initial must be None, a finite number or a dict"),
        (True, "initial must be None, a finite number or a dict"),
        (float("nan"), "initial must be a finite number"),
        (1e40, r"initial must be a finite number within float32's range \(\|value\| <= 3.4e38\), got 1e\+40"),
        ({"beta": -1e39}, "initial value of 'beta' must be a finite number within float32's range"),
        ({"beta": float("inf")}, "initial value of 'beta' must be a finite number"),
        ({"beta": "1"}, "initial value of 'beta' must be a finite number"),
        ({"gamma": 1.0}, r"unknown parameter\(s\) \['gamma'\].*parameters are: beta"),
    ],
)
def test_bad_initial_is_a_clear_value_error(initial, message):
    with pytest.raises(ValueError, match=message):
        ParametricActivation("x * sigmoid(beta * x)", initial=initial)


def test_a_likely_typo_in_the_expression_is_warned_about():
    with pytest.warns(UserWarning, match=r"activation mul\(x,sigmoidx\): parameter 'sigmoidx' looks like sigmoid\(x\)"):
        ParametricActivation("x * sigmoidx")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ParametricActivation("x * sigmoid(beta * x)")


def test_bad_expression_and_bad_implementation_raise_value_errors():
    with pytest.raises(ExpressionError, match="unknown operator 'sigmod'"):
        ParametricActivation("x * sigmod(x)")
    with pytest.raises(ValueError, match="implementation must be one of"):
        ParametricActivation("x", implementation="xla")


def test_channel_sharing_needs_a_known_channel_axis():
    layer = ParametricActivation("alpha * x", sharing="channel")
    with pytest.raises(ValueError, match="needs a known last"):
        layer.build((None, None))


# --- config and saving ---------------------------------------------------------------------------


def test_get_config_round_trips_with_canonical_expression():
    layer = ParametricActivation(
        activations.parse("x*sigmoid(beta*x)"), sharing="channel", initial={"beta": 1.5}, name="act"
    )
    config = layer.get_config()
    assert config["expression"] == "mul(x,sigmoid(mul(beta,x)))"
    assert json.loads(json.dumps(config)) == config
    clone = ParametricActivation.from_config(config)
    assert clone.get_config() == config
    assert clone.expression == layer.expression
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(restored, ParametricActivation) and restored.get_config() == config


def test_saved_model_loads_in_a_fresh_process_with_learned_parameters(tmp_path):
    inputs = keras.Input((6,))
    h = keras.layers.Dense(5)(inputs)
    h = ParametricActivation("alpha * x * sigmoid(beta * x)", sharing="channel", name="act1")(h)
    h = ParametricActivation("max(relu(x), cosh(elu(gamma * x)))", name="act2")(h)
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    model.get_layer("act1").parameters["beta"].assign(np.array([0.5, 1.5, 2.0, -0.5, 3.0], "float32"))
    model.get_layer("act2").parameters["gamma"].assign(0.75)
    x = _inputs((4, 6))
    path = tmp_path / "model.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", model.predict(x, verbose=0))
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        import keras
        import activations  # registers ParametricActivation for safe-mode loading
        model = keras.saving.load_model({str(path)!r})
        y = model.predict(np.load({str(tmp_path / "x.npy")!r}), verbose=0)
        np.testing.assert_allclose(y, np.load({str(tmp_path / "expected.npy")!r}), rtol=1e-5, atol=1e-6)
        layer = model.get_layer("act1")
        print(json.dumps({{
            "type": type(layer).__name__,
            "expression": str(layer.expression),
            "sharing": layer.sharing,
            "beta": layer.parameters["beta"].numpy().tolist(),
            "gamma": float(model.get_layer("act2").parameters["gamma"].numpy()),
        }}))
        """
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=PROJECT_ROOT)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["type"] == "ParametricActivation"
    assert loaded["expression"] == "mul(mul(alpha,x),sigmoid(mul(beta,x)))"
    assert loaded["sharing"] == "channel"
    np.testing.assert_allclose(loaded["beta"], [0.5, 1.5, 2.0, -0.5, 3.0])
    assert loaded["gamma"] == 0.75


# --- fused kernel vs portable keras.ops ----------------------------------------------------------


def _fused_and_portable(expression, sharing, x, dtype="float32"):
    """The fused and the keras.ops layer with the same weights: (fused layer, its (y, grads), ops' (y, grads))."""
    policy = "float32" if dtype == "float32" else f"mixed_{dtype}"
    fused, portable = (
        ParametricActivation(expression, sharing=sharing, implementation=kind, dtype=policy) for kind in ("fused", "ops")
    )
    fused.build(x.shape)
    portable.build(x.shape)
    _set_parameters(fused)
    portable.set_weights(fused.get_weights())
    return fused, _values_and_gradients(fused, x, dtype), _values_and_gradients(portable, x, dtype)


@pytest.mark.parametrize("expression", EXPRESSIONS)
@pytest.mark.parametrize("sharing", ["layer", "channel"])
def test_fused_kernel_matches_keras_ops_values_and_gradients(expression, sharing):
    x = _inputs()
    fused, (y_fused, grads_fused), (y_ops, grads_ops) = _fused_and_portable(expression, sharing, x)
    assert y_fused.shape == x.shape and y_fused.dtype == "float32"
    np.testing.assert_allclose(y_fused.numpy(), y_ops.numpy(), rtol=1e-5, atol=1e-5)
    assert len(grads_fused) == 1 + len(fused.expression.parameters)
    for g_fused, g_ops, weight in zip(grads_fused, grads_ops, [None] + fused.trainable_weights):
        expected_shape = x.shape if weight is None else tuple(weight.shape)
        assert tuple(g_fused.shape) == expected_shape
        np.testing.assert_allclose(g_fused.numpy(), g_ops.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "dtype, channels, expression, sharing",
    [
        ("bfloat16", 4, "max(relu(x), cosh(elu(alpha * x)))", "channel"),
        ("bfloat16", 4, "alpha * x * sigmoid(beta * x) + gamma", "channel"),
        ("bfloat16", 6, "alpha * x * sigmoid(beta * x) + gamma", "layer"),
        ("bfloat16", 4, "x * sigmoid(beta * x)", "layer"),
        ("bfloat16", 5, "max(relu(x), cosh(elu(alpha * x)))", "channel"),
        ("float16", 4, "max(relu(x), cosh(elu(alpha * x)))", "channel"),
    ],
)
def test_fused_kernel_matches_keras_ops_for_half_precision_inputs(dtype, channels, expression, sharing):
    """bfloat16 with an even channel count takes the packed layout; odd counts the plain one."""
    x = _inputs((3, 5, channels))
    _, (y_fused, grads_fused), (y_ops, grads_ops) = _fused_and_portable(expression, sharing, x, dtype)
    assert y_fused.dtype == dtype and grads_fused[0].dtype == dtype and grads_fused[1].dtype == "float32"
    np.testing.assert_allclose(np.float32(y_fused), np.float32(y_ops), rtol=1e-2, atol=1e-2)
    for g_fused, g_ops in zip(grads_fused, grads_ops):
        np.testing.assert_allclose(np.float32(g_fused), np.float32(g_ops), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    "shape, dtype, sharing, expression",
    [
        ((2, 8, 4), "float32", "channel", "alpha * x * sigmoid(beta * x) + gamma"),  # 8 rows of 4 -> 1 row of 32
        ((4, 4, 6), "bfloat16", "channel", "alpha * x * sigmoid(beta * x) + gamma"),  # packed words, tiled
        ((4, 8, 5), "bfloat16", "layer", "bessel_i1e(beta * x) + sin(x)"),  # odd channels, tiled
        ((4, 8, 5), "float32", "channel", "max(relu(x), cosh(elu(alpha * x)))"),
        ((4, 8, 5), "bfloat16", "channel", "alpha * atan(x) + beta * x"),  # odd channels, packed once tiled
    ],
)
def test_fused_kernel_on_wide_rows_matches_keras_ops(shape, dtype, sharing, expression):
    """Channel vectors viewed as longer rows, per-channel parameters tiled: same values and gradients."""
    x = _inputs(shape)
    _, (y_fused, grads_fused), (y_ops, grads_ops) = _fused_and_portable(expression, sharing, x, dtype)
    tolerance = 1e-5 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(np.float32(y_fused), np.float32(y_ops), rtol=tolerance, atol=tolerance)
    for g_fused, g_ops in zip(grads_fused, grads_ops):
        assert g_fused.shape == g_ops.shape
        np.testing.assert_allclose(np.float32(g_fused), np.float32(g_ops), rtol=10 * tolerance, atol=10 * tolerance)


@pytest.mark.parametrize(
    "shape, static_shape, width",
    [
        ((2, 8, 4), (2, 8, 4), 32),  # 16 leading positions: rows of 8 channel vectors
        ((4, 8, 5), (4, 8, 5), 160),  # odd channel count: 32 vectors a row
        ((6, 8, 4), (None, 8, 4), 32),  # unknown batch: the known 8 suffices
        ((3, 5, 4), (3, 5, 4), 4),  # 15 leading positions cannot be grouped by 8: left alone
        ((2, 64), (None, 64), 64),  # already a multiple of 32
    ],
)
def test_wide_rows_group_whole_channel_vectors(shape, static_shape, width):
    from activations.layer import ROW_QUANTUM, _run_with_wide_rows

    seen = []

    def kernel(rows, offset):  # adds a per-channel offset, as a parameter would
        seen.append(rows.shape[-1])
        assert offset.shape[0] == rows.shape[-1]
        return rows + offset

    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    offset = np.arange(shape[-1], dtype="float32")
    run = tf.function(lambda x, offset: _run_with_wide_rows(kernel, x, [offset]),
                      input_signature=[tf.TensorSpec(static_shape), tf.TensorSpec([shape[-1]])])
    np.testing.assert_array_equal(run(x, offset).numpy(), x + offset)
    assert seen == [width] and (width == shape[-1] or width % ROW_QUANTUM == 0)


def test_default_implementation_on_tensorflow_is_the_fused_kernel():
    layer = ParametricActivation("x * sigmoid(beta * x)")
    assert layer._use_fused()
    assert not ParametricActivation("x", implementation="ops")._use_fused()


def test_a_model_with_the_fused_kernel_converts_to_tensorflow_lite():
    """Deployment: the fused kernels use only operations TensorFlow Lite has (its exponential is
    written with bit operations; a left shift, which Lite lacks, once made conversion fail; erf is
    a rational function, as Lite has no `Erf`)."""
    model = _small_model("alpha * x * sigmoid(beta * x) + cosh(elu(x)) + erf(x)", "channel")
    _set_parameters(model.layers[2])
    converted = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    interpreter = tf.lite.Interpreter(model_content=converted)
    interpreter.allocate_tensors()
    x = _inputs((1, 8, 8, 3))
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


def _small_model(expression, sharing, policy="float32", implementation="auto"):
    keras.mixed_precision.set_global_policy(policy)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    h = ParametricActivation(expression, sharing=sharing, implementation=implementation)(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(3, dtype="float32")(h)
    model = keras.Model(inputs, outputs)
    keras.mixed_precision.set_global_policy("float32")
    return model


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fused_kernel_trains_inside_compiled_model_with_dynamic_batch(jit_compile):
    keras.utils.set_random_seed(0)
    model = _small_model("alpha * x * sigmoid(beta * x)", "channel")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(13, 8, 8, 3)).astype("float32"), rng.integers(0, 3, 13)
    act = model.layers[2]
    before = [w.numpy().copy() for w in act.weights]
    history = model.fit(x, y, batch_size=5, epochs=2, verbose=0)  # batches of 5, 5 and 3
    assert np.all(np.isfinite(history.history["loss"]))
    after = [w.numpy() for w in act.weights]
    assert all(a.shape == (4,) and not np.allclose(a, b) for a, b in zip(after, before))
    assert model.predict(x[:7], batch_size=7, verbose=0).shape == (7, 3)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("implementation", ["fused", "ops"])
def test_mixed_precision_keeps_float32_weights_and_finite_gradients(policy, implementation):
    keras.utils.set_random_seed(0)
    model = _small_model("max(relu(x), cosh(elu(alpha * x))) + beta", "channel", policy, implementation)
    act = model.layers[2]
    assert act.compute_dtype == policy.split("_")[1]
    assert all(w.dtype == "float32" for w in act.weights)
    x = tf.constant(_inputs((6, 8, 8, 3)))
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = tf.reduce_mean(tf.square(logits))
    grads = tape.gradient(loss, model.trainable_weights)
    assert logits.dtype == "float32"
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)
    act_grads = grads[2:4]  # conv kernel, conv bias, then the activation's alpha and beta
    assert [g.dtype for g in act_grads] == ["float32", "float32"]
    assert all(np.any(g.numpy() != 0) for g in act_grads)
    intermediate = keras.Model(model.inputs, act.output)(x)
    assert intermediate.dtype == policy.split("_")[1]
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    model.fit(x, np.zeros((6, 3), "float32"), epochs=2, verbose=0)
    assert all(w.dtype == "float32" and np.all(np.isfinite(w.numpy())) for w in act.weights)


@pytest.mark.parametrize("implementation", ["fused", "ops"])
def test_float64_layer_computes_in_float64_and_gives_float32_parameter_gradients(implementation):
    layer = ParametricActivation("x * sigmoid(beta * x)", dtype="float64", implementation=implementation)
    x = tf.constant(_inputs(), dtype="float64")
    with tf.GradientTape() as tape:
        y = layer(x)
    assert y.dtype == "float64"
    assert layer.weights[0].dtype == "float32"
    (grad,) = tape.gradient(y, layer.trainable_weights)
    assert grad.dtype == "float32"  # a custom loop's `weight.assign_sub(rate * grad)` works
    layer.weights[0].assign_sub(0.1 * grad)


def test_bfloat16_packing_round_trips_bit_exactly():
    from activations.layer import _from_words, _pack_bfloat16, _to_words, _unpack_bfloat16

    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(scale=10.0, size=60), [0.0, -0.0, np.inf, -np.inf]]).astype("float32")
    x = tf.cast(tf.constant(values.reshape(8, 8)), tf.bfloat16)
    even, odd = _unpack_bfloat16(_to_words(x))
    np.testing.assert_array_equal(even.numpy(), tf.cast(x, "float32").numpy()[:, 0::2])
    np.testing.assert_array_equal(odd.numpy(), tf.cast(x, "float32").numpy()[:, 1::2])
    # Packing float32 values rounds exactly like a cast, NaN included.
    wide = tf.constant(np.concatenate([rng.normal(size=(8, 6)), [[np.nan] * 6]]).astype("float32"))
    packed = _from_words(_pack_bfloat16(wide[:, 0::2], wide[:, 1::2]), tf.shape(wide))
    expected = tf.cast(wide, tf.bfloat16)
    np.testing.assert_array_equal(tf.cast(packed[:-1], "float32").numpy(), tf.cast(expected[:-1], "float32").numpy())
    assert np.all(np.isnan(tf.cast(packed[-1], "float32").numpy()))


def test_bfloat16_model_trains_with_whole_model_xla():
    keras.utils.set_random_seed(0)
    model = _small_model("x * sigmoid(beta * x)", "channel", "mixed_bfloat16")
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", jit_compile=True)
    x = _inputs((6, 8, 8, 3))
    history = model.fit(x, np.arange(6) % 3, batch_size=4, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert model.layers[2].weights[0].dtype == "float32"


def test_prefer_wide_vectors_only_adds_its_flag_once(monkeypatch):
    from activations.layer import WIDE_VECTORS_FLAG, prefer_wide_vectors

    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    assert prefer_wide_vectors() is True
    assert os.environ["XLA_FLAGS"] == f"--xla_cpu_enable_fast_math=false {WIDE_VECTORS_FLAG}"
    assert prefer_wide_vectors() is False
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_prefer_vector_width=256")
    assert prefer_wide_vectors() is False
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_prefer_vector_width=256"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_one_expression_shared_by_layers_of_different_shapes_and_sharing(dtype):
    """The compiled kernels are shared per expression and retrace with relaxed shapes."""
    expression = "alpha * x * sigmoid(beta * x) - gamma * relu(x)"
    policy = "float32" if dtype == "float32" else f"mixed_{dtype}"
    for shape, sharing in [((2, 4), "channel"), ((3, 6), "layer"), ((5, 2, 8), "channel"), ((1, 2), "layer")]:
        fused = ParametricActivation(expression, sharing, implementation="fused", dtype=policy)
        portable = ParametricActivation(expression, sharing, implementation="ops", dtype=policy)
        x = _inputs(shape, seed=len(shape))
        fused.build(x.shape)
        portable.build(x.shape)
        _set_parameters(fused, seed=shape[-1])
        portable.set_weights(fused.get_weights())
        (y_fused, grads_fused), (y_ops, grads_ops) = (
            _values_and_gradients(layer, x, dtype) for layer in (fused, portable)
        )
        tolerance = 2e-2 if dtype == "bfloat16" else 1e-5
        np.testing.assert_allclose(np.float32(y_fused), np.float32(y_ops), rtol=tolerance, atol=tolerance)
        for g_fused, g_ops in zip(grads_fused, grads_ops):
            np.testing.assert_allclose(np.float32(g_fused), np.float32(g_ops), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("implementation", ["fused", "ops"])
def test_integer_input_is_computed_in_the_compute_dtype(implementation):
    layer = ParametricActivation("x*sigmoid(beta*x)", implementation=implementation)
    y = layer(np.arange(-3, 4))
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    x = np.arange(-3, 4, dtype=np.float64)
    np.testing.assert_allclose(np.asarray(y), x / (1 + np.exp(-x)), rtol=1e-6)


def test_a_channel_shared_layer_refuses_another_channel_count_clearly():
    layer = ParametricActivation("x*sigmoid(beta*x)", sharing="channel")
    layer(np.ones((2, 4), "float32"))
    with pytest.raises(ValueError, match="expected axis -1 of input shape to have value 4"):
        layer(np.ones((2, 5), "float32"))


def test_numpy_scalars_are_accepted_as_initial_values():
    layer = ParametricActivation("alpha*x + beta", initial={"alpha": np.float32(0.5), "beta": np.int64(2)})
    assert layer.initial_values == {"alpha": 0.5, "beta": 2.0}
    assert ParametricActivation("alpha*x", initial=np.float32(3)).initial_values == {"alpha": 3.0}
    # A layer-shared weight's value is a 0-d array: it can start another layer.
    assert ParametricActivation("alpha*x", initial={"alpha": np.array(2.5)}).initial_values == {"alpha": 2.5}
    assert ParametricActivation("alpha*x", initial=np.array(-1)).initial_values == {"alpha": -1.0}
    with pytest.raises(ValueError, match="finite number"):
        ParametricActivation("alpha*x", initial=np.bool_(True))


# --- gradients of gradients ----------------------------------------------------------------------


def _second_order(layer, x, dtype, graph=False):
    """Gradients w.r.t. x and the weights of a penalty on the layer's first-order gradients.

    The penalty squares both the input gradient (as a WGAN-GP gradient penalty does) and the
    parameter gradients, so every output of the backward pass is differentiated again.
    """
    weights = layer.trainable_weights

    def run(x):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                loss = tf.reduce_sum(tf.cast(layer(x), "float32") * tf.sin(tf.cast(x, "float32")))
            dx, *dparams = inner.gradient(loss, [x] + weights)
            penalty = tf.reduce_sum(tf.square(tf.cast(dx, "float32")))
            penalty += sum(tf.reduce_sum(g * g) for g in dparams)
        return outer.gradient(penalty, [x] + weights)

    return (tf.function(run) if graph else run)(tf.constant(x, dtype=dtype))


@pytest.mark.parametrize(
    "expression, sharing, shape, graph",
    [
        ("max(relu(x), cosh(elu(x)))", "layer", (3, 5, 4), False),  # no parameters
        ("x * sigmoid(beta * x)", "channel", (3, 5, 4), False),  # one parameter: split backward kernels
        ("alpha * x * sigmoid(beta * x) + gamma", "layer", (3, 5, 4), False),
        ("alpha * x * sigmoid(beta * x) + gamma", "channel", (4, 4, 6), False),  # packed and tiled rows
        ("alpha * x * sigmoid(beta * x) + gamma", "channel", (4, 4, 6), True),  # inside a tf.function
        ("x * sigmoid(beta * x)", "channel", (3, 5), False),  # odd channel count: the plain layout
    ],
)
def test_second_order_gradients_under_bfloat16_match_float32_and_portable(expression, sharing, shape, graph):
    """Even channel counts take the packed kernel, whose uint32 words carry no gradient of their own."""
    x = np.float32(tf.cast(_inputs(shape), tf.bfloat16))  # the same values in both precisions
    layers = {
        (kind, policy): ParametricActivation(expression, sharing=sharing, implementation=kind, dtype=policy)
        for kind, policy in [("fused", "mixed_bfloat16"), ("fused", "float32"), ("ops", "mixed_bfloat16")]
    }
    for layer in layers.values():
        layer.build(x.shape)
    packed = layers["fused", "mixed_bfloat16"]
    _set_parameters(packed)
    for layer in layers.values():
        layer.set_weights(packed.get_weights())
    got = _second_order(packed, x, "bfloat16", graph)
    assert len(got) == 1 + len(packed.expression.parameters) and all(g is not None for g in got)
    assert got[0].dtype == "bfloat16" and all(g.dtype == "float32" for g in got[1:])
    for reference in (_second_order(layers["fused", "float32"], x, "float32"),
                      _second_order(layers["ops", "mixed_bfloat16"], x, "bfloat16")):
        for g, expected in zip(got, reference):
            scale = float(np.max(np.abs(np.float32(expected))))
            np.testing.assert_allclose(np.float32(g), np.float32(expected), rtol=2e-2, atol=2e-2 * scale)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_forward_mode_autodiff_through_the_fused_kernel_is_refused_and_the_portable_path_gives_it(policy):
    x = tf.cast(_inputs((3, 4)), policy.split("_")[-1])
    fused, portable = (
        ParametricActivation("x * sigmoid(x)", implementation=kind, dtype=policy) for kind in ("fused", "ops")
    )
    with tf.autodiff.ForwardAccumulator(x, tf.ones_like(x)) as accumulator:
        with pytest.raises(NotImplementedError, match="forward-mode autodiff.*implementation='ops'"):
            fused(x)
        y = portable(x)
    x = np.float32(x)
    sigmoid = 1 / (1 + np.exp(-x))
    derivative = sigmoid * (1 + x * (1 - sigmoid))
    np.testing.assert_allclose(np.float32(accumulator.jvp(y)), derivative, rtol=2e-2, atol=2e-2)


def test_kernels_of_many_expressions_do_not_warn_of_retracing():
    """Each expression's kernel traces once per shape; TensorFlow counts them as one function
    retracing and warns, which the layer leaves out (only for its own kernels)."""
    import logging

    import tensorflow as tf

    from activations import layer as layer_module

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    try:
        x = tf.constant(np.linspace(-2, 2, 32, dtype="float32").reshape(8, 4))
        for i in range(8):
            layer = ParametricActivation(f"x + {i + 0.25} * tanh(beta * x)", implementation="fused")
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
            assert np.all(np.isfinite(tape.gradient(y, x).numpy()))
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "_fused_kernel" in r.getMessage()]
    assert layer_module._not_a_kernel_retracing_note in logger.filters
    other = logging.LogRecord("tensorflow", logging.WARNING, __file__, 1,
                              "5 out of the last 5 calls to <function f> triggered tf.function retracing.", None, None)
    assert layer_module._not_a_kernel_retracing_note(other)  # the user's own retracing still shows
