"""`activations.get`: a fresh activation layer from a usual name or any expression text.

Every name maps to an expression of the operator registry, so a named function and the same
expression written by hand compute the same thing. Two names return a Keras built-in layer
instead, because the built-in is faster and is what a baseline should be measured with:

* `relu` -> `keras.layers.ReLU()`: TensorFlow's oneDNN graph rewrite fuses a ReLU into the
  preceding convolution (Conv2D + BiasAdd + Relu in one kernel), which no custom layer can match.
  In a training benchmark `ParametricActivation("relu(x)")` ran at 0.8-0.9x of it.
* `linear` / `identity` -> `keras.layers.Identity()`: nothing to compute.

`expression_for(name)` gives the expression behind a name without building a layer;
`expression_of(layer)` recovers the expression of any layer `get` returns.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
from typing import Mapping, Optional, Union

import keras

from activations import operators
from activations.expression import Expression, ExpressionError, initial_values, parse
from activations.layer import Initial, ParametricActivation


@dataclasses.dataclass(frozen=True)
class NamedActivation:
    """A usual activation function: its expression and default initial parameter values."""

    expression: str
    initial: Optional[dict] = None
    doc: str = ""


NAMED: dict[str, NamedActivation] = {
    "relu": NamedActivation("relu(x)", doc="max(x, 0); returned as keras.layers.ReLU"),
    "linear": NamedActivation("x", doc="identity; returned as keras.layers.Identity"),
    "leaky_relu": NamedActivation("leaky_relu(x)", doc="max(x, 0.01x)"),
    "prelu": NamedActivation("relu(x) + alpha * min0(x)", {"alpha": 0.25}, "learnable negative slope"),
    "elu": NamedActivation("elu(x)"),
    "selu": NamedActivation("selu(x)"),
    "gelu": NamedActivation("gelu(x)", doc="exact (erf) form"),
    "swish": NamedActivation("x * sigmoid(beta * x)", {"beta": 1.0}, "learnable beta (Ramachandran et al.)"),
    "silu": NamedActivation("swish(x)", doc="x * sigmoid(x), no parameter"),
    "mish": NamedActivation("mish(x)"),
    "softplus": NamedActivation("softplus(x)"),
    "softsign": NamedActivation("softsign(x)"),
    "tanh": NamedActivation("tanh(x)"),
    "sigmoid": NamedActivation("sigmoid(x)"),
    "hard_sigmoid": NamedActivation("hard_sigmoid(x)"),
    "hard_swish": NamedActivation("x * hard_sigmoid(x)"),
    "elish": NamedActivation("elish(x)"),
    "log_sigmoid": NamedActivation("log_sigmoid(x)"),
}

ALIASES: dict[str, str] = {"identity": "linear", "leakyrelu": "leaky_relu", "hardswish": "hard_swish"}

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def names() -> list[str]:
    """Every name `get` accepts besides expression text (aliases included)."""
    return sorted(set(NAMED) | set(ALIASES))


def get(
    name_or_expression: Union[str, Expression],
    sharing: str = "layer",
    initial: Initial = None,
) -> keras.layers.Layer:
    """A NEW activation layer for a usual name (`"swish"`, `"gelu"`, ...) or any expression.

    Names are case-insensitive (`-` and `_` interchangeable); a bare unary operator name such as
    `"erf"` means `erf(x)`. Anything else is parsed as an expression (`ExpressionError` on bad
    text). `sharing` and `initial` are passed to `ParametricActivation`; `initial=None` uses the
    name's usual starting values (e.g. PReLU's alpha = 0.25). A bare word that is neither a name
    nor an operator, or text that does not use x (`"P-ReLU"` would be a difference of two
    parameters), is rejected with the closest valid names.
    """
    if isinstance(name_or_expression, Expression):
        return ParametricActivation(name_or_expression, sharing=sharing, initial=initial)
    key, expression = _resolve(name_or_expression)
    if key is not None:
        return _named_layer(key, sharing, initial)
    if not expression.uses_input:
        # e.g. 'P-ReLU', the difference of two parameters: a constant, never an activation
        raise ExpressionError(
            f"{name_or_expression!r} parses as {expression}, which does not use the input x (every input "
            f"would give the same output); {_unknown_name_message(name_or_expression).split('; ', 1)[1]}"
        )
    return ParametricActivation(expression, sharing=sharing, initial=initial)


def expression_for(name_or_expression: Union[str, Expression]) -> Expression:
    """The expression `get` would compute for a name or expression text (`"swish"` ->
    `x * sigmoid(beta * x)`), without building a layer. Raises as `get` does."""
    if isinstance(name_or_expression, Expression):
        return name_or_expression
    return _resolve(name_or_expression)[1]


def usual_name(text: str) -> Optional[str]:
    """The usual name `text` spells (`"PReLU"` -> `"prelu"`, `"identity"` -> `"linear"`), or
    None when it is not one (expression text, a bare operator such as `"erf"`)."""
    if not isinstance(text, str):
        return None
    key = text.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    return key if key in NAMED else None


def usual_initial_values(
    name_or_expression: Union[str, Expression],
    overrides: Optional[Mapping[str, float]] = None,
    argument: str = "initial",
) -> dict[str, float]:
    """Each parameter's starting value in the layer `get` would return (`"prelu"` ->
    {"alpha": 0.25}; 1.0 for expression text), with `overrides` (name -> value) taking
    precedence. Unknown parameter names and non-finite values raise ValueError naming the
    caller's `argument`."""
    if isinstance(name_or_expression, Expression):
        key, expression = None, name_or_expression
    else:
        key, expression = _resolve(name_or_expression)
    values = initial_values(expression, NAMED[key].initial if key is not None else None)
    if overrides:
        checked = initial_values(expression, dict(overrides), argument)  # validates names and numbers
        values.update({name: checked[name] for name in overrides})
    return values


def _resolve(name_or_expression: str) -> tuple[Optional[str], Expression]:
    """(the usual name, or None; the expression) for a name, a bare unary operator or any text."""
    if isinstance(name_or_expression, os.PathLike):
        raise ValueError(f"{_FILE_HINT}, got the path {os.fspath(name_or_expression)!r}")
    if not isinstance(name_or_expression, str):
        raise ValueError(
            "an activation is a name (e.g. 'swish') or expression text/Expression, "
            f"got {type(name_or_expression).__name__}"
        )
    text = name_or_expression.strip()
    key = ALIASES.get(text.lower().replace("-", "_"), text.lower().replace("-", "_"))
    if key in NAMED:
        return key, parse(NAMED[key].expression)
    if _IDENTIFIER.fullmatch(text) and text != "x":
        if key in operators.REGISTRY or key in operators.ALIASES:
            op = operators.get_operator(key)
            if op.arity == 1:
                return None, parse(f"{op.name}(x)")
            raise ExpressionError(
                f"operator {op.name!r} takes several arguments; write an expression such as "
                f"'{op.name}(x, 0)'"
            )
        raise ExpressionError(_unknown_name_message(text))
    try:
        return None, parse(text)
    except ExpressionError as error:
        if text.lower().endswith((".json", ".keras")) or os.path.exists(text):
            raise ExpressionError(f"{error}\n{_FILE_HINT}") from None
        raise


_FILE_HINT = ("activations.get takes a name or expression text: to load an exported activation.json (or the pipeline root "
              "holding it) use activations.load(path); a saved model, keras.saving.load_model(path)")


def _named_layer(key: str, sharing: str, initial: Initial) -> keras.layers.Layer:
    if key in ("relu", "linear"):
        # Validate the arguments as the parametric layer would, so mistakes are not swallowed.
        ParametricActivation(NAMED[key].expression, sharing=sharing, initial=initial)
        return keras.layers.ReLU() if key == "relu" else keras.layers.Identity()
    named = NAMED[key]
    if isinstance(initial, Mapping):  # the parameters it leaves out keep the name's usual values
        initial = usual_initial_values(key, initial)
    return ParametricActivation(
        named.expression,
        sharing=sharing,
        initial=named.initial if initial is None else initial,
    )


def _unknown_name_message(text: str) -> str:
    unary = [op for op in operators.names(arity=1)]
    close = difflib.get_close_matches(text.lower(), list(dict.fromkeys(names() + unary)), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return (
        f"unknown activation name {text!r}; {hint}"
        f"known names: {', '.join(sorted(NAMED))}, any unary operator, "
        "or an expression of x such as 'x * sigmoid(beta * x)'"
    )


def known_equivalent(expression: Union[str, Expression]) -> Optional[str]:
    """The usual name (or unary operator) that computes the same function, judged by
    `activations.fingerprint`, or None. Evolution often finds a known function written in a
    roundabout way (`mish(x - beta * zero(x))` is Mish); this names it for the reader."""
    from activations.equivalence import fingerprint

    target = fingerprint(expression_for(expression))
    return next((name for name, known in _known_fingerprints() if known == target), None)


@functools.lru_cache(maxsize=1)
def _known_fingerprints() -> tuple[tuple[str, str], ...]:
    from activations.equivalence import fingerprint

    names = [*NAMED, *(op for op in operators.names(arity=1) if op not in ("identity", "zero", "one"))]
    return tuple((name, fingerprint(expression_for(name))) for name in names)


def expression_of(layer: keras.layers.Layer) -> Optional[Expression]:
    """The expression a layer computes, for layers made by `get` (None if unknown)."""
    if isinstance(layer, ParametricActivation):
        return layer.expression
    if isinstance(layer, keras.layers.Identity):
        return parse("x")
    if isinstance(layer, keras.layers.ReLU):
        config = layer.get_config()
        plain = config.get("max_value") is None and not config.get("negative_slope") and not config.get("threshold")
        return parse("relu(x)") if plain else None
    if isinstance(layer, keras.layers.Activation):
        name = getattr(layer.activation, "__name__", "")
        if name in _KERAS_ACTIVATIONS:
            return parse(_KERAS_ACTIVATIONS[name])
    return None


_KERAS_ACTIVATIONS = {
    # Keras activation functions whose defaults equal a registry expression exactly
    # (keras' leaky_relu defaults to slope 0.2, the operator to 0.01, so it is not listed).
    "relu": "relu(x)", "linear": "x", "sigmoid": "sigmoid(x)", "tanh": "tanh(x)",
    "softplus": "softplus(x)", "softsign": "softsign(x)", "elu": "elu(x)", "selu": "selu(x)",
    "gelu": "gelu(x)", "silu": "swish(x)", "swish": "swish(x)", "mish": "mish(x)",
    "hard_sigmoid": "hard_sigmoid(x)", "log_sigmoid": "log_sigmoid(x)",
}
