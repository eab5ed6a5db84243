"""Activation functions as immutable expression trees, and the parser that builds them.

An expression is a tree whose leaves are the input `x`, learnable parameters (any other
identifier, e.g. `alpha`, `beta`) and numeric constants, and whose inner nodes call operators from
`activations.operators`. Two notations are accepted:

* the functional form used by the PANGAEA line of work: `max(relu(x),cosh(elu(x)))`
* ordinary infix arithmetic: `x * sigmoid(beta * x)`, `-x`, `x^2` (or `x**2`), `0.5*x + 1`

`str(expr)` prints one canonical functional form, and `parse(str(e)) == e` always holds, so the
canonical string is the genome that travels between processes. Parsing is a hand-written
recursive descent parser: user text is never evaluated as code.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import numbers
import re
from typing import Iterator, Mapping, Union

from activations import operators

MAX_NODES = 256
MAX_DEPTH = 32
MAX_NAME_LENGTH = 32
MAX_TEXT_LENGTH = 16_000
"""Longer text is refused before parsing. Generous on purpose: the canonical text of any
expression within MAX_NODES (32-character names, 24-character numbers) stays below it, so
`parse(str(e))` never meets this limit."""
_MAX_NESTING = 2 * MAX_DEPTH + 2
"""Syntactic nesting the parser follows (a tree level can cost two: `-(...)`); the tree's own
depth is checked against MAX_DEPTH when it is built."""
INPUT_NAME = "x"
DEFAULT_INITIAL = 1.0
"""Value a learnable parameter starts from unless told otherwise."""

Initial = Union[None, float, Mapping[str, float]]

_INFIX_TO_OPERATOR = {"+": "add", "-": "sub", "*": "mul", "/": "div", "^": "pow"}


class ExpressionError(ValueError):
    """Text that is not a valid activation expression; names the position and what is allowed."""

    def __init__(self, message: str, text: str | None = None, position: int | None = None):
        self.message = message
        self.text = text
        self.position = position
        if text is not None and position is not None:
            line_start = text.rfind("\n", 0, position) + 1
            line_end = text.find("\n", position)
            line = text[line_start:len(text) if line_end < 0 else line_end]
            # Tabs and other spaces shown as one space each, so the pointer stays under its character.
            shown = "".join(" " if char.isspace() else char for char in line)
            message = f"at position {position}: {message}\n  {shown}\n  {' ' * (position - line_start)}^"
        super().__init__(message)


@dataclasses.dataclass(frozen=True)
class Expression:
    """One node of an activation-function tree; immutable, hashable, compared by structure.

    `kind` is "input", "parameter", "constant" or "call". Build nodes with the class methods
    (`input`, `parameter`, `constant`, `call`) or with `parse`; they validate their arguments.
    """

    kind: str
    name: str = ""
    value: float = 0.0
    args: tuple["Expression", ...] = ()

    # --- construction ----------------------------------------------------------------------------

    @classmethod
    def input(cls) -> "Expression":
        return cls("input", INPUT_NAME)

    @classmethod
    def parameter(cls, name: str) -> "Expression":
        _check_parameter_name(name)
        return cls("parameter", name)

    @classmethod
    def constant(cls, value: float) -> "Expression":
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ExpressionError(f"constants must be finite, got {value}")
        return cls("constant", value=value + 0.0)  # + 0.0 folds -0.0 into 0.0

    @classmethod
    def call(cls, operator: str, *args: "Expression") -> "Expression":
        try:
            op = operators.get_operator(operator)
        except KeyError:
            raise ExpressionError(_unknown_operator_message(operator)) from None
        if not operators.accepts(op, len(args)):
            raise ExpressionError(f"operator '{op.name}' {_arity_text(op)}, got {len(args)}")
        node = cls("call", op.name, args=tuple(args))
        if node.depth > MAX_DEPTH:
            raise ExpressionError(f"expression is deeper than the limit of {MAX_DEPTH} levels")
        if node.nodes > MAX_NODES:
            raise ExpressionError(f"expression has more than the limit of {MAX_NODES} nodes")
        return node

    # --- structure -------------------------------------------------------------------------------

    @functools.cached_property
    def nodes(self) -> int:
        """Number of nodes in the tree (leaves included)."""
        return 1 + sum(arg.nodes for arg in self.args)

    @functools.cached_property
    def depth(self) -> int:
        """Levels in the tree; a leaf has depth 1."""
        return 1 + max((arg.depth for arg in self.args), default=0)

    @functools.cached_property
    def operators(self) -> frozenset[str]:
        """Names of the operators the expression calls."""
        own = {self.name} if self.kind == "call" else set()
        return frozenset(own.union(*(arg.operators for arg in self.args)))

    @functools.cached_property
    def parameters(self) -> tuple[str, ...]:
        """Learnable parameter names, in order of first appearance (pre-order)."""
        seen: dict[str, None] = {}
        for _, node in self.walk():
            if node.kind == "parameter":
                seen.setdefault(node.name, None)
        return tuple(seen)

    @property
    def uses_input(self) -> bool:
        return any(node.kind == "input" for _, node in self.walk())

    def walk(self, path: tuple[int, ...] = ()) -> Iterator[tuple[tuple[int, ...], "Expression"]]:
        """Every (path, node) pair in pre-order; a path is the child indices from the root."""
        yield path, self
        for i, arg in enumerate(self.args):
            yield from arg.walk(path + (i,))

    def at(self, path: tuple[int, ...]) -> "Expression":
        node = self
        for i in path:
            node = node.args[i]
        return node

    def replace(self, path: tuple[int, ...], new: "Expression") -> "Expression":
        """A copy with the subtree at `path` replaced by `new` (limits re-checked)."""
        if not path:
            return new
        head, rest = path[0], path[1:]
        args = list(self.args)
        args[head] = args[head].replace(rest, new)
        return Expression.call(self.name, *args)

    # --- text ------------------------------------------------------------------------------------

    @functools.cached_property
    def _canonical(self) -> str:
        if self.kind == "call":
            return f"{self.name}({','.join(str(arg) for arg in self.args)})"
        if self.kind == "constant":
            return format_number(self.value)
        return self.name

    def __str__(self) -> str:
        return self._canonical

    def __repr__(self) -> str:
        return f"Expression({self._canonical!r})"

    def infix(self) -> str:
        """A human-readable form with infix arithmetic; `parse(e.infix()) == e` holds as well."""
        return _infix(self, 0)

    # --- evaluation ------------------------------------------------------------------------------

    def evaluate(self, x, params: Mapping[str, object] | None = None, *, vectorised: bool = False):
        """The function applied elementwise to tensor `x` (keras.ops; any backend).

        `params` maps each parameter name to a value that broadcasts against `x` (a scalar or a
        per-channel vector). The result may be a scalar when the expression ignores `x`.
        `vectorised=True` uses each operator's arithmetic-only float32 form where it has one
        (`Operator.vector_fn`), for compiled float32 kernels.
        """
        from keras import ops

        params = params or {}
        missing = [name for name in self.parameters if name not in params]
        if missing:
            raise ValueError(f"no value given for parameter(s) {missing} of {self}")
        x = ops.convert_to_tensor(x)
        return _evaluate(self, x, params, vectorised)


def _evaluate(node: Expression, x, params, vectorised: bool = False):
    if node.kind == "input":
        return x
    if node.kind == "parameter":
        return params[node.name]
    if node.kind == "constant":
        from keras import ops

        # A tensor of x's dtype: operators applied to constants must not fall back to float32.
        return ops.convert_to_tensor(node.value, dtype=x.dtype)
    exponent = _constant_value(node.args[1]) if node.name == "pow" else None
    if exponent is not None and exponent.is_integer():
        return _integer_power(_evaluate(node.args[0], x, params, vectorised), exponent)
    op = operators.REGISTRY[node.name]
    fn = op.vector_fn if vectorised and op.vector_fn is not None else op.fn
    return fn(*(_evaluate(arg, x, params, vectorised) for arg in node.args))


_FOLDABLE = {"negative": lambda a: -a, "add": lambda a, b: a + b, "sub": lambda a, b: a - b,
             "mul": lambda a, b: a * b, "div": lambda a, b: a / b if b else None}


def _constant_value(node: Expression) -> float | None:
    """The value of a constant written as arithmetic (`3`, `-(1)`, `1+2`, `6/2`), else None: an
    exponent means the same power however it is written."""
    if node.kind == "constant":
        return node.value
    if node.kind != "call" or node.name not in _FOLDABLE:
        return None
    values = [_constant_value(arg) for arg in node.args]
    if any(value is None for value in values):
        return None
    value = _FOLDABLE[node.name](*values)
    return float(value) if value is not None and math.isfinite(value) else None


INTEGER_POWER_MAX = 1e36
"""|x^n| for a constant integer n stays below this (the base is clipped), so float32 stays finite."""


def _integer_power(base, exponent: float):
    """x ** n for a constant integer n: the true (signed) power, with the input bounded.

    `pow` is |x1|^x2 in general (the only real-valued power of a negative base), but `x^3` and
    `x^9` written with an integer constant mean the signed polynomial. The base is clipped to
    GROWTH_MAX and to INTEGER_POWER_MAX^(1/|n|), so no finite input overflows.
    """
    from keras import ops

    if exponent == 0:
        return ops.ones_like(base)
    magnitude = abs(exponent)
    bound = min(operators.GROWTH_MAX, INTEGER_POWER_MAX ** (1.0 / magnitude))
    clipped = ops.clip(base, -bound, bound)
    result = clipped ** magnitude if magnitude != 1 else clipped
    return result if exponent > 0 else operators.REGISTRY["reciprocal"].fn(result)


def format_number(value: float) -> str:
    """Shortest text that parses back to exactly `value` (`2` rather than `2.0`)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


# --- infix printing ------------------------------------------------------------------------------

_PRECEDENCE = {"add": 1, "sub": 1, "mul": 2, "div": 2, "negative": 3, "pow": 4}
_SYMBOL = {"add": " + ", "sub": " - ", "mul": " * ", "div": " / ", "pow": "^"}


def _infix(node: Expression, parent_precedence: int) -> str:
    if node.kind == "constant":
        text = format_number(node.value)
        return f"({text})" if node.value < 0 and parent_precedence > 0 else text
    if node.kind != "call":
        return node.name
    if node.name == "negative":
        operand = _infix(node.args[0], _PRECEDENCE["negative"] + 1)
        if node.args[0].kind == "constant" and not operand.startswith("("):
            operand = f"({operand})"  # "-2" would read back as the constant -2
        text = "-" + operand
        return f"({text})" if parent_precedence > _PRECEDENCE["negative"] else text
    if node.name in _SYMBOL:
        precedence = _PRECEDENCE[node.name]
        if node.name == "pow":  # right-associative
            left, right = precedence + 1, precedence
        else:  # left-associative
            left, right = precedence, precedence + 1
        text = _infix(node.args[0], left) + _SYMBOL[node.name] + _infix(node.args[1], right)
        return f"({text})" if parent_precedence > precedence else text
    return f"{node.name}({', '.join(_infix(arg, 0) for arg in node.args)})"


# --- parsing -------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<number>(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<symbol>\*\*|[-+*/^(),]))"
)


@dataclasses.dataclass(frozen=True)
class _Token:
    kind: str  # "number", "name", "symbol", "end"
    text: str
    position: int


def _tokenize(text: str) -> list[_Token]:
    tokens, position = [], 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if not match:
            start = len(text[position:]) - len(text[position:].lstrip()) + position
            raise ExpressionError(
                f"unexpected character {text[start]!r}; allowed are names, numbers, "
                "+ - * / ^ ** ( ) and commas",
                text,
                start,
            )
        kind = match.lastgroup
        tokens.append(_Token(kind, match.group(kind), match.start(kind)))
        position = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


class _Parser:
    """Recursive descent over: sum := product (('+'|'-') product)*;
    product := unary (('*'|'/') unary)*; unary := '-' unary | power;
    power := atom (('^'|'**') unary)?; atom := number | name | name '(' args ')' | '(' sum ')'."""

    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0
        self.level = 0

    def error(self, message: str, token: _Token | None = None) -> ExpressionError:
        token = token or self.peek()
        return ExpressionError(message, self.text, token.position)

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def take(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def expect(self, symbol: str) -> _Token:
        token = self.peek()
        if token.text != symbol or token.kind != "symbol":
            found = "the end of the text" if token.kind == "end" else repr(token.text)
            raise self.error(f"expected {symbol!r} but found {found}")
        return self.take()

    def build(self, token: _Token, operator: str, *args: Expression) -> Expression:
        try:
            return Expression.call(operator, *args)
        except ExpressionError as error:
            hint = ""
            if "deeper than" in error.message and token.text in _INFIX_TO_OPERATOR:
                hint = ("; a chain of + - * / nests one level per term: group terms in parentheses, "
                        "e.g. (a + b) + (c + d)")
            raise self.error(error.message + hint, token) from None

    def nest(self, token: _Token) -> None:
        self.level += 1
        if self.level > _MAX_NESTING:
            raise self.error(f"expression is nested deeper than the limit of {MAX_DEPTH} levels", token)

    def parse(self) -> Expression:
        if not self.text.strip():
            raise ExpressionError("empty expression; write a function of x, e.g. 'x * sigmoid(x)'")
        expression = self.sum()
        token = self.peek()
        if token.kind != "end":
            before = self.tokens[self.index - 1]
            hint = ""
            if before.kind == token.kind == "number":
                hint = "; a number has at most one decimal point and one exponent"
            elif before.text == "0" and re.fullmatch(r"[xXoObB][0-9A-Fa-f]+", token.text):
                hint = "; numbers are written in decimal (no 0x, 0o or 0b literals)"
            elif before.kind in ("number", "name") and (token.kind in ("name", "number") or token.text == "("):
                factor = "(...)" if token.text == "(" else token.text
                hint = f"; write '{before.text}*{factor}' for a product"
            raise self.error(f"unexpected {token.text!r} after a complete expression{hint}")
        return expression

    def sum(self) -> Expression:
        left = self.product()
        while self.peek().kind == "symbol" and self.peek().text in "+-":
            token = self.take()
            left = self.build(token, _INFIX_TO_OPERATOR[token.text], left, self.product())
        return left

    def product(self) -> Expression:
        left = self.unary()
        while self.peek().kind == "symbol" and self.peek().text in ("*", "/"):
            token = self.take()
            left = self.build(token, _INFIX_TO_OPERATOR[token.text], left, self.unary())
        return left

    def unary(self) -> Expression:
        token = self.peek()
        if token.kind == "symbol" and token.text == "-":
            self.take()
            self.nest(token)
            following = self.peek()
            after = self.tokens[self.index + 1] if following.kind == "number" else following
            if following.kind == "number" and not (after.kind == "symbol" and after.text in ("^", "**")):
                self.take()
                self.level -= 1
                return self.number(following, sign=-1.0)
            operand = self.unary()
            self.level -= 1
            return self.build(token, "negative", operand)
        if token.kind == "symbol" and token.text == "+":
            self.take()
            return self.unary()
        return self.power()

    def power(self) -> Expression:
        base = self.atom()
        token = self.peek()
        if token.kind == "symbol" and token.text in ("^", "**"):
            self.take()
            self.nest(token)
            exponent = self.unary()
            self.level -= 1
            return self.build(token, "pow", base, exponent)
        return base

    def atom(self) -> Expression:
        token = self.take()
        if token.kind == "number":
            return self.number(token)
        if token.kind == "symbol" and token.text == "(":
            self.nest(token)
            inner = self.sum()
            self.expect(")")
            self.level -= 1
            return inner
        if token.kind == "name":
            return self.name(token)
        found = "the end of the text" if token.kind == "end" else repr(token.text)
        raise self.error(f"expected x, a parameter, a number, an operator call or '(' but found {found}", token)

    def number(self, token: _Token, sign: float = 1.0) -> Expression:
        try:
            value = sign * float(token.text)
            if value == 0.0 and re.search(r"[1-9]", token.text.lower().split("e")[0]):
                raise self.error(f"number {token.text} underflows a float to 0; write 0 if 0 is meant", token)
            return Expression.constant(value)
        except ExpressionError as error:
            if "underflows" in str(error):
                raise
            raise self.error(f"number {token.text} overflows a float; constants must be finite", token) from None

    def name(self, token: _Token) -> Expression:
        is_call = self.peek().kind == "symbol" and self.peek().text == "("
        known = token.text in operators.REGISTRY or token.text in operators.ALIASES
        if is_call:
            if not known:
                if token.text == INPUT_NAME:
                    message = f"{INPUT_NAME!r} is the input, not an operator; write '{INPUT_NAME}*(...)' for a product"
                else:
                    message = _unknown_operator_message(token.text, called=True)
                raise self.error(message, token)
            self.take()
            self.nest(token)
            args = [self.sum()]
            while self.peek().kind == "symbol" and self.peek().text == ",":
                self.take()
                args.append(self.sum())
            self.expect(")")
            self.level -= 1
            return self.build(token, token.text, *args)
        if known:
            example = f"{token.text}(x)" if operators.get_operator(token.text).arity == 1 else f"{token.text}(x, x)"
            raise self.error(f"operator '{token.text}' must be called with arguments, e.g. {example}", token)
        if token.text == INPUT_NAME:
            return Expression.input()
        try:
            return Expression.parameter(token.text)
        except ExpressionError as error:
            raise self.error(error.message, token) from None


def _check_parameter_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name or ""):
        raise ExpressionError(f"parameter names are identifiers (letters, digits, _), got {name!r}")
    if name == INPUT_NAME or name in operators.REGISTRY or name in operators.ALIASES:
        raise ExpressionError(f"{name!r} is reserved (the input or an operator) and cannot name a parameter")
    if len(name) > MAX_NAME_LENGTH:
        raise ExpressionError(f"parameter name {name!r} is longer than {MAX_NAME_LENGTH} characters")


def _arity_text(op: operators.Operator) -> str:
    if op.arity == operators.VARIADIC:
        return f"takes 2 to {operators.MAX_VARIADIC} arguments"
    return f"takes {op.arity} argument{'s' if op.arity != 1 else ''}"


def _unknown_operator_message(name: str, called: bool = False) -> str:
    """Names close operators; for a `name(...)` with none close, suggests the product with a
    parameter of that name, which is what `alpha(x)` usually means."""
    candidates = list(operators.REGISTRY) + list(operators.ALIASES)
    close = difflib.get_close_matches(name.lower(), candidates, n=3, cutoff=0.5)
    if close:
        hint = f"; did you mean {', '.join(close)}?"
    elif called:
        hint = f"; write '{name}*(...)' for a product with the parameter {name!r}, or see activations.operators.names()"
    else:
        hint = "; see activations.operators.names() for the list"
    return f"unknown operator {name!r}{hint}"


_MATH_CONSTANTS = {"e": math.e, "pi": math.pi}
_NON_FINITE = ("nan", "inf", "infinity")


def suspicious_names(expression: Expression) -> list[str]:
    """What in `expression` looks like a typo: parameters named like the input, like an operator
    applied to it (`X`, `sigmoidx`), like an operator in capitals (`Sigmoid`), like a mathematical
    constant (`e`, `pi`) or a non-finite number (`nan`, `inf`), or no use of the
    input at all. Any name that is not
    an operator is a parameter, so such typos parse; this names them for a warning."""
    notes = []
    for name in expression.parameters:
        if name.lower() == INPUT_NAME:
            notes.append(f"parameter {name!r} is not the input, which is lower-case {INPUT_NAME!r}")
            continue
        for suffix in (INPUT_NAME, "_" + INPUT_NAME):
            operator = name[: -len(suffix)].lower() if name.lower().endswith(suffix) else ""
            if operator in operators.REGISTRY or operator in operators.ALIASES:
                notes.append(f"parameter {name!r} looks like {operator}({INPUT_NAME}) written without parentheses")
                break
        if name != name.lower() and name.lower() in operators.REGISTRY:
            notes.append(f"parameter {name!r} looks like the operator {name.lower()}, whose name is lower-case")
        if name.lower() in _NON_FINITE:
            notes.append(f"parameter {name!r} is learnable (starting at its initial value, 1.0 unless given), "
                         "not a non-finite number; constants must be finite")
        if name.lower() in _MATH_CONSTANTS:
            notes.append(f"parameter {name!r} is learnable (starting at its initial value, 1.0 unless given), "
                         f"not the constant {_MATH_CONSTANTS[name.lower()]:.6g}; write the number for a constant")
    if not expression.uses_input:
        notes.append(f"it does not use the input {INPUT_NAME!r}: every input gives the same output")
    return notes


def parse(text: str) -> Expression:
    """Parse activation-function text into an `Expression`.

    Raises `ExpressionError` (a ValueError) naming the position of the problem, and for an
    unknown name the closest valid operator names. Text longer than `MAX_TEXT_LENGTH`, deeper
    than `MAX_DEPTH` or larger than `MAX_NODES` is rejected.
    """
    if isinstance(text, Expression):
        return text
    if not isinstance(text, str):
        raise ExpressionError(f"an expression must be given as text, got {type(text).__name__}")
    return _parse_text(text)


@functools.lru_cache(maxsize=4096)
def _parse_text(text: str) -> Expression:
    if len(text) > MAX_TEXT_LENGTH:
        raise ExpressionError(f"expression text is {len(text)} characters; the limit is {MAX_TEXT_LENGTH}")
    return _Parser(text).parse()


def is_number(value) -> bool:
    """A real number, NumPy scalars included (trained weights are np.float32), booleans not."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_finite_number(value) -> bool:
    return is_number(value) and math.isfinite(value)


PARAMETER_LIMIT = 3.4028234663852886e38
"""The largest float32: parameters are float32 weights, so a value beyond it cannot be stored."""


def as_parameter_value(value) -> float | None:
    """`value` as a float if it can start a learnable parameter, else None.

    A finite real number within float32's range; a 0-d NumPy array counts (a layer-shared
    weight's `numpy()` is one).
    """
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        value = value.item()
    if not is_finite_number(value) or abs(value) > PARAMETER_LIMIT:
        return None
    return float(value)


def _check_number(value, what: str) -> float:
    number = as_parameter_value(value)
    if number is None:
        raise ValueError(f"{what} must be a finite number within float32's range (|value| <= 3.4e38), got {value!r}")
    return number


def initial_values(expression: Expression, initial: Initial = None, argument: str = "initial") -> dict[str, float]:
    """Each parameter's value from `initial`: None (all DEFAULT_INITIAL), one number for all,
    or a dict {name: number} (unnamed parameters DEFAULT_INITIAL). Unknown names and non-finite
    numbers raise ValueError naming what is allowed, and the caller's `argument`."""
    names = expression.parameters
    if initial is None:
        return {name: DEFAULT_INITIAL for name in names}
    if isinstance(initial, Mapping):
        unknown = sorted(set(initial) - set(names))
        if unknown:
            allowed = ", ".join(names) if names else "none: the expression has no parameters"
            raise ValueError(
                f"{argument} names unknown parameter(s) {unknown} of {expression}; its parameters are: {allowed}"
            )
        values = {name: DEFAULT_INITIAL for name in names}
        for name, value in initial.items():
            label = f"initial value of {name!r}" if argument == "initial" else f"{argument}[{name!r}]"
            values[name] = _check_number(value, label)
        return values
    if is_number(initial) or getattr(initial, "shape", None) == ():
        value = _check_number(initial, "initial")
        return {name: value for name in names}
    raise ValueError(
        "initial must be None, a finite number or a dict {parameter name: number}, "
        f"got {type(initial).__name__}"
    )
