"""The Swish paper's search strategy: a controller that learns which core units to propose.

"Searching for Activation Functions" trained a controller with reinforcement learning to emit the
tokens of one or two core units `binary(unary1(x1), unary2(x2))` (the second unit takes the
first one's output and x), rewarded by the child network's validation accuracy.
`CoreUnitController` keeps that loop: it samples a token sequence (how many units, then binary,
unary, unary per unit), and every result nudges the probabilities of the tokens it used by
REINFORCE, against an exponential-moving-average baseline of the rewards.

Decisions:

* A factorised policy (one categorical distribution per token position) instead of the paper's
  RNN. The sequences have at most seven tokens, and a search here runs tens to a few hundred
  trials, not the paper's 10,000: a few hundred logits learn from that many rewards (see
  bench/search_efficiency.py), while an RNN would have many more weights to fit from them.
* Advantages are divided by a running mean absolute deviation of the rewards and clipped to
  +-3, so one learning rate suits accuracies, losses and any other objective, and a single
  outlier cannot collapse the policy.
* The state is plain JSON (`to_json` / `from_json`), saved and resumed with the oracle's.
"""

from __future__ import annotations

import math
import random
from typing import Any, Mapping, Sequence

from activations import space as space_module
from activations.expression import Expression

ADVANTAGE_CLIP = 3.0


class CoreUnitController:
    """A policy over core-unit token sequences, trained with REINFORCE.

    Args:
        unary, binary: the allowed forms, in the paper's notation (`space.SWISH_UNARY_FORMS`,
            `space.SWISH_BINARY_FORMS`); default all of them.
        max_units: 1 or 2 core units at most.
        learning_rate: step size on the logits per (scaled) unit of advantage.
        baseline_decay: weight of the past in the reward baseline and deviation.
    """

    def __init__(self, unary: Sequence[str] | None = None, binary: Sequence[str] | None = None,
                 max_units: int = 2, learning_rate: float = 0.3, baseline_decay: float = 0.9):
        self.unary = tuple(unary or space_module.SWISH_UNARY_FORMS)
        self.binary = tuple(binary or space_module.SWISH_BINARY_FORMS)
        unknown = [f for f in self.unary if f not in space_module.SWISH_UNARY_FORMS] + [
            f for f in self.binary if f not in space_module.SWISH_BINARY_FORMS]
        if unknown:
            raise ValueError(f"unknown core-unit forms {unknown}; allowed unary forms: "
                             f"{list(space_module.SWISH_UNARY_FORMS)}, binary forms: {list(space_module.SWISH_BINARY_FORMS)}")
        if max_units not in (1, 2):
            raise ValueError(f"max_units must be 1 or 2, got {max_units!r}")
        if not learning_rate > 0 or not 0 <= baseline_decay < 1:
            raise ValueError(f"need learning_rate > 0 and 0 <= baseline_decay < 1, got {learning_rate}, {baseline_decay}")
        self.max_units = max_units
        self.learning_rate = float(learning_rate)
        self.baseline_decay = float(baseline_decay)
        # Position 0: number of units; then (binary, unary, unary) per unit.
        sizes = [max_units] + [len(self.binary), len(self.unary), len(self.unary)] * max_units
        self.logits: list[list[float]] = [[0.0] * size for size in sizes]
        self.baseline: float | None = None
        self.deviation = 0.0
        self.updates = 0

    # --- the policy ------------------------------------------------------------------------------

    def probabilities(self, position: int) -> list[float]:
        logits = self.logits[position]
        top = max(logits)
        weights = [math.exp(v - top) for v in logits]
        total = sum(weights)
        return [w / total for w in weights]

    def certainty(self) -> float:
        """1 minus the policy's entropy relative to a uniform choice, averaged over the positions:
        0 while it samples uniformly, 1 once every choice is made for certain (what to watch to see
        the controller learn)."""
        values = []
        for position, logits in enumerate(self.logits):
            if len(logits) > 1:
                entropy = -sum(p * math.log(p) for p in self.probabilities(position) if p > 0)
                values.append(1.0 - entropy / math.log(len(logits)))
        return float(sum(values) / len(values)) if values else 1.0

    def sample(self, rng: random.Random) -> list[int]:
        """A token sequence: [units - 1, binary, unary, unary(, binary, unary, unary)]."""
        tokens = [self._draw(0, rng)]
        for position in range(1, 1 + 3 * (tokens[0] + 1)):
            tokens.append(self._draw(position, rng))
        return tokens

    def _draw(self, position: int, rng: random.Random) -> int:
        u, cumulative = rng.random(), 0.0
        probabilities = self.probabilities(position)
        for index, p in enumerate(probabilities):
            cumulative += p
            if u < cumulative:
                return index
        return len(probabilities) - 1

    def expression(self, tokens: Sequence[int]) -> Expression:
        """The function a token sequence describes (parameters named beta, beta_2, ...)."""
        self._check_tokens(tokens)
        units = [tokens[1 + 3 * unit: 4 + 3 * unit] for unit in range(tokens[0] + 1)]
        return space_module.stack_core_units([(self.binary[b], self.unary[u1], self.unary[u2]) for b, u1, u2 in units])

    def _check_tokens(self, tokens: Sequence[int]) -> None:
        if not tokens or not 0 <= tokens[0] < self.max_units or len(tokens) != 1 + 3 * (tokens[0] + 1) or any(
                not 0 <= t < len(self.logits[i]) for i, t in enumerate(tokens)):
            raise ValueError(f"{list(tokens)} is not a token sequence of this controller")

    # --- learning --------------------------------------------------------------------------------

    def update(self, tokens: Sequence[int], reward: float) -> None:
        """One REINFORCE step for a sequence that earned `reward` (larger is better)."""
        self._check_tokens(tokens)
        if not math.isfinite(reward):
            raise ValueError(f"reward must be finite, got {reward}")
        if self.baseline is None:
            self.baseline = float(reward)
        advantage = reward - self.baseline
        scale = self.deviation if self.deviation > 0 else abs(advantage)
        scaled = 0.0 if scale == 0 else max(-ADVANTAGE_CLIP, min(ADVANTAGE_CLIP, advantage / scale))
        for position, chosen in enumerate(tokens):
            probabilities = self.probabilities(position)
            logits = self.logits[position]
            for index, p in enumerate(probabilities):
                logits[index] += self.learning_rate * scaled * ((index == chosen) - p)
        decay = self.baseline_decay
        self.deviation = decay * self.deviation + (1 - decay) * abs(advantage) if self.deviation else abs(advantage)
        self.baseline = decay * self.baseline + (1 - decay) * reward
        self.updates += 1

    # --- state -----------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {"unary": list(self.unary), "binary": list(self.binary), "max_units": self.max_units,
                "learning_rate": self.learning_rate, "baseline_decay": self.baseline_decay,
                "logits": [list(row) for row in self.logits], "baseline": self.baseline,
                "deviation": self.deviation, "updates": self.updates}

    @classmethod
    def from_json(cls, state: Mapping[str, Any]) -> "CoreUnitController":
        controller = cls(state["unary"], state["binary"], state["max_units"], state["learning_rate"],
                         state["baseline_decay"])
        if [len(row) for row in state["logits"]] != [len(row) for row in controller.logits]:
            raise ValueError("the saved controller's logits do not match its forms")
        controller.logits = [[float(v) for v in row] for row in state["logits"]]
        controller.baseline = state["baseline"]
        controller.deviation = float(state["deviation"])
        controller.updates = int(state["updates"])
        return controller
