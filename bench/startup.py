"""Start-up cost: import tapediff and run a first backward in a fresh process.

The reverse sweep is compiled by Numba on first use and cached on disk; "cold" runs with an
empty cache directory (what a fresh install pays once), "warm" again with the cache that run
filled (what every later process pays).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from .case import Metric, MetricsCase

WORKLOAD = "compile"

_FIRST_BACKWARD = ("import time; t = time.perf_counter(); import tapediff as td; "
                   "x = td.tensor([1.0, 2.0], requires_grad=True); (x * x).sum().backward(); "
                   "print(time.perf_counter() - t)")


def _first_backward(env: dict) -> float:
    run = [sys.executable, "-c", _FIRST_BACKWARD]
    return float(subprocess.run(run, env=env, capture_output=True, text=True, check=True,
                                timeout=600).stdout)


def compile_times() -> list[Metric]:
    """Import + first backward in a fresh process, with Numba's cache cold, then warm."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        cold = _first_backward(env)
        warm = _first_backward(env)
    return [Metric("import + first backward, cold cache", cold, "s",
                   "Numba compiles the sweep"),
            Metric("import + first backward, warm cache", warm, "s", "loaded from the cache")]


def warm_only() -> list[Metric]:
    """--quick: the cold compile alone takes ~10 s; time a start with the usual cache."""
    return [Metric("import + first backward, warm cache", _first_backward(dict(os.environ)),
                   "s", "the usual cache; cold compile skipped in --quick")]


def cases(quick: bool) -> list[MetricsCase]:
    return [MetricsCase(WORKLOAD, "compile time (fresh process)",
                        warm_only if quick else compile_times)]
