"""Replay's figures: per-record cost, ratios to eager tapediff and PyTorch, the trade-off
against JAX's compile, and throughput from two threads.

The "tapediff replay" contender (``bench/backends.py``) is ``td.value_and_grad(f,
replay=True)``: its first call records ``f`` (timed then, as ``first_call_s``), the timed
calls replay the recording in compiled code.  ``figures`` turns a case's paired rounds into
the figures the replay issue asks for:

* ``tapediff replay``: the replayed call's median time per tape record (``len(f.tape)``);
* the paired ratios eager tapediff / replay and PyTorch / replay (> 1: replay is faster);
* against JAX (``jit(value_and_grad)``): both steady states, JAX's compile time (its first
  call minus its steady state), tapediff's recording time (its first call), and how many
  calls N keep tapediff's record + N replays ahead of JAX's compile + N calls.

``thread_throughput`` calls one replayed function from one worker thread, then from two at
once (each thread its own inputs, hence its own recording), in paired rounds.
"""
from __future__ import annotations

import math
import queue
import statistics
import threading
import time

import numpy as np

from .case import JAX_NAME, TAPEDIFF, TAPEDIFF_REPLAY, TORCH_NAME, Metric
from .targets import paired_ratio

# names of the figures, read by bench/targets.py
PER_RECORD = "tapediff replay"  # ns/record
VS_EAGER = "eager tapediff / replay"
VS_TORCH = "PyTorch / replay"
RECORDING = "replay: recording (first call)"
JAX_STEADY = "JAX steady state"
REPLAY_STEADY = "replay steady state"
JAX_COMPILE = "JAX compile (first call - steady state)"
BREAK_EVEN = "replay vs JAX: record + N replays ahead of compile + N calls"
THREADS = "replay throughput, 2 threads / 1 thread"
THREADS_CONTROL = "control throughput, 2 threads / 1 thread"


def break_even(record_s: float, replay_s: float, compile_s: float,
               jax_s: float) -> tuple[float, str]:
    """Compare tapediff's ``record_s + N replay_s`` with JAX's ``compile_s + N jax_s``.

    Returns (N, text): "always" (N = inf) when tapediff is ahead for every N >= 1; "up to
    N calls" when it starts ahead but JAX's faster calls catch up after N; "after N calls"
    when it starts behind and its faster calls catch up (ahead from N on); "never"."""
    def ahead(n: int) -> bool:
        return record_s + n * replay_s < compile_s + n * jax_s

    if replay_s <= jax_s:
        if ahead(1):
            return math.inf, "always"
        if replay_s == jax_s:
            return math.inf, "never"
        n = math.floor((record_s - compile_s) / (jax_s - replay_s)) + 1
        while not ahead(n):  # guard against rounding at the boundary
            n += 1
        return float(n), f"after {n:,} calls (tapediff ahead from N = {n:,} on)"
    if not ahead(1):
        return 0.0, "never"
    n = math.ceil((compile_s - record_s) / (replay_s - jax_s)) - 1
    while not ahead(n):
        n -= 1
    while ahead(n + 1):
        n += 1
    return float(n), f"up to {n:,} calls (JAX ahead from N = {n + 1:,} on)"


def _ms(s: float) -> str:
    return f"{s * 1e3:,.3g} ms" if s < 1 else f"{s:,.2f} s"


def figures(res, cons: list) -> list[Metric]:
    """Replay's figures from a case's paired rounds (``res.timings``) and its contenders."""
    by_name = {c.name: c for c in cons}
    rep = by_name.get(TAPEDIFF_REPLAY)
    t_rep = res.timings.get(TAPEDIFF_REPLAY)
    if rep is None or t_rep is None:
        return []
    nrec = len(rep.replayed.tape)
    out = [Metric(PER_RECORD, t_rep.median / nrec * 1e9, "ns/record",
                  f"value + gradient per call, {nrec:,} records on the tape; median; "
                  f"min {min(t_rep.samples) / nrec * 1e9:.1f}")]
    x = paired_ratio(res, TAPEDIFF, TAPEDIFF_REPLAY)
    if x is not None:
        out.append(Metric(VS_EAGER, x, "x", "paired rounds; > 1: replay is faster"))
    x = paired_ratio(res, TORCH_NAME, TAPEDIFF_REPLAY)
    if x is not None:
        out.append(Metric(VS_TORCH, x, "x", "paired rounds; > 1: replay is faster"))
    out.append(Metric(RECORDING, rep.first_call_s * 1e3, "ms",
                      "first call of value_and_grad(replay=True): record + sweep"))
    jax = by_name.get(JAX_NAME)
    t_jax = res.timings.get(JAX_NAME)
    if jax is not None and t_jax is not None and jax.first_call_s is not None:
        compile_s = max(jax.first_call_s - t_jax.median, 0.0)
        n, text = break_even(rep.first_call_s, t_rep.median, compile_s, t_jax.median)
        out += [
            Metric(JAX_STEADY, t_jax.median * 1e3, "ms", "median per call"),
            Metric(REPLAY_STEADY, t_rep.median * 1e3, "ms", "median per call"),
            Metric(JAX_COMPILE, compile_s * 1e3, "ms",
                   f"first call {_ms(jax.first_call_s)}"),
            Metric(BREAK_EVEN, n, "calls", f"record {_ms(rep.first_call_s)} + N x "
                   f"{_ms(t_rep.median)} vs compile {_ms(compile_s)} + N x "
                   f"{_ms(t_jax.median)}", text=text),
        ]
    return out


# -- threads --------------------------------------------------------------------------------
class _Worker:
    """A thread that calls ``call()`` once (replay: this thread's recording), then ``k`` times
    whenever told, after a barrier shared with the other workers of that run."""

    def __init__(self, call) -> None:
        self.call = call
        self.todo: queue.Queue = queue.Queue()
        self.done: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        self.result()  # the first call

    def _loop(self) -> None:
        try:
            self.call()
            self.done.put(None)
            while True:
                job = self.todo.get()
                if job is None:
                    return
                k, barrier = job
                barrier.wait()
                t0 = time.perf_counter()
                for _ in range(k):
                    self.call()
                self.done.put((t0, time.perf_counter()))
        except BaseException as e:  # reported by the main thread
            self.done.put(e)

    def result(self):
        r = self.done.get()
        if isinstance(r, BaseException):
            raise r
        return r

    def start(self, k: int, barrier: threading.Barrier) -> None:
        self.todo.put((k, barrier))

    def stop(self) -> None:
        self.todo.put(None)
        self.thread.join()


def _run(workers: list, k: int) -> float:
    """Wall seconds for every worker to make ``k`` calls at once."""
    barrier = threading.Barrier(len(workers))
    for w in workers:
        w.start(k, barrier)
    spans = [w.result() for w in workers]
    return max(t1 for _, t1 in spans) - min(t0 for t0, _ in spans)


def _calls(workers: list, sample_s: float) -> int:
    _run(workers[:1], 2)  # warm
    _run(workers, 2)
    return max(1, int(sample_s / (_run(workers[:1], 3) / 3)))


def thread_throughput(case, quick: bool) -> list[Metric]:
    """Calls per second of one replayed function from 1 thread and from 2 threads at once.

    Each worker thread calls it with its own inputs (the params scaled by 1 + 1e-3 (i + 1)),
    so each keeps its own recording; the function must record exactly once per thread.
    Paired rounds alternate 1 thread and 2 threads; the figure is the median over rounds of
    (2-thread calls/s) / (1-thread calls/s), 2.0 being perfect scaling.  A control runs in
    the same rounds: a 256 x 256 matmul loop (BLAS, which releases the GIL), showing how
    much a second thread can gain on this machine at that moment (on a shared machine the
    second core may be busy)."""
    from .backends import replay_function

    fn, args = replay_function(case)
    nparams = len(case.params)

    def replayed(i: int):
        s = 1.0 + 1e-3 * (i + 1)
        mine = [np.asarray(a) * s if j < nparams else a for j, a in enumerate(args)]
        return lambda: fn(*mine)

    def control(i: int):
        a = np.random.default_rng(i).normal(size=(256, 256))
        out = np.empty_like(a)
        return lambda: np.matmul(a, a, out=out)

    sample_s, rounds = (0.02, 3) if quick else (0.25, 7)
    pools = {"replay": [_Worker(replayed(i)) for i in range(2)],
             "control": [_Worker(control(i)) for i in range(2)]}
    try:
        ks = {name: _calls(ws, sample_s) for name, ws in pools.items()}
        ratios = {name: [] for name in pools}
        rates = {name: ([], []) for name in pools}
        for r in range(rounds):
            for name, ws in pools.items():
                k = ks[name]
                if r % 2 == 0:
                    a, b = _run(ws[:1], k), _run(ws, k)
                else:
                    b, a = _run(ws, k), _run(ws[:1], k)
                rates[name][0].append(k / a)
                rates[name][1].append(2 * k / b)
                ratios[name].append((2 * k / b) / (k / a))
    finally:
        for ws in pools.values():
            for w in ws:
                w.stop()
    if fn.recordings != 2:
        raise AssertionError(f"the 2 threads recorded {fn.recordings} times, not once each "
                             f"(last guard: {fn.last_guard})")
    one, two = (statistics.median(x) for x in rates["replay"])
    return [
        Metric(THREADS, statistics.median(ratios["replay"]), "x",
               f"{one:,.0f} calls/s from 1 thread, {two:,.0f} from 2; {rounds} paired rounds "
               f"of {ks['replay']} calls per thread; 2.0 = perfect scaling"),
        Metric(THREADS_CONTROL, statistics.median(ratios["control"]), "x",
               "256x256 matmul loop (BLAS, GIL released), same rounds: what a second "
               "thread can gain on this machine now"),
    ]
