"""Timing in paired rounds, and the allocator the timed process runs with.

Why paired rounds: the machine is shared, and its speed drifts by tens of percent over
seconds.  Timing A for a while and then B would fold that drift into the ratio A/B.  Instead
each round times every contender back to back (in a rotating order, so no one always runs
first after the others warmed the cache), and a ratio is the median over rounds of the
per-round ratios.  Absolute times are the median over rounds, with the interquartile range as
spread.

Why a long warm-up: tapediff computes into arenas that it keeps and reuses, and on this
machine a first touch of fresh memory costs ~6 us per 4 KB page.  The first few evaluations of
a 10^6-element objective therefore pay for mapping the arenas (and Numba/JAX compile on first
use); the figures reported are the steady state after that.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from .backends import Contender


@dataclass
class Timing:
    """Per-call seconds of one contender over the rounds, and its ratios to the reference."""

    samples: list = field(default_factory=list)  # seconds per call, one per round
    ratios: list = field(default_factory=list)  # this / reference, one per round
    calls_per_sample: int = 1

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def q1(self) -> float:
        return _quantile(self.samples, 0.25)

    @property
    def q3(self) -> float:
        return _quantile(self.samples, 0.75)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)


def _quantile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _time(fn: Callable[[], object], k: int) -> float:
    t = time.perf_counter()
    for _ in range(k):
        fn()
    return (time.perf_counter() - t) / k


def warm_up(fn: Callable[[], object], min_calls: int, min_seconds: float,
            max_seconds: float) -> float:
    """Call ``fn`` at least ``min_calls`` times and for at least ``min_seconds``, but stop
    after two calls once ``max_seconds`` have passed (a call of seconds is warm after one
    repeat); return the per-call time of the last call."""
    start = time.perf_counter()
    calls = 0
    last = 0.0
    while True:
        last = _time(fn, 1)
        calls += 1
        elapsed = time.perf_counter() - start
        if calls >= min_calls and elapsed >= min_seconds:
            return last
        if elapsed >= max_seconds and calls >= 2:
            return last


def paired_rounds(contenders: Sequence["Contender"], reference: str, *, rounds: int,
                  min_rounds: int, budget_s: float, sample_s: float,
                  warmup_calls: int, warmup_s: float) -> dict[str, Timing]:
    """Time every contender in the same rounds; ratios are to ``reference``.

    Each sample is ``k`` back-to-back calls (``k`` chosen so a sample lasts about
    ``sample_s``: very short calls are averaged, long ones are single calls).  The number of
    rounds is ``rounds``, cut down to fit ``budget_s`` but never below ``min_rounds``.
    """
    est = {}
    for c in contenders:
        est[c.name] = max(warm_up(c.run, warmup_calls, warmup_s, 3 * warmup_s), 1e-7)
    ks = {name: max(1, int(sample_s / t)) for name, t in est.items()}
    per_round = sum(ks[n] * est[n] for n in est)
    n_rounds = max(min_rounds, min(rounds, int(budget_s / max(per_round, 1e-9))))
    out = {c.name: Timing(calls_per_sample=ks[c.name]) for c in contenders}
    order = list(contenders)
    for r in range(n_rounds):
        this_round = {}
        rot = r % len(order)
        for c in order[rot:] + order[:rot]:
            this_round[c.name] = _time(c.run, ks[c.name])
        ref = this_round[reference]
        for name, t in this_round.items():
            out[name].samples.append(t)
            out[name].ratios.append(t / ref)
    return out


def steady_allocator() -> str:
    """Make glibc's malloc keep freed memory mapped; return a sentence saying what was done.

    By default glibc serves big blocks (over 128 KB .. 32 MB, adaptively) with fresh
    ``mmap`` calls and gives them back on ``free``, so a NumPy temporary of 128 MB is
    first-touched on every call.  On this sandbox a first touch costs ~6 us per 4 KB page
    (30x a normal Linux machine), which would bury the primal, the hand-written gradients
    and PyTorch under page faults that tapediff's reused arenas avoid.  With ``mmap``
    disabled and trimming off, every library's freed memory is reused by the next call
    from the already-mapped heap: the steady state of a long-running loop, for everyone.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return "allocator: the platform's default"
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        ok = libc.mallopt(m_mmap_max, 0) == 1
        ok = ok and libc.mallopt(m_trim_threshold, 2 ** 31 - 1) == 1
    except (OSError, AttributeError):
        ok = False
    if not ok:
        return "allocator: default (mallopt unavailable: not glibc)"
    return ("allocator: glibc malloc with mmap off and trimming off (mallopt), so memory "
            "freed by one call is reused, already mapped, by the next: steady state")

