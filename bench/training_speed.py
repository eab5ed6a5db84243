"""Training throughput of ResNet-20 by precision and activation, side by side in one run.

    .venv/bin/python bench/training_speed.py            # full: 30 timed steps x 3 rounds
    .venv/bin/python bench/training_speed.py --quick    # a smoke run of a few steps

Measures images per second of ``resnet20`` training steps (32x32x3 random images, batch 128,
SGD with momentum, as in a search trial) for every combination of precision (``float32``,
``mixed_bfloat16``, ``mixed_float16``) and activation (ReLU and a discovered-style expression).
Every model is built and warmed up (traced) first; then the combinations are timed in
interleaved rounds (order reversed every other round), so that a slow spell of a shared machine
hits all of them alike. Each round's figure is the median time of its steps (timed inside
`fit`, see `timed_steps`). Prints a markdown table: median and best images/s, the median over
rounds of the ratio to float32 + ReLU in the same round, and the ratio of the best rounds
(contention only ever slows a run down, so the best round is the least disturbed one).
XLA's 512-bit vectors are on for the fused activation kernels, as under `actsearch run`
(`--narrow-vectors` measures without them).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from activations.layer import prefer_wide_vectors  # noqa: E402
from trainer.models import activation_factory, build_model  # noqa: E402
from trainer.precision import cpu_supports_bf16, precision_scope  # noqa: E402

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
ACTIVATIONS = ("relu", "max(relu(x),cosh(elu(x)))", "x*sigmoid(beta*x)")


def build(precision: str, activation: str, sharing: str, batch_size: int, seed: int = 0):
    keras.utils.set_random_seed(seed)
    with precision_scope(precision):
        model = build_model("resnet20", (32, 32, 3), 10, activation_factory(activation, sharing))
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch_size, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 10, size=(batch_size,)).astype("int32")
    data = tf.data.Dataset.from_tensors((images, labels)).repeat()
    return model, data


class _StepTimer(keras.callbacks.Callback):
    """Wall-clock duration of each training step, bracketed by Keras' batch callbacks."""

    def __init__(self):
        super().__init__()
        self.durations: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.durations.append(time.perf_counter() - self._start)


def timed_steps(model, data, steps: int) -> float:
    """Median seconds per training step over ``steps`` steps of one ``fit`` call.

    Steps are timed one by one inside ``fit`` (a step's train function returns when its work is
    done on CPU). Timing the whole ``fit`` call instead would add its set-up and tear-down,
    measured at 0.1-1.5 s per call here: not training throughput, and a cost that dilutes the
    faster variants most. The median discounts steps slowed by other work on a shared machine.
    """
    timer = _StepTimer()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
    return statistics.median(timer.durations)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default 30; quick 4)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps after tracing (default 5; quick 1)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--activations", default="|".join(ACTIVATIONS), help="'|'-separated")
    parser.add_argument("--sharing", default="layer", choices=("layer", "channel"))
    parser.add_argument("--narrow-vectors", action="store_true", help="XLA's default vector width (see module doc)")
    args = parser.parse_args(argv)
    if not args.narrow_vectors:
        prefer_wide_vectors()
    tf.get_logger().setLevel("ERROR")  # one train function per model is expected, not a retrace
    steps = args.steps or (4 if args.quick else 30)
    rounds = args.rounds or (2 if args.quick else 3)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    precisions = [p for p in args.precisions.split(",") if p]
    acts = [a for a in args.activations.split("|") if a]

    print(f"# ResNet-20 training throughput (batch {args.batch_size}, {steps} steps x {rounds} rounds)")
    print(
        f"\nTensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs, "
        f"bf16 CPU: {cpu_supports_bf16()}, GPUs: {len(tf.config.list_physical_devices('GPU'))}, "
        f"{platform.processor() or platform.machine()}\n",
        flush=True,
    )
    runs = {}
    for precision in precisions:
        for act in acts:
            start = time.perf_counter()
            model, data = build(precision, act, args.sharing, args.batch_size)
            timed_steps(model, data, 1 + warmup)  # trace, compile and warm up
            runs[(precision, act)] = (model, data)
            print(f"built {precision:15s} {act:28s} in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)

    speeds: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    order = list(runs)
    for r in range(rounds):
        for key in order if r % 2 == 0 else order[::-1]:  # alternate the order against drifts
            model, data = runs[key]
            speeds[key].append(args.batch_size / timed_steps(model, data, steps))
        print(f"round {r + 1}/{rounds} done", file=sys.stderr, flush=True)

    base_key = ("float32", acts[0])
    print(
        f"\n| precision | activation | img/s median | best | ratio to float32+{acts[0]} "
        "(median of per-round ratios) | ratio of bests |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for key, values in speeds.items():
        if base_key in speeds:
            per_round = [v / b for v, b in zip(values, speeds[base_key])]
            ratio = f"{statistics.median(per_round):.2f}x"
            best_ratio = f"{max(values) / max(speeds[base_key]):.2f}x"
        else:
            ratio = best_ratio = "-"
        print(
            f"| {key[0]} | `{key[1]}` | {statistics.median(values):.0f} | {max(values):.0f} | {ratio} "
            f"| {best_ratio} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
