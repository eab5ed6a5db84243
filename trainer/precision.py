"""Numeric precision and device placement for training runs.

``precision="auto"`` picks the fastest policy the machine supports:

* a GPU is visible -> ``mixed_float16`` (Keras wraps the optimizer in a ``LossScaleOptimizer``
  by itself when a model built under this policy is compiled, so float16 gradients do not
  underflow),
* a CPU with native bfloat16 arithmetic (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo) ->
  ``mixed_bfloat16`` (bfloat16 has float32's exponent range: no loss scaling needed),
* otherwise ``float32``.

Policies are global in Keras, so :func:`precision_scope` sets one for the duration of a block and
restores the previous one afterwards: repeated runs and tests in one process do not leak a policy.
Several GPUs -> :class:`tf.distribute.MirroredStrategy`; one or none -> the default strategy.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator

import keras
import tensorflow as tf

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


class PrecisionError(ValueError):
    """An unknown precision name; the message lists the allowed ones."""


def check_precision(precision: str) -> str:
    """Returns ``precision`` if it is one of :data:`PRECISIONS`; raises PrecisionError otherwise."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}: allowed are {', '.join(PRECISIONS)}")
    return precision


def cpu_flags(cpuinfo_path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The feature flags of the first CPU listed in ``cpuinfo_path`` (empty when unreadable)."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=None)
def cpu_supports_bf16(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """True when the CPU has native bfloat16 instructions (AVX512-BF16 or AMX-BF16)."""
    return bool(cpu_flags(cpuinfo_path) & set(BF16_CPU_FLAGS))


def gpus() -> list:
    """The physical GPUs TensorFlow can see."""
    return tf.config.list_physical_devices("GPU")


def resolve_precision(precision: str = "auto", *, num_gpus: int | None = None, bf16_cpu: bool | None = None) -> str:
    """Maps ``precision`` to a Keras dtype policy name (``auto`` is resolved for this machine).

    ``num_gpus`` and ``bf16_cpu`` override the hardware probes (used by tests and planners that
    decide for another machine).
    """
    check_precision(precision)
    if precision != "auto":
        return precision
    if num_gpus is None:
        num_gpus = len(gpus())
    if num_gpus > 0:
        return "mixed_float16"
    if bf16_cpu is None:
        bf16_cpu = cpu_supports_bf16()
    return "mixed_bfloat16" if bf16_cpu else "float32"


@contextlib.contextmanager
def precision_scope(precision: str = "auto") -> Iterator[str]:
    """Sets the global Keras dtype policy for a block, then restores the previous policy.

    Yields the resolved policy name. Models (and their layers) keep the policy they were built
    with, so a model built inside the block may be trained or evaluated after it.
    """
    name = resolve_precision(precision)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield name
    finally:
        keras.mixed_precision.set_global_policy(previous)


def distribution_strategy(num_gpus: int | None = None) -> tf.distribute.Strategy:
    """``MirroredStrategy`` over all GPUs when there are several, else the default strategy."""
    if num_gpus is None:
        num_gpus = len(gpus())
    if num_gpus > 1:
        logger.info("training on %d GPUs with MirroredStrategy", num_gpus)
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


_HALF_DTYPES = ("float16", "bfloat16")


def float32_copy(model: keras.Model) -> keras.Model:
    """A copy of `model` that computes in float32 throughout, with the same weights.

    A model built under a mixed policy saves that policy with each layer, so it would compute in
    bfloat16 or float16 wherever it is loaded: TensorFlow Lite cannot convert those ops, and many
    devices run them slowly or not at all. The weights of a mixed-precision model are float32
    already, so the copy loses nothing; it only computes more precisely.
    """
    copy = model.__class__.from_config(_float32_config(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


def _float32_config(config):
    """`config` with every mixed dtype policy, and every half-precision tensor dtype, as float32."""
    if isinstance(config, list):
        return [_float32_config(item) for item in config]
    if not isinstance(config, dict):
        return config
    if config.get("class_name") == "DTypePolicy" and str(config.get("config", {}).get("name", "")).startswith("mixed_"):
        return "float32"
    out = {key: _float32_config(value) for key, value in config.items()}
    if out.get("dtype") in _HALF_DTYPES or str(out.get("dtype", "")).startswith("mixed_"):
        out["dtype"] = "float32"
    return out
