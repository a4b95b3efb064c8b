"""Table-driven tests of tapediff's differentiable operations.

``OPS`` is the specification: one row per operation, giving the function applied to tensors,
its NumPy reference, the kind of each operand and the domain its values are drawn from.
The tests below are parametrized over (subsets of) the rows and draw shapes and values with
hypothesis, so adding an operation means adding a row (a public elementwise primitive of
``tapediff._src._primitives`` gets its rows from its row there, ``primitive_rows``: it only needs
an independent NumPy reference in ``REFERENCES``):

* values: results equal NumPy's, with NumPy's dtype (float64, float32, ints, mixed dtypes);
  where NumPy rejects the drawn input (an index out of range, the max of an empty array),
  tapediff raises the same kind of exception;
* gradients: ``.grad`` matches central differences, for broadcast shapes (0-d and size-1
  dims on either side), for empty arrays, in float32, with only one operand requiring grad,
  and for a leaf used several times in one expression;
* recording: an op recorded over and over on one tape keeps working across reclaims;
* bad input raises the documented exception type with a useful message.

A row's gradient checks and its recording loop share one forked child
(``test_grad_and_recording``): forking costs more than most checks.  Rows marked ``alias``
(``np.*`` and method spellings of an operation that has its own row) get their values, dtypes
and float64 gradients checked, not the rest again.

Operations whose operands do not simply broadcast (matmul, einsum, concatenate, ``x.at[]``...)
give their rows a ``Shapes``: a strategy for compatible operand shapes.  Semantics a table
cannot express (ties, exact bounds, zeros in products, overflow, repeated indices, dtypes end
to end) have dedicated tests after the table tests.

Tests that run the jitted kernels run in a forked child (``helpers.crash_guard``): a kernel
writing out of bounds then fails one test instead of killing the whole run.
"""
from __future__ import annotations

import importlib
import math
import operator
import re
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tapediff as td
from tapediff._src import _primitives as P
from helpers import check_grad, crash_guard, note, numerical_grad, projection

AxisError = getattr(np, "exceptions", np).AxisError


# ---------------------------------------------------------------------------------------------
# Domains: element strategies, from the intervals of the table of primitives.  Bounded so that
# finite differences are accurate (no overflow, no huge curvature) and bounded away from kinks
# and poles (0 for abs/relu/log/sqrt/1/x, pi/2 for tan), where a central difference straddles
# a non-differentiable point.
# ---------------------------------------------------------------------------------------------
def _floats(lo: float, hi: float) -> st.SearchStrategy:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def domain(intervals: tuple) -> st.SearchStrategy:
    """Elements from a domain of the table of primitives: a union of (lo, hi) intervals."""
    return st.one_of(*(_floats(lo, hi) for lo, hi in intervals))


# the table's named domains (tapediff._src._primitives says what each is for)
ANY = domain(P.ANY)
WIDE = domain(P.WIDE)  # sigmoid: both branches of its overflow-free formula
EXP = domain(P.EXP)
POS = domain(P.POS)  # log, sqrt, and pow bases
NONZERO = domain(P.NONZERO)  # denominators, abs/relu kinks
TAN = domain(P.TAN)  # inside (-pi/2, pi/2) with room to spare
LOG1P = domain(P.LOG1P)  # log1p: away from its pole at -1
ARC = domain(P.ARC)  # arcsin, arccos: inside (-1, 1), away from the infinite slopes


def grid(offset: float, step: float = 1 / 8, n: int = 20) -> st.SearchStrategy:
    """The values (i + offset) * step for i in [-n, n): exact in float32, ``step`` apart."""
    return st.integers(-n, n - 1).map(lambda i: (i + offset) * step)


# Kinks and ties.  Elementwise kinks (abs, relu, sign, maximum(x, 0), clip(x, -0.5, 1)) lie on
# multiples of 1/8, which HALF never hits.  maximum/minimum/clip of two or three tensors draw
# them from different grids (QUARTER, HALF, THREE_QUARTERS), so operands are never equal.
HALF = grid(0.5)
QUARTER = grid(0.25)
THREE_QUARTERS = grid(0.75)
# max/min/sort compare all elements: their rows draw unique elements (``unique=True``) from
# DISTINCT, 1/16 apart, whose absolute values are distinct too (x = (i + 1/4)/16 while
# -x = (j + 3/4)/16), so the inf-norms have no ties either.
DISTINCT = grid(0.25, 1 / 16, 40)
SIGNS = st.one_of(st.just(0.0), HALF)  # sign(0) = 0 is a value worth checking

C = 2.5  # scalar operand: not an integer, so no rule can get away with special-casing it


@dataclass(frozen=True)
class Shapes:
    """Operand shapes for an op whose operands do not simply broadcast together.

    ``draw(min_side)`` is a strategy for a tuple of shapes, one per operand, with sides in
    [min_side, 4] (min_side 0 for the empty-input tests); ``fixed`` is one valid tuple of
    shapes, used by the recording loop.
    """

    draw: Callable[[int], st.SearchStrategy]
    fixed: tuple


@dataclass(frozen=True)
class Op:
    """One row of the table.

    ``fn`` is applied to tensors.  ``args`` has one letter per operand: "t" a tensor that
    requires grad, "a" a plain ndarray constant (the test hands ``fn`` a tensor that does not
    require grad and ``fn`` turns it into an ndarray with ``np.asarray``, so that the operator
    sees an ndarray).  ``ref`` is the NumPy reference, taking ndarrays in the same order.
    ``domain`` gives an element strategy per operand.  Operands broadcast together, with
    between ``min_dims`` and ``max_dims`` dimensions, unless ``shapes`` says otherwise.
    Shapes NumPy itself rejects (``x[1]`` on a length-1 axis) are skipped by the gradient
    tests.  Further, per row:

    * ``unique``: every operand's elements are distinct (no ties in max, min, sort);
    * ``grad=False``: the result has no gradient (argmax, sign) and must not record;
    * ``empty=False``: NumPy rejects every empty input (max over all axes), so the
      empty-input gradient test skips the row;
    * ``inexact``: the value is computed in another order than NumPy's (contractions,
      norms), so values are also compared with an absolute tolerance;
    * ``check``: keyword arguments for ``check_grad`` (finite-difference step, tolerances);
    * ``alias``: another spelling (``np.*``, a method) of an operation that has its own row:
      its values and gradients are checked, but not again for empty inputs, in float32 and
      in the recording loop, which exercise the shared implementation.
    """

    name: str
    fn: Callable
    ref: Callable
    args: str = "t"
    domain: tuple | None = None
    min_dims: int = 0
    max_dims: int = 3
    shapes: Shapes | None = None
    unique: bool = False
    grad: bool = True
    empty: bool = True
    inexact: bool = False
    check: tuple = ()
    alias: bool = False

    def __post_init__(self) -> None:
        if self.domain is None:
            object.__setattr__(self, "domain", (ANY,) * len(self.args))
        assert len(self.domain) == len(self.args), self.name

    @property
    def arity(self) -> int:
        return len(self.args)

    @property
    def requires_grad(self) -> list[bool]:
        return [k == "t" for k in self.args]


# ---------------------------------------------------------------------------------------------
# shape strategies for the rows that need them
# ---------------------------------------------------------------------------------------------
def _side(min_side: int) -> st.SearchStrategy:
    return st.integers(min_side, 4)


def _any_shape(min_side: int, min_dims: int = 0, max_dims: int = 3) -> st.SearchStrategy:
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=4)


def _sized(spec: str, min_side: int) -> st.SearchStrategy:
    letters = sorted(set(spec) - {","})

    def build(sizes: tuple) -> tuple:
        size = dict(zip(letters, sizes))
        return tuple(tuple(size[c] for c in term) for term in spec.split(","))

    return st.tuples(*(_side(min_side) for _ in letters)).map(build)


def labels(*specs: str) -> Shapes:
    """Shapes named by letters, one term per operand: "mk,kn" is an (m, k) and a (k, n)
    operand, equal letters have equal sizes, and an empty term is 0-d.  Each example draws
    one of ``specs``; the loop uses the first, with sizes 2, 3, 4, 2, ... by first use."""
    order = dict.fromkeys(specs[0].replace(",", ""))
    size = {c: (2, 3, 4)[i % 3] for i, c in enumerate(order)}
    fixed = tuple(tuple(size[c] for c in term) for term in specs[0].split(","))
    return Shapes(lambda ms: st.sampled_from(specs).flatmap(lambda s: _sized(s, ms)), fixed)


@st.composite
def _matmul_shapes(draw, min_side: int) -> tuple:
    """(..., m, k) @ (..., k, n) with broadcast batch dims, and 1-d operands on either side."""
    (m, k), (_, n) = draw(_sized("mk,kn", min_side))
    batch = draw(hnp.mutually_broadcastable_shapes(
        num_shapes=2, max_dims=2, min_side=min_side, max_side=3)).input_shapes
    form = draw(st.sampled_from(["mat@mat", "vec@mat", "mat@vec", "vec@vec"]))
    a = (k,) if form.startswith("vec") else batch[0] + (m, k)
    b = (k,) if form.endswith("vec") else batch[1] + (k, n)
    return a, b


MATMUL = Shapes(_matmul_shapes, ((2, 2, 3), (3, 4)))


def joined(n: int, axis: int, min_dims: int = 1) -> Shapes:
    """``n`` shapes equal but along ``axis`` (concatenate)."""

    @st.composite
    def draw(d, min_side: int) -> tuple:
        base = d(_any_shape(min_side, min_dims))
        ax = axis % len(base)
        return tuple(base[:ax] + (d(_side(min_side)),) + base[ax + 1:] for _ in range(n))

    base = (2, 3, 2)[:max(min_dims, 2)]
    ax = axis % len(base)
    return Shapes(draw, tuple(base[:ax] + (k + 1,) + base[ax + 1:] for k in range(n)))


def same(n: int, min_dims: int = 0) -> Shapes:
    """``n`` equal shapes (stack)."""
    return Shapes(lambda ms: _any_shape(ms, min_dims).map(lambda s: (s,) * n), ((2, 3),) * n)


def independent(n: int, max_dims: int = 3) -> Shapes:
    """``n`` unrelated shapes (concatenate with axis=None, outer)."""
    return Shapes(lambda ms: st.tuples(*[_any_shape(ms, 0, max_dims)] * n),
                  ((2, 3), (4,), ())[:n])


@st.composite
def _hstack_shapes(draw, min_side: int) -> tuple:
    nd = draw(st.integers(0, 3))
    if nd == 0:
        return (), ()
    axis = 0 if nd == 1 else 1
    base = draw(_any_shape(min_side, nd, nd))
    return tuple(base[:axis] + (draw(_side(min_side)),) + base[axis + 1:] for _ in range(2))


@st.composite
def _vstack_shapes(draw, min_side: int) -> tuple:
    nd = draw(st.integers(0, 3))
    base = draw(_any_shape(min_side, nd, nd))
    if nd <= 1:  # 0-d and 1-d operands become rows: equal shapes
        return base, base
    return tuple((draw(_side(min_side)),) + base[1:] for _ in range(2))


def with_even(axis: int, min_dims: int = 1) -> Shapes:
    """One shape whose ``axis`` has an even length (np.split into 2)."""

    @st.composite
    def draw(d, min_side: int) -> tuple:
        s = list(d(_any_shape(min_side, min_dims)))
        s[axis] = 2 * d(st.integers(min_side, 2))
        return (tuple(s),)

    return Shapes(draw, ((2, 4),))


def leading_one(min_dims: int = 0) -> Shapes:
    """One shape starting with a size-1 axis (squeeze(axis=0))."""
    return Shapes(lambda ms: _any_shape(ms, min_dims, 2).map(lambda s: ((1,) + s,)),
                  ((1, 2, 3),))


def at_shapes(key, min_dims: int = 1) -> Shapes:
    """``x`` and a value ``v`` that broadcasts to ``x[key]`` (for ``x.at[key].set(v)``)."""

    @st.composite
    def draw(d, min_side: int) -> tuple:
        x = d(_any_shape(min_side, min_dims))
        try:
            target = np.empty(x, np.int8)[key].shape
        except IndexError:  # the key does not fit this shape
            assume(False)
        keep = d(st.integers(0, len(target)))
        v = tuple(s if d(st.booleans()) else 1 for s in target[len(target) - keep:])
        return x, v

    x = (3, 2, 2)[:max(min_dims, 2)]
    return Shapes(draw, (x, np.empty(x, np.int8)[key].shape))


def at_set(key) -> Callable:
    """NumPy reference of ``x.at[key].set(v)``: a promoted copy assigned (last write wins)."""
    def ref(x, v):
        out = np.array(x, dtype=np.result_type(x, v))
        out[key] = v
        return out
    return ref


def at_add(key) -> Callable:
    """NumPy reference of ``x.at[key].add(v)``: ``np.add.at`` on a promoted copy."""
    def ref(x, v):
        out = np.array(x, dtype=np.result_type(x, v))
        np.add.at(out, key, v)
        return out
    return ref


# ---------------------------------------------------------------------------------------------
# NumPy references for what NumPy itself lacks
# ---------------------------------------------------------------------------------------------
def _flt(x: np.ndarray) -> np.ndarray:
    """Floats stay, ints become float64 (as in np.exp)."""
    return x if x.dtype.kind == "f" else x.astype(np.float64)


def np_logsumexp(x, axis=None, keepdims=False):
    x = _flt(np.asarray(x))
    m = np.max(x, axis=axis, keepdims=True, initial=-np.inf)
    m = np.where(np.isfinite(m), m, 0).astype(x.dtype)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis)


def np_softmax(x, axis=-1):
    x = _flt(np.asarray(x))
    m = np.max(x, axis=axis, keepdims=True, initial=-np.inf)
    e = np.exp(x - np.where(np.isfinite(m), m, 0).astype(x.dtype))
    return e / np.sum(e, axis=axis, keepdims=True)


def np_log_softmax(x, axis=-1):
    x = _flt(np.asarray(x))
    return x - np_logsumexp(x, axis, keepdims=True)


def np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_erf(x):
    """``math.erf`` elementwise; floats keep their dtype and ints become float64 (as in
    np.exp)."""
    x = np.asarray(x)
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(_flt(x).dtype)


# An independent NumPy reference for each public elementwise primitive (P.PUBLIC), which get
# their rows from the table: see ``primitive_rows``.
REFERENCES: dict[str, Callable] = {
    "arctan2": np.arctan2,
    "hypot": np.hypot,
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "tanh": np.tanh,
    "sigmoid": np_sigmoid,
    "relu": lambda x: np.maximum(x, 0),
    "abs": np.abs,
    "log1p": np.log1p,
    "expm1": np.expm1,
    "sinh": np.sinh,
    "cosh": np.cosh,
    "arcsin": np.arcsin,
    "arccos": np.arccos,
    "arctan": np.arctan,
    "log2": np.log2,
    "log10": np.log10,
    "exp2": np.exp2,
    "softplus": lambda x: np.logaddexp(0, x),
    "erf": np_erf,
}


def _weighted(parts: list, join: Callable) -> object:
    """The parts of a split scaled by 1, 2, 3, ... and joined again: a gradient routed to the
    wrong part changes the result."""
    return join([p * (k + 1) for k, p in enumerate(parts)])


def _a(t) -> np.ndarray:
    return np.asarray(t)


# ---------------------------------------------------------------------------------------------
# row builders
# ---------------------------------------------------------------------------------------------
def unary(name: str, ref: Callable, domain=ANY, **kw) -> list[Op]:
    """``x.name()`` and ``td.name(x)``: the method and the module function are separate code."""
    return [Op(name, lambda x: getattr(x, name)(), ref, domain=(domain,), **kw),
            Op(f"td.{name}", lambda x: getattr(td, name)(x), ref, domain=(domain,), **kw)]


def function(name: str, ref: Callable, domain=ANY) -> Op:
    """``td.name(x)`` for functions without a method."""
    return Op(f"td.{name}", lambda x: getattr(td, name)(x), ref, domain=(domain,))


def ufunc(name: str, domain=ANY, args: str = "t", **kw) -> Op:
    """``np.name(x, ...)``: NumPy's own ufunc on tensors (NEP 13)."""
    uf = getattr(np, name)
    return Op(f"np.{name}", uf, uf, args, domain=(domain,) * len(args), **kw)


def _ufunc(path: str) -> Callable | None:
    """The ufunc a table row names ("numpy.exp", "scipy.special.erf"); None when its module
    is not installed."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        return None


def primitive_rows(p: P.Primitive) -> list[Op]:
    """The rows of a public elementwise primitive, from its row in the table: ``x.name(...)``
    and ``td.name(...)``, both checked in full (the method is the function, bound; a method
    defined apart would not be), and an alias row for each ufunc that dispatches to it
    (``np.exp``, ``scipy.special.erf``), checked against that ufunc on ndarrays.  Operands
    are drawn from the row's domain; the reference is ``REFERENCES[name]`` (no reference, no
    rows: ``test_every_public_primitive_has_rows`` fails)."""
    if p.name not in REFERENCES:
        return []
    ref, args = REFERENCES[p.name], "t" * p.arity
    dom = tuple(domain(d) for d in p.domain)
    rows = [Op(p.name, lambda x, *ys: getattr(x, p.name)(*ys), ref, args, dom),
            Op(f"td.{p.name}", getattr(td, p.name), ref, args, dom)]
    for path in p.ufuncs:
        uf = _ufunc(path)
        if uf is not None:
            rows.append(Op(path.replace("numpy.", "np.", 1), uf, uf, args, dom, alias=True))
    return rows


def reductions(name: str) -> list[Op]:
    """``x.sum(...)``/``x.mean(...)`` over the axis forms NumPy accepts, plus the aliases."""
    ref = getattr(np, name)
    cases = [  # (label, keyword arguments, NumPy's equivalent, min_dims)
        ("", {}, {}, 0),
        ("axis=0", {"axis": 0}, {"axis": 0}, 1),
        ("axis=-1", {"axis": -1}, {"axis": -1}, 1),
        ("axis=1", {"axis": 1}, {"axis": 1}, 2),
        ("axis=(0,2)", {"axis": (0, 2)}, {"axis": (0, 2)}, 3),
        ("axis=(-1,0)", {"axis": (-1, 0)}, {"axis": (-1, 0)}, 2),
        ("axis=()", {"axis": ()}, {"axis": ()}, 0),
        ("keepdims", {"keepdims": True}, {"keepdims": True}, 0),
        ("axis=1,keepdims", {"axis": 1, "keepdims": True}, {"axis": 1, "keepdims": True}, 2),
        ("axis=(0,-1),keepdims", {"axis": (0, -1), "keepdims": True},
         {"axis": (0, -1), "keepdims": True}, 2),
        ("dim=1,keepdim", {"dim": 1, "keepdim": True}, {"axis": 1, "keepdims": True}, 2),
    ]
    rows = [Op(f"{name}({label})", lambda x, kw=kw: getattr(x, name)(**kw),
               lambda x, nkw=nkw: ref(x, **nkw), min_dims=m)
            for label, kw, nkw, m in cases]
    rows.append(Op(f"td.{name}(axis=-1)", lambda x: getattr(td, name)(x, axis=-1),
                   lambda x: ref(x, axis=-1), min_dims=1))
    rows.append(Op(f"np.{name}(axis=1)", lambda x: ref(x, axis=1), lambda x: ref(x, axis=1),
                   min_dims=2, alias=True))
    return rows


def extremes(name: str) -> list[Op]:
    """max/min in the method, td.* and np.* forms, over unique elements (no ties)."""
    ref = getattr(np, name)
    cases = [  # (label, call on a tensor, NumPy's equivalent, min_dims)
        (f"x.{name}()", lambda x: getattr(x, name)(), ref, 0),
        (f"x.{name}(axis=0)", lambda x: getattr(x, name)(axis=0), lambda x: ref(x, axis=0), 1),
        (f"x.{name}(axis=(0,2))", lambda x: getattr(x, name)(axis=(0, 2)),
         lambda x: ref(x, axis=(0, 2)), 3),
        (f"x.{name}(axis=-1,keepdims)", lambda x: getattr(x, name)(axis=-1, keepdims=True),
         lambda x: ref(x, axis=-1, keepdims=True), 1),
        (f"x.{name}(dim=1,keepdim)", lambda x: getattr(x, name)(dim=1, keepdim=True),
         lambda x: ref(x, axis=1, keepdims=True), 2),
        (f"td.{name}(x,axis=1)", lambda x: getattr(td, name)(x, axis=1),
         lambda x: ref(x, axis=1), 2),
        (f"np.{name}(x,axis=0)", lambda x: ref(x, axis=0), lambda x: ref(x, axis=0), 1),
    ]
    return [Op(label, fn, r, domain=(DISTINCT,), min_dims=m, unique=True, empty=m > 0,
               alias=not label.startswith("x."))
            for label, fn, r, m in cases]


def index(label: str, get: Callable, min_dims: int) -> Op:
    """``x[key]``: NumPy's basic indexing on the same key is the reference."""
    return Op(f"x[{label}]", get, get, min_dims=min_dims)


def einsum(spec: str, *more_shapes: str) -> Op:
    """``td.einsum(spec, ...)`` against ``np.einsum``, shapes from the subscripts."""
    lhs = spec.split("->")[0]
    return Op(f"einsum({spec})", lambda *xs: td.einsum(spec, *xs),
              lambda *xs: np.einsum(spec, *xs), "t" * (lhs.count(",") + 1),
              shapes=labels(lhs, *more_shapes), inexact=True)


def special_rows() -> list[Op]:
    """``td.gammaln`` & co. (tapediff.special) against ``scipy.special``, whose ufuncs are
    their forwards, when SciPy is installed (tests/test_special.py tests them in depth)."""
    try:
        import scipy.special as sp
    except ImportError:
        return []
    unit = domain(((0.05, 0.95),))
    rows = [function(name, getattr(sp, name), dom) for name, dom in (
        ("erfc", ANY), ("erfinv", ARC), ("ndtri", unit), ("gammaln", POS), ("digamma", POS),
        ("log_ndtr", WIDE), ("logit", unit), ("ndtr", ANY), ("expit", WIDE))]
    return rows + [Op(f"td.{name}", getattr(td, name), getattr(sp, name), "tt", dom)
                   for name, dom in (("xlogy", (ANY, POS)), ("xlog1py", (ANY, LOG1P)),
                                     ("betaln", (POS, POS)))]


# astype to float32 from float64: the output's rounding is below a central difference with
# the default step, so a (linear) cast is differentiated with a large step
TO_F32 = (("eps", 1e-2), ("rtol", 1e-4), ("atol", 1e-5))

OPS: list[Op] = [
    # tensor (op) tensor, shapes broadcast against each other
    Op("add", operator.add, np.add, "tt"),
    Op("sub", operator.sub, np.subtract, "tt"),
    Op("mul", operator.mul, np.multiply, "tt"),
    Op("div", operator.truediv, np.true_divide, "tt", (ANY, NONZERO)),
    Op("pow", operator.pow, np.power, "tt", (POS, ANY)),
    # tensor (op) ndarray and ndarray (op) tensor (NumPy defers to Tensor's reflected methods)
    Op("x+ndarray", lambda x, a: x + _a(a), np.add, "ta"),
    Op("ndarray+x", lambda a, x: _a(a) + x, np.add, "at"),
    Op("x-ndarray", lambda x, a: x - _a(a), np.subtract, "ta"),
    Op("ndarray-x", lambda a, x: _a(a) - x, np.subtract, "at"),
    Op("x*ndarray", lambda x, a: x * _a(a), np.multiply, "ta"),
    Op("ndarray*x", lambda a, x: _a(a) * x, np.multiply, "at"),
    Op("x/ndarray", lambda x, a: x / _a(a), np.true_divide, "ta", (ANY, NONZERO)),
    Op("ndarray/x", lambda a, x: _a(a) / x, np.true_divide, "at", (ANY, NONZERO)),
    Op("x**ndarray", lambda x, a: x ** _a(a), np.power, "ta", (POS, ANY)),
    Op("ndarray**x", lambda a, x: _a(a) ** x, np.power, "at", (POS, ANY)),
    # tensor (op) Python scalar and scalar (op) tensor
    Op("x+c", lambda x: x + C, lambda x: np.add(x, C)),
    Op("c+x", lambda x: C + x, lambda x: np.add(C, x)),
    Op("x-c", lambda x: x - C, lambda x: np.subtract(x, C)),
    Op("c-x", lambda x: C - x, lambda x: np.subtract(C, x)),
    Op("x*c", lambda x: x * C, lambda x: np.multiply(x, C)),
    Op("c*x", lambda x: C * x, lambda x: np.multiply(C, x)),
    Op("x/c", lambda x: x / C, lambda x: np.true_divide(x, C)),
    Op("c/x", lambda x: C / x, lambda x: np.true_divide(C, x), domain=(NONZERO,)),
    Op("x**c", lambda x: x ** C, lambda x: np.power(x, C), domain=(POS,)),
    Op("c**x", lambda x: C ** x, lambda x: np.power(C, x)),
    Op("x**2", lambda x: x ** 2, lambda x: np.power(x, 2)),  # int exponent, negative bases
    Op("x**0", lambda x: x ** 0, lambda x: np.power(x, 0)),  # d/dx = 0, not 0 * x**-1
    Op("x*3", lambda x: x * 3, lambda x: np.multiply(x, 3)),  # Python int scalars
    Op("1-x", lambda x: 1 - x, lambda x: np.subtract(1, x)),
    Op("np.float64*x", lambda x: np.float64(C) * x, lambda x: np.multiply(np.float64(C), x)),
    # elementwise unary
    Op("neg", operator.neg, np.negative),
    Op("abs(x)", abs, np.abs, domain=(NONZERO,)),
    # the public elementwise primitives (unary, arctan2, hypot): from the table
    *(row for p in P.PUBLIC for row in primitive_rows(p)),
    *unary("square", np.square, ANY),
    *unary("sign", np.sign, SIGNS, grad=False),
    function("reciprocal", lambda x: np.true_divide(1, x), NONZERO),  # not np.reciprocal: ints
    # NumPy's ufuncs on tensors (the rest are in test_numpy_api.py)
    ufunc("sign", SIGNS, grad=False, alias=True),
    # elementwise binary beyond arithmetic
    ufunc("logaddexp", ANY, "tt"),
    # special functions (tapediff.special), against scipy.special
    *special_rows(),
    # piecewise: where (the condition is a constant), maximum/minimum, clip
    Op("td.where(c,x,y)", lambda c, x, y: td.where(_a(c) > 0, x, y),
       lambda c, x, y: np.where(c > 0, x, y), "att"),
    Op("np.where(c,x,y)", lambda c, x, y: np.where(_a(c) > 0, x, y),
       lambda c, x, y: np.where(c > 0, x, y), "att", alias=True),
    Op("td.where(float c,x,y)", lambda c, x, y: td.where(_a(c), x, y),  # truthiness of c
       lambda c, x, y: np.where(c, x, y), "att", (SIGNS, ANY, ANY)),
    Op("td.where(c,x,ndarray)", lambda c, x, a: td.where(_a(c) > 0, x, _a(a)),
       lambda c, x, a: np.where(c > 0, x, a), "ata"),
    Op("td.where(x>0,x,0.)", lambda x: td.where(x > 0, x, 0.0),
       lambda x: np.where(x > 0, x, 0.0), domain=(HALF,)),
    Op("td.where(tensor_cond,x,c)", lambda x: td.where(x < 0.5, C, x),
       lambda x: np.where(x < 0.5, C, x), domain=(HALF,)),
    Op("td.maximum", td.maximum, np.maximum, "tt", (QUARTER, THREE_QUARTERS)),
    Op("td.minimum", td.minimum, np.minimum, "tt", (QUARTER, THREE_QUARTERS)),
    Op("np.maximum", np.maximum, np.maximum, "tt", (QUARTER, THREE_QUARTERS), alias=True),
    Op("np.minimum", np.minimum, np.minimum, "tt", (QUARTER, THREE_QUARTERS), alias=True),
    Op("np.maximum(x,0)", lambda x: np.maximum(x, 0), lambda x: np.maximum(x, 0),
       domain=(HALF,), alias=True),
    Op("td.minimum(x,0.5)", lambda x: td.minimum(x, 0.5), lambda x: np.minimum(x, 0.5),
       domain=(HALF,)),
    Op("td.maximum(ndarray,x)", lambda a, x: td.maximum(_a(a), x), np.maximum, "at",
       (QUARTER, THREE_QUARTERS)),
    Op("td.clip(x,-0.5,1)", lambda x: td.clip(x, -0.5, 1.0), lambda x: np.clip(x, -0.5, 1.0),
       domain=(HALF,)),
    Op("x.clip(-0.5,1)", lambda x: x.clip(-0.5, 1.0), lambda x: np.clip(x, -0.5, 1.0),
       domain=(HALF,), alias=True),
    Op("x.clip(None,0.5)", lambda x: x.clip(None, 0.5), lambda x: np.clip(x, None, 0.5),
       domain=(HALF,)),
    Op("x.clip(a_min=-0.5)", lambda x: x.clip(a_min=-0.5), lambda x: np.clip(x, -0.5, None),
       domain=(HALF,)),
    Op("np.clip(x,-0.5,1)", lambda x: np.clip(x, -0.5, 1.0), lambda x: np.clip(x, -0.5, 1.0),
       domain=(HALF,), alias=True),
    # tensor bounds: requiring grad (they get the gradient where they are active), or not
    Op("td.clip(x,lo,hi)", td.clip, np.clip, "ttt", (HALF, QUARTER, THREE_QUARTERS)),
    Op("td.clip(x,const lo,const hi)", td.clip, np.clip, "taa", (HALF, QUARTER, THREE_QUARTERS)),
    # reductions
    *reductions("sum"),
    *reductions("mean"),
    *extremes("max"),
    *extremes("min"),
    Op("x.argmax()", lambda x: x.argmax(), np.argmax, grad=False, empty=False),
    Op("x.argmax(axis=0)", lambda x: x.argmax(axis=0), lambda x: np.argmax(x, axis=0),
       min_dims=1, grad=False),
    Op("td.argmin(x,axis=-1,keepdims)", lambda x: td.argmin(x, axis=-1, keepdims=True),
       lambda x: np.argmin(x, axis=-1, keepdims=True), min_dims=1, grad=False),
    Op("np.argmax(x,axis=1)", lambda x: np.argmax(x, axis=1), lambda x: np.argmax(x, axis=1),
       min_dims=2, grad=False, alias=True),
    Op("x.argmin()", lambda x: x.argmin(), np.argmin, grad=False, empty=False),
    Op("td.argmax(x,axis=-1)", lambda x: td.argmax(x, axis=-1), lambda x: np.argmax(x, axis=-1),
       min_dims=1, grad=False),
    Op("x.prod()", lambda x: x.prod(), np.prod),
    Op("x.prod(axis=1)", lambda x: x.prod(axis=1), lambda x: np.prod(x, axis=1), min_dims=2),
    Op("td.prod(x,axis=(0,-1),keepdims)", lambda x: td.prod(x, axis=(0, -1), keepdims=True),
       lambda x: np.prod(x, axis=(0, -1), keepdims=True), min_dims=2),
    Op("np.prod(x,axis=0)", lambda x: np.prod(x, axis=0), lambda x: np.prod(x, axis=0),
       min_dims=1, alias=True),
    Op("x.var()", lambda x: x.var(), np.var),
    Op("x.var(axis=0)", lambda x: x.var(axis=0), lambda x: np.var(x, axis=0), min_dims=1),
    Op("td.var(x,axis=(0,1),keepdims)", lambda x: td.var(x, axis=(0, 1), keepdims=True),
       lambda x: np.var(x, axis=(0, 1), keepdims=True), min_dims=2),
    Op("np.var(x,axis=-1)", lambda x: np.var(x, axis=-1), lambda x: np.var(x, axis=-1),
       min_dims=1, alias=True),
    # ddof=1 and std: at least 2 distinct values per reduction (no 0/0, no sqrt'(0))
    Op("x.var(axis=-1,ddof=1)", lambda x: x.var(axis=-1, ddof=1),
       lambda x: np.var(x, axis=-1, ddof=1), shapes=Shapes(
           lambda ms: _any_shape(2 if ms else 0, 1).map(lambda s: (s,)), ((2, 3),))),
    Op("x.std()", lambda x: x.std(), np.std, domain=(DISTINCT,), unique=True,
       shapes=Shapes(lambda ms: _any_shape(2 if ms else 0, 1).map(lambda s: (s,)), ((3,),))),
    Op("td.std(x,axis=0)", lambda x: td.std(x, axis=0), lambda x: np.std(x, axis=0),
       domain=(DISTINCT,), unique=True,
       shapes=Shapes(lambda ms: _any_shape(2 if ms else 0, 1).map(lambda s: (s,)), ((3, 2),))),
    Op("np.std(x,axis=-1,ddof=1)", lambda x: np.std(x, axis=-1, ddof=1),
       lambda x: np.std(x, axis=-1, ddof=1), domain=(DISTINCT,), unique=True,
       shapes=Shapes(lambda ms: _any_shape(2 if ms else 0, 1).map(lambda s: (s,)), ((2, 3),))),
    Op("td.logsumexp(x)", td.logsumexp, np_logsumexp, domain=(WIDE,)),
    Op("td.logsumexp(x,axis=-1)", lambda x: td.logsumexp(x, axis=-1),
       lambda x: np_logsumexp(x, axis=-1), domain=(WIDE,), min_dims=1),
    Op("td.logsumexp(x,0)", lambda x: td.logsumexp(x, 0), lambda x: np_logsumexp(x, 0),
       domain=(WIDE,), min_dims=1),
    Op("td.logsumexp(x,axis=(0,1),keepdims)",
       lambda x: td.logsumexp(x, axis=(0, 1), keepdims=True),
       lambda x: np_logsumexp(x, axis=(0, 1), keepdims=True), domain=(WIDE,), min_dims=2),
    Op("td.softmax(x)", td.softmax, np_softmax, domain=(WIDE,), min_dims=1),
    Op("td.softmax(x,axis=0)", lambda x: td.softmax(x, axis=0), lambda x: np_softmax(x, 0),
       domain=(WIDE,), min_dims=1),
    Op("td.softmax(x,1)", lambda x: td.softmax(x, 1), lambda x: np_softmax(x, 1),
       domain=(WIDE,), min_dims=2),
    Op("td.log_softmax(x)", td.log_softmax, np_log_softmax, domain=(WIDE,), min_dims=1),
    Op("td.log_softmax(x,axis=0)", lambda x: td.log_softmax(x, axis=0),
       lambda x: np_log_softmax(x, 0), domain=(WIDE,), min_dims=1),
    Op("td.log_softmax(x,-2)", lambda x: td.log_softmax(x, -2),
       lambda x: np_log_softmax(x, -2), domain=(WIDE,), min_dims=2),
    # norms: away from 0 (NONZERO elements) and from ties (DISTINCT for the inf-norms)
    Op("td.norm(x)", td.norm, np.linalg.norm, domain=(NONZERO,), inexact=True),
    Op("np.linalg.norm(x)", np.linalg.norm, np.linalg.norm, domain=(NONZERO,), inexact=True,
       alias=True),
    Op("td.norm(x,axis=-1)", lambda x: td.norm(x, axis=-1),
       lambda x: np.linalg.norm(x, axis=-1), domain=(NONZERO,), min_dims=1, inexact=True),
    Op("td.norm(x,1,axis=-1)", lambda x: td.norm(x, 1, axis=-1),
       lambda x: np.linalg.norm(x, 1, axis=-1), domain=(NONZERO,), min_dims=1, inexact=True),
    Op("td.norm(x,3,axis=0,keepdims)", lambda x: td.norm(x, 3, axis=0, keepdims=True),
       lambda x: np.linalg.norm(x, 3, axis=0, keepdims=True), domain=(NONZERO,), min_dims=1,
       inexact=True),
    Op("td.norm(x,inf,axis=-1)", lambda x: td.norm(x, np.inf, axis=-1),
       lambda x: np.linalg.norm(x, np.inf, axis=-1), domain=(DISTINCT,), unique=True,
       min_dims=1, inexact=True),
    Op("td.norm(x,-inf,axis=0)", lambda x: td.norm(x, -np.inf, axis=0),
       lambda x: np.linalg.norm(x, -np.inf, axis=0), domain=(DISTINCT,), unique=True,
       min_dims=1, inexact=True),
    Op("td.norm(x,'fro')", lambda x: td.norm(x, "fro"), lambda x: np.linalg.norm(x, "fro"),
       domain=(NONZERO,), min_dims=2, max_dims=2, inexact=True),
    Op("td.norm(x,axis=(0,-1))", lambda x: td.norm(x, axis=(0, -1)),
       lambda x: np.linalg.norm(x, axis=(0, -1)), domain=(NONZERO,), min_dims=2,
       inexact=True),
    # matrix 1- and inf-norms: a ramp makes the column (row) sums distinct, so the max is unique
    Op("td.norm(x+ramp,1)", lambda x: td.norm(x + np.arange(x.shape[1]), 1),
       lambda x: np.linalg.norm(x + np.arange(x.shape[1]), 1), domain=(_floats(0.05, 0.2),),
       min_dims=2, max_dims=2, empty=False, inexact=True),
    Op("td.norm(x+ramp,inf)", lambda x: td.norm(x + np.arange(x.shape[0])[:, None], np.inf),
       lambda x: np.linalg.norm(x + np.arange(x.shape[0])[:, None], np.inf),
       domain=(_floats(0.05, 0.2),), min_dims=2, max_dims=2, empty=False, inexact=True),
    # scans
    Op("x.cumsum()", lambda x: x.cumsum(), np.cumsum),
    Op("x.cumsum(axis=0)", lambda x: x.cumsum(axis=0), lambda x: np.cumsum(x, axis=0),
       min_dims=1),
    Op("td.cumsum(x,axis=-1)", lambda x: td.cumsum(x, axis=-1),
       lambda x: np.cumsum(x, axis=-1), min_dims=1),
    Op("np.cumsum(x,axis=1)", lambda x: np.cumsum(x, axis=1), lambda x: np.cumsum(x, axis=1),
       min_dims=2, alias=True),
    Op("x.cumprod()", lambda x: x.cumprod(), np.cumprod),
    Op("td.cumprod(x,axis=0)", lambda x: td.cumprod(x, axis=0),
       lambda x: np.cumprod(x, axis=0), min_dims=1),
    Op("np.cumprod(x,axis=-1)", lambda x: np.cumprod(x, axis=-1),
       lambda x: np.cumprod(x, axis=-1), min_dims=1, alias=True),
    # basic indexing
    index("1", lambda x: x[1], 1),
    index("-1", lambda x: x[-1], 1),
    index("1:", lambda x: x[1:], 1),
    index(":-1", lambda x: x[:-1], 1),
    index("::2", lambda x: x[::2], 1),
    index("::-1", lambda x: x[::-1], 1),
    index("-2::-2", lambda x: x[-2::-2], 1),
    index("...", lambda x: x[...], 0),
    index("...,None", lambda x: x[..., None], 0),
    index("None", lambda x: x[None], 0),
    index(":,0", lambda x: x[:, 0], 2),
    index("0,::2", lambda x: x[0, ::2], 2),
    index("1:,...,::-1", lambda x: x[1:, ..., ::-1], 2),
    index("None,-1,...,None", lambda x: x[None, -1, ..., None], 1),
    # advanced indexing (a copy, not a view): repeated indices must add their adjoints up
    index("[0,0,-1]", lambda x: x[[0, 0, -1]], 1),
    index("array([1,0,1])", lambda x: x[np.array([1, 0, 1])], 1),
    index(":,[1,0,1]", lambda x: x[:, [1, 0, 1]], 2),
    index("[[0],[1]],[1,0,1]", lambda x: x[[[0], [1]], [1, 0, 1]], 2),  # broadcast indices
    index("[0,1],...,[1,1]", lambda x: x[[0, 1], ..., [1, 1]], 2),
    index("mask", lambda x: x[np.arange(len(x)) % 2 == 0], 1),  # boolean mask
    index("True", lambda x: x[True], 0),  # Python bools are 0-d masks in NumPy, not ints
    index("1,False", lambda x: x[1, False], 1),
    Op("x[tensor([0,0])]", lambda x: x[td.tensor([0, 0])], lambda x: x[np.array([0, 0])],
       min_dims=1),
    index("array([[0,1],[1,0]])", lambda x: x[np.array([[0, 1], [1, 0]])], 1),
    index("[0,1],1:", lambda x: x[[0, 1], 1:], 2),
    index("1:,[0,0]", lambda x: x[1:, [0, 0]], 2),
    index("...,[0,-1]", lambda x: x[..., [0, -1]], 1),
    index("full mask", lambda x: x[np.arange(x.size).reshape(x.shape) % 3 == 0], 0),
    index("mask,0", lambda x: x[np.arange(len(x)) % 2 == 1, 0], 2),
    Op("td.take(x,[0,-1,0])", lambda x: td.take(x, [0, -1, 0]),
       lambda x: np.take(x, [0, -1, 0]), empty=False),
    Op("td.take(x,[1,0,1],axis=0)", lambda x: td.take(x, [1, 0, 1], axis=0),
       lambda x: np.take(x, [1, 0, 1], axis=0), min_dims=1),
    Op("np.take(x,[[0],[0]],axis=-1)", lambda x: np.take(x, [[0], [0]], axis=-1),
       lambda x: np.take(x, [[0], [0]], axis=-1), min_dims=1, alias=True),
    # functional updates: set (the last of repeated indices wins) and add (repeats accumulate)
    Op("x.at[[0,0,1]].set(v)", lambda x, v: x.at[[0, 0, 1]].set(v), at_set([0, 0, 1]), "tt",
       shapes=at_shapes([0, 0, 1])),
    Op("x.at[1:].set(v)", lambda x, v: x.at[1:].set(v), at_set(slice(1, None)), "tt",
       shapes=at_shapes(slice(1, None))),
    Op("x.at[:,0].set(v)", lambda x, v: x.at[:, 0].set(v), at_set((slice(None), 0)), "tt",
       shapes=at_shapes((slice(None), 0), 2)),
    Op("x.at[mask].set(c)", lambda x: x.at[np.arange(len(x)) % 2 == 0].set(C),
       lambda x: at_set(np.arange(len(x)) % 2 == 0)(x, C), min_dims=1),
    Op("x.at[[0,0,1]].add(v)", lambda x, v: x.at[[0, 0, 1]].add(v), at_add([0, 0, 1]), "tt",
       shapes=at_shapes([0, 0, 1])),
    Op("x.at[...,-1].add(v)", lambda x, v: x.at[..., -1].add(v), at_add((Ellipsis, -1)), "tt",
       shapes=at_shapes((Ellipsis, -1))),
    Op("x.at[[0,0]].add(c)", lambda x: x.at[[0, 0]].add(C),
       lambda x: at_add([0, 0])(x, C), min_dims=1),
    Op("x.at[[1,0]].get()", lambda x: x.at[[1, 0]].get(), lambda x: x[[1, 0]], min_dims=1),
    # reshapes
    Op("x.reshape(-1)", lambda x: x.reshape(-1), lambda x: x.reshape(-1)),
    Op("x.reshape(1,-1)", lambda x: x.reshape(1, -1), lambda x: x.reshape(1, -1)),
    Op("x.reshape(reversed shape)", lambda x: x.reshape(x.shape[::-1]),
       lambda x: x.reshape(x.shape[::-1])),
    Op("td.reshape(x,(-1,1))", lambda x: td.reshape(x, (-1, 1)), lambda x: x.reshape(-1, 1)),
    Op("np.reshape(x,(1,-1))", lambda x: np.reshape(x, (1, -1)),
       lambda x: np.reshape(x, (1, -1)), alias=True),
    Op("x.view(-1)", lambda x: x.view(-1), lambda x: x.reshape(-1), alias=True),
    Op("x.ravel()", lambda x: x.ravel(), np.ravel),
    Op("x.flatten()", lambda x: x.flatten(), np.ravel, alias=True),
    Op("td.ravel", td.ravel, np.ravel, alias=True),
    Op("np.ravel", np.ravel, np.ravel, alias=True),
    Op("x.squeeze()", lambda x: x.squeeze(), np.squeeze),
    Op("td.squeeze(x,axis=0)", lambda x: td.squeeze(x, axis=0),
       lambda x: np.squeeze(x, axis=0), shapes=leading_one()),
    Op("np.squeeze", np.squeeze, np.squeeze, alias=True),
    Op("td.expand_dims(x,0)", lambda x: td.expand_dims(x, 0), lambda x: np.expand_dims(x, 0)),
    Op("td.expand_dims(x,-1)", lambda x: td.expand_dims(x, -1),
       lambda x: np.expand_dims(x, -1)),
    Op("np.expand_dims(x,(0,2))", lambda x: np.expand_dims(x, (0, 2)),
       lambda x: np.expand_dims(x, (0, 2)), min_dims=1, alias=True),
    Op("td.atleast_2d", td.atleast_2d, np.atleast_2d),
    # transposes and other views
    Op("x.T", lambda x: x.T, lambda x: x.T),
    Op("x.transpose()", lambda x: x.transpose(), np.transpose, alias=True),
    Op("x.transpose(1,0)", lambda x: x.transpose(1, 0), lambda x: x.transpose(1, 0),
       min_dims=2, max_dims=2),
    Op("td.transpose(x,(1,0,2))", lambda x: td.transpose(x, (1, 0, 2)),
       lambda x: np.transpose(x, (1, 0, 2)), min_dims=3),
    Op("np.transpose(x)", np.transpose, np.transpose, alias=True),
    Op("np.transpose(x,(2,0,1))", lambda x: np.transpose(x, (2, 0, 1)),
       lambda x: np.transpose(x, (2, 0, 1)), min_dims=3, alias=True),
    Op("x.mT", lambda x: x.mT, lambda x: x.mT, min_dims=2),
    Op("x.swapaxes(0,-1)", lambda x: x.swapaxes(0, -1), lambda x: np.swapaxes(x, 0, -1),
       min_dims=1),
    Op("td.swapaxes(x,0,1)", lambda x: td.swapaxes(x, 0, 1), lambda x: np.swapaxes(x, 0, 1),
       min_dims=2),
    Op("np.swapaxes(x,1,2)", lambda x: np.swapaxes(x, 1, 2), lambda x: np.swapaxes(x, 1, 2),
       min_dims=3, alias=True),
    Op("td.moveaxis(x,0,-1)", lambda x: td.moveaxis(x, 0, -1),
       lambda x: np.moveaxis(x, 0, -1), min_dims=1),
    Op("np.moveaxis(x,[0,1],[-1,0])", lambda x: np.moveaxis(x, [0, 1], [-1, 0]),
       lambda x: np.moveaxis(x, [0, 1], [-1, 0]), min_dims=2, alias=True),
    Op("td.broadcast_to(x,(2,)+shape)", lambda x: td.broadcast_to(x, (2,) + x.shape),
       lambda x: np.broadcast_to(x, (2,) + x.shape)),
    Op("td.broadcast_to(x,1->3)",  # size-1 axes stretched: their gradient sums
       lambda x: td.broadcast_to(x, tuple(3 if d == 1 else d for d in x.shape)),
       lambda x: np.broadcast_to(x, tuple(3 if d == 1 else d for d in x.shape))),
    Op("np.broadcast_to(x,(3,)+shape)", lambda x: np.broadcast_to(x, (3,) + x.shape),
       lambda x: np.broadcast_to(x, (3,) + x.shape), alias=True),
    Op("td.flip(x)", td.flip, np.flip),
    Op("td.flip(x,0)", lambda x: td.flip(x, 0), lambda x: np.flip(x, 0), min_dims=1),
    Op("td.flip(x,(0,-1))", lambda x: td.flip(x, (0, -1)), lambda x: np.flip(x, (0, -1)),
       min_dims=2),
    Op("np.flip(x,axis=1)", lambda x: np.flip(x, axis=1), lambda x: np.flip(x, axis=1),
       min_dims=2, alias=True),
    Op("x.diagonal()", lambda x: x.diagonal(), np.diagonal, min_dims=2),
    Op("td.diagonal(x,1)", lambda x: td.diagonal(x, 1), lambda x: np.diagonal(x, 1),
       min_dims=2),
    Op("td.diagonal(x,-1,1,2)", lambda x: td.diagonal(x, -1, 1, 2),
       lambda x: np.diagonal(x, -1, 1, 2), min_dims=3),
    Op("np.diagonal(x)", np.diagonal, np.diagonal, min_dims=2, alias=True),
    # rearrangements through a gather: roll, repeat, tile, pad
    Op("td.roll(x,1)", lambda x: td.roll(x, 1), lambda x: np.roll(x, 1)),
    Op("td.roll(x,-2,axis=0)", lambda x: td.roll(x, -2, axis=0),
       lambda x: np.roll(x, -2, axis=0), min_dims=1),
    Op("td.roll(x,(1,2),axis=(0,1))", lambda x: td.roll(x, (1, 2), axis=(0, 1)),
       lambda x: np.roll(x, (1, 2), axis=(0, 1)), min_dims=2),
    Op("np.roll(x,1,axis=-1)", lambda x: np.roll(x, 1, axis=-1),
       lambda x: np.roll(x, 1, axis=-1), min_dims=1, alias=True),
    Op("x.repeat(2)", lambda x: x.repeat(2), lambda x: np.repeat(x, 2)),
    Op("td.repeat(x,2,axis=0)", lambda x: td.repeat(x, 2, axis=0),
       lambda x: np.repeat(x, 2, axis=0), min_dims=1),
    Op("np.repeat(x,3,axis=-1)", lambda x: np.repeat(x, 3, axis=-1),
       lambda x: np.repeat(x, 3, axis=-1), min_dims=1, alias=True),
    Op("td.tile(x,2)", lambda x: td.tile(x, 2), lambda x: np.tile(x, 2)),
    Op("td.tile(x,(2,1))", lambda x: td.tile(x, (2, 1)), lambda x: np.tile(x, (2, 1))),
    Op("np.tile(x,(1,2,1))", lambda x: np.tile(x, (1, 2, 1)), lambda x: np.tile(x, (1, 2, 1)),
       alias=True),
    Op("td.pad(x,1)", lambda x: td.pad(x, 1), lambda x: np.pad(x, 1)),
    Op("td.pad(x,(2,1))", lambda x: td.pad(x, (2, 1)), lambda x: np.pad(x, (2, 1))),
    Op("td.pad(x,((0,1),(2,0)))", lambda x: td.pad(x, ((0, 1), (2, 0))),
       lambda x: np.pad(x, ((0, 1), (2, 0))), min_dims=2, max_dims=2),
    Op("td.pad(x,1,constant_values=c)", lambda x: td.pad(x, 1, constant_values=C),
       lambda x: np.pad(x, 1, constant_values=C)),
    Op("td.pad(x,1,mode='constant')", lambda x: td.pad(x, (0, 1), mode="constant"),
       lambda x: np.pad(x, (0, 1), mode="constant")),
    Op("np.pad(x,(1,2))", lambda x: np.pad(x, (1, 2)), lambda x: np.pad(x, (1, 2)), alias=True),
    # joins and splits
    Op("td.concatenate([x,y])", lambda x, y: td.concatenate([x, y]),
       lambda x, y: np.concatenate([x, y]), "tt", shapes=joined(2, 0)),
    Op("td.concatenate([x,y,z],axis=-1)", lambda x, y, z: td.concatenate([x, y, z], axis=-1),
       lambda x, y, z: np.concatenate([x, y, z], axis=-1), "ttt", shapes=joined(3, -1)),
    Op("td.concatenate([x,y],axis=None)", lambda x, y: td.concatenate([x, y], axis=None),
       lambda x, y: np.concatenate([x, y], axis=None), "tt", shapes=independent(2)),
    Op("np.concatenate([x,y],axis=1)", lambda x, y: np.concatenate([x, y], axis=1),
       lambda x, y: np.concatenate([x, y], axis=1), "tt", shapes=joined(2, 1, 2), alias=True),
    Op("td.concatenate([x,ndarray])", lambda x, a: td.concatenate([x, _a(a)]),
       lambda x, a: np.concatenate([x, a]), "ta", shapes=joined(2, 0)),
    Op("td.stack([x,y])", lambda x, y: td.stack([x, y]), lambda x, y: np.stack([x, y]), "tt",
       shapes=same(2)),
    Op("td.stack([x,y,z],axis=-1)", lambda x, y, z: td.stack([x, y, z], axis=-1),
       lambda x, y, z: np.stack([x, y, z], axis=-1), "ttt", shapes=same(3)),
    Op("np.stack([x,y],axis=1)", lambda x, y: np.stack([x, y], axis=1),
       lambda x, y: np.stack([x, y], axis=1), "tt", shapes=same(2, 1), alias=True),
    Op("td.hstack", lambda x, y: td.hstack([x, y]), lambda x, y: np.hstack([x, y]), "tt",
       shapes=Shapes(_hstack_shapes, ((2, 1), (2, 3)))),
    Op("td.vstack", lambda x, y: td.vstack([x, y]), lambda x, y: np.vstack([x, y]), "tt",
       shapes=Shapes(_vstack_shapes, ((1, 3), (2, 3)))),
    Op("td.split(x,2)", lambda x: _weighted(td.split(x, 2), td.concatenate),
       lambda x: _weighted(np.split(x, 2), np.concatenate), shapes=with_even(0)),
    Op("td.split(x,2,axis=-1)",
       lambda x: _weighted(td.split(x, 2, axis=-1), lambda p: td.concatenate(p, axis=-1)),
       lambda x: _weighted(np.split(x, 2, axis=-1), lambda p: np.concatenate(p, axis=-1)),
       shapes=with_even(-1)),
    Op("td.split(x,[1,3],axis=-1)",
       lambda x: _weighted(td.split(x, [1, 3], axis=-1), lambda p: td.concatenate(p, -1)),
       lambda x: _weighted(np.split(x, [1, 3], axis=-1), lambda p: np.concatenate(p, -1)),
       min_dims=1),
    Op("td.array_split(x,3)", lambda x: _weighted(td.array_split(x, 3), td.concatenate),
       lambda x: _weighted(np.array_split(x, 3), np.concatenate), min_dims=1),
    Op("np.split(x,2,axis=1)",
       lambda x: _weighted(np.split(x, 2, axis=1), lambda p: td.concatenate(p, axis=1)),
       lambda x: _weighted(np.split(x, 2, axis=1), lambda p: np.concatenate(p, axis=1)),
       shapes=with_even(1, 2), alias=True),
    # dtype conversions (the gradient flows back in the input's dtype)
    Op("x.astype(float32)", lambda x: x.astype(np.float32), lambda x: x.astype(np.float32),
       check=TO_F32),
    Op("td.astype(x,float64)", lambda x: td.astype(x, np.float64),
       lambda x: x.astype(np.float64)),
    Op("x.float()", lambda x: x.float(), lambda x: x.astype(np.float32), check=TO_F32, alias=True),
    Op("x.double()", lambda x: x.double(), lambda x: x.astype(np.float64), alias=True),
    # linear algebra
    Op("x@y", operator.matmul, np.matmul, "tt", shapes=MATMUL, inexact=True),
    Op("td.matmul", td.matmul, np.matmul, "tt", shapes=MATMUL, inexact=True, alias=True),
    Op("np.matmul", np.matmul, np.matmul, "tt", shapes=MATMUL, inexact=True, alias=True),
    Op("ndarray@x", lambda a, x: _a(a) @ x, np.matmul, "at", shapes=MATMUL, inexact=True),
    Op("x@ndarray", lambda x, a: x @ _a(a), np.matmul, "ta", shapes=MATMUL, inexact=True),
    Op("td.dot", td.dot, np.dot, "tt", inexact=True, shapes=labels(
        "mk,kn", ",mk", "mk,", "k,k", "mk,k", "k,kn", "pmk,k", "mk,qkn", "pmk,qkn")),
    Op("x.dot(y)", lambda x, y: x.dot(y), np.dot, "tt", shapes=labels("mk,kn", "k,k", "pmk,k"),
       inexact=True, alias=True),
    Op("np.dot(ndarray,x)", lambda a, x: np.dot(_a(a), x), np.dot, "at",
       shapes=labels("mk,kn", "k,k", "mk,qkn"), inexact=True, alias=True),
    Op("td.vdot", td.vdot, np.vdot, "tt", shapes=labels("k,k", "mk,mk", "mk,km", "mkn,nkm"),
       inexact=True),
    Op("td.inner", td.inner, np.inner, "tt", shapes=labels("k,k", ",mk", "mk,nk", "pk,qmk"),
       inexact=True),
    Op("np.inner", np.inner, np.inner, "tt", shapes=labels("mk,nk"), inexact=True, alias=True),
    Op("td.outer", td.outer, np.outer, "tt", shapes=independent(2, 2)),
    Op("np.outer", np.outer, np.outer, "tt", shapes=independent(2, 2), alias=True),
    Op("td.tensordot(axes=2)", td.tensordot, np.tensordot, "tt",
       shapes=labels("ijk,jkl", "jk,jk", "ijk,jk"), inexact=True),
    Op("td.tensordot(axes=1)", lambda x, y: td.tensordot(x, y, axes=1),
       lambda x, y: np.tensordot(x, y, axes=1), "tt", shapes=labels("ij,jk", "ijk,kl", "k,kl"),
       inexact=True),
    Op("td.tensordot(axes=0)", lambda x, y: td.tensordot(x, y, axes=0),
       lambda x, y: np.tensordot(x, y, axes=0), "tt", shapes=labels("ij,k")),
    Op("td.tensordot(axes=([1,0],[0,1]))",
       lambda x, y: td.tensordot(x, y, axes=([1, 0], [0, 1])),
       lambda x, y: np.tensordot(x, y, axes=([1, 0], [0, 1])), "tt",
       shapes=labels("ijk,jil", "ij,ji"), inexact=True),
    Op("np.tensordot(axes=(-1,0))", lambda x, y: np.tensordot(x, y, axes=(-1, 0)),
       lambda x, y: np.tensordot(x, y, axes=(-1, 0)), "tt", shapes=labels("ij,jk", "ijk,kl"),
       inexact=True),
    einsum("ij,jk->ik"),
    einsum("bij,bjk->bik"),
    einsum("ij,ij->"),
    einsum("i,j->ij"),
    einsum("ij,j->i"),
    einsum("ij,jk,kl->il"),
    einsum("ij,jk"),  # implicit output: the labels used once, sorted
    einsum("ji"),  # implicit: a transpose
    einsum("ii->i"),  # repeated labels: diagonal
    einsum("ii"),  # implicit: trace
    einsum("iij->j"),
    einsum("ij->"),
    einsum("ijk->kji"),
    einsum("ij,ij->ij"),  # a label shared and kept: a batch dimension
    einsum("bi,bj->bij"),
    einsum("ij,jk,ki->"),  # a cycle: every label summed
    einsum("iji->j"),
    Op("np.einsum(ij,jk->ik)", lambda x, y: np.einsum("ij,jk->ik", x, y),
       lambda x, y: np.einsum("ij,jk->ik", x, y), "tt", shapes=labels("ij,jk"), inexact=True,
       alias=True),
    Op("td.trace", td.trace, np.trace, min_dims=2, inexact=True),
    Op("x.trace(offset=1)", lambda x: x.trace(offset=1), lambda x: np.trace(x, offset=1),
       min_dims=2, inexact=True),
    Op("td.trace(x,-1,1,2)", lambda x: td.trace(x, -1, 1, 2), lambda x: np.trace(x, -1, 1, 2),
       min_dims=3, inexact=True),
    Op("np.trace", np.trace, np.trace, min_dims=2, inexact=True, alias=True),
]

GRAD = [r for r in OPS if r.grad]
NO_GRAD = [r for r in OPS if not r.grad]
# two operands that broadcast together elementwise (not matmul, concatenate...)
TWO_OPERANDS = [r for r in OPS if r.arity == 2 and r.shapes is None]


def _ids(rows: list[Op]) -> list[str]:
    return [r.name for r in rows]


def test_table_names_are_unique():
    names = _ids(OPS)
    assert len(names) == len(set(names)), {n for n in names if names.count(n) > 1}


def test_every_public_primitive_has_rows():
    # a primitive added to the table gets its rows here once REFERENCES has its reference
    public = {p.name for p in P.PUBLIC}
    missing = sorted(public - set(REFERENCES))
    assert not missing, f"add a NumPy reference to REFERENCES for {missing}"
    assert set(REFERENCES) <= public, sorted(set(REFERENCES) - public)
    names = set(_ids(OPS))
    for p in P.PUBLIC:
        assert {p.name, f"td.{p.name}"} <= names, p.name
        assert len(p.domain) == p.arity, p.name


# ---------------------------------------------------------------------------------------------
# drawing inputs
# ---------------------------------------------------------------------------------------------
def _shapes(row: Op, min_side: int) -> st.SearchStrategy:
    if row.shapes is not None:
        return row.shapes.draw(min_side)
    if row.arity == 1:
        return hnp.array_shapes(min_dims=row.min_dims, max_dims=row.max_dims,
                                min_side=min_side, max_side=4).map(lambda s: (s,))
    return hnp.mutually_broadcastable_shapes(
        num_shapes=row.arity, min_dims=row.min_dims, max_dims=row.max_dims, min_side=min_side,
        max_side=4).map(lambda b: b.input_shapes)


def draw_inputs(data, row: Op, dtypes=None, *, empty: bool = False,
                skip_rejected: bool = True) -> list[np.ndarray]:
    """Operands for ``row``: non-empty shapes, or (``empty``) shapes with a zero-size dim.

    Float operands are drawn in float64 from the row's domain and cast to the requested
    dtype; integer operands are drawn from [1, 4] (from [-100, 100] for unique elements),
    inside every domain.  Inputs NumPy's reference rejects are skipped, unless
    ``skip_rejected`` is False (the value test then checks that tapediff rejects them too).
    """
    dtypes = dtypes or (np.float64,) * row.arity
    shapes = _shapes(row, 0 if empty else 1)
    if empty:
        shapes = shapes.filter(lambda ss: any(0 in s for s in ss))
    shapes = data.draw(shapes, label="shapes")
    out = []
    for shape, dom, dt in zip(shapes, row.domain, dtypes):
        if np.dtype(dt).kind in "iu":
            ints = st.integers(-100, 100) if row.unique else st.integers(1, 4)
            a = data.draw(hnp.arrays(dt, shape, elements=ints, unique=row.unique))
        else:
            a = data.draw(hnp.arrays(np.float64, shape, elements=dom,
                                     unique=row.unique)).astype(dt)
        out.append(a)
    note(f"{row.name} on {out!r}")
    if skip_rejected and row.ref is not None:
        try:
            _reference(row, out)
        except (IndexError, ValueError):  # NumPy rejects this shape (x[1] on a length-1 axis)
            assume(False)
    return out


def _reference(row: Op, arrays: list[np.ndarray]) -> np.ndarray:
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of an empty slice is nan
        return np.asarray(row.ref(*arrays))


def _leaves(row: Op, arrays: list[np.ndarray], rg: bool) -> list[td.Tensor]:
    return [td.tensor(a, requires_grad=rg and k == "t" and a.dtype.kind == "f")
            for a, k in zip(arrays, row.args)]


def _check_values(row: Op, arrays: list[np.ndarray], rg: bool) -> None:
    try:
        expected = _reference(row, arrays)
    except (IndexError, ValueError) as e:  # NumPy rejects the input: tapediff must too
        with pytest.raises(type(e)):
            row.fn(*_leaves(row, arrays, rg))
        return
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = row.fn(*_leaves(row, arrays, rg))
    assert isinstance(out, td.Tensor)
    assert out.shape == expected.shape
    assert out.dtype == expected.dtype, f"dtype {out.dtype}, NumPy gives {expected.dtype}"
    # float32 results may come from a different (but equally accurate) formula, e.g. sigmoid;
    # contractions and norms sum in another order than NumPy
    f32 = expected.dtype == np.float32
    rtol = 1e-6 if f32 else 1e-12
    atol = (1e-4 if f32 else 1e-11) if row.inexact else 0
    np.testing.assert_allclose(out.numpy(), expected, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------
# values and dtypes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("row,dtype", [
    pytest.param(row, dtype, id=f"{row.name}-{d}")
    for row in OPS for d, dtype in (("f64", np.float64), ("f32", np.float32))])
@settings(max_examples=4, deadline=None,
          suppress_health_check=[*settings.default.suppress_health_check,
                                 HealthCheck.filter_too_much])
@given(data=st.data())
def test_values_match_numpy(row, dtype, data):
    # empty arrays included: their result must have NumPy's shape and dtype too
    empty = row.empty and data.draw(st.booleans(), label="empty")
    arrays = draw_inputs(data, row, (dtype,) * row.arity, empty=empty, skip_rejected=False)
    # recorded results live in the tape's arena, unrecorded ones do not: check both
    _check_values(row, arrays, rg=data.draw(st.booleans(), label="requires_grad"))


_DTYPE_CASES = {
    # integer operands: ints stay ints where NumPy keeps them (abs, relu, neg, +, sum, x[i])
    # and become float64 where NumPy promotes them (exp, /, mean, x * 2.5)
    "int": lambda row: [(np.int64,) * row.arity, (np.int32,) * row.arity],
    # float64 with float32: float64 wins, also for a 0-d float64 operand (a 0-d ndarray is
    # not a "weak" Python scalar in NumPy 2)
    "mixed": lambda row: [(np.float64, np.float32), (np.float32, np.float64)],
}


@pytest.mark.parametrize("row,kind", [
    pytest.param(row, kind, id=f"{row.name}-{kind}")
    for row in OPS for kind in _DTYPE_CASES if kind == "int" or row.arity == 2])
@settings(max_examples=4, deadline=None,
          suppress_health_check=[*settings.default.suppress_health_check,
                                 HealthCheck.filter_too_much])
@given(data=st.data())
def test_dtypes_follow_numpy(row, kind, data):
    dtypes = data.draw(st.sampled_from(_DTYPE_CASES[kind](row)), label="dtypes")
    arrays = draw_inputs(data, row, dtypes)
    _check_values(row, arrays, rg=data.draw(st.booleans(), label="requires_grad"))


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------
def _property(examples: int) -> Callable:
    """A hypothesis property over ``data`` with ``examples`` examples, which
    ``test_grad_and_recording`` runs for a row."""
    def decorate(fn: Callable) -> Callable:
        return settings(max_examples=examples, deadline=None,
                        suppress_health_check=[*settings.default.suppress_health_check,
                                               HealthCheck.filter_too_much])(
            given(data=st.data())(fn))
    return decorate


@_property(10)
def grad_float64(row: Op, data) -> None:
    check_grad(row.fn, draw_inputs(data, row), requires_grad=row.requires_grad,
               **dict(row.check))


@_property(4)
def grad_of_empty_inputs(row: Op, data) -> None:
    # NumPy accepts these shapes (a dimension of size 0 in some operand); backward must too,
    # and every gradient is an array of its input's shape (empty, or zeros when only the
    # output is empty).  check_grad checks shape and dtype.  (Keys like x[[0, 1], [1, 0]]
    # need their indexed axes non-empty, so most drawn shapes are rejected for them.)
    arrays = draw_inputs(data, row, empty=True)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of an empty slice is nan
        check_grad(row.fn, arrays, requires_grad=row.requires_grad, **dict(row.check))


@_property(4)
def grad_float32(row: Op, data) -> None:
    arrays = draw_inputs(data, row, (np.float32,) * row.arity)
    rg = row.requires_grad
    x32 = [td.tensor(a, requires_grad=r) for a, r in zip(arrays, rg)]
    x64 = [td.tensor(a.astype(np.float64), requires_grad=r) for a, r in zip(arrays, rg)]
    out32 = row.fn(*x32)
    out64 = row.fn(*x64)
    assert out32.dtype == _reference(row, arrays).dtype  # float32, but for np.float64 * x
    w = projection(out32.shape)
    (out32 * w).sum().backward()
    (out64 * w).sum().backward()
    for i in (i for i, r in enumerate(rg) if r):
        g32, g64 = x32[i].grad, x64[i].grad
        assert g32.dtype == np.float32 and g32.shape == arrays[i].shape
        # same (float32-representable) inputs, so only float32 rounding of values separates them
        np.testing.assert_allclose(g32.numpy(), g64.numpy(), rtol=1e-4,
                                   atol=1e-4 if row.inexact else 1e-5)


@_property(4)
def grad_with_one_operand_requiring_grad(row: Op, which: int, data) -> None:
    # the other operands are recorded as constants: their .grad stays None (checked by
    # check_grad), and the gradient of the one that requires grad is unchanged
    rg = [i == which for i in range(row.arity)]
    check_grad(row.fn, draw_inputs(data, row), requires_grad=rg, **dict(row.check))


@pytest.mark.parametrize("row", NO_GRAD, ids=_ids(NO_GRAD))
def test_results_without_gradient_do_not_record(row):
    x = td.tensor(np.linspace(-1.0, 1.0, 6).reshape(2, 3), requires_grad=True)
    with td.tape() as t:
        out = row.fn(x)
    assert not out.requires_grad and out.grad_fn is None
    assert len(t) == 0


def _loop_shapes(row: Op) -> list[tuple]:
    """The smallest valid inputs (0-d unless the op needs dimensions) and a broadcast."""
    if row.shapes is not None:
        return [row.shapes.fixed]
    small = (2,) * row.min_dims
    if row.arity == 1:
        return [(small,), ((2, 3, 2)[:max(row.min_dims, 2)],)]
    return [(small,) * row.arity, ((2, 1, 3), (4, 1), (3,))[:row.arity]]


def recording_in_a_loop(row: Op) -> None:
    # Every operation reserves room on the tape (records, arena values, side-table entries)
    # before appending, and the tape reclaims or grows only when a reservation does not fit.
    # An op that appends more than it reserved only fails when it lands just short of a
    # capacity boundary, which a single call almost never does: record it 500 times on a
    # fresh tape (several times the side table's initial capacity in entries), while 0, 1
    # or 2 other recorded tensors stay alive and shift where it lands.  Its last result
    # must still be right.  (Values in (0.3, 0.9): inside every domain, all distinct.  To
    # save time, the broadcast shapes run with one tensor alive only.)
    for n, shapes in enumerate(_loop_shapes(row)):
        arrays = [np.linspace(0.3, 0.9, math.prod(s)).reshape(s) for s in shapes]
        expected = _reference(row, arrays)
        for alive in (0, 1, 2) if n == 0 else (1,):
            with td.tape():
                s = td.tensor(np.ones((3, 4)), requires_grad=True)
                keep = [s[i:, ::2] for i in range(alive)]  # noqa: F841 - kept alive on purpose
                leaves = _leaves(row, arrays, rg=True)
                for _ in range(500):
                    out = row.fn(*leaves)
            np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=0,
                                       err_msg=f"shapes {shapes}, {alive} alive")


@pytest.mark.parametrize("row", GRAD, ids=_ids(GRAD))
@crash_guard
def test_grad_and_recording(row):
    """Every gradient check of a row and its recording loop, in one forked child (forking
    costs more than most checks): float64 over broadcast shapes; unless the row is an alias,
    also empty inputs, float32 (against float64), each tensor operand alone requiring grad,
    and 500 recordings on one tape."""
    grad_float64(row)
    if row.alias:
        return
    if row.empty:
        grad_of_empty_inputs(row)
    grad_float32(row)
    tensors = [i for i, k in enumerate(row.args) if k == "t"]
    for which in tensors if len(tensors) > 1 else ():
        grad_with_one_operand_requiring_grad(row, which)
    recording_in_a_loop(row)


# A leaf used several times in one expression: the adjoints of all its uses add up.
REUSE = [
    Op("x*x", lambda x: x * x, None),
    Op("x+x", lambda x: x + x, None),
    Op("x-x", lambda x: x - x, None),
    Op("x*x*x", lambda x: x * x * x, None),
    Op("x/x", lambda x: x / x, None, domain=(NONZERO,)),
    Op("x**x", lambda x: x ** x, None, domain=(POS,)),
    Op("x*exp(x)", lambda x: x * x.exp(), None, domain=(EXP,)),
    Op("x*sum(x)", lambda x: x * x.sum(), None),  # a broadcast use and a reducing use
    Op("x*mean(x,0)", lambda x: x * x.mean(axis=0), None, min_dims=1),
    Op("x[1:]*x[:-1]", lambda x: x[1:] * x[:-1], None, min_dims=1),  # overlapping views
    Op("x+x[::-1]", lambda x: x + x[::-1], None, min_dims=1),
    Op("(x+c)*(x-c)/x", lambda x: (x + C) * (x - C) / x, None, domain=(NONZERO,)),
    Op("x*y+x/y", lambda x, y: x * y + x / y, None, "tt", (ANY, NONZERO)),  # both, twice
    Op("x@x.T", lambda x: x @ x.T, None, min_dims=2, max_dims=2),
    Op("x.T@x", lambda x: x.T @ x, None, min_dims=1, max_dims=2),
    Op("einsum(ij,ij->i,x,x)", lambda x: td.einsum("ij,ij->i", x, x), None, min_dims=2,
       max_dims=2),
    Op("maximum(x,x)", lambda x: td.maximum(x, x), None),  # tied everywhere: halves add to 1
    Op("where(x>0,x,-x)", lambda x: td.where(x > 0, x, -x), None, domain=(HALF,)),
    Op("concatenate([x,x[::-1]])", lambda x: td.concatenate([x, x[::-1]]), None, min_dims=1),
    Op("x.at[0].set(x[-1]*x[0])", lambda x: x.at[0].set(x[-1] * x[0]), None, min_dims=1),
    Op("x.at[[0,0]].add(x[1:3])", lambda x: x.at[[0, 0]].add(x[1:3]), None, min_dims=1,
       max_dims=1, shapes=Shapes(lambda ms: st.integers(3, 4).map(lambda n: ((n,),)),
                                 ((3,),))),
    Op("x*softmax(x)", lambda x: x * td.softmax(x), None, min_dims=1),
    Op("x-x.max()", lambda x: x - x.max(), None, domain=(DISTINCT,), unique=True),
    Op("x.prod()*x", lambda x: x.prod() * x, None),
    Op("stack([x,x*x])", lambda x: td.stack([x, x * x]), None),
]


@pytest.mark.parametrize("row", REUSE, ids=_ids(REUSE))
@crash_guard
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_grad_of_leaf_used_several_times(row, data):
    check_grad(row.fn, draw_inputs(data, row), requires_grad=row.requires_grad)


# ---------------------------------------------------------------------------------------------
# semantics the table cannot express: ties, exact bounds, zeros, overflow, repeated indices,
# functional updates, in-place errors, dtypes end to end.  Expected gradients in closed form.
# ---------------------------------------------------------------------------------------------
def _backward(fn: Callable, *values, weights=None, dtype=np.float64) -> tuple:
    """``fn`` on leaves made from ``values``; backward of ``(fn(...) * weights).sum()``.
    Returns the output and the leaves' gradients as arrays."""
    leaves = [td.tensor(np.asarray(v, dtype), requires_grad=True) for v in values]
    out = fn(*leaves)
    (out if weights is None else out * np.asarray(weights)).sum().backward()
    return out, [leaf.grad.numpy() for leaf in leaves]


@pytest.mark.parametrize("fn,x,value,expected", [
    (lambda x: x.max(), [1.0, 3.0, 3.0], 3.0, [0.0, 0.5, 0.5]),
    (lambda x: td.max(x), [3.0, 1.0, 3.0], 3.0, [0.5, 0.0, 0.5]),
    (lambda x: np.max(x), [1.0, 3.0, 3.0], 3.0, [0.0, 0.5, 0.5]),
    (lambda x: x.min(), [2.0, 1.0, 1.0, 5.0], 1.0, [0.0, 0.5, 0.5, 0.0]),
    (lambda x: np.amin(x), [2.0, 1.0, 1.0, 5.0], 1.0, [0.0, 0.5, 0.5, 0.0]),
    (lambda x: x.max(), [2.0, 2.0, 2.0, 2.0], 2.0, [0.25] * 4),
    (lambda x: x.max(axis=1), [[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]], [3.0, 2.0],
     [[0.0, 0.5, 0.5], [0.5, 0.5, 0.0]]),
    (lambda x: x.min(axis=0, keepdims=True), [[1.0, 0.0], [1.0, 2.0]], [[1.0, 0.0]],
     [[0.5, 1.0], [0.5, 0.0]]),
    (lambda x: td.norm(x, np.inf), [-3.0, 1.0, 3.0], 3.0, [-0.5, 0.0, 0.5]),  # tie in |x|
], ids=["max", "td.max", "np.max", "min", "np.amin", "all-equal", "axis=1", "min-axis=0",
        "norm-inf"])
def test_max_min_ties_share_the_gradient(fn, x, value, expected):
    out, (g,) = _backward(fn, x)
    np.testing.assert_array_equal(out.numpy(), value)
    np.testing.assert_array_equal(g, expected)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_maximum_minimum_ties_split_the_gradient_in_half(dtype):
    x, y = [1.0, 2.0, 3.0], [1.0, 0.0, 3.0]  # tied at 0 and 2
    for fn in (td.maximum, np.maximum):
        out, (gx, gy) = _backward(fn, x, y, dtype=dtype)
        assert out.dtype == gx.dtype == gy.dtype == dtype
        np.testing.assert_array_equal(out.numpy(), [1.0, 2.0, 3.0])
        np.testing.assert_array_equal(gx, [0.5, 1.0, 0.5])
        np.testing.assert_array_equal(gy, [0.5, 0.0, 0.5])
    for fn in (td.minimum, np.minimum):
        out, (gx, gy) = _backward(fn, x, y, dtype=dtype)
        np.testing.assert_array_equal(out.numpy(), [1.0, 0.0, 3.0])
        np.testing.assert_array_equal(gx, [0.5, 0.0, 0.5])
        np.testing.assert_array_equal(gy, [0.5, 1.0, 0.5])
    # a constant operand tied with the tensor takes its half too
    _, (g,) = _backward(lambda x: td.maximum(x, 2.0), [1.0, 2.0, 3.0], dtype=dtype)
    np.testing.assert_array_equal(g, [0.0, 0.5, 1.0])
    _, (g,) = _backward(lambda x: np.maximum(x, 0), [-1.0, 0.0, 1.0], dtype=dtype)  # relu-like
    np.testing.assert_array_equal(g, [0.0, 0.5, 1.0])
    # broadcast: a 0-d operand tied with two elements gets both halves
    _, (gx, gs) = _backward(td.minimum, [1.0, 1.0, 0.0], 1.0, dtype=dtype)
    np.testing.assert_array_equal(gx, [0.5, 0.5, 1.0])
    assert gs == 1.0


CLIPS = {
    "td.clip": lambda x: td.clip(x, 0.0, 1.0),
    "x.clip": lambda x: x.clip(0.0, 1.0),
    "np.clip": lambda x: np.clip(x, 0.0, 1.0),
    "ndarray bounds": lambda x: td.clip(x, np.zeros(5), np.ones(5)),
    "tensor bounds": lambda x: td.clip(x, td.tensor(0.0), td.tensor(1.0)),
}


@pytest.mark.parametrize("clip", list(CLIPS.values()), ids=list(CLIPS))
def test_clip_passes_the_gradient_at_the_bounds(clip):
    x = [-1.0, 0.0, 0.5, 1.0, 2.0]  # below, at lo, inside, at hi, above
    out, (g,) = _backward(clip, x, weights=[1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_array_equal(out.numpy(), [0.0, 0.0, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(g, [0.0, 2.0, 3.0, 4.0, 0.0])


def test_clip_bounds_requiring_grad():
    # bounds get the gradient where they are active (x strictly outside); x keeps the same
    # gradient as with constant bounds, the bounds included (as PyTorch's clamp)
    x = td.tensor([-1.0, 0.0, 0.5, 1.0, 2.0, -3.0], requires_grad=True)
    lo = td.tensor(0.0, requires_grad=True)
    hi = td.tensor(1.0, requires_grad=True)
    out = td.clip(x, lo, hi)
    np.testing.assert_array_equal(out.numpy(), [0.0, 0.0, 0.5, 1.0, 1.0, 0.0])
    (out * np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 2.0, 3.0, 4.0, 0.0, 0.0])
    assert lo.grad.item() == 1.0 + 6.0
    assert hi.grad.item() == 5.0


@pytest.mark.parametrize("cond", [
    lambda: td.tensor([[1.5], [0.0]], requires_grad=True),
    lambda: np.array([[2], [0]]),
    lambda: np.array([[-0.5], [0.0]]),
    lambda: np.array([[True], [False]]),
], ids=["float tensor requiring grad", "int ndarray", "float ndarray", "bool ndarray"])
@pytest.mark.parametrize("where", [td.where, np.where], ids=["td.where", "np.where"])
def test_where_never_differentiates_its_condition(where, cond):
    # the condition is used by truthiness (as np.where does), never as a weight, and gets
    # no gradient; here it broadcasts over the columns
    c = cond()
    x = td.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = td.tensor(-1.0, requires_grad=True)
    out = where(c, x, y)
    np.testing.assert_array_equal(out.numpy(), [[1.0, 2.0, 3.0], [-1.0, -1.0, -1.0]])
    (out * np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 2.0, 3.0])
    assert y.grad.item() == 4.0 + 5.0 + 6.0
    if isinstance(c, td.Tensor):
        assert c.grad is None


def _prod_others(x: np.ndarray) -> np.ndarray:
    """d prod(x) / dx_i = the product of the other elements."""
    return np.array([np.prod(np.delete(x, i)) for i in range(x.size)])


PRODUCT_INPUTS = [[2.0, 0.0, 3.0, 4.0], [2.0, 0.0, 3.0, 0.0], [0.0, -1.5, 0.5, 2.0], [0.0],
                  [0.0, 0.0], [5.0, -1.5, 0.5, 2.0], [5e-324, 2.0], [3.0, 1e-320, 0.5]]
PRODUCT_IDS = ["one zero", "two zeros", "zero first", "only a zero", "only zeros", "no zero",
               "subnormal", "subnormal inside"]


@pytest.mark.parametrize("x", PRODUCT_INPUTS, ids=PRODUCT_IDS)
def test_prod_gradient_with_zeros(x):
    for prod in (lambda t: t.prod(), td.prod, np.prod):
        out, (g,) = _backward(prod, x)
        assert out.item() == np.prod(x)
        np.testing.assert_array_equal(g, _prod_others(np.asarray(x)))
    # along an axis: each row's own product rule
    rows = np.array([x, x[::-1]])
    _, (g,) = _backward(lambda t: t.prod(axis=1), rows, weights=[1.0, 2.0])
    np.testing.assert_array_equal(g, [_prod_others(rows[0]), 2 * _prod_others(rows[1])])


@pytest.mark.parametrize("x", PRODUCT_INPUTS, ids=PRODUCT_IDS)
def test_cumprod_gradient_with_zeros(x):
    x = np.asarray(x)
    w = np.arange(1.0, x.size + 1) / 3
    # d/dx_i sum_k w_k prod_{j<=k} x_j = sum_{k>=i} w_k prod_{j<=k, j!=i} x_j
    expected = [sum(w[k] * np.prod(np.delete(x[:k + 1], i)) for k in range(i, x.size))
                for i in range(x.size)]
    for cumprod in (lambda t: t.cumprod(), td.cumprod, np.cumprod):
        out, (g,) = _backward(cumprod, x, weights=w)
        np.testing.assert_array_equal(out.numpy(), np.cumprod(x))
        np.testing.assert_allclose(g, expected, rtol=1e-14, atol=0)
    _, (g,) = _backward(lambda t: td.cumprod(t, axis=0), np.stack([x, x], axis=1),
                        weights=np.stack([w, w], axis=1))
    np.testing.assert_allclose(g, np.stack([expected, expected], axis=1), rtol=1e-14, atol=0)


def test_logsumexp_does_not_overflow():
    out, (g,) = _backward(td.logsumexp, [1000.0, 1000.0])
    assert out.item() == pytest.approx(1000.0 + math.log(2.0), rel=1e-15)
    np.testing.assert_allclose(g, [0.5, 0.5], rtol=1e-15)
    out, (g,) = _backward(td.logsumexp, [-1000.0, -1000.0])  # nor underflow to log(0)
    assert out.item() == pytest.approx(-1000.0 + math.log(2.0), rel=1e-15)
    np.testing.assert_allclose(g, [0.5, 0.5], rtol=1e-15)
    out, (g,) = _backward(lambda x: td.logsumexp(x, axis=1),
                          [[1000.0, 1000.0, -np.inf], [-1000.0, 0.0, 0.0]])
    np.testing.assert_allclose(out.numpy(), [1000.0 + math.log(2.0), math.log(2.0)],
                               rtol=1e-15)
    np.testing.assert_allclose(g, [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]], rtol=1e-15)
    out, (g,) = _backward(td.logsumexp, [88.0, 89.0], dtype=np.float32)  # exp(89) > f32 max
    assert out.dtype == np.float32 and np.isfinite(out.item())
    assert out.item() == pytest.approx(89.0 + math.log1p(math.exp(-1.0)), rel=1e-6)
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_softmax_of_large_inputs_is_finite(dtype):
    big = [1000.0, 0.0, -1000.0] if dtype == np.float64 else [200.0, 100.0, -100.0]
    w = [1.0, 2.0, 3.0]
    out, (g,) = _backward(td.softmax, big, weights=w, dtype=dtype)
    assert out.dtype == dtype
    np.testing.assert_allclose(out.numpy(), [1.0, 0.0, 0.0], atol=1e-30)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, [0.0, 0.0, 0.0], atol=1e-30)  # p (w - p.w), p one-hot
    out, (g,) = _backward(td.log_softmax, big[:2], dtype=dtype)
    np.testing.assert_allclose(out.numpy(), [0.0, big[1] - big[0]], rtol=1e-6)
    np.testing.assert_allclose(g, [-1.0, 1.0], atol=1e-6)  # 1 - 2 softmax
    out, _ = _backward(lambda x: td.softmax(x, axis=0), [[1000.0, 1.0], [1000.0, 1.0]])
    np.testing.assert_allclose(out.numpy(), 0.5)


GATHERS = {
    "x[[0,0,1]]": lambda x: x[[0, 0, 1]],
    "x[array]": lambda x: x[np.array([0, 0, 1])],
    "x[tensor]": lambda x: x[td.tensor([0, 0, 1])],
    "td.take": lambda x: td.take(x, [0, 0, 1]),
    "np.take": lambda x: np.take(x, [0, 0, 1]),
    "x.at[].get()": lambda x: x.at[[0, 0, 1]].get(),
    "x[[0,0,1]][[0,1]]": lambda x: x[[0, 0, 1]][[0, 1]],  # (2 uses of x[0]) then (x[0], x[0])
}


@pytest.mark.parametrize("gather", list(GATHERS.values()), ids=list(GATHERS))
def test_repeated_indices_accumulate(gather):
    out, (g,) = _backward(gather, [1.0, 2.0, 3.0])
    expected = [2.0, 0.0, 0.0] if out.shape == (2,) else [2.0, 1.0, 0.0]
    np.testing.assert_array_equal(g, expected)
    # in two dimensions: the same element three times, through two index arrays
    out, (g,) = _backward(lambda x: x[[0, 0, 1], [1, 1, 2]] * x[0, 1], np.ones((2, 3)))
    np.testing.assert_array_equal(g, [[0.0, 5.0, 0.0], [0.0, 0.0, 1.0]])


@st.composite
def _axis_takes(draw):
    """(array, key, axis, index) for a take along one axis: ``a[idx]``, ``a[:, idx]``,
    ``a[:, :, idx, :]``...: repeated and negative indices, index arrays of 0-2 dimensions."""
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4))
    axis = draw(st.integers(0, len(shape) - 1))
    ishape = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=4))
    idx = draw(hnp.arrays(np.int64, ishape, elements=st.integers(-shape[axis], shape[axis] - 1)))
    trailing = draw(st.integers(0, len(shape) - axis - 1))
    # (a list too; a 0-d index as a list would be a Python int: basic indexing)
    key = (slice(None),) * axis + (draw(st.sampled_from([idx, idx.tolist()])) if idx.ndim
                                   else idx,)
    key += (slice(None),) * trailing
    a = draw(hnp.arrays(np.float64, shape, elements=_floats(-2.0, 2.0)))
    return a, (key[0] if len(key) == 1 else key), axis, idx


@given(_axis_takes(), st.integers(0, 2**32 - 1))
@settings(max_examples=60, deadline=None)
def test_indexing_along_one_axis_records_one_index_per_row(case, seed):
    """``a[idx]``, ``a[:, idx]``: the record holds one index per row of the take (not one
    per element); value, gradient (repeats accumulate), second derivative, replay at a new
    input and a tangent agree with NumPy's ``np.take`` and its scatter-add transpose."""
    a, key, axis, idx = case
    w = np.random.default_rng(seed).normal(size=np.take(a, idx, axis).shape)
    with td.tape() as t:
        x = td.tensor(a, requires_grad=True)
        y = x[key]
        loss = (y * w).sum()
    np.testing.assert_array_equal(y.numpy(), a[key])
    m = int(t.meta_at[y._slot])
    assert t.meta[m] == 4 + idx.size  # count, outer, length, inner, then the rows
    loss.backward()
    expected = np.zeros_like(a)
    np.add.at(np.moveaxis(expected, axis, 0), idx.ravel(),
              np.moveaxis(w.reshape(a.shape[:axis] + (idx.size,) + a.shape[axis + 1:]), axis, 0))
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-14, atol=1e-14)
    # d/dx of (x[key] ** 2 * w).sum() = 2 x * (scatter of w): the second derivative's diagonal
    h = td.grad(lambda v: (td.grad(lambda u: (u[key] ** 2 * w).sum())(v) * a).sum())(a)
    np.testing.assert_allclose(h, 2 * a * expected, rtol=1e-13, atol=1e-14)
    vg = td.value_and_grad(lambda v: (v[key] * w).sum(), replay=True)
    vg(a)
    value, grad = vg(a + 1.0)
    np.testing.assert_allclose(value, float(((a + 1.0)[key] * w).sum()), rtol=1e-13)
    np.testing.assert_allclose(grad, expected, rtol=1e-14, atol=1e-14)
    tangent = np.random.default_rng(seed + 1).normal(size=a.shape)
    _, ty = td.jvp(lambda v: v[key], (a,), (tangent,))
    np.testing.assert_allclose(ty.numpy() if hasattr(ty, "numpy") else ty, tangent[key],
                               rtol=1e-14)


@pytest.mark.parametrize("fn, np_fn, rows", [
    (lambda x: td.roll(x, -1, axis=1), lambda a: np.roll(a, -1, axis=1), 5),
    (lambda x: td.repeat(x, [2, 0, 1], axis=0), lambda a: np.repeat(a, [2, 0, 1], axis=0), 3),
    (lambda x: np.repeat(x, 2, axis=-1), lambda a: np.repeat(a, 2, axis=-1), 10),
], ids=["roll", "repeat", "np.repeat"])
def test_roll_and_repeat_along_an_axis_record_one_index_per_row(fn, np_fn, rows):
    a = np.random.default_rng(0).normal(size=(3, 5))
    w = np.random.default_rng(1).normal(size=np_fn(a).shape)
    with td.tape() as t:
        x = td.tensor(a, requires_grad=True)
        y = fn(x)
        loss = (y * w).sum()
    assert t.meta[int(t.meta_at[y._slot])] == 4 + rows
    np.testing.assert_array_equal(y.numpy(), np_fn(a))
    loss.backward()
    expected = np.zeros(a.size)  # the transpose: scatter-add of w through NumPy's own layout
    np.add.at(expected, np_fn(np.arange(a.size).reshape(a.shape)).ravel(), w.ravel())
    np.testing.assert_allclose(x.grad.numpy(), expected.reshape(a.shape), rtol=1e-15)


def test_at_set_last_write_wins():
    x = td.tensor([1.0, 2.0, 3.0], requires_grad=True)
    v = td.tensor([10.0, 20.0], requires_grad=True)
    y = x.at[[0, 0]].set(v)
    expected = np.array([1.0, 2.0, 3.0])
    expected[[0, 0]] = [10.0, 20.0]  # NumPy assignment: the last write wins
    np.testing.assert_array_equal(y.numpy(), expected)
    np.testing.assert_array_equal(y.numpy(), [20.0, 2.0, 3.0])
    np.testing.assert_array_equal(x.numpy(), [1.0, 2.0, 3.0])  # functional: x is unchanged
    (y * np.array([1.0, 2.0, 3.0])).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 2.0, 3.0])  # x[0] was overwritten
    np.testing.assert_array_equal(v.grad.numpy(), [0.0, 1.0])  # v[0] was overwritten too
    # a scalar written twice: both writes are the same value
    s = td.tensor(5.0, requires_grad=True)
    y = x.at[[2, 0, 2]].set(s)
    (y * np.array([1.0, 2.0, 3.0])).sum().backward()
    assert s.grad.item() == 1.0 + 3.0


def test_at_add_accumulates():
    x = td.tensor([1.0, 2.0, 3.0], requires_grad=True)
    v = td.tensor([10.0, 20.0], requires_grad=True)
    y = x.at[[0, 0]].add(v)
    expected = np.array([1.0, 2.0, 3.0])
    np.add.at(expected, [0, 0], [10.0, 20.0])
    np.testing.assert_array_equal(y.numpy(), expected)
    np.testing.assert_array_equal(y.numpy(), [31.0, 2.0, 3.0])
    np.testing.assert_array_equal(x.numpy(), [1.0, 2.0, 3.0])
    (y * np.array([1.0, 2.0, 3.0])).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(v.grad.numpy(), [1.0, 1.0])
    s = td.tensor(5.0, requires_grad=True)
    y = x.at[[2, 0, 2]].add(s)
    np.testing.assert_array_equal(y.numpy(), [6.0, 2.0, 13.0])
    (y * np.array([1.0, 2.0, 3.0])).sum().backward()
    assert s.grad.item() == 3.0 + 1.0 + 3.0


ASSIGNMENTS = {  # each written once for tensors and once for ndarrays: the same code
    "y[0]=1": lambda y: y.__setitem__(0, 1.0),
    "y[[0,1]]=0": lambda y: y.__setitem__([0, 1], 0.0),
    "y[mask]=0": lambda y: y.__setitem__(np.array([True, False, True]), 0.0),
    "y[1:]=constant": lambda y: y.__setitem__(slice(1, None), np.array([7.0, 8.0])),
    "y+=1": lambda y: y.__iadd__(1.0),
    "y*=2": lambda y: y.__imul__(2.0),
    "y[::2]*=y[1]": lambda y: y[::2].__imul__(y[1]),
}


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.mark.parametrize("assign", list(ASSIGNMENTS.values()), ids=list(ASSIGNMENTS))
@pytest.mark.parametrize("make", [(lambda x: x * 2, lambda x: x * 2),
                                  (lambda x: td.softmax(x) * 6, lambda x: _softmax(x) * 6),
                                  (lambda x: (td.ones(3, 3) @ x) / 3,
                                   lambda x: (np.ones((3, 3)) @ x) / 3),
                                  (lambda x: x[[0, 1, 2]], lambda x: x[[0, 1, 2]])],
                         ids=["x*2", "softmax", "matmul", "gather"])
def test_assignment_into_a_recorded_tensor_records_it(make, assign):
    # NumPy code that updates an intermediate in place differentiates unchanged: the value
    # is NumPy's, the gradient that of the updated program (central differences)
    make_td, make_np = make
    x0 = np.array([1.0, 2.0, 3.0])
    wts = np.array([1.0, -2.0, 0.5])

    def program(x):
        y = make_np(x)
        assign(y)
        return float((y * wts).sum())

    x = td.tensor(x0, requires_grad=True)
    y = make_td(x)
    earlier = y * 1.0  # recorded before the update: keeps the old value
    expected = make_np(x0)
    assign(expected)
    assign(y)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(earlier.numpy(), make_np(x0), rtol=1e-12)
    (y * wts).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), numerical_grad(program, [x0])[0], rtol=1e-6,
                               atol=1e-8)


def test_float32_stays_float32_end_to_end():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((4, 3)).astype(np.float32)
    W = td.tensor(rng.standard_normal((3, 5)).astype(np.float32), requires_grad=True)
    b = td.tensor(rng.standard_normal(5).astype(np.float32), requires_grad=True)
    h = X @ W + b
    p = td.softmax(h, axis=-1)
    q = td.log_softmax(h, axis=1)
    e = td.einsum("ij,ij->i", p, q)
    m = td.einsum("ij,jk->ik", W.T, W)
    loss = -e.mean() + 0.1 * td.logsumexp(m) + 0.5 * h.max() + (h @ b).var()
    for name, t in [("matmul", h), ("softmax", p), ("log_softmax", q), ("einsum", e),
                    ("einsum 2", m), ("loss", loss)]:
        assert t.dtype == np.float32, f"{name} is {t.dtype}"
    loss.backward()
    assert W.grad.dtype == np.float32 and b.grad.dtype == np.float32

    # the same program in float64: float32 rounding apart, the same values and gradients
    W64 = td.tensor(W.numpy().astype(np.float64), requires_grad=True)
    b64 = td.tensor(b.numpy().astype(np.float64), requires_grad=True)
    h64 = X.astype(np.float64) @ W64 + b64
    e64 = td.einsum("ij,ij->i", td.softmax(h64, axis=-1), td.log_softmax(h64, axis=1))
    loss64 = (-e64.mean() + 0.1 * td.logsumexp(td.einsum("ij,jk->ik", W64.T, W64))
              + 0.5 * h64.max() + (h64 @ b64).var())
    loss64.backward()
    np.testing.assert_allclose(loss.item(), loss64.item(), rtol=1e-5)
    np.testing.assert_allclose(W.grad.numpy(), W64.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(b.grad.numpy(), b64.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_mixing_float32_and_float64_promotes_to_float64():
    rng = np.random.default_rng(2)
    a32 = td.tensor(rng.standard_normal((2, 3)).astype(np.float32), requires_grad=True)
    b64 = td.tensor(rng.standard_normal((3, 2)), requires_grad=True)
    results = {
        "matmul": a32 @ b64,
        "einsum": td.einsum("ij,jk->ik", a32, b64),
        "tensordot": td.tensordot(a32, b64, axes=1),
        "concatenate": td.concatenate([a32, b64.T]),
        "stack": td.stack([a32, b64.T]),
        "where": td.where(np.array([[True, False, True]]), a32, b64.T),
        "maximum": td.maximum(a32, b64.T),
        "add": a32 + b64.T,
        "at.set": a32.at[0].set(b64[:, 0]),
    }
    for name, r in results.items():
        assert r.dtype == np.float64, f"{name} gives {r.dtype}"
    loss = sum((r * r).sum() for r in results.values())
    assert loss.dtype == np.float64
    loss.backward()
    assert a32.grad.dtype == np.float32  # a leaf's .grad has the leaf's dtype
    assert b64.grad.dtype == np.float64

    # the gradient equals the float64 one, rounded to float32
    a64 = td.tensor(a32.numpy().astype(np.float64), requires_grad=True)
    b = td.tensor(b64.numpy(), requires_grad=True)
    again = [a64 @ b, td.einsum("ij,jk->ik", a64, b), td.tensordot(a64, b, axes=1),
             td.concatenate([a64, b.T]), td.stack([a64, b.T]),
             td.where(np.array([[True, False, True]]), a64, b.T), td.maximum(a64, b.T),
             a64 + b.T, a64.at[0].set(b[:, 0])]
    sum((r * r).sum() for r in again).backward()
    np.testing.assert_allclose(a32.grad.numpy(), a64.grad.numpy().astype(np.float32),
                               rtol=1e-6)
    np.testing.assert_allclose(b64.grad.numpy(), b.grad.numpy(), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rg", [False, True], ids=["const", "grad"])
@pytest.mark.parametrize("shapes", [((3,), (4,)), ((2, 3), (3, 2)), ((2, 3), (2,))],
                         ids=str)
@pytest.mark.parametrize("row", TWO_OPERANDS, ids=_ids(TWO_OPERANDS))
def test_shapes_that_do_not_broadcast(row, shapes, rg):
    operands = _leaves(row, [np.full(s, 1.5) for s in shapes], rg)
    with pytest.raises(td.BroadcastError) as info:
        row.fn(*operands)
    err = info.value
    # catchable as NumPy users (ValueError) and PyTorch users (RuntimeError) expect
    assert isinstance(err, ValueError) and isinstance(err, RuntimeError)
    for s in shapes:
        assert str(s) in str(err), f"{s} not named in {err}"


@pytest.mark.parametrize("expr,match", [
    (lambda x: x + "a", "unsupported operand"),
    (lambda x: "a" + x, "str"),
    (lambda x: x / None, "unsupported operand"),
    (lambda x: x * ["a"], "dtype <U1 is not supported"),
    (lambda x: x - np.array(["a"]), "dtype <U1 is not supported"),
    (lambda x: td.exp("a"), "dtype <U1 is not supported"),
    (lambda x: td.tensor(["a"]), "dtype <U1 is not supported"),
    (lambda x: td.tensor("abc"), "dtype <U3 is not supported"),
], ids=["x+str", "str+x", "x/None", "x*[str]", "x-str-array", "exp(str)", "tensor([str])",
        "tensor(str)"])
def test_non_numeric_operands_raise_type_error(expr, match):
    x = td.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(TypeError, match=match):
        expr(x)


@pytest.mark.parametrize("expr", [
    lambda x: td.tensor([1 + 2j]),
    lambda x: td.tensor(np.ones(2, np.complex64)),
    lambda x: x + 1j,
    lambda x: 1j * x,
    lambda x: x ** np.complex128(2j),
    lambda x: x * np.array([1j, 2j]),
    lambda x: np.array([1j, 2j]) - x,
    lambda x: td.exp(np.array([1j])),
], ids=["tensor(list)", "tensor(c64)", "x+1j", "1j*x", "x**np.complex128", "x*ndarray",
        "ndarray-x", "exp(ndarray)"])
def test_complex_data_raises_type_error(expr):
    x = td.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(TypeError, match="complex"):
        expr(x)


_REDUCE = {
    "x.sum": lambda x, ax: x.sum(axis=ax),
    "x.mean": lambda x, ax: x.mean(axis=ax),
    "td.sum": lambda x, ax: td.sum(x, axis=ax),
    "x.sum(dim=)": lambda x, ax: x.sum(dim=ax),
}


@pytest.mark.parametrize("rg", [False, True], ids=["const", "grad"])
@pytest.mark.parametrize("axis,bad", [(2, 2), (-3, -3), ((0, 2), 2), ((-3, 1), -3)], ids=str)
@pytest.mark.parametrize("reduce", list(_REDUCE.values()), ids=list(_REDUCE))
def test_reduction_axis_out_of_range(reduce, axis, bad, rg):
    x = td.tensor(np.ones((2, 3)), requires_grad=rg)
    with pytest.raises(AxisError, match=f"axis {bad} is out of bounds") as info:
        reduce(x, axis)
    # NumPy's AxisError: an IndexError and a ValueError
    assert isinstance(info.value, IndexError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("rg", [False, True], ids=["const", "grad"])
@pytest.mark.parametrize("axis", [(0, 0), (1, -1), (0, -2)], ids=str)
@pytest.mark.parametrize("reduce", list(_REDUCE.values()), ids=list(_REDUCE))
def test_reduction_duplicate_axes(reduce, axis, rg):
    x = td.tensor(np.ones((2, 3)), requires_grad=rg)
    with pytest.raises(ValueError, match="duplicate") as info:
        reduce(x, axis)
    assert not isinstance(info.value, AxisError)  # the axes are in range, just repeated


@pytest.mark.parametrize("rg", [False, True], ids=["const", "grad"])
@pytest.mark.parametrize("shape,key,match", [
    ((3,), 3, "out of bounds"),
    ((3,), -4, "out of bounds"),
    ((2, 3), (0, 3), "out of bounds"),
    ((2, 3), (-3, 0), "out of bounds"),
    ((2, 3), (0, 0, 0), "too many indices"),
    ((), 0, "too many indices"),
    ((0,), 0, "out of bounds"),
    ((3,), [0, 3], "out of bounds"),  # advanced indices are checked too
    ((2, 3), (slice(None), np.array([-4])), "out of bounds"),
    ((3,), np.array([True, False]), "boolean index did not match"),
], ids=str)
def test_index_out_of_range(shape, key, match, rg):
    x = td.tensor(np.ones(shape), requires_grad=rg)
    with pytest.raises(IndexError, match=match):
        x[key]


@pytest.mark.parametrize("rg", [False, True], ids=["const", "grad"])
@pytest.mark.parametrize("key,match", [
    (1.5, "only integers"),
    ("a", "only integers"),
    ((0, 1.5), "only integers"),
    ([1.5], "only integers"),
    ({"a": 1}, "only integers"),
    (np.array([1.5]), "integer \\(or boolean\\) type"),
    (td.tensor([0.5]), "integer \\(or boolean\\) type|only integers"),
], ids=repr)
def test_invalid_index_kinds(key, match, rg):
    # keys NumPy rejects must raise IndexError with a message saying what is allowed, not
    # be truncated to integers or return something
    x = td.tensor(np.arange(6.0).reshape(3, 2), requires_grad=rg)
    with pytest.raises(IndexError, match=match):
        x[key]


# ---------------------------------------------------------------------------------------------
# bad input to the operations beyond arithmetic
# ---------------------------------------------------------------------------------------------
def _names_all(message: str, *parts: str) -> None:
    """Each of ``parts`` (a size or a shape; spaces ignored) occurs in ``message``."""
    compact = message.replace(" ", "")
    for part in parts:
        assert re.search(rf"(?<![\d.]){re.escape(part.replace(' ', ''))}(?![\d.])", compact), \
            f"{part!r} not named in: {message}"


MATMULS = {"@": operator.matmul, "td.matmul": td.matmul, "np.matmul": np.matmul,
           "ndarray@": lambda a, b: a.numpy() @ b, "td.dot": td.dot}


@pytest.mark.parametrize("rg", [False, True], ids=["const", "grad"])
@pytest.mark.parametrize("a,b,named", [
    ((2, 3), (2, 3), ("2", "3")),  # inner dimensions 3 and 2
    ((3,), (4,), ("3", "4")),
    ((2, 3), (4,), ("3", "4")),
    ((5,), (4, 2), ("5", "4")),
    ((2, 2, 3), (3, 3, 4), ("(2,2,3)", "(3,3,4)")),  # batch dims 2 and 3 do not broadcast
], ids=str)
@pytest.mark.parametrize("matmul", list(MATMULS.values()), ids=list(MATMULS))
def test_matmul_shape_mismatch(matmul, a, b, named, rg):
    if matmul is td.dot and len(a) == 3:
        pytest.skip("np.dot contracts the last axis with the second-to-last: valid")
    x = td.tensor(np.ones(a), requires_grad=rg)
    y = td.tensor(np.ones(b), requires_grad=rg)
    with pytest.raises(ValueError) as info:
        matmul(x, y)
    _names_all(str(info.value), *named)


@pytest.mark.parametrize("rg", [False, True], ids=["const", "grad"])
@pytest.mark.parametrize("call", [lambda x: x @ td.tensor(2.0), lambda x: td.matmul(2.0, x)],
                         ids=["x@0-d", "0-d@x"])
def test_matmul_of_a_0d_operand(call, rg):
    with pytest.raises(ValueError, match="dimension"):
        call(td.tensor(np.ones((2, 2)), requires_grad=rg))


@pytest.mark.parametrize("rg", [False, True], ids=["const", "grad"])
@pytest.mark.parametrize("call", [
    lambda x, y: td.tensordot(x, y, axes=1),
    lambda x, y: td.tensordot(x, y, axes=([0], [0])),
    lambda x, y: td.tensordot(x, y, axes=([0, 1], [1])),
    lambda x, y: np.tensordot(x, y, axes=2),
    lambda x, y: td.inner(x, y.T),
    lambda x, y: td.dot(x, y),
], ids=["axes=1", "axes=([0],[0])", "axes of unequal length", "np.tensordot", "inner", "dot"])
def test_tensordot_axis_mismatch(call, rg):
    # NumPy's own messages ("shape-mismatch for sum", "shapes ... not aligned") are fine
    x = td.tensor(np.ones((2, 3)), requires_grad=rg)
    y = td.tensor(np.ones((4, 3)), requires_grad=rg)
    with pytest.raises(ValueError, match="mismatch|not aligned"):
        call(x, y)


@pytest.mark.parametrize("rg", [False, True], ids=["const", "grad"])
@pytest.mark.parametrize("spec,shapes,match", [
    ("ij,jk->ik", [(2, 3)], "operand"),  # too few operands
    ("ij,jk->ik", [(2, 3), (3, 4), (4, 5)], "operand"),  # too many
    ("ij", [(2, 3), (3, 4)], "operand"),
    ("ij,jk->ik", [(2, 3), (4, 5)], r"\b3\b.*\b4\b|\b4\b.*\b3\b"),  # j: sizes 3 and 4
    ("ii->i", [(2, 3)], r"\b2\b.*\b3\b|\b3\b.*\b2\b"),  # a repeated label: equal sizes
    ("ijk->i", [(2, 3)], "subscripts"),  # more subscripts than dimensions
    ("...ij->i", [(2, 3, 4)], r"\.\.\."),  # ellipsis dimensions need '...' in the output
    ("ij->k", [(2, 3)], "k"),  # an output label no input has
], ids=["too few", "too many", "implicit too many", "label sizes", "diagonal sizes",
        "subscripts", "ellipsis", "unknown output"])
def test_einsum_bad_input(spec, shapes, match, rg):
    xs = [td.tensor(np.ones(s), requires_grad=rg) for s in shapes]
    with pytest.raises(ValueError, match=match):
        td.einsum(spec, *xs)


AXIS_CALLS = {
    "x.max": lambda x: x.max(axis=2),
    "td.min": lambda x: td.min(x, axis=-3),
    "x.argmax": lambda x: x.argmax(axis=2),
    "x.prod": lambda x: x.prod(axis=2),
    "x.var": lambda x: x.var(axis=2),
    "td.std": lambda x: td.std(x, axis=-3),
    "td.logsumexp": lambda x: td.logsumexp(x, axis=2),
    "td.softmax": lambda x: td.softmax(x, axis=2),
    "td.softmax(-3)": lambda x: td.softmax(x, -3),
    "td.log_softmax": lambda x: td.log_softmax(x, axis=2),
    "x.cumsum": lambda x: x.cumsum(axis=2),
    "td.cumprod": lambda x: td.cumprod(x, axis=-3),
    "td.norm": lambda x: td.norm(x, axis=2),
    "td.concatenate": lambda x: td.concatenate([x, x], axis=2),
    "np.concatenate": lambda x: np.concatenate([x, x], axis=-3),
    "td.stack": lambda x: td.stack([x, x], axis=3),
    "td.split": lambda x: td.split(x, 1, axis=2),
    "td.flip": lambda x: td.flip(x, 2),
    "td.roll": lambda x: td.roll(x, 1, axis=2),
    "td.repeat": lambda x: td.repeat(x, 2, axis=2),
    "td.take": lambda x: td.take(x, [0], axis=2),
    "td.squeeze": lambda x: td.squeeze(x, axis=2),
    "td.expand_dims": lambda x: td.expand_dims(x, 3),
    "td.swapaxes": lambda x: td.swapaxes(x, 0, 2),
    "td.moveaxis": lambda x: td.moveaxis(x, 0, 2),
    "np.max": lambda x: np.max(x, axis=2),
}


@pytest.mark.parametrize("rg", [False, True], ids=["const", "grad"])
@pytest.mark.parametrize("call", list(AXIS_CALLS.values()), ids=list(AXIS_CALLS))
def test_axis_out_of_range_in_other_ops(call, rg):
    x = td.tensor(np.ones((2, 3)), requires_grad=rg)
    with pytest.raises(AxisError, match="out of bounds"):
        call(x)


@pytest.mark.parametrize("rg", [False, True], ids=["const", "grad"])
@pytest.mark.parametrize("call", [
    lambda x: x[[0, 5]],
    lambda x: x[[0, 1], [0, 3]],
    lambda x: x[:, [-4]],
    lambda x: x[np.array([[0], [9]])],
    lambda x: td.take(x, [7]),
    lambda x: td.take(x, [0, 2], axis=0),
    lambda x: np.take(x, [-7]),
    lambda x: x.at[[5]].set(1.0),
    lambda x: x.at[[0, 2]].add(1.0),
    lambda x: x.at[:, [3]].set(td.tensor(0.0)),
    lambda x: x.at[[0, 1], [0, 9]].get(),
], ids=["x[[0,5]]", "x[[0,1],[0,3]]", "x[:,[-4]]", "x[2-d array]", "take", "take axis",
        "np.take", "at.set", "at.add", "at.set 2-d", "at.get"])
def test_index_arrays_out_of_range(call, rg):
    x = td.tensor(np.ones((2, 3)), requires_grad=rg)
    with pytest.raises(IndexError, match="out of bounds"):
        call(x)


@pytest.mark.parametrize("rg", [False, True], ids=["const", "grad"])
@pytest.mark.parametrize("call", [
    lambda x: td.split(x, 2),  # 5 rows into 2
    lambda x: td.split(x, 3, axis=1),  # 2 columns into 3
    lambda x: np.split(x, 4),
], ids=["td.split", "td.split(axis=1)", "np.split"])
def test_split_into_unequal_sections(call, rg):
    x = td.tensor(np.ones((5, 2)), requires_grad=rg)
    with pytest.raises(ValueError, match="equal division"):
        call(x)


@pytest.mark.parametrize("rg", [False, True], ids=["const", "grad"])
@pytest.mark.parametrize("mode", ["reflect", "edge", "wrap", "symmetric", "linear_ramp"])
def test_pad_with_an_unsupported_mode(mode, rg):
    x = td.tensor(np.ones((2, 3)), requires_grad=rg)
    for pad in (td.pad, np.pad):
        with pytest.raises(ValueError, match=mode):
            pad(x, 1, mode=mode)


@pytest.mark.parametrize("rg", [False, True], ids=["const", "grad"])
@pytest.mark.parametrize("call,named", [
    (lambda x: td.concatenate([x, td.ones(3, 2)]), ("2", "3")),
    (lambda x: td.concatenate([x, np.ones(3)]), ("2", "1")),  # dimensions 2 and 1
    (lambda x: td.stack([x, td.ones(3, 2)]), ("(2, 3)", "(3, 2)")),
    (lambda x: td.hstack([x, td.ones(3, 2)]), ("2", "3")),
    (lambda x: td.where(np.ones(4, bool), x, 0.0), ("(4,)", "(2, 3)")),
    (lambda x: td.broadcast_to(x, (3, 3)), ("(2, 3)", "(3, 3)")),
    (lambda x: x.reshape(4, 2), ("6", "(4, 2)")),
    (lambda x: x.at[0].set(td.ones(2)), ("(2,)", "(3,)")),
], ids=["concatenate", "concatenate ndim", "stack", "hstack", "where", "broadcast_to",
        "reshape", "at.set"])
def test_mismatched_shapes_in_joins_and_views(call, named, rg):
    x = td.tensor(np.ones((2, 3)), requires_grad=rg)
    with pytest.raises(ValueError) as info:
        call(x)
    _names_all(str(info.value), *named)


COMPLEX = {
    "matmul": lambda x: x @ np.ones((3, 2), complex),
    "ndarray@x": lambda x: np.ones((2, 2), complex) @ x,
    "einsum": lambda x: td.einsum("ij,jk", x, np.ones((3, 2), complex)),
    "tensordot": lambda x: td.tensordot(x, np.ones(3, complex), axes=1),
    "outer": lambda x: td.outer(x, [1j]),
    "concatenate": lambda x: td.concatenate([x, np.ones((1, 3), complex)]),
    "stack": lambda x: td.stack([x, 1j * np.ones((2, 3))]),
    "where": lambda x: td.where(np.ones((2, 3), bool), x, 1j),
    "maximum": lambda x: td.maximum(x, 1j),
    "clip": lambda x: td.clip(x, 0.0, 1j),
    "arctan2": lambda x: td.arctan2(x, np.ones(3, complex)),
    "at.set": lambda x: x.at[0, 0].set(1j),
    "at.add": lambda x: x.at[[0]].add(np.ones(3, complex)),
    "astype": lambda x: x.astype(np.complex128),
    "np.exp(complex)": lambda x: td.softmax(np.array([1j, 2j])),
    "logsumexp": lambda x: td.logsumexp(np.array([1j, 2j])),
}


@pytest.mark.parametrize("rg", [False, True], ids=["const", "grad"])
@pytest.mark.parametrize("call", list(COMPLEX.values()), ids=list(COMPLEX))
def test_complex_operands_raise_type_error(call, rg):
    x = td.tensor(np.ones((2, 3)), requires_grad=rg)
    with pytest.raises(TypeError, match="complex|not supported"):
        call(x)


@pytest.mark.parametrize("call,exc,match", [
    (lambda x: td.clip(x), ValueError, "max or min"),
    (lambda x: td.norm(x[0], "nuc"), ValueError, "nuc"),  # of a vector (matrices: test_linalg)
    (lambda x: td.norm(x, 3), ValueError, "3"),  # a 2-d norm of order 3: not a matrix norm
    (lambda x: td.array_split(x, 0), ValueError, "larger than 0"),
    (lambda x: td.concatenate([]), ValueError, "at least one"),
    (lambda x: td.stack([]), ValueError, "at least one"),
    (lambda x: x.sum(axis=(0, 1.5)), TypeError, "axis"),
    (lambda x: x.max(dim=0, axis=0), TypeError, "axis= or dim="),
], ids=["clip without bounds", "nuclear norm", "norm ord=3 matrix", "array_split 0",
        "concatenate []", "stack []", "float axis", "dim and axis"])
def test_other_bad_arguments(call, exc, match):
    x = td.tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(exc, match=match):
        call(x)


# ---------------------------------------------------------------------------------------------
# dtypes the table's eager forwards once got wrong
# ---------------------------------------------------------------------------------------------
def test_erf_of_float32_is_float32():
    x = np.array([0.5, 1.0], np.float32)
    assert td.erf(td.tensor(x, requires_grad=True)).dtype == np.float32  # recorded: right
    assert td.erf(td.tensor(x)).dtype == np.float32  # not recorded


def test_np_fabs_of_ints_gives_floats():
    a = np.array([1, -2])
    assert np.fabs(a).dtype == np.float64
    assert np.fabs(td.tensor(a)).dtype == np.float64
