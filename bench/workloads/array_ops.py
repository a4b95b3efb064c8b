"""Array kernels against NumPy and PyTorch: elementwise, matmul and indexing at 10^3 and 10^6.

These are the figures the old ``bench/ops.py`` printed before the runner existed (issue 3),
now the runner's ``ops`` workload: ``python -m bench --only ops``.
For each kernel: the NumPy primal (forward only), tapediff forward+backward, and every peer.

* elementwise: ``sum(log(x*y) * exp(-x) + tanh(y) * x * x)``, x, y in [0.5, 1.5];
* matmul: ``sum(a @ b)`` of two square matrices with n elements each;
* indexing: ``sum(x[idx] * sum(x[::2]) + sum(x[1:]))``, a gather with repeats, a strided
  slice and a shifted slice.
"""
from __future__ import annotations

import numpy as np

from ..case import Case

WORKLOAD = "ops"


def elementwise(xp, x, y):
    return xp.sum(xp.log(x * y) * xp.exp(-x) + xp.tanh(y) * x * x)


def matmul(xp, a, b):
    return xp.sum(a @ b)


def indexing(xp, x, idx):
    return xp.sum(x[idx] * xp.sum(x[::2]) + xp.sum(x[1:]))


def cases(quick: bool) -> list[Case]:
    out = []
    for n in [1_000] if quick else [1_000, 1_000_000]:
        rng = np.random.default_rng(0)
        side = int(round(n ** 0.5))
        out += [
            Case(WORKLOAD, f"ops elementwise n={n:,}", elementwise,
                 [rng.uniform(0.5, 1.5, n), rng.uniform(0.5, 1.5, n)], size={"n": n}),
            Case(WORKLOAD, f"ops matmul {side}x{side}", matmul,
                 [rng.normal(size=(side, side)), rng.normal(size=(side, side))],
                 size={"n": side * side}),
            Case(WORKLOAD, f"ops indexing n={n:,}", indexing, [rng.normal(size=n)],
                 [rng.integers(0, n, n)], size={"n": n}),
        ]
    return out

