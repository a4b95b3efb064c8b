"""Linear algebra on tensors: ``td.linalg``, and ``np.linalg`` called on tensors (NEP 18).

Every function takes stacks of matrices (leading batch axes), float32 or float64, and
returns what its NumPy (or SciPy) namesake returns, as tensors; a call on tensors that do not
require grad (or under ``td.no_grad()``) is NumPy's own call.

>>> import numpy as np, tapediff as td
>>> a = td.tensor([[4.0, 1.0], [1.0, 3.0]], requires_grad=True)
>>> np.linalg.slogdet(a).logabsdet.backward()
>>> a.grad                                      # inv(a).T
tensor([[ 0.2727, -0.0909],
        [-0.0909,  0.3636]])

Eight primitives carry the gradients (rules and layouts in ``tapediff._src._linalg_rules``):
``solve``, ``solve_triangular``, ``cholesky``, ``slogdet``, ``eigh``, ``svd``, ``qr`` and
``pinv``.  Everything else is composed: ``inv`` is ``solve(a, I)``, ``det`` is
``sign * exp(logabsdet)``, ``eigvalsh``/``svdvals`` take the values of ``eigh``/``svd``,
``lstsq`` is ``pinv(a) @ b``, ``cho_solve`` two triangular solves, ``matrix_power`` and
``multi_dot`` matrix products, the 2-, -2- and nuclear norms and ``cond`` reductions of
singular values.

Conventions (PyTorch's wherever the maths leaves a choice):

* Functions of a symmetric input (``cholesky``, ``eigh``, ``eigvalsh``) read one triangle,
  as NumPy's do, but return PyTorch's symmetrised gradient, not the gradient of the triangle
  LAPACK reads.  ``solve_triangular`` gives a gradient on ``a``'s triangle only.
* Signs and orderings of the factors of ``eigh``, ``svd`` and ``qr`` are NumPy's; gradients of
  losses invariant to those signs agree with PyTorch's.  Eigenvector and singular-vector
  gradients assume distinct eigenvalues / singular values: repeated ones give inf/nan, as
  PyTorch (eigenvalues and singular values alone are fine).  A factor whose gradient is zero
  everywhere counts as unused, as PyTorch's undefined gradient.
* ``svd`` differentiates the reduced decomposition: ``full_matrices=True`` (NumPy's default)
  on a non-square matrix raises ``ValueError`` when recording; ``qr`` likewise for
  ``mode='complete'`` with more rows than columns.
* ``slogdet``'s sign has no gradient (zero).  ``det`` is ``sign * exp(logabsdet)``: its
  gradient at an exactly singular matrix is 0, as PyTorch's first-order backward; the
  gradient of ``logabsdet`` there is not finite (inf/nan), as PyTorch's.
* ``pinv`` and ``lstsq`` differentiate at constant rank (PyTorch's ``pinv_backward``);
  ``lstsq`` returns NumPy's 4-tuple, its rank an int (a replay guard watches it).
* Bad input (a singular matrix for ``solve``/``inv``, a matrix that is not positive
  definite, not square) raises NumPy's ``LinAlgError`` (SciPy's errors for the SciPy
  functions) and records nothing.
"""
from __future__ import annotations

import math
import operator
from collections import namedtuple
from typing import Any, Sequence

import numpy as np

from ._src import _kernels as K
from ._src import _linalg_rules as LR
from ._src import _ops as O
from ._src import _primitives as P
from ._src._guards import guard
from ._src._record import constant, emit_python
from ._src._tensor import Tensor

try:  # NumPy 2's result types
    from numpy.linalg._linalg import EighResult, QRResult, SlogdetResult, SVDResult
except ImportError:  # pragma: no cover - NumPy 1
    EighResult = namedtuple("EighResult", "eigenvalues eigenvectors")
    QRResult = namedtuple("QRResult", "Q R")
    SlogdetResult = namedtuple("SlogdetResult", "sign logabsdet")
    SVDResult = namedtuple("SVDResult", "U S Vh")

LinAlgError = np.linalg.LinAlgError

__all__ = [
    "LinAlgError", "solve", "inv", "det", "slogdet", "cholesky", "eigh", "eigvalsh", "svd",
    "svdvals", "pinv", "qr", "lstsq", "matrix_power", "multi_dot", "norm", "matrix_norm",
    "vector_norm", "cond", "solve_triangular", "cho_factor", "cho_solve", "matrix_transpose",
    "matmul", "outer", "tensordot", "diagonal", "trace", "vecdot",
]

_NOVALUE = object()
norm = O.norm
matmul = O.matmul
tensordot = O.tensordot


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _tensor(x: Any) -> Tensor:
    """``x`` as a floating tensor (ints become float64 constants, as in np.linalg)."""
    return O._float(O.as_tensor(x))


def _stacked(a: np.ndarray) -> None:
    if a.ndim < 2:
        raise LinAlgError(f"{a.ndim}-dimensional array given. Array must be at least "
                          "two-dimensional")


def _square(a: np.ndarray) -> int:
    _stacked(a)
    if a.shape[-1] != a.shape[-2]:
        raise LinAlgError("Last 2 dimensions of the array must be square")
    return a.shape[-1]


def _record(op: int, xs: Sequence[Tensor], shape: tuple, dtype: Any, p: float = 0.0,
            arrays: Sequence[np.ndarray] | None = None) -> Tensor:
    """Compute the value with the primitive's forward rule (bad input raises here, before
    anything is recorded), then record it over ``xs``."""
    value = np.empty(shape, dtype)
    P.BY_OP[op].forward(value, *(arrays or [O.array_of(x) for x in xs]), p)
    return emit_python(op, xs, value, p)


def _part(packed: Tensor, start: int, stop: int, shape: tuple) -> Tensor:
    """A part of a packed value (``_linalg_rules``' layouts), as a view record."""
    return O.reshape(O.getitem(packed, (Ellipsis, slice(start, stop))), shape)


def _consts(r: Any) -> Any:
    return type(r)(*(constant(np.asarray(v)) for v in r))


# ---------------------------------------------------------------------------------------------
# solve and triangular solves
# ---------------------------------------------------------------------------------------------
def _solve_like(op: int, a: Tensor, b: Tensor, p: float, eager: Any, dtype: Any) -> Tensor:
    """Record X with op(a) X = b: NumPy 2's shapes (``b`` 1-d is a vector, otherwise a stack
    of (n, k) matrices; batch dims broadcast).  ``eager(a, b)`` raises NumPy's (or SciPy's)
    error on shapes that do not fit."""
    av, bv = O.array_of(a), O.array_of(b)
    n = _square(av)
    vector = bv.ndim == 1
    bm = bv.reshape(-1, 1) if vector else bv
    try:
        batch = np.broadcast_shapes(av.shape[:-2], bm.shape[:-2])
        fits = bm.ndim >= 2 and bm.shape[-2] == n
    except ValueError:
        fits = False
    if not fits:
        eager(av, bv)  # raises the library's own error
        raise ValueError(f"shapes of a {av.shape} and b {bv.shape} are incompatible")
    a_shape, b_shape = batch + (n, n), batch + bm.shape[-2:]
    value = np.empty(b_shape, dtype)
    P.BY_OP[op].forward(value, np.broadcast_to(av, a_shape), np.broadcast_to(bm, b_shape), p)
    a3 = a if av.shape == a_shape else O.broadcast_to(a, a_shape)
    b2 = O.reshape(b, bm.shape) if vector else b
    b3 = b2 if bm.shape == b_shape else O.broadcast_to(b2, b_shape)
    out = emit_python(op, (a3, b3), value, p)
    return O.reshape(out, batch + (n,)) if vector else out


def solve(a: Any, b: Any) -> Tensor:
    """The solution x of ``a @ x = b``, as ``np.linalg.solve`` (NumPy 2 shapes: ``b`` 1-d is
    a vector, otherwise a stack of matrices; batch dims broadcast).  A singular ``a`` raises
    ``LinAlgError``.  Gradients: ``b`` gets ``solve(a.mT, g)``, ``a`` minus that times x^T.

    >>> import tapediff as td
    >>> a = td.tensor([[2.0, 0.0], [0.0, 4.0]], requires_grad=True)
    >>> td.linalg.solve(a, td.tensor([2.0, 2.0]))
    tensor([1.0000, 0.5000], grad_fn=<LinalgSolveExBackward0>)
    """
    a, b = _tensor(a), _tensor(b)
    if not O._recording(a, b):
        return constant(np.linalg.solve(O.array_of(a), O.array_of(b)))
    dtype = np.result_type(O.array_of(a), O.array_of(b))
    return _solve_like(K.OP_LINALG_SOLVE, a, b, 0.0, np.linalg.solve, dtype)


def inv(a: Any) -> Tensor:
    """The inverse of (each matrix of) ``a``, as ``np.linalg.inv``; recorded as
    ``solve(a, I)``.  A singular matrix raises ``LinAlgError``."""
    a = _tensor(a)
    av = O.array_of(a)
    if not O._recording(a):
        return constant(np.linalg.inv(av))
    n = _square(av)
    return solve(a, constant(np.eye(n, dtype=av.dtype)))


def _trans_code(trans: Any) -> bool:
    if trans in (0, "N", "n"):
        return False
    if trans in (1, 2, "T", "C", "t", "c"):
        return True
    raise ValueError(f"Incorrect trans value {trans!r}; expected 0, 1, 2, 'N', 'T' or 'C'")


def _check_finite(*arrays: np.ndarray) -> None:
    for v in arrays:
        if not np.isfinite(v).all():
            raise ValueError("array must not contain infs or NaNs")


def solve_triangular(a: Any, b: Any, trans: Any = 0, lower: bool = False,
                     unit_diagonal: bool = False, overwrite_b: bool = False,
                     check_finite: bool = True) -> Tensor:
    """The solution x of ``a @ x = b`` (``a.T @ x = b`` with ``trans=1``/``'T'``) for a
    triangular ``a``, as ``scipy.linalg.solve_triangular`` (no SciPy needed): only the
    ``lower`` (default: upper) triangle of ``a`` is read, and not its diagonal with
    ``unit_diagonal``; ``a``'s gradient lies on that triangle.  Stacks of matrices follow
    ``solve``'s shapes.  A zero on the diagonal raises ``LinAlgError``.

    >>> import tapediff as td
    >>> l = td.tensor([[2.0, 0.0], [1.0, 1.0]], requires_grad=True)
    >>> td.linalg.solve_triangular(l, td.tensor([2.0, 3.0]), lower=True)
    tensor([1., 2.], grad_fn=<LinalgSolveTriangularBackward0>)
    """
    t = _trans_code(trans)
    a, b = _tensor(a), _tensor(b)
    av, bv = O.array_of(a), O.array_of(b)
    if check_finite:
        _check_finite(av, bv)
    if av.ndim < 2 or av.shape[-1] != av.shape[-2]:
        raise ValueError("expected square matrix")
    p = float(LR.LOWER * bool(lower) | LR.TRANS * t | LR.UNIT * bool(unit_diagonal))
    dtype = np.result_type(av, bv)

    def eager(av: np.ndarray, bv: np.ndarray) -> np.ndarray:
        vector = bv.ndim == 1
        bm = bv.reshape(-1, 1) if vector else bv
        try:
            batch = np.broadcast_shapes(av.shape[:-2], bm.shape[:-2])
        except ValueError:
            batch = None
        if batch is None or bm.ndim < 2 or bm.shape[-2] != av.shape[-1]:
            raise ValueError(f"shapes of a {av.shape} and b {bv.shape} are incompatible")
        n = av.shape[-1]
        x = LR.tri_solve(np.broadcast_to(av, batch + (n, n)),
                         np.broadcast_to(bm, batch + bm.shape[-2:]), bool(lower), t,
                         bool(unit_diagonal)).astype(dtype)
        return x.reshape(batch + (n,)) if vector else x

    if not O._recording(a, b):
        return constant(eager(av, bv))
    return _solve_like(K.OP_LINALG_SOLVE_TRIANGULAR, a, b, p, eager, dtype)


def cho_factor(a: Any, lower: bool = False, overwrite_a: bool = False,
               check_finite: bool = True) -> tuple:
    """``(c, lower)``: the Cholesky factor of ``a`` (upper by default, as
    ``scipy.linalg.cho_factor``) for ``cho_solve``.  Unlike SciPy's, the other triangle of
    ``c`` holds zeros."""
    a = _tensor(a)
    if check_finite:
        _check_finite(O.array_of(a))
    return cholesky(a, upper=not lower), bool(lower)


def cho_solve(c_and_lower: tuple, b: Any, overwrite_b: bool = False,
              check_finite: bool = True) -> Tensor:
    """The solution x of ``A @ x = b`` given ``(c, lower)``, the Cholesky factor of ``A``
    (``cho_factor``, or ``cholesky(A)`` with ``lower=True``), as ``scipy.linalg.cho_solve``:
    two triangular solves.  Only ``c``'s ``lower`` (else upper) triangle is read.

    >>> import tapediff as td
    >>> k = td.tensor([[4.0, 2.0], [2.0, 3.0]], requires_grad=True)
    >>> x = td.linalg.cho_solve((td.linalg.cholesky(k), True), td.tensor([6.0, 5.0]))
    >>> x.detach().numpy().round(12)
    array([1., 1.])
    """
    c, lower = c_and_lower
    if lower:
        y = solve_triangular(c, b, lower=True, check_finite=check_finite)
        return solve_triangular(c, y, trans=1, lower=True, check_finite=False)
    y = solve_triangular(c, b, trans=1, lower=False, check_finite=check_finite)
    return solve_triangular(c, y, lower=False, check_finite=False)


# ---------------------------------------------------------------------------------------------
# determinants
# ---------------------------------------------------------------------------------------------
def slogdet(a: Any) -> SlogdetResult:
    """``(sign, logabsdet)`` of (each matrix of) ``a``, as ``np.linalg.slogdet``.  The
    gradient of ``logabsdet`` is ``inv(a).T`` (from the LU factors of the forward call, kept
    with SciPy installed); ``sign`` has none."""
    a = _tensor(a)
    av = O.array_of(a)
    if not O._recording(a):
        return _consts(np.linalg.slogdet(av))
    n = _square(av)
    lu = LR.slogdet_uses_lu(av)
    out = _record(K.OP_LINALG_SLOGDET, (a,), av.shape[:-2] + (LR.slogdet_width(n, lu),),
                  av.dtype, float(lu))
    return SlogdetResult(O.getitem(out, (Ellipsis, 0)), O.getitem(out, (Ellipsis, 1)))


def det(a: Any) -> Tensor:
    """The determinant of (each matrix of) ``a``, as ``np.linalg.det``; recorded as
    ``sign * exp(logabsdet)`` of ``slogdet`` (so its gradient at a singular matrix is 0, as
    PyTorch's first-order backward gives)."""
    a = _tensor(a)
    if not O._recording(a):
        return constant(np.asarray(np.linalg.det(O.array_of(a))))
    sign, logabsdet = slogdet(a)
    return sign * logabsdet.exp()


# ---------------------------------------------------------------------------------------------
# factorisations
# ---------------------------------------------------------------------------------------------
def cholesky(a: Any, /, *, upper: bool = False) -> Tensor:
    """The lower Cholesky factor L of a symmetric positive-definite ``a`` (``a = L @ L.T``),
    or with ``upper=True`` the upper one U (``a = U.T @ U``), as ``np.linalg.cholesky``:
    only that triangle of ``a`` is read.  The gradient is PyTorch's, symmetric.  A matrix
    that is not positive definite raises ``LinAlgError``."""
    a = _tensor(a)
    av = O.array_of(a)
    if not O._recording(a):
        r = np.linalg.cholesky(av, upper=True) if upper else np.linalg.cholesky(av)
        return constant(r)
    _square(av)
    return _record(K.OP_LINALG_CHOLESKY, (a,), av.shape, av.dtype, float(bool(upper)))


def eigh(a: Any, UPLO: str = "L") -> EighResult:
    """``(eigenvalues, eigenvectors)`` of a symmetric ``a`` (reading its ``UPLO`` triangle),
    ascending, as ``np.linalg.eigh``.  The gradient is PyTorch's, symmetric; that of the
    eigenvectors assumes distinct eigenvalues (repeated ones give inf/nan, as PyTorch) and
    losses that do not depend on their signs."""
    a = _tensor(a)
    av = O.array_of(a)
    if not O._recording(a):
        return _consts(np.linalg.eigh(av, UPLO))
    if UPLO not in ("L", "U"):
        raise ValueError("UPLO argument must be 'L' or 'U'")
    n = _square(av)
    batch = av.shape[:-2]
    out = _record(K.OP_LINALG_EIGH, (a,), batch + (n + n * n,), av.dtype, float(UPLO == "U"))
    return EighResult(_part(out, 0, n, batch + (n,)), _part(out, n, n + n * n, batch + (n, n)))


def eigvalsh(a: Any, UPLO: str = "L") -> Tensor:
    """The eigenvalues of a symmetric ``a``, ascending, as ``np.linalg.eigvalsh``; their
    gradient ``V diag(g) V^T`` is defined for repeated eigenvalues too."""
    a = _tensor(a)
    if not O._recording(a):
        return constant(np.linalg.eigvalsh(O.array_of(a), UPLO))
    return eigh(a, UPLO)[0]


def svd(a: Any, full_matrices: bool = True, compute_uv: bool = True,
        hermitian: bool = False) -> Any:
    """``(U, S, Vh)`` with ``a = U @ diag(S) @ Vh``, or the singular values ``S`` alone with
    ``compute_uv=False``, as ``np.linalg.svd``.  Gradients follow PyTorch's ``svd_backward``
    for the reduced decomposition: pass ``full_matrices=False`` for a non-square ``a``
    (the extra columns of the full one are not unique, so have no gradient).  Singular-vector
    gradients assume distinct singular values and sign-invariant losses."""
    a = _tensor(a)
    av = O.array_of(a)
    if not O._recording(a):
        r = np.linalg.svd(av, full_matrices, compute_uv, hermitian)
        return _consts(r) if compute_uv else constant(r)
    _stacked(av)
    m, n = av.shape[-2:]
    k = min(m, n)
    if compute_uv and full_matrices and m != n:
        raise ValueError(
            f"svd(full_matrices=True) of a non-square {m}x{n} matrix has no gradient: the "
            "extra singular vectors are not unique. Pass full_matrices=False (the reduced "
            "SVD), or compute_uv=False for the singular values alone")
    batch = av.shape[:-2]
    out = _record(K.OP_LINALG_SVD, (a,), batch + (m * k + k + k * n,), av.dtype,
                  float(bool(hermitian)))
    s = _part(out, m * k, m * k + k, batch + (k,))
    if not compute_uv:
        return s
    return SVDResult(_part(out, 0, m * k, batch + (m, k)), s,
                     _part(out, m * k + k, m * k + k + k * n, batch + (k, n)))


def svdvals(x: Any, /) -> Tensor:
    """The singular values of ``x``, descending, as ``np.linalg.svdvals``."""
    return svd(x, compute_uv=False)


def qr(a: Any, mode: str = "reduced") -> Any:
    """``(Q, R)`` with ``a = Q @ R``, as ``np.linalg.qr`` (``mode='r'``: R alone).  The
    gradient is PyTorch's for the reduced decomposition; ``mode='complete'`` with more rows
    than columns and ``mode='raw'`` raise ``ValueError`` when recording."""
    a = _tensor(a)
    av = O.array_of(a)
    if not O._recording(a):
        r = np.linalg.qr(av, mode)
        return constant(r) if isinstance(r, np.ndarray) else _consts(r)
    _stacked(av)
    m, n = av.shape[-2:]
    if mode not in ("reduced", "complete", "r"):
        raise ValueError(f"qr(mode={mode!r}) on tensors that require grad is not supported; "
                         "use mode='reduced'")
    if mode == "complete" and m > n:
        raise ValueError("The QR decomposition is not differentiable when mode='complete' "
                         "and nrows > ncols; use mode='reduced'")
    k = min(m, n)
    batch = av.shape[:-2]
    out = _record(K.OP_LINALG_QR, (a,), batch + (m * k + k * n,), av.dtype)
    r = _part(out, m * k, m * k + k * n, batch + (k, n))
    return r if mode == "r" else QRResult(_part(out, 0, m * k, batch + (m, k)), r)


# ---------------------------------------------------------------------------------------------
# pseudo-inverse and least squares
# ---------------------------------------------------------------------------------------------
def pinv(a: Any, rcond: Any = None, hermitian: bool = False, *, rtol: Any = _NOVALUE) -> Tensor:
    """The Moore-Penrose pseudo-inverse, as ``np.linalg.pinv`` (singular values at most
    ``rcond`` times the largest count as zero).  The gradient is PyTorch's, at constant rank.
    With ``hermitian=True`` the value is computed as for a general matrix (equal for a
    symmetric ``a``, up to rounding)."""
    a = _tensor(a)
    av = O.array_of(a)
    _stacked(av)
    if rcond is None:
        if rtol is _NOVALUE:
            rcond = 1e-15
        elif rtol is None:
            rcond = max(av.shape[-2:]) * np.finfo(av.dtype).eps
        else:
            rcond = rtol
    elif rtol is not _NOVALUE:
        raise ValueError("`rtol` and `rcond` can't be both set.")
    if not O._recording(a):
        return constant(np.linalg.pinv(av, rcond, hermitian))
    if np.ndim(rcond):
        raise TypeError("pinv of a tensor that requires grad takes a number rcond, not an array")
    m, n = av.shape[-2:]
    return _record(K.OP_LINALG_PINV, (a,), av.shape[:-2] + (n, m), av.dtype, float(rcond))


def lstsq(a: Any, b: Any, rcond: Any = None) -> tuple:
    """``(x, residuals, rank, s)``: the least-squares solution of ``a @ x = b`` of least
    norm, as ``np.linalg.lstsq`` (``residuals`` the squared residual norms when ``a`` has
    full column rank and more rows than columns, else empty; ``rank`` an int; ``s`` the
    singular values of ``a``).  Recorded as ``pinv(a, rcond) @ b``: the gradient is
    PyTorch's, valid at constant rank (full rank)."""
    a, b = _tensor(a), _tensor(b)
    av, bv = O.array_of(a), O.array_of(b)
    if not O._recording(a, b):
        x, res, rank, s = np.linalg.lstsq(av, bv, rcond)
        return constant(x), constant(res), int(rank), constant(s)
    if av.ndim != 2 or bv.ndim not in (1, 2) or bv.shape[0] != av.shape[0]:
        np.linalg.lstsq(av, bv, rcond)  # raises NumPy's error
        raise LinAlgError("Incompatible dimensions")
    m, n = av.shape
    if rcond is None:
        rcond = np.finfo(np.float64).eps * max(m, n)  # NumPy solves in float64
    x = O.matmul(pinv(a, rcond), b)
    s = svdvals(a)
    sv = O.array_of(s)
    big = sv > rcond * sv.max() if sv.size else sv > 0
    rank = int(np.count_nonzero(big))
    tape = O.guarding_tape(s)
    if tape is not None:  # the rank decides what is returned: replay checks it holds
        cut = O.max_(s) * float(rcond)
        guard(tape, O.record_compare(s, cut, K.CMP_GT, big.astype(sv.dtype), sv.dtype),
              "lstsq rank")
    dtype = np.result_type(av, bv)
    if rank == n and m > n:
        r = O.matmul(a, x) - b
        res = O.sum_(r * r, axis=0)
        if bv.ndim == 1:
            res = O.reshape(res, (1,))
    else:
        res = constant(np.array([], dtype))
    return x, res, rank, s


# ---------------------------------------------------------------------------------------------
# products and powers
# ---------------------------------------------------------------------------------------------
def matrix_power(a: Any, n: int) -> Tensor:
    """``a`` raised to the integer power ``n`` (negative: of ``inv(a)``; 0: the identity, a
    constant), by repeated squaring as ``np.linalg.matrix_power``."""
    a = O.as_tensor(a)
    av = O.array_of(a)
    if not O._recording(a):
        return constant(np.linalg.matrix_power(av, n))
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError("exponent must be an integer") from None
    m = _square(av)
    if n == 0:
        return constant(np.broadcast_to(np.eye(m, dtype=av.dtype), av.shape).copy())
    if n < 0:
        a, n = inv(a), -n
    if n == 1:
        return O.record_view(a, lambda v: v[...], view=False)  # a copy
    if n == 2:
        return O.matmul(a, a)
    if n == 3:
        return O.matmul(O.matmul(a, a), a)
    z = result = None
    while n > 0:
        z = a if z is None else O.matmul(z, z)
        n, bit = divmod(n, 2)
        if bit:
            result = z if result is None else O.matmul(result, z)
    return result


def multi_dot(arrays: Sequence[Any], *, out: Any = None) -> Tensor:
    """The product of two or more matrices in the cheapest order, as
    ``np.linalg.multi_dot`` (the first may be a row vector, the last a column vector)."""
    xs = [O.as_tensor(x) for x in arrays]
    if out is not None and O._recording(*xs):
        raise TypeError("multi_dot(out=...) cannot hold a gradient; assign the result instead")
    if not O._recording(*xs):
        return constant(np.asarray(np.linalg.multi_dot([O.array_of(x) for x in xs], out=out)))
    if len(xs) < 2:
        raise ValueError("Expecting at least two arrays.")
    if len(xs) == 2:
        return O.dot(xs[0], xs[1])
    first, last = xs[0].ndim, xs[-1].ndim
    if first == 1:
        xs[0] = O.reshape(xs[0], (1, -1))
    if last == 1:
        xs[-1] = O.reshape(xs[-1], (-1, 1))
    for x in xs:
        if x.ndim != 2:
            raise LinAlgError(f"{x.ndim}-dimensional array given. Array must be "
                              "two-dimensional")
    dims = [x.shape[0] for x in xs] + [xs[-1].shape[1]]
    if len(xs) == 3:  # NumPy's rule for three
        a0, b0, c0, c1 = dims
        cost1 = a0 * b0 * (c0 + c1)  # (AB)C
        cost2 = b0 * c1 * (a0 + c0)  # A(BC)
        split = {(0, 2): 1 if cost1 < cost2 else 0}
    else:  # the matrix-chain dynamic programme NumPy uses
        k = len(xs)
        cost = [[0.0] * k for _ in range(k)]
        split = {}
        for length in range(1, k):
            for i in range(k - length):
                j = i + length
                cost[i][j] = math.inf
                for s in range(i, j):
                    q = cost[i][s] + cost[s + 1][j] + dims[i] * dims[s + 1] * dims[j + 1]
                    if q < cost[i][j]:
                        cost[i][j], split[i, j] = q, s

    def chain(i: int, j: int) -> Tensor:
        if i == j:
            return xs[i]
        s = split.get((i, j), i)  # a pair of matrices has the one split i
        return O.matmul(chain(i, s), chain(s + 1, j))

    r = chain(0, len(xs) - 1)
    if first == 1 and last == 1:
        return O.reshape(r, ())
    if first == 1 or last == 1:
        return O.ravel(r)
    return r


def matrix_transpose(x: Any, /) -> Tensor:
    """The stack of transposed matrices, as ``np.linalg.matrix_transpose``."""
    x = O.as_tensor(x)
    if x.ndim < 2:
        raise ValueError("Input array must be at least 2-dimensional")
    return O.swapaxes(x, -1, -2)


def outer(x1: Any, x2: Any, /) -> Tensor:
    """The outer product of two vectors, as ``np.linalg.outer``."""
    x1, x2 = O.as_tensor(x1), O.as_tensor(x2)
    if x1.ndim != 1 or x2.ndim != 1:
        raise ValueError(f"Input arrays must be one-dimensional, but they are x1.ndim="
                         f"{x1.ndim} and x2.ndim={x2.ndim}.")
    return O.outer(x1, x2)


def diagonal(x: Any, /, *, offset: int = 0) -> Tensor:
    """The diagonals of a stack of matrices, as ``np.linalg.diagonal``."""
    return O.diagonal(x, offset, -2, -1)


def trace(x: Any, /, *, offset: int = 0, dtype: Any = None) -> Tensor:
    """The traces of a stack of matrices, as ``np.linalg.trace``."""
    r = O.trace(x, offset, -2, -1)
    return r if dtype is None else O.astype(r, dtype)


def vecdot(x1: Any, x2: Any, /, *, axis: int = -1) -> Tensor:
    """The dot products of vectors along ``axis``, as ``np.linalg.vecdot`` (real tensors)."""
    x1, x2 = O.as_tensor(x1), O.as_tensor(x2)
    return O.sum_(x1 * x2, axis=axis)


# ---------------------------------------------------------------------------------------------
# norms and condition numbers
# ---------------------------------------------------------------------------------------------
def svd_norm(x: Tensor, ord: Any, axes: tuple, keepdims: bool) -> Tensor:
    """The matrix norms of singular values over ``axes`` (two non-negative axes): ``ord=2``
    the largest, ``-2`` the smallest, ``'nuc'`` their sum (``norm``'s branch for them)."""
    y = O.moveaxis(x, axes, (-2, -1))
    s = svd(y, compute_uv=False)
    if ord == 2:
        v = O.max_(s, axis=-1)
    elif ord == -2:
        v = O.min_(s, axis=-1)
    else:
        v = O.sum_(s, axis=-1)
    return O.expand_dims(v, tuple(sorted(axes))) if keepdims else v


def matrix_norm(x: Any, /, *, keepdims: bool = False, ord: Any = "fro") -> Tensor:
    """The norms of a stack of matrices (the last two axes), as ``np.linalg.matrix_norm``:
    ``'fro'``, ``'nuc'``, 1, -1, 2, -2, inf, -inf."""
    x = O.as_tensor(x)
    if x.ndim < 2:
        raise ValueError(f"Input array must be at least 2-dimensional, got {x.ndim}")
    return O.norm(x, ord, (-2, -1), keepdims)


def vector_norm(x: Any, /, *, axis: Any = None, keepdims: bool = False, ord: Any = 2) -> Tensor:
    """Vector norms over ``axis`` (None: all elements, as one vector; a tuple: those axes as
    one vector), as ``np.linalg.vector_norm``."""
    x = O._float(O.as_tensor(x))
    shape = x.shape
    axes = O._norm_axes(axis, len(shape))
    if len(axes) == 1:
        return O.norm(x, ord, axes[0], keepdims)
    rest = [d for d in range(len(shape)) if d not in axes]
    y = O.reshape(O.transpose(x, rest + list(axes)) if rest else x,
                  tuple(shape[d] for d in rest) + (-1,))
    r = O.norm(y, ord, -1)
    if keepdims:
        r = O.reshape(r, tuple(1 if d in axes else shape[d] for d in range(len(shape))))
    return r


def cond(x: Any, p: Any = None) -> Tensor:
    """The condition number of (each matrix of) ``x`` in the norm ``p``, as
    ``np.linalg.cond``: the ratio of the extreme singular values for ``p`` None, 2 or -2,
    else ``norm(x, p) * norm(inv(x), p)``."""
    x = _tensor(x)
    if not O._recording(x):
        return constant(np.asarray(np.linalg.cond(O.array_of(x), p)))
    if p in (None, 2, -2):
        s = svdvals(x)
        hi, lo = O.getitem(s, (Ellipsis, 0)), O.getitem(s, (Ellipsis, -1))
        return hi / lo if p != -2 else lo / hi
    return O.norm(x, p, (-2, -1)) * O.norm(inv(x), p, (-2, -1))
