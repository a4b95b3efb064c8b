"""The performance targets tapediff is held to, checked against a run's results.

Each target names the cases it reads and a bound; ``evaluate`` says met / missed per case
and overall, or "not measured" when the run did not include those cases (``--only``,
``--quick``: quick sizes are not the targets' sizes, so a quick run's verdicts are only
indicative) or did not measure memory (``--quick``, ``--no-memory``) for a memory target.
"""
from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from typing import Callable

from .case import HAND, PRIMAL, TAPEDIFF, TAPEDIFF_REPLAY, TORCH_NAME

# the full-size cases of bench/workloads/higher.py that the Hessian-vector product target reads
HVP_TARGET_CASES = ("hvp Rosenbrock n=100,000", "hvp MLP 784-256-256-10 batch 64")


@dataclass
class Verdict:
    target: str
    rows: list = field(default_factory=list)  # (case name, measured text, met)
    goal: str = ""  # the bound in the measured figure's terms, e.g. "<= 3x primal"
    peer: str = ""  # the peer the target compares with ("": none)

    @property
    def met(self) -> bool | None:
        if not self.rows:
            return None
        return all(ok for _, _, ok in self.rows)


def paired_ratio(res, a: str, b: str) -> float | None:
    """Median over rounds of time(a) / time(b), both measured in the same rounds."""
    ta, tb = res.timings.get(a), res.timings.get(b)
    if ta is None or tb is None:
        return None
    return statistics.median(x / y for x, y in zip(ta.samples, tb.samples))


def peak_rss_ratio(res, a: str, b: str) -> float | None:
    """Peak RSS of contender ``a`` over ``b``'s, each in its own memory process
    (``res.memory``, ``bench/memory.py``); None unless both were measured."""
    ma, mb = res.memory.get(a), res.memory.get(b)
    if ma is None or mb is None or ma.error or mb.error:
        return None
    return ma.peak / mb.peak


def _metric(res, name: str) -> float | None:
    for m in res.metrics:
        if m.name == name:
            return m.value
    return None


@dataclass
class Target:
    text: str
    select: Callable  # CaseResult -> bool
    measure: Callable  # CaseResult -> float | None
    bound: float
    above: bool  # met when measured >= bound (else <= bound)
    fmt: str  # format of the measured value, e.g. "{:.1f}x"
    peer: str = ""  # the peer it compares with: not measured when that peer does not run

    @property
    def goal(self) -> str:
        """The bound written as the measured figure is, e.g. ``<= 3x primal``."""
        return re.sub(r"\{[^}]*\}", f"{'>=' if self.above else '<='} {self.bound:g}",
                      self.fmt, count=1)


TARGETS = [
    Target("scalar chain forward+backward >= 25x faster than PyTorch eager",
           lambda r: r.name.startswith("scalar chain"),
           lambda r: paired_ratio(r, TORCH_NAME, TAPEDIFF), 25.0, True, "{:.1f}x faster",
           TORCH_NAME),
    Target("recording <= 0.5 us/op (scalar chain)",
           lambda r: r.name.startswith("scalar chain"),
           lambda r: _metric(r, "tapediff recording"), 500.0, False, "{:.0f} ns/op"),
    Target("sweep <= 10 ns/record (scalar chain)",
           lambda r: r.name.startswith("scalar chain"),
           lambda r: _metric(r, "tapediff sweep"), 10.0, False, "{:.1f} ns/record"),
    Target("Rosenbrock n=10^6 <= 2.5x the NumPy primal",
           lambda r: r.name == "Rosenbrock n=1,000,000",
           lambda r: paired_ratio(r, TAPEDIFF, PRIMAL), 2.5, False, "{:.2f}x primal"),
    Target("MLP step within 1.1x of the hand-written NumPy gradient",
           lambda r: r.workload == "mlp",
           lambda r: paired_ratio(r, TAPEDIFF, HAND), 1.1, False, "{:.2f}x hand"),
    Target("GMM <= 3x the NumPy primal at n = 10,000",
           lambda r: r.workload == "gmm" and r.size.get("n") == 10_000,
           lambda r: paired_ratio(r, TAPEDIFF, PRIMAL), 3.0, False, "{:.2f}x primal"),
    Target("GMM faster than PyTorch at every size",
           lambda r: r.workload == "gmm",
           lambda r: paired_ratio(r, TORCH_NAME, TAPEDIFF), 1.0, True,
           "PyTorch/tapediff {:.2f}", TORCH_NAME),
    Target("BA gradient <= 3x the NumPy primal",
           lambda r: r.workload == "ba",
           lambda r: paired_ratio(r, TAPEDIFF, PRIMAL), 3.0, False, "{:.2f}x primal"),
    Target("linalg value+gradient <= 3x the NumPy primal at n = 500 (slogdet, solve, cholesky)",
           lambda r: r.workload == "linalg" and r.size.get("n") == 500,
           lambda r: paired_ratio(r, TAPEDIFF, PRIMAL), 3.0, False, "{:.2f}x primal"),
    # fused replay (issue 16): one micro-op of Rosenbrock's group, in cache; a block loop LLVM
    # no longer vectorises costs 3-10x this
    Target("fused micro-op <= 0.5 ns/element, forward and reverse (Rosenbrock n=10^5)",
           lambda r: r.name == "Rosenbrock n=100,000",
           lambda r: max(_metric(r, "fused micro-op, forward") or 0.0,
                         _metric(r, "fused micro-op, reverse") or 0.0) or None,
           0.5, False, "{:.2f} ns/element"),
    # higher order (issue 13): bench/workloads/higher.py, the product and the gradient
    # (td.hvp, td.grad) timed in the same paired rounds
    Target("Hessian-vector product <= 4x one gradient (Rosenbrock n=10^5, MLP 784-256-256-10)",
           lambda r: r.workload == "higher" and r.name in HVP_TARGET_CASES,
           lambda r: paired_ratio(r, "tapediff hvp", "tapediff grad"), 4.0, False,
           "{:.2f}x gradient"),
    # replay: td.value_and_grad(f, replay=True), replayed calls (bench/replay_figures.py)
    Target("replayed scalar chain value+gradient <= 40 ns/record",
           lambda r: r.name.startswith("scalar chain"),
           lambda r: _metric(r, "tapediff replay"), 40.0, False, "{:.1f} ns/record"),
    Target("replayed scalar chain >= 250x faster than PyTorch eager",
           lambda r: r.name.startswith("scalar chain"),
           lambda r: paired_ratio(r, TORCH_NAME, TAPEDIFF_REPLAY), 250.0, True,
           "{:.0f}x faster", TORCH_NAME),
    Target("replay faster than eager tapediff (MLP, GMM, BA)",
           lambda r: r.workload in ("mlp", "gmm", "ba"),
           lambda r: paired_ratio(r, TAPEDIFF, TAPEDIFF_REPLAY), 1.0, True,
           "tapediff/replay {:.2f}"),
    Target("replay faster than PyTorch eager (MLP, GMM, BA)",
           lambda r: r.workload in ("mlp", "gmm", "ba"),
           lambda r: paired_ratio(r, TORCH_NAME, TAPEDIFF_REPLAY), 1.0, True,
           "PyTorch/replay {:.2f}", TORCH_NAME),
    # memory: each contender's RSS high-water mark in a process of its own (bench/memory.py),
    # measured in full runs (and with --memory)
    Target("peak RSS of eager tapediff <= 1.5x PyTorch's (MLP, GMM, BA)",
           lambda r: r.workload in ("mlp", "gmm", "ba"),
           lambda r: peak_rss_ratio(r, TAPEDIFF, TORCH_NAME), 1.5, False,
           "{:.2f}x PyTorch's peak RSS", TORCH_NAME),
]


def evaluate(results) -> list[Verdict]:
    out = []
    for t in TARGETS:
        v = Verdict(t.text, goal=t.goal, peer=t.peer)
        for r in results:
            if not t.select(r):
                continue
            x = t.measure(r)
            if x is None:
                continue
            ok = x >= t.bound if t.above else x <= t.bound
            v.rows.append((r.name, t.fmt.format(x), ok))
        out.append(v)
    return out
