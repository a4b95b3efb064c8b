"""One training step of a multilayer perceptron: forward, softmax cross-entropy, backward.

Two nets, tanh hidden layers, float64:

* 784-256-256-10 at batch 64 (MNIST-sized): three matmuls dominate, so the gradient should
  cost what the hand-written backpropagation costs (the same BLAS calls) plus little.
* 32-64-64-8 at batch 16: small matrices, so per-operation overhead shows.

The loss is the mean over the batch of ``logsumexp(z_i) - z_i[label_i]`` (softmax
cross-entropy on the logits z).  The hand-written NumPy gradient is textbook
backpropagation; it is the bar tapediff aims at.
"""
from __future__ import annotations

import numpy as np

from ..case import Case

WORKLOAD = "mlp"


def mlp_loss(xp, W1, b1, W2, b2, W3, b3, X, rows, labels):
    """Mean softmax cross-entropy of a tanh MLP on the batch (X, labels)."""
    h1 = xp.tanh(X @ W1 + b1)
    h2 = xp.tanh(h1 @ W2 + b2)
    z = h2 @ W3 + b3
    return xp.sum(xp.logsumexp(z, axis=1) - z[rows, labels]) / X.shape[0]


def mlp_hand(W1, b1, W2, b2, W3, b3, X, rows, labels):
    """Value and gradient of ``mlp_loss`` by backpropagation."""
    B = X.shape[0]
    h1 = np.tanh(X @ W1 + b1)
    h2 = np.tanh(h1 @ W2 + b2)
    z = h2 @ W3 + b3
    m = z.max(axis=1, keepdims=True)
    e = np.exp(z - m)
    s = e.sum(axis=1, keepdims=True)
    value = np.sum(np.log(s[:, 0]) + m[:, 0] - z[rows, labels]) / B
    dz = e / s  # softmax
    dz[rows, labels] -= 1.0
    dz /= B
    dW3, db3 = h2.T @ dz, dz.sum(axis=0)
    dh2 = (dz @ W3.T) * (1.0 - h2 * h2)
    dW2, db2 = h1.T @ dh2, dh2.sum(axis=0)
    dh1 = (dh2 @ W2.T) * (1.0 - h1 * h1)
    dW1, db1 = X.T @ dh1, dh1.sum(axis=0)
    return value, [dW1, db1, dW2, db2, dW3, db3]


def _case(widths: tuple, batch: int, threads: bool = False) -> Case:
    rng = np.random.default_rng(sum(widths) + batch)
    params = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        params.append(rng.normal(0, fan_in ** -0.5, (fan_in, fan_out)))
        params.append(rng.normal(0, 0.1, fan_out))
    X = rng.normal(size=(batch, widths[0]))
    labels = rng.integers(0, widths[-1], batch)
    name = "-".join(str(w) for w in widths)
    return Case(WORKLOAD, f"MLP {name} batch {batch}", mlp_loss, params,
                [X, np.arange(batch), labels], size={"widths": list(widths), "batch": batch},
                hand_grad=mlp_hand, replay=True, threads=threads,
                note="tanh hidden layers, softmax cross-entropy")


def cases(quick: bool) -> list[Case]:
    # replay's throughput from 2 threads is measured on the large net
    return [_case((784, 256, 256, 10), 64, threads=True), _case((32, 64, 64, 8), 16)]
