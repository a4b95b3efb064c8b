"""More of NumPy's functions on tensors (``tapediff._src._numpy``): ``np.diff``, ``np.tril``,
``np.quantile``, ``np.interp``, ``np.einsum``'s sublist and ellipsis forms ...

For each: called with tensors, the NumPy function returns a tensor that records; its value
(and dtype) is NumPy's on the same arrays; its gradient matches central differences of NumPy's
own function (``helpers.check_grad``: the reference runs the same call on tensors that do not
require grad, which is NumPy itself); and, where PyTorch has the function, PyTorch's autograd.
Inputs are drawn by Hypothesis.  Values that meet a kink (sort, quantiles, interp, fmax ...)
come from a grid of distinct values, so that no finite-difference step crosses one.  Bad
arguments raise the documented errors.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import tapediff as td
from helpers import check_grad, numerical_grad, projection

try:
    import torch
except ImportError:  # everything but the PyTorch oracles still runs
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs PyTorch")

FEW = settings(max_examples=12, deadline=None)
SOME = settings(max_examples=20, deadline=None)
FLOATS = st.floats(-2.0, 2.0, allow_subnormal=False)
# distinct values on a grid of odd multiples of 1/16: never 0, never tied, never within a
# finite-difference step of each other (kinks of sort, quantiles, fmax, piecewise ...)
GRID = st.integers(-40, 39).map(lambda i: (2 * i + 1) / 16)
DTYPES = st.sampled_from([np.float64, np.float32])


def arrays(shape, elements=FLOATS, unique=False, dtype=np.float64):
    return hnp.arrays(dtype, shape, elements=elements, unique=unique)


def shapes(min_dims=1, max_dims=3, max_side=4, min_side=1):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side)


def check(fn, *inputs, rg=None, rtol=1e-12, atol=1e-13, grad_rtol=1e-5, grad_atol=1e-6):
    """``fn`` on leaves that require grad (``rg``: which do) returns a recorded tensor with
    NumPy's value and dtype (``fn`` on the arrays themselves), and the gradient of central
    differences of the same call (``check_grad``)."""
    # C order: td.tensor keeps a Fortran-ordered array's layout, which views then misread
    inputs = [np.array(a, order="C") for a in inputs]
    rg = [True] * len(inputs) if rg is None else rg
    leaves = [td.tensor(a, requires_grad=r) for a, r in zip(inputs, rg)]
    out = fn(*leaves)
    expected = fn(*inputs)
    assert isinstance(out, td.Tensor), type(out)
    assert out.requires_grad
    assert out.shape == np.shape(expected), (out.shape, np.shape(expected))
    assert out.dtype == np.asarray(expected).dtype, (out.dtype, np.asarray(expected).dtype)
    np.testing.assert_allclose(out.numpy(), expected, rtol=rtol, atol=atol)
    # nothing requires grad: NumPy's value as a constant tensor
    const = fn(*(td.tensor(a) for a in inputs))
    assert isinstance(const, td.Tensor) and not const.requires_grad
    np.testing.assert_allclose(const.numpy(), expected, rtol=rtol, atol=atol)
    check_grad(fn, inputs, requires_grad=rg, rtol=grad_rtol, atol=grad_atol)


def backward(fn, *inputs, dtype=np.float64, weights=None):
    """Values of ``fn`` on leaves and the leaves' gradients of ``(fn(...) * weights).sum()``."""
    leaves = [td.tensor(np.asarray(a, dtype), requires_grad=True) for a in inputs]
    out = fn(*leaves)
    w = projection(out.shape) if weights is None else np.asarray(weights)
    (out * w.astype(out.dtype)).sum().backward()
    return out, [leaf.grad for leaf in leaves]


def against_torch(td_fn, torch_fn, *inputs, dtype=np.float64, rtol=1e-10, atol=1e-12):
    """Values and gradients of tapediff and PyTorch for the same inputs and output weights."""
    out, grads = backward(td_fn, *inputs, dtype=dtype)
    w = projection(out.shape)
    tleaves = [torch.tensor(np.asarray(a, dtype), requires_grad=True) for a in inputs]
    tout = torch_fn(*tleaves)
    (tout * torch.tensor(w.astype(dtype))).sum().backward()
    if dtype == np.float32:
        rtol, atol = 1e-4, 1e-5
    assert tuple(tout.shape) == out.shape
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=rtol, atol=atol)
    for g, t in zip(grads, tleaves):
        assert g.dtype == dtype
        np.testing.assert_allclose(g.numpy(), t.grad.numpy(), rtol=rtol, atol=atol)


@st.composite
def array_and_axis(draw, elements=FLOATS, unique=False, min_side=1, min_dims=1):
    a = draw(arrays(draw(shapes(min_dims=min_dims, min_side=min_side)), elements, unique))
    return a, draw(st.integers(-a.ndim, a.ndim - 1))


# ---------------------------------------------------------------------------------------------
# differences, triangles, diagonals, products of vectors
# ---------------------------------------------------------------------------------------------
@SOME
@given(data=st.data(), n=st.integers(0, 2), ends=st.sampled_from(["", "scalar", "tensor"]))
def test_diff(data, n, ends):
    a, axis = data.draw(array_and_axis(min_side=3))
    if not ends:
        check(lambda a: np.diff(a, n, axis), a)
        return
    n = max(n, 1)  # NumPy returns ``a`` itself for n=0, ignoring prepend and append
    side = list(a.shape)
    side[axis] = 2
    end = np.float64(0.5) if ends == "scalar" else data.draw(arrays(tuple(side)))
    check(lambda a, p: np.diff(a, n=n, axis=axis, prepend=p), a, end)
    check(lambda a, p: np.diff(a, n, axis, prepend=-0.25, append=p), a, end)


def test_diff_append_and_scalar_prepend():
    a = np.array([[1.0, 4.0, 9.0], [2.0, -1.0, 0.5]])
    check(lambda a: np.diff(a, prepend=0.25, append=np.array([[1.0], [2.0]])), a)
    check(lambda a, b: np.diff(a, axis=0, append=b), a, np.array([[3.0, 1.0, -2.0]]))
    check(lambda a: td.diff(a, dim=0), a)


@FEW
@given(a=arrays(shapes(max_dims=2)), b=arrays((2,)), e=arrays(()))
def test_ediff1d(a, b, e):
    check(np.ediff1d, a)
    check(lambda a, b, e: np.ediff1d(a, to_end=e, to_begin=b), a, b, e)
    check(lambda a: np.ediff1d(a, to_begin=[1.0, 2.0]), a)
    check(lambda e: np.ediff1d(a, e), e)


@SOME
@given(a=arrays(shapes(min_dims=1, max_dims=3)), k=st.integers(-2, 2))
def test_tril_triu(a, k):
    check(lambda a: np.tril(a, k), a)
    check(lambda a: np.triu(a, k=k), a)


@SOME
@given(data=st.data(), k=st.integers(-3, 3))
def test_diag_and_diagflat(data, k):
    v = data.draw(arrays(st.integers(1, 4)))
    check(lambda v: np.diag(v, k), v)
    m = data.draw(arrays(st.tuples(st.integers(1, 4), st.integers(1, 4))))
    check(lambda m: np.diag(m, k=k), m)
    check(lambda m: np.diagflat(m, k), m)


@SOME
@given(data=st.data())
def test_kron(data):
    a = data.draw(arrays(shapes(min_dims=0, max_dims=3, max_side=3)))
    b = data.draw(arrays(shapes(min_dims=0, max_dims=3, max_side=3)))
    check(np.kron, a, b)
    check(np.kron, a, b, rg=[False, True])


@SOME
@given(data=st.data(), na=st.sampled_from([3, 3, 2]), nb=st.sampled_from([3, 3, 2]))
def test_cross(data, na, nb):
    batch = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3))
    sa, sb = batch.input_shapes
    a = data.draw(arrays(sa + (na,)))
    b = data.draw(arrays(sb + (nb,)))
    ax = data.draw(st.integers(0, a.ndim - 1))
    bx = data.draw(st.integers(0, b.ndim - 1))
    a, b = np.moveaxis(a, -1, ax), np.moveaxis(b, -1, bx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # NumPy 2's 2-vectors
        check(lambda a, b: np.cross(a, b, axisa=ax, axisb=bx), a, b)
        if 3 in (na, nb):
            check(lambda a, b: np.cross(a, b, axisa=ax, axisb=bx, axisc=0), a, b)


def test_cross_axis_and_2_vectors():
    a = np.arange(6.0).reshape(3, 2) / 3  # two 3-vectors along axis 0
    b = np.array([[0.5, -1.0], [1.0, 0.0], [2.0, 0.25]])
    check(lambda a, b: np.cross(a, b, axis=0), a, b)
    with pytest.warns(DeprecationWarning):
        out = np.cross(td.tensor([1.0, 2.0], requires_grad=True), td.tensor([2.0, 1.0]))
    assert out.shape == () and out.item() == 1.0 * 1.0 - 2.0 * 2.0


# ---------------------------------------------------------------------------------------------
# joins, splits, insertions, rearrangements
# ---------------------------------------------------------------------------------------------
@FEW
@given(a=arrays((2, 3)), b=arrays((2, 2)), v=arrays((3,)))
def test_append(a, b, v):
    check(lambda a, b: np.append(a, b, axis=1), a, b)
    check(lambda a, v: np.append(a, v), a, v)
    check(lambda a: np.append(a, [1.0, 2.0]), a)
    check(lambda v: np.append([0.5], v), v)


@FEW
@given(a=arrays((3, 4)), v=arrays((2,)), data=st.data())
def test_insert(a, v, data):
    check(lambda a, v: np.insert(a, 2, v), a, v)
    check(lambda a, v: np.insert(a, [1, 3], v, axis=1), a, data.draw(arrays((3, 2))))
    check(lambda a, v: np.insert(a, 1, v[0], axis=0), a, v)
    check(lambda a, v: np.insert(a, slice(0, 4, 2), v, axis=1), a, v[:1])
    check(lambda a, s: np.insert(a, [0, 0, 4], s), a, np.array(1.5))
    check(lambda a: np.insert(a, 1, [7.0, 8.0, 9.0, 1.0], axis=0), a)


def test_insert_casts_values_to_the_array_dtype():
    a = td.tensor(np.ones(3, np.float32), requires_grad=True)
    v = td.tensor(np.array([2.0, 3.0]), requires_grad=True)
    out = np.insert(a, 1, v)
    assert out.dtype == np.float32
    (out * np.arange(5.0, dtype=np.float32)).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [0.0, 3.0, 4.0])
    assert v.grad.dtype == np.float64
    np.testing.assert_array_equal(v.grad.numpy(), [1.0, 2.0])


@FEW
@given(a=arrays((3, 4)))
def test_delete(a):
    check(lambda a: np.delete(a, 1, axis=0), a)
    check(lambda a: np.delete(a, [0, 2], axis=1), a)
    check(lambda a: np.delete(a, [1, 5, 11]), a)
    check(lambda a: np.delete(a, np.array([True, False, True, False]), axis=1), a)


@FEW
@given(data=st.data())
def test_stacks(data):
    v, w = data.draw(arrays((3,))), data.draw(arrays((3,)))
    m = data.draw(arrays((3, 2)))
    check(lambda v, m: np.column_stack([v, m]), v, m)
    check(lambda v, w: np.column_stack((v, w, v)), v, w)
    check(lambda v, m: np.dstack([v, w]) * np.dstack([m[:, 0], m[:, 1]]), v, m)
    check(lambda m: np.dstack([m, m[::-1]]), m)
    check(lambda v, w: np.vstack([v, w], dtype=np.float64, casting="same_kind"), v, w)
    check(lambda v, w: np.hstack((v, w), casting="same_kind"), v, w)
    check(lambda v, w: np.stack((v, w), axis=1, casting="same_kind"), v, w)
    check(lambda v, w: np.concatenate((v, w), casting="same_kind"), v, w)
    if hasattr(np, "row_stack"):  # deprecated in NumPy 2; it calls np.vstack(..., casting=)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            check(lambda v, m: np.row_stack([v, m.T.reshape(-1)[:3]]), v, m)


def test_join_dtype_casts():
    v = td.tensor([1.0, 2.0], requires_grad=True)
    out = np.vstack([v, v], dtype=np.float32, casting="same_kind")
    assert out.dtype == np.float32 and out.requires_grad
    out.sum().backward()
    assert v.grad.dtype == np.float64 and np.all(v.grad.numpy() == 2.0)


@FEW
@given(data=st.data())
def test_splits(data):
    a = data.draw(arrays((4, 2, 2)))
    check(lambda a: np.hsplit(a, 2)[1] * np.hsplit(a, [1])[0], a)
    check(lambda a: np.vsplit(a, [1, 3])[1], a)
    check(lambda a: np.dsplit(a, 2)[0] - 2 * np.dsplit(a, 2)[1], a)
    check(lambda v: np.hsplit(v, 2)[1], a[:, 0, 0].copy())
    parts = np.hsplit(td.tensor(a, requires_grad=True), 2)
    assert isinstance(parts, list) and len(parts) == 2


@SOME
@given(data=st.data(), k=st.integers(-5, 5))
def test_flips_rotations_rollaxis(data, k):
    a = data.draw(arrays(shapes(min_dims=2, max_dims=3)))
    check(np.flipud, a)
    check(np.fliplr, a)
    axes = data.draw(st.permutations(range(a.ndim)).map(lambda p: tuple(p[:2])))
    check(lambda a: np.rot90(a, k, axes), a)
    ax = data.draw(st.integers(-a.ndim, a.ndim - 1))
    start = data.draw(st.integers(0, a.ndim))
    check(lambda a: np.rollaxis(a, ax, start), a)


def test_atleast_nd_take_several_arguments():
    s, v, m = np.array(1.5), np.array([1.0, 2.0]), np.ones((2, 3))
    ts = [td.tensor(x, requires_grad=True) for x in (s, v, m)]
    for f in (np.atleast_1d, np.atleast_2d, np.atleast_3d):
        outs, expected = f(*ts), f(s, v, m)
        assert isinstance(outs, tuple) and len(outs) == 3
        for o, e in zip(outs, expected):
            assert isinstance(o, td.Tensor) and o.requires_grad and o.shape == e.shape
        assert f(ts[1]).shape == f(v).shape  # one argument: the tensor itself
        sum(o.sum() for o in outs).backward()
    for t in ts:
        np.testing.assert_array_equal(t.grad.numpy(), np.full(t.shape, 3.0))
    assert td.atleast_3d(td.tensor([1.0, 2.0])).shape == (1, 2, 1)


@SOME
@given(data=st.data(), axis=st.sampled_from([None, 0, -1]), stable=st.booleans())
def test_sort(data, axis, stable):
    a = data.draw(arrays(shapes(min_dims=1, max_dims=3), GRID, unique=True))
    check(lambda a: np.sort(a, axis=axis, kind="stable" if stable else None), a)
    check(lambda a: np.sort(a, axis, stable=True), a)


# ---------------------------------------------------------------------------------------------
# selections
# ---------------------------------------------------------------------------------------------
@FEW
@given(data=st.data())
def test_select(data):
    shape = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=2, max_side=3))
    x, y, d = (data.draw(arrays(s, GRID)) for s in shape.input_shapes)
    check(lambda x, y: np.select([x > 0, y < 0.5], [x * y, y], default=-1.0), x, y)
    check(lambda x, y, d: np.select([x > 0, y < 0.5], [x, 2.0], d), x, y, d,
          rg=[True, False, True])
    check(lambda x, y, d: np.select([x > 0], [x], d), x, y, d, rg=[False, False, True])


@FEW
@given(x=arrays(shapes(min_dims=0, max_dims=2), GRID))
def test_piecewise(x):
    check(lambda x: np.piecewise(x, [x < -1, x > 1], [lambda v: v ** 2, lambda v: 3 * v,
                                                       lambda v: -v]), x)
    check(lambda x: np.piecewise(x, [x < 0, x >= 0], [lambda v, c: v - c,
                                                      lambda v, c: np.exp(v) * c], 2.0), x)
    y = np.concatenate([x.ravel(), [-1.5625, 0.0625, 1.5625]])  # every branch taken
    check(lambda y: np.piecewise(y, [y < 0.5], [lambda v: np.sin(v)]), y)
    check(lambda y: np.piecewise(y, [y < 0, y >= 0], [-1.0, lambda v: v * 2]), y)
    check(lambda y: np.piecewise(y, y > 1, [lambda v: v * 2, 0.5]), y)


def test_piecewise_functions_closing_over_tensors_record():
    x = td.tensor([-1.0, 0.5, 2.0])  # a tensor (no grad): NumPy hands piecewise to tapediff
    c = td.tensor(3.0, requires_grad=True)
    out = np.piecewise(x, [x < 0, x >= 0], [lambda v: v * c, lambda v: c * c])
    np.testing.assert_allclose(out.numpy(), [-3.0, 9.0, 9.0])
    out.sum().backward()
    assert c.grad.item() == pytest.approx(-1.0 + 2 * 6.0)
    with pytest.raises(RuntimeError, match="requires grad"):  # NumPy's own piecewise: no drop
        a = np.array([-1.0, 0.5])
        np.piecewise(a, [a < 0, a >= 0], [lambda v: v * c, 0.0])


# ---------------------------------------------------------------------------------------------
# sequences, numerical derivatives, integrals, polynomials, convolutions, interpolation
# ---------------------------------------------------------------------------------------------
@SOME
@given(data=st.data(), num=st.integers(0, 6), endpoint=st.booleans())
def test_linspace(data, num, endpoint):
    shape = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3))
    s, e = (data.draw(arrays(sh)) for sh in shape.input_shapes)
    axis = data.draw(st.integers(-1 - len(shape.result_shape), len(shape.result_shape)))
    check(lambda s, e: np.linspace(s, e, num, endpoint=endpoint, axis=axis), s, e)
    check(lambda e: np.linspace(0.5, e, num, endpoint), e)
    if num > int(endpoint):  # a step exists
        check(lambda s, e: np.linspace(s, e, num, endpoint, retstep=True)[1] * 2.0, s, e)


def test_linspace_keeps_float32_and_returns_the_step():
    s = td.tensor(np.float32(1.0), requires_grad=True)
    y, step = np.linspace(s, 3.0, 5, retstep=True)
    assert y.dtype == np.float32 and step.dtype == np.float32
    np.testing.assert_array_equal(y.numpy(), np.linspace(np.float32(1.0), 3.0, 5))
    y.sum().backward()
    assert s.grad.item() == pytest.approx(1 + 0.75 + 0.5 + 0.25)


@SOME
@given(data=st.data(), edge_order=st.sampled_from([1, 2]))
def test_gradient(data, edge_order):
    f = data.draw(arrays(shapes(min_dims=1, max_dims=3, min_side=3)))
    check(lambda f: np.gradient(f, edge_order=edge_order)[0] if f.ndim > 1
          else np.gradient(f, edge_order=edge_order), f)
    axis = data.draw(st.integers(-f.ndim, f.ndim - 1))
    check(lambda f, h: np.gradient(f, h, axis=axis, edge_order=edge_order), f,
          np.array(0.5 + data.draw(st.floats(0, 1))))
    n = f.shape[axis]
    x = np.cumsum(data.draw(arrays((n,), st.floats(0.25, 1.0))))
    check(lambda f: np.gradient(f, x, axis=axis, edge_order=edge_order), f)
    if f.ndim == 2:
        x1 = np.cumsum(data.draw(arrays((f.shape[1],), st.floats(0.25, 1.0))))
        check(lambda f: np.gradient(f, 2.0, x1, edge_order=edge_order)[1], f)
        check(lambda f: np.gradient(f, 2.0, x1, edge_order=edge_order)[0], f)


def test_gradient_returns_a_tuple_over_several_axes():
    f = td.tensor(np.arange(12.0).reshape(3, 4) ** 2, requires_grad=True)
    out = np.gradient(f)
    assert isinstance(out, tuple) and len(out) == 2
    for o, e in zip(out, np.gradient(np.arange(12.0).reshape(3, 4) ** 2)):
        np.testing.assert_allclose(o.numpy(), e)


@SOME
@given(data=st.data())
def test_trapezoid(data):
    y, axis = data.draw(array_and_axis())
    n = y.shape[axis]
    x = np.cumsum(data.draw(arrays((n,), st.floats(0.25, 1.0))))
    check(lambda y: np.trapezoid(y, axis=axis), y)
    check(lambda y: np.trapezoid(y, dx=0.3, axis=axis), y)
    check(lambda y, x: np.trapezoid(y, x, axis=axis), y, x)
    xs = np.cumsum(data.draw(arrays(y.shape, st.floats(0.25, 1.0))), axis=axis)
    check(lambda y, x: np.trapezoid(y, x=x, axis=axis), y, xs)


@SOME
@given(data=st.data())
def test_polyval(data):
    p = data.draw(arrays(st.integers(1, 5)))
    x = data.draw(arrays(shapes(min_dims=0, max_dims=2)))
    check(np.polyval, p, x)
    check(lambda x: np.polyval([1.5, -2.0, 0.5], x), x)


@SOME
@given(data=st.data(), mode=st.sampled_from(["full", "same", "valid"]))
def test_convolve_correlate(data, mode):
    a = data.draw(arrays(st.integers(1, 5)))
    v = data.draw(arrays(st.integers(1, 5)))
    for f in (np.convolve, np.correlate):
        check(lambda a, v: f(a, v, mode), a, v, atol=1e-12)
        check(lambda a, v: f(a, v, mode=mode), a, v, rg=[True, False], atol=1e-12)


@SOME
@given(data=st.data(), bounds=st.sampled_from([(None, None), (-3.0, 4.0)]))
def test_interp(data, bounds):
    xp = np.sort(data.draw(arrays(st.integers(1, 5), GRID, unique=True)))
    fp = data.draw(arrays(xp.shape))
    x = data.draw(arrays(shapes(min_dims=0, max_dims=2),
                         st.integers(-50, 50).map(lambda i: i / 16 + 1 / 64)))
    left, right = bounds
    check(lambda x: np.interp(x, xp, fp, left, right), x)
    check(lambda x, fp: np.interp(x, xp, fp, left=left, right=right), x, fp)
    check(lambda fp: np.interp(x, xp, fp), fp)
    check(lambda x, fp: np.interp(x, xp, fp, period=8.0), x, fp)


def test_interp_slopes_and_float32():
    xp, fp = np.array([0.0, 1.0, 3.0]), np.array([1.0, 3.0, 2.0])
    x = td.tensor(np.array([-1.0, 0.0, 0.5, 1.0, 2.0, 3.0, 4.0], np.float32), requires_grad=True)
    out = np.interp(x, xp, fp)
    assert out.dtype == np.float64  # as NumPy's
    np.testing.assert_array_equal(out.numpy(), np.interp(x.detach().numpy(), xp, fp))
    out.sum().backward()
    assert x.grad.dtype == np.float32
    # 0 outside, the segment on the right at a knot, the last segment at the end
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 2.0, 2.0, -0.5, -0.5, -0.5, 0.0])


# ---------------------------------------------------------------------------------------------
# order statistics, averages
# ---------------------------------------------------------------------------------------------
METHODS = ["linear", "lower", "higher", "midpoint", "nearest", "inverted_cdf",
           "averaged_inverted_cdf", "closest_observation", "interpolated_inverted_cdf",
           "hazen", "weibull", "median_unbiased", "normal_unbiased"]


@st.composite
def axis_of(draw, ndim):
    return draw(st.one_of(st.none(), st.integers(-ndim, ndim - 1),
                          st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim,
                                   unique=True).map(tuple)))


@SOME
@given(data=st.data(), keepdims=st.booleans(), method=st.sampled_from(METHODS))
def test_quantiles(data, keepdims, method):
    a = data.draw(arrays(shapes(max_dims=3), GRID, unique=True))
    axis = data.draw(axis_of(a.ndim))
    q = data.draw(st.one_of(st.floats(0, 1), arrays(st.integers(1, 3), st.floats(0, 1))))
    check(lambda a: np.quantile(a, q, axis=axis, method=method, keepdims=keepdims), a)
    check(lambda a: np.percentile(a, np.asarray(q) * 100, axis, method=method), a)
    check(lambda a: np.median(a, axis=axis, keepdims=keepdims), a)


@SOME
@given(data=st.data(), keepdims=st.booleans())
def test_nan_quantiles(data, keepdims):
    a = data.draw(arrays(shapes(max_dims=2), GRID, unique=True))
    a.ravel()[data.draw(st.lists(st.integers(0, a.size - 1), max_size=a.size))] = np.nan
    axis = data.draw(axis_of(a.ndim))
    q = data.draw(st.floats(0, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        check_with_nans(lambda a: np.nanmedian(a, axis=axis, keepdims=keepdims), a)
        check_with_nans(lambda a: np.nanquantile(a, q, axis=axis, keepdims=keepdims), a)
        check_with_nans(lambda a: np.nanpercentile(a, [q * 100, 50.0], axis=axis), a)
        check_with_nans(lambda a: np.median(a, axis=axis), a)  # NaN where a slice has one
        check_with_nans(lambda a: np.quantile(a, q, axis=axis), a)


def check_with_nans(fn, a):
    """``check`` for inputs holding NaNs: NumPy's values (NaN where NumPy's are); the
    gradient of the finite outputs against central differences at the finite inputs, and
    0 at the NaNs."""
    leaf = td.tensor(a, requires_grad=True)
    out = fn(leaf)
    expected = np.asarray(fn(a))
    assert isinstance(out, td.Tensor) and out.dtype == expected.dtype
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-13)
    w = np.where(np.isnan(expected), 0.0, projection(expected.shape))
    (out * w).sum().backward()
    fin = ~np.isnan(a)

    def f(x):
        b = a.copy()
        b[fin] = x
        r = np.asarray(fn(b))
        return float(np.sum(np.where(np.isnan(r), 0.0, r) * w))

    (num,) = numerical_grad(f, [a[fin]])
    g = leaf.grad.numpy()
    np.testing.assert_allclose(g[fin], num, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(g[~fin], 0.0)


def test_median_of_an_even_count_splits_the_gradient():
    out, (g,) = backward(np.median, [3.0, 1.0, 4.0, 2.0], weights=1.0)
    assert out.item() == 2.5
    np.testing.assert_array_equal(g.numpy(), [0.5, 0.0, 0.0, 0.5])
    out, (g,) = backward(lambda a: np.quantile(a, 0.4), [3.0, 1.0, 4.0, 2.0], weights=1.0)
    np.testing.assert_allclose(out.item(), np.quantile([3.0, 1.0, 4.0, 2.0], 0.4))
    np.testing.assert_allclose(g.numpy(), [0.2, 0.0, 0.0, 0.8])  # 1.2 of the way to 3


@SOME
@given(data=st.data(), returned=st.booleans())
def test_average(data, returned):
    a = data.draw(arrays(shapes(max_dims=3)))
    axis = data.draw(axis_of(a.ndim))
    wshape = a.shape if axis is None or data.draw(st.booleans()) else tuple(
        a.shape[d] for d in (axis if isinstance(axis, tuple) else (axis,)))
    w = data.draw(arrays(wshape, st.floats(0.25, 2.0)))

    def first(r):
        return r[0] * r[1] if returned else r

    check(lambda a: first(np.average(a, axis, returned=returned)), a)
    check(lambda a, w: first(np.average(a, axis, w, returned)), a, w)
    check(lambda a, w: np.average(a, axis=axis, weights=w, keepdims=True), a, w)


# ---------------------------------------------------------------------------------------------
# elementwise
# ---------------------------------------------------------------------------------------------
SPECIAL = st.sampled_from([np.nan, np.inf, -np.inf])


@pytest.mark.filterwarnings("ignore:overflow")  # summing the float max NumPy puts for inf
@SOME
@given(a=arrays(shapes(min_dims=0, max_dims=2), st.one_of(FLOATS, SPECIAL)), dtype=DTYPES)
def test_nan_to_num(a, dtype):
    a = a.astype(dtype)
    for kw in ({}, {"nan": 1.5, "posinf": 9.0, "neginf": -9.0}):
        out, (g,) = backward(lambda t: np.nan_to_num(t, **kw), a, dtype=dtype,
                             weights=np.ones(a.shape))
        assert out.dtype == dtype
        np.testing.assert_array_equal(out.numpy(), np.nan_to_num(a, **kw))
        np.testing.assert_array_equal(g.numpy(), np.isfinite(a))  # 1 where kept, else 0
    check(lambda t: np.nan_to_num(t) * 2.0, np.where(np.isfinite(a), a, 0.5).astype(float))


@SOME
@given(data=st.data())
def test_fmax_fmin(data):
    shape = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3))
    sa, sb = shape.input_shapes
    a = data.draw(arrays(sa, st.one_of(GRID, st.just(np.nan))))  # NaNs in a only: the
    b = data.draw(arrays(sb, GRID))                               # result stays finite
    nan = np.isnan(a).any()  # central differences cannot step from NaN: see the next test
    for f in (np.fmax, np.fmin):
        check(f, a, b, rg=[not nan, True])
        check(f, b, a, rg=[True, not nan])
        check(lambda b: f(b, 0.03125), b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_fmax_fmin_ties_and_nans(dtype):
    nan = np.nan
    a, b = [1.0, nan, nan, 2.0, 0.5], [1.0, 3.0, nan, nan, 0.7]
    for f, ga, gb in ((np.fmax, [0.5, 0, 1, 1, 0], [0.5, 1, 0, 0, 1]),
                      (np.fmin, [0.5, 0, 1, 1, 1], [0.5, 1, 0, 0, 0])):
        out, grads = backward(f, a, b, dtype=dtype, weights=np.ones(5))
        np.testing.assert_array_equal(out.numpy(), f(np.array(a, dtype), np.array(b, dtype)))
        np.testing.assert_array_equal(grads[0].numpy(), ga)
        np.testing.assert_array_equal(grads[1].numpy(), gb)


INTERVALS = {"arcsinh": (-3.0, 3.0), "arccosh": (1.05, 4.0), "arctanh": (-0.95, 0.95),
             "deg2rad": (-200.0, 200.0), "radians": (-200.0, 200.0), "rad2deg": (-3.0, 3.0),
             "degrees": (-3.0, 3.0), "sinc": (-2.5, 2.5)}


@SOME
@given(data=st.data(), name=st.sampled_from(sorted(INTERVALS)))
def test_elementwise(data, name):
    lo, hi = INTERVALS[name]
    x = data.draw(arrays(shapes(min_dims=0, max_dims=2), st.floats(lo, hi)))
    check(getattr(np, name), x, rtol=1e-14, atol=1e-15)


@SOME
@given(data=st.data())
def test_logaddexp2(data):
    shape = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3))
    a, b = (data.draw(arrays(s, st.floats(-30, 30))) for s in shape.input_shapes)
    check(np.logaddexp2, a, b, rtol=1e-14, atol=0)
    check(lambda a: np.logaddexp2(a, 1.0), a, rtol=1e-14, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_elementwise_edges(dtype):
    x = np.array([0.0, -0.0, 1e-30, -1e15, 3e4, -0.75], dtype)
    out, (g,) = backward(np.arcsinh, x, dtype=dtype, weights=np.ones(6))
    np.testing.assert_array_equal(out.numpy(), np.arcsinh(x))
    np.testing.assert_allclose(g.numpy(), 1 / np.sqrt(1 + x.astype(np.float64) ** 2), rtol=1e-5)
    out, (g,) = backward(np.sinc, [0.0, 0.5, -1.0], dtype=dtype, weights=np.ones(3))
    np.testing.assert_array_equal(out.numpy(), np.sinc(np.array([0.0, 0.5, -1.0], dtype)))
    assert g.numpy()[0] == 0.0 and g.numpy()[2] == pytest.approx(1.0, rel=1e-5)
    with np.errstate(invalid="ignore", divide="ignore"):
        out, (g,) = backward(np.arccosh, [1.0, 0.5, 2.0], dtype=dtype, weights=np.ones(3))
        np.testing.assert_array_equal(out.numpy(), np.arccosh(np.array([1.0, 0.5, 2.0], dtype)))
        assert g.numpy()[0] == np.inf and np.isnan(g.numpy()[1])
        out, (g,) = backward(np.arctanh, [1.0, -1.0, 0.0], dtype=dtype, weights=np.ones(3))
        np.testing.assert_array_equal(out.numpy(), [np.inf, -np.inf, 0.0])
        assert g.numpy()[2] == 1.0 and np.all(np.isinf(g.numpy()[:2]))
    for f in (np.deg2rad, np.rad2deg, np.arcsinh, np.arctanh, np.sinc):
        out, _ = backward(f, [0.25, -0.5], dtype=dtype)
        assert out.dtype == dtype


def test_real_imag_conj_angle():
    a = np.array([-1.5, -0.0, 0.0, 2.0])
    for f in (np.real, np.conj, np.conjugate):
        out, (g,) = backward(f, a, weights=np.arange(4.0))
        np.testing.assert_array_equal(out.numpy(), f(a))
        np.testing.assert_array_equal(g.numpy(), np.arange(4.0))
    for f in (np.imag, np.angle, lambda t: np.angle(t, deg=True)):
        t = td.tensor(a, requires_grad=True)
        out = f(t)
        assert isinstance(out, td.Tensor) and not out.requires_grad  # gradient 0 (PyTorch's)
        np.testing.assert_array_equal(out.numpy(), f(a))


def test_copy_full_like_zeros_like():
    a = td.tensor(np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), requires_grad=True)
    c = np.copy(a, subok=True)
    assert c.requires_grad and c.dtype == np.float32
    f = td.tensor(np.float32(0.5), requires_grad=True)
    r = td.tensor(np.array([1.0, -1.0], np.float32), requires_grad=True)
    full = np.full_like(a, f)
    rows = np.full_like(a, r)
    assert full.dtype == np.float32 and full.requires_grad
    np.testing.assert_array_equal(rows.numpy(), [[1.0, -1.0], [1.0, -1.0]])
    (c * 2 + full * np.array([[1.0, 2.0], [3.0, 4.0]], np.float32) + rows * 3).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), np.full((2, 2), 2.0))
    assert f.grad.item() == 10.0 and r.grad.dtype == np.float32
    np.testing.assert_array_equal(r.grad.numpy(), [6.0, 6.0])
    for fn, value in ((np.zeros_like, 0.0), (np.ones_like, 1.0)):
        z = fn(a)
        assert not z.requires_grad and z.dtype == np.float32 and np.all(z.numpy() == value)
    assert not np.full_like(a, 2.0).requires_grad
    np.testing.assert_array_equal(np.full_like(a, 2.0, shape=(3,)).numpy(), [2.0, 2.0, 2.0])


@pytest.mark.parametrize("call", [
    lambda x: np.diff(x), lambda x: np.tril(x.reshape(2, 2)), lambda x: np.kron(x, x),
    lambda x: np.cross(x[:3], x[1:]), lambda x: np.quantile(x, 0.3),
    lambda x: np.median(x), lambda x: np.interp(x, [0.0, 1.0], [1.0, 2.0]),
    lambda x: np.convolve(x, x[:2]), lambda x: np.polyval(x, 0.5),
    lambda x: np.trapezoid(x), lambda x: np.nan_to_num(x), lambda x: np.fmax(x, 0.5),
    lambda x: np.arcsinh(x), lambda x: np.sinc(x), lambda x: np.linspace(x[0], x[1], 3),
    lambda x: np.gradient(x), lambda x: np.average(x, weights=x),
    lambda x: np.sort(x, axis=None),
], ids=["diff", "tril", "kron", "cross", "quantile", "median", "interp", "convolve",
        "polyval", "trapezoid", "nan_to_num", "fmax", "arcsinh", "sinc", "linspace",
        "gradient", "average", "sort"])
def test_float32_stays_float32(call):
    x = np.array([0.25, 0.5, 1.25, 2.0], np.float32)
    out, (g,) = backward(call, x, dtype=np.float32)
    expected = np.asarray(call(x))
    assert out.dtype == expected.dtype and g.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# einsum
# ---------------------------------------------------------------------------------------------
EINSUM = [
    ("sublist transpose", lambda a: np.einsum(a, [0, 1], [1, 0]), [(2, 3)]),
    ("sublist matmul", lambda a, b: np.einsum(a, [0, 1], b, [1, 2], [0, 2]), [(2, 3), (3, 4)]),
    ("sublist implicit", lambda a, b: np.einsum(a, [0, 1], b, [1, 2]), [(2, 3), (3, 4)]),
    ("sublist ellipsis", lambda a: np.einsum(a, [Ellipsis, 1]), [(2, 3)]),
    ("sublist ellipsis out", lambda a: np.einsum(a, [0, Ellipsis], [Ellipsis]), [(2, 3)]),
    ("size-1 broadcast", lambda a, b: np.einsum("mnd,mdo->mno", a, b), [(1, 4, 2), (3, 2, 5)]),
    ("ellipsis batch", lambda a, b: np.einsum("...ij,...jk", a, b), [(2, 3, 4), (1, 4, 5)]),
    ("ellipsis last", lambda a, b: np.einsum("ij...,jk...->ik...", a, b),
     [(3, 4, 2), (4, 5, 1)]),
    ("ellipsis sum", lambda a: np.einsum("...i->...", a), [(2, 3)]),
    ("ellipsis broadcast", lambda a, b: np.einsum("...,...", a, b), [(2, 3), (3,)]),
    ("ellipsis uneven", lambda a, b: np.einsum("i...,i...->...", a, b), [(2, 3), (2, 1)]),
    ("optimize", lambda a: np.einsum("ii->i", a, optimize=True), [(3, 3)]),
    ("broadcast outer", lambda a, b: np.einsum("ij,ij->ij", a, b), [(1, 3), (2, 1)]),
    ("three operands", lambda a, b, c: np.einsum("ij,jk,k->i", a, b, c),
     [(2, 3), (3, 4), (4,)]),
    ("td.einsum sublist", lambda a, b: td.einsum(a, [0], b, [0]) if isinstance(a, td.Tensor)
     else np.einsum(a, [0], b, [0]), [(3,), (3,)]),
]


@pytest.mark.parametrize("fn,shapes_", [(f, s) for _, f, s in EINSUM],
                         ids=[n for n, _, _ in EINSUM])
def test_einsum_forms(fn, shapes_):
    rng = np.random.default_rng(len(shapes_))
    check(fn, *(rng.standard_normal(s) for s in shapes_), atol=1e-12)


@pytest.mark.parametrize("call,match", [
    (lambda a: np.einsum("...i->i", a), "ellipsis"),
    (lambda a: np.einsum("ij->ii", a), "multiple times"),
    (lambda a: np.einsum("ij->k", a), "'k'"),
    (lambda a: np.einsum("i1", a), "letters"),
    (lambda a: np.einsum("ij,jk", a, a), "sizes 3 and 2"),
    (lambda a: np.einsum("ii", a), "don't match"),
    (lambda a: np.einsum("ijk", a), "do not match a 2-d"),
    (lambda a: np.einsum(a, [0, 99]), "valid range"),
], ids=["no ellipsis out", "repeated out", "unknown out", "digit", "sizes", "diagonal",
        "too many", "sublist range"])
def test_einsum_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(td.tensor(np.ones((2, 3)), requires_grad=True))


# ---------------------------------------------------------------------------------------------
# against PyTorch
# ---------------------------------------------------------------------------------------------

@needs_torch
@FEW
@given(data=st.data(), dtype=DTYPES, n=st.integers(1, 2))
def test_against_torch_shapes(data, dtype, n):
    a, axis = data.draw(array_and_axis(min_side=3, min_dims=2))
    against_torch(lambda x: np.diff(x, n, axis), lambda x: torch.diff(x, n, axis), a,
                  dtype=dtype)
    against_torch(lambda x: td.diff(x, n, dim=axis), lambda x: torch.diff(x, n, axis), a,
                  dtype=dtype)
    k = data.draw(st.integers(-2, 2))
    against_torch(lambda x: np.tril(x, k), lambda x: torch.tril(x, k), a, dtype=dtype)
    against_torch(lambda x: td.triu(x, k), lambda x: torch.triu(x, k), a, dtype=dtype)
    against_torch(lambda x: np.rot90(x, k, (0, 1)), lambda x: torch.rot90(x, k, (0, 1)), a,
                  dtype=dtype)
    against_torch(lambda x: np.kron(x, x[:1]), lambda x: torch.kron(x, x[:1]), a, dtype=dtype)
    v = data.draw(arrays(st.integers(1, 4)))
    against_torch(lambda x: np.diag(x, k), lambda x: torch.diag(x, k), v, dtype=dtype)
    against_torch(lambda x: np.diag(x, k), lambda x: torch.diag(x, k), a[..., 0, :, :]
                  if a.ndim == 3 else a, dtype=dtype)
    against_torch(lambda x: np.trapezoid(x, axis=axis), lambda x: torch.trapezoid(x, dim=axis),
                  a, dtype=dtype)


@needs_torch
@FEW
@given(data=st.data(), dtype=DTYPES)
def test_against_torch_cross_sort_quantile(data, dtype):
    a, b = data.draw(arrays((2, 3))), data.draw(arrays((1, 3)))
    against_torch(np.cross, lambda x, y: torch.linalg.cross(x, y), a, b, dtype=dtype)
    s = data.draw(arrays(shapes(min_dims=1, max_dims=2), GRID, unique=True))
    against_torch(lambda x: np.sort(x, axis=-1), lambda x: torch.sort(x, -1).values, s,
                  dtype=dtype)
    q = np.array(data.draw(st.lists(st.floats(0, 1), min_size=1, max_size=3)), dtype)
    ax = data.draw(st.integers(-s.ndim, s.ndim - 1))
    against_torch(lambda x: np.quantile(x, q, axis=ax),
                  lambda x: torch.quantile(x, torch.tensor(q), dim=ax), s, dtype=dtype)
    against_torch(lambda x: td.quantile(x, q, dim=ax, keepdim=True),
                  lambda x: torch.quantile(x, torch.tensor(q), dim=ax, keepdim=True), s,
                  dtype=dtype)
    # np.median averages the two middle values: torch.quantile(x, 0.5), not torch.median
    against_torch(lambda x: np.median(x, axis=ax), lambda x: torch.quantile(x, 0.5, dim=ax),
                  s, dtype=dtype)


@needs_torch
@FEW
@given(data=st.data(), dtype=DTYPES)
def test_against_torch_elementwise(data, dtype):
    shape = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3))
    sa, sb = shape.input_shapes
    # a on odd multiples of 1/16, b on multiples of 1/8: never tied (PyTorch's fmax gives a
    # tie's gradient to the first input, tapediff's half to each, as maximum)
    a = data.draw(arrays(sa, st.one_of(GRID, st.just(np.nan))))
    b = data.draw(arrays(sb, st.one_of(st.integers(-20, 20).map(lambda i: i / 8),
                                       st.just(np.nan))))
    against_torch(np.fmax, torch.fmax, a, b, dtype=dtype)
    against_torch(np.fmin, torch.fmin, a, b, dtype=dtype)
    special = data.draw(arrays(sa, st.one_of(FLOATS, SPECIAL)))
    against_torch(np.nan_to_num, torch.nan_to_num, special, dtype=dtype)
    x = np.nan_to_num(a)
    against_torch(np.sinc, torch.sinc, np.where(x > 1.5, 0.0, x), dtype=dtype)
    against_torch(np.logaddexp2, torch.logaddexp2, np.nan_to_num(a), np.nan_to_num(b),
                  dtype=dtype)
    against_torch(np.deg2rad, torch.deg2rad, x * 90, dtype=dtype)
    against_torch(np.rad2deg, torch.rad2deg, x, dtype=dtype)
    against_torch(np.arcsinh, torch.asinh, x, dtype=dtype)
    against_torch(np.arctanh, torch.atanh, x / 3, dtype=dtype)
    against_torch(np.arccosh, torch.acosh, np.abs(x) + 1.03125, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# replay: the choices made from values are guarded
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn,x1,x2", [
    (lambda x: np.interp(x, [0.0, 1.0, 3.0], [1.0, 3.0, 2.0]).sum(), [0.5, 2.0], [2.0, -1.0]),
    (lambda x: np.nan_to_num(x / (x - 1.0)).sum(), [2.0, 3.0], [1.0, 3.0]),
    (lambda x: np.quantile(x, 0.3), [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]),
    (lambda x: np.median(x ** 2), [1.0, 2.0, 3.0, 0.5], [3.0, 1.0, 2.0, 4.0]),
    (lambda x: (np.fmax(x, 1.0) * np.sinc(x - 2.0)).sum(), [0.5, 2.0], [1.5, 0.5]),
    (lambda x: np.angle(x).sum() * x.sum(), [1.0, 2.0], [-1.0, 2.0]),
], ids=["interp", "nan_to_num", "quantile", "median", "fmax-sinc", "angle"])
def test_replay_follows_value_dependent_choices(fn, x1, x2):
    fg = td.value_and_grad(fn, replay=True)
    for x in (x1, x2, x1):
        x = np.array(x)
        with np.errstate(divide="ignore", invalid="ignore"):
            v, g = fg(x)
            v0, g0 = td.value_and_grad(fn)(x)
        np.testing.assert_allclose(v, v0, rtol=1e-12)
        np.testing.assert_allclose(g, g0, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# bad arguments
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call,exc,match", [
    (lambda x: np.quantile(x, 0.5, method="bogus"), ValueError, "not a valid method"),
    (lambda x: np.quantile(x, 1.5), ValueError, r"range \[0, 1\]"),
    (lambda x: np.quantile(x, x[0]), TypeError, "with respect to q"),
    (lambda x: np.quantile(x, 0.5, method="inverted_cdf", weights=np.ones(4)),
     NotImplementedError, "weights"),
    (lambda x: np.diff(x, -1), ValueError, "must be non-negative"),
    (lambda x: np.diff(x[0]), ValueError, "at least one dimensional"),
    (lambda x: np.cross(x, x), ValueError, "dimension must be 2 or 3"),
    (lambda x: np.cross(x[:3], x[:3], axisa=2), np.exceptions.AxisError, "axisa"),
    (lambda x: np.diag(x.reshape(1, 2, 2)), ValueError, "1- or 2-d"),
    (lambda x: np.interp(0.5, x, x), TypeError, "xp"),
    (lambda x: np.interp(x, [0.0, 1.0], [1.0, 2.0, 3.0]), ValueError, "same length"),
    (lambda x: np.convolve(x, x[:0]), ValueError, "cannot be empty"),
    (lambda x: np.select([x > 0], [x, x]), ValueError, "same length"),
    (lambda x: np.select([x], [x]), TypeError, "invalid entry 0"),
    (lambda x: np.piecewise(x, [x > 0], [1, 2, 3]), ValueError, "functions are expected"),
    (lambda x: np.gradient(x[:1]), ValueError, "too small"),
    (lambda x: np.gradient(x, edge_order=3), ValueError, "greater than 2"),
    (lambda x: np.gradient(x, x), TypeError, "coordinate arrays that require grad"),
    (lambda x: np.hsplit(x, 3), ValueError, "equal division"),
    (lambda x: np.vsplit(x, 2), ValueError, "2 or more dimensions"),
    (lambda x: np.average(x, weights=np.ones(3)), TypeError, "Axis must be specified"),
    (lambda x: np.average(x, weights=np.zeros(4)), ZeroDivisionError, "sum to zero"),
    (lambda x: np.nan_to_num(x, nan=x[0]), TypeError, "must not require grad"),
    (lambda x: np.ediff1d(np.arange(3), to_begin=x), TypeError, "same_kind"),
    (lambda x: np.linspace(x[0], x[1], -1), ValueError, "non-negative"),
    (lambda x: np.rot90(x.reshape(2, 2), axes=(0, 0)), ValueError, "Axes must be different"),
    (lambda x: np.sort(x, kind="stable", stable=True), ValueError, "at the same time"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_arguments_raise(call, exc, match):
    x = td.tensor([0.5, 1.0, 1.5, 2.5], requires_grad=True)
    with pytest.raises(exc, match=match):
        call(x)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sinc_near_zero_has_the_taylor_gradient(dtype):
    # sin(s)/s's derivative is inf - inf at subnormal x and cancels badly for small x: the
    # series -pi**2 x / 3 is the answer there (found by hypothesis at x = 2.2e-313)
    xs = np.array([0.0, 2.22507386e-313, 1e-160, 1e-5, -3e-4, 0.7], dtype)
    x = td.tensor(xs, requires_grad=True)
    y = np.sinc(x)
    np.testing.assert_array_equal(y.numpy(), np.sinc(xs))
    y.sum().backward()
    x64 = xs.astype(np.float64)
    s = np.pi * x64
    small = np.abs(s) < 1e-3
    series = np.pi * (-s / 3 + s ** 3 / 30)  # d/dx of 1 - s**2/6 + s**4/120
    direct = (s * np.cos(s) - np.sin(s)) / (np.pi * np.where(small, 1.0, x64) ** 2)
    assert np.all(np.isfinite(x.grad.numpy()))
    np.testing.assert_allclose(x.grad.numpy(), np.where(small, series, direct),
                               rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-300)
