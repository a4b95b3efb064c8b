"""Tests of replay (``td.value_and_grad(fn, replay=True)``), the functional ``value_and_grad`` /
``grad`` and ``Tape.gradient``.

Replay is checked against eager tapediff (``td.value_and_grad(fn)`` without replay, which
records ``fn`` afresh on every call), against NumPy references and closed forms:

* every row of the op table in ``test_ops.py`` that has a gradient, in float64 and float32,
  recorded at one input and replayed at another of the same shape;
* random programs from ``tapediff.testing.strategies.programs``;
* every kind of guard listed in ``tapediff._src._replay``: the same branch replays, a switched
  branch records again (or raises ``GuardError`` naming the guard and the line that read
  the value);
* operations recomputed by their kernels (max/min, maximum/minimum, clip, abs, relu, where)
  replay across changes of the active branch, ties included;
* what records again: shapes, dtypes, static arguments; what is refreshed: dynamic
  arguments; what is a constant of the recording: closures;
* argnums, output types, errors, ``Tape.gradient``, threads, SciPy.

Regression tests pin what earlier versions got wrong: output types of a replay follow the
current call; static arguments changed in place record again; equal static int tensors
replay; ``Tape.gradient`` finds a leaf used on another tape or updated in place since;
displaying a comparison does not guard it; guards tell -0.0 from +0.0; sums over zero
elements replay.

Tests that replay (run the jitted forward sweep) run in a forked child
(``helpers.crash_guard``), as in ``test_ops.py``: a kernel reading out of bounds then fails
one test instead of ending the run.
"""
from __future__ import annotations

import contextlib
import gc
import io
import linecache
import math
import os
import re
import threading
import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tapediff as td
from tapediff.testing.strategies import programs

from helpers import crash_guard, note, numerical_grad, projection
from test_ops import GRAD, Op, _reference, draw_inputs

HERE = os.path.basename(__file__)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _tolerances(dtype: np.dtype) -> dict:
    """Replay against eager: the same reverse kernels, but values recomputed by the forward
    sweep instead of NumPy (another summation order, another libm)."""
    if np.dtype(dtype) == np.float32:
        return {"rtol": 2e-4, "atol": 2e-4}
    return {"rtol": 1e-9, "atol": 1e-10}


def assert_same_result(actual, expected, tol: dict | None = None) -> None:
    """``actual`` and ``expected`` are (value, gradient) pairs of value_and_grad (the gradient
    a tuple for a tuple argnums), or bare gradients: same types, shapes, dtypes, values."""
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_same_result(a, e, tol)
        return
    assert type(actual) is type(expected), f"{type(actual)} != {type(expected)}"
    if isinstance(expected, td.Tensor):
        assert not actual.requires_grad and actual.grad_fn is None
        actual, expected = actual.numpy(), expected.numpy()
    a, e = np.asarray(actual), np.asarray(expected)
    assert a.shape == e.shape, f"shape {a.shape} != {e.shape}"
    assert a.dtype == e.dtype, f"dtype {a.dtype} != {e.dtype}"
    np.testing.assert_allclose(a, e, **(tol or _tolerances(e.dtype)))


def eager(fn: Callable, *args, argnums=0, **kwargs):
    """value_and_grad without replay: ``fn`` recorded afresh at these arguments."""
    return td.value_and_grad(fn, argnums, allow_unused=True)(*args, **kwargs)


def guard_line(message: str) -> str:
    """The source line a guard message (``... at FILE:LINE ...``) points to, which must be
    in this file."""
    m = re.search(r" at (\S+):(\d+)", message)
    assert m is not None, message
    path, line = m.group(1), int(m.group(2))
    assert os.path.basename(path) == HERE, message
    assert os.path.samefile(path, __file__), message
    return linecache.getline(__file__, line)


# ---------------------------------------------------------------------------------------------
# 1. every row of the op table: replay equals eager
# ---------------------------------------------------------------------------------------------
# examples per row and dtype (the ci profile does not change explicit settings)
TABLE_EXAMPLES = 3


def _second_inputs(data, row: Op, first: list[np.ndarray], dtype) -> list[np.ndarray]:
    """New values for ``row``'s operands, of the shapes of ``first``, from the row's domain."""
    return [data.draw(hnp.arrays(np.float64, a.shape, elements=dom, unique=row.unique),
                      label=f"second operand {i}").astype(dtype)
            for i, (a, dom) in enumerate(zip(first, row.domain))]


def _table_case(row: Op, dtype) -> None:
    @settings(max_examples=TABLE_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[*settings.default.suppress_health_check,
                                     HealthCheck.filter_too_much, HealthCheck.too_slow])
    @given(data=st.data())
    def check(data):
        first = draw_inputs(data, row, (dtype,) * row.arity)
        second = _second_inputs(data, row, first, dtype)
        diff = [i for i, k in enumerate(row.args) if k == "t"]
        assume(any(not np.array_equal(first[i], second[i]) for i in diff))
        out = _reference(row, first)
        w = projection(out.shape).astype(out.dtype)
        consts = {i: a for i, a in enumerate(first) if row.args[i] == "a"}  # closed over

        def fn(*ts):
            it = iter(ts)
            operands = [consts[i] if i in consts else next(it) for i in range(row.arity)]
            return (row.fn(*operands) * w).sum()

        argnums = tuple(range(len(diff)))
        f = td.value_and_grad(fn, argnums, replay=True, allow_unused=True)
        note(f"{row.name}: recording at {first!r}")
        rec = f(*[first[i] for i in diff])
        assert_same_result(rec, eager(fn, *[first[i] for i in diff], argnums=argnums))
        assert (f.recordings, f.replays) == (1, 0)
        x2 = [second[i] for i in diff]
        note(f"{row.name}: replay at {second!r}")
        got = f(*x2)
        # no row with a gradient reads a value in Python (argmax, sign, sort have none):
        # every one replays
        assert (f.recordings, f.replays) == (1, 1), f"re-recorded: {f.last_guard}"
        assert_same_result(got, eager(fn, *x2, argnums=argnums))
        # and the value against NumPy's reference at the second input
        expected = (_reference(row, [consts.get(i, a) for i, a in enumerate(second)]) * w).sum()
        tol = _tolerances(expected.dtype)
        if row.inexact:
            tol["atol"] = 1e-3 if expected.dtype == np.float32 else 1e-9
        np.testing.assert_allclose(got[0], expected, **tol)

    check()


# Forking costs ~0.1 s under pytest: the rows run in chunks, one forked child per chunk, and
# a chunk reports every row that failed (a crash names the row and input being replayed).
CHUNK = 24
CHUNKS = [GRAD[i:i + CHUNK] for i in range(0, len(GRAD), CHUNK)]


@pytest.mark.parametrize("rows", CHUNKS, ids=[f"{c[0].name}..{c[-1].name}" for c in CHUNKS])
@crash_guard
def test_replay_matches_eager_on_the_op_table(rows):
    """Each row recorded at one input and replayed at another of the same shape: the same
    value and gradient as eager, in float64 and (rows that are not aliases) float32."""
    failures = []
    for row in rows:
        for dtype in (np.float64,) if row.alias else (np.float64, np.float32):
            try:
                _table_case(row, dtype)
            except Exception as e:  # noqa: BLE001 - reported below, with the row
                failures.append(f"{row.name} ({np.dtype(dtype).name}): {type(e).__name__}: {e}")
    assert not failures, "\n\n".join(failures)


# ---------------------------------------------------------------------------------------------
# 2. generated programs: replay equals eager and NumPy
# ---------------------------------------------------------------------------------------------
@crash_guard
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prog=programs(max_ops=6), data=st.data())
def test_replay_matches_eager_on_generated_programs(prog, data):
    def inputs(label):
        return [t.numpy() for t in data.draw(prog.input_tensors(), label=label)]

    first, second = inputs("first inputs"), inputs("second inputs")
    assume(any(not np.array_equal(a, b) for a, b in zip(first, second)))
    argnums = tuple(range(prog.n_inputs))
    f = td.value_and_grad(prog, argnums, replay=True, allow_unused=True)
    assert_same_result(f(*first), eager(prog, *first, argnums=argnums))
    note(f"replay of\n{prog}\nat {second!r}")
    value, grads = f(*second)
    # programs branch on nothing: relu and abs are recomputed by their kernels
    assert (f.recordings, f.replays) == (1, 1), f.last_guard
    assert_same_result((value, grads), eager(prog, *second, argnums=argnums))
    np.testing.assert_allclose(value, prog.reference(*second), rtol=1e-9, atol=1e-12)
    # and once more at the first inputs: the recording is not consumed by a replay
    assert_same_result(f(*first), eager(prog, *first, argnums=argnums))
    assert (f.recordings, f.replays) == (1, 2)


# ---------------------------------------------------------------------------------------------
# 3. guards: the same branch replays, another branch records again or raises
# ---------------------------------------------------------------------------------------------
W4 = np.array([1.0, -2.0, 3.0, 0.5])


def g_if(x):
    if x.sum() > 0:  # guard: the comparison `>`
        return (x * x).sum()
    return (2.0 * x).sum()


def g_float(x):
    s = float(x[0])  # guard: float()
    return (x * s).sum() + (x * x).sum()


def g_item(x):
    m = x.max().item()  # guard: .item()
    return ((x - m) ** 2).sum()


def g_int(x):
    n = int(x.sum())  # guard: int() (on the value read, not its integer part)
    return (x ** 2).sum() * n


def g_bool(x):
    if bool(td.relu(x).sum()):  # guard: bool()
        return (x * W4).sum()
    return (x * x).sum()


def g_bool_of_comparison(x):
    if bool(x[0] < x[1]):  # guard: the comparison `<`
        return (x * W4).sum()
    return (x * x).sum()


def g_mask(x):
    return (x[x > 0] ** 2).sum() + x.sum()  # guard: the comparison `>` (a mask)


def g_argmax(x):
    i = td.argmax(x)  # guard: argmax()
    return x[i] * (x * x).sum()


def g_argmin(x):
    i = int(np.argmin(x))  # guard: argmin()
    return x[i] * 3.0 + (x * W4).sum()


def g_sort(x):
    return (np.sort(x) * W4).sum()  # guard: np.sort()


def g_argsort(x):
    order = np.argsort(x[:2])  # guard: numpy.argsort() (on the values of x[:2])
    return (x[order] * W4[:2]).sum() + (x * x).sum()


def g_sign(x):
    return (td.sign(x) * x * W4).sum()  # guard: sign()


def g_floor(x):
    k = np.floor(x[0])  # guard: numpy.floor() (on the value of x[0])
    return (x * k).sum() + (x * x).sum()


def g_isnan(x):
    if np.isnan(x[0]):  # guard: numpy.isnan()
        return (x[1:] ** 2).sum()
    return (x * W4).sum()


def g_numpy(x):
    a = x[:2].numpy()  # guard: .numpy()
    return (x * a.sum()).sum() + (x ** 3).sum()


def g_tolist(x):
    a = x[2:].tolist()  # guard: .tolist()
    return (x * sum(a)).sum() + (x ** 3).sum()


def g_const_branches(x):
    if x[0] > x[1]:  # guard: the comparison `>`; neither result depends on x
        return td.tensor(1.0)
    return 2.0


@dataclass(frozen=True)
class GuardCase:
    """``fn`` recorded at ``rec``; ``same`` takes the same path (replays), ``switch`` another
    (the guard ``what``, on a line of ``fn`` containing ``marker``, stops the replay)."""

    name: str
    fn: Callable
    rec: list
    same: list
    switch: list
    what: str
    marker: str


GUARDS = [
    GuardCase("if comparison", g_if, [1.0, 2.0, -0.5, 0.25], [2.0, -1.0, 0.5, 3.0],
              [-1.0, -2.0, 0.5, 0.25], "the comparison `>`", "if x.sum() > 0"),
    GuardCase("float()", g_float, [1.5, 2.0, -0.5, 0.25], [1.5, -1.0, 0.5, 3.0],
              [-1.0, 2.0, -0.5, 0.25], "float()", "float(x[0])"),
    GuardCase(".item()", g_item, [1.0, 3.0, -0.5, 0.25], [2.0, 3.0, 0.5, -1.0],
              [1.0, 3.5, -0.5, 0.25], ".item()", ".item()"),
    GuardCase("int()", g_int, [1.0, 2.0, 3.0, 0.5], [3.0, 2.0, 1.0, 0.5],  # same sum exactly
              [1.0, 2.0, 3.0, 0.75], "int()", "int(x.sum())"),
    GuardCase("bool()", g_bool, [-1.0, -2.0, -0.5, -0.25], [-2.0, -0.5, -3.0, -1.0],
              [-1.0, 2.0, -0.5, -0.25], "bool()", "bool(td.relu(x).sum())"),
    GuardCase("bool(comparison)", g_bool_of_comparison, [1.0, 2.0, 3.0, 0.5],
              [-3.0, 2.0, 1.0, 0.5], [2.0, 1.0, 3.0, 0.5], "the comparison `<`",
              "bool(x[0] < x[1])"),
    GuardCase("mask", g_mask, [1.0, -2.0, 3.0, -0.5], [2.0, -1.0, 0.5, -3.0],
              [-1.0, -2.0, 3.0, 0.5], "the comparison `>`", "x[x > 0]"),
    GuardCase("argmax index", g_argmax, [1.0, 3.0, 2.0, 0.5], [-1.0, 2.5, 2.0, 1.5],
              [1.0, 3.0, 4.0, 0.5], "argmax()", "td.argmax(x)"),
    GuardCase("argmin index", g_argmin, [1.0, 3.0, 2.0, 0.5], [4.0, 3.0, 2.0, -0.5],
              [-1.0, 3.0, 2.0, 0.5], "argmin()", "np.argmin(x)"),
    GuardCase("np.sort", g_sort, [3.0, 1.0, 2.0, 0.5], [4.0, 0.0, 1.0, -1.0],
              [1.0, 3.0, 2.0, 0.5], "np.sort()", "np.sort(x)"),
    GuardCase("np.argsort", g_argsort, [3.0, 1.0, 2.0, 0.5], [3.0, 1.0, -2.0, 4.0],
              [1.0, 3.0, 2.0, 0.5], "numpy.argsort()", "np.argsort(x[:2])"),
    GuardCase("td.sign", g_sign, [1.0, -2.0, 0.0, 0.5], [3.0, -0.5, 0.0, 2.0],
              [1.0, 2.0, 0.0, 0.5], "sign()", "td.sign(x)"),
    GuardCase("np.floor", g_floor, [1.5, -2.0, 3.0, 0.5], [1.5, 2.0, -3.0, 1.0],
              [1.75, -2.0, 3.0, 0.5], "numpy.floor()", "np.floor(x[0])"),
    GuardCase("np.isnan", g_isnan, [np.nan, -2.0, 3.0, 0.5], [np.nan, 2.0, -1.0, 1.0],
              [1.0, -2.0, 3.0, 0.5], "numpy.isnan()", "np.isnan(x[0])"),
    GuardCase(".numpy()", g_numpy, [1.0, -2.0, 3.0, 0.5], [1.0, -2.0, -1.0, 2.0],
              [1.0, 2.0, 3.0, 0.5], ".numpy()", "x[:2].numpy()"),
    GuardCase(".tolist()", g_tolist, [1.0, -2.0, 3.0, 0.5], [2.0, 1.0, 3.0, 0.5],
              [1.0, -2.0, 3.0, 1.5], ".tolist()", "x[2:].tolist()"),
    GuardCase("constant results", g_const_branches, [2.0, 1.0, 0.0, 0.0],
              [3.0, -1.0, 5.0, 1.0], [1.0, 2.0, 0.0, 0.0], "the comparison `>`",
              "if x[0] > x[1]"),
]


def _arr(v: list) -> np.ndarray:
    return np.array(v, dtype=np.float64)


@pytest.mark.parametrize("case", GUARDS, ids=[c.name for c in GUARDS])
@crash_guard
def test_guard_holds_on_the_same_branch(case):
    f = td.value_and_grad(case.fn, replay=True, allow_unused=True)
    assert_same_result(f(_arr(case.rec)), eager(case.fn, _arr(case.rec)))
    got = f(_arr(case.same))
    assert (f.recordings, f.replays) == (1, 1), f.last_guard
    assert f.last_guard is None
    assert_same_result(got, eager(case.fn, _arr(case.same)))
    # raising mode replays the same branch without raising
    f = td.value_and_grad(case.fn, replay=True, on_guard="raise", allow_unused=True)
    f(_arr(case.rec))
    assert_same_result(f(_arr(case.same)), eager(case.fn, _arr(case.same)))
    assert (f.recordings, f.replays) == (1, 1)


@pytest.mark.parametrize("case", GUARDS, ids=[c.name for c in GUARDS])
@crash_guard
def test_guard_records_again_on_another_branch(case):
    f = td.value_and_grad(case.fn, replay=True, allow_unused=True)
    f(_arr(case.rec))
    got = f(_arr(case.switch))
    assert (f.recordings, f.replays) == (2, 0)
    assert_same_result(got, eager(case.fn, _arr(case.switch)))
    assert f.last_guard.startswith(case.what + " at "), f.last_guard
    assert case.marker in guard_line(f.last_guard)
    # the new recording is of the new branch: it replays there
    got = f(_arr(case.switch))
    assert (f.recordings, f.replays) == (2, 1)
    assert_same_result(got, eager(case.fn, _arr(case.switch)))
    # and back on the first branch: its recording is still kept, and replays
    got = f(_arr(case.rec))
    assert (f.recordings, f.replays) == (2, 2)
    assert_same_result(got, eager(case.fn, _arr(case.rec)))
    # keeping one recording only, every switch records again
    f = td.value_and_grad(case.fn, replay=True, max_recordings=1, allow_unused=True)
    for x, counts in ((case.rec, (1, 0)), (case.switch, (2, 0)), (case.rec, (3, 0))):
        assert_same_result(f(_arr(x)), eager(case.fn, _arr(x)))
        assert (f.recordings, f.replays) == counts


@pytest.mark.parametrize("case", GUARDS, ids=[c.name for c in GUARDS])
@crash_guard
def test_guard_raises_on_another_branch(case):
    f = td.value_and_grad(case.fn, replay=True, on_guard="raise", allow_unused=True)
    f(_arr(case.rec))
    with pytest.raises(td.GuardError) as info:
        f(_arr(case.switch))
    assert isinstance(info.value, RuntimeError)
    message = str(info.value)
    assert case.what in message and case.fn.__name__ in message, message
    assert HERE in message
    assert case.marker in guard_line(message)
    assert (f.recordings, f.replays) == (1, 0)
    assert f.last_guard is not None and f.last_guard in message
    # the recording survives the error: the first branch still replays
    assert_same_result(f(_arr(case.same)), eager(case.fn, _arr(case.same)))
    assert (f.recordings, f.replays) == (1, 1)


@crash_guard
def test_guards_in_float32():
    """Every guard case on float32 inputs (a float32 tape, float32 guard values)."""
    for case in GUARDS:
        def a(v):
            return np.array(v, np.float32)

        f = td.value_and_grad(case.fn, replay=True, allow_unused=True)
        f(a(case.rec))
        got = f(a(case.same))
        assert (f.recordings, f.replays) == (1, 1), (case.name, f.last_guard)
        assert got[1].dtype == np.float32
        assert_same_result(got, eager(case.fn, a(case.same)))
        got = f(a(case.switch))
        assert (f.recordings, f.replays) == (2, 1), case.name
        assert f.last_guard.startswith(case.what + " at "), f.last_guard
        assert_same_result(got, eager(case.fn, a(case.switch)))


@crash_guard
def test_guard_closed_forms():
    """A few guarded functions against their closed forms (not only against eager)."""
    f = td.value_and_grad(g_if, replay=True)
    x = _arr([-1.0, -2.0, 0.5, 0.25])
    f(_arr([1.0, 2.0, 3.0, 4.0]))
    value, g = f(x)
    assert value == 2.0 * x.sum() and np.array_equal(g, np.full(4, 2.0))
    f = td.value_and_grad(g_sort, replay=True)
    f(_arr([3.0, 1.0, 2.0, 0.5]))
    x = _arr([4.0, 0.0, 1.0, -1.0])  # the same order: replayed
    value, g = f(x)
    order = np.argsort(x)
    np.testing.assert_allclose(value, (np.sort(x) * W4).sum(), rtol=1e-15)
    expected = np.empty(4)
    expected[order] = W4
    np.testing.assert_array_equal(g, expected)
    assert f.replays == 1


@crash_guard
def test_where_condition_is_recomputed_not_guarded():
    """``td.where(x > 0, a, b)``: the condition is re-evaluated at each replay; no guard,
    not even with on_guard="raise"."""
    def fn(x, y):
        return (td.where(x > 0, x * y, -2.0 * x) + np.where(y < x, y, 0.0)).sum()

    f = td.value_and_grad(fn, argnums=(0, 1), replay=True, on_guard="raise")
    rng = np.random.default_rng(1)
    f(rng.standard_normal(6), rng.standard_normal(6))
    for k in range(20):
        x, y = rng.standard_normal(6), rng.standard_normal(6)
        x[k % 6] = 0.0  # the boundary: x > 0 is False there
        value, (gx, gy) = f(x, y)
        assert_same_result((value, (gx, gy)), eager(fn, x, y, argnums=(0, 1)))
        pos = x > 0
        np.testing.assert_allclose(value, np.where(pos, x * y, -2 * x).sum()
                                   + np.where(y < x, y, 0.0).sum(), rtol=1e-12)
        np.testing.assert_array_equal(gx, np.where(pos, y, -2.0))
        np.testing.assert_array_equal(gy, np.where(pos, x, 0.0) + (y < x))
    assert (f.recordings, f.replays) == (1, 20)
    assert f.last_guard is None


@crash_guard
def test_dynamic_argument_read_by_python_is_guarded():
    """A non-differentiated float argument is a leaf of the recording: reading its value in
    Python guards it like any other value."""
    def fn(x, s):
        return (x * float(s)).sum()  # guard: float() on the argument

    f = td.value_and_grad(fn, replay=True)
    x = _arr([1.0, 2.0])
    f(x, np.array(2.0))
    assert_same_result(f(x * 3, np.array(2.0)), (np.float64(18.0), _arr([2.0, 2.0])))
    assert (f.recordings, f.replays) == (1, 1)
    assert_same_result(f(x, np.array(5.0)), (np.float64(15.0), _arr([5.0, 5.0])))
    assert (f.recordings, f.replays) == (2, 1)
    assert "float() at" in f.last_guard and "float(s)" in guard_line(f.last_guard)


@crash_guard
def test_displaying_values_is_not_a_guard():
    """Formatting or printing a float tensor while recording reads no guard (display does not
    change the computation); it prints when recording only."""
    def fn(x):
        loss = (x * x).sum()
        print(f"{loss:.3f}", loss, repr(x), str(x), "{:.2e}".format(loss))
        return loss

    f = td.value_and_grad(fn, replay=True, on_guard="raise")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for k in range(3):
            x = np.array([1.0, -2.0]) * (k + 1)
            assert_same_result(f(x), (np.float64(5.0 * (k + 1) ** 2), 2 * x))
    assert (f.recordings, f.replays) == (1, 2)
    assert out.getvalue().startswith("5.000 tensor(5.")
    assert out.getvalue().count("\n") == 1  # once, when recording


@crash_guard
def test_displaying_a_comparison_is_not_a_guard():
    def fn(x):
        positive = x > 0
        print(positive)
        return td.where(positive, x * x, -x).sum()

    f = td.value_and_grad(fn, replay=True)
    with contextlib.redirect_stdout(io.StringIO()):
        for x in ([1.0, -2.0], [-1.0, 2.0], [3.0, 1.0]):
            assert_same_result(f(_arr(x)), eager(fn, _arr(x)))
    assert (f.recordings, f.replays) == (1, 2), f.last_guard


@crash_guard
def test_guard_distinguishes_signed_zeros():
    def fn(x):
        k = math.copysign(1.0, float(x[0]))  # guard: float()
        return (x * k).sum()

    f = td.value_and_grad(fn, replay=True)
    f(_arr([0.0, 1.0]))
    x = _arr([-0.0, 1.0])
    assert_same_result(f(x), eager(fn, x))  # eager: (-1.0, [-1, -1])


# ---------------------------------------------------------------------------------------------
# 4. operations recomputed by their kernels: the active branch moves, no guard
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Branchy:
    """``fn`` of the arrays in each input tuple; the first tuple records, the others replay
    (the arg-extreme or the active branch moves; some are ties).  ``expected(*arrays)`` is the
    closed-form (value, gradients)."""

    name: str
    fn: Callable
    inputs: list
    expected: Callable | None = None
    argnums: tuple = (0,)


def _max_closed(x):
    m = x == x.max()
    return x.max(), m / m.sum()


def _abs_closed(x):
    return np.abs(x).sum(), np.sign(x)


def _relu_closed(x):
    return np.maximum(x, 0).sum(), (x > 0).astype(float)


def _clip_closed(x):  # the bounds included, as PyTorch's clamp
    return np.clip(x, -1, 1).sum(), ((x >= -1) & (x <= 1)).astype(float)


def _maximum_closed(x, y):
    gx = np.where(x > y, 1.0, np.where(x == y, 0.5, 0.0))
    return np.maximum(x, y).sum(), gx, 1.0 - gx


BRANCHY = [
    Branchy("x.max()", lambda x: x.max(),
            [([1.0, 3.0, 2.0],), ([5.0, 1.0, 2.0],), ([3.0, 3.0, 1.0],), ([2.0, 2.0, 2.0],)],
            lambda x: (x.max(), _max_closed(x)[1])),
    Branchy("x.min()", lambda x: x.min(),
            [([1.0, 3.0, 2.0],), ([5.0, 1.0, 2.0],), ([0.5, 4.0, 0.5],)],
            lambda x: (x.min(), (x == x.min()) / (x == x.min()).sum())),
    Branchy("np.max(x,axis=0)", lambda x: (np.max(x, axis=0) * [1.0, 2.0, 3.0]).sum(),
            [([[1.0, 5.0, 2.0], [3.0, 4.0, 0.0]],), ([[4.0, 1.0, 2.0], [3.0, 4.0, 2.0]],),
             ([[3.0, 4.0, 2.0], [3.0, 1.0, 2.0]],)]),
    Branchy("td.min(x,axis=1,keepdims)",
            lambda x: (td.min(x, axis=1, keepdims=True) * [[1.0], [-2.0]]).sum(),
            [([[1.0, 5.0, 2.0], [3.0, 4.0, 0.0]],), ([[4.0, 1.0, 1.0], [-3.0, 4.0, 2.0]],)]),
    Branchy("td.maximum", lambda x, y: td.maximum(x, y).sum(),
            [([1.0, 2.0, 3.0], [0.0, 0.0, 0.0]), ([-1.0, 2.0, 3.0], [0.0, 5.0, 3.0]),
             ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])], _maximum_closed, (0, 1)),
    Branchy("np.minimum", lambda x, y: (np.minimum(x, y) * [1.0, 2.0, 3.0]).sum(),
            [([1.0, 2.0, 3.0], [0.0, 0.0, 0.0]), ([-1.0, 2.0, 3.0], [0.0, 5.0, 3.0])],
            argnums=(0, 1)),
    Branchy("np.maximum(x,0.)", lambda x: (np.maximum(x, 0.0) * [1.0, 2.0, 3.0]).sum(),
            [([1.0, 2.0, 3.0],), ([-1.0, 0.0, 3.0],)]),
    Branchy("td.clip", lambda x: td.clip(x, -1.0, 1.0).sum(),
            [([0.5, 0.2, -0.1, 0.0],), ([2.0, -3.0, 0.5, 1.0],), ([-1.0, 1.0, 1.5, -0.5],)],
            _clip_closed),
    Branchy("x.clip(tensor bounds)", lambda x, lo: (x.clip(lo, lo + 1.0) * [1.0, 2.0]).sum(),
            [([0.5, 0.2], [0.0, 0.0]), ([2.0, -3.0], [0.0, 0.0]), ([0.0, 1.0], [0.0, 0.0])],
            argnums=(0, 1)),
    Branchy("td.abs", lambda x: td.abs(x).sum(),
            [([0.5, 0.2, 0.1],), ([-0.5, 0.0, 2.0],), ([-1.0, -1.0, -1.0],)], _abs_closed),
    Branchy("abs(x)", lambda x: (abs(x) * [1.0, 2.0, 3.0]).sum(),
            [([0.5, 0.2, 0.1],), ([-0.5, 0.0, 2.0],)]),
    Branchy("td.relu", lambda x: td.relu(x).sum(),
            [([0.5, -0.2, 0.1],), ([-0.5, 0.0, 2.0],), ([3.0, 2.0, 1.0],)], _relu_closed),
    Branchy("x.relu() in a chain", lambda x: (td.relu(x - 1.0) * td.relu(1.0 - x)).sum(),
            [([0.5, 1.5, 1.0],), ([1.5, 0.5, 0.0],)]),
    Branchy("norm(x,inf)", lambda x: td.norm(x, np.inf),
            [([0.5, -2.0, 1.0],), ([3.0, -2.0, 1.0],), ([3.0, -3.0, 1.0],)]),
]


@pytest.mark.parametrize("case", BRANCHY, ids=[c.name for c in BRANCHY])
@crash_guard
def test_branches_move_without_recording_again(case):
    f = td.value_and_grad(case.fn, case.argnums, replay=True, on_guard="raise")
    for k, arrays in enumerate(case.inputs):
        xs = [_arr(a) for a in arrays]
        got = f(*xs)
        assert (f.recordings, f.replays) == (1, k)
        want = eager(case.fn, *xs, argnums=case.argnums)
        assert_same_result(got, want)
        if case.expected is not None:
            value, *grads = case.expected(*xs)
            np.testing.assert_allclose(got[0], value, rtol=1e-15)
            for g, e in zip(got[1], grads):
                np.testing.assert_allclose(g, e, rtol=1e-15)
    assert f.last_guard is None


@pytest.mark.parametrize("fn,dtype", [
    (lambda x: td.logsumexp(x), np.float64),
    (lambda x: (td.softmax(x) * np.arange(4.0)).sum(), np.float64),
    (lambda x: (td.log_softmax(x, axis=-1) * np.arange(4.0)).sum(), np.float64),
    (lambda x: td.logsumexp(x), np.float32),
    (lambda x: (td.softmax(x, axis=0) * np.arange(4.0, dtype=np.float32)).sum(), np.float32),
], ids=["logsumexp", "softmax", "log_softmax", "logsumexp float32", "softmax float32"])
@crash_guard
def test_overflow_shifts_follow_the_inputs(fn, dtype):
    """The max that logsumexp/softmax subtract is recomputed at replay: replayed far from
    the recorded inputs they neither overflow nor lose precision."""
    f = td.value_and_grad(fn, replay=True, on_guard="raise")
    f(np.array([0.1, 0.2, 0.3, 0.4], dtype))
    for k, x in enumerate([[1000.0, 999.0, 998.0, 0.0], [-1000.0, -999.0, -998.0, -2000.0],
                           [0.0, 0.0, 1.0, 0.0], [700.0, 710.0, -710.0, 705.0]]):
        x = np.array(x, dtype)
        value, g = f(x)
        assert value.dtype == dtype and g.dtype == dtype
        assert np.isfinite(value) and np.isfinite(g).all()
        assert_same_result((value, g), eager(fn, x))
        assert (f.recordings, f.replays) == (1, k + 1)
    x = _arr([1000.0, 999.0, 998.0, 0.0])
    lse = td.value_and_grad(lambda x: td.logsumexp(x), replay=True)
    lse(x - 1000.0)
    np.testing.assert_allclose(lse(x)[0], 1000.0 + np.log1p(np.exp(-1.0) + np.exp(-2.0)),
                               rtol=1e-15)


@crash_guard
def test_norm_ord_0_is_guarded():
    """norm(x, 0) counts nonzeros from the values: a guard on them (documented)."""
    fn = lambda x: td.norm(x, 0) * (x * x).sum()  # noqa: E731
    f = td.value_and_grad(fn, replay=True)
    f(_arr([1.0, 0.0, 2.0]))
    x = _arr([0.0, 3.0, 0.0])
    assert_same_result(f(x), (np.float64(9.0), _arr([0.0, 6.0, 0.0])))
    assert f.recordings == 2 and f.last_guard is not None


# ---------------------------------------------------------------------------------------------
# 5. what records again and what is refreshed
# ---------------------------------------------------------------------------------------------
@crash_guard
def test_shape_change_records_again():
    fn = lambda x: (x * x * x).sum()  # noqa: E731
    f = td.value_and_grad(fn, replay=True)
    rng = np.random.default_rng(2)
    # four recordings are kept (one per shape here): (3,) replays after three others
    for shape, counts in [((3,), (1, 0)), ((3,), (1, 1)), ((4,), (2, 1)), ((4,), (2, 2)),
                          ((2, 2), (3, 2)), ((), (4, 2)), ((), (4, 3)), ((3,), (4, 4)),
                          ((5,), (5, 4)), ((4,), (6, 4)), ((3,), (6, 5))]:
        x = rng.standard_normal(shape)
        got = f(x)
        assert (f.recordings, f.replays) == counts, shape
        assert_same_result(got, (np.float64((x ** 3).sum()), 3 * x ** 2 if shape else
                                 np.float64(3 * x ** 2)), {"rtol": 1e-13, "atol": 0})


@crash_guard
def test_dtype_change_records_again():
    fn = lambda x: (td.exp(x) * x).sum()  # noqa: E731
    f = td.value_and_grad(fn, replay=True)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(5)
    seq = [(np.float64, (1, 0)), (np.float64, (1, 1)), (np.float32, (2, 1)),
           (np.float32, (2, 2)), (np.float64, (2, 3))]
    for dtype, counts in seq:
        x = rng.standard_normal(5).astype(dtype)
        value, g = f(x)
        assert (f.recordings, f.replays) == counts
        assert value.dtype == dtype and g.dtype == dtype
        assert_same_result((value, g), eager(fn, x))
        tol = _tolerances(dtype)
        x64 = x.astype(np.float64)
        np.testing.assert_allclose(value, (np.exp(x64) * x64).sum(), **tol)
        np.testing.assert_allclose(g, np.exp(x64) * (1 + x64), **tol)


@crash_guard
def test_static_arguments():
    """Python numbers, int arrays and strings are static: compared by value; a change
    records again, an equal value (even another object) replays."""
    def fn(x, c, idx, mode, *, power=2):
        y = x[idx] * c
        y = y ** power
        return y.sum() if mode == "sum" else y.mean()

    def closed(x, c, idx, mode, power=2):
        n = 1 if mode == "sum" else len(idx)
        g = np.zeros_like(x)
        np.add.at(g, idx, power * c ** power * x[idx] ** (power - 1) / n)
        return np.float64(((x[idx] * c) ** power).sum() / n), g

    f = td.value_and_grad(fn, replay=True)
    rng = np.random.default_rng(4)
    calls = [  # (c, idx, mode, power, recordings, replays)
        (2.0, [0, 2], "sum", 2, 1, 0),
        (2.0, [0, 2], "sum", 2, 1, 1),  # equal statics, new objects: replay
        (3.0, [0, 2], "sum", 2, 2, 1),  # Python float changed
        (3.0, [1, 1], "sum", 2, 3, 1),  # int array changed (repeated index)
        (3.0, [1, 1], "sum", 2, 3, 2),
        (3.0, [1, 1], "mean", 2, 4, 2),  # string changed
        (3.0, [1, 1], "mean", 3, 5, 2),  # keyword int changed
        (3.0, [1, 1], "mean", 3, 5, 3),
        (3.0, [1, 1, 2], "mean", 3, 6, 3),  # int array of another shape
    ]
    for c, idx, mode, power, nrec, nrep in calls:
        x = rng.standard_normal(4)
        got = f(x, c, np.array(idx), mode, power=power)
        assert (f.recordings, f.replays) == (nrec, nrep), (c, idx, mode, power)
        assert f.last_guard is None
        assert_same_result(got, closed(x, c, np.array(idx), mode, power),
                           {"rtol": 1e-13, "atol": 1e-15})


def _index_static(x, idx):
    return (x[idx] * np.array([1.0, 10.0])).sum()


@pytest.mark.parametrize("static,mutate", [
    (np.array([0, 2]), lambda a: a.__setitem__(1, 3)),
    (np.array([True, False, True, False]), lambda a: a.__setitem__(slice(None),
                                                                   [False, True, False, True])),
    ([0, 2], lambda a: a.__setitem__(1, 3)),
], ids=["int array", "bool mask", "list"])
@crash_guard
def test_static_argument_changed_in_place_records_again(static, mutate):
    f = td.value_and_grad(_index_static, replay=True)
    x = np.arange(4.0)
    f(x, static)
    mutate(static)
    assert_same_result(f(x, static), eager(_index_static, x, static))


@crash_guard
def test_equal_static_int_tensors_replay():
    f = td.value_and_grad(_index_static, replay=True)
    for k in range(3):
        x = np.arange(4.0) * (k + 1)
        assert_same_result(f(x, td.tensor([0, 2])), eager(_index_static, x, np.array([0, 2])))
    assert (f.recordings, f.replays) == (1, 2)


@crash_guard
def test_dynamic_arguments_are_refreshed():
    """Float arrays and tensors not in argnums, positional or keyword, are new inputs at
    every call: no recording again, and the value follows them."""
    def fn(x, a, *, b, t):
        return (x * a).sum() + (x * x * b).sum() + (t * x).sum()

    f = td.value_and_grad(fn, replay=True)
    rng = np.random.default_rng(5)
    for k in range(6):
        x, a, b = rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal(())
        t = td.tensor(rng.standard_normal(3), requires_grad=bool(k % 2))
        value, g = f(x, a, b=b, t=t)
        assert (f.recordings, f.replays) == (1, k)
        assert_same_result((value, g), eager(fn, x, a, b=b, t=t))
        tv = t.numpy()
        np.testing.assert_allclose(value, (x * a).sum() + b * (x * x).sum() + (tv * x).sum(),
                                   rtol=1e-13)
        np.testing.assert_allclose(g, a + 2 * b * x + tv, rtol=1e-13)
        assert t.grad is None
    # a float32 dynamic argument where float64 was recorded: another dtype, recorded again
    f(x, a.astype(np.float32), b=b, t=t)
    assert f.recordings == 2


@crash_guard
def test_closures_are_constants_of_the_recording():
    """An ndarray the function closes over is copied into the recording: changing it in
    place is not seen by replay (eager sees it); passed as an argument, it is refreshed."""
    c = np.array([1.0, 2.0, 3.0])
    closure = lambda x: (x * c).sum()  # noqa: E731
    f = td.value_and_grad(closure, replay=True)
    x = np.array([0.5, -1.0, 2.0])
    assert_same_result(f(x), (np.float64(4.5), np.array([1.0, 2.0, 3.0])))
    c[...] = [10.0, 20.0, 30.0]
    got = f(x * 2)
    assert (f.recordings, f.replays) == (1, 1)
    assert_same_result(got, (np.float64(9.0), np.array([1.0, 2.0, 3.0])))  # the old c
    assert_same_result(eager(closure, x * 2), (np.float64(90.0), c.copy()))  # the new c

    as_argument = lambda x, c: (x * c).sum()  # noqa: E731
    f = td.value_and_grad(as_argument, replay=True)
    f(x, c)
    c[...] = [-1.0, 0.0, 1.0]
    got = f(x * 2, c)
    assert (f.recordings, f.replays) == (1, 1)
    assert_same_result(got, (np.float64(3.0), np.array([-1.0, 0.0, 1.0])))


# ---------------------------------------------------------------------------------------------
# 7. argnums, output types, .grad, errors
# ---------------------------------------------------------------------------------------------
def _three(a, b, c):
    return (a * b * b).sum() + td.sin(c).sum() * a.sum()


@pytest.mark.parametrize("replay", [False, True], ids=["eager", "replay"])
@pytest.mark.parametrize("argnums,which", [
    (0, 0), (1, 1), (-1, 2), (-3, 0), ((0,), (0,)), ((2, 0), (2, 0)), ((0, -2), (0, 1)),
    ([1, 2], (1, 2)),
])
@crash_guard
def test_argnums(argnums, which, replay):
    rng = np.random.default_rng(6)
    vg = td.value_and_grad(_three, argnums, replay=replay)
    gr = td.grad(_three, argnums, replay=replay)
    for _ in range(3):
        a, b, c = (rng.standard_normal(s) for s in [(2,), (2,), (3,)])
        value, grads = vg(a, b, c)
        closed = [b * b + np.sin(c).sum(), 2 * a * b, np.cos(c) * a.sum()]
        np.testing.assert_allclose(value, (a * b * b).sum() + np.sin(c).sum() * a.sum(),
                                   rtol=1e-13)
        if isinstance(which, int):
            assert isinstance(grads, np.ndarray)
            np.testing.assert_allclose(grads, closed[which], rtol=1e-13)
        else:
            assert isinstance(grads, tuple) and len(grads) == len(which)
            for g, i in zip(grads, which):
                np.testing.assert_allclose(g, closed[i], rtol=1e-13)
        assert_same_result(gr(a, b, c), grads)
    if replay:
        assert (vg.recordings, vg.replays) == (1, 2)
        assert (gr.recordings, gr.replays) == (1, 2)


def _check_ndarray_outputs(vg):
    # ndarrays in: a NumPy scalar value, ndarray gradients, 0-d ones as NumPy scalars
    value, (gx, gy) = vg(np.array([1.0, 2.0]), np.array(3.0))
    assert type(value) is np.float64 and value == 9.0
    assert type(gx) is np.ndarray and np.array_equal(gx, [3.0, 3.0])
    assert type(gy) is np.float64 and gy == 3.0


def _check_python_float_outputs(vg):
    value, (gx, gy) = vg(2.0, 5.0)  # Python floats are 0-d float64
    assert (type(value), type(gx), type(gy)) == (np.float64,) * 3
    assert (value, gx, gy) == (10.0, 5.0, 2.0)


def _check_float32_outputs(vg):
    value, (gx, gy) = vg(np.ones(2, np.float32), np.full(2, 2.0, np.float32))
    assert type(value) is np.float32 and value == 4.0
    assert gx.dtype == np.float32 and gy.dtype == np.float32
    assert gx.tolist() == [2.0, 2.0] and gy.tolist() == [1.0, 1.0]


def _check_tensor_outputs(vg):
    # a tensor among the differentiated arguments: tensors out; recorded (functions of x,
    # as torch.func.grad's) unless replayed (a replay gives numbers: constants)
    x = td.tensor([1.0, 2.0], requires_grad=True)
    value, (gx, gy) = vg(x, np.array(3.0))
    recorded = not isinstance(vg, td.Replayed)
    for t in (value, gx, gy):
        assert isinstance(t, td.Tensor) and t.requires_grad == recorded
        assert (t.grad_fn is not None) == recorded
    assert value.item() == 9.0 and gx.tolist() == [3.0, 3.0] and gy.item() == 3.0
    assert gy.shape == () and gx.dtype == np.float64
    assert x.grad is None and x.requires_grad and x.is_leaf


@pytest.mark.parametrize("check", [_check_ndarray_outputs, _check_python_float_outputs,
                                   _check_float32_outputs, _check_tensor_outputs],
                         ids=["ndarray", "python float", "float32", "tensor"])
@crash_guard
def test_output_types(check):
    fn = lambda x, y: (x * y).sum()  # noqa: E731
    check(td.value_and_grad(fn, (0, 1)))
    vg = td.value_and_grad(fn, (0, 1), replay=True)
    check(vg)  # recorded
    check(vg)  # replayed
    assert (vg.recordings, vg.replays) == (1, 1)


@crash_guard
def test_output_types_follow_the_current_call():
    fn = lambda x: (x * x).sum()  # noqa: E731
    f = td.value_and_grad(fn, replay=True)
    f(np.array([1.0, 2.0]))
    value, g = f(td.tensor([1.0, 2.0]))  # replayed: the same shape and dtype
    assert isinstance(value, td.Tensor) and isinstance(g, td.Tensor), (value, g)
    f = td.value_and_grad(fn, replay=True)
    f(td.tensor([1.0, 2.0]))
    value, g = f(np.array([1.0, 2.0]))
    assert type(value) is np.float64 and type(g) is np.ndarray, (value, g)


@crash_guard
def test_grad_of_tensor_arguments_is_untouched():
    fn = lambda x, y: (x * y * y).sum()  # noqa: E731
    x = td.tensor([1.0, 2.0], requires_grad=True)
    y = td.tensor([3.0, 4.0], requires_grad=True)
    (x * 5.0).sum().backward()
    before = x.grad.numpy()
    for replay in (False, True):
        vg = td.value_and_grad(fn, 0, replay=replay)
        for _ in range(2):
            value, g = vg(x, y)
            assert value.item() == 1 * 9 + 2 * 16 and g.tolist() == [9.0, 16.0]
    np.testing.assert_array_equal(x.grad.numpy(), before)
    assert y.grad is None
    assert x.numpy().tolist() == [1.0, 2.0] and y.numpy().tolist() == [3.0, 4.0]


def test_replayed_object():
    def loss(x):
        """doc"""
        return (x * x).sum()

    f = td.value_and_grad(loss, replay=True)
    assert isinstance(f, td.Replayed)
    assert f.__name__ == "loss" and f.__doc__ == "doc"
    assert (f.recordings, f.replays, f.last_guard, f.tape) == (0, 0, None, None)
    f(np.ones(2))
    assert isinstance(f.tape, td.Tape) and len(f.tape) > 0
    assert isinstance(td.grad(loss, replay=True), td.Replayed)
    assert not isinstance(td.value_and_grad(loss), td.Replayed)


@pytest.mark.parametrize("replay", [False, True], ids=["eager", "replay"])
def test_non_scalar_output_raises(replay):
    f = td.value_and_grad(lambda x: x * 2.0, replay=replay)
    with pytest.raises(RuntimeError, match=r"only for scalar outputs.*\(3,\)"):
        f(np.ones(3))
    g = td.grad(lambda x: x[None] * 2.0, replay=replay)
    with pytest.raises(RuntimeError, match=r"scalar outputs.*\(1, 3\)"):
        g(np.ones(3))
    # a one-element output that is not 0-d is a scalar (as backward accepts it)
    value, grads = td.value_and_grad(lambda x: x.sum(keepdims=True), replay=replay)(np.ones(3))
    assert value.shape == (1,) and np.array_equal(grads, np.ones(3))


@pytest.mark.parametrize("argnums", ["0", 1.5, True, (), (0, True), (0, 1.0), None, [[0]]])
def test_bad_argnums_raise_type_error(argnums):
    for make in (td.value_and_grad, td.grad):
        for replay in (False, True):
            with pytest.raises(TypeError, match="argnums"):
                make(lambda x: x.sum(), argnums, replay=replay)


@pytest.mark.parametrize("replay", [False, True], ids=["eager", "replay"])
def test_argnums_out_of_range_raise_type_error(replay):
    f = td.value_and_grad(lambda x, y: (x * y).sum(), (0, 2), replay=replay)
    with pytest.raises(TypeError, match="argnums=2.*2 positional"):
        f(np.ones(2), np.ones(2))
    f = td.grad(lambda x, y=1.0: (x * y).sum(), -2, replay=replay)
    with pytest.raises(TypeError, match="argnums=-2"):
        f(np.ones(2), y=np.ones(2))  # y is a keyword: not addressable by argnums


@pytest.mark.parametrize("on_guard", ["ignore", "RERECORD", None, ""])
def test_bad_on_guard_raises_value_error(on_guard):
    for make in (td.value_and_grad, td.grad):
        for replay in (False, True):
            with pytest.raises(ValueError, match="on_guard"):
                make(lambda x: x.sum(), replay=replay, on_guard=on_guard)


@pytest.mark.parametrize("replay", [False, True], ids=["eager", "replay"])
@pytest.mark.parametrize("fn", [
    lambda x: td.argmax(x),
    lambda x: 3,
    lambda x: td.tensor(True),
    lambda x: (x > 0).sum(),
    lambda x: np.array(2, np.int32),
], ids=["argmax", "python int", "bool tensor", "count", "int ndarray"])
def test_integer_output_raises_type_error(fn, replay):
    f = td.value_and_grad(fn, replay=replay)
    with pytest.raises(TypeError, match="float scalar"):
        f(np.array([1.0, -2.0, 3.0]))


@pytest.mark.parametrize("replay", [False, True], ids=["eager", "replay"])
@pytest.mark.parametrize("out", ["1.0", None, [1.0], {"loss": 1.0}],
                         ids=["str", "None", "list", "dict"])
def test_non_numeric_output_raises_type_error(out, replay):
    f = td.grad(lambda x: out, replay=replay)
    with pytest.raises(TypeError):
        f(np.array([1.0, -2.0, 3.0]))


@crash_guard
def test_outputs_that_do_not_depend_on_the_inputs():
    for replay in (False, True):
        vg = td.value_and_grad(lambda x, y: x.detach().sum() * 0.0 + 3.0, (0, 1), replay=replay,
                               allow_unused=True)
        for k in range(2):
            value, (gx, gy) = vg(np.ones(2) * k, np.ones(3))
            assert value == 3.0 and np.array_equal(gx, np.zeros(2)) and gy.shape == (3,)
        # the output is the argument itself
        f = td.value_and_grad(lambda x: x, replay=replay)
        assert f(2.0) == (2.0, 1.0) and f(5.0) == (5.0, 1.0)
        # a Python float output
        f = td.value_and_grad(lambda x: 1.5, replay=replay, allow_unused=True)
        assert_same_result(f(np.ones(2)), (np.float64(1.5), np.zeros(2)))
        assert_same_result(f(np.ones(2) * 3), (np.float64(1.5), np.zeros(2)))


@pytest.mark.parametrize("replay", [False, True])
@pytest.mark.parametrize("fn", [lambda x: (x * x).sum().item(), lambda x: float((x * x).sum()),
                                lambda x: x.detach().sum() * 2.0, lambda x: 1.5,
                                lambda x: np.sum(x.numpy())],
                         ids=[".item()", "float()", ".detach()", "constant", ".numpy()"])
def test_a_broken_graph_is_refused_unless_allow_unused(fn, replay):
    # as torch.autograd.grad: an output that does not depend on the input is a graph
    # broken on the way far more often than an intended zero
    for make in (td.grad, td.value_and_grad):
        with pytest.raises(RuntimeError, match="does not depend on its differentiated "
                                               "argument.*allow_unused=True"):
            make(fn, replay=replay)(np.array([1.0, 2.0]))
    g = td.grad(fn, replay=replay, allow_unused=True)(np.array([1.0, 2.0]))
    assert np.array_equal(g, np.zeros(2))


@pytest.mark.parametrize("replay", [False, True])
def test_an_unused_argument_is_named(replay):
    f = td.grad(lambda x, y, z: (x * z).sum(), argnums=(0, 1, 2), replay=replay)
    with pytest.raises(RuntimeError, match="does not depend on argument 1 of those "
                                           "differentiated.*allow_unused=True"):
        f(np.ones(2), np.ones(2), np.ones(2))
    f = td.grad(lambda x, y, z: (x * z).sum(), argnums=(0, 1, 2), replay=replay,
                allow_unused=True)
    gx, gy, gz = f(np.ones(2), np.full(2, 3.0), np.full(2, 2.0))
    assert np.array_equal(gy, np.zeros(2)) and np.array_equal(gx, [2.0, 2.0])
    # a zero gradient through the graph is a dependence, not an unused argument
    assert np.array_equal(td.grad(lambda x: (x * 0.0).sum())(np.ones(2)), np.zeros(2))


# ---------------------------------------------------------------------------------------------
# 8. Tape.gradient
# ---------------------------------------------------------------------------------------------
def _backward_grads(fn, arrays, gradient=None):
    leaves = [td.tensor(a, requires_grad=True) for a in arrays]
    out = fn(*leaves)
    if gradient is None:
        out.backward()
    else:
        out.backward(gradient=gradient)
    return [leaf.grad.numpy() for leaf in leaves]


def _broadcasting_fn(x, y, z):
    h = td.sin(x) * y + x ** 2 / (1.0 + z * z)  # (3, 1), (4,), (2, 1, 1) -> (2, 3, 4)
    return td.logsumexp(h, axis=-1) * td.tanh(z[..., 0])


@crash_guard
@settings(max_examples=10, deadline=None)
@given(data=st.data(), dtype=st.sampled_from([np.float64, np.float32]),
       seeded=st.booleans())
def test_tape_gradient_matches_backward(data, dtype, seeded):
    arrays = [data.draw(hnp.arrays(dtype, s, elements=st.floats(-2, 2, width=32)))
              for s in [(3, 1), (4,), (2, 1, 1)]]
    seed = projection((2, 3), 7).astype(dtype) if seeded else None

    def reduce(out):
        return out if seeded else out.sum()

    def fn(*ts):
        return reduce(_broadcasting_fn(*ts))

    expected = _backward_grads(fn, arrays, seed)
    leaves = [td.tensor(a, requires_grad=True) for a in arrays]
    with td.tape() as t:
        y = fn(*leaves)
    grads = t.gradient(y, leaves, gradient=seed, retain_graph=True)
    assert isinstance(grads, tuple) and len(grads) == 3
    tol = _tolerances(dtype)
    for g, e, a in zip(grads, expected, arrays):
        assert isinstance(g, td.Tensor) and not g.requires_grad
        assert g.shape == a.shape and g.dtype == a.dtype
        np.testing.assert_allclose(g.numpy(), e, **tol)
    # a single tensor gives a single tensor; no .grad is touched
    g1 = t.gradient(y, leaves[1], gradient=seed)
    assert isinstance(g1, td.Tensor)
    np.testing.assert_allclose(g1.numpy(), expected[1], **tol)
    assert all(leaf.grad is None for leaf in leaves)
    # against finite differences too (float64)
    if dtype == np.float64:
        w = np.ones((2, 3)) if seed is None else seed
        num = numerical_grad(
            lambda *xs: float((_broadcasting_fn(*(td.tensor(v) for v in xs)).numpy()
                               * w).sum()), arrays)
        for g, n in zip(grads, num):
            np.testing.assert_allclose(g.numpy(), n, rtol=1e-5, atol=1e-6)


@crash_guard
def test_tape_gradient_of_intermediates_and_unused_tensors():
    rng = np.random.default_rng(8)
    xv, yv = rng.standard_normal((3, 1)), rng.standard_normal(4)
    x = td.tensor(xv, requires_grad=True)
    y = td.tensor(yv, requires_grad=True)
    unused = td.tensor(rng.standard_normal(5), requires_grad=True)
    unused32 = td.tensor(np.ones((2, 2), np.float32), requires_grad=True)
    with td.tape() as t:
        h = x * y  # an intermediate, (3, 4)
        other = td.exp(x).sum()  # recorded on the tape, but z does not depend on it
        z = (td.sin(h) * h).sum()
    gh, gx, gu, gu32, go = t.gradient(z, [h, x, unused, unused32, other], retain_graph=True)
    hv = xv * yv
    dh = np.cos(hv) * hv + np.sin(hv)
    np.testing.assert_allclose(gh.numpy(), dh, rtol=1e-13)
    np.testing.assert_allclose(gx.numpy(), (dh * yv).sum(axis=1, keepdims=True), rtol=1e-13)
    assert gu.shape == (5,) and gu.dtype == np.float64 and not gu.numpy().any()
    assert gu32.shape == (2, 2) and gu32.dtype == np.float32 and not gu32.numpy().any()
    assert go.shape == () and go.item() == 0.0
    # the gradient of y wrt itself is the seed; wrt another leaf, zeros
    gy, gx = t.gradient(y, [y, x], gradient=np.full(4, 2.0))
    assert gy.tolist() == [2.0] * 4 and not gx.numpy().any()
    # the intermediate's gradient equals backward through a graph that starts at h
    z.backward()
    np.testing.assert_allclose(x.grad.numpy(), gx.numpy() + (dh * yv).sum(1, keepdims=True),
                               rtol=1e-13)


def test_tape_gradient_errors():
    x = td.tensor([1.0, 2.0], requires_grad=True)
    c = td.tensor([1.0, 2.0])
    with td.tape() as t:
        y = (x * x).sum()
        yc = (x * c).sum()
        vec = x * 2.0
    with pytest.raises(RuntimeError, match="^One of the differentiated Tensors does not "
                                           "require grad$"):
        t.gradient(y, c)
    with pytest.raises(RuntimeError, match="does not require grad"):
        t.gradient(y, [x, c])
    x2 = td.tensor([1.0, 2.0], requires_grad=True)  # on another tape
    with td.tape() as other:
        y2 = (x2 * 3.0).sum()
    with pytest.raises(RuntimeError, match="another tape"):
        t.gradient(y2, x)
    with pytest.raises(RuntimeError, match="another tape"):
        other.gradient(y, x2)
    with pytest.raises(TypeError):
        t.gradient(np.float64(1.0), x)
    with pytest.raises(TypeError):
        t.gradient(y, [x, np.ones(2)])
    with pytest.raises(RuntimeError, match="only for scalar outputs"):
        t.gradient(vec, x)
    with pytest.raises(RuntimeError, match=r"Mismatch in shape.*\(3,\).*\(\)"):
        t.gradient(y, x, gradient=np.ones(3))
    # released: the second call without retain_graph fails as a second backward does
    assert t.gradient(y, x).tolist() == [2.0, 4.0]
    with pytest.raises(RuntimeError) as second:
        t.gradient(y, x)
    yc.backward()
    with pytest.raises(RuntimeError) as second_backward:
        yc.backward()
    assert str(second.value) == str(second_backward.value)
    assert "second time" in str(second.value)
    assert other.gradient(y2, x2, retain_graph=True).tolist() == [3.0, 3.0]
    assert other.gradient(y2, x2).tolist() == [3.0, 3.0]  # retained once: one more call
    assert x.grad.tolist() == [1.0, 2.0] and x2.grad is None  # from yc.backward() only


def _use_on_another_tape(x):
    with td.tape():
        (x * 3.0).sum()


def _use_on_the_default_tape(x):
    (x * 3.0).sum()


def _update_in_place(x):
    with td.no_grad():
        x += 1.0  # README: graphs recorded earlier keep the old value


@pytest.mark.parametrize("then", [_use_on_another_tape, _use_on_the_default_tape,
                                  _update_in_place],
                         ids=["used on another tape", "used on the default tape",
                              "updated in place"])
def test_tape_gradient_of_a_leaf_used_since(then):
    x = td.tensor([1.0, 2.0], requires_grad=True)
    with td.tape() as t:
        z = (x * x).sum()
    then(x)
    g = t.gradient(z, x, retain_graph=True)
    z.backward()
    assert x.grad.tolist() == [2.0, 4.0]  # backward: d/dx of the recorded graph
    assert g.tolist() == [2.0, 4.0]


# ---------------------------------------------------------------------------------------------
# 9. threads
# ---------------------------------------------------------------------------------------------
def _threaded_fn(x, a):
    h = td.relu(x @ a[:, None] - 0.1)  # matmul: BLAS, outside the jitted sweeps
    m = td.where(x > 0, x, 0.5 * x).max(axis=1)
    return (h[:, 0] * m).sum() + td.logsumexp(x * a, axis=1).mean()


def _threaded_fast_fn(x, a):  # one arena kind, no matmul: replayed in one compiled call
    m = td.where(x > 0, x, 0.5 * x).max(axis=1)
    return (td.relu(x * a - 0.1).sum(axis=1) * m).sum() + td.logsumexp(x * a, axis=1).mean()


@pytest.mark.parametrize("fn", [_threaded_fn, _threaded_fast_fn], ids=["matmul", "one call"])
@crash_guard
def test_one_replayed_function_from_two_threads(fn):
    f = td.value_and_grad(fn, replay=True)
    n = 200
    barrier = threading.Barrier(2)
    results: dict[int, list] = {0: [], 1: []}
    tapes: dict[int, object] = {}
    errors = []

    def work(k):
        try:
            rng = np.random.default_rng(100 + k)
            calls = [(rng.standard_normal((6, 5)), rng.standard_normal(5)) for _ in range(n)]
            barrier.wait()
            for x, a in calls:
                results[k].append((x, a, f(x, a)))
            tapes[k] = f.tape
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert (f.recordings, f.replays) == (2, 2 * n - 2)  # each thread recorded once
    assert tapes[0] is not tapes[1] and f.tape is None  # none in this thread
    for k in (0, 1):
        assert len(results[k]) == n
        for x, a, got in results[k]:
            assert_same_result(got, eager(fn, x, a))


# ---------------------------------------------------------------------------------------------
# 10. SciPy
# ---------------------------------------------------------------------------------------------
def rosenbrock(x):
    return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum()


@crash_guard
def test_scipy_minimize_with_a_replayed_gradient():
    optimize = pytest.importorskip("scipy.optimize")
    f = td.value_and_grad(rosenbrock, replay=True)
    x0 = np.array([-1.2, 1.0, -0.5, 0.8, 1.3, 0.7])
    res = optimize.minimize(f, x0, jac=True, method="L-BFGS-B",
                            options={"maxiter": 2000, "gtol": 1e-10, "ftol": 1e-15})
    assert res.success, res.message
    np.testing.assert_allclose(res.x, np.ones(6), atol=1e-5)
    assert f.recordings == 1 and f.replays == res.nfev - 1 and res.nfev > 20
    # the gradient scipy used agrees with SciPy's own Rosenbrock derivative
    for x in (x0, res.x, x0 * 0.3):
        value, g = f(x)
        np.testing.assert_allclose(value, optimize.rosen(x), rtol=1e-13)
        np.testing.assert_allclose(g, optimize.rosen_der(x), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# regressions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn,shape", [
    (lambda x: x.sum(), (0,)),
    (lambda x: (x.sum(axis=1) * np.arange(1.0, 65.0)).sum(), (64, 0)),
    (lambda x: x[:, :0].sum(axis=1).sum() + (x * x).sum(), (64, 3)),
    (lambda x: td.trace(x, -1, 1, 2).sum() + (x * x).sum(), (64, 1, 1)),
    (lambda x: x[1, False].prod() * x.sum(), (3, 2)),
], ids=["empty input", "empty rows", "empty slice", "empty trace", "empty prod"])
@crash_guard
def test_replay_of_a_reduction_over_zero_elements(fn, shape):
    """A sum over zero elements is recorded with a group of one (``_reduce_layout``); its
    forward rule must not read the (empty) input.  (At c684511 the forward sweep read past
    an empty position array here: a segfault or garbage.)"""
    f = td.value_and_grad(fn, replay=True)
    rng = np.random.default_rng(9)
    for _ in range(10):
        x = rng.standard_normal(shape)
        assert_same_result(f(x), eager(fn, x))
    assert (f.recordings, f.replays) == (1, 9)


def test_a_guard_holds_at_the_inputs_it_was_recorded_at():
    """The compiled rules may round differently from NumPy (tanh, exp, sums): guards are
    calibrated to them, so calling again at the same inputs replays."""
    def f(x):
        y = np.tanh(x)
        m = np.max(y.detach())  # Python reads every value of y: a guard on all of them
        return np.sum(np.exp(y - m))

    x = np.random.default_rng(0).normal(size=1000)
    g = td.value_and_grad(f, replay=True)
    first = g(x)
    for _ in range(3):
        value, grad = g(x)
        np.testing.assert_allclose(value, first[0], rtol=1e-12)
        np.testing.assert_allclose(grad, first[1], rtol=1e-12)
    assert (g.recordings, g.replays) == (1, 3)
    g(x + 0.5)  # other values: the guard sees them change
    assert g.recordings == 2


def test_detach_inside_a_replayed_function_is_guarded():
    h = td.value_and_grad(lambda x: (x * x.detach()).sum(), replay=True)
    h(np.array([1.0, 2.0]))
    value, grad = h(np.array([3.0, 4.0]))
    assert value == 25.0
    np.testing.assert_array_equal(grad, [3.0, 4.0])  # the detached factor is a constant
    assert h.recordings == 2
    h(np.array([3.0, 4.0]))
    assert h.replays == 1


def test_no_grad_inside_a_replayed_function_is_refused():
    def f(x):
        with td.no_grad():
            m = x.max()  # would be a constant of the recording
        return (x - m).sum()

    with pytest.raises(RuntimeError, match=r"^no_grad\(\) inside a function recorded for "
                                           r"replay"):
        td.value_and_grad(f, replay=True)(np.ones(3))
    assert td.is_grad_enabled()
    value, grad = td.value_and_grad(f)(np.array([1.0, 3.0]))  # eager: fine
    assert value == -2.0
    np.testing.assert_array_equal(grad, [1.0, 1.0])


@pytest.mark.parametrize("how", ["backward", "gradient"])
def test_differentiating_inside_a_replayed_function_is_refused(how):
    def f(x):
        y = (x * x).sum()
        if how == "backward":
            y.backward()
        else:
            td.current_tape().gradient(y, x)
        return y

    with pytest.raises(RuntimeError, match="differentiates its own tape"):
        td.value_and_grad(f, replay=True)(np.ones(3))


@pytest.mark.parametrize("replay", [False, True])
def test_a_gradient_of_the_differentiated_inputs_inside_the_function_is_recorded(replay):
    """An inner td.value_and_grad of the outer inputs is recorded, so the outer gradient
    sees it: d/dx sum(x * 3x^2) is 9x^2 (not 3x^2, what a constant inner gradient gives),
    and a replay recomputes it at new inputs."""
    inner = td.value_and_grad(lambda x: (x ** 3).sum())

    def f(x):
        _, g = inner(x)
        return (x * g).sum()

    outer = td.value_and_grad(f, replay=replay)
    for x in (np.array([1.0, -2.0]), np.array([0.5, 3.0])):
        value, g = outer(x)
        np.testing.assert_allclose(value, 3.0 * (x ** 3).sum())
        np.testing.assert_allclose(g, 9.0 * x ** 2)


def test_np_asarray_in_a_replayed_function():
    """np.asarray of a value that depends on the differentiated inputs raises (it would drop
    their gradient); of a data argument it is a guard: replayed while the data stay, recorded
    again when they change."""
    with pytest.raises(RuntimeError, match="requires grad"):
        td.value_and_grad(lambda x: np.asarray(x * 2.0).sum() * x.sum(), replay=True)(
            np.ones(3))

    def f(w, data):
        a = np.asarray(data[:2])  # guard: np.asarray()
        return (w * a.sum()).sum() + (w ** 3).sum()

    g = td.value_and_grad(f, replay=True)
    w = np.array([1.0, -2.0, 0.5])
    for data, rec in [([1.0, 2.0, 3.0], 1), ([1.0, 2.0, 5.0], 1), ([2.0, 2.0, 3.0], 2)]:
        data = np.array(data)
        value, grad = g(w, data)
        s = data[:2].sum()
        np.testing.assert_allclose(value, (w * s).sum() + (w ** 3).sum())
        np.testing.assert_allclose(grad, s + 3 * w ** 2)
        assert g.recordings == rec, (data, g.last_guard)
    assert g.last_guard.startswith("np.asarray() at ")


def test_re_recording_frees_the_recordings_it_drops():
    """A function whose guard changes on every call records every time: a thread keeps its
    max_recordings most recent recordings, the older tapes are freed (bounded memory)."""
    f = td.value_and_grad(lambda x: (x * x).sum() * float(x[0]), replay=True)
    tapes = []
    for i in range(200):
        f(np.full(1000, float(i)))  # float(x[0]) guards a value that never repeats
        tapes.append(weakref.ref(f.tape))
    gc.collect()
    assert (f.recordings, f.replays) == (200, 0)
    assert sum(r() is not None for r in tapes) == 4


def test_alternating_branches_replay_from_kept_recordings():
    f = td.value_and_grad(lambda x: (x * x).sum() if x[0] > 0 else (x * 3.0).sum(),
                          replay=True)
    for i in range(100):
        x = np.full(10, 1.0 + i if i % 2 else -1.0 - i)
        value, g = f(x)
        np.testing.assert_allclose(value, (x * x).sum() if i % 2 else (3 * x).sum())
    assert (f.recordings, f.replays) == (2, 98)


def test_max_recordings_must_be_positive():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_recordings must be a positive int"):
            td.value_and_grad(lambda x: x.sum(), replay=True, max_recordings=bad)


def test_a_replayed_function_frees_its_recording_when_it_dies():
    tapes = []
    for i in range(100):  # a new replayed function per step, as a careless loop would do
        f = td.value_and_grad(lambda x: (x * x).sum(), replay=True)
        f(np.full(1000, float(i)))
        tapes.append(weakref.ref(f.tape))
    gc.collect()
    assert sum(r() is not None for r in tapes) == 1  # only the last f's


@crash_guard
def test_records_that_depend_on_fixed_inputs_alone_get_no_adjoint():
    """Replay's fixed (not differentiated) inputs become constants, and every record that
    depends on nothing else is flagged FLAG_CONSTANT: the reverse sweep skips it, and the
    gradients are still eager's."""
    from tapediff._src import _kernels as K

    def fn(w, d):
        dd = td.concatenate([d[None] * 2.0, td.exp(d)[None]])  # (2, 3) from d alone
        h = td.tanh(dd @ w) + td.maximum(d.sum(), 0.5)  # broadcasts, a matmul, a where
        return (h * h).sum() + (w * d[:, None]).sum()

    f = td.value_and_grad(fn, replay=True)
    rng = np.random.default_rng(7)
    for _ in range(3):
        w, d = rng.standard_normal((3, 4)), rng.standard_normal(3)
        assert_same_result(f(w, d), eager(fn, w, d))
    assert (f.recordings, f.replays) == (1, 2)
    t = f.tape
    top = len(t)
    # reference: which records can an adjoint reach (they read w, directly or not)?
    wslot = f._local.recs[0].slot(f._local.recs[0].diff[0])
    live = np.zeros(top, bool)
    live[wslot] = True
    for i in range(top):
        ins = [int(t.in_a[i]), int(t.in_b[i])]
        if t.op[i] == K.OP_CONCAT:
            m = int(t.meta_at[i])
            ins += [int(s) for s in t.meta[m + 2:m + 2 + int(t.meta[m + 1])]]
        if t.op[i] not in (K.OP_CMP, K.OP_GUARD, K.OP_LEAF, K.OP_CONST):
            live[i] |= any(s >= 0 and live[s] for s in ins)
    computed = ~np.isin(t.op[:top], [K.OP_LEAF, K.OP_CONST])
    flagged = (t.flag[:top] & K.FLAG_CONSTANT) > 0
    np.testing.assert_array_equal(flagged[computed], ~live[computed])
    assert flagged.sum() >= 5  # d's broadcast, scale, exp, concatenation, matmul input...
