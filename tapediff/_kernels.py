"""Opcodes, their reverse rules, and the jitted sweeps over the tape's record arrays.

Everything Numba compiles lives in this one file.  Numba's on-disk cache is keyed by the source
file of each function, so opcode constants and kernels defined in another module could go
stale in the cache without Numba noticing; keeping them together makes every edit here
invalidate the cache as a whole.

Layout of a tape (see ``_tape.Tape``): record ``i`` produces slot ``i``.  ``dt[i]`` says which
arena holds its value (``KIND_F64`` or ``KIND_F32``): ``val[off[i]:off[i] + n[i]]`` (flat, C
order), its adjoint the same range of the matching adjoint arena.  ``ia[i]``/``ib[i]`` are
input slots (-1 when absent), ``p[i]`` a scalar parameter and ``mi[i]`` the offset of a
block in the int64 side table ``meta`` (``meta[m]`` holds the block's length, the payload
follows).  Opcodes in ``META_INPUTS`` list further input slots at the start of their
payload: ``meta[m+1]`` = count, then the slots.

The sweeps: ``reverse_sweep`` is one jitted loop over the records of one arena kind (Numba
compiles it once per kind, on first use).  It hands control back to the Python driver
(``Tape.sweep``) at a record of the other kind and at the two records whose rules are NumPy
calls: ``OP_MATMUL`` (BLAS; a BLAS call compiled into the sweep costs ~7 s of cold compile)
and ``OP_CAST`` (it spans both arenas).  Dispatch is a hand-written ``if/elif`` chain: Numba
cannot cache functions built with ``exec`` nor functions that receive other jitted
functions as arguments, so a registry-driven dispatch would lose the cache or need
generated code; ``tests/test_kernels.py`` checks that every opcode has a branch.
``forward_sweep`` is its mirror for replay: it recomputes each record's value from its
inputs (each primitive's forward rule sits beside its reverse rule) and stops at a guard
record whose value changed.

Kernels use ``error_model="numpy"``: division by zero and the like give inf/nan as in NumPy
(Numba's default raises ZeroDivisionError) and loops need no per-element checks.

Elementwise binary records accept an operand of size 1 against an output of size n (a
scalar operand): the kernels index it with ``k & mask`` where mask is 0 for such an
operand and -1 otherwise, which keeps one loop per rule and still vectorises for the
equal-size case.  Every other broadcast goes through ``OP_RESTRIDE``, whose adjoint is the
single place where broadcast adjoints are summed back to the input's shape.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

# ---------------------------------------------------------------------------------------------
# Opcodes.  Names say the operand kinds: plain = tensor(s) only, _C = tensor with the scalar
# constant p.  Elementwise rules are in ``partials``, the others in ``reverse_sweep``.
# ---------------------------------------------------------------------------------------------
OP_LEAF = 0  # value of a leaf that requires grad; its adjoint goes to the leaf's .grad
OP_CONST = 1  # a constant operand (copied in); never gets an adjoint
# binary elementwise: a (op) b
OP_ADD = 2
OP_SUB = 3
OP_MUL = 4
OP_DIV = 5
OP_POW = 6
OP_ARCTAN2 = 7
OP_HYPOT = 8
# tensor (op) constant p
OP_ADD_C = 9  # a + p   (a - c is recorded as a + (-c): exact in IEEE arithmetic)
OP_MUL_C = 10  # a * p   (-a is a * -1)
OP_RSUB_C = 11  # p - a
OP_DIV_C = 12  # a / p
OP_RDIV_C = 13  # p / a
OP_POW_C = 14  # a ** p
OP_RPOW_C = 15  # p ** a
# unary
OP_EXP = 16
OP_LOG = 17
OP_SQRT = 18
OP_SIN = 19
OP_COS = 20
OP_TAN = 21
OP_TANH = 22
OP_SIGMOID = 23
OP_RELU = 24
OP_ABS = 25
OP_LOG1P = 26
OP_EXPM1 = 27
OP_SINH = 28
OP_COSH = 29
OP_ARCSIN = 30
OP_ARCCOS = 31
OP_ARCTAN = 32
OP_LOG2 = 33
OP_LOG10 = 34
OP_EXP2 = 35
OP_SOFTPLUS = 36
LAST_ELEMENTWISE = OP_SOFTPLUS
# layout, selection, reductions and scans
OP_RESTRIDE = 37  # strided gather / sum: slicing, broadcasting, transposes, axis sums
OP_GATHER = 38  # out[k] = a[idx[k]]: advanced indexing, repeat, roll
OP_SCATTER = 39  # out = 0; out[idx[k]] += a[k]: functional index updates
OP_WHERE = 40  # out = a where w else b; weights w (1, 0, or 1/2 at ties) in a META_INPUTS slot
OP_CONCAT = 41  # inputs listed in meta, joined along an axis
OP_PROD = 42  # strided product reduction (OP_RESTRIDE's layout)
OP_CUMSUM = 43  # running sum along an axis
OP_CUMPROD = 44  # running product along an axis
OP_EXTREME = 45  # strided max (p = 1) or min (p = -1) reduction; ties share the adjoint
# data-dependent records, never differentiated
OP_CMP = 46  # a (cmp) b as 0/1 (p = CMP_*); the tie weights of maximum/minimum give 1/2
OP_GUARD = 47  # replay stops unless slot a still equals constant b (a value Python looked at)
# rules run by the Python driver (NumPy calls)
OP_MATMUL = 48  # batched (b, m, k) @ (b, k, n) through BLAS
OP_CAST = 49  # a value of the other arena kind (float32 <-> float64)
LAST_OPCODE = OP_CAST
META_INPUTS = (OP_WHERE, OP_CONCAT)
PYTHON_RULES = (OP_MATMUL, OP_CAST)
# Replay hands the forward rule of these back to NumPy on arrays of at least ``BIG``
# elements: NumPy's SIMD loops beat a scalar libm call per element by more than a hand-back
# costs (e.g. tanh: ~0.8 ns/element against ~9), and give NumPy's values exactly.
# (``forward_sweep`` tests the same set as a range: keep the two in step.)
UFUNC_RULES = tuple(o for o in range(OP_EXP, OP_EXP2 + 1)
                    if o not in (OP_SIGMOID, OP_RELU, OP_ABS))
BIG = 2048

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

# Name of each opcode as shown in reprs (grad_fn=<MulBackward0>).
OPCODES = {
    OP_LEAF: "Leaf", OP_CONST: "Const", OP_ADD: "Add", OP_SUB: "Sub", OP_MUL: "Mul",
    OP_DIV: "Div", OP_POW: "Pow", OP_ARCTAN2: "Atan2", OP_HYPOT: "Hypot", OP_ADD_C: "Add",
    OP_MUL_C: "Mul", OP_RSUB_C: "Rsub", OP_DIV_C: "Div", OP_RDIV_C: "Div", OP_POW_C: "Pow",
    OP_RPOW_C: "Pow", OP_EXP: "Exp", OP_LOG: "Log", OP_SQRT: "Sqrt", OP_SIN: "Sin",
    OP_COS: "Cos", OP_TAN: "Tan", OP_TANH: "Tanh", OP_SIGMOID: "Sigmoid", OP_RELU: "Relu",
    OP_ABS: "Abs", OP_LOG1P: "Log1P", OP_EXPM1: "Expm1", OP_SINH: "Sinh", OP_COSH: "Cosh",
    OP_ARCSIN: "Asin", OP_ARCCOS: "Acos", OP_ARCTAN: "Atan", OP_LOG2: "Log2",
    OP_LOG10: "Log10", OP_EXP2: "Exp2", OP_SOFTPLUS: "Softplus", OP_RESTRIDE: "View",
    OP_GATHER: "Index", OP_SCATTER: "IndexPut", OP_WHERE: "Where", OP_CONCAT: "Cat",
    OP_PROD: "Prod", OP_CUMSUM: "Cumsum", OP_CUMPROD: "Cumprod", OP_EXTREME: "Amax",
    OP_CMP: "Compare", OP_GUARD: "Guard", OP_MATMUL: "Mm", OP_CAST: "ToCopy",
}

KIND_F64 = 0
KIND_F32 = 1

# Record flag bits.
FLAG_RELEASED = 1  # swept by a backward without retain_graph: may not be swept again
FLAG_CONSTANT = 2  # depends on nothing differentiated (replay's fixed inputs): no adjoint

# The sweeps' return codes; a value >= 0 is the record where they handed back control.
SWEEP_DONE = -1
UNKNOWN_OPCODE = -2
# ``-3 - i`` means: record i was reached but has been released (reverse_sweep), or guard
# record i failed (forward_sweep).

_LN2 = math.log(2.0)
_LN10 = math.log(10.0)


# ---------------------------------------------------------------------------------------------
# Elementwise reverse rules: (g * d out/d a, g * d out/d b) from g (the output's adjoint),
# x, z (the inputs' values; z unused by unary rules), y (the output's value) and c (the
# record's parameter).  ``partials_hot`` holds the rules that have specialised array loops
# in the sweep; keeping it small lets LLVM inline and fold it into each of those loops.
# ---------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def partials_hot(o, g, x, z, y, c):
    if o == OP_ADD:
        return g, g
    if o == OP_SUB:
        return g, -g
    if o == OP_MUL:
        return g * z, g * x
    if o == OP_DIV:  # d/da = 1/b, d/db = -(a/b)/b
        return g / z, -g * y / z
    if o == OP_MUL_C:  # also ADD_C, RSUB_C, DIV_C with c = d out/d a (see reverse_sweep)
        return g * c, 0.0
    if o == OP_POW_C:  # c x^(c-1); squares and cubes are common enough to skip pow()
        if c == 2.0:
            return 2.0 * g * x, 0.0
        if c == 3.0:
            return 3.0 * g * (x * x), 0.0
        return (0.0 if c == 0.0 else g * c * x ** (c - 1.0)), 0.0
    if o == OP_EXP:
        return g * y, 0.0
    if o == OP_TANH:  # 1 - tanh^2
        return g * (1.0 - y * y), 0.0
    if o == OP_SIGMOID:  # s (1 - s)
        return g * y * (1.0 - y), 0.0
    if o == OP_RELU:  # 0 at 0, as PyTorch
        return (g if x > 0.0 else 0.0), 0.0
    return math.nan, math.nan


@njit(cache=True, nogil=True, error_model="numpy")
def partials(o, g, x, z, y, c):
    """Every elementwise rule (the hot ones via ``partials_hot``)."""
    if o == OP_POW:  # d/da = b a^(b-1) (0 where b == 0); d/db = a^b log a (0 where a == 0, b >= 0)
        da = 0.0 if z == 0.0 else g * z * x ** (z - 1.0)
        db = 0.0 if (x == 0.0 and z >= 0.0) else g * y * math.log(x)
        return da, db
    if o == OP_ARCTAN2:  # atan2(a, b): (b, -a) / (a^2 + b^2)
        r = x * x + z * z
        return g * z / r, -g * x / r
    if o == OP_HYPOT:
        return g * x / y, g * z / y
    if o == OP_ADD_C:
        return g, 0.0
    if o == OP_RSUB_C:
        return -g, 0.0
    if o == OP_DIV_C:
        return g / c, 0.0
    if o == OP_RDIV_C:  # d(c/a)/da = -(c/a)/a
        return -g * y / x, 0.0
    if o == OP_RPOW_C:
        return g * y * math.log(c), 0.0
    if o == OP_LOG:
        return g / x, 0.0
    if o == OP_SQRT:
        return g * 0.5 / y, 0.0
    if o == OP_SIN:
        return g * math.cos(x), 0.0
    if o == OP_COS:
        return -g * math.sin(x), 0.0
    if o == OP_TAN:  # 1 + tan^2
        return g * (1.0 + y * y), 0.0
    if o == OP_ABS:  # sign(x), 0 at 0
        return (g if x > 0.0 else (-g if x < 0.0 else 0.0)), 0.0
    if o == OP_LOG1P:
        return g / (1.0 + x), 0.0
    if o == OP_EXPM1:
        return g * (y + 1.0), 0.0
    if o == OP_SINH:
        return g * math.cosh(x), 0.0
    if o == OP_COSH:
        return g * math.sinh(x), 0.0
    if o == OP_ARCSIN:
        return g / math.sqrt(1.0 - x * x), 0.0
    if o == OP_ARCCOS:
        return -g / math.sqrt(1.0 - x * x), 0.0
    if o == OP_ARCTAN:
        return g / (1.0 + x * x), 0.0
    if o == OP_LOG2:
        return g / (x * _LN2), 0.0
    if o == OP_LOG10:
        return g / (x * _LN10), 0.0
    if o == OP_EXP2:
        return g * y * _LN2, 0.0
    if o == OP_SOFTPLUS:  # sigmoid(x) = 1 - exp(-softplus(x)), accurate through expm1
        return -g * math.expm1(-y), 0.0
    return partials_hot(o, g, x, z, y, c)


# ---------------------------------------------------------------------------------------------
# Elementwise forward rules: the value from x, z (the inputs) and c (the parameter), as the
# recording path computes it with NumPy (``_tensor._UNARY``, the binary operators).  Replay
# runs them; ``value_hot`` holds the ones with specialised array loops.
# ---------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def value_hot(o, x, z, c):
    if o == OP_ADD:
        return x + z
    if o == OP_SUB:
        return x - z
    if o == OP_MUL:
        return x * z
    if o == OP_DIV:
        return x / z
    if o == OP_ADD_C:
        return x + c
    if o == OP_MUL_C:
        return x * c
    if o == OP_EXP:
        return math.exp(x)
    if o == OP_TANH:
        return math.tanh(x)
    return math.nan


@njit(cache=True, nogil=True, error_model="numpy")
def value(o, x, z, c):
    """Every elementwise forward rule (the hot ones via ``value_hot``).  Numba's math
    functions give NumPy's results outside their domains (nan, -inf) without checks."""
    if o == OP_POW:
        return x ** z
    if o == OP_ARCTAN2:
        return math.atan2(x, z)
    if o == OP_HYPOT:
        return math.hypot(x, z)
    if o == OP_RSUB_C:
        return c - x
    if o == OP_DIV_C:
        return x / c
    if o == OP_RDIV_C:
        return c / x
    if o == OP_POW_C:
        return x * x if c == 2.0 else x ** c
    if o == OP_RPOW_C:
        return c ** x
    if o == OP_LOG:
        return math.log(x)
    if o == OP_SQRT:
        return math.sqrt(x)
    if o == OP_SIN:
        return math.sin(x)
    if o == OP_COS:
        return math.cos(x)
    if o == OP_TAN:
        return math.tan(x)
    if o == OP_SIGMOID:
        return _sigmoid(x)
    if o == OP_RELU:
        return x if x > 0.0 or x != x else 0.0
    if o == OP_ABS:
        return abs(x)
    if o == OP_LOG1P:
        return math.log1p(x)
    if o == OP_EXPM1:
        return math.expm1(x)
    if o == OP_SINH:
        return math.sinh(x)
    if o == OP_COSH:
        return math.cosh(x)
    if o == OP_ARCSIN:
        return math.asin(x)
    if o == OP_ARCCOS:
        return math.acos(x)
    if o == OP_ARCTAN:
        return math.atan(x)
    if o == OP_LOG2:
        return math.log2(x)
    if o == OP_LOG10:
        return math.log10(x)
    if o == OP_EXP2:
        return 2.0 ** x
    if o == OP_SOFTPLUS:
        return _softplus(x)
    return value_hot(o, x, z, c)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _sigmoid(x):  # never overflows: 1/(1+e) for x >= 0, e/(1+e) below
    e = math.exp(-abs(x))
    return (1.0 if x >= 0.0 else e) / (1.0 + e)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _softplus(x):  # log(1 + e^x) without overflow
    return (x if x > 0.0 else 0.0) + math.log1p(math.exp(-abs(x)))


@njit(cache=True, nogil=True, error_model="numpy")
def compare(o, x, z):
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


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _vector_value(o, val, oo, oa, ob, nn, ma, mb, c, generic=False):
    """Forward counterpart of ``_vector_rule``: y[k] = rule(x[k & ma], z[k & mb])."""
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
    """``_vector_value`` for the other rules: one loop per common unary rule (no dispatch per
    element; compiled once, on the first replay), the rarest through ``value``."""
    y = val[oo:oo + nn]
    x = val[oa:oa + nn] if ma else val[oa:oa + 1]
    if o == OP_LOG:
        for k in range(nn):
            y[k] = math.log(x[k & ma])
    elif o == OP_SQRT:
        for k in range(nn):
            y[k] = math.sqrt(x[k & ma])
    elif o == OP_SIN:
        for k in range(nn):
            y[k] = math.sin(x[k & ma])
    elif o == OP_COS:
        for k in range(nn):
            y[k] = math.cos(x[k & ma])
    elif o == OP_SIGMOID:
        for k in range(nn):
            y[k] = _sigmoid(x[k & ma])
    elif o == OP_RELU:
        for k in range(nn):
            v = x[k & ma]
            y[k] = v if v > 0.0 or v != v else 0.0
    elif o == OP_ABS:
        for k in range(nn):
            y[k] = abs(x[k & ma])
    elif o == OP_LOG1P:
        for k in range(nn):
            y[k] = math.log1p(x[k & ma])
    elif o == OP_SOFTPLUS:
        for k in range(nn):
            y[k] = _softplus(x[k & ma])
    elif o == OP_RSUB_C:
        for k in range(nn):
            y[k] = c - x[k & ma]
    elif o == OP_DIV_C:
        for k in range(nn):
            y[k] = x[k & ma] / c
    elif o == OP_RDIV_C:
        for k in range(nn):
            y[k] = c / x[k & ma]
    elif o == OP_POW_C and c == 2.0:
        for k in range(nn):
            v = x[k & ma]
            y[k] = v * v
    elif o == OP_POW_C and c == 3.0:
        for k in range(nn):
            v = x[k & ma]
            y[k] = v * v * v
    elif o == OP_POW_C and c == -1.0:
        for k in range(nn):
            y[k] = 1.0 / x[k & ma]
    else:
        _vector_value(o, val, oo, oa, ob, nn, ma, mb, c, True)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _vector_rule(o, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c, generic=False):
    """A rule over a record of nn > 1 elements.  At the specialised call sites ``o`` is a
    constant and ``generic`` False, so ``partials_hot``'s branches fold away and the loop
    vectorises; ``generic`` runs any rule through ``partials``, one call per element.  A
    size-1 operand is read with mask 0; its adjoint accumulates all nn contributions.
    ``fa``/``fb``: first touch of a full-size input, whose adjoint is assigned, not added."""
    g = adj[oo:oo + nn]
    y = val[oo:oo + nn]
    x = val[oa:]
    z = val[ob:]
    da = adj[oa:]
    db = adj[ob:]
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


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _gets_adjoint(op, flag, s):
    """Whether slot ``s`` receives adjoints: not a constant, nor flagged as one."""
    return op[s] != OP_CONST and not flag[s] & FLAG_CONSTANT


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _put(da, k, ma, pa, fa):
    if fa:
        da[k] = pa
    else:
        da[k & ma] += pa


@njit(cache=True, nogil=True, error_model="numpy")
def _vector_rule_any(o, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c):
    """``_vector_rule`` for the other rules, compiled once: one loop per common unary rule
    (whose libm calls dominate; no dispatch per element), the rarest through ``partials``."""
    if ob == oa and ga and not gb and o > OP_HYPOT:  # a unary rule (or a constant operand)
        g = adj[oo:oo + nn]
        y = val[oo:oo + nn]
        x = val[oa:]
        da = adj[oa:]
        if o == OP_LOG:
            for k in range(nn):
                _put(da, k, ma, g[k] / x[k & ma], fa)
            return
        if o == OP_SQRT:
            for k in range(nn):
                _put(da, k, ma, g[k] * 0.5 / y[k], fa)
            return
        if o == OP_SIN:
            for k in range(nn):
                _put(da, k, ma, g[k] * math.cos(x[k & ma]), fa)
            return
        if o == OP_COS:
            for k in range(nn):
                _put(da, k, ma, -g[k] * math.sin(x[k & ma]), fa)
            return
        if o == OP_ABS:
            for k in range(nn):
                v = x[k & ma]
                _put(da, k, ma, g[k] if v > 0.0 else (-g[k] if v < 0.0 else 0.0), fa)
            return
        if o == OP_LOG1P:
            for k in range(nn):
                _put(da, k, ma, g[k] / (1.0 + x[k & ma]), fa)
            return
        if o == OP_SOFTPLUS:
            for k in range(nn):
                _put(da, k, ma, -g[k] * math.expm1(-y[k]), fa)
            return
    _vector_rule(o, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c, True)


# ---------------------------------------------------------------------------------------------
# Layout, selection, reductions, scans
# ---------------------------------------------------------------------------------------------
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
    """A restride payload (see ``restride_adjoint``) as (ndim, start, R, shape, strides,
    number of elements iterated)."""
    d = meta[m + 1]
    shp = meta[m + 4:m + 4 + d]
    total = 1
    for j in range(d):
        total *= shp[j]
    return d, meta[m + 2], meta[m + 3], shp, meta[m + 4 + d:m + 4 + 2 * d], total


@njit(cache=True, nogil=True, error_model="numpy")
def restride_adjoint(meta, m, adj, oo, oa):
    """adj_in[pos(k)] += adj_out[k // R] over the record's strided iteration space.

    Payload at meta[m+1:]: ndim, start, R, shape[ndim], strides[ndim] (in elements of the
    input's flat layout).  The iteration runs over ``shape`` in C order; element k reads the
    input at ``start + sum(idx_d * strides_d)`` and belongs to output element ``k // R``
    (R > 1 when trailing dimensions are summed).
    """
    d, start, r, shp, st, total = _layout(meta, m)
    inner = shp[d - 1]
    s = st[d - 1]
    if total == 0:
        return
    g = adj[oo:]
    a = adj[oa:]
    idx = np.zeros(d, np.int64)
    base = start
    k = 0
    for _ in range(total // inner):
        if r == 1:
            if s == 1:
                for t in range(inner):
                    a[base + t] += g[k + t]
            else:
                for t in range(inner):
                    a[base + t * s] += g[k + t]
        else:
            # summed axes are the trailing ones, so r is a multiple of inner: one output
            # element per inner run
            gk = g[k // r]
            if s == 1:
                for t in range(inner):
                    a[base + t] += gk
            else:
                for t in range(inner):
                    a[base + t * s] += gk
        k += inner
        base = _advance(idx, shp, st, base, d - 2)  # over the outer dimensions


@njit(cache=True, nogil=True, error_model="numpy")
def restride_value(meta, m, val, oo, oa, nn):
    """Forward of ``restride_adjoint``: out[k // R] (+)= in[pos(k)], in the same strided
    iteration (no position array)."""
    d, start, r, shp, st, total = _layout(meta, m)
    inner = shp[d - 1]
    s = st[d - 1]
    y = val[oo:oo + nn]
    if r > 1:
        y[:] = 0.0
    if total == 0:
        return
    x = val[oa:]
    idx = np.zeros(d, np.int64)
    base = start
    k = 0
    for _ in range(total // inner):
        if r == 1:
            if s == 1:
                for t in range(inner):
                    y[k + t] = x[base + t]
            else:
                for t in range(inner):
                    y[k + t] = x[base + t * s]
        else:  # one output element per inner run (r is a multiple of inner)
            acc = 0.0
            if s == 1:
                for t in range(inner):
                    acc += x[base + t]
            else:
                for t in range(inner):
                    acc += x[base + t * s]
            y[k // r] += acc
        k += inner
        base = _advance(idx, shp, st, base, d - 2)


@njit(cache=True, nogil=True, error_model="numpy")
def restride_positions(meta, m):
    """The input position of every element of a restride layout, in iteration order."""
    d, start, _, shp, st, total = _layout(meta, m)
    pos = np.empty(total, np.int64)
    idx = np.zeros(d, np.int64)
    base = start
    for k in range(total):
        pos[k] = base
        base = _advance(idx, shp, st, base, d - 1)
    return pos


@njit(cache=True, nogil=True, error_model="numpy")
def prod_adjoint(meta, m, val, adj, oo, oa, nn):
    """Product over groups of R elements: d/dx_i = g * prod_{j != i} x_j, from exclusive
    prefix and suffix products, so zeros in the group are handled exactly."""
    r = meta[m + 3]
    pos = restride_positions(meta, m)
    x = val[oa:]
    a = adj[oa:]
    pre = np.empty(r, val.dtype)
    for j in range(nn):
        g = adj[oo + j]
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
def prod_value(meta, m, val, oo, oa, nn):
    """Forward of ``prod_adjoint``: the product of each group of R elements."""
    r = meta[m + 3]
    pos = restride_positions(meta, m)
    x = val[oa:]
    for j in range(nn):
        acc = 1.0
        for t in range(r):
            acc *= x[pos[j * r + t]]
        val[oo + j] = acc


@njit(cache=True, nogil=True, error_model="numpy")
def extreme_value(meta, m, val, oo, oa, nn, sign):
    """Max (sign 1) or min (sign -1) of each group of R elements; NaN wins, as in NumPy."""
    r = meta[m + 3]
    pos = restride_positions(meta, m)
    x = val[oa:]
    for j in range(nn):
        best = x[pos[j * r]]
        for t in range(1, r):
            v = x[pos[j * r + t]]
            if v != v:
                best = v
                break
            if (v - best) * sign > 0.0:
                best = v
        val[oo + j] = best


@njit(cache=True, nogil=True, error_model="numpy")
def extreme_adjoint(meta, m, val, adj, oo, oa, nn):
    """The adjoint of a group's extreme goes to the elements equal to it, in equal shares."""
    r = meta[m + 3]
    pos = restride_positions(meta, m)
    x = val[oa:]
    a = adj[oa:]
    for j in range(nn):
        y = val[oo + j]
        cnt = 0
        for t in range(r):
            v = x[pos[j * r + t]]
            if v == y or (v != v and y != y):
                cnt += 1
        g = adj[oo + j] / max(cnt, 1)
        for t in range(r):
            q = pos[j * r + t]
            v = x[q]
            if v == y or (v != v and y != y):
                a[q] += g


@njit(cache=True, nogil=True, error_model="numpy")
def scan_value(o, meta, m, val, oo, oa):
    """Forward of ``scan_adjoint``: running sum or product along the middle axis."""
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
def scan_adjoint(o, meta, m, val, adj, oo, oa):
    """Reverse rules of cumsum and cumprod along the middle axis of (outer, length, inner)."""
    outer = meta[m + 1]
    ln = meta[m + 2]
    inner = meta[m + 3]
    g = adj[oo:]
    y = val[oo:]
    x = val[oa:]
    a = adj[oa:]
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
def concat_adjoint(meta, m, op, off, n, flag, adj, oo, touched):
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
                for t in range(w):
                    if first:
                        a[u * w + t] = g[u * row + col + t]
                    else:
                        a[u * w + t] += g[u * row + col + t]
            touched[s] = 1
        col += w


@njit(cache=True, nogil=True, error_model="numpy")
def concat_value(meta, m, off, n, val, oo):
    """Forward of ``concat_adjoint``: each input's rows placed side by side."""
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
            for t in range(w):
                y[u * row + col + t] = x[u * w + t]
        col += w


@njit(cache=True, nogil=True, error_model="numpy")
def guard_holds(val, oa, ob, nn):
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
# The sweep
# ---------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def reverse_sweep(start, kind, op, ia, ib, off, n, p, mi, flag, dt, meta, val, adj, touched,
                  leaf_slots, nleaf):
    """Accumulate adjoints of ``kind`` records from ``start`` down to slot 0.

    ``touched[i]`` is 1 once slot i holds an adjoint (the caller seeds the root).  An input's
    adjoint is assigned, not added, on its first touch where the rule writes every element
    once, and zeroed first otherwise, so the arena is never cleared as a whole.  Leaves
    reached are appended to ``leaf_slots`` (count in ``nleaf[0]``).

    Returns ``SWEEP_DONE``; or the index of a record the Python driver must handle (another
    kind, or a rule in ``PYTHON_RULES``) before resuming below it; ``UNKNOWN_OPCODE``; or
    ``-3 - i`` when released record i is reached.  No flag is changed here.
    """
    for i in range(start, -1, -1):
        if touched[i] == 0:
            continue
        if flag[i] & FLAG_RELEASED:
            return -3 - i
        o = op[i]
        if o == OP_LEAF:
            leaf_slots[nleaf[0]] = i
            nleaf[0] += 1
            continue
        if o < 0 or o > LAST_OPCODE:
            return UNKNOWN_OPCODE
        if dt[i] != kind or o == OP_MATMUL or o == OP_CAST:
            return i
        if o == OP_CMP or o == OP_GUARD:  # no gradient flows through a comparison
            continue
        a = ia[i]
        b = ib[i]
        oo = off[i]
        nn = n[i]
        c = p[i]
        if o == OP_CONCAT:
            concat_adjoint(meta, mi[i], op, off, n, flag, adj, oo, touched)
            continue
        # (_gets_adjoint written out: a call here, even inlined, costs ~12 ns per record)
        ga = a >= 0 and op[a] != OP_CONST and not flag[a] & FLAG_CONSTANT
        gb = b >= 0 and op[b] != OP_CONST and not flag[b] & FLAG_CONSTANT
        if not ga and not gb:  # nothing to hand an adjoint to
            continue
        oa = off[a] if a >= 0 else oo
        ob = off[b] if b >= 0 else oa
        if nn == 1 and o <= LAST_ELEMENTWISE:
            # scalar record: one rule evaluation, first touch assigns
            pa, pb = partials(o, adj[oo], val[oa], val[ob], val[oo], c)
            if ga:
                if touched[a]:
                    adj[oa] += pa
                else:
                    adj[oa] = pa
                    touched[a] = 1
            if gb:
                if touched[b]:
                    adj[ob] += pb
                else:
                    adj[ob] = pb
                    touched[b] = 1
            continue
        # First touch: a full-size input of an elementwise rule (or where) is assigned,
        # any other is zeroed first.  When b is a, a's first touch has happened: b adds.
        same_a = a >= 0 and n[a] == nn and (o <= LAST_ELEMENTWISE or o == OP_WHERE)
        fa = ga and touched[a] == 0 and same_a
        if ga and touched[a] == 0:
            if not fa:
                adj[oa:oa + n[a]] = 0.0
            touched[a] = 1
        fb = gb and touched[b] == 0 and n[b] == nn and (o <= LAST_ELEMENTWISE or o == OP_WHERE)
        if gb and touched[b] == 0:
            if not fb:
                adj[ob:ob + n[b]] = 0.0
            touched[b] = 1
        ma = -1 if a >= 0 and n[a] == nn else 0
        mb = -1 if b >= 0 and n[b] == nn else 0
        # Common rules get loops specialised on a constant opcode (the cheap ones are
        # memory-bound and vectorise; a per-element branch and call would cost 1-10 ns per
        # element); the rare ones share one loop, which keeps compile time down (each
        # specialised loop adds ~0.3 s to a cold compile).
        if o == OP_RESTRIDE:
            restride_adjoint(meta, mi[i], adj, oo, oa)
        elif o == OP_ADD:
            _vector_rule(OP_ADD, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
        elif o == OP_SUB:
            _vector_rule(OP_SUB, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
        elif o == OP_MUL:
            _vector_rule(OP_MUL, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
        elif o == OP_DIV:
            _vector_rule(OP_DIV, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
        elif OP_ADD_C <= o <= OP_DIV_C:  # ADD_C, MUL_C, RSUB_C, DIV_C: d/da is a constant k
            k = 1.0 if o == OP_ADD_C else (c if o == OP_MUL_C else (-1.0 if o == OP_RSUB_C
                                                                      else 1.0 / c))
            _vector_rule(OP_MUL_C, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, k)
        elif o == OP_POW_C:
            _vector_rule(OP_POW_C, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
        elif o == OP_EXP:
            _vector_rule(OP_EXP, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
        elif o == OP_TANH:
            _vector_rule(OP_TANH, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
        elif o == OP_SIGMOID:
            _vector_rule(OP_SIGMOID, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
        elif o == OP_RELU:
            _vector_rule(OP_RELU, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
        elif o <= LAST_ELEMENTWISE:
            _vector_rule_any(o, val, adj, oo, oa, ob, nn, ma, mb, ga, gb, fa, fb, c)
        elif o == OP_GATHER:  # adj_a[idx[k]] += g[k]: repeated indices accumulate
            m = mi[i] + 1
            for k in range(nn):
                adj[oa + meta[m + k]] += adj[oo + k]
        elif o == OP_SCATTER:  # adj_a[k] += g[idx[k]]
            m = mi[i] + 1
            for k in range(n[a]):
                adj[oa + k] += adj[oo + meta[m + k]]
        elif o == OP_WHERE:  # weights w: a gets g w, b gets g (1 - w)
            ws = meta[mi[i] + 2]
            w = val[off[ws]:]
            mw = -1 if n[ws] == nn else 0
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
        elif o == OP_EXTREME:
            extreme_adjoint(meta, mi[i], val, adj, oo, oa, nn)
        elif o == OP_PROD:
            prod_adjoint(meta, mi[i], val, adj, oo, oa, nn)
        elif o == OP_CUMSUM or o == OP_CUMPROD:
            scan_adjoint(o, meta, mi[i], val, adj, oo, oa)
        else:
            return UNKNOWN_OPCODE
    return SWEEP_DONE


@njit(cache=True, nogil=True, error_model="numpy")
def forward_sweep(start, stop, kind, op, ia, ib, off, n, p, mi, dt, meta, val, big):
    """Recompute the values of ``kind`` records ``start`` .. ``stop - 1`` from their inputs.

    Leaves and constants keep the values in the arena (the caller writes new inputs first).
    Returns ``SWEEP_DONE``; or the index of a record the Python driver must run (another
    kind, a rule in ``PYTHON_RULES``, or one in ``UFUNC_RULES`` of at least ``big``
    elements) before resuming after it; ``UNKNOWN_OPCODE``; or ``-3 - i`` when guard record
    i fails: a value Python looked at while recording changed.
    """
    for i in range(start, stop):
        o = op[i]
        if o == OP_LEAF or o == OP_CONST:
            continue
        if o < 0 or o > LAST_OPCODE:
            return UNKNOWN_OPCODE
        if dt[i] != kind or o == OP_MATMUL or o == OP_CAST:
            return i
        a = ia[i]
        b = ib[i]
        oo = off[i]
        nn = n[i]
        c = p[i]
        oa = off[a] if a >= 0 else oo
        ob = off[b] if b >= 0 else oa
        if o == OP_GUARD:
            if not guard_holds(val, oa, ob, n[a]):
                return -3 - i
            continue
        if nn == 1 and o <= LAST_ELEMENTWISE:
            val[oo] = value(o, val[oa], val[ob], c)
            continue
        if nn >= big and OP_EXP <= o <= OP_EXP2 and o != OP_SIGMOID and o != OP_RELU \
                and o != OP_ABS:
            return i  # one of UFUNC_RULES: NumPy's loop
        ma = -1 if a >= 0 and n[a] == nn else 0
        mb = -1 if b >= 0 and n[b] == nn else 0
        if o == OP_RESTRIDE:
            restride_value(meta, mi[i], val, oo, oa, nn)
        elif o == OP_ADD:
            _vector_value(OP_ADD, val, oo, oa, ob, nn, ma, mb, c)
        elif o == OP_SUB:
            _vector_value(OP_SUB, val, oo, oa, ob, nn, ma, mb, c)
        elif o == OP_MUL:
            _vector_value(OP_MUL, val, oo, oa, ob, nn, ma, mb, c)
        elif o == OP_DIV:
            _vector_value(OP_DIV, val, oo, oa, ob, nn, ma, mb, c)
        elif o == OP_ADD_C:
            _vector_value(OP_ADD_C, val, oo, oa, ob, nn, ma, mb, c)
        elif o == OP_MUL_C:
            _vector_value(OP_MUL_C, val, oo, oa, ob, nn, ma, mb, c)
        elif o == OP_EXP:
            _vector_value(OP_EXP, val, oo, oa, ob, nn, ma, mb, c)
        elif o == OP_TANH:
            _vector_value(OP_TANH, val, oo, oa, ob, nn, ma, mb, c)
        elif o <= LAST_ELEMENTWISE:
            _vector_value_any(o, val, oo, oa, ob, nn, ma, mb, c)
        elif o == OP_CMP:
            y = val[oo:oo + nn]
            x = val[oa:]
            z = val[ob:]
            cm = int(c)
            for k in range(nn):
                y[k] = compare(cm, x[k & ma], z[k & mb])
        elif o == OP_GATHER:
            m = mi[i] + 1
            for k in range(nn):
                val[oo + k] = val[oa + meta[m + k]]
        elif o == OP_SCATTER:
            m = mi[i] + 1
            val[oo:oo + nn] = 0.0
            for k in range(n[a]):
                val[oo + meta[m + k]] += val[oa + k]
        elif o == OP_WHERE:  # a where the weight is set (1, or 1/2 at a tie), else b
            ws = meta[mi[i] + 2]
            w = val[off[ws]:]
            mw = -1 if n[ws] == nn else 0
            for k in range(nn):
                val[oo + k] = val[oa + (k & ma)] if w[k & mw] >= 0.5 else val[ob + (k & mb)]
        elif o == OP_CONCAT:
            concat_value(meta, mi[i], off, n, val, oo)
        elif o == OP_PROD:
            prod_value(meta, mi[i], val, oo, oa, nn)
        elif o == OP_EXTREME:
            extreme_value(meta, mi[i], val, oo, oa, nn, c)
        elif o == OP_CUMSUM or o == OP_CUMPROD:
            scan_value(o, meta, mi[i], val, oo, oa)
        else:
            return UNKNOWN_OPCODE
    return SWEEP_DONE


@njit(cache=True, nogil=True, error_model="numpy")
def replay_sweeps(top, root, kind, op, ia, ib, off, n, p, mi, flag, dt, meta, val, adj,
                  touched, leaf_slots, nleaf):
    """Replay in one call: the forward sweep over records 0 .. top - 1, then the reverse
    sweep from the scalar ``root`` (if >= 0) seeded with 1.  For tapes of one arena kind
    without Python rules (``UFUNC_RULES`` stay in the compiled loops here).  Returns
    ``-3 - i`` when guard i fails, else the reverse sweep's code."""
    r = forward_sweep(0, top, kind, op, ia, ib, off, n, p, mi, dt, meta, val, 1 << 62)
    if r != SWEEP_DONE or root < 0:
        return r
    touched[:root + 1] = 0
    touched[root] = 1
    adj[off[root]] = 1.0
    nleaf[0] = 0
    return reverse_sweep(root, kind, op, ia, ib, off, n, p, mi, flag, dt, meta, val, adj,
                         touched, leaf_slots, nleaf)


@njit(cache=True, nogil=True, error_model="numpy")
def _meta_inputs(o, meta, m):
    """Number of input slots listed in the meta block of a record with opcode ``o``."""
    if m >= 0 and (o == OP_WHERE or o == OP_CONCAT):
        return meta[m + 1]
    return 0


@njit(cache=True, nogil=True, error_model="numpy")
def mark_constant(top, op, ia, ib, mi, flag, meta):
    """Set FLAG_CONSTANT on every record through whose inputs no adjoint can flow:
    comparisons and guards, and records whose inputs are all constants or flagged (replay
    turns its fixed inputs into constants, then flags what depends on them alone)."""
    for i in range(top):
        o = op[i]
        if o == OP_LEAF or o == OP_CONST:
            continue
        const = o == OP_CMP or o == OP_GUARD
        if not const:
            a = ia[i]
            b = ib[i]
            const = not (a >= 0 and _gets_adjoint(op, flag, a)
                         or b >= 0 and _gets_adjoint(op, flag, b))
            if o == OP_CONCAT:
                m = mi[i]
                for t in range(meta[m + 1]):
                    if _gets_adjoint(op, flag, meta[m + 2 + t]):
                        const = False
        if const:
            flag[i] |= FLAG_CONSTANT


@njit(cache=True, nogil=True, error_model="numpy")
def mark_live(top, op, ia, ib, mi, flag, meta, keep):
    """Extend ``keep`` (roots set by the caller) to every record a kept, unreleased record reads.

    Released records keep their own value (a live tensor may still show it) but no longer
    hold their inputs alive: they can never be swept again.
    """
    for i in range(top - 1, -1, -1):
        if op[i] == OP_GUARD:  # guards are what replay checks: never dropped
            keep[i] = 1
        if keep[i] and not flag[i] & FLAG_RELEASED:
            if ia[i] >= 0:
                keep[ia[i]] = 1
            if ib[i] >= 0:
                keep[ib[i]] = 1
            m = mi[i]
            for t in range(_meta_inputs(op[i], meta, m)):
                keep[meta[m + 2 + t]] = 1


@njit(cache=True, nogil=True, error_model="numpy")
def compact(top, keep, op, ia, ib, off, n, p, mi, flag, dt, meta, val, new_val, val32,
            new_val32, new_slot):
    """Move kept records down in place, their values into ``new_val``/``new_val32`` (by kind),
    their meta blocks down (remapping listed input slots).

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
        if dt[i] == KIND_F64:
            new_val[vt:vt + nn] = val[off[i]:off[i] + nn]
            off[j] = vt
            vt += nn
        else:
            new_val32[vt32:vt32 + nn] = val32[off[i]:off[i] + nn]
            off[j] = vt32
            vt32 += nn
        op[j] = op[i]
        ia[j] = new_slot[ia[i]] if ia[i] >= 0 else -1
        ib[j] = new_slot[ib[i]] if ib[i] >= 0 else -1
        n[j] = nn
        p[j] = p[i]
        flag[j] = flag[i]
        dt[j] = dt[i]
        m = mi[i]
        if m >= 0:
            ln = meta[m] + 1
            for t in range(ln):
                meta[mt + t] = meta[m + t]
            for t in range(_meta_inputs(op[j], meta, mt)):
                meta[mt + 2 + t] = new_slot[meta[mt + 2 + t]]
            mi[j] = mt
            mt += ln
        else:
            mi[j] = -1
        j += 1
    # the freed tail takes the defaults the recording path relies on (see Tape.push)
    ib[j:top] = -1
    n[j:top] = 1
    p[j:top] = 0.0
    mi[j:top] = -1
    flag[j:top] = 0
    dt[j:top] = KIND_F64
    return j, vt, vt32, mt
