"""tapediff: reverse-mode automatic differentiation for NumPy-style code.

Operations on tensors that require grad append records to a flat tape; ``backward()`` sweeps
the tape in reverse with one Numba-compiled kernel.  The API follows PyTorch's autograd:

>>> import tapediff as td
>>> x = td.tensor([0.1, 0.2, 0.3], requires_grad=True)
>>> z = (x * 2).sum()
>>> z.backward()
>>> x.grad
tensor([2., 2., 2.])
"""
import numpy as _np

from ._functions import (
    abs, arange, cos, exp, full, log, mean, ones, ones_like, relu, sigmoid, sin, sqrt, sum,
    tan, tanh, zeros, zeros_like,
)
from ._grad_mode import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from ._tape import Tape, current_tape, tape
from ._tensor import BroadcastError, Tensor, tensor

float16 = _np.dtype(_np.float16)
float32 = _np.dtype(_np.float32)
float64 = _np.dtype(_np.float64)
int32 = _np.dtype(_np.int32)
int64 = _np.dtype(_np.int64)
bool_ = _np.dtype(_np.bool_)

__version__ = "0.1.0"

__all__ = [
    "Tensor", "Tape", "BroadcastError", "tensor", "tape", "current_tape", "no_grad",
    "enable_grad", "set_grad_enabled", "is_grad_enabled", "zeros", "ones", "full", "arange",
    "zeros_like", "ones_like", "exp", "log", "sqrt", "sin", "cos", "tan", "tanh", "sigmoid",
    "relu", "abs", "sum", "mean", "float16", "float32", "float64", "int32", "int64", "bool_",
]
