"""The `activations` library on a Keras backend other than TensorFlow (JAX, in a subprocess).

The layer is written with `keras.ops` so it works on every backend; these tests hold it to that:
the same function values and gradients as on TensorFlow, training, mixed precision, a model
saved under TensorFlow loading under JAX, and the search-space tools.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import activations

pytest.importorskip("jax")

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPRESSIONS = [
    "x * sigmoid(beta * x)",
    "max(relu(x), cosh(elu(x)))",
    "alpha * bessel_i1e(atan(x)) + sinc(beta * x)",
    "log(x) * exp(-x^2) + alpha * x^3",
    "mish(x) - softsign(gamma * x) + erfc(x)",
]
# Not 0 itself: at a kink the backends pick different subgradients (d|x|/dx at 0 is 0 on
# TensorFlow, 1 on JAX), which is a convention, not an error.
POINTS = np.linspace(-6.0, 6.0, 96, dtype="float32").reshape(1, 96)


def _run_under_jax(script: str, tmp_path) -> dict:
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH=PROJECT_ROOT,
               TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _values_and_gradients(expression: str) -> tuple[list, list, dict]:
    """On this process's TensorFlow backend: f, df/dx and df/dparam summed, at POINTS."""
    import tensorflow as tf

    layer = activations.ParametricActivation(expression, initial=0.75)
    x = tf.constant(POINTS)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = layer(x)
    grads = {name: float(tape.gradient(y, weight)) for name, weight in layer.parameters.items()}
    return y.numpy().tolist(), tape.gradient(y, x).numpy().tolist(), grads


def test_layer_values_and_gradients_match_tensorflow(tmp_path):
    got = _run_under_jax(f"""
        import json, jax, numpy as np, keras, activations
        assert keras.backend.backend() == "jax"
        points = np.asarray({POINTS.tolist()}, dtype="float32")
        out = {{}}
        for text in {EXPRESSIONS!r}:
            layer = activations.ParametricActivation(text, initial=0.75)
            layer.build(points.shape)
            weights = [w.value for w in layer.parameters.values()]

            def f(x, weights):
                for variable, value in zip(layer.parameters.values(), weights):
                    variable.assign(value)
                return layer(x)

            y = f(points, weights)
            dx = jax.grad(lambda x: f(x, weights).sum())(points)
            dw = jax.grad(lambda w: f(points, w).sum())(weights)
            out[text] = [np.asarray(y).tolist(), np.asarray(dx).tolist(),
                         dict(zip(layer.parameters, map(float, dw))), layer.implementation]
        print(json.dumps(out))
        """, tmp_path)
    for text in EXPRESSIONS:
        y, dx, dparams = _values_and_gradients(text)
        jax_y, jax_dx, jax_dparams, implementation = got[text]
        assert implementation == "auto"
        np.testing.assert_allclose(jax_y, y, rtol=2e-5, atol=2e-5, err_msg=text)
        np.testing.assert_allclose(jax_dx, dx, rtol=2e-4, atol=2e-4, err_msg=text)
        assert jax_dparams.keys() == dparams.keys()
        for name in dparams:
            np.testing.assert_allclose(jax_dparams[name], dparams[name], rtol=2e-4, atol=2e-3, err_msg=f"{text}: {name}")


def test_model_saved_under_tensorflow_trains_and_predicts_the_same_under_jax(tmp_path):
    """Also with a layer saved as implementation="fused" (TensorFlow only): it loads under JAX
    computing the same function with keras.ops, and says so."""
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = activations.get("x * sigmoid(beta * x)", sharing="channel")(keras.layers.Dense(5)(inputs))
    fused_gelu = activations.ParametricActivation(activations.expression_for("gelu"), implementation="fused")
    model = keras.Model(inputs, keras.layers.Dense(3)(fused_gelu(hidden)))
    model.get_layer(index=2).parameters["beta"].assign(np.array([0.5, 1.0, 1.5, 2.0, -0.5], "float32"))
    path = str(tmp_path / "model.keras")
    model.save(path)
    probe = np.random.default_rng(1).normal(size=(4, 6)).astype("float32")
    expected = model.predict(probe, verbose=0)

    got = _run_under_jax(f"""
        import json, warnings, numpy as np, keras, activations
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = keras.saving.load_model({path!r}, safe_mode=True)
        implementations = [layer.implementation for layer in model.layers if hasattr(layer, "implementation")]
        notes = [str(w.message) for w in caught if "implementation='fused'" in str(w.message)]
        probe = np.asarray({probe.tolist()}, dtype="float32")
        before = np.asarray(model.predict(probe, verbose=0))
        beta = np.asarray(model.get_layer(index=2).parameters["beta"].value)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(64, 6)).astype("float32"), rng.normal(size=(64, 3)).astype("float32")
        losses = model.fit(x, y, epochs=3, batch_size=16, verbose=0).history["loss"]
        moved = np.abs(np.asarray(model.get_layer(index=2).parameters["beta"].value) - beta).max()
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        layer = activations.get("max(relu(x), cosh(elu(x)))")
        y = layer(probe)
        print(json.dumps({{"before": before.tolist(), "beta": beta.tolist(), "losses": losses,
                          "implementations": implementations, "notes": notes,
                          "moved": float(moved), "bf16_out": str(y.dtype),
                          "bf16_vars": [str(w.dtype) for w in layer.weights],
                          "bf16_finite": bool(np.isfinite(np.asarray(y, dtype="float32")).all())}}))
        """, tmp_path)
    np.testing.assert_allclose(got["before"], expected, rtol=1e-5, atol=1e-5)
    assert got["implementations"] == ["auto", "auto"]
    assert len(got["notes"]) == 1 and "on the 'jax' backend it computes the same function" in got["notes"][0]
    np.testing.assert_allclose(got["beta"], [0.5, 1.0, 1.5, 2.0, -0.5])
    assert got["losses"][-1] < got["losses"][0]
    assert got["moved"] > 0  # the learnable parameter trains under JAX
    assert got["bf16_out"] == "bfloat16" and got["bf16_finite"]


def test_search_space_and_equivalence_tools_work_under_jax(tmp_path):
    got = _run_under_jax("""
        import json, random, activations
        from activations import space as spaces
        space = spaces.get_space("pangaea")
        rng = random.Random(3)
        samples = [space.sample(rng) for _ in range(20)]
        children = [str(space.mutate(e, rng)) for e in samples] + [
            str(space.crossover(a, b, rng)) for a, b in zip(samples, samples[1:])]
        print(json.dumps({
            "children": children,
            "same": activations.fingerprint("add(x, relu(x))") == activations.fingerprint("add(relu(x), x)"),
            "different": activations.fingerprint("swish(x)") != activations.fingerprint("x * sigmoid(beta * x)"),
            "constant": activations.check("x * 0 + 2"),
            "exploding": activations.check("exp(exp(exp(x)))"),
            "fine": activations.check("x * sigmoid(beta * x)"),
        }))
        """, tmp_path)
    # The same seeds give the same search moves on either backend: they draw from Python's random only.
    rng = __import__("random").Random(3)
    space = activations.space.get_space("pangaea")
    samples = [space.sample(rng) for _ in range(20)]
    children = [str(space.mutate(e, rng)) for e in samples] + [
        str(space.crossover(a, b, rng)) for a, b in zip(samples, samples[1:])]
    assert got["children"] == children
    assert got["same"] and got["different"]
    assert got["constant"] == activations.check("x * 0 + 2") and got["constant"] is not None
    assert got["exploding"] is not None
    assert got["fine"] is None
