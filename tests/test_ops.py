"""Table-driven tests of tapediff's differentiable operations.

``OPS`` is the specification: one row per operation, giving the function applied to tensors,
its NumPy reference, the kind of each operand and the domain its values are drawn from.
The tests below are parametrized over (subsets of) the rows and draw shapes and values with
hypothesis, so adding an operation means adding a row:

* values: results equal NumPy's, with NumPy's dtype (float64, float32, ints, mixed dtypes);
* gradients: ``.grad`` matches central differences, for broadcast shapes (0-d and size-1
  dims on either side), for empty arrays, in float32, with only one operand requiring grad,
  and for a leaf used several times in one expression;
* recording: an op recorded over and over on one tape keeps working across reclaims;
* bad input raises the documented exception type with a useful message.

Tests that run the jitted kernels run in a forked child (``helpers.crash_guard``): a kernel
writing out of bounds then fails one test instead of killing the whole run.
"""
from __future__ import annotations

import math
import operator
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tapediff as td
from helpers import check_grad, crash_guard, note, projection

AxisError = getattr(np, "exceptions", np).AxisError


# ---------------------------------------------------------------------------------------------
# Domains: element strategies.  Bounded so that finite differences are accurate (no overflow,
# no huge curvature) and bounded away from kinks and poles (0 for abs/relu/log/sqrt/1/x,
# pi/2 for tan), where a central difference straddles a non-differentiable point.
# ---------------------------------------------------------------------------------------------
def _floats(lo: float, hi: float) -> st.SearchStrategy:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


ANY = _floats(-2.0, 2.0)
WIDE = _floats(-6.0, 6.0)  # sigmoid: both branches of its overflow-free formula
EXP = _floats(-3.0, 3.0)
POS = _floats(0.25, 3.0)  # log, sqrt, and pow bases
NONZERO = st.one_of(_floats(-2.0, -0.25), _floats(0.25, 2.0))  # denominators, abs/relu kinks
TAN = _floats(-1.2, 1.2)  # inside (-pi/2, pi/2) with room to spare

C = 2.5  # scalar operand: not an integer, so no rule can get away with special-casing it


@dataclass(frozen=True)
class Op:
    """One row of the table.

    ``fn`` is applied to tensors.  ``args`` has one letter per operand: "t" a tensor that
    requires grad, "a" a plain ndarray constant (the test hands ``fn`` a tensor that does not
    require grad and ``fn`` turns it into an ndarray with ``np.asarray``, so that the operator
    sees an ndarray).  ``ref`` is the NumPy reference, taking ndarrays in the same order.
    ``domain`` gives an element strategy per operand; ``min_dims`` the fewest dimensions the
    op needs (an axis or an index).  Shapes NumPy itself rejects (``x[1]`` on a length-1
    axis) are skipped.
    """

    name: str
    fn: Callable
    ref: Callable
    args: str = "t"
    domain: tuple | None = None
    min_dims: int = 0

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


def unary(name: str, ref: Callable, domain=ANY) -> list[Op]:
    """``x.name()`` and ``td.name(x)``: the method and the module function are separate code."""
    return [Op(name, lambda x: getattr(x, name)(), ref, domain=(domain,)),
            Op(f"td.{name}", lambda x: getattr(td, name)(x), ref, domain=(domain,))]


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
    return rows


def index(label: str, get: Callable, min_dims: int) -> Op:
    """``x[key]``: NumPy's basic indexing on the same key is the reference."""
    return Op(f"x[{label}]", get, get, min_dims=min_dims)


def _a(t) -> np.ndarray:
    return np.asarray(t)


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
    *unary("abs", np.abs, NONZERO),
    *unary("exp", np.exp, EXP),
    *unary("log", np.log, POS),
    *unary("sqrt", np.sqrt, POS),
    *unary("sin", np.sin, ANY),
    *unary("cos", np.cos, ANY),
    *unary("tan", np.tan, TAN),
    *unary("tanh", np.tanh, EXP),
    *unary("sigmoid", lambda x: 1 / (1 + np.exp(-x)), WIDE),
    *unary("relu", lambda x: np.maximum(x, 0), NONZERO),
    # reductions
    *reductions("sum"),
    *reductions("mean"),
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
]

BINARY = [r for r in OPS if r.args == "tt"]  # both operands are tensors
TWO_OPERANDS = [r for r in OPS if r.arity == 2]


def _ids(rows: list[Op]) -> list[str]:
    return [r.name for r in rows]


def test_table_names_are_unique():
    names = _ids(OPS)
    assert len(names) == len(set(names))


# ---------------------------------------------------------------------------------------------
# drawing inputs
# ---------------------------------------------------------------------------------------------
def _shapes(row: Op, min_side: int) -> st.SearchStrategy:
    if row.arity == 1:
        return hnp.array_shapes(min_dims=row.min_dims, max_dims=3, min_side=min_side,
                                max_side=4).map(lambda s: (s,))
    return hnp.mutually_broadcastable_shapes(
        num_shapes=row.arity, min_dims=row.min_dims, max_dims=3, min_side=min_side,
        max_side=4).map(lambda b: b.input_shapes)


def draw_inputs(data, row: Op, dtypes=None, *, empty: bool = False) -> list[np.ndarray]:
    """Operands for ``row``: non-empty shapes, or (``empty``) shapes with a zero-size dim.

    Float operands are drawn in float64 from the row's domain and cast to the requested
    dtype; integer operands are drawn from [1, 4], inside every domain.
    """
    dtypes = dtypes or (np.float64,) * row.arity
    shapes = _shapes(row, 0 if empty else 1)
    if empty:
        shapes = shapes.filter(lambda ss: any(0 in s for s in ss))
    shapes = data.draw(shapes, label="shapes")
    out = []
    for shape, dom, dt in zip(shapes, row.domain, dtypes):
        if np.dtype(dt).kind in "iu":
            a = data.draw(hnp.arrays(dt, shape, elements=st.integers(1, 4)))
        else:
            a = data.draw(hnp.arrays(np.float64, shape, elements=dom)).astype(dt)
        out.append(a)
    note(f"{row.name} on {out!r}")
    try:
        if row.ref is not None:
            _reference(row, out)
    except IndexError:  # NumPy rejects this shape for this key (x[1] on a length-1 axis)
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
    expected = _reference(row, arrays)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = row.fn(*_leaves(row, arrays, rg))
    assert isinstance(out, td.Tensor)
    assert out.shape == expected.shape
    assert out.dtype == expected.dtype, f"dtype {out.dtype}, NumPy gives {expected.dtype}"
    # float32 results may come from a different (but equally accurate) formula, e.g. sigmoid
    rtol = 1e-6 if expected.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out.numpy(), expected, rtol=rtol, atol=0)


# ---------------------------------------------------------------------------------------------
# values and dtypes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("row", OPS, ids=_ids(OPS))
@settings(max_examples=12, deadline=None,
          suppress_health_check=[*settings.default.suppress_health_check,
                                 HealthCheck.filter_too_much])
@given(data=st.data())
def test_values_match_numpy(row, dtype, data):
    # empty arrays included: their result must have NumPy's shape and dtype too
    empty = data.draw(st.booleans(), label="empty")
    arrays = draw_inputs(data, row, (dtype,) * row.arity, empty=empty)
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
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_dtypes_follow_numpy(row, kind, data):
    dtypes = data.draw(st.sampled_from(_DTYPE_CASES[kind](row)), label="dtypes")
    arrays = draw_inputs(data, row, dtypes)
    _check_values(row, arrays, rg=data.draw(st.booleans(), label="requires_grad"))


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("row", OPS, ids=_ids(OPS))
@crash_guard
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_grad(row, data):
    check_grad(row.fn, draw_inputs(data, row), requires_grad=row.requires_grad)


@pytest.mark.parametrize("row", OPS, ids=_ids(OPS))
@crash_guard
@settings(max_examples=10, deadline=None,
          suppress_health_check=[*settings.default.suppress_health_check,
                                 HealthCheck.filter_too_much])
@given(data=st.data())
def test_grad_of_empty_inputs(row, data):
    # NumPy accepts these shapes (a dimension of size 0 in some operand); backward must too,
    # and every gradient is an array of its input's shape (empty, or zeros when only the
    # output is empty).  check_grad checks shape and dtype.  (Keys like x[[0, 1], [1, 0]]
    # need their indexed axes non-empty, so most drawn shapes are rejected for them.)
    arrays = draw_inputs(data, row, empty=True)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of an empty slice is nan
        check_grad(row.fn, arrays, requires_grad=row.requires_grad)


@pytest.mark.parametrize("row", OPS, ids=_ids(OPS))
@crash_guard
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_grad_float32(row, data):
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
        np.testing.assert_allclose(g32.numpy(), g64.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("which", [0, 1], ids=["first", "second"])
@pytest.mark.parametrize("row", BINARY, ids=_ids(BINARY))
@crash_guard
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_grad_with_one_operand_requiring_grad(row, which, data):
    # the other operand is recorded as a constant: its .grad stays None (checked by
    # check_grad), and the gradient of the one that requires grad is unchanged
    rg = [i == which for i in range(2)]
    check_grad(row.fn, draw_inputs(data, row), requires_grad=rg)


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
]


@pytest.mark.parametrize("row", REUSE, ids=_ids(REUSE))
@crash_guard
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_grad_of_leaf_used_several_times(row, data):
    check_grad(row.fn, draw_inputs(data, row), requires_grad=row.requires_grad)


def _loop_shapes(row: Op) -> list[tuple]:
    """The smallest valid inputs (0-d unless the op needs dimensions) and a broadcast."""
    small = (2,) * row.min_dims
    if row.arity == 1:
        return [(small,), ((2, 3, 2)[:max(row.min_dims, 2)],)]
    return [(small, small), ((2, 1, 3), (4, 1))]


@pytest.mark.parametrize("row", OPS, ids=_ids(OPS))
@crash_guard
def test_recording_in_a_loop(row):
    # Every operation reserves room on the tape (records, arena values, side-table entries)
    # before appending, and the tape reclaims or grows only when a reservation does not fit.
    # An op that appends more than it reserved only fails when it lands just short of a
    # capacity boundary, which a single call almost never does: record it 500 times on a
    # fresh tape (several times the side table's initial capacity in entries), while 0, 1
    # or 2 other recorded tensors stay alive and shift where it lands.  Its last result
    # must still be right.
    for shapes in _loop_shapes(row):
        arrays = [np.linspace(0.5, 1.5, math.prod(s)).reshape(s) for s in shapes]
        expected = _reference(row, arrays)
        for alive in range(3):
            with td.tape():
                s = td.tensor(np.ones((3, 4)), requires_grad=True)
                keep = [s[i:, ::2] for i in range(alive)]  # noqa: F841 - kept alive on purpose
                leaves = _leaves(row, arrays, rg=True)
                for _ in range(500):
                    out = row.fn(*leaves)
            np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=0,
                                       err_msg=f"shapes {shapes}, {alive} alive")


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
