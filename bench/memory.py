"""Peak memory of one contender, measured in a fresh process of its own: its RSS high-water mark.

Why a process per contender: ``tracemalloc`` sees what goes through Python's allocator (NumPy
arrays, Python objects) but not PyTorch's, JAX's or BLAS's allocations, and one process
running every contender would count each library's imports and caches against all of them.
So each contender gets a process that imports only what it needs (a tapediff contender never
imports PyTorch or JAX), builds the case's inputs as the runner does, and reports:

* ``peak``: the process's RSS high-water mark (``VmHWM`` in ``/proc/self/status``) over
  building the contender (JAX's compile, tapediff replay's recording call) and calling it
  ``CALLS`` times.  The mark is reset (``/proc/self/clear_refs``) once the case's inputs
  exist, so building the workload's other cases is not in it; where that reset is not
  possible (not Linux) the peak is the whole process's;
* ``baseline``: the RSS (``VmRSS``) once the contender is built, before its first call:
  the interpreter, the imports and the inputs.  ``above`` = peak - baseline is what the
  calls themselves need, without the import sizes that dominate small cases.

The process runs with glibc's default allocator (the runner's ``steady_allocator`` is not
called): memory freed by a call may go back to the system, as in a user's program.  A process
that had to compile tapediff's Numba sweeps (a stale cache: tapediff says "compiling" on
stderr) is run again, so that compiling is not counted.

``python -m bench.memory WORKLOAD CASE CONTENDER [--quick]`` is the process for the cases
of ``bench.case.Case`` workloads (``bench/runner.py``'s ``run_case``), with WORKLOAD as given
to ``--only`` and CASE and CONTENDER as printed in the table; ``bench/workloads/higher.py``
has its own entry point built on ``measure_calls`` and ``launch``.  Both print one JSON line.
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from .case import HAND, PRIMAL, PYTHON_PRIMAL, TAPEDIFF, TAPEDIFF_REPLAY

CALLS = 8  # calls of the contender in its memory process
TIMEOUT_S = 900  # one memory process
ATTEMPTS = 3  # runs of a process that keeps compiling Numba's sweeps
COMPILING = "tapediff: compiling"  # tapediff's notice on stderr (tapediff/_src/_tape.py)
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PEER_MODULES = ("torch", "jax", "autograd")


@dataclass
class Rss:
    """One contender's memory process: bytes, or why it was not measured (``error``)."""

    peak: int | None = None  # VmHWM over building the contender and its calls
    baseline: int | None = None  # VmRSS once built, before the first call
    calls: int = CALLS
    whole_process: bool = False  # the mark could not be reset: the peak includes building
    seconds: float = 0.0  # wall time of the process (all attempts)
    error: str = ""

    @property
    def above(self) -> int | None:
        """Peak minus baseline: what the contender's building and calls added."""
        if self.peak is None or self.baseline is None:
            return None
        return self.peak - self.baseline

    def to_json(self) -> dict:
        """The figures for ``--json`` (bytes)."""
        if self.error:
            return {"error": self.error}
        return {"peak_bytes": self.peak, "baseline_bytes": self.baseline,
                "above_baseline_bytes": self.above, "calls": self.calls,
                "whole_process": self.whole_process}


# -- inside the memory process ----------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def max_rss() -> int:
    """This process's RSS high-water mark in bytes.  On Linux from ``VmHWM``: ``ru_maxrss``
    of a process started by fork + exec begins at its parent's peak (the runner's), which the
    kernel carries over the exec, and cannot be reset."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def current_rss() -> int:
    """This process's resident set size now (``VmRSS``), in bytes; the high-water mark where
    there is no ``/proc``."""
    kb = _status_kb("VmRSS")
    return kb * 1024 if kb is not None else max_rss()


def reset_peak() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_heap() -> None:
    """Collect garbage and hand free heap memory back to the system (glibc's ``malloc_trim``;
    a no-op elsewhere).  This releases what is free now and changes no allocator setting."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_calls(build: Callable[[], Callable[[], Any]], contender: str,
                  calls: int = CALLS) -> dict:
    """The measurement of a memory process, once the case's inputs exist: release the heap,
    reset the high-water mark, ``build()`` the contender (it returns the function to call),
    take the baseline, call it ``calls`` times.  Returns the figures (bytes) as a dict, which
    the process prints as one JSON line for ``launch``.

    A tapediff contender (its name starts with "tapediff") first loads tapediff's compiled
    sweeps (``backends.warm_tapediff``): a fixed cost per process, like an import, so it
    goes into the baseline rather than into what the calls add (it is in the peak)."""
    release_heap()
    reset = reset_peak()
    if contender.startswith(TAPEDIFF):
        from .backends import warm_tapediff
        warm_tapediff()
    run = build()
    baseline = current_rss()
    for _ in range(calls):
        run()
    return {"peak": max_rss(), "baseline": baseline, "calls": calls,
            "whole_process": not reset,
            "peers_imported": [m for m in _PEER_MODULES if m in sys.modules]}


def contender_builder(case, contender: str) -> Callable[[], Any]:
    """A function that builds ``contender`` of a ``Case`` as the runner does (the builders of
    ``bench/backends.py``) and returns its ``run``.  A peer is imported by this call only."""
    from . import backends as B

    def build():
        if contender == TAPEDIFF:
            return B.tapediff(case).run
        if contender in case.td_variants:
            return B.tapediff(case, case.td_variants[contender], contender).run
        if contender == TAPEDIFF_REPLAY:
            return B.tapediff_replay(case).run
        if contender in (PRIMAL, PYTHON_PRIMAL):
            return B.primal(case).run
        if contender == HAND and case.hand_grad is not None:
            return B.hand(case).run
        if contender in B.PEER_BUILDERS:
            peer = B.load_peers([contender])[contender]
            if not peer.version:
                raise ImportError(f"{contender} is not available: {peer.why_not}")
            return B.PEER_BUILDERS[contender](case).run
        raise ValueError(f"{case.name} has no contender {contender!r}")

    return build


def main(argv: list[str]) -> int:
    """``python -m bench.memory WORKLOAD CASE CONTENDER [--quick]``: build the case (from the
    workload's ``cases(quick)``), measure the contender (``measure_calls``), print one JSON
    line.  Exit code 2 for an unknown workload, case or contender."""
    from .workloads import load

    args = [a for a in argv if a != "--quick"]
    if len(args) != 3:
        print("usage: python -m bench.memory WORKLOAD CASE CONTENDER [--quick]",
              file=sys.stderr)
        return 2
    workload, case_name, contender = args
    try:
        module = load(workload)
    except KeyError as e:
        print(e.args[0], file=sys.stderr)
        return 2
    cases = module.cases("--quick" in argv)
    case = next((c for c in cases if c.name == case_name), None)
    if case is None:
        print(f"{workload} has no case {case_name!r} (its cases: "
              f"{', '.join(c.name for c in cases)})", file=sys.stderr)
        return 2
    del cases  # the other cases' inputs are released before the mark is reset
    try:
        build = contender_builder(case, contender)
        print(json.dumps(measure_calls(build, contender)))
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    return 0


# -- in the runner -----------------------------------------------------------------------------
def launch(module: str, args: list[str], timeout_s: float = TIMEOUT_S) -> Rss:
    """Run ``python -m module *args`` (a memory process) from the repository root and read
    the JSON line it prints last.  A run that compiled Numba's sweeps is repeated (up to
    ``ATTEMPTS`` runs).  Failures come back as ``Rss(error=...)``, never raised."""
    cmd = [sys.executable, "-m", module, *args]
    t0 = time.perf_counter()
    proc = None
    for _ in range(ATTEMPTS):
        try:
            proc = subprocess.run(cmd, cwd=_ROOT, capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return Rss(error=f"no result within {timeout_s:.0f} s",
                       seconds=time.perf_counter() - t0)
        if proc.returncode != 0 or COMPILING not in proc.stderr:
            break
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return Rss(error=f"the process failed: {tail[0][-300:]}", seconds=seconds)
    if COMPILING in proc.stderr:
        return Rss(error=f"Numba compiled the sweeps in each of {ATTEMPTS} runs",
                   seconds=seconds)
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Rss(error=f"unreadable output {proc.stdout[-200:]!r}", seconds=seconds)
    return Rss(peak=out["peak"], baseline=out["baseline"], calls=out["calls"],
               whole_process=out["whole_process"], seconds=seconds)


def case_rss(workload: str, case_name: str, contender: str, quick: bool) -> Rss:
    """``contender``'s memory process for the case ``case_name`` of ``workload`` (a
    ``bench.case.Case`` workload, by its ``--only`` name)."""
    return launch("bench.memory", [workload, case_name, contender]
                  + (["--quick"] if quick else []))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
