"""Module-level functions: ``td.exp(x)`` & co., reductions, and tensor factories."""
from __future__ import annotations

from typing import Any

import numpy as np

from ._tensor import _UNARY, Tensor, _const, _unary, tensor


def _t(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else _const(x)


def exp(x: Any) -> Tensor:
    """Elementwise e**x.

    >>> import tapediff as td
    >>> td.exp(td.tensor(0.0))
    tensor(1.)
    """
    return _unary(_UNARY["exp"], _t(x))


def log(x: Any) -> Tensor:
    """Elementwise natural logarithm (nan below 0 and -inf at 0, as NumPy)."""
    return _unary(_UNARY["log"], _t(x))


def sqrt(x: Any) -> Tensor:
    """Elementwise square root."""
    return _unary(_UNARY["sqrt"], _t(x))


def sin(x: Any) -> Tensor:
    """Elementwise sine."""
    return _unary(_UNARY["sin"], _t(x))


def cos(x: Any) -> Tensor:
    """Elementwise cosine."""
    return _unary(_UNARY["cos"], _t(x))


def tan(x: Any) -> Tensor:
    """Elementwise tangent."""
    return _unary(_UNARY["tan"], _t(x))


def tanh(x: Any) -> Tensor:
    """Elementwise hyperbolic tangent."""
    return _unary(_UNARY["tanh"], _t(x))


def sigmoid(x: Any) -> Tensor:
    """Elementwise logistic function 1 / (1 + e**-x), computed without overflow."""
    return _unary(_UNARY["sigmoid"], _t(x))


def relu(x: Any) -> Tensor:
    """Elementwise max(x, 0); the gradient at 0 is 0, as in PyTorch."""
    return _unary(_UNARY["relu"], _t(x))


def abs(x: Any) -> Tensor:  # noqa: A001 - NumPy's name
    """Elementwise absolute value; the gradient at 0 is 0."""
    return _unary(_UNARY["abs"], _t(x))


def log1p(x: Any) -> Tensor:
    """Elementwise log(1 + x), accurate near 0."""
    return _unary(_UNARY["log1p"], _t(x))


def expm1(x: Any) -> Tensor:
    """Elementwise e**x - 1, accurate near 0."""
    return _unary(_UNARY["expm1"], _t(x))


def log2(x: Any) -> Tensor:
    """Elementwise base-2 logarithm."""
    return _unary(_UNARY["log2"], _t(x))


def log10(x: Any) -> Tensor:
    """Elementwise base-10 logarithm."""
    return _unary(_UNARY["log10"], _t(x))


def exp2(x: Any) -> Tensor:
    """Elementwise 2**x."""
    return _unary(_UNARY["exp2"], _t(x))


def sinh(x: Any) -> Tensor:
    """Elementwise hyperbolic sine."""
    return _unary(_UNARY["sinh"], _t(x))


def cosh(x: Any) -> Tensor:
    """Elementwise hyperbolic cosine."""
    return _unary(_UNARY["cosh"], _t(x))


def arcsin(x: Any) -> Tensor:
    """Elementwise inverse sine."""
    return _unary(_UNARY["arcsin"], _t(x))


def arccos(x: Any) -> Tensor:
    """Elementwise inverse cosine."""
    return _unary(_UNARY["arccos"], _t(x))


def arctan(x: Any) -> Tensor:
    """Elementwise inverse tangent."""
    return _unary(_UNARY["arctan"], _t(x))


def softplus(x: Any) -> Tensor:
    """Elementwise log(1 + e**x), computed without overflow."""
    return _unary(_UNARY["softplus"], _t(x))


# -- factories -------------------------------------------------------------------------------
def _shape_arg(shape: tuple) -> tuple:
    if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
        return tuple(shape[0])
    return tuple(shape)


def zeros(*shape: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    """A tensor of zeros: ``td.zeros(2, 3)`` or ``td.zeros((2, 3))``; float64 by default."""
    return tensor(np.zeros(_shape_arg(shape), dtype), requires_grad=requires_grad)


def ones(*shape: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    """A tensor of ones: ``td.ones(2, 3)`` or ``td.ones((2, 3))``; float64 by default."""
    return tensor(np.ones(_shape_arg(shape), dtype), requires_grad=requires_grad)


def full(shape: Any, fill_value: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    """A tensor of ``shape`` filled with ``fill_value`` (dtype inferred from it by default)."""
    return tensor(np.full(shape, fill_value, dtype), requires_grad=requires_grad)


def arange(start: Any, stop: Any = None, step: Any = 1, dtype: Any = None,
           requires_grad: bool = False) -> Tensor:
    """Evenly spaced values in [start, stop), as ``np.arange``.

    >>> import tapediff as td
    >>> td.arange(3)
    tensor([0, 1, 2])
    """
    a = np.arange(start, stop, step, dtype=dtype) if stop is not None else \
        np.arange(start, step=step, dtype=dtype)
    return tensor(a, requires_grad=requires_grad)


def zeros_like(x: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    """Zeros with the shape (and, by default, the dtype) of ``x``."""
    return tensor(np.zeros_like(np.asarray(x), dtype), requires_grad=requires_grad)


def ones_like(x: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    """Ones with the shape (and, by default, the dtype) of ``x``."""
    return tensor(np.ones_like(np.asarray(x), dtype), requires_grad=requires_grad)
