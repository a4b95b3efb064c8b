"""Gradients at non-differentiable points follow PyTorch (README, "Non-differentiable points").

For each convention: a test with exact expected values (closed forms), and a property test
against PyTorch over Hypothesis-drawn inputs that sit on the points exactly (values on a
small grid, so zeros and ties are common; equal values; length-1 axes; 0-d tensors;
``x == c``), in float64 and float32.  Then replay: std and norm gradients stay 0 (not NaN)
when a recording made at a positive spread is replayed at zero spread.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tapediff as td
from helpers import crash_guard

DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
GRID = [-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.5]  # includes 0, ties and .5 (rounding ties)


def _backward(fn, *values, weights=None, dtype=np.float64):
    """``fn`` on leaves made from ``values``; backward of ``(fn(...) * weights).sum()``.
    Returns the output's values and the leaves' gradients as arrays."""
    leaves = [td.tensor(np.asarray(v, dtype), requires_grad=True) for v in values]
    out = fn(*leaves)
    (out if weights is None else out * np.asarray(weights, dtype)).sum().backward()
    for leaf in leaves:
        assert leaf.grad.dtype == dtype
    return out.numpy(), [leaf.grad.numpy() for leaf in leaves]


def _eq(actual, expected):
    np.testing.assert_array_equal(actual, np.asarray(expected, actual.dtype))


# ---------------------------------------------------------------------------------------------
# closed forms
# ---------------------------------------------------------------------------------------------
@DTYPES
def test_abs_relu_sign_at_zero_have_zero_gradient(dtype):
    x = [0.0, -0.0, 2.0, -3.0]
    for fn in (td.abs, np.abs, abs, np.fabs):
        out, (g,) = _backward(fn, x, dtype=dtype)
        _eq(out, [0.0, 0.0, 2.0, 3.0])
        _eq(g, [0.0, 0.0, 1.0, -1.0])
    out, (g,) = _backward(td.relu, x, dtype=dtype)
    _eq(out, [0.0, 0.0, 2.0, 0.0])
    _eq(g, [0.0, 0.0, 1.0, 0.0])
    # sign's gradient is 0 everywhere: never recorded, so x * sign(x) has gradient sign(x)
    for fn in (td.sign, np.sign):
        t = td.tensor(np.asarray(x, dtype), requires_grad=True)
        assert not fn(t).requires_grad
        (t * fn(t)).sum().backward()
        _eq(t.grad.numpy(), [0.0, 0.0, 1.0, -1.0])


@DTYPES
def test_sqrt_at_zero_has_infinite_gradient(dtype):
    out, (g,) = _backward(td.sqrt, [0.0, 4.0], dtype=dtype)
    _eq(out, [0.0, 2.0])
    _eq(g, [np.inf, 0.25])
    _, (g,) = _backward(np.sqrt, [0.0, 4.0], weights=[0.0, 1.0], dtype=dtype)
    assert np.isnan(g[0]) and g[1] == 0.25  # 0 * inf, as PyTorch's grad / (2 sqrt(x))


ZERO_SPREAD = [  # (name, fn, input): the output is 0 and every gradient is exactly 0
    ("std 0-d", td.std, 1.5),
    ("std equal", td.std, [2.0, 2.0, 2.0]),
    ("np.std equal", np.std, [-1.0, -1.0]),
    ("x.std ddof=1", lambda x: x.std(ddof=1), [0.5, 0.5]),
    ("std correction=1", lambda x: td.std(x, correction=1), [0.5, 0.5]),
    ("std len-1 axis", lambda x: td.std(x, axis=1), [[1.0], [2.0]]),
    ("std keepdims", lambda x: td.std(x, axis=0, keepdims=True), [[3.0, 1.0], [3.0, 1.0]]),
    ("var equal", td.var, [2.0, 2.0]),
    ("norm 0", td.norm, [0.0, 0.0]),
    ("norm 0-d", td.norm, 0.0),
    ("np.linalg.norm x-c", lambda x: np.linalg.norm(x - np.array([1.0, -2.0], x.dtype)),
     [1.0, -2.0]),
    ("norm x-x.detach", lambda x: td.norm(x - x.detach()), [1.0, 2.0, 3.0]),
    ("norm 2 axis", lambda x: td.norm(x, 2, axis=-1), [[0.0, 0.0], [0.0, 0.0]]),
    ("norm fro", lambda x: td.norm(x, "fro"), [[0.0, 0.0], [0.0, 0.0]]),
    ("np.linalg.norm 2-d", np.linalg.norm, [[0.0, 0.0], [0.0, 0.0]]),
    ("norm fro axes", lambda x: td.norm(x, axis=(0, 2)), np.zeros((2, 1, 2))),
    ("norm 3-d", td.norm, np.zeros((2, 1, 2))),
    ("norm p=3", lambda x: td.norm(x, 3), [0.0, 0.0]),
    ("norm p=0.5", lambda x: td.norm(x, 0.5, axis=0), [0.0, 0.0]),
    ("norm p=1", lambda x: td.norm(x, 1), [0.0, 0.0]),
    ("norm inf", lambda x: td.norm(x, np.inf), [0.0, 0.0]),
]


@DTYPES
@pytest.mark.parametrize("fn,x", [c[1:] for c in ZERO_SPREAD], ids=[c[0] for c in ZERO_SPREAD])
def test_std_var_norm_at_zero_spread_have_zero_gradient(fn, x, dtype):
    out, (g,) = _backward(fn, x, dtype=dtype)
    assert out.dtype == dtype
    _eq(out, np.zeros(out.shape))
    _eq(g, np.zeros(np.shape(x)))


@DTYPES
def test_std_and_norm_rows_with_and_without_spread(dtype):
    # row 0 has no spread (gradient 0), row 1 the closed form (x - mean) / (n std)
    x = np.array([[2.0, 2.0], [1.0, 3.0]], dtype)
    out, (g,) = _backward(lambda x: td.std(x, axis=1), x, dtype=dtype)
    _eq(out, [0.0, 1.0])
    _eq(g, [[0.0, 0.0], [-0.5, 0.5]])
    # norm per row: 0 at a zero row, x / |x| elsewhere
    out, (g,) = _backward(lambda x: td.norm(x, axis=1), [[0.0, 0.0], [3.0, -4.0]], dtype=dtype)
    _eq(out, [0.0, 5.0])
    _eq(g[0], [0.0, 0.0])
    np.testing.assert_allclose(g[1], [0.6, -0.8], rtol=1e-6)
    # p = 3: sign(x) |x|^2 / |x|_3^2 elsewhere
    out, (g,) = _backward(lambda x: td.norm(x, 3, axis=0), [[0.0, 2.0], [0.0, 0.0]],
                          dtype=dtype)
    _eq(out, [0.0, 2.0])
    _eq(g[:, 0], [0.0, 0.0])
    np.testing.assert_allclose(g[:, 1], [1.0, 0.0], rtol=1e-6)


@DTYPES
def test_std_and_norm_values_unchanged_where_the_radicand_is_positive(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5)).astype(dtype)
    x[1] = 0.5  # one row with zero spread: the masked ("double where") path records
    t = td.tensor(x, requires_grad=True)
    v = td.var(t, axis=1).numpy()
    _eq(td.std(t, axis=1).numpy(), np.sqrt(v))
    s = td.sum(t * t, axis=1).numpy()
    _eq(td.norm(t, axis=1).numpy(), np.sqrt(s))
    s3 = td.sum(td.abs(t) ** 3, axis=0).numpy()
    _eq(td.norm(t, 3, axis=0).numpy(), s3 ** (1.0 / 3))
    # NaN propagates in value and gradient (as PyTorch)
    out, (g,) = _backward(td.std, [np.nan, 1.0], dtype=dtype)
    assert np.isnan(out) and np.isnan(g).all()


@DTYPES
def test_max_min_ties_share_equally_and_maximum_ties_halve(dtype):
    out, (g,) = _backward(td.max, [1.0, 3.0, 3.0, 3.0], dtype=dtype)
    _eq(out, 3.0)
    _eq(g, [0.0, 1 / 3, 1 / 3, 1 / 3])
    out, (g,) = _backward(lambda x: np.min(x, axis=0), [[1.0, 2.0], [1.0, 0.0]], dtype=dtype)
    _eq(out, [1.0, 0.0])
    _eq(g, [[0.5, 0.0], [0.5, 1.0]])
    out, (gx, gy) = _backward(td.maximum, [1.0, 2.0], [1.0, 0.0], dtype=dtype)
    _eq(out, [1.0, 2.0])
    _eq(gx, [0.5, 1.0])
    _eq(gy, [0.5, 0.0])
    out, (gx, gy) = _backward(np.minimum, [1.0, 2.0], [1.0, 0.0], dtype=dtype)
    _eq(out, [1.0, 0.0])
    _eq(gx, [0.5, 0.0])
    _eq(gy, [0.5, 1.0])


@DTYPES
def test_clip_at_the_bounds_gives_x_the_gradient(dtype):
    x = [-1.0, 0.0, 0.5, 1.0, 2.0]
    for fn in (lambda x: td.clip(x, 0.0, 1.0), lambda x: np.clip(x, 0, 1)):
        out, (g,) = _backward(fn, x, dtype=dtype)
        _eq(out, [0.0, 0.0, 0.5, 1.0, 1.0])
        _eq(g, [0.0, 1.0, 1.0, 1.0, 0.0])
    out, (g, glo, ghi) = _backward(td.clip, x, [0.0] * 5, [1.0] * 5, dtype=dtype)
    _eq(g, [0.0, 1.0, 1.0, 1.0, 0.0])
    _eq(glo, [1.0, 0.0, 0.0, 0.0, 0.0])  # a bound gets the gradient only where it is active
    _eq(ghi, [0.0, 0.0, 0.0, 0.0, 1.0])


@DTYPES
def test_clip_with_equal_tensor_bounds(dtype):
    # lo == hi: the active bound is the lower one below it, the upper one above it, x at it.
    # PyTorch differs here: torch.clamp gives neither bound the gradient below (its lower
    # bound's rule requires min < max), so its gradients sum to 0 although the output
    # moves with lo == hi
    out, (g, glo, ghi) = _backward(td.clip, [-1.5, -1.0, 0.0], [-1.0] * 3, [-1.0] * 3,
                                   dtype=dtype)
    _eq(out, [-1.0, -1.0, -1.0])
    _eq(g, [0.0, 1.0, 0.0])
    _eq(glo, [1.0, 0.0, 0.0])
    _eq(ghi, [0.0, 0.0, 1.0])


@DTYPES
def test_sort_ties_give_each_position_to_one_element(dtype):
    # each sorted position's gradient goes whole to the element argsort put there; with a
    # stable sort, tied elements keep their order (as torch.sort(stable=True))
    w = [1.0, 2.0, 3.0, 4.0]
    out, (g,) = _backward(lambda x: np.sort(x, kind="stable"), [2.0, 1.0, 2.0, 2.0], weights=w,
                          dtype=dtype)
    _eq(out, [1.0, 2.0, 2.0, 2.0])
    _eq(g, [2.0, 1.0, 3.0, 4.0])
    _, (g,) = _backward(np.sort, [2.0, 1.0, 2.0, 2.0], weights=w, dtype=dtype)
    assert g[1] == 1.0 and sorted(g[[0, 2, 3]]) == [2.0, 3.0, 4.0]


@DTYPES
@pytest.mark.parametrize("fn", [np.floor, np.ceil, np.round, np.around, np.trunc, np.rint],
                         ids=lambda f: f.__name__)
def test_rounding_has_zero_gradient_and_is_never_recorded(fn, dtype):
    x = td.tensor(np.array([-1.5, -0.5, 0.5, 1.5, 2.0], dtype), requires_grad=True)
    r = fn(x)
    assert not r.requires_grad and r.grad_fn is None
    (x * r).sum().backward()  # d(x r)/dx = r: rounding contributes nothing
    _eq(x.grad.numpy(), fn(np.array([-1.5, -0.5, 0.5, 1.5, 2.0], dtype)))


# ---------------------------------------------------------------------------------------------
# against PyTorch, on the points
# ---------------------------------------------------------------------------------------------
try:
    import torch
except ImportError:  # the closed forms above and replay below still run
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs PyTorch")

SHAPES = st.lists(st.integers(1, 3), min_size=0, max_size=3).map(tuple)


@st.composite
def grid_arrays(draw, shape=None, grid=GRID, equal=None):
    """An array on the grid; ``equal`` (drawn when None) makes every element the same."""
    shape = draw(SHAPES) if shape is None else shape
    if equal is None:
        equal = draw(st.booleans())
    if equal:
        return np.full(shape, draw(st.sampled_from(grid)))
    n = int(np.prod(shape))
    return np.array(draw(st.lists(st.sampled_from(grid), min_size=n, max_size=n))).reshape(shape)


def _axis(draw, ndim):
    """None, an int axis or a tuple of axes of an ndim-d array (None for 0-d)."""
    if ndim == 0:
        return None
    return draw(st.one_of(st.none(), st.integers(-ndim, ndim - 1),
                          st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim,
                                   unique=True).map(tuple)))


def _both(td_fn, torch_fn, arrays, dtype, weights_grid=(0.5, 1.0, 2.0, -1.0), data=None):
    """Values and gradients of tapediff and PyTorch for the same inputs and the same
    random output weights; compared with NaN equal to NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 0/0 in std with ddof, torch's dof warning
        leaves = [td.tensor(np.asarray(a, dtype), requires_grad=True) for a in arrays]
        out = td_fn(*leaves)
        shape = out.shape
        n = int(np.prod(shape))
        w = (np.array(data.draw(st.lists(st.sampled_from(weights_grid), min_size=n,
                                         max_size=n)), dtype).reshape(shape)
             if data is not None else np.ones(shape, dtype))
        (out * w).sum().backward()
        tleaves = [torch.tensor(np.array(a, dtype), requires_grad=True) for a in arrays]
        tout = torch_fn(*tleaves)
        (tout * torch.tensor(w)).sum().backward()
    assert tuple(tout.shape) == shape
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), equal_nan=True, **tol)
    for leaf, tleaf in zip(leaves, tleaves):
        assert leaf.grad.dtype == dtype
        np.testing.assert_allclose(leaf.grad.numpy(), tleaf.grad.numpy(), equal_nan=True,
                                   **tol)


def _dims(axis):
    # None, not (): torch.std/var's backward with dim=() divides by n - correction with n = 1
    return axis


DRAW = dict(data=st.data(), dtype=st.sampled_from([np.float64, np.float32]))


@needs_torch
@settings(max_examples=60)
@given(**DRAW)
def test_elementwise_at_zero_against_torch(data, dtype):
    x = data.draw(grid_arrays())
    _both(td.abs, torch.abs, [x], dtype, data=data)
    _both(td.relu, torch.relu, [x], dtype, data=data)
    _both(lambda x: x * td.sign(x), lambda x: x * torch.sign(x), [x], dtype, data=data)
    _both(td.sqrt, torch.sqrt, [np.abs(x)], dtype, data=data)


@needs_torch
@settings(max_examples=60)
@given(ddof=st.sampled_from([0, 1]), keepdims=st.booleans(), **DRAW)
def test_std_var_at_zero_spread_against_torch(data, dtype, ddof, keepdims):
    x = data.draw(grid_arrays())
    axis = _axis(data.draw, x.ndim)
    for tdf, tf in ((td.std, torch.std), (np.var, torch.var)):
        _both(lambda x: tdf(x, axis=axis, ddof=ddof, keepdims=keepdims),
              lambda x: tf(x, dim=_dims(axis), correction=ddof, keepdim=keepdims), [x], dtype,
              data=data)


@needs_torch
@settings(max_examples=80)
@given(ord=st.sampled_from([None, 2, 1, 3, 0.5, np.inf, -np.inf]), keepdims=st.booleans(),
       **DRAW)
def test_vector_norms_at_x_equal_c_against_torch(data, dtype, ord, keepdims):
    x = data.draw(grid_arrays())
    # c equal to x everywhere, in some positions, or a constant array
    c = np.where(data.draw(grid_arrays(shape=x.shape, grid=[0.0, 1.0])) > 0, x,
                 data.draw(grid_arrays(shape=x.shape)))
    axis = None if x.ndim == 0 else data.draw(st.integers(-x.ndim, x.ndim - 1))
    if x.ndim == 0:
        ord = None  # np.linalg.norm takes an order only with a vector axis
    tord = 2 if ord is None else ord
    _both(lambda x: np.linalg.norm(x - c, ord, axis, keepdims),
          lambda x: torch.linalg.vector_norm(x - torch.tensor(c.astype(dtype)), tord,
                                             _dims(axis), keepdims), [x], dtype, data=data)
    # the 2-norm of x - x (the detached value): zero everywhere
    _both(lambda x: td.norm(x - x.detach(), axis=axis, keepdims=keepdims),
          lambda x: torch.linalg.vector_norm(x - x.detach(), 2, _dims(axis), keepdims), [x],
          dtype, data=data)


@needs_torch
@settings(max_examples=40)
@given(keepdims=st.booleans(), **DRAW)
def test_frobenius_norm_at_zero_against_torch(data, dtype, keepdims):
    shape = data.draw(st.lists(st.integers(1, 3), min_size=2, max_size=3).map(tuple))
    x = data.draw(grid_arrays(shape=shape))
    c = data.draw(st.sampled_from([x, np.zeros_like(x), x * 0.5]))
    _both(lambda x: td.norm(x - c, "fro", axis=(-2, -1), keepdims=keepdims),
          lambda x: torch.linalg.matrix_norm(x - torch.tensor(c.astype(dtype)), "fro",
                                             (-2, -1), keepdims), [x], dtype, data=data)
    if len(shape) == 2:
        _both(lambda x: np.linalg.norm(x - c),
              lambda x: torch.linalg.matrix_norm(x - torch.tensor(c.astype(dtype))), [x], dtype,
              data=data)


@needs_torch
@settings(max_examples=60)
@given(keepdims=st.booleans(), **DRAW)
def test_max_min_reduction_ties_against_torch_amax(data, dtype, keepdims):
    x = data.draw(grid_arrays())
    axis = _axis(data.draw, x.ndim)
    _both(lambda x: td.max(x, axis=axis, keepdims=keepdims),
          lambda x: torch.amax(x, dim=() if axis is None else axis,
                                 keepdim=keepdims), [x], dtype, data=data)
    _both(lambda x: np.min(x, axis=axis, keepdims=keepdims),
          lambda x: torch.amin(x, dim=() if axis is None else axis,
                                 keepdim=keepdims), [x], dtype, data=data)


@needs_torch
@settings(max_examples=60)
@given(**DRAW)
def test_maximum_minimum_ties_against_torch(data, dtype):
    x = data.draw(grid_arrays())
    y = data.draw(st.sampled_from([x, np.flip(x), np.zeros_like(x)]))
    y = data.draw(grid_arrays(shape=x.shape)) if data.draw(st.booleans()) else y
    _both(td.maximum, torch.maximum, [x, y], dtype, data=data)
    _both(np.minimum, torch.minimum, [x, y], dtype, data=data)


@needs_torch
@settings(max_examples=60)
@given(**DRAW)
def test_clip_at_the_bounds_against_torch_clamp(data, dtype):
    x = data.draw(grid_arrays())
    lo, hi = sorted(data.draw(st.lists(st.sampled_from(GRID), min_size=2, max_size=2)))
    _both(lambda x: td.clip(x, lo, hi), lambda x: torch.clamp(x, lo, hi), [x], dtype,
          data=data)
    _both(lambda x: np.clip(x, lo, None), lambda x: torch.clamp(x, lo, None), [x], dtype,
          data=data)
    _both(lambda x: td.clip(x, None, hi), lambda x: torch.clamp(x, None, hi), [x], dtype,
          data=data)
    # tensor bounds, tied with x; lo < hi (at lo == hi PyTorch gives no bound the gradient:
    # test_clip_with_equal_tensor_bounds)
    lo_a = np.minimum(x, lo) if data.draw(st.booleans()) else np.full(x.shape, lo)
    hi_a = np.where(hi > lo_a, hi, lo_a + 1.0)
    _both(lambda x, a, b: td.clip(x, a, b), lambda x, a, b: torch.clamp(x, a, b),
          [x, lo_a, hi_a], dtype, data=data)


@needs_torch
@settings(max_examples=60)
@given(**DRAW)
def test_sort_ties_against_torch_stable_sort(data, dtype):
    x = data.draw(grid_arrays(shape=data.draw(st.lists(st.integers(1, 5), min_size=1,
                                                      max_size=2).map(tuple))))
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    _both(lambda x: np.sort(x, axis=axis, kind="stable"),
          lambda x: torch.sort(x, dim=axis, stable=True).values, [x], dtype, data=data,
          weights_grid=(1.0, 2.0, 3.0, 5.0, -1.0))


@needs_torch
@settings(max_examples=40)
@given(fn=st.sampled_from(["floor", "ceil", "round", "trunc", "rint"]), **DRAW)
def test_rounding_against_torch(data, dtype, fn):
    x = data.draw(grid_arrays())
    npf = getattr(np, fn)
    tf = getattr(torch, "round" if fn == "rint" else fn)
    _both(lambda x: x * npf(x), lambda x: x * tf(x), [x], dtype, data=data)


# ---------------------------------------------------------------------------------------------
# replay: the zero-spread mask is an OP_CMP record that replay recomputes
# ---------------------------------------------------------------------------------------------
REPLAYED = [
    ("std", lambda x, c: td.std(x), 0),
    ("np.std axis ddof=1", lambda x, c: np.std(x.reshape(2, 3), axis=1, ddof=1).sum(), 0),
    ("var", lambda x, c: td.var(x), 0),
    ("norm(x - c)", lambda x, c: np.linalg.norm(x - c), 1),
    ("norm(x - c, axis)", lambda x, c: td.norm((x - c).reshape(2, 3), axis=1).sum(), 1),
    ("norm fro", lambda x, c: td.norm((x - c).reshape(2, 3), "fro"), 1),
    ("norm p=3", lambda x, c: td.norm(x - c, 3), 1),
    ("norm p=0.5", lambda x, c: td.norm(x - c, 0.5), 1),
]


@DTYPES
@pytest.mark.parametrize("fn,at_c", [r[1:] for r in REPLAYED], ids=[r[0] for r in REPLAYED])
@crash_guard
def test_replay_at_zero_spread_gives_zero_gradient(fn, at_c, dtype):
    c = np.array([1.0, -2.0, 0.5, 3.0, 0.0, 1.5], dtype)
    x0 = np.array([0.5, 1.0, -1.0, 2.0, 4.0, 0.25], dtype)  # positive spread everywhere
    zero = c.copy() if at_c else np.full(6, 0.75, dtype)  # zero spread everywhere
    rows = np.array([0.75, 0.75, 0.75, 1.0, 2.0, 0.0], dtype)  # one row without spread
    if at_c:
        rows = np.concatenate([c[:3], x0[3:]])
    # replay's compiled float32 pow may round differently from NumPy's by an ulp
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-14, atol=1e-15)
    fg = td.value_and_grad(fn, replay=True)
    for x in (x0, zero, rows, x0, zero):
        v, g = fg(x, c)
        ev, eg = td.value_and_grad(fn)(x, c)  # eager, recorded afresh
        assert not np.isnan(g).any()
        np.testing.assert_allclose(v, ev, **tol)
        np.testing.assert_allclose(g, eg, **tol)
        if x is zero:
            assert v == 0 and not np.any(g)
    assert fg.recordings == 1 and fg.replays == 4
    # and from a recording at zero spread to a replay at a positive one
    fg = td.value_and_grad(fn, replay=True)
    for x in (zero, x0, rows):
        v, g = fg(x, c)
        ev, eg = td.value_and_grad(fn)(x, c)
        np.testing.assert_allclose(v, ev, **tol)
        np.testing.assert_allclose(g, eg, **tol)
    assert fg.recordings == 1
