"""Reuse of a discovered function: `activation.json` in, a layer factory out.

The pipeline's Exporter writes `export/activation.json` (the winning expression, its sharing mode,
statistics of its learned parameters and its evaluation summary). `load(path)` turns it into a
factory that makes a fresh `ParametricActivation` per call, so each site of a user's model gets
its own learnable parameters::

    import activations
    make_activation = activations.load("runs/demo/export/activation.json")
    x = keras.layers.Conv2D(32, 3)(inputs)
    x = make_activation()(x)
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

from activations.expression import parse
from activations.layer import SHARING_MODES, ParametricActivation

FORMAT_VERSION = 1
INITIAL_CHOICES = ("learned", "default")


class ActivationFileError(ValueError):
    """`activation.json` is missing, unreadable or does not describe an activation."""


def activation_record(expression: str, sharing: str, learned: Mapping[str, Mapping[str, float]] | None = None,
                      evaluation: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The JSON document `load` reads: expression (canonical), sharing, per-parameter statistics
    of the learned values (`{name: {"mean", "std", "min", "max"}}`) and the evaluation summary."""
    expr = parse(expression)
    if sharing not in SHARING_MODES:
        raise ValueError(f"sharing must be one of {SHARING_MODES}, got {sharing!r}")
    return {
        "format_version": FORMAT_VERSION,
        "expression": str(expr),
        "infix": expr.infix(),
        "parameters": list(expr.parameters),
        "sharing": sharing,
        "learned_parameters": {k: dict(v) for k, v in (learned or {}).items()},
        "evaluation": dict(evaluation or {}),
        **extra,
    }


def load(path: str | os.PathLike, *, initial: str = "learned", sharing: str | None = None) -> Callable[[], ParametricActivation]:
    """A factory of new layers computing the function described by `activation.json` at `path`.

    `initial="learned"` starts each parameter at the mean value it learned in the search's final
    runs; `"default"` at 1.0. `sharing` overrides the stored sharing mode.
    """
    if initial not in INITIAL_CHOICES:
        raise ValueError(f"initial must be one of {INITIAL_CHOICES}, got {initial!r}")
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "activation.json")
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        raise ActivationFileError(f"no activation file at {path!r} (expected the Exporter's activation.json)") from None
    except json.JSONDecodeError as error:
        raise ActivationFileError(f"{path!r} is not valid JSON: {error}") from None
    if not isinstance(record, dict) or "expression" not in record:
        raise ActivationFileError(f"{path!r} has no 'expression' field; it is not an activation.json")
    expression = parse(record["expression"])
    mode = sharing or record.get("sharing", "layer")
    if mode not in SHARING_MODES:
        raise ActivationFileError(f"sharing {mode!r} in {path!r} is not one of {SHARING_MODES}")
    values = None
    if initial == "learned":
        learned = record.get("learned_parameters") or {}
        values = {name: float(learned[name]["mean"]) for name in expression.parameters
                  if name in learned and learned[name].get("mean") is not None}

    def factory(**kwargs: Any) -> ParametricActivation:
        return ParametricActivation(expression, sharing=mode, initial=values or None, **kwargs)

    factory.expression = expression  # type: ignore[attr-defined]
    factory.record = record  # type: ignore[attr-defined]
    return factory
