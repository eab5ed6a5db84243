"""Parsing, printing and structure of activation expressions."""

import random

import numpy as np
import pytest

from activations import operators
from activations.equivalence import evaluate_numpy
from activations.expression import MAX_DEPTH, MAX_NODES, MAX_TEXT_LENGTH, Expression, ExpressionError, parse
from activations.space import get_space


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("max(relu(x),cosh(elu(x)))", "max(relu(x),cosh(elu(x)))"),
        ("x * sigmoid(beta * x)", "mul(x,sigmoid(mul(beta,x)))"),
        ("-x", "negative(x)"),
        ("x^2", "pow(x,2)"),
        ("x**2", "pow(x,2)"),
        ("2*x + 0.5", "add(mul(2,x),0.5)"),
        ("x - -1", "sub(x,-1)"),
        ("-2^x", "negative(pow(2,x))"),
        ("a - b - c + x", "add(sub(sub(a,b),c),x)"),
        ("x^y^2", "pow(x,pow(y,2))"),
        ("silu(x)", "swish(x)"),
        ("  sum_n( x , relu(x), sin(x) ) ", "sum_n(x,relu(x),sin(x))"),
        ("1e-3 * x", "mul(0.001,x)"),
    ],
)
def test_parse_prints_canonical_functional_form(text, canonical):
    expr = parse(text)
    assert str(expr) == canonical
    assert parse(canonical) == expr


def test_infix_forms_read_back_to_the_same_expression():
    for text in ["x * sigmoid(beta * x)", "-(2)", "(-2)^x", "x - (a + b)", "-x * y", "x / (a * x)", "(-x)^2"]:
        expr = parse(text)
        assert parse(expr.infix()) == expr, text


def test_round_trip_over_many_sampled_expressions():
    rng = random.Random(7)
    for name in ("pangaea", "swish"):
        space = get_space(name)
        population = [space.sample(rng) for _ in range(10)]
        for _ in range(150):
            expr = space.mutate(rng.choice(population), rng)
            population.append(expr)
            assert parse(str(expr)) == expr
            assert parse(expr.infix()) == expr
            assert hash(parse(str(expr))) == hash(expr)


def test_structure_properties():
    expr = parse("alpha * max(relu(x), cosh(elu(beta * x)))")
    assert expr.nodes == 10
    assert expr.depth == 6
    assert expr.operators == {"mul", "max", "relu", "cosh", "elu"}
    assert expr.parameters == ("alpha", "beta")
    assert expr.uses_input
    assert not parse("alpha + 1").uses_input


def test_expressions_are_immutable_and_hashable():
    expr = parse("relu(x)")
    with pytest.raises(Exception):
        expr.name = "elu"
    assert len({parse("relu(x)"), parse("relu( x )"), parse("elu(x)")}) == 2


def test_replace_builds_a_new_tree():
    expr = parse("add(relu(x),sin(x))")
    replaced = expr.replace((1,), parse("cos(x)"))
    assert str(replaced) == "add(relu(x),cos(x))"
    assert str(expr) == "add(relu(x),sin(x))"


def test_evaluate_matches_numpy_formulas():
    x = np.linspace(-4, 4, 101)
    np.testing.assert_allclose(evaluate_numpy("x * sigmoid(beta * x)", x, {"beta": 2.0}), x / (1 + np.exp(-2 * x)), rtol=1e-9)
    np.testing.assert_allclose(evaluate_numpy("x^3", x), x**3, rtol=1e-12)
    np.testing.assert_allclose(evaluate_numpy("max(relu(x),cosh(elu(x)))", x), np.maximum(np.maximum(x, 0), np.cosh(np.where(x > 0, x, np.expm1(x)))), rtol=1e-9)
    np.testing.assert_allclose(evaluate_numpy("pow(x,-1)", np.array([2.0, -4.0])), [0.5, -0.25])


def test_every_operator_is_finite_on_finite_inputs():
    x = np.array([-1e4, -30.0, -5.0, -1.0, -1e-9, 0.0, 1e-9, 1.0, 5.0, 30.0, 1e4])
    for name, op in operators.REGISTRY.items():
        args = "x" if op.arity == 1 else "x,x"
        with np.errstate(all="ignore"):
            out = evaluate_numpy(f"{name}({args})", x)
        assert np.all(np.isfinite(out)), f"{name} gave {out}"


def test_operator_registry_covers_both_papers():
    swish_unary = set(operators.names(arity=1, family="swish_paper"))
    assert {"sqrt", "log", "sinc", "erf", "min0", "gaussian", "cube", "asinh"} <= swish_unary
    pangaea_unary = set(operators.names(arity=1, family="pangaea"))
    assert {"bessel_i0e", "bessel_i1e", "log_sigmoid", "hard_sigmoid", "erfc", "selu", "mish", "gelu"} <= pangaea_unary
    assert set(operators.names(arity=operators.VARIADIC)) == {"sum_n", "prod_n", "max_n", "min_n"}


@pytest.mark.parametrize(
    "text, fragment, position",
    [
        ("rleu(x)", "did you mean relu", 0),
        ("x + sigmod(x)", "did you mean sigmoid", 4),
        ("x+", "found the end of the text", 2),
        ("relu", "must be called with arguments", 0),
        ("add(x)", "takes 2 arguments, got 1", 0),
        ("x $ 2", "unexpected character '$'", 2),
        ("sin(x", "expected ')'", 5),
        ("x relu(x)", "unexpected 'relu'", 2),
        ("(" * 40 + "x" + ")" * 40, "deeper than the limit", MAX_DEPTH),
        ("max_n(" + ",".join(["x"] * 9) + ")", "takes 2 to 8 arguments", 0),
    ],
)
def test_bad_text_names_position_and_alternatives(text, fragment, position):
    with pytest.raises(ExpressionError) as info:
        parse(text)
    assert fragment in str(info.value)
    assert info.value.position == position
    assert isinstance(info.value, ValueError)


def test_limits_on_length_nodes_and_type():
    with pytest.raises(ExpressionError, match="characters"):
        parse("x+" * (MAX_TEXT_LENGTH // 2) + "x")
    def balanced(depth):
        return "x" if depth == 0 else f"({balanced(depth - 1)}+{balanced(depth - 1)})"

    assert parse(balanced(7)).nodes == 255 <= MAX_NODES  # the largest balanced tree allowed
    with pytest.raises(ExpressionError, match=f"limit of {MAX_NODES} nodes"):
        parse(balanced(8))  # 511 nodes, only 9 levels deep
    with pytest.raises(ExpressionError, match="empty"):
        parse("   ")
    with pytest.raises(ExpressionError, match="text"):
        parse(42)
    with pytest.raises(ExpressionError, match="reserved"):
        Expression.parameter("relu")
    with pytest.raises(ExpressionError, match="finite"):
        Expression.constant(float("nan"))


def test_parse_never_executes_code():
    with pytest.raises(ExpressionError):
        parse("__import__('os').system('true')")
    with pytest.raises(ExpressionError):
        parse("x.real")
