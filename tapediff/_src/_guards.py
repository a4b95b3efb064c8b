"""Replay's guards: where Python reads a value while a function is recorded for replay.

A value Python looks at (``bool(t)``, ``float(t)``, ``np.asarray(t)``...) may steer what is
recorded; on a tape recording for replay (``Tape.replaying``) such a read appends an
``OP_GUARD`` record, and a replay stops when the guarded value changes.  A comparison of
tensors is recorded as an ``OP_CMP`` (``RecordedComparison``), so ``where`` can follow it at
replay without a guard.  See ``tapediff._src._replay`` for the whole list.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

from . import _kernels as K
from . import _ops
from ._record import arena_kind, dtype_of, internal, size_of, slot_on, strong, wrap
from ._tape import Tape, thread_state
from ._tensor import Tensor

_new = object.__new__

RAW_VALUE = Tensor.__dict__["_v"]  # the slot itself, under the guarding property of a comparison
_CMP = {np.greater: K.CMP_GT, np.greater_equal: K.CMP_GE, np.less: K.CMP_LT,
        np.less_equal: K.CMP_LE, np.equal: K.CMP_EQ, np.not_equal: K.CMP_NE}
_CMP_SIGN = {np.greater: ">", np.greater_equal: ">=", np.less: "<", np.less_equal: "<=",
             np.equal: "==", np.not_equal: "!="}


def _caller() -> str:
    """``file:line`` of the innermost frame outside tapediff and NumPy (names a guard)."""
    f = sys._getframe(1)
    while f is not None and internal(f):
        f = f.f_back
    return "?" if f is None else f"{f.f_code.co_filename}:{f.f_lineno}"


def guard(tape: Tape, t: Tensor, what: str) -> None:
    """Record that Python saw ``t``'s current value: replay stops if it changes."""
    v = RAW_VALUE.__get__(t)
    n = size_of(v)
    kind = arena_kind(dtype_of(v))
    nv = [0, 0]
    nv[kind] = 2 * n
    tape.reserve(3, nv[0], 0, nv[1])
    s = slot_on(t, tape)
    c = tape.append(K.OP_CONST, -1, -1, n, kind=kind)
    tape.value_view(c, (n,))[...] = tape.value_view(s, (n,))
    tape.append(K.OP_GUARD, s, c, 0, float(len(tape._guards)), kind=kind)
    tape._guards.append(f"{what} at {_caller()}")


def observe(t: Tensor, what: str) -> None:
    """Python is about to read ``t``'s value.  On a tape recording for replay, a value that
    depends on the inputs becomes a guard (a comparison's result guards its outcome)."""
    tape = thread_state.rec
    if tape is None or not tape.records_for_replay:
        return
    if type(t) is RecordedComparison:
        t._v  # noqa: B018  (the property records the guard)
    elif (t._tape is tape or (t._tape is None and t._rg)) and dtype_of(t._v).kind == "f":
        guard(tape, t, what)


class RecordedComparison(Tensor):
    """A comparison of tensors recorded for replay: a bool tensor whose outcome is an
    OP_CMP record (``_src``, a tensor of 0/1 on the tape).  ``where`` uses the record, so
    replay recomputes the selection; any other read of the value records a guard first."""

    __slots__ = ("_src", "_what")

    @property
    def _v(self) -> Any:
        src = self._src
        if src is not None:
            self._src = None
            tape = thread_state.rec
            if tape is not None and src._tape is tape and tape.records_for_replay:
                guard(tape, src, self._what)
        return RAW_VALUE.__get__(self)

    @_v.setter
    def _v(self, v: Any) -> None:
        self._src = None
        RAW_VALUE.__set__(self, v)

    # the layout does not depend on the outcome: reading it records no guard
    @property
    def shape(self) -> tuple:
        return np.shape(RAW_VALUE.__get__(self))

    @property
    def ndim(self) -> int:
        return np.ndim(RAW_VALUE.__get__(self))

    @property
    def dtype(self) -> np.dtype:
        return np.asarray(RAW_VALUE.__get__(self)).dtype


def compare_for_replay(a: Tensor, b: Any, uf: np.ufunc, r: np.ndarray) -> Tensor:
    """``a (uf) b`` (values ``r``) as a RecordedComparison when it depends on the recorded
    inputs."""
    if type(a) is RecordedComparison or type(b) is RecordedComparison:
        # comparing outcomes: a guard on each
        return wrap(np.asarray(uf(a._v, b._v if isinstance(b, Tensor) else b)))
    rec = a._rg or (isinstance(b, Tensor) and b._rg)
    dt = np.result_type(strong(a._v), strong(b._v) if isinstance(b, Tensor) else b)
    if not rec or dt.kind != "f":
        return wrap(r)
    f = _new(RecordedComparison)
    f._src = None
    RAW_VALUE.__set__(f, r)
    f._tape, f._slot, f._rg, f._grad, f._ver, f._leaf_record = None, -1, False, None, 0, None
    f._src = _ops.record_compare(a, b, _CMP[uf], r, dt)
    f._what = f"the comparison `{_CMP_SIGN[uf]}`"
    return f
