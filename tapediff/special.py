"""Special functions on tensors, with derivatives: ``td.special``, named as ``scipy.special``.

``erf erfc erfinv gammaln digamma (psi) expit logit xlogy xlog1py log_ndtr ndtr ndtri
betaln``, each also ``td.<name>``.  With SciPy installed (never required), the same
``scipy.special`` ufuncs called on tensors dispatch here (NEP 13), so SciPy code
differentiates unchanged:

>>> import tapediff as td
>>> x = td.tensor([0.5, 2.0], requires_grad=True)
>>> td.gammaln(x).sum().backward()
>>> x.grad                                  # digamma(x)
tensor([-1.9635,  0.4228])

Values are SciPy's own (its ufuncs run when SciPy is installed; otherwise tapediff's
kernels, within a few ulps of SciPy's, see ``tapediff._src._special_rules``); float32 stays
float32, ints become float64.  How each is differentiated:

* primitives (one record each, NumPy rules run by the sweep's Python driver, followed by
  replay): ``erfc`` (-2/sqrt(pi) e^-x^2), ``erfinv`` (sqrt(pi)/2 e^y^2), ``ndtri``
  (sqrt(2 pi) e^(y^2/2)), ``gammaln`` (digamma), ``digamma`` (trigamma), ``log_ndtr``
  (phi/Phi, without cancellation far in the left tail), ``logit`` (1/(x(1-x))), ``xlogy``
  and ``xlog1py`` (with PyTorch's gradient at x = 0: d/dx is 0 where y <= 0, resp. y <= -1),
  ``betaln`` (digamma(a) - digamma(a + b), digamma(b) - digamma(a + b));
* composed: ``expit`` is ``td.sigmoid``, ``erf`` is ``td.erf``, ``ndtr(x)`` is
  ``erfc(-x/sqrt(2))/2`` (SciPy's own formula, so its values are SciPy's).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ._src import _kernels as K
from ._src import _numpy
from ._src import _ops as O
from ._src import _special_rules as R
from ._src._record import constant, emit_python
from ._src._tensor import Tensor

__all__ = ["erf", "erfc", "erfinv", "gammaln", "digamma", "psi", "expit", "logit", "xlogy",
           "xlog1py", "log_ndtr", "ndtr", "ndtri", "betaln"]

_F64 = np.dtype(np.float64)
_SQRT1_2 = float(np.sqrt(0.5))

erf = O.ELEMENTWISE["erf"]


def _unary(op: int, fn: Callable, x: Any) -> Tensor:
    """Record the unary special-function primitive ``op`` whose eager forward is ``fn``."""
    x = O.as_tensor(x)
    a = np.asarray(x._v)
    if a.dtype.kind != "f":
        a = a.astype(_F64)  # ints and bools become float64, as in scipy.special
    value = np.asarray(fn(a))
    if not O._recording(x):
        return constant(value)
    return emit_python(op, (x,), value)


def _common(a: Any, b: Any) -> tuple:
    """The operands' values and the (float) dtype of the result, NumPy's promotion with Python
    numbers weak (NEP 50: a float32 tensor and 2.5 give float32)."""
    av, bv = O.operand_value(a), O.operand_value(b)
    O._broadcastable(av, bv)
    dt = np.result_type(av, bv)
    return av, bv, dt if dt.kind == "f" else _F64


def _binary(op: int, fn: Callable, a: Any, b: Any) -> Tensor:
    """Record the binary special-function primitive ``op`` whose eager forward is ``fn``."""
    av, bv, dt = _common(a, b)
    value = np.asarray(fn(np.asarray(av, dt), np.asarray(bv, dt)))
    if not O._recording_any(a, b):
        return constant(value)
    return emit_python(op, (O._typed_tensor(a, dt), O._typed_tensor(b, dt)), value)


def erfc(x: Any) -> Tensor:
    """Complementary error function 1 - erf(x), accurate where erf(x) is close to 1
    (``scipy.special.erfc``); the derivative is -2/sqrt(pi) e^(-x^2)."""
    return _unary(K.OP_ERFC, R.erfc, x)


def erfinv(x: Any) -> Tensor:
    """Inverse error function on [-1, 1] (``scipy.special.erfinv``; +-inf at +-1, nan
    outside); the derivative is sqrt(pi)/2 e^(erfinv(x)^2)."""
    return _unary(K.OP_ERFINV, R.erfinv, x)


def ndtri(p: Any) -> Tensor:
    """Quantile of the standard normal distribution, the inverse of ``ndtr``
    (``scipy.special.ndtri``); the derivative is sqrt(2 pi) e^(ndtri(p)^2 / 2)."""
    return _unary(K.OP_NDTRI, R.ndtri, p)


def gammaln(x: Any) -> Tensor:
    """Logarithm of the absolute value of the gamma function (``scipy.special.gammaln``,
    ``torch.lgamma``); the derivative is ``digamma(x)``."""
    return _unary(K.OP_GAMMALN, R.gammaln, x)


def digamma(x: Any) -> Tensor:
    """The digamma function, the derivative of ``gammaln`` (``scipy.special.digamma``, alias
    ``psi``); the derivative is the trigamma function (inf at the poles 0, -1, -2, ...)."""
    return _unary(K.OP_DIGAMMA, R.digamma, x)


psi = digamma


def log_ndtr(x: Any) -> Tensor:
    """Logarithm of the standard normal CDF, accurate far into both tails
    (``scipy.special.log_ndtr``); the derivative phi(x)/Phi(x) is computed without
    cancellation for very negative x."""
    return _unary(K.OP_LOG_NDTR, R.log_ndtr, x)


def logit(x: Any) -> Tensor:
    """log(x / (1 - x)), the inverse of ``expit`` (``scipy.special.logit``); the derivative
    is 1 / (x (1 - x)) (nan outside [0, 1], as PyTorch's)."""
    return _unary(K.OP_LOGIT, R.logit, x)


def xlogy(x: Any, y: Any) -> Tensor:
    """x * log(y), 0 where x == 0 (unless y is nan), broadcasting (``scipy.special.xlogy``).
    Gradients as PyTorch's: log(y) to x (0 where x == 0 and y <= 0), x / y to y."""
    return _binary(K.OP_XLOGY, R.xlogy, x, y)


def xlog1py(x: Any, y: Any) -> Tensor:
    """x * log1p(y), 0 where x == 0 (unless y is nan), broadcasting
    (``scipy.special.xlog1py``).  Gradients as PyTorch's: log1p(y) to x (0 where x == 0 and
    y <= -1), x / (1 + y) to y."""
    return _binary(K.OP_XLOG1PY, R.xlog1py, x, y)


def expit(x: Any) -> Tensor:
    """The logistic function 1 / (1 + e^-x) (``scipy.special.expit``): ``td.sigmoid``."""
    return O.ELEMENTWISE["sigmoid"](x)


def ndtr(x: Any) -> Tensor:
    """Standard normal CDF, erfc(-x / sqrt(2)) / 2 as SciPy computes it
    (``scipy.special.ndtr``); the derivative is the normal density.  float32 is computed in
    float64 and rounded, as SciPy does (the scaled argument's rounding would grow with x**2)."""
    x = O.as_tensor(x)
    if x.dtype != _F64:
        return O.astype(ndtr(O.astype(x, _F64)), x.dtype if x.dtype.kind == "f" else _F64)
    return erfc(x * -_SQRT1_2) * 0.5


def betaln(a: Any, b: Any) -> Tensor:
    """log|B(a, b)|, the log of the absolute value of the beta function, broadcasting
    (``scipy.special.betaln``); the derivatives are digamma(a) - digamma(a + b) and
    digamma(b) - digamma(a + b)."""
    return _binary(K.OP_BETALN, R.betaln, a, b)


# scipy.special's ufuncs on tensors (NEP 13) dispatch here once SciPy is imported
# (scipy.special.erf and expit come from the table of primitives, as td.erf and td.sigmoid)
_numpy._LATE.update({f"scipy.special.{fn.__name__}": fn for fn in (
    erfc, erfinv, ndtri, gammaln, digamma, log_ndtr, logit, xlogy, xlog1py, ndtr, betaln)})
