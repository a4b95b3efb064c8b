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
import sys
import threading
import weakref
from typing import Any, Iterator, Sequence

import numpy as np

from . import _kernels as K
from ._format import format_tensor
from ._tape import Tape, _frozen, _tls

_F64 = np.dtype(np.float64)
_F32 = np.dtype(np.float32)
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
def _kind(dt: np.dtype) -> int:
    """The arena kind that holds values of dtype ``dt``."""
    if dt == _F64:
        return K.KIND_F64
    if dt == _F32:
        return K.KIND_F32
    raise TypeError(f"tapediff differentiates float32 and float64 operations; this one gives "
                    f"{dt}: convert the inputs with .astype(np.float32) or .astype(np.float64)")


def _slot_on(t: "Tensor", tape: Tape, kind: int = K.KIND_F64) -> int:
    """The slot holding ``t``'s value on ``tape`` (room already reserved).

    A tape-less tensor gets a LEAF (requires grad) or CONST record, in its own dtype's arena
    (``kind`` for an int or bool constant), cached on the tensor until its value changes."""
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
        own = v.dtype.kind == "f"
        s = tape.append(op, -1, -1, v.size, kind=_kind(v.dtype) if own else kind)
        tape.value_view(s, v.shape)[...] = v
        if not own:  # an int or bool constant takes the kind of its use: not cached
            return s
    # The tape is held weakly: a constant used in many short-lived tapes must not keep them.
    t._lc = (weakref.ref(tape), s, t._ver, t._rg)
    tape._cached[s] = weakref.ref(t)
    return s


def _leaf_slot(t: "Tensor", tape: Tape) -> int:
    """``_slot_on`` for a tensor not recorded on ``tape``, with the cache hit in line."""
    if t._tape is None:  # a leaf or constant (a tensor of another tape has no cache)
        c = t._lc
        if c is not None and c[0]() is tape and c[2] == t._ver and c[3] == t._rg:
            return c[1]
    return _slot_on(t, tape)


def _input_slot(t: "Tensor", tape: Tape, kind: int) -> int:
    """``t``'s slot, converted to arena ``kind`` if needed (room reserved): a constant is
    copied in that kind, anything else goes through an OP_CAST record (which carries the
    gradient back to the other arena)."""
    s = _slot_on(t, tape, kind)
    if tape.dt[s] == kind:
        return s
    shape = _shape_of(t._v)
    c = tape.append(K.OP_CONST if tape.op[s] == K.OP_CONST else K.OP_CAST, s, -1,
                    int(tape.n[s]), kind=kind)
    if tape.op[c] == K.OP_CONST:
        tape._wia[c] = -1
    tape.value_view(c, shape)[...] = tape.value_view(s, shape)
    return c


def _natural_kind(t: "Tensor", kind: int) -> int:
    dt = _dtype_of(t._v)
    return kind if dt.kind != "f" else _kind(dt)


def _emit(op: int, xs: Sequence["Tensor"], shape: tuple, dtype: np.dtype, fill: Any, *,
          p: float = 0.0, meta: Any = None, nmeta: int = 0, bcast: bool = False) -> "Tensor":
    """Record ``op`` over the tensors ``xs`` with an output of ``shape`` and ``dtype``.

    ``fill(out)`` computes the value into ``out``, the output's arena range (so NumPy writes
    it in place, no copy).  ``meta(slots)`` gives the side-table payload (``nmeta`` entries
    at most) from the input slots, for records with a layout or listed inputs.  With
    ``bcast``, inputs whose size is neither the output's nor 1 are first broadcast to
    ``shape`` with OP_RESTRIDE records.  Inputs of another dtype are cast (NumPy's
    promotion made the output dtype).  The first two inputs are the record's a and b.
    """
    tape = _tls.tape
    kind = _kind(dtype)
    out_n = math.prod(shape)
    need = [0, 0]
    need[kind] += out_n
    for t in xs:
        nt = _nsize(t._v)
        if t._tape is not tape:
            need[_natural_kind(t, kind)] += nt
        need[kind] += nt + (out_n if bcast else 0)  # a cast, a broadcast copy
    nb = 4 + 2 * max(len(shape), 1)  # one broadcast's layout block
    tape.reserve(3 * len(xs) + 1, need[0], nmeta + 1 + (nb + 1) * len(xs) * bcast, need[1])
    if op == K.OP_CAST:  # its input stays in its own arena
        slots = [_slot_on(t, tape, kind) for t in xs]
    else:
        slots = [_input_slot(t, tape, kind) for t in xs]
    if bcast:
        for j, t in enumerate(xs):
            nt = _nsize(t._v)
            if nt != out_n and nt != 1:
                slots[j] = _broadcast_slot(tape, slots[j], _shape_of(t._v), shape)
    m = tape.put_meta(meta(slots)) if meta is not None else -1
    a = slots[0] if slots else -1
    b = slots[1] if len(slots) > 1 else -1
    s = tape.append(op, a, b, out_n, p, m, kind)
    view = tape.value_view(s, shape)
    fill(view)
    return _register(tape, s, float(view[()]) if kind == K.KIND_F64 and shape == () else view)


def _c_strides(shape: Sequence[int]) -> list:
    st = [1] * len(shape)
    acc = 1
    for d in range(len(shape) - 1, -1, -1):
        st[d] = acc
        acc *= shape[d]
    return st


def _restride_payload(in_size: int, shape: Sequence[int], strides: Sequence[int], start: int,
                      r: int) -> list:
    """Side-table payload of an OP_RESTRIDE record: out[k // r] (+)= in[start + idx . strides],
    idx running over ``shape`` in C order."""
    if len(shape) == 0:  # a single element: one iteration of stride 0
        shape, strides = (1,), (0,)
    # The kernels do no bounds checks: refuse a layout that could leave the input.
    if all(shape):
        lo = start + sum((d - 1) * s for d, s in zip(shape, strides) if s < 0)
        hi = start + sum((d - 1) * s for d, s in zip(shape, strides) if s > 0)
        if lo < 0 or hi >= in_size:
            raise AssertionError(f"restride out of bounds: {start}, {shape}, {strides}")
    return [len(shape), start, r, *shape, *strides]


def _broadcast_slot(tape: Tape, slot: int, in_shape: tuple, out_shape: tuple) -> int:
    """Record ``in_shape -> out_shape`` broadcasting of ``slot`` and write its value."""
    nd = len(out_shape)
    st = _c_strides(in_shape)
    strides = [0] * nd
    for d in range(1, len(in_shape) + 1):
        if in_shape[-d] != 1 or out_shape[-d] == 1:
            strides[-d] = st[-d]
    m = tape.put_meta(_restride_payload(math.prod(in_shape), out_shape, strides, 0, 1))
    s = tape.append(K.OP_RESTRIDE, slot, -1, math.prod(out_shape), 0.0, m, int(tape.dt[slot]))
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


_ADD, _SUB, _MUL, _DIV, _POW = (_BINARY[k] for k in ("add", "sub", "mul", "div", "pow"))


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
            tape = _tls.rec  # one thread-local read: the recording tape, or None
            if tape is None or not x._rg:
                return _wrap(v)
            if tape.top + 2 > tape.rcap or tape.vtop + 2 > tape.vcap:
                tape._reclaim(2, 2)
            a = x._slot if x._tape is tape else _leaf_slot(x, tape)
            # the hottest path of scalar code: _record_scalar written out, plus the parameter
            i = tape.top
            tape.top = i + 1
            o = tape.vtop
            tape.vtop = o + 1
            if reflected:
                tape._wop[i] = op_rc
                tape._wp[i] = other
            else:
                tape._wop[i] = op_c[0]
                tape._wp[i] = op_c[1] * other
            tape._wia[i] = a
            tape._woff[i] = o
            tape._wval[o] = v
            t = _new(Tensor)
            t._v = v
            t._tape = tape
            t._slot = i
            t._rg = True
            tape._live.append(_weakref(t))
            return t
        if not x._rg or not _tls.grad_enabled:
            return _wrap(_norm(uf(other, xv) if reflected else uf(xv, other)))
        o, p = (op_rc, float(other)) if reflected else (op_c[0], op_c[1] * float(other))
        return _emit(o, (x,), xv.shape, np.result_type(xv, other),
                     (lambda out: uf(other, xv, out=out)) if reflected else
                     (lambda out: uf(xv, other, out=out)), p=p)
    if to is not Tensor:
        if isinstance(other, (str, bytes)) or other is None:
            return NotImplemented
        # ndarrays, lists and NumPy scalars (typed operands under NEP 50) are constants
        other = _const(other)
    ov = other._v
    l, r = (ov, xv) if reflected else (xv, ov)
    tape = _tls.rec
    rec = tape is not None and (x._rg or other._rg)
    if type(l) is float and type(r) is float:
        try:
            v = sf(l, r)
        except _ARITH_ERRORS:
            v = float(uf(np.float64(l), r))
        if not rec:
            return _wrap(v)
        if tape.top + 3 > tape.rcap or tape.vtop + 3 > tape.vcap:
            tape._reclaim(3, 3)
        a = x._slot if x._tape is tape else _leaf_slot(x, tape)
        b = other._slot if other._tape is tape else _leaf_slot(other, tape)
        if reflected:
            a, b = b, a
        # _record_scalar written out (the hot path of scalar code)
        i = tape.top
        tape.top = i + 1
        o = tape.vtop
        tape.vtop = o + 1
        tape._wop[i] = op
        tape._wia[i] = a
        tape._wib[i] = b
        tape._woff[i] = o
        tape._wval[o] = v
        t = _new(Tensor)
        t._v = v
        t._tape = tape
        t._slot = i
        t._rg = True
        tape._live.append(_weakref(t))
        return t
    shape = _result_shape(_shape_of(l), _shape_of(r))
    # a float64 tensor held as a Python float must not act as a weak scalar (NEP 50)
    l, r = _strong(l), _strong(r)
    if not rec:
        return _wrap(_norm(uf(l, r)))
    return _emit(op, (other, x) if reflected else (x, other), shape,
                 np.result_type(_dtype_of(l), _dtype_of(r)), lambda out: uf(l, r, out=out),
                 bcast=True)


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


def _softplus_f(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _softplus_np(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    return np.logaddexp(np.zeros((), x.dtype), x, out=out)


def _exp2_f(x: float) -> float:
    return 2.0 ** x


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
    "log1p": (K.OP_LOG1P, np.log1p, math.log1p),
    "expm1": (K.OP_EXPM1, np.expm1, math.expm1),
    "sinh": (K.OP_SINH, np.sinh, math.sinh),
    "cosh": (K.OP_COSH, np.cosh, math.cosh),
    "arcsin": (K.OP_ARCSIN, np.arcsin, math.asin),
    "arccos": (K.OP_ARCCOS, np.arccos, math.acos),
    "arctan": (K.OP_ARCTAN, np.arctan, math.atan),
    "log2": (K.OP_LOG2, np.log2, math.log2),
    "log10": (K.OP_LOG10, np.log10, math.log10),
    "exp2": (K.OP_EXP2, np.exp2, _exp2_f),
    "softplus": (K.OP_SOFTPLUS, _softplus_np, _softplus_f),
}


def _unary(spec: tuple, x: "Tensor") -> "Tensor":
    op, uf, sf = spec
    xv = x._v
    tape = _tls.rec
    rec = tape is not None and x._rg
    if type(xv) is float:
        try:
            v = sf(xv)
        except _ARITH_ERRORS:
            v = float(uf(np.float64(xv)))
        if not rec:
            return _wrap(v)
        if tape.top + 2 > tape.rcap or tape.vtop + 2 > tape.vcap:
            tape._reclaim(2, 2)
        return _record_scalar(tape, op, x._slot if x._tape is tape else _slot_on(x, tape), v)
    if xv.dtype.kind in "biu" and op != K.OP_ABS and op != K.OP_RELU:
        xv = xv.astype(_F64)  # NumPy's transcendental functions promote ints to float64
    if not rec:
        return _wrap(_norm(uf(xv)))
    return _emit(op, (x,), xv.shape, xv.dtype, lambda out: uf(xv, out=out))


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
    "is needed by backward; compute the new value out of place instead: y = y + 1, "
    "y = y.at[i].set(v), y = y.at[i].add(v) or td.where(mask, v, y)")


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
    __array_priority__ = 1000

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        # NEP 13: np.exp(t), ndarray + t, ... record as tapediff operations
        return _numpy.array_ufunc(ufunc, method, *inputs, **kwargs)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        # NEP 18: np.sum(t), np.concatenate([t, u]), ... record as tapediff operations
        return _numpy.array_function(func, types, args, kwargs)

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
        """A new leaf with a copy of this tensor's value, outside any graph.

        Unlike PyTorch, the copy shares no storage: an in-place update of either tensor
        never changes the other (nor a value recorded on a tape).  Inside a function
        recorded for replay, the value is guarded (a replay cannot follow it)."""
        _observe(self, "detach()")
        v = self._v
        return _wrap(v if type(v) is float else v.copy())

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
        if tape is not None and tape._guards is not None:
            from ._replay import _check_not_replaying
            _check_not_replaying(tape)
        if tape is None:  # a leaf differentiated with respect to itself
            with _GRAD_LOCK:
                _accumulate_grad(self, seed.ravel())
            return
        slots = tape.sweep(self._slot, seed, retain_graph)
        if slots is None:
            raise RuntimeError(_ERR_RELEASED)
        cached = tape._cached
        # Scalar float64 leaves (one per coefficient in scalar code) read their adjoints in
        # one gather and accumulate as Python floats; the others go through NumPy.
        scalar = (tape.n[slots] == 1) & (tape.dt[slots] == K.KIND_F64)
        with _GRAD_LOCK:
            for s, g in zip(slots[scalar].tolist(), tape.adj[tape.off[slots[scalar]]].tolist()):
                r = cached.get(s)
                leaf = r() if r is not None else None
                if leaf is None:
                    continue
                old = leaf.grad
                if (type(leaf._v) is float and old is not None and type(old._v) is float
                        and old._tape is None):
                    old._v += g
                    old._ver += 1  # a tape holding the old .grad value records it again
                elif type(leaf._v) is float and old is None:
                    leaf._grad = _wrap(g)
                else:
                    _accumulate_grad(leaf, np.array([g]))
            for s in slots[~scalar].tolist():
                r = cached.get(s)
                leaf = r() if r is not None else None
                if leaf is not None:
                    _accumulate_grad(leaf, tape.adjoint_view(s))

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
        _observe(self, ".numpy()")
        return np.array(self._v)

    def tolist(self) -> Any:
        """The values as (nested lists of) Python numbers."""
        _observe(self, ".tolist()")
        return np.asarray(self._v).tolist()

    def item(self) -> Any:
        """The single value of a one-element tensor, as a Python number."""
        _observe(self, ".item()")
        v = self._v
        if type(v) is float:
            return v
        if v.size != 1:
            raise RuntimeError(f"a Tensor with {v.size} elements cannot be converted to Scalar")
        return v.item()

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        _observe(self, "np.asarray()")
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
        _observe(self, "float()")
        if _nsize(self._v) != 1:
            raise ValueError("only one element tensors can be converted to Python scalars")
        return float(self.item())

    def __int__(self) -> int:
        _observe(self, "int()")
        if _nsize(self._v) != 1:
            raise ValueError("only one element tensors can be converted to Python scalars")
        return int(self.item())

    def __index__(self) -> int:
        _observe(self, "an index")
        if self.dtype.kind not in "iub" or _nsize(self._v) != 1:
            raise TypeError("only integer tensors of a single element can be converted to an "
                            "index")
        return int(self.item())

    def __bool__(self) -> bool:
        _observe(self, "bool()")
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
        v = _RAW_V.__get__(self)  # display only: no replay guard
        suffix = []
        if self._tape is not None:
            suffix.append(f"grad_fn={self.grad_fn}")
        elif self._rg:
            suffix.append("requires_grad=True")
        return format_tensor(np.asarray(v), suffix)

    def __format__(self, spec: str) -> str:
        # display only: no replay guard (the computation does not depend on it)
        v = _RAW_V.__get__(self)
        if spec and _nsize(v) == 1:
            return format(np.asarray(v).item(), spec)
        return repr(self) if not spec else format(repr(self), spec)

    # -- arithmetic --------------------------------------------------------------------------
    def __add__(self, other: Any) -> "Tensor":
        return _binary(_ADD, self, other, False)

    def __radd__(self, other: Any) -> "Tensor":
        return _binary(_ADD, self, other, True)

    def __sub__(self, other: Any) -> "Tensor":
        return _binary(_SUB, self, other, False)

    def __rsub__(self, other: Any) -> "Tensor":
        return _binary(_SUB, self, other, True)

    def __mul__(self, other: Any) -> "Tensor":
        return _binary(_MUL, self, other, False)

    def __rmul__(self, other: Any) -> "Tensor":
        return _binary(_MUL, self, other, True)

    def __truediv__(self, other: Any) -> "Tensor":
        return _binary(_DIV, self, other, False)

    def __rtruediv__(self, other: Any) -> "Tensor":
        return _binary(_DIV, self, other, True)

    def __pow__(self, other: Any) -> "Tensor":
        return _binary(_POW, self, other, False)

    def __rpow__(self, other: Any) -> "Tensor":
        return _binary(_POW, self, other, True)

    def __neg__(self) -> "Tensor":
        if _dtype_of(self._v).kind != "f":  # ints stay ints (never recorded)
            return _wrap(_norm(np.negative(self._v)))
        return _binary(_MUL, self, -1, False)

    def __pos__(self) -> "Tensor":
        return self

    def __abs__(self) -> "Tensor":
        return _unary(_UNARY["abs"], self)

    # -- comparisons: bool tensors, never recorded --------------------------------------------
    def _compare(self, other: Any, uf: np.ufunc) -> "Tensor":
        ov = other._v if isinstance(other, Tensor) else other
        r = np.asarray(uf(self._v, ov))
        tape = _tls.rec
        if tape is not None and tape._guards is not None:
            return _flag(self, other, uf, r)
        return _wrap(r)

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
        return _ops.getitem(self, key)

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

    def log1p(self) -> "Tensor":
        """Elementwise log(1 + x), accurate near 0."""
        return _unary(_UNARY["log1p"], self)

    def expm1(self) -> "Tensor":
        """Elementwise e**x - 1, accurate near 0."""
        return _unary(_UNARY["expm1"], self)

    def square(self) -> "Tensor":
        """Elementwise x * x."""
        return self * self

    def sign(self) -> "Tensor":
        """Elementwise sign (never differentiated)."""
        return _ops.sign(self)

    # -- reductions --------------------------------------------------------------------------
    def sum(self, axis: Any = None, keepdims: bool = False, **aliases: Any) -> "Tensor":
        """Sum over ``axis`` (None: all; int or tuple).  ``dim``/``keepdim`` are aliases."""
        return _ops.sum_(self, axis, keepdims, **aliases)

    def mean(self, axis: Any = None, keepdims: bool = False, **aliases: Any) -> "Tensor":
        """Mean over ``axis`` (None: all; int or tuple).  ``dim``/``keepdim`` are aliases."""
        return _ops.mean(self, axis, keepdims, **aliases)

    def var(self, axis: Any = None, ddof: int = 0, keepdims: bool = False,
            **aliases: Any) -> "Tensor":
        """Variance over ``axis`` with ``ddof`` delta degrees of freedom."""
        return _ops.var(self, axis, ddof, keepdims, **aliases)

    def std(self, axis: Any = None, ddof: int = 0, keepdims: bool = False,
            **aliases: Any) -> "Tensor":
        """Standard deviation over ``axis``."""
        return _ops.std(self, axis, ddof, keepdims, **aliases)

    def max(self, axis: Any = None, keepdims: bool = False, **aliases: Any) -> "Tensor":
        """Maximum over ``axis``; tied maxima share the gradient."""
        return _ops.max_(self, axis, keepdims, **aliases)

    def min(self, axis: Any = None, keepdims: bool = False, **aliases: Any) -> "Tensor":
        """Minimum over ``axis``; tied minima share the gradient."""
        return _ops.min_(self, axis, keepdims, **aliases)

    def argmax(self, axis: Any = None, keepdims: bool = False, **aliases: Any) -> "Tensor":
        """Indices of the maxima (not differentiable)."""
        return _ops.argmax(self, axis, keepdims, **aliases)

    def argmin(self, axis: Any = None, keepdims: bool = False, **aliases: Any) -> "Tensor":
        """Indices of the minima (not differentiable)."""
        return _ops.argmin(self, axis, keepdims, **aliases)

    def prod(self, axis: Any = None, keepdims: bool = False, **aliases: Any) -> "Tensor":
        """Product over ``axis``; exact gradients with zeros."""
        return _ops.prod(self, axis, keepdims, **aliases)

    def cumsum(self, axis: Any = None, **aliases: Any) -> "Tensor":
        """Running sum along ``axis``."""
        return _ops.cumsum(self, axis, **aliases)

    def cumprod(self, axis: Any = None, **aliases: Any) -> "Tensor":
        """Running product along ``axis``."""
        return _ops.cumprod(self, axis, **aliases)

    def clip(self, a_min: Any = None, a_max: Any = None) -> "Tensor":
        """Values limited to [a_min, a_max] (gradient 0 where a bound is active)."""
        return _ops.clip(self, a_min, a_max)

    # -- shape -------------------------------------------------------------------------------
    def reshape(self, *shape: Any) -> "Tensor":
        """A tensor of the same values with a new shape (-1 infers one dimension)."""
        return _ops.reshape(self, *shape)

    def view(self, *shape: Any) -> "Tensor":
        """PyTorch's name for ``reshape``."""
        return _ops.reshape(self, *shape)

    def ravel(self) -> "Tensor":
        """The values as a 1-d tensor."""
        return _ops.ravel(self)

    def flatten(self) -> "Tensor":
        """The values as a 1-d tensor."""
        return _ops.ravel(self)

    def squeeze(self, axis: Any = None) -> "Tensor":
        """Without size-1 dimensions (or only ``axis``)."""
        return _ops.squeeze(self, axis)

    def transpose(self, *axes: Any) -> "Tensor":
        """Axes permuted (reversed by default), as ``ndarray.transpose``."""
        if len(axes) == 1 and (axes[0] is None or not isinstance(axes[0], (int, np.integer))):
            axes = axes[0]
        return _ops.transpose(self, axes or None)

    def swapaxes(self, axis1: int, axis2: int) -> "Tensor":
        """Two axes interchanged."""
        return _ops.swapaxes(self, axis1, axis2)

    @property
    def T(self) -> "Tensor":
        """All axes reversed."""
        return _ops.transpose(self)

    @property
    def mT(self) -> "Tensor":
        """The last two axes swapped (a batch of matrices transposed)."""
        return _ops.swapaxes(self, -1, -2)

    def diagonal(self, offset: int = 0, axis1: int = 0, axis2: int = 1) -> "Tensor":
        """The diagonal over ``axis1`` and ``axis2``."""
        return _ops.diagonal(self, offset, axis1, axis2)

    def trace(self, offset: int = 0, axis1: int = 0, axis2: int = 1) -> "Tensor":
        """Sum along a diagonal."""
        return _ops.trace(self, offset, axis1, axis2)

    def repeat(self, repeats: Any, axis: Any = None) -> "Tensor":
        """Elements repeated, as ``ndarray.repeat``."""
        return _ops.repeat(self, repeats, axis)

    def dot(self, other: Any) -> "Tensor":
        """``np.dot(self, other)``."""
        return _ops.dot(self, other)

    def __matmul__(self, other: Any) -> "Tensor":
        return _ops.matmul(self, other)

    def __rmatmul__(self, other: Any) -> "Tensor":
        return _ops.matmul(other, self)

    def astype(self, dtype: Any) -> "Tensor":
        """The values converted to ``dtype``; between float32 and float64 the gradient flows
        (converted back)."""
        return _ops.astype(self, dtype)

    def float(self) -> "Tensor":
        """PyTorch's ``.float()``: as float32."""
        return _ops.astype(self, np.float32)

    def double(self) -> "Tensor":
        """PyTorch's ``.double()``: as float64."""
        return _ops.astype(self, np.float64)

    @property
    def at(self) -> "Any":
        """Functional index updates: ``x.at[i].set(v)``, ``x.at[i].add(v)`` return new tensors
        and record correctly (use them where ``x[i] = v`` would modify a recorded tensor)."""
        return _ops._AtIndexer(self)


# ---------------------------------------------------------------------------------------------
# guards: where Python reads a value while recording for replay (see _replay)
# ---------------------------------------------------------------------------------------------
_RAW_V = Tensor.__dict__["_v"]  # the slot itself, under _Flag's guarding property
_HERE = __file__.rsplit("/", 1)[0]
_CMP = {np.greater: K.CMP_GT, np.greater_equal: K.CMP_GE, np.less: K.CMP_LT,
        np.less_equal: K.CMP_LE, np.equal: K.CMP_EQ, np.not_equal: K.CMP_NE}
_CMP_SIGN = {np.greater: ">", np.greater_equal: ">=", np.less: "<", np.less_equal: "<=",
             np.equal: "==", np.not_equal: "!="}


def _caller() -> str:
    """``file:line`` of the innermost frame outside tapediff (names a guard)."""
    f = sys._getframe(1)
    while f is not None and f.f_code.co_filename.startswith(_HERE):
        f = f.f_back
    return "?" if f is None else f"{f.f_code.co_filename}:{f.f_lineno}"


def _guard(tape: Tape, t: Tensor, what: str) -> None:
    """Record that Python saw ``t``'s current value: replay stops if it changes."""
    v = _RAW_V.__get__(t)
    n = _nsize(v)
    kind = _kind(_dtype_of(v))
    nv = [0, 0]
    nv[kind] = 2 * n
    tape.reserve(3, nv[0], 0, nv[1])
    s = _slot_on(t, tape)
    c = tape.append(K.OP_CONST, -1, -1, n, kind=kind)
    tape.value_view(c, (n,))[...] = tape.value_view(s, (n,))
    tape.append(K.OP_GUARD, s, c, 0, float(len(tape._guards)), kind=kind)
    tape._guards.append(f"{what} at {_caller()}")


def _observe(t: Tensor, what: str) -> None:
    """Python is about to read ``t``'s value.  On a tape recording for replay, a value that
    depends on the inputs becomes a guard (a comparison's result guards its outcome)."""
    tape = _tls.rec
    if tape is None or tape._guards is None:
        return
    if type(t) is _Flag:
        t._v  # noqa: B018  (the property records the guard)
    elif (t._tape is tape or (t._tape is None and t._rg)) and _dtype_of(t._v).kind == "f":
        _guard(tape, t, what)


class _Flag(Tensor):
    """A comparison of tensors recorded for replay: a bool tensor whose outcome is an
    OP_CMP record (``_src``, a tensor of 0/1 on the tape).  ``where`` uses the record, so
    replay recomputes the selection; any other read of the value records a guard first."""

    __slots__ = ("_src", "_what")

    @property
    def _v(self) -> Any:
        src = self._src
        if src is not None:
            self._src = None
            tape = _tls.rec
            if tape is not None and src._tape is tape and tape._guards is not None:
                _guard(tape, src, self._what)
        return _RAW_V.__get__(self)

    @_v.setter
    def _v(self, v: Any) -> None:
        self._src = None
        _RAW_V.__set__(self, v)


def _flag(a: Tensor, b: Any, uf: np.ufunc, r: np.ndarray) -> Tensor:
    """``a (uf) b`` (values ``r``) as a _Flag when it depends on the recorded inputs."""
    if type(a) is _Flag or type(b) is _Flag:  # comparing outcomes: a guard on each
        return _wrap(np.asarray(uf(a._v, b._v if isinstance(b, Tensor) else b)))
    rec = a._rg or (isinstance(b, Tensor) and b._rg)
    dt = np.result_type(_strong(a._v), _strong(b._v) if isinstance(b, Tensor) else b)
    if not rec or dt.kind != "f":
        return _wrap(r)
    f = _new(_Flag)
    f._src = None
    _RAW_V.__set__(f, r)
    f._tape, f._slot, f._rg, f._grad, f._ver, f._lc = None, -1, False, None, 0, None
    f._src = _ops._compare(a, b, _CMP[uf], r, dt)
    f._what = f"the comparison `{_CMP_SIGN[uf]}`"
    return f


def _accumulate_grad(leaf: Tensor, g: np.ndarray) -> None:
    """Add the flat adjoint ``g`` into ``leaf.grad`` (created on first use).

    An existing ``.grad`` outside any graph is updated in place, its version bumped so that a
    tape holding its old value records it again; any other is replaced."""
    old = leaf.grad
    if type(leaf._v) is float:  # a 0-d float64 leaf: its grad is a Python float too
        if old is None:
            leaf._grad = _wrap(float(g[0]))
        elif type(old._v) is float and old._tape is None:
            old._v += float(g[0])
            old._ver += 1
        else:
            leaf._grad = _wrap(_norm(old._v + g[0]))
        return
    dt = leaf.dtype
    shape = leaf.shape
    if old is None:
        leaf._grad = _wrap(_norm(g.reshape(shape).astype(dt, copy=True)))
        return
    ov = old._v
    if (old._tape is None and type(ov) is np.ndarray and ov.flags.writeable
            and ov.shape == shape):
        ov += g.reshape(shape).astype(ov.dtype, copy=False)
        old._ver += 1
    else:
        leaf._grad = _wrap(_norm(np.asarray(ov) + g.reshape(shape).astype(dt, copy=False)))


from . import _ops  # noqa: E402  (operations call back into this module)
from . import _numpy  # noqa: E402
