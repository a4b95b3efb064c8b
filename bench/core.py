"""Core figures: scalar recording and sweep cost, Horner, Rosenbrock, compile time.

Run from the repository root: ``python -m bench.core`` (add ``--quick`` for a smoke run).
PyTorch is measured when importable.  Every peer runs on one thread; ratios come from
paired rounds (both sides back to back, median of the per-round ratios).
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import tapediff as td  # noqa: E402

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # PyTorch is an optional peer
    torch = None


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def paired(a, b, rounds: int) -> tuple[float, float, float]:
    """Median time of ``a``, of ``b``, and median per-round ratio b/a (after one warm-up)."""
    a()
    b()
    ta, tb, ratio = [], [], []
    for _ in range(rounds):
        x, y = _timed(a), _timed(b)
        ta.append(x)
        tb.append(y)
        ratio.append(y / x)
    return statistics.median(ta), statistics.median(tb), statistics.median(ratio)


# -- workloads, written once against an array namespace --------------------------------------
def chain(x, sin, n: int):
    """n scalar operations: n/4 rounds of y = sin(y * 0.999 + x) * 1.001."""
    y = x
    for _ in range(n // 4):
        y = sin(y * 0.999 + x) * 1.001
    return y


def horner(coeffs, x):
    """sum_i c_i x^i by Horner's rule: two operations per coefficient."""
    p = coeffs[-1]
    for c in reversed(coeffs[:-1]):
        p = p * x + c
    return p


def rosenbrock(x):
    """sum(100 (x[1:] - x[:-1]^2)^2 + (1 - x[:-1])^2)."""
    a = x[:-1]
    return (100.0 * (x[1:] - a * a) ** 2 + (1.0 - a) ** 2).sum()


def scalar_chain(n: int, rounds: int) -> list[str]:
    x = td.tensor(0.5, requires_grad=True)
    rec, swp = [], []
    for _ in range(rounds + 1):
        x.grad = None
        t0 = time.perf_counter()
        y = chain(x, td.sin, n)
        t1 = time.perf_counter()
        y.backward()
        t2 = time.perf_counter()
        rec.append((t1 - t0) / n)
        swp.append((t2 - t1) / n)
    rec, swp = rec[1:], swp[1:]
    rows = [f"scalar chain, {n:,} ops: recording {statistics.median(rec) * 1e9:.0f} ns/op "
            f"(target <= 1000), backward {statistics.median(swp) * 1e9:.1f} ns/record "
            "(target <= 15)"]

    def run_td():
        x.grad = None
        chain(x, td.sin, n).backward()

    if torch is not None:
        xt = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)

        def run_torch():
            xt.grad = None
            chain(xt, torch.sin, n).backward()

        a, b, r = paired(run_td, run_torch, rounds)
        rows.append(f"  forward+backward: tapediff {a * 1e3:.1f} ms, PyTorch {b * 1e3:.1f} ms "
                    f"-> tapediff {r:.1f}x faster (target >= 10x)")
    return rows


def horner_poly(n: int, rounds: int) -> list[str]:
    rng = np.random.default_rng(0)
    cs = rng.uniform(-1, 1, n) / n
    coeffs = [td.tensor(c, requires_grad=True) for c in cs]
    x = td.tensor(0.9, requires_grad=True)

    def run_td():
        horner(coeffs, x).backward()

    rows = []
    if torch is not None:
        ct = [torch.tensor(c, dtype=torch.float64, requires_grad=True) for c in cs]
        xt = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)

        def run_torch():
            horner(ct, xt).backward()

        for c in coeffs:
            c.grad = None
        horner(coeffs, x).backward()
        for c in ct:
            c.grad = None
        horner(ct, xt).backward()
        assert np.allclose([c.grad.item() for c in coeffs], [c.grad.item() for c in ct])
        a, b, r = paired(run_td, run_torch, rounds)
        rows.append(f"Horner, {n:,} coefficient leaves: tapediff {a * 1e3:.2f} ms, PyTorch "
                    f"{b * 1e3:.2f} ms -> tapediff {r:.1f}x faster (target >= 6x)")
    else:
        a = statistics.median(_timed(run_td) for _ in range(rounds))
        rows.append(f"Horner, {n:,} coefficient leaves: tapediff {a * 1e3:.2f} ms")
    return rows


def rosenbrock_bench(n: int, rounds: int) -> list[str]:
    rng = np.random.default_rng(0)
    xn = rng.uniform(-1, 1, n)
    x = td.tensor(xn, requires_grad=True)

    def run_np():
        rosenbrock(xn)

    def run_td():
        x.grad = None
        rosenbrock(x).backward()

    a, b, r = paired(run_np, run_td, rounds)
    rows = [f"Rosenbrock n={n:,}: NumPy primal {a * 1e3:.2f} ms, tapediff forward+backward "
            f"{b * 1e3:.2f} ms -> {r:.2f}x the primal (target <= 3x)"]
    if torch is not None:
        xt = torch.tensor(xn, requires_grad=True)

        def run_torch():
            xt.grad = None
            rosenbrock(xt).backward()

        run_td()
        run_torch()
        assert np.allclose(x.grad.numpy(), xt.grad.numpy())
        a, b, r = paired(run_td, run_torch, rounds)
        rows.append(f"  PyTorch forward+backward {b * 1e3:.2f} ms -> tapediff {r:.2f}x faster "
                    "(target > 1x)")
    return rows


_FIRST_BACKWARD = ("import time; t = time.perf_counter(); import tapediff as td; "
                   "x = td.tensor([1.0, 2.0], requires_grad=True); (x * x).sum().backward(); "
                   "print(time.perf_counter() - t)")


def compile_times() -> list[str]:
    """Import + first backward in a fresh process, with Numba's cache cold and warm."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        run = [sys.executable, "-c", _FIRST_BACKWARD]
        cold = float(subprocess.run(run, env=env, capture_output=True, text=True,
                                    check=True).stdout)
        warm = float(subprocess.run(run, env=env, capture_output=True, text=True,
                                    check=True).stdout)
    return [f"import + first backward, fresh process: cold cache {cold:.2f} s (target <= 10), "
            f"warm cache {warm:.2f} s (target <= 1)"]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    peers = f"PyTorch {torch.__version__}" if torch is not None else "PyTorch not installed"
    return (f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, NumPy "
            f"{np.__version__}, tapediff {td.__version__}; {peers}; one thread each")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few rounds")
    args = ap.parse_args(argv)
    rounds = 3 if args.quick else 15
    print(machine())
    for rows in (scalar_chain(4_000 if args.quick else 40_000, rounds),
                 horner_poly(200 if args.quick else 2_000, rounds),
                 rosenbrock_bench(10_000 if args.quick else 1_000_000, rounds),
                 compile_times()):
        for row in rows:
            print(row, flush=True)


if __name__ == "__main__":
    main()
