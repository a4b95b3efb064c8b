"""Array kernels against NumPy and PyTorch: elementwise, matmul and indexing at 10^3 and 10^6.

Run from the repository root: ``python -m bench.ops`` (``--quick`` for a smoke run).
For each workload: the NumPy primal (forward only), tapediff forward+backward, and PyTorch
forward+backward when importable; ratios come from paired rounds, one thread each.
"""
from __future__ import annotations

import argparse

from bench.core import machine, paired, torch  # sets one thread for every peer first

import numpy as np  # noqa: E402

import tapediff as td  # noqa: E402


def _workloads(n: int, rng: np.random.Generator) -> dict:
    side = int(round(n ** 0.5))
    idx = rng.integers(0, n, n)
    return {
        # name: (inputs, f written once for NumPy, tapediff and PyTorch)
        "elementwise": ([rng.uniform(0.5, 1.5, n), rng.uniform(0.5, 1.5, n)],
                        lambda x, y, m: (m.log(x * y) * m.exp(-x) + m.tanh(y) * x * x).sum()),
        "matmul": ([rng.normal(size=(side, side)), rng.normal(size=(side, side))],
                   lambda a, b, m: (a @ b).sum()),
        "indexing": ([rng.normal(size=n)],
                     lambda x, m: (x[idx] * x[::2].sum() + x[1:].sum()).sum()),
    }


class _NP:
    log, exp, tanh = np.log, np.exp, np.tanh


class _TD:
    log, exp, tanh = td.log, td.exp, td.tanh


def run(sizes: list[int], rounds: int) -> list[str]:
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        for name, (inputs, f) in _workloads(n, rng).items():
            def np_primal():
                f(*inputs, _NP)

            leaves = [td.tensor(a, requires_grad=True) for a in inputs]

            def td_grad():
                for t in leaves:
                    t.grad = None
                f(*leaves, _TD).backward()

            a, b, r = paired(np_primal, td_grad, rounds)
            row = (f"{name:12s} n={n:>9,}: NumPy primal {a * 1e3:8.3f} ms, tapediff fwd+bwd "
                   f"{b * 1e3:8.3f} ms ({r:5.2f}x primal)")
            if torch is not None:
                tl = [torch.tensor(a, requires_grad=True) for a in inputs]
                idx_t = torch  # namespace for torch.log & co.

                def torch_grad():
                    for t in tl:
                        t.grad = None
                    f(*tl, idx_t).backward()

                td_grad()
                torch_grad()
                for t, u in zip(leaves, tl):
                    assert np.allclose(t.grad.numpy(), u.grad.numpy()), name
                _, c, r2 = paired(td_grad, torch_grad, rounds)
                row += f", PyTorch {c * 1e3:8.3f} ms (tapediff {r2:5.2f}x faster)"
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10^3 only, few rounds")
    args = ap.parse_args(argv)
    print(machine())
    for row in run([1_000] if args.quick else [1_000, 1_000_000], 3 if args.quick else 11):
        print(row, flush=True)


if __name__ == "__main__":
    main()
