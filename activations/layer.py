"""DRAFT"""

from __future__ import annotations

import functools
import math
from typing import Mapping

import keras
from keras import ops

from activations.expression import Expression, parse

SHARING_MODES = ("layer", "channel")
_MODES = ("ops_compute", "ops_f32", "xla_autodiff", "xla_fused")


@functools.lru_cache(maxsize=512)
def _tf_fused_kernel(text: str, fused_backward: bool):
    import tensorflow as tf

    expression = parse(text)
    names = expression.parameters

    def evaluate(x32, params):
        y = expression.evaluate(x32, dict(zip(names, params)))
        return tf.broadcast_to(tf.cast(y, tf.float32), tf.shape(x32))

    @tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
    def forward(x, *params):
        return tf.cast(evaluate(tf.cast(x, tf.float32), params), x.dtype)

    if not fused_backward:
        return forward

    @tf.function(jit_compile=True, reduce_retracing=True, autograph=False)
    def backward(x, dy, *params):
        x32 = tf.cast(x, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(x32)
            tape.watch(params)
            y = evaluate(x32, params)
        grads = tape.gradient(
            y, [x32, *params], output_gradients=tf.cast(dy, tf.float32),
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        return (tf.cast(grads[0], x.dtype), *grads[1:])

    @tf.custom_gradient
    def kernel(x, *params):
        y = forward(x, *params)

        def grad(dy):
            return backward(x, dy, *params)

        return y, grad

    return kernel


@keras.saving.register_keras_serializable(package="actsearch")
class ParametricActivation(keras.layers.Layer):
    def __init__(self, expression, sharing="layer", initial=None, **kwargs):
        super().__init__(**kwargs)
        self.expression = parse(expression) if not isinstance(expression, Expression) else expression
        self.sharing = sharing
        self.initial = initial
        self.mode = "xla_fused"
        self.supports_masking = True

    def build(self, input_shape):
        shape = () if self.sharing == "layer" else (input_shape[-1],)
        self._params = []
        for name in self.expression.parameters:
            init = (self.initial or {}).get(name, 1.0) if isinstance(self.initial, dict) else (1.0 if self.initial is None else self.initial)
            self._params.append(self.add_weight(
                shape=shape, name=name, initializer=keras.initializers.Constant(init),
                dtype="float32", autocast=False))

    def call(self, inputs):
        mode = self.mode
        if mode.startswith("xla"):
            kernel = _tf_fused_kernel(str(self.expression), mode == "xla_fused")
            import tensorflow as tf
            return kernel(inputs, *[tf.convert_to_tensor(p.value) for p in self._params])
        if mode == "ops_f32":
            x = ops.cast(inputs, "float32")
            params = {n: p.value for n, p in zip(self.expression.parameters, self._params)}
        else:
            x = inputs
            params = {n: ops.cast(p.value, inputs.dtype) for n, p in zip(self.expression.parameters, self._params)}
        y = self.expression.evaluate(x, params)
        y = ops.broadcast_to(y, ops.shape(x))
        return ops.cast(y, self.compute_dtype)

    def get_config(self):
        c = super().get_config()
        c.update(expression=str(self.expression), sharing=self.sharing, initial=self.initial)
        return c

    def compute_output_shape(self, s):
        return s
