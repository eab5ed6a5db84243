"""Early stopping of hopeless search trials: a quantile rule over earlier trials' learning curves.

A search over functions proposes many that cannot learn (a near-constant output, a gradient that
vanishes almost everywhere) or learn far worse than the rest; each still costs a full trial. After
each epoch, `QuantileStopping` compares a trial's best objective so far with the same statistic
of the trials that finished before it, at the same epoch, and stops the trial when it is worse
than their `quantile` (0.25: three quarters of the earlier trials had done better by then). It is
the median stopping rule of Google Vizier (Golovin et al., 2017) with a lower quantile: a search's
short trials rank functions by how fast they start learning, so only the clearly worse are cut.

The rule looks only at finished trials' curves, so it is deterministic for a given order of
results (a resumed search makes the same decisions), and it needs no model of the curves.
A stopped trial keeps its best value so far as its fitness; it is below most of the population,
so evolution rarely picks it as a parent, and it ages out.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

Curve = Sequence[float | None]
"""A trial's objective after each epoch (None: not a finite number, e.g. a diverged run)."""


@dataclasses.dataclass(frozen=True)
class QuantileStopping:
    """Stop a trial whose best objective after epoch e is worse than the `quantile` of the
    earlier trials' best objectives after epoch e.

    Args:
        quantile: in (0, 1); 0.5 is the median stopping rule. Lower stops fewer trials.
        grace_epochs: epochs every trial runs before the rule applies (at least 1).
        min_trials: earlier trials that must have reached an epoch before it has a threshold.
    """

    quantile: float = 0.25
    grace_epochs: int = 1
    min_trials: int = 5

    def __post_init__(self):
        if isinstance(self.quantile, bool) or not isinstance(self.quantile, (int, float)) \
                or not 0.0 < self.quantile < 1.0:
            raise ValueError(f"quantile must lie in (0, 1), got {self.quantile!r}")
        for name, minimum in (("grace_epochs", 1), ("min_trials", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")

    def thresholds(self, curves: Sequence[Curve], direction: str = "max",
                   stopped: Sequence[bool] = ()) -> list[float | None]:
        """Per epoch index i (after epoch i + 1): the value a trial's best so far must reach, or
        None where the rule does not apply (grace epochs, or too few earlier trials got there).

        `stopped[k]` marks curve k as cut short by this rule: its best so far carries forward to
        the later epochs, so that stopping the worst trials does not raise the bar for the next
        ones (only the survivors would reach the later epochs otherwise). A run without any
        finite value counts as the worst, so a diverged run lowers the bar rather than being
        ignored.
        """
        _check_direction(direction)
        bests = [_running_best(curve, direction) for curve in curves]
        length = max((len(best) for best in bests), default=0)
        for k, was_stopped in enumerate(stopped):
            if was_stopped and bests[k]:
                bests[k] = bests[k] + [bests[k][-1]] * (length - len(bests[k]))
        out: list[float | None] = []
        for i in range(length):
            reached = [best[i] for best in bests if len(best) > i]
            if i + 1 < self.grace_epochs or len(reached) < self.min_trials:
                out.append(None)
                continue
            worst = -math.inf if direction == "max" else math.inf
            values = np.array([worst if v is None else v for v in reached], dtype=float)
            q = self.quantile if direction == "max" else 1.0 - self.quantile
            value = _quantile(values, q)
            out.append(value if math.isfinite(value) else None)
        return out

    def should_stop(self, curve: Curve, thresholds: Sequence[float | None], direction: str = "max") -> bool:
        """Whether a trial with `curve` so far (one value per finished epoch) should stop now."""
        _check_direction(direction)
        if not curve:
            return False
        return is_below(best_so_far(curve, direction), _at(thresholds, len(curve) - 1), direction)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> "QuantileStopping":
        return cls(**dict(data))


def is_below(best: float | None, threshold: float | None, direction: str = "max") -> bool:
    """Whether a best-so-far value misses a threshold (None: no threshold, never stop)."""
    if threshold is None:
        return False
    if best is None:  # not a finite number: worse than any threshold
        return True
    return best < threshold if direction == "max" else best > threshold


def best_so_far(curve: Curve, direction: str = "max") -> float | None:
    """The best finite value of `curve` (None when it has none)."""
    return _running_best(curve, direction)[-1] if curve else None


def _at(values: Sequence[float | None], index: int) -> float | None:
    return values[index] if 0 <= index < len(values) else None


def _running_best(curve: Curve, direction: str) -> list[float | None]:
    better = max if direction == "max" else min
    out, best = [], None
    for value in curve:
        if value is not None and math.isfinite(value):
            best = value if best is None else better(best, value)
        out.append(best)
    return out


def _quantile(values: np.ndarray, q: float) -> float:
    """numpy's linear quantile, except that a position landing exactly on a value returns it even
    when its neighbour is infinite (numpy computes `v + (inf - v) * 0`, which is NaN): a
    diverged run at the bottom of the ranking must not switch the rule off for everyone."""
    ordered = np.sort(values)
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    fraction = position - low
    if fraction == 0.0 or ordered[low] == ordered[high]:
        return float(ordered[low])
    if not (math.isfinite(ordered[low]) and math.isfinite(ordered[high])):
        return math.inf                        # between a value and a diverged run: undefined
    return float(ordered[low] + (ordered[high] - ordered[low]) * fraction)


def _check_direction(direction: str) -> None:
    if direction not in ("max", "min"):
        raise ValueError(f"direction must be 'max' or 'min', got {direction!r}")
