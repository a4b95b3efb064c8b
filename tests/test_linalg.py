"""Linear algebra on tensors: ``td.linalg`` and ``np.linalg`` on tensors (issue 12).

* values equal NumPy's (SciPy's for ``solve_triangular``/``cho_solve``), float64 and float32,
  single and stacked matrices; without grad the call is NumPy's own;
* gradients against central differences (``helpers.check_grad``) on well-conditioned inputs:
  SPD matrices for ``cholesky``/``eigh``, distinct spectra for ``eigh``/``svd``,
  sign-invariant losses for eigenvectors and singular vectors; symmetric inputs enter as
  ``(a + a.mT) / 2``, so the finite differences see the symmetrised gradient PyTorch returns;
* against ``torch.linalg`` (skipped without PyTorch), also on random (hypothesis) inputs and
  at PyTorch's conventions: degenerate eigenvalues, singular determinants;
* bad input raises ``LinAlgError`` (or NumPy's/SciPy's error) with nothing recorded;
* replay (``td.value_and_grad(..., replay=True)``) at new inputs, and the paths without SciPy.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tapediff as td
from tapediff._src import _kernels as K
from tapediff._src import _linalg_rules as LR

from helpers import check_grad, projection, spd_matrices, well_conditioned

LinAlgError = np.linalg.LinAlgError


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def general(shape: tuple, seed: int = 0) -> np.ndarray:
    """Well-conditioned matrices of ``shape`` (..., m, n): singular values 1 .. 3, distinct."""
    return well_conditioned(np.random.default_rng(seed), shape)


def spd(shape: tuple, seed: int = 0) -> np.ndarray:
    """Symmetric positive-definite matrices, eigenvalues 1 .. 4, distinct."""
    return spd_matrices(np.random.default_rng(seed), shape)


def lower(shape: tuple, seed: int = 0) -> np.ndarray:
    """Lower-triangular matrices with diagonal 2 .. 3 and garbage above it."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(-0.5, 0.5, shape)
    n = shape[-1]
    a[..., range(n), range(n)] = rng.uniform(2.0, 3.0, shape[:-1])
    return a


def vec(shape: tuple, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + 100).standard_normal(shape)


def sym(a):
    return (a + a.mT) * 0.5


def cat(*ts) -> td.Tensor:
    return td.concatenate([td.ravel(t) for t in ts])


L = td.linalg
BIG = LR.SMALL + 1

# name -> (function of tensors giving one tensor, inputs).  Eigenvectors and singular
# vectors enter squared (their signs are NumPy's choice); symmetric inputs symmetrised.
GRAD_CASES = {
    "solve": (L.solve, [general((2, 3, 3)), vec((2, 3, 2))]),
    "solve vector b": (L.solve, [general((3, 3)), vec((3,))]),
    "solve broadcast": (L.solve, [general((2, 3, 3)), vec((3,))]),
    "solve batch broadcast": (L.solve, [general((3, 3)), vec((2, 3, 2))]),
    "inv": (L.inv, [general((2, 3, 3))]),
    "det": (L.det, [general((2, 3, 3))]),
    "slogdet": (lambda a: L.slogdet(a)[1], [general((2, 3, 3))]),
    "slogdet LU": (lambda a: L.slogdet(a)[1], [general((LR.LU_MIN, LR.LU_MIN))]),
    "det LU": (lambda a: L.det(a * 0.6), [general((LR.LU_MIN, LR.LU_MIN))]),
    "cholesky": (lambda a: L.cholesky(sym(a)), [spd((2, 3, 3))]),
    "cholesky upper": (lambda a: L.cholesky(sym(a), upper=True), [spd((3, 3))]),
    "eigh": (lambda a: cat(*(f ** 2 for f in L.eigh(sym(a)))), [spd((2, 3, 3))]),
    "eigh UPLO=U": (lambda a: cat(L.eigh(sym(a), "U")[1] ** 2), [spd((3, 3))]),
    "eigvalsh": (lambda a: L.eigvalsh(sym(a)), [spd((2, 3, 3))]),
    "svd tall": (lambda a: cat(*(f ** 2 for f in L.svd(a, False))), [general((4, 3))]),
    "svd wide": (lambda a: cat(*(f ** 2 for f in L.svd(a, False))), [general((3, 4))]),
    "svd stack": (lambda a: cat(*(f ** 2 for f in L.svd(a))), [general((2, 3, 3))]),
    "svd U only": (lambda a: L.svd(a, False)[0] ** 2, [general((4, 3))]),
    "svd Vh only": (lambda a: L.svd(a, False)[2] ** 2, [general((3, 4))]),
    "svdvals": (lambda a: L.svd(a, compute_uv=False), [general((2, 4, 3))]),
    "pinv tall": (L.pinv, [general((4, 3))]),
    "pinv wide": (L.pinv, [general((2, 3, 4))]),
    "qr tall": (lambda a: cat(*L.qr(a)), [general((4, 3))]),
    "qr wide": (lambda a: cat(*L.qr(a)), [general((3, 4))]),
    "qr stack": (lambda a: cat(*L.qr(a)), [general((2, 3, 3))]),
    "qr r": (lambda a: L.qr(a, mode="r"), [general((4, 3))]),
    "lstsq": (lambda a, b: L.lstsq(a, b)[0], [general((5, 3)), vec((5,))]),
    "lstsq matrix b": (lambda a, b: cat(*L.lstsq(a, b)[:2]), [general((5, 3)), vec((5, 2))]),
    "lstsq wide": (lambda a, b: L.lstsq(a, b)[0], [general((3, 5)), vec((3,))]),
    "matrix_power 5": (lambda a: L.matrix_power(a, 5), [general((2, 3, 3)) * 0.5]),
    "matrix_power -2": (lambda a: L.matrix_power(a, -2), [general((3, 3))]),
    "matrix_power 1": (lambda a: L.matrix_power(a, 1), [general((3, 3))]),
    "multi_dot 3": (lambda a, b, c: L.multi_dot([a, b, c]),
                    [vec((4,)), vec((4, 2)), vec((2, 5))]),
    "multi_dot 4": (lambda a, b, c, d: L.multi_dot([a, b, c, d]),
                    [vec((3, 6)), vec((6, 2)), vec((2, 4)), vec((4,))]),
    "norm 2": (lambda a: L.norm(a, 2), [general((4, 3))]),
    "norm -2 axis": (lambda a: L.norm(a, -2, axis=(0, 2), keepdims=True), [general((3, 2, 3))]),
    "norm nuc": (lambda a: np.linalg.norm(a, "nuc"), [general((3, 4))]),
    "matrix_norm": (lambda a: L.matrix_norm(a, ord=2), [general((2, 3, 3))]),
    "vector_norm": (lambda a: L.vector_norm(a, axis=(0, 2), ord=3), [vec((2, 3, 4))]),
    "vector_norm all": (lambda a: L.vector_norm(a, keepdims=True), [vec((2, 3))]),
    "cond": (L.cond, [general((2, 3, 3))]),
    "cond fro": (lambda a: L.cond(a, "fro"), [general((3, 3))]),
    "solve_triangular": (lambda a, b: L.solve_triangular(a, b, lower=True),
                         [lower((2, 3, 3)), vec((2, 3, 2))]),
    "solve_triangular upper vector": (L.solve_triangular, [lower((3, 3)).T.copy(), vec((3,))]),
    "solve_triangular trans unit": (
        lambda a, b: L.solve_triangular(a, b, trans="T", lower=True, unit_diagonal=True),
        [lower((3, 3)), vec((3, 2))]),
    "cho_solve lower": (lambda a, b: L.cho_solve((L.cholesky(sym(a)), True), b),
                        [spd((3, 3)), vec((3,))]),
    "cho_solve cho_factor": (lambda a, b: L.cho_solve(L.cho_factor(sym(a)), b),
                             [spd((3, 3)), vec((3, 2))]),
    # from LR.SMALL on, triangular solves are LAPACK calls per matrix (with SciPy)
    "cholesky large": (lambda a: L.cholesky(sym(a)), [spd((2, BIG, BIG))]),
    "cholesky upper large": (lambda a: L.cholesky(sym(a), upper=True), [spd((BIG, BIG))]),
    "solve_triangular large": (lambda a, b: L.solve_triangular(a, b, lower=True),
                               [lower((2, BIG, BIG)), vec((2, BIG, 2))]),
    "solve_triangular large trans unit": (
        lambda a, b: L.solve_triangular(a, b, trans=1, unit_diagonal=True),
        [lower((BIG, BIG)).T.copy(), vec((BIG,))]),
    "qr large": (lambda a: cat(*L.qr(a)), [general((BIG + 2, BIG))]),
}


@pytest.mark.parametrize("name", GRAD_CASES)
def test_gradient_matches_finite_differences(name):
    fn, inputs = GRAD_CASES[name]
    check_grad(fn, inputs, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# values: NumPy's, float64 and float32; no grad: NumPy's own call
# ---------------------------------------------------------------------------------------------
def _np_results(r) -> list:
    if isinstance(r, tuple):
        return [x for v in r for x in _np_results(v)]
    return [np.asarray(r)]


def _td_results(r) -> list:
    if isinstance(r, tuple):
        return [x for v in r for x in _td_results(v)]
    if isinstance(r, td.Tensor):
        return [r.detach().numpy()]
    return [np.asarray(r)]


VALUE_CASES = {
    "solve": (np.linalg.solve, [general((2, 3, 3)), vec((2, 3, 2))]),
    "solve vector": (np.linalg.solve, [general((2, 3, 3)), vec((3,))]),
    "inv": (np.linalg.inv, [general((2, 3, 3))]),
    "det": (np.linalg.det, [general((2, 3, 3))]),
    "slogdet": (np.linalg.slogdet, [general((2, 3, 3))]),
    "slogdet LU": (np.linalg.slogdet, [general((40, 40))]),
    "cholesky": (np.linalg.cholesky, [spd((2, 3, 3))]),
    "cholesky upper": (lambda a: np.linalg.cholesky(a, upper=True), [spd((3, 3))]),
    "eigh": (np.linalg.eigh, [spd((2, 3, 3))]),
    "eigvalsh": (np.linalg.eigvalsh, [spd((3, 3))]),
    "svd": (lambda a: np.linalg.svd(a, full_matrices=False), [general((2, 4, 3))]),
    "svd square": (np.linalg.svd, [general((3, 3))]),
    "svd hermitian": (lambda a: np.linalg.svd(a, hermitian=True), [spd((3, 3))]),
    "svdvals": (lambda a: np.linalg.svd(a, compute_uv=False), [general((3, 4))]),
    "pinv": (np.linalg.pinv, [general((4, 3))]),
    "pinv rtol": (lambda a: np.linalg.pinv(a, rtol=None), [general((3, 4))]),
    "qr": (np.linalg.qr, [general((2, 4, 3))]),
    "qr r": (lambda a: np.linalg.qr(a, mode="r"), [general((3, 4))]),
    "lstsq": (np.linalg.lstsq, [general((5, 3)), vec((5,))]),
    "lstsq matrix b": (np.linalg.lstsq, [general((5, 3)), vec((5, 2))]),
    "lstsq wide": (np.linalg.lstsq, [general((3, 5)), vec((3,))]),
    "matrix_power": (lambda a: np.linalg.matrix_power(a, 6), [general((3, 3)) * 0.5]),
    "matrix_power -3": (lambda a: np.linalg.matrix_power(a, -3), [general((3, 3))]),
    "multi_dot": (lambda a, b, c: np.linalg.multi_dot([a, b, c]),
                  [vec((5, 2)), vec((2, 6)), vec((6,))]),
    "norm 2": (lambda a: np.linalg.norm(a, 2), [general((4, 3))]),
    "norm nuc": (lambda a: np.linalg.norm(a, "nuc", axis=(1, 2)), [general((2, 3, 3))]),
    "norm -2": (lambda a: np.linalg.norm(a, -2, axis=(0, 1), keepdims=True), [general((3, 4))]),
    "matrix_norm": (lambda a: np.linalg.matrix_norm(a, ord="nuc"), [general((2, 3, 3))]),
    "vector_norm": (lambda a: np.linalg.vector_norm(a, axis=(1, 2), ord=1), [vec((2, 3, 4))]),
    "cond": (np.linalg.cond, [general((3, 3))]),
    "cond inf": (lambda a: np.linalg.cond(a, np.inf), [general((3, 3))]),
    "matrix_transpose": (np.linalg.matrix_transpose, [vec((2, 3, 4))]),
    "trace": (lambda a: np.linalg.trace(a, offset=1), [vec((2, 3, 4))]),
    "vecdot": (np.linalg.vecdot, [vec((2, 3)), vec((3,), 1)]),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", VALUE_CASES)
def test_values_are_numpys(name, dtype):
    """``np.linalg.f`` on tensors that require grad records and gives NumPy's values (float32
    factorisations run in float64, as NumPy's, so they agree to float32 rounding); without
    grad, it is NumPy's call."""
    fn, inputs = VALUE_CASES[name]
    inputs = [a.astype(dtype) for a in inputs]
    expected = _np_results(fn(*inputs))
    with td.tape() as t:
        got = fn(*(td.tensor(a, requires_grad=True) for a in inputs))
        assert len(t) > len(inputs)  # recorded
    got = _td_results(got)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-6, atol=2e-6)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        if e.dtype.kind == "i":  # lstsq's rank: an int
            assert g == e
            continue
        assert g.shape == e.shape and g.dtype == e.dtype, (g.shape, e.shape, g.dtype, e.dtype)
        np.testing.assert_allclose(g, e, **tol)
    plain = _td_results(fn(*(td.tensor(a) for a in inputs)))  # nothing to record
    for g, e in zip(plain, expected):
        np.testing.assert_array_equal(g, e)


def test_solve_triangular_and_cho_solve_values_are_scipys():
    sl = pytest.importorskip("scipy.linalg")
    a, b = lower((4, 4)), vec((4, 2))
    for kw in ({"lower": True}, {"lower": False, "trans": 1}, {"lower": True, "trans": "T",
                                                                "unit_diagonal": True}):
        x = L.solve_triangular(td.tensor(a, requires_grad=True), b, **kw)
        np.testing.assert_allclose(x.detach().numpy(), sl.solve_triangular(a, b, **kw),
                                   rtol=1e-13)
    s = spd((4, 4))
    c = sl.cho_factor(s, lower=True)
    for lo in (True, False):
        got = L.cho_solve(L.cho_factor(td.tensor(s, requires_grad=True), lower=lo), b[:, 0])
        np.testing.assert_allclose(got.detach().numpy(), sl.cho_solve(c, b[:, 0]), rtol=1e-12)
    x = L.solve_triangular(td.tensor(a, dtype=td.float32), b.astype(np.float32), lower=True)
    assert x.dtype == np.float32


@pytest.mark.parametrize("name", ["solve", "cholesky", "eigh", "svd tall", "qr wide", "slogdet",
                                  "pinv tall", "solve_triangular", "cholesky large",
                                  "solve_triangular large"])
def test_float32_stays_float32(name):
    """Values and gradients in float32, close to the float64 ones."""
    fn, inputs = GRAD_CASES[name]
    grads = {}
    for dt in (np.float64, np.float32):
        xs = [td.tensor(a.astype(dt), requires_grad=True) for a in inputs]
        y = fn(*xs)
        assert y.dtype == dt
        (y * projection(y.shape).astype(dt)).sum().backward()
        grads[dt] = [x.grad for x in xs]
    for g32, g64 in zip(grads[np.float32], grads[np.float64]):
        assert g32.dtype == np.float32
        np.testing.assert_allclose(g32.numpy(), g64.numpy(), rtol=2e-4, atol=2e-4)


# ---------------------------------------------------------------------------------------------
# against PyTorch
# ---------------------------------------------------------------------------------------------
def _torch_cases(torch) -> dict:
    tl = torch.linalg
    return {
        "solve": (L.solve, tl.solve, [general((2, 3, 3)), vec((2, 3, 2))]),
        "inv": (L.inv, tl.inv, [general((2, 3, 3))]),
        "det": (L.det, tl.det, [general((2, 3, 3))]),
        "slogdet": (lambda a: L.slogdet(a)[1], lambda a: tl.slogdet(a)[1],
                    [general((2, 3, 3))]),
        "slogdet LU": (lambda a: L.slogdet(a)[1], lambda a: tl.slogdet(a)[1],
                       [general((40, 40))]),
        # no symmetrisation: PyTorch's gradient is symmetric, tapediff's must be too
        "cholesky": (L.cholesky, tl.cholesky, [spd((2, 3, 3))]),
        "cholesky upper": (lambda a: L.cholesky(a, upper=True),
                           lambda a: tl.cholesky(a, upper=True), [spd((3, 3))]),
        "cholesky large": (L.cholesky, tl.cholesky, [spd((2, BIG, BIG))]),
        "eigh": (lambda a: cat(*(f ** 2 for f in L.eigh(a))),
                 lambda a: torch.cat([f.ravel() ** 2 for f in tl.eigh(a)]), [spd((2, 3, 3))]),
        "eigvalsh": (L.eigvalsh, tl.eigvalsh, [spd((3, 3))]),
        "svd": (lambda a: cat(*(f ** 2 for f in L.svd(a, False))),
                lambda a: torch.cat([f.ravel() ** 2 for f in tl.svd(a, False)]),
                [general((2, 4, 3))]),
        "svd wide": (lambda a: cat(*(f ** 2 for f in L.svd(a, False))),
                     lambda a: torch.cat([f.ravel() ** 2 for f in tl.svd(a, False)]),
                     [general((3, 5))]),
        "svdvals": (L.svdvals, tl.svdvals, [general((3, 4))]),
        "pinv": (L.pinv, tl.pinv, [general((2, 4, 3))]),
        "pinv orthogonal": (L.pinv, tl.pinv, [general((4, 3)) * 0 + np.eye(4)[:, :3]]),
        "qr": (lambda a: cat(*L.qr(a)), lambda a: torch.cat([f.ravel() for f in tl.qr(a)]),
               [general((2, 4, 3))]),
        "qr wide": (lambda a: cat(*L.qr(a)), lambda a: torch.cat([f.ravel() for f in tl.qr(a)]),
                    [general((3, 5))]),
        "lstsq": (lambda a, b: L.lstsq(a, b)[0],
                  lambda a, b: tl.lstsq(a, b, driver="gelsd").solution,
                  [general((5, 3)), vec((5, 2))]),
        "matrix_power": (lambda a: L.matrix_power(a, -3), lambda a: tl.matrix_power(a, -3),
                         [general((3, 3))]),
        "multi_dot": (lambda a, b, c: L.multi_dot([a, b, c]), lambda a, b, c: tl.multi_dot(
            [a, b, c]), [vec((3, 5)), vec((5, 2)), vec((2, 4))]),
        "matrix_norm 2": (lambda a: L.matrix_norm(a, ord=2), lambda a: tl.matrix_norm(a, 2),
                          [general((2, 3, 4))]),
        "matrix_norm nuc": (lambda a: L.matrix_norm(a, ord="nuc"),
                            lambda a: tl.matrix_norm(a, "nuc"), [general((3, 4))]),
        "matrix_norm -2": (lambda a: L.matrix_norm(a, ord=-2), lambda a: tl.matrix_norm(a, -2),
                           [general((4, 3))]),
        "cond": (L.cond, tl.cond, [general((2, 3, 3))]),
        "solve_triangular": (lambda a, b: L.solve_triangular(a, b, lower=True),
                             lambda a, b: tl.solve_triangular(a, b, upper=False),
                             [lower((2, 3, 3)), vec((2, 3, 2))]),
        "solve_triangular large": (lambda a, b: L.solve_triangular(a, b, trans=1),
                                   lambda a, b: tl.solve_triangular(a.mT, b, upper=False),
                                   [lower((2, BIG, BIG)).swapaxes(-1, -2).copy(),
                                    vec((2, BIG, 3))]),
        "solve_triangular unit": (
            lambda a, b: L.solve_triangular(a, b, unit_diagonal=True),
            lambda a, b: tl.solve_triangular(a, b, upper=True, unitriangular=True),
            [lower((3, 3)).T.copy(), vec((3, 2))]),
    }


def _against_torch(td_fn, torch_fn, inputs, torch, rtol=1e-9, atol=1e-10):
    xs = [td.tensor(a, requires_grad=True) for a in inputs]
    y = td_fn(*xs)
    w = projection(y.shape)
    (y * w).sum().backward()
    ts = [torch.tensor(a, requires_grad=True) for a in inputs]
    yt = torch_fn(*ts)
    (yt * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(y.detach().numpy(), yt.detach().numpy(), rtol=rtol, atol=atol)
    for x, t in zip(xs, ts):
        np.testing.assert_allclose(x.grad.numpy(), t.grad.numpy(), rtol=rtol, atol=atol)
    return xs


def test_gradients_equal_pytorchs():
    torch = pytest.importorskip("torch")
    for name, (td_fn, torch_fn, inputs) in _torch_cases(torch).items():
        try:
            xs = _against_torch(td_fn, torch_fn, inputs, torch)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None
        if name.startswith(("cholesky", "eigh", "eigvalsh")):  # the symmetrised gradient
            g = xs[0].grad.numpy()
            np.testing.assert_allclose(g, np.swapaxes(g, -1, -2), rtol=1e-12, atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 4), batch=st.sampled_from([(), (2,)]), seed=st.integers(0, 2 ** 16),
       f32=st.booleans())
def test_random_inputs_against_pytorch(n, batch, seed, f32):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    g = rng.uniform(-1, 1, batch + (n, n))
    a = g + n * np.eye(n)  # diagonally dominant: invertible
    s = g @ np.swapaxes(g, -1, -2) + 0.5 * np.eye(n)  # SPD
    b = rng.uniform(-1, 1, batch + (n, 2))
    dt = np.float32 if f32 else np.float64
    tol = dict(rtol=2e-3, atol=2e-3) if f32 else dict(rtol=1e-7, atol=1e-8)
    tl = torch.linalg
    for td_fn, torch_fn, inputs in [
        (L.solve, tl.solve, [a, b]),
        (lambda x: L.slogdet(x)[1], lambda x: tl.slogdet(x)[1], [a]),
        (L.cholesky, tl.cholesky, [s]),
        (lambda x: L.solve_triangular(x, L.cholesky(s.astype(dt)), lower=True),
         lambda x: tl.solve_triangular(x, tl.cholesky(torch.tensor(s.astype(dt))),
                                       upper=False), [np.tril(a)]),
        (L.eigvalsh, tl.eigvalsh, [s]),
        (L.svdvals, tl.svdvals, [a]),
    ]:
        _against_torch(td_fn, torch_fn, [x.astype(dt) for x in inputs], torch, **tol)


def test_degenerate_eigenvalues_and_singular_matrices_as_pytorch():
    """Where the maths has no gradient, PyTorch's numbers: eigenvectors of a repeated
    eigenvalue give nan (eigenvalues alone stay finite); det of a singular matrix gets the
    gradient 0 (PyTorch's first-order backward), logabsdet a non-finite one."""
    torch = pytest.importorskip("torch")
    eye = np.eye(3)
    w = np.arange(9.0).reshape(3, 3)
    x = td.tensor(eye, requires_grad=True)
    (L.eigh(x)[1] ** 2 * w).sum().backward()
    xt = torch.tensor(eye, requires_grad=True)
    (torch.linalg.eigh(xt)[1] ** 2 * torch.tensor(w)).sum().backward()
    assert np.isnan(x.grad.numpy()).all() and np.isnan(xt.grad.numpy()).all()
    _against_torch(lambda a: L.eigvalsh(a) * np.arange(3.0),
                   lambda a: torch.linalg.eigvalsh(a) * torch.arange(3.0), [eye], torch)
    _against_torch(lambda a: L.svdvals(a), torch.linalg.svdvals, [2 * eye], torch)
    for a in ([[1.0, 2.0], [2.0, 4.0]], [[1.0, 0.0], [0.0, 0.0]], np.zeros((2, 2))):
        a = np.array(a)
        _against_torch(L.det, torch.linalg.det, [a], torch)
        x = td.tensor(a, requires_grad=True)
        sign, logabsdet = L.slogdet(x)
        assert sign.item() == 0.0 and logabsdet.item() == -np.inf
        logabsdet.backward()
        assert not np.isfinite(x.grad.numpy()).all()


# ---------------------------------------------------------------------------------------------
# conventions and the API
# ---------------------------------------------------------------------------------------------
def test_np_linalg_on_tensors_records_the_primitives():
    a, s = general((3, 3)), spd((3, 3))
    cases = [
        (lambda x: np.linalg.solve(x, np.ones((3, 2))), a, K.OP_LINALG_SOLVE),
        (np.linalg.inv, a, K.OP_LINALG_SOLVE),
        (np.linalg.det, a, K.OP_LINALG_SLOGDET),
        (np.linalg.cholesky, s, K.OP_LINALG_CHOLESKY),
        (np.linalg.eigvalsh, s, K.OP_LINALG_EIGH),
        (np.linalg.svdvals, a, K.OP_LINALG_SVD),
        (lambda x: np.linalg.qr(x).R, a, K.OP_LINALG_QR),
        (np.linalg.pinv, a, K.OP_LINALG_PINV),
        (lambda x: L.solve_triangular(x, np.ones(3)), a, K.OP_LINALG_SOLVE_TRIANGULAR),
    ]
    for fn, value, op in cases:
        with td.tape() as t:
            y = fn(td.tensor(value, requires_grad=True))
            assert isinstance(y, td.Tensor) and y.requires_grad
            assert op in t.op[:len(t)].tolist()
    y = L.cholesky(td.tensor(s, requires_grad=True))
    assert y.grad_fn == "<LinalgCholeskyExBackward0>"
    r = np.linalg.eigh(td.tensor(s, requires_grad=True))
    assert type(r).__name__ == "EighResult" and r.eigenvalues.shape == (3,)
    r = np.linalg.svd(td.tensor(a, requires_grad=True))
    assert type(r).__name__ == "SVDResult" and r.Vh.shape == (3, 3)
    assert type(np.linalg.slogdet(td.tensor(a))).__name__ == "SlogdetResult"
    assert "linalg" in td.__all__ and set(td.linalg.__all__) <= set(dir(td.linalg))


def test_slogdet_sign_has_no_gradient():
    a = general((3, 3))
    x = td.tensor(a, requires_grad=True)
    sign, logabsdet = np.linalg.slogdet(x)
    (sign * 3.0 + logabsdet).backward()
    np.testing.assert_allclose(x.grad.numpy(), np.linalg.inv(a).T, rtol=1e-12)


def test_symmetric_functions_give_the_symmetrised_gradient():
    """The gradient of cholesky/eigh/eigvalsh is symmetric, and its inner product with a
    symmetric perturbation is the derivative along it (finite differences)."""
    s = spd((4, 4), 3)
    d = vec((4, 4), 3)
    d = d + d.T
    w = [projection((4, 4), 1), projection((4, 4), 2)]
    for fn in (lambda a: L.cholesky(a) * w[0], lambda a: L.cholesky(a, upper=True) * w[0],
               lambda a: L.eigh(a)[1] ** 2 * w[0] + L.eigh(a)[0] * w[1][0],
               lambda a: L.eigh(a, UPLO="U")[0] * w[1][0]):
        x = td.tensor(s, requires_grad=True)
        fn(x).sum().backward()
        g = x.grad.numpy()
        np.testing.assert_allclose(g, g.T, rtol=1e-10, atol=1e-12)
        h = 1e-6
        f = [float(fn(td.tensor(s + e * h * d)).sum()) for e in (1, -1)]
        assert np.sum(g * d) == pytest.approx((f[0] - f[1]) / (2 * h), rel=1e-6)


def test_errors_for_what_has_no_gradient():
    x = td.tensor(general((4, 3)), requires_grad=True)
    with pytest.raises(ValueError, match="full_matrices=False"):
        np.linalg.svd(x)
    with pytest.raises(ValueError, match="mode='complete'"):
        np.linalg.qr(x, mode="complete")
    with pytest.raises(ValueError, match="raw"):
        np.linalg.qr(x, mode="raw")
    assert np.linalg.svd(x, compute_uv=False).shape == (3,)
    assert np.linalg.qr(x.T, mode="complete").Q.shape == (3, 3)  # m <= n: the reduced one
    with td.no_grad():  # nothing to differentiate: NumPy's full decomposition
        assert np.linalg.svd(x).U.shape == (4, 4)


def test_lstsq_returns_numpys_tuple():
    a, b = general((5, 3)), vec((5,))
    x, res, rank, s = np.linalg.lstsq(td.tensor(a, requires_grad=True), b)
    ex, eres, erank, es = np.linalg.lstsq(a, b)
    assert type(rank) is int and rank == erank == 3
    for got, exp in ((x, ex), (res, eres), (s, es)):
        assert isinstance(got, td.Tensor) and got.shape == exp.shape
        np.testing.assert_allclose(got.detach().numpy(), exp, rtol=1e-10)
    deficient = np.c_[a[:, :2], a[:, :1]]  # rank 2: no residuals, the least-norm solution
    x, res, rank, _ = np.linalg.lstsq(td.tensor(deficient, requires_grad=True), b)
    ex, eres, erank, _ = np.linalg.lstsq(deficient, b)
    assert rank == erank == 2 and res.shape == eres.shape == (0,)
    np.testing.assert_allclose(x.detach().numpy(), ex, rtol=1e-10)


def test_norm_orders_of_singular_values():
    a = general((2, 3, 4), 5)
    s = np.linalg.svd(a, compute_uv=False)
    x = td.tensor(a, requires_grad=True)
    for ord, ref in ((2, s.max(-1)), (-2, s.min(-1)), ("nuc", s.sum(-1))):
        for fn in (lambda: np.linalg.norm(x, ord, axis=(1, 2)),
                   lambda: np.linalg.matrix_norm(x, ord=ord), lambda: td.norm(x, ord, (-2, -1))):
            np.testing.assert_allclose(fn().detach().numpy(), ref, rtol=1e-12)
    k = np.linalg.norm(x, 2, axis=(2, 1), keepdims=True)
    assert k.shape == (2, 1, 1)


def test_docstring_examples():
    import doctest
    assert doctest.testmod(td.linalg).failed == 0


# ---------------------------------------------------------------------------------------------
# bad input: an error, nothing recorded
# ---------------------------------------------------------------------------------------------
BAD = [
    ("solve singular", lambda x: np.linalg.solve(x, np.ones(2)), [[1.0, 2.0], [2.0, 4.0]],
     LinAlgError, "Singular"),
    ("inv singular", np.linalg.inv, [[1.0, 2.0], [2.0, 4.0]], LinAlgError, "Singular"),
    ("inv non-square", np.linalg.inv, np.ones((2, 3)), LinAlgError, "square"),
    ("inv 1-d", np.linalg.inv, np.ones(3), LinAlgError, "two-dimensional"),
    ("cholesky not PD", np.linalg.cholesky, [[1.0, 2.0], [2.0, 1.0]], LinAlgError,
     "positive definite"),
    ("eigh non-square", np.linalg.eigh, np.ones((2, 3)), LinAlgError, "square"),
    ("slogdet non-square", np.linalg.slogdet, np.ones((2, 3)), LinAlgError, "square"),
    ("solve shapes", lambda x: np.linalg.solve(x, np.ones((3, 2))), np.eye(2), ValueError,
     "mismatch"),
    ("solve_triangular zero diagonal", lambda x: L.solve_triangular(x, np.ones(2)),
     [[1.0, 2.0], [0.0, 0.0]], LinAlgError, "singular"),
    ("solve_triangular non-finite", lambda x: L.solve_triangular(x, np.ones(2)),
     [[1.0, np.nan], [0.0, 1.0]], ValueError, "infs or NaNs"),
    ("cho_solve", lambda x: L.cho_solve((x, True), np.ones(2)), [[0.0, 0.0], [1.0, 1.0]],
     LinAlgError, "singular"),
]


@pytest.mark.parametrize("name,fn,value,error,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_and_records_nothing(name, fn, value, error, match):
    with td.tape() as t:
        x = td.tensor(np.asarray(value, dtype=float), requires_grad=True)
        before = len(t)
        with pytest.raises(error, match=match):
            fn(x)
        assert len(t) == before
    with pytest.raises(error, match=match):  # the same error without grad
        fn(td.tensor(np.asarray(value, dtype=float)))


# ---------------------------------------------------------------------------------------------
# replay, and the paths without SciPy
# ---------------------------------------------------------------------------------------------
def gp_objective(a, b):
    """Everything at once: a GP-like likelihood and the other factorisations."""
    k = a @ a.T + 3.0 * np.eye(4)
    lo = np.linalg.cholesky(k)
    alpha = td.linalg.cho_solve((lo, True), b)
    s, logdet = np.linalg.slogdet(k)
    w, v = np.linalg.eigh(k)
    u, sv, vh = np.linalg.svd(a, full_matrices=False)
    q, r = np.linalg.qr(a)
    x = np.linalg.lstsq(a, b)[0]
    return ((b * alpha).sum() + logdet + np.log(np.diagonal(lo)).sum() + (w * w).sum()
            + (v * v * np.arange(16.0).reshape(4, 4)).sum() + (u ** 2 * 0.3).sum() + sv.sum()
            + (r ** 2).sum() + 1e-3 * np.linalg.det(k) + (np.linalg.inv(k) ** 2).sum()
            + (x ** 2).sum() + np.linalg.norm(a, "nuc") + (np.linalg.pinv(a) ** 2).sum()
            + (td.linalg.solve_triangular(lo, b, lower=True) ** 2).sum()
            + np.linalg.matrix_power(k * 0.1, 3).sum())


def test_replay_gives_eager_values_and_gradients_at_new_inputs():
    vg = td.value_and_grad(gp_objective, argnums=(0, 1), replay=True)
    eager = td.value_and_grad(gp_objective, argnums=(0, 1))
    rng = np.random.default_rng(7)
    for _ in range(4):
        a, b = rng.standard_normal((4, 3)), rng.standard_normal(4)
        (v, g), (ve, ge) = vg(a, b), eager(a, b)
        assert float(v) == pytest.approx(float(ve), rel=1e-12)
        for x, y in zip(g, ge):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-10, atol=1e-12)
    assert (vg.recordings, vg.replays) == (1, 3)
    f = td.value_and_grad(lambda a: np.linalg.inv(a).sum(), replay=True)
    f(np.eye(2))
    with pytest.raises(LinAlgError):  # a replayed forward rule raises NumPy's error
        f(np.ones((2, 2)))


def test_lstsq_rank_is_guarded_in_replay():
    f = td.value_and_grad(lambda a, b: (np.linalg.lstsq(a, b)[0] ** 2).sum(), replay=True)
    a, b = general((5, 3)), vec((5,))
    f(a, b)
    f(a * 1.1, b)
    assert f.recordings == 1
    f(np.c_[a[:, :2], a[:, :1]], b)  # rank 2: the guard records again
    assert f.recordings == 2


@pytest.mark.parametrize("name", ["slogdet LU", "det LU", "cholesky large",
                                  "cholesky upper large", "solve_triangular large",
                                  "solve_triangular large trans unit", "qr large"])
def test_without_scipy(name, monkeypatch):
    """Without SciPy, triangular solves fall back to NumPy's solver and slogdet keeps no LU
    factors: the same values and gradients."""
    fn, inputs = GRAD_CASES[name]

    def run():
        xs = [td.tensor(a, requires_grad=True) for a in inputs]
        y = fn(*xs)
        (y * projection(y.shape)).sum().backward()
        return y.detach().numpy(), [x.grad.numpy() for x in xs]

    with_scipy = run()
    monkeypatch.setattr(LR, "_scipy", False)
    assert LR.scipy_linalg() is None
    without = run()
    for a, b in zip([with_scipy[0], *with_scipy[1]], [without[0], *without[1]]):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
