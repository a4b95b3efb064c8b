"""Higher order (issue 13): Hessian-vector products and Hessians, against one gradient.

``python -m bench --only higher``.  Each case times functions side by side in paired rounds
(a ``FunctionsCase``, ``bench/case.py``): "x tapediff" is a time over tapediff's first
function (its gradient, or its Hessian), and the ratios below each table come from the same
rounds.

* ``hvp Rosenbrock n=100,000``: ``elementwise.rosenbrock`` (array code) at n = 10^5: one
  gradient (``td.grad``) and one Hessian-vector product (``td.hvp``); target: the product
  costs <= 4x the gradient.  Checked against the closed forms (SciPy's ``rosen_der``,
  ``rosen_hess_prod``).
* ``hvp MLP 784-256-256-10 batch 64``: the loss of ``mlp.py`` as a function of its 269,322
  parameters flattened into one vector (sliced and reshaped inside the function); same
  target.  Checked against the hand-written backpropagation (``mlp.mlp_hand``) and central
  differences of it along the tangent.
* ``hessian Rosenbrock n=100``: ``td.hessian``, beside the closed form ``rosen_hess``
  (SciPy's when installed, else the same formula in this module: the main job needs NumPy only);
  a Hessian that is not ``np.allclose`` to it fails the run.

Peers, where installed: PyTorch (``torch.func.grad``; the product as ``torch.func.jvp`` of
``torch.func.grad``, forward over reverse as tapediff's, and as
``torch.autograd.functional.hvp``, reverse over reverse; ``torch.func.hessian``) and JAX (jit of
``jax.grad``, of ``jax.jvp(jax.grad(f))``, of ``jax.hessian``).  Each must agree with tapediff
(rtol 1e-6) to be timed.  ``--quick`` runs n = 10^4 and the 32-64-64-8 net.

Memory (full runs, or ``--memory``): each contender's own process's RSS high-water mark, as
for every workload (``bench/memory.py``).  A fresh process (``python -m
bench.workloads.higher CASE CONTENDER``) imports only what that contender needs, builds the
case, calls the contender ``bench.memory.CALLS`` times and reports its peak RSS (``VmHWM``),
which includes the interpreter and the library's import (PyTorch's is larger than
tapediff's), and its RSS before the first call, printed beside it.
"""
from __future__ import annotations

import functools
import json
import sys

import numpy as np

import tapediff as td

from .. import memory
from ..case import JAX_NAME, TORCH_NAME, FunctionsCase, Metric
from ..targets import paired_ratio
from . import elementwise, mlp

WORKLOAD = "higher"

TD_GRAD, TD_HVP, TD_HESS = "tapediff grad", "tapediff hvp", "tapediff hessian"
TORCH_GRAD, TORCH_HVP = "PyTorch grad", "PyTorch hvp"
TORCH_FHVP = "PyTorch functional.hvp"  # torch.autograd.functional.hvp
TORCH_HESS = "PyTorch hessian"
JAX_GRAD, JAX_HVP, JAX_HESS = "JAX jit grad", "JAX jit hvp", "JAX jit hessian"
SCIPY_HESS = "SciPy rosen_hess"
CLOSED_HESS = "closed-form rosen_hess"  # the same formula written here, without SciPy
RTOL = 1e-6


def _namespaces(peer: str):
    """``bench.backends`` with ``peer`` imported (only where that peer is built)."""
    from .. import backends as B
    B.load_peers([peer])
    return B


def _numpy_ns():
    """The runner's NumPy namespace (``bench.backends.NUMPY``) without importing the peers."""
    def logsumexp(a, axis):
        m = np.max(a.detach() if isinstance(a, td.Tensor) else a, axis=axis, keepdims=True)
        return np.log(np.sum(np.exp(a - m), axis=axis)) + np.squeeze(m, axis=axis)

    class NS:
        def __getattr__(self, name):
            return getattr(np, name)

    ns = NS()
    ns.logsumexp = logsumexp
    return ns


# -- objectives -------------------------------------------------------------------------------
class Problem:
    """A scalar objective ``f(xp, x)`` of one float vector, its point and a tangent."""

    def __init__(self, f, x, v=None):
        self.f, self.x, self.v = f, x, v


def rosenbrock_problem(n: int) -> Problem:
    rng = np.random.default_rng(13)
    return Problem(elementwise.rosenbrock, rng.uniform(-1, 1, n), rng.normal(size=n))


def mlp_problem(widths: tuple, batch: int) -> tuple[Problem, object]:
    """The MLP loss as a function of its parameters flattened into one vector."""
    case = mlp._case(widths, batch)
    shapes = [p.shape for p in case.params]
    data = list(case.data)

    def loss(xp, theta, *data_override):
        parts, o = [], 0
        for s in shapes:
            k = int(np.prod(s))
            parts.append(theta[o:o + k].reshape(s))
            o += k
        return mlp.mlp_loss(xp, *parts, *(data_override or data))

    theta = np.concatenate([p.ravel() for p in case.params])
    v = np.random.default_rng(14).normal(size=theta.size)
    return Problem(loss, theta, v), case


# -- contenders -------------------------------------------------------------------------------
def _tapediff(p: Problem, kind: str) -> dict:
    f = functools.partial(p.f, _numpy_ns())
    if kind == "hessian":
        h = td.hessian(f)
        return {TD_HESS: (lambda: h(p.x), lambda: h(p.x))}
    g = td.grad(f)
    return {TD_GRAD: (lambda: g(p.x), lambda: g(p.x)),
            TD_HVP: (lambda: td.hvp(f, p.x, p.v), lambda: td.hvp(f, p.x, p.v)[1])}


def _torch(p: Problem, kind: str, data=None) -> dict:
    B = _namespaces(TORCH_NAME)
    torch = B.torch
    x = torch.tensor(p.x, dtype=torch.float64)
    tdata = [B._torch_from(d, False) for d in data or ()]

    def f(q):
        return p.f(B.TORCH, q, *tdata)

    if kind == "hessian":
        h = torch.func.hessian(f)
        return {TORCH_HESS: (lambda: h(x), lambda: h(x).numpy())}
    v = torch.tensor(p.v, dtype=torch.float64)
    g = torch.func.grad(f)

    def hvp():
        return torch.func.jvp(g, (x,), (v,))[1]

    def functional_hvp():
        return torch.autograd.functional.hvp(f, x, v)[1]

    return {TORCH_GRAD: (lambda: g(x), lambda: g(x).numpy()),
            TORCH_HVP: (hvp, lambda: hvp().numpy()),
            TORCH_FHVP: (functional_hvp, lambda: functional_hvp().numpy())}


def _jax(p: Problem, kind: str, data=None) -> dict:
    B = _namespaces(JAX_NAME)
    jax, jnp = B.jax, B.jnp
    x = jnp.asarray(p.x)
    jdata = [B._jax_from(d) for d in data or ()]

    def f(q):
        return p.f(B.JAX, q, *jdata)

    def ready(fn, *args):
        compiled = jax.jit(fn).lower(*args).compile()
        return lambda: jax.block_until_ready(compiled(*args))

    if kind == "hessian":
        h = ready(jax.hessian(f), x)
        return {JAX_HESS: (h, lambda: np.asarray(h()))}
    v = jnp.asarray(p.v)
    g = ready(jax.grad(f), x)
    hv = ready(lambda q, t: jax.jvp(jax.grad(f), (q,), (t,))[1], x, v)
    return {JAX_GRAD: (g, lambda: np.asarray(g())), JAX_HVP: (hv, lambda: np.asarray(hv()))}


def _build(p: Problem, kind: str, peers: list, extra: dict | None = None,
           data=None) -> tuple[dict, dict]:
    """tapediff's functions first, then each requested peer's (a peer that fails to build is
    reported as skipped, not fatal)."""
    fns = _tapediff(p, kind)
    fns.update(extra or {})
    skipped = {}
    for name, make in ((TORCH_NAME, _torch), (JAX_NAME, _jax)):
        if name not in peers:
            continue
        try:
            fns.update(make(p, kind, data))
        except Exception as e:
            skipped[name] = f"failed to build: {type(e).__name__}: {e}"
    return fns, skipped


# -- checks -----------------------------------------------------------------------------------
def _close(a, b) -> tuple[bool, str]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return False, f"shape {a.shape} vs {b.shape}"
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    ok = bool(np.allclose(a, b, rtol=RTOL, atol=1e-9 * max(scale, 1e-300)))
    return ok, f"max |diff| {float(np.max(np.abs(a - b))):.3g} (largest |entry| {scale:.3g})"


def _check_peers(case_name: str, out: dict, refs: dict) -> tuple[list, set]:
    """Every peer's result against tapediff's of the same kind (``refs``: kind -> name)."""
    problems, drop = [], set()
    for name, value in out.items():
        if name.startswith("tapediff") or name in (SCIPY_HESS, CLOSED_HESS):
            continue
        kind = "hessian" if name.endswith("hessian") else (
            "hvp" if name.endswith("hvp") else "grad")
        ref = refs.get(kind)
        if ref is None or ref not in out:
            continue
        ok, why = _close(value, out[ref])
        if not ok:
            problems.append(f"MISMATCH in {WORKLOAD} / {case_name}: {name} disagrees with "
                            f"{ref}: {why}")
            drop.add(name)
    return problems, drop


def _check_against(case_name: str, out: dict, name: str, ref, what: str) -> list:
    if name not in out:
        return []
    ok, why = _close(out[name], ref)
    return [] if ok else [f"{name.upper()} IS WRONG in {WORKLOAD} / {case_name}: it differs "
                          f"from {what}: {why}"]


# -- figures ----------------------------------------------------------------------------------
def _ratio_metrics(res, pairs: list) -> list[Metric]:
    out = []
    for a, b, note in pairs:
        x = paired_ratio(res, a, b)
        if x is not None:
            out.append(Metric(f"{a} / {b}", x, "x", note))
    return out


def _hvp_figures(res) -> list[Metric]:
    return _ratio_metrics(res, [
        (TD_HVP, TD_GRAD, "target <= 4"),
        (TORCH_HVP, TORCH_GRAD, "torch.func.jvp of torch.func.grad"),
        (TORCH_FHVP, TORCH_GRAD, "torch.autograd.functional.hvp"),
        (JAX_HVP, JAX_GRAD, ""),
        (TORCH_GRAD, TD_GRAD, "> 1: tapediff faster"),
        (TORCH_HVP, TD_HVP, "> 1: tapediff faster"),
        (JAX_HVP, TD_HVP, "> 1: tapediff faster"),
    ])


def _hessian_figures(res) -> list[Metric]:
    return _ratio_metrics(res, [(TORCH_HESS, TD_HESS, "> 1: tapediff faster"),
                                (JAX_HESS, TD_HESS, "> 1: tapediff faster")])


# -- memory: each contender in a process of its own (bench/memory.py) ------------------------
def rss_of(case_name: str, contender: str, quick: bool) -> memory.Rss:
    """The memory process (``bench.memory``) of ``contender`` in the case ``case_name``."""
    return memory.launch("bench.workloads.higher",
                         [case_name, contender] + (["--quick"] if quick else []))


def _rss_main(argv: list[str]) -> int:
    """``python -m bench.workloads.higher CASE CONTENDER [--quick]``: build the case with
    only the peer ``CONTENDER`` belongs to, measure ``CONTENDER`` (``memory.measure_calls``)
    and print the figures as one JSON line."""
    case_name, contender = argv[0], argv[1]
    quick = "--quick" in argv[2:]
    case = next(c for c in cases(quick) if c.name == case_name)
    peers = [p for p in (TORCH_NAME, JAX_NAME) if contender.startswith(p.split()[0])]
    print(json.dumps(memory.measure_calls(lambda: case.build(peers)[0][contender][0],
                                          contender)))
    return 0


# -- Rosenbrock's closed forms: SciPy's when installed (the main job needs only numpy) ---------
def _rosen_der(x: np.ndarray) -> np.ndarray:
    """d/dx of sum(100 (x[1:] - x[:-1]^2)^2 + (1 - x[:-1])^2)."""
    d = np.zeros_like(x)
    t = x[1:] - x[:-1] ** 2
    d[:-1] = -400.0 * x[:-1] * t - 2.0 * (1.0 - x[:-1])
    d[1:] += 200.0 * t
    return d


def _rosen_hess(x: np.ndarray) -> np.ndarray:
    """The (tridiagonal) Hessian of the same function."""
    n = x.size
    h = np.zeros((n, n))
    i = np.arange(n - 1)
    h[i, i + 1] = h[i + 1, i] = -400.0 * x[:-1]
    diag = np.zeros(n)
    diag[:-1] = 1200.0 * x[:-1] ** 2 - 400.0 * x[1:] + 2.0
    diag[1:] += 200.0
    h[np.arange(n), np.arange(n)] = diag
    return h


def _rosen_hess_prod(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The Hessian of the same function times ``v``, without forming it."""
    hv = np.zeros_like(x)
    hv[:-1] = (1200.0 * x[:-1] ** 2 - 400.0 * x[1:] + 2.0) * v[:-1] - 400.0 * x[:-1] * v[1:]
    hv[1:] += 200.0 * v[1:] - 400.0 * x[:-1] * v[:-1]
    return hv


def closed_forms() -> tuple:
    """(rosen_der, rosen_hess_prod, rosen_hess, source): SciPy's, or the formulas above."""
    try:
        from scipy.optimize import rosen_der, rosen_hess, rosen_hess_prod
    except ImportError:
        return _rosen_der, _rosen_hess_prod, _rosen_hess, "its closed form"
    return rosen_der, rosen_hess_prod, rosen_hess, "scipy.optimize"


# -- cases ------------------------------------------------------------------------------------
def _memory(name: str):
    return lambda contender, quick: rss_of(name, contender, quick)


def rosenbrock_hvp_case(n: int) -> FunctionsCase:
    rosen_der, rosen_hess_prod, _, source = closed_forms()
    p = rosenbrock_problem(n)
    name = f"hvp Rosenbrock n={n:,}"

    def check(out):
        problems, drop = _check_peers(name, out, {"grad": TD_GRAD, "hvp": TD_HVP})
        problems += _check_against(name, out, TD_GRAD, rosen_der(p.x), f"{source} rosen_der")
        problems += _check_against(name, out, TD_HVP, rosen_hess_prod(p.x, p.v),
                                   f"{source} rosen_hess_prod")
        return problems, drop

    return FunctionsCase(WORKLOAD, name, lambda peers: _build(p, "grad", peers), check,
                         _hvp_figures, _memory(name), size={"n": n},
                         note="one gradient vs one Hessian-vector product")


def mlp_hvp_case(widths: tuple, batch: int) -> FunctionsCase:
    p, case = mlp_problem(widths, batch)
    name = f"hvp MLP {'-'.join(str(w) for w in widths)} batch {batch}"
    data = list(case.data)

    def hand_grad(theta):
        parts, o = [], 0
        for q in case.params:
            parts.append(theta[o:o + q.size].reshape(q.shape))
            o += q.size
        return np.concatenate([g.ravel() for g in mlp.mlp_hand(*parts, *data)[1]])

    def check(out):
        problems, drop = _check_peers(name, out, {"grad": TD_GRAD, "hvp": TD_HVP})
        problems += _check_against(name, out, TD_GRAD, hand_grad(p.x),
                                   "the hand-written backpropagation (mlp.mlp_hand)")
        if TD_HVP in out:  # central differences of the hand gradient along v
            h = 1e-5 / max(1.0, float(np.max(np.abs(p.v))))
            fd = (hand_grad(p.x + h * p.v) - hand_grad(p.x - h * p.v)) / (2 * h)
            scale = float(np.max(np.abs(fd)))
            err = float(np.max(np.abs(np.asarray(out[TD_HVP]) - fd)))
            if not err <= 1e-5 * scale:
                problems.append(f"TAPEDIFF HVP IS WRONG in {WORKLOAD} / {name}: it differs "
                                f"from central differences of mlp.mlp_hand along v: max "
                                f"|diff| {err:.3g} (largest |entry| {scale:.3g})")
        return problems, drop

    return FunctionsCase(WORKLOAD, name, lambda peers: _build(p, "grad", peers, data=data),
                         check, _hvp_figures, _memory(name),
                         size={"widths": list(widths), "batch": batch,
                               "parameters": int(p.x.size)},
                         note="the loss of mlp.py as a function of its parameters, flattened")


def rosenbrock_hessian_case(n: int) -> FunctionsCase:
    _, _, rosen_hess, source = closed_forms()
    p = rosenbrock_problem(n)
    name = f"hessian Rosenbrock n={n}"
    label = SCIPY_HESS if source == "scipy.optimize" else CLOSED_HESS
    scipy_fns = {label: (lambda: rosen_hess(p.x), lambda: rosen_hess(p.x))}

    def check(out):
        problems, drop = _check_peers(name, out, {"hessian": TD_HESS})
        if TD_HESS in out and not np.allclose(out[TD_HESS], rosen_hess(p.x)):
            err = float(np.max(np.abs(np.asarray(out[TD_HESS]) - rosen_hess(p.x))))
            problems.append(f"TAPEDIFF HESSIAN IS WRONG in {WORKLOAD} / {name}: "
                            f"td.hessian is not np.allclose to {source} rosen_hess "
                            f"(max |diff| {err:.3g})")
            drop.add(TD_HESS)
        return problems, drop

    return FunctionsCase(WORKLOAD, name,
                         lambda peers: _build(p, "hessian", peers, scipy_fns), check,
                         _hessian_figures, _memory(name), size={"n": n},
                         note="td.hessian vs SciPy's closed form")


def cases(quick: bool) -> list[FunctionsCase]:
    if quick:
        return [rosenbrock_hvp_case(10_000), mlp_hvp_case((32, 64, 64, 8), 16),
                rosenbrock_hessian_case(100)]
    return [rosenbrock_hvp_case(100_000), mlp_hvp_case((784, 256, 256, 10), 64),
            rosenbrock_hessian_case(100)]


if __name__ == "__main__":
    sys.exit(_rss_main(sys.argv[1:]))
