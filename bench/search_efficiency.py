"""Do evolution and the RL controller find better activation functions than random search, at the same trial budget?

Fitness (cheap, but a real optimisation problem with learnable parameters): how well a candidate
reproduces a target activation curve once its learnable parameters have been fitted by a few
trust-region least-squares steps (as gradient descent tunes PANGAEA's parameters) and its output
scale and offset by least squares (as the next layer would). SciPy's trust-region reflective
method, not MINPACK's Levenberg-Marquardt: the latter returned different fits for the same
function from one call to the next here, so two runs of this benchmark drifted apart. The score
is the normalised mean squared
error on [-5, 5] (lower is better; 1.0 = no better than a constant). The target is a swish-like
curve with a dip at zero, ``x * sigmoid(1.6 x) - 0.3 exp(-x^2)``: it lies in the PANGAEA space
but is none of the named functions.

Methods, each with the same trial budget, over seeds 0..S-1:

* ``evolution``: `EvolutionaryOracle` with its defaults (regularized evolution), driven one trial
  at a time like a single `keras_tuner.Tuner` worker.
* ``random``: `EvolutionaryOracle(strategy="random")`: the same seed functions, the same
  fingerprint de-duplication and sanity check, then uniform samples of the same space.
* ``fixed list``: `keras_tuner.RandomSearch` over `hp.Choice` of the named activation functions
  (it stops once the list is exhausted).

A second comparison runs in the Swish paper's space of one or two core units (``space="swish"``):

* ``rl controller``: `EvolutionaryOracle(strategy="rl")`, the paper's reinforcement-learning
  search (a core-unit controller trained by REINFORCE on every result), against ``random``
  and ``evolution`` in the same space.

Printed as markdown tables (one per space): the median best error and the median number of trials until the
error is at most half that of the best named function, with ratios to evolution; then how many
offspring the fingerprint cache and the sanity check kept from being trained.

    python bench/search_efficiency.py            # 10 seeds x 100 trials, a few minutes on 2 cores
    python bench/search_efficiency.py --seeds 3 --trials 40   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from scipy.optimize import least_squares  # noqa: E402

import keras_tuner  # noqa: E402
from activations.equivalence import evaluate_numpy  # noqa: E402
from activations.expression import parse  # noqa: E402
from activations.oracle import DEFAULT_SEEDS, GENOME, EvolutionaryOracle  # noqa: E402

X = np.linspace(-5.0, 5.0, 201)
TARGET = X / (1.0 + np.exp(-1.6 * X)) - 0.3 * np.exp(-(X**2))
TARGET_TEXT = "x * sigmoid(1.6 x) - 0.3 exp(-x^2)"
FIT_STEPS = 10
FIXED_LIST = list(DEFAULT_SEEDS) + ["mish(x)", "elish(x)", "leaky_relu(x)", "hard_sigmoid(x)", "log_sigmoid(x)"]
OBJECTIVE = keras_tuner.Objective("nmse", direction="min")


def _residual(expr, names, theta) -> np.ndarray:
    with np.errstate(all="ignore"):
        values = evaluate_numpy(expr, X, dict(zip(names, theta)))
    if not np.all(np.isfinite(values)):
        return np.full_like(X, np.nan)
    design = np.stack([values, np.ones_like(values)], axis=1)
    coef, *_ = np.linalg.lstsq(design, TARGET, rcond=None)
    return design @ coef - TARGET


def fitness(text: str) -> float:
    """Normalised squared error of the best fit of `text` to TARGET (NaN when not finite)."""
    expr = parse(text)
    names = expr.parameters
    theta = np.ones(len(names))
    residual = _residual(expr, names, theta)
    if not np.all(np.isfinite(residual)):
        return float("nan")
    if names:
        safe = lambda t: np.nan_to_num(_residual(expr, names, t), nan=1e3)  # noqa: E731
        try:
            fitted = least_squares(safe, theta, method="trf", max_nfev=FIT_STEPS * (len(names) + 1)).fun
            if fitted @ fitted < residual @ residual:
                residual = fitted
        except (ValueError, np.linalg.LinAlgError):
            pass
    denominator = float(np.sum((TARGET - TARGET.mean()) ** 2))
    return float(min(1.0, residual @ residual / denominator))


def run_oracle(strategy: str, seed: int, trials: int, **kwargs) -> tuple[list[float], dict]:
    """Best-so-far error after each trial, and the oracle's counts."""
    oracle = EvolutionaryOracle(objective=OBJECTIVE, max_trials=trials, strategy=strategy, seed=seed, **kwargs)
    oracle.verbose = 0
    scores = []
    while True:
        trial = oracle.create_trial("bench")
        if trial.status != "RUNNING":
            break
        value = fitness(trial.hyperparameters.get(GENOME))
        oracle.report(trial.trial_id, value)
        scores.append(value if np.isfinite(value) else 1.0)
    return list(np.minimum.accumulate(scores)), oracle.counts()


class _FixedListSearch(keras_tuner.RandomSearch):
    def __init__(self, log, **kwargs):
        self.log = log
        super().__init__(**kwargs)

    def run_trial(self, trial, *args, **kwargs):
        value = fitness(trial.hyperparameters.get(GENOME))
        self.log.append(value)
        return {"nmse": value}


def run_fixed_list(seed: int, trials: int) -> tuple[list[float], dict]:
    log: list[float] = []

    def declare(hp):
        hp.Choice(GENOME, FIXED_LIST)

    with tempfile.TemporaryDirectory() as directory:
        tuner = _FixedListSearch(
            log,
            hypermodel=declare,
            objective=OBJECTIVE,
            max_trials=trials,
            seed=seed + 1,  # KerasTuner treats seed 0 as "no seed"
            directory=directory,
            project_name="fixed",
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tuner.search(verbose=0)
    return list(np.minimum.accumulate(log)), {}


def trials_to(curve: list[float], threshold: float) -> float:
    for index, value in enumerate(curve, start=1):
        if value <= threshold:
            return float(index)
    return float("inf")


def _fmt_trials(value: float, budget: int) -> str:
    return f"> {budget}" if value == float("inf") else f"{value:.0f}"


def _fmt_ratio(value: float, reference: float, budget: int) -> str:
    """Trials needed relative to evolution's; a method that never got there needs more than the budget."""
    if reference == float("inf"):
        return "n/a"
    if value == float("inf"):
        return f"> {budget / reference:.2f}x"
    return f"{value / reference:.2f}x"


def _print_comparison(group: str, results: dict, threshold: float, args) -> dict:
    """The markdown tables of one group of methods; ratios are to the group's first method."""
    summary = {}
    for name, result in results.items():
        best = [curve[-1] for curve in result["curves"]]
        hits = [trials_to(curve, threshold) for curve in result["curves"]]
        summary[name] = {
            "median_best": statistics.median(best),
            "median_trials": statistics.median(hits),
            "reached": sum(hit != float("inf") for hit in hits),
            "trials_run": statistics.median(len(curve) for curve in result["curves"]),
        }
    reference = next(iter(summary))
    ref = summary[reference]
    print(f"\n{group}\n")
    print(f"| method | trials run | median best NMSE | vs {reference} | seeds reaching threshold | "
          f"median trials to threshold | vs {reference} |")
    print("|---|---|---|---|---|---|---|")
    for name, row in summary.items():
        print(
            f"| {name} | {row['trials_run']:.0f} | {row['median_best']:.5f} | "
            f"{row['median_best'] / ref['median_best']:.2f}x | {row['reached']}/{args.seeds} | "
            f"{_fmt_trials(row['median_trials'], args.trials)} | {_fmt_ratio(row['median_trials'], ref['median_trials'], args.trials)} |"
        )
    print(f"\nRatios: error relative to {reference}'s (higher = worse) and trials needed relative to {reference}'s.")

    print("\n| method | candidates screened | duplicates (fingerprint cache) | rejected (sanity check) | trained |")
    print("|---|---|---|---|---|")
    for name, result in results.items():
        if not all(result["counts"]):
            continue  # KerasTuner's RandomSearch keeps no such counts
        totals = {key: sum(c[key] for c in result["counts"]) for key in ("proposed", "duplicates", "rejected")}
        screened = totals["proposed"] + totals["duplicates"] + totals["rejected"]
        print(
            f"| {name} | {screened} | {totals['duplicates']} ({totals['duplicates'] / screened:.0%}) | "
            f"{totals['rejected']} ({totals['rejected'] / screened:.0%}) | {totals['proposed']} |"
        )
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--json", help="also write the raw curves to this file")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.trials < 1 or args.population < 2:
        parser.error("--seeds and --trials must be >= 1, --population >= 2")

    named = {text: fitness(text) for text in FIXED_LIST}
    best_named = min(named, key=named.get)
    threshold = named[best_named] / 2.0
    print(f"Target: {TARGET_TEXT}; best named function: {best_named} (NMSE {named[best_named]:.5f}); "
          f"threshold: NMSE <= {threshold:.5f}; budget {args.trials} trials; seeds 0..{args.seeds - 1}\n")

    population = args.population
    groups = {
        "PANGAEA space": {
            "evolution": lambda seed: run_oracle("evolution", seed, args.trials, population_size=population),
            "random": lambda seed: run_oracle("random", seed, args.trials, population_size=population),
            "fixed list (RandomSearch)": lambda seed: run_fixed_list(seed, args.trials),
        },
        # The Swish paper's space of one or two core units, where its RL controller searched.
        "Swish paper's core units (space swish)": {
            "rl controller": lambda seed: run_oracle("rl", seed, args.trials, space="swish", population_size=population),
            "random": lambda seed: run_oracle("random", seed, args.trials, space="swish", population_size=population),
            "evolution": lambda seed: run_oracle("evolution", seed, args.trials, space="swish",
                                                 population_size=population),
        },
    }
    results, summaries = {}, {}
    for group, methods in groups.items():
        for name, run in methods.items():
            started = time.perf_counter()
            curves, counts = [], []
            for seed in range(args.seeds):
                curve, count = run(seed)
                curves.append(curve)
                counts.append(count)
            results[f"{group}: {name}"] = {"curves": curves, "counts": counts, "seconds": time.perf_counter() - started}
            print(f"  {group}, {name}: {results[f'{group}: {name}']['seconds']:.0f} s", file=sys.stderr, flush=True)
        summaries[group] = _print_comparison(group, {name: results[f"{group}: {name}"] for name in methods},
                                             threshold, args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"threshold": threshold, "named": named, "summary": summaries,
                       "results": {k: {"curves": v["curves"], "counts": v["counts"], "seconds": v["seconds"]}
                                   for k, v in results.items()}}, handle, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
