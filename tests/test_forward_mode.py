"""Forward mode on the tape: ``Tape.tangent`` (the jitted ``tangent_sweep`` and its Python
rules) and the batched Jacobian drivers ``Tape.jacobian_rows`` / ``Tape.jacobian_columns``.

Functions are recorded through the public API on a ``with td.tape()`` block; the test writes
its leaves' tangents into tangent arenas, sweeps, and compares the output's tangent with
central differences of the same function along the tangent (computed by the library without
recording, as ``helpers.check_grad`` does).  Where finite differences do not apply (ties of
max/min, kinks) the tangent is checked against the reverse sweep: for every w,
``w . (J v) == (J^T w) . v``.
"""
from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tapediff as td
from tapediff._src import _kernels as K
from tapediff._src import _primitives as P

from helpers import into_domain, projection


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def record(fn, arrays):
    """Record ``fn`` on a fresh tape with leaves ``td.tensor(a, requires_grad=True)``."""
    with td.tape() as t:
        xs = [td.tensor(a, requires_grad=True) for a in arrays]
        y = fn(*xs)
    return t, xs, y


def arenas(t, fill=0.0):
    return np.full(len(t.val), fill), np.full(len(t.val32), fill, np.float32)


def leaf_slot(x) -> int:
    return x._leaf_record.slot


def tangent_of(t, xs, y, tangents, fill=0.0, start=0):
    """The tangent of ``y`` after a sweep with ``tangents`` written to the leaves ``xs``."""
    tan, tan32 = arenas(t, fill)
    for x, v in zip(xs, tangents):
        t._tangent_view(leaf_slot(x), tan, tan32, x.shape)[...] = v
    t.tangent(start, len(t), tan, tan32)
    return t._tangent_view(y._slot, tan, tan32, y.shape).copy()


def evaluate(fn, arrays):
    """``fn`` on tensors that do not require grad, as a float64 array."""
    return np.asarray(fn(*(td.tensor(a) for a in arrays)).numpy(), np.float64)


def fd_tangent(fn, arrays, tangents, eps=1e-6):
    """Central difference of ``fn`` along ``tangents`` (inputs in float64)."""
    a64 = [np.asarray(a, np.float64) for a in arrays]
    hi = evaluate(fn, [a + eps * v for a, v in zip(a64, tangents)])
    lo = evaluate(fn, [a - eps * v for a, v in zip(a64, tangents)])
    return (hi - lo) / (2 * eps)


def directions(arrays, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(np.shape(a)) for a in arrays]


def adjoints(t, y, xs, w):
    """(J^T w) for each leaf, from the reverse sweep (graph retained)."""
    touched = np.zeros(y._slot + 1, np.uint8)
    assert t.sweep(y._slot, np.asarray(w, np.float64), True, touched) is not None
    out = []
    for x in xs:
        s = leaf_slot(x)
        out.append(t.adjoint_view(s).astype(np.float64).reshape(x.shape) if touched[s]
                   else np.zeros(x.shape))
    return out


def check_tangent(fn, arrays, *, rtol=1e-5, atol=1e-6, eps=1e-6, dot=True, seed=1):
    """The tangent of ``fn`` at ``arrays`` along random directions: against central
    differences, and (``dot``) against the reverse sweep."""
    vs = directions(arrays, seed)
    t, xs, y = record(fn, arrays)
    got = tangent_of(t, xs, y, vs)
    np.testing.assert_allclose(got, fd_tangent(fn, arrays, vs, eps), rtol=rtol, atol=atol)
    if dot:
        dot_test(t, xs, y, vs, got)
    return t, got


def dot_test(t, xs, y, vs, got, rtol=1e-9):
    w = projection(y.shape, 3)
    lhs = float(np.sum(w * got))
    rhs = sum(float(np.sum(g * v)) for g, v in zip(adjoints(t, y, xs, w), vs))
    assert math.isclose(lhs, rhs, rel_tol=rtol, abs_tol=1e-12), (lhs, rhs)


def ops_of(t) -> set:
    return set(t.op[:len(t)].tolist())


# ---------------------------------------------------------------------------------------------
# elementwise primitives, from the table
# ---------------------------------------------------------------------------------------------
_CONST_RULES = {  # the rules of a tensor and a Python number
    K.OP_ADD_C: lambda x: x + 2.0,
    K.OP_MUL_C: lambda x: x * 3.0,
    K.OP_RSUB_C: lambda x: 2.0 - x,
    K.OP_DIV_C: lambda x: x / 3.0,
    K.OP_RDIV_C: lambda x: 3.0 / x,
    K.OP_POW_C: lambda x: x ** 3.0 + x ** 2.0 + x ** 0.5,
    K.OP_RPOW_C: lambda x: 3.0 ** x,
}
ELEMENTWISE = [p for p in P.PRIMITIVES if K.TRAITS[p.op] & K.ELEMENTWISE]


def _elementwise_fn(p):
    if p.op in _CONST_RULES:
        return _CONST_RULES[p.op]
    return getattr(td, p.name) if p in P.PUBLIC else p.array


def _inputs(p, shapes, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [into_domain(rng.uniform(0, 1, s), d).astype(dtype)
            for s, d in zip(shapes, p.domain)]


def test_every_elementwise_primitive_is_tested():
    assert len(ELEMENTWISE) >= 30 and all(p.domain for p in ELEMENTWISE)


@pytest.mark.parametrize("p", ELEMENTWISE, ids=lambda p: f"{p.grad_fn}{p.op}")
def test_elementwise_tangent(p):
    """Full-size operands (the array loops), size-1 operands against a larger output (the
    ``k & mask`` reads), scalars (one rule evaluation), and float32."""
    fn = _elementwise_fn(p)
    full = (3, 4)
    layouts = [[full] * p.arity, [()] * p.arity]
    if p.arity == 2:
        layouts += [[full, ()], [(), full]]
    for shapes in layouts:
        arrays = _inputs(p, shapes)
        t, _ = check_tangent(fn, arrays)
        assert p.op in ops_of(t)
        if p.arity == 2 and shapes[0] != shapes[1]:  # a size-1 operand, not a broadcast
            i = [s for s in range(len(t)) if t.op[s] == p.op][0]
            assert sorted((int(t.n[t.in_a[i]]), int(t.n[t.in_b[i]]))) == [1, 12]
    # float32 arena: the tangent stays float32, close to the float64 derivative
    arrays = _inputs(p, [full] * p.arity, np.float32)
    vs = directions(arrays)
    t, xs, y = record(fn, arrays)
    assert y.dtype == np.float32 and int(t.arena_of[y._slot]) == K.KIND_F32
    got = tangent_of(t, xs, y, vs)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, fd_tangent(fn, arrays, vs), rtol=2e-4, atol=2e-4)


def test_every_opcode_has_a_tangent_rule():
    """Every opcode, recorded by ``test_kernels``' table (on a replay recording, so guards
    are recorded too): its tangent matches central differences, or, for a Python rule
    without a ``tangent`` in the table, the sweep says it is not implemented."""
    from test_kernels import RECORDERS, X

    failures = []
    for op in sorted(RECORDERS):
        fn, name = RECORDERS[op], P.GRAD_FN[op]
        with td.tape() as t:
            t._guards = []
            x = td.tensor(X, requires_grad=True)
            y = fn(x)
        t._guards = None
        if op not in ops_of(t):
            failures.append(f"{name}: not recorded")
            continue
        v = directions([X], op)
        try:
            got = tangent_of(t, [x], y, v)
        except NotImplementedError as e:
            if not (K.TRAITS[op] & K.PYTHON_RULE and P.BY_OP[op].tangent is None):
                failures.append(f"{name}: {e}")
            continue
        cast = op == K.OP_CAST  # a float32 round trip: a step well above its rounding
        tol = 1e-3 if cast else 1e-5
        try:
            np.testing.assert_allclose(got, fd_tangent(fn, [X], v, 1e-3 if cast else 1e-6),
                                       rtol=tol, atol=tol)
        except AssertionError as e:
            failures.append(f"{name}: {e}")
    assert not failures, "\n".join(failures)


def test_a_zero_tangent_adds_nothing_against_an_infinite_or_nan_partial():
    """sqrt at 0 (infinite slope) and a power's slope in a negative base (NaN) do not leak
    into the tangent along a direction that does not move them."""
    x0 = np.array([0.0, 1.0, 4.0])
    base = np.array([-2.0, -1.5, 3.0])
    fn = lambda x, b: td.sqrt(x) + b ** np.array([2.0, 3.0, 2.0])  # noqa: E731
    t, xs, y = record(fn, [x0, base])
    got = tangent_of(t, xs, y, [np.zeros(3), np.ones(3)])
    np.testing.assert_allclose(got, [2 * -2.0, 3 * 1.5 ** 2, 2 * 3.0])
    got = tangent_of(t, xs, y, [np.array([0.0, 1.0, 1.0]), np.zeros(3)])
    np.testing.assert_allclose(got, [0.0, 0.5, 0.25])


# ---------------------------------------------------------------------------------------------
# layout, selection, reductions, scans, joins, matmul
# ---------------------------------------------------------------------------------------------
R = np.random.default_rng(7)
A23 = R.uniform(0.2, 1.5, (2, 3))
A34 = R.uniform(0.2, 1.5, (3, 4))
A234 = R.uniform(0.2, 1.5, (2, 3, 4))
V3 = R.uniform(0.2, 1.5, 3)
V4 = R.uniform(0.2, 1.5, 4)
MASK = A34 > 0.8
C24 = R.uniform(-1, 1, (2, 4))
ZEROS = np.array([[0.0, 1.2, 0.7, 0.4], [0.0, 0.0, 1.1, 0.5], [0.5, 0.9, 1.3, 0.8]])

# name -> (function of the leaves, inputs, opcodes it must record)
STRUCTURAL = {
    "sum-axis0": (lambda x: x.sum(axis=0), [A34], {K.OP_RESTRIDE}),
    "mean-axis1-keepdims": (lambda x: x.mean(axis=1, keepdims=True) * x, [A34], {K.OP_RESTRIDE}),
    "sum-axes02": (lambda x: x.sum(axis=(0, 2)), [A234], {K.OP_RESTRIDE}),
    "sum-all": (lambda x: x.sum() * x, [A234], {K.OP_RESTRIDE}),
    "broadcast": (lambda x, v: x[:, None, :] * v[None, :, None], [A23, V4], {K.OP_RESTRIDE}),
    "broadcast_to": (lambda x: td.broadcast_to(x, (3, 2, 3)) * np.arange(18.0).reshape(3, 2, 3),
                     [A23], {K.OP_RESTRIDE}),
    "transpose": (lambda x: x.transpose(2, 0, 1) * np.arange(24.0).reshape(4, 2, 3), [A234],
                  {K.OP_RESTRIDE}),
    "slices": (lambda x: x[::2, 1:, ::-1] + x[1, :2, ::-1] * x[0, ::2, :], [A234],
               {K.OP_RESTRIDE}),
    "fancy-rows": (lambda x: x[[2, 0, 2]], [A34], {K.OP_GATHER}),
    "fancy-columns": (lambda x: x[:, [1, 1, 0]] * x[:, :3], [A34], {K.OP_GATHER}),
    "boolean-mask": (lambda x: x[MASK], [A34], {K.OP_GATHER}),
    "at-add": (lambda x, v: x.at[0, [0, 2, 0]].add(v), [A34, V3], {K.OP_SCATTER}),
    "concatenate": (lambda x, y: td.concatenate([x, y * 2.0, C24], axis=1), [A23[:, :2], A23],
                    {K.OP_CONCAT}),
    "stack": (lambda x, v: td.stack([x[0], v, x[1] * v], axis=1), [A23, V3], {K.OP_CONCAT}),
    "where": (lambda x, y: td.where(MASK, x, y * 2.0), [A34, A34[0]], {K.OP_WHERE}),
    "maximum": (lambda x, y: td.maximum(x, y), [A34, A34[::-1] * 0.9],
                {K.OP_WHERE, K.OP_CMP}),
    "minimum": (lambda x, y: td.minimum(x, y) * x, [A34, A34[::-1] * 0.9], {K.OP_WHERE}),
    "clip": (lambda x: td.clip(x, 0.5, 1.0) * x, [A34], {K.OP_WHERE}),
    "prod": (lambda x: x.prod(axis=1), [A34], {K.OP_PROD}),
    "prod-with-zeros": (lambda x: x.prod(axis=1), [ZEROS], {K.OP_PROD}),
    "prod-axis0-with-zeros": (lambda x: x.prod(axis=0), [ZEROS], {K.OP_PROD}),
    "cumsum": (lambda x: x.cumsum(axis=0) * x.cumsum(axis=2), [A234], {K.OP_CUMSUM}),
    "cumprod": (lambda x: x.cumprod(axis=1), [A234], {K.OP_CUMPROD}),
    "cumprod-with-zeros": (lambda x: x.cumprod(axis=1) + x.cumprod(axis=0), [ZEROS],
                           {K.OP_CUMPROD}),
    "max-min": (lambda x: x.max(axis=1) + x.min(axis=0).sum(), [A34], {K.OP_EXTREME}),
    "max-all": (lambda x: x.max() * x, [A234], {K.OP_EXTREME}),
    "matmul": (lambda x, y: x @ y, [A23, A34], {K.OP_MATMUL}),
    "matmul-batched": (lambda x, y: td.exp(x @ y) * 0.5, [A234, R.uniform(-1, 1, (2, 4, 5))],
                       {K.OP_MATMUL}),
    "matmul-vector-constant": (lambda x: (x @ V4) * (C24 @ x.T).sum(), [A34], {K.OP_MATMUL}),
    "matmul-same-operand": (lambda x: x @ x, [A34[:, :3]], {K.OP_MATMUL}),
}


@pytest.mark.parametrize("name", list(STRUCTURAL))
def test_structural_tangent(name):
    fn, arrays, ops = STRUCTURAL[name]
    t, _ = check_tangent(fn, arrays)
    assert ops <= ops_of(t), f"{name} did not record {ops - ops_of(t)}"


def test_prod_tangent_is_exact_with_zeros_in_a_group():
    # d prod / dx_i = product of the others: [0 * ..., ...]: only the zero's slot counts
    x = np.array([[0.0, 2.0, 3.0], [0.0, 0.0, 5.0], [2.0, 3.0, 4.0]])
    t, xs, y = record(lambda x: x.prod(axis=1), [x])
    v = np.array([[1.0, 10.0, 100.0], [1.0, 10.0, 100.0], [1.0, 10.0, 100.0]])
    np.testing.assert_array_equal(tangent_of(t, xs, y, [v]), [6.0, 0.0, 12 + 80 + 600])


def test_max_and_min_ties_give_the_mean_tangent_of_the_tied_elements():
    x = np.array([[1.0, 3.0, 3.0, 2.0], [0.5, 0.5, 0.5, 2.0]])
    v = np.array([[10.0, 1.0, 2.0, 40.0], [3.0, 6.0, 9.0, 50.0]])
    t, xs, y = record(lambda x: td.concatenate([x.max(axis=1), x.min(axis=1)]), [x])
    got = tangent_of(t, xs, y, [v])
    np.testing.assert_array_equal(got, [1.5, 50.0, 10.0, 6.0])
    dot_test(t, xs, y, [v], got)  # consistent with the reverse rule's equal shares


def test_max_and_min_over_a_leading_axis_match_the_last_axis():
    """Reduced over axis 0 the groups are strided runs, which the rules visit row by row:
    the same tangents as over the last axis of the transpose, ties and NaN included."""
    x = np.array([[1.0, 3.0, 3.0, 2.0], [0.5, 0.5, 0.5, 2.0], [np.nan, 0.0, 1.0, 2.0]])
    v = np.array([[10.0, 1.0, 2.0, 40.0], [3.0, 6.0, 9.0, 50.0], [7.0, 8.0, 9.0, 11.0]])
    xt = np.ascontiguousarray(x.T)
    t, xs, y = record(lambda x: td.concatenate([x.max(axis=0), x.min(axis=0)]), [xt])
    t1, xs1, y1 = record(lambda x: td.concatenate([x.max(axis=1), x.min(axis=1)]), [x])
    got = tangent_of(t, xs, y, [np.ascontiguousarray(v.T)])
    np.testing.assert_array_equal(got, tangent_of(t1, xs1, y1, [v]))
    np.testing.assert_array_equal(got, [1.5, 50.0, 7.0, 10.0, 6.0, 7.0])  # NaN wins: its own


def test_maximum_tie_blends_and_where_selects():
    # maximum at a tie weighs both sides 1/2 (its reverse rule does the same)
    x, y0 = np.array([1.0, 2.0, 3.0]), np.array([1.0, 5.0, 0.0])
    t, xs, y = record(lambda a, b: td.maximum(a, b), [x, y0])
    vs = [np.array([2.0, 3.0, 4.0]), np.array([6.0, 7.0, 8.0])]
    got = tangent_of(t, xs, y, vs)
    np.testing.assert_array_equal(got, [4.0, 7.0, 4.0])
    dot_test(t, xs, y, vs, got)
    # a branch not taken with an infinite tangent stays out
    t, xs, y = record(lambda a: td.where(a > 0.0, td.sqrt(a), 0.0), [np.array([0.0, 4.0])])
    np.testing.assert_array_equal(tangent_of(t, xs, y, [np.ones(2)]), [0.0, 0.25])


def test_comparisons_and_constants_have_zero_tangent():
    t, xs, y = record(lambda x: (x > 0.7) * 1.0 + x * 0.0 + np.ones(3), [np.array([0.5, 1, 2])])
    tan, tan32 = arenas(t, np.nan)
    t._tangent_view(leaf_slot(xs[0]), tan, tan32, (3,))[...] = 1.0
    t.tangent(0, len(t), tan, tan32)
    np.testing.assert_array_equal(t._tangent_view(y._slot, tan, tan32, (3,)), 0.0)


# ---------------------------------------------------------------------------------------------
# arenas and casts
# ---------------------------------------------------------------------------------------------
def test_float32_arena_structural_ops():
    x = A34.astype(np.float32)

    def fn(x):
        y = td.concatenate([x.T[:, ::-1], x[[0, 2]].T], axis=1)
        return (td.maximum(y, 0.9).cumprod(axis=1).prod(axis=0) + y.max(axis=1).sum()
                + td.where(y > 1.0, y, 0.5).cumsum(axis=0).sum(axis=0))

    t, xs, y = record(fn, [x])
    assert y.dtype == np.float32 and set(t.arena_of[:len(t)].tolist()) == {K.KIND_F32}
    v = directions([x])
    got = tangent_of(t, xs, y, v)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, fd_tangent(fn, [x], v, 1e-4), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_casts_between_arenas(dtype):
    """Casts hand the tangent across arenas (the Python driver resumes on the other one)."""
    other = np.float32 if dtype == np.float64 else np.float64
    x = A34.astype(dtype)

    def fn(x):
        z = td.sin(x.astype(other)) * 2.0
        return (z.astype(dtype) * x).sum(axis=1) + z.sum(axis=0).astype(dtype)[:3]

    t, xs, y = record(fn, [x])
    assert K.OP_CAST in ops_of(t) and set(t.arena_of[:len(t)].tolist()) == {0, 1}
    v = directions([x])
    got = tangent_of(t, xs, y, v)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, fd_tangent(fn, [x], v, 1e-4), rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# the sweep's contract
# ---------------------------------------------------------------------------------------------
def test_tangents_are_overwritten_not_accumulated():
    fn = STRUCTURAL["cumprod-with-zeros"][0]
    t, xs, y = record(lambda x: fn(x) + td.exp(x).sum(), [ZEROS])
    v = directions([ZEROS])
    first = tangent_of(t, xs, y, v)
    again = tangent_of(t, xs, y, v, fill=np.nan)  # garbage everywhere but the leaves
    np.testing.assert_array_equal(first, again)


def test_a_sweep_from_the_middle_uses_the_tangents_below_start():
    t, xs, y = record(lambda x: td.tanh(x * 2.0).sum(axis=0) ** 2.0, [A34])
    v = directions([A34])
    tan, tan32 = arenas(t)
    t._tangent_view(leaf_slot(xs[0]), tan, tan32, A34.shape)[...] = v[0]
    t.tangent(0, len(t), tan, tan32)
    full = t._tangent_view(y._slot, tan, tan32, y.shape).copy()
    mid = len(t) // 2
    t._tangent_view(y._slot, tan, tan32, y.shape)[...] = np.nan
    t.tangent(mid, len(t), tan, tan32)
    np.testing.assert_array_equal(t._tangent_view(y._slot, tan, tan32, y.shape), full)


def test_an_unknown_opcode_is_an_internal_error():
    t, xs, y = record(lambda x: (x * 2.0).sum(), [A34])
    t.op[y._slot - 1] = K.NUM_OPCODES
    with pytest.raises(AssertionError, match="no rule"):
        t.tangent(0, len(t), *arenas(t))


def test_a_python_rule_without_tangent_names_the_primitive(monkeypatch):
    p = P.BY_OP[K.OP_ERFC]
    monkeypatch.setitem(P.BY_OP, K.OP_ERFC, dataclasses.replace(p, tangent=None))
    t, xs, y = record(lambda x: td.erfc(x), [A34])
    with pytest.raises(NotImplementedError, match="forward-mode derivative of Erfc"):
        t.tangent(0, len(t), *arenas(t))


def test_python_rules_of_the_table_get_shaped_views(monkeypatch):
    """A table ``tangent`` rule sees the output, inputs and their tangents shaped from the
    record's layout (here a solve: dX = A^-1 (dB - dA X))."""
    seen = []

    def solve_tangent(tout, out, inputs, tins, param):
        a, _ = inputs
        da, db = tins
        seen.append((tout.shape, out.shape, [x.shape for x in inputs], [x.shape for x in tins]))
        tout[...] = np.linalg.solve(a, db - da @ out)

    p = P.BY_OP[K.OP_LINALG_SOLVE]
    monkeypatch.setitem(P.BY_OP, K.OP_LINALG_SOLVE,
                        dataclasses.replace(p, tangent=solve_tangent))
    a0 = np.eye(3) * 2.0 + R.uniform(-0.3, 0.3, (3, 3))
    fn = lambda a, b: td.linalg.solve(a, b) * 2.0  # noqa: E731
    check_tangent(fn, [a0, A34], dot=True)
    assert seen and seen[0] == ((3, 4), (3, 4), [(3, 3), (3, 4)], [(3, 3), (3, 4)])


def test_the_tangent_sweep_is_not_compiled_by_import_or_backward():
    code = ("import numpy as np, tapediff as td\n"
            "from tapediff._src import _kernels as K\n"
            "x = td.tensor(np.ones(3), requires_grad=True)\n"
            "(td.sin(x) * x).sum().backward()\n"
            "assert not K.tangent_sweep.signatures, K.tangent_sweep.signatures\n"
            "assert not K.reverse_rows.signatures and not K.tangent_columns.signatures\n")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=here)


# ---------------------------------------------------------------------------------------------
# hypothesis: random chains of elementwise rules with broadcasting
# ---------------------------------------------------------------------------------------------
_UNARY = [p for p in ELEMENTWISE if p.arity == 1 and p.op not in _CONST_RULES]


@settings(max_examples=15)
@given(ops=st.lists(st.sampled_from(_UNARY), min_size=1, max_size=4),
       rows=st.integers(1, 3), cols=st.integers(1, 4), seed=st.integers(0, 2 ** 16),
       axis=st.sampled_from([None, 0, 1]))
def test_random_chains(ops, rows, cols, seed, axis):
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(0, 1, (rows, cols))
    b0 = rng.uniform(0.5, 1.5, cols)

    def fn(x, b):
        y = x
        for p in ops:  # map into the next rule's domain, through a sigmoid
            y = into_domain(td.sigmoid(y), p.domain[0])
            y = getattr(td, p.name)(y)
        return (y * b).sum(axis=axis) if axis is not None else y * b

    check_tangent(fn, [x0, b0], rtol=1e-4, atol=1e-6, seed=seed)


@settings(max_examples=15)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       seed=st.integers(0, 2 ** 16), data=st.data())
def test_random_reductions_against_the_reverse_sweep(shape, seed, data):
    ndim = len(shape)
    axis = data.draw(st.sampled_from([None, *range(ndim)]))
    kind = data.draw(st.sampled_from(["sum", "prod", "max", "min", "cumsum", "cumprod"]))
    rng = np.random.default_rng(seed)
    x0 = rng.integers(-2, 3, shape).astype(np.float64)  # ties and zeros, often
    if kind in ("cumsum", "cumprod") and axis is None:
        axis = 0
    fn = lambda x: getattr(x, kind)(axis=axis) * 1.5  # noqa: E731
    t, xs, y = record(fn, [x0])
    v = directions([x0], seed)
    got = tangent_of(t, xs, y, v)
    dot_test(t, xs, y, v, got)
    if kind in ("sum", "prod", "cumsum", "cumprod"):  # polynomials: smooth at ties and zeros
        # Richardson's extrapolation cancels the h^2 term of the central difference, which a
        # product of many entries up to 2 amplifies past the tolerance (a 16-element product
        # with two zeros: exact tangent 0, difference at h = 1e-4: 1.9e-5)
        fd = (4 * fd_tangent(fn, [x0], v, 5e-5) - fd_tangent(fn, [x0], v, 1e-4)) / 3
        np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Jacobians
# ---------------------------------------------------------------------------------------------
def fd_jacobian(fn, arrays, eps=1e-6):
    """d fn / d (all inputs flattened, side by side), by central differences."""
    sizes = [np.size(a) for a in arrays]
    cols = []
    for j in range(sum(sizes)):
        e = np.zeros(sum(sizes))
        e[j] = 1.0
        vs = np.split(e, np.cumsum(sizes)[:-1])
        cols.append(fd_tangent(fn, arrays, [v.reshape(np.shape(a)) for v, a in zip(vs, arrays)],
                               eps).ravel())
    return np.array(cols).T


def _jitted_fn(x, b):
    return td.concatenate([td.tanh(x * b).sum(axis=0), x.prod(axis=1), x.max(axis=0)])


def _python_fn(x, b):
    return td.exp((x @ x.T) * 0.3).sum(axis=1) + (x * b).sum(axis=1)


JACOBIANS = {"jitted": (_jitted_fn, True), "python": (_python_fn, False)}


@pytest.mark.parametrize("name", list(JACOBIANS))
def test_jacobian_rows_and_columns(name):
    fn, jitted = JACOBIANS[name]
    x0, b0 = A34, V4 * 0.5
    t, xs, y = record(fn, [x0, b0])
    slots = [leaf_slot(x) for x in xs]
    kind = int(t.arena_of[y._slot])
    assert t._jitted(0, y._slot + 1, kind, slots) == jitted
    ny, nx = y.size, x0.size + b0.size
    expected = fd_jacobian(fn, [x0, b0])
    rows = t.jacobian_rows(y._slot, np.eye(ny), slots)
    cols = t.jacobian_columns(0, len(t), np.eye(nx), slots, y._slot)
    assert rows.shape == (ny, nx) and cols.shape == (nx, ny)
    np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cols.T, rows, rtol=1e-12, atol=1e-12)
    # against a loop of single sweeps
    for r in range(ny):
        g = adjoints(t, y, xs, np.eye(ny)[r].reshape(y.shape))
        np.testing.assert_allclose(rows[r], np.concatenate([a.ravel() for a in g]), rtol=1e-13)
    for c in range(nx):
        e = np.eye(nx)[c]
        vs = [e[:x0.size].reshape(x0.shape), e[x0.size:]]
        np.testing.assert_allclose(cols[c], tangent_of(t, xs, y, vs).ravel(), rtol=1e-13)
    # any seeds: rows are seeds @ J, columns are J @ seeds
    s_rows, s_cols = R.standard_normal((2, ny)), R.standard_normal((3, nx))
    np.testing.assert_allclose(t.jacobian_rows(y._slot, s_rows, slots), s_rows @ rows,
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(t.jacobian_columns(0, len(t), s_cols, slots, y._slot),
                               s_cols @ cols, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_jacobian_of_one_input_and_of_an_input_not_reached(dtype):
    x0 = A34.astype(dtype)
    with td.tape() as t:
        x = td.tensor(x0, requires_grad=True)
        unused = td.tensor(V3.astype(dtype), requires_grad=True)
        u = unused * 2.0
        y = td.sin(x).sum(axis=1) * x[:, 0]
    assert u is not None
    slots = [leaf_slot(unused), leaf_slot(x)]
    assert t._jitted(0, y._slot + 1, int(t.arena_of[y._slot]), slots)
    rows = t.jacobian_rows(y._slot, np.eye(3), slots)
    cols = t.jacobian_columns(0, len(t), np.eye(15), slots, y._slot)
    assert rows.dtype == cols.dtype == dtype
    np.testing.assert_array_equal(rows[:, :3], 0.0)
    np.testing.assert_array_equal(cols[:3], 0.0)
    expected = fd_jacobian(lambda x: td.sin(x).sum(axis=1) * x[:, 0], [x0])
    tol = 1e-6 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(rows[:, 3:], expected, rtol=tol, atol=tol)
    np.testing.assert_allclose(cols[3:].T, rows[:, 3:], rtol=tol, atol=tol)


def test_jacobian_through_a_cast_takes_the_python_path():
    x0 = A34.astype(np.float32)
    fn = lambda x: (td.exp(x.astype(np.float64)) * 0.5).sum(axis=0)  # noqa: E731
    t, xs, y = record(fn, [x0])
    slots = [leaf_slot(xs[0])]
    assert not t._jitted(0, y._slot + 1, int(t.arena_of[y._slot]), slots)
    rows = t.jacobian_rows(y._slot, np.eye(4), slots)
    cols = t.jacobian_columns(0, len(t), np.eye(12), slots, y._slot)
    assert rows.dtype == np.float32 and cols.dtype == np.float64
    expected = np.zeros((4, 12))
    for j in range(4):
        expected[j, j::4] = 0.5 * np.exp(x0[:, j].astype(np.float64))
    np.testing.assert_allclose(rows, expected, rtol=1e-6)
    np.testing.assert_allclose(cols.T, expected, rtol=1e-6)


def test_jacobian_rows_of_a_released_graph_raise():
    t, xs, y = record(lambda x: (td.exp(x) * x).sum(axis=1), [A34])
    t.sweep(y._slot, np.ones(3), retain_graph=False)
    with pytest.raises(RuntimeError, match="retain_graph"):
        t.jacobian_rows(y._slot, np.eye(3), [leaf_slot(xs[0])])


def test_jacobian_columns_refuse_a_computed_input_inside_the_sweep():
    t, xs, y = record(lambda x: td.exp(x * 2.0).sum(axis=0), [A34])
    with pytest.raises(ValueError, match="overwritten"):
        t.jacobian_columns(0, len(t), np.eye(12), [y._slot - 2], y._slot)
    # from above it, an intermediate is an input like any other
    mid = y._slot - 1  # exp(x * 2)
    cols = t.jacobian_columns(mid + 1, len(t), np.eye(12), [mid], y._slot)
    np.testing.assert_array_equal(cols.T, np.tile(np.eye(4), 3))


def test_jacobian_of_a_slot_listed_twice():
    t, xs, y = record(lambda x: td.sin(x) * x.sum(), [V4])
    s = leaf_slot(xs[0])
    once = t.jacobian_rows(y._slot, np.eye(4), [s])
    np.testing.assert_array_equal(t.jacobian_rows(y._slot, np.eye(4), [s, s]),
                                  np.hstack([once, once]))
    cols = t.jacobian_columns(0, len(t), np.eye(8), [s, s], y._slot)
    np.testing.assert_allclose(cols, np.vstack([once.T, once.T]), rtol=1e-14)


def test_jacobian_columns_sweep_no_record_above_the_output(monkeypatch):
    """A matmul recorded after the output does not take the columns off the jitted path."""
    with td.tape() as t:
        x = td.tensor(A34, requires_grad=True)
        y = td.exp(x).sum(axis=0)
        z = x @ x.T
    assert z is not None

    def no_python_loop(*args):
        raise AssertionError("the Python loop ran")

    monkeypatch.setattr(type(t), "tangent", no_python_loop)
    cols = t.jacobian_columns(0, len(t), np.eye(12), [leaf_slot(x)], y._slot)
    np.testing.assert_allclose(cols.T, np.hstack([np.diag(np.exp(r)) for r in A34]),
                               rtol=1e-14)
