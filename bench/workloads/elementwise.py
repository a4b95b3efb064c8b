"""Elementwise array code: a mixed transcendental expression and the Rosenbrock function.

Both are a handful of whole-array operations, so the time is memory traffic and the
transcendental functions: the gradient should cost a small multiple of the primal.  Sizes
10^3 (per-operation overhead dominates), 10^5 (fits in cache) and 10^6 (does not).

* mixed: ``sum(log1p(exp(x*y)) * sin(x) + tanh(y) * x**2)``, gradients in x and y.
* Rosenbrock: ``sum(100 (x[1:] - x[:-1]^2)^2 + (1 - x[:-1])^2)``, with a hand-written
  NumPy gradient as a peer.

Both also run as replay contenders: replay runs each chain as one fused group (the slices
of x read in place, the sum accumulated block by block).
"""
from __future__ import annotations

import numpy as np

from ..case import Case

WORKLOAD = "elementwise"


def mixed(xp, x, y):
    """sum(log1p(exp(x*y)) * sin(x) + tanh(y) * x**2)."""
    return xp.sum(xp.log1p(xp.exp(x * y)) * xp.sin(x) + xp.tanh(y) * x ** 2)


def rosenbrock(xp, x):
    """sum(100 (x[1:] - x[:-1]^2)^2 + (1 - x[:-1])^2)."""
    a = x[:-1]
    return xp.sum(100.0 * (x[1:] - a * a) ** 2 + (1.0 - a) ** 2)


def rosenbrock_hand(x):
    """Value and gradient of ``rosenbrock``, by hand."""
    a, b = x[:-1], x[1:]
    t = b - a * a
    u = 1.0 - a
    value = np.sum(100.0 * t * t + u * u)
    g = np.zeros_like(x)
    g[:-1] = -400.0 * a * t - 2.0 * u
    g[1:] += 200.0 * t
    return value, [g]


def cases(quick: bool) -> list[Case]:
    sizes = [1_000, 10_000] if quick else [1_000, 100_000, 1_000_000]
    out = []
    for n in sizes:
        rng = np.random.default_rng(n)
        x, y = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
        out.append(Case(WORKLOAD, f"mixed n={n:,}", mixed, [x, y], size={"n": n}, replay=True,
                        note="sum(log1p(exp(x*y))*sin(x) + tanh(y)*x**2), grad in x and y"))
        out.append(Case(WORKLOAD, f"Rosenbrock n={n:,}", rosenbrock, [x.copy()],
                        size={"n": n}, hand_grad=rosenbrock_hand, replay=True))
    return out
