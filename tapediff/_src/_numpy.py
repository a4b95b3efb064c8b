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

import inspect
import re
import sys
from typing import Any

import numpy as np

from . import _numpy_functions as F
from . import _ops as O
from . import _primitives as P
from ._guards import RAW_VALUE
from ._numpy_functions import array_values
from ._record import constant
from ._tensor import Tensor, carries_gradient


def _raw(x: Any) -> Any:
    """``array_values`` for a reader of shapes and dtypes: no replay guard, not even the one a
    recorded comparison's ``._v`` records."""
    if isinstance(x, Tensor):
        return np.asarray(RAW_VALUE.__get__(x))
    if isinstance(x, (list, tuple)):
        return type(x)(_raw(v) for v in x)
    return x


# functions that read only shapes and dtypes: no replay guard
_SHAPE_ONLY = (np.shape, np.ndim, np.size, np.result_type, np.can_cast, np.iscomplexobj,
               np.isrealobj)


def _on_values(fn: Any, name: str | None = None) -> Any:
    """A NumPy function whose result has no gradient, applied to the values (``name`` names
    it for a replay guard).  With ``out=`` (ndarrays), NumPy's own result is returned (the
    ``out`` array: ``ndarray += t`` keeps the ndarray); otherwise arrays become constants."""
    what = None if fn in _SHAPE_ONLY else f"{name or 'numpy.' + fn.__name__}()"
    conv = _raw if what is None else lambda v: array_values(v, what)

    def run(*args: Any, **kwargs: Any) -> Any:
        r = fn(*conv(args), **{k: conv(v) for k, v in kwargs.items()})
        if kwargs.get("out") is not None:
            return r
        if isinstance(r, np.ndarray) or isinstance(r, np.generic) and not isinstance(r, np.bool_):
            return constant(np.asarray(r))
        return r
    run.no_gradient = True  # type: ignore[attr-defined]
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


# ---------------------------------------------------------------------------------------------
# keyword arguments, ufunc methods and NumPy's in-place writes: each records the gradient or
# raises naming the fix; tensors whose gradient is not being computed run on their values
# ---------------------------------------------------------------------------------------------
_DETACH = ("to use the values without a gradient, pass t.detach() (or run it under "
           "td.no_grad())")
_ABSENT = object()
_FILL = {np.add: 0.0, np.multiply: 1.0, np.maximum: -np.inf, np.minimum: np.inf,
         np.logaddexp: -np.inf}  # what a masked-out element contributes to a reduction


def _carries(x: Any) -> bool:
    """Whether ``x`` (nested in lists and tuples) holds a tensor whose values NumPy may not
    take: the test ``np.asarray(t)`` applies (requires grad, grad mode on, and inside
    td.grad & co. depends on the differentiated inputs)."""
    if isinstance(x, Tensor):
        return carries_gradient(x)
    if isinstance(x, (list, tuple)):
        return any(_carries(v) for v in x)
    return False


def _holds_tensor(x: Any) -> bool:
    return isinstance(x, Tensor) or (isinstance(x, (list, tuple))
                                     and any(_holds_tensor(v) for v in x))


def _is_true(where: Any) -> bool:
    return isinstance(where, (bool, np.bool_)) and bool(where)


def _ufunc_name(ufunc: np.ufunc) -> str:
    name = ufunc.__name__
    for mod in ("numpy", "scipy.special"):
        m = sys.modules.get(mod)
        if m is not None and getattr(m, name, None) is ufunc:
            return f"{mod}.{name}"
    return f"the ufunc {name!r} (np.frompyfunc / np.vectorize)"


def _no_rule(name: str) -> TypeError:
    return TypeError(f"tapediff has no rule for {name} on tensors, so it cannot keep the "
                     f"gradient; {_DETACH}")


def _err_out(name: str) -> TypeError:
    return TypeError(
        f"{name} with out= (also `a += t` on an ndarray a) would write a value that requires "
        "grad into an ndarray, dropping its gradient; assign the result instead (a = a + t, a "
        f"tensor), or {_DETACH}")


def _float_dtype(dtype: Any, name: str) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise TypeError(f"{name}(..., dtype={dt}) on a tensor that requires grad: a {dt} result "
                        f"has no gradient; {_DETACH}")
    return dt


def _cast(x: Any, dt: np.dtype | None) -> Any:
    """An operand cast to ``dt`` as NumPy's ``dtype=`` does (tensors recorded; numbers kept)."""
    if dt is None or type(x) in (float, int, bool):
        return x
    return O.astype(x, dt) if isinstance(x, Tensor) else np.asarray(x, dt)


def _masked(x: Tensor, where: Any, fill: float, name: str) -> Tensor:
    """``x`` with ``fill`` where the reduction's ``where=`` mask is False."""
    # the shape only: a recorded comparison's ._v would record a replay guard
    shape = np.shape(RAW_VALUE.__get__(where) if isinstance(where, Tensor) else where)
    if np.broadcast_shapes(shape, x.shape) != x.shape:
        raise ValueError(f"{name}: the where= mask of shape {shape} does not broadcast to the "
                         f"operand's shape {x.shape}")
    return O.where(where, x, fill)


def _ufunc_reduce(ufunc: np.ufunc, name: str, x: Any, axis: Any = 0, dtype: Any = None,
                  keepdims: bool = False, initial: Any = _ABSENT, where: Any = True) -> Tensor:
    """``ufunc.reduce`` (sum, prod, max, min, logsumexp) with NumPy's ``initial=`` and
    ``where=``: masked-out elements take the ufunc's identity, then ``initial`` joins."""
    x = _cast(O.as_tensor(x), dtype)
    if initial is None:
        initial = _ABSENT
    if not _is_true(where):
        if initial is _ABSENT and ufunc in (np.maximum, np.minimum):
            raise ValueError(f"reduction operation '{ufunc.__name__}' does not have an "
                             "identity, so to use a where mask one has to specify 'initial'")
        x = _masked(x, where, _FILL[ufunc], name)
    r = (O.logsumexp if ufunc is np.logaddexp else REDUCTIONS[ufunc])(x, axis, keepdims)
    if initial is _ABSENT:
        return r
    if not isinstance(initial, Tensor):
        initial = np.asarray(initial, r.dtype)
    if ufunc is np.add:
        return r + initial
    if ufunc is np.multiply:
        return r * initial
    return {np.maximum: O.maximum, np.minimum: O.minimum, np.logaddexp: _logaddexp}[ufunc](
        r, initial)


def _masked_mean(a: Any, axis: Any = None, keepdims: bool = False, where: Any = True) -> Tensor:
    """``np.mean(a, where=mask)``: the sum of the selected elements over their count."""
    a = O.as_tensor(a)
    if a.dtype.kind != "f":
        a = O.astype(a, np.float64)
    s = O.sum_(_masked(a, where, 0.0, "numpy.mean"), axis, keepdims)
    m = np.broadcast_to(np.asarray(array_values(where, "numpy.mean(where=)"), bool), a.shape)
    with np.errstate(invalid="ignore", divide="ignore"):  # NumPy warns on an empty selection
        return s / np.sum(m, axis=axis, keepdims=keepdims).astype(a.dtype)


def _histogram(a: Any, bins: Any = 10, range: Any = None, density: Any = None,
               weights: Any = None) -> tuple:
    """``np.histogram``: the counts carry no gradient, but weights do, and so do the edges
    NumPy derives from the data (``range=None`` and a number of bins or a rule): they are
    ``min + (max - min) * k / n``, recorded."""
    name = "numpy.histogram"
    if _carries(weights):
        raise TypeError(f"{name}(..., weights=w) with w requiring grad would drop w's gradient; "
                        "sum the weights per bin with a tensor operation instead, e.g. "
                        f"td.zeros(n_bins).at[bin_of_each_element].add(w), or {_DETACH}")
    from_data = range is None and np.ndim(bins) == 0 and _carries(a)
    if from_data and density:
        raise TypeError(f"{name}(t, density=True) depends on the bin width, which depends on "
                        "t's min and max: its gradient is not computed; pass range= (fixed "
                        f"edges), or {_DETACH}")
    what = f"{name}()"
    hist, edges = np.histogram(array_values(a, what), bins=array_values(bins, what), range=range,
                               density=density, weights=array_values(weights, what))
    if not from_data:
        return constant(hist), constant(edges)
    t = O.ravel(a)
    lo, hi = O.min_(t), O.max_(t)
    same = hi == lo  # NumPy widens an empty range by 0.5 on each side
    lo, hi = O.where(same, lo - 0.5, lo), O.where(same, hi + 0.5, hi)
    frac = np.linspace(0.0, 1.0, len(edges)).astype(edges.dtype)
    return constant(hist), O.set_value(lo + (hi - lo) * frac, edges)


def array_ufunc(ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
    """Dispatch a NumPy ufunc call with tensor operands to tapediff.

    Keyword arguments: ``dtype=`` a float dtype casts the operands as NumPy does (recorded:
    the gradient flows back in each operand's dtype); another dtype raises.  ``casting=``,
    ``order=`` and ``subok=`` only check or lay out the result and are ignored.
    ``signature=`` other than all None raises (pass ``dtype=``).  ``where=`` (other than
    True) raises on an elementwise call: without ``out=`` NumPy leaves the masked-out
    elements uninitialised, and ``out=`` cannot hold a gradient; select with ``np.where``.
    ``out=`` a tensor updates it in place as ``t += u`` does (recorded functionally, see
    ``_ops.update``); ``out=`` an ndarray raises when a gradient is at stake: it cannot hold
    one (``a += t`` is NumPy's ``np.add(a, t, out=(a,))``).

    Methods: ``reduce`` (add, multiply, maximum, minimum, logaddexp; ``axis`` defaults to 0
    as in NumPy; ``keepdims``, ``dtype``, ``initial`` and ``where`` masks), ``accumulate``
    (add, multiply; axis 0) and ``outer`` record; ``add.at``/``subtract.at`` into a tensor
    update it in place (``t.at[i].add(v)``, repeated indices accumulating); the other
    methods (``reduceat``, ``maximum.accumulate``, ``multiply.at``...) raise.

    When no operand carries a gradient (no tensor requires grad, under ``td.no_grad()``, or
    only data inside ``td.grad``), what would raise only for the gradient's sake (``out=``
    into ndarrays, ``where=``, integer dtypes, ``ufunc.at`` into an ndarray) runs on the
    values, as ``np.asarray(t)`` would.  Ufuncs without a gradient (comparisons, ``isnan``,
    ``floor``...) always run on the values with any keyword and method."""
    if method == "__call__" and not kwargs:  # the common case
        fn = UFUNCS.get(ufunc) or (_late_ufunc(ufunc) if _LATE else None)
        if fn is None:
            raise _no_rule(_ufunc_name(ufunc))
        return fn(*inputs)
    name = _ufunc_name(ufunc)
    call = name if method == "__call__" else f"{name}.{method}"
    out = kwargs.get("out")
    if out is not None and _holds_tensor(out):
        target = out[0] if isinstance(out, tuple) else out
        if not isinstance(target, Tensor) or isinstance(out, tuple) and len(out) != 1:
            raise TypeError(f"{call} with out= mixing tensors and arrays cannot record; "
                            "assign the result instead")
        kwargs = {k: v for k, v in kwargs.items() if k != "out"}
        # an in-place update of the tensor, recorded as t += v is (see _ops.update)
        return O.update(target, lambda: array_ufunc(ufunc, method, *inputs, **kwargs),
                        ufunc.__name__)
    if method == "at" and isinstance(inputs[0], Tensor):
        if ufunc not in (np.add, np.subtract) or len(inputs) != 3 or kwargs:
            raise TypeError(f"{call} updates its first operand in place; use the functional "
                            "update t = t.at[indices].add(v) (or .set(v)) instead")
        t, idx, v = inputs
        v = -O.as_tensor(v) if ufunc is np.subtract else v
        O.update(t, lambda: t.at[array_values(idx)].add(v), ufunc.__name__)
        return None
    if method == "outer" and len(inputs) == 2 and not kwargs:
        a, b = (O.as_tensor(x) for x in inputs)  # a[..., None, ...] op b
        return array_ufunc(ufunc, "__call__", O.reshape(a, a.shape + (1,) * b.ndim), b)
    if ufunc in _SWAPPED or getattr(UFUNCS.get(ufunc), "no_gradient", False):
        return _on_values(getattr(ufunc, method), call)(*inputs, **kwargs)
    dtype, where, sig = kwargs.get("dtype"), kwargs.get("where", True), kwargs.get("signature")
    odd = (out is not None or method == "at" or (method != "reduce" and not _is_true(where))
           or (dtype is not None and np.dtype(dtype).kind != "f")
           or (sig is not None and any(s is not None for s in np.atleast_1d(sig))))
    if odd:
        if not _carries(inputs):
            return _on_values(getattr(ufunc, method), call)(*inputs, **kwargs)
        if method == "at":
            raise TypeError(f"{call}(a, indices, t) with t requiring grad would write its values "
                            "into the ndarray a, dropping the gradient; build the result as a "
                            "tensor instead: td.tensor(a).at[indices].add(t) (or .set(t))")
        if out is not None:
            raise _err_out(call)
        if not _is_true(where) and method != "reduce":
            raise TypeError(
                f"{call}(..., where=mask) on tensors: without out= NumPy leaves the elements "
                "where the mask is False uninitialised, and out= cannot hold a gradient; "
                f"select explicitly instead: np.where(mask, {name}(...), fill)")
        if sig is not None:
            raise TypeError(f"{call}(..., signature=...) on tensors: pass dtype= (a float "
                            "dtype) or cast the operands with .astype()")
    for k in ("out", "casting", "order", "subok", "signature", "dtype"):
        kwargs.pop(k, None)
    dt = None if dtype is None else _float_dtype(dtype, call)
    if method == "__call__":
        fn = UFUNCS.get(ufunc) or (_late_ufunc(ufunc) if _LATE else None)
        if fn is None:
            raise _no_rule(call)
        kwargs.pop("where", None)
        if kwargs:
            raise TypeError(f"{call} on tensors does not take {', '.join(sorted(kwargs))}")
        r = fn(*(_cast(x, dt) for x in inputs))
        return O.astype(r, dt) if dt is not None and isinstance(r, Tensor) else r
    if method == "reduce" and (ufunc in REDUCTIONS or ufunc is np.logaddexp):
        return _ufunc_reduce(ufunc, call, *inputs, dtype=dt, **kwargs)
    if method == "accumulate" and ufunc in (np.add, np.multiply):
        (x,) = inputs
        axis = kwargs.pop("axis", 0)
        if kwargs:
            raise TypeError(f"{call} on tensors does not take {', '.join(sorted(kwargs))}")
        return (O.cumsum if ufunc is np.add else O.cumprod)(_cast(x, dt), axis)
    raise _no_rule(call)


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
    np.atleast_2d: O.atleast_2d, np.linalg.norm: O.norm, np.matmul: O.matmul,
}
# -- np.linalg (tapediff.linalg; np.linalg.norm is O.norm above) --------------------------------
from .. import linalg as _linalg  # noqa: E402  (it builds on _ops, complete by now)

FUNCTIONS.update({getattr(np.linalg, _name): getattr(_linalg, _name) for _name in (
    "solve", "inv", "det", "slogdet", "cholesky", "eigh", "eigvalsh", "svd", "svdvals", "pinv",
    "qr", "lstsq", "matrix_power", "multi_dot", "matrix_norm", "vector_norm", "cond",
    "matrix_transpose", "matmul", "outer", "tensordot", "diagonal", "trace", "vecdot",
) if hasattr(np.linalg, _name)})
FUNCTIONS[np.linalg.matrix_rank] = _on_values(np.linalg.matrix_rank, "numpy.linalg.matrix_rank")
# -- NumPy's functions composed from tapediff's operations (_numpy_functions) -------------
FUNCTIONS.update(F.FUNCTIONS)
UFUNCS.update(F.UFUNCS)
for _fn in (np.shape, np.ndim, np.size, np.allclose, np.isclose, np.array_equal,
            np.count_nonzero, np.nonzero, np.argsort, np.argwhere, np.any, np.all,
            np.isnan, np.isfinite, np.isinf, np.result_type, np.can_cast,
            np.searchsorted, np.histogram, np.floor, np.ceil, np.round, np.around):
    FUNCTIONS.setdefault(_fn, _on_values(_fn))


def _unique(x: Any, *args: Any, **kwargs: Any) -> Any:
    # its values are the input's: refused where they carry a gradient (as torch.unique's
    # backward is), run on the values otherwise
    if _carries(x):
        raise TypeError("numpy.unique on a tensor that requires grad has no gradient rule; "
                        "take its values explicitly with np.unique(t.detach()), or keep the "
                        "gradient with np.sort(t)")
    return _on_values(np.unique)(x, *args, **kwargs)


FUNCTIONS[np.unique] = _unique


def array_function(func: Any, types: Any, args: Any, kwargs: Any) -> Any:
    """Dispatch a NumPy function call with tensor arguments to tapediff.

    Keyword arguments: ``out=`` raises (an ndarray cannot hold a gradient, a tensor is not
    written in place) unless no argument carries a gradient, when the function runs on the
    values.  ``dtype=`` a float dtype casts (the input of the reductions and scans, as NumPy
    accumulates in it; the result elsewhere); another dtype raises likewise.
    ``initial=`` and ``where=`` of ``np.sum prod max min amax amin`` and ``where=`` of
    ``np.mean`` record (masked-out elements take the identity); ``where=`` of ``np.var`` /
    ``np.std`` raises.  Functions without a gradient take any keyword."""
    fn = FUNCTIONS.get(func)
    if fn is None:
        if func not in _TYPE_TESTS:
            raise _no_rule(_func_name(func))
        fn = _on_values(func, _func_name(func))
    if func is np.histogram:
        return _histogram(*args, **kwargs)
    if (not kwargs and (len(args) <= 2 or func not in _AFTER_AXIS)
            or getattr(fn, "no_gradient", False)):  # the common case
        return fn(*args, **kwargs)
    name = _func_name(func)
    if func in _AFTER_AXIS and len(args) > 2:  # NumPy's positional dtype, out, ... by name
        names = list(inspect.signature(func).parameters)[2:]
        kwargs = {**dict(zip(names, args[2:])), **kwargs}
        args = args[:2]
    if not kwargs:
        return fn(*args)
    kwargs = dict(kwargs)
    for k in _IGNORED.get(func, ()):
        kwargs.pop(k, None)
    out, dtype = kwargs.pop("out", None), kwargs.get("dtype")
    if out is not None:
        if _holds_tensor(out):
            raise TypeError(f"{name} with out= a tensor cannot record into the tensor; assign "
                            "the result instead")
        if _carries(args) or _carries(list(kwargs.values())):
            raise _err_out(name)
        return _on_values(func, name)(*args, out=out, **kwargs)
    cast = None
    if dtype is not None and func not in _LIKE:
        if np.dtype(dtype).kind != "f" and not _carries(args):
            return _on_values(func, name)(*args, **kwargs)
        cast = _float_dtype(kwargs.pop("dtype"), name)
        if func in _CAST_INPUT:
            args, cast = (_cast(args[0], cast), *args[1:]), None
    elif func not in _LIKE:
        kwargs.pop("dtype", None)
    where = kwargs.pop("where", True)
    if func in _REDUCE_FUNCTIONS and ("initial" in kwargs or not _is_true(where)):
        x, axis = args[0], args[1] if len(args) > 1 else kwargs.pop("axis", None)
        r = _ufunc_reduce(_REDUCE_FUNCTIONS[func], name, x, axis, None,
                          kwargs.pop("keepdims", False), kwargs.pop("initial", _ABSENT), where)
        if kwargs:
            raise TypeError(f"{name} on tensors does not take {', '.join(sorted(kwargs))}")
    elif func is np.mean and not _is_true(where):
        r = _masked_mean(*args, **kwargs, where=where)
    elif not _is_true(where):
        if _carries(args):
            raise TypeError(f"{name}(..., where=mask) on tensors is not supported; mask "
                            f"explicitly (np.where(mask, t, fill)), or {_DETACH}")
        return _on_values(func, name)(*args, where=where, **kwargs)
    else:
        try:
            r = fn(*args, **kwargs)
        except TypeError as e:  # NumPy's keyword argument that tapediff's function lacks
            m = re.search(r"unexpected keyword argument '?(\w+)", str(e))
            if m is None:
                raise
            raise TypeError(f"{name} on tensors does not take {m.group(1)}=") from None
    return O.astype(r, cast) if cast is not None and isinstance(r, Tensor) else r


def _func_name(func: Any) -> str:
    return f"{getattr(func, '__module__', None) or 'numpy'}.{func.__name__}"


# NumPy functions whose arguments after ``axis`` tapediff's take by name only; reductions
# and scans whose ``dtype=`` casts the input (NumPy accumulates in it); the *_like functions,
# whose ``dtype=`` is the result's; keywords that change no value
_REDUCE_FUNCTIONS = {np.sum: np.add, np.prod: np.multiply, np.max: np.maximum,
                     np.amax: np.maximum, np.min: np.minimum, np.amin: np.minimum}
_CAST_INPUT = {np.sum, np.prod, np.mean, np.var, np.std, np.cumsum, np.cumprod}
_AFTER_AXIS = _CAST_INPUT | set(_REDUCE_FUNCTIONS)
_LIKE = {np.zeros_like, np.ones_like, np.full_like, np.empty_like}
_IGNORED = {np.einsum: ("optimize",)}
# dtype tests (np.testing's assertions call them): no gradient
_TYPE_TESTS = (np.iscomplexobj, np.isrealobj, np.iscomplex, np.isreal)
