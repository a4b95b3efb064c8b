"""``python -m tapediff``: differentiate the walkthrough's computations and print the results.

Each block mirrors a PyTorch autograd idiom; the printed values are what PyTorch prints.
"""
from __future__ import annotations

import time

import tapediff as td


def main() -> None:
    """Run the walkthrough and a timed scalar chain."""
    x1 = td.tensor([0.1, 0.2, 0.3], requires_grad=True)
    x2 = td.tensor([0.4, 0.5, 0.6])
    print("x1 * 2 requires grad:", (x1 * 2).requires_grad, "| x2 * 2:", (x2 * 2).requires_grad,
          "| x1 * x2:", (x1 * x2).requires_grad)

    a = td.tensor(2.0, requires_grad=True)
    b = td.tensor(5.0)
    z = a * b
    z.backward()
    print("d(a*b)/da =", a.grad, "| b.grad =", b.grad)

    z = (x1 * 2).sum()
    z.backward()
    print("d sum(2 x)/dx =", x1.grad)

    try:
        (x1 * 2).backward()
    except RuntimeError as e:
        print("non-scalar backward:", e)

    try:
        z.backward()
    except RuntimeError as e:
        print("second backward:", e)

    x1 = td.tensor([0.1, 0.2, 0.3], requires_grad=True)
    z = (x1 * 2).sum()
    for _ in range(10):
        z.backward(retain_graph=True)
    print("10 backward calls with retain_graph=True accumulate:", x1.grad)

    # A scalar chain: recording and the reverse sweep are timed separately.
    x = td.tensor(0.5, requires_grad=True)
    n = 40_000
    for _ in range(2):  # the first round warms up
        x.grad = None
        t0 = time.perf_counter()
        y = x
        for _ in range(n // 4):
            y = (y * 0.999 + x).sin() * 1.001
        t1 = time.perf_counter()
        y.backward()
        t2 = time.perf_counter()
    print(f"{n:,}-op scalar chain: value {y.item():.6f}, d/dx {x.grad.item():.6f}; "
          f"recording {(t1 - t0) / n * 1e9:.0f} ns/op, backward {(t2 - t1) / n * 1e9:.1f} "
          "ns/record")


if __name__ == "__main__":
    main()
