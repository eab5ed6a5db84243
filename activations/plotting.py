"""`activations.plot`: a PNG of an activation function and its derivative.

The function is evaluated with `keras.ops` in float64 on a grid and differentiated by central
finite differences, which works on every backend and needs no gradient machinery (at a kink such
as relu's the difference quotient shows the average slope, which is what a plot should show).

For a trained `ParametricActivation` the learned parameters are used. With per-channel
parameters every channel's curve is computed; the plot shows their pointwise median and shades
the 10-90 percentile band across channels, and the title reports the parameters' spread.
Rendering uses matplotlib's Agg canvas directly (no pyplot global state).
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Union

import keras
import numpy as np

from activations.expression import Expression, parse

FIGSIZE = (9.0, 3.6)
"""Figure size in inches; the PNG is FIGSIZE * DPI pixels."""
DPI = 100
GRID_POINTS = 801
STEP = 1e-4
"""Finite-difference step (float64 evaluation keeps its error around 1e-8)."""
BAND = (10, 90)
"""Percentiles of the channels' curves shaded for per-channel parameters."""


def plot(
    expr_or_layer: Union[str, Expression, keras.layers.Layer],
    path: Union[str, os.PathLike],
    *,
    x_range: tuple[float, float] = (-5.0, 5.0),
    parameters: Optional[Mapping[str, float]] = None,
) -> str:
    """Write a PNG of the function and its derivative on `x_range`; returns the path.

    A path ending in `.svg` or `.pdf` gets that format instead (see `IMAGE_FORMATS`).

    `expr_or_layer`: expression text, an `Expression`, a `ParametricActivation` (its current
    parameter values, per channel if so shared) or another elementwise Keras layer (e.g. what
    `activations.get` returns), or a usual name as `activations.get` takes it (`"prelu"`). An
    expression is drawn with `parameters` (name -> value, e.g. the means a search's final runs
    learned); parameters not given take the value `activations.get` would start them at (1.0,
    or a name's usual value such as PReLU's alpha 0.25).
    """
    try:
        low, high = (float(v) for v in x_range)
    except (TypeError, ValueError):
        low = high = float("nan")
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"x_range must be two finite numbers (low, high) with low < high, got {x_range!r}")
    image_format(path)  # a bad suffix fails before the work
    x = np.linspace(low, high, GRID_POINTS)
    title, values, slopes = curves(expr_or_layer, x, parameters=parameters)
    _render(x, values, slopes, title, path)
    return os.fspath(path)


IMAGE_FORMATS = ("png", "svg", "pdf")


def image_format(path: Union[str, os.PathLike]) -> str:
    """The image format a path's suffix asks for: png (also without a suffix), svg or pdf."""
    suffix = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    if suffix and suffix not in IMAGE_FORMATS:
        raise ValueError(f"cannot write a .{suffix} image ({os.fspath(path)!r}); use one of "
                         f"{', '.join('.' + f for f in IMAGE_FORMATS)} or no suffix (png)")
    return suffix or "png"


def curves(
    expr_or_layer: Union[str, Expression, keras.layers.Layer],
    x: np.ndarray,
    parameters: Optional[Mapping[str, float]] = None,
) -> tuple[str, np.ndarray, np.ndarray]:
    """(title, f, f') on the points `x`; f and f' have shape (len(x), channels).

    `channels` is 1 unless a layer has per-channel parameters. f' is a central finite
    difference with step `STEP`. `parameters` as for `plot` (expressions only).
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    title, values = _curves(expr_or_layer, x, parameters)
    slopes = (_curves(expr_or_layer, x + STEP, parameters)[1]
              - _curves(expr_or_layer, x - STEP, parameters)[1]) / (2 * STEP)
    return title, values, slopes


# --- evaluation ----------------------------------------------------------------------------------


def _curves(subject, x: np.ndarray, parameters: Optional[Mapping[str, float]] = None) -> tuple[str, np.ndarray]:
    """(title, values of shape (len(x), channels)) for an expression or a layer."""
    from activations.layer import ParametricActivation
    from activations.named import expression_for, expression_of, usual_initial_values

    if isinstance(subject, (str, Expression)):
        # A usual name draws that function at its usual starting values ("prelu": alpha 0.25).
        expression = expression_for(subject)
        params = {name: np.asarray(value) for name, value in usual_initial_values(subject, parameters, "parameters").items()}
        return _title(expression, params), _evaluate(expression, x, params)
    if parameters is not None:
        raise ValueError("parameters= applies to an expression; a layer is drawn with its own parameter values")
    if not isinstance(subject, keras.layers.Layer):
        raise ValueError(
            "plot takes expression text, an Expression or a Keras activation layer, "
            f"got {type(subject).__name__}"
        )
    if isinstance(subject, ParametricActivation):
        if not subject.built:
            # An unbuilt layer plots at its initial values.
            params = {name: np.asarray(value) for name, value in subject.initial_values.items()}
        else:
            params = {name: np.asarray(keras.ops.convert_to_numpy(w.value), dtype=np.float64)
                      for name, w in subject.parameters.items()}
        return _title(subject.expression, params), _evaluate(subject.expression, x, params)
    expression = expression_of(subject)
    if expression is not None:
        return _title(expression, {}), _evaluate(expression, x, {})
    # Any other elementwise layer: call it (float32) on the grid.
    values = keras.ops.convert_to_numpy(subject(keras.ops.convert_to_tensor(x[:, None], "float32")))
    if tuple(values.shape) != (len(x), 1):
        raise ValueError(
            f"plot draws elementwise activation layers; {subject.name} ({type(subject).__name__}) maps inputs "
            f"of shape {(len(x), 1)} to shape {tuple(values.shape)}"
        )
    return f"{subject.name} ({type(subject).__name__})", np.asarray(values, dtype=np.float64).reshape(len(x), -1)


def _evaluate(expression: Expression, x: np.ndarray, params: dict) -> np.ndarray:
    """Values on the grid, shape (points, channels); float64 where the backend allows it."""
    from activations.equivalence import float64_scope

    for dtype in ("float64", "float32"):
        try:
            with float64_scope():
                return _evaluate_as(expression, x, params, dtype)
        except (TypeError, ValueError, NotImplementedError):
            if dtype == "float32":
                raise
    raise AssertionError("unreachable")


def _evaluate_as(expression: Expression, x: np.ndarray, params: dict, dtype: str) -> np.ndarray:
    grid = keras.ops.convert_to_tensor(x[:, None], dtype)
    values = {name: keras.ops.convert_to_tensor(np.reshape(v, (-1,)) if np.ndim(v) else v, dtype)
              for name, v in params.items()}
    y = expression.evaluate(grid, values)
    channels = max([np.size(v) for v in params.values()] + [1])
    y = keras.ops.broadcast_to(keras.ops.cast(y, dtype), (len(x), channels))
    return np.asarray(keras.ops.convert_to_numpy(y), dtype=np.float64)


def _title(expression: Expression, params: dict) -> str:
    text = expression.infix()
    if len(text) > 90:
        text = text[:87] + "..."
    stats = []
    for name, value in params.items():
        value = np.asarray(value, dtype=np.float64)
        if value.size <= 1:
            stats.append(f"{name}={float(value.reshape(-1)[0]):.4g}")
        else:
            p_low, median, p_high = np.percentile(value, [BAND[0], 50, BAND[1]])
            stats.append(f"{name}: median {median:.4g} [p{BAND[0]} {p_low:.4g}, p{BAND[1]} {p_high:.4g}]")
    if params and any(np.size(v) > 1 for v in params.values()):
        stats.append(f"{max(np.size(v) for v in params.values())} channels")
    return text + ("\n" + ", ".join(stats) if stats else "")


# --- drawing -------------------------------------------------------------------------------------


def _render(x: np.ndarray, values: np.ndarray, slopes: np.ndarray, title: str, path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    for ax, series, label in ((axes[0], values, "f(x)"), (axes[1], slopes, "f'(x)")):
        series = np.where(np.isfinite(series), series, np.nan)
        if series.shape[1] > 1:
            with np.errstate(all="ignore"):
                low, mid, high = np.nanpercentile(series, [BAND[0], 50, BAND[1]], axis=1)
            ax.fill_between(x, low, high, alpha=0.3, label=f"channels p{BAND[0]}-p{BAND[1]}")
            ax.plot(x, mid, linewidth=1.8, label=f"{label}, median over channels")
            ax.legend(loc="best", fontsize=7)
        else:
            ax.plot(x, series[:, 0], linewidth=1.8)
        ax.axhline(0.0, color="0.6", linewidth=0.6)
        ax.axvline(0.0, color="0.6", linewidth=0.6)
        ax.set_xlim(x[0], x[-1])
        _clip_view(ax, series)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("x", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    figure.suptitle(title, fontsize=9)
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    figure.savefig(path, format=image_format(path), dpi=DPI)


def _clip_view(ax, values: np.ndarray) -> None:
    """Keep a function that explodes at the ends of the range from flattening the plot."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return
    low, high = float(finite.min()), float(finite.max())
    p_low, p_high = np.percentile(finite, [2, 98])
    if high - low > 20 * max(p_high - p_low, 1e-9):
        low, high = p_low, p_high
    span = max(high - low, 1e-6)
    ax.set_ylim(low - 0.08 * span, high + 0.08 * span)
