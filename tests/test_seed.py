"""The seed walkthrough (a Japanese PyTorch autograd tutorial), cell by cell, with ``td``.

Every cell of the seed must produce the same text with ``import tapediff as td`` in place of
``import torch`` and ``td.tensor`` in place of ``torch.tensor``.  Cells that ``print`` are
checked through ``capsys``; cells whose output is the value of their last expression are
checked against the ``repr`` Jupyter would display (and the value's type, since ``True``
and ``np.True_`` print alike but are not the same thing to a user).

Each test replays the earlier cells its cell depends on (e.g. In [4] mutates In [3]'s
``x1``), so the tests are independent of each other and of their order.
"""
from __future__ import annotations

import tapediff as td

ERR_SECOND_BACKWARD = (
    "Trying to backward through the graph a second time (or directly access saved tensors "
    "after they have already been freed). Saved intermediate values of the graph are freed "
    "when you call .backward() or autograd.grad(). Specify retain_graph=True if you need to "
    "backward through the graph a second time or if you need to access saved tensors after "
    "calling backward.")


def _shown(value) -> str:
    """What Jupyter shows for a cell whose last expression is ``value``."""
    return repr(value)


def test_in2_requires_grad_defaults_to_false():
    x1 = td.tensor([0.1, 0.2, 0.3])
    out = x1.requires_grad
    assert type(out) is bool
    assert _shown(out) == "False"


def test_in3_requires_grad_set_at_construction():
    x1 = td.tensor([0.1, 0.2, 0.3], requires_grad=True)
    out = x1.requires_grad
    assert type(out) is bool
    assert _shown(out) == "True"


def test_in4_requires_grad_attribute_can_be_reset():
    x1 = td.tensor([0.1, 0.2, 0.3], requires_grad=True)  # In [3]
    x1.requires_grad = False
    out = x1.requires_grad
    assert type(out) is bool
    assert _shown(out) == "False"


def test_in5_requires_grad_method():
    x1 = td.tensor([0.1, 0.2, 0.3], requires_grad=True)  # In [3]
    x1.requires_grad = False  # In [4]
    x1.requires_grad_(True)  # default: True
    out = x1.requires_grad
    assert type(out) is bool
    assert _shown(out) == "True"


def test_in5_requires_grad_method_default_argument():
    # The cell's comment says the argument defaults to True.
    x1 = td.tensor([0.1, 0.2, 0.3])
    x1.requires_grad_()
    assert _shown(x1.requires_grad) == "True"


def test_in23_int_tensor_cannot_require_grad(capsys):
    try:
        x1 = td.tensor([1, 2, 3], requires_grad=True)  # noqa: F841
    except Exception as e:  # noqa: BLE001 - the cell catches Exception
        print(e)
    assert capsys.readouterr().out == (
        "Only Tensors of floating point and complex dtype can require gradients\n")


def test_in6_requires_grad_propagates_through_operations(capsys):
    x1 = td.tensor([0.1, 0.2, 0.3], requires_grad=True)
    x2 = td.tensor([0.4, 0.5, 0.6], requires_grad=False)

    z1 = x1 * 2
    print(z1.requires_grad)  # True

    z2 = x2 * 2
    print(z2.requires_grad)  # False

    z3 = x1 * x2
    print(z3.requires_grad)  # True
    assert capsys.readouterr().out == "True\nFalse\nTrue\n"


def test_in15_backward_of_scalar_product(capsys):
    x1 = td.tensor(2., requires_grad=True)
    x2 = td.tensor(5., requires_grad=False)
    z = x1 * x2
    z.backward()
    print(x1.grad)
    print(x2.grad)
    assert capsys.readouterr().out == "tensor(5.)\nNone\n"


def test_in17_backward_through_sum(capsys):
    x1 = td.tensor([0.1, 0.2, 0.3], requires_grad=True)
    z = (x1 * 2).sum()
    z.backward()
    print(x1.grad)
    assert capsys.readouterr().out == "tensor([2., 2., 2.])\n"


def test_in22_backward_needs_a_scalar(capsys):
    x1 = td.tensor([0.1, 0.2, 0.3], requires_grad=True)
    z = x1 * 2
    try:
        z.backward()
    except Exception as e:  # noqa: BLE001 - the cell catches Exception
        print(e)
    assert capsys.readouterr().out == "grad can be implicitly created only for scalar outputs\n"


def test_in35_second_backward_raises(capsys):
    x1 = td.tensor([0.1, 0.2, 0.3], requires_grad=True)
    z = (x1 * 2).sum()
    z.backward()  # first
    try:
        z.backward()  # second
    except Exception as e:  # noqa: BLE001 - the cell catches Exception
        print(e)
    assert capsys.readouterr().out == ERR_SECOND_BACKWARD + "\n"


def test_in39_retain_graph_accumulates(capsys):
    x1 = td.tensor([0.1, 0.2, 0.3], requires_grad=True)
    z = (x1 * 2).sum()
    for _ in range(10):
        z.backward(retain_graph=True)
    print(x1.grad)
    assert capsys.readouterr().out == "tensor([20., 20., 20.])\n"
