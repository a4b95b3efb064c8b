"""Higher-order rules of the ``PYTHON_RULE`` primitives with rules (linear algebra and
special functions): each row's ``tangent`` (forward mode) and ``graph`` (the reverse rule in
tensor operations), tested on the rules themselves:

* ``tangent`` against central differences of the NumPy ``forward`` rule along the tangent
  (eigenvectors and singular vectors with their signs aligned to the unperturbed ones, so
  the differences see a smooth function), and as the transpose of ``reverse``:
  ``<g, tangent(t)> == <reverse(g), t>`` for any tangent, including non-symmetric ones for
  the functions of a symmetric input (the symmetrised-gradient convention);
* ``graph`` at first order: the numbers of ``reverse``;
* ``graph`` at second order: recorded over an output computed by the public function
  (``td.linalg.eigh`` ...), then differentiated by ``backward()``, against central
  differences of the NumPy ``reverse`` rule (weighted by random weights) with respect to
  the adjoint and the inputs;
* digamma's graph rule (trigamma is not a tensor operation) raises ``NotImplementedError``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest

import tapediff as td
from tapediff._src import _kernels as K
from tapediff._src import _linalg_rules as LR
from tapediff._src import _primitives as P

from helpers import numerical_grad, spd_matrices, well_conditioned

RULED = [p for p in P.PRIMITIVES if p.forward is not None]


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
general, spd = well_conditioned, spd_matrices


def triangular(rng, shape: tuple) -> np.ndarray:
    """Full matrices whose triangles (and diagonals) are well conditioned."""
    return rng.uniform(-0.5, 0.5, shape) + 3.0 * np.eye(shape[-1])


def _sym(x: np.ndarray) -> np.ndarray:
    return 0.5 * (x + np.swapaxes(x, -1, -2))


@dataclass
class Case:
    """A record to test: its opcode and parameter, its inputs, and ``record(*tensors)``, the
    public function that records it, returning its packed value (a tensor)."""

    id: str
    op: int
    inputs: Callable[[Any], list]
    record: Callable[..., Any]
    p: float = 0.0
    sym: bool = False  # a function of a symmetric input (reads one triangle)
    align: str = ""  # "eigh" / "svd": vectors whose signs are aligned for differences


def _eigh(uplo: str) -> Callable:
    def record(a):
        w, v = td.linalg.eigh(a, uplo)
        return td.concatenate([w, v.reshape(v.shape[:-2] + (-1,))], axis=-1)
    return record


def _svd(a):
    u, s, vh = td.linalg.svd(a, full_matrices=False)
    b = a.shape[:-2]
    return td.concatenate([u.reshape(b + (-1,)), s, vh.reshape(b + (-1,))], axis=-1)


def _qr(a):
    q, r = td.linalg.qr(a)
    b = a.shape[:-2]
    return td.concatenate([q.reshape(b + (-1,)), r.reshape(b + (-1,))], axis=-1)


def _slogdet(a):
    return td.stack(list(td.linalg.slogdet(a)), axis=-1)


def _tri(flags: int) -> Callable:
    def record(a, b):
        return td.linalg.solve_triangular(a, b, trans=int(bool(flags & LR.TRANS)),
                                          lower=bool(flags & LR.LOWER),
                                          unit_diagonal=bool(flags & LR.UNIT))
    return record


def _uniform(*intervals: tuple, shapes: tuple = ((2, 3),)) -> Callable:
    def inputs(rng):
        return [rng.uniform(lo, hi, s) for (lo, hi), s in zip(intervals, shapes)]
    return inputs


B = (2,)  # batch dims of the matrices
LINALG = [
    Case("solve", K.OP_LINALG_SOLVE,
         lambda r: [general(r, B + (3, 3)), r.standard_normal(B + (3, 2))],
         td.linalg.solve),
    *[Case(f"solve_triangular-{f}", K.OP_LINALG_SOLVE_TRIANGULAR,
           lambda r: [triangular(r, B + (3, 3)), r.standard_normal(B + (3, 2))],
           _tri(f), float(f))
      for f in (LR.LOWER, LR.TRANS, LR.LOWER | LR.TRANS | LR.UNIT, LR.UNIT)],
    Case("cholesky", K.OP_LINALG_CHOLESKY, lambda r: [spd(r, B + (3, 3))],
         td.linalg.cholesky, sym=True),
    Case("cholesky-upper", K.OP_LINALG_CHOLESKY, lambda r: [spd(r, B + (3, 3))],
         lambda a: td.linalg.cholesky(a, upper=True), 1.0, sym=True),
    Case("slogdet", K.OP_LINALG_SLOGDET, lambda r: [general(r, B + (3, 3))], _slogdet),
    Case("eigh", K.OP_LINALG_EIGH, lambda r: [spd(r, B + (3, 3))], _eigh("L"), sym=True,
         align="eigh"),
    Case("eigh-U", K.OP_LINALG_EIGH, lambda r: [spd(r, B + (3, 3))], _eigh("U"), 1.0,
         sym=True, align="eigh"),
    *[Case(f"svd-{m}x{n}", K.OP_LINALG_SVD, lambda r, m=m, n=n: [general(r, B + (m, n))],
           _svd, align="svd") for m, n in ((3, 3), (4, 3), (3, 4))],
    *[Case(f"qr-{m}x{n}", K.OP_LINALG_QR, lambda r, m=m, n=n: [general(r, B + (m, n))], _qr)
      for m, n in ((3, 3), (4, 3), (3, 4))],
    *[Case(f"pinv-{m}x{n}", K.OP_LINALG_PINV, lambda r, m=m, n=n: [general(r, B + (m, n))],
           lambda a: td.linalg.pinv(a, 1e-15), 1e-15) for m, n in ((3, 3), (4, 3), (3, 4))],
]
SPECIAL = [
    Case("erfc", K.OP_ERFC, _uniform((-2.0, 2.5)), td.special.erfc),
    Case("erfinv", K.OP_ERFINV, _uniform((-0.9, 0.9)), td.special.erfinv),
    Case("ndtri", K.OP_NDTRI, _uniform((0.05, 0.95)), td.special.ndtri),
    Case("gammaln", K.OP_GAMMALN, _uniform((0.3, 6.0)), td.special.gammaln),
    Case("gammaln-negative", K.OP_GAMMALN, _uniform((-2.9, -2.1)), td.special.gammaln),
    Case("digamma", K.OP_DIGAMMA, _uniform((0.3, 6.0)), td.special.digamma),
    Case("log_ndtr", K.OP_LOG_NDTR, _uniform((-12.0, 5.0)), td.special.log_ndtr),
    Case("logit", K.OP_LOGIT, _uniform((0.05, 0.95)), td.special.logit),
    Case("xlogy", K.OP_XLOGY, _uniform((-2.0, 2.0), (0.2, 3.0), shapes=((2, 3),) * 2),
         td.special.xlogy),
    Case("xlogy-broadcast", K.OP_XLOGY, _uniform((-2.0, 2.0), (0.2, 3.0),
                                                 shapes=((3, 1), (4,))), td.special.xlogy),
    Case("xlog1py", K.OP_XLOG1PY, _uniform((-2.0, 2.0), (-0.8, 2.0), shapes=((2, 3),) * 2),
         td.special.xlog1py),
    Case("xlog1py-broadcast", K.OP_XLOG1PY, _uniform((-2.0, 2.0), (-0.8, 2.0),
                                                     shapes=((1, 3), (2, 1))),
         td.special.xlog1py),
    Case("betaln", K.OP_BETALN, _uniform((0.2, 8.0), (0.2, 8.0), shapes=((2, 3),) * 2),
         td.special.betaln),
    Case("betaln-broadcast", K.OP_BETALN, _uniform((0.2, 8.0), (0.2, 8.0),
                                                   shapes=((3,), (2, 1))), td.special.betaln),
]
CASES = LINALG + SPECIAL
#: the graph rules that are not differentiable again (their derivative is not a tensor op)
NO_GRAPH = {K.OP_DIGAMMA}


def _setup(case: Case, seed: int = 0) -> tuple:
    """(rule row, inputs, output value) of a case; the value also checks that ``record``
    packs the public function's results as the forward rule lays them out."""
    rng = np.random.default_rng(seed)
    prim = P.BY_OP[case.op]
    ins = case.inputs(rng)
    packed = case.record(*[td.tensor(x) for x in ins]).numpy()
    out = np.empty(packed.shape)
    prim.forward(out, *ins, case.p)
    np.testing.assert_allclose(out, packed, rtol=1e-12, atol=1e-12)
    return prim, ins, out


def _forward(prim, case: Case, ins: list, shape: tuple) -> np.ndarray:
    out = np.empty(shape)
    prim.forward(out, *ins, case.p)
    return out


def _aligned(case: Case, y: np.ndarray, ref: np.ndarray, inputs: list) -> np.ndarray:
    """``y`` (a packed eigh/svd value near ``ref``) with each vector's sign (each singular
    pair's) flipped to agree with ``ref``'s."""
    y = y.copy()
    if case.align == "eigh":
        n = inputs[0].shape[-1]
        v, v0 = y[..., n:].reshape(inputs[0].shape), ref[..., n:].reshape(inputs[0].shape)
        v *= np.sign(np.sum(v * v0, axis=-2, keepdims=True))
        y[..., n:] = v.reshape(y[..., n:].shape)
    elif case.align == "svd":
        m, n = inputs[0].shape[-2:]
        u, _, vh = LR.svd_parts(y, m, n)
        u0 = LR.svd_parts(ref, m, n)[0]
        s = np.sign(np.sum(u * u0, axis=-2, keepdims=True))
        u *= s
        vh *= np.swapaxes(s, -1, -2)
    return y


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------
def test_every_primitive_with_rules_has_higher_order_rules():
    assert len(RULED) == 18
    for prim in RULED:
        assert prim.tangent is not None and prim.graph is not None, prim.grad_fn
    assert {c.op for c in CASES} == {p.op for p in RULED}


# ---------------------------------------------------------------------------------------------
# tangent: central differences of the forward rule, and the transpose of the reverse rule
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_tangent_matches_finite_differences(case):
    prim, ins, out = _setup(case)
    rng = np.random.default_rng(1)
    tins = [rng.standard_normal(x.shape) for x in ins]
    if case.sym:
        tins = [_sym(t) for t in tins]
    tout = np.full(out.shape, np.nan)
    prim.tangent(tout, out, ins, tins, case.p)
    h = 1e-6
    hi = _forward(prim, case, [x + h * t for x, t in zip(ins, tins)], out.shape)
    lo = _forward(prim, case, [x - h * t for x, t in zip(ins, tins)], out.shape)
    if case.align:
        hi, lo = _aligned(case, hi, out, ins), _aligned(case, lo, out, ins)
    np.testing.assert_allclose(tout, (hi - lo) / (2 * h), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_tangent_is_the_transpose_of_reverse(case):
    prim, ins, out = _setup(case)
    rng = np.random.default_rng(2)
    tins = [rng.standard_normal(x.shape) for x in ins]  # not symmetric, not triangular
    g = rng.standard_normal(out.shape)
    tout = np.empty(out.shape)
    prim.tangent(tout, out, ins, tins, case.p)
    adjoints = prim.reverse(g, out, *ins, case.p, (True,) * len(ins))
    np.testing.assert_allclose(np.sum(g * tout), sum(np.sum(a * t)
                                                     for a, t in zip(adjoints, tins)),
                               rtol=1e-10, atol=1e-10)


def test_tangent_in_float32():
    # float32 views: computed in float64, written into the float32 tangent
    case = LINALG[0]
    prim, ins, out = _setup(case)
    tins = [np.ones_like(x) for x in ins]
    t64, t32 = np.empty(out.shape), np.empty(out.shape, np.float32)
    prim.tangent(t64, out, ins, tins, case.p)
    prim.tangent(t32, out.astype(np.float32), [x.astype(np.float32) for x in ins],
                 [t.astype(np.float32) for t in tins], case.p)
    np.testing.assert_allclose(t32, t64, rtol=1e-4, atol=1e-5)


def test_slogdet_with_lu_factors():
    # the LU factors kept (SciPy, n >= LU_MIN) have tangent 0; the graph rule inverts A
    pytest.importorskip("scipy.linalg")
    a = general(np.random.default_rng(3), (2, LR.LU_MIN, LR.LU_MIN))
    assert LR.slogdet_uses_lu(a)
    prim = P.BY_OP[K.OP_LINALG_SLOGDET]
    out = np.empty((2, LR.slogdet_width(LR.LU_MIN, True)))
    prim.forward(out, a, 1.0)
    da = np.random.default_rng(4).standard_normal(a.shape)
    tout = np.full(out.shape, np.nan)
    prim.tangent(tout, out, [a], [da], 1.0)
    assert not tout[..., 0].any() and not tout[..., 2:].any()
    np.testing.assert_allclose(tout[..., 1], np.sum(np.linalg.inv(a).mT * da, axis=(-2, -1)),
                               rtol=1e-10)
    g = np.random.default_rng(5).standard_normal(out.shape)
    got = prim.graph(td, td.tensor(g), td.tensor(out), [td.tensor(a)], 1.0, (True,))[0]
    np.testing.assert_allclose(got.numpy(), prim.reverse(g, out, a, 1.0, (True,))[0],
                               rtol=1e-9, atol=1e-12)


def test_tangent_conventions_at_the_edges():
    # slogdet of a singular matrix: not finite where the tangent is not 0, 0 where it is
    prim = P.BY_OP[K.OP_LINALG_SLOGDET]
    a = np.array([[[1.0, 2.0], [2.0, 4.0]], [[2.0, 0.0], [0.0, 1.0]]])
    out = np.empty((2, 2))
    prim.forward(out, a, 0.0)
    tout = np.empty((2, 2))
    prim.tangent(tout, out, [a], [np.ones_like(a)], 0.0)
    assert not np.isfinite(tout[0, 1]) and tout[1, 1] == pytest.approx(1.5)
    prim.tangent(tout, out, [a], [np.stack([np.zeros((2, 2)), np.eye(2)])], 0.0)
    assert tout[0, 1] == 0.0 and tout[1, 1] == pytest.approx(1.5)
    # xlogy's and xlog1py's d/dx at x = 0 outside y's domain: 0 (PyTorch's)
    for op, y in ((K.OP_XLOGY, -0.5), (K.OP_XLOG1PY, -1.5)):
        prim = P.BY_OP[op]
        xs = [np.zeros(2), np.array([y, y - 1.0])]
        tout = np.empty(2)
        prim.tangent(tout, np.zeros(2), xs, [np.ones(2), np.zeros(2)], 0.0)
        np.testing.assert_array_equal(tout, 0.0)
    # logit outside [0, 1]: nan
    tout = np.empty(2)
    P.BY_OP[K.OP_LOGIT].tangent(tout, np.zeros(2), [np.array([-0.5, 1.5])], [np.ones(2)], 0.0)
    assert np.isnan(tout).all()


@pytest.mark.parametrize("op, xs", [
    (K.OP_XLOGY, [np.array([0.0, 0.0, 0.0, 1.0]), np.array([-0.5, 0.0, 2.0, 0.5])]),
    (K.OP_XLOG1PY, [np.array([0.0, 0.0, 0.0, 1.0]), np.array([-1.5, -1.0, 2.0, 0.5])]),
    (K.OP_LOGIT, [np.array([-0.5, 0.5, 1.5, 0.0])]),
], ids=["xlogy", "xlog1py", "logit"])
def test_graph_conventions_at_the_edges(op, xs):
    # the reverse rule's numbers where PyTorch's conventions decide them (0, nan, inf)
    prim = P.BY_OP[op]
    out = np.empty(4)
    prim.forward(out, *xs, 0.0)
    g = np.array([1.0, 2.0, 3.0, 4.0])
    needs = (True,) * len(xs)
    with np.errstate(all="ignore"):
        expected = prim.reverse(g, out, *xs, 0.0, needs)
        got = prim.graph(td, td.tensor(g), td.tensor(out), [td.tensor(x) for x in xs], 0.0,
                         needs)
    for r, e in zip(got, expected):
        np.testing.assert_allclose(r.numpy(), e, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# graph, first order: the reverse rule's numbers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_graph_gives_the_reverse_rules_numbers(case, dtype):
    prim, ins, out = _setup(case)
    g = np.random.default_rng(5).standard_normal(out.shape)
    if dtype == np.float32:
        ins, out, g = [x.astype(dtype) for x in ins], out.astype(dtype), g.astype(dtype)
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == np.float64 else {"rtol": 2e-4, "atol": 2e-5}
    for needs in [(True,) * len(ins)] + ([(True, False), (False, True)] if len(ins) == 2
                                          else []):
        expected = prim.reverse(g, out, *ins, case.p, needs)
        ts = [td.tensor(v, requires_grad=True) for v in [g, out, *ins]]
        if case.op in NO_GRAPH:
            with pytest.raises(NotImplementedError):
                prim.graph(td, ts[0], ts[1], ts[2:], case.p, needs)
            continue
        got = prim.graph(td, ts[0], ts[1], ts[2:], case.p, needs)
        assert len(got) == len(ins)
        for j, (r, e) in enumerate(zip(got, expected)):
            if not needs[j]:
                assert r is None
                continue
            assert isinstance(r, td.Tensor) and r.shape == ins[j].shape
            assert r.requires_grad  # recorded over g, out and the inputs
            np.testing.assert_allclose(r.detach().numpy(), e, **tol)


def test_graph_zero_adjoint_parts_and_singular_slogdet():
    # eigh / svd with some parts' adjoint zero (unused): the reverse rule's branches
    rng = np.random.default_rng(6)
    by_id = {c.id: c for c in CASES}
    for cid, keep in [("eigh", "w"), ("svd-4x3", "s"), ("svd-4x3", "u"), ("svd-3x4", "s"),
                      ("svd-3x4", "vh"), ("svd-3x3", "uvh")]:
        case = by_id[cid]
        prim, ins, out = _setup(case)
        g = rng.standard_normal(out.shape)
        if case.align == "eigh":
            g[..., ins[0].shape[-1]:] = 0.0
        else:
            for part, name in zip(LR.svd_parts(g, *ins[0].shape[-2:]), ("u", "s", "vh")):
                if name not in keep:
                    part[...] = 0.0
        expected = prim.reverse(g, out, *ins, case.p, (True,))[0]
        got = prim.graph(td, td.tensor(g), td.tensor(out), [td.tensor(ins[0])], case.p,
                         (True,))[0]
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)
    # slogdet of a singular matrix in a stack: the reverse rule's 0 (zero adjoint) and
    # non-finite (non-zero adjoint) values there, the derivative elsewhere
    prim = P.BY_OP[K.OP_LINALG_SLOGDET]
    a = np.array([[[1.0, 2.0], [2.0, 4.0]], [[2.0, 1.0], [0.0, 1.0]]])
    out = np.empty((2, 2))
    prim.forward(out, a, 0.0)
    for gl in (0.0, 1.0):
        g = np.array([[0.0, gl], [0.0, 2.0]])
        expected = prim.reverse(g, out, a, 0.0, (True,))[0]
        with np.errstate(all="ignore"):
            got = prim.graph(td, td.tensor(g), td.tensor(out), [td.tensor(a)], 0.0,
                             (True,))[0].numpy()
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(expected))
        np.testing.assert_allclose(got[np.isfinite(got)], expected[np.isfinite(expected)])


# ---------------------------------------------------------------------------------------------
# graph, second order: differentiated by backward() against differences of the reverse rule
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", [c for c in CASES if c.op not in NO_GRAPH],
                         ids=lambda c: c.id)
def test_graph_second_derivatives(case):
    prim, ins, out = _setup(case)
    rng = np.random.default_rng(7)
    g = rng.standard_normal(out.shape)
    ws = [rng.standard_normal(x.shape) for x in ins]
    needs = (True,) * len(ins)
    with td.tape():
        gt = td.tensor(g, requires_grad=True)
        xs = [td.tensor(x, requires_grad=True) for x in ins]
        result = prim.graph(td, gt, case.record(*xs), xs, case.p, needs)
        loss = sum((r * w).sum() for r, w in zip(result, ws))
        loss.backward()
        grads = [gt.grad.numpy()] + [x.grad.numpy() for x in xs]

    def weighted(g, *xs):
        if case.sym:  # the symmetric input the forward rule reads (its symmetrised gradient)
            xs = [_sym(x) for x in xs]
        o = _forward(prim, case, list(xs), out.shape)
        return sum(np.sum(r * w) for r, w in zip(prim.reverse(g, o, *xs, case.p, needs), ws))

    expected = numerical_grad(weighted, [g, *ins], eps=1e-6)
    for got, exp in zip(grads, expected):
        np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# no higher derivative: digamma's graph rule
# ---------------------------------------------------------------------------------------------
def test_digamma_graph_raises_not_implemented():
    prim = P.BY_OP[K.OP_DIGAMMA]
    x = td.tensor([0.5, 2.0], requires_grad=True)
    g = td.tensor([1.0, 1.0], requires_grad=True)
    with pytest.raises(NotImplementedError, match="digamma") as info:
        prim.graph(td, g, td.special.digamma(x), [x], 0.0, (True,))
    assert "higher derivative of digamma is not available" in str(info.value)
    assert "trigamma" in str(info.value)
    assert prim.graph(td, g, td.special.digamma(x), [x], 0.0, (False,)) == (None,)
    # gammaln's and betaln's graph rules record digamma: fine at second order
    y = P.BY_OP[K.OP_GAMMALN].graph(td, g, td.special.gammaln(x), [x], 0.0, (True,))[0]
    assert y.requires_grad
