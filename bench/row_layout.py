"""Row layout of the fused activation kernels: ResNet-20 with and without wide rows, side by side.

XLA vectorises the last axis of an elementwise kernel. `activations.layer` therefore views `k`
consecutive channel vectors as one row of a multiple of `ROW_QUANTUM` (32) values before calling
its fused kernels. ResNet-20's first stage has 16 channels (8 packed words a row under bfloat16),
so it is the case that layout is for. This benchmark builds every activation twice: once with
rows of one channel vector (`ROW_QUANTUM = 1`, the layout before) and once with wide rows. It
then times training steps in interleaved rounds against ReLU and prints images/s and ratios.

    .venv/bin/python bench/row_layout.py            # about 4 minutes on 2 cores
    .venv/bin/python bench/row_layout.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from training_speed import build, timed_steps  # noqa: E402  (sets up the path and TF logging)

from activations import layer  # noqa: E402

ACTIVATIONS = ("x*sigmoid(beta*x)", "max(relu(x),cosh(elu(x)))", "bessel_i1e(atan(x))")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default 12; quick 3)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; quick 2)")
    parser.add_argument("--precision", default="mixed_bfloat16")
    parser.add_argument("--activations", default="|".join(ACTIVATIONS), help="'|'-separated")
    parser.add_argument("--batch_size", type=int, default=128)
    args = parser.parse_args(argv)
    layer.prefer_wide_vectors()
    steps = args.steps or (3 if args.quick else 12)
    rounds = args.rounds or (2 if args.quick else 5)
    wide = layer.ROW_QUANTUM

    runs = {}
    for act in ["relu"] + [a for a in args.activations.split("|") if a and a != "relu"]:
        for quantum in (wide,) if act == "relu" else (1, wide):
            layer.ROW_QUANTUM = quantum  # read when the model's train function is traced, below
            model, data = build(args.precision, act, "channel", args.batch_size)
            timed_steps(model, data, 2)
            runs[(act, quantum)] = (model, data)
    layer.ROW_QUANTUM = wide

    speeds = {key: [] for key in runs}
    order = list(runs)
    for r in range(rounds):
        for key in order if r % 2 == 0 else order[::-1]:
            model, data = runs[key]
            speeds[key].append(args.batch_size / timed_steps(model, data, steps))
        print(f"round {r + 1}/{rounds} done", file=sys.stderr, flush=True)

    def ratio(key, base):
        return statistics.median(v / b for v, b in zip(speeds[key], speeds[base]))

    print(f"\nResNet-20, {args.precision}, batch {args.batch_size}, per-channel parameters, {rounds} rounds x "
          f"{steps} steps (median per round, median over rounds)\n")
    print("| activation | rows | img/s | ratio to relu | wide rows against channel rows |")
    print("|---|---|---:|---:|---:|")
    for (act, quantum), values in speeds.items():
        rows = "-" if act == "relu" else ("channel vectors" if quantum == 1 else f"multiples of {quantum}")
        gain = f"{ratio((act, quantum), (act, 1)):.2f}x" if act != "relu" and quantum != 1 else "-"
        print(f"| `{act}` | {rows} | {statistics.median(values):.0f} | {ratio((act, quantum), ('relu', wide)):.2f}x "
              f"| {gain} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
