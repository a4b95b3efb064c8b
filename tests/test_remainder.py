"""``td.remainder`` (``%``, ``np.mod``, ``np.remainder``) and ``td.fmod`` (``np.fmod``).

Values are NumPy's, bit for bit.  Gradients are PyTorch's: 1 to ``a``; to ``b``,
``-floor_divide(a, b)`` for remainder and ``-trunc(a / b)`` for fmod.  Replay guards that the
quotient is unchanged, so a replay where it changed records again.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import tapediff as td
from helpers import check_grad

A = np.array([[-3.7], [-0.5], [0.4], [2.2], [5.9]])  # (5, 1), both signs
B = np.array([1.5, -1.5, 0.7, -0.35])  # (4,), both signs


def _floor_q(a, b):
    return np.floor_divide(a, b)


def _trunc_q(a, b):
    return np.trunc(np.true_divide(a, b))


REM = (td.remainder, np.remainder, _floor_q)
FMOD = (td.fmod, np.fmod, _trunc_q)


def _grads(a, b, quotient):
    """The expected gradients of sum(op(a, b)), summed back to each operand's shape."""
    shape = np.broadcast_shapes(np.shape(a), np.shape(b))
    ga = np.ones(shape)
    gb = -quotient(np.asarray(a, np.float64), np.asarray(b, np.float64))
    return _sum_to(ga, np.shape(a)), _sum_to(gb, np.shape(b))


def _sum_to(g, shape):
    g = np.sum(g, axis=tuple(range(g.ndim - len(shape)))) if g.ndim > len(shape) else g
    return np.sum(g, axis=tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1),
                  keepdims=True).reshape(shape)


# ---------------------------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("op", [REM, FMOD], ids=["remainder", "fmod"])
def test_values_are_numpys(op, dtype):
    fn, ref, _ = op
    a, b = A.astype(dtype), B.astype(dtype)
    for rg in (True, False):
        out = fn(td.tensor(a, requires_grad=rg), td.tensor(b, requires_grad=rg))
        assert out.dtype == dtype and out.shape == (5, 4) and out.requires_grad == rg
        np.testing.assert_array_equal(out.numpy(), ref(a, b))
    out = fn(td.tensor(a, requires_grad=True), 0.7)  # a Python number does not promote
    assert out.dtype == dtype
    np.testing.assert_array_equal(out.numpy(), ref(a, 0.7))
    out = fn(-2.5, td.tensor(b, requires_grad=True))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out.numpy(), ref(-2.5, b))


def test_sign_conventions():
    x = td.tensor([-3.7, 3.7, -3.7, 3.7], requires_grad=True)
    b = td.tensor([1.5, 1.5, -1.5, -1.5])
    np.testing.assert_allclose((x % b).numpy(), [0.8, 0.7, -0.7, -0.8])  # sign of b
    np.testing.assert_allclose(td.fmod(x, b).numpy(), [-0.7, 0.7, -0.7, 0.7])  # sign of a


def test_mixed_precision_promotes_as_numpy():
    a32 = td.tensor([2.5, -1.25], dtype=td.float32, requires_grad=True)
    b64 = td.tensor([0.7, 0.7], requires_grad=True)
    out = a32 % b64
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out.numpy(), np.remainder(a32.numpy(), b64.numpy()))
    out.sum().backward()
    assert a32.grad.dtype == np.float32 and b64.grad.dtype == np.float64
    np.testing.assert_array_equal(a32.grad.numpy(), [1.0, 1.0])
    np.testing.assert_array_equal(b64.grad.numpy(), [-3.0, 2.0])


def test_integers_stay_integers_and_are_not_recorded():
    a = td.tensor([7, -7, 7, -7])
    b = td.tensor([3, 3, -3, -3])
    for out, ref in ((a % b, np.remainder), (td.fmod(a, b), np.fmod), (a % 3, None),
                     (np.mod(a, b), np.remainder), (np.fmod(a, b), np.fmod)):
        assert out.dtype.kind == "i" and not out.requires_grad and out.grad_fn is None
        if ref is not None:
            np.testing.assert_array_equal(out.numpy(), ref(a.numpy(), b.numpy()))
    assert (a % 3).tolist() == [1, 2, 1, 2]
    assert td.remainder(7, 3).item() == 1 and td.fmod(-7, 3).item() == -1


def test_int_operand_with_float_tensor():
    a = td.tensor([7, -7])
    b = td.tensor([1.5, 1.5], requires_grad=True)
    out = a % b
    np.testing.assert_array_equal(out.numpy(), np.remainder([7, -7], [1.5, 1.5]))
    out.sum().backward()
    np.testing.assert_array_equal(b.grad.numpy(), [-4.0, 5.0])


def test_not_recorded_without_grad():
    x = td.tensor([2.5, -1.0], requires_grad=True)
    with td.no_grad():
        out = x % 0.7
    assert not out.requires_grad
    out = td.tensor([2.5, -1.0]) % td.tensor(0.7)
    assert not out.requires_grad and out.grad_fn is None


def test_division_by_zero_and_nan_follow_numpy():
    x = td.tensor([1.0, -1.0, np.nan, np.inf], requires_grad=True)
    b = td.tensor([0.0, 0.0, 1.0, 1.0], requires_grad=True)
    for fn, ref in ((td.remainder, np.remainder), (td.fmod, np.fmod)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn(x, b)
            expected = ref(x.numpy(), b.numpy())
        np.testing.assert_array_equal(out.numpy(), expected)


def test_shapes_that_do_not_broadcast_raise():
    x = td.tensor(np.ones(3), requires_grad=True)
    with pytest.raises(td.BroadcastError, match=r"\(3,\).*\(2,\)"):
        x % np.ones(2)
    with pytest.raises(td.BroadcastError):
        td.fmod(x, np.ones(2))


def test_names_and_docstrings():
    assert td.mod is td.remainder
    for name in ("remainder", "mod", "fmod"):
        assert name in td.__all__
    assert "floor" in td.remainder.__doc__ and "trunc" in td.fmod.__doc__


# ---------------------------------------------------------------------------------------------
# every kind of operand, through every entry point
# ---------------------------------------------------------------------------------------------
KINDS = [
    # name, fn(x, y) with x, y tensors requiring grad, reference values, which get grads
    ("t % t", lambda x, y: x % y, REM, (True, True)),
    ("td.remainder(t, t)", lambda x, y: td.remainder(x, y), REM, (True, True)),
    ("td.mod(t, t)", lambda x, y: td.mod(x, y), REM, (True, True)),
    ("np.mod(t, t)", lambda x, y: np.mod(x, y), REM, (True, True)),
    ("np.remainder(t, t)", lambda x, y: np.remainder(x, y), REM, (True, True)),
    ("np.fmod(t, t)", lambda x, y: np.fmod(x, y), FMOD, (True, True)),
    ("td.fmod(t, t)", lambda x, y: td.fmod(x, y), FMOD, (True, True)),
    ("ndarray % t", lambda x, y: x.numpy() % y, REM, (False, True)),
    ("t % ndarray", lambda x, y: x % y.numpy(), REM, (True, False)),
    ("np.mod(ndarray, t)", lambda x, y: np.mod(x.numpy(), y), REM, (False, True)),
    ("np.fmod(t, ndarray)", lambda x, y: np.fmod(x, y.numpy()), FMOD, (True, False)),
    ("td.fmod(ndarray, t)", lambda x, y: td.fmod(x.numpy(), y), FMOD, (False, True)),
]


@pytest.mark.parametrize("name,fn,op,grads", KINDS, ids=[k[0] for k in KINDS])
def test_operand_kinds(name, fn, op, grads):
    _, ref, quotient = op
    x = td.tensor(A, requires_grad=True)
    y = td.tensor(B, requires_grad=True)
    out = fn(x, y)
    assert isinstance(out, td.Tensor) and out.requires_grad
    np.testing.assert_array_equal(out.numpy(), ref(A, B))
    out.sum().backward()
    ga, gb = _grads(A, B, quotient)
    for leaf, g, has in ((x, ga, grads[0]), (y, gb, grads[1])):
        if has:
            np.testing.assert_allclose(leaf.grad.numpy(), g, rtol=0, atol=1e-12)
        else:
            assert leaf.grad is None


@pytest.mark.parametrize("name,fn,ref,grad", [
    ("t % 0.7", lambda t: t % 0.7, lambda a: np.remainder(a, 0.7), np.ones_like),
    ("t % -0.7", lambda t: t % -0.7, lambda a: np.remainder(a, -0.7), np.ones_like),
    ("2.5 % t", lambda t: 2.5 % t, lambda b: np.remainder(2.5, b),
     lambda b: -np.floor_divide(2.5, b)),
    ("-2.5 % t", lambda t: -2.5 % t, lambda b: np.remainder(-2.5, b),
     lambda b: -np.floor_divide(-2.5, b)),
    ("np.mod(t, 0.7)", lambda t: np.mod(t, 0.7), lambda a: np.remainder(a, 0.7), np.ones_like),
    ("np.fmod(2.5, t)", lambda t: np.fmod(2.5, t), lambda b: np.fmod(2.5, b),
     lambda b: -np.trunc(2.5 / b)),
    ("td.fmod(t, -0.7)", lambda t: td.fmod(t, -0.7), lambda a: np.fmod(a, -0.7), np.ones_like),
    ("td.remainder(-2.5, t)", lambda t: td.remainder(-2.5, t), lambda b: np.remainder(-2.5, b),
     lambda b: -np.floor_divide(-2.5, b)),
], ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("shape", [(), (4,)])
def test_python_number_operands(name, fn, ref, grad, shape):
    v = np.resize(B, shape) if shape else np.float64(-1.3)
    t = td.tensor(v, requires_grad=True)
    out = fn(t)
    np.testing.assert_array_equal(out.numpy(), ref(v))
    assert out.shape == shape
    out.sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), grad(v))


def test_scalar_tensors():
    x = td.tensor(3.7, requires_grad=True)
    b = td.tensor(-1.5, requires_grad=True)
    out = x % b
    assert out.shape == () and out.item() == np.remainder(3.7, -1.5)
    out.backward()
    assert x.grad.item() == 1.0 and b.grad.item() == np.floor_divide(3.7, -1.5) * -1


def test_operator_and_function_agree():
    x = td.tensor(A, requires_grad=True)
    y = td.tensor(B, requires_grad=True)
    for a, b in ((x, y), (x, 0.7), (2.5, y), (A, y), (x, B)):
        u, v = a % b, td.remainder(a, b)
        np.testing.assert_array_equal(u.numpy(), v.numpy())
        np.testing.assert_array_equal(u.numpy(), np.mod(a, b).numpy())


def test_composes_with_other_operations():
    # a sawtooth inside a larger expression: d/dx sin(x % 1.5) * x
    xs = np.array([0.3, 1.9, -2.2, 4.0])
    x = td.tensor(xs, requires_grad=True)
    (td.sin(x % 1.5) * x).sum().backward()
    r = np.remainder(xs, 1.5)
    np.testing.assert_allclose(x.grad.numpy(), np.cos(r) * xs + np.sin(r), rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# gradients against finite differences, away from the discontinuities
# ---------------------------------------------------------------------------------------------
def _away_from_jumps(rng, shapes):
    """a, b of ``shapes`` with |b| in [0.5, 2] and a / b at least 0.01 from an integer (so a
    central difference does not straddle a jump)."""
    for _ in range(1000):
        a = rng.uniform(-6, 6, shapes[0])
        b = rng.uniform(0.5, 2, shapes[1]) * rng.choice([-1.0, 1.0], shapes[1])
        r = a / b
        if np.all(np.abs(r - np.round(r)) > 0.01):
            return a, b
    raise AssertionError("no inputs away from the jumps")  # pragma: no cover


@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3),
       seed=st.integers(0, 2**32 - 1), which=st.sampled_from(["remainder", "fmod"]),
       rg=st.sampled_from([(True, True), (True, False), (False, True)]))
def test_gradient_matches_finite_differences(shapes, seed, which, rg):
    a, b = _away_from_jumps(np.random.default_rng(seed), shapes.input_shapes)
    fn = td.remainder if which == "remainder" else td.fmod
    check_grad(fn, [a, b], requires_grad=rg)


@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3),
       seed=st.integers(0, 2**32 - 1))
def test_gradient_matches_finite_differences_through_numpy(shapes, seed):
    a, b = _away_from_jumps(np.random.default_rng(seed), shapes.input_shapes)
    check_grad(lambda x, y: np.mod(x, y) * 2.0 + np.fmod(x, y) ** 2, [a, b])


def test_float32_gradient():
    a, b = _away_from_jumps(np.random.default_rng(1), [(3, 4), (4,)])
    x = td.tensor(a.astype(np.float32), requires_grad=True)
    y = td.tensor(b.astype(np.float32), requires_grad=True)
    (x % y + td.fmod(x, y)).sum().backward()
    assert x.grad.dtype == np.float32 and y.grad.dtype == np.float32
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    gb = -(np.floor_divide(a32, b32) + np.trunc(a32 / b32)).sum(0)
    np.testing.assert_array_equal(x.grad.numpy(), np.full((3, 4), 2.0, np.float32))
    np.testing.assert_array_equal(y.grad.numpy(), gb)


# ---------------------------------------------------------------------------------------------
# PyTorch as the oracle
# ---------------------------------------------------------------------------------------------
EDGES_A = np.array([1.0, -3.0, 3.0, 3.7, -3.7, 0.0, -0.0, 2.5, 1e-300, 7.25])
EDGES_B = np.array([0.1, 1.5, -1.5, -0.7, 0.7, 1.5, -2.0, 2.5, 3.0, -0.5])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("which", ["remainder", "fmod"])
def test_against_pytorch(which, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    cases = [(EDGES_A, EDGES_B),  # exact multiples, zeros, a quotient that rounds (1.0 / 0.1)
             (rng.uniform(-10, 10, (3, 1, 5)), rng.uniform(0.2, 3, (4, 1)) * rng.choice(
                 [-1.0, 1.0], (4, 1))),
             (rng.uniform(-10, 10, ()), rng.uniform(-3, 3, (6,)))]
    for a, b in cases:
        a, b = np.asarray(a, dtype), np.asarray(b, dtype)
        w = np.random.default_rng(0).standard_normal(np.broadcast_shapes(a.shape, b.shape))
        w = w.astype(dtype)
        x, y = td.tensor(a, requires_grad=True), td.tensor(b, requires_grad=True)
        out = getattr(td, which)(x, y)
        (out * w).sum().backward()
        tx = torch.tensor(a, requires_grad=True)
        ty = torch.tensor(b, requires_grad=True)
        tout = getattr(torch, which)(tx, ty)
        (tout * torch.tensor(w)).sum().backward()
        tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == "float32" else {"rtol": 1e-12,
                                                                        "atol": 1e-12}
        np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), **tol)
        np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), **tol)
        np.testing.assert_allclose(y.grad.numpy(), ty.grad.numpy(), **tol)
        assert x.grad.dtype == dtype and y.grad.dtype == dtype


def test_operator_against_pytorch():
    torch = pytest.importorskip("torch")
    a, b = EDGES_A[1:], EDGES_B[1:]
    x, y = td.tensor(a, requires_grad=True), td.tensor(b, requires_grad=True)
    ((x % y) * (2.5 % y) * (x % 0.7)).sum().backward()
    tx, ty = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    # torch has no derivative for 2.5 % ty (Scalar % Tensor): a full tensor of 2.5 instead
    ((tx % ty) * (torch.full_like(ty, 2.5) % ty) * (tx % 0.7)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y.grad.numpy(), ty.grad.numpy(), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# replay: the quotient is a constant of the recording, guarded
# ---------------------------------------------------------------------------------------------
def test_replay_of_x_mod_constant():
    fg = td.value_and_grad(lambda x: (x % 1.5).sum(), replay=True)
    for k, x in enumerate(([1.0, 2.0, -1.0], [1.1, 2.1, -0.9], [1.6, 2.0, -1.0],
                           [0.2, 0.3, 0.4], [10.0, -10.0, 4.4])):
        x = np.array(x)
        value, g = fg(x)
        assert value == pytest.approx(np.remainder(x, 1.5).sum(), abs=1e-12)
        np.testing.assert_array_equal(g, np.ones(3))
    assert fg.replays >= 1 and fg.recordings >= 3  # floor(x / 1.5) changed three times


@pytest.mark.parametrize("which", ["remainder", "fmod"])
def test_replay_gradient_in_the_divisor(which):
    a = np.array([3.7, -2.2, 0.4, -5.3])
    fn = getattr(td, which)
    quotient = _floor_q if which == "remainder" else _trunc_q
    ref = np.remainder if which == "remainder" else np.fmod
    fg = td.value_and_grad(lambda b: (fn(a, b) * np.arange(1.0, 5.0)).sum(), replay=True)
    recordings = 0
    for b in (1.0, 1.05, 0.98, 0.9, -1.0, -1.1, 2.0, 0.45, 1.02):
        value, g = fg(np.float64(b))
        assert value == pytest.approx((ref(a, b) * np.arange(1.0, 5.0)).sum(), abs=1e-12)
        assert g == -(quotient(a, b) * np.arange(1.0, 5.0)).sum(), b
        recordings = fg.recordings
    assert fg.replays >= 2 and recordings >= 4


@pytest.mark.parametrize("which", ["remainder", "fmod"])
def test_replay_with_broadcasting_and_both_arguments(which):
    fn = getattr(td, which)
    quotient = _floor_q if which == "remainder" else _trunc_q
    fg = td.value_and_grad(lambda x, y: (fn(x, y) ** 2).sum(), argnums=(0, 1), replay=True)
    rng = np.random.default_rng(3)
    for step in range(12):
        if step % 3 == 0:  # new inputs: most quotients change
            a0 = rng.uniform(-5, 5, (3, 4))
            b = rng.uniform(0.5, 2, 4) * np.where(np.arange(4) % 2, 1.0, -1.0)
        a = a0 + 1e-3 * (step % 3)  # small moves keep the quotients: those replay
        value, (ga, gb) = fg(a, b)
        r = (np.remainder if which == "remainder" else np.fmod)(a, b)
        assert value == pytest.approx((r ** 2).sum(), rel=1e-12)
        np.testing.assert_allclose(ga, 2 * r, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(gb, (-2 * r * quotient(a, b)).sum(0), rtol=1e-10, atol=1e-12)
    assert fg.replays >= 1


def test_replay_float32():
    fg = td.value_and_grad(lambda b: (np.mod(np.float32(5.5), b)).sum(), replay=True)
    for b in (1.5, 1.6, 2.0, 3.0, 1.45):
        b32 = np.array([b, -b], np.float32)
        value, g = fg(b32)
        assert g.dtype == np.float32
        np.testing.assert_allclose(value, np.mod(np.float32(5.5), b32).sum(), rtol=1e-6)
        np.testing.assert_array_equal(g, -np.floor_divide(np.float32(5.5), b32))
