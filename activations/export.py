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

from activations.expression import as_parameter_value, parse
from activations.layer import SHARING_MODES, ParametricActivation

FORMAT_VERSION = 1
INITIAL_CHOICES = ("learned", "default")


class ActivationFileError(ValueError):
    """`activation.json` is missing, unreadable or does not describe an activation."""


def activation_record(expression: str, sharing: str, learned: Mapping[str, Mapping[str, float]] | None = None,
                      evaluation: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The JSON document `load` reads: expression (canonical), sharing, per-parameter statistics
    of the learned values (`{name: {"mean", ...}}`: `load` needs only the mean; the pipeline's
    Exporter also writes the spread and counts and a `learned_parameters_note` saying what they
    cover) and the evaluation summary."""
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

    `initial="learned"` starts each parameter at its learned `"mean"` (from the pipeline: the mean
    of its per-layer means over the search's final runs); `"default"` at 1.0. `sharing` overrides the stored sharing mode.
    """
    if initial not in INITIAL_CHOICES:
        raise ValueError(f"initial must be one of {INITIAL_CHOICES}, got {initial!r}")
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "activation.json")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        beside = os.path.join(os.path.dirname(path), "export", "activation.json")
        hint = f"; a run's pipeline root keeps it in export/: {beside!r}" if os.path.isfile(beside) else ""
        raise ActivationFileError(f"no activation file at {path!r} (expected the Exporter's activation.json){hint}") \
            from None
    except json.JSONDecodeError as error:
        raise ActivationFileError(f"{path!r} is not valid JSON: {error}") from None
    except UnicodeDecodeError as error:
        raise ActivationFileError(f"{path!r} is not UTF-8 text, so not an activation.json: {error}") from None
    except OSError as error:
        raise ActivationFileError(f"cannot read {path!r}: {error.strerror or error}") from None
    if not isinstance(record, dict) or "expression" not in record:
        raise ActivationFileError(f"{path!r} has no 'expression' field; it is not an activation.json")
    version = record.get("format_version", FORMAT_VERSION)
    readable = "1" if FORMAT_VERSION == 1 else f"1 to {FORMAT_VERSION}"
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ActivationFileError(f"{path!r} has format_version {version!r}; it must be a whole number, and this "
                                  f"version of activations reads format_version {readable}")
    if version > FORMAT_VERSION:
        raise ActivationFileError(f"{path!r} has format_version {version!r}; this version of activations "
                                  f"reads format_version {readable} (a newer actsearch wrote it?)")
    try:
        expression = parse(record["expression"])
    except ValueError as error:
        raise ActivationFileError(f"the expression in {path!r} does not parse: {error}") from None
    if sharing is not None and sharing not in SHARING_MODES:
        raise ValueError(f"sharing must be None (the file's) or one of {SHARING_MODES}, got {sharing!r}")
    mode = sharing or record.get("sharing", "layer")
    if mode not in SHARING_MODES:
        raise ActivationFileError(f"sharing {mode!r} in {path!r} is not one of {SHARING_MODES}")
    values = _learned_means(record, expression, path) if initial == "learned" else None

    def factory(**kwargs: Any) -> ParametricActivation:
        """A new layer; keyword arguments (`initial`, `sharing`, `name`, ...) override the file's.
        An `initial` mapping overrides only the parameters it names; the others keep their
        learned values (a number sets every parameter)."""
        if isinstance(kwargs.get("initial"), Mapping) and values:
            kwargs["initial"] = {**values, **kwargs["initial"]}
        return ParametricActivation(expression, **{"sharing": mode, "initial": values or None, **kwargs})

    factory.expression = expression  # type: ignore[attr-defined]
    factory.record = record  # type: ignore[attr-defined]
    return factory


def _learned_means(record: Mapping[str, Any], expression, path: str) -> dict[str, float]:
    """{parameter: learned mean} from `learned_parameters`, each checked to be a finite number."""
    learned = record.get("learned_parameters") or {}
    expected = '{"<parameter>": {"mean": <number>, ...}, ...}'
    if not isinstance(learned, Mapping):
        raise ActivationFileError(f"learned_parameters in {path!r} must be a mapping {expected}, got {learned!r}")
    unknown = sorted(set(learned) - set(expression.parameters))
    if unknown:  # values learned for another function: starting from them would be a guess
        raise ActivationFileError(
            f"learned_parameters in {path!r} names {unknown}, which the expression {expression.infix()!r} does "
            f"not have (its parameters: {list(expression.parameters) or 'none'}); pass initial='default' to ignore them")
    values = {}
    for name in expression.parameters:
        stats = learned.get(name)
        if stats is None:
            continue
        mean = stats.get("mean") if isinstance(stats, Mapping) else stats
        if mean is None:
            continue
        value = as_parameter_value(mean)
        if value is None:
            raise ActivationFileError(
                f"learned_parameters[{name!r}] in {path!r} must be {{\"mean\": <finite number within float32's "
                f"range>, ...}}, got {stats!r}")
        values[name] = value
    return values
