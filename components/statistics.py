"""Honest comparison of trained activation functions against a baseline (ReLU by default).

A discovered function is only worth keeping when its gain over the baseline survives a test that
accounts for seed-to-seed noise and for the number of functions compared. `evaluate` takes the
final training runs (several seeds per function, same data and budget) and returns an
`Evaluation`: per-function descriptive statistics, Welch's t-test and the Mann-Whitney U test
against the baseline, Holm-corrected p-values, win/tie/loss counts over seeds and a TFX-style
verdict (`BLESSED` / `NOT_BLESSED`).

Rules, stated once so reports can point at them:

* **Metric.** `test_accuracy` by default (`metric=` selects another numeric field).
* **Confidence intervals.** 95% Student-t intervals of the mean; for an accuracy (a metric whose
  name ends in "accuracy") clipped to [0, 1], where the mean lies: with three seeds near 99%, the
  bare interval reached past 100%.
* **Diverged runs are failures, not missing data.** A run with `diverged=True` keeps its recorded
  accuracy when that is a finite number (the model really did score that); when it is missing or
  non-finite it scores *chance level*: `chance=` if given, else `1 / num_classes` when the record
  has `num_classes`, else 0.0. Dropping diverged runs would flatter unstable functions.
* **Tests.** Two-sided Welch's t-test (unequal variances) and two-sided Mann-Whitney U, each
  function against the baseline. A test needs at least `min_seeds` runs on both sides and some
  variance in the pooled data; otherwise no p-value is reported and the reason ("too few seeds for
  a test (n=2)", "zero variance ...") is given instead.
* **Multiple comparisons.** Holm's step-down correction, applied separately to each test family
  (all Welch p-values together, all Mann-Whitney p-values together). The family size is the
  number of functions that actually received a p-value.
* **Win/tie/loss.** Each run of a function is compared to the baseline run with the same seed
  (the mean, when the baseline has several runs with that seed); a run whose seed the baseline
  lacks is compared to the baseline median. A difference within `tie_tolerance` is a tie.
* **Blessing.** A function is `BLESSED` when its mean gain over the baseline exceeds `threshold`
  *and* the p-value named by `blessing_p` (default Holm-corrected Welch) is below `alpha`.
  Note that Mann-Whitney U with three seeds per side cannot go below p = 0.1, which is why the
  t-test governs by default.
* **Lost runs are left out.** A run marked `lost` (its training process died at every start: out
  of memory, killed) says nothing about its function and is skipped. A function whose runs were
  all lost is named in the summary, never dropped in silence; a baseline whose runs were all lost
  is named as such in the error (it was trained, its processes died).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as _stats

BLESSED = "BLESSED"
NOT_BLESSED = "NOT_BLESSED"
BASELINE = "BASELINE"

#: Names accepted by `evaluate(blessing_p=...)`: which p-value decides the verdict.
BLESSING_P_CHOICES = ("welch_holm", "mannwhitney_holm", "welch", "mannwhitney")


class EvaluationError(ValueError):
    """Raised for run records or settings `evaluate` cannot compare honestly."""


@dataclasses.dataclass(frozen=True)
class FunctionStats:
    """Statistics of one function's runs and its comparison with the baseline.

    Accuracies are fractions in [0, 1]; `diff` is `mean - baseline mean` in the same unit.
    A p-value field is None when no test was run; `p_note` then says why.
    """

    function: str
    n: int
    n_diverged: int
    values: tuple[float, ...]
    seeds: tuple[int, ...]
    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None
    median: float
    val_mean: float | None
    diff: float
    welch_p: float | None
    mannwhitney_p: float | None
    welch_p_holm: float | None
    mannwhitney_p_holm: float | None
    p_note: str | None
    wins: int
    ties: int
    losses: int
    pairing: str
    verdict: str
    reason: str

    @property
    def is_baseline(self) -> bool:
        return self.verdict == BASELINE

    @property
    def blessed(self) -> bool:
        return self.verdict == BLESSED

    @property
    def win_tie_loss(self) -> str:
        return f"{self.wins}/{self.ties}/{self.losses}"


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Result of `evaluate`: one `FunctionStats` per function plus the settings and a summary.

    `functions` is ordered baseline first, then by descending mean.
    """

    baseline: str
    metric: str
    threshold: float
    alpha: float
    min_seeds: int
    blessing_p: str
    tie_tolerance: float
    functions: tuple[FunctionStats, ...]
    summary: str

    @property
    def blessed(self) -> bool:
        """True when at least one function was blessed."""
        return any(f.blessed for f in self.functions)

    @property
    def blessed_functions(self) -> list[FunctionStats]:
        return [f for f in self.functions if f.blessed]

    @property
    def winner(self) -> FunctionStats | None:
        """The blessed function with the largest mean gain, or None."""
        blessed = self.blessed_functions
        return max(blessed, key=lambda f: f.diff) if blessed else None

    @property
    def verdict(self) -> str:
        return BLESSED if self.blessed else NOT_BLESSED

    def __getitem__(self, function: str) -> FunctionStats:
        for stats in self.functions:
            if stats.function == function:
                return stats
        raise KeyError(f"no function {function!r} in this evaluation; "
                       f"have {[f.function for f in self.functions]}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["verdict"] = self.verdict
        data["winner"] = self.winner.function if self.winner else None
        data["blessed_functions"] = [f.function for f in self.blessed_functions]
        return _json_safe(data)

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON (NaN/inf become null)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Evaluation":
        field_names = {f.name for f in dataclasses.fields(FunctionStats)}
        functions = []
        for item in data["functions"]:
            kwargs = {k: v for k, v in item.items() if k in field_names}
            kwargs["values"] = tuple(kwargs["values"])
            kwargs["seeds"] = tuple(kwargs["seeds"])
            functions.append(FunctionStats(**kwargs))
        own = {f.name for f in dataclasses.fields(cls)} - {"functions"}
        return cls(functions=tuple(functions), **{k: data[k] for k in own})

    @classmethod
    def from_json(cls, text: str) -> "Evaluation":
        return cls.from_dict(json.loads(text))


def evaluate(
    runs: Iterable[Mapping[str, Any]],
    baseline: str = "relu",
    threshold: float = 0.0,
    alpha: float = 0.05,
    min_seeds: int = 3,
    *,
    metric: str = "test_accuracy",
    blessing_p: str = "welch_holm",
    tie_tolerance: float = 0.0,
    chance: float | None = None,
) -> Evaluation:
    """Compares every function's runs with the baseline's runs.

    Args:
      runs: run records, each a mapping with at least `function` (str), `seed` (int), the
        `metric` field (float) and optionally `diverged` (bool), `val_accuracy`, `num_classes`.
      baseline: the `function` value of the baseline runs (e.g. "relu").
      threshold: minimum mean gain (same unit as the metric, e.g. 0.005 = half a point of
        accuracy) a function needs to be blessed.
      alpha: significance level for the p-value named by `blessing_p`.
      min_seeds: fewest runs per side for which a test is run (>= 2).
      metric: the run field compared.
      blessing_p: which p-value decides the verdict: one of `BLESSING_P_CHOICES`.
      tie_tolerance: absolute difference at or below which a seed counts as a tie.
      chance: accuracy assigned to diverged runs without a finite recorded accuracy.

    Returns:
      An `Evaluation`.

    Raises:
      EvaluationError: no runs, no baseline runs, malformed records or invalid settings.
    """
    _check_settings(threshold, alpha, min_seeds, blessing_p, tie_tolerance, chance)
    grouped, lost = _group_runs(runs, metric, chance)
    if baseline not in grouped:
        raise EvaluationError(_no_baseline_message(baseline, sorted(grouped), lost))

    base_values = np.array([v for v, _, _, _ in grouped[baseline]], dtype=float)
    base_by_seed: dict[int, list[float]] = {}
    for value, seed, _, _ in grouped[baseline]:
        base_by_seed.setdefault(seed, []).append(value)
    base_mean = float(base_values.mean())
    base_median = float(np.median(base_values))

    raw: dict[str, dict[str, Any]] = {}
    for name, records in grouped.items():
        values = np.array([r[0] for r in records], dtype=float)
        seeds = tuple(r[1] for r in records)
        vals = [r[3] for r in records if r[3] is not None]
        entry: dict[str, Any] = dict(
            function=name, n=len(values), n_diverged=sum(1 for r in records if r[2]),
            values=tuple(float(v) for v in values), seeds=seeds,
            mean=float(values.mean()), median=float(np.median(values)),
            val_mean=float(np.mean(vals)) if vals else None,
            diff=float(values.mean()) - base_mean,
            **_spread(values, ACCURACY_RANGE if metric.endswith("accuracy") else None))
        if name == baseline:
            entry.update(welch_p=None, mannwhitney_p=None, p_note=None,
                         wins=0, ties=len(values), losses=0, pairing="self")
        else:
            entry.update(_tests(values, base_values, min_seeds))
            entry.update(_win_tie_loss(values, seeds, base_by_seed, base_median, tie_tolerance))
        raw[name] = entry

    compared = [name for name in raw if name != baseline]
    for family in ("welch_p", "mannwhitney_p"):
        tested = [name for name in compared if raw[name][family] is not None]
        corrected = holm([raw[name][family] for name in tested])
        for name in compared:
            raw[name][family + "_holm"] = None
        for name, p in zip(tested, corrected):
            raw[name][family + "_holm"] = p
    raw[baseline].update(welch_p_holm=None, mannwhitney_p_holm=None)

    for name, entry in raw.items():
        if name == baseline:
            entry.update(verdict=BASELINE, reason="baseline")
        else:
            entry.update(_verdict(entry, threshold, alpha, blessing_p))

    ordered = [raw[baseline]] + sorted((raw[n] for n in compared),
                                       key=lambda e: (-e["mean"], e["function"]))
    functions = tuple(FunctionStats(**e) for e in ordered)
    settings = dict(baseline=baseline, metric=metric, threshold=float(threshold),
                    alpha=float(alpha), min_seeds=int(min_seeds), blessing_p=blessing_p,
                    tie_tolerance=float(tie_tolerance))
    summary = _summary(functions, **settings) + _all_lost_note(lost, grouped)
    return Evaluation(functions=functions, summary=summary, **settings)


RERUN_LOST = ("deleting their `.attempts` and result (`.json`) files under the trainer's resume directory "
              "(its `results/` folder) runs them again")
"""How to run lost runs again (the fan-out's files of a run; the Trainer's `results/` folder)."""


def _seeds(seeds: Sequence[Any]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(str(seed) for seed in seeds)}"


def _no_baseline_message(baseline: str, present: list[str], lost: Mapping[str, list[Any]]) -> str:
    """Why there is no baseline to compare with. Runs lost to dead processes are left out, so a
    baseline that was trained can have none left: saying "train the baseline" sent the user to
    train what was trained; this names the lost runs and how to run them again."""
    if lost.get(baseline):
        seeds = lost[baseline]
        return (f"baseline {baseline!r} has no runs left: its {len(seeds)} run{'s' if len(seeds) > 1 else ''} "
                f"({_seeds(seeds)}) {'were' if len(seeds) > 1 else 'was'} lost, the training process died at "
                f"every start (out of memory or killed); {RERUN_LOST}. Functions present: {present}.")
    return (f"baseline {baseline!r} has no runs; functions present: {present}. Train the baseline with the "
            "same data, budget and seeds, or pass baseline=<name>. Runs lost to dead training processes "
            f"(out of memory, killed) are left out: if it was trained, {RERUN_LOST}.")


def _all_lost_note(lost: Mapping[str, list[Any]], grouped: Mapping[str, Any]) -> str:
    """The summary's note on functions whose runs were all lost: left out of the comparison, they
    must not vanish from it unnoticed."""
    gone = [f"{name} ({_seeds(seeds)})" for name, seeds in sorted(lost.items()) if name not in grouped]
    if not gone:
        return ""
    return (f" Not compared, every run lost (the training process died at every start: out of memory or "
            f"killed, not a property of the function): {'; '.join(gone)}; {RERUN_LOST}.")


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order.

    Sorted ascending, the i-th smallest (0-based) of m p-values becomes
    `max_{j<=i} min(1, (m - j) * p_(j))`: never below the raw value, monotone in the raw order,
    and controlling the family-wise error rate without assuming independence.
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise EvaluationError(f"holm expects a flat sequence of p-values, got shape {p.shape}")
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise EvaluationError(f"p-values must be finite numbers in [0, 1], got {list(p_values)}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return [float(v) for v in adjusted]


def write_evaluation(output_dir: str | Path, evaluation: Evaluation) -> Path:
    """Writes `evaluation.json` and an empty `BLESSED` or `NOT_BLESSED` marker file.

    Any stale marker from an earlier write to the same directory is removed, so exactly one
    marker exists afterwards. Returns the path of `evaluation.json`.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "evaluation.json"
    path.write_text(evaluation.to_json() + "\n")
    for marker in (BLESSED, NOT_BLESSED):
        (out / marker).unlink(missing_ok=True)
    (out / evaluation.verdict).touch()
    return path


# ---------------------------------------------------------------------------------------------
# Internals.


def _check_settings(threshold, alpha, min_seeds, blessing_p, tie_tolerance, chance) -> None:
    if not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
        raise EvaluationError(f"alpha must be a number strictly between 0 and 1, got {alpha!r}")
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
        # A negative bar would bless a function significantly *worse* than the baseline.
        raise EvaluationError(f"threshold must be a finite number >= 0 (the least mean gain), got {threshold!r}")
    if not (isinstance(min_seeds, int) and min_seeds >= 2):
        raise EvaluationError(f"min_seeds must be an integer >= 2 (a test needs a variance), "
                              f"got {min_seeds!r}")
    if blessing_p not in BLESSING_P_CHOICES:
        raise EvaluationError(f"blessing_p must be one of {BLESSING_P_CHOICES}, got {blessing_p!r}")
    if not (isinstance(tie_tolerance, (int, float)) and tie_tolerance >= 0):
        raise EvaluationError(f"tie_tolerance must be a number >= 0, got {tie_tolerance!r}")
    if chance is not None and not (isinstance(chance, (int, float)) and math.isfinite(chance)):
        raise EvaluationError(f"chance must be a finite number or None, got {chance!r}")


def _number(value: Any) -> float | None:
    """The value as a float, or None when it is missing or not a real number."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _group_runs(runs, metric, chance):
    """(function -> list of (metric value, seed, diverged, val_accuracy), validated; function ->
    seeds of its `lost` runs, left out)."""
    if isinstance(runs, (str, bytes)) or not isinstance(runs, Iterable):
        raise EvaluationError("runs must be a list of run records (dicts), got "
                              f"{type(runs).__name__}")
    grouped: dict[str, list[tuple[float, int, bool, float | None]]] = {}
    lost: dict[str, list[Any]] = {}
    for index, record in enumerate(runs):
        if not isinstance(record, Mapping):
            raise EvaluationError(f"run {index} is a {type(record).__name__}, expected a dict "
                                  "with keys function, seed, " + metric)
        if record.get("lost"):  # its process died, not its training: no evidence either way
            lost.setdefault(str(record.get("function", "?")), []).append(record.get("seed", "?"))
            continue
        missing = [k for k in ("function", "seed") if k not in record]
        if missing:
            raise EvaluationError(f"run {index} lacks {missing}; each run needs function, seed "
                                  f"and {metric}")
        name = record["function"]
        if not isinstance(name, str) or not name:
            raise EvaluationError(f"run {index}: function must be a non-empty string, got {name!r}")
        seed = record["seed"]
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise EvaluationError(f"run {index} ({name}): seed must be an integer, got {seed!r}")
        diverged = bool(record.get("diverged", False))
        value = _number(record.get(metric))
        if value is None:
            if not diverged:
                raise EvaluationError(
                    f"run {index} ({name}, seed {seed}): {metric} must be a finite number, got "
                    f"{record.get(metric)!r}; mark the run diverged=True if training blew up")
            value = _chance_level(record, chance)
        grouped.setdefault(name, []).append((value, int(seed), diverged,
                                             _number(record.get("val_accuracy"))))
    if not grouped:
        every = "; ".join(f"{name} ({_seeds(seeds)})" for name, seeds in sorted(lost.items()))
        raise EvaluationError("no runs to evaluate: pass at least the baseline's runs and one candidate's runs"
                              + (f"; every run was lost, the training process died at every start (out of "
                                 f"memory or killed): {every}; {RERUN_LOST}" if lost else ""))
    return grouped, lost


def _chance_level(record: Mapping[str, Any], chance: float | None) -> float:
    if chance is not None:
        return float(chance)
    classes = record.get("num_classes")
    if isinstance(classes, int) and classes > 0:
        return 1.0 / classes
    return 0.0


ACCURACY_RANGE = (0.0, 1.0)


def _spread(values: np.ndarray, bounds: tuple[float, float] | None = None) -> dict[str, float | None]:
    """Standard deviation and the 95% t-interval of the mean, cut to `bounds` (the metric's range,
    which holds the mean: the cut interval covers it as often as the whole one)."""
    n = len(values)
    if n < 2:
        return dict(std=None, ci_low=None, ci_high=None)
    std = float(values.std(ddof=1))
    half = float(_stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    mean = float(values.mean())
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return dict(std=std, ci_low=low, ci_high=high)


def _tests(values: np.ndarray, base: np.ndarray, min_seeds: int) -> dict[str, Any]:
    n, n_base = len(values), len(base)
    if n < min_seeds or n_base < min_seeds:
        note = f"too few seeds for a test (n={n} vs baseline n={n_base}; need {min_seeds} each)"
        return dict(welch_p=None, mannwhitney_p=None, p_note=note)
    if np.ptp(values) == 0 and np.ptp(base) == 0:
        note = (f"zero variance on both sides (every run scored {values[0]:.4g} vs "
                f"{base[0]:.4g}); no test possible")
        return dict(welch_p=None, mannwhitney_p=None, p_note=note)
    with warnings.catch_warnings():
        # scipy warns about precision when one side is constant; Welch is still well defined.
        warnings.simplefilter("ignore", RuntimeWarning)
        welch = float(_stats.ttest_ind(values, base, equal_var=False).pvalue)
        mwu = float(_stats.mannwhitneyu(values, base, alternative="two-sided").pvalue)
    if not (math.isfinite(welch) and math.isfinite(mwu)):
        return dict(welch_p=None, mannwhitney_p=None,
                    p_note="the test statistic is undefined for these runs; no test possible")
    # Clip to [0, 1] against floating-point drift in the exact distributions.
    return dict(welch_p=min(max(welch, 0.0), 1.0), mannwhitney_p=min(max(mwu, 0.0), 1.0),
                p_note=None)


def _win_tie_loss(values, seeds, base_by_seed, base_median, tol) -> dict[str, Any]:
    wins = ties = losses = 0
    paired = 0
    for value, seed in zip(values, seeds):
        if seed in base_by_seed:
            reference = float(np.mean(base_by_seed[seed]))
            paired += 1
        else:
            reference = base_median
        delta = float(value) - reference
        if abs(delta) <= tol:
            ties += 1
        elif delta > 0:
            wins += 1
        else:
            losses += 1
    pairing = "seed" if paired == len(values) else "median" if paired == 0 else "mixed"
    return dict(wins=wins, ties=ties, losses=losses, pairing=pairing)


def _verdict(entry: Mapping[str, Any], threshold, alpha, blessing_p) -> dict[str, str]:
    key = {"welch_holm": "welch_p_holm", "mannwhitney_holm": "mannwhitney_p_holm",
           "welch": "welch_p", "mannwhitney": "mannwhitney_p"}[blessing_p]
    p = entry[key]
    gain = entry["diff"]
    if gain <= threshold:
        reason = f"gain {percentage_points(gain)} is not above the threshold {percentage_points(threshold)}"
    elif p is None:
        reason = entry["p_note"] or "no p-value"
    elif p >= alpha:
        reason = f"{_P_LABEL[blessing_p]} p={p:.3g} is not below alpha={alpha:g}"
    else:
        return dict(verdict=BLESSED,
                    reason=f"gain {percentage_points(gain)} > {percentage_points(threshold)} and "
                           f"{_P_LABEL[blessing_p]} p={p:.3g} < {alpha:g}")
    return dict(verdict=NOT_BLESSED, reason=reason)


_P_LABEL = {"welch_holm": "Holm-corrected Welch", "mannwhitney_holm": "Holm-corrected Mann-Whitney",
            "welch": "uncorrected Welch", "mannwhitney": "uncorrected Mann-Whitney"}


def percentage_points(value: float) -> str:
    """A difference of fractions as signed percentage points; one that rounds to zero is +0.00,
    never -0.00 (a reader takes the sign for the direction of the gain)."""
    return f"{round(100 * value, 2) + 0.0:+.2f} pp"


def _percent(fraction: float) -> str:
    """A mean accuracy as the report's tables show it: percent, two decimals."""
    return f"{100 * fraction:.2f}%"


def _summary(functions: Sequence[FunctionStats], *, baseline, metric, threshold, alpha,
             blessing_p, **_) -> str:
    base = functions[0]
    candidates = list(functions[1:])
    label = _P_LABEL[blessing_p]
    if not candidates:
        return f"Only the baseline {baseline} was evaluated (n={base.n}); nothing to compare."
    blessed = [f for f in candidates if f.blessed]
    if blessed:
        best = max(blessed, key=lambda f: f.diff)
        p = _governing_p(best, blessing_p)
        others = f"; {len(blessed)} of {len(candidates)} functions were blessed" \
            if len(blessed) > 1 else f"; 1 of {len(candidates)} function{'s' if len(candidates) > 1 else ''} was blessed"
        return (f"{best.function} beat {baseline}: mean {metric} {_percent(best.mean)} vs "
                f"{_percent(base.mean)} ({percentage_points(best.diff)}, {label} p={p:.3g} < {alpha:g}, "
                f"n={best.n}, wins/ties/losses {best.win_tie_loss}){others}.")
    top = max(candidates, key=lambda f: f.diff)
    if top.diff <= 0:
        return (f"No function beat {baseline}: every candidate's mean {metric} was at or below "
                f"{baseline}'s {_percent(base.mean)} (best: {top.function}, {percentage_points(top.diff)}).")
    p = _governing_p(top, blessing_p)
    if top.diff <= threshold:
        why = f"its gain is not above the threshold {percentage_points(threshold)}"
    elif p is None:
        why = top.p_note or "no p-value"
    else:
        why = f"{label} p={p:.3g} is not below alpha={alpha:g}"
    return (f"No function beat {baseline} convincingly: the best, {top.function}, had mean "
            f"{metric} {_percent(top.mean)} vs {_percent(base.mean)} ({percentage_points(top.diff)}), but {why}.")


def _governing_p(stats: FunctionStats, blessing_p: str) -> float | None:
    return {"welch_holm": stats.welch_p_holm, "mannwhitney_holm": stats.mannwhitney_p_holm,
            "welch": stats.welch_p, "mannwhitney": stats.mannwhitney_p}[blessing_p]


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value
