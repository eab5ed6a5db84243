"""CoreUnitController: valid core units, learning from rewards, exact JSON state, clear errors."""

import json
import random

import pytest

from activations.controller import CoreUnitController
from activations.space import SWISH_UNARY_FORMS, enumerate_core_units


def test_samples_are_core_units_of_the_swish_space_and_reproducible():
    controller = CoreUnitController()
    one_unit = set(enumerate_core_units(1))
    operators = set().union(*(expr.operators for expr in one_unit))
    rng = random.Random(0)
    draws = [controller.sample(rng) for _ in range(300)]
    assert draws == [controller.sample(r) for r in [random.Random(0)] for _ in range(300)]
    counts = {1: 0, 2: 0}
    for tokens in draws:
        expr = controller.expression(tokens)
        assert expr.operators <= operators
        counts[tokens[0] + 1] += 1
        assert len(tokens) == 1 + 3 * (tokens[0] + 1)
        if tokens[0] == 0:
            assert expr in one_unit
    assert min(counts.values()) > 100  # both depths, about evenly, before any learning


def test_token_order_is_binary_then_two_unary_forms_per_unit():
    controller = CoreUnitController(unary=["x", "tanh(x)", "beta*x"], binary=["x1+x2", "x1*x2"])
    assert str(controller.expression([0, 1, 1, 0])) == "mul(tanh(x),x)"
    assert controller.expression([1, 0, 2, 1, 1, 1, 2]).infix() == "tanh(beta * x + tanh(x)) * (beta_2 * x)"


def test_rewarded_tokens_become_likely_and_punished_ones_rare():
    controller = CoreUnitController(max_units=1)
    rng = random.Random(1)
    tanh = list(SWISH_UNARY_FORMS).index("tanh(x)")
    for _ in range(300):
        tokens = controller.sample(rng)
        controller.update(tokens, 1.0 if tanh in tokens[2:] else 0.0)
    # From 1/25 each before learning.
    assert controller.probabilities(2)[tanh] > 0.5 and controller.probabilities(3)[tanh] > 0.5


def test_the_scale_of_the_reward_does_not_change_what_is_learned():
    runs = []
    for scale, offset in ((1.0, 0.0), (1e-3, 0.9), (50.0, -7.0)):  # accuracies, small gaps, negated losses
        controller = CoreUnitController(max_units=1)
        rng = random.Random(2)
        for _ in range(100):
            tokens = controller.sample(rng)
            controller.update(tokens, offset + scale * (tokens[1] == 0))
        runs.append([round(p, 6) for p in controller.probabilities(1)])
    assert runs[0] == runs[1] == runs[2]
    assert runs[0][0] > 0.3  # the rewarded binary form (10 choices: 0.1 before learning)


def test_json_state_continues_exactly():
    controller = CoreUnitController(unary=["x", "sin(x)", "exp(x)"], binary=["x1+x2", "max(x1,x2)"])
    rng = random.Random(3)
    for step in range(20):
        tokens = controller.sample(rng)
        controller.update(tokens, float(step % 3))
    state = json.loads(json.dumps(controller.to_json(), allow_nan=False))
    copy = CoreUnitController.from_json(state)
    rng_a, rng_b = random.Random(4), random.Random(4)
    for step in range(10):
        a, b = controller.sample(rng_a), copy.sample(rng_b)
        assert a == b
        controller.update(a, float(step))
        copy.update(b, float(step))
    assert copy.to_json() == controller.to_json()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: CoreUnitController(unary=["x", "cot(x)"]), r"unknown core-unit forms \['cot\(x\)'\]"),
        (lambda: CoreUnitController(max_units=3), "max_units must be 1 or 2"),
        (lambda: CoreUnitController(learning_rate=0), "learning_rate > 0"),
        (lambda: CoreUnitController(max_units=1).expression([1, 0, 0, 0, 0, 0, 0]), "is not a token sequence"),
        (lambda: CoreUnitController().expression([0, 0, 0]), "is not a token sequence"),
        (lambda: CoreUnitController().update([0, 99, 0, 0], 1.0), "is not a token sequence"),
        (lambda: CoreUnitController().update([0, 0, 0, 0], float("nan")), "reward must be finite"),
    ],
)
def test_bad_input_raises_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_certainty_is_zero_for_a_uniform_policy_and_grows_as_it_learns():
    controller = CoreUnitController(["x", "tanh(x)", "sigmoid(x)"], ["x1+x2", "x1*x2"], max_units=2)
    assert controller.certainty() == pytest.approx(0.0, abs=1e-12)
    rng, favourite = random.Random(0), None
    for step in range(200):
        tokens = controller.sample(rng)
        favourite = favourite or tokens
        controller.update(tokens, 1.0 if tokens == favourite else 0.0)
    assert 0.0 < controller.certainty() < 1.0
