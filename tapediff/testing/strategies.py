"""Hypothesis strategies for tapediff: shapes, tensors, and random differentiable programs.

Shapes and arrays come from ``hypothesis.extra.numpy``, so the broadcasting and indexing
rules are NumPy's own, not re-derived here.

* ``shapes()`` and ``broadcastable_shapes(shape)``: array shapes.
* ``tensors()``: ``td.Tensor`` leaves with drawn (or given) shape, dtype and values.
* ``programs()``: random straight-line programs over a table of differentiable operations
  (``OPS``), callable on tensors, whose every intermediate value is finite and bounded for
  inputs drawn by ``Program.input_tensors()``.  Feed them to ``gradcheck``.

>>> from hypothesis import given, settings, strategies as st
>>> from tapediff.testing import gradcheck
>>> from tapediff.testing.strategies import programs
>>> @settings(max_examples=5, deadline=None)
... @given(prog=programs(max_ops=4), data=st.data())
... def test_programs(prog, data):
...     assert gradcheck(prog, data.draw(prog.input_tensors()))
>>> test_programs()

The unary rows of ``OPS`` come from tapediff's table of primitives (one per public unary
function, its operand mapped into the primitive's domain); the other rows are written out.
Extending the table: append an ``OpSpec`` row to ``OPS`` (or pass your own rows to
``programs(ops=...)``), giving the expression with its domain adapter built in, and a
bound on the magnitude of its result.
"""
from __future__ import annotations

import math
import string
import types
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.extra import numpy as hnp

import tapediff as td
from tapediff._src import _primitives as P

__all__ = [
    "shapes", "broadcastable_shapes", "tensors", "programs", "Program", "Step", "OpSpec",
    "OPS", "MAX_BOUND", "program_weights",
]

Shape = tuple[int, ...]


# ---------------------------------------------------------------------------------------------
# shapes and tensors
# ---------------------------------------------------------------------------------------------
def shapes(min_dims: int = 0, max_dims: int = 3, min_side: int = 1,
           max_side: int = 5) -> st.SearchStrategy[Shape]:
    """Array shapes with ``min_dims..max_dims`` dimensions of ``min_side..max_side`` each.

    >>> from tapediff.testing.strategies import shapes
    >>> shapes(max_dims=2).example()  # doctest: +SKIP
    (3, 1)
    """
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side)


def broadcastable_shapes(shape: Shape, *, min_dims: int = 0, max_dims: int | None = None,
                         min_side: int = 1,
                         max_side: int | None = None) -> st.SearchStrategy[Shape]:
    """Shapes that broadcast with ``shape`` (NumPy's rules; the result may be larger than
    ``shape``, e.g. (2, 1) with (3,)).  Defaults as ``hypothesis.extra.numpy``'s.

    >>> import numpy as np
    >>> from tapediff.testing.strategies import broadcastable_shapes
    >>> s = broadcastable_shapes((2, 3)).example()
    >>> np.broadcast_shapes(s, (2, 3)) is not None
    True
    """
    return hnp.broadcastable_shapes(tuple(shape), min_dims=min_dims, max_dims=max_dims,
                                    min_side=min_side, max_side=max_side)


def _default_elements(dtype: np.dtype) -> st.SearchStrategy:
    if dtype.kind == "f":
        # moderate: exp, squares and products of a few of these stay far from overflow
        return st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False,
                         width=dtype.itemsize * 8)
    if dtype.kind == "b":
        return st.booleans()
    return st.integers(-10, 10)


def tensors(dtype: Any = np.float64,
            shape: Shape | int | st.SearchStrategy[Shape] | None = None,
            elements: st.SearchStrategy | None = None,
            requires_grad: bool | st.SearchStrategy[bool] = True) -> st.SearchStrategy[td.Tensor]:
    """Leaf tensors of ``dtype``.

    ``shape``: None draws one from ``shapes()``; a shape (or int) fixes it; a strategy draws
    from it.  ``elements``: values for ``hypothesis.extra.numpy.arrays``; by default finite
    floats in [-10, 10] (integers in [-10, 10] for int dtypes).  ``requires_grad``: a bool
    or a strategy of bools (only floating-point tensors can require grad).

    >>> import numpy as np
    >>> from tapediff.testing.strategies import tensors
    >>> t = tensors(np.float32, shape=(2, 3)).example()
    >>> t.shape, t.dtype, t.requires_grad
    ((2, 3), dtype('float32'), True)
    """
    dtype = np.dtype(dtype)
    if isinstance(shape, st.SearchStrategy):
        shape_st = shape
    elif shape is None:
        shape_st = shapes()
    else:
        shape_st = st.just((shape,) if isinstance(shape, int) else tuple(shape))
    if elements is None:
        elements = _default_elements(dtype)
    if dtype.kind != "f" and requires_grad is not False:
        raise InvalidArgument(f"tensors(dtype={dtype}): only floating-point tensors can "
                              f"require grad; pass requires_grad=False")
    rg_st = requires_grad if isinstance(requires_grad, st.SearchStrategy) else st.just(
        bool(requires_grad))
    # td.tensor itself as the builder: Hypothesis then reports a drawn tensor as the call
    # that rebuilds it, tensor(array([...]), requires_grad=True)
    return st.builds(td.tensor, hnp.arrays(dtype, shape_st, elements=elements),
                     requires_grad=rg_st)


# ---------------------------------------------------------------------------------------------
# the op table
# ---------------------------------------------------------------------------------------------
#: Values above this bound are squashed (``tanh(v / bound)``) before an operation that could
#: grow them further, so that finite differences stay accurate and nothing overflows.
MAX_BOUND = 10.0

# relu and abs have a kink at 0, where a central difference straddles two slopes.  Their
# operand is shifted by an irrational-looking constant: Hypothesis readily produces 0, 0.5 or
# x - x exactly, but not a value within a finite-difference step of -KINK_SHIFT.
KINK_SHIFT = 0.41421356


@dataclass(frozen=True)
class OpSpec:
    """One row of the op table: how a program step applies an operation.

    ``expr`` is a Python expression over the operands ``{0}``, ``{1}`` (and named parameters
    such as ``{args}``), with the operation's domain adapter written in: ``td.log(1.625 +
    1.375 * td.tanh({0}))`` takes the log of something in [0.25, 3].  It must use only
    ``td.<function>(...)`` (tapediff's public elementwise functions), Python operators,
    ``.sum``/``.mean`` and indexing, because the same text is also evaluated with NumPy (for
    shapes and reference values).  Operands are always plain names, so an operand may
    appear several times.

    ``bound(*b)`` bounds |result| given |operand_i| <= b_i (math.inf when the operation
    would leave its domain, e.g. ``td.tan({0})`` beyond 1.2); the program squashes operands
    when the bound exceeds ``MAX_BOUND``.  ``accumulates``: the result sums elements, so its
    bound is multiplied by the number of elements summed.  ``params(*shapes)``: a strategy
    of ``{name: source text}`` for the expression's named parameters, given operand shapes.

    >>> import math
    >>> from tapediff.testing.strategies import OPS, OpSpec, programs
    >>> logcosh = OpSpec("logcosh", "td.log(td.cosh({0}))", lambda b: b)
    >>> strategy = programs(ops=[*OPS, logcosh])
    """

    name: str
    expr: str
    bound: Callable[..., float]
    params: Callable[..., st.SearchStrategy[dict[str, str]]] | None = None
    accumulates: bool = False

    @property
    def arity(self) -> int:
        """Number of operands (placeholders ``{0}``, ``{1}``, ... in ``expr``)."""
        fields = [f for _, f, _, _ in string.Formatter().parse(self.expr) if f is not None]
        return 1 + max((int(f) for f in fields if f.isdigit()), default=-1)


def _call_args(axis: Any, keepdims: bool) -> dict[str, str]:
    parts = [] if axis is None else [f"axis={axis!r}"]
    if keepdims:
        parts.append("keepdims=True")
    return {"args": ", ".join(parts)}


def _axis_params(shape: Shape) -> st.SearchStrategy[dict[str, str]]:
    """axis (None, an int, or a tuple of distinct axes) and keepdims for sum/mean."""
    nd = len(shape)
    axes = st.none() if nd == 0 else st.one_of(
        st.none(), st.integers(-nd, nd - 1), hnp.valid_tuple_axes(nd))
    return st.builds(_call_args, axes, st.booleans())


def _format_key(key: Any) -> str:
    """A basic index as source text: ``(slice(None, 2, None), None)`` -> ``:2, None``."""
    def one(k: Any) -> str:
        if k is Ellipsis:
            return "..."
        if isinstance(k, slice):
            text = ("" if k.start is None else str(k.start)) + ":" + (
                "" if k.stop is None else str(k.stop))
            return text + ("" if k.step is None else f":{k.step}")
        return repr(k)
    if not isinstance(key, tuple):
        return one(key)
    if not key:
        return "()"
    return ", ".join(one(k) for k in key) + ("," if len(key) == 1 else "")


def _index_params(shape: Shape) -> st.SearchStrategy[dict[str, str]]:
    """A basic index (ints, slices with any step, None, ...) with a non-empty result."""
    probe = np.empty(shape)
    return hnp.basic_indices(shape, max_dims=max(len(shape), 1) + 1,
                             allow_newaxis=True).filter(
        lambda k: probe[k].size > 0).map(lambda k: {"key": _format_key(k)})


def _np_sigmoid(x: Any) -> Any:
    e = np.exp(-np.abs(x))
    return np.where(np.asarray(x) >= 0, 1.0, e) / (1.0 + e)


def _np_erf(x: Any) -> Any:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


# ``td``'s public elementwise functions as NumPy evaluates them, for shapes, bounds and
# reference values: the table's NumPy forward where it is a NumPy ufunc, an independent
# formula where tapediff computes it its own way (a table row without either: its forward)
_INDEPENDENT: dict[str, Callable[..., Any]] = {
    "sigmoid": _np_sigmoid, "relu": lambda x: np.maximum(x, 0.0),
    "softplus": lambda x: np.logaddexp(0.0, x), "erf": _np_erf}
_NUMPY_TD = types.SimpleNamespace(**{
    p.name: _INDEPENDENT.get(p.name, p.array) for p in P.PUBLIC})

# relu and abs keep their kinks in play (both slopes) with a shift instead of an adapter
# into one side of their domain
_KINKED = {
    "relu": OpSpec("relu", f"td.relu({{0}} + {KINK_SHIFT})", lambda a: a + KINK_SHIFT),
    "abs": OpSpec("abs", f"td.abs({{0}} - {KINK_SHIFT})", lambda a: a + KINK_SHIFT),
}


def _adapted(f: Callable[..., Any], lo: float, hi: float) -> tuple[str, Callable]:
    """The smooth adapter ``c + r * td.tanh({0})`` onto [lo, hi] (source text), and the
    bound of ``f`` applied to it: the max of |f| over the part of [lo, hi] an operand
    |v| <= b reaches, on a fine grid (evaluated once) plus the exact ends, with a margin for
    the grid's spacing."""
    c, r = (lo + hi) / 2, (hi - lo) / 2
    text = f"{r!r} * td.tanh({{0}})" if c == 0 else f"{c!r} + {r!r} * td.tanh({{0}})"
    grid: list[np.ndarray] = []

    def bound(b: float) -> float:
        if not grid:
            u = np.linspace(-1.0, 1.0, 2049)
            with np.errstate(all="ignore"):
                grid[:] = [u, np.abs(f(c + r * u))]
        u, fu = grid
        s = math.tanh(b)
        with np.errstate(all="ignore"):
            ends = np.abs(f(c + r * np.array([-s, s])))
        m = max(float(fu[np.abs(u) <= s].max(initial=0.0)), float(ends.max()))
        return m * (1.0 + 1e-3) if math.isfinite(m) else math.inf

    return text, bound


def _unary_rows() -> list[OpSpec]:
    """One row per public unary primitive of tapediff (``tapediff._src._primitives``), in the
    table's order: ``td.<name>(adapter)``, the adapter mapping any operand smoothly into the
    primitive's domain (the interval its tests draw from; of several, the widest, the
    rightmost on a tie).  relu and abs get a kink shift instead (``_KINKED``)."""
    rows = []
    for p in P.PUBLIC:
        if p.arity != 1:
            continue
        if p.name in _KINKED:
            rows.append(_KINKED[p.name])
            continue
        (intervals,) = p.domain
        lo, hi = max(intervals, key=lambda iv: (iv[1] - iv[0], iv[0]))
        adapter, bound = _adapted(getattr(_NUMPY_TD, p.name), lo, hi)
        rows.append(OpSpec(p.name, f"td.{p.name}({adapter})", bound))
    return rows


#: The default op table.  One row per operation; the expression carries the domain adapter.
OPS: tuple[OpSpec, ...] = (
    # tensor (op) tensor; operands of different shapes broadcast
    OpSpec("add", "{0} + {1}", lambda a, b: a + b),
    OpSpec("sub", "{0} - {1}", lambda a, b: a + b),
    OpSpec("mul", "{0} * {1}", lambda a, b: a * b),
    OpSpec("div", "{0} / ({1} * {1} + 1.0)", lambda a, b: a),  # denominator >= 1
    OpSpec("pow", "({0} * {0} + 1.0) ** {1}", lambda a, b: (a * a + 1.0) ** b),  # base >= 1
    # tensor (op) Python number, both ways round
    OpSpec("add_c", "{0} + 1.5", lambda a: a + 1.5),
    OpSpec("rsub_c", "1.5 - {0}", lambda a: a + 1.5),
    OpSpec("mul_c", "2.5 * {0}", lambda a: 2.5 * a),
    OpSpec("div_c", "{0} / 2.5", lambda a: a / 2.5),
    OpSpec("rdiv_c", "2.5 / ({0} * {0} + 1.0)", lambda a: 2.5),
    OpSpec("square", "{0} ** 2", lambda a: a * a),
    OpSpec("pow_c", "({0} * {0} + 1.0) ** 1.5", lambda a: (a * a + 1.0) ** 1.5),
    OpSpec("rpow_c", "1.5 ** {0}", lambda a: 1.5 ** a),
    # unary: neg, then one row per public unary primitive of tapediff (``_unary_rows``)
    OpSpec("neg", "-{0}", lambda a: a),
    *_unary_rows(),
    # reductions and views
    OpSpec("sum", "{0}.sum({args})", lambda a: a, _axis_params, accumulates=True),
    OpSpec("mean", "{0}.mean({args})", lambda a: a, _axis_params),
    OpSpec("index", "{0}[{key}]", lambda a: a, _index_params),
)

# Inserted by the program builder, not drawn: maps |v| <= scale into (-0.77, 0.77) without
# saturating (tanh' >= 0.42 there), so gradients through it stay measurable.
_SQUASH = OpSpec("squash", "td.tanh({0} / {scale})", lambda a: math.tanh(1.0))


# ---------------------------------------------------------------------------------------------
# programs
# ---------------------------------------------------------------------------------------------
def program_weights(shape: Shape) -> np.ndarray:
    """The fixed weights a program's result is reduced with: ``linspace(0.5, 1.5)`` over the
    elements, so every element counts and no two count the same.

    >>> from tapediff.testing.strategies import program_weights
    >>> program_weights((2, 2))
    array([[0.5       , 0.83333333],
           [1.16666667, 1.5       ]])
    """
    n = math.prod(shape)
    return np.linspace(0.5, 1.5, n).reshape(shape) if n > 1 else np.ones(shape)


_NUMPY_NS = {"td": _NUMPY_TD, "weights": program_weights}
_TD_NS = {"td": td, "weights": program_weights}
# NaN, inf or division by zero in a program is a bug of the op table (underflow is harmless)
def _no_nan() -> np.errstate:
    return np.errstate(over="raise", divide="raise", invalid="raise", under="ignore")


@dataclass(frozen=True)
class Step:
    """One assignment of a program: ``target = expr``, from op table row ``op``.

    ``shape`` is the value's shape; ``bound`` bounds |target| over all inputs with
    |input| <= the program's input bound.

    >>> from tapediff.testing.strategies import Step
    >>> Step("v1", "exp", "td.exp(v0)", (3,), 7.39).expr
    'td.exp(v0)'
    """

    target: str
    op: str
    expr: str
    shape: Shape
    bound: float


class Program:
    """A straight-line differentiable program drawn by ``programs()``.

    Inputs are named ``v0 .. v{n-1}``; each step assigns a new name from earlier ones; the
    result is ``(v * weights(v.shape)).sum()`` for the last value ``v``, a scalar tensor
    (``weights`` is ``program_weights``).  Every value stays finite and within its step's
    ``bound`` for inputs with |x| <= ``input_bound``; ``input_tensors()`` draws such inputs.
    ``repr`` (and ``source``) is the program as Python source.

    >>> import tapediff as td
    >>> from tapediff.testing.strategies import Program, Step
    >>> prog = Program([(3,)], [Step("v1", "exp", "td.exp(v0)", (3,), 7.4)])
    >>> prog
    def program(v0):  # input shapes: (3,); inputs in [-2.0, 2.0]
        v1 = td.exp(v0)
        return (v1 * weights(v1.shape)).sum()
    >>> x = td.tensor([0.0, 0.0, 0.0], requires_grad=True)
    >>> prog(x)
    tensor(3., grad_fn=<SumBackward0>)
    >>> prog.reference(x.numpy())
    3.0
    """

    def __init__(self, input_shapes: Sequence[Shape], steps: Sequence[Step],
                 input_bound: float = 2.0) -> None:
        self.input_shapes: tuple[Shape, ...] = tuple(tuple(s) for s in input_shapes)
        self.steps: tuple[Step, ...] = tuple(steps)
        self.input_bound = float(input_bound)
        names = [f"v{i}" for i in range(len(self.input_shapes))]
        last = self.steps[-1].target if self.steps else names[-1]
        shapes_text = ", ".join(map(str, self.input_shapes))
        lines = [f"def program({', '.join(names)}):  # input shapes: {shapes_text}; inputs "
                 f"in [{-self.input_bound}, {self.input_bound}]"]
        lines += [f"    {s.target} = {s.expr}" for s in self.steps]
        lines.append(f"    return ({last} * weights({last}.shape)).sum()")
        self.source = "\n".join(lines)
        self._fns: dict[int, Callable] = {}

    @property
    def n_inputs(self) -> int:
        """Number of inputs (``len(input_shapes)``)."""
        return len(self.input_shapes)

    def __repr__(self) -> str:
        return self.source

    def _compiled(self, ns: dict) -> Callable:
        fn = self._fns.get(id(ns))
        if fn is None:
            env = dict(ns)
            exec(compile(self.source, "<tapediff.testing program>", "exec"), env)
            fn = self._fns[id(ns)] = env["program"]
        return fn

    def _check(self, inputs: Sequence[Any]) -> None:
        if len(inputs) != self.n_inputs:
            raise TypeError(f"the program takes {self.n_inputs} inputs, got {len(inputs)}")
        for i, (x, s) in enumerate(zip(inputs, self.input_shapes)):
            if np.shape(x) != s:
                raise ValueError(f"input {i} has shape {np.shape(x)}, the program expects {s}")

    def __call__(self, *inputs: td.Tensor) -> td.Tensor:
        """Run the program on tensors (one per input shape); returns a scalar tensor."""
        self._check(inputs)
        return self._compiled(_TD_NS)(*inputs)

    def reference(self, *arrays: Any) -> float:
        """The program's result computed by NumPy (float64) instead of tapediff."""
        self._check(arrays)
        with _no_nan():  # the domain adapters promise no nan/inf
            return float(self._compiled(_NUMPY_NS)(*(np.asarray(a, np.float64)
                                                     for a in arrays)))

    def trace(self, *arrays: Any) -> list[np.ndarray]:
        """Every value of the program computed by NumPy: the inputs, then one per step."""
        self._check(arrays)
        env = {f"v{i}": np.asarray(a, np.float64) for i, a in enumerate(arrays)}
        values = list(env.values())
        with _no_nan():
            for s in self.steps:
                env[s.target] = np.asarray(eval(s.expr, _NUMPY_NS, env))  # noqa: S307
                values.append(env[s.target])
        return values

    def kink_distance(self, *arrays: Any) -> float:
        """How far, at these inputs, the operand of the program's nearest relu or abs is from
        its kink (inf without one).  A shifted operand can still land on it: in
        ``td.abs(td.relu(v0 + v0 + s) - s)`` the shifts cancel and v0 = 0 is the kink."""
        names = [f"v{i}" for i in range(self.n_inputs)] + [s.target for s in self.steps]
        env = dict(zip(names, self.trace(*arrays)))
        nearest = math.inf
        for s in self.steps:
            if s.op in ("relu", "abs"):  # td.relu(<operand>): the operand's distance to 0
                operand = np.asarray(eval(s.expr[s.expr.index("(") + 1:-1],  # noqa: S307
                                          _NUMPY_NS, env))
                if operand.size:
                    nearest = min(nearest, float(np.abs(operand).min()))
        return nearest

    def input_tensors(self, dtype: Any = np.float64,
                      requires_grad: bool | st.SearchStrategy[bool] = True
                      ) -> st.SearchStrategy[tuple[td.Tensor, ...]]:
        """A strategy for inputs: one tensor per input shape, values in [-input_bound,
        input_bound] (the range the program's bounds assume), such that no relu or abs
        operand lies within 1e-2 of its kink (``kink_distance``), where a finite difference
        (float32's step is 1e-3) would straddle two slopes."""
        dtype = np.dtype(dtype)
        b = self.input_bound
        elements = st.floats(-b, b, allow_nan=False, allow_infinity=False,
                             width=dtype.itemsize * 8).filter(
            lambda v: abs(abs(v) - KINK_SHIFT) > 4e-3)
        return st.tuples(*(tensors(dtype, s, elements, requires_grad)
                           for s in self.input_shapes)).filter(
            lambda ts: self.kink_distance(*(t.detach().numpy() for t in ts)) > 1e-2)


def _bound_of(row: OpSpec, bounds: Sequence[float], fanin: int) -> float:
    try:
        b = float(row.bound(*bounds))
    except OverflowError:
        return math.inf
    if math.isnan(b):
        return math.inf
    return b * fanin if row.accumulates else b


def _round_up(x: float) -> float:
    """A short decimal >= x (for readable squash scales in the source)."""
    digits = 3
    while True:
        r = float(f"{x:.{digits}g}")
        if r >= x:
            return r
        r = float(f"{x * (1 + 10.0 ** -digits):.{digits}g}")
        if r >= x:
            return r
        digits += 1


def _broadcasts(a: Shape, b: Shape) -> bool:
    try:
        np.broadcast_shapes(a, b)
    except ValueError:
        return False
    return True


def _resolve_ops(ops: Sequence[OpSpec | str] | None) -> tuple[OpSpec, ...]:
    if ops is None:
        return OPS
    by_name = {r.name: r for r in OPS}
    rows = []
    for r in ops:
        if isinstance(r, str):
            if r not in by_name:
                raise InvalidArgument(f"no op named {r!r} in the table; have {sorted(by_name)}")
            r = by_name[r]
        if not isinstance(r, OpSpec):
            raise InvalidArgument(f"ops must hold OpSpec rows or op names, got {r!r}")
        rows.append(r)
    if not rows:
        raise InvalidArgument("ops must not be empty")
    return tuple(rows)


def programs(ops: Sequence[OpSpec | str] | None = None, max_ops: int = 8, *, min_ops: int = 1,
             max_inputs: int = 3, max_dims: int = 3, max_side: int = 4,
             input_bound: float = 2.0) -> st.SearchStrategy[Program]:
    """Random differentiable programs over the op table ``ops`` (default ``OPS``; rows or
    their names), with ``min_ops..max_ops`` operations drawn from it.

    The program takes 1..``max_inputs`` inputs of mutually broadcastable shapes (up to
    ``max_dims`` dimensions of up to ``max_side``).  Each step applies a row to earlier
    values; a second operand is picked among the values whose shape broadcasts with the
    first.  Domain adapters (in each row's expression) keep every operation in its domain,
    and an operand whose bound would push a result beyond ``MAX_BOUND`` is first squashed by
    an extra ``td.tanh(v / bound)`` step, so no value is ever NaN or infinite and finite
    differences stay accurate.  Shrinking removes steps and moves towards earlier rows and
    the most recent operands.

    >>> from tapediff.testing.strategies import programs
    >>> prog = programs(ops=["mul", "log"], max_ops=3).example()
    >>> prog.input_shapes  # doctest: +SKIP
    ((2, 1), (3,))
    """
    rows = _resolve_ops(ops)
    if not 0 <= min_ops <= max_ops:
        raise InvalidArgument(f"need 0 <= min_ops <= max_ops, got {min_ops}, {max_ops}")
    if max_inputs < 1:
        raise InvalidArgument(f"max_inputs must be at least 1, got {max_inputs}")

    @st.composite
    def draw_program(draw: Callable) -> Program:
        n_inputs = draw(st.integers(1, max_inputs), label="n_inputs")
        in_shapes = draw(hnp.mutually_broadcastable_shapes(
            num_shapes=n_inputs, max_dims=max_dims, max_side=max_side)).input_shapes
        names = [f"v{i}" for i in range(n_inputs)]
        shape_of = dict(zip(names, in_shapes))
        bound_of = dict.fromkeys(names, float(input_bound))
        steps: list[Step] = []

        def plan(row: OpSpec, args: list[str], params: dict[str, str]) -> Step:
            """The step applying ``row`` to ``args``: its source, shape and bound."""
            expr = row.expr.format(*args, **params)
            env = {a: np.zeros(shape_of[a]) for a in args}
            with np.errstate(all="ignore"):
                shape = np.shape(eval(expr, _NUMPY_NS, env))  # noqa: S307
            fanin = max(math.prod(shape_of[a]) for a in args) // max(math.prod(shape), 1)
            bound = _bound_of(row, [bound_of[a] for a in args], max(fanin, 1))
            return Step(f"v{len(shape_of)}", row.name, expr, shape, bound)

        def add(step: Step) -> str:
            steps.append(step)
            shape_of[step.target], bound_of[step.target] = step.shape, step.bound
            return step.target

        for _ in range(draw(st.integers(min_ops, max_ops), label="n_ops")):
            row = draw(st.sampled_from(rows), label="op")
            recent_first = list(reversed(shape_of))
            args = [draw(st.sampled_from(recent_first), label="operand 0")]
            for j in range(1, row.arity):
                fits = [v for v in recent_first if _broadcasts(shape_of[v], shape_of[args[0]])]
                args.append(draw(st.sampled_from(fits), label=f"operand {j}"))
            params = {} if row.params is None else draw(
                row.params(*(shape_of[a] for a in args)), label="params")
            if plan(row, args, params).bound > MAX_BOUND:
                # squash the operands that could push the result out of range; with operands
                # within 1 every row's bound is finite (a sum's may still exceed MAX_BOUND)
                squashed = {}
                for a in dict.fromkeys(args):
                    if bound_of[a] > 1.0:
                        scale = repr(_round_up(bound_of[a]))
                        squashed[a] = add(plan(_SQUASH, [a], {"scale": scale}))
                args = [squashed.get(a, a) for a in args]
            add(plan(row, args, params))
        return Program(in_shapes, steps, input_bound)

    return draw_program()
