"""Search spaces: sampling, mutation and crossover stay valid and reproducible."""

import collections
import random

import pytest

from activations.expression import parse
from activations.space import MUTATIONS, enumerate_core_units, get_space


@pytest.mark.parametrize("name", ["pangaea", "swish"])
def test_mutation_and_crossover_results_are_valid_over_many_seeds(name):
    space = get_space(name)
    kinds = collections.Counter()
    for seed in range(40):
        rng = random.Random(seed)
        a, b = space.sample(rng), space.sample(rng)
        for _ in range(5):
            child, kind = space.propose_mutation(a, rng)
            kinds[kind] += 1
            assert child != a
            assert space.contains(child), space.violation(child)
            assert parse(str(child)) == child
            crossed = space.crossover(a, b, rng)
            assert space.contains(crossed), space.violation(crossed)
            a = child
    assert set(MUTATIONS) <= set(kinds), kinds


@pytest.mark.parametrize("name", ["pangaea", "swish"])
def test_proposals_are_reproducible_for_a_seed(name):
    space = get_space(name)

    def run(seed):
        rng = random.Random(seed)
        expr = space.sample(rng)
        out = [expr]
        for _ in range(20):
            expr = space.mutate(expr, rng)
            out.append(space.crossover(expr, out[0], rng))
        return [str(e) for e in out]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_pangaea_initial_population_has_the_published_shapes():
    space = get_space("pangaea")
    rng = random.Random(0)
    for _ in range(50):
        expr = space.sample(rng)
        assert expr.kind == "call"
        if expr.name in space.binary:
            assert all(arg.kind == "call" and arg.args == (parse("x"),) for arg in expr.args)
        else:
            assert expr.args[0].kind == "call" and expr.args[0].args == (parse("x"),)


def test_identity_preserving_insertion_keeps_the_function():
    from activations.equivalence import fingerprint

    space = get_space("pangaea")
    expr = parse("tanh(x)")
    found = 0
    for seed in range(200):
        rng = random.Random(seed)
        child = space._insert(expr, rng)
        if child is not None and child.operators & {"zero", "one"}:
            found += 1
            assert fingerprint(child) == fingerprint(expr), str(child)
    assert found > 10


def test_parameter_mutations_add_and_remove_edge_parameters():
    space = get_space("pangaea")
    rng = random.Random(1)
    expr = parse("tanh(x)")
    with_param = space._add_parameter(expr, rng)
    assert len(with_param.parameters) == 1
    assert space._remove_parameter(with_param, rng) == expr


def test_swish_space_core_units_and_enumeration():
    functions = list(enumerate_core_units(1, ["x", "sigmoid(x)", "beta*x"], ["x1*x2", "max(x1,x2)"]))
    assert len(functions) == 2 * 3 * 3
    assert parse("mul(x,sigmoid(x))") in functions
    assert parse("mul(x,mul(beta,x))") in functions
    two = list(enumerate_core_units(2, ["x", "tanh(x)"], ["x1+x2"]))
    assert len(two) == (1 * 2 * 2) ** 2
    assert len(set(two)) == len(two)
    with pytest.raises(ValueError, match="unknown core-unit forms"):
        list(enumerate_core_units(1, ["cosine"]))
    with pytest.raises(ValueError, match="core_units"):
        list(enumerate_core_units(3))


def test_a_seeded_enumeration_is_a_permutation_of_the_fixed_one():
    from activations.space import core_unit_count

    unary, binary = ["x", "tanh(x)", "sigmoid(x)"], ["x1+x2", "x1*x2"]
    for units in (1, 2):
        fixed = [str(e) for e in enumerate_core_units(units, unary, binary)]
        shuffled = [str(e) for e in enumerate_core_units(units, unary, binary, order_seed=5)]
        assert len(fixed) == core_unit_count(units, unary, binary) == (2 * 3 * 3) ** units
        assert sorted(shuffled) == sorted(fixed) and shuffled != fixed
        assert shuffled == [str(e) for e in enumerate_core_units(units, unary, binary, order_seed=5)]
    # A budget's first trials spread over the forms for every seed (an affine order, tried first,
    # put all 24 in one binary form for about one seed in a hundred).
    for seed in range(200):
        first = [str(e) for _, e in zip(range(24), enumerate_core_units(1, order_seed=seed))]
        assert len({text.split("(", 1)[0] for text in first}) >= 4, seed
    assert core_unit_count(2) == (10 * 25 * 25) ** 2


def test_unknown_space_is_a_clear_error():
    with pytest.raises(ValueError, match="allowed"):
        get_space("nasnet")
    with pytest.raises(ValueError, match=r"unknown search space \[\]; allowed"):
        get_space([])


@pytest.mark.parametrize("unary, binary, message", [
    (("relux",), ("add",), "space 'custom' lists unknown operator 'relux'; did you mean relu"),
    ("relu", ("add",), "unary must be a sequence of operator names, got 'relu'"),
    (("relu",), (), "needs at least one unary operator besides zero and one and at least one binary"),
    (("zero", "one"), ("add",), "needs at least one unary operator besides zero and one"),
    (("add",), ("add",), "operator 'add' has arity 2, listed as arity 1"),
])
def test_a_bad_custom_space_is_refused_when_defined(unary, binary, message):
    from activations.space import SearchSpace

    with pytest.raises(ValueError, match=message):
        SearchSpace("custom", unary, binary, sampler=None)


def test_leaves_mutate_and_cross_into_the_space():
    space = get_space("pangaea")
    for leaf in ("2", "beta"):
        for seed in range(20):
            assert space.contains(space.mutate(leaf, seed))
            assert space.contains(space.crossover("relu(x)", leaf, seed))
            assert space.contains(space.crossover(leaf, "tanh(x)", seed))


def test_numpy_seeds_and_generators_are_accepted_and_reproducible():
    import numpy as np

    space = get_space("pangaea")
    assert space.sample(np.int64(5)) == space.sample(5)
    assert space.sample(np.random.default_rng(1)) == space.sample(np.random.default_rng(1))
    for bad in (1.5, "seed", True):
        with pytest.raises(ValueError, match="rng must be None, a whole-number seed, a random.Random"):
            space.sample(bad)


def test_core_unit_forms_must_be_a_non_empty_list():
    with pytest.raises(ValueError, match=r"unary must be None \(every form\) or a non-empty list"):
        list(enumerate_core_units(1, [], None))
    with pytest.raises(ValueError, match="binary must be None"):
        list(enumerate_core_units(1, None, "x1+x2"))
    assert len(list(enumerate_core_units(1, ["x"], ["x1*x2"]))) == 1


def test_violation_names_the_limit():
    space = get_space("pangaea")
    assert "nodes" in space.violation(parse("+".join(["relu(x)"] * 20)))
    assert "does not use x" in space.violation(parse("tanh(alpha)"))
    assert space.violation(parse("tanh(x)")) is None
