"""NumPy's functions beyond tapediff's own operations, composed from them: ``np.diff``,
``np.quantile``, ``np.interp``, ``np.convolve``, ``np.sort`` ... (``_numpy`` registers them
for NEP 18 dispatch).  None is a primitive: each records through ``_ops``.
"""

import math
import operator
import warnings
from typing import Any

import numpy as np

try:
    from numpy.lib.array_utils import normalize_axis_index, normalize_axis_tuple
except ImportError:  # NumPy < 2
    from numpy.core.multiarray import normalize_axis_index
    from numpy.core.numeric import normalize_axis_tuple

from . import _kernels as K
from . import _ops as O
from . import _tape
from ._guards import RAW_VALUE, observe
from ._record import constant, strong
from ._tensor import Tensor


def array_values(x: Any, what: str | None = None) -> Any:
    """Tensors in ``x`` (nested in lists and tuples) as arrays; ``what`` names the reader
    for a replay guard (None: only shapes and dtypes are read)."""
    if isinstance(x, Tensor):
        if what is not None:
            observe(x, what)
        return np.asarray(x._v)
    if isinstance(x, (list, tuple)):
        return type(x)(array_values(v, what) for v in x)
    return x


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
    ind = array_values(indices)
    return O.index_gather(O.as_tensor(x), lambda v: np.take_along_axis(v, ind, axis))


# ---------------------------------------------------------------------------------------------
# more of NumPy's functions, composed from the operations above (no primitives of their own).
# Each computes NumPy's own result on the values first (its value, dtype and argument errors);
# when nothing requires grad, that is the answer, as a constant.
# ---------------------------------------------------------------------------------------------
_NO = np._NoValue  # NumPy's "argument not given"
_sin, _exp2 = O.ELEMENTWISE["sin"], O.ELEMENTWISE["exp2"]


def _records(*xs: Any) -> bool:
    """Whether an operation of ``xs`` (tensors, also inside lists and tuples, among other
    values) records."""
    if not _tape.thread_state.grad_enabled:
        return False
    for x in xs:
        if isinstance(x, Tensor):
            if x._rg:
                return True
        elif isinstance(x, (list, tuple)) and _records(*x):
            return True
    return False


def _np(x: Any) -> Any:
    """An operand as NumPy's own function sees it: a tensor's values (read without a replay
    guard: only for the reference result), a Python number unchanged, nested lists too."""
    if isinstance(x, Tensor):
        return strong(RAW_VALUE.__get__(x))
    if isinstance(x, (list, tuple)):
        return type(x)(_np(v) for v in x)
    return x


def _const(r: Any) -> Any:
    """NumPy's result as constant tensors (a tuple or list of results element by element)."""
    if isinstance(r, (tuple, list)):
        return type(r)(_const(v) for v in r)
    return constant(np.asarray(r))


def _typed(x: Any, dtype: np.dtype) -> Tensor:
    """``x`` as a tensor of ``dtype`` (a recorded cast between float dtypes)."""
    x = x if isinstance(x, Tensor) else constant(np.asarray(x, dtype))
    return x if x.dtype == dtype else O.astype(x, dtype)


def _along(x: Tensor, axis: int, key: Any) -> Tensor:
    """``x[..., key, ...]`` with ``key`` (a slice) at ``axis`` (non-negative)."""
    return O.getitem(x, (slice(None),) * axis + (key,))


def _guard_compare(x: Tensor, other: Any, code: int, hit: np.ndarray, what: str) -> None:
    """Replay guard: the outcome ``hit`` of comparing ``x`` with ``other`` (``K.CMP_*``)
    steered what was recorded; replay stops when it changes."""
    tape = O.guarding_tape(x)
    if tape is not None:
        O.guard(tape, O.record_compare(x, other, code, np.asarray(hit), x.dtype), what)


# -- differences, triangles, diagonals, products of vectors ----------------------------------
def diff(a: Any, n: int = 1, axis: int = -1, prepend: Any = _NO, append: Any = _NO,
         **aliases: Any) -> Tensor:
    """The ``n``-th discrete difference along ``axis``, as ``np.diff``; ``prepend`` and
    ``append`` (tensors too) join ``a`` first.  PyTorch's ``dim=`` is accepted."""
    axis = O.axis_args(axis, False, aliases, -1)[0]
    prepend = _NO if prepend is None else prepend  # torch.diff's "none"
    append = _NO if append is None else append
    extra = {k: _np(v) for k, v in (("prepend", prepend), ("append", append)) if v is not _NO}
    if not _records(a, prepend, append):
        return _const(np.diff(_np(a), n, axis, **extra))
    a = O.as_tensor(a)
    if n == 0:
        return a
    if n < 0:
        raise ValueError(f"order must be non-negative but got {n!r}")
    if a.ndim == 0:
        raise ValueError("diff requires input that is at least one dimensional")
    ax = normalize_axis_index(axis, a.ndim)
    parts = []
    for v in (prepend, a, append):
        if v is a:
            parts.append(a)
        elif v is not _NO:
            v = O.as_tensor(v)
            if v.ndim == 0:
                v = O.broadcast_to(v, a.shape[:ax] + (1,) + a.shape[ax + 1:])
            parts.append(v)
    if len(parts) > 1:
        a = O.concatenate(parts, axis=ax)
    for _ in range(n):
        a = _along(a, ax, slice(1, None)) - _along(a, ax, slice(None, -1))
    return a


def _ediff1d(ary: Any, to_end: Any = None, to_begin: Any = None) -> Tensor:
    """Differences of consecutive elements of the flattened ``ary``, with ``to_begin`` and
    ``to_end`` joined, as ``np.ediff1d``."""
    if not _records(ary, to_end, to_begin):
        return _const(np.ediff1d(_np(ary), _np(to_end), _np(to_begin)))
    flat = O.ravel(ary)
    dt = flat.dtype
    parts = [_along(flat, 0, slice(1, None)) - _along(flat, 0, slice(None, -1))]
    for name, v in (("to_begin", to_begin), ("to_end", to_end)):
        if v is None:
            continue
        v = O.as_tensor(v)
        if not np.can_cast(v.dtype, dt, casting="same_kind"):
            raise TypeError(f"dtype of `{name}` must be compatible with input `ary` under the "
                            "`same_kind` rule.")
        v = O.ravel(_typed(v, dt))
        parts.insert(0, v) if name == "to_begin" else parts.append(v)
    return O.concatenate(parts) if len(parts) > 1 else parts[0]


def tril(m: Any, k: int = 0) -> Tensor:
    """Lower triangle of ``m`` (of each matrix over the last two axes): zeros above the
    ``k``-th diagonal, as ``np.tril``."""
    m = O.as_tensor(m)
    return O.where(np.tri(*m.shape[-2:], k=k, dtype=bool), m, np.zeros(1, m.dtype))


def triu(m: Any, k: int = 0) -> Tensor:
    """Upper triangle of ``m`` (of each matrix over the last two axes): zeros below the
    ``k``-th diagonal, as ``np.triu``."""
    m = O.as_tensor(m)
    return O.where(np.tri(*m.shape[-2:], k=k - 1, dtype=bool), np.zeros(1, m.dtype), m)


def diag(v: Any, k: int = 0) -> Tensor:
    """The ``k``-th diagonal of a matrix, or a matrix with the vector ``v`` on its ``k``-th
    diagonal, as ``np.diag``."""
    v = O.as_tensor(v)
    if v.ndim == 1:
        n = v.shape[0] + abs(k)
        i = np.arange(v.shape[0])
        rows, cols = (i, i + k) if k >= 0 else (i - k, i)
        return constant(np.zeros((n, n), v.dtype)).at[rows, cols].add(v)
    if v.ndim == 2:
        return O.diagonal(v, k)
    raise ValueError("Input must be 1- or 2-d.")


def diagflat(v: Any, k: int = 0) -> Tensor:
    """A matrix with the flattened ``v`` on its ``k``-th diagonal, as ``np.diagflat``."""
    return diag(O.ravel(v), k)


def kron(a: Any, b: Any) -> Tensor:
    """Kronecker product, as ``np.kron``: blocks of ``b`` scaled by the elements of ``a``."""
    if not _records(a, b):
        return _const(np.kron(_np(a), _np(b)))
    a, b = O.as_tensor(a), O.as_tensor(b)
    nd = max(a.ndim, b.ndim)
    if a.ndim == 0 or b.ndim == 0:
        return a * b
    sa = (1,) * (nd - a.ndim) + a.shape
    sb = (1,) * (nd - b.ndim) + b.shape
    ai = O.reshape(a, tuple(d for s in sa for d in (s, 1)))
    bi = O.reshape(b, tuple(d for s in sb for d in (1, s)))
    return O.reshape(ai * bi, tuple(x * y for x, y in zip(sa, sb)))


def cross(a: Any, b: Any, axisa: int = -1, axisb: int = -1, axisc: int = -1,
          axis: int | None = None) -> Tensor:
    """Cross product of 3-vectors (or 2-vectors, deprecated by NumPy) along the given axes,
    as ``np.cross``."""
    if not _records(a, b):
        return _const(np.cross(_np(a), _np(b), axisa, axisb, axisc, axis))
    if axis is not None:
        axisa = axisb = axisc = axis
    a, b = O.as_tensor(a), O.as_tensor(b)
    if a.ndim < 1 or b.ndim < 1:
        raise ValueError("At least one array has zero dimension")
    a = O.moveaxis(a, normalize_axis_index(axisa, a.ndim, msg_prefix="axisa"), -1)
    b = O.moveaxis(b, normalize_axis_index(axisb, b.ndim, msg_prefix="axisb"), -1)
    na, nb = a.shape[-1], b.shape[-1]
    if na not in (2, 3) or nb not in (2, 3):
        raise ValueError("incompatible dimensions for cross product\n"
                         "(dimension must be 2 or 3)")
    if na == 2 or nb == 2:
        warnings.warn("Arrays of 2-dimensional vectors are deprecated. Use arrays of "
                      "3-dimensional vectors instead. (deprecated in NumPy 2.0)",
                      DeprecationWarning, stacklevel=3)
    dt = np.promote_types(a.dtype, b.dtype)
    a, b = _typed(a, dt), _typed(b, dt)
    a0, a1, b0, b1 = a[..., 0], a[..., 1], b[..., 0], b[..., 1]
    c2 = a0 * b1 - a1 * b0
    if na == 2 and nb == 2:
        return c2
    if na == 2:
        b2 = b[..., 2]
        parts = [a1 * b2, -(a0 * b2), c2]
    elif nb == 2:
        a2 = a[..., 2]
        parts = [-(a2 * b1), a2 * b0, c2]
    else:
        a2, b2 = a[..., 2], b[..., 2]
        parts = [a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, c2]
    shape = np.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    cp = O.stack([p if p.shape == shape else O.broadcast_to(p, shape) for p in parts], -1)
    return O.moveaxis(cp, -1, normalize_axis_index(axisc, len(shape) + 1, msg_prefix="axisc"))


# -- joins, splits, insertions, rearrangements -----------------------------------------------
def _join(fn: Any) -> Any:
    """``fn`` (a join of a sequence of tensors) taking NumPy's ``dtype=`` and ``casting=``
    (which NumPy forwards, e.g. ``np.row_stack`` to ``np.vstack``)."""
    def run(tup: Any, *args: Any, dtype: Any = None, casting: str = "same_kind",
            out: Any = None, **kwargs: Any) -> Tensor:
        if out is not None:
            raise TypeError(f"numpy.{fn.__name__} with out= cannot record into a tensor; "
                            "assign the result instead")
        xs = [O.as_tensor(x) for x in tup]
        if dtype is not None:
            dt = np.dtype(dtype)
            for x in xs:
                if not np.can_cast(x.dtype, dt, casting=casting):
                    raise TypeError(f"Cannot cast array data from {x.dtype!r} to {dt!r} "
                                    f"according to the rule {casting!r}")
            xs = [_typed(x, dt) for x in xs]
        elif casting not in ("no", "equiv", "safe", "same_kind", "unsafe"):
            raise ValueError(f"casting must be one of 'no', 'equiv', 'safe', 'same_kind', or "
                             f"'unsafe' (got {casting!r})")
        return fn(xs, *args, **kwargs)
    run.__name__ = run.__qualname__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


def _append(arr: Any, values: Any, axis: int | None = None) -> Tensor:
    """``values`` appended to ``arr`` (both flattened when ``axis`` is None), as
    ``np.append``."""
    arr, values = O.as_tensor(arr), O.as_tensor(values)
    if axis is None:
        arr = arr if arr.ndim == 1 else O.ravel(arr)
        values, axis = O.ravel(values), arr.ndim - 1
    return O.concatenate([arr, values], axis=axis)


def _insert(arr: Any, obj: Any, values: Any, axis: int | None = None) -> Tensor:
    """``values`` inserted before the indices ``obj``, as ``np.insert``: NumPy's own insert
    applied to element numbers says where each result element comes from."""
    obj = array_values(obj)
    if not _records(arr, values):
        return _const(np.insert(_np(arr), obj, _np(values), axis))
    arr = O.as_tensor(arr)
    vals = _typed(values, arr.dtype)  # NumPy casts the values to arr's dtype
    # element k of arr is k + 1, element k of values is -(k + 1)
    src = np.insert(np.arange(1, arr.size + 1).reshape(arr.shape), obj,
                    -np.arange(1, vals.size + 1).reshape(vals.shape), axis)
    from_arr = src > 0
    if vals.size == 0 or from_arr.all():
        return O.reshape(O.take(O.ravel(arr), np.where(from_arr, src - 1, 0)), src.shape)
    picked_v = O.take(O.ravel(vals), np.where(from_arr, 0, -src - 1))
    if arr.size == 0:
        return picked_v
    return O.where(from_arr, O.take(O.ravel(arr), np.where(from_arr, src - 1, 0)), picked_v)


def _delete(arr: Any, obj: Any, axis: int | None = None) -> Tensor:
    """``arr`` without the sub-arrays at ``obj`` along ``axis`` (flattened when None), as
    ``np.delete``."""
    obj = array_values(obj)
    return O.index_gather(O.as_tensor(arr), lambda v: np.delete(v, obj, axis))


def _column_stack(tup: Any) -> Tensor:
    """1-d tensors as columns, 2-d ones as they are, joined along axis 1, as
    ``np.column_stack``."""
    xs = [O.as_tensor(x) for x in tup]
    return O.concatenate([O.reshape(x, (-1, 1)) if x.ndim < 2 else x for x in xs], axis=1)


def atleast_3d(x: Any) -> Tensor:
    """``x`` with at least three dimensions, as ``np.atleast_3d``: (N,) becomes (1, N, 1),
    (M, N) becomes (M, N, 1)."""
    x = O.as_tensor(x)
    s = x.shape
    if len(s) >= 3:
        return x
    return O.reshape(x, (1, 1, 1) if not s else (1, s[0], 1) if len(s) == 1 else s + (1,))


def _atleast(fn: Any) -> Any:
    """``np.atleast_*d`` of several arguments: a tuple of tensors, as NumPy 2 returns."""
    def run(*arys: Any) -> Any:
        out = tuple(fn(x) for x in arys)
        return out[0] if len(out) == 1 else out
    run.__name__ = run.__qualname__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


def _dstack(tup: Any) -> Tensor:
    """Tensors joined along the third axis (after ``atleast_3d``), as ``np.dstack``."""
    return O.concatenate([atleast_3d(x) for x in tup], axis=2)


def _nsplit(name: str, min_ndim: int, axis: Any) -> Any:
    """``np.hsplit``/``vsplit``/``dsplit``: ``np.split`` along a fixed axis."""
    def run(ary: Any, indices_or_sections: Any) -> list[Tensor]:
        ary = O.as_tensor(ary)
        if ary.ndim < min_ndim:
            raise ValueError(f"{name} only works on arrays of {min_ndim} or more dimensions")
        ax = axis(ary.ndim) if callable(axis) else axis
        return list(O.split(ary, array_values(indices_or_sections), ax))
    run.__name__ = run.__qualname__ = name
    run.__doc__ = f"Split into sub-tensors along a fixed axis, as ``np.{name}``."
    return run


def flipud(m: Any) -> Tensor:
    """``m`` with the order of rows (axis 0) reversed, as ``np.flipud``."""
    return O.record_view(O.as_tensor(m), np.flipud)


def fliplr(m: Any) -> Tensor:
    """``m`` with the order of columns (axis 1) reversed, as ``np.fliplr``."""
    return O.record_view(O.as_tensor(m), np.fliplr)


def rot90(m: Any, k: int = 1, axes: Any = (0, 1), **aliases: Any) -> Tensor:
    """``m`` rotated by 90 degrees ``k`` times in the plane of ``axes``, as ``np.rot90``
    (PyTorch's ``dims=`` accepted)."""
    axes = aliases.pop("dims", axes)
    O.axis_args(None, False, aliases)  # nothing else accepted
    return O.record_view(O.as_tensor(m), lambda v: np.rot90(v, k, axes))


def _rollaxis(a: Any, axis: int, start: int = 0) -> Tensor:
    """``a`` with ``axis`` rolled back to ``start``, as ``np.rollaxis``."""
    return O.record_view(O.as_tensor(a), lambda v: np.rollaxis(v, axis, start))


def _sort_np(a: Any, axis: Any = -1, kind: Any = None, order: Any = None, *,
             stable: Any = None) -> Tensor:
    """``np.sort`` on tensors (values; the gradient follows ``argsort``), with NumPy's
    ``stable=``."""
    if order is not None:
        raise TypeError("np.sort(order=...) sorts structured arrays; tensors are not")
    if stable is not None:
        if kind is not None:
            raise ValueError("`kind` and `stable` parameters can't be provided at the same "
                             "time. Use only one of them.")
        kind = "stable" if stable else None
    return _sort(a, axis, kind)


# -- selections -------------------------------------------------------------------------------
def _select(condlist: Any, choicelist: Any, default: Any = 0) -> Tensor:
    """The element of the first choice whose condition holds (else ``default``), as
    ``np.select``; conditions are not differentiated."""
    if len(condlist) != len(choicelist):
        raise ValueError("list of cases must be same length as list of conditions")
    value = np.select(list(_np(list(condlist))), list(_np(list(choicelist))), _np(default))
    if not _records(list(choicelist), default):
        return constant(np.asarray(value))
    dt = value.dtype
    out = _typed(default, dt)
    for cond, choice in zip(reversed(list(condlist)), reversed(list(choicelist))):
        out = O.where(cond, _typed(choice, dt), out)
    return out if out.shape == value.shape else O.broadcast_to(out, value.shape)


def _piecewise(x: Any, condlist: Any, funclist: Any, *args: Any, **kw: Any) -> Tensor:
    """``np.piecewise``: ``funclist[i]`` (a callable, given the tensor of the selected
    elements, or a value) where ``condlist[i]`` holds, later conditions winning; 0 (or the
    extra last function) elsewhere."""
    x = O.as_tensor(x)
    what = "np.piecewise()"
    if isinstance(condlist, Tensor):
        condlist = array_values(condlist, what)
    if np.isscalar(condlist) or (
            not isinstance(condlist[0], (list, np.ndarray, Tensor)) and x.ndim != 0):
        condlist = [condlist]
    conds = np.asarray([np.asarray(array_values(c, what)) for c in condlist], dtype=bool)
    n = len(conds)
    if n == len(funclist) - 1:  # the "otherwise" condition
        conds = np.concatenate([conds, ~np.any(conds, axis=0, keepdims=True)], axis=0)
        n += 1
    elif n != len(funclist):
        raise ValueError(f"with {n} condition(s), either {n} or {n + 1} functions are "
                         "expected")
    dt = x.dtype
    y = constant(np.zeros(x.shape, dt))
    for cond, func in zip(conds, funclist):
        if not callable(func):
            y = y.at[cond].set(_typed(func, dt))
            continue
        vals = O.getitem(x, cond)
        if vals.size > 0:
            y = y.at[cond].set(_typed(func(vals, *args, **kw), dt))
    return y


# -- sequences, numerical derivatives, integrals -----------------------------------------
def _linspace(start: Any, stop: Any, num: int = 50, endpoint: bool = True,
              retstep: bool = False, dtype: Any = None, axis: int = 0, *,
              device: Any = None) -> Any:
    """``num`` evenly spaced values from ``start`` to ``stop`` (tensors: the values depend
    on both ends), as ``np.linspace``."""
    value = np.linspace(_np(start), _np(stop), num, endpoint, retstep, dtype, axis)
    value, step_value = value if retstep else (value, None)
    if not _records(start, stop) or value.dtype.kind != "f":  # an int dtype floors: constant
        return (constant(value), _const(step_value)) if retstep else constant(value)
    num = operator.index(num)
    div = num - 1 if endpoint else num
    dt = np.result_type(_np(start), _np(stop), 1.0)  # NumPy's (inexact) working dtype
    s, e = _typed(start, dt), _typed(stop, dt)
    delta = e - s
    ramp = np.arange(0, num, dtype=dt).reshape((-1,) + (1,) * delta.ndim)
    if div > 0:
        step = delta / div
        if np.any(O.array_of(step) == 0):  # NumPy's order for denormal steps
            y = (ramp / div).astype(dt) * delta
        else:
            y = ramp * step
    else:
        step = constant(np.asarray(np.nan, dt))
        y = ramp * delta
    y = y + s
    if endpoint and num > 1:
        last = O.expand_dims(O.broadcast_to(e, y.shape[1:]), 0)
        y = O.concatenate([_along(y, 0, slice(None, -1)), last], axis=0)
    if axis != 0:
        y = O.moveaxis(y, 0, axis)
    y = _typed(y, value.dtype)
    return (y, step) if retstep else y


def _gradient(f: Any, *varargs: Any, axis: Any = None, edge_order: int = 1) -> Any:
    """Second-order central differences inside, first- or second-order one-sided ones at
    the edges, as ``np.gradient``; spacings are numbers (tensors too) or coordinate arrays
    (not differentiated)."""
    if not _records(f, *varargs):
        return _const(np.gradient(_np(f), *_np(varargs), axis=axis, edge_order=edge_order))
    f = O.as_tensor(f)
    nd = f.ndim
    axes = tuple(range(nd)) if axis is None else normalize_axis_tuple(axis, nd)
    if len(varargs) == 0:
        dx = [1.0] * len(axes)
    elif len(varargs) == 1 and np.ndim(_np(varargs[0])) == 0:
        dx = [varargs[0]] * len(axes)
    elif len(varargs) == len(axes):
        dx = list(varargs)
        for i, d in enumerate(dx):
            if np.ndim(_np(d)) == 0:
                continue
            if _records(d):
                raise TypeError("np.gradient: coordinate arrays that require grad are not "
                                "supported; pass their values (or scalar spacings)")
            d = np.asanyarray(array_values(d, "np.gradient()"))
            if d.ndim != 1:
                raise ValueError("distances must be either scalars or 1d")
            if len(d) != f.shape[axes[i]]:
                raise ValueError("when 1d, distances must match the length of the "
                                 "corresponding dimension")
            if np.issubdtype(d.dtype, np.integer):
                d = d.astype(np.float64)
            d = np.diff(d)
            dx[i] = d[0] if (d == d[0]).all() else d
    else:
        raise TypeError("invalid number of arguments")
    if edge_order > 2:
        raise ValueError("'edge_order' greater than 2 not supported")
    otype = f.dtype if f.dtype.kind == "f" else np.dtype(np.float64)
    f = _typed(f, otype)
    outs = []
    for ax, h in zip(axes, dx):
        if f.shape[ax] < edge_order + 1:
            raise ValueError("Shape of array too small to calculate a numerical gradient, "
                             "at least (edge_order + 1) elements are required.")

        def at(i: int, j: int | None, ax: int = ax) -> Tensor:
            return _along(f, ax, slice(i, j))

        uniform = np.ndim(_np(h)) == 0
        shape = [1] * nd
        shape[ax] = -1
        if uniform:
            inner = (at(2, None) - at(0, -2)) / (2.0 * h)
        else:
            dx1, dx2 = h[:-1], h[1:]
            a = (-dx2 / (dx1 * (dx1 + dx2))).reshape(shape)
            b = ((dx2 - dx1) / (dx1 * dx2)).reshape(shape)
            c = (dx1 / (dx2 * (dx1 + dx2))).reshape(shape)
            inner = a * at(0, -2) + b * at(1, -1) + c * at(2, None)
        if edge_order == 1:
            first = (at(1, 2) - at(0, 1)) / (h if uniform else h[0])
            last = (at(-1, None) - at(-2, -1)) / (h if uniform else h[-1])
        else:
            if uniform:
                a, b, c = -1.5 / h, 2.0 / h, -0.5 / h
            else:
                dx1, dx2 = h[0], h[1]
                a = -(2.0 * dx1 + dx2) / (dx1 * (dx1 + dx2))
                b = (dx1 + dx2) / (dx1 * dx2)
                c = -dx1 / (dx2 * (dx1 + dx2))
            first = a * at(0, 1) + b * at(1, 2) + c * at(2, 3)
            if uniform:
                a, b, c = 0.5 / h, -2.0 / h, 1.5 / h
            else:
                dx1, dx2 = h[-2], h[-1]
                a = dx2 / (dx1 * (dx1 + dx2))
                b = -(dx2 + dx1) / (dx1 * dx2)
                c = (2.0 * dx2 + dx1) / (dx2 * (dx1 + dx2))
            last = a * at(-3, -2) + b * at(-2, -1) + c * at(-1, None)
        outs.append(O.concatenate([_typed(p, otype) for p in (first, inner, last)], axis=ax))
    return outs[0] if len(outs) == 1 else tuple(outs)


def trapezoid(y: Any, x: Any = None, dx: Any = 1.0, axis: int = -1, **aliases: Any) -> Tensor:
    """Integral of ``y`` along ``axis`` by the trapezoidal rule, with sample points ``x``
    (tensors too) or spacing ``dx``, as ``np.trapezoid`` (PyTorch's ``dim=`` accepted)."""
    axis = O.axis_args(axis, False, aliases, -1)[0]
    if not _records(y, x, dx):
        return _const(np.trapezoid(_np(y), _np(x), _np(dx), axis))
    y = O.as_tensor(y)
    ax = normalize_axis_index(axis, y.ndim)
    if x is None:
        d = dx
    else:
        x = O.as_tensor(x)
        if x.ndim == 1:
            d = diff(x)
            shape = [1] * y.ndim
            shape[ax] = d.shape[0]
            d = O.reshape(d, tuple(shape))
        else:
            d = diff(x, axis=axis)
    s = _along(y, ax, slice(1, None)) + _along(y, ax, slice(None, -1))
    return O.sum_(d * s / 2.0, ax)


def _polyval(p: Any, x: Any) -> Tensor:
    """The polynomial with coefficients ``p`` (highest power first) at ``x``, by Horner's
    rule, as ``np.polyval``."""
    if not _records(p, x):
        return _const(np.polyval(_np(p), _np(x)))
    p, x = O.as_tensor(p), O.as_tensor(x)
    if p.ndim == 0:
        raise TypeError("iteration over a 0-d array")
    y = constant(np.zeros(x.shape, x.dtype))
    for i in range(p.shape[0]):
        y = y * x + p[i]
    return y


def _convolve_rows(a: Tensor, w: Tensor, start: int, stop: int) -> Tensor:
    """Rows ``start:stop`` of the full correlation sum_n a[i + n - (len(w) - 1)] w[n] (zero
    outside ``a``): one gather of windows and one matrix product."""
    nw = w.shape[0]
    padded = O.pad(a, (nw - 1, nw - 1))
    windows = O.take(padded, np.arange(start, stop)[:, None] + np.arange(nw))
    return O.matmul(windows, w)


_MODES = {"v": 0, "s": 1, "f": 2}  # NumPy reads a mode by its first letter, or 0, 1, 2


def _correlate_core(a: Tensor, w: Tensor, mode: Any) -> Tensor:
    """NumPy's correlation of ``a`` with ``w`` (len(a) >= len(w)) in ``mode``."""
    na, nw = a.shape[0], w.shape[0]
    full = na + nw - 1
    m = _MODES[mode[0].lower()] if isinstance(mode, str) else int(mode)
    start, stop = ((nw - 1, na), ((nw - 1) // 2, (nw - 1) // 2 + na), (0, full))[m]
    return _convolve_rows(a, w, start, stop)


def _convolve(a: Any, v: Any, mode: Any = "full") -> Tensor:
    """Discrete linear convolution of two 1-d sequences (tensors on either side), as
    ``np.convolve``."""
    value = np.asarray(np.convolve(_np(a), _np(v), mode))
    if not _records(a, v):
        return constant(value)
    a, v = O.atleast_1d(_typed(a, value.dtype)), O.atleast_1d(_typed(v, value.dtype))
    if v.shape[0] > a.shape[0]:
        a, v = v, a
    return _correlate_core(a, O.flip(v), mode)


def _correlate(a: Any, v: Any, mode: Any = "valid") -> Tensor:
    """Cross-correlation of two 1-d sequences (tensors on either side), as
    ``np.correlate``."""
    value = np.asarray(np.correlate(_np(a), _np(v), mode))
    if not _records(a, v):
        return constant(value)
    a, v = O.atleast_1d(_typed(a, value.dtype)), O.atleast_1d(_typed(v, value.dtype))
    if v.shape[0] > a.shape[0]:  # NumPy swaps the operands and reverses the result
        return O.flip(_correlate_core(v, a, mode))
    return _correlate_core(a, v, mode)


def interp(x: Any, xp: Any, fp: Any, left: Any = None, right: Any = None,
           period: Any = None) -> Tensor:
    """Piecewise-linear interpolation of the points (``xp``, ``fp``) at ``x``, as
    ``np.interp`` (float64).  Differentiable in ``x`` (the slope of its segment, 0 outside
    ``xp``), ``fp``, ``left`` and ``right``; ``xp`` is data and must not require grad."""
    if _records(xp, period):
        raise TypeError("np.interp: the gradient with respect to xp and period is not "
                        "supported; pass their values (x, fp, left and right may require grad)")
    value = np.asarray(np.interp(_np(x), _np(xp), _np(fp), _np(left), _np(right), period))
    if not _records(x, fp, left, right):
        return constant(value)
    f64 = np.dtype(np.float64)
    x, fp = _typed(x, f64), _typed(fp, f64)
    xp = np.asarray(array_values(xp, "np.interp()"), f64)
    if period is not None:  # as NumPy: map into one period, extend by one point each side
        period, left, right = abs(period), None, None
        x = O.remainder(x, period)
        xp = xp % period
        order = np.argsort(xp)
        xp, fp = xp[order], O.take(fp, order)
        xp = np.concatenate((xp[-1:] - period, xp, xp[0:1] + period))
        fp = O.concatenate([fp[-1:], fp, fp[0:1]])
    xv = O.array_of(x)
    n = xp.shape[0]
    lval = fp[0] if left is None else _typed(left, f64)
    rval = fp[-1] if right is None else _typed(right, f64)
    if n == 1:
        y = fp[0] + 0.0 * x
    else:
        j = np.clip(np.searchsorted(xp, xv, side="right") - 1, 0, n - 2)
        x0, x1 = xp[j], xp[j + 1]
        f0 = O.take(fp, j)
        slope = (O.take(fp, j + 1) - f0) / (x1 - x0)
        y = slope * (x - x0) + f0
        _guard_compare(x, x0, K.CMP_GE, xv >= x0, "np.interp()")
        _guard_compare(x, x1, K.CMP_LT, xv < x1, "np.interp()")
    below, above = xv < xp[0], xv > xp[-1]
    _guard_compare(x, xp[0], K.CMP_LT, below, "np.interp()")
    _guard_compare(x, xp[-1], K.CMP_GT, above, "np.interp()")
    y = O.where(below, lval, O.where(above, rval, y))
    return O.set_value(y, value)  # NumPy's rounding at the knots (y is a fresh where record)


# -- order statistics, averages ----------------------------------------------------------------
def _rows(a: Tensor, axis: Any) -> tuple:
    """``a`` with the reduced axes last, flattened to (kept elements, reduced elements),
    and the shape of the result with ``keepdims``."""
    nd = a.ndim
    axes = tuple(range(nd)) if axis is None else normalize_axis_tuple(axis, nd)
    kept = [d for d in range(nd) if d not in axes]
    order = kept + list(axes)
    t = a if order == list(range(nd)) else O.transpose(a, order)
    n = math.prod(a.shape[d] for d in axes)
    rows = O.reshape(t, (math.prod(a.shape[d] for d in kept), n))
    kept_shape = tuple(a.shape[d] for d in kept)
    keep_shape = tuple(1 if d in axes else a.shape[d] for d in range(nd))
    return rows, kept_shape, keep_shape


def _order_statistics(a: Any, q: Any, axis: Any, keepdims: bool, value: np.ndarray,
                      method: str, ref: Any, skip_nan: bool, median: bool) -> Tensor:
    """Quantiles (or medians) of ``a`` whose NumPy value is ``value``: the rows sorted
    (``np.sort``: the gradient follows argsort), then the interpolation of NumPy's ``method``
    between the two order statistics it reads, with NumPy's weights.  ``ref`` is the NumPy
    function that gives the (fractional) position of each quantile among ``c`` sorted
    values, read from ``ref(arange(c), q)``; NaN rows give NaN (``skip_nan``: NaNs are
    left out)."""
    a = O.as_tensor(a)
    if value.dtype.kind != "f":
        return constant(value)
    rows, kept_shape, keep_shape = _rows(_typed(a, value.dtype), axis)
    m, n = rows.shape
    if n == 0:  # NumPy's NaN of an empty reduction: there is no element to depend on
        return constant(value)
    s = _sort(rows, -1)
    sv = O.array_of(s)
    qv = np.asarray(q)
    counts = n - np.isnan(sv).sum(axis=1) if skip_nan else np.full(m, n)
    lo = np.zeros((qv.size, m), np.int64)
    gamma = np.zeros((qv.size, m))
    for c in np.unique(counts):
        if c == 0:  # all NaN: the NaN last element
            lo[:, counts == c] = n - 1
            continue
        pos = np.asarray(0.5 * (c - 1) if median else ref(np.arange(c, dtype=np.float64), qv),
                         np.float64).reshape(-1)
        k = np.floor(pos)
        lo[:, counts == c] = k.astype(np.int64)[:, None]
        gamma[:, counts == c] = (pos - k)[:, None]
    hi = np.where(gamma > 0, np.minimum(lo + 1, counts - 1), lo)
    base = np.arange(m)[None, :] * n
    flat = O.ravel(s)
    lower = O.take(flat, base + lo)
    if median:
        r = (lower + O.take(flat, base + hi)) / 2
    elif not gamma.any():
        r = lower
    else:
        upper = O.take(flat, base + hi)
        d = upper - lower
        t = gamma.astype(value.dtype)
        up = t >= 0.5
        r = O.where(up, upper - d * (1 - t), lower + d * t)
    if not skip_nan and n > 0:  # NumPy: a row holding a NaN gives NaN
        nan_rows = np.isnan(sv[:, -1])
        if nan_rows.any():
            r = O.where(nan_rows[None, :], O.take(flat, base + n - 1), r)
    shape = qv.shape + (keep_shape if keepdims else kept_shape)
    return _typed(O.reshape(r, shape), value.dtype)


def _quantile_args(q: Any, out: Any, weights: Any, what: str) -> Any:
    if out is not None:
        raise TypeError(f"numpy.{what} with out= cannot record into a tensor; assign the "
                        "result instead")
    if _records(q):
        raise TypeError(f"{what}: the gradient with respect to q is not supported; pass "
                        "q.detach()")
    if weights is not None:
        raise NotImplementedError(f"{what} with weights= is not supported on tensors that "
                                  "require grad")
    return _np(q)


def quantile(a: Any, q: Any, axis: Any = None, out: Any = None, overwrite_input: bool = False,
             method: str = "linear", keepdims: bool = False, *, weights: Any = None,
             **aliases: Any) -> Tensor:
    """The ``q``-th quantiles (``q`` in [0, 1]) along ``axis``, as ``np.quantile``: any of
    NumPy's methods; the gradient goes to the order statistics with the interpolation
    weights.  PyTorch's ``dim=``, ``keepdim=`` and ``interpolation=`` are accepted."""
    method = aliases.pop("interpolation", method)
    axis, keepdims = O.axis_args(axis, keepdims, aliases)
    value = np.asarray(np.quantile(_np(a), _np(q), axis=axis, method=method,
                                   keepdims=keepdims, weights=_np(weights)))
    if not _records(a, q, weights):
        return constant(value)
    qv = _quantile_args(q, out, weights, "quantile")
    return _order_statistics(a, qv, axis, keepdims, value, method,
                             lambda r, q: np.quantile(r, q, method=method), False, False)


def _quantile_like(fn: Any, ref: Any, nan: bool) -> Any:
    """``np.percentile``, ``np.nanquantile`` or ``np.nanpercentile`` (``fn``) on tensors, as
    ``quantile``: ``ref`` places the order statistics of a row (``nan``: NaNs left out)."""
    def run(a: Any, q: Any, axis: Any = None, out: Any = None, overwrite_input: bool = False,
            method: str = "linear", keepdims: Any = _NO, *, weights: Any = None) -> Tensor:
        kd = {} if keepdims is _NO else {"keepdims": keepdims}
        value = np.asarray(fn(_np(a), _np(q), axis=axis, method=method, weights=_np(weights),
                              **kd))
        if not _records(a, q, weights):
            return constant(value)
        qv = _quantile_args(q, out, weights, fn.__name__)
        return _order_statistics(a, qv, axis, bool(keepdims is not _NO and keepdims), value,
                                 method, lambda r, q: ref(r, q, method=method), nan, False)
    run.__doc__ = f"``np.{fn.__name__}`` on tensors (see ``quantile``)."
    return run


_percentile = _quantile_like(np.percentile, np.percentile, False)
_nanquantile = _quantile_like(np.nanquantile, np.quantile, True)
_nanpercentile = _quantile_like(np.nanpercentile, np.percentile, True)


def _median(a: Any, axis: Any = None, out: Any = None, overwrite_input: bool = False,
            keepdims: bool = False) -> Tensor:
    """``np.median``: the middle order statistic, or the mean of the two middle ones."""
    value = np.asarray(np.median(_np(a), axis=axis, keepdims=keepdims))
    if not _records(a):
        return constant(value)
    _quantile_args(None, out, None, "median")
    return _order_statistics(a, 0.5, axis, keepdims, value, "", None, False, True)


def _nanmedian(a: Any, axis: Any = None, out: Any = None, overwrite_input: bool = False,
               keepdims: Any = _NO) -> Tensor:
    """``np.nanmedian``: the median leaving out NaNs."""
    kd = {} if keepdims is _NO else {"keepdims": keepdims}
    value = np.asarray(np.nanmedian(_np(a), axis=axis, **kd))
    if not _records(a):
        return constant(value)
    _quantile_args(None, out, None, "nanmedian")
    return _order_statistics(a, 0.5, axis, bool(keepdims is not _NO and keepdims), value, "",
                             None, True, True)


def _average(a: Any, axis: Any = None, weights: Any = None, returned: bool = False, *,
             keepdims: Any = _NO) -> Any:
    """Weighted average along ``axis`` (weights may be tensors), as ``np.average``;
    ``returned=True`` also gives the sum of the weights."""
    kd = {} if keepdims is _NO else {"keepdims": keepdims}
    value = np.average(_np(a), axis, _np(weights), returned, **kd)  # NumPy's checks
    if not _records(a, weights):
        return _const(value)
    a = O.as_tensor(a)
    axes = None if axis is None else normalize_axis_tuple(axis, a.ndim)
    if weights is None:
        avg = O.mean(a, axes, **kd)
        scl = constant(np.asarray(avg.dtype.type(a.size / max(avg.size, 1))))
    else:
        w = O.as_tensor(weights)
        if a.shape != w.shape:  # NumPy checked the shapes: w spans the axes
            w = O.transpose(w, tuple(np.argsort(axes)))
            w = O.reshape(w, tuple(s if d in axes else 1 for d, s in enumerate(a.shape)))
        if a.dtype.kind in "biu":
            dt = np.result_type(a.dtype, w.dtype, "f8")
        else:
            dt = np.result_type(a.dtype, w.dtype)
        wt = _typed(w, dt)
        scl = O.sum_(wt, axes, **kd)
        avg = O.sum_(_typed(a, dt) * wt, axes, **kd) / scl
    if not returned:
        return avg
    if scl.shape != avg.shape:
        scl = O.broadcast_to(scl, avg.shape)
    return avg, scl


# -- elementwise ------------------------------------------------------------------------------
def nan_to_num(x: Any, copy: bool = True, nan: float = 0.0, posinf: Any = None,
               neginf: Any = None) -> Tensor:
    """``x`` with NaN, +inf and -inf replaced by numbers, as ``np.nan_to_num``; the gradient
    is 1 where ``x`` is finite and 0 where a value was replaced (as PyTorch)."""
    if _records(nan, posinf, neginf):
        raise TypeError("np.nan_to_num: the replacement values must not require grad")
    value = np.asarray(np.nan_to_num(_np(x), True, _np(nan), _np(posinf), _np(neginf)))
    if not _records(x) or value.dtype.kind != "f":
        return constant(value)
    x = O.as_tensor(x)
    a = O.array_of(x)
    for code, other, hit in ((K.CMP_EQ, x, a == a), (K.CMP_EQ, np.inf, a == np.inf),
                             (K.CMP_EQ, -np.inf, a == -np.inf)):
        _guard_compare(x, other, code, hit, "np.nan_to_num()")
    return O.where(np.isfinite(a), x, value)


def _isnan(x: Any) -> Any:
    """Where ``x`` is NaN: a comparison that replay recomputes when ``x`` is a tensor."""
    return x != x if isinstance(x, Tensor) else np.isnan(np.asarray(x))


def fmax(a: Any, b: Any) -> Tensor:
    """Elementwise maximum ignoring NaNs, as ``np.fmax``; at ties each input gets half the
    gradient (as ``maximum``), a NaN input none (both NaN: the first)."""
    value = np.asarray(np.fmax(O.operand_value(a), O.operand_value(b)))
    if not _records(a, b):
        return constant(value)
    return O.where(_isnan(b), a, O.where(_isnan(a), b, O.maximum(a, b)))


def fmin(a: Any, b: Any) -> Tensor:
    """Elementwise minimum ignoring NaNs, as ``np.fmin``; at ties each input gets half the
    gradient (as ``minimum``), a NaN input none (both NaN: the first)."""
    value = np.asarray(np.fmin(O.operand_value(a), O.operand_value(b)))
    if not _records(a, b):
        return constant(value)
    return O.where(_isnan(b), a, O.where(_isnan(a), b, O.minimum(a, b)))


def _floating(x: Any) -> Tensor:
    """``x`` as a tensor, ints as float64 (as NumPy's float ufuncs)."""
    x = O.as_tensor(x)
    return x if x.dtype.kind == "f" else O.astype(x, np.float64)


def arcsinh(x: Any) -> Tensor:
    """Elementwise inverse hyperbolic sine; composed as sign(x) log1p(|x| + x^2 / (1 +
    hypot(1, x))) (no overflow, no cancellation), with NumPy's value."""
    x = _floating(x)
    value = np.arcsinh(O.operand_value(x))
    if not _records(x):
        return constant(np.asarray(value))
    neg = x < 0
    ax = O.where(neg, -x, x)  # |x| with gradient sign(x), 1 at 0
    r = O.log1p(ax + ax * (ax / (1.0 + O.hypot(1.0, ax))))
    return O.set_value(O.where(neg, -r, r), value)


def arccosh(x: Any) -> Tensor:
    """Elementwise inverse hyperbolic cosine (x >= 1); composed as log1p(t + sqrt(t)
    sqrt(x + 1)) with t = x - 1, with NumPy's value (NaN below 1, an infinite gradient
    at 1)."""
    x = _floating(x)
    with np.errstate(invalid="ignore"):
        value = np.arccosh(O.operand_value(x))
        if not _records(x):
            return constant(np.asarray(value))
        t = x - 1.0
        r = O.log1p(t + O.sqrt(t) * O.sqrt(x + 1.0))
    return O.set_value(r, value)


def arctanh(x: Any) -> Tensor:
    """Elementwise inverse hyperbolic tangent (|x| <= 1); composed as (log1p(x) -
    log1p(-x)) / 2, with NumPy's value."""
    x = _floating(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.arctanh(O.operand_value(x))
        if not _records(x):
            return constant(np.asarray(value))
        r = (O.log1p(x) - O.log1p(-x)) * 0.5
    return O.set_value(r, value)


def logaddexp2(a: Any, b: Any) -> Tensor:
    """log2(2**a + 2**b) without overflow, as ``np.logaddexp2``: max + log2(1 + 2**-|a -
    b|), with NumPy's value."""
    value = np.asarray(np.logaddexp2(O.operand_value(a), O.operand_value(b)))
    if not _records(a, b):
        return constant(value)
    a, b = _typed(a, value.dtype), _typed(b, value.dtype)
    m = O.maximum(a, b)
    out = m + O.log1p(_exp2(-O.abs_(a - b))) * (1.0 / math.log(2.0))
    return O.set_value(out, value)


def deg2rad(x: Any) -> Tensor:
    """Degrees to radians, elementwise (``np.deg2rad``, ``np.radians``)."""
    return _floating(x) * (math.pi / 180.0)


def rad2deg(x: Any) -> Tensor:
    """Radians to degrees, elementwise (``np.rad2deg``, ``np.degrees``)."""
    return _floating(x) * (180.0 / math.pi)


def sinc(x: Any) -> Tensor:
    """sin(pi x) / (pi x), 1 at 0 with gradient 0 there (as PyTorch's sinc), as
    ``np.sinc``."""
    x = _floating(x)
    if not _records(x):
        return constant(np.asarray(np.sinc(O.operand_value(x))))
    # near 0 (and at subnormal x, where sin(s)/s's derivative is inf - inf) its Taylor series
    # 1 - s**2/6 + s**4/120 in s = pi x; the value is NumPy's own
    s = np.pi * x
    small = O.abs_(s) < 1e-3
    safe = O.where(small, 1.0, s)
    s2 = s * s
    out = O.where(small, 1.0 - s2 / 6.0 + s2 * s2 / 120.0, _sin(safe) / safe)
    return O.set_value(out, np.sinc(O.operand_value(x)))


def _real(val: Any) -> Tensor:
    """The real part of a real tensor: a copy, gradient 1."""
    return _copy(val)


def _imag(val: Any) -> Tensor:
    """The imaginary part of a real tensor: zeros, a constant."""
    x = O.as_tensor(val)
    return constant(np.zeros(x.shape, x.dtype))


def _angle(z: Any, deg: bool = False) -> Tensor:
    """The angle of a real tensor: pi where it is negative, else 0; a constant (PyTorch's
    angle of a real tensor has gradient 0)."""
    x = O.as_tensor(z)
    a = np.asarray(_np(x))
    _guard_compare(x, 0.0, K.CMP_LT, a < 0, "np.angle()")
    return constant(np.asarray(np.angle(a, deg)))


def _copy_np(a: Any, order: str = "K", subok: bool = False) -> Tensor:
    """``np.copy``: a copy with gradient 1."""
    return _copy(a, order)


def _full_like(a: Any, fill_value: Any, dtype: Any = None, order: str = "K",
               subok: bool = True, shape: Any = None, *, device: Any = None) -> Tensor:
    """``np.full_like``: the shape (and dtype) of ``a`` filled with ``fill_value``; a tensor
    fill value that requires grad gets the sum of the gradient (of its broadcast)."""
    x = O.as_tensor(a)
    if not _records(fill_value):
        return constant(np.full_like(np.empty(x.shape, x.dtype), _np(fill_value), dtype,
                                     order, True, shape))
    dt = x.dtype if dtype is None else np.dtype(dtype)
    shp = x.shape if shape is None else tuple(np.empty(shape, np.int8).shape)
    return O.broadcast_to(_typed(fill_value, dt), shp)


# ---------------------------------------------------------------------------------------------
# what _numpy registers for NEP 18 / NEP 13 dispatch
# ---------------------------------------------------------------------------------------------
FUNCTIONS: dict = {
    np.take_along_axis: _take_along_axis, np.zeros_like: _like(np.zeros_like),
    np.ones_like: _like(np.ones_like), np.empty_like: _like(np.zeros_like),
    np.diff: diff, np.ediff1d: _ediff1d, np.tril: tril, np.triu: triu, np.diag: diag,
    np.diagflat: diagflat, np.kron: kron, np.cross: cross, np.append: _append,
    np.insert: _insert, np.delete: _delete, np.column_stack: _column_stack, np.dstack: _dstack,
    np.hsplit: _nsplit("hsplit", 1, lambda nd: 1 if nd > 1 else 0),
    np.vsplit: _nsplit("vsplit", 2, 0), np.dsplit: _nsplit("dsplit", 3, 2),
    np.concatenate: _join(O.concatenate), np.stack: _join(O.stack), np.hstack: _join(O.hstack),
    np.vstack: _join(O.vstack),  # also np.row_stack, which calls np.vstack(..., casting=)
    np.atleast_1d: _atleast(O.atleast_1d), np.atleast_2d: _atleast(O.atleast_2d),
    np.atleast_3d: _atleast(atleast_3d), np.flipud: flipud, np.fliplr: fliplr, np.rot90: rot90,
    np.rollaxis: _rollaxis, np.sort: _sort_np, np.select: _select, np.piecewise: _piecewise,
    np.linspace: _linspace, np.gradient: _gradient, np.polyval: _polyval,
    np.convolve: _convolve, np.correlate: _correlate, np.interp: interp,
    np.median: _median, np.nanmedian: _nanmedian, np.quantile: quantile,
    np.percentile: _percentile, np.nanquantile: _nanquantile, np.nanpercentile: _nanpercentile,
    np.average: _average, np.nan_to_num: nan_to_num, np.sinc: sinc, np.real: _real,
    np.imag: _imag, np.angle: _angle, np.copy: _copy_np, np.full_like: _full_like,
}
for _name in ("trapezoid", "trapz"):  # NumPy 2's name, NumPy 1's
    if hasattr(np, _name):
        FUNCTIONS[getattr(np, _name)] = trapezoid
UFUNCS: dict = {
    np.fmax: fmax, np.fmin: fmin, np.arcsinh: arcsinh, np.arccosh: arccosh,
    np.arctanh: arctanh, np.logaddexp2: logaddexp2, np.deg2rad: deg2rad, np.radians: deg2rad,
    np.rad2deg: rad2deg, np.degrees: rad2deg, np.conjugate: _copy,
}
