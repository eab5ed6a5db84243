"""activations.get: usual names, expressions, fresh layers, helpful errors."""

import math

import keras
import numpy as np
import pytest

import activations
from activations import ExpressionError, ParametricActivation
from activations.named import NAMED, expression_of, names

X = np.linspace(-4.0, 4.0, 41, dtype="float32").reshape(-1, 1)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softplus(x):
    return np.log1p(np.exp(x))


# Independent numpy definitions of the usual functions.
REFERENCES = {
    "relu": lambda x: np.maximum(x, 0),
    "linear": lambda x: x,
    "leaky_relu": lambda x: np.where(x > 0, x, 0.01 * x),
    "prelu": lambda x: np.where(x > 0, x, 0.25 * x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "selu": lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(x)),
    "gelu": lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
    "swish": lambda x: x * _sigmoid(x),
    "silu": lambda x: x * _sigmoid(x),
    "mish": lambda x: x * np.tanh(_softplus(x)),
    "softplus": _softplus,
    "softsign": lambda x: x / (1 + np.abs(x)),
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "hard_sigmoid": lambda x: np.clip(x / 6 + 0.5, 0, 1),
    "hard_swish": lambda x: x * np.clip(x / 6 + 0.5, 0, 1),
    "log_sigmoid": lambda x: -_softplus(-x),
    "elish": lambda x: np.where(x >= 0, x * _sigmoid(x), np.expm1(x) * _sigmoid(x)),
}


def test_every_name_has_an_independent_reference():
    assert set(REFERENCES) == set(NAMED)


@pytest.mark.parametrize("name", sorted(NAMED))
def test_named_layers_compute_the_usual_function(name):
    layer = activations.get(name)
    assert isinstance(layer, keras.layers.Layer)
    np.testing.assert_allclose(np.asarray(layer(X)), REFERENCES[name](X.astype("float64")), rtol=2e-5, atol=2e-5)
    expression = expression_of(layer)
    assert expression is not None
    np.testing.assert_allclose(
        np.asarray(expression.evaluate(X, {n: 0.25 if n == "alpha" else 1.0 for n in expression.parameters})),
        np.asarray(layer(X)),
        rtol=1e-6,
        atol=1e-6,
    )


def test_relu_and_linear_are_the_fast_builtins():
    assert type(activations.get("relu")) is keras.layers.ReLU
    assert type(activations.get("linear")) is keras.layers.Identity
    assert type(activations.get("identity")) is keras.layers.Identity


def test_get_returns_a_new_layer_every_call():
    for spec in ["relu", "swish", "gelu", "max(relu(x), cosh(elu(x)))", activations.parse("x * tanh(x)")]:
        first, second = activations.get(spec), activations.get(spec)
        assert first is not second


def test_swish_has_a_learnable_beta_and_silu_is_fixed():
    swish = activations.get("swish", sharing="channel")
    swish.build((None, 5))
    assert [w.name for w in swish.trainable_weights] == ["beta"]
    assert tuple(swish.trainable_weights[0].shape) == (5,)
    silu = activations.get("silu")
    silu.build((None, 5))
    assert silu.trainable_weights == []


def test_initial_values_default_per_name_and_can_be_overridden():
    prelu = activations.get("prelu")
    prelu.build((None, 3))
    assert float(prelu.parameters["alpha"].numpy()) == 0.25
    assert activations.get("prelu", initial={}).initial_values == {"alpha": 0.25}  # a dict overrides only its names
    steep = activations.get("swish", initial={"beta": 4.0})
    np.testing.assert_allclose(np.asarray(steep(X)), X * _sigmoid(4.0 * X), rtol=1e-5, atol=1e-6)


def test_names_are_case_and_dash_insensitive_and_bare_operators_mean_op_of_x():
    assert isinstance(activations.get("Swish"), ParametricActivation)
    assert str(activations.get("leaky-relu").expression) == "leaky_relu(x)"
    erf = activations.get("erf")
    assert str(erf.expression) == "erf(x)"
    assert str(activations.get("arctan").expression) == "atan(x)"


def test_expression_text_and_expression_objects_are_accepted():
    layer = activations.get("max(relu(x), cosh(elu(x)))", sharing="channel")
    assert isinstance(layer, ParametricActivation)
    assert str(layer.expression) == "max(relu(x),cosh(elu(x)))"
    assert layer.sharing == "channel"
    expression = activations.parse("alpha * x")
    assert activations.get(expression, initial=0.5).expression == expression


def test_unknown_name_lists_close_names():
    with pytest.raises(ExpressionError, match=r"unknown activation name 'swissh'; did you mean swish"):
        activations.get("swissh")
    with pytest.raises(ExpressionError, match="known names: .*gelu"):
        activations.get("qqqqqq")
    with pytest.raises(ExpressionError) as info:  # a name that is also an operator is named once
        activations.get("swsh")
    suggested = str(info.value).split("did you mean ")[1].split("?")[0].split(", ")
    assert "swish" in suggested and len(suggested) == len(set(suggested))


def test_text_that_does_not_use_x_is_refused_naming_what_it_parsed_as():
    with pytest.raises(ExpressionError, match=r"'P-ReLU' parses as sub\(P,ReLU\), which does not use the input x.*did you mean prelu"):
        activations.get("P-ReLU")
    with pytest.raises(ExpressionError, match="does not use the input x"):
        activations.get("alpha * beta")
    assert str(activations.expression_for("alpha * beta")) == "mul(alpha,beta)"  # to look at, or plot
    assert activations.get("alpha * x").expression.uses_input  # a parameter beside x is fine


def test_bad_expression_text_propagates_expression_error():
    with pytest.raises(ExpressionError, match="position"):
        activations.get("x * (sigmoid(x)")
    with pytest.raises(ExpressionError, match="unknown operator 'sigmod'"):
        activations.get("x * sigmod(x)")


def test_a_file_given_to_get_is_pointed_at_load(tmp_path):
    exported = tmp_path / "export"
    exported.mkdir()
    (exported / "activation.json").write_text("{}")
    for given in ("root/export/activation.json", str(exported / "activation.json"), "export/model.keras"):
        with pytest.raises(ExpressionError, match=r"(?s)position .*activations\.load\(path\)"):
            activations.get(given)
    with pytest.raises(ValueError, match=r"activations\.load\(path\).*got the path"):
        activations.get(exported / "activation.json")
    # Division is still division, and an unknown name still gets its closest names.
    assert str(activations.get("x/2").expression) == str(activations.parse("x/2"))
    with pytest.raises(ExpressionError) as error:
        activations.get("x * sigmod(x)")
    assert "activations.load" not in str(error.value)


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="a name .* or expression text"):
        activations.get(3.0)
    with pytest.raises(ValueError, match="sharing must be one of"):
        activations.get("relu", sharing="global")
    with pytest.raises(ValueError, match="initial"):
        activations.get("swish", initial={"alpha": 1.0})


def test_expression_of_keras_builtins():
    assert str(expression_of(keras.layers.Activation("gelu"))) == "gelu(x)"
    assert str(expression_of(keras.layers.Activation("silu"))) == "swish(x)"
    assert expression_of(keras.layers.Activation("leaky_relu")) is None  # different default slope
    assert expression_of(keras.layers.ReLU(max_value=6.0)) is None
    assert expression_of(keras.layers.Dense(3)) is None


def test_names_lists_names_and_aliases():
    assert {"swish", "relu", "identity", "linear"} <= set(names())


def test_expressions_that_look_like_dashed_names_are_parsed():
    assert str(activations.get("x-1").expression) == "sub(x,1)"
    assert str(activations.get("alpha-x").expression) == "sub(alpha,x)"
    with pytest.raises(ExpressionError, match="operator 'max' takes several arguments"):
        activations.get("max")


def test_usual_initial_values_are_the_starting_values_get_uses():
    from activations.named import usual_initial_values

    assert usual_initial_values("prelu") == {"alpha": 0.25}
    assert usual_initial_values("swish", {"beta": 2}) == {"beta": 2.0}
    assert usual_initial_values("alpha * x + beta") == {"alpha": 1.0, "beta": 1.0}
    assert usual_initial_values(activations.parse("alpha * x"), {"alpha": 3}) == {"alpha": 3.0}
    for name in ("prelu", "swish"):
        layer = activations.get(name)
        assert usual_initial_values(name) == {k: float(v) for k, v in layer.initial_values.items()}
    with pytest.raises(ValueError, match="not finite|finite"):
        usual_initial_values("prelu", {"alpha": float("nan")})


def test_usual_name_recognises_names_and_aliases_only():
    from activations.named import usual_name

    assert usual_name("PReLU") == "prelu" and usual_name(" identity ") == "linear"
    assert usual_name("hard-swish") == "hard_swish"
    for text in ("erf", "relu(x)", "x * sigmoid(beta * x)", "alpha", 3):
        assert usual_name(text) is None
