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

# _tensor first: it completes _ops and _numpy (its one late import) before anything uses them
from ._src._tensor import BroadcastError, Tensor, tensor  # isort: skip
from ._src import _functions
from ._src._functions import *  # noqa: F403  (factories and the elementwise primitives: td.exp ...)
from ._src._ops import (
    argmax, argmin, array_split, astype, atleast_1d, atleast_2d, broadcast_to, clip,
    concatenate, cumprod, cumsum, diagonal, dot, einsum, expand_dims, flip, fmod, hstack, inner,
    log_softmax, logsumexp, matmul, maximum, mean, minimum, mod, moveaxis, norm, outer, pad,
    prod, ravel, reciprocal, remainder, repeat, reshape, roll, sign, softmax, split, square,
    squeeze, stack, std, swapaxes, take, tensordot, tile, trace, transpose, var, vdot, vstack,
    where,
)
from ._src._ops import max_ as max
from ._src._ops import min_ as min
from ._src._ops import sum_ as sum
from ._src._numpy_functions import (  # NumPy's functions composed there, under PyTorch's names too
    arccosh, arcsinh, arctanh, atleast_3d, cross, deg2rad, diag, diagflat, diff, fliplr, flipud,
    fmax, fmin, kron, logaddexp2, nan_to_num, quantile, rad2deg, rot90, sinc, trapezoid, tril,
    triu,
)
from ._src._grad_mode import _GradMode, enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from ._src._tape import Tape, current_tape, tape
from ._src._replay import GuardError, Replayed, grad, value_and_grad
from ._src._higher import hessian, hvp, jacfwd, jacobian, jacrev, jvp, vjp
from . import linalg  # td.linalg.solve ... (np.linalg on tensors dispatches there too)
from . import special  # td.special.gammaln ... (scipy.special on tensors dispatches there too)
from .special import (
    betaln, digamma, erfc, erfinv, expit, gammaln, log_ndtr, logit, ndtr, ndtri, xlog1py, xlogy,
)

float16 = _np.dtype(_np.float16)
float32 = _np.dtype(_np.float32)
float64 = _np.dtype(_np.float64)
int32 = _np.dtype(_np.int32)
int64 = _np.dtype(_np.int64)
bool_ = _np.dtype(_np.bool_)

from . import testing  # noqa: E402  (gradcheck; testing.strategies imports hypothesis on use)

__version__ = "0.1.0"

__all__ = [
    "Tensor", "Tape", "BroadcastError", "tensor", "tape", "current_tape", "no_grad",
    "value_and_grad", "grad", "Replayed", "GuardError",
    "jvp", "vjp", "hvp", "jacobian", "jacrev", "jacfwd", "hessian",
    "enable_grad", "set_grad_enabled", "is_grad_enabled", *_functions.__all__,
    "square", "reciprocal", "sign", "remainder", "mod", "fmod", "sum",
    "mean", "var", "std", "max", "min", "argmax", "argmin", "prod", "cumsum", "cumprod",
    "logsumexp", "softmax", "log_softmax", "norm", "reshape", "ravel", "squeeze",
    "expand_dims", "transpose", "swapaxes", "moveaxis", "broadcast_to", "flip", "roll",
    "repeat", "tile", "pad", "take", "diagonal", "trace", "concatenate", "stack", "hstack",
    "vstack", "split", "array_split", "atleast_1d", "atleast_2d", "where", "maximum",
    "minimum", "clip", "matmul", "dot", "vdot", "inner", "outer", "tensordot", "einsum",
    "astype", "diff", "tril", "triu", "diag", "diagflat", "kron", "cross", "rot90", "flipud",
    "fliplr", "atleast_3d", "quantile", "trapezoid", "nan_to_num", "fmax", "fmin", "sinc",
    "logaddexp2", "deg2rad", "rad2deg", "arcsinh", "arccosh", "arctanh",
    "linalg", "special", "erfc", "erfinv", "gammaln", "digamma", "expit", "logit", "xlogy",
    "xlog1py", "log_ndtr", "ndtr", "ndtri", "betaln",
    "testing", "float16", "float32", "float64", "int32", "int64", "bool_",
]

# The public classes under the package's name (help, reprs of the type, pickles), not the
# private module that defines them.
for _cls in (Tensor, Tape, BroadcastError, GuardError, Replayed, no_grad, enable_grad, _GradMode,
             set_grad_enabled):
    _cls.__module__ = __name__
del _cls, _functions, _GradMode
