"""Elementwise array code: a mixed transcendental expression and the Rosenbrock function.

Both are a handful of whole-array operations, so the time is memory traffic and the
transcendental functions: the gradient should cost a small multiple of the primal.  Sizes
10^3 (per-operation overhead dominates), 10^5 (fits in cache) and 10^6 (does not).

* mixed: ``sum(log1p(exp(x*y)) * sin(x) + tanh(y) * x**2)``, gradients in x and y.
* Rosenbrock: ``sum(100 (x[1:] - x[:-1]^2)^2 + (1 - x[:-1])^2)``, with a hand-written
  NumPy gradient as a peer.

Both also run as replay contenders: replay runs each chain as one fused group (the slices
of x read in place, the sum accumulated block by block).  At 10^4 (quick) and 10^5 (in
cache), Rosenbrock also reports the cost of one fused micro-op per element, forward and in
reverse: the floor fusion works at, which shows at once a change that stops LLVM
vectorising the block loops (3-10x).
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from ..case import Case, Metric

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


def _micro_op_metrics(x: np.ndarray, rounds: int = 50):
    """ns per element per micro-op of Rosenbrock's fused group, replayed forward and in
    reverse (the reverse recomputes the group's registers: its micro-ops are counted too)."""
    def run() -> list[Metric]:
        import tapediff as td
        from tapediff._src import _kernels as K

        f = td.value_and_grad(lambda x: rosenbrock(np, x), replay=True)
        f(x + 0.5)
        f(x)
        tape, plan = f.tape, f._recs()[0].plan
        if plan.fused == 0:
            return []
        touched = np.zeros(tape.top, np.uint8)
        g = 0
        f0, f1, r0, r1 = (int(plan.groups[g, c]) for c in (K.G_F0, K.G_F1, K.G_R0, K.G_R1))
        inner = int(plan.fu[f0:f1, K.U_REGISTER].sum())
        out = []
        for reverse, ops in ((False, f1 - f0), (True, (r1 - r0) + inner)):
            times = []
            for _ in range(rounds):
                touched[:] = 0
                t0 = time.perf_counter()
                tape._fused(plan, g, reverse, touched)
                times.append(time.perf_counter() - t0)
            size = int(plan.groups[g, K.G_SIZE])
            med, best = (v / (size * ops) * 1e9 for v in (statistics.median(times), min(times)))
            out.append(Metric(f"fused micro-op, {'reverse' if reverse else 'forward'}", med,
                              "ns/element", f"median; min {best:.3f}; {ops} micro-ops over "
                              f"{size:,} elements"))
        return out
    return run


def cases(quick: bool) -> list[Case]:
    sizes = [1_000, 10_000] if quick else [1_000, 100_000, 1_000_000]
    out = []
    for n in sizes:
        rng = np.random.default_rng(n)
        x, y = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
        out.append(Case(WORKLOAD, f"mixed n={n:,}", mixed, [x, y], size={"n": n}, replay=True,
                        note="sum(log1p(exp(x*y))*sin(x) + tanh(y)*x**2), grad in x and y"))
        out.append(Case(WORKLOAD, f"Rosenbrock n={n:,}", rosenbrock, [x.copy()],
                        size={"n": n}, hand_grad=rosenbrock_hand, replay=True,
                        extra=_micro_op_metrics(x.copy()) if n in (10_000, 100_000) else None))
    return out
