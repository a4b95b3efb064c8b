"""NumPy's own functions on tensors: ``__array_ufunc__`` (NEP 13) and ``__array_function__``
(NEP 18).

``np.exp(t)``, ``np.sum(t, axis=1)``, ``a @ t`` with an ndarray ``a``, ``np.concatenate([t, u])``
... dispatch to tapediff's functions, so existing NumPy code records and differentiates
unchanged.  A NumPy function without a rule here raises ``TypeError`` naming it: silently
converting the tensor to an array would drop its gradient.  Functions whose results carry
no gradient (comparisons, ``np.isnan``, ``np.argsort``, ``np.allclose`` ...) run on the
values.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

from . import _kernels as K
from . import _ops as O
from . import _primitives as P
from ._guards import observe
from ._record import constant
from ._tensor import Tensor


def _values(x: Any, what: str | None = None) -> Any:
    """Tensors in ``x`` (nested in lists and tuples) as arrays; ``what`` names the reader
    for a replay guard (None: only shapes and dtypes are read)."""
    if isinstance(x, Tensor):
        if what is not None:
            observe(x, what)
        return np.asarray(x._v)
    if isinstance(x, (list, tuple)):
        return type(x)(_values(v, what) for v in x)
    return x


# functions that read only shapes and dtypes: no replay guard
_SHAPE_ONLY = (np.shape, np.ndim, np.size, np.result_type, np.can_cast)


def _on_values(fn: Any) -> Any:
    """A NumPy function whose result has no gradient, applied to the values."""
    what = None if fn in _SHAPE_ONLY else f"numpy.{fn.__name__}()"

    def run(*args: Any, **kwargs: Any) -> Any:
        r = fn(*_values(args, what), **{k: _values(v, what) for k, v in kwargs.items()})
        if isinstance(r, np.ndarray) or isinstance(r, np.generic) and not isinstance(r, np.bool_):
            return constant(np.asarray(r))
        return r
    return run


def _logaddexp(a: Any, b: Any) -> Tensor:
    # max + log1p(exp(-|a - b|)), with NumPy's exactly rounded value (the final addition's
    # reverse rule does not read its value)
    m = O.maximum(a, b)
    out = m + O.log1p(O.exp(-O.abs_(O.as_tensor(a) - b)))
    return O.set_value(out, np.logaddexp(O.operand_value(a), O.operand_value(b)))


def _fabs(x: Any) -> Tensor:
    x = O.as_tensor(x)  # abs that makes ints float, as np.fabs does
    return O.abs_(x if x.dtype.kind == "f" else O.astype(x, np.float64))


def _matmul(a: Any, b: Any) -> Tensor:
    return O.matmul(a, b)


UFUNCS: dict = {
    np.add: lambda a, b: O.as_tensor(a) + b,
    np.subtract: lambda a, b: O.as_tensor(a) - b,
    np.multiply: lambda a, b: O.as_tensor(a) * b,
    np.true_divide: lambda a, b: O.as_tensor(a) / b,
    np.power: lambda a, b: O.as_tensor(a) ** b,
    np.negative: lambda a: -O.as_tensor(a),
    np.positive: lambda a: O.as_tensor(a),
    np.square: O.square,
    np.fabs: _fabs,
    np.reciprocal: O.reciprocal,
    np.maximum: O.maximum, np.minimum: O.minimum,
    np.logaddexp: _logaddexp, np.matmul: _matmul, np.sign: O.sign,
    np.remainder: O.remainder, np.fmod: O.fmod,  # np.mod is np.remainder
}
# ufuncs that dispatch to a primitive, from its row of the table; those of modules not loaded
# yet (scipy.special) are looked up once the module is (``_late_ufunc``)
_LATE: dict = {}
for _p in P.PUBLIC:
    for _name in _p.ufuncs:
        _mod, _attr = _name.rsplit(".", 1)
        if _mod == "numpy":
            UFUNCS[getattr(np, _attr)] = O.ELEMENTWISE[_p.name]
        else:
            _LATE[_name] = O.ELEMENTWISE[_p.name]


def _late_ufunc(ufunc: np.ufunc) -> Any:
    """The rule of a ufunc from a module imported after tapediff (scipy.special.erf)."""
    for name in list(_LATE):
        mod, attr = name.rsplit(".", 1)
        module = sys.modules.get(mod)  # None where a program hid the module
        if module is not None:
            UFUNCS[getattr(module, attr)] = _LATE.pop(name)
    return UFUNCS.get(ufunc)
_SWAPPED = {np.greater: np.less, np.less: np.greater, np.greater_equal: np.less_equal,
            np.less_equal: np.greater_equal, np.equal: np.equal, np.not_equal: np.not_equal}
# ufuncs whose results have no gradient (or a zero one almost everywhere)
for _uf in (np.greater, np.greater_equal, np.less, np.less_equal, np.equal, np.not_equal):
    UFUNCS[_uf] = (lambda uf: lambda a, b: O.as_tensor(a)._compare(b, uf) if isinstance(a, Tensor)
                   else O.as_tensor(b)._compare(a, _SWAPPED[uf]))(_uf)
for _uf in (np.logical_and, np.logical_or, np.logical_xor, np.logical_not, np.isnan, np.isinf,
            np.isfinite, np.signbit, np.floor, np.ceil, np.trunc, np.rint, np.floor_divide,
            np.bitwise_and, np.bitwise_or, np.invert):
    UFUNCS[_uf] = _on_values(_uf)

REDUCTIONS: dict = {np.add: O.sum_, np.multiply: O.prod, np.maximum: O.max_,
                    np.minimum: O.min_}


def array_ufunc(ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
    """Dispatch a NumPy ufunc call with tensor operands to tapediff."""
    if kwargs.get("out") is not None:
        raise TypeError(f"numpy.{ufunc.__name__} with out= cannot record into a tensor; "
                        "assign the result instead")
    kwargs.pop("out", None)
    if method == "reduce" and ufunc in REDUCTIONS:
        return REDUCTIONS[ufunc](*inputs, **kwargs)
    if method == "accumulate" and ufunc in (np.add, np.multiply):
        return (O.cumsum if ufunc is np.add else O.cumprod)(*inputs, **kwargs)
    fn = None
    if method == "__call__":
        fn = UFUNCS.get(ufunc) or (_late_ufunc(ufunc) if _LATE else None)
    if fn is None:
        raise TypeError(f"tapediff has no rule for numpy.{ufunc.__name__}"
                        f"{'' if method == '__call__' else '.' + method} on tensors; convert "
                        "with np.asarray(t) to use the values without a gradient")
    if kwargs:
        raise TypeError(f"numpy.{ufunc.__name__} on tensors does not take "
                        f"{', '.join(sorted(kwargs))}")
    return fn(*inputs)


def _copy(x: Any, order: str = "K") -> Tensor:
    return O.record_view(O.as_tensor(x), lambda a: a[...], view=False)


def _like(fn: Any) -> Any:
    def run(x: Any, *args: Any, **kwargs: Any) -> Tensor:  # reads the shape and dtype only
        return constant(fn(np.empty(np.shape(x), O.as_tensor(x).dtype), *args, **kwargs))
    return run


def _sort(x: Any, axis: int = -1, kind: Any = None, order: Any = None) -> Tensor:
    x = O.as_tensor(x)
    if axis is None:
        x, axis = O.ravel(x), -1
    a = O.array_of(x)
    s = O.index_gather(x, lambda v: np.take_along_axis(v, np.argsort(a, axis, kind=kind),
                                                        axis))
    tape = O.guarding_tape(s)
    if tape is not None and s.shape[axis] > 1:  # replay: the order holds while still sorted
        sv = O.moveaxis(s, axis, -1)
        lo, hi = sv[..., :-1], sv[..., 1:]
        ok = O.array_of(lo) <= O.array_of(hi)
        O.guard(tape, O.record_compare(lo, hi, K.CMP_LE, ok, a.dtype), "np.sort()")
    return s


def _take_along_axis(x: Any, indices: Any, axis: Any) -> Tensor:
    return O.index_gather(O.as_tensor(x), lambda v: np.take_along_axis(v, _values(indices), axis))


FUNCTIONS: dict = {
    np.sum: O.sum_, np.mean: O.mean, np.var: O.var, np.std: O.std, np.max: O.max_,
    np.amax: O.max_, np.min: O.min_, np.amin: O.min_, np.prod: O.prod, np.cumsum: O.cumsum,
    np.cumprod: O.cumprod, np.argmax: O.argmax, np.argmin: O.argmin, np.dot: O.dot,
    np.vdot: O.vdot, np.inner: O.inner, np.outer: O.outer, np.tensordot: O.tensordot,
    np.einsum: O.einsum, np.trace: O.trace, np.diagonal: O.diagonal,
    np.transpose: O.transpose, np.reshape: O.reshape, np.ravel: O.ravel,
    np.squeeze: O.squeeze, np.expand_dims: O.expand_dims, np.swapaxes: O.swapaxes,
    np.moveaxis: O.moveaxis, np.broadcast_to: O.broadcast_to, np.flip: O.flip,
    np.roll: O.roll, np.repeat: O.repeat, np.tile: O.tile, np.pad: O.pad, np.take: O.take,
    np.concatenate: O.concatenate, np.stack: O.stack, np.hstack: O.hstack,
    np.vstack: O.vstack, np.split: O.split, np.array_split: O.array_split,
    np.where: O.where, np.clip: O.clip, np.atleast_1d: O.atleast_1d,
    np.atleast_2d: O.atleast_2d, np.linalg.norm: O.norm, np.copy: _copy, np.sort: _sort,
    np.take_along_axis: _take_along_axis, np.matmul: O.matmul,
    np.zeros_like: _like(np.zeros_like), np.ones_like: _like(np.ones_like),
    np.full_like: _like(np.full_like), np.empty_like: _like(np.zeros_like),
}
for _fn in (np.shape, np.ndim, np.size, np.allclose, np.isclose, np.array_equal,
            np.count_nonzero, np.nonzero, np.argsort, np.argwhere, np.any, np.all,
            np.isnan, np.isfinite, np.isinf, np.result_type, np.can_cast, np.unique,
            np.searchsorted, np.histogram, np.floor, np.ceil, np.round, np.around):
    FUNCTIONS.setdefault(_fn, _on_values(_fn))


def array_function(func: Any, types: Any, args: Any, kwargs: Any) -> Any:
    """Dispatch a NumPy function call with tensor arguments to tapediff."""
    fn = FUNCTIONS.get(func)
    if fn is None:
        raise TypeError(f"tapediff has no rule for numpy.{func.__name__} on tensors; convert "
                        "with np.asarray(t) to use the values without a gradient")
    for k in ("out", "dtype"):
        if kwargs.get(k) is not None:
            raise TypeError(f"numpy.{func.__name__} on tensors does not take {k}=")
        kwargs.pop(k, None)
    return fn(*args, **kwargs)
