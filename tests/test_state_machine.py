"""Random sequences of autograd API calls, checked against a NumPy reference model.

Hypothesis drives ``AutogradMachine`` through sequences of: creating leaves (float64, small
random shapes, some requiring grad), applying operations (binary with broadcasting, with a
tensor, a Python number or an ndarray on either side; unary; sum/mean over axes; basic
indexing), ``backward`` on any tensor (with or without ``gradient=`` and ``retain_graph``,
repeated on the last root), resetting ``.grad``, ``detach``, ``requires_grad_``, in-place
updates, and opening/closing ``no_grad``, ``enable_grad`` and ``td.tape()`` blocks.  A few
composite rules make deep graphs and revisits likely: extending the latest graph by 1-3
operations, re-using (and updating in place) a leaf a tape already holds, and two steps of
a training loop (``loss.backward(); with td.no_grad(): w -= 0.1 * w.grad``, twice).

The model keeps, for every tensor, how it was built (operation, operands, and the operand
values at recording time) and computes gradients by its own reverse-mode pass over that
record with closed-form NumPy derivatives.  It predicts, and the machine checks after every
step:

* values, ``requires_grad``, ``is_leaf``, and every leaf's ``.grad`` (None or its array);
* which calls raise: backward reaching a record released by an earlier backward
  ("Trying to backward through the graph a second time"), backward on a non-scalar without
  ``gradient`` ("grad can be implicitly created only for scalar outputs"), on a tensor that
  does not require grad, with a ``gradient`` of the wrong shape; an operation recording on
  one tape with a tensor recorded on another; shapes that do not broadcast; in-place updates
  of a leaf that requires grad (grad mode on) or of a recorded tensor; ``requires_grad_(False)``
  on a non-leaf; closing a tape out of order;
* that a failed call changes nothing, and that nothing is recorded when an operation does
  not record (grad mode off, or no operand requiring grad).

Semantics the model encodes (README, "Semantics worth knowing"): an operation records iff grad
mode is on and an operand requires grad; its edge to a leaf is live iff that leaf required
grad at that moment; backward accumulates into every leaf reached through live edges (zeros
included), and unless ``retain_graph`` releases every non-leaf record it reached; leaves are
never released; a backward that reaches a released record fails before changing anything.
"""
from __future__ import annotations

import itertools
import math
import operator
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from hypothesis.stateful import (
    Bundle, RuleBasedStateMachine, initialize, invariant, multiple, precondition, rule,
)

import tapediff as td
from tapediff._src import _primitives as P
from tapediff.testing import strategies as tst

ERR_SECOND = "Trying to backward through the graph a second time"
ERR_IMPLICIT = "grad can be implicitly created only for scalar outputs"
ERR_NO_GRAD_FN = "element 0 of tensors does not require grad"
ERR_MISMATCH = "Mismatch in shape"
ERR_LEAF_INPLACE = "a leaf Variable that requires grad is being used in an in-place operation."
ERR_NONLEAF_RG = "you can only change requires_grad flags of leaf variables"

# Values beyond this (or non-finite) make the machine skip an operation: the model checks
# gradients with closed forms, and huge values would only test floating-point overflow.
MAX_VALUE = 1e4

# A small palette in which most pairs broadcast (and (2,) vs (3,) does not), plus anything.
SHAPES = st.one_of(st.sampled_from([(), (1,), (3,), (2, 1), (1, 3), (2, 3), (2,)]),
                   tst.shapes(max_dims=3, max_side=3))


# Values come from a seed: one choice per array instead of one per element keeps
# Hypothesis's buffer for long runs (array values hardly matter to these semantics, and a
# failing run prints every value in its labels).
SEEDS = st.integers(0, 2**16)


def _values(shape: tuple, seed: int) -> np.ndarray:
    """Reproducible values in [-3, 3] with two decimals (short to print)."""
    return np.random.default_rng(seed).uniform(-3.0, 3.0, shape).round(2)


def _sigmoid(a: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1.0, e) / (1.0 + e)


def _all(cond: Callable[[np.ndarray], Any]) -> Callable[[np.ndarray], bool]:
    return lambda a: bool(np.all(cond(a)))


def _erf(a: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(a)


def _domain(name: str) -> Callable[[np.ndarray], bool] | None:
    """Whether every element of an operand lies in the domain of the primitive ``name`` in the
    table of primitives (a union of intervals); None (anything goes) for an operation that
    is not a primitive of the table."""
    p = next((p for p in P.PUBLIC if p.name == name and p.arity == 1), None)
    if p is None:
        return None
    (intervals,) = p.domain
    return _all(lambda a: np.any([(lo <= a) & (a <= hi) for lo, hi in intervals], axis=0))


# name: (tapediff call, NumPy value, d/da given (g, a, y)); the operand's domain is the
# primitive's in the table (``_domain``)
_UNARY: dict[str, tuple] = {
    "neg": (operator.neg, np.negative, lambda g, a, y: -g),
    "exp": (td.exp, np.exp, lambda g, a, y: g * y),
    "log": (td.log, np.log, lambda g, a, y: g / a),
    "sqrt": (lambda x: x.sqrt(), np.sqrt, lambda g, a, y: g * 0.5 / y),
    "sin": (td.sin, np.sin, lambda g, a, y: g * np.cos(a)),
    "cos": (lambda x: x.cos(), np.cos, lambda g, a, y: -g * np.sin(a)),
    "tan": (td.tan, np.tan, lambda g, a, y: g * (1.0 + y * y)),
    "tanh": (lambda x: x.tanh(), np.tanh, lambda g, a, y: g * (1.0 - y * y)),
    "sigmoid": (td.sigmoid, _sigmoid, lambda g, a, y: g * y * (1.0 - y)),
    # at the kink (outside the table's domain) the derivative would be 0, as in PyTorch
    "relu": (td.relu, lambda a: np.maximum(a, 0.0), lambda g, a, y: g * (a > 0)),
    "abs": (abs, np.abs, lambda g, a, y: g * np.sign(a)),
    "erf": (lambda x: x.erf(), _erf,
            lambda g, a, y: g * (2.0 / math.sqrt(math.pi)) * np.exp(-a * a)),
}
# name: (tapediff call, NumPy value, d/da given (g, a, y), domain of a or None)
UNARY: dict[str, tuple] = {name: (*spec, _domain(name)) for name, spec in _UNARY.items()}

# name: (operator, (d/da, d/db) given (g, a, b, y) at full (broadcast) shape)
BINARY: dict[str, tuple] = {
    "add": (operator.add, lambda g, a, b, y: (g, g)),
    "sub": (operator.sub, lambda g, a, b, y: (g, -g)),
    "mul": (operator.mul, lambda g, a, b, y: (g * b, g * a)),
    "div": (operator.truediv, lambda g, a, b, y: (g / b, -g * a / (b * b))),
    "pow": (operator.pow, lambda g, a, b, y: (
        g * b * a ** (b - 1.0), g * y * np.log(np.where(a > 0, a, 1.0)))),
}


def _binary_domain(name: str, a: np.ndarray, b: np.ndarray, b_is_number: bool) -> bool:
    if name == "div":
        return bool(np.all(np.abs(b) >= 0.1))
    if name == "pow":  # a positive base; a negative one only to an integer Python power
        return bool(np.all(a >= 0.1)) or (b_is_number and float(b) == int(b))
    return True


def _unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``g`` down to ``shape`` (the adjoint of broadcasting ``shape`` to g.shape)."""
    g = np.asarray(g, np.float64)
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for d, n in enumerate(shape):
        if n == 1 and g.shape[d] != 1:
            g = g.sum(axis=d, keepdims=True)
    return np.broadcast_to(g, shape).copy()


def _broadcastable(a: tuple, b: tuple) -> bool:
    try:
        np.broadcast_shapes(a, b)
    except ValueError:
        return False
    return True


def _name(x: Any) -> str:
    return f"ndarray{x.shape}" if isinstance(x, np.ndarray) else repr(x)


def _axes(axis: Any, ndim: int) -> tuple:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else axis
    return tuple(sorted(a % ndim for a in axes))


def _detach_shares_storage(m: "M") -> bool:
    """Whether ``m.t.detach()`` shares ``m``'s values.  tapediff's detach copies (unlike
    PyTorch's), so an in-place update of either tensor never reaches the other."""
    return False


class Storage:
    """A leaf's values; shared by a leaf of one or more dimensions and its ``detach()``, as
    PyTorch's detach shares storage (a 0-d leaf holds an immutable Python float, so its
    detached copy is independent)."""

    def __init__(self, value: np.ndarray) -> None:
        self.value = np.array(value, dtype=np.float64)


class M:
    """The model of one tensor.

    ``operands``: for a recorded tensor, (model tensor or None for a constant, whether the
    edge carries gradient, the operand's value when recorded); ``vjp(g, values, y)`` gives
    each operand's adjoint.  Leaves have no operands; their values may change in place.
    """

    _ids = itertools.count()

    def __init__(self, t: td.Tensor, value: np.ndarray | Storage, label: str, *, leaf: bool,
                 rg: bool, tape: Any = None, operands: list | None = None,
                 vjp: Callable | None = None) -> None:
        self.id = next(M._ids)
        self.t = t
        self.storage = value if isinstance(value, Storage) else Storage(value)
        self.label = label
        self.leaf = leaf
        self.rg = rg
        self.tape = tape
        self.operands = operands or []
        self.vjp = vjp
        self.released = False
        self.grad: np.ndarray | None = None
        self.view_of: M | None = None  # the root tensor, when a basic index made a view
        self.has_views = False

    @property
    def value(self) -> np.ndarray:
        return self.storage.value

    @property
    def shape(self) -> tuple:
        return self.value.shape

    def __repr__(self) -> str:
        return f"t{self.id}"


def _expect(exc: type, match: str | None, call: Callable[[], Any], what: str) -> None:
    event(f"raises {exc.__name__}: {match}")  # --hypothesis-show-statistics shows coverage
    with pytest.raises(exc) as info:
        call()
    if match is not None:
        assert match in str(info.value), f"{what}: expected {match!r} in {info.value!r}"


class AutogradMachine(RuleBasedStateMachine):
    """See the module docstring."""

    tensors = Bundle("tensors")

    def __init__(self) -> None:
        super().__init__()
        self.all: list[M] = []
        self.ctx: list[tuple] = []  # open blocks, innermost last: ("tape", t) / ("grad", on, cm)
        self.default_tape = td.current_tape()
        self.last_root: M | None = None
        assert td.is_grad_enabled(), "a previous test left grad mode off"

    # -- model of the global state ------------------------------------------------------------
    def grad_enabled(self) -> bool:
        modes = [c[1] for c in self.ctx if c[0] == "grad"]
        return modes[-1] if modes else True

    def current_tape(self) -> Any:
        tapes = [c[1] for c in self.ctx if c[0] == "tape"]
        return tapes[-1] if tapes else self.default_tape

    def track(self, m: M) -> M:
        self.all.append(m)
        self.check(m)
        return m

    # -- creating tensors ---------------------------------------------------------------------
    def leaf(self, shape: tuple, seed: int, rg: bool) -> M:
        value = _values(shape, seed)
        t = td.tensor(value, requires_grad=rg)
        return self.track(M(t, value, f"tensor({value.tolist()}, requires_grad={rg})",
                            leaf=True, rg=rg))

    @initialize(target=tensors, shape=SHAPES, seed=SEEDS)
    def first_leaf(self, shape: tuple, seed: int) -> M:
        # every run starts with a leaf that requires grad, so there is something to record
        return self.leaf(shape, seed, True)

    @rule(target=tensors, shape=SHAPES, seed=SEEDS, rg=st.booleans())
    def new_leaf(self, shape: tuple, seed: int, rg: bool) -> M:
        return self.leaf(shape, seed, rg)

    @rule(target=tensors, a=tensors)
    def detach(self, a: M) -> M:
        d = a.t.detach()
        assert d is not a.t
        return self.track(M(d, a.storage if _detach_shares_storage(a) else a.value,
                            f"{a}.detach()", leaf=True, rg=False))

    # -- operations ---------------------------------------------------------------------------
    def apply(self, label: str, call: Callable, operands: list, vjp: Callable,
              value: np.ndarray, shapes_ok: bool = True) -> Any:
        """Run ``call`` (an operation over ``operands``: model tensors or constants) and
        model its outcome, unless the value is out of range.  Returns the new model tensor
        for the bundle, or nothing when the call raised (as predicted) or was skipped."""
        ms = [o for o in operands if isinstance(o, M)]
        recording = self.grad_enabled() and any(m.rg for m in ms)
        cross = recording and any(m.tape is not None and m.tape is not self.current_tape()
                                  for m in ms)
        if not shapes_ok:
            # both errors are RuntimeErrors; which one comes first is not specified
            _expect(td.BroadcastError if not cross else RuntimeError, None, call, label)
            return multiple()
        if cross:
            _expect(RuntimeError, "tape", call, label)
            return multiple()
        tape = self.current_tape()
        before = len(tape)
        event("operation recorded" if recording else "operation not recorded")
        out = call()
        assert isinstance(out, td.Tensor), label
        if not recording:
            assert len(tape) == before, f"{label}: recorded although not recording"
        snaps = [(o, o.rg, o.value.copy()) if isinstance(o, M) else
                 (None, False, np.asarray(o, np.float64)) for o in operands]
        return self.track(M(out, value, label, leaf=not recording, rg=recording,
                            tape=tape if recording else None, operands=snaps, vjp=vjp))

    @staticmethod
    def in_range(value: np.ndarray) -> bool:
        return bool(np.all(np.isfinite(value)) and np.all(np.abs(value) <= MAX_VALUE))

    @rule(target=tensors, a=tensors, name=st.sampled_from(sorted(UNARY)))
    def unary(self, a: M, name: str) -> Any:
        fn, ref, deriv, domain = UNARY[name]
        if domain is not None and not domain(a.value):
            return multiple()
        with np.errstate(all="ignore"):
            y = np.asarray(ref(a.value), np.float64)
        if not self.in_range(y):
            return multiple()
        return self.apply(f"{name}({a})", lambda: fn(a.t), [a],
                          lambda g, vals, y: [deriv(g, vals[0], y)], y)

    @rule(target=tensors, a=tensors, b=tensors, name=st.sampled_from(sorted(BINARY)))
    def binary(self, a: M, b: M, name: str) -> Any:
        """``a (op) b`` for two tensors, broadcasting (or raising BroadcastError)."""
        return self.do_binary(name, a, b, b.value, False)

    @rule(target=tensors, a=tensors, data=st.data(), name=st.sampled_from(sorted(BINARY)),
          number=st.booleans(), swap=st.booleans())
    def binary_constant(self, a: M, data: st.DataObject, name: str, number: bool,
                        swap: bool) -> Any:
        """``a (op) c`` or ``c (op) a``, c a Python number or an ndarray that broadcasts."""
        if number:
            c = data.draw(st.sampled_from([2.0, -1.5, 0.5, 3.0]), label="c")
            return self.do_binary(name, a, c, np.float64(c), swap)
        shape = data.draw(tst.broadcastable_shapes(a.shape, max_dims=3, max_side=3),
                          label="constant shape")
        c = _values(shape, data.draw(SEEDS, label="constant seed"))
        return self.do_binary(name, a, c, c, swap)

    def do_binary(self, name: str, a: M, b: Any, b_val: np.ndarray, swap: bool) -> Any:
        op, deriv = BINARY[name]
        left, right = (b, a) if swap else (a, b)
        lv, rv = (b_val, a.value) if swap else (a.value, b_val)
        label = f"{name}({_name(left)}, {_name(right)})"
        call = lambda: op(self.arg(left), self.arg(right))  # noqa: E731
        try:
            np.broadcast_shapes(np.shape(lv), np.shape(rv))
        except ValueError:
            return self.apply(label, call, [left, right], None, np.empty(0), shapes_ok=False)
        if not _binary_domain(name, lv, rv, isinstance(right, float)):
            return multiple()
        with np.errstate(all="ignore"):
            y = np.asarray(op(lv, rv), np.float64)
        if not self.in_range(y):
            return multiple()

        def vjp(g: np.ndarray, vals: list, y: np.ndarray) -> list:
            ga, gb = deriv(g, vals[0], vals[1], y)
            return [_unbroadcast(ga, vals[0].shape), _unbroadcast(gb, vals[1].shape)]

        return self.apply(label, call, [left, right], vjp, y)

    def latest_recorded(self) -> M | None:
        return next((m for m in reversed(self.all) if not m.leaf), None)

    def latest_here(self) -> M | None:
        """The latest tensor recorded on the current tape, when operations record."""
        if not self.grad_enabled():
            return None
        return next((m for m in reversed(self.all) if m.tape is self.current_tape()), None)

    @precondition(lambda self: self.latest_here() is not None)
    @rule(target=tensors, data=st.data(), n=st.integers(1, 3))
    def extend_latest(self, data: st.DataObject, n: int) -> Any:
        """Apply ``n`` operations in a row, each to the latest recorded tensor, so that graphs
        grow deep (an operation on a random tensor mostly starts a new shallow graph)."""
        made = []
        for _ in range(n):
            a = self.latest_here()
            kind = data.draw(st.sampled_from(["unary", "binary", "reduce"]), label="kind")
            if kind == "unary":
                out = self.unary(a, data.draw(st.sampled_from(sorted(UNARY)), label="name"))
            elif kind == "reduce":
                out = self.reduce(a, data, data.draw(st.booleans(), label="mean"),
                                  data.draw(st.booleans(), label="keepdims"))
            else:
                name = data.draw(st.sampled_from(sorted(BINARY)), label="name")
                # operands that can join this graph: leaves and tensors of this tape
                fits = [m for m in self.all if _broadcastable(m.shape, a.shape)
                        and (m.leaf or m.tape is a.tape)]
                b = data.draw(st.sampled_from(fits), label="other")
                out = self.do_binary(name, a, b, b.value,
                                     data.draw(st.booleans(), label="swap"))
            if isinstance(out, M):
                made.append(out)
        return multiple(*made)

    @staticmethod
    def arg(x: Any) -> Any:
        return x.t if isinstance(x, M) else x

    @rule(target=tensors, a=tensors, data=st.data(), mean=st.booleans(),
          keepdims=st.booleans())
    def reduce(self, a: M, data: st.DataObject, mean: bool, keepdims: bool) -> Any:
        nd = a.value.ndim
        axis = None if nd == 0 else data.draw(st.one_of(
            st.none(), st.integers(-nd, nd - 1), hnp.valid_tuple_axes(nd)), label="axis")
        axes = _axes(axis, nd)
        count = int(np.prod([a.shape[d] for d in axes]))
        if a.value.size == 0:  # an index can give an empty tensor; its mean is nan
            return multiple()
        f = np.mean if mean else np.sum
        y = np.asarray(f(a.value, axis=axis, keepdims=keepdims), np.float64)
        name = "mean" if mean else "sum"

        def vjp(g: np.ndarray, vals: list, y: np.ndarray) -> list:
            g = np.asarray(g) if keepdims else np.expand_dims(g, axes)
            g = np.broadcast_to(g, vals[0].shape) / (count if mean else 1)
            return [g.copy()]

        return self.apply(f"{a}.{name}(axis={axis}, keepdims={keepdims})",
                          lambda: getattr(a.t, name)(axis=axis, keepdims=keepdims), [a], vjp,
                          y)

    @rule(target=tensors, a=tensors, data=st.data())
    def index(self, a: M, data: st.DataObject) -> Any:
        key = data.draw(hnp.basic_indices(a.shape, allow_newaxis=True, max_dims=3), label="key")
        y = np.array(a.value[key], np.float64)

        def vjp(g: np.ndarray, vals: list, y: np.ndarray) -> list:
            z = np.zeros(vals[0].shape)
            z[key] += g
            return [z]

        out = self.apply(f"{a}[{key!r}]", lambda: a.t[key], [a], vjp, y)
        if isinstance(out, M) and isinstance(a.value[key], np.ndarray):
            # NumPy gives a view: an in-place update of either now reaches the other
            # (tests/test_inplace.py models that; here it only keeps ``inplace`` away)
            out.view_of = a.view_of or a
            (a.view_of or a).has_views = True
        return out

    # -- backward -----------------------------------------------------------------------------
    def reached(self, root: M) -> list[M]:
        """The recorded tensors a backward from ``root`` sweeps (through live edges), latest
        first."""
        seen: dict[int, M] = {}
        stack = [root]
        while stack:
            m = stack.pop()
            if m.leaf or m.id in seen:
                continue
            seen[m.id] = m
            stack += [o for o, live, _ in m.operands if live]
        return sorted(seen.values(), key=lambda m: -m.id)

    def model_backward(self, root: M, seed: np.ndarray, swept: list[M]) -> dict:
        """The model's reverse-mode pass: the adjoint each leaf reached receives."""
        adj = {root.id: seed}
        leaves: dict[int, tuple[M, np.ndarray]] = {}
        for m in swept:  # consumers before their operands: ids grow with recording order
            g = adj.pop(m.id)
            grads = m.vjp(g, [v for _, _, v in m.operands], m.value)
            for (o, live, v), go in zip(m.operands, grads):
                if not live:
                    continue
                go = np.asarray(go, np.float64).reshape(v.shape)
                if o.leaf:
                    prev = leaves.get(o.id, (o, 0.0))[1]
                    leaves[o.id] = (o, prev + go)
                else:
                    adj[o.id] = adj.get(o.id, 0.0) + go
        return leaves

    def do_backward(self, root: M, gradient: np.ndarray | None, retain: bool) -> None:
        self.last_root = root
        kw: dict[str, Any] = {"retain_graph": retain}
        if gradient is not None:
            kw["gradient"] = gradient
        call = lambda: root.t.backward(**kw)  # noqa: E731
        what = f"{root}.backward({'gradient, ' if gradient is not None else ''}" \
               f"retain_graph={retain}) with {root} = {root.label}"
        if not root.rg:
            return _expect(RuntimeError, ERR_NO_GRAD_FN, call, what)
        if gradient is None and root.value.size != 1:
            return _expect(RuntimeError, ERR_IMPLICIT, call, what)
        if gradient is not None and gradient.shape != root.shape:
            return _expect(RuntimeError, ERR_MISMATCH, call, what)
        seed = np.ones(root.shape) if gradient is None else np.asarray(gradient, np.float64)
        if root.leaf:  # a leaf differentiated with respect to itself
            root.t.backward(**kw)
            root.grad = seed.copy() if root.grad is None else root.grad + seed
            return None
        swept = self.reached(root)
        if any(m.released for m in swept):
            return _expect(RuntimeError, ERR_SECOND, call, what)
        leaves = self.model_backward(root, seed, swept)
        event(f"backward through {min(len(swept), 5)}{'+' if len(swept) >= 5 else ''} "
              f"records to {len(leaves)} leaves")
        root.t.backward(**kw)
        for leaf, g in leaves.values():
            leaf.grad = g.copy() if leaf.grad is None else leaf.grad + g
        if not retain:
            for m in swept:
                m.released = True
        return None

    @rule(root=tensors, retain=st.booleans())
    def backward(self, root: M, retain: bool) -> None:
        self.do_backward(root, None, retain)

    @rule(root=tensors, retain=st.booleans(), data=st.data())
    def backward_with_gradient(self, root: M, retain: bool, data: st.DataObject) -> None:
        shape = data.draw(st.one_of(st.just(root.shape), SHAPES), label="gradient shape")
        grad = _values(shape, data.draw(SEEDS, label="gradient seed"))
        self.do_backward(root, grad, retain)

    @precondition(lambda self: self.latest_recorded() is not None)
    @rule(retain=st.booleans())
    def backward_latest(self, retain: bool) -> None:
        root = self.latest_recorded()
        self.do_backward(root, None if root.value.size == 1 else np.ones(root.shape), retain)

    @precondition(lambda self: self.last_root is not None)
    @rule(retain=st.booleans())
    def backward_again(self, retain: bool) -> None:
        root = self.last_root
        self.do_backward(root, None if root.value.size == 1 else np.ones(root.shape), retain)

    # -- leaves -------------------------------------------------------------------------------
    @rule(a=tensors)
    def reset_grad(self, a: M) -> None:
        a.t.grad = None
        a.grad = None

    @rule(a=tensors, flag=st.booleans())
    def requires_grad_(self, a: M, flag: bool) -> None:
        if not a.leaf:
            if flag:
                assert a.t.requires_grad_(True) is a.t  # a no-op on a recorded tensor
            else:
                _expect(RuntimeError, ERR_NONLEAF_RG, lambda: a.t.requires_grad_(False),
                        f"{a}.requires_grad_(False)")
            return
        assert a.t.requires_grad_(flag) is a.t
        a.rg = flag

    @rule(a=tensors, c=st.sampled_from([0.5, -1.0, 2.0]), multiply=st.booleans())
    def inplace(self, a: M, c: float, multiply: bool) -> None:
        """``a *= c`` / ``a += c``: on a leaf outside the graph (e.g. under no_grad) the value
        changes in place; on a recorded tensor it is recorded as ``a * c`` / ``a + c`` and the
        tensor object becomes that new record.  Graphs recorded earlier keep the old value (the
        model's operands are snapshots).  Views and their bases are left to test_inplace.py."""
        def call() -> td.Tensor:
            x = a.t
            if multiply:
                x *= c
            else:
                x += c
            return x
        if a.view_of is not None or a.has_views:
            return None
        what = f"{a} {'*' if multiply else '+'}= {c} with {a} = {a.label}"
        new = a.value * c if multiply else a.value + c
        if not a.leaf:
            if not self.grad_enabled():
                return _expect(RuntimeError, "under no_grad", call, what)
            if a.tape is not self.current_tape():
                return _expect(RuntimeError, "tape", call, what)
            if not self.in_range(new):
                return None
            event("in-place update of a recorded tensor")
            assert call() is a.t, what
            self.becomes(a, new, what, c if multiply else 1.0)
            return None
        if self.grad_enabled() and a.rg:
            return _expect(RuntimeError, ERR_LEAF_INPLACE, call, what)
        event("in-place update" + (" of a shared storage" if sum(
            m.storage is a.storage for m in self.all) > 1 else ""))
        assert call() is a.t, what
        # every alias of the storage (a leaf and its detach()) sees the update
        a.storage.value = new
        return None

    def becomes(self, a: M, value: np.ndarray, label: str, slope: float) -> None:
        """Model ``a``'s tensor re-pointed at a new record ``a * slope + const``: the old record
        lives on as ``prev`` (what earlier operations read), ``a`` becomes the newest record."""
        prev = M(None, a.value.copy(), a.label, leaf=False, rg=True, tape=a.tape,
                 operands=a.operands, vjp=a.vjp)
        prev.id, prev.released = a.id, a.released
        for m in self.all:
            m.operands = [(prev if o is a else o, live, v) for o, live, v in m.operands]
        if self.last_root is a:
            self.last_root = None
        a.id = next(M._ids)  # recorded after everything before it
        a.storage, a.label, a.released = Storage(value), label, False
        a.operands = [(prev, True, prev.value.copy())]
        a.vjp = lambda g, vals, y: [g * slope]

    def used_leaves(self) -> list[M]:
        """Leaves that some recorded operation read (their values sit on a tape)."""
        ids = {o.id for m in self.all for o, _, _ in m.operands if isinstance(o, M) and o.leaf}
        return [m for m in self.all if m.id in ids]

    # The next two rules make "record with a leaf, update it in place, record with it again"
    # likely: a tape must then see the new value, not the one it copied first.
    @precondition(lambda self: bool(self.used_leaves()))
    @rule(data=st.data(), c=st.sampled_from([0.5, -1.0, 2.0]), multiply=st.booleans())
    def inplace_used_leaf(self, data: st.DataObject, c: float, multiply: bool) -> None:
        self.inplace(data.draw(st.sampled_from(self.used_leaves()), label="leaf"), c, multiply)

    @precondition(lambda self: bool(self.used_leaves()))
    @rule(target=tensors, data=st.data(), name=st.sampled_from(["mul", "div", "pow"]))
    def reuse_used_leaf(self, data: st.DataObject, name: str) -> Any:
        a = data.draw(st.sampled_from(self.used_leaves()), label="leaf")
        fits = [m for m in self.all if _broadcastable(m.shape, a.shape)]
        b = data.draw(st.sampled_from(fits), label="other")
        return self.do_binary(name, b, a, a.value, False)

    @rule(target=tensors, a=tensors, b=tensors)
    def training_steps(self, a: M, b: M) -> Any:
        """Two iterations of a training loop on parameter ``a``: ``loss = (a * b).sum();
        loss.backward(); with td.no_grad(): a -= 0.1 * a.grad``.  The second iteration must
        record ``a``'s new value (and ``b``'s, when ``b`` shares ``a``'s storage)."""
        if not (a.leaf and a.rg and self.grad_enabled() and _broadcastable(a.shape, b.shape)):
            return multiple()
        if a.has_views or a.view_of is not None:  # views follow the update: test_inplace.py
            return multiple()
        made = []
        for _ in range(2):
            p = self.do_binary("mul", a, b, b.value, False)
            if not isinstance(p, M):
                break
            loss = self.apply(f"{p}.sum()", lambda p=p: p.t.sum(), [p],
                              lambda g, vals, y: [np.broadcast_to(g, vals[0].shape).copy()],
                              np.asarray(p.value.sum()))
            made += [p, loss]
            self.do_backward(loss, None, False)
            self.check(a)
            self.check(b)
            if a.grad is None:
                break
            cm = td.no_grad()
            cm.__enter__()
            self.ctx.append(("grad", False, cm))
            x = a.t
            x -= 0.1 * a.t.grad
            assert x is a.t
            a.storage.value = a.value - 0.1 * a.grad
            self.ctx.pop()
            cm.__exit__(None, None, None)
        return multiple(*made)

    # -- grad mode and tape blocks --------------------------------------------------------------
    @precondition(lambda self: len(self.ctx) < 4)
    @rule(on=st.booleans())
    def open_grad_block(self, on: bool) -> None:
        cm = td.enable_grad() if on else td.no_grad()
        cm.__enter__()
        self.ctx.append(("grad", on, cm))

    @precondition(lambda self: len(self.ctx) < 4)
    @rule()
    def open_tape(self) -> None:
        t = td.tape()
        assert t.__enter__() is t
        self.ctx.append(("tape", t))

    @precondition(lambda self: bool(self.ctx))
    @rule()
    def close_block(self) -> None:
        self.ctx.pop()[-1].__exit__(None, None, None)

    @precondition(lambda self: sum(c[0] == "tape" for c in self.ctx) >= 2)
    @rule()
    def close_outer_tape_first(self) -> None:
        outer = next(c[1] for c in self.ctx if c[0] == "tape")
        _expect(RuntimeError, "reverse order", lambda: outer.__exit__(None, None, None),
                "closing an outer tape before an inner one")

    # -- checks -------------------------------------------------------------------------------
    def check(self, m: M) -> None:
        t = m.t
        what = f"{m} = {m.label}"
        assert t.requires_grad == m.rg, f"{what}: requires_grad is {t.requires_grad}"
        assert t.is_leaf == m.leaf, f"{what}: is_leaf is {t.is_leaf}"
        assert t.shape == m.shape and t.dtype == np.float64, f"{what}: {t.shape} {t.dtype}"
        np.testing.assert_allclose(t.numpy(), m.value, rtol=1e-10, atol=1e-12,
                                   err_msg=f"value of {what}")
        if m.leaf or m.grad is not None:
            g = t.grad
        else:  # as PyTorch, reading a non-leaf's unset .grad warns (only leaves accumulate)
            with pytest.warns(UserWarning, match="not a leaf Tensor"):
                g = t.grad
        if m.grad is None:
            assert g is None, f"{what}: expected no .grad, got {g!r}"
        else:
            assert g is not None, f"{what}: expected a .grad, got None"
            assert g.shape == m.shape and g.dtype == np.float64, f"{what}: .grad {g!r}"
            np.testing.assert_allclose(g.numpy(), m.grad, rtol=1e-9, atol=1e-10,
                                       err_msg=f".grad of {what}")

    @invariant()
    def everything_matches_the_model(self) -> None:
        assert td.is_grad_enabled() == self.grad_enabled()
        assert td.current_tape() is self.current_tape()
        for m in self.all:
            self.check(m)

    def teardown(self) -> None:
        # close what the run left open, innermost first, so later tests start clean
        while self.ctx:
            self.ctx.pop()[-1].__exit__(None, None, None)


AutogradMachine.TestCase.settings = settings(stateful_step_count=50)
TestAutograd = AutogradMachine.TestCase


# ---------------------------------------------------------------------------------------------
# Library bugs the machine found, as deterministic tests (minimal forms of its falsifying
# examples).  The machine finds them only in some runs.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("update", ["leaf", "alias"])
def test_detached_copy_updated_in_place_leaves_the_other_alone(update):
    # The machine's examples: first_leaf(shape=(1,)), detach, training_steps(a=leaf,
    # b=alias); or detach, an in-place update of the alias, then the leaf used again.  When
    # detach shared storage, only the updated tensor's version moved and the other one's
    # cached record kept a stale value (right forward value, wrong gradient).  detach copies,
    # so the tensor not updated keeps its values, its record and its gradient.
    x = td.tensor([1.0, 2.0])
    d = x.detach()
    y = td.tensor([1.0, 1.0], requires_grad=True)
    used, updated = (d, x) if update == "leaf" else (x, d)
    (used * y).sum().backward()  # caches used's record on the default tape
    assert np.array_equal(y.grad.numpy(), [1.0, 2.0])
    with td.no_grad():
        updated += 10.0
    assert np.array_equal(updated.numpy(), [11.0, 12.0])
    assert np.array_equal(used.numpy(), [1.0, 2.0])  # no shared storage
    y.grad = None
    z = (used * y).sum()
    assert z.item() == 3.0
    z.backward()
    assert np.array_equal(y.grad.numpy(), [1.0, 2.0]), f"y.grad is {y.grad}, not {used}"
    y.grad = None
    (updated * y).sum().backward()  # the updated tensor records its new value
    assert np.array_equal(y.grad.numpy(), [11.0, 12.0])
