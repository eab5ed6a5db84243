"""Functional equivalence and sanity checks on fixed probe points.

Two candidates that compute the same function should be trained once. `fingerprint` hashes a
function's outputs on 1,000 fixed N(0, 1) samples clipped to [-5, 5] (as in AQuaSurF), so
`add(x,relu(x))` and `add(relu(x),x)` share a fingerprint however they are written. `check` tells
whether a function is worth training at all: candidates with non-finite outputs or gradients,
constant outputs or no gradient almost everywhere are rejected before any compute is spent.

Fingerprints are computed in float64 and rounded to `SIGNIFICANT_DIGITS` significant digits so
floating-point noise between equivalent formulations does not split them. Only the TensorFlow
backend computes every operator in float64: Keras computes float64 as float32 in many ops on its
other backends (its type promotion follows JAX's 32-bit default), so there a fingerprint is stable
but may differ from TensorFlow's for the same function. The pipeline runs on TensorFlow.

Decision: parametric functions are probed twice, at the parameters' initial values and at a second,
deterministic setting that depends on the parameters' name order. The first probe alone would make
the learnable Swish `x*sigmoid(beta*x)` a duplicate of the fixed `swish(x)`, although the learnable
one is a different hypothesis (the point of parametric activations). A function whose parameters
change nothing at either setting (`mish(x - beta * zero(x))`, as evolution writes Mish) shares the
fingerprint of the parameter-free function. Reordering the terms of a function never changes its
fingerprint; renaming its parameters may, when it has several.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Callable, Iterator, Mapping

import numpy as np

from activations.expression import Expression, initial_values, parse

NUM_PROBES = 1000
PROBE_LIMIT = 5.0
PROBE_SEED = 0
SIGNIFICANT_DIGITS = 6
ZERO_TOLERANCE = 1e-9

OUTPUT_LIMIT = 1e4
"""Largest |f(x)| accepted on the probe points: keeps float16 activations (max 65504) finite."""

CONSTANT_TOLERANCE = 1e-6
AFFINE_TOLERANCE = 1e-6
"""Largest deviation from the best line a*x + b (relative to the output's size) of a function
`check` calls affine."""
ZERO_GRADIENT_TOLERANCE = 1e-8
MAX_ZERO_GRADIENT_FRACTION = 0.95


def probe_points() -> np.ndarray:
    """The fixed probe inputs: N(0, 1) samples clipped to [-5, 5], float64, identical everywhere."""
    samples = np.random.RandomState(PROBE_SEED).standard_normal(NUM_PROBES)
    return np.clip(samples, -PROBE_LIMIT, PROBE_LIMIT)


_PROBES = probe_points()


def _shifted_values(values: dict[str, float]) -> dict[str, float]:
    """A second parameter setting for telling parametric families apart: the k-th parameter in
    name order is moved by 0.5 + 0.25 k, so neither term order nor a lone parameter's name matters."""
    return {name: values[name] + 0.5 + 0.25 * k for k, name in enumerate(sorted(values))}


@contextlib.contextmanager
def float64_scope() -> Iterator[None]:
    """Lets the backend compute in float64. JAX truncates float64 to float32 unless x64 is
    enabled, which would give every function other fingerprints under JAX than elsewhere."""
    import keras

    if keras.backend.backend() != "jax":
        yield
        return
    import jax

    with jax.enable_x64(True):
        yield


def evaluate_numpy(expr: Expression | str, x: np.ndarray, params: Mapping[str, float] | None = None) -> np.ndarray:
    """The function on a NumPy array, computed in float64, as a NumPy array of x's shape."""
    from keras import ops

    expr = parse(expr)
    params = initial_values(expr) if params is None else dict(params)
    x = np.asarray(x, dtype=np.float64)
    with float64_scope():
        tensor = ops.convert_to_tensor(x, dtype="float64")
        tensors = {name: ops.convert_to_tensor(value, dtype="float64") for name, value in params.items()}
        out = ops.convert_to_numpy(expr.evaluate(tensor, tensors))
    return np.broadcast_to(np.asarray(out, dtype=np.float64), x.shape)


def _quantise(values: np.ndarray) -> np.ndarray:
    """Round to SIGNIFICANT_DIGITS significant digits; encode non-finite values distinctly."""
    values = np.where(np.abs(values) < ZERO_TOLERANCE, 0.0, values)
    finite = np.isfinite(values)
    safe = np.where(finite & (values != 0), np.abs(values), 1.0)
    exponent = np.floor(np.log10(safe))
    mantissa = np.round(values / 10.0 ** (exponent - SIGNIFICANT_DIGITS + 1))
    code = np.stack([np.where(finite, mantissa, 0), np.where(finite, exponent, 0)], axis=-1)
    special = np.where(np.isnan(values), 1, np.where(np.isposinf(values), 2, np.where(np.isneginf(values), 3, 0)))
    return np.concatenate([code.astype(np.int64).ravel(), special.astype(np.int64)])


def fingerprint(expr: Expression | str, initial: float | Mapping[str, float] | None = None) -> str:
    """A stable hash of the function's outputs on the probe points (16 hex digits)."""
    expr = parse(expr)
    values = initial_values(expr, initial)
    with np.errstate(all="ignore"):
        parts = [_quantise(evaluate_numpy(expr, _PROBES, values))]
        if values:
            shifted = _quantise(evaluate_numpy(expr, _PROBES, _shifted_values(values)))
            if not np.array_equal(shifted, parts[0]):  # parameters that change nothing are not there
                parts.append(shifted)
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.tobytes())
    return digest.hexdigest()[:16]


def gradient_numpy(expr: Expression | str, x: np.ndarray, params: Mapping[str, float] | None = None):
    """(f(x), df/dx, {name: df/dparam summed over x}) in float64.

    Exact autodiff on the TensorFlow backend (so gradients that autodiff would make NaN are seen
    as such); central finite differences on other backends.
    """
    import keras

    expr = parse(expr)
    params = initial_values(expr) if params is None else dict(params)
    x = np.asarray(x, dtype=np.float64)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tx = tf.constant(x)
        tparams = {name: tf.Variable(value, dtype=tf.float64) for name, value in params.items()}
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(tx)
            out = expr.evaluate(tx, tparams)
            out = out + tf.zeros_like(tx)
        dx = tape.gradient(out, tx, unconnected_gradients="zero").numpy()
        dparams = {
            name: float(tape.gradient(out, var, unconnected_gradients="zero").numpy())
            for name, var in tparams.items()
        }
        return out.numpy(), dx, dparams
    step = 1e-5
    out = evaluate_numpy(expr, x, params)
    dx = (evaluate_numpy(expr, x + step, params) - evaluate_numpy(expr, x - step, params)) / (2 * step)
    dparams = {}
    for name in params:
        up, down = dict(params), dict(params)
        up[name] += step
        down[name] -= step
        dparams[name] = float(np.sum(evaluate_numpy(expr, x, up) - evaluate_numpy(expr, x, down)) / (2 * step))
    return out, dx, dparams


def check(expr: Expression | str, initial: float | Mapping[str, float] | None = None) -> str | None:
    """None when the function is worth training; otherwise the reason it is not: it ignores x,
    gives non-finite or huge outputs or gradients on the probe points, is constant, has a zero
    gradient almost everywhere, or is affine in x whatever its parameters."""
    expr = parse(expr)
    if not expr.uses_input:
        return "does not depend on x"
    values = initial_values(expr, initial)
    with np.errstate(all="ignore"):
        out, dx, dparams = gradient_numpy(expr, _PROBES, values)
    if not np.all(np.isfinite(out)):
        return f"non-finite outputs on {int(np.sum(~np.isfinite(out)))} of {NUM_PROBES} probe points"
    if not np.all(np.isfinite(dx)):
        return f"non-finite gradients on {int(np.sum(~np.isfinite(dx)))} of {NUM_PROBES} probe points"
    bad_params = sorted(name for name, grad in dparams.items() if not np.isfinite(grad))
    if bad_params:
        return f"non-finite gradient for parameter(s) {', '.join(bad_params)}"
    peak = float(np.max(np.abs(out)))
    if peak > OUTPUT_LIMIT:
        return f"outputs reach {peak:.3g} on inputs in [-5, 5] (limit {OUTPUT_LIMIT:g})"
    # Each shape test also tries a second parameter setting, as training moves the parameters:
    # `tanh(alpha*x)` started at alpha = 0 is constant there but trains into tanh.
    if _constant(out, peak) and _holds_for_other_parameters(expr, values, lambda o, _: _constant(o, _peak(o))):
        return "constant output"
    zero_fraction = _zero_gradient_fraction(dx)
    if zero_fraction > MAX_ZERO_GRADIENT_FRACTION and _holds_for_other_parameters(
            expr, values, lambda _, d: _zero_gradient_fraction(d) > MAX_ZERO_GRADIENT_FRACTION):
        return f"zero gradient on {zero_fraction:.0%} of the probe points"
    if _affine(out, peak) and _holds_for_other_parameters(expr, values, lambda o, _: _affine(o, _peak(o))):
        return "affine in x (a*x + b): a network with it would compute a linear function"
    return None


_LINE = np.stack([_PROBES, np.ones_like(_PROBES)], axis=1)
"""Design matrix of a line a*x + b on the probe points."""


def _affine(out: np.ndarray, peak: float) -> bool:
    coefficients, *_ = np.linalg.lstsq(_LINE, out, rcond=None)
    return float(np.max(np.abs(_LINE @ coefficients - out))) <= AFFINE_TOLERANCE * max(1.0, peak)


def _constant(out: np.ndarray, peak: float) -> bool:
    return float(np.max(out) - np.min(out)) <= CONSTANT_TOLERANCE * max(1.0, peak)


def _zero_gradient_fraction(dx: np.ndarray) -> float:
    return float(np.mean(np.abs(dx) < ZERO_GRADIENT_TOLERANCE))


def _peak(out: np.ndarray) -> float:
    return float(np.max(np.abs(out)))


def _holds_for_other_parameters(expr: Expression, values: Mapping[str, float],
                                test: Callable[[np.ndarray, np.ndarray], bool]) -> bool:
    """Whether `test(outputs, input gradients)` still holds once the parameters (at `values`)
    move: `max(x, alpha*x)` is the identity at alpha = 1 but trains into a leaky ReLU, and
    `(alpha - 1) * swish(x)` is zero at alpha = 1 but trains into a scaled Swish."""
    if not values:
        return True
    with np.errstate(all="ignore"):
        out, dx, _ = gradient_numpy(expr, _PROBES, _shifted_values(values))
    return bool(np.all(np.isfinite(out)) and np.all(np.isfinite(dx))) and test(out, dx)
