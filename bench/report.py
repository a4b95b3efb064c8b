"""Presenting results: the text table, ``--json``, ``--markdown`` and ``--plot``."""
from __future__ import annotations

import json
import math
import re

from .case import (
    AUTOGRAD_NAME, HAND, JAX_NAME, PRIMAL, PYTHON_PRIMAL, TAPEDIFF, TAPEDIFF_REPLAY, TORCH_NAME,
)
from .memory import CALLS
from .targets import paired_ratio

_SHORT = {PRIMAL: "primal", HAND: "hand grad", PYTHON_PRIMAL: "primal"}
MEMORY_NOTE = (f"memory: 'peak RSS' = RSS high-water mark (VmHWM) of a fresh process that "
               f"builds the case and calls only that contender {CALLS} times, with glibc's "
               f"default allocator (bench/memory.py); 'above base' = that peak minus the "
               f"process's RSS before the first call (interpreter, imports, inputs)")
NO_MEMORY_NOTE = "memory: not measured (--quick or --no-memory; --memory measures it)"

# How to add the peers.  PyPI's Linux wheel of PyTorch pulls in CUDA (gigabytes); its CPU
# build, installed first, satisfies the extra's pin (2.13.0+cpu is 2.13.0).
INSTALL_PEERS = 'pip install -e ".[bench]"'
INSTALL_TORCH_CPU = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
PEERS_HINT = (f"add peers with {INSTALL_PEERS}; on Linux install PyTorch's CPU build first "
              f"({INSTALL_TORCH_CPU}), or pip fetches the multi-GB CUDA build")
INSTALL_ONE = {TORCH_NAME: INSTALL_TORCH_CPU, JAX_NAME: 'pip install "jax>=0.4.30"',
               AUTOGRAD_NAME: 'pip install "autograd>=1.6"'}


def fmt_time(s: float) -> str:
    if s < 1e-6:
        return f"{s * 1e9:.0f} ns"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_bytes(b: int | None, sign: bool = False) -> str:
    """Bytes in KB, MB or GB (powers of 1000); ``sign``: with "+" for b >= 0."""
    if b is None:
        return "n/a"
    plus = "+" if sign and b >= 0 else ""
    if abs(b) < 1e6:
        return f"{plus}{b / 1e3:.0f} KB"
    if abs(b) < 1e9:
        return f"{plus}{b / 1e6:.1f} MB"
    return f"{plus}{b / 1e9:.2f} GB"


def memory_cells(r, name: str) -> tuple[str, str]:
    """(peak RSS, above base) of contender ``name`` as printed; "-" when not measured."""
    m = r.memory.get(name)
    if m is None or m.error:
        return "-", "-"
    return fmt_bytes(m.peak), fmt_bytes(m.above, sign=True)


def metric_text(m) -> str:
    """A Metric's value and unit as printed (its ``text`` instead when it has one)."""
    if m.text:
        return m.text
    value = f"{m.value:.1f}" if m.value < 100 else f"{m.value:,.0f}"
    if m.unit == "s":
        value = f"{m.value:.2f}"
    elif m.unit == "ms" and m.value < 100:
        value = f"{m.value:.3g}"
    elif m.unit == "x":
        value = f"{m.value:.2f}" if m.value < 100 else f"{m.value:,.0f}"
        return value + "x"
    return f"{value} {m.unit}"


def header_lines(info: dict) -> list[str]:
    lines = [f"tapediff benchmark  {info['date']}  ({info['mode']})"]
    if info.get("expected"):
        lines.append(f"expected: {info['expected']}")
    lines += [f"machine: {info['cpu']}, {info['cores']} cores; load average at start "
              f"{info['load_start']}",
              f"software: {info['software']}",
              f"peers: {info['peers']}"]
    if info.get("peers_hint"):
        lines.append(f"       {info['peers_hint']}")
    lines += [f"threads: {info['threads']}", info["allocator"]]
    if info.get("warning"):
        lines.append(f"note: {info['warning']}")
    lines += ["timing: median per call over paired rounds (every contender once per round, "
              "rotating order), after warm-up; spread = interquartile range; "
              "'x tapediff' = median over rounds of time / tapediff's time in that round",
              MEMORY_NOTE if info.get("memory") else NO_MEMORY_NOTE]
    return lines


def case_lines(r) -> list[str]:
    lines = [f"-- {r.name}" + (f"  ({r.note})" if r.note else "")]
    if r.timings:
        mem = bool(r.memory)
        lines.append(f"   {'contender':<26}{'median':>11}  {'IQR':>21}  {'x tapediff':>10}"
                     + (f"  {'peak RSS':>9}  {'above base':>10}" if mem else ""))
        for name in r.order:
            t = r.timings.get(name)
            if t is None:
                continue
            iqr = f"{fmt_time(t.q1)} - {fmt_time(t.q3)}"
            extra = ""
            if name in r.compile_s:
                extra = f"  (+ compile {r.compile_s[name]:.2f} s)"
            peak, above = memory_cells(r, name)
            cells = f"  {peak:>9}  {above:>10}" if mem else ""
            lines.append(f"   {name:<26}{fmt_time(t.median):>11}  {iqr:>21}  "
                         f"{t.ratio:>10.2f}{cells}{extra}")
        summary = []
        for name in r.order:
            if name == TAPEDIFF or name not in r.timings or TAPEDIFF not in r.timings:
                continue  # (cases without a "tapediff" contender print their own ratios)
            if name == TAPEDIFF_REPLAY:
                x = paired_ratio(r, TAPEDIFF, name)
                summary.append(f"tapediff/replay {x:.2f}x")
            elif name.startswith(("NumPy", "Python")):
                x = paired_ratio(r, TAPEDIFF, name)
                summary.append(f"tapediff/{_SHORT.get(name, name)} {x:.2f}x")
            else:
                x = paired_ratio(r, name, TAPEDIFF)
                summary.append(f"{name}/tapediff {x:.2f}x")
        if summary:
            rounds = len(r.timings[TAPEDIFF].samples) if TAPEDIFF in r.timings else 0
            lines.append(f"   ratios ({rounds} paired rounds): " + ", ".join(summary))
    for m in r.metrics:
        lines.append(f"   {m.name}: {metric_text(m)}" + (f"  ({m.note})" if m.note else ""))
    for name, why in r.skipped.items():
        lines.append(f"   {name}: not run: {why}")
    for name, m in r.memory.items():
        if m.error:
            lines.append(f"   {name}: peak RSS not measured: {m.error}")
        elif m.whole_process:
            lines.append(f"   {name}: peak RSS is the whole process's (the mark could not "
                         "be reset after building the inputs)")
    for e in r.errors:
        lines.append(f"   !!! {e}")
    return lines


def target_lines(verdicts, quick: bool, missing: dict | None = None,
                 memory: bool = True) -> list[str]:
    """Each target as its goal and the figure this run measured.

    Targets no case of this run measured are summarised, not listed one by one: one line
    per peer that did not run (``missing``: peer name -> why, e.g. "not installed"), naming
    the targets that compare with it and how to add it, then one line for the rest (cases
    left out by ``--only``, or at ``--quick`` sizes; ``memory``: whether the run measured
    memory, which the memory targets need).
    """
    missing = missing or {}
    lines = ["== targets: the goal, and what this run measured"
             + (" (quick sizes: indicative only)" if quick else "")]
    by_peer: dict = {p: [] for p in missing}
    unmeasured = []
    for v in verdicts:
        if not v.rows:
            (by_peer[v.peer] if v.peer in missing else unmeasured).append(v.target)
            continue
        lines.append(f"   {v.target}")
        rows = [f"measured {measured} ({case}): {'met' if ok else 'missed'}"
                for case, measured, ok in v.rows]
        if len(rows) == 1:
            lines.append(f"      goal: {v.goal} -- {rows[0]}")
        else:
            met = sum(ok for _, _, ok in v.rows)
            lines.append(f"      goal: {v.goal} -- met in {met} of {len(rows)} cases:")
            lines += [f"         {row}" for row in rows]
    if unmeasured:
        why = ("quick sizes are not the targets' sizes, or --only left their cases out"
               if quick else "--only left their cases out")
        if not memory:
            why += ", or memory was not measured"
        lines.append(f"   not measured ({why}): " + "; ".join(unmeasured))
    for peer, why in missing.items():
        targets = by_peer[peer]
        what = (f"{len(targets)} target(s) not measured: " + "; ".join(targets)
                if targets else "no target needs it")
        add = f"; add it with {INSTALL_ONE.get(peer, INSTALL_PEERS)}" if "install" in why else ""
        lines.append(f"   {peer} {why}, not compared: {what}{add}")
    return lines


def to_markdown(info: dict, results, verdicts, path: str) -> None:
    """The run as Markdown (machine, targets, one table per workload), for RESULTS.md."""
    out = [f"Run: {info['date']} ({info['mode']}), {info['elapsed_s']:.0f} s; load average "
           f"at start {info['load_start']}, at end {info['load_end']}.",
           "", f"- machine: {info['cpu']}, {info['cores']} cores",
           f"- software: {info['software']}", f"- peers: {info['peers']}",
           f"- threads: {info['threads']}", f"- {info['allocator']}",
           f"- {MEMORY_NOTE if info.get('memory') else NO_MEMORY_NOTE}"]
    if info.get("warning"):
        out.append(f"- note: {info['warning']}")
    out += ["", "### Targets", "", "| target | verdict | measured |", "|---|---|---|"]
    for v in verdicts:
        status = {True: "met", False: "**missed**", None: "not measured"}[v.met]
        measured = "; ".join(f"{c}: {m}{'' if ok else ' (miss)'}" for c, m, ok in v.rows)
        out.append(f"| {v.target} | {status} | {measured} |")
    for wl in dict.fromkeys(r.workload for r in results):
        out += ["", f"### {wl}", ""]
        rs = [r for r in results if r.workload == wl]
        if any(r.timings for r in rs):
            out += ["| case | contender | median | IQR | x tapediff | peak RSS | above base |",
                    "|---|---|---|---|---|---|---|"]
            for r in rs:
                for name in r.order:
                    t = r.timings.get(name)
                    if t is None:
                        continue
                    comp = f" (+ compile {r.compile_s[name]:.2f} s)" if name in r.compile_s else ""
                    peak, above = memory_cells(r, name)
                    out.append(f"| {r.name} | {name}{comp} | {fmt_time(t.median)} | "
                               f"{fmt_time(t.q1)} - {fmt_time(t.q3)} | {t.ratio:.2f} | "
                               f"{peak} | {above} |")
        for r in rs:
            notes = [f"{m.name}: {metric_text(m)}" for m in r.metrics]
            notes += [f"{n} not run: {why}" for n, why in r.skipped.items()]
            notes += [f"ERROR: {e}" for e in r.errors]
            if notes:
                out += ["", f"{r.name}: " + "; ".join(notes) + "."]
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def to_json(info: dict, results, verdicts, path: str) -> None:
    def case(r):
        return {
            "workload": r.workload, "name": r.name, "size": r.size, "note": r.note,
            "contenders": {
                name: {"median_s": t.median, "q1_s": t.q1, "q3_s": t.q3,
                       "min_s": min(t.samples), "max_s": max(t.samples),
                       "ratio_to_tapediff": t.ratio, "samples_s": t.samples,
                       "calls_per_sample": t.calls_per_sample,
                       "rss": r.memory[name].to_json() if name in r.memory else None,
                       "compile_s": r.compile_s.get(name)}
                for name, t in r.timings.items()},
            "metrics": [{"name": m.name, "unit": m.unit, "note": m.note, "text": m.text,
                         # JSON has no infinity ("always" is inf): null then
                         "value": m.value if math.isfinite(m.value) else None}
                        for m in r.metrics],
            "skipped": r.skipped, "errors": r.errors,
        }

    doc = {"machine": info, "cases": [case(r) for r in results],
           "targets": [{"target": v.target, "met": v.met,
                        "cases": [{"case": c, "measured": m, "met": ok} for c, m, ok in v.rows]}
                       for v in verdicts]}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)


def problem_size(r) -> tuple[float, str] | None:
    """A case's size as one number for the plot's x axis, and what it counts (None if its
    ``size`` has no such number): GMM n K d, the entries of its (K, n, d) centred points;
    BA its observations; an MLP its parameters; otherwise the one number in ``size``."""
    s = r.size
    if {"n", "K", "d"} <= set(s):
        return s["n"] * s["K"] * s["d"], "n K d"
    if "observations" in s:
        return s["observations"], "observations"
    if "parameters" in s:
        return s["parameters"], "parameters"
    if "widths" in s:
        w = s["widths"]
        return sum(a * b + b for a, b in zip(w[:-1], w[1:])), "parameters"
    numbers = [(v, k) for k, v in s.items() if isinstance(v, (int, float))]
    return numbers[0] if len(numbers) == 1 else None


def series_name(r) -> str:
    """The objective a case evaluates, without its size: "GMM d=2 K=5 n=1,000" -> "GMM"."""
    return re.split(r"\s+(?=\S*\d)", r.name, maxsplit=1)[0]


def _bytes_unit(values: list) -> tuple[float, str]:
    return (1e9, "GB") if max(values, default=0) >= 1e9 else (1e6, "MB")


def _compact(v: float) -> str:
    """An axis label: 1500 -> "1.5k", 2e6 -> "2M", 0.25 -> "0.25"."""
    for unit, f in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= f:
            return f"{v / f:g}{unit}"
    return f"{v:g}"


def _log_axis(axis) -> None:
    """Plain labels on a log axis (after plotting): its decades, and 2 and 5 times them
    (and 3 times, within 30x) when it spans at most three decades."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: _compact(v)))
    lo, hi = axis.get_view_interval()
    if lo > 0 and hi / lo <= 1e3:
        digits = "235" if hi / lo <= 30 else "25"
        axis.set_minor_formatter(FuncFormatter(
            lambda v, _: _compact(v) if f"{v:.1e}"[0] in digits else ""))
    else:
        axis.set_minor_formatter(NullFormatter())


def plot(results, path: str) -> str:
    """Per workload, two panels against problem size (``problem_size``, log scales): each
    contender's median time per call and its peak memory (RSS high-water mark of its own
    process, ``bench/memory.py``).  A line per contender and objective.  Returns a message
    (matplotlib is optional)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        return (f"--plot {path}: matplotlib is not installed (pip install matplotlib); "
                "no plot written")
    timed = [r for r in results if r.timings and problem_size(r) is not None]
    workloads = list(dict.fromkeys(r.workload for r in timed))
    if not workloads:
        return f"--plot {path}: nothing timed, no plot written"
    names = list(dict.fromkeys(n for r in timed for n in r.order if n in r.timings))
    colors = {n: plt.cm.tab10(i % 10) for i, n in enumerate(names)}
    markers = "osD^v<>p*h"
    fig, axes = plt.subplots(len(workloads), 2, figsize=(13, 3.6 * len(workloads)),
                             squeeze=False)
    for (ax_t, ax_m), wl in zip(axes, workloads):
        rs = [r for r in timed if r.workload == wl]
        series = list(dict.fromkeys(series_name(r) for r in rs))
        peaks = [m.peak for r in rs for m in r.memory.values() if not m.error]
        scale, unit = _bytes_unit(peaks)
        for si, sname in enumerate(series):
            points = sorted(((problem_size(r)[0], r) for r in rs if series_name(r) == sname),
                            key=lambda p: p[0])
            for n in names:
                t = [(x, r.timings[n].median * 1e3) for x, r in points if n in r.timings]
                m = [(x, r.memory[n].peak / scale) for x, r in points
                     if n in r.memory and not r.memory[n].error]
                for ax, xy in ((ax_t, t), (ax_m, m)):
                    if xy:
                        ax.plot(*zip(*xy), marker=markers[si % len(markers)], ms=4, lw=1,
                                color=colors[n])
        what = ", ".join(dict.fromkeys(problem_size(r)[1] for r in rs))
        ax_t.set_title(f"{wl}: time per call")
        ax_t.set_ylabel("median time per call (ms)\nlower is better")
        ax_m.set_title(f"{wl}: peak memory of each contender's own process")
        ax_m.set_ylabel(f"peak RSS ({unit})\nlower is better")
        legend = [Line2D([], [], color="k", lw=0, marker=markers[i % len(markers)], label=name)
                  for i, name in enumerate(series)]
        for ax in (ax_t, ax_m) if peaks else (ax_t,):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(f"problem size ({what})")
            ax.grid(True, which="both", lw=0.3, alpha=0.5)
            _log_axis(ax.xaxis)
            _log_axis(ax.yaxis)
            if len(series) > 1:
                ax.legend(handles=legend, fontsize=7, loc="best")
        if not peaks:
            ax_m.set_xticks([])
            ax_m.set_yticks([])
            ax_m.text(0.5, 0.5, "not measured\n(--quick or --no-memory; --memory measures "
                      "it)", ha="center", va="center", transform=ax_m.transAxes, fontsize=9)
    inch = 1 / fig.get_figheight()  # as a fraction of the figure's height
    fig.suptitle(f"time and peak memory against problem size (log scales): lower is better. "
                 f"Peak RSS: a fresh process per contender, {CALLS} calls, its imports "
                 f"included", fontsize=10, y=1 - 0.08 * inch, va="top")
    fig.legend(handles=[Line2D([], [], color=colors[n], lw=2, label=n) for n in names],
               loc="upper center", bbox_to_anchor=(0.5, 1 - 0.35 * inch),
               ncol=min(len(names), 7), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 * inch))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot written to {path}"
