"""PyTorch's ``dim=``/``keepdim=`` (and ``dims=`` where PyTorch spells it so) are accepted
wherever tapediff takes an axis, and mean exactly NumPy's ``axis=``/``keepdims=``.

One row per function: the call with NumPy's keyword and the call with PyTorch's must give the
same value and the same gradient; passing both raises.
"""
from __future__ import annotations

import numpy as np
import pytest

import tapediff as td

X = np.arange(1.0, 25.0).reshape(2, 3, 4) / 10

# name -> (call with axis=..., call with dim=...), each of a (2, 3, 4) tensor
ROWS = {
    "sum": (lambda x: td.sum(x, axis=1, keepdims=True), lambda x: td.sum(x, dim=1, keepdim=True)),
    "mean": (lambda x: x.mean(axis=2), lambda x: x.mean(dim=2)),
    "var": (lambda x: td.var(x, axis=0), lambda x: td.var(x, dim=0)),
    "std": (lambda x: x.std(axis=1, keepdims=True), lambda x: x.std(dim=1, keepdim=True)),
    "max": (lambda x: td.max(x, axis=-1), lambda x: td.max(x, dim=-1)),
    "min": (lambda x: x.min(axis=0), lambda x: x.min(dim=0)),
    "prod": (lambda x: td.prod(x, axis=1), lambda x: td.prod(x, dim=1)),
    "cumsum": (lambda x: td.cumsum(x, axis=2), lambda x: td.cumsum(x, dim=2)),
    "cumprod": (lambda x: x.cumprod(axis=1), lambda x: x.cumprod(dim=1)),
    "logsumexp": (lambda x: td.logsumexp(x, axis=1), lambda x: td.logsumexp(x, dim=1)),
    "softmax": (lambda x: td.softmax(x, axis=0), lambda x: td.softmax(x, dim=0)),
    "log_softmax": (lambda x: td.log_softmax(x, axis=1), lambda x: td.log_softmax(x, dim=1)),
    "softmax method": (lambda x: x.softmax(axis=1), lambda x: x.softmax(dim=1)),
    "norm": (lambda x: td.norm(x, axis=2), lambda x: td.norm(x, dim=2)),
    "concatenate": (lambda x: td.concatenate([x, x], axis=1),
                    lambda x: td.concatenate([x, x], dim=1)),
    "stack": (lambda x: td.stack([x, 2 * x], axis=2), lambda x: td.stack([x, 2 * x], dim=2)),
    "split": (lambda x: td.split(x, 2, axis=2)[1], lambda x: td.split(x, 2, dim=2)[1]),
    "array_split": (lambda x: td.array_split(x, 2, axis=1)[0],
                    lambda x: td.array_split(x, 2, dim=1)[0]),
    "squeeze": (lambda x: td.squeeze(x[:, :1], axis=1), lambda x: td.squeeze(x[:, :1], dim=1)),
    "expand_dims": (lambda x: td.expand_dims(x, axis=1), lambda x: td.expand_dims(x, dim=1)),
    "unsqueeze": (lambda x: td.expand_dims(x, 3), lambda x: x.unsqueeze(3)),
    "flip": (lambda x: td.flip(x, axis=1), lambda x: td.flip(x, dims=1)),
    "flip method": (lambda x: x.flip(axis=(0, 2)), lambda x: x.flip(dims=(0, 2))),
    "roll": (lambda x: td.roll(x, 1, axis=2), lambda x: td.roll(x, 1, dims=2)),
    "repeat": (lambda x: td.repeat(x, 2, axis=0), lambda x: td.repeat(x, 2, dim=0)),
    "take": (lambda x: td.take(x, [0, 2], axis=1), lambda x: td.take(x, [0, 2], dim=1)),
    "argmax": (lambda x: td.argmax(x, axis=1) * 1.0, lambda x: td.argmax(x, dim=1) * 1.0),
}


def _run(call):
    x = td.tensor(X, requires_grad=True)
    y = call(x)
    w = np.cos(np.arange(y.size)).reshape(y.shape)
    if y.requires_grad:
        (y * w).sum().backward()
    return y.numpy(), None if x.grad is None else x.grad.numpy()


@pytest.mark.parametrize("numpy_call,torch_call", list(ROWS.values()), ids=list(ROWS))
def test_dim_means_axis(numpy_call, torch_call):
    value, grad = _run(numpy_call)
    value_dim, grad_dim = _run(torch_call)
    np.testing.assert_array_equal(value_dim, value)
    if grad is None:
        assert grad_dim is None
    else:
        np.testing.assert_array_equal(grad_dim, grad)


@pytest.mark.parametrize("call", [lambda x: td.sum(x, axis=0, dim=1),
                                  lambda x: td.softmax(x, axis=0, dim=1),
                                  lambda x: td.concatenate([x, x], axis=1, dim=0)],
                         ids=["sum", "softmax", "concatenate"])
def test_axis_and_dim_together_raise(call):
    with pytest.raises(TypeError, match="pass either axis= or dim=, not both"):
        call(td.tensor(X))
