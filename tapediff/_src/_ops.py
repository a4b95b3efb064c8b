"""Operations beyond elementwise arithmetic, built on few primitives.

Each function computes its value with NumPy and, when recording, appends records through
``_record.emit``.  Views of any kind (slicing, transposes, broadcasting, diagonals, flips)
are one primitive: ``record_view`` reads the strides NumPy chose and records an
``OP_RESTRIDE``.
Reshapes alias the input's slot (values are flat, so no record is needed).  Everything
else is either a primitive of its own (gather/scatter for advanced indexing, where,
concatenation, product, scans, matmul) or composed: mean, var, std, logsumexp, softmax,
norms, max/min, clip, pad, einsum, tensordot.
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Sequence

import numpy as np

from . import _kernels as K
from . import _primitives as P
from ._guards import RAW_VALUE, RecordedComparison, guard
from ._record import (
    F64, arena_kind, as_constant, c_strides, check_dtype, constant, dtype_of, emit, memoised,
    numpy_call, register, restride_payload, shape_of, size_of, slot_on, strong, unary,
)
from ._tape import thread_state
from ._tensor import _ERR_LEAF_INPLACE, HINT_LEAF_INPLACE, BroadcastError, Tensor, with_hint

_weakref = weakref.ref


def as_tensor(x: Any) -> Tensor:
    return x if isinstance(x, Tensor) else as_constant(x)


def operand_value(x: Any) -> Any:
    """An operand as NumPy should see it: a Python number stays a weak scalar (NEP 50: it
    does not promote a float32 tensor), a tensor's value becomes strongly typed."""
    if isinstance(x, Tensor):
        return strong(x._v)
    if type(x) in (float, int, bool):
        return x
    a = np.asarray(x)
    check_dtype(a.dtype)  # complex, strings, objects: TypeError
    return a


def _broadcastable(*xs: Any) -> None:
    """Raise BroadcastError (naming the shapes) unless the operands broadcast together."""
    shapes = [np.shape(x) for x in xs]
    try:
        np.broadcast_shapes(*shapes)
    except ValueError:
        raise BroadcastError("operands could not be broadcast together: shapes "
                             + " and ".join(str(s) for s in shapes)) from None


def _typed_tensor(x: Any, dtype: np.dtype) -> Tensor:
    """An operand as a tensor for recording; a Python number takes the result's dtype."""
    if isinstance(x, Tensor):
        return x
    return as_constant(np.asarray(x, dtype) if type(x) in (float, int, bool) else x)


def array_of(x: Tensor) -> np.ndarray:
    v = x._v
    return np.asarray(v) if type(v) is float else v


def _recording(*xs: Tensor) -> bool:
    return thread_state.grad_enabled and any(x._rg for x in xs)


def _float(x: Tensor) -> Tensor:
    """``x`` itself if floating, else a float64 constant copy (for mean, var, ...)."""
    return x if dtype_of(x._v).kind == "f" else constant(array_of(x).astype(F64))


def _norm_axes(axis: Any, ndim: int) -> tuple:
    """``axis`` (None, int or tuple) as sorted non-negative axes; NumPy's errors otherwise."""
    if axis is None:
        return tuple(range(ndim))
    if type(axis) is int and 0 <= axis < ndim:
        return (axis,)
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for ax in axes:
        if not isinstance(ax, (int, np.integer)) or isinstance(ax, (bool, np.bool_)):
            raise TypeError(f"axis must be an int or a tuple of ints, got {ax!r}")
        if not -max(ndim, 1) <= ax < max(ndim, 1):
            raise np.exceptions.AxisError(
                f"axis {ax} is out of bounds for a tensor of dimension {ndim}")
        a = int(ax) % ndim if ndim else 0
        if a in out:
            raise ValueError(f"duplicate value in axis: {axes}")
        out.append(a)
    return tuple(sorted(out))


def axis_args(axis: Any, keepdims: bool, aliases: dict, default: Any = None) -> tuple:
    """NumPy's ``axis``/``keepdims`` with PyTorch's ``dim``/``keepdim`` accepted as aliases
    (``default``: the function's default axis, which ``dim=`` may replace)."""
    if "dim" in aliases:
        if axis is not default:
            raise TypeError("pass either axis= or dim=, not both")
        axis = aliases.pop("dim")
    if "keepdim" in aliases:
        keepdims = aliases.pop("keepdim")
    if aliases:
        raise TypeError(f"unexpected keyword argument {next(iter(aliases))!r}")
    return axis, bool(keepdims)


def _copy_of(value: Any) -> Any:
    """A fill that copies an already computed value into the arena (cheaper than computing
    it twice)."""
    def fill(out):
        out[...] = value
    return fill


def set_value(t: Tensor, v: Any) -> Tensor:
    """Overwrite a just-recorded tensor's value with the exact NumPy result (used where a
    composition is exact in gradient but not bit-for-bit in value, e.g. max); the reverse
    rules of the records involved do not read it."""
    if t._tape is None:
        return constant(np.array(v, dtype=dtype_of(t._v)))
    view = t._tape.value_view(t._slot, t.shape)
    view.flags.writeable = True
    view[...] = v
    view.flags.writeable = False
    if type(t._v) is float:
        t._v = float(view[()])
    return t


# ---------------------------------------------------------------------------------------------
# views and reshapes
# ---------------------------------------------------------------------------------------------
def record_view(x: Tensor, fn: Any, view: bool = True) -> Tensor:
    """Apply ``fn``, a NumPy function returning a view of its argument (a transpose, basic
    slice, broadcast, diagonal, flip...), and record it as an OP_RESTRIDE from the strides
    NumPy chose.  The value is a copy (tensor values are C-contiguous); with ``view`` the
    result follows in-place updates of ``x`` and passes its own on to ``x``, as a NumPy view
    does (see ``update``)."""
    t = _restride(x, fn)
    return _viewing(x, t, fn) if view else t


def _restride(x: Tensor, fn: Any) -> Tensor:
    a = array_of(x)
    w = fn(a)
    if not _recording(x):
        return constant(np.array(w))
    if not isinstance(w, np.ndarray):  # NumPy returns a scalar for some 0-d views
        if a.size != 1:
            raise AssertionError(f"{fn} did not return a view")
        w = a.reshape(np.shape(w))
    size = a.itemsize
    start = (w.__array_interface__["data"][0] - a.__array_interface__["data"][0]) // size
    strides = [s // size for s in w.strides]
    payload = restride_payload(a.size, w.shape, strides, start, 1)
    return emit(K.OP_RESTRIDE, (x,), w.shape, a.dtype, _copy_of(w), meta=lambda sl: payload,
                 nmeta=len(payload), p=_once(a.size, w.shape, strides))


def _once(n: int, shape: Sequence[int], strides: Sequence[int]) -> float:
    """1.0 when a layout of ``shape`` and ``strides`` reads each of the ``n`` elements of its
    input exactly once (a transpose, a flip: the reverse sweep then assigns the input's
    adjoint on a first touch instead of zeroing it first), else 0.0."""
    if math.prod(shape) != n or n == 0:
        return 0.0
    expect = 1  # the stride of the next axis, by increasing stride, if it tiles the input
    for step, d in sorted((abs(st), d) for d, st in zip(shape, strides) if d != 1):
        if step != expect:
            return 0.0
        expect *= d
    return 1.0


def _alias(x: Tensor, shape: tuple) -> Tensor:
    """``x`` with a new shape of the same size: recorded tensors (and leaves, through their
    record) share the slot; no copy and no record."""
    a = array_of(x)
    if not _recording(x):
        t = constant(a.reshape(shape).copy())  # never a view of a leaf or an arena
    else:
        tape = thread_state.tape
        if x._tape is not tape:  # a leaf: alias its LEAF record
            tape.reserve(1, a.size if a.dtype == F64 else 0, 0, a.size if a.dtype != F64 else 0)
        s = slot_on(x, tape, arena_kind(a.dtype))
        value = tape.value_view(s, shape)
        t = register(tape, s, float(value[()]) if a.dtype == F64 and shape == () else value)
    return _viewing(x, t, lambda v: v.reshape(shape))


def reshape(x: Any, *shape: Any, order: str = "C", **kwargs: Any) -> Tensor:
    """``x`` with a new shape (one dimension may be -1), as ``np.reshape``; no copy.
    ``shape=``/``newshape=`` keywords as NumPy's; C order only."""
    if order != "C":
        raise ValueError(f"reshape supports order='C' only, got {order!r}")
    for key in ("shape", "newshape"):
        if key in kwargs:
            shape = (kwargs.pop(key),)
    if kwargs:
        raise TypeError(f"reshape got an unexpected keyword argument {next(iter(kwargs))!r}")
    x = as_tensor(x)
    if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
        shape = tuple(shape[0])
    out_shape = np.empty(shape_of(x._v), np.int8).reshape(shape).shape
    return _alias(x, out_shape)


def ravel(x: Any) -> Tensor:
    """``x`` flattened to one dimension."""
    x = as_tensor(x)
    return _alias(x, (size_of(x._v),))


def squeeze(x: Any, axis: Any = None, **aliases: Any) -> Tensor:
    """``x`` without its size-1 dimensions (or only ``axis``; ``dim=`` is an alias)."""
    axis = axis_args(axis, False, aliases)[0]
    x = as_tensor(x)
    return _alias(x, np.squeeze(np.empty(shape_of(x._v), np.int8), axis).shape)


def expand_dims(x: Any, axis: Any = None, **aliases: Any) -> Tensor:
    """``x`` with new size-1 dimensions at ``axis`` (``dim=`` is an alias)."""
    axis = axis_args(axis, False, aliases)[0]
    if axis is None:
        raise TypeError("expand_dims() missing required argument 'axis'")
    x = as_tensor(x)
    return _alias(x, np.expand_dims(np.empty(shape_of(x._v), np.int8), axis).shape)


def transpose(x: Any, axes: Any = None) -> Tensor:
    """``x`` with its axes permuted (reversed by default), as ``np.transpose``."""
    return record_view(as_tensor(x), lambda a: np.transpose(a, axes))


def swapaxes(x: Any, axis1: int, axis2: int) -> Tensor:
    """``x`` with two axes interchanged."""
    return record_view(as_tensor(x), lambda a: np.swapaxes(a, axis1, axis2))


def moveaxis(x: Any, source: Any, destination: Any) -> Tensor:
    """``x`` with axes moved to new positions, as ``np.moveaxis``."""
    return record_view(as_tensor(x), lambda a: np.moveaxis(a, source, destination))


def broadcast_to(x: Any, shape: Any) -> Tensor:
    """``x`` broadcast to ``shape``; its gradient sums back over the broadcast dimensions."""
    return record_view(as_tensor(x), lambda a: np.broadcast_to(a, shape))


def flip(x: Any, axis: Any = None, **aliases: Any) -> Tensor:
    """``x`` with the order of elements reversed along ``axis`` (all axes by default;
    ``dim=``/``dims=`` are aliases)."""
    if "dims" in aliases:
        aliases["dim"] = aliases.pop("dims")
    axis = axis_args(axis, False, aliases)[0]
    return record_view(as_tensor(x), lambda a: np.flip(a, axis))


def diagonal(x: Any, offset: int = 0, axis1: int = 0, axis2: int = 1) -> Tensor:
    """The diagonal of ``x`` over ``axis1`` and ``axis2``, as ``np.diagonal``."""
    return record_view(as_tensor(x), lambda a: np.diagonal(a, offset, axis1, axis2))


def trace(x: Any, offset: int = 0, axis1: int = 0, axis2: int = 1) -> Tensor:
    """Sum along a diagonal, as ``np.trace``."""
    x = as_tensor(x)
    if not _recording(x):
        return constant(np.asarray(np.trace(operand_value(x), offset, axis1, axis2)))
    return sum_(diagonal(x, offset, axis1, axis2), axis=-1)


# ---------------------------------------------------------------------------------------------
# indexing
# ---------------------------------------------------------------------------------------------
def _index_key(key: Any) -> Any:
    """Tensors inside an index are used by value (they are never differentiated)."""
    if isinstance(key, Tensor):
        return array_of(key)
    if isinstance(key, tuple):
        return tuple(array_of(k) if isinstance(k, Tensor) else k for k in key)
    return key


def _is_basic(key: Any) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return all((isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)))
               or k is None or k is Ellipsis or isinstance(k, slice) for k in keys)


def _gather(x: Tensor, idx: np.ndarray, shape: tuple, value: np.ndarray,
            axis: int | None = None) -> Tensor:
    """Record out = take(x, idx, axis) (reverse: scatter-add, so repeats accumulate); with
    ``axis`` None, out[k] = x.flat[idx[k]].  ``idx`` holds non-negative positions."""
    xshape = shape_of(x._v)
    if axis is None:
        outer, length, inner = 1, size_of(x._v), 1
    else:
        outer = int(np.prod(xshape[:axis], dtype=np.int64))
        length, inner = xshape[axis], int(np.prod(xshape[axis + 1:], dtype=np.int64))
    idx = np.ascontiguousarray(idx, dtype=np.int64).ravel()
    payload = np.concatenate([np.array([idx.size, outer, length, inner], np.int64), idx])
    return emit(K.OP_GATHER, (x,), shape, array_of(x).dtype, _copy_of(value),
                meta=lambda sl: payload, nmeta=payload.size)


def _axis_index(key: Any, ndim: int) -> tuple | None:
    """(axis, integer index array) when ``key`` indexes with one integer array (or list) along
    one axis and takes every other axis whole (``a[rows]``, ``a[:, [1, 2, 0]]``), else None."""
    keys = key if isinstance(key, tuple) else (key,)
    if len(keys) > ndim:
        return None
    found = None
    for ax, k in enumerate(keys):
        if isinstance(k, slice) and k == slice(None):
            continue
        if found is not None or not isinstance(k, (np.ndarray, list)):
            return None
        arr = np.asarray(k)
        if arr.dtype.kind not in "iu":
            return None
        found = (ax, arr)
    return found


_BASIC = (slice, int, type(None), type(Ellipsis))


def getitem(x: Tensor, key: Any) -> Tensor:
    """``x[key]`` with NumPy's indexing: basic (views) and advanced (integer arrays, boolean
    masks, and mixes); repeated indices accumulate in the gradient."""
    keys = key if type(key) is tuple else (key,)
    basic = True
    for k in keys:
        if type(k) not in _BASIC:  # (slices, None, ints, Ellipsis: no further check)
            key = _index_key(key)
            basic = _is_basic(key)
            keys = key if isinstance(key, tuple) else (key,)
            break
    if basic:
        # NumPy gives a view unless every axis takes one integer (then an element, a copy)
        view = len(keys) != len(shape_of(x._v))
        has_ellipsis = False
        for k in keys:
            if k is Ellipsis:
                has_ellipsis = view = True
            elif not isinstance(k, (int, np.integer)):
                view = True
        if not has_ellipsis:
            keys = keys + (Ellipsis,)  # so NumPy returns a (possibly 0-d) view, never a copy
        return record_view(x, lambda a: a[keys], view)
    a = array_of(x)
    value = a[key]
    if not _recording(x):
        return constant(np.array(value))
    along = _axis_index(key, a.ndim)
    if along is not None:  # one index per row (NumPy has checked the bounds)
        axis, idx = along
        return _gather(x, np.where(idx < 0, idx + a.shape[axis], idx), value.shape, value, axis)
    idx = np.arange(a.size).reshape(a.shape)[key]
    return _gather(x, idx, value.shape, value)


def take(x: Any, indices: Any, axis: Any = None, **aliases: Any) -> Tensor:
    """Elements of ``x`` at ``indices`` (along ``axis``, flattened when None), as ``np.take``."""
    axis = axis_args(axis, False, aliases)[0]
    x = as_tensor(x)
    a = array_of(x)
    ind = array_of(indices) if isinstance(indices, Tensor) else np.asarray(indices)
    value = np.take(a, ind, axis)
    if not _recording(x):
        return constant(value)
    length = a.size if axis is None else a.shape[axis]
    ind = np.asarray(ind, np.int64)
    return _gather(x, np.where(ind < 0, ind + length, ind), value.shape, value,
                   None if axis is None else axis % a.ndim)


def index_gather(x: Tensor, build: Any) -> Tensor:
    """Record a rearrangement of ``x`` that NumPy's ``build(array)`` does, as a gather."""
    a = array_of(x)
    value = build(a)
    if not _recording(x):
        return constant(np.array(value))
    return _gather(x, build(np.arange(a.size).reshape(a.shape)), value.shape, value)


def roll(x: Any, shift: Any, axis: Any = None, **aliases: Any) -> Tensor:
    """Elements rolled along ``axis``, as ``np.roll`` (``dims=``/``dim=`` are aliases)."""
    if "dims" in aliases:
        aliases["dim"] = aliases.pop("dims")
    axis = axis_args(axis, False, aliases)[0]
    x = as_tensor(x)
    if _one_axis(x, axis) and isinstance(shift, (int, np.integer)):  # one index per row
        return take(x, np.roll(np.arange(shape_of(x._v)[axis]), shift), axis)
    return index_gather(x, lambda a: np.roll(a, shift, axis))


def repeat(x: Any, repeats: Any, axis: Any = None, **aliases: Any) -> Tensor:
    """Elements repeated, as ``np.repeat`` (``dim=`` is an alias)."""
    axis = axis_args(axis, False, aliases)[0]
    x = as_tensor(x)
    if _one_axis(x, axis):  # one index per row
        return take(x, np.repeat(np.arange(shape_of(x._v)[axis]), repeats), axis)
    return index_gather(x, lambda a: np.repeat(a, repeats, axis))


def _one_axis(x: Tensor, axis: Any) -> bool:
    """Whether ``axis`` is one valid axis of ``x`` (else NumPy's own call raises or decides)."""
    ndim = len(shape_of(x._v))
    return (isinstance(axis, (int, np.integer)) and not isinstance(axis, bool)
            and -ndim <= axis < ndim)


def tile(x: Any, reps: Any) -> Tensor:
    """``x`` repeated ``reps`` times along each axis, as ``np.tile``."""
    return index_gather(as_tensor(x), lambda a: np.tile(a, reps))


def _scatter(v: Tensor, idx: np.ndarray, shape: tuple, value: np.ndarray) -> Tensor:
    """Record out = 0; out.flat[idx[k]] += v.flat[k] (reverse: gather)."""
    idx = np.ascontiguousarray(idx, dtype=np.int64).ravel()
    return emit(K.OP_SCATTER, (v,), shape, value.dtype, _copy_of(value), meta=lambda sl: idx,
                 nmeta=idx.size)


class AtIndexer:
    """``x.at[key]``: functional updates that return a new tensor and record correctly."""

    def __init__(self, x: Tensor) -> None:
        self._x = x

    def __getitem__(self, key: Any) -> "_At":
        return _At(self._x, _index_key(key))


class _At:
    def __init__(self, x: Tensor, key: Any) -> None:
        self._x, self._key = x, key

    def get(self) -> Tensor:
        """``x[key]``."""
        return getitem(self._x, self._key)

    def _operands(self, v: Any) -> tuple:
        """``x`` and ``v`` in the result's dtype, promoted as NumPy does (a Python number is
        a weak scalar, so it keeps a float32 ``x`` float32)."""
        x = self._x
        dt = np.result_type(array_of(x), operand_value(v))
        v = _typed_tensor(v, dt)
        x, v = (t if dtype_of(t._v) == dt else astype(t, dt) for t in (x, v))
        return x, v

    def _positions(self, x: Tensor, v: Tensor) -> tuple:
        a = array_of(x)
        pos = np.arange(a.size).reshape(a.shape)[self._key]
        vb = broadcast_to(v, pos.shape) if shape_of(v._v) != pos.shape else v
        return a, pos.ravel(), vb

    def add(self, v: Any) -> Tensor:
        """A copy of ``x`` with ``v`` added at ``key``; repeated indices add repeatedly (as
        ``np.add.at``)."""
        x, v = self._operands(v)
        a, pos, vb = self._positions(x, v)
        value = a.copy()
        np.add.at(value.reshape(-1), pos, array_of(vb).reshape(-1))
        if not _recording(x, v):
            return constant(value)
        moved = np.zeros(a.size, value.dtype)
        np.add.at(moved, pos, array_of(vb).reshape(-1))
        delta = _scatter(ravel(vb), pos, (a.size,), moved)
        return set_value(x + reshape(delta, a.shape), value)

    def set(self, v: Any) -> Tensor:
        """A copy of ``x`` with ``v`` written at ``key``; with repeated indices the last write
        wins, as in NumPy assignment."""
        x, v = self._operands(v)
        a, pos, vb = self._positions(x, v)
        value = a.copy()
        value.reshape(-1)[pos] = array_of(vb).reshape(-1)
        if not _recording(x, v):
            return constant(value)
        # the last occurrence of each position writes
        rev = pos[::-1]
        uniq, first_in_rev = np.unique(rev, return_index=True)
        last = pos.size - 1 - first_in_rev
        moved = np.zeros(a.size, value.dtype)
        moved[uniq] = array_of(vb).reshape(-1)[last]
        src = take(ravel(vb), last)
        scattered = reshape(_scatter(src, uniq, (a.size,), moved), a.shape)
        w = np.zeros(a.size)
        w[uniq] = 1.0
        return where(w.reshape(a.shape) > 0.5, scattered, x)


# ---------------------------------------------------------------------------------------------
# in-place updates
#
# ``y += v``, ``y[i] = v``, ``y[:, 0] *= v`` on a tensor are recorded functionally (the new
# value is ``y + v`` or ``y.at[i].set(v)``) and the tensor object is re-pointed at the new
# record: earlier uses keep the value they read, later ones see the new one, and the gradient
# is that of the functional program.  Views follow NumPy: a tensor made by a basic slice,
# transpose, reshape... of ``root`` remembers ``(root, fn)`` with ``fn`` the NumPy view
# function; an update of the view is written back into ``root`` (a scatter at the positions
# ``fn`` selects), and an update of ``root`` re-derives every live view from its new value.
# ---------------------------------------------------------------------------------------------
_ERR_VIEW_OF_LEAF = ("a view of a leaf Variable that requires grad is being used in an in-place "
                     "operation.")
_ERR_NO_GRAD_UPDATE = (
    "an in-place update under no_grad of a tensor recorded on a tape would hide the update from "
    "the gradient of everything computed from it later; update it with grad mode on, or take "
    "its value first with y = y.detach()")


def _viewing(x: Tensor, t: Tensor, fn: Any) -> Tensor:
    """Make ``t`` (just computed as ``fn`` of ``x``'s value) a view of ``x``'s root."""
    base = getattr(x, "_base", None)  # unset on most tensors: no exception raised here
    if base is None:
        root = x
        t._base = (x, fn)
    else:
        root, outer = base
        t._base = (root, lambda a: fn(outer(a)))
    views = getattr(root, "_views", None)
    if views is None:
        views = root._views = []
    views.append(_weakref(t))
    n = len(views)
    if n >= 32 and n & (n - 1) == 0:  # forget dead views now and then (amortised O(1))
        views[:] = [r for r in views if r() is not None]
    return t


def _fit(new: Tensor, t: Tensor, what: str | None) -> Tensor:
    """``new`` as the value of an in-place update of ``t``: same shape, ``t``'s dtype (NumPy's
    same_kind casting for ufunc ``what``; an assignment, ``what=None``, casts unsafely)."""
    if new.shape != t.shape:
        raise ValueError(f"non-broadcastable output operand with shape {t.shape} doesn't match "
                         f"the broadcast shape {new.shape}")
    dt = dtype_of(t._v)
    if new.dtype != dt:
        if what is not None and not np.can_cast(new.dtype, dt, "same_kind"):
            raise TypeError(f"Cannot cast ufunc {what!r} output from {new.dtype!r} to {dt!r} with "
                            f"casting rule 'same_kind'")
        new = astype(new, dt)
    return new


def _become(t: Tensor, new: Tensor) -> None:
    """Re-point ``t`` at ``new``'s value and record (its family links stay)."""
    tape = new._tape
    if tape is None:
        v = new._v
        t._v = v if type(v) is float else np.array(v)
        if t._tape is not None:  # a result without a gradient: t becomes a constant
            t._tape, t._slot, t._rg = None, -1, False
            t._grad, t._ver, t._leaf_record = None, 0, None
        t._ver += 1  # a tape holding t's old value records it again
        return
    if t._tape is None:  # a leaf or constant becomes a recorded tensor
        t._leaf_record = None
        del t._grad  # as on any recorded tensor (see Tensor.__slots__)
        tape._live.append(_weakref(t))
    t._v, t._tape, t._slot, t._rg = new._v, tape, new._slot, new._rg


def _refresh_views(root: Tensor) -> None:
    """Re-derive every live view of ``root`` from its current value, as NumPy's views see an
    update of their base."""
    views = getattr(root, "_views", None)
    if not views:
        return
    live = [w for w in (r() for r in views) if w is not None]
    views[:] = [_weakref(w) for w in live]
    mode = thread_state.grad_enabled
    try:
        for w in live:
            # a recorded view stays recorded (a view of a leaf that requires grad updated
            # under no_grad is still a view of it, as in PyTorch)
            thread_state.grad_enabled = mode or w._tape is not None
            _become(w, _restride(root, w._base[1]))
    finally:
        thread_state.grad_enabled = mode


def update(t: Tensor, compute: Any, what: str | None) -> Tensor:
    """The in-place update ``t <- compute()`` (``compute`` builds the new value from ``t``;
    ``what`` names the ufunc, None for an assignment), recorded functionally and passed on to
    ``t``'s root and views; returns ``t``."""
    base = getattr(t, "_base", None)
    root = t if base is None else base[0]
    if thread_state.grad_enabled:
        if root._rg and root._tape is None:
            raise with_hint(RuntimeError(_ERR_LEAF_INPLACE if base is None
                                         else _ERR_VIEW_OF_LEAF), HINT_LEAF_INPLACE)
    elif t._tape is not None or root._tape is not None:
        raise RuntimeError(_ERR_NO_GRAD_UPDATE)
    new = _fit(compute(), t, what)
    if base is None:
        _become(t, new)
    else:
        a = array_of(root)
        pos = base[1](np.arange(a.size).reshape(a.shape))
        if np.unique(pos).size != pos.size:  # a broadcast view: NumPy makes it read-only
            raise ValueError("assignment destination is read-only")
        if a.ndim == 0:  # a view of a 0-d root holds its one element, or none
            written = reshape(new, ()) if pos.size else root
        else:  # the view's elements, as positions in root
            written = _At(root, np.unravel_index(pos, a.shape)).set(new)
        _become(root, _fit(written, root, None))
    _refresh_views(root)
    return t


def mutated(t: Tensor) -> None:
    """After ``t``'s value was changed in place (a constant, or a leaf under no_grad): bring
    its views up to date."""
    if getattr(t, "_views", None):
        _refresh_views(t)


# ---------------------------------------------------------------------------------------------
# reductions
# ---------------------------------------------------------------------------------------------
_REDUCE_LAYOUTS: dict = {}  # (shape, axes) -> _reduce_layout's payload


def _reduce_layout(a: np.ndarray, axes: tuple) -> list:
    """Restride payload of a reduction over ``axes``: kept axes iterate first, reduced axes
    last, so out[k // R] collects x[pos(k)] with R the number of reduced elements.  Neighbours
    among the kept axes, and among the reduced ones, that step as one axis are merged (the
    same iteration, with longer inner runs).  Memoised on (shape, axes)."""
    return memoised(_REDUCE_LAYOUTS, (a.shape, axes), _merged_layout, a.shape, axes)


def _merged_layout(in_shape: tuple, axes: tuple) -> list:
    st = c_strides(in_shape)
    kept = [d for d in range(len(in_shape)) if d not in axes]
    r = math.prod(in_shape[d] for d in axes)
    shape, strides = [], []
    for group in (kept, axes):
        merged: list = []
        for d in group:
            if merged and merged[-1][1] == st[d] * in_shape[d]:
                merged[-1] = [merged[-1][0] * in_shape[d], st[d]]
            else:
                merged.append([in_shape[d], st[d]])
        shape += [m[0] for m in merged]
        strides += [m[1] for m in merged]
    return restride_payload(math.prod(in_shape), shape, strides, 0, max(r, 1))


def _reduce(op: int, fn: Any, x: Any, axis: Any, keepdims: bool) -> Tensor:
    """``fn`` (np.sum or np.prod) over ``axis``, recorded as ``op`` with a reduction layout."""
    x = as_tensor(x)
    a = array_of(x)
    axes = _norm_axes(axis, a.ndim)
    value = numpy_call(fn, a, axis=axes if a.ndim else None, keepdims=keepdims)
    if not _recording(x):
        return constant(value)
    if op == K.OP_PROD and math.prod(a.shape[d] for d in axes) == 0:
        # an empty product is 1 and has nothing to reverse (the kernel needs a non-empty group)
        return set_value(_reduce(K.OP_RESTRIDE, np.sum, x, axis, keepdims) * 0.0 + 1.0, value)
    payload = _reduce_layout(a, axes)
    # a sum reads each element once: its input's adjoint is assigned on a first touch
    once = 1.0 if op == K.OP_RESTRIDE and a.size else 0.0
    return emit(op, (x,), np.shape(value), value.dtype, _copy_of(value),
                 meta=lambda sl: payload, nmeta=len(payload), p=once)


def sum_(x: Any, axis: Any = None, keepdims: bool = False, **aliases: Any) -> Tensor:
    """Sum over ``axis`` (None: all; an int or a tuple), as ``np.sum``.

    >>> import tapediff as td
    >>> td.sum(td.tensor([[1.0, 2.0], [3.0, 4.0]]), axis=0)
    tensor([4., 6.])
    """
    axis, keepdims = axis_args(axis, keepdims, aliases)
    return _reduce(K.OP_RESTRIDE, np.sum, x, axis, keepdims)


def _count(shape: tuple, axis: Any) -> int:
    return math.prod(shape[d] for d in _norm_axes(axis, len(shape)))


def mean(x: Any, axis: Any = None, keepdims: bool = False, **aliases: Any) -> Tensor:
    """Mean over ``axis``, as ``np.mean`` (ints average as float64)."""
    axis, keepdims = axis_args(axis, keepdims, aliases)
    x = _float(as_tensor(x))
    with np.errstate(invalid="ignore", divide="ignore"):  # NumPy warns on empty means
        return sum_(x, axis, keepdims) / _count(shape_of(x._v), axis)


def var(x: Any, axis: Any = None, ddof: int = 0, keepdims: bool = False,
        **aliases: Any) -> Tensor:
    """Variance over ``axis`` with ``ddof`` delta degrees of freedom, as ``np.var``."""
    if "correction" in aliases:
        ddof = aliases.pop("correction")
    axis, keepdims = axis_args(axis, keepdims, aliases)
    x = _float(as_tensor(x))
    d = x - mean(x, axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sum_(d * d, axis, keepdims) / max(_count(shape_of(x._v), axis) - ddof, 0)


def std(x: Any, axis: Any = None, ddof: int = 0, keepdims: bool = False,
        **aliases: Any) -> Tensor:
    """Standard deviation over ``axis``, as ``np.std``; its gradient is 0 where the spread
    is 0 (as PyTorch)."""
    return _root(var(x, axis, ddof, keepdims, **aliases), sqrt)


def _root(v: Tensor, root: Any) -> Tensor:
    """``root(v)`` (sqrt, or ``** (1/p)``) whose adjoint is exactly 0 where the radicand
    ``v`` is 0, as PyTorch's std and norms: the "double where" root(where(m, v, 1)) where m,
    else 0, with m = (v != 0) an OP_CMP record that replay recomputes.  NaN (and a negative
    radicand) takes the root, so NaN propagates in value and gradient.  In eager mode
    without a zero radicand this is ``root(v)`` itself; elsewhere the value is the same."""
    a = array_of(v)
    nonzero = a != 0
    if not _recording(v) or (guarding_tape(v) is None and nonzero.all()):
        return root(v)
    m = record_compare(v, 0.0, K.CMP_NE, nonzero.astype(a.dtype), a.dtype)
    safe = _where_weighted(m, v, _typed_tensor(1.0, a.dtype),
                           np.where(nonzero, a, 1).astype(a.dtype))
    r = root(safe)
    return _where_weighted(m, r, _typed_tensor(0.0, a.dtype),
                           np.where(nonzero, array_of(r), 0).astype(a.dtype))


def _extreme(x: Any, axis: Any, keepdims: bool, aliases: dict, fn: Any) -> Tensor:
    axis, keepdims = axis_args(axis, keepdims, aliases)
    x = as_tensor(x)
    a = array_of(x)
    value = fn(a, axis=axis, keepdims=keepdims)
    if not _recording(x):
        return constant(value)
    # ties share the gradient equally (as PyTorch's amax)
    payload = _reduce_layout(a, _norm_axes(axis, a.ndim))
    return emit(K.OP_EXTREME, (x,), np.shape(value), value.dtype, _copy_of(value),
                 p=1.0 if fn is np.max else -1.0, meta=lambda sl: payload, nmeta=len(payload))


def max_(x: Any, axis: Any = None, keepdims: bool = False, **aliases: Any) -> Tensor:
    """Maximum over ``axis``; tied maxima share the gradient equally."""
    return _extreme(x, axis, keepdims, aliases, np.max)


def min_(x: Any, axis: Any = None, keepdims: bool = False, **aliases: Any) -> Tensor:
    """Minimum over ``axis``; tied minima share the gradient equally."""
    return _extreme(x, axis, keepdims, aliases, np.min)


def argmax(x: Any, axis: Any = None, keepdims: bool = False, **aliases: Any) -> Tensor:
    """Indices of the maxima (an int64 tensor, never differentiated)."""
    axis, keepdims = axis_args(axis, keepdims, aliases)
    x = as_tensor(x)
    _guard_extremes(x, axis, np.max, "argmax")
    return constant(np.asarray(np.argmax(array_of(x), axis=axis, keepdims=keepdims)))


def argmin(x: Any, axis: Any = None, keepdims: bool = False, **aliases: Any) -> Tensor:
    """Indices of the minima (an int64 tensor, never differentiated)."""
    axis, keepdims = axis_args(axis, keepdims, aliases)
    x = as_tensor(x)
    _guard_extremes(x, axis, np.min, "argmin")
    return constant(np.asarray(np.argmin(array_of(x), axis=axis, keepdims=keepdims)))


def guarding_tape(*xs: Any) -> Tensor | None:
    """The tape when it records for replay and one of ``xs`` depends on its inputs."""
    tape = thread_state.rec
    if tape is None or not tape.records_for_replay or not _recording(
            *[x for x in xs if isinstance(x, Tensor)]):
        return None
    return tape


def _guard_extremes(x: Tensor, axis: Any, fn: Any, what: str) -> None:
    """Replay guard for an index choice: which elements are the extremes."""
    tape = guarding_tape(x)
    if tape is None or dtype_of(x._v).kind != "f" or size_of(x._v) == 0:
        return
    a = array_of(x)
    hit = a == fn(a, axis=axis, keepdims=True)
    m = _extreme(x, axis, True, {}, fn)
    guard(tape, record_compare(x, m, K.CMP_EQ, hit, a.dtype), f"{what}()")


def _guard_signs(x: Tensor, what: str) -> None:
    """Replay guard for a result that depends on the signs of ``x``."""
    tape = guarding_tape(x)
    if tape is None:
        return
    a = array_of(x)
    for code, hit in ((K.CMP_GT, a > 0), (K.CMP_LT, a < 0)):
        guard(tape, record_compare(x, 0.0, code, hit, a.dtype), what)


def prod(x: Any, axis: Any = None, keepdims: bool = False, **aliases: Any) -> Tensor:
    """Product over ``axis``; the gradient is exact when elements are zero."""
    axis, keepdims = axis_args(axis, keepdims, aliases)
    return _reduce(K.OP_PROD, np.prod, x, axis, keepdims)


def _scan(x: Any, axis: Any, op: int, fn: Any) -> Tensor:
    x = as_tensor(x)
    if axis is None:  # NumPy scans the flattened array
        x, axis = ravel(x), 0
    a = array_of(x)
    value = fn(a, axis=axis)
    if not _recording(x):
        return constant(value)
    (ax,) = _norm_axes(axis, a.ndim)
    outer = math.prod(a.shape[:ax])
    inner = math.prod(a.shape[ax + 1:])
    payload = [outer, a.shape[ax], inner]
    return emit(op, (x,), value.shape, value.dtype, _copy_of(value),
                 meta=lambda sl: payload, nmeta=3)


def cumsum(x: Any, axis: Any = None, **aliases: Any) -> Tensor:
    """Running sum along ``axis`` (of the flattened tensor when None), as ``np.cumsum``."""
    axis, _ = axis_args(axis, False, aliases)
    return _scan(x, axis, K.OP_CUMSUM, np.cumsum)


def cumprod(x: Any, axis: Any = None, **aliases: Any) -> Tensor:
    """Running product along ``axis``; the gradient is exact when elements are zero."""
    axis, _ = axis_args(axis, False, aliases)
    return _scan(x, axis, K.OP_CUMPROD, np.cumprod)


def logsumexp(x: Any, axis: Any = None, keepdims: bool = False, **aliases: Any) -> Tensor:
    """log(sum(exp(x))) over ``axis``, computed without overflow (shifted by the maximum).

    >>> import tapediff as td
    >>> float(td.logsumexp(td.tensor([1000.0, 1000.0])))  # 1000 + log 2
    1000.6931471805599
    """
    axis, keepdims = axis_args(axis, keepdims, aliases)
    x = _float(as_tensor(x))
    a = array_of(x)
    m = _shift(x, a, axis)
    with np.errstate(divide="ignore"):
        out = log(sum_(exp(x - m), axis, keepdims=True)) + m
    return out if keepdims else squeeze(out, axis if axis is not None else None) \
        if a.ndim else out


def _shift(x: Tensor, a: np.ndarray, axis: Any) -> Any:
    """The maximum along ``axis`` (kept), 0 where it is not finite: the shift that keeps
    exp() from overflowing.  A constant (its gradient contributions cancel), except when
    recording for replay, where it must follow the inputs: then it is recorded."""
    m = np.max(a, axis=axis, keepdims=True) if a.size else np.zeros((1,) * a.ndim, a.dtype)
    fin = np.isfinite(m)
    m = np.where(fin, m, 0).astype(a.dtype)
    if a.size == 0 or guarding_tape(x) is None:
        return m
    top = _extreme(x, axis, True, {}, np.max)
    finite = record_compare(top - top, 0.0, K.CMP_EQ, fin, a.dtype)  # inf - inf and NaN are not 0
    return _where_weighted(finite, top, _typed_tensor(0.0, a.dtype), m)


def softmax(x: Any, axis: Any = -1, **aliases: Any) -> Tensor:
    """exp(x) / sum(exp(x)) along ``axis`` (default last), without overflow."""
    axis, _ = axis_args(axis, False, aliases, -1)
    x = _float(as_tensor(x))
    m = _shift(x, array_of(x), axis)
    e = exp(x - m)
    return e / sum_(e, axis, keepdims=True)


def log_softmax(x: Any, axis: Any = -1, **aliases: Any) -> Tensor:
    """x - logsumexp(x) along ``axis`` (default last), without overflow."""
    axis, _ = axis_args(axis, False, aliases, -1)
    x = _float(as_tensor(x))
    return x - logsumexp(x, axis, keepdims=True)


def norm(x: Any, ord: Any = None, axis: Any = None, keepdims: bool = False,
         **aliases: Any) -> Tensor:
    """Vector or matrix norm, as ``np.linalg.norm``: vectors 2 (default), 1, inf, -inf, p;
    matrices 'fro' (default), 1, inf, and 2, -2, 'nuc' (of the singular values).
    ``dim=``/``keepdim=`` are aliases."""
    axis, keepdims = axis_args(axis, keepdims, aliases)
    x = _float(as_tensor(x))
    nd = len(shape_of(x._v))
    if axis is None and (ord is None or ord == "fro"):
        return _root(sum_(x * x, None, keepdims), sqrt)
    if axis is None:
        axis = tuple(range(nd)) if nd <= 2 else None
    axes = _norm_axes(axis, nd)
    if len(axes) == 2:  # matrix norms
        r, c = axes
        if ord in (None, "fro"):
            return _root(sum_(x * x, axes, keepdims), sqrt)
        if ord in (2, -2, "nuc"):  # of the singular values
            from ..linalg import svd_norm  # late: tapediff.linalg builds on this module
            return svd_norm(x, ord, axes, keepdims)
        if ord in (1, -1):
            s = sum_(abs_(x), r, keepdims=True)
            out = (max_ if ord == 1 else min_)(s, c, keepdims=True)
        elif ord in (np.inf, -np.inf):
            s = sum_(abs_(x), c, keepdims=True)
            out = (max_ if ord == np.inf else min_)(s, r, keepdims=True)
        else:
            raise ValueError(f"matrix norm ord={ord!r} is not supported (use 'fro', 'nuc', 1, "
                             "2 or inf)")
        return out if keepdims else squeeze(out, axes)
    if ord is None or ord == 2:
        return _root(sum_(x * x, axes, keepdims), sqrt)
    if ord == np.inf:  # NumPy's is 0 over an empty axis (a max with initial 0)
        if _count(shape_of(x._v), axes) == 0:
            return sum_(abs_(x), axes, keepdims)
        return max_(abs_(x), axes, keepdims)
    if ord == -np.inf:
        return min_(abs_(x), axes, keepdims)
    if ord == 1:
        return sum_(abs_(x), axes, keepdims)
    if ord == 0:
        tape = guarding_tape(x)
        if tape is not None:  # a count of nonzeros: replay checks which elements are zero
            a = array_of(x)
            guard(tape, record_compare(x, 0.0, K.CMP_NE, a != 0, a.dtype), "norm(ord=0)")
        return constant(np.sum(array_of(x) != 0, axis=axes, keepdims=keepdims).astype(F64))
    if isinstance(ord, str):
        raise ValueError(f"invalid norm order {ord!r} for vectors")
    return _root(sum_(abs_(x) ** ord, axes, keepdims), lambda s: s ** (1.0 / ord))


# ---------------------------------------------------------------------------------------------
# joins and splits
# ---------------------------------------------------------------------------------------------
def concatenate(xs: Sequence[Any], axis: Any = 0, **aliases: Any) -> Tensor:
    """Join tensors along an existing axis, as ``np.concatenate`` (axis None: flattened;
    ``dim=`` is an alias, as in ``torch.cat``)."""
    axis = axis_args(axis, False, aliases, 0)[0]
    xs = [as_tensor(x) for x in xs]
    if not xs:
        raise ValueError("need at least one array to concatenate")
    if axis is None:
        xs, axis = [ravel(x) for x in xs], 0
    arrs = [array_of(x) for x in xs]
    value = np.concatenate(arrs, axis=axis)
    if not _recording(*xs):
        return constant(value)
    (ax,) = _norm_axes(axis, value.ndim)
    outer = math.prod(value.shape[:ax])
    return emit(K.OP_CONCAT, xs, value.shape, value.dtype,
                 _copy_of(value),
                 meta=lambda sl: [len(sl), *sl, outer], nmeta=len(xs) + 2)


def stack(xs: Sequence[Any], axis: int = 0, **aliases: Any) -> Tensor:
    """Join tensors along a new axis, as ``np.stack`` (``dim=`` is an alias)."""
    axis = axis_args(axis, False, aliases, 0)[0]
    xs = [as_tensor(x) for x in xs]
    if not xs:
        raise ValueError("need at least one array to stack")
    shapes = {shape_of(x._v) for x in xs}
    if len(shapes) != 1:
        raise ValueError(f"all input arrays must have the same shape, got {sorted(shapes)}")
    nd = len(shapes.pop()) + 1
    ax = _norm_axes(axis, nd)[0]
    return concatenate([expand_dims(x, ax) for x in xs], axis=ax)


def hstack(xs: Sequence[Any]) -> Tensor:
    """Stack horizontally (along axis 1, or 0 for 1-d inputs), as ``np.hstack``."""
    xs = [atleast_1d(x) for x in xs]
    return concatenate(xs, axis=0 if len(shape_of(xs[0]._v)) == 1 else 1)


def vstack(xs: Sequence[Any]) -> Tensor:
    """Stack vertically (along axis 0 of at-least-2-d inputs), as ``np.vstack``."""
    return concatenate([atleast_2d(x) for x in xs], axis=0)


def atleast_1d(x: Any) -> Tensor:
    """``x`` with at least one dimension."""
    x = as_tensor(x)
    return x if len(shape_of(x._v)) >= 1 else reshape(x, (1,))


def atleast_2d(x: Any) -> Tensor:
    """``x`` with at least two dimensions (a 1-d ``x`` becomes a row)."""
    x = as_tensor(x)
    s = shape_of(x._v)
    return x if len(s) >= 2 else reshape(x, (1, -1) if s else (1, 1))


def array_split(x: Any, indices_or_sections: Any, axis: int = 0,
                **aliases: Any) -> list[Tensor]:
    """Split into sub-tensors (sections may differ in size), as ``np.array_split``."""
    axis = axis_args(axis, False, aliases, 0)[0]
    x = as_tensor(x)
    shape = shape_of(x._v)
    (ax,) = _norm_axes(axis, len(shape))
    n = shape[ax]
    if isinstance(indices_or_sections, (int, np.integer)):
        k = int(indices_or_sections)
        if k <= 0:
            raise ValueError("number sections must be larger than 0.")
        q, r = divmod(n, k)
        bounds = np.cumsum([0] + [q + 1] * r + [q] * (k - r))
    else:
        bounds = [0, *indices_or_sections, n]
    pre = (slice(None),) * ax
    return [getitem(x, pre + (slice(int(b0), int(b1)),))
            for b0, b1 in zip(bounds[:-1], bounds[1:])]


def split(x: Any, indices_or_sections: Any, axis: int = 0, **aliases: Any) -> list[Tensor]:
    """Split into equal sub-tensors (or at indices), as ``np.split`` (``dim=`` is an alias;
    the sections are NumPy's, not ``torch.split``'s sizes)."""
    axis = axis_args(axis, False, aliases, 0)[0]
    x = as_tensor(x)
    if isinstance(indices_or_sections, (int, np.integer)):
        n = shape_of(x._v)[_norm_axes(axis, len(shape_of(x._v)))[0]]
        if n % indices_or_sections:
            raise ValueError("array split does not result in an equal division")
    return array_split(x, indices_or_sections, axis)


def pad(x: Any, pad_width: Any, mode: str = "constant", constant_values: Any = 0) -> Tensor:
    """``x`` padded with a constant, as ``np.pad(..., mode='constant')``."""
    if mode != "constant":
        raise ValueError(f"only mode='constant' is supported, got {mode!r}")
    x = as_tensor(x)
    a = array_of(x)
    value = np.pad(a, pad_width, mode="constant", constant_values=constant_values)
    if not _recording(x):
        return constant(value)
    pos = np.pad(np.arange(a.size).reshape(a.shape) + 1, pad_width, mode="constant")
    inside = pos.ravel() > 0
    moved = np.zeros(value.size, value.dtype)
    moved[inside] = a.ravel()
    placed = reshape(_scatter(ravel(x), np.flatnonzero(inside)[np.argsort(
        pos.ravel()[inside])], (value.size,), moved), value.shape)
    rest = np.where(inside.reshape(value.shape), 0, value).astype(value.dtype)
    return set_value(placed + rest, value) if np.any(rest) else placed


# ---------------------------------------------------------------------------------------------
# piecewise
# ---------------------------------------------------------------------------------------------
def _where_weighted(w: Any, a: Tensor, b: Tensor, value: np.ndarray) -> Tensor:
    """Record value (= a where w, else b) with gradient g w to a and g (1 - w) to b; ``w``
    is an array of weights (a constant) or a tensor recorded by ``record_compare``."""
    shape = value.shape
    if isinstance(w, Tensor):
        wt = w
    else:
        wt = constant(np.ascontiguousarray(np.broadcast_to(w, shape), dtype=value.dtype))
    return emit(K.OP_WHERE, (a, b, wt), shape, value.dtype, _copy_of(value),
                 meta=lambda sl: [1, sl[2]], nmeta=2, bcast=True)


def record_compare(a: Any, b: Any, code: int, w: np.ndarray, dtype: np.dtype) -> Tensor:
    """Record the comparison ``code`` (``K.CMP_*``) of a and b, whose values are ``w``, as
    a tensor of 0/1 (or tie 1/2) weights: replay recomputes it from the inputs."""
    shape = np.shape(w)
    return emit(K.OP_CMP, (_typed_tensor(a, dtype), _typed_tensor(b, dtype)), shape, dtype,
                 _copy_of(w), p=float(code), bcast=True)


def where(condition: Any, x: Any = None, y: Any = None) -> Tensor:
    """Elements of ``x`` where ``condition`` holds, else of ``y`` (``np.where``); the
    condition is never differentiated.  With one argument: the indices where it holds."""
    src = _comparison_source(condition)
    if src is not None:  # a recorded comparison: replay re-evaluates it
        c = np.asarray(RAW_VALUE.__get__(condition))
    else:
        c = array_of(condition) if isinstance(condition, Tensor) else np.asarray(condition)
    if x is None and y is None:
        return tuple(constant(i) for i in np.nonzero(c))  # type: ignore[return-value]
    _broadcastable(c, operand_value(x), operand_value(y))
    value = np.asarray(np.where(c, operand_value(x), operand_value(y)))
    xs = [v for v in (x, y) if isinstance(v, Tensor)]
    if not _recording(*xs):
        return constant(value)
    w = c.astype(bool).astype(value.dtype) if src is None else src
    return _where_weighted(w, _typed_tensor(x, value.dtype), _typed_tensor(y, value.dtype), value)


def _comparison_source(c: Any) -> Tensor | None:
    """The OP_CMP record behind a comparison recorded on the current tape, if ``c`` is one."""
    if type(c) is RecordedComparison and c._src is not None and c._src._tape is thread_state.rec:
        return c._src
    return None


def _binary_values(a: Any, b: Any, fn: Any) -> tuple:
    """(a's values, b's values, ``fn`` of them) for an elementwise op of two operands
    (tensors, arrays or numbers); BroadcastError, naming the shapes, where they do not
    broadcast."""
    av, bv = operand_value(a), operand_value(b)
    _broadcastable(av, bv)
    return av, bv, np.asarray(fn(av, bv))


def _recording_any(*xs: Any) -> bool:
    """Whether an op of ``xs`` (tensors among other operands) records."""
    return _recording(*[x for x in xs if isinstance(x, Tensor)])


def _pick(a: Any, b: Any, fn: Any, sign: float) -> Tensor:
    av, bv, value = _binary_values(a, b, fn)
    if not _recording_any(a, b):
        return constant(value)
    gt = (av > bv) if sign > 0 else (av < bv)
    # ties share the gradient; a NaN operand is the result and gets it
    w = np.where(np.isnan(av), 1.0, np.where(np.isnan(bv), 0.0,
                                             np.where(np.equal(av, bv), 0.5, gt)))
    wt = record_compare(a, b, K.CMP_MAX_WEIGHT if sign > 0 else K.CMP_MIN_WEIGHT,
                  np.broadcast_to(w, value.shape), value.dtype)
    return _where_weighted(wt, _typed_tensor(a, value.dtype), _typed_tensor(b, value.dtype), value)


def maximum(a: Any, b: Any) -> Tensor:
    """Elementwise maximum; at ties each input gets half the gradient (as PyTorch)."""
    return _pick(a, b, np.maximum, 1.0)


def minimum(a: Any, b: Any) -> Tensor:
    """Elementwise minimum; at ties each input gets half the gradient (as PyTorch)."""
    return _pick(a, b, np.minimum, -1.0)


def clip(x: Any, a_min: Any = None, a_max: Any = None) -> Tensor:
    """``x`` limited to [a_min, a_max], as ``np.clip``.  As PyTorch's clamp: ``x`` gets the
    gradient where a_min <= x <= a_max (bounds included), a bound where it is active; tensor
    bounds that require grad receive it."""
    x = as_tensor(x)
    if a_min is None and a_max is None:
        raise ValueError("One of max or min must be given")
    xv = strong(x._v)
    lo = None if a_min is None else operand_value(a_min)
    hi = None if a_max is None else operand_value(a_max)
    value = np.asarray(np.clip(xv, lo, hi))
    if not _recording(x, *[b for b in (a_min, a_max) if isinstance(b, Tensor)]):
        return constant(value)
    out, cur = x, np.asarray(xv)  # clip = minimum(maximum(x, lo), hi), one where per bound
    if lo is not None:
        below = cur < lo
        cur = np.asarray(np.where(below, lo, cur), value.dtype)
        keep = record_compare(out, a_min, K.CMP_NOT_LT, np.broadcast_to(~below, cur.shape),
                              value.dtype)
        out = _where_weighted(keep, out, _typed_tensor(a_min, value.dtype), cur)
    if hi is not None:
        above = cur > hi
        keep = record_compare(out, a_max, K.CMP_NOT_GT, np.broadcast_to(~above, value.shape),
                        value.dtype)
        out = _where_weighted(keep, out, _typed_tensor(a_max, value.dtype), value)
    return out


def sign(x: Any) -> Tensor:
    """Elementwise sign (-1, 0, 1); its gradient is zero, so it is never recorded."""
    x = as_tensor(x)
    _guard_signs(x, "sign()")
    return constant(np.sign(strong(x._v)))


# ---------------------------------------------------------------------------------------------
# math beyond the core
# ---------------------------------------------------------------------------------------------
def _elementwise(p: P.Primitive) -> Any:
    """``td.<name>`` of a public elementwise primitive (a row of ``_primitives.PUBLIC``)."""
    if p.arity == 1:
        spec = P.UNARY[p.name]

        def fn(x: Any) -> Tensor:
            return unary(spec, x if type(x) is Tensor else as_tensor(x))
    else:
        def fn(a: Any, b: Any) -> Tensor:  # type: ignore[misc]
            return _binary_primitive(p.op, p.array, a, b)
    fn.__name__ = fn.__qualname__ = p.name
    fn.__doc__ = p.doc
    return fn


def _binary_primitive(op: int, uf: Any, a: Any, b: Any) -> Tensor:
    _, _, value = _binary_values(a, b, uf)
    if not _recording_any(a, b):
        return constant(value)
    return emit(op, (_typed_tensor(a, value.dtype), _typed_tensor(b, value.dtype)), value.shape,
                 value.dtype, _copy_of(value), bcast=True)


#: ``td.<name>`` (and ``Tensor.<name>``) of every public elementwise primitive
ELEMENTWISE: dict[str, Any] = {p.name: _elementwise(p) for p in P.PUBLIC}
exp, log, log1p, sqrt, abs_ = (ELEMENTWISE[k] for k in ("exp", "log", "log1p", "sqrt", "abs"))
arctan2, hypot = ELEMENTWISE["arctan2"], ELEMENTWISE["hypot"]


def square(x: Any) -> Tensor:
    """Elementwise x * x."""
    x = as_tensor(x)
    return x * x


def reciprocal(x: Any) -> Tensor:
    """Elementwise 1 / x."""
    return 1.0 / as_tensor(x)


def _rest(a: Any, b: Any, uf: Any, quotient: Any, trunc: bool, what: str) -> Tensor:
    """``uf(a, b)`` (remainder or fmod) recorded as ``a - q * b`` with the quotient ``q`` a
    constant: d/da = 1, d/db = -q (PyTorch's rules).  The value is NumPy's, exactly."""
    av, bv, value = _binary_values(a, b, uf)
    if value.dtype.kind != "f" or not _recording_any(a, b):
        return constant(value)  # ints (never recorded) or nothing requires grad
    dt = value.dtype
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = np.asarray(quotient(av, bv), dt)  # the broadcast shape
        at, bt = _typed_tensor(a, dt), _typed_tensor(b, dt)
        tape = guarding_tape(a, b)
        if tape is not None:  # replay: q holds while floor (trunc) of a / b is unchanged
            r = at / bt
            rv = np.asarray(array_of(r), dt)
            neg = np.signbit(rv) if trunc else None  # trunc(r) = sign(r) floor(|r|)
            if neg is not None and np.any(neg):
                flip = np.where(neg, -1, 1).astype(dt)
                r, rv = r * flip, np.asarray(rv * flip, dt)
            lo = np.asarray(np.floor(rv), dt)
            hi = np.asarray(lo + 1, dt)
            guard(tape, record_compare(r, lo, K.CMP_GE, rv >= lo, dt), what)
            guard(tape, record_compare(r, hi, K.CMP_LT, rv < hi, dt), what)
        out = at - constant(q) * bt
    return set_value(out, value)


def remainder(a: Any, b: Any) -> Tensor:
    """Elementwise remainder of a / b with the sign of ``b`` (``np.remainder``, ``np.mod``,
    ``a % b``; PyTorch's ``remainder``).  The gradient is PyTorch's: 1 to ``a`` and
    ``-floor(a / b)`` (NumPy's ``floor_divide``) to ``b``.  Integer operands give an integer
    result, never recorded.  Replay guards that the quotient is unchanged."""
    return _rest(a, b, np.remainder, np.floor_divide, False, "remainder()")


def fmod(a: Any, b: Any) -> Tensor:
    """Elementwise remainder of a / b with the sign of ``a`` (``np.fmod``, C's ``fmod``,
    PyTorch's ``fmod``).  The gradient is PyTorch's: 1 to ``a`` and ``-trunc(a / b)`` to
    ``b``.  Integer operands give an integer result, never recorded.  Replay guards that
    the quotient is unchanged."""
    return _rest(a, b, np.fmod, lambda x, y: np.trunc(np.true_divide(x, y)), True, "fmod()")


mod = remainder  # NumPy's name (np.mod is np.remainder)




# ---------------------------------------------------------------------------------------------
# linear algebra
# ---------------------------------------------------------------------------------------------
def matmul(a: Any, b: Any) -> Tensor:
    """Matrix product with NumPy's rules: 1-d operands, batched and broadcast batch dims.

    >>> import tapediff as td
    >>> td.matmul(td.ones(2, 3), td.ones(3))
    tensor([3., 3.])
    """
    a, b = as_tensor(a), as_tensor(b)
    av, bv = array_of(a), array_of(b)
    if av.ndim == 0 or bv.ndim == 0:
        raise ValueError("matmul: Input operand does not have enough dimensions (use * to "
                         "multiply by a scalar)")
    if not _recording(a, b):
        return constant(np.matmul(strong(a._v), strong(b._v)))
    if av.ndim == 2 and bv.ndim == 2 and av.shape[1] == bv.shape[0]:
        # a record's value is flat: (m, k) @ (k, n) is the batch of one, without reshapes
        m, k, n = av.shape[0], av.shape[1], bv.shape[1]
        return emit(K.OP_MATMUL, (a, b), (m, n), np.result_type(av, bv),
                    lambda o: np.matmul(av, bv, out=o), meta=lambda sl: [1, m, k, n], nmeta=4)
    a2 = reshape(a, (1, -1)) if av.ndim == 1 else a
    b2 = reshape(b, (-1, 1)) if bv.ndim == 1 else b
    sa, sb = shape_of(a2._v), shape_of(b2._v)
    if sa[-1] != sb[-2]:
        raise ValueError(f"matmul: shapes {av.shape} and {bv.shape} are not aligned: "
                         f"{sa[-1]} (last dimension of the first) != {sb[-2]} (second-to-last "
                         "of the second)")
    try:
        batch = np.broadcast_shapes(sa[:-2], sb[:-2])
    except ValueError:
        raise ValueError(f"matmul: batch dimensions of {av.shape} and {bv.shape} do not "
                         "broadcast") from None
    m, k, n = sa[-2], sa[-1], sb[-1]
    bs = math.prod(batch)
    if sa[:-2] != batch:
        a2 = broadcast_to(a2, batch + (m, k))
    if sb[:-2] != batch:
        b2 = broadcast_to(b2, batch + (k, n))
    a3, b3 = reshape(a2, (bs, m, k)), reshape(b2, (bs, k, n))
    x3, y3 = array_of(a3), array_of(b3)
    out = emit(K.OP_MATMUL, (a3, b3), (bs, m, n), np.result_type(x3, y3),
                lambda o: np.matmul(x3, y3, out=o), meta=lambda sl: [bs, m, k, n], nmeta=4)
    shape = batch + ((m,) if av.ndim > 1 else ()) + ((n,) if bv.ndim > 1 else ())
    return reshape(out, shape)


def dot(a: Any, b: Any) -> Tensor:
    """``np.dot``: inner product of vectors, matrix product, sum over the last axis of a and
    the second-to-last of b for n-d inputs, and scaling by 0-d inputs."""
    a, b = as_tensor(a), as_tensor(b)
    if not _recording(a, b):
        return constant(np.asarray(np.dot(operand_value(a), operand_value(b))))
    na, nb = len(shape_of(a._v)), len(shape_of(b._v))
    if na == 0 or nb == 0:
        return a * b
    if nb == 1 or (na <= 2 and nb <= 2):
        return matmul(a, b)
    return tensordot(a, b, axes=([-1], [-2]))


def vdot(a: Any, b: Any) -> Tensor:
    """Dot product of the flattened inputs (real tensors)."""
    return matmul(ravel(a), ravel(b))


def inner(a: Any, b: Any) -> Tensor:
    """Sum product over the last axes, as ``np.inner``."""
    a, b = as_tensor(a), as_tensor(b)
    if not _recording(a, b):
        return constant(np.asarray(np.inner(operand_value(a), operand_value(b))))
    if not shape_of(a._v) or not shape_of(b._v):
        return a * b
    return tensordot(a, b, axes=([-1], [-1]))


def outer(a: Any, b: Any) -> Tensor:
    """Outer product of the flattened inputs, as ``np.outer``."""
    a, b = as_tensor(a), as_tensor(b)
    if not _recording(a, b):
        return constant(np.outer(operand_value(a), operand_value(b)))
    return reshape(ravel(a), (-1, 1)) * reshape(ravel(b), (1, -1))


def tensordot(a: Any, b: Any, axes: Any = 2) -> Tensor:
    """Sum products over the given axes, as ``np.tensordot``, through one matrix product."""
    a, b = as_tensor(a), as_tensor(b)
    if not _recording(a, b):
        return constant(np.asarray(np.tensordot(operand_value(a), operand_value(b), axes)))
    sa, sb = shape_of(a._v), shape_of(b._v)
    if isinstance(axes, (int, np.integer)):
        ax_a = list(range(len(sa) - axes, len(sa)))
        ax_b = list(range(axes))
    else:
        ax_a, ax_b = ([axes[0]] if isinstance(axes[0], (int, np.integer)) else list(axes[0]),
                      [axes[1]] if isinstance(axes[1], (int, np.integer)) else list(axes[1]))
        ax_a = [x % len(sa) for x in ax_a]
        ax_b = [x % len(sb) for x in ax_b]
    if len(ax_a) != len(ax_b) or any(sa[i] != sb[j] for i, j in zip(ax_a, ax_b)):
        raise ValueError(f"shape-mismatch for sum: {sa} and {sb} over axes {ax_a}, {ax_b}")
    free_a = [i for i in range(len(sa)) if i not in ax_a]
    free_b = [j for j in range(len(sb)) if j not in ax_b]
    k = math.prod(sa[i] for i in ax_a)
    at = reshape(transpose(a, free_a + ax_a), (math.prod(sa[i] for i in free_a), k))
    bt = reshape(transpose(b, ax_b + free_b), (k, math.prod(sb[j] for j in free_b)))
    return reshape(matmul(at, bt), tuple(sa[i] for i in free_a) + tuple(sb[j] for j in free_b))


_LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # sublist labels 0..51


def _einsum_term(term: Any, sublist: bool) -> list:
    """One operand's (or the output's) labels: letters, with ``Ellipsis`` for ``...``."""
    out: list = []
    if sublist:
        for k in term:
            if k is Ellipsis:
                out.append(Ellipsis)
            elif isinstance(k, (int, np.integer)) and not isinstance(k, bool) and 0 <= k < 52:
                out.append(_LABELS[k])
            else:
                raise ValueError(f"einsum: subscript {k!r} is not within the valid range "
                                 "[0, 52) (or Ellipsis)")
        return out
    i = 0
    while i < len(term):
        if term.startswith("...", i):
            out.append(Ellipsis)
            i += 3
            continue
        c = term[i]
        if c not in _LABELS:
            raise ValueError(f"invalid subscript {c!r} in einstein sum subscripts string, "
                             "subscripts must be letters")
        out.append(c)
        i += 1
    return out


def _einsum_parse(operands: tuple) -> tuple:
    """NumPy's einsum arguments, a subscripts string and operands or operands each followed
    by its list of labels (and an optional output list), as (operand tensors, their label
    strings, the output's): ellipses become labels of their own, aligned from the right."""
    if not operands:
        raise ValueError("einsum: no operands given")
    if isinstance(operands[0], str):
        lhs, arrow, rhs = operands[0].replace(" ", "").partition("->")
        xs = [as_tensor(x) for x in operands[1:]]
        terms = [_einsum_term(t, False) for t in lhs.split(",")]
        out = _einsum_term(rhs, False) if arrow else None
    else:
        pairs = operands[:len(operands) - len(operands) % 2]
        xs = [as_tensor(x) for x in pairs[0::2]]
        out = _einsum_term(operands[-1], True) if len(operands) % 2 else None
        terms = [_einsum_term(t, True) for t in pairs[1::2]]
    if len(terms) != len(xs):
        raise ValueError(f"einsum: {len(terms)} operand subscripts for {len(xs)} operands")
    used = {c for t in terms + [out or []] for c in t if c is not Ellipsis}
    spare = [c for c in _LABELS if c not in used]
    n_ell = []
    for t, x in zip(terms, xs):
        nd = len(shape_of(x._v))
        k = t.count(Ellipsis)
        if k > 1:
            raise ValueError("einstein sum subscripts string contains more than one ellipsis")
        if (len(t) - k > nd) or (not k and len(t) != nd):
            raise ValueError(f"einsum: subscripts {_einsum_text(t)!r} do not match a {nd}-d "
                             "operand")
        n_ell.append(nd - (len(t) - k) if k else 0)
    m = max(n_ell, default=0)
    if m > len(spare):
        raise ValueError("einsum: too many dimensions under '...'")
    ell = spare[:m]

    def expand(t: list, e: int) -> str:
        return "".join(c for v in t for c in (ell[m - e:] if v is Ellipsis else [v]))

    names = [expand(t, e) for t, e in zip(terms, n_ell)]
    if out is None:  # implicit output: the ellipsis' dimensions, then labels used once, sorted
        joined = "".join(names)
        once = sorted(c for c in set(joined) if c not in ell and joined.count(c) == 1)
        res = "".join(ell) + "".join(once)
    elif Ellipsis in out:
        res = expand(out, m)
    elif m:
        raise ValueError("output has more dimensions than subscripts given in einstein sum, "
                         "but no '...' ellipsis provided to broadcast the extra dimensions.")
    else:
        res = "".join(out)
    return xs, names, res


def _einsum_text(t: list) -> str:
    return "".join("..." if c is Ellipsis else c for c in t)


def einsum(*operands: Any, out: Any = None, dtype: Any = None, order: str = "K",
           casting: str = "safe", optimize: Any = False) -> Tensor:
    """Einstein summation, as ``np.einsum``: subscripts (``'ij,jk->ik'``, ``'bij,bjk->bik'``,
    ``'ii->i'``, ``'ij->'``, ``'...ij,...jk'``, implicit outputs) or NumPy's sublist form
    (``einsum(a, [0, 1], b, [1, 2], [0, 2])``, ``Ellipsis`` in the lists), any number of
    operands; size-1 dimensions broadcast against their label's size, as in NumPy.
    ``optimize=`` is accepted and ignored: operands are contracted left to right, each
    pair through one matrix product."""
    if out is not None or dtype is not None:
        raise TypeError(f"einsum on tensors does not take {'out' if out is not None else 'dtype'}=")
    xs, terms, res = _einsum_parse(operands)
    if not _recording(*xs):  # values only: NumPy's own einsum (and its dtypes)
        args = [operand_value(x) if isinstance(x, Tensor) else x for x in operands]
        return constant(np.asarray(np.einsum(*args)))
    if len(set(res)) != len(res):
        c = next(c for c in res if res.count(c) > 1)
        raise ValueError(f"einstein sum subscripts string includes output subscript {c!r} "
                         "multiple times")
    unknown = set(res) - set("".join(terms))
    if unknown:
        raise ValueError(f"einsum: output subscript(s) {''.join(sorted(unknown))!r} appear in no "
                         "operand")
    dims: dict = {}
    for term, x in zip(terms, xs):
        own: dict = {}
        for c, d in zip(term, shape_of(x._v)):
            if own.setdefault(c, d) != d:
                raise ValueError(f"dimensions in single operand for collapsing index {c!r} "
                                 f"don't match ({own[c]} != {d})")
            if d != 1 and dims.setdefault(c, d) != d:
                raise ValueError(f"einsum: label {c!r} has sizes {dims[c]} and {d}")
    # a size-1 dimension broadcasts against its label's size: the operand is constant along
    # it, so it leaves the operand (and that label is summed or kept by the others)
    cur = []
    for term, x in zip(terms, xs):
        shape = shape_of(x._v)
        keep = [k for k, (c, d) in enumerate(zip(term, shape)) if d != 1 or dims.get(c, 1) == 1]
        if len(keep) != len(term):
            x = reshape(x, tuple(shape[k] for k in keep))
            term = "".join(term[k] for k in keep)
        for c in term:
            dims.setdefault(c, 1)
        cur.append((x, term))
    out = res
    # repeated labels within one operand: take the diagonal (a strided view)
    for i, (x, term) in enumerate(cur):
        if len(set(term)) != len(term):
            uniq = "".join(dict.fromkeys(term))
            st = c_strides(shape_of(x._v))

            def diag(a, term=term, uniq=uniq, st=st):
                size = a.itemsize
                return np.lib.stride_tricks.as_strided(
                    a, shape=[dims[c] for c in uniq],
                    strides=[size * sum(s for t, s in zip(term, st) if t == c) for c in uniq])

            cur[i] = (record_view(x, diag), uniq)
    result_x, result_t = cur[0]
    for j in range(len(cur)):
        x, term = cur[j] if j else (result_x, result_t)
        later = set(out).union(*(t for _, t in cur[j + 1:]))
        if j:
            result_x, result_t = _contract(result_x, result_t, x, term, later, dims)
        # sum labels used nowhere else
        lone = [k for k, c in enumerate(result_t) if c not in later]
        if lone:
            result_x = sum_(result_x, tuple(lone))
            result_t = "".join(c for c in result_t if c in later)
    perm = [result_t.index(c) for c in out]
    return transpose(result_x, perm) if perm != list(range(len(perm))) else result_x


def _contract(a: Tensor, ta: str, b: Tensor, tb: str, later: set, dims: dict) -> tuple:
    """One pairwise contraction of einsum through a batched matrix product."""
    batch = [c for c in ta if c in tb and c in later]
    summed = [c for c in ta if c in tb and c not in later]
    fa = [c for c in ta if c not in tb]
    fb = [c for c in tb if c not in ta]
    at = transpose(a, [ta.index(c) for c in batch + fa + summed])
    bt = transpose(b, [tb.index(c) for c in batch + summed + fb])
    nb = math.prod(dims[c] for c in batch)
    m = math.prod(dims[c] for c in fa)
    k = math.prod(dims[c] for c in summed)
    n = math.prod(dims[c] for c in fb)
    r = matmul(reshape(at, (nb, m, k)), reshape(bt, (nb, k, n)))
    return reshape(r, tuple(dims[c] for c in batch + fa + fb)), "".join(batch + fa + fb)



def astype(x: Any, dtype: Any) -> Tensor:
    """``x`` converted to ``dtype``.  Between float32 and float64 the conversion is recorded
    (an OP_CAST), so the gradient flows back in the input's dtype; other conversions give a
    constant."""
    x = as_tensor(x)
    dt = check_dtype(np.dtype(dtype))
    a = array_of(x)
    if dt == a.dtype:
        return x
    value = a.astype(dt)
    if not _recording(x) or dt.kind != "f":
        return constant(value)
    return emit(K.OP_CAST, (x,), value.shape, dt, lambda out: out.__setitem__(Ellipsis, a))
