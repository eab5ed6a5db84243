"""`simplify`: the same function, written without dead terms and no-op operators.

Evolution writes known functions in roundabout ways. The search of the CIFAR-10 run found Mish as
`mish(x - beta * zero(x))`, with a parameter that can never change anything; mutations leave
`identity(...)`, `... * one(x)` and `sum_n(..., zero(x))` behind. Training does not mind, but the
function a user takes home should be the short form, without the dead parameters: it reads
better, trains the same and costs less.

`simplify` rewrites bottom-up with rules that are exact identities of the protected operators for
finite inputs (`zero(e) -> 0`, `e - 0 -> e`, `0 * e -> 0`, `e * 1 -> e`, `max(e, e) -> e`,
`-(-e) -> e`, `relu(relu(e)) -> relu(e)`, `e + e -> 2 * e`, `3 * e - e -> 2 * e`, ...), folds
subtrees without `x` or parameters into constants, and opens nested sums and products to fold
their constants (`x * 2 * 3 -> 6 * x`, `x + 0.1 + 0.2 -> x + 0.3`). No rewrite makes the tree
larger, and passes repeat until nothing changes. Parameters are never renamed, so learned
values keep their names. As a guard, the result is compared with the original on the probe points
at several parameter settings; a rewrite that changed the function (none should) leaves the
expression as it was.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence, Union

import numpy as np

from activations.expression import Expression, format_number, initial_values, parse
from activations.operators import MAX_VARIADIC

_SUMS = ("add", "sum_n")
_PRODUCTS = ("mul", "prod_n")
_EXTREMES = ("max", "min", "max_n", "min_n")
_IDEMPOTENT = ("abs", "relu", "min0")
_MAX_FOLDED_DIGITS = 8
_MAX_PASSES = 4
_CHECK_SEED = 0
_CHECK_SETTINGS = 3
"""Random parameter settings the guard tries, besides the initial values."""
_ONE = Expression.constant(1.0)


def simplify(expression: Union[str, Expression]) -> Expression:
    """The simplest form the rules reach; `expression` itself when no rule applies.

    The result computes the same function for every value of the parameters it keeps, and its
    parameters are a subset of the original's (those whose value could never matter are gone).
    """
    original = parse(expression)
    simplified = _simplify(original)
    for _ in range(_MAX_PASSES - 1):          # a rewrite can leave work for another pass
        again = _simplify(simplified)
        if again == simplified:
            break
        simplified = again
    if simplified == original or not _same_function(original, simplified):
        return original
    return simplified


def _simplify(node: Expression) -> Expression:
    if node.kind != "call":
        return node
    return _rewrite(node.name, [_simplify(arg) for arg in node.args])


def _rewrite(name: str, args: list[Expression]) -> Expression:
    """One call whose arguments are already simplified, rewritten unless that makes it longer
    (`sum_n(e, e, f, f)` stays: `sum_n(2 * e, 2 * f)` has more nodes)."""
    call = Expression.call(name, *args)
    rewritten = _rewrite_call(name, args)
    return rewritten if rewritten.nodes <= call.nodes else call


def _rewrite_call(name: str, args: list[Expression]) -> Expression:
    if name == "zero":
        return Expression.constant(0.0)
    if name == "one":
        return Expression.constant(1.0)
    if name == "identity":
        return args[0]
    if all(arg.kind == "constant" for arg in args):
        return _fold(name, args)
    first = args[0]
    if name == "negative" and _is_call(first, "negative"):
        return first.args[0]
    if name in _IDEMPOTENT and _is_call(first, name):
        return first
    if name == "abs" and _is_call(first, "negative"):
        return Expression.call("abs", first.args[0])
    if name == "negative" and first.kind == "call":
        coefficient, base = _coefficient(first)
        if coefficient != 1.0:                 # -(2 * e) is -2 * e
            return _scaled(-coefficient, base) or Expression.call(name, first)
    opened = _opened_sum(name, args) if name in _SUMS + ("sub",) else None
    opened = opened or (_opened_product(name, args) if name in _PRODUCTS else None)
    if opened is not None:
        return opened
    if name in _SUMS:
        terms = _collect_terms(args)
        return _combine(name, [arg for arg in terms if not _is_constant(arg, 0.0)], neutral=0.0)
    if name in _PRODUCTS:
        if any(_is_constant(arg, 0.0) for arg in args):
            return Expression.constant(0.0)
        kept = [arg for arg in args if not _is_constant(arg, 1.0)]
        others = [arg for arg in kept if not _is_constant(arg, -1.0)]
        if len(kept) == 2 and len(others) == 1:
            return _negative(others[0])
        return _combine(name, kept, neutral=1.0)
    if name == "sub":
        left, right = args
        if _is_constant(right, 0.0):
            return left
        if left == right:
            return Expression.constant(0.0)
        if _is_constant(left, 0.0):
            return _negative(right)
        (a, base), (b, other) = _coefficient(left), _coefficient(right)
        if base == other:
            return _scaled(a - b, base) or Expression.call(name, *args)
    if name == "div":
        if _is_constant(args[1], 1.0):
            return first
        if _is_constant(first, 0.0):
            return Expression.constant(0.0)
    if name in _EXTREMES:
        return _combine(name, list(dict.fromkeys(args)), neutral=None)
    return Expression.call(name, *args)


def _collect_terms(terms: Sequence[Expression]) -> list[Expression]:
    """The terms of a sum with repeated ones gathered, in order of first appearance: `e + e` is
    `2 * e`, `3 * e + negative(e)` is `2 * e`, `e + negative(e)` is `0`. Only constant
    coefficients are gathered: `alpha * e + beta * e` keeps both parameters (dropping either
    would change the function at the initial values)."""
    groups: dict[Expression, list[tuple[float, Expression]]] = {}
    for term in terms:
        coefficient, base = _coefficient(term)
        groups.setdefault(base, []).append((coefficient, term))
    if len(groups) == len(terms):
        return list(terms)
    gathered = []
    for base, members in groups.items():
        term = members[0][1] if len(members) == 1 else _scaled(_tidy(sum(c for c, _ in members)), base)
        if term is None:                       # the sum is too long to write: keep the terms
            return list(terms)
        gathered.append(term)
    return gathered


def _opened_sum(name: str, args: Sequence[Expression]) -> Expression | None:
    """A sum with its nested sums and differences opened and its terms gathered
    (`x + 0.1 + 0.2` is `x + 0.3`, `(x + tanh(x)) - x` is `tanh(x)`); None when no argument is a
    sum or opening gathers nothing."""
    if not any(_is_sum(arg) or (_is_call(arg, "negative") and _is_sum(arg.args[0])) for arg in args):
        return None
    terms = _flat_terms(name, args)
    gathered = [term for term in _collect_terms(terms) if not _is_constant(term, 0.0)]
    if len(gathered) >= len(terms):
        return None
    return _rebuilt("sum_n" if name == "sum_n" else "add", gathered, neutral=0.0)


def _flat_terms(name: str, args: Sequence[Expression], negated: bool = False) -> list[Expression]:
    signs = [negated, not negated] if name == "sub" else [negated] * len(args)
    terms = []
    for arg, sign in zip(args, signs):
        if _is_call(arg, "negative") and _is_sum(arg.args[0]):
            arg, sign = arg.args[0], not sign
        if _is_sum(arg):
            terms.extend(_flat_terms(arg.name, arg.args, sign))
        else:
            terms.append(_negated(arg) if sign else arg)
    return terms


def _negated(term: Expression) -> Expression:
    if term.kind == "constant":
        return Expression.constant(-term.value)
    if _is_call(term, "negative"):
        return term.args[0]
    coefficient, base = _coefficient(term)
    return (coefficient != 1.0 and _scaled(-coefficient, base)) or Expression.call("negative", term)


def _opened_product(name: str, args: Sequence[Expression]) -> Expression | None:
    """A product with its nested products opened and their constants multiplied
    (`x * 2 * 3` is `6 * x`); None when no argument is a product or fewer than two constants
    meet, or their product is long to write."""
    if not any(_is_product(arg) for arg in args):
        return None
    factors = _flat_factors(args)
    constants = [factor.value for factor in factors if factor.kind == "constant"]
    value = _tidy(math.prod(constants))
    if len(constants) < 2 or not np.isfinite(value) or len(format_number(value)) > _MAX_FOLDED_DIGITS:
        return None
    others = [factor for factor in factors if factor.kind != "constant"]
    if value == 0.0 or not others:             # 0 * e is 0: the protected operators are finite
        return Expression.constant(value)
    product = _rebuilt(name, others, neutral=1.0)
    return _scaled(value, product)


def _flat_factors(args: Sequence[Expression]) -> list[Expression]:
    factors = []
    for arg in args:
        factors.extend(_flat_factors(arg.args) if _is_product(arg) else [arg])
    return factors


def _rebuilt(name: str, args: Sequence[Expression], neutral: float) -> Expression:
    """`name` over `args`: one n-ary call while the operator takes that many, else binary calls
    nested from the left."""
    if len(args) < 2 or (name in ("sum_n", "prod_n") and len(args) <= MAX_VARIADIC):
        return _combine(name, args, neutral)
    if name not in _SUMS:
        return functools.reduce(lambda left, right: Expression.call("mul", left, right), args)
    result = args[0]
    for term in args[1:]:                      # x + 0.5 + -relu(x) is x + 0.5 - relu(x)
        negated = _negated(term)
        if negated.nodes < term.nodes or (term.kind == "constant" and term.value < 0):
            result = Expression.call("sub", result, negated)
        else:
            result = Expression.call("add", result, term)
    return result


def _tidy(value: float) -> float:
    """`value` to 12 significant digits: 0.1 + 0.2 is 0.3, not 0.30000000000000004 (too long to
    write, which would leave the terms as they were)."""
    return float(f"{value:.12g}")


def _negative(node: Expression) -> Expression:
    return node.args[0] if _is_call(node, "negative") else Expression.call("negative", node)


def _is_sum(node: Expression) -> bool:
    return node.kind == "call" and node.name in _SUMS + ("sub",)


def _is_product(node: Expression) -> bool:
    return node.kind == "call" and node.name in _PRODUCTS


def _coefficient(term: Expression) -> tuple[float, Expression]:
    """(c, e) for a term `c * e`, `e * c` or `-e` (c = -1), (c, 1) for a constant c, else
    (1, term)."""
    if term.kind == "constant":
        return term.value, _ONE
    if _is_call(term, "negative"):
        return -1.0, term.args[0]
    if _is_call(term, "mul"):
        left, right = term.args
        if left.kind == "constant" and right.kind != "constant":
            return left.value, right
        if right.kind == "constant" and left.kind != "constant":
            return right.value, left
    return 1.0, term


def _scaled(coefficient: float, base: Expression) -> Expression | None:
    """`coefficient * base` in its simplest form; None when the coefficient is long to write or
    overflowed (`1e308 * x + 1e308 * x`)."""
    if not np.isfinite(coefficient) or len(format_number(coefficient)) > _MAX_FOLDED_DIGITS:
        return None
    if coefficient == 0.0 or base == _ONE:
        return Expression.constant(coefficient)
    if coefficient == 1.0:
        return base
    if coefficient == -1.0:
        return _negative(base)
    return Expression.call("mul", Expression.constant(coefficient), base)


def _combine(name: str, args: Sequence[Expression], neutral: float | None) -> Expression:
    """`name` applied to what is left of its arguments: the neutral constant when nothing is, the
    argument itself when one is (a binary operator keeps its two arguments otherwise)."""
    if not args:
        return Expression.constant(neutral)
    if len(args) == 1:
        return args[0]
    return Expression.call(name, *args)


def _fold(name: str, args: Sequence[Expression]) -> Expression:
    """A call on constants as one constant (computed in float64, as the fingerprint is) when the
    constant is short to write: `sigmoid(0)` becomes 0.5, `exp(1)` stays as it is."""
    from activations.equivalence import evaluate_numpy

    call = Expression.call(name, *args)
    with np.errstate(all="ignore"):
        value = float(evaluate_numpy(call, np.zeros(1))[0])
    if not np.isfinite(value) or len(format_number(value)) > _MAX_FOLDED_DIGITS:
        return call
    return Expression.constant(value)


def _is_constant(node: Expression, value: float) -> bool:
    return node.kind == "constant" and node.value == value


def _is_call(node: Expression, name: str) -> bool:
    return node.kind == "call" and node.name == name


def _same_function(original: Expression, simplified: Expression) -> bool:
    """Equal outputs on the probe points at the initial parameters and at random settings."""
    from activations.equivalence import evaluate_numpy, probe_points

    if not set(simplified.parameters) <= set(original.parameters):
        return False
    rng = np.random.default_rng(_CHECK_SEED)
    settings = [initial_values(original)] + [
        dict(zip(original.parameters, rng.uniform(-3.0, 3.0, len(original.parameters))))
        for _ in range(_CHECK_SETTINGS if original.parameters else 0)
    ]
    x = probe_points()
    with np.errstate(all="ignore"):
        for params in settings:
            before = evaluate_numpy(original, x, params)
            after = evaluate_numpy(simplified, x, {k: params[k] for k in simplified.parameters})
            if not np.allclose(before, after, rtol=1e-6, atol=1e-9, equal_nan=True):
                return False
    return True
