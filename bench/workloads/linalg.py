"""Linear algebra (issue 12): value and gradient of slogdet, solve and cholesky at n = 500.

``python -m bench --only linalg``.  Each objective is one LAPACK call and a cheap reduction,
so the ratio to the NumPy primal (the forward call alone) is what the reverse rule costs.
The target is 3x the primal; PyTorch (and the other peers) run beside it.

* ``slogdet``: ``slogdet(A).logabsdet`` of a general matrix.  Its gradient is ``inv(A)^T``,
  which tapediff computes from the LU factors the forward call kept (LAPACK's getri through
  SciPy; without SciPy, a second factorisation): the LU plus the inverse from it, about
  3x the flops of the LU alone.
* ``solve``: ``sum(solve(A, b) ** 2)`` for a vector ``b``: the gradient is one more solve,
  with ``A^T``, and an outer product.
* ``cholesky``: ``sum(W * cholesky((A + A^T) / 2))`` with a dense ``W``.  The gradient
  (PyTorch's formula) needs a matrix product and two triangular solves with n right-hand
  sides, about 9x the n^3/3 flops of the factorisation: no reverse rule meets 3x here with
  a dense upstream gradient.  Symmetrising the input makes the objective a function of all
  of A for every contender (NumPy's factorisation reads one triangle; the gradients the
  libraries return are symmetric).
"""
from __future__ import annotations

import numpy as np

from ..case import Case

WORKLOAD = "linalg"


def slogdet(xp, a):
    return xp.linalg.slogdet(a)[1]


def solve(xp, a, b):
    return xp.sum(xp.linalg.solve(a, b) ** 2)


def cholesky(xp, a, w):
    return xp.sum(xp.linalg.cholesky((a + a.T) * 0.5) * w)


def cases(quick: bool) -> list[Case]:
    n = 100 if quick else 500
    rng = np.random.default_rng(12)
    a = rng.normal(size=(n, n)) / np.sqrt(n) + 2.0 * np.eye(n)  # well conditioned
    g = rng.normal(size=(n, n))
    spd = g @ g.T / n + np.eye(n)
    size = {"n": n}
    return [
        Case(WORKLOAD, f"slogdet n={n}", slogdet, [a], size=size, replay=True,
             note="logabsdet of a general matrix"),
        Case(WORKLOAD, f"solve n={n}", solve, [a, rng.normal(size=n)], size=size,
             replay=True, note="sum(solve(A, b)**2), b a vector"),
        Case(WORKLOAD, f"cholesky n={n}", cholesky, [spd], [rng.normal(size=(n, n))],
             size=size, replay=True, note="sum(W * cholesky(sym(A))), W dense"),
    ]
