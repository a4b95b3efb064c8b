"""Differentiation inside a function being differentiated: right or refused.

Until nested (higher-order) differentiation is supported, a ``td.grad``, ``td.value_and_grad``,
``backward()`` or ``Tape.gradient`` that would differentiate through the inputs of an
enclosing ``td.grad``/``td.value_and_grad`` raises: its result would be a constant to the
enclosing differentiation, and the gradient silently wrong.  Inner differentiations that do
not touch the enclosing inputs still work.
"""
from __future__ import annotations

import numpy as np
import pytest

import tapediff as td

NESTED = "nested differentiation is not supported"


@pytest.mark.parametrize("replay", [False, True])
@pytest.mark.parametrize("case", [
    # the inner grad closes over the outer input x: d/dx (x * x) = 2x, not x
    lambda x: x * td.grad(lambda y: x * y)(2.0),
    # the outer input passed to the inner differentiation: d/dx sin(x) is cos(x), not 0
    lambda x: td.value_and_grad(np.sin)(x)[0],
    lambda x: td.grad(lambda y: (y * y).sum())(x * 2.0).sum() * x.sum(),
], ids=["closure", "argument", "recorded-argument"])
def test_an_inner_functional_differentiation_of_the_outer_inputs_raises(case, replay):
    with pytest.raises(RuntimeError, match=NESTED):
        td.value_and_grad(lambda x: td.sum(case(x)), replay=replay)(np.array([1.5, 0.5]))


@pytest.mark.parametrize("how", ["backward", "gradient", "other-tape"])
def test_backward_inside_a_differentiated_function_raises_and_touches_no_grad(how):
    def f(x):
        if how == "other-tape":
            with td.tape():
                y = (x * x).sum()
                y.backward()
        else:
            y = (x * x).sum()
            if how == "backward":
                y.backward()
            else:
                td.current_tape().gradient(y, x)
        return (x * 2.0).sum()

    with pytest.raises(RuntimeError, match=NESTED):
        td.grad(f)(np.array([1.0, 2.0]))


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
