"""The table of primitives: one row per opcode, the Python side of each primitive.

A primitive's kernels (its opcode, forward rule and reverse rule) are one block in
``_kernels``; its row here says everything else: the name its records show in reprs
(``grad_fn=<ExpBackward0>``), the eager forwards that compute its value while recording (a
NumPy function for arrays, a float function for scalar code), the ``td.*`` function and
``Tensor`` method it defines, the NumPy/SciPy ufuncs that dispatch to it, whether replay
hands large records of it back to NumPy, and the domain its tests draw inputs from.

Everything per primitive elsewhere is derived from this table: the grad_fn names
(``GRAD_FN``), the eager specs the recording engine uses (``UNARY``, ``BINARY``), replay's
NumPy hand-back (``TO_NUMPY``), the NumPy dispatch table, the ``td.*`` functions and methods
(``tapediff._src._functions``) and the op tests (``tests/``).  This module imports nothing of
tapediff's but the kernels and ``_linalg_rules`` (NumPy rules of the linear-algebra
primitives), so the storage layer may read it.

Adding a primitive: its block in ``_kernels`` (opcode, ``fwd_``/``adj_`` rules, one line in
each dispatch), its row here, and a reference for its tests; CONTRIBUTING.md walks through it.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import _kernels as K
from . import _linalg_rules as LR
from . import _special_rules as SR

#: An interval (low, high) of test inputs; a domain is a tuple of them (their union).
Interval = tuple[float, float]

ANY: tuple[Interval, ...] = ((-2.0, 2.0),)
WIDE = ((-6.0, 6.0),)  # sigmoid & co.: both branches of an overflow-free formula
EXP = ((-3.0, 3.0),)  # exp-like growth: finite differences stay accurate
POS = ((0.25, 3.0),)  # logs, square roots and pow bases
NONZERO = ((-2.0, -0.25), (0.25, 2.0))  # denominators; the kinks of abs and relu
TAN = ((-1.2, 1.2),)  # inside (-pi/2, pi/2) with room to spare
LOG1P = ((-0.5, 2.0),)  # away from the pole at -1
ARC = ((-0.9, 0.9),)  # inside (-1, 1), away from the infinite slopes


@dataclass(frozen=True)
class Primitive:
    """One primitive.  ``array(x[, z], out=None)`` and ``scalar(x[, z])`` are its eager
    forwards (``scalar`` may raise ``ArithmeticError``/``ValueError`` outside its domain:
    the caller then falls back to ``array``); ``ufuncs`` name the ufuncs that dispatch to
    it (``"numpy.exp"``; ``"scipy.special.erf"`` is resolved once SciPy is imported)."""

    op: int
    grad_fn: str
    name: str = ""  # td.<name>() and Tensor.<name>() for the public elementwise primitives
    arity: int = 1  # tensor inputs
    array: Callable[..., Any] | None = None
    scalar: Callable[..., Any] | None = None
    ufuncs: tuple[str, ...] = ()
    replay_numpy: bool = False  # replay runs ``array`` on records of >= _kernels.BIG elements
    domain: tuple[tuple[Interval, ...], ...] = ()  # test inputs, one domain per operand
    doc: str = ""
    # A PYTHON_RULE primitive of shaped operands (linear algebra, special functions) gives
    # its rules as NumPy functions, run by the Python driver (``Tape._python_value`` /
    # ``Tape._python_rule``) on views shaped from the record's layout (``python_layout``):
    #   forward(out, *inputs, param) -> None         writes the value into ``out``
    #   reverse(g, out, *inputs, param, needs) -> tuple   one adjoint (or None) per input;
    #   ``needs[j]`` says whether input j takes one (the rule may skip the work otherwise)
    forward: Callable[..., Any] | None = None
    reverse: Callable[..., Any] | None = None
    # Its higher-order rules, on the same views:
    #   tangent(tout, out, inputs, tins, param) -> None   forward mode: writes the output's
    #   tangent into ``tout`` (shaped as ``out``) from the inputs' tangents ``tins``
    #   graph(T, g, out, inputs, param, needs) -> tuple    the reverse rule written with
    #   tensor operations (``T`` is the ``tapediff`` namespace; g, out and inputs are
    #   tensors), which a backward with ``create_graph=True`` records
    tangent: Callable[..., Any] | None = None
    graph: Callable[..., Any] | None = None


# -- eager forwards written here (the others are NumPy's and math's) -------------------------
def _sigmoid_f(x: float) -> float:
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _sigmoid_np(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    e = np.exp(-np.abs(x))  # never overflows: 1/(1+e) for x >= 0, e/(1+e) below
    return np.divide(np.where(x >= 0, np.ones((), e.dtype), e), 1.0 + e, out=out)


def _relu_f(x: float) -> float:
    return x if x > 0.0 or x != x else 0.0


def _relu_np(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return np.maximum(x, np.zeros((), x.dtype), out=out)


def _softplus_f(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _softplus_np(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return np.logaddexp(np.zeros((), x.dtype), x, out=out)


def _exp2_f(x: float) -> float:
    return 2.0 ** x


_erf_ufunc: Any = None


def _erf_np(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """math.erf as a NumPy ufunc (float32 and float64 loops), compiled on first use."""
    global _erf_ufunc
    if _erf_ufunc is None:
        from numba import vectorize
        # float32 first: NumPy takes the first loop an input casts to safely (ints: float64)
        _erf_ufunc = vectorize(["float32(float32)", "float64(float64)"], cache=True)(
            lambda v: math.erf(v))
    return _erf_ufunc(x, out=out)


def _spow(x: float, y: float) -> float:
    r = x ** y
    if type(r) is complex:  # NumPy gives nan for a negative base and a fractional exponent
        raise ValueError
    return r


def _math(op: int, grad_fn: str, name: str, array: Any, scalar: Any, domain: Any, doc: str,
          ufuncs: tuple | None = None, replay_numpy: bool = False) -> Primitive:
    """A public unary primitive; by default ``numpy.<name>`` dispatches to it."""
    return Primitive(op, grad_fn, name, 1, array, scalar,
                     (f"numpy.{name}",) if ufuncs is None else ufuncs, replay_numpy, (domain,),
                     doc)


PRIMITIVES: tuple[Primitive, ...] = (
    Primitive(K.OP_LEAF, "Leaf"),
    Primitive(K.OP_CONST, "Const"),
    # tensor (op) tensor: the operators, and td.arctan2/td.hypot
    Primitive(K.OP_ADD, "Add", "add", 2, np.add, operator.add, domain=(ANY, ANY)),
    Primitive(K.OP_SUB, "Sub", "subtract", 2, np.subtract, operator.sub, domain=(ANY, ANY)),
    Primitive(K.OP_MUL, "Mul", "multiply", 2, np.multiply, operator.mul, domain=(ANY, ANY)),
    Primitive(K.OP_DIV, "Div", "divide", 2, np.true_divide, operator.truediv,
              domain=(ANY, NONZERO)),
    Primitive(K.OP_POW, "Pow", "power", 2, np.power, _spow, domain=(POS, ANY)),
    Primitive(K.OP_ARCTAN2, "Atan2", "arctan2", 2, np.arctan2, math.atan2,
              ("numpy.arctan2",), domain=(NONZERO, ANY),  # y != 0: off the branch cut
              doc="Elementwise angle of the point (x, y), as ``np.arctan2``."),
    Primitive(K.OP_HYPOT, "Hypot", "hypot", 2, np.hypot, math.hypot, ("numpy.hypot",),
              domain=(NONZERO, ANY),
              doc="Elementwise sqrt(a**2 + b**2) without overflow, as ``np.hypot``."),
    # tensor (op) Python number, recorded with the number as the parameter
    Primitive(K.OP_ADD_C, "Add", domain=(ANY,)),
    Primitive(K.OP_MUL_C, "Mul", domain=(ANY,)),
    Primitive(K.OP_RSUB_C, "Rsub", domain=(ANY,)),
    Primitive(K.OP_DIV_C, "Div", domain=(ANY,)),
    Primitive(K.OP_RDIV_C, "Div", domain=(NONZERO,)),
    Primitive(K.OP_POW_C, "Pow", domain=(POS,)),
    Primitive(K.OP_RPOW_C, "Pow", domain=(ANY,)),
    # unary: td.<name>(x), x.<name>(), np.<name>(x)
    _math(K.OP_EXP, "Exp", "exp", np.exp, math.exp, EXP, "Elementwise e**x.\n\n"
          ">>> import tapediff as td\n>>> td.exp(td.tensor(0.0))\ntensor(1.)",
          replay_numpy=True),
    _math(K.OP_LOG, "Log", "log", np.log, math.log, POS,
          "Elementwise natural logarithm (nan below 0 and -inf at 0, as NumPy).",
          replay_numpy=True),
    _math(K.OP_SQRT, "Sqrt", "sqrt", np.sqrt, math.sqrt, POS,
          "Elementwise square root (its gradient at 0 is inf, as PyTorch's).",
          replay_numpy=True),
    _math(K.OP_SIN, "Sin", "sin", np.sin, math.sin, ANY, "Elementwise sine.",
          replay_numpy=True),
    _math(K.OP_COS, "Cos", "cos", np.cos, math.cos, ANY, "Elementwise cosine.",
          replay_numpy=True),
    _math(K.OP_TAN, "Tan", "tan", np.tan, math.tan, TAN, "Elementwise tangent.",
          replay_numpy=True),
    _math(K.OP_TANH, "Tanh", "tanh", np.tanh, math.tanh, EXP,
          "Elementwise hyperbolic tangent.", replay_numpy=True),
    _math(K.OP_SIGMOID, "Sigmoid", "sigmoid", _sigmoid_np, _sigmoid_f, WIDE,
          "Elementwise logistic function 1 / (1 + e**-x), computed without overflow.",
          ufuncs=("scipy.special.expit",)),
    _math(K.OP_RELU, "Relu", "relu", _relu_np, _relu_f, NONZERO,
          "Elementwise max(x, 0); the gradient at 0 is 0, as in PyTorch.", ufuncs=()),
    _math(K.OP_ABS, "Abs", "abs", np.abs, abs, NONZERO,
          "Elementwise absolute value; the gradient at 0 is 0, as in PyTorch.",
          ufuncs=("numpy.absolute",)),
    _math(K.OP_LOG1P, "Log1P", "log1p", np.log1p, math.log1p, LOG1P,
          "Elementwise log(1 + x), accurate near 0.", replay_numpy=True),
    _math(K.OP_EXPM1, "Expm1", "expm1", np.expm1, math.expm1, EXP,
          "Elementwise e**x - 1, accurate near 0.", replay_numpy=True),
    _math(K.OP_SINH, "Sinh", "sinh", np.sinh, math.sinh, EXP, "Elementwise hyperbolic sine.",
          replay_numpy=True),
    _math(K.OP_COSH, "Cosh", "cosh", np.cosh, math.cosh, EXP,
          "Elementwise hyperbolic cosine.", replay_numpy=True),
    _math(K.OP_ARCSIN, "Asin", "arcsin", np.arcsin, math.asin, ARC,
          "Elementwise inverse sine.", replay_numpy=True),
    _math(K.OP_ARCCOS, "Acos", "arccos", np.arccos, math.acos, ARC,
          "Elementwise inverse cosine.", replay_numpy=True),
    _math(K.OP_ARCTAN, "Atan", "arctan", np.arctan, math.atan, WIDE,
          "Elementwise inverse tangent.", replay_numpy=True),
    _math(K.OP_LOG2, "Log2", "log2", np.log2, math.log2, POS,
          "Elementwise base-2 logarithm.", replay_numpy=True),
    _math(K.OP_LOG10, "Log10", "log10", np.log10, math.log10, POS,
          "Elementwise base-10 logarithm.", replay_numpy=True),
    _math(K.OP_EXP2, "Exp2", "exp2", np.exp2, _exp2_f, EXP, "Elementwise 2**x.",
          replay_numpy=True),
    _math(K.OP_SOFTPLUS, "Softplus", "softplus", _softplus_np, _softplus_f, WIDE,
          "Elementwise log(1 + e**x), computed without overflow.", ufuncs=()),
    _math(K.OP_ERF, "Erf", "erf", _erf_np, math.erf, ANY,
          "Elementwise error function 2/sqrt(pi) * integral of e**-t**2 from 0 to x.\n\n"
          ">>> import tapediff as td\n>>> td.erf(td.tensor(0.5))\ntensor(0.5205)",
          ufuncs=("scipy.special.erf",)),
    # layout, selection, reductions, scans, joins (recorded by tapediff._src._ops)
    Primitive(K.OP_RESTRIDE, "View"),
    Primitive(K.OP_GATHER, "Index"),
    Primitive(K.OP_SCATTER, "IndexPut"),
    Primitive(K.OP_WHERE, "Where"),
    Primitive(K.OP_CONCAT, "Cat"),
    Primitive(K.OP_PROD, "Prod"),
    Primitive(K.OP_CUMSUM, "Cumsum"),
    Primitive(K.OP_CUMPROD, "Cumprod"),
    Primitive(K.OP_EXTREME, "Amax"),
    Primitive(K.OP_CMP, "Compare"),
    Primitive(K.OP_GUARD, "Guard"),
    Primitive(K.OP_MATMUL, "Mm"),
    Primitive(K.OP_CAST, "ToCopy"),
    # linear algebra (recorded by tapediff.linalg; rules and layouts in _linalg_rules)
    Primitive(K.OP_LINALG_SOLVE, "LinalgSolveEx", forward=LR.solve_forward,
              reverse=LR.solve_reverse, tangent=LR.solve_tangent, graph=LR.solve_graph),
    Primitive(K.OP_LINALG_SOLVE_TRIANGULAR, "LinalgSolveTriangular",
              forward=LR.solve_triangular_forward, reverse=LR.solve_triangular_reverse,
              tangent=LR.solve_triangular_tangent, graph=LR.solve_triangular_graph),
    Primitive(K.OP_LINALG_CHOLESKY, "LinalgCholeskyEx", forward=LR.cholesky_forward,
              reverse=LR.cholesky_reverse, tangent=LR.cholesky_tangent,
              graph=LR.cholesky_graph),
    Primitive(K.OP_LINALG_SLOGDET, "LinalgSlogdet", forward=LR.slogdet_forward,
              reverse=LR.slogdet_reverse, tangent=LR.slogdet_tangent, graph=LR.slogdet_graph),
    Primitive(K.OP_LINALG_EIGH, "LinalgEigh", forward=LR.eigh_forward,
              reverse=LR.eigh_reverse, tangent=LR.eigh_tangent, graph=LR.eigh_graph),
    Primitive(K.OP_LINALG_SVD, "LinalgSvd", forward=LR.svd_forward, reverse=LR.svd_reverse,
              tangent=LR.svd_tangent, graph=LR.svd_graph),
    Primitive(K.OP_LINALG_QR, "LinalgQr", forward=LR.qr_forward, reverse=LR.qr_reverse,
              tangent=LR.qr_tangent, graph=LR.qr_graph),
    Primitive(K.OP_LINALG_PINV, "LinalgPinv", forward=LR.pinv_forward,
              reverse=LR.pinv_reverse, tangent=LR.pinv_tangent, graph=LR.pinv_graph),
    # special functions (recorded by tapediff.special; rules in _special_rules)
    Primitive(K.OP_ERFC, "Erfc", forward=SR.fwd_erfc, reverse=SR.adj_erfc,
              tangent=SR.tan_erfc, graph=SR.graph_erfc),
    Primitive(K.OP_ERFINV, "Erfinv", forward=SR.fwd_erfinv, reverse=SR.adj_erfinv,
              tangent=SR.tan_erfinv, graph=SR.graph_erfinv),
    Primitive(K.OP_NDTRI, "SpecialNdtri", forward=SR.fwd_ndtri, reverse=SR.adj_ndtri,
              tangent=SR.tan_ndtri, graph=SR.graph_ndtri),
    Primitive(K.OP_GAMMALN, "Lgamma", forward=SR.fwd_gammaln, reverse=SR.adj_gammaln,
              tangent=SR.tan_gammaln, graph=SR.graph_gammaln),
    Primitive(K.OP_DIGAMMA, "Digamma", forward=SR.fwd_digamma, reverse=SR.adj_digamma,
              tangent=SR.tan_digamma, graph=SR.graph_digamma),
    Primitive(K.OP_LOG_NDTR, "SpecialLogNdtr", forward=SR.fwd_log_ndtr,
              reverse=SR.adj_log_ndtr, tangent=SR.tan_log_ndtr, graph=SR.graph_log_ndtr),
    Primitive(K.OP_LOGIT, "Logit", forward=SR.fwd_logit, reverse=SR.adj_logit,
              tangent=SR.tan_logit, graph=SR.graph_logit),
    Primitive(K.OP_XLOGY, "Xlogy", forward=SR.fwd_xlogy, reverse=SR.adj_xlogy,
              tangent=SR.tan_xlogy, graph=SR.graph_xlogy),
    Primitive(K.OP_XLOG1PY, "SpecialXlog1py", forward=SR.fwd_xlog1py, reverse=SR.adj_xlog1py,
              tangent=SR.tan_xlog1py, graph=SR.graph_xlog1py),
    Primitive(K.OP_BETALN, "Betaln", forward=SR.fwd_betaln, reverse=SR.adj_betaln,
              tangent=SR.tan_betaln, graph=SR.graph_betaln),
)

BY_OP: dict[int, Primitive] = {p.op: p for p in PRIMITIVES}
assert len(BY_OP) == len(PRIMITIVES) == K.NUM_OPCODES, "one row per opcode"

def python_layout(shapes: list) -> list:
    """The side-table payload of a PYTHON_RULE record with rules (see ``Primitive.forward``):
    the output's shape, then each input's, each as ``ndim, *dims``."""
    payload: list = []
    for shape in shapes:
        payload += [len(shape), *shape]
    return payload


def python_shapes(meta: np.ndarray, m: int, count: int) -> list:
    """The ``count`` shapes (output first) that ``python_layout`` wrote at ``meta[m]``."""
    shapes, k = [], m + 1
    for _ in range(count):
        nd = int(meta[k])
        shapes.append(tuple(int(d) for d in meta[k + 1:k + 1 + nd]))
        k += 1 + nd
    return shapes


#: opcode -> the name its records show in reprs (``grad_fn=<ExpBackward0>``)
GRAD_FN: dict[int, str] = {p.op: p.grad_fn for p in PRIMITIVES}

#: the public elementwise primitives: ``td.<name>`` functions and ``Tensor.<name>`` methods
PUBLIC: tuple[Primitive, ...] = tuple(p for p in PRIMITIVES if p.doc)

#: name -> (opcode, NumPy forward, float forward) of each unary primitive (the recording path)
UNARY: dict[str, tuple] = {p.name: (p.op, p.array, p.scalar) for p in PRIMITIVES
                           if p.arity == 1 and p.array is not None}

#: opcode -> NumPy forward of the rules replay hands back to NumPy on large records
NUMPY_RULES: dict[int, Callable[..., Any]] = {p.op: p.array for p in PRIMITIVES
                                              if p.replay_numpy}
#: the same as a flag per opcode, for ``_kernels.forward_sweep``
TO_NUMPY = np.zeros(K.NUM_OPCODES, np.uint8)
TO_NUMPY[list(NUMPY_RULES)] = 1


def _elementwise_rules() -> dict:
    """opcode -> the Python form of each elementwise primitive's reverse rule: the block's
    ``vjp_<name>`` twin, or its ``adj_<name>`` rule's Python source where that works on
    tensors as it is (arithmetic).  ``rule(g, x, z, y, c, T)`` -> (adjoint of a, of b), T
    being ``tapediff``.  A recorded backward (``_graph``) runs them on tensors, the reverse
    sweep's ``NUMPY_ADJOINT`` hand-back on arrays."""
    rules = {}
    for name in dir(K):
        if not name.startswith("OP_"):
            continue
        op = getattr(K, name)
        if not K.TRAITS[op] & K.ELEMENTWISE or K.TRAITS[op] & K.META_INPUTS:
            continue
        base = name[3:].lower()
        twin = getattr(K, "vjp_" + base, None)
        if twin is not None:
            rules[op] = twin
        else:
            adj = getattr(K, "adj_" + base)
            adj = getattr(adj, "py_func", adj)  # (plain Python already with the JIT off)
            rules[op] = lambda g, x, z, y, c, T, adj=adj: adj(g, x, z, y, c)
    return rules


ELEMENTWISE_RULES = _elementwise_rules()
