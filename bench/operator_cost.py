"""Cost of each unary operator in the fused activation kernel, as a ratio to `relu(x)`.

Times the forward kernel and the backward kernel (input gradient) of `ParametricActivation`'s
fused XLA path for `op(x)`, with the layer's row layout, on one activation-sized tensor, in
float32 and bfloat16, and prints each as a ratio to `relu(x)` through the same kernel. For an
operator that has an arithmetic-only form (`Operator.vector_fn`, used by the float32 kernels),
the exact form (`Operator.fn`: XLA's own sin, cos, exp, log1p, ...) is timed side by side in the
same run, as "exact form".

This is what a search pays per activation site for a function built from these operators: in the
CIFAR-10 search, functions of slow operators trained at a fraction of ReLU's speed.

    python bench/operator_cost.py             # about 3 minutes on 2 cores
    python bench/operator_cost.py --quick     # a subset, about a minute
    python bench/operator_cost.py --operators sin,cos,bessel_i0e --dtypes bfloat16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from activations import operators  # noqa: E402
from activations.layer import _fused_kernel, _run_with_wide_rows, prefer_wide_vectors  # noqa: E402

QUICK_OPERATORS = "relu,sigmoid,tanh,exp,sin,cos,sinc,asinh,erf,mish,bessel_i0e,bessel_i1e"


def kernels(text: str, vectorised: bool):
    """(forward, backward) graph functions of one expression's fused kernel.

    Each applies the kernel to every tensor of a list inside one graph and returns one value of
    each result (the kernels still compute whole tensors): per-call Python and eager overhead,
    which is as large as a kernel on an activation-sized tensor, stays out of the timing.
    Distinct input tensors keep TensorFlow from merging the calls.
    """
    import tensorflow as tf

    kernel = _fused_kernel(text, vectorised)

    def first(t):
        return tf.reshape(t, [-1])[0]

    @tf.function(autograph=False)
    def forward(xs):  # the layer's own path: rows of a multiple of 32 values
        return tf.stack([first(_run_with_wide_rows(kernel, x, [])) for x in xs])

    @tf.function(autograph=False)
    def backward(xs, dys):  # only gradients are returned, so the forward kernels are pruned
        grads = []
        for x, dy in zip(xs, dys):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = _run_with_wide_rows(kernel, x, [])
            grads.append(first(tape.gradient(y, x, output_gradients=dy)))
        return tf.stack(grads)

    return forward, backward


def time_call(fn, *args, calls: int) -> float:
    """Median seconds per kernel call: each timed call runs the kernel once per input tensor."""
    per_call = len(args[0])
    fn(*args).numpy()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn(*args).numpy()
        times.append((time.perf_counter() - start) / per_call)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"fewer rounds and only {QUICK_OPERATORS}")
    parser.add_argument("--operators", default=None, help="comma-separated unary operator names (default: all)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--shape", default="128,32,32,16", help="the activation tensor (N,H,W,C)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 2)")
    parser.add_argument("--calls", type=int, default=5, help="timed calls per kernel per round")
    parser.add_argument("--inputs", type=int, default=8, help="distinct input tensors per timed call")
    parser.add_argument("--narrow-vectors", action="store_true", help="leave XLA's default 256-bit vectors")
    args = parser.parse_args(argv)
    if not args.narrow_vectors:
        prefer_wide_vectors()
    import tensorflow as tf

    names = (args.operators or (QUICK_OPERATORS if args.quick else ",".join(operators.names(arity=1)))).split(",")
    unknown = [n for n in names if n not in operators.REGISTRY or operators.REGISTRY[n].arity != 1]
    if unknown:
        raise SystemExit(f"not unary operators: {unknown}; choose from {operators.names(arity=1)}")
    if "relu" not in names:
        names.insert(0, "relu")
    rounds = args.rounds or (2 if args.quick else 3)
    shape = [int(v) for v in args.shape.split(",")]
    dtypes = args.dtypes.split(",")

    variants = [(n, True) for n in names] + [(n, False) for n in names if operators.REGISTRY[n].vector_fn]
    rng = tf.random.Generator.from_seed(0)
    inputs = {
        d: ([tf.cast(rng.normal(shape) * 2.0, d) for _ in range(args.inputs)],
            [tf.cast(rng.normal(shape), d) for _ in range(args.inputs)])
        for d in dtypes
    }
    functions = {v: kernels(f"{v[0]}(x)", v[1]) for v in variants}
    times = {(v, d, part): [] for v in variants for d in dtypes for part in ("fwd", "bwd")}
    for round_index in range(rounds):
        order = variants if round_index % 2 == 0 else variants[::-1]
        for variant in order:
            forward, backward = functions[variant]
            for d in dtypes:
                x, dy = inputs[d]
                times[(variant, d, "fwd")].append(time_call(forward, x, calls=args.calls))
                times[(variant, d, "bwd")].append(time_call(backward, x, dy, calls=args.calls))
        print(f"round {round_index + 1}/{rounds} done", file=sys.stderr, flush=True)

    median = {key: statistics.median(value) * 1e3 for key, value in times.items()}
    print(f"\nFused kernel time per operator on a {shape} tensor, {rounds} rounds x {args.calls} calls "
          f"x {args.inputs} inputs in one graph (median per kernel call), "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; ratio = (forward + backward) / relu's\n")
    print("| operator |" + "".join(f" {d} fwd ms | bwd ms | ratio to relu |" for d in dtypes))
    print("|---|" + "---:|---:|---:|" * len(dtypes))
    base = {d: median[(("relu", True), d, "fwd")] + median[(("relu", True), d, "bwd")] for d in dtypes}
    rows = sorted(variants, key=lambda v: (v[0] != "relu", -median[(v, dtypes[-1], "fwd")] - median[(v, dtypes[-1], "bwd")]))
    for variant in rows:
        name, vectorised = variant
        row = f"| {name}{'' if vectorised else ' (exact form)'} |"
        for d in dtypes:
            fwd, bwd = median[(variant, d, "fwd")], median[(variant, d, "bwd")]
            row += f" {fwd:.2f} | {bwd:.2f} | {(fwd + bwd) / base[d]:.1f}x |"
        print(row)


if __name__ == "__main__":
    main()
