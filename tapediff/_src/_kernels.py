"""Opcodes, each primitive's forward and reverse rules, and the jitted sweeps over the tape.

Everything Numba compiles lives in this one file.  Numba's on-disk cache is keyed by the source
file of each function, so opcode constants, traits and rules defined in another module could
go stale in the cache without Numba noticing; keeping them together makes every edit here
invalidate the cache as a whole.

**One primitive, one block.**  Each primitive is declared once below: its opcode (numbered in
order of declaration by ``_opcode``, with the traits the sweeps need), then its forward rule
``fwd_<name>`` and its reverse rule ``adj_<name>`` side by side.  Elementwise rules are small
``inline="always"`` functions of scalars: ``fwd(x, z, c) -> y`` and ``adj(g, x, z, y, c) ->
(g dy/da, g dy/db)`` with x, z the inputs' values (z unused by unary rules), y the output's
value, c the record's parameter and g the output's adjoint.  The scalar path, the array loops,
the forward sweep and the reverse sweep all call these; nothing else writes the maths again.
The tangent sweep (forward mode) calls the adj rules with g = 1 for the partial derivatives.
A backward that records itself (``create_graph``, ``tapediff._src._graph``) runs the adj rule's
Python source on tensors; a rule that branches or calls ``math`` has a plain-Python twin
``vjp_<name>(g, x, z, y, c, T)`` written with tensor operations (T is ``tapediff``) beside it.
Forward mode needs no elementwise rule of its own (a tangent is the partials of ``adj`` at
g = 1 times the inputs' tangents) and none for the linear primitives (their forward rule,
applied to tangents); the others have a ``tan_<name>`` rule in their block.
The Python side of a primitive (eager NumPy and float forwards, NumPy dispatch, ``td.*``
names, test domain) is its row in ``_primitives.PRIMITIVES``.

**Dispatch.**  The sweeps dispatch with flat ``if/elif`` chains on the opcode constants, which
hold no maths.  Numba cannot cache functions built with ``exec`` (numba issue 3501) nor
functions that receive other jitted functions as arguments, so a registry-driven dispatch
would lose the cache or need generated code; a hand-written chain keeps one source of truth
readable, and ``tests/test_kernels.py`` records every opcode from the public API and checks
its gradient and its forward rule, so a missing branch fails there.  Opcode classes are
tested through ``TRAITS`` (a constant array Numba freezes into the code), never as number
ranges: adding a primitive renumbers nothing in the source.

Layout of a tape (see ``_tape.Tape``): record ``i`` produces slot ``i``.  ``arena_of[i]`` says
which arena holds its value (``KIND_F64`` or ``KIND_F32``): ``val[off[i]:off[i] + size[i]]``
(flat, C order), its adjoint the same range of the matching adjoint arena.  ``in_a[i]`` /
``in_b[i]`` are input slots (-1 when absent), ``param[i]`` a scalar parameter and
``meta_at[i]`` the offset of a block in the int64 side table ``meta`` (``meta[m]`` holds the
block's length, the payload follows).  Primitives with the ``META_INPUTS`` trait list further
input slots at the start of their payload: ``meta[m+1]`` = count, then the slots.

The sweeps: ``reverse_sweep`` is one jitted loop over the records of one arena kind (Numba
compiles it once per kind, on first use).  It hands control back to the Python driver
(``Tape.sweep``) at a record of the other kind and at the ``PYTHON_RULE`` primitives:
``OP_MATMUL`` (BLAS; a BLAS call compiled into the sweep costs ~7 s of cold compile) and
``OP_CAST`` (it spans both arenas), and at the ``LATE_RULE`` primitives (max/min and
product reductions, the scans), whose rules ``reverse_late`` runs: compiled on first use,
they keep ~3 s out of the first backward's compile.  ``forward_sweep`` is its mirror for
replay: it recomputes each record's value from its inputs and stops at a guard record whose
value changed.  ``fused_group`` runs a replay's fused group (``_fusion``): the micro-ops of a
chain of elementwise records, block by block, forward or in reverse, through block loops of
their own (unit stride, constant opcode: vectorised) or the sweeps' loops.
``tangent_sweep`` is forward mode: each record's tangent from its inputs' tangents, in a
tangent arena laid out as the values (``Tape.tangent`` drives it, as ``Tape.forward`` drives
``forward_sweep``).  ``reverse_rows`` and ``tangent_columns`` run many reverse or tangent
sweeps in one call (the rows or columns of a Jacobian); each compiles on its first call, so
neither ``import tapediff`` nor a first-order backward pays for them.

Kernels use ``error_model="numpy"``: division by zero and the like give inf/nan as in NumPy
(Numba's default raises ZeroDivisionError) and loops need no per-element checks.

Elementwise binary records accept an operand of size 1 against an output of size n (a
scalar operand): the kernels index it with ``k & mask`` where mask is 0 for such an
operand and -1 otherwise, which keeps one loop per rule and still vectorises for the
equal-size case.  Other broadcasts are read in place, in chunks: an elementwise record of
two inputs with a side-table block (its *broadcast layout*) runs over its output in chunks
of L consecutive elements, in each of which every operand is either contiguous or a single
element (mask 0), at an offset given by its strides over the outer dimensions
(``chunk_offsets``, stepped by ``chunk_next``); a broadcast operand's adjoint then
accumulates chunk by chunk.  Layout payload: ndim, L, mask of a, mask of b, outer
shape[ndim], strides of a[ndim], strides of b[ndim].  Broadcasts whose chunks would be
shorter than ``CHUNK_MIN`` go through an ``OP_RESTRIDE`` record, which writes the broadcast
operand out (and whose adjoint sums it back).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, uint64

# ---------------------------------------------------------------------------------------------
# Traits: what the sweeps need to know of an opcode beyond its rule.
# ---------------------------------------------------------------------------------------------
ELEMENTWISE = 1  # fwd/adj rules of scalars over y[k], x[k & ma], z[k & mb]
ONE_INPUT = 2  # elementwise with one tensor input (a unary rule, or one with a constant p)
LINEAR_C = 4  # elementwise with a constant slope d out/d a = adj(1, ., ., ., p)
WRITES_ONCE = 8  # each element of a full-size input gets its adjoint from one output element
META_INPUTS = 16  # further input slots listed in the side table
NO_GRADIENT = 32  # data-dependent records no adjoint flows through
PYTHON_RULE = 64  # rules the Python driver runs (NumPy calls)
# elementwise rules whose adjoint evaluates exp/cosh/sinh per element, which NumPy's SIMD
# loops do 3-5x faster than a scalar libm call (e.g. exp: 0.85 against 4.6 ns per element):
# the reverse sweep hands records of at least ``big`` elements to the driver, which runs the
# rule's Python form on arrays (``Tape._numpy_adjoint``)
NUMPY_ADJOINT = 128
# rules the reverse sweep hands back to its caller, which runs them with ``reverse_late``:
# they compile on the first backward that meets one, not in every first backward (reductions
# by max/min and products, the scans: ~3 s of the reverse sweep's cold compile)
LATE_RULE = 256

_TRAITS: list = []


def _opcode(traits: int = 0) -> int:
    """The next opcode, with its traits (see ``TRAITS``)."""
    _TRAITS.append(traits)
    return len(_TRAITS) - 1


BINARY_RULE = ELEMENTWISE | WRITES_ONCE  # the traits of an elementwise rule of two tensors
UNARY_RULE = ELEMENTWISE | WRITES_ONCE | ONE_INPUT  # ... of one tensor (and the parameter)

KIND_F64 = 0
KIND_F32 = 1

# Record flag bits.
FLAG_RELEASED = 1  # swept by a backward without retain_graph: may not be swept again
FLAG_CONSTANT = 2  # depends on nothing differentiated (replay's fixed inputs): no adjoint

# Broadcast layouts (see the module docstring) are used for chunks of at least this many
# elements: a chunk costs ~10-20 ns over its elements' loop, writing the operand out ~1-2 ns
# per element.  Measured, (K, 1, d) - (1, n, d) then (z * z).sum() and backward: d = 10 is
# 1.1-1.5x faster read in place, d = 4 level, d = 2 1.15x slower.
CHUNK_MIN = 8

# The sweeps' return codes; a value >= 0 is the record where they handed back control.
SWEEP_DONE = -1
NEVER = 1 << 62  # a record size no tape reaches: the compiled drivers hand nothing back
UNKNOWN_OPCODE = -2
# ``-3 - i`` means: record i was reached but has been released (reverse_sweep), or guard
# record i failed (forward_sweep).

_LN2 = math.log(2.0)
_LN10 = math.log(10.0)
_2_SQRT_PI = 2.0 / math.sqrt(math.pi)

rule = njit(inline="always", nogil=True, error_model="numpy")

# ---------------------------------------------------------------------------------------------
# Inputs: values the sweeps never compute.
# ---------------------------------------------------------------------------------------------
OP_LEAF = _opcode()  # value of a leaf that requires grad; its adjoint goes to the leaf's .grad
OP_CONST = _opcode()  # a constant operand (copied in); never gets an adjoint

# ---------------------------------------------------------------------------------------------
# Elementwise primitives: tensor (op) tensor.
# ---------------------------------------------------------------------------------------------
OP_ADD = _opcode(BINARY_RULE)  # a + b


@rule
def fwd_add(x, z, c):
    return x + z


@rule
def adj_add(g, x, z, y, c):
    return g, g


OP_SUB = _opcode(BINARY_RULE)  # a - b


@rule
def fwd_sub(x, z, c):
    return x - z


@rule
def adj_sub(g, x, z, y, c):
    return g, -g


OP_MUL = _opcode(BINARY_RULE)  # a * b


@rule
def fwd_mul(x, z, c):
    return x * z


@rule
def adj_mul(g, x, z, y, c):
    return g * z, g * x


OP_DIV = _opcode(BINARY_RULE)  # a / b


@rule
def fwd_div(x, z, c):
    return x / z


@rule
def adj_div(g, x, z, y, c):  # d/da = 1/b, d/db = -(a/b)/b
    return g / z, -g * y / z


OP_POW = _opcode(BINARY_RULE)  # a ** b


@rule
def fwd_pow(x, z, c):
    return x ** z


@rule
def adj_pow(g, x, z, y, c):
    # d/da = b a^(b-1) (0 where b == 0); d/db = a^b log a (0 where a == 0 and b >= 0)
    da = 0.0 if z == 0.0 else g * z * x ** (z - 1.0)
    db = 0.0 if (x == 0.0 and z >= 0.0) else g * y * math.log(x)
    return da, db


def vjp_pow(g, x, z, y, c, T):
    # adj_pow with tensors (T is tapediff).  b a^(b-1) is masked only where it is 0 * inf
    # (a == b == 0): elsewhere at b == 0 it is an exact 0 whose slope in b, a^(b-1), must
    # reach a second derivative (a where() over every b == 0 would cut it to 0).  The
    # masked elements read a = 1, so no inf reaches the slopes either.  log(1) = 0 where
    # a == 0 gives d/db its zero there without a log(0) whose infinite slope would make a
    # second derivative nan.
    zero = T.abs(x) + T.abs(z) == 0.0
    da = T.where(zero, 0.0, g * z * T.where(zero, 1.0, x) ** (z - 1.0))
    return da, g * y * T.log(T.where(x == 0.0, 1.0, x))


OP_ARCTAN2 = _opcode(BINARY_RULE)  # atan2(a, b)


@rule
def fwd_arctan2(x, z, c):
    return math.atan2(x, z)


@rule
def adj_arctan2(g, x, z, y, c):  # (b, -a) / (a^2 + b^2)
    r = x * x + z * z
    return g * z / r, -g * x / r


OP_HYPOT = _opcode(BINARY_RULE)  # sqrt(a^2 + b^2)


@rule
def fwd_hypot(x, z, c):
    return math.hypot(x, z)


@rule
def adj_hypot(g, x, z, y, c):  # (a, b) / y
    return g * x / y, g * z / y


# ---------------------------------------------------------------------------------------------
# Elementwise primitives: tensor (op) the constant parameter c.
# ---------------------------------------------------------------------------------------------
OP_ADD_C = _opcode(UNARY_RULE | LINEAR_C)  # a + c   (a - c is recorded as a + (-c): exact)


@rule
def fwd_add_c(x, z, c):
    return x + c


@rule
def adj_add_c(g, x, z, y, c):
    return g, 0.0


OP_MUL_C = _opcode(UNARY_RULE | LINEAR_C)  # a * c   (-a is a * -1)


@rule
def fwd_mul_c(x, z, c):
    return x * c


@rule
def adj_mul_c(g, x, z, y, c):
    return g * c, 0.0


OP_RSUB_C = _opcode(UNARY_RULE | LINEAR_C)  # c - a


@rule
def fwd_rsub_c(x, z, c):
    return c - x


@rule
def adj_rsub_c(g, x, z, y, c):
    return -g, 0.0


OP_DIV_C = _opcode(UNARY_RULE | LINEAR_C)  # a / c


@rule
def fwd_div_c(x, z, c):
    return x / c


@rule
def adj_div_c(g, x, z, y, c):
    return g / c, 0.0


OP_RDIV_C = _opcode(UNARY_RULE)  # c / a


@rule
def fwd_rdiv_c(x, z, c):
    return c / x


@rule
def adj_rdiv_c(g, x, z, y, c):  # d(c/a)/da = -(c/a)/a
    return -g * y / x, 0.0


OP_POW_C = _opcode(UNARY_RULE)  # a ** c


@rule
def fwd_pow_c(x, z, c):  # x * x is pow(x, 2) exactly, and much cheaper
    return x * x if c == 2.0 else x ** c


@rule
def adj_pow_c(g, x, z, y, c):  # c a^(c-1), 0 where c == 0
    if c == 2.0:
        return 2.0 * g * x, 0.0
    if c == 3.0:
        return 3.0 * g * (x * x), 0.0
    return (0.0 if c == 0.0 else g * c * x ** (c - 1.0)), 0.0


OP_RPOW_C = _opcode(UNARY_RULE)  # c ** a


@rule
def fwd_rpow_c(x, z, c):
    return c ** x


@rule
def adj_rpow_c(g, x, z, y, c):  # c^a log c
    return g * y * math.log(c), 0.0


# ---------------------------------------------------------------------------------------------
# Elementwise primitives: unary functions.  Numba's math functions give NumPy's results
# outside their domains (nan, -inf) without checks.
# ---------------------------------------------------------------------------------------------
OP_EXP = _opcode(UNARY_RULE)


@rule
def fwd_exp(x, z, c):
    return math.exp(x)


@rule
def adj_exp(g, x, z, y, c):  # d/dx e^x = y
    return g * y, 0.0


OP_LOG = _opcode(UNARY_RULE)


@rule
def fwd_log(x, z, c):
    return math.log(x)


@rule
def adj_log(g, x, z, y, c):
    return g / x, 0.0


OP_SQRT = _opcode(UNARY_RULE)


@rule
def fwd_sqrt(x, z, c):
    return math.sqrt(x)


@rule
def adj_sqrt(g, x, z, y, c):  # 1 / (2 sqrt x)
    return g * 0.5 / y, 0.0


OP_SIN = _opcode(UNARY_RULE)


@rule
def fwd_sin(x, z, c):
    return math.sin(x)


@rule
def adj_sin(g, x, z, y, c):
    return g * math.cos(x), 0.0


def vjp_sin(g, x, z, y, c, T):
    return g * x.cos(), None


OP_COS = _opcode(UNARY_RULE)


@rule
def fwd_cos(x, z, c):
    return math.cos(x)


@rule
def adj_cos(g, x, z, y, c):
    return -g * math.sin(x), 0.0


def vjp_cos(g, x, z, y, c, T):
    return -g * x.sin(), None


OP_TAN = _opcode(UNARY_RULE)


@rule
def fwd_tan(x, z, c):
    return math.tan(x)


@rule
def adj_tan(g, x, z, y, c):  # 1 + tan^2
    return g * (1.0 + y * y), 0.0


OP_TANH = _opcode(UNARY_RULE)


@rule
def fwd_tanh(x, z, c):
    return math.tanh(x)


@rule
def adj_tanh(g, x, z, y, c):  # 1 - tanh^2
    return g * (1.0 - y * y), 0.0


OP_SIGMOID = _opcode(UNARY_RULE)


@rule
def fwd_sigmoid(x, z, c):  # never overflows: 1/(1+e) for x >= 0, e/(1+e) below
    e = math.exp(-abs(x))
    return (1.0 if x >= 0.0 else e) / (1.0 + e)


@rule
def adj_sigmoid(g, x, z, y, c):  # s (1 - s)
    return g * y * (1.0 - y), 0.0


OP_RELU = _opcode(UNARY_RULE)


@rule
def fwd_relu(x, z, c):  # NaN stays NaN
    return x if x > 0.0 or x != x else 0.0


@rule
def adj_relu(g, x, z, y, c):  # 0 at 0, as PyTorch
    return (g if x > 0.0 else 0.0), 0.0


def vjp_relu(g, x, z, y, c, T):
    return T.where(x > 0.0, g, 0.0), None


OP_ABS = _opcode(UNARY_RULE)


@rule
def fwd_abs(x, z, c):
    return abs(x)


@rule
def adj_abs(g, x, z, y, c):  # sign(x), 0 at 0 (PyTorch's subgradient)
    return (g if x > 0.0 else (-g if x < 0.0 else 0.0)), 0.0


def vjp_abs(g, x, z, y, c, T):
    return T.where(x > 0.0, g, T.where(x < 0.0, -g, 0.0)), None


OP_LOG1P = _opcode(UNARY_RULE)


@rule
def fwd_log1p(x, z, c):
    return math.log1p(x)


@rule
def adj_log1p(g, x, z, y, c):
    return g / (1.0 + x), 0.0


OP_EXPM1 = _opcode(UNARY_RULE)


@rule
def fwd_expm1(x, z, c):
    return math.expm1(x)


@rule
def adj_expm1(g, x, z, y, c):  # e^x = y + 1
    return g * (y + 1.0), 0.0


OP_SINH = _opcode(UNARY_RULE | NUMPY_ADJOINT)


@rule
def fwd_sinh(x, z, c):
    return math.sinh(x)


@rule
def adj_sinh(g, x, z, y, c):
    return g * math.cosh(x), 0.0


def vjp_sinh(g, x, z, y, c, T):
    return g * x.cosh(), None


OP_COSH = _opcode(UNARY_RULE | NUMPY_ADJOINT)


@rule
def fwd_cosh(x, z, c):
    return math.cosh(x)


@rule
def adj_cosh(g, x, z, y, c):
    return g * math.sinh(x), 0.0


def vjp_cosh(g, x, z, y, c, T):
    return g * x.sinh(), None


OP_ARCSIN = _opcode(UNARY_RULE)


@rule
def fwd_arcsin(x, z, c):
    return math.asin(x)


@rule
def adj_arcsin(g, x, z, y, c):  # 1 / sqrt(1 - x^2)
    return g / math.sqrt(1.0 - x * x), 0.0


def vjp_arcsin(g, x, z, y, c, T):
    return g / (1.0 - x * x).sqrt(), None


OP_ARCCOS = _opcode(UNARY_RULE)


@rule
def fwd_arccos(x, z, c):
    return math.acos(x)


@rule
def adj_arccos(g, x, z, y, c):  # -1 / sqrt(1 - x^2)
    return -g / math.sqrt(1.0 - x * x), 0.0


def vjp_arccos(g, x, z, y, c, T):
    return -g / (1.0 - x * x).sqrt(), None


OP_ARCTAN = _opcode(UNARY_RULE)


@rule
def fwd_arctan(x, z, c):
    return math.atan(x)


@rule
def adj_arctan(g, x, z, y, c):  # 1 / (1 + x^2)
    return g / (1.0 + x * x), 0.0


OP_LOG2 = _opcode(UNARY_RULE)


@rule
def fwd_log2(x, z, c):
    return math.log2(x)


@rule
def adj_log2(g, x, z, y, c):
    return g / (x * _LN2), 0.0


OP_LOG10 = _opcode(UNARY_RULE)


@rule
def fwd_log10(x, z, c):
    return math.log10(x)


@rule
def adj_log10(g, x, z, y, c):
    return g / (x * _LN10), 0.0


OP_EXP2 = _opcode(UNARY_RULE)


@rule
def fwd_exp2(x, z, c):
    return 2.0 ** x


@rule
def adj_exp2(g, x, z, y, c):  # 2^x ln 2
    return g * y * _LN2, 0.0


OP_SOFTPLUS = _opcode(UNARY_RULE | NUMPY_ADJOINT)


@rule
def fwd_softplus(x, z, c):  # log(1 + e^x) without overflow
    return (x if x > 0.0 else 0.0) + math.log1p(math.exp(-abs(x)))


@rule
def adj_softplus(g, x, z, y, c):  # sigmoid(x) = 1 - exp(-softplus(x)), accurate via expm1
    return -g * math.expm1(-y), 0.0


def vjp_softplus(g, x, z, y, c, T):
    return -g * (-y).expm1(), None


OP_ERF = _opcode(UNARY_RULE | NUMPY_ADJOINT)


@rule
def fwd_erf(x, z, c):
    return math.erf(x)


@rule
def adj_erf(g, x, z, y, c):  # 2/sqrt(pi) e^(-x^2)
    return g * _2_SQRT_PI * math.exp(-x * x), 0.0


def vjp_erf(g, x, z, y, c, T):
    return g * _2_SQRT_PI * (-(x * x)).exp(), None


# ---------------------------------------------------------------------------------------------
# Elementwise dispatch (no maths here).  ``partials_hot``/``value_hot`` hold the rules with
# specialised array loops in the sweeps (reverse: MUL; forward: the four binary rules, ADD_C
# and MUL_C); keeping them small lets LLVM inline and fold them into each of those loops,
# where the opcode is a constant.
# ---------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def partials_hot(o, g, x, z, y, c):
    if o == OP_ADD:
        return adj_add(g, x, z, y, c)
    if o == OP_SUB:
        return adj_sub(g, x, z, y, c)
    if o == OP_MUL:
        return adj_mul(g, x, z, y, c)
    if o == OP_DIV:
        return adj_div(g, x, z, y, c)
    if o == OP_MUL_C:
        return adj_mul_c(g, x, z, y, c)
    if o == OP_POW_C:
        return adj_pow_c(g, x, z, y, c)
    return math.nan, math.nan


@njit(cache=True, nogil=True, error_model="numpy")
def partials(o, g, x, z, y, c):
    """Every elementwise reverse rule (the hot ones via ``partials_hot``)."""
    if o == OP_POW:
        return adj_pow(g, x, z, y, c)
    if o == OP_ARCTAN2:
        return adj_arctan2(g, x, z, y, c)
    if o == OP_HYPOT:
        return adj_hypot(g, x, z, y, c)
    if o == OP_ADD_C:
        return adj_add_c(g, x, z, y, c)
    if o == OP_RSUB_C:
        return adj_rsub_c(g, x, z, y, c)
    if o == OP_DIV_C:
        return adj_div_c(g, x, z, y, c)
    if o == OP_RDIV_C:
        return adj_rdiv_c(g, x, z, y, c)
    if o == OP_RPOW_C:
        return adj_rpow_c(g, x, z, y, c)
    if o == OP_EXP:
        return adj_exp(g, x, z, y, c)
    if o == OP_TANH:
        return adj_tanh(g, x, z, y, c)
    if o == OP_SIGMOID:
        return adj_sigmoid(g, x, z, y, c)
    if o == OP_RELU:
        return adj_relu(g, x, z, y, c)
    if o == OP_LOG:
        return adj_log(g, x, z, y, c)
    if o == OP_SQRT:
        return adj_sqrt(g, x, z, y, c)
    if o == OP_SIN:
        return adj_sin(g, x, z, y, c)
    if o == OP_COS:
        return adj_cos(g, x, z, y, c)
    if o == OP_TAN:
        return adj_tan(g, x, z, y, c)
    if o == OP_ABS:
        return adj_abs(g, x, z, y, c)
    if o == OP_LOG1P:
        return adj_log1p(g, x, z, y, c)
    if o == OP_EXPM1:
        return adj_expm1(g, x, z, y, c)
    if o == OP_SINH:
        return adj_sinh(g, x, z, y, c)
    if o == OP_COSH:
        return adj_cosh(g, x, z, y, c)
    if o == OP_ARCSIN:
        return adj_arcsin(g, x, z, y, c)
    if o == OP_ARCCOS:
        return adj_arccos(g, x, z, y, c)
    if o == OP_ARCTAN:
        return adj_arctan(g, x, z, y, c)
    if o == OP_LOG2:
        return adj_log2(g, x, z, y, c)
    if o == OP_LOG10:
        return adj_log10(g, x, z, y, c)
    if o == OP_EXP2:
        return adj_exp2(g, x, z, y, c)
    if o == OP_SOFTPLUS:
        return adj_softplus(g, x, z, y, c)
    if o == OP_ERF:
        return adj_erf(g, x, z, y, c)
    return partials_hot(o, g, x, z, y, c)


@njit(cache=True, nogil=True, error_model="numpy")
def value_hot(o, x, z, c):
    if o == OP_ADD:
        return fwd_add(x, z, c)
    if o == OP_SUB:
        return fwd_sub(x, z, c)
    if o == OP_MUL:
        return fwd_mul(x, z, c)
    if o == OP_DIV:
        return fwd_div(x, z, c)
    if o == OP_ADD_C:
        return fwd_add_c(x, z, c)
    if o == OP_MUL_C:
        return fwd_mul_c(x, z, c)
    return math.nan


@njit(cache=True, nogil=True, error_model="numpy")
def value(o, x, z, c):
    """Every elementwise forward rule (the hot ones via ``value_hot``)."""
    if o == OP_POW:
        return fwd_pow(x, z, c)
    if o == OP_ARCTAN2:
        return fwd_arctan2(x, z, c)
    if o == OP_HYPOT:
        return fwd_hypot(x, z, c)
    if o == OP_RSUB_C:
        return fwd_rsub_c(x, z, c)
    if o == OP_DIV_C:
        return fwd_div_c(x, z, c)
    if o == OP_RDIV_C:
        return fwd_rdiv_c(x, z, c)
    if o == OP_POW_C:
        return fwd_pow_c(x, z, c)
    if o == OP_RPOW_C:
        return fwd_rpow_c(x, z, c)
    if o == OP_EXP:
        return fwd_exp(x, z, c)
    if o == OP_TANH:
        return fwd_tanh(x, z, c)
    if o == OP_LOG:
        return fwd_log(x, z, c)
    if o == OP_SQRT:
        return fwd_sqrt(x, z, c)
    if o == OP_SIN:
        return fwd_sin(x, z, c)
    if o == OP_COS:
        return fwd_cos(x, z, c)
    if o == OP_TAN:
        return fwd_tan(x, z, c)
    if o == OP_SIGMOID:
        return fwd_sigmoid(x, z, c)
    if o == OP_RELU:
        return fwd_relu(x, z, c)
    if o == OP_ABS:
        return fwd_abs(x, z, c)
    if o == OP_LOG1P:
        return fwd_log1p(x, z, c)
    if o == OP_EXPM1:
        return fwd_expm1(x, z, c)
    if o == OP_SINH:
        return fwd_sinh(x, z, c)
    if o == OP_COSH:
        return fwd_cosh(x, z, c)
    if o == OP_ARCSIN:
        return fwd_arcsin(x, z, c)
    if o == OP_ARCCOS:
        return fwd_arccos(x, z, c)
    if o == OP_ARCTAN:
        return fwd_arctan(x, z, c)
    if o == OP_LOG2:
        return fwd_log2(x, z, c)
    if o == OP_LOG10:
        return fwd_log10(x, z, c)
    if o == OP_EXP2:
        return fwd_exp2(x, z, c)
    if o == OP_SOFTPLUS:
        return fwd_softplus(x, z, c)
    if o == OP_ERF:
        return fwd_erf(x, z, c)
    return value_hot(o, x, z, c)


# ---------------------------------------------------------------------------------------------
# Elementwise array loops.  At the specialised call sites the opcode is a constant, so the
# ``*_hot`` dispatch folds away and the loop vectorises; the ``*_any`` loops serve the rest,
# with one loop for each common unary rule (whose libm call dominates: no dispatch per
# element; compiled once, on first use) and the rarest through the dispatch per element.
# ---------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _vector_value(o, val, oo, oa, ob, nn, ma, mb, c, generic=False):
    """y[k] = fwd(x[k & ma], z[k & mb]) over a record of nn elements."""
    y = val[oo:oo + nn]
    x = val[oa:]
    z = val[ob:]
    for k in range(nn):
        if generic:
            y[k] = value(o, x[k & ma], z[k & mb], c)
        else:
            y[k] = value_hot(o, x[k & ma], z[k & mb], c)


@njit(cache=True, nogil=True, error_model="numpy")
def _vector_value_any(o, val, oo, oa, ob, nn, ma, mb, c):
    """``_vector_value`` for the rules without a specialised loop in ``forward_sweep``."""
    y = val[oo:oo + nn]
    x = val[oa:oa + nn] if ma else val[oa:oa + 1]
    if o == OP_EXP:
        for k in range(nn):
            y[k] = fwd_exp(x[k & ma], 0.0, c)
    elif o == OP_TANH:
        for k in range(nn):
            y[k] = fwd_tanh(x[k & ma], 0.0, c)
    elif o == OP_LOG:
        for k in range(nn):
            y[k] = fwd_log(x[k & ma], 0.0, c)
    elif o == OP_SQRT:
        for k in range(nn):
            y[k] = fwd_sqrt(x[k & ma], 0.0, c)
    elif o == OP_SIN:
        for k in range(nn):
            y[k] = fwd_sin(x[k & ma], 0.0, c)
    elif o == OP_COS:
        for k in range(nn):
            y[k] = fwd_cos(x[k & ma], 0.0, c)
    elif o == OP_SIGMOID:
        for k in range(nn):
            y[k] = fwd_sigmoid(x[k & ma], 0.0, c)
    elif o == OP_RELU:
        for k in range(nn):
            y[k] = fwd_relu(x[k & ma], 0.0, c)
    elif o == OP_ABS:
        for k in range(nn):
            y[k] = fwd_abs(x[k & ma], 0.0, c)
    elif o == OP_LOG1P:
        for k in range(nn):
            y[k] = fwd_log1p(x[k & ma], 0.0, c)
    elif o == OP_SOFTPLUS:
        for k in range(nn):
            y[k] = fwd_softplus(x[k & ma], 0.0, c)
    elif o == OP_RSUB_C:
        for k in range(nn):
            y[k] = fwd_rsub_c(x[k & ma], 0.0, c)
    elif o == OP_DIV_C:
        for k in range(nn):
            y[k] = fwd_div_c(x[k & ma], 0.0, c)
    elif o == OP_RDIV_C:
        for k in range(nn):
            y[k] = fwd_rdiv_c(x[k & ma], 0.0, c)
    elif o == OP_POW_C and c == 2.0:  # the exponent fwd_pow_c singles out, as a constant
        for k in range(nn):
            y[k] = fwd_pow_c(x[k & ma], 0.0, 2.0)
    else:
        _vector_value(o, val, oo, oa, ob, nn, ma, mb, c, True)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _vector_rule(o, val, adj, oo, oa, ob, go, ga_, gb_, nn, ma, mb, ga, gb, fa, fb, c,
                 generic=False):
    """A reverse rule over a record of nn > 1 elements (``generic``: any rule, through
    ``partials``, one call per element).  Values at ``oo``/``oa``/``ob``, adjoints at
    ``go``/``ga_``/``gb_``.  A size-1 operand is read with mask 0; its adjoint accumulates
    all nn contributions.  ``fa``/``fb``: first touch of a full-size input, whose adjoint is
    assigned, not added."""
    g = adj[go:go + nn]
    y = val[oo:oo + nn]
    x = val[oa:]
    z = val[ob:]
    da = adj[ga_:]
    db = adj[gb_:]
    for k in range(nn):
        if generic:
            pa, pb = partials(o, g[k], x[k & ma], z[k & mb], y[k], c)
        else:
            pa, pb = partials_hot(o, g[k], x[k & ma], z[k & mb], y[k], c)
        if fa:
            da[k] = pa
        elif ga:
            da[k & ma] += pa
        if fb:
            db[k] = pb
        elif gb:
            db[k & mb] += pb


@njit(cache=True, nogil=True, error_model="numpy")
def _scaled_adjoint(adj, go, gi, nn, mi, fi, s):
    """An input's adjoint at ``gi`` gets ``s`` times the nn-element adjoint at ``go``:
    assigned on a first touch (``fi``), added otherwise; a size-1 input (mask ``mi`` 0)
    sums all nn.  Multiplying by 1 or -1 is exact."""
    g = adj[go:go + nn]
    d = adj[gi:]
    if fi:
        for k in range(nn):
            d[k] = s * g[k]
    elif mi == 0:  # (a running sum: added one by one into the arena, the contributions
        acc = 0.0  # form a chain through memory, 4.2 ns an element against ~1)
        for k in range(nn):
            acc += g[k]
        d[0] += s * acc
    else:
        for k in range(nn):
            d[k] += s * g[k]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _put(da, k, ma, pa, fa):
    if fa:
        da[k] = pa
    else:
        da[k & ma] += pa


@njit(cache=True, nogil=True, error_model="numpy")
def _vector_rule_any(o, val, adj, oo, oa, ob, go, ga_, gb_, nn, ma, mb, ga, gb, fa, fb, c):
    """``_vector_rule`` for the rules without a specialised loop in ``reverse_sweep``."""
    if ob == oa and ga and not gb and TRAITS[o] & ONE_INPUT:  # a unary rule
        g = adj[go:go + nn]
        y = val[oo:oo + nn]
        x = val[oa:]
        da = adj[ga_:]
        if o == OP_EXP:
            for k in range(nn):
                _put(da, k, ma, adj_exp(g[k], x[k & ma], 0.0, y[k], c)[0], fa)
            return
        if o == OP_TANH:
            for k in range(nn):
                _put(da, k, ma, adj_tanh(g[k], x[k & ma], 0.0, y[k], c)[0], fa)
            return
        if o == OP_SIGMOID:
            for k in range(nn):
                _put(da, k, ma, adj_sigmoid(g[k], x[k & ma], 0.0, y[k], c)[0], fa)
            return
        if o == OP_RELU:
            for k in range(nn):
                _put(da, k, ma, adj_relu(g[k], x[k & ma], 0.0, y[k], c)[0], fa)
            return
        if o == OP_LOG:
            for k in range(nn):
                _put(da, k, ma, adj_log(g[k], x[k & ma], 0.0, y[k], c)[0], fa)
            return
        if o == OP_SQRT:
            for k in range(nn):
                _put(da, k, ma, adj_sqrt(g[k], x[k & ma], 0.0, y[k], c)[0], fa)
            return
        if o == OP_SIN:
            for k in range(nn):
                _put(da, k, ma, adj_sin(g[k], x[k & ma], 0.0, y[k], c)[0], fa)
            return
        if o == OP_COS:
            for k in range(nn):
                _put(da, k, ma, adj_cos(g[k], x[k & ma], 0.0, y[k], c)[0], fa)
            return
        if o == OP_ABS:
            for k in range(nn):
                _put(da, k, ma, adj_abs(g[k], x[k & ma], 0.0, y[k], c)[0], fa)
            return
        if o == OP_LOG1P:
            for k in range(nn):
                _put(da, k, ma, adj_log1p(g[k], x[k & ma], 0.0, y[k], c)[0], fa)
            return
        if o == OP_SOFTPLUS:
            for k in range(nn):
                _put(da, k, ma, adj_softplus(g[k], x[k & ma], 0.0, y[k], c)[0], fa)
            return
        if o == OP_POW_C:
            for k in range(nn):
                _put(da, k, ma, adj_pow_c(g[k], x[k & ma], 0.0, y[k], c)[0], fa)
            return
    _vector_rule(o, val, adj, oo, oa, ob, go, ga_, gb_, nn, ma, mb, ga, gb, fa, fb, c, True)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _term(p, d):
    """A partial times a tangent, 0 for a zero tangent even where the partial is infinite or
    NaN (sqrt at 0, a power's slope in a negative base): an input that does not move adds
    nothing, as it gets no adjoint in reverse mode."""
    return p * d if d != 0.0 else 0.0


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _vector_tangent(o, val, tan, oo, oa, ob, nn, ma, mb, ga, gb, c, generic=False):
    """dy[k] = pa dx[k & ma] + pb dz[k & mb] over a record of nn elements, with (pa, pb)
    the rule's partials (its reverse rule at g = 1; ``generic``: any rule, through
    ``partials``).  An input without a tangent (``ga``/``gb`` false: a constant, or the
    absent b of a unary rule) adds nothing, nor does a zero tangent (``_term``)."""
    dy = tan[oo:oo + nn]
    y = val[oo:oo + nn]
    x = val[oa:]
    z = val[ob:]
    dx = tan[oa:]
    dz = tan[ob:]
    for k in range(nn):
        if generic:
            pa, pb = partials(o, 1.0, x[k & ma], z[k & mb], y[k], c)
        else:
            pa, pb = partials_hot(o, 1.0, x[k & ma], z[k & mb], y[k], c)
        t = 0.0
        if ga:
            t += _term(pa, dx[k & ma])
        if gb:
            t += _term(pb, dz[k & mb])
        dy[k] = t


@njit(cache=True, nogil=True, error_model="numpy")
def _vector_tangent_any(o, val, tan, oo, oa, ob, nn, ma, mb, ga, gb, c):
    """``_vector_tangent`` for the rules without a specialised loop in ``tangent_sweep``: the
    common unary rules get a loop each (as in ``_vector_rule_any``), the rest the dispatch
    per element."""
    if ga and not gb and TRAITS[o] & ONE_INPUT:
        dy = tan[oo:oo + nn]
        y = val[oo:oo + nn]
        x = val[oa:]
        dx = tan[oa:]
        if o == OP_EXP:
            for k in range(nn):
                dy[k] = _term(adj_exp(1.0, x[k & ma], 0.0, y[k], c)[0], dx[k & ma])
            return
        if o == OP_TANH:
            for k in range(nn):
                dy[k] = _term(adj_tanh(1.0, x[k & ma], 0.0, y[k], c)[0], dx[k & ma])
            return
        if o == OP_SIGMOID:
            for k in range(nn):
                dy[k] = _term(adj_sigmoid(1.0, x[k & ma], 0.0, y[k], c)[0], dx[k & ma])
            return
        if o == OP_RELU:
            for k in range(nn):
                dy[k] = _term(adj_relu(1.0, x[k & ma], 0.0, y[k], c)[0], dx[k & ma])
            return
        if o == OP_LOG:
            for k in range(nn):
                dy[k] = _term(adj_log(1.0, x[k & ma], 0.0, y[k], c)[0], dx[k & ma])
            return
        if o == OP_SQRT:
            for k in range(nn):
                dy[k] = _term(adj_sqrt(1.0, x[k & ma], 0.0, y[k], c)[0], dx[k & ma])
            return
        if o == OP_SIN:
            for k in range(nn):
                dy[k] = _term(adj_sin(1.0, x[k & ma], 0.0, y[k], c)[0], dx[k & ma])
            return
        if o == OP_COS:
            for k in range(nn):
                dy[k] = _term(adj_cos(1.0, x[k & ma], 0.0, y[k], c)[0], dx[k & ma])
            return
        if o == OP_ABS:
            for k in range(nn):
                dy[k] = _term(adj_abs(1.0, x[k & ma], 0.0, y[k], c)[0], dx[k & ma])
            return
        if o == OP_LOG1P:
            for k in range(nn):
                dy[k] = _term(adj_log1p(1.0, x[k & ma], 0.0, y[k], c)[0], dx[k & ma])
            return
        if o == OP_SOFTPLUS:
            for k in range(nn):
                dy[k] = _term(adj_softplus(1.0, x[k & ma], 0.0, y[k], c)[0], dx[k & ma])
            return
    _vector_tangent(o, val, tan, oo, oa, ob, nn, ma, mb, ga, gb, c, True)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def chunking(meta, m, nn, ma, mb):
    """(chunk length, mask of a, mask of b) of an elementwise record of nn elements whose
    side-table block is at ``m``: its broadcast layout's, or one chunk of nn (m < 0)."""
    if m >= 0:
        return meta[m + 2], meta[m + 3], meta[m + 4]
    return nn, ma, mb


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def chunk_offsets(meta, m, t):
    """The offsets of operands a and b in chunk ``t`` of the elementwise record whose
    broadcast layout is at ``meta[m]`` (see the module docstring); 0, 0 without one."""
    if m < 0:
        return 0, 0
    nd = meta[m + 1]
    pa = 0
    pb = 0
    for d in range(nd - 1, -1, -1):
        s = meta[m + 5 + d]
        q = t % s
        t //= s
        pa += q * meta[m + 5 + nd + d]
        pb += q * meta[m + 5 + 2 * nd + d]
    return pa, pb


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def chunk_next(meta, m, t, r, ca, cb):
    """The offsets of operands a and b in chunk t + 1 of the broadcast layout at ``meta[m]``,
    from those of chunk t (``ca``, ``cb``) and t's index ``r`` along the last outer
    dimension; returns them with t + 1's index there.  Steps by that dimension's strides
    and divides (``chunk_offsets``) only where it wraps: a division per chunk costs ~8 ns,
    as much as a chunk of 10 elements (GMM's (K, n, d) - (K, 1, d) at d = 10)."""
    nd = meta[m + 1]
    r += 1
    if r < meta[m + 4 + nd]:
        return ca + meta[m + 4 + 2 * nd], cb + meta[m + 4 + 3 * nd], r
    pa, pb = chunk_offsets(meta, m, t + 1)
    return pa, pb, 0


def broadcast_payloads(layout) -> list:
    """The OP_RESTRIDE payloads (``restride_payload``'s form) that write operands a and b of
    a broadcast layout (its payload, without the length) out to the record's size."""
    nd, length = int(layout[0]), int(layout[1])
    shape = [int(v) for v in layout[4:4 + nd]] + [length]
    out = []
    for j in (0, 1):
        strides = [int(v) for v in layout[4 + (j + 1) * nd:4 + (j + 2) * nd]]
        out.append([nd + 1, 0, 1, *shape, *strides, 1 if layout[2 + j] else 0])
    return out


# ---------------------------------------------------------------------------------------------
# Layout: OP_RESTRIDE, a strided gather (slicing, broadcasting, transposes) or sum (axis sums,
# the adjoint of a broadcast).  Its adjoint is the one place broadcasts are summed back.
# ---------------------------------------------------------------------------------------------
OP_RESTRIDE = _opcode()


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _advance(idx, shp, st, base, last):
    """Step the multi-index ``idx`` (dimensions 0..last, C order) and return the new input
    position ``base`` (strides ``st``)."""
    j = last
    while j >= 0:
        idx[j] += 1
        base += st[j]
        if idx[j] < shp[j]:
            return base
        base -= st[j] * shp[j]
        idx[j] = 0
        j -= 1
    return base


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _layout(meta, m):
    """A restride payload (see ``adj_restride``) as (ndim, start, R, shape, strides,
    number of elements iterated)."""
    d = meta[m + 1]
    shp = meta[m + 4:m + 4 + d]
    total = 1
    for j in range(d):
        total *= shp[j]
    return d, meta[m + 2], meta[m + 3], shp, meta[m + 4 + d:m + 4 + 2 * d], total


@njit(cache=True, nogil=True, error_model="numpy")
def adj_restride(meta, m, adj, oo, oa, assign=False):
    """adj_in[pos(k)] += adj_out[k // R] over the record's strided iteration space (``=``
    with ``assign``: a layout that reads each input element once, at its first touch).

    Payload at meta[m+1:]: ndim, start, R, shape[ndim], strides[ndim] (in elements of the
    input's flat layout).  The iteration runs over ``shape`` in C order; element k reads the
    input at ``start + sum(idx_d * strides_d)`` and belongs to output element ``k // R``
    (R > 1 when trailing dimensions are summed).

    Inner loops index with unsigned integers: a signed computed index (``base + t``) makes
    Numba test it for a negative wrap-around, which stops LLVM vectorising (3x slower).  A
    negative stride wraps modulo 2^64 to the same position.
    """
    d, start, r, shp, st, total = _layout(meta, m)
    inner = shp[d - 1]
    if total == 0:
        return
    ui = uint64(inner)
    us = uint64(st[d - 1])  # (a negative stride wraps: the sums below wrap back)
    unit = st[d - 1] == 1
    g = adj[oo:]
    a = adj[oa:]
    idx = np.zeros(d, np.int64)
    base = start
    k = 0
    for _ in range(total // inner):
        ub = uint64(base)
        uk = uint64(k)
        if r == 1:
            if assign and unit:
                for t in range(ui):
                    a[ub + t] = g[uk + t]
            elif assign:
                for t in range(ui):
                    a[ub + t * us] = g[uk + t]
            elif unit:
                for t in range(ui):
                    a[ub + t] += g[uk + t]
            else:
                for t in range(ui):
                    a[ub + t * us] += g[uk + t]
        else:
            # summed axes are the trailing ones, so r is a multiple of inner: one output
            # element per inner run
            gk = g[k // r]
            if assign and unit:
                for t in range(ui):
                    a[ub + t] = gk
            elif assign:
                for t in range(ui):
                    a[ub + t * us] = gk
            elif unit:
                for t in range(ui):
                    a[ub + t] += gk
            else:
                for t in range(ui):
                    a[ub + t * us] += gk
        k += inner
        base = _advance(idx, shp, st, base, d - 2)  # over the outer dimensions


@njit(cache=True, nogil=True, error_model="numpy")
def fwd_restride(meta, m, val, oo, oa, nn):
    """Forward of ``adj_restride``: out[k // R] (+)= in[pos(k)], in the same strided
    iteration (no position array; unsigned inner indices, as there)."""
    d, start, r, shp, st, total = _layout(meta, m)
    inner = shp[d - 1]
    y = val[oo:oo + nn]
    if r > 1:
        y[:] = 0.0
    if total == 0:
        return
    ui = uint64(inner)
    us = uint64(st[d - 1])
    unit = st[d - 1] == 1
    x = val[oa:]
    idx = np.zeros(d, np.int64)
    base = start
    k = 0
    for _ in range(total // inner):
        ub = uint64(base)
        uk = uint64(k)
        if r == 1:
            if unit:
                for t in range(ui):
                    y[uk + t] = x[ub + t]
            else:
                for t in range(ui):
                    y[uk + t] = x[ub + t * us]
        else:  # one output element per inner run (r is a multiple of inner)
            acc = 0.0
            if unit:
                for t in range(ui):
                    acc += x[ub + t]
            else:
                for t in range(ui):
                    acc += x[ub + t * us]
            y[k // r] += acc
        k += inner
        base = _advance(idx, shp, st, base, d - 2)


@njit(cache=True, nogil=True, error_model="numpy")
def _starts(meta, m, last):
    """The input positions of the restride layout at ``meta[m]`` stepped over its dimensions
    0 .. last only, in iteration order: the start of each run of the dimensions after."""
    d, start, _, shp, st, _ = _layout(meta, m)
    count = 1
    for j in range(last + 1):
        count *= shp[j]
    pos = np.empty(count, np.int64)
    idx = np.zeros(d, np.int64)
    base = start
    for k in range(count):
        pos[k] = base
        base = _advance(idx, shp, st, base, last)
    return pos


@njit(cache=True, nogil=True, error_model="numpy")
def restride_positions(meta, m):
    """The input position of every element of a restride layout, in iteration order."""
    return _starts(meta, m, meta[m + 1] - 1)


# ---------------------------------------------------------------------------------------------
# Reductions beyond sums: product, max/min (restride layouts with R > 1).
# ---------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def group_positions(meta, m):
    """(pos, rs, ts, ps, across): element t of group j of the reduction layout at
    ``meta[m]`` (R elements per group) is at ``pos[j * rs + t * ts] + t * ps``.  A group
    that is one run along the layout's last dimension (``x.max(axis=0)`` of a matrix, any
    reduction of one axis) needs only its start: pos holds one entry per group, ps is the
    run's stride.  Otherwise pos holds every element's position (``restride_positions``).

    Where the runs are strided (``x.max(axis=0)``: ``across``), the rules visit the input in
    its own order, all groups a step at a time (``_element``): a group at a time read
    (200, 10,000).max(axis=0)'s column of 200 elements 80 KB apart, which all fall in one
    cache set (16 ns an element)."""
    d, _, r, shp, st, _ = _layout(meta, m)
    if r > 0 and shp[d - 1] == r:
        return _starts(meta, m, d - 2), 1, 0, st[d - 1], st[d - 1] != 1
    return _starts(meta, m, d - 1), r, 1, 0, False


OP_PROD = _opcode(LATE_RULE)  # product over groups of R elements


@njit(cache=True, nogil=True, error_model="numpy")
def adj_prod(meta, m, val, adj, oo, oa, go, ga_, nn):
    """Product over groups of R elements: d/dx_i = g * prod_{j != i} x_j, from exclusive
    prefix and suffix products, so zeros in the group are handled exactly."""
    r = meta[m + 3]
    pos = restride_positions(meta, m)
    x = val[oa:]
    a = adj[ga_:]
    pre = np.empty(r, val.dtype)
    for j in range(nn):
        g = adj[go + j]
        acc = 1.0
        for t in range(r):
            pre[t] = acc
            acc *= x[pos[j * r + t]]
        acc = 1.0
        for t in range(r - 1, -1, -1):
            q = pos[j * r + t]
            a[q] += g * pre[t] * acc
            acc *= x[q]


@njit(cache=True, nogil=True, error_model="numpy")
def fwd_prod(meta, m, val, oo, oa, nn):
    """Forward of ``adj_prod``: the product of each group of R elements."""
    r = meta[m + 3]
    pos = restride_positions(meta, m)
    x = val[oa:]
    for j in range(nn):
        acc = 1.0
        for t in range(r):
            acc *= x[pos[j * r + t]]
        val[oo + j] = acc


@njit(cache=True, nogil=True, error_model="numpy")
def tan_prod(meta, m, val, tan, oo, oa, nn):
    """Tangent of ``fwd_prod``: the product rule applied along each group, (p, dp) <- (p x,
    dp x + p dx), so zeros in the group are handled exactly (no division)."""
    r = meta[m + 3]
    pos = restride_positions(meta, m)
    x = val[oa:]
    dx = tan[oa:]
    for j in range(nn):
        p = 1.0
        dp = 0.0
        for t in range(r):
            q = pos[j * r + t]
            dp = dp * x[q] + p * dx[q]
            p *= x[q]
        tan[oo + j] = dp


OP_EXTREME = _opcode(LATE_RULE)  # max (p = 1) or min (p = -1) over groups; ties share the adjoint


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _element(pos, rs, ts, ps, across, u, w):
    """(group j, position of its element t) at step (u, w) of a double loop over a
    reduction layout's elements (``group_positions``): groups outer and their elements
    inner, or, ``across`` (strided runs), elements outer and groups inner, which visits the
    input in its own order."""
    j = w if across else u
    t = u if across else w
    return j, pos[j * rs + t * ts] + t * ps


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _attains(v, y):
    """Whether element v attains its group's extreme y (NaN attains a NaN extreme)."""
    return v == y or (v != v and y != y)


@njit(cache=True, nogil=True, error_model="numpy")
def fwd_extreme(meta, m, val, oo, oa, nn, sign):
    """Max (sign 1) or min (sign -1) of each group of R elements; NaN wins, as in NumPy."""
    r = meta[m + 3]
    pos, rs, ts, ps, across = group_positions(meta, m)
    x = val[oa:]
    y = val[oo:oo + nn]
    for j in range(nn):
        y[j] = x[pos[j * rs]]
    for u in range(r if across else nn):
        for w in range(nn if across else r):
            j, q = _element(pos, rs, ts, ps, across, u, w)
            v = x[q]
            if v != v or (v - y[j]) * sign > 0.0:  # (once NaN, y compares False: kept)
                y[j] = v


@njit(cache=True, nogil=True, error_model="numpy")
def adj_extreme(meta, m, val, adj, oo, oa, go, ga_, nn):
    """The adjoint of a group's extreme goes to the elements equal to it, in equal shares."""
    r = meta[m + 3]
    pos, rs, ts, ps, across = group_positions(meta, m)
    x = val[oa:]
    a = adj[ga_:]
    y = val[oo:oo + nn]
    cnt = np.zeros(nn, np.int64)
    for u in range(r if across else nn):
        for w in range(nn if across else r):
            j, q = _element(pos, rs, ts, ps, across, u, w)
            if _attains(x[q], y[j]):
                cnt[j] += 1
    for u in range(r if across else nn):
        for w in range(nn if across else r):
            j, q = _element(pos, rs, ts, ps, across, u, w)
            if _attains(x[q], y[j]):
                a[q] += adj[go + j] / max(cnt[j], 1)


@njit(cache=True, nogil=True, error_model="numpy")
def tan_extreme(meta, m, val, tan, oo, oa, nn):
    """Tangent of a group's extreme: the mean of the tangents of the elements equal to it
    (the transpose of ``adj_extreme``'s equal shares)."""
    r = meta[m + 3]
    pos, rs, ts, ps, across = group_positions(meta, m)
    x = val[oa:]
    dx = tan[oa:]
    y = val[oo:oo + nn]
    cnt = np.zeros(nn, np.int64)
    acc = np.zeros(nn)
    for u in range(r if across else nn):
        for w in range(nn if across else r):
            j, q = _element(pos, rs, ts, ps, across, u, w)
            if _attains(x[q], y[j]):
                cnt[j] += 1
                acc[j] += dx[q]
    for j in range(nn):
        tan[oo + j] = acc[j] / max(cnt[j], 1)


# ---------------------------------------------------------------------------------------------
# Scans along the middle axis of (outer, length, inner): payload outer, length, inner.
# ---------------------------------------------------------------------------------------------
OP_CUMSUM = _opcode(LATE_RULE)
OP_CUMPROD = _opcode(LATE_RULE)


@njit(cache=True, nogil=True, error_model="numpy")
def fwd_scan(o, meta, m, val, oo, oa):
    """Forward of ``adj_scan``: running sum or product along the middle axis."""
    outer = meta[m + 1]
    ln = meta[m + 2]
    inner = meta[m + 3]
    y = val[oo:]
    x = val[oa:]
    for u in range(outer):
        for q in range(inner):
            b = u * ln * inner + q
            acc = 0.0 if o == OP_CUMSUM else 1.0
            for i in range(ln):
                if o == OP_CUMSUM:
                    acc += x[b + i * inner]
                else:
                    acc *= x[b + i * inner]
                y[b + i * inner] = acc


@njit(cache=True, nogil=True, error_model="numpy")
def adj_scan(o, meta, m, val, adj, oo, oa, go, ga_):
    """Reverse rules of cumsum and cumprod along the middle axis of (outer, length, inner)."""
    outer = meta[m + 1]
    ln = meta[m + 2]
    inner = meta[m + 3]
    g = adj[go:]
    y = val[oo:]
    x = val[oa:]
    a = adj[ga_:]
    for u in range(outer):
        for q in range(inner):
            b = u * ln * inner + q
            if o == OP_CUMSUM:  # d/dx_i = sum_{k >= i} g_k
                acc = 0.0
                for i in range(ln - 1, -1, -1):
                    acc += g[b + i * inner]
                    a[b + i * inner] += acc
                continue
            # cumprod: d/dx_i = y_{i-1} * S_i with S_i = sum_{k>=i} g_k prod_{i<j<=k} x_j,
            # so S_i = g_i + x_{i+1} S_{i+1}: no division, exact with zeros and subnormals
            acc = 0.0
            for i in range(ln - 1, -1, -1):
                if i < ln - 1:
                    acc *= x[b + (i + 1) * inner]
                acc += g[b + i * inner]
                a[b + i * inner] += acc * (1.0 if i == 0 else y[b + (i - 1) * inner])


@njit(cache=True, nogil=True, error_model="numpy")
def tan_cumprod(meta, m, val, tan, oo, oa):
    """Tangent of cumprod along the middle axis: dy_i = dy_{i-1} x_i + y_{i-1} dx_i (the
    product rule step by step: exact with zeros).  Cumsum's tangent is its forward rule."""
    outer = meta[m + 1]
    ln = meta[m + 2]
    inner = meta[m + 3]
    dy = tan[oo:]
    x = val[oa:]
    dx = tan[oa:]
    for u in range(outer):
        for q in range(inner):
            b = u * ln * inner + q
            p = 1.0
            dp = 0.0
            for i in range(ln):
                xi = x[b + i * inner]
                dp = dp * xi + p * dx[b + i * inner]
                p *= xi
                dy[b + i * inner] = dp


# ---------------------------------------------------------------------------------------------
# Joins: OP_CONCAT, inputs listed in the side table, joined along an axis.
# ---------------------------------------------------------------------------------------------
OP_CONCAT = _opcode(META_INPUTS)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _gets_adjoint(op, flag, s):
    """Whether slot ``s`` receives adjoints: not a constant, nor flagged as one."""
    return op[s] != OP_CONST and not flag[s] & FLAG_CONSTANT


@njit(cache=True, nogil=True, error_model="numpy")
def adj_concat(meta, m, op, off, n, flag, adj, oo, touched):
    """Hand each input of a concatenation its part of the output's adjoint.

    Payload: count k, slots[k], outer.  In C order the output is (outer, row) and input j
    is (outer, w_j) with w_j = n_j / outer, placed at column sum_{i<j} w_i of each row.  An
    input's first touch assigns (each of its elements is written once)."""
    k = meta[m + 1]
    outer = meta[m + 2 + k]
    if outer == 0:  # empty: nothing to hand out, but the inputs were reached
        for j in range(k):
            touched[meta[m + 2 + j]] = 1
        return
    row = 0
    for j in range(k):
        row += n[meta[m + 2 + j]] // outer
    g = adj[oo:]
    col = 0
    for j in range(k):
        s = meta[m + 2 + j]
        w = n[s] // outer
        if _gets_adjoint(op, flag, s):
            a = adj[off[s]:]
            first = touched[s] == 0
            for u in range(outer):
                # unsigned positions: a signed computed index keeps Numba's wrap-around test,
                # which stops LLVM vectorising the copy (see adj_restride)
                ua = uint64(u * w)
                ug = uint64(u * row + col)
                if first:
                    for t in range(uint64(w)):
                        a[ua + t] = g[ug + t]
                else:
                    for t in range(uint64(w)):
                        a[ua + t] += g[ug + t]
            touched[s] = 1
        col += w


@njit(cache=True, nogil=True, error_model="numpy")
def fwd_concat(meta, m, off, n, val, oo):
    """Forward of ``adj_concat``: each input's rows placed side by side."""
    k = meta[m + 1]
    outer = meta[m + 2 + k]
    if outer == 0:
        return
    row = 0
    for j in range(k):
        row += n[meta[m + 2 + j]] // outer
    y = val[oo:]
    col = 0
    for j in range(k):
        s = meta[m + 2 + j]
        w = n[s] // outer
        x = val[off[s]:]
        for u in range(outer):
            ux = uint64(u * w)
            uy = uint64(u * row + col)
            for t in range(uint64(w)):
                y[uy + t] = x[ux + t]
        col += w


# ---------------------------------------------------------------------------------------------
# Selection: gathers and scatters through an index payload, where.
# ---------------------------------------------------------------------------------------------
# out = take(a, idx, axis): a seen as (outer, length, inner), out as (outer, count, inner) with
# out[o, r, :] = a[o, idx[r], :].  Payload: count, outer, length, inner, idx (count entries).
# Advanced indexing along one axis (``cams[rows]``, ``a[:, [1, 2, 0]]``) stores one index
# per row; any other selection (masks, several index arrays, repeat, roll) is a take from
# the flattened input (outer = inner = 1), one index per element.
OP_GATHER = _opcode()


def gather_index(payload: np.ndarray) -> np.ndarray:
    """The flat input position of each output element of a gather payload (Python side)."""
    count, outer, length, inner = (int(v) for v in payload[:4])
    idx = np.asarray(payload[4:4 + count], np.int64)
    rows = np.arange(outer, dtype=np.int64)[:, None, None] * length + idx[None, :, None]
    return (rows * inner + np.arange(inner, dtype=np.int64)).reshape(-1)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _take(meta, m, x, oo, oa, transpose):
    """out[k] = a[pos(k)] over a take payload (output at ``oo``, input at ``oa`` of ``x``),
    or with ``transpose`` (a constant at each call site) its transpose a[pos(k)] += out[k]."""
    count, outer, length, inner = meta[m + 1], meta[m + 2], meta[m + 3], meta[m + 4]
    # unsigned indices: no wrap-around test per element (see adj_restride)
    ui = uint64(inner)
    k = uint64(oo)
    for o in range(outer):
        base = oa + o * length * inner
        for r in range(count):
            p = uint64(base + meta[m + 5 + r] * inner)
            for j in range(ui):
                if transpose:
                    x[p + j] += x[k + j]
                else:
                    x[k + j] = x[p + j]
            k += ui


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def fwd_gather(meta, m, val, oo, oa, nn):
    _take(meta, m, val, oo, oa, False)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def adj_gather(meta, m, adj, oo, oa, nn):  # adj_a[idx] += g: repeats accumulate
    _take(meta, m, adj, oo, oa, True)


OP_SCATTER = _opcode()  # out = 0; out[idx[k]] += a[k]: functional index updates


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def fwd_scatter(meta, m, val, oo, oa, nn, na):
    val[oo:oo + nn] = 0.0
    y = val[oo:]
    x = val[oa:]
    for k in range(na):
        y[uint64(meta[m + 1 + k])] += x[k]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def adj_scatter(meta, m, adj, oo, oa, na):  # adj_a[k] += g[idx[k]]
    g = adj[oo:]
    a = adj[oa:]
    for k in range(na):
        a[k] += g[uint64(meta[m + 1 + k])]


# out = a where the weight w is set (1, or 1/2 at a tie), else b; w is the slot listed in the
# payload (a constant, or an OP_CMP record that replay recomputes)
OP_WHERE = _opcode(META_INPUTS | WRITES_ONCE)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def fwd_where(val, w, mw, oo, oa, ob, nn, ma, mb):
    for k in range(nn):
        val[oo + k] = val[oa + (k & ma)] if w[k & mw] >= 0.5 else val[ob + (k & mb)]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def adj_where(adj, w, mw, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb):  # a: g w, b: g (1 - w)
    g = adj[oo:oo + nn]
    da = adj[oa:]
    db = adj[ob:]
    for k in range(nn):
        wk = w[k & mw]
        if fa:
            da[k] = g[k] * wk
        elif ga:
            da[k & ma] += g[k] * wk
        if fb:
            db[k] = g[k] * (1.0 - wk)
        elif gb:
            db[k & mb] += g[k] * (1.0 - wk)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def tan_where(tan, w, mw, oo, oa, ob, nn, ma, mb):  # w da + (1 - w) db
    """Tangent of ``fwd_where``: a weight of 1 or 0 selects (an infinite tangent of the
    branch not taken stays out), a tie weight blends."""
    dy = tan[oo:oo + nn]
    da = tan[oa:]
    db = tan[ob:]
    for k in range(nn):
        wk = w[k & mw]
        if wk >= 1.0:
            dy[k] = da[k & ma]
        elif wk <= 0.0:
            dy[k] = db[k & mb]
        else:
            dy[k] = wk * da[k & ma] + (1.0 - wk) * db[k & mb]


# ---------------------------------------------------------------------------------------------
# Data-dependent records, never differentiated.
# ---------------------------------------------------------------------------------------------
OP_CMP = _opcode(NO_GRADIENT)  # a (cmp) b as 0/1 (p = CMP_*); maximum/minimum's tie weights

# OP_CMP's parameter: which comparison.
CMP_GT = 0
CMP_GE = 1
CMP_LT = 2
CMP_LE = 3
CMP_EQ = 4
CMP_NE = 5
CMP_NOT_LT = 6  # not (a < b): 1 where a is NaN (clip keeps a NaN)
CMP_NOT_GT = 7
CMP_MAX_WEIGHT = 8  # maximum's share for a: 1 where a > b, 1/2 at a tie, 0 below; a NaN wins
CMP_MIN_WEIGHT = 9


@njit(cache=True, nogil=True, error_model="numpy")
def fwd_compare(o, x, z):
    """OP_CMP's rule: 1.0 where the comparison ``o`` holds, else 0.0 (tie weights 1/2)."""
    if o == CMP_GT:
        return 1.0 if x > z else 0.0
    if o == CMP_GE:
        return 1.0 if x >= z else 0.0
    if o == CMP_LT:
        return 1.0 if x < z else 0.0
    if o == CMP_LE:
        return 1.0 if x <= z else 0.0
    if o == CMP_EQ:
        return 1.0 if x == z else 0.0
    if o == CMP_NE:
        return 1.0 if x != z else 0.0
    if o == CMP_NOT_LT:
        return 0.0 if x < z else 1.0
    if o == CMP_NOT_GT:
        return 0.0 if x > z else 1.0
    if x != x or x == z:  # the weights: a NaN operand is the result
        return 1.0 if x != x else 0.5
    if z != z:
        return 0.0
    if o == CMP_MAX_WEIGHT:
        return 1.0 if x > z else 0.0
    return 1.0 if x < z else 0.0


OP_GUARD = _opcode(NO_GRADIENT)  # replay stops unless slot a still equals constant b


@njit(cache=True, nogil=True, error_model="numpy")
def fwd_guard(val, oa, ob, nn):
    """Whether a guarded value is still the one seen when recording: NaN matches NaN, and
    -0.0 does not match 0.0 (Python can tell them apart, e.g. with math.copysign)."""
    for k in range(nn):
        x = val[oa + k]
        z = val[ob + k]
        if x != z:
            if not (x != x and z != z):
                return False
        elif x == 0.0 and math.copysign(1.0, x) != math.copysign(1.0, z):
            return False
    return True




# ---------------------------------------------------------------------------------------------
# Rules the Python driver runs with NumPy (``Tape._python_value`` / ``Tape._python_rule``).
# ---------------------------------------------------------------------------------------------
OP_MATMUL = _opcode(PYTHON_RULE)  # batched (b, m, k) @ (b, k, n) through BLAS; payload b m k n
OP_CAST = _opcode(PYTHON_RULE)  # a value of the other arena kind (float32 <-> float64)
# linear algebra: NumPy/LAPACK rules in ``_linalg_rules`` (layouts documented there)
OP_LINALG_SOLVE = _opcode(PYTHON_RULE)  # X = A^-1 B
OP_LINALG_SOLVE_TRIANGULAR = _opcode(PYTHON_RULE)  # p: lower | trans | unit_diagonal bits
OP_LINALG_CHOLESKY = _opcode(PYTHON_RULE)  # p: upper
OP_LINALG_SLOGDET = _opcode(PYTHON_RULE)  # [sign, logabsdet(, LU, pivots)]; p: LU kept
OP_LINALG_EIGH = _opcode(PYTHON_RULE)  # [w, V]; p: UPLO='U'
OP_LINALG_SVD = _opcode(PYTHON_RULE)  # [U, S, Vh] (reduced); p: hermitian
OP_LINALG_QR = _opcode(PYTHON_RULE)  # [Q, R] (reduced)
OP_LINALG_PINV = _opcode(PYTHON_RULE)  # p: rcond
# special functions: NumPy/SciPy rules in ``_special_rules`` (no branch in the sweeps)
OP_ERFC = _opcode(PYTHON_RULE)  # erfc(a)
OP_ERFINV = _opcode(PYTHON_RULE)  # erfinv(a)
OP_NDTRI = _opcode(PYTHON_RULE)  # ndtri(a), the standard normal quantile
OP_GAMMALN = _opcode(PYTHON_RULE)  # log|Gamma(a)|
OP_DIGAMMA = _opcode(PYTHON_RULE)  # digamma(a)
OP_LOG_NDTR = _opcode(PYTHON_RULE)  # log Phi(a)
OP_LOGIT = _opcode(PYTHON_RULE)  # log(a / (1 - a))
OP_XLOGY = _opcode(PYTHON_RULE)  # a log(b), 0 at a == 0
OP_XLOG1PY = _opcode(PYTHON_RULE)  # a log1p(b), 0 at a == 0
OP_BETALN = _opcode(PYTHON_RULE)  # log|B(a, b)|

#: ``TRAITS[op]``: the trait bits of each opcode (a constant array in the compiled sweeps).
TRAITS = np.array(_TRAITS, np.int64)
NUM_OPCODES = len(_TRAITS)
# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def reverse_sweep(start, stop, kind, op, in_a, in_b, off, n, param, meta_at, flag, arena_of, meta,
                  val, adj, touched, leaf_slots, nleaf, big, aoff):
    """Accumulate adjoints of ``kind`` records from ``start`` down to slot ``stop`` (0 but
    in replay's schedule of fused groups).

    Record i's value is ``val[off[i]:]``, its adjoint ``adj[aoff[i]:]``: ``aoff`` is ``off``
    (an adjoint arena laid out as the values) or a plan that reuses the adjoint ranges of
    swept records (``plan_adjoints``).

    ``touched[i]`` is 1 once slot i holds an adjoint (the caller seeds the root).  An input's
    adjoint is assigned, not added, on its first touch where the rule writes every element
    once, and zeroed first otherwise, so the arena is never cleared as a whole.  Leaves
    reached are appended to ``leaf_slots`` (count in ``nleaf[0]``).

    Returns ``SWEEP_DONE``; or the index of a record the Python driver must handle (another
    kind, a ``PYTHON_RULE``, a ``LATE_RULE`` (``reverse_late``), a ``NUMPY_ADJOINT`` rule of
    at least ``big`` elements) before resuming below it; ``UNKNOWN_OPCODE``; or
    ``-3 - i`` when released record i is reached.  No flag is changed here.
    """
    for i in range(start, stop - 1, -1):
        if touched[i] == 0:
            continue
        if flag[i] & FLAG_RELEASED:
            return -3 - i
        o = op[i]
        if o == OP_LEAF:
            leaf_slots[nleaf[0]] = i
            nleaf[0] += 1
            continue
        if o < 0 or o >= NUM_OPCODES:
            return UNKNOWN_OPCODE
        tr = TRAITS[o]
        if arena_of[i] != kind or tr & (PYTHON_RULE | LATE_RULE):
            return i
        if tr & NO_GRADIENT:  # no gradient flows through a comparison
            continue
        a = in_a[i]
        b = in_b[i]
        oo = off[i]
        go = aoff[i]
        nn = n[i]
        if tr & NUMPY_ADJOINT and nn >= big:
            return i
        c = param[i]
        if o == OP_CONCAT:
            adj_concat(meta, meta_at[i], op, aoff, n, flag, adj, go, touched)
            continue
        # (_gets_adjoint written out: a call here, even inlined, costs ~12 ns per record)
        ga = a >= 0 and op[a] != OP_CONST and not flag[a] & FLAG_CONSTANT
        gb = b >= 0 and op[b] != OP_CONST and not flag[b] & FLAG_CONSTANT
        if not ga and not gb:  # nothing to hand an adjoint to
            continue
        oa = off[a] if a >= 0 else oo
        ob = off[b] if b >= 0 else oa
        gao = aoff[a] if a >= 0 else go
        gbo = aoff[b] if b >= 0 else gao
        if nn == 1 and tr & ELEMENTWISE:
            # scalar record: one rule evaluation, first touch assigns
            pa, pb = partials(o, adj[go], val[oa], val[ob], val[oo], c)
            if ga:
                if touched[a]:
                    adj[gao] += pa
                else:
                    adj[gao] = pa
                    touched[a] = 1
            if gb:
                if touched[b]:
                    adj[gbo] += pb
                else:
                    adj[gbo] = pb
                    touched[b] = 1
            continue
        # First touch: a full-size input of a WRITES_ONCE rule is assigned, and so is the
        # input of a restride that reads each input element once (p = 1: a sum, a
        # transpose); any other is zeroed first.  When b is a, a's first touch has
        # happened: b adds.
        once = tr & WRITES_ONCE
        fa = ga and touched[a] == 0 and ((n[a] == nn and once) or
                                         (o == OP_RESTRIDE and c == 1.0))
        if ga and touched[a] == 0:
            if not fa:
                adj[gao:gao + n[a]] = 0.0
            touched[a] = 1
        fb = gb and touched[b] == 0 and n[b] == nn and once
        if gb and touched[b] == 0:
            if not fb:
                adj[gbo:gbo + n[b]] = 0.0
            touched[b] = 1
        ma = -1 if a >= 0 and n[a] == nn else 0
        mb = -1 if b >= 0 and n[b] == nn else 0
        # Each loop specialised in line on a constant opcode adds ~0.5 s to a cold compile:
        # only MUL has one.  ADD, SUB and the LINEAR_C rules scale the adjoint into each input
        # (_scaled_adjoint, one loop for all of them, exact for slopes of 1 and -1); the
        # common unary rules run in _vector_rule_any's loops, a separately compiled function
        # where a loop costs less to compile and as little to run (a per-element dispatch
        # would add 1-10 ns); the others, DIV among them, in its generic loop (per-element
        # dispatch hidden behind the division: 10^6-element div backward 7.4-9.5 ms with a
        # specialised loop, 7.6-7.8 ms without).
        if tr & ELEMENTWISE:
            # one chunk, or the chunks of a broadcast layout (one call site per loop)
            m = meta_at[i]
            L, ma, mb = chunking(meta, m, nn, ma, mb)
            ca = cb = r = 0
            for j in range(nn // L):
                if j:
                    ca, cb, r = chunk_next(meta, m, j - 1, r, ca, cb)
                q = j * L
                if o == OP_ADD or o == OP_SUB:
                    if ga:
                        _scaled_adjoint(adj, go + q, gao + ca, L, ma, fa, 1.0)
                    if gb:
                        _scaled_adjoint(adj, go + q, gbo + cb, L, mb, fb,
                                        1.0 if o == OP_ADD else -1.0)
                elif tr & LINEAR_C:  # d/da is a constant
                    _scaled_adjoint(adj, go + q, gao + ca, L, ma, fa,
                                    partials(o, 1.0, 0.0, 0.0, 0.0, c)[0])
                elif o == OP_MUL:
                    _vector_rule(OP_MUL, val, adj, oo + q, oa + ca, ob + cb, go + q, gao + ca,
                                 gbo + cb, L, ma, mb, ga, gb, fa, fb, c)
                else:
                    _vector_rule_any(o, val, adj, oo + q, oa + ca, ob + cb, go + q, gao + ca,
                                     gbo + cb, L, ma, mb, ga, gb, fa, fb, c)
        elif o == OP_RESTRIDE:
            adj_restride(meta, meta_at[i], adj, go, gao, fa)
        elif o == OP_GATHER:
            adj_gather(meta, meta_at[i], adj, go, gao, nn)
        elif o == OP_SCATTER:
            adj_scatter(meta, meta_at[i], adj, go, gao, n[a])
        elif o == OP_WHERE:
            ws = meta[meta_at[i] + 2]
            adj_where(adj, val[off[ws]:], -1 if n[ws] == nn else 0, go, gao, gbo, nn, ma, mb,
                      ga, gb, fa, fb)
        else:
            return UNKNOWN_OPCODE
    return SWEEP_DONE


@njit(cache=True, nogil=True, error_model="numpy")
def reverse_late(i, op, in_a, off, n, meta_at, flag, meta, val, adj, touched, aoff):
    """The reverse rule of ``LATE_RULE`` record i (one input, released and reachability
    checked by ``reverse_sweep``, which handed it back): its input's adjoint is zeroed on a
    first touch, then the rule adds to it."""
    a = in_a[i]
    if a < 0 or op[a] == OP_CONST or flag[a] & FLAG_CONSTANT:
        return
    o = op[i]
    go = aoff[i]
    gao = aoff[a]
    if touched[a] == 0:
        adj[gao:gao + n[a]] = 0.0
        touched[a] = 1
    if o == OP_EXTREME:
        adj_extreme(meta, meta_at[i], val, adj, off[i], off[a], go, gao, n[i])
    elif o == OP_PROD:
        adj_prod(meta, meta_at[i], val, adj, off[i], off[a], go, gao, n[i])
    else:
        adj_scan(o, meta, meta_at[i], val, adj, off[i], off[a], go, gao)


@njit(cache=True, nogil=True, error_model="numpy")
def reverse_all(start, stop, kind, op, in_a, in_b, off, n, param, meta_at, flag, arena_of, meta,
                val, adj, touched, leaf_slots, nleaf, big, aoff):
    """``reverse_sweep`` that runs the ``LATE_RULE`` records itself (for the compiled drivers
    of replay and Jacobians, which compile on first use anyway); same arguments and codes."""
    i = start
    while True:
        r = reverse_sweep(i, stop, kind, op, in_a, in_b, off, n, param, meta_at, flag, arena_of,
                          meta, val, adj, touched, leaf_slots, nleaf, big, aoff)
        if r < 0 or arena_of[r] != kind or not TRAITS[op[r]] & LATE_RULE:
            return r
        reverse_late(r, op, in_a, off, n, meta_at, flag, meta, val, adj, touched, aoff)
        i = r - 1


@njit(cache=True, nogil=True, error_model="numpy")
def forward_sweep(start, stop, kind, op, in_a, in_b, off, n, param, meta_at, arena_of, meta, val,
                  big, to_numpy):
    """Recompute the values of ``kind`` records ``start`` .. ``stop - 1`` from their inputs.

    Leaves and constants keep the values in the arena (the caller writes new inputs first).
    Returns ``SWEEP_DONE``; or the index of a record the Python driver must run (another
    kind, a ``PYTHON_RULE``, or a record of at least ``big`` elements whose opcode is set in
    ``to_numpy``, an array over opcodes) before resuming after it; ``UNKNOWN_OPCODE``; or
    ``-3 - i`` when guard record i fails: a value Python looked at while recording changed.
    """
    for i in range(start, stop):
        o = op[i]
        if o == OP_LEAF or o == OP_CONST:
            continue
        if o < 0 or o >= NUM_OPCODES:
            return UNKNOWN_OPCODE
        tr = TRAITS[o]
        if arena_of[i] != kind or tr & PYTHON_RULE:
            return i
        a = in_a[i]
        b = in_b[i]
        oo = off[i]
        nn = n[i]
        c = param[i]
        oa = off[a] if a >= 0 else oo
        ob = off[b] if b >= 0 else oa
        if o == OP_GUARD:
            if not fwd_guard(val, oa, ob, n[a]):
                return -3 - i
            continue
        if nn == 1 and tr & ELEMENTWISE:
            val[oo] = value(o, val[oa], val[ob], c)
            continue
        if nn >= big and to_numpy[o]:
            return i  # NumPy's loop
        ma = -1 if a >= 0 and n[a] == nn else 0
        mb = -1 if b >= 0 and n[b] == nn else 0
        if tr & ELEMENTWISE:
            # one chunk, or the chunks of a broadcast layout (as in reverse_sweep)
            m = meta_at[i]
            L, ma, mb = chunking(meta, m, nn, ma, mb)
            ca = cb = r = 0
            for j in range(nn // L):
                if j:
                    ca, cb, r = chunk_next(meta, m, j - 1, r, ca, cb)
                q = oo + j * L
                if o == OP_ADD:
                    _vector_value(OP_ADD, val, q, oa + ca, ob + cb, L, ma, mb, c)
                elif o == OP_SUB:
                    _vector_value(OP_SUB, val, q, oa + ca, ob + cb, L, ma, mb, c)
                elif o == OP_MUL:
                    _vector_value(OP_MUL, val, q, oa + ca, ob + cb, L, ma, mb, c)
                elif o == OP_DIV:
                    _vector_value(OP_DIV, val, q, oa + ca, ob + cb, L, ma, mb, c)
                elif o == OP_ADD_C:
                    _vector_value(OP_ADD_C, val, q, oa + ca, ob + cb, L, ma, mb, c)
                elif o == OP_MUL_C:
                    _vector_value(OP_MUL_C, val, q, oa + ca, ob + cb, L, ma, mb, c)
                else:
                    _vector_value_any(o, val, q, oa + ca, ob + cb, L, ma, mb, c)
        elif o == OP_RESTRIDE:
            fwd_restride(meta, meta_at[i], val, oo, oa, nn)
        elif o == OP_CMP:
            y = val[oo:oo + nn]
            x = val[oa:]
            z = val[ob:]
            cm = int(c)
            for k in range(nn):
                y[k] = fwd_compare(cm, x[k & ma], z[k & mb])
        elif o == OP_GATHER:
            fwd_gather(meta, meta_at[i], val, oo, oa, nn)
        elif o == OP_SCATTER:
            fwd_scatter(meta, meta_at[i], val, oo, oa, nn, n[a])
        elif o == OP_WHERE:
            ws = meta[meta_at[i] + 2]
            fwd_where(val, val[off[ws]:], -1 if n[ws] == nn else 0, oo, oa, ob, nn, ma, mb)
        elif o == OP_CONCAT:
            fwd_concat(meta, meta_at[i], off, n, val, oo)
        elif o == OP_PROD:
            fwd_prod(meta, meta_at[i], val, oo, oa, nn)
        elif o == OP_EXTREME:
            fwd_extreme(meta, meta_at[i], val, oo, oa, nn, c)
        elif o == OP_CUMSUM or o == OP_CUMPROD:
            fwd_scan(o, meta, meta_at[i], val, oo, oa)
        else:
            return UNKNOWN_OPCODE
    return SWEEP_DONE


@njit(cache=True, nogil=True, error_model="numpy")
def tangent_sweep(start, stop, kind, op, in_a, in_b, off, n, param, meta_at, arena_of, meta, val,
                  tan):
    """Forward mode: the tangents of ``kind`` records ``start`` .. ``stop - 1`` from their
    inputs' tangents, in ``tan`` (an arena of the size of ``val``, at the same offsets).

    Each record's tangent is overwritten, never accumulated, so ``tan`` needs no clearing;
    the caller writes the leaves' tangents (left untouched here) and those of records below
    ``start``.  Constants, comparisons and guards get tangent 0.  Elementwise rules use
    their partials (``partials`` at g = 1; a zero tangent adds nothing, even against an
    infinite partial), the linear records (restride, gather, scatter, concat, cumsum)
    their forward rule on the tangents, the others a ``tan_<name>`` rule.
    ``val`` must hold the values of the records swept (the forward pass ran).

    Returns ``SWEEP_DONE``; or the index of a record the Python driver (``Tape.tangent``)
    must handle (another kind, or a ``PYTHON_RULE``) before resuming after it; or
    ``UNKNOWN_OPCODE``.
    """
    for i in range(start, stop):
        o = op[i]
        if o == OP_LEAF:
            continue
        if o < 0 or o >= NUM_OPCODES:
            return UNKNOWN_OPCODE
        tr = TRAITS[o]
        if arena_of[i] != kind or tr & PYTHON_RULE:
            return i
        a = in_a[i]
        b = in_b[i]
        oo = off[i]
        nn = n[i]
        if o == OP_CONST or tr & NO_GRADIENT:
            tan[oo:oo + nn] = 0.0
            continue
        c = param[i]
        oa = off[a] if a >= 0 else oo
        ob = off[b] if b >= 0 else oa
        ma = -1 if a >= 0 and n[a] == nn else 0
        mb = -1 if b >= 0 and n[b] == nn else 0
        if tr & ELEMENTWISE:
            # the inputs that carry a tangent (as reverse_sweep's ga/gb, without the flags)
            ga = a >= 0 and op[a] != OP_CONST and not TRAITS[op[a]] & NO_GRADIENT
            gb = (b >= 0 and not tr & ONE_INPUT and op[b] != OP_CONST
                  and not TRAITS[op[b]] & NO_GRADIENT)
            if nn == 1:
                pa, pb = partials(o, 1.0, val[oa], val[ob], val[oo], c)
                t = 0.0
                if ga:
                    t += _term(pa, tan[oa])
                if gb:
                    t += _term(pb, tan[ob])
                tan[oo] = t
                continue
            # one chunk, or the chunks of a broadcast layout (as in reverse_sweep)
            m = meta_at[i]
            L, ma, mb = chunking(meta, m, nn, ma, mb)
            ca = cb = r = 0
            for j in range(nn // L):
                if j:
                    ca, cb, r = chunk_next(meta, m, j - 1, r, ca, cb)
                q = oo + j * L
                if o == OP_ADD:
                    _vector_tangent(OP_ADD, val, tan, q, oa + ca, ob + cb, L, ma, mb, ga, gb, c)
                elif o == OP_SUB:
                    _vector_tangent(OP_SUB, val, tan, q, oa + ca, ob + cb, L, ma, mb, ga, gb, c)
                elif o == OP_MUL:
                    _vector_tangent(OP_MUL, val, tan, q, oa + ca, ob + cb, L, ma, mb, ga, gb, c)
                elif tr & LINEAR_C:  # d/da is a constant: MUL_C's loop with the slope
                    k = partials(o, 1.0, 0.0, 0.0, 0.0, c)[0]
                    _vector_tangent(OP_MUL_C, val, tan, q, oa + ca, ob + cb, L, ma, mb, ga, gb,
                                    k)
                else:
                    _vector_tangent_any(o, val, tan, q, oa + ca, ob + cb, L, ma, mb, ga, gb, c)
        elif o == OP_RESTRIDE:
            fwd_restride(meta, meta_at[i], tan, oo, oa, nn)
        elif o == OP_GATHER:
            fwd_gather(meta, meta_at[i], tan, oo, oa, nn)
        elif o == OP_SCATTER:
            fwd_scatter(meta, meta_at[i], tan, oo, oa, nn, n[a])
        elif o == OP_WHERE:
            ws = meta[meta_at[i] + 2]
            tan_where(tan, val[off[ws]:], -1 if n[ws] == nn else 0, oo, oa, ob, nn, ma, mb)
        elif o == OP_CONCAT:
            fwd_concat(meta, meta_at[i], off, n, tan, oo)
        elif o == OP_PROD:
            tan_prod(meta, meta_at[i], val, tan, oo, oa, nn)
        elif o == OP_EXTREME:
            tan_extreme(meta, meta_at[i], val, tan, oo, oa, nn)
        elif o == OP_CUMSUM:
            fwd_scan(o, meta, meta_at[i], tan, oo, oa)
        elif o == OP_CUMPROD:
            tan_cumprod(meta, meta_at[i], val, tan, oo, oa)
        else:
            return UNKNOWN_OPCODE
    return SWEEP_DONE


# ---------------------------------------------------------------------------------------------
# Fused groups (replay): chains of elementwise records run block by block, their inner values
# in registers (see ``_fusion``)
# ---------------------------------------------------------------------------------------------
#: Columns of a group's row: iteration size, block length, its forward micro-ops [f0, f1),
#: its reverse micro-ops [r0, r1), its arena kind.
G_SIZE, G_BLOCK, G_F0, G_F1, G_R0, G_R1, G_KIND = range(7)
#: Columns of a micro-op: opcode (an elementwise rule, or OP_RESTRIDE: the sum of operand a);
#: output, operand a and operand b as (base, step): element k of block q is at
#: base + step * q + k (step 1: an arena range; step 0: a register, or a size-1 operand read
#: with mask 0); the masks of a and b; then, forward: whether the output is a register
#: (recomputed by the reverse pass); reverse: which inputs get an adjoint, whether this is
#: the first contribution to each in the group, their slots (-1: a register), and whether
#: each only accumulates (a size-1 operand, or an arena range read through a slice of it):
#: 0 if not, else 1 + the largest start of a slice of it the group reads (its range is
#: zeroed block by block, just ahead of the contributions, when no record has touched it).
U_OP, U_OUT, U_OUT_STEP, U_A, U_A_STEP, U_B, U_B_STEP, U_MASK_A, U_MASK_B = range(9)
U_REGISTER = 9
U_GRAD_A, U_GRAD_B, U_FIRST_A, U_FIRST_B, U_SLOT_A, U_SLOT_B, U_ZERO_A, U_ZERO_B = range(9, 17)
#: OP_RESTRIDE (a sum over trailing axes) only: operand elements per output element (the
#: group's size for a sum of all of it)
U_SEG = 17
U_COLUMNS = 18


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _block_value_hot(o, x, z, c):
    """The forward rules with a vectorised block loop in the fused groups: the common ones
    without a libm call (each loop adds ~0.3 s to the first replay's compile)."""
    if o == OP_RSUB_C:
        return fwd_rsub_c(x, z, c)
    if o != OP_POW_C:
        return value_hot(o, x, z, c)
    return fwd_pow_c(x, z, 2.0)  # OP_POW_C (only c == 2 comes here)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _block_partials_hot(o, g, x, z, y, c):
    """The reverse rules with a vectorised block loop in the fused groups."""
    if o == OP_MUL:
        return adj_mul(g, x, z, y, c)
    if o == OP_DIV:
        return adj_div(g, x, z, y, c)
    return adj_pow_c(g, x, z, y, 2.0)  # OP_POW_C (only c == 2 comes here)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _block_value_loop(o, y, x, z, c):
    for k in range(len(y)):
        y[k] = _block_value_hot(o, x[k], z[k], c)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _block_partials_loop(o, g, x, z, y, ta, tb, c):
    """The contributions of a block to both inputs, into scratch (a loop without branches
    on the flags, which would keep LLVM from vectorising it: 0.7-0.9 ns an element instead
    of 0.2)."""
    for k in range(len(g)):
        ta[k], tb[k] = _block_partials_hot(o, g[k], x[k], z[k], y[k], c)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _block_rule_one(o, g, x, z, y, d, first, c):
    """The contributions of a block to input a alone (b gets none), assigned (first) or
    added, in one loop per case: no scratch pass."""
    if first:
        for k in range(len(g)):
            d[k] = _block_partials_hot(o, g[k], x[k], z[k], y[k], c)[0]
    else:
        for k in range(len(g)):
            d[k] += _block_partials_hot(o, g[k], x[k], z[k], y[k], c)[0]


@njit(cache=True, nogil=True, error_model="numpy")
def _block_scaled(g, d, s, first):
    """d = s g (first contribution) or d += s g over a block: ``_scaled_adjoint``'s loops
    for a g that may live outside the adjoint arena (a contribution computed into scratch,
    s = 1: exact), on views (an offset into one arena would need its mask test)."""
    if first:
        for k in range(len(g)):
            d[k] = s * g[k]
    else:
        for k in range(len(g)):
            d[k] += s * g[k]


@njit(cache=True, nogil=True, error_model="numpy")
def _block_value(o, val, oo, oa, ob, L, ma, mb, c):
    """Micro-op ``o`` over a block of L elements whose operands are all full blocks: one loop
    per rule without a libm call, with constant opcode and unit stride (vectorised); the
    others in ``_vector_value_any``'s loops (masks ``ma``, ``mb``: -1, as variables: a
    constant argument would compile that function a second time)."""
    y = val[oo:oo + L]
    x = val[oa:oa + L]
    z = val[ob:ob + L]
    if o == OP_ADD:
        _block_value_loop(OP_ADD, y, x, z, c)
    elif o == OP_SUB:
        _block_value_loop(OP_SUB, y, x, z, c)
    elif o == OP_MUL:
        _block_value_loop(OP_MUL, y, x, z, c)
    elif o == OP_DIV:
        _block_value_loop(OP_DIV, y, x, z, c)
    elif o == OP_ADD_C:
        _block_value_loop(OP_ADD_C, y, x, z, c)
    elif o == OP_MUL_C:
        _block_value_loop(OP_MUL_C, y, x, z, c)
    elif o == OP_RSUB_C:
        _block_value_loop(OP_RSUB_C, y, x, z, c)
    elif o == OP_POW_C and c == 2.0:
        _block_value_loop(OP_POW_C, y, x, z, c)
    else:
        _vector_value_any(o, val, oo, oa, ob, L, ma, mb, c)


@njit(cache=True, nogil=True, error_model="numpy")
def _block_adjoint(o, val, adj, oo, oa, ob, L, ma, mb, ga, gb, fa, fb, c, tmp):
    """Micro-op ``o``'s reverse rule over a block of full-block operands (``_block_value``'s
    reverse; adjoints at the values' offsets; ``tmp``: float64 scratch of two blocks)."""
    g = adj[oo:oo + L]
    if o == OP_ADD or o == OP_SUB or TRAITS[o] & LINEAR_C:
        if ga:
            _block_scaled(g, adj[oa:oa + L], partials(o, 1.0, 0.0, 0.0, 0.0, c)[0], fa)
        if gb:
            _block_scaled(g, adj[ob:ob + L], partials(o, 1.0, 0.0, 0.0, 0.0, c)[1], fb)
        return
    y = val[oo:oo + L]
    x = val[oa:oa + L]
    z = val[ob:ob + L]
    if ga and not gb:  # one input gets an adjoint (a unary rule, a constant factor)
        if o == OP_POW_C and c == 2.0:  # (0.44 -> 0.3 ns an element through scratch)
            _block_rule_one(OP_POW_C, g, x, z, y, adj[oa:oa + L], fa, c)
            return
        if o == OP_MUL:
            _block_rule_one(OP_MUL, g, x, z, y, adj[oa:oa + L], fa, c)
            return
    ta = tmp[0, :L]
    tb = tmp[1, :L]
    if o == OP_MUL:
        _block_partials_loop(OP_MUL, g, x, z, y, ta, tb, c)
    elif o == OP_DIV:
        _block_partials_loop(OP_DIV, g, x, z, y, ta, tb, c)
    elif o == OP_POW_C and c == 2.0:
        _block_partials_loop(OP_POW_C, g, x, z, y, ta, tb, c)
    else:
        _vector_rule_any(o, val, adj, oo, oa, ob, oo, oa, ob, L, ma, mb, ga, gb, fa, fb, c)
        return
    if ga:
        _block_scaled(ta, adj[oa:oa + L], 1.0, fa)
    if gb:
        _block_scaled(tb, adj[ob:ob + L], 1.0, fb)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _block_sum(x, lo, L):
    """x[lo] + ... + x[lo + L - 1] in float64, in eight running sums (LLVM keeps them in
    vector registers; one sum would be a chain of dependent additions)."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    y = x[lo:lo + L]
    for j in range(L // 8):
        k = uint64(j) * uint64(8)  # (unsigned: no wrap-around checks)
        s0 += y[k]
        s1 += y[k + uint64(1)]
        s2 += y[k + uint64(2)]
        s3 += y[k + uint64(3)]
        s4 += y[k + uint64(4)]
        s5 += y[k + uint64(5)]
        s6 += y[k + uint64(6)]
        s7 += y[k + uint64(7)]
    for k in range(L - L % 8, L):
        s0 += y[k]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(cache=True, nogil=True, error_model="numpy")
def _segment_sums(val, oa, out, q, L, R):
    """val[out + (q + k) // R] += val[oa + k] for k < L: block [q, q + L) of a sum over
    trailing axes (R elements to an output; segments straddle blocks), one ``_block_sum``
    per piece of a segment in the block."""
    seg = q // R
    k = 0
    pos = q - seg * R
    while k < L:
        stop = min(L, k + R - pos)
        val[out + seg] += _block_sum(val, oa + k, stop - k)
        seg += 1
        pos = 0
        k = stop


@njit(cache=True, nogil=True, error_model="numpy")
def _segment_spread(adj, go, gd, q, L, R, first):
    """adj[gd + k] = (or +=, unless ``first``) adj[go + (q + k) // R] for k < L: the reverse
    of ``_segment_sums`` (R the group's size: a sum of all of it)."""
    seg = q // R
    k = 0
    pos = q - seg * R
    while k < L:
        stop = min(L, k + R - pos)
        gk = adj[go + seg]
        d = adj[gd + k:gd + stop]
        if first:
            d[:] = gk
        else:
            for t in range(stop - k):
                d[t] += gk
        seg += 1
        pos = 0
        k = stop


@njit(cache=True, nogil=True, error_model="numpy")
def fused_group(g, reverse, groups, fu, fc, ru, rc, off, n, val, adj, touched, fresh, tmp):
    """Group ``g``'s values (``reverse`` false) or its reverse rules, block by block.

    Forward: the micro-ops' outputs read outside the group go to their arena ranges, the
    others to registers; a sum accumulates block by block (a group holds at most one sum,
    its last micro-op: of all of the group, in float64, or of segments of ``U_SEG``
    elements into its zeroed output).  Reverse (adjoints at the values' offsets: replay
    lays them out alike): each block's registers are recomputed, then its reverse rules
    run.  An arena adjoint no record has touched yet is assigned by its first contribution
    in the group, or, when it only accumulates, zeroed block by block just ahead of the
    contributions (a slice starting at element t reaches t elements past its block) and
    summed; registers are always assigned first.  ``fresh`` is scratch of one row per
    reverse micro-op, ``tmp`` of two float64 blocks.  (One function for both directions:
    each compiled function costs the first replay ~0.3 s.)"""
    f0 = groups[g, G_F0]
    f1 = groups[g, G_F1]
    r0 = groups[g, G_R0]
    r1 = groups[g, G_R1]
    zs = np.empty(2 * (r1 - r0) if reverse else 0, np.int64)  # slots zeroed as blocks go
    zsh = np.empty_like(zs)  # ... and how far ahead of the block
    nz = 0
    if reverse:
        for u in range(r0, r1):  # read every flag before any is set
            for side in range(2):
                s = ru[u, U_SLOT_A + side]
                fresh[u, side] = 1 if s < 0 or touched[s] == 0 else 0
        for u in range(r0, r1):
            for side in range(2):
                s = ru[u, U_SLOT_A + side]
                if s >= 0 and ru[u, U_GRAD_A + side]:
                    if fresh[u, side] and ru[u, U_ZERO_A + side] and touched[s] == 0:
                        zs[nz] = s
                        zsh[nz] = ru[u, U_ZERO_A + side] - 1
                        nz += 1
                    touched[s] = 1
    nn = groups[g, G_SIZE]
    B = groups[g, G_BLOCK]
    total = 0.0
    last = f1 - 1
    segments = fu[last, U_OP] == OP_RESTRIDE and fu[last, U_SEG] < nn
    if not reverse and segments:  # sums over trailing axes accumulate block by block
        val[fu[last, U_OUT]:fu[last, U_OUT] + nn // fu[last, U_SEG]] = 0.0
    for q in range(0, nn, B):
        L = min(B, nn - q)
        for u in range(f0, f1):
            o = fu[u, U_OP]
            if reverse and fu[u, U_REGISTER] == 0:  # (a sum's output never is a register)
                continue
            oa = fu[u, U_A] + fu[u, U_A_STEP] * q
            if o == OP_RESTRIDE:
                if fu[u, U_SEG] == nn:
                    total += _block_sum(val, oa, L)
                else:
                    _segment_sums(val, oa, fu[u, U_OUT], q, L, fu[u, U_SEG])
                continue
            oo = fu[u, U_OUT] + fu[u, U_OUT_STEP] * q
            ob = fu[u, U_B] + fu[u, U_B_STEP] * q
            ma = fu[u, U_MASK_A]
            mb = fu[u, U_MASK_B]
            if ma == -1 and mb == -1:
                _block_value(o, val, oo, oa, ob, L, ma, mb, fc[u])
            else:  # a size-1 operand (rare in a long chain): the sweeps' loops
                _vector_value_any(o, val, oo, oa, ob, L, ma, mb, fc[u])
        if not reverse:
            continue
        for j in range(nz):  # what this block's contributions reach first, zeroed: a pass
            s = zs[j]  # over L1 where a whole range zeroed ahead would be one over memory
            lo = 0 if q == 0 else q + zsh[j]
            hi = n[s] if q + L >= nn else min(q + zsh[j] + L, n[s])
            if lo < hi:
                adj[off[s] + lo:off[s] + hi] = 0.0
        for u in range(r0, r1):
            o = ru[u, U_OP]
            oo = ru[u, U_OUT] + ru[u, U_OUT_STEP] * q
            oa = ru[u, U_A] + ru[u, U_A_STEP] * q
            if o == OP_RESTRIDE:  # a sum: its adjoint to every element of its segment
                _segment_spread(adj, ru[u, U_OUT], oa, q, L, ru[u, U_SEG],
                                ru[u, U_FIRST_A] != 0 and fresh[u, 0] != 0)
                continue
            ob = ru[u, U_B] + ru[u, U_B_STEP] * q
            ma = ru[u, U_MASK_A]
            mb = ru[u, U_MASK_B]
            ga = ru[u, U_GRAD_A] != 0
            gb = ru[u, U_GRAD_B] != 0
            fa = ga and ma != 0 and ru[u, U_FIRST_A] != 0 and fresh[u, 0] != 0
            fb = gb and mb != 0 and ru[u, U_FIRST_B] != 0 and fresh[u, 1] != 0
            if ma == -1 and mb == -1:
                _block_adjoint(o, val, adj, oo, oa, ob, L, ma, mb, ga, gb, fa, fb, rc[u], tmp)
            else:  # a size-1 operand: the sweeps' generic loops
                _vector_rule_any(o, val, adj, oo, oa, ob, oo, oa, ob, L, ma, mb, ga, gb, fa, fb,
                                 rc[u])
    if not reverse and fu[last, U_OP] == OP_RESTRIDE and not segments:
        val[fu[last, U_OUT]] = total


@njit(cache=True, nogil=True, error_model="numpy")
def replay_sweeps(start, top, root, kind, op, in_a, in_b, off, n, param, meta_at, flag, arena_of,
                  meta, val, adj, touched, leaf_slots, nleaf, to_numpy, never):
    """Replay in one call: the forward sweep over records ``start`` .. top - 1, then the
    reverse sweep from the scalar ``root`` (if >= 0) seeded with 1.  For tapes of one arena
    kind without Python rules (records ``to_numpy`` would hand back stay in the compiled
    loops) nor fused groups.  Returns ``-3 - i`` when guard i fails, else the reverse
    sweep's code.

    ``start`` (0) and ``never`` (``NEVER``, a size no record reaches: nothing is handed
    back) come as arguments, not constants: a constant argument would make Numba compile
    the sweeps again, specialised on its value (~5 s of a first replay's compile)."""
    r = forward_sweep(start, top, kind, op, in_a, in_b, off, n, param, meta_at, arena_of, meta,
                      val, never, to_numpy)
    if r != SWEEP_DONE or root < 0:
        return r
    touched[:root + 1] = 0
    touched[root] = 1
    adj[off[root]] = 1.0
    nleaf[0] = 0
    return reverse_all(root, start, kind, op, in_a, in_b, off, n, param, meta_at, flag,
                       arena_of, meta, val, adj, touched, leaf_slots, nleaf, never, off)


@njit(cache=True, nogil=True, error_model="numpy")
def reverse_rows(root, stop, kind, op, in_a, in_b, off, n, param, meta_at, flag, arena_of, meta,
                 val, adj, seeds, leaf_off, leaf_n, out, never):
    """Rows of a Jacobian in one call: for each row r of ``seeds`` (m, n[root]), the reverse
    sweep from ``root`` seeded with ``seeds[r]``, and into ``out[r]`` the adjoints of the
    arena ranges ``leaf_off[j]:leaf_off[j] + leaf_n[j]`` side by side (0 for a range the
    sweep did not reach: each is cleared before the sweep, which assigns on a first touch).

    For tapes of one arena kind without Python rules below ``root``; ``stop`` is 0 (an
    argument: see ``replay_sweeps``).  Nothing is released (every row sweeps the same
    records).  Returns ``SWEEP_DONE`` or the first code of a
    sweep that did not finish (see ``reverse_sweep``).
    """
    touched = np.zeros(root + 1, np.uint8)
    leaf_slots = np.empty(root + 1, np.int64)
    nleaf = np.zeros(1, np.int64)
    oo = off[root]
    nr = n[root]
    for r in range(seeds.shape[0]):
        touched[:] = 0
        touched[root] = 1
        nleaf[0] = 0
        for j in range(len(leaf_off)):
            adj[leaf_off[j]:leaf_off[j] + leaf_n[j]] = 0.0
        adj[oo:oo + nr] = seeds[r]  # after the clearing: the root may be one of the ranges
        code = reverse_all(root, stop, kind, op, in_a, in_b, off, n, param, meta_at, flag,
                           arena_of, meta, val, adj, touched, leaf_slots, nleaf, never, off)
        if code != SWEEP_DONE:
            return code
        p = 0
        for j in range(len(leaf_off)):
            out[r, p:p + leaf_n[j]] = adj[leaf_off[j]:leaf_off[j] + leaf_n[j]]
            p += leaf_n[j]
    return SWEEP_DONE


@njit(cache=True, nogil=True, error_model="numpy")
def tangent_columns(start, stop, kind, op, in_a, in_b, off, n, param, meta_at, arena_of, meta,
                    val, tan, seeds, leaf_off, leaf_n, out_off, out_n, out):
    """Columns of a Jacobian in one call: for each row r of ``seeds`` (m, sum of leaf_n),
    ``seeds[r]`` split over the tangent ranges ``leaf_off[j]:leaf_off[j] + leaf_n[j]``,
    the tangent sweep over ``start`` .. ``stop - 1``, and ``tan[out_off:out_off + out_n]``
    into ``out[r]``.

    For tapes of one arena kind without Python rules in the range.  Nothing else of ``tan``
    is written before a sweep: every other input's tangent stays as the caller left it
    (zeros, usually), and the sweep overwrites the records' own.  Returns ``SWEEP_DONE`` or
    the first code of a sweep that did not finish (see ``tangent_sweep``).
    """
    for r in range(seeds.shape[0]):
        p = 0
        for j in range(len(leaf_off)):
            tan[leaf_off[j]:leaf_off[j] + leaf_n[j]] = seeds[r, p:p + leaf_n[j]]
            p += leaf_n[j]
        code = tangent_sweep(start, stop, kind, op, in_a, in_b, off, n, param, meta_at, arena_of,
                             meta, val, tan)
        if code != SWEEP_DONE:
            return code
        out[r, :] = tan[out_off:out_off + out_n]
    return SWEEP_DONE


@njit(cache=True, nogil=True, error_model="numpy")
def _meta_inputs(o, meta, m):
    """Number of input slots listed in the meta block of a record with opcode ``o``."""
    if m >= 0 and TRAITS[o] & META_INPUTS:
        return meta[m + 1]
    return 0


@njit(cache=True, nogil=True, error_model="numpy")
def _take_block(fs, fz, nf, top, peak, k, size):
    """Best fit of ``size`` in arena kind k's free blocks (sorted by start), else the end."""
    best = -1
    for j in range(nf[k]):
        if fz[k, j] >= size and (best < 0 or fz[k, j] < fz[k, best]):
            best = j
    if best < 0:
        o = top[k]
        top[k] += size
        peak[k] = max(peak[k], top[k])
        return o
    o = fs[k, best]
    fs[k, best] += size
    fz[k, best] -= size
    if fz[k, best] == 0:
        for j in range(best, nf[k] - 1):
            fs[k, j] = fs[k, j + 1]
            fz[k, j] = fz[k, j + 1]
        nf[k] -= 1
    return o


@njit(cache=True, nogil=True, error_model="numpy")
def _give_block(fs, fz, nf, top, k, o, size):
    """Return [o, o + size) to kind k's free blocks, merged with its neighbours; a block at
    the end lowers the end instead."""
    j = 0
    while j < nf[k] and fs[k, j] < o:
        j += 1
    for t in range(nf[k], j, -1):  # insert at j
        fs[k, t] = fs[k, t - 1]
        fz[k, t] = fz[k, t - 1]
    fs[k, j] = o
    fz[k, j] = size
    nf[k] += 1
    if j + 1 < nf[k] and fs[k, j] + fz[k, j] == fs[k, j + 1]:  # merge with the next
        fz[k, j] += fz[k, j + 1]
        for t in range(j + 1, nf[k] - 1):
            fs[k, t] = fs[k, t + 1]
            fz[k, t] = fz[k, t + 1]
        nf[k] -= 1
    if j > 0 and fs[k, j - 1] + fz[k, j - 1] == fs[k, j]:  # merge with the previous
        fz[k, j - 1] += fz[k, j]
        for t in range(j, nf[k] - 1):
            fs[k, t] = fs[k, t + 1]
            fz[k, t] = fz[k, t + 1]
        nf[k] -= 1
        j -= 1
    if fs[k, j] + fz[k, j] == top[k]:  # the last block: lower the end
        top[k] = fs[k, j]
        nf[k] -= 1


@njit(cache=True, nogil=True, error_model="numpy")
def plan_adjoints(root, op, in_a, in_b, n, flag, arena_of, meta_at, meta, aoff, peak, reach):
    """Adjoint offsets for a reverse sweep from ``root`` that keeps an adjoint range only
    while it is live: from the first touch of a record (when a consumer is swept) until the
    record itself has been swept.  Leaves keep theirs (they are read after the sweep).

    Walks the records as ``reverse_sweep`` does and reaches the same inputs (those that get
    an adjoint; every input listed by a concatenation; none through a comparison); each
    input's range is taken before the range of the record being swept is given back, so a
    rule never writes where it reads.  Writes ``aoff[i]`` for every slot reached (0
    elsewhere), ``peak[kind]``, the size each adjoint arena needs, and ``reach[i]`` = 1 for
    every record the sweep reaches (0 elsewhere).  Returns 0, or -1 when a released record
    or an unknown opcode is reached (the sweep will refuse it).
    """
    nr = root + 2
    fs = np.empty((2, nr), np.int64)
    fz = np.empty((2, nr), np.int64)
    nf = np.zeros(2, np.int64)
    top = np.zeros(2, np.int64)
    reach[:root + 1] = 0
    aoff[:root + 1] = 0
    peak[:] = 0
    reach[root] = 1
    aoff[root] = _take_block(fs, fz, nf, top, peak, arena_of[root], n[root])
    for i in range(root, -1, -1):
        if reach[i] == 0:
            continue
        o = op[i]
        if o == OP_LEAF:
            continue
        if flag[i] & FLAG_RELEASED or o < 0 or o >= NUM_OPCODES:
            return -1
        if not TRAITS[o] & NO_GRADIENT:
            if o == OP_CONCAT:
                m = meta_at[i]
                k = meta[m + 1]
                for j in range(k):
                    s = meta[m + 2 + j]
                    if reach[s] == 0:
                        reach[s] = 1
                        aoff[s] = _take_block(fs, fz, nf, top, peak, arena_of[s], n[s])
            else:
                for s in (in_a[i], in_b[i]):
                    if s >= 0 and reach[s] == 0 and op[s] != OP_CONST and not (
                            flag[s] & FLAG_CONSTANT):
                        reach[s] = 1
                        aoff[s] = _take_block(fs, fz, nf, top, peak, arena_of[s], n[s])
        if n[i] > 0:
            _give_block(fs, fz, nf, top, arena_of[i], aoff[i], n[i])
    return 0


@njit(cache=True, nogil=True, error_model="numpy")
def mark_constant(top, op, in_a, in_b, meta_at, flag, meta):
    """Set FLAG_CONSTANT on every record through whose inputs no adjoint can flow:
    comparisons and guards, and records whose inputs are all constants or flagged (replay
    turns its fixed inputs into constants, then flags what depends on them alone)."""
    for i in range(top):
        o = op[i]
        if o == OP_LEAF or o == OP_CONST:
            continue
        const = TRAITS[o] & NO_GRADIENT != 0
        if not const:
            a = in_a[i]
            b = in_b[i]
            const = not (a >= 0 and _gets_adjoint(op, flag, a)
                         or b >= 0 and _gets_adjoint(op, flag, b))
            if o == OP_CONCAT:
                m = meta_at[i]
                for t in range(meta[m + 1]):
                    if _gets_adjoint(op, flag, meta[m + 2 + t]):
                        const = False
        if const:
            flag[i] |= FLAG_CONSTANT


@njit(cache=True, nogil=True, error_model="numpy")
def mark_inputs(root, op, in_a, in_b, meta_at, meta, mark):
    """Set ``mark`` on ``root`` and every record it reads, directly or not."""
    mark[root] = 1
    for i in range(root, -1, -1):
        if mark[i]:
            if in_a[i] >= 0:
                mark[in_a[i]] = 1
            if in_b[i] >= 0:
                mark[in_b[i]] = 1
            m = meta_at[i]
            for t in range(_meta_inputs(op[i], meta, m)):
                mark[meta[m + 2 + t]] = 1


@njit(cache=True, nogil=True, error_model="numpy")
def mark_live(top, op, in_a, in_b, meta_at, flag, meta, keep):
    """Extend ``keep`` (roots set by the caller) to every record a kept, unreleased record reads.

    Released records keep their own value (a live tensor may still show it) but no longer
    hold their inputs alive: they can never be swept again.
    """
    for i in range(top - 1, -1, -1):
        if op[i] == OP_GUARD:  # guards are what replay checks: never dropped
            keep[i] = 1
        if keep[i] and not flag[i] & FLAG_RELEASED:
            if in_a[i] >= 0:
                keep[in_a[i]] = 1
            if in_b[i] >= 0:
                keep[in_b[i]] = 1
            m = meta_at[i]
            for t in range(_meta_inputs(op[i], meta, m)):
                keep[meta[m + 2 + t]] = 1


@njit(cache=True, nogil=True, error_model="numpy")
def compact(top, keep, op, in_a, in_b, off, n, param, meta_at, flag, arena_of, meta, val, new_val,
            val32, new_val32, new_slot, in_place, in_place32):
    """Move kept records down in place, their values into ``new_val``/``new_val32`` (by kind),
    their meta blocks down (remapping listed input slots).

    ``in_place`` (``in_place32``): ``new_val`` is ``val`` itself.  Values then move down
    within the arena, front to back (a kept value's new offset is never above its old one:
    offsets grow with the record index), and those already in place are not copied.

    Writes each old slot's new index (-1 if dropped) to ``new_slot`` and returns
    ``(records, float64 values, float32 values, meta)`` now in use.  Inputs always precede
    their record, so their new index is known when the record moves.
    """
    j = 0
    vt = 0
    vt32 = 0
    mt = 0
    for i in range(top):
        if not keep[i]:
            new_slot[i] = -1
            continue
        new_slot[i] = j
        nn = n[i]
        o = off[i]
        if arena_of[i] == KIND_F64:
            if not in_place:
                new_val[vt:vt + nn] = val[o:o + nn]
            elif vt != o:
                for t in range(nn):  # front to back: the ranges may overlap, vt < o
                    val[vt + t] = val[o + t]
            off[j] = vt
            vt += nn
        else:
            if not in_place32:
                new_val32[vt32:vt32 + nn] = val32[o:o + nn]
            elif vt32 != o:
                for t in range(nn):
                    val32[vt32 + t] = val32[o + t]
            off[j] = vt32
            vt32 += nn
        op[j] = op[i]
        in_a[j] = new_slot[in_a[i]] if in_a[i] >= 0 else -1
        in_b[j] = new_slot[in_b[i]] if in_b[i] >= 0 else -1
        n[j] = nn
        param[j] = param[i]
        flag[j] = flag[i]
        arena_of[j] = arena_of[i]
        m = meta_at[i]
        if m >= 0:
            ln = meta[m] + 1
            for t in range(ln):
                meta[mt + t] = meta[m + t]
            for t in range(_meta_inputs(op[j], meta, mt)):
                meta[mt + 2 + t] = new_slot[meta[mt + 2 + t]]
            meta_at[j] = mt
            mt += ln
        else:
            meta_at[j] = -1
        j += 1
    # the freed tail takes the defaults the recording path relies on (see Tape.push)
    in_b[j:top] = -1
    n[j:top] = 1
    param[j:top] = 0.0
    meta_at[j:top] = -1
    flag[j:top] = 0
    arena_of[j:top] = KIND_F64
    return j, vt, vt32, mt
