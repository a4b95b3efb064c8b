"""Functional gradients and replay: ``value_and_grad``, ``grad``, ``Tape.gradient``.

``value_and_grad(fn)`` records ``fn`` on a private tape and sweeps it, returning new arrays
and touching no ``.grad``.  With ``replay=True`` the recording is kept: a later call with
inputs of the same shapes and dtypes writes them into the leaves' arena ranges and runs the
jitted forward sweep (every record's value again, from its inputs) and the reverse sweep,
with no Python per operation.

Replay is exact only while the recorded operations are the ones ``fn`` would perform at the
new inputs.  Everything Python decided from a value while recording is therefore checked:

* a value Python read (``bool(t)``, ``float(t)``, ``int(t)``, ``t.item()``, ``t.tolist()``,
  ``t.numpy()``, ``np.asarray(t)`` of data arguments, NumPy functions without a gradient
  such as ``np.floor``, ``np.isnan``, ``np.argsort``) becomes a guard on that value;
* a comparison of tensors (``x > 0``, ``np.less(x, y)``) is recorded: used as the condition
  of ``td.where`` / ``np.where`` it is re-evaluated at each replay (no guard); read in any
  other way (``if x > 0:``, a mask ``x[x > 0]``, arithmetic) it becomes a guard on its
  outcome;
* ``argmax``/``argmin`` guard which elements are the extremes, ``np.sort`` that the sorted
  values are still in order, ``sign`` the signs; ``detach()`` and data tensors passed to a
  nested ``value_and_grad``/``grad`` guard their values;
* ``max``/``min`` reductions, ``maximum``/``minimum``, ``clip``, ``abs`` and ``relu`` are
  recomputed by their kernels: no guard.

``no_grad()`` blocks and differentiation (``backward``, ``Tape.gradient``) inside ``fn``
raise ``RuntimeError`` while recording for replay: their results would be constants.

A guard whose value differs at replay stops that replay.  Each thread keeps a few
recordings (``max_recordings``: one per shape, static argument or branch seen); when none of
those that match the arguments holds, the call records ``fn`` again (``on_guard="rerecord"``,
the default) or raises :class:`GuardError` naming the guard (``on_guard="raise"``).
"""
from __future__ import annotations

import copy
import functools
import threading
from typing import Any, Callable, Sequence

import numpy as np

from . import _kernels as K
from . import _fusion as fusion
from . import _primitives as P
from ._grad_mode import enable_grad
from ._tape import BIG, Tape, notice_compile, thread_state
from ._guards import observe
from ._record import F64, constant, size_of
from ._tensor import ERR_NESTED, Tensor, holds_enclosing_inputs, tensor
from ._higher import nested, nested_value_and_grad

_ON_GUARD = ("rerecord", "raise")


def calibrate(tape: Tape) -> None:
    """Run the forward sweep once at the recorded inputs and let each guard expect the value
    the compiled rules give there (see ``_Recording._calibrate``)."""
    g = tape.forward()
    while g >= 0:
        a, b = int(tape.in_a[g]), int(tape.in_b[g])
        tape.value_view(b, (int(tape.n[b]),))[...] = tape.value_view(a, (int(tape.n[a]),))
        g = tape.forward(g + 1)


class GuardError(RuntimeError):
    """A replayed function reached a guard whose value changed since it was recorded: Python
    decided something from that value (a branch, an index), so the recording does not hold
    at these inputs."""


def _argnums(argnums: Any) -> tuple[tuple[int, ...], bool]:
    if isinstance(argnums, int) and not isinstance(argnums, bool):
        return (argnums,), True
    if (isinstance(argnums, (tuple, list)) and argnums
            and all(isinstance(i, int) and not isinstance(i, bool) for i in argnums)):
        return tuple(argnums), False
    raise TypeError(f"argnums must be an int or a non-empty tuple of ints, got {argnums!r}")


def _checked(argnums: Any, on_guard: str, max_recordings: int) -> tuple[tuple[int, ...], bool]:
    if on_guard not in _ON_GUARD:
        raise ValueError(f"on_guard must be 'rerecord' or 'raise', got {on_guard!r}")
    if not isinstance(max_recordings, int) or isinstance(max_recordings, bool) \
            or max_recordings < 1:
        raise ValueError(f"max_recordings must be a positive int, got {max_recordings!r}")
    return _argnums(argnums)


def value_and_grad(fn: Callable[..., Any], argnums: int | Sequence[int] = 0, *,
                   replay: bool = False, on_guard: str = "rerecord",
                   max_recordings: int = 4, allow_unused: bool = False) -> Callable[..., Any]:
    """A function returning ``(fn(*args), gradient of fn with respect to args[argnums])``.

    ``fn`` must return a scalar.  The arguments at ``argnums`` may be floats, arrays or
    tensors; their gradients are new arrays of the same shapes (tensors when any of them
    is a tensor), and no ``.grad`` is touched.  With ``argnums`` a tuple, the gradient is
    a tuple.

    With ``replay=True``, the first call records ``fn`` and later calls with arguments of
    the same shapes and dtypes replay the recording in compiled code instead of running
    ``fn``: README's "Functional gradients and replay" says what is guarded and the rules on
    arguments.  ``on_guard``
    ("rerecord" or "raise") says what a changed guard does; each thread keeps up to
    ``max_recordings`` recordings (shapes, static arguments or branches) to replay from.

    An output that does not depend on a differentiated argument raises ``RuntimeError``, as
    ``torch.autograd.grad`` does: usually the graph was broken on the way (``.item()``,
    ``float()``, ``.detach()``).  ``allow_unused=True`` gives such an argument a zero gradient.

    >>> import numpy as np, tapediff as td
    >>> f = td.value_and_grad(lambda x: (x ** 2).sum(), replay=True)
    >>> f(np.array([1.0, 2.0]))
    (np.float64(5.0), array([2., 4.]))
    >>> f(np.array([3.0, 4.0]))  # replayed
    (np.float64(25.0), array([6., 8.]))
    """
    nums, single = _checked(argnums, on_guard, max_recordings)
    if replay:
        return Replayed(fn, nums, single, True, on_guard, max_recordings, allow_unused)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if nested(args, nums):  # the gradient must be differentiable itself
            y, grads = nested_value_and_grad(fn, nums, args, kwargs, allow_unused)
            return y, grads[0] if single else tuple(grads)
        rec = _Recording(fn, nums, args, kwargs, False, allow_unused)
        return rec.result(single, True)
    return run


def grad(fn: Callable[..., Any], argnums: int | Sequence[int] = 0, *, replay: bool = False,
         on_guard: str = "rerecord", max_recordings: int = 4,
         allow_unused: bool = False) -> Callable[..., Any]:
    """A function returning the gradient of the scalar ``fn`` with respect to
    ``args[argnums]``: ``value_and_grad`` without the value (the same options).

    >>> import numpy as np, tapediff as td
    >>> td.grad(lambda x, y: (x * y).sum(), argnums=(0, 1))(np.ones(2), np.full(2, 3.0))
    (array([3., 3.]), array([1., 1.]))
    """
    nums, single = _checked(argnums, on_guard, max_recordings)
    if replay:
        return Replayed(fn, nums, single, False, on_guard, max_recordings, allow_unused)

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if nested(args, nums):  # the gradient must be differentiable itself
            grads = nested_value_and_grad(fn, nums, args, kwargs, allow_unused)[1]
            return grads[0] if single else tuple(grads)
        return _Recording(fn, nums, args, kwargs, False, allow_unused).result(single, False)
    return run


# ---------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------
def _values_of(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        observe(x, "an argument of value_and_grad/grad")  # (nested in a replayed function)
    v = np.asarray(x._v if isinstance(x, Tensor) else x)
    if v.dtype.kind in "iub":
        v = v.astype(F64)
    return v


def _is_dynamic(x: Any) -> bool:
    """Float arrays and tensors not differentiated: fresh values on every call."""
    if isinstance(x, Tensor):
        return x.dtype.kind == "f"
    return isinstance(x, np.ndarray) and x.dtype.kind == "f"


def _snapshot(x: Any) -> Any:
    """What a recording keeps of a static argument: a copy, so that changing the caller's
    object in place is seen as a change (an object that cannot be copied is kept as is)."""
    if isinstance(x, Tensor):
        return np.array(x._v)
    try:
        return copy.deepcopy(x)
    except Exception:
        return x


def _same(a: Any, b: Any) -> bool:
    """Whether static argument ``a`` equals ``b``, the snapshot the recording kept."""
    if isinstance(a, Tensor):
        a = np.asarray(a._v)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (type(a) is type(b) and a.shape == b.shape and a.dtype == b.dtype
                and bool(np.array_equal(a, b)))
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # incomparable: treat as changed
        return False


def _signature(nums: frozenset, args: tuple, kwargs: dict,
               replay: bool = True) -> tuple[list, list, list]:
    """(key, dynamic values, static values): the key lists each argument's position, role
    (True: differentiated, False: dynamic, None: static), shape and dtype.  Dynamic ones
    are the inputs of a recording, written in at replay: the differentiated ones and, for
    replay, the other float arrays and tensors."""
    key, dyn, static = [], [], []
    for i, x in enumerate(args):
        if i in nums or replay and _is_dynamic(x):
            v = _values_of(x)
            key.append((i, i in nums, v.shape, v.dtype))
            dyn.append(v)
        else:
            key.append((i, None))
            static.append(x)
    for k in sorted(kwargs):
        x = kwargs[k]
        if replay and _is_dynamic(x):
            v = _values_of(x)
            key.append((k, False, v.shape, v.dtype))
            dyn.append(v)
        else:
            key.append((k, None))
            static.append(x)
    return key, dyn, static


# ---------------------------------------------------------------------------------------------
# one recording of fn
# ---------------------------------------------------------------------------------------------
class _Recording:
    """``fn`` recorded at some arguments: its tape, the slots of its inputs and output."""

    def __init__(self, fn: Callable, nums: tuple, args: tuple, kwargs: dict,
                 guarded: bool, allow_unused: bool = False) -> None:
        for i in nums:
            if not -len(args) <= i < len(args):
                raise TypeError(f"argnums={i} but the function was called with {len(args)} "
                                "positional arguments")
        order = tuple(i % len(args) for i in nums)  # the gradients' order
        nums = frozenset(order)
        active = thread_state.differentiating  # enclosing td.grad calls, innermost last
        if active and any(isinstance(x, Tensor) and x._rg
                          for x in (*args, *kwargs.values())):
            raise RuntimeError(ERR_NESTED)  # its result would be a constant to them
        self.nums = nums
        self.tensor_out = any(isinstance(args[i], Tensor) for i in nums)
        self.key, dyn, static = _signature(nums, args, kwargs, guarded)
        self.static = [_snapshot(x) for x in static] if guarded else []
        tape = self.tape = Tape()
        if guarded:
            tape._guards = []
        # every dynamic argument is a leaf of the recording (differentiated or not)
        call = list(args)
        kw = dict(kwargs)
        self.inputs: list[Tensor] = []  # in the order of _signature's dynamic values
        for (pos, *_), v in zip((e for e in self.key if e[1] is not None), dyn):
            leaf = tensor(v, requires_grad=True)
            if isinstance(pos, int):
                call[pos] = leaf
            else:
                kw[pos] = leaf
            self.inputs.append(leaf)
        self.diff = [call[i] for i in order]
        active.append((tape, {id(x) for x in self.diff}, ()))
        try:
            with enable_grad(), tape:  # (the tape closes first: see _State.grad_enabled)
                y = fn(*call, **kw)
                if isinstance(y, Tensor) and y._rg and y._tape is not tape:
                    y = y + 0.0  # the output is an input itself: give it a record here
        finally:
            active.pop()
        if holds_enclosing_inputs(tape):  # fn closed over an enclosing call's input
            raise RuntimeError(ERR_NESTED)
        if not isinstance(y, Tensor):
            if not isinstance(y, (int, float, np.ndarray, np.generic)):
                raise TypeError("the function must return a scalar tensor or number, got "
                                f"{type(y).__name__}")
            y = tensor(y)
        if y.dtype.kind != "f":
            raise TypeError(f"the function must return a float scalar, got dtype {y.dtype}")
        if size_of(y._v) != 1:
            raise RuntimeError("grad can be implicitly created only for scalar outputs; the "
                               f"function returned shape {y.shape}: reduce it (e.g. .sum())")
        self.shape = y.shape
        self.dtype = y.dtype
        self.out = y if y._tape is tape else None
        self.const = None if self.out is not None else np.array(y._v)
        if guarded:
            tape.reclaim()  # drop what neither the output nor a guard needs
            tape._spare = tape._spare32 = None  # a recording does not grow again
            for x in self.inputs:  # inputs not differentiated: no adjoint flows into them
                s = self.slot(x)
                if s >= 0 and not any(x is d for d in self.diff):
                    tape.op[s] = K.OP_CONST
            K.mark_constant(tape.top, tape.op, tape.in_a, tape.in_b, tape.meta_at, tape.flag,
                            tape.meta)
            self._calibrate()
        # where each input goes (slot, flat range of its arena) and each gradient comes from
        self.in_ranges = [self._range(self.slot(x)) for x in self.inputs]
        self.grad_slots = [self.slot(x) for x in self.diff]
        self.root = -1 if self.out is None else self.out._slot
        self.plan = None  # fused groups: planned from what the first sweep reaches
        self.first = self._sweep()
        if not allow_unused:
            self._check_used(order)
        top = tape.top
        kinds = tape.arena_of[:top]
        # one compiled call per replay when the tape needs no Python rule
        ops = tape.op[:top]
        self.fast = guarded and top > 0 and bool((kinds == kinds[0]).all()) and not bool(
            (K.TRAITS[ops] & K.PYTHON_RULE).any()
            or (P.TO_NUMPY[ops].astype(bool) & (tape.n[:top] >= BIG)).any())
        self.touched = np.zeros(top, np.uint8)
        self.leaf_slots = np.empty(top, np.int64)
        self.nleaf = np.zeros(1, np.int64)
        if guarded and top:  # (NumPy's rules are run by NumPy, and not fused, from BIG on)
            self.plan = fusion.plan(tape, self.root, self.swept, K.NEVER if self.fast else BIG)
            for kind, registers in zip((K.KIND_F64, K.KIND_F32), self.plan.registers):
                if registers:
                    tape.room_past(kind, registers)

    def _range(self, s: int) -> tuple:
        """(slot, arena kind, first, end) of slot ``s``, or (-1, 0, 0, 0) when unused."""
        if s < 0:
            return -1, 0, 0, 0
        o = int(self.tape.off[s])
        return s, int(self.tape.arena_of[s]), o, o + int(self.tape.n[s])

    def _calibrate(self) -> None:
        """Run the forward sweep once at the recorded inputs and let each guard expect the
        value the compiled rules give there.  They may differ from NumPy's in the last bits
        (another exp, another summation order): unadjusted, a guarded value could fail at
        the very inputs it was recorded at."""
        calibrate(self.tape)

    def slot(self, t: Tensor) -> int:
        """The slot of input ``t`` on the tape, or -1 when ``fn`` did not use it."""
        c = t._leaf_record
        return c.slot if c is not None and c.tape() is self.tape else -1

    def _sweep(self) -> tuple:
        """(value, gradients) from the values now in the arena.  A recording not kept for
        replay is swept as ``Tensor.backward`` sweeps (only its leaves' adjoints are read):
        adjoints kept while live, elementwise chains of a large tape fused."""
        touched = self.swept = np.zeros(self.tape.top, np.uint8)
        if self.root >= 0 and self.tape.sweep(self.root, np.ones(1), True, touched,
                                              plan=self.tape._guards is None,
                                              fused=self.plan) is None:
            raise AssertionError("a kept recording was released")  # pragma: no cover
        return self._collect(touched)

    def _check_used(self, order: tuple) -> None:
        """Refuse, as torch.autograd.grad does, an output that the first sweep found not to
        depend on some differentiated argument (a zero gradient there is usually a graph
        broken on the way)."""
        unused = [i for i, s in zip(order, self.grad_slots)
                  if self.root < 0 or s < 0 or not self.swept[s]]
        if not unused:
            return
        if len(unused) == len(order):
            raise RuntimeError(
                "the function's output does not depend on its differentiated argument"
                f"{'s' if len(order) > 1 else ''}: either it does not use "
                f"{'them' if len(order) > 1 else 'it'}, or the gradient was dropped on the way "
                "(.item(), float(), .detach(), .numpy(), int() or values taken under "
                "td.no_grad()). Keep the computation on tensors, or pass allow_unused=True "
                "if a zero gradient is intended.")
        raise RuntimeError(
            f"the output does not depend on argument{'s' if len(unused) > 1 else ''} "
            f"{', '.join(map(str, unused))} of those differentiated (argnums): either the "
            "function does not use it, or its gradient was dropped on the way (.item(), "
            "float(), .detach()). Pass allow_unused=True if a zero gradient is intended.")

    def _collect(self, touched: np.ndarray) -> tuple:
        """(value, gradients) read from the arenas after a reverse sweep (a constant output:
        its value, zero gradients)."""
        if self.root < 0:
            return self.const, [np.zeros(x.shape, x.dtype) for x in self.diff]
        tape = self.tape
        value = tape.value_view(self.root, self.shape).copy()
        grads = []
        for x, s in zip(self.diff, self.grad_slots):
            if s >= 0 and touched[s]:  # (planned, handed over or at the value's offsets)
                grads.append(tape.adjoint_view(s).reshape(x.shape).copy())
            else:
                grads.append(np.zeros(x.shape, x.dtype))
        return value, grads

    def replay(self, dyn: list) -> tuple | int:
        """Value and gradients at the dynamic arguments ``dyn``, or the index of the guard
        that failed."""
        tape = self.tape
        for (s, kind, lo, hi), v in zip(self.in_ranges, dyn):
            if s >= 0:
                (tape.val if kind == K.KIND_F64 else tape.val32)[lo:hi] = v.reshape(-1)
        fused = self.plan is not None and self.plan.fused > 0
        if self.fast and not fused:
            notice_compile(K.replay_sweeps, "the replay sweeps", 8)
            kind = int(tape.arena_of[0])
            val, adj = tape.arena(kind)
            r = K.replay_sweeps(0, tape.top, self.root, kind, tape.op, tape.in_a, tape.in_b,
                                tape.off, tape.n, tape.param, tape.meta_at, tape.flag,
                                tape.arena_of, tape.meta, val, adj, self.touched, self.leaf_slots,
                                self.nleaf, P.TO_NUMPY, K.NEVER)
            if r < K.UNKNOWN_OPCODE:
                return int(tape.param[-3 - r])
            if r != K.SWEEP_DONE:
                raise AssertionError(f"replay sweep ended with code {r}")
            return self._collect(self.touched)
        # records one by one and fused groups (compiled on first use), along the plan's
        # schedule: a few calls from Python, against groups of at least FUSE_MIN elements
        if fused:
            notice_compile(K.fused_group, "the fused replay kernels", 8)
        g = tape.forward(fused=self.plan)
        if g >= 0:
            return int(tape.param[g])
        return self._sweep()

    def result(self, single: bool, with_value: bool, out: tuple | None = None,
               tensor_out: bool | None = None) -> Any:
        """The call's result: Tensors when a differentiated argument is a Tensor."""
        value, grads = self.first if out is None else out
        if self.tensor_out if tensor_out is None else tensor_out:
            grads = [constant(g) for g in grads]
            value = constant(value)
        else:  # 0-d results as NumPy scalars, as NumPy's own reductions give them
            value = value[()] if value.ndim == 0 else value
            grads = [g[()] if g.ndim == 0 else g for g in grads]
        g = grads[0] if single else tuple(grads)
        return (value, g) if with_value else g


# ---------------------------------------------------------------------------------------------
# the replayed function
# ---------------------------------------------------------------------------------------------
class Replayed:
    """``fn``'s value and gradient, recorded on the first call and replayed on later ones.

    Made by ``td.value_and_grad(fn, replay=True)`` or ``td.grad(fn, replay=True)``.  Each
    thread keeps its own recordings, so calls from several threads run at once (the sweeps
    release the GIL).  A thread keeps up to ``max_recordings`` of them, most recently used
    first (one per shape, static argument or branch seen): a call replays the first one
    whose arguments match and whose guards all hold, else ``fn`` records again and the least
    recently used recording beyond the limit is dropped.  ``recordings`` counts the times
    ``fn`` ran, ``replays`` the calls answered by replay, ``last_guard`` names the last
    guard that stopped a replay.
    """

    def __init__(self, fn: Callable, nums: tuple, single: bool, with_value: bool,
                 on_guard: str, max_recordings: int = 4, allow_unused: bool = False) -> None:
        functools.update_wrapper(self, fn)
        self._fn = fn
        self._allow_unused = allow_unused
        self._nums = nums
        self._single = single
        self._with_value = with_value
        self._on_guard = on_guard
        self._max = max_recordings
        self._local = threading.local()
        self._lock = threading.Lock()
        self.recordings = 0
        self.replays = 0
        self.last_guard: str | None = None

    def _recs(self) -> list:
        recs = getattr(self._local, "recs", None)
        if recs is None:
            recs = self._local.recs = []
        return recs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        recs = self._recs()
        failed = None  # the guard that stopped the last matching recording
        signatures: dict = {}
        for j, rec in enumerate(recs):
            if rec.nums not in signatures:
                signatures[rec.nums] = _signature(rec.nums, args, kwargs)
            key, dyn, static = signatures[rec.nums]
            if key != rec.key or not all(_same(a, b) for a, b in zip(static, rec.static)):
                continue
            out = rec.replay(dyn)
            if isinstance(out, int):
                failed = rec.tape._guards[out]
                continue
            if j:
                recs.insert(0, recs.pop(j))  # most recently used first
            with self._lock:
                self.replays += 1
            tensor_out = any(isinstance(args[i], Tensor) for i in rec.nums)
            return rec.result(self._single, self._with_value, out, tensor_out)
        if failed is not None:
            with self._lock:
                self.last_guard = failed
            if self._on_guard == "raise":
                raise GuardError(
                    f"replay of {getattr(self._fn, '__name__', 'the function')} stopped: "
                    f"the value read by {failed} changed since it was recorded, so the "
                    "function may take another path; pass on_guard='rerecord' to record "
                    "it again instead")
        rec = _Recording(self._fn, self._nums, args, kwargs, True, self._allow_unused)
        recs.insert(0, rec)
        del recs[self._max:]
        with self._lock:
            self.recordings += 1
        return rec.result(self._single, self._with_value)

    @property
    def tape(self) -> Tape | None:
        """This thread's most recently used recording (None before the first call)."""
        recs = self._recs()
        return recs[0].tape if recs else None


# ---------------------------------------------------------------------------------------------
# Tape.gradient
# ---------------------------------------------------------------------------------------------
