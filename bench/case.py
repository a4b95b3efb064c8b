"""What a workload hands the runner: ``Case`` (one objective at one size) and ``Metric``.

A workload module (``bench/workloads/scalar.py``, ``bench/workloads/gmm.py`` ...) exposes
``cases(quick)``, a list of ``Case``.  Each case carries its objective written once, in
NumPy style, against an array namespace ``xp`` (``bench/backends.py`` supplies one per
library), the parameters to differentiate and the constant data.  The runner turns it into
one timed function per contender (NumPy primal, hand-written gradient, tapediff, tapediff
replay, PyTorch, JAX, autograd), checks that every gradient agrees with tapediff's, then
times them in paired rounds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

# contender names, as printed and as keys of the results
TAPEDIFF = "tapediff"
TAPEDIFF_REPLAY = "tapediff replay"  # td.value_and_grad(f, replay=True), replayed calls
PRIMAL = "NumPy primal"
PYTHON_PRIMAL = "Python primal"  # the primal of scalar code (plain Python floats)
HAND = "NumPy hand grad"
TORCH_NAME = "PyTorch"
JAX_NAME = "JAX jit"
AUTOGRAD_NAME = "autograd"
PEER_NAMES = (TORCH_NAME, JAX_NAME, AUTOGRAD_NAME)


@dataclass
class Metric:
    """A figure that is not a contender's time: recording ns/op, compile seconds ..."""

    name: str
    value: float
    unit: str
    note: str = ""
    text: str = ""  # printed instead of the value when set (e.g. "always")


@dataclass
class Case:
    """One objective at one size.

    ``objective(xp, *params, *data)`` returns a scalar.  ``params`` are differentiated
    (ndarrays or Python floats; a list of many floats is many leaves), ``data`` are constants
    (ndarrays, passed through unchanged to NumPy and tapediff, converted once for peers).
    """

    workload: str  # family name, as given to --only
    name: str  # row title, e.g. "gmm d=10 K=5 n=1,000"
    objective: Callable[..., Any]
    params: Sequence[Any]
    data: Sequence[Any] = ()
    size: dict = field(default_factory=dict)  # for --json: {"n": 1000, "d": 10, ...}
    # (*params, *data) -> (value, [gradient per param]), plain NumPy; None if there is none
    hand_grad: Callable[..., Any] | None = None
    # namespace of the primal: "numpy" (ndarrays) or "math" (Python floats, scalar code)
    primal_ns: str = "numpy"
    # namespace tapediff runs in: "numpy" (np.* functions dispatch to tapediff through
    # NEP 13/18: the NumPy code runs unchanged) or "td" (td.sin & co., the scalar fast path)
    td_ns: str = "numpy"
    rtol: float = 1e-6  # gradient agreement: |peer - tapediff| <= atol + rtol |tapediff|
    atol: float = 1e-9  # ... with atol scaled by the largest |tapediff gradient| entry
    skip: dict = field(default_factory=dict)  # contender name -> why it is not run here
    # tapediff-only figures measured after timing (recording ns/op, sweep ns/record)
    extra: Callable[[], list[Metric]] | None = None
    # extra tapediff variants: label -> namespace ("numpy" or "td")
    td_variants: dict = field(default_factory=dict)
    # also run "tapediff replay": td.value_and_grad(objective, replay=True), recorded on its
    # first call (outside the timings) and replayed in compiled code on the timed calls
    replay: bool = False
    # measure the replayed objective's throughput from 1 thread and from 2 threads
    threads: bool = False
    note: str = ""  # printed under the case's rows


@dataclass
class MetricsCase:
    """A case that only reports figures (compile time): ``run()`` returns ``[Metric]``."""

    workload: str
    name: str
    run: Callable[[], list[Metric]]
    size: dict = field(default_factory=dict)
    note: str = ""


@dataclass
class FunctionsCase:
    """Functions timed side by side whose results are not one value and gradient: a gradient
    beside a Hessian-vector product, a Hessian (``bench/workloads/higher.py``).

    ``build(peers)`` returns ``({name: (run, result)}, skipped)``: ``run()`` is timed,
    ``result()`` returns what it computes (an array, for ``check``); tapediff's functions
    come first, and the first is the reference of the paired ratios ("x tapediff").
    ``skipped``: peer name -> why it is not run.  ``check({name: result})`` returns
    (problems, names): each problem fails the run, and the names are not timed.
    ``figures(res)`` returns Metrics read from the timed rounds (the ratios);
    ``memory(name, quick)`` returns a contender's ``bench.memory.Rss`` (the RSS high-water
    mark of a process running only that contender), asked when the run measures memory.
    """

    workload: str
    name: str
    build: Callable[[list], tuple[dict, dict]]
    check: Callable[[dict], tuple[list, set]]
    figures: Callable[[Any], list] | None = None
    memory: Callable[[str, bool], Any] | None = None
    size: dict = field(default_factory=dict)
    note: str = ""
