"""actsearch's activation library: expressions, a Keras layer for any of them, and the search.

    import activations
    expr = activations.parse("x * sigmoid(beta * x)")
    layer = activations.get("max(relu(x), cosh(elu(x)))", sharing="channel")
    make_activation = activations.load("runs/demo/export/activation.json")   # a discovered one
"""

from activations import space
from activations.equivalence import check, fingerprint
from activations.export import load
from activations.expression import Expression, ExpressionError, parse
from activations.layer import ParametricActivation
from activations.named import expression_for, get
from activations.oracle import EvolutionaryOracle, EvolutionaryTuner
from activations.plotting import plot
from activations.simplification import simplify

__all__ = ["EvolutionaryOracle", "EvolutionaryTuner", "Expression", "ExpressionError", "ParametricActivation", "check", "expression_for", "fingerprint",
           "get", "load", "parse", "plot", "simplify", "space"]
