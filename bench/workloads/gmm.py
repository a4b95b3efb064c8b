"""ADBench's Gaussian mixture model objective (GMM), with a Wishart prior.

Parameters, as in ADBench (Srajer, Kukelova, Fitzgibbon: "A benchmark of selected
algorithmic differentiation tools on some problems in computer vision and machine
learning", and its C++ reference ``src/cpp/shared/gmm.h``):

* ``alphas`` (K,): unnormalised log mixture weights;
* ``means`` (K, d);
* ``icf`` (K, d + d(d-1)/2): inverse covariance factors.  Row k holds first the logs of
  the diagonal of Q_k, then the strictly lower triangle of Q_k packed column by column
  (column-major): Q[1,0], Q[2,0], ..., Q[d-1,0], Q[2,1], ..., Q[d-1,d-2].  This is ADBench's
  packing (``Qtimesx``: ``for i: for j > i: out[j] += ltri[idx++] * x[i]``).

Objective, exactly ADBench's (including its sign convention, under which the prior term is
added as written below; ``gradbench`` notes that one of the two signs is off in the
original, and this benchmark keeps the original so its figures compare with ADBench's)::

    f = -n d/2 log(2 pi)
        + sum_i logsumexp_k( alpha_k + sum(log diag Q_k) - 1/2 ||Q_k (x_i - mu_k)||^2 )
        - n logsumexp(alphas)
        + sum_k ( gamma^2/2 ||Q_k||_F^2 - m sum(log diag Q_k) ) - K C(d, gamma, m)

with ||Q_k||_F^2 = sum(exp(icf[k,:d])^2) + sum(icf[k,d:]^2) and
C = n' d (log gamma - log(2)/2) - log Gamma_d(n'/2), n' = d + m + 1 (Gamma_d: the
multivariate gamma function).  Data as the brief: alphas, icf, x ~ N(0, 1), means ~ U[0, 1),
gamma = 1, m = 0.

Vectorised over components and points: ``xc`` is (K, n, d), Q_k is built from a row of
``icf`` by one gather (``packed[:, qidx]``), and the K products Q_k (x_i - mu_k) are one
batched matmul.  The hand-written NumPy gradient (``gmm_hand``) is the known closed form.
"""
from __future__ import annotations

import math

import numpy as np

from ..case import Case

WORKLOAD = "gmm"
# (d, K) as in the brief; n in {1,000, 10,000}
GRID = [(2, 5), (10, 5), (2, 200), (10, 50), (64, 5), (64, 10), (64, 25)]
QUICK_GRID = [(2, 5), (10, 5)]


def log_gamma_distrib(a: float, p: int) -> float:
    """log of the multivariate gamma function Gamma_p(a) (a constant here)."""
    return 0.25 * p * (p - 1) * math.log(math.pi) + sum(
        math.lgamma(a + 0.5 * (1 - j)) for j in range(1, p + 1))


def packed_index(d: int) -> np.ndarray:
    """(d, d) indices into a row ``[0, exp(icf[:d]), icf[d:]]`` that build Q: the diagonal
    at 1..d, the strictly lower triangle in ADBench's column-major order, 0 (the leading
    zero) above the diagonal."""
    idx = np.zeros((d, d), np.int64)
    idx[np.arange(d), np.arange(d)] = 1 + np.arange(d)
    p = 1 + d
    for col in range(d):
        for row in range(col + 1, d):
            idx[row, col] = p
            p += 1
    return idx


def gmm_objective(xp, alphas, means, icf, x, qidx, gamma, m):
    """ADBench's GMM objective (see the module docstring)."""
    n, d = x.shape
    K = alphas.shape[0]
    log_qdiag = icf[:, :d]
    sum_qs = xp.sum(log_qdiag, axis=1)  # (K,): log det Q_k
    qdiag = xp.exp(log_qdiag)
    lower = icf[:, d:]
    Q = xp.concatenate([xp.zeros((K, 1)), qdiag, lower], axis=1)[:, qidx]  # (K, d, d)
    xc = x[None, :, :] - means[:, None, :]  # (K, n, d)
    Qxc = xc @ xp.swapaxes(Q, 1, 2)  # row i of Qxc[k] is Q_k (x_i - mu_k)
    main = alphas[:, None] + sum_qs[:, None] - 0.5 * xp.sum(Qxc * Qxc, axis=2)  # (K, n)
    slse = xp.sum(xp.logsumexp(main, axis=0))
    constant = -n * d * 0.5 * math.log(2 * math.pi)
    nn = d + m + 1
    C = nn * d * (math.log(gamma) - 0.5 * math.log(2)) - log_gamma_distrib(0.5 * nn, d)
    frobenius = xp.sum(qdiag * qdiag) + xp.sum(lower * lower)
    prior = 0.5 * gamma * gamma * frobenius - m * xp.sum(sum_qs) - K * C
    return constant + slse - n * xp.logsumexp(alphas, axis=0) + prior


def gmm_hand(alphas, means, icf, x, qidx, gamma, m):
    """Value and gradient of ``gmm_objective``, by hand.

    With P_ik the softmax over k of main_ik and W_ik = P_ik Q_k (x_i - mu_k):
    d/dalpha = sum_i P_i - n softmax(alpha); d/dmu_k = Q_k^T sum_i W_ik;
    d/dQ_k = -sum_i W_ik (x_i - mu_k)^T, taken on Q's diagonal (times exp(icf), plus the
    log-det term sum_i P_ik - m, plus the prior's gamma^2 Qdiag^2) and its packed lower
    triangle (plus the prior's gamma^2 icf).
    """
    n, d = x.shape
    K = alphas.shape[0]
    log_qdiag = icf[:, :d]
    sum_qs = log_qdiag.sum(axis=1)
    qdiag = np.exp(log_qdiag)
    lower = icf[:, d:]
    Q = np.concatenate([np.zeros((K, 1)), qdiag, lower], axis=1)[:, qidx]
    xc = x[None, :, :] - means[:, None, :]
    Qxc = xc @ Q.transpose(0, 2, 1)
    main = alphas[:, None] + sum_qs[:, None] - 0.5 * np.sum(Qxc * Qxc, axis=2)
    mx = main.max(axis=0)
    e = np.exp(main - mx)
    s = e.sum(axis=0)
    P = e / s  # (K, n) responsibilities
    am = alphas.max()
    ea = np.exp(alphas - am)
    sa = ea.sum()
    nn = d + m + 1
    C = nn * d * (math.log(gamma) - 0.5 * math.log(2)) - log_gamma_distrib(0.5 * nn, d)
    frobenius = np.sum(qdiag * qdiag) + np.sum(lower * lower)
    value = (-n * d * 0.5 * math.log(2 * math.pi) + np.sum(np.log(s) + mx)
             - n * (np.log(sa) + am) + 0.5 * gamma * gamma * frobenius - m * sum_qs.sum()
             - K * C)

    Pk = P.sum(axis=1)  # (K,)
    g_alphas = Pk - n * ea / sa
    W = P[:, :, None] * Qxc  # (K, n, d)
    dQ = -(W.transpose(0, 2, 1) @ xc)  # (K, d, d)
    g_means = (W.sum(axis=1)[:, None, :] @ Q)[:, 0, :]
    g_icf = np.empty_like(icf)
    diag = np.arange(d)
    g_icf[:, :d] = (dQ[:, diag, diag] * qdiag + Pk[:, None] - m
                    + gamma * gamma * qdiag * qdiag)
    # (column, row) of the strictly lower triangle, columns outermost: ADBench's packing
    col, row = np.nonzero(np.triu(np.ones((d, d), bool), 1))
    g_icf[:, d:] = dQ[:, row, col] + gamma * gamma * lower
    return value, [g_alphas, g_means, g_icf]


def make_case(d: int, K: int, n: int, seed: int = 0, threads: bool = False) -> Case:
    rng = np.random.default_rng(seed)
    alphas = rng.normal(size=K)
    means = rng.uniform(size=(K, d))
    icf = rng.normal(size=(K, d + d * (d - 1) // 2))
    x = rng.normal(size=(n, d))
    return Case(WORKLOAD, f"GMM d={d} K={K} n={n:,}", gmm_objective, [alphas, means, icf],
                [x, packed_index(d), 1.0, 0], size={"d": d, "K": K, "n": n},
                hand_grad=gmm_hand, rtol=1e-6, replay=True, threads=threads)


def cases(quick: bool) -> list[Case]:
    grid = QUICK_GRID if quick else GRID
    ns = [1_000] if quick else [1_000, 10_000]
    # replay's throughput from 2 threads is measured at d=10 K=5, the largest n
    return [make_case(d, K, n, threads=(d, K, n) == (10, 5, ns[-1]))
            for n in ns for d, K in grid]
