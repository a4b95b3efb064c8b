"""Gradient-checking helpers shared by the tests.

``numerical_grad`` differentiates a plain NumPy function by central differences;
``check_grad`` compares what ``backward()`` leaves in each leaf's ``.grad`` against it;
``crash_guard`` runs a test in a forked child so that a segfault fails only that test.
"""
from __future__ import annotations

import base64
import functools
import gc
import math
import os
import pickle
import signal
import sys
import traceback
from typing import Any, Callable, Sequence

import numpy as np
import pytest

import tapediff as td


def numerical_grad(f: Callable[..., float], arrays: Sequence[np.ndarray], eps: float = 1e-6,
                   wrt: Sequence[int] | None = None) -> list[np.ndarray]:
    """Central-difference gradient of the scalar ``f(*arrays)`` w.r.t. ``arrays[i]``, i in ``wrt``.

    Each element gets a step of ``eps * max(1, |x|)``, so the step stays well above the
    rounding of large entries.  The divisor is the step as actually represented
    (``(x + h) - (x - h)``), which removes the rounding of ``x +/- h`` from the quotient.
    Arrays are copied to float64; an empty array gets an empty gradient.
    """
    arrays = [np.array(a, dtype=np.float64) for a in arrays]
    wrt = range(len(arrays)) if wrt is None else wrt
    grads = []
    for i in wrt:
        a = arrays[i]
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):  # () for a 0-d array: one element
            x0 = a[idx]
            h = eps * max(1.0, abs(x0))
            a[idx] = x0 + h
            hi = a[idx]
            fp = f(*arrays)
            a[idx] = x0 - h
            lo = a[idx]
            fm = f(*arrays)
            a[idx] = x0
            g[idx] = (fp - fm) / (hi - lo)
        grads.append(g)
    return grads


def projection(shape: tuple, seed: int = 0) -> np.ndarray:
    """Fixed random weights used to reduce a non-scalar output to a scalar.

    A random projection (rather than a plain ``.sum()``) gives every output element a
    different weight, so a gradient routed to the wrong element, or summed instead of
    broadcast, changes the result.
    """
    return np.random.default_rng(seed).standard_normal(shape)


def check_grad(fn: Callable, inputs: Sequence[np.ndarray], *,
               requires_grad: Sequence[bool] | None = None, eps: float = 1e-6,
               rtol: float = 1e-5, atol: float = 1e-6, seed: int = 0) -> list:
    """Check the gradients ``backward()`` computes for ``fn`` against finite differences.

    Leaves are ``td.tensor(inputs[i], requires_grad=requires_grad[i])`` (all True by
    default).  ``out = fn(*leaves)`` is reduced to ``(out * w).sum()`` with ``w`` a fixed
    random array (a constant, see ``projection``) and differentiated.  The reference is the
    central-difference gradient of ``x -> sum(fn(*tensors(x)).numpy() * w)``, evaluated on
    float64 copies of the inputs with tensors that do not require grad: the same function,
    computed by plain NumPy inside the library, nothing recorded.

    Asserts that every leaf that requires grad has a ``.grad`` tensor of its own shape and
    dtype, matching the reference, and that every other leaf's ``.grad`` is None.
    Returns the leaves.
    """
    arrays = [np.asarray(a) for a in inputs]
    if requires_grad is None:
        requires_grad = [True] * len(arrays)
    leaves = [td.tensor(a, requires_grad=rg) for a, rg in zip(arrays, requires_grad)]
    out = fn(*leaves)
    w = projection(out.shape, seed)
    (out * w).sum().backward()

    def f(*xs: np.ndarray) -> float:
        return float(np.sum(fn(*(td.tensor(x) for x in xs)).numpy() * w))

    wrt = [i for i, rg in enumerate(requires_grad) if rg]
    expected = numerical_grad(f, arrays, eps, wrt)
    for i, leaf in enumerate(leaves):
        if not requires_grad[i]:
            assert leaf.grad is None, f"input {i} does not require grad but got a .grad"
    for i, num in zip(wrt, expected):
        g = leaves[i].grad
        assert isinstance(g, td.Tensor), f"input {i}: .grad is {g!r}, expected a Tensor"
        assert g.shape == arrays[i].shape, f"input {i}: .grad shape {g.shape} != {arrays[i].shape}"
        assert g.dtype == arrays[i].dtype, f"input {i}: .grad dtype {g.dtype} != {arrays[i].dtype}"
        np.testing.assert_allclose(g.numpy(), num, rtol=rtol, atol=atol,
                                   err_msg=f"gradient of input {i}")
    return leaves


# ---------------------------------------------------------------------------------------------
# inputs inside a primitive's domain (tapediff._src._primitives)
# ---------------------------------------------------------------------------------------------
MARGIN = 0.05  # inputs keep this fraction of an interval's width away from either end


def into_domain(u: Any, domain: tuple) -> Any:
    """``u`` (values in [0, 1]; an ndarray or a tensor) mapped affinely, element by element,
    strictly inside ``domain`` (a union of (lo, hi) intervals): element k goes into interval
    k mod len(domain), ``MARGIN`` of its width away from either end.

    A tensor stays a tensor of its dtype (the map records a multiplication and an addition,
    by Python floats when the domain is one interval, so float32 stays float32).
    """
    if len(domain) == 1:
        (lo, hi), = domain
        w = hi - lo
        return u * ((1 - 2 * MARGIN) * w) + (lo + MARGIN * w)
    shape = np.shape(u)
    k = np.arange(math.prod(shape)).reshape(shape) % len(domain)
    lo = np.array([a for a, _ in domain])[k]
    w = np.array([b - a for a, b in domain])[k]
    dtype = u.dtype
    return u * ((1 - 2 * MARGIN) * w).astype(dtype) + (lo + MARGIN * w).astype(dtype)


# ---------------------------------------------------------------------------------------------
# crash isolation
# ---------------------------------------------------------------------------------------------
_note_fd: int | None = None  # set in a crash_guard child: where note() writes


def note(message: str) -> None:
    """Record what the test is about to do; reported if the process then crashes."""
    if _note_fd is not None:
        os.write(_note_fd, b"N " + message.replace("\n", " ").encode() + b"\n")


_warmed_up = False


def _warm_up() -> None:
    """Load the jitted kernels in this (parent) process, so forked children inherit them
    instead of each loading them from Numba's cache (~0.2 s per child)."""
    global _warmed_up
    _warmed_up = True
    try:
        with td.tape() as t:
            x = td.tensor(np.linspace(0.5, 1.5, 6).reshape(2, 3), requires_grad=True)
            y = td.tensor(0.5, requires_grad=True)
            z = ((x[:, ::2] * x[:1, :2]).exp().sum(axis=0) / 2.0 + x.sum() * y).sum()
        z.backward()
        t.reclaim()
    except Exception:  # noqa: BLE001 - a broken op fails its own test, not the warm-up
        pass


def crash_guard(test: Callable) -> Callable:
    """Run ``test`` in a forked child process, so that a crash fails this test only.

    The kernels index the tape's arenas without bounds checks (CI reruns the tests with
    NUMBA_BOUNDSCHECK=1 to catch bad indices as exceptions), so a wrong offset computed by
    the library is a segfault, and a segfault would end the whole pytest run with every
    later test unreported.  In a child, a crash becomes this test's failure, naming the
    signal and the last ``note()``.  Exceptions, hypothesis' falsifying example included,
    are reported with the child's traceback.  Without ``os.fork``, or with the environment
    variable TAPEDIFF_TEST_NO_FORK=1 (to debug a test with pdb), the test runs in-process.
    """
    if not hasattr(os, "fork") or os.environ.get("TAPEDIFF_TEST_NO_FORK") == "1":
        return test

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        global _note_fd
        if not _warmed_up:
            _warm_up()
        sys.stdout.flush()
        sys.stderr.flush()
        r, w = os.pipe()
        gc.freeze()  # the child's collector then leaves the parent's objects (and pages) alone
        pid = os.fork()
        if pid == 0:  # child: run the test, send the outcome, leave without pytest's cleanup
            code = 0
            try:
                os.close(r)
                _note_fd = w
                try:
                    test(*args, **kwargs)
                    outcome = ("passed", "")
                except BaseException as e:  # noqa: BLE001 - reported to the parent
                    outcome = ("failed", "".join(traceback.format_exception(e)))
                os.write(w, b"R " + base64.b64encode(pickle.dumps(outcome)) + b"\n")
            except BaseException:  # noqa: BLE001
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        gc.unfreeze()
        os.close(w)
        chunks = []
        while chunk := os.read(r, 1 << 16):
            chunks.append(chunk)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        lines = b"".join(chunks).decode(errors="replace").splitlines()
        results = [ln[2:] for ln in lines if ln.startswith("R ")]
        if results:
            kind, text = pickle.loads(base64.b64decode(results[-1]))
            if kind == "failed":
                pytest.fail(text, pytrace=False)
            return
        notes = [ln[2:] for ln in lines if ln.startswith("N ")]
        if os.WIFSIGNALED(status):
            how = f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
        else:
            how = f"exited with status {os.WEXITSTATUS(status)} without a result"
        pytest.fail(f"the test process {how}; last step: {notes[-1] if notes else '(none)'}",
                    pytrace=False)

    return wrapper


# ---------------------------------------------------------------------------------------------
# matrices for the linear-algebra tests
# ---------------------------------------------------------------------------------------------
def _orth(rng, n: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def well_conditioned(rng, shape: tuple) -> np.ndarray:
    """Matrices of ``shape`` (..., m, n): singular values 1 .. 3, distinct."""
    m, n = shape[-2:]
    k = min(m, n)
    out = np.empty(shape)
    for idx in np.ndindex(shape[:-2]):
        s = np.linspace(3.0, 1.0, k) + rng.uniform(0, 0.2, k)
        out[idx] = (_orth(rng, m)[:, :k] * s) @ _orth(rng, n)[:k]
    return out


def spd_matrices(rng, shape: tuple) -> np.ndarray:
    """Symmetric positive-definite matrices, eigenvalues 1 .. 4, distinct."""
    n = shape[-1]
    out = np.empty(shape)
    for idx in np.ndindex(shape[:-2]):
        q = _orth(rng, n)
        out[idx] = (q * (np.linspace(1.0, 4.0, n) + rng.uniform(0, 0.1, n))) @ q.T
    return out
