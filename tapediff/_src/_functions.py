"""Module-level functions: the elementwise primitives (``td.exp(x)`` & co.) and tensor factories."""
from __future__ import annotations

from typing import Any

import numpy as np

from ._ops import ELEMENTWISE
from ._tensor import Tensor, tensor


# td.exp, td.log, ... td.arctan2, td.hypot: one function per public elementwise primitive,
# defined from its row of the primitive table (tapediff._src._primitives.PUBLIC)
globals().update(ELEMENTWISE)


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
    return tensor(np.zeros(np.shape(x), dtype or _dtype(x)), requires_grad=requires_grad)


def ones_like(x: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    """Ones with the shape (and, by default, the dtype) of ``x``."""
    return tensor(np.ones(np.shape(x), dtype or _dtype(x)), requires_grad=requires_grad)


def _dtype(x: Any) -> np.dtype:  # x's dtype, read without converting it
    return x.dtype if isinstance(x, Tensor) else np.asarray(x).dtype


__all__ = ["zeros", "ones", "full", "arange", "zeros_like", "ones_like", *ELEMENTWISE]
