"""What early stopping of hopeless trials saves, and what it costs the search, side by side.

Runs the pipeline's Tuner (its executor, on an Examples artifact the ExampleGen executor wrote)
twice per search seed: every trial in full (`stop_quantile=0`) and with the quantile rule
(`activations.stopping.QuantileStopping`, the pipeline's default 0.25). Both see the same
seed functions and data; they differ from the first stopped trial on, because a stopped trial
enters the population with its lower fitness. Reported per setting: epochs trained (exact, from
the trials' results), wall time, trials stopped, and the best validation accuracy the search
found; the ratios compare the two settings within each seed (median over seeds). Each search
runs in a process of its own: the two searches of a seed propose the same functions until the
first stop, and in one process the second would reuse the first's compiled XLA kernels. The
settings alternate in order across seeds so a drift of the machine's speed does not favour one.

    python bench/early_stopping.py            # the demo's search (24 trials of 3 epochs), 3 seeds
    python bench/early_stopping.py --quick    # 12 trials, 1 seed
    python bench/early_stopping.py --preset cifar10 --data folder:.cache/cifar10/train \
        --max_examples 3000 --trials 16 --epochs 4 --seeds 1     # ResNet-20 trials, CIFAR-10 images
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.parallel_trials import write_examples  # noqa: E402
from pipeline.config import preset  # noqa: E402

SEED_FUNCTIONS = ["relu", "swish", "gelu", "elu", "softplus", "tanh"]


def search(examples_uri: str, quantile: float, seed: int, args, scratch: str) -> dict:
    """One search by the Tuner executor; what it trained and found."""
    from components.base import Artifact, ExecutorContext
    from components.candidate_gen import CandidateGen
    from components.tuner import TunerExecutor, read_top
    from pipeline.dag import train_config_fields

    work = tempfile.mkdtemp(prefix=f"q{quantile}-s{seed}-", dir=scratch)
    candidates = Artifact("Candidates", os.path.join(work, "candidates"))
    os.makedirs(candidates.uri)
    generator = CandidateGen(space="pangaea", seed_functions=SEED_FUNCTIONS, num_sampled=8, seed=seed)
    generator.EXECUTOR_CLASS().Do({}, {"candidates": [candidates]}, generator.exec_properties)
    out = Artifact("SearchResults", os.path.join(work, "search"))
    os.makedirs(out.uri)
    config = preset(args.preset, {"trial_epochs": args.epochs})
    parameters = {"train_config": train_config_fields(config, final=False), "space": "pangaea",
                  "strategy": "evolution", "max_trials": args.trials, "population_size": 8, "tournament_size": 3,
                  "train_examples": None, "parallel_trials": 1, "beam_options": [], "top_k": 3, "seed": seed,
                  "stop_quantile": quantile or None}
    executor = TunerExecutor(ExecutorContext(component_id="tuner", resume_dir=os.path.join(work, "resume")))
    start = time.perf_counter()
    executor.Do({"examples": [Artifact("Examples", examples_uri)], "candidates": [candidates]},
                {"search_results": [out]}, parameters)
    seconds = time.perf_counter() - start
    results = [json.load(open(path)) for path in glob.glob(os.path.join(work, "resume", "results", "*.json"))]
    top = read_top(out)
    return {"seconds": seconds, "epochs": sum(r.get("epochs_run") or 0 for r in results),
            "stopped": sum(1 for r in results if r.get("stopped_at")), "best": top[0]["fitness"] if top else None,
            "top3": [t["expression"] for t in top[:3]]}


def search_in_a_new_process(examples_uri: str, quantile: float, seed: int, args, scratch: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--one", json.dumps(
        {"examples": examples_uri, "quantile": quantile, "seed": seed, "scratch": scratch,
         "trials": args.trials, "epochs": args.epochs, "preset": args.preset})]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"search (stop_quantile={quantile}, seed {seed}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_one(spec: str) -> int:
    """The `--one` mode: one search in this process, its summary as a JSON line."""
    from activations.layer import prefer_wide_vectors

    prefer_wide_vectors()  # as `actsearch run` does
    job = json.loads(spec)
    args = argparse.Namespace(trials=job["trials"], epochs=job["epochs"], preset=job["preset"])
    print(json.dumps(search(job["examples"], job["quantile"], job["seed"], args, job["scratch"])))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 trials, 1 seed")
    parser.add_argument("--trials", type=int, default=None, help="trials per search (default 24; quick 12)")
    parser.add_argument("--seeds", type=int, default=None, help="search seeds (default 3; quick 1)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (the demo's 3)")
    parser.add_argument("--quantile", type=float, default=0.25)
    parser.add_argument("--preset", default="demo", help="training settings of the trials (pipeline presets)")
    parser.add_argument("--data", default="embedded:digits")
    parser.add_argument("--max_examples", type=int, default=None)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one search, in a process of its own
    args = parser.parse_args(argv)
    if args.one:
        return run_one(args.one)
    args.trials = args.trials or (12 if args.quick else 24)
    seeds = range(args.seeds or (1 if args.quick else 3))
    settings = [0.0, args.quantile]
    model = preset(args.preset).model
    print(f"# Early stopping: a search of {args.trials} trials of {model} ({args.preset} preset's training) on "
          f"{args.data}{f' ({args.max_examples} examples)' if args.max_examples else ''}, {args.epochs} epochs each, "
          f"population 8, every trial in full against stop_quantile={args.quantile}, {len(seeds)} search seeds, "
          f"{os.cpu_count()} CPUs\n", flush=True)
    found: dict[float, list[dict]] = {q: [] for q in settings}
    with tempfile.TemporaryDirectory(prefix="bench-stopping-") as scratch:
        examples = write_examples(args.data, args.max_examples, scratch)
        for seed in seeds:
            for quantile in settings if seed % 2 == 0 else settings[::-1]:
                result = search_in_a_new_process(examples, quantile, seed, args, scratch)
                found[quantile].append(result)
                print(f"seed {seed}, stop_quantile={quantile}: {result['epochs']} epochs, {result['seconds']:.0f} s, "
                      f"{result['stopped']} stopped, best {result['best']:.4f}, top 3 {result['top3']}",
                      file=sys.stderr, flush=True)

    full = found[0.0]
    print("| setting | epochs trained (median) | vs full | wall time (median) | vs full | trials stopped "
          "(median) | best val_accuracy (median) | best minus full's (median, range) |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for quantile, rows in found.items():
        epoch_ratio = statistics.median(r["epochs"] / f["epochs"] for r, f in zip(rows, full))
        time_ratio = statistics.median(r["seconds"] / f["seconds"] for r, f in zip(rows, full))
        gaps = [r["best"] - f["best"] for r, f in zip(rows, full)]
        name = "every trial in full" if quantile == 0 else f"stop_quantile={quantile:g}"
        print(f"| {name} | {statistics.median(r['epochs'] for r in rows):.0f} | {epoch_ratio:.2f}x | "
              f"{statistics.median(r['seconds'] for r in rows):.0f} s | {time_ratio:.2f}x | "
              f"{statistics.median(r['stopped'] for r in rows):.0f} | {statistics.median(r['best'] for r in rows):.4f} | "
              f"{statistics.median(gaps):+.4f} ({min(gaps):+.4f} to {max(gaps):+.4f}) |")
    print(f"\nSearch seeds {list(seeds)}; ratios are medians of per-seed ratios (the two settings of a seed run "
          "one after the other).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
