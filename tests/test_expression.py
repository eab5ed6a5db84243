"""Parsing, printing and structure of activation expressions."""

import random

import numpy as np
import scipy.special
import pytest

from activations import operators
from activations.equivalence import evaluate_numpy, fingerprint
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


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))


UNARY_REFERENCES = {
    # Independent NumPy/SciPy formulas; protected operators are compared where they are
    # documented to agree with the raw function (sqrt and log by their documented forms).
    "zero": lambda x: 0 * x, "one": lambda x: 0 * x + 1, "identity": lambda x: x, "negative": lambda x: -x,
    "abs": np.abs, "reciprocal": lambda x: 1 / x, "square": np.square, "cube": lambda x: x**3,
    "sqrt": lambda x: np.sqrt(np.maximum(x, 0) + 1e-3) - np.sqrt(1e-3), "exp": np.exp, "expm1": np.expm1,
    "log": lambda x: np.log(np.abs(x) + 1e-3), "gaussian": lambda x: np.exp(-x * x), "sin": np.sin,
    "cos": np.cos, "sinc": lambda x: np.sin(x) / x, "sinh": np.sinh, "cosh": np.cosh, "tanh": np.tanh,
    "asinh": np.arcsinh, "atan": np.arctan, "erf": scipy.special.erf, "erfc": scipy.special.erfc,
    "bessel_i0e": scipy.special.i0e, "bessel_i1e": scipy.special.i1e, "relu": lambda x: np.maximum(x, 0),
    "min0": lambda x: np.minimum(x, 0), "sigmoid": _sigmoid, "log_sigmoid": lambda x: -np.log1p(np.exp(-x)),
    "hard_sigmoid": lambda x: np.clip(x / 6 + 0.5, 0, 1), "softplus": lambda x: np.log1p(np.exp(x)),
    "softsign": lambda x: x / (1 + np.abs(x)), "elu": _elu,
    "selu": lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(np.minimum(x, 0))),
    "swish": lambda x: x * _sigmoid(x), "gelu": lambda x: 0.5 * x * (1 + scipy.special.erf(x / np.sqrt(2))),
    "mish": lambda x: x * np.tanh(np.log1p(np.exp(x))),
    "elish": lambda x: np.where(x >= 0, x, np.expm1(np.minimum(x, 0))) * _sigmoid(x),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.01 * x),
}
BINARY_REFERENCES = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
    "pow": lambda a, b: (np.abs(a) + 1e-3) ** b,  # documented: |x1|^x2 with log(|x1| + eps)
    "max": np.maximum, "min": np.minimum,
    "sum_n": np.add, "prod_n": np.multiply, "max_n": np.maximum, "min_n": np.minimum,
}


def test_every_operator_computes_its_reference_function_where_it_is_well_behaved():
    assert set(UNARY_REFERENCES) | set(BINARY_REFERENCES) == set(operators.REGISTRY)
    grid = np.linspace(-4.0, 4.0, 161)
    grid = grid[np.abs(grid) > 0.1]  # away from the singularities of 1/x, log|x|, sin(x)/x
    for name, reference in UNARY_REFERENCES.items():
        # The Bessel functions are Abramowitz & Stegun polynomial fits (relative error ~1e-7);
        # TensorFlow's exact gelu loses ~3e-7 relative in its far negative tail, and its
        # leaky_relu keeps the slope 0.01 as a float32 attribute.
        rtol = {"bessel_i0e": 2e-6, "bessel_i1e": 2e-6, "gelu": 1e-6, "leaky_relu": 1e-7}.get(name, 1e-9)
        np.testing.assert_allclose(evaluate_numpy(f"{name}(x)", grid), reference(grid), rtol=rtol, atol=1e-12,
                                   err_msg=name)
    a, b = np.meshgrid(grid, grid[::7])
    a, b = a.ravel(), b.ravel()
    for name, reference in BINARY_REFERENCES.items():
        values = operators.get_operator(name).fn(a, b)
        np.testing.assert_allclose(np.asarray(values, dtype=np.float64), reference(a, b), rtol=1e-9, err_msg=name)


def _float32_vector_form(name, x):
    from keras import ops

    fn = operators.get_operator(name).vector_fn
    return np.asarray(ops.convert_to_numpy(fn(ops.convert_to_tensor(np.float32(x)))), dtype=np.float64)


@pytest.mark.parametrize("name, reference", [("sin", np.sin), ("cos", np.cos)])
def test_vectorised_sin_and_cos_match_the_exact_functions_in_float32(name, reference):
    rng = np.random.default_rng(0)
    for limit, tolerance in [(4.0, 2e-7), (1e4, 2e-7), (1e5, 2e-6)]:
        x = np.float32(rng.uniform(-limit, limit, 20_000))
        err = np.abs(_float32_vector_form(name, x) - reference(np.float64(x)))
        assert err.max() < tolerance, (name, limit, err.max())
    # Beyond the accurate range |x| counts as SIN_COS_LIMIT: bounded and finite; exact at zero.
    huge = np.float32([1e7, -3e9, 3.4e38, -3.4e38, 0.0])
    out = _float32_vector_form(name, huge)
    limit = np.float64(operators.SIN_COS_LIMIT)
    expected = np.where(huge == 0, reference(0.0), reference(np.sign(huge) * limit))
    np.testing.assert_allclose(out, expected, atol=2e-6)


def test_vectorised_sinc_matches_sin_over_x_and_is_one_at_zero():
    x = np.float32(np.concatenate([np.linspace(-50, 50, 4001), [0.0, 1e-4, -1e-4]]))
    expected = np.where(x == 0, 1.0, np.sin(np.float64(x)) / np.where(x == 0, 1.0, np.float64(x)))
    np.testing.assert_allclose(_float32_vector_form("sinc", x), expected, atol=3e-7)


def test_vectorised_asinh_keeps_float32_relative_accuracy_near_zero_and_far_out():
    x = np.float32(np.concatenate([np.linspace(-30, 30, 6001), [1e-8, -1e-20, 1e17, 1e30, -3e38, 0.0]]))
    out, reference = _float32_vector_form("asinh", x), np.arcsinh(np.float64(x))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, reference, rtol=5e-7, atol=0)


def test_vectorised_atan_matches_the_exact_function_in_float32():
    x = np.float32(np.concatenate([np.linspace(-30, 30, 6001), [1e-8, 2.4142135, 0.41421357, 1e30, -3e38, 0.0]]))
    out, reference = _float32_vector_form("atan", x), np.arctan(np.float64(x))
    np.testing.assert_allclose(out, reference, rtol=3e-7, atol=0)


@pytest.mark.parametrize(
    "name, derivative",
    [
        ("sin", np.cos),
        ("cos", lambda x: -np.sin(x)),
        ("sinc", lambda x: np.where(x == 0, 0.0, (x * np.cos(x) - np.sin(x)) / np.where(x == 0, 1, x) ** 2)),
        ("asinh", lambda x: 1 / np.sqrt(1 + x * x)),
        ("atan", lambda x: 1 / (1 + x * x)),
    ],
)
def test_vectorised_forms_have_the_right_derivatives_including_at_zero(name, derivative):
    import tensorflow as tf

    x = np.float32(np.concatenate([np.linspace(-12, 12, 2401), [0.0, 1e-6, -1e-6, 2.4142135, 0.41421357]]))
    tensor = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(tensor)
        y = operators.get_operator(name).vector_fn(tensor)
    gradient = tape.gradient(y, tensor).numpy()
    # sin(x)/x differentiated in float32 cancels near zero (cos(x)/x - sin(x)/x^2), exact form too.
    np.testing.assert_allclose(gradient, derivative(np.float64(x)), atol=1e-5 if name == "sinc" else 2e-6, err_msg=name)


@pytest.mark.parametrize("name", ["erf", "erfc"])
def test_vectorised_erf_matches_the_exact_function_and_its_derivative(name):
    """The arithmetic form exists so models with erf convert to TensorFlow Lite (no `Erf` op there)."""
    from scipy import special

    reference = {"erf": special.erf, "erfc": lambda x: 1.0 - special.erf(x)}[name]
    x = np.float32(np.concatenate([np.linspace(-8, 8, 16001), [0.0, 1e-8, -1e-20, 3.99, 4.01, 1e6, -3e38]]))
    (_, derivative), (vector, vector_derivative) = _exact_float64_and_vector_float32(name, x)
    np.testing.assert_allclose(vector, reference(np.float64(x)), rtol=0, atol=5e-7, err_msg=name)
    if name == "erf":  # odd, and relatively accurate near zero (x P(x^2) / Q(x^2))
        small = np.abs(x) < 1e-3
        np.testing.assert_allclose(vector[small], special.erf(np.float64(x[small])), rtol=1e-6)
    np.testing.assert_allclose(vector_derivative, derivative, rtol=2e-6, atol=1e-12, err_msg=name)
    assert np.isnan(_float32_vector_form(name, np.float32([np.nan]))).all(), name


# The exponential family and the rational softsign (sin, cos, asinh and atan: tests above).
VECTOR_FORMS = [
    "exp", "expm1", "gaussian", "sinh", "cosh", "sigmoid", "log_sigmoid", "softplus", "elu", "selu", "swish",
    "mish", "elish", "softsign",
]


def _exact_float64_and_vector_float32(name, x):
    """(exact value, exact derivative) in float64 and (value, derivative) of the float32 vector form."""
    import tensorflow as tf

    op = operators.get_operator(name)
    results = []
    for fn, dtype in ((op.fn, tf.float64), (op.vector_fn, tf.float32)):
        tensor = tf.constant(x, dtype)
        with tf.GradientTape() as tape:
            tape.watch(tensor)
            y = fn(tensor)
        results.append((np.float64(y.numpy()), np.float64(tape.gradient(y, tensor).numpy())))
    return results


# The grid crosses the range reduction's steps (multiples of ln2/2), the clipping bounds (+-20 for
# exp, cosh, sinh; +-87 where 2^n leaves float32's normal range) and zero.
_EXP_GRID = np.float32(np.concatenate([
    np.linspace(-100, 100, 20001), np.arange(-30, 31) * np.log(2) / 2,
    [0.0, 1e-30, -1e-30, 1e-6, -1e-6, 1e-3, -1e-3, 20.0, -20.0, 20.01, -20.01, 87.0, -87.0, 88.5, -88.5, 3e38, -3e38],
]))


@pytest.mark.parametrize("name", VECTOR_FORMS)
def test_vector_forms_match_the_exact_operators(name):
    (exact, _), (vector, _) = _exact_float64_and_vector_float32(name, _EXP_GRID)
    assert np.all(np.isfinite(vector))
    # elu is exp(x) - 1 in both forms (absolute error of float32's 1 near zero); the vector
    # expm1 keeps expm1(-1e-30) = -1e-30, where the exact exp(x) - 1 gives 0.
    atol = 1.2e-7 if name == "elu" else 1e-29
    # exp(-x^2): float32's rounding of x^2 (relative 6e-8) grows by x^2 (up to 87) in the result.
    rtol = 6e-6 if name == "gaussian" else 5e-7
    np.testing.assert_allclose(vector, exact, rtol=rtol, atol=atol, err_msg=name)
    # NaN stays NaN (the exponent bits of 2^n are built without a float-to-int conversion).
    assert np.isnan(_float32_vector_form(name, np.float32([np.nan]))).all(), name


@pytest.mark.parametrize("name", VECTOR_FORMS)
def test_vector_forms_have_the_exact_operators_derivatives(name):
    """Including where a naive form cancels: expm1' far left, sigmoid' far out, clipping bounds."""
    (_, exact), (_, vector) = _exact_float64_and_vector_float32(name, _EXP_GRID)
    assert np.all(np.isfinite(vector))
    if name == "selu":  # TensorFlow's selu' reads the output: at x = -1e-30 that rounds to 0, the x > 0 slope
        tiny_negative = _EXP_GRID == np.float32(-1e-30)
        assert tiny_negative.sum() == 1
        np.testing.assert_allclose(vector[tiny_negative], 1.0507009873554805 * 1.6732632423543772, rtol=1e-6)
        exact[tiny_negative] = vector[tiny_negative]
    np.testing.assert_allclose(vector, exact, rtol=2e-6, atol=2e-7, err_msg=name)
    tail = (_EXP_GRID < -12) & (_EXP_GRID > -80) & (np.abs(exact) > 1e-30)
    if name in ("exp", "expm1", "sigmoid"):  # relative accuracy of e^x-sized derivatives in the tail
        np.testing.assert_allclose(vector[tail], exact[tail], rtol=1e-6, err_msg=name)


def test_fused_float32_kernels_evaluate_the_vectorised_forms():
    from keras import ops

    x = ops.convert_to_tensor(np.float32(np.linspace(-30, 30, 101)))
    exact = ops.convert_to_numpy(parse("sin(x) + cos(x)").evaluate(x))
    vectorised = ops.convert_to_numpy(parse("sin(x) + cos(x)").evaluate(x, vectorised=True))
    np.testing.assert_array_equal(
        vectorised, ops.convert_to_numpy(operators.get_operator("sin").vector_fn(x) + operators.get_operator("cos").vector_fn(x))
    )
    np.testing.assert_allclose(vectorised, exact, atol=5e-7)
    # Operators without a vectorised form evaluate the same either way.
    np.testing.assert_array_equal(
        ops.convert_to_numpy(parse("tanh(x)").evaluate(x, vectorised=True)), ops.convert_to_numpy(ops.tanh(x))
    )


@pytest.mark.parametrize(
    "name, derivative",
    [
        ("bessel_i0e", lambda x: scipy.special.i1e(x) - np.sign(x) * scipy.special.i0e(x)),
        (
            "bessel_i1e",
            lambda x: np.where(
                x == 0, 0.5,
                scipy.special.i0e(x) - np.sign(x) * scipy.special.i1e(x) - scipy.special.i1e(x) / np.where(x == 0, 1, x),
            ),
        ),
    ],
)
def test_bessel_operators_have_their_analytic_derivatives(name, derivative):
    import tensorflow as tf

    x = np.concatenate([np.linspace(-20, 20, 801), [0.0, 3.75, -3.75, 1e-6]])
    tensor = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(tensor)
        y = operators.get_operator(name).fn(tensor)
    gradient = tape.gradient(y, tensor).numpy()
    assert np.all(np.isfinite(gradient))
    np.testing.assert_allclose(gradient, derivative(x), atol=1e-6)


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
        ("(" * 70 + "x" + ")" * 70, "deeper than the limit", 2 * MAX_DEPTH + 2),  # syntax: 2 per level
        ("-" * 40 + "x", "deeper than the limit", 40 - MAX_DEPTH),  # the tree: its 33rd level
        ("max_n(" + ",".join(["x"] * 9) + ")", "takes 2 to 8 arguments", 0),
        ("RELU(x)", "did you mean relu", 0),  # suggestions ignore case
        ("2x", "unexpected 'x' after a complete expression; write '2*x' for a product", 1),
        ("0.5 (x + 1)", "write '0.5*(...)' for a product", 4),
        ("x(1)", "'x' is the input, not an operator; write 'x*(...)' for a product", 0),
        ("1 + alpha(x)", "unknown operator 'alpha'; write 'alpha*(...)' for a product with the parameter 'alpha'", 4),
        ("1.2.3", "unexpected '.3' after a complete expression; a number has at most one decimal point", 3),
        ("0x10*x", "numbers are written in decimal (no 0x, 0o or 0b literals)", 1),
        ("\uff12*x", "unexpected character", 0),  # a full-width 2: numbers are ASCII digits
        ("+".join(["x"] * 40), "deeper than the limit of 32 levels; a chain of + - * / nests one level per term", 63),  # the 32nd +
    ],
)
def test_bad_text_names_position_and_alternatives(text, fragment, position):
    with pytest.raises(ExpressionError) as info:
        parse(text)
    assert fragment in str(info.value)
    assert info.value.position == position
    assert isinstance(info.value, ValueError)


def test_the_pointer_stands_under_the_error_in_text_with_tabs_and_lines():
    with pytest.raises(ExpressionError) as info:
        parse("x +\n\tfoo(x)")
    assert info.value.position == 5
    assert str(info.value).splitlines()[1:] == ["   foo(x)", "   ^"]


@pytest.mark.parametrize(
    "text, notes",
    [
        ("x * sigmoid(beta * x)", []),
        ("X * sigmoid(X)", ["parameter 'X' is not the input, which is lower-case 'x'",
                            "it does not use the input 'x': every input gives the same output"]),
        ("x * sigmoidx", ["parameter 'sigmoidx' looks like sigmoid(x) written without parentheses"]),
        ("relu(x) + tanh_x", ["parameter 'tanh_x' looks like tanh(x) written without parentheses"]),
        ("beta * gamma", ["it does not use the input 'x': every input gives the same output"]),
        ("x * sigmoid(e * x) + pi", [
            "parameter 'e' is learnable (starting at its initial value, 1.0 unless given), not the constant 2.71828; "
            "write the number for a constant",
            "parameter 'pi' is learnable (starting at its initial value, 1.0 unless given), not the constant 3.14159; "
            "write the number for a constant"]),
        ("x * Sigmoid * x", ["parameter 'Sigmoid' looks like the operator sigmoid, whose name is lower-case"]),
        ("nan * x", ["parameter 'nan' is learnable (starting at its initial value, 1.0 unless given), not a "
                     "non-finite number; constants must be finite"]),
    ],
)
def test_likely_typos_are_named(text, notes):
    from activations.expression import suspicious_names

    assert suspicious_names(parse(text)) == notes


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


def test_unhashable_and_overflowing_input_get_the_parsers_errors():
    for bad in (["x"], {}, bytearray(b"x")):
        with pytest.raises(ExpressionError, match=f"given as text, got {type(bad).__name__}"):
            parse(bad)
    with pytest.raises(ExpressionError, match="1e400 overflows") as info:
        parse("x * 1e400")
    assert info.value.position == 4
    with pytest.raises(ExpressionError, match="1e-400 underflows a float to 0") as info:
        parse("x * 1e-400")
    assert info.value.position == 4
    assert parse("0.0e-5 * x") == parse("0 * x")  # zero written long is still zero


def _long_leaves(count):
    """A sum of `count` leaves whose canonical text is as long as leaves get."""
    leaves = [f"{'p' * 32}{i}"[-32:] if i % 2 else "-1.2345678901234567e-300" for i in range(count)]
    while len(leaves) > 1:
        leaves = [f"({a} + {b})" for a, b in zip(leaves[::2], leaves[1::2])] + ([leaves[-1]] if len(leaves) % 2 else [])
    return leaves[0]


def test_canonical_text_of_the_largest_expressions_parses_back():
    expression = parse(f"x * {_long_leaves(127)}")
    assert expression.nodes <= MAX_NODES
    for text in (str(expression), expression.infix()):
        assert len(text) <= MAX_TEXT_LENGTH and parse(text) == expression
    deep = parse("x")
    for _ in range(MAX_DEPTH - 1):
        deep = Expression.call("negative", deep)
    assert parse(deep.infix()) == deep and parse(str(deep)) == deep  # '-(...)': two levels of syntax


@pytest.mark.parametrize("exponent", [3, 7, 8, 9, 10, 101, -9])
def test_integer_powers_are_signed_and_finite_for_every_exponent(exponent):
    x = np.array([-2.0, -0.5, 0.5, 2.0, 1e5, -1e5, 3e38], np.float32)
    y = parse(f"x^{exponent}").evaluate(x).numpy()
    assert np.all(np.isfinite(y))
    small = np.abs(x) <= 2
    np.testing.assert_allclose(y[small], np.power(x[small].astype(np.float64), exponent), rtol=1e-5)
    assert np.all(np.sign(y[small]) == np.sign(x[small]) ** (exponent % 2))
    np.testing.assert_allclose(evaluate_numpy(f"x^{exponent}", np.array([-2.0])), [(-2.0) ** exponent], rtol=1e-6)


@pytest.mark.parametrize("written", ["x^(1+2)", "x^(6/2)", "x^(2*2-1)", "pow(x,--3)"])
def test_an_integer_exponent_written_as_arithmetic_is_the_same_signed_power(written):
    x = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    np.testing.assert_allclose(evaluate_numpy(written, x), x**3, rtol=1e-12)
    assert fingerprint(written) == fingerprint("x^3")
    np.testing.assert_allclose(evaluate_numpy("x^-(1)", x[[0, 1, 3, 4]]), 1 / x[[0, 1, 3, 4]])
    # Not an integer, or not a constant: the general |x|^p.
    assert np.all(evaluate_numpy("x^(1/2)", x) >= 0)
    assert np.all(evaluate_numpy("x^(alpha+2)", x, {"alpha": 1.0}) >= 0)


def test_parse_never_executes_code():
    with pytest.raises(ExpressionError):
        parse("__import__('os').system('true')")
    with pytest.raises(ExpressionError):
        parse("x.real")
