"""Tensor: an array value, plus (when it requires grad) the tape slot that produced it.

Values: a 0-d float64 tensor holds a Python ``float`` (scalar code then runs on Python
floats, several times faster than NumPy 0-d arrays); every other tensor holds an ndarray.
A recorded float64 tensor's ndarray is a read-only view of its tape's arena, written in
place by the NumPy call that computed it; other dtypes are copied into the arena.

Recording: an operation records only when grad mode is on and an input requires grad.
It reserves room for everything it appends (``Tape.reserve``), gets a slot for each input
(``_slot_on``: a tape-less input gets a LEAF or CONST record, cached on the tensor until its
value changes), broadcasts inputs with ``OP_RESTRIDE`` records where shapes differ
(beyond a size-1 operand, which the elementwise kernels handle), then appends its record.
"""
from __future__ import annotations

import math
import operator
import threading
import weakref
from typing import Any, Iterator, Sequence

import numpy as np

from . import _kernels as K
from ._format import format_tensor
from ._tape import Tape, _frozen, _tls

_F64 = np.dtype(np.float64)
_PY_NUMBERS = (float, int, bool)
_new = object.__new__
# Threads may backward into the same leaf at once (NumPy's in-place add releases the GIL);
# accumulation into .grad is serialised, as PyTorch's AccumulateGrad is.
_GRAD_LOCK = threading.Lock()
_weakref = weakref.ref


class BroadcastError(ValueError, RuntimeError):
    """Operand shapes that cannot be broadcast together (a ValueError for NumPy users, a
    RuntimeError for PyTorch users)."""


class _Size(int):
    """``t.size`` is the element count as in NumPy; calling it gives PyTorch's ``t.size()``."""

    _shape: tuple

    def __call__(self, dim: int | None = None):
        return self._shape if dim is None else self._shape[dim]


# ---------------------------------------------------------------------------------------------
# values and dtypes
# ---------------------------------------------------------------------------------------------
def _check_dtype(dt: np.dtype) -> np.dtype:
    if dt.kind in "biuf":
        return dt
    if dt.kind == "c":
        raise TypeError(f"complex tensors are not supported yet (got dtype {dt}); "
                        "split them into real and imaginary parts")
    raise TypeError(f"tapediff tensors hold numbers; dtype {dt} is not supported "
                    "(use a float, int or bool dtype)")


def _norm(r: Any) -> Any:
    """A NumPy result as a tensor value: 0-d float64 becomes a Python float."""
    if type(r) is np.ndarray:
        if r.ndim == 0 and r.dtype == _F64:
            return float(r)
        return r
    if type(r) is np.float64 or type(r) is float:
        return float(r)
    return np.asarray(r)


def _shape_of(v: Any) -> tuple:
    return () if type(v) is float else v.shape


def _dtype_of(v: Any) -> np.dtype:
    return _F64 if type(v) is float else v.dtype


def _wrap(v: Any, tape: Tape | None = None, slot: int = -1, rg: bool = False) -> "Tensor":
    t = _new(Tensor)
    t._v = v
    t._tape = tape
    t._slot = slot
    t._rg = rg
    t._grad = None
    t._ver = 0
    t._lc = None
    return t


def _const(x: Any) -> "Tensor":
    """A non-tensor operand (ndarray, list, NumPy scalar) as a constant tensor."""
    a = np.asarray(x)
    _check_dtype(a.dtype)
    return _wrap(_norm(a))


_ERR_FLOAT_ONLY = "Only Tensors of floating point and complex dtype can require gradients"


def tensor(data: Any, dtype: Any = None, requires_grad: bool = False) -> "Tensor":
    """A new leaf tensor holding a copy of ``data`` (scalar, nested list, ndarray or Tensor).

    Floats default to float64, ints to int64, bools to bool; ``dtype`` (a NumPy dtype or
    its name, e.g. ``td.float32``) overrides.

    >>> import tapediff as td
    >>> td.tensor([0.1, 0.2, 0.3], requires_grad=True)
    tensor([0.1000, 0.2000, 0.3000], requires_grad=True)
    """
    if isinstance(data, Tensor):
        data = data._v
    a = np.array(data, dtype=dtype, copy=True)
    _check_dtype(a.dtype)
    t = _wrap(_norm(a))
    if requires_grad:
        t.requires_grad = True
    return t


# ---------------------------------------------------------------------------------------------
# recording helpers
# ---------------------------------------------------------------------------------------------
def _slot_on(t: "Tensor", tape: Tape) -> int:
    """The slot holding ``t``'s value on ``tape`` (room already reserved)."""
    tp = t._tape
    if tp is not None:
        if tp is not tape:
            raise RuntimeError(
                "a tensor recorded on one tape is used in an operation recording on another; "
                "compute it inside the same `with td.tape():` block, or use .detach() to take "
                "its value as a constant")
        return t._slot
    c = t._lc  # (weakref to the tape, slot, version, requires_grad) of the cached record
    if c is not None and c[0]() is tape and c[2] == t._ver and c[3] == t._rg:
        return c[1]
    v = t._v
    op = K.OP_LEAF if t._rg else K.OP_CONST
    if type(v) is float:
        s = tape.push(op, -1, v)
    else:
        s = tape.append(op, -1, -1, v.size)
        tape.value_view(s, v.shape)[...] = v
    # The tape is held weakly: a constant used in many short-lived tapes must not keep them.
    t._lc = (weakref.ref(tape), s, t._ver, t._rg)
    tape._cached[s] = weakref.ref(t)
    return s


def _c_strides(shape: Sequence[int]) -> list:
    st = [1] * len(shape)
    acc = 1
    for d in range(len(shape) - 1, -1, -1):
        st[d] = acc
        acc *= shape[d]
    return st


def _restride_meta(tape: Tape, in_size: int, shape: Sequence[int], strides: Sequence[int],
                   start: int, r: int) -> int:
    """Side-table block of an OP_RESTRIDE record: out[k // r] (+)= in[start + idx . strides],
    idx running over ``shape`` in C order."""
    if len(shape) == 0:  # a single element: one iteration of stride 0
        shape, strides = (1,), (0,)
    # The kernels do no bounds checks: refuse a layout that could leave the input.
    if all(shape):
        lo = start + sum((d - 1) * s for d, s in zip(shape, strides) if s < 0)
        hi = start + sum((d - 1) * s for d, s in zip(shape, strides) if s > 0)
        if lo < 0 or hi >= in_size:
            raise AssertionError(f"restride out of bounds: {start}, {shape}, {strides}")
    return tape.put_meta([len(shape), start, r, *shape, *strides])


def _broadcast_slot(tape: Tape, slot: int, in_shape: tuple, out_shape: tuple) -> int:
    """Record ``in_shape -> out_shape`` broadcasting of ``slot`` and write its value."""
    nd = len(out_shape)
    st = _c_strides(in_shape)
    strides = [0] * nd
    for d in range(1, len(in_shape) + 1):
        if in_shape[-d] != 1 or out_shape[-d] == 1:
            strides[-d] = st[-d]
    m = _restride_meta(tape, math.prod(in_shape), out_shape, strides, 0, 1)
    s = tape.append(K.OP_RESTRIDE, slot, -1, math.prod(out_shape), 0.0, m)
    src = tape.value_view(slot, in_shape)
    np.copyto(tape.value_view(s, out_shape), np.broadcast_to(src, out_shape))
    return s


def _result_shape(a: tuple, b: tuple) -> tuple:
    if a == b:
        return a
    try:
        return np.broadcast_shapes(a, b)
    except ValueError:
        raise BroadcastError(f"operands could not be broadcast together: shapes {a} and {b}"
                             ) from None


def _record_out(tape: Tape, op: int, a: int, b: int, r: Any, p: float = 0.0,
                m: int = -1) -> "Tensor":
    """Append the output record for the computed value ``r`` (room reserved) and wrap it."""
    if type(r) is float:
        t = _record_scalar(tape, op, a, r)
        s = t._slot
        if b >= 0:
            tape._wib[s] = b
        if p != 0.0:
            tape._wp[s] = p
        if m >= 0:
            tape._wmi[s] = m
        return t
    s = tape.append(op, a, b, r.size, p, m)
    view = tape.value_view(s, r.shape)
    view[...] = r
    return _register(tape, s, r if r.dtype != _F64 else _frozen(view))


def _record_scalar(tape: Tape, op: int, a: int, r: float) -> "Tensor":
    """The hot path of scalar code: append a size-1 record of input ``a`` and value ``r``
    (room reserved; other fields keep their defaults, see ``Tape.push``) and wrap it."""
    i = tape.top
    tape.top = i + 1
    o = tape.vtop
    tape.vtop = o + 1
    tape._wop[i] = op
    tape._wia[i] = a
    tape._woff[i] = o
    tape._wval[o] = r
    t = _new(Tensor)
    t._v = r
    t._tape = tape
    t._slot = i
    t._rg = True
    tape._live.append(_weakref(t))
    return t


def _in_arena(shape: tuple, *dtypes: np.dtype) -> bool:
    """Whether a result of ``shape`` computed from ``dtypes`` can be written straight into
    the float64 arena (a 0-d float64 result is a Python float instead)."""
    return shape != () and all(d == _F64 for d in dtypes)


def _record_into(tape: Tape, op: int, a: int, b: int, shape: tuple, p: float = 0.0,
                 m: int = -1) -> tuple:
    """Append an array record of ``shape`` (room reserved); return its slot and the arena
    view the caller computes the value into (``out=``), saving a copy per operation."""
    s = tape.append(op, a, b, math.prod(shape), p, m)
    return s, tape.value_view(s, shape)


def _register(tape: Tape, s: int, v: Any) -> "Tensor":
    """Wrap the value of slot ``s`` as a recorded tensor; arena views are frozen first."""
    if type(v) is np.ndarray and v.base is not None and v.flags.writeable:
        _frozen(v)
    t = _new(Tensor)
    t._v = v
    t._tape = tape
    t._slot = s
    t._rg = True
    tape._live.append(_weakref(t))
    return t


def _strong(v: Any) -> Any:
    """A tensor value as a NumPy operand: a Python float becomes np.float64, which NumPy
    does not treat as a weak scalar (float32 + float64 tensor must give float64)."""
    return np.float64(v) if type(v) is float else v


def _nsize(v: Any) -> int:
    return 1 if type(v) is float else v.size


# ---------------------------------------------------------------------------------------------
# elementwise operations
# ---------------------------------------------------------------------------------------------
def _spow(x: float, y: float) -> float:
    r = x ** y
    if type(r) is complex:  # NumPy gives nan for a negative base and a fractional exponent
        raise ValueError
    return r


_ARITH_ERRORS = (ArithmeticError, ValueError)

# name: (tensor-tensor opcode, ufunc, Python float function,
#        (opcode, sign of p) for tensor-op-constant, opcode for constant-op-tensor)
_BINARY = {
    "add": (K.OP_ADD, np.add, operator.add, (K.OP_ADD_C, 1.0), K.OP_ADD_C),
    "sub": (K.OP_SUB, np.subtract, operator.sub, (K.OP_ADD_C, -1.0), K.OP_RSUB_C),
    "mul": (K.OP_MUL, np.multiply, operator.mul, (K.OP_MUL_C, 1.0), K.OP_MUL_C),
    "div": (K.OP_DIV, np.true_divide, operator.truediv, (K.OP_DIV_C, 1.0), K.OP_RDIV_C),
    "pow": (K.OP_POW, np.power, _spow, (K.OP_POW_C, 1.0), K.OP_RPOW_C),
}


def _binary(spec: tuple, x: "Tensor", other: Any, reflected: bool) -> "Tensor":
    """``x (op) other``, or ``other (op) x`` when reflected."""
    op, uf, sf, op_c, op_rc = spec
    xv = x._v
    to = type(other)
    if to is float or to is int or to is bool:
        # tensor (op) Python number: the number goes into the record's parameter
        if type(xv) is float:
            try:
                v = sf(other, xv) if reflected else sf(xv, other)
            except _ARITH_ERRORS:
                v = float(uf(other, np.float64(xv)) if reflected else uf(np.float64(xv), other))
            if not x._rg or not _tls.grad_enabled:
                return _wrap(v)
            tape = _tls.tape
            if tape.top + 2 > tape.rcap or tape.vtop + 2 > tape.vcap:
                tape.reclaim(2, 2)
            a = x._slot if x._tape is tape else _slot_on(x, tape)
            if reflected:
                t = _record_scalar(tape, op_rc, a, v)
                p = float(other)
            else:
                t = _record_scalar(tape, op_c[0], a, v)
                p = op_c[1] * other
            if p != 0.0:
                tape._wp[t._slot] = p
            return t
        if not x._rg or not _tls.grad_enabled:
            return _wrap(_norm(uf(other, xv) if reflected else uf(xv, other)))
        tape = _tls.tape
        nx = xv.size
        if tape.top + 2 > tape.rcap or tape.vtop + 2 * nx > tape.vcap:
            tape.reclaim(2, 2 * nx)
        a = x._slot if x._tape is tape else _slot_on(x, tape)
        o, p = (op_rc, float(other)) if reflected else (op_c[0], op_c[1] * float(other))
        shape = xv.shape
        if _in_arena(shape, xv.dtype):
            s, view = _record_into(tape, o, a, -1, shape, p)
            uf(other, xv, out=view) if reflected else uf(xv, other, out=view)
            return _register(tape, s, view)
        return _record_out(tape, o, a, -1, _norm(uf(other, xv) if reflected else uf(xv, other)),
                           p)
    if to is not Tensor:
        if isinstance(other, (str, bytes)) or other is None:
            return NotImplemented
        # ndarrays, lists and NumPy scalars (typed operands under NEP 50) are constants
        other = _const(other)
    ov = other._v
    l, r = (ov, xv) if reflected else (xv, ov)
    rec = (x._rg or other._rg) and _tls.grad_enabled
    if type(l) is float and type(r) is float:
        try:
            v = sf(l, r)
        except _ARITH_ERRORS:
            v = float(uf(np.float64(l), r))
        if not rec:
            return _wrap(v)
        tape = _tls.tape
        if tape.top + 3 > tape.rcap or tape.vtop + 3 > tape.vcap:
            tape.reclaim(3, 3)
        a = x._slot if x._tape is tape else _slot_on(x, tape)
        b = other._slot if other._tape is tape else _slot_on(other, tape)
        if reflected:
            a, b = b, a
        t = _record_scalar(tape, op, a, v)
        tape._wib[t._slot] = b
        return t
    shape = _result_shape(_shape_of(l), _shape_of(r))
    if not rec:
        # a float64 tensor held as a Python float must not act as a weak scalar (NEP 50)
        l, r = _strong(l), _strong(r)
        return _wrap(_norm(uf(l, r)))
    return _record_binary(op, uf, x, other, reflected, None, shape)


def _record_binary(op: int, uf: Any, x: "Tensor", other: "Tensor", reflected: bool, v: Any,
                   out_shape: tuple) -> "Tensor":
    """Record ``x (op) other`` (operands swapped when reflected); ``v`` is the value when
    already computed (scalars), else it is computed here, into the arena when possible."""
    tape = _tls.tape
    xv, ov = x._v, other._v
    xs, os_ = _shape_of(xv), _shape_of(ov)
    nx, no, nv = _nsize(xv), _nsize(ov), math.prod(out_shape)
    tape.reserve(5, nx + no + 3 * nv, 2 * (4 + 2 * len(out_shape)))
    a = _slot_on(x, tape)
    b = _slot_on(other, tape)
    if reflected:
        a, b, xs, os_, nx, no, xv, ov = b, a, os_, xs, no, nx, ov, xv
    if v is None:
        xv, ov = _strong(xv), _strong(ov)
    # operands of the output's size or of size 1 go straight in; others are broadcast first
    if nx != nv and nx != 1:
        a = _broadcast_slot(tape, a, xs, out_shape)
    if no != nv and no != 1:
        b = _broadcast_slot(tape, b, os_, out_shape)
    if v is not None:
        return _record_out(tape, op, a, b, v)
    if _in_arena(out_shape, _dtype_of(xv), _dtype_of(ov)):
        s, view = _record_into(tape, op, a, b, out_shape)
        uf(xv, ov, out=view)
        return _register(tape, s, view)
    return _record_out(tape, op, a, b, _norm(uf(xv, ov)))


def _sigmoid_f(x: float) -> float:
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _sigmoid_np(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    e = np.exp(-np.abs(x))  # never overflows: 1/(1+e) for x >= 0, e/(1+e) below
    return np.divide(np.where(x >= 0, np.ones((), e.dtype), e), 1.0 + e, out=out)


def _relu_f(x: float) -> float:
    return x if x > 0.0 or x != x else 0.0


def _relu_np(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return np.maximum(x, np.zeros((), x.dtype), out=out)


# name: (opcode, NumPy function, Python float function)
_UNARY = {
    "exp": (K.OP_EXP, np.exp, math.exp),
    "log": (K.OP_LOG, np.log, math.log),
    "sqrt": (K.OP_SQRT, np.sqrt, math.sqrt),
    "sin": (K.OP_SIN, np.sin, math.sin),
    "cos": (K.OP_COS, np.cos, math.cos),
    "tan": (K.OP_TAN, np.tan, math.tan),
    "tanh": (K.OP_TANH, np.tanh, math.tanh),
    "sigmoid": (K.OP_SIGMOID, _sigmoid_np, _sigmoid_f),
    "relu": (K.OP_RELU, _relu_np, _relu_f),
    "abs": (K.OP_ABS, np.abs, abs),
}


def _unary(spec: tuple, x: "Tensor") -> "Tensor":
    op, uf, sf = spec
    xv = x._v
    rec = x._rg and _tls.grad_enabled
    if type(xv) is float:
        try:
            v = sf(xv)
        except _ARITH_ERRORS:
            v = float(uf(np.float64(xv)))
        if not rec:
            return _wrap(v)
        tape = _tls.tape
        if tape.top + 2 > tape.rcap or tape.vtop + 2 > tape.vcap:
            tape.reclaim(2, 2)
        return _record_scalar(tape, op, x._slot if x._tape is tape else _slot_on(x, tape), v)
    if xv.dtype.kind in "biu" and op != K.OP_ABS and op != K.OP_RELU:
        xv = xv.astype(_F64)  # NumPy's transcendental functions promote ints to float64
    if not rec:
        return _wrap(_norm(uf(xv)))
    tape = _tls.tape
    nx = xv.size
    if tape.top + 2 > tape.rcap or tape.vtop + 2 * nx > tape.vcap:
        tape.reclaim(2, 2 * nx)
    a = x._slot if x._tape is tape else _slot_on(x, tape)
    if _in_arena(xv.shape, xv.dtype):
        s, view = _record_into(tape, op, a, -1, xv.shape)
        uf(xv, out=view)
        return _register(tape, s, view)
    return _record_out(tape, op, a, -1, _norm(uf(xv)))


# ---------------------------------------------------------------------------------------------
# reductions and indexing
# ---------------------------------------------------------------------------------------------
def _norm_axes(axis: Any, ndim: int) -> tuple:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for ax in axes:
        if not isinstance(ax, (int, np.integer)):
            raise TypeError(f"axis must be an int or a tuple of ints, got {ax!r}")
        if not -ndim <= ax < max(ndim, 1) or (ndim == 0 and ax not in (0, -1)):
            raise np.exceptions.AxisError(
                f"axis {ax} is out of bounds for a tensor of dimension {ndim}")
        a = int(ax) % ndim if ndim else 0
        if a in out:
            raise ValueError(f"duplicate value in axis: {axes}")
        out.append(a)
    return tuple(sorted(out))


def _sum(x: "Tensor", axis: Any, keepdims: bool) -> "Tensor":
    xv = x._v
    shape = _shape_of(xv)
    axes = _norm_axes(axis, len(shape))
    v = _norm(np.sum(xv, axis=axes if shape else None, keepdims=keepdims))
    if not x._rg or not _tls.grad_enabled:
        return _wrap(v)
    tape = _tls.tape
    tape.reserve(2, _nsize(xv) + _nsize(v), 4 + 2 * len(shape))
    a = _slot_on(x, tape)
    # iterate kept axes first, summed axes last: out[k // R] += x[pos(k)]
    st = _c_strides(shape)
    kept = [d for d in range(len(shape)) if d not in axes]
    order = kept + list(axes)
    r = math.prod(shape[d] for d in axes)  # an empty sum has r == 0 and no iterations
    m = _restride_meta(tape, _nsize(xv), [shape[d] for d in order], [st[d] for d in order], 0,
                       max(r, 1))
    return _record_out(tape, K.OP_RESTRIDE, a, -1, v, 0.0, m)


def _count(shape: tuple, axis: Any) -> int:
    return math.prod(shape[d] for d in _norm_axes(axis, len(shape)))


_BASIC_INDEX = (int, np.integer, slice, type(None), type(Ellipsis))


def _getitem(x: "Tensor", key: Any) -> "Tensor":
    xv = x._v
    arr = np.asarray(xv) if type(xv) is float else xv
    keys = key if isinstance(key, tuple) else (key,)
    # Python bools are int subclasses but index as 0-d boolean masks in NumPy
    if isinstance(key, Tensor) or not all(isinstance(k, _BASIC_INDEX) and not
                                          isinstance(k, (bool, np.bool_)) for k in keys):
        raise IndexError(
            "only integers, slices (`:`), ellipsis (`...`) and None are supported as indices "
            f"for now; got {key!r}")
    v = _norm(np.array(arr[key]))
    if not x._rg or not _tls.grad_enabled:
        return _wrap(v)
    # where the selection sits in the input's flat C layout: index a 1-byte array of its shape
    probe = np.empty(arr.shape, np.int8)
    # a trailing Ellipsis makes NumPy return a (possibly 0-d) view, never a scalar copy
    view = probe[keys if any(k is Ellipsis for k in keys) else keys + (Ellipsis,)]
    start = view.__array_interface__["data"][0] - probe.__array_interface__["data"][0]
    tape = _tls.tape
    tape.reserve(2, _nsize(xv) + _nsize(v), 4 + 2 * max(view.ndim, 1))
    a = _slot_on(x, tape)
    m = _restride_meta(tape, arr.size, view.shape, view.strides, start, 1)
    return _record_out(tape, K.OP_RESTRIDE, a, -1, v, 0.0, m)


# ---------------------------------------------------------------------------------------------
# the Tensor class
# ---------------------------------------------------------------------------------------------
_ERR_RELEASED = (
    "Trying to backward through the graph a second time (or directly access saved tensors "
    "after they have already been freed). Saved intermediate values of the graph are freed "
    "when you call .backward() or autograd.grad(). Specify retain_graph=True if you need to "
    "backward through the graph a second time or if you need to access saved tensors after "
    "calling backward.")
_ERR_NONLEAF_RG = (
    "you can only change requires_grad flags of leaf variables. If you want to use a computed "
    "variable in a subgraph that doesn't require differentiation use var_no_grad = "
    "var.detach().")
_ERR_LEAF_INPLACE = "a leaf Variable that requires grad is being used in an in-place operation."
_ERR_TAPED_INPLACE = (
    "in-place modification of a tensor recorded on a tape is not supported: its recorded value "
    "is needed by backward; compute the new value out of place instead (y = y + 1)")


class Tensor:
    """An n-dimensional array that can record the operations applied to it.

    Create tensors with ``td.tensor``; operate on them with arithmetic, methods and ``td.*``
    functions; call ``.backward()`` on a scalar result and read ``.grad`` on the leaves.

    >>> import tapediff as td
    >>> x = td.tensor(2.0, requires_grad=True)
    >>> z = x * td.tensor(5.0)
    >>> z.backward()
    >>> x.grad
    tensor(5.)
    """

    # A recorded tensor sets only _v, _tape, _slot and _rg (the hot path); _grad, _ver and
    # _lc (the cached record of a tape-less tensor) are set on leaves and constants.
    __slots__ = ("_v", "_tape", "_slot", "_rg", "_grad", "_ver", "_lc", "__weakref__")
    # NumPy defers binary operators with tensors to the reflected Tensor methods.
    __array_ufunc__ = None
    __array_priority__ = 1000

    def __init__(self, data: Any, dtype: Any = None, requires_grad: bool = False) -> None:
        t = tensor(data, dtype=dtype, requires_grad=requires_grad)
        for name in ("_v", "_tape", "_slot", "_rg", "_grad", "_ver", "_lc"):
            setattr(self, name, getattr(t, name))

    # -- autograd attributes -----------------------------------------------------------------
    @property
    def grad(self) -> "Tensor | None":
        """The accumulated gradient: None until a backward reaches this leaf, then a Tensor
        of the leaf's shape and dtype; ``backward`` adds to it.  Set it to None to reset."""
        try:
            return self._grad
        except AttributeError:  # recorded tensors do not set it (see __slots__)
            return None

    @grad.setter
    def grad(self, g: "Tensor | None") -> None:
        if g is not None:
            if not isinstance(g, Tensor):
                raise TypeError(f"assigned grad expected to be a Tensor or None but got "
                                f"{type(g).__name__}")
            if g.shape != self.shape:
                raise RuntimeError(f"assigned grad has data of a different size: {g.shape} "
                                   f"vs the tensor's {self.shape}")
        self._grad = g

    @property
    def requires_grad(self) -> bool:
        """Whether operations on this tensor are recorded (settable on leaves)."""
        return self._rg

    @requires_grad.setter
    def requires_grad(self, flag: bool) -> None:
        flag = bool(flag)
        if self._tape is not None:
            if not flag:
                raise RuntimeError(_ERR_NONLEAF_RG)
            return
        if flag and _dtype_of(self._v).kind != "f":
            raise RuntimeError(_ERR_FLOAT_ONLY)
        self._rg = flag
        self._lc = None

    def requires_grad_(self, requires_grad: bool = True) -> "Tensor":
        """Set ``requires_grad`` in place and return ``self``."""
        self.requires_grad = requires_grad
        return self

    @property
    def is_leaf(self) -> bool:
        """True unless this tensor was produced by a recorded operation."""
        return self._tape is None

    @property
    def grad_fn(self) -> str | None:
        """Name of the recorded operation that produced this tensor (None for leaves)."""
        tp = self._tape
        if tp is None:
            return None
        op = int(tp.op[self._slot])
        name = K.OPCODES[op]
        if op == K.OP_RESTRIDE:
            m = int(tp.mi[self._slot])
            name = "Sum" if tp.meta[m + 3] > 1 else "View"
        return f"<{name}Backward0>"

    def detach(self) -> "Tensor":
        """A new leaf with this tensor's value, outside any graph (a copy when the value lives
        in a tape's arena, whose storage is reused)."""
        return _wrap(_own(self._v))

    def backward(self, gradient: Any = None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into ``.grad`` of every leaf this tensor depends on.

        ``gradient`` is required when ``self`` has more than one element (it weights the
        outputs, as a vector-Jacobian product).  The records swept are released unless
        ``retain_graph=True``; leaves are never released.
        """
        if not self._rg:
            raise RuntimeError(
                "element 0 of tensors does not require grad and does not have a grad_fn")
        shape = self.shape
        if gradient is None:
            if _nsize(self._v) != 1:
                raise RuntimeError("grad can be implicitly created only for scalar outputs")
            seed = np.ones(1)
        else:
            g = gradient._v if isinstance(gradient, Tensor) else gradient
            seed = np.asarray(g, dtype=_F64)
            if seed.shape != shape:
                raise RuntimeError(f"Mismatch in shape: gradient has a shape of {seed.shape} "
                                   f"and output has a shape of {shape}.")
        tape = self._tape
        if tape is None:  # a leaf differentiated with respect to itself
            with _GRAD_LOCK:
                _accumulate_grad(self, seed.ravel())
            return
        slots = tape.sweep(self._slot, seed, retain_graph)
        if slots is None:
            raise RuntimeError(_ERR_RELEASED)
        adj, off, n, cached = tape.adj, tape.off, tape.n, tape._cached
        with _GRAD_LOCK:
            for s in slots:
                r = cached.get(int(s))
                leaf = r() if r is not None else None
                if leaf is not None:
                    o = off[s]
                    _accumulate_grad(leaf, adj[o:o + n[s]])

    # -- array attributes --------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        """The tensor's shape, a tuple of ints."""
        v = self._v
        return () if type(v) is float else v.shape

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        v = self._v
        return 0 if type(v) is float else v.ndim

    @property
    def dtype(self) -> np.dtype:
        """The NumPy dtype of the values."""
        return _dtype_of(self._v)

    @property
    def size(self) -> int:
        """Number of elements (NumPy); ``t.size()`` / ``t.size(dim)`` give PyTorch's shape."""
        s = _Size(_nsize(self._v))
        s._shape = self.shape
        return s

    def numel(self) -> int:
        """Number of elements."""
        return _nsize(self._v)

    def dim(self) -> int:
        """Number of dimensions (PyTorch's spelling of ``ndim``)."""
        return self.ndim

    def numpy(self) -> np.ndarray:
        """A copy of the values as an ndarray (never shared with the tensor or its tape)."""
        return np.array(self._v)

    def tolist(self) -> Any:
        """The values as (nested lists of) Python numbers."""
        return np.asarray(self._v).tolist()

    def item(self) -> Any:
        """The single value of a one-element tensor, as a Python number."""
        v = self._v
        if type(v) is float:
            return v
        if v.size != 1:
            raise RuntimeError(f"a Tensor with {v.size} elements cannot be converted to Scalar")
        return v.item()

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        # np.asarray(t) gives the values, detached from any graph: a copy for recorded
        # tensors (the arena is reused), a read-only view of a leaf's own storage otherwise.
        v = self._v
        if copy or (type(v) is np.ndarray and self._tape is not None):
            return np.array(v, dtype=dtype)
        a = np.asarray(v, dtype=dtype)
        if a is v:
            a = a.view()
            a.flags.writeable = False
        return a

    def __float__(self) -> float:
        if _nsize(self._v) != 1:
            raise ValueError("only one element tensors can be converted to Python scalars")
        return float(self.item())

    def __int__(self) -> int:
        if _nsize(self._v) != 1:
            raise ValueError("only one element tensors can be converted to Python scalars")
        return int(self.item())

    def __index__(self) -> int:
        if self.dtype.kind not in "iub" or _nsize(self._v) != 1:
            raise TypeError("only integer tensors of a single element can be converted to an "
                            "index")
        return int(self.item())

    def __bool__(self) -> bool:
        if _nsize(self._v) != 1:
            raise RuntimeError("Boolean value of Tensor with more than one value is ambiguous")
        return bool(self.item())

    def __len__(self) -> int:
        v = self._v
        if type(v) is float or v.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return v.shape[0]

    def __iter__(self) -> Iterator["Tensor"]:
        for i in range(len(self)):
            yield self[i]

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        v = self._v
        suffix = []
        if self._tape is not None:
            suffix.append(f"grad_fn={self.grad_fn}")
        elif self._rg:
            suffix.append("requires_grad=True")
        return format_tensor(np.asarray(v), suffix)

    def __format__(self, spec: str) -> str:
        if spec and _nsize(self._v) == 1:
            return format(self.item(), spec)
        return repr(self) if not spec else format(repr(self), spec)

    # -- arithmetic --------------------------------------------------------------------------
    def __add__(self, other: Any) -> "Tensor":
        return _binary(_BINARY["add"], self, other, False)

    def __radd__(self, other: Any) -> "Tensor":
        return _binary(_BINARY["add"], self, other, True)

    def __sub__(self, other: Any) -> "Tensor":
        return _binary(_BINARY["sub"], self, other, False)

    def __rsub__(self, other: Any) -> "Tensor":
        return _binary(_BINARY["sub"], self, other, True)

    def __mul__(self, other: Any) -> "Tensor":
        return _binary(_BINARY["mul"], self, other, False)

    def __rmul__(self, other: Any) -> "Tensor":
        return _binary(_BINARY["mul"], self, other, True)

    def __truediv__(self, other: Any) -> "Tensor":
        return _binary(_BINARY["div"], self, other, False)

    def __rtruediv__(self, other: Any) -> "Tensor":
        return _binary(_BINARY["div"], self, other, True)

    def __pow__(self, other: Any) -> "Tensor":
        return _binary(_BINARY["pow"], self, other, False)

    def __rpow__(self, other: Any) -> "Tensor":
        return _binary(_BINARY["pow"], self, other, True)

    def __neg__(self) -> "Tensor":
        if _dtype_of(self._v).kind != "f":  # ints stay ints (never recorded)
            return _wrap(_norm(np.negative(self._v)))
        return _binary(_BINARY["mul"], self, -1, False)

    def __pos__(self) -> "Tensor":
        return self

    def __abs__(self) -> "Tensor":
        return _unary(_UNARY["abs"], self)

    # -- comparisons: bool tensors, never recorded --------------------------------------------
    def _compare(self, other: Any, uf: np.ufunc) -> "Tensor":
        ov = other._v if isinstance(other, Tensor) else other
        return _wrap(np.asarray(uf(self._v, ov)))

    def __lt__(self, other: Any) -> "Tensor":
        return self._compare(other, np.less)

    def __le__(self, other: Any) -> "Tensor":
        return self._compare(other, np.less_equal)

    def __gt__(self, other: Any) -> "Tensor":
        return self._compare(other, np.greater)

    def __ge__(self, other: Any) -> "Tensor":
        return self._compare(other, np.greater_equal)

    def __eq__(self, other: Any) -> "Tensor":  # type: ignore[override]
        return self._compare(other, np.equal)

    def __ne__(self, other: Any) -> "Tensor":  # type: ignore[override]
        return self._compare(other, np.not_equal)

    # -- in-place updates (for tensors outside the graph, e.g. under no_grad) ---------------
    def _inplace(self, other: Any, uf: Any) -> "Tensor":
        if self._tape is not None:
            raise RuntimeError(_ERR_TAPED_INPLACE)
        other_rg = isinstance(other, Tensor) and other._rg
        if _tls.grad_enabled and (self._rg or other_rg):
            if self._rg:
                raise RuntimeError(_ERR_LEAF_INPLACE)
            raise RuntimeError(
                "in-place update of a tensor that does not require grad with one that does "
                "would lose the gradient; compute the result out of place instead")
        ov = other._v if isinstance(other, Tensor) else other
        v = self._v
        if type(v) is float:
            r = uf(v, ov)
            if np.shape(r) != ():
                raise ValueError(f"non-broadcastable output operand with shape () doesn't "
                                 f"match the broadcast shape {np.shape(r)}")
            self._v = float(r)
        else:
            if not v.flags.writeable:  # a value shared with a tape or another tensor
                v = v.copy()
            uf(v, ov, out=v, casting="same_kind")
            self._v = v
        self._ver += 1
        return self

    def __iadd__(self, other: Any) -> "Tensor":
        return self._inplace(other, np.add)

    def __isub__(self, other: Any) -> "Tensor":
        return self._inplace(other, np.subtract)

    def __imul__(self, other: Any) -> "Tensor":
        return self._inplace(other, np.multiply)

    def __itruediv__(self, other: Any) -> "Tensor":
        return self._inplace(other, np.true_divide)

    def zero_(self) -> "Tensor":
        """Fill with zeros in place (for ``.grad`` tensors and constants) and return self."""
        return self._inplace(0, np.multiply)

    def __getitem__(self, key: Any) -> "Tensor":
        return _getitem(self, key)

    def __setitem__(self, key: Any, value: Any) -> None:
        if self._tape is not None:
            raise RuntimeError(_ERR_TAPED_INPLACE)
        if _tls.grad_enabled and (self._rg or (isinstance(value, Tensor) and value._rg)):
            if self._rg:
                raise RuntimeError(_ERR_LEAF_INPLACE)
            raise RuntimeError(
                "assigning a tensor that requires grad into one that does not would lose the "
                "gradient; build the result out of place instead")
        v = self._v
        if type(v) is float or not v.flags.writeable:
            v = np.array(v)
        v[key] = value._v if isinstance(value, Tensor) else value
        self._v = _norm(v)
        self._ver += 1

    # -- math methods ------------------------------------------------------------------------
    def exp(self) -> "Tensor":
        """Elementwise e**x."""
        return _unary(_UNARY["exp"], self)

    def log(self) -> "Tensor":
        """Elementwise natural logarithm."""
        return _unary(_UNARY["log"], self)

    def sqrt(self) -> "Tensor":
        """Elementwise square root."""
        return _unary(_UNARY["sqrt"], self)

    def sin(self) -> "Tensor":
        """Elementwise sine."""
        return _unary(_UNARY["sin"], self)

    def cos(self) -> "Tensor":
        """Elementwise cosine."""
        return _unary(_UNARY["cos"], self)

    def tan(self) -> "Tensor":
        """Elementwise tangent."""
        return _unary(_UNARY["tan"], self)

    def tanh(self) -> "Tensor":
        """Elementwise hyperbolic tangent."""
        return _unary(_UNARY["tanh"], self)

    def sigmoid(self) -> "Tensor":
        """Elementwise logistic function 1 / (1 + e**-x)."""
        return _unary(_UNARY["sigmoid"], self)

    def relu(self) -> "Tensor":
        """Elementwise max(x, 0); the gradient at 0 is 0."""
        return _unary(_UNARY["relu"], self)

    def abs(self) -> "Tensor":
        """Elementwise absolute value; the gradient at 0 is 0."""
        return _unary(_UNARY["abs"], self)

    def sum(self, axis: Any = None, keepdims: bool = False, *, dim: Any = None,
            keepdim: bool | None = None) -> "Tensor":
        """Sum over ``axis`` (None: all; int or tuple).  ``dim``/``keepdim`` are aliases."""
        axis, keepdims = _axis_args(axis, keepdims, dim, keepdim)
        return _sum(self, axis, keepdims)

    def mean(self, axis: Any = None, keepdims: bool = False, *, dim: Any = None,
             keepdim: bool | None = None) -> "Tensor":
        """Mean over ``axis`` (None: all; int or tuple).  ``dim``/``keepdim`` are aliases."""
        axis, keepdims = _axis_args(axis, keepdims, dim, keepdim)
        x = self if self.dtype.kind == "f" else _wrap(_norm(np.asarray(self._v, _F64)))
        return _sum(x, axis, keepdims) / _count(self.shape, axis)


def _axis_args(axis: Any, keepdims: bool, dim: Any, keepdim: bool | None) -> tuple:
    if dim is not None:
        if axis is not None:
            raise TypeError("pass either axis= or dim=, not both")
        axis = dim
    return axis, keepdims if keepdim is None else keepdim


def _own(v: Any) -> Any:
    """``v``, copied if it is a view of a tape's arena (read-only views are the arena's)."""
    return v.copy() if type(v) is np.ndarray and not v.flags.writeable else v


def _accumulate_grad(leaf: Tensor, g: np.ndarray) -> None:
    """Add the flat adjoint ``g`` into ``leaf.grad`` (created on first use)."""
    dt = leaf.dtype
    shape = leaf.shape
    old = leaf.grad
    if old is None:
        leaf.grad = _wrap(_norm(g.reshape(shape).astype(dt, copy=True)))
        return
    ov = old._v
    if type(ov) is float:
        old._v = ov + float(g[0])
    elif ov.flags.writeable and ov.shape == shape:
        ov += g.reshape(shape).astype(ov.dtype, copy=False)
    else:
        leaf.grad = _wrap(_norm(ov + g.reshape(shape).astype(dt, copy=False)))
