"""The registry of operators an activation function is built from.

One table holds every unary, binary and n-ary operator of both source search spaces: the
Swish paper's core-unit sets and the PANGAEA/AQuaSurF operator set. Each operator is written with
`keras.ops`, so an expression runs on every Keras backend.

Raw operators that can blow up for finite input are replaced by protected forms (bounded `exp`,
`log(|x| + eps)`, division by a sign-safe denominator, ...): a single operator never turns a finite
input of ordinary magnitude into inf or NaN, and its gradient stays finite. The protected forms
agree with the raw ones wherever the raw ones are well behaved.

Some operators also carry a `vector_fn`: the same function written with arithmetic only, for the
fused float32 kernel of `activations.layer`. XLA's CPU code calls the C library once per element
for `sin`, `cos` and `atan` (about 10x the time of a vectorised loop) and its `asinh` is 3-5x
slower than a plain formula; the exponential family (`exp`, `expm1`, `cosh`, `sinh`, `elu`,
`selu`, `sigmoid`, `softplus`, `mish`, ...) shares range reductions and carries analytic
derivatives in its vector forms; `erf` is a rational function because TensorFlow Lite has no
`Erf` op. The fused kernel uses `vector_fn` where there is one; the portable path and float64
keep `fn`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import keras
from keras import ops

EPS = 1e-3
"""Distance kept from singularities (division, log, sqrt)."""

EXP_MAX = 20.0
"""Largest argument passed to `exp`-like operators: exp(20) ~ 4.9e8 leaves float32 headroom."""

GROWTH_MAX = 1e6
"""Inputs of polynomial operators (square, cube, pow) are clipped to +-GROWTH_MAX."""


@dataclasses.dataclass(frozen=True)
class Operator:
    """A named elementwise function of one, two or n tensors.

    `arity` is 1, 2 or `VARIADIC` (2 to `MAX_VARIADIC` arguments). `identity_arg` is the neutral
    element for binary/n-ary operators (0 for add, 1 for mul), which lets a mutation insert the
    operator without changing the function; None where there is no such element.
    """

    name: str
    arity: int
    fn: Callable
    doc: str
    identity_arg: float | None = None
    families: tuple[str, ...] = ()
    vector_fn: Callable | None = None
    """The same function from arithmetic XLA vectorises (float32 accuracy), or None: see above."""


VARIADIC = -1
MAX_VARIADIC = 8


# --- protected building blocks -------------------------------------------------------------------


def _clip_growth(x):
    return ops.clip(x, -GROWTH_MAX, GROWTH_MAX)


def _safe_exp(x):
    return ops.exp(ops.minimum(x, EXP_MAX))


def _safe_denominator(x):
    """x pushed at least EPS away from zero, keeping its sign (zero counts as positive)."""
    return ops.where(x >= 0, ops.maximum(x, EPS), ops.minimum(x, -EPS))


def _safe_div(a, b):
    return a / _safe_denominator(b)


def _safe_log(x):
    return ops.log(ops.abs(x) + EPS)


def _safe_sqrt(x):
    # sqrt(relu(x) + eps) - sqrt(eps): zero at zero, finite gradient everywhere.
    return ops.sqrt(ops.relu(x) + EPS) - math.sqrt(EPS)


SIN_COS_LIMIT = 1e5
"""The vectorised sin and cos (`Operator.vector_fn`) treat larger |x| as this value."""


def _upstream(args, upstream):
    """The upstream gradient a `keras.ops.custom_gradient` function receives (backends differ)."""
    return args[0] if upstream is None else upstream


def _sign_constant(x):
    """-1 where x < 0, else 1, as a constant for differentiation.

    An odd function computed as `sign * f(x * sign)` then has the right derivative at zero,
    where `f(abs(x))` would get abs's zero subgradient there.
    """
    return ops.where(x < 0, -1.0, 1.0)


def _mod(j, n: float):
    """j mod n for whole numbers j >= 0 and a power of two n, with a multiply and a floor.

    XLA counts `remainder` as expensive and will not fuse an expensive result into several
    users; in a composed function's backward kernel that kept intermediates in memory.
    """
    return j - n * ops.floor(j * (1.0 / n))


_FOUR_OVER_PI = 4.0 / math.pi
# pi/4 split into three parts so that j * part is exact in float32 for the octant numbers j of
# |x| < ~1e4 (Cody & Waite's reduction, with the Cephes constants).
_PI4_PARTS = (0.78515625, 2.4187564849853515625e-4, 3.77489497744594108e-8)


def _sin_cos(x):
    """(sin x, cos x) with arithmetic only, so XLA vectorises it (its sin/cos call libm per element).

    The argument is reduced to [-pi/4, pi/4] around the nearest even multiple of pi/4, then
    the Cephes single-precision polynomials are evaluated. Error against the exact functions:
    under 2e-7 for |x| < 1e4 and 2e-6 for |x| < 1e5. Beyond that the reduction would lose
    digits (float32 itself resolves x only to 2^-7 or coarser there), so |x| is clipped to
    SIN_COS_LIMIT: the result is the sine or cosine of a float32 number for every finite x.
    """
    sign = _sign_constant(x)
    ax = ops.minimum(x * sign, SIN_COS_LIMIT)
    j = ops.floor(ax * _FOUR_OVER_PI)
    j = j + _mod(j, 2.0)
    z = ax
    for part in _PI4_PARTS:
        z = z - j * part
    zz = z * z
    sin_z = ((-1.9515295891e-4 * zz + 8.3321608736e-3) * zz - 1.6666654611e-1) * zz * z + z
    cos_z = ((2.443315711809948e-5 * zz - 1.388731625493765e-3) * zz + 4.166664568298827e-2) * zz * zz
    cos_z = cos_z - 0.5 * zz + 1.0
    octant = _mod(j, 8.0)  # 0, 2, 4 or 6: which quarter turn |x| lies in
    swap = (octant == 2.0) | (octant == 6.0)
    sin_ax = ops.where(swap, cos_z, sin_z) * ops.where(octant >= 4.0, -1.0, 1.0)
    cos_x = ops.where(swap, sin_z, cos_z) * ops.where((octant == 2.0) | (octant == 4.0), -1.0, 1.0)
    return sign * sin_ax, cos_x


def _log1p(t):
    """log(1 + t) for t >= 0 through the vectorised log, with Kahan's correction for small t.

    XLA's CPU code calls the C library's log1pf once per element.
    """
    u = 1.0 + t
    return ops.where(u == 1.0, t, ops.log(u) * (t / (u - 1.0)))


def _vector_sin_cos(index: int):
    """sin (index 0) or cos (index 1), with the derivative cos or -sin from the same range
    reduction (0 where |x| is clipped at SIN_COS_LIMIT)."""

    @ops.custom_gradient
    def fn(x):
        sin, cos = _sin_cos(x)

        def grad(*args, upstream=None):
            derivative = cos if index == 0 else -sin
            return _upstream(args, upstream) * ops.where(ops.abs(x) < SIN_COS_LIMIT, derivative, 0.0)

        return (sin, cos)[index], grad

    return fn


_vector_sin = _vector_sin_cos(0)
_vector_cos = _vector_sin_cos(1)


@ops.custom_gradient
def _asinh(x):
    """asinh(x) = sign(x) log1p(|x| + x^2 / (1 + sqrt(x^2 + 1))): relative error ~3e-7 in float32.

    XLA's own asinh ran 3-5x slower in the fused kernel. Above |x| = 1e18 (where x^2 would
    overflow float32) asinh(x) = log(2|x|) to float32 precision. The derivative 1 / sqrt(x^2 + 1)
    reuses the square root.
    """
    sign = _sign_constant(x)
    ax = x * sign
    big = ax > 1e18
    s = ops.minimum(ax, 1e18)
    root = ops.sqrt(s * s + 1.0)
    y = _log1p(ops.where(big, ax, s + s * s / (1.0 + root)))

    def grad(*args, upstream=None):
        return _upstream(args, upstream) / root

    return sign * (y + ops.where(big, math.log(2.0), 0.0)), grad


def _atan(x):
    """atan(x) by the Cephes single-precision method: relative error ~2e-7 in float32.

    |x| is reduced to [0, tan(pi/8)] with atan(x) = pi/2 + atan(-1/x) above tan(3pi/8) and
    pi/4 + atan((x-1)/(x+1)) between; XLA's own atan calls the C library's atan2f per element
    (about 15x the time of relu in the fused kernel).
    """
    sign = _sign_constant(x)
    ax = x * sign
    big = ax > 2.414213562373095
    middle = ax > 0.41421356237309503
    reduced = ops.where(
        big, -1.0 / ops.where(big, ax, 1.0), ops.where(middle, (ax - 1.0) / (ax + 1.0), ax)
    )
    offset = ops.where(big, math.pi / 2, ops.where(middle, math.pi / 4, 0.0))
    z = reduced * reduced
    poly = (((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z - 3.33329491539e-1) * z
    return sign * (offset + poly * reduced + reduced)


def _safe_pow(a, b):
    """|a| ** b, bounded. Integer constant exponents are specialised in expression evaluation."""
    return _safe_exp(b * ops.log(ops.abs(a) + EPS))


def _bounded_cosh(x):
    # (e + 1/e) / 2 with e = exp(x): one exponential instead of two; exp dominates the cost of
    # a fused activation kernel (bench/activation_overhead.py).
    e = ops.exp(ops.clip(x, -EXP_MAX, EXP_MAX))
    return 0.5 * (e + 1.0 / e)


# --- the exponential family in arithmetic only (vector forms) --------------------------------------
# XLA's CPU `exp` clamps its input twice, rounds, evaluates its polynomial and scales: about 20
# vector instructions; and its simplifier turns `1/exp(x)` into a second exponential, so `cosh`
# and `sinh` cost two. The forms below skip clamps the protected operators already make, share
# one range reduction between e^x and e^-x, and carry their analytic derivatives (which reuse
# the same values): the fused kernels of max(relu(x),cosh(elu(x))) went from 175/247 to 114/146
# instructions per 32 packed values, forward/backward (bench/operator_cost.py times each operator).

_LOG2E = 1.0 / math.log(2.0)
_LN2_PARTS = (0.693359375, -2.12194440e-4)  # ln 2 split so that n * first part is exact in float32
_EXP_FLOOR = -88.0
"""Inputs are clipped here: n = -127 there, whose 2^n bit pattern is exactly 0.0 (e^x < 1e-38)."""
# e^r's Taylor coefficients 1/k!, k = 2..7: on |r| <= ln2/2 the degree-7 remainder is below 5e-9
# relative. One set for e^r and for its even and odd parts, so that a kernel using both keeps
# fewer constants in registers.
_TAYLOR = {k: 1.0 / math.factorial(k) for k in range(2, 8)}


def _bitcast(x, dtype: str):
    """The same 32 bits read as another 32-bit type."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # keras.ops.view wants a static last axis on this backend

        return tf.bitcast(x, tf.as_dtype(dtype))
    return ops.view(x, dtype)


_CARRIER_BITS = 0x4B000000
"""The bit pattern of 2^23 as float32."""
_EXPONENT_ONE = 2**23
"""One unit of float32's exponent field, as an integer."""


def _power_of_two(biased):
    """2^(biased - 127) for whole numbers 0 <= biased <= 255 held in float32 (0 gives 0.0).

    2^23 + biased holds `biased` in its low mantissa bits: less the carrier's bit pattern it is
    `biased` as an integer, and times 2^23 it fills the exponent field. No float-to-int
    conversion, which XLA emits with saturation and NaN checks (five more instructions). A
    multiplication rather than a left shift, which TensorFlow Lite has no kernel for; LLVM emits
    the same shift for it.
    """
    whole = _bitcast(biased + 2.0**23, "int32") - _CARRIER_BITS
    return _bitcast(whole * _EXPONENT_ONE, "float32")


def _reduce(x, bias: float = 127.0):
    """(n, r, 2^(n + bias - 127)) with x = n ln2 + r, |r| <= ln2/2 (bias 126 gives 2^n / 2).

    Valid for 0 <= n + bias <= 255; the bit pattern of biased exponent 0 reads as 0.0.
    """
    n = ops.round(x * _LOG2E)
    r = x - n * _LN2_PARTS[0] - n * _LN2_PARTS[1]
    return n, r, _power_of_two(n + bias)


def _expm1_reduced(r):
    """e^r - 1 for |r| <= ln2/2, without cancellation near 0."""
    poly = _TAYLOR[7]
    for k in range(6, 1, -1):
        poly = poly * r + _TAYLOR[k]
    return poly * (r * r) + r


def _exp_split(x, upper: float):
    """(2^n (e^r - 1), 2^n) for x clipped to [_EXP_FLOOR, upper] (upper <= 88).

    Their sum is e^x, and `first + (2^n - 1)` is e^x - 1 without cancellation near 0. At the
    floor 2^n is exactly 0: a true zero far left, not e^-88, keeps products such as x e^x right
    for huge negative x.
    """
    _, r, scale = _reduce(ops.clip(x, _EXP_FLOOR, upper))
    return scale * _expm1_reduced(r), scale


def _exp_clipped(x, upper: float):
    """e^x for x clipped to [_EXP_FLOOR, upper]; exactly 0 at the floor (see `_exp_split`)."""
    _, r, scale = _reduce(ops.clip(x, _EXP_FLOOR, upper))
    return scale * (_expm1_reduced(r) + 1.0)


@ops.custom_gradient
def _vector_exp(x):
    """exp(min(x, EXP_MAX)): the `exp` operator."""
    e = _exp_clipped(x, EXP_MAX)

    def grad(*args, upstream=None):
        return _upstream(args, upstream) * ops.where(x <= EXP_MAX, e, 0.0)

    return e, grad


@ops.custom_gradient
def _vector_expm1(x):
    """expm1(min(x, EXP_MAX)), accurate near zero: 2^n (e^r - 1) + (2^n - 1)."""
    scaled, scale = _exp_split(x, EXP_MAX)

    def grad(*args, upstream=None):  # e^x, not y + 1 (which cancels to 0 below x = -17)
        return _upstream(args, upstream) * ops.where(x <= EXP_MAX, scaled + scale, 0.0)

    return scaled + (scale - 1.0), grad


def _hyperbolic(x, sign: float):
    """cosh (sign 1) or sinh (sign -1) of x clipped to +-EXP_MAX, and the other one.

    e^(+-x) = 2^(+-n) (E(r) +- O(r)) from one range reduction, with E and O the even and odd
    parts of e^r's degree-7 Taylor polynomial; the halves 2^(+-n) / 2 come from the exponent
    bits directly, so (e^x +- e^-x) / 2 costs no multiplication by 1/2.
    """
    n, r, half_up = _reduce(ops.clip(x, -EXP_MAX, EXP_MAX), bias=126.0)
    half_down = _power_of_two(126.0 - n)
    r2 = r * r
    even = 1.0 + r2 * (_TAYLOR[2] + r2 * (_TAYLOR[4] + r2 * _TAYLOR[6]))
    odd = r * (1.0 + r2 * (_TAYLOR[3] + r2 * (_TAYLOR[5] + r2 * _TAYLOR[7])))
    # Grouped so that sinh keeps its relative precision near zero (half_up = half_down there).
    cosh = (half_up + half_down) * even + (half_up - half_down) * odd
    sinh = (half_up - half_down) * even + (half_up + half_down) * odd
    return (cosh, sinh) if sign > 0 else (sinh, cosh)


def _vector_hyperbolic(sign: float):
    @ops.custom_gradient
    def fn(x):
        inside = ops.abs(x) <= EXP_MAX
        value, derivative = _hyperbolic(x, sign)

        def grad(*args, upstream=None):
            return _upstream(args, upstream) * ops.where(inside, derivative, 0.0)

        return value, grad

    return fn


_vector_cosh = _vector_hyperbolic(1.0)
_vector_sinh = _vector_hyperbolic(-1.0)


def _sigmoid_parts(x):
    """(e^-x, sigmoid(x)); each exactly 0 where float32 would round it to 1e-38 or less."""
    e = _exp_clipped(-x, 87.0)
    return e, ops.where(x < -87.0, 0.0, 1.0 / (1.0 + e))


@ops.custom_gradient
def _vector_sigmoid(x):
    """1 / (1 + e^-x)."""
    e, s = _sigmoid_parts(x)

    def grad(*args, upstream=None):  # s (1 - s) = e s^2, without 1 - s's cancellation
        return _upstream(args, upstream) * (e * s * s)

    return s, grad


@ops.custom_gradient
def _vector_swish(x):
    """x sigmoid(x), with derivative sigmoid(x) + x sigmoid'(x)."""
    e, s = _sigmoid_parts(x)

    def grad(*args, upstream=None):
        return _upstream(args, upstream) * (s + x * (e * s * s))

    return x * s, grad


@ops.custom_gradient
def _vector_mish(x):
    """x n / (n + 2) with n = e^x (e^x + 2), as `_mish`, with the derivative written out.

    Differentiating n / (n + 2) as a quotient cancels in float32 (relative error 3e-3 near
    x = 10); q' = 4 e^x (e^x + 1) / (n + 2)^2 does not.
    """
    e = _exp_clipped(x, EXP_MAX)
    n = e * (e + 2.0)
    d = n + 2.0
    q = n / d

    def grad(*args, upstream=None):
        slope = ops.where(x <= EXP_MAX, 4.0 * e * (e + 1.0) / (d * d), 0.0)
        return _upstream(args, upstream) * (q + x * slope)

    return x * q, grad


@ops.custom_gradient
def _vector_elu(x):
    """x for x > 0, else e^x - 1 (as `_elu`); derivative 1 or e^x, without `exp`'s clipping mask."""
    e = _exp_clipped(x, 0.0)

    def grad(*args, upstream=None):
        return _upstream(args, upstream) * ops.where(x > 0, 1.0, e)

    return ops.where(x > 0, x, e - 1.0), grad


def _elu(x):
    # exp(min(x, 0)) - 1 rather than expm1: the same function to float32 rounding near 0, and a
    # plain exp vectorises better than expm1 in XLA's CPU kernels.
    return ops.where(x > 0, x, ops.exp(ops.minimum(x, 0.0)) - 1.0)


def _bounded_sinh(x):
    x = ops.clip(x, -EXP_MAX, EXP_MAX)
    return ops.sinh(x)


def _sinc(x, sin=ops.sin):
    # sin(x)/x with the removable singularity at zero filled in; safe gradient through `where`.
    small = ops.abs(x) < EPS
    safe_x = ops.where(small, ops.ones_like(x), x)
    return ops.where(small, 1.0 - ops.square(x) / 6.0, sin(safe_x) / safe_x)


def _bessel_terms(x):
    """(i0e(x), i1e(x), i1e(x)/x) from the Abramowitz & Stegun fits 9.8.1-4 (relative error ~1e-7).

    The three share one exponential and one square root; i1e(x)/x comes without a division by
    x, so the derivatives below stay finite at zero.
    """
    ax = ops.abs(x)
    small = ax < 3.75
    t = ops.square(ax / 3.75)
    e = ops.exp(-ax)
    i0e_small = e * (
        1.0 + t * (3.5156229 + t * (3.0899424 + t * (1.2067492
        + t * (0.2659732 + t * (0.0360768 + t * 0.0045813)))))
    )
    i1e_over_x_small = e * (
        0.5 + t * (0.87890594 + t * (0.51498869 + t * (0.15084934
        + t * (0.02658733 + t * (0.00301532 + t * 0.00032411)))))
    )
    big_ax = ops.maximum(ax, 3.75)
    u = 3.75 / big_ax
    root = ops.sqrt(big_ax)
    i0e_big = (0.39894228 + u * (0.01328592 + u * (0.00225319 + u * (-0.00157565 + u * (0.00916281
               + u * (-0.02057706 + u * (0.02635537 + u * (-0.01647633 + u * 0.00392377)))))))) / root
    i1e_big = (0.39894228 + u * (-0.03988024 + u * (-0.00362018 + u * (0.00163801 + u * (-0.01031555
               + u * (0.02282967 + u * (-0.02895312 + u * (0.01787654 - u * 0.00420059)))))))) / root
    i0e = ops.where(small, i0e_small, i0e_big)
    i1e = ops.sign(x) * ops.where(small, ax * i1e_over_x_small, i1e_big)
    i1e_over_x = ops.where(small, i1e_over_x_small, i1e_big / big_ax)
    return i0e, i1e, i1e_over_x


_ERF_NUMERATOR = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
                  -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_DENOMINATOR = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
                    -1.42647390514189e-02)
"""erf(x) = x P(x^2) / Q(x^2) on [-4, 4] (+-1 beyond, to float32 precision): the rational form
Eigen and XLA use, within 5e-7 of erf everywhere."""


def _polynomial(x, coefficients):
    """Horner's rule, highest power first."""
    result = coefficients[0]
    for c in coefficients[1:]:
        result = result * x + c
    return result


@ops.custom_gradient
def _vector_erf(x):
    """erf from arithmetic alone: TensorFlow Lite has no `Erf` op, so a model with the library's
    erf would not convert; the derivative is the analytic 2/sqrt(pi) e^(-x^2)."""
    clipped = ops.clip(x, -4.0, 4.0)
    square = clipped * clipped
    value = clipped * _polynomial(square, _ERF_NUMERATOR) / _polynomial(square, _ERF_DENOMINATOR)

    def grad(*args, upstream=None):
        near = ops.clip(x, -10.0, 10.0)  # e^-100 is 0 in float32 already
        return _upstream(args, upstream) * (2.0 / math.sqrt(math.pi)) * _exp_clipped(-(near * near), EXP_MAX)

    return value, grad


# The Bessel functions carry their analytic derivatives (i0e' = i1e - sign(x) i0e,
# i1e' = i0e - sign(x) i1e - i1e/x). Differentiating the polynomial fits instead gives a graph in
# which XLA keeps five intermediates in memory: that backward pass ran 15x slower than ReLU's.


@ops.custom_gradient
def _bessel_i0e(x):
    """Exponentially scaled modified Bessel function of order 0: exp(-|x|) I0(x)."""
    i0e, i1e, _ = _bessel_terms(x)

    def grad(*args, upstream=None):
        return _upstream(args, upstream) * (i1e - ops.sign(x) * i0e)

    return i0e, grad


@ops.custom_gradient
def _bessel_i1e(x):
    """Exponentially scaled modified Bessel function of order 1: exp(-|x|) I1(x)."""
    i0e, i1e, i1e_over_x = _bessel_terms(x)

    def grad(*args, upstream=None):
        return _upstream(args, upstream) * (i0e - ops.sign(x) * i1e - i1e_over_x)

    return i1e, grad


def _mish(x):
    # tanh(softplus(x)) = n / (n + 2) with n = e^x (e^x + 2): one exp and one division. Exact to
    # rounding (no cancellation); for x > 20 the ratio is 1 in float64 as it is for tanh. The
    # tanh-of-softplus form ran 3x slower in the fused kernel.
    e = ops.exp(ops.minimum(x, EXP_MAX))
    n = e * (e + 2.0)
    return x * (n / (n + 2.0))


def _elish(x, sigmoid=ops.sigmoid, expm1=ops.expm1):
    return ops.where(x >= 0, x * sigmoid(x), expm1(ops.minimum(x, 0.0)) * sigmoid(x))


_SELU_ALPHA = 1.6732632423543772
_SELU_SCALE = 1.0507009873554805


@ops.custom_gradient
def _vector_selu(x):
    """scale * (x for x >= 0, else alpha expm1(x)); x >= 0 takes the linear slope at 0, as
    TensorFlow's selu gradient does."""
    scaled, power = _exp_split(x, 0.0)  # e^x = scaled + power, e^x - 1 = scaled + (power - 1)

    def grad(*args, upstream=None):
        slope = ops.where(x >= 0, _SELU_SCALE, (_SELU_SCALE * _SELU_ALPHA) * (scaled + power))
        return _upstream(args, upstream) * slope

    negative = (_SELU_SCALE * _SELU_ALPHA) * (scaled + (power - 1.0))
    return ops.where(x >= 0, _SELU_SCALE * x, negative), grad


def _log1p_unit(e):
    """log(1 + e) for 0 <= e <= 1 as 2 atanh(s) = 2 (s + s^3/3 + ... + s^13/13), s = e / (2 + e).

    s <= 1/3, so the series' remainder is below 2e-8 relative, and log1p keeps its relative
    precision for tiny e. XLA's CPU code calls the C library's log1pf once per element, which made
    softplus 5x relu's cost in the fused kernel.
    """
    s = e / (2.0 + e)
    s2 = s * s
    series = 1.0 / 13
    for k in (11, 9, 7, 5, 3):
        series = series * s2 + 1.0 / k
    return 2.0 * s * (1.0 + s2 * series)


@ops.custom_gradient
def _vector_softplus(x):
    """max(x, 0) + log1p(e^-|x|), derivative sigmoid(x) from the same exponential."""
    e = _exp_clipped(-ops.abs(x), 0.0)
    y = ops.relu(x) + _log1p_unit(e)

    def grad(*args, upstream=None):
        return _upstream(args, upstream) * ops.where(x >= 0, 1.0, e) / (1.0 + e)

    return y, grad


@ops.custom_gradient
def _vector_softsign(x):
    """x / (1 + |x|), derivative 1 / (1 + |x|)^2 from the same division.

    |x| is capped at 1e18 (where the value is +-1 in float32) so that 1 / (1 + |x|) stays a
    normal number.
    """
    capped = ops.clip(x, -1e18, 1e18)
    inverse = 1.0 / (1.0 + ops.abs(capped))

    def grad(*args, upstream=None):
        return _upstream(args, upstream) * (inverse * inverse)

    return capped * inverse, grad


def _fold(fn):
    def folded(*args):
        out = args[0]
        for arg in args[1:]:
            out = fn(out, arg)
        return out

    return folded


# --- the table -----------------------------------------------------------------------------------

_SWISH = "swish_paper"
_PANGAEA = "pangaea"

_OPERATORS: list[Operator] = [
    # Unary: constants and arithmetic.
    Operator("zero", 1, lambda x: ops.zeros_like(x), "0", families=(_PANGAEA,)),
    Operator("one", 1, lambda x: ops.ones_like(x), "1", families=(_PANGAEA,)),
    Operator("identity", 1, lambda x: x, "x", families=(_SWISH, _PANGAEA)),
    Operator("negative", 1, lambda x: -x, "-x", families=(_SWISH, _PANGAEA)),
    Operator("abs", 1, ops.abs, "|x|", families=(_SWISH, _PANGAEA)),
    Operator("reciprocal", 1, lambda x: _safe_div(1.0, x), "1/x, sign-safe eps", families=(_PANGAEA,)),
    Operator("square", 1, lambda x: ops.square(_clip_growth(x)), "x^2", families=(_SWISH, _PANGAEA)),
    Operator("cube", 1, lambda x: _clip_growth(x) ** 3, "x^3", families=(_SWISH,)),
    Operator("sqrt", 1, _safe_sqrt, "sqrt(max(x,0)+eps)-sqrt(eps)", families=(_SWISH,)),
    Operator("exp", 1, _safe_exp, "exp(min(x, 20))", families=(_SWISH, _PANGAEA), vector_fn=_vector_exp),
    Operator("expm1", 1, lambda x: ops.expm1(ops.minimum(x, EXP_MAX)), "exp(x)-1, bounded", families=(_PANGAEA,),
             vector_fn=_vector_expm1),
    Operator("log", 1, _safe_log, "log(|x|+eps)", families=(_SWISH,)),
    Operator("gaussian", 1, lambda x: ops.exp(-ops.square(_clip_growth(x))), "exp(-x^2)", families=(_SWISH,),
             vector_fn=lambda x: _vector_exp(-ops.square(_clip_growth(x)))),
    # Unary: trigonometric and hyperbolic.
    Operator("sin", 1, ops.sin, "sin(x)", families=(_SWISH,), vector_fn=_vector_sin),
    Operator("cos", 1, ops.cos, "cos(x)", families=(_SWISH,), vector_fn=_vector_cos),
    Operator("sinc", 1, _sinc, "sin(x)/x", families=(_SWISH,), vector_fn=lambda x: _sinc(x, sin=_vector_sin)),
    Operator("sinh", 1, _bounded_sinh, "sinh(x), input clipped to +-20", families=(_SWISH, _PANGAEA),
             vector_fn=_vector_sinh),
    Operator("cosh", 1, _bounded_cosh, "cosh(x), input clipped to +-20", families=(_SWISH, _PANGAEA),
             vector_fn=_vector_cosh),
    Operator("tanh", 1, ops.tanh, "tanh(x)", families=(_SWISH, _PANGAEA)),
    Operator("asinh", 1, ops.arcsinh, "asinh(x)", families=(_SWISH, _PANGAEA), vector_fn=_asinh),
    Operator("atan", 1, ops.arctan, "atan(x)", families=(_SWISH, _PANGAEA), vector_fn=_atan),
    # Unary: special functions.
    Operator("erf", 1, ops.erf, "erf(x)", families=(_SWISH, _PANGAEA), vector_fn=_vector_erf),
    Operator("erfc", 1, lambda x: 1.0 - ops.erf(x), "1-erf(x)", families=(_PANGAEA,),
             vector_fn=lambda x: 1.0 - _vector_erf(x)),
    Operator("bessel_i0e", 1, _bessel_i0e, "exp(-|x|) I0(x)", families=(_PANGAEA,)),
    Operator("bessel_i1e", 1, _bessel_i1e, "exp(-|x|) I1(x)", families=(_PANGAEA,)),
    # Unary: the usual activation functions.
    Operator("relu", 1, ops.relu, "max(x,0)", families=(_SWISH, _PANGAEA)),
    Operator("min0", 1, lambda x: ops.minimum(x, 0.0), "min(x,0)", families=(_SWISH,)),
    Operator("sigmoid", 1, ops.sigmoid, "1/(1+exp(-x))", families=(_SWISH, _PANGAEA), vector_fn=_vector_sigmoid),
    Operator("log_sigmoid", 1, ops.log_sigmoid, "log(sigmoid(x))", families=(_PANGAEA,),
             vector_fn=lambda x: -_vector_softplus(-x)),
    Operator("hard_sigmoid", 1, ops.hard_sigmoid, "piecewise-linear sigmoid", families=(_PANGAEA,)),
    Operator("softplus", 1, ops.softplus, "log(1+exp(x))", families=(_SWISH, _PANGAEA), vector_fn=_vector_softplus),
    Operator("softsign", 1, ops.softsign, "x/(1+|x|)", families=(_PANGAEA,), vector_fn=_vector_softsign),
    Operator("elu", 1, _elu, "x if x>0 else exp(x)-1", families=(_PANGAEA,), vector_fn=_vector_elu),
    Operator("selu", 1, ops.selu, "scaled elu", families=(_PANGAEA,), vector_fn=_vector_selu),
    Operator("swish", 1, ops.silu, "x*sigmoid(x)", families=(_PANGAEA,), vector_fn=_vector_swish),
    Operator("gelu", 1, lambda x: ops.gelu(x, approximate=False), "x*Phi(x)", families=(_PANGAEA,)),
    Operator("mish", 1, _mish, "x*tanh(softplus(x))", families=(_PANGAEA,),
             vector_fn=_vector_mish),
    Operator("elish", 1, _elish, "x*sigmoid(x) if x>=0 else (exp(x)-1)*sigmoid(x)", families=(_PANGAEA,),
             vector_fn=lambda x: _elish(x, sigmoid=_vector_sigmoid, expm1=_vector_expm1)),
    Operator("leaky_relu", 1, lambda x: ops.leaky_relu(x, negative_slope=0.01), "max(x,0.01x)", families=(_PANGAEA,)),
    # Binary.
    Operator("add", 2, lambda a, b: a + b, "x1+x2", identity_arg=0.0, families=(_SWISH, _PANGAEA)),
    Operator("sub", 2, lambda a, b: a - b, "x1-x2", identity_arg=0.0, families=(_SWISH, _PANGAEA)),
    Operator("mul", 2, lambda a, b: a * b, "x1*x2", identity_arg=1.0, families=(_SWISH, _PANGAEA)),
    Operator("div", 2, _safe_div, "x1/x2, sign-safe eps", identity_arg=1.0, families=(_SWISH, _PANGAEA)),
    Operator("pow", 2, _safe_pow, "|x1|^x2, bounded", families=(_PANGAEA,)),
    Operator("max", 2, ops.maximum, "max(x1,x2)", families=(_SWISH, _PANGAEA)),
    Operator("min", 2, ops.minimum, "min(x1,x2)", families=(_SWISH, _PANGAEA)),
    # N-ary.
    Operator("sum_n", VARIADIC, _fold(lambda a, b: a + b), "x1+...+xn", identity_arg=0.0, families=(_PANGAEA,)),
    Operator("prod_n", VARIADIC, _fold(lambda a, b: a * b), "x1*...*xn", identity_arg=1.0, families=(_PANGAEA,)),
    Operator("max_n", VARIADIC, _fold(ops.maximum), "max(x1,...,xn)", families=(_PANGAEA,)),
    Operator("min_n", VARIADIC, _fold(ops.minimum), "min(x1,...,xn)", families=(_PANGAEA,)),
]

REGISTRY: dict[str, Operator] = {op.name: op for op in _OPERATORS}
assert len(REGISTRY) == len(_OPERATORS), "operator names must be unique"

ALIASES: dict[str, str] = {
    "neg": "negative",
    "silu": "swish",
    "arctan": "atan",
    "arcsinh": "asinh",
    "maximum": "max",
    "minimum": "min",
    "multiply": "mul",
    "subtract": "sub",
    "divide": "div",
    "power": "pow",
}
"""Alternative spellings accepted by the parser; expressions always print the registry name."""


def get_operator(name: str) -> Operator:
    """The operator called `name` (or one of its aliases); KeyError if there is none."""
    return REGISTRY[ALIASES.get(name, name)]


def names(arity: int | None = None, family: str | None = None) -> list[str]:
    """Operator names, optionally only those of one arity and/or one search-space family."""
    return [
        op.name
        for op in _OPERATORS
        if (arity is None or op.arity == arity) and (family is None or family in op.families)
    ]


def accepts(op: Operator, num_args: int) -> bool:
    """Whether `op` can be called with `num_args` arguments."""
    if op.arity == VARIADIC:
        return 2 <= num_args <= MAX_VARIADIC
    return op.arity == num_args
