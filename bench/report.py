"""Presenting results: the text table, ``--json`` and ``--plot``."""
from __future__ import annotations

import json
import math

from .case import AUTOGRAD_NAME, HAND, JAX_NAME, PRIMAL, TAPEDIFF, TAPEDIFF_REPLAY, TORCH_NAME
from .targets import paired_ratio

_SHORT = {PRIMAL: "primal", HAND: "hand grad", "Python primal": "primal"}

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


def fmt_bytes(b: int | None) -> str:
    if b is None:
        return "n/a"
    if b < 1e6:
        return f"{b / 1e3:.0f} KB"
    return f"{b / 1e6:.1f} MB"


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
              "memory: peak bytes a call allocates under tracemalloc (NumPy arrays and "
              "Python objects) plus what tapediff's tape keeps between calls; PyTorch and "
              "JAX allocate outside tracemalloc's view (n/a)"]
    return lines


def case_lines(r) -> list[str]:
    lines = [f"-- {r.name}" + (f"  ({r.note})" if r.note else "")]
    if r.timings:
        lines.append(f"   {'contender':<26}{'median':>11}  {'IQR':>21}  {'x tapediff':>10}"
                     f"  {'peak mem':>9}")
        for name in r.order:
            t = r.timings.get(name)
            if t is None:
                continue
            iqr = f"{fmt_time(t.q1)} - {fmt_time(t.q3)}"
            extra = ""
            if name in r.compile_s:
                extra = f"  (+ compile {r.compile_s[name]:.2f} s)"
            lines.append(f"   {name:<26}{fmt_time(t.median):>11}  {iqr:>21}  "
                         f"{t.ratio:>10.2f}  {fmt_bytes(r.memory.get(name)):>9}{extra}")
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
    for e in r.errors:
        lines.append(f"   !!! {e}")
    return lines


def target_lines(verdicts, quick: bool, missing: dict | None = None) -> list[str]:
    """Each target as its goal and the figure this run measured.

    Targets no case of this run measured are summarised, not listed one by one: one line
    per peer that did not run (``missing``: peer name -> why, e.g. "not installed"), naming
    the targets that compare with it and how to add it, then one line for the rest (cases
    left out by ``--only``, or at ``--quick`` sizes).
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
           f"- threads: {info['threads']}", f"- {info['allocator']}"]
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
            out += ["| case | contender | median | IQR | x tapediff | peak mem |",
                    "|---|---|---|---|---|---|"]
            for r in rs:
                for name in r.order:
                    t = r.timings.get(name)
                    if t is None:
                        continue
                    comp = f" (+ compile {r.compile_s[name]:.2f} s)" if name in r.compile_s else ""
                    out.append(f"| {r.name} | {name}{comp} | {fmt_time(t.median)} | "
                               f"{fmt_time(t.q1)} - {fmt_time(t.q3)} | {t.ratio:.2f} | "
                               f"{fmt_bytes(r.memory.get(name))} |")
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
                       "peak_bytes": r.memory.get(name),
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


def plot(results, path: str) -> str:
    """Bars of each contender's time relative to tapediff, one panel per workload.
    Returns a message (matplotlib is optional)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        return (f"--plot {path}: matplotlib is not installed (pip install matplotlib); "
                "no plot written")
    timed = [r for r in results if r.timings]
    workloads = list(dict.fromkeys(r.workload for r in timed))
    if not workloads:
        return f"--plot {path}: nothing timed, no plot written"
    names = list(dict.fromkeys(n for r in timed for n in r.order if n in r.timings))
    colors = {n: plt.cm.tab10(i % 10) for i, n in enumerate(names)}
    fig, axes = plt.subplots(len(workloads), 1, figsize=(12, 3.2 * len(workloads)),
                             squeeze=False)
    for ax, wl in zip(axes[:, 0], workloads):
        rs = [r for r in timed if r.workload == wl]
        width = 0.8 / len(names)
        for j, n in enumerate(names):
            xs = [i + j * width for i, r in enumerate(rs) if n in r.timings]
            ys = [r.timings[n].ratio for r in rs if n in r.timings]
            if xs:
                ax.bar(xs, ys, width, color=colors[n])
        ax.set_yscale("log")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rs))])
        ax.set_xticklabels([r.name for r in rs], rotation=20, ha="right", fontsize=7)
        ax.set_ylabel("time / tapediff's\n(lower is better)")
        ax.set_title(wl)
        lo = min(min(r.timings[n].ratio for n in r.timings) for r in rs)
        hi = max(max(r.timings[n].ratio for n in r.timings) for r in rs)
        ax.set_ylim(10 ** math.floor(math.log10(lo) - 1e-9),
                    10 ** math.ceil(math.log10(hi) + 1e-9))
    inch = 1 / fig.get_figheight()  # as a fraction of the figure's height
    fig.suptitle("time per call relative to tapediff (log scale): lower is better, "
                 "below 1 is faster than tapediff", fontsize=10, y=1 - 0.08 * inch, va="top")
    fig.legend(handles=[Patch(color=colors[n], label=n) for n in names], loc="upper center",
               bbox_to_anchor=(0.5, 1 - 0.35 * inch), ncol=min(len(names), 7), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 * inch))
    fig.savefig(path, dpi=110)
    return f"plot written to {path}"
