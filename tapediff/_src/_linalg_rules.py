"""The rules of the linear-algebra primitives: plain NumPy functions the Python driver runs.

Each linear-algebra primitive is a ``PYTHON_RULE`` opcode (``_kernels``) whose row in
``_primitives.PRIMITIVES`` names a forward and a reverse rule from this module, with the
contract documented at ``Primitive.forward``:

* ``forward(out, *inputs, param)`` writes the record's value into ``out`` (a view of its arena
  range, shaped from the record's layout); it is run once while recording (on the inputs'
  values, into a fresh array, so that bad input raises before anything is recorded) and
  again by replay's forward sweep.  It depends on nothing but its arguments.
* ``reverse(g, out, *inputs, param, needs)`` returns one adjoint (or None) per input, given
  the output's adjoint ``g``; ``needs[j]`` says whether input j takes one.
* ``tangent(tout, out, inputs, tins, param)`` (forward mode) writes the output's tangent,
  laid out as ``out``, given the inputs' tangents ``tins``; it is the transpose of
  ``reverse`` (so the functions of a symmetric input take the symmetric part of its tangent).
* ``graph(T, g, out, inputs, param, needs)`` is ``reverse`` written with tensor operations
  (``T`` is the ``tapediff`` namespace, the arguments tensors), for a backward that records
  its own computation and so can be differentiated again.

Matrices are stacked along leading axes (``(..., m, n)``); every rule works on the whole
stack.  ``param`` holds the static flags of a record (``lower``, ``trans`` ...).  A record has
one output: the factorisations with several (eigh, svd, qr, slogdet) write them packed along
the last axis, each part flattened in C order, and ``tapediff.linalg`` takes the parts with
view records.  The reverse rule then receives the adjoint of the packed output, zero where a
part was not used.  Layouts (batch dims ``...`` omitted, k = min(m, n)):

========================  =================================================================
primitive                 value
========================  =================================================================
solve                     X (n, k) with A X = B
solve_triangular          X (n, k) with op(A) X = B, A triangular
cholesky                  L (n, n), lower (or U = L^T, upper)
slogdet                   [sign, logabsdet] or [sign, logabsdet, LU (n*n), pivots (n)]
eigh                      [w (n), V (n*n)]
svd                       [U (m*k), S (k), Vh (k*n)]
qr                        [Q (m*k), R (k*n)]
pinv                      A^+ (n, m)
========================  =================================================================

The reverse rules follow PyTorch's (``torch/csrc/autograd/FunctionsManual.cpp``):
functions of a symmetric input (cholesky, eigh) return its symmetrised gradient;
eigenvectors and singular vectors assume distinct eigenvalues / singular values (degenerate
ones give inf/nan, as PyTorch); an adjoint that is zero everywhere (a part of the output
not used) counts as PyTorch's undefined gradient.

float32 input is factorised in float64, as NumPy's ``np.linalg`` does, and cast back.  SciPy
is optional: when it is importable, triangular solves use its BLAS wrappers and slogdet
keeps its LU factors for the reverse rule (``slogdet_uses_lu``); without it (and for
matrices smaller than ``SMALL``, where one batched NumPy call beats a loop of LAPACK calls),
NumPy's general solver stands in (slower for large matrices, as accurate).  This module
imports only NumPy (SciPy lazily, if at all).
"""
from __future__ import annotations

from typing import Any

import numpy as np

LinAlgError = np.linalg.LinAlgError

# param bits of solve_triangular
LOWER, TRANS, UNIT = 1, 2, 4
LU_MIN = 32  # slogdet keeps its LU factors from this size on (smaller: a batched NumPy call)
SMALL = 16  # below this size, a batched NumPy call beats a loop of LAPACK calls per matrix

_scipy: Any = None


def scipy_linalg() -> Any:
    """``scipy.linalg``, or None when SciPy is not installed (imported on first use)."""
    global _scipy
    if _scipy is None:
        try:
            import scipy.linalg as sl
        except ImportError:
            sl = False
        _scipy = sl
    return _scipy or None


def mT(x: np.ndarray) -> np.ndarray:
    """The stack of transposed matrices."""
    return np.swapaxes(x, -1, -2)


def _f64(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == np.float64 else x.astype(np.float64)


def _diag(x: np.ndarray) -> np.ndarray:
    """The writable diagonal view of a stack of square matrices."""
    return np.einsum("...ii->...i", x)


def _batched(x: np.ndarray, core: int) -> np.ndarray:
    """``x`` as a 3-d (for core = 2) stack: (batch, *core dims)."""
    return x.reshape((-1,) + x.shape[x.ndim - core:])


# ---------------------------------------------------------------------------------------------
# triangular solves
# ---------------------------------------------------------------------------------------------
def tri_solve(a: np.ndarray, b: np.ndarray, lower: bool, trans: bool = False,
              unit: bool = False) -> np.ndarray:
    """X with op(a) X = b: ``a`` (..., n, n) triangular (only its lower or upper triangle is
    read, and not its diagonal with ``unit``), op the transpose with ``trans``; ``b``
    (..., n, k) with the same batch dims.  LinAlgError for a zero on the diagonal."""
    a, b = _f64(a), _f64(b)
    if not unit and a.size and (_diag(a) == 0).any():
        k = int(np.argmax((_diag(a) == 0).reshape(-1, a.shape[-1]).any(0)))
        raise LinAlgError(f"singular matrix: resolution failed at diagonal {k}")
    sl = scipy_linalg()
    if sl is None or b.size == 0 or a.shape[-1] < SMALL:
        t = np.tril(a) if lower else np.triu(a)
        if unit:
            t = t.copy()
            _diag(t)[...] = 1.0
        return np.linalg.solve(mT(t) if trans else t, b)
    # BLAS trsm on the C-ordered arrays read as Fortran ones, i.e. on the transposes:
    # X^T op(A)^T = B^T, a solve from the right with A^T (triangular the other way)
    trsm, = sl.blas.get_blas_funcs(("trsm",), (a,))
    a3, b3 = _batched(a, 2), _batched(b, 2)
    out = np.empty(b3.shape)
    for i in range(len(b3)):
        out[i] = trsm(1.0, a3[i].T, b3[i].T, side=1, lower=int(not lower), trans_a=int(trans),
                      diag=int(unit)).T
    return out.reshape(b.shape)


def _flags(p: float) -> tuple:
    f = int(p)
    return bool(f & LOWER), bool(f & TRANS), bool(f & UNIT)


# ---------------------------------------------------------------------------------------------
# solve: X = A^-1 B.  gB = A^-T G, gA = -gB X^T.
# ---------------------------------------------------------------------------------------------
def solve_forward(out: np.ndarray, a: np.ndarray, b: np.ndarray, p: float) -> None:
    out[...] = np.linalg.solve(a, b)


def solve_reverse(g: np.ndarray, out: np.ndarray, a: np.ndarray, b: np.ndarray, p: float,
                  needs: tuple) -> tuple:
    gb = np.linalg.solve(mT(a), g)
    ga = -np.matmul(gb, mT(out)) if needs[0] else None
    return ga, gb


# ---------------------------------------------------------------------------------------------
# solve_triangular: op(A) X = B.  gB = op(A)^-T G; gA = -gB X^T (transposed for op = T),
# projected on A's triangle (its strict triangle with a unit diagonal), as PyTorch.
# ---------------------------------------------------------------------------------------------
def solve_triangular_forward(out: np.ndarray, a: np.ndarray, b: np.ndarray, p: float) -> None:
    lower, trans, unit = _flags(p)
    out[...] = tri_solve(a, b, lower, trans, unit)


def solve_triangular_reverse(g: np.ndarray, out: np.ndarray, a: np.ndarray, b: np.ndarray,
                             p: float, needs: tuple) -> tuple:
    lower, trans, unit = _flags(p)
    gb = tri_solve(a, g, lower, not trans, unit)
    ga = None
    if needs[0]:
        x = _f64(out)
        ga = -np.matmul(x, mT(gb)) if trans else -np.matmul(gb, mT(x))
        ga = np.tril(ga, -int(unit)) if lower else np.triu(ga, int(unit))
    return ga, gb


# ---------------------------------------------------------------------------------------------
# cholesky: A = L L^T.  PyTorch's cholesky_backward (Murray 2016):
#   gA = L^-T Phi(L^T gL) L^-1,  Phi(X) = (tril(X) + tril(X, -1)^T) / 2,
# a symmetric matrix (the symmetrised gradient), by two triangular solves.
# ---------------------------------------------------------------------------------------------
def cholesky_forward(out: np.ndarray, a: np.ndarray, p: float) -> None:
    if p:
        try:
            out[...] = np.linalg.cholesky(a, upper=True)
        except TypeError:  # NumPy < 2: no upper=
            out[...] = mT(np.linalg.cholesky(mT(a)))
    else:
        out[...] = np.linalg.cholesky(a)


def cholesky_reverse(g: np.ndarray, out: np.ndarray, a: np.ndarray, p: float,
                     needs: tuple) -> tuple:
    lo, gl = _f64(out), _f64(g)
    if p:  # U = L^T
        lo, gl = mT(lo), mT(gl)
    sl = scipy_linalg()
    if sl is None or a.shape[-1] < SMALL:
        x = np.tril(np.matmul(mT(lo), gl))
        phi = 0.5 * (x + mT(np.tril(x, -1)))
        y = tri_solve(lo, phi, lower=True, trans=True)  # L^-T Phi
        return (mT(tri_solve(lo, mT(y), lower=True, trans=True)),)  # (L^-T (L^-T Phi)^T)^T
    # BLAS on Fortran views of the C-ordered arrays: L read as Fortran is L^T (upper), gL is
    # gL^T; Phi and the result are symmetric.  L^T gL by trmm (half a matmul's flops),
    # then two trsm.
    trmm, trsm = sl.blas.get_blas_funcs(("trmm", "trsm"), (lo,))
    lo3, gl3 = np.ascontiguousarray(_batched(lo, 2)), np.ascontiguousarray(_batched(gl, 2))
    ga = np.empty(lo3.shape)
    for i in range(len(lo3)):
        x = np.tril(trmm(1.0, lo3[i].T, gl3[i].T, side=1, lower=0, trans_a=1).T)  # L^T gL
        x += x.T
        _diag(x)[...] *= 0.5
        x *= 0.5  # Phi
        y = trsm(1.0, lo3[i].T, x.T, side=0, lower=0, trans_a=0, overwrite_b=1)  # L^-T Phi
        ga[i] = trsm(1.0, lo3[i].T, y, side=1, lower=0, trans_a=1, overwrite_b=1).T  # .. L^-1
    return (ga.reshape(a.shape),)


# ---------------------------------------------------------------------------------------------
# slogdet: [sign, log|det A|].  g_logabsdet A^-T (sign has no gradient).  With the LU
# factors kept (``slogdet_uses_lu``), A^-T comes from them through LAPACK's getri: the LU
# factorisation of A^T (the C-ordered A read as a Fortran array), whose inverse is A^-T.
# ---------------------------------------------------------------------------------------------
def slogdet_uses_lu(a: np.ndarray) -> bool:
    """Whether slogdet of ``a`` keeps its LU factors for the reverse rule (the layout's
    flag): float64 matrices of at least ``LU_MIN`` rows, with SciPy installed."""
    return a.dtype == np.float64 and a.shape[-1] >= LU_MIN and scipy_linalg() is not None


def slogdet_width(n: int, lu: bool) -> int:
    return 2 + (n * n + n if lu else 0)


def slogdet_forward(out: np.ndarray, a: np.ndarray, p: float) -> None:
    sl = scipy_linalg()
    if not p or sl is None:  # (SciPy gone since recording: no LU kept, the reverse inverts)
        sign, logdet = np.linalg.slogdet(a)
        out[..., 0] = sign
        out[..., 1] = logdet
        return
    n = a.shape[-1]
    getrf, = sl.lapack.get_lapack_funcs(("getrf",), (a,))
    o2, a3 = out.reshape(-1, out.shape[-1]), _batched(a, 2)
    steps = np.arange(n)
    for i in range(len(a3)):
        lu = o2[i, 2:2 + n * n].reshape(n, n)
        lu[...] = a3[i]
        f, piv, _ = getrf(lu.T, overwrite_a=True)  # in place: LU of A^T, Fortran order
        if not np.shares_memory(f, lu):
            lu[...] = f.T
        d = np.diagonal(f)
        with np.errstate(divide="ignore"):
            o2[i, 1] = np.sum(np.log(np.abs(d)))
        o2[i, 0] = np.prod(np.sign(d)) * (-1.0 if np.count_nonzero(piv != steps) % 2 else 1.0)
        o2[i, 2 + n * n:] = piv


def _inv_t(a: np.ndarray) -> np.ndarray:
    """A^-T of one matrix; for a singular one, adj(A)^T / 0 (signed infinities and NaN
    where the adjugate is 0: a non-finite gradient, as PyTorch's for a singular input)."""
    try:
        return np.linalg.inv(a).T
    except LinAlgError:
        u, s, vh = np.linalg.svd(a)
        alpha = np.linalg.det(u) * np.linalg.det(vh)
        d = np.array([np.prod(np.delete(s, i)) for i in range(len(s))])
        with np.errstate(divide="ignore", invalid="ignore"):
            return alpha * np.matmul(u * d, vh) / 0.0


def slogdet_reverse(g: np.ndarray, out: np.ndarray, a: np.ndarray, p: float,
                    needs: tuple) -> tuple:
    n = a.shape[-1]
    gl = _f64(g[..., 1]).reshape(-1)
    a3 = _f64(_batched(a, 2))
    ga = np.zeros(a3.shape)
    live = np.flatnonzero(gl)  # a zero adjoint gives 0 (det of a singular matrix: 0)
    sl = scipy_linalg()
    if not p or sl is None:
        try:  # one batched call; a singular matrix among them: one by one below
            ga[live] = gl[live, None, None] * mT(np.linalg.inv(a3[live]))
            return (ga.reshape(a.shape),)
        except LinAlgError:
            pass
    o2 = _f64(out.reshape(-1, out.shape[-1]))
    getri = None
    if p and sl is not None:
        getri, getri_lwork = sl.lapack.get_lapack_funcs(("getri", "getri_lwork"), (o2,))
        lwork = int(getri_lwork(n)[0])
    for i in live:
        inv_t = None
        if getri is not None and np.isfinite(o2[i, 1]):
            lu = o2[i, 2:2 + n * n].reshape(n, n).T  # LU of A^T, Fortran order
            inv_t, info = getri(lu, o2[i, 2 + n * n:].astype(np.int32), lwork=lwork)
            if info != 0:
                inv_t = None
        if inv_t is None:
            inv_t = _inv_t(a3[i])
        ga[i] = gl[i] * inv_t
    return (ga.reshape(a.shape),)


# ---------------------------------------------------------------------------------------------
# eigh: [w, V] with A = V diag(w) V^T.  PyTorch's linalg_eig_backward (Hermitian case):
#   gA = V (diag(gw) + skew(V^T gV) / E) V^T,  skew(X) = (X - X^T) / 2,  E_ij = w_j - w_i,
# symmetric; with gV = 0 (eigvalsh) gA = V diag(gw) V^T, defined for repeated eigenvalues too.
# ---------------------------------------------------------------------------------------------
def eigh_forward(out: np.ndarray, a: np.ndarray, p: float) -> None:
    n = a.shape[-1]
    w, v = np.linalg.eigh(a, UPLO="U" if p else "L")
    out[..., :n] = w
    out[..., n:] = v.reshape(v.shape[:-2] + (n * n,))


def eigh_reverse(g: np.ndarray, out: np.ndarray, a: np.ndarray, p: float,
                 needs: tuple) -> tuple:
    n = a.shape[-1]
    out, g = _f64(out), _f64(g)
    w, v = out[..., :n], out[..., n:].reshape(a.shape)
    gw, gv = g[..., :n], g[..., n:].reshape(a.shape)
    if not gv.any():
        return (np.matmul(v * gw[..., None, :], mT(v)),)
    x = np.matmul(mT(v), gv)
    x = 0.5 * (x - mT(x))
    e = w[..., None, :] - w[..., :, None]
    _diag(e)[...] = 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        x = x / e
    _diag(x)[...] = gw
    return (np.matmul(v, np.matmul(x, mT(v))),)


# ---------------------------------------------------------------------------------------------
# svd (reduced): [U, S, Vh] with A = U diag(S) Vh.  PyTorch's svd_backward (real case).
# ---------------------------------------------------------------------------------------------
def svd_parts(out: np.ndarray, m: int, n: int) -> tuple:
    """(U, S, Vh) views of a packed svd value (or its adjoint) of (..., m, n) matrices."""
    k = min(m, n)
    batch = out.shape[:-1]
    return (out[..., :m * k].reshape(batch + (m, k)), out[..., m * k:m * k + k],
            out[..., m * k + k:].reshape(batch + (k, n)))


def svd_forward(out: np.ndarray, a: np.ndarray, p: float) -> None:
    u, s, vh = np.linalg.svd(a, full_matrices=False, hermitian=bool(p))
    pu, ps, pv = svd_parts(out, *a.shape[-2:])
    pu[...], ps[...], pv[...] = u, s, vh


def svd_reverse(g: np.ndarray, out: np.ndarray, a: np.ndarray, p: float,
                needs: tuple) -> tuple:
    m, n = a.shape[-2:]
    u, s, vh = svd_parts(_f64(out), m, n)
    gu, gs, gvh = svd_parts(_f64(g), m, n)
    has_u, has_v = bool(gu.any()), bool(gvh.any())
    if not has_u and not has_v:  # singular values only
        return (np.matmul(u * gs[..., None, :], vh),)
    s2 = s * s
    e = s2[..., None, :] - s2[..., :, None]
    _diag(e)[...] = 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        r = 0.0
        if has_u:
            x = np.matmul(mT(u), gu)
            r = (x - mT(x)) * s[..., None, :]
        if has_v:
            y = np.matmul(vh, mT(gvh))
            r = r + s[..., :, None] * (y - mT(y))
        r = r / e
    _diag(r)[...] += gs
    if m > n and has_u:
        with np.errstate(divide="ignore", invalid="ignore"):
            gus = gu / s[..., None, :]
        ga = np.matmul(u, r) + gus - np.matmul(u, np.matmul(mT(u), gus))
        return (np.matmul(ga, vh),)
    if m < n and has_v:
        with np.errstate(divide="ignore", invalid="ignore"):
            sgv = gvh / s[..., :, None]
        ga = np.matmul(r, vh) + sgv - np.matmul(np.matmul(sgv, mT(vh)), vh)
        return (np.matmul(u, ga),)
    return (np.matmul(u, np.matmul(r, vh)),)


# ---------------------------------------------------------------------------------------------
# qr (reduced): [Q, R] with A = Q R.  PyTorch's linalg_qr_backward, both m >= n and m < n.
# ---------------------------------------------------------------------------------------------
def qr_parts(out: np.ndarray, m: int, n: int) -> tuple:
    """(Q, R) views of a packed qr value (or its adjoint) of (..., m, n) matrices."""
    k = min(m, n)
    batch = out.shape[:-1]
    return out[..., :m * k].reshape(batch + (m, k)), out[..., m * k:].reshape(batch + (k, n))


def qr_forward(out: np.ndarray, a: np.ndarray, p: float) -> None:
    q, r = np.linalg.qr(a, mode="reduced")
    pq, pr = qr_parts(out, *a.shape[-2:])
    pq[...], pr[...] = q, r


def qr_reverse(g: np.ndarray, out: np.ndarray, a: np.ndarray, p: float,
               needs: tuple) -> tuple:
    m, n = a.shape[-2:]
    q, r = qr_parts(_f64(out), m, n)
    gq, gr = qr_parts(_f64(g), m, n)
    x = np.matmul(gr, mT(r)) - np.matmul(mT(q), gq)
    if m >= n:
        t = np.triu(x)
        ga = np.matmul(q, t + mT(np.triu(x, 1))) + gq
        return (mT(tri_solve(r, mT(ga), lower=False)),)  # ga R^-T
    t = np.tril(mT(x) - x)  # tril(Y - Y^T) with Y = -X
    ga = mT(tri_solve(r[..., :m], mT(np.matmul(q, t)), lower=False))
    ga = np.concatenate([ga, np.zeros(ga.shape[:-1] + (n - m,))], axis=-1)
    return (ga + np.matmul(q, gr),)


# ---------------------------------------------------------------------------------------------
# pinv: A^+ (param: rcond).  PyTorch's pinv_backward, the derivative of the pseudo-inverse
# at constant rank (no singular-vector derivatives: repeated singular values are fine).
# ---------------------------------------------------------------------------------------------
def pinv_forward(out: np.ndarray, a: np.ndarray, p: float) -> None:
    out[...] = np.linalg.pinv(a, rcond=p)


def pinv_reverse(g: np.ndarray, out: np.ndarray, a: np.ndarray, p: float,
                 needs: tuple) -> tuple:
    a, pa, g = _f64(a), _f64(out), _f64(g)
    m, n = a.shape[-2:]
    pah, gh = mT(pa), mT(g)
    mm = np.matmul
    if m <= n:
        k = mm(gh, pa)
        kpah = mm(k, pah)
        return (-mT(mm(pa, k)) + kpah - mm(mm(a, pa), kpah) + mm(mm(pah, pa), gh - mm(k, a)),)
    k = mm(pa, gh)
    pahk = mm(pah, k)
    return (-mT(mm(k, pa)) + mm(mm(gh - mm(a, k), pa), pah) + pahk - mm(mm(pahk, pa), a),)


# ---------------------------------------------------------------------------------------------
# higher-order rules: tangent(tout, out, inputs, tins, param) writes the output's tangent
# (forward mode, NumPy); graph(T, g, out, inputs, param, needs) is the reverse rule in tensor
# operations (T: the tapediff namespace), which a backward can record and differentiate.
# Both follow PyTorch's linalg_*_jvp and *_backward; degenerate spectra give inf/nan as the
# reverse rules do.
# ---------------------------------------------------------------------------------------------
def _sym(x: np.ndarray) -> np.ndarray:
    return 0.5 * (x + mT(x))


def _value(t: Any) -> np.ndarray:
    """A tensor's values, read without recording anything (for the rules' branches)."""
    return t.detach().numpy()


def _eye(n: int, like: Any) -> np.ndarray:
    return np.eye(n, dtype=like.dtype)


def _tsolve(T: Any, a: Any, b: Any, lower: bool, trans: bool = False,
            unit: bool = False) -> Any:
    """``tri_solve`` on tensors (a recorded triangular solve)."""
    return T.linalg.solve_triangular(a, b, trans=int(trans), lower=lower, unit_diagonal=unit,
                                     check_finite=False)


# solve: dX = A^-1 (dB - dA X)
def solve_tangent(tout: np.ndarray, out: np.ndarray, inputs: list, tins: list,
                  p: float) -> None:
    a = inputs[0]
    da, db = (_f64(t) for t in tins)
    tout[...] = np.linalg.solve(a, db - np.matmul(da, _f64(out)))


def solve_graph(T: Any, g: Any, out: Any, inputs: list, p: float, needs: tuple) -> tuple:
    a = inputs[0]
    gb = T.linalg.solve(a.mT, g)
    ga = -T.matmul(gb, out.mT) if needs[0] else None
    return ga, gb if needs[1] else None


# solve_triangular: dX = op(A)^-1 (dB - op(dA) X), dA restricted to the triangle A is read from
def solve_triangular_tangent(tout: np.ndarray, out: np.ndarray, inputs: list, tins: list,
                             p: float) -> None:
    lower, trans, unit = _flags(p)
    da, db = (_f64(t) for t in tins)
    da = np.tril(da, -int(unit)) if lower else np.triu(da, int(unit))
    rhs = db - np.matmul(mT(da) if trans else da, _f64(out))
    tout[...] = tri_solve(inputs[0], rhs, lower, trans, unit)


def solve_triangular_graph(T: Any, g: Any, out: Any, inputs: list, p: float,
                           needs: tuple) -> tuple:
    lower, trans, unit = _flags(p)
    gb = _tsolve(T, inputs[0], g, lower, not trans, unit)
    ga = None
    if needs[0]:
        ga = -T.matmul(out, gb.mT) if trans else -T.matmul(gb, out.mT)
        ga = T.tril(ga, -int(unit)) if lower else T.triu(ga, int(unit))
    return ga, gb if needs[1] else None


# cholesky: dL = L Phi(L^-1 dA L^-T), Phi the lower triangle with the diagonal halved, along
# the symmetric part of dA
def cholesky_tangent(tout: np.ndarray, out: np.ndarray, inputs: list, tins: list,
                     p: float) -> None:
    lo = mT(_f64(out)) if p else _f64(out)
    y = tri_solve(lo, _sym(_f64(tins[0])), lower=True)  # L^-1 dA
    y = np.tril(tri_solve(lo, mT(y), lower=True))  # L^-1 dA L^-T (symmetric), lower half
    _diag(y)[...] *= 0.5
    dl = np.matmul(lo, y)
    tout[...] = mT(dl) if p else dl


def cholesky_graph(T: Any, g: Any, out: Any, inputs: list, p: float, needs: tuple) -> tuple:
    lo, gl = (out.mT, g.mT) if p else (out, g)
    x = T.tril(T.matmul(lo.mT, gl))
    phi = 0.5 * (x + T.tril(x, -1).mT)
    y = _tsolve(T, lo, phi, lower=True, trans=True)  # L^-T Phi
    return (_tsolve(T, lo, y.mT, lower=True, trans=True).mT,)


# slogdet: d logabsdet = tr(A^-1 dA); the sign and the LU factors kept have tangent 0
def slogdet_tangent(tout: np.ndarray, out: np.ndarray, inputs: list, tins: list,
                    p: float) -> None:
    a, da = _f64(inputs[0]), _f64(tins[0])
    tout[...] = 0.0
    try:
        tout[..., 1] = np.trace(np.linalg.solve(a, da), axis1=-2, axis2=-1)
        return
    except LinAlgError:  # a singular matrix among them: one by one, as the reverse rule
        pass
    a3, da3 = _batched(a, 2), _batched(da, 2)
    t = np.zeros(len(a3))
    for i in np.flatnonzero(da3.reshape(len(da3), -1).any(axis=1)):
        with np.errstate(invalid="ignore"):
            t[i] = np.sum(_inv_t(a3[i]) * da3[i])
    tout[..., 1] = t.reshape(a.shape[:-2])


def slogdet_graph(T: Any, g: Any, out: Any, inputs: list, p: float, needs: tuple) -> tuple:
    """g_logabsdet A^-T.  At an exactly singular matrix (sign 0), where logabsdet is not
    differentiable, the reverse rule's value (0 for a zero adjoint, else inf/nan), constant."""
    a = inputs[0]
    eye = _eye(a.shape[-1], a)
    sing = (_value(out)[..., 0] == 0)[..., None, None]
    a_ok = T.where(sing, eye, a) if sing.any() else a
    ga = g[..., 1][..., None, None] * T.linalg.inv(a_ok).mT
    if sing.any():
        const = slogdet_reverse(_value(g), _value(out), _value(a), p, needs)[0]
        ga = T.where(sing, const.astype(a.dtype), ga)
    return (ga,)


# eigh: dw = diag(V^T dA V), dV = V (F o V^T dA V) with F_ij = 1 / (w_j - w_i) off the
# diagonal, 0 on it, along the symmetric part of dA
def eigh_tangent(tout: np.ndarray, out: np.ndarray, inputs: list, tins: list,
                 p: float) -> None:
    shape = inputs[0].shape
    n = shape[-1]
    out = _f64(out)
    w, v = out[..., :n], out[..., n:].reshape(shape)
    x = np.matmul(mT(v), np.matmul(_sym(_f64(tins[0])), v))
    tout[..., :n] = _diag(x)
    e = w[..., None, :] - w[..., :, None]
    _diag(e)[...] = 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        x = x / e
    _diag(x)[...] = 0.0
    tout[..., n:] = np.matmul(v, x).reshape(shape[:-2] + (n * n,))


def eigh_graph(T: Any, g: Any, out: Any, inputs: list, p: float, needs: tuple) -> tuple:
    shape = inputs[0].shape
    n = shape[-1]
    eye = _eye(n, out)
    w, v = out[..., :n], out[..., n:].reshape(shape)
    gw, gv = g[..., :n], g[..., n:].reshape(shape)
    if not gv.requires_grad and not _value(gv).any():  # (see svd_graph)
        return (T.matmul(v * gw[..., None, :], v.mT),)
    x = T.matmul(v.mT, gv)
    x = 0.5 * (x - x.mT)
    e = w[..., None, :] - w[..., :, None] + eye  # w_j - w_i, 1 on the diagonal
    with np.errstate(divide="ignore", invalid="ignore"):
        x = x / e + gw[..., None, :] * eye
    return (T.matmul(v, T.matmul(x, v.mT)),)


# svd: dP = U^T dA V, dS = diag(dP), dU = U (sym(dP S) / E) (+ (I - U U^T) dA V S^-1 for
# m > n), dV = V (sym(S dP) / E) (+ (I - V V^T) dA^T U S^-1 for m < n), sym(X) = X + X^T,
# E_ij = S_j^2 - S_i^2 (PyTorch's linalg_svd_jvp)
def svd_tangent(tout: np.ndarray, out: np.ndarray, inputs: list, tins: list,
                p: float) -> None:
    m, n = inputs[0].shape[-2:]
    u, s, vh = svd_parts(_f64(out), m, n)
    tu, ts, tvh = svd_parts(tout, m, n)
    da, v = _f64(tins[0]), mT(vh)
    dp = np.matmul(mT(u), np.matmul(da, v))
    ts[...] = _diag(dp)
    s2 = s * s
    e = s2[..., None, :] - s2[..., :, None]
    _diag(e)[...] = 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        x = dp * s[..., None, :]
        ou = (x + mT(x)) / e
        y = s[..., :, None] * dp
        ov = (y + mT(y)) / e
        _diag(ou)[...] = 0.0
        _diag(ov)[...] = 0.0
        du, dv = np.matmul(u, ou), np.matmul(v, ov)
        if m > n:
            du += (np.matmul(da, v) - np.matmul(u, dp)) / s[..., None, :]
        if m < n:
            dv += (np.matmul(mT(da), u) - np.matmul(v, mT(dp))) / s[..., None, :]
    tu[...], tvh[...] = du, mT(dv)


def _svd_parts_t(x: Any, m: int, n: int) -> tuple:
    k = min(m, n)
    batch = x.shape[:-1]
    return (x[..., :m * k].reshape(batch + (m, k)), x[..., m * k:m * k + k],
            x[..., m * k + k:].reshape(batch + (k, n)))


def svd_graph(T: Any, g: Any, out: Any, inputs: list, p: float, needs: tuple) -> tuple:
    m, n = inputs[0].shape[-2:]
    u, s, vh = _svd_parts_t(out, m, n)
    gu, gs, gvh = _svd_parts_t(g, m, n)
    # a part is skipped only when no gradient reaches it: a zero-valued adjoint that is
    # recorded may still have a derivative (at repeated singular values the full formula
    # gives nan there, as PyTorch's)
    has_u = gu.requires_grad or bool(_value(gu).any())
    has_v = gvh.requires_grad or bool(_value(gvh).any())
    if not has_u and not has_v:
        return (T.matmul(u * gs[..., None, :], vh),)
    eye = _eye(min(m, n), out)
    mm = T.matmul
    s2 = s * s
    e = s2[..., None, :] - s2[..., :, None] + eye
    with np.errstate(divide="ignore", invalid="ignore"):
        r = 0.0
        if has_u:
            x = mm(u.mT, gu)
            r = (x - x.mT) * s[..., None, :]
        if has_v:
            y = mm(vh, gvh.mT)
            r = r + s[..., :, None] * (y - y.mT)
        r = r / e + gs[..., None, :] * eye
        if m > n and has_u:
            gus = gu / s[..., None, :]
            return (mm(mm(u, r) + gus - mm(u, mm(u.mT, gus)), vh),)
        if m < n and has_v:
            sgv = gvh / s[..., :, None]
            return (mm(u, mm(r, vh) + sgv - mm(mm(sgv, vh.mT), vh)),)
    return (mm(u, mm(r, vh)),)


# qr (m >= n): C = Q^T dA R^-1, Omega = tril(C, -1) - tril(C, -1)^T (Q^T dQ), dR = (C - Omega)
# R, dQ = dA R^-1 - Q (C - Omega); m < n: that of the leading square block A1 = Q R1, then
# dR2 = dQ^T A2 + Q^T dA2
def _qr_square_tangent(q: np.ndarray, r: np.ndarray, da: np.ndarray) -> tuple:
    dar = mT(tri_solve(r, mT(da), lower=False, trans=True))  # dA R^-1
    c = np.matmul(mT(q), dar)
    lo = np.tril(c, -1)
    c = c - lo + mT(lo)  # C - Omega, upper triangular
    return dar - np.matmul(q, c), np.matmul(c, r)


def qr_tangent(tout: np.ndarray, out: np.ndarray, inputs: list, tins: list, p: float) -> None:
    a = inputs[0]
    m, n = a.shape[-2:]
    q, r = qr_parts(_f64(out), m, n)
    tq, tr = qr_parts(tout, m, n)
    da = _f64(tins[0])
    if m >= n:
        tq[...], tr[...] = _qr_square_tangent(q, r, da)
        return
    dq, dr1 = _qr_square_tangent(q, r[..., :m], da[..., :m])
    tq[...], tr[..., :m] = dq, dr1
    tr[..., m:] = np.matmul(mT(dq), _f64(a[..., m:])) + np.matmul(mT(q), da[..., m:])


def qr_graph(T: Any, g: Any, out: Any, inputs: list, p: float, needs: tuple) -> tuple:
    m, n = inputs[0].shape[-2:]
    k = min(m, n)
    batch = out.shape[:-1]
    q, r = out[..., :m * k].reshape(batch + (m, k)), out[..., m * k:].reshape(batch + (k, n))
    gq, gr = g[..., :m * k].reshape(batch + (m, k)), g[..., m * k:].reshape(batch + (k, n))
    x = T.matmul(gr, r.mT) - T.matmul(q.mT, gq)
    if m >= n:
        ga = T.matmul(q, T.triu(x) + T.triu(x, 1).mT) + gq
        return (_tsolve(T, r, ga.mT, lower=False).mT,)  # ga R^-T
    t = T.tril(x.mT - x)
    ga = _tsolve(T, r[..., :m], T.matmul(q, t).mT, lower=False).mT
    ga = T.concatenate([ga, np.zeros(batch + (m, n - m), ga.dtype)], axis=-1)
    return (ga + T.matmul(q, gr),)


# pinv (X = A^+, at constant rank): dX = -X dA X + X X^T dA^T (I - A X) + (I - X A) dA^T X^T X
def pinv_tangent(tout: np.ndarray, out: np.ndarray, inputs: list, tins: list,
                 p: float) -> None:
    a, x, da = _f64(inputs[0]), _f64(out), _f64(tins[0])
    mm, dah = np.matmul, mT(da)
    left = mm(x, mT(x))  # X X^T (n, n)
    right = mm(mT(x), x)  # X^T X (m, m)
    tout[...] = (-mm(x, mm(da, x)) + mm(left, dah - mm(mm(dah, a), x))
                 + mm(dah - mm(x, mm(a, dah)), right))


def pinv_graph(T: Any, g: Any, out: Any, inputs: list, p: float, needs: tuple) -> tuple:
    a, pa = inputs[0], out
    m, n = a.shape[-2:]
    pah, gh = pa.mT, g.mT
    mm = T.matmul
    if m <= n:
        k = mm(gh, pa)
        kpah = mm(k, pah)
        return (-mm(pa, k).mT + kpah - mm(mm(a, pa), kpah) + mm(mm(pah, pa), gh - mm(k, a)),)
    k = mm(pa, gh)
    pahk = mm(pah, k)
    return (-mm(k, pa).mT + mm(mm(gh - mm(a, k), pa), pah) + pahk - mm(mm(pahk, pa), a),)
