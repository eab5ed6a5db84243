"""`ParametricActivation`: a Keras layer that applies any activation expression.

Each learnable parameter of the expression (`alpha`, `beta`, ...) becomes a float32 weight, one
scalar per layer (`sharing="layer"`) or one value per channel of the last axis
(`sharing="channel"`), so gradient descent tunes the parameters while evolution changes the form.

How the layer computes
----------------------
How an activation layer computes is a first-order performance question: a composite expression
evaluated op by op makes one pass over memory per operator in the forward pass, and autodiff keeps
every intermediate tensor alive for the backward pass. On a 2-core CPU (conv net, batch 128,
32x32 inputs) that ran `max(relu(x),cosh(elu(x)))` at 0.2-0.3x of built-in ReLU's training
throughput. Measured options, best first:

* **Fused kernel (TensorFlow backend, the default there).** The expression's forward function is
  compiled on its own with XLA (`tf.function(jit_compile=True)`; the rest of the model is
  untouched), so the whole expression is one loop over memory. A `tf.custom_gradient` stores only
  the input; the backward pass is a second XLA kernel that recomputes the expression and its
  derivative together from `x` (recomputation is cheaper than storing and re-reading
  intermediates, since this work is bound by memory bandwidth). The kernel reads and writes the
  input's dtype (bfloat16 under mixed precision: half the memory traffic) and computes in float32
  inside the kernel, where the cast is free. Parameter gradients leave the kernel as full-size
  per-element contributions and are summed by TensorFlow's multi-threaded reductions: reductions
  inside an XLA CPU kernel ran 1.5-2x slower than letting TensorFlow reduce.
* **keras.ops in float32 (every other backend, or `implementation="ops"`).** Casting the input to
  float32, evaluating with `keras.ops` and casting back is the portable path. Under
  `mixed_bfloat16` it was about twice as fast as evaluating in bfloat16 (bfloat16 elementwise
  kernels on this CPU convert on every op), and it is numerically safer, so the portable path
  always computes in float32 (float64 inputs stay float64).

Measured ratios to built-in ReLU and the benchmark script are in `bench/activation_overhead.py`
and BUILD_NOTES.md.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping, Union

import keras
from keras import ops

from activations.expression import Expression, parse

SHARING_MODES = ("layer", "channel")
IMPLEMENTATIONS = ("auto", "fused", "ops")
DEFAULT_INITIAL = 1.0

Initial = Union[None, float, Mapping[str, float]]


def _internal_dtype(dtype: str) -> str:
    """float32 for every float type up to 32 bits; wider types keep their precision."""
    return "float64" if keras.backend.standardize_dtype(dtype) == "float64" else "float32"


@keras.saving.register_keras_serializable(package="actsearch")
class ParametricActivation(keras.layers.Layer):
    """Applies an activation expression elementwise, with its parameters as learnable weights.

    Args:
        expression: expression text (e.g. `"x * sigmoid(beta * x)"`) or an `Expression`. It is
            stored in the config in canonical form.
        sharing: `"layer"`: one scalar per parameter for the whole layer; `"channel"`: one value
            per channel of the last input axis.
        initial: starting value of the parameters: None (all 1.0), one number for all of them,
            or a dict `{name: number}` (unnamed parameters start at 1.0).
        implementation: `"auto"` (fused XLA kernel on the TensorFlow backend, `keras.ops`
            elsewhere), `"fused"` (TensorFlow backend only) or `"ops"` (portable `keras.ops`).
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    The weights are float32 whatever the dtype policy (they are not autocast), the output has the
    layer's compute dtype, and an expression that ignores `x` is broadcast to the input's shape.
    """

    def __init__(
        self,
        expression: Union[str, Expression],
        sharing: str = "layer",
        initial: Initial = None,
        *,
        implementation: str = "auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.expression = parse(expression)
        if sharing not in SHARING_MODES:
            raise ValueError(
                f"sharing must be one of {', '.join(map(repr, SHARING_MODES))}, got {sharing!r}"
            )
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"implementation must be one of {', '.join(map(repr, IMPLEMENTATIONS))}, "
                f"got {implementation!r}"
            )
        if implementation == "fused" and keras.backend.backend() != "tensorflow":
            raise ValueError(
                "implementation='fused' needs the TensorFlow backend; "
                f"the active backend is {keras.backend.backend()!r} (use 'auto' or 'ops')"
            )
        self.sharing = sharing
        self.initial = initial
        self.implementation = implementation
        self._initial_values = _initial_values(self.expression, initial)
        self._parameter_weights: list = []
        self.supports_masking = True

    @property
    def parameters(self) -> dict:
        """Parameter name -> weight (a Keras variable)."""
        return dict(zip(self.expression.parameters, self._parameter_weights))

    def build(self, input_shape):
        if self.sharing == "channel":
            channels = input_shape[-1] if len(input_shape) else None
            if channels is None:
                raise ValueError(
                    "sharing='channel' needs a known last (channel) axis; "
                    f"got input shape {tuple(input_shape)}"
                )
            shape = (int(channels),)
        else:
            shape = ()
        self._parameter_weights = [
            self.add_weight(
                shape=shape,
                name=name,
                initializer=keras.initializers.Constant(self._initial_values[name]),
                dtype="float32",
                autocast=False,
            )
            for name in self.expression.parameters
        ]

    def call(self, inputs):
        if self._use_fused():
            return _fused_call(str(self.expression), inputs, self._parameter_weights)
        return self._ops_call(inputs)

    def _use_fused(self) -> bool:
        return self.implementation == "fused" or (
            self.implementation == "auto" and keras.backend.backend() == "tensorflow"
        )

    def _ops_call(self, inputs):
        """Portable path: evaluate with keras.ops in float32 (float64 stays float64)."""
        internal = _internal_dtype(inputs.dtype)
        x = ops.cast(inputs, internal)
        params = {
            name: ops.cast(weight.value, internal)
            for name, weight in zip(self.expression.parameters, self._parameter_weights)
        }
        y = self.expression.evaluate(x, params)
        y = ops.cast(y, internal)
        if not self.expression.uses_input or len(ops.shape(y)) != len(ops.shape(x)):
            y = ops.broadcast_to(y, ops.shape(x))
        return ops.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "expression": str(self.expression),
                "sharing": self.sharing,
                "initial": _serialisable_initial(self.initial),
                "implementation": self.implementation,
            }
        )
        return config


# --- argument checking ---------------------------------------------------------------------------


def _check_number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _initial_values(expression: Expression, initial: Initial) -> dict[str, float]:
    """Each parameter's starting value from `initial` (None, a number, or a name->number dict)."""
    names = expression.parameters
    if initial is None:
        return {name: DEFAULT_INITIAL for name in names}
    if isinstance(initial, Mapping):
        unknown = sorted(set(initial) - set(names))
        if unknown:
            allowed = ", ".join(names) if names else "none: the expression has no parameters"
            raise ValueError(
                f"initial names unknown parameter(s) {unknown} of {expression}; its parameters are: {allowed}"
            )
        values = {name: DEFAULT_INITIAL for name in names}
        for name, value in initial.items():
            values[name] = _check_number(value, f"initial value of {name!r}")
        return values
    if isinstance(initial, (int, float)) and not isinstance(initial, bool):
        value = _check_number(initial, "initial")
        return {name: value for name in names}
    raise ValueError(
        "initial must be None, a finite number or a dict {parameter name: number}, "
        f"got {type(initial).__name__}"
    )


def _serialisable_initial(initial: Initial):
    if isinstance(initial, Mapping):
        return {str(name): float(value) for name, value in initial.items()}
    return None if initial is None else float(initial)


# --- the fused TensorFlow kernel -----------------------------------------------------------------


def _fused_call(text: str, inputs, weights):
    import tensorflow as tf

    params = [tf.convert_to_tensor(weight.value) for weight in weights]
    return _fused_kernel(text)(inputs, *params)


@functools.lru_cache(maxsize=1024)
def _fused_kernel(text: str):
    """A differentiable TensorFlow function `(x, *params) -> y` for one expression.

    The forward and the backward pass are each one XLA-compiled elementwise kernel; the backward
    recomputes the expression from `x` instead of keeping intermediates. Shared by every layer
    using the same expression (the XLA executables are cached per input shape and dtype).
    """
    import tensorflow as tf

    expression = parse(text)
    names = expression.parameters

    def internal(dtype):
        return tf.float64 if dtype == tf.float64 else tf.float32

    def elementwise(x, params):
        y = expression.evaluate(x, dict(zip(names, params)))
        return tf.broadcast_to(tf.cast(y, x.dtype), tf.shape(x))

    @tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
    def forward(x, *params):
        dtype = internal(x.dtype)
        params = [tf.cast(p, dtype) for p in params]
        return tf.cast(elementwise(tf.cast(x, dtype), params), x.dtype)

    @tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
    def backward(x, dy, *params):
        dtype = internal(x.dtype)
        xi = tf.cast(x, dtype)
        # Full-size parameters make the tape return per-element contributions; they are summed
        # outside the kernel, where TensorFlow's reductions are faster than XLA's on CPU.
        full = [tf.broadcast_to(tf.cast(p, dtype), tf.shape(xi)) for p in params]
        with tf.GradientTape() as tape:
            tape.watch(xi)
            tape.watch(full)
            y = elementwise(xi, full)
        grads = tape.gradient(
            y,
            [xi, *full],
            output_gradients=tf.cast(dy, dtype),
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        return (tf.cast(grads[0], x.dtype), *grads[1:])

    def reduce_to(contribution, param):
        if param.shape.rank == 0:
            return tf.cast(tf.reduce_sum(contribution), param.dtype)
        channels = tf.shape(param)[-1]
        return tf.cast(tf.reduce_sum(tf.reshape(contribution, [-1, channels]), axis=0), param.dtype)

    @tf.custom_gradient
    def kernel(x, *params):
        y = forward(x, *params)

        def grad(dy):
            dx, *contributions = backward(x, dy, *params)
            return (dx, *(reduce_to(c, p) for c, p in zip(contributions, params)))

        return y, grad

    return kernel
