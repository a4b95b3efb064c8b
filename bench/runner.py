"""``python -m bench``: tapediff against the NumPy primal and every installed peer.

For each case of each workload (``--only`` picks workloads):

1. build the contenders: tapediff, tapediff replay where the case asks for it
   (``td.value_and_grad(f, replay=True)``, recorded here by its first call), the NumPy
   primal (forward only), the hand-written NumPy gradient where the workload has one, and
   each importable peer (PyTorch eager, ``jax.jit(jax.value_and_grad)``, HIPS autograd);
2. check that every gradient agrees with tapediff's (and the primal's value with
   tapediff's value).  A disagreement, or tapediff failing, fails the run: the exit code is
   1 and the message names the case and the contender;
3. warm up and time all contenders in paired rounds (``bench/timing.py``), then measure any
   case-specific figures; replay's figures (``bench/replay_figures.py``) come from the same
   rounds, and a replay contender that recorded again during the timed calls fails the run;
4. measure each timed contender's peak memory in a fresh process of its own
   (``bench/memory.py``: ``python -m bench.memory WORKLOAD CASE CONTENDER``, run with
   glibc's default allocator): the RSS high-water mark over building the contender and
   calling it 8 times, and that peak above the process's RSS before the first call (the
   interpreter, the imports and the inputs).  The contenders of this process are released
   (and its free heap handed back) first, so the two processes' memory does not add up.
   Full runs do this step, ``--quick`` runs skip it; ``--memory`` and ``--no-memory`` say
   otherwise.  A process that fails is reported beside the case, not fatal.

The table goes to stdout as each case finishes, progress lines to stderr.  ``--json FILE``
writes every number, ``--plot FILE.png`` a chart of time and peak memory against problem size
(needs matplotlib).  ``--quick`` runs small sizes in well under a minute (CI's smoke test).

Before the first case the runner checks what the run needs (matplotlib for ``--plot``,
writable folders for the output files; exit code 2 and nothing run otherwise) and prints
what the run is expected to take (``COST``, measured).  At the end each target is printed
as its goal and the measured figure; peers that did not run are summed up in one line each,
with the command that adds them.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np  # bench/__init__.py has pinned the thread counts by now

import tapediff as td

from . import backends as B
from . import memory, replay_figures, workloads
from .case import (
    PEER_NAMES, TAPEDIFF, TAPEDIFF_REPLAY, TORCH_NAME, Case, FunctionsCase, MetricsCase,
)
from .report import (
    INSTALL_ONE, INSTALL_PEERS, PEERS_HINT, case_lines, fmt_bytes, header_lines, plot,
    target_lines, to_json, to_markdown,
)
from .targets import evaluate
from .timing import paired_rounds, steady_allocator

WORKLOADS = {name: workloads.load(name) for name in workloads.MODULES}


@dataclass
class Settings:
    rounds: int  # paired rounds wanted ...
    min_rounds: int  # ... never fewer ...
    budget_s: float  # ... and fewer than ``rounds`` if they would take longer than this
    sample_s: float  # one sample lasts about this long (short calls are repeated)
    warmup_calls: int
    warmup_s: float
    quick: bool = False  # --quick: short side measurements too (threads)
    memory: bool = True  # each contender's peak RSS in a process of its own (step 4)


# A sample averages enough calls to last ``sample_s``: on a shared machine the process loses
# the CPU for a few ms at a time, and a sample much longer than that sees about the same
# share of such pauses as every other sample, where single 2 ms calls come out bimodal.
QUICK = Settings(rounds=5, min_rounds=3, budget_s=1.0, sample_s=0.01, warmup_calls=2,
                 warmup_s=0.05, quick=True, memory=False)
FULL = Settings(rounds=21, min_rounds=7, budget_s=25.0, sample_s=0.05, warmup_calls=5,
                warmup_s=1.0)

# What a run costs, printed before it starts.  Measured with ``--peers none`` (NumPy and
# tapediff only; PyTorch installed, so imported) under /usr/bin/time -v on a 2-core AMD EPYC
# with 24 GB, 2026-12-06, other jobs sharing the cores: wall seconds per workload, --quick
# (load ~2.5, 21 s in all, 0.52 GB peak RSS) and full (load ~4, 10.5 min in all, 8.26 GB
# peak RSS, in the GMM cases), and the full run's peak RSS (GB) while in that workload.
# glibc keeps freed memory mapped (see steady_allocator), so a workload's figure includes
# what earlier ones left behind.  The peak is GMM d=64 K=25 n=10,000 (the others: <= 4.4 GB).
COST = {  # workload: (quick s, full s, full peak GB)
    "scalar": (2.7, 57, 0.6),
    "elementwise": (2.3, 46, 1.4),
    "mlp": (2.6, 37, 1.4),
    "gmm": (2.6, 265, 3.9),  # peak: 8.3 GB on 2026-12-06, 3.7-3.9 GB on 2026-12-07
    "ba": (0.9, 75, 4.1),
    "ops": (1.9, 47, 1.4),
    "linalg": (2.9, 22, 1.4),
    "compile": (3.3, 75, 1.4),  # full: a cold compile in a fresh process
    # measured with PyTorch, load ~1, 2026-12-06: quick 6 s, full 66 s and 0.78 GB peak RSS;
    # full: those 70 s less its memory processes (39 s on 2026-12-07), now in MEMORY_COST
    "higher": (6.0, 31, 0.8),
}
# Step 4, each timed contender's memory in a process of its own (bench/memory.py): the
# workload's memory processes in wall seconds, summed from the runner's progress lines, for
# the contenders other than the peers and for PyTorch's.  Same machine, 2026-12-07, PyTorch
# 2.13.0+cpu, --peers torch:
# * full, --only gmm: 6 min 17 s wall and 3.9 GB peak RSS (the runner's; the largest memory
#   process, eager tapediff at d=64 K=25 n=10,000, peaked at 1.54 GB), of which step 4 took
#   129 s (70 processes); load ~1.5.  With --no-memory: 3 min 31 s and 3.7 GB (that run's
#   first case did not compile Numba's replay sweeps, the run with memory's did);
# * full, --only scalar,elementwise,mlp,ba,ops,linalg,higher: 9 min wall, 2.5 GB peak RSS,
#   step 4 236 s (103 processes), including one process that compiled Numba's sweeps (a cache
#   made stale by edits to tapediff/) and ran again: 34 s, left out of "elementwise" below;
# * --quick --memory, those eight workloads: 151 s wall (--quick alone: ~20 s), step 4 140 s.
# The memory processes run after the runner has released its contenders (0.5 GB RSS left in
# it, with PyTorch imported) and stay below its own peak, so the peak figures above hold.
MEMORY_COST = {  # workload: (quick s, full s, quick s PyTorch adds, full s PyTorch adds)
    "scalar": (7.2, 7.4, 4.6, 6.7),
    "elementwise": (8.1, 15, 8.7, 14.3),
    "mlp": (9.1, 7.5, 5.5, 4.8),
    "gmm": (7.4, 82.5, 4.2, 46.8),
    "ba": (3.0, 35.0, 2.4, 20.5),
    "ops": (5.9, 16.3, 7.6, 19.7),
    "linalg": (9.8, 9.9, 7.7, 7.5),
    "higher": (9.9, 14.0, 30.7, 25.1),
}
STARTUP_S = (2, 7)  # imports before the first case: --quick, full
QUICK_PEAK_GB = 0.5  # --quick, every workload
COST_MACHINE = "a 2-core AMD EPYC shared with other jobs"
# The full run with PyTorch 2.13.0+cpu took 9.2 min (load ~2.5: the timed rounds are bounded
# by a time budget per case, so a peer adds little time) and 9.35 GB peak RSS.
PEER_PEAK_GB = {TORCH_NAME: 1.1}  # added to the full run's peak


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min"


def expected_seconds(workloads: list[str], quick: bool, peers: list[str],
                     memory: bool) -> float:
    """Wall seconds a run is expected to take (``COST``, and ``MEMORY_COST`` when it
    measures memory); workloads without figures count nothing."""
    secs = STARTUP_S[0 if quick else 1]
    for w in workloads:
        secs += COST[w][0 if quick else 1] if w in COST else 0
        if memory and w in MEMORY_COST:  # step 4: a process per contender
            alone_q, alone, torch_q, torch_full = MEMORY_COST[w]
            secs += alone_q if quick else alone
            if TORCH_NAME in peers:
                secs += torch_q if quick else torch_full
    return secs


def expected_cost(workloads: list[str], quick: bool, peers: list[str],
                  memory: bool | None = None) -> tuple[str, float]:
    """What the run will take: a sentence, and its peak memory in GB.  ``memory``: whether
    the run measures each contender's memory in its own process (default: full runs do)."""
    memory = not quick if memory is None else memory
    known = [w for w in workloads if w in COST]
    secs = expected_seconds(workloads, quick, peers, memory)
    peak = QUICK_PEAK_GB if quick else max([QUICK_PEAK_GB] + [COST[w][2] for w in known])
    if not quick:
        peak += sum(PEER_PEAK_GB.get(p, 0.0) for p in peers)
    text = (f"about {_duration(secs)} and {peak:.1f} GB peak memory "
            f"{'with ' + ', '.join(peers) if peers else 'without peers'} "
            f"(measured on {COST_MACHINE}")
    unmeasured = [p for p in peers if p not in PEER_PEAK_GB]
    text += f"; {', '.join(unmeasured)} not included)" if unmeasured else ")"
    if len(known) < len(workloads):
        text += f"; not counted: {', '.join(w for w in workloads if w not in COST)}"
    if not quick and secs > 120:
        text += ("; python -m bench --quick takes about 30 s (a minute on a first run, which "
                 "compiles)")
    return text, peak


def _available_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2 ** 20
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass
class CaseResult:
    workload: str
    name: str
    size: dict
    note: str = ""
    order: list = field(default_factory=list)  # contender names, tapediff first
    timings: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)  # contender name -> bench.memory.Rss
    compile_s: dict = field(default_factory=dict)
    metrics: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)  # failures of the run (mismatches, crashes)


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- machine --------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _blas() -> str:
    try:
        import threadpoolctl

        # NumPy's own BLAS (SciPy and PyTorch may load others)
        libs = [f"{i['internal_api']} {i['version']} ({i.get('architecture', '?')} kernels, "
                f"{i['num_threads']} thread)" for i in threadpoolctl.threadpool_info()
                if i["user_api"] == "blas" and "numpy" in i.get("filepath", "")]
        return ", ".join(libs) or "BLAS unknown"
    except ImportError:
        return "BLAS kernels unknown (pip install threadpoolctl to see them)"


def _tapediff_revision() -> str:
    """The commit tapediff was imported from, and whether its files differ from it."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(td.__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "tapediff"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    if not head:
        return "not a git checkout"
    return head + (" + uncommitted changes in tapediff/" if dirty else "")


def machine_info(peers: list[str], quick: bool) -> dict:
    import numba

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    peer_text = "; ".join(
        f"{p.name} {p.version}" if p.version else f"{p.name}: not installed" + (
            "" if p.why_not.startswith("No module named") else f" ({p.why_not})")
        for p in B.PEERS.values())
    if set(peers) != {p.name for p in B.PEERS.values() if p.version}:
        peer_text += f"  [running: {', '.join(peers) or 'none'}]"
    threads = [f"{v}={os.environ.get(v, 'unset')}" for v in
               ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS")]
    if B.torch is not None:
        threads.append(f"torch.get_num_threads()={B.torch.get_num_threads()}")
    if B.jax is not None:
        threads.append(f"XLA_FLAGS='{os.environ.get('XLA_FLAGS', '')}'")
    warning = ""
    if os.environ.get("OPENBLAS_CORETYPE"):
        warning = (f"OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} is set: OpenBLAS "
                   "uses those kernels, which may be slower than the ones it would pick "
                   "(NumPy's matmuls, hence the primal, hand gradients and tapediff, "
                   "are affected; PyTorch and JAX are not)")
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "mode": "quick" if quick else "full",
        "cpu": _cpu_model(), "cores": os.cpu_count(), "load_start": load,
        "software": (f"Python {platform.python_version()}, NumPy {np.__version__} "
                     f"[{_blas()}], Numba {numba.__version__}, tapediff {td.__version__} "
                     f"({_tapediff_revision()})"),
        "peers": peer_text, "threads": "one thread for every library: " + ", ".join(threads),
        "peers_hint": "" if all(p.version for p in B.PEERS.values()) else PEERS_HINT,
        "warning": warning,
    }


# -- one case ---------------------------------------------------------------------------------
def _close(a, b, rtol: float, atol: float) -> tuple[bool, str]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return False, f"shape {a.shape} vs tapediff's {b.shape}"
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    ok = bool(np.allclose(a, b, rtol=rtol, atol=atol * max(scale, 1e-300)))
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    return ok, f"max |diff| {err:.3g} (largest |tapediff| {scale:.3g})"


def check(case: Case, cons: list, res: CaseResult) -> list:
    """Compare every contender with tapediff; return the contenders that agree (tapediff
    first).  Disagreements and failures go to ``res.errors``."""
    ref = cons[0]
    try:
        v_ref, g_ref = ref.value_and_grads()
    except Exception as e:  # a tapediff failure fails the run
        res.errors.append(f"{case.name}: tapediff raised {type(e).__name__}: {e}")
        traceback.print_exc()
        return []
    keep = [ref]
    for c in cons[1:]:
        try:
            if c.value_and_grads is None:  # the primal: its value only
                v, gs = float(c.run()), None
            else:
                v, gs = c.value_and_grads()
        except Exception as e:
            res.errors.append(f"{case.name}: {c.name} raised {type(e).__name__}: {e}")
            continue
        problems = []
        ok, why = _close(v, v_ref, case.rtol, case.atol)
        if not ok:
            problems.append(f"value {v!r} vs tapediff's {v_ref!r}")
        for i, (g, gr) in enumerate(zip(gs or [], g_ref)):
            ok, why = _close(g, gr, case.rtol, case.atol)
            if not ok:
                problems.append(f"gradient of parameter {i}: {why}")
        if problems:
            res.errors.append(f"GRADIENT MISMATCH in {case.workload} / {case.name}: "
                              f"{c.name} disagrees with tapediff: " + "; ".join(problems))
        else:
            keep.append(c)
    return keep


def _time(res: CaseResult, cons: list, reference: str, settings: Settings, what: str) -> None:
    """Time ``cons`` in paired rounds against ``reference``, into ``res``."""
    res.order = [c.name for c in cons]
    progress(f"{what}: warming up and timing {len(cons)} contenders")
    t0 = time.perf_counter()
    res.timings = paired_rounds(
        cons, reference, rounds=settings.rounds, min_rounds=settings.min_rounds,
        budget_s=settings.budget_s, sample_s=settings.sample_s,
        warmup_calls=settings.warmup_calls, warmup_s=settings.warmup_s)
    progress(f"{what}: timed in {time.perf_counter() - t0:.1f} s")


def run_functions_case(case: FunctionsCase, peers: list[str], settings: Settings,
                       tag: str) -> CaseResult:
    """A case of functions the workload builds (see ``FunctionsCase``): each computed once
    and checked by the case, then timed in paired rounds against the first (tapediff's)."""
    res = CaseResult(case.workload, case.name, case.size, case.note)
    progress(f"{tag} {case.name}: building contenders")
    fns, res.skipped = case.build(peers)
    first = next(iter(fns))
    outputs = {}
    for name, (_, result) in fns.items():
        try:
            outputs[name] = result()
        except Exception as e:  # tapediff failing fails the run, and so does a peer here
            res.errors.append(f"{case.name}: {name} raised {type(e).__name__}: {e}")
            if name.startswith(TAPEDIFF):
                traceback.print_exc()
    progress(f"{tag} {case.name}: checking {len(outputs)} results")
    problems, drop = case.check(outputs)
    res.errors += problems
    cons = [B.Contender(name, run, None) for name, (run, _) in fns.items()
            if name in outputs and name not in drop]
    if not cons or cons[0].name != first:
        return res
    _time(res, cons, first, settings, f"{tag} {case.name}")
    if case.figures is not None:
        res.metrics = case.figures(res)
    return res


def measure_memory(res: CaseResult, rss: Callable[[str], memory.Rss], tag: str) -> None:
    """Step 4: each timed contender's memory process (``rss(name)``, see ``bench/memory.py``)
    into ``res.memory``, one after the other.  Call it once this process no longer holds the
    case's contenders: ``memory.release_heap`` then gives their memory back first."""
    names = [n for n in res.order if n in res.timings]
    if not names:
        return
    memory.release_heap()
    progress(f"{tag} {res.name}: peak memory, a process per contender ({len(names)})")
    for name in names:
        r = res.memory[name] = rss(name)
        figure = (f"peak RSS {fmt_bytes(r.peak)}, {fmt_bytes(r.above)} above its "
                  f"{fmt_bytes(r.baseline)} before the first call"
                  if not r.error else f"not measured: {r.error}")
        progress(f"{tag} {res.name}: {name}: {figure} ({r.seconds:.1f} s)")


def run_case(case, peers: list[str], settings: Settings, tag: str) -> CaseResult:
    """Steps 1-4 of the module docstring for one case (of any kind in ``bench/case.py``)."""
    if isinstance(case, MetricsCase):
        res = CaseResult(case.workload, case.name, case.size, case.note)
        progress(f"{tag} {case.name}: measuring")
        res.metrics = case.run()
        return res
    if isinstance(case, FunctionsCase):  # higher.py: memory processes of its own
        res = run_functions_case(case, peers, settings, tag)
        if settings.memory and case.memory is not None:
            measure_memory(res, lambda name: case.memory(name, settings.quick), tag)
        return res
    res = time_case(case, peers, settings, tag)  # its contenders are released on return
    if settings.memory:
        measure_memory(res, lambda name: memory.case_rss(case.workload, case.name, name,
                                                         settings.quick), tag)
    return res


def time_case(case: Case, peers: list[str], settings: Settings, tag: str) -> CaseResult:
    """Steps 1-3 for a ``Case``: build, check and time the contenders, then the figures."""
    res = CaseResult(case.workload, case.name, case.size, case.note)
    progress(f"{tag} {case.name}: building contenders")
    cons = [B.tapediff(case)]
    cons += [B.tapediff(case, ns, label) for label, ns in case.td_variants.items()]
    if case.replay:
        try:
            cons.append(B.tapediff_replay(case))  # its first call records, untimed
        except Exception as e:  # tapediff failing fails the run
            res.errors.append(f"{case.name}: {TAPEDIFF_REPLAY} raised while recording: "
                              f"{type(e).__name__}: {e}")
            traceback.print_exc()
    cons.append(B.primal(case))
    if case.hand_grad is not None:
        cons.append(B.hand(case))
    for name in peers:
        if name in case.skip:
            res.skipped[name] = case.skip[name]
            continue
        try:
            cons.append(B.PEER_BUILDERS[name](case))
        except Exception as e:  # a peer that cannot run this objective is reported, not fatal
            res.skipped[name] = f"failed to build: {type(e).__name__}: {e}"
    for c in cons:
        if c.compile_s is not None:
            res.compile_s[c.name] = c.compile_s
    progress(f"{tag} {case.name}: checking {len(cons) - 1} contenders against tapediff")
    cons = check(case, cons, res)
    if not cons:
        return res
    _time(res, cons, TAPEDIFF, settings, f"{tag} {case.name}")
    for c in cons:
        problem = c.verify() if c.verify is not None else None
        if problem:
            res.errors.append(f"{case.workload} / {case.name}: {problem}")
    if case.extra is not None:
        res.metrics = case.extra()
    res.metrics += replay_figures.figures(res, cons)
    if case.threads:
        progress(f"{tag} {case.name}: replay from 1 thread and from 2 threads")
        try:
            res.metrics += replay_figures.thread_throughput(case, settings.quick)
        except Exception as e:
            res.errors.append(f"{case.name}: replay from two threads failed: "
                              f"{type(e).__name__}: {e}")
            traceback.print_exc()
    return res


# -- command line -------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="tapediff against the NumPy primal, hand-written gradients and every "
                    "installed peer (PyTorch, JAX, HIPS autograd); see bench/RESULTS.md.",
        epilog="workloads: " + ", ".join(WORKLOADS))
    ap.add_argument("--quick", action="store_true",
                    help="small sizes and few rounds (a smoke test, under a minute)")
    ap.add_argument("--only", action="append", metavar="NAME",
                    help="run only these workloads (repeatable, or a comma list)")
    ap.add_argument("--peers", metavar="LIST",
                    help="comma list of peers to run, from torch, jax, autograd (default: "
                         "every importable one; 'none' for none)")
    ap.add_argument("--json", metavar="FILE", help="write all results as JSON")
    ap.add_argument("--plot", metavar="FILE.png", help="write a chart (needs matplotlib)")
    ap.add_argument("--markdown", metavar="FILE.md",
                    help="write the tables as Markdown (the body of bench/RESULTS.md)")
    ap.add_argument("--rounds", type=int, help="paired rounds per case (default 5 quick, 21 full)")
    ap.add_argument("--memory", action=argparse.BooleanOptionalAction, default=None,
                    help="measure each contender's peak memory (RSS high-water mark) in a "
                         "process of its own (default: in full runs, not with --quick)")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's malloc as it is (by default mmap and trimming are "
                         "turned off so that memory stays mapped between calls)")
    args = ap.parse_args(argv)
    names = [n.strip() for item in (args.only or []) for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workload(s) {', '.join(unknown)}; choose from "
                 f"{', '.join(WORKLOADS)}")
    args.workloads = list(dict.fromkeys(names)) or list(WORKLOADS)
    available = [n for n, p in B.load_peers().items() if p.version]
    if args.peers is None:
        args.peer_list = available
    elif args.peers.strip().lower() == "none":
        args.peer_list = []
    else:
        lookup = {n.lower().split()[0]: n for n in PEER_NAMES}
        lookup["torch"] = TORCH_NAME
        wanted = [lookup.get(p.strip().lower()) for p in args.peers.split(",")]
        if None in wanted:
            ap.error(f"--peers: choose from {', '.join(lookup)}")
        missing = [w for w in wanted if w not in available]
        if missing:
            ap.error(f"--peers: not installed: {', '.join(missing)}; add "
                     + ", ".join(f"{m} with {INSTALL_ONE[m]}" for m in missing))
        args.peer_list = wanted
    # what the run needs, checked now rather than after it
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            ap.error(f"--plot needs matplotlib, which is not installed: pip install matplotlib "
                     f"(or {INSTALL_PEERS}, which also adds the peers); nothing was run")
    for opt in ("json", "plot", "markdown"):
        path = getattr(args, opt)
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder and not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
            ap.error(f"--{opt} {path}: cannot write into {folder}; nothing was run")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    settings = QUICK if args.quick else FULL
    if args.rounds:
        settings = Settings(**{**settings.__dict__, "rounds": args.rounds,
                               "min_rounds": min(settings.min_rounds, args.rounds)})
    if args.memory is not None:
        settings = Settings(**{**settings.__dict__, "memory": args.memory})
    allocator = ("allocator: glibc's default (--default-malloc)" if args.default_malloc
                 else steady_allocator())
    info = machine_info(args.peer_list, args.quick)
    info["allocator"] = allocator
    info["memory"] = settings.memory
    info["expected"], peak_gb = expected_cost(args.workloads, args.quick, args.peer_list,
                                              settings.memory)
    available = _available_gb()
    if available is not None and peak_gb > 0.9 * available:
        info["expected"] += (f"; WARNING: only {available:.1f} GB of memory is available now "
                             "(--quick, or --only without gmm and ba, needs less)")
    for line in header_lines(info):
        print(line)
    print(flush=True)
    all_cases = [(wl, c) for wl in args.workloads for c in WORKLOADS[wl].cases(args.quick)]
    results = []
    start = time.perf_counter()
    for i, (wl, case) in enumerate(all_cases, 1):
        tag = f"[{i}/{len(all_cases)} {wl}]"
        try:
            res = run_case(case, args.peer_list, settings, tag)
        except Exception as e:  # keep going: report it and fail the run at the end
            traceback.print_exc()
            res = CaseResult(wl, case.name, getattr(case, "size", {}))
            res.errors.append(f"{case.name}: the runner failed: {type(e).__name__}: {e}")
        results.append(res)
        print("\n".join(case_lines(res)), flush=True)
    info["load_end"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    info["elapsed_s"] = round(time.perf_counter() - start, 1)
    verdicts = evaluate(results)
    print()
    missing = {p: ("not installed" if not B.PEERS[p].version else "left out by --peers")
               for p in PEER_NAMES if p not in args.peer_list}
    print("\n".join(target_lines(verdicts, args.quick, missing, settings.memory)))
    print(f"\nfinished in {info['elapsed_s']:.0f} s; load average at end {info['load_end']}")
    if args.json:
        to_json(info, results, verdicts, args.json)
        print(f"results written to {args.json}")
    if args.markdown:
        to_markdown(info, results, verdicts, args.markdown)
        print(f"Markdown written to {args.markdown}")
    if args.plot:
        print(plot(results, args.plot))
    errors = [e for r in results for e in r.errors]
    if errors:
        print("\n" + "!" * 78, file=sys.stderr)
        print(f"BENCHMARK FAILED: {len(errors)} problem(s):", file=sys.stderr)
        for e in errors:
            print(f"  - {e}", file=sys.stderr)
        print("!" * 78, file=sys.stderr)
        return 1
    return 0
