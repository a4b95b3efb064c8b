"""Tests of replay's fused groups (``tapediff._src._fusion``): chains of elementwise records
planned after recording and run block by block, inner values in registers.

Fusion must change nothing a user can see but the time: each test compares a fused replay
with eager tapediff (``value_and_grad`` without replay), with an unfused replay, or with a
closed form.  Most run with ``fusing(minimum=1, block=b)``, which fuses records of any size
and cuts them into blocks of a few elements, so that tiny inputs exercise several blocks,
short last blocks, and every rule of the op table inside a group:

* every row of the op table with a gradient, in float64 and float32 (``test_replay``'s
  table case, fused);
* random programs, at several block lengths, against eager and the unfused replay;
* the plan itself, on random programs: every record runs once (in a group, one by one, or
  read in place as a slice), after everything it reads;
* the cases the planner singles out: slices read in place (overlapping ones adding into one
  adjoint), a sum closing its group (of all of a member, or of segments over trailing
  axes), members read outside their group, operands read twice
  by one rule, size-1 operands summed over blocks, members no adjoint reaches (no 0 * inf),
  arguments not differentiated, NaN, float32, groups of different sizes, threads;
* ``Tensor.backward`` on a large eager tape, which runs its elementwise chains as groups
  too: against the unfused sweep on random programs, a closed form, a loop of steps
  reusing one plan, and what a second backward may and may not do.
"""
from __future__ import annotations

import contextlib
import os
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import tapediff as td
from tapediff._src import _fusion
from tapediff._src import _kernels as K
from tapediff._src import _tape
from tapediff.testing.strategies import programs

from helpers import crash_guard, note
from test_replay import CHUNKS, _table_case, assert_same_result, eager


@contextlib.contextmanager
def fusing(minimum: int = 1, block: int = 3):
    """Fuse records from ``minimum`` elements on, in blocks of ``block``."""
    saved = _fusion.FUSE_MIN, _fusion.BLOCK, _fusion.FUSE_WORK
    _fusion.FUSE_MIN, _fusion.BLOCK, _fusion.FUSE_WORK = minimum, block, 0
    try:
        yield
    finally:
        _fusion.FUSE_MIN, _fusion.BLOCK, _fusion.FUSE_WORK = saved


def unfused():
    return fusing(1 << 62)


def plan_of(f) -> _fusion.Plan:
    """The plan of a replayed function's most recent recording in this thread."""
    return f._recs()[0].plan


def replayed(fn, *args, argnums=0):
    """``fn``'s value and gradient replayed at ``args`` (recorded at ``args`` + 1 first), and
    the replayed function."""
    f = td.value_and_grad(fn, argnums, replay=True, allow_unused=True)
    f(*[np.asarray(a) + 1.0 for a in args])
    out = f(*args)
    assert (f.recordings, f.replays) == (1, 1), f.last_guard
    return out, f


def rosenbrock(x):
    return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum()


def rosenbrock_grad(x: np.ndarray, scale: float = 100.0) -> np.ndarray:
    """The gradient of sum(scale (x[1:] - x[:-1]^2)^2 + (1 - x[:-1])^2)."""
    g = np.zeros_like(x)
    d = x[1:] - x[:-1] ** 2
    g[1:] += 2.0 * scale * d
    g[:-1] += -4.0 * scale * x[:-1] * d - 2.0 * (1.0 - x[:-1])
    return g


# ---------------------------------------------------------------------------------------------
# 1. every rule inside a group; random programs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows", CHUNKS, ids=[f"{c[0].name}..{c[-1].name}" for c in CHUNKS])
@crash_guard
def test_op_table_replays_fused_in_blocks_of_two(rows):
    """Each row, times a weight array and summed (one group with the sum), replayed in
    blocks of two elements: the same value and gradient as eager, float64 and float32."""
    failures = []
    with fusing(1, 2):
        for row in rows:
            for dtype in (np.float64,) if row.alias else (np.float64, np.float32):
                try:
                    _table_case(row, dtype)
                except Exception as e:  # noqa: BLE001 - reported below, with the row
                    failures.append(f"{row.name} ({np.dtype(dtype).name}): "
                                    f"{type(e).__name__}: {e}")
    assert not failures, "\n\n".join(failures)


@crash_guard
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prog=programs(max_ops=8), block=st.sampled_from([1, 2, 3, 5, 512]), data=st.data())
def test_generated_programs_fused_match_eager_and_unfused_replay(prog, block, data):
    first = [t.numpy() for t in data.draw(prog.input_tensors(), label="first inputs")]
    second = [t.numpy() for t in data.draw(prog.input_tensors(), label="second inputs")]
    assume(any(not np.array_equal(a, b) for a, b in zip(first, second)))
    argnums = tuple(range(prog.n_inputs))
    with fusing(1, block):
        f = td.value_and_grad(prog, argnums, replay=True, allow_unused=True)
        f(*first)
        note(f"fused replay of\n{prog}\nat {second!r}, blocks of {block}")
        got = f(*second)
        assert (f.recordings, f.replays) == (1, 1), f.last_guard
    assert_same_result(got, eager(prog, *second, argnums=argnums))
    with unfused():
        g = td.value_and_grad(prog, argnums, replay=True, allow_unused=True)
        g(*first)
        plain = g(*second)
        assert plan_of(g).fused == 0
    # the same rules in the same order: only sums over blocks may associate differently
    assert_same_result(got, plain, {"rtol": 1e-13, "atol": 1e-13})


def _check_schedule(tape, plan: _fusion.Plan) -> None:
    """Every record runs once, after the records it reads: one by one in a range of the
    schedule, as a member of a group, or read in place as a slice by a group."""
    top = tape.top
    runs = np.zeros(top, int)
    done = np.zeros(top, bool)
    in_place = set()
    for lo, hi, g in plan.sched.tolist():
        if g < 0:
            members = list(range(lo, hi))
        else:
            nn, block, f0, f1, r0, r1, _ = plan.groups[g].tolist()
            assert f1 - f0 >= 2, "a group of one record"
            assert 1 <= block <= nn
            members = [int(i) for i in np.flatnonzero(plan.group_of == g)]
            assert len(members) == f1 - f0
            # the group reads everything its members read and that is not one of them
            for m in members:
                for s in tape.inputs(m):
                    if s in members:
                        continue
                    if not done[s] and int(tape.op[s]) == K.OP_RESTRIDE:
                        in_place.add(s)  # a slice read in place: its input must be done
                        s = int(tape.in_a[s])
                    assert done[s], f"group {g} reads record {s} before it runs"
        for i in members:
            if g < 0:
                for s in tape.inputs(i):
                    assert done[s], f"record {i} reads record {s} before it runs"
            runs[i] += 1
            done[i] = True
    for s in in_place:
        runs[s] += 1
    assert (runs == 1).all(), f"records run {runs.tolist()} times"


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prog=programs(max_ops=10), data=st.data())
def test_the_plan_runs_every_record_once_after_its_inputs(prog, data):
    x = [t.numpy() for t in data.draw(prog.input_tensors(), label="inputs")]
    with fusing(1, 3):
        f = td.value_and_grad(prog, tuple(range(prog.n_inputs)), replay=True,
                              allow_unused=True)
        f(*x)
    _check_schedule(f.tape, plan_of(f))


# ---------------------------------------------------------------------------------------------
# 2. what the planner singles out
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rosenbrock_is_one_group_reading_its_slices_in_place(dtype):
    """At the default sizes: the elementwise chain, its three slices of x and the sum make
    one group; only the leaf runs one by one; the gradient is the closed form's."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, 20_000).astype(dtype)
    (value, grad), f = replayed(rosenbrock, x)
    p = plan_of(f)
    assert p.sched.tolist() == [[0, 1, -1], [0, 0, 0]]
    assert p.fused == 8  # 7 elementwise records and the sum
    assert grad.dtype == dtype and np.asarray(value).dtype == dtype
    tol = {"rtol": 1e-12, "atol": 1e-9} if dtype == np.float64 else {"rtol": 2e-5, "atol": 2e-2}
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(grad, rosenbrock_grad(x64), **tol)
    np.testing.assert_allclose(value, rosenbrock(x64), **tol)


@crash_guard
@pytest.mark.parametrize("block", [1, 2, 7, 512])
@pytest.mark.parametrize("name", [
    "overlapping slices", "whole slice and whole", "operand twice", "size-1 operand",
    "member read outside", "slice of a member", "two sizes", "unreached member",
    "not differentiated", "nan", "segment sum", "segments of two axes",
    "sum over a leading axis"])
def test_planner_cases_match_eager(name, block):
    if name in ("unreached member", "nan") and os.environ.get("NUMBA_DISABLE_JIT") == "1":
        pytest.skip("with the JIT off, Python's math raises where the kernels give inf or nan")
    rng = np.random.default_rng(1)
    x = rng.uniform(0.5, 2.0, 40)
    y = rng.uniform(0.5, 2.0, 25)
    s = np.array(0.7)
    cases = {
        # x's adjoint gets three overlapping contributions, all adds after one zeroing
        "overlapping slices": (lambda x: (x[2:] * x[1:-1] + 3.0 * x[:-2]).sum(), (x,)),
        # x read in place through a slice of all of it and directly: all its contributions
        # add (a direct first contribution assigning would erase the slice's)
        "whole slice and whole": (lambda x: (td.exp(x) + x[0:] * 2.0).sum(), (x,)),
        "operand twice": (lambda x: (x * x + x / x + (x + x)).sum(), (x,)),
        # s's adjoint sums n contributions over the blocks
        "size-1 operand": (lambda x, s: (x * s + s - x / s).sum(), (x, s)),
        # y is read by the group and by a later record (y[3]): stored, and its adjoint
        # from outside meets the group's
        "member read outside": (lambda x: (2.0 * x).sum() + td.exp(x * 0.5)[3] ** 2, (x,)),
        "slice of a member": (lambda x: (lambda m: (m[1:] * m[:-1]).sum())(x * 2.0 + 1.0),
                              (x,)),
        "two sizes": (lambda x, y: (x * x).sum() * (y * 3.0 + 1.0).sum(), (x, y)),
        # exp(1000 x) overflows; only a comparison reads it: its adjoint is never formed
        "unreached member": (lambda x: td.where(td.exp(1000.0 * x) > 1.0, x, -x).sum(),
                             (x - 1.0,)),
        "not differentiated": (lambda x, y: (x[:25] * td.sin(y) * y).sum(), (x, y)),
        "nan": (lambda x: (td.sqrt(x) * x).sum(), (np.where(np.arange(40) % 7 == 3, -1.0, x),)),
        # segments of 5 (and of 20) summed: a segment straddles blocks of 2 and 7
        "segment sum": (lambda x: ((x.reshape(8, 5) * 2.0 + 1.0) ** 2).sum(axis=1)
                        @ np.arange(8.0), (x,)),
        "segments of two axes": (lambda x: (td.exp(x.reshape(2, 4, 5) * 0.3) * x.reshape(
            2, 4, 5)).sum(axis=(1, 2)).prod(), (x,)),
        # a sum over a leading axis reads no segments: it runs after its group
        "sum over a leading axis": (lambda x: ((x.reshape(8, 5) * 2.0 + 1.0) ** 2).sum(
            axis=0) @ np.arange(5.0), (x,)),
    }
    fn, args = cases[name]
    argnums = (0,) if name == "not differentiated" else tuple(range(len(args)))
    with fusing(1, block):
        got, f = replayed(fn, *args, argnums=argnums)
        assert plan_of(f).fused > 0
        _check_schedule(f.tape, plan_of(f))
    expected = eager(fn, *args, argnums=argnums)
    if name == "nan":
        assert np.isnan(got[1][0]).tolist() == np.isnan(expected[1][0]).tolist()
        assert np.isnan(expected[1][0]).any()
        np.testing.assert_allclose(got[1][0], expected[1][0], rtol=1e-12)
        return
    assert_same_result(got, expected, {"rtol": 1e-12, "atol": 1e-12})
    if name == "unreached member":
        assert np.isfinite(got[1][0]).all()


@pytest.mark.parametrize("segment", [1, 10, 700, 20_000])
def test_a_sum_over_trailing_axes_closes_its_group(segment):
    """(q * q).sum(axis=-1), the GMM's Mahalanobis terms: the square is never stored (it
    lives in registers), the sum accumulates segment by segment (segments shorter and
    longer than a block), and values and gradients are eager's."""
    rng = np.random.default_rng(2)
    q = rng.normal(size=(20_000 // segment, segment))
    w = rng.normal(size=q.shape[0])

    def fn(q):
        return ((q * q - 0.5 * q).sum(axis=-1) * w).sum()

    got, f = replayed(fn, q)
    p = plan_of(f)
    sums = p.fu[p.fu[:, K.U_OP] == K.OP_RESTRIDE]
    # a sum of one element each is a reshape: no sum of segments of 1
    assert (sums[:, K.U_SEG] == segment).any() == (segment > 1)
    if segment > 1:
        assert p.fu[:, K.U_REGISTER].sum() >= 2  # q * q and 0.5 * q: registers
    assert_same_result(got, eager(fn, q), {"rtol": 1e-12, "atol": 1e-12})


@pytest.mark.parametrize("n", [_fusion.FUSE_MIN - 1, _fusion.FUSE_WORK // 8])
def test_a_group_too_small_runs_record_by_record(n):
    """Records below FUSE_MIN elements are not fused (a pass over memory costs less there
    than a block's dispatch), nor chains of fewer than FUSE_WORK element operations (8 in
    Rosenbrock's group, of n - 1 elements): the recording replays in one compiled call, with
    the gradient."""
    x = np.linspace(0.1, 1.0, n)
    (_, grad), f = replayed(rosenbrock, x)
    assert plan_of(f).fused == 0 and plan_of(f).sched.tolist() == [[0, f.tape.top, -1]]
    np.testing.assert_allclose(grad, rosenbrock_grad(x), rtol=1e-12, atol=1e-9)
    x = np.linspace(0.1, 1.0, _fusion.FUSE_WORK // 8 + 1)  # just enough
    _, f = replayed(rosenbrock, x)
    assert plan_of(f).fused == 8


@crash_guard
def test_one_fused_replay_from_two_threads():
    """Each thread keeps its own recording, plan and scratch: concurrent replays of a fused
    group give each thread its own inputs' gradient."""
    f = td.value_and_grad(rosenbrock, replay=True)
    rng = np.random.default_rng(2)
    inputs = [rng.uniform(-2, 2, 10_000) for _ in range(2)]  # (enough to fuse)
    errors = []

    def work(x):
        try:
            f(x + 0.5)
            assert plan_of(f).fused == 8  # (this thread's recording)
            for _ in range(10):
                value, grad = f(x)
                np.testing.assert_allclose(grad, rosenbrock_grad(x), rtol=1e-12, atol=1e-9)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(x,)) for x in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert f.recordings == 2 and f.replays == 20


# ---------------------------------------------------------------------------------------------
# 3. eager backward: a large tape's elementwise chains run as groups
# ---------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def compile_here(monkeypatch):
    """The fused kernels compile before a backward that needs them returns (not in the
    background, where a first backward would sweep unfused): the tests see the groups."""
    monkeypatch.setattr(_tape, "COMPILE_BEHIND", False)


@contextlib.contextmanager
def eager_fusing(block: int = 3, on: bool = True):
    """Let ``Tensor.backward`` fuse tapes of any size (``on``) or none, in blocks of
    ``block``."""
    saved = _tape.FUSE_VALUES, _tape.FUSE_RECORDS
    _tape.FUSE_VALUES, _tape.FUSE_RECORDS = (0, saved[1]) if on else (saved[0], 0)
    try:
        with fusing(1, block):
            yield
    finally:
        _tape.FUSE_VALUES, _tape.FUSE_RECORDS = saved


def backward(fn, *arrays, requires_grad=None):
    """``fn(*tensors).backward()`` on a fresh tape: (value, the inputs' .grad as arrays, the
    fused plan the backward used or None)."""
    with td.tape() as tape:
        xs = [td.tensor(a, requires_grad=True if requires_grad is None else r)
              for a, r in zip(arrays, requires_grad or [None] * len(arrays))]
        y = fn(*xs)
        y.backward()
    grads = [None if x.grad is None else x.grad.numpy() for x in xs]
    return y.item(), grads, None if tape._groups is None else tape._groups[1]


def assert_same_grads(got: list, expected: list, rtol: float = 1e-13) -> None:
    assert [g is None for g in got] == [g is None for g in expected]
    for g, e in zip(got, expected):
        if e is not None:
            assert g.dtype == e.dtype and g.shape == e.shape
            np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol)


@crash_guard
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prog=programs(max_ops=8), block=st.sampled_from([1, 2, 3, 5, 512]), data=st.data())
def test_generated_programs_backward_fused_matches_the_sweep(prog, block, data):
    inputs = [t.numpy() for t in data.draw(prog.input_tensors(), label="inputs")]
    note(f"fused backward of\n{prog}\nat {inputs!r}, blocks of {block}")
    with eager_fusing(block):
        value, got, plan = backward(prog, *inputs)
    with eager_fusing(on=False):
        expected_value, expected, unplanned = backward(prog, *inputs)
    assert unplanned is None
    assert value == expected_value  # (the forward is NumPy's either way)
    # the same rules in the same order: only sums over blocks may associate differently
    assert_same_grads(got, expected)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_backward_of_a_large_rosenbrock_is_one_group(dtype):
    """At the default thresholds: Rosenbrock on 2^15 elements (about 2^18 values on the
    tape) runs its eight elementwise records as one group, the slices read in place, and
    a loop of steps (each recording afresh at the same offsets) reuses the plan; another
    constant is another plan."""
    x = np.linspace(-1.5, 1.5, 1 << 15).astype(dtype)
    plans = []
    for step in range(3):
        xs = x + np.asarray(0.1 * step, dtype)
        _, (grad,), plan = backward(rosenbrock, xs)
        assert grad.dtype == dtype and plan is not None and plan.fused == 8
        tol = 1e-12 if dtype == np.float64 else 2e-5
        np.testing.assert_allclose(grad, rosenbrock_grad(xs.astype(np.float64)), rtol=tol,
                                   atol=tol * 1e3)
        plans.append(plan)
    # (each backward used a fresh tape, recorded alike: the thread's table of plans gave
    # each the first one)
    assert all(p is plans[0] for p in plans)

    def scaled(x):
        return (50.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum()

    _, (grad,), plan = backward(scaled, x)
    assert plan.fused == 8 and 50.0 in plan.rc and 100.0 not in plan.rc
    expected = rosenbrock_grad(x.astype(np.float64), scale=50.0)
    np.testing.assert_allclose(grad, expected, rtol=1e-12 if dtype == np.float64 else 2e-5,
                               atol=1e-9 if dtype == np.float64 else 2e-2)


@contextlib.contextmanager
def planning_everything():
    """Plan every backward's adjoints by liveness and hand over every matmul leaf adjoint
    (``Tensor.backward`` does from ``PLAN_AT`` values and ``HANDOVER_AT`` elements)."""
    saved = _tape.PLAN_AT, _tape.HANDOVER_AT
    _tape.PLAN_AT = _tape.HANDOVER_AT = 0
    try:
        yield
    finally:
        _tape.PLAN_AT, _tape.HANDOVER_AT = saved


@crash_guard
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prog=programs(max_ops=8), block=st.sampled_from([1, 3, 512]), data=st.data())
def test_generated_programs_functional_gradients_match_the_sweep(prog, block, data):
    """``td.value_and_grad`` (not replayed) sweeps as ``Tensor.backward`` does: adjoints
    planned by liveness, matmul leaf adjoints handed over, elementwise chains fused.  Its
    gradients are the unplanned, unfused sweep's (zeros where that gives no ``.grad``)."""
    inputs = [t.numpy() for t in data.draw(prog.input_tensors(), label="inputs")]
    note(f"value_and_grad of\n{prog}\nat {inputs!r}, blocks of {block}")
    f = td.value_and_grad(prog, argnums=tuple(range(len(inputs))), allow_unused=True)
    with eager_fusing(block), planning_everything():
        value, got = f(*inputs)
    with eager_fusing(on=False):
        expected_value, expected, _ = backward(prog, *inputs)
    assert float(value) == expected_value
    expected = [np.zeros_like(x) if e is None else e for x, e in zip(inputs, expected)]
    assert_same_grads([np.asarray(g) for g in got], expected)


def test_functional_gradients_of_a_large_rosenbrock_are_fused_and_planned_once(monkeypatch):
    """At the default thresholds, ``td.grad`` and ``td.value_and_grad`` of Rosenbrock on
    2^15 elements run its chain as one group; every call records on a fresh private tape,
    and the thread's table of plans plans it once."""
    planned = []
    real = _fusion.plan
    monkeypatch.setattr(_fusion, "plan", lambda *a, **k: planned.append(1) or real(*a, **k))
    monkeypatch.setattr(_tape.thread_state, "plans", {})
    x = np.linspace(-1.5, 1.5, 1 << 15)
    g = td.grad(rosenbrock)
    vg = td.value_and_grad(rosenbrock)
    for step in range(3):
        xs = x + 0.1 * step
        np.testing.assert_allclose(g(xs), rosenbrock_grad(xs), rtol=1e-12, atol=1e-9)
        value, grad = vg(xs)
        np.testing.assert_allclose(grad, rosenbrock_grad(xs), rtol=1e-12, atol=1e-9)
        assert value == pytest.approx(float(rosenbrock(xs)), rel=1e-12)
    assert len(planned) == 1
    (plan,) = _tape.thread_state.plans.values()
    assert plan is not None and plan.fused == 8


@pytest.mark.parametrize("decay", [0.0, 1.0], ids=["handed-over", "read-twice"])
def test_functional_gradients_of_a_network_with_planned_adjoints(decay):
    """A gradient through a matmul on a tape large enough for adjoints planned by liveness
    (``PLAN_AT`` values) and a weight large enough to be handed its adjoint
    (``HANDOVER_AT`` elements) when the matmul is its only reader: against the closed
    form."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(1100, 300))
    W = rng.normal(0, 0.05, (300, 300))
    b = rng.normal(size=300)

    def f(W, b):
        loss = np.tanh(X @ W + b).sum()
        return loss + decay * (W * W).sum() if decay else loss

    # (on the tape: the constant X, three (1100, 300) records, W and W * W)
    assert W.size >= _tape.HANDOVER_AT and 4 * X.size + 2 * W.size >= _tape.PLAN_AT
    value, (gW, gb) = td.value_and_grad(f, argnums=(0, 1))(W, b)
    t = np.tanh(X @ W + b)
    assert value == pytest.approx(float(f(W, b)), rel=1e-12)
    np.testing.assert_allclose(gW, X.T @ (1 - t * t) + 2 * decay * W, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(gb, (1 - t * t).sum(axis=0), rtol=1e-12, atol=1e-10)


def test_a_training_loop_reuses_one_tape_and_plan():
    """One tape, settled after each backward: every step records at the same offsets and
    the backward finds its plan cached (the same object), with each step's gradient."""
    rng = np.random.default_rng(5)
    x = td.tensor(rng.uniform(-1, 1, 1 << 15), requires_grad=True)
    seen = []
    for _ in range(4):
        loss = rosenbrock(x)
        loss.backward()
        tape = loss._tape
        seen.append(tape._groups[1])
        np.testing.assert_allclose(x.grad.numpy(), rosenbrock_grad(x.numpy()), rtol=1e-12,
                                   atol=1e-9)
        with td.no_grad():
            x -= 1e-4 * x.grad
        x.grad = None
    assert seen[0] is not None and all(p is seen[-1] for p in seen[1:])


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_a_second_backward_after_a_fused_one(fused):
    """What a second backward does is the unfused sweep's: through released records it
    raises; with retain_graph the gradients add up, from the root or from an inner value
    (a register of the group)."""
    x0 = np.linspace(0.1, 2.0, 300)
    with eager_fusing(7, on=fused), td.tape() as tape:
        x = td.tensor(x0, requires_grad=True)
        inner = x[1:] - x[:-1] ** 2
        loss = (100.0 * inner ** 2 + (1.0 - x[:-1]) ** 2).sum()
        loss.backward()
        assert (tape._groups is not None and tape._groups[1] is not None) == fused
        with pytest.raises(RuntimeError, match="backward through the graph a second time"):
            loss.backward()
        with pytest.raises(RuntimeError, match="backward through the graph a second time"):
            inner.sum().backward()

        x.grad = None
        inner = x[1:] - x[:-1] ** 2
        loss = (100.0 * inner ** 2 + (1.0 - x[:-1]) ** 2).sum()
        loss.backward(retain_graph=True)
        loss.backward(retain_graph=True)
        np.testing.assert_allclose(x.grad.numpy(), 2 * rosenbrock_grad(x0), rtol=1e-12)
        x.grad = None
        inner.sum().backward()
        expected = np.zeros_like(x0)
        expected[1:] += 1.0
        expected[:-1] -= 2.0 * x0[:-1]
        np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-12)


class _Kernel:
    """A stand-in for a jitted kernel: compiles when its gate opens."""

    def __init__(self) -> None:
        self.overloads: dict = {}
        self.threads: list = []
        self.gate = threading.Event()

    def compile(self, sig) -> None:
        assert self.gate.wait(30)
        self.threads.append(threading.current_thread().name)
        self.overloads[sig] = object()


def test_a_kernel_not_compiled_yet_compiles_behind_once(monkeypatch):
    """Without a compiled or cached kernel, ``kernel_ready`` says no and compiles it in one
    background thread (the backward meanwhile sweeps record by record); once compiled,
    yes.  With ``COMPILE_BEHIND`` false it compiles before answering."""
    monkeypatch.setattr(_tape, "COMPILE_BEHIND", True)
    kernel, args = _Kernel(), (np.zeros(3), 1)
    assert not _tape.kernel_ready(kernel, args, "a kernel")
    _tape.compile_behind()
    assert not _tape.kernel_ready(kernel, args, "a kernel")  # (the same thread still)
    _tape.compile_behind()
    threads = [t for (k, _), t in _tape._BEHIND.items() if k is kernel]
    assert len(threads) == 1 and not _tape._QUEUED
    thread = threads[0]
    kernel.gate.set()
    thread.join(30)
    assert _tape.kernel_ready(kernel, args, "a kernel")
    assert kernel.threads == ["tapediff-compile"]

    monkeypatch.setattr(_tape, "COMPILE_BEHIND", False)
    kernel = _Kernel()
    kernel.gate.set()
    assert _tape.kernel_ready(kernel, args, "a kernel")
    assert kernel.threads == [threading.current_thread().name]


def test_a_process_exiting_during_a_background_compile_finishes_it(tmp_path):
    """A process that ends while a kernel compiles in the background waits for it at exit
    (saying so), so that Numba caches it for the next process."""
    import subprocess
    import sys

    done = tmp_path / "compiled"
    script = f"""
import pathlib, time
import numpy as np
from tapediff._src import _tape

class Kernel:
    overloads = {{}}
    def compile(self, sig):
        time.sleep(1.0)
        self.overloads[sig] = object()
        pathlib.Path({str(done)!r}).write_text("yes")

assert not _tape.kernel_ready(Kernel(), (np.zeros(3),), "a kernel")
_tape.compile_behind()
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert done.read_text() == "yes"
    assert "finishing a compile started in the background before exiting" in run.stderr


def test_a_ready_kernel_is_remembered_by_its_argument_kinds(monkeypatch):
    """Once ``kernel_ready`` found a kernel compiled for some arguments, arguments of the same
    kinds (dtype, dimensions, layout, writeability) answer without Numba's typeof (which
    costs a backward ~40 us per array); another kind is typed and checked again."""
    import numba

    monkeypatch.setattr(_tape, "COMPILE_BEHIND", False)
    kernel = _Kernel()
    kernel.gate.set()
    assert _tape.kernel_ready(kernel, (np.zeros(3), 1), "a kernel")
    typed = []
    real = numba.typeof
    monkeypatch.setattr(numba, "typeof", lambda a: typed.append(a) or real(a))
    assert _tape.kernel_ready(kernel, (np.ones(5), 7), "a kernel")
    assert typed == []
    assert _tape.kernel_ready(kernel, (np.zeros(3, np.float32), 1), "a kernel")
    assert len(typed) == 2 and len(kernel.overloads) == 2
    frozen = np.zeros(3)
    frozen.flags.writeable = False
    assert _tape.kernel_ready(kernel, (frozen, 1), "a kernel")
    assert len(kernel.overloads) == 3


def test_groups_give_way_to_planned_adjoints_when_those_hold_less(monkeypatch):
    """Groups keep adjoints at the values' offsets.  A chain of transcendental records (not
    fused) keeps an adjoint range per record that way, where planning by liveness reuses
    two: then the backward plans by liveness and does not fuse; without the chain it fuses.
    The gradient is the same either way."""
    monkeypatch.setattr(_tape, "PLAN_AT", 0)
    x0 = np.linspace(0.1, 0.9, 200)

    def chain(x, k):
        y = x * 2.0 + 1.0  # a group of two
        for _ in range(k):
            y = td.sin(y)
        return y.sum()

    for k, fused in ((12, False), (0, True)):
        with eager_fusing(7):
            _, (grad,), plan = backward(lambda x: chain(x, k), x0)
        assert (plan is not None) == fused
        with eager_fusing(on=False):
            _, (expected,), _ = backward(lambda x: chain(x, k), x0)
        np.testing.assert_allclose(grad, expected, rtol=1e-13)
