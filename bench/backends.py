"""The contenders: array namespaces for each library and the timed functions built from a Case.

An objective is written once as ``f(xp, *params, *data)``.  ``xp`` is a namespace:

* ``NUMPY``: NumPy itself, plus ``logsumexp`` written from its definition.  The same
  namespace runs the NumPy primal on ndarrays *and* tapediff on tapediff tensors, since
  ``np.exp(t)``, ``np.sum(t, axis=1)``, ``t @ a``, ``t[idx]`` ... dispatch to tapediff
  (NEP 13/18): that is the point of tapediff, NumPy code differentiated unchanged.
* ``TD``: the ``tapediff`` module (``td.sin`` ...), the fast path of scalar code.
* ``MATH``: Python's ``math`` on floats, the primal of scalar code.
* ``TORCH``, ``JAX``, ``AUTOGRAD``: small shims over ``torch``, ``jax.numpy`` and
  ``autograd.numpy`` for the few names whose spelling differs (``torch.cat``, ``dim=``).

Peers are optional: ``load_peers`` imports them (each once per process; nothing imports one
before), and ``PEERS`` says which are available (or why not).  Every contender gets its
inputs converted once, outside the timed function.
"""
from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

import tapediff as td

from .case import (
    AUTOGRAD_NAME, HAND, JAX_NAME, PEER_NAMES, PRIMAL, PYTHON_PRIMAL, TAPEDIFF, TAPEDIFF_REPLAY,
    TORCH_NAME, Case,
)


class Namespace:
    """A module seen through a few overrides: ``xp.exp`` is ``module.exp`` unless overridden."""

    def __init__(self, label: str, module: Any, **overrides: Any) -> None:
        self.label = label
        self._module = module
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._module, name)
        setattr(self, name, value)  # later look-ups skip __getattr__
        return value


def _np_logsumexp(a: Any, axis: int) -> Any:
    """log(sum(exp(a))) along ``axis``, shifted by the maximum.  The shift is taken as a
    constant (a tensor's values, detached): its gradient cancels exactly, so
    differentiating through the max would only cost time."""
    m = np.max(a.detach() if isinstance(a, td.Tensor) else a, axis=axis, keepdims=True)
    return np.log(np.sum(np.exp(a - m), axis=axis)) + np.squeeze(m, axis=axis)


NUMPY = Namespace("numpy", np, logsumexp=_np_logsumexp)
# Replay runs the same NumPy code, except for logsumexp: ``_np_logsumexp`` reads the maximum
# with ``detach()``, which a recording for replay turns into a guard on that value, so every
# call whose maximum differs from the recorded one records again.  ``td.logsumexp`` records
# its shift instead, and replay recomputes it, as the peers' own logsumexp functions do.
NUMPY_REPLAY = Namespace("numpy (replay)", np,
                         logsumexp=lambda a, axis: td.logsumexp(a, axis=axis))
TD = Namespace("tapediff", td)
MATH = Namespace("math", math)


# -- peers ------------------------------------------------------------------------------------
@dataclass
class Peer:
    name: str
    version: str | None  # None: not available
    why_not: str = ""  # the import error when not available


PEERS: dict[str, Peer] = {}  # filled by load_peers
# each set by load_peers when its peer imports (None until then, or if it does not)
torch: Any = None
jax: Any = None
jnp: Any = None
autograd: Any = None
TORCH: Any = None
JAX: Any = None
AUTOGRAD: Any = None


def _import_torch() -> str:
    global torch, TORCH
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before any parallel work; harmless if too late
        pass
    TORCH = Namespace(
        "torch", torch,
        sum=lambda a, axis=None, keepdims=False: (
            a.sum() if axis is None else torch.sum(a, dim=axis, keepdim=keepdims)),
        max=lambda a, axis=None, keepdims=False: (
            a.max() if axis is None else torch.amax(a, dim=axis, keepdim=keepdims)),
        concatenate=lambda xs, axis=0: torch.cat(xs, dim=axis),
        stack=lambda xs, axis=0: torch.stack(xs, dim=axis),
        zeros=lambda shape: torch.zeros(shape, dtype=torch.float64),
        logsumexp=lambda a, axis: torch.logsumexp(a, dim=axis),
    )
    return torch.__version__


def _import_jax() -> str:
    global jax, jnp, JAX
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)  # float64, as every other contender
    JAX = Namespace("jax", jnp, logsumexp=lambda a, axis: jax.nn.logsumexp(a, axis=axis))
    return jax.__version__


def _import_autograd() -> str:
    global autograd, AUTOGRAD
    import importlib.metadata

    import autograd
    import autograd.numpy as anp
    import autograd.scipy.special as asp

    AUTOGRAD = Namespace("autograd", anp, logsumexp=lambda a, axis: asp.logsumexp(a, axis=axis))
    return importlib.metadata.version("autograd")


_IMPORTERS = {TORCH_NAME: _import_torch, JAX_NAME: _import_jax, AUTOGRAD_NAME: _import_autograd}


def load_peers(names: Any = PEER_NAMES) -> dict[str, Peer]:
    """Import the named peers, each once per process, and return ``PEERS``: an entry per
    peer tried, with its version, or why it is not available (its import error).

    Nothing imports a peer before this: the runner loads every peer when it starts, a
    memory process (``bench/memory.py``) only the one it measures."""
    for name in names:
        if name in PEERS:
            continue
        try:
            PEERS[name] = Peer(name, _IMPORTERS[name]())
        except ImportError as e:  # an optional peer
            PEERS[name] = Peer(name, None, str(e))
    return PEERS


# -- contenders ---------------------------------------------------------------------------------
@dataclass
class Contender:
    """One library's way of evaluating a case, ready to time.

    ``run()`` does one evaluation (forward only for the primal, value and gradient for the
    rest); ``value_and_grads()`` returns (value, [gradient per param as ndarray]) for the
    agreement check (None for the primal).  ``compile_s``: JAX's trace + compile time,
    outside the timings.
    ``first_call_s``: the first call's time, including what later calls skip (JAX's trace and
    compile, tapediff replay's recording), measured when the contender is built.
    ``verify()``: called after timing; returns a problem (fails the run) or None.
    ``replayed``: the ``td.Replayed`` function of the replay contender.
    """

    name: str
    run: Callable[[], Any]
    value_and_grads: Callable[[], tuple] | None
    compile_s: float | None = None
    first_call_s: float | None = None
    verify: Callable[[], str | None] | None = None
    replayed: Any = None


def _as_grad(g: Any) -> np.ndarray:
    return np.asarray(g, dtype=np.float64)


def primal(case: Case) -> Contender:
    xp = MATH if case.primal_ns == "math" else NUMPY
    f, params, data = case.objective, case.params, case.data
    label = PYTHON_PRIMAL if case.primal_ns == "math" else PRIMAL
    return Contender(label, lambda: f(xp, *params, *data), None)


def hand(case: Case) -> Contender:
    hg, params, data = case.hand_grad, case.params, case.data

    def vg():
        v, gs = hg(*params, *data)
        return float(v), [_as_grad(g) for g in gs]

    return Contender(HAND, lambda: hg(*params, *data), vg)


def tapediff(case: Case, ns: str | None = None, label: str = TAPEDIFF) -> Contender:
    """Leaves are ``td.tensor(p, requires_grad=True)`` (a list param: one leaf per entry).
    Each evaluation records on the contender's own tape, which therefore stays warm (its
    arenas mapped) across calls, as the default tape of a training loop does."""
    xp = TD if (ns or case.td_ns) == "td" else NUMPY
    f, data = case.objective, case.data
    args = [[td.tensor(v, requires_grad=True) for v in p] if isinstance(p, list)
            else td.tensor(p, requires_grad=True) for p in case.params]
    leaves = [t for a in args for t in (a if isinstance(a, list) else [a])]
    tape = td.tape()

    def forward_backward():
        for t in leaves:
            t.grad = None
        with tape:
            loss = f(xp, *args, *data)
        loss.backward()
        return loss

    def run():
        forward_backward()

    def vg():
        loss = forward_backward()
        grads = [np.array([t.grad.item() for t in a]) if isinstance(a, list)
                 else a.grad.numpy() for a in args]
        return float(loss), grads

    return Contender(label, run, vg)


def replay_function(case: Case) -> tuple[td.Replayed, list]:
    """``td.value_and_grad(objective, argnums=params, replay=True)`` and its arguments.

    A list param (Horner's coefficients, one leaf each in the eager contender) is passed as
    one float array and split into its 0-d elements inside the function: the gradient is
    the same, and one array argument is the natural functional form.  The data follow the
    params as further arguments: float arrays among them are replay's dynamic inputs
    (written into the tape on every call), the rest (index arrays, Python numbers) static.
    """
    xp = TD if case.td_ns == "td" else NUMPY_REPLAY
    f, nparams = case.objective, len(case.params)
    lists = {i for i, p in enumerate(case.params) if isinstance(p, list)}

    def objective(*args):
        if lists:
            args = [list(a) if i in lists else a for i, a in enumerate(args)]
        return f(xp, *args)

    fn = td.value_and_grad(objective, argnums=tuple(range(nparams)), replay=True)
    args = [np.array(p, dtype=np.float64) if isinstance(p, list) else p for p in case.params]
    return fn, args + list(case.data)


_WARM = []


def warm_tapediff() -> None:
    """Once per process: a tiny backward, and a tiny function recorded and replayed, so that
    loading Numba's compiled sweeps from its cache (tens of MB of LLVM, once per process, as
    an import) stays out of the first recording timed and out of a memory process's
    baseline-to-peak figure (``bench/memory.py``)."""
    if _WARM:
        return
    x = td.tensor(np.ones(2), requires_grad=True)
    (x * x).sum().backward()
    w = td.value_and_grad(lambda a, b: td.sum(td.sin(a @ b) * a.sum()), argnums=(0, 1),
                          replay=True)
    s = td.value_and_grad(lambda x: td.sin(x * 2.0) + x, replay=True)
    for _ in range(2):
        w(np.ones((2, 2)), np.ones((2, 2)))
        s(0.5)
    _WARM.append(True)


def tapediff_replay(case: Case) -> Contender:
    """``td.value_and_grad(f, argnums=params, replay=True)``: its first call (made here,
    timed as ``first_call_s``) records ``f`` on the function's own tape; the timed calls
    replay it (jitted forward sweep + reverse sweep).  ``verify`` fails the run if any call
    after the first recorded again (``.recordings`` must stay 1)."""
    warm_tapediff()
    fn, args = replay_function(case)
    gc.collect()  # a full collection pending since the imports is no part of recording
    t0 = time.perf_counter()
    fn(*args)
    first_s = time.perf_counter() - t0

    def vg():
        value, grads = fn(*args)
        return float(value), [_as_grad(g) for g in grads]

    def verify():
        if fn.recordings != 1:
            return (f"{TAPEDIFF_REPLAY} recorded {fn.recordings} times instead of once "
                    f"({fn.replays} replays; last guard that stopped a replay: "
                    f"{fn.last_guard})")
        return None

    return Contender(TAPEDIFF_REPLAY, lambda: fn(*args), vg, first_call_s=first_s,
                     verify=verify, replayed=fn)


def _torch_from(v: Any, requires_grad: bool) -> Any:
    a = np.asarray(v)
    t = torch.tensor(a, dtype=torch.float64 if a.dtype.kind == "f" else None)
    return t.requires_grad_() if requires_grad else t


def pytorch(case: Case) -> Contender:
    """PyTorch eager, float64, leaves with ``requires_grad=True``, ``loss.backward()``."""
    f = case.objective
    args = [[_torch_from(v, True) for v in p] if isinstance(p, list) else _torch_from(p, True)
            for p in case.params]
    leaves = [t for a in args for t in (a if isinstance(a, list) else [a])]
    data = [_torch_from(d, False) if isinstance(d, np.ndarray) else d for d in case.data]

    def forward_backward():
        for t in leaves:
            t.grad = None
        loss = f(TORCH, *args, *data)
        loss.backward()
        return loss

    def vg():
        loss = forward_backward()
        grads = [np.array([t.grad.item() for t in a]) if isinstance(a, list)
                 else a.grad.numpy() for a in args]
        return loss.item(), grads

    return Contender(TORCH_NAME, lambda: forward_backward(), vg)


def _jax_from(v: Any) -> Any:
    if isinstance(v, list):
        return [jnp.asarray(x, dtype=jnp.float64) for x in v]
    a = np.asarray(v)
    return jnp.asarray(a, dtype=jnp.float64 if a.dtype.kind == "f" else a.dtype)


def jax_jit(case: Case) -> Contender:
    """``jax.jit(jax.value_and_grad(f))`` over all params (one pytree), compiled ahead of
    time so that ``compile_s`` (trace + XLA compile) stays out of the timings."""
    f, ndata = case.objective, len(case.data)
    params = tuple(_jax_from(p) for p in case.params)
    data = [_jax_from(d) if isinstance(d, np.ndarray) else d for d in case.data]
    static = {i for i, d in enumerate(data) if not hasattr(d, "dtype")}  # Python constants
    arrays = [d for i, d in enumerate(data) if i not in static]

    def loss(ps, *arr):
        it = iter(arr)
        full = [data[i] if i in static else next(it) for i in range(ndata)]
        return f(JAX, *ps, *full)

    gc.collect()  # as before tapediff replay's first call
    t0 = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(loss)).lower(params, *arrays).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(params, *arrays))
    first_s = time.perf_counter() - t0  # what a first jitted call costs: trace, compile, run

    def run():
        return jax.block_until_ready(compiled(params, *arrays))

    def vg():
        v, gs = run()
        return float(v), [np.array([float(x) for x in g]) if isinstance(g, list)
                          else np.asarray(g) for g in gs]

    return Contender(JAX_NAME, run, vg, compile_s=compile_s, first_call_s=first_s)


def hips_autograd(case: Case) -> Contender:
    """HIPS autograd's ``value_and_grad`` over all params (one tuple)."""
    f, data = case.objective, case.data
    params = tuple(list(p) if isinstance(p, list) else p for p in case.params)
    vg_fn = autograd.value_and_grad(lambda ps: f(AUTOGRAD, *ps, *data))

    def vg():
        v, gs = vg_fn(params)
        return float(v), [_as_grad(g) for g in gs]

    return Contender(AUTOGRAD_NAME, lambda: vg_fn(params), vg)


PEER_BUILDERS: dict[str, Callable[[Case], Contender]] = {
    TORCH_NAME: pytorch, JAX_NAME: jax_jit, AUTOGRAD_NAME: hips_autograd}
