"""Search trials per hour with `parallel_trials` 1 and 2, side by side on this machine.

The Tuner component's real path: an Examples artifact written by the ExampleGen executor, then
one generation of trials (short training runs of `components.training_job.train_job`, each with
its own activation function) fanned out by `components.fanout.run_jobs`, in this process
(`parallel_trials=1`) or through Beam's local runner in multi-processing mode with N worker
processes. The wall time includes what a user pays: Beam's start-up and each worker importing
TensorFlow and compiling its first model. The settings alternate across rounds (1, 2, 2, 1, ...)
so a drift of the machine's speed does not favour one of them.

    python bench/parallel_trials.py                    # 8 small_cnn trials on digits, 3 rounds
    python bench/parallel_trials.py --quick            # 4 trials, 1 round
    python bench/parallel_trials.py --model resnet20 --data folder:.cache/cifar10/train --max_examples 3000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FUNCTIONS = ["relu", "swish", "gelu", "elu", "softplus", "tanh", "x * sigmoid(beta * x) + alpha * min0(x)",
             "max(relu(x), cosh(elu(x)))", "mish", "selu", "softsign", "x * tanh(x)"]


def write_examples(source: str, max_examples: int | None, directory: str) -> str:
    """An Examples artifact as the pipeline writes it (the ExampleGen executor, run by hand)."""
    from components.base import Artifact
    from components.example_gen import ExampleGen

    component = ExampleGen(source=source, max_examples=max_examples, validation_fraction=0.1,
                           test_fraction=0.1, seed=0)
    out = Artifact("Examples", os.path.join(directory, "examples"))
    os.makedirs(out.uri)
    component.EXECUTOR_CLASS().Do({}, {"examples": [out]}, component.exec_properties)
    return out.uri


def trial_jobs(examples_uri: str, model: str, epochs: int, trials: int, work: str) -> list[dict]:
    return [{
        "id": f"trial_{i:02d}",
        "fn": "components.training_job:train_job",
        "args": {
            "examples_uri": examples_uri,
            "config": {"model": model, "activation": FUNCTIONS[i % len(FUNCTIONS)], "epochs": epochs,
                       "batch_size": 64, "optimizer": "adam", "learning_rate": 2e-3, "seed": i,
                       "sharing": "channel", "output_dir": os.path.join(work, f"trial_{i:02d}"),
                       "tensorboard": False, "save_model": False, "evaluate_test": False, "quiet": True},
        },
    } for i in range(trials)]


def one_round(examples_uri: str, parallelism: int, args, scratch: str) -> float:
    """Seconds for one generation of `args.trials` trials at `parallelism`."""
    from components.fanout import run_jobs

    work = tempfile.mkdtemp(prefix=f"p{parallelism}-", dir=scratch)
    jobs = trial_jobs(examples_uri, args.model, args.epochs, args.trials, work)
    start = time.perf_counter()
    results = run_jobs(jobs, os.path.join(work, "results"), parallelism=parallelism)
    seconds = time.perf_counter() - start
    failed = [r["job_id"] for r in results if r.get("failed")]
    if failed:
        raise SystemExit(f"trials {failed} failed: {results[0].get('error')}")
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 trials, 1 round")
    parser.add_argument("--trials", type=int, default=None, help="trials per generation (default 8; quick 4)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per setting (default 3; quick 1)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--data", default="embedded:digits")
    parser.add_argument("--max_examples", type=int, default=None)
    parser.add_argument("--parallel", default="1,2", help="settings to compare, the first is the reference")
    args = parser.parse_args(argv)
    args.trials = args.trials or (4 if args.quick else 8)
    rounds = args.rounds or (1 if args.quick else 3)
    settings = [int(p) for p in args.parallel.split(",")]
    from activations.layer import prefer_wide_vectors

    prefer_wide_vectors()  # as `actsearch run` does; the Beam workers inherit it

    print(f"# Search trials per hour by parallel_trials ({args.trials} trials of {args.model} on {args.data}, "
          f"{args.epochs} epochs each, {rounds} rounds, {os.cpu_count()} CPUs)\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as scratch:
        examples = write_examples(args.data, args.max_examples, scratch)
        seconds: dict[int, list[float]] = {p: [] for p in settings}
        for r in range(rounds):
            for parallelism in settings if r % 2 == 0 else settings[::-1]:
                took = one_round(examples, parallelism, args, scratch)
                seconds[parallelism].append(took)
                print(f"round {r + 1}/{rounds}: parallel_trials={parallelism}: {took:.1f} s", file=sys.stderr, flush=True)

    reference = settings[0]
    print(f"\n| parallel_trials | seconds per generation (median) | trials per hour | speed-up vs {reference} "
          "(median of per-round ratios) |")
    print("|---:|---:|---:|---:|")
    for parallelism, values in seconds.items():
        per_round = [ref / took for ref, took in zip(seconds[reference], values)]
        print(f"| {parallelism} | {statistics.median(values):.1f} | "
              f"{3600 * args.trials / statistics.median(values):.0f} | {statistics.median(per_round):.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
