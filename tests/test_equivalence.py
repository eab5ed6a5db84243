"""Fingerprints identify equal functions; `check` rejects functions not worth training."""

import numpy as np
import pytest

from activations.equivalence import NUM_PROBES, check, fingerprint, probe_points


def test_probe_points_are_fixed_clipped_normals():
    points = probe_points()
    assert points.shape == (NUM_PROBES,)
    assert points.min() >= -5 and points.max() <= 5
    np.testing.assert_array_equal(points, probe_points())
    assert abs(points.mean()) < 0.1 and 0.9 < points.std() < 1.1


@pytest.mark.parametrize(
    "a, b",
    [
        ("add(x,relu(x))", "add(relu(x),x)"),
        ("swish(x)", "x * sigmoid(x)"),
        ("max(x, 0)", "relu(x)"),
        ("x - x + tanh(x)", "tanh(x)"),
        ("mul(x, 2)", "x + x"),
        ("alpha * x + relu(beta * x)", "relu(beta * x) + x * alpha"),
    ],
)
def test_equivalent_functions_share_a_fingerprint(a, b):
    assert fingerprint(a) == fingerprint(b)


@pytest.mark.parametrize(
    "a, b",
    [
        ("relu(x)", "elu(x)"),
        ("x * sigmoid(beta * x)", "swish(x)"),  # learnable Swish is a different hypothesis
        ("tanh(x)", "tanh(x) + 0.001"),
    ],
)
def test_different_functions_differ(a, b):
    assert fingerprint(a) != fingerprint(b)


def test_fingerprint_is_stable_text():
    value = fingerprint("max(relu(x),cosh(elu(x)))")
    assert len(value) == 16 and int(value, 16) >= 0
    assert fingerprint("max(relu(x),cosh(elu(x)))") == value


@pytest.mark.parametrize("text", ["relu(x)", "x * sigmoid(beta * x)", "max(relu(x),cosh(elu(x)))", "gelu(x)", "sin(x) * x",
                                  "max(x, alpha * x)"])  # the identity at alpha = 1, a leaky ReLU once trained
def test_good_functions_pass(text):
    assert check(text) is None


@pytest.mark.parametrize("text, initial", [("tanh(alpha * x)", 0.0), ("(alpha - 1) * swish(x)", None),
                                           ("relu(alpha * x - 2.5)", None)])
def test_a_function_degenerate_only_at_its_starting_parameters_passes(text, initial):
    # Training moves the parameters: constant, or flat almost everywhere, at the start only.
    assert check(text, initial=initial) is None
    assert check(text.replace("alpha", "1") if initial is None else text.replace("alpha", "0")) is not None


@pytest.mark.parametrize(
    "text, reason",
    [
        ("zero(x)", "constant output"),
        ("relu(min0(x))", "constant output"),
        ("alpha + 1", "does not depend on x"),
        ("exp(exp(exp(x)))", "outputs reach"),
        ("relu(x - 2.5)", "zero gradient"),
        ("x", "affine in x"),
        ("3 * x + 1", "affine in x"),
        ("x / 0", "affine in x"),  # the protected division: x / eps
        ("alpha * x + beta * one(x)", "affine in x"),  # for any parameter values
    ],
)
def test_bad_functions_are_rejected_with_a_reason(text, reason):
    assert reason in check(text)


def test_non_finite_outputs_and_gradients_are_caught(monkeypatch):
    # Every registry operator is protected, so plant unprotected ones to exercise the checks.
    import dataclasses

    from keras import ops

    from activations import operators

    raw_log = dataclasses.replace(operators.REGISTRY["log"], fn=lambda x: ops.log(x))
    raw_sqrt = dataclasses.replace(operators.REGISTRY["sqrt"], fn=lambda x: ops.sqrt(ops.abs(x)))
    monkeypatch.setitem(operators.REGISTRY, "log", raw_log)
    monkeypatch.setitem(operators.REGISTRY, "sqrt", raw_sqrt)
    assert "non-finite outputs" in check("log(x)")  # log of negative probes is NaN
    assert "non-finite gradients" in check("sqrt(x - x) + x")  # d/dx sqrt(|0|) is inf


def test_parameters_that_change_nothing_do_not_split_a_fingerprint():
    from activations.named import known_equivalent

    assert fingerprint("mish(x - beta * zero(x))") == fingerprint("mish(x)")
    assert fingerprint("x * sigmoid(beta * x)") != fingerprint("swish(x)")  # beta matters
    assert known_equivalent("mish(x - beta * zero(x))") == "mish"
    assert known_equivalent("max(x, 0) + 0 * x") == "relu"
    assert known_equivalent("gelu(mish(x))") is None
