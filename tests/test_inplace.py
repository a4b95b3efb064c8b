"""In-place updates of tensors: NumPy code that updates arrays in place differentiates unchanged.

Each program below is written once and run twice: on ndarrays (the reference: NumPy's own
in-place and view semantics) and on tensors.  The tensor run must give NumPy's values, and
its gradient must match central differences of the ndarray run, so both the recorded
functional form of every update and the way views follow their base are checked against
NumPy itself.  Misuse (a leaf that requires grad, a broadcast view, a recorded tensor under
no_grad, a cast NumPy refuses) raises, as in PyTorch and NumPy.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tapediff as td
from helpers import numerical_grad

HYP = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
W6 = np.array([0.3, -1.2, 0.7, 2.0, -0.4, 1.1])


def zeros_for(x, shape):
    """A buffer of zeros the program fills in: a constant tensor for tensors, else an array."""
    return td.zeros(shape) if isinstance(x, td.Tensor) else np.zeros(shape)


def accumulate(x):
    loss = 0.0
    for i in range(x.shape[0]):
        loss += x[i] ** 2 * W6[i]
    return loss


def rnn(x):
    h = zeros_for(x, (4, x.shape[0]))
    h[0] = x
    for t in range(1, 4):
        h[t] = np.tanh(h[t - 1] * x + 0.1)
    return (h * W6[: x.shape[0]]).sum()


def slice_view_follows_base(x):
    y = x * 1.0
    v = y[1:]
    y *= 2.0  # v sees it
    v += y[0]  # y sees it
    return (y * W6).sum() + (v ** 2).sum()


def column_update(x):
    y = np.outer(x[:3], x[3:])
    y[:, 0] += x[:3]
    y[1] = np.sin(y[1])
    return (y * W6[:3, None]).sum()


def transpose_view(x):
    y = x.reshape(2, 3) * 1.0
    t = y.T
    t[0] = t[1] * t[2]
    return (y * W6.reshape(2, 3)).sum()


def reshape_view_power(x):
    y = x * 1.0
    r = y.reshape(3, 2)
    r **= 2
    r[:, 1] -= y[:3]
    return (y * W6).sum()


def earlier_uses_keep_their_value(x):
    a = x * 1.0
    b = a + 0.0
    a += 1.0
    a /= x[0] ** 2 + 1.0
    return (a * b * W6).sum()


def masked_write(x):
    y = x * x
    y[y > 1.0] = 1.0
    y[np.array([True, False, True, False, False, True])] *= 3.0
    return (y * W6).sum()


def strided_copy(x):
    y = x * 1.0
    y[::2] = y[1::2] * 2.0
    z = y[::-1]
    z[0] += y[0]
    return (y * W6).sum()


def view_of_view(x):
    y = x.reshape(2, 3) + 0.0
    row = y[1]
    tail = row[1:]
    tail *= y[0, 0]
    y[1, 0] = tail.sum()
    return (y * W6.reshape(2, 3)).sum() + (row ** 2).sum()


def matmul_in_place(x):
    y = x.reshape(2, 3) * 1.0
    a = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, -0.5], [0.2, 0.0, 1.0]])
    y @= a
    return (y * W6.reshape(2, 3)).sum()


PROGRAMS = [accumulate, rnn, slice_view_follows_base, column_update, transpose_view,
            reshape_view_power, earlier_uses_keep_their_value, masked_write, strided_copy,
            view_of_view, matmul_in_place]
VALUES = hnp.arrays(np.float64, 6, elements=st.floats(-1.5, 1.5))


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.__name__)
@HYP
@given(x0=VALUES)
def test_in_place_program_matches_numpy(program, x0):
    if program is masked_write:  # the mask must not flip within the difference step
        x0 = np.where(np.abs(x0 * x0 - 1.0) < 1e-3, 0.5, x0)
    expected = program(x0.copy())
    x = td.tensor(x0, requires_grad=True)
    out = program(x)
    np.testing.assert_allclose(out.item(), expected, rtol=1e-12, atol=1e-12)
    out.backward()
    np.testing.assert_allclose(x.grad.numpy(), numerical_grad(program, [x0])[0],
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("program", [rnn, slice_view_follows_base, view_of_view],
                         ids=lambda p: p.__name__)
def test_in_place_program_replays(program):
    f = td.value_and_grad(program, replay=True)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x0 = rng.uniform(-1, 1, 6)
        value, grad = f(td.tensor(x0))
        np.testing.assert_allclose(value.item(), program(x0.copy()), rtol=1e-12)
        np.testing.assert_allclose(grad.numpy(), numerical_grad(program, [x0])[0], rtol=1e-6,
                                   atol=1e-7)


def test_identity_and_earlier_graph_survive_the_update():
    x = td.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3.0
    same = y
    y += x
    assert same is y and y.grad_fn == "<AddBackward0>"
    np.testing.assert_array_equal(y.numpy(), [4.0, 8.0])
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [4.0, 4.0])


def test_constant_buffer_filled_with_tensors_records():
    x = td.tensor([0.5, -1.0], requires_grad=True)
    buf = td.zeros(3, 2)
    assert buf.is_leaf and not buf.requires_grad
    buf[1] = x * x
    assert buf.requires_grad and not buf.is_leaf
    (buf * np.arange(6.0).reshape(3, 2)).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2 * 0.5 * 2.0, 2 * -1.0 * 3.0])


def test_views_of_a_constant_follow_numpy():
    c, a = td.zeros(4), np.zeros(4)
    cv, av = c[1:3], a[1:3]
    c += 1.0
    a += 1.0
    cv[0] = 5.0
    av[0] = 5.0
    np.testing.assert_array_equal(c.numpy(), a)
    np.testing.assert_array_equal(cv.numpy(), av)
    assert not c.requires_grad and not cv.requires_grad


def test_view_of_a_leaf_follows_an_update_under_no_grad():
    # the optimizer step changes w; a view taken before still reads w (as PyTorch's views)
    w = td.tensor([1.0, 2.0, 3.0], requires_grad=True)
    head = w[:2]
    with td.no_grad():
        w -= 0.5
    np.testing.assert_array_equal(head.numpy(), [0.5, 1.5])
    assert head.requires_grad
    (head * head).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), [1.0, 3.0, 0.0])


def test_optimizer_step_through_a_view_under_no_grad():
    w = td.tensor([1.0, 2.0, 3.0], requires_grad=True)
    with td.no_grad():
        w[1:] -= 1.0
    assert w.is_leaf and w.requires_grad
    np.testing.assert_array_equal(w.numpy(), [1.0, 1.0, 2.0])
    (w * w).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), [2.0, 2.0, 4.0])


ERR_LEAF = "a leaf Variable that requires grad is being used in an in-place operation."
ERR_VIEW_OF_LEAF = ("a view of a leaf Variable that requires grad is being used in an in-place "
                    "operation.")


@pytest.mark.parametrize("update", [lambda v: v.__iadd__(1.0), lambda v: v.__setitem__(0, 2.0),
                                    lambda v: v.__imul__(td.tensor(2.0, requires_grad=True))],
                         ids=["+=", "setitem", "*=tensor"])
def test_view_of_a_leaf_requiring_grad_refuses_an_update(update):
    w = td.tensor([1.0, 2.0, 3.0], requires_grad=True)
    with pytest.raises(RuntimeError) as e:
        update(w)
    assert str(e.value) == ERR_LEAF
    with pytest.raises(RuntimeError) as e:
        update(w[1:])
    assert str(e.value) == ERR_VIEW_OF_LEAF
    np.testing.assert_array_equal(w.numpy(), [1.0, 2.0, 3.0])


def test_recorded_tensor_under_no_grad_refuses_an_update():
    x = td.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2.0
    v = y[:1]
    for target in (y, v):
        with td.no_grad(), pytest.raises(RuntimeError, match="under no_grad of a tensor "
                                         "recorded on a tape.*y = y.detach()"):
            target += 1.0
    np.testing.assert_array_equal(y.numpy(), [2.0, 4.0])


def test_broadcast_view_is_read_only_as_in_numpy():
    y = td.tensor([1.0, 2.0], requires_grad=True) * 1.0
    b = np.broadcast_to(y, (3, 2))
    with pytest.raises(ValueError, match="read-only"):
        b += 1.0
    with pytest.raises(ValueError, match="read-only"):
        np.broadcast_to(np.array([1.0, 2.0]), (3, 2)).__iadd__(1.0)  # NumPy agrees


def test_update_keeps_shape_and_dtype():
    y = td.tensor([1.0, 2.0], dtype=np.float32, requires_grad=True) * 1.0
    y += np.array([0.5, 0.5])  # float64 operand: the result stays float32, as in NumPy
    assert y.dtype == np.float32
    y[0] = np.float64(3.0)
    assert y.dtype == np.float32
    with pytest.raises(ValueError, match=r"non-broadcastable output operand with shape \(2,\) "
                                         r"doesn't match the broadcast shape \(3, 2\)"):
        y += np.ones((3, 2))
    n = td.tensor([1, 2])
    with pytest.raises(TypeError, match="Cannot cast ufunc 'add' output from "
                                        "dtype\\('float64'\\) to dtype\\('int64'\\)"):
        n += td.tensor([0.5, 0.5], requires_grad=True)


def test_a_result_without_gradient_makes_the_tensor_a_constant():
    x = td.tensor([1.5, -2.5], requires_grad=True)
    y = x * 1.0
    y %= 1.0  # remainder has a gradient: still recorded
    assert y.requires_grad
    z = x * 1.0
    z[...] = np.array([3.0, 4.0])  # every element overwritten by a constant
    z.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0])


def test_view_of_a_0d_tensor_writes_its_one_element():
    x = td.tensor(1.5, requires_grad=True)
    y = x * 2.0
    r = y[None]
    r += 1.0
    a = np.array(3.0)
    b = a[None]
    b += 1.0
    assert y.item() == a.item() == 4.0 and r.numpy().tolist() == b.tolist()
    (y * y).backward()
    assert x.grad.item() == 2 * 4.0 * 2.0


def test_ufunc_out_and_at_update_a_tensor_in_place():
    # np.exp(y, out=y) and np.add.at(y, idx, v): NumPy's in-place spellings, same semantics
    def program(x):
        y = x * 1.0
        np.exp(y, out=y)
        np.add.at(y, [0, 0, 2], x[:3])
        np.subtract.at(y, [1], x[3])
        np.multiply(y, x, out=y)
        return (y * W6[:4]).sum()

    x0 = np.array([0.5, -1.0, 0.3, 0.8])
    x = td.tensor(x0, requires_grad=True)
    out = program(x)
    np.testing.assert_allclose(out.item(), program(x0.copy()), rtol=1e-13)
    out.backward()
    np.testing.assert_allclose(x.grad.numpy(), numerical_grad(program, [x0])[0], rtol=1e-7)
    with pytest.raises(TypeError, match=r"multiply\.at"):
        np.multiply.at(x * 1.0, [0], 2.0)
    with pytest.raises(TypeError, match="mixing tensors and arrays"):
        np.divmod(x, 2.0, out=(x * 1.0, np.zeros(4)))
