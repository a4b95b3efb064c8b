"""Start-up cost: import tapediff and run a first backward, or a first replay, in a fresh process.

The sweeps are compiled by Numba on first use and cached on disk; "cold" runs with an empty
cache directory (what a fresh install pays once), "warm" again with the cache that run filled
(what every later process pays).

Two fresh processes, each with its own cache directory:

* import + first backward (``x * x`` on a 2-element leaf, ``backward()``): the reverse sweep;
* a replayed function made ready: after ``import tapediff`` (timed apart), the first call of
  a tiny ``td.value_and_grad(f, replay=True)`` (record, calibrate the guards with one forward
  sweep, reverse sweep) and its first replay (the forward and reverse sweeps compiled as one
  call).  The figure is record + first replay; import is in the note.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from ..case import Metric, MetricsCase

WORKLOAD = "compile"

_FIRST_BACKWARD = ("import time; t = time.perf_counter(); import tapediff as td; "
                   "x = td.tensor([1.0, 2.0], requires_grad=True); (x * x).sum().backward(); "
                   "print(time.perf_counter() - t)")

# The README's example objective (Rosenbrock) on 8 elements: array records of one kind, the
# common replay case.  Prints: import seconds, record (first call), first replay.
_FIRST_REPLAY = """\
import time
t0 = time.perf_counter()
import numpy as np
import tapediff as td
t1 = time.perf_counter()
fg = td.value_and_grad(
    lambda x: (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum(), replay=True)
x = np.linspace(-1.0, 1.0, 8)
fg(x)
t2 = time.perf_counter()
fg(x * 0.5)
t3 = time.perf_counter()
assert fg.recordings == 1 and fg.replays == 1, (fg.recordings, fg.replays, fg.last_guard)
print(t1 - t0, t2 - t1, t3 - t2)
"""


def _run(code: str, env: dict) -> list[float]:
    run = [sys.executable, "-c", code]
    out = subprocess.run(run, env=env, capture_output=True, text=True, check=True,
                         timeout=600).stdout
    return [float(x) for x in out.split()]


def _first_backward(env: dict) -> float:
    return _run(_FIRST_BACKWARD, env)[0]


def _first_replay(env: dict, cache: str, note: str = "") -> Metric:
    imp, record, replay = _run(_FIRST_REPLAY, env)
    return Metric(f"replay: record + first replay, {cache} cache", record + replay, "s",
                  f"first call (record + sweep) {record:.3g} s, first replay {replay:.3g} s; "
                  f"after import tapediff {imp:.2f} s{note}")


def compile_times() -> list[Metric]:
    """Import + first backward, then (another process, another cache) a replayed function's
    record + first replay, each in a fresh process with Numba's cache cold, then warm."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        cold = _first_backward(env)
        warm = _first_backward(env)
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        replay_cold = _first_replay(env, "cold")
        replay_warm = _first_replay(env, "warm")
    return [Metric("import + first backward, cold cache", cold, "s",
                   "Numba compiles the sweep"),
            Metric("import + first backward, warm cache", warm, "s", "loaded from the cache"),
            replay_cold, replay_warm]


def warm_only() -> list[Metric]:
    """--quick: the cold compiles take ~7 s and ~17 s; time the starts with the usual cache."""
    env = dict(os.environ)
    return [Metric("import + first backward, warm cache", _first_backward(env),
                   "s", "the usual cache; cold compile skipped in --quick"),
            _first_replay(env, "warm", "; the usual cache, cold compile skipped in --quick")]


def cases(quick: bool) -> list[MetricsCase]:
    return [MetricsCase(WORKLOAD, "compile time (fresh process)",
                        warm_only if quick else compile_times)]
