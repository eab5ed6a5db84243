"""What early stopping of hopeless trials saves, and what it costs the search, side by side.

Runs the pipeline's Tuner (its executor, on an Examples artifact the ExampleGen executor wrote)
twice per search seed: every trial in full (`stop_quantile=0`) and with the quantile rule
(`activations.stopping.QuantileStopping`, the pipeline's default 0.25). Both see the same
seed functions and data; they differ from the first stopped trial on, because a stopped trial
enters the population with its lower fitness. Reported per setting: epochs trained (exact, from
the trials' results), wall time, trials stopped, and the best validation accuracy the search
found; the ratios compare the two settings within each seed (median over seeds). The settings
alternate in order across seeds so a drift of the machine's speed does not favour one.

    python bench/early_stopping.py            # the demo's search (24 trials of 3 epochs), 3 seeds
    python bench/early_stopping.py --quick    # 12 trials, 1 seed
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.parallel_trials import write_examples  # noqa: E402

SEED_FUNCTIONS = ["relu", "swish", "gelu", "elu", "softplus", "tanh"]


def search(examples_uri: str, quantile: float, seed: int, args, scratch: str) -> dict:
    """One search by the Tuner executor; what it trained and found."""
    from components.base import Artifact, ExecutorContext
    from components.candidate_gen import CandidateGen
    from components.tuner import TunerExecutor, read_top
    from pipeline.config import PipelineConfig
    from pipeline.dag import train_config_fields

    work = tempfile.mkdtemp(prefix=f"q{quantile}-s{seed}-", dir=scratch)
    candidates = Artifact("Candidates", os.path.join(work, "candidates"))
    os.makedirs(candidates.uri)
    generator = CandidateGen(space="pangaea", seed_functions=SEED_FUNCTIONS, num_sampled=8, seed=seed)
    generator.EXECUTOR_CLASS().Do({}, {"candidates": [candidates]}, generator.exec_properties)
    out = Artifact("SearchResults", os.path.join(work, "search"))
    os.makedirs(out.uri)
    config = PipelineConfig(trial_epochs=args.epochs)
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 trials, 1 seed")
    parser.add_argument("--trials", type=int, default=None, help="trials per search (default 24; quick 12)")
    parser.add_argument("--seeds", type=int, default=None, help="search seeds (default 3; quick 1)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (the demo's 3)")
    parser.add_argument("--quantile", type=float, default=0.25)
    args = parser.parse_args(argv)
    args.trials = args.trials or (12 if args.quick else 24)
    seeds = range(args.seeds or (1 if args.quick else 3))
    from activations.layer import prefer_wide_vectors

    prefer_wide_vectors()  # as `actsearch run` does
    settings = [0.0, args.quantile]
    print(f"# Early stopping: the demo's search ({args.trials} trials of small_cnn on embedded:digits, "
          f"{args.epochs} epochs each, population 8), every trial in full against stop_quantile="
          f"{args.quantile}, {len(seeds)} search seeds, {os.cpu_count()} CPUs\n", flush=True)
    found: dict[float, list[dict]] = {q: [] for q in settings}
    with tempfile.TemporaryDirectory(prefix="bench-stopping-") as scratch:
        examples = write_examples("embedded:digits", None, scratch)
        for seed in seeds:
            for quantile in settings if seed % 2 == 0 else settings[::-1]:
                result = search(examples, quantile, seed, args, scratch)
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
