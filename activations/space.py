"""Search spaces: which functions exist, how to draw one, and how to vary one.

A `SearchSpace` is an operator set plus size limits. It samples initial candidates, mutates a
candidate (change an operator, insert a node, remove a node, add or remove an edge parameter as in
`alpha*f(beta*x)`) and recombines two (subtree exchange). Every result is a valid `Expression`
inside the space's limits, and the same `random.Random` seed gives the same results.

Two spaces ship:

* ``"pangaea"``: the PANGAEA/AQuaSurF operator set; initial candidates are random
  `unary(unary(x))` and `binary(unary(x), unary(x))` functions.
* ``"swish"``: the core units `b(u1(x1), u2(x2))` of "Searching for Activation Functions",
  including the parametric unary forms (`beta*x`, `x+beta`, `beta`) and binary forms
  (`sigmoid(x1)*x2`, `exp(-beta*(x1-x2)^2)`, `exp(-beta*|x1-x2|)`, `beta*x1+(1-beta)*x2`).
  `enumerate_core_units` lists every function of one or two core units over an operator subset,
  for exhaustive search of small spaces.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import random
from typing import Callable, Iterator, Sequence

import numpy as np

from activations import operators
from activations.expression import Expression, ExpressionError, parse

PARAMETER_NAMES = ("alpha", "beta", "gamma", "delta", "kappa", "theta", "rho", "sigma_p")
MUTATIONS = ("change", "insert", "remove", "add_parameter", "remove_parameter")
_MAX_ATTEMPTS = 64

X = Expression.input()


def as_rng(seed_or_rng: int | random.Random | np.random.Generator | None) -> random.Random:
    """A `random.Random` from a seed (or the generator itself), for reproducible proposals.

    A NumPy integer is a seed too; a NumPy `Generator` seeds a new `random.Random` from one draw.
    """
    if isinstance(seed_or_rng, random.Random):
        return seed_or_rng
    if isinstance(seed_or_rng, np.random.Generator):
        return random.Random(int(seed_or_rng.integers(2**63)))
    if seed_or_rng is None or (isinstance(seed_or_rng, numbers.Integral) and not isinstance(seed_or_rng, bool)):
        return random.Random(None if seed_or_rng is None else int(seed_or_rng))
    raise ValueError(
        "rng must be None, a whole-number seed, a random.Random or a numpy.random.Generator, "
        f"got {type(seed_or_rng).__name__} {seed_or_rng!r}"
    )


def _fresh_parameter(expr: Expression) -> str | None:
    used = set(expr.parameters)
    return next((name for name in PARAMETER_NAMES if name not in used), None)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """An operator set with size limits, and the variation operators of the search.

    `unary` and `binary` name the operators mutations may use; `sampler` draws an initial
    candidate. Limits: `max_nodes`, `max_depth`, `max_parameters`.
    """

    name: str
    unary: tuple[str, ...]
    binary: tuple[str, ...]
    sampler: Callable[["SearchSpace", random.Random], Expression]
    max_nodes: int = 24
    max_depth: int = 8
    max_parameters: int = 4
    identity_insert_rate: float = 0.5

    def __post_init__(self):
        for field in ("unary", "binary"):
            names = getattr(self, field)
            if isinstance(names, str) or not all(isinstance(name, str) for name in names):
                raise ValueError(f"{field} must be a sequence of operator names, got {names!r}")
            object.__setattr__(self, field, tuple(names))
        for name in self.unary + self.binary:
            if name not in operators.REGISTRY:
                close = difflib.get_close_matches(name, list(operators.REGISTRY), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"space {self.name!r} lists unknown operator {name!r}{hint}")
            op = operators.REGISTRY[name]
            expected = 1 if name in self.unary else 2
            if op.arity != expected:
                raise ValueError(f"operator {name!r} has arity {op.arity}, listed as arity {expected}")
        if not self.useful_unary or not self.binary:
            raise ValueError(
                f"space {self.name!r} needs at least one unary operator besides zero and one and at least "
                f"one binary operator (mutations insert both), got unary={self.unary}, binary={self.binary}"
            )

    # --- membership ------------------------------------------------------------------------------

    def violation(self, expr: Expression) -> str | None:
        """None when `expr` lies inside the space's limits, otherwise what is exceeded."""
        if expr.nodes > self.max_nodes:
            return f"{expr.nodes} nodes (limit {self.max_nodes})"
        if expr.depth > self.max_depth:
            return f"depth {expr.depth} (limit {self.max_depth})"
        if len(expr.parameters) > self.max_parameters:
            return f"{len(expr.parameters)} parameters (limit {self.max_parameters})"
        if not expr.uses_input:
            return "does not use x"
        if expr.kind != "call":
            return "a bare leaf is not an activation function"
        return None

    def contains(self, expr: Expression) -> bool:
        return self.violation(expr) is None

    # --- proposals -------------------------------------------------------------------------------

    def sample(self, rng: int | random.Random | None = None) -> Expression:
        """A random initial candidate."""
        rng = as_rng(rng)
        for _ in range(_MAX_ATTEMPTS):
            candidate = self.sampler(self, rng)
            if self.contains(candidate):
                return candidate
        raise RuntimeError(f"space {self.name!r} failed to sample a function within its limits")

    def mutate(self, expr: Expression | str, rng: int | random.Random | None = None) -> Expression:
        """A mutated copy of `expr`, always different from it and inside the space."""
        return self.propose_mutation(expr, rng)[0]

    def propose_mutation(self, expr: Expression | str, rng: int | random.Random | None = None) -> tuple[Expression, str]:
        """(mutated expression, name of the mutation applied); see MUTATIONS."""
        expr, rng = parse(expr), as_rng(rng)
        for _ in range(_MAX_ATTEMPTS):
            kind = rng.choice(MUTATIONS)
            try:
                candidate = getattr(self, f"_{kind}")(expr, rng)
            except ExpressionError:  # a structural limit of Expression itself
                continue
            if candidate is not None and candidate != expr and self.contains(candidate):
                return candidate, kind
        return self.sample(rng), "resample"

    def crossover(self, a: Expression | str, b: Expression | str, rng: int | random.Random | None = None) -> Expression:
        """`a` with one of its subtrees replaced by a subtree of `b` (differs from both parents
        when possible; falls back to a mutation of `a`)."""
        a, b, rng = parse(a), parse(b), as_rng(rng)
        sites_a = [path for path, _ in a.walk()]
        donors = [node for _, node in b.walk() if node.kind == "call" or node.kind == "input"]
        for _ in range(_MAX_ATTEMPTS if donors else 0):
            try:
                child = a.replace(rng.choice(sites_a), rng.choice(donors))
            except ExpressionError:
                continue
            if child not in (a, b) and self.contains(child):
                return child
        return self.mutate(a, rng)

    # --- mutations (None when not applicable) ----------------------------------------------------

    @property
    def useful_unary(self) -> tuple[str, ...]:
        """Unary operators worth proposing; zero/one only enter through identity insertions."""
        return tuple(name for name in self.unary if name not in ("zero", "one"))

    def _random_leaf_or_unit(self, rng: random.Random) -> Expression:
        return Expression.call(rng.choice(self.useful_unary), X)

    def _change(self, expr: Expression, rng: random.Random) -> Expression | None:
        path, node = rng.choice(list(expr.walk()))
        if node.kind == "call" and node.name in self.unary:
            choices = [name for name in self.useful_unary if name != node.name]
            return expr.replace(path, Expression.call(rng.choice(choices), *node.args))
        if node.kind == "call" and node.name in self.binary:
            choices = [name for name in self.binary if name != node.name]
            return expr.replace(path, Expression.call(rng.choice(choices), *node.args))
        if node.kind in ("input", "constant"):
            return expr.replace(path, self._random_leaf_or_unit(rng))
        return None

    def _insert(self, expr: Expression, rng: random.Random) -> Expression | None:
        path, node = rng.choice(list(expr.walk()))
        if rng.random() < self.identity_insert_rate:
            # Identity-preserving: node -> b(node, e) where e is b's neutral element, so the
            # function is unchanged until a later mutation changes e.
            neutral = [name for name in self.binary if operators.REGISTRY[name].identity_arg is not None]
            if not neutral:
                return None
            name = rng.choice(neutral)
            value = operators.REGISTRY[name].identity_arg
            unit = {0.0: "zero", 1.0: "one"}[value]
            second = Expression.call(unit, X) if unit in self.unary else Expression.constant(value)
            return expr.replace(path, Expression.call(name, node, second))
        if rng.random() < 0.5:
            return expr.replace(path, Expression.call(rng.choice(self.useful_unary), node))
        other = self._random_leaf_or_unit(rng) if rng.random() < 0.7 else X
        args = (node, other) if rng.random() < 0.5 else (other, node)
        return expr.replace(path, Expression.call(rng.choice(self.binary), *args))

    def _remove(self, expr: Expression, rng: random.Random) -> Expression | None:
        calls = [(path, node) for path, node in expr.walk() if node.kind == "call"]
        if not calls:
            return None
        path, node = rng.choice(calls)
        replacement = rng.choice(node.args)
        result = expr.replace(path, replacement)
        return None if result.kind != "call" else result

    def _add_parameter(self, expr: Expression, rng: random.Random) -> Expression | None:
        name = _fresh_parameter(expr)
        if name is None or len(expr.parameters) >= self.max_parameters:
            return None
        param = Expression.parameter(name)
        sites = [(path, node) for path, node in expr.walk() if node.kind in ("call", "input")]
        if not sites:
            return None
        path, node = rng.choice(sites)
        if node.kind == "call" and operators.REGISTRY[node.name].arity == 1 and rng.random() < 0.5:
            # f(beta * u): scale the operator's input.
            return expr.replace(path, Expression.call(node.name, Expression.call("mul", param, node.args[0])))
        # alpha * f(u): scale the operator's output.
        return expr.replace(path, Expression.call("mul", param, node))

    def _remove_parameter(self, expr: Expression, rng: random.Random) -> Expression | None:
        scaled = [
            (path, node)
            for path, node in expr.walk()
            if node.kind == "call" and node.name == "mul" and any(arg.kind == "parameter" for arg in node.args)
        ]
        if not scaled:
            return None
        path, node = rng.choice(scaled)
        other = node.args[1] if node.args[0].kind == "parameter" else node.args[0]
        return expr.replace(path, other)


# --- the PANGAEA space ---------------------------------------------------------------------------

PANGAEA_UNARY = tuple(operators.names(arity=1, family="pangaea"))
PANGAEA_BINARY = ("add", "sub", "mul", "div", "pow", "max", "min")


def _sample_pangaea(space: SearchSpace, rng: random.Random) -> Expression:
    useful = space.useful_unary
    if rng.random() < 0.5:
        return Expression.call(rng.choice(useful), Expression.call(rng.choice(useful), X))
    return Expression.call(
        rng.choice(space.binary), Expression.call(rng.choice(useful), X), Expression.call(rng.choice(useful), X)
    )


# --- the Swish-paper space -----------------------------------------------------------------------

SWISH_UNARY_FORMS: dict[str, str] = {
    "x": "{}",
    "-x": "negative({})",
    "|x|": "abs({})",
    "x^2": "square({})",
    "x^3": "cube({})",
    "sqrt(x)": "sqrt({})",
    "beta*x": "mul({p},{})",
    "x+beta": "add({},{p})",
    "log(|x|+eps)": "log({})",
    "exp(x)": "exp({})",
    "sin(x)": "sin({})",
    "cos(x)": "cos({})",
    "sinh(x)": "sinh({})",
    "cosh(x)": "cosh({})",
    "tanh(x)": "tanh({})",
    "asinh(x)": "asinh({})",
    "atan(x)": "atan({})",
    "sinc(x)": "sinc({})",
    "max(x,0)": "relu({})",
    "min(x,0)": "min0({})",
    "sigmoid(x)": "sigmoid({})",
    "softplus(x)": "softplus({})",
    "exp(-x^2)": "gaussian({})",
    "erf(x)": "erf({})",
    "beta": "{p}",
}
"""The Swish paper's unary set: paper notation -> template ({} the argument, {p} a new parameter)."""

SWISH_BINARY_FORMS: dict[str, str] = {
    "x1+x2": "add({0},{1})",
    "x1*x2": "mul({0},{1})",
    "x1-x2": "sub({0},{1})",
    "x1/(x2+eps)": "div({0},{1})",
    "max(x1,x2)": "max({0},{1})",
    "min(x1,x2)": "min({0},{1})",
    "sigmoid(x1)*x2": "mul(sigmoid({0}),{1})",
    "exp(-beta*(x1-x2)^2)": "exp(negative(mul({p},square(sub({0},{1})))))",
    "exp(-beta*|x1-x2|)": "exp(negative(mul({p},abs(sub({0},{1})))))",
    "beta*x1+(1-beta)*x2": "add(mul({p},{0}),mul(sub(1,{p}),{1}))",
}
"""The Swish paper's binary set, as templates over the operator registry."""

SWISH_UNARY = tuple(operators.names(arity=1, family="swish_paper"))
SWISH_BINARY = ("add", "sub", "mul", "div", "max", "min")


class _Namer:
    """Hands out beta, beta_2, beta_3, ... so every parametric form gets its own parameter."""

    def __init__(self):
        self.count = 0

    def __call__(self) -> str:
        self.count += 1
        return "beta" if self.count == 1 else f"beta_{self.count}"


def _fill(template: str, args: Sequence[str], namer: _Namer) -> str:
    parameter = namer() if "{p}" in template else ""
    return template.replace("{p}", parameter).format(*args)


def core_unit(binary: str, unary1: str, unary2: str, x1: str = "x", x2: str = "x", namer: _Namer | None = None) -> str:
    """Text of the core unit `binary(unary1(x1), unary2(x2))`, with forms in the paper's notation."""
    namer = namer or _Namer()
    u1 = _fill(SWISH_UNARY_FORMS[unary1], [x1], namer)
    u2 = _fill(SWISH_UNARY_FORMS[unary2], [x2], namer)
    return _fill(SWISH_BINARY_FORMS[binary], [u1, u2], namer)


def stack_core_units(units: Sequence[tuple[str, str, str]]) -> Expression:
    """Core units `(binary, unary1, unary2)` applied in turn: the first reads x twice, each later
    one takes the previous unit's output as x1 and the input x as x2. That is one wiring of the
    paper's "inputs are x or outputs of earlier units": an asymmetric binary form such as
    `sigmoid(x1)*x2` is not tried the other way round. Parametric forms get parameters beta,
    beta_2, ..."""
    namer = _Namer()
    text = "x"
    for binary, unary1, unary2 in units:
        text = core_unit(binary, unary1, unary2, x1=text, namer=namer)
    return parse(text)


def _sample_swish(space: SearchSpace, rng: random.Random) -> Expression:
    unary, binary = list(SWISH_UNARY_FORMS), list(SWISH_BINARY_FORMS)
    units = [(rng.choice(binary), rng.choice(unary), rng.choice(unary))]
    if rng.random() < 0.5:  # a second core unit fed by the first and by x
        units.append((rng.choice(binary), rng.choice(unary), rng.choice(unary)))
    return stack_core_units(units)


def enumerate_core_units(
    core_units: int = 1,
    unary: Sequence[str] | None = None,
    binary: Sequence[str] | None = None,
    order_seed: int | None = None,
) -> Iterator[Expression]:
    """Every function of `core_units` (1 or 2) core units over the given forms (all when None).

    With two units the second takes the first unit's output as x1 and the input x as x2 (see
    `stack_core_units`). Without `order_seed` the order is fixed (binary form, then the unary
    forms, as listed); with one, it is a permutation of the same functions that the seed
    determines (`keyed_permutation`): a search whose budget is smaller than the space then trains
    a sample spread over every form, not the corner the fixed order starts in. Functions are not de-duplicated:
    callers filter them with `activations.fingerprint`.
    """
    unary, binary = checked_forms(core_units, unary, binary)
    radices = (len(binary), len(unary), len(unary)) * core_units
    count = math.prod(radices)
    position = (lambda index: index) if order_seed is None else keyed_permutation(count, order_seed)
    for index in range(count):
        digits, rest = [], position(index)
        for radix in reversed(radices):
            rest, digit = divmod(rest, radix)
            digits.append(digit)
        digits.reverse()
        units = [(binary[digits[i]], unary[digits[i + 1]], unary[digits[i + 2]]) for i in range(0, len(digits), 3)]
        yield stack_core_units(units)


def core_unit_count(core_units: int = 1, unary: Sequence[str] | None = None,
                    binary: Sequence[str] | None = None) -> int:
    """How many functions `enumerate_core_units` yields (before duplicates are removed)."""
    unary, binary = checked_forms(core_units, unary, binary)
    return (len(binary) * len(unary) ** 2) ** core_units


def checked_forms(core_units: int, unary: Sequence[str] | None,
                  binary: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(unary forms, binary forms): all when None; ValueError naming the allowed forms otherwise."""
    unary = list(SWISH_UNARY_FORMS if unary is None else _form_names("unary", unary))
    binary = list(SWISH_BINARY_FORMS if binary is None else _form_names("binary", binary))
    unknown = sorted(set(unary) - set(SWISH_UNARY_FORMS)) + sorted(set(binary) - set(SWISH_BINARY_FORMS))
    if unknown:
        raise ValueError(
            f"unknown core-unit forms {unknown}; allowed unary forms: {list(SWISH_UNARY_FORMS)}, "
            f"binary forms: {list(SWISH_BINARY_FORMS)}"
        )
    if isinstance(core_units, bool) or core_units not in (1, 2):
        raise ValueError(f"core_units must be 1 or 2, got {core_units!r}")
    return unary, binary


_MASK64 = (1 << 64) - 1


def keyed_permutation(count: int, seed: int) -> Callable[[int], int]:
    """A permutation of range(count) that `seed` picks, as a function: O(1) memory for the 39
    million functions of two core units.

    A four-round Feistel network over the smallest even number of bits that holds `count`, with
    cycle walking back into range (fewer than four steps on average). An affine map
    `(a i + c) mod count`, tried first, put every one of a budget's first trials in one binary
    form for about one seed in a hundred.
    """
    bits = max(2, (count - 1).bit_length())
    bits += bits % 2
    half, mask = bits // 2, (1 << (bits // 2)) - 1
    rng = random.Random(seed)
    keys = [rng.getrandbits(64) for _ in range(4)]

    def mix(value: int, key: int) -> int:  # splitmix64's finaliser
        z = (value + key + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return (z ^ (z >> 31)) & mask

    def encrypt(value: int) -> int:
        left, right = value >> half, value & mask
        for key in keys:
            left, right = right, left ^ mix(right, key)
        return (left << half) | right

    def permute(index: int) -> int:
        value = encrypt(index)
        while value >= count:
            value = encrypt(value)
        return value

    return permute


def _form_names(what: str, names: Sequence[str]) -> Sequence[str]:
    if isinstance(names, str) or not names:
        raise ValueError(f"{what} must be None (every form) or a non-empty list of form names, got {names!r}")
    return names


# --- registry ------------------------------------------------------------------------------------

_SPACES: dict[str, Callable[[], SearchSpace]] = {
    "pangaea": lambda: SearchSpace("pangaea", PANGAEA_UNARY, PANGAEA_BINARY, _sample_pangaea),
    "swish": lambda: SearchSpace(
        "swish", SWISH_UNARY, SWISH_BINARY, _sample_swish, max_nodes=40, max_depth=12, max_parameters=4
    ),
}


def get_space(space: str | SearchSpace) -> SearchSpace:
    """The named search space ("pangaea" or "swish"), or `space` itself if it is one."""
    if isinstance(space, SearchSpace):
        return space
    if not isinstance(space, str) or space not in _SPACES:
        raise ValueError(f"unknown search space {space!r}; allowed: {sorted(_SPACES)} or a SearchSpace")
    return _SPACES[space]()
