"""Bounded memory: long loops must not make the tape (or the process) grow step after step.

Each loop runs 1,000 steps of a graph of a few MB (a 50,000-element float64 leaf, seven
elementwise operations and a sum per step).  A tape that never drops dead records would
need ~3 GB by the end, so "nbytes after step 50 stays within 4x of what the first 50 steps
needed" and "tracemalloc's peak over steps 500-1000 stays within 1.5x of its peak over
steps 50-100" separate bounded from leaking without depending on the exact growth policy
(the arena may double or halve on any reclamation, hence the slack).  tracemalloc also
sees what nbytes does not: Python-side bookkeeping and arenas of tapes that should have
died.

The loop shapes are the ones users write: forward only and forward+backward inside a
function, script-level loops where the previous step's ``loss`` is still alive while the
next step records, and one ``with td.tape():`` block per step.

Reclamation must also keep whatever is still alive intact: values, dtypes and gradients
of retained graphs must equal a fresh computation after many reclamations.
"""
from __future__ import annotations

import gc
import os
import tracemalloc

import numpy as np
import pytest

import tapediff as td
from tapediff._src import _tape

N = 50_000  # elements of the leaf: ~400 KB per value, ~3.2 MB of values per step
STEPS = 1000
GROWTH = 4.0  # allowed nbytes factor over the first 50 steps
PEAK_GROWTH = 1.5  # allowed tracemalloc peak factor, late window over early window


def f(w, x=None):
    """Seven elementwise operations and a sum (x: optional constant operand)."""
    h = w * 1.5
    h = h + (0.25 if x is None else x)
    h = td.sin(h)
    h = h * w
    h = h - w
    h = td.tanh(h)
    h = h * h
    return h.sum()


def f_np(w, x=0.25):
    t = np.tanh(np.sin(1.5 * w + x) * w - w)
    return float((t * t).sum())


def df_np(w, x=0.25):
    a = 1.5 * w + x
    t = np.tanh(np.sin(a) * w - w)
    return 2 * t * (1 - t * t) * (np.cos(a) * 1.5 * w + np.sin(a) - 1)


@pytest.fixture
def w0():
    return np.linspace(-1.0, 1.0, N)


@pytest.fixture(autouse=True, params=["settle-large", "settle-always"])
def _settle(request, monkeypatch):
    """Every test twice: with the large-tape threshold of ``Tape.settle`` alone (these
    graphs are below it: reclamation happens when an operation needs room) and with every
    backward settling its tape (compacting it in place, as array tapes of a few records
    past ``SETTLE_ARRAYS_AT`` values do by default)."""
    if request.param == "settle-always":
        monkeypatch.setattr(_tape, "SETTLE_AT", 1)
    else:
        monkeypatch.setattr(_tape, "SETTLE_ARRAYS_AT", _tape.SETTLE_AT)


def _settling() -> bool:
    return _tape.SETTLE_AT <= 1


@pytest.fixture(autouse=True)
def _tracing():
    """tracemalloc for the test's duration (left as found if it was already tracing)."""
    gc.collect()
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    yield
    if started:
        tracemalloc.stop()


def _run(step, steps=STEPS):
    """Run ``step(i)`` for i < steps; return the tapes' nbytes after each step and the
    tracemalloc peaks over steps 50-100 and over the second half.

    ``step`` returns the tape it recorded on, or None for the thread's default tape.
    """
    nbytes = []
    early = late = None
    for i in range(steps):
        if i == 50 or i == steps // 2:
            tracemalloc.reset_peak()
        t = step(i)
        nbytes.append((t if t is not None else td.current_tape()).nbytes)
        if i == 100:
            early = tracemalloc.get_traced_memory()[1]
    late = tracemalloc.get_traced_memory()[1]
    return nbytes, early, late


def _assert_bounded(nbytes, early, late, check_nbytes=True):
    if check_nbytes:
        base = max(nbytes[:51])
        worst = max(nbytes[50:])
        assert worst <= GROWTH * base, (
            f"tape grew from {base} bytes (first 50 steps) to {worst} bytes; "
            f"at steps 100/500/999: {nbytes[100]}, {nbytes[500]}, {nbytes[-1]}")
    assert late <= PEAK_GROWTH * early, (
        f"traced memory peak grew from {early / 1e6:.1f} MB (steps 50-100) "
        f"to {late / 1e6:.1f} MB (second half)")


# ---------------------------------------------------------------------------------------------
# loop shapes on the default tape
# ---------------------------------------------------------------------------------------------
def test_forward_only_inside_a_function(w0):
    w = td.tensor(w0, requires_grad=True)
    values = []

    def step(i):
        values.append(f(w).item())

    nbytes, early, late = _run(step)
    _assert_bounded(nbytes, early, late)
    assert values[0] == pytest.approx(f_np(w0), rel=1e-12)
    assert values[-1] == values[0]
    assert w.grad is None


def test_forward_backward_with_updates_inside_a_function(w0):
    # The in-place update bumps w's version every step, so every step records a new value
    # of the leaf: the old ones must be dropped too.
    w = td.tensor(w0, requires_grad=True)
    lr = 1e-3
    ref = w0.copy()

    def step(i):
        nonlocal ref, w  # w: the in-place update rebinds the name (to the same tensor)
        loss = f(w)
        loss.backward()
        with td.no_grad():
            w -= lr * w.grad
        w.grad = None
        if i < 3:  # the loop does what it should (checked on the first steps only)
            ref = ref - lr * df_np(ref)
            np.testing.assert_allclose(w.numpy(), ref, rtol=1e-12, atol=1e-15)

    nbytes, early, late = _run(step)
    _assert_bounded(nbytes, early, late)


def test_script_level_loop_with_backward(w0):
    # The previous step's loss is alive (bound to the name) while the next step records.
    w = td.tensor(w0, requires_grad=True)
    history = []
    nbytes = []
    early = None
    loss = None
    for step in range(STEPS):
        if step == 50 or step == STEPS // 2:
            tracemalloc.reset_peak()
        loss = f(w)
        loss.backward()
        history.append(loss.item())
        nbytes.append(td.current_tape().nbytes)
        if step == 100:
            early = tracemalloc.get_traced_memory()[1]
    late = tracemalloc.get_traced_memory()[1]
    _assert_bounded(nbytes, early, late)
    assert history[0] == pytest.approx(f_np(w0), rel=1e-12)
    np.testing.assert_allclose(w.grad.numpy(), STEPS * df_np(w0), rtol=1e-9)
    del loss


def test_script_level_loop_without_backward(w0):
    # Each live loss keeps its whole (unreleased) graph: two steps' worth at most.
    w = td.tensor(w0, requires_grad=True)
    history = []
    nbytes = []
    early = None
    loss = None
    for step in range(STEPS):
        if step == 50 or step == STEPS // 2:
            tracemalloc.reset_peak()
        loss = f(w)
        history.append(loss.item())
        nbytes.append(td.current_tape().nbytes)
        if step == 100:
            early = tracemalloc.get_traced_memory()[1]
    late = tracemalloc.get_traced_memory()[1]
    _assert_bounded(nbytes, early, late)
    # the last loss still differentiates after all those reclamations
    loss.backward()
    np.testing.assert_allclose(w.grad.numpy(), df_np(w0), rtol=1e-12, atol=1e-15)


def test_nbytes_stays_near_one_step_of_graph(w0):
    # An absolute bound besides the relative one: a few graphs' worth (values + adjoints,
    # with the arena's doubling slack), far below 1,000 steps' worth.
    w = td.tensor(w0, requires_grad=True)
    step_bytes = 8 * N * 8  # the leaf and seven 50k-element float64 values per step
    worst = 0
    for _ in range(200):
        f(w).backward()
        worst = max(worst, td.current_tape().nbytes)
    assert worst <= 24 * step_bytes, worst


def test_scalar_script_loop_stays_bounded():
    # Scalar code records one tiny record per operation: 10,000 steps of it must recycle
    # the records instead of growing the tape.
    x = td.tensor(0.3, requires_grad=True)
    nbytes, records = [], []
    for step in range(10_000):
        y = x * x * 3.0 + td.sin(x) - x / 4.0
        y.backward()
        nbytes.append(td.current_tape().nbytes)
        records.append(len(td.current_tape()))
    assert max(nbytes[1000:]) <= GROWTH * max(nbytes[:1001])
    assert max(records) < 10_000, "records of dead scalar graphs were never reclaimed"
    assert x.grad.item() == pytest.approx(10_000 * (6 * 0.3 + np.cos(0.3) - 0.25), rel=1e-9)


def test_mixed_scalar_and_array_graphs_across_reclamations(w0):
    # Scalar records are written with only a few fields set; the others must hold their
    # defaults even in slots freed by a reclamation of array records.  Every gradient is
    # checked, across many reclamations.
    tape = td.current_tape()
    w = td.tensor(w0, requires_grad=True)
    drops, last = 0, len(tape)
    for step in range(120):
        if step % 3 == 0:
            loss = f(w)
            loss.backward()
            if step % 30 == 0:
                np.testing.assert_allclose(w.grad.numpy(), df_np(w0), rtol=1e-12,
                                           atol=1e-15)
            w.grad = None
        s0 = 0.5 + step % 7
        s = td.tensor(s0, requires_grad=True)
        c = td.tensor(2.0)
        y = (s * s + s * c) / 3.0 - td.sin(s) + td.exp(s * 0.1)
        y.backward()
        assert s.grad.item() == pytest.approx((2 * s0 + 2) / 3 - np.cos(s0)
                                              + 0.1 * np.exp(0.1 * s0), rel=1e-13), step
        drops += len(tape) < last
        last = len(tape)
    assert drops >= 3 or _settling()  # (settling compacts after every backward)


# ---------------------------------------------------------------------------------------------
# one tape block per step
# ---------------------------------------------------------------------------------------------
def test_each_step_in_its_own_tape_block(w0):
    w = td.tensor(w0, requires_grad=True)
    losses = []

    def step(i):
        with td.tape() as t:
            loss = f(w)
            loss.backward()
        losses.append(loss.item())
        w.grad = None
        return t

    nbytes, early, late = _run(step)
    _assert_bounded(nbytes, early, late)
    assert losses[0] == pytest.approx(f_np(w0), rel=1e-12) and losses[-1] == losses[0]


def test_each_step_in_its_own_tape_block_with_prebuilt_data():
    # The usual dataset loop: the batches are tensors built once, each used in its step's
    # tape block.  Holding the data must not hold the dead tapes (and their arenas) of the
    # steps that used it.
    m, steps = 2_000, 400
    rng = np.random.default_rng(1)
    data = [td.tensor(rng.normal(size=m)) for _ in range(steps)]
    w0 = np.linspace(-1.0, 1.0, m)
    w = td.tensor(w0, requires_grad=True)
    early = None
    for i, x in enumerate(data):
        if i == 50 or i == steps - 100:
            tracemalloc.reset_peak()
        with td.tape():
            loss = f(w, x)
            loss.backward()
        if i in (0, steps - 1):
            np.testing.assert_allclose(w.grad.numpy(), df_np(w0, x.numpy()), rtol=1e-10,
                                       atol=1e-14)
        w.grad = None
        if i == 100:
            early = tracemalloc.get_traced_memory()[1]
    late = tracemalloc.get_traced_memory()[1]
    assert late <= PEAK_GROWTH * early + 1_000_000, (
        f"traced memory peak grew from {early / 1e6:.1f} MB (steps 50-100) "
        f"to {late / 1e6:.1f} MB (last 100 steps)")


# ---------------------------------------------------------------------------------------------
# explicit reclamation
# ---------------------------------------------------------------------------------------------
def _big_graph(w):
    h = w
    for _ in range(10):
        h = td.sin(h) * 1.01
    return h.sum()


def test_reclaim_after_release_shrinks_the_default_tape():
    tape = td.current_tape()
    w = td.tensor(np.linspace(0.0, 1.0, 200_000), requires_grad=True)
    loss = _big_graph(w)
    loss.backward()  # releases the graph
    big = tape.nbytes
    assert big > 20 * 200_000 * 8  # 20 values of 200k elements, plus adjoints
    tape.reclaim()
    # What is left: the released loss (a scalar) and the leaf's 200k values.
    assert tape.nbytes < big / 4, (big, tape.nbytes)
    np.testing.assert_array_equal(w.numpy(), np.linspace(0.0, 1.0, 200_000))
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()  # still released after compaction


def test_reclaim_of_a_dead_graph_returns_a_tape_to_its_initial_size():
    with td.tape() as t:
        initial = t.nbytes
        assert td.current_tape() is t
        w = td.tensor(np.linspace(0.0, 1.0, 200_000), requires_grad=True)
        loss = _big_graph(w)
        loss.backward()
        big = t.nbytes
        del w, loss
        gc.collect()
        td.current_tape().reclaim()
        assert t.nbytes <= initial < big / 50, (initial, big, t.nbytes)  # 20 values of 1.6 MB
        assert len(t) == 0


def test_unreleased_dead_graph_is_reclaimed_too():
    # forward-only: nothing is released, but nothing live reaches the records either
    with td.tape() as t:
        w = td.tensor(np.linspace(0.0, 1.0, 200_000), requires_grad=True)
        _big_graph(w)
        big = t.nbytes
        t.reclaim()
        assert len(t) == 1  # the leaf's value, cached while w is alive and unchanged
        assert t.nbytes < big / 4


def _intervening_work(tape, steps=150):
    """Many operations on the current tape (other leaves); return how many times the
    tape's record count went down, i.e. how many reclamations were seen."""
    other = td.tensor(np.linspace(-2.0, 2.0, N), requires_grad=True)
    drops, last = 0, len(tape)
    for i in range(steps):
        loss = f(other)
        if i % 2:
            loss.backward()
        n = len(tape)
        drops += n < last
        last = n
    return drops


def test_retained_graph_survives_many_reclamations(w0):
    tape = td.current_tape()
    w = td.tensor(w0, requires_grad=True)
    h = td.sin(w * 1.5)  # a live intermediate
    y = (h * w).sum() + f(w)
    y.backward(retain_graph=True)
    first = w.grad.numpy()
    expected_grad = np.cos(1.5 * w0) * 1.5 * w0 + np.sin(1.5 * w0) + df_np(w0)
    np.testing.assert_allclose(first, expected_grad, rtol=1e-12, atol=1e-14)

    drops = _intervening_work(tape)
    for i in range(20):  # w itself keeps being used (same value) on the same tape
        (w * float(i)).sum()
    assert drops >= 3, "the intervening work should have made the tape reclaim"

    np.testing.assert_array_equal(h.numpy(), np.sin(w0 * 1.5))
    assert y.item() == pytest.approx(float((np.sin(1.5 * w0) * w0).sum()) + f_np(w0),
                                     rel=1e-12)
    assert y.grad_fn == "<AddBackward0>" and h.grad_fn == "<SinBackward0>"
    w.grad = None
    y.backward(retain_graph=True)
    np.testing.assert_array_equal(w.grad.numpy(), first)  # the same sweep as before
    (h * 2.0).sum().backward()  # the live intermediate is still a working graph node
    np.testing.assert_allclose(w.grad.numpy(), first + 2 * 1.5 * np.cos(1.5 * w0),
                               rtol=1e-12, atol=1e-14)


def test_a_loop_of_array_steps_records_into_the_same_place(monkeypatch, w0):
    """A tape of a few array records settles after each backward once it holds
    ``SETTLE_ARRAYS_AT`` values: every step then records its values at the same offsets
    (warm memory), and the gradients are those of the first step."""
    monkeypatch.setattr(_tape, "SETTLE_ARRAYS_AT", 1 << 16)
    assert 8 * len(w0) >= 1 << 16  # f records about eight values of len(w0) a step
    tape = td.tape()
    w = td.tensor(w0, requires_grad=True)
    starts, grads = set(), []
    for _ in range(6):
        w.grad = None
        with tape:
            loss = f(w)
        first = tape.off[w._leaf_record.slot + 1]  # the step's first record after the leaf
        loss.backward()
        starts.add((int(first), tape.top, tape.vtop))
        grads.append(w.grad.numpy())
    assert len(starts) == 1
    for g in grads[1:]:
        np.testing.assert_array_equal(g, grads[0])
    np.testing.assert_allclose(grads[0], df_np(w0), rtol=1e-12, atol=1e-14)


def _arenas(t) -> list:
    return [a for a in (t.val, t.adj, t.val32, t.adj32, t._padj, t._padj32) if a is not None]


def test_a_product_hands_its_leaf_gradient_over_without_a_copy(monkeypatch):
    """A leaf that one matrix product alone reads gets its adjoint in an array of its own,
    which becomes its ``.grad``: not a view of any arena, unchanged by later steps, and the
    same numbers as the closed form; a leaf read by other records too (a second product, a
    penalty, a concatenation) takes the arena's path, with the right gradient."""
    handed = []
    matmul_into = _tape.Tape._matmul_into

    def spy(self, s, *args):
        matmul_into(self, s, *args)
        handed.append(s in self._handed)

    monkeypatch.setattr(_tape.Tape, "_matmul_into", spy)
    monkeypatch.setattr(_tape, "HANDOVER_AT", 2)  # (these leaves are small)
    rng = np.random.default_rng(7)
    X, W0 = rng.standard_normal((10, 20)), rng.standard_normal((20, 30))
    w = td.tensor(W0, requires_grad=True)
    tape = td.tape()
    grads = []
    for step in range(3):
        Xs = X * (step + 1)
        w.grad = None
        with tape:
            loss = td.tanh(Xs @ w).sum()
        loss.backward()
        g = w.grad.numpy()
        assert not any(np.shares_memory(g, a) for a in _arenas(tape))
        np.testing.assert_allclose(g, Xs.T @ (1 - np.tanh(Xs @ W0) ** 2), rtol=1e-12)
        grads.append((g, g.copy()))
    assert handed == [True] * 3
    for g, snapshot in grads:  # later steps wrote nowhere near an earlier .grad
        np.testing.assert_array_equal(g, snapshot)
    # accumulation: a second backward adds into the handed .grad
    with tape:
        loss = td.tanh(X @ w).sum()
    loss.backward()
    np.testing.assert_allclose(w.grad.numpy(), grads[-1][1] + X.T @ (1 - np.tanh(X @ W0) ** 2),
                               rtol=1e-12)
    # read by more than the product
    ones = np.ones((10, 30))
    cases = {
        "two products": (lambda: (X @ w).sum() + (X @ w * 2.0).sum(), 3 * X.T @ ones),
        "a penalty": (lambda: (X @ w).sum() + (w * w).sum(), X.T @ ones + 2 * W0),
        "a concatenation": (lambda: td.concatenate([X @ w, w]).sum(), X.T @ ones + 1.0),
    }
    for name, (f, want) in cases.items():
        w.grad = None
        with tape:
            loss = f()
        handed.clear()
        loss.backward()
        assert not any(handed), name
        np.testing.assert_allclose(w.grad.numpy(), want, rtol=1e-12, err_msg=name)


def test_values_taken_from_recorded_tensors_survive_reclamations(w0):
    # Values handed out from a recorded tensor (detach, np.asarray, no_grad results) must
    # not share storage a later reclamation writes into, whatever the arena reuse policy.
    # The values are taken in the middle of a steady loop (arena size settled), so that an
    # arena recycled by a later reclamation would be the very one they were taken from.
    tape = td.current_tape()
    w = td.tensor(w0, requires_grad=True)
    for _ in range(30):
        f(w).backward()
    h = td.sin(w * 2.0)
    expected = np.sin(w0 * 2.0)
    taken = {"detach": h.detach(), "tensor": td.tensor(h)}
    with td.no_grad():
        taken["asarray"] = np.asarray(h)
        taken["slice"] = h[10:1000]
        taken["sum"] = h.sum(axis=0, keepdims=True)
    values = {k: np.array(v) for k, v in taken.items()}
    np.testing.assert_array_equal(values["detach"], expected)
    del h
    drops, last = 0, len(tape)
    for _ in range(100):
        f(w).backward()
        drops += len(tape) < last
        last = len(tape)
    assert drops >= 3 or _settling()  # (settling compacts after every backward)
    for k, v in taken.items():
        np.testing.assert_array_equal(np.array(v), values[k], err_msg=k)


def test_reclamation_keeps_float32_values_and_dtype():
    x0 = np.linspace(-1.0, 1.0, 1000, dtype=np.float32)
    x = td.tensor(x0, requires_grad=True)
    y = x * 3.0
    assert y.dtype == np.float32
    expected = y.numpy()
    td.current_tape().reclaim()
    assert y.dtype == np.float32, "reclamation changed a live float32 tensor's dtype"
    assert repr(y).endswith("dtype=float32, grad_fn=<MulBackward0>)")
    np.testing.assert_array_equal(y.numpy(), expected)
    y.sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad.numpy(), np.full(1000, 3.0, np.float32))


def test_old_graph_keeps_its_leaf_after_update_and_reclamation(w0):
    # A graph recorded before an in-place update differentiates with the old value, and
    # still delivers the gradient to the leaf once the tape has reclaimed in between.
    w = td.tensor(w0, requires_grad=True)
    old = (w * w).sum()
    with td.no_grad():
        w -= 1.0
    new = (w * w).sum()  # records the leaf's new value
    td.current_tape().reclaim()
    old.backward()
    assert w.grad is not None, "the old graph's gradient never reached the leaf"
    np.testing.assert_array_equal(w.grad.numpy(), 2 * w0)
    new.backward()
    np.testing.assert_array_equal(w.grad.numpy(), 2 * w0 + 2 * (w0 - 1.0))


def test_a_leaf_read_by_many_operations_is_recorded_once_per_value(w0):
    """Operations read a leaf through its cached record: one LEAF record however many
    operations read it, another once an in-place update changed its value; a float32 leaf
    read by a float64 operation goes through a cast.  The gradients are the closed forms."""
    from tapediff._src import _kernels as K

    with td.tape() as tape:
        w = td.tensor(w0, requires_grad=True)
        loss = (w * 2.0 + w * w + (w - 1.0) * w).sum()
        assert int((tape.op[:tape.top] == K.OP_LEAF).sum()) == 1
        with td.no_grad():
            w += 1.0
        loss2 = (w * w + w).sum()
        assert int((tape.op[:tape.top] == K.OP_LEAF).sum()) == 2
        loss.backward()
        np.testing.assert_allclose(w.grad.numpy(), 2.0 + 4 * w0 - 1.0, rtol=1e-14, atol=1e-14)
        w.grad = None
        loss2.backward()
        np.testing.assert_allclose(w.grad.numpy(), 2 * (w0 + 1.0) + 1.0, rtol=1e-14, atol=1e-14)

        v = td.tensor(w0.astype(np.float32), requires_grad=True)
        mixed = (v * td.tensor(w0) + v * 3.0).sum()  # (v * 3.0 stays float32: cast too)
        assert mixed.dtype == np.float64 and int((tape.op[:tape.top] == K.OP_CAST).sum()) == 2
        mixed.backward()
        assert v.grad.dtype == np.float32
        np.testing.assert_allclose(v.grad.numpy(), w0 + 3.0, rtol=1e-6)


def test_graph_keeps_its_leaf_after_the_leaf_was_used_on_another_tape(w0):
    # Using a leaf on an inner tape must not cut it off from a graph on the default tape,
    # however often the default tape reclaims afterwards.
    w = td.tensor(w0, requires_grad=True)
    y = (w * w).sum()
    with td.tape():
        z = (w * 3.0).sum()
    td.current_tape().reclaim()
    y.backward()
    assert w.grad is not None, "the default tape's graph lost its leaf"
    np.testing.assert_array_equal(w.grad.numpy(), 2 * w0)
    z.backward()
    np.testing.assert_array_equal(w.grad.numpy(), 2 * w0 + 3.0)


def _settling_loop(w, v, kept):
    tape = td.current_tape()
    for step in range(12):
        junk = td.exp(w * 0.1).sum() * 0.0  # dead after the step: its values are dropped
        h = td.sin(w * (step + 1.0))
        row, col, flat = h[3], h.T[:, 2], h.reshape(-1)  # a view, a transpose, an alias
        r = (td.tanh(v * 0.5) * (step + 1)).sum()  # float32 arena
        retained = (h * h).sum()
        loss = h.sum() + r + junk
        loss.backward(retain_graph=True)  # h's records stay: retained still differentiates
        kept.append((step, h, row, col, flat, r, retained))
        assert tape._spare is None and tape._spare32 is None  # one arena of each kind
        # what is left: the live values, this step's and those kept from earlier steps
        assert tape.vtop <= (step + 1) * 12 * w.size, (step, tape.vtop)


def test_settling_keeps_live_values_views_and_retained_graphs(monkeypatch):
    """A settle (after each backward of a large tape) moves live values within the arena:
    every live tensor, view, alias, leaf record and retained graph must read the same
    values and give the same gradients as before; no spare arena is kept."""
    monkeypatch.setattr(_tape, "SETTLE_AT", 1)
    rng = np.random.default_rng(3)
    w0, v0 = rng.standard_normal((40, 30)), rng.standard_normal(30).astype(np.float32)
    w = td.tensor(w0, requires_grad=True)
    v = td.tensor(v0, requires_grad=True)
    kept = []
    with td.tape():
        _settling_loop(w, v, kept)
    for step, h, row, col, flat, r, retained in kept:
        want = np.sin(w0 * (step + 1.0))
        np.testing.assert_array_equal(h.numpy(), want)
        np.testing.assert_array_equal(row.numpy(), want[3])
        np.testing.assert_array_equal(col.numpy(), want.T[:, 2])
        np.testing.assert_array_equal(flat.numpy(), want.reshape(-1))
        assert r.dtype == np.float32
        np.testing.assert_allclose(r.item(), (np.tanh(v0 * 0.5) * (step + 1)).sum(), rtol=1e-5)
        w.grad = None
        retained.backward()  # a graph kept alive across 12 settles still differentiates
        np.testing.assert_allclose(w.grad.numpy(), 2 * want * np.cos(w0 * (step + 1.0)) *
                                   (step + 1.0), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# large arenas grow where they lie
# ---------------------------------------------------------------------------------------------
def _sin_chain(steps: int, n: int = 300_000):
    """A chain h <- 1.01 sin(h) on a fresh tape, with its value and gradient in NumPy."""
    x = np.linspace(-1.0, 1.0, n)
    with td.tape() as t:
        w = td.tensor(x, requires_grad=True)
        h, v, d = w, x, np.ones(n)
        firsts = []
        for k in range(steps):
            h = td.sin(h) * 1.01
            d = d * np.cos(v) * 1.01
            v = np.sin(v) * 1.01
            if k < 3:
                firsts.append((h, v))
        loss = h.sum()
    return t, w, h, v, d, loss, firsts


def test_a_large_arena_grows_in_place_and_keeps_every_value():
    """Past 8 MB the arena lies in a reserved region and grows there: no value moves (the
    records made before, and the input views an operation took before its reservation,
    stay valid), and values and gradients are those of NumPy."""
    t, w, h, v, d, loss, firsts = _sin_chain(3)
    assert _tape._region_of(t.val) is not None
    start, cap = t.val.ctypes.data, len(t.val)
    with t:
        for _ in range(40):  # ~100 MB more: several doublings
            h = td.sin(h) * 1.01
            d = d * np.cos(v) * 1.01
            v = np.sin(v) * 1.01
        loss = h.sum()
    assert len(t.val) >= 4 * cap and t.val.ctypes.data == start
    for early, expected in firsts:
        np.testing.assert_allclose(early.numpy(), expected, rtol=1e-13)
    np.testing.assert_allclose(h.numpy(), v, rtol=1e-12)
    loss.backward()
    np.testing.assert_allclose(w.grad.numpy(), d, rtol=1e-10, atol=1e-300)


def test_value_and_adjoint_arenas_start_apart_modulo_2_mb(monkeypatch):
    """Reserved regions are mapped a fixed distance apart; each arena starts at its own
    offset into its region, so that a value and the adjoint at the same offset (an unplanned
    sweep) do not share cache sets.  Values and gradients are unaffected."""
    monkeypatch.setattr(_tape, "_POOL", [])
    n = _tape.REGION_AT // 8 + 1000
    x0 = np.random.default_rng(5).random(n)
    x = td.tensor(x0, requires_grad=True)
    with td.tape() as t:
        y = td.sum(x * x)
    assert t.sweep(y._slot, np.ones(1), True) is not None
    starts = [a.ctypes.data for a in (t.val, t.adj)]
    assert all(_tape._region_of(a) is not None for a in (t.val, t.adj))
    assert starts[0] % (2 << 20) != starts[1] % (2 << 20)
    np.testing.assert_allclose(t.adjoint_view(x._leaf_record.slot), 2 * x0, rtol=1e-15)
    aligned = [_tape._arena(n, np.float64) for _ in range(3)]
    assert len({a.ctypes.data % (2 << 20) for a in aligned}) == 3
    assert all(a.ctypes.data % 64 == 0 for a in aligned)


def test_without_reserved_regions_arenas_are_plain_arrays(monkeypatch):
    """Where the kernel refuses the reservation (a strict overcommit policy), arenas are
    ordinary arrays that move when they grow; results are the same."""
    def refuse(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(_tape.mmap, "mmap", refuse)
    monkeypatch.setattr(_tape, "_POOL", [])  # (no region left by an earlier test either)
    t, w, h, v, d, loss, firsts = _sin_chain(30)
    assert _tape._region_of(t.val) is None and len(t.val) * 8 > _tape.REGION_AT
    for early, expected in firsts:
        np.testing.assert_allclose(early.numpy(), expected, rtol=1e-13)
    np.testing.assert_allclose(h.numpy(), v, rtol=1e-12)
    loss.backward()
    np.testing.assert_allclose(w.grad.numpy(), d, rtol=1e-10, atol=1e-300)


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS (Linux)")
def test_reclaim_lets_go_of_a_region():
    """An explicit ``reclaim`` after the graph is gone moves what is left into a small arena
    and unmaps the region: the pages written there (~300 MB of values and adjoints) leave the
    process's resident set."""
    t, w, h, v, d, loss, firsts = _sin_chain(60)
    loss.backward()
    start = t.val.ctypes.data
    assert _tape._region_of(t.val) is not None
    del h, loss, firsts
    gc.collect()
    before = _rss()
    t.reclaim()
    assert t.val.ctypes.data != start and t.nbytes < 64 << 20
    assert before - _rss() > 200 << 20, (before, _rss())
    np.testing.assert_allclose(w.grad.numpy(), d, rtol=1e-10, atol=1e-300)


def _region_calls(n_calls: int, keep: list | None = None) -> tuple:
    """``td.value_and_grad`` of a ~24 MB program called ``n_calls`` times (each call records
    on a private tape); the regions its arenas used, per call."""
    x0 = np.linspace(0.0, 1.0, 3_000_000)
    used = []

    def f(x):
        y = td.exp(x) * 2.0
        region = _tape._region_of(_tape.current_tape().val)
        used.append(None if region is None else id(region))
        if keep is not None:
            keep.append(y._v)  # the arena's own view (public conversions copy), kept
        return (y * x).sum()

    step = td.value_and_grad(f)
    results = [step(x0 * (k + 1)) for k in range(n_calls)]
    return x0, used, results


def test_private_tapes_reuse_the_regions_of_the_last_call(monkeypatch):
    """value_and_grad records on a private tape per call; the next call's arenas are the
    regions the last one left (already faulted in): no call after the first maps memory."""
    gc.collect()
    mapped = []

    class Counting(_tape.mmap.mmap):  # (a subclass: the arena code checks isinstance)
        def __new__(cls, *args, **kwargs):
            mapped.append(1)
            return super().__new__(cls, *args, **kwargs)

    monkeypatch.setattr(_tape.mmap, "mmap", Counting)
    monkeypatch.setattr(_tape, "_POOL", [])
    x0, used, results = _region_calls(1)
    first = len(mapped)
    assert first and used[0] is not None
    x0, used, results = _region_calls(3)
    assert len(mapped) == first  # no later call mapped memory
    for k, (value, g) in enumerate(results):
        x = x0 * (k + 1)
        np.testing.assert_allclose(value, (2 * np.exp(x) * x).sum(), rtol=1e-12)
        np.testing.assert_allclose(g, 2 * np.exp(x) * (1 + x), rtol=1e-12)


def test_a_region_an_array_still_views_is_not_reused():
    """An array kept from a call that views its arena holds the region: later calls take
    other memory, and the array keeps its values.  (Public conversions, ``.numpy()``,
    ``detach()``, copy; the guard is for any view that outlives its tape.)"""
    gc.collect()
    keep: list = []
    x0, used, _ = _region_calls(3, keep)  # (regions pooled by earlier tests may serve too)
    assert None not in used and len(set(used)) == 3
    for k, y in enumerate(keep):
        np.testing.assert_array_equal(y, np.exp(x0 * (k + 1)) * 2.0)
    del keep, used
    gc.collect()
    assert len(_tape._POOL) <= _tape._POOL_MAX


def test_private_tapes_in_threads_share_the_pool_safely():
    """Threads calling value_and_grad at once each get a region nothing else uses."""
    import threading
    x0 = np.linspace(0.0, 1.0, 2_000_000)
    step = td.value_and_grad(lambda x: (td.sin(x) * x).sum())
    errors = []

    def work(scale):
        for _ in range(6):
            x = x0 * scale
            value, g = step(x)
            if not (np.allclose(g, np.cos(x) * x + np.sin(x), rtol=1e-12)
                    and np.isclose(value, (np.sin(x) * x).sum(), rtol=1e-12)):
                errors.append(scale)

    threads = [threading.Thread(target=work, args=(s,)) for s in (1.0, 2.0, 3.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# ---------------------------------------------------------------------------------------------
# adjoint storage by liveness
# ---------------------------------------------------------------------------------------------
def _programs():
    """Array programs through every kind of reverse rule: elementwise (scalar operands,
    broadcasts, a value used many times), restrides, gathers (rows and elements), scatters,
    where, max, prod, scans, concatenation, matmul, a float32 part with casts, and NumPy's
    large-record adjoints."""
    rng = np.random.default_rng(7)
    a0, b0 = rng.normal(size=(40, 30)), rng.normal(size=(30,))
    idx = rng.integers(0, 40, 25)

    def program(a, b):
        h = td.tanh(a * b + 0.5) * a  # a used twice, b broadcast along rows
        s = h[idx] @ h[:30].T  # row gather, basic slice, transpose, matmul
        m = td.where(s > 0, s, s * 0.1).max(axis=1).sum()
        c = td.concatenate([h[:, :5], a[:, 10:12] ** 3, td.cumsum(h, axis=0)[:, :2]], axis=1)
        p = td.prod(td.sigmoid(c[:8]), axis=0).sum()
        f = (td.sinh(a.astype(np.float32) * 0.1) * 2.0).sum().astype(np.float64)
        big = td.softplus(td.tile(b, 100)).sum()  # 3,000 elements: NumPy's adjoint
        sc = a.at[idx, 3].add(b[:25]).sum()
        return m + c.sum() + p + f + big + sc * h[0, 0]

    return program, a0, b0


def _grads(program, a0, b0):
    with td.tape() as t:
        a = td.tensor(a0, requires_grad=True)
        b = td.tensor(b0, requires_grad=True)
        loss = program(a, b)
    values = t.vtop + t.vtop32
    loss.backward(retain_graph=True)
    first = a.grad.numpy().copy(), b.grad.numpy().copy()
    loss.backward()  # accumulates: a second sweep of the same records
    return values, len(t._padj), first, (a.grad.numpy(), b.grad.numpy())


def test_a_planned_sweep_gives_the_same_gradients_bit_for_bit(monkeypatch):
    """A backward that keeps adjoints only while they are live (``plan_adjoints``) runs the
    same rules in the same order as one with an adjoint range per record: the gradients are
    identical, also when a retained graph is swept a second time."""
    program, a0, b0 = _programs()
    monkeypatch.setattr(_tape, "PLAN_AT", 1 << 62)
    _, planned, first, second = _grads(program, a0, b0)
    assert planned == 0  # no planned adjoint arena
    monkeypatch.setattr(_tape, "PLAN_AT", 0)
    values, planned, pfirst, psecond = _grads(program, a0, b0)
    assert 0 < planned < values
    for x, y in zip(first + second, pfirst + psecond):
        np.testing.assert_array_equal(x, y)


def test_a_planned_chain_keeps_two_adjoints_live():
    """Down a chain of large records the plan keeps the adjoint being read and the one being
    written: the adjoint arena holds ~2-3 records where the values hold all of them."""
    n = 400_000  # 3.2 MB per record: the tape passes PLAN_AT
    with td.tape() as t:
        w = td.tensor(np.linspace(-1.0, 1.0, n), requires_grad=True)
        h = w
        for _ in range(12):
            h = td.sin(h) * 1.01
        loss = h.sum()
    values = t.vtop
    loss.backward()
    assert 0 < len(t._padj) <= 4 * n < values / 5
    d, v = np.ones(n), np.linspace(-1.0, 1.0, n)
    for _ in range(12):
        d, v = d * np.cos(v) * 1.01, np.sin(v) * 1.01
    np.testing.assert_allclose(w.grad.numpy(), d, rtol=1e-12)
