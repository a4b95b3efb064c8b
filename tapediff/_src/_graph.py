"""A backward that records itself: the gradient as a recorded function (``create_graph``).

``Tensor.backward`` and ``td.grad`` normally run the jitted reverse sweep, which computes
adjoints as numbers.  When the gradient itself is to be differentiated again (``backward(
create_graph=True)``, ``td.grad`` inside ``td.grad``, ``td.hvp``, ``td.hessian``), this module
walks the same records in reverse in Python and computes each adjoint with tensor
operations, so that every step of the adjoint computation is appended to the tape as
ordinary records.  The gradient is then a recorded tensor like any other: its records can be
swept again (reverse over reverse), swept forward with tangents (forward over reverse: the
Hessian-vector product), replayed at new inputs, or walked by this module once more (third
derivatives and beyond).

Each primitive's reverse rule on tensors lives with the primitive:

* elementwise primitives: the block's ``adj_<name>`` rule in ``_kernels`` run on tensors as
  it is (``adj_mul.py_func(g, x, z, y, c)`` is ``g * z, g * x`` on tensors too), or, where the
  rule branches or calls ``math``, the block's ``vjp_<name>`` twin written with tensor
  operations;
* the linear-algebra and special-function primitives: ``Primitive.graph`` in their rows;
* the layout, selection, reduction and scan primitives: the rules below, which are the
  transposes of linear maps (restride <-> scatter-add, gather <-> scatter) or products.

The records added depend on the values of the records they read (the forward's), so a
released record (swept by a backward without ``retain_graph``) cannot be differentiated
twice: that raises the same error as a second backward.

Values stay flat: a slot's tensor is its value as a 1-d array (a Python float for a float64
scalar), the shape the kernels see; rules reshape where a layout needs it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _kernels as K
from . import _primitives as P
from ._grad_mode import enable_grad
from ._record import register
from ._tensor import _ERR_RELEASED, Tensor

_F32 = np.dtype(np.float32)

ERR_NO_GRAPH_RULE = ("differentiating the gradient of {name} a second time is not supported "
                     "(it has no reverse rule written with tensor operations); compute this "
                     "derivative without create_graph, or express the function with other "
                     "operations")




def _meta(tape: Any, i: int) -> np.ndarray:
    """A copy of record ``i``'s side-table block (its payload, without the length)."""
    m = int(tape.meta_at[i])
    if m < 0:
        return np.empty(0, np.int64)
    return tape.meta[m + 1:m + 1 + int(tape.meta[m])].copy()


def _slot_tensor(tape: Any, s: int) -> Tensor:
    """Slot ``s``'s value as a recorded tensor (flat; a float for a float64 scalar)."""
    n = int(tape.n[s])
    if tape.arena_of[s] == K.KIND_F64 and n == 1:
        t = register(tape, s, float(tape.val[int(tape.off[s])]))
    else:
        t = register(tape, s, tape.value_view(s, (n,)))
    if tape.op[s] == K.OP_CONST:
        t._rg = False  # a constant operand: nothing to differentiate through it
    return t


class _Slot:
    """What the walk needs of one record, read before it appends anything (appending may
    reclaim and renumber the tape's records; the tensors are re-pointed, these copies stay)."""

    __slots__ = ("op", "param", "meta", "ins", "n", "kind")

    def __init__(self, tape: Any, i: int) -> None:
        self.op = int(tape.op[i])
        self.param = float(tape.param[i])
        self.meta = _meta(tape, i)
        self.ins = tape.inputs(i)
        self.n = int(tape.n[i])
        self.kind = int(tape.arena_of[i])


def _fit(t: Any, n: int, kind: int) -> Tensor:
    """A contribution to the adjoint of a slot of ``n`` elements of arena ``kind``, in the
    slot's flat shape: summed when it was broadcast from a single element, cast to its
    dtype."""
    if t.size != n:
        t = t.sum()
    shape = () if (n == 1 and kind == K.KIND_F64) else (n,)
    if t.shape != shape:
        t = t.reshape(shape)
    dt = np.dtype(np.float64) if kind == K.KIND_F64 else _F32
    if t.dtype != dt:
        t = t.astype(dt)
    return t


def graph_gradients(y: Tensor, seed: Any, targets: list[int] | None,
                    retain_graph: bool) -> dict:
    """Adjoints of the slots ``targets`` (every leaf record ``y`` depends on when None),
    computed with recorded tensor operations on ``y``'s tape from ``seed`` (a tensor of
    ``y``'s shape, or None for 1).  Returns {slot: tensor, flat} for the targets reached,
    keyed by the slots as they were when called (the walk appends records, which may
    renumber them: callers read the slots of their inputs before calling)."""
    import tapediff as T  # the rules are written against the public namespace

    tape = y._tape
    root = y._slot
    top = root + 1
    mark = np.zeros(top, np.uint8)
    K.mark_inputs(root, tape.op, tape.in_a, tape.in_b, tape.meta_at, tape.meta, mark)
    ops = tape.op[:top]
    if bool((mark.view(bool) & (ops != K.OP_LEAF)
             & (tape.flag[:top] & K.FLAG_RELEASED).astype(bool)).any()):
        raise RuntimeError(_ERR_RELEASED)
    if targets is None:
        targets = [int(s) for s in np.flatnonzero(mark.view(bool) & (ops == K.OP_LEAF))]
    # records that lead from a target to y, in order: the only ones worth walking
    leads = np.zeros(top, bool)
    leads[[s for s in targets if s < top]] = True
    walk = []
    marked = np.flatnonzero(mark).tolist()
    flags = tape.flag
    for i in marked:
        if leads[i] or flags[i] & K.FLAG_CONSTANT:
            continue
        o = int(ops[i])
        if K.TRAITS[o] & K.NO_GRADIENT or o == K.OP_CONST or o == K.OP_LEAF:
            continue
        if any(leads[s] for s in tape.inputs(i)):
            leads[i] = True
            walk.append(i)
    if not leads[root]:
        return {}
    # every tensor and copy the walk reads, taken before anything is appended (appending may
    # reclaim and renumber the records: from here on slot numbers are only keys, the tensors
    # are re-pointed)
    info = {i: _Slot(tape, i) for i in walk}
    slots: dict = {}
    for i in walk:
        for s in (i, *info[i].ins):
            if s not in slots:
                slots[s] = _slot_tensor(tape, s)
    for s in targets:
        if s < top and leads[s] and s not in slots:
            slots[s] = _slot_tensor(tape, s)
    need = {s: bool(leads[s]) for s in slots}
    root_info = _Slot(tape, root)
    # Room for the records the walk appends (a few per record walked, each about the size
    # of the record's output), reserved at once: one compaction rather than one per doubling.
    sizes = np.array([info[i].n for i in walk], np.int64)
    f32 = np.array([info[i].kind == K.KIND_F32 for i in walk], bool)
    tape.reserve(8 * len(walk) + 64, 4 * int(sizes[~f32].sum()), 0, 4 * int(sizes[f32].sum()))
    with enable_grad(), tape:
        if seed is None:
            g0 = T.ones((), dtype=y.dtype)
        else:
            g0 = seed if isinstance(seed, Tensor) else T.tensor(seed, dtype=y.dtype)
        adjoints = {root: _fit(g0.reshape(-1) if g0.ndim else g0, root_info.n, root_info.kind)}
        for i in reversed(walk):
            g = _dense(T, adjoints.pop(i, None), slots[i])
            if g is None:
                continue
            rec = info[i]
            for s, c in _rule(T, rec, g, slots[i], [slots[s] for s in rec.ins],
                              [need[s] for s in rec.ins]):
                if c is None or not need[s] or isinstance(c, float):
                    continue
                old = adjoints.get(s)
                if isinstance(c, _Sparse):
                    if old is None or isinstance(old, _Sparse):
                        adjoints[s] = c if old is None else old.add(c)
                        continue
                    c = c.record(T)
                c = _fit(c, int(tape.n[slots[s]._slot]), int(tape.arena_of[slots[s]._slot]))
                if isinstance(old, _Sparse):
                    old = _dense(T, old, slots[s])
                adjoints[s] = c if old is None else old + c
        found = {s: _dense(T, adjoints[s], slots[s]) for s in targets if s in adjoints}
    if not retain_graph:
        for t in (slots[i] for i in walk):
            tape.flag[t._slot] |= K.FLAG_RELEASED
    return found


def _dense(T: Any, g: Any, t: Tensor) -> Any:
    """An adjoint as a tensor in the flat shape of ``t``'s slot (a pending scatter recorded)."""
    if isinstance(g, _Sparse):
        tape = t._tape
        return _fit(g.record(T), int(tape.n[t._slot]), int(tape.arena_of[t._slot]))
    return g


def _rule(T: Any, rec: _Slot, g: Tensor, y: Tensor, xs: list, needs: list) -> list:
    """[(input slot, contribution to its adjoint)] of one record, as tensor operations."""
    o = rec.op
    elementwise = P.ELEMENTWISE_RULES.get(o)
    if elementwise is not None:
        if len(rec.meta):  # operands read through a broadcast layout
            return _broadcast_adjoints(T, elementwise, rec, g, y, xs)
        x = xs[0]
        z = xs[1] if len(xs) > 1 else None
        out = elementwise(g, x, z, y, rec.param, T)
        return list(zip(rec.ins, out[:len(xs)]))
    if o == K.OP_WHERE:
        w = xs[2]
        return [(rec.ins[0], g * w if needs[0] else None),
                (rec.ins[1], g * (1.0 - w) if needs[1] else None)]
    if o == K.OP_RESTRIDE:
        return [(rec.ins[0], _restride_adjoint(g, rec.meta, xs[0].size))]
    if o == K.OP_GATHER:
        return [(rec.ins[0], _Sparse(g.reshape(-1), K.gather_index(rec.meta), xs[0].size))]
    if o == K.OP_SCATTER:
        return [(rec.ins[0], _gather(g, rec.meta))]
    if o == K.OP_CONCAT:
        return _concat_adjoints(g, rec, xs, needs)
    if o == K.OP_MATMUL:
        return _matmul_adjoints(T, g, rec, xs, needs)
    if o == K.OP_CAST:
        return [(rec.ins[0], g.astype(xs[0].dtype))]
    if o == K.OP_CUMSUM:
        outer, length, inner = (int(v) for v in rec.meta[:3])
        g3 = g.reshape(outer, length, inner)
        return [(rec.ins[0], T.flip(T.cumsum(T.flip(g3, 1), 1), 1).reshape(-1))]
    if o == K.OP_CUMPROD:
        return [(rec.ins[0], _cumprod_adjoint(T, g, rec, xs[0], y))]
    if o == K.OP_PROD:
        return [(rec.ins[0], _prod_adjoint(T, g, rec, xs[0]))]
    if o == K.OP_EXTREME:
        return [(rec.ins[0], _extreme_adjoint(T, g, rec, xs[0], y))]
    prim = P.BY_OP[o]
    if prim.graph is None:
        raise NotImplementedError(ERR_NO_GRAPH_RULE.format(name=prim.grad_fn))
    shapes = P.python_shapes(np.concatenate([[len(rec.meta)], rec.meta]), 0, 1 + len(xs))
    outs = prim.graph(T, g.reshape(shapes[0]), y.reshape(shapes[0]),
                      [x.reshape(sh) for x, sh in zip(xs, shapes[1:])], rec.param, tuple(needs))
    return [(s, None if c is None else c.reshape(-1)) for s, c in zip(rec.ins, outs)]


# -- the layout and selection primitives: transposes of linear maps ---------------------------
def _gather(g: Tensor, idx: np.ndarray) -> Tensor:
    from ._ops import _gather as gather
    gv = np.asarray(g._v).reshape(-1)
    return gather(g.reshape(-1), idx, (idx.size,), gv[idx], 0)


def _scatter(g: Tensor, idx: np.ndarray, n: int) -> Tensor:
    from ._ops import _scatter as scatter
    gv = np.asarray(g._v, dtype=g.dtype).reshape(-1)
    value = np.bincount(idx, weights=gv, minlength=n).astype(g.dtype)
    return scatter(g.reshape(-1), idx, (n,), value)


class _Sparse:
    """An adjoint contribution ``out = 0; out[pos[k]] += values[k]`` (of ``n`` elements) not
    yet recorded.  Contributions of this form to one slot (the slices of one parameter
    vector, the gathers from one table) are merged and recorded as one scatter, where
    recording each would write, and then add, a full-size adjoint per slice."""

    __slots__ = ("values", "pos", "n")

    def __init__(self, values: Tensor, pos: "np.ndarray | range", n: int) -> None:
        self.values, self.pos, self.n = [values], [pos], n

    def add(self, other: "_Sparse") -> "_Sparse":
        self.values += other.values
        self.pos += other.pos
        return self

    def record(self, T: Any) -> Tensor:
        """The contribution as recorded operations: parts that each fill a contiguous range
        (the adjoints of basic slices of a vector) as zero-padded concatenations, one per
        set of disjoint ranges, added up; otherwise one scatter for all the merged parts,
        its positions in the side table."""
        dt = np.result_type(*(v.dtype for v in self.values))
        values = [v if v.dtype == dt else v.astype(dt) for v in self.values]
        starts = [_run_start(p) for p in self.pos]
        if -1 not in starts:
            return _embedded(T, values, starts, self.n, dt)
        pos = [np.arange(p.start, p.stop, dtype=np.int64) if isinstance(p, range) else p
               for p in self.pos]
        if len(values) == 1:
            return _scatter(values[0], pos[0], self.n)
        return _scatter(T.concatenate(values), np.concatenate(pos), self.n)


def _run_start(pos: Any) -> int:
    """The first position when ``pos`` (an array, or a range) is a run of consecutive
    positions, else -1."""
    if isinstance(pos, range):
        return pos.start if len(pos) and pos.step == 1 else -1
    if pos.size == 0 or pos[-1] - pos[0] != pos.size - 1:
        return -1
    return int(pos[0]) if bool((np.diff(pos) == 1).all()) else -1


def _embedded(T: Any, values: list, starts: list, n: int, dt: Any) -> Tensor:
    """sum_j (zeros(n) with values[j] at starts[j]:), recorded as concatenations with zero
    gaps: each one holds parts whose ranges do not overlap (taken in order of start)."""
    layers: list = []  # [end of the last range, [(start, value), ...]]
    for start, v in sorted(zip(starts, values), key=lambda sv: sv[0]):
        for layer in layers:
            if layer[0] <= start:
                break
        else:
            layer = [0, []]
            layers.append(layer)
        layer[0] = start + v.size
        layer[1].append((start, v))
    total = None
    for _, parts in layers:
        pieces, at = [], 0
        for start, v in parts:
            if start > at:
                pieces.append(np.zeros(start - at, dt))
            pieces.append(v.reshape(-1))
            at = start + v.size
        if at < n:
            pieces.append(np.zeros(n - at, dt))
        dense = T.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        total = dense if total is None else total + dense
    return total


def _spread(g: Tensor, pos: np.ndarray, r: int, n_in: int) -> Any:
    """The adjoint of ``out[k // r] (+)= in[pos[k]]``: in[pos[k]] gets g[k // r]."""
    k = np.arange(pos.size, dtype=np.int64)
    if r == 1 and np.array_equal(pos, k) and pos.size == n_in:
        return g.reshape(-1)  # the identity (a reshape)
    if pos.size == n_in and bool((np.bincount(pos, minlength=n_in) == 1).all()):
        inv = np.empty_like(pos)  # a permutation: one gather
        inv[pos] = k
        return _gather(g, inv // r)
    return _Sparse(_gather(g, k // r) if r > 1 else g.reshape(-1), pos, n_in)


def _positions(meta: np.ndarray) -> tuple:
    """(input positions in iteration order, r) of a restride layout payload."""
    block = np.concatenate([[len(meta)], meta]).astype(np.int64)
    return K.restride_positions(block, 0), int(meta[2])


def _broadcast_adjoints(T: Any, rule: Any, rec: _Slot, g: Tensor, y: Tensor, xs: list) -> list:
    """An elementwise record of two operands read through a broadcast layout: the rule runs
    on the operands gathered to the output's size; each contribution is summed back."""
    layout = rec.meta
    pos = [K.restride_positions(np.array([len(p)] + p, np.int64), 0)
           for p in K.broadcast_payloads(layout)]
    full = [_gather(x.reshape(-1), p) for x, p in zip(xs, pos)]
    out = rule(g, full[0], full[1], y, rec.param, T)
    return [(s, None if c is None or isinstance(c, float) else _spread(c, p, 1, x.size))
            for s, c, p, x in zip(rec.ins, out[:2], pos, xs)]


def _restride_adjoint(g: Tensor, meta: np.ndarray, n_in: int) -> Any:
    start, size = _run(meta)
    if size < 0:
        pos, r = _positions(meta)
        return _spread(g, pos, r, n_in)
    # one run of consecutive input positions, in order (a basic slice of a vector, a whole
    # array summed): in[start + k] gets g[k // r], without a list of positions to record
    r = int(meta[2])
    c = g.reshape(-1)
    if r > 1:
        from ._ops import broadcast_to
        c = broadcast_to(c.reshape(-1, 1), (size // r, r)).reshape(-1)
    if start == 0 and size == n_in:
        return c
    return _Sparse(c, range(start, start + size), n_in)


def _run(meta: np.ndarray) -> tuple:
    """(first position, size) when the restride payload ``meta`` reads one run of
    consecutive input positions in iteration order; (0, -1) otherwise."""
    nd = int(meta[0])
    shape, strides = meta[3:3 + nd], meta[3 + nd:3 + 2 * nd]
    step = 1
    for d in range(nd - 1, -1, -1):
        if shape[d] > 1:
            if strides[d] != step:
                return 0, -1
            step *= int(shape[d])
        elif shape[d] == 0:
            return 0, -1
    return int(meta[1]), step


def _concat_adjoints(g: Tensor, rec: _Slot, xs: list, needs: list) -> list:
    count = int(rec.meta[0])
    outer = int(rec.meta[1 + count])
    sizes = [x.size // outer if outer else 0 for x in xs[:count]]
    width = sum(sizes)
    out, start = [], 0
    for s, x, size, need in zip(rec.ins, xs, sizes, needs):
        if need and x.size:
            idx = (np.arange(outer)[:, None] * width + start + np.arange(size)).reshape(-1)
            out.append((s, _gather(g, idx)))
        start += size
    return out


def _matmul_adjoints(T: Any, g: Tensor, rec: _Slot, xs: list, needs: list) -> list:
    bs, m, k, n = (int(v) for v in rec.meta[:4])
    g3 = g.reshape(bs, m, n)
    a3, b3 = xs[0].reshape(bs, m, k), xs[1].reshape(bs, k, n)
    return [(rec.ins[0], T.matmul(g3, T.swapaxes(b3, 1, 2)).reshape(-1) if needs[0] else None),
            (rec.ins[1], T.matmul(T.swapaxes(a3, 1, 2), g3).reshape(-1) if needs[1] else None)]


# -- products and extremes --------------------------------------------------------------------
def _groups(T: Any, x: Tensor, meta: np.ndarray) -> tuple:
    """x's elements gathered into the reduction's groups, shape (groups, r), and positions."""
    pos, r = _positions(meta)
    return _gather(x, pos).reshape(pos.size // r, r), pos, r


def _prod_adjoint(T: Any, g: Tensor, rec: _Slot, x: Tensor) -> Tensor:
    """d prod / d x_k = the product of the group's other elements: exclusive products from
    the left and the right (exact with zeros, as the first-order rule)."""
    xg, pos, r = _groups(T, x, rec.meta)
    ones = T.ones((xg.shape[0], 1), dtype=xg.dtype)
    left = T.concatenate([ones, T.cumprod(xg[:, :-1], axis=1)], axis=1)
    right = T.flip(T.concatenate([ones, T.cumprod(T.flip(xg[:, 1:], 1), axis=1)], axis=1), 1)
    contrib = (g.reshape(-1, 1) * (left * right)).reshape(-1)
    return _spread(contrib, pos, 1, x.size)


def _extreme_adjoint(T: Any, g: Tensor, rec: _Slot, x: Tensor, y: Tensor) -> Tensor:
    """g shared equally among a group's tied extremes (the first-order rule's convention);
    which elements tie is a recorded comparison, so replay re-evaluates it."""
    from ._ops import record_compare
    xg, pos, r = _groups(T, x, rec.meta)
    yg = y.reshape(-1, 1)
    values = (np.asarray(xg._v) == np.asarray(yg._v)).astype(xg.dtype)
    hit = record_compare(xg, yg, K.CMP_EQ, values, xg.dtype)  # 0/1, never differentiated
    w = hit / hit.sum(axis=1, keepdims=True)
    return _spread((g.reshape(-1, 1) * w).reshape(-1), pos, 1, x.size)


def _cumprod_adjoint(T: Any, g: Tensor, rec: _Slot, x: Tensor, y: Tensor) -> Tensor:
    """sum over j >= k of g_j y_j / x_k; refused where x has zeros (the division would be
    wrong there) and while recording for replay (a zero could appear at a replay)."""
    from ._tape import thread_state
    if thread_state.tape.records_for_replay or not np.all(np.asarray(x._v)):
        raise NotImplementedError(
            "differentiating the gradient of cumprod a second time (a second derivative of "
            "cumprod, or a third of prod, whose gradient is recorded with cumprod) is "
            "supported only at inputs without zeros, and not in a function recorded for "
            "replay")
    outer, length, inner = (int(v) for v in rec.meta[:3])
    gy = (g * y).reshape(outer, length, inner)
    return T.flip(T.cumsum(T.flip(gy, 1), 1), 1).reshape(-1) / x
