"""Differentiation inside a function being differentiated: right, or refused.

A ``td.grad`` / ``td.value_and_grad`` inside a differentiated function, or closing over its
inputs, is recorded (its gradient is a function of the outer inputs, differentiated in
turn).  What would take such a gradient as numbers (``backward()`` or ``Tape.gradient``
without ``create_graph=True``, a function made with ``replay=True``) raises: its result
would be a constant to the enclosing differentiation, and the gradient silently wrong.
Inner differentiations that do not touch the enclosing inputs work either way.
"""
from __future__ import annotations

import numpy as np
import pytest

import tapediff as td

NESTED = "would be a constant to the enclosing differentiation"

X0 = np.array([1.5, 0.5])
X1 = np.array([-0.3, 2.0])


@pytest.mark.parametrize("replay", [False, True])
@pytest.mark.parametrize("case, expect", [
    # the inner grad closes over the outer input x: sum(x * sum(x)) -> 2 sum(x)
    (lambda x: x * td.grad(lambda y: (x * y).sum())(2.0),
     lambda x: np.full_like(x, 2.0 * x.sum())),
    # the outer input passed to the inner differentiation: sum(cos x) -> -sin x
    (lambda x: td.value_and_grad(lambda v: td.sin(v).sum())(x)[1], lambda x: -np.sin(x)),
    # a recorded tensor passed in: sum(4x) sum(x) -> 8 sum(x)
    (lambda x: td.grad(lambda y: (y * y).sum())(x * 2.0).sum() * x.sum(),
     lambda x: np.full_like(x, 8.0 * x.sum())),
], ids=["closure", "argument", "recorded-argument"])
def test_an_inner_differentiation_of_the_outer_inputs_is_differentiated(case, expect, replay):
    f = td.value_and_grad(lambda x: td.sum(case(x)), replay=replay)
    for x in (X0, X1, X0):  # with replay: recorded, replayed at new inputs, replayed back
        np.testing.assert_allclose(f(x)[1], expect(x), rtol=1e-12)
    if replay:
        assert f.replays == 2


def test_the_closure_example():
    assert td.grad(lambda x: x * td.grad(lambda y: x * y)(2.0))(1.5) == 3.0


@pytest.mark.parametrize("how", ["backward", "gradient", "other-tape", "replayed"])
def test_a_gradient_as_numbers_inside_a_differentiated_function_raises(how):
    inner = td.grad(lambda v: (v ** 3).sum(), replay=True)

    def f(x):
        if how == "other-tape":
            with td.tape():
                y = (x * x).sum()
                y.backward()
        elif how == "replayed":
            return (x * inner(x)).sum()
        else:
            y = (x * x).sum()
            if how == "backward":
                y.backward()
            else:
                td.current_tape().gradient(y, x)
        return (x * 2.0).sum()

    with pytest.raises(RuntimeError, match=NESTED):
        td.grad(f)(np.array([1.0, 2.0]))


@pytest.mark.parametrize("how", ["backward", "gradient"])
def test_a_recorded_gradient_inside_a_differentiated_function_is_differentiated(how):
    def f(x):
        y = (x ** 3).sum()
        if how == "backward":
            y.backward(create_graph=True)
            g = x.grad
        else:
            g = td.current_tape().gradient(y, x, create_graph=True)
        return (x * g).sum()  # sum(3 x^3): gradient 9 x^2

    x = np.array([1.0, -2.0])
    np.testing.assert_allclose(td.grad(f)(x), 9.0 * x ** 2)


def test_inner_differentiations_independent_of_the_outer_inputs_still_work():
    w = td.tensor([0.5, -1.0], requires_grad=True)  # a parameter closed over: a constant here

    def f(x):
        g = td.grad(lambda v: (v ** 3).sum())(np.array([1.0, 2.0]))  # of constants
        h = td.grad(lambda v: (w * v).sum())(np.ones(2))  # w: not an input of the outer call
        return (x * g).sum() + (x * h).sum()

    np.testing.assert_allclose(td.grad(f)(np.array([3.0, 4.0])), [3.0 + 0.5, 12.0 - 1.0])
    assert w.grad is None

    def g(x):  # a backward on its own leaves, not the outer inputs
        u = td.tensor([2.0], requires_grad=True)
        with td.tape():
            (u * u).sum().backward()
        return (x * float(u.grad[0])).sum()

    np.testing.assert_allclose(td.grad(g)(np.array([1.0, 1.0])), [4.0, 4.0])


def test_the_same_code_outside_any_differentiation_is_unaffected():
    x = td.tensor([1.5, 0.5], requires_grad=True)
    inner = td.grad(lambda y: (x * y).sum())(np.array([2.0, 2.0]))  # x is a constant: fine
    np.testing.assert_allclose(inner.numpy() if isinstance(inner, td.Tensor) else inner,
                               [1.5, 0.5])
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 1.0])


def test_a_gradient_of_a_tensor_that_requires_grad_is_recorded():
    """td.grad of a tensor that requires grad returns a recorded tensor: differentiating it
    reaches the tensor (PyTorch's torch.func.grad composed with autograd)."""
    x = td.tensor([0.5, 2.0], requires_grad=True)
    g = td.grad(lambda v: (v ** 3).sum())(x)  # 3 x^2
    assert g.requires_grad
    g.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 6.0 * x.numpy())


def test_a_conversion_of_an_outer_input_inside_an_inner_function_is_refused():
    def f(x):
        return td.grad(lambda y: y * np.asarray(x.sum()))(1.0) * x.sum()

    with pytest.raises(RuntimeError, match="requires grad"):
        td.grad(f)(np.array([1.0, 2.0]))
