"""`ParametricActivation`: a Keras layer that applies any activation expression.

Each learnable parameter of the expression (`alpha`, `beta`, ...) becomes a float32 weight, one
scalar per layer (`sharing="layer"`) or one value per channel of the last axis
(`sharing="channel"`), so gradient descent tunes the parameters while evolution changes the form.

How the layer computes
----------------------
How an activation layer computes is a first-order performance question. Evaluated op by op, a
composite expression makes one pass over memory per operator and autodiff keeps every
intermediate alive for the backward pass; under `mixed_bfloat16` every op also converts. In the
benchmark (`bench/activation_overhead.py`: 4-layer conv net, batch 128, 32x32, 2 CPU cores) that
way ran `max(relu(x),cosh(elu(x)))` at 0.3-0.45x of built-in ReLU's training throughput.
The layer therefore has two implementations:

* **Fused kernel (TensorFlow backend; the default there).** Only the expression is compiled with
  XLA (`tf.function(jit_compile=True)`; the model around it is untouched), so the whole
  expression is one vectorised loop over memory. A `tf.custom_gradient` keeps only the input;
  the backward pass is a second XLA kernel that recomputes the expression and its derivative
  from `x` in the same loop (cheaper than storing and re-reading intermediates). Inside the
  kernels everything is float32, where the casts are free; input and output keep the layer's
  dtype. Parameter gradients leave the kernel as per-element contributions and are summed by
  TensorFlow, whose CPU reductions were 1.5-2x faster than XLA's here. With exactly one
  parameter the backward pass is two single-output kernels (input gradient; contribution):
  given two outputs XLA stores the intermediates both need, which cost 1.25-1.8x the time.
  bfloat16 inputs with an even channel count are handled as uint32 words holding two channels:
  unpacking is a shift or a mask and packing rounds to nearest even (bit-identical to a cast),
  so the kernel works on 32-bit lanes only. With bfloat16 lanes XLA halves its vector width; the
  packed kernel ran 1.2x (256-bit vectors) to 2x (512-bit vectors) faster.
  The kernels see the input as rows of a multiple of 32 values where the shape allows
  (`_run_with_wide_rows`): XLA vectorises only the last axis, and channel vectors of 16 or 15
  values left part or all of each row to scalar code.
* **keras.ops in float32 (other backends, or `implementation="ops"`).** The portable path casts
  to float32 (float64 stays float64), evaluates with `keras.ops` and casts back: under
  `mixed_bfloat16` about twice as fast as evaluating in bfloat16, and numerically safer.

On CPUs with AVX-512, XLA still emits 256-bit vectors unless told otherwise;
`prefer_wide_vectors()` (call it before the first XLA compilation in the process) made the fused
kernels a further 1.3-2x faster. It changes a process-wide XLA setting, so the library never
calls it on its own.

Measured with the benchmark on a shared (noisy) 2-core AVX-512 machine, training throughput as
a ratio to built-in ReLU (float32 / mixed_bfloat16; ranges over repeated runs):

    expression                   fused                  fused + wide vectors   keras.ops path
    x*sigmoid(beta*x)            0.81-0.90 / 0.75-0.80  0.85-0.98 / 0.79-0.91  0.54-0.77 / 0.64
    max(relu(x),cosh(elu(x)))    0.81 / 0.73-0.74       0.86-0.90 / 0.76-0.81  0.37-0.45 / 0.36

What remains is arithmetic: a depth-3 expression with three exponentials per element is bound by
the exponentials, so cheaper operator formulas pay off directly (a one-`exp` cosh and an
`exp`-based elu brought it to 0.83-0.88 / 0.72-0.76 with wide vectors; exponentials written out
with a shared range reduction and analytic derivatives to 0.86-0.90 / 0.76-0.81). The same holds
per operator: XLA's CPU code calls the C library once per element for `sin`, `cos`, `atan` and
`log1p`, and keeps intermediates in memory when differentiating the Bessel fits, which made such
operators 5-25x relu's cost in the kernel. Float32 kernels therefore evaluate each operator's
arithmetic-only form where it has one (`Operator.vector_fn`), and the Bessel functions carry
their analytic derivatives (`bench/operator_cost.py` measures every operator).

Gradients of gradients (a gradient penalty, nested `GradientTape`s) work on every path. The
packed words carry no gradient, so the packed backward pass is itself a custom gradient whose
gradient is that of the plain-layout kernels, which compute the same function: first-order
training runs the packed kernels unchanged, and only a second differentiation pays for the plain
ones. Forward-mode autodiff (`tf.autodiff.ForwardAccumulator`) came back as None or zeros through
the fused kernels' custom gradient, so the fused layer raises when an accumulator follows its
input and names `implementation="ops"`, which supports it.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from typing import Mapping, Union

import keras
from keras import ops

from activations.expression import Expression, Initial, initial_values, parse, suspicious_names

SHARING_MODES = ("layer", "channel")
IMPLEMENTATIONS = ("auto", "fused", "ops")


WIDE_VECTORS_FLAG = "--xla_cpu_prefer_vector_width=512"


def prefer_wide_vectors() -> bool:
    """Ask XLA for 512-bit vectors on CPU (AVX-512), for faster fused activation kernels.

    XLA reads `XLA_FLAGS` once, at its first compilation in the process, so call this before
    anything is compiled with XLA (e.g. at the start of a training script). Returns False, and
    changes nothing, when `XLA_FLAGS` already chooses a vector width. On CPUs without AVX-512 the
    setting has no effect.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_prefer_vector_width" in flags:
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {WIDE_VECTORS_FLAG}".strip()
    return True


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
        for note in suspicious_names(self.expression):
            warnings.warn(f"activation {self.expression}: {note}", stacklevel=2)
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
        self._initial_values = initial_values(self.expression, initial)
        self._parameter_weights: list = []
        self.supports_masking = True

    @property
    def initial_values(self) -> dict[str, float]:
        """Parameter name -> the value its weight starts from."""
        return dict(self._initial_values)

    @property
    def parameters(self) -> dict:
        """Parameter name -> weight (a Keras variable); empty until the layer is built."""
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
            # A later call with another channel count gets Keras' clear shape error.
            self.input_spec = keras.InputSpec(min_ndim=1, axes={-1: int(channels)})
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
        if not keras.backend.is_float_dtype(inputs.dtype):  # Keras autocasts float inputs only
            inputs = ops.cast(inputs, self.compute_dtype)
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

    @classmethod
    def from_config(cls, config: dict):
        """A layer saved as `implementation="fused"` loads on any backend: elsewhere than on
        TensorFlow it computes the same function with keras.ops ("auto")."""
        if config.get("implementation") == "fused" and keras.backend.backend() != "tensorflow":
            warnings.warn(
                f"activation layer {config.get('name')!r} was saved with implementation='fused' (TensorFlow "
                f"only); on the {keras.backend.backend()!r} backend it computes the same function with keras.ops",
                stacklevel=2,
            )
            config = {**config, "implementation": "auto"}
        return cls(**config)

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


def _serialisable_initial(initial: Initial):
    if isinstance(initial, Mapping):
        return {str(name): float(value) for name, value in initial.items()}
    return None if initial is None else float(initial)


# --- the fused TensorFlow kernel -----------------------------------------------------------------


def _fused_call(text: str, inputs, weights):
    import tensorflow as tf

    params = [tf.convert_to_tensor(weight.value) for weight in weights]
    return _run_with_wide_rows(_fused_kernel(text), inputs, params)


ROW_QUANTUM = 32
"""The fused kernels see rows whose length is a multiple of this many values where possible."""


def _run_with_wide_rows(kernel, x, params):
    """`kernel(x, *params)` with x viewed as rows of a multiple of ROW_QUANTUM values.

    XLA vectorises the last axis of an elementwise kernel, so a last axis that is short or not a
    multiple of the vector width runs partly or wholly in scalar code: a 15-channel layer ran
    Swish's kernels 3-5x slower than a 16-channel one, and the packed bfloat16 kernels of
    16-channel layers (8 words a row) 1.5x slower than 32-channel ones. The elementwise function
    does not care how the values are arranged, so `k` consecutive channel vectors are viewed as
    one row of `k * C` values, with per-channel parameters tiled `k` times (the gradient of
    `tile` sums the copies back). `k` must divide the statically known leading dimensions.
    """
    import tensorflow as tf

    channels = x.shape[-1] if x.shape.rank else None
    if not channels:
        return kernel(x, *params)
    tiles = ROW_QUANTUM // math.gcd(int(channels), ROW_QUANTUM)
    leading = [d for d in x.shape[:-1] if d is not None]
    if tiles == 1 or not leading or math.prod(leading) % tiles:
        return kernel(x, *params)
    rows = tf.reshape(x, [-1, tiles * channels])
    tiled = [p if p.shape.rank == 0 else tf.tile(p, [tiles]) for p in params]
    return tf.reshape(kernel(rows, *tiled), tf.shape(x))


@functools.lru_cache(maxsize=1)
def _quiet_kernel_retracing_notes() -> None:
    """TensorFlow warns "N out of the last N calls to <function _fused_kernel.<locals>.forward>
    triggered tf.function retracing" once a few expressions have been used: it counts the
    kernels of different expressions, which share their Python code, as one function retracing.
    Each expression's kernel is traced once per input shape by design, so those notes (and only
    those, matched by this module's function name) are dropped."""
    import logging

    logging.getLogger("tensorflow").addFilter(_not_a_kernel_retracing_note)


def _not_a_kernel_retracing_note(record) -> bool:
    message = record.getMessage()
    return not ("triggered tf.function retracing" in message and "_fused_kernel.<locals>" in message)


@functools.lru_cache(maxsize=1024)
def _fused_kernel(text: str, vectorised: bool = True):
    """A differentiable TensorFlow function `(x, *params) -> y` for one expression.

    The forward and the backward pass are each one XLA-compiled elementwise kernel; the backward
    recomputes the expression from `x` instead of keeping intermediates. Shared by every layer
    using the same expression (XLA executables are cached per input shape and dtype).
    `vectorised=False` keeps every operator's exact form in float32 too (for benchmarks).
    """
    import tensorflow as tf

    _quiet_kernel_retracing_notes()
    expression = parse(text)
    names = expression.parameters
    xla = functools.partial(tf.function, jit_compile=True, reduce_retracing=True, autograph=False)

    def evaluate(x, params):
        # float32 kernels use the operators' vectorisable forms (operators.Operator.vector_fn).
        y = expression.evaluate(x, dict(zip(names, params)), vectorised=vectorised and x.dtype == tf.float32)
        return tf.broadcast_to(tf.cast(y, x.dtype), tf.shape(x))

    def gradients(xs, dys, params_per_x, part):
        """Input gradients and/or full-size parameter contributions for each (x, dy, params).

        `part` is "input", "params" or "all"; lists for the part not asked for are empty.
        """
        fulls = [[tf.broadcast_to(p, tf.shape(x)) for p in params] for x, params in zip(xs, params_per_x)]
        with tf.GradientTape() as tape:
            tape.watch(xs)
            tape.watch(fulls)
            ys = [evaluate(x, full) for x, full in zip(xs, fulls)]
        sources = (list(xs) if part != "params" else []) + (
            [p for full in fulls for p in full] if part != "input" else []
        )
        grads = tape.gradient(
            ys, sources, output_gradients=dys, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        n = len(xs) if part != "params" else 0
        input_grads = grads[:n]
        if part == "input":
            return input_grads, [[] for _ in xs]
        per_x = [grads[n + i * len(names): n + (i + 1) * len(names)] for i in range(len(xs))]
        return input_grads, per_x

    # Plain layout: any float dtype, computed in float32 (float64 stays float64).
    @xla
    def forward(x, *params):
        dtype = _tf_internal_dtype(x.dtype)
        return tf.cast(evaluate(tf.cast(x, dtype), [tf.cast(p, dtype) for p in params]), x.dtype)

    @xla
    def backward(x, dy, *params, part="all"):
        dtype = _tf_internal_dtype(x.dtype)
        dx, (contributions,) = gradients(
            [tf.cast(x, dtype)], [tf.cast(dy, dtype)], [[tf.cast(p, dtype) for p in params]], part
        )
        return [tf.cast(g, x.dtype) for g in dx] + list(contributions)

    # Packed layout for bfloat16 with an even channel count: each uint32 word holds channels
    # (2k, 2k+1). Unpacking is a shift or a mask, so the kernel works on 32-bit lanes only and
    # vectorises at full float32 width (bfloat16 lanes halve XLA's vector width on CPU).
    # Per-channel parameters are split into even and odd channels before the kernel: a strided
    # read inside the loop stops XLA from vectorising it (5x slower).
    @xla
    def forward_packed(words, *halves):
        even, odd = _unpack_bfloat16(words)
        n = len(names)
        return _pack_bfloat16(evaluate(even, halves[:n]), evaluate(odd, halves[n:]))

    @xla
    def backward_packed(words, dy_words, *halves, part="all", shared=()):
        # `shared` (static: retracing may relax the parameters' shapes) flags scalar parameters.
        n = len(names)
        dx, (c_even, c_odd) = gradients(
            list(_unpack_bfloat16(words)), list(_unpack_bfloat16(dy_words)), [halves[:n], halves[n:]], part
        )
        contributions = []
        for is_shared, even, odd in zip(shared, c_even, c_odd):
            # One parameter shared by the layer: add the halves (half the size to reduce).
            # Per channel: keep the halves apart; they are reduced, then interleaved, outside.
            contributions.extend([even + odd] if is_shared else [even, odd])
        return ([_pack_bfloat16(*dx)] if dx else []) + contributions

    def reduce_to(contribution, param):
        if param.shape.rank == 0:
            return tf.reduce_sum(contribution)
        return tf.reduce_sum(tf.reshape(contribution, [-1, tf.shape(param)[-1]]), axis=0)

    def _reduce_packed(contributions, params):
        contributions = list(contributions)
        for p in params:
            if p.shape.rank == 0:
                yield tf.reduce_sum(contributions.pop(0))
            else:
                half = p[0::2]
                even = reduce_to(contributions.pop(0), half)
                odd = reduce_to(contributions.pop(0), half)
                yield tf.reshape(tf.stack([even, odd], axis=-1), [-1])  # channel order again

    def split_run(run, n_params):
        """(dx, contributions) from a backward kernel `run(part=...)`."""
        if n_params == 1:
            # Two kernels, each one loop over memory, beat one kernel with two outputs, for
            # which XLA stores the intermediates both need (0.55-0.8x the time). With more
            # parameters the second kernel has several outputs anyway and splitting lost.
            (dx,), contributions = run(part="input"), run(part="params")
            return dx, contributions
        dx, *contributions = run()
        return dx, contributions

    def plain_gradients(x, dy, params):
        """(dx, *parameter gradients) from the plain-layout kernels; differentiable again."""
        dx, contributions = split_run(functools.partial(backward, x, dy, *params), len(params))
        # A float64 layer's contributions are float64; each gradient takes its weight's dtype.
        return (dx, *(tf.cast(reduce_to(c, p), p.dtype) for c, p in zip(contributions, params)))

    def packed_gradients(words, halves, x, dy, params):
        """(dx, *parameter gradients) from the packed kernels (`words` and `halves` of `kernel`)."""
        shared = tuple(p.shape.rank == 0 for p in params)
        run = functools.partial(backward_packed, words, _to_words(dy), *halves, shared=shared)
        dx, contributions = split_run(run, len(params))
        return (_from_words(dx, tf.shape(x)), *_reduce_packed(contributions, params))

    def differentiated_as_plain(first_order, x, dy, params):
        """`first_order(x, dy, params)` (the packed kernels), differentiable as `plain_gradients`.

        The packed kernels see x and dy as uint32 words, which carry no gradient: an outer tape
        (a gradient penalty, nested GradientTapes) missed every path through them and returned
        None or a wrong sum. Both compute the same function (unpacking is exact, packing rounds
        like a cast), so the gradient of the gradient is taken through the plain-layout kernels,
        as for float32. Only a second differentiation runs `second_order`; first-order training
        runs the packed kernels as before.
        """

        @tf.custom_gradient
        def gradients(x, dy, *params):
            grads = first_order(x, dy, params)

            def second_order(*upstream):
                sources = [x, dy, *params]
                # A None upstream gradient would mean "ones" to tape.gradient; it means zeros.
                upstream = [tf.zeros_like(g) if u is None else u for u, g in zip(upstream, grads)]
                with tf.GradientTape() as tape:
                    tape.watch(sources)
                    again = plain_gradients(x, dy, params)
                zero = tf.UnconnectedGradients.ZERO  # e.g. an expression linear in x
                return tape.gradient(again, sources, output_gradients=upstream, unconnected_gradients=zero)

            return grads, second_order

        return gradients(x, dy, *params)

    @tf.custom_gradient
    def kernel(x, *params):
        _refuse_forward_mode(x, *params)
        packed = x.dtype == tf.bfloat16 and x.shape.rank and x.shape[-1] is not None and x.shape[-1] % 2 == 0
        if packed:
            words = _to_words(x)
            # stop_gradient, as in the plain branch, also for the backward kernels: under the tape of a
            # second differentiation they would otherwise run their variant that keeps intermediates.
            halves = [tf.stop_gradient(p if p.shape.rank == 0 else p[0::2]) for p in params] + [
                tf.stop_gradient(p if p.shape.rank == 0 else p[1::2]) for p in params
            ]
            y = _from_words(forward_packed(words, *halves), tf.shape(x))
        else:
            # stop_gradient: under an eager GradientTape, TensorFlow would otherwise run a variant of
            # the forward kernel that also writes out every intermediate (for a gradient the custom
            # gradient below never asks for): 1.5x the time in float32.
            y = forward(tf.stop_gradient(x), *map(tf.stop_gradient, params))

        def grad(dy):
            _refuse_forward_mode(dy)
            if packed:
                first_order = functools.partial(packed_gradients, words, halves)
                return differentiated_as_plain(first_order, x, tf.cast(dy, x.dtype), params)
            return plain_gradients(x, dy, params)

        return y, grad

    return kernel


def _refuse_forward_mode(*tensors):
    """Raise if a forward-mode accumulator (`tf.autodiff.ForwardAccumulator`) follows `tensors`.

    TensorFlow computes forward-mode derivatives of a custom gradient by differentiating its
    backward function, and did not record the XLA kernels' function calls while doing so: the
    tangents came back as None, or as zeros inside a `tf.function`. An accumulator around a
    `tf.function` that calls the layer is not visible here: there TensorFlow differentiates the
    function's graph, which gave float32 correct tangents and bfloat16 None (now TensorFlow
    raises an internal error).
    """
    from tensorflow.python.eager import forwardprop_util

    if forwardprop_util.pack_tangents(list(tensors)).tangents:
        raise NotImplementedError(
            "forward-mode autodiff (tf.autodiff.ForwardAccumulator, e.g. a Hessian-vector product "
            "by forward-over-reverse) is not supported by ParametricActivation's fused kernel; "
            "use implementation='ops' for this layer, or reverse-over-reverse (nested GradientTapes)"
        )


def _tf_internal_dtype(dtype):
    import tensorflow as tf

    return tf.float64 if dtype == tf.float64 else tf.float32


def _to_words(x):
    """bfloat16 [..., C] (C even) -> uint32 [..., C/2], no copy."""
    import tensorflow as tf

    shape = tf.shape(x)
    return tf.bitcast(tf.reshape(x, tf.concat([shape[:-1], [shape[-1] // 2, 2]], 0)), tf.uint32)


def _from_words(words, shape):
    import tensorflow as tf

    return tf.reshape(tf.bitcast(words, tf.bfloat16), shape)


def _unpack_bfloat16(words):
    """uint32 words -> (float32 of the low half, float32 of the high half); exact."""
    import tensorflow as tf

    low = tf.bitcast(tf.bitwise.left_shift(words, 16), tf.float32)
    high = tf.bitcast(tf.bitwise.bitwise_and(words, tf.constant(0xFFFF0000, tf.uint32)), tf.float32)
    return low, high


def _pack_bfloat16(low, high):
    """Two float32 tensors -> uint32 words of their bfloat16 values (round to nearest even)."""
    import tensorflow as tf

    def bits(value):
        raw = tf.bitcast(value, tf.uint32)
        odd = tf.bitwise.bitwise_and(tf.bitwise.right_shift(raw, 16), tf.constant(1, tf.uint32))
        rounded = tf.bitwise.right_shift(raw + tf.constant(0x7FFF, tf.uint32) + odd, 16)
        return tf.where(tf.math.is_nan(value), tf.constant(0x7FC0, tf.uint32), rounded)

    return tf.bitwise.bitwise_or(tf.bitwise.left_shift(bits(high), 16), bits(low))
