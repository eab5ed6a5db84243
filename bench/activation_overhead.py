"""Training throughput of a small conv net with built-in ReLU vs `ParametricActivation`.

Measures images/s of training steps (after warm-up, XLA compilation included in warm-up) for
built-in ReLU, Swish (`x*sigmoid(beta*x)`, learnable beta) and the depth-3 expression
`max(relu(x),cosh(elu(x)))`, in float32 and under `mixed_bfloat16`, and prints each as a ratio to
built-in ReLU of the same precision. Keras' built-in `silu` (Swish without a parameter, as
TensorFlow ships it) is measured too, as the yardstick for what a non-ReLU activation costs
without this project's layer: built-in ReLU's forward pass is folded into the convolution by
TensorFlow's graph rewriter, so it costs nothing, while any other function needs passes of its
own over memory. All models are built first; then every round times each
model in turn (order reversed every other round), so slow drifts of a shared machine hit all
variants alike. The ratio reported is the median over rounds of the per-round ratio.

    python bench/activation_overhead.py            # 2-3 minutes on 2 cores
    python bench/activation_overhead.py --quick    # under a minute
    python bench/activation_overhead.py --variants relu,swish,swish:ops,depth3,depth3:ops
    python bench/activation_overhead.py --wide-vectors      # 512-bit XLA vectors (AVX-512 CPUs)

The model is compiled with `jit_compile=False` (XLA only inside the activation layers), which is
what Keras' "auto" resolves to on a CPU-only machine: compiling the whole train step with XLA ran
this net at about 0.8x (float32) and 0.4x (mixed_bfloat16) of the non-XLA speed on a 2-core
AVX-512 CPU; `--jit-compile` measures that configuration. "CPU-time ratio" compares the process
CPU time per step; on a machine shared with other work it is steadier than the wall-clock ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from activations.layer import ParametricActivation, prefer_wide_vectors  # noqa: E402

EXPRESSIONS = {
    "swish": "x*sigmoid(beta*x)",
    "depth3": "max(relu(x),cosh(elu(x)))",
    "relu": "relu(x)",
}

BUILTINS = {
    "relu": lambda: keras.layers.ReLU(),
    "silu": lambda: keras.layers.Activation("silu"),
}


def activation_factory(variant: str):
    """`relu` / `silu`: built-in layers; `swish`, `depth3`, `relu:pa`: ParametricActivation.

    A `:ops` / `:fused` suffix picks the layer's implementation, `:channel` per-channel sharing.
    """
    name, *options = variant.split(":")
    if not options and name in BUILTINS:
        return BUILTINS[name]
    if name not in EXPRESSIONS:
        raise SystemExit(f"unknown variant {variant!r}; names: {sorted(set(EXPRESSIONS) | set(BUILTINS))}")
    implementation = next((o for o in options if o in ("ops", "fused")), "auto")
    sharing = "channel" if "channel" in options else "layer"
    return lambda: ParametricActivation(EXPRESSIONS[name], sharing=sharing, implementation=implementation)


def build_model(make_activation, policy: str, jit_compile: bool) -> keras.Model:
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        inputs = keras.Input((32, 32, 3))
        h = inputs
        for i, filters in enumerate((32, 32, 64, 64)):
            h = keras.layers.Conv2D(filters, 3, padding="same")(h)
            h = make_activation()(h)
            if i == 1:
                h = keras.layers.MaxPooling2D()(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        outputs = keras.layers.Dense(10, dtype="float32")(h)
        model = keras.Model(inputs, outputs)
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return model


def time_steps(model, x, y, steps: int, percentile: float) -> tuple[float, float]:
    """(seconds per step at `percentile` of the timed steps, process CPU seconds per step)."""
    times = []
    cpu = time.process_time()
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)  # returns numpy: the step has finished
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, percentile)), (time.process_time() - cpu) / steps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps (about a minute)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5, quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per model per round (default 12, quick 5)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--variants", default="relu,silu,swish,depth3")
    parser.add_argument("--jit-compile", action="store_true", help="XLA-compile the whole train step too")
    parser.add_argument(
        "--wide-vectors", action="store_true",
        help="let XLA use 512-bit vectors (activations.layer.prefer_wide_vectors) for the fused kernels",
    )
    parser.add_argument(
        "--percentile", type=float, default=50.0,
        help="per-round step time statistic (50 = median; lower values discount other load on a shared machine)",
    )
    args = parser.parse_args(argv)
    if args.wide_vectors:
        prefer_wide_vectors()
    rounds = args.rounds or (2 if args.quick else 5)
    steps = args.steps or (5 if args.quick else 12)
    variants = args.variants.split(",")
    precisions = args.precisions.split(",")
    if variants[0] != "relu":
        variants = ["relu"] + [v for v in variants if v != "relu"]

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch_size, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=(args.batch_size,))

    models = {}
    for precision in precisions:
        for variant in variants:
            model = build_model(activation_factory(variant), precision, args.jit_compile)
            for _ in range(3):  # tracing, XLA compilation, allocator warm-up
                model.train_on_batch(x, y)
            models[(precision, variant)] = model

    results = {key: [] for key in models}
    order = list(models)
    for round_index in range(rounds):
        for key in order if round_index % 2 == 0 else reversed(order):
            results[key].append(time_steps(models[key], x, y, steps, args.percentile))

    print(f"\nTraining throughput, batch {args.batch_size}, {rounds} rounds x {steps} steps "
          f"(p{args.percentile:g} step time per round, median over rounds), jit_compile={args.jit_compile}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, backend {keras.backend.backend()}, "
          f"{os.cpu_count()} CPUs\n")
    header = "| activation |" + "".join(f" {p} img/s | ratio | CPU-time ratio |" for p in precisions)
    print(header)
    print("|---|" + "---:|---:|---:|" * len(precisions))
    for variant in variants:
        row = f"| {variant} |"
        for precision in precisions:
            mine, base = results[(precision, variant)], results[(precision, "relu")]
            throughput = statistics.median(args.batch_size / step for step, _ in mine)
            ratio = statistics.median(b[0] / m[0] for m, b in zip(mine, base))
            cpu_ratio = statistics.median(b[1] / m[1] for m, b in zip(mine, base))
            row += f" {throughput:.0f} | {ratio:.2f}x | {cpu_ratio:.2f}x |"
        print(row)


if __name__ == "__main__":
    main()
