"""Threads: each thread records on its own default tape, with its own grad mode and its own
stack of ``with td.tape()`` blocks, so threads differentiating at the same time cannot
disturb each other.

The worker threads start together (a barrier) and the interpreter's switch interval is
shortened so that they interleave inside operations, not just between loop iterations; the
jitted sweeps release the GIL, which interleaves them further.  Workers never assert
directly (an exception in a thread would be lost): they return their findings, and the
main thread checks them.
"""
from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

import tapediff as td

M = 2_000  # elements per leaf: big enough for reclamations and GIL-free sweeps
ITERS = 400


@pytest.fixture(autouse=True)
def _fast_switching():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(old)


def _run_threads(targets):
    """Start ``targets`` (callables taking a barrier) together; return their results."""
    barrier = threading.Barrier(len(targets))
    results = [None] * len(targets)

    def wrap(k, fn):
        try:
            results[k] = fn(barrier)
        except BaseException as e:  # noqa: BLE001 - reported to the main thread
            barrier.abort()
            results[k] = e

    threads = [threading.Thread(target=wrap, args=(k, fn)) for k, fn in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a worker thread hung"
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


# Four functions with closed-form gradients: (tapediff function, gradient in NumPy).
def _f0(w):
    return (w * w * 3.0).sum()


def _g0(w):
    return 6.0 * w


def _f1(w):
    return td.sin(w).sum() + (w * 2.0).sum()


def _g1(w):
    return np.cos(w) + 2.0


def _f2(w):
    return (td.exp(w * 0.5) / (w * w + 1.0)).sum()


def _g2(w):
    q = w * w + 1.0
    return np.exp(0.5 * w) * (0.5 / q - 2.0 * w / q ** 2)


def _f3(w):
    return (td.tanh(w) * w).mean()


def _g3(w):
    t = np.tanh(w)
    return ((1 - t * t) * w + t) / w.size


FUNCS = [(_f0, _g0), (_f1, _g1), (_f2, _g2), (_f3, _g3)]


def _worker(k, iters=ITERS, shared=None):
    fn, grad = FUNCS[k]

    def run(barrier):
        rng = np.random.default_rng(k)
        w0 = rng.uniform(-2.0, 2.0, M)
        w = td.tensor(w0, requires_grad=True)
        tape = td.current_tape()
        barrier.wait()
        bad = []
        for i in range(iters):
            y = fn(w)
            if shared is not None:  # read the shared constant too (adds nothing)
                y = y + (w * shared).sum() * 0.0
            y.backward()
            if not np.allclose(w.grad.numpy(), grad(w0), rtol=1e-12, atol=1e-14):
                bad.append(i)
            w.grad = None
        return {"tape": tape, "bad": bad, "same_tape": td.current_tape() is tape}

    return run


def test_threads_differentiate_different_functions_at_once():
    results = _run_threads([_worker(k) for k in range(4)])
    for k, r in enumerate(results):
        assert r["bad"] == [], f"thread {k}: wrong gradients at iterations {r['bad'][:10]}"
        assert r["same_tape"]
    tapes = [r["tape"] for r in results] + [td.current_tape()]
    assert len({id(t) for t in tapes}) == 5, "each thread needs its own default tape"


def test_threads_differentiate_scalar_code_at_once():
    # Scalar code takes the library's fast path (Python floats, one small record per
    # operation); four threads run different scalar functions on their own tapes.
    rules = [
        (lambda x: x * x * x - x * 2.0, lambda v: 3 * v * v - 2),
        (lambda x: td.sin(x) * x, lambda v: np.cos(v) * v + np.sin(v)),
        (lambda x: td.exp(x * 0.5) / (x + 3.0), lambda v: np.exp(0.5 * v) * (0.5 / (v + 3)
                                                                          - 1 / (v + 3) ** 2)),
        (lambda x: td.sqrt(x * x + 1.0) - 1.0 / x, lambda v: v / np.sqrt(v * v + 1) + 1 / v**2),
    ]

    def make(k):
        fn, grad = rules[k]

        def run(barrier):
            barrier.wait()
            bad = []
            for i in range(1500):
                v = 0.25 + (i % 13) * 0.5
                x = td.tensor(v, requires_grad=True)
                fn(x).backward()
                if abs(x.grad.item() - grad(v)) > 1e-12 * max(1.0, abs(grad(v))):
                    bad.append(i)
            return bad
        return run

    assert _run_threads([make(k) for k in range(4)]) == [[]] * 4


def test_threads_reading_a_shared_constant():
    shared = td.tensor(np.linspace(-1.0, 1.0, M))  # no grad: read-only for everybody
    before = shared.numpy()
    results = _run_threads([_worker(k, shared=shared) for k in range(4)])
    for k, r in enumerate(results):
        assert r["bad"] == [], f"thread {k}: wrong gradients at iterations {r['bad'][:10]}"
    np.testing.assert_array_equal(shared.numpy(), before)
    assert shared.grad is None


def test_shared_leaf_with_a_private_copy_per_thread():
    # The well-defined way to differentiate one value in several threads: each thread
    # makes its own leaf from it (``.detach().requires_grad_()`` shares the value, not the
    # .grad), and every thread's gradient is exactly its own.
    x = td.tensor(np.arange(M, dtype=np.float64) % 7, requires_grad=True)
    x0 = x.numpy()

    def make(k):
        def run(barrier):
            xk = x.detach().requires_grad_()
            wk = td.tensor(np.full(M, float(k + 1)), requires_grad=True)
            barrier.wait()
            bad = []
            for i in range(ITERS):
                h = xk * wk
                for _ in range(4):
                    h = h * 1.0
                (h * 2.0 + wk).sum().backward()
                # exact: small integers throughout
                if not (np.array_equal(xk.grad.numpy(), np.full(M, 2.0 * (k + 1)) * (i + 1))
                        and np.array_equal(wk.grad.numpy(), (2.0 * x0 + 1.0) * (i + 1))):
                    bad.append(i)
            return bad
        return run

    results = _run_threads([make(k) for k in range(4)])
    assert results == [[]] * 4
    assert x.grad is None  # the copies' gradients never reach the original


def test_shared_leaf_accumulates_every_threads_gradient():
    # A leaf used read-only by several threads receives every backward's contribution, as
    # in PyTorch (whose AccumulateGrad is serialised): the contributions are small integers,
    # so the total is exact whatever the order.  Each thread also checks its private leaf.
    # The threads keep re-recording the shared leaf on their own tapes while the tapes
    # reclaim mid-graph, so a tape must not lose track of a leaf another thread used since.
    x = td.tensor(np.arange(M, dtype=np.float64) % 7, requires_grad=True)
    x0 = x.numpy()
    threads = 4

    def make(k):
        def run(barrier):
            wk = td.tensor(np.full(M, float(k + 1)), requires_grad=True)
            barrier.wait()
            bad = []
            for i in range(ITERS):
                h = x * wk
                for _ in range(4):  # more records after x's: reclamations mid-graph
                    h = h * 1.0
                (h * 2.0 + wk).sum().backward()
                if not np.array_equal(wk.grad.numpy(), (2.0 * x0 + 1.0) * (i + 1)):
                    bad.append(i)
            return bad
        return run

    results = _run_threads([make(k) for k in range(threads)])
    assert results == [[]] * threads
    expected = ITERS * sum(2.0 * (k + 1) for k in range(threads))
    got = np.unique(x.grad.numpy())
    assert got.tolist() == [expected], (
        f"shared leaf got {got} instead of {expected}: contributions were lost")


def test_concurrent_backward_into_one_big_leaf_loses_nothing():
    # The same property with the accumulation itself made long (a 1M-element .grad): the
    # threads' additions into the shared .grad overlap in time, and none may be lost.
    x = td.tensor(np.zeros(1_000_000), requires_grad=True)
    iters, threads = 25, 4

    def run(barrier):
        barrier.wait()
        for _ in range(iters):
            (x * 1.0).sum().backward()

    _run_threads([run] * threads)
    got = np.unique(x.grad.numpy())
    assert got.tolist() == [float(iters * threads)], (
        f"expected {iters * threads} everywhere, got values {got}: concurrent accumulations "
        "into the same .grad were lost")


def test_grad_mode_is_per_thread():
    in_no_grad = threading.Event()
    checked = threading.Event()
    w = td.tensor([1.0, 2.0], requires_grad=True)

    def quiet(barrier):
        barrier.wait()
        with td.no_grad():
            in_no_grad.set()
            checked.wait(timeout=30)
            y = w * 2.0
        return y.requires_grad, td.is_grad_enabled()

    def busy(barrier):
        barrier.wait()
        in_no_grad.wait(timeout=30)
        try:
            enabled = td.is_grad_enabled()
            n0 = len(td.current_tape())
            y = (w * 3.0).sum()
            grew = len(td.current_tape()) > n0
        finally:
            checked.set()
        return enabled, y.requires_grad, grew

    (q_rg, q_after), (b_enabled, b_rg, b_grew) = _run_threads([quiet, busy])
    assert (q_rg, q_after) == (False, True)
    assert (b_enabled, b_rg, b_grew) == (True, True, True)
    assert td.is_grad_enabled()


def test_new_thread_starts_in_grad_mode_with_fresh_default_tape():
    main_tape = td.current_tape()

    def probe(barrier):
        barrier.wait()
        return td.is_grad_enabled(), td.current_tape()

    with td.no_grad():
        with td.tape() as block:
            ((enabled, tape),) = _run_threads([probe])
    assert enabled
    assert tape is not main_tape and tape is not block


def test_tape_block_in_one_thread_does_not_capture_another():
    opened = threading.Event()
    done = threading.Event()
    x = td.tensor([1.0, 2.0], requires_grad=True)

    def blocker(barrier):
        barrier.wait()
        with td.tape() as t:
            opened.set()
            done.wait(timeout=30)
            n = len(t)
        return n

    def recorder(barrier):
        barrier.wait()
        opened.wait(timeout=30)
        try:
            tape = td.current_tape()
            y = (x * x).sum()
            y.backward()
            return tape, y
        finally:
            done.set()

    n_block, (rec_tape, y) = _run_threads([blocker, recorder])
    assert n_block == 0, "another thread's operations recorded on this thread's block"
    assert rec_tape is not td.current_tape()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 4.0])


def test_tensor_recorded_in_another_thread_cannot_join_this_threads_graph():
    x = td.tensor([1.0, 2.0], requires_grad=True)

    def make(barrier):
        barrier.wait()
        return x * 2.0  # recorded on the worker's default tape

    (y,) = _run_threads([make])
    with pytest.raises(RuntimeError):
        y + x  # would record on the main thread's tape
    np.testing.assert_array_equal(y.detach().numpy(), [2.0, 4.0])
