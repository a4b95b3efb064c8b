"""The recording engine: how an operation on tensors becomes records on the tape.

Values: a 0-d float64 tensor holds a Python ``float`` (scalar code then runs on Python
floats, several times faster than NumPy 0-d arrays); every other tensor holds an ndarray.
A recorded float64 tensor's ndarray is a read-only view of its tape's arena, written in
place by the NumPy call that computed it; other dtypes are copied into the arena.

Recording: an operation records only when grad mode is on and an input requires grad.
It reserves room for everything it appends (``Tape.reserve``), gets a slot for each input
(``slot_on``: a tape-less input gets a LEAF or CONST record, cached on the tensor until its
value changes), broadcasts inputs with ``OP_RESTRIDE`` records where shapes differ
(beyond a size-1 operand, which the elementwise kernels handle), then appends its record
(``emit``).  The arithmetic operators and the unary primitives (``binary``, ``unary``)
write scalar records in line: the hot path of scalar code.
"""
from __future__ import annotations

import math
import sys
import warnings
import weakref
from typing import Any, Sequence

import numpy as np

from . import _kernels as K
from . import _primitives as P
from ._tape import LeafRecord, Tape, frozen, thread_state
from ._tensor import BroadcastError, Tensor

F64 = np.dtype(np.float64)
_F32 = np.dtype(np.float32)
_new = object.__new__
_weakref = weakref.ref


# ---------------------------------------------------------------------------------------------
# NumPy's floating-point warnings, at the caller's line
# ---------------------------------------------------------------------------------------------
# NumPy warns about a division by zero or an invalid value from C, at the innermost Python
# frame: tapediff's line, not the user's.  ``numpy_call`` runs a computation with each error
# kind the user has set to "warn" switched to "call" with ``_fp_warning``, which warns with
# NumPy's message at the first frame outside tapediff and NumPy; kinds set to "raise",
# "ignore", "print" or "log" are left alone, and so is a user's own "call" handler.  Setting
# the context variable costs ~0.2 us, so only array operations and the scalar paths' error
# fallbacks pay it.
try:
    from numpy._core._multiarray_umath import (  # type: ignore[attr-defined]
        _extobj_contextvar as _ERRSTATE, _get_extobj_dict, _make_extobj)
except ImportError:  # another NumPy: its warnings keep tapediff's line
    _ERRSTATE = None
_FP_KINDS = ("divide", "over", "under", "invalid")
_errstate_memo: tuple = (None, None)  # (the user's error state, the one numpy_call runs with)


def internal(f: Any) -> bool:
    """Whether frame ``f`` runs tapediff's or NumPy's own code: warnings and guards name the
    first frame outside them, the user's line."""
    return f.f_globals.get("__name__", "").partition(".")[0] in ("tapediff", "numpy")


def _fp_warning(kind: str, flag: int) -> None:
    """NumPy's error callback: warn as NumPy would, at the caller's line.  The operation is
    named by the ufunc that failed (a local ``uf`` of the computing frame) or
    else by the outermost tapediff function entered."""
    f = sys._getframe(1)
    level = 2
    name = None
    outer = None
    while f is not None and internal(f):
        if name is None:
            u = f.f_locals.get("uf")
            if isinstance(u, np.ufunc):
                name = u.__name__
        code = f.f_code.co_name
        if f.f_globals["__name__"].startswith("tapediff") and code[0] != "<" and \
                code not in _DISPATCH:
            outer = code.strip("_")
        f = f.f_back
        level += 1
    warnings.warn(f"{kind} encountered in {name or outer or 'a tapediff operation'}",
                  RuntimeWarning, stacklevel=level)


_DISPATCH = frozenset(("__array_function__", "__array_ufunc__", "numpy_call", "emit"))


def _user_errstate() -> Any:
    """The error state to compute under for the current one: None to keep it."""
    global _errstate_memo
    modes = _get_extobj_dict()
    warn = [k for k in _FP_KINDS if modes[k] == "warn"]
    own = any(modes[k] == "call" for k in _FP_KINDS)
    ext = _make_extobj(call=_fp_warning, **dict.fromkeys(warn, "call")) if warn and not own \
        else None
    _errstate_memo = (_get_errstate(), ext)
    return ext


def numpy_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with NumPy's floating-point warnings at the caller's line."""
    memo = _errstate_memo
    ext = memo[1] if memo[0] is _get_errstate() else _user_errstate()
    if ext is None:
        return fn(*args, **kwargs)
    token = _set_errstate(ext)
    try:
        return fn(*args, **kwargs)
    finally:
        _reset_errstate(token)


if _ERRSTATE is None:
    def numpy_call(fn: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: F811
        """``fn(*args, **kwargs)``."""
        return fn(*args, **kwargs)
else:
    _get_errstate, _set_errstate, _reset_errstate = _ERRSTATE.get, _ERRSTATE.set, _ERRSTATE.reset


# ---------------------------------------------------------------------------------------------
# values and dtypes
# ---------------------------------------------------------------------------------------------
def check_dtype(dt: np.dtype) -> np.dtype:
    if dt.kind in "biuf":
        return dt
    if dt.kind == "c":
        raise TypeError(f"complex tensors are not supported yet (got dtype {dt}); "
                        "split them into real and imaginary parts")
    raise TypeError(f"tapediff tensors hold numbers; dtype {dt} is not supported "
                    "(use a float, int or bool dtype)")


def tensor_value(r: Any) -> Any:
    """A NumPy result as a tensor value: 0-d float64 becomes a Python float; arrays are
    C-contiguous (views, slices and reshapes compute strides for C order: a Fortran-ordered
    or strided value would send their gradients to the wrong elements)."""
    if type(r) is np.ndarray:
        if r.ndim == 0 and r.dtype == F64:
            return float(r)
        return r if r.flags.c_contiguous else np.ascontiguousarray(r)
    if type(r) is np.float64 or type(r) is float:
        return float(r)
    r = np.asarray(r)  # (np.ascontiguousarray would make a 0-d value 1-d)
    return r if r.flags.c_contiguous else np.ascontiguousarray(r)


def shape_of(v: Any) -> tuple:
    return () if type(v) is float else v.shape


def dtype_of(v: Any) -> np.dtype:
    return F64 if type(v) is float else v.dtype


def wrap(v: Any, tape: Tape | None = None, slot: int = -1, rg: bool = False) -> "Tensor":
    t = _new(Tensor)
    t._v = v
    t._tape = tape
    t._slot = slot
    t._rg = rg
    t._grad = None
    t._ver = 0
    t._leaf_record = None
    return t


def constant(r: Any) -> "Tensor":
    """A NumPy result (or float) as a tensor outside any tape."""
    return wrap(tensor_value(r))


def as_constant(x: Any) -> "Tensor":
    """A non-tensor operand (ndarray, list, NumPy scalar) as a constant tensor."""
    a = np.asarray(x)
    check_dtype(a.dtype)
    return constant(a)


# ---------------------------------------------------------------------------------------------
# recording helpers
# ---------------------------------------------------------------------------------------------
def arena_kind(dt: np.dtype) -> int:
    """The arena kind that holds values of dtype ``dt``."""
    if dt == F64:
        return K.KIND_F64
    if dt == _F32:
        return K.KIND_F32
    raise TypeError(f"tapediff differentiates float32 and float64 operations; this one gives "
                    f"{dt}: convert the inputs with .astype(np.float32) or .astype(np.float64)")


def slot_on(t: "Tensor", tape: Tape, kind: int = K.KIND_F64) -> int:
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
    s = _cached_slot(t, tape)
    if s >= 0:
        return s
    v = t._v
    op = K.OP_LEAF if t._rg else K.OP_CONST
    if type(v) is float:
        s = tape.push(op, -1, v)
    else:
        own = v.dtype.kind == "f"
        s = tape.append(op, -1, -1, v.size, kind=arena_kind(v.dtype) if own else kind)
        tape.value_view(s, v.shape)[...] = v
        if not own:  # an int or bool constant takes the kind of its use: not cached
            return s
    # The tape is held weakly: a constant used in many short-lived tapes must not keep them.
    t._leaf_record = LeafRecord(weakref.ref(tape), s, t._ver, t._rg)
    tape._cached[s] = weakref.ref(t)
    return s


def _cached_slot(t: "Tensor", tape: Tape) -> int:
    """The slot of tape-less ``t`` (a leaf or constant) when its value is already recorded
    on ``tape`` and still current (its cache), else -1."""
    if t._tape is not None:  # (recorded tensors do not set _leaf_record)
        return -1
    c = t._leaf_record
    if c is not None and c.tape() is tape and c.version == t._ver and c.requires_grad == t._rg:
        return c.slot
    return -1


def _leaf_slot(t: "Tensor", tape: Tape) -> int:
    """``slot_on`` for a tensor not recorded on ``tape``, with ``_cached_slot`` written out
    (scalar code's hot path: one call fewer per leaf it reads)."""
    if t._tape is None:  # a leaf or constant (a tensor of another tape has no cache)
        c = t._leaf_record
        if c is not None and c.tape() is tape and c.version == t._ver and c.requires_grad == t._rg:
            return c.slot
    return slot_on(t, tape)


def _input_slot(t: "Tensor", tape: Tape, kind: int) -> int:
    """``t``'s slot, converted to arena ``kind`` if needed (room reserved): a constant is
    copied in that kind, anything else goes through an OP_CAST record (which carries the
    gradient back to the other arena)."""
    s = slot_on(t, tape, kind)
    if tape.arena_of[s] == kind:
        return s
    shape = shape_of(t._v)
    c = tape.append(K.OP_CONST if tape.op[s] == K.OP_CONST else K.OP_CAST, s, -1,
                    int(tape.n[s]), kind=kind)
    if tape.op[c] == K.OP_CONST:
        tape._win_a[c] = -1
    tape.value_view(c, shape)[...] = tape.value_view(s, shape)
    return c


def _natural_kind(t: "Tensor", kind: int) -> int:
    dt = dtype_of(t._v)
    return kind if dt.kind != "f" else arena_kind(dt)


def emit(op: int, xs: Sequence["Tensor"], shape: tuple, dtype: np.dtype, fill: Any, *,
          p: float = 0.0, meta: Any = None, nmeta: int = 0, bcast: bool = False) -> "Tensor":
    """Record ``op`` over the tensors ``xs`` with an output of ``shape`` and ``dtype``.

    ``fill(out)`` computes the value into ``out``, the output's arena range (so NumPy writes
    it in place, no copy).  ``meta(slots)`` gives the side-table payload (``nmeta`` entries
    at most) from the input slots, for records with a layout or listed inputs.  With
    ``bcast``, inputs of another shape are read through a broadcast layout
    (``broadcast_layout``) or else, when their size is neither the output's nor 1, first
    broadcast to ``shape`` with OP_RESTRIDE records.  Inputs of another dtype are cast
    (NumPy's promotion made the output dtype).  The first two inputs are the record's a and b.
    """
    tape = thread_state.tape
    kind = K.KIND_F64 if dtype == F64 else arena_kind(dtype)
    out_n = math.prod(shape)
    nx = len(xs)
    # The common case, every input already recorded on this tape in the output's arena (a
    # leaf or constant through its cache; so no LEAF, CONST or cast record is needed): room
    # for the output and any broadcasts.
    same = True
    for t in xs:
        v = t._v
        # (a cached value is a float one: an int or bool constant is never cached)
        if (t._tape is not tape and _cached_slot(t, tape) < 0) or (
                kind if type(v) is float else arena_kind(v.dtype)) != kind:
            same = False
            break
    nb = (5 + 2 * max(len(shape), 1)) * nx if bcast else 0  # broadcast layout blocks
    if same:
        grow = out_n * (1 + nx) if bcast else out_n
        if kind == K.KIND_F64:
            tape.reserve(3 * nx + 1, grow, nmeta + 1 + nb, 0)
        else:
            tape.reserve(3 * nx + 1, 0, nmeta + 1 + nb, grow)
        # (after the reserve: a reclaim there renumbers slots, and may drop a cache)
        slots = [t._slot if t._tape is tape else _cached_slot(t, tape) for t in xs]
        same = -1 not in slots
    if not same:
        need = [0, 0]
        need[kind] += out_n
        for t in xs:
            nt = size_of(t._v)
            if t._tape is not tape:
                need[_natural_kind(t, kind)] += nt
            need[kind] += nt + (out_n if bcast else 0)  # a cast, a broadcast copy
        tape.reserve(3 * nx + 1, need[0], nmeta + 1 + nb, need[1])
        if op == K.OP_CAST:  # its input stays in its own arena
            slots = [slot_on(t, tape, kind) for t in xs]
        else:
            slots = [_input_slot(t, tape, kind) for t in xs]
    if bcast:
        sa = shape_of(xs[0]._v)
        if nx == 2 and (sa != shape or shape_of(xs[1]._v) != shape):
            layout = None
            if K.TRAITS[op] & K.ELEMENTWISE:
                layout = broadcast_layout(sa, shape_of(xs[1]._v), shape)
            if layout is not None:  # the kernels read the operands in place
                meta = lambda slots: layout  # noqa: E731
            else:
                _broadcast_inputs(tape, xs, slots, shape, out_n)
        elif nx != 2:
            _broadcast_inputs(tape, xs, slots, shape, out_n)
    m = tape.put_meta(meta(slots)) if meta is not None else -1
    a = slots[0] if slots else -1
    b = slots[1] if nx > 1 else -1
    if kind == K.KIND_F64:
        o = tape.vtop
        s = tape.append(op, a, b, out_n, p, m, kind)
        view = tape.val[o:o + out_n].reshape(shape)
    else:
        s = tape.append(op, a, b, out_n, p, m, kind)
        view = tape.value_view(s, shape)
    numpy_call(fill, view)
    return register(tape, s, float(view[()]) if kind == K.KIND_F64 and not shape else view)


def _broadcast_inputs(tape: Tape, xs: Sequence["Tensor"], slots: list, shape: tuple,
                      out_n: int) -> None:
    """Write out each input whose size is neither ``out_n`` nor 1 broadcast to ``shape``
    (OP_RESTRIDE records), updating ``slots``."""
    for j, t in enumerate(xs):
        nt = size_of(t._v)
        if nt != out_n and nt != 1:
            slots[j] = _broadcast_slot(tape, slots[j], shape_of(t._v), shape)


def emit_python(op: int, xs: Sequence["Tensor"], value: np.ndarray, p: float = 0.0) -> "Tensor":
    """Record a PYTHON_RULE primitive with rules (``_primitives.Primitive.forward``) over one
    or two tensors, whose value NumPy already computed (so a failing call, e.g. a singular
    matrix, records nothing)."""
    layout = P.python_layout([value.shape] + [shape_of(t._v) for t in xs])
    return emit(op, xs, value.shape, value.dtype, lambda out: out.__setitem__(Ellipsis, value),
                p=p, meta=lambda slots: layout, nmeta=len(layout))


def c_strides(shape: Sequence[int]) -> list:
    st = [1] * len(shape)
    acc = 1
    for d in range(len(shape) - 1, -1, -1):
        st[d] = acc
        acc *= shape[d]
    return st


def restride_payload(in_size: int, shape: Sequence[int], strides: Sequence[int], start: int,
                      r: int) -> list:
    """Side-table payload of an OP_RESTRIDE record: out[k // r] (+)= in[start + idx . strides],
    idx running over ``shape`` in C order."""
    if len(shape) == 0:  # a single element: one iteration of stride 0
        shape, strides = (1,), (0,)
    # The kernels do no bounds checks: refuse a layout that could leave the input.
    lo = hi = start
    for d, s in zip(shape, strides):
        if d == 0:
            break
        if s < 0:
            lo += (d - 1) * s
        else:
            hi += (d - 1) * s
    else:
        if lo < 0 or hi >= in_size:
            raise AssertionError(f"restride out of bounds: {start}, {shape}, {strides}")
    return [len(shape), start, r, *shape, *strides]


_LAYOUTS: dict = {}  # (a_shape, b_shape, shape, CHUNK_MIN) -> broadcast_layout's result
_SHAPES: dict = {}  # (a_shape, b_shape) -> their broadcast shape
_MEMO_MAX = 4096  # entries a memo keeps before it starts again


def memoised(table: dict, key: Any, compute: Any, *args: Any) -> Any:
    """``table[key]``, or ``compute(*args)`` stored there (the layouts and shapes worked out
    from shapes alone: the same ones come back at every step of a loop).  A table past
    ``_MEMO_MAX`` entries starts again."""
    try:
        return table[key]
    except KeyError:
        pass
    value = compute(*args)
    if len(table) >= _MEMO_MAX:
        table.clear()
    table[key] = value
    return value


def broadcast_layout(a_shape: tuple, b_shape: tuple, shape: tuple) -> list | None:
    """The broadcast layout (``_kernels`` module docstring) in which an elementwise record of
    output ``shape`` reads operands of ``a_shape`` and ``b_shape`` in place; None when both
    are full-size or single elements (no layout needed) or when the chunks would be shorter
    than ``K.CHUNK_MIN`` (the operand is then written out by an OP_RESTRIDE record).
    Memoised."""
    return memoised(_LAYOUTS, (a_shape, b_shape, shape, K.CHUNK_MIN), _broadcast_layout,
                    a_shape, b_shape, shape)


def _broadcast_layout(a_shape: tuple, b_shape: tuple, shape: tuple) -> list | None:
    n = math.prod(shape)
    na, nb = math.prod(a_shape), math.prod(b_shape)
    if n == 0 or ((na == n or na == 1) and (nb == n or nb == 1)):
        return None
    # per output dimension (size-1 ones dropped): its size, the strides of a and b
    dims = []
    sa, sb = c_strides(a_shape), c_strides(b_shape)
    for d in range(1, len(shape) + 1):
        size = shape[-d]
        if size == 1:
            continue
        da = a_shape[-d] if d <= len(a_shape) else 1
        db = b_shape[-d] if d <= len(b_shape) else 1
        dims.append([size, sa[-d] if da != 1 else 0, sb[-d] if db != 1 else 0])
    dims.reverse()
    # merge neighbours that step through both operands as one dimension would
    merged = [dims[0]]
    for size, ta, tb in dims[1:]:
        last = merged[-1]
        if last[1] == ta * size and last[2] == tb * size:
            last[0] *= size
            last[1], last[2] = ta, tb
        else:
            merged.append([size, ta, tb])
    L, ta, tb = merged.pop()
    if L < K.CHUNK_MIN or not merged:
        return None
    outer = [d[0] for d in merged]
    return [len(outer), L, -1 if ta else 0, -1 if tb else 0, *outer,
            *(d[1] for d in merged), *(d[2] for d in merged)]


def _broadcast_slot(tape: Tape, slot: int, in_shape: tuple, out_shape: tuple) -> int:
    """Record ``in_shape -> out_shape`` broadcasting of ``slot`` and write its value."""
    nd = len(out_shape)
    st = c_strides(in_shape)
    strides = [0] * nd
    for d in range(1, len(in_shape) + 1):
        if in_shape[-d] != 1 or out_shape[-d] == 1:
            strides[-d] = st[-d]
    m = tape.put_meta(restride_payload(math.prod(in_shape), out_shape, strides, 0, 1))
    s = tape.append(K.OP_RESTRIDE, slot, -1, math.prod(out_shape), 0.0, m, int(tape.arena_of[slot]))
    src = tape.value_view(slot, in_shape)
    np.copyto(tape.value_view(s, out_shape), np.broadcast_to(src, out_shape))
    return s


def _result_shape(a: tuple, b: tuple) -> tuple:
    return a if a == b else memoised(_SHAPES, (a, b), _broadcast_shapes, a, b)


def _broadcast_shapes(a: tuple, b: tuple) -> tuple:
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
    tape._win_a[i] = a
    tape._woff[i] = o
    tape._wval[o] = r
    t = _new(Tensor)
    t._v = r
    t._tape = tape
    t._slot = i
    t._rg = True
    tape._live.append(_weakref(t))
    return t


def register(tape: Tape, s: int, v: Any) -> "Tensor":
    """Wrap the value of slot ``s`` as a recorded tensor; arena views are frozen first."""
    if type(v) is np.ndarray and v.base is not None and v.flags.writeable:
        frozen(v)
    t = _new(Tensor)
    t._v = v
    t._tape = tape
    t._slot = s
    t._rg = True
    tape._live.append(_weakref(t))
    return t


def strong(v: Any) -> Any:
    """A tensor value as a NumPy operand: a Python float becomes np.float64, which NumPy
    does not treat as a weak scalar (float32 + float64 tensor must give float64)."""
    return np.float64(v) if type(v) is float else v


def size_of(v: Any) -> int:
    return 1 if type(v) is float else v.size


# ---------------------------------------------------------------------------------------------
# elementwise operations
# ---------------------------------------------------------------------------------------------
_ARITH_ERRORS = (ArithmeticError, ValueError)



def _binary_spec(op: int, op_c: int, sign: float, op_rc: int) -> tuple:
    """(tensor-tensor opcode, ufunc, Python float function, (opcode, sign of p) for
    tensor-op-constant, opcode for constant-op-tensor) of an arithmetic operator."""
    p = P.BY_OP[op]
    return op, p.array, p.scalar, (op_c, sign), op_rc


ADD = _binary_spec(K.OP_ADD, K.OP_ADD_C, 1.0, K.OP_ADD_C)
SUB = _binary_spec(K.OP_SUB, K.OP_ADD_C, -1.0, K.OP_RSUB_C)  # a - c records a + (-c)
MUL = _binary_spec(K.OP_MUL, K.OP_MUL_C, 1.0, K.OP_MUL_C)
DIV = _binary_spec(K.OP_DIV, K.OP_DIV_C, 1.0, K.OP_RDIV_C)
POW = _binary_spec(K.OP_POW, K.OP_POW_C, 1.0, K.OP_RPOW_C)


def binary_method(spec: tuple, reflected: bool) -> Any:
    """``Tensor.__add__`` and the other arithmetic operators: ``x (op) other``, or
    ``other (op) x`` when ``reflected``, for the operator ``spec`` (``ADD`` ...).  Its
    constants are bound in the method, so scalar code's hottest path pays one Python call."""
    op, uf, sf, (op_c, sign), op_rc = spec

    def method(x: "Tensor", other: Any) -> "Tensor":
        xv = x._v
        to = type(other)
        if to is float or to is int or to is bool:
            # tensor (op) Python number: the number goes into the record's parameter
            if type(xv) is float:
                try:
                    v = sf(other, xv) if reflected else sf(xv, other)
                except _ARITH_ERRORS:
                    v = float(numpy_call(uf, other, np.float64(xv)) if reflected else
                              numpy_call(uf, np.float64(xv), other))
                tape = thread_state.rec  # one thread-local read: the recording tape, or None
                if tape is None or not x._rg:
                    return wrap(v)
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
                    tape._wparam[i] = other
                else:
                    tape._wop[i] = op_c
                    tape._wparam[i] = sign * other
                tape._win_a[i] = a
                tape._woff[i] = o
                tape._wval[o] = v
                t = _new(Tensor)
                t._v = v
                t._tape = tape
                t._slot = i
                t._rg = True
                tape._live.append(_weakref(t))
                return t
            if not x._rg or not thread_state.grad_enabled:
                return constant(numpy_call(uf, other, xv) if reflected else
                                numpy_call(uf, xv, other))
            o, p = (op_rc, float(other)) if reflected else (op_c, sign * float(other))
            # (a Python number is weak under NEP 50: a float array keeps its dtype)
            return emit(o, (x,), xv.shape, xv.dtype if xv.dtype.kind == "f" else
                        np.result_type(xv, other),
                         (lambda out: uf(other, xv, out=out)) if reflected else
                         (lambda out: uf(xv, other, out=out)), p=p)
        if to is not Tensor:
            if isinstance(other, (str, bytes)) or other is None:
                return NotImplemented
            # ndarrays, lists and NumPy scalars (typed operands under NEP 50) are constants
            other = as_constant(other)
        ov = other._v
        l, r = (ov, xv) if reflected else (xv, ov)
        tape = thread_state.rec
        rec = tape is not None and (x._rg or other._rg)
        if type(l) is float and type(r) is float:
            try:
                v = sf(l, r)
            except _ARITH_ERRORS:
                v = float(numpy_call(uf, np.float64(l), r))
            if not rec:
                return wrap(v)
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
            tape._win_a[i] = a
            tape._win_b[i] = b
            tape._woff[i] = o
            tape._wval[o] = v
            t = _new(Tensor)
            t._v = v
            t._tape = tape
            t._slot = i
            t._rg = True
            tape._live.append(_weakref(t))
            return t
        shape = _result_shape(shape_of(l), shape_of(r))
        # a float64 tensor held as a Python float must not act as a weak scalar (NEP 50)
        l, r = strong(l), strong(r)
        if not rec:
            return constant(numpy_call(uf, l, r))
        dl, dr = dtype_of(l), dtype_of(r)
        return emit(op, (other, x) if reflected else (x, other), shape,
                     dl if dl == dr else np.result_type(dl, dr), lambda out: uf(l, r, out=out),
                     bcast=True)

    return method


def unary(spec: tuple, x: "Tensor") -> "Tensor":
    """A unary primitive of ``x``; ``spec`` is its (opcode, NumPy forward, float forward)
    (``_primitives.UNARY``)."""
    op, uf, sf = spec
    xv = x._v
    tape = thread_state.rec
    rec = tape is not None and x._rg
    if type(xv) is float:
        try:
            v = sf(xv)
        except _ARITH_ERRORS:
            v = float(numpy_call(uf, np.float64(xv)))
        if not rec:
            return wrap(v)
        if tape.top + 2 > tape.rcap or tape.vtop + 2 > tape.vcap:
            tape._reclaim(2, 2)
        return _record_scalar(tape, op, x._slot if x._tape is tape else slot_on(x, tape), v)
    if xv.dtype.kind in "biu" and op != K.OP_ABS and op != K.OP_RELU:
        xv = xv.astype(F64)  # NumPy's transcendental functions promote ints to float64
    if not rec:
        return constant(numpy_call(uf, xv))
    return emit(op, (x,), xv.shape, xv.dtype, lambda out: uf(xv, out=out))
