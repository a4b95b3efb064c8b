"""Scalar code: a long chain of scalar operations and a Horner polynomial with many leaves.

This is where a taping library lives or dies on per-operation overhead: every operation is on
a 0-d value, so the time is all bookkeeping (creating the tensor, appending the record) and
the reverse sweep.  Reported besides the contenders' times: tapediff's recording cost per
operation and sweep cost per record, measured separately.

* chain: ``y = sin(y * 0.999 + x) * 1.001``, repeated; 4 operations per round, one leaf.
* Horner: ``p = p * x + c_i`` over 2,000 coefficients, each its own leaf (2,001 leaves):
  the sweep must deliver 2,001 separate gradients.

The primal is plain Python on floats with ``math`` (the fastest way to run scalar code
without a tape); tapediff runs the same code with ``td.sin`` (its scalar fast path), and also
through ``np.sin`` (NumPy dispatching to tapediff, NEP 13), which costs a dispatch per call.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

import tapediff as td

from ..case import JAX_NAME, Case, Metric

WORKLOAD = "scalar"


def chain(xp, x, n):
    """``n`` scalar operations: n/4 rounds of ``y = sin(y * 0.999 + x) * 1.001``."""
    y = x
    for _ in range(n // 4):
        y = xp.sin(y * 0.999 + x) * 1.001
    return y


def horner(xp, coeffs, x):
    """sum_i c_i x^i by Horner's rule: two operations per coefficient."""
    p = coeffs[-1]
    for c in reversed(coeffs[:-1]):
        p = p * x + c
    return p


def _split_rounds(records: dict, rounds: int) -> dict:
    """Recording, backward and release seconds of each ``records[label]()`` (which records
    and returns a scalar), interleaved: every round runs each once, so a burst of load on the
    shared machine hits them alike.  Release is dropping the last reference to the result,
    which frees the graph (PyTorch's nodes, tapediff's tensors); it is timed on its own so
    that it never lands in the next recording.  Returns {label: (recording, backward,
    release)}, each a (median, min) pair of seconds over the rounds, after one warm-up round.
    """
    times = {label: ([], [], []) for label in records}
    for r in range(rounds + 1):
        for label, record in records.items():
            t0 = time.perf_counter()
            y = record()
            t1 = time.perf_counter()
            y.backward()
            t2 = time.perf_counter()
            del y
            t3 = time.perf_counter()
            if r:
                for acc, dt in zip(times[label], (t1 - t0, t2 - t1, t3 - t2)):
                    acc.append(dt)
    return {label: tuple((statistics.median(v), min(v)) for v in phases)
            for label, phases in times.items()}


def _per_op(name: str, seconds: tuple, n: int, unit: str, note: str = "") -> Metric:
    """A per-operation Metric from (median, min) seconds over ``n`` operations."""
    med, best = (s / n * 1e9 for s in seconds)
    best_text = f"{best:,.0f}" if best >= 100 else f"{best:.1f}"
    return Metric(name, med, unit, f"median; min {best_text}" + (f"; {note}" if note else ""))


def _chain_metrics(n: int, rounds: int):
    def run() -> list[Metric]:
        def tapediff_chain(xp):
            # each variant records on its own tape, so that one variant's released records
            # (reclaimed when the tape fills up) never land in the other's recording time
            x = td.tensor(0.5, requires_grad=True)
            tape = td.tape()

            def record():
                x.grad = None
                with tape:
                    return chain(xp, x, n)
            return record

        records = {"td": tapediff_chain(td), "np": tapediff_chain(np)}
        from ..backends import torch  # None when PyTorch is not installed (or not loaded)
        if torch is not None:
            xt = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)

            def record_torch():
                xt.grad = None
                return chain(torch, xt, n)

            records["torch"] = record_torch
        t = _split_rounds(records, rounds)
        out = [_per_op("tapediff recording", t["td"][0], n, "ns/op", "td.sin & operators"),
               _per_op("tapediff sweep", t["td"][1], n, "ns/record"),
               _per_op("tapediff recording via np.sin", t["np"][0], n, "ns/op",
                       "NEP 13 dispatch: np.sin(tensor)")]
        if "torch" in t:
            out += [_per_op("PyTorch forward", t["torch"][0], n, "ns/op"),
                    _per_op("PyTorch backward", t["torch"][1], n, "ns/op"),
                    _per_op("PyTorch release", t["torch"][2], n, "ns/op",
                            "freeing the graph; tapediff frees as it records")]
        return out
    return run


def _horner_metrics(coeffs: np.ndarray, rounds: int):
    def run() -> list[Metric]:
        cs = [td.tensor(c, requires_grad=True) for c in coeffs]
        x = td.tensor(0.9, requires_grad=True)
        tape = td.tape()
        nops = 2 * (len(coeffs) - 1)

        def record():
            for c in cs:
                c.grad = None
            with tape:
                return horner(td, cs, x)

        rec, swp, _ = _split_rounds({"td": record}, rounds)["td"]
        return [_per_op("tapediff recording", rec, nops, "ns/op"),
                _per_op("tapediff sweep", swp, nops, "ns/record",
                        f"incl. accumulating {len(cs) + 1:,} leaf .grad tensors")]
    return run


def cases(quick: bool) -> list[Case]:
    n = 4_000 if quick else 40_000
    ncoef = 200 if quick else 2_000
    rounds = 5 if quick else 15
    coeffs = np.random.default_rng(0).uniform(-1, 1, ncoef) / ncoef
    chain_skip = {}
    if n > 10_000:
        # Seen here with JAX 0.10.2: compiling the unrolled 40,000-op chain crashes the
        # process (segfault); 4,000 ops compile in ~2 s.
        chain_skip[JAX_NAME] = ("jit of the unrolled 40,000-op chain segfaults in XLA "
                                "(4,000 ops compile in ~2 s)")
    return [
        Case(WORKLOAD, f"scalar chain {n:,} ops", chain, [0.5], [n], size={"ops": n},
             primal_ns="math", td_ns="td", rtol=1e-9,
             td_variants={"tapediff via np.sin": "numpy"}, skip=chain_skip, replay=True,
             extra=_chain_metrics(n, rounds),
             note="one leaf x; y = sin(y*0.999 + x)*1.001 repeated"),
        Case(WORKLOAD, f"Horner {ncoef:,} coefficient leaves", horner,
             [list(coeffs), 0.9], size={"coefficients": ncoef}, primal_ns="math",
             td_ns="td", rtol=1e-9, extra=_horner_metrics(coeffs, rounds), replay=True,
             note=f"{ncoef + 1:,} leaves (one per coefficient, and x)"),
    ]
